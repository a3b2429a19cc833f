//! `stratus demo`: the embedded default job, with no services to install.
//!
//! Starts librdkafka's in-process mock cluster, produces `stratus generate`'s seeded telemetry
//! to it — days of `cloud.metrics` (CPU, memory and network per instance, with labelled
//! anomalies; 2 % of them corrupted), `cloud.spot_prices` (irregular steps per type and zone)
//! and `cloud.billing` (hourly line items, some restated, with labelled cost leaks) — and runs
//! the three shipped pipelines side by side, compiled into the binary with their schemas, SQL,
//! catalogue and workloads, scoring and forecasting with the repository's model registry, until
//! they have read everything. Live progress goes to the terminal. Then it reads the Delta
//! tables back with DataFusion for a summary — detections and alerts scored against the labels,
//! recommendations and their savings, forecast interval coverage — and writes an offline HTML
//! report ([`report`]).

pub mod events;
pub mod figures;
pub mod progress;
pub mod report;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arrow::error::ArrowError;
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;
use deltalake::DeltaTableError;
use rdkafka::error::KafkaError;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};

pub use figures::{AlertFigures, Detection, ForecastFigures, RecommendationFigures};

use crate::generate::{BILLING_TOPIC, GenerateError, METRICS_TOPIC, SPOT_TOPIC};
use crate::job::run::{RunConfig, RunError, RunSummary, run_pipeline};
use crate::kafka::producer_config;
use crate::metrics::PipelineMetrics;
use crate::metrics::health::Health;
use crate::pipeline::{Diagnostics, Pipeline};
use crate::sink::delta::SinkError;

/// Why the demo stopped. Where it says what the demo was doing (`writing …`, `pipeline …`),
/// the error it met is the [`source`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("removing the previous demo output {}", path.display())]
    RemoveOutput {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing {}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no model registry at {}; set STRATUS_MODELS to one (scripts/train fills it)", path.display())]
    NoRegistry { path: PathBuf },
    #[error("the embedded pipeline {name} does not validate:\n{source}")]
    Invalid {
        name: &'static str,
        source: Diagnostics,
    },
    #[error("starting librdkafka's mock cluster")]
    MockCluster(#[source] KafkaError),
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error("producing a demo event to {topic}: {source}")]
    Produce { topic: String, source: KafkaError },
    /// The mock cluster dropped the oldest events of a partition.
    #[error(
        "the embedded Kafka kept only the newest {kept} of {high} events of {topic} partition \
         {partition} (librdkafka's mock cluster keeps 5 MB per partition): run the demo with \
         fewer --days or --resources, or the pipelines against a real broker (stratus run)"
    )]
    Dropped {
        topic: String,
        partition: i32,
        kept: i64,
        high: i64,
    },
    #[error(transparent)]
    Generate(#[from] GenerateError),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("pipeline {name}")]
    Run { name: String, source: Box<RunError> },
    #[error("a pipeline task failed")]
    Task(#[source] tokio::task::JoinError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Delta(#[from] DeltaTableError),
    #[error(transparent)]
    Sql(#[from] DataFusionError),
    #[error(transparent)]
    Arrow(#[from] ArrowError),
    /// A demo table that is not as the pipelines write it.
    #[error("{0}")]
    Table(&'static str),
    /// The Pareto front of a mix recommendation lacks a field.
    #[error("the Pareto front has no `{0}`")]
    ParetoField(String),
}

pub type Result<T, E = DemoError> = std::result::Result<T, E>;

/// What `stratus demo` is asked to do.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Days of generated history, ending now.
    pub days: f64,
    pub resources: usize,
    pub seed: u64,
    /// Where the pipeline files and Delta tables go; the demo's previous output is replaced.
    pub out_dir: PathBuf,
}

/// The shipped pipelines and the files they name, compiled in: (path under the output, text).
const EMBEDDED: [(&str, &str); 14] = [
    (
        "catalogue/aws-ec2.csv",
        include_str!("../../catalogue/aws-ec2.csv"),
    ),
    (
        "pipelines/cloud-metrics.yaml",
        include_str!("../../pipelines/cloud-metrics.yaml"),
    ),
    (
        "pipelines/spot-prices.yaml",
        include_str!("../../pipelines/spot-prices.yaml"),
    ),
    (
        "pipelines/billing.yaml",
        include_str!("../../pipelines/billing.yaml"),
    ),
    (
        "pipelines/workloads/fleet.yaml",
        include_str!("../../pipelines/workloads/fleet.yaml"),
    ),
    (
        "schemas/cloud.metrics.json",
        include_str!("../../schemas/cloud.metrics.json"),
    ),
    (
        "schemas/cloud.spot_prices.json",
        include_str!("../../schemas/cloud.spot_prices.json"),
    ),
    (
        "schemas/cloud.billing.json",
        include_str!("../../schemas/cloud.billing.json"),
    ),
    (
        "schemas/alert.feedback.json",
        include_str!("../../schemas/alert.feedback.json"),
    ),
    (
        "sql/cloud_metrics_1m.sql",
        include_str!("../../sql/cloud_metrics_1m.sql"),
    ),
    (
        "sql/cloud_metrics_5m.sql",
        include_str!("../../sql/cloud_metrics_5m.sql"),
    ),
    (
        "sql/cloud_metrics_cpu_1h.sql",
        include_str!("../../sql/cloud_metrics_cpu_1h.sql"),
    ),
    (
        "sql/spot_prices_1h.sql",
        include_str!("../../sql/spot_prices_1h.sql"),
    ),
    (
        "sql/billing_cost_1h.sql",
        include_str!("../../sql/billing_cost_1h.sql"),
    ),
];
/// The shipped pipelines the demo runs.
const PIPELINES: [&str; 3] = ["cloud-metrics", "spot-prices", "billing"];
const METRIC_PARTITIONS: i32 = 8;

/// What the demo did, for the summary and for tests.
#[derive(Debug, Clone)]
pub struct DemoReport {
    /// `cloud.metrics` events produced, and how many of them were corrupted on purpose.
    pub produced: usize,
    pub produced_invalid: usize,
    pub spot_events: usize,
    pub billing_events: usize,
    /// `cloud.metrics` events the pipeline found valid and invalid.
    pub valid: u64,
    pub invalid: u64,
    pub tables: PathBuf,
    pub raw_rows: i64,
    pub features_1m: u64,
    pub features_5m: u64,
    /// 5-minute windows scored by the model and the detectors.
    pub scored_5m: u64,
    /// One row per threshold of [`THRESHOLDS`].
    pub detection: Vec<Detection>,
    /// Metric alerts by severity, against the labelled metric anomalies.
    pub alerts: Vec<AlertFigures>,
    /// Cost alerts by severity, against the labelled cost leaks (per account and service).
    pub cost_alerts: Vec<AlertFigures>,
    /// Per kind: rightsizing, spot_vs_on_demand, instance_mix.
    pub recommendations: Vec<RecommendationFigures>,
    pub forecasts: ForecastFigures,
    pub seconds: f64,
}

/// The anomaly scores at which the demo counts windows as flagged.
pub const THRESHOLDS: [f64; 3] = [0.5, 0.6, 0.7];

pub async fn run(config: &DemoConfig) -> Result<DemoReport> {
    let started = Instant::now();
    for dir in ["pipeline", "tables"] {
        let dir = config.out_dir.join(dir);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(|source| DemoError::RemoveOutput { path: dir, source })?;
        }
    }
    let registry = models_registry()?;
    for (path, text) in EMBEDDED {
        let file = config.out_dir.join("pipeline").join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let text = text.replace(
            "registry: ../models/registry",
            &format!("registry: {registry:?}"),
        );
        std::fs::write(&file, text).map_err(|source| DemoError::Write { path: file, source })?;
    }
    crate::say!("models from the registry at {registry}");
    let mut pipelines = Vec::new();
    for name in PIPELINES {
        let file = config
            .out_dir
            .join(format!("pipeline/pipelines/{name}.yaml"));
        pipelines.push(
            Pipeline::load(&file)
                .await
                .map_err(|source| DemoError::Invalid { name, source })?,
        );
    }

    let cluster = MockCluster::new(1).map_err(DemoError::MockCluster)?;
    for source in pipelines.iter().flat_map(|p| &p.sources) {
        cluster.create_topic(&source.dead_letter_topic, 1, 1)?;
    }
    let events = demo_events(config)?;
    let placement = place(events.metrics.iter().map(|e| e.key.as_str()));
    cluster.create_topic(METRICS_TOPIC, placement.partitions, 1)?;
    cluster.create_topic(SPOT_TOPIC, 1, 1)?;
    cluster.create_topic(BILLING_TOPIC, 1, 1)?;
    // Topics read but not produced to here (verdicts on alerts).
    for source in pipelines.iter().flat_map(|p| &p.sources) {
        if let crate::pipeline::SourceInput::Kafka { topic, .. } = &source.input
            && ![METRICS_TOPIC, SPOT_TOPIC, BILLING_TOPIC].contains(&topic.as_str())
        {
            cluster.create_topic(topic, 1, 1)?;
        }
    }
    let brokers = cluster.bootstrap_servers();
    crate::say!("embedded Kafka (librdkafka mock cluster) at {brokers}");

    std::fs::create_dir_all(&config.out_dir)?;
    std::fs::write(
        config.out_dir.join("labels.json"),
        serde_json::to_string_pretty(&events.labels)?,
    )?;
    let produced_invalid = events.metrics.iter().filter(|e| !e.valid).count();
    let metric_records = events.metrics.iter().map(|e| {
        (
            e.key.as_str(),
            &e.payload[..],
            placement.of.get(&e.key).copied(),
        )
    });
    produce(&brokers, METRICS_TOPIC, metric_records).await?;
    all_kept(&brokers, METRICS_TOPIC, placement.partitions)?;
    let as_bytes = |v: &[(String, String)]| -> Vec<(String, Vec<u8>)> {
        v.iter()
            .map(|(k, p)| (k.clone(), p.clone().into_bytes()))
            .collect()
    };
    for (topic, records) in [
        (SPOT_TOPIC, as_bytes(&events.spot)),
        (BILLING_TOPIC, as_bytes(&events.billing)),
    ] {
        produce(
            &brokers,
            topic,
            records.iter().map(|(k, p)| (k.as_str(), &p[..], None)),
        )
        .await?;
    }
    crate::say!(
        "produced {:.1} days of {} instances: {} cloud.metrics events ({} deliberately invalid) \
         to {} partitions, {} spot price changes, {} billing line items; \
         {} labelled anomalies",
        config.days,
        config.resources,
        events.metrics.len(),
        produced_invalid,
        placement.partitions,
        events.spot.len(),
        events.billing.len(),
        events.labels.anomalies.len()
    );
    let names: Vec<&str> = pipelines.iter().map(|p| p.name.as_str()).collect();
    crate::say!("running pipelines {}", names.join(", "));

    let tables = config.out_dir.join("tables");
    let run = RunConfig::backfill(&brokers, &tables.display().to_string(), Default::default());
    let (summaries, scraped) = run_all(&pipelines, &run).await?;
    // What Prometheus would have scraped at the end: the series the rules and the dashboard
    // under deploy/ read.
    let file = config.out_dir.join("metrics.prom");
    std::fs::write(&file, scraped).map_err(|source| DemoError::Write { path: file, source })?;
    let metrics_run = summaries.first().cloned().unwrap_or_default();

    let ctx = register(&tables).await?;
    let labels = &events.labels;
    let metric_anomalies: Vec<(String, i64, i64)> = labels
        .anomalies
        .iter()
        .filter(|a| a.metric != "cost" && a.metric != "price")
        .map(|a| (a.subject.clone(), a.start_us, a.end_us))
        .collect();
    // A leak shows in the hourly cost of the account and service its instance is billed to.
    let cost_leaks: Vec<(String, i64, i64)> = labels
        .anomalies
        .iter()
        .filter(|a| a.kind == "cost_leak")
        .filter_map(|a| {
            let (account, service) = events.billed_to.get(&a.subject)?;
            Some((format!("{account}/{service}"), a.start_us, a.end_us))
        })
        .collect();
    let report = DemoReport {
        produced: events.metrics.len(),
        produced_invalid,
        spot_events: events.spot.len(),
        billing_events: events.billing.len(),
        valid: metrics_run.events - metrics_run.invalid,
        invalid: metrics_run.invalid,
        tables: tables.clone(),
        raw_rows: count(&ctx, "raw_metrics").await?,
        features_1m: stage_rows(&metrics_run, "features_1m"),
        features_5m: stage_rows(&metrics_run, "features_5m"),
        scored_5m: stage_rows(&metrics_run, "anomaly_5m"),
        detection: figures::detection(&ctx, labels).await?,
        alerts: figures::alert_figures(&ctx, "alerts", "resource", &metric_anomalies).await?,
        cost_alerts: figures::alert_figures(
            &ctx,
            "cost_alerts",
            "concat(labels['account_id'], '/', labels['service'])",
            &cost_leaks,
        )
        .await?,
        recommendations: figures::recommendation_figures(&ctx).await?,
        forecasts: figures::forecasts(&ctx).await?.figures(),
        seconds: started.elapsed().as_secs_f64(),
    };
    print_summary(&report, &ctx).await?;
    let html = config.out_dir.join("report.html");
    let charts = report::write(&html, &report, &ctx, labels).await?;
    crate::say!("report with {charts} charts: {}", html.display());
    Ok(report)
}

fn stage_rows(summary: &RunSummary, stage: &str) -> u64 {
    summary.stage_rows.get(stage).copied().unwrap_or(0)
}

/// Runs the pipelines side by side to the end of their input, printing progress; their
/// summaries, in order, and their metrics as `/metrics` shows them at the end.
async fn run_all(pipelines: &[Pipeline], run: &RunConfig) -> Result<(Vec<RunSummary>, String)> {
    let metrics = PipelineMetrics::new();
    let mut progress = progress::Progress::new(pipelines, &metrics);
    let handles: Vec<_> = pipelines
        .iter()
        .map(|p| {
            let (p, run, metrics) = (p.clone(), run.clone(), metrics.clone());
            tokio::spawn(async move {
                run_pipeline(&p, &run, metrics, Health::new(), std::future::pending())
                    .await
                    .map_err(|source| DemoError::Run {
                        name: p.name.clone(),
                        source: Box::new(source),
                    })
            })
        })
        .collect();
    let mut all = futures::future::join_all(handles);
    let mut tick = tokio::time::interval(progress::EVERY);
    tick.tick().await;
    let done = loop {
        tokio::select! {
            done = &mut all => break done,
            _ = tick.tick() => crate::say!("{}", progress.line()),
        }
    };
    crate::say!("{}", progress.line());
    let summaries = done
        .into_iter()
        .map(|r| r.map_err(DemoError::Task)?)
        .collect::<Result<_>>()?;
    Ok((summaries, metrics.render()))
}

/// The generator's events for the three topics (metric events about 2 % corrupted), its
/// labels, and the account and service each instance is billed to.
struct DemoEvents {
    metrics: Vec<events::GeneratedEvent>,
    spot: Vec<(String, String)>,
    billing: Vec<(String, String)>,
    labels: crate::generate::Labels,
    billed_to: BTreeMap<String, (String, String)>,
}

/// Midnight (UTC) of the Monday at or before `t_us`. The demo's history starts there, so the
/// same seed gives the same events in the same week phase, whatever the day it runs: its
/// figures do not depend on whether the detectors' first week began on a weekday.
fn monday_before(t_us: i64) -> i64 {
    const DAY: i64 = 86_400_000_000;
    let day = t_us.div_euclid(DAY);
    // 1970-01-01 was a Thursday, three days after a Monday.
    (day - (day + 3).rem_euclid(7)) * DAY
}

fn demo_events(config: &DemoConfig) -> Result<DemoEvents> {
    use rand::{Rng, SeedableRng};
    let span_us = (config.days * 86_400e6) as i64;
    let start_us = monday_before(chrono::Utc::now().timestamp_micros() - span_us);
    let generate = crate::generate::GenerateConfig {
        seed: config.seed,
        start_us,
        span_us,
        interval_us: 60_000_000,
        resources: config.resources,
        anomaly_share: 0.5,
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed ^ 0xDE40);
    let mut metrics = Vec::new();
    let (mut spot, mut billing) = (Vec::new(), Vec::new());
    let mut billed_to = BTreeMap::new();
    let labels = crate::generate::generate(
        &generate,
        &mut |topic: &'static str, key: &str, payload: &str, _ts: i64| {
            match topic {
                METRICS_TOPIC => {
                    let valid = rng.random_range(0..1000) >= 20;
                    let payload = if valid {
                        payload.as_bytes().to_vec()
                    } else {
                        let mut event: serde_json::Value = serde_json::from_str(payload)?;
                        events::corrupt(&mut event, &mut rng)
                    };
                    metrics.push(events::GeneratedEvent {
                        key: key.to_string(),
                        payload,
                        valid,
                    });
                }
                SPOT_TOPIC => spot.push((key.to_string(), payload.to_string())),
                BILLING_TOPIC => {
                    let item: serde_json::Value = serde_json::from_str(payload)?;
                    if let (Some(r), Some(a), Some(s)) = (
                        item["resource_id"].as_str(),
                        item["account_id"].as_str(),
                        item["service"].as_str(),
                    ) {
                        billed_to.insert(r.to_string(), (a.to_string(), s.to_string()));
                    }
                    billing.push((key.to_string(), payload.to_string()));
                }
                _ => {}
            }
            Ok(())
        },
    )?;
    Ok(DemoEvents {
        metrics,
        spot,
        billing,
        labels,
        billed_to,
    })
}

/// Where each metric key's events go: librdkafka's mock cluster keeps at most 5 MB (about
/// 140,000 of these events, compressed) per partition and silently drops the oldest past it, so
/// the keys are packed, largest first, onto the least-filled of as many partitions as keep each
/// under [`PARTITION_BUDGET`] events (at least [`METRIC_PARTITIONS`]).
struct Placement {
    partitions: i32,
    of: BTreeMap<String, i32>,
}

/// Events the demo puts in one partition of the mock cluster.
const PARTITION_BUDGET: usize = 100_000;

fn place<'a>(keys: impl Iterator<Item = &'a str>) -> Placement {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for k in keys {
        *counts.entry(k).or_default() += 1;
    }
    let mut by_size: Vec<(&str, usize)> = counts.into_iter().collect();
    by_size.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let mut partitions = METRIC_PARTITIONS;
    loop {
        let mut load = vec![0usize; partitions as usize];
        let mut of = BTreeMap::new();
        for &(key, n) in &by_size {
            let p = (0..load.len()).min_by_key(|&p| (load[p], p)).unwrap_or(0);
            load[p] += n;
            of.insert(key.to_string(), p as i32);
        }
        let fits = load.iter().all(|&l| l <= PARTITION_BUDGET);
        // One partition per key is as far as packing goes; `all_kept` says if even that is
        // too much.
        if fits || partitions as usize >= by_size.len() {
            return Placement { partitions, of };
        }
        partitions += 1;
    }
}

/// Fails if the mock cluster dropped any of `topic`'s events (a partition whose log no longer
/// starts at offset 0), naming how many and what to do.
fn all_kept(brokers: &str, topic: &str, partitions: i32) -> Result<()> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = crate::kafka::consumer_config(brokers, "stratus-demo").create()?;
    for p in 0..partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        if low != 0 {
            return Err(DemoError::Dropped {
                topic: topic.to_string(),
                partition: p,
                kept: high - low,
                high,
            });
        }
    }
    Ok(())
}

async fn produce<'a>(
    brokers: &str,
    topic: &str,
    records: impl Iterator<Item = (&'a str, &'a [u8], Option<i32>)>,
) -> Result<()> {
    let producer: FutureProducer = producer_config(brokers).create()?;
    let deliveries: Vec<_> = records
        .map(|(key, payload, partition)| {
            let mut record = FutureRecord::to(topic).key(key).payload(payload);
            record.partition = partition;
            producer.send(record, Duration::from_secs(10))
        })
        .collect();
    for d in futures::future::join_all(deliveries).await {
        d.map_err(|(source, _)| DemoError::Produce {
            topic: topic.to_string(),
            source,
        })?;
    }
    Ok(())
}

/// The registry the demo scores with: `STRATUS_MODELS`, else the repository's
/// `models/registry` (where `scripts/train` registers).
fn models_registry() -> Result<String> {
    if let Ok(r) = std::env::var("STRATUS_MODELS")
        && !r.is_empty()
    {
        return Ok(r);
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/registry");
    if !repo.is_dir() {
        return Err(DemoError::NoRegistry { path: repo });
    }
    Ok(repo.display().to_string())
}

/// A session with the demo's Delta tables registered under their names.
async fn register(tables: &Path) -> Result<SessionContext> {
    let ctx = SessionContext::new();
    for name in [
        "raw_metrics",
        "metric_features_1m",
        "metric_features_5m",
        "metric_anomaly_scores_5m",
        "alerts",
        "recommendations_rightsizing",
        "spot_price_features_1h",
        "spot_price_forecasts",
        "recommendations_spot",
        "cost_hourly",
        "cost_anomaly_scores_1h",
        "cost_alerts",
    ] {
        let dir = tables.join(name);
        if !dir.join("_delta_log").exists() {
            continue;
        }
        let url = crate::sink::delta::table_url(&dir.display().to_string())?;
        let delta = deltalake::open_table(url).await?;
        delta.update_datafusion_session(&ctx.state())?;
        ctx.register_table(name, delta.table_provider().await?)?;
    }
    Ok(ctx)
}

async fn count(ctx: &SessionContext, table: &str) -> Result<i64> {
    let batches = ctx
        .sql(&format!("SELECT count(*) AS n FROM {table}"))
        .await?
        .collect()
        .await?;
    Ok(batches
        .first()
        .and_then(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .map(|a| a.value(0))
        })
        .unwrap_or(0))
}

async fn print_summary(report: &DemoReport, ctx: &SessionContext) -> Result<()> {
    crate::say!("");
    crate::say!("== summary ==");
    crate::say!(
        "events consumed: {}  valid → Delta: {}  invalid → cloud.metrics.dlq: {}",
        report.valid + report.invalid,
        report.valid,
        report.invalid
    );
    crate::say!(
        "also consumed: {} spot price changes (cloud.spot_prices), {} billing line items \
         (cloud.billing)",
        report.spot_events,
        report.billing_events
    );
    crate::say!(
        "Delta tables in {}: raw_metrics {} rows; window results: {} (1 minute), {} (5 minutes)",
        report.tables.display(),
        report.raw_rows,
        report.features_1m,
        report.features_5m
    );
    if report.features_1m > 0 {
        let top = ctx
            .sql(
                "SELECT resource_id, metric, window_start, samples, round(mean, 2) AS mean, \
                 round(p95, 2) AS p95, business_hours FROM metric_features_1m \
                 WHERE metric = 'CPUUtilization' ORDER BY p95 DESC, resource_id LIMIT 5",
            )
            .await?
            .collect()
            .await?;
        crate::say!("busiest CPUs (1-minute p95):");
        crate::say!("{}", arrow::util::pretty::pretty_format_batches(&top)?);
    }
    if report.scored_5m > 0 {
        let top = ctx
            .sql(
                "SELECT resource_id, metric, window_start, round(mean, 2) AS mean, model_version, \
                 round(anomaly_score, 3) AS anomaly, round(c_seasonal, 3) AS daily, \
                 round(c_seasonal_2, 3) AS weekly, \
                 round(c_model, 3) AS model FROM metric_anomaly_scores_5m \
                 ORDER BY anomaly_score DESC, resource_id LIMIT 5",
            )
            .await?
            .collect()
            .await?;
        crate::say!(
            "{} 5-minute windows scored; the most anomalous, with each detector's share:",
            report.scored_5m
        );
        crate::say!("{}", arrow::util::pretty::pretty_format_batches(&top)?);
    }
    for (what, figures) in [
        (
            "metric alerts (topic `alerts`, table `alerts`), by highest severity, against the labelled metric anomalies:",
            &report.alerts,
        ),
        (
            "cost alerts (topic `alerts`, table `cost_alerts`), by highest severity, against the labelled cost leaks:",
            &report.cost_alerts,
        ),
    ] {
        crate::say!("{what}");
        for a in figures {
            crate::say!(
                "  {:<8} {:>3} alerts, {:>3} on a labelled anomaly (precision {:.0} %); \
                 {} of {} anomalies with an alert this severe or worse (recall {:.0} %)",
                a.severity,
                a.alerts,
                a.right,
                100.0 * a.right as f64 / a.alerts.max(1) as f64,
                a.found,
                a.labelled,
                100.0 * a.found as f64 / a.labelled.max(1) as f64
            );
        }
    }
    crate::say!("recommendations (topic `recommendations`), at their latest revision:");
    for r in &report.recommendations {
        crate::say!(
            "  {:<18} {:>3}, expected savings {:.2} USD a month",
            r.kind,
            r.count,
            r.savings
        );
    }
    let f = &report.forecasts;
    crate::say!(
        "spot price forecasts (table `spot_price_forecasts`): {} rows; of the {} whose hour has \
         come, {:.0} % inside the 80 % interval and {:.0} % inside the 95 % interval",
        f.rows,
        f.checked,
        100.0 * f.inside_80 as f64 / f.checked.max(1) as f64,
        100.0 * f.inside_95 as f64 / f.checked.max(1) as f64
    );
    crate::say!(
        "detection against the {} labelled metric anomalies, by the anomaly score that flags a window:",
        report.detection.first().map_or(0, |d| d.labelled)
    );
    for d in &report.detection {
        crate::say!(
            "  ≥ {:.1}: {} found (recall {:.0} %); {} of {} flagged windows inside an anomaly \
             (precision {:.0} %)",
            d.threshold,
            d.found,
            100.0 * d.found as f64 / d.labelled.max(1) as f64,
            d.flagged_in_anomaly,
            d.flagged,
            100.0 * d.flagged_in_anomaly as f64 / d.flagged.max(1) as f64
        );
    }
    crate::say!(
        "done in {:.1} s ({:.0} events/s end to end)",
        report.seconds,
        (report.produced + report.spot_events + report.billing_events) as f64
            / report.seconds.max(1e-9)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Datelike, Timelike, Weekday};

    use super::{DemoError, METRIC_PARTITIONS, monday_before, place};

    fn at(text: &str) -> i64 {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .timestamp_micros()
    }

    #[test]
    fn the_history_starts_at_midnight_of_the_monday_at_or_before() {
        for (t, monday) in [
            ("2026-12-02T17:12:00Z", "2026-11-30T00:00:00Z"),
            ("2026-11-30T00:00:00Z", "2026-11-30T00:00:00Z"),
            ("2026-11-29T23:59:59Z", "2026-11-23T00:00:00Z"),
            ("1969-12-31T12:00:00Z", "1969-12-29T00:00:00Z"),
        ] {
            assert_eq!(monday_before(at(t)), at(monday), "{t}");
        }
        for day in 0..14 {
            let t = at("2026-11-16T06:00:00Z") + day * 86_400_000_000;
            let start = DateTime::from_timestamp_micros(monday_before(t)).unwrap();
            assert_eq!((start.weekday(), start.hour()), (Weekday::Mon, 0));
            assert!(t - start.timestamp_micros() < 7 * 86_400_000_000);
        }
    }

    #[test]
    fn keys_are_packed_so_that_no_partition_passes_the_budget() {
        let keys: Vec<String> = (0..12).map(|i| format!("i-{i:02}")).collect();
        // Two weeks of one instance each minute: three metrics, 60,480 events; two together
        // (120,960) would pass the budget, so each gets a partition of its own.
        let heavy: Vec<&str> = keys
            .iter()
            .flat_map(|k| std::iter::repeat_n(k.as_str(), 60_480))
            .collect();
        let placed = place(heavy.iter().copied());
        assert_eq!(placed.partitions, 12);
        let used: std::collections::BTreeSet<i32> = placed.of.values().copied().collect();
        assert_eq!(used.len(), 12);
        // A small fleet keeps the default partitions, spread evenly.
        let light: Vec<&str> = keys
            .iter()
            .flat_map(|k| std::iter::repeat_n(k.as_str(), 1_000))
            .collect();
        let placed = place(light.iter().copied());
        assert_eq!(placed.partitions, METRIC_PARTITIONS);
        let mut load = vec![0; METRIC_PARTITIONS as usize];
        for p in placed.of.values() {
            load[*p as usize] += 1;
        }
        assert_eq!(load.iter().max(), Some(&2));
        assert_eq!(load.iter().min(), Some(&1));
    }

    #[test]
    fn errors_read_as_they_did() {
        let (topic, p, high, low) = ("cloud.metrics", 3, 150_000i64, 10_000i64);
        let dropped = DemoError::Dropped {
            topic: topic.into(),
            partition: p,
            kept: high - low,
            high,
        };
        assert_eq!(
            dropped.to_string(),
            format!(
                "the embedded Kafka kept only the newest {} of {high} events of {topic} partition {p} \
                 (librdkafka's mock cluster keeps 5 MB per partition): run the demo with fewer \
                 --days or --resources, or the pipelines against a real broker (stratus run)",
                high - low
            )
        );
        let repo = std::path::PathBuf::from("/repo/models/registry");
        assert_eq!(
            DemoError::NoRegistry { path: repo.clone() }.to_string(),
            format!(
                "no model registry at {}; set STRATUS_MODELS to one (scripts/train fills it)",
                repo.display()
            )
        );
        let e = rdkafka::error::KafkaError::Canceled;
        assert_eq!(
            DemoError::Produce {
                topic: topic.into(),
                source: e.clone()
            }
            .to_string(),
            format!("producing a demo event to {topic}: {e}")
        );
        // What the demo was doing, its cause kept as the source.
        let write = DemoError::Write {
            path: repo.clone(),
            source: std::io::ErrorKind::PermissionDenied.into(),
        };
        assert_eq!(write.to_string(), format!("writing {}", repo.display()));
        assert!(std::error::Error::source(&write).is_some());
        assert_eq!(
            DemoError::MockCluster(e).to_string(),
            "starting librdkafka's mock cluster"
        );
    }
}
