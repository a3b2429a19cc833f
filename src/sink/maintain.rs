//! Delta tables kept healthy: `stratus maintain TABLE…`.
//!
//! In: a table's location and what to keep. Out: the table compacted and cleaned, and what was
//! done ([`Maintained`]). In this order:
//! - compaction (see [`super::compact`]): in each partition, the small files a cycle leaves
//!   are rewritten into files of up to the target size, in one commit;
//! - a Delta log checkpoint, then the removal of log files past the table's
//!   `logRetentionDuration` (30 days by default);
//! - vacuum: data files no version within the retention refers to are deleted.
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

use super::compact::compact;
use super::delta::{SinkError, TARGET_FILE_SIZE, open_table};

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
    let (table, vacuumed) = table
        .vacuum()
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
