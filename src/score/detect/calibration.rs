//! Calibration: turns an ensemble's deviation into a score that means the same on every key,
//! and raises it once per episode.
//!
//! In: per value, the ensemble's deviation in σ (the largest weighted deviation of its
//! detectors). Each key is judged against itself: the deviation is divided by the key's own
//! `quantile` (default the 95th percentile) of its last `history` deviations, over what that
//! quantile is for a well-behaved key (2, about the 95th percentile of a normal's |z|), and
//! never scaled up. A calm key's 5σ stays 5σ; a key whose ordinary bursts reach 6σ needs 15σ.
//! Until a key has learnt [`TRUSTED_HISTORY`] deviations it is taken for a calm one (a quantile
//! of a few values would be the first hour of a slow drift itself), and a deviation past the
//! alarm level is learnt as the alarm level, so an anomaly that lasts does not calibrate
//! itself away.
//! Then one alarm per episode: once a calibrated deviation reaches `alarm`, the next `rest`
//! values score 0, and every further value at the alarm level extends the rest (Numenta's
//! CAD OSE does the same). A sustained change alarms again once per `rest` values. Out: the
//! calibrated deviation, as [`squash`](super::squash)ed by the ensemble into [0, 1) — ½ at
//! `alarm`, so one threshold serves a whole fleet.
//!
//! For the first `learn` of event time (default a day, so that a daily pattern has been seen
//! once), and while any of the ensemble's detectors is still learning (a weekly season, its
//! first week), the key is still learning and scores 0: no alarm from a baseline of a few
//! values or from a season not yet seen.
//! State per key: the last `history` deviations, the time of its first one and a counter.

use serde::{Deserialize, Serialize};

use super::trailing::Trailing;
use crate::duration::{DurationError, parse_duration};

/// Which calibration setting is wrong, and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CalibrationError {
    #[error("calibration.history must be at least 1")]
    History,
    #[error("calibration.learn: {0}")]
    Learn(#[source] DurationError),
    #[error("calibration.quantile must be in (0, 1), not {0}")]
    Quantile(f64),
    #[error("calibration.alarm must be a positive number of σ, not {0}")]
    Alarm(f64),
}

/// The 95th percentile of |Z| for a standard normal, rounded: the quantile a calm key's
/// deviations are scaled against.
const CALM_QUANTILE: f64 = 2.0;

/// Deviations a key must have learnt before its own quantile is trusted; until then it is
/// taken for a calm key.
pub const TRUSTED_HISTORY: usize = 100;

/// How a score stage calibrates its ensemble (`calibration: {history: 2000, …}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalibrationSpec {
    /// Deviations each key's quantile is taken over.
    #[serde(default = "history")]
    pub history: usize,
    /// The quantile of them that a calm key holds at 2σ.
    #[serde(default = "quantile")]
    pub quantile: f64,
    /// The calibrated deviation (σ) that starts an episode, and where the score is ½.
    #[serde(default = "alarm")]
    pub alarm: f64,
    /// Values that score 0 after one at the alarm level.
    #[serde(default = "rest")]
    pub rest: usize,
    /// Event time from the key's first deviation before it scores at all, e.g. "1d".
    #[serde(default = "learn")]
    pub learn: String,
}

fn history() -> usize {
    2_000
}
fn quantile() -> f64 {
    0.95
}
fn alarm() -> f64 {
    6.0
}
fn rest() -> usize {
    100
}
fn learn() -> String {
    "1d".into()
}

impl Default for CalibrationSpec {
    fn default() -> Self {
        CalibrationSpec {
            history: history(),
            quantile: quantile(),
            alarm: alarm(),
            rest: rest(),
            learn: learn(),
        }
    }
}

impl CalibrationSpec {
    /// A fresh calibration, or which field is wrong.
    pub fn build(&self) -> Result<Calibration, CalibrationError> {
        if self.history == 0 {
            return Err(CalibrationError::History);
        }
        let learn_us = parse_duration(&self.learn)
            .map_err(CalibrationError::Learn)?
            .max(0);
        if !(self.quantile > 0.0 && self.quantile < 1.0) {
            return Err(CalibrationError::Quantile(self.quantile));
        }
        if !(self.alarm.is_finite() && self.alarm > 0.0) {
            return Err(CalibrationError::Alarm(self.alarm));
        }
        Ok(Calibration {
            quantile: self.quantile,
            alarm: self.alarm,
            rest: self.rest,
            learn_us,
            history: Trailing::new(i64::MAX).with_cap(self.history),
            first_us: None,
            since_alarm: None,
        })
    }
}

/// One key's calibration state (serialisable, for checkpoints).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Calibration {
    quantile: f64,
    alarm: f64,
    rest: usize,
    learn_us: i64,
    history: Trailing,
    /// The time of the key's first deviation.
    first_us: Option<i64>,
    /// Values since the last one at the alarm level.
    since_alarm: Option<usize>,
}

impl Calibration {
    /// The alarm level, in calibrated σ.
    pub fn alarm(&self) -> f64 {
        self.alarm
    }

    /// The calibrated deviation of `deviation` at `ts_us` (0 while learning or resting), then
    /// learns it; None (no detector had anything to say) is not learnt but counts towards the
    /// rest.
    /// A value while one of the ensemble's detectors is still learning (a seasonal one, its
    /// first season): it counts towards the learning time and the rest, scores 0 and is not
    /// learnt, so a season not yet seen does not inflate the key's quantile.
    pub fn skip(&mut self, ts_us: i64) -> f64 {
        self.since_alarm = self.since_alarm.map(|n| n.saturating_add(1));
        self.first_us.get_or_insert(ts_us);
        0.0
    }

    pub fn observe(&mut self, ts_us: i64, deviation: Option<f64>) -> f64 {
        self.since_alarm = self.since_alarm.map(|n| n.saturating_add(1));
        let Some(d) = deviation.filter(|d| !d.is_nan()) else {
            return 0.0;
        };
        let d = d.abs().min(super::MAX_DEVIATION);
        let first = *self.first_us.get_or_insert(ts_us);
        let calibrated = if ts_us.saturating_sub(first) >= self.learn_us {
            let q = if self.history.len() >= TRUSTED_HISTORY {
                self.history.quantile(self.quantile).unwrap_or(0.0)
            } else {
                CALM_QUANTILE
            };
            d * CALM_QUANTILE / q.max(CALM_QUANTILE)
        } else {
            0.0
        };
        // An alarming deviation is learnt as the deviation at the alarm level: a dip that lasts
        // for hours does not make itself ordinary, yet a key that has turned bursty for good
        // raises its quantile once such values pass its share.
        let learnt = if calibrated > self.alarm {
            d * self.alarm / calibrated
        } else {
            d
        };
        self.history.push(0, learnt);
        let resting = self.since_alarm.is_some_and(|n| n <= self.rest);
        if calibrated >= self.alarm {
            self.since_alarm = Some(0);
        }
        if resting { 0.0 } else { calibrated }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Learning for `learn` values of a 1-second cadence (observe with `ts` = the value's index).
    fn calibration(history: usize, rest: usize, learn: u32) -> Calibration {
        CalibrationSpec {
            history,
            rest,
            learn: format!("{learn}s"),
            ..Default::default()
        }
        .build()
        .unwrap()
    }

    const S: i64 = 1_000_000;

    #[test]
    fn a_calm_key_keeps_its_deviation_and_a_bursty_one_is_scaled_down() {
        let mut calm = calibration(100, 0, 10);
        let mut bursty = calibration(100, 0, 10);
        for i in 0..100 {
            calm.observe(i * S, Some(1.0));
            // Every tenth deviation is a 6σ burst: the 95th percentile is 6.
            bursty.observe(i * S, Some(if i % 10 == 0 { 6.0 } else { 1.0 }));
        }
        assert_eq!(calm.observe(100 * S, Some(7.0)), 7.0);
        assert_eq!(bursty.observe(100 * S, Some(7.0)), 7.0 * 2.0 / 6.0);
        // For its first `learn` of event time the key is still learning: nothing scores.
        let mut fresh = calibration(1_000, 0, 200);
        for i in 0..200 {
            assert_eq!(fresh.observe(i * S, Some(50.0)), 0.0);
        }
        assert_eq!(fresh.observe(200 * S, Some(50.0)), 50.0 * 2.0 / 50.0);
    }

    #[test]
    fn a_short_history_is_taken_for_a_calm_key() {
        // Ten values learnt: too few for their quantile to say anything.
        let mut c = calibration(1_000, 0, 10);
        for i in 0..10 {
            c.observe(i * S, Some(5.0));
        }
        assert_eq!(c.observe(10 * S, Some(5.0)), 5.0);
        for i in 11..TRUSTED_HISTORY as i64 {
            c.observe(i * S, Some(5.0));
        }
        // From TRUSTED_HISTORY on, the key's own 95th percentile counts.
        assert_eq!(c.observe(TRUSTED_HISTORY as i64 * S, Some(5.0)), 2.0);
    }

    #[test]
    fn a_deviation_past_the_alarm_is_learnt_as_the_alarm_level() {
        let mut c = calibration(100, 0, 0);
        for i in 0..100 {
            c.observe(i * S, Some(1.0));
        }
        // 100σ values alarm and are learnt as 6σ, the alarm level on a calm key, until they
        // pass 5 % of the history and its 95th percentile becomes 6 (learnt, they would make
        // it 100 and hide a 7σ deviation).
        let mut t = 100;
        let mut alarmed = 0;
        while c.observe(t * S, Some(100.0)) == 100.0 {
            t += 1;
            alarmed += 1;
            assert!(alarmed <= 10, "the 95th percentile never moved");
        }
        assert!(alarmed >= 5, "{alarmed}");
        // The quantile is now 6 (or the 18σ the last one was learnt as), not 100: a 7σ
        // deviation still counts for more than 2σ·7/18.
        let probe = c.observe((t + 1) * S, Some(7.0));
        assert!(probe >= 7.0 * 2.0 / 18.0, "{probe}");
    }

    #[test]
    fn an_alarm_silences_the_next_rest_values_and_a_sustained_one_extends_it() {
        // Learnt on 1,000 calm deviations of 0: nothing below is scaled.
        let mut c = calibration(1_000, 3, 0);
        for i in 0..1_000 {
            c.observe(i * S, Some(0.0));
        }
        let mut t = 1_000 * S;
        let mut next = |d: Option<f64>| {
            t += S;
            c.observe(t, d)
        };
        assert_eq!(next(Some(7.0)), 7.0);
        assert_eq!(next(Some(9.0)), 0.0); // 1 after: resting, and the rest restarts
        assert_eq!(next(Some(1.0)), 0.0); // 1 after the 9
        assert_eq!(next(None), 0.0); // 2
        assert_eq!(next(Some(8.0)), 0.0); // 3: still resting, restarts
        for _ in 0..3 {
            assert_eq!(next(Some(1.0)), 0.0);
        }
        assert_eq!(next(Some(1.5)), 1.5); // 4 after the 8: heard again
        assert_eq!(next(Some(f64::NAN)), 0.0);
        assert_eq!(next(Some(6.0)), 6.0);
    }

    #[test]
    fn bad_settings_are_refused_with_the_field_named() {
        let bad = |s: CalibrationSpec| s.build().unwrap_err().to_string();
        let d = CalibrationSpec::default();
        assert_eq!(
            bad(CalibrationSpec {
                quantile: 1.0,
                ..d.clone()
            }),
            "calibration.quantile must be in (0, 1), not 1"
        );
        assert_eq!(
            bad(CalibrationSpec {
                alarm: 0.0,
                ..d.clone()
            }),
            "calibration.alarm must be a positive number of σ, not 0"
        );
        assert_eq!(
            bad(CalibrationSpec {
                history: 0,
                ..d.clone()
            }),
            "calibration.history must be at least 1"
        );
        assert!(matches!(
            CalibrationSpec {
                learn: "soon".into(),
                ..d
            }
            .build(),
            Err(CalibrationError::Learn(DurationError::NotADuration { .. }))
        ));
    }
}
