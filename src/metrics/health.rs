//! Whether a running pipeline is healthy, as `/readyz` reports it.
//!
//! In: the run loop marks the pipeline started, and raises and clears named problems (a sink
//! whose commits fail and are retried, a broker that cannot be reached, a watermark that does
//! not move while events arrive). Out: [`Health::report`], ready or the list of problems with
//! how long each has lasted — the body of `/readyz`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

// Tokio's clock, so that tests may pause it; outside a runtime it is the system's.
use tokio::time::Instant;

/// The names of the problems a run reports (also `stratus_failing`'s `problem` label, which the
/// shipped rules match): the checkpoint, the brokers, a delivery to them, a sink, a source's
/// watermark.
pub mod problem {
    pub const CHECKPOINT: &str = "checkpoint";
    pub const KAFKA: &str = "kafka";
    pub const KAFKA_DELIVERY: &str = "kafka delivery";

    pub fn sink(name: &str) -> String {
        format!("sink {name}")
    }

    pub fn watermark(source: &str) -> String {
        format!("source {source} watermark")
    }
}

/// Shared between the run loop and the HTTP server; cheap to clone.
#[derive(Clone, Default)]
pub struct Health(Arc<Inner>);

#[derive(Default)]
struct Inner {
    started: AtomicBool,
    /// What is wrong, by what it concerns: the reason and since when.
    problems: Mutex<BTreeMap<String, (String, Instant)>>,
}

impl Health {
    pub fn new() -> Self {
        Self::default()
    }

    /// The pipeline has opened its sources, sinks and state and reads.
    pub fn set_started(&self) {
        self.0.started.store(true, Ordering::Relaxed);
    }

    fn problems(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (String, Instant)>> {
        self.0.problems.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `what` is wrong, for `reason`; returns whether it is new. A problem raised again keeps
    /// its start and takes the newer reason.
    pub fn raise(&self, what: &str, reason: &str) -> bool {
        let mut problems = self.problems();
        match problems.get_mut(what) {
            Some(known) => {
                known.0 = reason.to_string();
                false
            }
            None => {
                problems.insert(what.to_string(), (reason.to_string(), Instant::now()));
                true
            }
        }
    }

    /// `what` is fine again; returns how long it was wrong, if it was.
    pub fn clear(&self, what: &str) -> Option<Duration> {
        self.problems()
            .remove(what)
            .map(|(_, since)| since.elapsed())
    }

    /// Clears every problem whose name `matches`; returns their names.
    pub fn clear_where(&self, matches: impl Fn(&str) -> bool) -> Vec<String> {
        let mut cleared = Vec::new();
        self.problems().retain(|what, _| {
            let hit = matches(what);
            if hit {
                cleared.push(what.clone());
            }
            !hit
        });
        cleared
    }

    /// Whether a problem whose name `matches` is wrong now.
    pub fn any(&self, matches: impl Fn(&str) -> bool) -> bool {
        self.problems().keys().any(|what| matches(what))
    }

    /// Whether `what` is a problem now.
    pub fn has(&self, what: &str) -> bool {
        self.problems().contains_key(what)
    }

    /// Ready, or why not: `starting` until started, and one line per problem,
    /// `what: reason (for N s)`.
    pub fn report(&self) -> Result<(), String> {
        let started = self.0.started.load(Ordering::Relaxed);
        let problems = self.problems();
        if started && problems.is_empty() {
            return Ok(());
        }
        let lines = problems.iter().map(|(what, (reason, since))| {
            format!("{what}: {reason} (for {} s)\n", since.elapsed().as_secs())
        });
        Err(match started {
            true => lines.collect(),
            false => std::iter::once("starting\n".to_string())
                .chain(lines)
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_once_started_and_while_no_problem_is_raised() {
        let h = Health::new();
        assert_eq!(h.report(), Err("starting\n".to_string()));
        h.raise("kafka", "connect failing");
        assert_eq!(
            h.report(),
            Err("starting\nkafka: connect failing (for 0 s)\n".to_string())
        );
        h.clear("kafka");
        h.set_started();
        assert_eq!(h.report(), Ok(()));
        h.raise("sink raw", "Delta commit failing: connection refused");
        h.raise("kafka", "all brokers down");
        let report = h.report().unwrap_err();
        assert_eq!(
            report.lines().collect::<Vec<_>>(),
            [
                "kafka: all brokers down (for 0 s)",
                "sink raw: Delta commit failing: connection refused (for 0 s)"
            ]
        );
        assert!(h.clear("kafka").is_some());
        assert!(h.clear("kafka").is_none());
        assert!(!h.has("kafka") && h.has("sink raw"));
        h.clear("sink raw");
        assert_eq!(h.report(), Ok(()));
    }
}
