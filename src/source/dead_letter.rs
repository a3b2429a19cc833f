//! Dead letters: invalid events, kept with everything needed to find and replay them.
//!
//! In: an event that failed decoding, its source coordinates and the reason. Out: a Kafka
//! record for the dead-letter topic whose value is the original bytes, unchanged, and whose
//! key is the original key; the context travels in headers, as Kafka Connect's dead-letter
//! queues do:
//! `stratus.error.reason`, `stratus.source.topic`, `stratus.source.partition`,
//! `stratus.source.offset`, `stratus.error.time` (RFC 3339, UTC). A backfill, which reaches no
//! broker, writes each as one JSON line instead ([`DeadLetter::json_line`]).

use base64::Engine;
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
    /// The dead letter as one JSON line (for a backfill's dead-letter file): the context under
    /// the header names, and the key and the payload — as text when they are UTF-8, else
    /// base64 under `key_base64` / `payload_base64` — so nothing is lost.
    pub fn json_line(&self) -> Vec<u8> {
        let mut line = serde_json::Map::new();
        line.insert(HEADER_REASON.into(), self.reason.clone().into());
        line.insert(HEADER_TOPIC.into(), self.topic.into());
        line.insert(HEADER_PARTITION.into(), self.partition.into());
        line.insert(HEADER_OFFSET.into(), self.offset.into());
        line.insert(HEADER_TIME.into(), self.time().into());
        let mut bytes = |name: &str, value: &[u8]| match std::str::from_utf8(value) {
            Ok(text) => line.insert(name.into(), text.into()),
            Err(_) => line.insert(
                format!("{name}_base64"),
                base64::engine::general_purpose::STANDARD
                    .encode(value)
                    .into(),
            ),
        };
        if let Some(key) = self.key {
            bytes("key", key);
        }
        bytes("payload", self.payload);
        let mut out = serde_json::Value::Object(line).to_string().into_bytes();
        out.push(b'\n');
        out
    }

    /// When it was rejected, RFC 3339 UTC.
    fn time(&self) -> String {
        chrono::DateTime::from_timestamp_millis(self.time_ms)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_default()
    }

    /// The record to produce to `dlq_topic`.
    pub fn record(&'a self, dlq_topic: &'a str) -> FutureRecord<'a, [u8], [u8]> {
        let time = self.time();
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
