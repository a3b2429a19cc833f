//! Pipeline definitions: the YAML a user writes, checked into a runnable plan.
//!
//! - [`config`]: the file format (serde, unknown fields rejected);
//! - [`plan`]: loading and checking — sources and their schemas, each stage through its kind's
//!   check, sinks;
//! - [`kinds`]: every kind of stage, named once — as written, the one kind each is, the
//!   dispatch to each kind's check (in the module of its algorithm: `window::config`,
//!   `score::config`, `forecast::config`, `decide::config`), and checked
//!   ([`StagePlan`]);
//! - [`models`]: the model registry and the models the SQL calls;
//! - [`partitioning`]: whether the pipeline's partitions can run apart, in a consumer group;
//!
//! What every check shares and gives, and the diagnostics (file, line and hint, all reported
//! at once), are in `crate::check`, below the stage kinds.

pub mod config;
pub mod kinds;
pub mod models;
pub mod partitioning;
pub mod plan;

pub use crate::check::Planned;
pub use crate::check::diagnostics::{Diagnostic, Diagnostics};
pub use crate::window::config::{SqlStage, WindowStage};
pub use kinds::{StageConfig, StageFields, StageKind, StagePlan, StateKeys};
pub use plan::{Overrides, Pipeline, SinkPlan, SinkTarget, SourceInput, SourcePlan};

#[cfg(test)]
mod tests;
