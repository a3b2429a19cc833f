//! A live pipeline with nothing to read, as `stratus run` runs one, waits for input without
//! spinning: on a file read to its end (and reads the lines appended to it later, a line
//! written in two parts as one), and on a topic with nothing new.

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use stratus::demo::events::{GeneratedEvent, metric_events};

use crate::process::{Running, metric};
use crate::{create_topic, delta_rows, produce, setting, unique};

/// The CPU time the process `pid` has used so far (user and system, from `/proc/PID/stat`).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // After the command name in parentheses: state is field 3, utime 14 and stime 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // The kernel's USER_HZ: 100 on every Linux this runs on (`getconf CLK_TCK`).
    Duration::from_millis(ticks * 10)
}

/// Asserts that the process uses well under a core over a few seconds: a loop that came
/// straight back with nothing to read would use the whole window's worth.
fn assert_idle(child: &Running) {
    let window = Duration::from_secs(3);
    let (used, started) = (cpu_time(child.pid()), Instant::now());
    std::thread::sleep(window);
    let used = cpu_time(child.pid()) - used;
    let elapsed = started.elapsed();
    assert!(
        used < elapsed / 4,
        "{used:?} of CPU in {elapsed:?} with nothing to read"
    );
}

fn run(pipeline: &std::path::Path, tables: &std::path::Path) -> Running {
    Running::spawn(
        Command::new(env!("CARGO_BIN_EXE_stratus"))
            .args([
                "run",
                pipeline.to_str().unwrap(),
                "--metrics-addr",
                "127.0.0.1:0",
                "--tables",
            ])
            .arg(tables)
            .env("STRATUS_KAFKA_BROKERS", setting("STRATUS_KAFKA_BROKERS")),
    )
}

fn append(file: &std::path::Path, events: &[GeneratedEvent]) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(file)
        .unwrap();
    for e in events {
        f.write_all(&e.payload).unwrap();
        f.write_all(b"\n").unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_read_to_its_end_is_waited_on_without_spinning_and_read_on_when_it_grows() {
    let dir = std::env::temp_dir().join(unique("it-tail"));
    std::fs::create_dir_all(&dir).unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let input = dir.join("events.jsonl");
    let now = chrono::Utc::now().timestamp_millis();
    let first = metric_events(41, 300, 5, now - 60_000, 0);
    let more = metric_events(42, 200, 5, now, 0);
    append(&input, &first);
    let pipeline = dir.join("p.yaml");
    std::fs::write(
        &pipeline,
        format!(
            "name: tail\nsources:\n  metrics:\n    file: {{path: {}}}\n    schema: {root}/schemas/cloud.metrics.json\n    event_time: {{field: ts}}\nsinks:\n  raw: {{from: metrics, delta: {{table: raw, partition_by: [date]}}}}\ncommit: {{max_interval: 1s}}\n",
            input.display()
        ),
    )
    .unwrap();
    let tables = dir.join("tables");
    let child = run(&pipeline, &tables);
    let read = "stratus_events_in_total{pipeline=\"tail\",source=\"metrics\"}";
    child.wait_for_metric(read, first.len() as u64, Duration::from_secs(60));
    // A writer that appends a line in two writes: the first half waits for the second (it is
    // neither an event nor an invalid one), meanwhile nothing spins.
    let line = &more[0].payload;
    let (head, rest) = line.split_at(line.len() / 2);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&input)
        .unwrap()
        .write_all(head)
        .unwrap();
    assert_idle(&child);

    std::fs::OpenOptions::new()
        .append(true)
        .open(&input)
        .unwrap()
        .write_all(&[rest, b"\n"].concat())
        .unwrap();
    append(&input, &more[1..]);
    let metrics = child.wait_for_metric(
        read,
        (first.len() + more.len()) as u64,
        Duration::from_secs(60),
    );
    let invalid = "stratus_events_invalid_total{pipeline=\"tail\",source=\"metrics\"}";
    assert_eq!(metric(&metrics, invalid), Some(0));
    let (exit, log) = child.terminate();
    assert!(exit.success(), "exit {exit:?}; stderr:\n{log}");
    let rows = delta_rows(&tables.join("raw").display().to_string()).await;
    assert_eq!(rows, first.len() + more.len());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_topic_read_to_its_end_is_waited_on_without_spinning() {
    let topic = unique("it-idle");
    create_topic(&topic, 4).await;
    let events = metric_events(43, 200, 5, chrono::Utc::now().timestamp_millis(), 0);
    produce(&topic, &events).await;
    let dir = std::env::temp_dir().join(unique("it-idle"));
    std::fs::create_dir_all(&dir).unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let pipeline = dir.join("p.yaml");
    std::fs::write(
        &pipeline,
        format!(
            "name: idle\nsources:\n  metrics:\n    kafka: {{topic: {topic}}}\n    schema: {root}/schemas/cloud.metrics.json\n    event_time: {{field: ts}}\nstages:\n  features_1m: {{sql: {root}/sql/cloud_metrics_1m.sql}}\nsinks:\n  raw: {{from: metrics, delta: {{table: raw, partition_by: [date]}}}}\n  features: {{from: features_1m, delta: {{table: features}}}}\ncommit: {{max_interval: 1s}}\n"
        ),
    )
    .unwrap();
    let tables = dir.join("tables");
    let child = run(&pipeline, &tables);
    child.wait_for_metric(
        "stratus_events_in_total{pipeline=\"idle\",source=\"metrics\"}",
        events.len() as u64,
        Duration::from_secs(60),
    );
    assert_idle(&child);
    let (exit, log) = child.terminate();
    assert!(exit.success(), "exit {exit:?}; stderr:\n{log}");
    std::fs::remove_dir_all(&dir).unwrap();
}
