//! Decodes JSON events straight into Arrow column builders, checking each against its schema.
//!
//! In: the bytes of one event at a time. Out: either the event appended to the pending batch,
//! or a [`DecodeError`] that says what is wrong with it — the event is then not appended at
//! all, so a batch only ever holds valid rows. [`BatchDecoder::flush`] hands the pending rows
//! over as one `RecordBatch`.
//!
//! An event is parsed once, by a schema-driven serde visitor, into per-field slots that borrow
//! from the input; the slots are checked, and only then appended. No per-event `Value` tree is
//! built and the slot buffer is reused.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, MapBuilder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::schema::{EventSchema, FieldKind, FieldRule};

/// Why an event was rejected. The text is what goes to the dead-letter topic.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed event: {0}")]
    Json(String),
    #[error("field `{field}`: {reason}")]
    Field { field: String, reason: String },
    #[error("unknown field `{0}` (the schema does not allow extra fields)")]
    UnknownField(String),
}

/// Limits on plausible event times, in µs since the Unix epoch.
#[derive(Debug, Clone, Copy)]
pub struct TimeBounds {
    /// Earliest accepted instant.
    pub earliest_us: i64,
    /// Latest accepted instant.
    pub latest_us: i64,
}

impl TimeBounds {
    /// From 2006-01-01 (before any cloud telemetry existed) to `now` plus `max_future`.
    pub fn plausible(now_us: i64, max_future_us: i64) -> Self {
        TimeBounds {
            earliest_us: 1_136_073_600_000_000,
            latest_us: now_us.saturating_add(max_future_us),
        }
    }
}

/// A parsed but not yet checked field value, borrowing from the event bytes where it can.
#[derive(Debug)]
enum Slot<'de> {
    Missing,
    Null,
    Str(Cow<'de, str>),
    Float(f64),
    Int(i64),
    Bool(bool),
    Map(Vec<(Cow<'de, str>, Cow<'de, str>)>),
    /// A JSON value of the wrong shape for its field; the name of what was found.
    Other(&'static str),
}

/// A checked value, ready to append.
enum Cell<'a> {
    Null,
    Str(&'a str),
    Ts(i64),
    Float(f64),
    Int(i64),
    Bool(bool),
    Map(&'a [(Cow<'a, str>, Cow<'a, str>)]),
}

enum Column {
    Str(StringBuilder),
    Ts(TimestampMicrosecondBuilder),
    Float(Float64Builder),
    Int(Int64Builder),
    Bool(BooleanBuilder),
    Map(Box<MapBuilder<StringBuilder, StringBuilder>>),
}

impl Column {
    fn new(kind: FieldKind, capacity: usize) -> Self {
        match kind {
            FieldKind::String => Column::Str(StringBuilder::with_capacity(capacity, capacity * 16)),
            FieldKind::Timestamp => Column::Ts(
                TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone("UTC"),
            ),
            FieldKind::Number => Column::Float(Float64Builder::with_capacity(capacity)),
            FieldKind::Integer => Column::Int(Int64Builder::with_capacity(capacity)),
            FieldKind::Boolean => Column::Bool(BooleanBuilder::with_capacity(capacity)),
            FieldKind::StringMap => Column::Map(Box::new(MapBuilder::new(
                Some(super::schema::map_field_names()),
                StringBuilder::new(),
                StringBuilder::new(),
            ))),
        }
    }

    fn append(&mut self, cell: &Cell<'_>) {
        match (self, cell) {
            (Column::Str(b), Cell::Str(s)) => b.append_value(s),
            (Column::Ts(b), Cell::Ts(v)) => b.append_value(*v),
            (Column::Float(b), Cell::Float(v)) => b.append_value(*v),
            (Column::Int(b), Cell::Int(v)) => b.append_value(*v),
            (Column::Bool(b), Cell::Bool(v)) => b.append_value(*v),
            (Column::Map(b), Cell::Map(entries)) => {
                for (k, v) in entries.iter() {
                    b.keys().append_value(k);
                    b.values().append_value(v);
                }
                // Cannot fail: keys and values were appended in pairs.
                let _ = b.append(true);
            }
            (Column::Map(b), _) => {
                let _ = b.append(false);
            }
            (Column::Str(b), _) => b.append_null(),
            (Column::Ts(b), _) => b.append_null(),
            (Column::Float(b), _) => b.append_null(),
            (Column::Int(b), _) => b.append_null(),
            (Column::Bool(b), _) => b.append_null(),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Column::Str(b) => Arc::new(b.finish()),
            Column::Ts(b) => Arc::new(b.finish()),
            Column::Float(b) => Arc::new(b.finish()),
            Column::Int(b) => Arc::new(b.finish()),
            Column::Bool(b) => Arc::new(b.finish()),
            Column::Map(b) => Arc::new(b.finish()),
        }
    }
}

/// Accumulates valid events of one schema into Arrow batches.
///
/// ```
/// use std::sync::Arc;
/// use stratus::validate::{BatchDecoder, EventSchema, TimeBounds};
///
/// let schema = EventSchema::from_json(
///     "cpu.json",
///     r#"{"title": "cpu", "type": "object", "required": ["ts", "cpu"],
///         "properties": {"ts": {"type": "string", "format": "date-time"},
///                        "cpu": {"type": "number", "minimum": 0, "maximum": 100}}}"#,
/// )?;
/// let now_us = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z
/// let mut decoder = BatchDecoder::new(Arc::new(schema), TimeBounds::plausible(now_us, 0), 1024);
/// decoder.decode(br#"{"ts": "2025-12-31T23:59:00Z", "cpu": 41.5}"#)?;
/// let err = decoder.decode(br#"{"ts": "2025-12-31T23:59:00Z", "cpu": 140}"#).unwrap_err();
/// assert_eq!(err.to_string(), "field `cpu`: 140 is outside [0, 100]");
/// assert_eq!(decoder.flush()?.num_rows(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct BatchDecoder {
    schema: Arc<EventSchema>,
    bounds: TimeBounds,
    columns: Vec<Column>,
    rows: usize,
    event_time: Option<usize>,
    last_event_time: Option<i64>,
}

impl BatchDecoder {
    pub fn new(schema: Arc<EventSchema>, bounds: TimeBounds, capacity: usize) -> Self {
        let columns = schema
            .fields()
            .iter()
            .map(|f| Column::new(f.kind, capacity))
            .collect();
        BatchDecoder {
            schema,
            bounds,
            columns,
            rows: 0,
            event_time: None,
            last_event_time: None,
        }
    }

    /// Names the field whose value [`BatchDecoder::last_event_time`] reports.
    pub fn with_event_time(mut self, field: &str) -> Self {
        self.event_time = self.schema.index_of(field);
        self
    }

    /// The event time (µs) of the last event appended, if an event-time field is set.
    pub fn last_event_time(&self) -> Option<i64> {
        self.last_event_time
    }

    /// Moves the accepted time range (for a clock that advances).
    pub fn set_time_bounds(&mut self, bounds: TimeBounds) {
        self.bounds = bounds;
    }

    /// Rows appended since the last flush.
    pub fn pending_rows(&self) -> usize {
        self.rows
    }

    /// Checks one event and appends it; on error nothing is appended.
    pub fn decode(&mut self, bytes: &[u8]) -> Result<(), DecodeError> {
        let fields = self.schema.fields();
        let mut slots: Vec<Slot<'_>> = (0..fields.len()).map(|_| Slot::Missing).collect();
        // Checked as UTF-8 once, whole: read from bytes, serde_json checks every string again.
        let text = std::str::from_utf8(bytes)
            .map_err(|e| DecodeError::Json(format!("the event is not UTF-8 text: {e}")))?;
        let mut de = serde_json::Deserializer::from_str(text);
        EventSeed {
            schema: &self.schema,
            slots: &mut slots,
        }
        .deserialize(&mut de)
        .map_err(|e| DecodeError::Json(e.to_string()))?;
        de.end().map_err(|e| DecodeError::Json(e.to_string()))?;

        let mut cells = Vec::with_capacity(fields.len());
        for (rule, slot) in fields.iter().zip(slots.iter()) {
            cells.push(check(rule, slot, &self.bounds)?);
        }
        for (column, cell) in self.columns.iter_mut().zip(cells.iter()) {
            column.append(cell);
        }
        if let Some(i) = self.event_time {
            self.last_event_time = match cells[i] {
                Cell::Ts(t) => Some(t),
                _ => None,
            };
        }
        self.rows += 1;
        Ok(())
    }

    /// Hands over the pending rows as one batch (possibly empty) and starts a new one.
    pub fn flush(&mut self) -> Result<RecordBatch, ArrowError> {
        let arrays: Vec<ArrayRef> = self.columns.iter_mut().map(Column::finish).collect();
        self.rows = 0;
        RecordBatch::try_new(self.schema.arrow_schema(), arrays)
    }
}

fn field_error(rule: &FieldRule, reason: impl Into<String>) -> DecodeError {
    DecodeError::Field {
        field: rule.name.clone(),
        reason: reason.into(),
    }
}

fn found(slot: &Slot<'_>) -> &'static str {
    match slot {
        Slot::Missing => "nothing",
        Slot::Null => "null",
        Slot::Str(_) => "a string",
        Slot::Float(_) | Slot::Int(_) => "a number",
        Slot::Bool(_) => "a boolean",
        Slot::Map(_) => "an object",
        Slot::Other(what) => what,
    }
}

fn check<'a>(
    rule: &FieldRule,
    slot: &'a Slot<'a>,
    bounds: &TimeBounds,
) -> Result<Cell<'a>, DecodeError> {
    let wrong = || {
        field_error(
            rule,
            format!("expected {}, got {}", rule.kind.json_name(), found(slot)),
        )
    };
    match (rule.kind, slot) {
        (_, Slot::Missing) if rule.required => Err(field_error(rule, "required field is missing")),
        (_, Slot::Null) if !rule.nullable && rule.required => {
            Err(field_error(rule, "must not be null"))
        }
        (_, Slot::Missing | Slot::Null) => Ok(Cell::Null),
        (FieldKind::String, Slot::Str(s)) => {
            if let Some(allowed) = &rule.allowed
                && !allowed.iter().any(|a| a == s)
            {
                return Err(field_error(
                    rule,
                    format!("{s:?} is not one of {allowed:?}"),
                ));
            }
            if rule.min_length.is_some() || rule.max_length.is_some() {
                let n = s.chars().count();
                if rule.min_length.is_some_and(|m| n < m) || rule.max_length.is_some_and(|m| n > m)
                {
                    return Err(field_error(
                        rule,
                        format!(
                            "length {n} is outside [{}, {}]",
                            rule.min_length.unwrap_or(0),
                            rule.max_length.map_or("∞".to_string(), |m| m.to_string())
                        ),
                    ));
                }
            }
            Ok(Cell::Str(s))
        }
        (FieldKind::Timestamp, Slot::Str(s)) => {
            let t = chrono::DateTime::parse_from_rfc3339(s).map_err(|e| {
                field_error(rule, format!("{s:?} is not an RFC 3339 timestamp ({e})"))
            })?;
            plausible(rule, t.timestamp_micros(), bounds)
        }
        (FieldKind::Timestamp, Slot::Int(ms)) => {
            let us = ms
                .checked_mul(1000)
                .ok_or_else(|| field_error(rule, format!("{ms} ms is out of range")))?;
            plausible(rule, us, bounds)
        }
        (FieldKind::Number, Slot::Float(v)) => in_range(rule, *v).map(|()| Cell::Float(*v)),
        (FieldKind::Number, Slot::Int(v)) => {
            let v = *v as f64;
            in_range(rule, v).map(|()| Cell::Float(v))
        }
        (FieldKind::Integer, Slot::Int(v)) => in_range(rule, *v as f64).map(|()| Cell::Int(*v)),
        (FieldKind::Boolean, Slot::Bool(b)) => Ok(Cell::Bool(*b)),
        (FieldKind::StringMap, Slot::Map(entries)) => Ok(Cell::Map(entries)),
        _ => Err(wrong()),
    }
}

fn plausible(rule: &FieldRule, us: i64, bounds: &TimeBounds) -> Result<Cell<'static>, DecodeError> {
    if us < bounds.earliest_us || us > bounds.latest_us {
        let shown = chrono::DateTime::from_timestamp_micros(us)
            .map_or_else(|| us.to_string(), |t| t.to_rfc3339());
        return Err(field_error(
            rule,
            format!("event time {shown} is implausible (before 2006 or too far in the future)"),
        ));
    }
    Ok(Cell::Ts(us))
}

fn in_range(rule: &FieldRule, v: f64) -> Result<(), DecodeError> {
    if !v.is_finite() {
        return Err(field_error(rule, format!("{v} is not a finite number")));
    }
    if rule.minimum.is_some_and(|m| v < m) || rule.maximum.is_some_and(|m| v > m) {
        return Err(field_error(
            rule,
            format!(
                "{v} is outside [{}, {}]",
                rule.minimum.map_or("-∞".into(), |m| m.to_string()),
                rule.maximum.map_or("∞".into(), |m| m.to_string())
            ),
        ));
    }
    Ok(())
}

/// Visits the top-level object, routing each known key's value into its slot.
struct EventSeed<'s, 'de> {
    schema: &'s EventSchema,
    slots: &'s mut Vec<Slot<'de>>,
}

impl<'de> DeserializeSeed<'de> for EventSeed<'_, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for EventSeed<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an event object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        use serde::de::Error;
        while let Some(key) = map.next_key_seed(KeySeed)? {
            match self.schema.index_of(&key) {
                Some(i) => {
                    if !matches!(self.slots[i], Slot::Missing) {
                        return Err(A::Error::custom(format!("field `{key}` appears twice")));
                    }
                    self.slots[i] = map.next_value_seed(SlotSeed(self.schema.fields()[i].kind))?;
                }
                None if self.schema.allow_unknown_fields() => {
                    map.next_value::<IgnoredAny>()?;
                }
                None => {
                    return Err(A::Error::custom(
                        DecodeError::UnknownField(key.into_owned()).to_string(),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// An object's key, borrowed from the input unless it holds an escape (serde's own
/// `Cow<str>` always copies: a dozen allocations per event).
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v))
    }
}

/// Parses one field value into a [`Slot`]; the kind only decides whether objects are read.
struct SlotSeed(FieldKind);

impl<'de> DeserializeSeed<'de> for SlotSeed {
    type Value = Slot<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Slot<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for SlotSeed {
    type Value = Slot<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Slot<'de>, E> {
        Ok(Slot::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Slot<'de>, E> {
        Ok(Slot::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Slot<'de>, E> {
        Ok(Slot::Str(Cow::Owned(v)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Slot<'de>, E> {
        Ok(Slot::Float(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Slot<'de>, E> {
        Ok(Slot::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Slot<'de>, E> {
        Ok(i64::try_from(v).map_or(Slot::Float(v as f64), Slot::Int))
    }
    fn visit_bool<E>(self, v: bool) -> Result<Slot<'de>, E> {
        Ok(Slot::Bool(v))
    }
    fn visit_unit<E>(self) -> Result<Slot<'de>, E> {
        Ok(Slot::Null)
    }
    fn visit_none<E>(self) -> Result<Slot<'de>, E> {
        Ok(Slot::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Slot<'de>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Slot::Other("an array"))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Slot<'de>, A::Error> {
        if self.0 != FieldKind::StringMap {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            return Ok(Slot::Other("an object"));
        }
        let mut entries = Vec::new();
        while let Some(k) = map.next_key_seed(KeySeed)? {
            match map.next_value_seed(SlotSeed(FieldKind::String))? {
                Slot::Str(v) => entries.push((k, v)),
                other => {
                    return Err(serde::de::Error::custom(format!(
                        "map entry `{k}` must be a string, got {}",
                        found(&other)
                    )));
                }
            }
        }
        Ok(Slot::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Float64Type, TimestampMicrosecondType};

    fn schema() -> Arc<EventSchema> {
        Arc::new(
            EventSchema::from_json(
                "t.json",
                r#"{"title":"t","type":"object",
                "properties":{
                  "ts":{"type":"string","format":"date-time"},
                  "unit":{"type":"string","enum":["Percent","Count"]},
                  "value":{"type":"number","minimum":0,"maximum":100},
                  "n":{"type":["integer","null"]},
                  "dims":{"type":"object","additionalProperties":{"type":"string"}}
                },
                "required":["ts","unit","value"]}"#,
            )
            .unwrap(),
        )
    }

    fn decoder() -> BatchDecoder {
        // "now" = 2026-01-01T00:00:00Z, one day of future allowed.
        let now = 1_767_225_600_000_000;
        BatchDecoder::new(schema(), TimeBounds::plausible(now, 86_400_000_000), 8)
    }

    #[test]
    fn valid_events_become_exact_columns() {
        let mut d = decoder();
        d.decode(br#"{"ts":"2025-06-01T12:00:00.5Z","unit":"Percent","value":42.5,"n":3,"dims":{"a":"x"},"extra":[1]}"#)
            .unwrap();
        d.decode(br#"{"value":7,"unit":"Count","ts":1748779200000,"n":null}"#)
            .unwrap();
        let b = d.flush().unwrap();
        assert_eq!(b.num_rows(), 2);
        let ts = b.column(0).as_primitive::<TimestampMicrosecondType>();
        assert_eq!(ts.value(0), 1_748_779_200_500_000);
        assert_eq!(ts.value(1), 1_748_779_200_000_000);
        assert_eq!(b.column(1).as_string::<i32>().value(1), "Count");
        let v = b.column(2).as_primitive::<Float64Type>();
        assert_eq!((v.value(0), v.value(1)), (42.5, 7.0));
        assert!(b.column(3).is_null(1));
        let dims = b.column(4).as_map();
        assert_eq!(dims.value(0).column(0).as_string::<i32>().value(0), "a");
        assert!(dims.is_null(1));
        assert_eq!(d.flush().unwrap().num_rows(), 0);
    }

    #[test]
    fn keys_with_escapes_name_the_same_fields() {
        // Keys are borrowed from the input unless escaped; both must find their field.
        let mut d = decoder();
        d.decode(
            br#"{"\u0074s":1748779200000,"un\u0069t":"Count","value":7,"dims":{"\u0061":"x"}}"#,
        )
        .unwrap();
        let b = d.flush().unwrap();
        assert_eq!(b.num_rows(), 1);
        assert_eq!(
            b.column(0)
                .as_primitive::<TimestampMicrosecondType>()
                .value(0),
            1_748_779_200_000_000
        );
        assert_eq!(b.column(1).as_string::<i32>().value(0), "Count");
        let dims = b.column(4).as_map();
        assert_eq!(dims.value(0).column(0).as_string::<i32>().value(0), "a");
        let err = d.decode(br#"{"\u0074s":1,"ts":2}"#).unwrap_err();
        assert!(
            err.to_string().contains("field `ts` appears twice"),
            "{err}"
        );
    }

    #[test]
    fn numbers_round_trip_to_the_same_double() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut d = decoder();
        let mut want = Vec::new();
        for _ in 0..5_000 {
            // Shortest round-trip text of a random double (prices, utilisation, costs).
            let v: f64 = rng.random_range(0.0..1.0) * 10f64.powi(rng.random_range(-6..2));
            let event = format!(r#"{{"ts":1748779200000,"unit":"Count","value":{v}}}"#);
            d.decode(event.as_bytes()).unwrap();
            want.push(v.to_bits());
        }
        let b = d.flush().unwrap();
        let got: Vec<u64> = b
            .column(2)
            .as_primitive::<arrow::datatypes::Float64Type>()
            .values()
            .iter()
            .map(|v| v.to_bits())
            .collect();
        let wrong = got.iter().zip(&want).filter(|(g, w)| g != w).count();
        assert_eq!(
            wrong,
            0,
            "{wrong} of {} doubles changed on decoding",
            want.len()
        );
    }

    #[test]
    fn each_invalid_event_is_rejected_with_its_reason_and_appends_nothing() {
        let cases: &[(&[u8], &str)] = &[
            (b"not json", "malformed event"),
            (b"[1,2]", "malformed event"),
            (
                br#"{"ts":"2025-06-01T12:00:00Z","unit":"Percent"}"#,
                "field `value`: required field is missing",
            ),
            (
                br#"{"ts":"2025-06-01T12:00:00Z","unit":"Watts","value":1}"#,
                "field `unit`: \"Watts\" is not one of",
            ),
            (
                br#"{"ts":"2025-06-01T12:00:00Z","unit":"Count","value":101}"#,
                "field `value`: 101 is outside [0, 100]",
            ),
            (
                br#"{"ts":"2025-06-01T12:00:00Z","unit":"Count","value":"5"}"#,
                "field `value`: expected a number, got a string",
            ),
            (
                br#"{"ts":"yesterday","unit":"Count","value":5}"#,
                "field `ts`: \"yesterday\" is not an RFC 3339",
            ),
            (
                br#"{"ts":"1999-06-01T12:00:00Z","unit":"Count","value":5}"#,
                "field `ts`: event time 1999-06-01T12:00:00+00:00 is implausible",
            ),
            (
                br#"{"ts":"2030-06-01T12:00:00Z","unit":"Count","value":5}"#,
                "is implausible",
            ),
            (
                br#"{"ts":"2025-06-01T12:00:00Z","unit":"Count","value":5,"value":6}"#,
                "field `value` appears twice",
            ),
            (
                br#"{"ts":"2025-06-01T12:00:00Z","unit":"Count","value":5,"dims":{"a":1}}"#,
                "map entry `a` must be a string",
            ),
            (
                br#"{"ts":"2025-06-01T12:00:00Z","unit":null,"value":5}"#,
                "field `unit`: must not be null",
            ),
            (
                br#"{"ts":"2025-06-01T12:00:00Z","unit":"Count","value":5} {}"#,
                "trailing characters",
            ),
            (b"", "malformed event"),
            (
                b"{\"ts\":\"2025-06-01T12:00:00Z\",\"unit\":\"Co\xffnt\",\"value\":5}",
                "malformed event: the event is not UTF-8 text: invalid utf-8 sequence of 1 bytes \
                 from index 39",
            ),
        ];
        let mut d = decoder();
        for (input, want) in cases {
            let err = d.decode(input).unwrap_err().to_string();
            assert!(
                err.contains(want),
                "{:?}: got {err:?}, want {want:?}",
                String::from_utf8_lossy(input)
            );
            assert_eq!(d.pending_rows(), 0);
        }
        assert_eq!(d.flush().unwrap().num_rows(), 0);
    }

    #[test]
    fn unknown_fields_rejected_when_schema_is_closed() {
        let s = EventSchema::from_json(
            "c.json",
            r#"{"title":"c","type":"object","additionalProperties":false,"properties":{"a":{"type":"boolean"}}}"#,
        )
        .unwrap();
        let mut d = BatchDecoder::new(Arc::new(s), TimeBounds::plausible(0, 0), 1);
        assert_eq!(
            d.decode(br#"{"a":true,"b":1}"#).unwrap_err().to_string(),
            "malformed event: unknown field `b` (the schema does not allow extra fields) at line 1 column 13"
        );
        d.decode(br#"{"a":false}"#).unwrap();
        assert_eq!(d.flush().unwrap().num_rows(), 1);
    }
}

/// No input crashes the decoder: seeded mutations of valid events (flipped, dropped, inserted
/// and duplicated bytes, truncations, splices) either decode or are rejected, and a rejected
/// event never leaves a partial row behind.
#[cfg(test)]
mod mutation_tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    #[test]
    fn mutated_events_never_panic_or_leave_partial_rows() {
        let schema = Arc::new(
            EventSchema::from_file(std::path::Path::new(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/schemas/cloud.metrics.json"
            )))
            .unwrap(),
        );
        let seeds: Vec<Vec<u8>> =
            crate::demo::events::metric_events(3, 50, 7, 1_767_225_600_000, 0)
                .into_iter()
                .map(|e| e.payload)
                .collect();
        let mut d = BatchDecoder::new(
            schema,
            TimeBounds::plausible(1_767_225_600_000_000, 0),
            1024,
        );
        let mut rng = StdRng::seed_from_u64(99);
        let alphabet = b"{}[]\":,\\0123456789.eE+-tfnul \x00\xff\xc3\xa9abc";
        let (mut ok, mut rejected) = (0, 0);
        for _ in 0..100_000 {
            let mut input = seeds[rng.random_range(0..seeds.len())].clone();
            for _ in 0..rng.random_range(1..6) {
                let at = rng.random_range(0..=input.len());
                match rng.random_range(0..6) {
                    0 if at < input.len() => {
                        input[at] = alphabet[rng.random_range(0..alphabet.len())]
                    }
                    1 if at < input.len() => {
                        input.remove(at);
                    }
                    2 => input.insert(at, alphabet[rng.random_range(0..alphabet.len())]),
                    3 => input.truncate(at),
                    4 => {
                        let other = &seeds[rng.random_range(0..seeds.len())];
                        let from = rng.random_range(0..other.len());
                        input.splice(at..at, other[from..].iter().copied());
                    }
                    _ if at < input.len() => {
                        let b = input[at];
                        input.insert(at, b);
                    }
                    _ => {}
                }
            }
            let before = d.pending_rows();
            match d.decode(&input) {
                Ok(()) => {
                    ok += 1;
                    assert_eq!(d.pending_rows(), before + 1);
                }
                Err(_) => {
                    rejected += 1;
                    assert_eq!(d.pending_rows(), before, "a rejected event left a row");
                }
            }
            if d.pending_rows() >= 1024 {
                // Every column has one value per row, or building the batch fails.
                assert_eq!(d.flush().unwrap().num_rows(), 1024);
            }
        }
        assert!(
            ok > 1_000 && rejected > 50_000,
            "{ok} decoded, {rejected} rejected"
        );
        d.flush().unwrap();
    }
}
