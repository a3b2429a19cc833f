//! Riding out an outage: what the run loop does when the object store, a disk or the brokers
//! fail for a while.
//!
//! In: the outcome of each attempt of an operation (a Delta commit, a checkpoint written or
//! read back, a delivery awaited). Out: a wait with exponential backoff before the next
//! attempt — 0.5 s, doubling, at most 10 s — while the operation is a problem on `/readyz`
//! (with its last error) and each failed attempt counts in `stratus_retries_total`; the last
//! error, saying for how long it was tried, once the operation has failed for the run's
//! `give_up_after`. While a commit is retried nothing reads: the loop is the one waiting.
//! While a checkpoint is, the next cycle reads and then waits for it before its commits. So an
//! outage holds memory at about two cycles (backpressure) instead of filling it.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::run::RunError;
use crate::metrics::PipelineMetrics;
use crate::metrics::health::Health;

const FIRST_WAIT: Duration = Duration::from_millis(500);
const LONGEST_WAIT: Duration = Duration::from_secs(10);

/// What a run's retries report to, and how long they go on.
#[derive(Clone)]
pub struct Retry {
    pub pipeline: String,
    /// A worker's shard (`<pipeline>/partition-<n>`): its problems are named after it, apart
    /// from its worker's other shards and pipelines.
    pub scope: Option<String>,
    pub health: Health,
    pub metrics: PipelineMetrics,
    /// How long an operation may keep failing before the run fails.
    pub give_up_after: Duration,
}

/// An operation that failed `for_` long and was given up.
#[derive(Debug, thiserror::Error)]
#[error("{what}: still failing after {} s of retries (--give-up-after): {source}", .for_.as_secs())]
pub struct GaveUp {
    pub what: String,
    pub for_: Duration,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// The attempts of one operation.
pub struct Attempts<'a> {
    retry: &'a Retry,
    /// What is failing, as `/readyz` names it: `sink raw`, `checkpoint`, `kafka`.
    what: String,
    /// `stratus_retries_total`'s `operation` label.
    operation: &'static str,
    first_failure: Option<Instant>,
    wait: Duration,
}

impl Retry {
    /// Starts counting the attempts of `operation` on `what`.
    pub fn attempts(&self, what: impl Into<String>, operation: &'static str) -> Attempts<'_> {
        Attempts {
            retry: self,
            what: what.into(),
            operation,
            first_failure: None,
            wait: FIRST_WAIT,
        }
    }

    /// Runs `attempt` until it succeeds: an error `transient` picks is retried as
    /// [`Attempts::failed`] says, any other is returned at once.
    pub async fn until_ok<T, E, F>(
        &self,
        what: impl Into<String>,
        operation: &'static str,
        transient: impl Fn(&E) -> bool,
        mut attempt: impl FnMut() -> F,
    ) -> Result<T, RunError>
    where
        F: Future<Output = Result<T, E>>,
        E: std::error::Error + Send + Sync + Into<RunError> + 'static,
    {
        let mut attempts = self.attempts(what, operation);
        loop {
            match attempt().await {
                Ok(out) => {
                    attempts.succeeded();
                    return Ok(out);
                }
                Err(e) if transient(&e) => attempts.failed(e).await?,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// `what` is wrong, for `reason`: on `/readyz` and in `stratus_failing`. Returns whether
    /// it is new.
    pub fn raise(&self, what: &str, reason: &str) -> bool {
        let new = self.health.raise(&self.named(what), reason);
        self.export(what);
        new
    }

    /// `what` is fine (again); returns how long it was wrong, if it was.
    pub fn clear(&self, what: &str) -> Option<Duration> {
        let lasted = self.health.clear(&self.named(what));
        self.export(what);
        lasted
    }

    /// `what` as `/readyz` names it: with the shard, if any.
    fn named(&self, what: &str) -> String {
        match &self.scope {
            Some(scope) => format!("{what} ({scope})"),
            None => what.to_string(),
        }
    }

    /// Sets `stratus_failing{pipeline, problem=what}`: 1 while `what` is wrong in any of the
    /// pipeline's shards here (its label names the problem, not the shard, as the rules
    /// match it).
    fn export(&self, what: &str) {
        Self::export_problem(&self.health, &self.metrics, &self.pipeline, what);
    }

    fn export_problem(health: &Health, metrics: &PipelineMetrics, pipeline: &str, what: &str) {
        let shard = format!("{what} ({pipeline}/");
        let wrong = health.any(|k| k == what || (k.starts_with(&shard) && k.ends_with(')')));
        metrics
            .failing
            .with_label_values(&[pipeline, what])
            .set(i64::from(wrong));
    }

    /// Clears every problem of the shard `scope` of `pipeline`: it ended, and its partition
    /// is another's.
    pub fn clear_scope(health: &Health, metrics: &PipelineMetrics, pipeline: &str, scope: &str) {
        let suffix = format!(" ({scope})");
        for key in health.clear_where(|what| what.ends_with(&suffix)) {
            if let Some(what) = key.strip_suffix(&suffix) {
                Self::export_problem(health, metrics, pipeline, what);
            }
        }
    }

    /// Awaits `work`; if it takes longer than `patience`, `what` is a problem on `/readyz`
    /// (`waiting` says what for) until it completes.
    pub async fn awaiting<T>(
        &self,
        what: &str,
        waiting: &str,
        patience: Duration,
        work: impl Future<Output = T>,
    ) -> T {
        tokio::pin!(work);
        tokio::select! {
            out = &mut work => return out,
            () = tokio::time::sleep(patience) => {}
        }
        self.raise(what, waiting);
        tracing::warn!("pipeline {}: {what}: {waiting}", self.pipeline);
        let out = work.await;
        if let Some(lasted) = self.clear(what) {
            tracing::info!(
                "pipeline {}: {what}: done after {} s",
                self.pipeline,
                lasted.as_secs()
            );
        }
        out
    }
}

#[cfg(test)]
impl Retry {
    /// The retries of a pipeline `p` started, with its own health and metrics.
    pub(crate) fn for_test(give_up_after: Duration) -> Retry {
        let health = Health::new();
        health.set_started();
        Retry {
            pipeline: "p".into(),
            scope: None,
            health,
            metrics: PipelineMetrics::new(),
            give_up_after,
        }
    }
}

impl Attempts<'_> {
    /// After a failed attempt: waits before the next one, or gives up (returns the error)
    /// once the operation has failed for `give_up_after`.
    pub async fn failed(
        &mut self,
        error: impl std::error::Error + Send + Sync + 'static,
    ) -> Result<(), GaveUp> {
        let r = self.retry;
        let since = *self.first_failure.get_or_insert_with(Instant::now);
        r.metrics
            .retries
            .with_label_values(&[r.pipeline.as_str(), self.operation])
            .inc();
        let for_ = since.elapsed();
        if for_ >= r.give_up_after {
            return Err(GaveUp {
                what: self.what.clone(),
                for_,
                source: Box::new(error),
            });
        }
        let reason = format!("{} failing, retried: {error}", self.operation);
        if r.raise(&self.what, &reason) {
            tracing::warn!(
                "pipeline {}: {}: {reason}; retrying for up to {} s",
                r.pipeline,
                self.what,
                r.give_up_after.as_secs()
            );
        }
        tokio::time::sleep(self.wait.min(r.give_up_after.saturating_sub(for_))).await;
        self.wait = (self.wait * 2).min(LONGEST_WAIT);
        Ok(())
    }

    /// After the attempt that succeeded: the problem, if there was one, is over.
    pub fn succeeded(self) {
        if self.first_failure.is_some()
            && let Some(lasted) = self.retry.clear(&self.what)
        {
            tracing::info!(
                "pipeline {}: {}: {} succeeded again after {} s",
                self.retry.pipeline,
                self.what,
                self.operation,
                lasted.as_secs()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("connection refused")]
    struct Refused;

    /// Two shards of one worker fail on the same sink: each problem is its own, and the end of
    /// one shard clears its problems (on /readyz and in stratus_failing), not the other's.
    #[test]
    fn a_shards_problems_are_its_own_and_end_with_it() {
        let shared = Retry::for_test(Duration::from_secs(60));
        let shard = |n: i32| Retry {
            scope: Some(format!("p/partition-{n}")),
            ..shared.clone()
        };
        let (a, b) = (shard(0), shard(1));
        a.raise("sink raw", "down");
        b.raise("sink raw", "down");
        b.clear("sink raw");
        let report = shared.health.report().unwrap_err();
        assert!(
            report.starts_with("sink raw (p/partition-0): down"),
            "{report}"
        );
        assert_eq!(report.lines().count(), 1, "{report}");
        let failing = |r: &Retry| {
            let text = r.metrics.render();
            let line = text
                .lines()
                .find(|l| l.starts_with("stratus_failing{") && l.contains(r#"problem="sink raw""#))
                .map(str::to_string);
            line.and_then(|l| l.rsplit(' ').next().map(str::to_string))
        };
        assert_eq!(
            failing(&shared).as_deref(),
            Some("1"),
            "partition 0's sink still fails"
        );
        Retry::clear_scope(&shared.health, &shared.metrics, "p", "p/partition-0");
        assert_eq!(shared.health.report(), Ok(()));
        assert_eq!(failing(&shared).as_deref(), Some("0"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_operation_is_not_ready_until_it_succeeds_and_counts_its_retries() {
        let r = Retry::for_test(Duration::from_secs(60));
        let mut attempts = r.attempts("sink raw", "delta_commit");
        attempts.failed(Refused).await.unwrap();
        attempts.failed(Refused).await.unwrap();
        assert_eq!(
            r.health.report().unwrap_err(),
            "sink raw: delta_commit failing, retried: connection refused (for 1 s)\n",
            "0.5 s then 1 s waited"
        );
        attempts.succeeded();
        assert_eq!(r.health.report(), Ok(()));
        assert_eq!(
            r.metrics
                .total("retries_total", &[("operation", "delta_commit")]),
            2
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_operation_failing_longer_than_the_limit_is_given_up_with_its_error() {
        let r = Retry::for_test(Duration::from_secs(30));
        let mut attempts = r.attempts("checkpoint", "checkpoint");
        let started = Instant::now();
        let given_up = loop {
            if let Err(e) = attempts.failed(Refused).await {
                break e;
            }
        };
        // 0.5 + 1 + 2 + 4 + 8 + 10, then the 4.5 s left.
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        assert_eq!(
            given_up.to_string(),
            "checkpoint: still failing after 30 s of retries (--give-up-after): connection refused"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_wait_is_a_problem_only_while_it_lasts() {
        let r = Retry::for_test(Duration::from_secs(60));
        let health = r.health.clone();
        let out = r
            .awaiting(
                "kafka",
                "deliveries waiting",
                Duration::from_secs(5),
                async {
                    tokio::time::sleep(Duration::from_secs(7)).await;
                    health.report()
                },
            )
            .await;
        assert_eq!(out.unwrap_err(), "kafka: deliveries waiting (for 2 s)\n");
        assert_eq!(r.health.report(), Ok(()));
    }
}
