//! Delta tables kept healthy: `stratus maintain TABLE…`.
//!
//! In: a table's location and what to keep. Out: the table compacted and cleaned, and what was
//! done ([`Maintained`]). In this order:
//! - compaction (see [`super::compact`]): in each partition, the small files a cycle leaves
//!   are rewritten into files of up to the target size, in one commit;
//! - a Delta log checkpoint, then the removal of log files past the table's
//!   `logRetentionDuration` (30 days by default);
//! - vacuum: data files no version within the retention refers to are deleted. With a
//!   retention of at least [`ORPHAN_AGE`] and at most the table's `deletedFileRetentionDuration`
//!   (7 days by default), so are files no commit ever added that are older than the retention
//!   (delta-rs's full mode): those a writer left when it crashed between writing its files and
//!   committing them (an append, a compaction), which nothing else ever deletes. A shorter
//!   retention keeps to the files the log removed, since a writer beside it (paused, or
//!   retrying through an outage) may yet commit a file that young; a longer one too, since a
//!   checkpoint forgets a removal after the table's retention, and full mode would then take
//!   a file an older version within the retention still needs for one no commit added.
//!
//! Exactly-once holds across it: compaction changes which files hold the rows, never the rows
//! or the `txn` marks that record each pipeline's cycle and offsets, and every step is one
//! atomic commit or only deletes files no version within the retention refers to, so a crash
//! during maintenance loses and repeats nothing. A running pipeline's appends do not conflict
//! with compaction (an append reads nothing); a compaction that meets another compaction (a
//! pipeline's own, beside its stream) or a schema change committed meanwhile fails with
//! delta-rs's conflict error, commits nothing, and can simply be run again.

use std::collections::HashMap;
use std::num::NonZeroU64;

use deltalake::DeltaTable;
use deltalake::operations::vacuum::VacuumMode;
use deltalake::table::config::TablePropertiesExt;

use super::compact::compact;
use super::delta::{SinkError, TARGET_FILE_SIZE, open_table};

/// The shortest retention that also deletes files no commit added: no writer takes that long
/// between writing a file and committing it.
pub const ORPHAN_AGE: chrono::Duration = chrono::Duration::days(1);

/// What to keep.
#[derive(Debug, Clone)]
pub struct MaintainConfig {
    /// Compacted files are written up to this size, bytes.
    pub target_size: NonZeroU64,
    /// Vacuum deletes data files unreferenced for longer than this (default 7 days: readers
    /// of an older version, and time travel to it, need its files).
    pub retention: chrono::Duration,
    pub storage_options: HashMap<String, String>,
}

impl MaintainConfig {
    /// 128 MiB files, 7 days' retention.
    pub fn new(storage_options: HashMap<String, String>) -> Self {
        MaintainConfig {
            target_size: NonZeroU64::new(TARGET_FILE_SIZE).unwrap_or(NonZeroU64::MIN),
            retention: chrono::Duration::days(7),
            storage_options,
        }
    }
}

/// What maintaining one table did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Maintained {
    /// Data files of the table's current version, before and after.
    pub files_before: usize,
    pub files_after: usize,
    pub partitions_compacted: u64,
    /// Log files removed (past the log retention).
    pub logs_removed: usize,
    /// Data files vacuum deleted.
    pub files_deleted: usize,
    /// The table's version after.
    pub version: i64,
}

/// Compacts, checkpoints and vacuums the table at `location`.
pub async fn maintain(location: &str, config: &MaintainConfig) -> Result<Maintained, SinkError> {
    let delta = |source| SinkError::Delta {
        table: location.to_string(),
        source: Box::new(source),
    };
    let table = open_table(location, &config.storage_options).await?;
    if table.version().is_none() {
        return Err(SinkError::Location {
            location: location.to_string(),
            message: "no Delta table here (nothing was ever committed to it)".into(),
        });
    }
    let files_before = file_count(&table);
    let (table, partitions_compacted) = compact(table, config.target_size).await.map_err(delta)?;
    deltalake::checkpoints::create_checkpoint(&table, None)
        .await
        .map_err(delta)?;
    let logs_removed = deltalake::checkpoints::cleanup_metadata(&table, None)
        .await
        .map_err(delta)?;
    let removals_kept = table
        .snapshot()
        .map_err(delta)?
        .table_config()
        .deleted_file_retention_duration();
    let removals_kept = chrono::Duration::from_std(removals_kept).unwrap_or(chrono::Duration::MAX);
    let mode = if config.retention >= ORPHAN_AGE && config.retention <= removals_kept {
        VacuumMode::Full
    } else {
        VacuumMode::Lite
    };
    let (table, vacuumed) = table
        .vacuum()
        .with_mode(mode)
        .with_retention_period(config.retention)
        // A retention below the table's own minimum is the operator's explicit choice.
        .with_enforce_retention_duration(false)
        .await
        .map_err(delta)?;
    Ok(Maintained {
        files_before,
        files_after: file_count(&table),
        partitions_compacted,
        logs_removed,
        files_deleted: vacuumed.files_deleted.len(),
        version: table.version().map_or(-1, |v| v as i64),
    })
}

fn file_count(table: &DeltaTable) -> usize {
    table.snapshot().map_or(0, |s| s.log_data().num_files())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use arrow::array::{ArrayRef, Int64Array, RecordBatch};

    use super::*;
    use crate::sink::delta::{DeltaSink, DeltaSinkConfig, Marks};

    /// A table of 3 commits, and beside its files two no commit added: one written 8 days ago
    /// (a crashed writer's) and one just now (a writer about to commit). With 12 hours'
    /// retention both stay; with 7 days the old one goes, the young one stays, and the table
    /// still reads every row.
    #[tokio::test]
    async fn files_no_commit_added_go_with_a_retention_from_a_day_to_the_tables_own() {
        let dir = std::env::temp_dir().join(format!("stratus-orphans-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let location = dir.display().to_string();
        let mut sink = DeltaSink::open(DeltaSinkConfig {
            location: location.clone(),
            partition_columns: Vec::new(),
            pipeline: "p".into(),
            checkpoint_interval: 0,
            compact_after_files: 0,
            storage_options: HashMap::new(),
            vacuum: None,
        })
        .await
        .unwrap();
        for cycle in 1..=3_i64 {
            let v: ArrayRef = Arc::new(Int64Array::from(vec![cycle]));
            let batch = RecordBatch::try_from_iter([("v", v)]).unwrap();
            sink.commit(vec![batch], &Marks::from([("cycle".to_string(), cycle)]))
                .await
                .unwrap();
        }
        let (old, young) = (
            dir.join("part-crashed.parquet"),
            dir.join("part-pending.parquet"),
        );
        std::fs::write(&old, b"never committed").unwrap();
        std::fs::write(&young, b"not committed yet").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(8 * 86_400))
            .unwrap();

        let mut config = MaintainConfig::new(HashMap::new());
        config.retention = chrono::Duration::hours(12);
        maintain(&location, &config).await.unwrap();
        assert!(
            old.exists() && young.exists(),
            "a short retention deleted an orphan"
        );

        config.retention = chrono::Duration::days(7);
        let done = maintain(&location, &config).await.unwrap();
        assert!(!old.exists(), "the crashed writer's file is still there");
        assert!(young.exists(), "a file a writer may yet commit was deleted");
        // The compaction of the first run replaced the 3 files; they are younger than 7 days.
        assert_eq!(done.files_deleted, 1);
        let table = open_table(&location, &HashMap::new()).await.unwrap();
        let ctx = datafusion::prelude::SessionContext::new();
        table.update_datafusion_session(&ctx.state()).unwrap();
        let rows = ctx
            .read_table(table.table_provider().await.unwrap())
            .unwrap()
            .count()
            .await
            .unwrap();
        assert_eq!(rows, 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
