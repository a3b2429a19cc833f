//! The shipped `pipelines/billing.yaml` and `pipelines/spot-prices.yaml`, end to end on the real
//! broker and S3 server (only the topic names are made unique): the hourly tables equal a
//! reference computed here from the same events. Billing line items are restated — before
//! their hour is emitted and after, across a restart — and each restatement replaces the item
//! it restates.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int32Type, Int64Type, TimestampMicrosecondType};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::producer::{FutureProducer, FutureRecord};

use stratus::job::run::{RunConfig, run_pipeline};
use stratus::kafka::producer_config;
use stratus::metrics::PipelineMetrics;
use stratus::metrics::health::Health;
use stratus::pipeline::Pipeline;
use stratus::sink::storage_options_from_env;

use crate::{create_topic, read_delta, setting, unique};

const S: i64 = 1_000_000;
const HOUR: i64 = 3600 * S;

/// Instance type, zone, hour.
type Series = (String, String, i64);

/// The shipped pipeline `file`, its topics (`prefix`, `prefix.dlq`, …) renamed to start with
/// `topic`, planned where its relative paths resolve.
async fn shipped(file: &str, prefix: &str, topic: &str) -> Pipeline {
    let root = env!("CARGO_MANIFEST_DIR");
    let text = std::fs::read_to_string(format!("{root}/pipelines/{file}")).unwrap();
    let text = text.replace(&format!("topic: {prefix}"), &format!("topic: {topic}"));
    assert!(text.contains(topic), "{file} does not read {prefix}");
    let path = std::path::Path::new(root).join("pipelines").join(file);
    Pipeline::from_yaml(&path, &text).await.unwrap()
}

pub(crate) async fn produce(topic: &str, records: &[(String, String)]) {
    let producer: FutureProducer = producer_config(&setting("STRATUS_KAFKA_BROKERS"))
        .create()
        .unwrap();
    let sends = records.iter().map(|(key, payload)| {
        producer.send(
            FutureRecord::to(topic).key(key).payload(payload),
            Duration::from_secs(30),
        )
    });
    for d in futures::future::join_all(sends).await {
        d.map_err(|(e, _)| e).unwrap();
    }
}

/// Runs `pipeline` to the end of its topics; its metrics.
pub(crate) async fn run(pipeline: &Pipeline, tables: &str) -> PipelineMetrics {
    let config = RunConfig::backfill(
        &setting("STRATUS_KAFKA_BROKERS"),
        tables,
        storage_options_from_env(),
    );
    let metrics = PipelineMetrics::new();
    let health = Health::new();
    run_pipeline(
        pipeline,
        &config,
        metrics.clone(),
        health,
        std::future::pending(),
    )
    .await
    .unwrap();
    metrics
}

fn strings(b: &RecordBatch, name: &str) -> Vec<String> {
    let c = arrow::compute::cast(
        b.column_by_name(name).unwrap(),
        &arrow::datatypes::DataType::Utf8,
    )
    .unwrap();
    c.as_string::<i32>()
        .iter()
        .map(|v| v.unwrap_or_default().to_string())
        .collect()
}

fn rfc3339(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .unwrap()
        .to_rfc3339()
}

struct LineItem {
    id: String,
    start: i64,
    account: String,
    service: &'static str,
    cost: f64,
}

impl LineItem {
    fn json(&self) -> String {
        format!(
            r#"{{"line_item_id":"{}","usage_start":"{}","usage_end":"{}","account_id":"{}","service":"{}","resource_id":null,"usage_type":"BoxUsage:m5.large","pricing_model":"on_demand","usage_amount":1.0,"cost":{},"currency":"USD"}}"#,
            self.id,
            rfc3339(self.start),
            rfc3339(self.start + HOUR),
            self.account,
            self.service,
            self.cost
        )
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn billing_hourly_cost_counts_each_line_item_at_its_latest_restatement() {
    let topic = unique("it-billing");
    create_topic(&topic, 1).await;
    let pipeline = shipped("billing.yaml", "cloud.billing", &topic).await;
    let tables = format!(
        "s3://{}/{}",
        setting("STRATUS_S3_BUCKET"),
        unique("it-billing")
    );
    let base = (chrono::Utc::now().timestamp_micros() - 12 * HOUR) / HOUR * HOUR;
    let mut rng = StdRng::seed_from_u64(31);
    let mut item = |n: usize, hour: i64| LineItem {
        id: format!("li-{n:05}"),
        start: base + hour * HOUR + rng.random_range(0..HOUR),
        account: format!("1000000000{:02}", n % 3),
        service: ["AmazonEC2", "AmazonS3"][n % 2],
        cost: f64::from(rng.random_range(1..10_000)) / 100.0,
    };
    // Hours 0-4, then restatements of ten hour-0 items before hour 0 is emitted.
    let mut items: Vec<LineItem> = (0..150).map(|n| item(n, (n / 30) as i64)).collect();
    let restated: Vec<LineItem> = items[..10]
        .iter()
        .enumerate()
        .map(|(n, original)| LineItem {
            start: original.start,
            ..item(n, 0)
        })
        .collect();
    items.extend(restated);
    let json = |items: &[LineItem]| -> Vec<(String, String)> {
        items.iter().map(|i| (i.id.clone(), i.json())).collect()
    };
    produce(&topic, &json(&items)).await;
    run(&pipeline, &tables).await;

    // After a restart: restatements of ten hour-1 items (hour 1 has been emitted: it is
    // updated), then hour 5.
    let mut later: Vec<LineItem> = Vec::new();
    for (n, original) in items.iter().enumerate().take(40).skip(30) {
        let mut restated = item(n, 1);
        restated.start = original.start;
        later.push(restated);
    }
    later.extend((150..180).map(|n| item(n, 5)));
    produce(&topic, &json(&later)).await;
    run(&pipeline, &tables).await;
    items.extend(later);

    // The reference: each item at its last version, summed per account, service and hour,
    // for the hours the final watermark (newest usage start − 1 h) has closed.
    let watermark = items.iter().map(|i| i.start).max().unwrap() - HOUR;
    let mut latest: HashMap<&str, &LineItem> = HashMap::new();
    for i in &items {
        latest.insert(&i.id, i);
    }
    let mut want: BTreeMap<(String, String, i64), (i64, f64)> = BTreeMap::new();
    for i in latest.values() {
        let hour = i.start - i.start.rem_euclid(HOUR);
        if hour + HOUR <= watermark {
            let w = want
                .entry((i.account.clone(), i.service.to_string(), hour))
                .or_default();
            w.0 += 1;
            w.1 += i.cost;
        }
    }

    let mut got: BTreeMap<(String, String, i64), (i32, i64, f64)> = BTreeMap::new();
    for b in read_delta(&format!("{tables}/cost_hourly")).await {
        let accounts = strings(&b, "account_id");
        let services = strings(&b, "service");
        let starts = b
            .column_by_name("window_start")
            .unwrap()
            .as_primitive::<TimestampMicrosecondType>();
        let revisions = b
            .column_by_name("revision")
            .unwrap()
            .as_primitive::<Int32Type>();
        let counts = b
            .column_by_name("line_items")
            .unwrap()
            .as_primitive::<Int64Type>();
        let costs = b
            .column_by_name("cost")
            .unwrap()
            .as_primitive::<Float64Type>();
        for i in 0..b.num_rows() {
            let id = (accounts[i].clone(), services[i].clone(), starts.value(i));
            let row = (revisions.value(i), counts.value(i), costs.value(i));
            if got.get(&id).is_none_or(|g| g.0 < row.0) {
                got.insert(id, row);
            }
        }
    }
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (id, (count, cost)) in &want {
        let (_, got_count, got_cost) = got[id];
        assert_eq!(got_count, *count, "{id:?} line items");
        assert!(
            (got_cost - cost).abs() < 1e-6,
            "{id:?}: {got_cost} vs {cost}"
        );
    }
    let updated = got.iter().filter(|(_, g)| g.0 > 0).count();
    assert!(updated > 0, "no hour was updated by a restatement");
}

#[tokio::test(flavor = "multi_thread")]
async fn spot_price_hourly_statistics_per_type_and_zone() {
    let topic = unique("it-spot");
    create_topic(&topic, 1).await;
    let pipeline = shipped("spot-prices.yaml", "cloud.spot_prices", &topic).await;
    let tables = format!(
        "s3://{}/{}",
        setting("STRATUS_S3_BUCKET"),
        unique("it-spot")
    );
    let base = (chrono::Utc::now().timestamp_micros() - 30 * HOUR) / HOUR * HOUR;
    let mut rng = StdRng::seed_from_u64(8);
    // Irregular steps: each series changes price at random moments over 24 hours.
    let mut changes: Vec<(String, String, i64, f64)> = Vec::new();
    for t in ["m5.large", "c5.xlarge", "r6g.2xlarge"] {
        for az in ["us-east-1a", "us-east-1b"] {
            let mut ts = base;
            let mut price = rng.random_range(0.02..0.5);
            while ts < base + 24 * HOUR {
                ts += rng.random_range(60 * S..3 * HOUR);
                price = (price * rng.random_range(0.9..1.1_f64)).max(0.001);
                changes.push((t.to_string(), az.to_string(), ts, price));
            }
        }
    }
    let records: Vec<(String, String)> = changes
        .iter()
        .map(|(t, az, ts, price)| {
            (
                format!("{t}/{az}"),
                format!(
                    r#"{{"ts":"{}","region":"us-east-1","az":"{az}","instance_type":"{t}","product":"Linux/UNIX","price":{price}}}"#,
                    rfc3339(*ts)
                ),
            )
        })
        .collect();
    produce(&topic, &records).await;
    run(&pipeline, &tables).await;

    // One partition: the final watermark is the newest change minus the 1-minute bound.
    let watermark = changes.iter().map(|c| c.2).max().unwrap() - 60 * S;
    let mut want: BTreeMap<Series, (i64, f64, f64, f64)> = BTreeMap::new();
    for (t, az, ts, price) in &changes {
        let hour = ts - ts.rem_euclid(HOUR);
        if hour + HOUR > watermark {
            continue;
        }
        let w = want
            .entry((t.clone(), az.clone(), hour))
            .or_insert((0, 0.0, f64::MAX, f64::MIN));
        w.0 += 1;
        w.1 += price;
        w.2 = w.2.min(*price);
        w.3 = w.3.max(*price);
    }
    let mut got: BTreeMap<Series, (i64, f64, f64, f64)> = BTreeMap::new();
    for b in read_delta(&format!("{tables}/spot_price_features_1h")).await {
        let types = strings(&b, "instance_type");
        let zones = strings(&b, "az");
        let col = |n: &str| b.column_by_name(n).unwrap().clone();
        let starts = col("window_start");
        let starts = starts.as_primitive::<TimestampMicrosecondType>();
        let changes_col = col("changes");
        let counts = changes_col.as_primitive::<Int64Type>();
        let (mean, min, max) = (col("mean_price"), col("min_price"), col("max_price"));
        for i in 0..b.num_rows() {
            let n = counts.value(i);
            got.insert(
                (types[i].clone(), zones[i].clone(), starts.value(i)),
                (
                    n,
                    mean.as_primitive::<Float64Type>().value(i) * n as f64,
                    min.as_primitive::<Float64Type>().value(i),
                    max.as_primitive::<Float64Type>().value(i),
                ),
            );
        }
    }
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (id, g) in &got {
        let w = &want[id];
        assert_eq!(g.0, w.0, "{id:?} changes");
        assert!((g.1 - w.1).abs() < 1e-9, "{id:?} mean");
        assert_eq!((g.2, g.3), (w.2, w.3), "{id:?} min and max");
    }
}
