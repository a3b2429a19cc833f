//! A trailing window of values, kept sorted, for robust statistics.
//!
//! In: `(time µs, value)` pairs in time order. The window holds the values newer than its
//! span and at most its capacity of them (the newest). Out: the median, a robust scale and the
//! mean / standard deviation of the values inside the window.
//! Insert and evict cost O(n) memory moves on a sorted `Vec`, cheap for the few hundred to few
//! thousand points a baseline holds.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

pub use crate::stats::MAD_TO_SIGMA;
use crate::stats::{median_and_mad_sorted, median_sorted};

/// How a robust z-score measures the spread of its baseline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scale {
    /// The MAD × 1.4826, but never less than the standard deviation. The MAD alone says a
    /// heavy-tailed key's ordinary bursts are many σ out (and is 0 where more than half the
    /// values are equal); the standard deviation counts them, so only what is unusual for the
    /// key itself stands out. The default: what holds on real, heavy-tailed series.
    #[default]
    MadOrStd,
    /// The MAD × 1.4826 alone (the standard deviation where the MAD is 0): an outlier or a
    /// lasting change barely widens it, so it stays sensitive on near-normal series.
    Mad,
}

/// Checkpointed as its span and points; the sorted copy and the sums are rebuilt on restore.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(from = "Stored", into = "Stored")]
pub struct Trailing {
    span_us: i64,
    cap: usize,
    points: VecDeque<(i64, f64)>,
    sorted: Vec<f64>,
    sum: f64,
    sum_sq: f64,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    span_us: i64,
    #[serde(default = "unbounded")]
    cap: usize,
    points: VecDeque<(i64, f64)>,
}

impl From<Stored> for Trailing {
    fn from(s: Stored) -> Self {
        let mut t = Trailing::new(s.span_us).with_cap(s.cap);
        for (ts, v) in s.points {
            t.push(ts, v);
        }
        t
    }
}

impl From<Trailing> for Stored {
    fn from(t: Trailing) -> Self {
        Stored {
            span_us: t.span_us,
            cap: t.cap,
            points: t.points,
        }
    }
}

impl Trailing {
    /// Values newer than `span_us` before the latest one are kept, however many.
    pub fn new(span_us: i64) -> Self {
        Trailing {
            span_us,
            cap: unbounded(),
            points: VecDeque::new(),
            sorted: Vec::new(),
            sum: 0.0,
            sum_sq: 0.0,
        }
    }

    /// At most the newest `cap` values are kept (at least one).
    pub fn with_cap(mut self, cap: usize) -> Self {
        self.cap = cap.max(1);
        self
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// Drops the values at or before `now - span`.
    pub fn evict(&mut self, now_us: i64) {
        let horizon = now_us.saturating_sub(self.span_us);
        while self.points.front().is_some_and(|&(t, _)| t <= horizon) {
            self.remove_oldest();
        }
    }

    fn remove_oldest(&mut self) {
        if let Some((_, v)) = self.points.pop_front() {
            let i = self.sorted.partition_point(|x| x.total_cmp(&v).is_lt());
            self.sorted.remove(i);
            self.sum -= v;
            self.sum_sq -= v * v;
        }
    }

    /// Adds a value, dropping the oldest one when the window is full.
    pub fn push(&mut self, ts_us: i64, v: f64) {
        if self.points.len() >= self.cap {
            self.remove_oldest();
        }
        self.points.push_back((ts_us, v));
        let i = self.sorted.partition_point(|x| x.total_cmp(&v).is_lt());
        self.sorted.insert(i, v);
        self.sum += v;
        self.sum_sq += v * v;
    }

    pub fn median(&self) -> Option<f64> {
        median_sorted(&self.sorted)
    }

    /// The `q` quantile (0 ≤ q ≤ 1) of the window: its value of rank round((n − 1) · q).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let last = self.sorted.len().checked_sub(1)?;
        let rank = (last as f64 * q.clamp(0.0, 1.0)).round() as usize;
        self.sorted.get(rank.min(last)).copied()
    }

    /// Median and scale, as `scale` says (see [`Scale`]). 0 only for a constant window.
    pub fn median_and_scale(&self, scale: Scale) -> Option<(f64, f64)> {
        let (med, mad) = median_and_mad_sorted(&self.sorted)?;
        let (_, std) = self.mean_and_std()?;
        let mad = mad * MAD_TO_SIGMA;
        Some((
            med,
            match scale {
                Scale::MadOrStd => mad.max(std),
                Scale::Mad if mad > 0.0 => mad,
                Scale::Mad => std,
            },
        ))
    }

    /// Mean and (population) standard deviation.
    pub fn mean_and_std(&self) -> Option<(f64, f64)> {
        let n = self.points.len() as f64;
        if n == 0.0 {
            return None;
        }
        let mean = self.sum / n;
        Some((mean, (self.sum_sq / n - mean * mean).max(0.0).sqrt()))
    }
}

fn unbounded() -> usize {
    usize::MAX
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_follow_the_window_as_it_slides() {
        let mut w = Trailing::new(3);
        for (t, v) in [(0, 5.0), (1, 1.0), (2, 3.0), (3, 100.0)] {
            w.evict(t);
            w.push(t, v);
        }
        // At t=3 the window (0, 3] holds 1, 3, 100.
        assert_eq!(w.len(), 3);
        assert_eq!(w.median(), Some(3.0));
        let (mean, std) = w.mean_and_std().unwrap();
        // |x - 3| = 2, 0, 97 → MAD 2, far below σ ≈ 45.8: the scale is σ.
        assert_eq!(w.median_and_scale(Scale::MadOrStd), Some((3.0, std)));
        assert_eq!(
            w.median_and_scale(Scale::Mad),
            Some((3.0, 2.0 * MAD_TO_SIGMA))
        );
        assert!((mean - 104.0 / 3.0).abs() < 1e-12);
        let var = [1.0f64, 3.0, 100.0]
            .iter()
            .map(|x| (x - mean).powi(2))
            .sum::<f64>()
            / 3.0;
        assert!((std - var.sqrt()).abs() < 1e-9);
    }

    #[test]
    fn the_scale_is_the_mad_where_it_exceeds_the_standard_deviation() {
        // 0, 0, 10, 10, 10: median 10, MAD 0, σ = √24: the scale is σ.
        let scale = |values: &[f64]| {
            let mut w = Trailing::new(100);
            for (t, &v) in values.iter().enumerate() {
                w.push(t as i64, v);
            }
            w.median_and_scale(Scale::MadOrStd).unwrap()
        };
        let (med, s) = scale(&[0.0, 0.0, 10.0, 10.0, 10.0]);
        assert_eq!(med, 10.0);
        assert!((s - 24.0f64.sqrt()).abs() < 1e-12, "{s}");
        // Deviations 1, 1, 0.1, 0, 0.1, 1, 1: MAD 1, so 1.4826, above σ = √(4.02 / 7).
        let (_, s) = scale(&[-1.0, -1.0, 0.0, 1.0, 1.0, -0.1, 0.1]);
        let mad = MAD_TO_SIGMA;
        assert!((s - mad).abs() < 1e-12, "{s} vs {mad}");
        assert_eq!(scale(&[3.0; 4]), (3.0, 0.0));
    }

    #[test]
    fn a_capped_window_keeps_its_newest_values() {
        let mut w = Trailing::new(i64::MAX).with_cap(3);
        for (t, v) in [9.0, 2.0, 7.0, 1.0, 5.0].into_iter().enumerate() {
            w.push(t as i64, v);
        }
        assert_eq!(w.len(), 3);
        assert_eq!(w.median(), Some(5.0));
        assert_eq!(w.mean_and_std().unwrap().0, 13.0 / 3.0);
        let back: Trailing = serde_json::from_str(&serde_json::to_string(&w).unwrap()).unwrap();
        assert_eq!((back.len(), back.median()), (3, Some(5.0)));
    }

    #[test]
    fn a_restored_window_rebuilds_its_order() {
        let mut w = Trailing::new(100);
        for (t, v) in [9.0, 2.0, 7.0].into_iter().enumerate() {
            w.push(t as i64, v);
        }
        let json = serde_json::to_string(&w).unwrap();
        let mut back: Trailing = serde_json::from_str(&json).unwrap();
        assert_eq!(back.median(), Some(7.0));
        back.push(3, 1.0);
        assert_eq!(back.median(), Some(4.5));
        assert_eq!(back.mean_and_std().unwrap().0, 19.0 / 4.0);
    }
}
