//! A Rust function of the program's own, called from a pipeline's SQL: checked by the
//! pipeline's validation, run by its stage on the real broker, its values landed in Delta.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, AsArray, Float64Array};
use arrow::datatypes::{DataType, Float64Type};
use datafusion::common::cast::as_float64_array;
use datafusion::logical_expr::{ColumnarValue, Volatility, create_udf};
use rdkafka::producer::{FutureProducer, FutureRecord};

use stratus::demo::events::metric_events;
use stratus::job::run::{RunConfig, run_to_end};
use stratus::kafka::producer_config;
use stratus::pipeline::{Overrides, Pipeline};
use stratus::sql::Functions;

use crate::{create_topic, read_delta, setting, unique};

/// `headroom(percent)`: what is left of 100 %.
fn headroom() -> Functions {
    let f = create_udf(
        "headroom",
        vec![DataType::Float64],
        DataType::Float64,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let used = as_float64_array(&arrays[0])?;
            let left: Float64Array = used.unary(|u| 100.0 - u);
            Ok(ColumnarValue::Array(Arc::new(left) as ArrayRef))
        }),
    );
    Functions::new().with_scalar(f)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registered_rust_function_is_checked_and_runs_in_a_stage() {
    let brokers = setting("STRATUS_KAFKA_BROKERS");
    let topic = unique("it-functions");
    create_topic(&topic, 2).await;
    create_topic(&format!("{topic}.dlq"), 1).await;
    let dir = std::env::temp_dir().join(unique("it-functions"));
    std::fs::create_dir_all(&dir).unwrap();
    let sql = dir.join("headroom.sql");
    std::fs::write(
        &sql,
        "SELECT resource_id, ts, value,\n       headroom(value) AS left_pct\nFROM metrics\n",
    )
    .unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let yaml = format!(
        "name: it-functions\nsources:\n  metrics:\n    kafka: {{topic: {topic}, group: {topic}}}\n    schema: {root}/schemas/cloud.metrics.json\n    event_time: {{field: ts}}\nstages:\n  headroom:\n    sql: {}\nsinks:\n  out: {{from: headroom, delta: {{table: headroom}}}}\n",
        sql.display()
    );
    let file = dir.join("it-functions.yaml");

    // Without the function the file is rejected, at the line of the SQL that calls it.
    let err = Pipeline::from_yaml(&file, &yaml).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("headroom.sql:2"), "{text}");
    assert!(text.contains("headroom"), "{text}");

    let overrides = Overrides {
        functions: headroom(),
        ..Overrides::default()
    };
    let pipeline = Pipeline::from_yaml_with(&file, &yaml, &overrides)
        .await
        .unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let events = metric_events(7, 400, 10, now, 0);
    let producer: FutureProducer = producer_config(&brokers).create().unwrap();
    for e in &events {
        producer
            .send(
                FutureRecord::to(&topic).key(&e.key).payload(&e.payload),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let tables = dir.join("tables").display().to_string();
    let config = RunConfig::backfill(&brokers, &tables, Default::default());
    let summary = run_to_end(&pipeline, &config).await.unwrap();
    let valid = events.iter().filter(|e| e.valid).count();
    assert!(valid > 300, "{valid} valid events");
    assert_eq!(summary.stage_rows["headroom"], valid as u64);

    let rows = read_delta(&format!("{tables}/headroom")).await;
    let mut n = 0;
    for b in &rows {
        let value = b
            .column_by_name("value")
            .unwrap()
            .as_primitive::<Float64Type>();
        let left = b
            .column_by_name("left_pct")
            .unwrap()
            .as_primitive::<Float64Type>();
        for i in 0..b.num_rows() {
            assert_eq!(left.value(i), 100.0 - value.value(i));
            n += 1;
        }
    }
    assert_eq!(n, valid);
    std::fs::remove_dir_all(&dir).unwrap();
}
