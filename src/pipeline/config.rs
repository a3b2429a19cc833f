//! What a user writes in `pipelines/*.yaml`, as serde structs. Unknown fields are errors.
//!
//! ```yaml
//! name: cloud-metrics
//! sources:
//!   metrics:                                   # the name SQL reads FROM
//!     kafka: { topic: cloud.metrics, group: stratus-cloud-metrics }
//!     # or, for backfill and tests:  file: { path: ../data/metrics.jsonl }
//!     schema: ../schemas/cloud.metrics.json   # paths are relative to this file
//!     event_time: { field: ts, max_out_of_orderness: 10s, allowed_lateness: 1m, idle_timeout: 30s }
//!     dead_letter_topic: cloud.metrics.dlq    # default: <topic>.dlq
//! stages:
//!   features_1m: { sql: ../sql/cloud_metrics_1m.sql }
//!   anomaly_1m:                                # a score stage: model + detectors per key
//!     score: { from: features_1m, model: metrics_anomaly, key: [resource_id, metric], value: mean }
//! models: { registry: ../models/registry }    # or s3://bucket/models
//! kafka:                                       # librdkafka properties, over the worker's
//!   properties:
//!     security.protocol: SASL_SSL
//!     sasl.mechanism: SCRAM-SHA-512
//!     sasl.username: stratus
//!     sasl.password: ${env:KAFKA_PASSWORD}     # a secret: only ${env:…} or ${file:…}
//! sinks:
//!   raw:      { from: metrics, delta: { table: raw_metrics, partition_by: [date] } }
//!   features: { from: features_1m, kafka: { topic: cloud.metrics.features, key: [resource_id] } }
//! ```

use serde::Deserialize;

/// A whole pipeline file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Names the pipeline in metrics, consumer groups and Delta `txn` app ids.
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    pub sources: Entries<SourceConfig>,
    #[serde(default)]
    pub stages: Entries<super::kinds::StageFields>,
    pub sinks: Entries<SinkConfig>,
    /// Delta commit policy shared by the pipeline's Delta sinks.
    #[serde(default)]
    pub commit: CommitConfig,
    /// Where score stages find their models.
    #[serde(default)]
    pub models: Option<ModelsConfig>,
    /// Settings of the pipeline's Kafka clients.
    #[serde(default)]
    pub kafka: Option<KafkaConfig>,
}

/// Settings of a pipeline's Kafka clients (see [`crate::kafka`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// librdkafka properties (`security.protocol`, `sasl.*`, `ssl.*`, timeouts), over the
    /// worker's `--kafka-config`; a secret only as `${env:NAME}` or `${file:PATH}`.
    #[serde(default)]
    pub properties: std::collections::BTreeMap<String, Scalar>,
}

/// A YAML scalar — string, number or boolean — as the text librdkafka takes.
#[derive(Debug, Clone)]
pub struct Scalar(pub String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string, a number or a boolean")
            }
            fn visit_str<E>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// The model registry score stages read.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelsConfig {
    /// A directory (relative to the pipeline file) or an `s3://` URL; `STRATUS_MODELS`
    /// overrides it.
    pub registry: String,
    /// How often a stage following a model's newest version looks for a newer one.
    #[serde(default = "default_poll")]
    pub poll: String,
}

fn default_poll() -> String {
    "10s".into()
}

/// A YAML mapping kept in file order (stages may only read earlier stages).
#[derive(Debug, Clone)]
pub struct Entries<T>(pub Vec<(String, T)>);

impl<T> Default for Entries<T> {
    fn default() -> Self {
        Entries(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Entries<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
            type Value = Entries<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a mapping of names to entries")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out: Vec<(String, T)> = Vec::new();
                while let Some(k) = map.next_key::<String>()? {
                    if out.iter().any(|(name, _)| *name == k) {
                        return Err(serde::de::Error::custom(format!("`{k}` is defined twice")));
                    }
                    let v = map.next_value()?;
                    out.push((k, v));
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

impl<T> Entries<T> {
    pub fn get(&self, name: &str) -> Option<&T> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &T)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v))
    }
}

/// Where events come from, their schema and their event-time rules.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    #[serde(default)]
    pub kafka: Option<KafkaSourceConfig>,
    #[serde(default)]
    pub file: Option<FileSourceConfig>,
    /// Path of the event schema, relative to the pipeline file.
    pub schema: String,
    pub event_time: EventTimeConfig,
    /// Topic for invalid events; default `<topic>.dlq` (Kafka) or `<file>.dlq.jsonl` (file).
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    pub topic: String,
    /// Consumer group; default `stratus-<pipeline name>`.
    #[serde(default)]
    pub group: Option<String>,
    /// The event fields the producers key the topic's records by (the partitioner hashes the
    /// key, so every event with the same values is in one partition). In a consumer group each
    /// worker runs its partitions alone: every stage that keeps state per key must key by
    /// these fields too (see `pipeline::partitioning`).
    #[serde(default)]
    pub key: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// A JSON-lines file, one event a line, relative to the pipeline file.
    pub path: String,
}

/// Event-time settings of a source. Durations are strings such as `"10s"` or `"1 minute"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventTimeConfig {
    /// The schema field holding event time (a `date-time` field).
    pub field: String,
    /// How far out of order events may arrive: the watermark trails the newest event by this.
    #[serde(default = "default_out_of_orderness")]
    pub max_out_of_orderness: String,
    /// How long after a window closes a late event still updates it.
    #[serde(default = "default_lateness")]
    pub allowed_lateness: String,
    /// A partition silent this long (processing time) stops holding the watermark back.
    #[serde(default = "default_idle")]
    pub idle_timeout: String,
}

fn default_out_of_orderness() -> String {
    "5s".into()
}
fn default_lateness() -> String {
    "0s".into()
}
fn default_idle() -> String {
    "30s".into()
}

/// Where a source's or a stage's rows go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// The source or stage whose rows this sink receives.
    pub from: String,
    #[serde(default)]
    pub delta: Option<DeltaSinkSettings>,
    #[serde(default)]
    pub kafka: Option<KafkaSinkSettings>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeltaSinkSettings {
    /// A table name under the table root (`--tables`), an absolute path, or an `s3://` URL.
    pub table: String,
    /// Partition columns; `date` is derived from the event time when the rows lack it.
    #[serde(default)]
    pub partition_by: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkSettings {
    pub topic: String,
    /// Columns whose values, joined by `|`, form the record key.
    #[serde(default)]
    pub key: Vec<String>,
    /// Columns whose values travel as record headers of the same name (routing by severity).
    #[serde(default)]
    pub headers: Vec<String>,
}

/// When Delta sinks commit: whichever limit trips first.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitConfig {
    #[serde(default = "default_flush_rows")]
    pub max_rows: usize,
    #[serde(default = "default_flush_interval")]
    pub max_interval: String,
    /// Input bytes (event payloads) per cycle: with `max_rows`, what bounds the memory a
    /// cycle's rows take while events wait (a backlog at start).
    #[serde(default = "default_flush_bytes")]
    pub max_bytes: String,
    /// Write a Delta checkpoint every this many commits of a table.
    #[serde(default = "default_checkpoint")]
    pub checkpoint_every: u64,
    /// Compact a table (bin-pack each partition's small files, as `stratus maintain` does)
    /// once this many data files were written to it since its last compaction (0: never).
    #[serde(default = "default_compact_after")]
    pub compact_after_files: usize,
    /// Vacuum each table and remove its expired log files, as `stratus maintain` does, at most
    /// once per this span of the running pipeline (`0s`: never, leave it to `stratus maintain`).
    #[serde(default = "default_vacuum_every")]
    pub vacuum_every: String,
    /// What vacuum keeps: data files no version has referred to for less than this.
    #[serde(default = "default_vacuum_retention")]
    pub vacuum_retention: String,
}

fn default_flush_rows() -> usize {
    100_000
}
fn default_flush_interval() -> String {
    "1s".into()
}
fn default_flush_bytes() -> String {
    "64MiB".into()
}
fn default_checkpoint() -> u64 {
    10
}
fn default_compact_after() -> usize {
    64
}
fn default_vacuum_every() -> String {
    "1h".into()
}
fn default_vacuum_retention() -> String {
    "7d".into()
}

impl Default for CommitConfig {
    fn default() -> Self {
        CommitConfig {
            max_rows: default_flush_rows(),
            max_interval: default_flush_interval(),
            max_bytes: default_flush_bytes(),
            checkpoint_every: default_checkpoint(),
            compact_after_files: default_compact_after(),
            vacuum_every: default_vacuum_every(),
            vacuum_retention: default_vacuum_retention(),
        }
    }
}
