//! Integration tests against the real services that `scripts/test-env up` starts on loopback:
//! an Apache Kafka broker (KRaft), an S3 server, and the project's Python environment with
//! ONNX Runtime. `scripts/test` starts them and exports their settings; run through it.

#![allow(clippy::unwrap_used)]

mod backfill;
mod cluster;
mod control;
mod crash;
mod damaged;
mod decide;
mod delta_s3;
mod demo;
mod deploy;
mod evaluate;
mod evolution;
mod exported;
mod forecast;
mod forecast_stage;
mod functions;
mod idle;
mod ingest;
mod kafka;
mod latency;
mod maintain;
mod memory;
mod onnx;
mod outage;
mod poison;
mod process;
mod run;
mod score;
mod secured;
mod shipped;
mod sigterm;
mod sql_models;

use std::time::{SystemTime, UNIX_EPOCH};

/// A setting exported by `scripts/test-env`; its absence means the tests were not started
/// through `scripts/test`.
pub fn setting(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: run the integration tests through `scripts/test`, which starts \
             Kafka, the S3 server and the Python environment and exports their settings"
        )
    })
}

/// A name no other test run has used, for topics, groups and table prefixes.
pub fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{prefix}-{}-{nanos:x}", std::process::id())
}

/// Creates `topic` with `partitions` partitions on the test broker and waits until it exists.
pub async fn create_topic(topic: &str, partitions: i32) {
    create_topic_with(topic, partitions, &[]).await
}

/// As [`create_topic`], with topic settings (`("retention.ms", "-1")` keeps events of any age).
pub async fn create_topic_with(topic: &str, partitions: i32, settings: &[(&str, &str)]) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", setting("STRATUS_KAFKA_BROKERS"))
        .create()
        .unwrap();
    let results = admin
        .create_topics(
            &[settings.iter().fold(
                NewTopic::new(topic, partitions, TopicReplication::Fixed(1)),
                |t, (k, v)| t.set(k, v),
            )],
            &AdminOptions::new().operation_timeout(Some(std::time::Duration::from_secs(30))),
        )
        .await
        .unwrap();
    for r in results {
        r.unwrap();
    }
}

/// Sends every event to `topic` through `producer` and waits until each is delivered.
pub async fn produce_with(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    events: &[stratus::demo::events::GeneratedEvent],
) {
    use rdkafka::producer::FutureRecord;
    let sends = events.iter().map(|e| {
        producer.send(
            FutureRecord::to(topic).key(&e.key).payload(&e.payload),
            std::time::Duration::from_secs(30),
        )
    });
    for d in futures::future::join_all(sends).await {
        d.map_err(|(e, _)| e).unwrap();
    }
}

/// A metric event at `ts_ms` for resource `i`.
pub fn metric_event(ts_ms: i64, i: usize) -> stratus::demo::events::GeneratedEvent {
    let ts = chrono::DateTime::from_timestamp_millis(ts_ms)
        .unwrap()
        .to_rfc3339();
    let resource = format!("i-{i:017x}");
    let payload = serde_json::json!({
        "ts": ts, "account_id": "123456789012", "region": "us-east-1", "az": "us-east-1a",
        "resource_id": resource, "service": "EC2", "namespace": "AWS/EC2",
        "metric": "CPUUtilization", "value": 50.0, "unit": "Percent",
        "dimensions": {"InstanceId": resource}
    });
    stratus::demo::events::GeneratedEvent {
        key: resource,
        payload: payload.to_string().into_bytes(),
        valid: true,
    }
}

/// [`produce_with`] a plaintext producer of the test broker.
pub async fn produce(topic: &str, events: &[stratus::demo::events::GeneratedEvent]) {
    let brokers = setting("STRATUS_KAFKA_BROKERS");
    let producer = stratus::kafka::producer_config(&brokers).create().unwrap();
    produce_with(&producer, topic, events).await;
}

/// Every row of the Delta table at `location` (an `s3://` URL or a local directory).
pub async fn read_delta(location: &str) -> Vec<arrow::array::RecordBatch> {
    read_delta_if_any(location)
        .await
        .unwrap_or_else(|| panic!("no Delta table at {location}"))
}

/// Every row of the Delta table at `location`; none while nothing has created it yet.
pub async fn read_delta_if_any(location: &str) -> Option<Vec<arrow::array::RecordBatch>> {
    let url = if location.contains("://") {
        url::Url::parse(location).unwrap()
    } else {
        url::Url::from_directory_path(location).unwrap()
    };
    let options = stratus::sink::storage_options_from_env();
    let table = match deltalake::open_table_with_storage_options(url, options).await {
        Ok(table) => table,
        Err(deltalake::DeltaTableError::NotATable(_)) => return None,
        Err(e) => panic!("{location}: {e}"),
    };
    let ctx = datafusion::prelude::SessionContext::new();
    table.update_datafusion_session(&ctx.state()).unwrap();
    ctx.register_table("t", table.table_provider().await.unwrap())
        .unwrap();
    let rows = ctx
        .sql("SELECT * FROM t")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    Some(rows)
}

/// The number of rows of the Delta table at `location`.
pub async fn delta_rows(location: &str) -> usize {
    read_delta(location)
        .await
        .iter()
        .map(arrow::array::RecordBatch::num_rows)
        .sum()
}

/// A message's payload and its headers.
pub type Consumed = (Vec<u8>, Vec<(String, String)>);

/// Every message of the one-partition `topic`, up to its end, with its headers.
pub fn consume_with_headers(topic: &str) -> Vec<Consumed> {
    use rdkafka::Message;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Headers;
    use std::time::{Duration, Instant};
    let consumer: BaseConsumer =
        stratus::kafka::consumer_config(&setting("STRATUS_KAFKA_BROKERS"), &unique("g"))
            .create()
            .unwrap();
    let (_, end) = consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut out = Vec::new();
    let mut next = 0;
    while next < end {
        assert!(Instant::now() < deadline, "{topic}: read {next} of {end}");
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.unwrap();
            next = m.offset() + 1;
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|x| {
                            let v = String::from_utf8_lossy(x.value.unwrap_or_default());
                            (x.key.to_string(), v.to_string())
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push((m.payload().unwrap_or_default().to_vec(), headers));
        }
    }
    out
}

/// Every message of the one-partition `topic`, up to its end.
pub fn consume_all(topic: &str) -> Vec<Vec<u8>> {
    consume_with_headers(topic)
        .into_iter()
        .map(|m| m.0)
        .collect()
}
