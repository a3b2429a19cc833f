//! Seasonal baseline: a value against what the same key did at the same time of the season
//! (by default the same hour of the week) in its last few seasons.
//!
//! In: one `(time, value)` at a time. The expectation is the median of the key's values within
//! ±`half_width` of the same phase in each of the last `seasons` periods; the residual
//! (value − expectation) is standardised against the trailing median and MAD of the key's
//! residuals over one period. Out: |z| ≥ 0, or None until one full season and `min_points`
//! residuals have been seen (None before). "The same phase" is exactly one, two, … periods earlier, so no
//! calendar alignment is needed. State per key: the values of the last `seasons` periods.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::robust_z::RobustZ;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Seasonal {
    period_us: i64,
    half_width_us: i64,
    seasons: u32,
    history: VecDeque<(i64, f64)>,
    residuals: RobustZ,
    #[serde(skip)]
    scratch: Vec<f64>,
}

impl Seasonal {
    pub fn new(period_us: i64, half_width_us: i64, seasons: u32, min_points: usize) -> Self {
        Seasonal {
            period_us,
            half_width_us,
            seasons: seasons.max(1),
            history: VecDeque::new(),
            residuals: RobustZ::new(period_us, min_points),
            scratch: Vec::new(),
        }
    }

    pub fn observe(&mut self, ts_us: i64, value: f64) -> Option<f64> {
        let keep = i64::from(self.seasons) * self.period_us + self.half_width_us;
        while self
            .history
            .front()
            .is_some_and(|&(t, _)| t < ts_us.saturating_sub(keep))
        {
            self.history.pop_front();
        }
        self.scratch.clear();
        for season in 1..=i64::from(self.seasons) {
            let centre = ts_us - season * self.period_us;
            let from = self
                .history
                .partition_point(|&(t, _)| t < centre - self.half_width_us);
            let to = self
                .history
                .partition_point(|&(t, _)| t <= centre + self.half_width_us);
            self.scratch
                .extend(self.history.range(from..to).map(|&(_, v)| v));
        }
        let z = if self.scratch.is_empty() {
            None
        } else {
            self.scratch.sort_unstable_by(f64::total_cmp);
            let n = self.scratch.len();
            let expected = if n % 2 == 1 {
                self.scratch[n / 2]
            } else {
                (self.scratch[n / 2 - 1] + self.scratch[n / 2]) / 2.0
            };
            self.residuals.observe(ts_us, value - expected)
        };
        let at = self.history.partition_point(|&(t, _)| t <= ts_us);
        self.history.insert(at, (ts_us, value));
        z
    }
}
