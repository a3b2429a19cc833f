//! CloudWatch-style data points: per instance, `CPUUtilization` and `MemoryUtilization`
//! (percent) and `NetworkIn` (bytes per interval), one each per interval.
//!
//! CPU = level × (floor + swing × workload load) × (1 + trend · days) + AR(1) noise, clamped to
//! [0, 100]; network follows CPU with its own noise; memory holds its level with slow,
//! mean-reverting wander (AR(1), about ±2 points) and noise.
//! Anomalies (one per chosen resource, in the second half of the history): a CPU spike
//! (minutes), a level shift (×1.6 for hours), a dip (towards 0 for hours: a hung process) or a
//! memory drift (a leak rising to near 100 % over hours).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::world::{Resource, load};
use super::{Anomaly, Emit, GenerateConfig, METRICS_TOPIC, normal, rfc3339};

const MINUTE: i64 = 60_000_000;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Spike,
    LevelShift,
    Dip,
    MemoryDrift,
}

struct Series {
    resource: Resource,
    cpu_level: f64,
    floor: f64,
    trend_per_day: f64,
    noise_sd: f64,
    ar: f64,
    cpu_noise: f64,
    memory_level: f64,
    memory_wander: f64,
    memory_sd: f64,
    network_scale: f64,
    anomaly: Option<(Kind, i64, i64)>,
}

pub struct Metrics {
    series: Vec<Series>,
    rng: StdRng,
    start_us: i64,
}

impl Metrics {
    pub fn new(
        rng: &mut StdRng,
        fleet: &[Resource],
        config: &GenerateConfig,
        labels: &mut Vec<Anomaly>,
    ) -> Self {
        let half = config.start_us + config.span_us / 2;
        let end = config.start_us + config.span_us;
        let series = fleet
            .iter()
            .map(|r| {
                let anomaly = rng
                    .random_bool(config.anomaly_share.clamp(0.0, 1.0))
                    .then(|| {
                        let kind = match rng.random_range(0..4) {
                            0 => Kind::Spike,
                            1 => Kind::LevelShift,
                            2 => Kind::Dip,
                            _ => Kind::MemoryDrift,
                        };
                        let room = (end - half - 2 * HOUR).max(HOUR);
                        let start = half + rng.random_range(0..room);
                        let start = start - start.rem_euclid(config.interval_us);
                        let length = match kind {
                            Kind::Spike => rng.random_range(3..12) * config.interval_us,
                            Kind::LevelShift | Kind::Dip => rng.random_range(2..10) * HOUR,
                            Kind::MemoryDrift => rng.random_range(6..18) * HOUR,
                        };
                        let stop = (start + length).min(end);
                        labels.push(Anomaly {
                            kind: match kind {
                                Kind::Spike => "spike",
                                Kind::LevelShift => "level_shift",
                                Kind::Dip => "dip",
                                Kind::MemoryDrift => "memory_drift",
                            },
                            subject: r.id.clone(),
                            metric: if kind == Kind::MemoryDrift {
                                "MemoryUtilization"
                            } else {
                                "CPUUtilization"
                            },
                            start: rfc3339(start),
                            end: rfc3339(stop),
                            start_us: start,
                            end_us: stop,
                        });
                        (kind, start, stop)
                    });
                Series {
                    resource: r.clone(),
                    cpu_level: rng.random_range(25.0..70.0),
                    floor: rng.random_range(0.15..0.4),
                    trend_per_day: rng.random_range(-0.01..0.02),
                    noise_sd: rng.random_range(1.0..4.0),
                    ar: rng.random_range(0.3..0.8),
                    cpu_noise: 0.0,
                    memory_level: rng.random_range(30.0..70.0),
                    memory_wander: 0.0,
                    memory_sd: rng.random_range(0.2..1.0),
                    network_scale: rng.random_range(2e5..5e6),
                    anomaly,
                }
            })
            .collect();
        Metrics {
            series,
            rng: StdRng::from_rng(rng),
            start_us: config.start_us,
        }
    }

    pub fn emit_at(&mut self, t: i64, out: &mut dyn Emit) -> super::Result<()> {
        let ts = rfc3339(t);
        let days = (t - self.start_us) as f64 / DAY as f64;
        for s in &mut self.series {
            let active = s.anomaly.filter(|&(_, a, b)| (a..b).contains(&t));
            s.cpu_noise = s.ar * s.cpu_noise
                + (1.0 - s.ar * s.ar).sqrt() * s.noise_sd * normal(&mut self.rng);
            let shape = s.floor + (1.0 - s.floor) * load(s.resource.workload, t);
            let mut cpu = s.cpu_level * shape * (1.0 + s.trend_per_day * days) + s.cpu_noise;
            match active {
                Some((Kind::Spike, ..)) => cpu += self.rng.random_range(35.0..55.0),
                Some((Kind::LevelShift, ..)) => cpu *= 1.6,
                Some((Kind::Dip, ..)) => cpu = cpu * 0.05 + 0.5,
                _ => {}
            }
            let cpu = cpu.clamp(0.0, 100.0);
            // AR(1) with φ = 0.99 per interval and a stationary σ of 1 point.
            s.memory_wander = 0.99 * s.memory_wander + 0.141 * normal(&mut self.rng);
            let mut memory = s.memory_level + s.memory_wander + s.memory_sd * normal(&mut self.rng);
            if let Some((Kind::MemoryDrift, a, b)) = active {
                let progress = (t - a) as f64 / (b - a).max(1) as f64;
                memory += (97.0 - memory) * progress;
            }
            let memory = memory.clamp(0.0, 100.0);
            let network = (s.network_scale * (cpu / 50.0) * (1.0 + 0.1 * normal(&mut self.rng)))
                .max(0.0)
                .round();
            let r = &s.resource;
            for (metric, namespace, value, unit) in [
                ("CPUUtilization", "AWS/EC2", cpu, "Percent"),
                ("MemoryUtilization", "CWAgent", memory, "Percent"),
                ("NetworkIn", "AWS/EC2", network, "Bytes"),
            ] {
                let payload = format!(
                    r#"{{"ts":"{ts}","account_id":"{}","region":"us-east-1","az":"{}","resource_id":"{}","service":"EC2","namespace":"{namespace}","metric":"{metric}","value":{},"unit":"{unit}","dimensions":{{"InstanceId":"{}","InstanceType":"{}","AutoScalingGroupName":"{}"}}}}"#,
                    r.account,
                    r.zone,
                    r.id,
                    (value * 1000.0).round() / 1000.0,
                    r.id,
                    r.instance.name,
                    r.group
                );
                out.emit(METRICS_TOPIC, &r.id, &payload, t)?;
            }
        }
        Ok(())
    }
}
