//! Anomaly likelihood (Ahmad et al., 2017, as Numenta's detectors use it): how unusual a
//! detector's recent scores are for this key, rather than how large they are.
//!
//! In: one detector's score in [0, 1] per value (None while the detector warms up). The mean of
//! its last `average` scores is compared with the distribution of those means over the key's
//! history: an exponentially weighted mean and variance whose weights halve every
//! `history / 2 · ln 2` of event time — the same centre of mass as a `history`-long window, in
//! constant memory. Out: `−log₁₀(tail probability) / 10`, capped at 1 — 0.5 for a one-in-10⁵
//! excursion, 1 for one in 10¹⁰ — and 0 until `learn` means have been seen.
//!
//! This is what keeps a key that is always spiky from alarming on every spike while a key that
//! is always calm alarms on its first: each key is judged against its own history.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// The smallest σ assumed for a detector's averaged score, so that a detector that has only
/// ever said 0 does not turn a rounding error into an alarm.
const MIN_SIGMA: f64 = 0.005;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Likelihood {
    /// Time constant of the history's weights, µs.
    tau_us: f64,
    average: usize,
    learn: usize,
    recent: VecDeque<f64>,
    seen: usize,
    last_us: Option<i64>,
    mean: f64,
    var: f64,
}

impl Likelihood {
    pub fn new(history_us: i64, average: usize, learn: usize) -> Self {
        Likelihood {
            tau_us: (history_us.max(1) as f64) / 2.0,
            average: average.max(1),
            learn: learn.max(2),
            recent: VecDeque::new(),
            seen: 0,
            last_us: None,
            mean: 0.0,
            var: 0.0,
        }
    }

    pub fn observe(&mut self, ts_us: i64, score: Option<f64>) -> f64 {
        let Some(score) = score else {
            return 0.0;
        };
        if self.recent.len() == self.average {
            self.recent.pop_front();
        }
        self.recent.push_back(score);
        let x = self.recent.iter().sum::<f64>() / self.recent.len() as f64;
        let out = if self.seen >= self.learn {
            let z = (x - self.mean) / self.var.sqrt().max(MIN_SIGMA);
            log_score(upper_tail(z))
        } else {
            0.0
        };
        // Learn x with a weight that grows with the time since the value before; while
        // learning, at least 1/n, so that the start is a plain running mean.
        self.seen += 1;
        let dt = self.last_us.map_or(0, |t| ts_us.saturating_sub(t).max(0)) as f64;
        self.last_us = Some(ts_us);
        let mut alpha = 1.0 - (-dt / self.tau_us).exp();
        if self.seen <= self.learn {
            alpha = alpha.max(1.0 / self.seen as f64);
        }
        let d = x - self.mean;
        self.mean += alpha * d;
        self.var = (1.0 - alpha) * (self.var + alpha * d * d);
        out
    }
}

/// `−log₁₀(p) / 10`, in [0, 1].
pub fn log_score(p: f64) -> f64 {
    (-p.max(1e-10).log10() / 10.0).clamp(0.0, 1.0)
}

/// P(Z > z) for a standard normal.
pub fn upper_tail(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// The complementary error function, to a relative error below 1.2 × 10⁻⁷ everywhere
/// (the Chebyshev fit of Numerical Recipes' `erfcc`).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_normal_tail_matches_known_values() {
        for (z, p) in [
            (0.0, 0.5),
            (1.0, 0.158_655_25),
            (3.0, 1.349_898e-3),
            (-2.0, 0.977_249_87),
        ] {
            assert!(
                (upper_tail(z) - p).abs() / p < 1e-6,
                "z={z}: {} vs {p}",
                upper_tail(z)
            );
        }
        assert_eq!(log_score(1e-5), 0.5);
        assert_eq!(log_score(0.0), 1.0);
        assert_eq!(log_score(1.0), 0.0);
    }

    #[test]
    fn a_burst_is_unusual_for_a_calm_key_and_usual_for_a_bursty_one() {
        let min = 60_000_000;
        let mut calm = Likelihood::new(7 * 24 * 60 * min, 10, 100);
        let mut bursty = Likelihood::new(7 * 24 * 60 * min, 10, 100);
        for i in 0..1_000i64 {
            calm.observe(i * min, Some(0.01));
            bursty.observe(i * min, Some(if i % 7 == 0 { 0.9 } else { 0.01 }));
        }
        let t = 1_000 * min;
        assert!(calm.observe(t, Some(0.9)) > 0.5);
        assert!(bursty.observe(t, Some(0.9)) < 0.2);
    }

    #[test]
    fn nothing_is_scored_while_learning_or_while_the_detector_warms_up() {
        let mut l = Likelihood::new(1_000_000, 3, 5);
        for i in 0..5 {
            assert_eq!(l.observe(i, Some(if i == 4 { 1.0 } else { 0.0 })), 0.0);
        }
        assert_eq!(l.observe(5, None), 0.0);
        assert!(l.observe(6, Some(1.0)) > 0.0);
    }
}
