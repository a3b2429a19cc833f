//! Pipeline definitions: the YAML a user writes, checked into a runnable plan.
//!
//! - [`config`]: the file format (serde, unknown fields rejected);
//! - [`plan`]: loading and checking — schemas, SQL planned against its inputs, sinks;
//! - [`stage`]: checked stages ([`StagePlan`]) and what the kind checks share;
//! - [`score`]: checking score stages against their input and the model registry;
//! - [`decide`]: checking alert and recommend stages;
//! - [`forecast`]: checking forecast stages and their model;
//! - [`diagnostics`]: errors with file, line and hint, all reported at once.

pub mod config;
pub mod diagnostics;
pub mod models;
pub mod plan;
pub mod stage;

pub use diagnostics::{Diagnostic, Diagnostics};
pub use plan::{Overrides, Pipeline, SinkPlan, SinkTarget, SourceInput, SourcePlan};
pub use stage::{SqlStage, StageConfig, StageFields, StageKind, StagePlan, WindowStage};

#[cfg(test)]
mod tests;
