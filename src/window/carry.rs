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
//! State lives here, in memory: per key, the windows of the last `baseline` of event time (the
//! window start and, per column, the value and the EWMA) and, per column, the same values in
//! ascending order (so a row's median and MAD cost a walk, not a sort): about 24 + 24 ×
//! columns bytes per window per key, so a 24-hour baseline of 1-minute windows holds 1,440
//! windows per key — 100 KB per key with two columns, 10 GB for 100,000 keys. It is part of the
//! run loop's checkpoint ([`CarryOperator::snapshot`]); a restart restores it from there. An
//! update of a window (a later revision) replaces that window's point and is computed against
//! the windows before it; results of later windows already emitted are not re-emitted.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, DictionaryArray, Float64Array, Int32Array, Int64Array,
    RecordBatch, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef};
use arrow::row::{RowConverter, SortField};

use super::WindowError;
use crate::operator::{self, Collector, Context, Operator, OperatorState};
use crate::stats::{self, MAD_TO_SIGMA};

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

/// One window of one key: a key holds up to a baseline's span of these (1,440 for a day of
/// 1-minute windows), so a point is one allocation.
#[derive(Debug, Clone)]
struct Point {
    start: i64,
    /// Per column its value (NaN for null), then per column its EWMA.
    data: Box<[f64]>,
}

impl Point {
    fn value(&self, j: usize) -> f64 {
        self.data[j]
    }

    fn ewma(&self, j: usize) -> f64 {
        self.data[self.data.len() / 2 + j]
    }
}

/// One key's windows, oldest first, and per column their non-null values in ascending order —
/// the baseline a robust z-score needs, kept sorted so that its median and MAD take a walk to
/// the middle instead of a copy and two selections of up to a day's windows per row.
#[derive(Debug, Default)]
struct KeyHistory {
    points: Vec<Point>,
    sorted: Vec<Vec<f64>>,
}

impl KeyHistory {
    /// Sorts the points' values again (after an out-of-order change).
    fn resort(&mut self, width: usize) {
        self.sorted = (0..width)
            .map(|j| {
                let mut v: Vec<f64> = self
                    .points
                    .iter()
                    .map(|p| p.value(j))
                    .filter(|v| !v.is_nan())
                    .collect();
                v.sort_unstable_by(f64::total_cmp);
                v
            })
            .collect();
    }
}

fn insert_sorted(sorted: &mut Vec<f64>, x: f64) {
    let at = sorted.partition_point(|v| v.total_cmp(&x).is_lt());
    sorted.insert(at, x);
}

fn remove_sorted(sorted: &mut Vec<f64>, x: f64) {
    if let Ok(at) = sorted.binary_search_by(|v| v.total_cmp(&x)) {
        sorted.remove(at);
    }
}

/// Computes carried features batch by batch, keeping per-key history.
pub struct CarryOperator {
    spec: CarrySpec,
    by: Vec<usize>,
    columns: Vec<usize>,
    start: usize,
    converter: RowConverter,
    output: SchemaRef,
    /// Key (row-format bytes) → its windows.
    history: HashMap<Box<[u8]>, KeyHistory>,
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
            spec,
            by,
            columns,
            start,
            converter,
            history: HashMap::new(),
        })
    }

    /// Keys with history.
    pub fn keys(&self) -> usize {
        self.history.len()
    }

    /// `batch` with the carried columns appended; rows are taken in window order per key.
    pub fn apply(&mut self, batch: &RecordBatch) -> Result<RecordBatch, WindowError> {
        let n = batch.num_rows();
        let keys = self.converter.convert_columns(
            &self
                .by
                .iter()
                .map(|&i| batch.column(i).clone())
                .collect::<Vec<_>>(),
        )?;
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
        let mut out: Vec<Vec<Option<f64>>> = vec![vec![None; n]; width * CARRY_SUFFIXES.len()];
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| starts.value(i));
        let mut baseline = Vec::new();
        for i in order {
            let start = starts.value(i);
            let key = keys.row(i);
            if !self.history.contains_key(key.as_ref()) {
                self.history
                    .insert(Box::from(key.as_ref()), KeyHistory::default());
            }
            let Some(history) = self.history.get_mut(key.as_ref()) else {
                continue;
            };
            history.sorted.resize_with(width, Vec::new);
            // In order (the usual case): first drop the windows that fall out of this one's
            // baseline, so that the sorted values are exactly its baseline.
            let in_order = history.points.last().is_none_or(|p| p.start < start);
            if in_order {
                let keep_from = history
                    .points
                    .partition_point(|p| p.start < start - self.spec.baseline);
                for p in history.points.drain(..keep_from) {
                    for (j, sorted) in history.sorted.iter_mut().enumerate() {
                        if !p.value(j).is_nan() {
                            remove_sorted(sorted, p.value(j));
                        }
                    }
                }
            }
            let points = &mut history.points;
            let pos = points.partition_point(|p| p.start < start);
            // The previous window counts while it lies within the baseline span.
            let prev = pos
                .checked_sub(1)
                .map(|p| &points[p])
                .filter(|p| p.start >= start - self.spec.baseline);
            let mut data = vec![f64::NAN; 2 * width].into_boxed_slice();
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
                    out[slot][i] = Some(ewma);
                    if let Some(p) = prev.filter(|_| !prev_value.is_nan()) {
                        let delta = x - prev_value;
                        out[slot + 1][i] = Some(delta);
                        out[slot + 2][i] = Some(delta / ((start - p.start) as f64 / 1e6));
                    }
                    let sorted = if in_order {
                        &history.sorted[j]
                    } else {
                        baseline.clear();
                        baseline.extend(
                            points[..pos]
                                .iter()
                                .filter(|p| p.start >= start - self.spec.baseline)
                                .map(|p| p.value(j))
                                .filter(|v| !v.is_nan()),
                        );
                        baseline.sort_unstable_by(f64::total_cmp);
                        &baseline
                    };
                    if let Some((median, z)) = robust_z(x, sorted, self.spec.min_baseline) {
                        out[slot + 3][i] = z;
                        out[slot + 4][i] = Some(x - median);
                    }
                }
                data[j] = x;
                data[width + j] = ewma;
            }
            if in_order {
                for (sorted, &x) in history.sorted.iter_mut().zip(&data[..width]) {
                    if !x.is_nan() {
                        insert_sorted(sorted, x);
                    }
                }
                history.points.push(Point { start, data });
                continue;
            }
            let point = Point { start, data };
            if points.get(pos).is_some_and(|p| p.start == start) {
                points[pos] = point;
            } else {
                points.insert(pos, point);
            }
            if let Some(newest) = points.last().map(|p| p.start) {
                let keep_from = points.partition_point(|p| p.start < newest - self.spec.baseline);
                points.drain(..keep_from);
            }
            history.resort(width);
        }
        let mut columns = batch.columns().to_vec();
        columns.extend(
            out.into_iter()
                .map(|v| Arc::new(Float64Array::from(v)) as ArrayRef),
        );
        Ok(RecordBatch::try_new(self.output.clone(), columns)?)
    }

    /// The history as one batch, for a checkpoint: `key` (row-format bytes, dictionary-encoded:
    /// each key's bytes once, not once per window), `window_start`, then per column its value
    /// and EWMA.
    pub fn snapshot(&self) -> Result<RecordBatch, WindowError> {
        let points: usize = self.history.values().map(|h| h.points.len()).sum();
        let mut keys: Vec<&[u8]> = Vec::with_capacity(self.history.len());
        let mut key_of_point: Vec<i32> = Vec::with_capacity(points);
        let mut starts = Vec::with_capacity(points);
        let width = self.columns.len();
        let mut columns: Vec<Vec<f64>> =
            (0..2 * width).map(|_| Vec::with_capacity(points)).collect();
        for (key, history) in self.history.iter().filter(|(_, h)| !h.points.is_empty()) {
            let k = i32::try_from(keys.len()).map_err(|_| WindowError::Input {
                input: "carry".into(),
                message: "more than 2^31 keys to checkpoint".into(),
            })?;
            keys.push(key);
            for p in &history.points {
                key_of_point.push(k);
                starts.push(p.start);
                for j in 0..width {
                    columns[2 * j].push(p.value(j));
                    columns[2 * j + 1].push(p.ewma(j));
                }
            }
        }
        let keys = DictionaryArray::try_new(
            Int32Array::from(key_of_point),
            Arc::new(BinaryArray::from(keys)),
        )?;
        let mut arrays: Vec<ArrayRef> = vec![Arc::new(keys), Arc::new(Int64Array::from(starts))];
        arrays.extend(
            columns
                .into_iter()
                .map(|c| Arc::new(Float64Array::from(c)) as ArrayRef),
        );
        Ok(RecordBatch::try_new(snapshot_schema(width), arrays)?)
    }

    /// Restores what [`snapshot`](Self::snapshot) took (or, from checkpoints written before
    /// keys were dictionary-encoded, a plain binary key per window).
    pub fn restore(&mut self, state: &RecordBatch) -> Result<(), WindowError> {
        let width = self.columns.len();
        let wrong = |message: &str| WindowError::Input {
            input: "carry".into(),
            message: format!("checkpointed carry state {message}"),
        };
        let expected = snapshot_schema(width);
        if state.schema().fields().get(1..) != expected.fields().get(1..) {
            return Err(wrong("has other columns: the carry settings changed since"));
        }
        let column = |i: usize| state.column(i).as_any();
        let key_column = state.column(0);
        let (key_values, key_indices) = match (
            key_column.as_binary_opt::<i32>(),
            key_column.as_dictionary_opt::<Int32Type>(),
        ) {
            (Some(plain), _) => (plain, None),
            (None, Some(dict)) => (
                dict.values()
                    .as_binary_opt::<i32>()
                    .ok_or_else(|| wrong("has keys of the wrong type"))?,
                Some(dict.keys()),
            ),
            (None, None) => return Err(wrong("has keys of the wrong type")),
        };
        let keys = |i: usize| key_values.value(key_indices.map_or(i, |k| k.value(i) as usize));
        let Some(starts) = column(1).downcast_ref::<Int64Array>() else {
            return Err(wrong("has the wrong types"));
        };
        let floats: Vec<&Float64Array> = (2..2 + 2 * width)
            .filter_map(|i| column(i).downcast_ref::<Float64Array>())
            .collect();
        self.history.clear();
        for i in 0..state.num_rows() {
            let point = Point {
                start: starts.value(i),
                data: (0..width)
                    .map(|j| floats[2 * j].value(i))
                    .chain((0..width).map(|j| floats[2 * j + 1].value(i)))
                    .collect(),
            };
            self.history
                .entry(Box::from(keys(i)))
                .or_default()
                .points
                .push(point);
        }
        for history in self.history.values_mut() {
            history.points.sort_by_key(|p| p.start);
            history.resort(width);
        }
        Ok(())
    }
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

/// Against `sorted` (a baseline's values, ascending): its median and `(x − median) /
/// (1.4826 × MAD)`; none when it has fewer than `min` values, no z-score when it has no spread.
fn robust_z(x: f64, sorted: &[f64], min: usize) -> Option<(f64, Option<f64>)> {
    if sorted.len() < min.max(1) {
        return None;
    }
    let (median, mad) = stats::median_and_mad_sorted(sorted)?;
    Some((
        median,
        (mad > 0.0).then(|| (x - median) / (MAD_TO_SIGMA * mad)),
    ))
}

/// The checkpoint part of a stage's carried-feature history.
const STATE_PART: &str = "carry";

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
        Ok(OperatorState::part(
            STATE_PART,
            vec![CarryOperator::snapshot(self)?],
        ))
    }

    fn restore(&mut self, state: OperatorState) -> operator::Result<()> {
        if let Some(b) = state.parts.get(STATE_PART).and_then(|p| p.first()) {
            CarryOperator::restore(self, b)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{AsArray, StringArray};
    use arrow::datatypes::{Float64Type, TimeUnit};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

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
        for (n, chunk) in rows.chunks(7).enumerate() {
            if n % 5 == 4 {
                let state = op.snapshot().unwrap();
                let mut restored = CarryOperator::new(spec.clone(), &schema()).unwrap();
                restored.restore(&state).unwrap();
                op = restored;
            }
            let out = op.apply(&batch(chunk)).unwrap();
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
    }

    #[test]
    fn a_snapshot_holds_each_key_once_and_old_snapshots_with_a_key_per_window_restore() {
        let rows: Vec<(&str, i64, Option<f64>)> = (0..6)
            .flat_map(|m| {
                [
                    ("a", m * MINUTE, Some(m as f64)),
                    ("b", m * MINUTE, Some(10.0 - m as f64)),
                ]
            })
            .collect();
        let mut op = CarryOperator::new(spec(2), &schema()).unwrap();
        op.apply(&batch(&rows)).unwrap();
        let state = op.snapshot().unwrap();
        assert_eq!(state.num_rows(), 12);
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
        let next = batch(&[("a", 6 * MINUTE, Some(9.0)), ("b", 6 * MINUTE, Some(1.0))]);
        let want = op.apply(&next).unwrap();
        for state in [&state, &legacy] {
            let mut restored = CarryOperator::new(spec(2), &schema()).unwrap();
            restored.restore(state).unwrap();
            assert_eq!(restored.apply(&next).unwrap(), want);
        }
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
        // Minutes 0..10 except 5, then 5 arrives late, then 10 and 11: every z-score equals the
        // reference over the complete series.
        let spec = spec(3);
        let mut op = CarryOperator::new(spec.clone(), &schema()).unwrap();
        let value = |m: i64| ((m * 37) % 11) as f64;
        let early: Vec<_> = (0..10)
            .filter(|&m| m != 5)
            .map(|m| ("a", m * MINUTE, Some(value(m))))
            .collect();
        op.apply(&batch(&early)).unwrap();
        op.apply(&batch(&[("a", 5 * MINUTE, Some(value(5)))]))
            .unwrap();
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
