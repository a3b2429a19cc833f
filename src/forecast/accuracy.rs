//! Forecast accuracy in the stream, once the actual arrives.
//!
//! In: the blend's [`Outcome`]s — each issued forecast met by the value realised at its target
//! hour. Out: Prometheus counters per pipeline, stage, model (name@version) and horizon:
//! forecasts resolved, the sums of absolute, percentage and symmetric percentage errors, and
//! how many fell inside the 80 % and 95 % intervals. MAE, MAPE, sMAPE and coverage over any
//! window are ratios of their rates (the shipped rules and dashboard compute them).

use super::blend::Outcome;
use crate::operator::Context;

const HOUR: i64 = 3_600_000_000;

/// `horizon` (µs) as its label: `6h`.
fn horizon_label(horizon: i64) -> String {
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

/// Exports every series of `model` at `horizons` at 0, before the first target comes.
pub fn export(horizons: &[i64], model: &str, ctx: &Context<'_>) {
    let m = ctx.metrics;
    for &h in horizons {
        let h = horizon_label(h);
        let labels = [ctx.pipeline, ctx.stage, model, h.as_str()];
        m.forecasts_resolved.with_label_values(&labels).inc_by(0);
        m.forecast_abs_error.with_label_values(&labels).inc_by(0.0);
        m.forecast_sym_pct_error
            .with_label_values(&labels)
            .inc_by(0.0);
        m.forecast_pct_error.with_label_values(&labels).inc_by(0.0);
        m.forecast_pct_resolved.with_label_values(&labels).inc_by(0);
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
            stage: "f",
            metrics: &metrics,
        };
        let outcomes = [
            // Median 10, actual 12: inside the 80 % interval [8, 13].
            Outcome {
                horizon: 0,
                actual: 12.0,
                issued: [5.0, 8.0, 10.0, 13.0, 15.0],
            },
            // Actual 0: outside both; no percentage error.
            Outcome {
                horizon: 0,
                actual: 0.0,
                issued: [5.0, 8.0, 10.0, 13.0, 15.0],
            },
            Outcome {
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
}
