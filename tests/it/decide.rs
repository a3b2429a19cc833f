//! Decisions end to end from the shipped pipelines on the real broker and S3 server: alerts
//! from `cloud-metrics` on generated telemetry with injected anomalies, and recommendations
//! from `spot-prices` on four days of spot prices. Every message on the output topics must
//! validate against `schemas/alert.json` / `schemas/recommendation.json`, follow the
//! lifecycle and re-issue rules, and match the Delta tables.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use arrow::array::AsArray;
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use stratus::generate::{GenerateConfig, generate, rfc3339};
use stratus::pipeline::Pipeline;

use crate::shipped::{produce, run};
use crate::{
    consume_all, consume_with_headers, create_topic, create_topic_with, read_delta, setting, unique,
};

const S: i64 = 1_000_000;
const HOUR: i64 = 3600 * S;

/// A shipped pipeline with each `topic: X` renamed to `topic: <tag>.X`.
async fn shipped(file: &str, tag: &str) -> Pipeline {
    let root = env!("CARGO_MANIFEST_DIR");
    let path = Path::new(root).join("pipelines").join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replace("topic: ", &format!("topic: {tag}."));
    Pipeline::from_yaml(&path, &text).await.unwrap()
}

fn validator(name: &str) -> jsonschema::Validator {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("schemas")
        .join(name);
    let schema: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap()
}

/// The topic's messages as JSON, each checked against `schema`, with their headers.
fn messages(topic: &str, schema: &str) -> Vec<(Value, BTreeMap<String, String>)> {
    let v = validator(schema);
    consume_with_headers(topic)
        .into_iter()
        .map(|(bytes, headers)| {
            let doc: Value = serde_json::from_slice(&bytes).unwrap();
            let errors: Vec<String> = v.iter_errors(&doc).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{doc}: {errors:?}");
            (doc, headers.into_iter().collect())
        })
        .collect()
}

fn s3_tables(tag: &str) -> String {
    format!("s3://{}/{tag}", setting("STRATUS_S3_BUCKET"))
}

/// The alert table at `location` holds exactly `alerts` (the topic's messages), compared on
/// (alert_id, revision).
async fn assert_alerts_in_delta(location: &str, alerts: &[(Value, BTreeMap<String, String>)]) {
    let mut in_delta = BTreeSet::new();
    for b in read_delta(location).await {
        let ids = arrow::compute::cast(
            b.column_by_name("alert_id").unwrap(),
            &arrow::datatypes::DataType::Utf8,
        )
        .unwrap();
        let revs = arrow::compute::cast(
            b.column_by_name("revision").unwrap(),
            &arrow::datatypes::DataType::Int64,
        )
        .unwrap();
        let ids = arrow::array::AsArray::as_string::<i32>(&ids);
        let revs = arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(&revs);
        for i in 0..b.num_rows() {
            in_delta.insert((ids.value(i).to_string(), revs.value(i)));
        }
    }
    let on_topic: BTreeSet<(String, i64)> = alerts
        .iter()
        .map(|(d, _)| {
            (
                d["alert_id"].as_str().unwrap().to_string(),
                d["revision"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(in_delta, on_topic);
}

#[tokio::test(flavor = "multi_thread")]
async fn cloud_metrics_alerts_follow_their_lifecycle_and_match_the_schema() {
    let tag = unique("it-alerts");
    // The same 10 days of telemetry on every run: a fixed start in the past (patterns follow
    // the hour of day and the day of the week; an event in the future is invalid), kept by the
    // topics whatever its age. The detectors learn
    // the weekly season in the first week and alert only after it, so the anomalies (in the
    // second half) of the last three days are the ones that can alert.
    for t in [
        "cloud.metrics",
        "alerts",
        "alerts.feedback",
        "recommendations",
        "cloud.metrics.cpu_demand_forecasts",
    ] {
        create_topic_with(&format!("{tag}.{t}"), 1, &[("retention.ms", "-1")]).await;
    }
    let pipeline = shipped("cloud-metrics.yaml", &tag).await;
    let start = chrono::DateTime::parse_from_rfc3339("2026-11-16T08:00:00Z")
        .unwrap()
        .timestamp_micros();
    let mut events = Vec::new();
    let labels = generate(
        &GenerateConfig {
            seed: 11,
            start_us: start,
            span_us: 10 * 24 * HOUR,
            interval_us: 300 * S,
            resources: 6,
            anomaly_share: 1.0,
        },
        &mut |topic: &'static str, key: &str, payload: &str, _ts: i64| {
            if topic == "cloud.metrics" {
                events.push((key.to_string(), payload.to_string()));
            }
            Ok(())
        },
    )
    .unwrap();
    let producing = std::time::Instant::now();
    produce(&format!("{tag}.cloud.metrics"), &events).await;
    let tables = s3_tables(&tag);
    let metrics = run(&pipeline, &tables).await;
    let since_produced = producing.elapsed().as_secs_f64();
    // Each demand forecast met by its actual is a row of the accuracy table.
    let resolved = metrics.total("forecasts_resolved_total", &[("stage", "cpu_demand")]);
    assert!(resolved > 0);
    let accuracy: usize = read_delta(&format!("{tables}/cpu_demand_forecast_accuracy"))
        .await
        .iter()
        .map(|b| b.num_rows())
        .sum();
    assert_eq!(
        accuracy as u64, resolved,
        "rows in cpu_demand_forecast_accuracy"
    );

    // The topic also carries the models' own alerts (their drift and accuracy): every one
    // valid, each of a kind the pipeline raises; the rest is the metric anomalies'.
    let (alerts, of_models): (Vec<_>, Vec<_>) = messages(&format!("{tag}.alerts"), "alert.json")
        .into_iter()
        .partition(|(a, _)| a["kind"] == "metric_anomaly");
    assert!(
        of_models
            .iter()
            .all(|(a, _)| a["kind"] == "model_drift" || a["kind"] == "model_degraded"),
        "{of_models:?}"
    );
    assert!(
        !alerts.is_empty(),
        "no alert from {} injected anomalies",
        labels.anomalies.len()
    );
    // Each alert opened is timed once, from events appended while the test produced them.
    let latency = metrics
        .detection_latency_seconds
        .with_label_values(&[pipeline.name.as_str(), "alerts"]);
    let opened = alerts
        .iter()
        .filter(|(a, _)| a["status"] == "firing")
        .count();
    assert_eq!(
        latency.get_sample_count(),
        opened as u64,
        "detection latencies"
    );
    let mean = latency.get_sample_sum() / opened as f64;
    assert!(
        mean > 0.0 && mean <= since_produced,
        "mean detection latency {mean} s, {since_produced} s since the events were produced"
    );
    // Per alert: revisions 0, 1, 2, … in order; it starts firing; after `resolved` only a
    // re-opening `firing` follows.
    let mut by_id: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for (doc, headers) in &alerts {
        assert_eq!(headers["severity"], doc["severity"].as_str().unwrap());
        assert_eq!(headers["status"], doc["status"].as_str().unwrap());
        by_id
            .entry(doc["alert_id"].as_str().unwrap().to_string())
            .or_default()
            .push(doc);
    }
    for (id, docs) in &by_id {
        let revisions: Vec<i64> = docs
            .iter()
            .map(|d| d["revision"].as_i64().unwrap())
            .collect();
        assert_eq!(
            revisions,
            (0..docs.len() as i64).collect::<Vec<_>>(),
            "{id}"
        );
        assert_eq!(docs[0]["status"], "firing", "{id}");
        for pair in docs.windows(2) {
            if pair[0]["status"] == "resolved" {
                assert_eq!(pair[1]["status"], "firing", "{id}: after resolved");
            } else {
                assert_ne!(pair[1]["status"], "firing", "{id}: firing while open");
            }
        }
        // The correlation id names an alert that exists.
        let c = docs[0]["correlation_id"].as_str().unwrap();
        assert!(by_id.contains_key(c), "{id}: correlation {c}");
    }
    // Some alert is on a resource with an injected anomaly.
    let injected: BTreeSet<&str> = labels
        .anomalies
        .iter()
        .map(|a| a.subject.as_str())
        .collect();
    assert!(
        alerts
            .iter()
            .any(|(d, _)| injected.contains(d["resource"].as_str().unwrap()))
    );
    // The Delta table holds exactly the messages on the topic.
    assert_alerts_in_delta(&format!("{tables}/alerts"), &alerts).await;
    // Hourly CPU demand per resource, from every hour once it has two days of history, 1 to 24
    // hours ahead: quantiles in order around the median, each target its origin plus its
    // horizon, the same rows in Delta as on the topic.
    let mut issued: BTreeMap<(String, i64), BTreeSet<i64>> = BTreeMap::new();
    for b in read_delta(&format!("{tables}/cpu_demand_forecasts")).await {
        let col = |n: &str| b.column_by_name(n).unwrap().clone();
        let resource =
            arrow::compute::cast(&col("resource_id"), &arrow::datatypes::DataType::Utf8).unwrap();
        let resource = resource.as_string::<i32>();
        let [ts, target] = ["ts", "target_ts"]
            .map(|n| arrow::compute::cast(&col(n), &arrow::datatypes::DataType::Int64).unwrap());
        let (ts, target) = (
            ts.as_primitive::<Int64Type>(),
            target.as_primitive::<Int64Type>(),
        );
        let horizon = col("horizon_hours");
        let horizon = horizon.as_primitive::<Int64Type>();
        let q: Vec<_> = ["p025", "p10", "p50", "p90", "p975"]
            .iter()
            .map(|n| col(n).as_primitive::<Float64Type>().clone())
            .collect();
        for i in 0..b.num_rows() {
            assert_eq!(target.value(i) - ts.value(i), horizon.value(i) * HOUR);
            assert!(
                ts.value(i) >= start + 48 * HOUR,
                "forecast before two days of history"
            );
            assert!(
                q.windows(2).all(|w| w[0].value(i) <= w[1].value(i)),
                "row {i}"
            );
            issued
                .entry((resource.value(i).to_string(), ts.value(i)))
                .or_default()
                .insert(horizon.value(i));
        }
    }
    let resources: BTreeSet<&str> = issued.keys().map(|(r, _)| r.as_str()).collect();
    assert_eq!(resources.len(), 6, "{resources:?}");
    assert!(issued.values().all(|h| *h == (1..=24).collect()));
    let on_topic = consume_all(&format!("{tag}.cloud.metrics.cpu_demand_forecasts")).len();
    assert_eq!(on_topic, issued.values().map(BTreeSet::len).sum::<usize>());
    // Rightsizing: once a resource is forecast, its CPU is sized by the forecast.
    let recs = messages(&format!("{tag}.recommendations"), "recommendation.json");
    assert!(recs.iter().all(|(d, _)| d["kind"] == "rightsizing"));
    let by_forecast = recs
        .iter()
        .filter(|(d, _)| {
            d["rationale"]
                .as_str()
                .unwrap()
                .starts_with("forecast p95 CPU")
        })
        .count();

    // Readers' verdicts on those alerts, one each (alternately real and noise), then a changed
    // verdict on the first and one on an alert no stage opened: the run after counts the
    // first verdict on each of its own alerts, and lands every verdict in its table.
    let opened: BTreeMap<&str, (&str, &str)> = alerts
        .iter()
        .filter(|(a, _)| a["status"] == "firing")
        .map(|(a, _)| {
            let field = |f: &str| a[f].as_str().unwrap();
            (field("alert_id"), (field("resource"), field("ts")))
        })
        .collect();
    let verdict = |id: &str, resource: &str, ts: &str, verdict: &str| {
        let payload =
            serde_json::json!({"alert_id": id, "resource": resource, "verdict": verdict, "ts": ts});
        (resource.to_string(), payload.to_string())
    };
    let mut verdicts: Vec<(String, String)> = opened
        .iter()
        .enumerate()
        .map(|(i, (id, (resource, ts)))| {
            verdict(id, resource, ts, if i % 2 == 0 { "true" } else { "noise" })
        })
        .collect();
    let (first, (resource, ts)) = opened.iter().next().unwrap();
    verdicts.push(verdict(first, resource, ts, "noise"));
    verdicts.push(verdict("0123456789abcdef", resource, ts, "noise"));
    produce(&format!("{tag}.alerts.feedback"), &verdicts).await;
    let metrics = run(&pipeline, &tables).await;
    let counted = |v: &str| {
        metrics
            .alert_feedback
            .with_label_values(&[pipeline.name.as_str(), "alerts", v])
            .get()
    };
    let n = opened.len() as u64;
    assert_eq!((counted("true"), counted("noise")), (n.div_ceil(2), n / 2));
    let landed: usize = read_delta(&format!("{tables}/alert_feedback"))
        .await
        .iter()
        .map(|b| b.num_rows())
        .sum();
    assert_eq!(landed, verdicts.len(), "verdicts in alert_feedback");

    eprintln!(
        "{} alert messages for {} alerts; {} rightsizing recommendations, {by_forecast} sized by \
         the demand forecast; {} forecast origins",
        alerts.len(),
        by_id.len(),
        recs.len(),
        issued.len()
    );
}

/// 96 hours of five pools' spot prices, ending 4 hours ago, in time order: (key, JSON).
fn spot_prices() -> Vec<(String, String)> {
    let base = (chrono::Utc::now().timestamp_micros() - 100 * HOUR) / HOUR * HOUR;
    let mut rng = StdRng::seed_from_u64(21);
    let mut records = Vec::new();
    for (t, az, level) in [
        ("m5.large", "us-east-1a", 0.036),
        ("c5.xlarge", "us-east-1a", 0.068),
        ("r5.large", "us-east-1a", 0.041),
        ("c5.xlarge", "us-east-1b", 0.07),
        ("m5.large", "us-east-1b", 0.037),
    ] {
        let mut ts = base;
        let mut price: f64 = level;
        while ts < base + 96 * HOUR {
            ts += rng.random_range(20 * 60 * S..4 * HOUR);
            price = (price * rng.random_range(0.96..1.04)).clamp(level * 0.8, level * 1.25);
            records.push((
                format!("{t}/{az}"),
                format!(
                    r#"{{"ts":"{}","region":"us-east-1","az":"{az}","instance_type":"{t}","product":"Linux/UNIX","price":{price:.5}}}"#,
                    rfc3339(ts)
                ),
            ));
        }
    }
    records.sort_by(|a, b| a.1[7..31].cmp(&b.1[7..31]));
    records
}

/// A forecast model whose errors stay past the pipeline's thresholds for the sustained span
/// raises `model_degraded` alerts through the alert policy, from its health rows: one alert
/// per horizon whose row reached the alarm level, none for the others, each as severe as its
/// score; with thresholds far above its errors, the same health rows raise none.
#[tokio::test(flavor = "multi_thread")]
async fn a_degraded_forecast_model_raises_alerts_through_the_alert_policy() {
    let tag = unique("it-health");
    for t in ["spot", "spot.dlq", "alerts"] {
        create_topic(&format!("{tag}.{t}"), 1).await;
    }
    produce(&format!("{tag}.spot"), &spot_prices()).await;
    let root = env!("CARGO_MANIFEST_DIR");
    for (run_as, threshold) in [("degraded", 1e-6), ("healthy", 1e6)] {
        let name = format!("{tag}-{run_as}");
        let yaml = format!(
            r#"name: {name}
sources:
  spot:
    kafka: {{topic: {tag}.spot, group: {name}}}
    schema: {root}/schemas/cloud.spot_prices.json
    event_time: {{field: ts, max_out_of_orderness: 1m, allowed_lateness: 1h, idle_timeout: 5m}}
stages:
  spot_1h: {{sql: {root}/sql/spot_prices_1h.sql}}
  forecast:
    forecast:
      from: spot_1h
      model: spot_price
      key: [instance_type, az]
      value: mean_price
      degraded: {{mape: {threshold}, smape: {threshold}, outcomes: 20}}
      health: {{output: health, sustain: 2h}}
  degraded:
    alert:
      from: health
      kind: model_degraded
      key: [scope, model, subject]
      resource: model
      labels: [check]
      severity: {{info: 0.5, warning: 0.7, critical: 0.9}}
      resolve_after: 6h
models: {{registry: {root}/models/registry}}
sinks:
  health: {{from: health, delta: {{table: health}}}}
  alerts: {{from: degraded, delta: {{table: alerts}}}}
  alerts_topic: {{from: degraded, kafka: {{topic: {tag}.alerts, key: [dedup_key]}}}}
# Small cycles: the watermark moves an hour or two at a time, as on a live stream.
commit: {{max_rows: 5}}
"#
        );
        let pipeline = Pipeline::from_yaml(Path::new("health.yaml"), &yaml)
            .await
            .unwrap();
        let tables = s3_tables(&name);
        run(&pipeline, &tables).await;

        let mut alarmed: BTreeMap<String, f64> = BTreeMap::new();
        let mut judged = 0;
        for b in read_delta(&format!("{tables}/health")).await {
            let text = |n: &str| {
                let c = arrow::compute::cast(b.column_by_name(n).unwrap(), &DataType::Utf8);
                c.unwrap().as_string::<i32>().clone()
            };
            let num = |n: &str| {
                b.column_by_name(n)
                    .unwrap()
                    .as_primitive::<Float64Type>()
                    .clone()
            };
            let (scope, subject, check) = (text("scope"), text("subject"), text("check"));
            let (ratio, score, c) = (num("ratio"), num("anomaly_score"), num("c_accuracy"));
            for i in 0..b.num_rows() {
                assert_eq!(
                    (scope.value(i), check.value(i)),
                    (name.as_str(), "accuracy")
                );
                assert!(["1h", "6h", "24h"].contains(&subject.value(i)));
                assert_eq!(score.value(i), (ratio.value(i) / 2.0).min(1.0));
                assert_eq!(c.value(i), score.value(i));
                judged += usize::from(ratio.value(i) > 0.0);
                if score.value(i) >= 0.5 {
                    let peak = alarmed.entry(subject.value(i).to_string()).or_default();
                    *peak = peak.max(score.value(i));
                }
            }
        }
        assert!(judged > 0, "{run_as}: no horizon was judged");
        // One alert per horizon that reached the alarm level, opened at its severity.
        let topic = messages(&format!("{tag}.alerts"), "alert.json");
        let mine: Vec<&Value> = topic
            .iter()
            .map(|(a, _)| a)
            .filter(|a| a["labels"]["scope"] == name.as_str())
            .collect();
        let mut opened: BTreeMap<String, &Value> = BTreeMap::new();
        for a in mine.iter().filter(|a| a["status"] == "firing") {
            assert_eq!(
                (&a["kind"], &a["resource"]),
                (&"model_degraded".into(), &a["labels"]["model"])
            );
            let subject = a["labels"]["subject"].as_str().unwrap().to_string();
            let first = opened.entry(subject).or_insert(a);
            assert_eq!(first["alert_id"], a["alert_id"], "one alert per horizon");
        }
        assert_eq!(
            opened.keys().collect::<Vec<_>>(),
            alarmed.keys().collect::<Vec<_>>(),
            "{run_as}"
        );
        for (subject, a) in &opened {
            assert!(a["peak_score"].as_f64().unwrap() <= alarmed[subject]);
        }
        if run_as == "healthy" {
            assert!(mine.is_empty(), "{mine:?}");
            continue;
        }
        assert_eq!(alarmed.len(), 3, "every horizon degraded");
        assert!(opened.values().all(|a| a["severity"] == "critical"));
        let table: Vec<_> = topic
            .iter()
            .filter(|(a, _)| a["labels"]["scope"] == name.as_str())
            .cloned()
            .collect();
        assert_alerts_in_delta(&format!("{tables}/alerts"), &table).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn spot_prices_recommendations_meet_constraints_and_reissue_only_on_material_change() {
    let tag = unique("it-recs");
    for t in [
        "cloud.spot_prices",
        "recommendations",
        "cloud.spot_prices.forecasts",
    ] {
        create_topic(&format!("{tag}.{t}"), 1).await;
    }
    let pipeline = shipped("spot-prices.yaml", &tag).await;
    let records = spot_prices();
    produce(&format!("{tag}.cloud.spot_prices"), &records).await;
    let tables = s3_tables(&tag);
    run(&pipeline, &tables).await;

    let recs = messages(&format!("{tag}.recommendations"), "recommendation.json");
    let of = |kind: &str, subject: &str| -> Vec<&Value> {
        recs.iter()
            .map(|(d, _)| d)
            .filter(|d| d["kind"] == kind && d["subject"] == subject)
            .collect()
    };
    // Stateless web and checkpointed batch move to spot; the database (tolerance none) never does.
    for w in ["web-frontend", "batch-etl"] {
        let r = of("spot_vs_on_demand", w);
        assert!(!r.is_empty(), "{w}: no recommendation in {recs:?}");
        assert_eq!(r[0]["recommended"][0]["purchase"], "spot");
        let s = &r[0]["expected_savings_usd"];
        assert!(
            s["low"].as_f64() <= s["expected"].as_f64()
                && s["expected"].as_f64() <= s["high"].as_f64()
        );
        assert!(s["expected"].as_f64().unwrap() > 0.0);
    }
    assert!(of("spot_vs_on_demand", "ledger-db").is_empty());
    // The instance mix meets web-frontend's requirement.
    let catalogue = stratus::decide::catalogue::Catalogue::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("catalogue/aws-ec2.csv"),
    )
    .unwrap();
    let mixes = of("instance_mix", "web-frontend");
    assert!(!mixes.is_empty());
    for m in &mixes {
        let (mut vcpu, mut mem, mut count, mut od) = (0.0, 0.0, 0, 0.0);
        let mut per_type: BTreeMap<&str, u64> = BTreeMap::new();
        for l in m["recommended"].as_array().unwrap() {
            let t = catalogue
                .get(l["instance_type"].as_str().unwrap(), "us-east-1")
                .unwrap();
            let n = l["count"].as_u64().unwrap();
            vcpu += f64::from(t.vcpu) * n as f64;
            mem += t.memory_gib * n as f64;
            count += n;
            *per_type
                .entry(l["instance_type"].as_str().unwrap())
                .or_default() += n;
            if l["purchase"] == "on_demand" {
                od += f64::from(t.vcpu) * n as f64;
            }
        }
        assert!(
            vcpu >= 12.0 && mem >= 40.0 && count <= 10 && od >= 3.0,
            "{m}"
        );
        assert!(
            per_type.len() >= 2 && per_type.values().all(|&n| n as f64 <= 0.7 * count as f64),
            "{m}"
        );
        assert_eq!(
            m["pareto_front"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p["chosen"] == true)
                .count(),
            1
        );
    }
    // Re-issued only on material change.
    let mut by_id: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
    for (d, _) in &recs {
        by_id
            .entry(d["rec_id"].as_str().unwrap())
            .or_default()
            .push(d);
    }
    for (id, docs) in &by_id {
        for pair in docs.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            assert_eq!(
                b["revision"].as_i64().unwrap(),
                a["revision"].as_i64().unwrap() + 1,
                "{id}"
            );
            let (sa, sb) = (
                a["expected_savings_usd"]["expected"].as_f64().unwrap(),
                b["expected_savings_usd"]["expected"].as_f64().unwrap(),
            );
            let moved = (sb - sa).abs() > 0.1 * sa.abs() && (sb - sa).abs() > 5.0;
            assert!(
                a["recommended"] != b["recommended"] || a["risk"] != b["risk"] || moved,
                "{id}: {a} then {b}"
            );
        }
    }
    // The Delta table holds exactly what the topic does.
    let mut in_delta = BTreeSet::new();
    for b in read_delta(&format!("{tables}/recommendations_spot")).await {
        let ids = arrow::compute::cast(
            b.column_by_name("rec_id").unwrap(),
            &arrow::datatypes::DataType::Utf8,
        )
        .unwrap();
        let ids = arrow::array::AsArray::as_string::<i32>(&ids);
        for i in 0..b.num_rows() {
            in_delta.insert(ids.value(i).to_string());
        }
    }
    assert_eq!(in_delta, by_id.keys().map(|k| k.to_string()).collect());
    // The spot forecasts name the model that made them, and the forecast stage's rows — each
    // pool from two days of history on, at 1, 6 and 24 hours — are in Delta and on the topic.
    for w in ["web-frontend", "batch-etl"] {
        let r = of("spot_vs_on_demand", w);
        assert!(
            r[0]["rationale"]
                .as_str()
                .unwrap()
                .contains("by spot_price@")
        );
    }
    let forecasts = read_delta(&format!("{tables}/spot_price_forecasts")).await;
    // Per pool: horizons, first origin.
    let mut per_pool: BTreeMap<(String, String), (BTreeSet<i64>, i64)> = BTreeMap::new();
    let mut rows = 0;
    let utf8 = |b: &arrow::array::RecordBatch, name: &str| {
        let c = arrow::compute::cast(
            b.column_by_name(name).unwrap(),
            &arrow::datatypes::DataType::Utf8,
        )
        .unwrap();
        arrow::array::AsArray::as_string::<i32>(&c)
            .iter()
            .map(|v| v.unwrap().to_string())
            .collect::<Vec<_>>()
    };
    for b in &forecasts {
        let (types, zones, versions) = (
            utf8(b, "instance_type"),
            utf8(b, "az"),
            utf8(b, "model_version"),
        );
        let h = arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(
            b.column_by_name("horizon_hours").unwrap(),
        );
        let ts = arrow::compute::cast(
            b.column_by_name("ts").unwrap(),
            &arrow::datatypes::DataType::Int64,
        )
        .unwrap();
        let ts = arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(&ts);
        for i in 0..b.num_rows() {
            assert!(versions[i].starts_with("spot_price@"));
            let pool = per_pool
                .entry((types[i].clone(), zones[i].clone()))
                .or_insert((BTreeSet::new(), i64::MAX));
            pool.0.insert(h.value(i));
            pool.1 = pool.1.min(ts.value(i));
        }
        rows += b.num_rows();
    }
    assert_eq!(per_pool.len(), 5, "{per_pool:?}");
    for ((t, az), (horizons, first_origin)) in &per_pool {
        assert_eq!(*horizons, BTreeSet::from([1, 6, 24]));
        // The pool's first hourly row is the hour of its first change.
        let first_change = records
            .iter()
            .filter(|(k, _)| *k == format!("{t}/{az}"))
            .map(|(_, p)| {
                let doc: Value = serde_json::from_str(p).unwrap();
                chrono::DateTime::parse_from_rfc3339(doc["ts"].as_str().unwrap())
                    .unwrap()
                    .timestamp_micros()
            })
            .min()
            .unwrap();
        assert_eq!(
            *first_origin,
            first_change / HOUR * HOUR + 48 * HOUR,
            "{t} {az}"
        );
    }
    assert_eq!(
        consume_all(&format!("{tag}.cloud.spot_prices.forecasts")).len(),
        rows
    );
    eprintln!(
        "{} recommendations, {rows} forecast rows: {}",
        recs.len(),
        recs[0].0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn billing_cost_leaks_raise_cost_alerts_with_their_impact() {
    let tag = unique("it-cost-alerts");
    for t in ["cloud.billing", "alerts"] {
        create_topic(&format!("{tag}.{t}"), 1).await;
    }
    let pipeline = shipped("billing.yaml", &tag).await;
    let start = (chrono::Utc::now().timestamp_micros() - 8 * 24 * HOUR) / HOUR * HOUR;
    let mut events = Vec::new();
    let labels = generate(
        &GenerateConfig {
            seed: 14,
            start_us: start,
            span_us: 6 * 24 * HOUR,
            interval_us: 300 * S,
            resources: 9,
            anomaly_share: 0.9,
        },
        &mut |topic: &'static str, key: &str, payload: &str, _ts: i64| {
            if topic == "cloud.billing" {
                events.push((key.to_string(), payload.to_string()));
            }
            Ok(())
        },
    )
    .unwrap();
    // The account and service each leaking instance is billed to.
    let leaks: Vec<_> = labels
        .anomalies
        .iter()
        .filter(|a| a.kind == "cost_leak")
        .collect();
    assert!(!leaks.is_empty(), "the seed injects no cost leak");
    let mut billed_to: BTreeMap<String, (String, String)> = BTreeMap::new();
    for (_, payload) in &events {
        let item: Value = serde_json::from_str(payload).unwrap();
        if let Some(r) = item["resource_id"].as_str() {
            billed_to.insert(
                r.to_string(),
                (
                    item["account_id"].as_str().unwrap().to_string(),
                    item["service"].as_str().unwrap().to_string(),
                ),
            );
        }
    }
    produce(&format!("{tag}.cloud.billing"), &events).await;
    let tables = s3_tables(&tag);
    run(&pipeline, &tables).await;

    let alerts = messages(&format!("{tag}.alerts"), "alert.json");
    for (doc, headers) in &alerts {
        assert_eq!(doc["kind"], "cost_anomaly");
        assert_eq!(headers["severity"], doc["severity"].as_str().unwrap());
    }
    // Every account and service with a leak has an alert firing once its first leak began,
    // carrying the hour's excess over the usual (USD) as its impact — at least a warning from
    // the pipeline's `impact_warning` of 0.5 USD.
    let mut first_leak: BTreeMap<&(String, String), i64> = BTreeMap::new();
    for leak in &leaks {
        let start = first_leak
            .entry(&billed_to[&leak.subject])
            .or_insert(i64::MAX);
        *start = (*start).min(leak.start_us);
    }
    for ((account, service), start) in &first_leak {
        let firing: Vec<&Value> = alerts
            .iter()
            .map(|(d, _)| d)
            .filter(|d| {
                d["labels"]["account_id"] == account.as_str()
                    && d["labels"]["service"] == service.as_str()
                    && d["status"] == "firing"
                    && chrono::DateTime::parse_from_rfc3339(d["window_end"].as_str().unwrap())
                        .unwrap()
                        .timestamp_micros()
                        > *start
            })
            .collect();
        assert!(
            !firing.is_empty(),
            "no cost alert on ({account}, {service}) after its leak from {}: {alerts:?}",
            rfc3339(*start)
        );
        let a = firing[0];
        let impact = a["impact_usd"]
            .as_f64()
            .expect("a cost alert has its impact");
        assert!(impact > 0.0, "{a}");
        if impact >= 0.5 {
            assert_ne!(a["severity"], "info", "{a}");
        }
        assert!(
            a["message"].as_str().unwrap().contains("cost impact"),
            "{a}"
        );
        eprintln!("the alert on ({account}, {service}): {a}");
    }
    // The Delta table holds exactly the messages on the topic.
    assert_alerts_in_delta(&format!("{tables}/cost_alerts"), &alerts).await;
    eprintln!(
        "{} cost alert messages for {} leaks",
        alerts.len(),
        leaks.len()
    );
}
