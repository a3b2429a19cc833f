//! `stratus bench --rate R`: how soon a window's results are out once the watermark closes it,
//! on a live stream.
//!
//! In: a rate (events/s), seconds and keys. The bench produces `cloud.metrics` events at that
//! steady rate into a fresh topic, each stamped with the time it is produced (the keys in turn,
//! each every `keys / rate` seconds), while the bench pipeline reads the topic live, as a
//! process of its own run as `stratus run` runs it (not a backfill): its cycles end at
//! `max_rows`, `max_bytes` or `max_interval`, and as soon as the watermark closes a window. Its
//! window stages are the bench pipeline's with 1- and 5-second windows instead of 1 and 5
//! minutes, so that a minute gives a hundred firings to take percentiles of, and its event
//! time (the watermark's delay, the allowed lateness) scaled as they are. Out: for the
//! firings after the first tenth of the events (the pipeline's start), seconds from the close
//! to the results delivered to the output topic and committed to every Delta table: p50, p99
//! and max; the rate produced and read; the pipeline's peak RSS and CPU time. The close is
//! taken two ways: the start of the flush the closing event starts (the work of the flush
//! alone), and the closing event's append to Kafka (what a consumer of the results waits: the
//! read, and the wait behind the cycle before, too).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::{BenchError, EventTime, Result, RunReport, create_topic, percentile, pipeline_yaml};
use crate::demo::events::metric_event;
use crate::job::run::SlowCycle;
use crate::kafka::producer_config;
use crate::say;

/// What to measure.
#[derive(Debug, Clone)]
pub struct RateConfig {
    pub brokers: String,
    /// Events per second produced.
    pub rate: u64,
    pub seconds: u64,
    pub keys: usize,
    pub partitions: i32,
    /// The pipeline's `commit.max_rows`.
    pub max_rows: usize,
    /// The repository root (for the schema and SQL files).
    pub root: PathBuf,
    pub work_dir: PathBuf,
    /// Where the pipeline's tables go instead of `work_dir` (an s3:// URL or a directory).
    pub table_root: Option<String>,
}

/// Produces at the rate while the pipeline reads live, and prints the latencies.
pub async fn rate(config: &RateConfig) -> Result<()> {
    std::fs::create_dir_all(&config.work_dir)?;
    let stamp = chrono::Utc::now().timestamp_millis();
    let name = format!("bench-rate-{stamp}");
    let topic = format!("stratus-bench-rate-{stamp}");
    let events = config.rate * config.seconds;
    say!(
        "stratus bench --rate: {} events/s for {} s ({events} events), {} keys, {} partitions, cycles of at most {} events or 1 s, 2 cores",
        config.rate,
        config.seconds,
        config.keys,
        config.partitions,
        config.max_rows
    );
    create_topic(&config.brokers, &topic, config.partitions).await?;
    let file = seconds_pipeline(config, &name, &topic)?;
    let mut child = tokio::process::Command::new(std::env::current_exe()?);
    child
        .args(["bench", "--brokers", &config.brokers, "--events"])
        .arg(events.to_string())
        .arg("--live-pipeline")
        .arg(&file);
    if let Some(root) = &config.table_root {
        child.args(["--tables", root]);
    }
    let child = child
        .stderr(std::process::Stdio::inherit())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(BenchError::Start)?;
    let produced = produce(config, &topic).await?;
    say!("produced {events} events at {produced:.0} events/s; the pipeline reads on to the last");
    let out = child.wait_with_output().await?;
    if !out.status.success() {
        return Err(BenchError::RunFailed {
            file,
            status: out.status,
        });
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let report: RunReport = serde_json::from_str(line).map_err(|source| BenchError::Report {
        line: line.to_string(),
        source,
    })?;
    let summary = &report.summary;
    let measured = |all: &[f64]| {
        let mut v = all
            .get(report.warmup_firings..)
            .unwrap_or_default()
            .to_vec();
        v.sort_by(f64::total_cmp);
        v
    };
    let (topic_s, delta_s) = (
        measured(&summary.window_topic_latencies),
        measured(&summary.window_latencies),
    );
    let known = |all: &[Option<f64>]| -> Vec<f64> {
        let mut v: Vec<f64> = all
            .get(report.warmup_firings..)
            .unwrap_or_default()
            .iter()
            .flatten()
            .copied()
            .collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let (event_topic_s, event_delta_s) = (
        known(&summary.window_event_topic_latencies),
        known(&summary.window_event_latencies),
    );
    say!("");
    say!("| window close → | firings | p50 (ms) | p99 (ms) | max (ms) |");
    say!("| --- | ---: | ---: | ---: | ---: |");
    for (what, v) in [
        ("delivered to the topic, from the flush", &topic_s),
        ("committed to Delta, from the flush", &delta_s),
        (
            "delivered to the topic, from the closing event",
            &event_topic_s,
        ),
        ("committed to Delta, from the closing event", &event_delta_s),
    ] {
        say!(
            "| {what} | {} | {:.0} | {:.0} | {:.0} |",
            v.len(),
            1000.0 * percentile(v, 50.0),
            1000.0 * percentile(v, 99.0),
            1000.0 * v.last().copied().unwrap_or(f64::NAN)
        );
    }
    say!("");
    let phases = summary
        .phase_seconds
        .iter()
        .map(|(phase, secs)| format!("{phase} {secs:.2}"))
        .collect::<Vec<_>>()
        .join(", ");
    say!("the slowest firings, from the flush to every sink, and their cycles' phases (s):");
    let after_start = |s: &&SlowCycle| s.after_firings >= report.warmup_firings;
    for slow in summary.slowest_firings.iter().filter(after_start).take(5) {
        let phases = slow
            .phases
            .iter()
            .map(|(phase, secs)| format!("{phase} {secs:.3}"))
            .collect::<Vec<_>>()
            .join(", ");
        say!("- {:.0} ms: {phases}", 1000.0 * slow.seconds);
    }
    say!("");
    say!(
        "read {} events in {:.1} s; peak RSS {} MiB; seconds per phase: {phases}",
        summary.events,
        report.seconds,
        report
            .peak_rss_mib
            .map_or("n/a".to_string(), |m| format!("{m:.0}"))
    );
    say!(
        "CPU time of the pipeline (user and system, every thread): {}",
        report.cpu_text(summary.events)
    );
    Ok(())
}

/// [`MINUTE_WINDOWS`](super::MINUTE_WINDOWS) sixty times faster, as the windows are: the
/// watermark trails by a sixtieth of 10 s, and a closed window waits one window's length for
/// late rows, as a 1-minute window waits a minute. A minute's lateness here would keep
/// sixty-one closed 1-second windows in every stage.
const SECOND_WINDOWS: EventTime = EventTime {
    max_out_of_orderness: "167ms",
    allowed_lateness: "1s",
};

/// Writes the bench pipeline `name` over `topic` (group `<topic>-pipeline`) with its window
/// stages' SQL at 1- and 5-second windows and its event time scaled as they are; returns its
/// file.
pub(super) fn seconds_pipeline(config: &RateConfig, name: &str, topic: &str) -> Result<PathBuf> {
    let sql = config.work_dir.join("sql");
    std::fs::create_dir_all(&sql)?;
    for (file, from, to) in [
        ("cloud_metrics_1m.sql", "'1 minute'", "'1 second'"),
        ("cloud_metrics_5m.sql", "'5 minutes'", "'5 seconds'"),
    ] {
        let text = std::fs::read_to_string(config.root.join("sql").join(file))?;
        std::fs::write(sql.join(file), text.replace(from, to))?;
    }
    let file = config.work_dir.join(format!("{name}.yaml"));
    let source = format!("kafka: {{topic: {topic}, group: {topic}-pipeline, key: [resource_id]}}");
    std::fs::write(
        &file,
        pipeline_yaml(
            &config.root,
            &sql,
            name,
            &source,
            config.max_rows,
            SECOND_WINDOWS,
        ),
    )?;
    Ok(file)
}

/// Produces `rate × seconds` events at a steady rate, each stamped when it is produced; returns
/// the rate reached.
pub(super) async fn produce(config: &RateConfig, topic: &str) -> Result<f64> {
    let producer: FutureProducer = producer_config(&config.brokers)
        .set("linger.ms", "5")
        .create()?;
    let total = config.rate * config.seconds;
    let keys = config.keys.max(1);
    let mut rng = StdRng::seed_from_u64(7);
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut sent = 0;
    while sent < total {
        tick.tick().await;
        let due = ((started.elapsed().as_secs_f64() * config.rate as f64) as u64).min(total);
        let now_ms = chrono::Utc::now().timestamp_millis();
        while sent < due {
            let (event, key) = metric_event(sent as usize % keys, now_ms, &mut rng);
            let payload = event.to_string();
            let record = FutureRecord::to(topic).key(&key).payload(&payload);
            match producer.send_result(record) {
                // Delivery is not awaited one by one: the queue is flushed at the end.
                Ok(_) => sent += 1,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((e, _)) => return Err(BenchError::Load(e)),
            }
        }
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    tokio::task::block_in_place(|| rdkafka::producer::Producer::flush(&producer, None))?;
    Ok(rate)
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::{RateConfig, seconds_pipeline};
    use crate::bench::{MINUTE_WINDOWS, pipeline_yaml};
    use crate::pipeline::Pipeline;

    /// The event-time durations of a bench pipeline file: per window stage its window's span,
    /// then its source's watermark delay and allowed lateness (µs).
    async fn durations(file: &Path) -> (Vec<i64>, i64, i64) {
        let p = Pipeline::load(file)
            .await
            .expect("the bench pipeline loads");
        let spans: Vec<i64> = p
            .stages
            .iter()
            .filter_map(|s| s.window())
            .map(|w| w.span())
            .collect();
        let source = &p.sources[0];
        (spans, source.max_out_of_orderness, source.allowed_lateness)
    }

    /// The rate bench runs the bench pipeline sixty times faster: its windows, the watermark's
    /// delay and the allowed lateness all scaled alike, so that it keeps the windows the
    /// minute pipeline keeps (and not sixty closed ones for late rows).
    #[tokio::test]
    async fn the_rate_bench_scales_event_time_with_its_windows() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let work_dir =
            std::env::temp_dir().join(format!("stratus-rate-yaml-{}", std::process::id()));
        std::fs::create_dir_all(&work_dir).unwrap();
        let config = RateConfig {
            brokers: "127.0.0.1:9".into(),
            rate: 1,
            seconds: 1,
            keys: 1,
            partitions: 1,
            max_rows: 1000,
            root: root.clone(),
            work_dir: work_dir.clone(),
            table_root: None,
        };
        let seconds = seconds_pipeline(&config, "seconds", "t").unwrap();
        let minutes = work_dir.join("minutes.yaml");
        let source = "kafka: {topic: t, group: t-pipeline, key: [resource_id]}";
        let yaml = pipeline_yaml(
            &root,
            &root.join("sql"),
            "minutes",
            source,
            1000,
            MINUTE_WINDOWS,
        );
        std::fs::write(&minutes, yaml).unwrap();

        let (fast_spans, fast_delay, fast_lateness) = durations(&seconds).await;
        let (spans, delay, lateness) = durations(&minutes).await;
        std::fs::remove_dir_all(&work_dir).ok();
        assert_eq!(
            spans,
            [60_000_000, 300_000_000],
            "the minute pipeline's windows"
        );
        assert_eq!(
            fast_spans,
            [1_000_000, 5_000_000],
            "the rate bench's windows"
        );
        assert_eq!(lateness, 60 * fast_lateness, "allowed lateness, scaled");
        // 10 s over 60 is written to the millisecond.
        assert!(
            (delay - 60 * fast_delay).abs() <= 60_000,
            "the watermark's delay, scaled: {delay} µs against 60 × {fast_delay}"
        );
    }
}
