//! Kafka client settings. Offsets are never committed to Kafka by Stratus: the Delta table
//! holds them (see [`crate::sink::delta`]), so consumers have auto-commit off and start from
//! the table's offsets, or from the earliest offset for a partition the table has not seen.

use rdkafka::ClientConfig;

/// Settings for a consumer in `group` reading from `brokers`.
///
/// Prefetch: librdkafka fetches again while fewer than `queued.min.messages` (20,000, of
/// 100,000 by default) or 16 MiB are queued, and when the queue is past either it waits
/// `fetch.queue.backoff.ms` before asking again: 10 ms here. At its default of 1 s a consumer
/// that drains its queue in a few milliseconds sat idle most of that second; in `stratus bench`
/// the read phase took 4–5 s for 1,000,000 events instead of 2.3 s, and rdkafka alone ranged
/// from 240,000 to 480,000 events/s instead of 840,000–900,000.
pub fn consumer_config(brokers: &str, group: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "50")
        .set("queued.min.messages", "20000")
        .set("fetch.queue.backoff.ms", "10")
        .set("queued.max.messages.kbytes", "16384");
    c
}

/// Settings for an idempotent producer: no duplicates or reordering from retries.
///
/// A cycle hands the producer all its rows at once (a 200,000-row cycle is 200,000 records),
/// so the local queue holds a million messages: at librdkafka's default of 100,000, the rest of
/// a cycle's sends found it full and rdkafka's `FutureProducer` retries those after sleeping
/// 100 ms each time — that, not the broker, was most of the Kafka sinks' time in `stratus
/// bench`. Memory is bounded by `queue.buffering.max.kbytes` instead: 64 MiB (librdkafka's
/// default is 1 GiB); a sink that finds the queue full awaits its oldest record's delivery.
pub fn producer_config(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "65536");
    c
}
