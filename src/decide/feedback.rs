//! Verdicts on alerts, from the people and services that read them.
//!
//! In: the alerts an alert stage opens (their `alert_id` and when they started), and feedback
//! rows — `alert_id`, `verdict` (`true`: a real problem; `noise`: a false positive) and `ts`,
//! when it was given — from the stage's `feedback` input (a source reading a topic such as
//! `alerts.feedback`). Out: each alert's first verdict, counted once per alert, so a stage's
//! false-positive rate over any span is `noise / (true + noise)` of those counts.
//!
//! A verdict on an alert this stage did not open is not counted (it is another stage's, or
//! its alert is older than the window); one that comes before its alert (a replay reads both
//! topics at once) waits for it up to `window` past its `ts`. A second verdict on an alert is
//! not counted again. Everything is kept `window` (event time) and then forgotten, so the
//! state is bounded by the alerts and verdicts of one window.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// What a reader of an alert says of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// A real problem.
    True,
    /// A false positive.
    Noise,
}

impl Verdict {
    pub const ALL: [Verdict; 2] = [Verdict::True, Verdict::Noise];

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::True => "true",
            Verdict::Noise => "noise",
        }
    }

    /// `true` or `noise`, as written in a feedback row.
    pub fn parse(text: &str) -> Option<Verdict> {
        match text {
            "true" => Some(Verdict::True),
            "noise" => Some(Verdict::Noise),
            _ => None,
        }
    }
}

/// A stage's feedback settings, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedbackSpec {
    /// The source or stage the verdicts come from.
    pub from: String,
    /// How long an alert takes verdicts, and a verdict waits for its alert (µs).
    pub window: i64,
    /// The false-positive rate the shipped rule alerts above.
    pub max_false_positive_rate: f64,
}

/// The alerts of one window and the verdicts given or waiting.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Feedback {
    /// Alerts opened, by id: when each started (µs).
    opened: BTreeMap<String, i64>,
    /// Opened alerts with a verdict counted.
    judged: BTreeSet<String>,
    /// Verdicts on alerts not opened yet: the verdict and its `ts` (µs).
    waiting: BTreeMap<String, (Verdict, i64)>,
}

/// At most this many verdicts wait for their alerts: a flood of verdicts on unknown alerts
/// (another pipeline's) cannot grow the state without bound.
const MAX_WAITING: usize = 100_000;

impl Feedback {
    /// Notes an alert opened at `started` (µs); its verdict, to count, if one was waiting.
    pub fn opened(&mut self, alert_id: &str, started: i64) -> Option<Verdict> {
        self.opened.insert(alert_id.to_string(), started);
        let (verdict, _) = self.waiting.remove(alert_id)?;
        self.judged.insert(alert_id.to_string()).then_some(verdict)
    }

    /// Takes a verdict given at `ts` (µs); the verdict to count, if it is the first on an alert
    /// this stage opened.
    pub fn verdict(&mut self, alert_id: &str, verdict: Verdict, ts: i64) -> Option<Verdict> {
        if self.opened.contains_key(alert_id) {
            return self.judged.insert(alert_id.to_string()).then_some(verdict);
        }
        if self.waiting.len() < MAX_WAITING {
            self.waiting
                .entry(alert_id.to_string())
                .or_insert((verdict, ts));
        }
        None
    }

    /// Forgets alerts started, and verdicts given, more than `window` before `watermark`.
    pub fn expire(&mut self, watermark: i64, window: i64) {
        let horizon = watermark.saturating_sub(window);
        let expired: Vec<String> = self
            .opened
            .iter()
            .filter(|&(_, &started)| started < horizon)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            self.opened.remove(&id);
            self.judged.remove(&id);
        }
        self.waiting.retain(|_, (_, ts)| *ts >= horizon);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000_000;

    #[test]
    fn the_first_verdict_on_an_opened_alert_counts_once() {
        let mut f = Feedback::default();
        assert_eq!(f.opened("a", 0), None);
        assert_eq!(f.verdict("a", Verdict::Noise, HOUR), Some(Verdict::Noise));
        // Said again, or changed: not counted twice.
        assert_eq!(f.verdict("a", Verdict::Noise, 2 * HOUR), None);
        assert_eq!(f.verdict("a", Verdict::True, 2 * HOUR), None);
        // An alert this stage never opened.
        assert_eq!(f.verdict("b", Verdict::True, HOUR), None);
    }

    #[test]
    fn a_verdict_before_its_alert_waits_for_it_within_the_window() {
        let mut f = Feedback::default();
        assert_eq!(f.verdict("a", Verdict::True, HOUR), None);
        assert_eq!(f.verdict("b", Verdict::Noise, HOUR), None);
        assert_eq!(f.opened("a", 0), Some(Verdict::True));
        // The verdict on `b` is forgotten a window after it was given.
        f.expire(HOUR + 24 * HOUR + 1, 24 * HOUR);
        assert_eq!(f.opened("b", 0), None);
        assert_eq!(
            f.verdict("b", Verdict::Noise, 30 * HOUR),
            Some(Verdict::Noise)
        );
    }

    #[test]
    fn alerts_are_forgotten_a_window_after_they_started() {
        let mut f = Feedback::default();
        f.opened("a", 0);
        f.opened("b", 10 * HOUR);
        f.expire(24 * HOUR + 1, 24 * HOUR);
        // `a` is gone: a verdict on it now waits (and is not counted).
        assert_eq!(f.verdict("a", Verdict::True, 25 * HOUR), None);
        assert_eq!(
            f.verdict("b", Verdict::True, 25 * HOUR),
            Some(Verdict::True)
        );
        let json = serde_json::to_string(&f).unwrap();
        assert_eq!(serde_json::from_str::<Feedback>(&json).unwrap(), f);
    }
}
