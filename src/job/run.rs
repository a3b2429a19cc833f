//! `stratus run`: a checked [`Pipeline`] running against Kafka (or a file replay), Delta Lake
//! and Kafka sinks.
//!
//! The loop works in cycles. It polls every source (see `reader`), decoding valid events into
//! Arrow and sending invalid ones to the dead-letter topic. When `commit.max_rows` events have
//! been read or `commit.max_interval` has passed (or on shutdown, or when a backfill has read
//! everything), it flushes: waits for the dead letters,
//! feeds the new rows through the stages in file order — window stages fire what the
//! watermark closed and send too-late rows to `<pipeline>.<stage>.late` — publishes Kafka sink
//! rows, then commits every Delta sink. A Delta sink fed by a source records the source
//! offsets in its commit, and the source resumes from the smallest of them on restart.
//!
//! Not yet here: open windows are not restored after a restart (they start empty; the raw
//! table holds their rows), so a window that was open at a crash is incomplete. The plan:
//! record each source's watermark as a `txn` in every Delta commit; at start, resume the
//! watermark from the smallest recorded one and rebuild window state from the raw table's rows
//! newer than `watermark - (window span + allowed lateness)`, marking windows that ended at or
//! before it as already fired; make the first cycle after a restart end exactly at the offsets
//! the furthest sink recorded (an aligned replay), so that each sink can skip the cycle it
//! already holds whole, as source-fed sinks already skip rows (`covered`).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;

use super::reader::{
    SourceRuntime, caught_up, now_us, open_source, poll_source, report_consumer_lag,
};
use crate::metrics::PipelineMetrics;
use crate::pipeline::{Pipeline, SinkTarget, StagePlan};
use crate::sink::delta::with_event_date;
use crate::sink::kafka::{KafkaSink, KafkaSinkError};
use crate::sink::{DeltaSink, DeltaSinkConfig, SinkError, SourceOffsets};
use crate::source::kafka::producer_config;
use crate::validate::TimeBounds;
use crate::window::{WindowError, WindowOperator};

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

struct StageRuntime {
    plan: StagePlan,
    op: Option<WindowOperator>,
    ctx: datafusion::prelude::SessionContext,
    /// Watermark of this stage's output (µs).
    watermark: i64,
    late: KafkaSink,
}

pub(super) enum SinkRuntime {
    Delta {
        sink: DeltaSink,
        partition_by: Vec<String>,
        /// For a sink fed by a source: per partition, the next offset it already held at start.
        /// Rows below it are not written again while the source catches up with this sink.
        covered: HashMap<i32, i64>,
    },
    Kafka(KafkaSink),
}

pub(super) struct SinkSlot {
    pub(super) name: String,
    pub(super) from: String,
    pub(super) event_time: Option<String>,
    pub(super) runtime: SinkRuntime,
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
                covered: HashMap::new(),
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
        sources.push(open_source(pipeline, plan, config, &mut sinks).await?);
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
    let mut rows_at: HashMap<String, Vec<(i32, i64)>> = HashMap::new();
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
        let cycle: SourceOffsets = s
            .pending
            .iter()
            .map(|(&p, &next)| ((s.topic.clone(), p), next))
            .collect();
        offsets.insert(s.plan.name.clone(), cycle);
        rows_at.insert(s.plan.name.clone(), std::mem::take(&mut s.rows_at));
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
        let SinkRuntime::Delta {
            sink,
            partition_by,
            covered,
        } = &mut slot.runtime
        else {
            continue;
        };
        let mut from_offsets = offsets.get(&slot.from).filter(|o| !o.is_empty()).cloned();
        let mut inputs = outputs.get(&slot.from).cloned().unwrap_or_default();
        if !covered.is_empty()
            && let (Some(next), Some(at), [batch]) = (
                from_offsets.as_mut(),
                rows_at.get(&slot.from),
                inputs.as_mut_slice(),
            )
        {
            // Replaying what this sink already holds: keep only rows past its offsets, and never
            // record offsets below them.
            let keep: arrow::array::BooleanArray = at
                .iter()
                .map(|(p, o)| Some(covered.get(p).is_none_or(|c| o >= c)))
                .collect();
            *batch = arrow::compute::filter_record_batch(batch, &keep)
                .map_err(|e| RunError::Source(slot.from.clone(), e.to_string()))?;
            let caught_up = covered
                .iter()
                .all(|(p, c)| next.iter().any(|((_, q), o)| q == p && o >= c));
            for ((_, p), o) in next.iter_mut() {
                *o = (*o).max(covered.get(p).copied().unwrap_or(0));
            }
            if caught_up {
                covered.clear();
            }
        }
        let mut batches = Vec::new();
        for b in &inputs {
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
        let stats = sink
            .commit(batches, &from_offsets.unwrap_or_default())
            .await?;
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
        for (p, next) in s.pending.drain() {
            s.position.insert(p, next);
        }
        s.pending_events = 0;
        s.decoder
            .set_time_bounds(TimeBounds::plausible(now_us(), s.max_future));
    }
    Ok(())
}
