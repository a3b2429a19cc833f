//! A trailing event-time window of values, kept sorted, for robust statistics.
//!
//! In: `(time µs, value)` pairs in time order. Out: the median, the MAD (scaled to a normal's
//! standard deviation) and the mean / standard deviation of the values inside the window.
//! Insert and evict cost O(n) memory moves on a sorted `Vec`, cheap for the few hundred to few
//! thousand points a baseline holds.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// 1 / Φ⁻¹(3/4): scales a median absolute deviation to a normal's standard deviation.
pub const MAD_TO_SIGMA: f64 = 1.4826;

/// Checkpointed as its span and points; the sorted copy and the sums are rebuilt on restore.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(from = "Stored", into = "Stored")]
pub struct Trailing {
    span_us: i64,
    points: VecDeque<(i64, f64)>,
    sorted: Vec<f64>,
    sum: f64,
    sum_sq: f64,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    span_us: i64,
    points: VecDeque<(i64, f64)>,
}

impl From<Stored> for Trailing {
    fn from(s: Stored) -> Self {
        let mut t = Trailing::new(s.span_us);
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
            points: t.points,
        }
    }
}

impl Trailing {
    /// Values newer than `span_us` before the latest one are kept.
    pub fn new(span_us: i64) -> Self {
        Trailing {
            span_us,
            ..Default::default()
        }
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
        while let Some(&(t, v)) = self.points.front() {
            if t > horizon {
                break;
            }
            self.points.pop_front();
            let i = self.sorted.partition_point(|x| x.total_cmp(&v).is_lt());
            self.sorted.remove(i);
            self.sum -= v;
            self.sum_sq -= v * v;
        }
    }

    pub fn push(&mut self, ts_us: i64, v: f64) {
        self.points.push_back((ts_us, v));
        let i = self.sorted.partition_point(|x| x.total_cmp(&v).is_lt());
        self.sorted.insert(i, v);
        self.sum += v;
        self.sum_sq += v * v;
    }

    pub fn median(&self) -> Option<f64> {
        median_sorted(&self.sorted)
    }

    /// Median and robust scale (MAD × 1.4826). Where more than half the values are equal the
    /// MAD is 0; the scale then falls back to the mean absolute deviation × √(π/2), which is
    /// 0 only for a constant window.
    pub fn median_and_scale(&self, scratch: &mut Vec<f64>) -> Option<(f64, f64)> {
        let med = self.median()?;
        scratch.clear();
        scratch.extend(self.sorted.iter().map(|x| (x - med).abs()));
        let mad = crate::window::carry::median_of(scratch) * MAD_TO_SIGMA;
        if mad > 0.0 {
            return Some((med, mad));
        }
        let mean_abs = scratch.iter().sum::<f64>() / scratch.len() as f64;
        Some((med, mean_abs * (std::f64::consts::PI / 2.0).sqrt()))
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

fn median_sorted(sorted: &[f64]) -> Option<f64> {
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_follow_the_window_as_it_slides() {
        let mut w = Trailing::new(3);
        let mut scratch = Vec::new();
        for (t, v) in [(0, 5.0), (1, 1.0), (2, 3.0), (3, 100.0)] {
            w.evict(t);
            w.push(t, v);
        }
        // At t=3 the window (0, 3] holds 1, 3, 100.
        assert_eq!(w.len(), 3);
        assert_eq!(w.median(), Some(3.0));
        // |x - 3| = 2, 0, 97 → MAD 2.
        assert_eq!(
            w.median_and_scale(&mut scratch),
            Some((3.0, 2.0 * MAD_TO_SIGMA))
        );
        let (mean, std) = w.mean_and_std().unwrap();
        assert!((mean - 104.0 / 3.0).abs() < 1e-12);
        let var = [1.0f64, 3.0, 100.0]
            .iter()
            .map(|x| (x - mean).powi(2))
            .sum::<f64>()
            / 3.0;
        assert!((std - var.sqrt()).abs() < 1e-9);
    }

    #[test]
    fn a_mostly_constant_window_falls_back_to_the_mean_absolute_deviation() {
        let mut w = Trailing::new(100);
        for (t, v) in [1.0, 1.0, 1.0, 4.0].into_iter().enumerate() {
            w.push(t as i64, v);
        }
        let (med, scale) = w.median_and_scale(&mut Vec::new()).unwrap();
        assert_eq!(med, 1.0);
        assert!((scale - 0.75 * (std::f64::consts::PI / 2.0).sqrt()).abs() < 1e-12);
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
