//! The window operator: assigns rows to event-time windows, keeps them until the watermark
//! closes the window, then runs the stage's SQL over each closed window.
//!
//! In: batches of one input (a source or a stage) that carry the event-time column, and
//! watermarks. Out, from [`WindowOperator::process`]: the rows that arrived too late for every
//! window they belong to (the late side output — never dropped silently); from
//! [`WindowOperator::advance`]: result batches — the SQL's columns plus `revision` (0 for the
//! first result of a window, then 1, 2, ... for updates) and `is_update`.
//!
//! Lateness: a window `[start, end)` first fires when the watermark reaches `end`. Its rows stay
//! until the watermark reaches `end + allowed_lateness`; a row that arrives in between is added
//! and the window fires again, as an update, for the keys that row touched. A row whose every
//! window is past `end + allowed_lateness` goes to the late output.
//!
//! State, for a tumbling or hopping window whose query is one aggregation over its rows (see
//! [`SplitQuery`]): per group, the aggregates' partial state — a count and a sum for `avg`, the
//! values alone for an exact percentile or median — merged as rows arrive, and finished when
//! the window fires; so memory grows with the keys, not the events. Otherwise (sessions, a
//! `replace_by`, an upstream window stage's revisions, or a query of another shape): the raw
//! rows of the open windows (`size + lateness` of event time, per window for hop), of the input
//! columns the SQL reads ([`WindowedQuery::reads`]), the event time and the keys. The late
//! output carries whole events.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Int32Array, Int64Array, RecordBatch, TimestampMicrosecondArray,
    UInt32Array, new_null_array,
};
use arrow::compute::{concat_batches, filter_record_batch, take_record_batch};
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use arrow::row::{OwnedRow, RowConverter, SortField};
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;

use super::spec::{WindowSpec, WindowedQuery};
use crate::operator::{self, Collector, Context, Operator, OperatorError, OperatorState, Snapshot};
use crate::sql::compiled::CompiledQuery;
use crate::sql::split::SplitQuery;

/// Why the operator failed.
#[derive(Debug, thiserror::Error)]
pub enum WindowError {
    #[error("window stage over `{input}`: {message}")]
    Input { input: String, message: String },
    #[error("window stage SQL: {0}")]
    Sql(#[from] DataFusionError),
    #[error("window stage: {0}")]
    Arrow(#[from] ArrowError),
}

struct TumbleState {
    /// Raw rows: those of a stage that keeps them, or (until the next firing or batch turns
    /// them into states) those restored from a checkpoint taken when it did.
    rows: Vec<RecordBatch>,
    /// How many of `rows` the last checkpoint holds (an incremental one adds the rest).
    saved: usize,
    /// The window keeps, per group, the aggregates' partial state of the rows added (see
    /// [`SplitQuery`]) instead of the rows.
    partial: bool,
    /// Those states, in batches that [`COMPACT_AT`] of them merge into one.
    states: Vec<RecordBatch>,
    /// How many of `states` the last checkpoint holds.
    states_saved: usize,
    /// The revision of the last result emitted, if any.
    emitted: Option<i32>,
    /// Keys touched by rows that arrived after the window first fired.
    dirty: HashSet<OwnedRow>,
    /// Rows added as partial aggregates this run (not for a window restored from a
    /// checkpoint): at its first firing, whether the stream is still dense.
    rows_in: Option<usize>,
    /// Without key columns the window is one group: any late row dirties all of it.
    dirty_all: bool,
}

impl TumbleState {
    fn new(emitted: Option<i32>, partial: bool) -> Self {
        TumbleState {
            rows: Vec::new(),
            saved: 0,
            partial,
            states: Vec::new(),
            states_saved: 0,
            emitted,
            dirty: HashSet::new(),
            dirty_all: false,
            rows_in: Some(0),
        }
    }

    /// A window restored from a checkpoint: the rows that made it are not known.
    fn restored(emitted: Option<i32>, partial: bool) -> Self {
        TumbleState {
            rows_in: None,
            ..TumbleState::new(emitted, partial)
        }
    }

    fn is_dirty(&self) -> bool {
        self.dirty_all || !self.dirty.is_empty()
    }
}

/// A window of raw rows that fired with at least this many rows per group (per result row)
/// says the stream is dense: new windows keep partial aggregates. Below it, partial
/// aggregation costs more than it saves (a point per key and window: measured in
/// `BENCHMARKS.md`).
const DENSE_ROWS_PER_GROUP: usize = 4;

/// A window's state batches not yet in a checkpoint are merged into one once there are this
/// many (those a checkpoint holds stay as they are, so incremental checkpoints go on).
const COMPACT_AT: usize = 8;
/// All of a window's state batches are merged into one once there are this many.
const MERGE_ALL_AT: usize = 16;

/// The stage's query in phases, for windows that keep partial aggregates.
struct Split {
    query: SplitQuery,
    /// The query's [`fingerprint`](SplitQuery::fingerprint) and the window's span: what the
    /// states a checkpoint holds must have been made by.
    made_by: String,
    /// Over the state rows' group columns: a late row's groups, to update only those.
    groups: RowConverter,
}

/// One aggregating SQL stage over event-time windows.
pub struct WindowOperator {
    query: WindowedQuery,
    spec: WindowSpec,
    event_time: String,
    lateness: i64,
    ctx: SessionContext,
    /// The input's columns, as batches arrive.
    source_fields: Fields,
    /// The input columns buffered, when not all: those the SQL reads, the event time and what
    /// the operator itself needs (keys, an upstream's group columns and revision).
    projection: Option<Vec<usize>>,
    /// The buffered rows' schema: the input, projected.
    input_schema: SchemaRef,
    /// What the SQL reads: see [`windowed_schema`].
    windowed_schema: SchemaRef,
    kept_columns: Vec<usize>,
    /// When the input is another window stage: its group columns (with `window_start`), to keep
    /// only the latest revision of each upstream result.
    upstream_groups: Option<(Vec<usize>, usize, RowConverter)>,
    /// Columns whose value identifies a row that a later row replaces (a restated billing
    /// line item): of rows with equal values, only the last to arrive counts.
    replace_by: Option<(Vec<usize>, RowConverter)>,
    keys: Vec<usize>,
    converter: Option<RowConverter>,
    watermark: i64,
    /// Tumble and hop: window start → state.
    windows: BTreeMap<i64, TumbleState>,
    /// Session: buffered rows, each with the revision it was last emitted in (-1: never).
    sessions: Vec<(RecordBatch, Int32Array)>,
    /// The SQL, planned over the windowed schema (see [`compile`](Self::compile)).
    plan: Option<CompiledQuery>,
    /// Set when the plan was made, for a stage whose windows can keep partial aggregates.
    split: Option<Split>,
    /// Its windows hold many rows per group (as measured at the last first firing of a window
    /// of raw rows): new windows keep partial aggregates.
    dense: bool,
    /// State batches a checkpoint held were merged or replaced since: the next one is whole.
    rewritten: bool,
    /// Restored state was checked against the query, and restored rows turned into states.
    settled: bool,
}

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// Columns a window stage adds to its output; an input that already has them (a window stage
/// reading another one) has them replaced.
pub const WINDOW_COLUMNS: [&str; 4] = ["window_start", "window_end", "revision", "is_update"];

/// The schema SQL sees for a window stage: the input's columns except [`WINDOW_COLUMNS`], then
/// this stage's `window_start` and `window_end`. Also returns the kept input column indices.
pub fn windowed_schema(input: &Schema) -> (SchemaRef, Vec<usize>) {
    let kept: Vec<usize> = (0..input.fields().len())
        .filter(|&i| !WINDOW_COLUMNS.contains(&input.field(i).name().as_str()))
        .collect();
    let mut fields: Vec<Arc<Field>> = kept.iter().map(|&i| input.fields()[i].clone()).collect();
    fields.push(Arc::new(Field::new("window_start", ts_type(), false)));
    fields.push(Arc::new(Field::new("window_end", ts_type(), false)));
    (Arc::new(Schema::new(fields)), kept)
}

impl WindowOperator {
    /// `ctx` carries the functions the SQL may call; `input_schema` is the input's schema.
    /// `upstream_keys` names the group columns of an upstream window stage (with
    /// `window_start`), when the input is one: its updates then replace its earlier results.
    pub fn new(
        query: WindowedQuery,
        event_time: &str,
        allowed_lateness: i64,
        input_schema: SchemaRef,
        ctx: SessionContext,
        upstream_keys: Option<Vec<String>>,
    ) -> Result<Self, WindowError> {
        let input_err = |message: String| WindowError::Input {
            input: query.input.clone(),
            message,
        };
        let spec = query
            .window
            .ok_or_else(|| input_err("the query has no window in GROUP BY".into()))?;
        let source_fields = input_schema.fields().clone();
        let projection = query.reads.as_ref().map(|reads| {
            let mut wanted: HashSet<&str> = reads.iter().map(String::as_str).collect();
            wanted.insert(event_time);
            wanted.extend(query.keys.iter().map(String::as_str));
            if let Some(names) = &upstream_keys {
                wanted.extend(names.iter().map(String::as_str));
                wanted.insert("revision");
            }
            (0..source_fields.len())
                .filter(|&i| wanted.contains(source_fields[i].name().as_str()))
                .collect::<Vec<_>>()
        });
        let projection = projection.filter(|p| p.len() < source_fields.len());
        let input_schema = match &projection {
            Some(p) => Arc::new(input_schema.project(p)?),
            None => input_schema,
        };
        match input_schema.field_with_name(event_time) {
            Ok(f) if matches!(f.data_type(), DataType::Timestamp(TimeUnit::Microsecond, _)) => {}
            Ok(f) => {
                return Err(input_err(format!(
                    "event-time column `{event_time}` is {}, not a timestamp",
                    f.data_type()
                )));
            }
            Err(_) => {
                return Err(input_err(format!(
                    "event-time column `{event_time}` is not in the input"
                )));
            }
        }
        let keys = query
            .keys
            .iter()
            .map(|k| {
                input_schema
                    .index_of(k)
                    .map_err(|_| input_err(format!("GROUP BY column `{k}` is not in the input")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let converter = if keys.is_empty() {
            None
        } else {
            Some(RowConverter::new(
                keys.iter()
                    .map(|&i| SortField::new(input_schema.field(i).data_type().clone()))
                    .collect(),
            )?)
        };
        let (windowed_schema, kept_columns) = windowed_schema(&input_schema);
        let upstream_groups = match (upstream_keys, input_schema.index_of("revision")) {
            (Some(names), Ok(revision)) => {
                let idx = names
                    .iter()
                    .map(|k| {
                        input_schema.index_of(k).map_err(|_| {
                            input_err(format!("upstream group column `{k}` is not in the input"))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let converter = RowConverter::new(
                    idx.iter()
                        .map(|&i| SortField::new(input_schema.field(i).data_type().clone()))
                        .collect(),
                )?;
                Some((idx, revision, converter))
            }
            _ => None,
        };
        Ok(WindowOperator {
            spec,
            event_time: event_time.to_string(),
            lateness: allowed_lateness.max(0),
            ctx,
            source_fields,
            projection,
            windowed_schema,
            kept_columns,
            upstream_groups,
            replace_by: None,
            input_schema,
            keys,
            converter,
            watermark: i64::MIN,
            windows: BTreeMap::new(),
            sessions: Vec::new(),
            plan: None,
            split: None,
            dense: false,
            rewritten: false,
            settled: true,
            query,
        })
    }

    /// Of rows with equal values in `columns`, only the last to arrive counts in a window: a
    /// restatement replaces what it restates (and, after the window fired, updates it).
    pub fn with_replace_by(mut self, columns: &[String]) -> Result<Self, WindowError> {
        if columns.is_empty() {
            return Ok(self);
        }
        let idx = columns
            .iter()
            .map(|c| {
                self.input_schema
                    .index_of(c)
                    .map_err(|_| WindowError::Input {
                        input: self.query.input.clone(),
                        message: format!("replace_by column `{c}` is not in the input"),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let converter = RowConverter::new(
            idx.iter()
                .map(|&i| SortField::new(self.input_schema.field(i).data_type().clone()))
                .collect(),
        )?;
        self.replace_by = Some((idx, converter));
        Ok(self)
    }

    /// The current watermark of this operator.
    pub fn watermark(&self) -> i64 {
        self.watermark
    }

    /// Rows held in open windows: raw rows, or per group the aggregates' states.
    pub fn buffered_rows(&self) -> usize {
        let tumbling: usize = self
            .windows
            .values()
            .flat_map(|w| w.rows.iter().chain(&w.states).map(RecordBatch::num_rows))
            .sum();
        tumbling
            + self
                .sessions
                .iter()
                .map(|(b, _)| b.num_rows())
                .sum::<usize>()
    }

    /// The operator's state as batches, for a checkpoint: every buffered row (input columns),
    /// or for a stage whose windows keep partial aggregates every state row, with
    /// [`STATE_WINDOW`] (the window start; 0 for sessions) and [`STATE_REVISION`] (the
    /// revision last emitted for it, -1 for none). Taken after [`advance`](Self::advance), when
    /// no window holds unfired updates. The batches share the buffered rows' memory (only the
    /// two tag columns are new), so a snapshot costs no copy of the state; at least one batch.
    pub fn snapshot(&self) -> Result<Vec<RecordBatch>, WindowError> {
        self.tagged(Kept::Rows, false)
    }

    /// The windows' partial aggregates, tagged as [`snapshot`](Self::snapshot) tags rows
    /// (all, or only those not in a checkpoint yet); none for a stage that keeps only rows.
    pub fn state_snapshot(&self, only_new: bool) -> Result<Vec<RecordBatch>, WindowError> {
        match &self.split {
            Some(split) => self.tagged(Kept::States(split), only_new),
            None => Ok(Vec::new()),
        }
    }

    /// For an incremental checkpoint: the rows (or state rows) buffered since the last one, as
    /// [`snapshot`](Self::snapshot) gives them, with sessions whole (their rows merge and
    /// split). From now on the checkpoint holds every buffered row.
    pub fn changes(&mut self) -> Result<(Vec<RecordBatch>, Vec<RecordBatch>), WindowError> {
        let rows = self.tagged(Kept::Rows, true)?;
        let states = self.state_snapshot(true)?;
        self.saved();
        Ok((rows, states))
    }

    /// Counts every buffered row as checkpointed.
    pub fn saved(&mut self) {
        for w in self.windows.values_mut() {
            w.saved = w.rows.len();
            w.states_saved = w.states.len();
        }
        self.rewritten = false;
    }

    /// Every tumbling or hopping window not yet closed, with the revision last emitted for it
    /// (-1 for none): what an incremental checkpoint's rows are restored against.
    pub fn open_windows(&self) -> Vec<(i64, i32)> {
        self.windows
            .iter()
            .map(|(&start, w)| (start, w.emitted.unwrap_or(-1)))
            .collect()
    }

    /// After [`restore`](Self::restore) from the rows of incremental checkpoints: keeps the
    /// windows of `open` (the others closed since those rows were buffered), each with its
    /// revision there.
    pub fn restore_open(&mut self, open: &[(i64, i32)]) {
        let open: HashMap<i64, i32> = open.iter().copied().collect();
        self.windows.retain(|start, w| match open.get(start) {
            Some(&revision) => {
                w.emitted = (revision >= 0).then_some(revision);
                true
            }
            None => false,
        });
    }

    /// The buffered rows or state rows tagged for a checkpoint: all, or (`only_new`) those of
    /// tumbling and hopping windows not yet in one, and every session's.
    fn tagged(&self, kept: Kept<'_>, only_new: bool) -> Result<Vec<RecordBatch>, WindowError> {
        let schema = match kept {
            Kept::Rows => state_schema(&self.input_schema),
            Kept::States(split) => states_schema(split),
        };
        let mut parts = Vec::new();
        let tag = |b: &RecordBatch, window: i64, revisions: ArrayRef| {
            let mut columns = b.columns().to_vec();
            columns.push(Arc::new(Int64Array::from(vec![window; b.num_rows()])));
            columns.push(revisions);
            RecordBatch::try_new(schema.clone(), columns)
        };
        for (&start, w) in &self.windows {
            let revision = w.emitted.unwrap_or(-1);
            let (batches, saved) = match kept {
                Kept::Rows => (&w.rows, w.saved),
                Kept::States(_) => (&w.states, w.states_saved),
            };
            let from = if only_new { saved } else { 0 };
            for b in batches.iter().skip(from) {
                parts.push(tag(
                    b,
                    start,
                    Arc::new(Int32Array::from(vec![revision; b.num_rows()])),
                )?);
            }
        }
        if let Kept::Rows = kept {
            for (b, revisions) in &self.sessions {
                parts.push(tag(b, 0, Arc::new(revisions.clone()))?);
            }
        }
        if parts.is_empty() {
            parts.push(RecordBatch::new_empty(schema));
        }
        Ok(parts)
    }

    /// Restores what [`snapshot`](Self::snapshot) took, with the watermark of that moment:
    /// buffered rows, or state rows (told apart by their columns; a stage that keeps states
    /// turns restored rows into states at its next batch or firing).
    pub fn restore(&mut self, state: &[RecordBatch], watermark: i64) -> Result<(), WindowError> {
        self.watermark = watermark;
        self.windows.clear();
        self.sessions.clear();
        // Checked against the query at the next batch or firing; the first checkpoint after a
        // restore starts a chain of its own (the restored one may hold states of another
        // query, for windows closed since).
        self.settled = false;
        self.rewritten = true;
        let is_states = |b: &RecordBatch| b.schema().metadata().contains_key(PARTIAL_AGGREGATES);
        let (states, rows): (Vec<RecordBatch>, Vec<RecordBatch>) = state
            .iter()
            .filter(|b| b.num_rows() > 0)
            .cloned()
            .partition(is_states);
        self.restore_rows(&rows)?;
        if states.is_empty() {
            return Ok(());
        }
        if let WindowSpec::Session { .. } = self.spec {
            return Err(self.restored_states_unusable());
        }
        // Of one query's aggregates, or (a chain across a change of the SQL) of several.
        let mut by_schema: Vec<(SchemaRef, Vec<RecordBatch>)> = Vec::new();
        for b in states {
            match by_schema.iter_mut().find(|(s, _)| s == b.schema_ref()) {
                Some((_, batches)) => batches.push(b),
                None => by_schema.push((b.schema(), vec![b])),
            }
        }
        for (schema, batches) in by_schema {
            self.restore_states(&concat_batches(&schema, &batches)?)?;
        }
        Ok(())
    }

    /// Restores checkpointed partial aggregates (tagged with their windows) into the windows.
    fn restore_states(&mut self, states: &RecordBatch) -> Result<(), WindowError> {
        let n = states.num_columns() - 2;
        let rows = states.project(&(0..n).collect::<Vec<_>>())?;
        let windows = per_window(states, n).map_err(|message| WindowError::Input {
            input: self.query.input.clone(),
            message: format!("checkpointed state: {message}"),
        })?;
        for (start, revision, indices) in windows {
            let w = self.windows.entry(start).or_insert_with(|| {
                TumbleState::restored((revision >= 0).then_some(revision), true)
            });
            w.partial = true;
            w.states
                .push(take_record_batch(&rows, &UInt32Array::from(indices))?);
            w.states_saved = w.states.len();
        }
        Ok(())
    }

    /// A restore whose state rows this stage's query cannot finish.
    fn restored_states_unusable(&self) -> WindowError {
        WindowError::Input {
            input: self.query.input.clone(),
            message: "checkpointed state: it holds partial aggregates of a query other than the \
                      stage's SQL now; undo the SQL change until the open windows have closed \
                      (their size plus the allowed lateness of event time), then make it again \
                      (after an upgrade of Stratus that plans it otherwise: run the version \
                      before until then)"
                .into(),
        }
    }

    /// Restores buffered raw rows.
    fn restore_rows(&mut self, state: &[RecordBatch]) -> Result<(), WindowError> {
        let bad = |message: String| WindowError::Input {
            input: self.query.input.clone(),
            message: format!("checkpointed state: {message}"),
        };
        let schema = state_schema(&self.input_schema);
        // The buffered columns follow what the SQL reads. A checkpoint from before it read
        // fewer columns holds more: those are dropped. One from before it read a column holds
        // none of it: a nullable column is null in the rows buffered then (as a Delta table
        // reads a column added later), one that cannot be null stops the restore.
        let mut absent: Vec<String> = Vec::new();
        let mut narrowed = |b: &RecordBatch| -> Result<RecordBatch, WindowError> {
            let given = b.schema();
            let mut columns = Vec::with_capacity(schema.fields().len());
            for f in schema.fields() {
                match given.index_of(f.name()) {
                    Ok(i) if given.field(i).data_type() == f.data_type() => {
                        columns.push(b.column(i).clone())
                    }
                    // A map whose entries were named otherwise when it was checkpointed, or an
                    // integer the schema has widened to a number since.
                    Ok(i)
                        if matches!(
                            (given.field(i).data_type(), f.data_type()),
                            (DataType::Map(..), DataType::Map(..))
                                | (DataType::Int64 | DataType::Int32, DataType::Float64)
                        ) =>
                    {
                        let cast = arrow::compute::cast(b.column(i), f.data_type())
                            .map_err(|e| bad(format!("column `{}`: {e}", f.name())))?;
                        columns.push(cast)
                    }
                    Err(_) if f.is_nullable() => {
                        if !absent.contains(f.name()) {
                            absent.push(f.name().clone());
                        }
                        columns.push(new_null_array(f.data_type(), b.num_rows()));
                    }
                    _ => {
                        return Err(bad(format!(
                            "it has no column `{}` of type {} (the stage's SQL reads it now); \
                             undo the SQL change until the open windows have closed (their size \
                             plus the allowed lateness of event time), then make it again",
                            f.name(),
                            f.data_type()
                        )));
                    }
                }
            }
            Ok(RecordBatch::try_new(schema.clone(), columns)?)
        };
        let state = state
            .iter()
            .map(&mut narrowed)
            .collect::<Result<Vec<_>, _>>()?;
        if !absent.is_empty() {
            tracing::warn!(
                input = %self.query.input,
                "checkpointed window rows lack {absent:?}, which the stage's SQL reads now; \
                 they are null in the rows buffered before"
            );
        }
        let state = &concat_batches(&schema, &state)?;
        let n = self.input_schema.fields().len();
        let rows = state.project(&(0..n).collect::<Vec<_>>())?;
        if let WindowSpec::Session { .. } = self.spec {
            let Some(revisions) = state.column(n + 1).as_any().downcast_ref::<Int32Array>() else {
                return Err(bad("the revision column has the wrong type".into()));
            };
            if rows.num_rows() > 0 {
                self.sessions.push((rows, revisions.clone()));
            }
            return Ok(());
        }
        for (start, revision, indices) in per_window(state, n).map_err(bad)? {
            let mut w = TumbleState::restored((revision >= 0).then_some(revision), false);
            w.rows = vec![take_record_batch(&rows, &UInt32Array::from(indices))?];
            w.saved = 1;
            self.windows.insert(start, w);
        }
        Ok(())
    }

    fn event_times<'a>(
        &self,
        batch: &'a RecordBatch,
    ) -> Result<&'a TimestampMicrosecondArray, WindowError> {
        batch
            .column_by_name(&self.event_time)
            .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
            .ok_or_else(|| WindowError::Input {
                input: self.query.input.clone(),
                message: format!("batch has no timestamp column `{}`", self.event_time),
            })
    }

    fn key_rows(&self, batch: &RecordBatch) -> Result<Option<arrow::row::Rows>, WindowError> {
        match &self.converter {
            None => Ok(None),
            Some(c) => {
                let cols: Vec<ArrayRef> =
                    self.keys.iter().map(|&i| batch.column(i).clone()).collect();
                Ok(Some(c.convert_columns(&cols)?))
            }
        }
    }

    /// Adds a batch; returns the rows that are too late for every window they belong to.
    pub async fn process(
        &mut self,
        input: &RecordBatch,
    ) -> Result<Option<RecordBatch>, WindowError> {
        self.settle().await?;
        if input.schema().fields() != &self.source_fields {
            return Err(WindowError::Input {
                input: self.query.input.clone(),
                message: "batch schema differs from the input schema".into(),
            });
        }
        let projected;
        let batch = match &self.projection {
            Some(p) => {
                projected = input.project(p)?;
                &projected
            }
            None => input,
        };
        let ts = self.event_times(batch)?;
        let mut late: Vec<u32> = Vec::new();
        match self.spec {
            WindowSpec::Session { gap } => {
                let mut keep = Vec::with_capacity(batch.num_rows());
                for (i, t) in ts.iter().enumerate() {
                    let too_late = t.is_none_or(|t| {
                        t.saturating_add(gap).saturating_add(self.lateness) <= self.watermark
                    });
                    if too_late {
                        late.push(i as u32);
                    }
                    keep.push(!too_late);
                }
                let kept = filter_record_batch(batch, &BooleanArray::from(keep))?;
                if kept.num_rows() > 0 {
                    let revisions = Int32Array::from(vec![-1; kept.num_rows()]);
                    self.sessions.push((kept, revisions));
                }
            }
            WindowSpec::Tumble { size } | WindowSpec::Hop { size, .. } => {
                let slide = match self.spec {
                    WindowSpec::Hop { slide, .. } => slide,
                    _ => size,
                };
                let mut per_window: HashMap<i64, Vec<u32>> = HashMap::new();
                for (i, t) in ts.iter().enumerate() {
                    let Some(t) = t else {
                        late.push(i as u32);
                        continue;
                    };
                    let mut start = t - t.rem_euclid(slide);
                    let mut placed = false;
                    while start.saturating_add(size) > t {
                        let end = start.saturating_add(size);
                        if end.saturating_add(self.lateness) > self.watermark {
                            per_window.entry(start).or_default().push(i as u32);
                            placed = true;
                        }
                        start -= slide;
                    }
                    if !placed {
                        late.push(i as u32);
                    }
                }
                let mut windowed = Vec::new();
                let mut counted = Vec::new();
                let partial_now = self.dense && self.split.is_some();
                for (start, indices) in per_window {
                    let rows = take_record_batch(batch, &UInt32Array::from(indices))?;
                    let partial = self.windows.get(&start).map_or(partial_now, |w| w.partial);
                    if partial {
                        counted.push((start, rows.num_rows()));
                        windowed.push(self.with_window(
                            &rows,
                            start,
                            start.saturating_add(size),
                        )?);
                        continue;
                    }
                    let dirty_keys = match self.windows.get(&start) {
                        Some(w) if w.emitted.is_some() => self.key_rows(&rows)?,
                        _ => None,
                    };
                    let window = self
                        .windows
                        .entry(start)
                        .or_insert_with(|| TumbleState::new(None, false));
                    if window.emitted.is_some() {
                        match dirty_keys {
                            Some(keys) => window.dirty.extend(keys.iter().map(|r| r.owned())),
                            None => window.dirty_all = true,
                        }
                    }
                    window.rows.push(rows);
                }
                self.add_states(windowed).await?;
                for (start, n) in counted {
                    if let Some(rows_in) = self
                        .windows
                        .get_mut(&start)
                        .and_then(|w| w.rows_in.as_mut())
                    {
                        *rows_in += n;
                    }
                }
            }
        }
        if late.is_empty() {
            Ok(None)
        } else {
            // The late output keeps every column of the input.
            Ok(Some(take_record_batch(input, &UInt32Array::from(late))?))
        }
    }

    /// Adds `rows` (of the windowed schema, each with its window's columns) to their windows'
    /// partial aggregates, in one run of the partial phase; a window that fired has the groups
    /// they touch updated at its next firing. Merges the batches a window gained since its last
    /// checkpoint once there are [`COMPACT_AT`] of them, and all its batches once there are
    /// [`MERGE_ALL_AT`] (its next checkpoint is then whole).
    async fn add_states(&mut self, rows: Vec<RecordBatch>) -> Result<(), WindowError> {
        let Some(split) = &self.split else {
            return Ok(());
        };
        if rows.is_empty() {
            return Ok(());
        }
        let states = split.query.partial(rows).await?;
        let starts = split.query.state_schema().index_of("window_start")?;
        for b in &states {
            let column = b.column(starts);
            let Some(at) = column.as_any().downcast_ref::<TimestampMicrosecondArray>() else {
                return Err(WindowError::Input {
                    input: self.query.input.clone(),
                    message: "the partial aggregates' `window_start` is not a timestamp".into(),
                });
            };
            let mut per_window: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
            for (i, start) in at.values().iter().enumerate() {
                per_window.entry(*start).or_default().push(i as u32);
            }
            for (start, indices) in per_window {
                let part = take_record_batch(b, &UInt32Array::from(indices))?;
                let window = self
                    .windows
                    .entry(start)
                    .or_insert_with(|| TumbleState::new(None, true));
                if window.emitted.is_some() {
                    let groups = split
                        .groups
                        .convert_columns(&part.columns()[..split.query.groups()])?;
                    window.dirty.extend(groups.iter().map(|r| r.owned()));
                }
                window.states.push(part);
            }
        }
        for window in self.windows.values_mut() {
            let from = if window.states.len() >= MERGE_ALL_AT {
                0
            } else if window.states.len() - window.states_saved >= COMPACT_AT {
                window.states_saved
            } else {
                continue;
            };
            let merged = split.query.reduce(window.states.split_off(from)).await?;
            if let Some(first) = merged.first() {
                window
                    .states
                    .push(concat_batches(&first.schema(), &merged)?);
            }
            if from < window.states_saved {
                window.states_saved = 0;
                self.rewritten = true;
            }
        }
        Ok(())
    }

    /// Plans the query if it is not yet; then, once after a restore, refuses restored partial
    /// aggregates its query cannot finish, and turns raw rows restored into a window that
    /// keeps partial aggregates into those.
    async fn settle(&mut self) -> Result<(), WindowError> {
        self.compile().await?;
        if self.settled {
            return Ok(());
        }
        let expected = self.split.as_ref().map(states_schema);
        let unusable = self.windows.values().any(|w| {
            w.states.iter().any(|b| {
                expected.as_ref().is_none_or(|e| {
                    let made_by = |s: &Schema| s.metadata().get(PARTIAL_AGGREGATES).cloned();
                    let by = made_by(b.schema_ref());
                    // (Checkpoints of the first version say only "true".)
                    (by.as_deref() != Some("true") && by != made_by(e))
                        || e.fields().len() != b.num_columns() + 2
                        || e.fields()
                            .iter()
                            .zip(b.schema().fields())
                            .any(|(a, b)| a.name() != b.name() || a.data_type() != b.data_type())
                })
            })
        });
        if unusable {
            return Err(self.restored_states_unusable());
        }
        let Some(split) = &self.split else {
            self.settled = true;
            return Ok(());
        };
        let end_of = |start: i64| start.saturating_add(self.spec.span());
        let restored: Vec<(i64, Vec<RecordBatch>)> = self
            .windows
            .iter_mut()
            .filter(|(_, w)| w.partial && !w.rows.is_empty())
            .map(|(&start, w)| {
                w.saved = 0;
                (start, std::mem::take(&mut w.rows))
            })
            .collect();
        for (start, rows) in restored {
            let windowed = rows
                .iter()
                .map(|b| self.with_window(b, start, end_of(start)))
                .collect::<Result<Vec<_>, _>>()?;
            let states = split.query.partial(windowed).await?;
            if let Some(w) = self.windows.get_mut(&start) {
                w.states.extend(states);
            }
            self.rewritten = true;
        }
        self.settled = true;
        Ok(())
    }

    /// Moves the watermark to `watermark` (never backwards) and returns the results of the
    /// windows that closed, and the updates of closed windows that received late rows.
    pub async fn advance(&mut self, watermark: i64) -> Result<Vec<RecordBatch>, WindowError> {
        self.settle().await?;
        self.watermark = self.watermark.max(watermark);
        // revision → rows with their window columns, to run through the SQL together; and
        // revision → partial aggregates, to finish together.
        let mut groups: BTreeMap<i32, Vec<RecordBatch>> = BTreeMap::new();
        let mut state_groups: BTreeMap<i32, Vec<RecordBatch>> = BTreeMap::new();
        let mut states_rows_in = None;
        match self.spec {
            WindowSpec::Session { gap } => self.close_sessions(gap, &mut groups)?,
            WindowSpec::Tumble { size } | WindowSpec::Hop { size, .. } => {
                states_rows_in = self.close_windows(size, &mut groups, &mut state_groups)?
            }
        }
        // One batch per revision, windows of rows and of states together: what reads the
        // results (a carry) takes each batch's windows in order of their start.
        let revisions: BTreeSet<i32> = groups.keys().chain(state_groups.keys()).copied().collect();
        let mut out = Vec::new();
        for revision in revisions {
            let mut results = Vec::new();
            if let Some(batches) = groups.remove(&revision)
                && batches.iter().any(|b| b.num_rows() > 0)
            {
                let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
                let fired = self.run_sql(batches).await?;
                if revision == 0 && self.split.is_some() {
                    // Rows per result (per group) of windows that fired for the first time:
                    // where each group has several, new windows keep partial aggregates.
                    let n: usize = fired.iter().map(RecordBatch::num_rows).sum();
                    self.dense = rows >= DENSE_ROWS_PER_GROUP * n.max(1);
                }
                results.extend(fired);
            }
            if let (Some(states), Some(split)) = (state_groups.remove(&revision), &self.split)
                && states.iter().any(|b| b.num_rows() > 0)
            {
                let fired = split.query.finish(states).await?;
                if let (0, Some(rows)) = (revision, states_rows_in) {
                    // The same measure over windows of partial aggregates: a stream that
                    // turned sparse goes back to rows.
                    let n: usize = fired.iter().map(RecordBatch::num_rows).sum();
                    self.dense = rows >= DENSE_ROWS_PER_GROUP * n.max(1);
                }
                results.extend(fired);
            }
            let Some(first) = results.first() else {
                continue;
            };
            let schema = first.schema();
            let results = results
                .into_iter()
                .map(|b| RecordBatch::try_new(schema.clone(), b.columns().to_vec()))
                .collect::<Result<Vec<_>, _>>()?;
            out.push(with_revision(concat_batches(&schema, &results)?, revision)?);
        }
        Ok(out)
    }

    /// Moves the rows and states of the windows the watermark closes (or revises) into
    /// `groups` and `state_groups` by revision. Returns the rows that made the windows of
    /// partial aggregates firing for the first time, where all of them were made this run.
    fn close_windows(
        &mut self,
        size: i64,
        groups: &mut BTreeMap<i32, Vec<RecordBatch>>,
        state_groups: &mut BTreeMap<i32, Vec<RecordBatch>>,
    ) -> Result<Option<usize>, WindowError> {
        let watermark = self.watermark;
        let mut first_fired: Option<Option<usize>> = None;
        let mut finished = Vec::new();
        let starts: Vec<i64> = self
            .windows
            .range(..watermark.saturating_sub(size).saturating_add(1))
            .map(|(s, _)| *s)
            .collect();
        for start in starts {
            let end = start.saturating_add(size);
            let Some(window) = self.windows.get(&start) else {
                continue;
            };
            if let (true, Some(split)) = (window.partial, &self.split) {
                let revision = match window.emitted {
                    None => 0,
                    Some(r) if window.is_dirty() => r + 1,
                    Some(_) => -1,
                };
                if revision >= 0 {
                    let states = match window.emitted {
                        None => {
                            let known = first_fired.unwrap_or(Some(0));
                            first_fired = Some(known.zip(window.rows_in).map(|(a, b)| a + b));
                            window.states.clone()
                        }
                        Some(_) => Self::touched(split, window)?,
                    };
                    state_groups.entry(revision).or_default().extend(states);
                    if let Some(w) = self.windows.get_mut(&start) {
                        w.emitted = Some(revision);
                        w.dirty.clear();
                    }
                }
                if end.saturating_add(self.lateness) <= watermark {
                    finished.push(start);
                }
                continue;
            }
            let (revision, rows) = match window.emitted {
                None => (0, window.rows.clone()),
                Some(r) if window.dirty_all => (r + 1, window.rows.clone()),
                Some(r) if window.is_dirty() => {
                    let mut touched = Vec::new();
                    for b in &window.rows {
                        if let Some(keys) = self.key_rows(b)? {
                            let mask: BooleanArray = keys
                                .iter()
                                .map(|k| Some(window.dirty.contains(&k.owned())))
                                .collect();
                            touched.push(filter_record_batch(b, &mask)?);
                        }
                    }
                    (r + 1, touched)
                }
                Some(_) => (-1, Vec::new()),
            };
            if revision >= 0 {
                let rows = self.without_replaced(self.latest_upstream(rows)?)?;
                let group = groups.entry(revision).or_default();
                for b in rows {
                    group.push(self.with_window(&b, start, end)?);
                }
                if let Some(w) = self.windows.get_mut(&start) {
                    w.emitted = Some(revision);
                    w.dirty.clear();
                    w.dirty_all = false;
                }
            }
            if end.saturating_add(self.lateness) <= watermark {
                finished.push(start);
            }
        }
        for start in finished {
            self.windows.remove(&start);
        }
        Ok(first_fired.flatten())
    }

    /// A fired window's state rows of the groups late rows touched since.
    fn touched(split: &Split, window: &TumbleState) -> Result<Vec<RecordBatch>, WindowError> {
        let mut touched = Vec::new();
        for b in &window.states {
            let groups = split
                .groups
                .convert_columns(&b.columns()[..split.query.groups()])?;
            let mask: BooleanArray = groups
                .iter()
                .map(|g| Some(window.dirty.contains(&g.owned())))
                .collect();
            touched.push(filter_record_batch(b, &mask)?);
        }
        Ok(touched)
    }

    fn close_sessions(
        &mut self,
        gap: i64,
        groups: &mut BTreeMap<i32, Vec<RecordBatch>>,
    ) -> Result<(), WindowError> {
        if self.sessions.is_empty() {
            return Ok(());
        }
        let batches: Vec<RecordBatch> = self.sessions.iter().map(|(b, _)| b.clone()).collect();
        let all = concat_batches(&self.input_schema, &batches)?;
        let revisions: Vec<i32> = self
            .sessions
            .iter()
            .flat_map(|(_, r)| r.values().iter().copied())
            .collect();
        let ts = self.event_times(&all)?.clone();
        let keys = self.key_rows(&all)?;
        let mut order: Vec<usize> = (0..all.num_rows()).collect();
        order.sort_by(|&a, &b| {
            let by_key = match &keys {
                Some(k) => k.row(a).cmp(&k.row(b)),
                None => std::cmp::Ordering::Equal,
            };
            by_key.then(ts.value(a).cmp(&ts.value(b)))
        });
        let same_key = |a: usize, b: usize| keys.as_ref().is_none_or(|k| k.row(a) == k.row(b));

        let mut keep_rows: Vec<u32> = Vec::new();
        let mut keep_revisions: Vec<i32> = Vec::new();
        let mut i = 0;
        while i < order.len() {
            // One session: consecutive rows of one key less than `gap` apart.
            let mut j = i + 1;
            while j < order.len()
                && same_key(order[i], order[j])
                && ts.value(order[j]) - ts.value(order[j - 1]) < gap
            {
                j += 1;
            }
            let members = &order[i..j];
            let start = ts.value(members[0]);
            let end = ts.value(members[members.len() - 1]).saturating_add(gap);
            let last_revision = members.iter().map(|&m| revisions[m]).max().unwrap_or(-1);
            let fresh = members.iter().any(|&m| revisions[m] < 0);
            let mut revision_now = last_revision;
            if end <= self.watermark && fresh {
                revision_now = last_revision + 1;
                let idx = UInt32Array::from(members.iter().map(|&m| m as u32).collect::<Vec<_>>());
                let rows = concat_batches(
                    &self.input_schema,
                    &self.without_replaced(vec![take_record_batch(&all, &idx)?])?,
                )?;
                groups
                    .entry(revision_now)
                    .or_default()
                    .push(self.with_window(&rows, start, end)?);
            }
            if end.saturating_add(self.lateness) > self.watermark {
                keep_rows.extend(members.iter().map(|&m| m as u32));
                keep_revisions.extend(members.iter().map(|&m| {
                    if end <= self.watermark && fresh {
                        revision_now
                    } else {
                        revisions[m]
                    }
                }));
            }
            i = j;
        }
        self.sessions.clear();
        if !keep_rows.is_empty() {
            let kept = take_record_batch(&all, &UInt32Array::from(keep_rows))?;
            self.sessions.push((kept, Int32Array::from(keep_revisions)));
        }
        Ok(())
    }

    /// Keeps, of each upstream result, only its latest revision (when the input is a window
    /// stage); otherwise returns the rows as they are.
    fn latest_upstream(&self, rows: Vec<RecordBatch>) -> Result<Vec<RecordBatch>, WindowError> {
        let Some((keys, revision, converter)) = &self.upstream_groups else {
            return Ok(rows);
        };
        // Without an update among them, every upstream result is its group's only one.
        let updated = rows.iter().any(|b| {
            b.column(*revision)
                .as_any()
                .downcast_ref::<Int32Array>()
                .is_none_or(|r| arrow::compute::max(r).is_some_and(|m| m > 0))
        });
        if !updated {
            return Ok(rows);
        }
        let all = concat_batches(&self.input_schema, &rows)?;
        let cols: Vec<ArrayRef> = keys.iter().map(|&i| all.column(i).clone()).collect();
        let groups = converter.convert_columns(&cols)?;
        let revisions = all
            .column(*revision)
            .as_any()
            .downcast_ref::<Int32Array>()
            .ok_or_else(|| WindowError::Input {
                input: self.query.input.clone(),
                message: "column `revision` is not an Int32".into(),
            })?;
        let mut latest: HashMap<arrow::row::Row<'_>, (i32, u32)> = HashMap::new();
        for (i, g) in groups.iter().enumerate() {
            let r = revisions.value(i);
            let e = latest.entry(g).or_insert((r, i as u32));
            if r >= e.0 {
                *e = (r, i as u32);
            }
        }
        let mut idx: Vec<u32> = latest.into_values().map(|(_, i)| i).collect();
        idx.sort_unstable();
        Ok(vec![take_record_batch(&all, &UInt32Array::from(idx))?])
    }

    /// Drops rows that a later row with the same `replace_by` values replaces.
    fn without_replaced(&self, rows: Vec<RecordBatch>) -> Result<Vec<RecordBatch>, WindowError> {
        let Some((columns, converter)) = &self.replace_by else {
            return Ok(rows);
        };
        if rows.is_empty() {
            return Ok(rows);
        }
        let all = concat_batches(&self.input_schema, &rows)?;
        let cols: Vec<ArrayRef> = columns.iter().map(|&i| all.column(i).clone()).collect();
        let keys = converter.convert_columns(&cols)?;
        let mut last: HashMap<arrow::row::Row<'_>, u32> = HashMap::new();
        for (i, k) in keys.iter().enumerate() {
            last.insert(k, i as u32);
        }
        let mut idx: Vec<u32> = last.into_values().collect();
        idx.sort_unstable();
        Ok(vec![take_record_batch(&all, &UInt32Array::from(idx))?])
    }

    fn with_window(
        &self,
        rows: &RecordBatch,
        start: i64,
        end: i64,
    ) -> Result<RecordBatch, WindowError> {
        let n = rows.num_rows();
        let mut columns: Vec<ArrayRef> = self
            .kept_columns
            .iter()
            .map(|&i| rows.column(i).clone())
            .collect();
        columns.push(Arc::new(
            TimestampMicrosecondArray::from(vec![start; n]).with_timezone("UTC"),
        ));
        columns.push(Arc::new(
            TimestampMicrosecondArray::from(vec![end; n]).with_timezone("UTC"),
        ));
        Ok(RecordBatch::try_new(self.windowed_schema.clone(), columns)?)
    }

    /// Plans the stage's SQL, once: every firing runs that plan over the closed windows' rows
    /// or, for a tumbling or hopping window whose rows need not be kept (no `replace_by`, no
    /// upstream revisions to replace), its final phase over their partial aggregates.
    pub async fn compile(&mut self) -> Result<(), WindowError> {
        if self.plan.is_some() {
            return Ok(());
        }
        let input = self.query.input.as_str();
        let schema = self.windowed_schema.clone();
        let plan = CompiledQuery::new(&self.ctx, input, schema, &self.query.sql).await?;
        let keeps_rows = matches!(self.spec, WindowSpec::Session { .. })
            || self.replace_by.is_some()
            || self.upstream_groups.is_some();
        let split = match keeps_rows {
            true => None,
            // The raw rows' way still works where the phases cannot be built (an aggregate
            // of a program's own that gives no state to merge, say).
            false => SplitQuery::of(&plan).unwrap_or_else(|e| {
                tracing::warn!(
                    input = %self.query.input,
                    "the stage's windows keep raw rows: its aggregation cannot be split: {e}"
                );
                None
            }),
        };
        if let Some(query) = split {
            let groups = RowConverter::new(
                query.state_schema().fields()[..query.groups()]
                    .iter()
                    .map(|f| SortField::new(f.data_type().clone()))
                    .collect(),
            )?;
            let made_by = format!("{} {}", query.fingerprint(), self.spec.span());
            self.split = Some(Split {
                query,
                groups,
                made_by,
            });
        }
        self.plan = Some(plan);
        Ok(())
    }

    /// Whether the windows can keep per-group partial aggregates rather than raw rows (they do
    /// once the stream is dense: see [`DENSE_ROWS_PER_GROUP`]).
    pub fn keeps_partial_aggregates(&self) -> bool {
        self.split.is_some()
    }

    /// Whether new windows keep partial aggregates now.
    pub fn dense(&self) -> bool {
        self.dense
    }

    /// Runs the SQL over `input`, the batches as they are (one partition, in order: the same
    /// results as over their concatenation, without that copy).
    async fn run_sql(&mut self, input: Vec<RecordBatch>) -> Result<Vec<RecordBatch>, WindowError> {
        self.compile().await?;
        match &self.plan {
            Some(plan) => Ok(plan.run(input).await?),
            None => Ok(Vec::new()),
        }
    }
}

/// What a checkpoint of a tumbling or hopping window holds.
#[derive(Clone, Copy)]
enum Kept<'a> {
    Rows,
    States(&'a Split),
}

/// The rows of a checkpoint's `state` (whose columns `n` and `n + 1` are [`STATE_WINDOW`] and
/// [`STATE_REVISION`]) per window: its start, its revision and the rows' indices.
fn per_window(state: &RecordBatch, n: usize) -> Result<Vec<(i64, i32, Vec<u32>)>, String> {
    let windows = state.column(n).as_any().downcast_ref::<Int64Array>();
    let revisions = state.column(n + 1).as_any().downcast_ref::<Int32Array>();
    let (Some(windows), Some(revisions)) = (windows, revisions) else {
        return Err("window or revision column has the wrong type".into());
    };
    let mut per_window: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
    for (i, start) in windows.values().iter().enumerate() {
        per_window.entry(*start).or_default().push(i as u32);
    }
    Ok(per_window
        .into_iter()
        .map(|(start, indices)| (start, revisions.value(indices[0] as usize), indices))
        .collect())
}

/// Column of a [`WindowOperator::snapshot`] holding each row's window start.
pub const STATE_WINDOW: &str = "__stratus_window";
/// Column of a [`WindowOperator::snapshot`] holding the revision last emitted for the row.
pub const STATE_REVISION: &str = "__stratus_revision";

/// The schema metadata key that marks a checkpoint's batches as partial aggregates.
const PARTIAL_AGGREGATES: &str = "stratus.window.partial_aggregates";

/// The schema of a checkpoint's partial aggregates: [`state_schema`], marked.
fn states_schema(split: &Split) -> SchemaRef {
    let tagged = state_schema(split.query.state_schema());
    let mut metadata = tagged.metadata().clone();
    metadata.insert(PARTIAL_AGGREGATES.into(), split.made_by.clone());
    Arc::new(tagged.as_ref().clone().with_metadata(metadata))
}

fn state_schema(input: &Schema) -> SchemaRef {
    let mut fields: Vec<Arc<Field>> = input.fields().iter().cloned().collect();
    fields.push(Arc::new(Field::new(STATE_WINDOW, DataType::Int64, false)));
    fields.push(Arc::new(Field::new(STATE_REVISION, DataType::Int32, false)));
    Arc::new(Schema::new(fields))
}

/// Appends `revision` and `is_update` to a result batch.
fn with_revision(batch: RecordBatch, revision: i32) -> Result<RecordBatch, ArrowError> {
    let n = batch.num_rows();
    let mut fields: Vec<Arc<Field>> = batch.schema().fields().iter().cloned().collect();
    fields.push(Arc::new(Field::new("revision", DataType::Int32, false)));
    fields.push(Arc::new(Field::new("is_update", DataType::Boolean, false)));
    let mut columns = batch.columns().to_vec();
    columns.push(Arc::new(Int32Array::from(vec![revision; n])));
    columns.push(Arc::new(BooleanArray::from(vec![revision > 0; n])));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

impl From<WindowError> for crate::operator::OperatorError {
    fn from(e: WindowError) -> Self {
        crate::operator::OperatorError::Operator(Box::new(e))
    }
}

/// The checkpoint part of a window stage's buffered rows.
const STATE_PART: &str = "window";
/// The checkpoint part of the partial aggregates of windows that keep those.
const STATES_PART: &str = "window-states";
/// The key of the open windows in the `meta` of an incremental checkpoint.
const OPEN: &str = "open";

#[async_trait::async_trait]
impl Operator for WindowOperator {
    async fn process_batch(
        &mut self,
        batch: &RecordBatch,
        _ctx: &Context<'_>,
        out: &mut Collector,
    ) -> operator::Result<()> {
        if let Some(late) = self.process(batch).await? {
            out.late(late);
        }
        Ok(())
    }

    /// Fires what the watermark closed; the output's watermark is the start of the newest
    /// window that can have closed.
    async fn handle_watermark(
        &mut self,
        watermark: i64,
        _ctx: &Context<'_>,
        out: &mut Collector,
    ) -> operator::Result<i64> {
        for b in self.advance(watermark).await? {
            out.collect(b);
        }
        Ok(self.watermark.saturating_sub(self.spec.span()))
    }

    /// Its rows, and the partial aggregates of windows that keep those, as a part of their own.
    fn snapshot(&self) -> operator::Result<OperatorState> {
        let mut state = OperatorState::part(STATE_PART, WindowOperator::snapshot(self)?);
        if self.split.is_some() {
            state
                .parts
                .insert(STATES_PART.into(), self.state_snapshot(false)?);
        }
        state.meta = serde_json::json!({ "watermark": self.watermark });
        Ok(state)
    }

    /// Incremental for tumbling and hopping windows: the rows buffered since the last
    /// checkpoint, and in `meta` every open window with its revision (rows of windows closed
    /// since are not restored).
    fn checkpoint(&mut self, kind: &Snapshot) -> operator::Result<OperatorState> {
        if kind.wants_whole(STATE_PART)
            || kind.wants_whole(STATES_PART)
            || matches!(self.spec, WindowSpec::Session { .. })
            || self.rewritten
        {
            self.saved();
            return Operator::snapshot(self);
        }
        let (rows, states) = self.changes()?;
        let mut state = OperatorState::part(STATE_PART, rows);
        state.appended.insert(STATE_PART.into());
        if self.split.is_some() {
            state.parts.insert(STATES_PART.into(), states);
            state.appended.insert(STATES_PART.into());
        }
        state.meta = serde_json::json!({
            "watermark": self.watermark,
            OPEN: self.open_windows(),
        });
        Ok(state)
    }

    fn restore(&mut self, state: OperatorState) -> operator::Result<()> {
        let Some(rows) = state.parts.get(STATE_PART) else {
            return Ok(());
        };
        let mut rows = rows.clone();
        rows.extend(state.parts.get(STATES_PART).into_iter().flatten().cloned());
        let bad = |message: &str| OperatorError::State {
            part: STATE_PART.into(),
            message: message.into(),
        };
        let watermark = state
            .meta
            .get("watermark")
            .and_then(serde_json::Value::as_i64)
            .ok_or_else(|| bad("no watermark recorded with the rows"))?;
        WindowOperator::restore(self, &rows, watermark)?;
        if let Some(open) = state.meta.get(OPEN) {
            let open: Vec<(i64, i32)> = serde_json::from_value(open.clone())
                .map_err(|_| bad("its open windows are not a list of [start, revision]"))?;
            self.restore_open(&open);
        }
        Ok(())
    }
}
