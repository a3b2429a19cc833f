//! Sinks: where results leave the dataflow.
//!
//! - [`delta`]: Delta Lake tables (local or `s3://`), exactly once via `txn` actions;
//! - [`kafka`]: keyed JSON records with deterministic ids, through the idempotent producer;
//! - [`side_files`]: a backfill's dead letters and late rows, as JSON-lines files;
//! - [`maintain`]: Delta tables kept healthy — compaction, log checkpoints and cleanup, vacuum.

pub mod delta;
pub mod kafka;
pub mod maintain;
pub mod side_files;

use std::collections::HashMap;
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use object_store::path::Path;

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

/// `location` as given when it is a URL (`s3://…`) or an absolute path, else under `root` (a
/// directory or a URL; empty: the working directory): where tables, checkpoints and
/// registries are found.
pub fn resolve_location(root: &str, location: &str) -> String {
    if location.contains("://") || location.starts_with('/') || root.is_empty() {
        location.to_string()
    } else {
        format!("{}/{location}", root.trim_end_matches('/'))
    }
}

/// The object store at `location` — a local directory (created if missing) or a URL such as
/// `s3://bucket/prefix` — and the path of `location` inside it.
pub fn open_store(
    location: &str,
    storage_options: &HashMap<String, String>,
) -> Result<(Arc<dyn ObjectStore>, Path), object_store::Error> {
    if location.contains("://") {
        let url = url::Url::parse(location).map_err(|e| object_store::Error::Generic {
            store: "url",
            source: format!("{location:?} is not a URL: {e}").into(),
        })?;
        let options = storage_options
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()));
        let (store, path) = object_store::parse_url_opts(&url, options)?;
        Ok((Arc::from(store), path))
    } else {
        std::fs::create_dir_all(location).map_err(|e| object_store::Error::Generic {
            store: "local",
            source: Box::new(e),
        })?;
        Ok((
            Arc::new(LocalFileSystem::new_with_prefix(location)?),
            Path::default(),
        ))
    }
}
