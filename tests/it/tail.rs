//! A live pipeline on a file, as `stratus run` runs one: it reads the lines appended to the
//! file after it reached its end, and waits for them without spinning.

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use stratus::demo::events::{GeneratedEvent, metric_events};

use crate::process::Running;
use crate::{delta_rows, setting, unique};

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
    let child = Running::spawn(
        Command::new(env!("CARGO_BIN_EXE_stratus"))
            .args([
                "run",
                pipeline.to_str().unwrap(),
                "--metrics-addr",
                "127.0.0.1:0",
                "--tables",
            ])
            .arg(&tables)
            .env("STRATUS_KAFKA_BROKERS", setting("STRATUS_KAFKA_BROKERS")),
    );
    let read = "stratus_events_in_total{pipeline=\"tail\",source=\"metrics\"}";
    child.wait_for_metric(read, first.len() as u64, Duration::from_secs(60));

    // At the file's end, with nothing to do but look for more: a loop that came straight back
    // would use the whole window's worth of a core.
    let window = Duration::from_secs(3);
    let (used, started) = (cpu_time(child.pid()), Instant::now());
    std::thread::sleep(window);
    let used = cpu_time(child.pid()) - used;
    let elapsed = started.elapsed();
    assert!(
        used < elapsed / 4,
        "{used:?} of CPU in {elapsed:?} with nothing to read"
    );

    append(&input, &more);
    child.wait_for_metric(
        read,
        (first.len() + more.len()) as u64,
        Duration::from_secs(60),
    );
    let (exit, log) = child.terminate();
    assert!(exit.success(), "exit {exit:?}; stderr:\n{log}");
    let rows = delta_rows(&tables.join("raw").display().to_string()).await;
    assert_eq!(rows, first.len() + more.len());
    std::fs::remove_dir_all(&dir).unwrap();
}
