//! Robust z-score: how far a value lies from the median of the key's trailing baseline, in
//! units of the baseline's scale (by default the MAD × 1.4826, never less than its standard
//! deviation: [`Scale`]).
//!
//! In: one `(time, value)` at a time, in event-time order. With `smooth: k` the value scored
//! is the mean of the key's last k values (a level that moves, not one spike), judged against
//! earlier such means. Out: the deviation |z| ≥ 0 (None until the baseline holds `min_points`
//! values), scored before the value joins the baseline (a point is never part of its own
//! reference).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

pub use super::trailing::Scale;
use super::trailing::Trailing;

/// Which earlier values a value is judged against: those newer than `span_us` (`i64::MAX`: any
/// age), at most the newest `points` of them, and none until there are `min_points`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Baseline {
    pub span_us: i64,
    pub points: usize,
    pub min_points: usize,
}

impl Baseline {
    /// The values of the last `span_us`, however many.
    pub fn span(span_us: i64, min_points: usize) -> Self {
        Baseline {
            span_us,
            points: usize::MAX,
            min_points,
        }
    }

    fn window(&self) -> Trailing {
        Trailing::new(self.span_us).with_cap(self.points)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RobustZ {
    baseline: Trailing,
    min_points: usize,
    /// The smallest scale as a share of |median|.
    #[serde(default)]
    floor: f64,
    #[serde(default)]
    scale: Scale,
    /// Values averaged into each scored value (1: the value itself).
    #[serde(default = "one")]
    smooth: usize,
    /// The last `smooth` values, when `smooth` > 1.
    #[serde(default)]
    recent: VecDeque<f64>,
}

fn one() -> usize {
    1
}

impl RobustZ {
    pub fn new(baseline: Baseline) -> Self {
        RobustZ {
            baseline: baseline.window(),
            min_points: baseline.min_points,
            floor: 0.0,
            scale: Scale::default(),
            smooth: 1,
            recent: VecDeque::new(),
        }
    }

    /// The scale never falls below `share` × |median| (a steady bill's cent is no anomaly).
    pub fn with_relative_floor(mut self, share: f64) -> Self {
        self.floor = share;
        self
    }

    /// Measures the baseline's spread as `scale` says.
    pub fn with_scale(mut self, scale: Scale) -> Self {
        self.scale = scale;
        self
    }

    /// Scores the mean of the last `k` values instead of each value (at least 1).
    pub fn with_smoothing(mut self, k: usize) -> Self {
        self.smooth = k.max(1);
        self
    }

    /// The signed z of `value` against the baseline (None while warming up), then learns it.
    pub fn observe_signed(&mut self, ts_us: i64, value: f64) -> Option<f64> {
        let value = if self.smooth > 1 {
            if self.recent.len() == self.smooth {
                self.recent.pop_front();
            }
            self.recent.push_back(value);
            self.recent.iter().sum::<f64>() / self.recent.len() as f64
        } else {
            value
        };
        self.baseline.evict(ts_us);
        let z = (self.baseline.len() >= self.min_points)
            .then(|| self.baseline.median_and_scale(self.scale))
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
