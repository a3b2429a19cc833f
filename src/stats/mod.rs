//! Robust statistics shared by the carried features (`window::carry`) and the detectors
//! (`score::detect`): medians and median absolute deviations.
//!
//! In: values (a baseline's, ascending, or any order). Out: the median; the MAD, which
//! [`MAD_TO_SIGMA`] scales to a normal's standard deviation. Each caller decides what a zero
//! MAD means for it (the carried robust z gives none; the detectors fall back to the standard
//! deviation).
//!
//! [`summary`] keeps a long baseline in bounded memory: compressed slices of it, whose median
//! and MAD [`weighted_median_and_mad`] gives within a stated rank error.

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

/// The median and the median absolute deviation of values with weights (`(value, weight)`,
/// ascending by value, every weight > 0, summing to `total`): the value where the weights below
/// and above balance (between two values, their mean, when they balance exactly there), then
/// the same of the weighted deviations from it. With every weight 1 these are
/// [`median_and_mad_sorted`]'s figures. Each is a walk to the middle, the deviations taken
/// nearest first from both sides of the median, nothing copied. None when `sorted` is empty.
pub fn weighted_median_and_mad(sorted: &[(f64, f64)], total: f64) -> Option<(f64, f64)> {
    let half = total / 2.0;
    let median = weighted_middle(sorted.iter().copied(), half)?;
    let split = sorted.partition_point(|(v, _)| *v < median);
    let (mut below, mut above) = (split, split);
    let deviations = std::iter::from_fn(|| {
        let down = below
            .checked_sub(1)
            .map(|i| (median - sorted[i].0, sorted[i].1));
        let up = sorted.get(above).map(|&(v, w)| (v - median, w));
        match (down, up) {
            (Some(d), Some(u)) if d.0 <= u.0 => {
                below -= 1;
                Some(d)
            }
            (Some(d), None) => {
                below -= 1;
                Some(d)
            }
            (_, Some(u)) => {
                above += 1;
                Some(u)
            }
            (None, None) => None,
        }
    });
    Some((median, weighted_middle(deviations, half)?))
}

/// The weighted median of `(value, weight)` pairs ascending by value, whose weights sum to
/// `2 × half`.
fn weighted_middle(mut pairs: impl Iterator<Item = (f64, f64)>, half: f64) -> Option<f64> {
    let mut below = 0.0;
    let mut last = None;
    while let Some((v, w)) = pairs.next() {
        below += w;
        if below > half {
            return Some(v);
        }
        if below == half {
            return Some(pairs.next().map_or(v, |(next, _)| (v + next) / 2.0));
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
    fn weights_of_one_give_the_plain_median_and_mad() {
        let mut state = 7_u64;
        for n in 1..80 {
            // Few distinct values: ties, and MADs of zero.
            let sorted: Vec<f64> = {
                let mut v: Vec<f64> = (0..n)
                    .map(|_| {
                        state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                        ((state >> 33) % 23) as f64 / 4.0
                    })
                    .collect();
                v.sort_by(f64::total_cmp);
                v
            };
            let weighted: Vec<(f64, f64)> = sorted.iter().map(|&v| (v, 1.0)).collect();
            assert_eq!(
                weighted_median_and_mad(&weighted, n as f64),
                median_and_mad_sorted(&sorted),
                "{sorted:?}"
            );
        }
        assert_eq!(weighted_median_and_mad(&[], 0.0), None);
        // A weight of 3 counts as three equal values: 1, 5, 5, 5, 9 → median 5, MAD 0.
        let three = [(1.0, 1.0), (5.0, 3.0), (9.0, 1.0)];
        assert_eq!(weighted_median_and_mad(&three, 5.0), Some((5.0, 0.0)));
    }
}
