//! Seasonal baseline: a value against what the same key did at the same time of the season
//! (by default the same hour of the week) in its last few seasons.
//!
//! In: one `(time, value)` at a time. The key's values are kept as means per `width` bucket
//! over the last `seasons` periods; by default the width is the key's own cadence (the median gap
//! of its first 16 values, at least a second), so each bucket holds about one value — coarser
//! buckets blur sharp daily transitions into false alarms. The expectation for a value at time t
//! is the median, over the last `seasons` periods, of the bucket means at t − k·period,
//! interpolated linearly between the two nearest bucket centres (so a value at 10:55 is
//! compared with last week's 10:55, not with last week's 10:00–11:00 mean). The residual
//! (value − expectation) is standardised as a robust z against the key's earlier residuals
//! (its last 2,000 by default). Out: |z| ≥ 0, or None until one full season and `min_points`
//! residuals have been seen.
//!
//! State per key: `seasons × period / width` buckets of 32 bytes (6,048 for three weeks of
//! 5-minute values, 194 kB; 504 with `width: 1h`) and the residuals' baseline.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::robust_z::{Baseline, RobustZ, Scale};

/// Values whose gaps set an automatic bucket width.
const CADENCE_SAMPLE: usize = 17;

/// The values of one bucket: their count, sum, and the sum of their offsets into the bucket.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Bucket {
    number: i64,
    count: u32,
    sum: f64,
    offsets: f64,
}

impl Bucket {
    fn mean(&self) -> f64 {
        self.sum / f64::from(self.count)
    }

    /// The mean time of its values.
    fn centre(&self, width: i64) -> f64 {
        (self.number * width) as f64 + self.offsets / f64::from(self.count)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Seasonal {
    period_us: i64,
    /// None until the cadence is known.
    width_us: Option<i64>,
    seasons: u32,
    /// Values seen before the width is known.
    first: Vec<(i64, f64)>,
    /// Per bucket (number = time / width), in bucket order.
    buckets: VecDeque<Bucket>,
    residuals: RobustZ,
    #[serde(skip)]
    scratch: Vec<f64>,
}

impl Seasonal {
    /// `width_us`: None to use the key's cadence; `residuals`: the earlier residuals a residual
    /// is standardised against, and how their spread is measured.
    pub fn new(
        period_us: i64,
        width_us: Option<i64>,
        seasons: u32,
        residuals: Baseline,
        scale: Scale,
    ) -> Self {
        Seasonal {
            period_us,
            width_us: width_us.map(|w| w.max(1)),
            seasons: seasons.max(1),
            first: Vec::new(),
            buckets: VecDeque::new(),
            residuals: RobustZ::new(residuals).with_scale(scale),
            scratch: Vec::new(),
        }
    }

    fn bucket(&self, number: i64) -> Option<&Bucket> {
        let i = self.buckets.partition_point(|b| b.number < number);
        self.buckets.get(i).filter(|b| b.number == number)
    }

    /// The bucket means at time `t`: interpolated between the centres of t's bucket and the
    /// neighbour on t's side of it; one of them alone where the other is empty.
    fn at(&self, t: i64, width: i64) -> Option<f64> {
        let number = t.div_euclid(width);
        let Some(own) = self.bucket(number) else {
            return self
                .bucket(number - 1)
                .or_else(|| self.bucket(number + 1))
                .map(Bucket::mean);
        };
        let centre = own.centre(width);
        let side = if (t as f64) < centre { -1 } else { 1 };
        Some(match self.bucket(number + side) {
            Some(other) => {
                let (c0, c1) = (centre, other.centre(width));
                let f = ((t as f64 - c0) / (c1 - c0)).clamp(0.0, 1.0);
                own.mean() + (other.mean() - own.mean()) * f
            }
            None => own.mean(),
        })
    }

    /// Adds a value to its bucket.
    fn learn(&mut self, ts_us: i64, value: f64, width: i64) {
        let number = ts_us.div_euclid(width);
        let offset = ts_us.rem_euclid(width) as f64;
        let i = self.buckets.partition_point(|b| b.number < number);
        match self.buckets.get_mut(i) {
            Some(b) if b.number == number => {
                b.count += 1;
                b.sum += value;
                b.offsets += offset;
            }
            _ => self.buckets.insert(
                i,
                Bucket {
                    number,
                    count: 1,
                    sum: value,
                    offsets: offset,
                },
            ),
        }
    }

    /// The width, once known; fixes it from the first values' median gap when they suffice.
    fn width(&mut self, ts_us: i64, value: f64) -> Option<i64> {
        if let Some(w) = self.width_us {
            return Some(w);
        }
        self.first.push((ts_us, value));
        if self.first.len() < CADENCE_SAMPLE {
            return None;
        }
        let mut gaps: Vec<i64> = self.first.windows(2).map(|p| p[1].0 - p[0].0).collect();
        gaps.sort_unstable();
        let width = gaps[gaps.len() / 2].clamp(1_000_000, (self.period_us / 24).max(1_000_000));
        self.width_us = Some(width);
        // The sample itself, but for the current value (learnt by the caller).
        let first = std::mem::take(&mut self.first);
        for &(t, v) in &first[..first.len() - 1] {
            self.learn(t, v, width);
        }
        Some(width)
    }

    pub fn observe(&mut self, ts_us: i64, value: f64) -> Option<f64> {
        let width = self.width(ts_us, value)?;
        let keep = i64::from(self.seasons) * self.period_us + 2 * width;
        let oldest = ts_us.saturating_sub(keep).div_euclid(width);
        while self.buckets.front().is_some_and(|b| b.number < oldest) {
            self.buckets.pop_front();
        }
        self.scratch.clear();
        for season in 1..=i64::from(self.seasons) {
            if let Some(v) = self.at(ts_us - season * self.period_us, width) {
                self.scratch.push(v);
            }
        }
        let z = if self.scratch.is_empty() {
            None
        } else {
            let expected = crate::stats::median_of(&mut self.scratch);
            self.residuals.observe(ts_us, value - expected)
        };
        self.learn(ts_us, value, width);
        z
    }
}
