//! Decisions: scores and forecasts become alerts and recommendations.
//!
//! In: the rows of a score stage (an anomaly score per key and window, with each detector's
//! contribution) and of spot price and utilisation stages.
//! Out: alert lifecycle messages ([`alert`]) and recommendations ([`recommend`]) as Arrow rows
//! ([`rows`]), which the pipeline's sinks send to Kafka and Delta like any other stage's rows;
//! their JSON form is `schemas/alert.json` and `schemas/recommendation.json`.
//!
//! - [`alert`]: severity, dedup, suppression, correlation, lifecycle;
//! - [`feedback`]: verdicts on alerts, for their false-positive rate;
//! - [`spot`]: spot or on demand per workload, by Monte Carlo over the price forecast;
//! - [`mix`]: the instance mix, as a mixed-integer program, and its Pareto front;
//! - [`rightsize`]: the cheapest type that holds the observed load;
//! - [`catalogue`]: instance types and prices;
//! - [`stage`]: the pipeline stages that run them;
//! - [`config`]: those stages as written in a pipeline file, and their checks.

pub mod alert;
pub mod catalogue;
pub mod config;
pub mod feedback;
pub mod mix;
pub mod recommend;
pub mod rightsize;
pub mod rows;
pub mod spot;
pub mod stage;

#[cfg(test)]
mod alert_tests;
#[cfg(test)]
mod stage_tests;

/// FNV-1a over the parts (separated), stable across runs and builds: ids and seeds.
pub fn stable_hash(parts: &[&str]) -> u64 {
    let mut h = FNV_OFFSET;
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h = fnv1a(h, &[0x1f]);
        }
        h = fnv1a(h, p.as_bytes());
    }
    h
}

/// FNV-1a over `bytes`, stable across runs and builds.
pub fn stable_hash_bytes(bytes: &[u8]) -> u64 {
    fnv1a(FNV_OFFSET, bytes)
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
