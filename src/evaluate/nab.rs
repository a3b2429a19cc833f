//! Scores anomaly detections the way the Numenta Anomaly Benchmark does (Lavin & Ahmad, 2015).
//!
//! In: per series, its timestamps, the detector's score per row, and the labelled anomaly
//! windows. Out: per profile, the threshold that maximises the total score over all series,
//! the raw and normalised scores at that threshold, and the counts behind them.
//!
//! The rules, as NAB states them:
//! - the first 15 % of each series (at most 750 rows) is a probation period and not scored;
//! - a row at or above the threshold inside a window is a detection of that window; only the
//!   earliest one counts, rewarded by `tp · σ(−5·p) / σ(−5·(−1))` scaled to [−1, 1], where
//!   `p` runs from −1 at the window's first row to 0 just past its last;
//! - a window with no detection costs `fn`;
//! - each detection outside every window costs `fp` times the same scaled sigmoid of its
//!   distance past the previous window (so early false alarms just after a window cost less),
//!   or `fp` in full when no window precedes it;
//! - one threshold per profile, chosen by sweeping every score of every series at once;
//! - normalised as `100 · (raw − null) / (perfect − null)`: the null detector (which finds
//!   nothing) scores `−fn` per window, the perfect one `tp` per window.
//!
//! Profiles: standard (tp 1, fp 0.11, fn 1), reward_low_FP_rate (fp 0.22),
//! reward_low_FN_rate (fn 2).

/// A cost matrix.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Profile {
    pub name: &'static str,
    pub tp: f64,
    pub fp: f64,
    pub fn_: f64,
}

pub const PROFILES: [Profile; 3] = [
    Profile {
        name: "standard",
        tp: 1.0,
        fp: 0.11,
        fn_: 1.0,
    },
    Profile {
        name: "reward_low_FP_rate",
        tp: 1.0,
        fp: 0.22,
        fn_: 1.0,
    },
    Profile {
        name: "reward_low_FN_rate",
        tp: 1.0,
        fp: 0.11,
        fn_: 2.0,
    },
];

/// One labelled, scored series.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub timestamps: Vec<i64>,
    pub scores: Vec<f64>,
    /// Anomaly windows as inclusive `(start, end)` times, in the timestamps' unit.
    pub windows: Vec<(i64, i64)>,
}

/// The result of one profile over all series.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileScore {
    pub profile: Profile,
    /// Rows scoring at or above this are detections (`f64::INFINITY`: none).
    pub threshold: f64,
    pub raw: f64,
    /// 0 for the null detector, 100 for the perfect one; `None` when no series has a window.
    pub normalised: Option<f64>,
    /// Windows with a detection.
    pub detected: usize,
    pub missed: usize,
    /// Detections outside every window.
    pub false_positives: usize,
}

/// `2·σ(−5x) − 1`, and −1 from three window widths past a window.
fn scaled_sigmoid(x: f64) -> f64 {
    if x >= 3.0 {
        -1.0
    } else {
        2.0 / (1.0 + (5.0 * x).exp()) - 1.0
    }
}

/// A row that counts: its score, what detecting it is worth, and its window (global index).
struct Scorable {
    score: f64,
    weighted: f64,
    window: Option<usize>,
}

/// Row index ranges `[first, last]` of the windows that hold at least one row.
fn window_rows(timestamps: &[i64], windows: &[(i64, i64)]) -> Vec<(usize, usize)> {
    let mut rows: Vec<(usize, usize)> = windows
        .iter()
        .filter_map(|&(start, end)| {
            let first = timestamps.partition_point(|&t| t < start);
            let past = timestamps.partition_point(|&t| t <= end);
            (first < past).then(|| (first, past - 1))
        })
        .collect();
    rows.sort_unstable();
    rows
}

/// The probation period: 15 % of the rows, at most 750.
pub fn probation(rows: usize) -> usize {
    (rows * 15 / 100).min(750)
}

/// Every scorable row of one series, and how many of its windows are scorable.
fn scorable(series: &Series, profile: &Profile, first_window: usize) -> (Vec<Scorable>, usize) {
    let windows = window_rows(&series.timestamps, &series.windows);
    let skip = probation(series.timestamps.len());
    let max_tp = scaled_sigmoid(-1.0);
    let mut out = Vec::with_capacity(series.scores.len().saturating_sub(skip));
    let mut next = 0;
    let mut previous: Option<(usize, usize)> = None;
    let mut scorable_windows = Vec::new();
    for (i, &score) in series.scores.iter().enumerate() {
        while next < windows.len() && windows[next].1 < i {
            previous = Some(windows[next]);
            next += 1;
        }
        let inside = windows.get(next).filter(|w| w.0 <= i);
        let (weighted, window) = match inside {
            Some(&(first, last)) => {
                let width = (last - first + 1) as f64;
                let position = -((last - i + 1) as f64) / width;
                (scaled_sigmoid(position) * profile.tp / max_tp, Some(next))
            }
            None => {
                let past = match previous {
                    Some((first, last)) if last > first => {
                        (i - last) as f64 / (last - first) as f64
                    }
                    _ => 3.0,
                };
                (scaled_sigmoid(past) * profile.fp, None)
            }
        };
        if i < skip {
            continue;
        }
        if let Some(w) = window
            && scorable_windows.last() != Some(&w)
        {
            scorable_windows.push(w);
        }
        out.push(Scorable {
            score: if score.is_nan() { 0.0 } else { score },
            weighted,
            window: window
                .map(|w| first_window + scorable_windows.iter().position(|&x| x == w).unwrap_or(0)),
        });
    }
    (out, scorable_windows.len())
}

/// Sweeps every distinct score as the threshold and keeps the best total.
pub fn score(all: &[Series], profile: Profile) -> ProfileScore {
    let mut rows = Vec::new();
    let mut windows = 0;
    for series in all {
        let (mut r, w) = scorable(series, &profile, windows);
        rows.append(&mut r);
        windows += w;
    }
    rows.sort_by(|a, b| b.score.total_cmp(&a.score));

    // Nothing detected: every window missed.
    let mut best_in: Vec<Option<f64>> = vec![None; windows];
    let mut window_sum = -profile.fn_ * windows as f64;
    let mut fp_sum = 0.0;
    let mut fps = 0;
    let mut best = (f64::INFINITY, window_sum, 0usize, 0usize);
    let mut i = 0;
    while i < rows.len() {
        let threshold = rows[i].score;
        while i < rows.len() && rows[i].score == threshold {
            let row = &rows[i];
            match row.window {
                Some(w) => {
                    let old = best_in[w].unwrap_or(-profile.fn_);
                    let new = best_in[w].map_or(row.weighted, |b| b.max(row.weighted));
                    window_sum += new - old;
                    best_in[w] = Some(new);
                }
                None => {
                    fp_sum += row.weighted;
                    fps += 1;
                }
            }
            i += 1;
        }
        let total = window_sum + fp_sum;
        if total > best.1 {
            let detected = best_in.iter().filter(|b| b.is_some()).count();
            best = (threshold, total, detected, fps);
        }
    }
    let (threshold, raw, detected, false_positives) = best;
    let null = -profile.fn_ * windows as f64;
    let perfect = profile.tp * windows as f64;
    ProfileScore {
        profile,
        threshold,
        raw,
        normalised: (windows > 0).then(|| 100.0 * (raw - null) / (perfect - null)),
        detected,
        missed: windows - detected,
        false_positives,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(scores: Vec<f64>, windows: Vec<(i64, i64)>) -> Series {
        Series {
            name: "s".into(),
            timestamps: (0..scores.len() as i64).collect(),
            scores,
            windows,
        }
    }

    const STANDARD: Profile = PROFILES[0];

    #[test]
    fn the_earliest_detection_in_a_window_earns_the_full_reward() {
        // 100 rows: probation is rows 0..15; one window over rows 40..=49.
        let mut scores = vec![0.0; 100];
        scores[40] = 0.9;
        scores[45] = 0.9;
        let r = score(&[series(scores, vec![(40, 49)])], STANDARD);
        assert_eq!(r.threshold, 0.9);
        assert!((r.raw - 1.0).abs() < 1e-12, "{r:?}");
        assert_eq!(r.normalised, Some(100.0));
        assert_eq!((r.detected, r.missed, r.false_positives), (1, 0, 0));
    }

    #[test]
    fn a_late_detection_earns_less_and_a_miss_costs_fn() {
        let mut scores = vec![0.0; 100];
        scores[47] = 0.8; // p = -(49 - 47 + 1) / 10 = -0.3
        let r = score(&[series(scores, vec![(40, 49)])], STANDARD);
        let expected = scaled_sigmoid(-0.3) / scaled_sigmoid(-1.0);
        assert!((r.raw - expected).abs() < 1e-12);
        assert!((r.normalised.unwrap() - 100.0 * (expected + 1.0) / 2.0).abs() < 1e-9);
        // Under reward_low_FN_rate a miss costs 2, so the null detector scores −2.
        let none = score(&[series(vec![0.0; 100], vec![(40, 49)])], PROFILES[2]);
        assert_eq!((none.raw, none.normalised), (-2.0, Some(0.0)));
        assert_eq!(none.threshold, f64::INFINITY);
    }

    #[test]
    fn false_positives_cost_fp_and_less_just_after_a_window() {
        let mut scores = vec![0.0; 100];
        scores[40] = 1.0; // the detection
        scores[20] = 1.0; // before any window: −fp
        scores[51] = 1.0; // two rows past the window's end: (51 − 49) / 9 widths
        let r = score(&[series(scores, vec![(40, 49)])], STANDARD);
        let expected = 1.0 - 0.11 + 0.11 * scaled_sigmoid(2.0 / 9.0);
        assert!((r.raw - expected).abs() < 1e-12, "{} vs {expected}", r.raw);
        assert_eq!(r.false_positives, 2);
    }

    #[test]
    fn the_probation_period_is_not_scored() {
        let mut scores = vec![0.0; 100];
        scores[3] = 1.0; // inside the 15-row probation: no false positive
        let r = score(&[series(scores, vec![])], STANDARD);
        assert_eq!((r.raw, r.false_positives, r.normalised), (0.0, 0, None));
        assert_eq!(probation(10_000), 750);
    }

    #[test]
    fn one_threshold_is_swept_over_all_series_at_once() {
        // Series a: its window's onset scores 0.6, noise peaks at 0.5. Series b: its onset
        // scores 0.4, and 0.5 is noise. A threshold of 0.4 catches both onsets at the price of
        // both noise rows; 0.6 catches one window and misses the other.
        let mut a = vec![0.0; 100];
        a[40] = 0.6;
        a[80] = 0.5;
        let mut b = vec![0.0; 100];
        b[40] = 0.4;
        b[20] = 0.5;
        let all = [series(a, vec![(40, 49)]), series(b, vec![(40, 49)])];
        let r = score(&all, STANDARD);
        let past = scaled_sigmoid((80.0 - 49.0) / 9.0) * 0.11; // = −0.11: ≥ 3 widths past
        let at_04 = 2.0 + past - 0.11;
        assert!((r.raw - at_04).abs() < 1e-12, "{r:?}");
        assert_eq!(r.threshold, 0.4);
        assert_eq!((r.detected, r.false_positives), (2, 2));
    }
}
