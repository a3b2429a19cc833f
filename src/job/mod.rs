//! Jobs: the stages wired together into something that runs.
//!
//! - [`ingest`]: one Kafka topic → decode + validate → the raw Delta table, exactly once;
//! - [`run`]: a whole pipeline file — sources, SQL stages, windows, Delta and Kafka sinks.

pub mod ingest;
pub mod run;
