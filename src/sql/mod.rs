//! The SQL engine: DataFusion sessions with Stratus's functions registered.
//!
//! Built-in aggregates cover most window features: `avg`, `min`, `max`, `stddev`,
//! `percentile_cont(value, 0.95)` (exact), `approx_percentile_cont`, `median`.
//! Stratus adds:
//! - [`calendar`]: `hour_of_day`, `day_of_week`, `is_business_hours`.
//!
//! A program adds its own Rust functions with [`Functions`].
//!
//! [`compiled`] plans a stage's query once and runs it on each new input; [`split`] splits an
//! aggregating one into partial, reduce and final phases; [`stage`] runs a pipeline's SQL
//! stages that have no window.

pub mod calendar;
pub mod compiled;
pub mod split;
pub mod stage;

use std::sync::Arc;

use datafusion::logical_expr::{AggregateUDF, ScalarUDF};
use datafusion::prelude::{SessionConfig, SessionContext};

/// Functions a program adds to Stratus's SQL: Rust scalar and aggregate functions, callable
/// from every stage as the built-in ones are, and checked by `validate` like them.
///
/// A program of one's own that links Stratus registers them and hands them to
/// [`cli::main`](crate::cli::main), which is the whole `stratus` command line:
///
/// ```
/// use std::sync::Arc;
///
/// use datafusion::arrow::array::{ArrayRef, Float64Array};
/// use datafusion::arrow::datatypes::DataType;
/// use datafusion::common::cast::as_float64_array;
/// use datafusion::logical_expr::{ColumnarValue, Volatility, create_udf};
/// use stratus::sql::Functions;
///
/// // `gib(bytes)`: bytes as GiB.
/// let gib = create_udf(
///     "gib",
///     vec![DataType::Float64],
///     DataType::Float64,
///     Volatility::Immutable,
///     Arc::new(|args: &[ColumnarValue]| {
///         let arrays = ColumnarValue::values_to_arrays(args)?;
///         let bytes = as_float64_array(&arrays[0])?;
///         let gib: Float64Array = bytes.unary(|b| b / (1u64 << 30) as f64);
///         Ok(ColumnarValue::Array(Arc::new(gib) as ArrayRef))
///     }),
/// );
/// let functions = Functions::new().with_scalar(gib);
///
/// // The program's `main`: `fn main() -> ExitCode { stratus::cli::main(functions) }`.
/// // Here, the query a stage would run:
/// let runtime = tokio::runtime::Runtime::new()?;
/// let rows = runtime.block_on(async {
///     let ctx = stratus::sql::session_context_with(&functions);
///     ctx.sql("SELECT gib(2147483648.0) AS g").await?.collect().await
/// })?;
/// let g = as_float64_array(rows[0].column(0))?;
/// assert_eq!(g.value(0), 2.0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct Functions {
    scalar: Vec<Arc<ScalarUDF>>,
    aggregate: Vec<Arc<AggregateUDF>>,
}

impl Functions {
    pub fn new() -> Self {
        Functions::default()
    }

    /// Adds a scalar function (one value per row), e.g. from DataFusion's `create_udf` or a
    /// `ScalarUDFImpl`.
    pub fn with_scalar(mut self, f: ScalarUDF) -> Self {
        self.scalar.push(Arc::new(f));
        self
    }

    /// Adds an aggregate function (one value per group: a window's key), e.g. from
    /// DataFusion's `create_udaf` or an `AggregateUDFImpl`.
    pub fn with_aggregate(mut self, f: AggregateUDF) -> Self {
        self.aggregate.push(Arc::new(f));
        self
    }
}

/// A session for running stage SQL: Stratus's functions registered, one target partition
/// (windows are small; parallelism comes from partitions of the source, not from within a query).
pub fn session_context() -> SessionContext {
    session_context_with(&Functions::default())
}

/// A session as [`session_context`], with `functions` registered too.
pub fn session_context_with(functions: &Functions) -> SessionContext {
    let mut config = SessionConfig::new()
        .with_target_partitions(1)
        .with_information_schema(false);
    // A window's partial aggregation over about as many groups as rows (100,000 keys, a point
    // each) would pass rows on as states (`convert_to_state`), which DataFusion 55's
    // `percentile_cont` cannot do (it panics: its argument list holds the percentile too).
    config
        .options_mut()
        .execution
        .skip_partial_aggregation_probe_ratio_threshold = 2.0;
    let ctx = SessionContext::new_with_config(config);
    for f in calendar::functions() {
        ctx.register_udf(f);
    }
    for f in &functions.scalar {
        ctx.register_udf(f.as_ref().clone());
    }
    for f in &functions.aggregate {
        ctx.register_udaf(f.as_ref().clone());
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
