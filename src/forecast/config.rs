//! A forecast stage as written — `forecast: {from, model, key, value, horizons, …}` — and its
//! check before anything runs: its input, key, time and value columns, horizons and history;
//! and the loading of the forecast model it names (also the spot recommendations'), which must
//! take [`FEATURES`] in. Out: the stage's [`Planned`] [`ForecastSpec`].

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::accuracy;
use super::model::FEATURES;
use super::stage::{ForecastRef, ForecastSpec};
use crate::check::diagnostics::Reporter;
use crate::check::{
    Checking, Planned, SideOutput, decision_plan, duration, input, is_timestamp, need_columns,
    parsed_duration,
};
use crate::score::drift::DriftSpec;
use crate::score::health::HealthConfig;
use crate::score::registry::{ModelRef, Registry};
use crate::score::stage::is_numeric;

/// A forecast stage (see `forecast::stage`): per key, from each hour, the quantiles of the value
/// `horizons` ahead.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForecastStageConfig {
    /// An hourly stage.
    pub from: String,
    /// A forecast model: `name` (the newest version, followed) or `name@version`.
    pub model: String,
    /// Columns identifying a series.
    pub key: Vec<String>,
    /// The hour's start (default `window_start`).
    #[serde(default = "default_forecast_time")]
    pub time: String,
    /// The numeric column forecast.
    pub value: String,
    #[serde(default = "default_horizons")]
    pub horizons: Vec<String>,
    /// History a series needs before it is forecast.
    #[serde(default = "default_min_history")]
    pub min_history: String,
    /// How the model's inputs are watched for drift (default: the last 1,000 rows, PSI 0.2,
    /// KL 0.1).
    #[serde(default)]
    pub drift: DriftSpec,
    /// The name of the relation of its accuracy rows (`forecast::accuracy`), which sinks and
    /// later stages read; none: the rows are not kept (the metrics are).
    #[serde(default)]
    pub accuracy: Option<String>,
    /// Where its model's accuracy goes as health rows for alert stages (`score::health`).
    #[serde(default)]
    pub health: Option<HealthConfig>,
    /// The errors past which its model counts as degraded.
    #[serde(default)]
    pub degraded: DegradedSpec,
}

/// When a forecast model counts as degraded: over its last `outcomes` forecasts met by their
/// actuals at a horizon, a MAPE over `mape` or an sMAPE over `smape` (the seed's 15 % and 20 %).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DegradedSpec {
    pub mape: f64,
    pub smape: f64,
    pub outcomes: usize,
}

impl Default for DegradedSpec {
    fn default() -> Self {
        DegradedSpec {
            mape: 0.15,
            smape: 0.2,
            outcomes: 168,
        }
    }
}

fn default_forecast_time() -> String {
    "window_start".into()
}
fn default_horizons() -> Vec<String> {
    vec!["1h".into(), "6h".into(), "24h".into()]
}
fn default_min_history() -> String {
    "48h".into()
}

/// The longest horizon a forecast stage may ask for, and the most history it may wait for.
const MAX_HORIZON: i64 = 7 * 24 * 3_600_000_000;

/// Checks a forecast stage and loads its model: its plan, or `None` with every problem
/// reported.
pub(crate) async fn check(
    cx: &mut Checking<'_, '_>,
    name: &str,
    c: &ForecastStageConfig,
) -> Option<Planned<ForecastSpec>> {
    let at = |field: &'static str| ["stages", name, "forecast", field];
    let (r, registry, poll) = (&mut *cx.r, cx.registry, cx.poll);
    let rel = input(r, &at("from"), &c.from, cx.relations)?;
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
        let Some(us) = parsed_duration(r, &at("horizons"), h) else {
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
        Some(location) => forecast_model(r, &at("model"), &c.model, location, poll)
            .await
            .map(|m| ForecastRef {
                drift: c.drift.clone(),
                ..m
            }),
    };
    if let Some(problem) = c.drift.problem() {
        r.at(&at("drift"), problem, None);
    }
    let d = &c.degraded;
    if !(d.mape > 0.0 && d.smape > 0.0 && d.mape.is_finite() && d.smape.is_finite())
        || d.outcomes == 0
    {
        r.at(
            &at("degraded"),
            "mape and smape must be positive numbers, outcomes at least 1",
            Some("the defaults: {mape: 0.15, smape: 0.2, outcomes: 168}"),
        );
    }
    let health = c
        .health
        .as_ref()
        .and_then(|h| crate::score::health::check(r, &at("health"), h, "accuracy"));
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
        accuracy: c.accuracy.is_some(),
        health_sustain: health.as_ref().map(|(_, sustain)| *sustain),
        degraded: c.degraded.clone(),
    };
    let output = spec.output_schema();
    let mut plan = decision_plan(name, &c.from, schema, output, rel.lateness, spec);
    plan.side_outputs
        .extend(c.accuracy.iter().map(|relation| SideOutput {
            name: relation.clone(),
            output: accuracy::OUTPUT,
            schema: accuracy::schema(&c.key),
            time: Some("ts".into()),
            per_worker: false,
        }));
    plan.side_outputs.extend(health.map(|(output, _)| output));
    Some(plan)
}

/// Resolves and loads a forecast model ([`FEATURES`] in) from the registry, with how often a
/// running stage looks for a newer version.
pub(crate) async fn forecast_model(
    r: &mut Reporter<'_>,
    path: &[&str],
    text: &str,
    location: &str,
    poll: Duration,
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
        poll,
        distribution: loaded.manifest.input_distribution.clone(),
        drift: DriftSpec::default(),
    })
}
