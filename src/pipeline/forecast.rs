//! Checks a `forecast` stage before anything runs — its input, key, time and value columns,
//! horizons and history — and loads the forecast model it names (also the spot
//! recommendations'), which must take [`FEATURES`] in.

use std::sync::Arc;
use std::time::Duration;

use super::config::{ForecastStageConfig, ModelsConfig};
use super::diagnostics::Reporter;
use super::stage::{
    Relation, StageKind, StagePlan, decision_plan, duration, input, is_timestamp, need_columns,
};
use crate::forecast::model::FEATURES;
use crate::forecast::stage::{ForecastRef, ForecastSpec};
use crate::score::registry::{ModelRef, Registry};
use crate::score::stage::is_numeric;

/// The longest horizon a forecast stage may ask for, and the most history it may wait for.
const MAX_HORIZON: i64 = 7 * 24 * 3_600_000_000;

pub(super) async fn check_forecast_stage(
    r: &mut Reporter<'_>,
    name: &str,
    c: &ForecastStageConfig,
    registry: Option<&str>,
    models: Option<&ModelsConfig>,
    relations: &[(String, Relation)],
) -> Option<StagePlan> {
    let at = |field: &'static str| ["stages", name, "forecast", field];
    let rel = input(r, &at("from"), &c.from, relations)?;
    let schema = rel.schema.clone();
    let before = r.found.len();
    if c.key.is_empty() {
        r.at(&at("key"), "a forecast stage needs key columns", None);
    }
    let key: Vec<&str> = c.key.iter().map(String::as_str).collect();
    need_columns(r, &at("key"), &schema, &c.from, &key, None, "");
    need_columns(
        r,
        &at("time"),
        &schema,
        &c.from,
        &[&c.time],
        Some(is_timestamp),
        "a timestamp",
    );
    need_columns(
        r,
        &at("value"),
        &schema,
        &c.from,
        &[&c.value],
        Some(is_numeric),
        "a number",
    );
    let output: Vec<&str> = [
        "ts",
        "target_ts",
        "horizon_hours",
        "value",
        "model_version",
        "forecaster",
    ]
    .into_iter()
    .chain(["p025", "p10", "p50", "p90", "p975"])
    .collect();
    for k in c.key.iter().filter(|k| output.contains(&k.as_str())) {
        r.at(
            &at("key"),
            format!("key column `{k}` would clash with the stage's own `{k}` column"),
            Some("rename it in the input stage's SQL"),
        );
    }
    let mut horizons = Vec::new();
    for h in &c.horizons {
        let Ok(us) = crate::window::parse_duration(h) else {
            duration(r, &at("horizons"), h);
            continue;
        };
        if us % 3_600_000_000 != 0 || us <= 0 || us > MAX_HORIZON {
            r.at(
                &at("horizons"),
                format!("horizon {h}: a whole number of hours up to 7 days"),
                Some("for example [1h, 6h, 24h]"),
            );
        }
        horizons.push(us);
    }
    if horizons.is_empty() {
        r.at(
            &at("horizons"),
            "no horizon",
            Some("for example [1h, 6h, 24h]"),
        );
    }
    horizons.sort_unstable();
    horizons.dedup();
    let min_history = duration(r, &at("min_history"), &c.min_history);
    if min_history > MAX_HORIZON {
        r.at(
            &at("min_history"),
            "at most 7 days: the stage keeps 8 days of each series",
            None,
        );
    }
    let model = match registry {
        None => {
            r.at(
                &at("model"),
                "a model is named but the pipeline has no model registry",
                Some("add `models: {registry: ../models/registry}`"),
            );
            None
        }
        Some(location) => forecast_model(r, &at("model"), &c.model, location, models).await,
    };
    if r.found.len() > before {
        return None;
    }
    let spec = ForecastSpec {
        key: c.key.clone(),
        time: c.time.clone(),
        value: c.value.clone(),
        horizons,
        min_history,
        model: model?,
    };
    let output = spec.output_schema();
    Some(decision_plan(
        name,
        &c.from,
        schema,
        output,
        rel.lateness,
        StageKind::Forecast(spec),
    ))
}

/// Resolves and loads a forecast model ([`FEATURES`] in) from the registry, with how often a
/// running stage looks for a newer version.
pub(super) async fn forecast_model(
    r: &mut Reporter<'_>,
    path: &[&str],
    text: &str,
    location: &str,
    models: Option<&ModelsConfig>,
) -> Option<ForecastRef> {
    let reference = text
        .parse::<ModelRef>()
        .map_err(|e| {
            r.at(
                path,
                e.to_string(),
                Some("write `name` (newest version) or `name@3`"),
            )
        })
        .ok()?;
    let poll = models.map_or(10_000_000, |m| duration(r, &["models", "poll"], &m.poll));
    let registry = Registry::open(location, &crate::sink::storage_options_from_env())
        .map_err(|e| r.at(&["models", "registry"], e.to_string(), None))
        .ok()?;
    let version = registry
        .resolve(&reference)
        .await
        .map_err(|e| {
            r.at(
                path,
                e.to_string(),
                Some("`stratus models list` shows what is registered"),
            )
        })
        .ok()?;
    let loaded = registry
        .load(&reference.name, version)
        .await
        .map_err(|e| r.at(path, e.to_string(), None))
        .ok()?;
    let features: Vec<&str> = loaded.manifest.feature_names().collect();
    if features != FEATURES {
        r.at(
            path,
            format!(
                "{}@{version} is not a forecast model: its inputs are {features:?}",
                reference.name
            ),
            Some("train one with models/train_forecast.py"),
        );
        return None;
    }
    Some(ForecastRef {
        reference,
        version,
        onnx: Arc::clone(&loaded.onnx),
        registry: location.to_string(),
        poll: Duration::from_micros(poll.max(0) as u64),
    })
}
