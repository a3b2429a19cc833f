//! The one place that names every kind of stage, besides `job::build`: a stage as written
//! ([`StageFields`]), the one kind it is ([`StageConfig`]), the dispatch to its check (in the
//! module of its algorithm: `window::config`, `score::config`, `forecast::config`,
//! `decide::config`), and what it does once checked ([`StageKind`] of a [`StagePlan`]), which
//! `job::build` turns into the stage's operator. A new kind adds its settings, check and
//! operator in a module of its own, a line to each list here, and an arm to `job::build`.

use serde::Deserialize;

use crate::check::{Checking, Planned};
use crate::decide::config::{AlertStageConfig, Recommend, RecommendStageConfig};
use crate::decide::stage::{AlertSpec, RightsizeSpec, SpotSpec};
use crate::forecast::config::ForecastStageConfig;
use crate::forecast::stage::ForecastSpec;
use crate::score::config::ScoreStageConfig;
use crate::score::stage::ScoreSpec;
use crate::sql::Functions;
use crate::window::config::{CarryConfig, SqlKind, SqlStage, SqlStageConfig, WindowStage};
use crate::{decide, forecast, score, window};

/// A stage as written in the pipeline file: exactly one of `sql` (with a window stage's
/// `carry` and `replace_by`), `score`, `forecast`, `alert` or `recommend`. Read as a struct so
/// that a stage of several kinds, or none, is reported with every other problem of the file;
/// [`StageFields::kind`] gives the one it is.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageFields {
    /// Path of the SQL file, relative to the pipeline file.
    #[serde(default)]
    pub sql: Option<String>,
    /// Features carried across a window stage's windows, per key.
    #[serde(default)]
    pub carry: Option<CarryConfig>,
    /// Input columns identifying a row that a later one replaces (a restated line item): in
    /// each window only the last row to arrive with those values counts. Window stages only.
    #[serde(default)]
    pub replace_by: Vec<String>,
    /// A model and streaming detectors applied to an earlier stage's rows.
    #[serde(default)]
    pub score: Option<ScoreStageConfig>,
    /// Forecasts with prediction intervals from a registered forecast model.
    #[serde(default)]
    pub forecast: Option<ForecastStageConfig>,
    /// The alert policy over a score stage's rows (see `decide::alert`).
    #[serde(default)]
    pub alert: Option<AlertStageConfig>,
    /// Recommendations from spot prices or utilisation (see `decide`).
    #[serde(default)]
    pub recommend: Option<RecommendStageConfig>,
}

/// The one kind a stage is, with its settings.
#[derive(Debug, Clone)]
pub enum StageConfig {
    Sql(SqlStageConfig),
    Score(ScoreStageConfig),
    Forecast(ForecastStageConfig),
    Alert(AlertStageConfig),
    Recommend(RecommendStageConfig),
}

const KINDS: &str = "`sql`, `score`, `forecast`, `alert` or `recommend`";

impl StageFields {
    /// The one kind the stage is, or what is wrong and a hint: several kinds, none, or a window
    /// stage's settings on another kind.
    pub fn kind(&self) -> Result<StageConfig, (String, Option<&'static str>)> {
        let sql = self.sql.as_ref().map(|sql| {
            StageConfig::Sql(SqlStageConfig {
                sql: sql.clone(),
                carry: self.carry.clone(),
                replace_by: self.replace_by.clone(),
            })
        });
        let mut kinds: Vec<StageConfig> = [
            sql,
            self.score.clone().map(StageConfig::Score),
            self.forecast.clone().map(StageConfig::Forecast),
            self.alert.clone().map(StageConfig::Alert),
            self.recommend.clone().map(StageConfig::Recommend),
        ]
        .into_iter()
        .flatten()
        .collect();
        let hint = Some("`sql: ../sql/file.sql`, or `score: {from: …, model: …}`");
        if kinds.len() > 1 {
            return Err((format!("a stage is one of {KINDS}, not several"), hint));
        }
        let Some(kind) = kinds.pop() else {
            return Err((format!("the stage has none of {KINDS}"), hint));
        };
        if !matches!(kind, StageConfig::Sql(_))
            && (self.carry.is_some() || !self.replace_by.is_empty())
        {
            let message = "`carry` and `replace_by` belong to SQL window stages";
            return Err((message.into(), None));
        }
        Ok(kind)
    }
}

impl StageConfig {
    /// The relation the stage reads, as written (a SQL stage's is in its query).
    fn from(&self) -> Option<&str> {
        match self {
            StageConfig::Sql(_) => None,
            StageConfig::Score(c) => Some(&c.from),
            StageConfig::Forecast(c) => Some(&c.from),
            StageConfig::Alert(c) => Some(&c.from),
            StageConfig::Recommend(c) => Some(&c.from),
        }
    }

    /// Checks the stage named `name` (a SQL stage's query may call `functions`): its plan, or
    /// `None` with every problem reported (nothing more when what it reads failed its own
    /// checks).
    pub(crate) async fn check(
        &self,
        cx: &mut Checking<'_, '_>,
        functions: &Functions,
        name: &str,
    ) -> Option<StagePlan> {
        if self.from().is_some_and(|from| cx.failed.contains(&from)) {
            return None;
        }
        Some(match self {
            StageConfig::Sql(c) => window::config::check(cx, functions, name, c)
                .await?
                .map(|k| match k {
                    SqlKind::Plain(s) => StageKind::Sql(s),
                    SqlKind::Window(w) => StageKind::Window(w),
                }),
            StageConfig::Score(c) => score::config::check(cx, name, c)
                .await?
                .map(StageKind::Score),
            StageConfig::Forecast(c) => forecast::config::check(cx, name, c)
                .await?
                .map(StageKind::Forecast),
            StageConfig::Alert(c) => {
                decide::config::check_alert(cx, name, c)?.map(StageKind::Alert)
            }
            StageConfig::Recommend(c) => {
                decide::config::check_recommend(cx, name, c)
                    .await?
                    .map(|k| match k {
                        Recommend::Spot(s) => StageKind::Spot(s),
                        Recommend::Rightsizing(r) => StageKind::Rightsizing(r),
                    })
            }
        })
    }
}

/// What a stage does; `job::build` turns each into its operator.
#[derive(Debug, Clone)]
pub enum StageKind {
    /// SQL over each batch (`crate::sql::stage`).
    Sql(SqlStage),
    /// SQL over event-time windows (`crate::window`).
    Window(WindowStage),
    /// A model and streaming detectors (`crate::score::stage`).
    Score(ScoreSpec),
    /// Forecasts with prediction intervals (`crate::forecast::stage`).
    Forecast(ForecastSpec),
    /// The alert policy (`crate::decide::stage`).
    Alert(AlertSpec),
    /// Spot / on-demand and instance-mix recommendations (`crate::decide::stage`).
    Spot(SpotSpec),
    /// Rightsizing recommendations (`crate::decide::stage`).
    Rightsizing(RightsizeSpec),
}

/// What a stage keeps its state by.
#[derive(Debug, Clone, PartialEq)]
pub enum StateKeys {
    /// Nothing: each batch on its own.
    Stateless,
    /// State per key, for each of these key column lists (all of them its input's columns or
    /// its output's, by name).
    By(Vec<Vec<String>>),
    /// One state over every row (a recommendation over every pool).
    Whole,
}

/// A checked stage of a pipeline.
pub type StagePlan = Planned<StageKind>;

impl StagePlan {
    /// The stage's query, if it runs SQL.
    pub fn sql(&self) -> Option<&SqlStage> {
        match &self.kind {
            StageKind::Sql(s) => Some(s),
            StageKind::Window(w) => Some(&w.sql),
            _ => None,
        }
    }

    /// What the stage keeps its state by (see [`super::partitioning`]).
    pub fn state_keys(&self) -> StateKeys {
        match &self.kind {
            StageKind::Sql(_) => StateKeys::Stateless,
            StageKind::Window(w) => StateKeys::By(
                std::iter::once(w.sql.query.keys.clone())
                    .chain(w.carry.as_ref().map(|c| c.by.clone()))
                    .collect(),
            ),
            StageKind::Score(s) => StateKeys::By(vec![s.key.clone()]),
            StageKind::Forecast(f) => StateKeys::By(vec![f.key.clone()]),
            StageKind::Alert(a) => StateKeys::By(vec![a.input.key.clone()]),
            StageKind::Rightsizing(r) => StateKeys::By(vec![vec![r.resource.clone()]]),
            StageKind::Spot(_) => StateKeys::Whole,
        }
    }

    /// An alert stage's feedback input and the column naming each alert's resource: verdicts
    /// are matched to the stage's own alerts by id, not kept per key.
    pub fn feedback(&self) -> Option<(&str, &str)> {
        match &self.kind {
            StageKind::Alert(a) => {
                let f = a.feedback.as_ref()?;
                Some((f.from.as_str(), a.input.resource.as_str()))
            }
            _ => None,
        }
    }

    /// The stage's window, if it has one.
    pub fn window(&self) -> Option<crate::window::WindowSpec> {
        match &self.kind {
            StageKind::Window(w) => w.sql.query.window,
            _ => None,
        }
    }
}
