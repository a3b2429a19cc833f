//! Checks the decision stages — `alert` and `recommend` — before anything runs: their input,
//! its columns and types, durations, thresholds, maintenance windows, the catalogue and
//! workloads files, and the forecast model.

use std::path::Path;
use std::sync::Arc;

use super::config::{AlertStageConfig, MaintenanceConfig, ModelsConfig, RecommendStageConfig};
use super::diagnostics::Reporter;
use super::stage::{
    Relation, StageKind, StagePlan, decision_plan, duration, input, is_timestamp, need_columns,
};
use crate::decide::alert::{Maintenance, MaintenanceTime, Policy};
use crate::decide::catalogue::{Catalogue, region_of};
use crate::decide::mix::check_requirement;
use crate::decide::rows::{AlertInput, alert_schema, recommendation_schema};
use crate::decide::spot::Workload;
use crate::decide::stage::{AlertSpec, DemandForecast, RightsizeSpec, SpotSpec};
use crate::score::stage::is_numeric;

pub(super) fn check_alert_stage(
    r: &mut Reporter<'_>,
    name: &str,
    a: &AlertStageConfig,
    relations: &[(String, Relation)],
) -> Option<StagePlan> {
    let at = |field: &'static str| ["stages", name, "alert", field];
    let rel = input(r, &at("from"), &a.from, relations)?;
    let schema = rel.schema.clone();
    let before = r.found.len();
    let resource = a.resource.clone().or_else(|| a.key.first().cloned());
    if a.key.is_empty() {
        r.at(
            &at("key"),
            "an alert stage needs `key` columns (what an alert is about)",
            None,
        );
    }
    let keys: Vec<&str> = a.key.iter().map(String::as_str).collect();
    need_columns(r, &at("key"), &schema, &a.from, &keys, None, "");
    need_columns(
        r,
        &at("labels"),
        &schema,
        &a.from,
        &a.labels.iter().map(String::as_str).collect::<Vec<_>>(),
        None,
        "",
    );
    if let Some(res) = &resource {
        need_columns(r, &at("resource"), &schema, &a.from, &[res], None, "");
    }
    need_columns(
        r,
        &at("score"),
        &schema,
        &a.from,
        &[&a.score],
        Some(is_numeric),
        "a number",
    );
    if let Some(i) = &a.impact {
        need_columns(
            r,
            &at("impact"),
            &schema,
            &a.from,
            &[i],
            Some(is_numeric),
            "a number",
        );
    }
    need_columns(
        r,
        &["stages", name, "alert", "from"],
        &schema,
        &a.from,
        &["window_start", "window_end"],
        Some(is_timestamp),
        "a timestamp",
    );
    let s = &a.severity;
    if !(0.0 < s.info && s.info <= s.warning && s.warning <= s.critical && s.critical <= 1.0) {
        r.at(
            &at("severity"),
            format!(
                "thresholds info {}, warning {}, critical {} are not ordered within (0, 1]",
                s.info, s.warning, s.critical
            ),
            Some("scores are in [0, 1]; for example info 0.5, warning 0.7, critical 0.9"),
        );
    }
    let escalate_after = s
        .escalate_after
        .as_deref()
        .map(|e| duration(r, &at("severity"), e));
    let resolve_after = duration(r, &at("resolve_after"), &a.resolve_after);
    let cooldown = duration(r, &at("cooldown"), &a.cooldown);
    if resolve_after == 0 {
        r.at(
            &at("resolve_after"),
            "resolve_after must be longer than 0",
            None,
        );
    }
    let flapping = a.flapping.as_ref().map(|f| {
        if f.max_firings == 0 {
            r.at(&at("flapping"), "max_firings must be at least 1", None);
        }
        (duration(r, &at("flapping"), &f.window), f.max_firings)
    });
    // Every label the policy reads: the key and the labels.
    let mut labels: Vec<String> = a.key.clone();
    for l in &a.labels {
        if !labels.contains(l) {
            labels.push(l.clone());
        }
    }
    let maintenance: Vec<Maintenance> = a
        .maintenance
        .iter()
        .filter_map(|m| maintenance(r, &at("maintenance"), m, &labels))
        .collect();
    let correlate = a.correlate.as_ref().map(|c| {
        let sets: Vec<Vec<String>> = c.by.iter().map(|s| s.columns()).collect();
        for col in sets.iter().flatten() {
            if !labels.contains(col) {
                r.at(
                    &at("correlate"),
                    format!("`{col}` is neither a key nor a label column"),
                    Some("add it to `labels`"),
                );
            }
        }
        (sets, duration(r, &at("correlate"), &c.window))
    });
    let contributions: Vec<(String, String)> = schema
        .fields()
        .iter()
        .filter_map(|f| {
            let d = f.name().strip_prefix("c_")?;
            is_numeric(f.data_type()).then(|| (d.to_string(), f.name().clone()))
        })
        .collect();
    if r.found.len() > before {
        return None;
    }
    let detectors: Vec<String> = contributions.iter().map(|(d, _)| d.clone()).collect();
    let spec = AlertSpec {
        policy: Policy {
            stage: name.to_string(),
            kind: a.kind.clone(),
            thresholds: [s.info, s.warning, s.critical],
            escalate_after,
            impact_warning: s.impact_warning,
            impact_critical: s.impact_critical,
            resolve_after,
            cooldown,
            flapping,
            maintenance,
            correlate,
        },
        input: AlertInput {
            key: a.key.clone(),
            resource: resource.unwrap_or_default(),
            score: a.score.clone(),
            contributions,
            impact: a.impact.clone(),
            labels: labels.clone(),
        },
        schema: alert_schema(&detectors, &labels),
    };
    let output = Arc::clone(&spec.schema);
    Some(decision_plan(
        name,
        &a.from,
        schema,
        output,
        rel.lateness,
        StageKind::Alert(spec),
    ))
}

fn maintenance(
    r: &mut Reporter<'_>,
    path: &[&str],
    m: &MaintenanceConfig,
    labels: &[String],
) -> Option<Maintenance> {
    for k in m.matches.keys() {
        if !labels.iter().any(|l| l == k) {
            r.at(
                path,
                format!("maintenance matches `{k}`, which is neither a key nor a label column"),
                Some("add it to `labels`"),
            );
        }
    }
    let matches = m
        .matches
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let time = |r: &mut Reporter<'_>, t: &str| {
        chrono::DateTime::parse_from_rfc3339(t)
            .map(|d| d.timestamp_micros())
            .map_err(|e| {
                r.at(
                    path,
                    format!("{t:?} is not an RFC 3339 time: {e}"),
                    Some("for example 2026-12-01T02:00:00Z"),
                )
            })
            .ok()
    };
    let when = match (&m.start, &m.end, &m.weekly) {
        (Some(s), Some(e), None) => {
            let (s, e) = (time(r, s)?, time(r, e)?);
            if e <= s {
                r.at(path, "a maintenance window ends before it starts", None);
                return None;
            }
            MaintenanceTime::Once { start: s, end: e }
        }
        (None, None, Some(w)) => {
            const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
            let mut days = Vec::new();
            for d in &w.days {
                match DAYS
                    .iter()
                    .position(|x| d.to_ascii_lowercase().starts_with(x))
                {
                    Some(i) => days.push(i as u32),
                    None => r.at(
                        path,
                        format!("{d:?} is not a day"),
                        Some("mon, tue, wed, thu, fri, sat or sun"),
                    ),
                }
            }
            let minute = |r: &mut Reporter<'_>, t: &str| {
                let parsed = t
                    .split_once(':')
                    .and_then(|(h, m)| Some((h.parse::<u32>().ok()?, m.parse::<u32>().ok()?)))
                    .filter(|(h, m)| (*h < 24 && *m < 60) || (*h == 24 && *m == 0));
                match parsed {
                    Some((h, m)) => Some(h * 60 + m),
                    None => {
                        r.at(
                            path,
                            format!("{t:?} is not a time of day"),
                            Some("HH:MM, UTC"),
                        );
                        None
                    }
                }
            };
            let (from, to) = (minute(r, &w.from)?, minute(r, &w.to)?);
            if to <= from {
                r.at(
                    path,
                    "a weekly maintenance window must end after it starts on the same day",
                    None,
                );
                return None;
            }
            MaintenanceTime::Weekly { days, from, to }
        }
        _ => {
            r.at(
                path,
                "a maintenance window has either `start` and `end`, or `weekly`",
                None,
            );
            return None;
        }
    };
    Some(Maintenance { when, matches })
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn check_recommend_stage(
    r: &mut Reporter<'_>,
    base: &Path,
    name: &str,
    c: &RecommendStageConfig,
    registry: Option<&str>,
    models: Option<&ModelsConfig>,
    relations: &[(String, Relation)],
) -> Option<StagePlan> {
    let at = |field: &'static str| ["stages", name, "recommend", field];
    let rel = input(r, &at("from"), &c.from, relations)?;
    let schema = rel.schema.clone();
    let before = r.found.len();
    let catalogue_path = base.join(&c.catalogue);
    let catalogue = Catalogue::load(&catalogue_path)
        .map_err(|e| {
            r.at(
                &at("catalogue"),
                e.to_string(),
                Some("see catalogue/README.md for the format"),
            )
        })
        .ok();
    let min_history = duration(r, &at("min_history"), &c.min_history);
    let spec = match c.kind.as_str() {
        "spot" => {
            need_columns(
                r,
                &at("from"),
                &schema,
                &c.from,
                &["instance_type", "az"],
                None,
                "",
            );
            need_columns(
                r,
                &at("from"),
                &schema,
                &c.from,
                &["window_start"],
                Some(is_timestamp),
                "a timestamp",
            );
            need_columns(
                r,
                &at("price"),
                &schema,
                &c.from,
                &[&c.price],
                Some(is_numeric),
                "a number",
            );
            let workloads = workloads(
                r,
                &at("workloads"),
                base,
                c.workloads.as_deref(),
                catalogue.as_ref(),
            );
            let model = match (&c.model, registry) {
                (None, _) => None,
                (Some(_), None) => {
                    r.at(
                        &at("model"),
                        "a model is named but the pipeline has no model registry",
                        Some("add `models: {registry: ../models/registry}`"),
                    );
                    None
                }
                (Some(m), Some(location)) => {
                    super::forecast::forecast_model(r, &at("model"), m, location, models).await
                }
            };
            if c.forecast.is_some() {
                r.at(
                    &at("forecast"),
                    "`forecast` is for rightsizing; spot recommendations forecast with `model`",
                    None,
                );
            }
            if c.paths == 0 || c.paths > 1_000_000 {
                r.at(&at("paths"), "paths must be between 1 and 1000000", None);
            }
            StageKind::Spot(SpotSpec {
                stage: name.to_string(),
                instance_type: "instance_type".into(),
                az: "az".into(),
                time: "window_start".into(),
                price: c.price.clone(),
                workloads: workloads.unwrap_or_default(),
                catalogue: catalogue.clone().unwrap_or_default(),
                model,
                proxy: c.interruption.unwrap_or_default(),
                weights: c.weights.unwrap_or_default(),
                paths: c.paths,
                hours: crate::decide::recommend::MONTH_HOURS,
                min_history,
            })
        }
        "rightsizing" => {
            let value = c.value.clone().unwrap_or_else(|| "max".into());
            need_columns(
                r,
                &at("from"),
                &schema,
                &c.from,
                &["resource_id", "metric", "instance_type", "region"],
                None,
                "",
            );
            need_columns(
                r,
                &at("from"),
                &schema,
                &c.from,
                &["window_end"],
                Some(is_timestamp),
                "a timestamp",
            );
            need_columns(
                r,
                &at("value"),
                &schema,
                &c.from,
                &[&value],
                Some(is_numeric),
                "a number",
            );
            StageKind::Rightsizing(RightsizeSpec {
                stage: name.to_string(),
                resource: "resource_id".into(),
                metric: "metric".into(),
                value,
                time: "window_end".into(),
                instance_type: "instance_type".into(),
                region: "region".into(),
                cpu_metric: c.cpu_metric.clone(),
                memory_metric: c.memory_metric.clone(),
                span: duration(r, &at("span"), &c.span),
                every: duration(r, &at("every"), &c.every),
                min_history,
                headroom: c.headroom.unwrap_or_default(),
                catalogue: catalogue.clone().unwrap_or_default(),
                forecast: c
                    .forecast
                    .as_ref()
                    .and_then(|f| demand_forecast(r, &at("forecast"), f, relations)),
            })
        }
        other => {
            r.at(
                &at("kind"),
                format!("unknown recommendation kind {other:?}"),
                Some("`spot` or `rightsizing`"),
            );
            return None;
        }
    };
    if r.found.len() > before {
        return None;
    }
    let mut plan = decision_plan(
        name,
        &c.from,
        schema,
        recommendation_schema(),
        rel.lateness,
        spec,
    );
    plan.side_inputs.extend(c.forecast.clone());
    Some(plan)
}

/// A rightsizing stage's demand forecast: an earlier stage with a forecast stage's columns,
/// keyed by resource.
fn demand_forecast(
    r: &mut Reporter<'_>,
    path: &[&str],
    stage: &str,
    relations: &[(String, Relation)],
) -> Option<DemandForecast> {
    let rel = input(r, path, stage, relations)?;
    let before = r.found.len();
    let schema = &rel.schema;
    need_columns(r, path, schema, stage, &["resource_id"], None, "");
    need_columns(
        r,
        path,
        schema,
        stage,
        &["ts"],
        Some(is_timestamp),
        "a timestamp",
    );
    let quantiles = ["p025", "p10", "p50", "p90", "p975"];
    need_columns(
        r,
        path,
        schema,
        stage,
        &quantiles,
        Some(is_numeric),
        "a number",
    );
    (r.found.len() == before).then(|| DemandForecast {
        stage: stage.to_string(),
        resource: "resource_id".into(),
        origin: "ts".into(),
        quantiles: quantiles.map(String::from),
    })
}

/// Reads the workloads file: a YAML list of workloads, each type in the catalogue for its zone.
fn workloads(
    r: &mut Reporter<'_>,
    path: &[&str],
    base: &Path,
    file: Option<&str>,
    catalogue: Option<&Catalogue>,
) -> Option<Vec<Workload>> {
    let Some(file) = file else {
        r.at(path, "a spot recommend stage needs a `workloads` file", Some("a YAML list: name, instance_type, az, count, purchase, interruption_tolerance, availability_target"));
        return None;
    };
    let full = base.join(file);
    let text = std::fs::read_to_string(&full)
        .map_err(|e| {
            r.at(
                path,
                format!("cannot read {}: {e}", full.display()),
                Some("paths are relative to the pipeline file"),
            )
        })
        .ok()?;
    let list: Vec<Workload> = serde_norway::from_str(&text)
        .map_err(|e| {
            let line = e.location().map(|l| l.line());
            r.in_file(&full, line, None, e.to_string(), Some("each workload: name, instance_type, az, count, purchase (on_demand | spot), interruption_tolerance (none | low | medium | high), availability_target, optional restart_minutes and requirement"))
        })
        .ok()?;
    for w in &list {
        if let Some(c) = catalogue
            && c.get(&w.instance_type, region_of(&w.az)).is_none()
        {
            r.in_file(
                &full,
                None,
                None,
                format!(
                    "workload {}: {} is not in the catalogue for {}",
                    w.name,
                    w.instance_type,
                    region_of(&w.az)
                ),
                None,
            );
        }
        if !(0.0..=1.0).contains(&w.availability_target) || w.count == 0 {
            r.in_file(
                &full,
                None,
                None,
                format!(
                    "workload {}: count must be at least 1 and availability_target in [0, 1]",
                    w.name
                ),
                None,
            );
        }
        if let Some(req) = &w.requirement
            && let Err(e) = check_requirement(req)
        {
            r.in_file(&full, None, None, format!("workload {}: {e}", w.name), None);
        }
    }
    Some(list)
}
