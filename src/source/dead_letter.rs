//! Dead letters: invalid events, kept with everything needed to find and replay them.
//!
//! In: an event that failed decoding, its source coordinates and the reason. Out: a Kafka
//! record for the dead-letter topic whose value is the original bytes, unchanged, and whose
//! key is the original key; the context travels in headers, as Kafka Connect's dead-letter
//! queues do:
//! `stratus.error.reason`, `stratus.source.topic`, `stratus.source.partition`,
//! `stratus.source.offset`, `stratus.error.time` (RFC 3339, UTC). A backfill, which reaches no
//! broker, writes each as one JSON line instead ([`DeadLetter::json_line`]).
//!
//! A record must fit Kafka's default limit of 1 MB (the producer's `message.max.bytes` and the
//! topic's `max.message.bytes`): a key over 16 KiB, or a payload that with its key exceeds
//! 900 KiB, is cut to that size, and `stratus.error.truncated` says what each was — the whole
//! event stays in the source topic at the partition and offset the headers name.

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
pub const HEADER_TRUNCATED: &str = "stratus.error.truncated";

/// The most of a key a dead-letter record carries.
const MAX_KEY: usize = 16 << 10;
/// The most of a key and payload together a dead-letter record carries.
const MAX_RECORD: usize = 900 << 10;

/// `bytes` cut to at most `limit` bytes.
fn cut(bytes: &[u8], limit: usize) -> &[u8] {
    &bytes[..bytes.len().min(limit)]
}

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

    /// What of the key and payload a record carries, and how they were cut if they were.
    fn kept(&self) -> (Option<&'a [u8]>, &'a [u8], Option<String>) {
        let key = self.key.map(|k| cut(k, MAX_KEY));
        let key_len = key.map_or(0, <[u8]>::len);
        let payload = cut(self.payload, MAX_RECORD - key_len);
        let was = |what: &str, kept: usize, whole: usize| {
            (kept < whole).then(|| format!("{what} {whole} bytes, first {kept} kept"))
        };
        let notes: Vec<String> = [
            was("key", key_len, self.key.map_or(0, <[u8]>::len)),
            was("payload", payload.len(), self.payload.len()),
        ]
        .into_iter()
        .flatten()
        .collect();
        (key, payload, (!notes.is_empty()).then(|| notes.join("; ")))
    }

    /// The record to produce to `dlq_topic`.
    pub fn record(&'a self, dlq_topic: &'a str) -> FutureRecord<'a, [u8], [u8]> {
        let time = self.time();
        let (key, payload, note) = self.kept();
        let mut headers = OwnedHeaders::new_with_capacity(6)
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
        // Header values are copied in.
        if let Some(note) = &note {
            headers = headers.insert(Header {
                key: HEADER_TRUNCATED,
                value: Some(note.as_bytes()),
            });
        }
        let record = FutureRecord::to(dlq_topic)
            .payload(payload)
            .headers(headers);
        match key {
            Some(k) => record.key(k),
            None => record,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter<'a>(key: Option<&'a [u8]>, payload: &'a [u8]) -> DeadLetter<'a> {
        DeadLetter {
            key,
            payload,
            topic: "t",
            partition: 0,
            offset: 7,
            reason: "r".into(),
            time_ms: 0,
        }
    }

    #[test]
    fn a_record_fits_kafkas_default_limit_and_says_what_was_cut() {
        let small = letter(Some(b"k"), b"{}");
        assert_eq!(small.kept(), (Some(&b"k"[..]), &b"{}"[..], None));

        let key = vec![b'k'; 1 << 20];
        let payload = vec![b'x'; 10 << 20];
        let big = letter(Some(&key), &payload);
        let (k, p, note) = big.kept();
        assert_eq!(k.unwrap().len(), MAX_KEY);
        assert_eq!(k.unwrap().len() + p.len(), MAX_RECORD);
        assert_eq!(
            note.unwrap(),
            "key 1048576 bytes, first 16384 kept; payload 10485760 bytes, first 905216 kept"
        );
    }
}
