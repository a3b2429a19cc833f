//! Pipeline definitions: the YAML a user writes, checked into a runnable plan.
//!
//! - [`config`]: the file format (serde, unknown fields rejected);
//! - [`plan`]: loading and checking — schemas, SQL planned against its inputs, sinks;
//! - [`score`]: checking score stages against their input and the model registry;
//! - [`decide`]: checking alert and recommend stages;
//! - [`diagnostics`]: errors with file, line and hint, all reported at once.

pub mod config;
pub mod decide;
pub mod diagnostics;
pub mod forecast;
pub mod plan;
pub mod score;

pub use diagnostics::{Diagnostic, Diagnostics};
pub use plan::{
    Overrides, Pipeline, SinkPlan, SinkTarget, SourceInput, SourcePlan, SqlStage, StageKind,
    StagePlan, WindowStage,
};

#[cfg(test)]
mod tests;
