//! Dead letters: invalid events, kept with everything needed to find and replay them.
//!
//! In: an event that failed decoding, its source coordinates and the reason. Out: a Kafka
//! record for the dead-letter topic whose value is the original bytes, unchanged, and whose
//! key is the original key; the context travels in headers, as Kafka Connect's dead-letter
//! queues do:
//! `stratus.error.reason`, `stratus.source.topic`, `stratus.source.partition`,
//! `stratus.source.offset`, `stratus.error.time` (RFC 3339, UTC).

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;

/// One invalid event and why it was rejected.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    pub key: Option<&'a [u8]>,
    pub payload: &'a [u8],
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub reason: String,
    /// When it was rejected, in ms since the Unix epoch.
    pub time_ms: i64,
}

pub const HEADER_REASON: &str = "stratus.error.reason";
pub const HEADER_TOPIC: &str = "stratus.source.topic";
pub const HEADER_PARTITION: &str = "stratus.source.partition";
pub const HEADER_OFFSET: &str = "stratus.source.offset";
pub const HEADER_TIME: &str = "stratus.error.time";

impl<'a> DeadLetter<'a> {
    /// The record to produce to `dlq_topic`.
    pub fn record(&'a self, dlq_topic: &'a str) -> FutureRecord<'a, [u8], [u8]> {
        let time = chrono::DateTime::from_timestamp_millis(self.time_ms)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_default();
        let headers = OwnedHeaders::new_with_capacity(5)
            .insert(Header {
                key: HEADER_REASON,
                value: Some(self.reason.as_bytes()),
            })
            .insert(Header {
                key: HEADER_TOPIC,
                value: Some(self.topic.as_bytes()),
            })
            .insert(Header {
                key: HEADER_PARTITION,
                value: Some(self.partition.to_string().as_bytes()),
            })
            .insert(Header {
                key: HEADER_OFFSET,
                value: Some(self.offset.to_string().as_bytes()),
            })
            .insert(Header {
                key: HEADER_TIME,
                value: Some(time.as_bytes()),
            });
        let record = FutureRecord::to(dlq_topic)
            .payload(self.payload)
            .headers(headers);
        match self.key {
            Some(k) => record.key(k),
            None => record,
        }
    }
}
