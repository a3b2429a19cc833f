//! A stage's plan turned into its operator: the one place that names every kind of stage.
//!
//! In: a checked [`StagePlan`] (and the pipeline it belongs to, for a window stage reading
//! another). Out: the stage's [`Operator`], opened (models loaded, SQL planned) and empty; the
//! run loop restores its checkpointed state.

use std::collections::HashMap;

use crate::decide::stage::{AlertOperator, RightsizeOperator, SpotOperator};
use crate::forecast::stage::ForecastOperator;
use crate::operator::{Chain, Operator, Result};
use crate::pipeline::{Pipeline, StageKind, StagePlan, WindowStage};
use crate::score::function::{self, Following};
use crate::score::stage::ScoreOperator;
use crate::sql::stage::SqlOperator;
use crate::window::carry::CARRY_SUFFIXES;
use crate::window::{CarryOperator, WindowOperator};

/// Opens `plan`'s operator. `storage_options` reach a model registry on S3.
pub async fn build(
    pipeline: &Pipeline,
    plan: &StagePlan,
    storage_options: &HashMap<String, String>,
) -> Result<Box<dyn Operator>> {
    let op: Box<dyn Operator> = match &plan.kind {
        StageKind::Sql(s) => {
            let schema = plan.input_schema.clone();
            let functions = &pipeline.functions;
            Box::new(SqlOperator::open(functions, &plan.input, schema, &s.query.sql).await?)
        }
        StageKind::Window(w) => window(pipeline, plan, w).await?,
        StageKind::Score(spec) => Box::new(
            ScoreOperator::open(spec.clone(), plan.input_schema.clone(), storage_options).await?,
        ),
        StageKind::Forecast(spec) => {
            Box::new(ForecastOperator::open(spec.clone(), storage_options)?)
        }
        StageKind::Alert(spec) => Box::new(AlertOperator::new(spec.clone())),
        StageKind::Spot(spec) => Box::new(SpotOperator::open(spec.clone(), storage_options)?),
        StageKind::Rightsizing(spec) => Box::new(RightsizeOperator::new(spec.clone())),
    };
    // A stage whose SQL calls registered models follows their newer versions.
    let calls_models = plan
        .sql()
        .is_some_and(|s| !function::called(&s.query.sql).is_empty());
    Ok(match &pipeline.models {
        Some(models) if calls_models => Box::new(Following::new(op, models.clone())),
        _ => op,
    })
}

/// A window stage, followed by its carried features if it has any.
async fn window(
    pipeline: &Pipeline,
    plan: &StagePlan,
    w: &WindowStage,
) -> Result<Box<dyn Operator>> {
    // A window stage reading another takes only the latest revision of each of its results.
    let upstream = pipeline
        .stages
        .iter()
        .filter(|s| s.name == plan.input)
        .find_map(|s| match &s.kind {
            StageKind::Window(up) => {
                let q = &up.sql.query;
                let mut keys = q.output_keys.clone().unwrap_or(q.keys.clone());
                keys.push("window_start".into());
                Some(keys)
            }
            _ => None,
        });
    let mut op = WindowOperator::new(
        w.sql.query.clone(),
        &w.event_time,
        plan.allowed_lateness,
        plan.input_schema.clone(),
        crate::sql::session_context_with(&pipeline.functions),
        upstream,
    )
    .and_then(|op| op.with_replace_by(&w.replace_by))?;
    op.compile().await?;
    let Some(spec) = &w.carry else {
        return Ok(Box::new(op));
    };
    // The carry's input: the stage's output without the carried columns.
    let mut fields: Vec<_> = plan.output_schema.fields().iter().cloned().collect();
    fields.truncate(fields.len() - spec.columns.len() * CARRY_SUFFIXES.len());
    let carry = CarryOperator::new(spec.clone(), &arrow::datatypes::Schema::new(fields))?;
    Ok(Box::new(Chain::new(op, carry)))
}
