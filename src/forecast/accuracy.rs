//! Forecast accuracy in the stream, once the actual arrives.
//!
//! In: the blend's [`Outcome`]s — each issued forecast met by the value realised at its target
//! hour. Out:
//! - Prometheus counters per pipeline, stage, model (name@version) and horizon: forecasts
//!   resolved, the sums of absolute, percentage and symmetric percentage errors, and how many
//!   fell inside the 80 % and 95 % intervals. MAE, MAPE, sMAPE and coverage over any window are
//!   ratios of their rates (the shipped rules and dashboard compute them);
//! - a row per outcome ([`rows`]: the stage's `accuracy` side output, which the shipped
//!   pipelines land in a Delta table), for accuracy by key, hour or anything else later;
//! - the Ljung–Box test of each key's recent errors at the shortest horizon ([`Residuals`]):
//!   a forecaster that leaves autocorrelated errors has missed a pattern it could have used.
//!   The gauge is the median p-value over the keys with enough errors.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;

use super::blend::Outcome;
use crate::operator::Context;
use crate::stats::median_of;

/// The operator's name for its side output of accuracy rows.
pub const OUTPUT: &str = "accuracy";

const HOUR: i64 = 3_600_000_000;

/// `horizon` (µs) as its label: `6h`.
pub fn horizon_label(horizon: i64) -> String {
    format!("{}h", horizon / HOUR)
}

/// Counts `outcomes` of `model`'s forecasts at `horizons` (µs).
pub fn report(outcomes: &[Outcome], horizons: &[i64], model: &str, ctx: &Context<'_>) {
    let m = ctx.metrics;
    for o in outcomes {
        let Some(&h) = horizons.get(o.horizon) else {
            continue;
        };
        let h = horizon_label(h);
        let labels = [ctx.pipeline, ctx.stage, model, h.as_str()];
        m.forecasts_resolved.with_label_values(&labels).inc();
        m.forecast_abs_error
            .with_label_values(&labels)
            .inc_by(o.abs_error());
        m.forecast_sym_pct_error
            .with_label_values(&labels)
            .inc_by(o.sym_pct_error());
        if let Some(e) = o.pct_error() {
            m.forecast_pct_error.with_label_values(&labels).inc_by(e);
            m.forecast_pct_resolved.with_label_values(&labels).inc();
        }
        for (level, covered) in ["80", "95"].into_iter().zip(o.covered()) {
            if covered {
                let labels = [ctx.pipeline, ctx.stage, model, h.as_str(), level];
                m.forecast_covered.with_label_values(&labels).inc();
            }
        }
    }
}

/// The accuracy rows of a forecast stage keyed by `key`: the key, the time forecast (`ts`, the
/// rows' event time), the origin, the horizon, the model, the actual, what was issued and how
/// far it missed.
pub fn schema(key: &[String]) -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let mut fields: Vec<Field> = key
        .iter()
        .map(|k| Field::new(k, DataType::Utf8, false))
        .collect();
    fields.extend([
        Field::new("ts", ts.clone(), false),
        Field::new("origin_ts", ts, false),
        Field::new("horizon_hours", DataType::Int64, false),
        Field::new("model_version", DataType::Utf8, false),
        Field::new("actual", DataType::Float64, false),
    ]);
    for q in ["p025", "p10", "p50", "p90", "p975"] {
        fields.push(Field::new(q, DataType::Float64, false));
    }
    fields.extend([
        Field::new("abs_error", DataType::Float64, false),
        Field::new("pct_error", DataType::Float64, true),
        Field::new("sym_pct_error", DataType::Float64, false),
        Field::new("covered_80", DataType::Boolean, false),
        Field::new("covered_95", DataType::Boolean, false),
    ]);
    Arc::new(Schema::new(fields))
}

/// `outcomes` of `model`'s forecasts at `horizons` (µs) as rows of `schema` (see [`schema`];
/// each key is its columns' values joined as `crate::keys` joins them).
pub fn rows(
    outcomes: &[Outcome],
    horizons: &[i64],
    model: &str,
    schema: &SchemaRef,
) -> Result<RecordBatch, ArrowError> {
    let keys = schema.fields().len() - 15;
    let outcomes: Vec<(&Outcome, i64)> = outcomes
        .iter()
        .filter_map(|o| Some((o, *horizons.get(o.horizon)?)))
        .collect();
    let mut columns: Vec<ArrayRef> = (0..keys)
        .map(|j| {
            Arc::new(StringArray::from_iter_values(outcomes.iter().map(
                |(o, _)| crate::keys::split(&o.key).nth(j).unwrap_or_default(),
            ))) as ArrayRef
        })
        .collect();
    let micros = |f: &dyn Fn(&Outcome, i64) -> i64| {
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(outcomes.iter().map(|(o, h)| f(o, *h)))
                .with_timezone("UTC"),
        ) as ArrayRef
    };
    let floats = |f: &dyn Fn(&Outcome) -> f64| {
        Arc::new(Float64Array::from_iter_values(
            outcomes.iter().map(|(o, _)| f(o)),
        )) as ArrayRef
    };
    columns.push(micros(&|o, _| o.target));
    columns.push(micros(&|o, h| o.target - h));
    columns.push(Arc::new(Int64Array::from_iter_values(
        outcomes.iter().map(|(_, h)| h / HOUR),
    )));
    columns.push(Arc::new(StringArray::from(vec![model; outcomes.len()])));
    columns.push(floats(&|o| o.actual));
    for j in 0..5 {
        columns.push(floats(&|o| o.issued[j]));
    }
    columns.push(floats(&|o| o.abs_error()));
    columns.push(Arc::new(Float64Array::from_iter(
        outcomes.iter().map(|(o, _)| o.pct_error()),
    )));
    columns.push(floats(&|o| o.sym_pct_error()));
    for level in 0..2 {
        columns.push(Arc::new(BooleanArray::from_iter(
            outcomes.iter().map(|(o, _)| Some(o.covered()[level])),
        )));
    }
    RecordBatch::try_new(schema.clone(), columns)
}

/// Lags the Ljung–Box test sums over (even: the χ² survival function is then a finite sum).
const LAGS: usize = 10;
/// A key's errors kept for the test: three days of hourly forecasts.
const RESIDUALS: usize = 72;
/// Errors a key needs before it is tested.
const MIN_RESIDUALS: usize = 48;

/// The p-value of the Ljung–Box test that `residuals` (in time order) have no autocorrelation
/// up to lag [`LAGS`]: Q = n (n + 2) Σ ρ²ₖ / (n − k) against χ² with [`LAGS`] degrees of
/// freedom. None with fewer than [`MIN_RESIDUALS`] residuals, or residuals all the same.
pub fn ljung_box_p(residuals: &[f64]) -> Option<f64> {
    let n = residuals.len();
    if n < MIN_RESIDUALS {
        return None;
    }
    let mean = residuals.iter().sum::<f64>() / n as f64;
    let d: Vec<f64> = residuals.iter().map(|r| r - mean).collect();
    let c0: f64 = d.iter().map(|x| x * x).sum();
    if c0 <= 0.0 || !c0.is_finite() {
        return None;
    }
    let q = (1..=LAGS)
        .map(|k| {
            let ck: f64 = (k..n).map(|t| d[t] * d[t - k]).sum();
            (ck / c0).powi(2) / (n - k) as f64
        })
        .sum::<f64>()
        * (n * (n + 2)) as f64;
    // P(χ²₂ₘ > q) = e^(−x) Σ_{i<m} xⁱ / i!, x = q / 2.
    let x = q / 2.0;
    let (mut term, mut sum) = (1.0, 1.0);
    for i in 1..LAGS / 2 {
        term *= x / i as f64;
        sum += term;
    }
    Some(((-x).exp() * sum).clamp(0.0, 1.0))
}

/// Each key's last [`RESIDUALS`] errors (actual − median) at the stage's shortest horizon, for
/// the Ljung–Box gauge. Not checkpointed: after a restart the test waits for new errors.
#[derive(Debug, Default)]
pub struct Residuals(BTreeMap<String, VecDeque<f64>>);

impl Residuals {
    /// Keeps the shortest horizon's errors of `outcomes`.
    pub fn observe(&mut self, outcomes: &[Outcome]) {
        for o in outcomes.iter().filter(|o| o.horizon == 0) {
            let kept = self.0.entry(o.key.clone()).or_default();
            if kept.len() == RESIDUALS {
                kept.pop_front();
            }
            kept.push_back(o.actual - o.issued[2]);
        }
    }

    /// Forgets `key` (it is no longer forecast).
    pub fn forget(&mut self, key: &str) {
        self.0.remove(key);
    }

    /// The median over keys of their Ljung–Box p-values; none before any key has enough errors.
    pub fn median_p(&self) -> Option<f64> {
        let mut ps: Vec<f64> = self
            .0
            .values()
            .filter_map(|r| ljung_box_p(&r.iter().copied().collect::<Vec<_>>()))
            .collect();
        (!ps.is_empty()).then(|| median_of(&mut ps))
    }

    /// Sets the gauge of `model`'s shortest horizon (of `horizons`, µs) to [`median_p`](Self::median_p).
    pub fn report(&self, horizons: &[i64], model: &str, ctx: &Context<'_>) {
        let (Some(&h), Some(p)) = (horizons.first(), self.median_p()) else {
            return;
        };
        let h = horizon_label(h);
        ctx.metrics
            .forecast_residual_ljung_box_p
            .with_label_values(&[ctx.pipeline, ctx.stage, model, h.as_str()])
            .set(p);
    }
}

/// Exports every series of `model` at `horizons` at 0, before the first target comes.
pub fn export(horizons: &[i64], model: &str, ctx: &Context<'_>) {
    let m = ctx.metrics;
    for (i, &h) in horizons.iter().enumerate() {
        let h = horizon_label(h);
        let labels = [ctx.pipeline, ctx.stage, model, h.as_str()];
        m.forecasts_resolved.with_label_values(&labels).inc_by(0);
        m.forecast_abs_error.with_label_values(&labels).inc_by(0.0);
        m.forecast_sym_pct_error
            .with_label_values(&labels)
            .inc_by(0.0);
        m.forecast_pct_error.with_label_values(&labels).inc_by(0.0);
        m.forecast_pct_resolved.with_label_values(&labels).inc_by(0);
        if i == 0 {
            // Not known before a key has enough errors.
            m.forecast_residual_ljung_box_p
                .with_label_values(&labels)
                .set(f64::NAN);
        }
        for level in ["80", "95"] {
            let labels = [ctx.pipeline, ctx.stage, model, h.as_str(), level];
            m.forecast_covered.with_label_values(&labels).inc_by(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::PipelineMetrics;

    #[test]
    fn each_outcome_counts_its_errors_and_coverage_under_its_horizon() {
        let metrics = PipelineMetrics::new();
        let ctx = Context {
            pipeline: "p",
            scope: "p",
            stage: "f",
            metrics: &metrics,
        };
        let outcomes = [
            // Median 10, actual 12: inside the 80 % interval [8, 13].
            Outcome {
                key: "a".to_string(),
                target: HOUR,
                horizon: 0,
                actual: 12.0,
                issued: [5.0, 8.0, 10.0, 13.0, 15.0],
            },
            // Actual 0: outside both; no percentage error.
            Outcome {
                key: "a".to_string(),
                target: 2 * HOUR,
                horizon: 0,
                actual: 0.0,
                issued: [5.0, 8.0, 10.0, 13.0, 15.0],
            },
            Outcome {
                key: "a".to_string(),
                target: 7 * HOUR,
                horizon: 1,
                actual: 10.0,
                issued: [9.0, 9.5, 10.0, 10.5, 11.0],
            },
        ];
        report(&outcomes, &[HOUR, 6 * HOUR], "m@1", &ctx);
        let one = [("horizon", "1h")];
        assert_eq!(metrics.total("forecasts_resolved_total", &one), 2);
        assert_eq!(metrics.total("forecast_pct_resolved_total", &one), 1);
        assert_eq!(
            metrics.total(
                "forecast_covered_total",
                &[("horizon", "1h"), ("level", "80")]
            ),
            1
        );
        assert_eq!(
            metrics.total(
                "forecast_covered_total",
                &[("horizon", "6h"), ("level", "95")]
            ),
            1
        );
        let text = metrics.render();
        // |12-10| + |0-10|; 2/12; 2*2/22 + 2*10/10.
        assert!(text.contains(
            "stratus_forecast_abs_error_total{horizon=\"1h\",model=\"m@1\",pipeline=\"p\",stage=\"f\"} 12"
        ), "{text}");
        let pct = 2.0 / 12.0;
        assert!(text.contains(&format!(
            "stratus_forecast_pct_error_total{{horizon=\"1h\",model=\"m@1\",pipeline=\"p\",stage=\"f\"}} {pct}"
        )), "{text}");
        let sym = 4.0 / 22.0 + 2.0;
        assert!(text.contains(&format!(
            "stratus_forecast_sym_pct_error_total{{horizon=\"1h\",model=\"m@1\",pipeline=\"p\",stage=\"f\"}} {sym}"
        )), "{text}");
    }

    /// 60 uniform values of a linear congruential generator (the same in the reference below).
    fn uniform() -> Vec<f64> {
        let mut s: u64 = 42;
        (0..60)
            .map(|_| {
                s = (1_103_515_245 * s + 12_345) % (1 << 31);
                s as f64 / (1u64 << 31) as f64
            })
            .collect()
    }

    #[test]
    fn ljung_box_matches_scipy_on_noise_and_on_an_autoregression() {
        // Q and its χ²(10) survival computed with numpy and scipy.stats.chi2.sf on the same
        // series: Q 9.97249926295451, p 0.44290933450759584; and for y[t] = 0.8 y[t-1] + u[t]
        // − 0.5: Q 69.28565978125522, p 6.089935239325954e-11.
        let u = uniform();
        let p = ljung_box_p(&u).unwrap();
        assert!((p - 0.442_909_334_507_595_84).abs() < 1e-9, "{p}");
        let mut y = vec![0.0; 60];
        for t in 1..60 {
            y[t] = 0.8 * y[t - 1] + u[t] - 0.5;
        }
        let p = ljung_box_p(&y).unwrap();
        assert!((p / 6.089_935_239_325_954e-11 - 1.0).abs() < 1e-6, "{p}");
        // Too few, or nothing to correlate.
        assert_eq!(ljung_box_p(&u[..47]), None);
        assert_eq!(ljung_box_p(&[1.0; 60]), None);
    }

    #[test]
    fn residuals_keep_the_shortest_horizon_per_key_and_report_their_median_p() {
        let outcome = |key: &str, horizon: usize, e: f64| Outcome {
            key: key.to_string(),
            target: 0,
            horizon,
            actual: 10.0 + e,
            issued: [8.0, 9.0, 10.0, 11.0, 12.0],
        };
        let u = uniform();
        let mut r = Residuals::default();
        // Key a: the noise; key b: too few; the 6 h horizon of a is not the test's.
        let mut outcomes: Vec<Outcome> = u.iter().map(|&e| outcome("a", 0, e)).collect();
        outcomes.extend((0..10).map(|_| outcome("b", 0, 1.0)));
        outcomes.extend((0..60).map(|i| outcome("a", 1, i as f64)));
        r.observe(&outcomes);
        let p = r.median_p().unwrap();
        assert!((p - 0.442_909_334_507_595_84).abs() < 1e-9, "{p}");
        r.forget("a");
        assert_eq!(r.median_p(), None);
    }

    #[test]
    fn accuracy_rows_give_each_outcome_with_its_key_times_and_errors() {
        let key = vec!["instance_type".to_string(), "az".to_string()];
        let schema = schema(&key);
        let outcomes = [Outcome {
            key: crate::keys::join(["m5.large", "us-east-1a"]),
            target: 30 * HOUR,
            horizon: 1,
            actual: 0.0,
            issued: [5.0, 8.0, 10.0, 13.0, 15.0],
        }];
        let b = rows(&outcomes, &[HOUR, 6 * HOUR], "m@1", &schema).unwrap();
        assert_eq!(b.num_rows(), 1);
        let text = arrow::util::pretty::pretty_format_batches(&[b])
            .unwrap()
            .to_string();
        for cell in [
            "| m5.large      | us-east-1a | 1970-01-02T06:00:00Z | 1970-01-02T00:00:00Z | 6 ",
            "| m@1           | 0.0    | 5.0  | 8.0 | 10.0 | 13.0 | 15.0 | 10.0      |           | 2.0           | false      | false      |",
        ] {
            assert!(text.contains(cell), "{cell}\n{text}");
        }
    }
}
