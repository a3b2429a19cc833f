//! Crash safety of `stratus run` on the real broker and S3 server: the binary is killed with
//! SIGKILL at 24 random moments while it consumes a fixed input, restarted each time, then run
//! to the end. Afterwards the raw table holds every valid event exactly once, and the 1- and
//! 5-minute feature tables hold each window once, with the counts and sums of a reference
//! computed here — every event's contribution exactly once. Every invalid event is on the
//! dead-letter topic (at least once).

use std::collections::{BTreeMap, HashSet};
use std::io::{BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int32Type, Int64Type, TimestampMicrosecondType};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::producer::{FutureProducer, FutureRecord};

use stratus::kafka::producer_config;

use crate::{consume_all, create_topic, read_delta, setting, unique};

const S: i64 = 1_000_000;
const MINUTE: i64 = 60 * S;
const RESOURCES: usize = 12;
/// Kills in the suite; `scripts/soak` sets `STRATUS_SOAK_KILLS` for more.
fn kills() -> usize {
    std::env::var("STRATUS_SOAK_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(24)
}
const PARTITIONS: i32 = 3;

pub(crate) struct Event {
    pub resource: String,
    pub ts: i64,
    pub value: f64,
    pub valid: bool,
}

impl Event {
    pub(crate) fn json(&self) -> String {
        let ts = chrono::DateTime::from_timestamp_micros(self.ts)
            .unwrap()
            .to_rfc3339();
        let unit = if self.valid { "Percent" } else { "Parsecs" };
        format!(
            r#"{{"ts":"{ts}","account_id":"123456789012","region":"us-east-1","az":"us-east-1a","resource_id":"{}","service":"EC2","namespace":"AWS/EC2","metric":"CPUUtilization","value":{},"unit":"{unit}"}}"#,
            self.resource, self.value
        )
    }
}

/// `steps` data points every 4 s per resource (`steps` 600: 40 minutes), each up to 3 s out of
/// order (within the 10 s bound: nothing is late, so the result does not depend on where cycles
/// end); 2 % invalid.
pub(crate) fn events(base: i64, resources: usize, steps: i64) -> Vec<Event> {
    let mut rng = StdRng::seed_from_u64(77);
    let mut out = Vec::new();
    for step in 0..steps {
        for r in 0..resources {
            out.push(Event {
                resource: format!("i-crash{r:02}"),
                ts: base + step * 4 * S + rng.random_range(0..3 * S),
                value: f64::from(rng.random_range(0..10_000)) / 100.0,
                valid: rng.random_range(0..100) >= 2,
            });
        }
    }
    out
}

/// The partition each resource's events go to.
fn partition_of(resource: &str) -> i32 {
    resource.bytes().map(i32::from).sum::<i32>() % PARTITIONS
}

fn pipeline_yaml(topic: &str, group: &str) -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    format!(
        r#"name: crash
sources:
  metrics:
    kafka: {{topic: {topic}, group: {group}}}
    schema: {root}/schemas/cloud.metrics.json
    event_time: {{field: ts, max_out_of_orderness: 10s, allowed_lateness: 1m, idle_timeout: 10m}}
    dead_letter_topic: {topic}.dlq
stages:
  features_1m:
    sql: {root}/sql/cloud_metrics_1m.sql
    carry: {{columns: [mean], baseline: 10m, min_baseline: 3}}
  features_5m:
    sql: {root}/sql/cloud_metrics_5m.sql
sinks:
  raw: {{from: metrics, delta: {{table: raw, partition_by: [date]}}}}
  f1: {{from: features_1m, delta: {{table: f1, partition_by: [date]}}}}
  f5: {{from: features_5m, delta: {{table: f5}}}}
  f1_topic: {{from: features_1m, kafka: {{topic: {topic}.features, key: [resource_id]}}}}
commit: {{max_rows: 400, max_interval: 300ms, checkpoint_every: 5}}
"#
    )
}

/// Starts the pipeline; returns the child and a thread collecting its stderr.
fn start(
    pipeline: &std::path::Path,
    tables: &str,
    until_caught_up: bool,
) -> (std::process::Child, std::thread::JoinHandle<String>) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stratus"));
    cmd.args([
        "run",
        pipeline.to_str().unwrap(),
        "--metrics-addr",
        "127.0.0.1:0",
    ])
    .args(["--tables", tables])
    .stderr(Stdio::piped());
    if until_caught_up {
        cmd.arg("--until-caught-up");
    }
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut text);
        text
    });
    (child, log)
}

pub(crate) fn column<'a>(b: &'a RecordBatch, name: &str) -> &'a arrow::array::ArrayRef {
    b.column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name}"))
}

/// A string column as `Utf8` (Delta reads strings back as views).
pub(crate) fn strings(b: &RecordBatch, name: &str) -> Vec<String> {
    let c = arrow::compute::cast(column(b, name), &arrow::datatypes::DataType::Utf8).unwrap();
    c.as_string::<i32>()
        .iter()
        .map(|v| v.unwrap_or_default().to_string())
        .collect()
}

/// Per resource, the 1-minute windows in order as (window_start, mean, mean_delta).
pub(crate) fn carried(batches: &[RecordBatch]) -> BTreeMap<String, Vec<(i64, f64, Option<f64>)>> {
    let mut out: BTreeMap<String, Vec<(i64, f64, Option<f64>)>> = BTreeMap::new();
    for b in batches {
        let starts = column(b, "window_start").as_primitive::<TimestampMicrosecondType>();
        let means = column(b, "mean").as_primitive::<Float64Type>();
        let deltas = column(b, "mean_delta").as_primitive::<Float64Type>();
        for (i, resource) in strings(b, "resource_id").into_iter().enumerate() {
            let delta = deltas.is_valid(i).then(|| deltas.value(i));
            let row = (starts.value(i), means.value(i), delta);
            out.entry(resource).or_default().push(row);
        }
    }
    for rows in out.values_mut() {
        rows.sort_by_key(|r| r.0);
    }
    out
}

/// (resource, window_start) → (revision, samples, sum of values) of the latest revision in a
/// feature table; panics on a repeated (resource, window_start, revision).
pub(crate) fn feature_rows(batches: &[RecordBatch]) -> BTreeMap<(String, i64), (i32, i64, f64)> {
    let mut seen = HashSet::new();
    let mut latest: BTreeMap<(String, i64), (i32, i64, f64)> = BTreeMap::new();
    for b in batches {
        let resources = strings(b, "resource_id");
        let starts = column(b, "window_start").as_primitive::<TimestampMicrosecondType>();
        let revisions = column(b, "revision").as_primitive::<Int32Type>();
        let samples = column(b, "samples").as_primitive::<Int64Type>();
        let means = column(b, "mean").as_primitive::<Float64Type>();
        for (i, resource) in resources.into_iter().enumerate() {
            let id = (resource, starts.value(i));
            let rev = revisions.value(i);
            assert!(
                seen.insert((id.clone(), rev)),
                "{id:?} revision {rev} written twice"
            );
            let row = (
                rev,
                samples.value(i),
                means.value(i) * samples.value(i) as f64,
            );
            if latest.get(&id).is_none_or(|r| r.0 < rev) {
                latest.insert(id, row);
            }
        }
    }
    latest
}

/// The reference: (resource, window_start) → (samples, sum) over windows of `size`, for the
/// windows that end at or before `watermark`.
pub(crate) fn reference(
    events: &[Event],
    size: i64,
    watermark: i64,
) -> BTreeMap<(String, i64), (i64, f64)> {
    let mut out: BTreeMap<(String, i64), (i64, f64)> = BTreeMap::new();
    for e in events.iter().filter(|e| e.valid) {
        let start = e.ts - e.ts.rem_euclid(size);
        if start + size <= watermark {
            let a = out.entry((e.resource.clone(), start)).or_default();
            a.0 += 1;
            a.1 += e.value;
        }
    }
    out
}

pub(crate) fn assert_windows(
    name: &str,
    got: &BTreeMap<(String, i64), (i32, i64, f64)>,
    want: &BTreeMap<(String, i64), (i64, f64)>,
) {
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{name}: {} windows missing, e.g. {:?}; {} not expected, e.g. {:?}",
        missing.len(),
        missing.iter().take(3).collect::<Vec<_>>(),
        extra.len(),
        extra.iter().take(3).collect::<Vec<_>>()
    );
    for (id, (samples, sum)) in want {
        let (_, got_samples, got_sum) = got[id];
        assert_eq!(got_samples, *samples, "{name} {id:?}: samples");
        assert!(
            (got_sum - sum).abs() < 1e-6 * sum.abs().max(1.0),
            "{name} {id:?}: sum {got_sum} vs {sum}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_random_moments_loses_and_repeats_nothing() {
    let brokers = setting("STRATUS_KAFKA_BROKERS");
    let topic = unique("it-crash");
    create_topic(&topic, PARTITIONS).await;
    create_topic(&format!("{topic}.dlq"), 1).await;
    let base = (chrono::Utc::now().timestamp_micros() - 3 * 3600 * S) / MINUTE * MINUTE;
    let events = events(base, RESOURCES, 600);
    let producer: FutureProducer = producer_config(&brokers).create().unwrap();
    let payloads: Vec<String> = events.iter().map(Event::json).collect();
    let sends = events.iter().zip(&payloads).map(|(e, payload)| {
        producer.send(
            FutureRecord::to(&topic)
                .key(&e.resource)
                .partition(partition_of(&e.resource))
                .payload(payload),
            Duration::from_secs(30),
        )
    });
    for d in futures::future::join_all(sends).await {
        d.map_err(|(e, _)| e).unwrap();
    }

    let dir = std::env::temp_dir().join(unique("it-crash"));
    std::fs::create_dir_all(&dir).unwrap();
    let pipeline = dir.join("crash.yaml");
    std::fs::write(&pipeline, pipeline_yaml(&topic, &unique("crash-group"))).unwrap();
    let tables = format!(
        "s3://{}/{}",
        setting("STRATUS_S3_BUCKET"),
        unique("it-crash")
    );

    let mut rng = StdRng::seed_from_u64(2718);
    let mut replays = 0;
    let kills = kills();
    for kill in 0..kills {
        let (mut child, log) = start(&pipeline, &tables, false);
        // Kill at a random moment of the run: start-up, reading, a flush between two commits.
        let delay = Duration::from_millis(rng.random_range(300..2_500));
        let waited = Instant::now();
        while waited.elapsed() < delay {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "run {kill} exited early with {status}:\n{}",
                    log.join().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let text = log.join().unwrap();
        replays += text.matches("replaying it").count();
        assert!(!text.contains("panicked"), "run {kill}:\n{text}");
    }

    let (mut child, log) = start(&pipeline, &tables, true);
    let status = child.wait().unwrap();
    let text = log.join().unwrap();
    assert!(status.success(), "final run: {status}\n{text}");
    println!("soak: {kills} kills, {replays} restarts replayed a partly committed cycle");

    let valid: Vec<&Event> = events.iter().filter(|e| e.valid).collect();
    let raw = read_delta(&format!("{tables}/raw")).await;
    let mut ids = HashSet::new();
    for b in &raw {
        let ts = column(b, "ts").as_primitive::<TimestampMicrosecondType>();
        for (i, resource) in strings(b, "resource_id").into_iter().enumerate() {
            let id = (resource, ts.value(i));
            assert!(ids.insert(id.clone()), "raw row {id:?} written twice");
        }
    }
    assert_eq!(ids.len(), valid.len(), "raw rows");

    // The last flush read every partition to its end, and no partition was idle: the final
    // watermark is the smallest per-partition newest event time minus the 10 s bound.
    let mut newest = BTreeMap::new();
    for e in &valid {
        let n = newest.entry(partition_of(&e.resource)).or_insert(i64::MIN);
        *n = (*n).max(e.ts);
    }
    let watermark = newest.values().min().unwrap() - 10 * S;
    let f1_batches = read_delta(&format!("{tables}/f1")).await;
    // The carried features survived every restart: each window's delta is against the
    // window before it (and the first has none).
    for (resource, rows) in carried(&f1_batches) {
        assert_eq!(rows[0].2, None, "{resource}: first window");
        for pair in rows.windows(2) {
            let delta = pair[1]
                .2
                .unwrap_or_else(|| panic!("{resource}: no delta at {pair:?}"));
            assert!(
                (delta - (pair[1].1 - pair[0].1)).abs() < 1e-9,
                "{resource}: {pair:?}"
            );
        }
    }
    let f1 = feature_rows(&f1_batches);
    assert_windows("f1", &f1, &reference(&events, MINUTE, watermark));
    let f5 = feature_rows(&read_delta(&format!("{tables}/f5")).await);
    // 5-minute windows close on the 1-minute stage's watermark: one minute behind.
    assert_windows(
        "f5",
        &f5,
        &reference(&events, 5 * MINUTE, watermark - MINUTE),
    );

    let invalid = events.iter().filter(|e| !e.valid).count();
    // Dead letters are at least once: a cycle that no table committed is read again.
    let letters = consume_all(&format!("{topic}.dlq"));
    let distinct: HashSet<&Vec<u8>> = letters.iter().collect();
    assert_eq!(distinct.len(), invalid, "distinct dead letters");
    println!("{invalid} invalid events, {} dead letters", letters.len());
    std::fs::remove_dir_all(&dir).unwrap();
}
