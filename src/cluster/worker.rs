//! `stratus worker`: runs every pipeline submitted to the cluster, each as a member of its own
//! consumer group (see [`super::member`]).
//!
//! In: the control topic, followed from its start (see [`super::control`]). Out: per
//! pipeline, its run on this worker — started when its definition is to run, run again when a
//! newer one is submitted, stopped (flushed and committed) when it is stopped or deleted, all
//! within a poll of the topic, without a restart — and its state on the status topic: running,
//! failed with the error (tried again a minute later, or at once on a newer definition), or
//! stopped.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::control::{ControlError, ControlPlane, Definition, Status, Wanted};
use super::run_member;
use crate::job::run::{RunConfig, RunError, RunSummary};
use crate::metrics::PipelineMetrics;
use crate::metrics::health::Health;
use crate::pipeline::{Overrides, Pipeline};

/// How long the worker waits for the control topic per look.
const LOOK: Duration = Duration::from_millis(500);
/// How long a failed pipeline waits before it is run again (unless a newer definition comes).
const RETRY_FAILED: Duration = Duration::from_secs(60);

/// How a worker runs.
pub struct WorkerConfig {
    /// The settings every pipeline runs with.
    pub run: RunConfig,
    pub plane: ControlPlane,
    /// This worker's name on the status topic.
    pub id: String,
    /// Where the submitted pipelines' files are laid out.
    pub workdir: PathBuf,
    /// A program's own SQL functions.
    pub overrides: Overrides,
}

/// A pipeline running here.
struct Job {
    definition: Definition,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<RunSummary, RunError>>,
}

/// Runs the cluster's pipelines until `shutdown` completes; then stops each (it flushes and
/// commits) and reports it stopped.
pub async fn run_worker(
    config: WorkerConfig,
    metrics: PipelineMetrics,
    health: Health,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ControlError> {
    let plane = &config.plane;
    plane.ensure_topics().await?;
    let follow = plane.follow()?;
    tracing::info!(
        "worker {}: following {} (status on {})",
        config.id,
        plane.control,
        plane.status
    );
    health.set_started();
    let mut wanted: BTreeMap<String, Definition> = BTreeMap::new();
    let mut jobs: BTreeMap<String, Job> = BTreeMap::new();
    let mut failed: BTreeMap<String, (i64, Instant)> = BTreeMap::new();
    tokio::pin!(shutdown);
    loop {
        let changes = tokio::select! {
            biased;
            () = &mut shutdown => break,
            changes = async { tokio::task::block_in_place(|| follow.changes(LOOK)) } => changes,
        };
        for (name, definition) in changes {
            match definition {
                Some(d) => wanted.insert(name, d),
                None => wanted.remove(&name),
            };
        }
        // Runs that ended by themselves failed.
        let ended: Vec<String> = jobs
            .iter()
            .filter(|(_, j)| j.task.is_finished())
            .map(|(n, _)| n.clone())
            .collect();
        for name in ended {
            let Some(job) = jobs.remove(&name) else {
                continue;
            };
            let error = match job.task.await {
                Ok(Ok(_)) => "stopped by itself".to_string(),
                Ok(Err(e)) => crate::cli::explained(&e),
                Err(e) => e.to_string(),
            };
            tracing::error!("worker {}: pipeline {name} failed: {error}", config.id);
            report(&config, &job.definition, "failed", Some(error)).await;
            failed.insert(name, (job.definition.version, Instant::now()));
        }
        // Stop what is no longer wanted as it runs.
        let stale: Vec<String> = jobs
            .iter()
            .filter(|(name, job)| {
                wanted.get(*name).is_none_or(|d| {
                    d.version != job.definition.version || d.state == Wanted::Stopped
                })
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in stale {
            if let Some(job) = jobs.remove(&name) {
                stop(&config, job).await;
            }
        }
        // Start what is wanted and not running.
        for (name, d) in &wanted {
            let retry = failed
                .get(name)
                .is_none_or(|(version, at)| *version != d.version || at.elapsed() > RETRY_FAILED);
            if d.state == Wanted::Running && !jobs.contains_key(name) && retry {
                failed.remove(name);
                match start(&config, d, &metrics, &health).await {
                    Ok(job) => {
                        report(&config, d, "running", None).await;
                        jobs.insert(name.clone(), job);
                    }
                    Err(error) => {
                        tracing::error!("worker {}: pipeline {name}: {error}", config.id);
                        report(&config, d, "failed", Some(error)).await;
                        failed.insert(name.clone(), (d.version, Instant::now()));
                    }
                }
            }
        }
    }
    // All at once: each flushes and commits in the grace period, not one after another.
    futures::future::join_all(jobs.into_values().map(|job| stop(&config, job))).await;
    Ok(())
}

/// Lays out `d`'s files, checks the pipeline and starts its run.
async fn start(
    config: &WorkerConfig,
    d: &Definition,
    metrics: &PipelineMetrics,
    health: &Health,
) -> Result<Job, String> {
    let file = super::control::materialise(d, &config.workdir).map_err(|e| e.to_string())?;
    let pipeline = Pipeline::load_with(&file, &config.overrides)
        .await
        .map_err(|diagnostics| diagnostics.to_string())?;
    tracing::info!(
        "worker {}: pipeline {} (version {}) starts",
        config.id,
        d.name,
        d.version
    );
    let (stop, stopped) = oneshot::channel::<()>();
    let (run, metrics, health) = (config.run.clone(), metrics.clone(), health.clone());
    let task = tokio::spawn(async move {
        run_member(&pipeline, &run, metrics, health, async {
            let _ = stopped.await;
        })
        .await
    });
    Ok(Job {
        definition: d.clone(),
        stop,
        task,
    })
}

/// Stops `job` (it flushes and commits) and reports how it ended.
async fn stop(config: &WorkerConfig, job: Job) {
    let _ = job.stop.send(());
    let (state, error) = match job.task.await {
        Ok(Ok(_)) => ("stopped", None),
        Ok(Err(e)) => ("failed", Some(crate::cli::explained(&e))),
        Err(e) => ("failed", Some(e.to_string())),
    };
    tracing::info!(
        "worker {}: pipeline {} {state}",
        config.id,
        job.definition.name
    );
    report(config, &job.definition, state, error).await;
}

/// Publishes this worker's state of `d`; a status that cannot be published is logged.
async fn report(config: &WorkerConfig, d: &Definition, state: &str, error: Option<String>) {
    let status = Status::new(d, &config.id, state, error);
    if let Err(e) = config.plane.publish_status(&status).await {
        tracing::warn!("worker {}: cannot report {state}: {e}", config.id);
    }
}
