//! `stratus generate`: realistic, seeded synthetic cloud telemetry with labelled anomalies.
//!
//! In: a [`GenerateConfig`] (seed, start, length, cadence, fleet size). Out, in event-time
//! order through an [`Emit`] callback: `cloud.metrics` data points (CPU, memory and network per
//! instance, with daily and weekly seasonality by workload class, trend, autocorrelated noise and
//! diversity across resources), `cloud.spot_prices` changes (irregular steps per instance type
//! and zone, mean-reverting, with occasional spikes), and `cloud.billing` line items (hourly per
//! instance and per account service, arriving an hour after the usage, some restated later);
//! and the [`Labels`] of every injected anomaly — spikes, level shifts, dips, memory drifts,
//! cost leaks and spot price spikes — with its kind, subject and time range.
//!
//! The same seed and configuration give the same events, byte for byte.

mod billing;
mod metrics;
pub mod output;
mod spot;
pub mod world;

use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::Serialize;

pub use world::{CATALOGUE, InstanceType, ZONES};

/// The input topics, by schema name.
pub const METRICS_TOPIC: &str = "cloud.metrics";
pub const SPOT_TOPIC: &str = "cloud.spot_prices";
pub const BILLING_TOPIC: &str = "cloud.billing";

#[derive(Debug, Clone)]
pub struct GenerateConfig {
    pub seed: u64,
    /// Event time of the first data point, µs.
    pub start_us: i64,
    /// Length of the generated history, µs.
    pub span_us: i64,
    /// One metric data point per resource and metric every this many µs.
    pub interval_us: i64,
    pub resources: usize,
    /// Share of resources with an injected anomaly, in [0, 1].
    pub anomaly_share: f64,
}

/// One injected anomaly.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Anomaly {
    /// spike, level_shift, dip, memory_drift, cost_leak or price_spike.
    pub kind: &'static str,
    /// A resource id, or `<instance type>/<zone>` for a price spike.
    pub subject: String,
    /// The metric affected (`cost` for billing, `price` for spot).
    pub metric: &'static str,
    pub start: String,
    pub end: String,
    #[serde(skip)]
    pub start_us: i64,
    #[serde(skip)]
    pub end_us: i64,
}

/// Everything injected, for scoring detections against.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Labels {
    pub seed: u64,
    pub start: String,
    pub end: String,
    pub anomalies: Vec<Anomaly>,
}

/// RFC 3339 with milliseconds.
pub fn rfc3339(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// A standard normal draw (Box–Muller).
pub(crate) fn normal(rng: &mut StdRng) -> f64 {
    use rand::Rng;
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random_range(0.0..1.0);
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Why generating stopped.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("Kafka topic {topic}: {source}")]
    Kafka {
        topic: String,
        source: rdkafka::error::KafkaError,
    },
    /// An event the receiver could not read back.
    #[error("event: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Invalid(&'static str),
}

pub type Result<T, E = GenerateError> = std::result::Result<T, E>;

/// Receives each event: topic, key, JSON payload, event time (µs).
pub trait Emit {
    fn emit(&mut self, topic: &'static str, key: &str, payload: &str, ts_us: i64) -> Result<()>;
}

impl<F: FnMut(&'static str, &str, &str, i64) -> Result<()>> Emit for F {
    fn emit(&mut self, topic: &'static str, key: &str, payload: &str, ts_us: i64) -> Result<()> {
        self(topic, key, payload, ts_us)
    }
}

/// Generates everything, in time order, into `out`; returns the labels.
pub fn generate(config: &GenerateConfig, out: &mut dyn Emit) -> Result<Labels> {
    if config.interval_us <= 0 {
        return Err(GenerateError::Invalid("the interval must be positive"));
    }
    if config.resources == 0 {
        return Err(GenerateError::Invalid("at least one resource"));
    }
    let end_us = config.start_us + config.span_us;
    let mut rng = StdRng::seed_from_u64(config.seed);
    let fleet = world::fleet(&mut rng, config.resources);
    let mut labels = Labels {
        seed: config.seed,
        start: rfc3339(config.start_us),
        end: rfc3339(end_us),
        anomalies: Vec::new(),
    };
    let mut metrics = metrics::Metrics::new(&mut rng, &fleet, config, &mut labels.anomalies);
    let mut spot = spot::Spot::new(&mut rng, config, &mut labels.anomalies);
    let mut billing = billing::Billing::new(&mut rng, &fleet, config, &mut labels.anomalies);

    let mut t = config.start_us;
    while t < end_us {
        // Spot changes and billing items due up to t, then the data points at t.
        spot.emit_until(t, out)?;
        billing.emit_until(
            t,
            &|ty: &str, zone: &str, at: i64| spot.price_at(ty, zone, at),
            out,
        )?;
        metrics.emit_at(t, out)?;
        t += config.interval_us;
    }
    spot.emit_until(end_us, out)?;
    billing.emit_until(
        end_us,
        &|ty: &str, zone: &str, at: i64| spot.price_at(ty, zone, at),
        out,
    )?;
    // A history too short for an anomaly's window leaves it without effect: not a label.
    labels.anomalies.retain(|a| a.start_us < a.end_us);
    labels
        .anomalies
        .sort_by(|a, b| (a.start_us, &a.subject).cmp(&(b.start_us, &b.subject)));
    Ok(labels)
}

#[cfg(test)]
mod tests;
