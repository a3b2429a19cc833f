//! Registered models as a SQL function: `score('metrics_anomaly', mean_robust_z, …)`.
//!
//! In: the name of a registered model — `name` (followed: the newest version) or
//! `name@version` — as a literal, then one argument per input of its manifest, in the
//! manifest's order (numbers, cast to `float32`). Out: the model's `score_output` per row as
//! `float64`, null where an input is null.
//!
//! The models a pipeline's SQL calls are loaded when the pipeline is checked ([`Models::load`]),
//! so planning a stage checks each call: the model exists and takes as many inputs as the call
//! gives. While the pipeline runs, every stage that calls `score` swaps in newer registered
//! versions between cycles ([`Models::refresh`], the score stage's [`Follower`] rule): each row
//! is scored by one version.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{Array, ArrayRef, Float64Array, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{ScalarValue, exec_err, plan_err};
use datafusion::error::Result;
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};

use super::onnx::OnnxModel;
use super::registry::{Follower, ModelRef, ModelVersion, Refresh, RefreshError, Registry, Swap};
use super::stage::StageError;
use crate::operator::{self, Collector, Context, Operator, OperatorState};

/// The SQL function's name.
pub const FUNCTION: &str = "score";

/// One loaded model a stage's SQL calls.
struct Slot {
    follow: Follower,
    model: OnnxModel,
    output: String,
    inputs: usize,
}

fn slot(follow: Follower, v: &ModelVersion) -> Result<Slot, StageError> {
    Ok(Slot {
        model: super::stage::scorer(&follow.label(), v)?,
        follow,
        output: v.manifest.score_output.clone(),
        inputs: v.manifest.feature_names().count(),
    })
}

/// The models a pipeline's SQL calls, by the reference as written; shared by its stages.
#[derive(Clone)]
pub struct Models {
    registry: Registry,
    loaded: Arc<Mutex<BTreeMap<String, Slot>>>,
}

impl std::fmt::Debug for Models {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self
            .loaded
            .lock()
            .map(|l| l.keys().cloned().collect())
            .unwrap_or_default();
        f.debug_struct("Models")
            .field("registry", &self.registry.location())
            .field("loaded", &names)
            .finish()
    }
}

/// The references `sql` calls `score` with: each `score('…'` literal.
pub fn called(sql: &str) -> Vec<String> {
    let lower = sql.to_ascii_lowercase();
    let mut found = Vec::new();
    let mut rest = lower.as_str();
    let mut offset = 0;
    while let Some(i) = rest.find(FUNCTION) {
        let at = offset + i;
        let before = lower[..at].chars().next_back();
        let after = lower[at + FUNCTION.len()..].trim_start();
        if before.is_none_or(|c| !(c.is_alphanumeric() || c == '_'))
            && let Some(args) = after.strip_prefix('(')
            && let Some(literal) = args.trim_start().strip_prefix('\'')
            && let Some(end) = literal.find('\'')
        {
            // The name as written (the SQL text, not its lower case).
            let start = sql.len() - literal.len();
            found.push(sql[start..start + end].to_string());
        }
        offset = at + FUNCTION.len();
        rest = &lower[offset..];
    }
    found.sort();
    found.dedup();
    found
}

impl Models {
    /// Loads each of `references` from `registry`; `poll` is how often an unpinned one is
    /// looked up again.
    pub async fn load(
        registry: Registry,
        references: &[String],
        poll: Duration,
    ) -> Result<Self, StageError> {
        let mut loaded = BTreeMap::new();
        for text in references {
            let reference: ModelRef = text.parse().map_err(StageError::Reference)?;
            let version = registry.resolve(&reference).await?;
            let v = registry.load(&reference.name, version).await?;
            let follow = Follower::new(reference, version, poll);
            loaded.insert(text.clone(), slot(follow, &v)?);
        }
        Ok(Models {
            registry,
            loaded: Arc::new(Mutex::new(loaded)),
        })
    }

    /// The `score` function over these models.
    pub fn function(&self) -> ScalarUDF {
        ScalarUDF::new_from_impl(ScoreFunction {
            models: self.clone(),
            signature: Signature::variadic_any(Volatility::Volatile),
        })
    }

    /// The labels (`name@version`) in use, by reference.
    pub fn versions(&self) -> BTreeMap<String, String> {
        self.loaded
            .lock()
            .map(|l| {
                l.iter()
                    .map(|(k, s)| (k.clone(), s.follow.label()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Swaps in newer registered versions of the unpinned references; says what changed. A
    /// version that cannot be used is reported once and the current one kept.
    pub async fn refresh(&self) -> Vec<Refresh> {
        let followed: Vec<(String, Follower)> = match self.loaded.lock() {
            Ok(l) => l
                .iter()
                .map(|(k, s)| (k.clone(), s.follow.clone()))
                .collect(),
            Err(_) => return vec![Err(RefreshError::Poisoned)],
        };
        let mut changes = Vec::new();
        for (reference, mut follow) in followed {
            let newer = follow.newer(&self.registry).await;
            let Ok(mut loaded) = self.loaded.lock() else {
                continue;
            };
            let Some(current) = loaded.get_mut(&reference) else {
                continue;
            };
            // The lookup's time, so the next one waits a `poll`.
            current.follow = follow.clone();
            let (version, registered) = match newer {
                None => continue,
                Some(Err(e)) => {
                    changes.push(Err(e.into()));
                    continue;
                }
                Some(Ok(v)) => v,
            };
            let mut next = follow.clone();
            next.accept(version);
            let label = follow.label();
            match slot(next, &registered) {
                Ok(s) if s.inputs == current.inputs => {
                    changes.push(Ok(Swap {
                        from: label,
                        to: s.follow.label(),
                    }));
                    *current = s;
                }
                Ok(s) => {
                    current.follow.reject(version);
                    changes.push(Err(RefreshError::Inputs {
                        current: label,
                        newer: s.follow.label(),
                        takes: s.inputs,
                        gives: current.inputs,
                    }));
                }
                Err(e) => {
                    current.follow.reject(version);
                    changes.push(Err(RefreshError::Unusable {
                        current: label,
                        name: follow.reference().name.clone(),
                        version,
                        source: Box::new(e),
                    }));
                }
            }
        }
        changes
    }
}

/// The `score(model, inputs…)` SQL function.
#[derive(Debug)]
struct ScoreFunction {
    models: Models,
    signature: Signature,
}

impl PartialEq for ScoreFunction {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.models.loaded, &other.models.loaded)
    }
}

impl Eq for ScoreFunction {}

impl Hash for ScoreFunction {
    fn hash<H: Hasher>(&self, state: &mut H) {
        FUNCTION.hash(state);
    }
}

/// The model reference of a call: its first argument, a text literal.
fn reference(first: Option<&ScalarValue>) -> Result<String> {
    match first {
        Some(ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s))) => Ok(s.clone()),
        Some(ScalarValue::Utf8View(Some(s))) => Ok(s.clone()),
        _ => plan_err!(
            "{FUNCTION}(model, inputs…): the first argument is a registered model's name as a \
             text literal, e.g. {FUNCTION}('metrics_anomaly', mean_robust_z, …)"
        ),
    }
}

impl ScalarUDFImpl for ScoreFunction {
    fn name(&self) -> &str {
        FUNCTION
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    /// Checks the call when the stage is planned: a loaded model, one numeric argument per
    /// input of it.
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let name = reference(args.scalar_arguments.first().copied().flatten())?;
        let inputs = match self.models.loaded.lock() {
            Ok(l) => l.get(&name).map(|s| (s.inputs, s.follow.label())),
            Err(_) => return plan_err!("the models' lock is poisoned"),
        };
        let Some((inputs, label)) = inputs else {
            return plan_err!(
                "{FUNCTION}('{name}', …): no such model was loaded for this pipeline; is it \
                 registered (`stratus models list`) and is `models: {{registry: …}}` set?"
            );
        };
        let given = args.arg_fields.len().saturating_sub(1);
        if given != inputs {
            return plan_err!(
                "{FUNCTION}('{name}', …): {label} takes {inputs} inputs (its manifest's, in \
                 order), the call gives {given}"
            );
        }
        if let Some(f) = args.arg_fields[1..]
            .iter()
            .find(|f| !super::stage::is_numeric(f.data_type()))
        {
            return plan_err!(
                "{FUNCTION}('{name}', …): input `{}` is {}, not a number",
                f.name(),
                f.data_type()
            );
        }
        Ok(Arc::new(Field::new(FUNCTION, DataType::Float64, true)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let name = match args.args.first() {
            Some(ColumnarValue::Scalar(s)) => reference(Some(s))?,
            _ => reference(None)?,
        };
        let rows = args.number_rows;
        let inputs: Vec<ArrayRef> = args.args[1..]
            .iter()
            .map(|a| {
                a.to_array(rows)
                    .and_then(|a| Ok(cast(&a, &DataType::Float32)?))
            })
            .collect::<Result<_>>()?;
        let inputs: Vec<&arrow::array::Float32Array> = inputs
            .iter()
            .filter_map(|a| a.as_any().downcast_ref())
            .collect();
        // Rows with every input set, row-major.
        let complete: Vec<usize> = (0..rows)
            .filter(|&i| inputs.iter().all(|a| a.is_valid(i)))
            .collect();
        let mut matrix = Vec::with_capacity(complete.len() * inputs.len());
        for &i in &complete {
            matrix.extend(inputs.iter().map(|a| a.value(i)));
        }
        let scores = {
            let Ok(mut loaded) = self.models.loaded.lock() else {
                return exec_err!("the models' lock is poisoned");
            };
            let Some(slot) = loaded.get_mut(&name) else {
                return exec_err!("{FUNCTION}('{name}', …): the model is not loaded");
            };
            if complete.is_empty() {
                Vec::new()
            } else {
                let output = slot.output.clone();
                slot.model
                    .score(&matrix, &output)
                    .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?
            }
        };
        let mut out: Vec<Option<f64>> = vec![None; rows];
        for (&i, s) in complete.iter().zip(scores) {
            out[i] = Some(f64::from(s));
        }
        Ok(ColumnarValue::Array(Arc::new(Float64Array::from(out))))
    }
}

/// A stage whose SQL calls `score`: before each cycle, newer registered versions of the models
/// are swapped in; the rest is the stage's own.
pub struct Following {
    op: Box<dyn Operator>,
    models: Models,
}

impl Following {
    pub fn new(op: Box<dyn Operator>, models: Models) -> Self {
        Following { op, models }
    }
}

#[async_trait::async_trait]
impl Operator for Following {
    async fn process_batch(
        &mut self,
        batch: &RecordBatch,
        ctx: &Context<'_>,
        out: &mut Collector,
    ) -> operator::Result<()> {
        self.op.process_batch(batch, ctx, out).await
    }

    async fn process_side(
        &mut self,
        input: &str,
        batch: &RecordBatch,
        ctx: &Context<'_>,
    ) -> operator::Result<()> {
        self.op.process_side(input, batch, ctx).await
    }

    async fn handle_watermark(
        &mut self,
        watermark: i64,
        ctx: &Context<'_>,
        out: &mut Collector,
    ) -> operator::Result<i64> {
        self.op.handle_watermark(watermark, ctx, out).await
    }

    async fn on_cycle_start(&mut self, ctx: &Context<'_>) {
        for change in self.models.refresh().await {
            super::report_refresh(ctx, change);
        }
        self.op.on_cycle_start(ctx).await;
    }

    fn on_cycle_end(&mut self, ctx: &Context<'_>) {
        self.op.on_cycle_end(ctx);
    }

    fn snapshot(&self) -> operator::Result<OperatorState> {
        self.op.snapshot()
    }

    fn checkpoint(&mut self, kind: &operator::Snapshot) -> operator::Result<OperatorState> {
        self.op.checkpoint(kind)
    }

    fn restore(&mut self, state: OperatorState) -> operator::Result<()> {
        self.op.restore(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_models_a_query_calls_are_its_score_literals() {
        let sql = "SELECT SCORE('metrics_anomaly', a, b) AS s,\n  score( 'cpu@2', c) AS t,\n  \
                   my_score('other', a), score(x) FROM t WHERE score('metrics_anomaly', a, b) > 0";
        assert_eq!(called(sql), ["cpu@2", "metrics_anomaly"]);
    }
}
