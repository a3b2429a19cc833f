//! Side outputs as JSON-lines files beside the tables, for a backfill, which reaches no broker.
//!
//! In: a cycle's dead letters (as [`crate::source::DeadLetter::json_line`] gives them) or late
//! rows of a stage. Out: one file per cycle under the pipeline's own folder beside the tables —
//! `_stratus/<pipeline>/dead_letters/<source>/cycle-<N>.jsonl` and
//! `_stratus/<pipeline>/late/<stage>/cycle-<N>.jsonl` (local or `s3://`) — written before the
//! cycle's Delta commits, so a cycle replayed after a crash writes the same file again, never
//! a second copy.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::error::ArrowError;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

/// Why a side file was not written.
#[derive(Debug, thiserror::Error)]
pub enum SideFileError {
    #[error("cannot write {location}: {source}")]
    Store {
        location: String,
        source: object_store::Error,
    },
    #[error("late rows of {stage} as JSON: {source}")]
    Json { stage: String, source: ArrowError },
}

/// Dead letters of a source, or late rows of a stage.
#[derive(Debug, Clone, Copy)]
pub enum Side {
    DeadLetters,
    Late,
}

impl Side {
    fn folder(self) -> &'static str {
        match self {
            Side::DeadLetters => "dead_letters",
            Side::Late => "late",
        }
    }
}

/// The side-output folder of one pipeline.
#[derive(Clone)]
pub struct SideFiles {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    /// For messages: where the folder is.
    location: String,
}

impl SideFiles {
    /// The side outputs of `pipeline` under `table_root` (a directory or an `s3://` URL).
    pub fn open(
        table_root: &str,
        pipeline: &str,
        storage_options: &HashMap<String, String>,
    ) -> Result<Self, SideFileError> {
        let location = super::resolve_location(table_root, &format!("_stratus/{pipeline}"));
        let (store, root) = super::open_store(table_root, storage_options).map_err(|source| {
            SideFileError::Store {
                location: location.clone(),
                source,
            }
        })?;
        let prefix = root
            .parts()
            .chain(Path::from_iter(["_stratus", pipeline]).parts())
            .collect();
        Ok(SideFiles {
            store,
            prefix,
            location,
        })
    }

    /// Where `side` of `name` (a source or a stage) goes: for logs and messages.
    pub fn location(&self, side: Side, name: &str) -> String {
        format!("{}/{}/{name}", self.location, side.folder())
    }

    /// Writes `lines` (JSON lines) as cycle `cycle`'s file of `side` of `name`; nothing when
    /// there are none.
    pub async fn write(
        &self,
        side: Side,
        name: &str,
        cycle: i64,
        lines: Vec<u8>,
    ) -> Result<(), SideFileError> {
        if lines.is_empty() {
            return Ok(());
        }
        let path = self
            .prefix
            .clone()
            .join(side.folder())
            .join(name)
            .join(format!("cycle-{cycle:020}.jsonl").as_str());
        self.store
            .put(&path, PutPayload::from(lines))
            .await
            .map(|_| ())
            .map_err(|source| SideFileError::Store {
                location: self.location(side, name),
                source,
            })
    }

    /// Writes a stage's late rows of cycle `cycle`, one JSON object a row.
    pub async fn write_late(
        &self,
        stage: &str,
        cycle: i64,
        batches: &[RecordBatch],
    ) -> Result<(), SideFileError> {
        let json = |source| SideFileError::Json {
            stage: stage.to_string(),
            source,
        };
        let mut writer = arrow::json::LineDelimitedWriter::new(Vec::new());
        for b in batches {
            writer.write(b).map_err(json)?;
        }
        writer.finish().map_err(json)?;
        self.write(Side::Late, stage, cycle, writer.into_inner())
            .await
    }
}
