//! A backlog under a memory limit (`stratus run --memory-limit`), on the real broker: the same
//! events, waiting in Kafka when the pipeline starts, are read twice into tables of their own —
//! first with no limit, in cycles as large as the pipeline allows (its `commit.max_rows` is past
//! the backlog, its `max_bytes` 256 MiB), then with a limit three quarters of the way
//! from what that first run held at its start to its peak. Under the limit the process's peak resident set stays
//! below it, the backlog is read in more, smaller cycles, and both runs land every event once
//! in the raw table and every window once in the features table.

use std::path::Path;
use std::process::Command;

use stratus::demo::events::metric_events;

use crate::{create_topic, delta_rows, produce, unique};

/// Events waiting: 150 minutes of 2,000 resources, about 95 MB of JSON.
const EVENTS: usize = 300_000;
const RESOURCES: usize = 2_000;

/// The pipeline: raw events and 1-minute features to Delta, each cycle as large as allowed.
fn pipeline(dir: &Path, topic: &str, name: &str) -> std::path::PathBuf {
    let root = env!("CARGO_MANIFEST_DIR");
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            "name: {name}\n\
             sources:\n  metrics:\n    kafka: {{topic: {topic}, group: {name}}}\n    schema: {root}/schemas/cloud.metrics.json\n    event_time: {{field: ts}}\n\
             stages:\n  features_1m: {{sql: {root}/sql/cloud_metrics_1m.sql}}\n\
             sinks:\n  raw: {{from: metrics, delta: {{table: raw}}}}\n  features: {{from: features_1m, delta: {{table: features}}}}\n\
             commit: {{max_rows: 1000000, max_bytes: 256MiB, max_interval: 1h}}\n"
        ),
    )
    .unwrap();
    path
}

/// What a run to the end of the backlog said of itself.
struct Run {
    cycles: u64,
    /// MiB resident when its first cycle was sized, and at its peak.
    start_mib: u64,
    peak_mib: u64,
    log: String,
}

fn run(dir: &Path, topic: &str, name: &str, limit: &str) -> Run {
    let file = pipeline(dir, topic, name);
    let out = Command::new(env!("CARGO_BIN_EXE_stratus"))
        .arg("run")
        .arg(&file)
        .args(["--until-caught-up", "--metrics-addr", "127.0.0.1:0"])
        .args(["--memory-limit", limit, "--tables"])
        .arg(dir.join(name))
        .env("RUST_LOG", format!("{},stratus=info", stratus::cli::QUIET))
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{name}: {log}");
    let after = |prefix: &str| -> u64 {
        let line = log
            .lines()
            .find_map(|l| l.split(prefix).nth(1))
            .unwrap_or_else(|| panic!("{name}: no {prefix:?} in\n{log}"));
        line.split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    Run {
        cycles: after(" too late) in "),
        start_mib: after("resident set at start "),
        peak_mib: after("peak resident set "),
        log,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backlog_under_a_memory_limit_stays_below_it_and_lands_once() {
    let topic = unique("it-memory");
    create_topic(&topic, 4).await;
    let end = chrono::Utc::now().timestamp_millis();
    let events = metric_events(47, EVENTS, RESOURCES, end, 0);
    produce(&topic, &events).await;
    let dir = std::env::temp_dir().join(unique("it-memory"));
    std::fs::create_dir_all(&dir).unwrap();

    let free = run(&dir, &topic, "unlimited", "none");
    assert!(
        free.peak_mib > free.start_mib + 64,
        "the backlog in one cycle holds little: {} MiB at start, {} MiB at peak",
        free.start_mib,
        free.peak_mib
    );
    let limit = free.start_mib + (free.peak_mib - free.start_mib) * 3 / 4;
    let held = run(&dir, &topic, "limited", &format!("{limit}MiB"));
    eprintln!(
        "no limit: {} cycles, {} MiB at start, {} MiB at peak; a {limit} MiB limit: {} cycles, \
         {} MiB at start, {} MiB at peak",
        free.cycles, free.start_mib, free.peak_mib, held.cycles, held.start_mib, held.peak_mib
    );
    assert!(
        held.peak_mib < limit,
        "peak {} MiB over the {limit} MiB limit (started at {} MiB; without a limit the peak \
         was {} MiB)\n{}",
        held.peak_mib,
        held.start_mib,
        free.peak_mib,
        crate::process::tail(&held.log, 30)
    );
    assert!(
        held.cycles > free.cycles,
        "{} cycles under the limit, {} without",
        held.cycles,
        free.cycles
    );

    let windows = delta_rows(&dir.join("unlimited/features").display().to_string()).await;
    assert!(windows > 0);
    for name in ["unlimited", "limited"] {
        let raw = delta_rows(&dir.join(format!("{name}/raw")).display().to_string()).await;
        assert_eq!(raw, EVENTS, "{name}: raw rows");
        let features =
            delta_rows(&dir.join(format!("{name}/features")).display().to_string()).await;
        assert_eq!(features, windows, "{name}: window rows");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
