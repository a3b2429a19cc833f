//! Rightsizing: the cheapest instance type that holds a resource's load with headroom, from
//! the 95th percentiles of its CPU and memory utilisation over a trailing span — or, for CPU,
//! from what its demand forecast says the next day needs (predictive sizing).
//!
//! In: the resource's current [`InstanceType`], the catalogue, its utilisation samples
//! (percent, one per window) over the trailing span, and optionally the CPU forecast to hold:
//! the 95th percentile of its demand forecast for the hours ahead.
//! Out: a [`Sizing`] when a cheaper type fits: the type, the vCPUs and memory needed, the
//! utilisation projected on it, the savings per hour as an interval, and a confidence.
//!
//! Needed capacity = current capacity × utilisation to hold / target utilisation (70 % CPU and
//! 80 % memory by default); the CPU to hold is the forecast where there is one, else the p95. Candidates share the current type's region and architecture (an
//! image built for x86 does not boot on Arm), and burstable `t` families are offered only to
//! resources already on one (their CPU credits make p95 a poor guide). The interval and the
//! confidence come from a day-block bootstrap of the samples (seeded): each resample yields
//! its own p95s and its own cheapest fit; the savings interval is the 5–95 % range of those
//! fits' savings, the confidence the share of resamples that pick the same type. A forecast's
//! quantile already holds its own uncertainty: with one, only memory is resampled.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::catalogue::{Catalogue, InstanceType};
use crate::stats::quantile;

/// Target utilisations, percent.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Headroom {
    #[serde(default = "cpu_target")]
    pub cpu_target: f64,
    #[serde(default = "memory_target")]
    pub memory_target: f64,
}

fn cpu_target() -> f64 {
    70.0
}
fn memory_target() -> f64 {
    80.0
}

impl Default for Headroom {
    fn default() -> Self {
        Headroom {
            cpu_target: cpu_target(),
            memory_target: memory_target(),
        }
    }
}

/// A recommended size.
#[derive(Debug, Clone, PartialEq)]
pub struct Sizing {
    pub to: InstanceType,
    pub cpu_p95: f64,
    /// The forecast CPU held instead of the p95, percent.
    pub cpu_forecast: Option<f64>,
    pub memory_p95: Option<f64>,
    pub vcpu_needed: f64,
    pub memory_needed: f64,
    /// The CPU held (forecast or p95) projected on the new type, percent.
    pub projected_cpu: f64,
    /// USD per hour: point, 5 % and 95 %.
    pub savings: f64,
    pub savings_low: f64,
    pub savings_high: f64,
    pub confidence: f64,
}

/// The 95th percentile of the samples' values; none without samples.
fn p95(samples: impl Iterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = samples.collect();
    (!v.is_empty()).then(|| quantile(&mut v, 0.95))
}

/// The cheapest type in the current one's region and architecture with at least `vcpu` and
/// `memory` (ties: fewer vCPUs, then name).
pub fn cheapest_fit<'a>(
    catalogue: &'a Catalogue,
    current: &'a InstanceType,
    vcpu: f64,
    memory: f64,
) -> Option<&'a InstanceType> {
    let burstable = |t: &InstanceType| t.family.starts_with('t');
    catalogue
        .in_region(&current.region)
        .filter(|t| t.arch == current.arch)
        .filter(|t| burstable(current) || !burstable(t))
        .filter(|t| f64::from(t.vcpu) >= vcpu && t.memory_gib >= memory)
        .min_by(|a, b| {
            a.on_demand
                .total_cmp(&b.on_demand)
                .then(a.vcpu.cmp(&b.vcpu))
                .then(a.name.cmp(&b.name))
        })
}

/// What the samples say, when a cheaper type fits. `cpu` and `memory` are (µs, percent);
/// `cpu_forecast` (percent), when given, is the CPU to hold instead of the samples' p95.
pub fn assess(
    catalogue: &Catalogue,
    current: &InstanceType,
    cpu: &[(i64, f64)],
    memory: &[(i64, f64)],
    cpu_forecast: Option<f64>,
    headroom: Headroom,
    seed: u64,
) -> Option<Sizing> {
    let fit = |cpu_p95: f64, mem_p95: Option<f64>| {
        let vcpu = f64::from(current.vcpu) * cpu_p95 / headroom.cpu_target;
        let mem = mem_p95.map_or(current.memory_gib, |m| {
            current.memory_gib * m / headroom.memory_target
        });
        cheapest_fit(catalogue, current, vcpu, mem).map(|t| (t, vcpu, mem))
    };
    let cpu_p95 = p95(cpu.iter().map(|s| s.1))?;
    let mem_p95 = p95(memory.iter().map(|s| s.1));
    let held = cpu_forecast.unwrap_or(cpu_p95);
    let (to, vcpu_needed, memory_needed) = fit(held, mem_p95)?;
    if to.on_demand >= current.on_demand || to.name == current.name {
        return None;
    }
    // Day-block bootstrap.
    const DAY: i64 = 86_400_000_000;
    let days = |s: &[(i64, f64)]| -> Vec<Vec<f64>> {
        let mut by: std::collections::BTreeMap<i64, Vec<f64>> = Default::default();
        for &(t, v) in s {
            by.entry(t.div_euclid(DAY)).or_default().push(v);
        }
        by.into_values().collect()
    };
    let (cpu_days, mem_days) = (days(cpu), days(memory));
    let mut rng = StdRng::seed_from_u64(seed);
    let mut draw = |blocks: &[Vec<f64>]| -> Option<f64> {
        p95((0..blocks.len())
            .flat_map(|_| blocks[rng.random_range(0..blocks.len())].iter().copied()))
    };
    const RESAMPLES: usize = 200;
    let mut savings = Vec::with_capacity(RESAMPLES);
    let mut same = 0usize;
    for _ in 0..RESAMPLES {
        let c = match cpu_forecast {
            Some(f) => f,
            None => draw(&cpu_days).unwrap_or(cpu_p95),
        };
        let m = if mem_days.is_empty() {
            None
        } else {
            draw(&mem_days)
        };
        // A resample with no fit keeps the current type: no savings.
        let (name, price) = fit(c, m).map_or((current.name.as_str(), current.on_demand), |f| {
            (f.0.name.as_str(), f.0.on_demand.min(current.on_demand))
        });
        same += usize::from(name == to.name);
        savings.push(current.on_demand - price);
    }
    let lo = quantile(&mut savings.clone(), 0.05);
    let hi = quantile(&mut savings, 0.95);
    Some(Sizing {
        to: to.clone(),
        cpu_p95,
        cpu_forecast,
        memory_p95: mem_p95,
        vcpu_needed,
        memory_needed,
        projected_cpu: held * f64::from(current.vcpu) / f64::from(to.vcpu),
        savings: current.on_demand - to.on_demand,
        savings_low: lo,
        savings_high: hi,
        confidence: same as f64 / RESAMPLES as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalogue() -> Catalogue {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("catalogue/aws-ec2.csv");
        Catalogue::load(&path).unwrap()
    }

    fn samples(days: i64, level: f64, swing: f64) -> Vec<(i64, f64)> {
        (0..days * 288)
            .map(|i| {
                let t = i * 300_000_000;
                let phase = (i % 288) as f64 / 288.0 * std::f64::consts::TAU;
                (t, level + swing * phase.sin())
            })
            .collect()
    }

    #[test]
    fn an_idle_instance_moves_to_the_cheapest_type_that_fits_with_headroom() {
        let c = catalogue();
        let current = c.get("m5.2xlarge", "us-east-1").unwrap().clone();
        // p95 CPU ≈ 19.9 % of 8 vCPUs → 2.3 vCPUs needed at 70 %; memory p95 ≈ 30 % of 32 GiB → 12 GiB.
        let s = assess(
            &c,
            &current,
            &samples(7, 12.0, 8.0),
            &samples(7, 25.0, 5.0),
            None,
            Headroom::default(),
            3,
        )
        .unwrap();
        assert!(f64::from(s.to.vcpu) >= s.vcpu_needed && s.to.memory_gib >= s.memory_needed);
        assert_eq!(s.to.arch, current.arch);
        // Every type in the region and architecture that fits costs at least as much.
        let cheapest = c
            .in_region("us-east-1")
            .filter(|t| t.arch == "x86_64" && !t.family.starts_with('t'))
            .filter(|t| f64::from(t.vcpu) >= s.vcpu_needed && t.memory_gib >= s.memory_needed)
            .map(|t| t.on_demand)
            .fold(f64::INFINITY, f64::min);
        assert_eq!(s.to.on_demand, cheapest);
        assert_eq!(s.to.name, "m5.xlarge");
        assert!((s.savings - (0.384 - 0.192)).abs() < 1e-12);
        assert!(s.savings_low <= s.savings && s.savings <= s.savings_high + 1e-12);
        assert!(s.confidence > 0.9, "{s:?}");
        assert!(s.projected_cpu < 70.0);
    }

    #[test]
    fn a_busy_instance_gets_no_recommendation() {
        let c = catalogue();
        let current = c.get("c5.xlarge", "us-east-1").unwrap().clone();
        assert!(
            assess(
                &c,
                &current,
                &samples(3, 60.0, 20.0),
                &[],
                None,
                Headroom::default(),
                1
            )
            .is_none()
        );
    }

    #[test]
    fn a_forecast_is_held_in_place_of_the_past_p95() {
        let c = catalogue();
        let current = c.get("m5.2xlarge", "us-east-1").unwrap().clone();
        let (cpu, memory) = (samples(7, 12.0, 8.0), samples(7, 25.0, 5.0));
        let assess = |forecast| {
            assess(
                &c,
                &current,
                &cpu,
                &memory,
                forecast,
                Headroom::default(),
                3,
            )
        };
        // The past p95 (≈ 19.9 %) needs 2.3 vCPUs: m5.xlarge. A day forecast to stay under 8 %
        // needs 0.9 vCPUs, and memory (12 GiB) then decides: r5.large (2 vCPUs, 16 GiB).
        let by_history = assess(None).unwrap();
        assert_eq!(by_history.to.name, "m5.xlarge");
        let quiet = assess(Some(8.0)).unwrap();
        assert_eq!(quiet.to.name, "r5.large");
        assert_eq!(quiet.cpu_forecast, Some(8.0));
        assert!(
            (quiet.vcpu_needed - 8.0 * 8.0 / 70.0).abs() < 1e-9,
            "{quiet:?}"
        );
        assert_eq!(quiet.cpu_p95, by_history.cpu_p95);
        assert!((quiet.projected_cpu - 8.0 * 8.0 / 2.0).abs() < 1e-9);
        // Demand forecast to grow to 80 % of 8 vCPUs needs 9.1: nothing cheaper holds it.
        assert!(assess(Some(80.0)).is_none());
        // Only memory is resampled: the choice is as sure as memory makes it.
        assert!(quiet.confidence > 0.9, "{quiet:?}");
    }
}
