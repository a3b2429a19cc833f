//! Forecasts in the stream: a pipeline's `forecast` stage, and the registry-followed forecast
//! model it shares with the spot recommendations.
//!
//! In: rows of an hourly stage (its key columns, the hour's start, a value such as the hour's
//! mean spot price), and the stage's input watermark. Per key the values form a step series
//! (an hour without a row held the value before it). Out: for every hour the watermark closes,
//! once the key has `min_history` of series, one row per horizon: the key, the origin (`ts`,
//! the hour), `target_ts` (origin + horizon), the value at the origin, and the forecast's 2.5,
//! 10, 50, 90 and 97.5 % quantiles with the `model_version` that gave them — the 80 % and 95 %
//! prediction intervals. A forecast from an origin uses only the series up to that origin (see
//! `forecast::model::features`), so a replay gives the same rows; an hour revised after its
//! forecast updates the series, not the forecast.
//!
//! The intervals adapt ([`Adaptive`]): per horizon, their widths follow how often the stage's
//! earlier forecasts (every key's) missed, once those forecasts' hours have come.
//!
//! The model (`FEATURES` in, `QUANTILES` of the relative change out; `models/train_forecast.py`)
//! follows the registry like a score stage's: every `poll` an unpinned reference is resolved
//! again and a newer version swapped in between batches, so no row is forecast twice or
//! skipped. State: per key the trailing 8 days of hourly values; the adaptive widths and the
//! forecasts awaiting their hour; as JSON in the checkpoint. A key that stops reporting is
//! forecast (its last value held) until that value is 8 days old, then forgotten.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, TimestampMicrosecondArray};
use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use serde::{Deserialize, Serialize};

use super::model::{FEATURES, ForecastError, ForecastModel, QUANTILES, Steps, features, offset};
use crate::operator::{self, Collector, Context, Operator, OperatorState};
use crate::score::registry::{Follower, ModelRef, Registry};

const HOUR: i64 = 3_600_000_000;
/// History kept per key: a week of lags and a day to spare.
const KEEP: i64 = 8 * 24 * HOUR;
/// The longest look-back of the model's features (`mean_7d`).
const LOOK_BACK: i64 = 7 * 24 * HOUR;

/// A forecast model as resolved when the pipeline was checked, and how to follow it.
#[derive(Debug, Clone)]
pub struct ForecastRef {
    pub reference: ModelRef,
    pub version: u32,
    pub onnx: Arc<Vec<u8>>,
    /// The registry's location.
    pub registry: String,
    pub poll: Duration,
}

impl ForecastRef {
    pub fn label(&self) -> String {
        format!("{}@{}", self.reference.name, self.version)
    }
}

/// A loaded forecast model that swaps in newer registered versions of an unpinned reference
/// (see [`Follower`]).
pub struct FollowedForecast {
    model: ForecastModel,
    registry: Registry,
    follow: Follower,
}

impl FollowedForecast {
    /// `storage_options` reach an `s3://` registry: the run's, as its tables get.
    pub fn open(
        from: &ForecastRef,
        storage_options: &HashMap<String, String>,
    ) -> Result<Self, ForecastError> {
        Ok(FollowedForecast {
            model: ForecastModel::new(&from.label(), &from.onnx)?,
            registry: Registry::open(&from.registry, storage_options)?,
            follow: Follower::new(from.reference.clone(), from.version, from.poll),
        })
    }

    /// `name@version` of the model in use.
    pub fn label(&self) -> &str {
        &self.model.label
    }

    pub fn predict(&mut self, rows: &[f32]) -> Result<Vec<[f64; 5]>, ForecastError> {
        self.model.predict(rows)
    }

    /// Every `poll`, loads a newer registered version of an unpinned reference; says what
    /// changed. A version that cannot be used is reported once and the current one kept.
    pub async fn refresh(&mut self) -> Option<Result<String, String>> {
        let (version, next) = match self.follow.newer(&self.registry).await? {
            Ok(newer) => newer,
            Err(e) => return Some(Err(format!("{} stays: {e}", self.label()))),
        };
        let name = self.follow.reference().name.clone();
        let features: Vec<&str> = next.manifest.feature_names().collect();
        let loaded = if features != FEATURES {
            Err(format!("not a forecast model (inputs {features:?})"))
        } else {
            ForecastModel::new(&format!("{name}@{version}"), &next.onnx).map_err(|e| e.to_string())
        };
        match loaded {
            Ok(model) => {
                let change = format!("{} replaces {}", model.label, self.model.label);
                self.model = model;
                self.follow.accept(version);
                Some(Ok(change))
            }
            Err(e) => {
                self.follow.reject(version);
                Some(Err(format!(
                    "{} stays: {name}@{version} cannot be used: {e}",
                    self.label()
                )))
            }
        }
    }
}

/// Per key, its hourly values as a step series: (hour start µs, value), oldest first.
/// Serialised as the bare map (the form spot recommend checkpoints had before it was shared).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HourlySeries {
    series: BTreeMap<String, VecDeque<(i64, f64)>>,
}

impl HourlySeries {
    /// Records `value` for `key` at hour `t` (a revised hour replaces its value), keeping the
    /// trailing 8 days and the value in force when they begin. Returns the new start of the
    /// key's history when older values were dropped.
    pub fn insert(&mut self, key: &str, t: i64, value: f64) -> Option<i64> {
        if !self.series.contains_key(key) {
            self.series.insert(key.to_string(), VecDeque::new());
        }
        let points = self.series.get_mut(key)?;
        match points.iter().rposition(|(h, _)| *h <= t) {
            Some(j) if points[j].0 == t => points[j].1 = value,
            Some(j) => points.insert(j + 1, (t, value)),
            None => points.push_front((t, value)),
        }
        let cutoff = points.back().map_or(t, |p| p.0) - KEEP;
        let mut dropped = false;
        while points.get(1).is_some_and(|p| p.0 <= cutoff) {
            points.pop_front();
            dropped = true;
        }
        dropped.then_some(cutoff)
    }

    pub fn get(&self, key: &str) -> Option<&VecDeque<(i64, f64)>> {
        self.series.get(key)
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.series.keys().map(String::as_str)
    }

    fn remove(&mut self, key: &str) {
        self.series.remove(key);
    }
}

/// The model's input rows for forecasting each of `horizons` (µs) from `origin`, with each
/// row's `ln(y + c)` level and the offset `c`; none before `min_history` of series or where the
/// series has no value at the origin.
pub fn inputs(
    points: &VecDeque<(i64, f64)>,
    origin: i64,
    horizons: &[i64],
    min_history: i64,
) -> Option<(Vec<f32>, Vec<f64>, f64)> {
    let first = points.front()?.0;
    if origin - first < min_history {
        return None;
    }
    let known = points.partition_point(|p| p.0 <= origin);
    if known < 2 {
        return None;
    }
    let steps = Steps {
        name: String::new(),
        times: points.iter().take(known).map(|p| p.0).collect(),
        values: points.iter().take(known).map(|p| p.1).collect(),
    };
    let c = offset(&steps, origin);
    let mut rows = Vec::new();
    let mut levels = Vec::new();
    for &h in horizons {
        let (f, level) = features(&steps, origin, h, 24 * HOUR, c)?;
        rows.extend(f);
        levels.push(level);
    }
    Some((rows, levels, c))
}

/// Quantiles of the relative change (`ln` units) back to values, ascending.
pub fn to_values(relative: [f64; 5], level: f64, c: f64) -> [f64; 5] {
    let mut q = relative.map(|r| (level + r).exp() - c);
    q.sort_by(f64::total_cmp);
    q
}

/// A checked forecast stage.
#[derive(Debug, Clone)]
pub struct ForecastSpec {
    /// Key columns of the input, then its hour's start and value.
    pub key: Vec<String>,
    pub time: String,
    pub value: String,
    /// µs, ascending.
    pub horizons: Vec<i64>,
    pub min_history: i64,
    pub model: ForecastRef,
}

impl ForecastSpec {
    /// The rows it writes.
    pub fn output_schema(&self) -> SchemaRef {
        let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        let mut fields: Vec<Field> = self
            .key
            .iter()
            .map(|k| Field::new(k, DataType::Utf8, false))
            .collect();
        fields.extend([
            Field::new("ts", ts.clone(), false),
            Field::new("target_ts", ts, false),
            Field::new("horizon_hours", DataType::Int64, false),
            Field::new("value", DataType::Float64, false),
        ]);
        for (q, _) in QUANTILES {
            fields.push(Field::new(
                format!("p{}", &q[1..]),
                DataType::Float64,
                false,
            ));
        }
        fields.push(Field::new("model_version", DataType::Utf8, false));
        Arc::new(Schema::new(fields))
    }
}

/// One output row: from `origin`, the quantiles of the value `horizon` (µs) on.
struct Forecast<'a> {
    key: &'a str,
    origin: i64,
    value: f64,
    horizon: i64,
    quantiles: [f64; 5],
}

/// What a forecast stage keeps: per key its series and the last hour it forecast from; the
/// adaptive interval widths with the forecasts still awaiting their target. (Checkpoints from
/// before the widths were pooled held them per key as `adapt`: ignored, the widths learn again.)
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ForecastState {
    series: HourlySeries,
    forecast_to: BTreeMap<String, i64>,
    #[serde(default)]
    adaptive: Adaptive,
    /// Per key, the start of its kept history once older values were dropped: origins less
    /// than a week after it would see a shorter history than they did live.
    #[serde(default)]
    trimmed_to: BTreeMap<String, i64>,
}

/// The value of a step series at `t`: its last one at or before `t`.
pub fn value_at(points: &VecDeque<(i64, f64)>, t: i64) -> Option<f64> {
    let i = points.partition_point(|p| p.0 <= t);
    i.checked_sub(1).map(|i| points[i].1)
}

/// Step size of the adaptive widths, in ln units (Gibbs and Candès use γ = 0.005 on α; this is
/// its width form, tuned so a week of hourly forecasts moves a width by a few tens of percent).
pub const ADAPT_RATE: f64 = 0.05;
/// Nominal miss rates of the 95 % and 80 % intervals.
const MISS: [f64; 2] = [0.05, 0.2];

/// Adaptive conformal inference (Gibbs and Candès, 2021), in width form, per horizon and pooled
/// over the keys: the 95 % and 80 % intervals' distances from the median are multiplied by a
/// factor whose logarithm rises by `ADAPT_RATE × (1 − α)` after each miss and falls by
/// `ADAPT_RATE × α` after each hit, so over time an interval misses at its nominal rate α even
/// where the model's own calibration (fitted on other data) is off. How far the calibration is
/// off is a property of the model against the data it now sees, so every key's forecasts teach
/// one factor per horizon: a day-ahead interval learns from every key's misses instead of from
/// a key's own 24 a day. (Measured: per key, the 24 h 80 % interval of `cpu_demand@3` stayed at
/// 68 % coverage over three held-out days; pooled it reaches 79 %.) What differs between keys
/// — a volatile pool against a quiet one — the model's quantiles carry already.
///
/// A forecast is learnt from only once its target time has come, so an interval depends on
/// nothing after its origin; feed origins in time order.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound(serialize = "K: Serialize", deserialize = "K: Deserialize<'de>"))]
pub struct Adaptive<K = String> {
    /// Per horizon: ln of the factor on the 95 % and on the 80 % interval.
    log_scale: Vec<[f64; 2]>,
    /// Issued forecasts awaiting their target (µs): (key, horizon index, quantiles issued).
    pending: BTreeMap<i64, Vec<(K, usize, [f64; 5])>>,
}

impl<K> Default for Adaptive<K> {
    fn default() -> Self {
        Adaptive {
            log_scale: Vec::new(),
            pending: BTreeMap::new(),
        }
    }
}

impl<K> Adaptive<K> {
    /// Learns from every pending forecast whose target is at or before `now`; `actual` gives a
    /// key's value at a time (none: the forecast is dropped unlearnt).
    pub fn resolve(&mut self, now: i64, actual: impl Fn(&K, i64) -> Option<f64>) {
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() > now {
                break;
            }
            let target = *entry.key();
            for (key, j, q) in entry.remove() {
                let (Some(y), Some(scale)) = (actual(&key, target), self.log_scale.get_mut(j))
                else {
                    continue;
                };
                let missed = [y < q[0] || y > q[4], y < q[1] || y > q[3]];
                for ((s, missed), alpha) in scale.iter_mut().zip(missed).zip(MISS) {
                    *s = (*s + ADAPT_RATE * (f64::from(u8::from(missed)) - alpha)).clamp(-4.0, 4.0);
                }
            }
        }
    }

    /// `q` (ascending) with horizon `j`'s widths applied, remembered for `key` until `target`.
    pub fn issue(
        &mut self,
        key: K,
        j: usize,
        horizons: usize,
        target: i64,
        q: [f64; 5],
    ) -> [f64; 5] {
        if self.log_scale.len() < horizons {
            self.log_scale.resize(horizons, [0.0; 2]);
        }
        let [s95, s80] = self.log_scale[j].map(f64::exp);
        let m = q[2];
        let mut out = [
            m - s95 * (m - q[0]),
            m - s80 * (m - q[1]),
            m,
            m + s80 * (q[3] - m),
            m + s95 * (q[4] - m),
        ];
        // The 95 % interval holds the 80 % one.
        out[0] = out[0].min(out[1]);
        out[4] = out[4].max(out[3]);
        self.pending.entry(target).or_default().push((key, j, out));
        out
    }

    /// The current factors on the 95 % and 80 % widths at horizon `j`.
    pub fn factors(&self, j: usize) -> [f64; 2] {
        self.log_scale.get(j).map_or([1.0; 2], |s| s.map(f64::exp))
    }
}

/// A running forecast stage.
pub struct ForecastOperator {
    spec: ForecastSpec,
    output: SchemaRef,
    model: FollowedForecast,
    state: ForecastState,
}

impl ForecastOperator {
    /// `storage_options` reach an `s3://` registry.
    pub fn open(
        spec: ForecastSpec,
        storage_options: &HashMap<String, String>,
    ) -> Result<Self, ForecastError> {
        Ok(ForecastOperator {
            model: FollowedForecast::open(&spec.model, storage_options)?,
            output: spec.output_schema(),
            spec,
            state: ForecastState::default(),
        })
    }

    pub fn model(&mut self) -> &mut FollowedForecast {
        &mut self.model
    }

    pub fn output_schema(&self) -> SchemaRef {
        self.output.clone()
    }

    /// The per-key history, as JSON for the checkpoint.
    pub fn state_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(&self.state)
    }

    /// Restores what [`state_json`](Self::state_json) gave.
    pub fn restore_state(&mut self, json: &str) -> Result<(), serde_json::Error> {
        self.state = serde_json::from_str(json)?;
        Ok(())
    }

    /// Learns the batch's hours (a revised hour replaces its value; forecasts already made
    /// from later hours stand).
    pub fn apply(&mut self, batch: &RecordBatch) -> Result<(), ArrowError> {
        let schema = batch.schema();
        let key_columns: Vec<usize> = self
            .spec
            .key
            .iter()
            .map(|k| schema.index_of(k))
            .collect::<Result<_, _>>()?;
        let keys = crate::keys::of_rows(batch, &key_columns)?;
        let times = crate::columns::micros(batch, &self.spec.time)?;
        let values = crate::columns::f64s(batch, &self.spec.value)?;
        for (i, key) in keys.into_iter().enumerate() {
            let Some(key) = key else {
                continue;
            };
            if times.is_null(i) || values.is_null(i) || !values.value(i).is_finite() {
                continue;
            }
            let (t, v) = (times.value(i), values.value(i));
            if let Some(start) = self.state.series.insert(&key, t, v) {
                self.state.trimmed_to.insert(key, start);
            }
        }
        Ok(())
    }

    /// Forecasts from every hour up to the input's `watermark` (in the time column's terms: a
    /// window stage's output watermark is the start of the last window it has emitted) — hours
    /// without a row hold the value before them. Rows in time order.
    pub fn advance(&mut self, watermark: i64) -> Result<Option<RecordBatch>, ArrowError> {
        self.forget_finished_keys();
        let newest = self
            .state
            .series
            .keys()
            .filter_map(|k| self.state.series.get(k)?.back().map(|p| p.0))
            .max();
        let Some(newest) = newest else {
            return Ok(None);
        };
        // No further than the series reach: a watermark far past every key's data (none in
        // practice) does not forecast from hours no value was ever seen near.
        let until = watermark
            .div_euclid(HOUR)
            .saturating_mul(HOUR)
            .min(newest + KEEP);
        let mut rows = Vec::new();
        let mut made: Vec<(String, i64, f64, Vec<f64>, f64)> = Vec::new();
        for key in self.state.series.keys() {
            let Some(points) = self.state.series.get(key) else {
                continue;
            };
            let Some(first) = points.front().map(|p| p.0) else {
                continue;
            };
            let done = self.state.forecast_to.get(key).copied();
            // From the first hour with enough history, or the hour after the last forecast; after
            // a long catch-up, no earlier than the kept history covers the features' week.
            let trimmed = self.state.trimmed_to.get(key).map(|t| t + LOOK_BACK);
            let from = done
                .map_or(first.saturating_add(self.spec.min_history), |d| d + HOUR)
                .max(trimmed.unwrap_or(i64::MIN))
                .div_euclid(HOUR)
                * HOUR;
            // A key that went silent is forecast while its last value is within `KEEP`.
            let last = points.back().map_or(first, |p| p.0);
            let until = until.min(last.saturating_add(KEEP));
            let mut origin = from;
            while origin <= until {
                if let Some((r, levels, c)) =
                    inputs(points, origin, &self.spec.horizons, self.spec.min_history)
                {
                    let at = points.partition_point(|p| p.0 <= origin);
                    rows.extend(r);
                    made.push((key.to_string(), origin, points[at - 1].1, levels, c));
                }
                origin += HOUR;
            }
        }
        if made.is_empty() {
            return Ok(None);
        }
        let predicted = self
            .model
            .predict(&rows)
            .map_err(|e| ArrowError::ExternalError(Box::new(e)))?;
        let horizons = self.spec.horizons.len();
        if predicted.len() != made.len() * horizons {
            return Err(ArrowError::ComputeError(format!(
                "{}: {} outputs for {} rows",
                self.model.label(),
                predicted.len(),
                made.len() * horizons
            )));
        }
        // In time order over all keys (the widths are shared, so no key's forecast may learn from
        // a later hour of another): first learn from every forecast whose target has come by
        // this origin, then widen this origin's intervals.
        let mut order: Vec<usize> = (0..made.len()).collect();
        order.sort_by(|&a, &b| (made[a].1, &made[a].0).cmp(&(made[b].1, &made[b].0)));
        let mut out: Vec<Forecast> = Vec::with_capacity(predicted.len());
        let series = &self.state.series;
        let adaptive = &mut self.state.adaptive;
        for i in order {
            let (key, origin, value, levels, c) = &made[i];
            adaptive.resolve(*origin, |k, t| series.get(k).and_then(|p| value_at(p, t)));
            for (j, (&h, &level)) in self.spec.horizons.iter().zip(levels).enumerate() {
                let q = predicted[i * horizons + j];
                let quantiles = adaptive.issue(
                    key.clone(),
                    j,
                    horizons,
                    origin + h,
                    to_values(q, level, *c),
                );
                out.push(Forecast {
                    key,
                    origin: *origin,
                    value: *value,
                    horizon: h,
                    quantiles,
                });
            }
            let done = self.state.forecast_to.entry(key.clone()).or_insert(*origin);
            *done = (*done).max(*origin);
        }
        self.batch(&out).map(Some)
    }

    /// Drops the keys forecast up to `KEEP` past their last value (a pool or resource that
    /// stopped reporting): nothing more comes from them, so neither does their state.
    fn forget_finished_keys(&mut self) {
        let state = &mut self.state;
        let finished: Vec<String> = state
            .forecast_to
            .iter()
            .filter(|(key, done)| {
                state
                    .series
                    .get(key)
                    .and_then(|p| p.back())
                    .is_none_or(|last| **done >= (last.0 + KEEP).div_euclid(HOUR) * HOUR)
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in finished {
            state.series.remove(&key);
            state.forecast_to.remove(&key);
            state.trimmed_to.remove(&key);
        }
    }

    fn batch(&self, rows: &[Forecast]) -> Result<RecordBatch, ArrowError> {
        let mut columns: Vec<ArrayRef> = (0..self.spec.key.len())
            .map(|j| {
                Arc::new(StringArray::from_iter_values(
                    rows.iter()
                        .map(|r| crate::keys::split(r.key).nth(j).unwrap_or_default()),
                )) as ArrayRef
            })
            .collect();
        let micros = |f: &dyn Fn(&Forecast) -> i64| {
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(rows.iter().map(f))
                    .with_timezone("UTC"),
            ) as ArrayRef
        };
        columns.push(micros(&|r| r.origin));
        columns.push(micros(&|r| r.origin + r.horizon));
        columns.push(Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.horizon / HOUR),
        )));
        columns.push(Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|r| r.value),
        )));
        for j in 0..5 {
            columns.push(Arc::new(Float64Array::from_iter_values(
                rows.iter().map(|r| r.quantiles[j]),
            )));
        }
        columns.push(Arc::new(StringArray::from(vec![
            self.model
                .label()
                .to_string();
            rows.len()
        ])));
        RecordBatch::try_new(self.output.clone(), columns)
    }
}

/// The checkpoint part of a forecast stage's state.
const STATE_PART: &str = "forecasts";

impl From<ForecastError> for operator::OperatorError {
    fn from(e: ForecastError) -> Self {
        operator::OperatorError::Operator(Box::new(e))
    }
}

#[async_trait::async_trait]
impl Operator for ForecastOperator {
    async fn process_batch(
        &mut self,
        batch: &RecordBatch,
        _ctx: &Context<'_>,
        _out: &mut Collector,
    ) -> operator::Result<()> {
        Ok(self.apply(batch)?)
    }

    /// Forecasts from every hour the watermark closed.
    async fn handle_watermark(
        &mut self,
        watermark: i64,
        _ctx: &Context<'_>,
        out: &mut Collector,
    ) -> operator::Result<i64> {
        if watermark != i64::MIN
            && let Some(rows) = self.advance(watermark)?
        {
            out.collect(rows);
        }
        Ok(watermark)
    }

    async fn on_cycle_start(&mut self, ctx: &Context<'_>) {
        if let Some(change) = self.model.refresh().await {
            crate::score::report_refresh(ctx, change);
        }
    }

    fn snapshot(&self) -> operator::Result<OperatorState> {
        OperatorState::json(STATE_PART, &self.state)
    }

    fn restore(&mut self, state: OperatorState) -> operator::Result<()> {
        state.restore_json(STATE_PART, &mut self.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hourly_series_keep_order_replace_revisions_and_trail_eight_days() {
        let mut s = HourlySeries::default();
        s.insert("a", 3 * HOUR, 3.0);
        s.insert("a", HOUR, 1.0);
        s.insert("a", 2 * HOUR, 2.0);
        s.insert("a", 2 * HOUR, 2.5);
        let points: Vec<_> = s.get("a").unwrap().iter().copied().collect();
        assert_eq!(points, vec![(HOUR, 1.0), (2 * HOUR, 2.5), (3 * HOUR, 3.0)]);
        s.insert("a", 3 * HOUR + KEEP, 4.0);
        let points: Vec<_> = s.get("a").unwrap().iter().copied().collect();
        assert_eq!(points, vec![(3 * HOUR, 3.0), (3 * HOUR + KEEP, 4.0)]);
        assert!(s.get("b").is_none());
    }

    #[test]
    fn inputs_need_the_history_and_see_nothing_after_the_origin() {
        let mut points = VecDeque::new();
        for h in 0..72 {
            points.push_back((h * HOUR, 1.0 + (h % 5) as f64));
        }
        assert!(inputs(&points, 47 * HOUR, &[HOUR], 48 * HOUR).is_none());
        let (rows, levels, c) = inputs(&points, 48 * HOUR, &[HOUR, 6 * HOUR], 48 * HOUR).unwrap();
        assert_eq!(rows.len(), 2 * FEATURES.len());
        assert_eq!(levels.len(), 2);
        // The same inputs from a series that ends at the origin: nothing later is used.
        let cut: VecDeque<_> = points
            .iter()
            .copied()
            .filter(|p| p.0 <= 48 * HOUR)
            .collect();
        assert_eq!(
            inputs(&cut, 48 * HOUR, &[HOUR, 6 * HOUR], 48 * HOUR),
            Some((rows, levels, c))
        );
    }

    #[test]
    fn adaptive_widths_bring_a_miscalibrated_model_to_its_nominal_coverage() {
        use rand::SeedableRng;
        // The truth has σ = 1; the model believes σ = 0.4 (its 80 % interval covers 42 %) or
        // σ = 3 (it covers 99.9 %). Normal quantiles at 2.5, 10, 50, 90, 97.5 %.
        let z = [-1.96, -1.2816, 0.0, 1.2816, 1.96];
        for believed in [0.4, 3.0] {
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            let mut a = Adaptive::default();
            let mut truth: Vec<(i64, f64)> = Vec::new();
            let (mut in80, mut in95, mut n) = (0, 0, 0);
            for t in 0..6000i64 {
                // Forecast t + 3 from t: the 3-step lag before a forecast is learnt from.
                a.resolve(t, |_, target| {
                    truth.iter().find(|p| p.0 == target).map(|p| p.1)
                });
                let q = a.issue((), 0, 1, t + 3, z.map(|z| z * believed));
                let y = crate::generate::normal(&mut rng);
                truth.push((t + 3, y));
                if truth.len() > 8 {
                    truth.remove(0);
                }
                if t >= 3000 {
                    n += 1;
                    in80 += usize::from(q[1] <= y && y <= q[3]);
                    in95 += usize::from(q[0] <= y && y <= q[4]);
                }
            }
            let (c80, c95) = (in80 as f64 / n as f64, in95 as f64 / n as f64);
            assert!(
                (c80 - 0.8).abs() < 0.03,
                "believed σ {believed}: 80 % covers {c80}"
            );
            assert!(
                (c95 - 0.95).abs() < 0.02,
                "believed σ {believed}: 95 % covers {c95}"
            );
        }
    }

    #[test]
    fn adaptive_widths_learn_only_from_targets_that_have_come_and_serve_every_key() {
        let mut a = Adaptive::default();
        let q = [-2.0, -1.0, 0.0, 1.0, 2.0];
        assert_eq!(a.issue("a", 0, 1, 10, q), q);
        // Target 10 has not come at 9: nothing learnt, whatever the value would be.
        a.resolve(9, |_, _| Some(100.0));
        assert_eq!(a.factors(0), [1.0, 1.0]);
        a.resolve(10, |k, _| (*k == "a").then_some(100.0));
        let [f95, f80] = a.factors(0);
        assert!((f95 - (ADAPT_RATE * 0.95).exp()).abs() < 1e-12);
        assert!((f80 - (ADAPT_RATE * 0.8).exp()).abs() < 1e-12);
        // The widths are shared by the keys: a's miss widens b's next intervals.
        let b = a.issue("b", 0, 1, 20, q);
        assert!(
            (b[3] - f80).abs() < 1e-12 && (b[4] - 2.0 * f95).abs() < 1e-12,
            "{b:?}"
        );
    }

    #[test]
    fn quantiles_come_back_in_the_value_unit_and_in_order() {
        let c = 0.01;
        let level = (2.0f64 + c).ln();
        let q = to_values([0.1, -0.1, 0.0, 0.2, -0.2], level, c);
        assert!((q[2] - 2.0).abs() < 1e-12);
        assert!(q.windows(2).all(|w| w[0] <= w[1]), "{q:?}");
    }
}
