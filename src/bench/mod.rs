//! `stratus bench`: the cloud-metrics pipeline's throughput, latency and memory, beside two
//! baselines measured in the same run.
//!
//! 1. Loads N generated `cloud.metrics` events for K resources into a fresh Kafka topic (and
//!    the same events into a JSON-lines file).
//! 2. Baseline: rdkafka alone consumes the topic (no decoding) — the ceiling.
//! 3. The pipeline over the topic: events/s, p50/p99 window latency (from the watermark
//!    passing a window's end to its results being committed to Delta and the output topic),
//!    and peak RSS.
//! 4. Baseline: rdkafka alone publishes the records the pipeline published to its topic again
//!    (read back and sent to a fresh topic with the Kafka sinks' producer settings) — what the
//!    broker and librdkafka cost them, without the pipeline.
//! 5. Baseline: the pipeline over the file (no Kafka) — the engine's own rate.
//! 6. Planning: a SQL stage's query planned once and run per batch, as stages run it, against
//!    planning it again for every batch, as they did before (`sql::compiled`).
//!
//! Each pipeline run is a process of its own (this binary, `bench --run-pipeline FILE`), as
//! `stratus run` would be, so its peak RSS (`VmHWM`) is its own: not the loader's or the
//! other run's memory that an allocator kept. It reports its [`RunSummary`] as a JSON line.
//!
//! The events end at a fixed offset after a 5-minute boundary, so every run closes the same
//! windows. Tables go to a temporary local directory; output to stdout as a table.
//!
//! [`soak`] runs the same pipeline over days of event time instead: what a day costs, day
//! after day; [`rate`] reads it live at a steady rate: from a window's close to its results;
//! [`cluster`] runs it as 1, 2, 3… worker processes. [`commit`] times one Delta append as the
//! table's log grows.

pub mod cluster;
pub mod commit;
pub mod rate;
pub mod soak;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arrow::error::ArrowError;
use datafusion::error::DataFusionError;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{
    BaseRecord, FutureProducer, FutureRecord, Producer, ProducerContext, ThreadedProducer,
};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crate::demo::events::metric_events;
use crate::job::memory::{Resident, restart_peak};
use crate::job::run::{RunConfig, RunError, RunSummary, run_pipeline};
use crate::kafka::{consumer_config, producer_config};
use crate::metrics::PipelineMetrics;
use crate::metrics::health::Health;
use crate::pipeline::{Diagnostics, Pipeline};
use crate::say;
use crate::validate::{DecodeError, SchemaError};

/// Why the bench stopped. Where it says what the bench was doing (`creating …`, `starting the
/// pipeline run`), the error it met is the [`source`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("creating {}", path.display())]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error("creating topic {topic}: {source}")]
    CreateTopic {
        topic: String,
        source: RDKafkaErrorCode,
    },
    #[error("loading the topic: {0}")]
    Load(KafkaError),
    #[error("the raw consumer stalled at {consumed} of {events} events")]
    Stalled { consumed: usize, events: usize },
    #[error(
        "publishing the pipeline's records again: {message}; the figure would not be the \
         broker's: run the bench again once Kafka answers"
    )]
    Republish { message: String },
    /// The bench pipeline file does not validate.
    #[error(transparent)]
    Pipeline(#[from] Diagnostics),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("Delta table {table}: {source}")]
    Delta {
        table: String,
        source: Box<deltalake::DeltaTableError>,
    },
    #[error(transparent)]
    Sink(#[from] crate::sink::delta::SinkError),
    #[error("starting the pipeline run")]
    Start(#[source] std::io::Error),
    #[error("the pipeline run of {} failed ({status}); its errors are above", file.display())]
    RunFailed {
        file: PathBuf,
        status: std::process::ExitStatus,
    },
    #[error("reading the report of the pipeline run: {line:?}")]
    Report {
        line: String,
        source: serde_json::Error,
    },
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Arrow(#[from] ArrowError),
    #[error(transparent)]
    Sql(#[from] DataFusionError),
    /// The query planned per batch and the one planned once gave different row counts.
    #[error("the two ways gave different rows")]
    Mismatch { replanned: usize, compiled: usize },
}

pub type Result<T, E = BenchError> = std::result::Result<T, E>;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub brokers: String,
    pub events: usize,
    pub keys: usize,
    pub partitions: i32,
    /// Events per cycle (`commit.max_rows`).
    pub max_rows: usize,
    /// Each pipeline run's `--memory-limit`.
    pub memory_limit: String,
    /// The repository root (for the schema and SQL files).
    pub root: PathBuf,
    pub work_dir: PathBuf,
}

/// This process's resident set in MiB: now, and its peak since start or since
/// [`reset_peak_rss`]; NaN where `/proc` cannot tell.
fn rss_mib() -> (f64, f64) {
    let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
    Resident::of(None).map_or((f64::NAN, f64::NAN), |r| (mib(r.now), mib(r.peak)))
}

/// The peak resident set size of this process so far, in MiB.
fn peak_rss_mib() -> f64 {
    rss_mib().1
}

/// Starts a new peak, so that each measurement reports its own. Returns the resident set size
/// it starts from, in MiB.
fn reset_peak_rss() -> f64 {
    if !restart_peak() {
        say!("cannot reset the peak RSS (/proc/self/clear_refs); peaks are cumulative");
    }
    rss_mib().0
}

/// Creates `topic` with `partitions`.
async fn create_topic(brokers: &str, topic: &str, partitions: i32) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    for r in admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await?
    {
        r.map_err(|(topic, source)| BenchError::CreateTopic { topic, source })?;
    }
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// The bench pipeline's event-time settings, in the pipeline file's words.
#[derive(Debug, Clone, Copy)]
struct EventTime {
    max_out_of_orderness: &'static str,
    allowed_lateness: &'static str,
}

/// For the 1- and 5-minute windows: the watermark 10 s behind the newest event, a minute of
/// lateness.
const MINUTE_WINDOWS: EventTime = EventTime {
    max_out_of_orderness: "10s",
    allowed_lateness: "1m",
};

/// The bench pipeline over `source`: cycles of exactly `max_rows` events (its byte limit lies
/// past them), its window stages' SQL from `sql` (the repository's `sql/`, or shorter windows
/// with `time` scaled as they are).
fn pipeline_yaml(
    root: &Path,
    sql: &Path,
    name: &str,
    source: &str,
    max_rows: usize,
    time: EventTime,
) -> String {
    let (root, sql) = (root.display(), sql.display());
    let EventTime {
        max_out_of_orderness,
        allowed_lateness,
    } = time;
    format!(
        r#"name: {name}
sources:
  metrics:
    {source}
    schema: {root}/schemas/cloud.metrics.json
    event_time: {{field: ts, max_out_of_orderness: {max_out_of_orderness}, allowed_lateness: {allowed_lateness}, idle_timeout: 30s}}
stages:
  features_1m: {{sql: {sql}/cloud_metrics_1m.sql, carry: {{columns: [mean, p95], baseline: 24h}}}}
  features_5m: {{sql: {sql}/cloud_metrics_5m.sql, carry: {{columns: [mean, max], baseline: 24h}}}}
sinks:
  raw: {{from: metrics, delta: {{table: raw_metrics, partition_by: [date]}}}}
  features_1m: {{from: features_1m, delta: {{table: features_1m, partition_by: [date]}}}}
  features_5m: {{from: features_5m, delta: {{table: features_5m, partition_by: [date]}}}}
  features_1m_topic: {{from: features_1m, kafka: {{topic: {name}.features_1m, key: [resource_id, metric]}}}}
commit: {{max_rows: {max_rows}, max_bytes: 1GiB, max_interval: 1s}}
"#
    )
}

/// What a pipeline run reports to the bench: its summary, its seconds from start to the last
/// commit, its peak RSS, and its events/s over each tenth of its events (steady, or slowing as
/// it goes).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct RunReport {
    pub summary: RunSummary,
    pub seconds: f64,
    /// `None` where `/proc/self/status` cannot be read.
    pub peak_rss_mib: Option<f64>,
    #[serde(default)]
    pub tenths: Vec<f64>,
    /// Window firings while the first tenth of the events was read (a live run's start).
    #[serde(default)]
    pub warmup_firings: usize,
    /// The process's CPU time, user and system, all threads (librdkafka's too); `None` where
    /// `/proc/self/stat` cannot be read.
    #[serde(default)]
    pub cpu_seconds: Option<f64>,
}

impl RunReport {
    /// Its CPU time and `events` per CPU-second, as the benches print them.
    fn cpu_text(&self, events: u64) -> String {
        self.cpu_seconds.map_or("n/a".to_string(), |c| {
            format!("{c:.2} s ({:.0} events per CPU-second)", events as f64 / c)
        })
    }
}

/// This process's CPU time so far, user and system, in seconds (`/proc/self/stat`, in the
/// kernel's fixed 100 ticks a second).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Past the command's name (in parentheses, which may hold spaces): state is field 3,
    // utime 14 and stime 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some((ticks(14)? + ticks(15)?) as f64 / 100.0)
}

/// The child's side of a measurement: runs the pipeline file to the end (a backfill of
/// `events`) — or, `live`, as `stratus run` runs it, until it has read `events` — into tables
/// beside it (the file's path without `.yaml`) or under `<table_root>/<its name>`, and prints
/// a [`RunReport`] as one JSON line on stdout.
pub async fn run_pipeline_file(
    brokers: &str,
    file: &Path,
    events: usize,
    live: bool,
    memory: std::sync::Arc<crate::job::memory::MemoryLimit>,
    table_root: Option<&str>,
) -> Result<()> {
    let pipeline = Pipeline::load(file).await?;
    let (tables, options) = match table_root {
        Some(root) => (
            format!("{}/{}", root.trim_end_matches('/'), pipeline.name),
            crate::sink::storage_options_from_env(),
        ),
        None => (
            file.with_extension("").display().to_string(),
            HashMap::new(),
        ),
    };
    let mut run = RunConfig::backfill(brokers, &tables, options);
    run.until_caught_up = !live;
    run.memory = memory;
    let started = Instant::now();
    let mut tenths = Vec::new();
    let tenth = (events as u64 / 10).max(1);
    let mut warmup_firings = 0;
    let stop_after = live.then_some(events as u64);
    let summary = run_marking(&pipeline, &run, tenth, stop_after, |n, took, metrics| {
        tenths.push(tenth as f64 / took.as_secs_f64());
        if n == 1 {
            warmup_firings = pipeline
                .stages
                .iter()
                .map(|s| {
                    metrics
                        .window_flush_seconds
                        .with_label_values(&[pipeline.name.as_str(), s.name.as_str()])
                        .get_sample_count() as usize
                })
                .sum();
        }
        Ok(())
    })
    .await?;
    let report = RunReport {
        summary,
        seconds: started.elapsed().as_secs_f64(),
        // The limit starts a new peak each cycle it measures: it keeps the highest.
        peak_rss_mib: run.memory.peak().map(|b| b as f64 / (1 << 20) as f64),
        tenths,
        warmup_firings,
        cpu_seconds: cpu_seconds(),
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// Runs `pipeline` to the end (or until it has read `stop_after` events) with metrics of its
/// own and calls `mark(n, took, metrics)` each time the events read pass another multiple `n`
/// of `every` (seen every 20 ms: as a cycle's reading ends), `took` the time since the mark
/// before — shared evenly among the marks one look passes at once (a cycle read many of them).
async fn run_marking(
    pipeline: &Pipeline,
    config: &RunConfig,
    every: u64,
    stop_after: Option<u64>,
    mut mark: impl FnMut(u64, Duration, &PipelineMetrics) -> Result<()>,
) -> Result<RunSummary> {
    let metrics = PipelineMetrics::new();
    let read = || -> u64 {
        pipeline
            .sources
            .iter()
            .map(|s| {
                metrics
                    .events_in
                    .with_label_values(&[pipeline.name.as_str(), s.name.as_str()])
                    .get()
            })
            .sum()
    };
    let stop = tokio::sync::Notify::new();
    let run = run_pipeline(
        pipeline,
        config,
        metrics.clone(),
        Health::new(),
        stop.notified(),
    );
    tokio::pin!(run);
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut next = 1;
    let mut last = Instant::now();
    let mut look = |next: &mut u64| -> Result<()> {
        let passed = (read() / every + 1).saturating_sub(*next);
        if passed == 0 {
            return Ok(());
        }
        let took = last.elapsed() / passed as u32;
        last = Instant::now();
        for _ in 0..passed {
            mark(*next, took, &metrics)?;
            *next += 1;
        }
        Ok(())
    };
    let summary = loop {
        tokio::select! {
            done = &mut run => break done?,
            _ = tick.tick() => {
                look(&mut next)?;
                if stop_after.is_some_and(|n| read() >= n) {
                    stop.notify_one();
                }
            }
        }
    };
    look(&mut next)?;
    Ok(summary)
}

/// Runs the bench pipeline over `source` in a process of its own and returns its report.
async fn run_once(config: &BenchConfig, name: &str, source: &str) -> Result<RunReport> {
    let file = config.work_dir.join(format!("{name}.yaml"));
    std::fs::write(
        &file,
        pipeline_yaml(
            &config.root,
            &config.root.join("sql"),
            name,
            source,
            config.max_rows,
            MINUTE_WINDOWS,
        ),
    )?;
    let out = tokio::process::Command::new(std::env::current_exe()?)
        .args(["bench", "--brokers", &config.brokers, "--events"])
        .arg(config.events.to_string())
        .arg("--run-pipeline")
        .arg(&file)
        .args(["--memory-limit", &config.memory_limit])
        // Its report on stdout; its log and errors on this process's stderr (tokio's
        // `output()` would capture both).
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .map_err(BenchError::Start)?
        .wait_with_output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(BenchError::RunFailed {
            file,
            status: out.status,
        });
    }
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).map_err(|source| BenchError::Report {
        line: line.to_string(),
        source,
    })
}

/// Records sent again, and the seconds from the first read to the last acknowledgement.
#[derive(Debug)]
pub struct Republished {
    pub records: u64,
    pub seconds: f64,
}

/// Counts the deliveries that failed.
#[derive(Default)]
struct FailedDeliveries(std::sync::atomic::AtomicU64);

impl ClientContext for FailedDeliveries {}

impl ProducerContext for FailedDeliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_err() {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// rdkafka alone, publishing what a pipeline published: reads the `records` records of topic
/// `from` from its start and sends each (key, value and headers) to the fresh topic `to`, of
/// as many partitions, with the Kafka sinks' producer settings, until every one is
/// acknowledged. What the broker and librdkafka cost the records, without the pipeline.
pub async fn produce_again(
    brokers: &str,
    from: &str,
    to: &str,
    records: u64,
) -> Result<Republished> {
    let consumer: BaseConsumer = consumer_config(brokers, &format!("{to}-reader")).create()?;
    let metadata = consumer.fetch_metadata(Some(from), Duration::from_secs(10))?;
    let partitions = metadata
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len() as i32);
    create_topic(brokers, to, partitions.max(1)).await?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(from, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let producer: ThreadedProducer<FailedDeliveries> =
        producer_config(brokers).create_with_context(FailedDeliveries::default())?;
    tokio::task::block_in_place(|| {
        let mut started = None;
        let mut sent = 0;
        while sent < records {
            let Some(m) = consumer.poll(Duration::from_secs(10)) else {
                return Err(BenchError::Republish {
                    message: format!(
                        "{from} gave {sent} of its {records} records, then none for 10 s"
                    ),
                });
            };
            let m = m?;
            started.get_or_insert_with(Instant::now);
            let mut record = BaseRecord::to(to);
            if let Some(key) = m.key() {
                record = record.key(key);
            }
            if let Some(value) = m.payload() {
                record = record.payload(value);
            }
            if let Some(headers) = m.headers() {
                record = record.headers(headers.detach());
            }
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err((e, _)) => return Err(BenchError::Kafka(e)),
                }
            }
            sent += 1;
        }
        producer.flush(Duration::from_secs(60))?;
        let failed = producer
            .context()
            .0
            .load(std::sync::atomic::Ordering::Relaxed);
        if failed > 0 {
            return Err(BenchError::Republish {
                message: format!("{failed} of {sent} records to {to} were not delivered"),
            });
        }
        Ok(Republished {
            records: sent,
            seconds: started.map_or(0.0, |s| s.elapsed().as_secs_f64()),
        })
    })
}

/// Runs the benchmark and prints its figures.
pub async fn run(config: &BenchConfig) -> Result<()> {
    std::fs::create_dir_all(&config.work_dir)?;
    let stamp = chrono::Utc::now().timestamp_millis();
    let topic = format!("stratus-bench-{stamp}");
    say!(
        "stratus bench: {} events, {} keys, {} partitions, {} events per cycle, memory limit {}, \
         {} cores",
        config.events,
        config.keys,
        config.partitions,
        config.max_rows,
        config.memory_limit,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    // Load: the topic and the file hold the same events; one minute of event time per
    // `keys` events, generated a minute at a time so that loading stays small in memory.
    create_topic(&config.brokers, &topic, config.partitions).await?;
    let file = config.work_dir.join("events.jsonl");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&file).map_err(|source| {
        BenchError::Create {
            path: file.clone(),
            source,
        }
    })?);
    let producer: FutureProducer = producer_config(&config.brokers)
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .create()?;
    let load = Instant::now();
    let keys = config.keys.max(1);
    let minutes = config.events.div_ceil(keys);
    // 30 s after the last 5-minute boundary but one: the same windows close in every run.
    let now_ms = chrono::Utc::now().timestamp_millis();
    let end_ms = now_ms - now_ms.rem_euclid(300_000) - 300_000 + 30_000;
    for minute in 0..minutes {
        let count = keys.min(config.events - minute * keys);
        let minute_end = end_ms - (minutes - minute - 1) as i64 * 60_000;
        let events = metric_events(minute as u64, count, keys, minute_end, 0);
        for e in &events {
            out.write_all(&e.payload)?;
            out.write_all(b"\n")?;
        }
        let sends = events.iter().map(|e| {
            producer.send(
                FutureRecord::to(&topic).key(&e.key).payload(&e.payload),
                Duration::from_secs(60),
            )
        });
        for d in futures::future::join_all(sends).await {
            d.map_err(|(e, _)| BenchError::Load(e))?;
        }
    }
    out.flush()?;
    drop(out);
    let load_s = load.elapsed().as_secs_f64();
    say!(
        "loaded in {load_s:.1} s ({:.0} events/s produced)",
        config.events as f64 / load_s
    );

    // Baseline 1: rdkafka alone, in this process (its peak: since a reset just before).
    let rss_before_raw = reset_peak_rss();
    let consumer: BaseConsumer =
        consumer_config(&config.brokers, &format!("{topic}-raw")).create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..config.partitions {
        tpl.add_partition_offset(&topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let raw_start = Instant::now();
    tokio::task::block_in_place(|| {
        let mut n = 0;
        while n < config.events {
            match consumer.poll(Duration::from_secs(10)) {
                Some(m) => {
                    m?;
                    n += 1;
                }
                None => {
                    return Err(BenchError::Stalled {
                        consumed: n,
                        events: config.events,
                    });
                }
            }
        }
        Ok(())
    })?;
    let raw_s = raw_start.elapsed().as_secs_f64();
    drop(consumer);
    let rss_after_raw = peak_rss_mib();

    // The pipeline over Kafka.
    let kafka = run_once(
        config,
        &format!("bench-kafka-{stamp}"),
        &format!("kafka: {{topic: {topic}, group: {topic}-pipeline}}"),
    )
    .await?;
    // Baseline 2: rdkafka alone publishing what the pipeline published.
    let published = kafka
        .summary
        .stage_rows
        .get("features_1m")
        .copied()
        .unwrap_or(0);
    let again = produce_again(
        &config.brokers,
        &format!("bench-kafka-{stamp}.features_1m"),
        &format!("{topic}-again"),
        published,
    )
    .await?;
    // Baseline 3: the engine over the file.
    let from_file = run_once(
        config,
        &format!("bench-file-{stamp}"),
        &format!("file: {{path: {}}}", file.display()),
    )
    .await?;
    let (summary, kafka_s, file_summary, file_s) = (
        &kafka.summary,
        kafka.seconds,
        &from_file.summary,
        from_file.seconds,
    );

    let mut latencies = summary.window_latencies.clone();
    latencies.sort_by(f64::total_cmp);

    let rate = |secs: f64| config.events as f64 / secs;
    say!("");
    say!("| measurement | events/s | seconds | peak RSS (MiB) |");
    say!("| --- | ---: | ---: | ---: |");
    say!(
        "| rdkafka consume only (ceiling; RSS above the {rss_before_raw:.0} MiB the loader left) | {:.0} | {raw_s:.2} | {:.0} |",
        rate(raw_s),
        rss_after_raw - rss_before_raw
    );
    let mib = |m: Option<f64>| m.map_or("n/a".to_string(), |m| format!("{m:.0}"));
    say!(
        "| pipeline from Kafka (a process of its own) | {:.0} | {kafka_s:.2} | {} |",
        rate(kafka_s),
        mib(kafka.peak_rss_mib)
    );
    say!(
        "| pipeline from file replay (no Kafka; a process of its own) | {:.0} | {file_s:.2} | {} |",
        rate(file_s),
        mib(from_file.peak_rss_mib)
    );
    say!("");
    say!(
        "pipeline from Kafka: {:.0} % of the raw consume rate; window results {} (1m), {} (5m)",
        100.0 * raw_s / kafka_s,
        summary.stage_rows.get("features_1m").copied().unwrap_or(0),
        summary.stage_rows.get("features_5m").copied().unwrap_or(0)
    );
    if again.records > 0 {
        say!(
            "rdkafka publishing the {} records the pipeline published to its topic again (read back, \
             sent with the sinks' producer settings, every one acknowledged): {:.2} s, {:.0} records/s",
            again.records,
            again.seconds,
            again.records as f64 / again.seconds
        );
    }
    say!(
        "window latency after close (flush → committed to Delta and Kafka), {} firings: p50 {:.0} ms, p99 {:.0} ms",
        latencies.len(),
        1000.0 * percentile(&latencies, 50.0),
        1000.0 * percentile(&latencies, 99.0)
    );
    say!(
        "CPU time (user and system, every thread): from Kafka {}, from the file {}",
        kafka.cpu_text(config.events as u64),
        from_file.cpu_text(config.events as u64)
    );
    let phases = |s: &RunSummary| {
        s.phase_seconds
            .iter()
            .map(|(phase, secs)| format!("{phase} {secs:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let tenths = |r: &RunReport| {
        r.tenths
            .iter()
            .map(|t| format!("{t:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    say!(
        "events/s per tenth of the events, from Kafka: {}",
        tenths(&kafka)
    );
    say!(
        "events/s per tenth of the events, from the file: {}",
        tenths(&from_file)
    );
    say!("seconds per phase, from Kafka: {}", phases(summary));
    say!("seconds per phase, from the file: {}", phases(file_summary));
    say!(
        "file replay: {} events, {} invalid; Kafka: {} events, {} invalid",
        file_summary.events,
        file_summary.invalid,
        summary.events,
        summary.invalid
    );
    planning(&config.root).await
}

/// Batches and rows per batch of the planning comparison.
const PLAN_BATCHES: usize = 200;
const PLAN_ROWS: usize = 1_000;

/// The shipped 1-minute feature query without its window: a plain SQL stage's shape.
const PLAN_SQL: &str = "SELECT account_id, region, resource_id, metric, count(*) AS samples, \
                        avg(value) AS mean, min(value) AS min, max(value) AS max, \
                        stddev(value) AS std FROM metrics \
                        GROUP BY account_id, region, resource_id, metric";

/// Times [`PLAN_SQL`] over the same batches of decoded events, planned per batch and planned
/// once, and prints both (the median of five rounds).
async fn planning(root: &Path) -> Result<()> {
    use crate::sql::compiled::CompiledQuery;
    use crate::validate::{BatchDecoder, EventSchema, TimeBounds};

    let schema = EventSchema::from_file(&root.join("schemas/cloud.metrics.json"))?;
    let now_ms = chrono::Utc::now().timestamp_millis();
    let bounds = TimeBounds::plausible(now_ms * 1000, 300_000_000);
    let mut decoder =
        BatchDecoder::new(std::sync::Arc::new(schema), bounds, PLAN_ROWS).with_event_time("ts");
    let mut input = Vec::new();
    for chunk in metric_events(1, PLAN_BATCHES * PLAN_ROWS, 100, now_ms, 0).chunks(PLAN_ROWS) {
        for e in chunk {
            decoder.decode(&e.payload)?;
        }
        input.push(decoder.flush()?);
    }
    let rows = |out: &[arrow::array::RecordBatch]| out.iter().map(|b| b.num_rows()).sum::<usize>();
    let (mut replanned, mut compiled, mut counts) = (Vec::new(), Vec::new(), (0, 0));
    for _ in 0..5 {
        let ctx = crate::sql::session_context();
        let started = Instant::now();
        for b in &input {
            ctx.deregister_table("metrics")?;
            ctx.register_batch("metrics", b.clone())?;
            counts.0 += rows(&ctx.sql(PLAN_SQL).await?.collect().await?);
        }
        replanned.push(started.elapsed().as_secs_f64());
        let ctx = crate::sql::session_context();
        let started = Instant::now();
        let query = CompiledQuery::new(&ctx, "metrics", input[0].schema(), PLAN_SQL).await?;
        for b in &input {
            counts.1 += rows(&query.run(vec![b.clone()]).await?);
        }
        compiled.push(started.elapsed().as_secs_f64());
    }
    if counts.0 != counts.1 {
        return Err(BenchError::Mismatch {
            replanned: counts.0,
            compiled: counts.1,
        });
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (r, c) = (median(replanned), median(compiled));
    let ms = |s: f64| 1e3 * s / PLAN_BATCHES as f64;
    say!("");
    say!("a SQL stage's query over {PLAN_BATCHES} batches of {PLAN_ROWS} events (median of 5):");
    say!("| | ms per batch |");
    say!("| --- | ---: |");
    say!("| planned for every batch (before) | {:.2} |", ms(r));
    say!("| planned once, run per batch | {:.2} |", ms(c));
    say!(
        "planning saved: {:.2} ms per batch ({:.0} %)",
        ms(r - c),
        100.0 * (r - c) / r
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::path::Path;

    use super::BenchError;

    /// The process's CPU time is read, and grows with work done on a thread of its own.
    #[test]
    fn cpu_time_counts_every_threads_work() {
        let before = super::cpu_seconds().expect("/proc/self/stat");
        let worked = std::thread::spawn(move || {
            let mut x = 1u64;
            // At most a few seconds: the count grows by a tick (10 ms) long before.
            for _ in 0..2_000 {
                for i in 0..1_000_000u64 {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
                }
                if super::cpu_seconds().is_some_and(|now| now >= before + 0.05) {
                    return true;
                }
            }
            false
        });
        assert!(
            worked.join().unwrap(),
            "50 ms of work on another thread was not counted"
        );
    }

    #[test]
    fn errors_read_as_they_did() {
        let file = Path::new("/tmp/bench/bench-kafka-1.yaml");
        let status = std::process::ExitStatus::from_raw(256);
        assert_eq!(
            BenchError::RunFailed {
                file: file.to_path_buf(),
                status
            }
            .to_string(),
            format!(
                "the pipeline run of {} failed ({}); its errors are above",
                file.display(),
                status
            )
        );
        assert_eq!(
            BenchError::Stalled {
                consumed: 7,
                events: 10
            }
            .to_string(),
            "the raw consumer stalled at 7 of 10 events"
        );
        let code = rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists;
        assert_eq!(
            BenchError::CreateTopic {
                topic: "t".into(),
                source: code
            }
            .to_string(),
            format!("creating topic t: {code}")
        );
        let e = rdkafka::error::KafkaError::Canceled;
        assert_eq!(
            BenchError::Load(e.clone()).to_string(),
            format!("loading the topic: {e}")
        );
        let line = "not json";
        let report = BenchError::Report {
            line: line.into(),
            source: serde_json::from_str::<u8>(line).unwrap_err(),
        };
        assert_eq!(
            report.to_string(),
            format!("reading the report of the pipeline run: {line:?}")
        );
        assert!(std::error::Error::source(&report).is_some());
    }
}
