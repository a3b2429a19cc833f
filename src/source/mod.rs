//! Sources: where events enter the dataflow.
//!
//! - [`kafka`]: consumer and producer settings shared by every Kafka client of Stratus.
//! - [`dead_letter`]: invalid events, as records for the dead-letter topic.

pub mod dead_letter;
pub mod kafka;

pub use dead_letter::DeadLetter;
