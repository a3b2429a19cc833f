//! A compiled aggregating query split into its partial, reduce and final phases, as DataFusion
//! splits an aggregation over partitions: what lets a window keep per-key accumulator state
//! instead of its raw rows (Arroyo's tumbling windows keep compiled partial and final plans).
//!
//! In: a [`CompiledQuery`] whose plan has one aggregation, over rows that only pass through
//! projections and filters (a window stage's `SELECT ... GROUP BY`). Out: a [`SplitQuery`] of
//! three plans, each planned once and run on each new input:
//! - `partial`: rows of the query's input → per group, the aggregates' state (a count and a
//!   sum for `avg`, the values themselves for an exact percentile);
//! - `reduce`: states → states, one row per group (merging what the partial runs gave);
//! - `finish`: states → the query's result rows, as the whole query gives them over the rows
//!   the states came from (what is above the aggregation — projections, `HAVING`, `ORDER BY` —
//!   runs as before).
//!
//! A query of another shape (a join, a window function, an aggregate with its own `ORDER BY`,
//! grouping sets, two aggregations) gives none: its operator keeps raw rows.

use std::any::{Any, TypeId};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::error::Result;
use datafusion::functions_aggregate::all_default_aggregate_functions;
use datafusion::logical_expr::AggregateUDF;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::streaming::StreamingTableExec;
use datafusion::physical_plan::{ExecutionPlan, displayable};

use super::compiled::{CompiledQuery, Input};

/// A query's aggregation in three phases (see the module's doc).
pub struct SplitQuery {
    partial: CompiledQuery,
    reduce: CompiledQuery,
    finish: CompiledQuery,
    /// The rows of the states: the group columns first, then each aggregate's state.
    state_schema: SchemaRef,
    /// How many of them are group columns.
    groups: usize,
}

impl SplitQuery {
    /// `query` split, if its plan has the shape (see the module's doc).
    pub fn of(query: &CompiledQuery) -> Result<Option<SplitQuery>> {
        let Some(top) = aggregation(query.plan()) else {
            return Ok(None);
        };
        let Some(first) = first_phase(&top) else {
            return Ok(None);
        };
        let simple = first.group_expr().is_single()
            && first
                .aggr_expr()
                .iter()
                .all(|a| a.order_bys().is_empty() && is_built_in(a))
            && passes_rows_through(first.input());
        if !simple {
            return Ok(None);
        }
        let input_schema = first.input_schema();
        let aggregates = first.aggr_expr().to_vec();
        let partial: Arc<dyn ExecutionPlan> = Arc::new(AggregateExec::try_new(
            AggregateMode::Partial,
            first.group_expr().clone(),
            aggregates.clone(),
            first.filter_expr().to_vec(),
            first.input().clone(),
            input_schema.clone(),
        )?);
        let state_schema = partial.schema();
        let groups = first.group_expr().expr().len();
        let states = |mode| -> Result<(Arc<Input>, Arc<dyn ExecutionPlan>)> {
            let input = Input::new(state_schema.clone());
            let leaf = Arc::new(StreamingTableExec::try_new(
                state_schema.clone(),
                vec![input.clone()],
                None,
                vec![],
                false,
                None,
            )?);
            let plan = Arc::new(AggregateExec::try_new(
                mode,
                first.group_expr().as_final(),
                aggregates.clone(),
                vec![None; aggregates.len()],
                leaf,
                input_schema.clone(),
            )?);
            Ok((input, plan))
        };
        let (reduce_input, reduce) = states(AggregateMode::PartialReduce)?;
        let (finish_input, final_aggregate) = states(AggregateMode::Final)?;
        let finish = query
            .plan()
            .clone()
            .transform_down(|node| {
                if Arc::ptr_eq(&node, &top) {
                    Ok(Transformed::new(
                        final_aggregate.clone(),
                        true,
                        TreeNodeRecursion::Jump,
                    ))
                } else {
                    Ok(Transformed::no(node))
                }
            })?
            .data;
        Ok(Some(SplitQuery {
            partial: query.with_plan(partial),
            reduce: CompiledQuery::over(reduce, reduce_input, query),
            finish: CompiledQuery::over(finish, finish_input, query),
            state_schema,
            groups,
        }))
    }

    /// What the states mean, as text stable across restarts: a hash of the partial phase's
    /// plan (its filters, expressions and aggregates). States of another plan do not merge
    /// with these, even where their columns are alike (a changed `WHERE`).
    pub fn fingerprint(&self) -> String {
        let plan = displayable(self.partial.plan().as_ref())
            .indent(true)
            .to_string();
        format!("{:016x}", crate::decide::stable_hash(&[&plan]))
    }

    /// The state rows' schema.
    pub fn state_schema(&self) -> &SchemaRef {
        &self.state_schema
    }

    /// How many of the state rows' first columns are the group columns.
    pub fn groups(&self) -> usize {
        self.groups
    }

    /// Per group of `rows` (of the query's input), the aggregates' state.
    pub async fn partial(&self, rows: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        self.partial.run(rows).await
    }

    /// `states` merged: one row per group.
    pub async fn reduce(&self, states: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        self.reduce.run(states).await
    }

    /// The query's result over the rows `states` stand for.
    pub async fn finish(&self, states: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        self.finish.run(states).await
    }
}

/// The plan's aggregation: the first aggregate node below a chain of single-input nodes.
fn aggregation(plan: &Arc<dyn ExecutionPlan>) -> Option<Arc<dyn ExecutionPlan>> {
    if plan.is::<AggregateExec>() {
        return Some(plan.clone());
    }
    match plan.children().as_slice() {
        [child] => aggregation(child),
        _ => None,
    }
}

/// The aggregation's phase that reads rows: itself if it is one phase, or the partial one
/// below its final one.
fn first_phase(top: &Arc<dyn ExecutionPlan>) -> Option<AggregateExec> {
    let aggregate = top.downcast_ref::<AggregateExec>()?;
    match aggregate.mode() {
        AggregateMode::Single | AggregateMode::SinglePartitioned => Some(aggregate.clone()),
        AggregateMode::Final | AggregateMode::FinalPartitioned => {
            let mut node = aggregate.input().clone();
            loop {
                if let Some(a) = node.downcast_ref::<AggregateExec>() {
                    return (*a.mode() == AggregateMode::Partial).then(|| a.clone());
                }
                let child = match node.children().as_slice() {
                    [child] => (*child).clone(),
                    _ => return None,
                };
                node = child;
            }
        }
        _ => None,
    }
}

/// Whether an aggregate is one of DataFusion's own, whose states merge. One a program
/// registers ([`Functions::with_aggregate`](crate::sql::Functions::with_aggregate)) may give
/// no state to merge, and nothing says so until its merge is called.
fn is_built_in(a: &AggregateFunctionExpr) -> bool {
    let kind = |f: &AggregateUDF| -> TypeId {
        let inner: &dyn Any = f.inner().as_ref();
        inner.type_id()
    };
    all_default_aggregate_functions()
        .iter()
        .any(|f| kind(f) == kind(a.fun()))
}

/// Whether every node below the aggregation takes each row on its own: what it gives over
/// the rows of several runs is what it gives over all of them at once.
fn passes_rows_through(plan: &Arc<dyn ExecutionPlan>) -> bool {
    const ROW_BY_ROW: [&str; 6] = [
        "ProjectionExec",
        "FilterExec",
        "CoalesceBatchesExec",
        "RepartitionExec",
        "CooperativeExec",
        "StreamingTableExec",
    ];
    // A node with a limit (one pushed down into a scan or filter) counts rows across runs.
    ROW_BY_ROW.contains(&plan.name())
        && plan.fetch().is_none()
        && plan.children().iter().all(|c| passes_rows_through(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Float64Array, StringArray, TimestampMicrosecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use arrow::util::display::{ArrayFormatter, FormatOptions};

    fn schema() -> SchemaRef {
        let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("v", DataType::Float64, true),
            Field::new("window_start", ts.clone(), false),
            Field::new("window_end", ts, false),
        ]))
    }

    /// Rows of `n` keys, values from `seed`, some null.
    fn rows(n: usize, seed: u64) -> RecordBatch {
        let len = 200;
        let mut x = seed;
        let mut next = || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            x >> 33
        };
        let keys: Vec<Option<String>> = (0..len)
            .map(|_| match next() % (n as u64 + 1) {
                0 => None,
                k => Some(format!("k{k}")),
            })
            .collect();
        let values: Vec<Option<f64>> = (0..len)
            .map(|_| match next() % 10 {
                0 => None,
                _ => Some((next() % 10_000) as f64 / 7.0 + 1e6),
            })
            .collect();
        let at = |v: i64| -> ArrayRef {
            Arc::new(TimestampMicrosecondArray::from(vec![v; len]).with_timezone("UTC"))
        };
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(StringArray::from(keys)),
                Arc::new(Float64Array::from(values)),
                at(60_000_000),
                at(120_000_000),
            ],
        )
        .unwrap()
    }

    /// Each row as text, numbers to 9 significant digits (the phases add in another order).
    fn text(batches: &[RecordBatch]) -> Vec<String> {
        let options = FormatOptions::default().with_null("∅");
        let mut out = Vec::new();
        for b in batches {
            let formatters: Vec<ArrayFormatter> = b
                .columns()
                .iter()
                .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap())
                .collect();
            for row in 0..b.num_rows() {
                let cells: Vec<String> = formatters
                    .iter()
                    .map(|f| {
                        let cell = f.value(row).to_string();
                        match cell.parse::<f64>() {
                            Ok(x) if cell.contains('.') => format!("{x:.9e}"),
                            _ => cell,
                        }
                    })
                    .collect();
                out.push(cells.join(" | "));
            }
        }
        out.sort();
        out
    }

    /// Over rows given in three runs, partial states reduced and finished are the query's
    /// result over all the rows at once: counts, sums, means, extremes, spreads, exact
    /// percentiles, distinct counts, expressions of aggregates, filters below and `HAVING`
    /// above the aggregation.
    #[tokio::test]
    async fn the_phases_over_rows_in_parts_give_the_query_over_them_all() {
        let ctx = crate::sql::session_context();
        let sql = "SELECT k, window_start, window_end, count(*) AS n, count(v) AS nv, \
                   sum(v) AS s, avg(v) AS mean, min(v) AS lo, max(v) AS hi, stddev(v) AS sd, \
                   (max(v) - min(v)) / avg(v) AS range, percentile_cont(v, 0.95) AS p95, \
                   median(v) AS med, count(DISTINCT v) AS distinct_v, \
                   sum(CASE WHEN v > 1000700 THEN v ELSE 0 END) AS high \
                   FROM t WHERE k <> 'k3' OR v > 1000500 \
                   GROUP BY k, window_start, window_end HAVING count(*) > 1 ORDER BY k";
        let query = CompiledQuery::new(&ctx, "t", schema(), sql).await.unwrap();
        let split = SplitQuery::of(&query).unwrap().expect("the query is split");
        let parts = [rows(9, 1), rows(9, 2), rows(5, 3)];
        let whole = query.run(parts.to_vec()).await.unwrap();
        assert!(text(&whole).len() >= 8, "{:?}", text(&whole));
        let mut states = Vec::new();
        for part in &parts {
            states.extend(split.partial(vec![part.clone()]).await.unwrap());
        }
        // Two of the runs merged first, as a window compacts its states.
        let mut reduced = split.reduce(states[..2].to_vec()).await.unwrap();
        reduced.extend(states[2..].iter().cloned());
        let finished = split.finish(reduced).await.unwrap();
        assert_eq!(text(&finished), text(&whole));
        assert_eq!(finished[0].schema(), whole[0].schema());
        assert_eq!(split.groups(), 3);
        assert_eq!(split.state_schema().field(0).name(), "k");
    }

    /// A partial phase over about as many groups as rows, past DataFusion's probe of 100,000
    /// rows, still aggregates (it does not pass rows on as states, which `percentile_cont`
    /// cannot do).
    #[tokio::test]
    async fn a_partial_phase_over_as_many_groups_as_rows_keeps_aggregating() {
        let ctx = crate::sql::session_context();
        let sql = "SELECT k, window_start, window_end, count(*) AS n, \
                   percentile_cont(v, 0.5) AS p50 FROM t GROUP BY k, window_start, window_end";
        let query = CompiledQuery::new(&ctx, "t", schema(), sql).await.unwrap();
        let split = SplitQuery::of(&query).unwrap().expect("the query is split");
        let n = 120_000;
        let at = |v: i64| -> ArrayRef {
            Arc::new(TimestampMicrosecondArray::from(vec![v; n]).with_timezone("UTC"))
        };
        let rows = RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| format!("k{i}")),
                )),
                Arc::new(Float64Array::from_iter_values((0..n).map(|i| i as f64))),
                at(60_000_000),
                at(120_000_000),
            ],
        )
        .unwrap();
        // In batches, as the probe looks after each.
        let batches = (0..n)
            .step_by(8_000)
            .map(|at| rows.slice(at, 8_000.min(n - at)));
        let states = split.partial(batches.collect()).await.unwrap();
        let finished = split.finish(states).await.unwrap();
        assert_eq!(finished.iter().map(RecordBatch::num_rows).sum::<usize>(), n);
    }

    /// Shapes whose phases are not built: an aggregate with an order of its own, a window
    /// function over the rows, none at all, a limit below the aggregation (it counts rows
    /// across runs).
    #[tokio::test]
    async fn other_shapes_are_not_split() {
        let ctx = crate::sql::session_context();
        for sql in [
            "SELECT k, array_agg(v ORDER BY v) AS vs FROM t GROUP BY k",
            "SELECT k, sum(r) AS s FROM (SELECT k, row_number() OVER (PARTITION BY k ORDER BY v) \
             AS r FROM t) GROUP BY k",
            "SELECT k, v FROM t WHERE v > 1",
            "SELECT k, sum(v) AS s FROM (SELECT * FROM t WHERE v > 1 LIMIT 100) GROUP BY k",
        ] {
            let query = CompiledQuery::new(&ctx, "t", schema(), sql).await.unwrap();
            assert!(SplitQuery::of(&query).unwrap().is_none(), "{sql}");
        }
    }

    /// An aggregate a program registers is not split, even one that could be: nothing says
    /// whether its states merge until a merge is called.
    #[tokio::test]
    async fn an_aggregate_of_a_programs_own_is_not_split() {
        use datafusion::functions_aggregate::min_max::MaxAccumulator;
        use datafusion::logical_expr::{Volatility, create_udaf};
        let largest = create_udaf(
            "largest",
            vec![DataType::Float64],
            Arc::new(DataType::Float64),
            Volatility::Immutable,
            Arc::new(|_| Ok(Box::new(MaxAccumulator::try_new(&DataType::Float64)?))),
            Arc::new(vec![DataType::Float64]),
        );
        let ctx =
            crate::sql::session_context_with(&crate::sql::Functions::new().with_aggregate(largest));
        let split = |sql: &'static str| {
            let ctx = ctx.clone();
            async move {
                let query = CompiledQuery::new(&ctx, "t", schema(), sql).await.unwrap();
                SplitQuery::of(&query).unwrap().is_some()
            }
        };
        assert!(split("SELECT k, max(v) AS hi FROM t GROUP BY k").await);
        assert!(!split("SELECT k, largest(v) AS hi FROM t GROUP BY k").await);
        assert!(!split("SELECT k, max(v) AS hi, largest(v) AS hi2 FROM t GROUP BY k").await);
    }
}
