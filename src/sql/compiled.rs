//! A stage's query planned once and run on each new input.
//!
//! In: the SQL of a stage, the name and schema of the one relation it reads. Out: a
//! [`CompiledQuery`] — the DataFusion physical plan, made when the stage opens, over a table
//! whose rows are whatever [`CompiledQuery::run`] was given. Each run resets the plan's
//! execution state (a sort's dynamic filter, a join's built side) and executes it; nothing is
//! parsed, analysed, optimised or planned again.

use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_plan::execution_plan::reset_plan_states;
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream, collect};
use datafusion::prelude::SessionContext;

/// The rows of the current run, read when the plan executes.
#[derive(Debug)]
pub(crate) struct Input {
    schema: SchemaRef,
    rows: Mutex<Vec<RecordBatch>>,
}

impl Input {
    pub(crate) fn new(schema: SchemaRef) -> Arc<Self> {
        Arc::new(Input {
            schema,
            rows: Mutex::new(Vec::new()),
        })
    }
}

impl PartitionStream for Input {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let rows = self.rows.lock().map(|r| r.clone()).unwrap_or_default();
        match MemoryStream::try_new(rows, self.schema.clone(), None) {
            Ok(s) => Box::pin(s),
            Err(e) => Box::pin(
                datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(
                    self.schema.clone(),
                    futures::stream::once(async move { Err(e) }),
                ),
            ),
        }
    }
}

/// One query, planned.
pub struct CompiledQuery {
    plan: Arc<dyn ExecutionPlan>,
    input: Arc<Input>,
    task: Arc<TaskContext>,
}

impl CompiledQuery {
    /// Plans `sql`, which reads the relation `table` of `schema`, in `ctx` (whose functions it
    /// may call).
    pub async fn new(
        ctx: &SessionContext,
        table: &str,
        schema: SchemaRef,
        sql: &str,
    ) -> Result<Self> {
        let input = Input::new(schema.clone());
        let provider = StreamingTable::try_new(schema, vec![input.clone()])?;
        ctx.deregister_table(table)?;
        ctx.register_table(table, Arc::new(provider))?;
        let planned = ctx.sql(sql).await;
        let plan = match planned {
            Ok(df) => df.create_physical_plan().await,
            Err(e) => Err(e),
        };
        ctx.deregister_table(table)?;
        Ok(CompiledQuery {
            plan: plan?,
            input,
            task: ctx.task_ctx(),
        })
    }

    /// The plan.
    pub fn plan(&self) -> &Arc<dyn ExecutionPlan> {
        &self.plan
    }

    /// Another plan over the same input (its leaf reads the rows a run is given).
    pub(crate) fn with_plan(&self, plan: Arc<dyn ExecutionPlan>) -> Self {
        CompiledQuery {
            plan,
            input: self.input.clone(),
            task: self.task.clone(),
        }
    }

    /// `plan`, whose leaf reads `input`, run in the session of `like`.
    pub(crate) fn over(plan: Arc<dyn ExecutionPlan>, input: Arc<Input>, like: &Self) -> Self {
        CompiledQuery {
            plan,
            input,
            task: like.task.clone(),
        }
    }

    /// The query's rows over `rows` (of the columns it was planned with), as one partition in
    /// order.
    pub async fn run(&self, rows: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        let rows = rows
            .into_iter()
            .map(|b| self.conform(b))
            .collect::<Result<Vec<_>>>()?;
        self.set(rows);
        let result = match reset_plan_states(self.plan.clone()) {
            Ok(plan) => collect(plan, self.task.clone()).await,
            Err(e) => Err(e),
        };
        self.set(Vec::new());
        result
    }

    /// `batch` under the planned schema: the same columns, perhaps declared otherwise (a field
    /// that cannot be null, metadata).
    fn conform(&self, batch: RecordBatch) -> Result<RecordBatch> {
        let planned = &self.input.schema;
        if batch.schema_ref() == planned {
            return Ok(batch);
        }
        let given = batch.schema();
        let same_columns = given.fields().len() == planned.fields().len()
            && given
                .fields()
                .iter()
                .zip(planned.fields())
                .all(|(a, b)| a.name() == b.name() && a.data_type() == b.data_type());
        if !same_columns {
            return Err(DataFusionError::Plan(format!(
                "input rows of schema {given} for a query planned over {planned}"
            )));
        }
        Ok(RecordBatch::try_new(
            planned.clone(),
            batch.columns().to_vec(),
        )?)
    }

    fn set(&self, rows: Vec<RecordBatch>) {
        if let Ok(mut r) = self.input.rows.lock() {
            *r = rows;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{AsArray, Int64Array};
    use arrow::datatypes::{DataType, Field, Int64Type, Schema};

    fn batch(values: Vec<i64>) -> RecordBatch {
        let schema = Schema::new(vec![Field::new("v", DataType::Int64, false)]);
        RecordBatch::try_new(Arc::new(schema), vec![Arc::new(Int64Array::from(values))]).unwrap()
    }

    fn values(out: &[RecordBatch]) -> Vec<i64> {
        out.iter()
            .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
            .collect()
    }

    #[tokio::test]
    async fn one_plan_runs_on_each_new_input_and_a_top_k_resets_between_runs() {
        let ctx = crate::sql::session_context();
        let schema = batch(vec![]).schema();
        let q = CompiledQuery::new(&ctx, "t", schema.clone(), "SELECT v * 10 AS v FROM t")
            .await
            .unwrap();
        assert_eq!(
            values(&q.run(vec![batch(vec![1, 2])]).await.unwrap()),
            [10, 20]
        );
        assert_eq!(values(&q.run(vec![batch(vec![3])]).await.unwrap()), [30]);
        // A sort with a limit keeps a dynamic filter while it runs: the second run must not
        // be filtered by what the first one saw.
        let top = CompiledQuery::new(&ctx, "t", schema, "SELECT v FROM t ORDER BY v DESC LIMIT 2")
            .await
            .unwrap();
        let first = top.run(vec![batch(vec![5, 9, 7])]).await.unwrap();
        assert_eq!(values(&first), [9, 7]);
        let second = top.run(vec![batch(vec![1, 3, 2])]).await.unwrap();
        assert_eq!(values(&second), [3, 2]);
        // The relation was only lent to the planner.
        assert!(ctx.table("t").await.is_err());
    }

    #[tokio::test]
    async fn rows_of_another_schema_are_refused() {
        let ctx = crate::sql::session_context();
        let q = CompiledQuery::new(&ctx, "t", batch(vec![]).schema(), "SELECT v FROM t")
            .await
            .unwrap();
        let other = Schema::new(vec![Field::new("w", DataType::Int64, false)]);
        let wrong =
            RecordBatch::try_new(Arc::new(other), vec![Arc::new(Int64Array::from(vec![1]))])
                .unwrap();
        let err = q.run(vec![wrong]).await.unwrap_err().to_string();
        assert!(err.contains("planned over"), "{err}");
    }
}
