//! Sinks: where results leave the dataflow.
//!
//! - [`delta`]: Delta Lake tables (local or `s3://`), exactly once via `txn` actions;
//! - [`kafka`]: keyed JSON records with deterministic ids, through the idempotent producer.

pub mod delta;
pub mod kafka;

use std::collections::HashMap;

pub use delta::{
    CommitStats, DeltaSink, DeltaSinkConfig, Marks, SinkError, SourceOffsets, offset_mark,
    offset_marks,
};

/// Object-store options from the environment: every `AWS_*` variable (endpoint, region,
/// credentials, `AWS_ALLOW_HTTP`), as `object_store` names them.
pub fn storage_options_from_env() -> HashMap<String, String> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("AWS_"))
        .collect()
}
