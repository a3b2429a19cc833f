//! `stratus maintain` on a table many small cycles wrote: afterwards one file per partition,
//! the same rows for Stratus and for other readers (the Python `deltalake` package, DuckDB's
//! `delta` extension, polars) before and after, the same `txn` marks, the
//! replaced files gone from storage — and the pipeline resumes on it exactly once.

use std::path::Path;
use std::process::Command;

use stratus::demo::events::metric_events;
use stratus::job::run::{RunConfig, run_to_end};
use stratus::pipeline::Pipeline;
use stratus::sink::{DeltaSink, DeltaSinkConfig, offset_mark};

use crate::{create_topic, delta_rows, produce, setting, unique};

/// Raw events of `topic` into `<tables>/raw`, a commit every `cycle` events, compacted by
/// the pipeline after `compact_after` files (0: never).
async fn ingest_with(
    brokers: &str,
    topic: &str,
    tables: &Path,
    cycle: usize,
    compact_after: usize,
    vacuum_every: &str,
) -> u64 {
    let root = env!("CARGO_MANIFEST_DIR");
    let yaml = format!(
        "name: it-maintain\nsources:\n  metrics:\n    kafka: {{topic: {topic}, group: {topic}}}\n    schema: {root}/schemas/cloud.metrics.json\n    event_time: {{field: ts}}\nsinks:\n  raw: {{from: metrics, delta: {{table: raw, partition_by: [date]}}}}\ncommit: {{max_rows: {cycle}, max_interval: 1h, checkpoint_every: 0, compact_after_files: {compact_after}, vacuum_every: {vacuum_every}, vacuum_retention: 0s}}\n"
    );
    let pipeline = Pipeline::from_yaml(Path::new("it-maintain.yaml"), &yaml)
        .await
        .unwrap();
    let config = RunConfig::backfill(brokers, &tables.display().to_string(), Default::default());
    run_to_end(&pipeline, &config).await.unwrap().events
}

/// [`ingest_with`] 100 events a commit, never compacted or vacuumed by the pipeline.
async fn ingest(brokers: &str, topic: &str, tables: &Path) -> u64 {
    ingest_with(brokers, topic, tables, 100, 0, "0s").await
}

/// The table's `txn` marks of the pipeline: its cycle and each partition's offset.
async fn marks(table: &Path, topic: &str) -> Vec<Option<i64>> {
    let sink = DeltaSink::open(DeltaSinkConfig {
        location: table.display().to_string(),
        partition_columns: vec!["date".into()],
        pipeline: "it-maintain".into(),
        checkpoint_interval: 0,
        compact_after_files: 0,
        storage_options: Default::default(),
        vacuum: None,
    })
    .await
    .unwrap();
    let mut out = vec![sink.mark("cycle").await.unwrap()];
    for p in 0..2 {
        out.push(sink.mark(&offset_mark(topic, p)).await.unwrap());
    }
    out
}

/// Parquet files on disk under `dir`, in every partition.
fn parquet_files(dir: &Path) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() && !path.ends_with("_delta_log") {
            n += parquet_files(&path);
        } else if path.extension().is_some_and(|e| e == "parquet") {
            n += 1;
        }
    }
    n
}

/// Rows of the table as three other readers count them: the Python `deltalake` package,
/// DuckDB's `delta` extension (loaded from its PyPI wheel, offline) and polars.
fn other_readers_rows(table: &Path) -> [usize; 3] {
    let out = Command::new(setting("STRATUS_PYTHON"))
        .args([
            "-c",
            // os._exit: deltalake's threads abort the interpreter's normal exit.
            "import os, sys, deltalake, duckdb, duckdb_extension_delta, polars\n\
             path = sys.argv[1]\n\
             a = deltalake.DeltaTable(path).to_pyarrow_table().num_rows\n\
             ext = os.path.join(os.path.dirname(duckdb_extension_delta.__file__), 'extensions',\n\
                                'v' + duckdb.__version__, 'delta.duckdb_extension')\n\
             con = duckdb.connect()\n\
             con.execute(f\"LOAD '{ext}'\")\n\
             b = con.execute('SELECT count(*) FROM delta_scan(?)', [path]).fetchone()[0]\n\
             c = polars.scan_delta(path).select(polars.len()).collect().item()\n\
             print(a, b, c, flush=True)\n\
             os._exit(0)",
        ])
        .arg(table)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let counts: Vec<usize> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    counts.try_into().unwrap()
}

fn partitions(table: &Path) -> usize {
    std::fs::read_dir(table)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("date=")
        })
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn maintenance_compacts_and_cleans_and_exactly_once_holds() {
    let brokers = setting("STRATUS_KAFKA_BROKERS");
    let topic = unique("it-maintain");
    create_topic(&topic, 2).await;
    let dir = std::env::temp_dir().join(unique("it-maintain"));
    let table = dir.join("raw");
    let now = chrono::Utc::now().timestamp_millis();
    produce(&topic, &metric_events(41, 3_000, 30, now, 0)).await;
    assert_eq!(ingest(&brokers, &topic, &dir).await, 3_000);
    let location = table.display().to_string();
    assert_eq!(delta_rows(&location).await, 3_000);
    let files_before = parquet_files(&table);
    assert!(files_before >= 30, "{files_before} files");
    let marks_before = marks(&table, &topic).await;
    assert!(marks_before.iter().all(Option::is_some), "{marks_before:?}");
    assert_eq!(other_readers_rows(&table), [3_000; 3], "before maintenance");

    let out = Command::new(env!("CARGO_BIN_EXE_stratus"))
        .args(["maintain", "raw", "--retention", "0s", "--tables"])
        .arg(&dir)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains(&format!("{files_before} files → {}", partitions(&table))),
        "{said}"
    );

    // One file per partition, on disk too; the same rows, for every reader; the same marks.
    assert_eq!(parquet_files(&table), partitions(&table));
    assert_eq!(delta_rows(&location).await, 3_000);
    assert_eq!(other_readers_rows(&table), [3_000; 3]);
    assert_eq!(marks(&table, &topic).await, marks_before);

    // The pipeline goes on from its marks: the new events once, none of the old again.
    produce(&topic, &metric_events(42, 500, 30, now, 0)).await;
    assert_eq!(ingest(&brokers, &topic, &dir).await, 500);
    assert_eq!(delta_rows(&location).await, 3_500);
    assert_eq!(other_readers_rows(&table), [3_500; 3]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_running_pipeline_keeps_its_files_few() {
    let brokers = setting("STRATUS_KAFKA_BROKERS");
    let topic = unique("it-compact");
    create_topic(&topic, 2).await;
    let dir = std::env::temp_dir().join(unique("it-compact"));
    let table = dir.join("raw");
    let now = chrono::Utc::now().timestamp_millis();
    produce(&topic, &metric_events(43, 3_000, 30, now, 0)).await;
    // 300 cycles of 10 events, each a commit of one or two files; compacted after 20, and
    // vacuumed (nothing retained) every second.
    assert_eq!(
        ingest_with(&brokers, &topic, &dir, 10, 20, "1s").await,
        3_000
    );
    let location = table.display().to_string();
    assert_eq!(delta_rows(&location).await, 3_000);
    assert_eq!(other_readers_rows(&table), [3_000; 3]);
    let files = stratus::sink::delta::open_table(&location, &Default::default())
        .await
        .unwrap()
        .snapshot()
        .unwrap()
        .log_data()
        .num_files();
    let bound = 20 + partitions(&table);
    assert!(
        files <= bound,
        "{files} files in the table's version, over {bound}"
    );
    // What compaction replaced is deleted as the stream goes: on disk, besides the version's
    // files, at most those removed since the last vacuum (one compaction's worth and the
    // files written meanwhile), not the hundreds written.
    let log = std::fs::read_dir(table.join("_delta_log"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
        .collect::<String>();
    assert!(log.contains("VACUUM END"), "no vacuum in the log");
    let on_disk = parquet_files(&table);
    assert!(
        on_disk <= files + 2 * bound,
        "{on_disk} data files on disk for {files} in the table's version"
    );
    assert!(marks(&table, &topic).await.iter().all(Option::is_some));
    std::fs::remove_dir_all(&dir).unwrap();
}
