//! Many processes running one pipeline, on engines that exist: Kafka's consumer group spreads
//! the partitions of the pipeline's topics over its workers, and Delta Lake's optimistic
//! concurrency lets them all commit to the same tables.
//!
//! In: a pipeline and the run's settings. Out: on each worker, one shard per partition the group
//! gave it — the pipeline run over partition N of each of its topics (so they need as many
//! partitions each, as Kafka Streams asks of co-partitioned topics), with its own checkpoints
//! under `_stratus/<pipeline>/partition-<N>/` and its own `txn` marks in the tables. State moves
//! with its partition: the new owner restores that shard's checkpoint and replays from that
//! shard's marks. A shard claims the tables' marks when it starts, fencing out the worker that
//! had the partition before (see [`crate::sink::DeltaSink::claim`]).
//!
//! Windows and per-key state are per partition: a stage's keys must follow the topics'
//! partitioning — the producers key events by some of the stage's `GROUP BY` or `key`
//! columns, or the shards re-key the source through a repartition topic (see
//! [`crate::source::repartition`]), as Kafka Streams does.
//!
//! - [`member`]: the group member that starts and stops the shards as partitions come and go;
//! - [`control`]: submitted pipelines and workers' statuses on compacted Kafka topics;
//! - [`worker`]: `stratus worker`, which runs every submitted pipeline.

pub mod control;
pub mod member;
pub mod worker;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

pub use member::run_member;

/// One partition of a pipeline, run by the worker the consumer group gave it to.
#[derive(Debug, Clone)]
pub struct Shard {
    pub partition: i32,
    /// Where the shard's positions go, for the worker's group member to commit.
    pub offsets: GroupOffsets,
}

impl Shard {
    /// The name the shard's checkpoints and Delta marks are kept under.
    pub fn instance(&self, pipeline: &str) -> String {
        Self::instance_of(pipeline, self.partition)
    }

    /// The name of `pipeline`'s shard of `partition`.
    pub fn instance_of(pipeline: &str, partition: i32) -> String {
        format!("{pipeline}/partition-{partition}")
    }
}

/// Positions the shards committed to Delta, for the group: only a member of the group may
/// commit its offsets. Each stays pending until a commit to the group succeeds (one refused
/// during a rebalance is made again), and is forgotten when its partition leaves the worker.
/// Beside them, the positions of repartition topics a written checkpoint holds: what comes
/// before them no restart reads again, so the member deletes it.
#[derive(Debug, Clone, Default)]
pub struct GroupOffsets(
    Arc<Mutex<BTreeMap<(String, i32), Position>>>,
    Arc<Mutex<BTreeMap<(String, i32), i64>>>,
);

#[derive(Debug, Clone, Copy)]
struct Position {
    next: i64,
    in_group: bool,
}

impl GroupOffsets {
    fn positions(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, i32), Position>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the next offset of each partition of `topic`.
    pub(crate) fn record(&self, topic: &str, position: &HashMap<i32, i64>) {
        let mut positions = self.positions();
        for (&p, &next) in position {
            let key = (topic.to_string(), p);
            if positions.get(&key).is_none_or(|had| had.next != next) {
                positions.insert(
                    key,
                    Position {
                        next,
                        in_group: false,
                    },
                );
            }
        }
    }

    /// The positions the group does not have yet.
    pub(crate) fn pending(&self) -> BTreeMap<(String, i32), i64> {
        self.positions()
            .iter()
            .filter(|(_, at)| !at.in_group)
            .map(|(key, at)| (key.clone(), at.next))
            .collect()
    }

    /// Marks `committed` as in the group (unless a shard moved on meanwhile).
    pub(crate) fn committed(&self, committed: &BTreeMap<(String, i32), i64>) {
        let mut positions = self.positions();
        for (key, next) in committed {
            if let Some(at) = positions.get_mut(key)
                && at.next == *next
            {
                at.in_group = true;
            }
        }
    }

    /// Forgets the positions of `partitions` (of every topic): their new owner commits its own.
    pub(crate) fn forget(&self, partitions: &[i32]) {
        self.positions().retain(|(_, p), _| !partitions.contains(p));
        self.read_lock().retain(|(_, p), _| !partitions.contains(p));
    }

    fn read_lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, i32), i64>> {
        self.1.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that a written checkpoint starts `topic` (a repartition topic) at `position`.
    pub(crate) fn record_checkpointed(&self, topic: &str, position: &HashMap<i32, i64>) {
        let mut read = self.read_lock();
        for (&p, &next) in position {
            read.insert((topic.to_string(), p), next);
        }
    }

    /// The positions recorded by [`record_checkpointed`](Self::record_checkpointed) since the
    /// last call.
    pub(crate) fn take_checkpointed(&self) -> BTreeMap<(String, i32), i64> {
        std::mem::take(&mut *self.read_lock())
    }
}
