//! `stratus demo`: the embedded default job, with no services to install.
//!
//! Starts librdkafka's in-process mock cluster, produces `stratus generate`'s seeded
//! `cloud.metrics` events (days of CPU, memory and network per instance, with labelled
//! anomalies; 2 % of them corrupted) to it, and runs the shipped `pipelines/cloud-metrics.yaml`
//! — compiled into the binary with its schema and SQL, scoring with the repository's model
//! registry — until it has read them all: decode, validate, dead-letter, the raw Delta table
//! (offsets in each commit), 1- and 5-minute feature windows, anomaly scores. Then reads the
//! tables back with DataFusion for a summary, with the detections scored against the labels.

pub mod events;
pub mod report;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use datafusion::prelude::SessionContext;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::job::run::{RunConfig, run_to_end};
use crate::pipeline::Pipeline;
use crate::source::kafka::producer_config;

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

/// The shipped pipeline and the files it names, compiled in: (path under the output, text).
const EMBEDDED: [(&str, &str); 5] = [
    (
        "catalogue/aws-ec2.csv",
        include_str!("../../catalogue/aws-ec2.csv"),
    ),
    (
        "pipelines/cloud-metrics.yaml",
        include_str!("../../pipelines/cloud-metrics.yaml"),
    ),
    (
        "schemas/cloud.metrics.json",
        include_str!("../../schemas/cloud.metrics.json"),
    ),
    (
        "sql/cloud_metrics_1m.sql",
        include_str!("../../sql/cloud_metrics_1m.sql"),
    ),
    (
        "sql/cloud_metrics_5m.sql",
        include_str!("../../sql/cloud_metrics_5m.sql"),
    ),
];
const TOPIC: &str = "cloud.metrics";
const PARTITIONS: i32 = 8;

/// What the demo did, for the summary and for tests.
#[derive(Debug, Clone)]
pub struct DemoReport {
    pub produced: usize,
    pub produced_invalid: usize,
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
    /// Alerts by severity, against the labels.
    pub alerts: Vec<AlertFigures>,
    /// Rightsizing recommendations issued, and their expected savings (USD a month).
    pub recommendations: u64,
    pub savings_usd_month: f64,
    pub seconds: f64,
}

/// Alerts of one severity (their highest) against the generator's labels: an alert is right
/// when its resource had a labelled anomaly that overlaps the alert's span (from its first
/// message to its last, with 30 minutes' grace after the anomaly).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AlertFigures {
    pub severity: String,
    pub alerts: usize,
    pub right: usize,
    /// Labelled metric anomalies with an alert of this severity or higher.
    pub found: usize,
    pub labelled: usize,
}

/// Windows flagged (anomaly score ≥ `threshold`) against the generator's labels. A window is
/// inside an anomaly when its resource is the labelled one — any of its metrics, since a CPU
/// anomaly moves its network traffic too — and it ends during the anomaly or up to 30 minutes
/// after.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Detection {
    pub threshold: f64,
    /// Injected metric anomalies (spikes, level shifts, dips, memory drifts).
    pub labelled: usize,
    /// Of those, the ones with a flagged window inside them.
    pub found: usize,
    pub flagged: usize,
    pub flagged_in_anomaly: usize,
}

/// The anomaly scores at which the demo counts windows as flagged.
pub const THRESHOLDS: [f64; 3] = [0.5, 0.6, 0.7];

pub async fn run(config: &DemoConfig) -> anyhow::Result<DemoReport> {
    let started = Instant::now();
    for dir in ["pipeline", "tables"] {
        let dir = config.out_dir.join(dir);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("removing the previous demo output {}", dir.display()))?;
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
        std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
    }
    crate::say!("models from the registry at {registry}");
    let pipeline_file = config.out_dir.join("pipeline/pipelines/cloud-metrics.yaml");
    let pipeline = Pipeline::load(&pipeline_file)
        .await
        .map_err(|d| anyhow::anyhow!("the embedded pipeline does not validate:\n{d}"))?;

    let cluster = MockCluster::new(1).context("starting librdkafka's mock cluster")?;
    for source in &pipeline.sources {
        cluster.create_topic(&source.dead_letter_topic, 1, 1)?;
    }
    cluster.create_topic(TOPIC, PARTITIONS, 1)?;
    let brokers = cluster.bootstrap_servers();
    crate::say!("embedded Kafka (librdkafka mock cluster) at {brokers}");

    let (events, labels) = demo_events(config)?;
    std::fs::create_dir_all(&config.out_dir)?;
    std::fs::write(
        config.out_dir.join("labels.json"),
        serde_json::to_string_pretty(&labels)?,
    )?;
    let produced_invalid = events.iter().filter(|e| !e.valid).count();
    produce(&brokers, &events).await?;
    crate::say!(
        "produced {} cloud.metrics events ({:.1} days of {} instances; {} deliberately invalid; \
         {} labelled anomalies) to {PARTITIONS} partitions",
        events.len(),
        config.days,
        config.resources,
        produced_invalid,
        labels.anomalies.len()
    );
    crate::say!(
        "running pipeline `{}` from {}",
        pipeline.name,
        pipeline_file.display()
    );

    let tables = config.out_dir.join("tables");
    let run = RunConfig::backfill(&brokers, &tables.display().to_string(), Default::default());
    let summary = run_to_end(&pipeline, &run).await?;

    let ctx = register(&tables).await?;
    let raw_rows = count(&ctx, "raw_metrics").await?;
    let detection = detection(&ctx, &labels).await?;
    let alerts = alert_figures(&ctx, &labels).await?;
    let (recommendations, savings_usd_month) = recommendation_figures(&ctx).await?;
    let report = DemoReport {
        produced: events.len(),
        produced_invalid,
        valid: summary.events - summary.invalid,
        invalid: summary.invalid,
        tables: tables.clone(),
        raw_rows,
        features_1m: summary.stage_rows.get("features_1m").copied().unwrap_or(0),
        features_5m: summary.stage_rows.get("features_5m").copied().unwrap_or(0),
        scored_5m: summary.stage_rows.get("anomaly_5m").copied().unwrap_or(0),
        detection,
        alerts,
        recommendations,
        savings_usd_month,
        seconds: started.elapsed().as_secs_f64(),
    };
    print_summary(&report, &ctx).await?;
    let html = config.out_dir.join("report.html");
    let charts = report::write(&html, &report, &ctx, &labels).await?;
    crate::say!("report with {charts} charts: {}", html.display());
    Ok(report)
}

/// The generator's metric events, about 2 % of them corrupted, and its labels.
fn demo_events(
    config: &DemoConfig,
) -> anyhow::Result<(Vec<events::GeneratedEvent>, crate::generate::Labels)> {
    use rand::{Rng, SeedableRng};
    let span_us = (config.days * 86_400e6) as i64;
    let now = chrono::Utc::now().timestamp_micros();
    let start_us = now - span_us - (now - span_us).rem_euclid(60_000_000);
    let generate = crate::generate::GenerateConfig {
        seed: config.seed,
        start_us,
        span_us,
        interval_us: 60_000_000,
        resources: config.resources,
        anomaly_share: 0.5,
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed ^ 0xDE40);
    let mut out = Vec::new();
    let labels = crate::generate::generate(
        &generate,
        &mut |topic: &'static str, key: &str, payload: &str, _ts: i64| {
            if topic != crate::generate::METRICS_TOPIC {
                return Ok(());
            }
            let valid = rng.random_range(0..1000) >= 20;
            let payload = if valid {
                payload.as_bytes().to_vec()
            } else {
                let mut event: serde_json::Value = serde_json::from_str(payload)?;
                events::corrupt(&mut event, &mut rng)
            };
            out.push(events::GeneratedEvent {
                key: key.to_string(),
                payload,
                valid,
            });
            Ok(())
        },
    )?;
    Ok((out, labels))
}

/// Scores the flagged windows against the labelled metric anomalies, per threshold.
/// Alerts by their highest severity, scored against the labels.
async fn alert_figures(
    ctx: &SessionContext,
    labels: &crate::generate::Labels,
) -> anyhow::Result<Vec<AlertFigures>> {
    use arrow::array::AsArray;
    const GRACE: i64 = 30 * 60_000_000;
    let anomalies: Vec<_> = labels
        .anomalies
        .iter()
        .filter(|a| a.metric != "cost" && a.metric != "price")
        .collect();
    if !ctx.table_exist("alerts")? {
        return Ok(Vec::new());
    }
    let rows = ctx
        .sql(
            "SELECT CAST(resource AS VARCHAR) AS r, \
             max(CASE severity WHEN 'critical' THEN 2 WHEN 'warning' THEN 1 ELSE 0 END) AS level, \
             CAST(min(started_at) AS BIGINT) AS a, CAST(max(ts) AS BIGINT) AS b \
             FROM alerts GROUP BY alert_id, resource",
        )
        .await?
        .collect()
        .await?;
    let mut spans: Vec<(String, i64, i64, i64)> = Vec::new();
    for b in &rows {
        let r = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8)?;
        let r = r.as_string::<i32>();
        let level = b.column(1).as_primitive::<arrow::datatypes::Int64Type>();
        let a = b.column(2).as_primitive::<arrow::datatypes::Int64Type>();
        let e = b.column(3).as_primitive::<arrow::datatypes::Int64Type>();
        for i in 0..b.num_rows() {
            spans.push((
                r.value(i).to_string(),
                level.value(i),
                a.value(i),
                e.value(i),
            ));
        }
    }
    let overlaps = |s: &(String, i64, i64, i64), a: &crate::generate::Anomaly| {
        a.subject == s.0 && s.2 <= a.end_us + GRACE && a.start_us <= s.3
    };
    Ok(["critical", "warning", "info"]
        .iter()
        .enumerate()
        .map(|(k, name)| {
            let level = 2 - k as i64;
            let mine: Vec<_> = spans.iter().filter(|s| s.1 == level).collect();
            AlertFigures {
                severity: name.to_string(),
                alerts: mine.len(),
                right: mine
                    .iter()
                    .filter(|s| anomalies.iter().any(|a| overlaps(s, a)))
                    .count(),
                found: anomalies
                    .iter()
                    .filter(|a| spans.iter().any(|s| s.1 >= level && overlaps(s, a)))
                    .count(),
                labelled: anomalies.len(),
            }
        })
        .collect())
}

/// Recommendations issued and their expected monthly savings.
async fn recommendation_figures(ctx: &SessionContext) -> anyhow::Result<(u64, f64)> {
    use arrow::array::AsArray;
    if !ctx.table_exist("recommendations_rightsizing")? {
        return Ok((0, 0.0));
    }
    // The latest revision of each recommendation counts.
    let b = ctx
        .sql(
            "SELECT CAST(count(*) AS BIGINT), CAST(coalesce(sum(s), 0) AS DOUBLE) FROM \
             (SELECT rec_id, last_value(expected_savings_usd['expected'] ORDER BY revision) AS s \
              FROM recommendations_rightsizing GROUP BY rec_id)",
        )
        .await?
        .collect()
        .await?;
    Ok(b.first().map_or((0, 0.0), |b| {
        (
            b.column(0)
                .as_primitive::<arrow::datatypes::Int64Type>()
                .value(0) as u64,
            b.column(1)
                .as_primitive::<arrow::datatypes::Float64Type>()
                .value(0),
        )
    }))
}

async fn detection(
    ctx: &SessionContext,
    labels: &crate::generate::Labels,
) -> anyhow::Result<Vec<Detection>> {
    use arrow::array::{Array, AsArray};
    const GRACE: i64 = 30 * 60_000_000;
    let anomalies: Vec<_> = labels
        .anomalies
        .iter()
        .filter(|a| a.metric != "cost" && a.metric != "price")
        .collect();
    let mut out: Vec<Detection> = THRESHOLDS
        .iter()
        .map(|&threshold| Detection {
            threshold,
            labelled: anomalies.len(),
            ..Detection::default()
        })
        .collect();
    if !ctx.table_exist("metric_anomaly_scores_5m")? {
        return Ok(out);
    }
    let lowest = THRESHOLDS.iter().copied().fold(f64::INFINITY, f64::min);
    let flagged = ctx
        .sql(&format!(
            "SELECT CAST(resource_id AS VARCHAR) AS r, CAST(window_end AS BIGINT) AS t, \
             anomaly_score AS s FROM metric_anomaly_scores_5m WHERE anomaly_score >= {lowest}"
        ))
        .await?
        .collect()
        .await?;
    let mut found = vec![vec![false; anomalies.len()]; THRESHOLDS.len()];
    for b in &flagged {
        let r = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8)?;
        let r = r.as_string::<i32>();
        let t = arrow::compute::cast(b.column(1), &arrow::datatypes::DataType::Int64)?;
        let t = t.as_primitive::<arrow::datatypes::Int64Type>();
        let s = arrow::compute::cast(b.column(2), &arrow::datatypes::DataType::Float64)?;
        let s = s.as_primitive::<arrow::datatypes::Float64Type>();
        for i in (0..b.num_rows()).filter(|&i| r.is_valid(i) && t.is_valid(i)) {
            let hits: Vec<usize> = anomalies
                .iter()
                .enumerate()
                .filter(|(_, a)| {
                    a.subject == r.value(i)
                        && t.value(i) > a.start_us
                        && t.value(i) <= a.end_us + GRACE
                })
                .map(|(j, _)| j)
                .collect();
            for (k, d) in out.iter_mut().enumerate() {
                if s.value(i) < d.threshold {
                    continue;
                }
                d.flagged += 1;
                d.flagged_in_anomaly += usize::from(!hits.is_empty());
                for &j in &hits {
                    found[k][j] = true;
                }
            }
        }
    }
    for (d, f) in out.iter_mut().zip(found) {
        d.found = f.iter().filter(|x| **x).count();
    }
    Ok(out)
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

/// The registry the demo scores with: `STRATUS_MODELS`, else the repository's
/// `models/registry` (where `scripts/train` registers).
fn models_registry() -> anyhow::Result<String> {
    if let Ok(r) = std::env::var("STRATUS_MODELS")
        && !r.is_empty()
    {
        return Ok(r);
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/registry");
    anyhow::ensure!(
        repo.is_dir(),
        "no model registry at {}; set STRATUS_MODELS to one (scripts/train fills it)",
        repo.display()
    );
    Ok(repo.display().to_string())
}

/// A session with the demo's Delta tables registered under their names.
async fn register(tables: &Path) -> anyhow::Result<SessionContext> {
    let ctx = SessionContext::new();
    for name in [
        "raw_metrics",
        "metric_features_1m",
        "metric_features_5m",
        "metric_anomaly_scores_5m",
        "alerts",
        "recommendations_rightsizing",
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

async fn count(ctx: &SessionContext, table: &str) -> anyhow::Result<i64> {
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

async fn print_summary(report: &DemoReport, ctx: &SessionContext) -> anyhow::Result<()> {
    crate::say!("");
    crate::say!("== summary ==");
    crate::say!(
        "events consumed: {}  valid → Delta: {}  invalid → cloud.metrics.dlq: {}",
        report.valid + report.invalid,
        report.valid,
        report.invalid
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
                 round(anomaly_score, 3) AS anomaly, round(c_robust_z, 3) AS robust_z, \
                 round(c_seasonal, 3) AS daily, round(c_seasonal_2, 3) AS weekly, \
                 round(c_cusum, 3) AS cusum, \
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
    crate::say!(
        "alerts (topic `alerts`, table `alerts`), by highest severity, against the labels:"
    );
    for a in &report.alerts {
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
    crate::say!(
        "rightsizing recommendations (topic `recommendations`): {}, expected savings {:.2} USD a month",
        report.recommendations,
        report.savings_usd_month
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
        report.produced as f64 / report.seconds.max(1e-9)
    );
    Ok(())
}
