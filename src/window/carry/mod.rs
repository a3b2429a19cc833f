//! Features carried across windows, per key: an exponentially weighted moving average, the
//! change against the key's previous window (delta, and rate of change per second), a robust
//! z-score against the key's trailing baseline (median and MAD of its earlier windows within
//! `baseline`, for example 24 hours), and the excess over that baseline's median (in the
//! column's own unit: for an hourly cost, the USD above a typical hour).
//!
//! In: a window stage's result batches (its key columns, `window_start`, the configured numeric
//! columns). Out: the same rows with five `Float64` columns appended per configured column `c`:
//! `c_ewma`, `c_delta`, `c_roc`, `c_robust_z` and `c_excess` — null where undefined: no
//! previous window within the baseline span (delta, rate; the EWMA starts again), fewer than
//! `min_baseline` earlier windows in the baseline (z-score, excess), a MAD of zero (z-score),
//! or a null input.
//!
//! State lives here, in memory, bounded per key whatever the baseline's length (see
//! [`history`]): the newest windows exactly (their start and, per column, value and EWMA), the
//! older ones within the baseline as a summary per slice (1/24 of the baseline) of at most 16
//! values per column. A 24-hour baseline of 1-minute windows keeps 64 to 120 exact windows and
//! 23 summaries instead of 1,440 windows: 12 to 15 KB per key with two columns, not 130 KB. The
//! median and MAD over summaries are within a rank error of 1/32 of the summarised windows; a
//! baseline of at most 64 windows is exact. The state is part of the run loop's checkpoint
//! ([`CarryOperator::snapshot`]); a restart restores it from there. An update of a window (a
//! later revision) among the exact ones replaces that window's point and is computed against
//! the windows before it; an update of an older one is judged against the baseline as it
//! stands, without delta or rate, and leaves the baseline as it is. Results of later windows
//! already emitted are not re-emitted.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, DictionaryArray, Float64Array, Float64Builder,
    Int32Array, Int64Array, ListBuilder, RecordBatch, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Float64Type, Int32Type, Int64Type, Schema, SchemaRef};
use arrow::row::{RowConverter, Rows, SortField};

mod history;

use self::history::{KeyHistory, SLICES, Scratch, SealedPart};
use super::WindowError;
use crate::operator::{self, Collector, Context, Operator, OperatorState, Snapshot};

/// Each key's history, by its row-format bytes. foldhash rather than std's SipHash, and
/// `entry_ref` to find or add a key in one lookup: this map is hit once per row.
type Histories = hashbrown::HashMap<Vec<u8>, KeyHistory>;

/// What to carry, checked by the pipeline planner.
#[derive(Debug, Clone, PartialEq)]
pub struct CarrySpec {
    /// The key columns.
    pub by: Vec<String>,
    /// The numeric columns features are derived from.
    pub columns: Vec<String>,
    /// EWMA smoothing factor in (0, 1]: the weight of the newest window.
    pub alpha: f64,
    /// Trailing span of the z-score baseline, µs.
    pub baseline: i64,
    /// Fewest earlier windows in the baseline before a z-score is given.
    pub min_baseline: usize,
}

/// The columns appended per configured column, in order.
pub const CARRY_SUFFIXES: [&str; 5] = ["ewma", "delta", "roc", "robust_z", "excess"];

impl CarrySpec {
    /// `input` with the carried columns appended.
    pub fn output_schema(&self, input: &Schema) -> SchemaRef {
        let mut fields: Vec<Arc<Field>> = input.fields().iter().cloned().collect();
        for c in &self.columns {
            for s in CARRY_SUFFIXES {
                fields.push(Arc::new(Field::new(
                    format!("{c}_{s}"),
                    DataType::Float64,
                    true,
                )));
            }
        }
        Arc::new(Schema::new(fields))
    }
}

/// Computes carried features batch by batch, keeping per-key history.
pub struct CarryOperator {
    spec: CarrySpec,
    by: Vec<usize>,
    columns: Vec<usize>,
    start: usize,
    converter: RowConverter,
    /// The key rows of the batch being applied, kept for the next (its buffers reused).
    key_rows: Rows,
    output: SchemaRef,
    /// The span of a baseline's slice (see [`history`]), µs.
    slice: i64,
    /// Key (row-format bytes) → its windows.
    history: Histories,
    scratch: Scratch,
    /// Exact windows per chunk of a checkpoint ([`CHUNK_ROWS`]; fewer in tests).
    chunk_rows: usize,
    /// Restored from parts other than its groups' (a checkpoint written before keys were
    /// grouped): the next checkpoint is whole, as changes would start the groups' files
    /// without the history they add to.
    rebase: bool,
}

impl CarryOperator {
    /// `input` is the window stage's output schema (without the carried columns).
    pub fn new(spec: CarrySpec, input: &Schema) -> Result<Self, WindowError> {
        let index = |name: &str| {
            input.index_of(name).map_err(|_| WindowError::Input {
                input: "carry".into(),
                message: format!("column `{name}` is not in the stage's output"),
            })
        };
        let by = spec
            .by
            .iter()
            .map(|c| index(c))
            .collect::<Result<Vec<_>, _>>()?;
        let columns = spec
            .columns
            .iter()
            .map(|c| index(c))
            .collect::<Result<Vec<_>, _>>()?;
        let start = index("window_start")?;
        let converter = RowConverter::new(
            by.iter()
                .map(|&i| SortField::new(input.field(i).data_type().clone()))
                .collect(),
        )?;
        Ok(CarryOperator {
            output: spec.output_schema(input),
            by,
            columns,
            start,
            key_rows: converter.empty_rows(0, 0),
            converter,
            slice: (spec.baseline / SLICES).max(1),
            spec,
            history: Histories::default(),
            scratch: Scratch::default(),
            chunk_rows: CHUNK_ROWS,
            rebase: false,
        })
    }

    /// Keys with history.
    pub fn keys(&self) -> usize {
        self.history.len()
    }

    /// `batch` with the carried columns appended; rows are taken in window order per key.
    pub fn apply(&mut self, batch: &RecordBatch) -> Result<RecordBatch, WindowError> {
        let n = batch.num_rows();
        self.key_rows.clear();
        self.converter.append(
            &mut self.key_rows,
            &self
                .by
                .iter()
                .map(|&i| batch.column(i).clone())
                .collect::<Vec<_>>(),
        )?;
        let keys = &self.key_rows;
        let starts = batch
            .column(self.start)
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .ok_or_else(|| WindowError::Input {
                input: "carry".into(),
                message: "`window_start` is not a microsecond timestamp".into(),
            })?;
        let values: Vec<Float64Array> = self
            .columns
            .iter()
            .map(|&i| {
                let cast = arrow::compute::cast(batch.column(i), &DataType::Float64)?;
                Ok(cast
                    .as_any()
                    .downcast_ref::<Float64Array>()
                    .cloned()
                    .unwrap_or_else(|| Float64Array::from(vec![None; n])))
            })
            .collect::<Result<_, WindowError>>()?;
        let width = self.columns.len();
        let mut out: Vec<OutColumn> = (0..width * CARRY_SUFFIXES.len())
            .map(|_| OutColumn::new(n))
            .collect();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| starts.value(i));
        let (baseline, span) = (self.spec.baseline, self.slice);
        let scratch = &mut self.scratch;
        for i in order {
            let start = starts.value(i);
            let history = history_of(&mut self.history, keys.row(i).as_ref());
            // In order (the usual case): first drop what falls out of this window's baseline,
            // so that the exact values and sealed slices are exactly its baseline.
            let in_order = history.newest().is_none_or(|newest| newest < start);
            if in_order {
                history.expire(start, baseline, width);
            }
            // A revision older than every exact window: judged against the baseline as it
            // stands, with no previous window, and not kept (its slice is summarised).
            let exact = in_order || history.is_exact_at(start, span);
            let pos = history.position(start);
            // The previous window counts while it lies within the baseline span.
            let prev = pos
                .checked_sub(1)
                .map(|p| history.point(p))
                .filter(|p| exact && p.start >= start - baseline);
            let mut data = std::mem::take(&mut scratch.data);
            data.clear();
            data.resize(2 * width, f64::NAN);
            for (j, column) in values.iter().enumerate() {
                let x = if column.is_null(i) {
                    f64::NAN
                } else {
                    column.value(i)
                };
                let prev_value = prev.map_or(f64::NAN, |p| p.value(j));
                let prev_ewma = prev.map_or(f64::NAN, |p| p.ewma(j));
                let ewma = match (x.is_nan(), prev_ewma.is_nan()) {
                    (true, _) => prev_ewma,
                    (false, true) => x,
                    (false, false) => self.spec.alpha * x + (1.0 - self.spec.alpha) * prev_ewma,
                };
                let slot = j * CARRY_SUFFIXES.len();
                if !x.is_nan() {
                    out[slot].set(i, ewma);
                    if let Some(p) = prev.filter(|_| !prev_value.is_nan()) {
                        let delta = x - prev_value;
                        out[slot + 1].set(i, delta);
                        out[slot + 2].set(i, delta / ((start - p.start) as f64 / 1e6));
                    }
                    let mut earlier = std::mem::take(&mut scratch.baseline);
                    let sorted = if in_order {
                        history.sorted(j)
                    } else {
                        earlier.clear();
                        earlier.extend(
                            history
                                .points()
                                .take(pos)
                                .filter(|p| p.start >= start - baseline)
                                .map(|p| p.value(j))
                                .filter(|v| !v.is_nan()),
                        );
                        earlier.sort_unstable_by(f64::total_cmp);
                        &earlier
                    };
                    let judged = history.judge(x, j, sorted, self.spec.min_baseline, scratch);
                    scratch.baseline = earlier;
                    if let Some((median, z)) = judged {
                        if let Some(z) = z {
                            out[slot + 3].set(i, z);
                        }
                        out[slot + 4].set(i, x - median);
                    }
                }
                data[j] = x;
                data[width + j] = ewma;
            }
            if in_order {
                history.push(start, &data, width, span);
            } else if exact {
                history.revise(start, &data, width, baseline);
            }
            scratch.data = data;
        }
        let mut columns = batch.columns().to_vec();
        columns.extend(out.into_iter().map(OutColumn::finish));
        Ok(RecordBatch::try_new(self.output.clone(), columns)?)
    }

    /// The whole history, as a whole checkpoint holds it (see
    /// [`state_batches`](Self::state_batches)), its groups' batches together.
    #[cfg(test)]
    pub fn snapshot(&self) -> Result<(Vec<RecordBatch>, Vec<RecordBatch>), WindowError> {
        Ok(flattened(self.state_batches(&[true; GROUPS])?))
    }

    /// What changed since the last checkpoint, its groups' batches together; from now on the
    /// checkpoint holds everything.
    #[cfg(test)]
    pub fn changes(&mut self) -> Result<(Vec<RecordBatch>, Vec<RecordBatch>), WindowError> {
        let batches = flattened(self.state_batches(&[false; GROUPS])?);
        self.saved();
        Ok(batches)
    }

    /// Counts the whole history as checkpointed.
    pub fn saved(&mut self) {
        for history in self.history.values_mut().filter(|h| h.is_unsaved()) {
            history.saved();
        }
    }

    /// The history per group of keys (see [`GROUPS`]), for a checkpoint: of a group `whole`,
    /// every key's; of the others, what changed since the last checkpoint — per key its exact
    /// windows from the oldest added or revised since, and the slices sealed since (what
    /// expired since is not said: a restore drops it again).
    ///
    /// Batches of two kinds. The exact windows: `key` (row-format bytes, dictionary-encoded:
    /// each key's bytes once, not once per window), `window_start`, then per column its value
    /// and EWMA. The sealed slices, a row per slice and column: `key`, `slice` (its number),
    /// `first` (its oldest window's start), `column`, `count` (values it stands for) and
    /// `values` (those it kept, ascending). Each kind comes in chunks of about [`CHUNK_ROWS`]
    /// exact windows, a key's rows in one chunk: a whole snapshot of
    /// 100,000 keys of a day's windows is tens of millions of rows, and one batch of them
    /// would grow each column by doubling to twice its size, held until the checkpoint is
    /// written. Each group has a batch of each kind at least (empty if need be).
    fn state_batches(&self, whole: &[bool; GROUPS]) -> Result<Vec<GroupBatches>, WindowError> {
        let width = self.columns.len();
        // The keys to save, each hashed once. Each chunk's columns are sized once, to what it
        // will hold.
        let mut remaining = [0usize; GROUPS];
        let to_save: Vec<_> = self
            .history
            .iter()
            .filter_map(|(key, h)| {
                let group = h.group();
                let only_new = !whole[group];
                (!only_new || h.is_unsaved()).then(|| {
                    remaining[group] += h.points_to_save(only_new).len();
                    (key, h, group, only_new)
                })
            })
            .collect();
        let capacity = |remaining: usize| remaining.min(self.chunk_rows);
        let mut groups: Vec<(Chunk, GroupBatches)> = remaining
            .iter()
            .map(|&r| (Chunk::new(width, capacity(r)), Default::default()))
            .collect();
        for (key, history, group, only_new) in to_save {
            let (chunk, done) = &mut groups[group];
            let saved = history.points_to_save(only_new);
            if chunk.held + saved.len() > self.chunk_rows && chunk.held > 0 {
                let next = Chunk::new(width, capacity(remaining[group]));
                let (p, s) = std::mem::replace(chunk, next).finish(width)?;
                done.0.push(p);
                done.1.push(s);
            }
            remaining[group] -= saved.len();
            chunk.held += saved.len();
            chunk.keys.next(key)?;
            for p in saved {
                chunk.keys.push();
                chunk.starts.push(p.start);
                for j in 0..width {
                    chunk.columns[2 * j].push(p.value(j));
                    chunk.columns[2 * j + 1].push(p.ewma(j));
                }
            }
            if !history.has_sealed(only_new) {
                continue;
            }
            chunk.sealed.next(key)?;
            history.for_each_sealed(only_new, |part| chunk.add_sealed(part));
        }
        groups
            .into_iter()
            .map(|(chunk, mut done)| {
                if done.0.is_empty() || chunk.held > 0 || !chunk.slice.is_empty() {
                    let (p, s) = chunk.finish(width)?;
                    done.0.push(p);
                    done.1.push(s);
                }
                Ok(done)
            })
            .collect()
    }

    /// Restores what checkpoints took (see [`state_batches`](Self::state_batches)): whole
    /// batches and the changes after them, oldest first per group of keys, the groups in any
    /// order: its exact windows (or, from
    /// checkpoints written before keys were dictionary-encoded, a plain binary key per window;
    /// from those written before slices were sealed, every window of the baseline, which are
    /// sealed now) and its slices, if any.
    pub fn restore(
        &mut self,
        points: &[RecordBatch],
        slices: &[RecordBatch],
    ) -> Result<(), WindowError> {
        let width = self.columns.len();
        let expected = snapshot_schema(width);
        let mut restored = Histories::default();
        let mut data = Vec::with_capacity(2 * width);
        for state in points {
            if state.schema().fields().get(1..) != expected.fields().get(1..) {
                return Err(wrong_state(
                    "has other columns: the carry settings changed since",
                ));
            }
            let column = |i: usize| state.column(i).as_any();
            let keys = key_column(state)?;
            let Some(starts) = column(1).downcast_ref::<Int64Array>() else {
                return Err(wrong_state("has the wrong types"));
            };
            let floats: Vec<&Float64Array> = (2..2 + 2 * width)
                .filter_map(|i| column(i).downcast_ref::<Float64Array>())
                .collect();
            for i in 0..state.num_rows() {
                data.clear();
                data.extend((0..width).map(|j| floats[2 * j].value(i)));
                data.extend((0..width).map(|j| floats[2 * j + 1].value(i)));
                history_of(&mut restored, keys(i)).restore_point(starts.value(i), &data);
            }
        }
        for batch in slices.iter().filter(|b| b.num_rows() > 0) {
            restore_slices(batch, width, &mut restored)?;
        }
        for history in restored.values_mut() {
            history.restored(width, self.slice, self.spec.baseline);
        }
        self.history = restored;
        Ok(())
    }

    /// Values held per key and column, at most (exact windows and summarised values): what the
    /// largest key costs.
    pub fn most_values_held(&self) -> usize {
        self.history
            .values()
            .map(KeyHistory::values_held)
            .max()
            .unwrap_or(0)
    }
}

/// One carried column as [`CarryOperator::apply`] fills it, a row at a time in window order:
/// its values and which of them are set (the rest are null).
struct OutColumn {
    values: Vec<f64>,
    set: Vec<bool>,
}

impl OutColumn {
    fn new(rows: usize) -> Self {
        OutColumn {
            values: vec![0.0; rows],
            set: vec![false; rows],
        }
    }

    fn set(&mut self, row: usize, value: f64) {
        self.values[row] = value;
        self.set[row] = true;
    }

    fn finish(self) -> ArrayRef {
        Arc::new(Float64Array::new(
            self.values.into(),
            Some(arrow::buffer::NullBuffer::from(self.set)),
        ))
    }
}

/// Exact windows and sealed values a checkpoint's chunk holds, about: a key's stay in one
/// chunk.
pub const CHUNK_ROWS: usize = 1 << 16;

/// Groups of keys the history is checkpointed in, each in parts of its own (`carry.<group>`,
/// `carry_slices.<group>`) that the checkpoint store asks whole at times of their own (see
/// `CheckpointStore::next_snapshot`): a checkpoint holds a group's whole history in memory,
/// never all of it. A key's group is a hash of its bytes, the same in every run and build.
pub const GROUPS: usize = 16;
const _: () = assert!(GROUPS <= 256, "a key's group is kept in a byte");

/// The group of a key (row-format bytes).
fn group_of(key: &[u8]) -> usize {
    (crate::decide::stable_hash_bytes(key) % GROUPS as u64) as usize
}

/// `key`'s history, added (in its key's group) if it has none.
fn history_of<'a>(histories: &'a mut Histories, key: &[u8]) -> &'a mut KeyHistory {
    histories
        .entry_ref(key)
        .or_insert_with(|| KeyHistory::new(group_of(key) as u8))
}

/// A group's exact windows and its slices, in chunks.
type GroupBatches = (Vec<RecordBatch>, Vec<RecordBatch>);

/// The groups' batches as one of each kind: the empty batches dropped, one kept if all are.
#[cfg(test)]
fn flattened(groups: Vec<GroupBatches>) -> GroupBatches {
    let keep = |batches: Vec<RecordBatch>| {
        let mut kept: Vec<RecordBatch> = Vec::new();
        for b in batches {
            if b.num_rows() > 0 || kept.is_empty() {
                if kept.first().is_some_and(|k| k.num_rows() == 0) {
                    kept.clear();
                }
                kept.push(b);
            }
        }
        kept
    };
    let (points, slices): (Vec<_>, Vec<_>) = groups.into_iter().unzip();
    (
        keep(points.into_iter().flatten().collect()),
        keep(slices.into_iter().flatten().collect()),
    )
}

/// One chunk of a checkpoint of the history, as it is built.
struct Chunk<'a> {
    /// Exact windows and sealed values in it.
    held: usize,
    keys: Keys<'a>,
    starts: Vec<i64>,
    /// Per column its values, then its EWMAs.
    columns: Vec<Vec<f64>>,
    sealed: Keys<'a>,
    slice: Vec<i64>,
    first: Vec<i64>,
    column: Vec<i32>,
    count: Vec<i64>,
    values: ListBuilder<Float64Builder>,
}

impl<'a> Chunk<'a> {
    fn new(width: usize, rows: usize) -> Self {
        Chunk {
            held: 0,
            keys: Keys::with_capacity(rows),
            starts: Vec::with_capacity(rows),
            columns: (0..2 * width).map(|_| Vec::with_capacity(rows)).collect(),
            sealed: Keys::default(),
            slice: Vec::new(),
            first: Vec::new(),
            column: Vec::new(),
            count: Vec::new(),
            values: ListBuilder::new(Float64Builder::new()).with_field(Arc::new(Field::new(
                "item",
                DataType::Float64,
                false,
            ))),
        }
    }

    fn add_sealed(&mut self, part: SealedPart<'_>) {
        self.held += part.values.len();
        self.sealed.push();
        self.slice.push(part.number);
        self.first.push(part.first);
        self.column.push(part.column as i32);
        self.count.push(i64::from(part.count));
        self.values
            .append_value(part.values.iter().map(|&v| Some(v)));
    }

    fn finish(mut self, width: usize) -> Result<(RecordBatch, RecordBatch), WindowError> {
        let mut arrays: Vec<ArrayRef> =
            vec![self.keys.array()?, Arc::new(Int64Array::from(self.starts))];
        arrays.extend(
            self.columns
                .into_iter()
                .map(|c| Arc::new(Float64Array::from(c)) as ArrayRef),
        );
        let points = RecordBatch::try_new(snapshot_schema(width), arrays)?;
        let slices = RecordBatch::try_new(
            slices_schema(),
            vec![
                self.sealed.array()?,
                Arc::new(Int64Array::from(self.slice)),
                Arc::new(Int64Array::from(self.first)),
                Arc::new(Int32Array::from(self.column)),
                Arc::new(Int64Array::from(self.count)),
                Arc::new(self.values.finish()),
            ],
        )?;
        Ok((points, slices))
    }
}

/// Keys of a snapshot batch, dictionary-encoded: each key's bytes once.
#[derive(Default)]
struct Keys<'a> {
    values: Vec<&'a [u8]>,
    indices: Vec<i32>,
}

impl<'a> Keys<'a> {
    fn with_capacity(rows: usize) -> Self {
        Keys {
            values: Vec::new(),
            indices: Vec::with_capacity(rows),
        }
    }

    /// Starts the rows of `key`.
    fn next(&mut self, key: &'a [u8]) -> Result<(), WindowError> {
        if i32::try_from(self.values.len()).is_err() {
            return Err(wrong_state("would hold more than 2^31 keys"));
        }
        self.values.push(key);
        Ok(())
    }

    /// A row of the current key.
    fn push(&mut self) {
        self.indices.push(self.values.len() as i32 - 1);
    }

    fn array(self) -> Result<ArrayRef, WindowError> {
        Ok(Arc::new(DictionaryArray::try_new(
            Int32Array::from(self.indices),
            Arc::new(BinaryArray::from(self.values)),
        )?))
    }
}

fn wrong_state(message: &str) -> WindowError {
    WindowError::Input {
        input: "carry".into(),
        message: format!("checkpointed carry state {message}"),
    }
}

/// The key of each row of a snapshot batch: dictionary-encoded, or plain binary as old
/// checkpoints held them.
fn key_column<'a>(state: &'a RecordBatch) -> Result<impl Fn(usize) -> &'a [u8] + 'a, WindowError> {
    let key_column = state.column(0);
    let (values, indices) = match (
        key_column.as_binary_opt::<i32>(),
        key_column.as_dictionary_opt::<Int32Type>(),
    ) {
        (Some(plain), _) => (plain, None),
        (None, Some(dict)) => (
            dict.values()
                .as_binary_opt::<i32>()
                .ok_or_else(|| wrong_state("has keys of the wrong type"))?,
            Some(dict.keys()),
        ),
        (None, None) => return Err(wrong_state("has keys of the wrong type")),
    };
    Ok(move |i: usize| values.value(indices.map_or(i, |k| k.value(i) as usize)))
}

/// Adds the slices of a snapshot (a row per key, slice and column) to `restored`.
fn restore_slices(
    batch: &RecordBatch,
    width: usize,
    restored: &mut Histories,
) -> Result<(), WindowError> {
    if batch.schema().fields().get(1..) != slices_schema().fields().get(1..) {
        return Err(wrong_state("has slices of other columns"));
    }
    let keys = key_column(batch)?;
    let int64 = |i: usize| batch.column(i).as_primitive::<Int64Type>();
    let (number, first, count) = (int64(1), int64(2), int64(4));
    let column = batch.column(3).as_primitive::<Int32Type>();
    let values = batch.column(5).as_list::<i32>();
    for i in 0..batch.num_rows() {
        let kept = values.value(i);
        let part = SealedPart {
            number: number.value(i),
            first: first.value(i),
            column: usize::try_from(column.value(i)).unwrap_or(usize::MAX),
            count: u32::try_from(count.value(i)).unwrap_or(0),
            values: kept.as_primitive::<Float64Type>().values(),
        };
        if !history_of(restored, keys(i)).restore_sealed(part, width) {
            return Err(wrong_state("has a slice that is no summary of its column"));
        }
    }
    Ok(())
}

fn snapshot_schema(width: usize) -> SchemaRef {
    let mut fields = vec![
        Field::new(
            "key",
            DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Binary)),
            false,
        ),
        Field::new("window_start", DataType::Int64, false),
    ];
    for j in 0..width {
        fields.push(Field::new(format!("value_{j}"), DataType::Float64, false));
        fields.push(Field::new(format!("ewma_{j}"), DataType::Float64, false));
    }
    Arc::new(Schema::new(fields))
}

fn slices_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(
            "key",
            DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Binary)),
            false,
        ),
        Field::new("slice", DataType::Int64, false),
        Field::new("first", DataType::Int64, false),
        Field::new("column", DataType::Int32, false),
        Field::new("count", DataType::Int64, false),
        Field::new(
            "values",
            DataType::List(Arc::new(Field::new("item", DataType::Float64, false))),
            false,
        ),
    ]))
}

/// The checkpoint parts of a stage's carried-feature history: its exact windows, its slices;
/// each group of keys has one of each, named `<part>.<group>`.
const STATE_PART: &str = "carry";
const SLICES_PART: &str = "carry_slices";

/// The name of `part` of `group`.
fn part_of(part: &str, group: usize) -> String {
    format!("{part}.{group}")
}

/// Carry follows the window stage it belongs to (see [`Chain`](crate::operator::Chain)): it
/// takes the windows' results and emits them with the carried columns.
#[async_trait::async_trait]
impl Operator for CarryOperator {
    async fn process_batch(
        &mut self,
        batch: &RecordBatch,
        _ctx: &Context<'_>,
        out: &mut Collector,
    ) -> operator::Result<()> {
        out.collect(self.apply(batch)?);
        Ok(())
    }

    fn snapshot(&self) -> operator::Result<OperatorState> {
        Ok(state_of(
            self.state_batches(&[true; GROUPS])?,
            &[true; GROUPS],
        ))
    }

    /// Incremental: per group, the windows and slices added since the last checkpoint, or all
    /// of them where a part of the group is asked whole.
    fn checkpoint(&mut self, kind: &Snapshot) -> operator::Result<OperatorState> {
        let whole: [bool; GROUPS] = std::array::from_fn(|g| {
            self.rebase
                || kind.wants_whole(&part_of(STATE_PART, g))
                || kind.wants_whole(&part_of(SLICES_PART, g))
        });
        let groups = self.state_batches(&whole)?;
        self.saved();
        self.rebase = false;
        Ok(state_of(groups, &whole))
    }

    /// Takes the parts of every group (or, from checkpoints written before keys were grouped,
    /// the two parts of all keys; the next checkpoint is then whole).
    fn restore(&mut self, state: OperatorState) -> operator::Result<()> {
        let of = |kind: &str| -> Vec<RecordBatch> {
            state
                .parts
                .iter()
                .filter(|(name, _)| {
                    name.strip_prefix(kind)
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
                })
                .flat_map(|(_, batches)| batches.iter().cloned())
                .collect()
        };
        let points = of(STATE_PART);
        if points.is_empty() {
            return Ok(());
        }
        CarryOperator::restore(self, &points, &of(SLICES_PART))?;
        self.rebase = !(0..GROUPS).all(|g| {
            [STATE_PART, SLICES_PART]
                .iter()
                .all(|p| state.parts.contains_key(&part_of(p, g)))
        });
        Ok(())
    }
}

/// A checkpoint of the history's groups: a group not `whole` as what was added.
fn state_of(groups: Vec<GroupBatches>, whole: &[bool; GROUPS]) -> OperatorState {
    let mut state = OperatorState::default();
    for (g, (points, slices)) in groups.into_iter().enumerate() {
        for (part, batches) in [(STATE_PART, points), (SLICES_PART, slices)] {
            let name = part_of(part, g);
            if !whole[g] {
                state.appended.insert(name.clone());
            }
            state.parts.insert(name, batches);
        }
    }
    state
}

#[cfg(test)]
mod tests {
    use super::history::robust_z;
    use super::*;
    use crate::stats::{self, MAD_TO_SIGMA};
    use arrow::array::{AsArray, StringArray};
    use arrow::datatypes::{Float64Type, TimeUnit};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::collections::HashMap;

    const MINUTE: i64 = 60_000_000;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("key", DataType::Utf8, false),
            Field::new(
                "window_start",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
            Field::new("mean", DataType::Float64, true),
        ]))
    }

    fn batch(rows: &[(&str, i64, Option<f64>)]) -> RecordBatch {
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(
                    TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.1))
                        .with_timezone("UTC"),
                ),
                Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.2))),
            ],
        )
        .unwrap()
    }

    fn spec(min_baseline: usize) -> CarrySpec {
        CarrySpec {
            by: vec!["key".into()],
            columns: vec!["mean".into()],
            alpha: 0.5,
            baseline: 5 * MINUTE,
            min_baseline,
        }
    }

    fn column(b: &RecordBatch, name: &str) -> Vec<Option<f64>> {
        b.column_by_name(name)
            .unwrap()
            .as_primitive::<Float64Type>()
            .iter()
            .collect()
    }

    #[test]
    fn features_follow_each_key_across_batches() {
        let mut op = CarryOperator::new(spec(3), &schema()).unwrap();
        let first = op
            .apply(&batch(&[("a", 0, Some(10.0)), ("b", 0, Some(1.0))]))
            .unwrap();
        assert_eq!(column(&first, "mean_ewma"), vec![Some(10.0), Some(1.0)]);
        assert_eq!(column(&first, "mean_delta"), vec![None, None]);
        // Out of order within a batch: minute 2 before minute 1.
        let next = op
            .apply(&batch(&[
                ("a", 2 * MINUTE, Some(16.0)),
                ("a", MINUTE, Some(12.0)),
                ("b", 2 * MINUTE, None),
            ]))
            .unwrap();
        assert_eq!(
            column(&next, "mean_ewma"),
            vec![Some(13.5), Some(11.0), None]
        );
        assert_eq!(
            column(&next, "mean_delta"),
            vec![Some(4.0), Some(2.0), None]
        );
        assert_eq!(
            column(&next, "mean_roc"),
            vec![Some(4.0 / 60.0), Some(2.0 / 60.0), None]
        );
        assert_eq!(column(&next, "mean_robust_z"), vec![None, None, None]);
        // Baseline of a at minute 3: 10, 12, 16 → median 12, MAD 2.
        let z = op.apply(&batch(&[("a", 3 * MINUTE, Some(20.0))])).unwrap();
        let want = (20.0 - 12.0) / (MAD_TO_SIGMA * 2.0);
        assert_eq!(column(&z, "mean_robust_z"), vec![Some(want)]);
        assert_eq!(column(&z, "mean_excess"), vec![Some(20.0 - 12.0)]);
        // An update of minute 2 replaces it: delta against minute 1 again.
        let update = op.apply(&batch(&[("a", 2 * MINUTE, Some(13.0))])).unwrap();
        assert_eq!(column(&update, "mean_delta"), vec![Some(1.0)]);
        // Minute 9: minutes 0-3 fell out of the 5-minute baseline, as did the delta's base.
        let later = op.apply(&batch(&[("a", 9 * MINUTE, Some(1.0))])).unwrap();
        assert_eq!(column(&later, "mean_robust_z"), vec![None]);
        assert_eq!(column(&later, "mean_delta"), vec![None]);
    }

    /// The reference: every point of the key, recomputed from scratch with plain loops.
    fn reference(series: &[(i64, f64)], spec: &CarrySpec) -> Vec<[Option<f64>; 5]> {
        let mut out = Vec::new();
        let mut ewma: Option<f64> = None;
        for (k, &(start, x)) in series.iter().enumerate() {
            let e = ewma.map_or(x, |e| spec.alpha * x + (1.0 - spec.alpha) * e);
            ewma = Some(e);
            let prev = k
                .checked_sub(1)
                .map(|p| series[p])
                .filter(|(s, _)| *s >= start - spec.baseline);
            let mut base: Vec<f64> = series[..k]
                .iter()
                .filter(|(s, _)| *s >= start - spec.baseline)
                .map(|(_, v)| *v)
                .collect();
            let (z, excess) = if base.len() >= spec.min_baseline {
                base.sort_by(f64::total_cmp);
                let m = |v: &[f64]| {
                    let n = v.len();
                    if n % 2 == 1 {
                        v[n / 2]
                    } else {
                        (v[n / 2 - 1] + v[n / 2]) / 2.0
                    }
                };
                let med = m(&base);
                let mut dev: Vec<f64> = base.iter().map(|v| (v - med).abs()).collect();
                dev.sort_by(f64::total_cmp);
                let mad = m(&dev);
                (
                    (mad > 0.0).then(|| (x - med) / (MAD_TO_SIGMA * mad)),
                    Some(x - med),
                )
            } else {
                (None, None)
            };
            out.push([
                Some(e),
                prev.map(|(_, p)| x - p),
                prev.map(|(s, p)| (x - p) / ((start - s) as f64 / 1e6)),
                z,
                excess,
            ]);
        }
        out
    }

    /// A carry stage's checkpoints as the run loop takes them (through [`Operator`]): per part,
    /// whole, or the changes since the one before added to what a restore reads.
    #[derive(Default)]
    struct Checkpoints {
        parts: std::collections::BTreeMap<String, Vec<RecordBatch>>,
    }

    impl Checkpoints {
        fn take(&mut self, op: &mut CarryOperator, whole: bool) {
            let kind = if whole {
                Snapshot::Whole
            } else {
                Snapshot::changes()
            };
            self.take_as(op, &kind);
        }

        fn take_as(&mut self, op: &mut CarryOperator, kind: &Snapshot) {
            // In chunks of a few windows, as a large state is written.
            op.chunk_rows = 5;
            let state = Operator::checkpoint(op, kind).unwrap();
            for (part, batches) in state.parts {
                let files = self.parts.entry(part.clone()).or_default();
                if !state.appended.contains(&part) {
                    files.clear();
                }
                files.extend(batches);
            }
        }

        /// The files of the parts of `kind` that hold rows (of one key: its group's).
        fn files(&self, kind: &str) -> Vec<&RecordBatch> {
            (0..GROUPS)
                .filter_map(|g| self.parts.get(&part_of(kind, g)))
                .filter(|files| files.iter().any(|f| f.num_rows() > 0))
                .flatten()
                .collect()
        }

        fn restore(&self, spec: &CarrySpec) -> CarryOperator {
            let mut op = CarryOperator::new(spec.clone(), &schema()).unwrap();
            let state = OperatorState {
                parts: self.parts.clone(),
                ..OperatorState::default()
            };
            Operator::restore(&mut op, state).unwrap();
            op
        }
    }

    #[test]
    fn random_series_match_the_reference_through_a_restore() {
        let mut rng = StdRng::seed_from_u64(9);
        let spec = spec(4);
        let keys = ["a", "b", "c"];
        let mut series: HashMap<&str, Vec<(i64, f64)>> = HashMap::new();
        let mut rows = Vec::new();
        for minute in 0..200 {
            for key in keys {
                // Gaps: some minutes are missing for some keys.
                if rng.random_range(0..10) < 8 {
                    let v = f64::from(rng.random_range(0..1000)) / 10.0;
                    series.entry(key).or_default().push((minute * MINUTE, v));
                    rows.push((key, minute * MINUTE, Some(v)));
                }
            }
        }
        let mut op = CarryOperator::new(spec.clone(), &schema()).unwrap();
        let mut got: HashMap<&str, Vec<[Option<f64>; 5]>> = HashMap::new();
        let mut checkpoints = Checkpoints::default();
        for (n, chunk) in rows.chunks(7).enumerate() {
            // Restored from a whole checkpoint and up to 8 incremental ones after it.
            if n % 5 == 4 {
                op = checkpoints.restore(&spec);
            }
            let out = op.apply(&batch(chunk)).unwrap();
            // Whole, or changes with one group's part whole in turn (as the store asks).
            let kind = match n % 9 {
                0 => Snapshot::Whole,
                1 | 4 => Snapshot::Changes([part_of(STATE_PART, n % GROUPS)].into()),
                7 => Snapshot::Changes([part_of(SLICES_PART, n % GROUPS)].into()),
                _ => Snapshot::changes(),
            };
            checkpoints.take_as(&mut op, &kind);
            let cols: Vec<Vec<Option<f64>>> = CARRY_SUFFIXES
                .iter()
                .map(|s| column(&out, &format!("mean_{s}")))
                .collect();
            for (i, row) in chunk.iter().enumerate() {
                got.entry(row.0)
                    .or_default()
                    .push(std::array::from_fn(|c| cols[c][i]));
            }
        }
        for key in keys {
            let want = reference(&series[key], &spec);
            assert_eq!(got[key].len(), want.len());
            for (g, w) in got[key].iter().zip(&want) {
                for (a, b) in g.iter().zip(w) {
                    match (a, b) {
                        (Some(a), Some(b)) => assert!((a - b).abs() < 1e-9, "{g:?} vs {w:?}"),
                        _ => assert_eq!(a, b, "{key}: {g:?} vs {w:?}"),
                    }
                }
            }
        }
        assert!(got["a"].iter().filter(|r| r[3].is_some()).count() > 100);
        // Each key's windows came in a chunk of their own.
        assert_eq!(op.snapshot().unwrap().0.len(), keys.len());
    }

    #[test]
    fn keys_spread_evenly_over_the_checkpoint_groups() {
        // Keys as the shipped pipelines have them: a resource id and a metric.
        let converter = RowConverter::new(vec![SortField::new(DataType::Utf8); 2]).unwrap();
        let ids: Vec<String> = (0..1_600).map(|i| format!("i-{i:017x}")).collect();
        let metrics: Vec<&str> = (0..1_600).map(|i| ["cpu", "mem"][i % 2]).collect();
        let rows = converter
            .convert_columns(&[
                Arc::new(StringArray::from(ids)) as ArrayRef,
                Arc::new(StringArray::from(metrics)) as ArrayRef,
            ])
            .unwrap();
        let mut counts = [0; GROUPS];
        for row in rows.iter() {
            counts[group_of(row.as_ref())] += 1;
        }
        // 100 each on average.
        assert!(
            counts.iter().all(|&n| (60..=140).contains(&n)),
            "{counts:?}"
        );
    }

    #[test]
    fn a_snapshot_holds_each_key_once_and_old_snapshots_with_a_key_per_window_restore() {
        // Two keys of one group, so in one chunk.
        let converter = RowConverter::new(vec![SortField::new(DataType::Utf8)]).unwrap();
        let group = |key: &str| {
            let rows = converter
                .convert_columns(&[Arc::new(StringArray::from(vec![key])) as ArrayRef])
                .unwrap();
            group_of(rows.row(0).as_ref())
        };
        let names = [
            "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p", "q",
        ];
        let (a, b) = names
            .iter()
            .flat_map(|a| names.iter().map(move |b| (*a, *b)))
            .find(|(a, b)| a < b && group(a) == group(b))
            .expect("two of 17 keys share one of 16 groups");
        let rows: Vec<(&str, i64, Option<f64>)> = (0..6)
            .flat_map(|m| {
                [
                    (a, m * MINUTE, Some(m as f64)),
                    (b, m * MINUTE, Some(10.0 - m as f64)),
                ]
            })
            .collect();
        let mut op = CarryOperator::new(spec(2), &schema()).unwrap();
        op.apply(&batch(&rows)).unwrap();
        let (state, slices) = op.snapshot().unwrap();
        let [state] = &state[..] else {
            panic!("{} chunks of 12 rows", state.len());
        };
        assert_eq!(state.num_rows(), 12);
        assert_eq!(slices[0].num_rows(), 0, "six windows are kept exact");
        let keys = state
            .column(0)
            .as_dictionary::<arrow::datatypes::Int32Type>();
        assert_eq!(keys.values().len(), 2, "one entry per key");
        // The same history with the key written out per window, as checkpoints held it before.
        let mut columns = state.columns().to_vec();
        columns[0] = arrow::compute::cast(&columns[0], &DataType::Binary).unwrap();
        let mut fields: Vec<Arc<Field>> = state.schema().fields().iter().cloned().collect();
        fields[0] = Arc::new(Field::new("key", DataType::Binary, false));
        let legacy = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap();
        let next = batch(&[(a, 6 * MINUTE, Some(9.0)), (b, 6 * MINUTE, Some(1.0))]);
        let want = op.apply(&next).unwrap();
        for state in [state, &legacy] {
            let mut restored = CarryOperator::new(spec(2), &schema()).unwrap();
            restored.restore(std::slice::from_ref(state), &[]).unwrap();
            assert_eq!(restored.apply(&next).unwrap(), want);
        }
    }

    #[test]
    fn each_key_is_checkpointed_in_its_group_also_after_a_restore() {
        let names: Vec<String> = (0..200).map(|k| format!("k{k}")).collect();
        let rows: Vec<(&str, i64, Option<f64>)> =
            names.iter().map(|k| (k.as_str(), 0, Some(1.0))).collect();
        let mut op = CarryOperator::new(spec(2), &schema()).unwrap();
        op.apply(&batch(&rows)).unwrap();
        let check = |op: &CarryOperator| {
            let groups = op.state_batches(&[true; GROUPS]).unwrap();
            let mut seen = std::collections::HashSet::new();
            for (g, (points, _)) in groups.iter().enumerate() {
                for state in points {
                    let keys = key_column(state).unwrap();
                    for i in 0..state.num_rows() {
                        assert_eq!(group_of(keys(i)), g);
                        assert!(seen.insert(keys(i).to_vec()), "a key saved twice");
                    }
                }
            }
            assert_eq!(seen.len(), 200);
            groups
        };
        let groups = check(&op);
        let (points, slices) = flattened(groups);
        let mut restored = CarryOperator::new(spec(2), &schema()).unwrap();
        restored.restore(&points, &slices).unwrap();
        check(&restored);
    }

    #[test]
    fn robust_z_on_sorted_values_equals_two_selections() {
        let mut rng = StdRng::seed_from_u64(5);
        for n in 1..60 {
            for _ in 0..20 {
                // Few distinct values: ties, and MADs of zero.
                let values: Vec<f64> = (0..n)
                    .map(|_| f64::from(rng.random_range(0..20)) / 4.0)
                    .collect();
                let x = f64::from(rng.random_range(0..20)) / 4.0;
                let mut copy = values.clone();
                let median = stats::median_of(&mut copy);
                for v in copy.iter_mut() {
                    *v = (*v - median).abs();
                }
                let mad = stats::median_of(&mut copy);
                let want = (
                    median,
                    (mad > 0.0).then(|| (x - median) / (MAD_TO_SIGMA * mad)),
                );
                let mut sorted = values.clone();
                sorted.sort_by(f64::total_cmp);
                assert_eq!(robust_z(x, &sorted, 1), Some(want), "{values:?}");
            }
        }
        assert_eq!(robust_z(1.0, &[1.0, 2.0], 3), None);
    }

    #[test]
    fn a_late_window_between_earlier_ones_keeps_the_baseline_exact() {
        // Minutes 0..10 except 5, then 5 arrives late with a revision of 8, then 10 and 11:
        // every z-score equals the reference over the complete series, also when the stage was
        // restored in between from a whole checkpoint and one of the late windows (which
        // rewrites the windows after 5: the revised 8 must replace the 8 before).
        let spec = spec(3);
        let value = |m: i64| if m == 8 { 20.0 } else { ((m * 37) % 11) as f64 };
        let early: Vec<_> = (0..10)
            .filter(|&m| m != 5)
            .map(|m| ("a", m * MINUTE, Some(((m * 37) % 11) as f64)))
            .collect();
        let mut op = CarryOperator::new(spec.clone(), &schema()).unwrap();
        let mut checkpoints = Checkpoints::default();
        op.apply(&batch(&early)).unwrap();
        checkpoints.take(&mut op, true);
        op.apply(&batch(&[
            ("a", 5 * MINUTE, Some(value(5))),
            ("a", 8 * MINUTE, Some(value(8))),
        ]))
        .unwrap();
        checkpoints.take(&mut op, false);
        assert_eq!(
            checkpoints.files(STATE_PART)[1].num_rows(),
            5,
            "minutes 5 to 9"
        );
        let restored = checkpoints.restore(&spec);
        assert_eq!(restored.most_values_held(), op.most_values_held());
        for mut op in [op, restored] {
            let out = op
                .apply(&batch(&[
                    ("a", 10 * MINUTE, Some(value(10))),
                    ("a", 11 * MINUTE, Some(value(11))),
                ]))
                .unwrap();
            let series: Vec<(i64, f64)> = (0..12).map(|m| (m * MINUTE, value(m))).collect();
            let want = reference(&series, &spec);
            assert_eq!(
                column(&out, "mean_robust_z"),
                vec![want[10][3], want[11][3]]
            );
            assert_eq!(column(&out, "mean_excess"), vec![want[10][4], want[11][4]]);
        }
    }

    #[test]
    fn a_day_of_minutes_is_held_in_bounded_memory_near_the_exact_figures() {
        // Three days of 1-minute windows against a 24-hour baseline: a daily cycle, heavy-tailed
        // noise and spikes. Delta, rate and EWMA stay exact; the z-score and excess stay near
        // the exact figures; a restore in the middle changes nothing; and a key holds at most
        // 120 exact windows and 23 slices of 16 values, not 1,440 windows.
        let mut spec = spec(60);
        spec.baseline = 24 * 60 * MINUTE;
        let mut rng = StdRng::seed_from_u64(3);
        let series: Vec<(i64, f64)> = (0..3 * 1440)
            .map(|m| {
                let daily = 20.0 * (m as f64 * std::f64::consts::TAU / 1440.0).sin();
                let noise = -rng.random_range(1e-9..1.0_f64).ln() * 4.0;
                let spike = if rng.random_range(0..200) == 0 {
                    80.0
                } else {
                    0.0
                };
                (m * MINUTE, 50.0 + daily + noise + spike)
            })
            .collect();
        let want = reference(&series, &spec);
        let mut op = CarryOperator::new(spec.clone(), &schema()).unwrap();
        let mut uninterrupted = CarryOperator::new(spec.clone(), &schema()).unwrap();
        let mut got = Vec::new();
        let mut checkpoints = Checkpoints::default();
        for (n, chunk) in series.chunks(30).enumerate() {
            // A whole checkpoint, then an incremental one per half hour for a day and a half
            // (slices sealed and expired meanwhile), restored from all of them.
            if n == 100 {
                assert!(checkpoints.files(STATE_PART).len() > 70);
                assert!(
                    checkpoints
                        .files(SLICES_PART)
                        .iter()
                        .filter(|s| s.num_rows() > 0)
                        .count()
                        > 30,
                    "slices sealed since the whole checkpoint are added"
                );
                assert!(
                    checkpoints.files(STATE_PART)[1..]
                        .iter()
                        .all(|p| p.num_rows() <= 31),
                    "an incremental checkpoint holds the new windows only"
                );
                let held = op.most_values_held();
                op = checkpoints.restore(&spec);
                assert_eq!(op.most_values_held(), held, "what had expired stays gone");
            }
            let rows: Vec<_> = chunk.iter().map(|&(s, v)| ("a", s, Some(v))).collect();
            let out = op.apply(&batch(&rows)).unwrap();
            assert_eq!(out, uninterrupted.apply(&batch(&rows)).unwrap());
            checkpoints.take(&mut op, n == 25);
            let cols: Vec<Vec<Option<f64>>> = CARRY_SUFFIXES
                .iter()
                .map(|s| column(&out, &format!("mean_{s}")))
                .collect();
            got.extend((0..rows.len()).map(|i| std::array::from_fn::<_, 5, _>(|c| cols[c][i])));
        }
        let (mut z_errors, mut excess_errors) = (Vec::new(), Vec::new());
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            for c in 0..3 {
                match (g[c], w[c]) {
                    (Some(a), Some(b)) => assert!((a - b).abs() < 1e-9, "{g:?} vs {w:?}"),
                    (a, b) => assert_eq!(a, b),
                }
            }
            assert_eq!(g[3].is_some(), w[3].is_some(), "{g:?} vs {w:?}");
            if let (Some(a), Some(b)) = (g[3], w[3]) {
                z_errors.push((a - b).abs());
                excess_errors.push((g[4].unwrap() - w[4].unwrap()).abs());
                // The stated bound: the median used lies within 1/32 of the baseline's ranks
                // of its exact median.
                let (start, x) = series[k];
                let mut base: Vec<f64> = series[..k]
                    .iter()
                    .filter(|(s, _)| *s >= start - spec.baseline)
                    .map(|(_, v)| *v)
                    .collect();
                base.sort_by(f64::total_cmp);
                let median = x - g[4].unwrap();
                let rank = base.partition_point(|v| *v < median) as f64 / base.len() as f64;
                let slack = 1.0 / 32.0 + 1.0 / base.len() as f64;
                assert!(
                    (rank - 0.5).abs() <= slack,
                    "row {k}: median at rank {rank}"
                );
            }
        }
        assert!(
            z_errors.len() > 3 * 1440 - 100,
            "{} z-scores",
            z_errors.len()
        );
        z_errors.sort_by(f64::total_cmp);
        excess_errors.sort_by(f64::total_cmp);
        let at = |v: &[f64], q: f64| v[((v.len() - 1) as f64 * q) as usize];
        eprintln!(
            "z error p50 {:.4} p99 {:.4} max {:.4}; excess error p50 {:.4} p99 {:.4} max {:.4}",
            at(&z_errors, 0.5),
            at(&z_errors, 0.99),
            at(&z_errors, 1.0),
            at(&excess_errors, 0.5),
            at(&excess_errors, 0.99),
            at(&excess_errors, 1.0),
        );
        // In σ: a hundredth typically, under a third at worst, where alerts start at 3 to 5.
        assert!(
            at(&z_errors, 0.5) < 0.05,
            "z error p50 {}",
            at(&z_errors, 0.5)
        );
        assert!(
            at(&z_errors, 1.0) < 0.4,
            "z error max {}",
            at(&z_errors, 1.0)
        );
        let held = op.most_values_held();
        assert!((64..=120 + 23 * 16).contains(&held), "{held} values held");
        // A checkpoint written before slices, of every window of the day, is sealed on
        // restore.
        let day = &series[series.len() - 1440..];
        let legacy = RecordBatch::try_new(
            snapshot_schema(1),
            vec![
                Arc::new(DictionaryArray::new(
                    Int32Array::from(vec![0; day.len()]),
                    Arc::new(BinaryArray::from(vec![
                        op.history.keys().next().unwrap().as_ref(),
                    ])),
                )),
                Arc::new(Int64Array::from_iter_values(day.iter().map(|p| p.0))),
                Arc::new(Float64Array::from_iter_values(day.iter().map(|p| p.1))),
                Arc::new(Float64Array::from_iter_values(day.iter().map(|p| p.1))),
            ],
        )
        .unwrap();
        let mut restored = CarryOperator::new(spec.clone(), &schema()).unwrap();
        restored.restore(&[legacy], &[]).unwrap();
        let held = restored.most_values_held();
        assert!((64..=120 + 23 * 16).contains(&held), "{held} values held");
        // The slices sealed on restore are in no checkpoint yet: the next one adds them.
        let (_, sealed_now) = restored.changes().unwrap();
        assert!(sealed_now.iter().map(RecordBatch::num_rows).sum::<usize>() > 0);
    }

    #[test]
    fn a_key_back_after_256_slices_restores_from_a_whole_checkpoint_and_additions() {
        // Windows every 5 s against a 24-minute baseline (slices of a minute): an hour, a whole
        // checkpoint, silence until minute 256, then windows again with a checkpoint of the
        // additions every 10 minutes. The slices of the baseline at minute 316 share their
        // tags (number mod 256) with those the whole checkpoint holds, which had expired.
        let mut spec = spec(60);
        spec.baseline = 24 * MINUTE;
        let second = MINUTE / 60;
        let value = |t: i64| ((t / second * 7919) % 101) as f64;
        let rows = |from: i64, to: i64| -> Vec<(&str, i64, Option<f64>)> {
            (from * 12..to * 12)
                .map(|k| ("a", k * 5 * second, Some(value(k * 5 * second))))
                .collect()
        };
        let mut op = CarryOperator::new(spec.clone(), &schema()).unwrap();
        let mut checkpoints = Checkpoints::default();
        op.apply(&batch(&rows(0, 60))).unwrap();
        checkpoints.take(&mut op, true);
        for from in (256..316).step_by(10) {
            op.apply(&batch(&rows(from, from + 10))).unwrap();
            checkpoints.take(&mut op, false);
        }
        let mut restored = checkpoints.restore(&spec);
        assert_eq!(restored.most_values_held(), op.most_values_held());
        let next = batch(&rows(316, 326));
        assert_eq!(restored.apply(&next).unwrap(), op.apply(&next).unwrap());
    }
}
