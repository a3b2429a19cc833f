//! A bounded summary of many values, for robust statistics over a long baseline.
//!
//! In: the values of one slice of a baseline (for example one hour of a day's 1-minute
//! windows), ascending. Out: a [`Summary`] of at most [`POINTS`] of them, each standing for an
//! equal share of the slice; [`Summary::weighted`] gives them as `(value, weight)` pairs, which
//! [`weighted_median_and_mad`](super::weighted_median_and_mad) takes mixed with exact values.
//!
//! Error bound. A slice of n > [`POINTS`] values is cut into [`POINTS`] blocks of consecutive
//! ranks, n / [`POINTS`] values each, and keeps each block's middle value. A value of the
//! summary then stands within half a block of the ranks it claims, so any quantile of a mix of
//! exact values and summaries — the median among them — is a value whose rank among all the
//! values summarised is off by at most Σ nᵢ / (2 · [`POINTS`]): 1/32 of the summarised values,
//! whatever their distribution. The MAD, a median of distances from that median, carries the
//! same rank error on the distances plus the median's own (tested against the exact figures in
//! `window::carry`). A slice of at most [`POINTS`] values is kept whole: exact.

/// Values a summary keeps.
pub const POINTS: usize = 16;

/// At most [`POINTS`] values standing for `count`, ascending.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    count: u32,
    points: Vec<f64>,
}

impl Summary {
    /// The summary of `sorted` (ascending, no NaN).
    pub fn of_sorted(sorted: &[f64]) -> Summary {
        let n = sorted.len();
        let points = if n <= POINTS {
            sorted.to_vec()
        } else {
            (0..POINTS)
                .map(|i| sorted[((2 * i + 1) * n) / (2 * POINTS)])
                .collect()
        };
        Summary {
            count: u32::try_from(n).unwrap_or(u32::MAX),
            points,
        }
    }

    /// A summary as a checkpoint stored it; none when it cannot be one (no points, more points
    /// than values or than [`POINTS`], or points out of order).
    pub fn from_parts(count: u32, points: Vec<f64>) -> Option<Summary> {
        let valid = !points.is_empty()
            && points.len() <= POINTS
            && points.len() <= count as usize
            && (points.len() == count as usize || points.len() == POINTS)
            && points.is_sorted_by(|a, b| a.total_cmp(b).is_le());
        valid.then_some(Summary { count, points })
    }

    /// How many values it stands for.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The values it keeps, ascending.
    pub fn points(&self) -> &[f64] {
        &self.points
    }

    /// Its points as `(value, weight)`, the weights summing to its count.
    pub fn weighted(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        let weight = f64::from(self.count) / self.points.len() as f64;
        self.points.iter().map(move |&v| (v, weight))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{median_and_mad_sorted, weighted_median_and_mad};

    #[test]
    fn a_short_slice_is_kept_whole_and_a_long_one_as_its_block_middles() {
        let short = Summary::of_sorted(&[1.0, 2.0, 3.0]);
        assert_eq!(short.points(), &[1.0, 2.0, 3.0]);
        assert_eq!(short.weighted().collect::<Vec<_>>()[0], (1.0, 1.0));
        let values: Vec<f64> = (0..64).map(f64::from).collect();
        let long = Summary::of_sorted(&values);
        assert_eq!(long.count(), 64);
        // Blocks of 4: ranks 0-3, 4-7, …; the middle of each is rank 2, 6, ….
        assert_eq!(long.points()[..3], [2.0, 6.0, 10.0]);
        assert_eq!(long.points().len(), POINTS);
        assert!(long.weighted().all(|(_, w)| w == 4.0));
        assert_eq!(Summary::from_parts(64, long.points().to_vec()), Some(long));
        assert_eq!(Summary::from_parts(3, vec![3.0, 1.0, 2.0]), None);
        assert_eq!(Summary::from_parts(64, vec![1.0, 2.0]), None);
        assert_eq!(Summary::from_parts(1, vec![]), None);
    }

    #[test]
    fn the_median_of_many_summaries_is_within_the_stated_rank_error() {
        // 24 slices of 60 heavy-tailed values: the summaries' median lies between the exact
        // quantiles 1/2 ∓ 1/32.
        let mut state = 11_u64;
        let mut uniform = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 11) as f64 + 0.5) / (1_u64 << 53) as f64
        };
        for _ in 0..50 {
            let slices: Vec<Vec<f64>> = (0..24)
                .map(|h| {
                    let mut v: Vec<f64> = (0..60)
                        .map(|_| f64::from(h % 5) - uniform().ln() * 3.0)
                        .collect();
                    v.sort_by(f64::total_cmp);
                    v
                })
                .collect();
            let mut all: Vec<f64> = slices.concat();
            all.sort_by(f64::total_cmp);
            let mut weighted: Vec<(f64, f64)> = slices
                .iter()
                .flat_map(|s| Summary::of_sorted(s).weighted().collect::<Vec<_>>())
                .collect();
            weighted.sort_by(|a, b| a.0.total_cmp(&b.0));
            let total = weighted.iter().map(|(_, w)| w).sum();
            let (median, mad) = weighted_median_and_mad(&weighted, total).unwrap();
            let n = all.len() as f64;
            let rank = |q: f64| all[((q * n) as usize).min(all.len() - 1)];
            let slack = 1.0 / (2.0 * POINTS as f64);
            assert!(
                rank(0.5 - slack) <= median && median <= rank(0.5 + slack),
                "median {median} outside [{}, {}]",
                rank(0.5 - slack),
                rank(0.5 + slack)
            );
            let (_, exact_mad) = median_and_mad_sorted(&all).unwrap();
            assert!(
                (mad - exact_mad).abs() <= 0.1 * exact_mad,
                "MAD {mad} against {exact_mad}"
            );
        }
    }
}
