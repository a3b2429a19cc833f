//! Loads a pipeline file and checks everything before anything runs.
//!
//! In: the path of `pipelines/<name>.yaml`. Out: a [`Pipeline`] — sources with compiled
//! schemas, stages with their SQL parsed, planned by DataFusion against their input's schema
//! and their output schema known, sinks resolved — or every [`Diagnostic`] found, each with
//! its file, line and a hint. Nothing connects to Kafka or storage here.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::TableReference;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::MemTable;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::DataFrame;

use super::config::{CarryConfig, KafkaConfig, PipelineConfig, Scalar, SinkConfig, SourceConfig};
use super::diagnostics::{Diagnostic, Diagnostics, Reporter};
use super::stage::{Relation, SqlStage, StageKind, StagePlan, WindowStage, relation};
use crate::source::kafka::{KafkaProperties, check_property};
use crate::sql::Functions;
use crate::validate::{EventSchema, FieldKind};
use crate::window::{CarrySpec, WINDOW_COLUMNS, parse_duration, parse_stage_sql, windowed_schema};

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
    /// The column a derived `date` partition comes from.
    pub event_time: Option<String>,
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
    /// µs.
    pub max_interval: i64,
    pub checkpoint_every: u64,
    /// The functions its SQL may call beyond Stratus's own (see [`Overrides::functions`]),
    /// `score` among them when it calls registered models.
    pub functions: Functions,
    /// The registered models its SQL calls (see `score::function`).
    pub models: Option<crate::score::function::Models>,
    /// Its Kafka clients' own properties, as written (references unresolved).
    pub kafka: KafkaProperties,
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
    /// Read these sources from JSON-lines files instead (source name, file path).
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
                    "see the field reference in src/pipeline/config.rs or an example in pipelines/"
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

        let registry = super::score::registry_location(base, config.models.as_ref());
        // The models the SQL calls, as the `score` function (checked as each stage is planned).
        let models = super::score::sql_models(&mut r, base, &config, registry.as_deref()).await;
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
            let kinds = [
                stage.sql.is_some(),
                stage.score.is_some(),
                stage.alert.is_some(),
                stage.recommend.is_some(),
                stage.forecast.is_some(),
            ];
            if kinds.iter().filter(|k| **k).count() != 1 {
                r.at(
                    &["stages", name],
                    if kinds.iter().any(|k| *k) {
                        "a stage is one of `sql`, `score`, `forecast`, `alert` or `recommend`, not several"
                    } else {
                        "the stage has none of `sql`, `score`, `forecast`, `alert` or `recommend`"
                    },
                    Some("`sql: ../sql/file.sql`, or `score: {from: …, model: …}`"),
                );
                failed.push(name);
                continue;
            }
            if stage.sql.is_none() && (stage.carry.is_some() || !stage.replace_by.is_empty()) {
                r.at(
                    &["stages", name],
                    "`carry` and `replace_by` belong to SQL window stages",
                    None,
                );
            }
            let planned = if let Some(score) = &stage.score {
                Some(
                    super::score::check_score_stage(
                        &mut r,
                        name,
                        score,
                        config.models.as_ref(),
                        registry.as_deref(),
                        &relations,
                        &failed,
                    )
                    .await,
                )
            } else if let Some(alert) = &stage.alert {
                Some(if failed.contains(&alert.from.as_str()) {
                    None
                } else {
                    super::decide::check_alert_stage(&mut r, name, alert, &relations)
                })
            } else if let Some(f) = &stage.forecast {
                Some(if failed.contains(&f.from.as_str()) {
                    None
                } else {
                    super::forecast::check_forecast_stage(
                        &mut r,
                        name,
                        f,
                        registry.as_deref(),
                        config.models.as_ref(),
                        &relations,
                    )
                    .await
                })
            } else if let Some(rec) = &stage.recommend {
                Some(if failed.contains(&rec.from.as_str()) {
                    None
                } else {
                    super::decide::check_recommend_stage(
                        &mut r,
                        base,
                        name,
                        rec,
                        registry.as_deref(),
                        config.models.as_ref(),
                        &relations,
                    )
                    .await
                })
            } else {
                None
            };
            if let Some(planned) = planned {
                match planned {
                    Some(plan) => {
                        relations.push((
                            name.to_string(),
                            Relation {
                                schema: plan.output_schema.clone(),
                                event_time: plan.output_time.clone(),
                                lateness: plan.allowed_lateness,
                            },
                        ));
                        stages.push(plan);
                    }
                    None => failed.push(name),
                }
                continue;
            }
            let Some(sql) = &stage.sql else { continue };
            let sql_file = base.join(sql);
            let sql = match std::fs::read_to_string(&sql_file) {
                Ok(s) => s,
                Err(e) => {
                    r.at(
                        &["stages", name, "sql"],
                        format!("cannot read {}: {e}", sql_file.display()),
                        Some("paths are relative to the pipeline file"),
                    );
                    failed.push(name);
                    continue;
                }
            };
            let planned = check_stage(
                &mut r, name, &sql_file, &sql, &relations, &failed, &functions,
            )
            .await;
            let planned = match (planned, &stage.carry) {
                (Some(mut plan), Some(carry)) => check_carry(&mut r, name, carry, &plan).map(|c| {
                    plan.output_schema = c.output_schema(&plan.output_schema);
                    if let StageKind::Window(w) = &mut plan.kind {
                        w.carry = Some(c);
                    }
                    plan
                }),
                (planned, _) => planned,
            };
            let planned = match planned {
                Some(plan) if !stage.replace_by.is_empty() => {
                    check_replace_by(&mut r, name, &stage.replace_by, plan)
                }
                planned => planned,
            };
            if let Some(plan) = planned {
                relations.push((
                    name.to_string(),
                    Relation {
                        schema: plan.output_schema.clone(),
                        event_time: plan.output_time.clone(),
                        lateness: plan.allowed_lateness,
                    },
                ));
                stages.push(plan);
            } else {
                failed.push(name);
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
        let max_interval = duration(
            &mut r,
            &["commit", "max_interval"],
            &config.commit.max_interval,
        );
        if config.commit.max_rows == 0 {
            r.at(&["commit", "max_rows"], "max_rows must be at least 1", None);
        }
        if r.found.is_empty() {
            Ok(Pipeline {
                name: config.name,
                file: file.to_path_buf(),
                sources,
                stages,
                sinks,
                max_rows: config.commit.max_rows,
                max_interval: max_interval.unwrap_or(1_000_000),
                checkpoint_every: config.commit.checkpoint_every,
                functions,
                models,
                kafka,
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

fn duration(r: &mut Reporter<'_>, path: &[&str], text: &str) -> Option<i64> {
    match parse_duration(text) {
        Ok(us) => Some(us),
        Err(e) => {
            r.at(
                path,
                e,
                Some("write a duration such as \"500ms\", \"10s\", \"1m\" or \"1 hour\""),
            );
            None
        }
    }
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
    let ooo = duration(
        r,
        &["sources", name, "event_time", "max_out_of_orderness"],
        &et.max_out_of_orderness,
    );
    let lateness = duration(
        r,
        &["sources", name, "event_time", "allowed_lateness"],
        &et.allowed_lateness,
    );
    let idle = duration(
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
    })
}

async fn check_stage(
    r: &mut Reporter<'_>,
    name: &str,
    sql_file: &Path,
    sql: &str,
    relations: &[(String, Relation)],
    failed: &[&str],
    functions: &Functions,
) -> Option<StagePlan> {
    let mut query = match parse_stage_sql(sql) {
        Ok(q) => q,
        Err(e) => {
            r.in_file(
                sql_file,
                e.line.map(|l| l as usize),
                e.column.map(|c| c as usize),
                e.message,
                Some("a stage is one SELECT over a source or an earlier stage"),
            );
            return None;
        }
    };
    if failed.contains(&query.input.as_str()) {
        return None;
    }
    let input = match relation(relations, &query.input) {
        Ok(input) => input,
        Err((message, hint)) => {
            let line = line_of(sql, &query.input);
            r.in_file(sql_file, line, None, format!("FROM {message}"), Some(&hint));
            return None;
        }
    };
    let mut event_time = String::new();
    let schema = if query.window.is_some() {
        match &input.event_time {
            Some(t) => event_time = t.clone(),
            None => {
                r.in_file(
                    sql_file,
                    None,
                    None,
                    format!("`{}` has no event-time column to window by", query.input),
                    Some(
                        "a windowed stage reading a stage needs that stage to select window_start",
                    ),
                );
                return None;
            }
        }
        windowed_schema(&input.schema).0
    } else {
        if let Some(t) = &input.event_time {
            event_time = t.clone();
        }
        input.schema.clone()
    };
    let ctx = crate::sql::session_context_with(functions);
    let table = match MemTable::try_new(schema.clone(), vec![vec![]]) {
        Ok(t) => t,
        Err(e) => {
            r.in_file(sql_file, None, None, e.to_string(), None);
            return None;
        }
    };
    if let Err(e) = ctx.register_table(query.input.as_str(), Arc::new(table)) {
        r.in_file(sql_file, None, None, e.to_string(), None);
        return None;
    }
    let planned = match ctx.sql(&query.sql).await {
        Ok(df) => df,
        Err(e) => {
            let message = readable(&e.strip_backtrace());
            r.in_file(
                sql_file,
                first_mentioned_line(sql, &message),
                None,
                message,
                Some(&format!(
                    "columns of `{}`: {}",
                    query.input,
                    schema
                        .fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            );
            return None;
        }
    };
    let mut out: Vec<Arc<Field>> = planned
        .schema()
        .as_arrow()
        .fields()
        .iter()
        .cloned()
        .collect();
    if query.window.is_some() {
        out.push(Arc::new(Field::new("revision", DataType::Int32, false)));
        out.push(Arc::new(Field::new("is_update", DataType::Boolean, false)));
        query.reads = columns_read(planned, &query.input);
    }
    let output_schema = Arc::new(Schema::new(out));
    let input_name = query.input.clone();
    let sql = SqlStage {
        sql_file: sql_file.to_path_buf(),
        query,
    };
    let (kind, output_time) = if sql.query.window.is_some() {
        let window = WindowStage {
            sql,
            event_time,
            carry: None,
            replace_by: Vec::new(),
        };
        let time = output_schema
            .field_with_name("window_start")
            .ok()
            .map(|_| "window_start".to_string());
        (StageKind::Window(window), time)
    } else {
        let time = output_schema
            .field_with_name(&event_time)
            .ok()
            .map(|_| event_time);
        (StageKind::Sql(sql), time)
    };
    Some(StagePlan {
        name: name.to_string(),
        input: input_name,
        input_schema: input.schema.clone(),
        side_inputs: Vec::new(),
        output_schema,
        output_time,
        allowed_lateness: input.lateness,
        kind,
    })
}

/// The columns of `table` that a planned query reads, from its optimized plan's scans (their
/// projections and pushed-down filters) over the windowed schema; `None` when a scan reads them all or the plan cannot
/// be optimized.
pub(super) fn columns_read(planned: DataFrame, table: &str) -> Option<Vec<String>> {
    let plan = planned.into_optimized_plan().ok()?;
    // The name as DataFusion resolves it (unquoted: lower case), as when it was registered.
    let table = TableReference::from(table);
    let mut reads: Vec<String> = Vec::new();
    let (mut scanned, mut all) = (false, false);
    plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && scan.table_name == table
        {
            scanned = true;
            match &scan.projection {
                Some(p) => {
                    let schema = scan.source.schema();
                    reads.extend(p.iter().map(|&i| schema.field(i).name().clone()));
                }
                None => all = true,
            }
            for f in &scan.filters {
                reads.extend(f.column_refs().into_iter().map(|c| c.name.clone()));
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .ok()?;
    // `window_start` and `window_end` are the stage's own, not its input's.
    reads.retain(|c| !WINDOW_COLUMNS.contains(&c.as_str()));
    reads.sort();
    reads.dedup();
    (scanned && !all).then_some(reads)
}

/// Checks a stage's `replace_by` columns against its input.
fn check_replace_by(
    r: &mut Reporter<'_>,
    stage: &str,
    columns: &[String],
    mut plan: StagePlan,
) -> Option<StagePlan> {
    let at = ["stages", stage, "replace_by"];
    let StageKind::Window(window) = &mut plan.kind else {
        r.at(
            &at,
            "`replace_by` needs a window stage: rows are replaced within a window",
            None,
        );
        return None;
    };
    let missing: Vec<&String> = columns
        .iter()
        .filter(|c| plan.input_schema.field_with_name(c).is_err())
        .collect();
    if !missing.is_empty() {
        let names: Vec<&str> = plan
            .input_schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        for c in missing {
            r.at(
                &at,
                format!("column `{c}` is not in `{}`", plan.input),
                Some(&format!("columns: {}", names.join(", "))),
            );
        }
        return None;
    }
    window.replace_by = columns.to_vec();
    if let Some(reads) = &mut window.sql.query.reads {
        reads.extend(columns.iter().cloned());
    }
    Some(plan)
}

/// Checks a stage's `carry` settings against its output.
fn check_carry(
    r: &mut Reporter<'_>,
    stage: &str,
    carry: &CarryConfig,
    plan: &StagePlan,
) -> Option<CarrySpec> {
    let at = |field: &'static str| ["stages", stage, "carry", field];
    let before = r.found.len();
    let StageKind::Window(window) = &plan.kind else {
        r.at(
            &["stages", stage, "carry"],
            "`carry` needs a window stage: it follows each key from window to window",
            Some("add tumble(...), hop(...) or session(...) to the stage's GROUP BY"),
        );
        return None;
    };
    let by = if carry.by.is_empty() {
        window.sql.query.keys.clone()
    } else {
        carry.by.clone()
    };
    let names: Vec<&str> = plan
        .output_schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    for k in &by {
        if plan.output_schema.field_with_name(k).is_err() {
            r.at(
                &at("by"),
                format!("key column `{k}` is not in the stage's output"),
                Some(&format!("columns: {}", names.join(", "))),
            );
        }
    }
    if carry.columns.is_empty() {
        r.at(
            &at("columns"),
            "no column to carry",
            Some("name numeric columns of the stage"),
        );
    }
    for c in &carry.columns {
        match plan.output_schema.field_with_name(c) {
            Ok(f) if f.data_type().is_numeric() => {}
            Ok(f) => r.at(
                &at("columns"),
                format!("column `{c}` is {}, not a number", f.data_type()),
                None,
            ),
            Err(_) => r.at(
                &at("columns"),
                format!("column `{c}` is not in the stage's output"),
                Some(&format!("columns: {}", names.join(", "))),
            ),
        }
    }
    if !(carry.ewma_alpha > 0.0 && carry.ewma_alpha <= 1.0) {
        r.at(
            &at("ewma_alpha"),
            format!("ewma_alpha {} is outside (0, 1]", carry.ewma_alpha),
            Some("0.3 weighs the newest window by 30 %"),
        );
    }
    let baseline = duration(r, &at("baseline"), &carry.baseline);
    if r.found.len() > before {
        return None;
    }
    Some(CarrySpec {
        by,
        columns: carry.columns.clone(),
        alpha: carry.ewma_alpha,
        baseline: baseline?,
        min_baseline: carry.min_baseline,
    })
}

/// The 1-based line where the identifier `name` first appears as a whole word in `sql`.
fn line_of(sql: &str, name: &str) -> Option<usize> {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    sql.lines()
        .position(|line| {
            line.match_indices(name).any(|(i, _)| {
                let before = line[..i].chars().next_back();
                let after = line[i + name.len()..].chars().next();
                !before.is_some_and(ident) && !after.is_some_and(ident)
            })
        })
        .map(|i| i + 1)
}

/// The line of what a DataFusion error names: the column after "No field named", else the
/// first quoted name.
fn first_mentioned_line(sql: &str, message: &str) -> Option<usize> {
    let unknown = message.split("No field named ").nth(1).and_then(|rest| {
        rest.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.'))
            .next()
            .map(|n| n.trim_end_matches('.'))
    });
    let quoted = message.split(['\'', '"', '`']).skip(1).step_by(2);
    unknown
        .into_iter()
        .chain(quoted)
        .filter_map(|name| {
            name.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.'))
                .next()
        })
        .filter_map(|name| name.rsplit('.').next())
        .filter(|name| !name.is_empty())
        .find_map(|name| line_of(sql, name))
}

/// DataFusion's planning errors, without the advice to file a bug about a user's type error.
fn readable(message: &str) -> String {
    match message.find("No function matches") {
        Some(i) => message[i..].to_string(),
        None => message.to_string(),
    }
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
    let target = match (&sink.delta, &sink.kafka) {
        (Some(d), None) => {
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
        event_time: from.event_time.clone(),
    })
}
