//! Jobs: the stages wired together into something that runs.
//!
//! - [`ingest`]: one Kafka topic → decode + validate → the raw Delta table, exactly once.

pub mod ingest;
