//! Poison input through the real broker: a 10 MB message, invalid UTF-8, JSON nested 100,000
//! deep, NaN, a number out of range, 1 MB keys, an event a century ahead and a flood of events
//! too late for any window. Each invalid one reaches the dead-letter topic with its reason (cut
//! to fit Kafka's 1 MB limit, saying so), each too-late one the late topic, every valid one
//! Delta; the run neither panics nor stalls.

use std::collections::HashMap;

use rdkafka::producer::{FutureProducer, FutureRecord};
use stratus::job::run::{RunConfig, run_to_end};
use stratus::pipeline::Pipeline;
use stratus::sink::storage_options_from_env;
use stratus::source::dead_letter::{HEADER_OFFSET, HEADER_REASON, HEADER_TRUNCATED};

use crate::{
    consume_all, consume_with_headers, create_topic, create_topic_with, delta_rows, metric_event,
    setting, unique,
};

#[tokio::test(flavor = "multi_thread")]
async fn poison_goes_to_its_side_output_with_its_reason_and_the_rest_lands() {
    let brokers = setting("STRATUS_KAFKA_BROKERS");
    let topic = unique("it-poison");
    // The source topic takes messages up to 16 MB, as a user's topic may.
    create_topic_with(&topic, 1, &[("max.message.bytes", "16777216")]).await;
    create_topic(&format!("{topic}.dlq"), 1).await;
    let name = unique("it-poison");
    create_topic(&format!("{name}.features_1m.late"), 1).await;

    let now = chrono::Utc::now().timestamp_millis();
    let big_key = "k".repeat(1 << 20);
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let valid = metric_event(now - 600_000, 1).payload;
    // The valid event with `field`'s value replaced by `value`, as written.
    let with = |field: &str, value: &str| {
        let text = String::from_utf8(valid.clone()).unwrap();
        let mut event: serde_json::Value = serde_json::from_str(&text).unwrap();
        event[field] = serde_json::Value::String("@".into());
        event.to_string().replace("\"@\"", value).into_bytes()
    };
    let century = chrono::DateTime::from_timestamp_millis(now + 100 * 365 * 86_400_000)
        .unwrap()
        .to_rfc3339();
    // (key, payload, what the reason must say)
    let poison: Vec<(String, Vec<u8>, &str)> = vec![
        ("big".into(), vec![b'x'; 10 << 20], "expected value"),
        (
            "utf8".into(),
            b"{\"ts\": \"\xff\xfe\"}".to_vec(),
            "the event is not UTF-8 text: invalid utf-8 sequence of 1 bytes from index 8",
        ),
        ("nested".into(), with("dimensions", &nested), "dimensions"),
        ("nan".into(), with("value", "NaN"), "expected value"),
        ("range".into(), with("value", "1e400"), "out of range"),
        (big_key.clone(), b"{}".to_vec(), "missing"),
        (
            "future".into(),
            with("ts", &format!("\"{century}\"")),
            "future",
        ),
    ];

    let producer: FutureProducer = stratus::kafka::producer_config(&brokers)
        .set("message.max.bytes", "16777216")
        .create()
        .unwrap();
    let send = |key: &str, payload: &[u8]| {
        let (key, payload) = (key.to_string(), payload.to_vec());
        let (producer, topic) = (producer.clone(), topic.clone());
        async move {
            producer
                .send(
                    FutureRecord::to(&topic).key(&key).payload(&payload),
                    std::time::Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| e)
                .unwrap()
        }
    };
    // 200 valid events over 20 minutes, the poison among them, a valid event with a 1 MB key,
    // then 300 events three hours old: by then the watermark is past them.
    let mut valid_events = 0;
    for i in 0..200 {
        let e = metric_event(now - 1_200_000 + i * 6_000, i as usize % 10);
        send(&e.key, &e.payload).await;
        valid_events += 1;
        if i % 25 == 0
            && let Some((key, payload, _)) = poison.get(i as usize / 25)
        {
            send(key, payload).await;
        }
    }
    send(&big_key, &metric_event(now, 3).payload).await;
    valid_events += 1;
    for i in 0..300 {
        let e = metric_event(now - 3 * 3_600_000 + i * 1_000, i as usize % 10);
        send(&e.key, &e.payload).await;
    }
    let too_late = 300;

    let root = env!("CARGO_MANIFEST_DIR");
    let yaml = format!(
        r#"name: {name}
sources:
  metrics:
    kafka: {{topic: {topic}, group: {name}}}
    schema: {root}/schemas/cloud.metrics.json
    event_time: {{field: ts, max_out_of_orderness: 10s, allowed_lateness: 2m, idle_timeout: 1h}}
stages:
  features_1m: {{sql: {root}/sql/cloud_metrics_1m.sql}}
sinks:
  raw: {{from: metrics, delta: {{table: raw_metrics, partition_by: [date]}}}}
commit: {{max_rows: 100, max_interval: 1h}}
"#
    );
    let pipeline = Pipeline::from_yaml(std::path::Path::new("it-poison.yaml"), &yaml)
        .await
        .unwrap();
    let tables = format!(
        "s3://{}/{}",
        setting("STRATUS_S3_BUCKET"),
        unique("it-poison")
    );
    let config = RunConfig::backfill(&brokers, &tables, storage_options_from_env());
    let summary = run_to_end(&pipeline, &config).await.unwrap();

    assert_eq!(
        summary.events,
        (valid_events + poison.len() + too_late) as u64
    );
    assert_eq!(summary.invalid, poison.len() as u64);
    assert_eq!(summary.late, too_late as u64);
    assert_eq!(
        delta_rows(&format!("{tables}/raw_metrics")).await,
        valid_events + too_late,
        "every valid event lands raw, the too-late ones too"
    );
    assert_eq!(
        consume_all(&format!("{name}.features_1m.late")).len(),
        too_late
    );

    let letters = consume_with_headers(&format!("{topic}.dlq"));
    assert_eq!(letters.len(), poison.len());
    let by_offset: Vec<HashMap<&str, &str>> = letters
        .iter()
        .map(|(_, h)| h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect())
        .collect();
    for ((key, payload, says), headers) in poison.iter().zip(&by_offset) {
        let reason = headers[HEADER_REASON];
        assert!(
            reason.contains(says),
            "{key:.10}: {reason:?} should say {says:?} (offset {})",
            headers[HEADER_OFFSET]
        );
        let whole = key.len() > 16 << 10 || payload.len() + key.len() > 900 << 10;
        assert_eq!(headers.contains_key(HEADER_TRUNCATED), whole, "{key:.10}");
    }
    let (big_payload, _) = &letters[0];
    assert_eq!(
        big_payload.len(),
        (900 << 10) - 3,
        "cut to fit, key `big` beside it"
    );
    assert_eq!(
        by_offset[0][HEADER_TRUNCATED],
        "payload 10485760 bytes, first 921597 kept"
    );
    assert_eq!(
        by_offset[5][HEADER_TRUNCATED],
        "key 1048576 bytes, first 16384 kept"
    );
}
