//! `stratus evaluate detect`: replays labelled series through the detector ensemble in event
//! time and scores the detections as NAB does.
//!
//! In: a `timestamp,value` CSV or a directory of them, a labels file, and the detectors (the
//! default ensemble unless given). Each series is replayed row by row through a fresh ensemble
//! — the score of a row is computed before any later row is seen, so there is no look-ahead.
//! Out: `<out>/<series path>` as `timestamp,value,anomaly_score`, `<out>/report.json`, and the
//! NAB scores of the ensemble beside a rolling z-score baseline, per profile.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::nab::{self, PROFILES, ProfileScore};
use super::series::{Csv, Labels};
use crate::score::detect::{DetectorSpec, Ensemble};

/// The baseline every run is compared against: a plain z-score over the trailing 24 hours.
pub fn baseline() -> Vec<DetectorSpec> {
    vec![DetectorSpec::Zscore {
        weight: 1.0,
        window: "24h".into(),
        min_points: 12,
    }]
}

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct DetectReport {
    pub series: usize,
    pub rows: usize,
    pub windows: usize,
    pub detectors: Vec<String>,
    pub ensemble: Vec<ProfileRow>,
    pub baseline: Vec<ProfileRow>,
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
fn series_files(input: &Path, out: &Path) -> Result<Vec<PathBuf>, String> {
    if input.is_file() {
        return Ok(vec![input.to_path_buf()]);
    }
    let out = out.canonicalize().unwrap_or_else(|_| out.to_path_buf());
    let mut files = Vec::new();
    let mut dirs = vec![input.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries =
            std::fs::read_dir(&dir).map_err(|e| format!("{}: cannot read: {e}", dir.display()))?;
        for entry in entries {
            let path = entry.map_err(|e| format!("{}: {e}", dir.display()))?.path();
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
        return Err(format!("{}: no .csv series found", input.display()));
    }
    Ok(files)
}

/// Scores of every row of `csv` by a fresh `ensemble`, in row order.
pub fn replay(csv: &Csv, mut ensemble: Ensemble) -> Vec<f64> {
    csv.timestamps
        .iter()
        .zip(&csv.values)
        .map(|(&t, &v)| ensemble.observe(t, v, None).score)
        .collect()
}

pub fn evaluate(
    input: &Path,
    labels: &Path,
    out: &Path,
    specs: &[DetectorSpec],
) -> Result<DetectReport, String> {
    let labels = Labels::read(labels)?;
    let root = if input.is_file() {
        input.parent().unwrap_or(Path::new("")).to_path_buf()
    } else {
        input.to_path_buf()
    };
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    let mut rows = 0;
    for file in series_files(input, out)? {
        let csv = Csv::read(&file)?;
        let windows = labels.windows_for(&root, &file)?;
        let scores = replay(&csv, Ensemble::new(specs)?);
        write_scores(
            &out.join(file.strip_prefix(&root).unwrap_or(&file)),
            &csv,
            &scores,
        )?;
        rows += csv.values.len();
        let name = file.display().to_string();
        theirs.push(nab::Series {
            name: name.clone(),
            timestamps: csv.timestamps.clone(),
            scores: replay(&csv, Ensemble::plain(&baseline())?),
            windows: windows.clone(),
        });
        ours.push(nab::Series {
            name,
            timestamps: csv.timestamps,
            scores,
            windows,
        });
    }
    let ensemble: Vec<ProfileRow> = PROFILES
        .iter()
        .map(|&p| nab::score(&ours, p).into())
        .collect();
    let report = DetectReport {
        series: ours.len(),
        rows,
        windows: ensemble.first().map_or(0, |r| r.detected + r.missed),
        detectors: specs.iter().map(|s| s.name().to_string()).collect(),
        ensemble,
        baseline: PROFILES
            .iter()
            .map(|&p| nab::score(&theirs, p).into())
            .collect(),
    };
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    std::fs::write(out.join("report.json"), json)
        .map_err(|e| format!("{}: cannot write: {e}", out.join("report.json").display()))?;
    Ok(report)
}

fn write_scores(path: &Path, csv: &Csv, scores: &[f64]) -> Result<(), String> {
    use std::fmt::Write as _;
    let mut text = String::from("timestamp,value,anomaly_score\n");
    for ((t, v), s) in csv.raw_timestamps.iter().zip(&csv.values).zip(scores) {
        let _ = writeln!(text, "{t},{v},{s}");
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("{}: cannot create: {e}", dir.display()))?;
    }
    std::fs::write(path, text).map_err(|e| format!("{}: cannot write: {e}", path.display()))
}

/// The report as a table, the ensemble beside the baseline per profile.
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
    for (ours, base) in report.ensemble.iter().zip(&report.baseline) {
        for (who, row) in [("ensemble", ours), ("zscore", base)] {
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
    s
}
