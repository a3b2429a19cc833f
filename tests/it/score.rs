//! The score stage on the real broker, S3 server and ONNX Runtime: a model trained by
//! `models/train_anomaly.py` on a Delta table a pipeline wrote, registered in an `s3://`
//! registry, scores a running pipeline's windows; a second version registered mid-stream is
//! swapped in without losing or double-scoring a window; a pinned shadow version is scored
//! beside it and never acted on; each version's input drift against the training distribution
//! its manifest records is exported once its window of rows is full, and drift past the
//! pipeline's thresholds for the sustained span raises `model_drift` alerts through the alert
//! policy.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::Command;
use std::time::{Duration, Instant};

use arrow::array::AsArray;
use arrow::datatypes::{DataType, Float64Type, Int32Type, TimestampMicrosecondType};
use rdkafka::producer::{FutureProducer, FutureRecord};

use stratus::job::run::{RunConfig, run_pipeline, run_to_end};
use stratus::kafka::producer_config;
use stratus::metrics::PipelineMetrics;
use stratus::metrics::health::Health;
use stratus::pipeline::Pipeline;
use stratus::score::OnnxModel;
use stratus::score::detect::{CalibrationSpec, DetectorSpec, Ensemble};
use stratus::score::registry::Registry;
use stratus::sink::storage_options_from_env;

use crate::{create_topic, delta_rows, read_delta, setting, unique};

const S: i64 = 1_000_000;
const MINUTE: i64 = 60 * S;
const RESOURCES: usize = 6;
const FEATURES: [&str; 4] = ["mean", "min", "max", "p95"];
/// The windows the scoring pipeline closes: minutes 0 to 58 of each resource.
const SCORED: usize = RESOURCES * 59;

/// Every 10 s for `minutes` minutes from `base`, per resource: a noisy level, one spike.
fn events(base: i64, from_minute: i64, to_minute: i64) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for step in from_minute * 6..to_minute * 6 {
        for r in 0..RESOURCES {
            let ts = base + step * 10 * S;
            let wobble = ((step * 7 + r as i64 * 13) % 17) as f64;
            let value = if r == 2 && step == 200 {
                99.0
            } else {
                30.0 + 2.0 * r as f64 + wobble
            };
            let ts = chrono::DateTime::from_timestamp_micros(ts)
                .unwrap()
                .to_rfc3339();
            let resource = format!("i-{r:04}");
            out.push((
                resource.clone(),
                format!(
                    r#"{{"ts":"{ts}","account_id":"123456789012","region":"us-east-1","az":"us-east-1a","resource_id":"{resource}","service":"EC2","namespace":"AWS/EC2","metric":"CPUUtilization","value":{value},"unit":"Percent"}}"#
                ),
            ));
        }
    }
    out
}

async fn produce(producer: &FutureProducer, topic: &str, events: &[(String, String)]) {
    let sends = events.iter().map(|(k, p)| {
        producer.send(
            FutureRecord::to(topic).key(k).payload(p),
            Duration::from_secs(30),
        )
    });
    for d in futures::future::join_all(sends).await {
        d.map_err(|(e, _)| e).unwrap();
    }
}

fn train(table: &str, out: &str, seed: u32, trees: u32, registry: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/models/train_anomaly.py");
    let status = Command::new(setting("STRATUS_PYTHON"))
        .arg(script)
        .args([
            "--table",
            table,
            "--out",
            out,
            "--features",
            &FEATURES.join(","),
        ])
        .args([
            "--name",
            "m",
            "--seed",
            &seed.to_string(),
            "--trees",
            &trees.to_string(),
        ])
        .args(["--register", registry])
        .env("STRATUS_BIN", env!("CARGO_BIN_EXE_stratus"))
        .status()
        .unwrap();
    assert!(status.success(), "{script} failed");
}

/// Waits (polling the table, as a downstream reader would) until it holds `rows` rows.
async fn wait_for_rows(table: &str, rows: usize) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let have = match deltalake::open_table_with_storage_options(
            url::Url::parse(table).unwrap(),
            storage_options_from_env(),
        )
        .await
        {
            Ok(_) => delta_rows(table).await,
            Err(_) => 0,
        };
        if have >= rows {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{table}: {have} of {rows} rows after 90 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_version_is_swapped_in_mid_stream_and_every_window_is_scored_once() {
    let brokers = setting("STRATUS_KAFKA_BROKERS");
    let bucket = setting("STRATUS_S3_BUCKET");
    let topic = unique("it-score");
    create_topic(&topic, 1).await;
    create_topic(&format!("{topic}.dlq"), 1).await;
    let now = chrono::Utc::now().timestamp_micros();
    let base = now - 2 * 60 * MINUTE - now.rem_euclid(60 * MINUTE);
    let producer: FutureProducer = producer_config(&brokers).create().unwrap();
    produce(&producer, &topic, &events(base, 0, 30)).await;

    let root = env!("CARGO_MANIFEST_DIR");
    let prefix = format!("s3://{bucket}/{}", unique("it-score"));
    let registry = format!("{prefix}/models");
    let source = format!(
        r#"sources:
  metrics:
    kafka: {{topic: {topic}}}
    schema: {root}/schemas/cloud.metrics.json
    event_time: {{field: ts, max_out_of_orderness: 10s, allowed_lateness: 0s, idle_timeout: 1h}}
"#
    );

    // 1. A feature pipeline backfills the first half into a table; v1 is trained on it.
    let features = format!(
        "name: {}\n{source}stages:\n  features_1m: {{sql: {root}/sql/cloud_metrics_1m.sql}}\nsinks:\n  f: {{from: features_1m, delta: {{table: train_features}}}}\n",
        unique("it-score-train")
    );
    let pipeline = Pipeline::from_yaml(std::path::Path::new("train.yaml"), &features)
        .await
        .unwrap();
    run_to_end(
        &pipeline,
        &RunConfig::backfill(&brokers, &prefix, storage_options_from_env()),
    )
    .await
    .unwrap();
    let scratch = std::env::temp_dir().join(unique("it-score"));
    let table = format!("{prefix}/train_features");
    train(
        &table,
        &scratch.join("v1").display().to_string(),
        1,
        60,
        &registry,
    );

    // 2. The scoring pipeline follows `m` and shadows m@1; it runs until told to stop.
    let name = unique("it-score-run");
    let scoring = format!(
        r#"name: {name}
{source}stages:
  features_1m: {{sql: {root}/sql/cloud_metrics_1m.sql}}
  anomaly:
    score:
      from: features_1m
      model: m
      shadow: m@1
      key: [resource_id, metric]
      detectors: [{{kind: model}}]
      calibration: {{learn: 12m}}
      drift: {{rows: {SCORED}, psi: 0.25, kl: 0.15}}
  drifting:
    # The same versions judged over their last 60 rows against thresholds below any drift,
    # and far above it: health rows every 5 minutes, past the threshold once held 5 minutes.
    score:
      from: features_1m
      model: m
      shadow: m@1
      key: [resource_id, metric]
      detectors: [{{kind: model}}]
      drift: {{rows: 60, psi: 0.000000001, kl: 0.000000001}}
      health: {{output: drifting_health, sustain: 5m}}
  steady:
    score:
      from: features_1m
      model: m
      shadow: m@1
      key: [resource_id, metric]
      detectors: [{{kind: model}}]
      drift: {{rows: 60, psi: 1000000000.0, kl: 1000000000.0}}
      health: {{output: steady_health, sustain: 5m}}
  drifting_alerts:
    alert: {{from: drifting_health, kind: model_drift, key: [scope, model, subject], resource: model, labels: [check], resolve_after: 1h}}
  steady_alerts:
    alert: {{from: steady_health, kind: model_drift, key: [scope, model, subject], resource: model, labels: [check], resolve_after: 1h}}
models: {{registry: "{registry}", poll: 50ms}}
sinks:
  scores: {{from: anomaly, delta: {{table: scores}}}}
  drifting_health: {{from: drifting_health, delta: {{table: drifting_health}}}}
  drifting_alerts: {{from: drifting_alerts, delta: {{table: drifting_alerts}}}}
  steady_health: {{from: steady_health, delta: {{table: steady_health}}}}
  steady_alerts: {{from: steady_alerts, delta: {{table: steady_alerts}}}}
commit: {{max_rows: 120, max_interval: 200ms}}
"#
    );
    let pipeline = Pipeline::from_yaml(std::path::Path::new("score.yaml"), &scoring)
        .await
        .unwrap();
    let config = RunConfig {
        until_caught_up: false,
        ..RunConfig::backfill(&brokers, &prefix, storage_options_from_env())
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics = PipelineMetrics::new();
    let served = metrics.clone();
    let running = tokio::spawn(async move {
        run_pipeline(&pipeline, &config, served, Health::new(), async {
            let _ = stopped.await;
        })
        .await
    });
    let scores = format!("{prefix}/scores");
    // The watermark after the first half (last event 29:50) closes minutes 0..=28.
    wait_for_rows(&scores, RESOURCES * 29).await;

    // 3. v2 is registered while the pipeline runs; then the second half arrives.
    train(
        &table,
        &scratch.join("v2").display().to_string(),
        2,
        40,
        &registry,
    );
    produce(&producer, &topic, &events(base, 30, 60)).await;
    wait_for_rows(&scores, RESOURCES * 59).await;
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();

    // 4. Every closed window scored exactly once, each by one version, v1 before v2 per key.
    let reg = Registry::open(&registry, &storage_options_from_env()).unwrap();
    let mut models = HashMap::new();
    for v in [1, 2] {
        let loaded = reg.load("m", v).await.unwrap();
        let model = OnnxModel::from_bytes("m", &loaded.onnx, FEATURES.len()).unwrap();
        models.insert(format!("m@{v}"), model);
    }
    let mut rows: BTreeMap<(String, i64), (String, f64, f64, f64)> = BTreeMap::new();
    let mut inputs: Vec<Vec<f32>> = Vec::new();
    for b in read_delta(&scores).await {
        let text =
            |n: &str| arrow::compute::cast(b.column_by_name(n).unwrap(), &DataType::Utf8).unwrap();
        let num = |n: &str| {
            b.column_by_name(n)
                .unwrap()
                .as_primitive::<Float64Type>()
                .clone()
        };
        let (resource, version, shadow_version) = (
            text("resource_id"),
            text("model_version"),
            text("shadow_version"),
        );
        let (resource, version, shadow_version) = (
            resource.as_string::<i32>(),
            version.as_string::<i32>(),
            shadow_version.as_string::<i32>(),
        );
        let start = b.column_by_name("window_start").unwrap();
        let start = start.as_primitive::<TimestampMicrosecondType>();
        let revision = b.column_by_name("revision").unwrap();
        assert!(
            revision
                .as_primitive::<Int32Type>()
                .values()
                .iter()
                .all(|&r| r == 0)
        );
        let (model_score, shadow_score, anomaly) = (
            num("model_score"),
            num("shadow_score"),
            num("anomaly_score"),
        );
        let feature_cols: Vec<_> = FEATURES.iter().map(|f| num(f)).collect();
        for i in 0..b.num_rows() {
            let v = version.value(i).to_string();
            let x: Vec<f32> = feature_cols.iter().map(|c| c.value(i) as f32).collect();
            inputs.push(x.clone());
            // Scored by the version it names, and shadowed by m@1.
            let want = models
                .get_mut(&v)
                .unwrap()
                .score(&x, "anomaly_score")
                .unwrap()[0];
            assert_eq!(model_score.value(i), f64::from(want), "row {i} of {v}");
            assert_eq!(shadow_version.value(i), "m@1");
            let shadow = models
                .get_mut("m@1")
                .unwrap()
                .score(&x, "anomaly_score")
                .unwrap()[0];
            assert_eq!(shadow_score.value(i), f64::from(shadow));
            let key = (resource.value(i).to_string(), start.value(i));
            let before = rows.insert(
                key.clone(),
                (v, model_score.value(i), anomaly.value(i), 0.0),
            );
            assert!(before.is_none(), "window {key:?} scored twice");
        }
    }
    let expected: Vec<(String, i64)> = (0..RESOURCES)
        .flat_map(|r| (0..59).map(move |m| (format!("i-{r:04}"), base + m * MINUTE)))
        .collect();
    assert_eq!(rows.keys().cloned().collect::<Vec<_>>(), expected);

    let mut saw_v2 = false;
    let mut scored = false;
    for r in 0..RESOURCES {
        let key = format!("i-{r:04}");
        let detectors = [DetectorSpec::Model {
            weight: 1.0,
            min_points: 12,
        }];
        let calibration = CalibrationSpec {
            learn: "12m".into(),
            ..Default::default()
        };
        let mut ensemble = Ensemble::with_calibration(&detectors, &calibration).unwrap();
        let mut version = "m@1".to_string();
        for ((_, start), (v, model_score, anomaly, _)) in
            rows.range((key.clone(), i64::MIN)..(key.clone(), i64::MAX))
        {
            assert!(*v >= version, "{key}: {v} after {version}");
            version = v.clone();
            saw_v2 |= v == "m@2";
            // The anomaly score comes from the serving model alone: the shadow is not acted on.
            let want = ensemble
                .observe(start + MINUTE, f64::NAN, Some(*model_score))
                .score;
            assert_eq!(*anomaly, want, "{key} at {start}");
            scored |= want > 0.0;
        }
    }
    assert!(
        scored,
        "every anomaly score was 0: the comparison above checked nothing"
    );
    assert!(
        saw_v2,
        "no window was scored by the version registered mid-stream"
    );

    // 5. Drift: the shadow m@1 scored every window, exactly the window of rows it watches,
    // so its PSI and KL per input are those of every scored row against the training shares
    // its manifest records. m@2 has seen fewer rows: no figure yet.
    assert_eq!(inputs.len(), SCORED);
    let scraped = metrics.render();
    // The `anomaly` stage's (the others watch the same versions over fewer rows).
    let gauge = |name: &str, model: &str, input: &str| {
        let matching = [("stage", "anomaly"), ("model", model), ("input", input)];
        scraped
            .lines()
            .any(|l| {
                l.starts_with(name)
                    && l.contains("stage=\"anomaly\"")
                    && l.contains(&format!("model=\"{model}\""))
            })
            .then(|| crate::exported::sum(&scraped, name, &matching))
    };
    let trained = reg.load("m", 1).await.unwrap().manifest;
    let bins = trained.input_distribution.expect("the trainer records it");
    assert_eq!(bins.len(), FEATURES.len());
    for (j, b) in bins.iter().enumerate() {
        assert_eq!(b.name, FEATURES[j]);
        let mut counts = vec![0u64; b.shares.len()];
        for x in &inputs {
            let v = f64::from(x[j]);
            counts[b.edges.iter().filter(|&&e| e < v).count()] += 1;
        }
        let want = stratus::score::drift::divergence(&counts, &b.shares);
        let psi = gauge("stratus_model_input_psi", "m@1", &b.name).expect("m@1's PSI");
        let kl = gauge("stratus_model_input_kl", "m@1", &b.name).expect("m@1's KL");
        assert!(
            (psi - want.psi).abs() < 1e-9,
            "{}: {psi} != {want:?}",
            b.name
        );
        assert!((kl - want.kl).abs() < 1e-9, "{}: {kl} != {want:?}", b.name);
        assert_eq!(gauge("stratus_model_input_psi", "m@2", &b.name), None);
    }
    let threshold = |model: &str, measure: &str| {
        crate::exported::sum(
            &scraped,
            "stratus_model_drift_threshold",
            &[("stage", "anomaly"), ("model", model), ("measure", measure)],
        )
    };
    assert_eq!(
        (threshold("m@2", "psi"), threshold("m@2", "kl")),
        (0.25, 0.15)
    );

    // 6. Drift alerts through the alert policy, from the health rows: with thresholds below
    // any drift, one critical `model_drift` alert per version and input whose row reached the
    // alarm level (every input of the shadow m@1, scored throughout); far above, none.
    let health = |table: &'static str| {
        let (prefix, name) = (prefix.clone(), name.clone());
        async move {
            let mut rows: Vec<(String, String, f64, f64)> = Vec::new();
            for b in read_delta(&format!("{prefix}/{table}")).await {
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
                let (scope, model, subject, check) =
                    (text("scope"), text("model"), text("subject"), text("check"));
                let (ratio, score) = (num("ratio"), num("anomaly_score"));
                for i in 0..b.num_rows() {
                    assert_eq!((scope.value(i), check.value(i)), (name.as_str(), "drift"));
                    assert!(FEATURES.contains(&subject.value(i)), "{}", subject.value(i));
                    assert_eq!(score.value(i), (ratio.value(i) / 2.0).min(1.0));
                    rows.push((
                        model.value(i).to_string(),
                        subject.value(i).to_string(),
                        ratio.value(i),
                        score.value(i),
                    ));
                }
            }
            rows
        }
    };
    let alarmed: BTreeSet<(String, String)> = health("drifting_health")
        .await
        .into_iter()
        .filter(|r| r.3 >= 0.5)
        .map(|r| (r.0, r.1))
        .collect();
    for input in FEATURES {
        assert!(
            alarmed.contains(&("m@1".to_string(), input.to_string())),
            "{alarmed:?}"
        );
    }
    let mut opened: BTreeMap<(String, String), String> = BTreeMap::new();
    for b in read_delta(&format!("{prefix}/drifting_alerts")).await {
        let text = |c: &dyn arrow::array::Array| {
            let c = arrow::compute::cast(c, &DataType::Utf8).unwrap();
            c.as_string::<i32>().clone()
        };
        let labels = b.column_by_name("labels").unwrap().as_struct();
        let model = text(labels.column_by_name("model").unwrap());
        let subject = text(labels.column_by_name("subject").unwrap());
        let (id, status, severity, kind) = (
            text(b.column_by_name("alert_id").unwrap()),
            text(b.column_by_name("status").unwrap()),
            text(b.column_by_name("severity").unwrap()),
            text(b.column_by_name("kind").unwrap()),
        );
        for i in 0..b.num_rows() {
            assert_eq!(kind.value(i), "model_drift");
            if status.value(i) != "firing" {
                continue;
            }
            assert_eq!(severity.value(i), "critical");
            let key = (model.value(i).to_string(), subject.value(i).to_string());
            let first = opened.entry(key).or_insert_with(|| id.value(i).to_string());
            assert_eq!(first, id.value(i), "one alert per version and input");
        }
    }
    assert_eq!(opened.keys().cloned().collect::<BTreeSet<_>>(), alarmed);
    let steady = health("steady_health").await;
    assert!(steady.iter().any(|r| r.2 > 0.0), "no steady row was judged");
    assert!(steady.iter().all(|r| r.3 < 0.5));
    let steady_alerts = stratus::sink::delta::open_table(
        &format!("{prefix}/steady_alerts"),
        &storage_options_from_env(),
    )
    .await
    .unwrap();
    assert_eq!(steady_alerts.version(), None, "no alert, no table");
}
