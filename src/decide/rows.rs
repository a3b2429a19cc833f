//! Arrow forms of decisions: scored rows in, alert and recommendation rows out.
//!
//! In: a score stage's batches (key, label and time columns, `anomaly_score`, `c_<detector>`
//! contributions, an optional impact column).
//! Out: alert rows ([`alert_schema`]) and recommendation rows ([`recommendation_schema`]),
//! whose JSON encoding by the Kafka sink is exactly `schemas/alert.json` and
//! `schemas/recommendation.json` (timestamps as RFC 3339, nulls left out).

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, ListArray, RecordBatch, StringArray,
    StructArray, TimestampMicrosecondArray,
};
use arrow::buffer::OffsetBuffer;

use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;

use super::alert::{AlertMessage, Observation};
use super::recommend::{Line, ParetoPoint, Recommendation};
use crate::columns::{f64s, micros, utf8};

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn ts_array(v: impl IntoIterator<Item = i64>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from_iter_values(v).with_timezone("UTC"))
}

fn strings<'a>(v: impl IntoIterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(v))
}

fn floats(v: impl IntoIterator<Item = f64>) -> ArrayRef {
    Arc::new(Float64Array::from_iter_values(v))
}

/// The rows an alert stage writes: the detectors' contributions and the labels are structs
/// with one field each.
pub fn alert_schema(detectors: &[String], labels: &[String]) -> SchemaRef {
    let contributions: Fields = detectors
        .iter()
        .map(|d| Field::new(d, DataType::Float64, false))
        .collect();
    let labels: Fields = labels
        .iter()
        .map(|l| Field::new(l, DataType::Utf8, true))
        .collect();
    Arc::new(Schema::new(vec![
        Field::new("alert_id", DataType::Utf8, false),
        Field::new("revision", DataType::Int64, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("ts", ts_type(), false),
        Field::new("severity", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("resource", DataType::Utf8, false),
        Field::new("dedup_key", DataType::Utf8, false),
        Field::new("score", DataType::Float64, false),
        Field::new("peak_score", DataType::Float64, false),
        Field::new("contributions", DataType::Struct(contributions), false),
        Field::new("window_start", ts_type(), false),
        Field::new("window_end", ts_type(), false),
        Field::new("started_at", ts_type(), false),
        Field::new("impact_usd", DataType::Float64, true),
        Field::new("correlation_id", DataType::Utf8, false),
        Field::new("cause", DataType::Utf8, false),
        Field::new("labels", DataType::Struct(labels), false),
        Field::new("message", DataType::Utf8, false),
    ]))
}

/// Alert messages as rows of `schema` (from [`alert_schema`]).
pub fn alert_rows(schema: &SchemaRef, m: &[AlertMessage]) -> Result<RecordBatch, ArrowError> {
    let struct_of = |name: &str, value: &dyn Fn(&AlertMessage, &str) -> ArrayValue| {
        let DataType::Struct(fields) = schema.field_with_name(name)?.data_type().clone() else {
            return Err(ArrowError::SchemaError(format!("{name} is not a struct")));
        };
        let columns: Vec<ArrayRef> = fields
            .iter()
            .map(|f| match f.data_type() {
                DataType::Float64 => Arc::new(Float64Array::from_iter_values(
                    m.iter().map(|a| value(a, f.name()).number()),
                )) as ArrayRef,
                _ => Arc::new(StringArray::from_iter(
                    m.iter().map(|a| value(a, f.name()).text()),
                )) as ArrayRef,
            })
            .collect();
        Ok(Arc::new(StructArray::try_new_with_length(
            fields,
            columns,
            None,
            m.len(),
        )?) as ArrayRef)
    };
    let contributions = struct_of("contributions", &|a, name| {
        ArrayValue::Number(
            a.contributions
                .iter()
                .find(|(n, _)| n == name)
                .map_or(0.0, |(_, v)| *v),
        )
    })?;
    let labels = struct_of("labels", &|a, name| {
        ArrayValue::Text(
            a.labels
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone()),
        )
    })?;
    RecordBatch::try_new(
        Arc::clone(schema),
        vec![
            strings(m.iter().map(|a| a.alert_id.as_str())),
            Arc::new(Int64Array::from_iter_values(m.iter().map(|a| a.revision))),
            strings(m.iter().map(|a| a.status.as_str())),
            ts_array(m.iter().map(|a| a.ts)),
            strings(m.iter().map(|a| a.severity.as_str())),
            strings(m.iter().map(|a| a.kind.as_str())),
            strings(m.iter().map(|a| a.resource.as_str())),
            strings(m.iter().map(|a| a.dedup_key.as_str())),
            floats(m.iter().map(|a| a.score)),
            floats(m.iter().map(|a| a.peak_score)),
            contributions,
            ts_array(m.iter().map(|a| a.window_start)),
            ts_array(m.iter().map(|a| a.window_end)),
            ts_array(m.iter().map(|a| a.started_at)),
            Arc::new(Float64Array::from_iter(m.iter().map(|a| a.impact_usd))),
            strings(m.iter().map(|a| a.correlation_id.as_str())),
            strings(m.iter().map(|a| a.cause.as_str())),
            labels,
            strings(m.iter().map(|a| a.message.as_str())),
        ],
    )
}

enum ArrayValue {
    Number(f64),
    Text(Option<String>),
}

impl ArrayValue {
    fn number(&self) -> f64 {
        match self {
            ArrayValue::Number(v) => *v,
            ArrayValue::Text(_) => 0.0,
        }
    }
    fn text(&self) -> Option<String> {
        match self {
            ArrayValue::Text(v) => v.clone(),
            ArrayValue::Number(v) => Some(v.to_string()),
        }
    }
}

/// Where an alert stage finds things in its input rows.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertInput {
    pub key: Vec<String>,
    pub resource: String,
    pub score: String,
    /// (detector name, column) of each contribution.
    pub contributions: Vec<(String, String)>,
    pub impact: Option<String>,
    /// Label columns (the key's first, then the configured ones).
    pub labels: Vec<String>,
}

/// The observations in a scored batch, in time order (then key). Rows without a score are
/// skipped.
pub fn observations(
    input: &AlertInput,
    batch: &RecordBatch,
) -> Result<Vec<Observation>, ArrowError> {
    let keys = input
        .key
        .iter()
        .map(|k| utf8(batch, k))
        .collect::<Result<Vec<_>, _>>()?;
    let labels = input
        .labels
        .iter()
        .map(|k| utf8(batch, k))
        .collect::<Result<Vec<_>, _>>()?;
    let resource = utf8(batch, &input.resource)?;
    let score = f64s(batch, &input.score)?;
    let contributions = input
        .contributions
        .iter()
        .map(|(_, c)| f64s(batch, c))
        .collect::<Result<Vec<_>, _>>()?;
    let impact = input
        .impact
        .as_deref()
        .map(|c| f64s(batch, c))
        .transpose()?;
    let start = micros(batch, "window_start")?;
    let end = micros(batch, "window_end")?;
    let mut out = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        if score.is_null(i) || end.is_null(i) || !score.value(i).is_finite() {
            continue;
        }
        let text = |a: &StringArray| (!a.is_null(i)).then(|| a.value(i).to_string());
        out.push(Observation {
            key: keys
                .iter()
                .map(|k| text(k).unwrap_or_default())
                .collect::<Vec<_>>()
                .join("|"),
            resource: text(&resource).unwrap_or_default(),
            window_start: if start.is_null(i) {
                end.value(i)
            } else {
                start.value(i)
            },
            window_end: end.value(i),
            score: score.value(i),
            contributions: input
                .contributions
                .iter()
                .zip(&contributions)
                .map(|((name, _), a)| (name.clone(), if a.is_null(i) { 0.0 } else { a.value(i) }))
                .collect(),
            impact: impact
                .as_ref()
                .and_then(|a| (!a.is_null(i)).then(|| a.value(i)))
                .filter(|v| v.is_finite()),
            labels: input
                .labels
                .iter()
                .zip(&labels)
                .filter_map(|(n, a)| text(a).map(|v| (n.clone(), v)))
                .collect(),
        });
    }
    out.sort_by(|a, b| {
        a.window_end
            .cmp(&b.window_end)
            .then_with(|| a.key.cmp(&b.key))
    });
    Ok(out)
}

fn line_fields() -> Fields {
    Fields::from(vec![
        Field::new("instance_type", DataType::Utf8, false),
        Field::new("purchase", DataType::Utf8, false),
        Field::new("count", DataType::Int64, false),
    ])
}

fn pareto_fields() -> Fields {
    Fields::from(vec![
        Field::new("cost_usd_hour", DataType::Float64, false),
        Field::new("risk", DataType::Float64, false),
        Field::new("performance", DataType::Float64, false),
        Field::new("mix", DataType::Utf8, false),
        Field::new("chosen", DataType::Boolean, false),
    ])
}

fn list_of(fields: Fields) -> DataType {
    DataType::List(Arc::new(Field::new(
        "item",
        DataType::Struct(fields),
        false,
    )))
}

/// The rows a recommend stage writes.
pub fn recommendation_schema() -> SchemaRef {
    let savings = Fields::from(vec![
        Field::new("expected", DataType::Float64, false),
        Field::new("low", DataType::Float64, false),
        Field::new("high", DataType::Float64, false),
        Field::new("period", DataType::Utf8, false),
    ]);
    Arc::new(Schema::new(vec![
        Field::new("rec_id", DataType::Utf8, false),
        Field::new("revision", DataType::Int64, false),
        Field::new("ts", ts_type(), false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("subject", DataType::Utf8, false),
        Field::new("current", list_of(line_fields()), false),
        Field::new("recommended", list_of(line_fields()), false),
        Field::new("expected_savings_usd", DataType::Struct(savings), false),
        Field::new("risk", DataType::Utf8, false),
        Field::new("risk_score", DataType::Float64, false),
        Field::new("confidence", DataType::Float64, false),
        Field::new("rationale", DataType::Utf8, false),
        Field::new("pareto_front", list_of(pareto_fields()), true),
    ]))
}

/// A list column: one list per row, of structs built from the flattened items.
fn list_column<T>(
    fields: Fields,
    rows: &[&[T]],
    columns: impl Fn(&[&T]) -> Vec<ArrayRef>,
    nulls_when_empty: bool,
) -> Result<ArrayRef, ArrowError> {
    let items: Vec<&T> = rows.iter().flat_map(|r| r.iter()).collect();
    let values =
        StructArray::try_new_with_length(fields.clone(), columns(&items), None, items.len())?;
    let offsets = OffsetBuffer::from_lengths(rows.iter().map(|r| r.len()));
    let nulls = nulls_when_empty
        .then(|| arrow::buffer::NullBuffer::from_iter(rows.iter().map(|r| !r.is_empty())));
    Ok(Arc::new(ListArray::try_new(
        Arc::new(Field::new("item", DataType::Struct(fields), false)),
        offsets,
        Arc::new(values),
        nulls,
    )?))
}

fn lines_column(rows: &[&[Line]]) -> Result<ArrayRef, ArrowError> {
    list_column(
        line_fields(),
        rows,
        |items| {
            vec![
                strings(items.iter().map(|l| l.instance_type.as_str())),
                strings(items.iter().map(|l| l.purchase.as_str())),
                Arc::new(Int64Array::from_iter_values(
                    items.iter().map(|l| i64::from(l.count)),
                )),
            ]
        },
        false,
    )
}

/// Recommendations as rows of [`recommendation_schema`].
pub fn recommendation_rows(r: &[Recommendation]) -> Result<RecordBatch, ArrowError> {
    let schema = recommendation_schema();
    let DataType::Struct(savings_fields) = schema
        .field_with_name("expected_savings_usd")?
        .data_type()
        .clone()
    else {
        return Err(ArrowError::SchemaError("expected_savings_usd".into()));
    };
    let savings = StructArray::try_new(
        savings_fields,
        vec![
            floats(r.iter().map(|x| x.savings)),
            floats(r.iter().map(|x| x.savings_low)),
            floats(r.iter().map(|x| x.savings_high)),
            strings(r.iter().map(|_| "month")),
        ],
        None,
    )?;
    let current: Vec<&[Line]> = r.iter().map(|x| x.current.as_slice()).collect();
    let recommended: Vec<&[Line]> = r.iter().map(|x| x.recommended.as_slice()).collect();
    let pareto: Vec<&[ParetoPoint]> = r.iter().map(|x| x.pareto.as_slice()).collect();
    let pareto = list_column(
        pareto_fields(),
        &pareto,
        |items| {
            vec![
                floats(items.iter().map(|p| p.cost_usd_hour)),
                floats(items.iter().map(|p| p.risk)),
                floats(items.iter().map(|p| p.performance)),
                strings(items.iter().map(|p| p.mix.as_str())),
                Arc::new(BooleanArray::from_iter(
                    items.iter().map(|p| Some(p.chosen)),
                )),
            ]
        },
        true,
    )?;
    RecordBatch::try_new(
        schema,
        vec![
            strings(r.iter().map(|x| x.rec_id.as_str())),
            Arc::new(Int64Array::from_iter_values(r.iter().map(|x| x.revision))),
            ts_array(r.iter().map(|x| x.ts)),
            strings(r.iter().map(|x| x.kind.as_str())),
            strings(r.iter().map(|x| x.subject.as_str())),
            lines_column(&current)?,
            lines_column(&recommended)?,
            Arc::new(savings),
            strings(r.iter().map(|x| x.risk())),
            floats(r.iter().map(|x| x.risk_score)),
            floats(r.iter().map(|x| x.confidence)),
            strings(r.iter().map(|x| x.rationale.as_str())),
            pareto,
        ],
    )
}
