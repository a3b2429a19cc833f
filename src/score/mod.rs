//! Model scoring with ONNX Runtime through `ort`.
//!
//! - [`runtime`]: finds `libonnxruntime` (project venv or `ORT_DYLIB_PATH`) and loads it once.
//! - [`onnx`]: a loaded model, scored a batch of feature rows at a time.
//! - [`registry`]: versioned models and manifests under a local or `s3://` prefix.
//! - [`config`]: a score stage as written in a pipeline file, and its check;
//! - [`stage`]: a pipeline's score stage — model, shadow, detectors, hot reload.
//! - [`function`]: registered models callable from SQL, `score('model', inputs…)`.
//! - [`detect`]: streaming detectors (robust z, seasonal, CUSUM) and their weighted ensemble.
//! - [`drift`]: each model input's recent distribution against its training one (PSI, KL).
//! - [`health`]: a model's drift and accuracy against thresholds, as rows for alert stages.
//!
//! Forecast models, run the same way, are in [`crate::forecast`].

pub mod config;
pub mod detect;
pub mod drift;
pub mod function;
pub mod health;
pub mod onnx;
pub mod registry;
pub mod runtime;
pub mod stage;

pub use onnx::{OnnxModel, ScoreError};
pub use runtime::RuntimeError;

/// Logs what a model refresh did: a newer version swapped in, or why the current one stays.
pub fn report_refresh(ctx: &crate::operator::Context<'_>, change: registry::Refresh) {
    match change {
        Ok(m) => eprintln!("stratus: stage {}: {m}", ctx.stage),
        Err(m) => tracing::error!(stage = %ctx.stage, "model refresh: {m}"),
    }
}
