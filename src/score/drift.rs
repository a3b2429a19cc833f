//! Input drift of a model, in the stream: how far each input's recent distribution has moved
//! from the one the model was trained on.
//!
//! In: the binned training distribution of each input, as the trainer records it in the
//! manifest (`input_distribution`: interior bin edges and the share of training rows in each
//! bin), and the feature rows the model scores (row-major, in the manifest's input order, as
//! fed to ONNX Runtime). Out: per input, the population stability index (PSI) and the KL
//! divergence of the last `rows` rows scored against training, once that many have been seen.
//!
//! Bins are right-closed: a value `x` falls in bin `i`, the number of edges below it, as
//! NumPy's `searchsorted(edges, x, side="left")` places it (the trainers bin the same way). A
//! share is floored at [`FLOOR`] on both sides, so an empty bin gives a large but finite
//! figure: PSI = Σ (recent − training) · ln(recent / training), KL = Σ recent · ln(recent /
//! training). The window slides in tenths of `rows`, so the figures describe the last `rows` to
//! `rows + rows/10` rows. The figures are exported as `stratus_model_input_psi` and
//! `stratus_model_input_kl` per model version and input, beside the pipeline's thresholds.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::operator::Context;

/// The smallest share a bin counts with, on either side of PSI and KL.
pub const FLOOR: f64 = 1e-4;

/// How a score stage watches its models' inputs (`drift:` in the pipeline file): over the
/// last `rows` rows, against the thresholds above which an input counts as drifted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DriftSpec {
    pub rows: usize,
    pub psi: f64,
    pub kl: f64,
    /// Inputs not watched: calendar features (hour of day, day of week), uniform over the
    /// training rows, are concentrated in any window shorter than their cycle, so their
    /// "drift" says only that the window is short.
    pub ignore: Vec<String>,
}

impl Default for DriftSpec {
    /// The last 1,000 rows; PSI 0.2 and KL 0.1, the usual lines for a significant shift.
    fn default() -> Self {
        DriftSpec {
            rows: 1_000,
            psi: 0.2,
            kl: 0.1,
            ignore: Vec::new(),
        }
    }
}

impl DriftSpec {
    /// What is wrong with it, if anything.
    pub fn problem(&self) -> Option<String> {
        if self.rows < 10 {
            return Some(format!("rows is {}; watch at least 10 rows", self.rows));
        }
        if !(self.psi > 0.0 && self.kl > 0.0 && self.psi.is_finite() && self.kl.is_finite()) {
            return Some("psi and kl must be positive numbers".into());
        }
        None
    }
}

/// One input's training distribution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Binned {
    /// The input, as named in the manifest's `inputs`.
    pub name: String,
    /// Interior bin edges, ascending: `k - 1` edges for `k` bins.
    pub edges: Vec<f64>,
    /// The share of training rows in each bin: `edges.len() + 1` values summing to 1.
    pub shares: Vec<f64>,
}

impl Binned {
    /// What is wrong with it, if anything.
    pub fn problem(&self) -> Option<String> {
        let name = &self.name;
        if self.shares.len() != self.edges.len() + 1 {
            return Some(format!(
                "input {name:?}: {} shares for {} edges; give one share per bin (edges + 1)",
                self.shares.len(),
                self.edges.len()
            ));
        }
        if self.edges.iter().any(|e| !e.is_finite()) || self.edges.windows(2).any(|w| w[0] >= w[1])
        {
            return Some(format!(
                "input {name:?}: the edges must be finite and strictly ascending"
            ));
        }
        let sum: f64 = self.shares.iter().sum();
        if self.shares.iter().any(|s| !(0.0..=1.0).contains(s)) || (sum - 1.0).abs() > 1e-3 {
            return Some(format!(
                "input {name:?}: the shares must lie in [0, 1] and sum to 1 (they sum to {sum})"
            ));
        }
        None
    }

    fn bin(&self, x: f64) -> usize {
        self.edges.partition_point(|&e| e < x)
    }
}

/// PSI and KL divergence of one input's recent rows against its training rows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Divergence {
    pub psi: f64,
    pub kl: f64,
}

/// PSI and KL of `recent` counts against `training` shares (see the module doc).
pub fn divergence(recent: &[u64], training: &[f64]) -> Divergence {
    let n: u64 = recent.iter().sum();
    let mut d = Divergence { psi: 0.0, kl: 0.0 };
    if n == 0 {
        return d;
    }
    for (&c, &t) in recent.iter().zip(training) {
        let a = (c as f64 / n as f64).max(FLOOR);
        let e = t.max(FLOOR);
        let ln = (a / e).ln();
        d.psi += (a - e) * ln;
        d.kl += a * ln;
    }
    d
}

/// One model version's inputs, watched over a sliding window of the rows it scores.
#[derive(Debug, Clone)]
pub struct InputDrift {
    training: Vec<Binned>,
    /// Bin counts of every input, concatenated, per tenth of the window, oldest first.
    chunks: VecDeque<(usize, Vec<u64>)>,
    /// The sum of `chunks`.
    total: Vec<u64>,
    total_rows: usize,
    rows: usize,
    offsets: Vec<usize>,
    /// Per input, whether it is watched (measured and reported).
    watched: Vec<bool>,
}

impl InputDrift {
    /// Watches rows of `training.len()` inputs over the last `rows` rows.
    pub fn new(training: Vec<Binned>, rows: usize) -> Self {
        let mut offsets = Vec::with_capacity(training.len());
        let mut width = 0;
        for b in &training {
            offsets.push(width);
            width += b.shares.len();
        }
        InputDrift {
            watched: vec![true; training.len()],
            training,
            chunks: VecDeque::new(),
            total: vec![0; width],
            total_rows: 0,
            rows: rows.max(10),
            offsets,
        }
    }

    /// The same, not watching the inputs named in `ignore`.
    pub fn ignoring(mut self, ignore: &[String]) -> Self {
        for (watched, b) in self.watched.iter_mut().zip(&self.training) {
            *watched = !ignore.contains(&b.name);
        }
        self
    }

    /// Counts `values`, rows of the inputs in order (row-major). A value that is not finite
    /// is not counted (the model never scores such a row).
    pub fn observe(&mut self, values: &[f32]) {
        let inputs = self.training.len();
        if inputs == 0 {
            return;
        }
        let chunk_rows = self.rows.div_ceil(10);
        for row in values.chunks_exact(inputs) {
            let full = self.chunks.back().is_none_or(|(n, _)| *n >= chunk_rows);
            if full {
                self.chunks.push_back((0, vec![0; self.total.len()]));
            }
            let Some((n, counts)) = self.chunks.back_mut() else {
                return;
            };
            *n += 1;
            self.total_rows += 1;
            for ((b, &offset), &x) in self.training.iter().zip(&self.offsets).zip(row) {
                if x.is_finite() {
                    let i = offset + b.bin(f64::from(x));
                    counts[i] += 1;
                    self.total[i] += 1;
                }
            }
            // Drop the oldest tenth once the rest still fills the window.
            while self
                .chunks
                .front()
                .is_some_and(|(n, _)| self.total_rows - n >= self.rows)
            {
                if let Some((n, counts)) = self.chunks.pop_front() {
                    self.total_rows -= n;
                    for (t, c) in self.total.iter_mut().zip(counts) {
                        *t -= c;
                    }
                }
            }
        }
    }

    /// Each input's name and divergence, once the window holds `rows` rows.
    pub fn measure(&self) -> Option<Vec<(&str, Divergence)>> {
        if self.total_rows < self.rows {
            return None;
        }
        Some(
            self.training
                .iter()
                .zip(&self.offsets)
                .zip(&self.watched)
                .filter(|(_, watched)| **watched)
                .map(|((b, &offset), _)| {
                    let counts = &self.total[offset..offset + b.shares.len()];
                    (b.name.as_str(), divergence(counts, &b.shares))
                })
                .collect(),
        )
    }

    /// The inputs watched, in order.
    pub fn inputs(&self) -> impl Iterator<Item = &str> {
        self.training
            .iter()
            .zip(&self.watched)
            .filter(|(_, watched)| **watched)
            .map(|(b, _)| b.name.as_str())
    }
}

/// Sets the PSI and KL gauges of each input `model` (`name@version`) watches, once its window
/// is full.
pub fn report(ctx: &Context<'_>, model: &str, drift: &InputDrift) {
    for (input, d) in drift.measure().into_iter().flatten() {
        let labels = [ctx.pipeline, ctx.stage, model, input];
        ctx.metrics
            .model_input_psi
            .with_label_values(&labels)
            .set(d.psi);
        ctx.metrics
            .model_input_kl
            .with_label_values(&labels)
            .set(d.kl);
    }
}

/// Exports the thresholds `model`'s drift is judged by, for the shipped rule.
pub fn export_thresholds(ctx: &Context<'_>, model: &str, spec: &DriftSpec) {
    for (measure, threshold) in [("psi", spec.psi), ("kl", spec.kl)] {
        ctx.metrics
            .model_drift_threshold
            .with_label_values(&[ctx.pipeline, ctx.stage, model, measure])
            .set(threshold);
    }
}

/// Removes the gauges of a version no longer served (swapped for a newer one), so no rule
/// fires for it.
pub fn forget(ctx: &Context<'_>, model: &str, inputs: &[String]) {
    let m = ctx.metrics;
    for input in inputs {
        let labels = [ctx.pipeline, ctx.stage, model, input.as_str()];
        let _ = m.model_input_psi.remove_label_values(&labels);
        let _ = m.model_input_kl.remove_label_values(&labels);
    }
    for measure in ["psi", "kl"] {
        let labels = [ctx.pipeline, ctx.stage, model, measure];
        let _ = m.model_drift_threshold.remove_label_values(&labels);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deciles of a standard normal, each bin a tenth.
    fn normal_deciles(name: &str) -> Binned {
        Binned {
            name: name.into(),
            edges: vec![
                -1.2816, -0.8416, -0.5244, -0.2533, 0.0, 0.2533, 0.5244, 0.8416, 1.2816,
            ],
            shares: vec![0.1; 10],
        }
    }

    /// Standard normal draws (Box–Muller over a fixed LCG), shifted by `shift`.
    fn normal(n: usize, shift: f64, seed: u64) -> Vec<f64> {
        let mut s = seed;
        let mut uniform = || {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        (0..n)
            .map(|_| {
                let (u, v) = (uniform(), uniform());
                (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos() + shift
            })
            .collect()
    }

    fn rows(a: &[f64], b: &[f64]) -> Vec<f32> {
        a.iter()
            .zip(b)
            .flat_map(|(&x, &y)| [x as f32, y as f32])
            .collect()
    }

    #[test]
    fn bins_are_right_closed_as_numpy_searchsorted_left_places_them() {
        let b = Binned {
            name: "x".into(),
            edges: vec![1.0, 2.0],
            shares: vec![0.2, 0.3, 0.5],
        };
        assert_eq!([0.5, 1.0, 1.5, 2.0, 2.5].map(|x| b.bin(x)), [0, 0, 1, 1, 2]);
    }

    #[test]
    fn psi_and_kl_are_the_textbook_sums() {
        // Recent shares 0.5 / 0.3 / 0.2 against 0.2 / 0.3 / 0.5.
        let d = divergence(&[50, 30, 20], &[0.2, 0.3, 0.5]);
        let psi = 0.3 * (2.5f64).ln() + 0.0 + (-0.3) * (0.4f64).ln();
        let kl = 0.5 * (2.5f64).ln() + 0.0 + 0.2 * (0.4f64).ln();
        assert!((d.psi - psi).abs() < 1e-12, "{d:?}");
        assert!((d.kl - kl).abs() < 1e-12, "{d:?}");
        // An empty bin counts at the floor: large, finite.
        let empty = divergence(&[100, 0, 0], &[0.2, 0.3, 0.5]);
        assert!(empty.psi.is_finite() && empty.psi > 2.0, "{empty:?}");
    }

    #[test]
    fn a_shifted_input_drifts_past_the_thresholds_and_a_steady_one_stays_under() {
        let training = vec![normal_deciles("steady"), normal_deciles("shifted")];
        let mut drift = InputDrift::new(training, 1_000);
        // Until the window holds 1,000 rows: no figure.
        drift.observe(&rows(&normal(999, 0.0, 1), &normal(999, 0.0, 2)));
        assert!(drift.measure().is_none());
        drift.observe(&rows(&normal(1, 0.0, 3), &normal(1, 0.0, 4)));
        let before = drift.measure().expect("a full window");
        assert!(
            before.iter().all(|(_, d)| d.psi < 0.05 && d.kl < 0.05),
            "{before:?}"
        );

        // The second input moves by one standard deviation; the window forgets the old rows.
        drift.observe(&rows(&normal(1_000, 0.0, 5), &normal(1_000, 1.0, 6)));
        let after = drift.measure().expect("a full window");
        assert_eq!(after[0].0, "steady");
        assert!(after[0].1.psi < 0.05, "{after:?}");
        assert_eq!(after[1].0, "shifted");
        // A 1σ shift of a normal is a PSI of about 1 (and KL about 0.5) over deciles.
        assert!(after[1].1.psi > 0.6 && after[1].1.kl > 0.3, "{after:?}");
    }

    #[test]
    fn the_window_slides_by_tenths_and_never_holds_fewer_than_its_rows() {
        let mut drift = InputDrift::new(vec![normal_deciles("x")], 100);
        for i in 0..1_000 {
            drift.observe(&[i as f32]);
            if i >= 99 {
                assert!(
                    (100..=110).contains(&drift.total_rows),
                    "{}",
                    drift.total_rows
                );
                assert_eq!(drift.total.iter().sum::<u64>() as usize, drift.total_rows);
            }
        }
        // A value that is not finite is not counted in its input.
        let mut drift = InputDrift::new(vec![normal_deciles("x"), normal_deciles("y")], 100);
        drift.observe(&[f32::NAN, 1.0]);
        assert_eq!(drift.total.iter().sum::<u64>(), 1);
    }

    #[test]
    fn an_ignored_input_is_neither_measured_nor_listed_and_the_others_are_unchanged() {
        let training = vec![
            normal_deciles("x"),
            normal_deciles("y"),
            normal_deciles("z"),
        ];
        let mut all = InputDrift::new(training.clone(), 10);
        let mut some = InputDrift::new(training, 10).ignoring(&["y".to_string()]);
        let rows: Vec<f32> = (0..30).map(|i| (i % 7) as f32 - 3.0).collect();
        all.observe(&rows);
        some.observe(&rows);
        assert_eq!(some.inputs().collect::<Vec<_>>(), ["x", "z"]);
        let (all, some) = (all.measure().unwrap(), some.measure().unwrap());
        assert_eq!(some, vec![all[0], all[2]]);
    }

    #[test]
    fn a_malformed_distribution_is_named() {
        let mut b = normal_deciles("x");
        b.shares.pop();
        assert!(b.problem().unwrap().contains("9 shares for 9 edges"));
        let mut b = normal_deciles("x");
        b.edges.swap(0, 1);
        assert!(b.problem().unwrap().contains("ascending"));
        let mut b = normal_deciles("x");
        b.shares[0] = 0.5;
        assert!(b.problem().unwrap().contains("sum to 1"));
        assert_eq!(normal_deciles("x").problem(), None);
    }
}
