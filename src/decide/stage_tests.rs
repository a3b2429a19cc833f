//! The decision stages on Arrow batches, and their output against `schemas/*.json`.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};

use super::alert::Policy;
use super::catalogue::Catalogue;
use super::mix::{Purchase, Requirement, Weights};
use super::rightsize::Headroom;
use super::rows::{AlertInput, alert_schema};
use super::spot::{InterruptionProxy, Tolerance, Workload};
use super::stage::*;
use crate::operator::Operator;

const MIN: i64 = 60_000_000;
const HOUR: i64 = 60 * MIN;
const T0: i64 = 1_795_392_000_000_000;

fn validator(name: &str) -> jsonschema::Validator {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("schemas")
        .join(name);
    let schema: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap()
}

/// Each row as the Kafka sink encodes it, checked against `schema`.
fn json_rows(batch: &RecordBatch, schema: &str) -> Vec<serde_json::Value> {
    let v = validator(schema);
    let encoded = crate::sink::kafka::encode_rows(batch, &[]).unwrap();
    encoded
        .values()
        .map(|bytes| {
            let doc: serde_json::Value = serde_json::from_slice(bytes).unwrap();
            let errors: Vec<String> = v
                .iter_errors(&doc)
                .map(|e| format!("{e} at {}", e.instance_path()))
                .collect();
            assert!(errors.is_empty(), "{doc}: {errors:?}");
            doc
        })
        .collect()
}

fn ts(v: Vec<i64>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC"))
}

fn catalogue() -> Catalogue {
    Catalogue::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("catalogue/aws-ec2.csv"))
        .unwrap()
}

#[test]
fn alert_rows_match_the_alert_schema() {
    let detectors = vec!["robust_z".to_string(), "cusum".to_string()];
    let labels = vec!["resource_id".to_string(), "account_id".to_string()];
    let spec = AlertSpec {
        policy: Policy {
            stage: "alerts".into(),
            kind: "metric_anomaly".into(),
            thresholds: [0.5, 0.7, 0.9],
            escalate_after: None,
            impact_warning: None,
            impact_critical: None,
            resolve_after: 10 * MIN,
            cooldown: HOUR,
            flapping: None,
            maintenance: Vec::new(),
            correlate: Some((vec![vec!["account_id".into()]], 10 * MIN)),
        },
        input: AlertInput {
            key: vec!["resource_id".into()],
            resource: "resource_id".into(),
            score: "anomaly_score".into(),
            contributions: vec![
                ("robust_z".into(), "c_robust_z".into()),
                ("cusum".into(), "c_cusum".into()),
            ],
            impact: None,
            labels: labels.clone(),
        },
        schema: alert_schema(&detectors, &labels),
        feedback: None,
    };
    let schema = Arc::new(Schema::new(vec![
        Field::new("resource_id", DataType::Utf8, false),
        Field::new("account_id", DataType::Utf8, false),
        Field::new(
            "window_start",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new(
            "window_end",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("anomaly_score", DataType::Float64, true),
        Field::new("c_robust_z", DataType::Float64, true),
        Field::new("c_cusum", DataType::Float64, true),
    ]));
    let scores = [0.2, 0.95, 0.8, 0.1, 0.1, 0.1];
    let n = scores.len();
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(vec!["i-1"; n])),
            Arc::new(StringArray::from(vec!["111"; n])),
            ts((0..n as i64).map(|k| T0 + k * 5 * MIN).collect()),
            ts((1..=n as i64).map(|k| T0 + k * 5 * MIN).collect()),
            Arc::new(Float64Array::from(scores.to_vec())),
            Arc::new(Float64Array::from(
                scores.iter().map(|s| s * 0.7).collect::<Vec<_>>(),
            )),
            Arc::new(Float64Array::from(
                scores.iter().map(|s| s * 0.3).collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap();
    let mut op = AlertOperator::new(spec);
    let rows = op.apply(&batch).unwrap();
    let docs = json_rows(&rows, "alert.json");
    let status: Vec<&str> = docs.iter().map(|d| d["status"].as_str().unwrap()).collect();
    assert_eq!(status, ["firing", "resolved"]);
    assert_eq!(docs[0]["severity"], "critical");
    assert_eq!(docs[0]["contributions"]["robust_z"], 0.95 * 0.7);
    assert_eq!(docs[0]["labels"]["account_id"], "111");
    assert_eq!(docs[0]["ts"], "2026-11-23T00:10:00Z");
}

/// Hourly mean prices of `types` in us-east-1a for `hours` hours: slow steps around a level.
fn spot_batch(types: &[(&str, f64)], from: i64, hours: i64) -> RecordBatch {
    let (mut t, mut z, mut w, mut p) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (name, level) in types {
        for h in from..from + hours {
            t.push(name.to_string());
            z.push("us-east-1a".to_string());
            w.push(T0 + h * HOUR);
            p.push(level * (1.0 + 0.05 * (((h / 7) % 3) as f64 - 1.0)));
        }
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("instance_type", DataType::Utf8, false),
        Field::new("az", DataType::Utf8, false),
        Field::new(
            "window_start",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("mean_price", DataType::Float64, false),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(t)),
            Arc::new(StringArray::from(z)),
            ts(w),
            Arc::new(Float64Array::from(p)),
        ],
    )
    .unwrap()
}

fn spot_spec() -> SpotSpec {
    let web = Workload {
        name: "web".into(),
        instance_type: "m5.large".into(),
        az: "us-east-1a".into(),
        count: 6,
        purchase: Purchase::OnDemand,
        interruption_tolerance: Tolerance::Medium,
        availability_target: 0.99,
        restart_minutes: 10.0,
        requirement: Some(Requirement {
            vcpu: 12.0,
            memory_gib: 40.0,
            max_count: 10,
            min_types: 2,
            max_share: 0.7,
            on_demand_base: 0.25,
        }),
    };
    SpotSpec {
        stage: "recommend".into(),
        instance_type: "instance_type".into(),
        az: "az".into(),
        time: "window_start".into(),
        price: "mean_price".into(),
        workloads: vec![web],
        catalogue: catalogue(),
        model: None,
        proxy: InterruptionProxy::default(),
        weights: Weights::default(),
        paths: 1000,
        hours: 730.0,
        min_history: 48 * HOUR,
    }
}

#[test]
fn spot_and_mix_recommendations_are_reproducible_constrained_and_match_their_schema() {
    let types = [
        ("m5.large", 0.035),
        ("c5.xlarge", 0.065),
        ("r5.large", 0.04),
    ];
    let run = || {
        let mut op = SpotOperator::open(spot_spec(), &Default::default()).unwrap();
        let first = op.apply(&spot_batch(&types, 0, 72)).unwrap();
        let next = op.apply(&spot_batch(&types, 72, 1)).unwrap();
        (first, next)
    };
    let (first, next) = run();
    assert_eq!(run().0, first, "a seeded run repeats exactly");
    let docs = json_rows(&first, "recommendation.json");
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["spot_vs_on_demand", "instance_mix"]);
    let spot = &docs[0];
    assert_eq!(spot["recommended"][0]["purchase"], "spot");
    let s = &spot["expected_savings_usd"];
    assert!(
        s["low"].as_f64() <= s["expected"].as_f64() && s["expected"].as_f64() <= s["high"].as_f64()
    );
    // Spot at ~0.035 against 0.096 on demand, 6 instances, a month.
    let expected = s["expected"].as_f64().unwrap();
    assert!(
        (expected - (0.096 - 0.035) * 6.0 * 730.0).abs() < 40.0,
        "{expected}"
    );
    // The mix meets the requirement.
    let mix = &docs[1];
    let cat = catalogue();
    let (mut vcpu, mut mem, mut count, mut od_vcpu) = (0.0, 0.0, 0, 0.0);
    for l in mix["recommended"].as_array().unwrap() {
        let t = cat
            .get(l["instance_type"].as_str().unwrap(), "us-east-1")
            .unwrap();
        let n = l["count"].as_u64().unwrap() as f64;
        vcpu += f64::from(t.vcpu) * n;
        mem += t.memory_gib * n;
        count += l["count"].as_u64().unwrap();
        if l["purchase"] == "on_demand" {
            od_vcpu += f64::from(t.vcpu) * n;
        }
    }
    assert!(
        vcpu >= 12.0 && mem >= 40.0 && count <= 10 && od_vcpu >= 3.0,
        "{mix}"
    );
    let front = mix["pareto_front"].as_array().unwrap();
    assert!(front.len() >= 2 && front.iter().filter(|p| p["chosen"] == true).count() == 1);
    // One more hour at the same prices: nothing changed materially, nothing re-issued.
    assert_eq!(next.num_rows(), 0);
}

/// A day of 5-minute windows of one m5.2xlarge: CPU 10–21 %, memory 30 %.
fn idle_usage() -> RecordBatch {
    let windows = 24 * 12;
    let (mut r, mut m, mut it, mut reg, mut t, mut v) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for k in 0..windows {
        for (metric, value) in [
            ("CPUUtilization", 10.0 + (k % 12) as f64),
            ("MemoryUtilization", 30.0),
        ] {
            r.push("i-1");
            m.push(metric);
            it.push("m5.2xlarge");
            reg.push("us-east-1");
            t.push(T0 + k * 5 * MIN);
            v.push(value);
        }
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("resource_id", DataType::Utf8, false),
        Field::new("metric", DataType::Utf8, false),
        Field::new("instance_type", DataType::Utf8, false),
        Field::new("region", DataType::Utf8, false),
        Field::new(
            "window_end",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("max", DataType::Float64, false),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(r)),
            Arc::new(StringArray::from(m)),
            Arc::new(StringArray::from(it)),
            Arc::new(StringArray::from(reg)),
            ts(t),
            Arc::new(Float64Array::from(v)),
        ],
    )
    .unwrap()
}

#[test]
fn rightsizing_recommends_a_smaller_type_for_an_idle_resource() {
    let mut op = RightsizeOperator::new(rightsize_spec());
    let batch = idle_usage();
    let rows = op.apply(&batch).unwrap();
    let docs = json_rows(&rows, "recommendation.json");
    assert_eq!(docs.len(), 1);
    // p95 CPU ≈ 21 % of 8 vCPUs → 2.4 vCPUs; memory 30 % of 32 GiB → 12 GiB: m5.xlarge.
    assert_eq!(docs[0]["recommended"][0]["instance_type"], "m5.xlarge");
    let saved = docs[0]["expected_savings_usd"]["expected"]
        .as_f64()
        .unwrap();
    assert!((saved - (0.384 - 0.192) * 730.0).abs() < 1e-6);
    // Restored state issues nothing new for the same data.
    let snapshot = op.snapshot().unwrap();
    let mut again = RightsizeOperator::new(rightsize_spec());
    again.restore(snapshot).unwrap();
    assert_eq!(again.apply(&batch).unwrap().num_rows(), 0);
}

/// A demand forecast of `resource` from `origin`: 24 hourly horizons, each with the quantiles
/// `q`.
fn demand_forecast(resource: &str, origin: i64, q: [f64; 5]) -> RecordBatch {
    let mut fields = vec![
        Field::new("resource_id", DataType::Utf8, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
    ];
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![resource; 24])),
        ts(vec![origin; 24]),
    ];
    for (name, v) in ["p025", "p10", "p50", "p90", "p975"].iter().zip(q) {
        fields.push(Field::new(*name, DataType::Float64, false));
        columns.push(Arc::new(Float64Array::from(vec![v; 24])));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
}

#[test]
fn rightsizing_sizes_cpu_by_a_fresh_demand_forecast() {
    let spec = || RightsizeSpec {
        forecast: Some(DemandForecast {
            stage: "cpu_demand".into(),
            resource: "resource_id".into(),
            origin: "ts".into(),
            quantiles: ["p025", "p10", "p50", "p90", "p975"].map(String::from),
        }),
        ..rightsize_spec()
    };
    let usage = idle_usage();
    let last = T0 + (24 * 12 - 1) * 5 * MIN;
    let sized = |origin: i64| {
        let mut op = RightsizeOperator::new(spec());
        // The day ahead is forecast at 4–8 %: its p95 about 7.6 %.
        op.observe_forecasts(&demand_forecast("i-1", origin, [4.0, 5.0, 6.0, 7.0, 8.0]))
            .unwrap();
        json_rows(&op.apply(&usage).unwrap(), "recommendation.json")
    };
    // Fresh: 7.6 % of 8 vCPUs needs 0.9 at 70 %, so memory (12 GiB) decides: r5.large, where
    // the past p95 (≈ 21 %) needed m5.xlarge.
    let docs = sized(last - HOUR);
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0]["recommended"][0]["instance_type"], "r5.large");
    let why = docs[0]["rationale"].as_str().unwrap();
    assert!(why.starts_with("forecast p95 CPU 7."), "{why}");
    // A forecast 10 hours old is not sized by: the past p95 is.
    let docs = sized(last - 10 * HOUR);
    assert_eq!(docs[0]["recommended"][0]["instance_type"], "m5.xlarge");
    assert!(
        docs[0]["rationale"]
            .as_str()
            .unwrap()
            .starts_with("p95 CPU")
    );
}

fn rightsize_spec() -> RightsizeSpec {
    RightsizeSpec {
        stage: "rightsize".into(),
        resource: "resource_id".into(),
        metric: "metric".into(),
        value: "max".into(),
        time: "window_end".into(),
        instance_type: "instance_type".into(),
        region: "region".into(),
        cpu_metric: "CPUUtilization".into(),
        memory_metric: "MemoryUtilization".into(),
        span: 24 * HOUR,
        every: HOUR,
        min_history: 12 * HOUR,
        headroom: Headroom::default(),
        catalogue: catalogue(),
        forecast: None,
    }
}

#[test]
fn recommend_errors_read_as_they_did() {
    let e = super::mix::MixError::Invalid("max_share must be in (0, 1]".into());
    assert_eq!(
        RecommendError::Mix {
            workload: "batch".into(),
            source: e.clone()
        }
        .to_string(),
        format!("workload batch: {e}")
    );
}
