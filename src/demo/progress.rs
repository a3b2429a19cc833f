//! The demo's live progress: every few seconds, per pipeline, the events read (and their rate
//! since the last line), the window results produced and the alerts and recommendations sent —
//! read from the pipelines' own Prometheus counters.

use std::time::{Duration, Instant};

use crate::metrics::PipelineMetrics;
use crate::pipeline::Pipeline;

/// How often a progress line is printed.
pub const EVERY: Duration = Duration::from_secs(3);

/// Follows the counters of `pipelines` between lines.
pub struct Progress {
    /// Per pipeline: its name, its window stages.
    pipelines: Vec<(String, Vec<String>)>,
    metrics: PipelineMetrics,
    last: Vec<u64>,
    at: Instant,
}

impl Progress {
    pub fn new(pipelines: &[Pipeline], metrics: &PipelineMetrics) -> Self {
        Progress {
            pipelines: pipelines
                .iter()
                .map(|p| {
                    let windows = p
                        .stages
                        .iter()
                        .filter(|s| s.window().is_some())
                        .map(|s| s.name.clone())
                        .collect();
                    (p.name.clone(), windows)
                })
                .collect(),
            metrics: metrics.clone(),
            last: vec![0; pipelines.len()],
            at: Instant::now(),
        }
    }

    /// One line: `name: events (rate/s), windows, alerts, recommendations` per pipeline.
    pub fn line(&mut self) -> String {
        let seconds = self.at.elapsed().as_secs_f64().max(1e-3);
        self.at = Instant::now();
        let mut parts = Vec::new();
        for ((name, windows), last) in self.pipelines.iter().zip(&mut self.last) {
            let p = [("pipeline", name.as_str())];
            let events = self.metrics.total("events_in_total", &p);
            let rate = (events - *last) as f64 / seconds;
            *last = events;
            let windows: u64 = windows
                .iter()
                .map(|s| {
                    self.metrics
                        .total("stage_rows_total", &[("pipeline", name), ("stage", s)])
                })
                .sum();
            let alerts = self.metrics.total("alerts_total", &p);
            let recs = self.metrics.total("recommendations_total", &p);
            parts.push(format!(
                "{name} {events} events ({rate:.0}/s), {windows} windows, {alerts} alerts, {recs} recommendations"
            ));
        }
        format!("progress: {}", parts.join(" | "))
    }
}
