//! A worker's membership in its pipeline's consumer group.
//!
//! In: a pipeline, the run's settings and a shutdown signal. The member subscribes to the
//! pipeline's first topic with cooperative-sticky assignment (so a rebalance moves only the
//! partitions that change hands) and reads nothing itself: its partitions stay paused. Out: a
//! shard per assigned partition (see [`super`]), started when the partition comes; when it is
//! revoked, the shard flushes, commits to Delta and checkpoints before the partition is
//! released. The shards' Delta positions are committed to the group after their commits, so
//! lag tools see true lag. A partition lost without a revoke (this member was cut off) is
//! stopped the same way, but whatever its new owner has claimed, it commits nothing to.
//!
//! A shard fenced out of its tables while its partition is still assigned here ends, as Kafka
//! Streams closes a migrated task: either this member was cut off and will hear at its next
//! heartbeat that it lost the partition, or another process claimed the tables; if the
//! partition is still this member's [`FENCED_WAIT`] later, its shard starts again and claims
//! them back. A shard that failed on an object store or broker request that was not retried
//! where it was made (one in flight while the worker was paused fails when it resumes) starts
//! again the same way, unless its partition's shards have failed so on every start for the
//! run's `give_up_after` (the store or brokers are gone, not blinking): then, as any other
//! failure of a shard, it takes the member down with it, and its partitions move to the other
//! workers.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot};

use super::{GroupOffsets, Shard};
use crate::job::retry::{GaveUp, Retry};
use crate::job::run::{RunConfig, RunError, RunSummary, run_pipeline};
use crate::kafka::KafkaConnection;
use crate::metrics::PipelineMetrics;
use crate::metrics::health::Health;
use crate::pipeline::{Pipeline, SourceInput};
use crate::source::repartition;

/// How often the member serves the group (heartbeats go on in librdkafka's own thread) and
/// commits the shards' positions.
const POLL: Duration = Duration::from_millis(200);

/// How long a fenced shard's partition waits before its shard starts again, if it is still this
/// member's: over three of librdkafka's heartbeats (every 3 s by default), the first of which
/// tells a member cut off from its group that it lost its partitions.
pub const FENCED_WAIT: Duration = Duration::from_secs(10);

/// Runs `pipeline` as a member of its consumer group until `shutdown` completes (then every
/// shard flushes and commits, and the member leaves the group) or a shard fails.
pub async fn run_member(
    pipeline: &Pipeline,
    config: &RunConfig,
    metrics: PipelineMetrics,
    health: Health,
    shutdown: impl Future<Output = ()>,
) -> Result<RunSummary, RunError> {
    if pipeline.backfill || config.until_caught_up {
        return Err(RunError::Cluster(format!(
            "`{}`: a backfill or a run to the end of what is there runs as one process, not \
             in a consumer group",
            pipeline.name
        )));
    }
    let Some((topic, group)) = pipeline.sources.iter().find_map(|s| match &s.input {
        SourceInput::Kafka { topic, group } => Some((topic.clone(), group.clone())),
        SourceInput::File { .. } => None,
    }) else {
        return Err(RunError::Cluster(format!(
            "`{}` reads no Kafka topic: there are no partitions to share",
            pipeline.name
        )));
    };
    if let Some(file) = pipeline
        .sources
        .iter()
        .find(|s| matches!(s.input, SourceInput::File { .. }))
    {
        return Err(RunError::Cluster(format!(
            "`{}`: source `{}` reads a file, which every shard would read whole: a pipeline in \
             a consumer group reads Kafka topics only",
            pipeline.name, file.name
        )));
    }
    if !pipeline.group_problems.is_empty() {
        return Err(RunError::Cluster(format!(
            "`{}` cannot run in a consumer group:\n{}",
            pipeline.name,
            crate::pipeline::Diagnostics(pipeline.group_problems.clone())
        )));
    }
    let kafka = KafkaConnection::new(&config.brokers, &config.kafka.merged(&pipeline.kafka))?;
    repartition::create_topics(pipeline, &kafka)
        .await
        .map_err(|e| RunError::Cluster(format!("`{}`: {e}", pipeline.name)))?;
    same_partition_counts(pipeline, &kafka)?;
    let repartitioned: Vec<String> = pipeline
        .sources
        .iter()
        .filter(|s| !s.repartition_by.is_empty())
        .map(|s| s.repartition_topic(&pipeline.name))
        .collect();
    let admin = kafka
        .admin()
        .create()
        .map_err(|e| RunError::Cluster(e.to_string()))?;
    let (failed, mut failures) = mpsc::unbounded_channel();
    let shards = Arc::new(Shards {
        runtime: tokio::runtime::Handle::current(),
        pipeline: Arc::new(pipeline.clone()),
        config: config.clone(),
        metrics,
        health: health.clone(),
        offsets: GroupOffsets::default(),
        running: Mutex::default(),
        fenced: Arc::default(),
        failing: Arc::default(),
        failed,
        summary: Mutex::default(),
        admin,
        repartitioned,
    });
    let kafka_err = |e: rdkafka::error::KafkaError| {
        RunError::Cluster(format!("group {group} on topic {topic}: {e}"))
    };
    let consumer: BaseConsumer<Member> = kafka
        .consumer(&group)
        .set("partition.assignment.strategy", "cooperative-sticky")
        .create_with_context(Member {
            shards: shards.clone(),
            topic: topic.clone(),
        })
        .map_err(kafka_err)?;
    consumer.subscribe(&[&topic]).map_err(kafka_err)?;
    tracing::info!(
        "pipeline {}: joining consumer group {group} on topic {topic}",
        pipeline.name
    );
    let leave = Arc::new(AtomicBool::new(false));
    let member = std::thread::Builder::new()
        .name(format!("group-{group}"))
        .spawn({
            let leave = leave.clone();
            move || serve(consumer, &leave)
        })
        .map_err(|e| RunError::Cluster(format!("cannot start the group member: {e}")))?;
    health.set_started();
    tokio::pin!(shutdown);
    let failure = tokio::select! {
        () = &mut shutdown => None,
        Some(e) = failures.recv() => Some(e),
    };
    leave.store(true, Ordering::Relaxed);
    tokio::task::spawn_blocking(move || member.join())
        .await
        .map_err(|e| RunError::Cluster(format!("the group member stopped: {e}")))?
        .map_err(|_| RunError::Cluster("the group member panicked".into()))?;
    match failure {
        Some(e) => Err(e),
        None => Ok(std::mem::take(
            &mut *shards.summary.lock().unwrap_or_else(|e| e.into_inner()),
        )),
    }
}

/// Shard N reads partition N of each topic: every topic of the pipeline needs as many.
fn same_partition_counts(pipeline: &Pipeline, kafka: &KafkaConnection) -> Result<(), RunError> {
    let consumer: BaseConsumer = kafka
        .consumer("stratus-metadata")
        .create()
        .map_err(|e| RunError::Cluster(e.to_string()))?;
    let mut counts = Vec::new();
    let mut topics = Vec::new();
    for s in &pipeline.sources {
        if let SourceInput::Kafka { topic, .. } = &s.input {
            topics.push(topic.clone());
            if !s.repartition_by.is_empty() {
                topics.push(s.repartition_topic(&pipeline.name));
            }
        }
    }
    for topic in &topics {
        let metadata = tokio::task::block_in_place(|| {
            consumer.fetch_metadata(Some(topic), Duration::from_secs(10))
        })
        .map_err(|e| RunError::Cluster(format!("topic {topic}: {e}")))?;
        let n = metadata
            .topics()
            .first()
            .map_or(0, |t| t.partitions().len());
        counts.push(format!("{topic}: {n}"));
        if counts.len() > 1 && !counts[0].ends_with(&format!(": {n}")) {
            return Err(RunError::Cluster(format!(
                "`{}`: its topics have different partition counts ({}): shard N reads \
                 partition N of each, so give them as many each (co-partitioned)",
                pipeline.name,
                counts.join(", ")
            )));
        }
    }
    Ok(())
}

/// Serves the group until `leave`; then every shard flushes and commits, their last positions
/// go to the group, and the member leaves it (on drop).
fn serve(consumer: BaseConsumer<Member>, leave: &AtomicBool) {
    while !leave.load(Ordering::Relaxed) {
        // Paused partitions deliver nothing: a poll serves rebalances (and errors).
        if let Some(Err(e)) = consumer.poll(POLL) {
            tracing::warn!("consumer group: {e}");
        }
        commit_positions(&consumer);
        purge_repartitioned(&consumer.context().shards);
        restart_fenced(&consumer);
    }
    consumer.context().shards.stop_all();
    commit_positions(&consumer);
    purge_repartitioned(&consumer.context().shards);
}

/// Commits the shards' positions the group does not have yet; those it refuses (during a
/// rebalance) stay pending for the next try.
fn commit_positions(consumer: &BaseConsumer<Member>) {
    let offsets = &consumer.context().shards.offsets;
    let pending = offsets.pending();
    if pending.is_empty() {
        return;
    }
    let mut list = TopicPartitionList::new();
    for ((topic, p), next) in &pending {
        if let Err(e) = list.add_partition_offset(topic, *p, Offset::Offset(*next)) {
            tracing::warn!("consumer group: offset {next} of {topic}/{p}: {e}");
        }
    }
    match consumer.commit(&list, CommitMode::Sync) {
        Ok(()) => offsets.committed(&pending),
        Err(e) => tracing::debug!(
            "consumer group: offsets not committed yet (lag tools lag behind; the Delta tables \
             hold the offsets): {e}"
        ),
    }
}

/// Deletes what of the repartition topics comes before the shards' written checkpoints: no
/// restart reads it again. One that fails is left for the next, which deletes up to a later
/// offset.
fn purge_repartitioned(shards: &Shards) {
    let checkpointed = shards.offsets.take_checkpointed();
    let read: Vec<(&str, i32, i64)> = checkpointed
        .iter()
        .filter(|((topic, _), _)| shards.repartitioned.contains(topic))
        .map(|((topic, p), next)| (topic.as_str(), *p, *next))
        .collect();
    if read.is_empty() {
        return;
    }
    if let Err(e) = shards
        .runtime
        .block_on(repartition::purge(&shards.admin, &read))
    {
        tracing::debug!("repartition topics: read records not deleted yet: {e}");
    }
}

/// Starts again the shards fenced [`FENCED_WAIT`] ago whose partitions are still this member's.
fn restart_fenced(consumer: &BaseConsumer<Member>) {
    let shards = &consumer.context().shards;
    let due: Vec<i32> = {
        let mut fenced = shards.fenced.lock().unwrap_or_else(|e| e.into_inner());
        let due = fenced
            .iter()
            .filter(|(_, at)| at.elapsed() >= FENCED_WAIT)
            .map(|(p, _)| *p)
            .collect::<Vec<_>>();
        fenced.retain(|p, _| !due.contains(p));
        due
    };
    if due.is_empty() {
        return;
    }
    let held = match consumer.assignment() {
        Ok(list) if !consumer.assignment_lost() => partitions_of(&list, &consumer.context().topic),
        _ => Vec::new(),
    };
    for p in due {
        // Its shard has ended: make way for the new one.
        shards
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&p);
        if held.contains(&p) {
            tracing::info!(
                "pipeline {}: partition {p} is still this worker's: its shard starts again",
                shards.pipeline.name
            );
            shards.start(p);
        }
    }
}

/// The member's context: it hears of rebalances.
struct Member {
    shards: Arc<Shards>,
    /// The topic whose partitions the group assigns.
    topic: String,
}

impl ClientContext for Member {}

impl ConsumerContext for Member {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(list) = rebalance else {
            return;
        };
        let lost = consumer.assignment_lost();
        let partitions = partitions_of(list, &self.topic);
        tracing::info!(
            "pipeline {}: partitions {partitions:?} {}",
            self.shards.pipeline.name,
            if lost {
                "lost: their shards stop (their new owners fence them out of the tables)"
            } else {
                "revoked: their shards flush, commit and checkpoint first"
            }
        );
        self.shards.stop(&partitions);
        if !lost {
            commit_positions(consumer);
            purge_repartitioned(&self.shards);
        }
        self.shards.offsets.forget(&partitions);
        for waiting in [&self.shards.fenced, &self.shards.failing] {
            let mut waiting = waiting.lock().unwrap_or_else(|e| e.into_inner());
            waiting.retain(|p, _| !partitions.contains(p));
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(list) = rebalance else {
            return;
        };
        if let Err(e) = consumer.pause(list) {
            tracing::warn!("consumer group: cannot pause the assigned partitions: {e}");
        }
        let partitions = partitions_of(list, &self.topic);
        tracing::info!(
            "pipeline {}: partitions {partitions:?} assigned: their shards start",
            self.shards.pipeline.name
        );
        for p in partitions {
            self.shards.start(p);
        }
    }
}

/// A shard that ran this long before it failed had been working: its partition's count of
/// failing starts begins again.
const WORKING_RUN: Duration = Duration::from_secs(60);

/// For how long the shards of `partition` have failed transiently on every start: since the
/// first of those failures, the one of the shard `started` then having just happened.
fn failing_for(
    failing: &Mutex<BTreeMap<i32, Instant>>,
    partition: i32,
    started: Instant,
) -> Duration {
    let now = Instant::now();
    let mut failing = failing.lock().unwrap_or_else(|e| e.into_inner());
    let since = failing.entry(partition).or_insert(now);
    if now.duration_since(started) >= WORKING_RUN {
        *since = now;
    }
    now.duration_since(*since)
}

fn partitions_of(list: &TopicPartitionList, topic: &str) -> Vec<i32> {
    list.elements_for_topic(topic)
        .iter()
        .map(|e| e.partition())
        .collect()
}

/// The shards this worker runs.
struct Shards {
    runtime: tokio::runtime::Handle,
    pipeline: Arc<Pipeline>,
    config: RunConfig,
    metrics: PipelineMetrics,
    health: Health,
    offsets: GroupOffsets,
    running: Mutex<BTreeMap<i32, Running>>,
    /// Partitions whose shards were fenced out of their tables, or failed transiently, while
    /// assigned here, and when.
    fenced: Arc<Mutex<BTreeMap<i32, Instant>>>,
    /// Partitions whose shards have failed transiently on every start since then.
    failing: Arc<Mutex<BTreeMap<i32, Instant>>>,
    /// Where a shard's failure goes: it ends the member.
    failed: mpsc::UnboundedSender<RunError>,
    /// What the stopped shards did.
    summary: Mutex<RunSummary>,
    admin: AdminClient<DefaultClientContext>,
    /// The pipeline's repartition topics, whose records are deleted once the tables hold them.
    repartitioned: Vec<String>,
}

struct Running {
    stop: oneshot::Sender<()>,
    /// Set before the shard is told to stop: how it ends then is no failure of the worker's.
    stopping: Arc<AtomicBool>,
    /// The shard's run: its summary, none if it failed.
    task: tokio::task::JoinHandle<Option<RunSummary>>,
}

impl Shards {
    fn start(&self, partition: i32) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if running.contains_key(&partition) {
            return;
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let stopping = Arc::new(AtomicBool::new(false));
        let pipeline = self.pipeline.clone();
        let mut config = self.config.clone();
        config.shard = Some(Shard {
            partition,
            offsets: self.offsets.clone(),
        });
        let (metrics, health, failed, fenced, failing, stopped_by_us) = (
            self.metrics.clone(),
            self.health.clone(),
            self.failed.clone(),
            self.fenced.clone(),
            self.failing.clone(),
            stopping.clone(),
        );
        let give_up_after = self.config.give_up_after;
        let task = self.runtime.spawn(async move {
            let started = Instant::now();
            let shutdown = async {
                // A dropped sender stops the shard as well.
                let _ = stopped.await;
            };
            let scope = Shard::instance_of(&pipeline.name, partition);
            let run = run_pipeline(
                &pipeline,
                &config,
                metrics.clone(),
                health.clone(),
                shutdown,
            );
            // A panic fails the worker as an error does, rather than leaving its partition
            // assigned and unread.
            let outcome = std::panic::AssertUnwindSafe(run)
                .catch_unwind()
                .await
                .unwrap_or_else(|panic| {
                    let what = panic
                        .downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| panic.downcast_ref::<&str>().copied())
                        .unwrap_or("a panic");
                    Err(RunError::Cluster(format!("the shard panicked: {what}")))
                });
            // Its problems end with it: its partition is another shard's now.
            Retry::clear_scope(&health, &metrics, &pipeline.name, &scope);
            // One that worked for a while and ended otherwise ends its partition's run of
            // failing starts.
            let transient = matches!(&outcome, Err(e) if e.is_transient());
            if !transient && started.elapsed() >= WORKING_RUN {
                failing
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&partition);
            }
            match outcome {
                Ok(summary) => Some(summary),
                // A shard that fails on its way out (fenced out by a lost partition's new
                // owner): the partition is gone, and its new owner resumes from the tables.
                Err(e) if stopped_by_us.load(Ordering::Relaxed) => {
                    tracing::warn!("pipeline {}: partition {partition}: {e}", pipeline.name);
                    None
                }
                // Fenced while its partition is still assigned here, or failed on a request
                // the store or brokers did not answer: see the module's doc.
                Err(e) if e.is_fenced() || e.is_transient() => {
                    let failing_for = match e.is_transient() {
                        true => failing_for(&failing, partition, started),
                        false => Duration::ZERO,
                    };
                    if failing_for >= give_up_after {
                        tracing::error!(
                            "pipeline {}: partition {partition}: {e}; its shards have failed \
                             so on every start for {} s: giving up",
                            pipeline.name,
                            failing_for.as_secs()
                        );
                        let _ = failed.send(RunError::Shard {
                            partition,
                            source: Box::new(RunError::GaveUp(GaveUp {
                                what: format!("partition {partition}'s shard"),
                                for_: failing_for,
                                source: Box::new(e),
                            })),
                        });
                        return None;
                    }
                    tracing::warn!(
                        "pipeline {}: partition {partition}: {e}; its shard starts again in \
                         {} s if the partition is still this worker's",
                        pipeline.name,
                        FENCED_WAIT.as_secs()
                    );
                    fenced
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(partition, Instant::now());
                    None
                }
                Err(e) => {
                    tracing::error!("pipeline {}: partition {partition}: {e}", pipeline.name);
                    let _ = failed.send(RunError::Shard {
                        partition,
                        source: Box::new(e),
                    });
                    None
                }
            }
        });
        running.insert(
            partition,
            Running {
                stop,
                stopping,
                task,
            },
        );
    }

    /// Stops the shards of `partitions` and waits for them: each flushes, commits and
    /// checkpoints. A lost partition's shard does the same: its commits go through if its new
    /// owner has not claimed the tables yet (and then the new owner replays from them), and
    /// are fenced out if it has.
    fn stop(&self, partitions: &[i32]) {
        let stopping: Vec<(i32, Running)> = {
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            partitions
                .iter()
                .filter_map(|p| running.remove(p).map(|r| (*p, r)))
                .collect()
        };
        let mut tasks = Vec::new();
        for (p, r) in stopping {
            r.stopping.store(true, Ordering::Relaxed);
            let _ = r.stop.send(());
            tasks.push((p, r.task));
        }
        for (p, task) in tasks {
            if let Ok(Some(done)) = self.runtime.block_on(task) {
                let mut summary = self.summary.lock().unwrap_or_else(|e| e.into_inner());
                summary.events += done.events;
                summary.invalid += done.invalid;
                summary.late += done.late;
                summary.cycles += done.cycles;
            }
            // Its lag is its new owner's to report.
            for source in &self.pipeline.sources {
                let _ = self.metrics.consumer_lag.remove_label_values(&[
                    self.pipeline.name.as_str(),
                    source.name.as_str(),
                    &p.to_string(),
                ]);
            }
        }
    }

    fn stop_all(&self) {
        let partitions: Vec<i32> = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .collect();
        self.stop(&partitions);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A partition whose shards fail on every start fails for as long as since the first of
    /// those failures; a shard that had run for a minute before it failed starts the count
    /// again; each partition counts for itself.
    #[test]
    fn a_partition_fails_for_as_long_as_its_shards_fail_on_every_start() {
        let failing = Mutex::default();
        let ago = |s: u64| Instant::now().checked_sub(Duration::from_secs(s)).unwrap();
        assert!(failing_for(&failing, 3, ago(2)) < Duration::from_secs(1));
        failing.lock().unwrap().insert(3, ago(200));
        let chain = failing_for(&failing, 3, ago(2));
        assert!(chain >= Duration::from_secs(200), "{chain:?}");
        assert!(failing_for(&failing, 4, ago(2)) < Duration::from_secs(1));
        let anew = failing_for(&failing, 3, ago(WORKING_RUN.as_secs() + 1));
        assert!(anew < Duration::from_secs(1), "{anew:?}");
        assert!(failing_for(&failing, 3, ago(2)) < Duration::from_secs(1));
    }
}
