//! Schemas that change under a running pipeline: events with a field the schema does not name,
//! a field added to the schema, and an integer widened to a number — each handled as the
//! README's rules say, continuing from the checkpoint, never from scratch.

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float64Type};
use stratus::job::run::{RunConfig, run_to_end};
use stratus::pipeline::Pipeline;

use crate::{create_topic, metric_event, produce, read_delta, setting, unique};

/// The cloud.metrics schema with `extra` properties added.
fn schema(dir: &std::path::Path, file: &str, extra: serde_json::Value) -> std::path::PathBuf {
    let root = env!("CARGO_MANIFEST_DIR");
    let text = std::fs::read_to_string(format!("{root}/schemas/cloud.metrics.json")).unwrap();
    let mut doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    for (k, v) in extra.as_object().unwrap() {
        doc["properties"][k] = v.clone();
    }
    let path = dir.join(file);
    std::fs::write(&path, doc.to_string()).unwrap();
    path
}

async fn pipeline(name: &str, topic: &str, schema: &std::path::Path) -> Pipeline {
    let yaml = format!(
        "name: {name}\nsources:\n  metrics:\n    kafka: {{topic: {topic}, group: {name}}}\n    \
         schema: {}\n    event_time: {{field: ts}}\nsinks:\n  raw: {{from: metrics, delta: \
         {{table: raw_metrics}}}}\ncommit: {{max_rows: 50, max_interval: 1h}}\n",
        schema.display()
    );
    Pipeline::from_yaml(std::path::Path::new("it-evolution.yaml"), &yaml)
        .await
        .unwrap()
}

/// A metric event with `fields` set.
fn event(ts_ms: i64, i: usize, fields: serde_json::Value) -> stratus::demo::events::GeneratedEvent {
    let mut e = metric_event(ts_ms, i);
    let mut doc: serde_json::Value = serde_json::from_slice(&e.payload).unwrap();
    for (k, v) in fields.as_object().unwrap() {
        doc[k] = v.clone();
    }
    e.payload = doc.to_string().into_bytes();
    e
}

#[tokio::test(flavor = "multi_thread")]
async fn fields_added_and_widened_are_taken_as_the_schema_says_without_starting_over() {
    let brokers = setting("STRATUS_KAFKA_BROKERS");
    let topic = unique("it-evolution");
    create_topic(&topic, 1).await;
    let dir = std::env::temp_dir().join(unique("it-evolution"));
    std::fs::create_dir_all(&dir).unwrap();
    let tables = dir.join("tables");
    let name = unique("it-evolution");
    let config = RunConfig::backfill(&brokers, &tables.display().to_string(), Default::default());
    let now = chrono::Utc::now().timestamp_millis();

    // v1: `cores` is an integer; events carry a field no schema names (`rack`): ignored.
    let v1 = schema(
        &dir,
        "v1.json",
        serde_json::json!({"cores": {"type": "integer"}}),
    );
    let first: Vec<_> = (0..100)
        .map(|i| {
            event(
                now - 600_000 + i * 1_000,
                i as usize,
                serde_json::json!({"cores": 4, "rack": "r1"}),
            )
        })
        .collect();
    produce(&topic, &first).await;
    let summary = run_to_end(&pipeline(&name, &topic, &v1).await, &config)
        .await
        .unwrap();
    assert_eq!((summary.events, summary.invalid), (100, 0));

    // v2: `cores` widened to a number, `gpu` added; the run continues from its checkpoint.
    let v2 = schema(
        &dir,
        "v2.json",
        serde_json::json!({"cores": {"type": "number"}, "gpu": {"type": ["string", "null"]}}),
    );
    let second: Vec<_> = (0..100)
        .map(|i| {
            event(
                now - 300_000 + i * 1_000,
                i as usize,
                serde_json::json!({"cores": 2.5, "gpu": "a100"}),
            )
        })
        .collect();
    produce(&topic, &second).await;
    let summary = run_to_end(&pipeline(&name, &topic, &v2).await, &config)
        .await
        .unwrap();
    assert_eq!(
        (summary.events, summary.invalid),
        (100, 0),
        "only the new events"
    );

    let batches = read_delta(&tables.join("raw_metrics").display().to_string()).await;
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 200);
    let schema = batches[0].schema();
    assert!(
        schema.field_with_name("rack").is_err(),
        "an unnamed field is not kept"
    );
    assert_eq!(
        schema.field_with_name("cores").unwrap().data_type(),
        &DataType::Float64
    );
    let mut cores = Vec::new();
    let mut gpus = (0, 0);
    for b in &batches {
        let c =
            arrow::compute::cast(b.column_by_name("cores").unwrap(), &DataType::Float64).unwrap();
        cores.extend(c.as_primitive::<Float64Type>().iter().map(|v| v.unwrap()));
        let g = b.column_by_name("gpu").unwrap();
        gpus.0 += g.null_count();
        gpus.1 += g.len() - g.null_count();
    }
    cores.sort_by(f64::total_cmp);
    assert_eq!(cores[0], 2.5);
    assert_eq!(cores[199], 4.0);
    assert_eq!(
        cores.iter().filter(|&&c| c == 4.0).count(),
        100,
        "old rows keep their values"
    );
    assert_eq!(gpus, (100, 100), "older rows read the added column as null");
    std::fs::remove_dir_all(&dir).unwrap();
}
