//! Re-keying a source for a consumer group, as Kafka Streams does: its records are forwarded,
//! unchanged, to the pipeline's repartition topic for it, keyed by the fields its stages keep
//! their state by (see `crate::pipeline::partitioning`), so that each key's rows meet in one
//! partition whichever partition of the source they were produced to.
//!
//! In: partition N of the source's topic, from where the forwarder's own consumer group
//! (`<group>.repartition`) says it stopped. Out: each record to the repartition topic (which has
//! as many partitions), keyed by its fields' values as a producer keyed by them would key it
//! (one field: its text; several: a JSON array of them), hashed as Java clients hash keys
//! (murmur2), with a [`UPSTREAM`] header naming partition N. Exactly once: each batch is one
//! Kafka transaction that also commits the source offsets it read up to, and the shard reads the
//! repartition topic `read_committed`. The transactional id names the source's partition, so a
//! new owner of partition N fences the old one's producer (a paused "zombie" worker can commit
//! nothing more). A record whose fields cannot be read is forwarded without a key: the shard
//! that reads it sends it to the dead letters, as it would have from the source.
//!
//! Per-key order holds within each upstream partition, but records of different upstream
//! partitions interleave in a repartition partition: the reader keeps its watermark per upstream
//! partition (from the header), so one lagging forwarder makes nothing late.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

use super::SourceError;
use super::reader::SourceConsumer;
use crate::kafka::KafkaConnection;
use crate::pipeline::{Pipeline, SourceInput};

/// The record header naming the source partition a forwarded record was read from.
pub const UPSTREAM: &str = "stratus.upstream.partition";

/// How long a forwarder gathers records into one transaction.
const BATCH_TIME: Duration = Duration::from_millis(100);
/// At most this many records per transaction.
const BATCH_RECORDS: usize = 50_000;
const TIMEOUT: Duration = Duration::from_secs(30);
/// How often a shard looks at the forwarders' progress (see [`Forwarder::waiting`]).
const LOOK_EVERY: Duration = Duration::from_secs(2);
/// How long a look waits for the brokers: it blocks the shard's read meanwhile, and a look
/// that gets no answer in time holds the partitions it could not tell of (see
/// [`Forwarder::waiting`]), so it must end well within an idle timeout.
const LOOK_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a transaction that failed and was aborted waits before it is tried again.
const BACKOFF: Duration = Duration::from_secs(1);

/// What a forwarder needs to know.
pub(crate) struct Route<'a> {
    pub source: &'a str,
    /// The source's topic and its consumer group.
    pub topic: &'a str,
    pub group: &'a str,
    pub partition: i32,
    /// The repartition topic and the fields its records are keyed by.
    pub to: &'a str,
    pub by: &'a [String],
}

/// Why a forwarder stopped.
#[derive(Debug, Clone)]
struct Failure {
    message: String,
    /// Its producer was fenced out by a newer owner of the partition.
    fenced: bool,
}

/// A running forwarder of one source partition; it stops (between transactions) when dropped.
pub(crate) struct Forwarder {
    source: String,
    stop: Arc<AtomicBool>,
    failed: Arc<Mutex<Option<Failure>>>,
    thread: Option<JoinHandle<()>>,
    /// Reads the forwarders' group offsets: where each source partition's forwarder is.
    watch: BaseConsumer,
    topic: String,
    /// Per source partition forwarded to its end: the forwarders' group offset then, and the
    /// repartition partition's end when that was first seen (the shard has read all of it once
    /// it has read to there).
    caught_up: HashMap<i32, (i64, i64)>,
    looked: Option<Instant>,
}

/// The shard's reader of the repartition topic: its consumer, the partition it reads, and the
/// next offset it has taken a record from (or was assigned to read from).
pub(crate) struct Reading<'a> {
    pub consumer: &'a SourceConsumer,
    pub topic: &'a str,
    pub partition: i32,
    pub next: i64,
}

impl Forwarder {
    /// Starts forwarding: once its producer has fenced out any earlier one of the partition and
    /// the forwarder knows where to resume.
    pub(crate) fn start(kafka: &KafkaConnection, route: &Route<'_>) -> Result<Self, SourceError> {
        let err = |source: KafkaError| SourceError::Kafka {
            source_name: route.source.to_string(),
            source,
        };
        let group = format!("{}.repartition", route.group);
        let consumer: BaseConsumer = kafka.consumer(&group).create().map_err(err)?;
        let producer: ThreadedProducer<_> = kafka
            .producer()
            .set(
                "transactional.id",
                format!("{group}.{}.{}", route.source, route.partition),
            )
            .set("partitioner", "murmur2_random")
            .create()
            .map_err(err)?;
        let mut forward = Forward {
            consumer,
            producer,
            topic: route.topic.to_string(),
            partition: route.partition,
            to: route.to.to_string(),
            by: route.by.to_vec(),
            header: route.partition.to_string(),
            open: false,
            committed: None,
        };
        tokio::task::block_in_place(|| -> Result<(), KafkaError> {
            forward.producer.init_transactions(TIMEOUT)?;
            forward.rewind()
        })
        .map_err(err)?;
        tracing::info!(
            "source {}: partition {} forwarded to {} keyed by ({})",
            route.source,
            route.partition,
            route.to,
            route.by.join(", ")
        );
        let stop = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(Mutex::new(None));
        let thread = std::thread::Builder::new()
            .name(format!("repartition-{}-{}", route.source, route.partition))
            .spawn({
                let (stop, failed, source) =
                    (stop.clone(), failed.clone(), route.source.to_string());
                move || {
                    if let Err(e) = forward.run(&stop) {
                        let failure = Failure {
                            message: e.to_string(),
                            fenced: is_fenced(&e),
                        };
                        tracing::warn!("source {source}: forwarding stopped: {}", failure.message);
                        *failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(failure);
                    }
                }
            })
            .map_err(|e| SourceError::Read(route.source.to_string(), e.to_string()))?;
        Ok(Forwarder {
            source: route.source.to_string(),
            stop,
            failed,
            thread: Some(thread),
            watch: kafka.consumer(&group).create().map_err(err)?,
            topic: route.topic.to_string(),
            caught_up: HashMap::new(),
            looked: None,
        })
    }

    /// Of the source's `partitions`, those whose events the shard must wait for, looked at
    /// every [`LOOK_EVERY`] (none between). A shard's watermark holds them back (see
    /// [`WatermarkTracker::hold`](crate::window::WatermarkTracker::hold)) rather than count
    /// them idle, and their records late when they come. A partition's silence is idleness
    /// only once its shard has read all it ever forwarded: its forwarder has forwarded (and
    /// committed) everything the source partition holds, and the `reader` has read the
    /// repartition partition past where it ended when that was first seen. So each is held:
    /// - while records wait in it to be forwarded (its worker died or lost it, and its next
    ///   owner will forward them; or its forwarder is on its way through them);
    /// - while the reader has not yet reached what its forwarder last forwarded (a shard that
    ///   took the partition over reads a backlog of the others' records first; a transaction
    ///   left open by a forwarder that died hides what follows it from a `read_committed`
    ///   reader until the partition's next owner aborts it);
    /// - while its end, or the repartition partition's, cannot be read in time;
    /// - every partition, while the forwarders' committed offsets cannot be read in time (a
    ///   dead forwarder's open transaction keeps them pending; their group is rebalancing).
    ///
    /// Brokers that refuse to tell the forwarders' offsets (an error other than a timeout)
    /// hold nothing: the watermark goes on as for a source read directly.
    pub(crate) fn waiting(&mut self, partitions: &[i32], reader: &Reading<'_>) -> Vec<i32> {
        if self.looked.is_some_and(|t| t.elapsed() < LOOK_EVERY) {
            return Vec::new();
        }
        self.looked = Some(Instant::now());
        // How far the reader has read: its position (past the markers that close
        // transactions), or where it was assigned to read from if it has read nothing since.
        let position = position_of(reader.consumer, reader.topic, reader.partition);
        let read = position.unwrap_or(0).max(reader.next);
        let mut list = TopicPartitionList::new();
        for &p in partitions {
            list.add_partition(&self.topic, p);
        }
        let committed = match self.watch.committed_offsets(list, LOOK_TIMEOUT) {
            Ok(committed) => committed,
            // The forwarders' offsets cannot be read while a dead forwarder's transaction
            // holds some pending (until its partition's next owner aborts it), nor in time
            // while their group rebalances: the very moments records wait unforwarded.
            Err(e)
                if matches!(
                    e.rdkafka_error_code(),
                    Some(
                        RDKafkaErrorCode::UnstableOffsetCommit
                            | RDKafkaErrorCode::OperationTimedOut
                    )
                ) =>
            {
                return partitions.to_vec();
            }
            Err(_) => return Vec::new(),
        };
        // Read after the offsets: what they say was forwarded lies before it.
        let end = reader
            .consumer
            .fetch_watermarks(reader.topic, reader.partition, LOOK_TIMEOUT)
            .ok()
            .map(|(_, high)| high);
        let mut waiting = Vec::new();
        for &p in partitions {
            let at = match committed.find_partition(&self.topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => 0,
            };
            let forwarded = match self.watch.fetch_watermarks(&self.topic, p, LOOK_TIMEOUT) {
                Ok((low, high)) => high <= at.max(low),
                Err(_) => false,
            };
            let Some(end) = end.filter(|_| forwarded) else {
                self.caught_up.remove(&p);
                waiting.push(p);
                continue;
            };
            // Everything it holds is forwarded: it lies before the end read above, or before
            // the end seen when it was first caught up, if nothing was forwarded since.
            let upto = match self.caught_up.get(&p) {
                Some(&(seen_at, upto)) if seen_at == at => upto,
                _ => {
                    self.caught_up.insert(p, (at, end));
                    end
                }
            };
            if read < upto {
                waiting.push(p);
            }
        }
        waiting
    }

    /// Whether it is still forwarding: the error it stopped on, if it did.
    pub(crate) fn check(&self) -> Result<(), SourceError> {
        match &*self.failed.lock().unwrap_or_else(|e| e.into_inner()) {
            None => Ok(()),
            Some(f) => Err(SourceError::Repartition {
                source_name: self.source.clone(),
                message: f.message.clone(),
                fenced: f.fenced,
            }),
        }
    }
}

impl Drop for Forwarder {
    /// Stops the forwarder and waits for it (its transaction commits first): off the async
    /// worker threads when on one, so that other tasks run meanwhile.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let Some(thread) = self.thread.take() else {
            return;
        };
        let join = move || {
            let _ = thread.join();
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(join)
            }
            _ => join(),
        }
    }
}

/// The next offset `consumer` will read of `topic`'s `partition` (past the markers that close
/// transactions); none before it has read anything there.
fn position_of<X: ConsumerContext, C: Consumer<X>>(
    consumer: &C,
    topic: &str,
    partition: i32,
) -> Option<i64> {
    let list = consumer.position().ok()?;
    match list.find_partition(topic, partition)?.offset() {
        Offset::Offset(o) => Some(o),
        _ => None,
    }
}

/// Whether a producer was fenced out by a newer one of its transactional id.
fn is_fenced(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::Fenced
                | RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
        )
    )
}

/// Whether the producer cannot go on (fenced, or a fatal error): no abort can help.
fn is_fatal(e: &KafkaError) -> bool {
    is_fenced(e) || matches!(e, KafkaError::Transaction(t) if t.is_fatal())
}

struct Forward {
    consumer: BaseConsumer,
    producer: ThreadedProducer<rdkafka::producer::DefaultProducerContext>,
    topic: String,
    partition: i32,
    to: String,
    by: Vec<String>,
    /// The [`UPSTREAM`] header's value.
    header: String,
    /// A transaction is open.
    open: bool,
    /// The source offset the last committed transaction recorded, if one did.
    committed: Option<i64>,
}

impl Forward {
    fn run(&mut self, stop: &AtomicBool) -> Result<(), KafkaError> {
        while !stop.load(Ordering::Relaxed) {
            match self.batch(stop) {
                Ok(()) => {}
                Err(e) if is_fatal(&e) => return Err(e),
                Err(e) => {
                    tracing::warn!(
                        "repartition of {}/{}: {e}; {}",
                        self.topic,
                        self.partition,
                        if self.open {
                            "the transaction is aborted and tried again"
                        } else {
                            "reading again"
                        }
                    );
                    if self.open {
                        // Its records are never read: read them again from where the last
                        // transaction committed.
                        self.producer.abort_transaction(TIMEOUT)?;
                        self.open = false;
                        self.rewind()?;
                    }
                    std::thread::sleep(BACKOFF);
                }
            }
        }
        Ok(())
    }

    /// Forwards what arrives within [`BATCH_TIME`] in one transaction, with the offsets.
    fn batch(&mut self, stop: &AtomicBool) -> Result<(), KafkaError> {
        let deadline = Instant::now() + BATCH_TIME;
        let mut next = None;
        let mut forwarded = 0;
        while forwarded < BATCH_RECORDS {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let m = match self.consumer.poll(left) {
                None => break,
                Some(m) => m?,
            };
            if !self.open {
                self.producer.begin_transaction()?;
                self.open = true;
            }
            let payload = m.payload().unwrap_or_default();
            let key = key_of(payload, &self.by);
            let headers = OwnedHeaders::new().insert(Header {
                key: UPSTREAM,
                value: Some(self.header.as_str()),
            });
            // The source record's own time: a backlog forwarded late still looks as old as it is.
            let mut record = BaseRecord::to(&self.to).payload(payload).headers(headers);
            if let Some(t) = m.timestamp().to_millis() {
                record = record.timestamp(t);
            }
            if let Some(key) = &key {
                record = record.key(key.as_slice());
            }
            loop {
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r))
                        if !stop.load(Ordering::Relaxed) =>
                    {
                        record = r;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err((e, _)) => return Err(e),
                }
            }
            next = Some(m.offset() + 1);
            forwarded += 1;
        }
        // Where the consumer stands: past the records forwarded, and past the markers that
        // close a transactional source's transactions. Committed there, a source partition
        // read to its end is seen forwarded to its end (`Forwarder::waiting`), markers and all.
        let standing = position_of(&self.consumer, &self.topic, self.partition);
        let upto = match (next, standing) {
            (Some(next), standing) => standing.map_or(next, |s| s.max(next)),
            (None, Some(standing)) if self.committed.is_none_or(|c| standing > c) => standing,
            (None, _) => return Ok(()),
        };
        if !self.open {
            self.producer.begin_transaction()?;
            self.open = true;
        }
        let mut offsets = TopicPartitionList::new();
        offsets.add_partition_offset(&self.topic, self.partition, Offset::Offset(upto))?;
        let group = self.consumer.group_metadata().ok_or_else(|| {
            KafkaError::ClientCreation("the forwarder's consumer has no group".into())
        })?;
        retrying(|| {
            self.producer
                .send_offsets_to_transaction(&offsets, &group, TIMEOUT)
        })?;
        retrying(|| self.producer.commit_transaction(TIMEOUT))?;
        self.open = false;
        self.committed = Some(upto);
        Ok(())
    }

    /// Reads (again) from the offset the last committed transaction recorded, or from the
    /// partition's beginning if none did.
    fn rewind(&mut self) -> Result<(), KafkaError> {
        let mut list = TopicPartitionList::new();
        list.add_partition(&self.topic, self.partition);
        let committed = self.consumer.committed_offsets(list, TIMEOUT)?;
        self.committed = match committed
            .find_partition(&self.topic, self.partition)
            .map(|e| e.offset())
        {
            Some(Offset::Offset(o)) => Some(o),
            _ => None,
        };
        let from = self.committed.map_or(Offset::Beginning, Offset::Offset);
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&self.topic, self.partition, from)?;
        self.consumer.assign(&list)
    }
}

/// Creates the repartition topics of `pipeline`'s re-keyed sources, each with as many
/// partitions as its source's topic (replicated as the brokers' default), keeping records until
/// Stratus deletes them ([`purge`]): never by age, which could drop records not yet read. One
/// that exists already is kept (and its partition count checked where the member checks the
/// pipeline's topics).
pub async fn create_topics(pipeline: &Pipeline, kafka: &KafkaConnection) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> =
        kafka.admin().create().map_err(|e| e.to_string())?;
    let mut topics = Vec::new();
    for source in pipeline
        .sources
        .iter()
        .filter(|s| !s.repartition_by.is_empty())
    {
        let SourceInput::Kafka { topic, .. } = &source.input else {
            continue;
        };
        let metadata =
            tokio::task::block_in_place(|| admin.inner().fetch_metadata(Some(topic), TIMEOUT))
                .map_err(|e| format!("topic {topic}: {e}"))?;
        let partitions = metadata
            .topics()
            .first()
            .map_or(0, |t| t.partitions().len());
        if partitions == 0 {
            return Err(format!(
                "topic {topic} does not exist or has no partitions; create it first"
            ));
        }
        topics.push((source.repartition_topic(&pipeline.name), partitions as i32));
    }
    if topics.is_empty() {
        return Ok(());
    }
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(name, partitions)| {
            NewTopic::new(name, *partitions, TopicReplication::Fixed(-1))
                .set("retention.ms", "-1")
                .set("retention.bytes", "-1")
        })
        .collect();
    let created = admin
        .create_topics(&new, &AdminOptions::new().operation_timeout(Some(TIMEOUT)))
        .await
        .map_err(|e| e.to_string())?;
    for r in created {
        match r {
            Ok(topic) => tracing::info!("repartition topic {topic} created"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(format!("cannot create topic {topic}: {code}")),
        }
    }
    for (name, partitions) in &topics {
        until_led(&admin, name, *partitions).await?;
    }
    Ok(())
}

/// Waits until the brokers' metadata shows `topic` with its `partitions`, each with a leader:
/// a topic just created reaches the other brokers (and the metadata other clients fetch) a
/// little after the controller confirms it.
async fn until_led(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    partitions: i32,
) -> Result<(), String> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let metadata =
            tokio::task::block_in_place(|| admin.inner().fetch_metadata(Some(topic), TIMEOUT))
                .map_err(|e| format!("topic {topic}: {e}"))?;
        let led = metadata.topics().first().is_some_and(|t| {
            t.error().is_none()
                && t.partitions().len() == partitions as usize
                && t.partitions()
                    .iter()
                    .all(|p| p.error().is_none() && p.leader() >= 0)
        });
        if led {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "topic {topic} was created but its {partitions} partitions have no leader after \
                 {TIMEOUT:?}: check the brokers"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Deletes the records of repartition topics before `positions` (per topic and partition, the
/// next offset the tables hold): their rows are in the tables, and no shard reads them again.
pub(crate) async fn purge(
    admin: &AdminClient<DefaultClientContext>,
    positions: &[(&str, i32, i64)],
) -> Result<(), KafkaError> {
    let mut list = TopicPartitionList::new();
    for &(topic, partition, next) in positions {
        list.add_partition_offset(topic, partition, Offset::Offset(next))?;
    }
    let deleted = admin
        .delete_records(&list, &AdminOptions::new().operation_timeout(Some(TIMEOUT)))
        .await?;
    for e in deleted.elements() {
        e.error()?;
    }
    Ok(())
}

/// `call` again while it fails with an error librdkafka says to retry (a timeout: the call
/// may still complete, and another kind of call would fail), up to 5 times.
fn retrying(mut call: impl FnMut() -> Result<(), KafkaError>) -> Result<(), KafkaError> {
    let mut tries = 0;
    loop {
        match call() {
            Err(KafkaError::Transaction(e)) if e.is_retriable() && tries < 5 => {
                tries += 1;
                std::thread::sleep(BACKOFF);
            }
            done => return done,
        }
    }
}

/// The key a producer keyed by `by` gives the event in `payload`: one field's text, or a JSON
/// array of several; none when the payload is not a JSON object or lacks one of them.
pub(crate) fn key_of(payload: &[u8], by: &[String]) -> Option<Vec<u8>> {
    let event: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(payload).ok()?;
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    if let [one] = by {
        return text(event.get(one)?).map(String::into_bytes);
    }
    let values = by
        .iter()
        .map(|f| text(event.get(f)?))
        .collect::<Option<Vec<String>>>()?;
    serde_json::to_vec(&values).ok()
}

/// The source partition a record of a repartition topic was read from.
pub(crate) fn upstream_of(headers: Option<&rdkafka::message::BorrowedHeaders>) -> Option<i32> {
    headers?
        .iter()
        .find(|h| h.key == UPSTREAM)
        .and_then(|h| std::str::from_utf8(h.value?).ok()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_keyed_as_a_producer_keyed_by_its_fields_would_key_it() {
        let by = |f: &[&str]| f.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let event = br#"{"account_id":"123","resource_id":"i-1","cpu":7,"n":null}"#;
        assert_eq!(key_of(event, &by(&["resource_id"])), Some(b"i-1".to_vec()));
        assert_eq!(
            key_of(event, &by(&["account_id", "resource_id"])),
            Some(br#"["123","i-1"]"#.to_vec())
        );
        assert_eq!(key_of(event, &by(&["cpu"])), Some(b"7".to_vec()));
        // A field absent, null, or a payload that is no JSON object: no key.
        assert_eq!(key_of(event, &by(&["az"])), None);
        assert_eq!(key_of(event, &by(&["n"])), None);
        assert_eq!(key_of(b"\xff not json", &by(&["resource_id"])), None);
        assert_eq!(key_of(b"[1,2]", &by(&["resource_id"])), None);
    }
}
