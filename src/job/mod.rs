//! Jobs: the stages wired together into something that runs.
//!
//! - [`run`]: a whole pipeline file — sources, SQL stages, windows, Delta and Kafka sinks;
//! - [`build`]: a stage's plan turned into its operator — the one `match` on stage kinds;
//! - [`checkpoint`]: the state each cycle starts from, kept beside the tables for restarts;
//! - [`retry`]: how the loop rides out an object store, disk or broker that fails a while;
//! - [`memory`]: the process's memory limit, and the input each cycle may read under it.

pub mod build;
pub mod checkpoint;
pub mod memory;
pub mod retry;
pub mod run;
