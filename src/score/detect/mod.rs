//! Streaming anomaly detectors beside the model, and the ensemble that combines them.
//!
//! In: per key, one `(event time, value)` at a time, in event-time order. Out: an anomaly score
//! in [0, 1) and each detector's contribution to it. Every detector scores a value against what
//! came strictly before it — a score at time t uses only data up to t.
//!
//! Detectors ([`DetectorSpec`]):
//! - `robust_z`: median and scale of a trailing baseline ([`robust_z`]); with `smooth: k`, the
//!   mean of the last k values, for a level that moves rather than one spike;
//! - `seasonal`: the same phase of the last few seasons, e.g. the same time of day
//!   ([`seasonal`]);
//! - `cusum`: level shifts and drifts ([`cusum`]);
//! - `zscore`: mean / σ of a trailing window, the classic baseline ([`zscore`]);
//! - `model`: a score computed elsewhere (an ONNX model) and passed in with the value.
//!
//! Each detector says how far the value is from what it expected, in σ ([`Detector::deviation`]:
//! a z-score as it is, CUSUM's sum as `4 · S / h`, a model's score as the robust z of that
//! score against the key's earlier model scores, counted only above them). Of several
//! `seasonal` detectors (a day's and a week's season), only the one whose deviations on this
//! key have been lowest so far (weighted mean, half-life [`FIT_HALF_LIFE`] values) speaks: a
//! Monday morning after a quiet weekend is no anomaly to the week's season, whatever the
//! day's says. The ensemble's deviation is the largest weighted one; the key's [`calibration`] scales it against the key's
//! own history and raises it once per episode; the score is that calibrated deviation squashed
//! to [0, 1): ½ at the alarm level (6σ by default), whatever the key. A detector's contribution is its share of the score, in proportion to
//! its squared weighted deviation, so they sum to the score.
//!
//! The default ensemble ([`DetectorSpec::default_ensemble`]): the value (weight
//! [`VALUE_WEIGHT`]), the mean of the last 5 values, and the value against the same time of the
//! last 3 days, each against the key's last 2,000. `stratus evaluate detect` measures it beside
//! a robust z-score and a rolling z-score on labelled series (`models/README.md` has the
//! figures).
//!
//! State per key: 2,000 values for each `robust_z` and for the seasonal residuals (32 kB each),
//! `seasons × period / width` buckets for `seasonal` (28 kB for three days of 5-minute values),
//! and 2,000 deviations for the calibration: about 160 kB, bounded however long the key runs,
//! but several times the day of values the earlier detectors kept. All of it serialises, for
//! checkpoints.

pub mod calibration;
pub mod cusum;
pub mod robust_z;
pub mod seasonal;
pub mod trailing;
pub mod zscore;

use serde::{Deserialize, Serialize};

pub use calibration::{Calibration, CalibrationError, CalibrationSpec};
use robust_z::{Baseline, Scale};

use crate::duration::{DurationError, parse_duration};

/// What is wrong with a detector spec or with the calibration (for `stratus validate`); the
/// message names the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DetectError {
    /// A duration field (`robust_z.baseline`, `seasonal.period`, …) that does not parse.
    #[error("{detector}.{field}: {source}")]
    Duration {
        detector: &'static str,
        field: &'static str,
        source: DurationError,
    },
    /// A duration field of zero.
    #[error("{detector}.{field} must be positive")]
    NotPositive {
        detector: &'static str,
        field: &'static str,
    },
    #[error("{detector}.weight must be a number ≥ 0, not {weight}")]
    Weight { detector: &'static str, weight: f64 },
    #[error("{detector}.min_relative_scale must be in [0, 1), not {share}")]
    RelativeScale { detector: &'static str, share: f64 },
    /// A count or parameter out of its range, as the message says
    /// (`cusum.k must be ≥ 0 and cusum.h > 0`).
    #[error("{0}")]
    Setting(&'static str),
    #[error("detectors: at least one weight must be positive")]
    NoPositiveWeight,
    #[error(transparent)]
    Calibration(#[from] CalibrationError),
}

pub type Result<T, E = DetectError> = std::result::Result<T, E>;

/// A deviation standing in for "infinitely far" where the baseline has no spread at all.
pub const MAX_DEVIATION: f64 = 1e6;

/// The σ at which a z-score detector's score is ½.
pub const Z_ALARM: f64 = 4.0;

/// The weight of the value's own robust z in [`DetectorSpec::default_ensemble`]: below the
/// mean of 5 and the seasonal detector's 1, so a lone value counts where it clearly stands out
/// from both (on `nab-real-dev`, 146 false positives instead of 170 at the same recall;
/// `models/README.md`).
pub const VALUE_WEIGHT: f64 = 0.8;

/// One detector and its weight, as written in a pipeline file or given to `stratus evaluate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DetectorSpec {
    RobustZ {
        #[serde(default = "one")]
        weight: f64,
        /// Trailing baseline span, e.g. "24h"; default: any age (the last `points` values).
        #[serde(default)]
        baseline: Option<String>,
        /// The most values the baseline keeps (the newest).
        #[serde(default = "points")]
        points: usize,
        #[serde(default = "min_points")]
        min_points: usize,
        /// Values averaged into each scored value: 1 scores each value, 5 the mean of the
        /// last five (a level that moves rather than one spike).
        #[serde(default = "one_value")]
        smooth: usize,
        /// The baseline's spread: `mad_or_std` (default) or `mad`.
        #[serde(default)]
        scale: Scale,
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
        /// The most residuals their baseline keeps (the newest).
        #[serde(default = "points")]
        points: usize,
        /// The residuals' spread: `mad_or_std` (default) or `mad`.
        #[serde(default)]
        scale: Scale,
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
    /// The model's own score, passed in beside the value; judged against the key's earlier
    /// model scores (its last 2,000), only a higher one counts.
    Model {
        #[serde(default = "one")]
        weight: f64,
        #[serde(default = "min_points")]
        min_points: usize,
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
fn points() -> usize {
    2_000
}
fn one_value() -> usize {
    1
}

fn relative_floor(detector: &'static str, share: f64) -> Result<f64> {
    if share.is_finite() && (0.0..1.0).contains(&share) {
        Ok(share)
    } else {
        Err(DetectError::RelativeScale { detector, share })
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
            | DetectorSpec::Model { weight, .. } => *weight,
        }
    }

    /// The default ensemble: the value, the mean of its last 5, and the value against the
    /// same time of the last 3 days, each judged against the key's last 2,000. The value alone
    /// weighs [`VALUE_WEIGHT`]: once a day has been seen, the seasonal detector already judges
    /// single values, and the plain value then mostly adds one-value alarms on spiky keys.
    pub fn default_ensemble() -> Vec<DetectorSpec> {
        let robust_z = |weight, smooth| DetectorSpec::RobustZ {
            weight,
            baseline: None,
            points: points(),
            min_points: min_points(),
            smooth,
            scale: Scale::default(),
            min_relative_scale: 0.0,
        };
        vec![
            robust_z(VALUE_WEIGHT, 1),
            robust_z(1.0, 5),
            DetectorSpec::Seasonal {
                weight: 1.0,
                period: "1d".into(),
                width: None,
                seasons: seasons(),
                points: points(),
                scale: Scale::default(),
                min_points: min_points(),
            },
        ]
    }

    /// A fresh detector, or what is wrong with the spec (for `stratus validate`).
    pub fn build(&self) -> Result<Detector> {
        let detector = self.name();
        let span = |field: &'static str, text: &str| match parse_duration(text) {
            Ok(us) if us > 0 => Ok(us),
            Ok(_) => Err(DetectError::NotPositive { detector, field }),
            Err(source) => Err(DetectError::Duration {
                detector,
                field,
                source,
            }),
        };
        let w = self.weight();
        if !(w.is_finite() && w >= 0.0) {
            return Err(DetectError::Weight {
                detector,
                weight: w,
            });
        }
        Ok(match self {
            DetectorSpec::RobustZ {
                baseline,
                points,
                min_points,
                smooth,
                scale,
                min_relative_scale,
                ..
            } => {
                let span_us = match baseline {
                    Some(b) => span("baseline", b)?,
                    None => i64::MAX,
                };
                if *points == 0 || *smooth == 0 {
                    return Err(DetectError::Setting(
                        "robust_z.points and robust_z.smooth must be at least 1",
                    ));
                }
                Detector::RobustZ(
                    robust_z::RobustZ::new(Baseline {
                        span_us,
                        points: *points,
                        min_points: (*min_points).max(2),
                    })
                    .with_smoothing(*smooth)
                    .with_scale(*scale)
                    .with_relative_floor(relative_floor("robust_z", *min_relative_scale)?),
                )
            }
            DetectorSpec::Seasonal {
                period,
                width,
                seasons,
                points,
                scale,
                min_points,
                ..
            } => {
                let period = span("period", period)?;
                let width = width.as_deref().map(|w| span("width", w)).transpose()?;
                if width.is_some_and(|w| w >= period) {
                    return Err(DetectError::Setting(
                        "seasonal.width must be shorter than seasonal.period",
                    ));
                }
                if *seasons == 0 || *points == 0 {
                    return Err(DetectError::Setting(
                        "seasonal.seasons and seasonal.points must be at least 1",
                    ));
                }
                Detector::Seasonal(seasonal::Seasonal::new(
                    period,
                    width,
                    *seasons,
                    Baseline {
                        span_us: i64::MAX,
                        points: *points,
                        min_points: (*min_points).max(2),
                    },
                    *scale,
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
                    return Err(DetectError::Setting("cusum.k must be ≥ 0 and cusum.h > 0"));
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
            DetectorSpec::Model { min_points, .. } => {
                Detector::Model(robust_z::RobustZ::new(Baseline {
                    span_us: i64::MAX,
                    points: points(),
                    min_points: (*min_points).max(2),
                }))
            }
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
    /// The model's scores, judged like a value against the key's earlier ones.
    Model(robust_z::RobustZ),
}

impl Detector {
    /// How far `value` at `ts_us` is from what this detector expected, in σ (None while it
    /// warms up); `model` is the model's score for the same row, if there is one. A value that
    /// is not a finite number is neither scored nor learnt.
    pub fn deviation(&mut self, ts_us: i64, value: f64, model: Option<f64>) -> Option<f64> {
        if !value.is_finite() && !matches!(self, Detector::Model(_)) {
            return None;
        }
        match self {
            Detector::RobustZ(d) => d.observe(ts_us, value),
            Detector::Seasonal(d) => d.observe(ts_us, value),
            Detector::Cusum(d) => {
                let h = d.h();
                d.observe(ts_us, value).map(|s| Z_ALARM * s / h)
            }
            Detector::Zscore(d) => d.observe(ts_us, value),
            Detector::Model(d) => model
                .filter(|s| s.is_finite())
                .and_then(|s| d.observe_signed(ts_us, s))
                .map(|z| z.max(0.0)),
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
    /// In [0, 1).
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
    /// None for a plain ensemble.
    calibration: Option<Calibration>,
    /// Per detector, for `seasonal` ones, the weighted mean of its deviations on this key (half-life
    /// [`FIT_HALF_LIFE`] values): how well its season explains the key.
    #[serde(default)]
    fit: Vec<Option<f64>>,
    /// Per detector, whether it has given a deviation yet; the key is learning (see
    /// [`Calibration::skip`]) until every detector but `model` has.
    #[serde(default)]
    seen: Vec<bool>,
}

/// Half-life, in values, of a seasonal detector's fit to a key.
pub const FIT_HALF_LIFE: f64 = 1000.0;

impl Ensemble {
    /// Builds the detectors and the default calibration; an error names the bad spec. At
    /// least one weight must be positive.
    pub fn new(specs: &[DetectorSpec]) -> Result<Self> {
        Self::with_calibration(specs, &CalibrationSpec::default())
    }

    /// As [`new`](Self::new), calibrated as `calibration` says.
    pub fn with_calibration(specs: &[DetectorSpec], calibration: &CalibrationSpec) -> Result<Self> {
        let mut e = Self::plain(specs)?;
        e.calibration = Some(calibration.build()?);
        Ok(e)
    }

    /// The largest weighted deviation squashed as it is (½ at 4σ), with no calibration and no
    /// rest: what a threshold on a plain z-score does.
    pub fn plain(specs: &[DetectorSpec]) -> Result<Self> {
        let total: f64 = specs.iter().map(DetectorSpec::weight).sum();
        let detectors = specs
            .iter()
            .map(DetectorSpec::build)
            .collect::<Result<Vec<_>>>()?;
        if total.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
            return Err(DetectError::NoPositiveWeight);
        }
        Ok(Ensemble {
            names: specs.iter().map(|s| s.name().to_string()).collect(),
            weights: specs.iter().map(DetectorSpec::weight).collect(),
            fit: vec![None; detectors.len()],
            seen: vec![false; detectors.len()],
            detectors,
            calibration: None,
        })
    }

    /// The detectors' names, in the order of [`Verdict::contributions`].
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Scores a key's row as the score stage does: a row newer than `last` is scored, learnt,
    /// and becomes `last`; any other (a revised window, a row out of time order) is scored
    /// against what was learnt so far and not learnt. The flag says whether it was learnt.
    pub fn observe_in_order(
        &mut self,
        last: &mut i64,
        ts_us: i64,
        value: f64,
        model: Option<f64>,
    ) -> (Verdict, bool) {
        if ts_us > *last {
            *last = ts_us;
            (self.observe(ts_us, value, model), true)
        } else {
            (self.clone().observe(ts_us, value, model), false)
        }
    }

    /// Scores one value, then learns it. Where the value is not a finite number, only the
    /// `model` detector scores.
    pub fn observe(&mut self, ts_us: i64, value: f64, model: Option<f64>) -> Verdict {
        let n = self.detectors.len();
        self.fit.resize(n, None);
        self.seen.resize(n, false);
        let deviations: Vec<Option<f64>> = self
            .detectors
            .iter_mut()
            .map(|d| d.deviation(ts_us, value, model))
            .collect();
        // Of the seasonal detectors, only the one whose season has explained this key best so
        // far speaks: a weekday after a weekend is no anomaly to the week's season, whatever
        // the day's says.
        let seasonal = |i: usize| matches!(self.detectors[i], Detector::Seasonal(_));
        let best = (0..n)
            .filter(|&i| seasonal(i) && deviations[i].is_some())
            .min_by(|&a, &b| {
                let fit = |i: usize| self.fit[i].unwrap_or(f64::INFINITY);
                fit(a).total_cmp(&fit(b)).then(a.cmp(&b))
            });
        let keep = 0.5f64.powf(1.0 / FIT_HALF_LIFE);
        let mut terms = Vec::with_capacity(n);
        let mut deviation = None::<f64>;
        for (i, &d) in deviations.iter().enumerate() {
            if let (true, Some(x)) = (seasonal(i), d) {
                self.fit[i] = Some(self.fit[i].map_or(x, |f| keep * f + (1.0 - keep) * x));
            }
            self.seen[i] |= d.is_some();
            let term = d
                .filter(|_| !seasonal(i) || best == Some(i))
                .map(|x| self.weights[i] * x);
            if let Some(t) = term {
                deviation = Some(deviation.map_or(t, |m| m.max(t)));
            }
            terms.push(term.unwrap_or(0.0));
        }
        // Learning until every detector but the model's has had its say (a seasonal one, its
        // first season).
        let learning =
            (0..n).any(|i| !self.seen[i] && !matches!(self.detectors[i], Detector::Model(_)));
        let score = match self.calibration.as_mut() {
            Some(c) if learning => c.skip(ts_us),
            Some(c) => squash(c.observe(ts_us, deviation), c.alarm()),
            None => squash(deviation.unwrap_or(0.0), Z_ALARM),
        };
        let total: f64 = terms.iter().map(|t| t * t).sum();
        let contributions = terms
            .iter()
            .map(|t| {
                if total > 0.0 {
                    score * t * t / total
                } else {
                    0.0
                }
            })
            .collect();
        Verdict {
            score,
            contributions,
        }
    }
}

#[cfg(test)]
mod tests;
