//! Damaged state: a truncated checkpoint, every checkpoint unreadable, a Delta log with a
//! version missing. The run falls back to the checkpoint before a damaged one and replays from
//! there exactly; where nothing can be read it fails, naming what and how to recover — never a
//! silent start from zero.

use std::collections::BTreeSet;

use arrow::array::RecordBatch;
use arrow::util::display::array_value_to_string;
use stratus::demo::events::metric_events;
use stratus::job::run::{RunConfig, run_to_end};
use stratus::pipeline::Pipeline;

use crate::{create_topic, produce, read_delta, setting, unique};

async fn pipeline(name: &str, topic: &str) -> Pipeline {
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
  raw: {{from: metrics, delta: {{table: raw_metrics}}}}
  features: {{from: features_1m, delta: {{table: features_1m}}}}
commit: {{max_rows: 300, max_interval: 1h}}
"#
    );
    Pipeline::from_yaml(std::path::Path::new("it-damaged.yaml"), &yaml)
        .await
        .unwrap()
}

/// Every row of a table, as text, sorted.
async fn rows(table: &str) -> Vec<String> {
    let batches = read_delta(table).await;
    let mut out: Vec<String> = batches
        .iter()
        .flat_map(|b: &RecordBatch| {
            let mut names: Vec<_> = b
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect();
            names.sort();
            (0..b.num_rows())
                .map(move |i| {
                    names
                        .iter()
                        .map(|n| array_value_to_string(b.column_by_name(n).unwrap(), i).unwrap())
                        .collect::<Vec<_>>()
                        .join("|")
                })
                .collect::<Vec<_>>()
        })
        .collect();
    out.sort();
    out
}

/// The checkpoint directories of `name` under `tables`, oldest first.
fn checkpoints(tables: &std::path::Path, name: &str) -> Vec<std::path::PathBuf> {
    let dir = tables.join("_stratus").join(name).join("checkpoints");
    let mut dirs: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        // Local stores leave the directories of removed checkpoints: their manifest is gone.
        .filter(|p| p.is_dir() && p.with_extension("json").exists())
        .collect();
    dirs.sort();
    dirs
}

/// Cuts every state file of a checkpoint to half its length.
fn truncate(checkpoint: &std::path::Path) {
    let mut cut = 0;
    for f in std::fs::read_dir(checkpoint).unwrap() {
        let path = f.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        cut += 1;
    }
    assert!(cut > 0, "{} holds no state file", checkpoint.display());
}

#[tokio::test(flavor = "multi_thread")]
async fn damaged_state_falls_back_exactly_or_fails_saying_how_to_recover() {
    let brokers = setting("STRATUS_KAFKA_BROKERS");
    let topic = unique("it-damaged");
    create_topic(&topic, 2).await;
    let now = chrono::Utc::now().timestamp_millis();
    let events = metric_events(21, 2_100, 15, now, 0);
    produce(&topic, &events[..1_500]).await;

    let dir = std::env::temp_dir().join(unique("it-damaged"));
    let tables = dir.join("tables");
    let name = unique("it-damaged");
    let p = pipeline(&name, &topic).await;
    let config = RunConfig::backfill(&brokers, &tables.display().to_string(), Default::default());
    run_to_end(&p, &config).await.unwrap();

    // The newest checkpoint truncated: the next run starts from the one before, replays the
    // cycle since (committed to every table already) and goes on.
    let kept = checkpoints(&tables, &name);
    assert_eq!(kept.len(), 2, "{kept:?}");
    // Incremental: the newest lists files of earlier cycles it adds to.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(kept[1].with_extension("json")).unwrap()).unwrap();
    let longest = manifest["files"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|parts| parts.as_object().unwrap().values())
        .map(|files| files.as_array().unwrap().len())
        .max();
    assert!(longest > Some(1), "{manifest}");
    truncate(&kept[1]);
    produce(&topic, &events[1_500..]).await;
    run_to_end(&p, &config).await.unwrap();

    // The same input in one undamaged run, under another name into other tables.
    let clean_tables = dir.join("clean");
    let clean = pipeline(&unique("it-clean"), &topic).await;
    let clean_config = RunConfig::backfill(
        &brokers,
        &clean_tables.display().to_string(),
        Default::default(),
    );
    run_to_end(&clean, &clean_config).await.unwrap();
    for table in ["raw_metrics", "features_1m"] {
        let got = rows(&tables.join(table).display().to_string()).await;
        let want = rows(&clean_tables.join(table).display().to_string()).await;
        assert!(!want.is_empty());
        assert_eq!(got.len(), want.len(), "{table}: rows");
        assert_eq!(got, want, "{table}: the same rows as the undamaged run");
    }
    let distinct: BTreeSet<_> = rows(&tables.join("raw_metrics").display().to_string())
        .await
        .into_iter()
        .collect();
    assert_eq!(distinct.len(), events.len(), "every event once");

    // Every checkpoint damaged (each lists files of earlier cycles too, an incremental one
    // adding to a whole one): an error that says so and how to recover.
    let dir_of_checkpoints = tables.join("_stratus").join(&name).join("checkpoints");
    for c in std::fs::read_dir(dir_of_checkpoints).unwrap() {
        let c = c.unwrap().path();
        if c.is_dir() && std::fs::read_dir(&c).unwrap().next().is_some() {
            truncate(&c);
        }
    }
    let err = run_to_end(&p, &config).await.unwrap_err().to_string();
    assert!(
        err.contains("no checkpoint can be read") && err.contains("restore one"),
        "{err}"
    );

    // A Delta log version missing: the table is named, nothing runs.
    let fresh = RunConfig::backfill(
        &brokers,
        &clean_tables.display().to_string(),
        Default::default(),
    );
    std::fs::remove_file(clean_tables.join("features_1m/_delta_log/00000000000000000001.json"))
        .unwrap();
    let err = run_to_end(&clean, &fresh).await.unwrap_err().to_string();
    assert!(
        err.contains("clean/features_1m") && err.contains("Expected contiguous commit files"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
