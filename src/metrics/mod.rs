//! Prometheus metrics of a running pipeline.
//!
//! In: counts and timings reported by each stage. Out: the Prometheus text exposition format
//! ([`PipelineMetrics::render`]), served on `/metrics`. Every series carries the pipeline
//! name as a label; per-source series carry the source too. [`health`] is what `/readyz`
//! reports, [`server`] serves both.

pub mod health;
pub mod server;

use prometheus::{
    CounterVec, Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// The metrics of one process, registered in their own registry.
#[derive(Clone)]
pub struct PipelineMetrics {
    registry: Registry,
    /// Events read from a source, valid or not.
    pub events_in: IntCounterVec,
    /// Events rejected by validation (and sent to the dead-letter topic).
    pub events_invalid: IntCounterVec,
    /// Rows written to a sink.
    pub rows_out: IntCounterVec,
    /// Seconds from the start of a Delta write to its commit.
    pub delta_commit_seconds: HistogramVec,
    /// Data files added by Delta commits.
    pub delta_files_written: IntCounterVec,
    /// Rows too late for every window they belong to (sent to the late side output).
    pub events_late: IntCounterVec,
    /// Processing time minus the watermark, in seconds.
    pub watermark_lag_seconds: GaugeVec,
    /// Messages in a partition not yet consumed (high watermark minus position).
    pub consumer_lag: IntGaugeVec,
    /// Seconds from a window's close (the watermark passing its end) to its results being
    /// committed to every sink.
    pub window_flush_seconds: HistogramVec,
    /// Seconds per ONNX Runtime call (one batch of rows), per model version.
    pub inference_seconds: HistogramVec,
    /// Rows scored by a model version (its rate is rows/s).
    pub rows_scored: IntCounterVec,
    /// The version a score stage serves, and the one it shadows.
    pub model_version: IntGaugeVec,
    /// Per model version and input: the population stability index of the input's last
    /// rows against its training distribution (`score::drift`).
    pub model_input_psi: GaugeVec,
    /// The same as a KL divergence (recent against training).
    pub model_input_kl: GaugeVec,
    /// The pipeline's drift thresholds per model version (`measure`: `psi` or `kl`), which the
    /// shipped rule compares the two gauges above with.
    pub model_drift_threshold: GaugeVec,
    /// Alert messages, by severity and status.
    pub alerts: IntCounterVec,
    /// Seconds from the oldest event a cycle read being appended to Kafka to the delivery of
    /// each alert the cycle opened (`firing`): an upper bound of each alert's detection
    /// latency, since the event that closed its window is at or after that one.
    pub detection_latency_seconds: HistogramVec,
    /// Alerts given a verdict (`true` or `noise`) by their readers, once each
    /// (`decide::feedback`): the false-positive rate is the share of `noise`.
    pub alert_feedback: IntCounterVec,
    /// The pipeline's false-positive rate threshold for an alert stage.
    pub alert_false_positive_threshold: GaugeVec,
    /// Windows the alert policy held back since the process started, by reason.
    pub alerts_suppressed: IntGaugeVec,
    /// Recommendations issued, by kind.
    pub recommendations: IntCounterVec,
    /// Rows each stage produced (for a window stage: window results, updates included).
    pub stage_rows: IntCounterVec,
    /// Seconds the pipeline loop spent in each phase of its cycles (`read`, `stage <name>`,
    /// `kafka sinks`, `delta sinks`, `checkpoint`): where the time goes.
    pub cycle_seconds: CounterVec,
    /// Failed attempts that were retried (or given up), by operation (`delta_commit`,
    /// `checkpoint`, `connect`).
    pub retries: IntCounterVec,
    /// When each Delta sink was last up to date, in Unix seconds: its rows of the last cycle
    /// committed, or the cycle had none for it.
    pub delta_last_commit: GaugeVec,
    /// Forecasts whose target came, per model and horizon: the count the accuracy sums below
    /// divide by (MAE, sMAPE, coverage; MAPE divides by `forecast_pct_resolved`).
    pub forecasts_resolved: IntCounterVec,
    /// Sum of |actual − median| of resolved forecasts.
    pub forecast_abs_error: CounterVec,
    /// Sum of |actual − median| / |actual| over resolved forecasts whose actual is not 0.
    pub forecast_pct_error: CounterVec,
    /// Resolved forecasts whose actual is not 0.
    pub forecast_pct_resolved: IntCounterVec,
    /// Sum of 2 |actual − median| / (|actual| + |median|) of resolved forecasts.
    pub forecast_sym_pct_error: CounterVec,
    /// Resolved forecasts whose actual fell inside the 80 % or 95 % interval (`level`).
    pub forecast_covered: IntCounterVec,
    /// The median over keys of the Ljung–Box p-value of their recent errors at the stage's
    /// shortest horizon (`forecast::accuracy`); NaN until a key has enough.
    pub forecast_residual_ljung_box_p: GaugeVec,
    /// 1 while a problem `/readyz` reports lasts (`sink <name>`, `checkpoint`, `kafka`,
    /// `kafka delivery`, `source <name> watermark`), else 0.
    pub failing: IntGaugeVec,
    /// Bytes the newest checkpoint wrote: its manifest and state files (the whole state, or
    /// what changed since the checkpoint before).
    pub checkpoint_bytes: IntGaugeVec,
    /// Bytes of every file the newest checkpoint lists: the state a restart reads.
    pub checkpoint_state_bytes: IntGaugeVec,
    /// The process's memory limit (`--memory-limit`); absent when there is none.
    pub memory_limit_bytes: IntGaugeVec,
    /// The process's resident set, sampled before each cycle.
    pub resident_memory_bytes: IntGaugeVec,
    /// The input bytes a pipeline's next cycle may read: `commit.max_bytes`, or less when the
    /// memory limit is near.
    pub cycle_budget_bytes: IntGaugeVec,
}

fn histogram(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let buckets = prometheus::exponential_buckets(0.005, 2.0, 12).unwrap_or_default();
    histogram_with(registry, name, help, labels, buckets)
}

fn histogram_with(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"));
    registry
        .register(Box::new(h.clone()))
        .unwrap_or_else(|e| panic!("metric {name} registered twice: {e}"));
    h
}

fn float_counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> CounterVec {
    let c = CounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"));
    registry
        .register(Box::new(c.clone()))
        .unwrap_or_else(|e| panic!("metric {name} registered twice: {e}"));
    c
}

fn float_gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let g = GaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"));
    registry
        .register(Box::new(g.clone()))
        .unwrap_or_else(|e| panic!("metric {name} registered twice: {e}"));
    g
}

fn int_gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"));
    registry
        .register(Box::new(g.clone()))
        .unwrap_or_else(|e| panic!("metric {name} registered twice: {e}"));
    g
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"));
    registry
        .register(Box::new(c.clone()))
        .unwrap_or_else(|e| panic!("metric {name} registered twice: {e}"));
    c
}

impl PipelineMetrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("stratus".into()), None)
            .unwrap_or_else(|e| panic!("metrics prefix is malformed: {e}"));
        let events_in = counter(
            &registry,
            "events_in_total",
            "Events read from a source, valid or not.",
            &["pipeline", "source"],
        );
        let events_invalid = counter(
            &registry,
            "events_invalid_total",
            "Events rejected by validation and sent to the dead-letter topic.",
            &["pipeline", "source"],
        );
        let rows_out = counter(
            &registry,
            "rows_out_total",
            "Rows written to a sink.",
            &["pipeline", "sink"],
        );
        let delta_commit_seconds = histogram(
            &registry,
            "delta_commit_seconds",
            "Seconds from the start of a Delta write to its commit.",
            &["pipeline", "sink"],
        );
        let delta_files_written = counter(
            &registry,
            "delta_files_written_total",
            "Data files added by Delta commits.",
            &["pipeline", "sink"],
        );
        let events_late = counter(
            &registry,
            "events_late_total",
            "Rows too late for every window they belong to, sent to the late side output.",
            &["pipeline", "stage"],
        );
        let watermark_lag_seconds = GaugeVec::new(
            Opts::new(
                "watermark_lag_seconds",
                "Processing time minus the watermark, in seconds.",
            ),
            &["pipeline", "source"],
        )
        .unwrap_or_else(|e| panic!("metric watermark_lag_seconds is malformed: {e}"));
        registry
            .register(Box::new(watermark_lag_seconds.clone()))
            .unwrap_or_else(|e| panic!("metric watermark_lag_seconds registered twice: {e}"));
        let consumer_lag = IntGaugeVec::new(
            Opts::new("consumer_lag", "Messages in a partition not yet consumed."),
            &["pipeline", "source", "partition"],
        )
        .unwrap_or_else(|e| panic!("metric consumer_lag is malformed: {e}"));
        registry
            .register(Box::new(consumer_lag.clone()))
            .unwrap_or_else(|e| panic!("metric consumer_lag registered twice: {e}"));
        let window_flush_seconds = histogram(
            &registry,
            "window_flush_seconds",
            "Seconds from a window's close to its results being committed to every sink.",
            &["pipeline", "stage"],
        );
        let detection_latency_seconds = histogram_with(
            &registry,
            "detection_latency_seconds",
            "Seconds from the oldest event its cycle read being appended to Kafka to a new alert's delivery.",
            &["pipeline", "stage"],
            // 30 s, the seed's target for the p99, is a bucket boundary.
            vec![
                0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
            ],
        );
        let inference_seconds = histogram_with(
            &registry,
            "inference_seconds",
            "Seconds per ONNX Runtime call, one batch of rows.",
            &["pipeline", "stage", "model"],
            prometheus::exponential_buckets(0.000_1, 2.0, 15).unwrap_or_default(),
        );
        let rows_scored = counter(
            &registry,
            "rows_scored_total",
            "Rows scored by a model version.",
            &["pipeline", "stage", "model"],
        );
        let model_version = IntGaugeVec::new(
            Opts::new(
                "model_version",
                "The registered version a score stage uses (role: serving or shadow).",
            ),
            &["pipeline", "stage", "model", "role"],
        )
        .unwrap_or_else(|e| panic!("metric model_version is malformed: {e}"));
        registry
            .register(Box::new(model_version.clone()))
            .unwrap_or_else(|e| panic!("metric model_version registered twice: {e}"));
        let model_input_psi = float_gauge(
            &registry,
            "model_input_psi",
            "Population stability index of a model input's last rows against its training.",
            &["pipeline", "stage", "model", "input"],
        );
        let model_input_kl = float_gauge(
            &registry,
            "model_input_kl",
            "KL divergence of a model input's last rows from its training distribution.",
            &["pipeline", "stage", "model", "input"],
        );
        let model_drift_threshold = float_gauge(
            &registry,
            "model_drift_threshold",
            "The pipeline's input drift threshold for a model (measure: psi or kl).",
            &["pipeline", "stage", "model", "measure"],
        );
        let alerts = counter(
            &registry,
            "alerts_total",
            "Alert messages sent, by severity and status (firing, updated, resolved).",
            &["pipeline", "stage", "severity", "status"],
        );
        let alert_feedback = counter(
            &registry,
            "alert_feedback_total",
            "Alerts given a verdict by their readers (true or noise), once each.",
            &["pipeline", "stage", "verdict"],
        );
        let alert_false_positive_threshold = float_gauge(
            &registry,
            "alert_false_positive_threshold",
            "The pipeline's false-positive rate threshold for an alert stage.",
            &["pipeline", "stage"],
        );
        let recommendations = counter(
            &registry,
            "recommendations_total",
            "Recommendations issued (first or materially changed), by kind.",
            &["pipeline", "stage", "kind"],
        );
        let stage_rows = counter(
            &registry,
            "stage_rows_total",
            "Rows a stage produced (a window stage: window results, updates included).",
            &["pipeline", "stage"],
        );
        let cycle_seconds = float_counter(
            &registry,
            "cycle_seconds_total",
            "Seconds the pipeline loop spent in each phase of its cycles.",
            &["pipeline", "phase"],
        );
        let by_horizon = ["pipeline", "stage", "model", "horizon"];
        let forecasts_resolved = counter(
            &registry,
            "forecasts_resolved_total",
            "Forecasts whose target came, per model and horizon.",
            &by_horizon,
        );
        let forecast_abs_error = float_counter(
            &registry,
            "forecast_abs_error_total",
            "Sum of |actual - median| of resolved forecasts (MAE: its rate over forecasts_resolved_total's).",
            &by_horizon,
        );
        let forecast_pct_error = float_counter(
            &registry,
            "forecast_pct_error_total",
            "Sum of |actual - median| / |actual| of resolved forecasts whose actual is not 0 (MAPE: its rate over forecast_pct_resolved_total's).",
            &by_horizon,
        );
        let forecast_pct_resolved = counter(
            &registry,
            "forecast_pct_resolved_total",
            "Resolved forecasts whose actual is not 0.",
            &by_horizon,
        );
        let forecast_sym_pct_error = float_counter(
            &registry,
            "forecast_sym_pct_error_total",
            "Sum of 2 |actual - median| / (|actual| + |median|) of resolved forecasts (sMAPE: its rate over forecasts_resolved_total's).",
            &by_horizon,
        );
        let forecast_covered = counter(
            &registry,
            "forecast_covered_total",
            "Resolved forecasts whose actual fell inside the interval of `level` (80 or 95 %).",
            &["pipeline", "stage", "model", "horizon", "level"],
        );
        let forecast_residual_ljung_box_p = float_gauge(
            &registry,
            "forecast_residual_ljung_box_p",
            "Median over keys of the Ljung-Box p-value of their last 72 errors at the shortest horizon (10 lags).",
            &["pipeline", "stage", "model", "horizon"],
        );
        let alerts_suppressed = IntGaugeVec::new(
            Opts::new(
                "alerts_suppressed",
                "Windows the alert policy held back since the process started (maintenance, flapping, duplicate).",
            ),
            &["pipeline", "stage", "reason"],
        )
        .unwrap_or_else(|e| panic!("metric alerts_suppressed is malformed: {e}"));
        registry
            .register(Box::new(alerts_suppressed.clone()))
            .unwrap_or_else(|e| panic!("metric alerts_suppressed registered twice: {e}"));
        let retries = counter(
            &registry,
            "retries_total",
            "Failed attempts of an operation (delta_commit, checkpoint, connect), retried with backoff or given up.",
            &["pipeline", "operation"],
        );
        let delta_last_commit = GaugeVec::new(
            Opts::new(
                "delta_last_commit_timestamp_seconds",
                "When the Delta sink was last up to date (its rows of the last cycle committed, or none to commit), in Unix seconds.",
            ),
            &["pipeline", "sink"],
        )
        .unwrap_or_else(|e| panic!("metric delta_last_commit_timestamp_seconds is malformed: {e}"));
        registry
            .register(Box::new(delta_last_commit.clone()))
            .unwrap_or_else(|e| {
                panic!("metric delta_last_commit_timestamp_seconds registered twice: {e}")
            });
        let failing = IntGaugeVec::new(
            Opts::new(
                "failing",
                "1 while a problem /readyz reports lasts (sink <name>, checkpoint, kafka, kafka delivery, source <name> watermark), else 0.",
            ),
            &["pipeline", "problem"],
        )
        .unwrap_or_else(|e| panic!("metric failing is malformed: {e}"));
        registry
            .register(Box::new(failing.clone()))
            .unwrap_or_else(|e| panic!("metric failing registered twice: {e}"));
        let checkpoint_bytes = IntGaugeVec::new(
            Opts::new(
                "checkpoint_bytes",
                "Bytes the newest checkpoint wrote (its manifest and state files: the whole state, or what changed since the checkpoint before).",
            ),
            &["pipeline"],
        )
        .unwrap_or_else(|e| panic!("metric checkpoint_bytes is malformed: {e}"));
        registry
            .register(Box::new(checkpoint_bytes.clone()))
            .unwrap_or_else(|e| panic!("metric checkpoint_bytes registered twice: {e}"));
        let checkpoint_state_bytes = IntGaugeVec::new(
            Opts::new(
                "checkpoint_state_bytes",
                "Bytes of the state the newest checkpoint stands for: every file it lists (its last whole state and what was added since), what a restart reads.",
            ),
            &["pipeline"],
        )
        .unwrap_or_else(|e| panic!("metric checkpoint_state_bytes is malformed: {e}"));
        registry
            .register(Box::new(checkpoint_state_bytes.clone()))
            .unwrap_or_else(|e| panic!("metric checkpoint_state_bytes registered twice: {e}"));
        let memory_limit_bytes = int_gauge(
            &registry,
            "memory_limit_bytes",
            "The resident memory the process is to stay below (--memory-limit): each cycle reads no more input than the room under it allows.",
            &[],
        );
        let resident_memory_bytes = int_gauge(
            &registry,
            "resident_memory_bytes",
            "The process's resident set, sampled before each cycle.",
            &[],
        );
        let cycle_budget_bytes = int_gauge(
            &registry,
            "cycle_budget_bytes",
            "The input bytes a pipeline's next cycle may read: commit.max_bytes, or less when the memory limit is near.",
            &["pipeline"],
        );
        PipelineMetrics {
            registry,
            checkpoint_bytes,
            checkpoint_state_bytes,
            memory_limit_bytes,
            resident_memory_bytes,
            cycle_budget_bytes,
            forecasts_resolved,
            forecast_abs_error,
            forecast_pct_error,
            forecast_pct_resolved,
            forecast_sym_pct_error,
            forecast_covered,
            forecast_residual_ljung_box_p,
            retries,
            failing,
            delta_last_commit,
            alerts,
            alert_feedback,
            alert_false_positive_threshold,
            alerts_suppressed,
            recommendations,
            events_in,
            events_invalid,
            rows_out,
            delta_commit_seconds,
            delta_files_written,
            events_late,
            watermark_lag_seconds,
            consumer_lag,
            window_flush_seconds,
            detection_latency_seconds,
            inference_seconds,
            rows_scored,
            model_version,
            model_input_psi,
            model_input_kl,
            model_drift_threshold,
            stage_rows,
            cycle_seconds,
        }
    }

    /// The sum of counter `name` (without the `stratus_` prefix) over its series whose labels
    /// include every one of `matching`: for progress lines.
    pub fn total(&self, name: &str, matching: &[(&str, &str)]) -> u64 {
        let family = format!("stratus_{name}");
        self.registry
            .gather()
            .iter()
            .filter(|f| f.name() == family)
            .flat_map(|f| f.get_metric())
            .filter(|m| {
                matching.iter().all(|(k, v)| {
                    m.get_label()
                        .iter()
                        .any(|l| l.name() == *k && l.value() == *v)
                })
            })
            .map(|m| m.get_counter().value() as u64)
            .sum()
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for the text format.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for PipelineMetrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_labelled_counters_in_text_format() {
        let m = PipelineMetrics::new();
        m.events_in
            .with_label_values(&["p", "cloud.metrics"])
            .inc_by(3);
        m.events_invalid
            .with_label_values(&["p", "cloud.metrics"])
            .inc();
        m.delta_commit_seconds
            .with_label_values(&["p", "raw"])
            .observe(0.02);
        let text = m.render();
        assert!(
            text.contains("stratus_events_in_total{pipeline=\"p\",source=\"cloud.metrics\"} 3"),
            "{text}"
        );
        assert!(
            text.contains(
                "stratus_events_invalid_total{pipeline=\"p\",source=\"cloud.metrics\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "stratus_delta_commit_seconds_bucket{pipeline=\"p\",sink=\"raw\",le=\"0.02\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "stratus_delta_commit_seconds_bucket{pipeline=\"p\",sink=\"raw\",le=\"0.01\"} 0"
            ),
            "{text}"
        );
    }
}
