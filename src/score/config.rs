//! A score stage as written — `score: {from, model, key, value, detectors, …}` — and its
//! check: its input, key, time and value columns, its detectors, and its models, resolved in
//! the registry now, with every feature their manifests name present and numeric in the input.
//! Out: the stage's [`Planned`] [`ScoreSpec`].

use arrow::datatypes::DataType;
use serde::Deserialize;

use super::detect::{DetectError, DetectorSpec, Ensemble};
use super::drift::DriftSpec;
use super::registry::{ModelRef, Registry};
use super::stage::{ScoreSpec, feature_columns, is_numeric};
use crate::check::diagnostics::Reporter;
use crate::check::{Checking, Planned, input};

/// A score stage (see `score::stage`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreStageConfig {
    /// The stage (or source) whose rows are scored.
    pub from: String,
    /// `name` (the newest version, followed as new ones are registered) or `name@version`.
    #[serde(default)]
    pub model: Option<String>,
    /// A candidate scored beside the model and written, never acted on.
    #[serde(default)]
    pub shadow: Option<String>,
    /// Columns identifying whose history the detectors follow.
    pub key: Vec<String>,
    /// The row's event time (default `window_end`).
    #[serde(default = "default_score_time")]
    pub time: String,
    /// The numeric column the detectors watch (needed by every detector but `model`).
    #[serde(default)]
    pub value: Option<String>,
    /// Detectors and weights; default: the model alone, or the default ensemble (the value,
    /// the mean of its last 5 and the same time of the last 3 days), plus the model if set.
    #[serde(default)]
    pub detectors: Option<Vec<DetectorSpec>>,
    /// How the ensemble's deviation is judged against each key's own history, and how long an
    /// alarm silences the key (default: the 95th percentile of the last 2,000 deviations,
    /// alarm at 6σ, rest of 100 values).
    #[serde(default)]
    pub calibration: Option<super::detect::CalibrationSpec>,
    /// How the models' inputs are watched for drift against their training distributions
    /// (default: the last 1,000 rows, PSI 0.2, KL 0.1).
    #[serde(default)]
    pub drift: DriftSpec,
    /// Where its models' drift goes as health rows for alert stages (`score::health`).
    #[serde(default)]
    pub health: Option<super::health::HealthConfig>,
}

fn default_score_time() -> String {
    "window_end".into()
}

/// Checks a score stage against its input and the registry: its plan, or `None` with every
/// problem reported.
pub(crate) async fn check(
    cx: &mut Checking<'_, '_>,
    name: &str,
    score: &ScoreStageConfig,
) -> Option<Planned<ScoreSpec>> {
    let at = |field: &'static str| ["stages", name, "score", field];
    let (r, registry, poll) = (&mut *cx.r, cx.registry, cx.poll);
    let input = input(r, &at("from"), &score.from, cx.relations)?;
    let before = r.found.len();
    let schema = input.schema.clone();
    let columns: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let hint = format!("columns of `{}`: {}", score.from, columns.join(", "));
    for k in &score.key {
        if schema.field_with_name(k).is_err() {
            r.at(
                &at("key"),
                format!("key column `{k}` is not in `{}`", score.from),
                Some(&hint),
            );
        }
    }
    match schema.field_with_name(&score.time) {
        Ok(f) if matches!(f.data_type(), DataType::Timestamp(..)) => {}
        Ok(f) => r.at(
            &at("time"),
            format!("`{}` is {}, not a timestamp", score.time, f.data_type()),
            None,
        ),
        Err(_) => r.at(
            &at("time"),
            format!("time column `{}` is not in `{}`", score.time, score.from),
            Some(&hint),
        ),
    }
    if let Some(v) = &score.value {
        match schema.field_with_name(v) {
            Ok(f) if is_numeric(f.data_type()) => {}
            Ok(f) => r.at(
                &at("value"),
                format!("`{v}` is {}, not a number", f.data_type()),
                None,
            ),
            Err(_) => r.at(
                &at("value"),
                format!("value column `{v}` is not in `{}`", score.from),
                Some(&hint),
            ),
        }
    }
    let reference = |field: &'static str, text: &Option<String>, r: &mut Reporter<'_>| {
        text.as_deref().and_then(|t| match t.parse::<ModelRef>() {
            Ok(m) => Some(m),
            Err(e) => {
                r.at(
                    &at(field),
                    e.to_string(),
                    Some("write `name` (newest version) or `name@3`"),
                );
                None
            }
        })
    };
    let model = reference("model", &score.model, r);
    let shadow = reference("shadow", &score.shadow, r);

    let detectors = match &score.detectors {
        Some(d) => d.clone(),
        None => {
            let mut d = if score.value.is_some() {
                DetectorSpec::default_ensemble()
            } else {
                Vec::new()
            };
            if score.model.is_some() {
                d.push(DetectorSpec::Model {
                    weight: 1.0,
                    min_points: 12,
                });
            }
            d
        }
    };
    if detectors.is_empty() {
        r.at(
            &["stages", name, "score"],
            "nothing to score: no model and no value column for the detectors",
            Some("set `model`, or `value` (the column the detectors watch), or both"),
        );
    }
    let calibration = score.calibration.clone().unwrap_or_default();
    if let Err(e) = Ensemble::with_calibration(&detectors, &calibration) {
        let field = if matches!(e, DetectError::Calibration(_)) {
            "calibration"
        } else {
            "detectors"
        };
        r.at(&at(field), e.to_string(), None);
    }
    let watches_value = detectors
        .iter()
        .any(|d| !matches!(d, DetectorSpec::Model { .. }));
    if watches_value && score.value.is_none() {
        r.at(
            &at("detectors"),
            "these detectors watch a value, but no `value` column is set",
            Some("set `value` to the numeric column they watch"),
        );
    }
    if detectors
        .iter()
        .any(|d| matches!(d, DetectorSpec::Model { .. }))
        && score.model.is_none()
    {
        r.at(&at("detectors"), "a `model` detector needs a `model`", None);
    }

    if let Some(problem) = score.drift.problem() {
        r.at(&at("drift"), problem, None);
    }
    let health = score
        .health
        .as_ref()
        .and_then(|h| super::health::check(r, &at("health"), h, "drift"));
    let needs_registry = model.is_some() || shadow.is_some();
    let mut unwatched = Vec::new();
    if needs_registry {
        match registry {
            None => r.at(
                &["stages", name, "score"],
                "a model is named but the pipeline has no model registry",
                Some("add `models: {registry: ../models/registry}` (or set STRATUS_MODELS)"),
            ),
            Some(location) => {
                unwatched = check_models(
                    r,
                    name,
                    location,
                    &[("model", &model), ("shadow", &shadow)],
                    &schema,
                )
                .await
            }
        }
    }
    if r.found.len() > before {
        return None;
    }
    let spec = ScoreSpec {
        model,
        shadow,
        key: score.key.clone(),
        time: score.time.clone(),
        value: score.value.clone(),
        detectors,
        calibration,
        drift: score.drift.clone(),
        health_sustain: health.as_ref().map(|(_, sustain)| *sustain),
        unwatched,
        registry: registry.map(str::to_string),
        poll,
    };
    let output_schema = spec.output_schema(&schema);
    Some(Planned {
        name: name.to_string(),
        input: score.from.clone(),
        input_schema: schema,
        side_inputs: Vec::new(),
        side_outputs: health.map(|(output, _)| output).into_iter().collect(),
        output_time: input.event_time.clone(),
        output_schema,
        allowed_lateness: input.lateness,
        kind: spec,
    })
}

/// Resolves each model and checks its manifest's features against the input. Returns the
/// versions whose manifests record no training distribution (their drift is not watched).
async fn check_models(
    r: &mut Reporter<'_>,
    stage: &str,
    location: &str,
    models: &[(&'static str, &Option<ModelRef>)],
    input: &arrow::datatypes::Schema,
) -> Vec<String> {
    let mut unwatched = Vec::new();
    let registry = match Registry::open(location, &crate::sink::storage_options_from_env()) {
        Ok(reg) => reg,
        Err(e) => {
            r.at(&["models", "registry"], e.to_string(), None);
            return unwatched;
        }
    };
    for (field, model) in models {
        let Some(model) = model else { continue };
        let at = ["stages", stage, "score", field];
        let version = match registry.resolve(model).await {
            Ok(v) => v,
            Err(e) => {
                r.at(
                    &at,
                    e.to_string(),
                    Some("`stratus models list` shows what is registered"),
                );
                continue;
            }
        };
        match registry.manifest(&model.name, version).await {
            Ok(manifest) => {
                if manifest.input_distribution.is_none() {
                    unwatched.push(format!("{}@{version}", model.name));
                }
                let features: Vec<&str> = manifest.feature_names().collect();
                if let Err(e) = feature_columns(&features, input) {
                    r.at(
                        &at,
                        format!("{}@{version}: {e}", model.name),
                        Some("the model's inputs are columns of the stage it scores"),
                    );
                }
            }
            Err(e) => r.at(&at, e.to_string(), None),
        }
    }
    unwatched
}
