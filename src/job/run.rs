//! `stratus run`: a checked [`Pipeline`] running against Kafka (or a file replay), Delta Lake
//! and Kafka sinks.
//!
//! The loop works in cycles. It polls every source, decoding valid events into Arrow and
//! sending invalid ones to the dead-letter topic. When `commit.max_rows` rows are pending or
//! `commit.max_interval` has passed (or on shutdown), it flushes: waits for the dead letters,
//! feeds the new rows through the stages in file order — window stages fire what the
//! watermark closed and send too-late rows to `<pipeline>.<stage>.late` — publishes Kafka sink
//! rows, then commits every Delta sink. A Delta sink fed by a source records the source
//! offsets in its commit, and the source resumes from the smallest of them on restart.
//!
//! Not yet here: open windows are not restored after a restart (they start empty; the raw
//! table holds their rows), so a window that was open at a crash is incomplete.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryFuture, FutureProducer};
use rdkafka::{Offset, TopicPartitionList};

use crate::metrics::PipelineMetrics;
use crate::pipeline::{Pipeline, SinkTarget, SourceInput, SourcePlan, StagePlan};
use crate::sink::delta::with_event_date;
use crate::sink::kafka::{KafkaSink, KafkaSinkError};
use crate::sink::{DeltaSink, DeltaSinkConfig, SinkError, SourceOffsets};
use crate::source::DeadLetter;
use crate::source::kafka::{consumer_config, producer_config};
use crate::validate::{BatchDecoder, TimeBounds};
use crate::window::{WatermarkTracker, WindowError, WindowOperator};

/// Why the pipeline stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("source {source_name}: {source}")]
    Kafka {
        source_name: String,
        source: KafkaError,
    },
    #[error("source {0}: {1}")]
    Source(String, String),
    #[error("dead-letter topic {topic}: {message}")]
    DeadLetter { topic: String, message: String },
    #[error("stage {stage}: {source}")]
    Stage { stage: String, source: WindowError },
    #[error(transparent)]
    Delta(#[from] SinkError),
    #[error(transparent)]
    KafkaSink(Box<KafkaSinkError>),
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
    /// Where relative Delta table names live: a directory or an `s3://bucket/prefix`.
    pub table_root: String,
    pub storage_options: HashMap<String, String>,
    /// Stop (after a final flush) once every source is read up to where it ended at start.
    pub until_caught_up: bool,
    /// How far in the future an event time may lie.
    pub max_future: Duration,
}

impl RunConfig {
    /// A backfill: read every source up to where it ended at start, commit, stop.
    pub fn backfill(
        brokers: &str,
        table_root: &str,
        storage_options: HashMap<String, String>,
    ) -> Self {
        RunConfig {
            brokers: brokers.to_string(),
            table_root: table_root.to_string(),
            storage_options,
            until_caught_up: true,
            max_future: Duration::from_secs(300),
        }
    }
}

/// Runs `pipeline` as configured with its own metrics and no shutdown signal: for backfills,
/// the demo, benchmarks and tests.
pub async fn run_to_end(pipeline: &Pipeline, config: &RunConfig) -> Result<RunSummary, RunError> {
    let ready = Arc::new(AtomicBool::new(false));
    run_pipeline(
        pipeline,
        config,
        PipelineMetrics::new(),
        ready,
        std::future::pending(),
    )
    .await
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq)]
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
}

enum Reader {
    Kafka {
        consumer: BaseConsumer,
        topic: String,
        /// Offsets to reach before the source counts as caught up.
        targets: HashMap<i32, i64>,
    },
    File {
        path: String,
        /// Streamed a line at a time: a backfill file can be larger than memory.
        lines: std::io::BufReader<std::fs::File>,
        /// The next line number, which is the next offset.
        next: i64,
        eof: bool,
    },
    /// Only while the reader is borrowed out during a poll.
    Empty,
}

struct SourceRuntime {
    plan: SourcePlan,
    reader: Reader,
    decoder: BatchDecoder,
    watermark: WatermarkTracker,
    /// Next offset to read per partition, consumed but not yet committed.
    pending: SourceOffsets,
    /// Events consumed since the last flush.
    pending_events: usize,
    /// Next offset per partition, as of the last commit or start.
    position: HashMap<i32, i64>,
    dead_letters: Vec<DeliveryFuture>,
    /// µs an event time may lie ahead of the clock.
    max_future: i64,
    /// When the consumer lag was last measured.
    lag_checked: Option<Instant>,
}

struct StageRuntime {
    plan: StagePlan,
    op: Option<WindowOperator>,
    ctx: datafusion::prelude::SessionContext,
    /// Watermark of this stage's output (µs).
    watermark: i64,
    late: KafkaSink,
}

enum SinkRuntime {
    Delta {
        sink: DeltaSink,
        partition_by: Vec<String>,
    },
    Kafka(KafkaSink),
}

struct SinkSlot {
    name: String,
    from: String,
    event_time: Option<String>,
    runtime: SinkRuntime,
}

const POLL: Duration = Duration::from_millis(50);
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

fn table_location(root: &str, table: &str) -> String {
    if table.contains("://") || table.starts_with('/') {
        table.to_string()
    } else {
        format!("{}/{table}", root.trim_end_matches('/'))
    }
}

/// Runs `pipeline` until `shutdown` completes (then flushes and returns) or, with
/// `until_caught_up`, until every source is consumed.
pub async fn run_pipeline(
    pipeline: &Pipeline,
    config: &RunConfig,
    metrics: PipelineMetrics,
    ready: Arc<AtomicBool>,
    shutdown: impl Future<Output = ()>,
) -> Result<RunSummary, RunError> {
    let producer: FutureProducer = producer_config(&config.brokers)
        .create()
        .map_err(|source| RunError::Kafka {
            source_name: "producer".into(),
            source,
        })?;

    let mut sinks = Vec::new();
    for s in &pipeline.sinks {
        let runtime = match &s.target {
            SinkTarget::Delta {
                table,
                partition_by,
            } => SinkRuntime::Delta {
                sink: DeltaSink::open(DeltaSinkConfig {
                    location: table_location(&config.table_root, table),
                    partition_columns: partition_by.clone(),
                    pipeline: pipeline.name.clone(),
                    checkpoint_interval: pipeline.checkpoint_every,
                    storage_options: config.storage_options.clone(),
                })
                .await?,
                partition_by: partition_by.clone(),
            },
            SinkTarget::Kafka { topic, key } => SinkRuntime::Kafka(KafkaSink::new(
                &s.name,
                topic,
                key.clone(),
                producer.clone(),
            )),
        };
        sinks.push(SinkSlot {
            name: s.name.clone(),
            from: s.from.clone(),
            event_time: s.event_time.clone(),
            runtime,
        });
    }

    let mut sources = Vec::new();
    for plan in &pipeline.sources {
        sources.push(open_source(pipeline, plan, config, &sinks).await?);
    }
    let mut stages = Vec::new();
    for plan in &pipeline.stages {
        let ctx = crate::sql::session_context();
        let op = match plan.query.window {
            None => None,
            Some(_) => {
                let upstream = pipeline
                    .stages
                    .iter()
                    .find(|s| s.name == plan.query.input && s.query.window.is_some())
                    .map(|s| {
                        let mut keys = s.query.keys.clone();
                        keys.push("window_start".into());
                        keys
                    });
                Some(
                    WindowOperator::new(
                        plan.query.clone(),
                        &plan.event_time,
                        plan.allowed_lateness,
                        plan.input_schema.clone(),
                        ctx.clone(),
                        upstream,
                    )
                    .map_err(|source| RunError::Stage {
                        stage: plan.name.clone(),
                        source,
                    })?,
                )
            }
        };
        let late_topic = format!("{}.{}.late", pipeline.name, plan.name);
        stages.push(StageRuntime {
            plan: plan.clone(),
            op,
            ctx,
            watermark: i64::MIN,
            late: KafkaSink::new(&late_topic, &late_topic, Vec::new(), producer.clone()),
        });
    }

    ready.store(true, Ordering::Relaxed);
    let mut summary = RunSummary::default();
    let mut last_flush = Instant::now();
    tokio::pin!(shutdown);
    loop {
        let stopping = tokio::select! {
            biased;
            () = &mut shutdown => true,
            () = tokio::task::yield_now() => false,
        };
        let mut pending = 0;
        for s in sources.iter_mut() {
            let room = pipeline.max_rows.saturating_sub(s.pending_events);
            poll_source(pipeline, s, &producer, &metrics, &mut summary, room)?;
            pending += s.pending_events;
        }
        let caught_up = sources.iter().all(caught_up);
        // A cycle closes after exactly `max_rows` events (valid or not) while data flows, so
        // cycle boundaries — and with them watermarks and lateness — follow the offsets.
        let due = pending >= pipeline.max_rows
            || last_flush.elapsed().as_micros() as i64 >= pipeline.max_interval;
        // A backfill flushes as soon as it has read everything; a stream keeps to the limits,
        // so a trickle of events does not become a stream of tiny commits.
        let drained = config.until_caught_up && caught_up;
        if due || stopping || drained {
            flush(
                pipeline,
                &mut sources,
                &mut stages,
                &mut sinks,
                &metrics,
                &mut summary,
            )
            .await?;
            last_flush = Instant::now();
        }
        if stopping || drained {
            return Ok(summary);
        }
    }
}

async fn open_source(
    pipeline: &Pipeline,
    plan: &SourcePlan,
    config: &RunConfig,
    sinks: &[SinkSlot],
) -> Result<SourceRuntime, RunError> {
    let kafka_err = |source| RunError::Kafka {
        source_name: plan.name.clone(),
        source,
    };
    // Resume from the smallest next offset any Delta sink of this source recorded.
    let (topic, partitions) = match &plan.input {
        SourceInput::Kafka { topic, group } => {
            let consumer: BaseConsumer = consumer_config(&config.brokers, group)
                .create()
                .map_err(kafka_err)?;
            let metadata = tokio::task::block_in_place(|| {
                consumer.fetch_metadata(Some(topic), METADATA_TIMEOUT)
            })
            .map_err(kafka_err)?;
            let partitions: Vec<i32> = metadata
                .topics()
                .iter()
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect();
            if partitions.is_empty() {
                return Err(RunError::Source(
                    plan.name.clone(),
                    format!("topic {topic} does not exist or has no partitions; create it first"),
                ));
            }
            (topic.clone(), partitions)
        }
        SourceInput::File { path } => (path.display().to_string(), vec![0]),
    };
    let mut position: HashMap<i32, i64> = partitions.iter().map(|&p| (p, i64::MAX)).collect();
    let mut any_delta = false;
    for slot in sinks.iter().filter(|s| s.from == plan.name) {
        if let SinkRuntime::Delta { sink, .. } = &slot.runtime {
            any_delta = true;
            let recorded = sink.resume_offsets(&topic, &partitions).await?;
            for (p, next) in position.iter_mut() {
                *next = (*next).min(recorded.get(p).copied().unwrap_or(0));
            }
        }
    }
    if !any_delta {
        position.values_mut().for_each(|v| *v = 0);
    }
    let reader = match &plan.input {
        SourceInput::Kafka { group, .. } => {
            let consumer: BaseConsumer = consumer_config(&config.brokers, group)
                .create()
                .map_err(kafka_err)?;
            let mut assignment = TopicPartitionList::new();
            let mut targets = HashMap::new();
            for &p in &partitions {
                let next = position[&p];
                let offset = if next == 0 {
                    Offset::Beginning
                } else {
                    Offset::Offset(next)
                };
                assignment
                    .add_partition_offset(&topic, p, offset)
                    .map_err(kafka_err)?;
                let (_, high) = tokio::task::block_in_place(|| {
                    consumer.fetch_watermarks(&topic, p, METADATA_TIMEOUT)
                })
                .map_err(kafka_err)?;
                targets.insert(p, high);
            }
            consumer.assign(&assignment).map_err(kafka_err)?;
            Reader::Kafka {
                consumer,
                topic: topic.clone(),
                targets,
            }
        }
        SourceInput::File { path } => {
            let open = std::fs::File::open(path).map_err(|e| {
                RunError::Source(
                    plan.name.clone(),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            let mut lines = std::io::BufReader::new(open);
            // Skip what the tables already hold.
            let skip = position[&0];
            let mut buf = Vec::new();
            let mut next = 0;
            let mut eof = false;
            while next < skip {
                buf.clear();
                match std::io::BufRead::read_until(&mut lines, b'\n', &mut buf) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(_) => next += 1,
                    Err(e) => return Err(RunError::Source(plan.name.clone(), e.to_string())),
                }
            }
            Reader::File {
                path: topic.clone(),
                lines,
                next,
                eof,
            }
        }
    };
    let max_future = config.max_future.as_micros() as i64;
    Ok(SourceRuntime {
        decoder: BatchDecoder::new(
            plan.schema.clone(),
            TimeBounds::plausible(now_us(), max_future),
            pipeline.max_rows.min(1 << 16),
        )
        .with_event_time(&plan.event_time),
        max_future,
        lag_checked: None,
        watermark: WatermarkTracker::new(plan.max_out_of_orderness, plan.idle_timeout),
        plan: plan.clone(),
        reader,
        pending: HashMap::new(),
        pending_events: 0,
        position,
        dead_letters: Vec::new(),
    })
}

const LAG_INTERVAL: Duration = Duration::from_secs(5);

/// Sets `consumer_lag` per partition (high watermark minus next offset), every few seconds: each
/// measurement asks the broker.
fn report_consumer_lag(pipeline: &Pipeline, s: &mut SourceRuntime, metrics: &PipelineMetrics) {
    if s.lag_checked.is_some_and(|t| t.elapsed() < LAG_INTERVAL) {
        return;
    }
    s.lag_checked = Some(Instant::now());
    let Reader::Kafka {
        consumer,
        topic,
        targets,
    } = &s.reader
    else {
        return;
    };
    for &p in targets.keys() {
        let high =
            tokio::task::block_in_place(|| consumer.fetch_watermarks(topic, p, METADATA_TIMEOUT));
        match high {
            Ok((_, high)) => {
                let next = s
                    .pending
                    .get(&(topic.clone(), p))
                    .or(s.position.get(&p))
                    .copied()
                    .unwrap_or(0);
                metrics
                    .consumer_lag
                    .with_label_values(&[
                        pipeline.name.as_str(),
                        s.plan.name.as_str(),
                        &p.to_string(),
                    ])
                    .set((high - next).max(0));
            }
            Err(e) => tracing::warn!(
                "source {}: cannot read the watermarks of partition {p}: {e}",
                s.plan.name
            ),
        }
    }
}

/// Whether the source has been read (not necessarily committed) up to where it ended at start.
fn caught_up(s: &SourceRuntime) -> bool {
    match &s.reader {
        Reader::Kafka { topic, targets, .. } => targets.iter().all(|(p, &t)| {
            let read = s.pending.get(&(topic.clone(), *p)).or(s.position.get(p));
            t <= 0 || read.is_some_and(|&o| o >= t)
        }),
        Reader::File { eof, .. } => *eof,
        Reader::Empty => false,
    }
}

impl SourceRuntime {
    /// Decodes one event; an invalid one goes to the dead-letter topic. Records the offset and,
    /// for a valid event, its event time for the watermark.
    #[allow(clippy::too_many_arguments)]
    fn accept(
        &mut self,
        producer: &FutureProducer,
        summary: &mut RunSummary,
        invalid: &prometheus::IntCounter,
        topic: &str,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        payload: &[u8],
        now: i64,
    ) -> Result<(), RunError> {
        summary.events += 1;
        match self.decoder.decode(payload) {
            Ok(()) => {
                if let Some(t) = self.decoder.last_event_time() {
                    self.watermark.observe(partition, t, now);
                }
            }
            Err(e) => {
                invalid.inc();
                summary.invalid += 1;
                let letter = DeadLetter {
                    key,
                    payload,
                    topic,
                    partition,
                    offset,
                    reason: e.to_string(),
                    time_ms: now / 1000,
                };
                match producer.send_result(letter.record(&self.plan.dead_letter_topic)) {
                    Ok(d) => self.dead_letters.push(d),
                    Err((e, _)) => {
                        return Err(RunError::DeadLetter {
                            topic: self.plan.dead_letter_topic.clone(),
                            message: e.to_string(),
                        });
                    }
                }
            }
        }
        self.pending
            .insert((topic.to_string(), partition), offset + 1);
        self.pending_events += 1;
        Ok(())
    }
}

/// Reads what is available (up to one poll interval, at most `max_rows` events).
fn poll_source(
    pipeline: &Pipeline,
    s: &mut SourceRuntime,
    producer: &FutureProducer,
    metrics: &PipelineMetrics,
    summary: &mut RunSummary,
    max_rows: usize,
) -> Result<(), RunError> {
    let source_name = s.plan.name.clone();
    let labels = [pipeline.name.as_str(), source_name.as_str()];
    let invalid = metrics.events_invalid.with_label_values(&labels);
    let now = now_us();
    let before = summary.events;
    // Take the reader out so that `accept` may borrow the rest of the source mutably.
    let mut reader = std::mem::replace(&mut s.reader, Reader::Empty);
    // One blocking section for the whole read: librdkafka's poll blocks the thread.
    let result = tokio::task::block_in_place(|| {
        match &mut reader {
            Reader::Kafka {
                consumer, topic, ..
            } => {
                for _ in 0..max_rows {
                    let m = match consumer.poll(POLL) {
                        None => break,
                        Some(Err(source)) => {
                            return Err(RunError::Kafka {
                                source_name: s.plan.name.clone(),
                                source,
                            });
                        }
                        Some(Ok(m)) => m,
                    };
                    let payload = m.payload().unwrap_or_default();
                    s.accept(
                        producer,
                        summary,
                        &invalid,
                        topic,
                        m.partition(),
                        m.offset(),
                        m.key(),
                        payload,
                        now,
                    )?;
                }
            }
            Reader::File {
                path,
                lines,
                next,
                eof,
            } => {
                let mut buf = Vec::with_capacity(512);
                for _ in 0..max_rows {
                    buf.clear();
                    let read = std::io::BufRead::read_until(lines, b'\n', &mut buf)
                        .map_err(|e| RunError::Source(s.plan.name.clone(), e.to_string()))?;
                    if read == 0 {
                        *eof = true;
                        break;
                    }
                    let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
                    if line.iter().all(u8::is_ascii_whitespace) {
                        // Not an event; only its offset is recorded.
                        s.pending.insert((path.clone(), 0), *next + 1);
                    } else {
                        s.accept(producer, summary, &invalid, path, 0, *next, None, line, now)?;
                    }
                    *next += 1;
                }
            }
            Reader::Empty => {}
        }
        Ok(())
    });
    s.reader = reader;
    metrics
        .events_in
        .with_label_values(&labels)
        .inc_by(summary.events - before);
    result
}

async fn flush(
    pipeline: &Pipeline,
    sources: &mut [SourceRuntime],
    stages: &mut [StageRuntime],
    sinks: &mut [SinkSlot],
    metrics: &PipelineMetrics,
    summary: &mut RunSummary,
) -> Result<(), RunError> {
    summary.cycles += 1;
    let now = now_us();
    let mut outputs: HashMap<String, Vec<RecordBatch>> = HashMap::new();
    let mut watermarks: HashMap<String, i64> = HashMap::new();
    let mut offsets: HashMap<String, SourceOffsets> = HashMap::new();
    for s in sources.iter_mut() {
        for d in s.dead_letters.drain(..) {
            let failed = match d.await {
                Ok(Ok(_)) => None,
                Ok(Err((e, _))) => Some(e.to_string()),
                Err(_) => Some("the producer was dropped".to_string()),
            };
            if let Some(message) = failed {
                return Err(RunError::DeadLetter {
                    topic: s.plan.dead_letter_topic.clone(),
                    message,
                });
            }
        }
        let batch = s
            .decoder
            .flush()
            .map_err(|e| RunError::Source(s.plan.name.clone(), e.to_string()))?;
        let w = s.watermark.watermark(now);
        metrics
            .watermark_lag_seconds
            .with_label_values(&[pipeline.name.as_str(), s.plan.name.as_str()])
            .set(if w == i64::MIN {
                0.0
            } else {
                (now - w) as f64 / 1e6
            });
        watermarks.insert(s.plan.name.clone(), w);
        outputs.insert(s.plan.name.clone(), vec![batch]);
        offsets.insert(s.plan.name.clone(), s.pending.clone());
    }

    let fired_at = Instant::now();
    let mut fired: Vec<String> = Vec::new();
    for st in stages.iter_mut() {
        let inputs = outputs
            .get(&st.plan.query.input)
            .cloned()
            .unwrap_or_default();
        let input_watermark = watermarks
            .get(&st.plan.query.input)
            .copied()
            .unwrap_or(i64::MIN);
        let stage_err = |source| RunError::Stage {
            stage: st.plan.name.clone(),
            source,
        };
        let mut results = Vec::new();
        match &mut st.op {
            Some(op) => {
                for b in inputs.iter().filter(|b| b.num_rows() > 0) {
                    if let Some(late) = op.process(b).map_err(stage_err)? {
                        summary.late += late.num_rows() as u64;
                        metrics
                            .events_late
                            .with_label_values(&[pipeline.name.as_str(), st.plan.name.as_str()])
                            .inc_by(late.num_rows() as u64);
                        st.late.send(&late).await?;
                    }
                }
                results = op.advance(input_watermark).await.map_err(stage_err)?;
                if !results.is_empty() {
                    fired.push(st.plan.name.clone());
                }
                let span = st.plan.query.window.map_or(0, |w| w.span());
                st.watermark = op.watermark().saturating_sub(span);
            }
            None => {
                for b in inputs.into_iter().filter(|b| b.num_rows() > 0) {
                    st.ctx
                        .deregister_table(st.plan.query.input.as_str())
                        .map_err(|e| stage_err(e.into()))?;
                    st.ctx
                        .register_batch(st.plan.query.input.as_str(), b)
                        .map_err(|e| stage_err(e.into()))?;
                    let df = st
                        .ctx
                        .sql(&st.plan.query.sql)
                        .await
                        .map_err(|e| stage_err(e.into()))?;
                    results.extend(df.collect().await.map_err(|e| stage_err(e.into()))?);
                }
                st.watermark = input_watermark;
            }
        }
        let rows: usize = results.iter().map(RecordBatch::num_rows).sum();
        *summary.stage_rows.entry(st.plan.name.clone()).or_default() += rows as u64;
        watermarks.insert(st.plan.name.clone(), st.watermark);
        outputs.insert(st.plan.name.clone(), results);
    }

    // Kafka first: a Delta commit (which advances the offsets) must not precede the records.
    for slot in sinks.iter() {
        if let SinkRuntime::Kafka(k) = &slot.runtime {
            for b in outputs.get(&slot.from).into_iter().flatten() {
                if b.num_rows() > 0 {
                    let n = k.send(b).await?;
                    metrics
                        .rows_out
                        .with_label_values(&[pipeline.name.as_str(), slot.name.as_str()])
                        .inc_by(n as u64);
                }
            }
        }
    }
    for slot in sinks.iter_mut() {
        let SinkRuntime::Delta { sink, partition_by } = &mut slot.runtime else {
            continue;
        };
        let from_offsets = offsets.get(&slot.from).filter(|o| !o.is_empty());
        let mut batches = Vec::new();
        for b in outputs.get(&slot.from).into_iter().flatten() {
            if b.num_rows() == 0 {
                continue;
            }
            let needs_date = partition_by.iter().any(|p| p == "date")
                && b.schema().field_with_name("date").is_err();
            batches.push(match (&slot.event_time, needs_date) {
                (Some(ts), true) => with_event_date(b, ts)?,
                _ => b.clone(),
            });
        }
        if batches.is_empty() && from_offsets.is_none() {
            continue;
        }
        let empty = SourceOffsets::new();
        let stats = sink.commit(batches, from_offsets.unwrap_or(&empty)).await?;
        let labels = [pipeline.name.as_str(), slot.name.as_str()];
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
    for stage in fired {
        let seconds = fired_at.elapsed().as_secs_f64();
        summary.window_latencies.push(seconds);
        metrics
            .window_flush_seconds
            .with_label_values(&[pipeline.name.as_str(), stage.as_str()])
            .observe(seconds);
    }
    for s in sources.iter_mut() {
        report_consumer_lag(pipeline, s, metrics);
        for ((_, p), next) in s.pending.drain() {
            s.position.insert(p, next);
        }
        s.pending_events = 0;
        s.decoder
            .set_time_bounds(TimeBounds::plausible(now_us(), s.max_future));
    }
    Ok(())
}
