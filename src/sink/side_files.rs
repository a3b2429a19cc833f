//! Side outputs as JSON-lines files beside the tables, for a backfill, which reaches no broker.
//!
//! In: a cycle's dead letters (as [`crate::source::DeadLetter::json_line`] gives them) or late
//! rows of a stage. Out: one file per cycle under the pipeline's own folder beside the tables —
//! `_stratus/<pipeline>/dead_letters/<source>/cycle-<N>.jsonl` and
//! `_stratus/<pipeline>/late/<stage>/cycle-<N>.jsonl` (local or `s3://`) — written before the
//! cycle's Delta commits. After a crash, a cycle some table committed is replayed exactly and
//! keeps its files; the files of a cycle no table committed are discarded at the start
//! ([`SideFiles::discard_after`]), as that cycle is run again with other boundaries.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::error::ArrowError;
use futures::TryStreamExt;
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

    /// Deletes the files of every cycle after `keep`: at a start, those a crash left of a cycle
    /// no table committed, which is run again with other boundaries and so must not keep them.
    pub async fn discard_after(&self, keep: i64) -> Result<usize, SideFileError> {
        let mut discarded = 0;
        for side in [Side::DeadLetters, Side::Late] {
            let folder = self.prefix.clone().join(side.folder());
            let store_err = |source| SideFileError::Store {
                location: format!("{}/{}", self.location, side.folder()),
                source,
            };
            let listed: Vec<_> = self
                .store
                .list(Some(&folder))
                .try_collect()
                .await
                .map_err(store_err)?;
            for meta in listed {
                let cycle: Option<i64> = meta.location.filename().and_then(|f| {
                    f.strip_prefix("cycle-")?
                        .strip_suffix(".jsonl")?
                        .parse()
                        .ok()
                });
                if cycle.is_some_and(|c| c > keep) {
                    self.store.delete(&meta.location).await.map_err(store_err)?;
                    discarded += 1;
                }
            }
        }
        Ok(discarded)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_files_of_cycles_after_the_kept_one_are_discarded() {
        let root = std::env::temp_dir().join(format!("stratus-side-{}", std::process::id()));
        let root = root.display().to_string();
        let files = SideFiles::open(&root, "bf", &HashMap::new()).unwrap();
        for cycle in 1..=4 {
            let line = format!("{{\"cycle\": {cycle}}}\n").into_bytes();
            files
                .write(Side::DeadLetters, "metrics", cycle, line.clone())
                .await
                .unwrap();
            files
                .write(Side::Late, "features", cycle, line)
                .await
                .unwrap();
        }
        // Nothing is written for a cycle without lines.
        files
            .write(Side::Late, "features", 5, Vec::new())
            .await
            .unwrap();
        assert_eq!(files.discard_after(2).await.unwrap(), 4);
        let left = |side: &str, name: &str| -> Vec<String> {
            let dir = std::path::Path::new(&root)
                .join("_stratus/bf")
                .join(side)
                .join(name);
            let mut names: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        let kept = [
            "cycle-00000000000000000001.jsonl",
            "cycle-00000000000000000002.jsonl",
        ];
        assert_eq!(left("dead_letters", "metrics"), kept);
        assert_eq!(left("late", "features"), kept);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
