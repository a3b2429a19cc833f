//! Sources: where events enter the dataflow.
//!
//! - [`dead_letter`]: invalid events, as records for the dead-letter topic (or, for a
//!   backfill, JSON lines for its dead-letter files).
//! - [`reader`]: the run loop's source side — Kafka consumers and file replays, decoding,
//!   dead letters, watermarks — and a source's part of a checkpoint.
//! - [`repartition`]: a source's records re-keyed through a repartition topic, for a
//!   pipeline in a consumer group whose stages keep state by other keys.
//!
//! Consumer and producer settings, shared by every Kafka client of Stratus, are in
//! [`crate::kafka`].

pub mod dead_letter;
pub mod reader;
pub mod repartition;

pub use dead_letter::DeadLetter;
pub use reader::{SourceError, SourceState};
