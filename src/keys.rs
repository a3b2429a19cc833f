//! One encoding of a row's key as text, for the per-key state of the score, forecast and spot
//! stages (and their checkpoints).
//!
//! In: the values of a row's key columns, in order. Out: one string, the values joined by
//! U+001F (the unit separator, a control character no key value holds), which [`split`]
//! takes apart again. (Window and carry state keys rows by Arrow's row format instead: bytes
//! that sort and compare as the values do, never shown to anyone.)

use arrow::array::{Array, ArrayRef, RecordBatch, StringArray};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use arrow::error::ArrowError;

/// Between two values of a key.
pub const SEPARATOR: char = '\u{1f}';

/// The key of `values`, in order.
pub fn join<'a>(values: impl IntoIterator<Item = &'a str>) -> String {
    let mut key = String::new();
    for (n, v) in values.into_iter().enumerate() {
        if n > 0 {
            key.push(SEPARATOR);
        }
        key.push_str(v);
    }
    key
}

/// The values of a key, in order.
pub fn split(key: &str) -> impl Iterator<Item = &str> {
    key.split(SEPARATOR)
}

/// The key of every row of `batch` over the columns `columns` (any type, as text); a row with
/// a null key value has none.
pub fn of_rows(batch: &RecordBatch, columns: &[usize]) -> Result<Vec<Option<String>>, ArrowError> {
    let texts: Vec<ArrayRef> = columns
        .iter()
        .map(|&c| cast(batch.column(c), &DataType::Utf8))
        .collect::<Result<_, _>>()?;
    let texts: Vec<&StringArray> = texts
        .iter()
        .map(|t| {
            t.as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| ArrowError::CastError("a key column as text".into()))
        })
        .collect::<Result<_, _>>()?;
    Ok((0..batch.num_rows())
        .map(|i| {
            texts
                .iter()
                .all(|t| t.is_valid(i))
                .then(|| join(texts.iter().map(|t| t.value(i))))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn keys_split_back_into_their_values_even_with_separators_people_use() {
        let key = join(["m5.large|spot", "us-east-1a"]);
        assert_ne!(key, join(["m5.large", "spot|us-east-1a"]));
        assert_eq!(
            split(&key).collect::<Vec<_>>(),
            ["m5.large|spot", "us-east-1a"]
        );
    }

    #[test]
    fn rows_with_a_null_key_value_have_no_key() {
        let a: ArrayRef = Arc::new(StringArray::from(vec![Some("a"), None]));
        let b: ArrayRef = Arc::new(arrow::array::Int64Array::from(vec![1, 2]));
        let batch = RecordBatch::try_from_iter([("a", a), ("b", b)]).unwrap();
        assert_eq!(
            of_rows(&batch, &[0, 1]).unwrap(),
            [Some(join(["a", "1"])), None]
        );
    }
}
