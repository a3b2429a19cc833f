//! `stratus evaluate detect` on NAB series (tests/data/nab-artificial, tests/data/nab-real-dev):
//! the command a user runs, its output files, and the detection quality it promises at one
//! threshold for the whole corpus.

use std::path::{Path, PathBuf};
use std::process::Command;

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/nab-artificial")
}

fn real() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/nab-real-dev")
}

/// Runs `stratus evaluate detect` on `input` and returns its report.
fn evaluate(input: &Path, out: &Path) -> serde_json::Value {
    let run = Command::new(env!("CARGO_BIN_EXE_stratus"))
        .args(["evaluate", "detect"])
        .arg(input)
        .arg("--labels")
        .arg(input.join("labels.json"))
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap()
}

/// The ensemble's score and a baseline's, per profile, in profile order.
fn margins(report: &serde_json::Value, baseline: &str) -> Vec<(String, f64, f64)> {
    let base = report["baselines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == baseline)
        .unwrap_or_else(|| panic!("no baseline {baseline}"));
    let profiles = report["ensemble"].as_array().unwrap();
    assert_eq!(profiles.len(), 3);
    profiles
        .iter()
        .zip(base["profiles"].as_array().unwrap())
        .map(|(ours, theirs)| {
            assert_eq!(ours["profile"], theirs["profile"]);
            (
                ours["profile"].as_str().unwrap().to_string(),
                ours["score"].as_f64().unwrap(),
                theirs["score"].as_f64().unwrap(),
            )
        })
        .collect()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("stratus-eval-{name}-{}", crate::unique("x")));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn on_the_artificial_series_the_ensemble_is_far_above_both_baselines() {
    let out = scratch("nab");
    let report = evaluate(&data(), &out);

    // One scored CSV per series, row for row.
    for name in ["art_daily_jumpsup.csv", "art_flatline.csv"] {
        let input = std::fs::read_to_string(data().join(name)).unwrap();
        let scored = std::fs::read_to_string(out.join(name)).unwrap();
        let mut lines = scored.lines();
        assert_eq!(lines.next(), Some("timestamp,value,anomaly_score"));
        for (a, b) in input.lines().skip(1).zip(lines.by_ref()) {
            let (ts, rest) = b.split_once(',').unwrap();
            assert!(a.starts_with(ts));
            let score: f64 = rest.rsplit(',').next().unwrap().parse().unwrap();
            assert!((0.0..=1.0).contains(&score), "{b}");
        }
        assert_eq!(lines.next(), None);
    }

    assert_eq!(report["series"], 11);
    assert_eq!(report["windows"], 6);
    for baseline in ["robust_z", "zscore"] {
        for (profile, ours, theirs) in margins(&report, baseline) {
            assert!(
                ours >= theirs + 30.0,
                "{profile}: ensemble {ours:.1} is not well above {baseline}'s {theirs:.1}"
            );
        }
    }
}

#[test]
fn on_real_series_never_seen_the_ensemble_beats_the_robust_z_score_by_15_points() {
    // 23 real NAB series (traffic, tweets, ad exchange), one threshold per profile for all.
    let out = scratch("real");
    let report = evaluate(&real(), &out);
    assert_eq!(report["series"], 23);
    assert_eq!(report["windows"], 61);
    // At least 15 points above the causal robust z-score on every profile.
    for (profile, ours, theirs) in margins(&report, "robust_z") {
        assert!(
            ours >= theirs + 15.0,
            "{profile}: ensemble {ours:.1} vs robust z {theirs:.1}: under 15 points above"
        );
    }
    for (profile, ours, theirs) in margins(&report, "zscore") {
        assert!(
            ours >= theirs + 15.0,
            "{profile}: ensemble {ours:.1} vs zscore {theirs:.1}"
        );
    }
}

#[test]
fn a_score_depends_only_on_the_rows_before_it() {
    let input = std::fs::read_to_string(data().join("art_daily_jumpsup.csv")).unwrap();
    let lines: Vec<&str> = input.lines().collect();
    let dir = scratch("prefix");
    let run = |rows: usize| {
        let series = dir.join("s.csv");
        std::fs::write(&series, lines[..=rows].join("\n")).unwrap();
        let labels = dir.join("labels.json");
        std::fs::write(&labels, r#"{"s.csv": []}"#).unwrap();
        let out = dir.join(format!("out-{rows}"));
        let ok = Command::new(env!("CARGO_BIN_EXE_stratus"))
            .args(["evaluate", "detect"])
            .arg(&series)
            .arg("--labels")
            .arg(&labels)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            ok.status.success(),
            "{}",
            String::from_utf8_lossy(&ok.stderr)
        );
        std::fs::read_to_string(out.join("s.csv")).unwrap()
    };
    let full = run(lines.len() - 1);
    let full: Vec<&str> = full.lines().collect();
    // Cut just before, inside and after the anomaly window (rows ~2,800 to ~3,200).
    for cut in [2_000, 2_950, 3_300] {
        let prefix = run(cut);
        let prefix: Vec<&str> = prefix.lines().collect();
        assert_eq!(prefix.len(), cut + 1);
        assert_eq!(
            prefix[..],
            full[..=cut],
            "scores up to row {cut} changed with later rows"
        );
    }
}

#[test]
fn a_missing_label_entry_is_an_error_that_names_the_file() {
    let dir = scratch("nolabel");
    std::fs::copy(data().join("art_noisy.csv"), dir.join("art_noisy.csv")).unwrap();
    std::fs::write(dir.join("labels.json"), "{}").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_stratus"))
        .args(["evaluate", "detect"])
        .arg(&dir)
        .arg("--labels")
        .arg(dir.join("labels.json"))
        .arg("--out")
        .arg(dir.join("out"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no labels for art_noisy.csv"), "{err}");
}
