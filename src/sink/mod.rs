//! Sinks: where results leave the dataflow.
//!
//! - [`delta`]: Delta Lake tables (local or `s3://`), exactly once via `txn` actions;
//! - [`compact`]: a table's small files rewritten into large ones, one compaction at a time;
//! - [`kafka`]: keyed JSON records with deterministic ids, through the idempotent producer;
//! - [`side_files`]: a backfill's dead letters and late rows, as JSON-lines files;
//! - [`utc_text`]: UTC timestamps as RFC 3339 text, for the Kafka sink's values, keys and ids;
//! - [`maintain`]: Delta tables kept healthy — compaction, log checkpoints and cleanup, vacuum.

pub mod compact;
pub mod delta;
pub mod kafka;
pub mod maintain;
pub mod side_files;
pub mod utc_text;

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

/// How often the object store retries one request by itself: twice, for at most 10 s. The
/// run loop retries whole commits and checkpoints with backoff for as long as the run's
/// `give_up_after` allows (see `job::retry`), saying so on `/readyz` meanwhile; at
/// `object_store`'s default (10 retries over up to 3 minutes) a stopped S3 server went
/// unreported for close to a minute per request.
pub const STORE_RETRIES: usize = 2;
const STORE_RETRY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `options` with the store's own retries bounded as [`STORE_RETRIES`] says, unless set.
pub fn with_store_retries(options: &HashMap<String, String>) -> HashMap<String, String> {
    let mut options = options.clone();
    options
        .entry("max_retries".into())
        .or_insert_with(|| STORE_RETRIES.to_string());
    options
        .entry("retry_timeout".into())
        .or_insert_with(|| format!("{}s", STORE_RETRY_TIMEOUT.as_secs()));
    options
}

fn store_retry() -> object_store::RetryConfig {
    object_store::RetryConfig {
        max_retries: STORE_RETRIES,
        retry_timeout: STORE_RETRY_TIMEOUT,
        ..object_store::RetryConfig::default()
    }
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
        if url.scheme() == "s3" {
            let builder = storage_options.iter().fold(
                object_store::aws::AmazonS3Builder::new().with_url(location),
                |b, (k, v)| match k.to_ascii_lowercase().parse() {
                    Ok(key) => b.with_config(key, v),
                    Err(_) => b,
                },
            );
            let store = builder.with_retry(store_retry()).build()?;
            return Ok((Arc::new(store), Path::from_url_path(url.path())?));
        }
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
