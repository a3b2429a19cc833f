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
//! [`POINTS`](crate::stats::summary::POINTS) values (see `stats::summary` for the error bound:
//! the median's rank off by at most 1/32 of the sealed windows). A sealed slice leaves the
//! baseline when its oldest window does, so the baseline spans the last `baseline` of event
//! time less at most one slice. A baseline of at most [`EXACT`] windows stays exact.
//!
//! Memory: per exact window 8 bytes and 16 per column (its start; value and EWMA), plus 8 per
//! column in the sorted copy; per sealed value 9 bytes (the value and its slice's tag, kept in
//! one ascending run per column: a row's baseline is the merge of that run and the exact
//! values, walked to its middle). A day of 1-minute
//! windows with two columns: 64 to 120 exact windows and 23 slices of 16 values per column,
//! 12 to 15 KB per key instead of about 130 KB for 1,440 exact windows. The buffers grow by an
//! eighth at a time, not by doubling, so they hold at most about an eighth more than that.

use std::collections::VecDeque;

use crate::stats::summary::Summary;
use crate::stats::{self, MAD_TO_SIGMA};

/// Slices a baseline is cut into.
pub const SLICES: i64 = 24;

/// Fewest windows kept exact (as long as the baseline holds them).
pub const EXACT: usize = 64;

/// One exact window of one key, as stored: its start and per column its value (NaN for null),
/// then per column its EWMA.
#[derive(Debug, Clone, Copy)]
pub(super) struct Point<'a> {
    pub start: i64,
    data: &'a [f64],
}

impl Point<'_> {
    pub fn value(&self, j: usize) -> f64 {
        self.data[j]
    }

    pub fn ewma(&self, j: usize) -> f64 {
        self.data[self.data.len() / 2 + j]
    }
}

/// A sealed slice: its number (start / slice span), the start of its oldest window, and per
/// column the count of values it stands for and the count it kept (0 and 0 where all were
/// null).
#[derive(Debug, Clone, PartialEq)]
struct Slice {
    number: i64,
    first: i64,
    counts: Box<[(u32, u8)]>,
}

impl Slice {
    /// The tag its values carry: its number modulo 256, unique among the at most
    /// [`SLICES`] + 1 slices a baseline holds.
    fn tag(&self) -> u8 {
        self.number.rem_euclid(256) as u8
    }
}

/// A column's sealed values, ascending, each with its slice's tag.
#[derive(Debug, Default)]
struct Sealed {
    values: Vec<f64>,
    tags: Vec<u8>,
}

/// One key's windows: exact ones oldest first, with per column their non-null values in
/// ascending order (so a median and MAD cost a walk, not a sort), and sealed slices.
#[derive(Debug)]
pub(super) struct KeyHistory {
    starts: Vec<i64>,
    /// `2 × width` numbers per exact window (see [`Point`]).
    data: Vec<f64>,
    sorted: Vec<Vec<f64>>,
    slices: VecDeque<Slice>,
    sealed: Vec<Sealed>,
    /// Since the last checkpoint: the oldest start of an exact window added or revised
    /// (`i64::MAX`: none), and how many slices were sealed.
    unsaved_from: i64,
    unsaved_slices: usize,
    /// The checkpoint group of its key, kept so that a checkpoint need not hash every key.
    group: u8,
}

/// A window's median and z-score against a baseline: none below the baseline's fewest values,
/// no z-score when it has no spread.
pub(super) type Judged = Option<(f64, Option<f64>)>;

/// A sealed slice's values of one column, as a checkpoint holds them.
#[derive(Debug)]
pub(super) struct SealedPart<'a> {
    pub number: i64,
    pub first: i64,
    pub column: usize,
    pub count: u32,
    pub values: &'a [f64],
}

impl KeyHistory {
    /// No windows yet, for a key of checkpoint group `group`.
    pub fn new(group: u8) -> Self {
        KeyHistory {
            starts: Vec::new(),
            data: Vec::new(),
            sorted: Vec::new(),
            slices: VecDeque::new(),
            sealed: Vec::new(),
            unsaved_from: i64::MAX,
            unsaved_slices: 0,
            group,
        }
    }

    /// The checkpoint group of its key.
    pub fn group(&self) -> usize {
        usize::from(self.group)
    }

    /// Exact windows.
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    pub fn point(&self, i: usize) -> Point<'_> {
        let stride = self.data.len() / self.starts.len().max(1);
        Point {
            start: self.starts[i],
            data: &self.data[i * stride..(i + 1) * stride],
        }
    }

    pub fn points(&self) -> impl Iterator<Item = Point<'_>> {
        (0..self.len()).map(|i| self.point(i))
    }

    /// The exact windows a checkpoint does not hold yet (`only_new`), or all of them. Those
    /// added or revised since the last are among them; so may be a few later ones it holds, to
    /// be replaced by these on restore.
    pub fn points_to_save(&self, only_new: bool) -> impl ExactSizeIterator<Item = Point<'_>> {
        let from = if only_new {
            self.position(self.unsaved_from)
        } else {
            0
        };
        (from..self.len()).map(|i| self.point(i))
    }

    /// Whether anything changed since the last checkpoint.
    pub fn is_unsaved(&self) -> bool {
        self.unsaved_from != i64::MAX || self.unsaved_slices > 0
    }

    /// Counts everything as checkpointed.
    pub fn saved(&mut self) {
        self.unsaved_from = i64::MAX;
        self.unsaved_slices = 0;
    }

    /// The number of exact windows that start before `start`.
    pub fn position(&self, start: i64) -> usize {
        self.starts.partition_point(|&s| s < start)
    }

    pub fn newest(&self) -> Option<i64> {
        self.starts.last().copied()
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
        let keep_from = self.position(from);
        for i in 0..keep_from {
            for j in 0..width {
                let v = self.data[i * 2 * width + j];
                if !v.is_nan() {
                    remove_sorted(&mut self.sorted[j], v);
                }
            }
        }
        self.starts.drain(..keep_from);
        self.data.drain(..keep_from * 2 * width);
        while self.slices.front().is_some_and(|s| s.first < from) {
            if let Some(gone) = self.slices.pop_front() {
                self.drop_values_of(gone.tag());
            }
        }
    }

    /// Removes the sealed values of the slice tagged `tag`.
    fn drop_values_of(&mut self, tag: u8) {
        for sealed in &mut self.sealed {
            let mut keep = sealed.tags.iter().map(|&t| t != tag);
            sealed.values.retain(|_| keep.next().unwrap_or(true));
            sealed.tags.retain(|&t| t != tag);
        }
    }

    /// Adds the newest window: its start and `2 × width` numbers.
    pub fn push(&mut self, start: i64, data: &[f64], width: usize, span: i64) {
        self.sorted.resize_with(width, Vec::new);
        for (sorted, &x) in self.sorted.iter_mut().zip(&data[..width]) {
            if !x.is_nan() {
                insert_sorted(sorted, x);
            }
        }
        grow(&mut self.starts, 1);
        self.starts.push(start);
        grow(&mut self.data, data.len());
        self.data.extend_from_slice(data);
        self.unsaved_from = self.unsaved_from.min(start);
        self.seal(width, span);
    }

    /// Puts a window among the exact ones (replacing one with its start), then drops the exact
    /// windows older than `baseline` before the newest.
    pub fn revise(&mut self, start: i64, data: &[f64], width: usize, baseline: i64) {
        let stride = 2 * width;
        let pos = self.position(start);
        self.unsaved_from = self.unsaved_from.min(start);
        if self.starts.get(pos) == Some(&start) {
            self.data[pos * stride..(pos + 1) * stride].copy_from_slice(data);
        } else {
            grow(&mut self.starts, 1);
            self.starts.insert(pos, start);
            grow(&mut self.data, stride);
            self.data
                .splice(pos * stride..pos * stride, data.iter().copied());
        }
        if let Some(newest) = self.newest() {
            let keep_from = self.position(newest - baseline);
            self.starts.drain(..keep_from);
            self.data.drain(..keep_from * stride);
        }
        self.resort(width);
    }

    /// Seals the oldest exact slice while more than [`EXACT`] windows are exact and it is
    /// older than the newest two.
    fn seal(&mut self, width: usize, span: i64) {
        let Some(newest) = self.newest().map(|s| s.div_euclid(span)) else {
            return;
        };
        while self.len() > EXACT {
            let number = self.starts[0].div_euclid(span);
            if number >= newest - 1 {
                break;
            }
            let end = self
                .starts
                .partition_point(|s| s.div_euclid(span) == number);
            let mut slice = Slice {
                number,
                first: self.starts[0],
                counts: vec![(0, 0); width].into_boxed_slice(),
            };
            // Only a key that seals a slice holds sealed runs (an allocation less for the rest).
            self.sealed.resize_with(width, Sealed::default);
            let mut values = Vec::with_capacity(end);
            for j in 0..width {
                values.clear();
                values.extend(
                    (0..end)
                        .map(|i| self.data[i * 2 * width + j])
                        .filter(|v| !v.is_nan()),
                );
                values.sort_unstable_by(f64::total_cmp);
                for &v in &values {
                    remove_sorted(&mut self.sorted[j], v);
                }
                if !values.is_empty() {
                    let summary = Summary::of_sorted(&values);
                    slice.counts[j] = (summary.count(), summary.points().len() as u8);
                    self.sealed[j].insert(summary.points(), slice.tag());
                }
            }
            self.starts.drain(..end);
            self.data.drain(..end * 2 * width);
            self.slices.push_back(slice);
            self.unsaved_slices += 1;
        }
    }

    /// Sorts the exact windows' values again (after an out-of-order change).
    fn resort(&mut self, width: usize) {
        self.sorted = (0..width)
            .map(|j| {
                let mut v: Vec<f64> = self
                    .points()
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
        let sealed = match self.sealed.get(j) {
            Some(sealed) if !sealed.values.is_empty() => sealed,
            _ => return robust_z(x, exact, min),
        };
        let mut count = 0.0;
        for s in &self.slices {
            let (stands_for, kept) = s.counts[j];
            if kept > 0 {
                scratch.weights[usize::from(s.tag())] = f64::from(stands_for) / f64::from(kept);
                count += f64::from(stands_for);
            }
        }
        let total = exact.len() as f64 + count;
        if total < min.max(1) as f64 {
            return None;
        }
        scratch.merged.clear();
        let (mut a, mut b) = (0, 0);
        while a < exact.len() || b < sealed.values.len() {
            if b == sealed.values.len() || (a < exact.len() && exact[a] <= sealed.values[b]) {
                scratch.merged.push((exact[a], 1.0));
                a += 1;
            } else {
                let weight = scratch.weights[usize::from(sealed.tags[b])];
                scratch.merged.push((sealed.values[b], weight));
                b += 1;
            }
        }
        let (median, mad) = stats::weighted_median_and_mad(&scratch.merged, total)?;
        judged(x, median, mad)
    }

    /// Whether [`for_each_sealed`](Self::for_each_sealed) has slices to give.
    pub fn has_sealed(&self, only_new: bool) -> bool {
        !self.slices.is_empty() && (!only_new || self.unsaved_slices > 0)
    }

    /// Calls `f` with each sealed slice's kept values of each column (ascending), column by
    /// column, oldest slice first: for a checkpoint, all of them or (`only_new`) those sealed
    /// since the last.
    pub fn for_each_sealed(&self, only_new: bool, mut f: impl FnMut(SealedPart<'_>)) {
        let skip = if only_new {
            self.slices.len().saturating_sub(self.unsaved_slices)
        } else {
            0
        };
        let mut age = [usize::MAX; 256];
        for (k, s) in self.slices.iter().enumerate() {
            age[usize::from(s.tag())] = k;
        }
        let mut by_age: Vec<(usize, f64)> = Vec::new();
        let mut values = Vec::new();
        for (j, sealed) in self.sealed.iter().enumerate() {
            by_age.clear();
            by_age.extend(
                sealed
                    .values
                    .iter()
                    .zip(&sealed.tags)
                    .map(|(&v, &t)| (age[usize::from(t)], v)),
            );
            // Stable: each slice's values stay ascending.
            by_age.sort_by_key(|&(k, _)| k);
            let mut rest = &by_age[..];
            for (k, s) in self.slices.iter().enumerate() {
                let n = rest.partition_point(|&(a, _)| a == k);
                let (run, after) = rest.split_at(n);
                rest = after;
                if run.is_empty() || k < skip {
                    continue;
                }
                values.clear();
                values.extend(run.iter().map(|&(_, v)| v));
                f(SealedPart {
                    number: s.number,
                    first: s.first,
                    column: j,
                    count: s.counts.get(j).map_or(0, |c| c.0),
                    values: &values,
                });
            }
        }
    }

    /// Restoring: adds an exact window (any order; see [`restored`](Self::restored)).
    pub fn restore_point(&mut self, start: i64, data: &[f64]) {
        self.starts.push(start);
        self.data.extend_from_slice(data);
    }

    /// Restoring: adds a sealed slice's values of one column; false when they cannot be a
    /// summary of `count` values.
    pub fn restore_sealed(&mut self, part: SealedPart<'_>, width: usize) -> bool {
        let Some(summary) = Summary::from_parts(part.count, part.values.to_vec()) else {
            return false;
        };
        if part.column >= width {
            return false;
        }
        self.sealed.resize_with(width, Sealed::default);
        // A slice of the same tag, 256 slices older or newer: a whole checkpoint and the
        // additions after it can hold both (a key silent for that long, then back), a baseline
        // never. The older has expired.
        let tag = part.number.rem_euclid(256) as u8;
        if let Some(at) = self
            .slices
            .iter()
            .position(|s| s.tag() == tag && s.number != part.number)
        {
            if self.slices[at].number > part.number {
                return true;
            }
            self.slices.remove(at);
            self.drop_values_of(tag);
        }
        let at = match self.slices.iter().position(|s| s.number == part.number) {
            Some(at) => at,
            None => {
                self.slices.push_back(Slice {
                    number: part.number,
                    first: part.first,
                    counts: vec![(0, 0); width].into_boxed_slice(),
                });
                self.slices.len() - 1
            }
        };
        let slice = &mut self.slices[at];
        slice.counts[part.column] = (summary.count(), summary.points().len() as u8);
        let tag = slice.tag();
        self.sealed[part.column].insert(summary.points(), tag);
        true
    }

    /// Restoring: orders what was added — of windows added twice (by successive incremental
    /// checkpoints) the later, of exact windows those after every sealed slice — drops what
    /// lies more than `baseline` before the newest window, as it was dropped when that window
    /// came, and seals what a checkpoint of every window (as they were written before slices)
    /// holds beyond the exact windows. What it holds then counts as checkpointed.
    pub fn restored(&mut self, width: usize, span: i64, baseline: i64) {
        let stride = 2 * width;
        self.slices.make_contiguous().sort_by_key(|s| s.number);
        let after = self.slices.back().map_or(i64::MIN, |s| s.number);
        let mut order: Vec<usize> = (0..self.len())
            .filter(|&i| self.starts[i].div_euclid(span) > after)
            .collect();
        // Stable: of equal starts, the one added last ends its run.
        order.sort_by_key(|&i| self.starts[i]);
        order.dedup_by(|later, earlier| {
            let same = self.starts[*later] == self.starts[*earlier];
            if same {
                *earlier = *later;
            }
            same
        });
        self.starts = order.iter().map(|&i| self.starts[i]).collect();
        self.data = order
            .iter()
            .flat_map(|&i| self.data[i * stride..(i + 1) * stride].iter().copied())
            .collect();
        self.resort(width);
        if let Some(newest) = self.newest() {
            self.expire(newest, baseline, width);
        }
        // What the checkpoint holds is saved; slices sealed now (of a checkpoint written
        // before slices) are not yet.
        self.saved();
        self.seal(width, span);
    }

    /// Values held per column, exact and summarised: what memory the key costs.
    pub fn values_held(&self) -> usize {
        self.len()
            + self
                .sealed
                .iter()
                .map(|s| s.values.len())
                .max()
                .unwrap_or(0)
    }
}

impl Sealed {
    /// Adds a slice's kept values (ascending) under `tag`, keeping the run ascending.
    fn insert(&mut self, values: &[f64], tag: u8) {
        let mut merged = Vec::with_capacity(self.values.len() + values.len());
        let mut tags = Vec::with_capacity(merged.capacity());
        let (mut a, mut b) = (0, 0);
        while a < self.values.len() || b < values.len() {
            if b == values.len() || (a < self.values.len() && self.values[a] <= values[b]) {
                merged.push(self.values[a]);
                tags.push(self.tags[a]);
                a += 1;
            } else {
                merged.push(values[b]);
                tags.push(tag);
                b += 1;
            }
        }
        self.values = merged;
        self.tags = tags;
    }
}

/// Buffers reused from row to row.
#[derive(Debug)]
pub(super) struct Scratch {
    /// Exact values of a revised window's baseline.
    pub baseline: Vec<f64>,
    /// A window's numbers before they are kept.
    pub data: Vec<f64>,
    merged: Vec<(f64, f64)>,
    /// Per slice tag, the weight of its values in the column being judged.
    weights: [f64; 256],
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch {
            baseline: Vec::new(),
            data: Vec::new(),
            merged: Vec::new(),
            weights: [0.0; 256],
        }
    }
}

/// Against `sorted` (a baseline's values, ascending): its median and `(x − median) /
/// (1.4826 × MAD)`; none when it has fewer than `min` values, no z-score when it has no spread.
pub(super) fn robust_z(x: f64, sorted: &[f64], min: usize) -> Judged {
    if sorted.len() < min.max(1) {
        return None;
    }
    let (median, mad) = stats::median_and_mad_sorted(sorted)?;
    judged(x, median, mad)
}

/// `x` against a baseline's median and MAD: the median and `(x − median) / (1.4826 × MAD)`,
/// no z-score when the MAD is zero.
fn judged(x: f64, median: f64, mad: f64) -> Judged {
    Some((
        median,
        (mad > 0.0).then(|| (x - median) / (MAD_TO_SIGMA * mad)),
    ))
}

fn insert_sorted(sorted: &mut Vec<f64>, x: f64) {
    let at = sorted.partition_point(|v| v.total_cmp(&x).is_lt());
    grow(sorted, 1);
    sorted.insert(at, x);
}

/// Makes room for `additional` more in `v`, by an eighth of its length at a time rather than
/// by doubling: a key's buffers are many and long-lived (100,000 keys of 100 windows each held
/// 28 % more than their windows while growing by doubling). Copying an eighth more at a time
/// costs about eight moves per element added.
fn grow<T>(v: &mut Vec<T>, additional: usize) {
    if v.capacity() - v.len() < additional {
        v.reserve_exact(additional.max(v.len() / 8).max(4));
    }
}

fn remove_sorted(sorted: &mut Vec<f64>, x: f64) {
    if let Ok(at) = sorted.binary_search_by(|v| v.total_cmp(&x)) {
        sorted.remove(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As windows come and are sealed (a 4-hour baseline: 240 windows, more than [`EXACT`]) or
    /// expire while exact (a 40-minute one), each column's run holds exactly its exact windows'
    /// non-null values, ascending: three columns, with nulls, NaNs of either sign and repeated
    /// values among them.
    #[test]
    fn each_columns_sorted_run_is_its_exact_values_as_windows_come_and_go() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        const MINUTE: i64 = 60_000_000;
        let width = 3;
        let mut rng = StdRng::seed_from_u64(3);
        for (baseline, seals) in [(240 * MINUTE, true), (40 * MINUTE, false)] {
            let span = baseline / SLICES;
            let mut history = KeyHistory::new(0);
            let (mut sealed, mut expired) = (false, false);
            for m in 0..600 {
                let start = m * MINUTE;
                let mut data: Vec<f64> = (0..width)
                    .map(|_| match rng.random_range(0..20) {
                        0 => f64::NAN,
                        1 => -f64::NAN,
                        _ => f64::from(rng.random_range(0..30)),
                    })
                    .collect();
                data.extend_from_slice(&data.clone());
                let before = history.len();
                history.expire(start, baseline, width);
                expired |= history.len() < before;
                history.push(start, &data, width, span);
                sealed |= !history.slices.is_empty();
                for j in 0..width {
                    let mut want: Vec<f64> = history
                        .points()
                        .map(|p| p.value(j))
                        .filter(|v| !v.is_nan())
                        .collect();
                    want.sort_by(f64::total_cmp);
                    assert_eq!(
                        history.sorted(j),
                        want.as_slice(),
                        "column {j} at minute {m}"
                    );
                }
            }
            assert_eq!((sealed, expired), (seals, !seals));
        }
    }

    #[test]
    fn a_growing_history_holds_at_most_an_eighth_more_than_its_windows() {
        const MINUTE: i64 = 60_000_000;
        let mut history = KeyHistory::new(0);
        // Within one slice of a day's baseline: nothing is sealed, every window stays exact.
        for m in 0..100 {
            let x = ((m * 37) % 11) as f64;
            history.push(m * MINUTE, &[x, 2.0 * x, x, 2.0 * x], 2, 60 * MINUTE);
        }
        assert_eq!(history.len(), 100);
        let room = |len: usize| len + (len / 8).max(4);
        assert!(history.starts.capacity() <= room(100));
        assert!(history.data.capacity() <= room(400));
        for sorted in &history.sorted {
            assert_eq!(sorted.len(), 100);
            assert!(sorted.capacity() <= room(100), "{}", sorted.capacity());
        }
    }
}
