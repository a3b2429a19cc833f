//! Forecasts in the stream: a pipeline's `forecast` stage, and the registry-followed forecast
//! model it shares with the spot recommendations.
//!
//! In: rows of an hourly stage (its key columns, the hour's start, a value such as the hour's
//! mean spot price), and the stage's input watermark. Per key the values form a step series
//! (an hour without a row held the value before it). Out: for every hour the watermark closes,
//! once the key has `min_history` of series, one row per horizon: the key, the origin (`ts`,
//! the hour), `target_ts` (origin + horizon), the value at the origin, and the forecast's 2.5,
//! 10, 50, 90 and 97.5 % quantiles — the 80 % and 95 % prediction intervals — with the
//! `model_version` in use and the `forecaster` that gave the median. A forecast from an origin
//! uses only the series up to that origin (see `forecast::model::features` and
//! `forecast::blend::candidates`), so a replay gives the same rows; an hour revised after its
//! forecast updates the series, not the forecast.
//!
//! What is issued is the blend's ([`Blend`]): per key and horizon, the model or one of the
//! simple forecasters, whichever has had the lowest recent error on that key, with intervals
//! from the key's own recent errors, adapted to their nominal coverage.
//!
//! The model (`FEATURES` in, `QUANTILES` of the relative change out; `models/train_forecast.py`)
//! follows the registry like a score stage's: every `poll` an unpinned reference is resolved
//! again and a newer version swapped in between batches, so no row is forecast twice or
//! skipped. State: per key the trailing 8 days of hourly values; the blend's per-key errors and
//! the forecasts awaiting their hour; as JSON in the checkpoint. A key that stops reporting is
//! forecast (its last value held) until that value is 8 days old, then forgotten.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, TimestampMicrosecondArray};
use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use serde::{Deserialize, Serialize};

use super::accuracy::{self, Residuals};
use super::blend::{self, Blend, Issued, MODEL};
use super::config::DegradedSpec;
use super::model::{FEATURES, ForecastError, ForecastModel, QUANTILES, Steps, features, offset};
use crate::operator::{self, Collector, Context, Operator, OperatorState};
use crate::score::drift::{self, Binned, DriftSpec, InputDrift};
use crate::score::health::{self, Figure, Health};
use crate::score::registry::{Follower, ModelRef, Refresh, RefreshError, Registry, Swap};

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
    /// Its manifest's training distribution of each input, if it records one.
    pub distribution: Option<Vec<Binned>>,
    /// How its inputs are watched for drift.
    pub drift: DriftSpec,
}

impl ForecastRef {
    pub fn label(&self) -> String {
        format!("{}@{}", self.reference.name, self.version)
    }
}

/// The drift of `label`'s inputs, watched when its manifest records their training
/// distribution (said in the log when it does not).
fn watch(label: &str, distribution: Option<Vec<Binned>>, spec: &DriftSpec) -> Option<InputDrift> {
    if distribution.is_none() {
        tracing::warn!(
            model = %label,
            "its manifest records no training distribution, so its input drift is not watched; \
             retrain it (scripts/train) or record one (models/record_distribution.py)"
        );
    }
    distribution.map(|b| InputDrift::new(b, spec.rows).ignoring(&spec.ignore))
}

/// A loaded forecast model that swaps in newer registered versions of an unpinned reference
/// (see [`Follower`]).
pub struct FollowedForecast {
    model: ForecastModel,
    registry: Registry,
    follow: Follower,
    /// Its inputs against their training distributions, when its manifest records them.
    drift: Option<InputDrift>,
    drift_spec: DriftSpec,
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
            drift: watch(&from.label(), from.distribution.clone(), &from.drift),
            drift_spec: from.drift.clone(),
        })
    }

    /// Between cycles: swaps in a newer version ([`refresh`](Self::refresh)), logs it, and
    /// keeps the drift gauges to the version in use.
    pub async fn on_cycle_start(&mut self, ctx: &Context<'_>) {
        let before = self.watched();
        if let Some(change) = self.refresh().await {
            crate::score::report_refresh(ctx, change);
        }
        let now = self.watched();
        if let Some((label, inputs)) = before.filter(|b| Some(b) != now.as_ref()) {
            drift::forget(ctx, &label, &inputs);
        }
        if let Some((label, _)) = now {
            drift::export_thresholds(ctx, &label, &self.drift_spec);
        }
    }

    /// Sets the drift gauges of the inputs watched, once their window is full.
    pub fn report_drift(&self, ctx: &Context<'_>) {
        if let Some(d) = &self.drift {
            drift::report(ctx, self.label(), d);
        }
    }

    /// The version in use and its inputs, when they are watched.
    fn watched(&self) -> Option<(String, Vec<String>)> {
        let d = self.drift.as_ref()?;
        Some((
            self.label().to_string(),
            d.inputs().map(str::to_string).collect(),
        ))
    }

    /// `name@version` of the model in use.
    pub fn label(&self) -> &str {
        &self.model.label
    }

    pub fn predict(&mut self, rows: &[f32]) -> Result<Vec<[f64; 5]>, ForecastError> {
        if let Some(d) = self.drift.as_mut() {
            d.observe(rows);
        }
        self.model.predict(rows)
    }

    /// Every `poll`, loads a newer registered version of an unpinned reference; says what
    /// changed. A version that cannot be used is reported once and the current one kept.
    pub async fn refresh(&mut self) -> Option<Refresh> {
        let (version, next) = match self.follow.newer(&self.registry).await? {
            Ok(newer) => newer,
            Err(source) => {
                return Some(Err(RefreshError::Lookup {
                    current: self.label().to_string(),
                    source,
                }));
            }
        };
        let name = self.follow.reference().name.clone();
        let distribution = next.manifest.input_distribution.clone();
        let features: Vec<&str> = next.manifest.feature_names().collect();
        let loaded = if features != FEATURES {
            Err(RefreshError::NotForecast {
                current: self.label().to_string(),
                name,
                version,
                inputs: features.iter().map(|f| f.to_string()).collect(),
            })
        } else {
            ForecastModel::new(&format!("{name}@{version}"), &next.onnx).map_err(|e| {
                RefreshError::Unusable {
                    current: self.label().to_string(),
                    name,
                    version,
                    source: Box::new(e),
                }
            })
        };
        match loaded {
            Ok(model) => {
                let change = Swap {
                    from: self.model.label.clone(),
                    to: model.label.clone(),
                };
                self.drift = watch(&model.label, distribution, &self.drift_spec);
                self.model = model;
                self.follow.accept(version);
                Some(Ok(change))
            }
            Err(e) => {
                self.follow.reject(version);
                Some(Err(e))
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
    /// Whether it writes its accuracy rows to its side output.
    pub accuracy: bool,
    /// With health rows (`score::health`): how long a degraded model must stay so, µs.
    pub health_sustain: Option<i64>,
    pub degraded: DegradedSpec,
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
        fields.push(Field::new("forecaster", DataType::Utf8, false));
        Arc::new(Schema::new(fields))
    }
}

/// One output row: from `origin`, the quantiles of the value `horizon` (µs) on.
struct Forecast<'a> {
    key: &'a str,
    origin: i64,
    value: f64,
    horizon: i64,
    issued: Issued,
}

/// What a forecast stage keeps: per key its series and the last hour it forecast from; the
/// blend's choices and intervals with the forecasts still awaiting their target. (Checkpoints
/// from before the blend held pooled widths as `adaptive`: ignored, the blend learns again.)
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ForecastState {
    series: HourlySeries,
    forecast_to: BTreeMap<String, i64>,
    #[serde(default)]
    blend: Blend,
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

/// A running forecast stage.
pub struct ForecastOperator {
    spec: ForecastSpec,
    output: SchemaRef,
    model: FollowedForecast,
    state: ForecastState,
    /// Forecasts met by their actuals since they were last counted.
    outcomes: Vec<blend::Outcome>,
    /// Each key's recent errors, for the Ljung–Box gauge.
    residuals: Residuals,
    /// The schema of its accuracy rows, if it writes them.
    accuracy: Option<SchemaRef>,
    /// Its model's accuracy over event time, if it writes health rows, and per horizon the
    /// percentage and symmetric percentage errors of the last forecasts met.
    health: Option<(Health, Vec<RecentErrors>)>,
    /// Whether its accuracy series are exported yet.
    exported: bool,
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
            accuracy: spec.accuracy.then(|| accuracy::schema(&spec.key)),
            health: spec.health_sustain.map(|s| {
                (
                    Health::new("accuracy", s),
                    vec![VecDeque::new(); spec.horizons.len()],
                )
            }),
            spec,
            state: ForecastState::default(),
            outcomes: Vec::new(),
            residuals: Residuals::default(),
            exported: false,
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
        // In time order over all keys (the pooled widths are shared, so no key's forecast may
        // learn from a later hour of another): first learn from every forecast whose target has
        // come by this origin, then issue this origin's.
        let mut order: Vec<usize> = (0..made.len()).collect();
        order.sort_by(|&a, &b| (made[a].1, &made[a].0).cmp(&(made[b].1, &made[b].0)));
        let mut out: Vec<Forecast> = Vec::with_capacity(predicted.len());
        let series = &self.state.series;
        let blend = &mut self.state.blend;
        for i in order {
            let (key, origin, value, levels, c) = &made[i];
            let met = blend.resolve(*origin, |k, t| series.get(k).and_then(|p| value_at(p, t)));
            self.outcomes.extend(met);
            let Some(points) = series.get(key) else {
                continue;
            };
            for (j, (&h, &level)) in self.spec.horizons.iter().zip(levels).enumerate() {
                let q = to_values(predicted[i * horizons + j], level, *c);
                let mut candidates = [None; MODEL + 1];
                candidates[..MODEL].copy_from_slice(&blend::candidates(
                    |t| value_at(points, t),
                    *origin,
                    h,
                ));
                candidates[MODEL] = Some(q[2]);
                let Some(issued) = blend.issue(key, j, horizons, origin + h, candidates, Some(q))
                else {
                    continue;
                };
                out.push(Forecast {
                    key,
                    origin: *origin,
                    value: *value,
                    horizon: h,
                    issued,
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
            self.residuals.forget(&key);
            state.blend.forget(&key);
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
                rows.iter().map(|r| r.issued.quantiles[j]),
            )));
        }
        let model = self.model.label();
        columns.push(Arc::new(StringArray::from(vec![model; rows.len()])));
        columns.push(Arc::new(StringArray::from_iter_values(
            rows.iter()
                .map(|r| blend::forecaster_name(r.issued.forecaster, model)),
        )));
        RecordBatch::try_new(self.output.clone(), columns)
    }
}

/// A horizon's percentage (none when the actual was 0) and symmetric percentage errors of its
/// last forecasts met, oldest first.
type RecentErrors = VecDeque<(Option<f64>, f64)>;

/// Keeps the errors of `outcomes` in `errors` (per horizon, the last `spec.outcomes`), and gives
/// each horizon's degradation once it holds that many: its MAPE and sMAPE over the thresholds
/// of `spec`, the larger of the two.
fn degradation(
    errors: &mut [RecentErrors],
    outcomes: &[blend::Outcome],
    horizons: &[i64],
    model: &str,
    spec: &DegradedSpec,
) -> Vec<Figure> {
    for o in outcomes {
        if let Some(kept) = errors.get_mut(o.horizon) {
            if kept.len() == spec.outcomes {
                kept.pop_front();
            }
            kept.push_back((o.pct_error(), o.sym_pct_error()));
        }
    }
    errors
        .iter()
        .zip(horizons)
        .filter(|(kept, _)| kept.len() == spec.outcomes)
        .map(|(kept, h)| {
            let smape = kept.iter().map(|e| e.1).sum::<f64>() / kept.len() as f64;
            let pct: Vec<f64> = kept.iter().filter_map(|e| e.0).collect();
            let mape = match pct.is_empty() {
                true => 0.0,
                false => pct.iter().sum::<f64>() / pct.len() as f64,
            };
            Figure {
                model: model.to_string(),
                subject: accuracy::horizon_label(*h),
                ratio: (mape / spec.mape).max(smape / spec.smape),
            }
        })
        .collect()
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
        ctx: &Context<'_>,
        out: &mut Collector,
    ) -> operator::Result<i64> {
        if watermark != i64::MIN
            && let Some(rows) = self.advance(watermark)?
        {
            out.collect(rows);
        }
        let outcomes = std::mem::take(&mut self.outcomes);
        let (horizons, model) = (&self.spec.horizons, self.model.label());
        accuracy::report(&outcomes, horizons, model, ctx);
        self.residuals.observe(&outcomes);
        self.residuals.report(horizons, model, ctx);
        if let Some(schema) = self.accuracy.as_ref().filter(|_| !outcomes.is_empty()) {
            out.side(
                accuracy::OUTPUT,
                accuracy::rows(&outcomes, horizons, model, schema)?,
            );
        }
        if let Some((health, errors)) = self.health.as_mut() {
            let figures = degradation(errors, &outcomes, horizons, model, &self.spec.degraded);
            if let Some(rows) = health.advance(watermark, ctx.scope, &figures)? {
                out.side(health::OUTPUT, rows);
            }
        }
        self.model.report_drift(ctx);
        Ok(watermark)
    }

    async fn on_cycle_start(&mut self, ctx: &Context<'_>) {
        if !std::mem::replace(&mut self.exported, true) {
            accuracy::export(&self.spec.horizons, self.model.label(), ctx);
        }
        self.model.on_cycle_start(ctx).await;
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
    fn quantiles_come_back_in_the_value_unit_and_in_order() {
        let c = 0.01;
        let level = (2.0f64 + c).ln();
        let q = to_values([0.1, -0.1, 0.0, 0.2, -0.2], level, c);
        assert!((q[2] - 2.0).abs() < 1e-12);
        assert!(q.windows(2).all(|w| w[0] <= w[1]), "{q:?}");
    }
}
