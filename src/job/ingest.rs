//! The raw ingest job: one Kafka topic → decode + validate → the raw Delta table, exactly once.
//!
//! In: the events of every partition of one topic, from the offsets recorded in the table (or
//! the earliest offset). Out: valid events appended to the raw table (partitioned by the UTC
//! `date` of their event time) with the next offset of each partition in the same commit;
//! invalid events on the dead-letter topic, delivered before that commit so none is lost.
//! Commits happen when `flush_rows` valid rows are pending or `flush_interval` has passed since
//! the first pending event, whichever comes first.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryFuture, FutureProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::metrics::PipelineMetrics;
use crate::sink::delta::with_event_date;
use crate::sink::{DeltaSink, SinkError, SourceOffsets};
use crate::source::DeadLetter;
use crate::validate::{BatchDecoder, EventSchema, TimeBounds};

/// Why the job stopped early.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("Kafka topic {topic}: {source}")]
    Kafka { topic: String, source: KafkaError },
    #[error("dead-letter topic {topic}: delivery failed: {message}")]
    DeadLetter { topic: String, message: String },
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("building a batch: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
}

/// What the user sets for one ingest job.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub pipeline: String,
    pub topic: String,
    pub dead_letter_topic: String,
    /// The schema field that holds event time; it also gives the `date` partition.
    pub event_time_field: String,
    pub flush_rows: usize,
    pub flush_interval: Duration,
    /// How far in the future an event time may lie before the event is rejected.
    pub max_future: Duration,
}

/// Counts of what one run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngestSummary {
    pub events: u64,
    pub valid: u64,
    pub invalid: u64,
    pub commits: u64,
    /// The table version after the last commit (-1: no table yet).
    pub table_version: i64,
}

/// A running ingest job.
pub struct IngestJob {
    config: IngestConfig,
    consumer: BaseConsumer,
    producer: FutureProducer,
    decoder: BatchDecoder,
    sink: DeltaSink,
    metrics: PipelineMetrics,
    partitions: Vec<i32>,
    /// Next offset to read per partition, for what has been consumed but not committed.
    pending: SourceOffsets,
    pending_since: Option<Instant>,
    in_flight: Vec<DeliveryFuture>,
    summary: IngestSummary,
}

const POLL: Duration = Duration::from_millis(100);
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

impl IngestJob {
    /// Connects, reads the resume offsets from the table and assigns every partition.
    pub async fn start(
        config: IngestConfig,
        consumer_config: &ClientConfig,
        producer_config: &ClientConfig,
        schema: Arc<EventSchema>,
        sink: DeltaSink,
        metrics: PipelineMetrics,
    ) -> Result<Self, IngestError> {
        let kafka = |source| IngestError::Kafka {
            topic: config.topic.clone(),
            source,
        };
        let consumer: BaseConsumer = consumer_config.create().map_err(kafka)?;
        let producer: FutureProducer = producer_config.create().map_err(kafka)?;
        let metadata = tokio::task::block_in_place(|| {
            consumer.fetch_metadata(Some(&config.topic), METADATA_TIMEOUT)
        })
        .map_err(kafka)?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        let resume = sink.resume_offsets(&config.topic, &partitions).await?;
        let mut assignment = TopicPartitionList::new();
        for &p in &partitions {
            let offset = resume
                .get(&p)
                .map_or(Offset::Beginning, |&o| Offset::Offset(o));
            assignment
                .add_partition_offset(&config.topic, p, offset)
                .map_err(kafka)?;
        }
        consumer.assign(&assignment).map_err(kafka)?;
        let bounds = TimeBounds::plausible(now_us(), config.max_future.as_micros() as i64);
        let decoder = BatchDecoder::new(schema, bounds, config.flush_rows.min(1 << 16));
        let table_version = sink.table().version().map_or(-1, |v| v as i64);
        Ok(IngestJob {
            config,
            consumer,
            producer,
            decoder,
            sink,
            metrics,
            partitions,
            pending: HashMap::new(),
            pending_since: None,
            in_flight: Vec::new(),
            summary: IngestSummary {
                table_version,
                ..IngestSummary::default()
            },
        })
    }

    /// The partitions of the topic.
    pub fn partitions(&self) -> &[i32] {
        &self.partitions
    }

    pub fn summary(&self) -> &IngestSummary {
        &self.summary
    }

    /// High watermarks (the offset after the last message) of every partition now.
    pub fn high_watermarks(&self) -> Result<HashMap<i32, i64>, IngestError> {
        let mut out = HashMap::new();
        for &p in &self.partitions {
            let (_, high) = tokio::task::block_in_place(|| {
                self.consumer
                    .fetch_watermarks(&self.config.topic, p, METADATA_TIMEOUT)
            })
            .map_err(|source| IngestError::Kafka {
                topic: self.config.topic.clone(),
                source,
            })?;
            out.insert(p, high);
        }
        Ok(out)
    }

    /// Consumes until every partition has been read and committed up to `targets` (for
    /// example, the high watermarks when the run began), then returns.
    pub async fn run_to(
        &mut self,
        targets: &HashMap<i32, i64>,
    ) -> Result<IngestSummary, IngestError> {
        let mut done = self.committed_reached(targets).await?;
        while !done {
            self.poll_once()?;
            let caught_up = targets.iter().all(|(p, &t)| {
                t <= 0
                    || self
                        .pending
                        .get(&(self.config.topic.clone(), *p))
                        .is_some_and(|&o| o >= t)
            });
            if self.should_flush() || (caught_up && !self.pending.is_empty()) {
                self.flush().await?;
            }
            done = self.committed_reached(targets).await?;
        }
        Ok(self.summary.clone())
    }

    async fn committed_reached(&self, targets: &HashMap<i32, i64>) -> Result<bool, IngestError> {
        if !self.pending.is_empty() {
            return Ok(false);
        }
        let committed = self
            .sink
            .resume_offsets(&self.config.topic, &self.partitions)
            .await?;
        Ok(targets
            .iter()
            .all(|(p, &t)| t <= 0 || committed.get(p).is_some_and(|&o| o >= t)))
    }

    fn should_flush(&self) -> bool {
        self.decoder.pending_rows() >= self.config.flush_rows
            || self
                .pending_since
                .is_some_and(|t| t.elapsed() >= self.config.flush_interval)
    }

    /// Reads what is available (up to one poll interval) and decodes it.
    fn poll_once(&mut self) -> Result<(), IngestError> {
        let labels = [self.config.pipeline.as_str(), self.config.topic.as_str()];
        let events_in = self.metrics.events_in.with_label_values(&labels);
        let events_invalid = self.metrics.events_invalid.with_label_values(&labels);
        let mut timeout = POLL;
        loop {
            let polled = tokio::task::block_in_place(|| self.consumer.poll(timeout));
            let message = match polled {
                None => return Ok(()),
                Some(Err(source)) => {
                    return Err(IngestError::Kafka {
                        topic: self.config.topic.clone(),
                        source,
                    });
                }
                Some(Ok(m)) => m,
            };
            timeout = Duration::ZERO;
            events_in.inc();
            self.summary.events += 1;
            self.pending_since.get_or_insert_with(Instant::now);
            let payload = message.payload().unwrap_or_default();
            match self.decoder.decode(payload) {
                Ok(()) => self.summary.valid += 1,
                Err(e) => {
                    events_invalid.inc();
                    self.summary.invalid += 1;
                    let letter = DeadLetter {
                        key: message.key(),
                        payload,
                        topic: message.topic(),
                        partition: message.partition(),
                        offset: message.offset(),
                        reason: e.to_string(),
                        time_ms: chrono::Utc::now().timestamp_millis(),
                    };
                    let record = letter.record(&self.config.dead_letter_topic);
                    match self.producer.send_result(record) {
                        Ok(delivery) => self.in_flight.push(delivery),
                        Err((e, _)) => {
                            return Err(IngestError::DeadLetter {
                                topic: self.config.dead_letter_topic.clone(),
                                message: e.to_string(),
                            });
                        }
                    }
                }
            }
            self.pending.insert(
                (message.topic().to_string(), message.partition()),
                message.offset() + 1,
            );
            if self.decoder.pending_rows() >= self.config.flush_rows {
                return Ok(());
            }
        }
    }

    /// Waits for the dead letters, then commits the pending rows and offsets to Delta.
    pub async fn flush(&mut self) -> Result<(), IngestError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        for delivery in self.in_flight.drain(..) {
            let failed = match delivery.await {
                Ok(Ok(_)) => None,
                Ok(Err((e, _))) => Some(e.to_string()),
                Err(_) => Some("the producer was dropped".to_string()),
            };
            if let Some(message) = failed {
                return Err(IngestError::DeadLetter {
                    topic: self.config.dead_letter_topic.clone(),
                    message,
                });
            }
        }
        let batch = self.decoder.flush()?;
        let batch = with_event_date(&batch, &self.config.event_time_field)?;
        let stats = self.sink.commit(vec![batch], &self.pending).await?;
        let labels = [self.config.pipeline.as_str(), "raw"];
        self.metrics
            .rows_out
            .with_label_values(&labels)
            .inc_by(stats.rows as u64);
        self.metrics
            .delta_commit_seconds
            .with_label_values(&labels)
            .observe(stats.seconds);
        self.summary.commits += 1;
        self.summary.table_version = stats.version;
        self.pending.clear();
        self.pending_since = None;
        self.decoder.set_time_bounds(TimeBounds::plausible(
            now_us(),
            self.config.max_future.as_micros() as i64,
        ));
        Ok(())
    }
}
