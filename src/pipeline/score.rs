//! Checks a score stage: its input, key, time and value columns, its detectors, and its models
//! — resolved in the registry now, with every feature their manifests name present and numeric
//! in the input.

use std::path::Path;
use std::time::Duration;

use arrow::datatypes::DataType;

use super::config::{ModelsConfig, PipelineConfig, ScoreStageConfig};
use super::diagnostics::Reporter;
use super::stage::{Relation, StageKind, StagePlan};
use crate::score::detect::{DetectError, DetectorSpec, Ensemble};
use crate::score::function::{self, Models};
use crate::score::registry::{ModelRef, Registry};
use crate::score::stage::{ScoreSpec, feature_columns, is_numeric};
use crate::window::parse_duration;

/// The registry location a pipeline uses: `STRATUS_MODELS`, else `models.registry` (a relative
/// path is relative to the pipeline file).
pub fn registry_location(base: &Path, models: Option<&ModelsConfig>) -> Option<String> {
    if let Ok(v) = std::env::var("STRATUS_MODELS")
        && !v.is_empty()
    {
        return Some(v);
    }
    let r = &models?.registry;
    Some(crate::sink::resolve_location(
        &base.display().to_string(),
        r,
    ))
}

/// How often a stage following a model's newest version looks for a newer one (`models.poll`,
/// default 10 s).
fn poll(r: &mut Reporter<'_>, models: Option<&ModelsConfig>) -> Duration {
    let us = models.map_or(Some(10_000_000), |m| {
        parse_duration(&m.poll)
            .map_err(|e| r.at(&["models", "poll"], e, Some("for example \"10s\"")))
            .ok()
    });
    Duration::from_micros(us.unwrap_or(10_000_000).max(0) as u64)
}

/// Loads the models the stages' SQL calls with `score('…', …)` from the pipeline's registry
/// (see `score::function`); none when no SQL calls one.
pub(super) async fn sql_models(
    r: &mut Reporter<'_>,
    base: &Path,
    config: &PipelineConfig,
    registry: Option<&str>,
) -> Option<Models> {
    let mut called = Vec::new();
    for (_, stage) in config.stages.iter() {
        if let Some(sql) = &stage.sql
            && let Ok(text) = std::fs::read_to_string(base.join(sql))
        {
            called.extend(function::called(&text));
        }
    }
    called.sort();
    called.dedup();
    let first = called.first()?;
    let Some(location) = registry else {
        r.at(
            &["stages"],
            format!(
                "the SQL calls {}('{first}', …) but the pipeline has no model registry",
                function::FUNCTION
            ),
            Some("add `models: {registry: ../models/registry}` (or set STRATUS_MODELS)"),
        );
        return None;
    };
    let poll = poll(r, config.models.as_ref());
    let loaded = match Registry::open(location, &crate::sink::storage_options_from_env()) {
        Ok(registry) => Models::load(registry, &called, poll).await,
        Err(e) => Err(e.into()),
    };
    match loaded {
        Ok(models) => Some(models),
        Err(e) => {
            r.at(
                &["models", "registry"],
                format!("a model the SQL calls: {e}"),
                Some("`stratus models list` shows what is registered"),
            );
            None
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn check_score_stage(
    r: &mut Reporter<'_>,
    name: &str,
    score: &ScoreStageConfig,
    models: Option<&ModelsConfig>,
    registry: Option<&str>,
    relations: &[(String, Relation)],
    failed: &[&str],
) -> Option<StagePlan> {
    let at = |field: &'static str| ["stages", name, "score", field];
    if failed.contains(&score.from.as_str()) {
        return None;
    }
    let input = super::stage::input(r, &at("from"), &score.from, relations)?;
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

    let needs_registry = model.is_some() || shadow.is_some();
    let poll = poll(r, models);
    if needs_registry {
        match registry {
            None => r.at(
                &["stages", name, "score"],
                "a model is named but the pipeline has no model registry",
                Some("add `models: {registry: ../models/registry}` (or set STRATUS_MODELS)"),
            ),
            Some(location) => {
                check_models(
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
        registry: registry.map(str::to_string),
        poll,
    };
    let output_schema = spec.output_schema(&schema);
    Some(StagePlan {
        name: name.to_string(),
        input: score.from.clone(),
        input_schema: schema,
        side_inputs: Vec::new(),
        output_time: input.event_time.clone(),
        output_schema,
        allowed_lateness: input.lateness,
        kind: StageKind::Score(spec),
    })
}

/// Resolves each model and checks its manifest's features against the input.
async fn check_models(
    r: &mut Reporter<'_>,
    stage: &str,
    location: &str,
    models: &[(&'static str, &Option<ModelRef>)],
    input: &arrow::datatypes::Schema,
) {
    let registry = match Registry::open(location, &crate::sink::storage_options_from_env()) {
        Ok(reg) => reg,
        Err(e) => {
            r.at(&["models", "registry"], e.to_string(), None);
            return;
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
}
