//! A backfill as a user runs one: `stratus run --replay SOURCE=FILE --name NAME`. It needs no
//! broker — its Kafka sinks are left out, and its dead letters and late rows go to files beside
//! the tables — and it never shares a live pipeline's checkpoints: without a name of its own,
//! or under a live pipeline's name, it is refused before it writes anything.

use std::path::Path;
use std::process::{Command, Output};

use stratus::demo::events::metric_events;

use crate::{create_topic, delta_rows, produce, setting, unique};

/// A pipeline reading `topic`: raw events and 1-minute features to Delta, features to Kafka;
/// cycles of exactly 600 events.
fn pipeline(dir: &Path, topic: &str) -> std::path::PathBuf {
    let root = env!("CARGO_MANIFEST_DIR");
    let path = dir.join("metrics.yaml");
    std::fs::write(
        &path,
        format!(
            "name: metrics\n\
             sources:\n  metrics:\n    kafka: {{topic: {topic}}}\n    schema: {root}/schemas/cloud.metrics.json\n    event_time: {{field: ts}}\n\
             stages:\n  features_1m: {{sql: {root}/sql/cloud_metrics_1m.sql}}\n\
             sinks:\n  raw: {{from: metrics, delta: {{table: raw, partition_by: [date]}}}}\n  features: {{from: features_1m, delta: {{table: features}}}}\n  published: {{from: features_1m, kafka: {{topic: {topic}.features}}}}\n\
             commit: {{max_rows: 600, max_interval: 1h}}\n"
        ),
    )
    .unwrap();
    path
}

fn stratus(dir: &Path, brokers: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stratus"))
        .arg("run")
        .arg(dir.join("metrics.yaml"))
        .args([
            "--until-caught-up",
            "--metrics-addr",
            "127.0.0.1:0",
            "--tables",
        ])
        .arg(dir.join("tables"))
        .args(args)
        .env("STRATUS_KAFKA_BROKERS", brokers)
        .output()
        .unwrap()
}

/// Every line of every file under `dir`, files in name order.
fn lines_under(dir: &Path) -> Vec<String> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backfill_needs_no_broker_and_keeps_every_event() {
    let dir = std::env::temp_dir().join(unique("it-backfill"));
    std::fs::create_dir_all(&dir).unwrap();
    pipeline(&dir, "cloud.metrics.never-read");
    // Two hours of 5 instances, some invalid; then, in the second cycle, 10 events of three
    // hours before, too late for their windows; and a line that is not even UTF-8.
    let end = chrono::Utc::now().timestamp_millis();
    let events = metric_events(31, 600, 5, end, 30);
    let late = metric_events(32, 10, 5, end - 3 * 3_600_000, 0);
    let valid = events.iter().filter(|e| e.valid).count();
    let invalid = events.len() - valid;
    assert!(invalid > 0);
    let mut file = Vec::new();
    for e in events.iter().chain(&late) {
        file.extend_from_slice(&e.payload);
        file.push(b'\n');
    }
    file.extend_from_slice(b"\xff\xfe not an event\n");
    let input = dir.join("metrics.jsonl");
    std::fs::write(&input, &file).unwrap();
    let replay = format!("metrics={}", input.display());

    // Nothing listens on the brokers given: the backfill never asks.
    let out = stratus(
        &dir,
        "127.0.0.1:1",
        &["--replay", &replay, "--name", "metrics-backfill"],
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("the Kafka sinks published are left out"),
        "{log}"
    );
    assert!(
        !log.contains("librdkafka"),
        "a Kafka client was made: {log}"
    );

    let tables = dir.join("tables");
    assert_eq!(
        delta_rows(&tables.join("raw").display().to_string()).await,
        valid + late.len()
    );
    assert!(delta_rows(&tables.join("features").display().to_string()).await > 0);
    let side = tables.join("_stratus/metrics-backfill");
    // Every invalid event, in file order, with its line number and reason.
    let letters: Vec<serde_json::Value> = lines_under(&side.join("dead_letters/metrics"))
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(letters.len(), invalid + 1);
    let invalid_events = events.iter().enumerate().filter(|(_, e)| !e.valid);
    for (letter, (line, event)) in letters.iter().zip(invalid_events) {
        assert_eq!(letter["stratus.source.offset"], line as i64);
        assert_eq!(
            letter["payload"].as_str().unwrap().as_bytes(),
            event.payload.as_slice()
        );
        assert!(!letter["stratus.error.reason"].as_str().unwrap().is_empty());
    }
    let last = letters.last().unwrap();
    assert_eq!(last["payload_base64"], "//4gbm90IGFuIGV2ZW50");
    assert_eq!(
        last["stratus.source.offset"],
        (events.len() + late.len()) as i64
    );
    // The late events, once each, as the rows the window stage could not place.
    let late_rows = lines_under(&side.join("late/features_1m"));
    assert_eq!(late_rows.len(), late.len(), "{late_rows:?}");

    // Run again: everything is read, nothing is added anywhere.
    let out = stratus(
        &dir,
        "127.0.0.1:1",
        &["--replay", &replay, "--name", "metrics-backfill"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        delta_rows(&tables.join("raw").display().to_string()).await,
        valid + late.len()
    );
    assert_eq!(
        lines_under(&side.join("dead_letters/metrics")).len(),
        invalid + 1
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backfill_never_shares_a_live_pipelines_checkpoints() {
    let brokers = setting("STRATUS_KAFKA_BROKERS");
    let topic = unique("it-backfill-live");
    create_topic(&topic, 1).await;
    let dir = std::env::temp_dir().join(unique("it-backfill-live"));
    std::fs::create_dir_all(&dir).unwrap();
    pipeline(&dir, &topic);
    let events = metric_events(33, 50, 5, chrono::Utc::now().timestamp_millis(), 0);
    produce(&topic, &events).await;
    let input = dir.join("metrics.jsonl");
    let lines: Vec<u8> = events
        .iter()
        .flat_map(|e| [e.payload.as_slice(), b"\n"].concat())
        .collect();
    std::fs::write(&input, lines).unwrap();
    let replay = format!("metrics={}", input.display());

    // Without a name of its own, refused before it runs.
    let out = stratus(&dir, &brokers, &["--replay", &replay]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{log}");
    assert!(
        log.contains(
            "--replay runs a backfill, which must not share the checkpoints of the pipeline \
             `metrics`"
        ),
        "{log}"
    );
    assert!(log.contains("--name metrics-backfill"), "{log}");
    assert!(!dir.join("tables").exists(), "{log}");

    // The live pipeline, run under another name, then a backfill under that name: refused.
    let out = stratus(&dir, &brokers, &["--name", "metrics-live"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let raw = dir.join("tables/raw").display().to_string();
    assert_eq!(delta_rows(&raw).await, events.len());
    let out = stratus(
        &dir,
        &brokers,
        &["--replay", &replay, "--name", "metrics-live"],
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{log}");
    assert!(
        log.contains("the checkpoints of `metrics-live` under")
            && log.contains("are a live pipeline's: a backfill (--replay) never continues them"),
        "{log}"
    );
    assert_eq!(delta_rows(&raw).await, events.len());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `commit.max_bytes`: a cycle closes after the event that brings its payloads to the limit,
/// however many rows it allows; every event is committed once.
#[tokio::test(flavor = "multi_thread")]
async fn a_cycle_closes_at_its_byte_limit() {
    let dir = std::env::temp_dir().join(unique("it-max-bytes"));
    std::fs::create_dir_all(&dir).unwrap();
    // 300 events of one length each: 10 to a cycle.
    let base = chrono::Utc::now().timestamp() - 3_600;
    let lines: Vec<String> = (0..300)
        .map(|i| {
            let ts = chrono::DateTime::from_timestamp(base + i, 0)
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            format!(
                r#"{{"ts":"{ts}","account_id":"123456789012","region":"us-east-1","az":"us-east-1a","resource_id":"i-{:04}","service":"EC2","namespace":"AWS/EC2","metric":"CPUUtilization","value":{:.2},"unit":"Percent"}}"#,
                i % 7,
                (10 + i % 50) as f64 + 0.25
            )
        })
        .collect();
    assert!(lines.iter().all(|l| l.len() == lines[0].len()));
    std::fs::write(dir.join("events.jsonl"), lines.join("\n") + "\n").unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let file = dir.join("bytes.yaml");
    std::fs::write(
        &file,
        format!(
            "name: bytes\n\
             sources:\n  metrics:\n    file: {{path: events.jsonl}}\n    schema: {root}/schemas/cloud.metrics.json\n    event_time: {{field: ts}}\n\
             sinks:\n  raw: {{from: metrics, delta: {{table: raw}}}}\n\
             commit: {{max_rows: 100000, max_bytes: {}, max_interval: 1h}}\n",
            10 * lines[0].len()
        ),
    )
    .unwrap();
    let pipeline = stratus::pipeline::Pipeline::load(&file).await.unwrap();
    let tables = dir.join("tables").display().to_string();
    let brokers = setting("STRATUS_KAFKA_BROKERS");
    let config = stratus::job::run::RunConfig::backfill(&brokers, &tables, Default::default());
    let summary = stratus::job::run::run_to_end(&pipeline, &config)
        .await
        .unwrap();
    assert_eq!((summary.events, summary.invalid), (300, 0));
    assert_eq!(delta_rows(&format!("{tables}/raw")).await, 300);
    // One Delta commit per cycle: 30 of 10 events.
    let writes = std::fs::read_dir(format!("{tables}/raw/_delta_log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .contains(r#""operation":"WRITE""#)
        })
        .count();
    assert_eq!(writes, 30, "{summary:?}");
}
