//! The cluster's control plane, on two compacted Kafka topics (as Kafka Connect keeps its
//! connector configs and statuses):
//! - the control topic (`stratus.pipelines` by default): per pipeline name, its newest
//!   definition — the pipeline file, every file it names by a path relative to itself (SQL,
//!   schemas, workloads), whether it is to run or stay stopped, and a version that changes
//!   with each submit, stop and resume;
//! - the status topic (`stratus.status` by default): per pipeline and worker, what the worker
//!   last reported — running, failed with the error, or stopped.
//!
//! In: pipeline files (`stratus submit`) and commands (`stratus pipelines stop|resume`). Out:
//! records on those topics, which every `stratus worker` follows. Absolute paths and URLs in a
//! pipeline file (a model registry on S3) are kept as they are: the workers must reach them.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::kafka::KafkaConnection;

/// The control topic unless another is named.
pub const CONTROL_TOPIC: &str = "stratus.pipelines";
/// The status topic unless another is named.
pub const STATUS_TOPIC: &str = "stratus.status";

const TIMEOUT: Duration = Duration::from_secs(10);

/// A record's key and value (none: a tombstone).
type Record = (String, Option<Vec<u8>>);

/// Why the control plane could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("topic {topic}: {source}")]
    Kafka { topic: String, source: KafkaError },
    #[error("{0}")]
    File(String),
    #[error("no pipeline `{0}` was submitted (stratus pipelines list shows those that were)")]
    Unknown(String),
}

/// Whether a submitted pipeline is to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Wanted {
    Running,
    Stopped,
}

/// A submitted pipeline, as the control topic holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Definition {
    pub name: String,
    /// The pipeline file's name.
    pub file: String,
    /// Its text.
    pub text: String,
    /// Every file it names by a path relative to itself: the path as written → the file's text.
    pub files: BTreeMap<String, String>,
    pub state: Wanted,
    /// When it was submitted, stopped or resumed (ms since the epoch): a worker runs a pipeline
    /// again when its version changes.
    pub version: i64,
}

/// What a worker last reported of a pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub pipeline: String,
    pub worker: String,
    /// `running`, `failed` or `stopped`.
    pub state: String,
    /// The definition's version it concerns.
    pub version: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When (RFC 3339).
    pub at: String,
}

impl Status {
    pub fn new(d: &Definition, worker: &str, state: &str, error: Option<String>) -> Self {
        Status {
            pipeline: d.name.clone(),
            worker: worker.to_string(),
            state: state.to_string(),
            version: d.version,
            error,
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        }
    }
}

/// The definition of the pipeline file `file` (already checked), named `name`, to run.
pub fn bundle(file: &Path, name: &str) -> Result<Definition, ControlError> {
    let read = |path: &Path| {
        std::fs::read_to_string(path)
            .map_err(|e| ControlError::File(format!("cannot read {}: {e}", path.display())))
    };
    let text = read(file)?;
    let base = file.parent().unwrap_or(Path::new("."));
    let yaml: serde_norway::Value = serde_norway::from_str(&text)
        .map_err(|e| ControlError::File(format!("{}: {e}", file.display())))?;
    let mut files = BTreeMap::new();
    // Files the pipeline names, never its Kafka client's (keys and certificates stay on the
    // workers).
    let mut strings = Vec::new();
    if let serde_norway::Value::Mapping(m) = &yaml {
        for (key, value) in m {
            if key.as_str() != Some("kafka") {
                collect_strings(value, &mut strings);
            }
        }
    }
    for s in strings {
        let path = Path::new(&s);
        if s.contains("://") || path.is_absolute() || files.contains_key(&s) {
            continue;
        }
        let full = base.join(path);
        if full.is_file() {
            files.insert(s.clone(), read(&full)?);
        }
    }
    Ok(Definition {
        name: name.to_string(),
        file: file
            .file_name()
            .map_or("pipeline.yaml".into(), |f| f.to_string_lossy().into_owned()),
        text,
        files,
        state: Wanted::Running,
        version: chrono::Utc::now().timestamp_millis(),
    })
}

fn collect_strings(v: &serde_norway::Value, out: &mut Vec<String>) {
    match v {
        serde_norway::Value::String(s) => out.push(s.clone()),
        serde_norway::Value::Sequence(items) => items.iter().for_each(|i| collect_strings(i, out)),
        serde_norway::Value::Mapping(m) => m.values().for_each(|i| collect_strings(i, out)),
        serde_norway::Value::Tagged(t) => collect_strings(&t.value, out),
        _ => {}
    }
}

/// Writes `d`'s files under `dir` as they lay beside the pipeline file; returns its path.
pub fn materialise(d: &Definition, dir: &Path) -> Result<PathBuf, ControlError> {
    // Whatever the record says, nothing is written outside `dir`.
    let plain = |name: &str| {
        let mut c = Path::new(name).components();
        matches!((c.next(), c.next()), (Some(Component::Normal(_)), None))
    };
    if !plain(&d.name) || !plain(&d.file) {
        return Err(ControlError::File(format!(
            "definition {:?}: its name and file name ({:?}) must be plain names",
            d.name, d.file
        )));
    }
    if let Some(bad) = d.files.keys().find(|f| {
        Path::new(f)
            .components()
            .any(|c| matches!(c, Component::RootDir | Component::Prefix(_)))
    }) {
        return Err(ControlError::File(format!(
            "definition {:?}: file {bad:?} is not a relative path",
            d.name
        )));
    }
    // The pipeline file sits as many folders deep as its files reach up (`../sql/…`).
    let depth = d
        .files
        .keys()
        .map(|f| reach_up(Path::new(f)))
        .max()
        .unwrap_or(0);
    let mut base = dir.join(&d.name).join(d.version.to_string());
    for _ in 0..depth {
        base.push("_");
    }
    let write = |path: &Path, text: &str| {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| ControlError::File(format!("{}: {e}", parent.display())))?;
        }
        std::fs::write(path, text)
            .map_err(|e| ControlError::File(format!("{}: {e}", path.display())))
    };
    let file = base.join(&d.file);
    write(&file, &d.text)?;
    for (relative, text) in &d.files {
        write(&normalise(&base.join(relative)), text)?;
    }
    Ok(file)
}

/// How many folders `path` climbs above where it starts.
fn reach_up(path: &Path) -> usize {
    let (mut depth, mut most) = (0i64, 0i64);
    for c in path.components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            _ => {}
        }
        most = most.min(depth);
    }
    most.unsigned_abs() as usize
}

/// `path` with its `..` resolved, without the file system.
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The control and status topics of a cluster.
pub struct ControlPlane {
    kafka: KafkaConnection,
    pub control: String,
    pub status: String,
}

impl ControlPlane {
    pub fn new(kafka: KafkaConnection, control: &str, status: &str) -> Self {
        ControlPlane {
            kafka,
            control: control.to_string(),
            status: status.to_string(),
        }
    }

    fn err(topic: &str) -> impl Fn(KafkaError) -> ControlError + '_ {
        move |source| ControlError::Kafka {
            topic: topic.to_string(),
            source,
        }
    }

    /// Creates both topics, compacted, unless they exist.
    pub async fn ensure_topics(&self) -> Result<(), ControlError> {
        let admin: AdminClient<DefaultClientContext> = self
            .kafka
            .admin()
            .create()
            .map_err(Self::err(&self.control))?;
        let topics: Vec<NewTopic> = [&self.control, &self.status]
            .into_iter()
            .map(|t| {
                NewTopic::new(t, 1, TopicReplication::Fixed(-1)).set("cleanup.policy", "compact")
            })
            .collect();
        let created = admin
            .create_topics(&topics, &AdminOptions::new())
            .await
            .map_err(Self::err(&self.control))?;
        for r in created {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(ControlError::Kafka {
                        source: KafkaError::AdminOp(code),
                        topic,
                    });
                }
            }
        }
        Ok(())
    }

    async fn publish(&self, topic: &str, key: &str, value: &[u8]) -> Result<(), ControlError> {
        let producer: FutureProducer = self.kafka.producer().create().map_err(Self::err(topic))?;
        producer
            .send(
                FutureRecord::to(topic).key(key).payload(value),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| Self::err(topic)(e))?;
        Ok(())
    }

    pub async fn publish_definition(&self, d: &Definition) -> Result<(), ControlError> {
        let value = serde_json::to_vec(d).map_err(|e| ControlError::File(e.to_string()))?;
        self.publish(&self.control, &d.name, &value).await
    }

    pub async fn publish_status(&self, s: &Status) -> Result<(), ControlError> {
        let value = serde_json::to_vec(s).map_err(|e| ControlError::File(e.to_string()))?;
        let key = format!("{}/{}", s.pipeline, s.worker);
        self.publish(&self.status, &key, &value).await
    }

    /// Every submitted pipeline's newest definition.
    pub fn definitions(&self) -> Result<BTreeMap<String, Definition>, ControlError> {
        let mut out = BTreeMap::new();
        for (key, value) in self.read_to_end(&self.control)? {
            match value {
                Some(v) => {
                    if let Some(d) = parse::<Definition>(&self.control, &v) {
                        out.insert(key, d);
                    }
                }
                None => {
                    out.remove(&key);
                }
            }
        }
        Ok(out)
    }

    /// Each worker's newest status of each pipeline.
    pub fn statuses(&self) -> Result<Vec<Status>, ControlError> {
        let mut out = BTreeMap::new();
        for (key, value) in self.read_to_end(&self.status)? {
            match value {
                Some(v) => {
                    if let Some(s) = parse::<Status>(&self.status, &v) {
                        out.insert(key, s);
                    }
                }
                None => {
                    out.remove(&key);
                }
            }
        }
        Ok(out.into_values().collect())
    }

    /// The newest definition of `name`.
    pub fn definition(&self, name: &str) -> Result<Definition, ControlError> {
        self.definitions()?
            .remove(name)
            .ok_or_else(|| ControlError::Unknown(name.to_string()))
    }

    /// A consumer of `topic` from its start.
    fn reader(&self, topic: &str) -> Result<(BaseConsumer, Vec<(i32, i64)>), ControlError> {
        let err = Self::err(topic);
        let consumer: BaseConsumer = self
            .kafka
            .consumer("stratus-control")
            .create()
            .map_err(&err)?;
        let ends = partition_ends(&consumer, topic).map_err(&err)?;
        let mut list = TopicPartitionList::new();
        for &(p, _) in &ends {
            list.add_partition_offset(topic, p, Offset::Beginning)
                .map_err(&err)?;
        }
        consumer.assign(&list).map_err(&err)?;
        Ok((consumer, ends))
    }

    /// The records of `topic` from its start to its end when asked, in order per partition.
    fn read_to_end(&self, topic: &str) -> Result<Vec<Record>, ControlError> {
        let (consumer, ends) = self.reader(topic)?;
        let mut out = Vec::new();
        let mut next: BTreeMap<i32, i64> = ends.iter().map(|&(p, _)| (p, 0)).collect();
        let done = |next: &BTreeMap<i32, i64>| ends.iter().all(|(p, end)| next[p] >= *end);
        let deadline = std::time::Instant::now() + TIMEOUT * 3;
        while !done(&next) {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    next.insert(m.partition(), m.offset() + 1);
                    let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                    out.push((key, m.payload().map(<[u8]>::to_vec)));
                }
                Some(Err(e)) => return Err(Self::err(topic)(e)),
                None if std::time::Instant::now() > deadline => {
                    return Err(Self::err(topic)(KafkaError::MessageConsumption(
                        RDKafkaErrorCode::OperationTimedOut,
                    )));
                }
                None => {}
            }
        }
        Ok(out)
    }

    /// Follows the control topic from its start: see [`Follow::changes`].
    pub fn follow(&self) -> Result<Follow, ControlError> {
        let (consumer, _) = self.reader(&self.control)?;
        Ok(Follow {
            consumer,
            topic: self.control.clone(),
        })
    }
}

/// The partitions of `topic` with their end offsets, once the broker shows each with a leader
/// that answers. A topic just created (as [`ControlPlane::ensure_topics`] does) may show none
/// for a moment, or fail the requests: a reader assigned none of them would follow nothing,
/// and a worker would fail at start, so this waits for them, up to [`TIMEOUT`].
fn partition_ends(consumer: &BaseConsumer, topic: &str) -> Result<Vec<(i32, i64)>, KafkaError> {
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        // Until then a topic just created may also fail the request (not leader for it yet).
        let shown = consumer
            .fetch_metadata(Some(topic), TIMEOUT)
            .map(|metadata| {
                metadata
                    .topics()
                    .iter()
                    .find(|t| t.name() == topic)
                    .filter(|t| {
                        t.error().is_none()
                            && !t.partitions().is_empty()
                            && t.partitions().iter().all(|p| p.leader() >= 0)
                    })
                    .map(|t| t.partitions().iter().map(|p| p.id()).collect::<Vec<i32>>())
            });
        let ends = shown.and_then(|partitions| {
            partitions
                .map(|ps| {
                    ps.into_iter()
                        .map(|p| Ok((p, consumer.fetch_watermarks(topic, p, TIMEOUT)?.1)))
                        .collect::<Result<Vec<_>, KafkaError>>()
                })
                .transpose()
        });
        match ends {
            Ok(Some(ends)) => return Ok(ends),
            Err(e) if std::time::Instant::now() > deadline => return Err(e),
            Ok(None) if std::time::Instant::now() > deadline => {
                return Err(KafkaError::MetadataFetch(
                    RDKafkaErrorCode::UnknownTopicOrPartition,
                ));
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A reader of the control topic that keeps up with it.
pub struct Follow {
    consumer: BaseConsumer,
    topic: String,
}

impl Follow {
    /// The definitions written since the last call (none: a tombstone, the pipeline deleted), waiting
    /// up to `wait` for the first.
    pub fn changes(&self, wait: Duration) -> Vec<(String, Option<Definition>)> {
        let mut out = Vec::new();
        let mut wait = wait;
        while let Some(polled) = self.consumer.poll(wait) {
            wait = Duration::ZERO;
            match polled {
                Ok(m) => {
                    let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                    // A tombstone deletes the pipeline; a record that is not a definition is
                    // skipped (and stops nothing).
                    match m.payload() {
                        None => out.push((key, None)),
                        Some(v) => {
                            if let Some(d) = parse(&self.topic, v) {
                                out.push((key, Some(d)));
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!("control topic {}: {e}", self.topic),
            }
        }
        out
    }
}

/// A record's JSON; one that is not valid is skipped with a warning (nothing written by Stratus
/// is).
fn parse<T: for<'de> Deserialize<'de>>(topic: &str, value: &[u8]) -> Option<T> {
    serde_json::from_slice(value)
        .map_err(|e| tracing::warn!("topic {topic}: a record that is not Stratus's: {e}"))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pipeline file that names files above and beside it is bundled with them, and laid out
    /// again elsewhere as it was.
    #[test]
    fn a_definition_carries_the_files_it_names_and_lays_them_out_again() {
        let dir = std::env::temp_dir().join(format!("stratus-bundle-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("pipelines")).unwrap();
        std::fs::create_dir_all(dir.join("sql")).unwrap();
        std::fs::write(dir.join("sql/a.sql"), "SELECT 1").unwrap();
        std::fs::write(dir.join("pipelines/schema.json"), "{}").unwrap();
        std::fs::write(dir.join("pipelines/client.key"), "secret").unwrap();
        let yaml = "name: p\nsources:\n  s:\n    schema: schema.json\nstages:\n  a: {sql: \
                    ../sql/a.sql, note: not a file}\nmodels: {registry: s3://b/m}\nkafka:\n  \
                    properties: {ssl.key.location: client.key}\n";
        std::fs::write(dir.join("pipelines/p.yaml"), yaml).unwrap();
        let d = bundle(&dir.join("pipelines/p.yaml"), "p").unwrap();
        assert_eq!(
            d.files.keys().collect::<Vec<_>>(),
            vec!["../sql/a.sql", "schema.json"]
        );
        assert_eq!(d.text, yaml);
        let out = dir.join("out");
        let file = materialise(&d, &out).unwrap();
        let base = file.parent().unwrap();
        assert!(base.starts_with(&out));
        assert_eq!(
            std::fs::read_to_string(base.join("../sql/a.sql")).unwrap(),
            "SELECT 1"
        );
        assert_eq!(
            std::fs::read_to_string(base.join("schema.json")).unwrap(),
            "{}"
        );
        assert_eq!(std::fs::read_to_string(&file).unwrap(), yaml);
        // Nothing of a record is written outside the folder.
        for (name, key) in [("..", "a.sql"), ("p", "/etc/a.sql")] {
            let mut bad = d.clone();
            bad.name = name.to_string();
            bad.files = BTreeMap::from([(key.to_string(), "x".to_string())]);
            assert!(materialise(&bad, &out).is_err(), "{name} {key}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
