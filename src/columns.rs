//! Typed reads of a batch's columns by name, for the stages that read rows one by one (score,
//! forecast, alert and recommend).
//!
//! In: a batch and a column name. Out: the column cast to text, `f64` or µs since the epoch;
//! an error names a missing column or one that does not cast.

use arrow::array::{Array, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, TimeUnit};
use arrow::error::ArrowError;

/// The column `name` as text.
pub fn utf8(batch: &RecordBatch, name: &str) -> Result<StringArray, ArrowError> {
    let col = batch
        .column_by_name(name)
        .ok_or_else(|| ArrowError::SchemaError(format!("no column `{name}`")))?;
    let c = cast(col, &DataType::Utf8)?;
    c.as_any()
        .downcast_ref::<StringArray>()
        .cloned()
        .ok_or_else(|| ArrowError::CastError(format!("`{name}` is not text")))
}

/// The column `name` as `f64`.
pub fn f64s(batch: &RecordBatch, name: &str) -> Result<Float64Array, ArrowError> {
    let col = batch
        .column_by_name(name)
        .ok_or_else(|| ArrowError::SchemaError(format!("no column `{name}`")))?;
    let c = cast(col, &DataType::Float64)?;
    c.as_any()
        .downcast_ref::<Float64Array>()
        .cloned()
        .ok_or_else(|| ArrowError::CastError(format!("`{name}` is not numeric")))
}

/// µs since the epoch of a timestamp column.
pub fn micros(batch: &RecordBatch, name: &str) -> Result<Int64Array, ArrowError> {
    let col = batch
        .column_by_name(name)
        .ok_or_else(|| ArrowError::SchemaError(format!("no column `{name}`")))?;
    let c = cast(col, &DataType::Timestamp(TimeUnit::Microsecond, None))?;
    let c = cast(&c, &DataType::Int64)?;
    c.as_any()
        .downcast_ref::<Int64Array>()
        .cloned()
        .ok_or_else(|| ArrowError::CastError(format!("`{name}` is not a timestamp")))
}
