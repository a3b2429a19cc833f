//! `stratus evaluate forecast`: forecasts on a held-out later time range, against the naive and
//! seasonal-naive baselines.
//!
//! In: spot price history as `describe-spot-price-history` writes it
//! (`AvailabilityZone,InstanceType,ProductDescription,SpotPrice,Timestamp`, one row per price
//! change, any order) — one series per zone, type and product — or a `timestamp,value` CSV
//! (one series, or one per value of an optional `series` column); a file, or every `.csv` file
//! of a directory. Each series is a step function: its value at t is the last one at or before t.
//! It is sampled on a regular grid (hourly by default); the last `holdout` share of each
//! series' time range is held out. From every grid time t in the held-out range, each
//! forecaster predicts t + h for each horizon h.
//!
//! Forecasters: `naive` (the value at t) and `seasonal_naive` (the value one season before
//! t + h, a day by default), whose intervals are the empirical quantiles of their own errors on
//! the training range, per series and horizon (split-conformal intervals); `blend`, what a
//! forecast stage issues (`forecast::blend`: per series and horizon, the simple candidate or
//! model with the lowest recent error, intervals from the series' own recent errors), run over
//! every origin of every series in time order from the start of each series, as the stage
//! learns, and scored on the held-out origins; and, when given, a registered model that maps
//! [`FEATURES`] (computed by [`features`] from the series up to t) to [`QUANTILES`](crate::forecast::model::QUANTILES) of the
//! relative change to t + h — alone (its median the forecast, its 10–90 % and 2.5–97.5 %
//! quantiles the intervals) and as a candidate of the blend (`<model>+blend`).
//! `--write-training-rows` writes the model's features for the training range, for
//! `models/train_forecast.py`.
//!
//! Out, per forecaster and horizon: MAE, MAPE, sMAPE, MASE (errors scaled by the in-sample MAE
//! of the naive forecast at the same horizon, per series — below 1 beats naive as it did in
//! training) and the coverage of the 80 % and 95 % intervals. And what sizing capacity for the
//! span up to the longest horizon after each held-out origin would have left unused, and how
//! often it fell short, over every step of the span: by the last week's 95th percentile
//! (rightsizing without a forecast), by the 95th percentile of the blend's forecasts for the
//! horizons together (rightsizing with one), and by the highest 97.5 % quantile it issued.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::series::parse_time;
use super::{EvaluateError, Result};
use crate::forecast::blend::{Blend, Issued, MODEL, candidates};
use crate::forecast::model::{FEATURES, ForecastModel, Steps, features, offset, pooled_quantile};
use crate::forecast::stage::to_values;
use crate::stats::quantile;

/// Reads either CSV form, from a file or from every `.csv` file of a directory (a file's series
/// are named after it); an error names the file and line.
pub fn read_series(path: &Path) -> Result<Vec<Steps>> {
    if !path.is_dir() {
        return read_file(path);
    }
    let entries = std::fs::read_dir(path).map_err(EvaluateError::read(path))?;
    let mut files: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "csv"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(EvaluateError::file(path, "no .csv files"));
    }
    let mut all = Vec::new();
    for file in files {
        let stem = file
            .file_stem()
            .map_or(String::new(), |s| s.to_string_lossy().into());
        for mut s in read_file(&file)? {
            if s.name != file.display().to_string() {
                s.name = format!("{stem}/{}", s.name);
            } else {
                s.name = stem.clone();
            }
            all.push(s);
        }
    }
    Ok(all)
}

fn read_file(path: &Path) -> Result<Vec<Steps>> {
    let text = std::fs::read_to_string(path).map_err(EvaluateError::read(path))?;
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let header: Vec<String> = lines
        .next()
        .map(|(_, h)| {
            h.split(',')
                .map(|c| c.trim().trim_matches('"').to_ascii_lowercase())
                .collect()
        })
        .ok_or_else(|| EvaluateError::file(path, "empty file"))?;
    let col = |name: &str| header.iter().position(|c| c == name);
    let (time, value, key): (usize, usize, Vec<usize>) =
        match (col("timestamp"), col("spotprice"), col("value")) {
            (Some(t), Some(v), _) => {
                let key = ["availabilityzone", "instancetype", "productdescription"]
                    .iter()
                    .filter_map(|k| col(k))
                    .collect();
                (t, v, key)
            }
            (Some(t), None, Some(v)) => (t, v, col("series").into_iter().collect()),
            _ => {
                return Err(EvaluateError::line(
                    path,
                    1,
                    "expected `timestamp,value` or describe-spot-price-history columns \
                     (AvailabilityZone,InstanceType,ProductDescription,SpotPrice,Timestamp)",
                ));
            }
        };
    let mut points: BTreeMap<String, Vec<(i64, f64)>> = BTreeMap::new();
    for (n, line) in lines {
        let cells: Vec<&str> = line
            .split(',')
            .map(|c| c.trim().trim_matches('"'))
            .collect();
        let at = |problem: String| EvaluateError::line(path, n + 1, problem);
        let get = |i: usize| {
            cells
                .get(i)
                .copied()
                .ok_or_else(|| at("fewer cells than the header".into()))
        };
        let t = get(time)?;
        let t = parse_time(t).ok_or_else(|| at(format!("{t:?} is not a time")))?;
        let v = get(value)?;
        let v: f64 = v
            .parse()
            .map_err(|_| at(format!("{v:?} is not a number")))?;
        if !v.is_finite() {
            return Err(at(format!("{v} is not a finite number")));
        }
        let name = key
            .iter()
            .map(|&i| get(i))
            .collect::<Result<Vec<_>, _>>()?
            .join("/");
        points.entry(name).or_default().push((t, v));
    }
    let series: Vec<Steps> = points
        .into_iter()
        .map(|(name, mut p)| {
            // Stable by time: of two rows at one time, the later row wins.
            p.sort_by_key(|&(t, _)| t);
            let mut s = Steps {
                name: if name.is_empty() {
                    path.display().to_string()
                } else {
                    name
                },
                times: Vec::new(),
                values: Vec::new(),
            };
            for (t, v) in p {
                if s.times.last() == Some(&t) {
                    *s.values.last_mut().unwrap_or(&mut 0.0) = v;
                } else {
                    s.times.push(t);
                    s.values.push(v);
                }
            }
            s
        })
        .collect();
    if series.is_empty() {
        return Err(EvaluateError::file(path, "no rows"));
    }
    Ok(series)
}

/// How to evaluate.
#[derive(Debug, Clone)]
pub struct ForecastConfig {
    /// Grid step, µs.
    pub step_us: i64,
    pub horizons_us: Vec<i64>,
    /// Season of the seasonal-naive forecast, µs.
    pub season_us: i64,
    /// Share of each series' time range held out, at its end.
    pub holdout: f64,
}

/// One forecaster's figures at one horizon.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figures {
    pub forecaster: String,
    pub horizon_hours: f64,
    pub points: usize,
    pub mae: f64,
    pub mape: Option<f64>,
    pub smape: f64,
    pub mase: Option<f64>,
    pub coverage_80: f64,
    pub coverage_95: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ForecastReport {
    pub series: usize,
    pub figures: Vec<Figures>,
    /// Capacity for the span up to the longest horizon after each held-out origin, sized
    /// three ways.
    pub sizing: Vec<Sizing>,
}

/// Capacity held for the span up to the longest horizon after each held-out origin, from one
/// basis, against the value at every grid step of that span — what rightsizing on it would have
/// provisioned.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sizing {
    /// `past_p95` (the 95th percentile of the last 7 days, as rightsizing without a forecast),
    /// `past_p99` (its 99th), `forecast_p95` (the 95th percentile of the blend's forecasts at the horizons together,
    /// as rightsizing with one), or `forecast_top_p975` (the highest 97.5 % quantile issued at
    /// any horizon).
    pub basis: String,
    /// Origins sized (every held-out origin with a forecast at every horizon).
    pub origins: usize,
    /// Mean of capacity − value over the span's hours: the unused headroom.
    pub mean_headroom: f64,
    /// Share of the span's hours whose value exceeded the capacity, percent.
    pub exceeded: f64,
}

/// The sizing bases, in [`Sizing::basis`] order.
const SIZING_BASES: [&str; 4] = ["past_p95", "past_p99", "forecast_p95", "forecast_top_p975"];

/// A point forecast of t + h made at t, from the series up to t only.
type Forecaster = fn(&Steps, i64, i64, i64) -> Option<f64>;

fn naive(s: &Steps, t: i64, _h: i64, _season: i64) -> Option<f64> {
    s.at(t)
}

fn seasonal_naive(s: &Steps, t: i64, h: i64, season: i64) -> Option<f64> {
    // The same phase k seasons before t + h, with k the fewest that reach back to t or earlier.
    let k = (h + season - 1) / season;
    s.at(t + h - k * season)
}

const FORECASTERS: [(&str, Forecaster); 2] = [("naive", naive), ("seasonal_naive", seasonal_naive)];

/// Writes the training rows — origins whose target lies before the held-out range — as CSV:
/// `series,origin,` then [`FEATURES`], then `target`. What `models/train_forecast.py` learns
/// from, computed by the same function the evaluation scores with.
pub fn write_training_rows(
    series: &[Steps],
    config: &ForecastConfig,
    path: &Path,
) -> Result<usize> {
    use std::fmt::Write as _;
    let mut text = format!("series,origin,{},target\n", FEATURES.join(","));
    let mut rows = 0;
    for s in series {
        let (Some(&first), Some(&last)) = (s.times.first(), s.times.last()) else {
            continue;
        };
        let split = first + ((last - first) as f64 * (1.0 - config.holdout)) as i64;
        let c = offset(s, split);
        let start = first + (config.step_us - first.rem_euclid(config.step_us)) % config.step_us;
        let mut t = start;
        while t < split {
            for &h in &config.horizons_us {
                if t + h > split {
                    continue;
                }
                let (Some((x, level)), Some(y)) =
                    (features(s, t, h, config.season_us, c), s.at(t + h))
                else {
                    continue;
                };
                if y + c <= 0.0 {
                    continue;
                }
                let _ = write!(text, "{},{}", s.name.replace(',', ";"), t);
                for v in &x {
                    let _ = write!(text, ",{v}");
                }
                let _ = writeln!(text, ",{}", (y + c).ln() - level);
                rows += 1;
            }
            t += config.step_us;
        }
    }
    std::fs::write(path, text).map_err(EvaluateError::write(path))?;
    Ok(rows)
}

impl Accumulator {
    /// One forecast `p` of the actual `y`, with its 95 % and 80 % bounds `[lo95, lo80, hi80,
    /// hi95]`, and the series' MASE scale.
    fn add(&mut self, y: f64, p: f64, band: Option<[f64; 4]>, scale: Option<f64>) {
        let e = y - p;
        self.n += 1;
        self.abs += e.abs();
        if y != 0.0 {
            self.ape += (e / y).abs();
            self.ape_n += 1;
        }
        let denominator = y.abs() + p.abs();
        if denominator > 0.0 {
            self.sape += 2.0 * e.abs() / denominator;
        }
        if let Some(scale) = scale.filter(|&s| s > 0.0) {
            self.scaled += e.abs() / scale;
            self.scaled_n += 1;
        }
        if let Some([lo95, lo80, hi80, hi95]) = band {
            self.in80 += usize::from((lo80..=hi80).contains(&y));
            self.in95 += usize::from((lo95..=hi95).contains(&y));
        }
    }
}

#[derive(Default)]
struct Accumulator {
    n: usize,
    abs: f64,
    ape: f64,
    ape_n: usize,
    sape: f64,
    scaled: f64,
    scaled_n: usize,
    in80: usize,
    in95: usize,
}

pub fn evaluate(
    series: &[Steps],
    config: &ForecastConfig,
    mut model: Option<&mut ForecastModel>,
) -> Result<ForecastReport> {
    let mut acc: BTreeMap<(usize, usize), Accumulator> = BTreeMap::new();
    // Every origin of every series, for the model and the blend, which learn from the start of
    // a series as the stage does and are scored on the held-out origins.
    let mut origins: Vec<Origin> = Vec::new();
    for (si, s) in series.iter().enumerate() {
        let (Some(&first), Some(&last)) = (s.times.first(), s.times.last()) else {
            continue;
        };
        let start = first + (config.step_us - first.rem_euclid(config.step_us)) % config.step_us;
        let split = first + ((last - first) as f64 * (1.0 - config.holdout)) as i64;
        let held_out = split + (config.step_us - split.rem_euclid(config.step_us)) % config.step_us;
        let c = offset(s, split);
        for (hi, &h) in config.horizons_us.iter().enumerate() {
            // In-sample: naive errors (the MASE scale) and each forecaster's errors (intervals).
            let mut naive_abs = Vec::new();
            let mut errors: Vec<Vec<f64>> = vec![Vec::new(); FORECASTERS.len()];
            let mut t = start;
            while t + h <= split {
                if let Some(y) = s.at(t + h) {
                    for (fi, (_, f)) in FORECASTERS.iter().enumerate() {
                        if let Some(p) = f(s, t, h, config.season_us) {
                            errors[fi].push(y - p);
                        }
                    }
                    if let Some(p) = s.at(t) {
                        naive_abs.push((y - p).abs());
                    }
                }
                t += config.step_us;
            }
            let scale = (!naive_abs.is_empty())
                .then(|| naive_abs.iter().sum::<f64>() / naive_abs.len() as f64);
            let bands: Vec<Option<[f64; 4]>> = errors
                .iter_mut()
                .map(|e| {
                    (e.len() >= 10).then(|| {
                        [
                            quantile(e, 0.025),
                            quantile(e, 0.1),
                            quantile(e, 0.9),
                            quantile(e, 0.975),
                        ]
                    })
                })
                .collect();
            // Held out: origins from the split on, targets up to the last observation.
            let mut t = held_out;
            while t + h <= last {
                let Some(y) = s.at(t + h) else { break };
                for (fi, (_, f)) in FORECASTERS.iter().enumerate() {
                    let Some(p) = f(s, t, h, config.season_us) else {
                        continue;
                    };
                    let band = bands[fi]
                        .map(|[q025, q10, q90, q975]| [p + q025, p + q10, p + q90, p + q975]);
                    acc.entry((fi, hi)).or_default().add(y, p, band, scale);
                }
                t += config.step_us;
            }
            // The model's quantiles from every origin with features.
            let mut rows = Vec::new();
            let first_origin = origins.len();
            let mut t = start;
            while t + h <= last {
                let (Some(y), Some(_)) = (s.at(t + h), s.at(t)) else {
                    t += config.step_us;
                    continue;
                };
                let model_input = features(s, t, h, config.season_us, c);
                if let Some((x, _)) = &model_input {
                    rows.extend_from_slice(x);
                }
                origins.push(Origin {
                    t,
                    series: si,
                    horizon: hi,
                    actual: y,
                    level: model_input.map(|(_, level)| level),
                    quantiles: None,
                    held_out: (t >= held_out).then_some(scale),
                });
                t += config.step_us;
            }
            if let Some(m) = model.as_deref_mut().filter(|_| !rows.is_empty()) {
                let mut predicted = m.predict(&rows)?.into_iter();
                for o in &mut origins[first_origin..] {
                    if let Some(level) = o.level {
                        o.quantiles = predicted.next().map(|q| to_values(q, level, c));
                    }
                }
            }
        }
    }
    // The model alone, and the blend the stage issues: over every series in time order,
    // learning from each forecast once its target has come.
    origins.sort_by_key(|o| (o.t, o.series, o.horizon));
    let (alone, blended) = (FORECASTERS.len(), FORECASTERS.len() + 1);
    let mut blend = Blend::<usize>::default();
    let horizons = config.horizons_us.len();
    // Per held-out (series, origin): the issued quantiles at each horizon.
    let mut spans: BTreeMap<(usize, i64), Vec<[f64; 5]>> = BTreeMap::new();
    for o in &origins {
        let s = &series[o.series];
        let h = config.horizons_us[o.horizon];
        blend.resolve(o.t, |&si, target| series[si].at(target));
        let mut points = [None; MODEL + 1];
        points[..MODEL].copy_from_slice(&candidates(|t| s.at(t), o.t, h));
        points[MODEL] = o.quantiles.map(|q| q[2]);
        let issued = blend.issue(&o.series, o.horizon, horizons, o.t + h, points, o.quantiles);
        let Some(scale) = o.held_out else {
            continue;
        };
        let band = |q: [f64; 5]| Some([q[0], q[1], q[3], q[4]]);
        if let Some(q) = o.quantiles {
            let a = acc.entry((alone, o.horizon)).or_default();
            a.add(o.actual, q[2], band(q), scale);
        }
        if let Some(Issued { quantiles: q, .. }) = issued {
            let a = acc.entry((blended, o.horizon)).or_default();
            a.add(o.actual, q[2], band(q), scale);
            spans.entry((o.series, o.t)).or_default().push(q);
        }
    }
    let sizing = sizing(series, config, &spans);
    let model_label = model.as_ref().map(|m| m.label.clone());
    let figures = acc
        .into_iter()
        .map(|((fi, hi), a)| {
            let n = a.n.max(1) as f64;
            Figures {
                forecaster: match (FORECASTERS.get(fi), &model_label) {
                    (Some((name, _)), _) => name.to_string(),
                    (None, Some(label)) if fi == alone => label.clone(),
                    (None, Some(label)) => format!("{label}+blend"),
                    (None, None) => "blend".to_string(),
                },
                horizon_hours: config.horizons_us[hi] as f64 / 3.6e9,
                points: a.n,
                mae: a.abs / n,
                mape: (a.ape_n > 0).then(|| 100.0 * a.ape / a.ape_n as f64),
                smape: 100.0 * a.sape / n,
                mase: (a.scaled_n > 0).then(|| a.scaled / a.scaled_n as f64),
                coverage_80: 100.0 * a.in80 as f64 / n,
                coverage_95: 100.0 * a.in95 as f64 / n,
            }
        })
        .collect();
    Ok(ForecastReport {
        series: series.len(),
        figures,
        sizing,
    })
}

/// Sizes the span after each origin of `spans` with a forecast at every horizon by each of
/// [`SIZING_BASES`].
fn sizing(
    series: &[Steps],
    config: &ForecastConfig,
    spans: &BTreeMap<(usize, i64), Vec<[f64; 5]>>,
) -> Vec<Sizing> {
    const WEEK: i64 = 7 * 24 * 3_600_000_000;
    let longest = config.horizons_us.iter().copied().max().unwrap_or(0);
    let mut sums = [(0usize, 0.0, 0usize, 0usize); SIZING_BASES.len()];
    for (&(si, t), issued) in spans {
        let s = &series[si];
        let span: Vec<f64> = (1..=longest / config.step_us)
            .map_while(|k| s.at(t + k * config.step_us))
            .collect();
        if issued.len() != config.horizons_us.len() || span.is_empty() {
            continue;
        }
        let mut past: Vec<f64> = (0..WEEK / config.step_us)
            .filter_map(|k| s.at(t - k * config.step_us))
            .collect();
        let capacities = [
            quantile(&mut past, 0.95),
            quantile(&mut past, 0.99),
            pooled_quantile(issued, 0.95).unwrap_or(f64::NAN),
            issued
                .iter()
                .map(|q| q[4])
                .fold(f64::NEG_INFINITY, f64::max),
        ];
        for (sum, capacity) in sums.iter_mut().zip(capacities) {
            sum.0 += 1;
            for &y in &span {
                sum.1 += capacity - y;
                sum.2 += usize::from(y > capacity);
                sum.3 += 1;
            }
        }
    }
    SIZING_BASES
        .iter()
        .zip(sums)
        .filter(|(_, (origins, ..))| *origins > 0)
        .map(|(basis, (origins, headroom, over, hours))| Sizing {
            basis: basis.to_string(),
            origins,
            mean_headroom: headroom / hours as f64,
            exceeded: 100.0 * over as f64 / hours as f64,
        })
        .collect()
}

/// One forecast origin of one series and horizon, for the model and the blend.
struct Origin {
    t: i64,
    series: usize,
    horizon: usize,
    actual: f64,
    /// `ln(y + c)` at `t`, where the model has features.
    level: Option<f64>,
    /// The model's quantiles in the value unit.
    quantiles: Option<[f64; 5]>,
    /// For a held-out origin, its series' MASE scale (itself optional).
    held_out: Option<Option<f64>>,
}

/// The report as a table.
pub fn render(report: &ForecastReport) -> String {
    use std::fmt::Write as _;
    let mut s = format!("{} series\n\n", report.series);
    let _ = writeln!(
        s,
        "{:<24} {:>8} {:>7} {:>10} {:>8} {:>8} {:>7} {:>8} {:>8}",
        "forecaster", "horizon", "points", "MAE", "MAPE %", "sMAPE %", "MASE", "cov80 %", "cov95 %"
    );
    let mut figures = report.figures.clone();
    figures.sort_by(|a, b| {
        a.horizon_hours
            .total_cmp(&b.horizon_hours)
            .then(a.forecaster.cmp(&b.forecaster))
    });
    for f in &figures {
        let opt = |v: Option<f64>, d: usize| v.map_or("n/a".to_string(), |v| format!("{v:.d$}"));
        let _ = writeln!(
            s,
            "{:<24} {:>7}h {:>7} {:>10.5} {:>8} {:>8.2} {:>7} {:>8.1} {:>8.1}",
            f.forecaster,
            f.horizon_hours,
            f.points,
            f.mae,
            opt(f.mape, 2),
            f.smape,
            opt(f.mase, 3),
            f.coverage_80,
            f.coverage_95
        );
    }
    if !report.sizing.is_empty() {
        let _ = writeln!(
            s,
            "\ncapacity for the span to the longest horizon after each held-out origin, against \
             every step of it:\n\
             {:<16} {:>8} {:>14} {:>12}",
            "sized by", "origins", "mean headroom", "exceeded %"
        );
        for z in &report.sizing {
            let _ = writeln!(
                s,
                "{:<16} {:>8} {:>14.4} {:>12.2}",
                z.basis, z.origins, z.mean_headroom, z.exceeded
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000_000;

    fn config(horizon_hours: &[i64]) -> ForecastConfig {
        ForecastConfig {
            step_us: H,
            horizons_us: horizon_hours.iter().map(|h| h * H).collect(),
            season_us: 24 * H,
            holdout: 0.5,
        }
    }

    #[test]
    fn a_step_series_holds_each_value_until_the_next_change() {
        let s = Steps {
            name: "s".into(),
            times: vec![10, 20],
            values: vec![1.0, 2.0],
        };
        assert_eq!(
            (s.at(9), s.at(10), s.at(19), s.at(20), s.at(99)),
            (None, Some(1.0), Some(1.0), Some(2.0), Some(2.0))
        );
    }

    #[test]
    fn a_pure_daily_pattern_is_forecast_exactly_by_seasonal_naive_and_not_by_naive() {
        // Hourly values repeating every day for 8 days.
        let times: Vec<i64> = (0..8 * 24).map(|i| i * H).collect();
        let values: Vec<f64> = (0..8 * 24).map(|i| 10.0 + (i % 24) as f64).collect();
        let s = Steps {
            name: "daily".into(),
            times,
            values,
        };
        let r = evaluate(&[s], &config(&[1, 6]), None).unwrap();
        let get = |f: &str, h: f64| {
            r.figures
                .iter()
                .find(|x| x.forecaster == f && x.horizon_hours == h)
                .unwrap()
                .clone()
        };
        let seasonal = get("seasonal_naive", 6.0);
        assert_eq!(
            (seasonal.mae, seasonal.smape, seasonal.mase),
            (0.0, 0.0, Some(0.0))
        );
        assert_eq!(seasonal.coverage_95, 100.0);
        // Naive one hour ahead is off by 1 except across midnight (−23): in sample and out
        // alike, so its MASE is 1 and its intervals cover as often as in training.
        let naive = get("naive", 1.0);
        assert!((naive.mase.unwrap() - 1.0).abs() < 0.05, "{naive:?}");
        assert!(naive.mae > 1.0);
    }

    #[test]
    fn features_at_t_use_nothing_after_t() {
        let times: Vec<i64> = (0..400).map(|i| i * H / 2 + (i % 7) * 60_000_000).collect();
        let values: Vec<f64> = (0..400)
            .map(|i| 1.0 + ((i * 37) % 11) as f64 / 10.0)
            .collect();
        let full = Steps {
            name: "s".into(),
            times: times.clone(),
            values: values.clone(),
        };
        for t in [100 * H, 150 * H + 7, 190 * H] {
            let keep = times.partition_point(|&x| x <= t);
            let cut = Steps {
                name: "s".into(),
                times: times[..keep].to_vec(),
                values: values[..keep].to_vec(),
            };
            for h in [H, 6 * H, 24 * H] {
                assert_eq!(
                    features(&full, t, h, 24 * H, 0.01),
                    features(&cut, t, h, 24 * H, 0.01)
                );
            }
        }
    }

    #[test]
    fn spot_history_is_read_as_one_series_per_zone_type_and_product() {
        let dir = std::env::temp_dir().join(format!("stratus-forecast-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("spot.csv");
        std::fs::write(
            &p,
            "Timestamp,InstanceType,ProductDescription,SpotPrice,AvailabilityZone\n\
             2023-12-30 21:17:02+00:00,c5a.2xlarge,Linux/UNIX,0.156700,us-east-1e\n\
             2023-12-30 19:02:57+00:00,c5a.2xlarge,Linux/UNIX,0.169600,us-east-1c\n\
             2023-12-30 18:00:00+00:00,c5a.2xlarge,Linux/UNIX,0.150000,us-east-1e\n",
        )
        .unwrap();
        let s = read_series(&p).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].name, "us-east-1e/c5a.2xlarge/Linux/UNIX");
        assert_eq!(s[1].values, vec![0.15, 0.1567]);
        std::fs::write(&p, "Timestamp,SpotPrice\nsoon,1\n").unwrap();
        assert_eq!(
            read_series(&p).unwrap_err().to_string(),
            format!("{}:2: \"soon\" is not a time", p.display())
        );
        std::fs::write(&p, "when,what\n1,2\n").unwrap();
        assert_eq!(
            read_series(&p).unwrap_err().to_string(),
            format!(
                "{}:1: expected `timestamp,value` or describe-spot-price-history columns \
                 (AvailabilityZone,InstanceType,ProductDescription,SpotPrice,Timestamp)",
                p.display()
            )
        );
        std::fs::write(&p, "timestamp,value\n").unwrap();
        assert_eq!(
            read_series(&p).unwrap_err().to_string(),
            format!("{}: no rows", p.display())
        );
    }
}
