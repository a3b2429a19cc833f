//! What a window stage adds to its SQL, as written — `carry` (features followed from window to
//! window per key) and `replace_by` (a later row replacing an earlier one in a window) — and
//! their checks against the stage's planned query. Out: the [`CarrySpec`] and the plan with
//! its `replace_by` columns.

use serde::Deserialize;

use super::CarrySpec;
use crate::pipeline::diagnostics::Reporter;
use crate::pipeline::stage::{StageKind, StagePlan, duration};

/// Cross-window features of a window stage: for each column `c`, `c_ewma`, `c_delta`, `c_roc`
/// and `c_robust_z` are appended to the stage's rows.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CarryConfig {
    /// The key columns (default: the stage's GROUP BY columns).
    #[serde(default)]
    pub by: Vec<String>,
    /// Numeric columns of the stage's output.
    pub columns: Vec<String>,
    /// EWMA smoothing factor in (0, 1]: the weight of the newest window.
    #[serde(default = "default_alpha")]
    pub ewma_alpha: f64,
    /// Trailing span of the robust z-score's baseline.
    #[serde(default = "default_baseline")]
    pub baseline: String,
    /// Fewest earlier windows in the baseline before a z-score is given.
    #[serde(default = "default_min_baseline")]
    pub min_baseline: usize,
}

fn default_alpha() -> f64 {
    0.3
}
fn default_baseline() -> String {
    "24h".into()
}
fn default_min_baseline() -> usize {
    5
}

/// Checks a stage's `replace_by` columns against its input.
pub(crate) fn check_replace_by(
    r: &mut Reporter<'_>,
    stage: &str,
    columns: &[String],
    mut plan: StagePlan,
) -> Option<StagePlan> {
    let at = ["stages", stage, "replace_by"];
    let StageKind::Window(window) = &mut plan.kind else {
        r.at(
            &at,
            "`replace_by` needs a window stage: rows are replaced within a window",
            None,
        );
        return None;
    };
    let missing: Vec<&String> = columns
        .iter()
        .filter(|c| plan.input_schema.field_with_name(c).is_err())
        .collect();
    if !missing.is_empty() {
        let names: Vec<&str> = plan
            .input_schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        for c in missing {
            r.at(
                &at,
                format!("column `{c}` is not in `{}`", plan.input),
                Some(&format!("columns: {}", names.join(", "))),
            );
        }
        return None;
    }
    window.replace_by = columns.to_vec();
    if let Some(reads) = &mut window.sql.query.reads {
        reads.extend(columns.iter().cloned());
    }
    Some(plan)
}

/// Checks a stage's `carry` settings against its output.
pub(crate) fn check_carry(
    r: &mut Reporter<'_>,
    stage: &str,
    carry: &CarryConfig,
    plan: &StagePlan,
) -> Option<CarrySpec> {
    let at = |field: &'static str| ["stages", stage, "carry", field];
    let before = r.found.len();
    let StageKind::Window(window) = &plan.kind else {
        r.at(
            &["stages", stage, "carry"],
            "`carry` needs a window stage: it follows each key from window to window",
            Some("add tumble(...), hop(...) or session(...) to the stage's GROUP BY"),
        );
        return None;
    };
    let by = if carry.by.is_empty() {
        window.sql.query.keys.clone()
    } else {
        carry.by.clone()
    };
    let names: Vec<&str> = plan
        .output_schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    for k in &by {
        if plan.output_schema.field_with_name(k).is_err() {
            r.at(
                &at("by"),
                format!("key column `{k}` is not in the stage's output"),
                Some(&format!("columns: {}", names.join(", "))),
            );
        }
    }
    if carry.columns.is_empty() {
        r.at(
            &at("columns"),
            "no column to carry",
            Some("name numeric columns of the stage"),
        );
    }
    for c in &carry.columns {
        match plan.output_schema.field_with_name(c) {
            Ok(f) if f.data_type().is_numeric() => {}
            Ok(f) => r.at(
                &at("columns"),
                format!("column `{c}` is {}, not a number", f.data_type()),
                None,
            ),
            Err(_) => r.at(
                &at("columns"),
                format!("column `{c}` is not in the stage's output"),
                Some(&format!("columns: {}", names.join(", "))),
            ),
        }
    }
    if !(carry.ewma_alpha > 0.0 && carry.ewma_alpha <= 1.0) {
        r.at(
            &at("ewma_alpha"),
            format!("ewma_alpha {} is outside (0, 1]", carry.ewma_alpha),
            Some("0.3 weighs the newest window by 30 %"),
        );
    }
    let baseline = duration(r, &at("baseline"), &carry.baseline);
    if r.found.len() > before {
        return None;
    }
    Some(CarrySpec {
        by,
        columns: carry.columns.clone(),
        alpha: carry.ewma_alpha,
        baseline,
        min_baseline: carry.min_baseline,
    })
}
