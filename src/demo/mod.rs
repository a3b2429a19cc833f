//! `stratus demo`: the embedded default job, with no services to install.
//!
//! Starts librdkafka's in-process mock cluster, produces seeded `cloud.metrics` events (a few
//! of them invalid) to it, runs the raw ingest job — decode, validate, dead-letter, write to a
//! local Delta table partitioned by date, offsets in the commits — and reads the table back
//! with DataFusion for a summary.

pub mod events;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use datafusion::prelude::SessionContext;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::job::ingest::{IngestConfig, IngestJob};
use crate::metrics::PipelineMetrics;
use crate::sink::{DeltaSink, DeltaSinkConfig};
use crate::source::kafka::{consumer_config, producer_config};
use crate::validate::EventSchema;

/// What `stratus demo` is asked to do.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    pub events: usize,
    pub resources: usize,
    pub seed: u64,
    /// Where the Delta tables go; the demo's previous tables there are replaced.
    pub out_dir: PathBuf,
}

/// The embedded schema of `cloud.metrics` (the file in `schemas/`, compiled in).
const METRICS_SCHEMA: &str = include_str!("../../schemas/cloud.metrics.json");
const TOPIC: &str = "cloud.metrics";
const DLQ_TOPIC: &str = "cloud.metrics.dlq";
const PARTITIONS: i32 = 8;

/// What the demo did, for the summary and for tests.
#[derive(Debug, Clone)]
pub struct DemoReport {
    pub produced: usize,
    pub produced_invalid: usize,
    pub valid: u64,
    pub invalid: u64,
    pub table: PathBuf,
    pub table_version: i64,
    pub table_rows: i64,
    pub seconds: f64,
}

pub async fn run(config: &DemoConfig) -> anyhow::Result<DemoReport> {
    let started = Instant::now();
    let schema = Arc::new(EventSchema::from_json(
        "schemas/cloud.metrics.json",
        METRICS_SCHEMA,
    )?);
    let table = config.out_dir.join("tables/raw_metrics");
    if table.exists() {
        std::fs::remove_dir_all(&table)
            .with_context(|| format!("removing the previous demo table {}", table.display()))?;
    }

    let cluster = MockCluster::new(1).context("starting librdkafka's mock cluster")?;
    cluster.create_topic(TOPIC, PARTITIONS, 1)?;
    cluster.create_topic(DLQ_TOPIC, 1, 1)?;
    let brokers = cluster.bootstrap_servers();
    crate::say!("embedded Kafka (librdkafka mock cluster) at {brokers}");

    let end_ms = chrono::Utc::now().timestamp_millis();
    let events = events::metric_events(config.seed, config.events, config.resources, end_ms, 20);
    let produced_invalid = events.iter().filter(|e| !e.valid).count();
    produce(&brokers, &events).await?;
    crate::say!(
        "produced {} cloud.metrics events ({} deliberately invalid) to {PARTITIONS} partitions",
        events.len(),
        produced_invalid
    );

    let metrics = PipelineMetrics::new();
    let sink = DeltaSink::open(DeltaSinkConfig {
        location: table.display().to_string(),
        partition_columns: vec!["date".into()],
        pipeline: "demo".into(),
        checkpoint_interval: 10,
        storage_options: Default::default(),
    })
    .await?;
    let mut job = IngestJob::start(
        IngestConfig {
            pipeline: "demo".into(),
            topic: TOPIC.into(),
            dead_letter_topic: DLQ_TOPIC.into(),
            event_time_field: "ts".into(),
            flush_rows: 2_000,
            flush_interval: Duration::from_millis(500),
            max_future: Duration::from_secs(300),
        },
        &consumer_config(&brokers, "stratus-demo"),
        &producer_config(&brokers),
        schema,
        sink,
        metrics.clone(),
    )
    .await?;
    let targets = job.high_watermarks()?;
    let summary = job.run_to(&targets).await?;

    let table_rows = count_rows(&table).await?;
    let report = DemoReport {
        produced: events.len(),
        produced_invalid,
        valid: summary.valid,
        invalid: summary.invalid,
        table: table.clone(),
        table_version: summary.table_version,
        table_rows,
        seconds: started.elapsed().as_secs_f64(),
    };
    print_summary(&report, &table).await?;
    Ok(report)
}

async fn produce(brokers: &str, events: &[events::GeneratedEvent]) -> anyhow::Result<()> {
    let producer: FutureProducer = producer_config(brokers).create()?;
    let deliveries: Vec<_> = events
        .iter()
        .map(|e| {
            producer.send(
                FutureRecord::to(TOPIC).key(&e.key).payload(&e.payload),
                Duration::from_secs(10),
            )
        })
        .collect();
    for d in futures::future::join_all(deliveries).await {
        d.map_err(|(e, _)| anyhow::anyhow!("producing a demo event: {e}"))?;
    }
    Ok(())
}

async fn count_rows(table: &Path) -> anyhow::Result<i64> {
    let ctx = register(table).await?;
    let batches = ctx
        .sql("SELECT count(*) AS n FROM raw_metrics")
        .await?
        .collect()
        .await?;
    let n = batches
        .first()
        .and_then(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .map(|a| a.value(0))
        })
        .unwrap_or(0);
    Ok(n)
}

async fn register(table: &Path) -> anyhow::Result<SessionContext> {
    let url = crate::sink::delta::table_url(&table.display().to_string())?;
    let delta = deltalake::open_table(url).await?;
    let ctx = SessionContext::new();
    delta.update_datafusion_session(&ctx.state())?;
    ctx.register_table("raw_metrics", delta.table_provider().await?)?;
    Ok(ctx)
}

async fn print_summary(report: &DemoReport, table: &Path) -> anyhow::Result<()> {
    crate::say!("");
    crate::say!("== summary ==");
    crate::say!(
        "events consumed: {}  valid → Delta: {}  invalid → {DLQ_TOPIC}: {}",
        report.valid + report.invalid,
        report.valid,
        report.invalid
    );
    crate::say!(
        "Delta table {} at version {}: {} rows",
        table.display(),
        report.table_version,
        report.table_rows
    );
    let ctx = register(table).await?;
    let per_metric = ctx
        .sql(
            "SELECT metric, count(*) AS events, count(DISTINCT resource_id) AS resources, \
             round(avg(value), 2) AS avg_value, min(ts) AS first, max(ts) AS last \
             FROM raw_metrics GROUP BY metric ORDER BY metric",
        )
        .await?
        .collect()
        .await?;
    crate::say!(
        "{}",
        arrow::util::pretty::pretty_format_batches(&per_metric)?
    );
    crate::say!(
        "done in {:.1} s ({:.0} events/s end to end)",
        report.seconds,
        report.produced as f64 / report.seconds.max(1e-9)
    );
    Ok(())
}
