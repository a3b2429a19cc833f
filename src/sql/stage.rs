//! A SQL stage without a window: the stage's query over each batch of its input.
//!
//! In: batches of one input (a source or a stage). Out: the query's rows for each batch, in
//! order, from a plan made once when the stage opens. Row by row — a `WHERE` or a projection; an aggregate without a window sees one batch.
//! Keeps no state.

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::error::Result;

use super::compiled::CompiledQuery;
use crate::operator::{self, Collector, Context, Operator};

/// One plain SQL stage, planned when it opens.
pub struct SqlOperator {
    query: CompiledQuery,
}

impl SqlOperator {
    /// Plans `sql`, which reads the relation `input` of `schema` and may call `functions`.
    pub async fn open(
        functions: &super::Functions,
        input: &str,
        schema: SchemaRef,
        sql: &str,
    ) -> Result<Self> {
        let ctx = super::session_context_with(functions);
        Ok(SqlOperator {
            query: CompiledQuery::new(&ctx, input, schema, sql).await?,
        })
    }
}

#[async_trait::async_trait]
impl Operator for SqlOperator {
    async fn process_batch(
        &mut self,
        batch: &RecordBatch,
        _ctx: &Context<'_>,
        out: &mut Collector,
    ) -> operator::Result<()> {
        for b in self.query.run(vec![batch.clone()]).await? {
            out.collect(b);
        }
        Ok(())
    }
}
