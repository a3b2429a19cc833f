//! The SQL engine: DataFusion sessions with Stratus's functions registered.
//!
//! Built-in aggregates cover most window features: `avg`, `min`, `max`, `stddev`,
//! `percentile_cont(value, 0.95)` (exact), `approx_percentile_cont`, `median`.
//! Stratus adds:
//! - [`calendar`]: `hour_of_day`, `day_of_week`, `is_business_hours`.
//!
//! [`compiled`] plans a stage's query once and runs it on each new input; [`stage`] runs a
//! pipeline's SQL stages that have no window.

pub mod calendar;
pub mod compiled;
pub mod stage;

use datafusion::prelude::{SessionConfig, SessionContext};

/// A session for running stage SQL: Stratus's functions registered, one target partition
/// (windows are small; parallelism comes from partitions of the source, not from within a query).
pub fn session_context() -> SessionContext {
    let config = SessionConfig::new()
        .with_target_partitions(1)
        .with_information_schema(false);
    let ctx = SessionContext::new_with_config(config);
    for f in calendar::functions() {
        ctx.register_udf(f);
    }
    ctx
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{AsArray, RecordBatch, TimestampMicrosecondArray};
    use arrow::datatypes::{DataType, Field, Int32Type, Schema, TimeUnit};
    use std::sync::Arc;

    #[tokio::test]
    async fn calendar_functions_in_sql() {
        let ctx = session_context();
        let ts =
            TimestampMicrosecondArray::from(vec![1_795_797_000_000_000, 1_795_852_800_000_000])
                .with_timezone("UTC");
        let schema = Schema::new(vec![Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        )]);
        let batch = RecordBatch::try_new(Arc::new(schema), vec![Arc::new(ts)]).unwrap();
        ctx.register_batch("t", batch).unwrap();
        let out = ctx
            .sql("SELECT hour_of_day(ts) AS h, day_of_week(ts) AS d, is_business_hours(ts) AS b FROM t")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let b = &out[0];
        let h = b.column(0).as_primitive::<Int32Type>();
        let d = b.column(1).as_primitive::<Int32Type>();
        let bh = b.column(2).as_boolean();
        assert_eq!((h.value(0), d.value(0), bh.value(0)), (16, 4, true));
        assert_eq!((h.value(1), d.value(1), bh.value(1)), (8, 5, false));
    }
}
