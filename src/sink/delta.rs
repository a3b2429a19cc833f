//! The Delta Lake sink: appends batches to a table, with marks of how far the input had been
//! read recorded in the same commit.
//!
//! In: Arrow batches plus [`Marks`]: named `i64`s such as, per source partition, the next offset
//! to read once those batches are durable. Out: one Delta commit holding the new files and one
//! `txn` action per mark (`app_id` = `<pipeline>/<mark>`, `version` = its value; offsets are
//! marked `<topic>/<partition>`). A crash before the commit loses nothing (the marks were not
//! advanced); a crash after it duplicates nothing (on restart the pipeline reads the marks back
//! with [`DeltaSink::mark`]). `deltalake` does not check that versions only grow.
//!
//! Several processes may append to one table, each under its own marks (a worker's partition
//! of a pipeline, see `cluster`): delta-rs retries an append that lost the race to the log on
//! top of the other. A partition that moves to another worker is fenced: see
//! [`DeltaSink::claim`].
//!
//! Works on local paths and on `s3://` (conditional put: no lock service is needed).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Once};
use std::time::Instant;

use arrow::array::{Array, ArrayRef, Date32Array, RecordBatch, Scalar, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use deltalake::kernel::scalars::ScalarExt;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Add, Transaction};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter, WriteMode};
use deltalake::{DeltaTable, DeltaTableError};
use indexmap::IndexMap;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use url::Url;

use super::compact::{COMPACTION_MARK, compact, lost_to_another};

/// Why a table could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("Delta table {table}: {source}")]
    Delta {
        table: String,
        source: Box<DeltaTableError>,
    },
    #[error("table location {location:?} is neither a local path nor a URL: {message}")]
    Location { location: String, message: String },
    #[error("cannot derive the `date` partition: {0}")]
    Arrow(#[from] ArrowError),
    #[error(
        "Delta table {table}: {app} was taken over by another process ({why}); this one \
         commits nothing more for it"
    )]
    Fenced {
        table: String,
        app: String,
        why: String,
    },
}

impl SinkError {
    /// Whether trying again may succeed: the object store or disk failed (an outage, a full
    /// disk, a commit that raced another writer), not the rows or the table's schema.
    pub fn is_transient(&self) -> bool {
        let SinkError::Delta { source, .. } = self else {
            return false;
        };
        use deltalake::kernel::transaction::{CommitConflictError, TransactionError};
        match source.as_ref() {
            DeltaTableError::ObjectStore { .. }
            | DeltaTableError::Io { .. }
            | DeltaTableError::VersionAlreadyExists(_) => true,
            // delta-kernel keeps an object store's failure as a variant of its own, with no
            // `source()` to follow, and reading a table's log again hands it on as text
            // (`Generic`): only the text tells.
            DeltaTableError::KernelError(e) => names_object_store(&e.to_string()),
            DeltaTableError::Generic(text) => names_object_store(text),
            // Another writer created the table first, or changed its schema: read it again
            // and append on top. Any other conflict delta-rs could not resolve is another
            // writer committing the same marks: never retried, or rows would repeat.
            DeltaTableError::Transaction { source } => matches!(
                source,
                TransactionError::ObjectStore { .. }
                    | TransactionError::VersionAlreadyExists(_)
                    | TransactionError::MaxCommitAttempts(_)
                    | TransactionError::CommitConflict(
                        CommitConflictError::MetadataChanged
                            | CommitConflictError::ProtocolChanged(_)
                    )
            ),
            other => caused_by_io(other),
        }
    }
}

/// Whether an error's text is delta-kernel's for a failed object store request.
fn names_object_store(text: &str) -> bool {
    text.starts_with("Error interacting with object store")
}

/// Whether an object store or I/O error is among `e`'s causes.
fn caused_by_io(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.is::<object_store::Error>() || c.is::<std::io::Error>() {
            return true;
        }
        cause = c.source();
    }
    false
}

/// The mark of the pipeline's cycle a commit completes.
pub const CYCLE_MARK: &str = "cycle";

/// The mark of the owner epoch (see [`DeltaSink::claim`]).
pub const OWNER_MARK: &str = "owner";

/// Offsets a commit covers: for each `(topic, partition)`, the next offset to read.
pub type SourceOffsets = HashMap<(String, i32), i64>;

/// What a commit records besides its rows: mark name → value, each as a `txn` action.
pub type Marks = BTreeMap<String, i64>;

/// The mark under which a source partition's next offset is recorded.
pub fn offset_mark(topic: &str, partition: i32) -> String {
    format!("{topic}/{partition}")
}

/// `offsets` as marks.
pub fn offset_marks(offsets: &SourceOffsets) -> Marks {
    offsets
        .iter()
        .map(|((topic, p), next)| (offset_mark(topic, *p), *next))
        .collect()
}

/// What one commit did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CommitStats {
    /// The table version the commit created.
    pub version: i64,
    pub rows: usize,
    /// Data files the commit added.
    pub files: usize,
    pub seconds: f64,
}

/// Where a table lives and how to reach it.
#[derive(Debug, Clone)]
pub struct DeltaSinkConfig {
    /// A local path, `file://` URL or `s3://bucket/prefix` URL.
    pub location: String,
    pub partition_columns: Vec<String>,
    /// The pipeline name; with topic and partition it forms each `txn` app id.
    pub pipeline: String,
    /// Write a checkpoint every this many commits (0: never).
    pub checkpoint_interval: u64,
    /// Compact the table once this many data files were written since the last compaction
    /// (0: never); see [`compact`].
    pub compact_after_files: usize,
    /// Extra `object_store` / `deltalake` options, e.g. `AWS_ENDPOINT_URL`.
    pub storage_options: HashMap<String, String>,
    /// Vacuum and log cleanup between commits, if at all.
    pub vacuum: Option<Vacuum>,
}

/// Vacuum and expired-log cleanup from the running pipeline (what `stratus maintain` does
/// besides compaction), at most once per `every`, between two of this process's commits and
/// never while its compaction runs. Vacuum is delta-rs's lite mode: it deletes only data files
/// the log records as removed (by a compaction) more than `retention` ago, never a file a
/// writer has yet to commit; what `retention` guards is readers of older versions (time
/// travel, a long query), which need their files.
#[derive(Debug, Clone, PartialEq)]
pub struct Vacuum {
    pub every: std::time::Duration,
    pub retention: chrono::Duration,
}

/// An open Delta table that this process appends to.
pub struct DeltaSink {
    config: DeltaSinkConfig,
    table: DeltaTable,
    commits_since_checkpoint: u64,
    files_since_compaction: usize,
    /// A compaction running beside the appends, if any: the partitions it compacted.
    compacting: Option<tokio::task::JoinHandle<Result<u64, DeltaTableError>>>,
    /// A Delta checkpoint of the log being written beside the appends, if any.
    checkpointing: Option<tokio::task::JoinHandle<Result<(), DeltaTableError>>>,
    /// The owner epoch this process claimed, if it claimed the marks (see [`Self::claim`]).
    owner: Option<i64>,
    /// The owner epoch its claim first read (0: none, or no table).
    claim_read: Option<i64>,
    /// When it last vacuumed (or opened the table).
    vacuumed_at: Instant,
    /// When it last read the table, by a commit or [`Self::look_while_idle`].
    looked_at: Option<Instant>,
}

/// How often a process that compacts a table it has no rows for reads the table again.
pub const IDLE_LOOK: std::time::Duration = std::time::Duration::from_secs(60);

/// Compacted files are written up to this size: 128 MiB.
pub const TARGET_FILE_SIZE: u64 = 128 << 20;

/// The properties of this sink's writes: `txns` recorded, and neither a Delta checkpoint nor a
/// cleanup of expired log files inside the commit. delta-rs's defaults would list the whole
/// `_delta_log` on every commit to clean it (a cost that grows with the log, in the latency of
/// every result) and write a checkpoint every 100th version in the commit's way; the sink
/// writes its checkpoints beside its appends and cleans the log when it vacuums.
pub fn commit_properties(txns: Vec<Transaction>) -> CommitProperties {
    CommitProperties::default()
        .with_application_transactions(txns)
        .with_create_checkpoint(false)
        .with_cleanup_expired_logs(Some(false))
}

/// The partition values of `batch` when every row shares them (as delta-rs reads them), or
/// `None` when the rows span several partitions, the table has none, or a partition column
/// cannot be compared.
fn one_partition<S: ScalarExt>(
    batch: &RecordBatch,
    partition_by: &[String],
) -> Option<IndexMap<String, S>> {
    if partition_by.is_empty() || batch.num_rows() == 0 {
        return None;
    }
    partition_by
        .iter()
        .map(|name| {
            let column = batch.column_by_name(name)?;
            let first = Scalar::new(column.slice(0, 1));
            let same = arrow::compute::kernels::cmp::not_distinct(column, &first).ok()?;
            (same.true_count() == same.len())
                .then(|| S::from_array(column.as_ref(), 0))
                .flatten()
                .map(|value| (name.clone(), value))
        })
        .collect()
}

/// How the sink writes a table's Parquet files: compressed with Snappy, as delta-rs does, and
/// dictionary-encoded except where a dictionary would only fill until the writer gives it up.
/// A measurement or a derived feature is seldom the same value twice, so floating-point
/// columns are written plain; interning each value on the way was half the cost of writing a
/// file of 100,000 feature rows (BENCHMARKS.md, "100,000 keys closing at once"). So is a text
/// column whose values are [`mostly_distinct`] in the first of `rows` (an append's batches;
/// none for a rewrite of whole files, where a key repeats): a resource id in a file of one row
/// per resource. Labels, counts and timestamps repeat, and keep theirs.
pub fn writer_properties(schema: &Schema, rows: &[RecordBatch]) -> WriterProperties {
    let plain = schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(i, f)| match f.data_type() {
            DataType::Float16 | DataType::Float32 | DataType::Float64 => true,
            _ => rows.first().is_some_and(|b| {
                b.schema().field(*i).name() == f.name() && mostly_distinct(b.column(*i))
            }),
        });
    plain
        .fold(
            WriterProperties::builder().set_compression(Compression::SNAPPY),
            |props, (_, f)| {
                props.set_column_dictionary_enabled(ColumnPath::from(f.name().as_str()), false)
            },
        )
        .build()
}

/// Rows of a column [`mostly_distinct`] looks at.
const DISTINCT_SAMPLE: usize = 4096;

/// Whether, of up to [`DISTINCT_SAMPLE`] rows of a text `column` picked at random (the same
/// rows for the same length), at least nine in ten hold a value no other picked row holds.
/// 1,000 keys over 20,000 rows show at most 1,000 values for about 3,700 rows picked (a
/// dictionary 20 times smaller than the column); 20,000 keys once each show as many values as
/// rows. Picked at random, not at a fixed step, which a period in the keys could alias.
fn mostly_distinct(column: &ArrayRef) -> bool {
    use arrow::array::AsArray;
    fn sampled<'a>(n: usize, value: impl Fn(usize) -> &'a str) -> bool {
        if n == 0 {
            return false;
        }
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rows: Vec<usize> = (0..DISTINCT_SAMPLE.min(n))
            .map(|_| {
                // xorshift64
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % n as u64) as usize
            })
            .collect();
        rows.sort_unstable();
        rows.dedup();
        let values: std::collections::HashSet<&str> = rows.iter().map(|&i| value(i)).collect();
        values.len() * 10 >= rows.len() * 9
    }
    let n = column.len();
    match column.data_type() {
        DataType::Utf8 => sampled(n, |i| column.as_string::<i32>().value(i)),
        DataType::LargeUtf8 => sampled(n, |i| column.as_string::<i64>().value(i)),
        DataType::Utf8View => sampled(n, |i| column.as_string_view().value(i)),
        _ => false,
    }
}

/// Resolves a user's table location to a URL (creating a local directory if needed).
pub fn table_url(location: &str) -> Result<Url, SinkError> {
    let err = |message: String| SinkError::Location {
        location: location.to_string(),
        message,
    };
    if location.contains("://") {
        return Url::parse(location).map_err(|e| err(e.to_string()));
    }
    std::fs::create_dir_all(location).map_err(|e| err(e.to_string()))?;
    let abs = std::fs::canonicalize(location).map_err(|e| err(e.to_string()))?;
    Url::from_directory_path(&abs).map_err(|()| err("not an absolute path".into()))
}

/// Registers the `s3://` scheme with deltalake, once per process.
fn register_object_stores() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| deltalake::aws::register_handlers(None));
}

/// The table at `location` (a directory or an `s3://` URL), or an empty one to be created by
/// the first commit.
pub async fn open_table(
    location: &str,
    storage_options: &HashMap<String, String>,
) -> Result<DeltaTable, SinkError> {
    register_object_stores();
    let url = table_url(location)?;
    DeltaTable::try_from_url_with_storage_options(url, super::with_store_retries(storage_options))
        .await
        .map_err(|source| SinkError::Delta {
            table: location.to_string(),
            source: Box::new(source),
        })
}

impl DeltaSink {
    /// Opens the table, or prepares to create it on the first commit.
    pub async fn open(config: DeltaSinkConfig) -> Result<Self, SinkError> {
        let table = open_table(&config.location, &config.storage_options).await?;
        Ok(DeltaSink {
            config,
            table,
            commits_since_checkpoint: 0,
            files_since_compaction: 0,
            compacting: None,
            checkpointing: None,
            owner: None,
            claim_read: None,
            vacuumed_at: Instant::now(),
            looked_at: None,
        })
    }

    /// Claims the table's marks for this process, fencing out any earlier one: records an owner
    /// epoch one above the table's in a commit of its own. From then on every commit carries
    /// the epoch in a `txn` action of the same app id, so it fails if the table shows a later
    /// owner, or if, since the table state it was prepared against, any commit recorded that
    /// app id (delta-rs's conflict check) — a worker that lost its partition while paused or
    /// cut off commits nothing once the new owner has claimed it. A commit also fails if the
    /// table already holds its cycle (another process committed it first).
    ///
    /// A table not created yet is created by the claim, empty, with `rows` (the schema of the
    /// rows it will receive, every column nullable) and owner epoch 1 in its first commit: a
    /// table's first version is the one commit two processes can both make, so an earlier
    /// owner that would create it later is fenced like any other.
    pub async fn claim(&mut self, rows: &Schema) -> Result<i64, SinkError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let exists = self.read_again().await?;
            let recorded = match exists {
                true => self.mark(OWNER_MARK).await?.unwrap_or(0),
                false => 0,
            };
            // A claim never goes above an epoch newer than the one it first read: that claim
            // came after this one read the table, and a worker paused mid-claim must not take
            // a partition back from its new owner. Kept across retries of a failed claim.
            if let Some(seen) = self.claim_read
                && seen != recorded
            {
                return Err(SinkError::Fenced {
                    table: self.config.location.clone(),
                    app: self.config.pipeline.clone(),
                    why: format!(
                        "another process claimed it meanwhile (owner epoch {recorded}, this \
                         process read {seen})"
                    ),
                });
            }
            self.claim_read = Some(recorded);
            if !exists {
                match self.create_claimed(rows).await {
                    Ok(epoch) => return Ok(epoch),
                    Err(e) => {
                        // Another process created it first: read it.
                        if attempts < 5 && self.read_again().await? {
                            continue;
                        }
                        return Err(e);
                    }
                }
            }
            // One that raced the earlier owner's last commits reads the table again and claims
            // above them.
            match self.commit_claim(recorded + 1).await {
                Err(SinkError::Fenced { .. }) if attempts < 5 => continue,
                outcome => return outcome,
            }
        }
    }

    /// Creates the table, empty, with `rows` (every column nullable) and owner epoch 1.
    async fn create_claimed(&mut self, rows: &Schema) -> Result<i64, SinkError> {
        let fields: Vec<Field> = rows
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect();
        let empty = RecordBatch::new_empty(Arc::new(Schema::new(fields)));
        let epoch = 1;
        let owner = Transaction::new(self.app_id(OWNER_MARK), epoch);
        let table = self
            .table
            .clone()
            .write(vec![empty])
            .with_partition_columns(self.config.partition_columns.clone())
            // Never on top of a table another process created meanwhile (delta-rs would
            // retry the creation as an append there, unchecked): the claim reads it instead.
            .with_commit_properties(commit_properties(vec![owner]).with_max_retries(0))
            .await
            .map_err(|e| self.commit_error(e))?;
        self.table = table;
        self.owner = Some(epoch);
        Ok(epoch)
    }

    /// Commits owner `epoch` alone, against the table state last read.
    async fn commit_claim(&mut self, epoch: i64) -> Result<i64, SinkError> {
        use deltalake::kernel::transaction::CommitBuilder;
        use deltalake::protocol::{DeltaOperation, OutputMode};
        let app_id = self.app_id(OWNER_MARK);
        let snapshot = self.table.snapshot().map_err(|e| self.delta_error(e))?;
        let commit = CommitBuilder::default()
            .with_actions(vec![deltalake::kernel::Action::Txn(Transaction::new(
                app_id.clone(),
                epoch,
            ))])
            .build(
                Some(snapshot),
                self.table.log_store(),
                DeltaOperation::StreamingUpdate {
                    output_mode: OutputMode::Append,
                    query_id: app_id,
                    epoch_id: epoch,
                },
            )
            .await
            .map_err(|e| self.commit_error(e))?;
        self.table.state = Some(commit.snapshot());
        self.owner = Some(epoch);
        Ok(epoch)
    }

    /// Reads the table's log again, to its newest commit; false while the table has none.
    async fn read_again(&mut self) -> Result<bool, SinkError> {
        let loaded = match self.table.version() {
            Some(_) => self.table.update_state().await,
            None => self.table.load().await,
        };
        match loaded {
            Ok(()) => Ok(true),
            Err(DeltaTableError::NotATable(_)) => Ok(false),
            Err(e) => Err(self.delta_error(e)),
        }
    }

    /// Before a commit of a claimed table: whether it is still this process's to commit.
    async fn check_owner(&self, owner: i64, marks: &Marks) -> Result<(), SinkError> {
        let fenced = |why: String| SinkError::Fenced {
            table: self.config.location.clone(),
            app: self.config.pipeline.clone(),
            why,
        };
        if let Some(recorded) = self.mark(OWNER_MARK).await?
            && recorded > owner
        {
            return Err(fenced(format!(
                "its owner epoch is {recorded}, this process claimed {owner}"
            )));
        }
        if let (Some(&cycle), Some(recorded)) =
            (marks.get(CYCLE_MARK), self.mark(CYCLE_MARK).await?)
            && recorded >= cycle
        {
            return Err(fenced(format!(
                "the table holds its cycle {recorded}, this commit would be cycle {cycle}"
            )));
        }
        Ok(())
    }

    /// A failed commit's error: a conflict over this process's marks is a fence.
    fn commit_error(&self, source: DeltaTableError) -> SinkError {
        use deltalake::kernel::transaction::{CommitConflictError, TransactionError};
        match &source {
            DeltaTableError::Transaction {
                source: TransactionError::CommitConflict(CommitConflictError::ConcurrentTransaction),
            } => SinkError::Fenced {
                table: self.config.location.clone(),
                app: self.config.pipeline.clone(),
                why: "another process committed its marks meanwhile".into(),
            },
            _ => self.delta_error(source),
        }
    }

    fn delta_error(&self, source: DeltaTableError) -> SinkError {
        SinkError::Delta {
            table: self.config.location.clone(),
            source: Box::new(source),
        }
    }

    /// Takes the outcome of the compaction running beside the appends, once it has ended —
    /// or (`wait`) waiting for it to end.
    async fn finish_compaction(&mut self, wait: bool) {
        let Some(handle) = self.compacting.take_if(|h| wait || h.is_finished()) else {
            return;
        };
        match handle.await {
            Ok(Ok(partitions)) => tracing::info!(
                "{}: compacted {partitions} partitions",
                self.config.location
            ),
            Ok(Err(e)) if lost_to_another(&e) => tracing::info!(
                "{}: another process compacted it meanwhile; this compaction committed nothing",
                self.config.location
            ),
            Ok(Err(e)) => tracing::warn!(
                "{}: compaction failed, the files stay as they are (`stratus maintain` compacts \
                 them, or the next compaction): {e}",
                self.config.location
            ),
            Err(e) => tracing::warn!("{}: compaction stopped: {e}", self.config.location),
        }
    }

    fn app_id(&self, mark: &str) -> String {
        format!("{}/{mark}", self.config.pipeline)
    }

    fn file_count(&self) -> usize {
        self.table
            .snapshot()
            .map_or(0, |s| s.log_data().num_files())
    }

    /// The table as of the last commit.
    pub fn table(&self) -> &DeltaTable {
        &self.table
    }

    /// The value of `mark` as of the last commit that recorded it (none: never recorded).
    pub async fn mark(&self, mark: &str) -> Result<Option<i64>, SinkError> {
        self.app_mark(&self.app_id(mark)).await
    }

    /// The version of the `txn` app id `app_id`, whoever recorded it.
    pub async fn app_mark(&self, app_id: &str) -> Result<Option<i64>, SinkError> {
        if self.table.version().is_none() {
            return Ok(None);
        }
        let state = self.table.snapshot().map_err(|e| self.delta_error(e))?;
        state
            .transaction_version(self.table.log_store().as_ref(), app_id)
            .await
            .map_err(|e| self.delta_error(e))
    }

    /// For each partition, the next offset to read as recorded in the table (absent: none yet).
    pub async fn resume_offsets(
        &self,
        topic: &str,
        partitions: &[i32],
    ) -> Result<HashMap<i32, i64>, SinkError> {
        let mut out = HashMap::new();
        for &p in partitions {
            if let Some(v) = self.mark(&offset_mark(topic, p)).await? {
                out.insert(p, v);
            }
        }
        Ok(out)
    }

    /// Reads the table's log again and says whether it records every one of `marks` at its
    /// value: after a commit whose outcome is unknown (the store failed mid-way), whether it
    /// went through. (All marks go in one commit; checking each also catches another writer
    /// that committed the same cycle with other offsets.)
    pub async fn recorded(&mut self, marks: &Marks) -> Result<bool, SinkError> {
        if !self.read_again().await? {
            return Ok(false);
        }
        for (mark, value) in marks {
            if self.mark(mark).await? != Some(*value) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Columns of the table that `rows` widen: an integer become a number. (Any other change
    /// of a column's type is refused by the append: Delta Lake cannot change one in place.)
    fn widened(&self, rows: &Schema) -> Vec<String> {
        let Ok(state) = self.table.snapshot() else {
            return Vec::new(); // no table yet
        };
        let table = state.snapshot().arrow_schema();
        rows.fields()
            .iter()
            .filter(|f| {
                table.field_with_name(f.name()).is_ok_and(|was| {
                    matches!(was.data_type(), DataType::Int64 | DataType::Int32)
                        && f.data_type() == &DataType::Float64
                })
            })
            .map(|f| f.name().clone())
            .collect()
    }

    /// Before an append whose rows widen columns of the table: rewrites the table with those
    /// columns as numbers, in one overwrite commit read as a stream from the table itself. The
    /// rows stay what they were and the `txn` marks stay in the log, so a crash before or
    /// after it loses and repeats nothing; it happens once per widening.
    async fn widen_for(&mut self, rows: &Schema) -> Result<(), SinkError> {
        let widened = self.widened(rows);
        if widened.is_empty() {
            return Ok(());
        }
        // The rewrite removes every file: a compaction removing some of them must not race it,
        // and one that has committed must be seen (its files replaced those the table held).
        // This process's own is waited for; another's (a worker's, `stratus maintain`) fails
        // the rewrite over the compaction mark it records too, and the rewrite reads again.
        self.finish_compaction(true).await;
        let mut attempts = 0;
        let table = loop {
            attempts += 1;
            self.table
                .update_state()
                .await
                .map_err(|e| self.delta_error(e))?;
            let ctx = datafusion::prelude::SessionContext::new();
            self.table
                .update_datafusion_session(&ctx.state())
                .map_err(|e| self.delta_error(e))?;
            let provider = self
                .table
                .table_provider()
                .await
                .map_err(|e| self.delta_error(e.into()))?;
            let df = ctx
                .read_table(provider)
                .map_err(|e| self.delta_error(e.into()))?;
            // Every column as the rows to append have it (the widened ones, and those Delta
            // stores under other field names, such as a map's entries), the rest as they are.
            let columns: Vec<datafusion::prelude::Expr> = df
                .schema()
                .fields()
                .iter()
                .map(|f| {
                    let c = datafusion::prelude::col(format!("\"{}\"", f.name()));
                    match rows.field_with_name(f.name()) {
                        Ok(r) if r.data_type() != f.data_type() => {
                            datafusion::prelude::cast(c, r.data_type().clone()).alias(f.name())
                        }
                        _ => c,
                    }
                })
                .collect();
            let plan = df
                .select(columns)
                .map_err(|e| self.delta_error(e.into()))?
                .into_unoptimized_plan();
            tracing::warn!(
                "{}: {} widened from integer to number: rewriting the table once",
                self.config.location,
                widened.join(", ")
            );
            let fence = Transaction::new(
                COMPACTION_MARK,
                self.table.version().map_or(0, |v| v as i64 + 1),
            );
            let written = self
                .table
                .clone()
                .write(Vec::new())
                .with_input_plan(plan)
                .with_save_mode(deltalake::protocol::SaveMode::Overwrite)
                .with_schema_mode(deltalake::operations::write::SchemaMode::Overwrite)
                .with_writer_properties(writer_properties(rows, &[]))
                .with_partition_columns(self.config.partition_columns.clone())
                .with_commit_properties(commit_properties(vec![fence]))
                .await;
            match written {
                Ok(table) => break table,
                Err(e) if lost_to_another(&e) && attempts < 5 => continue,
                Err(e) => return Err(self.delta_error(e)),
            }
        };
        self.table = table;
        Ok(())
    }

    /// Appends `batches` and records `marks` in the same commit. With no rows it commits
    /// nothing.
    pub async fn commit(
        &mut self,
        batches: Vec<RecordBatch>,
        marks: &Marks,
    ) -> Result<CommitStats, SinkError> {
        let started = Instant::now();
        let rows = batches.iter().map(RecordBatch::num_rows).sum();
        if rows == 0 {
            return Ok(CommitStats {
                version: self.table.version().map_or(-1, |v| v as i64),
                rows: 0,
                files: 0,
                seconds: 0.0,
            });
        }
        self.widen_for(&batches[0].schema()).await?;
        let txns = self.txns(marks).await?;
        let files_before = self.file_count();
        let table = self.table.clone();
        let properties = writer_properties(&batches[0].schema(), &batches);
        let write = table
            .write(batches)
            .with_partition_columns(self.config.partition_columns.clone())
            .with_writer_properties(properties)
            // A stage that gains a column (a new carried feature, a column added to its SQL)
            // adds it to the table; earlier rows read it as null.
            .with_schema_mode(deltalake::operations::write::SchemaMode::Merge)
            .with_commit_properties(commit_properties(txns))
            .into_future();
        let table = uploaded(write).await.map_err(|e| self.commit_error(e))?;
        self.table = table;
        self.committed(files_before, rows, started).await
    }

    /// Starts writing `batches` as the table's Parquet files on a task of its own, as soon as
    /// they are out, so that their commit (see [`commit_staged`](Self::commit_staged)) has
    /// only the log to write. `None` where they do not fit the table as it stands (no table
    /// yet, a column it lacks or holds as another type): their commit writes them then.
    pub fn stage(&self, batches: &[RecordBatch]) -> Option<Staged> {
        let first = batches.iter().find(|b| b.num_rows() > 0)?;
        let schema = first.schema();
        let table = self.table.snapshot().ok()?.snapshot().arrow_schema();
        let fits = schema.fields().iter().all(|f| {
            table
                .field_with_name(f.name())
                .is_ok_and(|t| t.data_type() == f.data_type())
        });
        if !fits || batches.iter().any(|b| b.schema() != schema) {
            return None;
        }
        let partition_by = self
            .table
            .snapshot()
            .ok()?
            .metadata()
            .partition_columns()
            .to_vec();
        let properties = writer_properties(&schema, batches);
        let rows = batches.iter().map(RecordBatch::num_rows).sum();
        let mut files = Vec::new();
        for part in split_rows(batches, writers(rows)) {
            let mut writer = RecordBatchWriter::for_table(&self.table)
                .ok()?
                .with_writer_properties(properties.clone());
            let partition_by = partition_by.clone();
            files.push(tokio::spawn(uploaded(async move {
                for b in part {
                    // Rows of one partition (a cycle's rows are mostly of one date) go to it
                    // directly: delta-rs would group them by partition, copying every column.
                    match one_partition(&b, &partition_by) {
                        Some(values) => {
                            writer
                                .write_partition(b, &values, WriteMode::Default)
                                .await?;
                        }
                        None => writer.write(b).await?,
                    }
                }
                writer.flush().await
            })));
        }
        Some(Staged { files, rows })
    }

    /// Commits the files `staged` wrote, with `marks`, as [`commit`](Self::commit) commits
    /// `batches` (the same rows). Where writing them failed, `batches` are written again here.
    pub async fn commit_staged(
        &mut self,
        staged: Staged,
        batches: Vec<RecordBatch>,
        marks: &Marks,
    ) -> Result<CommitStats, SinkError> {
        let started = Instant::now();
        let mut adds = Vec::new();
        for files in staged.files {
            match files.await {
                Ok(Ok(part)) => adds.extend(part),
                Ok(Err(e)) => {
                    tracing::debug!(
                        "{}: writing the cycle's files beside the stages failed ({e}); writing \
                         them again",
                        self.config.location
                    );
                    return self.commit(batches, marks).await;
                }
                // A panic while writing is the run's, as it would be inline.
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            }
        }
        let txns = self.txns(marks).await?;
        let files_before = self.file_count();
        let snapshot = self
            .table
            .snapshot()
            .map_err(|e| self.delta_error(e))?
            .clone();
        let partition_by =
            Some(snapshot.metadata().partition_columns().to_vec()).filter(|p| !p.is_empty());
        let commit = CommitBuilder::from(commit_properties(txns))
            .with_actions(adds.into_iter().map(Action::Add).collect())
            .build(
                Some(&snapshot),
                self.table.log_store(),
                DeltaOperation::Write {
                    mode: SaveMode::Append,
                    partition_by,
                    predicate: None,
                },
            )
            .await
            .map_err(|e| self.commit_error(e))?;
        self.table.state = Some(commit.snapshot());
        self.committed(files_before, staged.rows, started).await
    }

    /// The `txn` actions of a commit recording `marks` (and, in a claimed table, this
    /// process's owner epoch, once it is known to be still this process's).
    async fn txns(&self, marks: &Marks) -> Result<Vec<Transaction>, SinkError> {
        let mut txns: Vec<Transaction> = marks
            .iter()
            .map(|(mark, value)| Transaction::new(self.app_id(mark), *value))
            .collect();
        if let Some(owner) = self.owner {
            self.check_owner(owner, marks).await?;
            txns.push(Transaction::new(self.app_id(OWNER_MARK), owner));
        }
        Ok(txns)
    }

    /// After an append's commit: starts the compaction, the log checkpoint or the vacuum that
    /// is due.
    async fn committed(
        &mut self,
        files_before: usize,
        rows: usize,
        started: Instant,
    ) -> Result<CommitStats, SinkError> {
        let files = self.file_count().saturating_sub(files_before);
        self.files_since_compaction += files;
        self.finish_compaction(false).await;
        self.compact_if_due();
        self.looked_at = Some(Instant::now());
        self.commits_since_checkpoint += 1;
        self.checkpoint_log_if_due().await;
        self.vacuum_if_due().await?;
        Ok(CommitStats {
            version: self.table.version().map_or(-1, |v| v as i64),
            rows,
            files,
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}

/// An append's files being written beside the stages (see [`DeltaSink::stage`]), by one
/// writer or, for many rows, by several at once (see [`writers`]).
pub struct Staged {
    files: Vec<tokio::task::JoinHandle<Result<Vec<Add>, DeltaTableError>>>,
    rows: usize,
}

/// Rows a staged write gives each writer at least: fewer rows are written as one file, as
/// splitting them gains less than the files it adds cost to list, read and compact.
const ROWS_PER_WRITER: usize = 1 << 15;

/// How many writers stage `rows` at once: one per [`ROWS_PER_WRITER`] rows, at most one per
/// core. Parquet encoding is one thread's work per file, and 100,000 keys closing a window at
/// once make a file that takes a core about 0.1 s (BENCHMARKS.md, "100,000 keys closing at
/// once, where the firing's time goes").
fn writers(rows: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    (rows / ROWS_PER_WRITER).clamp(1, cores)
}

/// The non-empty rows of `batches` in `parts` runs of about equal rows, in order (slices, not
/// copies).
fn split_rows(batches: &[RecordBatch], parts: usize) -> Vec<Vec<RecordBatch>> {
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let per_part = rows.div_ceil(parts.max(1)).max(1);
    let mut split: Vec<Vec<RecordBatch>> = vec![Vec::new()];
    let mut room = per_part;
    for batch in batches {
        let mut offset = 0;
        while offset < batch.num_rows() {
            if room == 0 {
                split.push(Vec::new());
                room = per_part;
            }
            let take = room.min(batch.num_rows() - offset);
            if let Some(part) = split.last_mut() {
                part.push(batch.slice(offset, take));
            }
            offset += take;
            room -= take;
        }
    }
    split.retain(|p| !p.is_empty());
    split
}

/// `write`, a write of Parquet files to the store. delta-rs 1.1.3 aborts an upload that failed
/// (the store went away, or answered a request held while the process was paused) through
/// `BufWriter::abort`, which panics when the failure came at its completion: that write
/// failed on the store, and nothing was committed.
async fn uploaded<T>(
    write: impl std::future::Future<Output = Result<T, DeltaTableError>>,
) -> Result<T, DeltaTableError> {
    futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(write))
        .await
        .unwrap_or_else(|_| {
            Err(DeltaTableError::ObjectStore {
                source: object_store::Error::Generic {
                    store: "Delta writer",
                    source: "an upload failed and could not be aborted".into(),
                },
            })
        })
}

impl DeltaSink {
    /// Starts a compaction beside the appends once `compact_after_files` data files were
    /// written to the table (by any process) since this one last compacted it.
    fn compact_if_due(&mut self) {
        let limit = self.config.compact_after_files;
        if limit == 0 || self.files_since_compaction < limit || self.compacting.is_some() {
            return;
        }
        // Beside the stream, not in its way: appends read nothing, so they and the
        // compaction's one commit never conflict (each that loses the race to the log is
        // retried by delta-rs on top of the other), and a crash loses nothing (the compaction
        // commits once, or not at all). A compaction that fails only leaves the files as they
        // are: it is tried again after `limit` more.
        let target =
            std::num::NonZeroU64::new(TARGET_FILE_SIZE).unwrap_or(std::num::NonZeroU64::MIN);
        let table = self.table.clone();
        self.compacting = Some(tokio::spawn(async move {
            compact(table, target)
                .await
                .map(|(_, partitions)| partitions)
        }));
        self.files_since_compaction = 0;
    }

    /// Starts writing a Delta checkpoint of the log beside the appends once
    /// `checkpoint_interval` commits were made since the last one, unless one is still being
    /// written (the next commit tries again). A checkpoint only spares readers the replay of
    /// the log's JSON commits, so a commit's answer need not wait for it: its cost, which grows
    /// with the table's files, stays out of the latency of the results. One that fails is
    /// logged; the next one covers the same versions.
    async fn checkpoint_log_if_due(&mut self) {
        self.finish_log_checkpoint(false).await;
        let every = self.config.checkpoint_interval;
        if every == 0 || self.commits_since_checkpoint < every || self.checkpointing.is_some() {
            return;
        }
        let table = self.table.clone();
        self.checkpointing = Some(tokio::spawn(async move {
            deltalake::checkpoints::create_checkpoint(&table, None).await
        }));
        self.commits_since_checkpoint = 0;
    }

    /// Takes the outcome of the checkpoint of the log being written, once it has ended — or
    /// (`wait`) waiting for it to end.
    async fn finish_log_checkpoint(&mut self, wait: bool) {
        let Some(handle) = self.checkpointing.take_if(|h| wait || h.is_finished()) else {
            return;
        };
        let failed = match handle.await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        tracing::warn!(
            "{}: writing a Delta checkpoint of the log failed (readers replay the log's commits \
             instead; the next one is tried after {} more commits): {failed}",
            self.config.location,
            self.config.checkpoint_interval
        );
    }

    /// Waits for what runs beside the appends: a compaction, a checkpoint of the log.
    pub async fn finish_background(&mut self) {
        self.finish_compaction(true).await;
        self.finish_log_checkpoint(true).await;
    }

    /// For a worker's shard that compacts the table but has no rows for it (its partition gets
    /// no events, while the other shards' files pile up): reads the table again at most once
    /// per [`IDLE_LOOK`] and compacts it if due. A failed read is only logged. A process that
    /// has not claimed the table (a single one, whose files are all its own) does nothing.
    pub async fn look_while_idle(&mut self) {
        if self.owner.is_none()
            || self.config.compact_after_files == 0
            || self.looked_at.is_some_and(|t| t.elapsed() < IDLE_LOOK)
        {
            return;
        }
        self.looked_at = Some(Instant::now());
        self.finish_compaction(false).await;
        let before = self.file_count();
        if let Err(e) = self.read_again().await {
            tracing::warn!(
                "{}: cannot read the table to compact it: {e}",
                self.config.location
            );
            return;
        }
        self.files_since_compaction += self.file_count().saturating_sub(before);
        self.compact_if_due();
    }

    /// Vacuums the table and removes its expired log files if [`Vacuum::every`] has passed
    /// since it last did and no compaction is running. Log files go only up to the newest Delta
    /// checkpoint (one is written first if there is none since the last commit), so the `txn`
    /// marks stay readable.
    async fn vacuum_if_due(&mut self) -> Result<(), SinkError> {
        let Some(v) = self.config.vacuum.clone() else {
            return Ok(());
        };
        if self.vacuumed_at.elapsed() < v.every || self.compacting.is_some() {
            return Ok(());
        }
        self.vacuumed_at = Instant::now();
        // The log cleanup below goes up to the newest checkpoint, so one being written is
        // waited for.
        self.finish_log_checkpoint(true).await;
        // Its compactions' commits too.
        self.read_again().await?;
        if self.commits_since_checkpoint > 0 {
            deltalake::checkpoints::create_checkpoint(&self.table, None)
                .await
                .map_err(|e| self.delta_error(e))?;
            self.commits_since_checkpoint = 0;
        }
        let logs = deltalake::checkpoints::cleanup_metadata(&self.table, None)
            .await
            .map_err(|e| self.delta_error(e))?;
        let (table, vacuumed) = self
            .table
            .clone()
            .vacuum()
            .with_retention_period(v.retention)
            // The pipeline file's retention is the operator's explicit choice.
            .with_enforce_retention_duration(false)
            .await
            .map_err(|e| self.delta_error(e))?;
        self.table = table;
        tracing::info!(
            "Delta table {}: vacuumed {} unreferenced files, removed {logs} expired log files",
            self.config.location,
            vacuumed.files_deleted.len()
        );
        Ok(())
    }
}

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// The derived `date` partition column.
fn date_field(nullable: bool) -> Field {
    Field::new("date", DataType::Date32, nullable)
}

/// `schema` with the `date` column [`with_event_date`] adds.
pub fn with_date_field(schema: &Schema) -> SchemaRef {
    let mut fields: Vec<Arc<Field>> = schema.fields().iter().cloned().collect();
    fields.push(Arc::new(date_field(true)));
    Arc::new(Schema::new(fields))
}

/// Adds a `date` column (the UTC day of the timestamp column `ts_column`), the raw tables'
/// partition column.
pub fn with_event_date(batch: &RecordBatch, ts_column: &str) -> Result<RecordBatch, SinkError> {
    let ts = batch
        .column_by_name(ts_column)
        .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
        .ok_or_else(|| {
            ArrowError::SchemaError(format!(
                "column `{ts_column}` is missing or not a microsecond timestamp"
            ))
        })?;
    let days: Date32Array = ts.unary_opt(|us| i32::try_from(us.div_euclid(MICROS_PER_DAY)).ok());
    let mut fields: Vec<Arc<Field>> = batch.schema().fields().iter().cloned().collect();
    fields.push(Arc::new(date_field(ts.null_count() > 0)));
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    columns.push(Arc::new(days));
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request to the object store that failed while the process was paused (SIGSTOP) or
    /// the store was down comes back from reading the log again as delta-rs's `Generic` text:
    /// tried again, as any object store failure; a schema or data error never is.
    #[test]
    fn object_store_failures_are_transient_in_every_form_delta_rs_gives_them() {
        let sink_error = |source| SinkError::Delta {
            table: "s3://bucket/t".into(),
            source: Box::new(source),
        };
        let store = "Error interacting with object store: Generic S3 error: Error performing \
                     list request: HTTP error: error sending request";
        assert!(sink_error(DeltaTableError::Generic(store.into())).is_transient());
        assert!(
            sink_error(DeltaTableError::ObjectStore {
                source: object_store::Error::Generic {
                    store: "S3",
                    source: "connection reset".into(),
                }
            })
            .is_transient()
        );
        assert!(!sink_error(DeltaTableError::Generic("Schema mismatch".into())).is_transient());
        assert!(!sink_error(DeltaTableError::NotATable("t".into())).is_transient());
    }

    #[test]
    fn event_date_is_the_utc_day() {
        let ts =
            TimestampMicrosecondArray::from(vec![0, MICROS_PER_DAY - 1, -1, 1_748_779_200_000_000])
                .with_timezone("UTC");
        let schema = Schema::new(vec![Field::new("ts", ts.data_type().clone(), false)]);
        let batch = RecordBatch::try_new(Arc::new(schema), vec![Arc::new(ts)]).unwrap();
        let out = with_event_date(&batch, "ts").unwrap();
        let d = out
            .column(1)
            .as_any()
            .downcast_ref::<Date32Array>()
            .unwrap();
        assert_eq!(d.values().to_vec(), vec![0, 0, -1, 20240]);
        assert!(with_event_date(&batch, "nope").is_err());
    }

    /// The rows of `table`, counted through DataFusion.
    async fn count_rows(table: &DeltaTable) -> usize {
        let ctx = datafusion::prelude::SessionContext::new();
        table.update_datafusion_session(&ctx.state()).unwrap();
        let df = ctx
            .read_table(table.table_provider().await.unwrap())
            .unwrap();
        df.count().await.unwrap()
    }

    /// Rows staged beside the stages are committed with their marks, in the table's date
    /// partitions, and a fenced process commits none of them; rows with a column the table
    /// lacks are not staged, and their commit adds the column.
    #[tokio::test]
    async fn staged_rows_commit_with_their_marks_and_new_columns_are_not_staged() {
        use arrow::array::{Int64Array, StringArray};
        let dir = std::env::temp_dir().join(format!("stratus-staged-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let open = || {
            DeltaSink::open(DeltaSinkConfig {
                location: dir.display().to_string(),
                partition_columns: vec!["date".into()],
                pipeline: "p/partition-0".into(),
                checkpoint_interval: 0,
                compact_after_files: 0,
                storage_options: HashMap::new(),
                vacuum: None,
            })
        };
        let rows = |days: &[i64], extra: bool| {
            let ts = TimestampMicrosecondArray::from_iter_values(
                days.iter().map(|d| d * MICROS_PER_DAY + 1),
            )
            .with_timezone("UTC");
            let id: ArrayRef = Arc::new(StringArray::from_iter_values(
                days.iter().enumerate().map(|(i, _)| format!("i-{i}")),
            ));
            let mut columns = vec![("ts", Arc::new(ts) as ArrayRef), ("id", id)];
            if extra {
                columns.push(("n", Arc::new(Int64Array::from_iter_values(days.to_vec()))));
            }
            let batch = RecordBatch::try_from_iter(columns).unwrap();
            vec![with_event_date(&batch, "ts").unwrap()]
        };
        let cycle = |c: i64| Marks::from([(CYCLE_MARK.to_string(), c)]);
        let mut sink = open().await.unwrap();
        sink.claim(&rows(&[0], false)[0].schema()).await.unwrap();
        assert!(sink.stage(&rows(&[0], false)).is_some(), "the table exists");

        let staged = sink.stage(&rows(&[0, 1, 1], false)).unwrap();
        let stats = sink
            .commit_staged(staged, rows(&[0, 1, 1], false), &cycle(1))
            .await
            .unwrap();
        assert_eq!((stats.rows, stats.files), (3, 2), "a file per day");
        assert_eq!(sink.mark(CYCLE_MARK).await.unwrap(), Some(1));

        // Rows of one day, written to their partition directly.
        let one_day = rows(&[1, 1], false);
        let staged = sink.stage(&one_day).unwrap();
        let stats = sink
            .commit_staged(staged, one_day, &cycle(2))
            .await
            .unwrap();
        assert_eq!((stats.rows, stats.files), (2, 1));
        let mut dates: Vec<(String, usize)> = Vec::new();
        for file in sink.table.snapshot().unwrap().log_data().iter() {
            let values = file.partition_values_map();
            let date = values.get("date").cloned().flatten().unwrap_or_default();
            match dates.iter_mut().find(|(d, _)| *d == date) {
                Some((_, n)) => *n += 1,
                None => dates.push((date, 1)),
            }
        }
        dates.sort();
        assert_eq!(dates, [("1970-01-01".into(), 1), ("1970-01-02".into(), 2)]);

        // Rows for two writers: written as two files at once, where there are two cores.
        let many = rows(&vec![1; 2 * ROWS_PER_WRITER + 1], false);
        let staged = sink.stage(&many).unwrap();
        let stats = sink.commit_staged(staged, many, &cycle(3)).await.unwrap();
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        assert_eq!(
            (stats.rows, stats.files),
            (2 * ROWS_PER_WRITER + 1, cores.min(2))
        );

        let wider = rows(&[2], true);
        assert!(sink.stage(&wider).is_none(), "a column the table lacks");
        sink.commit(wider, &cycle(4)).await.unwrap();
        let staged = sink.stage(&rows(&[3], true)).unwrap();

        // Another process claims the partition meanwhile: the staged rows stay out.
        let mut other = open().await.unwrap();
        other.claim(&rows(&[0], true)[0].schema()).await.unwrap();
        match sink
            .commit_staged(staged, rows(&[3], true), &cycle(5))
            .await
        {
            Err(SinkError::Fenced { .. }) => {}
            other => panic!("not fenced: {other:?}"),
        }
        let table = open_table(&dir.display().to_string(), &HashMap::new())
            .await
            .unwrap();
        assert_eq!(count_rows(&table).await, 6 + 2 * ROWS_PER_WRITER + 1);
        let schema = table.snapshot().unwrap().snapshot().arrow_schema();
        assert!(schema.field_with_name("n").is_ok());
        assert_eq!(sink.mark(CYCLE_MARK).await.unwrap(), Some(4));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rows_split_in_order_into_parts_of_about_equal_size() {
        use arrow::array::{AsArray, Int64Array};
        use arrow::datatypes::Int64Type;
        let batch = |from: i64, n: i64| {
            RecordBatch::try_from_iter([(
                "v",
                Arc::new(Int64Array::from_iter_values(from..from + n)) as ArrayRef,
            )])
            .unwrap()
        };
        let batches = [batch(0, 0), batch(0, 5), batch(5, 7), batch(12, 1)];
        for (parts, sizes) in [(1, vec![13]), (2, vec![7, 6]), (3, vec![5, 5, 3])] {
            let split = split_rows(&batches, parts);
            let rows = |part: &Vec<RecordBatch>| -> Vec<i64> {
                part.iter()
                    .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
                    .collect()
            };
            assert_eq!(
                split.iter().map(|p| rows(p).len()).collect::<Vec<_>>(),
                sizes
            );
            assert_eq!(
                split.iter().flat_map(rows).collect::<Vec<_>>(),
                (0..13).collect::<Vec<_>>()
            );
            assert!(split.iter().flatten().all(|b| b.num_rows() > 0));
        }
        assert_eq!(writers(ROWS_PER_WRITER - 1), 1);
    }

    /// Partition 0 of pipeline `p` is claimed by A, then by B, then by C, while partition 1
    /// appends to the same table: A (its table state older than B's claim) and B (its state
    /// read again after C's claim) commit nothing more; C, and partition 1 on top of C's
    /// appends, commit; a cycle the table holds is not committed twice.
    #[tokio::test]
    async fn a_partition_claimed_again_fences_its_earlier_owners() {
        use arrow::array::Int64Array;
        let dir = std::env::temp_dir().join(format!("stratus-fence-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let open = |shard: &str| {
            DeltaSink::open(DeltaSinkConfig {
                location: dir.display().to_string(),
                partition_columns: Vec::new(),
                pipeline: format!("p/{shard}"),
                checkpoint_interval: 0,
                compact_after_files: 0,
                storage_options: HashMap::new(),
                vacuum: None,
            })
        };
        let rows = |v: i64| {
            let a: ArrayRef = Arc::new(Int64Array::from(vec![v]));
            vec![RecordBatch::try_from_iter([("v", a)]).unwrap()]
        };
        let cycle = |c: i64| Marks::from([(CYCLE_MARK.to_string(), c)]);
        let fenced = |r: Result<CommitStats, SinkError>| match r {
            Err(SinkError::Fenced { why, .. }) => why,
            other => panic!("not fenced: {other:?}"),
        };

        let schema = rows(0)[0].schema();
        let mut a = open("partition-0").await.unwrap();
        assert_eq!(
            a.claim(&schema).await.unwrap(),
            1,
            "a table not yet created"
        );
        a.commit(rows(1), &cycle(1)).await.unwrap();
        let mut b = open("partition-0").await.unwrap();
        assert_eq!(b.claim(&schema).await.unwrap(), 2);
        let why = fenced(a.commit(rows(2), &cycle(2)).await);
        assert!(why.contains("another process committed"), "{why}");

        let mut c = open("partition-0").await.unwrap();
        assert_eq!(c.claim(&schema).await.unwrap(), 3);
        // A claim that read epoch 2 before c claimed 3 is fenced, not claimed above c's.
        let mut late = open("partition-0").await.unwrap();
        late.claim_read = Some(2);
        match late.claim(&schema).await {
            Err(SinkError::Fenced { why, .. }) => {
                assert!(why.contains("claimed it meanwhile (owner epoch 3"), "{why}")
            }
            other => panic!("not fenced: {other:?}"),
        }
        assert!(!b.recorded(&cycle(2)).await.unwrap());
        let why = fenced(b.commit(rows(2), &cycle(2)).await);
        assert!(why.contains("owner epoch is 3"), "{why}");
        let why = fenced(c.commit(rows(1), &cycle(1)).await);
        assert!(why.contains("holds its cycle 1"), "{why}");

        let mut other = open("partition-1").await.unwrap();
        assert_eq!(other.claim(&schema).await.unwrap(), 1);
        other.commit(rows(10), &cycle(1)).await.unwrap();
        c.commit(rows(2), &cycle(2)).await.unwrap();
        other.commit(rows(11), &cycle(2)).await.unwrap();

        let table = open_table(&dir.display().to_string(), &HashMap::new())
            .await
            .unwrap();
        assert_eq!(count_rows(&table).await, 4, "1, 2, 10 and 11");
        assert_eq!(c.mark(CYCLE_MARK).await.unwrap(), Some(2));
        assert_eq!(c.mark(OWNER_MARK).await.unwrap(), Some(3));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A and B, both the owner of partition 0 in turn, open a table no one has created: A's
    /// claim creates it, empty, with the rows' columns; once B has claimed, A's first commit is
    /// fenced (it would otherwise have created the table with a cycle of its own). A process
    /// that read the table before A created it cannot create it again, and the rows' first
    /// commit changes nothing in the created schema.
    #[tokio::test]
    async fn a_table_not_created_yet_is_created_by_the_claim_and_fenced_like_any() {
        use arrow::array::{Int64Array, StringArray};
        let dir = std::env::temp_dir().join(format!("stratus-create-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let open = |shard: &str| {
            DeltaSink::open(DeltaSinkConfig {
                location: dir.display().to_string(),
                partition_columns: vec!["k".into()],
                pipeline: format!("p/{shard}"),
                checkpoint_interval: 0,
                compact_after_files: 0,
                storage_options: HashMap::new(),
                vacuum: None,
            })
        };
        let rows = |v: i64| {
            let v: ArrayRef = Arc::new(Int64Array::from(vec![v]));
            let k: ArrayRef = Arc::new(StringArray::from(vec!["a"]));
            let schema = Schema::new(vec![
                Field::new("v", DataType::Int64, false),
                Field::new("k", DataType::Utf8, false),
            ]);
            vec![RecordBatch::try_new(Arc::new(schema), vec![v, k]).unwrap()]
        };
        let cycle = |c: i64| Marks::from([(CYCLE_MARK.to_string(), c)]);
        let schema = rows(0)[0].schema();

        let mut a = open("partition-0").await.unwrap();
        let mut b = open("partition-0").await.unwrap();
        let mut stale = open("partition-1").await.unwrap();
        assert_eq!(a.claim(&schema).await.unwrap(), 1);
        assert_eq!(a.table().version(), Some(0), "created by the claim");
        assert!(
            stale.create_claimed(&schema).await.is_err(),
            "a table's first version is made once"
        );
        assert_eq!(stale.claim(&schema).await.unwrap(), 1, "its own epoch 1");
        assert_eq!(b.claim(&schema).await.unwrap(), 2);
        match a.commit(rows(1), &cycle(1)).await {
            Err(SinkError::Fenced { .. }) => {}
            other => panic!("not fenced: {other:?}"),
        }
        let created = b.table().snapshot().unwrap().schema().clone();
        b.commit(rows(2), &cycle(1)).await.unwrap();
        assert_eq!(b.table().snapshot().unwrap().schema(), created);
        let names: Vec<_> = created
            .fields()
            .map(|f| (f.name().clone(), f.is_nullable()))
            .collect();
        assert_eq!(names, [("v".to_string(), true), ("k".to_string(), true)]);
        assert_eq!(
            b.table().snapshot().unwrap().metadata().partition_columns(),
            &["k".to_string()]
        );
        let table = open_table(&dir.display().to_string(), &HashMap::new())
            .await
            .unwrap();
        assert_eq!(count_rows(&table).await, 1, "B's row alone");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A shard that compacts a table but gets no rows for it (partition 0 idle) still compacts
    /// the files another shard writes, when it looks while idle.
    #[tokio::test]
    async fn an_idle_shard_compacts_the_files_the_others_write() {
        use arrow::array::Int64Array;
        let dir = std::env::temp_dir().join(format!("stratus-idle-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let open = |shard: &str, compact_after_files: usize| {
            DeltaSink::open(DeltaSinkConfig {
                location: dir.display().to_string(),
                partition_columns: Vec::new(),
                pipeline: format!("p/{shard}"),
                checkpoint_interval: 0,
                compact_after_files,
                storage_options: HashMap::new(),
                vacuum: None,
            })
        };
        let schema = Schema::new(vec![Field::new("v", DataType::Int64, true)]);
        let mut idle = open("partition-0", 3).await.unwrap();
        idle.claim(&schema).await.unwrap();
        let mut busy = open("partition-1", 0).await.unwrap();
        busy.claim(&schema).await.unwrap();
        for cycle in 1..=4_i64 {
            let v: ArrayRef = Arc::new(Int64Array::from(vec![cycle]));
            let batch = RecordBatch::try_from_iter([("v", v)]).unwrap();
            busy.commit(vec![batch], &Marks::from([("cycle".to_string(), cycle)]))
                .await
                .unwrap();
        }
        idle.look_while_idle().await;
        idle.finish_compaction(true).await;
        let table = open_table(&dir.display().to_string(), &HashMap::new())
            .await
            .unwrap();
        assert_eq!(table.snapshot().unwrap().log_data().num_files(), 1);
        assert_eq!(count_rows(&table).await, 4);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// 1,000 keys in turn over 20,000 rows keep a dictionary; 20,000 keys once each, or 20,000
    /// keys twice over 40,000 rows (a period a fixed step could alias), do not.
    #[test]
    fn a_text_column_is_mostly_distinct_when_few_of_its_values_repeat() {
        use arrow::array::StringArray;
        let keys = |keys: usize, rows: usize| -> ArrayRef {
            Arc::new(StringArray::from_iter_values(
                (0..rows).map(|i| format!("i-{:08}", i % keys)),
            ))
        };
        assert!(!mostly_distinct(&keys(1_000, 20_000)));
        assert!(mostly_distinct(&keys(20_000, 20_000)));
        assert!(mostly_distinct(&keys(20_000, 40_000)));
        assert!(!mostly_distinct(&keys(10, 100)));
    }

    /// Every Parquet file of a table, appended or compacted, dictionary-encodes its key and
    /// count columns and writes its floating-point ones plain (no dictionary page, no
    /// dictionary-encoded data pages); an append writes a text column whose values all differ
    /// (an id) plain too, and a compaction, where it may repeat, with a dictionary.
    #[tokio::test]
    async fn floats_and_distinct_texts_are_appended_without_a_dictionary() {
        use arrow::array::{Float64Array, Int64Array, StringArray};
        use parquet::basic::Encoding;
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let dir = std::env::temp_dir().join(format!("stratus-dict-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut sink = DeltaSink::open(DeltaSinkConfig {
            location: dir.display().to_string(),
            partition_columns: Vec::new(),
            pipeline: "p".into(),
            checkpoint_interval: 0,
            compact_after_files: 2,
            storage_options: HashMap::new(),
            vacuum: None,
        })
        .await
        .unwrap();
        for cycle in 1..=2_i64 {
            let n = 1_000;
            let key: ArrayRef = Arc::new(StringArray::from_iter_values(
                (0..n).map(|i| format!("host-{}", i % 10)),
            ));
            let count: ArrayRef = Arc::new(Int64Array::from_iter_values((0..n).map(|i| i % 3)));
            let value: ArrayRef = Arc::new(Float64Array::from_iter_values(
                (0..n).map(|i| (i as f64 + cycle as f64 / 7.0).sqrt()),
            ));
            let id: ArrayRef = Arc::new(StringArray::from_iter_values(
                (0..n).map(|i| format!("resource-{cycle}-{i}")),
            ));
            let batch = RecordBatch::try_from_iter([
                ("key", key),
                ("count", count),
                ("value", value),
                ("id", id),
            ])
            .unwrap();
            sink.commit(vec![batch], &Marks::from([("cycle".to_string(), cycle)]))
                .await
                .unwrap();
        }
        sink.finish_background().await;
        let files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
            .collect();
        assert_eq!(
            files.len(),
            3,
            "two appends and their compaction: {files:?}"
        );
        let dictionary = [Encoding::RLE_DICTIONARY, Encoding::PLAIN_DICTIONARY];
        let mut compacted = 0;
        for file in &files {
            let reader = SerializedFileReader::new(std::fs::File::open(file).unwrap()).unwrap();
            let group = reader.metadata().row_group(0);
            let appended = group.num_rows() == 1_000;
            compacted += usize::from(!appended);
            for column in group.columns() {
                let name = column.column_path().string();
                let encodings: Vec<Encoding> = column.encodings().collect();
                let encoded = encodings.iter().any(|e| dictionary.contains(e));
                let want = name != "value" && !(appended && name == "id");
                assert_eq!(
                    (encoded, column.dictionary_page_offset().is_some()),
                    (want, want),
                    "{name} in {}: {:?}",
                    file.display(),
                    encodings
                );
            }
        }
        assert_eq!(compacted, 1, "{files:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// With a checkpoint due every second commit, the first, of version 1, is written beside
    /// the appends and on disk once the sink's background work is done (a later one is started
    /// only once it has ended), and a reader that starts from the log sees every row and the
    /// newest marks.
    #[tokio::test]
    async fn the_log_is_checkpointed_beside_the_appends() {
        use arrow::array::Int64Array;
        let dir = std::env::temp_dir().join(format!("stratus-log-cp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let location = dir.display().to_string();
        let mut sink = DeltaSink::open(DeltaSinkConfig {
            location: location.clone(),
            partition_columns: Vec::new(),
            pipeline: "p".into(),
            checkpoint_interval: 2,
            compact_after_files: 0,
            storage_options: HashMap::new(),
            vacuum: None,
        })
        .await
        .unwrap();
        for cycle in 1..=5_i64 {
            let v: ArrayRef = Arc::new(Int64Array::from(vec![cycle]));
            let batch = RecordBatch::try_from_iter([("v", v)]).unwrap();
            sink.commit(vec![batch], &Marks::from([("cycle".to_string(), cycle)]))
                .await
                .unwrap();
        }
        sink.finish_background().await;
        let log = dir.join("_delta_log");
        assert!(
            log.join("00000000000000000001.checkpoint.parquet").exists(),
            "no checkpoint of version 1 in {}",
            log.display()
        );
        let last: serde_json::Value =
            serde_json::from_slice(&std::fs::read(log.join("_last_checkpoint")).unwrap()).unwrap();
        assert!(last["version"].as_i64().is_some_and(|v| v >= 1), "{last}");
        let table = open_table(&location, &HashMap::new()).await.unwrap();
        assert_eq!(count_rows(&table).await, 5);
        let reopened = DeltaSink::open(DeltaSinkConfig {
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
        assert_eq!(reopened.mark("cycle").await.unwrap(), Some(5));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Two commits of an integer column start a compaction beside the stream; a third with the
    /// column as a number widens the table: the rewrite sees the compaction's file, so every row
    /// is there once.
    #[tokio::test]
    async fn a_widening_after_a_compaction_keeps_every_row_once() {
        use arrow::array::{Float64Array, Int64Array};
        let dir = std::env::temp_dir().join(format!("stratus-widen-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut sink = DeltaSink::open(DeltaSinkConfig {
            location: dir.display().to_string(),
            partition_columns: Vec::new(),
            pipeline: "p".into(),
            checkpoint_interval: 0,
            compact_after_files: 2,
            storage_options: HashMap::new(),
            vacuum: None,
        })
        .await
        .unwrap();
        let ints = |v: i64| {
            let a: ArrayRef = Arc::new(Int64Array::from(vec![v]));
            RecordBatch::try_from_iter([("v", a)]).unwrap()
        };
        for cycle in 1..=2 {
            sink.commit(
                vec![ints(cycle)],
                &Marks::from([("cycle".to_string(), cycle)]),
            )
            .await
            .unwrap();
        }
        let number: ArrayRef = Arc::new(Float64Array::from(vec![3.5]));
        let widened = RecordBatch::try_from_iter([("v", number)]).unwrap();
        sink.commit(vec![widened], &Marks::from([("cycle".to_string(), 3)]))
            .await
            .unwrap();
        sink.finish_compaction(true).await;
        let table = open_table(&dir.display().to_string(), &HashMap::new())
            .await
            .unwrap();
        assert_eq!(count_rows(&table).await, 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Two commits of one row, the second with a column more; compacted after two files.
    #[tokio::test]
    async fn a_table_whose_schema_grew_is_compacted_with_its_rows_and_marks() {
        use arrow::array::{Float64Array, StringArray};
        let dir = std::env::temp_dir().join(format!("stratus-compact-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut sink = DeltaSink::open(DeltaSinkConfig {
            location: dir.display().to_string(),
            partition_columns: Vec::new(),
            pipeline: "p".into(),
            checkpoint_interval: 0,
            compact_after_files: 2,
            storage_options: HashMap::new(),
            vacuum: None,
        })
        .await
        .unwrap();
        let key: ArrayRef = Arc::new(StringArray::from(vec!["a"]));
        let value: ArrayRef = Arc::new(Float64Array::from(vec![1.0]));
        let first = RecordBatch::try_from_iter([("key", key.clone())]).unwrap();
        let second = RecordBatch::try_from_iter([("key", key), ("value", value)]).unwrap();
        sink.commit(vec![first], &Marks::from([("cycle".to_string(), 1)]))
            .await
            .unwrap();
        assert_eq!(sink.file_count(), 1);
        sink.commit(vec![second], &Marks::from([("cycle".to_string(), 2)]))
            .await
            .unwrap();
        sink.finish_compaction(true).await;
        sink.table.update_state().await.unwrap();
        assert_eq!(
            sink.file_count(),
            1,
            "the two files were compacted into one"
        );
        assert_eq!(sink.mark("cycle").await.unwrap(), Some(2));
        let reopened = open_table(&dir.display().to_string(), &HashMap::new())
            .await
            .unwrap();
        let files = reopened.snapshot().unwrap().log_data().num_files();
        assert_eq!(files, 1, "as the table is read anew");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
