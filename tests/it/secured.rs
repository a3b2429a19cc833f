//! A pipeline through the broker's SASL_SSL listener (SCRAM-SHA-512 over TLS, a CA made by
//! `scripts/test-env`), as on MSK or Confluent Cloud: the worker's properties file says how to
//! connect, the pipeline file names its user and takes its password from the environment. Every
//! Kafka client of the run — source, sink, dead letters — goes through it, and the password is
//! never in the log or on /metrics; a wrong one fails the run at once, saying why.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use stratus::demo::events::metric_events;
use stratus::kafka::{KafkaConnection, KafkaProperties};

use crate::process::{Running, get};
use crate::{consume_all, create_topic, delta_rows, produce_with, setting, unique};

/// The worker's side: how to reach the SASL_SSL listener, the password left to the pipeline.
fn worker_properties(dir: &Path) -> PathBuf {
    let path = dir.join("client.properties");
    std::fs::write(
        &path,
        format!(
            "# the test broker's secured listener\nsecurity.protocol=SASL_SSL\n\
             sasl.mechanism=SCRAM-SHA-512\nssl.ca.location={}\n",
            setting("STRATUS_KAFKA_CA")
        ),
    )
    .unwrap();
    path
}

/// A raw-ingest pipeline from `topic` to a Delta table and the topic `<topic>.out`, whose user
/// and password (from `$KAFKA_PASSWORD`) are its own.
fn pipeline(dir: &Path, topic: &str) -> PathBuf {
    let root = env!("CARGO_MANIFEST_DIR");
    let path = dir.join("secured.yaml");
    std::fs::write(
        &path,
        format!(
            "name: secured\n\
             sources:\n  metrics:\n    kafka: {{topic: {topic}}}\n    schema: {root}/schemas/cloud.metrics.json\n    event_time: {{field: ts}}\n    dead_letter_topic: {topic}.dlq\n\
             kafka:\n  properties:\n    sasl.username: {user}\n    sasl.password: ${{env:KAFKA_PASSWORD}}\n\
             sinks:\n  raw: {{from: metrics, delta: {{table: raw, partition_by: [date]}}}}\n  out: {{from: metrics, kafka: {{topic: {topic}.out}}}}\n\
             commit: {{max_rows: 1000000, max_interval: 1h}}\n",
            user = setting("STRATUS_KAFKA_SASL_USERNAME"),
        ),
    )
    .unwrap();
    path
}

fn run(dir: &Path, topic: &str, password: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_stratus"));
    c.args(["run", "--metrics-addr", "127.0.0.1:0", "--kafka-config"])
        .arg(worker_properties(dir))
        .arg("--tables")
        .arg(dir.join("tables"))
        .arg(pipeline(dir, topic))
        .env(
            "STRATUS_KAFKA_BROKERS",
            setting("STRATUS_KAFKA_SASL_BROKERS"),
        )
        .env("KAFKA_PASSWORD", password)
        // Everything Stratus logs, and librdkafka's security debugging.
        .env(
            "RUST_LOG",
            "debug,datafusion=info,deltalake=info,hyper=info,h2=info",
        );
    c
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pipeline_runs_through_sasl_ssl_and_never_shows_its_password() {
    let password = setting("STRATUS_KAFKA_SASL_PASSWORD");
    let topic = unique("it-secured");
    for t in [
        topic.clone(),
        format!("{topic}.out"),
        format!("{topic}.dlq"),
    ] {
        create_topic(&t, 1).await;
    }
    // Produced through the secured listener too, by the connection Stratus's own clients use.
    let properties: KafkaProperties = [
        ("security.protocol", "SASL_SSL".to_string()),
        ("sasl.mechanism", "SCRAM-SHA-512".to_string()),
        ("sasl.username", setting("STRATUS_KAFKA_SASL_USERNAME")),
        ("sasl.password", password.clone()),
        ("ssl.ca.location", setting("STRATUS_KAFKA_CA")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let kafka = KafkaConnection::new(&setting("STRATUS_KAFKA_SASL_BROKERS"), &properties).unwrap();
    let events = metric_events(17, 1_000, 10, chrono::Utc::now().timestamp_millis(), 50);
    let valid = events.iter().filter(|e| e.valid).count();
    assert!(valid > 0 && valid < events.len(), "{valid} valid");
    produce_with(&kafka.producer().create().unwrap(), &topic, &events).await;

    let dir = std::env::temp_dir().join(unique("it-secured"));
    std::fs::create_dir_all(&dir).unwrap();
    let child = Running::spawn(&mut run(&dir, &topic, &password));
    child.wait_for_metric(
        "stratus_events_in_total{pipeline=\"secured\",source=\"metrics\"}",
        events.len() as u64,
        Duration::from_secs(60),
    );
    let (_, metrics) = get(&child.addr, "/metrics");
    let (exit, log) = child.terminate();
    assert!(exit.success(), "exit {exit:?}; log:\n{log}");
    assert!(
        log.contains("(SASL_SSL, SCRAM-SHA-512 as stratus)"),
        "the log says how Kafka was reached:\n{log}"
    );
    assert!(!log.contains(&password), "the password is in the log");
    assert!(!metrics.contains(&password), "the password is on /metrics");

    let raw = dir.join("tables/raw").display().to_string();
    assert_eq!(delta_rows(&raw).await, valid);
    // Written through the secured listener, read back through the plaintext one.
    assert_eq!(consume_all(&format!("{topic}.out")).len(), valid);
    assert_eq!(
        consume_all(&format!("{topic}.dlq")).len(),
        events.len() - valid
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_password_fails_the_run_at_once_and_is_not_echoed() {
    let topic = unique("it-secured-refused");
    create_topic(&topic, 1).await;
    let dir = std::env::temp_dir().join(unique("it-secured-refused"));
    std::fs::create_dir_all(&dir).unwrap();
    let wrong = "not-the-password-4f1d";
    let out = run(&dir, &topic, wrong).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{log}");
    let user = setting("STRATUS_KAFKA_SASL_USERNAME");
    let expected = format!(
        "stratus: cannot reach Kafka at {} (SASL_SSL, SCRAM-SHA-512 as {user}): ",
        setting("STRATUS_KAFKA_SASL_BROKERS")
    );
    assert!(log.contains(&expected), "{log}");
    assert!(log.contains("Authentication failed"), "{log}");
    assert!(!log.contains(wrong), "the password is echoed:\n{log}");
    assert!(
        !dir.join("tables").exists(),
        "nothing is written when Kafka cannot be reached"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
