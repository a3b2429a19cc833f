//! The forecast a stage issues, per key and horizon: of a few simple forecasters and the model,
//! the one whose recent errors on this key are lowest, with prediction intervals from the key's
//! own recent errors.
//!
//! In: for each origin `t` of a key and each horizon `h`, the candidates' point forecasts of
//! `t + h` ([`candidates`], computed from the series up to `t`, and the model's median) and,
//! when the model ran, its quantiles; later, the actual value at each target time, read through
//! [`Blend::resolve`] once that time has come. Out ([`Blend::issue`]): the issued 2.5, 10, 50,
//! 90 and 97.5 % quantiles, and which candidate gave the median.
//!
//! Why: a global model trained on some series does not generalise to every other (measured on
//! real VM CPU traces it never saw: `cpu_demand@3` had 1.7–2.4 × the MAE of naive), while no
//! single simple forecaster is best everywhere (the last value for spot prices, the last day's
//! median for noisy CPU). Choosing per key by its own errors is never much worse than the best
//! candidate on that key, and self-adapts when a key changes character.
//!
//! - Choice: per key and horizon, an exponentially weighted MAE of every candidate over its
//!   resolved forecasts (half-life [`HALF_LIFE`]); the issued candidate changes only when
//!   another's is [`SWITCH_MARGIN`] lower, so a lead within noise does not flip it. A key starts
//!   with the model where one ran, else the last value.
//! - Intervals: the median plus the empirical 2.5, 10, 90 and 97.5 % quantiles of the key's last
//!   [`ERRORS`] errors of issued forecasts at that horizon (split-conformal, online); before
//!   [`MIN_ERRORS`] have resolved, the model's own quantiles around the median (none without a
//!   model: the interval is the median alone). Their distances from the median are then scaled
//!   by adaptive conformal inference (Gibbs and Candès, 2021) in width form, with two factors
//!   multiplied: one per horizon pooled over every key (a miscalibration all keys share) and one
//!   per key and horizon (what differs between keys). A key's factor's logarithm rises by
//!   `ADAPT_RATE × (1 − α)` after a miss and falls by `ADAPT_RATE × α` after a hit, so over time
//!   its interval misses at its nominal rate α; the pooled factor moves by that step over the
//!   number of keys, so it follows the keys' average, not the hardest key (moved by every key's
//!   full step, a few keys with unforecastable spikes drove it, and every other key's widths,
//!   up to 100-fold: measured on the VM traces of `models/README.md`).
//!
//! A forecast is learnt from only once its target time has come, so nothing issued at an origin
//! depends on anything after it; feed origins in time order over all keys (the pooled factors
//! are shared). State per key: per horizon the candidates' errors, its choice, its last
//! [`ERRORS`] errors and its factors, and the forecasts awaiting their target: bounded.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::stats::{median_of, quantile_sorted};

const HOUR: i64 = 3_600_000_000;

/// The simple candidates, in [`candidates`]' order; the model's median comes after them.
pub const CANDIDATES: [&str; 6] = [
    "naive",
    "seasonal_naive",
    "mean_24h",
    "median_24h",
    "same_hour_median_7d",
    "weekly_naive",
];
/// Where the model's median sits among the points.
pub const MODEL: usize = CANDIDATES.len();
/// Every candidate's point forecast, the model's last; none where it cannot forecast.
pub type Points = [Option<f64>; MODEL + 1];

/// Half-life of the candidates' weighted errors, in resolved forecasts: two weeks of hourly
/// origins, long enough that a choice rests on more than a few days' luck.
pub const HALF_LIFE: f64 = 336.0;
/// How much lower another candidate's error must be for the choice to change.
pub const SWITCH_MARGIN: f64 = 0.05;
/// How many of a key's recent errors make its intervals.
pub const ERRORS: usize = 1000;
/// How many errors a key needs before its own errors make its intervals.
pub const MIN_ERRORS: usize = 48;
/// Step size of the adaptive widths, in ln units (Gibbs and Candès use γ = 0.005 on α; this is
/// its width form, so a week of hourly forecasts moves a width by a few tens of percent).
pub const ADAPT_RATE: f64 = 0.05;
/// Nominal miss rates of the 95 % and 80 % intervals.
const MISS: [f64; 2] = [0.05, 0.2];

/// The simple candidates' forecasts of `t + h` from a series' values up to `t` (`at` gives the
/// value in force at a time; it is only asked about times at or before `t`): the last value;
/// the value a whole number of days before `t + h`; the mean and the median of the last 24
/// hourly values; the median of the same hour on the 7 days before `t + h`; the value a whole
/// number of weeks before `t + h`.
pub fn candidates(at: impl Fn(i64) -> Option<f64>, t: i64, h: i64) -> [Option<f64>; MODEL] {
    const DAY: i64 = 24 * HOUR;
    const WEEK: i64 = 7 * DAY;
    let days = (h + DAY - 1) / DAY;
    let weeks = (h + WEEK - 1) / WEEK;
    let mut day: Vec<f64> = (0..24).filter_map(|k| at(t - k * HOUR)).collect();
    let mut same_hour: Vec<f64> = (days..days + 7)
        .filter_map(|k| at(t + h - k * DAY))
        .collect();
    let mean = (!day.is_empty()).then(|| day.iter().sum::<f64>() / day.len() as f64);
    [
        at(t),
        at(t + h - days * DAY),
        mean,
        (!day.is_empty()).then(|| median_of(&mut day)),
        (!same_hour.is_empty()).then(|| median_of(&mut same_hour)),
        at(t + h - weeks * WEEK),
    ]
}

/// What a forecast stage issued for one key, origin and horizon.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Issued {
    /// 2.5, 10, 50, 90 and 97.5 %, ascending.
    pub quantiles: [f64; 5],
    /// The candidate that gave the median: an index into the points ([`MODEL`]: the model).
    pub forecaster: usize,
}

/// An issued forecast met by its actual value: what accuracy is measured from.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome<K = String> {
    pub key: K,
    /// The time forecast (µs).
    pub target: i64,
    /// Index into the stage's horizons.
    pub horizon: usize,
    pub actual: f64,
    /// What was issued: 2.5, 10, 50, 90 and 97.5 %.
    pub issued: [f64; 5],
}

impl<K> Outcome<K> {
    /// |actual − median|.
    pub fn abs_error(&self) -> f64 {
        (self.actual - self.issued[2]).abs()
    }

    /// |actual − median| / |actual|; none when the actual is 0.
    pub fn pct_error(&self) -> Option<f64> {
        (self.actual != 0.0).then(|| self.abs_error() / self.actual.abs())
    }

    /// 2 |actual − median| / (|actual| + |median|), 0 when both are 0.
    pub fn sym_pct_error(&self) -> f64 {
        let scale = self.actual.abs() + self.issued[2].abs();
        if scale == 0.0 {
            0.0
        } else {
            2.0 * self.abs_error() / scale
        }
    }

    /// Whether the actual fell inside the 80 % and the 95 % intervals.
    pub fn covered(&self) -> [bool; 2] {
        let (y, q) = (self.actual, self.issued);
        [q[1] <= y && y <= q[3], q[0] <= y && y <= q[4]]
    }
}

/// The name of the candidate at `i`, `model` for the model's.
pub fn forecaster_name(i: usize, model: &str) -> &str {
    CANDIDATES.get(i).copied().unwrap_or(model)
}

/// One key's learning at one horizon.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Track {
    /// Per point, its weighted MAE; none before its first resolved forecast.
    mae: Vec<Option<f64>>,
    chosen: usize,
    /// The last [`ERRORS`] errors (actual − issued median), oldest first.
    errors: VecDeque<f64>,
    /// The same errors, ascending (rebuilt after a restore).
    #[serde(skip)]
    sorted: Vec<f64>,
    /// ln of this key's factor on the 95 % and on the 80 % widths.
    log_scale: [f64; 2],
}

impl Track {
    /// The kept errors, ascending.
    fn sorted(&mut self) -> &[f64] {
        if self.sorted.len() != self.errors.len() {
            self.sorted = self.errors.iter().copied().collect();
            self.sorted.sort_by(f64::total_cmp);
        }
        &self.sorted
    }

    /// Keeps an error among the last [`ERRORS`], in order and sorted.
    fn remember(&mut self, e: f64) {
        self.sorted();
        if self.errors.len() == ERRORS
            && let Some(old) = self.errors.pop_front()
        {
            let i = self.sorted.partition_point(|v| v.total_cmp(&old).is_lt());
            self.sorted.remove(i);
        }
        self.errors.push_back(e);
        let i = self.sorted.partition_point(|v| v.total_cmp(&e).is_lt());
        self.sorted.insert(i, e);
    }
}

/// A forecast awaiting its target.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound(serialize = "K: Serialize", deserialize = "K: Deserialize<'de>"))]
struct Pending<K> {
    key: K,
    horizon: usize,
    points: Vec<Option<f64>>,
    issued: [f64; 5],
}

/// Per key and horizon, the choice among the candidates and the intervals (see the module
/// docs). `K` names a key: a stage's row key, or an evaluation's series.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound(
    serialize = "K: Serialize + Ord",
    deserialize = "K: Deserialize<'de> + Ord"
))]
pub struct Blend<K = String> {
    tracks: BTreeMap<K, Vec<Track>>,
    /// Per horizon, ln of the pooled factor on the 95 % and on the 80 % widths.
    pooled: Vec<[f64; 2]>,
    pending: BTreeMap<i64, Vec<Pending<K>>>,
}

impl<K> Default for Blend<K> {
    fn default() -> Self {
        Blend {
            tracks: BTreeMap::new(),
            pooled: Vec::new(),
            pending: BTreeMap::new(),
        }
    }
}

impl<K: Ord + Clone> Blend<K> {
    /// Learns from every pending forecast whose target is at or before `now`; `actual` gives a
    /// key's value at a time (none: the forecast is dropped unlearnt). Returns what each
    /// learnt forecast was against its actual.
    pub fn resolve(
        &mut self,
        now: i64,
        actual: impl Fn(&K, i64) -> Option<f64>,
    ) -> Vec<Outcome<K>> {
        let mut outcomes = Vec::new();
        let keep = 0.5f64.powf(1.0 / HALF_LIFE);
        // Every key's forecasts move the pooled factors, each by its share.
        let keys = self.tracks.len().max(1) as f64;
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() > now {
                break;
            }
            let target = *entry.key();
            for p in entry.remove() {
                let Some(y) = actual(&p.key, target) else {
                    continue;
                };
                let Some(track) = self
                    .tracks
                    .get_mut(&p.key)
                    .and_then(|t| t.get_mut(p.horizon))
                else {
                    continue;
                };
                for (mae, v) in track.mae.iter_mut().zip(&p.points) {
                    if let Some(v) = v {
                        let e = (y - v).abs();
                        *mae = Some(mae.map_or(e, |m| keep * m + (1.0 - keep) * e));
                    }
                }
                let q = p.issued;
                outcomes.push(Outcome {
                    key: p.key,
                    target,
                    horizon: p.horizon,
                    actual: y,
                    issued: q,
                });
                track.remember(y - q[2]);
                let missed = [y < q[0] || y > q[4], y < q[1] || y > q[3]];
                let pooled = &mut self.pooled[p.horizon];
                for i in 0..2 {
                    let step = ADAPT_RATE * (f64::from(u8::from(missed[i])) - MISS[i]);
                    track.log_scale[i] = (track.log_scale[i] + step).clamp(-4.0, 4.0);
                    pooled[i] = (pooled[i] + step / keys).clamp(-4.0, 4.0);
                }
                let best = (0..track.mae.len())
                    .filter_map(|i| track.mae[i].map(|m| (i, m)))
                    .min_by(|a, b| a.1.total_cmp(&b.1));
                if let Some((best, m)) = best {
                    match track.mae[track.chosen] {
                        Some(current) if m >= (1.0 - SWITCH_MARGIN) * current => {}
                        _ => track.chosen = best,
                    }
                }
            }
        }
        outcomes
    }

    /// The forecast for `key` at horizon `j` (of `horizons`), remembered until `target`: the
    /// chosen candidate's point (the first available in the order model, naive, … where it has
    /// none) with the intervals of the module docs. None where no candidate has a point.
    pub fn issue(
        &mut self,
        key: &K,
        j: usize,
        horizons: usize,
        target: i64,
        points: Points,
        model: Option<[f64; 5]>,
    ) -> Option<Issued> {
        if self.pooled.len() < horizons {
            self.pooled.resize(horizons, [0.0; 2]);
        }
        let tracks = self.tracks.entry(key.clone()).or_default();
        if tracks.len() < horizons {
            let start = if points[MODEL].is_some() { MODEL } else { 0 };
            tracks.resize_with(horizons, || Track {
                mae: vec![None; MODEL + 1],
                chosen: start,
                errors: VecDeque::new(),
                sorted: Vec::new(),
                log_scale: [0.0; 2],
            });
        }
        let track = &mut tracks[j];
        let forecaster = std::iter::once(track.chosen)
            .chain([MODEL])
            .chain(0..MODEL)
            .find(|&i| points[i].is_some())?;
        let m = points[forecaster]?;
        // Distances below and above the median: 2.5, 10, 90, 97.5 %.
        let offsets = if track.errors.len() >= MIN_ERRORS {
            let e = track.sorted();
            [0.025, 0.1, 0.9, 0.975].map(|p| quantile_sorted(e, p))
        } else if let Some(q) = model {
            [q[0], q[1], q[3], q[4]].map(|v| v - q[2])
        } else {
            [0.0; 4]
        };
        let [s95, s80] = [0, 1].map(|i| (self.pooled[j][i] + track.log_scale[i]).exp());
        let (lo, hi) = (|o: f64| o.min(0.0), |o: f64| o.max(0.0));
        let mut q = [
            m + s95 * lo(offsets[0]),
            m + s80 * lo(offsets[1]),
            m,
            m + s80 * hi(offsets[2]),
            m + s95 * hi(offsets[3]),
        ];
        // The 95 % interval holds the 80 % one.
        q[0] = q[0].min(q[1]);
        q[4] = q[4].max(q[3]);
        self.pending.entry(target).or_default().push(Pending {
            key: key.clone(),
            horizon: j,
            points: points.to_vec(),
            issued: q,
        });
        Some(Issued {
            quantiles: q,
            forecaster,
        })
    }

    /// Forgets a key (its pending forecasts resolve unlearnt).
    pub fn forget(&mut self, key: &K) {
        self.tracks.remove(key);
    }

    /// The pooled factors on the 95 % and 80 % widths at horizon `j`.
    pub fn pooled_factors(&self, j: usize) -> [f64; 2] {
        self.pooled.get(j).map_or([1.0; 2], |s| s.map(f64::exp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn only(i: usize, v: f64) -> Points {
        let mut p = [None; MODEL + 1];
        p[i] = Some(v);
        p
    }

    #[test]
    fn candidates_see_only_the_past_and_their_own_phases() {
        // Hour k holds the value k.
        let at = |t: i64| (t >= 0).then_some((t / HOUR) as f64);
        let c = candidates(at, 200 * HOUR, 6 * HOUR);
        assert_eq!(c[0], Some(200.0));
        assert_eq!(c[1], Some(182.0)); // 206 − 24
        assert_eq!(c[2], Some(188.5)); // mean of 177..=200
        assert_eq!(c[3], Some(188.5));
        assert_eq!(c[4], Some(110.0)); // median of 182, 158, …, 38
        assert_eq!(c[5], Some(38.0)); // 206 − 168
        // 25 hours ahead reaches back two days, never past the origin.
        assert_eq!(candidates(at, 200 * HOUR, 25 * HOUR)[1], Some(177.0));
        assert_eq!(candidates(at, 10 * HOUR, HOUR)[5], None);
    }

    #[test]
    fn each_key_chooses_its_own_best_candidate_and_switches_only_on_a_clear_lead() {
        let mut b = Blend::default();
        // Key a is the last value, exactly; key b is 5, whatever the last value says.
        let actual = |k: &&str, t: i64| Some(if *k == "a" { t as f64 } else { 5.0 });
        let mut chosen = BTreeMap::new();
        for t in 0..300i64 {
            b.resolve(t, actual);
            for key in ["a", "b"] {
                let last = if key == "a" { t as f64 } else { 5.0 };
                let mut p = [None; MODEL + 1];
                // Naive is 1 off for a and exact for b; the second candidate the reverse.
                p[0] = Some(last);
                p[2] = Some(if key == "a" { t as f64 + 1.0 } else { 7.0 });
                p[MODEL] = Some(if key == "a" { t as f64 - 3.0 } else { 5.5 });
                let issued = b.issue(&key, 0, 1, t + 1, p, None).unwrap();
                chosen.insert(key, issued.forecaster);
            }
        }
        assert_eq!(chosen["a"], 2);
        assert_eq!(chosen["b"], 0);
        // A lead of less than the margin does not switch: the model (0.02 off) stays against
        // naive (0.0195 off).
        let mut b = Blend::default();
        for t in 0..100i64 {
            b.resolve(t, |_, _| Some(1.0));
            let mut p = only(MODEL, 1.02);
            p[0] = Some(0.9805);
            assert_eq!(
                b.issue(&"k", 0, 1, t + 1, p, None).unwrap().forecaster,
                MODEL
            );
        }
    }

    #[test]
    fn intervals_reach_their_nominal_coverage_from_the_keys_own_errors() {
        use rand::SeedableRng;
        // Two keys of noise σ 1 and σ 10 around a level the naive forecast knows; the model
        // claims σ 0.1 for both.
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut b = Blend::default();
        let mut truth: BTreeMap<(i64, &str), f64> = BTreeMap::new();
        let mut tally: BTreeMap<&str, (usize, usize, usize)> = BTreeMap::new();
        let z = [-1.96, -1.2816, 0.0, 1.2816, 1.96];
        for t in 0..6000i64 {
            b.resolve(t, |k, target| truth.get(&(target, *k)).copied());
            for (key, sigma) in [("quiet", 1.0), ("loud", 10.0)] {
                let y = sigma * crate::generate::normal(&mut rng);
                truth.insert((t + 3, key), y);
                let issued = b
                    .issue(&key, 0, 1, t + 3, only(0, 0.0), Some(z.map(|z| 0.1 * z)))
                    .unwrap();
                let q = issued.quantiles;
                assert!(q.windows(2).all(|w| w[0] <= w[1]), "{q:?}");
                if t >= 3000 {
                    let e = tally.entry(key).or_default();
                    e.0 += 1;
                    e.1 += usize::from(q[1] <= y && y <= q[3]);
                    e.2 += usize::from(q[0] <= y && y <= q[4]);
                }
            }
            truth.retain(|(at, _), _| *at >= t - 8);
        }
        for (key, (n, in80, in95)) in tally {
            let (c80, c95) = (in80 as f64 / n as f64, in95 as f64 / n as f64);
            assert!((c80 - 0.8).abs() < 0.03, "{key}: 80 % covers {c80}");
            assert!((c95 - 0.95).abs() < 0.02, "{key}: 95 % covers {c95}");
        }
    }

    #[test]
    fn a_forecast_is_learnt_from_only_once_its_target_has_come() {
        let mut b = Blend::default();
        let q = [-2.0, -1.0, 0.0, 1.0, 2.0];
        let issued = b.issue(&"a", 0, 1, 10, only(MODEL, 0.0), Some(q)).unwrap();
        assert_eq!(issued.quantiles, q);
        // Target 10 has not come at 9: nothing learnt, whatever the value would be.
        b.resolve(9, |_, _| Some(100.0));
        assert_eq!(b.pooled_factors(0), [1.0, 1.0]);
        b.resolve(10, |k, _| (*k == "a").then_some(100.0));
        let [f95, f80] = b.pooled_factors(0);
        assert!((f95 - (ADAPT_RATE * 0.95).exp()).abs() < 1e-12);
        assert!((f80 - (ADAPT_RATE * 0.8).exp()).abs() < 1e-12);
        // The pooled factor serves every key: a's miss widens b's first intervals.
        let b2 = b.issue(&"b", 0, 1, 20, only(MODEL, 0.0), Some(q)).unwrap();
        assert!(
            (b2.quantiles[3] - f80).abs() < 1e-12 && (b2.quantiles[4] - 2.0 * f95).abs() < 1e-12,
            "{b2:?}"
        );
    }
}
