//! Event-time windows as users write them in SQL, following Arroyo and Flink:
//! `GROUP BY key, tumble(interval '1 minute')`, `hop(interval '10 seconds', interval '1 minute')`
//! (slide, then size) or `session(interval '5 minutes')` (gap). The query may select
//! `window_start` and `window_end`.
//!
//! In: the text of one SQL stage. Out: a [`WindowedQuery`] — the window, the key columns, the
//! input relation and the query rewritten so that DataFusion sees plain `GROUP BY key,
//! window_start, window_end` over rows that the window operator has already assigned.
//! Queries that are not a single `SELECT` (DDL, `COPY`, `CREATE EXTERNAL TABLE`, ...) are
//! rejected here, so user SQL can neither read files nor create tables.

use std::fmt;
use std::time::Duration;

use datafusion::sql::parser::{DFParser, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::{
    DateTimeField, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr, Ident,
    SelectItem, SetExpr, Statement, TableFactor, Value,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;

use crate::duration::parse_duration;

/// The window of an aggregating stage. Sizes are in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowSpec {
    /// Fixed, non-overlapping windows of `size`.
    Tumble { size: i64 },
    /// Windows of `size` starting every `slide`; a row belongs to `size / slide` windows.
    Hop { slide: i64, size: i64 },
    /// Per key, events closer than `gap` to each other share a window.
    Session { gap: i64 },
}

impl WindowSpec {
    /// The first watermark after `watermark` at which a window closes (tumbling and hopping
    /// windows end on a grid); none for sessions, nor before there is a watermark.
    pub fn next_close(&self, watermark: i64) -> Option<i64> {
        let (step, offset) = match *self {
            WindowSpec::Tumble { size } => (size, 0),
            WindowSpec::Hop { slide, size } => (slide, size.rem_euclid(slide.max(1))),
            WindowSpec::Session { .. } => return None,
        };
        if step <= 0 || watermark == i64::MIN {
            return None;
        }
        let k = watermark
            .checked_sub(offset)?
            .div_euclid(step)
            .checked_add(1)?;
        k.checked_mul(step)?.checked_add(offset)
    }

    /// How long after its last possible event a window can close: its size (or the gap).
    pub fn span(&self) -> i64 {
        match *self {
            WindowSpec::Tumble { size } | WindowSpec::Hop { size, .. } => size,
            WindowSpec::Session { gap } => gap,
        }
    }
}

impl fmt::Display for WindowSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = |us: i64| humanize(us);
        match *self {
            WindowSpec::Tumble { size } => write!(f, "tumble({})", d(size)),
            WindowSpec::Hop { slide, size } => write!(f, "hop({}, {})", d(slide), d(size)),
            WindowSpec::Session { gap } => write!(f, "session({})", d(gap)),
        }
    }
}

fn humanize(us: i64) -> String {
    match us {
        us if us % 3_600_000_000 == 0 => format!("{}h", us / 3_600_000_000),
        us if us % 60_000_000 == 0 => format!("{}m", us / 60_000_000),
        us if us % 1_000_000 == 0 => format!("{}s", us / 1_000_000),
        us => format!("{}ms", us / 1000),
    }
}

/// A SQL stage, understood.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowedQuery {
    /// The window in `GROUP BY`, if any: without one the stage is stateless, row by row.
    pub window: Option<WindowSpec>,
    /// The plain column names in `GROUP BY` besides the window: the per-key state's key.
    pub keys: Vec<String>,
    /// Every `GROUP BY` item besides the window by its name in the output (a plain column, or
    /// an expression's `AS` alias in the SELECT list): what identifies one result row of a
    /// window. `None` when an expression is grouped by but not selected under a name.
    pub output_keys: Option<Vec<String>>,
    /// The relation in `FROM` (a source or an earlier stage).
    pub input: String,
    /// The query with the window call replaced by `window_start, window_end`.
    pub sql: String,
    /// The input columns the query reads, once planned (see the pipeline planner); `None`:
    /// all of them. A window stage buffers only these (and what it needs itself).
    pub reads: Option<Vec<String>>,
}

/// Why a SQL stage was rejected; `line` and `column` are 1-based within the SQL text.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct SqlError {
    pub message: String,
    pub line: Option<u64>,
    pub column: Option<u64>,
}

impl SqlError {
    fn new(message: impl Into<String>) -> Self {
        SqlError {
            message: message.into(),
            line: None,
            column: None,
        }
    }
}

fn interval_arg(function: &str, arg: &FunctionArg) -> Result<i64, SqlError> {
    let expr = match arg {
        FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => e,
        _ => {
            return Err(SqlError::new(format!(
                "{function}(): arguments must be intervals"
            )));
        }
    };
    let Expr::Interval(interval) = expr else {
        return Err(SqlError::new(format!(
            "{function}(): expected an interval such as interval '1 minute', got {expr}"
        )));
    };
    let text = match interval.value.as_ref() {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::Number(s, _) => s.clone(),
            other => return Err(SqlError::new(format!("{function}(): bad interval {other}"))),
        },
        other => return Err(SqlError::new(format!("{function}(): bad interval {other}"))),
    };
    let text = match &interval.leading_field {
        None => text,
        Some(field) => {
            let unit = match field {
                DateTimeField::Millisecond | DateTimeField::Milliseconds => "ms",
                DateTimeField::Second | DateTimeField::Seconds => "s",
                DateTimeField::Minute | DateTimeField::Minutes => "m",
                DateTimeField::Hour | DateTimeField::Hours => "h",
                DateTimeField::Day | DateTimeField::Days => "d",
                other => {
                    return Err(SqlError::new(format!(
                        "{function}(): interval unit {other} is not supported"
                    )));
                }
            };
            format!("{text}{unit}")
        }
    };
    let us = parse_duration(&text).map_err(|e| SqlError::new(format!("{function}(): {e}")))?;
    if us <= 0 {
        return Err(SqlError::new(format!(
            "{function}(): the interval must be positive"
        )));
    }
    Ok(us)
}

fn window_call(expr: &Expr) -> Result<Option<WindowSpec>, SqlError> {
    let Expr::Function(f) = expr else {
        return Ok(None);
    };
    let name = f.name.to_string().to_ascii_lowercase();
    if !matches!(name.as_str(), "tumble" | "hop" | "session") {
        return Ok(None);
    }
    let args: &[FunctionArg] = match &f.args {
        FunctionArguments::List(list) => &list.args,
        _ => &[],
    };
    let spec = match (name.as_str(), args) {
        ("tumble", [size]) => WindowSpec::Tumble {
            size: interval_arg("tumble", size)?,
        },
        ("hop", [slide, size]) => {
            let (slide, size) = (interval_arg("hop", slide)?, interval_arg("hop", size)?);
            if size % slide != 0 {
                return Err(SqlError::new(format!(
                    "hop(): the size ({}) must be a whole multiple of the slide ({})",
                    humanize(size),
                    humanize(slide)
                )));
            }
            WindowSpec::Hop { slide, size }
        }
        ("session", [gap]) => WindowSpec::Session {
            gap: interval_arg("session", gap)?,
        },
        (n, a) => {
            let want = if n == "hop" {
                "two intervals (slide, size)"
            } else {
                "one interval"
            };
            return Err(SqlError::new(format!(
                "{n}() takes {want}, got {} arguments",
                a.len()
            )));
        }
    };
    Ok(Some(spec))
}

/// Parses one SQL stage and rewrites its window, if it has one.
pub fn parse_stage_sql(sql: &str) -> Result<WindowedQuery, SqlError> {
    // DataFusion's own parser knows its extensions (CREATE EXTERNAL TABLE, COPY): refuse them
    // by name before the generic parser trips over their syntax.
    if let Ok(statements) = DFParser::parse_sql(sql) {
        for s in &statements {
            if !matches!(s, DFStatement::Statement(inner) if matches!(inner.as_ref(), Statement::Query(_)))
            {
                return Err(SqlError::new(format!(
                    "only SELECT queries are allowed in a stage (no DDL, COPY or external tables), found: {}",
                    first_words(&s.to_string())
                )));
            }
        }
    }
    let mut statements = Parser::parse_sql(&GenericDialect {}, sql).map_err(|e| {
        let text = e.to_string();
        let (line, column) = parser_position(&text);
        SqlError {
            message: text,
            line,
            column,
        }
    })?;
    let statement = match statements.as_mut_slice() {
        [one] => one,
        [] => return Err(SqlError::new("the SQL file holds no statement")),
        _ => {
            return Err(SqlError::new(
                "a SQL stage must be exactly one SELECT statement",
            ));
        }
    };
    let Statement::Query(query) = statement else {
        return Err(SqlError::new(format!(
            "only SELECT queries are allowed in a stage (no DDL, COPY or external tables), found: {}",
            first_words(&statement.to_string())
        )));
    };
    let SetExpr::Select(select) = query.body.as_mut() else {
        return Err(SqlError::new(
            "a stage must be a single SELECT (UNION and VALUES are not supported yet)",
        ));
    };
    let input = match select.from.as_slice() {
        [t] if t.joins.is_empty() => match &t.relation {
            TableFactor::Table {
                name, args: None, ..
            } => name.to_string(),
            other => {
                return Err(SqlError::new(format!(
                    "FROM must name a source or an earlier stage, not {other}"
                )));
            }
        },
        [] => {
            return Err(SqlError::new(
                "the query has no FROM: name a source or a stage",
            ));
        }
        _ => {
            return Err(SqlError::new(
                "a stage reads exactly one source or stage (joins are not supported yet)",
            ));
        }
    };
    let mut window = None;
    let mut keys = Vec::new();
    let mut output_keys = Some(Vec::new());
    let selected_as = |expr: &Expr| {
        select.projection.iter().find_map(|item| match item {
            SelectItem::ExprWithAlias { expr: e, alias } if e == expr => Some(alias.value.clone()),
            _ => None,
        })
    };
    if let GroupByExpr::Expressions(exprs, _) = &mut select.group_by {
        let mut rewritten = Vec::with_capacity(exprs.len() + 1);
        for expr in exprs.drain(..) {
            match window_call(&expr)? {
                Some(spec) => {
                    if window.replace(spec).is_some() {
                        return Err(SqlError::new("GROUP BY may hold only one window"));
                    }
                    rewritten.push(Expr::Identifier(Ident::new("window_start")));
                    rewritten.push(Expr::Identifier(Ident::new("window_end")));
                }
                None => {
                    let name = match &expr {
                        Expr::Identifier(id) => {
                            keys.push(id.value.clone());
                            Some(id.value.clone())
                        }
                        other => selected_as(other),
                    };
                    match (name, &mut output_keys) {
                        (Some(name), Some(names)) => names.push(name),
                        _ => output_keys = None,
                    }
                    rewritten.push(expr);
                }
            }
        }
        *exprs = rewritten;
    }
    Ok(WindowedQuery {
        window,
        keys,
        output_keys,
        input,
        sql: statement.to_string(),
        reads: None,
    })
}

fn first_words(s: &str) -> String {
    s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// sqlparser reports positions as "... at Line: 3, Column: 7".
fn parser_position(message: &str) -> (Option<u64>, Option<u64>) {
    let number_after = |tag: &str| {
        message.rfind(tag).and_then(|i| {
            message[i + tag.len()..]
                .trim_start()
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|n| n.parse().ok())
        })
    };
    (number_after("Line:"), number_after("Column:"))
}

/// A duration for humans and for `std::time` users.
pub fn micros_to_duration(us: i64) -> Duration {
    Duration::from_micros(us.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_close_is_the_next_window_end_after_the_watermark() {
        const M: i64 = 60_000_000;
        let tumble = WindowSpec::Tumble { size: M };
        assert_eq!(tumble.next_close(5 * M + 3), Some(6 * M));
        assert_eq!(
            tumble.next_close(5 * M),
            Some(6 * M),
            "5m has closed already"
        );
        assert_eq!(tumble.next_close(-1), Some(0));
        assert_eq!(tumble.next_close(i64::MIN), None);
        let hop = WindowSpec::Hop {
            slide: 2 * M,
            size: 5 * M,
        };
        // Windows start at even minutes and end at odd ones.
        assert_eq!(hop.next_close(4 * M), Some(5 * M));
        assert_eq!(hop.next_close(5 * M), Some(7 * M));
        assert_eq!(WindowSpec::Session { gap: M }.next_close(0), None);
    }

    #[test]
    fn tumble_is_rewritten_to_window_columns() {
        let q = parse_stage_sql(
            "SELECT resource_id, window_start, avg(value) AS v FROM metrics \
             GROUP BY resource_id, tumble(interval '1 minute')",
        )
        .unwrap();
        assert_eq!(q.window, Some(WindowSpec::Tumble { size: 60_000_000 }));
        assert_eq!(q.keys, ["resource_id"]);
        assert_eq!(q.input, "metrics");
        assert_eq!(
            q.sql,
            "SELECT resource_id, window_start, avg(value) AS v FROM metrics \
             GROUP BY resource_id, window_start, window_end"
        );
    }

    #[test]
    fn a_result_row_is_identified_by_every_group_item_by_its_output_name() {
        let q = parse_stage_sql(
            "SELECT account_id, dimensions['InstanceType'] AS instance_type, count(*) AS n \
             FROM metrics GROUP BY account_id, dimensions['InstanceType'], tumble(interval '1 minute')",
        )
        .unwrap();
        // The per-key state's key is input columns only; the output's key has the alias too.
        assert_eq!(q.keys, ["account_id"]);
        assert_eq!(
            q.output_keys,
            Some(vec!["account_id".into(), "instance_type".into()])
        );
        // Grouped by an expression that is not selected under a name: no output key.
        let q = parse_stage_sql(
            "SELECT k, count(*) AS n FROM s GROUP BY k, v % 2, tumble(interval '1 minute')",
        )
        .unwrap();
        assert_eq!(q.output_keys, None);
    }

    #[test]
    fn hop_and_session_and_unit_keywords() {
        let q = parse_stage_sql(
            "SELECT k FROM s GROUP BY hop(interval '10 seconds', interval '1 minute'), k",
        )
        .unwrap();
        assert_eq!(
            q.window,
            Some(WindowSpec::Hop {
                slide: 10_000_000,
                size: 60_000_000
            })
        );
        let q =
            parse_stage_sql("SELECT k FROM s GROUP BY k, SESSION(INTERVAL '5' MINUTE)").unwrap();
        assert_eq!(q.window, Some(WindowSpec::Session { gap: 300_000_000 }));
        let q = parse_stage_sql("SELECT k, v * 2 AS w FROM s WHERE v > 1").unwrap();
        assert_eq!(q.window, None);
    }

    #[test]
    fn rejects_what_a_stage_may_not_do() {
        let err = |sql: &str| parse_stage_sql(sql).unwrap_err().message;
        assert!(
            err("CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '/etc'")
                .contains("only SELECT")
        );
        assert!(err("COPY t TO '/tmp/x'").contains("only SELECT"));
        assert!(err("SELECT 1; SELECT 2").contains("exactly one SELECT"));
        assert!(err("SELECT * FROM read_parquet('/etc/passwd')").contains("FROM must name"));
        assert!(
            err("SELECT k FROM s GROUP BY hop(interval '7 seconds', interval '1 minute')")
                .contains("whole multiple")
        );
        assert!(err("SELECT k FROM s GROUP BY tumble(5)").contains("expected an interval"));
        assert!(
            err(
                "SELECT k FROM s GROUP BY tumble(interval '1 minute'), session(interval '1 minute')"
            )
            .contains("only one window")
        );
        let e = parse_stage_sql("SELECT k\nFROM s\nWHERE ) k").unwrap_err();
        assert_eq!((e.line, e.column), (Some(3), Some(7)), "{e:?}");
    }
}
