//! The Kafka sink: each row as one keyed JSON record, through the idempotent producer.
//!
//! In: result batches. Out: one record per row on the topic — the value is the row as a JSON
//! object (timestamps as RFC 3339), the key is the key columns' values joined by `|`, and the
//! header `stratus.record_id` is a deterministic id (`<sink>|<key>|<alert_id or rec_id>|<window_start>|<revision>`,
//! of those columns the rows have), so a consumer can drop a record repeated after a restart.
//! [`KafkaSink::send`] returns once every record is acknowledged by the broker.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{RecordBatch, StructArray};
use arrow::datatypes::{DataType, Field};
use arrow::error::ArrowError;
use arrow::json::writer::make_encoder;
use arrow::util::display::FormatOptions;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::future_producer::OwnedDeliveryResult;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

use super::utc_text::{ColumnText, UtcTimestamps};

/// Why rows could not be published.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSinkError {
    #[error("Kafka sink {1}: encoding a row: {0}")]
    Encode(ArrowError, String),
    #[error("Kafka sink {sink} → {topic}: {source}")]
    Produce {
        sink: String,
        topic: String,
        source: Box<KafkaError>,
    },
}

pub const HEADER_RECORD_ID: &str = "stratus.record_id";

/// Rows encoded before they are handed to the producer.
const ENCODED_AT_ONCE: usize = 4096;

/// Publishes rows to one topic.
pub struct KafkaSink {
    name: String,
    topic: String,
    key: Vec<String>,
    /// Columns sent as headers.
    headers: Vec<String>,
    producer: FutureProducer,
}

impl KafkaSink {
    pub fn new(name: &str, topic: &str, key: Vec<String>, producer: FutureProducer) -> Self {
        KafkaSink {
            name: name.to_string(),
            topic: topic.to_string(),
            key,
            headers: Vec::new(),
            producer,
        }
    }

    /// Sends the values of `columns` as record headers named after them.
    pub fn with_headers(mut self, columns: Vec<String>) -> Self {
        self.headers = columns;
        self
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Publishes every row of `batches` and waits for the acknowledgements; returns the count.
    ///
    /// Every record is handed to the producer before any acknowledgement is awaited, so the
    /// broker's round trips overlap the encoding of the next batch instead of following it.
    pub async fn send(&self, batches: &[RecordBatch]) -> Result<usize, KafkaSinkError> {
        let mut deliveries = VecDeque::new();
        for batch in batches.iter().filter(|b| b.num_rows() > 0) {
            // A slice at a time: a window of 100,000 keys firing is 100,000 records, and their
            // JSON need not all be held at once (librdkafka copies each payload).
            for offset in (0..batch.num_rows()).step_by(ENCODED_AT_ONCE) {
                let rows = ENCODED_AT_ONCE.min(batch.num_rows() - offset);
                self.enqueue(&batch.slice(offset, rows), &mut deliveries)
                    .await?;
            }
        }
        // (A full local queue made `enqueue` await some already.)
        while let Some(d) = deliveries.pop_front() {
            self.delivered(d.await)?;
        }
        Ok(batches.iter().map(RecordBatch::num_rows).sum())
    }

    async fn enqueue(
        &self,
        batch: &RecordBatch,
        deliveries: &mut VecDeque<DeliveryFuture>,
    ) -> Result<(), KafkaSinkError> {
        let encode_err = |e| KafkaSinkError::Encode(e, self.name.clone());
        let encoded = encode_rows(batch, &self.key).map_err(encode_err)?;
        let ids = record_ids(batch, &self.name, &encoded.keys).map_err(encode_err)?;
        let header_values = self
            .headers
            .iter()
            .map(|c| join_columns(batch, std::slice::from_ref(c)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(encode_err)?;
        for (i, ((value, key), id)) in encoded.values().zip(&encoded.keys).zip(&ids).enumerate() {
            let mut headers =
                OwnedHeaders::new_with_capacity(1 + self.headers.len()).insert(Header {
                    key: HEADER_RECORD_ID,
                    value: Some(id.as_bytes()),
                });
            for (name, values) in self.headers.iter().zip(&header_values) {
                headers = headers.insert(Header {
                    key: name.as_str(),
                    value: Some(values[i].as_bytes()),
                });
            }
            let mut record = FutureRecord::to(&self.topic)
                .payload(value)
                .key(key.as_bytes())
                .headers(headers);
            loop {
                match self.producer.send_result(record) {
                    Ok(d) => {
                        deliveries.push_back(d);
                        break;
                    }
                    // The local queue is full: wait for the oldest record in it, then retry.
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        match deliveries.pop_front() {
                            Some(d) => self.delivered(d.await)?,
                            None => tokio::time::sleep(Duration::from_millis(10)).await,
                        }
                    }
                    Err((source, _)) => return Err(self.produce_err(source)),
                }
            }
        }
        Ok(())
    }

    fn delivered(
        &self,
        result: Result<OwnedDeliveryResult, futures::channel::oneshot::Canceled>,
    ) -> Result<(), KafkaSinkError> {
        let failed = match result {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err((source, _))) => source,
            Err(_) => KafkaError::Canceled,
        };
        Err(self.produce_err(failed))
    }

    fn produce_err(&self, source: KafkaError) -> KafkaSinkError {
        KafkaSinkError::Produce {
            sink: self.name.clone(),
            topic: self.topic.clone(),
            source: Box::new(source),
        }
    }
}

/// Rows of a batch as JSON objects, with their keys.
pub struct EncodedRows {
    /// Every row's object, one after another: row `i` ends at `ends[i]`.
    json: Vec<u8>,
    ends: Vec<usize>,
    pub keys: Vec<String>,
}

impl EncodedRows {
    /// Row `i`'s JSON object.
    pub fn value(&self, i: usize) -> &[u8] {
        let start = i.checked_sub(1).map_or(0, |p| self.ends[p]);
        &self.json[start..self.ends[i]]
    }

    /// Every row's JSON object, in order.
    pub fn values(&self) -> impl Iterator<Item = &[u8]> {
        (0..self.ends.len()).map(|i| self.value(i))
    }
}

/// Encodes each row as a JSON object and forms its key from `key_columns`.
pub fn encode_rows(batch: &RecordBatch, key_columns: &[String]) -> Result<EncodedRows, ArrowError> {
    let array = StructArray::from(batch.clone());
    let field = Arc::new(Field::new(
        "row",
        DataType::Struct(batch.schema().fields().clone()),
        false,
    ));
    let options = UtcTimestamps::options();
    let mut encoder = make_encoder(&field, &array, &options)?;
    let mut json = Vec::with_capacity(256 * batch.num_rows());
    let mut ends = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        encoder.encode(i, &mut json);
        ends.push(json.len());
    }
    let keys = join_columns(batch, key_columns)?;
    Ok(EncodedRows { json, ends, keys })
}

/// For each row, the display values of `columns` joined by `|` (nulls empty; an empty string
/// without columns).
fn join_columns(batch: &RecordBatch, columns: &[String]) -> Result<Vec<String>, ArrowError> {
    join_columns_after(batch, columns, |_| [""; 3])
}

/// As [`join_columns`], each row's string starting with the pieces `prefix` gives for it:
/// one allocation per row, sized for what it will hold.
fn join_columns_after<'p>(
    batch: &RecordBatch,
    columns: &[String],
    prefix: impl Fn(usize) -> [&'p str; 3],
) -> Result<Vec<String>, ArrowError> {
    let options = FormatOptions::default().with_null("");
    let arrays = columns
        .iter()
        .map(|c| {
            batch
                .column_by_name(c)
                .ok_or_else(|| ArrowError::SchemaError(format!("column `{c}` is not in the rows")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let formatters = arrays
        .iter()
        .map(|a| ColumnText::try_new(a.as_ref(), &options))
        .collect::<Result<Vec<_>, _>>()?;
    (0..batch.num_rows())
        .map(|i| {
            let pieces = prefix(i);
            let mut row = String::with_capacity(
                pieces.iter().map(|p| p.len()).sum::<usize>() + 32 * formatters.len(),
            );
            pieces.iter().for_each(|p| row.push_str(p));
            for (n, f) in formatters.iter().enumerate() {
                if n > 0 {
                    row.push('|');
                }
                f.write(i, &mut row)?;
            }
            Ok(row)
        })
        .collect()
}

/// Each row's `stratus.record_id`: `<sink>|<key>|` then its `alert_id`, `rec_id`,
/// `window_start` and `revision`, of those the rows have, joined by `|`.
fn record_ids(batch: &RecordBatch, sink: &str, keys: &[String]) -> Result<Vec<String>, ArrowError> {
    let extra: Vec<String> = ["alert_id", "rec_id", "window_start", "revision"]
        .into_iter()
        .filter(|c| batch.schema().field_with_name(c).is_ok())
        .map(str::to_string)
        .collect();
    let sink = format!("{sink}|");
    join_columns_after(batch, &extra, |i| [sink.as_str(), keys[i].as_str(), "|"])
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int32Array, StringArray, TimestampMicrosecondArray};
    use arrow::datatypes::{Schema, TimeUnit};

    #[test]
    fn rows_become_keyed_json_with_deterministic_ids() {
        let schema = Schema::new(vec![
            Field::new("resource_id", DataType::Utf8, false),
            Field::new("metric", DataType::Utf8, false),
            Field::new(
                "window_start",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
            Field::new("mean", DataType::Float64, true),
            Field::new("revision", DataType::Int32, false),
        ]);
        let batch = RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(StringArray::from(vec!["i-1", "i-2"])),
                Arc::new(StringArray::from(vec!["CPU", "CPU"])),
                Arc::new(
                    TimestampMicrosecondArray::from(vec![1_750_000_020_000_000; 2])
                        .with_timezone("UTC"),
                ),
                Arc::new(Float64Array::from(vec![Some(1.5), None])),
                Arc::new(Int32Array::from(vec![0, 1])),
            ],
        )
        .unwrap();
        let rows = encode_rows(&batch, &["resource_id".into(), "metric".into()]).unwrap();
        assert_eq!(
            String::from_utf8(rows.value(0).to_vec()).unwrap(),
            r#"{"resource_id":"i-1","metric":"CPU","window_start":"2025-06-15T15:07:00Z","mean":1.5,"revision":0}"#
        );
        assert_eq!(rows.keys, ["i-1|CPU", "i-2|CPU"]);
        let ids = record_ids(&batch, "f", &rows.keys).unwrap();
        assert_eq!(ids[1], "f|i-2|CPU|2025-06-15T15:07:00Z|1");
    }
}
