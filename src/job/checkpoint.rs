//! Checkpoints of the run loop: the state a cycle starts from, written once every Delta sink has
//! committed the cycle before it.
//!
//! In: a [`Checkpoint`] — the cycle number; per source the next offset per partition and the
//! watermark clock; per stage its output watermark and its operator's
//! [`OperatorState`]. Out, under `<table root>/_stratus/<pipeline>/checkpoints/`: each part of
//! each stage's state as Arrow IPC in `cycle-<N>/<stage>.<part>.arrow` (a window stage's rows
//! in `<stage>.window.arrow`, its carried-feature history in `<stage>.carry.arrow`, a score
//! stage's detectors in `<stage>.detectors.arrow`, …), then the manifest `cycle-<N>.json`,
//! which lists them and holds the rest. A checkpoint exists once its manifest does: that is one
//! PUT, atomic on S3 and on a local disk. The two newest are kept.
//!
//! How restart uses it is in [`run`](super::run).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::error::ArrowError;
use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::{FileWriter, IpcWriteOptions};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::operator::OperatorState;
pub use crate::source::SourceState;

/// Why a checkpoint could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoints at {location}: {source}")]
    Store {
        location: String,
        source: object_store::Error,
    },
    #[error("checkpoint {location}: {message}")]
    Corrupt { location: String, message: String },
}

/// Where a stage stood at the end of a cycle.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StageState {
    /// The watermark of the stage's output.
    pub watermark: i64,
    /// Its operator's state: `meta` in the manifest, each part in its own file.
    pub state: OperatorState,
}

/// The state after cycle `cycle` (0: before the first).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub cycle: i64,
    /// Written by a backfill (`--replay`), which never continues a live pipeline's
    /// checkpoints, nor a live run a backfill's.
    #[serde(default)]
    pub backfill: bool,
    pub sources: BTreeMap<String, SourceState>,
    pub stages: BTreeMap<String, StageState>,
}

/// A manifest as stored: the checkpoint and, per stage, the parts of its state written with
/// it. A listed part that cannot be found makes the checkpoint corrupt.
#[derive(Serialize, Deserialize)]
struct Stored {
    checkpoint: Checkpoint,
    parts: BTreeMap<String, Vec<String>>,
}

impl Stored {
    fn parse(bytes: &[u8]) -> Result<Stored, serde_json::Error> {
        serde_json::from_slice::<Stored>(bytes)
    }

    /// The state files it lists.
    fn files(&self) -> impl Iterator<Item = String> + '_ {
        self.parts.iter().flat_map(|(stage, parts)| {
            parts
                .iter()
                .map(move |part| CheckpointStore::state_file(stage, part))
        })
    }
}

/// The checkpoints of one pipeline.
#[derive(Clone)]
pub struct CheckpointStore {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    /// For messages: where the checkpoints live.
    location: String,
}

const KEEP: usize = 2;

impl CheckpointStore {
    /// The checkpoints of `pipeline` under `table_root` (a directory or an `s3://` URL).
    pub fn open(
        table_root: &str,
        pipeline: &str,
        storage_options: &HashMap<String, String>,
    ) -> Result<Self, CheckpointError> {
        let location =
            crate::sink::resolve_location(table_root, &format!("_stratus/{pipeline}/checkpoints"));
        let store_err = |source| CheckpointError::Store {
            location: location.clone(),
            source,
        };
        let (store, root) =
            crate::sink::open_store(table_root, storage_options).map_err(store_err)?;
        let prefix = root
            .parts()
            .chain(Path::from_iter(["_stratus", pipeline, "checkpoints"]).parts())
            .collect();
        Ok(CheckpointStore {
            store,
            prefix,
            location,
        })
    }

    /// Where the checkpoints live, for messages.
    pub fn location(&self) -> &str {
        &self.location
    }

    fn store_err(&self, source: object_store::Error) -> CheckpointError {
        CheckpointError::Store {
            location: self.location.clone(),
            source,
        }
    }

    fn manifest_path(&self, cycle: i64) -> Path {
        self.prefix
            .clone()
            .join(format!("cycle-{cycle:020}.json").as_str())
    }

    fn state_path(&self, cycle: i64, file: &str) -> Path {
        self.prefix
            .clone()
            .join(format!("cycle-{cycle:020}").as_str())
            .join(file)
    }

    /// The file of one part of a stage's state.
    fn state_file(stage: &str, part: &str) -> String {
        format!("{stage}.{part}.arrow")
    }

    async fn read_state(
        &self,
        cycle: i64,
        file: &str,
    ) -> Result<Option<RecordBatch>, CheckpointError> {
        let bytes = match self.store.get(&self.state_path(cycle, file)).await {
            Ok(got) => got.bytes().await.map_err(|e| self.store_err(e))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.store_err(e)),
        };
        let batch = read_ipc(bytes).map_err(|e| CheckpointError::Corrupt {
            location: format!("{}/cycle-{cycle:020}/{file}", self.location),
            message: e.to_string(),
        })?;
        Ok(Some(batch))
    }

    /// Cycles with a manifest, oldest first.
    async fn cycles(&self) -> Result<Vec<i64>, CheckpointError> {
        let listed: Vec<_> = self
            .store
            .list(Some(&self.prefix))
            .try_collect()
            .await
            .map_err(|e| self.store_err(e))?;
        let mut cycles: Vec<i64> = listed
            .iter()
            .filter_map(|m| m.location.filename())
            .filter_map(|f| {
                f.strip_prefix("cycle-")?
                    .strip_suffix(".json")?
                    .parse()
                    .ok()
            })
            .collect();
        cycles.sort_unstable();
        Ok(cycles)
    }

    /// The newest checkpoint that can be read, if any. A damaged one (a file truncated or
    /// missing) is skipped with a warning for the one before it — the tables' marks then have
    /// the run replay the cycle since, or refuse to start if they are further ahead — but never
    /// all of them: when
    /// checkpoints exist and none can be read, that is an error, not a start from zero.
    pub async fn latest(&self) -> Result<Option<Checkpoint>, CheckpointError> {
        let cycles = self.cycles().await?;
        let mut damaged = Vec::new();
        for &cycle in cycles.iter().rev() {
            match self.load(cycle).await {
                Ok(checkpoint) => {
                    if !damaged.is_empty() {
                        tracing::warn!(
                            "checkpoints at {}: starting from cycle {cycle}, the newest that \
                             can be read; skipped: {}",
                            self.location,
                            damaged.join("; ")
                        );
                    }
                    return Ok(Some(checkpoint));
                }
                Err(e @ CheckpointError::Corrupt { .. }) => damaged.push(e.to_string()),
                Err(e) => return Err(e),
            }
        }
        if damaged.is_empty() {
            return Ok(None);
        }
        Err(CheckpointError::Corrupt {
            location: self.location.clone(),
            message: format!(
                "no checkpoint can be read ({}); restore one from a backup of the object \
                 store, or start over under a new pipeline name with new tables",
                damaged.join("; ")
            ),
        })
    }

    /// The checkpoint of `cycle`.
    async fn load(&self, cycle: i64) -> Result<Checkpoint, CheckpointError> {
        let corrupt = |message: String| CheckpointError::Corrupt {
            location: format!("{}/cycle-{cycle:020}", self.location),
            message,
        };
        let bytes = match self.store.get(&self.manifest_path(cycle)).await {
            Ok(got) => got.bytes().await.map_err(|e| self.store_err(e))?,
            // Listed, then gone: removed meanwhile.
            Err(object_store::Error::NotFound { .. }) => {
                return Err(corrupt("its manifest is gone".into()));
            }
            Err(e) => return Err(self.store_err(e)),
        };
        let stored = Stored::parse(&bytes).map_err(|e| {
            corrupt(format!(
                "{e}: its manifest is damaged, or not a checkpoint this version of Stratus reads \
                 (those of versions before stages were operators are not)"
            ))
        })?;
        let mut checkpoint = stored.checkpoint;
        for (stage, parts) in &stored.parts {
            let Some(state) = checkpoint.stages.get_mut(stage) else {
                return Err(corrupt(format!(
                    "parts listed for `{stage}`, not a stage of it"
                )));
            };
            for part in parts {
                let file = Self::state_file(stage, part);
                let Some(batch) = self.read_state(cycle, &file).await? else {
                    return Err(corrupt(format!(
                        "{file} is listed in the manifest but missing"
                    )));
                };
                state.state.parts.insert(part.clone(), vec![batch]);
            }
        }
        Ok(checkpoint)
    }

    /// Writes `checkpoint` and removes all but the newest few. Returns the bytes written.
    pub async fn save(&self, checkpoint: &Checkpoint) -> Result<u64, CheckpointError> {
        let cycle = checkpoint.cycle;
        let mut written = BTreeMap::new();
        let mut size = 0;
        for (stage, state) in &checkpoint.stages {
            let mut parts = Vec::new();
            for (part, batches) in &state.state.parts {
                let file = Self::state_file(stage, part);
                let bytes = write_ipc(batches).map_err(|e| CheckpointError::Corrupt {
                    location: format!("{}/cycle-{cycle:020}/{file}", self.location),
                    message: e.to_string(),
                })?;
                size += bytes.len() as u64;
                self.store
                    .put(&self.state_path(cycle, &file), PutPayload::from(bytes))
                    .await
                    .map_err(|e| self.store_err(e))?;
                parts.push(part.clone());
            }
            written.insert(stage.clone(), parts);
        }
        let stored = Stored {
            checkpoint: checkpoint.clone(),
            parts: written,
        };
        let manifest =
            serde_json::to_vec_pretty(&stored).map_err(|e| CheckpointError::Corrupt {
                location: self.location.clone(),
                message: e.to_string(),
            })?;
        size += manifest.len() as u64;
        self.store
            .put(&self.manifest_path(cycle), PutPayload::from(manifest))
            .await
            .map_err(|e| self.store_err(e))?;
        let cycles = self.cycles().await?;
        for &old in cycles.iter().rev().skip(KEEP) {
            // The files the old manifest lists (its stages may differ from today's), then the
            // manifest; a manifest that cannot be read leaves only today's names to try.
            let listed: Option<Vec<String>> = match self.store.get(&self.manifest_path(old)).await {
                Ok(got) => got
                    .bytes()
                    .await
                    .ok()
                    .and_then(|b| Stored::parse(&b).ok())
                    .map(|s| s.files().collect()),
                Err(_) => None,
            };
            let files = listed.unwrap_or_else(|| stored.files().collect());
            // The manifest first: a checkpoint without it does not exist.
            self.delete(&self.manifest_path(old)).await?;
            for file in files {
                self.delete(&self.state_path(old, &file)).await?;
            }
        }
        Ok(size)
    }

    async fn delete(&self, path: &Path) -> Result<(), CheckpointError> {
        match self.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.store_err(e)),
        }
    }
}

/// Arrow IPC with LZ4-compressed buffers: window and carry state compresses several-fold, and
/// it is written every cycle. Readers take compressed and uncompressed files alike.
fn write_ipc(batches: &[RecordBatch]) -> Result<Vec<u8>, ArrowError> {
    let Some(first) = batches.first() else {
        return Err(ArrowError::InvalidArgumentError("no state batch".into()));
    };
    let mut out = Vec::new();
    let options = IpcWriteOptions::default()
        .try_with_compression(Some(arrow::ipc::CompressionType::LZ4_FRAME))?;
    let mut writer = FileWriter::try_new_with_options(&mut out, &first.schema(), options)?;
    for batch in batches {
        writer.write(batch)?;
    }
    writer.finish()?;
    drop(writer);
    Ok(out)
}

fn read_ipc(bytes: impl AsRef<[u8]>) -> Result<RecordBatch, ArrowError> {
    let reader = FileReader::try_new(std::io::Cursor::new(bytes), None)?;
    let schema = reader.schema();
    let batches = reader.collect::<Result<Vec<_>, _>>()?;
    arrow::compute::concat_batches(&schema, &batches)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};

    fn rows(values: Vec<i64>) -> RecordBatch {
        let schema = Schema::new(vec![Field::new("v", DataType::Int64, false)]);
        RecordBatch::try_new(Arc::new(schema), vec![Arc::new(Int64Array::from(values))]).unwrap()
    }

    fn checkpoint(cycle: i64) -> Checkpoint {
        let source = SourceState {
            next: BTreeMap::from([(0, 10 * cycle), (1, 7)]),
            watermark: -5,
            newest: BTreeMap::from([(0, i64::MAX), (1, i64::MIN)]),
        };
        let window = StageState {
            watermark: 1,
            state: OperatorState {
                meta: serde_json::json!({"watermark": 2}),
                parts: BTreeMap::from([
                    ("window".into(), vec![rows(vec![cycle, 2]), rows(vec![3])]),
                    ("carry".into(), vec![rows(vec![4])]),
                    ("detectors".into(), vec![rows(vec![5, 6])]),
                ]),
            },
        };
        let plain = StageState {
            watermark: 9,
            state: OperatorState::default(),
        };
        Checkpoint {
            cycle,
            backfill: false,
            sources: BTreeMap::from([("metrics".to_string(), source)]),
            stages: BTreeMap::from([("w".to_string(), window), ("p".to_string(), plain)]),
        }
    }

    #[test]
    fn state_files_are_compressed_and_uncompressed_ones_still_read() {
        let batch = rows((0..10_000).map(|i| i % 7).collect());
        let compressed = write_ipc(std::slice::from_ref(&batch)).unwrap();
        assert_eq!(read_ipc(&compressed).unwrap(), batch);
        // The form earlier versions wrote.
        let mut plain = Vec::new();
        let mut w = FileWriter::try_new(&mut plain, &batch.schema()).unwrap();
        w.write(&batch).unwrap();
        w.finish().unwrap();
        drop(w);
        assert_eq!(read_ipc(&plain).unwrap(), batch);
        assert!(
            compressed.len() * 4 < plain.len(),
            "{} vs {}",
            compressed.len(),
            plain.len()
        );
    }

    #[tokio::test]
    async fn the_newest_checkpoint_reads_back_whole_and_old_ones_go() {
        let dir = std::env::temp_dir().join(format!("stratus-cp-{}", std::process::id()));
        let root = dir.display().to_string();
        let store = CheckpointStore::open(&root, "pipe", &HashMap::new()).unwrap();
        assert_eq!(store.latest().await.unwrap(), None);
        for cycle in 1..=4 {
            store.save(&checkpoint(cycle)).await.unwrap();
        }
        // Written as two batches, a stage's window rows read back as one.
        let mut want = checkpoint(4);
        if let Some(w) = want.stages.get_mut("w") {
            w.state
                .parts
                .insert("window".into(), vec![rows(vec![4, 2, 3])]);
        }
        assert_eq!(store.latest().await.unwrap(), Some(want));
        assert_eq!(store.cycles().await.unwrap(), vec![3, 4]);
        let old = dir.join("_stratus/pipe/checkpoints/cycle-00000000000000000001/w.window.arrow");
        assert!(!old.exists(), "{} was not removed", old.display());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_damaged_checkpoint_gives_way_to_the_one_before_and_none_readable_is_an_error() {
        let dir = std::env::temp_dir().join(format!("stratus-cp-damaged-{}", std::process::id()));
        let store =
            CheckpointStore::open(&dir.display().to_string(), "pipe", &HashMap::new()).unwrap();
        store.save(&checkpoint(1)).await.unwrap();
        store.save(&checkpoint(2)).await.unwrap();
        let file = |cycle: i64, name: &str| {
            dir.join(format!(
                "_stratus/pipe/checkpoints/cycle-{cycle:020}/{name}"
            ))
        };
        // Truncated: the newest is skipped for the one before.
        let window = file(2, "w.window.arrow");
        let bytes = std::fs::read(&window).unwrap();
        std::fs::write(&window, &bytes[..bytes.len() / 2]).unwrap();
        assert_eq!(store.latest().await.unwrap().map(|c| c.cycle), Some(1));
        // Missing as well in that one: nothing to start from is an error, never an empty state.
        std::fs::remove_file(file(1, "w.carry.arrow")).unwrap();
        let err = store.latest().await.unwrap_err().to_string();
        assert!(err.contains("no checkpoint can be read"), "{err}");
        assert!(
            err.contains("cycle-00000000000000000002/w.window.arrow"),
            "{err}"
        );
        assert!(
            err.contains("w.carry.arrow is listed in the manifest but missing"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn old_checkpoints_go_with_the_files_they_list_even_of_stages_renamed_since() {
        let dir = std::env::temp_dir().join(format!("stratus-cp-renamed-{}", std::process::id()));
        let store =
            CheckpointStore::open(&dir.display().to_string(), "pipe", &HashMap::new()).unwrap();
        store.save(&checkpoint(1)).await.unwrap();
        for cycle in 2..=3 {
            let mut c = checkpoint(cycle);
            let w = c.stages.remove("w").unwrap();
            c.stages.insert("renamed".into(), w);
            store.save(&c).await.unwrap();
        }
        let old = dir.join("_stratus/pipe/checkpoints/cycle-00000000000000000001/w.window.arrow");
        assert!(!old.exists(), "{} was not removed", old.display());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
