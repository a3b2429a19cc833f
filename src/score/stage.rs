//! A score stage: a model from the registry and the streaming detectors, applied to the rows of
//! an earlier stage.
//!
//! In: batches of an upstream stage's rows (window features). Each row's model inputs are the
//! columns the model's manifest names, in its order, as `float32`; a row with a null input gets
//! no model score. Per key (the `key` columns), the detectors watch the `value` column in the
//! order of the `time` column. Out: the input rows with these columns appended:
//! `model_version` (`name@version`) and `model_score` when a model is set; `anomaly_score` in
//! [0, 1] and one `c_<detector>` contribution per detector; `shadow_version` and `shadow_score`
//! when a shadow model is set — written, never part of `anomaly_score`.
//!
//! A model named without a version follows the registry: [`ScoreOperator::refresh`], called
//! between cycles, loads a newer version and swaps it in whole, so each row is scored by
//! exactly one version and `model_version` says which. A row whose key has already seen a time
//! at or after its own (a revised window) is scored against a copy of the key's detectors and
//! not learnt, so a revision never counts twice.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, Float64Array, Int64Array, StringArray, StringBuilder};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

use super::detect::{CalibrationSpec, DetectError, DetectorSpec, Ensemble};
use super::drift::{self, DriftSpec, InputDrift};
use super::health::{self, Figure, Health};
use super::onnx::{OnnxModel, ScoreError};
use super::registry::{
    Follower, ModelRef, ModelRefError, ModelVersion, Refresh, RefreshError, Registry,
    RegistryError, Swap,
};
use crate::operator::{self, Collector, Context, Operator, OperatorError, OperatorState};

/// Why a score stage could not start or score.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Score(#[from] ScoreError),
    #[error(transparent)]
    Arrow(#[from] ArrowError),
    #[error(transparent)]
    Detectors(#[from] DetectError),
    #[error(transparent)]
    Reference(#[from] ModelRefError),
    #[error("{0}")]
    Invalid(String),
}

/// Why a model's features cannot be read from a stage's input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FeatureError {
    #[error("feature `{name}` is not a column of the stage's input")]
    Missing { name: String },
    #[error("feature `{name}` is {data_type}, not a number")]
    NotNumeric { name: String, data_type: DataType },
}

/// What a pipeline file asks of a score stage, checked.
#[derive(Debug, Clone)]
pub struct ScoreSpec {
    pub model: Option<ModelRef>,
    pub shadow: Option<ModelRef>,
    pub key: Vec<String>,
    pub time: String,
    pub value: Option<String>,
    pub detectors: Vec<DetectorSpec>,
    pub calibration: CalibrationSpec,
    /// How the models' inputs are watched for drift.
    pub drift: DriftSpec,
    /// With health rows (`score::health`): how long a drift threshold must hold, µs.
    pub health_sustain: Option<i64>,
    /// The model versions, as checked, whose manifests record no training distribution.
    pub unwatched: Vec<String>,
    /// The registry's location, when a model is set.
    pub registry: Option<String>,
    pub poll: Duration,
}

impl ScoreSpec {
    /// The contribution columns, one per detector: `c_<kind>`, numbered from the second of a
    /// kind (`c_seasonal`, `c_seasonal_2`).
    pub fn contribution_columns(&self) -> Vec<String> {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        self.detectors
            .iter()
            .map(|d| {
                let n = seen.entry(d.name()).or_default();
                *n += 1;
                match *n {
                    1 => format!("c_{}", d.name()),
                    n => format!("c_{}_{n}", d.name()),
                }
            })
            .collect()
    }

    /// The columns this stage appends to its input's.
    pub fn appended_fields(&self) -> Vec<Field> {
        let mut fields = Vec::new();
        if self.model.is_some() {
            fields.push(Field::new("model_version", DataType::Utf8, true));
            fields.push(Field::new("model_score", DataType::Float64, true));
        }
        fields.push(Field::new("anomaly_score", DataType::Float64, false));
        for c in self.contribution_columns() {
            fields.push(Field::new(c, DataType::Float64, false));
        }
        if self.shadow.is_some() {
            fields.push(Field::new("shadow_version", DataType::Utf8, true));
            fields.push(Field::new("shadow_score", DataType::Float64, true));
        }
        fields
    }

    pub fn output_schema(&self, input: &Schema) -> SchemaRef {
        let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.extend(self.appended_fields());
        Arc::new(Schema::new(fields))
    }
}

/// Whether a column can feed a model or a detector.
pub fn is_numeric(t: &DataType) -> bool {
    t.is_numeric() || matches!(t, DataType::Boolean)
}

/// One loaded model version.
struct Loaded {
    /// The reference it was loaded for, and newer versions of it.
    follow: Follower,
    label: String,
    model: OnnxModel,
    output: String,
    /// Input column index of each model feature, in the manifest's order.
    columns: Vec<usize>,
    /// Its inputs against their training distributions, when its manifest records them.
    drift: Option<InputDrift>,
}

/// A key's detectors and the newest time they learnt.
#[derive(serde::Serialize, serde::Deserialize)]
struct KeyState {
    last: i64,
    ensemble: Ensemble,
}

/// Figures from one [`ScoreOperator::apply`], per model label: (rows, seconds in ONNX Runtime).
pub type ScoreStats = Vec<(String, usize, f64)>;

pub struct ScoreOperator {
    spec: ScoreSpec,
    input: SchemaRef,
    output: SchemaRef,
    registry: Option<Registry>,
    model: Option<Loaded>,
    shadow: Option<Loaded>,
    keys: HashMap<String, KeyState>,
    key_columns: Vec<usize>,
    time_column: usize,
    value_column: Option<usize>,
    /// Its models' drift over event time, if it writes health rows.
    health: Option<Health>,
}

/// Loads `reference` (resolved now) and maps its features onto `input`.
async fn load(
    registry: &Registry,
    reference: &ModelRef,
    input: &Schema,
    poll: Duration,
    drift: &DriftSpec,
) -> Result<Loaded, StageError> {
    let version = registry.resolve(reference).await?;
    let v = registry.load(&reference.name, version).await?;
    prepare(
        Follower::new(reference.clone(), version, poll),
        v,
        input,
        drift,
    )
}

/// The ONNX session of a registered version, checked to give the output its manifest scores by.
pub(super) fn scorer(label: &str, v: &ModelVersion) -> Result<OnnxModel, StageError> {
    let inputs = v.manifest.feature_names().count();
    let model = OnnxModel::from_bytes(label, &v.onnx, inputs)?;
    if !model.outputs().contains(&v.manifest.score_output) {
        return Err(StageError::Invalid(format!(
            "model {label}: the ONNX graph has no output {:?}, which its manifest scores by",
            v.manifest.score_output
        )));
    }
    Ok(model)
}

/// A registered version ready to score `input`'s rows, its inputs watched as `drift` says.
fn prepare(
    follow: Follower,
    v: ModelVersion,
    input: &Schema,
    drift: &DriftSpec,
) -> Result<Loaded, StageError> {
    let label = follow.label();
    let columns = feature_columns(&v.manifest.feature_names().collect::<Vec<_>>(), input)
        .map_err(|e| StageError::Invalid(format!("model {label}: {e}")))?;
    let model = scorer(&label, &v)?;
    let drift = match v.manifest.input_distribution {
        Some(bins) => Some(InputDrift::new(bins, drift.rows).ignoring(&drift.ignore)),
        None => {
            tracing::warn!(
                model = %label,
                "its manifest records no training distribution, so its input drift is not \
                 watched; retrain it (scripts/train) or record one (models/record_distribution.py)"
            );
            None
        }
    };
    Ok(Loaded {
        follow,
        label,
        model,
        output: v.manifest.score_output,
        columns,
        drift,
    })
}

/// The input column of each feature; an error names the first that is missing or not numeric.
pub fn feature_columns(features: &[&str], input: &Schema) -> Result<Vec<usize>, FeatureError> {
    features
        .iter()
        .map(|name| match input.index_of(name) {
            Ok(i) if is_numeric(input.field(i).data_type()) => Ok(i),
            Ok(i) => Err(FeatureError::NotNumeric {
                name: name.to_string(),
                data_type: input.field(i).data_type().clone(),
            }),
            Err(_) => Err(FeatureError::Missing {
                name: name.to_string(),
            }),
        })
        .collect()
}

impl ScoreOperator {
    /// Opens the registry and loads the models the spec names.
    pub async fn open(
        spec: ScoreSpec,
        input: SchemaRef,
        storage_options: &HashMap<String, String>,
    ) -> Result<Self, StageError> {
        let column = |name: &str| {
            input.index_of(name).map_err(|_| {
                StageError::Invalid(format!("`{name}` is not a column of the stage's input"))
            })
        };
        let key_columns = spec
            .key
            .iter()
            .map(|k| column(k))
            .collect::<Result<_, _>>()?;
        let time_column = column(&spec.time)?;
        let value_column = spec.value.as_deref().map(column).transpose()?;
        // The detectors must build; each key gets its own copy later.
        Ensemble::with_calibration(&spec.detectors, &spec.calibration)?;
        let registry = match (
            &spec.registry,
            spec.model.is_some() || spec.shadow.is_some(),
        ) {
            (Some(location), true) => Some(Registry::open(location, storage_options)?),
            (None, true) => {
                return Err(StageError::Invalid(
                    "a model is named but no registry is set (`models: {registry: …}`)".into(),
                ));
            }
            _ => None,
        };
        let mut model = None;
        let mut shadow = None;
        if let Some(r) = &registry {
            if let Some(m) = &spec.model {
                model = Some(load(r, m, &input, spec.poll, &spec.drift).await?);
            }
            if let Some(m) = &spec.shadow {
                shadow = Some(load(r, m, &input, spec.poll, &spec.drift).await?);
            }
        }
        Ok(ScoreOperator {
            output: spec.output_schema(&input),
            health: spec.health_sustain.map(|s| Health::new("drift", s)),
            spec,
            input,
            registry,
            model,
            shadow,
            keys: HashMap::new(),
            key_columns,
            time_column,
            value_column,
        })
    }

    /// Each watched input of the served and shadow versions, its drift over the pipeline's
    /// threshold (the larger of PSI's and KL's ratios), once its window is full.
    fn drift_figures(&self) -> Vec<Figure> {
        let (psi, kl) = (self.spec.drift.psi, self.spec.drift.kl);
        [&self.model, &self.shadow]
            .into_iter()
            .flatten()
            .filter_map(|m| Some((m, m.drift.as_ref()?.measure()?)))
            .flat_map(|(m, measured)| {
                measured.into_iter().map(|(input, d)| Figure {
                    model: m.label.clone(),
                    subject: input.to_string(),
                    ratio: (d.psi / psi).max(d.kl / kl),
                })
            })
            .collect()
    }

    pub fn output_schema(&self) -> SchemaRef {
        self.output.clone()
    }

    /// The labels (`name@version`) of the serving and shadow models.
    pub fn versions(&self) -> (Option<&str>, Option<&str>) {
        (
            self.model.as_ref().map(|m| m.label.as_str()),
            self.shadow.as_ref().map(|m| m.label.as_str()),
        )
    }

    /// Every `poll`, swaps in newer versions of the models that follow the registry. Returns
    /// what changed; a newer version that cannot be used is reported once and the current one
    /// kept.
    pub async fn refresh(&mut self) -> Vec<Refresh> {
        let mut changes = Vec::new();
        let Some(registry) = &self.registry else {
            return changes;
        };
        for slot in [&mut self.model, &mut self.shadow] {
            let Some(current) = slot.as_mut() else {
                continue;
            };
            let (version, registered) = match current.follow.newer(registry).await {
                None => continue,
                Some(Err(e)) => {
                    changes.push(Err(e.into()));
                    continue;
                }
                Some(Ok(newer)) => newer,
            };
            let mut follow = current.follow.clone();
            follow.accept(version);
            match prepare(follow, registered, &self.input, &self.spec.drift) {
                Ok(next) => {
                    changes.push(Ok(Swap {
                        from: current.label.clone(),
                        to: next.label.clone(),
                    }));
                    *slot = Some(next);
                }
                Err(e) => {
                    current.follow.reject(version);
                    changes.push(Err(RefreshError::Unusable {
                        current: current.label.clone(),
                        name: current.follow.reference().name.clone(),
                        version,
                        source: Box::new(e),
                    }));
                }
            }
        }
        changes
    }

    /// Scores one batch.
    pub fn apply(&mut self, batch: &RecordBatch) -> Result<(RecordBatch, ScoreStats), StageError> {
        let rows = batch.num_rows();
        let mut stats = ScoreStats::new();
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        let model_scores = match self.model.as_mut() {
            Some(m) => {
                let (scores, seconds) = score_model(m, batch)?;
                stats.push((m.label.clone(), rows, seconds));
                columns.push(label_column(&m.label, rows));
                columns.push(Arc::new(Float64Array::from(scores.clone())));
                Some(scores)
            }
            None => None,
        };

        // A row with a null key value is one of the null key's.
        let keys: Vec<String> = crate::keys::of_rows(batch, &self.key_columns)?
            .into_iter()
            .map(Option::unwrap_or_default)
            .collect();
        let times = micros(batch.column(self.time_column))?;
        let times = times
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| StageError::Invalid(format!("`{}` is not a time", self.spec.time)))?;
        let values = match self.value_column {
            Some(i) => Some(cast(batch.column(i), &DataType::Float64)?),
            None => None,
        };
        let values = values
            .as_ref()
            .and_then(|v| v.as_any().downcast_ref::<Float64Array>());
        // Each key's rows in time order, so its detectors learn them in order.
        let mut order: Vec<usize> = (0..rows).collect();
        order.sort_by_key(|&i| times.is_valid(i).then(|| times.value(i)));
        let detectors = self.spec.detectors.len();
        let mut anomaly = vec![0.0; rows];
        let mut contributions = vec![vec![0.0; rows]; detectors];
        for i in order {
            if times.is_null(i) {
                continue;
            }
            let t = times.value(i);
            let value = values.map_or(
                f64::NAN,
                |v| if v.is_valid(i) { v.value(i) } else { f64::NAN },
            );
            let model = model_scores.as_ref().and_then(|s| s[i]);
            let state = match self.keys.get_mut(&keys[i]) {
                Some(s) => s,
                None => self.keys.entry(keys[i].clone()).or_insert(KeyState {
                    last: i64::MIN,
                    ensemble: Ensemble::with_calibration(
                        &self.spec.detectors,
                        &self.spec.calibration,
                    )?,
                }),
            };
            let (verdict, _) = state
                .ensemble
                .observe_in_order(&mut state.last, t, value, model);
            anomaly[i] = verdict.score;
            for (c, v) in contributions.iter_mut().zip(verdict.contributions) {
                c[i] = v;
            }
        }
        columns.push(Arc::new(Float64Array::from(anomaly)));
        for c in contributions {
            columns.push(Arc::new(Float64Array::from(c)));
        }
        if let Some(s) = self.shadow.as_mut() {
            let (scores, seconds) = score_model(s, batch)?;
            stats.push((s.label.clone(), rows, seconds));
            columns.push(label_column(&s.label, rows));
            columns.push(Arc::new(Float64Array::from(scores)));
        }
        Ok((RecordBatch::try_new(self.output.clone(), columns)?, stats))
    }

    /// Each loaded version whose inputs are watched for drift, with those inputs.
    fn watched(&self) -> Vec<(String, Vec<String>)> {
        [&self.model, &self.shadow]
            .into_iter()
            .flatten()
            .filter_map(|m| {
                let drift = m.drift.as_ref()?;
                Some((
                    m.label.clone(),
                    drift.inputs().map(str::to_string).collect(),
                ))
            })
            .collect()
    }

    /// Sets each watched input's PSI and KL gauges, once its window is full.
    fn report_drift(&self, ctx: &Context<'_>) {
        for m in [&self.model, &self.shadow].into_iter().flatten() {
            if let Some(d) = &m.drift {
                drift::report(ctx, &m.label, d);
            }
        }
    }

    /// The detector settings the state was learnt under, as JSON.
    fn settings(&self) -> Result<String, StageError> {
        // With the key encoding: state keyed otherwise (before `crate::keys`) is learnt again.
        let keys = format!("keys joined by U+{:04X}", u32::from(crate::keys::SEPARATOR));
        serde_json::to_string(&(&self.spec.detectors, &self.spec.calibration, keys))
            .map_err(|e| StageError::Invalid(e.to_string()))
    }

    /// The detectors' state: one row per key (key, newest time learnt, state as JSON, and the
    /// settings it was learnt under).
    pub fn snapshot(&self) -> Result<RecordBatch, StageError> {
        let mut keys = StringBuilder::new();
        let mut states = StringBuilder::new();
        let mut last = Vec::with_capacity(self.keys.len());
        for (k, s) in &self.keys {
            keys.append_value(k);
            last.push(s.last);
            states.append_value(
                serde_json::to_string(&s.ensemble)
                    .map_err(|e| StageError::Invalid(e.to_string()))?,
            );
        }
        let settings = self.settings()?;
        let n = last.len();
        Ok(RecordBatch::try_new(
            snapshot_schema(),
            vec![
                Arc::new(keys.finish()),
                Arc::new(Int64Array::from(last)),
                Arc::new(states.finish()),
                Arc::new(StringArray::from(vec![settings.as_str(); n])),
            ],
        )?)
    }

    pub fn restore(&mut self, batch: &RecordBatch) -> Result<(), StageError> {
        let bad =
            || StageError::Invalid("the detectors' checkpoint is not in the expected form".into());
        let keys = batch
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(bad)?;
        let last = batch
            .column(1)
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(bad)?;
        let states = batch
            .column(2)
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(bad)?;
        self.keys.clear();
        // State learnt under other detector settings (a changed baseline, scale floor or
        // calibration) would keep the old ones: every key learns again instead. A checkpoint
        // from before settings were recorded is taken as it is.
        let settings = self.settings()?;
        let learnt_under = batch
            .column_by_name("settings")
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            .filter(|c| !c.is_empty())
            .map(|c| c.value(0).to_string());
        if learnt_under.is_some_and(|l| l != settings) {
            tracing::warn!(
                "the detector settings changed since the checkpoint: every key learns again"
            );
            return Ok(());
        }
        for i in 0..batch.num_rows() {
            let ensemble: Ensemble = serde_json::from_str(states.value(i))
                .map_err(|e| StageError::Invalid(format!("detectors' checkpoint: {e}")))?;
            self.keys.insert(
                keys.value(i).to_string(),
                KeyState {
                    last: last.value(i),
                    ensemble,
                },
            );
        }
        Ok(())
    }
}

/// A time column as µs since the epoch (timestamps of any unit, or integers as they are).
fn micros(column: &ArrayRef) -> Result<ArrayRef, ArrowError> {
    let column = match column.data_type() {
        DataType::Timestamp(_, tz) => cast(
            column,
            &DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, tz.clone()),
        )?,
        _ => column.clone(),
    };
    cast(&column, &DataType::Int64)
}

fn snapshot_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("last", DataType::Int64, false),
        Field::new("state", DataType::Utf8, false),
        Field::new("settings", DataType::Utf8, false),
    ]))
}

fn label_column(label: &str, rows: usize) -> ArrayRef {
    Arc::new(StringArray::from(vec![Some(label); rows]))
}

/// The model's score per row (None where an input is null), and the seconds ONNX Runtime took.
fn score_model(m: &mut Loaded, batch: &RecordBatch) -> Result<(Vec<Option<f64>>, f64), StageError> {
    let rows = batch.num_rows();
    let features: Vec<ArrayRef> = m
        .columns
        .iter()
        .map(|&c| cast(batch.column(c), &DataType::Float64))
        .collect::<Result<_, _>>()?;
    let features: Vec<&Float64Array> = features
        .iter()
        .filter_map(|a| a.as_any().downcast_ref::<Float64Array>())
        .collect();
    let mut complete = Vec::with_capacity(rows);
    let mut values = Vec::with_capacity(rows * features.len());
    for i in 0..rows {
        if features
            .iter()
            .all(|f| f.is_valid(i) && f.value(i).is_finite())
        {
            complete.push(i);
            values.extend(features.iter().map(|f| f.value(i) as f32));
        }
    }
    let mut out = vec![None; rows];
    if complete.is_empty() {
        return Ok((out, 0.0));
    }
    if let Some(drift) = m.drift.as_mut() {
        drift.observe(&values);
    }
    let started = Instant::now();
    let scores = m.model.score(&values, &m.output)?;
    let seconds = started.elapsed().as_secs_f64();
    if scores.len() != complete.len() {
        return Err(StageError::Invalid(format!(
            "model {}: {} scores for {} rows; the score output must give one value per row",
            m.label,
            scores.len(),
            complete.len()
        )));
    }
    for (&i, s) in complete.iter().zip(scores) {
        out[i] = Some(f64::from(s));
    }
    Ok((out, seconds))
}

impl From<StageError> for OperatorError {
    fn from(e: StageError) -> Self {
        OperatorError::Operator(Box::new(e))
    }
}

/// The checkpoint part of the detectors' per-key state.
const STATE_PART: &str = "detectors";

#[async_trait::async_trait]
impl Operator for ScoreOperator {
    async fn process_batch(
        &mut self,
        batch: &RecordBatch,
        ctx: &Context<'_>,
        out: &mut Collector,
    ) -> operator::Result<()> {
        let (scored, stats) = self.apply(batch)?;
        self.report_drift(ctx);
        for (model, rows, seconds) in stats {
            let labels = [ctx.pipeline, ctx.stage, model.as_str()];
            ctx.metrics
                .inference_seconds
                .with_label_values(&labels)
                .observe(seconds);
            ctx.metrics
                .rows_scored
                .with_label_values(&labels)
                .inc_by(rows as u64);
        }
        out.collect(scored);
        Ok(())
    }

    /// Writes its models' health rows, if it keeps them, as the watermark passes their
    /// boundaries.
    async fn handle_watermark(
        &mut self,
        watermark: i64,
        ctx: &Context<'_>,
        out: &mut Collector,
    ) -> operator::Result<i64> {
        if self.health.is_some() {
            let figures = self.drift_figures();
            if let Some(h) = self.health.as_mut()
                && let Some(rows) = h.advance(watermark, ctx.scope, &figures)?
            {
                out.side(health::OUTPUT, rows);
            }
        }
        Ok(watermark)
    }

    /// Swaps in newer registered versions; a version that cannot be used is logged and the
    /// current one kept. Sets the `model_version` gauges.
    async fn on_cycle_start(&mut self, ctx: &Context<'_>) {
        let watched = self.watched();
        for change in self.refresh().await {
            super::report_refresh(ctx, change);
        }
        // A version swapped out no longer drifts: its gauges go with it.
        let current = self.watched();
        for (label, inputs) in watched.iter().filter(|w| !current.contains(w)) {
            drift::forget(ctx, label, inputs);
        }
        for (label, _) in &current {
            drift::export_thresholds(ctx, label, &self.spec.drift);
        }
        let (serving, shadow) = self.versions();
        for (role, label) in [("serving", serving), ("shadow", shadow)] {
            if let Some((model, version)) = label.and_then(|l| l.split_once('@')) {
                ctx.metrics
                    .model_version
                    .with_label_values(&[ctx.pipeline, ctx.stage, model, role])
                    .set(version.parse().unwrap_or(0));
            }
        }
    }

    fn snapshot(&self) -> operator::Result<OperatorState> {
        Ok(OperatorState::part(
            STATE_PART,
            vec![ScoreOperator::snapshot(self)?],
        ))
    }

    fn restore(&mut self, state: OperatorState) -> operator::Result<()> {
        if let Some(b) = state.parts.get(STATE_PART).and_then(|p| p.first()) {
            ScoreOperator::restore(self, b)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::TimestampMicrosecondArray;

    const MIN: i64 = 60_000_000;

    fn spec() -> ScoreSpec {
        ScoreSpec {
            model: None,
            shadow: None,
            key: vec!["resource".into()],
            time: "window_end".into(),
            value: Some("mean".into()),
            detectors: vec![DetectorSpec::RobustZ {
                weight: 1.0,
                baseline: Some("1h".into()),
                points: 2_000,
                min_points: 3,
                smooth: 1,
                scale: Default::default(),
                min_relative_scale: 0.0,
            }],
            calibration: CalibrationSpec {
                learn: "100m".into(),
                ..Default::default()
            },
            drift: DriftSpec::default(),
            health_sustain: None,
            unwatched: Vec::new(),
            registry: None,
            poll: Duration::from_secs(10),
        }
    }

    fn input() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("resource", DataType::Utf8, false),
            Field::new(
                "window_end",
                DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
            Field::new("mean", DataType::Float64, true),
        ]))
    }

    fn batch(rows: &[(&str, i64, f64)]) -> RecordBatch {
        RecordBatch::try_new(
            input(),
            vec![
                Arc::new(StringArray::from(
                    rows.iter().map(|r| r.0).collect::<Vec<_>>(),
                )),
                Arc::new(
                    TimestampMicrosecondArray::from(
                        rows.iter().map(|r| r.1 * MIN).collect::<Vec<_>>(),
                    )
                    .with_timezone("UTC"),
                ),
                Arc::new(Float64Array::from(
                    rows.iter().map(|r| r.2).collect::<Vec<_>>(),
                )),
            ],
        )
        .unwrap()
    }

    fn scores(b: &RecordBatch) -> Vec<f64> {
        let c = b.column_by_name("anomaly_score").unwrap();
        c.as_any()
            .downcast_ref::<Float64Array>()
            .unwrap()
            .values()
            .to_vec()
    }

    async fn operator() -> ScoreOperator {
        ScoreOperator::open(spec(), input(), &HashMap::new())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn each_key_learns_in_time_order_and_a_restored_stage_continues_the_same() {
        // Past the calibration's learning period (100 values), with a jump in `a` at minute 200.
        let rows: Vec<(&str, i64, f64)> = (0..240)
            .flat_map(|i| {
                let a = if (200..205).contains(&i) {
                    30.0
                } else {
                    10.0 + (i % 3) as f64
                };
                [("a", i, a), ("b", i, 50.0 + (i % 5) as f64)]
            })
            .collect();
        // One operator sees everything in order; another sees each chunk reversed, and is
        // snapshot and restored into a fresh operator halfway.
        let mut straight = operator().await;
        let mut restarted = operator().await;
        let mut highest = 0.0f64;
        for (n, chunk) in rows.chunks(40).enumerate() {
            let (a, _) = straight.apply(&batch(chunk)).unwrap();
            highest = scores(&a).into_iter().fold(highest, f64::max);
            let reversed: Vec<_> = chunk.iter().rev().copied().collect();
            let (b, _) = restarted.apply(&batch(&reversed)).unwrap();
            let mut b = scores(&b);
            b.reverse();
            assert_eq!(scores(&a), b, "chunk {n}");
            if n == 2 {
                let state = restarted.snapshot().unwrap();
                restarted = operator().await;
                restarted.restore(&state).unwrap();
            }
        }
        assert!(highest > 0.5, "the jump scores {highest}");
        assert_eq!(straight.output_schema().field(3).name(), "anomaly_score");
        assert_eq!(straight.output_schema().field(4).name(), "c_robust_z");
    }

    #[tokio::test]
    async fn a_restore_under_other_detector_settings_learns_again() {
        let mut op = operator().await;
        let history: Vec<_> = (0..50).map(|i| ("a", i, 10.0 + (i % 2) as f64)).collect();
        op.apply(&batch(&history)).unwrap();
        let state = op.snapshot().unwrap();
        // The same settings: the key's history comes back.
        let mut same = operator().await;
        same.restore(&state).unwrap();
        assert_eq!(same.keys.len(), 1);
        // A changed scale floor: the key starts again rather than keep the old settings.
        let mut changed_spec = spec();
        if let DetectorSpec::RobustZ {
            min_relative_scale, ..
        } = &mut changed_spec.detectors[0]
        {
            *min_relative_scale = 0.02;
        }
        let mut changed = ScoreOperator::open(changed_spec, input(), &HashMap::new())
            .await
            .unwrap();
        changed.restore(&state).unwrap();
        assert!(changed.keys.is_empty());
        // A checkpoint from before settings were recorded is restored as it is.
        let old = state.project(&[0, 1, 2]).unwrap();
        changed.restore(&old).unwrap();
        assert_eq!(changed.keys.len(), 1);
    }

    #[tokio::test]
    async fn a_revised_window_is_scored_but_not_learnt_twice() {
        let mut op = operator().await;
        let history: Vec<_> = (0..200).map(|i| ("a", i, 10.0 + (i % 2) as f64)).collect();
        op.apply(&batch(&history)).unwrap();
        // A revision of minute 199 with a wild value, then the next minute.
        let (revised, _) = op.apply(&batch(&[("a", 199, 90.0)])).unwrap();
        assert!(scores(&revised)[0] > 0.3, "{:?}", scores(&revised));
        let (after, _) = op.apply(&batch(&[("a", 200, 100.0)])).unwrap();
        let mut fresh = operator().await;
        fresh.apply(&batch(&history)).unwrap();
        let (want, _) = fresh.apply(&batch(&[("a", 200, 100.0)])).unwrap();
        assert_eq!(scores(&after), scores(&want));
    }
}
