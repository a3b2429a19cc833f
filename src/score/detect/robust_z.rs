//! Robust z-score: how far a value lies from the median of the key's trailing baseline, in
//! units of the baseline's MAD (× 1.4826, a normal's σ).
//!
//! In: one `(time, value)` at a time, in event-time order. Out: the deviation |z| ≥ 0 (None
//! until the baseline holds `min_points` values), scored
//! before the value joins the baseline (a point is never part of its own reference).

use serde::{Deserialize, Serialize};

use super::trailing::Trailing;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RobustZ {
    baseline: Trailing,
    min_points: usize,
    /// The smallest scale as a share of |median|.
    #[serde(default)]
    floor: f64,
    #[serde(skip)]
    scratch: Vec<f64>,
}

impl RobustZ {
    pub fn new(baseline_us: i64, min_points: usize) -> Self {
        RobustZ {
            baseline: Trailing::new(baseline_us),
            min_points,
            floor: 0.0,
            scratch: Vec::new(),
        }
    }

    /// The scale never falls below `share` × |median| (a steady bill's cent is no anomaly).
    pub fn with_relative_floor(mut self, share: f64) -> Self {
        self.floor = share;
        self
    }

    /// The signed z of `value` against the baseline (None while warming up), then learns it.
    pub fn observe_signed(&mut self, ts_us: i64, value: f64) -> Option<f64> {
        self.baseline.evict(ts_us);
        let z = (self.baseline.len() >= self.min_points)
            .then(|| self.baseline.median_and_scale(&mut self.scratch))
            .flatten()
            .map(|(median, scale)| {
                standardise(value - median, scale.max(self.floor * median.abs()))
            });
        self.baseline.push(ts_us, value);
        z
    }

    /// |z|, or None while the baseline holds fewer than `min_points` values.
    pub fn observe(&mut self, ts_us: i64, value: f64) -> Option<f64> {
        self.observe_signed(ts_us, value).map(f64::abs)
    }
}

/// `diff / scale`, where a zero scale (a constant baseline) makes any change a large deviation
/// and no change none.
pub fn standardise(diff: f64, scale: f64) -> f64 {
    if scale > 0.0 {
        diff / scale
    } else if diff == 0.0 {
        0.0
    } else {
        diff.signum() * super::MAX_DEVIATION
    }
}
