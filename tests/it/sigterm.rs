//! The `stratus run` binary as an operator meets it: it serves /healthz, /readyz and /metrics,
//! and on SIGTERM flushes, commits and exits 0 with every consumed event in Delta; a SIGTERM
//! that comes while it is still starting (as Kubernetes may send one) stops it as cleanly.

use std::process::Command;
use std::time::Duration;

use stratus::demo::events::metric_events;

use crate::process::{Running, get};
use crate::{create_topic, delta_rows, produce, setting, unique};

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_flushes_commits_and_exits_zero() {
    let brokers = setting("STRATUS_KAFKA_BROKERS");
    let topic = unique("it-sigterm");
    create_topic(&topic, 2).await;
    let events = metric_events(9, 1_500, 10, chrono::Utc::now().timestamp_millis(), 0);
    produce(&topic, &events).await;

    let dir = std::env::temp_dir().join(unique("it-sigterm"));
    std::fs::create_dir_all(&dir).unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let pipeline = dir.join("p.yaml");
    std::fs::write(
        &pipeline,
        format!(
            "name: sigterm\nsources:\n  metrics:\n    kafka: {{topic: {topic}}}\n    schema: {root}/schemas/cloud.metrics.json\n    event_time: {{field: ts}}\nsinks:\n  raw: {{from: metrics, delta: {{table: raw, partition_by: [date]}}}}\n# A long interval and a large batch: only the shutdown flush commits.\ncommit: {{max_rows: 1000000, max_interval: 1h}}\n"
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
            .env("STRATUS_KAFKA_BROKERS", &brokers),
    );
    assert_eq!(get(&child.addr, "/healthz"), (200, "ok\n".to_string()));

    // Wait until every event has been consumed (it is then pending: nothing is committed yet).
    child.wait_for_metric(
        "stratus_events_in_total{pipeline=\"sigterm\",source=\"metrics\"}",
        events.len() as u64,
        Duration::from_secs(60),
    );
    assert_eq!(get(&child.addr, "/readyz").0, 200);
    assert!(
        !tables.join("raw/_delta_log").exists(),
        "nothing should be committed before SIGTERM"
    );

    let (exit, log) = child.terminate();
    assert!(exit.success(), "exit {exit:?}; stderr:\n{log}");
    assert!(log.contains("stopping: flushing and committing"), "{log}");
    assert!(
        !log.contains('\x1b'),
        "a log read from a pipe is plain text, without terminal colours:\n{log}"
    );

    let n = delta_rows(&tables.join("raw").display().to_string()).await;
    assert_eq!(n, events.len());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sigterm_while_starting_stops_it_cleanly_alone_and_in_a_group() {
    let topic = unique("it-sigterm-start");
    create_topic(&topic, 2).await;
    let dir = std::env::temp_dir().join(unique("it-sigterm-start"));
    std::fs::create_dir_all(&dir).unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let pipeline = dir.join("p.yaml");
    std::fs::write(
        &pipeline,
        format!(
            "name: sigterm_start\nsources:\n  metrics:\n    kafka: {{topic: {topic}, group: {topic}, key: [resource_id]}}\n    schema: {root}/schemas/cloud.metrics.json\n    event_time: {{field: ts}}\nsinks:\n  raw: {{from: metrics, delta: {{table: raw}}}}\n"
        ),
    )
    .unwrap();
    for cluster in [false, true] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_stratus"));
        command
            .args(["run", pipeline.to_str().unwrap()])
            .args(["--metrics-addr", "127.0.0.1:0", "--tables"])
            .arg(dir.join("tables"));
        if cluster {
            command.arg("--cluster");
        }
        // At once after the line that names its metrics address, before its source is up.
        let (exit, log) = Running::spawn(&mut command).terminate();
        assert!(
            exit.success(),
            "--cluster {cluster}: exit {exit:?}; stderr:\n{log}"
        );
        assert!(log.contains("stopping: flushing and committing"), "{log}");
        assert!(
            !log.contains('\x1b'),
            "a log read from a pipe is plain text, without terminal colours:\n{log}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
