//! Checked stages: what the checks of each kind produce and share.
//!
//! In: what `plan` and the kind checkers (`score`, `decide`, `forecast`) found. Out: a
//! [`StagePlan`] per stage — its input, schemas, event time and [`StageKind`] — which
//! `job::build` turns into the stage's operator; and the helpers the checkers share (the
//! relations a stage may read, column and duration checks).

use std::path::PathBuf;

use arrow::datatypes::{DataType, Schema, SchemaRef};

use super::diagnostics::Reporter;
use crate::window::{CarrySpec, WindowedQuery, parse_duration};

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
pub(super) struct Relation {
    pub schema: SchemaRef,
    pub event_time: Option<String>,
    pub lateness: i64,
}

/// The relation `name` among `relations`, or the message and hint that say no source or
/// earlier stage has that name, and which do.
pub(super) fn relation<'r>(
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
pub(super) fn input<'r>(
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
pub(super) fn need_columns(
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

pub(super) fn duration(r: &mut Reporter<'_>, path: &[&str], text: &str) -> i64 {
    parse_duration(text)
        .map_err(|e| r.at(path, e, Some("for example \"15m\" or \"1h\"")))
        .unwrap_or(0)
}

pub(super) fn is_timestamp(t: &DataType) -> bool {
    matches!(t, DataType::Timestamp(..))
}

/// A decision or forecast stage's plan: its rows' event time is their `ts`.
pub(super) fn decision_plan(
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
