//! The decision stages as written — `alert: {…}` and `recommend: {…}` — and their checks
//! before anything runs: their input, its columns and types, durations, thresholds,
//! maintenance windows, the catalogue and workloads files, and the forecast model. Out: each
//! stage's [`Planned`] [`AlertSpec`], or its [`Recommend`]: a [`SpotSpec`] or a [`RightsizeSpec`].

use std::path::Path;
use std::sync::Arc;

use arrow::datatypes::DataType;
use serde::Deserialize;

use super::alert::{Maintenance, MaintenanceTime, Policy};
use super::catalogue::{Catalogue, region_of};
use super::feedback::FeedbackSpec;
use super::mix::check_requirement;
use super::rows::{AlertInput, alert_schema, recommendation_schema};
use super::spot::Workload;
use super::stage::{AlertSpec, DemandForecast, RightsizeSpec, SpotSpec};
use crate::check::diagnostics::Reporter;
use crate::check::{
    Checking, Planned, Relation, decision_plan, duration, input, is_timestamp, need_columns,
};
use crate::forecast::config::forecast_model;
use crate::score::stage::is_numeric;

/// An alert stage: severity, dedup, suppression and correlation over scored rows.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertStageConfig {
    /// A score stage.
    pub from: String,
    /// The alerts' `kind`, e.g. `metric_anomaly` or `cost_anomaly`.
    pub kind: String,
    /// Columns identifying what an alert is about (its dedup key).
    pub key: Vec<String>,
    /// The column naming the resource (default: the first key column).
    #[serde(default)]
    pub resource: Option<String>,
    #[serde(default = "default_alert_score")]
    pub score: String,
    /// A numeric column with the cost impact in USD (e.g. a carried `cost_excess`).
    #[serde(default)]
    pub impact: Option<String>,
    /// Columns copied into each alert's `labels` (the key columns always are).
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default)]
    pub severity: SeverityConfig,
    #[serde(default = "default_resolve_after")]
    pub resolve_after: String,
    #[serde(default = "default_cooldown")]
    pub cooldown: String,
    #[serde(default)]
    pub flapping: Option<FlappingConfig>,
    #[serde(default)]
    pub maintenance: Vec<MaintenanceConfig>,
    #[serde(default)]
    pub correlate: Option<CorrelateConfig>,
    /// Verdicts on the stage's alerts (see [`super::feedback`]).
    #[serde(default)]
    pub feedback: Option<FeedbackConfig>,
}

/// Where an alert stage hears whether its alerts were real: a source (or earlier stage) of
/// rows with `alert_id`, `verdict` (`true` or `noise`) and `ts`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackConfig {
    pub from: String,
    /// How long an alert takes verdicts.
    #[serde(default = "default_feedback_window")]
    pub window: String,
    /// Above this false-positive rate the shipped rule alerts (the seed's 5 %).
    #[serde(default = "default_false_positive_rate")]
    pub max_false_positive_rate: f64,
}

fn default_feedback_window() -> String {
    "30d".into()
}
fn default_false_positive_rate() -> f64 {
    0.05
}

fn default_alert_score() -> String {
    "anomaly_score".into()
}
fn default_resolve_after() -> String {
    "15m".into()
}
fn default_cooldown() -> String {
    "1h".into()
}

/// Score thresholds and what raises a severity.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeverityConfig {
    #[serde(default = "info_at")]
    pub info: f64,
    #[serde(default = "warning_at")]
    pub warning: f64,
    #[serde(default = "critical_at")]
    pub critical: f64,
    /// An anomaly lasting this long is raised one level.
    #[serde(default)]
    pub escalate_after: Option<String>,
    /// Impact (USD) that makes an alert at least a warning / critical.
    #[serde(default)]
    pub impact_warning: Option<f64>,
    #[serde(default)]
    pub impact_critical: Option<f64>,
}

fn info_at() -> f64 {
    0.5
}
fn warning_at() -> f64 {
    0.7
}
fn critical_at() -> f64 {
    0.9
}

impl Default for SeverityConfig {
    fn default() -> Self {
        SeverityConfig {
            info: info_at(),
            warning: warning_at(),
            critical: critical_at(),
            escalate_after: None,
            impact_warning: None,
            impact_critical: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlappingConfig {
    pub window: String,
    pub max_firings: usize,
}

/// A maintenance window: `start`/`end` (RFC 3339) once, or `weekly`; `match` narrows it to
/// label values.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceConfig {
    #[serde(default)]
    pub start: Option<String>,
    #[serde(default)]
    pub end: Option<String>,
    #[serde(default)]
    pub weekly: Option<WeeklyConfig>,
    #[serde(default, rename = "match")]
    pub matches: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeeklyConfig {
    /// `mon` … `sun`.
    pub days: Vec<String>,
    /// `HH:MM` UTC, start inclusive, end exclusive.
    pub from: String,
    pub to: String,
}

/// Which shared label values correlate alerts, and within how long.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorrelateConfig {
    /// Each entry a column or a list of columns; sharing any one entry's values correlates.
    pub by: Vec<ColumnSet>,
    pub window: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ColumnSet {
    One(String),
    All(Vec<String>),
}

impl ColumnSet {
    pub fn columns(&self) -> Vec<String> {
        match self {
            ColumnSet::One(c) => vec![c.clone()],
            ColumnSet::All(c) => c.clone(),
        }
    }
}

/// A recommend stage.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecommendStageConfig {
    pub from: String,
    /// `spot` (spot / on-demand and instance mix per workload, from hourly spot prices:
    /// columns `instance_type`, `az`, `window_start` and `price`) or `rightsizing` (per
    /// resource, from utilisation windows: `resource_id`, `metric`, `instance_type`,
    /// `region`, `window_end` and `value`).
    pub kind: String,
    /// The instance catalogue CSV, relative to the pipeline file.
    pub catalogue: String,
    /// spot: the workloads file (YAML list), relative to the pipeline file.
    #[serde(default)]
    pub workloads: Option<String>,
    /// spot: the spot price forecast model; without one, each pool's own history of changes.
    #[serde(default)]
    pub model: Option<String>,
    /// spot: the hourly price column.
    #[serde(default = "default_price")]
    pub price: String,
    #[serde(default)]
    pub weights: Option<super::mix::Weights>,
    #[serde(default)]
    pub interruption: Option<super::spot::InterruptionProxy>,
    #[serde(default = "default_paths")]
    pub paths: usize,
    /// History needed before recommending (spot: hourly prices; rightsizing: utilisation).
    #[serde(default = "default_min_history")]
    pub min_history: String,
    /// rightsizing: the utilisation column (percent) and the metrics it is read from.
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default = "default_cpu_metric")]
    pub cpu_metric: String,
    #[serde(default = "default_memory_metric")]
    pub memory_metric: String,
    /// rightsizing: the trailing span and how often a resource is reassessed.
    #[serde(default = "default_span")]
    pub span: String,
    #[serde(default = "default_every")]
    pub every: String,
    #[serde(default)]
    pub headroom: Option<super::rightsize::Headroom>,
    /// rightsizing: an earlier forecast stage of each resource's CPU (key `resource_id`); a
    /// resource it forecasts is sized to hold the 95th percentile of its forecast for the hours
    /// ahead instead of its past p95.
    #[serde(default)]
    pub forecast: Option<String>,
}

fn default_price() -> String {
    "mean_price".into()
}
fn default_paths() -> usize {
    2000
}
fn default_min_history() -> String {
    "48h".into()
}
fn default_cpu_metric() -> String {
    "CPUUtilization".into()
}
fn default_memory_metric() -> String {
    "MemoryUtilization".into()
}
fn default_span() -> String {
    "7d".into()
}
fn default_every() -> String {
    "1h".into()
}

/// Checks an alert stage: its plan, or `None` with every problem reported.
pub(crate) fn check_alert(
    cx: &mut Checking<'_, '_>,
    name: &str,
    a: &AlertStageConfig,
) -> Option<Planned<AlertSpec>> {
    let at = |field: &'static str| ["stages", name, "alert", field];
    let r = &mut *cx.r;
    let rel = input(r, &at("from"), &a.from, cx.relations)?;
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
    let feedback = a
        .feedback
        .as_ref()
        .and_then(|f| check_feedback(r, name, f, cx.relations));
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
        feedback,
    };
    let output = Arc::clone(&spec.schema);
    let mut plan = decision_plan(name, &a.from, schema, output, rel.lateness, spec);
    plan.side_inputs
        .extend(a.feedback.as_ref().map(|f| f.from.clone()));
    Some(plan)
}

fn is_text(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

/// Checks an alert stage's feedback: its input's columns, its window and its threshold.
fn check_feedback(
    r: &mut Reporter<'_>,
    name: &str,
    f: &FeedbackConfig,
    relations: &[(String, Relation)],
) -> Option<FeedbackSpec> {
    let path = ["stages", name, "alert", "feedback"];
    let rel = input(r, &path, &f.from, relations)?;
    let before = r.found.len();
    let columns = ["alert_id", "verdict"];
    need_columns(
        r,
        &path,
        &rel.schema,
        &f.from,
        &columns,
        Some(is_text),
        "a string",
    );
    need_columns(
        r,
        &path,
        &rel.schema,
        &f.from,
        &["ts"],
        Some(is_timestamp),
        "a timestamp",
    );
    let window = duration(r, &path, &f.window);
    let rate = f.max_false_positive_rate;
    if !(0.0 < rate && rate < 1.0) {
        r.at(
            &path,
            format!("max_false_positive_rate {rate} is not within (0, 1)"),
            Some("a share of the alerts given a verdict: the seed's is 0.05"),
        );
    }
    (r.found.len() == before).then(|| FeedbackSpec {
        from: f.from.clone(),
        window,
        max_false_positive_rate: rate,
    })
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

/// What a recommend stage's check gives: spot / on-demand and instance-mix recommendations, or
/// rightsizing.
#[derive(Debug, Clone)]
pub enum Recommend {
    Spot(SpotSpec),
    Rightsizing(RightsizeSpec),
}

/// Checks a recommend stage and loads what it needs (catalogue, workloads, forecast model):
/// its plan, or `None` with every problem reported.
pub(crate) async fn check_recommend(
    cx: &mut Checking<'_, '_>,
    name: &str,
    c: &RecommendStageConfig,
) -> Option<Planned<Recommend>> {
    let at = |field: &'static str| ["stages", name, "recommend", field];
    let (r, base, registry, relations) = (&mut *cx.r, cx.base, cx.registry, cx.relations);
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
                    forecast_model(r, &at("model"), m, location, cx.poll).await
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
            Recommend::Spot(SpotSpec {
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
            Recommend::Rightsizing(RightsizeSpec {
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
