//! Integration tests against the real services that `scripts/test-env up` starts on loopback:
//! an Apache Kafka broker (KRaft), an S3 server, and the project's Python environment with
//! ONNX Runtime. `scripts/test` starts them and exports their settings; run through it.

#![allow(clippy::unwrap_used)]

mod crash;
mod delta_s3;
mod demo;
mod evaluate;
mod forecast;
mod ingest;
mod kafka;
mod onnx;
mod run;
mod score;
mod shipped;
mod sigterm;

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
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", setting("STRATUS_KAFKA_BROKERS"))
        .create()
        .unwrap();
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(std::time::Duration::from_secs(30))),
        )
        .await
        .unwrap();
    for r in results {
        r.unwrap();
    }
}

/// Every row of the Delta table at `location` (an `s3://` URL or a local directory).
pub async fn read_delta(location: &str) -> Vec<arrow::array::RecordBatch> {
    let url = if location.contains("://") {
        url::Url::parse(location).unwrap()
    } else {
        url::Url::from_directory_path(location).unwrap()
    };
    let options = stratus::sink::storage_options_from_env();
    let table = deltalake::open_table_with_storage_options(url, options)
        .await
        .unwrap();
    let ctx = datafusion::prelude::SessionContext::new();
    table.update_datafusion_session(&ctx.state()).unwrap();
    ctx.register_table("t", table.table_provider().await.unwrap())
        .unwrap();
    ctx.sql("SELECT * FROM t")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap()
}

/// The number of rows of the Delta table at `location`.
pub async fn delta_rows(location: &str) -> usize {
    read_delta(location)
        .await
        .iter()
        .map(arrow::array::RecordBatch::num_rows)
        .sum()
}
