//! Level shift: a two-sided CUSUM (Page, 1954) over robust z-scores.
//!
//! In: one `(time, value)` at a time. Each value is standardised against the key's trailing
//! median and MAD; `S⁺ = max(0, S⁺ + z − k)` and `S⁻ = max(0, S⁻ − z − k)` accumulate a
//! persistent drift of more than `k` σ. Out: `max(S⁺, S⁻)`, which crosses `h` at the classic
//! alarm. Sums are capped at `3h` so that the statistic falls back within a few dozen points
//! once the baseline has absorbed the new level, and each z is clipped to ±`h` so that a
//! single spike (the robust z-score's job) cannot raise an alarm alone.

use serde::{Deserialize, Serialize};

use super::robust_z::{Baseline, RobustZ};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cusum {
    z: RobustZ,
    k: f64,
    h: f64,
    up: f64,
    down: f64,
}

impl Cusum {
    pub fn new(baseline_us: i64, min_points: usize, k: f64, h: f64) -> Self {
        Cusum {
            z: RobustZ::new(Baseline::span(baseline_us, min_points)),
            k,
            h,
            up: 0.0,
            down: 0.0,
        }
    }

    /// See [`RobustZ::with_relative_floor`].
    pub fn with_relative_floor(mut self, share: f64) -> Self {
        self.z = self.z.with_relative_floor(share);
        self
    }

    /// The alarm threshold `h` (the statistic's "one alarm" level).
    pub fn h(&self) -> f64 {
        self.h
    }

    pub fn observe(&mut self, ts_us: i64, value: f64) -> Option<f64> {
        let z = self.z.observe_signed(ts_us, value)?;
        let z = z.clamp(-self.h, self.h);
        let cap = 3.0 * self.h;
        self.up = (self.up + z - self.k).clamp(0.0, cap);
        self.down = (self.down - z - self.k).clamp(0.0, cap);
        Some(self.up.max(self.down))
    }
}
