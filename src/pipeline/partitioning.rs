//! Whether a pipeline's partitions can run apart, as the workers of a consumer group run them.
//!
//! In: a checked pipeline's sources and stages, and its file. Out: what keeps it from running
//! in a consumer group, each at its file and line (none if nothing does), and for each source
//! the fields its records are re-keyed by, if they must be. A worker runs each partition of the
//! pipeline's topics alone (see `crate::cluster`), so a stage that keeps state per key sees
//! every row of a key only if the records are keyed by some of its key columns: the fields its
//! source declares as `key`, which must be among each of the stage's key columns (followed by
//! name: a stage that renames a key column is reported). When they are not (or none are
//! declared), the source is re-keyed, as Kafka Streams does, through a repartition topic keyed
//! by the event fields that are among every such stage's key columns (see
//! `crate::source::repartition`); with no such field, the pipeline cannot run in a group. A
//! stage with one state over every row needs every partition in one place.
use std::path::Path;

use super::kinds::{StagePlan, StateKeys};
use super::plan::{SourceInput, SourcePlan};
use crate::check::diagnostics::{Diagnostic, Reporter};
use crate::validate::FieldKind;

/// What keeps the pipeline of `sources` and `stages` (checked, from `file` holding `text`)
/// from running in a consumer group. Sets each Kafka source's `repartition_by`.
pub fn problems(
    file: &Path,
    text: &str,
    sources: &mut [SourcePlan],
    stages: &[StagePlan],
) -> Vec<Diagnostic> {
    let mut r = Reporter::new(file, text);
    for source in sources.iter_mut() {
        if !matches!(source.input, SourceInput::Kafka { .. }) {
            continue;
        }
        let mut keyed: Vec<(&str, Vec<String>)> = Vec::new();
        for stage in stages.iter().filter(|s| descends(s, &source.name, stages)) {
            match stage.state_keys() {
                StateKeys::Stateless => {}
                StateKeys::Whole => r.at(
                    &["stages", &stage.name],
                    format!(
                        "stage `{}` keeps one state over every row: in a consumer group each \
                         worker sees only its own partitions of source `{}`",
                        stage.name, source.name
                    ),
                    Some("run the pipeline as one process (stratus run without --cluster)"),
                ),
                StateKeys::By(lists) => {
                    keyed.extend(lists.into_iter().map(|k| (stage.name.as_str(), k)));
                }
            }
        }
        let follows = |key: &[String]| {
            !key.is_empty() && keyed.iter().all(|(_, k)| key.iter().all(|f| k.contains(f)))
        };
        if keyed.is_empty() || follows(&source.key) {
            continue;
        }
        // The event fields every keyed stage keeps its state by: records keyed by them bring
        // each key's rows to one partition.
        let by: Vec<String> = source
            .schema
            .fields()
            .iter()
            .filter(|f| matches!(f.kind, FieldKind::String | FieldKind::Integer))
            .map(|f| f.name.clone())
            .filter(|f| keyed.iter().all(|(_, k)| k.contains(f)))
            .collect();
        if follows(&by) {
            source.repartition_by = by;
            continue;
        }
        let mut stages: Vec<&str> = keyed.iter().map(|(s, _)| *s).collect();
        stages.dedup();
        r.at(
            &["sources", &source.name, "kafka"],
            format!(
                "source `{}`'s stage(s) {} keep state per key, and no field of its events (a \
                 string or integer) is among the key columns of them all: its records cannot \
                 be re-keyed so that each key's rows are in one partition of a consumer group",
                source.name,
                stages.join(", ")
            ),
            Some(
                "give those stages a common key column taken from an event field as it is, or \
                 run the pipeline as one process",
            ),
        );
    }
    feedback_problems(&mut r, sources, stages);
    r.found
}

/// An alert stage's verdicts are matched to the alerts its worker opened, so each must be in
/// the partition of its alert's resource: keyed by `resource` in a topic read beside a source
/// keyed by the alert's resource column alone (a worker reads partition N of each topic).
fn feedback_problems(r: &mut Reporter<'_>, sources: &[SourcePlan], stages: &[StagePlan]) {
    let kafka = |s: &&SourcePlan| matches!(s.input, SourceInput::Kafka { .. });
    for stage in stages {
        let Some((from, resource)) = stage.feedback() else {
            continue;
        };
        let Some(feedback) = sources.iter().filter(kafka).find(|s| s.name == from) else {
            continue;
        };
        let alerts_from: Vec<&SourcePlan> = sources
            .iter()
            .filter(kafka)
            .filter(|s| descends(stage, &s.name, stages))
            .collect();
        if feedback.group_key() == ["resource"]
            && alerts_from.iter().all(|s| s.group_key() == [resource])
        {
            continue;
        }
        r.at(
            &["stages", &stage.name, "alert", "feedback"],
            format!(
                "stage `{}` matches verdicts to the alerts its worker opened: in a consumer \
                 group source `{from}` must be keyed by the alert's `resource`, and the \
                 stage's source ({}) by `{resource}` alone",
                stage.name,
                alerts_from
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Some(
                "produce each verdict keyed by its alert's `resource`, to a topic with as many \
                 partitions as the source's, and declare `key: [resource]`; or run the \
                 pipeline as one process",
            ),
        );
    }
}

/// Whether `stage` reads `source`, directly or through earlier stages (not counting an alert
/// stage's feedback, which [`feedback_problems`] checks, nor rows a worker writes about its
/// own stream, which are kept apart per shard).
fn descends(stage: &StagePlan, source: &str, stages: &[StagePlan]) -> bool {
    let feedback = stage.feedback().map(|(from, _)| from);
    std::iter::once(&stage.input)
        .chain(
            stage
                .side_inputs
                .iter()
                .filter(|s| Some(s.as_str()) != feedback),
        )
        .any(|input| {
            let per_worker = |s: &StagePlan| {
                s.side_outputs
                    .iter()
                    .any(|o| &o.name == input && o.per_worker)
            };
            input == source
                || stages
                    .iter()
                    .find(|s| &s.name == input || s.side_outputs.iter().any(|o| &o.name == input))
                    .is_some_and(|s| !per_worker(s) && descends(s, source, stages))
        })
}
