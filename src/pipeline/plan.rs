//! Loads a pipeline file and checks everything before anything runs.
//!
//! In: the path of `pipelines/<name>.yaml`. Out: a [`Pipeline`] — sources with compiled
//! schemas, stages with their SQL parsed, planned by DataFusion against their input's schema
//! and their output schema known, sinks resolved — or every [`Diagnostic`] found, each with
//! its file, line and a hint. Nothing connects to Kafka or storage here.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::config::{KafkaConfig, PipelineConfig, Scalar, SinkConfig, SourceConfig};
use super::kinds::StagePlan;
use crate::check::diagnostics::{Diagnostic, Diagnostics, Reporter};
use crate::check::{Checking, Relation, parsed_duration, parsed_size};
use crate::kafka::{KafkaProperties, check_property};
use crate::sink::delta::Vacuum;
use crate::sql::Functions;
use crate::validate::{EventSchema, FieldKind};

/// Where a source reads from.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceInput {
    Kafka { topic: String, group: String },
    File { path: PathBuf },
}

/// A checked source.
#[derive(Debug, Clone)]
pub struct SourcePlan {
    pub name: String,
    pub input: SourceInput,
    pub schema: Arc<EventSchema>,
    pub event_time: String,
    /// µs.
    pub max_out_of_orderness: i64,
    pub allowed_lateness: i64,
    pub idle_timeout: i64,
    pub dead_letter_topic: String,
    /// The fields the topic's records are keyed by, as declared (none for a file).
    pub key: Vec<String>,
    /// In a consumer group, the fields its records are re-keyed by, through the pipeline's
    /// repartition topic for it, when its stages keep their state by keys its own `key` does
    /// not follow (see [`super::partitioning`]); none when they follow it.
    pub repartition_by: Vec<String>,
}

impl SourcePlan {
    /// The fields its records are keyed by where its stages read them: re-keyed in a consumer
    /// group, as declared otherwise.
    pub fn group_key(&self) -> &[String] {
        if self.repartition_by.is_empty() {
            &self.key
        } else {
            &self.repartition_by
        }
    }

    /// The repartition topic of `pipeline`'s source of this name: written and read by Stratus
    /// alone, with as many partitions as the source's topic.
    pub fn repartition_topic(&self, pipeline: &str) -> String {
        format!("{pipeline}.repartition.{}", self.name)
    }
}

/// Where a sink writes.
#[derive(Debug, Clone, PartialEq)]
pub enum SinkTarget {
    Delta {
        table: String,
        partition_by: Vec<String>,
    },
    Kafka {
        topic: String,
        key: Vec<String>,
        /// Columns sent as record headers (routing, e.g. by severity).
        headers: Vec<String>,
    },
}

/// A checked sink.
#[derive(Debug, Clone)]
pub struct SinkPlan {
    pub name: String,
    pub from: String,
    pub target: SinkTarget,
    /// The column the `date` partition column is derived from, when a Delta table is
    /// partitioned by a `date` its input lacks.
    pub date_from: Option<String>,
    /// The rows it receives, as planned: its input's schema, with the derived `date` column a
    /// table partitioned by it adds.
    pub schema: arrow::datatypes::SchemaRef,
}

/// A pipeline that passed every check.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub name: String,
    pub file: PathBuf,
    pub sources: Vec<SourcePlan>,
    pub stages: Vec<StagePlan>,
    pub sinks: Vec<SinkPlan>,
    pub max_rows: usize,
    /// Input bytes per cycle.
    pub max_bytes: usize,
    /// µs.
    pub max_interval: i64,
    pub checkpoint_every: u64,
    /// Compact a table once this many files were written to it since (0: never).
    pub compact_after_files: usize,
    /// Vacuum and log cleanup of its tables from the running pipeline, if at all.
    pub vacuum: Option<Vacuum>,
    /// The functions its SQL may call beyond Stratus's own (see [`Overrides::functions`]),
    /// `score` among them when it calls registered models.
    pub functions: Functions,
    /// The registered models its SQL calls (see `score::function`).
    pub models: Option<crate::score::function::Models>,
    /// Its Kafka clients' own properties, as written (references unresolved).
    pub kafka: KafkaProperties,
    /// A backfill (some source replayed from a file, under a name of its own): it writes its
    /// Delta tables only, and its dead letters and late rows to files beside them.
    pub backfill: bool,
    /// What keeps the pipeline from running in a consumer group, where each partition of its
    /// topics runs apart (see [`super::partitioning`]): none if nothing does.
    pub group_problems: Vec<Diagnostic>,
}

impl Pipeline {
    /// Whether a source or a sink is a Kafka topic.
    pub fn reaches_kafka(&self) -> bool {
        self.sources
            .iter()
            .any(|s| matches!(s.input, SourceInput::Kafka { .. }))
            || self
                .sinks
                .iter()
                .any(|s| matches!(s.target, SinkTarget::Kafka { .. }))
    }
}

/// Changes to a pipeline file for one run, applied before it is checked: a backfill or a
/// training run of the shipped definitions.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// Run under this name instead of the file's: its own checkpoints, `txn` app ids, metrics
    /// label and default consumer groups. Needed with `replay`.
    pub name: Option<String>,
    /// Read these sources from JSON-lines files instead (source name, file path): a backfill,
    /// which needs a `name` of its own, writes its Delta tables only (its Kafka sinks are
    /// left out) and its dead letters and late rows to files beside them.
    pub replay: Vec<(String, PathBuf)>,
    /// Keep the stages up to and including this one, and only the sinks they feed.
    pub until_stage: Option<String>,
    /// Functions the stages' SQL may call beyond Stratus's own: a program's own (see
    /// [`crate::cli::main`]).
    pub functions: Functions,
}

impl Overrides {
    fn apply(&self, file: &Path, config: &mut PipelineConfig) -> Result<(), Diagnostics> {
        let fail = |message: String, hint: &str| {
            Diagnostics(vec![Diagnostic {
                file: file.to_path_buf(),
                line: None,
                column: None,
                message,
                hint: Some(hint.into()),
            }])
        };
        if !self.replay.is_empty() {
            let own = &config.name;
            match &self.name {
                Some(name) if name != own => {}
                _ => {
                    return Err(fail(
                        format!(
                            "--replay runs a backfill, which must not share the checkpoints of \
                             the pipeline `{own}` (<tables>/_stratus/{own}/)"
                        ),
                        &format!("give the backfill a name of its own: --name {own}-backfill"),
                    ));
                }
            }
            let before: Vec<String> = config.sinks.iter().map(|(n, _)| n.to_string()).collect();
            config.sinks.0.retain(|(_, sink)| sink.kafka.is_none());
            let kept: Vec<&str> = config.sinks.iter().map(|(n, _)| n).collect();
            let left: Vec<&str> = before
                .iter()
                .map(String::as_str)
                .filter(|n| !kept.contains(n))
                .collect();
            if !left.is_empty() {
                tracing::warn!(
                    "backfill: the Kafka sinks {} are left out (a backfill writes its Delta \
                     tables only)",
                    left.join(", ")
                );
            }
        }
        if let Some(name) = &self.name {
            config.name = name.clone();
        }
        for (source, path) in &self.replay {
            let Some((_, s)) = config.sources.0.iter_mut().find(|(n, _)| n == source) else {
                let known: Vec<&str> = config.sources.iter().map(|(n, _)| n).collect();
                return Err(fail(
                    format!("--replay {source}=…: the pipeline has no source `{source}`"),
                    &format!("sources: {}", known.join(", ")),
                ));
            };
            let path = std::path::absolute(path).unwrap_or_else(|_| path.clone());
            s.kafka = None;
            s.file = Some(super::config::FileSourceConfig {
                path: path.display().to_string(),
            });
        }
        if let Some(last) = &self.until_stage {
            let Some(at) = config.stages.0.iter().position(|(n, _)| n == last) else {
                let known: Vec<&str> = config.stages.iter().map(|(n, _)| n).collect();
                return Err(fail(
                    format!("--until-stage {last}: the pipeline has no stage `{last}`"),
                    &format!("stages: {}", known.join(", ")),
                ));
            };
            config.stages.0.truncate(at + 1);
            let kept: Vec<String> = config
                .sources
                .iter()
                .map(|(n, _)| n.to_string())
                .chain(config.stages.iter().map(|(n, _)| n.to_string()))
                .collect();
            config.sinks.0.retain(|(_, sink)| kept.contains(&sink.from));
        }
        Ok(())
    }
}

impl Pipeline {
    /// Reads and checks `file` with `overrides` applied.
    pub async fn load_with(file: &Path, overrides: &Overrides) -> Result<Pipeline, Diagnostics> {
        let text = read(file)?;
        Self::from_yaml_with(file, &text, overrides).await
    }

    /// Reads and checks `file`.
    pub async fn load(file: &Path) -> Result<Pipeline, Diagnostics> {
        let text = read(file)?;
        Self::from_yaml(file, &text).await
    }

    /// Checks a pipeline given as text; `file` names it and anchors its relative paths.
    pub async fn from_yaml(file: &Path, text: &str) -> Result<Pipeline, Diagnostics> {
        Self::check(file, text, None).await
    }

    /// Checks a pipeline given as text, with `overrides` applied.
    pub async fn from_yaml_with(
        file: &Path,
        text: &str,
        overrides: &Overrides,
    ) -> Result<Pipeline, Diagnostics> {
        Self::check(file, text, Some(overrides)).await
    }

    async fn check(
        file: &Path,
        text: &str,
        overrides: Option<&Overrides>,
    ) -> Result<Pipeline, Diagnostics> {
        let mut config: PipelineConfig = serde_norway::from_str(text).map_err(|e| {
            let location = e.location();
            Diagnostics(vec![Diagnostic {
                file: file.to_path_buf(),
                line: location.as_ref().map(|l| l.line()),
                column: location.as_ref().map(|l| l.column()),
                message: e.to_string(),
                hint: Some(
                    "see src/pipeline/config.rs and each stage kind's config.rs, or pipelines/"
                        .into(),
                ),
            }])
        })?;
        if let Some(o) = overrides {
            o.apply(file, &mut config)?;
        }
        let mut functions = overrides.map(|o| o.functions.clone()).unwrap_or_default();
        let base = file.parent().unwrap_or(Path::new("."));
        let mut r = Reporter::new(file, text);
        let mut relations: Vec<(String, Relation)> = Vec::new();
        // Sources and stages that failed their own checks: what reads them is not checked again.
        let mut failed: Vec<&str> = Vec::new();

        let mut sources = Vec::new();
        for (name, source) in config.sources.iter() {
            if let Some(plan) = check_source(&mut r, base, &config.name, name, source) {
                relations.push((
                    name.to_string(),
                    Relation {
                        schema: plan.schema.arrow_schema(),
                        event_time: Some(plan.event_time.clone()),
                        lateness: plan.allowed_lateness,
                    },
                ));
                sources.push(plan);
            } else {
                failed.push(name);
            }
        }
        if config.sources.0.is_empty() {
            r.at(
                &["sources"],
                "the pipeline has no source",
                Some("declare at least one Kafka topic or file under `sources`"),
            );
        }

        let registry = super::models::registry_location(base, config.models.as_ref());
        let poll = super::models::poll(&mut r, config.models.as_ref());
        // The models the SQL calls, as the `score` function (checked as each stage is planned).
        let models =
            super::models::sql_models(&mut r, base, &config, registry.as_deref(), poll).await;
        if let Some(m) = &models {
            functions = functions.with_scalar(m.function());
        }
        let mut stages = Vec::new();
        for (name, stage) in config.stages.iter() {
            if relations.iter().any(|(n, _)| n == name) {
                r.at(
                    &["stages", name],
                    format!("`{name}` is already the name of a source or stage"),
                    None,
                );
                continue;
            }
            let kind = match stage.kind() {
                Ok(kind) => kind,
                Err((message, hint)) => {
                    r.at(&["stages", name], message, hint);
                    failed.push(name);
                    continue;
                }
            };
            let mut cx = Checking {
                r: &mut r,
                base,
                relations: &relations,
                failed: &failed,
                registry: registry.as_deref(),
                poll,
            };
            match kind.check(&mut cx, &functions, name).await {
                Some(plan) => {
                    relations.push((
                        name.to_string(),
                        Relation {
                            schema: plan.output_schema.clone(),
                            event_time: plan.output_time.clone(),
                            lateness: plan.allowed_lateness,
                        },
                    ));
                    for side in &plan.side_outputs {
                        if relations.iter().any(|(n, _)| *n == side.name) {
                            r.at(
                                &["stages", name],
                                format!(
                                    "its {} output `{}` is already the name of a source or \
                                     stage",
                                    side.output, side.name
                                ),
                                None,
                            );
                            continue;
                        }
                        relations.push((
                            side.name.clone(),
                            Relation {
                                schema: side.schema.clone(),
                                event_time: side.time.clone(),
                                lateness: plan.allowed_lateness,
                            },
                        ));
                    }
                    stages.push(plan);
                }
                None => failed.push(name),
            }
        }

        let mut sinks = Vec::new();
        for (name, sink) in config.sinks.iter() {
            if failed.contains(&sink.from.as_str()) {
                continue;
            }
            if let Some(plan) = check_sink(&mut r, name, sink, &relations) {
                sinks.push(plan);
            }
        }
        if config.sinks.0.is_empty() {
            r.at(
                &["sinks"],
                "the pipeline has no sink",
                Some("add a Delta table or a Kafka topic under `sinks`"),
            );
        }

        let kafka = check_kafka(&mut r, config.kafka.as_ref());
        let max_interval = parsed_duration(
            &mut r,
            &["commit", "max_interval"],
            &config.commit.max_interval,
        );
        let max_bytes = parsed_size(&mut r, &["commit", "max_bytes"], &config.commit.max_bytes);
        let vacuum_every = parsed_duration(
            &mut r,
            &["commit", "vacuum_every"],
            &config.commit.vacuum_every,
        );
        let vacuum_retention = parsed_duration(
            &mut r,
            &["commit", "vacuum_retention"],
            &config.commit.vacuum_retention,
        );
        if config.commit.max_rows == 0 {
            r.at(&["commit", "max_rows"], "max_rows must be at least 1", None);
        }
        if r.found.is_empty() {
            let mut sources = sources;
            let group_problems = super::partitioning::problems(file, text, &mut sources, &stages);
            Ok(Pipeline {
                name: config.name,
                file: file.to_path_buf(),
                sources,
                stages,
                sinks,
                max_rows: config.commit.max_rows,
                max_bytes: max_bytes.unwrap_or(usize::MAX),
                max_interval: max_interval.unwrap_or(1_000_000),
                checkpoint_every: config.commit.checkpoint_every,
                compact_after_files: config.commit.compact_after_files,
                vacuum: match (vacuum_every, vacuum_retention) {
                    (Some(every), Some(retention)) if every > 0 => Some(Vacuum {
                        every: std::time::Duration::from_micros(every.unsigned_abs()),
                        retention: chrono::Duration::microseconds(retention),
                    }),
                    _ => None,
                },
                functions,
                models,
                kafka,
                backfill: overrides.is_some_and(|o| !o.replay.is_empty()),
                group_problems,
            })
        } else {
            Err(Diagnostics(r.found))
        }
    }
}

/// The pipeline's Kafka properties, each checked (see [`check_property`]).
fn check_kafka(r: &mut Reporter<'_>, config: Option<&KafkaConfig>) -> KafkaProperties {
    let Some(config) = config else {
        return KafkaProperties::default();
    };
    for (key, Scalar(value)) in &config.properties {
        if let Err(problem) = check_property(key, value, false) {
            r.at(
                &["kafka", "properties", key],
                problem.to_string(),
                Some("see the `kafka` section in src/pipeline/config.rs"),
            );
        }
    }
    config
        .properties
        .iter()
        .map(|(k, Scalar(v))| (k.clone(), v.clone()))
        .collect()
}

fn read(file: &Path) -> Result<String, Diagnostics> {
    std::fs::read_to_string(file).map_err(|e| {
        Diagnostics(vec![Diagnostic {
            file: file.to_path_buf(),
            line: None,
            column: None,
            message: format!("cannot read the pipeline file: {e}"),
            hint: None,
        }])
    })
}

fn check_source(
    r: &mut Reporter<'_>,
    base: &Path,
    pipeline: &str,
    name: &str,
    source: &SourceConfig,
) -> Option<SourcePlan> {
    let at = |key: &'static str| ["sources", name, key];
    let input = match (&source.kafka, &source.file) {
        (Some(k), None) => {
            if k.topic.trim().is_empty() {
                r.at(
                    &["sources", name, "kafka", "topic"],
                    "the topic name is empty",
                    None,
                );
            }
            Some(SourceInput::Kafka {
                topic: k.topic.clone(),
                group: k
                    .group
                    .clone()
                    .unwrap_or_else(|| format!("stratus-{pipeline}")),
            })
        }
        (None, Some(f)) => Some(SourceInput::File {
            path: base.join(&f.path),
        }),
        _ => {
            r.at(
                &["sources", name],
                "a source needs exactly one of `kafka` or `file`",
                None,
            );
            None
        }
    };
    let schema_file = base.join(&source.schema);
    let schema = match EventSchema::from_file(&schema_file) {
        Ok(s) => Some(Arc::new(s)),
        Err(e) => {
            r.at(
                &at("schema"),
                e.to_string(),
                Some("paths are relative to the pipeline file"),
            );
            None
        }
    };
    let et = &source.event_time;
    if let Some(s) = &schema {
        match s.fields().iter().find(|f| f.name == et.field) {
            Some(f) if f.kind == FieldKind::Timestamp => {}
            Some(_) => r.at(
                &["sources", name, "event_time", "field"],
                format!(
                    "event-time field `{}` is not a timestamp in {}",
                    et.field,
                    schema_file.display()
                ),
                Some("declare it as {\"type\": \"string\", \"format\": \"date-time\"}"),
            ),
            None => r.at(
                &["sources", name, "event_time", "field"],
                format!(
                    "event-time field `{}` is not in {}",
                    et.field,
                    schema_file.display()
                ),
                None,
            ),
        }
    }
    let ooo = parsed_duration(
        r,
        &["sources", name, "event_time", "max_out_of_orderness"],
        &et.max_out_of_orderness,
    );
    let lateness = parsed_duration(
        r,
        &["sources", name, "event_time", "allowed_lateness"],
        &et.allowed_lateness,
    );
    let idle = parsed_duration(
        r,
        &["sources", name, "event_time", "idle_timeout"],
        &et.idle_timeout,
    );
    if idle == Some(0) {
        r.at(
            &["sources", name, "event_time", "idle_timeout"],
            "idle_timeout must be positive",
            None,
        );
    }
    let key = source
        .kafka
        .as_ref()
        .map(|k| k.key.clone())
        .unwrap_or_default();
    if let Some(s) = &schema {
        for field in key
            .iter()
            .filter(|k| !s.fields().iter().any(|f| &f.name == *k))
        {
            r.at(
                &["sources", name, "kafka", "key"],
                format!("key field `{field}` is not in {}", schema_file.display()),
                Some("name the event fields the producers key the topic's records by"),
            );
        }
    }
    let dead_letter_topic = source
        .dead_letter_topic
        .clone()
        .unwrap_or_else(|| match &input {
            Some(SourceInput::Kafka { topic, .. }) => format!("{topic}.dlq"),
            _ => format!("{name}.dlq"),
        });
    Some(SourcePlan {
        name: name.to_string(),
        input: input?,
        schema: schema?,
        event_time: et.field.clone(),
        max_out_of_orderness: ooo?,
        allowed_lateness: lateness?,
        idle_timeout: idle?,
        dead_letter_topic,
        key,
        repartition_by: Vec::new(),
    })
}

fn check_sink(
    r: &mut Reporter<'_>,
    name: &str,
    sink: &SinkConfig,
    relations: &[(String, Relation)],
) -> Option<SinkPlan> {
    let Some((_, from)) = relations.iter().find(|(n, _)| *n == sink.from) else {
        let known: Vec<&str> = relations.iter().map(|(n, _)| n.as_str()).collect();
        r.at(
            &["sinks", name, "from"],
            format!("`{}` is not a source or stage", sink.from),
            Some(&format!("sources and stages: {}", known.join(", "))),
        );
        return None;
    };
    let has = |c: &str| from.schema.field_with_name(c).is_ok();
    let columns = || {
        from.schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut schema = from.schema.clone();
    let mut date_from = None;
    let target = match (&sink.delta, &sink.kafka) {
        (Some(d), None) => {
            if let Some(ts) = &from.event_time
                && d.partition_by.iter().any(|p| p == "date")
                && !has("date")
            {
                schema = crate::sink::delta::with_date_field(&schema);
                date_from = Some(ts.clone());
            }
            for p in &d.partition_by {
                let derived_date = p == "date" && from.event_time.is_some();
                if !(has(p) || derived_date) {
                    r.at(
                        &["sinks", name, "delta", "partition_by"],
                        format!("partition column `{p}` is not in `{}`", sink.from),
                        Some(&format!("columns: {}", columns())),
                    );
                }
            }
            if d.table.trim().is_empty() {
                r.at(
                    &["sinks", name, "delta", "table"],
                    "the table location is empty",
                    None,
                );
            }
            SinkTarget::Delta {
                table: d.table.clone(),
                partition_by: d.partition_by.clone(),
            }
        }
        (None, Some(k)) => {
            for (field, cols) in [("key", &k.key), ("headers", &k.headers)] {
                for c in cols {
                    if !has(c) {
                        r.at(
                            &["sinks", name, "kafka", field],
                            format!("{field} column `{c}` is not in `{}`", sink.from),
                            Some(&format!("columns: {}", columns())),
                        );
                    }
                }
            }
            SinkTarget::Kafka {
                topic: k.topic.clone(),
                key: k.key.clone(),
                headers: k.headers.clone(),
            }
        }
        _ => {
            r.at(
                &["sinks", name],
                "a sink needs exactly one of `delta` or `kafka`",
                None,
            );
            return None;
        }
    };
    Some(SinkPlan {
        name: name.to_string(),
        from: sink.from.clone(),
        target,
        date_from,
        schema,
    })
}
