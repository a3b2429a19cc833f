//! Rolling z-score against the trailing mean and standard deviation: the classic baseline
//! that `stratus evaluate` reports beside the ensemble (NAB calls it "windowed Gaussian").
//!
//! In: one `(time, value)` at a time. Out: |value − mean| / σ of the earlier values in the
//! window.

use serde::{Deserialize, Serialize};

use super::robust_z::standardise;
use super::trailing::Trailing;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RollingZ {
    window: Trailing,
    min_points: usize,
}

impl RollingZ {
    pub fn new(window_us: i64, min_points: usize) -> Self {
        RollingZ {
            window: Trailing::new(window_us),
            min_points,
        }
    }

    pub fn observe(&mut self, ts_us: i64, value: f64) -> Option<f64> {
        self.window.evict(ts_us);
        let z = (self.window.len() >= self.min_points)
            .then(|| self.window.mean_and_std())
            .flatten()
            .map(|(mean, std)| standardise(value - mean, std).abs());
        self.window.push(ts_us, value);
        z
    }
}
