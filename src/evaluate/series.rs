//! Labelled `timestamp,value` series on disk, as public anomaly benchmarks ship them.
//!
//! In: a CSV file (header `timestamp,value`; times as `2014-04-01 00:05:00`, RFC 3339, or
//! epoch seconds) and a labels file — NAB's `combined_windows.json` form (`{"file.csv":
//! [[start, end], …]}`) or the same map under a `"windows"` key. Out: times in µs since the
//! epoch (UTC), values, and each file's anomaly windows, rows in file order (real files have
//! rows out of time order; [`Csv::lines`] names each row's line for reporting them). Errors name
//! the file and line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDateTime};

use super::{EvaluateError, Result};

/// A `timestamp,value` series.
#[derive(Debug, Clone)]
pub struct Csv {
    pub path: PathBuf,
    pub timestamps: Vec<i64>,
    /// As written in the file, so the output repeats it exactly.
    pub raw_timestamps: Vec<String>,
    pub values: Vec<f64>,
    /// Each row's line in the file (1 is the header).
    pub lines: Vec<usize>,
}

/// Parses a time as benchmark files write it; µs since the epoch, UTC.
pub fn parse_time(text: &str) -> Option<i64> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.timestamp_micros());
    }
    for format in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
            return Some(t.and_utc().timestamp_micros());
        }
    }
    let seconds: f64 = text.parse().ok()?;
    (seconds.is_finite() && seconds.abs() < 1e13).then(|| (seconds * 1e6).round() as i64)
}

impl Csv {
    /// Reads a series, its rows in file order.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(EvaluateError::read(path))?;
        let mut lines = text.lines().enumerate();
        let columns = match lines.next() {
            Some((_, header)) => header
                .split(',')
                .map(|c| c.trim().trim_matches('"').to_ascii_lowercase())
                .collect::<Vec<_>>(),
            None => {
                return Err(EvaluateError::file(
                    path,
                    "empty file; expected a `timestamp,value` header",
                ));
            }
        };
        let find = |name: &str| {
            columns.iter().position(|c| c == name).ok_or_else(|| {
                EvaluateError::line(
                    path,
                    1,
                    format!("no `{name}` column in the header; expected `timestamp,value`"),
                )
            })
        };
        let (ti, vi) = (find("timestamp")?, find("value")?);
        let mut out = Csv {
            path: path.to_path_buf(),
            timestamps: Vec::new(),
            raw_timestamps: Vec::new(),
            values: Vec::new(),
            lines: Vec::new(),
        };
        for (n, line) in lines {
            if line.trim().is_empty() {
                continue;
            }
            let cells: Vec<&str> = line
                .split(',')
                .map(|c| c.trim().trim_matches('"'))
                .collect();
            let at = |problem: String| EvaluateError::line(path, n + 1, problem);
            let (Some(t), Some(v)) = (cells.get(ti), cells.get(vi)) else {
                return Err(at("fewer cells than the header names".into()));
            };
            let ts = parse_time(t).ok_or_else(|| {
                at(format!(
                    "{t:?} is not a time; write `2014-04-01 00:05:00` or RFC 3339"
                ))
            })?;
            let value = if v.is_empty() || v.eq_ignore_ascii_case("nan") {
                f64::NAN
            } else {
                v.parse()
                    .map_err(|_| at(format!("{v:?} is not a number")))?
            };
            out.timestamps.push(ts);
            out.raw_timestamps.push(t.to_string());
            out.values.push(value);
            out.lines.push(n + 1);
        }
        Ok(out)
    }
}

/// Anomaly windows per file, keyed as the labels file writes them.
#[derive(Debug, Clone, Default)]
pub struct Labels {
    windows: BTreeMap<String, Vec<(i64, i64)>>,
    path: PathBuf,
}

impl Labels {
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(EvaluateError::read(path))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| EvaluateError::Json {
                path: path.to_path_buf(),
                source,
            })?;
        let map = json.get("windows").unwrap_or(&json).as_object().ok_or_else(|| {
            EvaluateError::file(
                path,
                "expected an object of file name → [[start, end], …] (NAB's combined_windows.json)",
            )
        })?;
        let mut windows = BTreeMap::new();
        for (file, list) in map {
            let bad = || {
                EvaluateError::file(
                    path,
                    format!("windows of {file:?} must be a list of [start, end] time pairs"),
                )
            };
            let mut parsed = Vec::new();
            for pair in list.as_array().ok_or_else(bad)? {
                let pair = pair.as_array().filter(|p| p.len() == 2).ok_or_else(bad)?;
                let time = |v: &serde_json::Value| v.as_str().and_then(parse_time).ok_or_else(bad);
                parsed.push((time(&pair[0])?, time(&pair[1])?));
            }
            windows.insert(file.clone(), parsed);
        }
        Ok(Labels {
            windows,
            path: path.to_path_buf(),
        })
    }

    /// The windows of a series: the key equal to its path relative to `root`, else the one key
    /// whose file name is the series' file name.
    pub fn windows_for(&self, root: &Path, series: &Path) -> Result<Vec<(i64, i64)>> {
        let relative = series.strip_prefix(root).unwrap_or(series);
        if let Some(w) = self.windows.get(&relative.to_string_lossy().to_string()) {
            return Ok(w.clone());
        }
        let name = series.file_name().map(|n| n.to_string_lossy().to_string());
        let matches: Vec<_> = self
            .windows
            .iter()
            .filter(|(k, _)| {
                Path::new(k.as_str())
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    == name
            })
            .collect();
        match matches.as_slice() {
            [(_, w)] => Ok((*w).clone()),
            [] => Err(EvaluateError::NoLabels {
                series: series.to_path_buf(),
                relative: relative.to_path_buf(),
                labels: self.path.clone(),
            }),
            _ => Err(EvaluateError::AmbiguousLabels {
                series: series.to_path_buf(),
                root: root.to_path_buf(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("stratus-series-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn times_parse_in_every_form_benchmarks_write() {
        let t = 1_396_310_700_000_000; // 2014-04-01 00:05:00 UTC
        assert_eq!(parse_time("2014-04-01 00:05:00"), Some(t));
        assert_eq!(parse_time("2014-04-01 00:05:00.000000"), Some(t));
        assert_eq!(parse_time("2014-04-01T00:05:00Z"), Some(t));
        assert_eq!(parse_time("2014-04-01T02:05:00+02:00"), Some(t));
        assert_eq!(parse_time("1396310700"), Some(t));
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(parse_time("1e300"), None);
    }

    #[test]
    fn a_bad_row_is_reported_with_file_and_line() {
        let p = scratch("bad-row").join("s.csv");
        std::fs::write(
            &p,
            "timestamp,value\n2014-04-01 00:00:00,1\n2014-04-01 00:05:00,x\n",
        )
        .unwrap();
        let e = Csv::read(&p).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{}:3: \"x\" is not a number", p.display())
        );
        assert!(matches!(e, EvaluateError::Invalid { line: Some(3), .. }));
        // A row out of time order is read as it stands, with its line.
        std::fs::write(
            &p,
            "timestamp,value\n2014-04-01 00:05:00,1\n\n2014-04-01 00:00:00,2\n",
        )
        .unwrap();
        let csv = Csv::read(&p).unwrap();
        assert_eq!(csv.values, [1.0, 2.0]);
        assert_eq!(csv.lines, [2, 4]);
        assert!(csv.timestamps[1] < csv.timestamps[0]);
        std::fs::write(&p, "time,value\n").unwrap();
        assert_eq!(
            Csv::read(&p).unwrap_err().to_string(),
            format!(
                "{}:1: no `timestamp` column in the header; expected `timestamp,value`",
                p.display()
            )
        );
        std::fs::write(&p, "").unwrap();
        assert_eq!(
            Csv::read(&p).unwrap_err().to_string(),
            format!(
                "{}: empty file; expected a `timestamp,value` header",
                p.display()
            )
        );
    }

    #[test]
    fn labels_match_by_relative_path_or_by_unique_file_name() {
        let labels = scratch("labels").join("labels.json");
        std::fs::write(
            &labels,
            r#"{"windows": {"realKnownCause/a.csv": [["2014-04-01 00:00:00.000000", "2014-04-01 01:00:00.000000"]], "b.csv": []}}"#,
        )
        .unwrap();
        let l = Labels::read(&labels).unwrap();
        let root = Path::new("/data");
        let hour = 3_600_000_000;
        let start = 1_396_310_400_000_000;
        assert_eq!(
            l.windows_for(root, Path::new("/data/realKnownCause/a.csv"))
                .unwrap(),
            vec![(start, start + hour)]
        );
        assert_eq!(
            l.windows_for(root, Path::new("/elsewhere/a.csv"))
                .unwrap()
                .len(),
            1
        );
        assert!(
            l.windows_for(root, Path::new("/data/b.csv"))
                .unwrap()
                .is_empty()
        );
        let e = l.windows_for(root, Path::new("/data/c.csv")).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "/data/c.csv: no labels for c.csv; add it to {} (an empty list for a series \
                 without anomalies)",
                labels.display()
            )
        );
        std::fs::write(
            &labels,
            r#"{"x/a.csv": [], "y/a.csv": [["soon", "later"]]}"#,
        )
        .unwrap();
        assert_eq!(
            Labels::read(&labels).unwrap_err().to_string(),
            format!(
                "{}: windows of \"y/a.csv\" must be a list of [start, end] time pairs",
                labels.display()
            )
        );
        std::fs::write(&labels, r#"{"x/a.csv": [], "y/a.csv": []}"#).unwrap();
        let l = Labels::read(&labels).unwrap();
        assert!(matches!(
            l.windows_for(root, Path::new("/data/a.csv")),
            Err(EvaluateError::AmbiguousLabels { .. })
        ));
    }
}
