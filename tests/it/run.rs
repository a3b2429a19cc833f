//! `stratus run` on the real broker and S3 server: the cloud-metrics 1-minute stage over a
//! stream with out-of-order, late, too-late and invalid events. The window results in Delta
//! equal a reference computed here with plain loops; too-late events are on the late topic,
//! invalid ones on the dead-letter topic, every feature row also on the features topic.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int32Type, Int64Type, TimestampMicrosecondType};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use stratus::job::run::{RunConfig, run_pipeline};
use stratus::kafka::{consumer_config, producer_config};
use stratus::metrics::PipelineMetrics;
use stratus::metrics::health::Health;
use stratus::pipeline::Pipeline;
use stratus::sink::storage_options_from_env;

use crate::{create_topic, read_delta, setting, unique};

const S: i64 = 1_000_000;
const MINUTE: i64 = 60 * S;
const CHUNK: usize = 200;
const OUT_OF_ORDERNESS: i64 = 10 * S;
const LATENESS: i64 = 2 * MINUTE;

struct Event {
    resource: String,
    ts: i64,
    value: f64,
    valid: bool,
}

impl Event {
    fn json(&self) -> String {
        let ts = chrono::DateTime::from_timestamp_micros(self.ts)
            .unwrap()
            .to_rfc3339();
        let unit = if self.valid { "Percent" } else { "Furlongs" };
        format!(
            r#"{{"ts":"{ts}","account_id":"123456789012","region":"us-east-1","az":"us-east-1a","resource_id":"{}","service":"EC2","namespace":"AWS/EC2","metric":"CPUUtilization","value":{},"unit":"{unit}"}}"#,
            self.resource, self.value
        )
    }
}

/// Events in arrival order: 8 resources every 5 s for 20 minutes; 6 % arrive 20-60 s late,
/// 2 % arrive 5-8 minutes late (too late), 3 % are invalid.
fn arrivals(base: i64) -> Vec<Event> {
    let mut rng = StdRng::seed_from_u64(2026);
    let mut keyed: Vec<(i64, Event)> = Vec::new();
    for step in 0..240 {
        for r in 0..8 {
            let ts = base + step * 5 * S + rng.random_range(0..S);
            let delay = match rng.random_range(0..100) {
                0..6 => rng.random_range(20 * S..60 * S),
                6..8 => rng.random_range(300 * S..480 * S),
                _ => 0,
            };
            let value = f64::from(rng.random_range(0..10_000)) / 100.0;
            let valid = rng.random_range(0..100) >= 3;
            keyed.push((
                ts + delay,
                Event {
                    resource: format!("i-{r:04}"),
                    ts,
                    value,
                    valid,
                },
            ));
        }
    }
    keyed.sort_by_key(|(arrival, _)| *arrival);
    keyed.into_iter().map(|(_, e)| e).collect()
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Agg {
    samples: i64,
    sum: f64,
    min: f64,
    max: f64,
}

/// The reference: cycles of CHUNK messages in offset order; the watermark after each cycle is
/// the newest valid event time minus the out-of-orderness; an event is too late when its
/// window ended at least LATENESS before the watermark at the start of its cycle.
fn reference(events: &[Event]) -> (BTreeMap<(String, i64), Agg>, usize, i64) {
    let mut watermark = i64::MIN;
    let mut newest = i64::MIN;
    let mut windows: BTreeMap<(String, i64), Agg> = BTreeMap::new();
    let mut too_late = 0;
    for chunk in events.chunks(CHUNK) {
        for e in chunk.iter().filter(|e| e.valid) {
            let start = e.ts - e.ts.rem_euclid(MINUTE);
            newest = newest.max(e.ts);
            if start + MINUTE + LATENESS <= watermark {
                too_late += 1;
                continue;
            }
            let a = windows.entry((e.resource.clone(), start)).or_insert(Agg {
                min: f64::MAX,
                max: f64::MIN,
                ..Agg::default()
            });
            a.samples += 1;
            a.sum += e.value;
            a.min = a.min.min(e.value);
            a.max = a.max.max(e.value);
        }
        watermark = watermark.max(newest - OUT_OF_ORDERNESS);
    }
    windows.retain(|(_, start), _| start + MINUTE <= watermark);
    (windows, too_late, watermark)
}

fn count_records(brokers: &str, topic: &str, expected: usize) -> usize {
    let consumer: BaseConsumer = consumer_config(brokers, &unique("it-count"))
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in metadata.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut n = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while n < expected && Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            m.unwrap();
            n += 1;
        }
    }
    // Nothing beyond the expected count arrives either.
    while consumer.poll(Duration::from_millis(500)).is_some() {
        n += 1;
    }
    n
}

#[tokio::test(flavor = "multi_thread")]
async fn window_results_match_the_reference_and_every_event_is_accounted_for() {
    let brokers = setting("STRATUS_KAFKA_BROKERS");
    let topic = unique("it-run-metrics");
    create_topic(&topic, 1).await;
    create_topic(&format!("{topic}.dlq"), 1).await;
    create_topic(&format!("{topic}.features"), 1).await;
    let now = chrono::Utc::now().timestamp_micros();
    let base = now - 60 * MINUTE - now.rem_euclid(MINUTE);
    let events = arrivals(base);

    let producer: FutureProducer = producer_config(&brokers).create().unwrap();
    let payloads: Vec<String> = events.iter().map(Event::json).collect();
    let sends = events.iter().zip(&payloads).map(|(e, p)| {
        producer.send(
            FutureRecord::to(&topic).key(&e.resource).payload(p),
            Duration::from_secs(30),
        )
    });
    for d in futures::future::join_all(sends).await {
        d.map_err(|(e, _)| e).unwrap();
    }

    let root = env!("CARGO_MANIFEST_DIR");
    let name = unique("it-run");
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
  features: {{from: features_1m, delta: {{table: features_1m, partition_by: [date]}}}}
  features_topic: {{from: features_1m, kafka: {{topic: {topic}.features, key: [resource_id, metric]}}}}
commit: {{max_rows: {CHUNK}, max_interval: 1h}}
"#
    );
    let pipeline = Pipeline::from_yaml(std::path::Path::new("it-run.yaml"), &yaml)
        .await
        .unwrap();
    let tables = format!("s3://{}/{}", setting("STRATUS_S3_BUCKET"), unique("it-run"));
    let config = RunConfig::backfill(&brokers, &tables, storage_options_from_env());
    let metrics = PipelineMetrics::new();
    let summary = run_pipeline(
        &pipeline,
        &config,
        metrics.clone(),
        Health::new(),
        std::future::pending(),
    )
    .await
    .unwrap();

    let (want, too_late, _) = reference(&events);
    let invalid = events.iter().filter(|e| !e.valid).count();
    assert!(
        too_late > 10 && invalid > 10,
        "the stream must exercise both: {too_late} {invalid}"
    );
    assert_eq!(summary.events, events.len() as u64);
    assert_eq!(summary.invalid, invalid as u64);
    assert_eq!(summary.late, too_late as u64);

    // Raw table: every valid event once.
    let raw: usize = read_delta(&format!("{tables}/raw_metrics"))
        .await
        .iter()
        .map(RecordBatch::num_rows)
        .sum();
    assert_eq!(raw, events.len() - invalid);

    // Feature table: the latest revision of each window equals the reference.
    let features = read_delta(&format!("{tables}/features_1m")).await;
    let mut latest: HashMap<(String, i64), (i32, Agg)> = HashMap::new();
    let mut updates = 0;
    let mut feature_rows = 0;
    for b in &features {
        let col = |n: &str| b.column_by_name(n).unwrap().clone();
        // Parquet strings come back as Utf8View.
        let resource =
            arrow::compute::cast(&col("resource_id"), &arrow::datatypes::DataType::Utf8).unwrap();
        let start = col("window_start");
        let (resource, start) = (
            resource.as_string::<i32>(),
            start.as_primitive::<TimestampMicrosecondType>(),
        );
        let (samples, mean) = (col("samples"), col("mean"));
        let (samples, mean) = (
            samples.as_primitive::<Int64Type>(),
            mean.as_primitive::<Float64Type>(),
        );
        let (min, max, revision) = (col("min"), col("max"), col("revision"));
        let (min, max, revision) = (
            min.as_primitive::<Float64Type>(),
            max.as_primitive::<Float64Type>(),
            revision.as_primitive::<Int32Type>(),
        );
        for i in 0..b.num_rows() {
            feature_rows += 1;
            if revision.value(i) > 0 {
                updates += 1;
            }
            let agg = Agg {
                samples: samples.value(i),
                sum: mean.value(i) * samples.value(i) as f64,
                min: min.value(i),
                max: max.value(i),
            };
            let key = (resource.value(i).to_string(), start.value(i));
            let e = latest.entry(key).or_insert((revision.value(i), agg));
            if revision.value(i) >= e.0 {
                *e = (revision.value(i), agg);
            }
        }
    }
    assert!(updates > 0, "late events must have updated some windows");
    assert_eq!(
        latest.len(),
        want.len(),
        "windows in the table vs the reference"
    );
    for (key, expected) in &want {
        let (_, got) = latest
            .get(key)
            .unwrap_or_else(|| panic!("window {key:?} missing"));
        assert_eq!(
            (got.samples, got.min, got.max),
            (expected.samples, expected.min, expected.max),
            "{key:?}"
        );
        assert!(
            (got.sum - expected.sum).abs() < 1e-6,
            "{key:?}: {} vs {}",
            got.sum,
            expected.sum
        );
    }

    // Side outputs: dead letters, too-late events, and every feature row on the topic.
    assert_eq!(
        count_records(&brokers, &format!("{topic}.dlq"), invalid),
        invalid
    );
    assert_eq!(
        count_records(&brokers, &format!("{name}.features_1m.late"), too_late),
        too_late
    );
    assert_eq!(
        count_records(&brokers, &format!("{topic}.features"), feature_rows),
        feature_rows
    );
    let text = metrics.render();
    assert!(
        text.contains(&format!(
            "stratus_events_late_total{{pipeline=\"{name}\",stage=\"features_1m\"}} {too_late}"
        )),
        "{text}"
    );
    // Where the loop's time went, phase by phase, in the summary and on /metrics alike.
    let phases: Vec<&str> = summary.phase_seconds.keys().map(String::as_str).collect();
    assert_eq!(
        phases,
        [
            "checkpoint",
            "delta sinks",
            "kafka sinks",
            "read",
            "stage features_1m"
        ]
    );
    for (phase, seconds) in &summary.phase_seconds {
        assert!(*seconds > 0.0, "{phase}: {seconds}");
        assert!(
            text.contains(&format!(
                "stratus_cycle_seconds_total{{phase=\"{phase}\",pipeline=\"{name}\"}} {seconds}"
            )),
            "{phase} {seconds}: {text}"
        );
    }
}

/// A Kafka sink whose records the broker refuses (each batch larger than its topic takes)
/// fails the run with the sink and the topic named, and the windows it could not publish are
/// committed to no table: a cycle's Delta commits wait for every acknowledgement, although the
/// sink publishes beside the stages.
#[tokio::test(flavor = "multi_thread")]
async fn a_sink_the_broker_refuses_fails_the_run_before_its_rows_reach_a_table() {
    let brokers = setting("STRATUS_KAFKA_BROKERS");
    let topic = unique("it-refused");
    create_topic(&topic, 1).await;
    create_topic(&format!("{topic}.dlq"), 1).await;
    crate::create_topic_with(
        &format!("{topic}.features"),
        1,
        &[("max.message.bytes", "64")],
    )
    .await;
    let now = chrono::Utc::now().timestamp_micros();
    let events = arrivals(now - 60 * MINUTE - now.rem_euclid(MINUTE));
    let producer: FutureProducer = producer_config(&brokers).create().unwrap();
    for e in &events {
        let payload = e.json();
        producer
            .send(
                FutureRecord::to(&topic).key(&e.resource).payload(&payload),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }

    let root = env!("CARGO_MANIFEST_DIR");
    let name = unique("it-refused");
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
  features: {{from: features_1m, delta: {{table: features_1m, partition_by: [date]}}}}
  features_topic: {{from: features_1m, kafka: {{topic: {topic}.features, key: [resource_id, metric]}}}}
commit: {{max_rows: {CHUNK}, max_interval: 1h}}
"#
    );
    let pipeline = Pipeline::from_yaml(std::path::Path::new("it-refused.yaml"), &yaml)
        .await
        .unwrap();
    let tables = format!(
        "s3://{}/{}",
        setting("STRATUS_S3_BUCKET"),
        unique("it-refused")
    );
    let config = RunConfig::backfill(&brokers, &tables, storage_options_from_env());
    let failed = run_pipeline(
        &pipeline,
        &config,
        PipelineMetrics::new(),
        Health::new(),
        std::future::pending(),
    )
    .await
    .expect_err("the broker refuses every record of the sink");
    let message = failed.to_string();
    assert!(
        message.contains(&format!("Kafka sink features_topic → {topic}.features")),
        "{message}"
    );

    let location = format!("{tables}/features_1m");
    let url = url::Url::parse(&location).unwrap();
    let rows: usize =
        match deltalake::open_table_with_storage_options(url, storage_options_from_env()).await {
            Err(deltalake::DeltaTableError::NotATable(_)) => 0,
            Err(e) => panic!("{location}: {e}"),
            Ok(_) => read_delta(&location)
                .await
                .iter()
                .map(RecordBatch::num_rows)
                .sum(),
        };
    assert_eq!(rows, 0, "window results committed that Kafka never took");
}
