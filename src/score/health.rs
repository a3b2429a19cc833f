//! Model health in event time: the rows an alert stage turns into `model_drift` and
//! `model_degraded` alerts, with the alert policy's severity, dedup and resolution.
//!
//! In: at each watermark, a stage's health figures per model version and subject — an input's
//! drift (`score::drift`), a horizon's forecast errors (`forecast::accuracy`) — each as a
//! `ratio`: the figure over the pipeline's threshold for it (1 or more: past it). Out: once per
//! [`EVERY`] of event time that the watermark passes, a row per model and subject
//! ([`schema`]): where it was measured (`scope`: the pipeline, or under workers its shard, since
//! each worker sees only its partitions' rows), `model`, `subject`, `check`, the span judged
//! (`window_start`, `window_end`, `ts`), `ratio` — the lowest measured over the last `sustain`
//! (from the last measurement at or before its start), so it passes 1 only once the threshold
//! has held for the whole span — and `anomaly_score`, half the
//! ratio capped at 1: 0.5 at the threshold (an alert stage's default info level), 0.7 at 1.4 ×,
//! 0.9 at 1.8 ×, also as the check's contribution (`c_drift`, `c_accuracy`). Before a subject
//! has been measured for `sustain`, its ratio is 0.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use serde::Deserialize;

use crate::check::diagnostics::Reporter;
use crate::check::{SideOutput, parsed_duration};

/// Where a score or forecast stage writes its models' health rows (`health:` in the pipeline
/// file): the relation's name, and how long a threshold must hold before it counts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    pub output: String,
    #[serde(default = "default_sustain")]
    pub sustain: String,
}

fn default_sustain() -> String {
    "30m".into()
}

/// Checks `config` (at `path`) of a stage whose health is judged by `check`: the side output
/// it names and the span, µs.
pub(crate) fn check(
    r: &mut Reporter<'_>,
    path: &[&str],
    config: &HealthConfig,
    check: &str,
) -> Option<(SideOutput, i64)> {
    let sustain = parsed_duration(r, path, &config.sustain)?;
    if sustain < EVERY {
        r.at(
            path,
            format!(
                "sustain {}: at least 5m, a health row's span",
                config.sustain
            ),
            None,
        );
        return None;
    }
    let output = SideOutput {
        name: config.output.clone(),
        output: OUTPUT,
        schema: schema(check),
        time: Some("ts".into()),
        per_worker: true,
    };
    Some((output, sustain))
}

/// The operator's name for its side output of health rows.
pub const OUTPUT: &str = "health";
/// How often, in event time, a row is written per model and subject.
pub const EVERY: i64 = 5 * 60 * 1_000_000;

/// The health rows of `check` (`drift` or `accuracy`). The score is also the check's
/// contribution (`c_<check>`), which an alert names as its cause.
pub fn schema(check: &str) -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let text = |n: &str| Field::new(n, DataType::Utf8, false);
    Arc::new(Schema::new(vec![
        text("scope"),
        text("model"),
        text("subject"),
        text("check"),
        Field::new("window_start", ts.clone(), false),
        Field::new("window_end", ts.clone(), false),
        Field::new("ts", ts, false),
        Field::new("ratio", DataType::Float64, false),
        Field::new("anomaly_score", DataType::Float64, false),
        Field::new(format!("c_{check}"), DataType::Float64, false),
    ]))
}

/// One figure of a model's health now: `ratio` is the figure over its threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    pub model: String,
    pub subject: String,
    pub ratio: f64,
}

/// A stage's health over event time.
#[derive(Debug, Clone)]
pub struct Health {
    /// `drift` or `accuracy`.
    check: &'static str,
    schema: SchemaRef,
    /// µs the threshold must hold.
    sustain: i64,
    /// The last boundary a row was written for.
    written_to: Option<i64>,
    /// Per (model, subject), the ratios of the last `sustain` at each boundary.
    recent: BTreeMap<(String, String), VecDeque<(i64, f64)>>,
}

impl Health {
    pub fn new(check: &'static str, sustain: i64) -> Self {
        Health {
            check,
            schema: schema(check),
            sustain: sustain.max(EVERY),
            written_to: None,
            recent: BTreeMap::new(),
        }
    }

    /// The rows for the newest boundary `watermark` has passed since the last call, judged by
    /// `figures` (the stage's figures now), of the stage running as `scope`; none if no
    /// boundary was passed.
    pub fn advance(
        &mut self,
        watermark: i64,
        scope: &str,
        figures: &[Figure],
    ) -> Result<Option<RecordBatch>, ArrowError> {
        let at = watermark.div_euclid(EVERY).saturating_mul(EVERY);
        if watermark == i64::MIN || self.written_to.is_some_and(|w| at <= w) {
            return Ok(None);
        }
        self.written_to = Some(at);
        let mut rows: Vec<(&Figure, f64)> = Vec::with_capacity(figures.len());
        for f in figures {
            let kept = self
                .recent
                .entry((f.model.clone(), f.subject.clone()))
                .or_default();
            kept.push_back((at, f.ratio));
            // The measurements since the span's start, and the last one at or before it (a
            // stage whose watermark moves by the hour measures more rarely than `EVERY`).
            let start = at - self.sustain;
            while kept.get(1).is_some_and(|(t, _)| *t <= start) {
                kept.pop_front();
            }
            // Measured since the span's start: the lowest ratio of it; otherwise not judged.
            let covered = kept.front().is_some_and(|(t, _)| *t <= start);
            let ratio = match covered {
                true => kept.iter().map(|(_, r)| *r).fold(f64::INFINITY, f64::min),
                false => 0.0,
            };
            rows.push((f, ratio));
        }
        // A subject no longer measured (a version swapped out) is forgotten.
        self.recent
            .retain(|(m, s), _| figures.iter().any(|f| &f.model == m && &f.subject == s));
        if rows.is_empty() {
            return Ok(None);
        }
        let n = rows.len();
        let time = |t: i64| {
            Arc::new(TimestampMicrosecondArray::from(vec![t; n]).with_timezone("UTC")) as ArrayRef
        };
        let scores: ArrayRef = Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|r| (r.1 / 2.0).min(1.0)),
        ));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec![scope; n])),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|(f, _)| f.model.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|(f, _)| f.subject.as_str()),
            )),
            Arc::new(StringArray::from(vec![self.check; n])),
            time(at - EVERY),
            time(at),
            time(at),
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.1))),
            scores.clone(),
            scores,
        ];
        RecordBatch::try_new(self.schema.clone(), columns).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::AsArray;
    use arrow::datatypes::Float64Type;

    fn figure(ratio: f64) -> Vec<Figure> {
        vec![Figure {
            model: "m@1".into(),
            subject: "x".into(),
            ratio,
        }]
    }

    /// The ratio and score of each row written at boundaries 1, 2, … as `ratios` come.
    fn judged(h: &mut Health, ratios: &[f64]) -> Vec<(f64, f64)> {
        ratios
            .iter()
            .enumerate()
            .filter_map(|(i, &r)| {
                let b = h
                    .advance((i as i64 + 1) * EVERY + 7, "p", &figure(r))
                    .unwrap()?;
                Some((
                    b.column(7).as_primitive::<Float64Type>().value(0),
                    b.column(8).as_primitive::<Float64Type>().value(0),
                ))
            })
            .collect()
    }

    #[test]
    fn a_ratio_counts_once_it_held_for_the_whole_span() {
        // 15 minutes: three boundaries.
        let mut h = Health::new("drift", 3 * EVERY);
        let rows = judged(&mut h, &[2.0, 2.0, 2.0, 2.0, 0.5, 3.0, 3.0, 3.0, 3.0]);
        let ratios: Vec<f64> = rows.iter().map(|r| r.0).collect();
        // Not judged before 15 minutes are measured; then the lowest since the span's start.
        assert_eq!(ratios, [0.0, 0.0, 0.0, 2.0, 0.5, 0.5, 0.5, 0.5, 3.0]);
        let scores: Vec<f64> = rows.iter().map(|r| r.1).collect();
        assert_eq!(scores, [0.0, 0.0, 0.0, 1.0, 0.25, 0.25, 0.25, 0.25, 1.0]);
    }

    #[test]
    fn one_row_per_boundary_passed_with_its_span_and_scope() {
        let mut h = Health::new("accuracy", EVERY);
        assert!(h.advance(i64::MIN, "p", &figure(1.0)).unwrap().is_none());
        let b = h
            .advance(2 * EVERY + 1, "p/partition-3", &figure(1.2))
            .unwrap()
            .unwrap();
        assert_eq!(b.num_rows(), 1);
        assert_eq!(b.column(0).as_string::<i32>().value(0), "p/partition-3");
        assert_eq!(b.column(3).as_string::<i32>().value(0), "accuracy");
        let end = b
            .column(5)
            .as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
        assert_eq!(end.value(0), 2 * EVERY);
        // The same boundary again: nothing; a new one with nothing measured: nothing.
        assert!(
            h.advance(2 * EVERY + 5, "p", &figure(1.2))
                .unwrap()
                .is_none()
        );
        assert!(h.advance(3 * EVERY, "p", &[]).unwrap().is_none());
    }
}
