//! Durations as users write them, in pipeline files, SQL intervals and the command line:
//! `"90s"`, `"1 minute"`, `"500 ms"`, `"2h"`, `"1 day"`, as microseconds.

/// Why a duration does not parse; the text as written is kept for the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// No number where the duration starts.
    #[error("{text:?} is not a duration; write for example \"30s\", \"1 minute\" or \"5m\"")]
    NotADuration { text: String },
    /// A unit that is none of ms, s, m, h, d and their names (`unit` as read: trimmed,
    /// lower case).
    #[error("{text:?}: unknown unit {unit:?}; use ms, s, m, h or d (or their names)")]
    UnknownUnit { text: String, unit: String },
    /// Negative, or past about 10,000 years.
    #[error("{text:?} is out of range")]
    OutOfRange { text: String },
}

/// The message as text, for a diagnostic that takes one (`Reporter::at`).
impl From<DurationError> for String {
    fn from(e: DurationError) -> Self {
        e.to_string()
    }
}

/// Parses a duration as written in intervals and pipeline files: `"90s"`, `"1 minute"`,
/// `"500 ms"`, `"5 minutes"`, `"2h"`, `"1 day"`. Returns microseconds.
pub fn parse_duration(text: &str) -> Result<i64, DurationError> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: f64 = number.parse().map_err(|_| DurationError::NotADuration {
        text: text.to_string(),
    })?;
    let unit_us: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "us" | "microsecond" | "microseconds" => 1.0,
        "ms" | "millisecond" | "milliseconds" => 1e3,
        "s" | "sec" | "secs" | "second" | "seconds" => 1e6,
        "m" | "min" | "mins" | "minute" | "minutes" => 6e7,
        "h" | "hour" | "hours" => 3.6e9,
        "d" | "day" | "days" => 8.64e10,
        other => {
            return Err(DurationError::UnknownUnit {
                text: text.to_string(),
                unit: other.to_string(),
            });
        }
    };
    let us = n * unit_us;
    if !(0.0..=3.2e17).contains(&us) {
        return Err(DurationError::OutOfRange {
            text: text.to_string(),
        });
    }
    Ok(us.round() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_every_spelling() {
        assert_eq!(parse_duration("90s"), Ok(90_000_000));
        assert_eq!(parse_duration("1 minute"), Ok(60_000_000));
        assert_eq!(parse_duration("5 minutes"), Ok(300_000_000));
        assert_eq!(parse_duration("500ms"), Ok(500_000));
        assert_eq!(parse_duration("2h"), Ok(7_200_000_000));
        assert_eq!(parse_duration("1.5 s"), Ok(1_500_000));
        let e = parse_duration("5 fortnights").unwrap_err();
        assert_eq!(
            e,
            DurationError::UnknownUnit {
                text: "5 fortnights".into(),
                unit: "fortnights".into()
            }
        );
        assert_eq!(
            e.to_string(),
            "\"5 fortnights\": unknown unit \"fortnights\"; use ms, s, m, h or d (or their names)"
        );
        assert_eq!(
            parse_duration("soon").unwrap_err().to_string(),
            "\"soon\" is not a duration; write for example \"30s\", \"1 minute\" or \"5m\""
        );
        assert_eq!(
            parse_duration("-1s").unwrap_err().to_string(),
            "\"-1s\" is not a duration; write for example \"30s\", \"1 minute\" or \"5m\""
        );
        assert_eq!(
            parse_duration("1e9d").unwrap_err().to_string(),
            "\"1e9d\": unknown unit \"e9d\"; use ms, s, m, h or d (or their names)"
        );
        assert_eq!(
            parse_duration("99999999999d").unwrap_err(),
            DurationError::OutOfRange {
                text: "99999999999d".into()
            }
        );
    }
}
