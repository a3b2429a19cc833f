//! Compaction of a Delta table: in each partition, the small files the appends leave are
//! rewritten into files of up to a target size, in one commit that changes which files hold
//! the rows, never the rows or the appends' `txn` marks (it adds one of its own, below).
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
//! app ids and remove nothing, so neither fails the other.) A compaction that fails deletes the
//! files it wrote, unless its commit landed. Only Stratus's compactions carry the mark: an
//! `OPTIMIZE` by another tool beside them is not fenced.

use std::collections::BTreeMap;
use std::num::NonZeroU64;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray, new_null_array};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::SchemaRef;
use deltalake::kernel::transaction::{CommitBuilder, CommitConflictError, TransactionError};
use deltalake::kernel::{Action, Transaction};
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use deltalake::protocol::DeltaOperation;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableError};
use object_store::ObjectStoreExt;

use super::delta::writer_properties;

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
/// packed into groups of up to that size, and each group of two or more is rewritten into
/// files of up to that size; a partition with a single small file is left as it is.
pub async fn compact(
    table: DeltaTable,
    target_size: NonZeroU64,
) -> Result<(DeltaTable, u64), DeltaTableError> {
    let snapshot = table.snapshot()?.clone();
    // Partition values → its small files.
    let mut partitions: BTreeMap<Vec<(String, Option<String>)>, Vec<DataFile>> = BTreeMap::new();
    for file in snapshot.log_data().iter() {
        let size = file.size().max(0) as u64;
        // A file with deleted rows (a deletion vector: no Stratus table has one) is left as
        // it is, rather than read whole.
        if size >= target_size.get() || file.deletion_vector_descriptor().is_some() {
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
    let (mut written, mut compacted) = (Vec::new(), 0);
    let outcome = async {
        let mut actions;
        (actions, compacted) =
            rewrite(&table, &partitions, target_size.get(), &mut written).await?;
        if actions.is_empty() {
            return Ok(None);
        }
        actions.push(Action::Txn(Transaction::new(
            COMPACTION_MARK,
            snapshot.version() as i64 + 1,
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
        Ok(Some(commit.snapshot()))
    }
    .await;
    let mut table = table;
    match outcome {
        Ok(Some(state)) => {
            table.state = Some(state);
            Ok((table, compacted))
        }
        Ok(None) => Ok((table, 0)),
        Err(e) => {
            // The files it wrote are no version's unless its commit landed although its answer
            // was lost (a store error answered, then retried, finds its own commit there):
            // read the table again to tell. Those of no version are deleted, or they would
            // stay (vacuum deletes only files the log removed).
            let landed = match table.update_state().await {
                Ok(()) => {
                    let live: std::collections::HashSet<String> = table
                        .snapshot()?
                        .log_data()
                        .iter()
                        .map(|f| f.object_store_path().to_string())
                        .collect();
                    written.iter().any(|p| live.contains(&p.to_string()))
                }
                // Cannot tell: the files stay.
                Err(_) => return Err(e),
            };
            if landed {
                return Ok((table, compacted));
            }
            for path in &written {
                let _ = store.delete(path).await;
            }
            Err(e)
        }
    }
}

/// Rewrites the files of each partition that [`pack`] groups, one partition at a time in
/// memory; the files written go to `written` as they are. Returns the commit's actions
/// (removes, then adds, neither a change of data) and the partitions compacted.
async fn rewrite(
    table: &DeltaTable,
    partitions: &BTreeMap<Vec<(String, Option<String>)>, Vec<DataFile>>,
    target: u64,
    written: &mut Vec<deltalake::Path>,
) -> Result<(Vec<Action>, u64), DeltaTableError> {
    let store = table.object_store();
    let writer = RecordBatchWriter::for_table(table)?.with_target_file_size(target);
    let schema = writer.arrow_schema();
    let mut writer = writer.with_writer_properties(writer_properties(&schema, &[]));
    let mut actions = Vec::new();
    let mut compacted = 0;
    for (values, files) in partitions {
        let groups = pack(files, target);
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
        for mut add in writer.flush().await? {
            written.push(
                deltalake::Path::parse(&add.path)
                    .unwrap_or_else(|_| deltalake::Path::from(add.path.as_str())),
            );
            add.data_change = false;
            actions.push(Action::Add(add));
        }
    }
    Ok((actions, compacted))
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

/// A value that does not convert fails the compaction rather than becoming null.
const EXACT: CastOptions<'static> = CastOptions {
    safe: false,
    format_options: arrow::util::display::FormatOptions::new(),
};

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
                cast_with_options(&text, field.data_type(), &EXACT)?
            }
            None => match batch.column_by_name(field.name()) {
                Some(c) if c.data_type() == field.data_type() => c.clone(),
                Some(c) => cast_with_options(c, field.data_type(), &EXACT)?,
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
    use arrow::compute::cast;

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
    /// `stratus maintain` beside a pipeline may: the first commits, the second fails over the
    /// compaction mark, commits nothing and deletes the files it wrote; every row is there
    /// once, with the partition it was written to, and the appends' marks are unchanged. A compaction of the table as read again (one file per
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
        let on_disk = || {
            let mut n = 0;
            for day in ["day=a", "day=b"] {
                for f in std::fs::read_dir(dir.join(day)).unwrap() {
                    n += usize::from(f.unwrap().path().extension() == Some("parquet".as_ref()));
                }
            }
            n
        };
        assert_eq!(on_disk(), 10, "8 small files, 2 compacted");
        match compact(second, target).await {
            Err(e) => assert!(lost_to_another(&e), "{e}"),
            Ok((_, n)) => panic!("the second compaction committed too ({n} partitions)"),
        }
        assert_eq!(on_disk(), 10, "the failed compaction's files are deleted");

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
