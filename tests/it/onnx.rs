//! ONNX Runtime through `ort`, found in the project's Python environment: an Isolation Forest
//! trained by scikit-learn and exported by skl2onnx scores the same in Rust as in Python.

use std::path::Path;
use std::process::Command;

use stratus::score::OnnxModel;

use crate::{setting, unique};

const FEATURES: usize = 6;

#[test]
fn isolation_forest_scores_match_scikit_learn() {
    let dir = std::env::temp_dir().join(unique("it-onnx"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/iforest_oracle.py");
    let status = Command::new(setting("STRATUS_PYTHON"))
        .arg(&script)
        .arg(&dir)
        .status()
        .unwrap();
    assert!(status.success(), "{} failed", script.display());

    let text = std::fs::read_to_string(dir.join("expected.csv")).unwrap();
    let mut features = Vec::new();
    let mut expected = Vec::new();
    for line in text.lines() {
        let values: Vec<f64> = line.split(',').map(|v| v.parse().unwrap()).collect();
        assert_eq!(values.len(), FEATURES + 1);
        features.extend(values[..FEATURES].iter().map(|v| *v as f32));
        expected.push(values[FEATURES]);
    }
    assert_eq!(expected.len(), 500);

    let mut model = OnnxModel::load(&dir.join("iforest.onnx"), FEATURES).unwrap();
    assert_eq!(model.outputs(), ["label", "scores"]);
    let scores = model.score(&features, "scores").unwrap();
    assert_eq!(scores.len(), expected.len());
    let worst = scores
        .iter()
        .zip(&expected)
        .map(|(got, want)| (f64::from(*got) - want).abs())
        .fold(0.0, f64::max);
    assert!(
        worst <= 1e-5,
        "largest difference from scikit-learn: {worst}"
    );
    // The clear outliers (the last 100 rows) score below every inlier's median.
    let mut inliers: Vec<f32> = scores[..400].to_vec();
    inliers.sort_by(f32::total_cmp);
    assert!(scores[400..].iter().all(|s| *s < inliers[200]));

    // A wrong row width is an error, not a crash.
    assert!(model.score(&features[..FEATURES + 1], "scores").is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}
