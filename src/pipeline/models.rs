//! A pipeline's model registry: where it is, how often stages look for newer versions, and
//! the models its SQL calls with `score('…', …)`, loaded when the pipeline is checked.

use std::path::Path;
use std::time::Duration;

use super::config::{ModelsConfig, PipelineConfig};
use crate::check::diagnostics::Reporter;
use crate::check::parsed_duration;
use crate::score::function::{self, Models};
use crate::score::registry::Registry;

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
pub(super) fn poll(r: &mut Reporter<'_>, models: Option<&ModelsConfig>) -> Duration {
    let us = models.map_or(Some(10_000_000), |m| {
        parsed_duration(r, &["models", "poll"], &m.poll)
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
    poll: Duration,
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
