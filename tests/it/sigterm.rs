//! The `stratus run` binary as an operator meets it: it serves /healthz, /readyz and /metrics,
//! and on SIGTERM flushes, commits and exits 0 with every consumed event in Delta.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::producer::{FutureProducer, FutureRecord};

use stratus::demo::events::metric_events;
use stratus::source::kafka::producer_config;

use crate::{create_topic, delta_rows, setting, unique};

/// A plain HTTP/1.0 GET on loopback; returns (status, body).
fn get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (status, body)
}

/// Stops the pipeline process if the test fails before it does.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn metric(text: &str, prefix: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_flushes_commits_and_exits_zero() {
    let brokers = setting("STRATUS_KAFKA_BROKERS");
    let topic = unique("it-sigterm");
    create_topic(&topic, 2).await;
    let events = metric_events(9, 1_500, 10, chrono::Utc::now().timestamp_millis(), 0);
    let producer: FutureProducer = producer_config(&brokers).create().unwrap();
    let sends = events.iter().map(|e| {
        producer.send(
            FutureRecord::to(&topic).key(&e.key).payload(&e.payload),
            Duration::from_secs(30),
        )
    });
    for d in futures::future::join_all(sends).await {
        d.map_err(|(e, _)| e).unwrap();
    }

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
    let child = Command::new(env!("CARGO_BIN_EXE_stratus"))
        .args([
            "run",
            pipeline.to_str().unwrap(),
            "--metrics-addr",
            "127.0.0.1:0",
            "--tables",
        ])
        .arg(&tables)
        .env("STRATUS_KAFKA_BROKERS", &brokers)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    // The first line names the bound metrics address.
    let mut stderr = BufReader::new(child.0.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("no metrics address in {line:?}"))
        .to_string();
    assert_eq!(get(&addr, "/healthz"), (200, "ok\n".to_string()));

    // Wait until every event has been consumed (it is then pending: nothing is committed yet).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, text) = get(&addr, "/metrics");
        let seen = metric(
            &text,
            "stratus_events_in_total{pipeline=\"sigterm\",source=\"metrics\"}",
        );
        if seen == Some(events.len() as u64) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "consumed {seen:?} of {}",
            events.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(get(&addr, "/readyz").0, 200);
    assert!(
        !tables.join("raw/_delta_log").exists(),
        "nothing should be committed before SIGTERM"
    );

    let status = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.0.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert!(exit.success(), "exit {exit:?}; stderr:\n{rest}");
    assert!(rest.contains("stopping: flushing and committing"), "{rest}");

    let n = delta_rows(&tables.join("raw").display().to_string()).await;
    assert_eq!(n, events.len());
    std::fs::remove_dir_all(&dir).unwrap();
}
