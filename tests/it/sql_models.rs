//! A registered model called from SQL, `score('metrics_anomaly', …)`, on the real ONNX
//! Runtime: the values are the model's own; a call the model cannot take is refused when the
//! query is planned; newer versions are swapped in, and a broken one is reported once and
//! skipped.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, AsArray, Float64Array, RecordBatch};
use arrow::datatypes::Float64Type;

use stratus::score::OnnxModel;
use stratus::score::function::Models;
use stratus::score::registry::{Output, RefreshError, Registry, Swap};
use stratus::sql::{Functions, session_context_with};

use crate::unique;

/// A registry holding the shipped `metrics_anomaly@1` as its version 1.
async fn registry() -> (Registry, String, Vec<u8>) {
    let shipped = Registry::open(
        concat!(env!("CARGO_MANIFEST_DIR"), "/models/registry"),
        &Default::default(),
    )
    .unwrap();
    let v = shipped.load("metrics_anomaly", 1).await.unwrap();
    let dir = std::env::temp_dir().join(unique("it-sql-models"));
    let location = dir.display().to_string();
    let registry = Registry::open(&location, &Default::default()).unwrap();
    registry
        .register(v.manifest.clone(), &v.onnx)
        .await
        .unwrap();
    (registry, location, v.onnx.to_vec())
}

fn features() -> RecordBatch {
    let column = |v: Vec<Option<f64>>| Arc::new(Float64Array::from(v)) as ArrayRef;
    RecordBatch::try_from_iter([
        ("a", column(vec![Some(0.1), Some(4.0), None, Some(-1.0)])),
        (
            "b",
            column(vec![Some(0.5), Some(9.0), Some(1.0), Some(0.0)]),
        ),
        (
            "h",
            column(vec![Some(3.0), Some(14.0), Some(2.0), Some(23.0)]),
        ),
        (
            "d",
            column(vec![Some(1.0), Some(5.0), Some(0.0), Some(6.0)]),
        ),
    ])
    .unwrap()
}

async fn scores(models: &Models, sql: &str) -> Result<Vec<Option<f64>>, String> {
    let ctx = session_context_with(&Functions::new().with_scalar(models.function()));
    ctx.register_batch("t", features()).unwrap();
    let df = ctx.sql(sql).await.map_err(|e| e.to_string())?;
    let out = df.collect().await.map_err(|e| e.to_string())?;
    Ok(out
        .iter()
        .flat_map(|b| {
            b.column(0)
                .as_primitive::<Float64Type>()
                .iter()
                .collect::<Vec<_>>()
        })
        .collect())
}

#[tokio::test]
async fn score_in_sql_is_the_models_own_score_and_follows_the_registry() {
    let (registry, location, onnx) = registry().await;
    let models = Models::load(
        registry.clone(),
        &["metrics_anomaly".to_string()],
        Duration::ZERO,
    )
    .await
    .unwrap();
    let sql = "SELECT score('metrics_anomaly', a, b, h, d) AS s FROM t";
    let got = scores(&models, sql).await.unwrap();

    // The same rows through the model directly; the row with a null input has no score.
    let mut model = OnnxModel::from_bytes("m", &onnx, 4).unwrap();
    let rows = [
        [0.1f32, 0.5, 3.0, 1.0],
        [4.0, 9.0, 14.0, 5.0],
        [-1.0, 0.0, 23.0, 6.0],
    ];
    let direct = model.score(&rows.concat(), "anomaly_score").unwrap();
    let want = vec![
        Some(f64::from(direct[0])),
        Some(f64::from(direct[1])),
        None,
        Some(f64::from(direct[2])),
    ];
    assert_eq!(got, want);

    // Planning refuses what the model cannot take.
    let err = scores(&models, "SELECT score('metrics_anomaly', a, b) FROM t")
        .await
        .unwrap_err();
    assert!(
        err.contains("takes 4 inputs") && err.contains("gives 2"),
        "{err}"
    );
    let err = scores(&models, "SELECT score('nope', a) FROM t")
        .await
        .unwrap_err();
    assert!(err.contains("score('nope', …)"), "{err}");

    // A broken version is reported once and skipped; a good one after it is swapped in.
    let mut broken = registry.load("metrics_anomaly", 1).await.unwrap().manifest;
    // Its manifest names an output the ONNX graph does not have.
    broken.score_output = "no_such_output".into();
    broken.outputs.push(Output {
        name: "no_such_output".into(),
        description: String::new(),
    });
    assert_eq!(registry.register(broken, &onnx).await.unwrap(), 2);
    let changes = models.refresh().await;
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert!(
        matches!(&changes[0], Err(RefreshError::Unusable { current, name, version: 2, .. })
            if current == "metrics_anomaly@1" && name == "metrics_anomaly"),
        "{changes:?}"
    );
    assert!(
        changes[0]
            .as_ref()
            .is_err_and(|e| e.to_string().contains("metrics_anomaly@2"))
    );
    assert!(
        models.refresh().await.is_empty(),
        "a rejected version is not retried"
    );
    assert_eq!(models.versions()["metrics_anomaly"], "metrics_anomaly@1");
    let good = registry.load("metrics_anomaly", 1).await.unwrap().manifest;
    assert_eq!(registry.register(good, &onnx).await.unwrap(), 3);
    let changes: Vec<_> = models
        .refresh()
        .await
        .into_iter()
        .map(|c| c.map_err(|e| e.to_string()))
        .collect();
    let swap = Swap {
        from: "metrics_anomaly@1".into(),
        to: "metrics_anomaly@3".into(),
    };
    assert_eq!(
        swap.to_string(),
        "metrics_anomaly@3 replaces metrics_anomaly@1"
    );
    assert_eq!(changes, [Ok(swap)]);
    assert_eq!(scores(&models, sql).await.unwrap(), want);
    std::fs::remove_dir_all(&location).unwrap();
}
