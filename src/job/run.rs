//! `stratus run`: a checked [`Pipeline`] running against Kafka (or a file replay), Delta Lake
//! and Kafka sinks, exactly once into Delta.
//!
//! The loop works in cycles. It polls every source (see `source::reader`), decoding valid
//! events into Arrow and sending invalid ones to the dead-letter topic (a backfill, which
//! reaches no broker, writes them and its late rows to files beside the tables instead: see
//! `sink::side_files`). When `commit.max_rows` events have
//! been read or `commit.max_interval` has passed (or on shutdown, or when a backfill has read
//! everything), it flushes cycle N: waits for the dead letters, feeds the new rows through the
//! stages in file order — each stage an [`Operator`] (built by [`build`]) that takes its
//! input's batches, then its input's watermark; window stages fire what the watermark closed,
//! and rows too late for any window go to `<pipeline>.<stage>.late` — publishes each Kafka
//! sink's rows and writes each Delta sink's Parquet files on tasks of their own as soon as the
//! source or stage they take has its rows out, waits for every record to be acknowledged, then
//! commits every Delta sink that has rows, all at once (see [`Appending`]). Each of those
//! commits records, as `txn` marks, the cycle (`cycle` = N), every source partition's next
//! offset and every source's watermark. Once all have
//! committed, a [`Checkpoint`] of the state after cycle N — source offsets and watermark
//! clocks, each operator's state — is taken in memory and written beside the tables
//! (see `checkpoint`) in the background, while cycle N+1 reads and runs; cycle N+1 commits to
//! Delta only once it is written, so the tables are never more than one cycle ahead of it.
//! After the commits, each source's offsets go to its consumer group too, for lag tools only.
//! Time spent per phase is counted in `stratus_cycle_seconds_total`.
//!
//! Restart: the loop resumes from the newest checkpoint (cycle N). A crash between the Delta
//! commits of cycle N+1 leaves some tables marked N+1 and others not; the first cycle after the
//! restart is then a replay of cycle N+1: each partition is read exactly up to the offset the
//! marks record, the watermarks are the recorded ones, so the stages produce what they produced
//! then; tables marked N+1 skip it, the others commit it. Kafka sinks, the late topics and the
//! dead-letter topic were published before any Delta commit of that cycle, so a replay does not
//! publish them again. A crash before any Delta commit of a cycle redoes the cycle: Kafka
//! records repeat then, with the same `stratus.record_id`; a backfill's side files of that
//! cycle are discarded at the start and written anew. A backfill never continues a live run's
//! checkpoints, nor a live run a backfill's.
//!
//! Outages: a Delta commit or checkpoint write that fails on the store is retried with
//! backoff, a source whose brokers vanish waits for them, a delivery that takes long is
//! reported; each is a problem on `/readyz` meanwhile, and the run fails once one has lasted
//! `give_up_after` (see `retry`). Nothing reads while a commit is retried: memory stays where
//! it was.
//!
//! Window state is the rows of open windows (the input columns the stage's SQL reads). A
//! checkpoint holds it whole, so its size is the event-time span of `window + allowed lateness`
//! of input, written once per cycle.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{AsArray, RecordBatch};
use rdkafka::consumer::CommitMode;
use rdkafka::error::KafkaError;

use super::build::build;
use super::checkpoint::{Checkpoint, CheckpointError, CheckpointStore, SourceState, StageState};
use super::memory::{self, MemoryLimit};
use super::retry::{GaveUp, Retry};
use crate::cluster::Shard;
use crate::kafka::{KafkaConfigError, KafkaConnection, KafkaProperties};
use crate::metrics::PipelineMetrics;
use crate::metrics::health::{Health, problem};
use crate::operator::{Collector, Context, Operator, OperatorError};
use crate::pipeline::{Pipeline, SinkTarget, StageKind, StagePlan};
use crate::sink::delta::{CYCLE_MARK, Staged, with_event_date};
use crate::sink::kafka::{KafkaSink, KafkaSinkError};
use crate::sink::side_files::{Side, SideFileError, SideFiles};
use crate::sink::{
    CommitStats, DeltaSink, DeltaSinkConfig, Marks, SinkError, offset_mark, resolve_location,
};
use crate::source::SourceError;
use crate::source::reader::{
    DeadLetters, ReadConfig, SideOutputs, SourceRuntime, Until, caught_up, commit_to_group, now_us,
    open_source, poll_source, release_checkpointed, report_consumer_lag,
};
use crate::validate::TimeBounds;
use crate::window::WindowSpec;

/// Why the pipeline stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Kafka(#[from] KafkaConfigError),
    #[error("Kafka producer: {0}")]
    Producer(KafkaError),
    #[error("stage {stage}: {source}")]
    Stage {
        stage: String,
        source: OperatorError,
    },
    #[error(transparent)]
    Delta(#[from] SinkError),
    #[error(transparent)]
    KafkaSink(Box<KafkaSinkError>),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("cannot restart: {0}")]
    Restart(String),
    #[error(transparent)]
    SideFile(#[from] SideFileError),
    #[error("{0}")]
    Backfill(String),
    #[error(transparent)]
    GaveUp(#[from] GaveUp),
    #[error("consumer group: {0}")]
    Cluster(String),
    #[error("partition {partition}: {source}")]
    Shard {
        partition: i32,
        source: Box<RunError>,
    },
}

impl RunError {
    /// Whether a table's marks were taken over by another process (see
    /// [`DeltaSink::claim`]): this run commits nothing more to them.
    pub fn is_fenced(&self) -> bool {
        match self {
            RunError::Delta(SinkError::Fenced { .. }) => true,
            RunError::Source(e) => e.is_fenced(),
            RunError::Shard { source, .. } => source.is_fenced(),
            _ => false,
        }
    }

    /// Whether it is an object store or broker failure that was not retried where it happened
    /// (a request in flight when the process was paused fails once it resumes): trying again
    /// may succeed. One that was retried until the run gave up is not.
    pub fn is_transient(&self) -> bool {
        match self {
            RunError::Delta(e) => e.is_transient(),
            RunError::Source(e) => e.is_outage(),
            RunError::Shard { source, .. } => source.is_transient(),
            _ => false,
        }
    }
}

impl From<KafkaSinkError> for RunError {
    fn from(e: KafkaSinkError) -> Self {
        RunError::KafkaSink(Box::new(e))
    }
}

/// How to reach the outside world.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub brokers: String,
    /// The worker's librdkafka properties (security, tuning); the pipeline file's own
    /// `kafka.properties` win over them.
    pub kafka: KafkaProperties,
    /// Where relative Delta table names live: a directory or an `s3://bucket/prefix`.
    pub table_root: String,
    pub storage_options: HashMap<String, String>,
    /// Stop (after a final flush) once every source is read up to where it ended at start.
    pub until_caught_up: bool,
    /// How far in the future an event time may lie.
    pub max_future: Duration,
    /// How long the brokers, the object store or a disk may keep failing (retried with
    /// backoff meanwhile, not ready) before the run fails.
    pub give_up_after: Duration,
    /// How long a source's watermark may stand still while its events arrive before the run
    /// is not ready (windows do not close meanwhile).
    pub watermark_stuck_after: Duration,
    /// Run one partition of the sources, as a worker of the pipeline's consumer group does:
    /// under its own checkpoints and Delta marks, claiming the tables' marks for it.
    pub shard: Option<Shard>,
    /// The process's memory limit, shared by its run loops: what sizes each cycle's input.
    pub memory: Arc<MemoryLimit>,
}

/// [`RunConfig::give_up_after`] unless set: librdkafka's own default for a delivery.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(300);

/// [`RunConfig::watermark_stuck_after`] unless set: as long as the `StratusWatermarkStalled`
/// rule waits.
pub const WATERMARK_STUCK_AFTER: Duration = Duration::from_secs(900);

impl RunConfig {
    /// A backfill: read every source up to where it ended at start, commit, stop.
    pub fn backfill(
        brokers: &str,
        table_root: &str,
        storage_options: HashMap<String, String>,
    ) -> Self {
        RunConfig {
            brokers: brokers.to_string(),
            kafka: KafkaProperties::default(),
            table_root: table_root.to_string(),
            storage_options,
            until_caught_up: true,
            max_future: Duration::from_secs(300),
            give_up_after: GIVE_UP_AFTER,
            watermark_stuck_after: WATERMARK_STUCK_AFTER,
            shard: None,
            memory: Arc::new(MemoryLimit::new(
                memory::parse_limit(memory::DEFAULT_LIMIT).unwrap_or(None),
            )),
        }
    }
}

/// Runs `pipeline` as configured with its own metrics and no shutdown signal: for backfills,
/// the demo, benchmarks and tests.
pub async fn run_to_end(pipeline: &Pipeline, config: &RunConfig) -> Result<RunSummary, RunError> {
    run_pipeline(
        pipeline,
        config,
        PipelineMetrics::new(),
        Health::new(),
        std::future::pending(),
    )
    .await
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunSummary {
    pub events: u64,
    pub invalid: u64,
    pub late: u64,
    pub cycles: u64,
    /// Rows each stage produced.
    pub stage_rows: HashMap<String, u64>,
    /// For each firing of a window stage: seconds from the watermark passing the windows' end
    /// (the start of the flush that fired them) to their results being committed to every sink.
    pub window_latencies: Vec<f64>,
    /// The same firings: seconds to their results being delivered by every Kafka sink.
    #[serde(default)]
    pub window_topic_latencies: Vec<f64>,
    /// The same firings: seconds from the Kafka timestamp of the newest event read (on a live
    /// stream, the one that closed the windows) to the results delivered by every Kafka sink,
    /// and to them committed to every sink; none where no event with a timestamp was read, and
    /// in a replayed cycle or a backfill. Unlike the two above, these count the wait behind
    /// the cycle before. The four are kept for the first [`LATENCIES_KEPT`] firings.
    #[serde(default)]
    pub window_event_topic_latencies: Vec<Option<f64>>,
    #[serde(default)]
    pub window_event_latencies: Vec<Option<f64>>,
    /// Seconds spent per phase of the loop (as `stratus_cycle_seconds_total`).
    pub phase_seconds: std::collections::BTreeMap<String, f64>,
    /// The cycles whose firings took longest from the flush to every sink, slowest first (at
    /// most [`SLOWEST_KEPT`]): where their time went.
    #[serde(default)]
    pub slowest_firings: Vec<SlowCycle>,
    /// The phases of the cycle under way: the checkpoint started after the cycle before, its
    /// read, its flush.
    #[serde(skip)]
    cycle_phases: Vec<(String, f64)>,
}

/// A cycle that fired windows, by phase (see [`RunSummary::slowest_firings`]).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SlowCycle {
    /// The number of firings before the cycle's (what [`RunSummary::window_latencies`] held).
    pub after_firings: usize,
    /// From the flush to every sink.
    pub seconds: f64,
    pub phases: Vec<(String, f64)>,
}

/// How many of the slowest firing cycles a summary keeps.
pub const SLOWEST_KEPT: usize = 20;

/// How many firings' latencies a summary keeps (a day of one a second): a run that goes on
/// for months keeps its memory.
pub const LATENCIES_KEPT: usize = 100_000;

impl RunSummary {
    /// Counts `since`'s elapsed time to `phase`, here and in the metrics.
    fn spent(&mut self, metrics: &PipelineMetrics, pipeline: &str, phase: &str, since: Instant) {
        let seconds = since.elapsed().as_secs_f64();
        *self.phase_seconds.entry(phase.to_string()).or_default() += seconds;
        match self.cycle_phases.last_mut() {
            Some((last, spent)) if last == phase => *spent += seconds,
            _ => self.cycle_phases.push((phase.to_string(), seconds)),
        }
        metrics
            .cycle_seconds
            .with_label_values(&[pipeline, phase])
            .inc_by(seconds);
    }
}

struct StageRuntime {
    name: String,
    /// The source or stage it reads.
    input: String,
    /// Earlier stages it reads beside it.
    side_inputs: Vec<String>,
    /// Its side outputs: the operator's name for each, and the pipeline's.
    side_outputs: Vec<(&'static str, String)>,
    /// An alert stage: the delivery of the alerts it opens is timed (detection latency).
    alerts: bool,
    op: Box<dyn Operator>,
    /// Watermark of this stage's output (µs).
    watermark: i64,
    late: LateRows,
}

/// Where a stage's late rows go: its late topic, or a backfill's files.
enum LateRows {
    Topic(KafkaSink),
    File(SideFiles),
}

enum SinkRuntime {
    Delta(Box<DeltaSink>),
    /// Shared with the cycle's publishing tasks ([`Publishing`]).
    Kafka(Arc<KafkaSink>),
}

struct SinkSlot {
    name: String,
    from: String,
    /// The column its rows' `date` partition is derived from, if they lack one.
    date_from: Option<String>,
    runtime: SinkRuntime,
}

/// The first cycle after a restart, when some Delta tables committed it and others did not.
struct Replay {
    /// The tables that hold it already.
    done: Vec<String>,
    /// Per source, its recorded watermark.
    watermarks: HashMap<String, i64>,
}

/// How long the brokers have to answer one ask at start; unanswered, it is asked again (see
/// [`wait_for_brokers`]).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a delivery to Kafka may take before it is a problem on `/readyz`.
const PATIENCE: Duration = Duration::from_secs(5);

fn watermark_mark(source: &str) -> String {
    format!("watermark/{source}")
}

/// Runs `pipeline` until `shutdown` completes (then flushes and returns) or, with
/// `until_caught_up`, until every source is consumed.
pub async fn run_pipeline(
    pipeline: &Pipeline,
    config: &RunConfig,
    metrics: PipelineMetrics,
    health: Health,
    shutdown: impl Future<Output = ()>,
) -> Result<RunSummary, RunError> {
    let retry = Retry {
        pipeline: pipeline.name.clone(),
        scope: config
            .shard
            .as_ref()
            .map(|shard| shard.instance(&pipeline.name)),
        health: health.clone(),
        metrics: metrics.clone(),
        give_up_after: config.give_up_after,
    };
    // A backfill that reads no topic makes no Kafka client: the worker's settings (and the
    // secrets they reference) are not even resolved.
    let kafka = match pipeline.backfill && !pipeline.reaches_kafka() {
        true => KafkaConnection::plaintext(&config.brokers),
        false => KafkaConnection::new(&config.brokers, &config.kafka.merged(&pipeline.kafka))?,
    };
    if pipeline.reaches_kafka() {
        wait_for_brokers(&kafka, &retry).await?;
        tracing::info!("pipeline {}: Kafka at {kafka:?}", pipeline.name);
    }

    // A shard keeps its own checkpoints and marks: its state moves with its partition.
    let instance = match &config.shard {
        Some(shard) => shard.instance(&pipeline.name),
        None => pipeline.name.clone(),
    };
    let mut checkpoints =
        CheckpointStore::open(&config.table_root, &instance, &config.storage_options)?;
    // A backfill reaches no broker for its side outputs: they go to files beside the tables.
    let side = match pipeline.backfill {
        true => SideOutputs::Files(SideFiles::open(
            &config.table_root,
            &pipeline.name,
            &config.storage_options,
        )?),
        false => SideOutputs::Topics(kafka.producer().create().map_err(RunError::Producer)?),
    };
    let mut sinks = Vec::new();
    for s in &pipeline.sinks {
        let runtime = match &s.target {
            SinkTarget::Delta {
                table,
                partition_by,
            } => SinkRuntime::Delta(Box::new(
                DeltaSink::open(DeltaSinkConfig {
                    location: resolve_location(&config.table_root, table),
                    partition_columns: partition_by.clone(),
                    pipeline: instance.clone(),
                    checkpoint_interval: pipeline.checkpoint_every,
                    // Every shard sees every shard's files: the shard of partition 0 alone
                    // compacts, rather than all at once and all but one in vain (while its
                    // partition gets no events, it reads the tables now and then to).
                    compact_after_files: match &config.shard {
                        Some(shard) if shard.partition != 0 => 0,
                        _ => pipeline.compact_after_files,
                    },
                    storage_options: config.storage_options.clone(),
                    vacuum: pipeline.vacuum.clone(),
                })
                .await?,
            )),
            SinkTarget::Kafka {
                topic,
                key,
                headers,
            } => {
                let SideOutputs::Topics(producer) = &side else {
                    return Err(RunError::Backfill(format!(
                        "sink `{}`: a backfill publishes to no topic",
                        s.name
                    )));
                };
                SinkRuntime::Kafka(Arc::new(
                    KafkaSink::new(&s.name, topic, key.clone(), producer.clone())
                        .with_headers(headers.clone()),
                ))
            }
        };
        sinks.push(SinkSlot {
            name: s.name.clone(),
            from: s.from.clone(),
            date_from: s.date_from.clone(),
            runtime,
        });
    }

    refuse_other_layout(pipeline, config, &sinks).await?;
    // A shard claims the tables before it reads its checkpoint: the worker that had the
    // partition commits nothing after that, so what it read is what the tables hold.
    if config.shard.is_some() {
        let mut owner = 0;
        for (slot, plan) in sinks.iter_mut().zip(&pipeline.sinks) {
            if let SinkRuntime::Delta(sink) = &mut slot.runtime {
                // Retried as a commit is: other workers' commits race it to the log.
                let mut attempts = retry.attempts(problem::sink(&slot.name), "delta_commit");
                let epoch = loop {
                    match sink.claim(&plan.schema).await {
                        Ok(epoch) => break epoch,
                        Err(e) if e.is_transient() => attempts.failed(e).await?,
                        Err(e) => return Err(e.into()),
                    }
                };
                attempts.succeeded();
                tracing::info!(
                    "sink {}: {instance} claimed (owner epoch {epoch})",
                    slot.name
                );
                owner = owner.max(epoch);
            }
        }
        // Above every earlier owner's: a checkpoint one of them writes late never outranks
        // this shard's, nor overwrites its files.
        checkpoints.set_epoch(owner);
    }
    let restored = restore(&checkpoints, &retry).await?;
    if restored.cycle > 0 && restored.backfill != pipeline.backfill {
        return Err(RunError::Restart(if pipeline.backfill {
            format!(
                "the checkpoints of `{}` under {} are a live pipeline's: a backfill (--replay) \
                 never continues them; give the backfill a name of its own with --name",
                pipeline.name,
                checkpoints.location()
            )
        } else {
            format!(
                "the checkpoints of `{}` under {} are a backfill's: a live run does not \
                 continue them; run it under its own name",
                pipeline.name,
                checkpoints.location()
            )
        }));
    }

    let mut sources = Vec::new();
    let read = ReadConfig {
        kafka: &kafka,
        max_future: config.max_future,
        until_caught_up: config.until_caught_up,
        side: &side,
        shard: config.shard.as_ref(),
    };
    for plan in &pipeline.sources {
        let start = restored.sources.get(&plan.name);
        // Waited out as brokers at start are (see `wait_for_brokers`).
        let source = retry
            .until_ok(problem::KAFKA, "connect", SourceError::is_outage, || {
                open_source(pipeline, plan, &read, start)
            })
            .await?;
        sources.push(source);
    }
    let mut replay = plan_replay(&restored, &sinks, &mut sources).await?;
    if let SideOutputs::Files(files) = &side {
        // A replayed cycle keeps its side files; a cycle after it, or one no table committed,
        // runs again with other boundaries and writes its own.
        let keep = restored.cycle + i64::from(replay.is_some());
        let discarded = files.discard_after(keep).await?;
        if discarded > 0 {
            tracing::info!(
                "pipeline {}: {discarded} side files of uncommitted cycles discarded",
                pipeline.name
            );
        }
    }
    let mut stages = Vec::new();
    for plan in &pipeline.stages {
        let stage = open_stage(pipeline, plan, config, &restored, &side).await?;
        if stage.alerts {
            // Exported before the first alert, for the rule that reads it.
            let _ = metrics
                .detection_latency_seconds
                .with_label_values(&[pipeline.name.as_str(), plan.name.as_str()]);
        }
        stages.push(stage);
    }

    // Every problem the run may report, and every retried operation, is exported from the
    // start (at 0), so rules and dashboards see the series before anything fails.
    let mut problems = vec![problem::CHECKPOINT.to_string()];
    if pipeline.reaches_kafka() {
        problems.extend([
            problem::KAFKA.to_string(),
            problem::KAFKA_DELIVERY.to_string(),
        ]);
    }
    problems.extend(sources.iter().map(|s| problem::watermark(&s.plan.name)));
    problems.extend(
        sinks
            .iter()
            .filter(|s| matches!(s.runtime, SinkRuntime::Delta(_)))
            .map(|s| problem::sink(&s.name)),
    );
    for p in &problems {
        retry.clear(p);
    }
    let started_s = chrono::Utc::now().timestamp_millis() as f64 / 1e3;
    // This loop's share of the process's memory limit, and its first cycle's input.
    let _memory_share = config.memory.join();
    if let Some(resident) = memory::Resident::of(None) {
        tracing::info!(
            "pipeline {}: resident set at start {} MiB, {}",
            pipeline.name,
            resident.now >> 20,
            config
                .memory
                .limit()
                .map_or("no memory limit".into(), |l| format!(
                    "memory limit {} MiB",
                    l >> 20
                ))
        );
    }
    let mut cycle_bytes = cycle_budget(pipeline, config, &metrics);
    for slot in &sinks {
        if let SinkRuntime::Delta(_) = slot.runtime {
            metrics
                .delta_last_commit
                .with_label_values(&[pipeline.name.as_str(), slot.name.as_str()])
                .set(started_s);
        }
    }
    for st in &stages {
        metrics
            .events_late
            .with_label_values(&[pipeline.name.as_str(), st.name.as_str()])
            .inc_by(0);
    }
    for operation in ["delta_commit", "checkpoint", "restore", "connect"] {
        metrics
            .retries
            .with_label_values(&[pipeline.name.as_str(), operation])
            .inc_by(0);
    }
    health.set_started();
    let mut kafka_down: Option<Instant> = None;
    let mut cycle = restored.cycle;
    let mut summary = RunSummary::default();
    let mut last_flush = Instant::now();
    let mut saving = Saving::default();
    // The windows of the pipeline's stages: where a live read stops (see `Until`).
    let windows: Vec<WindowSpec> = pipeline.stages.iter().filter_map(|s| s.window()).collect();
    tokio::pin!(shutdown);
    loop {
        let stopping = tokio::select! {
            biased;
            () = &mut shutdown => true,
            () = tokio::task::yield_now() => false,
        };
        let (mut pending, mut pending_bytes, mut until_reached) = (0, 0, false);
        let reading = Instant::now();
        for s in sources.iter_mut() {
            // A replayed cycle reads to its recorded end, whatever the limits are now.
            let (rows, bytes, until) = match s.replay_to {
                Some(_) => (usize::MAX, usize::MAX, None),
                None => (
                    pipeline.max_rows.saturating_sub(s.pending_events),
                    cycle_bytes,
                    // A run to the end of what is there reads as a backlog does.
                    (!config.until_caught_up).then(|| Until {
                        deadline: last_flush
                            + Duration::from_micros(pipeline.max_interval.max(0) as u64),
                        closes_at: next_close(&windows, s.watermark.current()),
                    }),
                ),
            };
            let polled = poll_source(pipeline, s, &metrics, rows, bytes, until)?;
            summary.events += polled.events;
            summary.invalid += polled.invalid;
            until_reached |= polled.until_reached;
            pending += s.pending_events;
            pending_bytes += s.pending_bytes;
        }
        summary.spent(&metrics, &pipeline.name, "read", reading);
        brokers_reachable(&sources, &retry, &mut kafka_down)?;
        let caught_up = sources.iter().all(caught_up);
        // A cycle closes after exactly `max_rows` events (valid or not), or after the event
        // that brings its payloads to `max_bytes`, while data flows, so cycle boundaries — and
        // with them watermarks and lateness — follow the offsets.
        // A live stream's cycle also closes as soon as its watermark closes a window.
        let due = pending >= pipeline.max_rows
            || pending_bytes >= cycle_bytes
            || until_reached
            || last_flush.elapsed().as_micros() as i64 >= pipeline.max_interval;
        // A backfill flushes as soon as it has read everything; a stream keeps to the limits,
        // so a trickle of events does not become a stream of tiny commits.
        let drained = config.until_caught_up && caught_up;
        // A replayed cycle ends where it ended the first time, not on time or size; stopping
        // before then commits nothing (the next start replays it again).
        let close = match replay {
            Some(_) => sources.iter().all(SourceRuntime::replay_done),
            None => due || stopping || drained,
        };
        if close {
            let mut context = Cycle {
                number: cycle + 1,
                watermark_stuck_after: config.watermark_stuck_after,
                replay: replay.take(),
                previous: &mut saving,
            };
            let changed = flush(
                pipeline,
                &mut context,
                &mut sources,
                &mut stages,
                &mut sinks,
                &retry,
                &mut summary,
            )
            .await?;
            if changed || context.replay.is_some() {
                cycle += 1;
                let started = Instant::now();
                saving.wait().await?;
                let checkpoint = checkpoint_of(
                    cycle,
                    pipeline.backfill,
                    &sources,
                    &mut stages,
                    &checkpoints,
                )?;
                let sizes = [&metrics.checkpoint_bytes, &metrics.checkpoint_state_bytes]
                    .map(|m| m.with_label_values(&[pipeline.name.as_str()]));
                saving.start(&checkpoints, checkpoint, &retry, sizes);
                summary.spent(&metrics, &pipeline.name, "checkpoint", started);
            }
            for s in sources.iter_mut() {
                s.end_replay()?;
            }
            config.memory.cycle_done(pending_bytes);
            let took = last_flush.elapsed().as_millis();
            cycle_bytes = cycle_budget(pipeline, config, &metrics);
            tracing::debug!(
                "pipeline {}: cycle {cycle}: {pending} events, {pending_bytes} bytes, in {took} \
                 ms; resident {} MiB, the next may read {cycle_bytes} bytes",
                pipeline.name,
                metrics
                    .resident_memory_bytes
                    .with_label_values(&[] as &[&str])
                    .get()
                    >> 20
            );
            last_flush = Instant::now();
        }
        if stopping || (drained && replay.is_none()) {
            saving.wait().await?;
            for slot in sinks.iter_mut() {
                if let SinkRuntime::Delta(sink) = &mut slot.runtime {
                    sink.finish_background().await;
                }
            }
            // The last positions reach the group for sure (an async commit may still be queued).
            for s in sources
                .iter()
                .filter(|s| (s.moved || s.held() != s.position) && !pipeline.backfill)
            {
                commit_to_group(s, CommitMode::Sync);
                // The last checkpoint is written: a restart reads on from there.
                release_checkpointed(s, &s.held());
            }
            return Ok(summary);
        }
    }
}

/// The input bytes the next cycle of `pipeline` may read under the process's memory limit,
/// exported with the limit and the resident set.
fn cycle_budget(pipeline: &Pipeline, config: &RunConfig, metrics: &PipelineMetrics) -> usize {
    let budget = config.memory.budget(&pipeline.name, pipeline.max_bytes);
    metrics
        .cycle_budget_bytes
        .with_label_values(&[pipeline.name.as_str()])
        .set(budget as i64);
    if let Some(limit) = config.memory.limit() {
        metrics
            .memory_limit_bytes
            .with_label_values(&[] as &[&str])
            .set(limit as i64);
    }
    if let Some(resident) = memory::Resident::of(None) {
        metrics
            .resident_memory_bytes
            .with_label_values(&[] as &[&str])
            .set(resident.now as i64);
    }
    budget
}

/// The source watermark at which the next window of `windows` closes after `flushed`, the
/// watermark the stages last saw: before there is one, any watermark (the first flush gives the
/// stages one); without windows, none.
fn next_close(windows: &[WindowSpec], flushed: i64) -> i64 {
    match flushed {
        _ if windows.is_empty() => i64::MAX,
        i64::MIN => i64::MIN + 1,
        w => windows
            .iter()
            .filter_map(|spec| spec.next_close(w))
            .min()
            .unwrap_or(i64::MAX),
    }
}

/// At start: a pipeline's tables hold the cycles of a run as one process, or of its workers'
/// shards, never both (their state and marks are kept apart, and neither could continue the
/// other's). A shard refuses tables a single process committed to; a single process refuses
/// tables the shard of partition 0 committed to; each says what to do.
async fn refuse_other_layout(
    pipeline: &Pipeline,
    config: &RunConfig,
    sinks: &[SinkSlot],
) -> Result<(), RunError> {
    let (other, what) = match &config.shard {
        Some(_) => (
            pipeline.name.clone(),
            "a run of it as one process (`stratus run`); its workers keep state per partition",
        ),
        None => (
            Shard::instance_of(&pipeline.name, 0),
            "its workers (`stratus run --cluster`), which keep state per partition; one process",
        ),
    };
    for slot in sinks {
        if let SinkRuntime::Delta(sink) = &slot.runtime
            && let Some(cycle) = sink.app_mark(&format!("{other}/{CYCLE_MARK}")).await?
        {
            return Err(RunError::Restart(format!(
                "the Delta table of sink `{}` holds cycle {cycle} of `{}` from {what} cannot \
                 continue them: run as before, or under another name (--name) with new tables",
                slot.name, pipeline.name
            )));
        }
    }
    Ok(())
}

/// Reads the Delta tables' cycle marks against the restored checkpoint: when some tables
/// committed the cycle after it, that cycle is to be replayed, up to the offsets they recorded.
async fn plan_replay(
    restored: &Checkpoint,
    sinks: &[SinkSlot],
    sources: &mut [SourceRuntime],
) -> Result<Option<Replay>, RunError> {
    let next = restored.cycle + 1;
    let mut done = Vec::new();
    let mut ahead: Option<&DeltaSink> = None;
    for slot in sinks {
        let SinkRuntime::Delta(sink) = &slot.runtime else {
            continue;
        };
        match sink.mark(CYCLE_MARK).await? {
            Some(c) if c > next => {
                return Err(RunError::Restart(format!(
                    "Delta table of sink `{}` holds cycle {c}, but the newest checkpoint read is \
                     of cycle {}: the checkpoints (under `_stratus/` beside the tables) are \
                     missing, damaged (a warning above names those skipped) or from another \
                     run; restore them, or write to new tables",
                    slot.name, restored.cycle
                )));
            }
            Some(c) if c == next => {
                done.push(slot.name.clone());
                ahead = Some(sink);
            }
            _ => {}
        }
    }
    let Some(sink) = ahead else {
        return Ok(None);
    };
    let mut watermarks = HashMap::new();
    for s in sources.iter_mut() {
        let mut to = HashMap::new();
        for &p in s.position.keys() {
            let Some(end) = sink.mark(&offset_mark(&s.topic, p)).await? else {
                return Err(missing_mark(&s.topic, p));
            };
            to.insert(p, end);
        }
        s.replay_to = Some(to);
        let mark = watermark_mark(&s.plan.name);
        let Some(w) = sink.mark(&mark).await? else {
            return Err(missing_mark(&mark, 0));
        };
        watermarks.insert(s.plan.name.clone(), w);
    }
    tracing::warn!(
        "the last run stopped inside cycle {next}: replaying it for the tables that lack it \
         ({} committed it)",
        done.join(", ")
    );
    Ok(Some(Replay { done, watermarks }))
}

fn missing_mark(what: &str, partition: i32) -> RunError {
    RunError::Restart(format!(
        "the tables record no position for `{what}` (partition {partition}) in the cycle to \
         replay: the pipeline's sources changed since the crash; restore them to replay it"
    ))
}

async fn open_stage(
    pipeline: &Pipeline,
    plan: &StagePlan,
    config: &RunConfig,
    restored: &Checkpoint,
    side: &SideOutputs,
) -> Result<StageRuntime, RunError> {
    let stage_err = |source| RunError::Stage {
        stage: plan.name.clone(),
        source,
    };
    let mut op = build(pipeline, plan, &config.storage_options)
        .await
        .map_err(stage_err)?;
    let saved = restored.stages.get(&plan.name);
    if let Some(saved) = saved {
        op.restore(saved.state.clone()).map_err(stage_err)?;
    }
    let late = match side {
        SideOutputs::Topics(producer) => {
            let topic = format!("{}.{}.late", pipeline.name, plan.name);
            LateRows::Topic(KafkaSink::new(&topic, &topic, Vec::new(), producer.clone()))
        }
        SideOutputs::Files(files) => LateRows::File(files.clone()),
    };
    Ok(StageRuntime {
        name: plan.name.clone(),
        input: plan.input.clone(),
        side_inputs: plan.side_inputs.clone(),
        side_outputs: plan
            .side_outputs
            .iter()
            .map(|o| (o.output, o.name.clone()))
            .collect(),
        alerts: matches!(plan.kind, StageKind::Alert(_)),
        op,
        watermark: saved.map_or(i64::MIN, |s| s.watermark),
        late,
    })
}

/// The checkpoint being written in the background, if any.
///
/// A cycle's state is snapshot in memory when the cycle ends, and written while the next cycle
/// reads, runs its stages and publishes to Kafka; the next cycle's Delta commits (and the next
/// checkpoint) wait for it. So the tables are never more than one cycle ahead of the newest
/// checkpoint, which is what a restart's replay of one cycle needs.
#[derive(Default)]
struct Saving(Option<tokio::task::JoinHandle<Result<(), RunError>>>);

impl Saving {
    /// Writes `checkpoint` in the background, retrying while the store fails; `sizes` are set
    /// to the bytes it wrote and the bytes of the state it stands for.
    fn start(
        &mut self,
        store: &CheckpointStore,
        checkpoint: Checkpoint,
        retry: &Retry,
        sizes: [prometheus::IntGauge; 2],
    ) {
        let store = store.clone();
        let retry = retry.clone();
        self.0 = Some(tokio::spawn(async move {
            let started = Instant::now();
            let saved = retry
                .until_ok(
                    problem::CHECKPOINT,
                    "checkpoint",
                    CheckpointError::is_transient,
                    || store.save(&checkpoint),
                )
                .await?;
            for (gauge, bytes) in sizes.iter().zip([saved.written, saved.state]) {
                gauge.set(i64::try_from(bytes).unwrap_or(i64::MAX));
            }
            tracing::debug!(
                "pipeline {}: checkpoint of cycle {}: {} bytes written of a state of {}, in {} ms",
                retry.pipeline,
                checkpoint.cycle,
                saved.written,
                saved.state,
                started.elapsed().as_millis()
            );
            Ok(())
        }));
    }

    /// Waits until the checkpoint started last is written.
    async fn wait(&mut self) -> Result<(), RunError> {
        match self.0.take() {
            Some(handle) => handle.await.map_err(|e| {
                RunError::Checkpoint(CheckpointError::Corrupt {
                    location: "checkpoint writer".into(),
                    message: e.to_string(),
                })
            })?,
            None => Ok(()),
        }
    }
}

/// The state after `cycle`, in memory: each stage's whole, or its changes since the checkpoint
/// before (as `store` asks).
fn checkpoint_of(
    cycle: i64,
    backfill: bool,
    sources: &[SourceRuntime],
    stages: &mut [StageRuntime],
    store: &CheckpointStore,
) -> Result<Checkpoint, RunError> {
    let mut checkpoint = Checkpoint {
        cycle,
        backfill,
        ..Checkpoint::default()
    };
    for s in sources {
        let (watermark, newest) = s.watermark.snapshot();
        let state = SourceState {
            next: s.next_offsets(),
            watermark,
            newest,
        };
        checkpoint.sources.insert(s.plan.name.clone(), state);
    }
    for st in stages {
        let kind = store.next_snapshot(&st.name);
        let state = st.op.checkpoint(&kind).map_err(|source| RunError::Stage {
            stage: st.name.clone(),
            source,
        })?;
        let state = StageState {
            watermark: st.watermark,
            state,
        };
        checkpoint.stages.insert(st.name.clone(), state);
    }
    Ok(checkpoint)
}

/// The cycle a flush completes.
struct Cycle<'a> {
    number: i64,
    watermark_stuck_after: Duration,
    replay: Option<Replay>,
    /// The checkpoint of the cycle before, perhaps still being written: waited for before
    /// this cycle commits to Delta.
    previous: &'a mut Saving,
}

/// Runs one cycle's rows through the stages and into the sinks. Returns whether anything
/// happened: events were read or a stage produced rows.
async fn flush(
    pipeline: &Pipeline,
    cycle: &mut Cycle<'_>,
    sources: &mut [SourceRuntime],
    stages: &mut [StageRuntime],
    sinks: &mut [SinkSlot],
    retry: &Retry,
    summary: &mut RunSummary,
) -> Result<bool, RunError> {
    let metrics = &retry.metrics;
    summary.cycles += 1;
    let now = now_us();
    let replay = cycle.replay.as_ref();
    let mut outputs: HashMap<String, Vec<RecordBatch>> = HashMap::new();
    let mut watermarks: HashMap<String, i64> = HashMap::new();
    let mut marks = Marks::from([(CYCLE_MARK.to_string(), cycle.number)]);
    let mut changed = false;
    // A replayed cycle published its records the first time.
    let mut publishing = Publishing::new(replay.is_none());
    let mut appending = Appending::default();
    for s in sources.iter_mut() {
        changed |= s.pending_events > 0;
        match &mut s.dead_letters {
            DeadLetters::Topic { sent, .. } => {
                let topic = &s.plan.dead_letter_topic;
                let delivered = async {
                    for d in sent.drain(..) {
                        let failed = match d.await {
                            Ok(Ok(_)) => None,
                            Ok(Err((e, _))) => Some(e.to_string()),
                            Err(_) => Some("the producer was dropped".to_string()),
                        };
                        if let Some(message) = failed {
                            return Err(SourceError::DeadLetter {
                                topic: topic.clone(),
                                message,
                            });
                        }
                    }
                    Ok(())
                };
                let waiting = format!("dead letters to {topic} not yet delivered");
                retry
                    .awaiting(problem::KAFKA_DELIVERY, &waiting, PATIENCE, delivered)
                    .await?;
            }
            DeadLetters::File { files, lines } => {
                let lines = std::mem::take(lines);
                files
                    .write(Side::DeadLetters, &s.plan.name, cycle.number, lines)
                    .await?;
            }
        }
        let batch = s
            .decoder
            .flush()
            .map_err(|e| SourceError::Read(s.plan.name.clone(), e.to_string()))?;
        let before = s.watermark.current();
        let w = match replay.and_then(|r| r.watermarks.get(&s.plan.name)) {
            Some(&recorded) => {
                s.watermark.raise_to(recorded);
                recorded
            }
            None => s.watermark.watermark(now),
        };
        // A watermark that moved is state to checkpoint, even with no event read.
        changed |= w != before;
        watermark_health(s, w != before, cycle.watermark_stuck_after, retry);
        metrics
            .watermark_lag_seconds
            .with_label_values(&[pipeline.name.as_str(), s.plan.name.as_str()])
            .set(if w == i64::MIN {
                0.0
            } else {
                (now - w) as f64 / 1e6
            });
        watermarks.insert(s.plan.name.clone(), w);
        publishing.start(&s.plan.name, std::slice::from_ref(&batch), sinks);
        appending.start(&s.plan.name, std::slice::from_ref(&batch), sinks, replay)?;
        outputs.insert(s.plan.name.clone(), vec![batch]);
        for (p, next) in s.next_offsets() {
            marks.insert(offset_mark(&s.topic, p), next);
        }
        marks.insert(watermark_mark(&s.plan.name), w);
    }

    let fired_at = Instant::now();
    let closed_by = sources
        .iter()
        .filter(|_| replay.is_none() && !pipeline.backfill)
        .filter_map(|s| s.newest_append_ms)
        .max();
    let since_close = || closed_by.map(|t| (now_us() / 1_000 - t).max(0) as f64 / 1e3);
    let mut fired: Vec<String> = Vec::new();
    for st in stages.iter_mut() {
        let started = Instant::now();
        let ctx = Context {
            pipeline: &pipeline.name,
            scope: retry.scope.as_deref().unwrap_or(&pipeline.name),
            stage: &st.name,
            metrics,
        };
        let stage_err = |source| RunError::Stage {
            stage: st.name.clone(),
            source,
        };
        let input_watermark = watermarks.get(&st.input).copied().unwrap_or(i64::MIN);
        let mut out = Collector::default();
        st.op.on_cycle_start(&ctx).await;
        for side in &st.side_inputs {
            for b in outputs.get(side).into_iter().flatten() {
                if b.num_rows() > 0 {
                    st.op.process_side(side, b, &ctx).await.map_err(stage_err)?;
                }
            }
        }
        for b in outputs.get(&st.input).into_iter().flatten() {
            if b.num_rows() > 0 {
                st.op
                    .process_batch(b, &ctx, &mut out)
                    .await
                    .map_err(stage_err)?;
            }
        }
        let before = out.rows.len();
        let watermark = st
            .op
            .handle_watermark(input_watermark, &ctx, &mut out)
            .await
            .map_err(stage_err)?;
        st.op.on_cycle_end(&ctx);
        if out.rows.len() > before {
            fired.push(st.name.clone());
        }
        // A watermark that moved is state to checkpoint, even with no row out.
        changed |= watermark != st.watermark;
        st.watermark = watermark;
        for late in &out.late {
            summary.late += late.num_rows() as u64;
            metrics
                .events_late
                .with_label_values(&ctx.labels())
                .inc_by(late.num_rows() as u64);
        }
        if replay.is_none() && !out.late.is_empty() {
            match &st.late {
                LateRows::File(files) => {
                    files.write_late(&st.name, cycle.number, &out.late).await?
                }
                LateRows::Topic(topic) => {
                    let waiting = format!("late rows of {} not yet delivered", st.name);
                    retry
                        .awaiting(
                            problem::KAFKA_DELIVERY,
                            &waiting,
                            PATIENCE,
                            topic.send(&out.late),
                        )
                        .await?;
                }
            }
        }
        let rows: usize = out.rows.iter().map(RecordBatch::num_rows).sum();
        changed |= rows > 0;
        *summary.stage_rows.entry(st.name.clone()).or_default() += rows as u64;
        metrics
            .stage_rows
            .with_label_values(&ctx.labels())
            .inc_by(rows as u64);
        watermarks.insert(st.name.clone(), st.watermark);
        publishing.start(&st.name, &out.rows, sinks);
        appending.start(&st.name, &out.rows, sinks, replay)?;
        outputs.insert(st.name.clone(), out.rows);
        for (output, name) in &st.side_outputs {
            let batches: Vec<RecordBatch> = out
                .side
                .iter()
                .filter(|(o, _)| o == output)
                .map(|(_, b)| b.clone())
                .collect();
            changed |= !batches.is_empty();
            watermarks.insert(name.clone(), st.watermark);
            publishing.start(name, &batches, sinks);
            appending.start(name, &batches, sinks, replay)?;
            outputs.insert(name.clone(), batches);
        }
        summary.spent(
            metrics,
            &pipeline.name,
            &format!("stage {}", st.name),
            started,
        );
    }

    // Kafka first: a Delta commit (which advances the offsets) must not precede the records.
    let publishing_wait = Instant::now();
    let mut delivered_at = None;
    for mut task in publishing.tasks {
        let waiting = format!("sink {}: records not yet delivered", task.sink);
        let delivered = retry
            .awaiting(
                problem::KAFKA_DELIVERY,
                &waiting,
                PATIENCE,
                task.delivered(),
            )
            .await?;
        metrics
            .rows_out
            .with_label_values(&[pipeline.name.as_str(), task.sink.as_str()])
            .inc_by(delivered.rows as u64);
        if let Some(st) = stages.iter().find(|st| st.alerts && st.name == task.from)
            && let Some(oldest) = sources.iter().filter_map(|s| s.oldest_append_ms).min()
        {
            let seconds = (delivered.at_ms - oldest).max(0) as f64 / 1e3;
            let latency = metrics
                .detection_latency_seconds
                .with_label_values(&[pipeline.name.as_str(), st.name.as_str()]);
            for _ in 0..outputs.get(&task.from).map_or(0, |b| opened(b)) {
                latency.observe(seconds);
            }
        }
        delivered_at = delivered_at.max(Some((delivered.at, delivered.at_ms)));
    }
    summary.spent(metrics, &pipeline.name, "kafka sinks", publishing_wait);
    let recording = summary.window_latencies.len() < LATENCIES_KEPT;
    if recording {
        // When the last record was acknowledged (when the stages were done, with no topic).
        let (at, at_ms) = delivered_at.unwrap_or_else(|| (Instant::now(), now_us() / 1_000));
        let published = at.saturating_duration_since(fired_at).as_secs_f64();
        summary
            .window_topic_latencies
            .extend(fired.iter().map(|_| published));
        let seconds = closed_by.map(|t| (at_ms - t).max(0) as f64 / 1e3);
        summary
            .window_event_topic_latencies
            .extend(fired.iter().map(|_| seconds));
    }
    // The cycle before must be checkpointed before this one commits anywhere.
    let waited = Instant::now();
    cycle.previous.wait().await?;
    summary.spent(metrics, &pipeline.name, "checkpoint", waited);
    let committing = Instant::now();
    // Every table commits the cycle at once: each commit carries the same marks, and a restart
    // replays the cycle for the tables a crash left without it.
    let mut commits = Vec::new();
    for slot in sinks.iter_mut() {
        let SinkRuntime::Delta(sink) = &mut slot.runtime else {
            continue;
        };
        if replay.is_some_and(|r| r.done.contains(&slot.name)) {
            continue;
        }
        let Some(Append { batches, staged }) = appending.tables.remove(&slot.name) else {
            // Others' files pile up meanwhile, if other processes write to it.
            sink.look_while_idle().await;
            continue;
        };
        let name = slot.name.as_str();
        let marks = &marks;
        commits.push(async move {
            commit(sink, name, batches, staged, marks, retry)
                .await
                .map(|s| (name, s))
        });
    }
    for (name, stats) in futures::future::try_join_all(commits).await? {
        let labels = [pipeline.name.as_str(), name];
        metrics
            .rows_out
            .with_label_values(&labels)
            .inc_by(stats.rows as u64);
        metrics
            .delta_commit_seconds
            .with_label_values(&labels)
            .observe(stats.seconds);
        metrics
            .delta_files_written
            .with_label_values(&labels)
            .inc_by(stats.files as u64);
    }
    // Every table is now up to date with the cycle, whether it had rows in it or not: a
    // sparse table (hourly forecasts) is not taken for a stuck one.
    let now_s = chrono::Utc::now().timestamp_millis() as f64 / 1e3;
    for slot in sinks.iter() {
        if let SinkRuntime::Delta(_) = slot.runtime {
            metrics
                .delta_last_commit
                .with_label_values(&[pipeline.name.as_str(), slot.name.as_str()])
                .set(now_s);
        }
    }
    summary.spent(metrics, &pipeline.name, "delta sinks", committing);
    if recording {
        let seconds = since_close();
        summary
            .window_event_latencies
            .extend(fired.iter().map(|_| seconds));
    }
    let phases = std::mem::take(&mut summary.cycle_phases);
    if !fired.is_empty() {
        let seconds = fired_at.elapsed().as_secs_f64();
        let slowest = &mut summary.slowest_firings;
        if slowest.len() < SLOWEST_KEPT || slowest.last().is_some_and(|s| s.seconds < seconds) {
            slowest.push(SlowCycle {
                after_firings: summary.window_latencies.len(),
                seconds,
                phases,
            });
            slowest.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
            slowest.truncate(SLOWEST_KEPT);
        }
    }
    for stage in fired {
        let seconds = fired_at.elapsed().as_secs_f64();
        if recording {
            summary.window_latencies.push(seconds);
        }
        metrics
            .window_flush_seconds
            .with_label_values(&[pipeline.name.as_str(), stage.as_str()])
            .observe(seconds);
    }
    for s in sources.iter_mut() {
        report_consumer_lag(pipeline, s, metrics);
        // Where the checkpoint of the cycle before, written before this cycle committed, has
        // the source.
        release_checkpointed(s, &s.held());
        let moved = !s.pending.is_empty();
        for (p, next) in s.pending.drain() {
            s.position.insert(p, next);
        }
        // A backfill's positions are its own, never the live pipeline's group's. A
        // repartition topic read to its end may have moved only past the marker of the
        // transaction that wrote its last records.
        if (moved || s.held() != s.position) && !pipeline.backfill {
            s.moved = true;
            commit_to_group(s, CommitMode::Async);
        }
        s.pending_events = 0;
        s.pending_bytes = 0;
        s.oldest_append_ms = None;
        s.newest_append_ms = None;
        s.decoder
            .set_time_bounds(TimeBounds::plausible(now_us(), s.max_future));
    }
    Ok(changed)
}

/// A cycle's records on their way to Kafka: each Kafka sink starts publishing (encoding and
/// handing its records to the producer, on a task of its own) as soon as the rows it takes are
/// out — a source's events once read, a stage's results once computed — beside the stages
/// after it. The cycle waits for every acknowledgement before it commits to Delta.
struct Publishing {
    /// False for a replayed cycle, which published its records the first time.
    on: bool,
    tasks: Vec<PublishingTask>,
}

struct PublishingTask {
    sink: String,
    /// The source or stage output the rows came from.
    from: String,
    handle: tokio::task::JoinHandle<Result<Delivered, KafkaSinkError>>,
}

/// A sink's records of one cycle, every one acknowledged.
struct Delivered {
    rows: usize,
    /// When the last was acknowledged, and the same as Unix milliseconds.
    at: Instant,
    at_ms: i64,
}

impl Publishing {
    fn new(on: bool) -> Self {
        Publishing {
            on,
            tasks: Vec::new(),
        }
    }

    /// Starts publishing `batches`, the rows of `from`, to every Kafka sink that takes them.
    fn start(&mut self, from: &str, batches: &[RecordBatch], sinks: &[SinkSlot]) {
        if !self.on || batches.iter().all(|b| b.num_rows() == 0) {
            return;
        }
        for slot in sinks.iter().filter(|s| s.from == from) {
            let SinkRuntime::Kafka(sink) = &slot.runtime else {
                continue;
            };
            let (sink, batches) = (sink.clone(), batches.to_vec());
            let handle = tokio::spawn(async move {
                let rows = sink.send(&batches).await?;
                Ok(Delivered {
                    rows,
                    at: Instant::now(),
                    at_ms: now_us() / 1_000,
                })
            });
            self.tasks.push(PublishingTask {
                sink: slot.name.clone(),
                from: from.to_string(),
                handle,
            });
        }
    }
}

/// Each Delta sink's rows of the cycle, their Parquet files written on tasks of their own as
/// soon as the rows are out (see [`DeltaSink::stage`]): the commits at the end of the cycle
/// have only the log to write.
#[derive(Default)]
struct Appending {
    /// By sink.
    tables: HashMap<String, Append>,
}

struct Append {
    /// With their `date` partition, where the sink derives it.
    batches: Vec<RecordBatch>,
    staged: Option<Staged>,
}

impl Appending {
    /// Starts writing `batches`, the rows of `from`, to every Delta sink that takes them,
    /// except the tables a replayed cycle finds holding it already.
    fn start(
        &mut self,
        from: &str,
        batches: &[RecordBatch],
        sinks: &[SinkSlot],
        replay: Option<&Replay>,
    ) -> Result<(), RunError> {
        for slot in sinks.iter().filter(|s| s.from == from) {
            let SinkRuntime::Delta(sink) = &slot.runtime else {
                continue;
            };
            if replay.is_some_and(|r| r.done.contains(&slot.name)) {
                continue;
            }
            let mut dated = Vec::new();
            for b in batches.iter().filter(|b| b.num_rows() > 0) {
                dated.push(match &slot.date_from {
                    Some(ts) => with_event_date(b, ts)?,
                    None => b.clone(),
                });
            }
            if dated.is_empty() {
                continue;
            }
            let staged = sink.stage(&dated);
            self.tables.insert(
                slot.name.clone(),
                Append {
                    batches: dated,
                    staged,
                },
            );
        }
        Ok(())
    }
}

impl PublishingTask {
    /// Waits for every record of the task to be acknowledged.
    async fn delivered(&mut self) -> Result<Delivered, RunError> {
        match (&mut self.handle).await {
            Ok(delivered) => delivered.map_err(RunError::from),
            // A panic while publishing is the run's, as it would be inline.
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}

/// How many of an alert stage's `batches` open an alert (`status` `firing`).
fn opened(batches: &[RecordBatch]) -> usize {
    let statuses = batches
        .iter()
        .filter_map(|b| b.column_by_name("status")?.as_string_opt::<i32>());
    statuses
        .map(|status| status.iter().filter(|s| *s == Some("firing")).count())
        .sum()
}

/// Commits `batches` with `marks` to `sink`, retrying while the store fails. After a failed
/// attempt the table's log is read again: an attempt whose commit landed although its answer
/// was lost is not repeated.
async fn commit(
    sink: &mut DeltaSink,
    name: &str,
    batches: Vec<RecordBatch>,
    mut staged: Option<Staged>,
    marks: &Marks,
    retry: &Retry,
) -> Result<CommitStats, RunError> {
    let mut attempts = retry.attempts(problem::sink(name), "delta_commit");
    let started = Instant::now();
    let stats = 'committed: loop {
        // Files written beside the stages are committed once; a retry writes the rows again.
        let outcome = match staged.take() {
            Some(staged) => sink.commit_staged(staged, batches.clone(), marks).await,
            None => sink.commit(batches.clone(), marks).await,
        };
        match outcome {
            Ok(stats) => break stats,
            Err(e) if e.is_transient() => attempts.failed(e).await?,
            Err(e) => return Err(e.into()),
        }
        // Whether the failed attempt landed, asked until the log can be read: a commit is
        // never made again blind.
        loop {
            match sink.recorded(marks).await {
                Ok(true) => {
                    tracing::info!("sink {name}: the commit of an earlier attempt went through");
                    break 'committed CommitStats {
                        version: sink.table().version().map_or(-1, |v| v as i64),
                        rows: batches.iter().map(RecordBatch::num_rows).sum(),
                        files: 0,
                        seconds: started.elapsed().as_secs_f64(),
                    };
                }
                Ok(false) => break,
                Err(e) if e.is_transient() => attempts.failed(e).await?,
                Err(e) => return Err(e.into()),
            }
        }
    };
    attempts.succeeded();
    Ok(stats)
}

/// Whether every source reaches its brokers. While one does not, Kafka is a problem on
/// `/readyz`; once that has lasted `give_up_after`, the run fails.
fn brokers_reachable(
    sources: &[SourceRuntime],
    retry: &Retry,
    down_since: &mut Option<Instant>,
) -> Result<(), RunError> {
    let unreachable = sources
        .iter()
        .find_map(|s| Some((&s.plan.name, s.unreachable.as_deref()?)));
    let Some((source, reason)) = unreachable else {
        if down_since.take().is_some()
            && let Some(lasted) = retry.clear(problem::KAFKA)
        {
            tracing::info!(
                "pipeline {}: the brokers answer again after {} s; reading on",
                retry.pipeline,
                lasted.as_secs()
            );
        }
        return Ok(());
    };
    let since = *down_since.get_or_insert_with(Instant::now);
    let reason = format!("source {source}: the brokers cannot be reached: {reason}");
    if retry.raise(problem::KAFKA, &reason) {
        tracing::warn!(
            "pipeline {}: {reason}; waiting for them (librdkafka reconnects) for up to {} s",
            retry.pipeline,
            retry.give_up_after.as_secs()
        );
    }
    if since.elapsed() >= retry.give_up_after {
        return Err(GaveUp {
            what: problem::KAFKA.into(),
            for_: since.elapsed(),
            source: reason.into(),
        }
        .into());
    }
    Ok(())
}

/// A source whose watermark stands still for `stuck_after` while its events arrive is a
/// problem on `/readyz` until it moves (or its events stop for as long): its windows do not
/// close.
fn watermark_health(s: &mut SourceRuntime, moved: bool, stuck_after: Duration, retry: &Retry) {
    let what = problem::watermark(&s.plan.name);
    if moved {
        s.watermark_moved = Instant::now();
        if retry.clear(&what).is_some() {
            tracing::info!("pipeline {}: {what} moves again", retry.pipeline);
        }
        return;
    }
    if s.pending_events > 0 {
        s.events_seen = Instant::now();
    }
    if s.events_seen.elapsed() >= stuck_after {
        // No events for as long: a watermark that stands still is what it should do.
        if retry.clear(&what).is_some() {
            tracing::info!("pipeline {}: {what}: no events arrive", retry.pipeline);
        }
        return;
    }
    let still = s.watermark_moved.elapsed();
    if still >= stuck_after {
        let reason = format!(
            "has not moved for {} s while events arrive: a partition without events (see \
             idle_timeout) or producers whose clocks lag hold it back; windows do not close",
            still.as_secs()
        );
        if retry.raise(&what, &reason) {
            tracing::warn!("pipeline {}: {what} {reason}", retry.pipeline);
        }
    }
}

/// Asks the brokers for their metadata until they answer, as a pod that starts before its
/// brokers would want: brokers that cannot be reached are waited for (`kafka` a problem on
/// `/readyz`, retried with backoff) up to `give_up_after`; refused credentials or TLS fail at
/// once.
async fn wait_for_brokers(kafka: &KafkaConnection, retry: &Retry) -> Result<(), RunError> {
    retry
        .until_ok(
            problem::KAFKA,
            "connect",
            |e| matches!(e, KafkaConfigError::Unreachable { .. }),
            || kafka.check(CONNECT_TIMEOUT),
        )
        .await
}

/// The newest checkpoint that can be read (none: the state before the first cycle), its
/// listing and reads retried while the store fails — a restart during an outage, or a worker
/// resumed after a pause whose connections went stale, waits instead of failing.
async fn restore(checkpoints: &CheckpointStore, retry: &Retry) -> Result<Checkpoint, RunError> {
    let latest: Option<Checkpoint> = retry
        .until_ok(
            problem::CHECKPOINT,
            "restore",
            CheckpointError::is_transient,
            || checkpoints.latest(),
        )
        .await?;
    Ok(latest.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::stream::BoxStream;
    use object_store::memory::InMemory;
    use object_store::path::Path;
    use object_store::{
        CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
        PutMultipartOptions, PutOptions, PutPayload, PutResult,
    };

    use super::*;

    /// An object store in memory whose next `failing` listings fail, as S3's do when it is
    /// down or a pooled connection went stale.
    #[derive(Debug, Default)]
    struct FailingLists {
        inner: InMemory,
        failing: AtomicUsize,
    }

    impl std::fmt::Display for FailingLists {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "FailingLists")
        }
    }

    #[async_trait::async_trait]
    impl ObjectStore for FailingLists {
        async fn put_opts(
            &self,
            location: &Path,
            payload: PutPayload,
            opts: PutOptions,
        ) -> object_store::Result<PutResult> {
            self.inner.put_opts(location, payload, opts).await
        }
        async fn put_multipart_opts(
            &self,
            location: &Path,
            opts: PutMultipartOptions,
        ) -> object_store::Result<Box<dyn MultipartUpload>> {
            self.inner.put_multipart_opts(location, opts).await
        }
        async fn get_opts(
            &self,
            location: &Path,
            options: GetOptions,
        ) -> object_store::Result<GetResult> {
            self.inner.get_opts(location, options).await
        }
        fn delete_stream(
            &self,
            locations: BoxStream<'static, object_store::Result<Path>>,
        ) -> BoxStream<'static, object_store::Result<Path>> {
            self.inner.delete_stream(locations)
        }
        fn list(
            &self,
            prefix: Option<&Path>,
        ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
            let fail = self
                .failing
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok();
            match fail {
                true => Box::pin(futures::stream::once(async {
                    Err(object_store::Error::Generic {
                        store: "S3",
                        source: "error sending list request: connection closed".into(),
                    })
                })),
                false => self.inner.list(prefix),
            }
        }
        async fn list_with_delimiter(
            &self,
            prefix: Option<&Path>,
        ) -> object_store::Result<ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }
        async fn copy_opts(
            &self,
            from: &Path,
            to: &Path,
            options: CopyOptions,
        ) -> object_store::Result<()> {
            self.inner.copy_opts(from, to, options).await
        }
    }

    /// A checkpoint's listing fails once, as a worker's first after a pause did: the restore
    /// waits and reads it, rather than ending the run; one that keeps failing is given up with
    /// the store's error once the run's limit is reached.
    #[tokio::test(start_paused = true)]
    async fn a_restore_rides_out_a_failed_listing_and_gives_up_on_an_outage() {
        let store = Arc::new(FailingLists::default());
        let checkpoints = CheckpointStore::over(store.clone());
        let saved = Checkpoint {
            cycle: 3,
            ..Checkpoint::default()
        };
        checkpoints.save(&saved).await.unwrap();

        let r = Retry::for_test(Duration::from_secs(30));
        store.failing.store(1, Ordering::Relaxed);
        let restored = restore(&checkpoints, &r).await.unwrap();
        assert_eq!(restored.cycle, 3);
        assert_eq!(
            r.metrics
                .total("retries_total", &[("operation", "restore")]),
            1
        );
        assert_eq!(
            r.health.report(),
            Ok(()),
            "the problem ended with the retry"
        );

        store.failing.store(usize::MAX, Ordering::Relaxed);
        let started = tokio::time::Instant::now();
        let error = restore(&checkpoints, &r).await.unwrap_err().to_string();
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        assert!(
            error.starts_with(
                "checkpoint: still failing after 30 s of retries (--give-up-after): \
                 checkpoints at test: Generic S3 error: error sending list request"
            ),
            "{error}"
        );
    }
}
