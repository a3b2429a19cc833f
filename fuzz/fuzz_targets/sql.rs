//! Any text given as a stage's SQL must either check into a plan or be refused with
//! diagnostics that name the SQL file or the pipeline — never panic.
//!
//! The SQL is the stage of a one-source pipeline over the shipped metrics schema (with its
//! window functions, `tumble`/`hop`, and the calendar functions in scope), written to a file
//! of this process's own, as a user's `sql:` file is. Run: `scripts/fuzz sql`.

#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use stratus::pipeline::Pipeline;

mod common;

/// This process's SQL file, rewritten for every input.
fn sql_file() -> &'static PathBuf {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        std::env::temp_dir().join(format!("stratus-fuzz-{}.sql", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines/fuzz.yaml");
    let pipeline = format!(
        "name: fuzz
sources:
  metrics:
    kafka: {{topic: fuzz, group: fuzz, key: [resource_id]}}
    schema: ../schemas/cloud.metrics.json
    event_time: {{field: ts, max_out_of_orderness: 10s, allowed_lateness: 1m}}
    dead_letter_topic: fuzz.dlq
stages:
  features:
    sql: {}
sinks:
  features: {{from: features, delta: {{table: features}}}}
",
        sql_file().display()
    );
    std::fs::write(sql_file(), sql).expect("the fuzz SQL file is writable");
    common::runtime().block_on(async {
        if let Err(diagnostics) = Pipeline::from_yaml(&file, &pipeline).await {
            for d in &diagnostics.0 {
                assert!(
                    d.file == *sql_file() || d.file == file,
                    "a diagnostic names neither the SQL nor the pipeline: {d:?}"
                );
                assert!(!d.message.is_empty(), "an empty diagnostic: {d:?}");
            }
        }
    });
});
