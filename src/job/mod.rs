//! Jobs: the stages wired together into something that runs.
//!
//! - [`run`]: a whole pipeline file — sources, SQL stages, windows, Delta and Kafka sinks;
//! - `reader`: the run loop's source side — Kafka and file readers, decoding, dead letters;
//! - [`build`]: a stage's plan turned into its operator — the one `match` on stage kinds;
//! - [`checkpoint`]: the state each cycle starts from, kept beside the tables for restarts.

pub mod build;
pub mod checkpoint;
mod reader;
pub mod run;
