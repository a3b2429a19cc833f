//! `stratus bench --rate R --workers 1,2,3`: the bench pipeline run by N worker processes
//! (`stratus run --cluster`), as a cluster runs it.
//!
//! In: a rate, seconds, keys, partitions and the worker counts. For each count, the bench
//! pipeline with 1- and 5-second windows (see [`super::rate`]) over fresh topics: first a
//! backlog of `rate × seconds` events, read by N workers started after it was written (events/s
//! from their start to the group's committed offsets reaching the end of every partition); then
//! the same number produced live at the rate while N workers read it, with, for the largest
//! count, one worker leaving with SIGTERM at 40 % of the run and a new one joining at 70 %.
//! The baseline, measured first the same way: the pipeline as one `stratus run` process,
//! outside any group, reading every partition in one loop.
//! Measured from outside, as a consumer of the results would: for each 1-second window on the
//! features topic, from the moment its close was due (its end plus the source's 10 s
//! out-of-orderness bound, event times being production times) to the record's timestamp
//! (when a worker produced it). Out: a table per count, and the worst such delay of windows
//! whose close came in the 15 s after the leave and after the join: how long a rebalance holds
//! a partition's output back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::rate::{RateConfig, produce, seconds_pipeline};
use super::{BenchError, Result, create_topic, percentile};
use crate::job::memory::Resident;
use crate::kafka::consumer_config;
use crate::say;

/// The watermark's bound in the bench pipeline: a window's close is due this long after its end.
const BOUND_MS: i64 = 10_000;
/// Windows whose close falls this long after a leave or a join count as held back by it.
const AFTER_REBALANCE_MS: i64 = 15_000;

/// A worker process.
struct Worker {
    child: std::process::Child,
}

impl Worker {
    /// `stratus run FILE`, with `--cluster` unless it is the baseline (one process reading
    /// every partition in one loop, outside any group).
    fn start(
        file: &Path,
        tables: &Path,
        brokers: &str,
        log: &Path,
        cluster: bool,
    ) -> Result<Worker> {
        let log = std::fs::File::create(log)?;
        let mut command = std::process::Command::new(std::env::current_exe()?);
        command.arg("run").arg(file);
        if cluster {
            command.arg("--cluster");
        }
        let child = command
            .args(["--brokers", brokers, "--metrics-addr", "127.0.0.1:0"])
            // No limit: a limit restarts the peak (`VmHWM`) this bench reads as it measures.
            .args(["--memory-limit", "none"])
            .arg("--tables")
            .arg(tables)
            .stderr(log)
            .spawn()
            .map_err(BenchError::Start)?;
        Ok(Worker { child })
    }

    /// Its peak RSS so far (MiB).
    fn peak_mib(&self) -> f64 {
        Resident::of(Some(self.child.id())).map_or(f64::NAN, |r| r.peak as f64 / (1 << 20) as f64)
    }

    /// SIGTERM, then waits for it to flush and exit.
    fn stop(mut self) -> Result<()> {
        let pid = self.child.id().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()?;
        let status = self.child.wait()?;
        if !status.success() {
            return Err(BenchError::RunFailed {
                file: PathBuf::from(format!("worker {pid}")),
                status,
            });
        }
        Ok(())
    }
}

/// Whether the group's committed offsets reach the end of every partition of `topic`.
fn caught_up(consumer: &BaseConsumer, topic: &str, partitions: i32) -> Result<bool> {
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(list, Duration::from_secs(10))?;
    for p in 0..partitions {
        let (_, end) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        let at = match committed.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => -1,
        };
        if at < end {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Waits until the group has read `topic` to its end.
async fn wait_caught_up(config: &RateConfig, group: &str, topic: &str) -> Result<()> {
    let consumer: BaseConsumer = consumer_config(&config.brokers, group).create()?;
    while !tokio::task::block_in_place(|| caught_up(&consumer, topic, config.partitions))? {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// Waits until `group` is stable with `members` members.
async fn wait_stable(config: &RateConfig, group: &str, members: usize) -> Result<()> {
    let consumer: BaseConsumer =
        consumer_config(&config.brokers, "stratus-bench-observer").create()?;
    loop {
        let list = tokio::task::block_in_place(|| {
            consumer.fetch_group_list(Some(group), Duration::from_secs(10))
        })?;
        if list
            .groups()
            .iter()
            .any(|g| g.state() == "Stable" && g.members().len() == members)
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Per 1-second window on the features topic: (when its close was due, delay to its record), ms.
fn window_delays(config: &RateConfig, topic: &str) -> Result<Vec<(i64, i64)>> {
    let consumer: BaseConsumer =
        consumer_config(&config.brokers, "stratus-bench-reader").create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut list = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (_, end) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
        ends.insert(p.id(), end);
        list.add_partition_offset(topic, p.id(), Offset::Beginning)?;
    }
    consumer.assign(&list)?;
    let mut next: BTreeMap<i32, i64> = ends.keys().map(|&p| (p, 0)).collect();
    let mut out = Vec::new();
    while ends.iter().any(|(p, end)| next[p] < *end) {
        let Some(polled) = consumer.poll(Duration::from_secs(5)) else {
            break;
        };
        let m = polled?;
        next.insert(m.partition(), m.offset() + 1);
        let (Some(at), Some(payload)) = (m.timestamp().to_millis(), m.payload()) else {
            continue;
        };
        let row: serde_json::Value = serde_json::from_slice(payload)?;
        let Some(end) = row["window_end"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        else {
            continue;
        };
        let due = end.timestamp_millis() + BOUND_MS;
        out.push((due, at - due));
    }
    Ok(out)
}

/// p50, p99 and max of `delays` (ms).
fn spread(delays: &[i64]) -> (f64, f64, f64) {
    let mut v: Vec<f64> = delays.iter().map(|&d| d as f64).collect();
    v.sort_by(f64::total_cmp);
    (
        percentile(&v, 50.0),
        percentile(&v, 99.0),
        v.last().copied().unwrap_or(f64::NAN),
    )
}

/// Runs the measurements for each count in `workers`.
pub async fn cluster(config: &RateConfig, workers: &[usize]) -> Result<()> {
    std::fs::create_dir_all(&config.work_dir)?;
    let events = config.rate * config.seconds;
    let most = workers.iter().copied().max().unwrap_or(1);
    say!(
        "stratus bench --workers: {events} events ({} events/s live for {} s), {} keys, {} partitions, cycles of at most {} events or 1 s, 2 cores shared by every worker and the broker",
        config.rate,
        config.seconds,
        config.keys,
        config.partitions,
        config.max_rows
    );
    let mut rows = Vec::new();
    let mut rebalances = Vec::new();
    // The baseline first: `stratus run` as one process (0 here), then each count of workers.
    for n in std::iter::once(0).chain(workers.iter().copied()) {
        let cluster = n > 0;
        let processes = n.max(1);
        let stamp = chrono::Utc::now().timestamp_millis();
        // The backlog: written first, then read by n workers from their start.
        let name = format!("bench-backlog-{n}-{stamp}");
        let topic = format!("stratus-{name}");
        create_topic(&config.brokers, &topic, config.partitions).await?;
        let file = seconds_pipeline(config, &name, &topic)?;
        // As fast as the producer goes.
        let fast = RateConfig {
            rate: events,
            seconds: 1,
            ..config.clone()
        };
        produce(&fast, &topic).await?;
        let tables = config.work_dir.join(&name);
        let started = Instant::now();
        let mut running = (0..processes)
            .map(|i| {
                let log = config.work_dir.join(format!("{name}-{i}.log"));
                Worker::start(&file, &tables, &config.brokers, &log, cluster)
            })
            .collect::<Result<Vec<_>>>()?;
        wait_caught_up(config, &format!("{topic}-pipeline"), &topic).await?;
        let backlog_rate = events as f64 / started.elapsed().as_secs_f64();
        let peak: f64 = running.iter().map(Worker::peak_mib).sum();
        for w in running.drain(..) {
            w.stop()?;
        }

        // Live: n workers read while the events are produced at the rate.
        let name = format!("bench-live-{n}-{stamp}");
        let topic = format!("stratus-{name}");
        create_topic(&config.brokers, &topic, config.partitions).await?;
        let file = seconds_pipeline(config, &name, &topic)?;
        let tables = config.work_dir.join(&name);
        let group = format!("{topic}-pipeline");
        let log = |i: usize| config.work_dir.join(format!("{name}-{i}.log"));
        running = (0..processes)
            .map(|i| Worker::start(&file, &tables, &config.brokers, &log(i), cluster))
            .collect::<Result<Vec<_>>>()?;
        if cluster {
            wait_stable(config, &group, n).await?;
        }
        let began = chrono::Utc::now().timestamp_millis();
        let producing = {
            let (config, topic) = (config.clone(), topic.clone());
            tokio::spawn(async move { produce(&config, &topic).await })
        };
        let (mut left, mut joined) = (None, None);
        if n == most && n > 1 {
            let run = Duration::from_secs(config.seconds);
            tokio::time::sleep(run.mul_f64(0.4)).await;
            left = Some(chrono::Utc::now().timestamp_millis());
            running.pop().map(Worker::stop).transpose()?;
            tokio::time::sleep(run.mul_f64(0.3)).await;
            joined = Some(chrono::Utc::now().timestamp_millis());
            running.push(Worker::start(
                &file,
                &tables,
                &config.brokers,
                &log(n),
                true,
            )?);
        }
        let produced = producing
            .await
            .map_err(|e| BenchError::Start(std::io::Error::other(e)))??;
        wait_caught_up(config, &group, &topic).await?;
        for w in running.drain(..) {
            w.stop()?;
        }
        let delays =
            tokio::task::block_in_place(|| window_delays(config, &format!("{name}.features_1m")))?;
        // The first tenth of the run is the processes' start (the baseline's, outside a
        // group, is not awaited).
        let warm = began + (config.seconds * 100) as i64;
        let steady: Vec<i64> = delays
            .iter()
            .filter(|(due, _)| {
                *due > warm
                    && [left, joined]
                        .iter()
                        .flatten()
                        .all(|&at| *due < at || *due > at + AFTER_REBALANCE_MS)
            })
            .map(|&(_, d)| d)
            .collect();
        let (p50, p99, max) = spread(&steady);
        let label = match n {
            0 => "1 process (`stratus run`)".to_string(),
            n => format!("{n} workers (`--cluster`)"),
        };
        rows.push(format!(
            "| {label} | {backlog_rate:.0} | {peak:.0} | {produced:.0} | {} | {p50:.0} | {p99:.0} | {max:.0} |",
            steady.len()
        ));
        for (what, at) in [
            ("a worker leaves (SIGTERM)", left),
            ("a worker joins", joined),
        ] {
            let Some(at) = at else { continue };
            let after: Vec<i64> = delays
                .iter()
                .filter(|(due, _)| *due >= at && *due <= at + AFTER_REBALANCE_MS)
                .map(|&(_, d)| d)
                .collect();
            let (_, p99_after, max_after) = spread(&after);
            rebalances.push(format!(
                "| {what} | {} | {p99_after:.0} | {max_after:.0} | {p99:.0} |",
                after.len()
            ));
        }
    }
    say!("");
    say!(
        "| run as | backlog events/s | peak RSS, all workers (MiB) | live events/s | windows | close → topic p50 (ms) | p99 (ms) | max (ms) |"
    );
    say!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in &rows {
        say!("{r}");
    }
    if !rebalances.is_empty() {
        say!("");
        say!(
            "| with {most} workers, when | windows closing in the next 15 s | p99 (ms) | max (ms) | p99 otherwise (ms) |"
        );
        say!("| --- | ---: | ---: | ---: | ---: |");
        for r in &rebalances {
            say!("{r}");
        }
    }
    Ok(())
}
