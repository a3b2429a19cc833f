//! `stratus evaluate`: measures detectors and forecasts on labelled, held-out data.
//!
//! - [`series`]: `timestamp,value` CSV series and NAB-style label files;
//! - [`nab`]: the Numenta Anomaly Benchmark's scoring (windows, sigmoid reward, profiles);
//! - [`detect`]: replays series through the detector ensemble with no look-ahead and scores it;
//! - [`forecast`]: forecasts on a held-out range against naive and seasonal-naive baselines.

pub mod detect;
pub mod forecast;
pub mod nab;
pub mod series;

use std::path::PathBuf;

/// Why an evaluation could not read its input or write its output; every message names the
/// file (and the line, for a bad row).
#[derive(Debug, thiserror::Error)]
pub enum EvaluateError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// An entry of a directory being listed.
    #[error("{}: {source}", path.display())]
    List {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: cannot create: {source}", path.display())]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: cannot write: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    /// What is wrong in a file: at `line` (1 is the header), or in the file as a whole.
    #[error("{}{}: {problem}", path.display(), line.map_or(String::new(), |l| format!(":{l}")))]
    Invalid {
        path: PathBuf,
        line: Option<usize>,
        problem: String,
    },
    /// A labels file that is not JSON.
    #[error("{}: not JSON: {source}", path.display())]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// No labels file entry for a series.
    #[error(
        "{}: no labels for {}; add it to {} (an empty list for a series without anomalies)",
        series.display(),
        relative.display(),
        labels.display()
    )]
    NoLabels {
        series: PathBuf,
        /// The series' path relative to the evaluated directory: the key to add.
        relative: PathBuf,
        labels: PathBuf,
    },
    /// Several labels file entries end in the series' file name.
    #[error(
        "{}: several label entries end in its file name; key them by path relative to {}",
        series.display(),
        root.display()
    )]
    AmbiguousLabels { series: PathBuf, root: PathBuf },
    #[error(transparent)]
    Detectors(#[from] crate::score::detect::DetectError),
    #[error(transparent)]
    Model(#[from] crate::forecast::model::ForecastError),
    /// The report could not be serialised.
    #[error(transparent)]
    Report(#[from] serde_json::Error),
}

pub type Result<T, E = EvaluateError> = std::result::Result<T, E>;

impl EvaluateError {
    /// For `map_err`: `path` could not be read.
    fn read(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_path_buf();
        |source| EvaluateError::Read { path, source }
    }

    /// For `map_err`: `path` could not be written.
    fn write(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_path_buf();
        |source| EvaluateError::Write { path, source }
    }

    /// A problem with the file at `path` as a whole.
    fn file(path: &std::path::Path, problem: impl Into<String>) -> Self {
        EvaluateError::Invalid {
            path: path.to_path_buf(),
            line: None,
            problem: problem.into(),
        }
    }

    /// A problem on `line` of the file at `path`.
    fn line(path: &std::path::Path, line: usize, problem: impl Into<String>) -> Self {
        EvaluateError::Invalid {
            path: path.to_path_buf(),
            line: Some(line),
            problem: problem.into(),
        }
    }
}
