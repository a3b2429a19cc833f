//! UTC timestamps as RFC 3339 text, written straight into a buffer.
//!
//! In: a timestamp column whose zone is UTC (`UTC` or `+00:00`), of any unit. Out: each value
//! exactly as arrow writes it (`2025-06-15T15:07:00Z`, with 3, 6 or 9 fraction digits when the
//! value has them: chrono's `SecondsFormat::AutoSi`), for the Kafka sink's JSON values
//! ([`UtcTimestamps`], an `arrow_json` encoder factory) and its record keys and ids. Arrow
//! formats each through chrono's zone lookups and `fmt` machinery: at a million records a
//! second that was a tenth of the sink's encoding. Years outside 0–9999 are left to arrow.

use std::sync::Arc;

use arrow::array::{Array, ArrowPrimitiveType, AsArray, PrimitiveArray};
use arrow::datatypes::{
    DataType, FieldRef, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType,
};
use arrow::error::ArrowError;
use arrow::json::writer::{Encoder, EncoderFactory, EncoderOptions, NullableEncoder};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use chrono::Datelike;

/// Days from 0001-01-01 (chrono's day 1) to 1970-01-01.
const UNIX_EPOCH_FROM_CE: i64 = 719_163;

/// Whether arrow displays a column of `data_type` as a UTC timestamp ending in `Z`.
fn utc_unit(data_type: &DataType) -> Option<TimeUnit> {
    match data_type {
        DataType::Timestamp(unit, Some(tz)) if matches!(tz.as_ref(), "UTC" | "+00:00") => {
            Some(*unit)
        }
        _ => None,
    }
}

/// A UTC timestamp's text: at most `2025-06-15T15:07:00.123456789Z`.
pub struct UtcText {
    bytes: [u8; 30],
    len: usize,
}

impl UtcText {
    /// `value` (in `unit` since the epoch) as arrow displays a UTC timestamp; `None` for a
    /// year outside 0–9999.
    pub fn of(value: i64, unit: TimeUnit) -> Option<UtcText> {
        let per_second: i64 = match unit {
            TimeUnit::Second => 1,
            TimeUnit::Millisecond => 1_000,
            TimeUnit::Microsecond => 1_000_000,
            TimeUnit::Nanosecond => 1_000_000_000,
        };
        let (seconds, part) = (value.div_euclid(per_second), value.rem_euclid(per_second));
        let nanos = part * (1_000_000_000 / per_second);
        let (days, of_day) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
        let date = i32::try_from(days + UNIX_EPOCH_FROM_CE)
            .ok()
            .and_then(chrono::NaiveDate::from_num_days_from_ce_opt)?;
        let year = u16::try_from(date.year()).ok().filter(|y| *y <= 9999)?;
        let mut bytes = *b"0000-00-00T00:00:00.000000000Z";
        digits(&mut bytes[0..4], year.into());
        digits(&mut bytes[5..7], date.month().into());
        digits(&mut bytes[8..10], date.day().into());
        digits(&mut bytes[11..13], of_day / 3600);
        digits(&mut bytes[14..16], of_day / 60 % 60);
        digits(&mut bytes[17..19], of_day % 60);
        digits(&mut bytes[20..29], nanos);
        // Fraction digits as chrono's `AutoSi`: none, 3, 6 or 9.
        let len = match nanos {
            0 => 19,
            n if n % 1_000_000 == 0 => 23,
            n if n % 1_000 == 0 => 26,
            _ => 29,
        };
        bytes[len] = b'Z';
        Some(UtcText {
            bytes,
            len: len + 1,
        })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII digits, `-`, `:`, `.`, `T` and `Z`.
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

/// Writes `n`'s last `into.len()` decimal digits into `into`, zero-padded.
fn digits(into: &mut [u8], mut n: i64) {
    for d in into.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// A column's values as text, by index: UTC timestamps through [`UtcText`], anything else
/// as arrow displays it.
pub struct ColumnText<'a> {
    utc: Option<(TimeUnit, PrimitiveArray<TimestampMicrosecondType>)>,
    formatter: ArrayFormatter<'a>,
}

impl<'a> ColumnText<'a> {
    pub fn try_new(array: &'a dyn Array, options: &FormatOptions<'a>) -> Result<Self, ArrowError> {
        let utc = utc_unit(array.data_type()).map(|unit| (unit, raw_values(array, unit)));
        Ok(ColumnText {
            utc,
            formatter: ArrayFormatter::try_new(array, options)?,
        })
    }

    /// Appends value `i` to `row` (a null as the options say).
    pub fn write(&self, i: usize, row: &mut String) -> Result<(), ArrowError> {
        if let Some((unit, values)) = self.utc.as_ref().filter(|(_, v)| v.is_valid(i))
            && let Some(text) = UtcText::of(values.value(i), *unit)
        {
            row.push_str(text.as_str());
            return Ok(());
        }
        self.formatter.value(i).write(row)
    }
}

/// A timestamp column's raw `i64` values (and nulls), whatever its unit.
fn raw_values(array: &dyn Array, unit: TimeUnit) -> PrimitiveArray<TimestampMicrosecondType> {
    fn raw<T: ArrowPrimitiveType<Native = i64>>(
        array: &dyn Array,
    ) -> PrimitiveArray<TimestampMicrosecondType> {
        let typed = array.as_primitive::<T>();
        PrimitiveArray::new(typed.values().clone(), typed.nulls().cloned())
    }
    match unit {
        TimeUnit::Second => raw::<TimestampSecondType>(array),
        TimeUnit::Millisecond => raw::<TimestampMillisecondType>(array),
        TimeUnit::Microsecond => raw::<TimestampMicrosecondType>(array),
        TimeUnit::Nanosecond => raw::<TimestampNanosecondType>(array),
    }
}

/// An `arrow_json` encoder factory: UTC timestamp columns through [`UtcText`], every other
/// column by `arrow_json` itself.
#[derive(Debug)]
pub struct UtcTimestamps;

impl UtcTimestamps {
    /// `arrow_json`'s default options with this factory.
    pub fn options() -> EncoderOptions {
        EncoderOptions::default().with_encoder_factory(Arc::new(UtcTimestamps))
    }
}

impl EncoderFactory for UtcTimestamps {
    fn make_default_encoder<'a>(
        &self,
        field: &'a FieldRef,
        array: &'a dyn Array,
        _options: &'a EncoderOptions,
    ) -> Result<Option<NullableEncoder<'a>>, ArrowError> {
        // A dictionary's values come here with the dictionary's field: only plain columns.
        if field.data_type() != array.data_type() {
            return Ok(None);
        }
        let Some(unit) = utc_unit(array.data_type()) else {
            return Ok(None);
        };
        let encoder = UtcEncoder {
            values: raw_values(array, unit),
            unit,
            // As `arrow_json` formats a temporal value.
            fallback: ArrayFormatter::try_new(
                array,
                &FormatOptions::new().with_display_error(true),
            )?,
        };
        Ok(Some(NullableEncoder::new(
            Box::new(encoder),
            array.nulls().cloned(),
        )))
    }
}

struct UtcEncoder<'a> {
    values: PrimitiveArray<TimestampMicrosecondType>,
    unit: TimeUnit,
    fallback: ArrayFormatter<'a>,
}

impl Encoder for UtcEncoder<'_> {
    fn encode(&mut self, idx: usize, out: &mut Vec<u8>) {
        out.push(b'"');
        match UtcText::of(self.values.value(idx), self.unit) {
            Some(text) => out.extend_from_slice(text.as_bytes()),
            None => {
                use std::io::Write;
                let _ = write!(out, "{}", self.fallback.value(idx));
            }
        }
        out.push(b'"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{RecordBatch, StructArray};
    use arrow::datatypes::{Field, Schema};
    use arrow::json::writer::make_encoder;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    /// Every row of `batch` as `arrow_json` writes it with `options`.
    fn json(batch: &RecordBatch, options: &EncoderOptions) -> Vec<String> {
        let array = StructArray::from(batch.clone());
        let field = Arc::new(Field::new(
            "row",
            DataType::Struct(batch.schema().fields().clone()),
            false,
        ));
        let mut encoder = make_encoder(&field, &array, options).unwrap();
        (0..batch.num_rows())
            .map(|i| {
                let mut out = Vec::new();
                encoder.encode(i, &mut out);
                String::from_utf8(out).unwrap()
            })
            .collect()
    }

    /// Values over years 0–9999 and past them, in every unit and both spellings of UTC, with
    /// whole seconds, milliseconds, microseconds and nanoseconds, before 1970 and nulls.
    fn timestamps(seed: u64) -> RecordBatch {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut columns: Vec<Arc<dyn Array>> = Vec::new();
        let mut fields = Vec::new();
        for (n, unit) in [
            TimeUnit::Second,
            TimeUnit::Millisecond,
            TimeUnit::Microsecond,
            TimeUnit::Nanosecond,
        ]
        .into_iter()
        .enumerate()
        {
            let per_second = [1, 1_000, 1_000_000, 1_000_000_000][n];
            // Years 0–9999 span about ±253e9 s from 1970 on the early side; nanoseconds
            // reach only ±292 years.
            let span = if n == 3 {
                9_000_000_000
            } else {
                300_000_000_000
            };
            let values: Vec<Option<i64>> = (0..2000)
                .map(|i| {
                    let seconds: i64 = rng.random_range(-span..span);
                    let part = match i % 5 {
                        0 => 0,
                        1 => rng.random_range(0..1_000) * (per_second / 1_000).max(1),
                        2 => rng.random_range(0..1_000_000) * (per_second / 1_000_000).max(1),
                        _ => rng.random_range(0..per_second),
                    };
                    (i % 7 != 3).then_some(seconds.saturating_mul(per_second) + part % per_second)
                })
                .chain([
                    Some(0),
                    Some(-1),
                    Some(1),
                    Some(i64::MIN + 1),
                    Some(i64::MAX),
                ])
                .collect();
            for tz in ["UTC", "+00:00"] {
                let array = PrimitiveArray::<TimestampMicrosecondType>::from(values.clone());
                let data = array
                    .into_data()
                    .into_builder()
                    .data_type(DataType::Timestamp(unit, Some(tz.into())))
                    .build()
                    .unwrap();
                columns.push(arrow::array::make_array(data));
                fields.push(Field::new(
                    format!("t{n}{tz}"),
                    DataType::Timestamp(unit, Some(tz.into())),
                    true,
                ));
            }
        }
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
    }

    #[test]
    fn utc_timestamps_are_written_exactly_as_arrow_writes_them() {
        let batch = timestamps(11);
        let (ours, arrows) = (
            json(&batch, &UtcTimestamps::options()),
            json(&batch, &EncoderOptions::default()),
        );
        assert_eq!(ours.len(), 2005);
        for (i, (a, b)) in ours.iter().zip(&arrows).enumerate() {
            assert_eq!(a, b, "row {i}");
        }
        // The text of its own, and what it leaves to arrow.
        let text = UtcText::of(1_750_000_020_123_000, TimeUnit::Microsecond).unwrap();
        assert_eq!(text.as_str(), "2025-06-15T15:07:00.123Z");
        assert!(UtcText::of(i64::MAX, TimeUnit::Microsecond).is_none());
    }

    #[test]
    fn a_columns_text_is_arrows_display() {
        let batch = timestamps(12);
        let options = FormatOptions::default().with_null("");
        for column in batch.columns() {
            let ours = ColumnText::try_new(column.as_ref(), &options).unwrap();
            let arrows = ArrayFormatter::try_new(column.as_ref(), &options).unwrap();
            let mut failed = 0;
            for i in 0..column.len() {
                let (mut text, mut expected) = (String::new(), String::new());
                let (a, b) = (
                    ours.write(i, &mut text),
                    arrows.value(i).write(&mut expected),
                );
                // A value arrow cannot convert is an error from both.
                assert_eq!(a.is_err(), b.is_err(), "row {i}");
                failed += usize::from(a.is_err());
                assert_eq!(text, expected, "row {i}");
            }
            assert!(failed < 3, "{failed} values failed");
        }
    }
}
