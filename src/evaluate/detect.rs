//! `stratus evaluate detect`: replays labelled series through the detector ensemble in event
//! time and scores the detections as NAB does.
//!
//! In: a `timestamp,value` CSV or a directory of them, a labels file, and the detectors (the
//! default ensemble unless given). Each series is replayed row by row, in file order, through
//! a fresh ensemble — the score of a row is computed before any later row is seen, so there is
//! no look-ahead. A row at or before the newest time already seen is treated as the score stage
//! treats a late or revised window: scored, not learnt, and reported. Out: `<out>/<series
//! path>` as `timestamp,value,anomaly_score`, `<out>/report.json`, and the NAB scores of the
//! ensemble beside the [`baselines`] per profile, at one threshold for the whole corpus.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::nab::{self, PROFILES, ProfileScore};
use super::series::{Csv, Labels};
use super::{EvaluateError, Result};
use crate::score::detect::{DetectorSpec, Ensemble};

/// The baselines every run is compared against, each a single detector thresholded as it is:
/// `robust_z`, the causal robust z-score (median of the last 1,000 values, scale the MAD ×
/// 1.4826 floored at their standard deviation), and `zscore`, the rolling z-score over the
/// trailing 24 hours (NAB's "windowed Gaussian").
pub fn baselines() -> Vec<(&'static str, DetectorSpec)> {
    vec![
        (
            "robust_z",
            DetectorSpec::RobustZ {
                weight: 1.0,
                baseline: None,
                points: 1_000,
                min_points: 12,
                smooth: 1,
                scale: Default::default(),
                min_relative_scale: 0.0,
            },
        ),
        (
            "zscore",
            DetectorSpec::Zscore {
                weight: 1.0,
                window: "24h".into(),
                min_points: 12,
            },
        ),
    ]
}

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct DetectReport {
    pub series: usize,
    pub rows: usize,
    pub windows: usize,
    pub detectors: Vec<String>,
    pub ensemble: Vec<ProfileRow>,
    pub baselines: Vec<BaselineRows>,
    /// Series with rows at or before the time of an earlier row.
    pub out_of_order: Vec<OutOfOrder>,
}

/// One baseline's scores, per profile.
#[derive(Debug, Clone, Serialize)]
pub struct BaselineRows {
    pub name: &'static str,
    pub profiles: Vec<ProfileRow>,
}

/// The rows of one series that came at or before the time of an earlier row.
#[derive(Debug, Clone, Serialize)]
pub struct OutOfOrder {
    pub file: String,
    pub rows: usize,
    /// The line of the first of them.
    pub first_line: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProfileRow {
    pub profile: &'static str,
    pub score: Option<f64>,
    pub raw: f64,
    pub threshold: f64,
    pub detected: usize,
    pub missed: usize,
    pub false_positives: usize,
}

impl From<ProfileScore> for ProfileRow {
    fn from(s: ProfileScore) -> Self {
        ProfileRow {
            profile: s.profile.name,
            score: s.normalised,
            raw: s.raw,
            threshold: s.threshold,
            detected: s.detected,
            missed: s.missed,
            false_positives: s.false_positives,
        }
    }
}

/// The CSV files to evaluate: `input` itself, or every `*.csv` under it but outside `out`, in
/// path order.
fn series_files(input: &Path, out: &Path) -> Result<Vec<PathBuf>> {
    if input.is_file() {
        return Ok(vec![input.to_path_buf()]);
    }
    let out = out.canonicalize().unwrap_or_else(|_| out.to_path_buf());
    let mut files = Vec::new();
    let mut dirs = vec![input.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir).map_err(EvaluateError::read(&dir))?;
        for entry in entries {
            let path = entry
                .map_err(|source| EvaluateError::List {
                    path: dir.clone(),
                    source,
                })?
                .path();
            if path.is_dir() {
                if path.canonicalize().ok().as_ref() != Some(&out) {
                    dirs.push(path);
                }
            } else if path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
            {
                files.push(path);
            }
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(EvaluateError::file(input, "no .csv series found"));
    }
    Ok(files)
}

/// Scores of every row of `csv` by a fresh `ensemble`, in file order, as the score stage would
/// give them (see [`Ensemble::observe_in_order`]), and the lines of the rows that were not
/// learnt because they came at or before the time of an earlier row.
pub fn replay(csv: &Csv, mut ensemble: Ensemble) -> (Vec<f64>, Vec<usize>) {
    let mut last = i64::MIN;
    let mut late = Vec::new();
    let scores = csv
        .timestamps
        .iter()
        .zip(&csv.values)
        .zip(&csv.lines)
        .map(|((&t, &v), &line)| {
            let (verdict, learnt) = ensemble.observe_in_order(&mut last, t, v, None);
            if !learnt {
                late.push(line);
            }
            verdict.score
        })
        .collect();
    (scores, late)
}

/// A scored series in time order, for NAB (rows of equal time keep their file order).
fn scored(name: &str, csv: &Csv, scores: Vec<f64>, windows: &[(i64, i64)]) -> nab::Series {
    let mut rows: Vec<(i64, f64)> = csv.timestamps.iter().copied().zip(scores).collect();
    rows.sort_by_key(|r| r.0);
    nab::Series {
        name: name.to_string(),
        timestamps: rows.iter().map(|r| r.0).collect(),
        scores: rows.iter().map(|r| r.1).collect(),
        windows: windows.to_vec(),
    }
}

pub fn evaluate(
    input: &Path,
    labels: &Path,
    out: &Path,
    specs: &[DetectorSpec],
) -> Result<DetectReport> {
    let labels = Labels::read(labels)?;
    let root = if input.is_file() {
        input.parent().unwrap_or(Path::new("")).to_path_buf()
    } else {
        input.to_path_buf()
    };
    let baselines = baselines();
    let mut ours = Vec::new();
    let mut theirs = vec![Vec::new(); baselines.len()];
    let mut out_of_order = Vec::new();
    let mut rows = 0;
    for file in series_files(input, out)? {
        let csv = Csv::read(&file)?;
        let windows = labels.windows_for(&root, &file)?;
        let (scores, late) = replay(&csv, Ensemble::new(specs)?);
        write_scores(
            &out.join(file.strip_prefix(&root).unwrap_or(&file)),
            &csv,
            &scores,
        )?;
        rows += csv.values.len();
        let name = file.display().to_string();
        if let Some(&first_line) = late.first() {
            out_of_order.push(OutOfOrder {
                file: name.clone(),
                rows: late.len(),
                first_line,
            });
        }
        for ((_, spec), series) in baselines.iter().zip(&mut theirs) {
            let (scores, _) = replay(&csv, Ensemble::plain(std::slice::from_ref(spec))?);
            series.push(scored(&name, &csv, scores, &windows));
        }
        ours.push(scored(&name, &csv, scores, &windows));
    }
    let profiles = |all: &[nab::Series]| -> Vec<ProfileRow> {
        PROFILES
            .iter()
            .map(|&p| nab::score(all, p).into())
            .collect()
    };
    let ensemble = profiles(&ours);
    let report = DetectReport {
        series: ours.len(),
        rows,
        windows: ensemble.first().map_or(0, |r| r.detected + r.missed),
        detectors: specs.iter().map(|s| s.name().to_string()).collect(),
        ensemble,
        baselines: baselines
            .iter()
            .zip(&theirs)
            .map(|((name, _), series)| BaselineRows {
                name,
                profiles: profiles(series),
            })
            .collect(),
        out_of_order,
    };
    let json = serde_json::to_string_pretty(&report)?;
    let path = out.join("report.json");
    std::fs::write(&path, json).map_err(EvaluateError::write(&path))?;
    Ok(report)
}

fn write_scores(path: &Path, csv: &Csv, scores: &[f64]) -> Result<()> {
    use std::fmt::Write as _;
    let mut text = String::from("timestamp,value,anomaly_score\n");
    for ((t, v), s) in csv.raw_timestamps.iter().zip(&csv.values).zip(scores) {
        let _ = writeln!(text, "{t},{v},{s}");
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| EvaluateError::Create {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    std::fs::write(path, text).map_err(EvaluateError::write(path))
}

/// The report as a table, the ensemble beside each baseline per profile, then the rows out of
/// time order.
pub fn render(report: &DetectReport) -> String {
    use std::fmt::Write as _;
    let mut s = format!(
        "{} series, {} rows, {} scored anomaly windows; detectors: {}\n\n",
        report.series,
        report.rows,
        report.windows,
        report.detectors.join(", ")
    );
    let _ = writeln!(
        s,
        "{:<20} {:<10} {:>7} {:>10} {:>9} {:>7} {:>7}",
        "profile", "detector", "score", "threshold", "detected", "missed", "fp"
    );
    for (i, ours) in report.ensemble.iter().enumerate() {
        let rows = std::iter::once(("ensemble", ours)).chain(
            report
                .baselines
                .iter()
                .filter_map(|b| Some((b.name, b.profiles.get(i)?))),
        );
        for (who, row) in rows {
            let score = row.score.map_or("n/a".into(), |v| format!("{v:.1}"));
            let _ = writeln!(
                s,
                "{:<20} {:<10} {:>7} {:>10.4} {:>9} {:>7} {:>7}",
                row.profile,
                who,
                score,
                row.threshold,
                row.detected,
                row.missed,
                row.false_positives
            );
        }
    }
    for o in &report.out_of_order {
        let _ = writeln!(
            s,
            "\n{}:{}: {} row(s) at or before the time of an earlier row: scored against what came \
             before them and not learnt, as the score stage treats a late window",
            o.file, o.first_line, o.rows
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv(rows: &[(i64, f64)]) -> Csv {
        Csv {
            path: PathBuf::from("s.csv"),
            timestamps: rows.iter().map(|r| r.0).collect(),
            raw_timestamps: rows.iter().map(|r| r.0.to_string()).collect(),
            values: rows.iter().map(|r| r.1).collect(),
            lines: (2..rows.len() + 2).collect(),
        }
    }

    #[test]
    fn a_row_out_of_time_order_is_scored_not_learnt_and_reported() {
        // 5-minute rows: two days and more, past the calibration's day of learning.
        let step = 300_000_000;
        let in_order: Vec<(i64, f64)> = (0..600)
            .map(|i| {
                (
                    i * step,
                    10.0 + (i % 7) as f64 + if i == 500 { 40.0 } else { 0.0 },
                )
            })
            .collect();
        // The same rows with a stray one (a repeat of row 350's time with a wild value) after row
        // 400, past the calibration's learning: it is scored against the state so far, and
        // nothing after it changes.
        let mut stray = in_order.clone();
        stray.insert(401, (350 * step, 90.0));
        let ensemble = || Ensemble::new(&DetectorSpec::default_ensemble()).unwrap();
        let (want, none) = replay(&csv(&in_order), ensemble());
        assert!(none.is_empty());
        let (got, late) = replay(&csv(&stray), ensemble());
        assert_eq!(late, [403], "the stray row's line");
        let stray_score = got[401];
        assert!(stray_score > 0.5, "the stray row is scored: {stray_score}");
        let mut without = got.clone();
        without.remove(401);
        assert_eq!(without, want);
        // For NAB the rows are put in time order, the stray after row 350.
        let series = scored("s", &csv(&stray), got, &[]);
        assert!(series.timestamps.is_sorted());
        assert_eq!(series.scores[350], without[350]);
        assert_eq!(series.scores[351], stray_score);
    }
}
