//! Robust statistics shared by the carried features (`window::carry`) and the detectors
//! (`score::detect`): medians and median absolute deviations.
//!
//! In: values (a baseline's, ascending, or any order). Out: the median; the MAD, which
//! [`MAD_TO_SIGMA`] scales to a normal's standard deviation. Each caller decides what a zero
//! MAD means for it (the carried robust z gives none; the detectors fall back to the standard
//! deviation).
//!
//! [`summary`] keeps a long baseline in bounded memory: compressed slices of it, whose median
//! and MAD [`median_and_mad_mixed`] gives, mixed with exact values, within a stated rank error.

pub mod summary;

/// 1 / Φ⁻¹(3/4): scales a median absolute deviation to a normal's standard deviation.
pub const MAD_TO_SIGMA: f64 = 1.4826;

/// The median of `sorted` (ascending); none when it is empty.
pub fn median_sorted(sorted: &[f64]) -> Option<f64> {
    (!sorted.is_empty()).then(|| middle(sorted.len(), |k| sorted[k]))
}

/// The median and the median absolute deviation of `sorted` (ascending), in O(log² n) and
/// without copying: the figures [`median_of`] gives of the values and of their deviations.
/// None when it is empty.
pub fn median_and_mad_sorted(sorted: &[f64]) -> Option<(f64, f64)> {
    let n = sorted.len();
    let median = median_sorted(sorted)?;
    // The absolute deviations in ascending order merge two ascending runs: the values below
    // the median, walking down from it, and the rest, walking up; the k-th of the merge is
    // found by bisection.
    let split = sorted.partition_point(|v| *v < median);
    let below = |t: usize| median - sorted[split - 1 - t];
    let above = |t: usize| sorted[split + t] - median;
    let (a, b) = (split, n - split);
    let kth = |k: usize| {
        // How many of the k + 1 smallest come from below: the least count whose next value
        // below is no smaller than the last value taken from above.
        let (mut lo, mut hi) = ((k + 1).saturating_sub(b), (k + 1).min(a));
        while lo < hi {
            let i = (lo + hi) / 2;
            if k + 1 - i > 0 && above(k - i) > below(i) {
                lo = i + 1;
            } else {
                hi = i;
            }
        }
        let j = k + 1 - lo;
        let from_below = lo.checked_sub(1).map(below);
        let from_above = j.checked_sub(1).map(above);
        match (from_below, from_above) {
            (Some(x), Some(y)) => x.max(y),
            (Some(x), None) | (None, Some(x)) => x,
            (None, None) => f64::NAN,
        }
    };
    Some((median, middle(n, kth)))
}

/// Values ascending, each weighing what its tag's entry in `weights` says: summarised values,
/// a tag per summary (see [`summary`]).
#[derive(Debug, Clone, Copy)]
pub struct Tagged<'a> {
    pub values: &'a [f64],
    pub tags: &'a [u8],
    pub weights: &'a [f64; 256],
}

/// The median and the median absolute deviation of `exact` values (ascending, each weighing 1)
/// together with `tagged` ones: the value where the weights below and above balance (between
/// two values, their mean, when they balance exactly there), then the same of the weighted
/// distances from it. With no tagged values these are [`median_and_mad_sorted`]'s figures.
/// Both are walks of merged runs, nothing copied. None when there are no values.
pub fn median_and_mad_mixed(exact: &[f64], tagged: Tagged<'_>) -> Option<(f64, f64)> {
    let total = exact.len() as f64
        + tagged
            .tags
            .iter()
            .map(|&t| tagged.weights[usize::from(t)])
            .sum::<f64>();
    fn up<'a>(values: &'a [f64], tags: Option<&'a [u8]>, from: usize, origin: f64) -> Cursor<'a> {
        Cursor {
            values,
            tags,
            at: from,
            down: false,
            origin,
        }
    }
    let median = weighted_middle(
        &mut [
            up(exact, None, 0, 0.0),
            up(tagged.values, Some(tagged.tags), 0, 0.0),
        ],
        tagged.weights,
        total / 2.0,
    )?;
    let (e, t) = (
        exact.partition_point(|v| *v < median),
        tagged.values.partition_point(|v| *v < median),
    );
    let down = |values, tags, from| Cursor {
        values,
        tags,
        at: from,
        down: true,
        origin: median,
    };
    let mad = weighted_middle(
        &mut [
            down(exact, None, e),
            up(exact, None, e, median),
            down(tagged.values, Some(tagged.tags), t),
            up(tagged.values, Some(tagged.tags), t, median),
        ],
        tagged.weights,
        total / 2.0,
    )?;
    Some((median, mad))
}

/// A walk along one ascending run of a merge: values from `at` upwards less `origin`, or from
/// `at` downwards subtracted from `origin` (distances below a median, nearest first).
struct Cursor<'a> {
    values: &'a [f64],
    tags: Option<&'a [u8]>,
    at: usize,
    down: bool,
    origin: f64,
}

impl Cursor<'_> {
    fn index(&self) -> Option<usize> {
        if self.down {
            self.at.checked_sub(1)
        } else {
            (self.at < self.values.len()).then_some(self.at)
        }
    }

    fn peek(&self) -> Option<f64> {
        let v = self.values[self.index()?];
        Some(if self.down {
            self.origin - v
        } else {
            v - self.origin
        })
    }

    /// Takes the current value: its weight.
    fn take(&mut self, weights: &[f64; 256]) -> f64 {
        let weight = match (self.index(), self.tags) {
            (Some(i), Some(tags)) => weights[usize::from(tags[i])],
            _ => 1.0,
        };
        if self.down {
            self.at -= 1;
        } else {
            self.at += 1;
        }
        weight
    }
}

/// The weighted median of the merge of `runs`, whose weights sum to `2 × half`.
fn weighted_middle(runs: &mut [Cursor<'_>], weights: &[f64; 256], half: f64) -> Option<f64> {
    let smallest = |runs: &[Cursor<'_>]| {
        runs.iter()
            .enumerate()
            .filter_map(|(k, r)| r.peek().map(|v| (k, v)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
    };
    let mut below = 0.0;
    let mut last = None;
    while let Some((k, v)) = smallest(runs) {
        below += runs[k].take(weights);
        if below > half {
            return Some(v);
        }
        if below == half {
            return Some(smallest(runs).map_or(v, |(_, next)| (v + next) / 2.0));
        }
        last = Some(v);
    }
    last
}

/// The median of `n` ascending values, given the k-th.
fn middle(n: usize, kth: impl Fn(usize) -> f64) -> f64 {
    if n % 2 == 1 {
        kth(n / 2)
    } else {
        (kth(n / 2 - 1) + kth(n / 2)) / 2.0
    }
}

/// The median, by selection in O(n) (the values are reordered).
pub fn median_of(values: &mut [f64]) -> f64 {
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    let (lower, middle, _) = values.select_nth_unstable_by(n / 2, f64::total_cmp);
    let upper = *middle;
    if n % 2 == 1 {
        upper
    } else {
        let below = lower
            .iter()
            .copied()
            .max_by(f64::total_cmp)
            .unwrap_or(upper);
        (below + upper) / 2.0
    }
}

/// The `q` quantile of `v` (sorted in place), linear between order statistics.
pub fn quantile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    quantile_sorted(v, q)
}

/// The `q` quantile of ascending, non-empty `v`, linear between order statistics.
pub fn quantile_sorted(v: &[f64], q: f64) -> f64 {
    let pos = q * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Against two selections on random values: `window::carry`'s robust z tests.
    #[test]
    fn median_and_mad_of_known_values() {
        // |x − 3| = 2, 1, 0, 1, 97: MAD 1.
        let sorted = [1.0, 2.0, 3.0, 4.0, 100.0];
        assert_eq!(median_and_mad_sorted(&sorted), Some((3.0, 1.0)));
        assert_eq!(median_sorted(&[1.0, 2.0]), Some(1.5));
        assert_eq!(median_of(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median_and_mad_sorted(&[]), None);
    }

    #[test]
    fn exact_values_alone_give_the_plain_median_and_mad() {
        let mut state = 7_u64;
        let none = Tagged {
            values: &[],
            tags: &[],
            weights: &[0.0; 256],
        };
        for n in 1..80 {
            // Few distinct values: ties, and MADs of zero.
            let mut sorted: Vec<f64> = (0..n)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                    ((state >> 33) % 23) as f64 / 4.0
                })
                .collect();
            sorted.sort_by(f64::total_cmp);
            assert_eq!(
                median_and_mad_mixed(&sorted, none),
                median_and_mad_sorted(&sorted),
                "{sorted:?}"
            );
            // The same values split between the exact run and a tagged run of weight 1.
            let tagged: Vec<f64> = sorted.iter().copied().step_by(3).collect();
            let exact: Vec<f64> = sorted
                .iter()
                .enumerate()
                .filter(|(i, _)| i % 3 != 0)
                .map(|(_, v)| *v)
                .collect();
            let mut weights = [0.0; 256];
            weights[9] = 1.0;
            let tags = vec![9; tagged.len()];
            let mixed = Tagged {
                values: &tagged,
                tags: &tags,
                weights: &weights,
            };
            assert_eq!(
                median_and_mad_mixed(&exact, mixed),
                median_and_mad_sorted(&sorted),
                "{sorted:?}"
            );
        }
        assert_eq!(median_and_mad_mixed(&[], none), None);
        // A weight of 3 counts as three equal values: 1, 5, 5, 5, 9 → median 5, MAD 0.
        let mut weights = [0.0; 256];
        weights[1] = 3.0;
        let three = Tagged {
            values: &[5.0],
            tags: &[1],
            weights: &weights,
        };
        assert_eq!(median_and_mad_mixed(&[1.0, 9.0], three), Some((5.0, 0.0)));
    }
}
