//! Workers of one pipeline in its consumer group (`stratus run --cluster`), on the real broker
//! and S3 server: three worker processes share a 12-partition topic while it is produced to
//! steadily; in turn, at random moments, a worker leaves with SIGTERM, one dies with SIGKILL,
//! and one is paused with SIGSTOP until the others have taken its partitions over, then
//! resumed: it must stay up, hear that it lost them and join again. Each worker that left is
//! replaced by a new one. Afterwards the group's committed offsets reach
//! the end of every partition, the raw table holds every valid event exactly once, the feature
//! tables hold each window once with the counts and sums of a reference computed here (per
//! partition, as each partition's watermark closes them), the carried features run on across
//! every move, and no table has a commit of a partition's owner after a later owner claimed it:
//! the paused worker committed nothing once resumed. Each table was created once, by the first
//! shard's claim, with the schema its rows have.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::process::Command;
use std::time::{Duration, Instant};

use arrow::array::AsArray;
use arrow::datatypes::TimestampMicrosecondType;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use stratus::kafka::{consumer_config, producer_config};

use crate::crash::{
    Event, assert_windows, carried, column, events, feature_rows, reference, strings,
};
use crate::process::{Running, tail};
use crate::{create_topic, read_delta, read_delta_if_any, setting, unique};

const S: i64 = 1_000_000;
const MINUTE: i64 = 60 * S;
const PARTITIONS: i32 = 12;
const RESOURCES: usize = 36;
/// Data points per resource: 45 minutes of event time.
const STEPS: i64 = 675;

/// Resource `i-crashNN` goes to partition NN mod 12: three resources per partition.
fn partition_of(resource: &str) -> i32 {
    resource[7..].parse::<i32>().unwrap() % PARTITIONS
}

fn pipeline_yaml(topic: &str, group: &str) -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    format!(
        r#"name: cluster
sources:
  metrics:
    kafka: {{topic: {topic}, group: {group}, key: [resource_id]}}
    schema: {root}/schemas/cloud.metrics.json
    event_time: {{field: ts, max_out_of_orderness: 10s, allowed_lateness: 1m, idle_timeout: 10m}}
    dead_letter_topic: {topic}.dlq
stages:
  features_1m:
    sql: {root}/sql/cloud_metrics_1m.sql
    carry: {{columns: [mean], baseline: 10m, min_baseline: 3}}
  features_5m:
    sql: {root}/sql/cloud_metrics_5m.sql
sinks:
  raw: {{from: metrics, delta: {{table: raw, partition_by: [date]}}}}
  f1: {{from: features_1m, delta: {{table: f1}}}}
  f5: {{from: features_5m, delta: {{table: f5}}}}
commit: {{max_rows: 2000, max_interval: 1s, checkpoint_every: 5}}
kafka:
  properties:
    # A paused worker is out of the group after 6 s (the broker's least), not 45.
    session.timeout.ms: "6000"
    heartbeat.interval.ms: "1000"
"#
    )
}

fn worker(pipeline: &std::path::Path, tables: &str) -> Running {
    Running::spawn(
        Command::new(env!("CARGO_BIN_EXE_stratus"))
            .args(["run", pipeline.to_str().unwrap(), "--cluster"])
            .args(["--metrics-addr", "127.0.0.1:0", "--tables", tables])
            .env("RUST_LOG", format!("{},stratus=info", stratus::cli::QUIET)),
    )
}

/// The partitions a worker holds, from its log of assignments and revocations.
fn held(log: &str) -> BTreeSet<i32> {
    let mut held = BTreeSet::new();
    for line in log.lines() {
        let Some(list) = line
            .split("partitions [")
            .nth(1)
            .and_then(|rest| rest.split(']').next())
        else {
            continue;
        };
        let partitions = list.split(", ").filter_map(|p| p.parse::<i32>().ok());
        if line.contains("] assigned") {
            held.extend(partitions);
        } else if line.contains("] revoked") || line.contains("] lost") {
            for p in partitions {
                held.remove(&p);
            }
        }
    }
    held
}

/// Per partition, the group's committed offset and the partition's end.
fn group_positions(brokers: &str, group: &str, topic: &str) -> Vec<(i64, i64)> {
    let consumer: BaseConsumer = consumer_config(brokers, group).create().unwrap();
    let mut list = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        list.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(list, Duration::from_secs(10))
        .unwrap();
    (0..PARTITIONS)
        .map(|p| {
            let (_, end) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap();
            let at = match committed.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => -1,
            };
            (at, end)
        })
        .collect()
}

/// What a table's log says of its owners and its schema.
#[derive(Default)]
struct Log {
    /// For each owner mark (`<pipeline>/partition-<n>/owner`), the epochs its commits carry in
    /// log order, with the versions.
    owners: BTreeMap<String, Vec<(u64, i64)>>,
    /// The versions that set the table's metadata (its schema).
    metadata: Vec<u64>,
    /// For each shard (`<pipeline>/partition-<n>`), its commits that recorded an offset: the
    /// version, the next offset recorded and the rows the commit added.
    offsets: BTreeMap<String, Vec<(u64, i64, i64)>>,
}

/// Reads the log of the table at `location`.
async fn read_log(location: &str) -> Log {
    let url = url::Url::parse(location).unwrap();
    let table =
        deltalake::open_table_with_storage_options(url, stratus::sink::storage_options_from_env())
            .await
            .unwrap();
    let newest = table.version().unwrap() as u64;
    let mut log = Log::default();
    for version in 0..=newest {
        let Some(bytes) = table.log_store().read_commit_entry(version).await.unwrap() else {
            continue;
        };
        let (mut rows, mut next) = (0, None);
        for line in String::from_utf8_lossy(&bytes).lines() {
            let action: serde_json::Value = serde_json::from_str(line).unwrap();
            if action.get("metaData").is_some() {
                log.metadata.push(version);
            }
            if let Some(stats) = action["add"]["stats"].as_str() {
                let stats: serde_json::Value = serde_json::from_str(stats).unwrap();
                rows += stats["numRecords"].as_i64().unwrap_or(0);
            }
            if let Some(app) = action["txn"]["appId"].as_str()
                && let Some((shard, _)) = app.split_once("/it-cluster")
            {
                next = Some((
                    shard.to_string(),
                    action["txn"]["version"].as_i64().unwrap(),
                ));
            }
            if let Some(txn) = action.get("txn")
                && let Some(app) = txn["appId"].as_str()
                && app.ends_with("/owner")
            {
                let epoch = txn["version"].as_i64().unwrap();
                log.owners
                    .entry(app.to_string())
                    .or_default()
                    .push((version, epoch));
            }
        }
        if let Some((shard, next)) = next {
            log.offsets
                .entry(shard)
                .or_default()
                .push((version, next, rows));
        }
    }
    log
}

#[tokio::test(flavor = "multi_thread")]
async fn workers_join_leave_die_and_pause_and_every_event_lands_once() {
    let brokers = setting("STRATUS_KAFKA_BROKERS");
    let topic = unique("it-cluster");
    create_topic(&topic, PARTITIONS).await;
    create_topic(&format!("{topic}.dlq"), 1).await;
    let group = unique("cluster-group");
    let base = (chrono::Utc::now().timestamp_micros() - 3 * 3600 * S) / MINUTE * MINUTE;
    let events = events(base, RESOURCES, STEPS);

    let dir = std::env::temp_dir().join(unique("it-cluster"));
    std::fs::create_dir_all(&dir).unwrap();
    let pipeline = dir.join("cluster.yaml");
    std::fs::write(&pipeline, pipeline_yaml(&topic, &group)).unwrap();
    let tables = format!(
        "s3://{}/{}",
        setting("STRATUS_S3_BUCKET"),
        unique("it-cluster")
    );

    // Continuous load: a step of every resource each 30 ms, 20 s in all.
    let producing = {
        let payloads: Vec<(String, i32, String)> = events
            .iter()
            .map(|e| (e.resource.clone(), partition_of(&e.resource), e.json()))
            .collect();
        let (brokers, topic) = (brokers.clone(), topic.clone());
        tokio::spawn(async move {
            let producer: FutureProducer = producer_config(&brokers).create().unwrap();
            for step in payloads.chunks(RESOURCES) {
                let sends = step.iter().map(|(key, partition, payload)| {
                    producer.send(
                        FutureRecord::to(&topic)
                            .key(key)
                            .partition(*partition)
                            .payload(payload),
                        Duration::from_secs(30),
                    )
                });
                for d in futures::future::join_all(sends).await {
                    d.map_err(|(e, _)| e).unwrap();
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        })
    };

    let mut workers: Vec<Running> = (0..3).map(|_| worker(&pipeline, &tables)).collect();
    let mut rng = StdRng::seed_from_u64(31);
    let mut logs = Vec::new();
    for action in ["TERM", "KILL", "STOP", "TERM", "KILL"] {
        tokio::time::sleep(Duration::from_millis(rng.random_range(1_000..3_000))).await;
        for (j, w) in workers.iter_mut().enumerate() {
            if let Some(status) = w.exited() {
                panic!("worker {j} exited: {status}\n{}", tail(&w.log(), 40));
            }
        }
        // The worker to pause holds partitions (one just started may hold none yet, and in a
        // rebalance none may for a moment: wait for one that does).
        let deadline = Instant::now() + Duration::from_secs(60);
        let holding: Vec<usize> = loop {
            let holding: Vec<usize> = (0..workers.len())
                .filter(|&j| action != "STOP" || !held(&workers[j].log()).is_empty())
                .collect();
            if !holding.is_empty() {
                break holding;
            }
            assert!(
                Instant::now() < deadline,
                "no worker holds partitions:\n{}",
                workers
                    .iter()
                    .map(|w| tail(&w.log(), 20).to_string())
                    .collect::<Vec<_>>()
                    .join("\n---\n")
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let i = holding[rng.random_range(0..holding.len())];
        let w = workers.swap_remove(i);
        match action {
            "TERM" => {
                let (status, log) = w.terminate();
                assert!(status.success(), "SIGTERM: {status}\n{}", tail(&log, 40));
                logs.push(log);
            }
            "KILL" => {
                w.signal("KILL");
                logs.push(w.wait().1);
            }
            _ => {
                let partitions = held(&w.log());
                let since: Vec<usize> = workers.iter().map(|o| o.log().len()).collect();
                w.signal("STOP");
                // Until the others hold its partitions, each claimed in every table.
                let deadline = Instant::now() + Duration::from_secs(90);
                loop {
                    let claimed: BTreeSet<i32> = partitions
                        .iter()
                        .copied()
                        .filter(|p| {
                            workers.iter().zip(&since).any(|(o, &from)| {
                                let log = o.log();
                                ["raw", "f1", "f5"].iter().all(|sink| {
                                    log[from..].contains(&format!(
                                        "sink {sink}: cluster/partition-{p} claimed"
                                    ))
                                })
                            })
                        })
                        .collect();
                    if claimed == partitions {
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "partitions {partitions:?} of the paused worker not taken over \
                         ({claimed:?} were)"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                let paused = w.log().len();
                w.signal("CONT");
                // Resumed, it hears it lost its partitions (its shards that try to commit
                // first are fenced out of the tables) and joins the group again.
                let mut w = w;
                let deadline = Instant::now() + Duration::from_secs(60);
                while !w.log()[paused..].contains("] lost") {
                    assert!(
                        w.exited().is_none(),
                        "the resumed worker exited:\n{}",
                        tail(&w.log(), 40)
                    );
                    assert!(
                        Instant::now() < deadline,
                        "resumed:\n{}",
                        tail(&w.log(), 40)
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                workers.push(w);
                continue;
            }
        }
        workers.push(worker(&pipeline, &tables));
    }
    producing.await.unwrap();

    // Every partition's committed offset reaches its end.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let positions = group_positions(&brokers, &group, &topic);
        if positions.iter().all(|(at, end)| at == end) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "group lag stays: {positions:?}; logs:\n{}",
            workers
                .iter()
                .map(|w| tail(&w.log(), 20).to_string())
                .collect::<Vec<_>>()
                .join("\n---\n")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for w in workers {
        let (status, log) = w.terminate();
        assert!(
            status.success(),
            "final SIGTERM: {status}\n{}",
            tail(&log, 40)
        );
        logs.push(log);
    }
    for log in &logs {
        if let Some(at) = log.find("panicked") {
            panic!(
                "a worker panicked: {}",
                &log[at..(at + 2000).min(log.len())]
            );
        }
    }

    let valid: Vec<&Event> = events.iter().filter(|e| e.valid).collect();
    let raw = read_delta(&format!("{tables}/raw")).await;
    let mut ids = HashSet::new();
    for b in &raw {
        let ts = column(b, "ts").as_primitive::<TimestampMicrosecondType>();
        for (i, resource) in strings(b, "resource_id").into_iter().enumerate() {
            let id = (resource, ts.value(i));
            assert!(ids.insert(id.clone()), "raw row {id:?} written twice");
        }
    }
    if ids.len() != valid.len() {
        // Which events are missing, by resource, and what the workers said about their
        // partitions: enough to tell a replay cut short from a cycle lost.
        let mut missing: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
        for e in &valid {
            if !ids.contains(&(e.resource.clone(), e.ts)) {
                missing.entry(&e.resource).or_default().push(e.ts);
            }
        }
        let by_resource: Vec<String> = missing
            .iter()
            .map(|(r, ts)| format!("{r}: {} from {} to {}", ts.len(), ts[0], ts[ts.len() - 1]))
            .collect();
        let notable: Vec<&str> = logs
            .iter()
            .flat_map(|l| l.lines())
            .filter(|l| {
                [
                    "replay",
                    "taken over",
                    "starts again",
                    "ERROR",
                    "failing",
                    "claimed",
                ]
                .iter()
                .any(|k| l.contains(k))
            })
            .take(200)
            .collect();
        // The raw table's commits of the partitions missing rows: a jump in the offsets
        // without rows, or a commit missing from the chain, says where they went.
        let log = read_log(&format!("{tables}/raw")).await;
        let partitions: BTreeSet<i32> = missing.keys().map(|r| partition_of(r)).collect();
        let chains: Vec<String> = partitions
            .iter()
            .map(|p| {
                let shard = format!("cluster/partition-{p}");
                format!(
                    "{shard}: (version, next offset, rows) {:?}",
                    log.offsets.get(&shard)
                )
            })
            .collect();
        panic!(
            "raw rows: {} of {} valid events; missing:\n{}\nraw commits:\n{}\nworker log \
             lines:\n{}",
            ids.len(),
            valid.len(),
            by_resource.join("\n"),
            chains.join("\n"),
            notable.join("\n")
        );
    }

    // Each partition's watermark: its newest event time less the 10 s bound.
    let f1_batches = read_delta(&format!("{tables}/f1")).await;
    for (resource, rows) in carried(&f1_batches) {
        assert_eq!(rows[0].2, None, "{resource}: first window");
        for pair in rows.windows(2) {
            let delta = pair[1]
                .2
                .unwrap_or_else(|| panic!("{resource}: no delta at {pair:?}"));
            assert!(
                (delta - (pair[1].1 - pair[0].1)).abs() < 1e-9,
                "{resource}: {pair:?}"
            );
        }
    }
    let f1 = feature_rows(&f1_batches);
    let f5 = feature_rows(&read_delta(&format!("{tables}/f5")).await);
    let (mut want_f1, mut want_f5) = (BTreeMap::new(), BTreeMap::new());
    for p in 0..PARTITIONS {
        let mine: Vec<Event> = events
            .iter()
            .filter(|e| partition_of(&e.resource) == p)
            .map(|e| Event {
                resource: e.resource.clone(),
                ..*e
            })
            .collect();
        let newest = mine.iter().filter(|e| e.valid).map(|e| e.ts).max().unwrap();
        let watermark = newest - 10 * S;
        want_f1.extend(reference(&mine, MINUTE, watermark));
        want_f5.extend(reference(&mine, 5 * MINUTE, watermark - MINUTE));
    }
    assert_windows("f1", &f1, &want_f1);
    assert_windows("f5", &f5, &want_f5);

    // Epochs only grow in each table's log: no owner committed after a later one claimed.
    // Each table was created once, by a claim, with the schema its rows have: no commit after
    // the first changed it.
    for table in ["raw", "f1", "f5"] {
        let log = read_log(&format!("{tables}/{table}")).await;
        assert_eq!(
            log.metadata,
            [0],
            "{table}: the versions that set its schema"
        );
        assert_eq!(log.owners.len(), PARTITIONS as usize, "{table}: owners");
        for (app, seen) in &log.owners {
            assert!(
                seen.windows(2).all(|w| w[0].1 <= w[1].1),
                "{table} {app}: epochs by version {seen:?}"
            );
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Per partition of `topic`, the offset `group` committed (-1: none) and the partition's end.
fn committed_and_end(brokers: &str, group: &str, topic: &str, partitions: i32) -> Vec<(i64, i64)> {
    let consumer: BaseConsumer = consumer_config(brokers, group).create().unwrap();
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(list, Duration::from_secs(10))
        .unwrap();
    (0..partitions)
        .map(|p| {
            let (_, end) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap();
            match committed.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => (o, end),
                _ => (-1, end),
            }
        })
        .collect()
}

/// A source whose records are not keyed by what its stages keep state by (here produced round
/// robin, every resource's points spread over every partition) is re-keyed through its
/// repartition topic: two workers, one killed mid-stream with SIGKILL and replaced, and the raw
/// table still holds every valid event once, each 1- and 5-minute window per resource once
/// with the count and sum of all its points (so each resource's rows met in one shard, and
/// the watermark — kept per upstream partition, and waiting for a partition whose forwarder
/// stalled — made none late), the forwarders' group has committed the end of every source
/// partition, the shards' group the end of each repartition partition, and what the tables
/// hold was deleted from the repartition topic.
#[tokio::test(flavor = "multi_thread")]
async fn a_source_keyed_otherwise_than_its_stages_is_re_keyed_through_a_repartition_topic() {
    const PARTS: i32 = 4;
    const RESOURCES: usize = 12;
    let brokers = setting("STRATUS_KAFKA_BROKERS");
    let topic = unique("it-rekey");
    create_topic(&topic, PARTS).await;
    create_topic(&format!("{topic}.dlq"), 1).await;
    let group = unique("rekey-group");
    let base = (chrono::Utc::now().timestamp_micros() - 3 * 3600 * S) / MINUTE * MINUTE;
    let events = events(base, RESOURCES, 450);

    let dir = std::env::temp_dir().join(unique("it-rekey"));
    std::fs::create_dir_all(&dir).unwrap();
    let pipeline = dir.join("rekey.yaml");
    // A source partition idle for 5 s stops holding the watermark back: shorter than the
    // time a killed worker's partitions take to move, during which their records wait
    // unforwarded — the shards' watermarks must wait for those, not count them idle.
    let yaml = pipeline_yaml(&topic, &group)
        .replace("name: cluster", "name: rekey")
        .replace(", key: [resource_id]", "")
        .replace("idle_timeout: 10m", "idle_timeout: 5s");
    std::fs::write(&pipeline, yaml).unwrap();
    let tables = format!(
        "s3://{}/{}",
        setting("STRATUS_S3_BUCKET"),
        unique("it-rekey")
    );

    // Round robin over the partitions, whatever the resource: a step of every resource each
    // 30 ms.
    let producing = {
        let payloads: Vec<String> = events.iter().map(Event::json).collect();
        let (brokers, topic) = (brokers.clone(), topic.clone());
        tokio::spawn(async move {
            let producer: FutureProducer = producer_config(&brokers).create().unwrap();
            for (step, chunk) in payloads.chunks(RESOURCES).enumerate() {
                let sends = chunk.iter().enumerate().map(|(i, payload)| {
                    producer.send(
                        FutureRecord::<(), _>::to(&topic)
                            .partition(((step + i) % PARTS as usize) as i32)
                            .payload(payload),
                        Duration::from_secs(30),
                    )
                });
                for d in futures::future::join_all(sends).await {
                    d.map_err(|(e, _)| e).unwrap();
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        })
    };

    let mut workers: Vec<Running> = (0..2).map(|_| worker(&pipeline, &tables)).collect();
    // Once both forward, one dies mid-stream (its forwarders' open transactions are aborted
    // when their partitions' new owner fences them) and a new one joins.
    let deadline = Instant::now() + Duration::from_secs(90);
    while !workers.iter().all(|w| w.log().contains("forwarded to")) {
        assert!(
            Instant::now() < deadline,
            "workers do not forward:\n{}",
            workers
                .iter()
                .map(|w| tail(&w.log(), 20).to_string())
                .collect::<Vec<_>>()
                .join("\n---\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed = workers.remove(0);
    killed.signal("KILL");
    let mut logs = vec![killed.wait().1];
    workers.push(worker(&pipeline, &tables));
    producing.await.unwrap();

    // The forwarders' group reaches the end of every source partition, the shards' group the
    // end of every repartition partition (lag tools show no lag once all is read), and the raw
    // table every valid event.
    let valid = events.iter().filter(|e| e.valid).count();
    let deadline = Instant::now() + Duration::from_secs(180);
    let forwarders = format!("{group}.repartition");
    let rekeyed = "rekey.repartition.metrics";
    loop {
        let forwarded = committed_and_end(&brokers, &forwarders, &topic, PARTS);
        let read = committed_and_end(&brokers, &group, rekeyed, PARTS);
        let rows: usize = read_delta(&format!("{tables}/raw"))
            .await
            .iter()
            .map(|b| b.num_rows())
            .sum();
        let done = |positions: &[(i64, i64)]| positions.iter().all(|(at, end)| at == end);
        if done(&forwarded) && done(&read) && rows >= valid {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "forwarded {forwarded:?}, read {read:?}, raw rows {rows} of {valid}; logs:\n{}",
            workers
                .iter()
                .map(|w| tail(&w.log(), 20).to_string())
                .collect::<Vec<_>>()
                .join("\n---\n")
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    for w in workers {
        let (status, log) = w.terminate();
        assert!(status.success(), "SIGTERM: {status}\n{}", tail(&log, 40));
        logs.push(log);
    }
    for log in &logs {
        assert!(!log.contains("panicked"), "{}", tail(log, 40));
    }
    // What the tables hold is deleted from the repartition topic: it keeps records by no age,
    // only until read. (The group's offsets there were at its end above; a shard that took a
    // partition over during the shutdown may have recorded the offset after the last record,
    // before the marker of its transaction, which it reads next.)
    let positions = committed_and_end(&brokers, &group, rekeyed, PARTS);
    assert!(
        positions.iter().all(|(at, end)| *at > 0 && end - at <= 4),
        "group offsets on {rekeyed}: {positions:?}"
    );
    let consumer: BaseConsumer = consumer_config(&brokers, &group).create().unwrap();
    let kept: Vec<(i64, i64)> = (0..PARTS)
        .map(|p| {
            consumer
                .fetch_watermarks(rekeyed, p, Duration::from_secs(10))
                .unwrap()
        })
        .collect();
    assert!(
        kept.iter()
            .zip(&positions)
            .all(|((low, _), (at, _))| low >= at),
        "{rekeyed} keeps {kept:?}, read to {positions:?}"
    );

    let raw = read_delta(&format!("{tables}/raw")).await;
    let mut ids = HashSet::new();
    for b in &raw {
        let ts = column(b, "ts").as_primitive::<TimestampMicrosecondType>();
        for (i, resource) in strings(b, "resource_id").into_iter().enumerate() {
            let id = (resource, ts.value(i));
            assert!(ids.insert(id.clone()), "raw row {id:?} written twice");
        }
    }
    assert_eq!(ids.len(), valid, "raw rows");

    // Every window that closed holds all of its resource's points: none was split over two
    // shards, none came too late. Those that closed: the watermark of each repartition
    // partition trails its slowest upstream partition by 10 s; all windows up to 20 s before
    // the newest event must have closed.
    let newest = events
        .iter()
        .filter(|e| e.valid)
        .map(|e| e.ts)
        .max()
        .unwrap();
    for (table, size) in [("f1", MINUTE), ("f5", 5 * MINUTE)] {
        let got = feature_rows(&read_delta(&format!("{tables}/{table}")).await);
        let all = reference(&events, size, i64::MAX);
        let closed = reference(
            &events,
            size,
            newest - 20 * S - (size / MINUTE - 1) * MINUTE,
        );
        assert!(
            closed.len() > RESOURCES * 4,
            "{table}: {} windows",
            closed.len()
        );
        let missing: Vec<_> = closed.keys().filter(|k| !got.contains_key(*k)).collect();
        assert!(missing.is_empty(), "{table}: windows missing: {missing:?}");
        for (id, (_, samples, sum)) in &got {
            let (want_samples, want_sum) = all[id];
            assert_eq!(*samples, want_samples, "{table} {id:?}: samples");
            assert!(
                (sum - want_sum).abs() < 1e-6 * want_sum.abs().max(1.0),
                "{table} {id:?}: sum {sum} vs {want_sum}"
            );
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A re-keyed source partition that falls silent while the others go on stops holding the
/// watermark back once its shard has read all it forwarded: the windows after its last event
/// close on the others' events alone, each with every point it was sent. The source is written
/// in transactions, as an exactly-once producer writes: the marker that closes the silent
/// partition's last one is no record to forward, yet the partition is forwarded to its end.
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_source_partition_of_a_re_keyed_source_goes_idle_once_its_records_are_read() {
    const PARTS: i32 = 4;
    const RESOURCES: usize = 8;
    let brokers = setting("STRATUS_KAFKA_BROKERS");
    let topic = unique("it-rekey-idle");
    create_topic(&topic, PARTS).await;
    create_topic(&format!("{topic}.dlq"), 1).await;
    let group = unique("rekey-idle-group");
    let base = (chrono::Utc::now().timestamp_micros() - 3 * 3600 * S) / MINUTE * MINUTE;
    let events = events(base, RESOURCES, 150);

    let dir = std::env::temp_dir().join(unique("it-rekey-idle"));
    std::fs::create_dir_all(&dir).unwrap();
    let pipeline = dir.join("rekey.yaml");
    let yaml = pipeline_yaml(&topic, &group)
        .replace("name: cluster", "name: rekeyidle")
        .replace(", key: [resource_id]", "")
        .replace("idle_timeout: 10m", "idle_timeout: 5s");
    std::fs::write(&pipeline, yaml).unwrap();
    let tables = format!(
        "s3://{}/{}",
        setting("STRATUS_S3_BUCKET"),
        unique("it-rekey-idle")
    );
    let worker = worker(&pipeline, &tables);

    // Round robin over the four partitions for the first 20 steps, then over the first three:
    // partition 3 falls silent 80 s of event time in, for the last 8 minutes. A transaction a
    // step.
    let producer: FutureProducer = producer_config(&brokers)
        .set("transactional.id", unique("rekey-idle-producer"))
        .create()
        .unwrap();
    let transactions = Duration::from_secs(30);
    tokio::task::block_in_place(|| producer.init_transactions(transactions)).unwrap();
    for (step, chunk) in events.chunks(RESOURCES).enumerate() {
        producer.begin_transaction().unwrap();
        let parts = if step < 20 { PARTS } else { PARTS - 1 } as usize;
        let sends = chunk.iter().enumerate().map(|(i, e)| {
            let payload = e.json();
            let producer = &producer;
            let topic = &topic;
            async move {
                producer
                    .send(
                        FutureRecord::<(), _>::to(topic)
                            .partition(((step + i) % parts) as i32)
                            .payload(&payload),
                        Duration::from_secs(30),
                    )
                    .await
                    .map_err(|(e, _)| e)
                    .unwrap();
            }
        });
        futures::future::join_all(sends).await;
        tokio::task::block_in_place(|| producer.commit_transaction(transactions)).unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }

    // Every window that ended 20 s before the newest event closes (the watermark trails the
    // newest by the 10 s of out-of-orderness), whole.
    let newest = events
        .iter()
        .filter(|e| e.valid)
        .map(|e| e.ts)
        .max()
        .unwrap();
    let closed = reference(&events, MINUTE, newest - 20 * S);
    let all = reference(&events, MINUTE, i64::MAX);
    assert!(closed.len() >= RESOURCES * 8, "{} windows", closed.len());
    let deadline = Instant::now() + Duration::from_secs(120);
    let got = loop {
        // The table is created by the first cycle that has rows for it.
        let f1 = read_delta_if_any(&format!("{tables}/f1")).await;
        let got = feature_rows(&f1.unwrap_or_default());
        if closed.keys().all(|k| got.contains_key(k)) {
            break got;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} windows closed; log:\n{}",
            closed.keys().filter(|k| got.contains_key(*k)).count(),
            closed.len(),
            tail(&worker.log(), 30)
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let (status, log) = worker.terminate();
    assert!(status.success(), "SIGTERM: {status}\n{}", tail(&log, 40));
    for (id, (_, samples, sum)) in &got {
        let (want_samples, want_sum) = all[id];
        assert_eq!(*samples, want_samples, "{id:?}: samples");
        assert!((sum - want_sum).abs() < 1e-6 * want_sum.abs().max(1.0));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
