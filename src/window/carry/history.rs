//! One key's carried history, in bounded memory: its recent windows exactly, its older windows
//! within the baseline as a [`Summary`] per slice of event time.
//!
//! In: the key's windows, each a start and per column its value and EWMA. Out: the previous
//! window (for delta, rate and EWMA) and, per column, the median and MAD of the baseline a
//! window is judged against.
//!
//! The baseline is cut into [`SLICES`] slices of equal span (an hour of a 24-hour baseline).
//! The newest windows stay exact: at least the newest two slices' and at least [`EXACT`] of
//! them. Older ones are sealed a whole slice at a time into one summary per column, of at most
//! [`POINTS`](crate::stats::summary::POINTS) values (see `stats::summary` for the error bound: the median's rank off by at
//! most 1/32 of the sealed windows). A sealed slice leaves the baseline when its oldest window
//! does, so the baseline spans the last `baseline` of event time less at most one slice. A key
//! with a day's 1-minute windows holds 64 to 120 exact windows and 23 slices of at most 16
//! values per column, not 1,440 windows; a baseline of at most [`EXACT`] windows stays exact.

use std::collections::VecDeque;

use crate::stats::summary::Summary;
use crate::stats::{self, MAD_TO_SIGMA};

/// Slices a baseline is cut into.
pub const SLICES: i64 = 24;

/// Fewest windows kept exact (as long as the baseline holds them).
pub const EXACT: usize = 64;

/// One window of one key.
#[derive(Debug, Clone)]
pub(super) struct Point {
    pub start: i64,
    /// Per column its value (NaN for null), then per column its EWMA.
    pub data: Box<[f64]>,
}

impl Point {
    pub fn value(&self, j: usize) -> f64 {
        self.data[j]
    }

    pub fn ewma(&self, j: usize) -> f64 {
        self.data[self.data.len() / 2 + j]
    }
}

/// A sealed slice: its number (start / slice span), the start of its oldest window, and per
/// column the summary of its non-null values (none where all were null).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Slice {
    pub number: i64,
    pub first: i64,
    pub columns: Vec<Option<Summary>>,
}

/// One key's windows: exact ones oldest first, with per column their non-null values in
/// ascending order (so a median and MAD cost a walk, not a sort), and sealed slices.
#[derive(Debug, Default)]
pub(super) struct KeyHistory {
    pub points: Vec<Point>,
    sorted: Vec<Vec<f64>>,
    pub slices: VecDeque<Slice>,
    /// Per column the sealed slices' points with their weights, ascending, and the count of
    /// values they stand for: rebuilt when a slice is sealed or leaves.
    sealed: Vec<(Vec<(f64, f64)>, f64)>,
}

/// A window's median and z-score against a baseline: none below the baseline's fewest values,
/// no z-score when it has no spread.
pub(super) type Judged = Option<(f64, Option<f64>)>;

impl KeyHistory {
    /// Per column `width`, the state restored: `points` (any order) and `slices` (oldest
    /// first), sealed further where they hold more exact windows than needed.
    pub fn restored(mut points: Vec<Point>, slices: Vec<Slice>, width: usize, span: i64) -> Self {
        points.sort_by_key(|p| p.start);
        let mut history = KeyHistory {
            points,
            slices: slices.into(),
            ..KeyHistory::default()
        };
        history.resort(width);
        history.seal(width, span);
        history.reseal(width);
        history
    }

    pub fn newest(&self) -> Option<i64> {
        self.points.last().map(|p| p.start)
    }

    /// Whether a window at `start` falls after every sealed slice, where its neighbours are
    /// exact.
    pub fn is_exact_at(&self, start: i64, span: i64) -> bool {
        self.slices
            .back()
            .is_none_or(|s| start.div_euclid(span) > s.number)
    }

    /// Drops what a window at `start` (the newest) no longer counts: exact windows older than
    /// `baseline` before it, and slices whose oldest window is.
    pub fn expire(&mut self, start: i64, baseline: i64, width: usize) {
        let from = start - baseline;
        let keep_from = self.points.partition_point(|p| p.start < from);
        for p in self.points.drain(..keep_from) {
            for (j, sorted) in self.sorted.iter_mut().enumerate() {
                if !p.value(j).is_nan() {
                    remove_sorted(sorted, p.value(j));
                }
            }
        }
        let before = self.slices.len();
        while self.slices.front().is_some_and(|s| s.first < from) {
            self.slices.pop_front();
        }
        if self.slices.len() != before {
            self.reseal(width);
        }
    }

    /// Adds the newest window.
    pub fn push(&mut self, point: Point, width: usize, span: i64) {
        self.sorted.resize_with(width, Vec::new);
        for (sorted, &x) in self.sorted.iter_mut().zip(&point.data[..width]) {
            if !x.is_nan() {
                insert_sorted(sorted, x);
            }
        }
        self.points.push(point);
        self.seal(width, span);
    }

    /// Puts a window among the exact ones (replacing one with its start), then drops the exact
    /// windows older than `baseline` before the newest.
    pub fn revise(&mut self, point: Point, width: usize, baseline: i64) {
        let points = &mut self.points;
        let pos = points.partition_point(|p| p.start < point.start);
        if points.get(pos).is_some_and(|p| p.start == point.start) {
            points[pos] = point;
        } else {
            points.insert(pos, point);
        }
        if let Some(newest) = points.last().map(|p| p.start) {
            let keep_from = points.partition_point(|p| p.start < newest - baseline);
            points.drain(..keep_from);
        }
        self.resort(width);
    }

    /// Seals the oldest exact slice while more than [`EXACT`] windows are exact and it is
    /// older than the newest two.
    fn seal(&mut self, width: usize, span: i64) {
        let Some(newest) = self.newest().map(|s| s.div_euclid(span)) else {
            return;
        };
        let mut sealed = false;
        while self.points.len() > EXACT {
            let number = self.points[0].start.div_euclid(span);
            if number >= newest - 1 {
                break;
            }
            let end = self
                .points
                .partition_point(|p| p.start.div_euclid(span) == number);
            let first = self.points[0].start;
            let columns = (0..width)
                .map(|j| {
                    let mut values: Vec<f64> = self.points[..end]
                        .iter()
                        .map(|p| p.value(j))
                        .filter(|v| !v.is_nan())
                        .collect();
                    values.sort_unstable_by(f64::total_cmp);
                    for &v in &values {
                        remove_sorted(&mut self.sorted[j], v);
                    }
                    (!values.is_empty()).then(|| Summary::of_sorted(&values))
                })
                .collect();
            self.points.drain(..end);
            self.slices.push_back(Slice {
                number,
                first,
                columns,
            });
            sealed = true;
        }
        if sealed {
            self.reseal(width);
        }
    }

    /// Rebuilds the sealed slices' merged points per column.
    fn reseal(&mut self, width: usize) {
        self.sealed = (0..width)
            .map(|j| {
                let mut merged: Vec<(f64, f64)> = self
                    .slices
                    .iter()
                    .filter_map(|s| s.columns.get(j).and_then(Option::as_ref))
                    .flat_map(Summary::weighted)
                    .collect();
                merged.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
                let count = merged.iter().map(|(_, w)| w).sum();
                (merged, count)
            })
            .collect();
    }

    /// Sorts the exact windows' values again (after an out-of-order change).
    fn resort(&mut self, width: usize) {
        self.sorted = (0..width)
            .map(|j| {
                let mut v: Vec<f64> = self
                    .points
                    .iter()
                    .map(|p| p.value(j))
                    .filter(|v| !v.is_nan())
                    .collect();
                v.sort_unstable_by(f64::total_cmp);
                v
            })
            .collect();
    }

    /// The exact windows' values of column `j`, ascending (all of them: for the newest window).
    pub fn sorted(&self, j: usize) -> &[f64] {
        self.sorted.get(j).map_or(&[], Vec::as_slice)
    }

    /// `x` judged against `exact` (ascending values of exact windows) and the sealed slices of
    /// column `j`: its baseline's median and robust z-score, none below `min` values.
    pub fn judge(
        &self,
        x: f64,
        j: usize,
        exact: &[f64],
        min: usize,
        scratch: &mut Scratch,
    ) -> Judged {
        let (sealed, count) = match self.sealed.get(j) {
            Some((merged, count)) if !merged.is_empty() => (merged, *count),
            _ => return robust_z(x, exact, min),
        };
        if (exact.len() as f64 + count) < min.max(1) as f64 {
            return None;
        }
        scratch.merged.clear();
        let (mut a, mut b) = (0, 0);
        while a < exact.len() || b < sealed.len() {
            if b == sealed.len() || (a < exact.len() && exact[a] <= sealed[b].0) {
                scratch.merged.push((exact[a], 1.0));
                a += 1;
            } else {
                scratch.merged.push(sealed[b]);
                b += 1;
            }
        }
        let (median, mad) =
            stats::weighted_median_and_mad(&scratch.merged, &mut scratch.deviations)?;
        Some((
            median,
            (mad > 0.0).then(|| (x - median) / (MAD_TO_SIGMA * mad)),
        ))
    }

    /// Values held per column, exact and summarised: what memory the key costs.
    pub fn values_held(&self) -> usize {
        self.points.len()
            + self
                .slices
                .iter()
                .map(|s| {
                    s.columns
                        .iter()
                        .flatten()
                        .map(|c| c.points().len())
                        .max()
                        .unwrap_or(0)
                })
                .sum::<usize>()
    }
}

/// Buffers reused from row to row.
#[derive(Debug, Default)]
pub(super) struct Scratch {
    /// Exact values of a revised window's baseline.
    pub baseline: Vec<f64>,
    merged: Vec<(f64, f64)>,
    deviations: Vec<(f64, f64)>,
}

/// Against `sorted` (a baseline's values, ascending): its median and `(x − median) /
/// (1.4826 × MAD)`; none when it has fewer than `min` values, no z-score when it has no spread.
pub(super) fn robust_z(x: f64, sorted: &[f64], min: usize) -> Judged {
    if sorted.len() < min.max(1) {
        return None;
    }
    let (median, mad) = stats::median_and_mad_sorted(sorted)?;
    Some((
        median,
        (mad > 0.0).then(|| (x - median) / (MAD_TO_SIGMA * mad)),
    ))
}

fn insert_sorted(sorted: &mut Vec<f64>, x: f64) {
    let at = sorted.partition_point(|v| v.total_cmp(&x).is_lt());
    sorted.insert(at, x);
}

fn remove_sorted(sorted: &mut Vec<f64>, x: f64) {
    if let Ok(at) = sorted.binary_search_by(|v| v.total_cmp(&x)) {
        sorted.remove(at);
    }
}
