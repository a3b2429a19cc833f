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
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h ^= 0x1f;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        for b in p.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// A hash of `bytes` stable across runs and builds, eight bytes at a time (for keys hashed
/// often, where [`stable_hash`]'s byte at a time costs), its bits mixed evenly.
pub fn stable_hash_bytes(bytes: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h = bytes.len() as u64;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let w = u64::from_le_bytes(w.try_into().unwrap_or_default());
        h = (h.rotate_left(23) ^ w).wrapping_mul(K);
    }
    let mut last = [0u8; 8];
    last[..words.remainder().len()].copy_from_slice(words.remainder());
    h = (h.rotate_left(23) ^ u64::from_le_bytes(last)).wrapping_mul(K);
    // A finaliser (MurmurHash3's): every output bit depends on every input bit.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}
