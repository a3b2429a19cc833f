//! The forecast model: what it reads and what it gives, shared by the forecast stage, the spot
//! recommendations and `stratus evaluate forecast`.
//!
//! In: a step series ([`Steps`]) and a forecast origin `t`, horizon `h` and season. Out:
//! [`features`] — the model's [`FEATURES`], every value relative to the level at `t` on a log
//! scale — and, from a registered ONNX model ([`ForecastModel`]), the [`QUANTILES`] of the
//! relative change to `t + h` (`models/train_forecast.py` trains it).

use crate::stats::quantile;

const HOUR: i64 = 3_600_000_000;

/// A step series: change times (µs, ascending) and the value from each on.
#[derive(Debug, Clone, PartialEq)]
pub struct Steps {
    pub name: String,
    pub times: Vec<i64>,
    pub values: Vec<f64>,
}

impl Steps {
    /// The value in force at `t`: the last change at or before it.
    pub fn at(&self, t: i64) -> Option<f64> {
        let i = self.times.partition_point(|&c| c <= t);
        i.checked_sub(1).map(|i| self.values[i])
    }
}

/// The names of a forecast model's input features, in order (see [`features`]).
pub const FEATURES: [&str; 14] = [
    "horizon_hours",
    "hour_of_day",
    "day_of_week",
    "lag_1h",
    "lag_6h",
    "lag_24h",
    "same_phase_last_season",
    "mean_24h",
    "std_24h",
    "min_24h",
    "max_24h",
    "mean_7d",
    "hours_since_change",
    "changes_24h",
];

/// A forecast model's outputs: quantiles of the target, lowest first.
pub const QUANTILES: [(&str, f64); 5] = [
    ("q025", 0.025),
    ("q10", 0.1),
    ("q50", 0.5),
    ("q90", 0.9),
    ("q975", 0.975),
];

/// The `level` quantile of the mixture of several forecast distributions, each given by its
/// [`QUANTILES`] (ascending): the value the forecast hours together exceed a `1 − level` share
/// of the time — for hourly forecasts of the next day, that day's forecast p95 at 0.95. Each
/// distribution's CDF is linear between its quantiles, and beyond the outer ones linear to 0
/// and 1 over as far again as the next quantile inward. None without distributions.
pub fn pooled_quantile(forecasts: &[[f64; 5]], level: f64) -> Option<f64> {
    let cdf = |q: &[f64; 5], x: f64| -> f64 {
        let levels = QUANTILES.map(|(_, l)| l);
        let (below, above) = ((q[0] - (q[1] - q[0])), (q[4] + (q[4] - q[3])));
        let points = std::iter::once((below, 0.0))
            .chain(q.iter().copied().zip(levels))
            .chain(std::iter::once((above, 1.0)));
        let mut last = (f64::NEG_INFINITY, 0.0);
        for (v, l) in points {
            if x < v {
                return if v > last.0 && last.0.is_finite() {
                    last.1 + (l - last.1) * (x - last.0) / (v - last.0)
                } else {
                    last.1
                };
            }
            last = (v, l);
        }
        1.0
    };
    let lo = forecasts
        .iter()
        .map(|q| q[0] - (q[1] - q[0]))
        .reduce(f64::min)?;
    let hi = forecasts
        .iter()
        .map(|q| q[4] + (q[4] - q[3]))
        .reduce(f64::max)?;
    let mean_cdf =
        |x: f64| forecasts.iter().map(|q| cdf(q, x)).sum::<f64>() / forecasts.len() as f64;
    // The mixture's CDF rises with x: bisect for the level.
    let (mut a, mut b) = (lo, hi);
    for _ in 0..60 {
        let m = 0.5 * (a + b);
        if mean_cdf(m) < level {
            a = m;
        } else {
            b = m;
        }
    }
    Some(0.5 * (a + b))
}

/// The offset `c` of a series' log transform `g(y) = ln(y + c)`: 1 % of its median absolute
/// value in the training range (so zeros are allowed), at least 1e-9.
pub fn offset(s: &Steps, split: i64) -> f64 {
    let mut v: Vec<f64> = s
        .times
        .iter()
        .zip(&s.values)
        .filter(|(t, _)| **t <= split)
        .map(|(_, v)| v.abs())
        .collect();
    if v.is_empty() {
        return 1e-9;
    }
    (0.01 * quantile(&mut v, 0.5)).max(1e-9)
}

/// The model's inputs for forecasting `t + h` from `t`, and `g` of the level at `t`: every
/// value enters relative to the level, as `g(y) − g(y(t))` with `g(y) = ln(y + c)`, so one
/// model serves series of any scale. None where the series has no value at `t` or `y + c ≤ 0`.
/// The target the model learns is `g(y(t + h)) − g(y(t))`.
pub fn features(s: &Steps, t: i64, h: i64, season: i64, c: f64) -> Option<(Vec<f32>, f64)> {
    let g = |y: f64| (y + c > 0.0).then(|| (y + c).ln());
    let level = g(s.at(t)?)?;
    let rel = |y: Option<f64>| y.and_then(g).map_or(0.0, |v| v - level);
    // Hourly samples of the last day and week.
    let day: Vec<f64> = (0..=24).filter_map(|k| s.at(t - k * HOUR)).collect();
    let week_mean = {
        let w: Vec<f64> = (0..=168).filter_map(|k| s.at(t - k * HOUR)).collect();
        w.iter().sum::<f64>() / w.len().max(1) as f64
    };
    let mean = day.iter().sum::<f64>() / day.len().max(1) as f64;
    let std =
        (day.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / day.len().max(1) as f64).sqrt();
    let min = day.iter().copied().fold(f64::INFINITY, f64::min);
    let max = day.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let last_change = s
        .times
        .partition_point(|&x| x <= t)
        .checked_sub(1)
        .map(|i| s.times[i]);
    let since = last_change.map_or(168.0, |x| ((t - x) as f64 / HOUR as f64).min(168.0));
    let changes =
        s.times.partition_point(|&x| x <= t) - s.times.partition_point(|&x| x <= t - 24 * HOUR);
    let k = (h + season - 1) / season;
    let target_time = t + h;
    let days = target_time.div_euclid(24 * HOUR);
    let row = [
        h as f64 / HOUR as f64,
        (target_time.rem_euclid(24 * HOUR) / HOUR) as f64,
        (days + 3).rem_euclid(7) as f64,
        rel(s.at(t - HOUR)),
        rel(s.at(t - 6 * HOUR)),
        rel(s.at(t - 24 * HOUR)),
        rel(s.at(t + h - k * season)),
        rel(Some(mean)),
        std / (s.at(t)?.abs() + c),
        rel(Some(min)),
        rel(Some(max)),
        rel(Some(week_mean)),
        since,
        changes as f64,
    ];
    Some((row.iter().map(|&v| v as f32).collect(), level))
}

/// Why a forecast model could not be loaded, followed or run.
#[derive(Debug, thiserror::Error)]
pub enum ForecastError {
    #[error(transparent)]
    Onnx(#[from] crate::score::ScoreError),
    #[error(transparent)]
    Registry(#[from] crate::score::registry::RegistryError),
    #[error("model {label}: {message}")]
    Invalid { label: String, message: String },
}

/// A registered forecast model: [`FEATURES`] in, [`QUANTILES`] of the relative target out.
pub struct ForecastModel {
    pub label: String,
    model: crate::score::OnnxModel,
}

impl ForecastModel {
    pub fn new(label: &str, onnx: &[u8]) -> Result<Self, ForecastError> {
        let model = crate::score::OnnxModel::from_bytes(label, onnx, FEATURES.len())?;
        let outputs = model.outputs();
        if let Some((missing, _)) = QUANTILES
            .iter()
            .find(|(q, _)| !outputs.iter().any(|o| o == q))
        {
            return Err(ForecastError::Invalid {
                label: label.to_string(),
                message: format!("no output {missing:?}; a forecast model gives {QUANTILES:?}"),
            });
        }
        Ok(ForecastModel {
            label: label.to_string(),
            model,
        })
    }

    /// Per row, the five quantiles of the relative target.
    pub fn predict(&mut self, rows: &[f32]) -> Result<Vec<[f64; 5]>, ForecastError> {
        let n = rows.len() / FEATURES.len();
        let mut out = vec![[0.0; 5]; n];
        for (j, (name, _)) in QUANTILES.iter().enumerate() {
            let q = self.model.score(rows, name)?;
            if q.len() != n {
                return Err(ForecastError::Invalid {
                    label: self.label.clone(),
                    message: format!("{} values of {name} for {n} rows", q.len()),
                });
            }
            for (o, v) in out.iter_mut().zip(q) {
                o[j] = f64::from(v);
            }
        }
        Ok(out)
    }
}
