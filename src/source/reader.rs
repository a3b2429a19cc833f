//! The source side of the run loop: Kafka consumers and file replays, read from the offsets
//! of the last checkpoint, decoded and validated into Arrow, invalid events sent to the
//! dead-letter topic (a backfill's to its dead-letter files), event times fed to the
//! watermark; after each cycle's commits, the offsets go to the consumer group for lag tools
//! (a worker's shard reads one partition of each topic, and hands its offsets to the worker). While a cycle is replayed after a
//! restart, each partition is read exactly up to the offset that cycle ended at, and the dead
//! letters (already delivered the first time) are not sent again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryFuture, FutureProducer};
use rdkafka::{Offset, TopicPartitionList};

use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use serde::{Deserialize, Serialize};

use super::DeadLetter;
use super::repartition::{Forwarder, Reading, Route, upstream_of};
use crate::cluster::{GroupOffsets, Shard};
use crate::kafka::KafkaConnection;
use crate::metrics::PipelineMetrics;
use crate::pipeline::{Pipeline, SourceInput, SourcePlan};
use crate::sink::side_files::SideFiles;
use crate::validate::{BatchDecoder, TimeBounds};
use crate::window::WatermarkTracker;

/// Why a source could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("source {source_name}: {source}")]
    Kafka {
        source_name: String,
        source: KafkaError,
    },
    #[error("source {0}: {1}")]
    Read(String, String),
    #[error("dead-letter topic {topic}: {message}")]
    DeadLetter { topic: String, message: String },
    /// Forwarding to the source's repartition topic stopped (see [`super::repartition`]).
    #[error("source {source_name}: repartition: {message}")]
    Repartition {
        source_name: String,
        message: String,
        /// A newer owner of the partition fenced its producer out.
        fenced: bool,
    },
}

impl SourceError {
    /// Whether a newer owner of the partition fenced this one out.
    pub fn is_fenced(&self) -> bool {
        matches!(self, SourceError::Repartition { fenced: true, .. })
    }

    /// Whether the brokers could not be reached, or did not answer in time, for now: as after
    /// an outage, or in a worker resumed after a pause whose requests timed out meanwhile.
    pub fn is_outage(&self) -> bool {
        match self {
            // A forwarder stops on what an abort and a new transaction could not mend: a new
            // producer may.
            SourceError::Repartition { fenced, .. } => !fenced,
            SourceError::Kafka { source, .. } => source
                .rdkafka_error_code()
                .is_some_and(|c| is_outage(c) || c == RDKafkaErrorCode::OperationTimedOut),
            _ => false,
        }
    }
}

/// Where a source stood at the end of a cycle: its part of a checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceState {
    /// Per partition, the next offset to read.
    pub next: BTreeMap<i32, i64>,
    pub watermark: i64,
    /// Per partition, the newest event time seen.
    pub newest: BTreeMap<i32, i64>,
}

/// How a run reads its sources.
pub(crate) struct ReadConfig<'a> {
    pub kafka: &'a KafkaConnection,
    /// How far in the future an event time may lie.
    pub max_future: Duration,
    /// A backfill: the source ends where it ended at start.
    pub until_caught_up: bool,
    /// Where invalid events go.
    pub side: &'a SideOutputs,
    /// Read only this partition of each topic (a worker's shard), its offsets committed to
    /// the group by the worker's group member.
    pub shard: Option<&'a Shard>,
}

/// Where a run's invalid events, and its stages' late rows, go: topics, through the run's
/// producer, or — for a backfill, which reaches no broker — files beside the tables.
#[derive(Clone)]
pub(crate) enum SideOutputs {
    Topics(FutureProducer),
    Files(SideFiles),
}

/// A source's invalid events of the current cycle.
pub(crate) enum DeadLetters {
    /// Produced to the dead-letter topic; each delivered before the cycle commits.
    Topic {
        producer: FutureProducer,
        sent: Vec<DeliveryFuture>,
    },
    /// JSON lines (see [`DeadLetter::json_line`]), written to the backfill's dead-letter file
    /// of the cycle when it closes.
    File { files: SideFiles, lines: Vec<u8> },
}

/// What one poll read.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Polled {
    pub events: u64,
    pub invalid: u64,
    /// The read stopped at its [`Until`]: the cycle is to end now.
    pub until_reached: bool,
}

/// Where a read of a live stream stops before its row and byte limits: at `deadline` (the
/// cycle's time limit), or after the event that brings the source's watermark to `closes_at`,
/// where windows close — so their results go out at once, not after a cycle's worth of later
/// events. Live: the message was appended to Kafka within [`LIVE`] of being read. A backlog
/// (and a file, and a run to the end of what is there) reads on to the limits, so catching up
/// keeps its large cycles.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Until {
    pub deadline: Instant,
    pub closes_at: i64,
}

/// A message appended this recently (ms) is read live.
const LIVE: i64 = 5_000;

/// A source's consumer: rdkafka's default context, but a partition's end — which a source asks
/// to be told of (see [`SourceRuntime::at_end`]) — is not logged as an error.
pub(crate) struct SourceContext;

impl ClientContext for SourceContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(error, KafkaError::Global(RDKafkaErrorCode::PartitionEOF)) {
            tracing::error!("librdkafka: {error}: {reason}");
        }
    }
}

impl ConsumerContext for SourceContext {}

pub(crate) type SourceConsumer = BaseConsumer<SourceContext>;

pub(crate) enum Reader {
    Kafka {
        consumer: SourceConsumer,
        topic: String,
        /// Offsets to reach before the source counts as caught up.
        targets: HashMap<i32, i64>,
        /// A repartition topic: each record's [`UPSTREAM`](super::repartition::UPSTREAM) header names the source partition
        /// whose clock its event time moves.
        upstream: bool,
    },
    File {
        path: String,
        /// Streamed a line at a time: a backfill file can be larger than memory.
        lines: std::io::BufReader<std::fs::File>,
        /// The next line number, which is the next offset.
        next: i64,
        eof: bool,
        /// The start of a line whose end a live read has not reached yet (it is still being
        /// written).
        partial: Vec<u8>,
    },
    /// Only while the reader is borrowed out during a poll.
    Empty,
}

pub(crate) struct SourceRuntime {
    pub(crate) plan: SourcePlan,
    pub(crate) reader: Reader,
    pub(crate) decoder: BatchDecoder,
    pub(crate) watermark: WatermarkTracker,
    /// The topic (or file path) the offsets belong to.
    pub(crate) topic: String,
    /// Next offset to read per partition, consumed but not yet committed.
    pub(crate) pending: HashMap<i32, i64>,
    /// Events consumed since the last flush.
    pub(crate) pending_events: usize,
    /// Their payloads' bytes.
    pub(crate) pending_bytes: usize,
    /// When the oldest of them was appended to Kafka (ms), where the broker says: what the
    /// detection latency of the cycle's alerts is measured from.
    pub(crate) oldest_append_ms: Option<i64>,
    /// When the newest of them was: on a live stream, the event whose watermark closed the
    /// cycle's windows, what a result's latency from its window's close is measured from.
    pub(crate) newest_append_ms: Option<i64>,
    /// While replaying a cycle: per partition, the offset the cycle ended at.
    pub(crate) replay_to: Option<HashMap<i32, i64>>,
    /// Next offset per partition, as of the last commit or start.
    pub(crate) position: HashMap<i32, i64>,
    /// Whether `position` moved since start (and so is to be committed to the group).
    pub(crate) moved: bool,
    pub(crate) dead_letters: DeadLetters,
    /// µs an event time may lie ahead of the clock.
    pub(crate) max_future: i64,
    /// When the consumer lag was last measured.
    pub(crate) lag_checked: Option<Instant>,
    /// The partitions read to their end (librdkafka's partition EOF) since their last valid
    /// event: only their silence is idleness (see [`Self::held_back`]).
    pub(crate) at_end: HashSet<i32>,
    /// Why the brokers cannot be reached, while they cannot: librdkafka reconnects by itself,
    /// and the source is read again once a message arrives or the brokers answer.
    pub(crate) unreachable: Option<String>,
    /// When the watermark last moved (or the source started).
    pub(crate) watermark_moved: Instant,
    /// When a cycle last had events of this source.
    pub(crate) events_seen: Instant,
    /// A shard's: where its positions go for the worker's group member to commit.
    pub(crate) group_offsets: Option<GroupOffsets>,
    /// A shard's of a re-keyed source: what fills the repartition topic it reads.
    pub(crate) forwarder: Option<Forwarder>,
}

const POLL: Duration = Duration::from_millis(50);
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a dead letter waits for room in a full producer queue before the run fails.
const QUEUE_FULL_WAIT: Duration = Duration::from_secs(300);
/// How long a source that lost its brokers waits for an answer to its probe, per read.
const PROBE: Duration = Duration::from_secs(1);

pub(crate) fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

pub(crate) async fn open_source(
    pipeline: &Pipeline,
    plan: &SourcePlan,
    config: &ReadConfig<'_>,
    start: Option<&SourceState>,
) -> Result<SourceRuntime, SourceError> {
    let kafka_err = |source| SourceError::Kafka {
        source_name: plan.name.clone(),
        source,
    };
    // A shard of a source re-keyed for the group reads the repartition topic, which its
    // forwarder fills from the source's partition.
    let repartition = match (&plan.input, config.shard) {
        (SourceInput::Kafka { .. }, Some(_)) if !plan.repartition_by.is_empty() => {
            Some(plan.repartition_topic(&pipeline.name))
        }
        _ => None,
    };
    let mut forwarder = None;
    // The partitions whose event times the watermark follows: those read, or for a re-keyed
    // source, the source's partitions its records come from.
    let mut clocks = None;
    let (topic, partitions) = match &plan.input {
        SourceInput::Kafka { topic, group } => {
            let consumer: BaseConsumer =
                config.kafka.consumer(group).create().map_err(kafka_err)?;
            let partitions_of = |topic: &str| -> Result<Vec<i32>, SourceError> {
                let metadata = tokio::task::block_in_place(|| {
                    consumer.fetch_metadata(Some(topic), METADATA_TIMEOUT)
                })
                .map_err(kafka_err)?;
                let partitions: Vec<i32> = metadata
                    .topics()
                    .iter()
                    .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                    .collect();
                if partitions.is_empty() {
                    return Err(SourceError::Read(
                        plan.name.clone(),
                        format!(
                            "topic {topic} does not exist or has no partitions; create it first"
                        ),
                    ));
                }
                Ok(partitions)
            };
            let mut partitions = partitions_of(topic)?;
            let mut read = topic.clone();
            if let Some(shard) = config.shard {
                if !partitions.contains(&shard.partition) {
                    return Err(SourceError::Read(
                        plan.name.clone(),
                        format!(
                            "topic {topic} has {} partitions, none numbered {}: a pipeline run \
                             by workers reads partition N of each of its topics together, so \
                             they need as many partitions each",
                            partitions.len(),
                            shard.partition
                        ),
                    ));
                }
                if let Some(to) = &repartition {
                    let route = Route {
                        source: &plan.name,
                        topic,
                        group,
                        partition: shard.partition,
                        to,
                        by: &plan.repartition_by,
                    };
                    forwarder = Some(Forwarder::start(config.kafka, &route)?);
                    clocks = Some(partitions);
                    partitions_of(to)?;
                    read = to.clone();
                }
                partitions = vec![shard.partition];
            }
            (read, partitions)
        }
        SourceInput::File { path } => (path.display().to_string(), vec![0]),
    };
    let position: HashMap<i32, i64> = partitions
        .iter()
        .map(|&p| (p, start.and_then(|s| s.next.get(&p)).copied().unwrap_or(0)))
        .collect();
    let reader = match &plan.input {
        SourceInput::Kafka { group, .. } => {
            // Of a repartition topic, only what a forwarder's transaction committed (what an
            // aborted one wrote is forwarded again). Each partition's end is told (see
            // `SourceRuntime::at_end`).
            let consumer: SourceConsumer = config
                .kafka
                .consumer(group)
                .set("isolation.level", "read_committed")
                .set("enable.partition.eof", "true")
                .create_with_context(SourceContext)
                .map_err(kafka_err)?;
            let mut targets = HashMap::new();
            for &p in &partitions {
                let (_, high) = tokio::task::block_in_place(|| {
                    consumer.fetch_watermarks(&topic, p, METADATA_TIMEOUT)
                })
                .map_err(kafka_err)?;
                targets.insert(p, high);
            }
            let assignment = assignment(&topic, &position).map_err(kafka_err)?;
            consumer.assign(&assignment).map_err(kafka_err)?;
            Reader::Kafka {
                consumer,
                topic: topic.clone(),
                targets,
                upstream: repartition.is_some(),
            }
        }
        SourceInput::File { path } => {
            let open = std::fs::File::open(path).map_err(|e| {
                SourceError::Read(
                    plan.name.clone(),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            let mut lines = std::io::BufReader::new(open);
            // Skip what the tables already hold.
            let skip = position[&0];
            let mut buf = Vec::new();
            let mut next = 0;
            let mut eof = false;
            while next < skip {
                buf.clear();
                match std::io::BufRead::read_until(&mut lines, b'\n', &mut buf) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(_) => next += 1,
                    Err(e) => return Err(SourceError::Read(plan.name.clone(), e.to_string())),
                }
            }
            Reader::File {
                path: topic.clone(),
                lines,
                next,
                eof,
                partial: Vec::new(),
            }
        }
    };
    let max_future = config.max_future.as_micros() as i64;
    let mut watermark = WatermarkTracker::new(plan.max_out_of_orderness, plan.idle_timeout);
    if let Some(s) = start {
        watermark.restore(s.watermark, &s.newest, now_us());
    }
    watermark.assign(clocks.as_ref().unwrap_or(&partitions), now_us());
    if config.until_caught_up
        && let Reader::Kafka { targets, .. } = &reader
    {
        // A backfill ends once it has read what was there at its start: a partition with
        // nothing to read would hold the watermark until its idle timeout, past the end.
        for (p, &end) in targets {
            if end <= position.get(p).copied().unwrap_or(0) {
                watermark.release_silent(*p);
            }
        }
    }
    if let (Some(shard), Reader::Kafka { .. }) = (config.shard, &reader) {
        // Where the tables say each partition resumes reaches the group at once, not only
        // after a cycle of new events: its last owner may have died before committing it, and
        // with nothing more to read the group would never hear of it (lag tools would show it
        // unread).
        let resumed: HashMap<i32, i64> = position
            .iter()
            .filter(|&(_, &next)| next > 0)
            .map(|(&p, &next)| (p, next))
            .collect();
        shard.offsets.record(&topic, &resumed);
    }
    Ok(SourceRuntime {
        decoder: BatchDecoder::new(
            plan.schema.clone(),
            TimeBounds::plausible(now_us(), max_future),
            pipeline.max_rows.min(1 << 16),
        )
        .with_event_time(&plan.event_time),
        max_future,
        lag_checked: None,
        at_end: HashSet::new(),
        unreachable: None,
        watermark_moved: Instant::now(),
        events_seen: Instant::now(),
        watermark,
        plan: plan.clone(),
        group_offsets: config.shard.map(|s| s.offsets.clone()),
        forwarder,
        reader,
        topic,
        pending: HashMap::new(),
        pending_events: 0,
        pending_bytes: 0,
        oldest_append_ms: None,
        newest_append_ms: None,
        replay_to: None,
        position,
        moved: false,
        dead_letters: match config.side {
            SideOutputs::Topics(producer) => DeadLetters::Topic {
                producer: producer.clone(),
                sent: Vec::new(),
            },
            SideOutputs::Files(files) => DeadLetters::File {
                files: files.clone(),
                lines: Vec::new(),
            },
        },
    })
}

/// Reading `topic` from `position` (next offset per partition; 0: the beginning).
fn assignment(
    topic: &str,
    position: &HashMap<i32, i64>,
) -> Result<TopicPartitionList, rdkafka::error::KafkaError> {
    let mut list = TopicPartitionList::new();
    for (&p, &next) in position {
        let offset = if next == 0 {
            Offset::Beginning
        } else {
            Offset::Offset(next)
        };
        list.add_partition_offset(topic, p, offset)?;
    }
    Ok(list)
}

impl SourceRuntime {
    /// The partitions of the watermark that must not go idle: those whose events are on their
    /// way, however long they are silent (a backlog, a partition just taken over, a fetch
    /// waiting on a slow or unreachable broker), so the watermark waits for them rather than
    /// pass their events by and count them late. A partition's silence is idleness once it
    /// has been read to its end.
    pub(crate) fn held_back(&self) -> Vec<i32> {
        not_at_end(self.watermark.partitions(), &self.at_end)
    }

    /// The next offset per partition: what is consumed, committed or not.
    pub(crate) fn next_offsets(&self) -> BTreeMap<i32, i64> {
        let mut next: BTreeMap<i32, i64> = self.position.iter().map(|(&p, &o)| (p, o)).collect();
        next.extend(self.pending.iter().map(|(&p, &o)| (p, o)));
        next
    }

    /// The next offset per partition the tables hold, for the group and lag tools. Read to
    /// where the tables hold it, a repartition topic's partition ends with the marker of the
    /// transaction that wrote its last records, which the consumer has passed but no offset
    /// of a record covers: past it, so that lag shows none.
    pub(crate) fn held(&self) -> HashMap<i32, i64> {
        let mut held = self.position.clone();
        if let Reader::Kafka {
            consumer,
            upstream: true,
            ..
        } = &self.reader
            && self.pending.is_empty()
            && self.replay_to.is_none()
            && let Ok(list) = consumer.position()
        {
            for e in list.elements() {
                if let (Offset::Offset(at), Some(next)) = (e.offset(), held.get_mut(&e.partition()))
                {
                    *next = (*next).max(at);
                }
            }
        }
        held
    }

    /// Whether a replayed cycle has read every partition up to where the cycle ended.
    pub(crate) fn replay_done(&self) -> bool {
        let next = self.next_offsets();
        self.replay_to.as_ref().is_none_or(|to| {
            to.iter()
                .all(|(p, &end)| next.get(p).copied().unwrap_or(0) >= end)
        })
    }

    /// Ends a replay: the next cycle reads from the committed positions again (a Kafka
    /// consumer may have fetched past the replayed cycle).
    pub(crate) fn end_replay(&mut self) -> Result<(), SourceError> {
        if self.replay_to.take().is_none() {
            return Ok(());
        }
        if let Reader::Kafka {
            consumer, topic, ..
        } = &self.reader
        {
            let kafka_err = |source| SourceError::Kafka {
                source_name: self.plan.name.clone(),
                source,
            };
            let list = assignment(topic, &self.position).map_err(kafka_err)?;
            consumer.assign(&list).map_err(kafka_err)?;
            // Read back from there: at no partition's end until told again.
            self.at_end.clear();
        }
        Ok(())
    }
}

const LAG_INTERVAL: Duration = Duration::from_secs(5);

/// Sets `consumer_lag` per partition (high watermark minus next offset), every few seconds: each
/// measurement asks the broker.
pub(crate) fn report_consumer_lag(
    pipeline: &Pipeline,
    s: &mut SourceRuntime,
    metrics: &PipelineMetrics,
) {
    // Brokers that cannot be reached have no lag to tell (and each ask would wait its
    // timeout out).
    if s.unreachable.is_some() || s.lag_checked.is_some_and(|t| t.elapsed() < LAG_INTERVAL) {
        return;
    }
    s.lag_checked = Some(Instant::now());
    let Reader::Kafka {
        consumer,
        topic,
        targets,
        ..
    } = &s.reader
    else {
        return;
    };
    for &p in targets.keys() {
        let high =
            tokio::task::block_in_place(|| consumer.fetch_watermarks(topic, p, METADATA_TIMEOUT));
        match high {
            Ok((_, high)) => {
                let next = match s.pending.get(&p) {
                    Some(&next) => next,
                    None => s.held().get(&p).copied().unwrap_or(0),
                };
                metrics
                    .consumer_lag
                    .with_label_values(&[
                        pipeline.name.as_str(),
                        s.plan.name.as_str(),
                        &p.to_string(),
                    ])
                    .set((high - next).max(0));
            }
            Err(e) => {
                tracing::warn!(
                    "source {}: cannot read the watermarks of partition {p}: {e}",
                    s.plan.name
                );
                break;
            }
        }
    }
}

/// Commits the source's positions (the offsets the Delta tables hold) to its consumer group, so
/// `kafka-consumer-groups.sh --describe` and lag exporters see true lag. Delta stays the
/// source of truth: a start reads the tables' offsets, never the group's, so a commit that fails
/// or is lost only delays what the group shows; a commit librdkafka refuses at once is logged,
/// never raised (an asynchronous one that fails later is not reported).
pub(crate) fn commit_to_group(s: &SourceRuntime, mode: CommitMode) {
    if let (Some(offsets), Reader::Kafka { topic, .. }) = (&s.group_offsets, &s.reader) {
        offsets.record(topic, &s.held());
        return;
    }
    let Reader::Kafka {
        consumer, topic, ..
    } = &s.reader
    else {
        return;
    };
    let mut list = TopicPartitionList::new();
    for (&p, &next) in &s.position {
        if let Err(e) = list.add_partition_offset(topic, p, Offset::Offset(next)) {
            tracing::warn!(
                "source {}: offset {next} of partition {p}: {e}",
                s.plan.name
            );
            return;
        }
    }
    let committed = match mode {
        CommitMode::Sync => tokio::task::block_in_place(|| consumer.commit(&list, mode)),
        CommitMode::Async => consumer.commit(&list, mode),
    };
    if let Err(e) = committed {
        tracing::warn!(
            "source {}: cannot commit offsets to the consumer group (lag tools lag behind; the \
             Delta tables hold the offsets): {e}",
            s.plan.name
        );
    }
}

/// After a cycle's Delta commits, which waited for the checkpoint of the cycle before: a
/// shard's repartition topic is read again after a restart from no earlier than `checkpointed`
/// (that checkpoint's positions), so what comes before may go.
pub(crate) fn release_checkpointed(s: &SourceRuntime, checkpointed: &HashMap<i32, i64>) {
    if let (
        Some(offsets),
        Reader::Kafka {
            topic,
            upstream: true,
            ..
        },
    ) = (&s.group_offsets, &s.reader)
    {
        offsets.record_checkpointed(topic, checkpointed);
    }
}

/// Whether the source has been read (not necessarily committed) up to where it ended at start.
pub(crate) fn caught_up(s: &SourceRuntime) -> bool {
    match &s.reader {
        Reader::Kafka { targets, .. } => targets.iter().all(|(p, &t)| {
            let read = s.pending.get(p).or(s.position.get(p));
            t <= 0 || read.is_some_and(|&o| o >= t)
        }),
        Reader::File { eof, .. } => *eof,
        Reader::Empty => false,
    }
}

impl SourceRuntime {
    /// Decodes one event; an invalid one goes to the dead letters. Records the offset and,
    /// for a valid event, its event time for the watermark of partition `clock` (its own,
    /// or the source partition a repartition topic's record came from).
    #[allow(clippy::too_many_arguments)]
    fn accept(
        &mut self,
        polled: &mut Polled,
        invalid: &prometheus::IntCounter,
        topic: &str,
        partition: i32,
        clock: i32,
        offset: i64,
        key: Option<&[u8]>,
        payload: &[u8],
        now: i64,
    ) -> Result<(), SourceError> {
        polled.events += 1;
        match self.decoder.decode(payload) {
            Ok(()) => {
                if let Some(t) = self.decoder.last_event_time() {
                    self.watermark.observe(clock, t, now);
                    // A partition that sends only invalid records is idle as before.
                    if !self.at_end.is_empty() {
                        self.at_end.remove(&partition);
                    }
                }
            }
            Err(_) if self.replay_to.is_some() => {
                // Replaying a cycle some sink committed: its dead letters were delivered.
                invalid.inc();
                polled.invalid += 1;
            }
            Err(e) => {
                invalid.inc();
                polled.invalid += 1;
                let letter = DeadLetter {
                    key,
                    payload,
                    topic,
                    partition,
                    offset,
                    reason: e.to_string(),
                    time_ms: now / 1000,
                };
                match &mut self.dead_letters {
                    DeadLetters::File { lines, .. } => lines.extend(letter.json_line()),
                    DeadLetters::Topic { producer, sent } => {
                        let mut record = letter.record(&self.plan.dead_letter_topic);
                        // A flood of invalid events can fill the producer's queue: wait for
                        // deliveries to make room (this runs on a blocking section).
                        let waited = Instant::now();
                        loop {
                            match producer.send_result(record) {
                                Ok(d) => break sent.push(d),
                                Err((
                                    KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                                    r,
                                )) if waited.elapsed() < QUEUE_FULL_WAIT => {
                                    record = r;
                                    std::thread::sleep(Duration::from_millis(10));
                                }
                                Err((e, _)) => {
                                    return Err(SourceError::DeadLetter {
                                        topic: self.plan.dead_letter_topic.clone(),
                                        message: e.to_string(),
                                    });
                                }
                            }
                        }
                    }
                }
            }
        }
        self.pending.insert(partition, offset + 1);
        self.pending_events += 1;
        self.pending_bytes += payload.len();
        Ok(())
    }
}

/// Whether a consumer error says the brokers cannot be reached for now.
fn is_outage(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        code,
        BrokerTransportFailure
            | AllBrokersDown
            | Resolve
            | TimedOutQueue
            | LeaderNotAvailable
            | NotLeaderForPartition
            | RequestTimedOut
            | BrokerNotAvailable
            | NetworkException
            | CoordinatorNotAvailable
            | NotCoordinator
    )
}

/// Reads what is available (up to one poll interval, at most `max_rows` events, stopping once
/// the source holds `max_bytes` of them since its last flush).
pub(crate) fn poll_source(
    pipeline: &Pipeline,
    s: &mut SourceRuntime,
    metrics: &PipelineMetrics,
    max_rows: usize,
    max_bytes: usize,
    until: Option<Until>,
) -> Result<Polled, SourceError> {
    let source_name = s.plan.name.clone();
    let labels = [pipeline.name.as_str(), source_name.as_str()];
    let invalid = metrics.events_invalid.with_label_values(&labels);
    let mut now = now_us();
    let mut polled = Polled::default();
    // Take the reader out so that `accept` may borrow the rest of the source mutably.
    let mut reader = std::mem::replace(&mut s.reader, Reader::Empty);
    // One blocking section for the whole read: librdkafka's poll blocks the thread.
    let result = tokio::task::block_in_place(|| {
        match &mut reader {
            Reader::Kafka {
                consumer,
                topic,
                upstream,
                ..
            } => {
                if let Some(f) = &mut s.forwarder {
                    f.check()?;
                    let partition = s.position.keys().min().copied().unwrap_or(0);
                    let next = s.pending.get(&partition).or(s.position.get(&partition));
                    let reading = Reading {
                        consumer,
                        topic,
                        partition,
                        next: next.copied().unwrap_or(0),
                    };
                    for p in f.waiting(&s.watermark.partitions(), &reading) {
                        s.watermark.hold(p, now_us());
                    }
                }
                // Taken after the look above, which may wait on the brokers for seconds:
                // that wait is no partition's silence.
                now = now_us();
                // A repartition partition carries every source partition's records: its end
                // tells nothing of one source partition's, and holding them all while it is
                // read would keep a silent source partition from ever going idle. The
                // forwarders' progress, and how far this reader has read since, tell that
                // instead (`Forwarder::waiting`).
                if !*upstream {
                    for p in s.held_back() {
                        s.watermark.hold(p, now);
                    }
                }
                for _ in 0..max_rows {
                    if s.pending_bytes >= max_bytes {
                        break;
                    }
                    let m = match consumer.poll(POLL) {
                        None => break,
                        // A broker gone or a connection lost: librdkafka reconnects, and the
                        // run loop waits for it (see `SourceRuntime::unreachable`). Any other
                        // error (an offset out of range, a topic gone, no authorisation) stops
                        // the run.
                        Some(Err(KafkaError::MessageConsumption(code))) if is_outage(code) => {
                            s.unreachable = Some(code.to_string());
                            break;
                        }
                        // Read to the partition's end: from now its silence is idleness.
                        Some(Err(KafkaError::PartitionEOF(p))) => {
                            s.at_end.insert(p);
                            continue;
                        }
                        Some(Err(source)) => {
                            return Err(SourceError::Kafka {
                                source_name: s.plan.name.clone(),
                                source,
                            });
                        }
                        Some(Ok(m)) => m,
                    };
                    let past_replay = s
                        .replay_to
                        .as_ref()
                        .is_some_and(|to| to.get(&m.partition()).is_none_or(|&e| m.offset() >= e));
                    if past_replay {
                        // Read again once the replayed cycle is committed.
                        continue;
                    }
                    let payload = m.payload().unwrap_or_default();
                    let clock = match upstream {
                        true => upstream_of(m.headers()).unwrap_or(m.partition()),
                        false => m.partition(),
                    };
                    s.accept(
                        &mut polled,
                        &invalid,
                        topic,
                        m.partition(),
                        clock,
                        m.offset(),
                        m.key(),
                        payload,
                        now,
                    )?;
                    let appended = m.timestamp().to_millis();
                    if let Some(t) = appended {
                        s.oldest_append_ms = Some(s.oldest_append_ms.map_or(t, |o| o.min(t)));
                        s.newest_append_ms = Some(s.newest_append_ms.map_or(t, |o| o.max(t)));
                    }
                    if let Some(until) = until {
                        // A message without a timestamp is not taken for a live one.
                        let live = appended.is_some_and(|appended| {
                            (now_us() / 1_000).saturating_sub(appended) < LIVE
                        });
                        if live
                            && (Instant::now() >= until.deadline
                                || s.watermark.peek(now_us()) >= until.closes_at)
                        {
                            polled.until_reached = true;
                            break;
                        }
                    }
                }
                // A message read, or with nothing arriving the brokers answering, says the
                // outage is over.
                if polled.events > 0 {
                    s.unreachable = None;
                } else if s.unreachable.is_some() {
                    let partition = s.position.keys().min().copied().unwrap_or(0);
                    if consumer.fetch_watermarks(topic, partition, PROBE).is_ok() {
                        s.unreachable = None;
                    }
                }
            }
            Reader::File {
                path,
                lines,
                next,
                eof,
                partial,
            } => {
                let mut buf = Vec::with_capacity(512);
                let limit = match s.replay_to.as_ref().and_then(|to| to.get(&0)) {
                    Some(&end) => max_rows.min(end.saturating_sub(*next).max(0) as usize),
                    None => max_rows,
                };
                for i in 0..limit {
                    if s.pending_bytes >= max_bytes {
                        break;
                    }
                    buf.clear();
                    buf.append(partial);
                    std::io::BufRead::read_until(lines, b'\n', &mut buf)
                        .map_err(|e| SourceError::Read(s.plan.name.clone(), e.to_string()))?;
                    // At the end of what is there: a live read waits for the rest of a line
                    // still being written; a backfill takes a last line without its newline.
                    if buf.last() != Some(&b'\n') && (until.is_some() || buf.is_empty()) {
                        std::mem::swap(partial, &mut buf);
                        *eof = true;
                        if i == 0 {
                            // Nothing more yet: wait for lines to be appended as a Kafka poll
                            // waits for records, rather than come straight back and spin.
                            std::thread::sleep(POLL);
                        }
                        break;
                    }
                    let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
                    if line.iter().all(u8::is_ascii_whitespace) {
                        // Not an event; only its offset is recorded.
                        s.pending.insert(0, *next + 1);
                    } else {
                        s.accept(&mut polled, &invalid, path, 0, 0, *next, None, line, now)?;
                    }
                    *next += 1;
                }
            }
            Reader::Empty => {}
        }
        Ok(())
    });
    s.reader = reader;
    metrics
        .events_in
        .with_label_values(&labels)
        .inc_by(polled.events);
    result.map(|()| polled)
}

/// Of the watermark's `partitions`, those whose silence is not idleness: not read to their end
/// since their last event (`at_end` holds those that are).
fn not_at_end(partitions: Vec<i32>, at_end: &HashSet<i32>) -> Vec<i32> {
    partitions
        .into_iter()
        .filter(|p| !at_end.contains(p))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::watermark::WatermarkTracker;

    /// Partition 1 is silent for longer than the idle timeout, not read to its end (its fetch
    /// waits behind partition 0's backlog): it holds the watermark at its last event, so its
    /// next events are not late. Once read to its end, its silence is idleness again.
    #[test]
    fn a_partition_not_read_to_its_end_does_not_go_idle() {
        const S: i64 = 1_000_000;
        let mut watermark = WatermarkTracker::new(0, 5 * S);
        watermark.assign(&[0, 1], 0);
        watermark.observe(0, 100 * S, 0);
        watermark.observe(1, 40 * S, 0);
        let mut read_to_end = HashSet::new();
        for now in [4 * S, 8 * S, 12 * S, 18 * S] {
            if now == 18 * S {
                read_to_end.insert(1);
                assert_eq!(not_at_end(watermark.partitions(), &read_to_end), vec![0]);
            }
            watermark.observe(0, 100 * S + now, now);
            for p in not_at_end(watermark.partitions(), &read_to_end) {
                watermark.hold(p, now);
            }
            let want = match now {
                // Partition 1 idles; partition 0 sets the watermark.
                n if n == 18 * S => 118 * S,
                _ => 40 * S,
            };
            assert_eq!(watermark.watermark(now), want, "at {now} µs");
        }
    }

    /// A metadata request that timed out (a worker resumed after a pause) or found no broker
    /// is waited out; a topic that does not exist is not.
    #[test]
    fn timeouts_and_unreachable_brokers_are_outages_a_missing_topic_is_not() {
        let kafka = |code| SourceError::Kafka {
            source_name: "metrics".into(),
            source: KafkaError::MetadataFetch(code),
        };
        assert!(kafka(RDKafkaErrorCode::OperationTimedOut).is_outage());
        assert!(kafka(RDKafkaErrorCode::AllBrokersDown).is_outage());
        assert!(!kafka(RDKafkaErrorCode::UnknownTopicOrPartition).is_outage());
        assert!(!SourceError::Read("metrics".into(), "topic t does not exist".into()).is_outage());
    }
}
