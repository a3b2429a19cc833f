//! Compaction of a Delta table: in each partition, the small files the appends leave are
//! rewritten into files of up to a target size, in one commit that changes which files hold
//! the rows, never the rows or the `txn` marks.
//!
//! In: a table as last read, and the target size. Out: the table after the compaction's
//! commit, and how many partitions it compacted; or, when another compaction committed since
//! the table was read, delta-rs's `ConcurrentTransaction` conflict ([`lost_to_another`]), and
//! nothing committed.
//!
//! Why not delta-rs's `optimize`: its conflict check lets two compactions that remove the same
//! files both commit (removes that change no data are not checked against each other), so two
//! processes compacting one table at once — two workers of a pipeline, each of which sees every
//! worker's files, or `stratus maintain` beside a running pipeline — would each add those rows
//! again. Every compaction here records the `txn` mark [`COMPACTION_MARK`] in its commit, and
//! delta-rs fails a commit when a commit since the state it read recorded an app id it
//! records: of two compactions that overlap in time, the second fails. (Appends record other
//! app ids and remove nothing, so neither fails the other.) The files a failed compaction wrote
//! are referenced by no version.

use std::collections::BTreeMap;
use std::num::NonZeroU64;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray, new_null_array};
use arrow::compute::cast;
use arrow::datatypes::SchemaRef;
use deltalake::kernel::transaction::{CommitBuilder, CommitConflictError, TransactionError};
use deltalake::kernel::{Action, Transaction};
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use deltalake::protocol::DeltaOperation;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableError};
use object_store::ObjectStoreExt;

/// The `txn` app id every compaction records: two that overlap in time conflict over it.
pub const COMPACTION_MARK: &str = "stratus/compaction";

/// A file of the table, as compaction sees it.
struct DataFile {
    /// Its Remove action (no data change), ready for the commit.
    remove: deltalake::kernel::Remove,
    path: deltalake::Path,
    size: u64,
}

/// Compacts `table` as last read: in each partition, its files smaller than `target_size` are
/// packed into groups of up to that size, and each group of two or more is rewritten as one
/// file; a partition with a single small file is left as it is.
pub async fn compact(
    table: DeltaTable,
    target_size: NonZeroU64,
) -> Result<(DeltaTable, u64), DeltaTableError> {
    let snapshot = table.snapshot()?.clone();
    let read_version = snapshot.version();
    // Partition values → its small files, in log order.
    let mut partitions: BTreeMap<Vec<(String, Option<String>)>, Vec<DataFile>> = BTreeMap::new();
    for file in snapshot.log_data().iter() {
        let size = file.size().max(0) as u64;
        if size >= target_size.get() {
            continue;
        }
        let mut values: Vec<(String, Option<String>)> =
            file.partition_values_map().into_iter().collect();
        values.sort();
        partitions.entry(values).or_default().push(DataFile {
            remove: file.remove_action(false),
            path: file.object_store_path(),
            size,
        });
    }
    let store = table.object_store();
    let mut writer = RecordBatchWriter::for_table(&table)?.with_target_file_size(target_size.get());
    let schema = writer.arrow_schema();
    let mut actions = Vec::new();
    let mut compacted = 0;
    for (values, files) in &partitions {
        let groups = pack(files, target_size.get());
        if groups.is_empty() {
            continue;
        }
        compacted += 1;
        for file in groups.into_iter().flatten() {
            // A small file, read whole.
            let bytes = store.get(&file.path).await?.bytes().await?;
            for batch in ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()? {
                writer.write(conform(&batch?, &schema, values)?).await?;
            }
            actions.push(Action::Remove(file.remove.clone()));
        }
        // One partition's files at a time in memory.
        for mut add in writer.flush().await? {
            add.data_change = false;
            actions.push(Action::Add(add));
        }
    }
    if actions.is_empty() {
        return Ok((table, 0));
    }
    actions.push(Action::Txn(Transaction::new(
        COMPACTION_MARK,
        read_version as i64 + 1,
    )));
    let commit = CommitBuilder::default()
        .with_actions(actions)
        .build(
            Some(&snapshot),
            table.log_store(),
            DeltaOperation::Optimize {
                predicate: None,
                target_size: target_size.get() as i64,
            },
        )
        .await?;
    let mut table = table;
    table.state = Some(commit.snapshot());
    Ok((table, compacted))
}

/// Whether `e` is a compaction that failed because another compaction committed first.
pub fn lost_to_another(e: &DeltaTableError) -> bool {
    matches!(
        e,
        DeltaTableError::Transaction {
            source: TransactionError::CommitConflict(CommitConflictError::ConcurrentTransaction),
        }
    )
}

/// `files` packed, in order, into groups of up to `target` bytes; only the groups of two or
/// more files are returned (a file alone is left as it is).
fn pack(files: &[DataFile], target: u64) -> Vec<Vec<&DataFile>> {
    let mut groups: Vec<Vec<&DataFile>> = Vec::new();
    let mut current: Vec<&DataFile> = Vec::new();
    let mut bytes = 0;
    for file in files {
        if !current.is_empty() && bytes + file.size > target {
            groups.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += file.size;
        current.push(file);
    }
    groups.push(current);
    groups.retain(|g| g.len() > 1);
    groups
}

/// A batch read from one data file, as a batch of the table's `schema`: columns by name, cast
/// to the table's type where an append widened it since, null where the file predates the
/// column; the partition columns (which data files do not hold) from the file's partition
/// `values`, as the log records them.
fn conform(
    batch: &RecordBatch,
    schema: &SchemaRef,
    values: &[(String, Option<String>)],
) -> Result<RecordBatch, DeltaTableError> {
    let rows = batch.num_rows();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let column = match values.iter().find(|(name, _)| name == field.name()) {
            Some((_, value)) => {
                let text: ArrayRef = Arc::new(StringArray::from(vec![value.clone(); rows]));
                cast(&text, field.data_type())?
            }
            None => match batch.column_by_name(field.name()) {
                Some(c) if c.data_type() == field.data_type() => c.clone(),
                Some(c) => cast(c, field.data_type())?,
                None => new_null_array(field.data_type(), rows),
            },
        };
        columns.push(column);
    }
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use arrow::array::{Int64Array, StringArray};

    use super::*;
    use crate::sink::delta::{DeltaSink, DeltaSinkConfig, Marks, open_table};

    async fn rows(table: &DeltaTable) -> Vec<(String, i64)> {
        let ctx = datafusion::prelude::SessionContext::new();
        table.update_datafusion_session(&ctx.state()).unwrap();
        let batches = ctx
            .read_table(table.table_provider().await.unwrap())
            .unwrap()
            .collect()
            .await
            .unwrap();
        let mut out = Vec::new();
        for b in &batches {
            let day = cast(
                b.column_by_name("day").unwrap(),
                &arrow::datatypes::DataType::Utf8,
            )
            .unwrap();
            let day = day.as_any().downcast_ref::<StringArray>().unwrap();
            let v = b.column_by_name("v").unwrap();
            let v = cast(v, &arrow::datatypes::DataType::Int64).unwrap();
            let v = v.as_any().downcast_ref::<Int64Array>().unwrap();
            out.extend((0..b.num_rows()).map(|i| (day.value(i).to_string(), v.value(i))));
        }
        out.sort();
        out
    }

    /// Two processes read a table of 8 small files in two partitions, then both compact it, as
    /// two workers of one pipeline (each sees every worker's files) or `stratus maintain`
    /// beside a pipeline do: the first commits, the second fails over the compaction mark and
    /// commits nothing; every row is there once, with the partition it was written to, and the
    /// appends' marks are unchanged. A compaction of the table as read again (one file per
    /// partition) leaves it as it is.
    #[tokio::test]
    async fn two_compactions_at_once_commit_once_and_keep_every_row_once() {
        let dir = std::env::temp_dir().join(format!("stratus-compact2-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let location = dir.display().to_string();
        let mut sink = DeltaSink::open(DeltaSinkConfig {
            location: location.clone(),
            partition_columns: vec!["day".into()],
            pipeline: "p".into(),
            checkpoint_interval: 0,
            compact_after_files: 0,
            storage_options: HashMap::new(),
            vacuum: None,
        })
        .await
        .unwrap();
        let mut want = Vec::new();
        for cycle in 1..=8_i64 {
            let day = if cycle % 2 == 0 { "a" } else { "b" };
            want.push((day.to_string(), cycle));
            let v: ArrayRef = Arc::new(Int64Array::from(vec![cycle]));
            let d: ArrayRef = Arc::new(StringArray::from(vec![day]));
            let batch = RecordBatch::try_from_iter([("v", v), ("day", d)]).unwrap();
            sink.commit(vec![batch], &Marks::from([("cycle".to_string(), cycle)]))
                .await
                .unwrap();
        }
        want.sort();
        let first = open_table(&location, &HashMap::new()).await.unwrap();
        let second = open_table(&location, &HashMap::new()).await.unwrap();
        let target = NonZeroU64::new(1 << 20).unwrap();

        let (compacted, partitions) = compact(first, target).await.unwrap();
        assert_eq!(partitions, 2);
        assert_eq!(compacted.snapshot().unwrap().log_data().num_files(), 2);
        match compact(second, target).await {
            Err(e) => assert!(lost_to_another(&e), "{e}"),
            Ok((_, n)) => panic!("the second compaction committed too ({n} partitions)"),
        }

        let table = open_table(&location, &HashMap::new()).await.unwrap();
        assert_eq!(table.snapshot().unwrap().log_data().num_files(), 2);
        assert_eq!(rows(&table).await, want);
        let mut sink_again = DeltaSink::open(DeltaSinkConfig {
            location: location.clone(),
            partition_columns: vec!["day".into()],
            pipeline: "p".into(),
            checkpoint_interval: 0,
            compact_after_files: 0,
            storage_options: HashMap::new(),
            vacuum: None,
        })
        .await
        .unwrap();
        assert!(
            sink_again
                .recorded(&Marks::from([("cycle".to_string(), 8)]))
                .await
                .unwrap()
        );
        let (_, none) = compact(table, target).await.unwrap();
        assert_eq!(none, 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
