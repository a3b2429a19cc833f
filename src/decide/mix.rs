//! Instance mix: how many of each instance type, on demand or spot, meet a workload's CPU and
//! memory needs at the least expected cost, under diversity and count constraints — solved
//! exactly as a mixed-integer program (`good_lp` over the pure-Rust `microlp` solver), not by
//! a hand-written search.
//!
//! In: the candidate [`Choice`]s (a type and a purchase option, with its expected price and
//! its interruption risk) and the workload's [`Requirement`].
//! Out: the [`Mix`] that minimises the weighted objective, and the cost / risk / performance
//! Pareto front ([`pareto`]).
//!
//! The program, for counts `x[c]` (integers in `0..=max_count`) and `used[t]` (binaries, one per
//! type):
//! - `Σ vcpu·x ≥ vcpu_needed` and `Σ memory·x ≥ memory_needed`;
//! - `Σ x ≤ max_count`;
//! - diversity: `Σ used ≥ min_types`, with `used[t] ≤ Σ_type x ≤ max_count·used[t]`, and no type above
//!   `max_share` of the instances (`Σ_type x − max_share·Σ x ≤ 0`);
//! - availability: on-demand vCPUs at least `on_demand_base` of the vCPUs needed;
//! - optionally `risk ≤ cap` (the ε-constraint points of the front).
//!
//! Its three figures, all linear in `x`: **cost**, the expected USD per hour; **risk**, the
//! expected share of the needed vCPUs interrupted in a month (`Σ p·vcpu·x / vcpu_needed`, `p`
//! a spot choice's monthly interruption probability, 0 on demand); **performance**, the vCPUs
//! delivered per vCPU needed (headroom). The objective is
//! `w_cost·cost/cost_scale + w_risk·risk − w_perf·(performance − 1)`, `cost_scale` being the
//! cost of meeting the vCPU need at the cheapest on-demand price per vCPU.

use good_lp::{
    Expression, ProblemVariables, ResolutionError, Solution, SolverModel, Variable, constraint,
    microlp, variable,
};
use serde::{Deserialize, Serialize};

/// How an instance is bought.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purchase {
    OnDemand,
    Spot,
}

impl Purchase {
    pub fn as_str(self) -> &'static str {
        match self {
            Purchase::OnDemand => "on_demand",
            Purchase::Spot => "spot",
        }
    }
}

/// One way to buy one instance type.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    pub instance_type: String,
    pub purchase: Purchase,
    pub vcpu: u32,
    pub memory_gib: f64,
    /// Expected USD per hour.
    pub price: f64,
    /// Probability of an interruption in a month (0 on demand).
    pub risk: f64,
}

/// What a workload needs.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Requirement {
    pub vcpu: f64,
    pub memory_gib: f64,
    /// Most instances in all.
    pub max_count: u32,
    /// Fewest distinct instance types.
    #[serde(default = "one")]
    pub min_types: u32,
    /// Largest share of the instances one type may have, in (0, 1].
    #[serde(default = "whole")]
    pub max_share: f64,
    /// Share of the needed vCPUs that must be on demand, in [0, 1].
    #[serde(default)]
    pub on_demand_base: f64,
}

fn one() -> u32 {
    1
}
fn whole() -> f64 {
    1.0
}

/// How much cost, risk and performance weigh in the objective.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Weights {
    #[serde(default = "one_f")]
    pub cost: f64,
    #[serde(default = "one_f")]
    pub risk: f64,
    #[serde(default)]
    pub performance: f64,
}

fn one_f() -> f64 {
    1.0
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            cost: 1.0,
            risk: 1.0,
            performance: 0.0,
        }
    }
}

/// A solution: a count per choice (same order as the choices) and its figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Mix {
    pub counts: Vec<u32>,
    /// USD per hour.
    pub cost: f64,
    pub risk: f64,
    pub performance: f64,
}

impl Mix {
    /// The figures of `counts`.
    pub fn of(choices: &[Choice], req: &Requirement, counts: Vec<u32>) -> Mix {
        let sum = |f: &dyn Fn(&Choice) -> f64| -> f64 {
            choices
                .iter()
                .zip(&counts)
                .map(|(c, &n)| f(c) * f64::from(n))
                .sum()
        };
        Mix {
            cost: sum(&|c| c.price),
            risk: sum(&|c| c.risk * f64::from(c.vcpu)) / req.vcpu,
            performance: sum(&|c| f64::from(c.vcpu)) / req.vcpu,
            counts,
        }
    }

    /// Whether every constraint holds (what the solver guarantees; the tests check it).
    pub fn feasible(&self, choices: &[Choice], req: &Requirement) -> bool {
        let total: u32 = self.counts.iter().sum();
        let sum = |f: &dyn Fn(&Choice) -> f64| -> f64 {
            choices
                .iter()
                .zip(&self.counts)
                .map(|(c, &n)| f(c) * f64::from(n))
                .sum()
        };
        let per_type = per_type_counts(choices, &self.counts);
        let eps = 1e-9;
        sum(&|c| f64::from(c.vcpu)) >= req.vcpu - eps
            && sum(&|c| c.memory_gib) >= req.memory_gib - eps
            && total <= req.max_count
            && per_type.iter().filter(|(_, n)| *n > 0).count() >= req.min_types as usize
            && per_type
                .iter()
                .all(|(_, n)| f64::from(*n) <= req.max_share * f64::from(total) + eps)
            && sum(&|c| match c.purchase {
                Purchase::OnDemand => f64::from(c.vcpu),
                Purchase::Spot => 0.0,
            }) >= req.on_demand_base * req.vcpu - eps
    }

    /// The objective's value under `weights`.
    pub fn objective(&self, weights: Weights, scale: f64) -> f64 {
        weights.cost * self.cost / scale + weights.risk * self.risk
            - weights.performance * (self.performance - 1.0)
    }

    /// `3 × m5.large (spot), 1 × c5.xlarge (on demand)`.
    pub fn describe(&self, choices: &[Choice]) -> String {
        let parts: Vec<String> = choices
            .iter()
            .zip(&self.counts)
            .filter(|(_, n)| **n > 0)
            .map(|(c, n)| {
                format!(
                    "{n} × {} ({})",
                    c.instance_type,
                    c.purchase.as_str().replace('_', " ")
                )
            })
            .collect();
        parts.join(", ")
    }

    fn dominates(&self, other: &Mix) -> bool {
        let eps = 1e-9;
        let no_worse = self.cost <= other.cost + eps
            && self.risk <= other.risk + eps
            && self.performance >= other.performance - eps;
        let better = self.cost < other.cost - eps
            || self.risk < other.risk - eps
            || self.performance > other.performance + eps;
        no_worse && better
    }
}

/// Instances per type (types in first-seen order).
fn per_type_counts(choices: &[Choice], counts: &[u32]) -> Vec<(String, u32)> {
    let mut out: Vec<(String, u32)> = Vec::new();
    for (c, &n) in choices.iter().zip(counts) {
        match out.iter_mut().find(|(t, _)| *t == c.instance_type) {
            Some((_, m)) => *m += n,
            None => out.push((c.instance_type.clone(), n)),
        }
    }
    out
}

/// The objective's cost scale: the vCPU need at the cheapest on-demand price per vCPU (or any
/// price, without an on-demand choice).
pub fn cost_scale(choices: &[Choice], req: &Requirement) -> f64 {
    let per_vcpu = |c: &Choice| c.price / f64::from(c.vcpu.max(1));
    let best = choices
        .iter()
        .filter(|c| c.purchase == Purchase::OnDemand)
        .map(per_vcpu)
        .fold(f64::INFINITY, f64::min);
    let best = if best.is_finite() {
        best
    } else {
        choices.iter().map(per_vcpu).fold(f64::INFINITY, f64::min)
    };
    (best * req.vcpu).max(1e-9)
}

/// Why no mix was found.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MixError {
    #[error(
        "no mix of the candidate types meets the requirement (check vcpu, memory_gib, max_count, min_types and max_share)"
    )]
    Infeasible,
    #[error("the requirement is invalid: {0}")]
    Invalid(String),
    #[error("the solver failed: {0}")]
    Solver(String),
}

/// Checks a requirement's numbers before anything is solved.
pub fn check_requirement(req: &Requirement) -> Result<(), MixError> {
    let bad = |m: &str| Err(MixError::Invalid(m.to_string()));
    if !(req.vcpu.is_finite() && req.vcpu > 0.0) {
        return bad("vcpu must be a positive number");
    }
    if !(req.memory_gib.is_finite() && req.memory_gib >= 0.0) {
        return bad("memory_gib must be zero or more");
    }
    if req.max_count == 0 || req.max_count > 10_000 {
        return bad("max_count must be between 1 and 10000");
    }
    if !(req.max_share > 0.0 && req.max_share <= 1.0) {
        return bad("max_share must be in (0, 1]");
    }
    if !(0.0..=1.0).contains(&req.on_demand_base) {
        return bad("on_demand_base must be in [0, 1]");
    }
    Ok(())
}

/// The mix minimising the objective under `weights`, with `risk ≤ risk_cap` when given.
pub fn solve(
    choices: &[Choice],
    req: &Requirement,
    weights: Weights,
    risk_cap: Option<f64>,
) -> Result<Mix, MixError> {
    check_requirement(req)?;
    if choices.is_empty() {
        return Err(MixError::Infeasible);
    }
    let scale = cost_scale(choices, req);
    let mut vars = ProblemVariables::new();
    let x: Vec<Variable> = choices
        .iter()
        .map(|_| vars.add(variable().integer().min(0).max(req.max_count)))
        .collect();
    let types = per_type_counts(choices, &vec![0; choices.len()]);
    let used: Vec<Variable> = types
        .iter()
        .map(|_| vars.add(variable().binary()))
        .collect();
    let linear = |f: &dyn Fn(&Choice) -> f64| -> Expression {
        choices.iter().zip(&x).map(|(c, &v)| f(c) * v).sum()
    };
    let total: Expression = x.iter().copied().sum();
    let cost = linear(&|c| c.price);
    let risk = linear(&|c| c.risk * f64::from(c.vcpu) / req.vcpu);
    let perf = linear(&|c| f64::from(c.vcpu) / req.vcpu);
    let objective =
        weights.cost / scale * cost + weights.risk * risk.clone() - weights.performance * perf;
    let mut model = vars
        .minimise(objective)
        .using(microlp)
        .with(constraint!(linear(&|c| f64::from(c.vcpu)) >= req.vcpu))
        .with(constraint!(linear(&|c| c.memory_gib) >= req.memory_gib))
        .with(constraint!(total.clone() <= f64::from(req.max_count)))
        .with(constraint!(
            linear(&|c| match c.purchase {
                Purchase::OnDemand => f64::from(c.vcpu),
                Purchase::Spot => 0.0,
            }) >= req.on_demand_base * req.vcpu
        ));
    let used_sum: Expression = used.iter().copied().sum();
    model = model.with(constraint!(used_sum >= f64::from(req.min_types)));
    for ((name, _), &u) in types.iter().zip(&used) {
        let of_type: Expression = choices
            .iter()
            .zip(&x)
            .filter(|(c, _)| c.instance_type == *name)
            .map(|(_, &v)| v)
            .sum();
        // `used` is 1 exactly when the type has an instance.
        model = model.with(constraint!(of_type.clone() <= f64::from(req.max_count) * u));
        model = model.with(constraint!(of_type.clone() >= u));
        if req.max_share < 1.0 {
            model = model.with(constraint!(of_type - req.max_share * total.clone() <= 0));
        }
    }
    if let Some(cap) = risk_cap {
        model = model.with(constraint!(risk <= cap));
    }
    let solution = model.solve().map_err(|e| match e {
        ResolutionError::Infeasible => MixError::Infeasible,
        other => MixError::Solver(other.to_string()),
    })?;
    let counts = x
        .iter()
        .map(|&v| solution.value(v).round().max(0.0) as u32)
        .collect();
    let mix = Mix::of(choices, req, counts);
    if mix.feasible(choices, req) {
        Ok(mix)
    } else {
        Err(MixError::Solver(
            "the solver's rounded solution breaks a constraint".into(),
        ))
    }
}

/// The cost / risk / performance Pareto front: the solutions for a spread of weights and of
/// risk caps (ε-constraints, which also find points a weighted sum cannot), of which those no
/// other beats on all three figures, cheapest first.
pub fn pareto(choices: &[Choice], req: &Requirement) -> Result<Vec<Mix>, MixError> {
    let mut found: Vec<Mix> = Vec::new();
    let mut add = |m: Mix| {
        if !found.iter().any(|f| f.counts == m.counts) {
            found.push(m);
        }
    };
    for risk in [0.0, 0.5, 2.0, 8.0] {
        for performance in [0.0, 0.05, 0.2] {
            let w = Weights {
                cost: 1.0,
                risk,
                performance,
            };
            add(solve(choices, req, w, None)?);
        }
    }
    // Cheapest mixes under a falling risk cap, from the cheapest mix's risk down to none.
    let cheapest = solve(
        choices,
        req,
        Weights {
            cost: 1.0,
            risk: 0.0,
            performance: 0.0,
        },
        None,
    )?;
    for k in 1..=6 {
        let cap = cheapest.risk * (1.0 - f64::from(k) / 6.0);
        let w = Weights {
            cost: 1.0,
            risk: 1e-3,
            performance: 0.0,
        };
        match solve(choices, req, w, Some(cap)) {
            Ok(m) => add(m),
            Err(MixError::Infeasible) => break,
            Err(e) => return Err(e),
        }
    }
    let mut front: Vec<Mix> = found
        .iter()
        .filter(|m| !found.iter().any(|o| o.dominates(m)))
        .cloned()
        .collect();
    front.sort_by(|a, b| a.cost.total_cmp(&b.cost));
    Ok(front)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choice(t: &str, p: Purchase, vcpu: u32, mem: f64, price: f64, risk: f64) -> Choice {
        Choice {
            instance_type: t.into(),
            purchase: p,
            vcpu,
            memory_gib: mem,
            price,
            risk,
        }
    }

    fn small() -> Vec<Choice> {
        vec![
            choice("m5.large", Purchase::OnDemand, 2, 8.0, 0.096, 0.0),
            choice("m5.large", Purchase::Spot, 2, 8.0, 0.035, 0.08),
            choice("c5.xlarge", Purchase::OnDemand, 4, 8.0, 0.17, 0.0),
            choice("c5.xlarge", Purchase::Spot, 4, 8.0, 0.07, 0.15),
            choice("r5.large", Purchase::OnDemand, 2, 16.0, 0.126, 0.0),
        ]
    }

    /// Every count vector in `0..=max_count` per choice: the feasible one with the least objective.
    fn brute_force(choices: &[Choice], req: &Requirement, w: Weights) -> Option<Mix> {
        let scale = cost_scale(choices, req);
        let n = choices.len();
        let base = req.max_count + 1;
        let mut best: Option<Mix> = None;
        for code in 0..base.pow(n as u32) {
            let mut c = code;
            let counts: Vec<u32> = (0..n)
                .map(|_| {
                    let v = c % base;
                    c /= base;
                    v
                })
                .collect();
            let m = Mix::of(choices, req, counts);
            if m.feasible(choices, req)
                && best
                    .as_ref()
                    .is_none_or(|b| m.objective(w, scale) < b.objective(w, scale) - 1e-12)
            {
                best = Some(m);
            }
        }
        best
    }

    #[test]
    fn the_milp_optimum_equals_brute_force_on_small_cases() {
        let choices = small();
        let scale_free = |req: &Requirement| cost_scale(&choices, req);
        let mut cases = 0;
        for (vcpu, mem) in [(6.0, 16.0), (8.0, 40.0), (10.0, 24.0), (3.0, 30.0)] {
            for (min_types, max_share) in [(1, 1.0), (2, 0.75), (3, 0.5)] {
                for on_demand_base in [0.0, 0.5] {
                    for w in [
                        Weights {
                            cost: 1.0,
                            risk: 0.0,
                            performance: 0.0,
                        },
                        Weights {
                            cost: 1.0,
                            risk: 2.0,
                            performance: 0.0,
                        },
                        Weights {
                            cost: 1.0,
                            risk: 0.5,
                            performance: 0.1,
                        },
                    ] {
                        let req = Requirement {
                            vcpu,
                            memory_gib: mem,
                            max_count: 4,
                            min_types,
                            max_share,
                            on_demand_base,
                        };
                        let expected = brute_force(&choices, &req, w);
                        let got = solve(&choices, &req, w, None);
                        match (expected, got) {
                            (None, Err(MixError::Infeasible)) => {}
                            (Some(e), Ok(g)) => {
                                assert!(g.feasible(&choices, &req), "{req:?}: {g:?}");
                                let s = scale_free(&req);
                                assert!(
                                    (g.objective(w, s) - e.objective(w, s)).abs() < 1e-6,
                                    "{req:?} {w:?}: solver {g:?}, brute force {e:?}"
                                );
                                cases += 1;
                            }
                            (e, g) => panic!("{req:?} {w:?}: brute force {e:?}, solver {g:?}"),
                        }
                    }
                }
            }
        }
        assert!(cases >= 40, "only {cases} feasible cases");
    }

    #[test]
    fn the_front_is_non_dominated_feasible_and_spans_cost_and_risk() {
        let choices = small();
        let req = Requirement {
            vcpu: 12.0,
            memory_gib: 32.0,
            max_count: 8,
            min_types: 2,
            max_share: 0.75,
            on_demand_base: 0.0,
        };
        let front = pareto(&choices, &req).unwrap();
        assert!(front.len() >= 3, "{front:?}");
        for m in &front {
            assert!(m.feasible(&choices, &req));
            assert!(!front.iter().any(|o| o.dominates(m)));
        }
        // The cheapest point takes risk; the safest costs more and takes none.
        let cheapest = &front[0];
        let safest = front
            .iter()
            .min_by(|a, b| a.risk.total_cmp(&b.risk))
            .unwrap();
        assert!(cheapest.risk > 0.0 && safest.risk == 0.0 && safest.cost > cheapest.cost);
        // The chosen point under given weights is on (or equal in figures to a point of) the front.
        let chosen = solve(&choices, &req, Weights::default(), None).unwrap();
        assert!(!front.iter().any(|o| o.dominates(&chosen)));
    }

    #[test]
    fn impossible_and_invalid_requirements_are_errors() {
        let choices = small();
        let req = Requirement {
            vcpu: 100.0,
            memory_gib: 0.0,
            max_count: 3,
            min_types: 1,
            max_share: 1.0,
            on_demand_base: 0.0,
        };
        assert_eq!(
            solve(&choices, &req, Weights::default(), None),
            Err(MixError::Infeasible)
        );
        let bad = Requirement {
            max_share: 0.0,
            ..req
        };
        assert!(matches!(
            solve(&choices, &bad, Weights::default(), None),
            Err(MixError::Invalid(_))
        ));
    }
}
