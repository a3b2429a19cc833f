//! Jobs: the stages wired together into something that runs.
//!
//! - [`run`]: a whole pipeline file — sources, SQL stages, windows, Delta and Kafka sinks;
//! - `reader`: the run loop's source side — Kafka and file readers, decoding, dead letters.

mod reader;
pub mod run;
