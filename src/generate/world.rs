//! The synthetic fleet: instance types with their on-demand prices, zones, and resources with
//! a workload class each.

use rand::Rng;
use rand::rngs::StdRng;

/// An EC2 instance type: vCPUs, memory (GiB) and the us-east-1 Linux on-demand price
/// (USD/hour) as AWS lists it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InstanceType {
    pub name: &'static str,
    pub vcpu: u32,
    pub memory_gib: f64,
    pub on_demand: f64,
}

/// The types the generator uses (us-east-1 Linux on-demand list prices).
pub const CATALOGUE: [InstanceType; 6] = [
    InstanceType {
        name: "t3.medium",
        vcpu: 2,
        memory_gib: 4.0,
        on_demand: 0.0416,
    },
    InstanceType {
        name: "m5.large",
        vcpu: 2,
        memory_gib: 8.0,
        on_demand: 0.096,
    },
    InstanceType {
        name: "m5.xlarge",
        vcpu: 4,
        memory_gib: 16.0,
        on_demand: 0.192,
    },
    InstanceType {
        name: "c5.xlarge",
        vcpu: 4,
        memory_gib: 8.0,
        on_demand: 0.17,
    },
    InstanceType {
        name: "r5.large",
        vcpu: 2,
        memory_gib: 16.0,
        on_demand: 0.126,
    },
    InstanceType {
        name: "c5a.2xlarge",
        vcpu: 8,
        memory_gib: 16.0,
        on_demand: 0.308,
    },
];

pub const ZONES: [&str; 3] = ["us-east-1a", "us-east-1b", "us-east-1c"];
pub const ACCOUNTS: [&str; 4] = [
    "123456789012",
    "210987654321",
    "345678901234",
    "456789012345",
];

/// How a workload's load moves through the day and week.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Workload {
    /// Busy in the (UTC) afternoon on weekdays, quieter at weekends.
    Web,
    /// A nightly job from 01:00 to 04:00, sharp edges.
    Batch,
    /// Steady, small daily swing.
    Database,
    /// Working hours on weekdays only.
    Dev,
}

/// One instance.
#[derive(Debug, Clone)]
pub struct Resource {
    pub id: String,
    pub account: &'static str,
    pub zone: &'static str,
    pub instance: InstanceType,
    pub workload: Workload,
    pub group: String,
    /// Runs on spot capacity (billed at the spot price).
    pub spot: bool,
}

pub fn fleet(rng: &mut StdRng, n: usize) -> Vec<Resource> {
    (0..n)
        .map(|i| {
            let workload = match rng.random_range(0..10) {
                0..4 => Workload::Web,
                4..6 => Workload::Batch,
                6..8 => Workload::Database,
                _ => Workload::Dev,
            };
            Resource {
                id: format!("i-{:017x}", 0x5_7a7u64 * 0x1000 + i as u64),
                account: ACCOUNTS[rng.random_range(0..ACCOUNTS.len())],
                zone: ZONES[rng.random_range(0..ZONES.len())],
                instance: CATALOGUE[rng.random_range(0..CATALOGUE.len())],
                workload,
                group: format!("asg-{}", rng.random_range(0..8)),
                spot: rng.random_bool(0.2),
            }
        })
        .collect()
}

/// The workload's load factor at `t` (µs since the epoch): 0 (idle) to about 1 (peak).
pub fn load(workload: Workload, t: i64) -> f64 {
    let hours = t.rem_euclid(86_400_000_000) as f64 / 3_600_000_000.0;
    // 1970-01-01 was a Thursday: day 0 → Thursday; Saturday and Sunday are days 2 and 3.
    let weekday = (t.div_euclid(86_400_000_000) + 3).rem_euclid(7); // 0 = Monday
    let weekend = weekday >= 5;
    match workload {
        Workload::Web => {
            let daily = 0.5 + 0.5 * (std::f64::consts::TAU * (hours - 14.0) / 24.0).cos();
            if weekend {
                0.25 + 0.35 * daily
            } else {
                0.25 + 0.75 * daily
            }
        }
        Workload::Batch => {
            if (1.0..4.0).contains(&hours) {
                1.0
            } else {
                0.12
            }
        }
        Workload::Database => 0.55 + 0.1 * (std::f64::consts::TAU * (hours - 15.0) / 24.0).cos(),
        Workload::Dev => {
            if !weekend && (9.0..18.0).contains(&hours) {
                0.8
            } else {
                0.05
            }
        }
    }
}
