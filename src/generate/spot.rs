//! EC2 spot prices as AWS publishes them: one event per price change, at irregular times.
//!
//! Per instance type and zone, the log price follows a mean-reverting walk around a level of
//! 25–45 % of on-demand that itself drifts slowly; changes arrive as a Poisson process (one
//! every 1–8 hours on average, per series). As in AWS's published history (the sample in
//! `shared/data/spot-sample`: a median move of 0.2 % per change, 0.7 % at the 90th percentile),
//! most changes move the price by a fraction of a percent and one in twenty by a few percent.
//! A price spike (labelled) lifts the price to 85 % of on-demand for a few hours, then it steps
//! back down. Prices have six decimals, as AWS reports them.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::world::{CATALOGUE, InstanceType, ZONES};
use super::{Anomaly, Emit, GenerateConfig, SPOT_TOPIC, normal, rfc3339};

const HOUR: i64 = 3_600_000_000;

struct Series {
    instance: InstanceType,
    zone: &'static str,
    /// Log of the mean-reversion level, as a fraction of on-demand.
    level: f64,
    log_price: f64,
    mean_gap_hours: f64,
    next_us: i64,
    spike: Option<(i64, i64)>,
    /// Every change so far: (time, price), for billing at the spot price.
    history: Vec<(i64, f64)>,
}

pub struct Spot {
    series: Vec<Series>,
    rng: StdRng,
}

impl Spot {
    pub fn new(rng: &mut StdRng, config: &GenerateConfig, labels: &mut Vec<Anomaly>) -> Self {
        let end = config.start_us + config.span_us;
        let mut series = Vec::new();
        for instance in CATALOGUE {
            for zone in ZONES {
                let level = rng.random_range(0.25f64..0.45).ln();
                let spike = rng.random_bool(0.15).then(|| {
                    let room = (config.span_us / 2 - 8 * HOUR).max(HOUR);
                    let start = config.start_us + config.span_us / 2 + rng.random_range(0..room);
                    let stop = (start + rng.random_range(2..8) * HOUR).min(end);
                    labels.push(Anomaly {
                        kind: "price_spike",
                        subject: format!("{}/{zone}", instance.name),
                        metric: "price",
                        start: rfc3339(start),
                        end: rfc3339(stop),
                        start_us: start,
                        end_us: stop,
                    });
                    (start, stop)
                });
                let mut s = Series {
                    instance,
                    zone,
                    level,
                    log_price: level + 0.05 * normal(rng),
                    mean_gap_hours: rng.random_range(1.0..8.0),
                    next_us: config.start_us,
                    spike,
                    history: Vec::new(),
                };
                // The price in force at the start, as describe-spot-price-history reports it.
                s.history.push((config.start_us, s.price(config.start_us)));
                s.next_us = config.start_us;
                series.push(s);
            }
        }
        Spot {
            series,
            rng: StdRng::from_rng(rng),
        }
    }

    /// Emits every change at or before `t`, in time order across series.
    pub fn emit_until(&mut self, t: i64, out: &mut dyn Emit) -> super::Result<()> {
        loop {
            let Some(s) = self
                .series
                .iter_mut()
                .filter(|s| s.next_us <= t)
                .min_by_key(|s| s.next_us)
            else {
                return Ok(());
            };
            {
                let at = s.next_us;
                if s.history.len() > 1 || s.history[0].0 != at {
                    // Drift the level slowly, revert towards it, and step.
                    s.level += 0.002 * normal(&mut self.rng);
                    s.level = s.level.clamp(0.2f64.ln(), 0.55f64.ln());
                    let step = if self.rng.random_bool(0.05) {
                        0.03
                    } else {
                        0.003
                    };
                    s.log_price += 0.05 * (s.level - s.log_price) + step * normal(&mut self.rng);
                    s.history.push((at, s.price(at)));
                }
                let price = s.history.last().map_or(0.0, |p| p.1);
                let payload = format!(
                    r#"{{"ts":"{}","region":"us-east-1","az":"{}","instance_type":"{}","product":"Linux/UNIX","price":{price}}}"#,
                    rfc3339(at),
                    s.zone,
                    s.instance.name
                );
                out.emit(
                    SPOT_TOPIC,
                    &format!("{}/{}", s.instance.name, s.zone),
                    &payload,
                    at,
                )?;
                // The next change: exponential gap, and exactly at a spike's edges.
                let gap = (-self.rng.random_range(f64::EPSILON..1.0f64).ln()
                    * s.mean_gap_hours
                    * HOUR as f64) as i64;
                let mut next = at + gap.max(60_000_000);
                if let Some((a, b)) = s.spike {
                    for edge in [a, b] {
                        if at < edge && edge < next {
                            next = edge;
                        }
                    }
                }
                s.next_us = next;
            }
        }
    }

    /// The spot price of `instance` in `zone` in force at `t` (the latest change at or before).
    pub fn price_at(&self, instance: &str, zone: &str, t: i64) -> Option<f64> {
        let s = self
            .series
            .iter()
            .find(|s| s.instance.name == instance && s.zone == zone)?;
        let i = s.history.partition_point(|&(at, _)| at <= t);
        s.history.get(i.checked_sub(1)?).map(|p| p.1)
    }
}

impl Series {
    fn price(&self, t: i64) -> f64 {
        let fraction = match self.spike {
            Some((a, b)) if (a..b).contains(&t) => 0.85,
            _ => self.log_price.exp(),
        };
        (self.instance.on_demand * fraction * 1e6).round() / 1e6
    }
}
