//! Streaming anomaly detectors beside the model, and the ensemble that combines them.
//!
//! In: per key, one `(event time, value)` at a time, in event-time order. Out: an anomaly score
//! in [0, 1] and each detector's contribution to it. Every detector scores a value against what
//! came strictly before it — a score at time t uses only data up to t.
//!
//! Detectors ([`DetectorSpec`]):
//! - `robust_z`: median / MAD of a trailing baseline ([`robust_z`]);
//! - `seasonal`: the same phase of the last few seasons, e.g. the same hour of the week
//!   ([`seasonal`]);
//! - `cusum`: level shifts and drifts ([`cusum`]);
//! - `zscore`: mean / σ of a trailing window, the classic baseline ([`zscore`]);
//! - `model`: a score computed elsewhere (an ONNX model) and passed in with the value.
//!
//! Each detector's statistic `x` (in σ, or in CUSUM units) becomes a score
//! `x² / (x² + a²)`, where `a` is that detector's alarm level (4 σ for the z-scores, `h` for
//! CUSUM): 0 for no deviation, ½ at the alarm level, towards 1 beyond. Each detector's score
//! then passes through its own [`likelihood`]: how unusual its last 10 scores are against its
//! last 7 days for this key, as `−log₁₀(tail probability) / 10`. Their weighted sum is the
//! combined evidence E (with weight 1 each, −log₁₀ of the product of the detectors' tail
//! probabilities, over 10), so one detector that is sure is not diluted by others that see
//! nothing; the ensemble score is `1 − e^(−E)` in [0, 1): 0.5 at E ≈ 0.69, a combined tail
//! probability near 10⁻⁷. A detector's contribution is its share of the score: its term times
//! score / E, so they sum to the score.
//!
//! State per key: a day of values for each of `robust_z`, `cusum` and the seasonal residuals
//! (7 kB each for 5-minute values), `seasons × period / width` buckets for `seasonal` (194 kB
//! for three weeks of 5-minute values, 16 kB with `width: 1h`), and a few numbers per
//! likelihood. All of it serialises, for checkpoints.

pub mod cusum;
pub mod likelihood;
pub mod robust_z;
pub mod seasonal;
pub mod trailing;
pub mod zscore;

use serde::{Deserialize, Serialize};

use crate::window::spec::parse_duration;

/// A deviation standing in for "infinitely far" where the baseline has no spread at all.
pub const MAX_DEVIATION: f64 = 1e6;

/// The σ at which a z-score detector's score is ½.
pub const Z_ALARM: f64 = 4.0;

/// Scores averaged into each likelihood step.
pub const LIKELIHOOD_AVERAGE: usize = 10;
/// Averaged scores seen before a likelihood is given.
pub const LIKELIHOOD_LEARN: usize = 150;

/// How each detector's scores become a likelihood, as a pipeline's score stage may set it
/// (`likelihood: {history: 7d, average: 10, learn: 150}`). The defaults suit minutes of
/// cadence; an hourly series learns in fewer steps and averages fewer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LikelihoodSpec {
    /// Span of the score history each step is judged against, e.g. "7d".
    #[serde(default = "likelihood_history")]
    pub history: String,
    /// Scores averaged into each step.
    #[serde(default = "likelihood_average")]
    pub average: usize,
    /// Steps seen before a likelihood is given (until then the detector says 0).
    #[serde(default = "likelihood_learn")]
    pub learn: usize,
}

fn likelihood_history() -> String {
    "7d".into()
}
fn likelihood_average() -> usize {
    LIKELIHOOD_AVERAGE
}
fn likelihood_learn() -> usize {
    LIKELIHOOD_LEARN
}

impl Default for LikelihoodSpec {
    fn default() -> Self {
        LikelihoodSpec {
            history: likelihood_history(),
            average: LIKELIHOOD_AVERAGE,
            learn: LIKELIHOOD_LEARN,
        }
    }
}

impl LikelihoodSpec {
    fn build(&self) -> Result<likelihood::Likelihood, String> {
        let history =
            parse_duration(&self.history).map_err(|e| format!("likelihood history: {e}"))?;
        if history <= 0 || self.average == 0 || self.learn == 0 {
            return Err("likelihood: history, average and learn must be positive".into());
        }
        Ok(likelihood::Likelihood::new(
            history,
            self.average,
            self.learn,
        ))
    }
}

/// One detector and its weight, as written in a pipeline file or given to `stratus evaluate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DetectorSpec {
    RobustZ {
        #[serde(default = "one")]
        weight: f64,
        /// Trailing baseline span, e.g. "24h".
        #[serde(default = "day")]
        baseline: String,
        #[serde(default = "min_points")]
        min_points: usize,
        /// The smallest scale (σ) as a share of the baseline's median: with 0.01, a deviation
        /// under 4 % of the usual value never reaches the alarm level, however flat the
        /// baseline. For money, where a cent on a steady bill is not an anomaly. Default 0.
        #[serde(default)]
        min_relative_scale: f64,
    },
    Seasonal {
        #[serde(default = "one")]
        weight: f64,
        /// Length of a season, e.g. "7d" (the same hour of the week) or "1d".
        #[serde(default = "week")]
        period: String,
        /// Width of the buckets a season is kept in, e.g. "1h"; default: the key's cadence.
        #[serde(default)]
        width: Option<String>,
        /// How many earlier seasons form the expectation.
        #[serde(default = "seasons")]
        seasons: u32,
        #[serde(default = "min_points")]
        min_points: usize,
    },
    Cusum {
        #[serde(default = "one")]
        weight: f64,
        #[serde(default = "day")]
        baseline: String,
        /// Slack: drifts smaller than `k` σ are not accumulated.
        #[serde(default = "half")]
        k: f64,
        /// Alarm level of the cumulative sum, in σ.
        #[serde(default = "five")]
        h: f64,
        #[serde(default = "min_points")]
        min_points: usize,
        /// The smallest σ of each standardised value, as for `robust_z`; a steady shift below
        /// it still accumulates.
        #[serde(default)]
        min_relative_scale: f64,
    },
    Zscore {
        #[serde(default = "one")]
        weight: f64,
        #[serde(default = "day")]
        window: String,
        #[serde(default = "min_points")]
        min_points: usize,
    },
    /// The model's own score in [0, 1], passed in beside the value.
    Model {
        #[serde(default = "one")]
        weight: f64,
    },
}

fn one() -> f64 {
    1.0
}
fn half() -> f64 {
    0.5
}
fn five() -> f64 {
    5.0
}
fn day() -> String {
    "24h".into()
}
fn week() -> String {
    "7d".into()
}
fn seasons() -> u32 {
    3
}
fn min_points() -> usize {
    12
}

fn relative_floor(detector: &str, share: f64) -> Result<f64, String> {
    if share.is_finite() && (0.0..1.0).contains(&share) {
        Ok(share)
    } else {
        Err(format!(
            "{detector}.min_relative_scale must be in [0, 1), not {share}"
        ))
    }
}

impl DetectorSpec {
    pub fn name(&self) -> &'static str {
        match self {
            DetectorSpec::RobustZ { .. } => "robust_z",
            DetectorSpec::Seasonal { .. } => "seasonal",
            DetectorSpec::Cusum { .. } => "cusum",
            DetectorSpec::Zscore { .. } => "zscore",
            DetectorSpec::Model { .. } => "model",
        }
    }

    pub fn weight(&self) -> f64 {
        match self {
            DetectorSpec::RobustZ { weight, .. }
            | DetectorSpec::Seasonal { weight, .. }
            | DetectorSpec::Cusum { weight, .. }
            | DetectorSpec::Zscore { weight, .. }
            | DetectorSpec::Model { weight } => *weight,
        }
    }

    /// The default ensemble: robust z-score over a day, the same hour of the week, and CUSUM.
    pub fn default_ensemble() -> Vec<DetectorSpec> {
        vec![
            DetectorSpec::RobustZ {
                weight: 1.0,
                baseline: day(),
                min_points: min_points(),
                min_relative_scale: 0.0,
            },
            DetectorSpec::Seasonal {
                weight: 1.0,
                period: week(),
                width: None,
                seasons: seasons(),
                min_points: min_points(),
            },
            DetectorSpec::Cusum {
                weight: 1.0,
                baseline: day(),
                k: half(),
                h: five(),
                min_points: min_points(),
                min_relative_scale: 0.0,
            },
        ]
    }

    /// A fresh detector, or what is wrong with the spec (for `stratus validate`).
    pub fn build(&self) -> Result<Detector, String> {
        let span = |what: &str, text: &str| {
            parse_duration(text)
                .map_err(|e| format!("{}.{what}: {e}", self.name()))
                .and_then(|us| {
                    if us > 0 {
                        Ok(us)
                    } else {
                        Err(format!("{}.{what} must be positive", self.name()))
                    }
                })
        };
        let w = self.weight();
        if !(w.is_finite() && w >= 0.0) {
            return Err(format!(
                "{}.weight must be a number ≥ 0, not {w}",
                self.name()
            ));
        }
        Ok(match self {
            DetectorSpec::RobustZ {
                baseline,
                min_points,
                min_relative_scale,
                ..
            } => Detector::RobustZ(
                robust_z::RobustZ::new(span("baseline", baseline)?, (*min_points).max(2))
                    .with_relative_floor(relative_floor("robust_z", *min_relative_scale)?),
            ),
            DetectorSpec::Seasonal {
                period,
                width,
                seasons,
                min_points,
                ..
            } => {
                let period = span("period", period)?;
                let width = width.as_deref().map(|w| span("width", w)).transpose()?;
                if width.is_some_and(|w| w >= period) {
                    return Err("seasonal.width must be shorter than seasonal.period".into());
                }
                if *seasons == 0 {
                    return Err("seasonal.seasons must be at least 1".into());
                }
                Detector::Seasonal(seasonal::Seasonal::new(
                    period,
                    width,
                    *seasons,
                    (*min_points).max(2),
                ))
            }
            DetectorSpec::Cusum {
                baseline,
                k,
                h,
                min_points,
                min_relative_scale,
                ..
            } => {
                let floor = relative_floor("cusum", *min_relative_scale)?;
                if !(k.is_finite() && *k >= 0.0 && h.is_finite() && *h > 0.0) {
                    return Err("cusum.k must be ≥ 0 and cusum.h > 0".into());
                }
                Detector::Cusum(
                    cusum::Cusum::new(span("baseline", baseline)?, (*min_points).max(2), *k, *h)
                        .with_relative_floor(floor),
                )
            }
            DetectorSpec::Zscore {
                window, min_points, ..
            } => Detector::Zscore(zscore::RollingZ::new(
                span("window", window)?,
                (*min_points).max(2),
            )),
            DetectorSpec::Model { .. } => Detector::Model,
        })
    }
}

/// One detector's running state (serialisable, for checkpoints).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Detector {
    RobustZ(robust_z::RobustZ),
    Seasonal(seasonal::Seasonal),
    Cusum(cusum::Cusum),
    Zscore(zscore::RollingZ),
    Model,
}

impl Detector {
    /// This detector's score in [0, 1] for `value` at `ts_us`, or None while it warms up;
    /// `model` is the model's score for the same row, if there is one.
    /// A value that is not a finite number is neither scored nor learnt.
    pub fn observe(&mut self, ts_us: i64, value: f64, model: Option<f64>) -> Option<f64> {
        if !value.is_finite() && !matches!(self, Detector::Model) {
            return None;
        }
        match self {
            Detector::RobustZ(d) => d.observe(ts_us, value).map(|z| squash(z, Z_ALARM)),
            Detector::Seasonal(d) => d.observe(ts_us, value).map(|z| squash(z, Z_ALARM)),
            Detector::Cusum(d) => {
                let h = d.h();
                d.observe(ts_us, value).map(|s| squash(s, h))
            }
            Detector::Zscore(d) => d.observe(ts_us, value).map(|z| squash(z, Z_ALARM)),
            Detector::Model => model.filter(|s| s.is_finite()).map(|s| s.clamp(0.0, 1.0)),
        }
    }
}

/// `x² / (x² + alarm²)`: 0 at 0, ½ at the alarm level, approaching 1.
pub fn squash(x: f64, alarm: f64) -> f64 {
    if !x.is_finite() {
        return if x.is_nan() { 0.0 } else { 1.0 };
    }
    let x2 = x * x;
    x2 / (x2 + alarm * alarm)
}

/// The ensemble's verdict on one value.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// In [0, 1].
    pub score: f64,
    /// Each detector's weighted share of `score`, in the ensemble's order; they sum to `score`.
    pub contributions: Vec<f64>,
}

/// Detectors with weights, for one key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ensemble {
    names: Vec<String>,
    weights: Vec<f64>,
    detectors: Vec<Detector>,
    /// One per detector; empty for a plain ensemble.
    likelihoods: Vec<likelihood::Likelihood>,
}

impl Ensemble {
    /// Builds the detectors, each followed by its likelihood with the default settings; an
    /// error names the bad spec. At least one weight must be positive.
    pub fn new(specs: &[DetectorSpec]) -> Result<Self, String> {
        Self::with_likelihood(specs, &LikelihoodSpec::default())
    }

    /// As [`new`](Self::new), with the likelihood set as `likelihood` says.
    pub fn with_likelihood(
        specs: &[DetectorSpec],
        likelihood: &LikelihoodSpec,
    ) -> Result<Self, String> {
        let mut e = Self::plain(specs)?;
        e.likelihoods = specs
            .iter()
            .map(|_| likelihood.build())
            .collect::<Result<_, _>>()?;
        Ok(e)
    }

    /// The detectors' squashed scores combined as they are, with no likelihood: what a
    /// threshold on a plain z-score does.
    pub fn plain(specs: &[DetectorSpec]) -> Result<Self, String> {
        let total: f64 = specs.iter().map(DetectorSpec::weight).sum();
        let detectors = specs
            .iter()
            .map(DetectorSpec::build)
            .collect::<Result<Vec<_>, _>>()?;
        if total.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
            return Err("detectors: at least one weight must be positive".into());
        }
        Ok(Ensemble {
            names: specs.iter().map(|s| s.name().to_string()).collect(),
            weights: specs.iter().map(DetectorSpec::weight).collect(),
            detectors,
            likelihoods: Vec::new(),
        })
    }

    /// The detectors' names, in the order of [`Verdict::contributions`].
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Scores one value, then learns it. Where the value is not a finite number, only the
    /// `model` detector scores.
    pub fn observe(&mut self, ts_us: i64, value: f64, model: Option<f64>) -> Verdict {
        let mut contributions = Vec::with_capacity(self.detectors.len());
        for (i, (d, w)) in self.detectors.iter_mut().zip(&self.weights).enumerate() {
            let raw = d.observe(ts_us, value, model);
            let score = match self.likelihoods.get_mut(i) {
                Some(l) => l.observe(ts_us, raw),
                None => raw.unwrap_or(0.0),
            };
            contributions.push(w * score);
        }
        let evidence: f64 = contributions.iter().sum();
        let score = 1.0 - (-evidence.max(0.0)).exp();
        if evidence > 0.0 {
            for c in &mut contributions {
                *c *= score / evidence;
            }
        }
        Verdict {
            score,
            contributions,
        }
    }
}

#[cfg(test)]
mod tests;
