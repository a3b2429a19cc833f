//! Pipelines submitted to a cluster through its control topic, on the real broker and S3
//! server: a `stratus worker` runs what `stratus submit` wrote, runs a changed definition in
//! its place, stops and resumes it on command, and reports each state on the status topic,
//! which `stratus pipelines list` shows; a pipeline file with an error is refused with its file
//! and line, and nothing of it reaches the topic. Every event lands in the raw table once.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use arrow::array::AsArray;
use arrow::datatypes::TimestampMicrosecondType;

use crate::crash::{column, events, strings};
use crate::process::Running;
use crate::{create_topic, delta_rows, produce, setting, unique};

const S: i64 = 1_000_000;
const MINUTE: i64 = 60 * S;

struct Cluster {
    control: String,
    status: String,
}

impl Cluster {
    fn stratus(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_stratus"))
            .args(args)
            .args([
                "--control-topic",
                &self.control,
                "--status-topic",
                &self.status,
            ])
            .output()
            .unwrap()
    }

    /// `stratus pipelines list`'s output.
    fn list(&self) -> String {
        let out = self.stratus(&["pipelines", "list"]);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    /// Polls `stratus pipelines list` until `pipeline`'s line contains `text`.
    fn wait_for_list(&self, pipeline: &str, text: &str, worker: &Running) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let list = self.list();
            if list
                .lines()
                .any(|l| l.starts_with(pipeline) && l.contains(text))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no `{text}` for {pipeline}:\n{list}\nworker log:\n{}",
                worker.log()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

fn pipeline_yaml(topic: &str, group: &str, with_features: bool) -> String {
    let features = if with_features {
        "stages:\n  features_1m: {sql: ../sql/features.sql}\n"
    } else {
        ""
    };
    let f1 = if with_features {
        "  f1: {from: features_1m, delta: {table: f1}}\n"
    } else {
        ""
    };
    format!(
        "name: submitted\nsources:\n  metrics:\n    kafka: {{topic: {topic}, group: {group}, key: [resource_id]}}\n    \
         schema: schema.json\n    event_time: {{field: ts, max_out_of_orderness: 10s, \
         idle_timeout: 10m}}\n    dead_letter_topic: {topic}.dlq\n{features}sinks:\n  raw: \
         {{from: metrics, delta: {{table: raw}}}}\n{f1}commit: {{max_rows: 500, max_interval: \
         500ms}}\n"
    )
}

/// Produces `events` to `topic`, keyed by resource.
async fn produce_range(topic: &str, events: &[crate::crash::Event]) {
    let records: Vec<stratus::demo::events::GeneratedEvent> = events
        .iter()
        .map(|e| stratus::demo::events::GeneratedEvent {
            key: e.resource.clone(),
            payload: e.json().into_bytes(),
            valid: e.valid,
        })
        .collect();
    produce(topic, &records).await;
}

async fn wait_for_rows(location: &str, rows: usize, worker: &Running) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(n) = delta_rows_if_any(location).await
            && n >= rows
        {
            assert_eq!(n, rows, "{location}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{location}: not {rows} rows; worker log:\n{}",
            worker.log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The rows of the table at `location`, none before it exists.
async fn delta_rows_if_any(location: &str) -> Option<usize> {
    let url = url::Url::parse(location).unwrap();
    let options = stratus::sink::storage_options_from_env();
    deltalake::open_table_with_storage_options(url, options)
        .await
        .ok()?;
    Some(delta_rows(location).await)
}

#[tokio::test(flavor = "multi_thread")]
async fn submitted_pipelines_run_change_stop_and_resume_on_a_worker() {
    let topic = unique("it-control");
    create_topic(&topic, 2).await;
    create_topic(&format!("{topic}.dlq"), 1).await;
    let cluster = Cluster {
        control: unique("it-control-pipelines"),
        status: unique("it-control-status"),
    };
    let tables = format!(
        "s3://{}/{}",
        setting("STRATUS_S3_BUCKET"),
        unique("it-control")
    );
    // The pipeline as a user keeps it: its schema beside it, its SQL in a folder above.
    let dir = std::env::temp_dir().join(unique("it-control"));
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(dir.join("pipelines")).unwrap();
    std::fs::create_dir_all(dir.join("sql")).unwrap();
    std::fs::copy(
        root.join("schemas/cloud.metrics.json"),
        dir.join("pipelines/schema.json"),
    )
    .unwrap();
    std::fs::copy(
        root.join("sql/cloud_metrics_1m.sql"),
        dir.join("sql/features.sql"),
    )
    .unwrap();
    let file = dir.join("pipelines/submitted.yaml");
    let group = unique("control-group");

    // A file with an error is refused, with its file and line, and nothing reaches the topic.
    let bad = dir.join("pipelines/bad.yaml");
    std::fs::write(
        &bad,
        pipeline_yaml(&topic, &group, false).replace("name: submitted", "name: bad\nsorces: {}"),
    )
    .unwrap();
    let refused = cluster.stratus(&["submit", bad.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.contains("bad.yaml:2"), "{stderr}");
    assert!(stderr.contains("nothing was submitted"), "{stderr}");

    let worker = Running::spawn(
        Command::new(env!("CARGO_BIN_EXE_stratus"))
            .args(["worker", "--worker-id", "w1", "--tables", &tables])
            .args(["--metrics-addr", "127.0.0.1:0"])
            .args(["--control-topic", &cluster.control])
            .args(["--status-topic", &cluster.status])
            .args(["--workdir", dir.join("work").to_str().unwrap()])
            .env("RUST_LOG", format!("{},stratus=info", stratus::cli::QUIET)),
    );

    std::fs::write(&file, pipeline_yaml(&topic, &group, false)).unwrap();
    let submitted = cluster.stratus(&["submit", file.to_str().unwrap()]);
    assert!(submitted.status.success(), "{submitted:?}");
    assert!(!cluster.list().contains("bad"), "{}", cluster.list());
    cluster.wait_for_list("submitted", "w1: running", &worker);

    let base = (chrono::Utc::now().timestamp_micros() - 3 * 3600 * S) / MINUTE * MINUTE;
    let all = events(base, 4, 300);
    let valid = |part: &[crate::crash::Event]| part.iter().filter(|e| e.valid).count();
    let (first, rest) = all.split_at(400);
    let (second, third) = rest.split_at(400);
    produce_range(&topic, first).await;
    wait_for_rows(&format!("{tables}/raw"), valid(first), &worker).await;

    // A changed definition replaces the running one: it adds a feature table.
    std::fs::write(&file, pipeline_yaml(&topic, &group, true)).unwrap();
    let changed = cluster.stratus(&["submit", file.to_str().unwrap()]);
    assert!(changed.status.success(), "{changed:?}");
    produce_range(&topic, second).await;
    wait_for_rows(
        &format!("{tables}/raw"),
        valid(first) + valid(second),
        &worker,
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while delta_rows_if_any(&format!("{tables}/f1"))
        .await
        .unwrap_or(0)
        == 0
    {
        assert!(Instant::now() < deadline, "no f1 rows:\n{}", worker.log());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let described = cluster.stratus(&["pipelines", "describe", "submitted"]);
    let described = String::from_utf8(described.stdout).unwrap();
    assert!(described.contains("--- ../sql/features.sql"), "{described}");
    assert!(described.contains("features_1m"), "{described}");

    // Stopped: the worker stops it and says so; resumed, it reads what came meanwhile.
    let stop = cluster.stratus(&["pipelines", "stop", "submitted"]);
    assert!(stop.status.success(), "{stop:?}");
    cluster.wait_for_list("submitted", "w1: stopped", &worker);
    produce_range(&topic, third).await;
    let resume = cluster.stratus(&["pipelines", "resume", "submitted"]);
    assert!(resume.status.success(), "{resume:?}");
    cluster.wait_for_list("submitted", "w1: running", &worker);
    wait_for_rows(&format!("{tables}/raw"), valid(&all), &worker).await;

    let (status, log) = worker.terminate();
    assert!(status.success(), "{status}\n{log}");
    // It reported before it exited.
    let list = cluster.list();
    assert!(
        list.lines()
            .any(|l| l.starts_with("submitted") && l.contains("w1: stopped")),
        "{list}"
    );

    let mut ids = HashSet::new();
    for b in &crate::read_delta(&format!("{tables}/raw")).await {
        let ts = column(b, "ts").as_primitive::<TimestampMicrosecondType>();
        for (i, resource) in strings(b, "resource_id").into_iter().enumerate() {
            assert!(ids.insert((resource, ts.value(i))), "a raw row twice");
        }
    }
    assert_eq!(ids.len(), valid(&all));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A worker follows its control topic from the moment it creates it: under load the broker may
/// show a topic just created without partitions for a while, and a follower assigned none of
/// them would never see a definition. Each round creates the topics, follows at once, and
/// must see the definition published after.
#[tokio::test(flavor = "multi_thread")]
async fn a_control_topic_is_followed_from_the_moment_it_is_created() {
    use stratus::cluster::control::{ControlPlane, bundle};
    let kafka = stratus::kafka::KafkaConnection::plaintext(&setting("STRATUS_KAFKA_BROKERS"));
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/billing.yaml");
    let definition = bundle(&file, "billing").unwrap();
    for round in 0..5 {
        let plane = ControlPlane::new(
            kafka.clone(),
            &unique("it-follow-pipelines"),
            &unique("it-follow-status"),
        );
        plane.ensure_topics().await.unwrap();
        let follow = plane.follow().unwrap();
        plane.publish_definition(&definition).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let seen = loop {
            let changes =
                tokio::task::block_in_place(|| follow.changes(Duration::from_millis(500)));
            if let Some((name, _)) = changes.into_iter().next() {
                break name;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: the definition published to {} never reached its follower",
                plane.control
            );
        };
        assert_eq!(seen, "billing", "round {round}");
    }
}
