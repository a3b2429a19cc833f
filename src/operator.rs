//! The operator: what every stage of a pipeline is to the run loop.
//!
//! In: the batches of the stage's input (a source or an earlier stage) as each cycle produced
//! them, then the input's watermark. Out, into a [`Collector`]: result rows, and rows too late
//! for any window (the late side output, never dropped). Each operator owns its state: it
//! gives it to the checkpoint as an [`OperatorState`] and takes it back on restart.
//!
//! Each cycle the run loop drives every stage alike, in file order:
//! [`on_cycle_start`](Operator::on_cycle_start), [`process_side`](Operator::process_side) for
//! each non-empty batch of a side input (few stages read one),
//! [`process_batch`](Operator::process_batch) for each non-empty input batch, [`handle_watermark`](Operator::handle_watermark), then
//! [`on_cycle_end`](Operator::on_cycle_end); after the cycle's commits,
//! [`checkpoint`](Operator::checkpoint), which gives the whole state
//! ([`snapshot`](Operator::snapshot)) or, in an incremental checkpoint, what changed since the
//! last. Only `process_batch` must be written; the rest default to an operator that keeps no
//! state and passes its input's watermark on. The one place that
//! turns a stage's plan into its operator is `job::build`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::array::{Array, RecordBatch, StringArray};
use arrow::error::ArrowError;
use datafusion::error::DataFusionError;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::metrics::PipelineMetrics;

/// Why an operator failed.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error(transparent)]
    Arrow(#[from] ArrowError),
    #[error(transparent)]
    Sql(#[from] DataFusionError),
    /// A checkpointed state that does not restore.
    #[error("checkpointed state `{part}`: {message}")]
    State { part: String, message: String },
    /// An operator's own error (a window's, a model's).
    #[error(transparent)]
    Operator(Box<dyn std::error::Error + Send + Sync>),
}

pub type Result<T, E = OperatorError> = std::result::Result<T, E>;

/// Where an operator runs: for its metrics and log lines.
pub struct Context<'a> {
    pub pipeline: &'a str,
    /// Where it runs: the pipeline's name, or under workers its shard's
    /// (`pipeline/partition-N`), whose partitions' rows are all it sees.
    pub scope: &'a str,
    pub stage: &'a str,
    pub metrics: &'a PipelineMetrics,
}

impl Context<'_> {
    /// The `[pipeline, stage]` labels most metrics start with.
    pub fn labels(&self) -> [&str; 2] {
        [self.pipeline, self.stage]
    }
}

/// What an operator emits.
#[derive(Debug, Default)]
pub struct Collector {
    /// Result rows, in order.
    pub rows: Vec<RecordBatch>,
    /// Input rows too late for every window they belong to.
    pub late: Vec<RecordBatch>,
    /// Rows of the stage's side outputs, by the operator's name for each (its plan's
    /// `side_outputs`).
    pub side: Vec<(&'static str, RecordBatch)>,
}

impl Collector {
    /// Emits `batch` (an empty one is dropped).
    pub fn collect(&mut self, batch: RecordBatch) {
        if batch.num_rows() > 0 {
            self.rows.push(batch);
        }
    }

    /// Emits `batch` (an empty one is dropped) to the side output the operator calls `output`.
    pub fn side(&mut self, output: &'static str, batch: RecordBatch) {
        if batch.num_rows() > 0 {
            self.side.push((output, batch));
        }
    }

    /// Emits rows to the late side output.
    pub fn late(&mut self, batch: RecordBatch) {
        if batch.num_rows() > 0 {
            self.late.push(batch);
        }
    }
}

/// An operator's state for a checkpoint: small values as JSON in the manifest, and named parts
/// of Arrow batches, each written as its own file (`<stage>.<part>.arrow`).
///
/// A part named in `appended` holds only the rows added since the operator's last checkpoint
/// (see [`Snapshot::Changes`]): restored, it is the batches of every checkpoint since the last
/// whole one, oldest first, and the operator makes its state of them (a later row replacing an
/// earlier one, what has expired since dropped).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OperatorState {
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub meta: serde_json::Value,
    #[serde(skip)]
    pub parts: BTreeMap<String, Vec<RecordBatch>>,
    #[serde(skip)]
    pub appended: BTreeSet<String>,
}

/// What a checkpoint asks of an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Snapshot {
    /// All of its state.
    Whole,
    /// What changed since its last checkpoint, in the parts it can give so (named in
    /// [`OperatorState::appended`]); the other parts whole, and so the parts named here: the
    /// files added to them since their last whole one have grown long or large, and the
    /// checkpoint store asks for a few such parts at a time, so that no checkpoint holds the
    /// whole of a large state in memory at once.
    Changes(BTreeSet<String>),
}

impl Snapshot {
    /// What changed, every part that can be given so.
    pub fn changes() -> Snapshot {
        Snapshot::Changes(BTreeSet::new())
    }

    /// Whether `part` is asked whole.
    pub fn wants_whole(&self, part: &str) -> bool {
        match self {
            Snapshot::Whole => true,
            Snapshot::Changes(whole) => whole.contains(part),
        }
    }
}

impl OperatorState {
    /// A state of one part.
    pub fn part(name: &str, batches: Vec<RecordBatch>) -> Self {
        OperatorState {
            parts: BTreeMap::from([(name.to_string(), batches)]),
            ..OperatorState::default()
        }
    }

    /// A state of one part holding `text` (one row, column `state`).
    pub fn text(name: &str, text: String) -> Result<Self> {
        let array: arrow::array::ArrayRef = Arc::new(StringArray::from(vec![text]));
        let batch = RecordBatch::try_from_iter([("state", array)])?;
        Ok(OperatorState::part(name, vec![batch]))
    }

    /// The text [`text`](Self::text) stored in part `name`, if the state has that part.
    pub fn read_text(&self, name: &str) -> Result<Option<&str>> {
        let Some(batches) = self.parts.get(name) else {
            return Ok(None);
        };
        batches
            .iter()
            .find(|b| b.num_rows() > 0)
            .and_then(|b| b.column_by_name("state"))
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            .filter(|c| c.len() == 1)
            .map(|c| Some(c.value(0)))
            .ok_or_else(|| OperatorError::State {
                part: name.into(),
                message: "not one `state` string".into(),
            })
    }

    /// A state of one part holding `value` as JSON.
    pub fn json(name: &str, value: &impl Serialize) -> Result<Self> {
        let json = serde_json::to_string(value).map_err(|e| OperatorError::State {
            part: name.into(),
            message: e.to_string(),
        })?;
        OperatorState::text(name, json)
    }

    /// Restores `target` from the value [`json`](Self::json) stored in part `name`; leaves it
    /// as it is when the state has no such part.
    pub fn restore_json<T: DeserializeOwned>(&self, name: &str, target: &mut T) -> Result<()> {
        if let Some(value) = self.read_json(name)? {
            *target = value;
        }
        Ok(())
    }

    /// The value [`json`](Self::json) stored in part `name`, if the state has that part.
    pub fn read_json<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        let Some(text) = self.read_text(name)? else {
            return Ok(None);
        };
        serde_json::from_str(text)
            .map(Some)
            .map_err(|e| OperatorError::State {
                part: name.into(),
                message: e.to_string(),
            })
    }
}

/// A stage of a pipeline, as the run loop drives it.
#[async_trait::async_trait]
pub trait Operator: Send {
    /// Takes one batch of the input (never empty).
    async fn process_batch(
        &mut self,
        batch: &RecordBatch,
        ctx: &Context<'_>,
        out: &mut Collector,
    ) -> Result<()>;

    /// Takes one batch (never empty) of `input`, a side input: a relation the stage reads
    /// beside its input (its plan's `side_inputs`, e.g. the forecasts a rightsizing stage sizes
    /// by). A cycle's side batches come before its input batches; they update state and emit
    /// nothing. Only a stage whose plan names side inputs gets them.
    async fn process_side(
        &mut self,
        input: &str,
        _batch: &RecordBatch,
        _ctx: &Context<'_>,
    ) -> Result<()> {
        Err(OperatorError::Operator(
            format!("this stage reads no side input, yet got a batch of `{input}`").into(),
        ))
    }

    /// The input's watermark is now `watermark` (µs; `i64::MIN` before there is one): emits
    /// what it closes and returns the watermark of the output.
    async fn handle_watermark(
        &mut self,
        watermark: i64,
        _ctx: &Context<'_>,
        _out: &mut Collector,
    ) -> Result<i64> {
        Ok(watermark)
    }

    /// Before the cycle's batches: e.g. swap in a newer registered model.
    async fn on_cycle_start(&mut self, _ctx: &Context<'_>) {}

    /// After the cycle's batches and watermark.
    fn on_cycle_end(&mut self, _ctx: &Context<'_>) {}

    /// The whole state to checkpoint.
    fn snapshot(&self) -> Result<OperatorState> {
        Ok(OperatorState::default())
    }

    /// The state to checkpoint: whole, or what changed since the last checkpoint. By default
    /// the whole [`snapshot`](Self::snapshot) either way; an operator whose state grows by
    /// additions (a window's rows, a carried history) gives only those in
    /// [`Snapshot::Changes`], and counts what it gave as checkpointed.
    fn checkpoint(&mut self, _kind: &Snapshot) -> Result<OperatorState> {
        self.snapshot()
    }

    /// Takes back what [`snapshot`](Self::snapshot) gave.
    fn restore(&mut self, _state: OperatorState) -> Result<()> {
        Ok(())
    }
}

/// Two operators as one: the second takes what the first emits (a window stage and the
/// features carried across its windows).
pub struct Chain<A, B> {
    first: A,
    then: B,
}

impl<A: Operator, B: Operator> Chain<A, B> {
    pub fn new(first: A, then: B) -> Self {
        Chain { first, then }
    }

    async fn pass(&mut self, mid: Collector, ctx: &Context<'_>, out: &mut Collector) -> Result<()> {
        out.late.extend(mid.late);
        for b in &mid.rows {
            self.then.process_batch(b, ctx, out).await?;
        }
        Ok(())
    }
}

/// The keys of each operator's `meta` in a chain's state.
const FIRST: &str = "first";
const THEN: &str = "then";

#[async_trait::async_trait]
impl<A: Operator, B: Operator> Operator for Chain<A, B> {
    async fn process_batch(
        &mut self,
        batch: &RecordBatch,
        ctx: &Context<'_>,
        out: &mut Collector,
    ) -> Result<()> {
        let mut mid = Collector::default();
        self.first.process_batch(batch, ctx, &mut mid).await?;
        self.pass(mid, ctx, out).await
    }

    async fn process_side(
        &mut self,
        input: &str,
        batch: &RecordBatch,
        ctx: &Context<'_>,
    ) -> Result<()> {
        self.first.process_side(input, batch, ctx).await
    }

    async fn handle_watermark(
        &mut self,
        watermark: i64,
        ctx: &Context<'_>,
        out: &mut Collector,
    ) -> Result<i64> {
        let mut mid = Collector::default();
        let w = self
            .first
            .handle_watermark(watermark, ctx, &mut mid)
            .await?;
        self.pass(mid, ctx, out).await?;
        self.then.handle_watermark(w, ctx, out).await
    }

    async fn on_cycle_start(&mut self, ctx: &Context<'_>) {
        self.first.on_cycle_start(ctx).await;
        self.then.on_cycle_start(ctx).await;
    }

    fn on_cycle_end(&mut self, ctx: &Context<'_>) {
        self.first.on_cycle_end(ctx);
        self.then.on_cycle_end(ctx);
    }

    fn snapshot(&self) -> Result<OperatorState> {
        merged(self.first.snapshot()?, self.then.snapshot()?)
    }

    fn checkpoint(&mut self, kind: &Snapshot) -> Result<OperatorState> {
        merged(self.first.checkpoint(kind)?, self.then.checkpoint(kind)?)
    }

    fn restore(&mut self, state: OperatorState) -> Result<()> {
        let meta = |key: &str| state.meta.get(key).cloned().unwrap_or_default();
        let (first, then) = (meta(FIRST), meta(THEN));
        self.first.restore(OperatorState {
            meta: first,
            ..state.clone()
        })?;
        self.then.restore(OperatorState {
            meta: then,
            ..state
        })
    }
}

/// The states of a chain's two operators as one.
fn merged(first: OperatorState, then: OperatorState) -> Result<OperatorState> {
    let mut parts = first.parts;
    for (name, batches) in then.parts {
        if parts.insert(name.clone(), batches).is_some() {
            return Err(OperatorError::State {
                part: name,
                message: "both operators of a chain keep a part of this name".into(),
            });
        }
    }
    let mut appended = first.appended;
    appended.extend(then.appended);
    Ok(OperatorState {
        meta: serde_json::json!({ FIRST: first.meta, THEN: then.meta }),
        parts,
        appended,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_part_reads_back_and_a_missing_one_is_none() {
        let state = OperatorState::json("decisions", &vec![1, 2, 3]).unwrap();
        assert_eq!(
            state.read_json::<Vec<i32>>("decisions").unwrap(),
            Some(vec![1, 2, 3])
        );
        assert_eq!(state.read_json::<Vec<i32>>("other").unwrap(), None);
        let err = state.read_json::<String>("decisions").unwrap_err();
        assert!(err.to_string().contains("`decisions`"), "{err}");
    }

    struct Fixed(i64);

    #[async_trait::async_trait]
    impl Operator for Fixed {
        async fn process_batch(
            &mut self,
            _: &RecordBatch,
            _: &Context<'_>,
            _: &mut Collector,
        ) -> Result<()> {
            Ok(())
        }

        fn snapshot(&self) -> Result<OperatorState> {
            let mut s = OperatorState::json(&format!("p{}", self.0), &self.0)?;
            s.meta = serde_json::json!(self.0);
            Ok(s)
        }

        fn restore(&mut self, state: OperatorState) -> Result<()> {
            let part: i64 = state.read_json(&format!("p{}", state.meta))?.unwrap_or(-1);
            assert_eq!(state.meta, serde_json::json!(part));
            self.0 = part;
            Ok(())
        }
    }

    #[test]
    fn a_chain_restores_each_operator_its_own_state() {
        let chain = Chain::new(Fixed(5), Fixed(7));
        let state = chain.snapshot().unwrap();
        assert_eq!(state.parts.len(), 2);
        let mut again = Chain::new(Fixed(0), Fixed(0));
        again.restore(state).unwrap();
        assert_eq!((again.first.0, again.then.0), (5, 7));
        let clash = Chain::new(Fixed(5), Fixed(5)).snapshot().unwrap_err();
        assert!(clash.to_string().contains("`p5`"), "{clash}");
    }
}
