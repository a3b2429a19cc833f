//! A SQL stage as written — `sql: file.sql`, with a window stage's `carry` (features followed
//! from window to window per key) and `replace_by` (a later row replacing an earlier one in a
//! window) — and its check: the file read, its one `SELECT` parsed and planned by DataFusion
//! against its input's schema, errors placed on the SQL file's lines, then `carry` and
//! `replace_by` against the planned query. Out: the stage's [`Planned`] query, a
//! plain [`SqlStage`] or, when its `GROUP BY` has a window, a [`WindowStage`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::TableReference;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::MemTable;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::DataFrame;
use serde::Deserialize;

use super::{CarrySpec, WINDOW_COLUMNS, WindowedQuery, parse_stage_sql, windowed_schema};
use crate::check::diagnostics::Reporter;
use crate::check::{Checking, Planned, Relation, duration, relation};
use crate::sql::Functions;

/// A stage running one SQL query over each batch of its input, or over its windows.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlStageConfig {
    /// Path of the SQL file, relative to the pipeline file.
    pub sql: String,
    /// Features carried across a window stage's windows, per key.
    #[serde(default)]
    pub carry: Option<CarryConfig>,
    /// Input columns identifying a row that a later one replaces (a restated line item): in
    /// each window only the last row to arrive with those values counts. Window stages only.
    #[serde(default)]
    pub replace_by: Vec<String>,
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

/// What a SQL stage's check gives: a query over each batch, or over windows.
#[derive(Debug, Clone)]
pub enum SqlKind {
    Plain(SqlStage),
    Window(WindowStage),
}

/// Checks a SQL stage — its file, its query planned against its input, and a window stage's
/// `carry` and `replace_by`: its plan, or `None` with every problem reported.
pub(crate) async fn check(
    cx: &mut Checking<'_, '_>,
    functions: &Functions,
    name: &str,
    stage: &SqlStageConfig,
) -> Option<Planned<SqlKind>> {
    let r = &mut *cx.r;
    let sql_file = cx.base.join(&stage.sql);
    let sql = match std::fs::read_to_string(&sql_file) {
        Ok(s) => s,
        Err(e) => {
            r.at(
                &["stages", name, "sql"],
                format!("cannot read {}: {e}", sql_file.display()),
                Some("paths are relative to the pipeline file"),
            );
            return None;
        }
    };
    let planned = check_query(r, name, &sql_file, &sql, cx.relations, cx.failed, functions).await;
    let planned = match (planned, &stage.carry) {
        (Some(mut plan), Some(carry)) => check_carry(r, name, carry, &plan).map(|c| {
            plan.output_schema = c.output_schema(&plan.output_schema);
            if let SqlKind::Window(w) = &mut plan.kind {
                w.carry = Some(c);
            }
            plan
        }),
        (planned, _) => planned,
    };
    match planned {
        Some(plan) if !stage.replace_by.is_empty() => {
            check_replace_by(r, name, &stage.replace_by, plan)
        }
        planned => planned,
    }
}

async fn check_query(
    r: &mut Reporter<'_>,
    name: &str,
    sql_file: &Path,
    sql: &str,
    relations: &[(String, Relation)],
    failed: &[&str],
    functions: &Functions,
) -> Option<Planned<SqlKind>> {
    let mut query = match parse_stage_sql(sql) {
        Ok(q) => q,
        Err(e) => {
            r.in_file(
                sql_file,
                e.line.map(|l| l as usize),
                e.column.map(|c| c as usize),
                e.message,
                Some("a stage is one SELECT over a source or an earlier stage"),
            );
            return None;
        }
    };
    if failed.contains(&query.input.as_str()) {
        return None;
    }
    let input = match relation(relations, &query.input) {
        Ok(input) => input,
        Err((message, hint)) => {
            let line = line_of(sql, &query.input);
            r.in_file(sql_file, line, None, format!("FROM {message}"), Some(&hint));
            return None;
        }
    };
    let mut event_time = String::new();
    let schema = if query.window.is_some() {
        match &input.event_time {
            Some(t) => event_time = t.clone(),
            None => {
                r.in_file(
                    sql_file,
                    None,
                    None,
                    format!("`{}` has no event-time column to window by", query.input),
                    Some(
                        "a windowed stage reading a stage needs that stage to select window_start",
                    ),
                );
                return None;
            }
        }
        windowed_schema(&input.schema).0
    } else {
        if let Some(t) = &input.event_time {
            event_time = t.clone();
        }
        input.schema.clone()
    };
    let ctx = crate::sql::session_context_with(functions);
    let table = match MemTable::try_new(schema.clone(), vec![vec![]]) {
        Ok(t) => t,
        Err(e) => {
            r.in_file(sql_file, None, None, e.to_string(), None);
            return None;
        }
    };
    if let Err(e) = ctx.register_table(query.input.as_str(), Arc::new(table)) {
        r.in_file(sql_file, None, None, e.to_string(), None);
        return None;
    }
    let planned = match ctx.sql(&query.sql).await {
        Ok(df) => df,
        Err(e) => {
            let message = readable(&e.strip_backtrace());
            r.in_file(
                sql_file,
                first_mentioned_line(sql, &message),
                None,
                message,
                Some(&format!(
                    "columns of `{}`: {}",
                    query.input,
                    schema
                        .fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            );
            return None;
        }
    };
    let mut out: Vec<Arc<Field>> = planned
        .schema()
        .as_arrow()
        .fields()
        .iter()
        .cloned()
        .collect();
    if query.window.is_some() {
        out.push(Arc::new(Field::new("revision", DataType::Int32, false)));
        out.push(Arc::new(Field::new("is_update", DataType::Boolean, false)));
        query.reads = columns_read(planned, &query.input);
    }
    let output_schema = Arc::new(Schema::new(out));
    let input_name = query.input.clone();
    let sql = SqlStage {
        sql_file: sql_file.to_path_buf(),
        query,
    };
    let (kind, output_time) = if sql.query.window.is_some() {
        let window = WindowStage {
            sql,
            event_time,
            carry: None,
            replace_by: Vec::new(),
        };
        let time = output_schema
            .field_with_name("window_start")
            .ok()
            .map(|_| "window_start".to_string());
        (SqlKind::Window(window), time)
    } else {
        let time = output_schema
            .field_with_name(&event_time)
            .ok()
            .map(|_| event_time);
        (SqlKind::Plain(sql), time)
    };
    Some(Planned {
        name: name.to_string(),
        input: input_name,
        input_schema: input.schema.clone(),
        side_inputs: Vec::new(),
        side_outputs: Vec::new(),
        output_schema,
        output_time,
        allowed_lateness: input.lateness,
        kind,
    })
}

/// The columns of `table` that a planned query reads, from its optimized plan's scans (their
/// projections and pushed-down filters) over the windowed schema; `None` when a scan reads them all or the plan cannot
/// be optimized.
pub fn columns_read(planned: DataFrame, table: &str) -> Option<Vec<String>> {
    let plan = planned.into_optimized_plan().ok()?;
    // The name as DataFusion resolves it (unquoted: lower case), as when it was registered.
    let table = TableReference::from(table);
    let mut reads: Vec<String> = Vec::new();
    let (mut scanned, mut all) = (false, false);
    plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && scan.table_name == table
        {
            scanned = true;
            match &scan.projection {
                Some(p) => {
                    let schema = scan.source.schema();
                    reads.extend(p.iter().map(|&i| schema.field(i).name().clone()));
                }
                None => all = true,
            }
            for f in &scan.filters {
                reads.extend(f.column_refs().into_iter().map(|c| c.name.clone()));
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .ok()?;
    // `window_start` and `window_end` are the stage's own, not its input's.
    reads.retain(|c| !WINDOW_COLUMNS.contains(&c.as_str()));
    reads.sort();
    reads.dedup();
    (scanned && !all).then_some(reads)
}

/// The 1-based line where the identifier `name` first appears as a whole word in `sql`.
fn line_of(sql: &str, name: &str) -> Option<usize> {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    sql.lines()
        .position(|line| {
            line.match_indices(name).any(|(i, _)| {
                let before = line[..i].chars().next_back();
                let after = line[i + name.len()..].chars().next();
                !before.is_some_and(ident) && !after.is_some_and(ident)
            })
        })
        .map(|i| i + 1)
}

/// The line of what a DataFusion error names: the column after "No field named", else the
/// first quoted name.
fn first_mentioned_line(sql: &str, message: &str) -> Option<usize> {
    let unknown = message.split("No field named ").nth(1).and_then(|rest| {
        rest.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.'))
            .next()
            .map(|n| n.trim_end_matches('.'))
    });
    let quoted = message.split(['\'', '"', '`']).skip(1).step_by(2);
    unknown
        .into_iter()
        .chain(quoted)
        .filter_map(|name| {
            name.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.'))
                .next()
        })
        .filter_map(|name| name.rsplit('.').next())
        .filter(|name| !name.is_empty())
        .find_map(|name| line_of(sql, name))
}

/// DataFusion's planning errors, without the advice to file a bug about a user's type error.
fn readable(message: &str) -> String {
    match message.find("No function matches") {
        Some(i) => message[i..].to_string(),
        None => message.to_string(),
    }
}

/// Cross-window features of a window stage: for each column `c`, `c_ewma`, `c_delta`, `c_roc`
/// and `c_robust_z` are appended to the stage's rows.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CarryConfig {
    /// The key columns (default: the stage's GROUP BY columns).
    #[serde(default)]
    pub by: Vec<String>,
    /// Numeric columns of the stage's output.
    pub columns: Vec<String>,
    /// EWMA smoothing factor in (0, 1]: the weight of the newest window.
    #[serde(default = "default_alpha")]
    pub ewma_alpha: f64,
    /// Trailing span of the robust z-score's baseline.
    #[serde(default = "default_baseline")]
    pub baseline: String,
    /// Fewest earlier windows in the baseline before a z-score is given.
    #[serde(default = "default_min_baseline")]
    pub min_baseline: usize,
}

fn default_alpha() -> f64 {
    0.3
}
fn default_baseline() -> String {
    "24h".into()
}
fn default_min_baseline() -> usize {
    5
}

/// Checks a stage's `replace_by` columns against its input.
fn check_replace_by(
    r: &mut Reporter<'_>,
    stage: &str,
    columns: &[String],
    mut plan: Planned<SqlKind>,
) -> Option<Planned<SqlKind>> {
    let at = ["stages", stage, "replace_by"];
    let SqlKind::Window(window) = &mut plan.kind else {
        r.at(
            &at,
            "`replace_by` needs a window stage: rows are replaced within a window",
            None,
        );
        return None;
    };
    let missing: Vec<&String> = columns
        .iter()
        .filter(|c| plan.input_schema.field_with_name(c).is_err())
        .collect();
    if !missing.is_empty() {
        let names: Vec<&str> = plan
            .input_schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        for c in missing {
            r.at(
                &at,
                format!("column `{c}` is not in `{}`", plan.input),
                Some(&format!("columns: {}", names.join(", "))),
            );
        }
        return None;
    }
    window.replace_by = columns.to_vec();
    if let Some(reads) = &mut window.sql.query.reads {
        reads.extend(columns.iter().cloned());
    }
    Some(plan)
}

/// Checks a stage's `carry` settings against its output.
fn check_carry(
    r: &mut Reporter<'_>,
    stage: &str,
    carry: &CarryConfig,
    plan: &Planned<SqlKind>,
) -> Option<CarrySpec> {
    let at = |field: &'static str| ["stages", stage, "carry", field];
    let before = r.found.len();
    let SqlKind::Window(window) = &plan.kind else {
        r.at(
            &["stages", stage, "carry"],
            "`carry` needs a window stage: it follows each key from window to window",
            Some("add tumble(...), hop(...) or session(...) to the stage's GROUP BY"),
        );
        return None;
    };
    let by = if carry.by.is_empty() {
        window.sql.query.keys.clone()
    } else {
        carry.by.clone()
    };
    let names: Vec<&str> = plan
        .output_schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    for k in &by {
        if plan.output_schema.field_with_name(k).is_err() {
            r.at(
                &at("by"),
                format!("key column `{k}` is not in the stage's output"),
                Some(&format!("columns: {}", names.join(", "))),
            );
        }
    }
    if carry.columns.is_empty() {
        r.at(
            &at("columns"),
            "no column to carry",
            Some("name numeric columns of the stage"),
        );
    }
    for c in &carry.columns {
        match plan.output_schema.field_with_name(c) {
            Ok(f) if f.data_type().is_numeric() => {}
            Ok(f) => r.at(
                &at("columns"),
                format!("column `{c}` is {}, not a number", f.data_type()),
                None,
            ),
            Err(_) => r.at(
                &at("columns"),
                format!("column `{c}` is not in the stage's output"),
                Some(&format!("columns: {}", names.join(", "))),
            ),
        }
    }
    if !(carry.ewma_alpha > 0.0 && carry.ewma_alpha <= 1.0) {
        r.at(
            &at("ewma_alpha"),
            format!("ewma_alpha {} is outside (0, 1]", carry.ewma_alpha),
            Some("0.3 weighs the newest window by 30 %"),
        );
    }
    let baseline = duration(r, &at("baseline"), &carry.baseline);
    if r.found.len() > before {
        return None;
    }
    Some(CarrySpec {
        by,
        columns: carry.columns.clone(),
        alpha: carry.ewma_alpha,
        baseline,
        min_baseline: carry.min_baseline,
    })
}
