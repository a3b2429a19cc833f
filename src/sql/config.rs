//! A SQL stage as written — `sql: file.sql`, with a window stage's `carry` and `replace_by` —
//! and its check: the file read, its one `SELECT` parsed and planned by DataFusion against its
//! input's schema, errors placed on the SQL file's lines. Out: the stage's [`StagePlan`], a
//! plain [`SqlStage`] or, when its `GROUP BY` has a window, a [`WindowStage`].

use std::path::Path;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::TableReference;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::MemTable;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::DataFrame;
use serde::Deserialize;

use super::Functions;
use crate::pipeline::diagnostics::Reporter;
use crate::pipeline::stage::{
    Checking, Relation, SqlStage, StageKind, StagePlan, WindowStage, relation,
};
use crate::window::config::{CarryConfig, check_carry, check_replace_by};
use crate::window::{WINDOW_COLUMNS, parse_stage_sql, windowed_schema};

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

/// Checks a SQL stage — its file, its query planned against its input, and a window stage's
/// `carry` and `replace_by`: its plan, or `None` with every problem reported.
pub(crate) async fn check(
    cx: &mut Checking<'_, '_>,
    name: &str,
    stage: &SqlStageConfig,
) -> Option<StagePlan> {
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
    let planned = check_query(
        r,
        name,
        &sql_file,
        &sql,
        cx.relations,
        cx.failed,
        cx.functions,
    )
    .await;
    let planned = match (planned, &stage.carry) {
        (Some(mut plan), Some(carry)) => check_carry(r, name, carry, &plan).map(|c| {
            plan.output_schema = c.output_schema(&plan.output_schema);
            if let StageKind::Window(w) = &mut plan.kind {
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
) -> Option<StagePlan> {
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
        (StageKind::Window(window), time)
    } else {
        let time = output_schema
            .field_with_name(&event_time)
            .ok()
            .map(|_| event_time);
        (StageKind::Sql(sql), time)
    };
    Some(StagePlan {
        name: name.to_string(),
        input: input_name,
        input_schema: input.schema.clone(),
        side_inputs: Vec::new(),
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
