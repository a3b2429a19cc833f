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
    pub stages: Entries<StageConfig>,
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

/// Settings of a pipeline's Kafka clients (see [`crate::source::kafka`]).
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

/// A stage: SQL, or a score stage.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    /// Path of the SQL file, relative to the pipeline file.
    #[serde(default)]
    pub sql: Option<String>,
    /// A model and streaming detectors applied to an earlier stage's rows.
    #[serde(default)]
    pub score: Option<ScoreStageConfig>,
    /// The alert policy over a score stage's rows (see `decide::alert`).
    #[serde(default)]
    pub alert: Option<AlertStageConfig>,
    /// Recommendations from spot prices or utilisation (see `decide`).
    #[serde(default)]
    pub recommend: Option<RecommendStageConfig>,
    /// Forecasts with prediction intervals from a registered forecast model.
    #[serde(default)]
    pub forecast: Option<ForecastStageConfig>,
    /// Features carried across a window stage's windows, per key.
    #[serde(default)]
    pub carry: Option<CarryConfig>,
    /// Input columns identifying a row that a later one replaces (a restated line item): in
    /// each window only the last row to arrive with those values counts. Window stages only.
    #[serde(default)]
    pub replace_by: Vec<String>,
}

/// A score stage (see `score::stage`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreStageConfig {
    /// The stage (or source) whose rows are scored.
    pub from: String,
    /// `name` (the newest version, followed as new ones are registered) or `name@version`.
    #[serde(default)]
    pub model: Option<String>,
    /// A candidate scored beside the model and written, never acted on.
    #[serde(default)]
    pub shadow: Option<String>,
    /// Columns identifying whose history the detectors follow.
    pub key: Vec<String>,
    /// The row's event time (default `window_end`).
    #[serde(default = "default_score_time")]
    pub time: String,
    /// The numeric column the detectors watch (needed by every detector but `model`).
    #[serde(default)]
    pub value: Option<String>,
    /// Detectors and weights; default: the model alone, or the default ensemble (the value,
    /// the mean of its last 5 and the same time of the last 3 days), plus the model if set.
    #[serde(default)]
    pub detectors: Option<Vec<crate::score::detect::DetectorSpec>>,
    /// How the ensemble's deviation is judged against each key's own history, and how long an
    /// alarm silences the key (default: the 95th percentile of the last 2,000 deviations,
    /// alarm at 6σ, rest of 100 values).
    #[serde(default)]
    pub calibration: Option<crate::score::detect::CalibrationSpec>,
}

fn default_score_time() -> String {
    "window_end".into()
}

/// A forecast stage (see `forecast::stage`): per key, from each hour, the quantiles of the value
/// `horizons` ahead.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForecastStageConfig {
    /// An hourly stage.
    pub from: String,
    /// A forecast model: `name` (the newest version, followed) or `name@version`.
    pub model: String,
    /// Columns identifying a series.
    pub key: Vec<String>,
    /// The hour's start (default `window_start`).
    #[serde(default = "default_forecast_time")]
    pub time: String,
    /// The numeric column forecast.
    pub value: String,
    #[serde(default = "default_horizons")]
    pub horizons: Vec<String>,
    /// History a series needs before it is forecast.
    #[serde(default = "default_min_history")]
    pub min_history: String,
}

fn default_forecast_time() -> String {
    "window_start".into()
}
fn default_horizons() -> Vec<String> {
    vec!["1h".into(), "6h".into(), "24h".into()]
}

/// An alert stage: severity, dedup, suppression and correlation over scored rows.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertStageConfig {
    /// A score stage.
    pub from: String,
    /// The alerts' `kind`, e.g. `metric_anomaly` or `cost_anomaly`.
    pub kind: String,
    /// Columns identifying what an alert is about (its dedup key).
    pub key: Vec<String>,
    /// The column naming the resource (default: the first key column).
    #[serde(default)]
    pub resource: Option<String>,
    #[serde(default = "default_alert_score")]
    pub score: String,
    /// A numeric column with the cost impact in USD (e.g. a carried `cost_excess`).
    #[serde(default)]
    pub impact: Option<String>,
    /// Columns copied into each alert's `labels` (the key columns always are).
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default)]
    pub severity: SeverityConfig,
    #[serde(default = "default_resolve_after")]
    pub resolve_after: String,
    #[serde(default = "default_cooldown")]
    pub cooldown: String,
    #[serde(default)]
    pub flapping: Option<FlappingConfig>,
    #[serde(default)]
    pub maintenance: Vec<MaintenanceConfig>,
    #[serde(default)]
    pub correlate: Option<CorrelateConfig>,
}

fn default_alert_score() -> String {
    "anomaly_score".into()
}
fn default_resolve_after() -> String {
    "15m".into()
}
fn default_cooldown() -> String {
    "1h".into()
}

/// Score thresholds and what raises a severity.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeverityConfig {
    #[serde(default = "info_at")]
    pub info: f64,
    #[serde(default = "warning_at")]
    pub warning: f64,
    #[serde(default = "critical_at")]
    pub critical: f64,
    /// An anomaly lasting this long is raised one level.
    #[serde(default)]
    pub escalate_after: Option<String>,
    /// Impact (USD) that makes an alert at least a warning / critical.
    #[serde(default)]
    pub impact_warning: Option<f64>,
    #[serde(default)]
    pub impact_critical: Option<f64>,
}

fn info_at() -> f64 {
    0.5
}
fn warning_at() -> f64 {
    0.7
}
fn critical_at() -> f64 {
    0.9
}

impl Default for SeverityConfig {
    fn default() -> Self {
        SeverityConfig {
            info: info_at(),
            warning: warning_at(),
            critical: critical_at(),
            escalate_after: None,
            impact_warning: None,
            impact_critical: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlappingConfig {
    pub window: String,
    pub max_firings: usize,
}

/// A maintenance window: `start`/`end` (RFC 3339) once, or `weekly`; `match` narrows it to
/// label values.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceConfig {
    #[serde(default)]
    pub start: Option<String>,
    #[serde(default)]
    pub end: Option<String>,
    #[serde(default)]
    pub weekly: Option<WeeklyConfig>,
    #[serde(default, rename = "match")]
    pub matches: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeeklyConfig {
    /// `mon` … `sun`.
    pub days: Vec<String>,
    /// `HH:MM` UTC, start inclusive, end exclusive.
    pub from: String,
    pub to: String,
}

/// Which shared label values correlate alerts, and within how long.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorrelateConfig {
    /// Each entry a column or a list of columns; sharing any one entry's values correlates.
    pub by: Vec<ColumnSet>,
    pub window: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ColumnSet {
    One(String),
    All(Vec<String>),
}

impl ColumnSet {
    pub fn columns(&self) -> Vec<String> {
        match self {
            ColumnSet::One(c) => vec![c.clone()],
            ColumnSet::All(c) => c.clone(),
        }
    }
}

/// A recommend stage.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecommendStageConfig {
    pub from: String,
    /// `spot` (spot / on-demand and instance mix per workload, from hourly spot prices:
    /// columns `instance_type`, `az`, `window_start` and `price`) or `rightsizing` (per
    /// resource, from utilisation windows: `resource_id`, `metric`, `instance_type`,
    /// `region`, `window_end` and `value`).
    pub kind: String,
    /// The instance catalogue CSV, relative to the pipeline file.
    pub catalogue: String,
    /// spot: the workloads file (YAML list), relative to the pipeline file.
    #[serde(default)]
    pub workloads: Option<String>,
    /// spot: the spot price forecast model; without one, each pool's own history of changes.
    #[serde(default)]
    pub model: Option<String>,
    /// spot: the hourly price column.
    #[serde(default = "default_price")]
    pub price: String,
    #[serde(default)]
    pub weights: Option<crate::decide::mix::Weights>,
    #[serde(default)]
    pub interruption: Option<crate::decide::spot::InterruptionProxy>,
    #[serde(default = "default_paths")]
    pub paths: usize,
    /// History needed before recommending (spot: hourly prices; rightsizing: utilisation).
    #[serde(default = "default_min_history")]
    pub min_history: String,
    /// rightsizing: the utilisation column (percent) and the metrics it is read from.
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default = "default_cpu_metric")]
    pub cpu_metric: String,
    #[serde(default = "default_memory_metric")]
    pub memory_metric: String,
    /// rightsizing: the trailing span and how often a resource is reassessed.
    #[serde(default = "default_span")]
    pub span: String,
    #[serde(default = "default_every")]
    pub every: String,
    #[serde(default)]
    pub headroom: Option<crate::decide::rightsize::Headroom>,
    /// rightsizing: an earlier forecast stage of each resource's CPU (key `resource_id`); a
    /// resource it forecasts is sized to hold the 95th percentile of its forecast for the hours
    /// ahead instead of its past p95.
    #[serde(default)]
    pub forecast: Option<String>,
}

fn default_price() -> String {
    "mean_price".into()
}
fn default_paths() -> usize {
    2000
}
fn default_min_history() -> String {
    "48h".into()
}
fn default_cpu_metric() -> String {
    "CPUUtilization".into()
}
fn default_memory_metric() -> String {
    "MemoryUtilization".into()
}
fn default_span() -> String {
    "7d".into()
}
fn default_every() -> String {
    "1h".into()
}

/// Cross-window features of a window stage: for each column `c`, `c_ewma`, `c_delta`, `c_roc`
/// and `c_robust_z` are appended to the stage's rows.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CarryConfig {
    /// The key columns (default: the stage's GROUP BY columns).
    #[serde(default)]
    pub by: Vec<String>,
    /// Numeric columns of the stage's output.
    pub columns: Vec<String>,
    /// EWMA smoothing factor in (0, 1]: the weight of the newest window.
    #[serde(default = "default_alpha")]
    pub ewma_alpha: f64,
    /// Trailing span of the robust z-score's baseline.
    #[serde(default = "default_baseline")]
    pub baseline: String,
    /// Fewest earlier windows in the baseline before a z-score is given.
    #[serde(default = "default_min_baseline")]
    pub min_baseline: usize,
}

fn default_alpha() -> f64 {
    0.3
}
fn default_baseline() -> String {
    "24h".into()
}
fn default_min_baseline() -> usize {
    5
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
    /// Write a Delta checkpoint every this many commits of a table.
    #[serde(default = "default_checkpoint")]
    pub checkpoint_every: u64,
}

fn default_flush_rows() -> usize {
    100_000
}
fn default_flush_interval() -> String {
    "1s".into()
}
fn default_checkpoint() -> u64 {
    10
}

impl Default for CommitConfig {
    fn default() -> Self {
        CommitConfig {
            max_rows: default_flush_rows(),
            max_interval: default_flush_interval(),
            checkpoint_every: default_checkpoint(),
        }
    }
}
