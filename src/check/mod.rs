//! Checking a pipeline before it runs, below every stage kind: what each kind's check reads
//! (`Checking`: the file's [`diagnostics`] reporter, the relations a stage may read, the
//! model registry) and gives ([`Planned`]: its input, schemas and what it does),
//! and the column and duration checks they share. Each kind's check is in the module of its
//! algorithm (`window::config`, `score::config`, `forecast::config`,
//! `decide::config`); `pipeline::kinds` names them all and `pipeline::plan` runs them.

pub mod diagnostics;

use std::path::Path;
use std::time::Duration;

use arrow::datatypes::{DataType, Schema, SchemaRef};

use crate::duration::parse_duration;
use diagnostics::Reporter;

/// What a stage's check reads: the file's reporter, where relative paths start, the sources and
/// earlier stages it may read (and those that failed their own checks, whose readers are not
/// checked again), and the pipeline's model registry.
pub(crate) struct Checking<'a, 'r> {
    pub r: &'a mut Reporter<'r>,
    pub base: &'a Path,
    pub relations: &'a [(String, Relation)],
    pub failed: &'a [&'a str],
    /// The model registry's location, if the pipeline has one.
    pub registry: Option<&'a str>,
    /// How often a stage following a model's newest version looks for a newer one.
    pub poll: Duration,
}

/// A checked stage: what it reads and gives, and what it does (`K`: a kind's own spec as its
/// check gives it, or the [`StageKind`](crate::pipeline::StageKind) of a
/// [`StagePlan`](crate::pipeline::StagePlan)).
#[derive(Debug, Clone)]
pub struct Planned<K> {
    pub name: String,
    /// The source or earlier stage it reads.
    pub input: String,
    pub input_schema: SchemaRef,
    /// Earlier stages it reads beside its input, whose rows update its state (a rightsizing
    /// stage's demand forecasts); see `Operator::process_side`.
    pub side_inputs: Vec<String>,
    /// Relations it writes beside its rows (a forecast stage's accuracy rows), which later
    /// stages and sinks read by name.
    pub side_outputs: Vec<SideOutput>,
    pub output_schema: SchemaRef,
    /// The output's event-time column, if it has one: what a later window stage windows by.
    pub output_time: Option<String>,
    /// Allowed lateness of the source the stage descends from, µs.
    pub allowed_lateness: i64,
    pub kind: K,
}

impl<K> Planned<K> {
    /// The same plan, its kind turned into another form.
    pub fn map<L>(self, f: impl FnOnce(K) -> L) -> Planned<L> {
        Planned {
            name: self.name,
            input: self.input,
            input_schema: self.input_schema,
            side_inputs: self.side_inputs,
            side_outputs: self.side_outputs,
            output_schema: self.output_schema,
            output_time: self.output_time,
            allowed_lateness: self.allowed_lateness,
            kind: f(self.kind),
        }
    }
}

/// A relation a stage writes beside its rows: `output` is the operator's name for it (see
/// `Collector::side`), `name` the pipeline's.
#[derive(Debug, Clone)]
pub struct SideOutput {
    pub name: String,
    pub output: &'static str,
    pub schema: SchemaRef,
    /// Its event-time column.
    pub time: Option<String>,
    /// Rows about the stream a worker sees (its models' health), not about the keys in it: under
    /// workers, each shard's own, told apart by a `scope` column; what reads them keeps its
    /// state per shard, whatever the source's key.
    pub per_worker: bool,
}

/// A relation SQL can read: a source or an earlier stage.
pub(crate) struct Relation {
    pub schema: SchemaRef,
    pub event_time: Option<String>,
    pub lateness: i64,
}

/// The relation `name` among `relations`, or the message and hint that say no source or
/// earlier stage has that name, and which do.
pub(crate) fn relation<'r>(
    relations: &'r [(String, Relation)],
    name: &str,
) -> Result<&'r Relation, (String, String)> {
    relations
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, r)| r)
        .ok_or_else(|| {
            let known: Vec<&str> = relations.iter().map(|(n, _)| n.as_str()).collect();
            (
                format!("`{name}`: no source or earlier stage has that name"),
                format!("readable here: {}", known.join(", ")),
            )
        })
}

/// The input relation `from`, or a diagnostic at `path`.
pub(crate) fn input<'r>(
    r: &mut Reporter<'_>,
    path: &[&str],
    from: &str,
    relations: &'r [(String, Relation)],
) -> Option<&'r Relation> {
    match relation(relations, from) {
        Ok(rel) => Some(rel),
        Err((message, hint)) => {
            r.at(path, message, Some(&hint));
            None
        }
    }
}

/// Reports each of `columns` missing from `schema`, or not numeric when `numeric`.
pub(crate) fn need_columns(
    r: &mut Reporter<'_>,
    path: &[&str],
    schema: &Schema,
    from: &str,
    columns: &[&str],
    kind: Option<fn(&DataType) -> bool>,
    what: &str,
) {
    for c in columns {
        match schema.field_with_name(c) {
            Ok(f) if kind.is_none_or(|k| k(f.data_type())) => {}
            Ok(f) => r.at(
                path,
                format!("`{c}` is {}, not {what}", f.data_type()),
                None,
            ),
            Err(_) => {
                let all: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                r.at(
                    path,
                    format!("column `{c}` is not in `{from}`"),
                    Some(&format!("columns of `{from}`: {}", all.join(", "))),
                )
            }
        }
    }
}

/// `text` as a duration, µs, or `None` when it does not parse (reported at `path`; the
/// message says how to write one).
pub(crate) fn parsed_duration(r: &mut Reporter<'_>, path: &[&str], text: &str) -> Option<i64> {
    parse_duration(text).map_err(|e| r.at(path, e, None)).ok()
}

/// A size as written at `path`, in bytes; none (reported) when it does not parse.
pub(crate) fn parsed_size(r: &mut Reporter<'_>, path: &[&str], text: &str) -> Option<usize> {
    crate::size::parse_size(text)
        .map_err(|e| r.at(path, e, None))
        .ok()
}

/// As [`parsed_duration`], 0 when it does not parse: for a check that gives no plan once it
/// has reported anything.
pub(crate) fn duration(r: &mut Reporter<'_>, path: &[&str], text: &str) -> i64 {
    parsed_duration(r, path, text).unwrap_or(0)
}

pub(crate) fn is_timestamp(t: &DataType) -> bool {
    matches!(t, DataType::Timestamp(..))
}

/// A decision or forecast stage's plan: its rows' event time is their `ts`.
pub(crate) fn decision_plan<K>(
    name: &str,
    from: &str,
    input: SchemaRef,
    output: SchemaRef,
    lateness: i64,
    kind: K,
) -> Planned<K> {
    Planned {
        name: name.to_string(),
        input: from.to_string(),
        input_schema: input,
        side_inputs: Vec::new(),
        side_outputs: Vec::new(),
        output_time: output.field_with_name("ts").ok().map(|f| f.name().clone()),
        output_schema: output,
        allowed_lateness: lateness,
        kind,
    }
}
