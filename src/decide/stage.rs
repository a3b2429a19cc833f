//! The decision stages of a pipeline: `alert` (the alert policy over a score stage's rows) and
//! `recommend` (spot / on-demand and instance mix from hourly spot prices; rightsizing from
//! utilisation windows and, where the pipeline forecasts demand, its CPU forecasts) — and, run the same way, `forecast` (see `forecast::stage`).
//!
//! In: each cycle's batches of the stage's input, and the input's watermark.
//! Out: alert rows ([`super::rows::alert_schema`]) or recommendation rows
//! ([`super::rows::recommendation_schema`]). State (open alerts, correlation groups, price and
//! utilisation history, what was last issued) is JSON in the pipeline's checkpoint, so a
//! restart continues where the last committed cycle left off.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use arrow::array::{Array, RecordBatch};
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use serde::{Deserialize, Serialize};

use super::alert::{AlertMessage, AlertPolicy, Policy, Severity, Status, Suppressed};
use super::catalogue::{Catalogue, region_of};
use super::feedback::{Feedback, FeedbackSpec, Verdict};
use super::mix::{self, Choice, Purchase, Requirement, Weights};
use super::recommend::{Issued, Kind, Line, MONTH_HOURS, ParetoPoint, Recommendation};
use super::rightsize::{self, Headroom};
use super::rows::{self, AlertInput};
use super::spot::{self, InterruptionProxy, PriceOutlook, Workload};
use crate::columns::{f64s, micros, utf8};
use crate::forecast::model::{ForecastError, Steps, offset, pooled_quantile};
use crate::forecast::stage::{FollowedForecast, ForecastRef, HourlySeries, inputs, to_values};
use crate::operator::{self, Collector, Context, Operator, OperatorError, OperatorState};

/// A checked alert stage.
#[derive(Debug, Clone)]
pub struct AlertSpec {
    pub policy: Policy,
    pub input: AlertInput,
    pub schema: SchemaRef,
    /// Where verdicts on its alerts come from, if anywhere.
    pub feedback: Option<FeedbackSpec>,
}

/// Spot / on-demand and instance mix per declared workload, from hourly spot prices.
#[derive(Debug, Clone)]
pub struct SpotSpec {
    pub stage: String,
    /// Columns of the input: instance type, zone, the hour's start and its mean price.
    pub instance_type: String,
    pub az: String,
    pub time: String,
    pub price: String,
    pub workloads: Vec<Workload>,
    pub catalogue: Catalogue,
    /// The spot price forecast model (`FEATURES` in, quantiles out), followed in the registry;
    /// without one, each pool's own past changes are its forecast distribution.
    pub model: Option<ForecastRef>,
    pub proxy: InterruptionProxy,
    pub weights: Weights,
    pub paths: usize,
    /// Hours the savings are planned over (a month).
    pub hours: f64,
    /// History a pool needs before it is forecast, µs (hours without a price change have no
    /// row: the price held).
    pub min_history: i64,
}

/// Rightsizing per resource from utilisation windows.
#[derive(Debug, Clone)]
pub struct RightsizeSpec {
    pub stage: String,
    pub resource: String,
    pub metric: String,
    pub value: String,
    pub time: String,
    pub instance_type: String,
    pub region: String,
    pub cpu_metric: String,
    pub memory_metric: String,
    /// µs.
    pub span: i64,
    pub every: i64,
    pub min_history: i64,
    pub headroom: Headroom,
    pub catalogue: Catalogue,
    /// The demand forecast CPU is sized by, where a resource has a fresh one.
    pub forecast: Option<DemandForecast>,
}

/// A forecast stage's rows a rightsizing stage sizes CPU by (its side input): per resource,
/// the quantiles issued from its latest origin, whose pooled 95th percentile is the CPU the
/// hours ahead are forecast to stay under 95 % of the time.
#[derive(Debug, Clone)]
pub struct DemandForecast {
    pub stage: String,
    /// Its columns: the resource (its key), the origin, and the 2.5 … 97.5 % quantiles.
    pub resource: String,
    pub origin: String,
    pub quantiles: [String; 5],
}

/// A forecast older than this (from its origin to the newest utilisation window) is not sized
/// by: the resource stopped being forecast.
const FRESH_FORECAST: i64 = 3 * HOUR;

/// A running alert stage: the alert policy over a score stage's rows.
pub struct AlertOperator {
    spec: AlertSpec,
    policy: AlertPolicy,
    /// Its alerts of the feedback window and the verdicts on them (kept only with a feedback
    /// input).
    feedback: Feedback,
    /// Whether its `stratus_alerts_total` series are exported yet.
    exported: bool,
}

impl AlertOperator {
    pub fn new(spec: AlertSpec) -> Self {
        AlertOperator {
            policy: AlertPolicy::new(spec.policy.clone()),
            spec,
            feedback: Feedback::default(),
            exported: false,
        }
    }

    /// The alert rows one input batch causes.
    pub fn apply(&mut self, batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
        let messages = self.observe(batch)?;
        rows::alert_rows(&self.spec.schema, &messages)
    }

    fn observe(&mut self, batch: &RecordBatch) -> Result<Vec<AlertMessage>, ArrowError> {
        Ok(rows::observations(&self.spec.input, batch)?
            .iter()
            .flat_map(|o| self.policy.observe(o))
            .collect())
    }

    /// Counts `messages` by severity and status, notes the alerts they open for their
    /// verdicts, and emits them.
    fn emit(
        &mut self,
        messages: &[AlertMessage],
        ctx: &Context<'_>,
        out: &mut Collector,
    ) -> operator::Result<()> {
        for m in messages {
            if self.spec.feedback.is_some() && m.status == Status::Firing {
                let waited = self.feedback.opened(&m.alert_id, m.started_at);
                count_verdict(waited, ctx);
            }
            ctx.metrics
                .alerts
                .with_label_values(&[
                    ctx.pipeline,
                    ctx.stage,
                    m.severity.as_str(),
                    m.status.as_str(),
                ])
                .inc();
        }
        if !messages.is_empty() {
            out.collect(rows::alert_rows(&self.spec.schema, messages)?);
        }
        Ok(())
    }
}

/// Counts `verdict`, if any, as its stage's.
fn count_verdict(verdict: Option<Verdict>, ctx: &Context<'_>) {
    if let Some(v) = verdict {
        ctx.metrics
            .alert_feedback
            .with_label_values(&[ctx.pipeline, ctx.stage, v.as_str()])
            .inc();
    }
}

/// The checkpoint part of a decision stage's state (JSON).
const STATE_PART: &str = "decisions";
/// Where an alert stage's feedback state goes in its checkpoint's manifest.
const FEEDBACK: &str = "feedback";

fn state_error(message: String) -> OperatorError {
    OperatorError::State {
        part: STATE_PART.into(),
        message,
    }
}

#[async_trait::async_trait]
impl Operator for AlertOperator {
    /// Exports every severity and status at 0 before the first alert, so that rules and
    /// dashboards see the series.
    async fn on_cycle_start(&mut self, ctx: &Context<'_>) {
        if std::mem::replace(&mut self.exported, true) {
            return;
        }
        for severity in Severity::ALL {
            for status in Status::ALL {
                ctx.metrics
                    .alerts
                    .with_label_values(&[
                        ctx.pipeline,
                        ctx.stage,
                        severity.as_str(),
                        status.as_str(),
                    ])
                    .inc_by(0);
            }
        }
        if let Some(f) = &self.spec.feedback {
            for v in Verdict::ALL {
                ctx.metrics
                    .alert_feedback
                    .with_label_values(&[ctx.pipeline, ctx.stage, v.as_str()])
                    .inc_by(0);
            }
            ctx.metrics
                .alert_false_positive_threshold
                .with_label_values(&ctx.labels())
                .set(f.max_false_positive_rate);
        }
    }

    /// Takes verdicts on the stage's alerts.
    async fn process_side(
        &mut self,
        _input: &str,
        batch: &RecordBatch,
        ctx: &Context<'_>,
    ) -> operator::Result<()> {
        let (ids, verdicts, ts) = (
            utf8(batch, "alert_id")?,
            utf8(batch, "verdict")?,
            micros(batch, "ts")?,
        );
        for i in 0..batch.num_rows() {
            if ids.is_null(i) || verdicts.is_null(i) || ts.is_null(i) {
                continue;
            }
            let Some(verdict) = Verdict::parse(verdicts.value(i)) else {
                tracing::debug!(
                    "stage {}: verdict {:?} on alert {} is neither `true` nor `noise`",
                    ctx.stage,
                    verdicts.value(i),
                    ids.value(i)
                );
                continue;
            };
            let counted = self.feedback.verdict(ids.value(i), verdict, ts.value(i));
            count_verdict(counted, ctx);
        }
        Ok(())
    }

    async fn process_batch(
        &mut self,
        batch: &RecordBatch,
        ctx: &Context<'_>,
        out: &mut Collector,
    ) -> operator::Result<()> {
        let messages = self.observe(batch)?;
        self.emit(&messages, ctx, out)
    }

    /// Resolves the alerts of keys that went silent.
    async fn handle_watermark(
        &mut self,
        watermark: i64,
        ctx: &Context<'_>,
        out: &mut Collector,
    ) -> operator::Result<i64> {
        if watermark != i64::MIN {
            let messages = self.policy.advance(watermark);
            self.emit(&messages, ctx, out)?;
            if let Some(f) = &self.spec.feedback {
                self.feedback.expire(watermark, f.window);
            }
        }
        Ok(watermark)
    }

    /// Sets what the policy held back so far.
    fn on_cycle_end(&mut self, ctx: &Context<'_>) {
        let s: &Suppressed = &self.policy.suppressed;
        for (reason, n) in [
            ("maintenance", s.maintenance),
            ("flapping", s.flapping),
            ("duplicate", s.duplicate),
        ] {
            ctx.metrics
                .alerts_suppressed
                .with_label_values(&[ctx.pipeline, ctx.stage, reason])
                .set(n as i64);
        }
    }

    fn snapshot(&self) -> operator::Result<OperatorState> {
        let json = self
            .policy
            .snapshot()
            .map_err(|e| state_error(e.to_string()))?;
        let mut state = OperatorState::text(STATE_PART, json)?;
        if self.spec.feedback.is_some() {
            state.meta = serde_json::json!({
                FEEDBACK: serde_json::to_value(&self.feedback)
                    .map_err(|e| state_error(e.to_string()))?
            });
        }
        Ok(state)
    }

    fn restore(&mut self, state: OperatorState) -> operator::Result<()> {
        if let Some(json) = state.read_text(STATE_PART)? {
            self.policy
                .restore(json)
                .map_err(|e| state_error(format!("alert state: {e}")))?;
        }
        if let Some(feedback) = state.meta.get(FEEDBACK) {
            self.feedback = serde_json::from_value(feedback.clone())
                .map_err(|e| state_error(format!("alert feedback state: {e}")))?;
        }
        Ok(())
    }
}

/// Counts a recommend stage's rows by kind, and emits them.
fn emit_recommendations(
    recs: &[Recommendation],
    ctx: &Context<'_>,
    out: &mut Collector,
) -> operator::Result<()> {
    for r in recs {
        ctx.metrics
            .recommendations
            .with_label_values(&[ctx.pipeline, ctx.stage, r.kind.as_str()])
            .inc();
    }
    if !recs.is_empty() {
        out.collect(rows::recommendation_rows(recs)?);
    }
    Ok(())
}

const HOUR: i64 = 3_600_000_000;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct SpotState {
    /// Per pool (its [`pool_key`]): (hour start µs, mean price), the trailing 8 days.
    pools: HourlySeries,
    issued: Issued,
}

pub struct SpotOperator {
    spec: SpotSpec,
    model: Option<FollowedForecast>,
    state: SpotState,
}

/// A pool's key: its instance type and zone.
fn pool_key(instance_type: &str, az: &str) -> String {
    crate::keys::join([instance_type, az])
}

/// Whether the pool of `key` is in zone `az`.
fn in_zone(key: &str, az: &str) -> bool {
    crate::keys::split(key).nth(1) == Some(az)
}

/// Std of the hourly relative changes of `prices` over their last week.
fn volatility(prices: &VecDeque<(i64, f64)>) -> f64 {
    let newest = prices.back().map_or(0, |p| p.0);
    let changes: Vec<f64> = prices
        .iter()
        .zip(prices.iter().skip(1))
        .filter(|(a, _)| a.0 >= newest - 7 * 24 * HOUR && a.1 > 0.0)
        .map(|(a, b)| b.1 / a.1 - 1.0)
        .collect();
    if changes.len() < 2 {
        return 0.0;
    }
    let mean = changes.iter().sum::<f64>() / changes.len() as f64;
    (changes.iter().map(|c| (c - mean).powi(2)).sum::<f64>() / (changes.len() - 1) as f64).sqrt()
}

/// Why a spot recommendation could not be made for a workload.
#[derive(Debug, thiserror::Error)]
pub enum RecommendError {
    /// The price forecast model failed.
    #[error(transparent)]
    Forecast(#[from] ForecastError),
    /// The instance mix could not be solved (other than for want of a feasible mix).
    #[error("workload {workload}: {source}")]
    Mix {
        workload: String,
        source: mix::MixError,
    },
}

impl SpotOperator {
    /// `storage_options` reach an `s3://` model registry.
    pub fn open(
        spec: SpotSpec,
        storage_options: &HashMap<String, String>,
    ) -> Result<Self, ForecastError> {
        let model = spec
            .model
            .as_ref()
            .map(|m| FollowedForecast::open(m, storage_options))
            .transpose()?;
        Ok(SpotOperator {
            spec,
            model,
            state: SpotState::default(),
        })
    }

    /// The recommendation rows one input batch causes.
    pub fn apply(&mut self, batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
        rows::recommendation_rows(&self.recommendations(batch)?)
    }

    fn recommendations(&mut self, batch: &RecordBatch) -> Result<Vec<Recommendation>, ArrowError> {
        let types = utf8(batch, &self.spec.instance_type)?;
        let zones = utf8(batch, &self.spec.az)?;
        let times = micros(batch, &self.spec.time)?;
        let prices = f64s(batch, &self.spec.price)?;
        let mut touched = BTreeSet::new();
        for i in 0..batch.num_rows() {
            if types.is_null(i) || zones.is_null(i) || times.is_null(i) || prices.is_null(i) {
                continue;
            }
            let (t, p) = (times.value(i), prices.value(i));
            if !(p.is_finite() && p >= 0.0) {
                continue;
            }
            let key = pool_key(types.value(i), zones.value(i));
            self.state.pools.insert(&key, t, p);
            touched.insert(key);
        }
        let mut out = Vec::new();
        for w in self.spec.workloads.clone() {
            let relevant = touched.contains(&pool_key(&w.instance_type, &w.az))
                || (w.requirement.is_some() && touched.iter().any(|k| in_zone(k, &w.az)));
            if !relevant {
                continue;
            }
            let recs = self
                .recommend(&w)
                .map_err(|e| ArrowError::ComputeError(e.to_string()))?;
            out.extend(recs.into_iter().filter_map(|r| self.state.issued.issue(r)));
        }
        Ok(out)
    }

    /// The price outlook of a pool at its newest hour: its (hour, quantiles) at 1, 6 and 24
    /// hours, from the model or, without one, the pool's own past changes.
    fn outlook(&mut self, pool: &str) -> Result<Option<(i64, PriceOutlook)>, RecommendError> {
        let Some(prices) = self.state.pools.get(pool) else {
            return Ok(None);
        };
        let Some(t) = prices.back().map(|p| p.0) else {
            return Ok(None);
        };
        let horizons = [HOUR, 6 * HOUR, 24 * HOUR];
        let Some((rows, levels, c)) = inputs(prices, t, &horizons, self.spec.min_history) else {
            return Ok(None);
        };
        let relative: Vec<[f64; 5]> = match &mut self.model {
            Some(m) => m.predict(&rows)?,
            None => {
                let steps = Steps {
                    name: pool.to_string(),
                    times: prices.iter().map(|p| p.0).collect(),
                    values: prices.iter().map(|p| p.1).collect(),
                };
                let c = offset(&steps, t);
                horizons
                    .iter()
                    .map(|&h| empirical_changes(&steps, h, c))
                    .collect()
            }
        };
        let out = horizons
            .iter()
            .zip(relative)
            .zip(levels)
            .map(|((&h, q), level)| ((h / HOUR) as f64, to_values(q, level, c)))
            .collect();
        Ok(Some((
            t,
            PriceOutlook {
                horizons: out,
                volatility: volatility(prices),
            },
        )))
    }

    fn recommend(&mut self, w: &Workload) -> Result<Vec<Recommendation>, RecommendError> {
        let mut out = Vec::new();
        let region = region_of(&w.az).to_string();
        let Some(it) = self.spec.catalogue.get(&w.instance_type, &region).cloned() else {
            return Ok(out);
        };
        let current = vec![Line {
            instance_type: w.instance_type.clone(),
            purchase: w.purchase,
            count: w.count,
        }];
        if let Some((t, outlook)) = self.outlook(&pool_key(&w.instance_type, &w.az))? {
            let seed = super::stable_hash(&[&self.spec.stage, &w.name, &t.to_string()]);
            let a = spot::assess(
                w,
                it.on_demand,
                self.spec.hours,
                &outlook,
                self.spec.proxy,
                self.spec.paths,
                seed,
            );
            let scale = MONTH_HOURS / self.spec.hours;
            // Savings of the recommended option over the current one.
            let sign = if w.purchase == Purchase::OnDemand {
                1.0
            } else {
                -1.0
            };
            let (mut lo, mut hi) = (sign * a.savings_p05 * scale, sign * a.savings_p95 * scale);
            if lo > hi {
                std::mem::swap(&mut lo, &mut hi);
            }
            let median = outlook.horizons.last().map_or(0.0, |(_, q)| q[2]);
            let forecaster = self
                .model
                .as_ref()
                .map_or("the pool's past changes", |m| m.label());
            out.push(Recommendation {
                rec_id: String::new(),
                revision: 0,
                ts: t + HOUR,
                kind: Kind::SpotVsOnDemand,
                subject: w.name.clone(),
                current: current.clone(),
                recommended: vec![Line {
                    purchase: a.recommend,
                    ..current[0].clone()
                }],
                savings: sign * a.savings_mean * scale,
                savings_low: lo,
                savings_high: hi,
                risk_score: a.p_miss,
                confidence: a.confidence,
                rationale: format!(
                    "{} × {} in {}: spot is forecast at {median:.4} USD/h in 24 h by {forecaster} (on demand {:.4}); \
                     price volatility {:.3} suggests a {:.0} % monthly interruption chance per instance, \
                     so {:.1} interruptions a month and a {:.1} % chance of missing the {:.2} % availability \
                     target, against a tolerance of {:.0} % ({:?}); {} paths, seed {seed:x}.",
                    w.count,
                    w.instance_type,
                    w.az,
                    it.on_demand,
                    outlook.volatility,
                    a.interruption_monthly * 100.0,
                    a.expected_interruptions * MONTH_HOURS / self.spec.hours,
                    a.p_miss * 100.0,
                    w.availability_target * 100.0,
                    w.interruption_tolerance.max_miss_probability() * 100.0,
                    w.interruption_tolerance,
                    a.paths,
                ),
                pareto: Vec::new(),
            });
        }
        if let Some(req) = &w.requirement
            && let Some(rec) = self.mix(w, req, &region, &current)?
        {
            out.push(rec);
        }
        Ok(out)
    }

    /// The instance mix for `w` over the types with a spot pool in its zone (and its own type).
    fn mix(
        &mut self,
        w: &Workload,
        req: &Requirement,
        region: &str,
        current: &[Line],
    ) -> Result<Option<Recommendation>, RecommendError> {
        let pools: Vec<String> = self
            .state
            .pools
            .keys()
            .filter(|k| in_zone(k, &w.az))
            .map(str::to_string)
            .collect();
        let mut choices = Vec::new();
        let mut quantiles = Vec::new();
        let mut newest = i64::MIN;
        let mut names: BTreeSet<String> = BTreeSet::from([w.instance_type.clone()]);
        for pool in &pools {
            let Some((t, outlook)) = self.outlook(pool)? else {
                continue;
            };
            let name = crate::keys::split(pool)
                .next()
                .unwrap_or_default()
                .to_string();
            let Some(it) = self.spec.catalogue.get(&name, region) else {
                continue;
            };
            newest = newest.max(t);
            let q = outlook.horizons.last().map_or([it.on_demand; 5], |h| h.1);
            choices.push(Choice {
                instance_type: name.clone(),
                purchase: Purchase::Spot,
                vcpu: it.vcpu,
                memory_gib: it.memory_gib,
                price: spot::quantile_at(&q, 0.5).clamp(0.0, it.on_demand),
                risk: self.spec.proxy.monthly(outlook.volatility),
            });
            quantiles.push(Some((q, it.on_demand)));
            names.insert(name);
        }
        if newest == i64::MIN {
            return Ok(None);
        }
        for name in &names {
            if let Some(it) = self.spec.catalogue.get(name, region) {
                choices.push(Choice {
                    instance_type: name.clone(),
                    purchase: Purchase::OnDemand,
                    vcpu: it.vcpu,
                    memory_gib: it.memory_gib,
                    price: it.on_demand,
                    risk: 0.0,
                });
                quantiles.push(None);
            }
        }
        let mix_error = |source| RecommendError::Mix {
            workload: w.name.clone(),
            source,
        };
        let chosen = match mix::solve(&choices, req, self.spec.weights, None) {
            Ok(m) => m,
            Err(mix::MixError::Infeasible) => return Ok(None),
            Err(e) => return Err(mix_error(e)),
        };
        let front = mix::pareto(&choices, req).map_err(mix_error)?;
        let current_cost: f64 = current
            .iter()
            .map(|l| {
                let od = self
                    .spec
                    .catalogue
                    .get(&l.instance_type, region)
                    .map_or(0.0, |t| t.on_demand);
                let price = choices
                    .iter()
                    .find(|c| c.instance_type == l.instance_type && c.purchase == l.purchase)
                    .map_or(od, |c| c.price);
                price * f64::from(l.count)
            })
            .sum();
        // The chosen mix's cost at a price level u of every spot pool.
        let cost_at = |u: f64| -> f64 {
            choices
                .iter()
                .zip(&quantiles)
                .zip(&chosen.counts)
                .map(|((c, q), &n)| {
                    let p = q.map_or(c.price, |(q, cap)| spot::quantile_at(&q, u).clamp(0.0, cap));
                    p * f64::from(n)
                })
                .sum()
        };
        let draws = 200;
        let cheaper = (0..draws)
            .filter(|k| cost_at((f64::from(*k) + 0.5) / f64::from(draws)) < current_cost)
            .count();
        let recommended: Vec<Line> = choices
            .iter()
            .zip(&chosen.counts)
            .filter(|(_, n)| **n > 0)
            .map(|(c, &n)| Line {
                instance_type: c.instance_type.clone(),
                purchase: c.purchase,
                count: n,
            })
            .collect();
        let pareto = front
            .iter()
            .map(|m| ParetoPoint {
                cost_usd_hour: m.cost,
                risk: m.risk,
                performance: m.performance,
                mix: m.describe(&choices),
                chosen: m.counts == chosen.counts,
            })
            .collect();
        Ok(Some(Recommendation {
            rec_id: String::new(),
            revision: 0,
            ts: newest + HOUR,
            kind: Kind::InstanceMix,
            subject: w.name.clone(),
            current: current.to_vec(),
            recommended,
            savings: (current_cost - chosen.cost) * MONTH_HOURS,
            savings_low: (current_cost - cost_at(0.95)) * MONTH_HOURS,
            savings_high: (current_cost - cost_at(0.05)) * MONTH_HOURS,
            risk_score: chosen.risk,
            confidence: cheaper as f64 / f64::from(draws),
            rationale: format!(
                "{} vCPU and {} GiB needed, at most {} instances of at least {} types, none above {:.0} %, \
                 {:.0} % of vCPUs on demand: the least-cost mix under weights cost {}, risk {}, performance {} \
                 is {} at {:.3} USD/h (now {:.3}); expected monthly interruption exposure {:.1} % of the vCPUs; \
                 {} mixes on the cost / risk / performance front.",
                req.vcpu,
                req.memory_gib,
                req.max_count,
                req.min_types,
                req.max_share * 100.0,
                req.on_demand_base * 100.0,
                self.spec.weights.cost,
                self.spec.weights.risk,
                self.spec.weights.performance,
                chosen.describe(&choices),
                chosen.cost,
                current_cost,
                chosen.risk * 100.0,
                front.len(),
            ),
            pareto,
        }))
    }
}

/// Without a model: the quantiles of the pool's own relative changes over `h` (its history as
/// the forecast distribution), in `ln(y + c)` units.
fn empirical_changes(s: &Steps, h: i64, c: f64) -> [f64; 5] {
    let g = |y: f64| (y + c).max(1e-12).ln();
    let mut changes: Vec<f64> = s
        .times
        .iter()
        .filter_map(|&t| Some(g(s.at(t + h)?) - g(s.at(t)?)))
        .collect();
    let mut out = [0.0; 5];
    if !changes.is_empty() {
        for (o, l) in out.iter_mut().zip(spot::QUANTILE_LEVELS) {
            *o = crate::stats::quantile(&mut changes, l);
        }
    }
    out
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Usage {
    instance_type: String,
    region: String,
    cpu: VecDeque<(i64, f64)>,
    memory: VecDeque<(i64, f64)>,
    last_assessed: Option<i64>,
    /// The latest demand forecast: its origin (µs) and the quantiles issued from it, one set
    /// per horizon.
    #[serde(default)]
    outlook: Option<(i64, Vec<[f64; 5]>)>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct RightsizeState {
    resources: BTreeMap<String, Usage>,
    issued: Issued,
}

pub struct RightsizeOperator {
    spec: RightsizeSpec,
    state: RightsizeState,
}

impl RightsizeOperator {
    pub fn new(spec: RightsizeSpec) -> Self {
        RightsizeOperator {
            spec,
            state: RightsizeState::default(),
        }
    }

    /// The recommendation rows one input batch causes.
    pub fn apply(&mut self, batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
        rows::recommendation_rows(&self.recommendations(batch)?)
    }

    /// Takes the demand forecast's rows: per resource, the quantiles of its latest origin.
    pub fn observe_forecasts(&mut self, batch: &RecordBatch) -> Result<(), ArrowError> {
        let Some(f) = &self.spec.forecast else {
            return Ok(());
        };
        let resources = utf8(batch, &f.resource)?;
        let origins = micros(batch, &f.origin)?;
        let quantiles = f
            .quantiles
            .iter()
            .map(|c| f64s(batch, c))
            .collect::<Result<Vec<_>, _>>()?;
        for i in 0..batch.num_rows() {
            if resources.is_null(i) || origins.is_null(i) || quantiles.iter().any(|q| q.is_null(i))
            {
                continue;
            }
            let origin = origins.value(i);
            let q: [f64; 5] = std::array::from_fn(|j| quantiles[j].value(i));
            let u = self
                .state
                .resources
                .entry(resources.value(i).to_string())
                .or_default();
            match &mut u.outlook {
                Some((o, rows)) if *o == origin => rows.push(q),
                Some((o, _)) if *o > origin => {}
                _ => u.outlook = Some((origin, vec![q])),
            }
        }
        Ok(())
    }

    fn recommendations(&mut self, batch: &RecordBatch) -> Result<Vec<Recommendation>, ArrowError> {
        let s = &self.spec;
        let resources = utf8(batch, &s.resource)?;
        let metrics = utf8(batch, &s.metric)?;
        let types = utf8(batch, &s.instance_type)?;
        let regions = utf8(batch, &s.region)?;
        let times = micros(batch, &s.time)?;
        let values = f64s(batch, &s.value)?;
        let mut touched = BTreeSet::new();
        for i in 0..batch.num_rows() {
            if [&resources, &metrics, &types, &regions]
                .iter()
                .any(|a| a.is_null(i))
                || times.is_null(i)
                || values.is_null(i)
            {
                continue;
            }
            let series = match metrics.value(i) {
                m if m == s.cpu_metric => 0,
                m if m == s.memory_metric => 1,
                _ => continue,
            };
            let u = self
                .state
                .resources
                .entry(resources.value(i).to_string())
                .or_default();
            u.instance_type = types.value(i).to_string();
            u.region = regions.value(i).to_string();
            let (t, v) = (times.value(i), values.value(i));
            let q = if series == 0 {
                &mut u.cpu
            } else {
                &mut u.memory
            };
            q.push_back((t, v));
            let newest = q.iter().map(|x| x.0).max().unwrap_or(t);
            q.retain(|x| x.0 > newest - s.span);
            touched.insert(resources.value(i).to_string());
        }
        let mut out = Vec::new();
        for r in touched {
            let Some(u) = self.state.resources.get_mut(&r) else {
                continue;
            };
            let newest = u.cpu.back().map_or(i64::MIN, |x| x.0);
            let oldest = u.cpu.front().map_or(i64::MAX, |x| x.0);
            if newest.saturating_sub(oldest) < s.min_history
                || u.last_assessed.is_some_and(|l| newest - l < s.every)
            {
                continue;
            }
            u.last_assessed = Some(newest);
            let Some(current) = s.catalogue.get(&u.instance_type, &u.region) else {
                continue;
            };
            let cpu: Vec<(i64, f64)> = u.cpu.iter().copied().collect();
            let mem: Vec<(i64, f64)> = u.memory.iter().copied().collect();
            let seed = super::stable_hash(&[&s.stage, &r, &newest.to_string()]);
            let line = |name: &str| Line {
                instance_type: name.to_string(),
                purchase: Purchase::OnDemand,
                count: 1,
            };
            // Keep as is: issues nothing, and forgets the last recommendation.
            let keep = Recommendation {
                rec_id: String::new(),
                revision: 0,
                ts: newest,
                kind: Kind::Rightsizing,
                subject: r.clone(),
                current: vec![line(&current.name)],
                recommended: vec![line(&current.name)],
                savings: 0.0,
                savings_low: 0.0,
                savings_high: 0.0,
                risk_score: 0.0,
                confidence: 1.0,
                rationale: String::new(),
                pareto: Vec::new(),
            };
            let forecast = u
                .outlook
                .as_ref()
                .filter(|(origin, _)| newest - origin <= FRESH_FORECAST)
                .and_then(|(_, rows)| pooled_quantile(rows, 0.95));
            let sized = rightsize::assess(
                &s.catalogue,
                current,
                &cpu,
                &mem,
                forecast,
                s.headroom,
                seed,
            );
            let rec = match sized {
                Some(z) => Recommendation {
                    recommended: vec![line(&z.to.name)],
                    savings: z.savings * MONTH_HOURS,
                    savings_low: z.savings_low * MONTH_HOURS,
                    savings_high: z.savings_high * MONTH_HOURS,
                    risk_score: 1.0 - z.confidence,
                    confidence: z.confidence,
                    rationale: format!(
                        "{} of {} vCPUs{} over the last {:.0} h needs {:.1} vCPUs and {:.1} GiB at \
                         {:.0} % CPU / {:.0} % memory targets; {} ({} vCPU, {} GiB, {:.4} USD/h) is the cheapest \
                         {} type that fits, projected CPU {:.1} %.",
                        match z.cpu_forecast {
                            Some(f) => format!(
                                "forecast p95 CPU {f:.1} % over the hours ahead (past p95 {:.1} %)",
                                z.cpu_p95
                            ),
                            None => format!("p95 CPU {:.1} %", z.cpu_p95),
                        },
                        current.vcpu,
                        z.memory_p95.map_or(String::new(), |m| format!(
                            ", p95 memory {m:.1} % of {} GiB",
                            current.memory_gib
                        )),
                        (newest - oldest) as f64 / HOUR as f64,
                        z.vcpu_needed,
                        z.memory_needed,
                        s.headroom.cpu_target,
                        s.headroom.memory_target,
                        z.to.name,
                        z.to.vcpu,
                        z.to.memory_gib,
                        z.to.on_demand,
                        current.arch,
                        z.projected_cpu,
                    ),
                    ..keep
                },
                None => keep,
            };
            out.extend(self.state.issued.issue(rec));
        }
        Ok(out)
    }
}

#[async_trait::async_trait]
impl Operator for SpotOperator {
    async fn process_batch(
        &mut self,
        batch: &RecordBatch,
        ctx: &Context<'_>,
        out: &mut Collector,
    ) -> operator::Result<()> {
        let recs = self.recommendations(batch)?;
        emit_recommendations(&recs, ctx, out)
    }

    async fn on_cycle_start(&mut self, ctx: &Context<'_>) {
        if let Some(model) = self.model.as_mut() {
            model.report_drift(ctx);
            model.on_cycle_start(ctx).await;
        }
    }

    fn snapshot(&self) -> operator::Result<OperatorState> {
        OperatorState::json(STATE_PART, &self.state)
    }

    fn restore(&mut self, state: OperatorState) -> operator::Result<()> {
        state.restore_json(STATE_PART, &mut self.state)
    }
}

#[async_trait::async_trait]
impl Operator for RightsizeOperator {
    async fn process_batch(
        &mut self,
        batch: &RecordBatch,
        ctx: &Context<'_>,
        out: &mut Collector,
    ) -> operator::Result<()> {
        let recs = self.recommendations(batch)?;
        emit_recommendations(&recs, ctx, out)
    }

    async fn process_side(
        &mut self,
        _input: &str,
        batch: &RecordBatch,
        _ctx: &Context<'_>,
    ) -> operator::Result<()> {
        Ok(self.observe_forecasts(batch)?)
    }

    fn snapshot(&self) -> operator::Result<OperatorState> {
        OperatorState::json(STATE_PART, &self.state)
    }

    fn restore(&mut self, state: OperatorState) -> operator::Result<()> {
        state.restore_json(STATE_PART, &mut self.state)
    }
}
