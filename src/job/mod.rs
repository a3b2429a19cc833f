//! Jobs: the stages wired together into something that runs.
//!
//! - [`run`]: a whole pipeline file — sources, SQL stages, windows, Delta and Kafka sinks.

pub mod run;
