//! Spot or on demand, per workload: expected cost and risk by Monte Carlo over the forecast
//! spot price distribution, seeded so a run repeats exactly.
//!
//! In: a [`Workload`] (type, count, planning hours, its declared interruption tolerance and
//! availability target), the type's on-demand price, and a [`PriceOutlook`]: the spot price
//! quantiles (2.5, 10, 50, 90, 97.5 %) forecast at 1, 6 and 24 hours, and the observed price
//! volatility.
//! Out: an [`Assessment`]: the distribution of savings against on demand, the chance of
//! missing the availability target, and which purchase option to use.
//!
//! Each simulated path draws one quantile level `u` (a path is uniformly cheap or dear, since
//! errors at different horizons are strongly correlated) and prices hour 1 from the 1-hour
//! forecast, hours 2–12 from the 6-hour one and the rest of the planning span from the 24-hour
//! one, interpolating the quantile function linearly (and extrapolating its tails), clamped
//! to `[0, on-demand]` — AWS never charges more than on demand for spot capacity.
//!
//! Interruptions: AWS publishes no interruption rate per pool, so price volatility stands in
//! for it (a pool whose price moves is a pool whose capacity is contested): a month's
//! interruption probability per instance is `base + per_volatility × volatility`, clamped to
//! [0.01, 0.6], `volatility` being the standard deviation of the hourly relative price changes
//! over the trailing week. Interruptions per path are Poisson; each costs `restart_minutes` of
//! the instance (downtime) and of on-demand-priced relaunch overhead.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::mix::Purchase;

/// How much interruption a workload takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Tolerance {
    /// Never on spot.
    None,
    Low,
    Medium,
    High,
}

impl Tolerance {
    /// The largest acceptable chance of missing the availability target.
    pub fn max_miss_probability(self) -> f64 {
        match self {
            Tolerance::None => 0.0,
            Tolerance::Low => 0.01,
            Tolerance::Medium => 0.05,
            Tolerance::High => 0.2,
        }
    }
}

/// A workload as declared in the pipeline's `workloads` list.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    pub name: String,
    pub instance_type: String,
    /// Availability zone whose spot prices apply.
    pub az: String,
    pub count: u32,
    /// How it is bought now.
    pub purchase: Purchase,
    pub interruption_tolerance: Tolerance,
    /// Share of instance-hours that must be up, e.g. 0.99.
    pub availability_target: f64,
    /// Time lost per interruption.
    #[serde(default = "default_restart")]
    pub restart_minutes: f64,
    /// For `instance_mix`: what the workload needs.
    #[serde(default)]
    pub requirement: Option<super::mix::Requirement>,
}

fn default_restart() -> f64 {
    10.0
}

/// How volatility maps to interruption probability.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InterruptionProxy {
    pub base: f64,
    pub per_volatility: f64,
}

impl Default for InterruptionProxy {
    fn default() -> Self {
        InterruptionProxy {
            base: 0.03,
            per_volatility: 5.0,
        }
    }
}

impl InterruptionProxy {
    /// Probability of an instance being interrupted in a month (730 hours).
    pub fn monthly(&self, volatility: f64) -> f64 {
        (self.base + self.per_volatility * volatility.max(0.0)).clamp(0.01, 0.6)
    }
}

/// The spot price outlook of one pool.
#[derive(Debug, Clone, PartialEq)]
pub struct PriceOutlook {
    /// (horizon hours, price quantiles at QUANTILE_LEVELS), ascending horizons.
    pub horizons: Vec<(f64, [f64; 5])>,
    /// Std of hourly relative price changes, trailing week.
    pub volatility: f64,
}

/// The levels of the forecast quantiles.
pub const QUANTILE_LEVELS: [f64; 5] = [0.025, 0.1, 0.5, 0.9, 0.975];

/// The quantile function through `q` at `u`, linear between the given levels and extrapolated
/// from the outermost segment beyond them.
pub fn quantile_at(q: &[f64; 5], u: f64) -> f64 {
    let l = QUANTILE_LEVELS;
    let i = match l.iter().position(|&x| u < x) {
        Some(0) => 0,
        Some(i) => i - 1,
        None => 3,
    }
    .min(3);
    let slope = (q[i + 1] - q[i]) / (l[i + 1] - l[i]);
    q[i] + slope * (u - l[i])
}

impl PriceOutlook {
    /// The mean hourly price over `hours` on a path at level `u`, clamped to `[0, cap]`.
    fn mean_price(&self, u: f64, hours: f64, cap: f64) -> f64 {
        let price = |h: f64| -> f64 {
            let q = self
                .horizons
                .iter()
                .find(|(hz, _)| *hz >= h)
                .or(self.horizons.last())
                .map_or(cap, |(_, q)| quantile_at(q, u));
            price_clamp(q, cap)
        };
        let spans = [
            (1.0, price(1.0)),
            (12.0, price(6.0)),
            (f64::INFINITY, price(24.0)),
        ];
        let (mut total, mut from) = (0.0, 0.0);
        for (to, p) in spans {
            let to = f64::min(to, hours);
            if to > from {
                total += (to - from) * p;
                from = to;
            }
        }
        total / hours.max(1e-9)
    }
}

fn price_clamp(p: f64, cap: f64) -> f64 {
    if p.is_finite() {
        p.clamp(0.0, cap)
    } else {
        cap
    }
}

/// What the simulation found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Assessment {
    pub paths: usize,
    /// Savings of spot over on demand across the planning span, USD.
    pub savings_mean: f64,
    pub savings_p05: f64,
    pub savings_p95: f64,
    /// Chance spot saves money.
    pub p_saves: f64,
    /// Chance spot misses the availability target.
    pub p_miss: f64,
    /// Interruption probability per instance and month.
    pub interruption_monthly: f64,
    pub expected_interruptions: f64,
    /// The purchase option to use.
    pub recommend: Purchase,
    /// Share of paths on which that choice is the right one.
    pub confidence: f64,
}

/// Simulates `paths` futures of spot for `w`, seeded by `seed`.
pub fn assess(
    w: &Workload,
    on_demand: f64,
    hours: f64,
    outlook: &PriceOutlook,
    proxy: InterruptionProxy,
    paths: usize,
    seed: u64,
) -> Assessment {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = f64::from(w.count.max(1));
    let p_month = proxy.monthly(outlook.volatility);
    let rate = -(1.0 - p_month).ln() / 730.0; // per instance-hour
    let restart = w.restart_minutes.max(0.0) / 60.0;
    let on_demand_cost = on_demand * n * hours;
    let mut savings = Vec::with_capacity(paths);
    let (mut misses, mut interruptions, mut good_for_spot) = (0usize, 0.0, 0usize);
    for _ in 0..paths.max(1) {
        let u: f64 = rng.random();
        let price = outlook.mean_price(u, hours, on_demand);
        let k = poisson(&mut rng, rate * n * hours);
        interruptions += k as f64;
        let down = k as f64 * restart;
        let spot_cost = price * n * hours + down * on_demand;
        let availability = 1.0 - down / (n * hours);
        let s = on_demand_cost - spot_cost;
        let miss = availability < w.availability_target;
        misses += usize::from(miss);
        good_for_spot += usize::from(s > 0.0 && !miss);
        savings.push(s);
    }
    let total = savings.len() as f64;
    let p_miss = misses as f64 / total;
    let savings_mean = savings.iter().sum::<f64>() / total;
    let p_saves = savings.iter().filter(|s| **s > 0.0).count() as f64 / total;
    savings.sort_by(f64::total_cmp);
    let at = |q: f64| savings[((q * (total - 1.0)).round() as usize).min(savings.len() - 1)];
    let spot_ok = w.interruption_tolerance != Tolerance::None
        && p_miss <= w.interruption_tolerance.max_miss_probability()
        && savings_mean > 0.0;
    let recommend = if spot_ok {
        Purchase::Spot
    } else {
        Purchase::OnDemand
    };
    let spot_share = good_for_spot as f64 / total;
    Assessment {
        paths: savings.len(),
        savings_mean,
        savings_p05: at(0.05),
        savings_p95: at(0.95),
        p_saves,
        p_miss,
        interruption_monthly: p_month,
        expected_interruptions: interruptions / total,
        recommend,
        confidence: if spot_ok {
            spot_share
        } else {
            1.0 - spot_share
        },
    }
}

/// A Poisson draw: Knuth's product method for small means, a rounded normal for large ones.
fn poisson(rng: &mut StdRng, mean: f64) -> u64 {
    if mean <= 0.0 {
        return 0;
    }
    if mean > 50.0 {
        let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-300), rng.random());
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        return (mean + z * mean.sqrt()).round().max(0.0) as u64;
    }
    let limit = (-mean).exp();
    let (mut k, mut p) = (0u64, 1.0);
    loop {
        p *= rng.random::<f64>();
        if p <= limit {
            return k;
        }
        k += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(tolerance: Tolerance) -> Workload {
        Workload {
            name: "web".into(),
            instance_type: "m5.large".into(),
            az: "us-east-1a".into(),
            count: 4,
            purchase: Purchase::OnDemand,
            interruption_tolerance: tolerance,
            availability_target: 0.99,
            restart_minutes: 10.0,
            requirement: None,
        }
    }

    fn outlook(mid: f64, volatility: f64) -> PriceOutlook {
        let q = [mid * 0.8, mid * 0.9, mid, mid * 1.1, mid * 1.3];
        PriceOutlook {
            horizons: vec![(1.0, q), (6.0, q), (24.0, q)],
            volatility,
        }
    }

    #[test]
    fn a_seed_repeats_the_simulation_exactly_and_another_differs() {
        let w = workload(Tolerance::Medium);
        let o = outlook(0.035, 0.02);
        let p = InterruptionProxy::default();
        let a = assess(&w, 0.096, 730.0, &o, p, 2000, 7);
        assert_eq!(a, assess(&w, 0.096, 730.0, &o, p, 2000, 7));
        assert_ne!(a, assess(&w, 0.096, 730.0, &o, p, 2000, 8));
    }

    #[test]
    fn cheap_calm_spot_is_recommended_with_savings_near_the_price_gap() {
        let w = workload(Tolerance::Medium);
        let a = assess(
            &w,
            0.096,
            730.0,
            &outlook(0.035, 0.0),
            InterruptionProxy::default(),
            4000,
            1,
        );
        assert_eq!(a.recommend, Purchase::Spot);
        // The mean price of the outlook (its quantile function's mean) is near 0.0358.
        let gap = (0.096 - 0.0358) * 4.0 * 730.0;
        assert!((a.savings_mean - gap).abs() < 0.05 * gap, "{a:?} vs {gap}");
        assert!(a.savings_p05 < a.savings_mean && a.savings_mean < a.savings_p95);
        assert!(a.confidence > 0.9 && a.p_saves > 0.99);
    }

    #[test]
    fn tolerance_none_or_a_volatile_pool_keeps_on_demand() {
        let p = InterruptionProxy::default();
        let none = assess(
            &workload(Tolerance::None),
            0.096,
            730.0,
            &outlook(0.035, 0.0),
            p,
            2000,
            1,
        );
        assert_eq!(none.recommend, Purchase::OnDemand);
        // A pool so volatile that a month brings many restarts misses 99.9 % availability.
        let mut strict = workload(Tolerance::Low);
        strict.availability_target = 0.9995;
        strict.restart_minutes = 60.0;
        let v = assess(&strict, 0.096, 730.0, &outlook(0.035, 0.2), p, 2000, 1);
        assert!(v.p_miss > 0.01, "{v:?}");
        assert_eq!(v.recommend, Purchase::OnDemand);
    }

    #[test]
    fn the_quantile_function_interpolates_and_extrapolates() {
        let q = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(quantile_at(&q, 0.5), 3.0);
        assert!((quantile_at(&q, 0.3) - 2.5).abs() < 1e-12);
        assert!(quantile_at(&q, 0.0) < 1.0 && quantile_at(&q, 1.0) > 5.0);
    }
}
