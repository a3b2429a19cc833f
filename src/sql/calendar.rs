//! Calendar features as SQL functions over event-time timestamps (UTC):
//! `hour_of_day(ts)` (0–23), `day_of_week(ts)` (0 = Monday … 6 = Sunday) and
//! `is_business_hours(ts)` (Monday to Friday, 09:00 to 17:59).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::{Result, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

const MICROS_PER_HOUR: i64 = 3_600_000_000;
const MICROS_PER_DAY: i64 = 24 * MICROS_PER_HOUR;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Feature {
    HourOfDay,
    DayOfWeek,
    BusinessHours,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct CalendarFeature {
    feature: Feature,
    signature: Signature,
}

fn hour(us: i64) -> i32 {
    (us.rem_euclid(MICROS_PER_DAY) / MICROS_PER_HOUR) as i32
}

fn weekday(us: i64) -> i32 {
    // 1970-01-01 was a Thursday (3 when Monday is 0).
    ((us.div_euclid(MICROS_PER_DAY) + 3).rem_euclid(7)) as i32
}

impl ScalarUDFImpl for CalendarFeature {
    fn name(&self) -> &str {
        match self.feature {
            Feature::HourOfDay => "hour_of_day",
            Feature::DayOfWeek => "day_of_week",
            Feature::BusinessHours => "is_business_hours",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(match self.feature {
            Feature::BusinessHours => DataType::Boolean,
            _ => DataType::Int32,
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [arg] = args.args.as_slice() else {
            return exec_err!("{}() takes one timestamp", self.name());
        };
        let array = arg.to_array(args.number_rows)?;
        let Some(ts) = array.as_any().downcast_ref::<TimestampMicrosecondArray>() else {
            return exec_err!(
                "{}() needs a microsecond timestamp, got {}",
                self.name(),
                array.data_type()
            );
        };
        let out: ArrayRef = match self.feature {
            Feature::HourOfDay => Arc::new(ts.unary::<_, arrow::datatypes::Int32Type>(hour)),
            Feature::DayOfWeek => Arc::new(ts.unary::<_, arrow::datatypes::Int32Type>(weekday)),
            Feature::BusinessHours => Arc::new(
                ts.iter()
                    .map(|t| t.map(|t| weekday(t) < 5 && (9..18).contains(&hour(t))))
                    .collect::<BooleanArray>(),
            ),
        };
        Ok(ColumnarValue::Array(out))
    }
}

/// The calendar functions, ready to register.
pub fn functions() -> Vec<ScalarUDF> {
    let signature = Signature::uniform(
        1,
        vec![
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            DataType::Timestamp(TimeUnit::Microsecond, None),
        ],
        Volatility::Immutable,
    );
    [
        Feature::HourOfDay,
        Feature::DayOfWeek,
        Feature::BusinessHours,
    ]
    .into_iter()
    .map(|feature| {
        ScalarUDF::new_from_impl(CalendarFeature {
            feature,
            signature: signature.clone(),
        })
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants() {
        // 2026-11-27T16:30:00Z is a Friday afternoon; 2026-11-28T08:00:00Z a Saturday morning.
        let fri = 1_795_797_000_000_000;
        let sat = 1_795_852_800_000_000;
        assert_eq!((hour(fri), weekday(fri)), (16, 4));
        assert_eq!((hour(sat), weekday(sat)), (8, 5));
        assert_eq!(weekday(0), 3);
        assert_eq!(hour(-1), 23);
    }
}
