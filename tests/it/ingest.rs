//! A raw-ingest pipeline on the real broker and S3 server: valid events land in Delta, invalid
//! ones on the dead-letter topic with their bytes and coordinates, and a restarted job resumes
//! from the offsets in the table without reading anything twice.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use stratus::demo::events::{GeneratedEvent, metric_events};
use stratus::job::run::{RunConfig, RunSummary, run_to_end};
use stratus::kafka::{consumer_config, producer_config};
use stratus::pipeline::Pipeline;
use stratus::sink::storage_options_from_env;
use stratus::source::dead_letter::{HEADER_OFFSET, HEADER_PARTITION, HEADER_REASON, HEADER_TOPIC};

use crate::{create_topic, delta_rows, setting, unique};

async fn produce(
    brokers: &str,
    topic: &str,
    events: &[GeneratedEvent],
) -> HashMap<(i32, i64), usize> {
    let producer: FutureProducer = producer_config(brokers).create().unwrap();
    let sends = events.iter().map(|e| {
        producer.send(
            FutureRecord::to(topic).key(&e.key).payload(&e.payload),
            Duration::from_secs(30),
        )
    });
    let mut at = HashMap::new();
    for (i, d) in futures::future::join_all(sends)
        .await
        .into_iter()
        .enumerate()
    {
        let d = d.map_err(|(e, _)| e).unwrap();
        at.insert((d.partition, d.offset), i);
    }
    at
}

async fn ingest(brokers: &str, topic: &str, tables: &str) -> RunSummary {
    ingest_to(brokers, topic, tables, &["raw_metrics"]).await
}

/// Runs a raw-ingest pipeline with one Delta sink per table name, to the end of the topic.
async fn ingest_to(brokers: &str, topic: &str, tables: &str, sinks: &[&str]) -> RunSummary {
    let root = env!("CARGO_MANIFEST_DIR");
    let sinks: String = sinks
        .iter()
        .map(|t| format!("  {t}: {{from: metrics, delta: {{table: {t}, partition_by: [date]}}}}\n"))
        .collect();
    let yaml = format!(
        "name: it-ingest\nsources:\n  metrics:\n    kafka: {{topic: {topic}, group: {topic}}}\n    schema: {root}/schemas/cloud.metrics.json\n    event_time: {{field: ts}}\nsinks:\n{sinks}commit: {{max_rows: 700, max_interval: 5s}}\n"
    );
    let pipeline = Pipeline::from_yaml(std::path::Path::new("it-ingest.yaml"), &yaml)
        .await
        .unwrap();
    let config = RunConfig::backfill(brokers, tables, storage_options_from_env());
    run_to_end(&pipeline, &config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn valid_to_delta_invalid_to_dead_letters_and_restart_resumes() {
    let brokers = setting("STRATUS_KAFKA_BROKERS");
    let topic = unique("it-metrics");
    create_topic(&topic, 4).await;
    create_topic(&format!("{topic}.dlq"), 1).await;
    let tables = format!(
        "s3://{}/{}",
        setting("STRATUS_S3_BUCKET"),
        unique("it-ingest")
    );
    let table = format!("{tables}/raw_metrics");
    let now = chrono::Utc::now().timestamp_millis();

    let first = metric_events(1, 3_000, 30, now, 50);
    let placed = produce(&brokers, &topic, &first).await;
    let summary = ingest(&brokers, &topic, &tables).await;
    let valid = first.iter().filter(|e| e.valid).count() as u64;
    let invalid = first.len() as u64 - valid;
    assert!(invalid > 0);
    assert_eq!((summary.events, summary.invalid), (3_000, invalid));
    assert_eq!(delta_rows(&table).await as i64, valid as i64);
    // What an operator sees of the pipeline's consumer group: every event read, no lag.
    let group = describe_group(&brokers, &topic);
    assert_eq!(group.len(), 4, "{group:?}");
    assert!(
        group.iter().all(|p| p.lag == 0 && p.current == p.log_end),
        "{group:?}"
    );
    assert_eq!(group.iter().map(|p| p.current).sum::<i64>(), 3_000);

    // Every invalid event is on the dead-letter topic, bytes unchanged, with its coordinates.
    let consumer: BaseConsumer = consumer_config(&brokers, &unique("it-dlq"))
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&format!("{topic}.dlq"), 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let mut letters = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while letters < invalid {
        assert!(
            Instant::now() < deadline,
            "only {letters} of {invalid} dead letters arrived"
        );
        let Some(m) = tokio::task::block_in_place(|| consumer.poll(Duration::from_millis(500)))
        else {
            continue;
        };
        let m = m.unwrap();
        let headers: HashMap<&str, String> = m
            .headers()
            .unwrap()
            .iter()
            .map(|h| (h.key, String::from_utf8(h.value.unwrap().to_vec()).unwrap()))
            .collect();
        assert_eq!(headers[HEADER_TOPIC], topic);
        let at = (
            headers[HEADER_PARTITION].parse().unwrap(),
            headers[HEADER_OFFSET].parse().unwrap(),
        );
        let original = &first[placed[&at]];
        assert!(
            !original.valid,
            "a valid event was dead-lettered: {headers:?}"
        );
        assert_eq!(m.payload().unwrap(), original.payload.as_slice());
        assert_eq!(m.key().unwrap(), original.key.as_bytes());
        assert!(!headers[HEADER_REASON].is_empty());
        letters += 1;
    }

    // A new job (as after a restart) reads only what was appended since the last commit.
    let second = metric_events(2, 1_000, 30, now, 0);
    produce(&brokers, &topic, &second).await;
    // Before the job runs, the group shows the new events as lag.
    let group = describe_group(&brokers, &topic);
    assert_eq!(group.iter().map(|p| p.lag).sum::<i64>(), 1_000, "{group:?}");
    let summary = ingest(&brokers, &topic, &tables).await;
    assert_eq!((summary.events, summary.invalid), (1_000, 0));
    assert_eq!(delta_rows(&table).await as i64, valid as i64 + 1_000);
    let group = describe_group(&brokers, &topic);
    assert_eq!(group.iter().map(|p| p.lag).sum::<i64>(), 0, "{group:?}");
    assert_eq!(group.iter().map(|p| p.current).sum::<i64>(), 4_000);
}

/// A partition's line of `kafka-consumer-groups --describe`.
#[derive(Debug)]
struct GroupPartition {
    current: i64,
    log_end: i64,
    lag: i64,
}

/// The partitions of `topic` that Kafka's own `kafka-consumer-groups --describe --group
/// <group>` shows, run from the broker's jars.
fn describe_group(brokers: &str, group: &str) -> Vec<GroupPartition> {
    let out = std::process::Command::new("java")
        .arg("-cp")
        .arg(format!("{}/*", setting("STRATUS_KAFKA_LIBS")))
        .args([
            "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
            "--bootstrap-server",
            brokers,
            "--describe",
            "--group",
            group,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // GROUP TOPIC PARTITION CURRENT-OFFSET LOG-END-OFFSET LAG CONSUMER-ID HOST CLIENT-ID
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() >= 6 && f[0] == group && f[1] == group)
        .map(|f| GroupPartition {
            current: f[3].parse().unwrap_or_else(|_| panic!("{text}")),
            log_end: f[4].parse().unwrap(),
            lag: f[5].parse().unwrap(),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sink_added_later_starts_where_the_pipeline_stands_and_nothing_repeats() {
    let brokers = setting("STRATUS_KAFKA_BROKERS");
    let topic = unique("it-two-sinks");
    create_topic(&topic, 3).await;
    let tables = format!(
        "s3://{}/{}",
        setting("STRATUS_S3_BUCKET"),
        unique("it-two-sinks")
    );
    let now = chrono::Utc::now().timestamp_millis();
    produce(&brokers, &topic, &metric_events(4, 2_000, 25, now, 0)).await;
    ingest_to(&brokers, &topic, &tables, &["first"]).await;
    assert_eq!(delta_rows(&format!("{tables}/first")).await, 2_000);

    // A second table joins: like every stage and sink, it continues from the pipeline's
    // checkpoint, so both receive the 500 new events. (A table that needs the history is
    // filled by a backfill: another pipeline name, its own checkpoints.)
    produce(&brokers, &topic, &metric_events(5, 500, 25, now, 0)).await;
    let summary = ingest_to(&brokers, &topic, &tables, &["first", "second"]).await;
    assert_eq!(summary.events, 500);
    assert_eq!(delta_rows(&format!("{tables}/first")).await, 2_500);
    assert_eq!(delta_rows(&format!("{tables}/second")).await, 500);

    // And a third run reads nothing, for either.
    let summary = ingest_to(&brokers, &topic, &tables, &["first", "second"]).await;
    assert_eq!(summary.events, 0);
    assert_eq!(delta_rows(&format!("{tables}/first")).await, 2_500);
}
