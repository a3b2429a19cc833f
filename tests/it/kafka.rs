//! The broker itself, through rdkafka: keys, headers and per-partition order survive a
//! round trip of 100,000 messages; and `stratus bench`'s baseline that publishes a topic's
//! records again sends the same records.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use stratus::kafka::{consumer_config, producer_config};

use crate::{create_topic, setting, unique};

const MESSAGES: usize = 100_000;
const PARTITIONS: i32 = 6;
const KEYS: usize = 1_000;

#[tokio::test(flavor = "multi_thread")]
async fn hundred_thousand_messages_keep_keys_headers_and_partition_order() {
    let brokers = setting("STRATUS_KAFKA_BROKERS");
    let topic = unique("it-roundtrip");
    create_topic(&topic, PARTITIONS).await;

    let producer: FutureProducer = producer_config(&brokers).create().unwrap();
    let keys: Vec<String> = (0..MESSAGES)
        .map(|seq| format!("key-{}", seq % KEYS))
        .collect();
    let payloads: Vec<String> = (0..MESSAGES)
        .map(|seq| format!("{{\"seq\":{seq}}}"))
        .collect();
    let mut deliveries = Vec::with_capacity(MESSAGES);
    for (seq, (key, payload)) in keys.iter().zip(&payloads).enumerate() {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "seq",
                value: Some(seq.to_string().as_bytes()),
            })
            .insert(Header {
                key: "origin",
                value: Some(b"stratus-it".as_slice()),
            });
        let record = FutureRecord::to(&topic)
            .key(key)
            .payload(payload)
            .headers(headers);
        deliveries.push(producer.send(record, Duration::from_secs(30)));
    }
    // The delivery report gives each message's partition and offset.
    let mut placed: HashMap<usize, (i32, i64)> = HashMap::with_capacity(MESSAGES);
    for (seq, d) in futures::future::join_all(deliveries)
        .await
        .into_iter()
        .enumerate()
    {
        let delivery = d.map_err(|(e, _)| e).unwrap();
        placed.insert(seq, (delivery.partition, delivery.offset));
    }

    let consumer: BaseConsumer = consumer_config(&brokers, &unique("it-group"))
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        assignment
            .add_partition_offset(&topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();

    let mut last_seq_per_partition: HashMap<i32, i64> = HashMap::new();
    let mut partition_of_key: HashMap<String, i32> = HashMap::new();
    let mut seen = vec![false; MESSAGES];
    let mut received = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while received < MESSAGES {
        assert!(
            Instant::now() < deadline,
            "only {received} of {MESSAGES} messages came back"
        );
        let Some(m) = tokio::task::block_in_place(|| consumer.poll(Duration::from_millis(500)))
        else {
            continue;
        };
        let m = m.unwrap();
        let payload = std::str::from_utf8(m.payload().unwrap()).unwrap();
        let seq: usize = payload
            .strip_prefix("{\"seq\":")
            .and_then(|s| s.strip_suffix('}'))
            .unwrap()
            .parse()
            .unwrap();
        let key = std::str::from_utf8(m.key().unwrap()).unwrap();
        assert_eq!(key, format!("key-{}", seq % KEYS));
        let headers = m.headers().unwrap();
        assert_eq!(headers.count(), 2);
        let h0 = headers.get(0);
        assert_eq!(
            (h0.key, h0.value),
            ("seq", Some(seq.to_string().as_bytes()))
        );
        let h1 = headers.get(1);
        assert_eq!(
            (h1.key, h1.value),
            ("origin", Some(b"stratus-it".as_slice()))
        );
        assert_eq!(
            placed[&seq],
            (m.partition(), m.offset()),
            "message {seq} moved"
        );
        // One key, one partition; within a partition, sequence numbers only grow.
        let p = *partition_of_key
            .entry(key.to_string())
            .or_insert(m.partition());
        assert_eq!(p, m.partition(), "key {key} spread over partitions");
        let last = last_seq_per_partition
            .insert(m.partition(), seq as i64)
            .unwrap_or(-1);
        assert!(
            seq as i64 > last,
            "partition {}: {seq} after {last}",
            m.partition()
        );
        assert!(!seen[seq], "message {seq} delivered twice");
        seen[seq] = true;
        received += 1;
    }
    assert!(seen.iter().all(|s| *s));
    assert_eq!(partition_of_key.len(), KEYS);
    assert_eq!(
        last_seq_per_partition.len(),
        PARTITIONS as usize,
        "a partition got no keys"
    );
}

/// Every record of `topic` (of `partitions`), per partition in order: key, value and headers.
type Record = (
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Vec<(String, Option<Vec<u8>>)>,
);

fn read_all(brokers: &str, topic: &str, partitions: i32, count: usize) -> Vec<Vec<Record>> {
    let consumer: BaseConsumer = consumer_config(brokers, &unique("it-group"))
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut records = vec![Vec::new(); partitions as usize];
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut received = 0;
    while received < count {
        assert!(
            Instant::now() < deadline,
            "only {received} of {count} records of {topic} came back"
        );
        let Some(m) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let m = m.unwrap();
        let headers = m.headers().map_or(Vec::new(), |h| {
            h.iter()
                .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                .collect()
        });
        records[m.partition() as usize].push((
            m.key().map(<[u8]>::to_vec),
            m.payload().map(<[u8]>::to_vec),
            headers,
        ));
        received += 1;
    }
    records
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bench_publishes_a_topics_records_again_as_they_are() {
    const RECORDS: usize = 2_000;
    let brokers = setting("STRATUS_KAFKA_BROKERS");
    let (from, to) = (unique("it-published"), unique("it-again"));
    create_topic(&from, 3).await;
    let producer: FutureProducer = producer_config(&brokers).create().unwrap();
    let sends = (0..RECORDS).map(|seq| {
        let (key, payload) = (format!("key-{}", seq % 50), format!("{{\"seq\":{seq}}}"));
        let headers = OwnedHeaders::new().insert(Header {
            key: "stratus.record_id",
            value: Some(format!("sink|{key}|{seq}").as_bytes()),
        });
        let producer = producer.clone();
        let from = from.clone();
        async move {
            let record = FutureRecord::to(&from)
                .key(&key)
                .payload(&payload)
                .headers(headers);
            producer.send(record, Duration::from_secs(30)).await
        }
    });
    for d in futures::future::join_all(sends).await {
        d.map_err(|(e, _)| e).unwrap();
    }

    let again = stratus::bench::produce_again(&brokers, &from, &to, RECORDS as u64)
        .await
        .unwrap();
    assert_eq!(again.records, RECORDS as u64);
    assert!(again.seconds > 0.0);
    // The same records, each on the partition of its key, in the same order there.
    let (published, republished) = tokio::task::block_in_place(|| {
        (
            read_all(&brokers, &from, 3, RECORDS),
            read_all(&brokers, &to, 3, RECORDS),
        )
    });
    assert!(published.iter().all(|p| !p.is_empty()));
    assert_eq!(republished, published);

    // Asked for more records than the topic holds, it says so instead of a figure.
    let err =
        stratus::bench::produce_again(&brokers, &from, &unique("it-again"), RECORDS as u64 + 1)
            .await
            .unwrap_err()
            .to_string();
    assert!(
        err.contains(&format!(
            "{from} gave {RECORDS} of its {} records",
            RECORDS + 1
        )),
        "{err}"
    );
}
