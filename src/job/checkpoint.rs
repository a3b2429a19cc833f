//! Checkpoints of the run loop: the state a cycle starts from, written once every Delta sink has
//! committed the cycle before it.
//!
//! In: a [`Checkpoint`] — the cycle number; per source the next offset per partition and the
//! watermark clock; per stage its output watermark and its operator's
//! [`OperatorState`]. Out, under `<table root>/_stratus/<pipeline>/checkpoints/`: each part of
//! each stage's state as an Arrow IPC stream (LZ4-compressed; `pyarrow.ipc.open_stream` reads
//! it) in `cycle-<N>/<stage>.<part>.arrow` (a window stage's rows
//! in `<stage>.window.arrow`, its carried-feature history in `<stage>.carry.arrow`, a score
//! stage's detectors in `<stage>.detectors.arrow`, …), then the manifest `cycle-<N>.json`,
//! which lists the files of each part and holds the rest. A checkpoint exists once its manifest
//! does: that is one PUT, atomic on S3 and on a local disk. A worker's shard names them
//! `cycle-<N>-<epoch>` after its owner epoch (see `Stamp`): a paused earlier owner of the
//! partition that writes one late neither overwrites the new owner's nor outranks it.
//!
//! Checkpoints are incremental: a part its operator gives as what was added since its last
//! checkpoint (window rows, carried windows) is written as one more file of that part, and the
//! manifest lists the part's files since its last whole one, oldest first. Every so often
//! ([`CheckpointStore::next_snapshot`], per part, a few parts at a time) an operator is asked
//! for a part whole instead, which starts that part's files afresh. The two newest checkpoints
//! are kept, with every file they list; the rest go.
//!
//! How restart uses it is in [`run`](super::run).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use arrow::error::ArrowError;
use arrow::ipc::reader::{FileReader, StreamReader};
use arrow::ipc::writer::{IpcWriteOptions, StreamWriter};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::operator::{OperatorState, Snapshot};
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

impl CheckpointError {
    /// Whether trying again may succeed: the object store failed (an outage, a request cut
    /// off), not the checkpoint, the credentials or the configuration.
    pub fn is_transient(&self) -> bool {
        use object_store::Error as E;
        match self {
            CheckpointError::Store { source, .. } => !matches!(
                source,
                E::PermissionDenied { .. }
                    | E::Unauthenticated { .. }
                    | E::UnknownConfigurationKey { .. }
                    | E::NotSupported { .. }
                    | E::NotImplemented { .. }
                    | E::InvalidPath { .. }
            ),
            CheckpointError::Corrupt { .. } => false,
        }
    }
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

/// One file of a part: the checkpoint whose directory holds it, and its size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PartFile {
    cycle: i64,
    /// The owner epoch of the checkpoint (0, and absent, for a process that claims nothing).
    #[serde(default, skip_serializing_if = "is_zero")]
    epoch: i64,
    bytes: u64,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

impl PartFile {
    fn stamp(&self) -> Stamp {
        Stamp {
            cycle: self.cycle,
            epoch: self.epoch,
        }
    }
}

/// Which checkpoint: its cycle, and the owner epoch of the worker's shard that wrote it (0 for
/// a single process). Two owners of a partition may each write a checkpoint of one cycle (one
/// paused in the middle of it, the other having taken the partition over meanwhile): the later
/// owner's, of the higher epoch, is the newer, and neither overwrites the other's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Stamp {
    cycle: i64,
    epoch: i64,
}

impl Stamp {
    /// `cycle-<N>`, or `cycle-<N>-<epoch>`: the name of its directory, and of its manifest
    /// with `.json`.
    fn name(&self) -> String {
        match self.epoch {
            0 => format!("cycle-{:020}", self.cycle),
            e => format!("cycle-{:020}-{e:020}", self.cycle),
        }
    }

    fn parse(name: &str) -> Option<Stamp> {
        let rest = name.strip_prefix("cycle-")?;
        let (cycle, epoch) = match rest.split_once('-') {
            Some((cycle, epoch)) => (cycle.parse().ok()?, epoch.parse().ok()?),
            None => (rest.parse().ok()?, 0),
        };
        Some(Stamp { cycle, epoch })
    }
}

/// Per stage and part, the files that make it up, oldest first: a whole one, then those of the
/// checkpoints since that added to it.
type Files = BTreeMap<String, BTreeMap<String, Vec<PartFile>>>;

/// A manifest as stored: the checkpoint and the files of its stages' parts. A listed file that
/// cannot be found makes the checkpoint corrupt.
#[derive(Serialize, Deserialize)]
struct Stored {
    checkpoint: Checkpoint,
    /// As written before checkpoints were incremental: per stage its parts, each a file of this
    /// cycle. Read into `files`.
    #[serde(default, skip_serializing)]
    parts: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    files: Files,
}

/// A manifest to write.
#[derive(Serialize)]
struct StoredRef<'a> {
    checkpoint: &'a Checkpoint,
    files: &'a Files,
}

impl Stored {
    fn parse(bytes: &[u8], cycle: i64) -> Result<Stored, serde_json::Error> {
        let mut stored = serde_json::from_slice::<Stored>(bytes)?;
        for (stage, parts) in std::mem::take(&mut stored.parts) {
            let files = stored.files.entry(stage).or_default();
            for part in parts {
                files.insert(
                    part,
                    vec![PartFile {
                        cycle,
                        epoch: 0,
                        bytes: 0,
                    }],
                );
            }
        }
        Ok(stored)
    }
}

/// The state files `files` lists, as `(checkpoint, file name)`, each name as the store lists
/// it (percent-encoded where a stage's name needs it).
fn listed(files: &Files) -> impl Iterator<Item = (Stamp, String)> + '_ {
    files.iter().flat_map(|(stage, parts)| {
        parts.iter().flat_map(move |(part, chain)| {
            let file = CheckpointStore::state_file(stage, part);
            let name = object_store::path::PathPart::from(file.as_str())
                .as_ref()
                .to_string();
            chain.iter().map(move |f| (f.stamp(), name.clone()))
        })
    })
}

/// The checkpoints whose manifests are among `paths`, oldest first.
fn stamps_of(paths: &[Path]) -> Vec<Stamp> {
    let mut stamps: Vec<Stamp> = paths
        .iter()
        .filter_map(|p| p.filename())
        .filter_map(|f| Stamp::parse(f.strip_suffix(".json")?))
        .collect();
    stamps.sort_unstable();
    stamps
}

/// What a checkpoint wrote, and what a restore from it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Saved {
    /// Bytes written: its manifest and the state files of its cycle.
    pub written: u64,
    /// Bytes of every state file it lists, and its manifest: the state's size as stored.
    pub state: u64,
}

/// The checkpoints of one pipeline.
#[derive(Clone)]
pub struct CheckpointStore {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    /// For messages: where the checkpoints live.
    location: String,
    /// The files of the newest checkpoint read or written: what an incremental one adds to.
    last: Arc<Mutex<Option<Files>>>,
    /// The owner epoch the checkpoints it writes carry (see [`Stamp`]).
    epoch: i64,
}

/// Checkpoints kept (with the files they list).
const KEEP: usize = 2;

/// Bytes of a state file held before it goes up in parts (S3's parts are at least 5 MiB).
const UPLOAD_PART: usize = 16 * 1024 * 1024;

/// State files a checkpoint writes at once (each holds up to [`UPLOAD_PART`] before it goes
/// up in parts).
const PUTS_AT_ONCE: usize = 4;

/// Most files a part is made of: a checkpoint past it asks for it whole (it may wait a few
/// cycles for its turn, see [`CheckpointStore::next_snapshot`]).
const LONGEST_CHAIN: usize = 64;

/// Parts are asked whole together up to this fraction of the stage's state (and one at
/// least).
const WHOLE_SHARE: u64 = 16;

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
            // A shard's name (`<pipeline>/partition-<n>`) is a folder in its pipeline's.
            .chain(
                Path::from_iter(
                    ["_stratus"]
                        .into_iter()
                        .chain(pipeline.split('/'))
                        .chain(["checkpoints"]),
                )
                .parts(),
            )
            .collect();
        Ok(CheckpointStore {
            store,
            prefix,
            location,
            last: Arc::default(),
            epoch: 0,
        })
    }

    /// The checkpoints in `store`, at its root.
    #[cfg(test)]
    pub(crate) fn over(store: Arc<dyn ObjectStore>) -> Self {
        CheckpointStore {
            store,
            prefix: Path::default(),
            location: "test".into(),
            last: Arc::default(),
            epoch: 0,
        }
    }

    /// The checkpoints this store writes from now on are those of the owner `epoch` (a worker's
    /// shard, the highest epoch its claims of the tables took): they outrank any an earlier
    /// owner of the partition writes late, and share no file with them.
    pub fn set_epoch(&mut self, epoch: i64) {
        self.epoch = epoch;
    }

    /// Where the checkpoints live, for messages.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// What the next checkpoint should ask of `stage`'s operator: its changes, with some of
    /// its parts whole, or, when there is no checkpoint of it to add to, its whole state.
    ///
    /// Parts are asked whole once the files added to the stage's parts since their last whole
    /// ones outweigh those whole ones together, or a part has [`LONGEST_CHAIN`] files (so a
    /// restore reads about twice the state at most). Then the parts whose additions outweigh
    /// their whole file most are asked first, as many as fit in a [`WHOLE_SHARE`]th of the
    /// stage's state, and always one: an operator that keeps a large state in many parts (a
    /// carried history, in groups of keys) never holds all of it in memory for one checkpoint,
    /// and the rest wait a cycle or a few.
    pub fn next_snapshot(&self, stage: &str) -> Snapshot {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let Some(parts) = last
            .as_ref()
            .and_then(|files| files.get(stage))
            .filter(|parts| !parts.is_empty())
        else {
            return Snapshot::Whole;
        };
        let sizes: Vec<(&String, usize, u64, u64)> = parts
            .iter()
            .map(|(name, chain)| {
                let whole = chain.first().map_or(0, |f| f.bytes);
                let added: u64 = chain.iter().skip(1).map(|f| f.bytes).sum();
                (name, chain.len(), whole, added)
            })
            .collect();
        let whole: u64 = sizes.iter().map(|s| s.2).sum();
        let added: u64 = sizes.iter().map(|s| s.3).sum();
        let longest = sizes.iter().map(|s| s.1).max().unwrap_or(0);
        if added < whole && longest < LONGEST_CHAIN {
            return Snapshot::changes();
        }
        let mut due: Vec<_> = sizes.into_iter().filter(|s| s.1 > 1).collect();
        due.sort_by_key(|&(_, files, whole, added)| {
            std::cmp::Reverse((files >= LONGEST_CHAIN, added.saturating_sub(whole), files))
        });
        let mut asked = BTreeSet::new();
        let mut taking = 0;
        for (name, _, part_whole, part_added) in due {
            let size = part_whole + part_added;
            if asked.is_empty() || taking + size <= (whole + added) / WHOLE_SHARE {
                taking += size;
                asked.insert(name.clone());
            }
        }
        Snapshot::Changes(asked)
    }

    fn store_err(&self, source: object_store::Error) -> CheckpointError {
        CheckpointError::Store {
            location: self.location.clone(),
            source,
        }
    }

    fn manifest_path(&self, stamp: Stamp) -> Path {
        self.prefix
            .clone()
            .join(format!("{}.json", stamp.name()).as_str())
    }

    fn state_path(&self, stamp: Stamp, file: &str) -> Path {
        self.prefix.clone().join(stamp.name().as_str()).join(file)
    }

    /// The file of one part of a stage's state.
    fn state_file(stage: &str, part: &str) -> String {
        format!("{stage}.{part}.arrow")
    }

    async fn read_state(
        &self,
        stamp: Stamp,
        file: &str,
    ) -> Result<Option<RecordBatch>, CheckpointError> {
        let bytes = match self.store.get(&self.state_path(stamp, file)).await {
            Ok(got) => got.bytes().await.map_err(|e| self.store_err(e))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.store_err(e)),
        };
        let batch = read_ipc(bytes).map_err(|e| CheckpointError::Corrupt {
            location: format!("{}/{}/{file}", self.location, stamp.name()),
            message: e.to_string(),
        })?;
        Ok(Some(batch))
    }

    /// Everything under the prefix.
    async fn list(&self) -> Result<Vec<Path>, CheckpointError> {
        let listed: Vec<_> = self
            .store
            .list(Some(&self.prefix))
            .try_collect()
            .await
            .map_err(|e| self.store_err(e))?;
        Ok(listed.into_iter().map(|m| m.location).collect())
    }

    /// Checkpoints with a manifest, oldest first.
    async fn stamps(&self) -> Result<Vec<Stamp>, CheckpointError> {
        Ok(stamps_of(&self.list().await?))
    }

    /// The newest checkpoint that can be read, if any. A damaged one (a file truncated or
    /// missing) is skipped with a warning for the one before it — the tables' marks then have
    /// the run replay the cycle since, or refuse to start if they are further ahead — but never
    /// all of them: when
    /// checkpoints exist and none can be read, that is an error, not a start from zero.
    pub async fn latest(&self) -> Result<Option<Checkpoint>, CheckpointError> {
        let stamps = self.stamps().await?;
        let mut damaged = Vec::new();
        for &stamp in stamps.iter().rev() {
            let cycle = stamp.cycle;
            match self.load(stamp).await {
                Ok((checkpoint, files)) => {
                    if !damaged.is_empty() {
                        tracing::warn!(
                            "checkpoints at {}: starting from cycle {cycle}, the newest that \
                             can be read; skipped: {}",
                            self.location,
                            damaged.join("; ")
                        );
                    }
                    *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(files);
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

    /// The manifest of `stamp`.
    async fn manifest(&self, stamp: Stamp) -> Result<Stored, CheckpointError> {
        let corrupt = |message: String| CheckpointError::Corrupt {
            location: format!("{}/{}", self.location, stamp.name()),
            message,
        };
        let bytes = match self.store.get(&self.manifest_path(stamp)).await {
            Ok(got) => got.bytes().await.map_err(|e| self.store_err(e))?,
            // Listed, then gone: removed meanwhile.
            Err(object_store::Error::NotFound { .. }) => {
                return Err(corrupt("its manifest is gone".into()));
            }
            Err(e) => return Err(self.store_err(e)),
        };
        Stored::parse(&bytes, stamp.cycle).map_err(|e| {
            corrupt(format!(
                "{e}: its manifest is damaged, or not a checkpoint this version of Stratus reads \
                 (those of versions before stages were operators are not)"
            ))
        })
    }

    /// The checkpoint `stamp`, and the files it lists.
    async fn load(&self, stamp: Stamp) -> Result<(Checkpoint, Files), CheckpointError> {
        let corrupt = |message: String| CheckpointError::Corrupt {
            location: format!("{}/{}", self.location, stamp.name()),
            message,
        };
        let stored = self.manifest(stamp).await?;
        let mut checkpoint = stored.checkpoint;
        for (stage, parts) in &stored.files {
            let Some(state) = checkpoint.stages.get_mut(stage) else {
                return Err(corrupt(format!(
                    "parts listed for `{stage}`, not a stage of it"
                )));
            };
            for (part, chain) in parts {
                let file = Self::state_file(stage, part);
                let mut batches = Vec::with_capacity(chain.len());
                for f in chain {
                    let Some(batch) = self.read_state(f.stamp(), &file).await? else {
                        return Err(corrupt(format!(
                            "{}/{file} is listed in the manifest but missing",
                            f.stamp().name()
                        )));
                    };
                    batches.push(batch);
                }
                if chain.len() > 1 {
                    state.state.appended.insert(part.clone());
                }
                state.state.parts.insert(part.clone(), batches);
            }
        }
        Ok((checkpoint, stored.files))
    }

    /// Writes `checkpoint`: each part whole, or — a part its operator gave as
    /// [`appended`](crate::operator::OperatorState::appended) — as a file added to that part's
    /// files in the checkpoint before (none at all when nothing was added). Then removes the
    /// checkpoints before the newest few, and the files none of those lists.
    pub async fn save(&self, checkpoint: &Checkpoint) -> Result<Saved, CheckpointError> {
        let cycle = checkpoint.cycle;
        let stamp = Stamp {
            cycle,
            epoch: self.epoch,
        };
        let before = self.last.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut files = Files::new();
        let mut puts = Vec::new();
        for (stage, state) in &checkpoint.stages {
            let parts = files.entry(stage.clone()).or_default();
            for (part, batches) in &state.state.parts {
                let earlier = before
                    .as_ref()
                    .and_then(|b| b.get(stage)?.get(part))
                    .filter(|_| state.state.appended.contains(part));
                let added = batches.iter().map(RecordBatch::num_rows).sum::<usize>();
                if earlier.is_none() || added > 0 {
                    puts.push((stage, part, batches));
                }
                parts.insert(part.clone(), earlier.cloned().unwrap_or_default());
            }
        }
        // A few files at a time: a stage of many parts (a carried history's groups) is as many
        // requests to the store.
        let mut sizes = Vec::with_capacity(puts.len());
        for some in puts.chunks(PUTS_AT_ONCE) {
            let mut writing = Vec::with_capacity(some.len());
            for (stage, part, batches) in some {
                writing.push(self.put_state(stamp, Self::state_file(stage, part), batches));
            }
            // Each to its end, so a failed one aborts its own upload and none is cut off.
            for size in futures::future::join_all(writing).await {
                sizes.push(size?);
            }
        }
        let mut written = 0;
        for ((stage, part, _), bytes) in puts.iter().zip(sizes) {
            written += bytes;
            if let Some(chain) = files.get_mut(*stage).and_then(|p| p.get_mut(*part)) {
                chain.push(PartFile {
                    cycle,
                    epoch: self.epoch,
                    bytes,
                });
            }
        }
        let manifest = serde_json::to_vec_pretty(&StoredRef {
            checkpoint,
            files: &files,
        })
        .map_err(|e| CheckpointError::Corrupt {
            location: self.location.clone(),
            message: e.to_string(),
        })?;
        let manifest_bytes = manifest.len() as u64;
        written += manifest_bytes;
        self.store
            .put(&self.manifest_path(stamp), PutPayload::from(manifest))
            .await
            .map_err(|e| self.store_err(e))?;
        let state = manifest_bytes
            + files
                .values()
                .flat_map(BTreeMap::values)
                .flatten()
                .map(|f| f.bytes)
                .sum::<u64>();
        self.remove_old(stamp, &files).await?;
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(files);
        Ok(Saved { written, state })
    }

    /// Writes `batches` as the state file `file` of `stamp`, batch by batch: a large state
    /// goes up in parts as it is encoded, never whole in memory a second time. Returns its
    /// size.
    async fn put_state(
        &self,
        stamp: Stamp,
        file: String,
        batches: &[RecordBatch],
    ) -> Result<u64, CheckpointError> {
        let corrupt = |e: ArrowError| CheckpointError::Corrupt {
            location: format!("{}/{}/{file}", self.location, stamp.name()),
            message: e.to_string(),
        };
        let mut upload = object_store::buffered::BufWriter::with_capacity(
            self.store.clone(),
            self.state_path(stamp, &file),
            UPLOAD_PART,
        );
        let mut ipc = IpcFile::new(batches).map_err(corrupt)?;
        let mut size = 0;
        let written: Result<(), CheckpointError> = async {
            for batch in batches.iter().map(Some).chain([None]) {
                let bytes = match batch {
                    Some(batch) => ipc.add(batch),
                    None => ipc.finish(),
                }
                .map_err(corrupt)?;
                size += bytes.len() as u64;
                upload
                    .put(bytes.into())
                    .await
                    .map_err(|e| self.store_err(e))?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = written {
            // A multipart upload begun is not left behind. (Only before the shutdown below:
            // after it, `abort` panics.)
            let _ = upload.abort().await;
            return Err(e);
        }
        tokio::io::AsyncWriteExt::shutdown(&mut upload)
            .await
            .map_err(|e| {
                self.store_err(object_store::Error::Generic {
                    store: "checkpoint",
                    source: Box::new(e),
                })
            })?;
        Ok(size)
    }

    /// Removes the checkpoints before the newest [`KEEP`] (the one just written, `stamp`,
    /// lists `files`), then the state files of earlier checkpoints that none of those lists.
    async fn remove_old(&self, stamp: Stamp, files: &Files) -> Result<(), CheckpointError> {
        let paths = self.list().await?;
        let stamps = stamps_of(&paths);
        let mut kept: BTreeSet<(Stamp, String)> = listed(files).collect();
        let mut kept_stamps = vec![stamp];
        for &other in stamps.iter().rev().filter(|&&c| c != stamp).take(KEEP - 1) {
            kept_stamps.push(other);
            // A manifest that cannot be read is no checkpoint to keep files for.
            if let Ok(stored) = self.manifest(other).await {
                kept.extend(listed(&stored.files));
            }
        }
        // The manifests first: a checkpoint without one does not exist.
        for &old in stamps.iter().filter(|c| !kept_stamps.contains(c)) {
            self.delete(&self.manifest_path(old)).await?;
        }
        for path in paths {
            let mut parts = path.parts().skip(self.prefix.parts().count());
            let (Some(dir), Some(file), None) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            let Some(dir_stamp) = Stamp::parse(dir.as_ref()) else {
                continue;
            };
            if dir_stamp < stamp && !kept.contains(&(dir_stamp, file.as_ref().to_string())) {
                self.delete(&path).await?;
            }
        }
        Ok(())
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
/// A state file made a batch at a time: each call gives the bytes that follow those before.
/// The IPC stream format, whose batches may each bring a dictionary of their own (a carried
/// history's chunks each have their keys'); the IPC file format allows one per column, and
/// files written before are in it.
struct IpcFile(StreamWriter<Vec<u8>>);

impl IpcFile {
    /// A file of `batches`' schema (the first one's).
    fn new(batches: &[RecordBatch]) -> Result<Self, ArrowError> {
        let Some(first) = batches.first() else {
            return Err(ArrowError::InvalidArgumentError("no state batch".into()));
        };
        let options = IpcWriteOptions::default()
            .try_with_compression(Some(arrow::ipc::CompressionType::LZ4_FRAME))?;
        Ok(IpcFile(StreamWriter::try_new_with_options(
            Vec::new(),
            &first.schema(),
            options,
        )?))
    }

    /// The bytes of `batch` (and of the header, the first time).
    fn add(&mut self, batch: &RecordBatch) -> Result<Vec<u8>, ArrowError> {
        self.0.write(batch)?;
        Ok(std::mem::take(self.0.get_mut()))
    }

    /// The end of the stream.
    fn finish(&mut self) -> Result<Vec<u8>, ArrowError> {
        self.0.finish()?;
        Ok(std::mem::take(self.0.get_mut()))
    }
}

#[cfg(test)]
fn write_ipc(batches: &[RecordBatch]) -> Result<Vec<u8>, ArrowError> {
    let mut file = IpcFile::new(batches)?;
    let mut out = Vec::new();
    for batch in batches {
        out.extend(file.add(batch)?);
    }
    out.extend(file.finish()?);
    Ok(out)
}

/// A state file as one batch: the IPC stream format, or the file format of earlier versions
/// (which starts with its magic).
fn read_ipc(bytes: impl AsRef<[u8]>) -> Result<RecordBatch, ArrowError> {
    let bytes = std::io::Cursor::new(bytes.as_ref());
    let (schema, batches) = if bytes.get_ref().starts_with(b"ARROW1") {
        let reader = FileReader::try_new(bytes, None)?;
        (reader.schema(), reader.collect::<Result<Vec<_>, _>>()?)
    } else {
        // A stream cut short at a message's end reads as a shorter one: its end marker says
        // it is whole.
        if !bytes.get_ref().ends_with(&END_OF_STREAM) {
            return Err(ArrowError::IpcError(
                "the state file is cut short (no end-of-stream marker)".into(),
            ));
        }
        let reader = StreamReader::try_new(bytes, None)?;
        (reader.schema(), reader.collect::<Result<Vec<_>, _>>()?)
    };
    arrow::compute::concat_batches(&schema, &batches)
}

/// What ends an Arrow IPC stream: a continuation marker and a message length of 0.
const END_OF_STREAM: [u8; 8] = [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0];

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};

    fn rows(values: Vec<i64>) -> RecordBatch {
        let schema = Schema::new(vec![Field::new("v", DataType::Int64, false)]);
        RecordBatch::try_new(Arc::new(schema), vec![Arc::new(Int64Array::from(values))]).unwrap()
    }

    async fn cycles(store: &CheckpointStore) -> Vec<i64> {
        store
            .stamps()
            .await
            .unwrap()
            .iter()
            .map(|s| s.cycle)
            .collect()
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
                ..OperatorState::default()
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
        let mut w = arrow::ipc::writer::FileWriter::try_new(&mut plain, &batch.schema()).unwrap();
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

    /// A worker's shard (owner epoch 1) checkpoints cycle 3; a new owner (epoch 2) restores it
    /// and checkpoints its own cycles 4 and 5; the old owner, paused in the middle of its
    /// checkpoint of cycle 4, writes it late, with other offsets and rows. The new owner's
    /// newest checkpoint stays the newest, whole, and the old owner's files are its own; the
    /// new owner's next checkpoint removes the late one.
    #[tokio::test]
    async fn a_late_checkpoint_of_an_earlier_owner_never_outranks_the_new_owners() {
        let dir = std::env::temp_dir().join(format!("stratus-cp-owners-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let root = dir.display().to_string();
        let open = |epoch: i64| {
            let mut store =
                CheckpointStore::open(&root, "pipe/partition-3", &HashMap::new()).unwrap();
            store.set_epoch(epoch);
            store
        };
        let old = open(1);
        old.save(&checkpoint(3)).await.unwrap();
        let new = open(2);
        assert_eq!(new.latest().await.unwrap().map(|c| c.cycle), Some(3));
        new.save(&checkpoint(4)).await.unwrap();
        let mut late = checkpoint(4);
        if let Some(s) = late.sources.get_mut("metrics") {
            s.next.insert(0, 35);
        }
        if let Some(w) = late.stages.get_mut("w") {
            w.state.parts.insert("window".into(), vec![rows(vec![99])]);
        }
        old.save(&late).await.unwrap();

        let read = open(3).latest().await.unwrap().unwrap();
        assert_eq!(
            read.sources["metrics"].next[&0], 40,
            "the new owner's offsets"
        );
        let window = &read.stages["w"].state.parts["window"];
        assert_eq!(window.len(), 1);
        assert_eq!(window[0], rows(vec![4, 2, 3]), "the new owner's rows");

        new.save(&checkpoint(5)).await.unwrap();
        assert_eq!(cycles(&new).await, vec![4, 5]);
        let read = open(3).latest().await.unwrap().unwrap();
        assert_eq!(read.cycle, 5);
        assert_eq!(read.sources["metrics"].next[&0], 50);
        std::fs::remove_dir_all(&dir).unwrap();
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
        assert_eq!(cycles(&store).await, vec![3, 4]);
        let old = dir.join("_stratus/pipe/checkpoints/cycle-00000000000000000001/w.window.arrow");
        assert!(!old.exists(), "{} was not removed", old.display());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Batches whose dictionary-encoded columns each have a dictionary of their own (a
    /// carried history's chunks, each of its keys) read back as one batch.
    #[test]
    fn batches_with_dictionaries_of_their_own_read_back() {
        use arrow::array::{DictionaryArray, StringArray};
        use arrow::datatypes::Int32Type;
        let chunk = |keys: &[&str]| {
            let dict: DictionaryArray<Int32Type> = keys.iter().copied().collect();
            RecordBatch::try_from_iter([("key", Arc::new(dict) as arrow::array::ArrayRef)]).unwrap()
        };
        let chunks = [chunk(&["a", "a", "b"]), chunk(&["c", "d", "d"])];
        let written = write_ipc(&chunks).unwrap();
        let read = read_ipc(&written).unwrap();
        let keys = arrow::compute::cast(read.column(0), &arrow::datatypes::DataType::Utf8).unwrap();
        let want: arrow::array::ArrayRef =
            Arc::new(StringArray::from(vec!["a", "a", "b", "c", "d", "d"]));
        assert_eq!(&keys, &want);
        // Cut after its first batch's messages, it is refused, not read as a shorter state.
        let first = write_ipc(&chunks[..1]).unwrap();
        let cut = &written[..first.len() - END_OF_STREAM.len()];
        assert!(read_ipc(cut).is_err());
    }

    /// A state larger than one upload part goes up in parts, batch by batch, and reads back
    /// whole.
    #[tokio::test]
    async fn a_state_larger_than_an_upload_part_reads_back_whole() {
        let dir = std::env::temp_dir().join(format!("stratus-cp-big-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store =
            CheckpointStore::open(&dir.display().to_string(), "pipe", &HashMap::new()).unwrap();
        // Numbers that do not compress: more bytes than a part, in four batches.
        let mut x = 7u64;
        let rows_of = |n: usize, x: &mut u64| {
            rows(
                (0..n)
                    .map(|_| {
                        *x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                        (*x >> 1) as i64
                    })
                    .collect(),
            )
        };
        let n = UPLOAD_PART / 8 / 3;
        let big: Vec<RecordBatch> = (0..4).map(|_| rows_of(n, &mut x)).collect();
        let mut c = checkpoint(1);
        if let Some(w) = c.stages.get_mut("w") {
            w.state.parts.insert("window".into(), big.clone());
        }
        let saved = store.save(&c).await.unwrap();
        assert!(
            saved.written > UPLOAD_PART as u64,
            "{} bytes",
            saved.written
        );
        let whole = arrow::compute::concat_batches(&big[0].schema(), &big).unwrap();
        if let Some(w) = c.stages.get_mut("w") {
            w.state.parts.insert("window".into(), vec![whole]);
        }
        assert_eq!(store.latest().await.unwrap(), Some(c));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// `checkpoint(cycle)` with stage `w`'s window part given as rows added (`window`) and its
    /// detectors as added but with none.
    fn incremental(cycle: i64, window: Vec<i64>) -> Checkpoint {
        let mut c = checkpoint(cycle);
        if let Some(w) = c.stages.get_mut("w") {
            w.state.parts.insert("window".into(), vec![rows(window)]);
            w.state.parts.insert("detectors".into(), vec![rows(vec![])]);
            w.state.appended = ["window", "detectors"].map(String::from).into();
        }
        c
    }

    #[tokio::test]
    async fn incremental_checkpoints_read_back_whole_and_keep_the_files_they_list() {
        let dir = std::env::temp_dir().join(format!("stratus-cp-incr-{}", std::process::id()));
        let store =
            CheckpointStore::open(&dir.display().to_string(), "pipe", &HashMap::new()).unwrap();
        let file = |cycle: i64, name: &str| {
            dir.join(format!(
                "_stratus/pipe/checkpoints/cycle-{cycle:020}/{name}"
            ))
        };
        assert_eq!(
            store.next_snapshot("w"),
            Snapshot::Whole,
            "nothing to add to"
        );
        let first = store.save(&checkpoint(1)).await.unwrap();
        assert_eq!(store.next_snapshot("w"), Snapshot::changes());
        assert_eq!(
            store.next_snapshot("p"),
            Snapshot::Whole,
            "a stage of no parts"
        );
        let second = store.save(&incremental(2, vec![20])).await.unwrap();
        let third = store.save(&incremental(3, vec![30, 31])).await.unwrap();
        assert!(second.written < first.written, "{second:?} vs {first:?}");
        assert!(third.state > third.written, "{third:?}");
        // Restored: the whole part, then each addition, oldest first; a part with nothing
        // added is its whole file alone.
        let got = store.latest().await.unwrap().unwrap();
        let w = &got.stages["w"].state;
        assert_eq!(
            w.parts["window"],
            vec![rows(vec![1, 2, 3]), rows(vec![20]), rows(vec![30, 31])]
        );
        assert_eq!(w.parts["detectors"], vec![rows(vec![5, 6])]);
        assert_eq!(w.parts["carry"], vec![rows(vec![4])]);
        assert!(w.appended.contains("window") && !w.appended.contains("detectors"));
        assert!(
            !file(2, "w.detectors.arrow").exists(),
            "nothing added, no file"
        );
        // Cycle 1's manifest goes (two are kept), its window file stays: cycle 3 lists it.
        assert_eq!(cycles(&store).await, vec![2, 3]);
        assert!(file(1, "w.window.arrow").exists());
        assert!(
            !file(1, "w.carry.arrow").exists(),
            "replaced by a later whole one"
        );
        // Once the additions outweigh a part's whole file, the next checkpoint asks for that
        // part whole; the files of the chain before go once no kept checkpoint lists them.
        store
            .save(&incremental(4, (0..5_000).collect()))
            .await
            .unwrap();
        assert_eq!(
            store.next_snapshot("w"),
            Snapshot::Changes(["window".to_string()].into())
        );
        store.save(&checkpoint(5)).await.unwrap();
        assert!(file(1, "w.window.arrow").exists(), "cycle 4 lists it still");
        store.save(&incremental(6, vec![60])).await.unwrap();
        assert!(!file(1, "w.window.arrow").exists());
        assert!(!file(4, "w.window.arrow").exists());
        let got = store.latest().await.unwrap().unwrap();
        assert_eq!(
            got.stages["w"].state.parts["window"],
            vec![rows(vec![5, 2, 3]), rows(vec![60])]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Stage `g`'s parts `group.0` to `group.3`, each of `n(part)` rows, as added (`appended`)
    /// or whole.
    fn groups(cycle: i64, n: impl Fn(usize) -> i64, appended: &[usize]) -> Checkpoint {
        let mut state = OperatorState::default();
        for g in 0..4 {
            let name = format!("group.{g}");
            // Values no compression shrinks much: a file's size follows its rows.
            let values = (0..n(g))
                .map(|i| (i * 7_919 + g as i64) % 1_000_003)
                .collect();
            state.parts.insert(name.clone(), vec![rows(values)]);
            if appended.contains(&g) {
                state.appended.insert(name);
            }
        }
        let mut c = checkpoint(cycle);
        c.stages.insert(
            "g".into(),
            StageState {
                watermark: 1,
                state,
            },
        );
        c
    }

    #[tokio::test]
    async fn parts_are_asked_whole_a_few_at_a_time_the_most_outweighed_first() {
        let dir = std::env::temp_dir().join(format!("stratus-cp-groups-{}", std::process::id()));
        let store =
            CheckpointStore::open(&dir.display().to_string(), "pipe", &HashMap::new()).unwrap();
        let all = [0, 1, 2, 3];
        store.save(&groups(1, |_| 1_000, &[])).await.unwrap();
        assert_eq!(store.next_snapshot("g"), Snapshot::changes());
        // The additions outweigh the whole files, group.2's most: it alone is asked whole, as
        // each part is about a quarter of the stage's state.
        let added = |g| if g == 2 { 3_000 } else { 1_500 };
        store.save(&groups(2, added, &all)).await.unwrap();
        let ask = |part: &str| Snapshot::Changes([part.to_string()].into());
        assert_eq!(store.next_snapshot("g"), ask("group.2"));
        // Given so, the additions no longer outweigh the whole files: nothing is asked.
        let given = |whole: usize| move |g| if g == whole { 4_000 } else { 10 };
        store.save(&groups(3, given(2), &[0, 1, 3])).await.unwrap();
        assert_eq!(store.next_snapshot("g"), Snapshot::changes());
        // More added to each, until they outweigh again: then one of the others, whose
        // additions outweigh their whole files most, is asked.
        let mut cycle = 4;
        let asked = loop {
            store.save(&groups(cycle, |_| 500, &all)).await.unwrap();
            cycle += 1;
            if let Snapshot::Changes(whole) = store.next_snapshot("g")
                && !whole.is_empty()
            {
                break whole;
            }
        };
        assert_eq!(asked.len(), 1, "{asked:?}");
        assert!(!asked.contains("group.2"), "{asked:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn files_of_a_stage_whose_name_the_store_encodes_are_kept_while_listed() {
        let dir = std::env::temp_dir().join(format!("stratus-cp-encoded-{}", std::process::id()));
        let store =
            CheckpointStore::open(&dir.display().to_string(), "pipe", &HashMap::new()).unwrap();
        let renamed = |c: Checkpoint| {
            let mut c = c;
            let w = c.stages.remove("w").unwrap();
            c.stages.insert("w#1%".into(), w);
            c
        };
        store.save(&renamed(checkpoint(1))).await.unwrap();
        for cycle in 2..=4 {
            store
                .save(&renamed(incremental(cycle, vec![cycle])))
                .await
                .unwrap();
        }
        let got = store.latest().await.unwrap().unwrap();
        assert_eq!(
            got.stages["w#1%"].state.parts["window"],
            vec![
                rows(vec![1, 2, 3]),
                rows(vec![2]),
                rows(vec![3]),
                rows(vec![4])
            ]
        );
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
