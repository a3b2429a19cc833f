//! Stages, the one place that names every kind: a stage as written ([`StageFields`]), the one
//! kind it is ([`StageConfig`]), the check of each kind (in the module of its algorithm:
//! `sql::config`, `score::config`, `forecast::config`, `decide::config`), and what a check gives
//! ([`StagePlan`] with its [`StageKind`]), which `job::build` turns into the stage's operator.
//!
//! Also what the checkers share: the context they read ([`Checking`]), the relations a stage
//! may read, and column and duration checks.

use std::path::{Path, PathBuf};
use std::time::Duration;

use arrow::datatypes::{DataType, Schema, SchemaRef};
use serde::Deserialize;

use super::diagnostics::Reporter;
use crate::decide::config::{AlertStageConfig, RecommendStageConfig};
use crate::forecast::config::ForecastStageConfig;
use crate::score::config::ScoreStageConfig;
use crate::sql::Functions;
use crate::sql::config::SqlStageConfig;
use crate::window::config::CarryConfig;
use crate::window::{CarrySpec, WindowedQuery, parse_duration};

/// A stage as written in the pipeline file: exactly one of `sql` (with a window stage's
/// `carry` and `replace_by`), `score`, `forecast`, `alert` or `recommend`. Read as a struct so
/// that a stage of several kinds, or none, is reported with every other problem of the file;
/// [`StageFields::kind`] gives the one it is.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageFields {
    /// Path of the SQL file, relative to the pipeline file.
    #[serde(default)]
    pub sql: Option<String>,
    /// Features carried across a window stage's windows, per key.
    #[serde(default)]
    pub carry: Option<CarryConfig>,
    /// Input columns identifying a row that a later one replaces (a restated line item): in
    /// each window only the last row to arrive with those values counts. Window stages only.
    #[serde(default)]
    pub replace_by: Vec<String>,
    /// A model and streaming detectors applied to an earlier stage's rows.
    #[serde(default)]
    pub score: Option<ScoreStageConfig>,
    /// Forecasts with prediction intervals from a registered forecast model.
    #[serde(default)]
    pub forecast: Option<ForecastStageConfig>,
    /// The alert policy over a score stage's rows (see `decide::alert`).
    #[serde(default)]
    pub alert: Option<AlertStageConfig>,
    /// Recommendations from spot prices or utilisation (see `decide`).
    #[serde(default)]
    pub recommend: Option<RecommendStageConfig>,
}

/// The one kind a stage is, with its settings.
#[derive(Debug, Clone)]
pub enum StageConfig {
    Sql(SqlStageConfig),
    Score(ScoreStageConfig),
    Forecast(ForecastStageConfig),
    Alert(AlertStageConfig),
    Recommend(RecommendStageConfig),
}

const KINDS: &str = "`sql`, `score`, `forecast`, `alert` or `recommend`";

impl StageFields {
    /// The one kind the stage is, or what is wrong and a hint: several kinds, none, or a window
    /// stage's settings on another kind.
    pub fn kind(&self) -> Result<StageConfig, (String, Option<&'static str>)> {
        let sql = self.sql.as_ref().map(|sql| {
            StageConfig::Sql(SqlStageConfig {
                sql: sql.clone(),
                carry: self.carry.clone(),
                replace_by: self.replace_by.clone(),
            })
        });
        let mut kinds: Vec<StageConfig> = [
            sql,
            self.score.clone().map(StageConfig::Score),
            self.forecast.clone().map(StageConfig::Forecast),
            self.alert.clone().map(StageConfig::Alert),
            self.recommend.clone().map(StageConfig::Recommend),
        ]
        .into_iter()
        .flatten()
        .collect();
        let hint = Some("`sql: ../sql/file.sql`, or `score: {from: …, model: …}`");
        if kinds.len() > 1 {
            return Err((format!("a stage is one of {KINDS}, not several"), hint));
        }
        let Some(kind) = kinds.pop() else {
            return Err((format!("the stage has none of {KINDS}"), hint));
        };
        if !matches!(kind, StageConfig::Sql(_))
            && (self.carry.is_some() || !self.replace_by.is_empty())
        {
            let message = "`carry` and `replace_by` belong to SQL window stages";
            return Err((message.into(), None));
        }
        Ok(kind)
    }
}

/// What a stage's check reads: the file's reporter, where relative paths start, the sources and
/// earlier stages it may read (and those that failed their own checks, whose readers are not
/// checked again), and the pipeline's functions and model registry.
pub(crate) struct Checking<'a, 'r> {
    pub r: &'a mut Reporter<'r>,
    pub base: &'a Path,
    pub relations: &'a [(String, Relation)],
    pub failed: &'a [&'a str],
    pub functions: &'a Functions,
    /// The model registry's location, if the pipeline has one.
    pub registry: Option<&'a str>,
    /// How often a stage following a model's newest version looks for a newer one.
    pub poll: Duration,
}

impl StageConfig {
    /// The relation the stage reads, as written (a SQL stage's is in its query).
    fn from(&self) -> Option<&str> {
        match self {
            StageConfig::Sql(_) => None,
            StageConfig::Score(c) => Some(&c.from),
            StageConfig::Forecast(c) => Some(&c.from),
            StageConfig::Alert(c) => Some(&c.from),
            StageConfig::Recommend(c) => Some(&c.from),
        }
    }

    /// Checks the stage named `name`: its plan, or `None` with every problem reported (nothing
    /// more when what it reads failed its own checks).
    pub(crate) async fn check(&self, cx: &mut Checking<'_, '_>, name: &str) -> Option<StagePlan> {
        if self.from().is_some_and(|from| cx.failed.contains(&from)) {
            return None;
        }
        match self {
            StageConfig::Sql(c) => crate::sql::config::check(cx, name, c).await,
            StageConfig::Score(c) => crate::score::config::check(cx, name, c).await,
            StageConfig::Forecast(c) => crate::forecast::config::check(cx, name, c).await,
            StageConfig::Alert(c) => crate::decide::config::check_alert(cx, name, c),
            StageConfig::Recommend(c) => crate::decide::config::check_recommend(cx, name, c).await,
        }
    }
}

/// A checked stage: what it reads and gives, and what kind of stage it is.
#[derive(Debug, Clone)]
pub struct StagePlan {
    pub name: String,
    /// The source or earlier stage it reads.
    pub input: String,
    pub input_schema: SchemaRef,
    /// Earlier stages it reads beside its input, whose rows update its state (a rightsizing
    /// stage's demand forecasts); see `Operator::process_side`.
    pub side_inputs: Vec<String>,
    pub output_schema: SchemaRef,
    /// The output's event-time column, if it has one: what a later window stage windows by.
    pub output_time: Option<String>,
    /// Allowed lateness of the source the stage descends from, µs.
    pub allowed_lateness: i64,
    pub kind: StageKind,
}

/// What a stage does; `job::build` turns each into its operator.
#[derive(Debug, Clone)]
pub enum StageKind {
    /// SQL over each batch (`crate::sql::stage`).
    Sql(SqlStage),
    /// SQL over event-time windows (`crate::window`).
    Window(WindowStage),
    /// A model and streaming detectors (`crate::score::stage`).
    Score(crate::score::stage::ScoreSpec),
    /// Forecasts with prediction intervals (`crate::forecast::stage`).
    Forecast(crate::forecast::stage::ForecastSpec),
    /// The alert policy (`crate::decide::stage`).
    Alert(crate::decide::stage::AlertSpec),
    /// Spot / on-demand and instance-mix recommendations (`crate::decide::stage`).
    Spot(crate::decide::stage::SpotSpec),
    /// Rightsizing recommendations (`crate::decide::stage`).
    Rightsizing(crate::decide::stage::RightsizeSpec),
}

/// A SQL stage's query, parsed and planned against its input.
#[derive(Debug, Clone)]
pub struct SqlStage {
    pub sql_file: PathBuf,
    pub query: WindowedQuery,
}

/// A window stage: its query, and what it adds to windowing.
#[derive(Debug, Clone)]
pub struct WindowStage {
    pub sql: SqlStage,
    /// The input column windows are assigned by.
    pub event_time: String,
    /// Features carried across windows; the stage's `output_schema` includes their columns.
    pub carry: Option<CarrySpec>,
    /// Input columns by which a later row replaces an earlier one in a window.
    pub replace_by: Vec<String>,
}

impl StagePlan {
    /// The stage's query, if it runs SQL.
    pub fn sql(&self) -> Option<&SqlStage> {
        match &self.kind {
            StageKind::Sql(s) => Some(s),
            StageKind::Window(w) => Some(&w.sql),
            _ => None,
        }
    }

    /// The stage's window, if it has one.
    pub fn window(&self) -> Option<crate::window::WindowSpec> {
        match &self.kind {
            StageKind::Window(w) => w.sql.query.window,
            _ => None,
        }
    }
}

/// A relation SQL can read: a source or an earlier stage.
pub(crate) struct Relation {
    pub schema: SchemaRef,
    pub event_time: Option<String>,
    pub lateness: i64,
}

/// The relation `name` among `relations`, or the message and hint that say no source or
/// earlier stage has that name, and which do.
pub(crate) fn relation<'r>(
    relations: &'r [(String, Relation)],
    name: &str,
) -> Result<&'r Relation, (String, String)> {
    relations
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, r)| r)
        .ok_or_else(|| {
            let known: Vec<&str> = relations.iter().map(|(n, _)| n.as_str()).collect();
            (
                format!("`{name}`: no source or earlier stage has that name"),
                format!("readable here: {}", known.join(", ")),
            )
        })
}

/// The input relation `from`, or a diagnostic at `path`.
pub(crate) fn input<'r>(
    r: &mut Reporter<'_>,
    path: &[&str],
    from: &str,
    relations: &'r [(String, Relation)],
) -> Option<&'r Relation> {
    match relation(relations, from) {
        Ok(rel) => Some(rel),
        Err((message, hint)) => {
            r.at(path, message, Some(&hint));
            None
        }
    }
}

/// Reports each of `columns` missing from `schema`, or not numeric when `numeric`.
pub(crate) fn need_columns(
    r: &mut Reporter<'_>,
    path: &[&str],
    schema: &Schema,
    from: &str,
    columns: &[&str],
    kind: Option<fn(&DataType) -> bool>,
    what: &str,
) {
    for c in columns {
        match schema.field_with_name(c) {
            Ok(f) if kind.is_none_or(|k| k(f.data_type())) => {}
            Ok(f) => r.at(
                path,
                format!("`{c}` is {}, not {what}", f.data_type()),
                None,
            ),
            Err(_) => {
                let all: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                r.at(
                    path,
                    format!("column `{c}` is not in `{from}`"),
                    Some(&format!("columns of `{from}`: {}", all.join(", "))),
                )
            }
        }
    }
}

pub(crate) fn duration(r: &mut Reporter<'_>, path: &[&str], text: &str) -> i64 {
    parse_duration(text)
        .map_err(|e| r.at(path, e, Some("for example \"15m\" or \"1h\"")))
        .unwrap_or(0)
}

pub(crate) fn is_timestamp(t: &DataType) -> bool {
    matches!(t, DataType::Timestamp(..))
}

/// A decision or forecast stage's plan: its rows' event time is their `ts`.
pub(crate) fn decision_plan(
    name: &str,
    from: &str,
    input: SchemaRef,
    output: SchemaRef,
    lateness: i64,
    kind: StageKind,
) -> StagePlan {
    StagePlan {
        name: name.to_string(),
        input: from.to_string(),
        input_schema: input,
        side_inputs: Vec::new(),
        output_time: output.field_with_name("ts").ok().map(|f| f.name().clone()),
        output_schema: output,
        allowed_lateness: lateness,
        kind,
    }
}
