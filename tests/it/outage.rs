//! Outages in the middle of a stream: the S3 server or the broker vanishes while events keep
//! arriving, and comes back. Each outage is staged with a TCP proxy the test owns and cuts —
//! nothing listens on its address meanwhile and every connection through it is closed, as
//! when the server is stopped — so the shared services stay up for the other tests. The broker
//! side uses `scripts/test-env`'s outage listener, which advertises the proxy's port.
//!
//! Afterwards every valid event is in Delta exactly once and every invalid one on the
//! dead-letter topic. Then a full disk under a local table root, and a watermark that stands
//! still while events arrive.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use arrow::array::{Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use stratus::demo::events::{GeneratedEvent, metric_events};
use stratus::job::run::{RunConfig, RunSummary, run_pipeline, run_to_end};
use stratus::metrics::PipelineMetrics;
use stratus::metrics::health::Health;
use stratus::pipeline::Pipeline;
use stratus::sink::storage_options_from_env;
use stratus::source::dead_letter::{HEADER_OFFSET, HEADER_PARTITION};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::{
    consume_with_headers, create_topic, metric_event, produce, read_delta, setting, unique,
};

/// A TCP proxy to `target` that the test can cut and restore.
struct Proxy {
    addr: SocketAddr,
    target: SocketAddr,
    serving: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    async fn start(addr: SocketAddr, target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind(addr).await.unwrap();
        let mut proxy = Proxy {
            addr: listener.local_addr().unwrap(),
            target,
            serving: None,
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&mut self, listener: TcpListener) {
        let target = self.target;
        self.serving = Some(tokio::spawn(async move {
            // Owned here: cutting the proxy drops them all, closing every connection.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                connections.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                while connections.try_join_next().is_some() {}
            }
        }));
    }

    /// Stops listening and closes every connection.
    async fn cut(&mut self) {
        if let Some(serving) = self.serving.take() {
            serving.abort();
            let _ = serving.await;
        }
    }

    /// Listens again on the same address.
    async fn restore(&mut self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }
}

fn address(setting_value: &str) -> SocketAddr {
    let host_port = setting_value
        .trim_start_matches("http://")
        .trim_end_matches('/');
    host_port.parse().unwrap()
}

/// Polls `condition` every 100 ms until it holds; fails with `what` after `limit`.
async fn until(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "waited {limit:?} for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const EVENTS: usize = 6_000;
const MAX_ROWS: usize = 200;

/// A raw-ingest stream: a 3-partition topic fed with 6,000 events (about 5 % invalid), the
/// pipeline that lands them in `raw_metrics`, and where it reaches Kafka and S3.
struct Stream {
    topic: String,
    tables: String,
    events: Vec<GeneratedEvent>,
    pipeline: Pipeline,
    config: RunConfig,
}

impl Stream {
    async fn new(name: &str, brokers: &str, storage_options: HashMap<String, String>) -> Stream {
        let topic = unique(name);
        create_topic(&topic, 3).await;
        create_topic(&format!("{topic}.dlq"), 1).await;
        let tables = format!("s3://{}/{}", setting("STRATUS_S3_BUCKET"), unique(name));
        let events = metric_events(11, EVENTS, 30, chrono::Utc::now().timestamp_millis(), 50);
        let root = env!("CARGO_MANIFEST_DIR");
        let yaml = format!(
            "name: {name}\nsources:\n  metrics:\n    kafka: {{topic: {topic}, group: {topic}}}\n    \
             schema: {root}/schemas/cloud.metrics.json\n    event_time: {{field: ts}}\n\
             sinks:\n  raw: {{from: metrics, delta: {{table: raw_metrics, partition_by: [date]}}}}\n\
             commit: {{max_rows: {MAX_ROWS}, max_interval: 1s}}\n"
        );
        let pipeline = Pipeline::from_yaml(std::path::Path::new("it-outage.yaml"), &yaml)
            .await
            .unwrap();
        let config = RunConfig {
            until_caught_up: false,
            ..RunConfig::backfill(brokers, &tables, storage_options)
        };
        Stream {
            topic,
            tables,
            events,
            pipeline,
            config,
        }
    }

    fn valid(&self) -> usize {
        self.events.iter().filter(|e| e.valid).count()
    }

    /// Produces the events (through the broker's own listener, never the proxy), 100 a
    /// second.
    fn feed(&self) -> tokio::task::JoinHandle<()> {
        let (topic, events) = (self.topic.clone(), self.events.clone());
        tokio::spawn(async move {
            for chunk in events.chunks(100) {
                produce(&topic, chunk).await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    }

    /// Every valid event is in the table once and every invalid one on the dead-letter topic:
    /// once, or — after a failed run, whose last cycle is redone — at least once (each dead
    /// letter names its partition and offset, which tell repeats apart).
    async fn assert_exactly_once(&self, failed_before: bool) {
        let batches = read_delta(&format!("{}/raw_metrics", self.tables)).await;
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        let mut seen = HashSet::new();
        for b in &batches {
            let ids = b.column_by_name("resource_id").unwrap();
            let ids = arrow::compute::cast(ids, &arrow::datatypes::DataType::Utf8).unwrap();
            let ids = ids.as_any().downcast_ref::<StringArray>().unwrap();
            let ts = b.column_by_name("ts").unwrap();
            let ts = ts
                .as_any()
                .downcast_ref::<TimestampMicrosecondArray>()
                .unwrap();
            for i in 0..b.num_rows() {
                seen.insert((ids.value(i).to_string(), ts.value(i)));
            }
        }
        assert_eq!(seen.len(), self.valid(), "every valid event is in Delta");
        assert_eq!(rows, self.valid(), "and none twice");
        let letters = consume_with_headers(&format!("{}.dlq", self.topic));
        let invalid = EVENTS - self.valid();
        let coordinates: HashSet<(String, String)> = letters
            .iter()
            .map(|(_, headers)| {
                let h: HashMap<&str, &str> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                (
                    h[HEADER_PARTITION].to_string(),
                    h[HEADER_OFFSET].to_string(),
                )
            })
            .collect();
        assert_eq!(
            coordinates.len(),
            invalid,
            "every invalid one dead-lettered"
        );
        if !failed_before {
            assert_eq!(letters.len(), invalid, "once");
        }
    }
}

/// What the test watches of a running pipeline.
struct Running {
    metrics: PipelineMetrics,
    health: Health,
    stop: tokio::sync::oneshot::Sender<()>,
    run: tokio::task::JoinHandle<Result<RunSummary, stratus::job::run::RunError>>,
}

impl Running {
    fn start(pipeline: &Pipeline, config: &RunConfig) -> Running {
        let (metrics, health) = (PipelineMetrics::new(), Health::new());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (pipeline, config) = (pipeline.clone(), config.clone());
        let (m, h) = (metrics.clone(), health.clone());
        let run = tokio::spawn(async move {
            run_pipeline(&pipeline, &config, m, h, async {
                let _ = stopped.await;
            })
            .await
        });
        Running {
            metrics,
            health,
            stop,
            run,
        }
    }

    fn read(&self) -> u64 {
        self.metrics.total("events_in_total", &[])
    }

    fn landed(&self) -> u64 {
        self.metrics.total("rows_out_total", &[("sink", "raw")])
    }

    fn problems(&self) -> String {
        self.health.report().err().unwrap_or_default()
    }

    /// Waits for every event to be read and every valid one committed, then stops the run.
    async fn finish(self, valid: usize) -> RunSummary {
        until(
            "every event read and landed",
            Duration::from_secs(180),
            || self.read() == EVENTS as u64 && self.landed() == valid as u64,
        )
        .await;
        self.stop.send(()).unwrap();
        self.run.await.unwrap().unwrap()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_s3_outage_pauses_reading_retries_and_loses_or_repeats_nothing() {
    let s3 = address(&setting("AWS_ENDPOINT_URL"));
    let mut proxy = Proxy::start("127.0.0.1:0".parse().unwrap(), s3).await;
    let mut options = storage_options_from_env();
    options.insert("AWS_ENDPOINT_URL".into(), format!("http://{}", proxy.addr));
    let stream = Stream::new("it-outage-s3", &setting("STRATUS_KAFKA_BROKERS"), options).await;
    let run = Running::start(&stream.pipeline, &stream.config);
    let feeding = stream.feed();
    until("a first commit", Duration::from_secs(60), || {
        run.landed() > 0
    })
    .await;

    proxy.cut().await;
    let cut_at = Instant::now();
    until("the outage on /readyz", Duration::from_secs(30), || {
        let p = run.problems();
        p.contains("sink raw: delta_commit failing") || p.contains("checkpoint: checkpoint failing")
    })
    .await;
    let read_when_noticed = run.read();
    tokio::time::sleep_until(cut_at + Duration::from_secs(60)).await;
    // Backpressure: the loop waits on its commit, so at most the cycle being read when the
    // checkpoint before it failed is read on; meanwhile 100 events a second arrive.
    let read_during = run.read() - read_when_noticed;
    assert!(
        read_during <= 2 * MAX_ROWS as u64,
        "{read_during} events read during the outage"
    );
    let report = run.problems();
    assert!(
        report.contains("failing, retried") && report.contains("(for "),
        "{report}"
    );

    proxy.restore().await;
    until("ready again", Duration::from_secs(60), || {
        run.health.report().is_ok()
    })
    .await;
    let retries = run.metrics.total("retries_total", &[]);
    assert!(retries > 0, "the failed attempts are counted");
    let not_ready = cut_at.elapsed().as_secs();
    feeding.await.unwrap();
    let summary = run.finish(stream.valid()).await;
    assert_eq!(summary.events, EVENTS as u64);
    stream.assert_exactly_once(false).await;
    println!(
        "soak: S3 cut 60 s: not ready until {not_ready} s after the cut, {retries} attempts \
         retried, {read_during} events read during the outage; {} events, each once",
        summary.events
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn brokers_down_at_start_and_mid_stream_are_waited_out_and_the_stream_resumes() {
    let mut proxy = Proxy::start(
        address(&setting("STRATUS_KAFKA_PROXY_BROKERS")),
        address(&setting("STRATUS_KAFKA_FAULT_BROKERS")),
    )
    .await;
    let brokers = setting("STRATUS_KAFKA_PROXY_BROKERS");
    let stream = Stream::new("it-outage-kafka", &brokers, storage_options_from_env()).await;

    // Down when the run starts: it waits, starting and saying why, and starts once they answer.
    proxy.cut().await;
    let run = Running::start(&stream.pipeline, &stream.config);
    until(
        "the brokers awaited on /readyz",
        Duration::from_secs(30),
        || {
            run.problems()
                .starts_with("starting\nkafka: connect failing, retried: cannot reach Kafka at")
        },
    )
    .await;
    proxy.restore().await;
    let feeding = stream.feed();
    until("a first commit", Duration::from_secs(60), || {
        run.landed() > 0
    })
    .await;

    proxy.cut().await;
    let cut_at = Instant::now();
    until("the outage on /readyz", Duration::from_secs(25), || {
        run.problems().starts_with("kafka")
    })
    .await;
    tokio::time::sleep_until(cut_at + Duration::from_secs(30)).await;
    assert!(run.problems().starts_with("kafka"), "{}", run.problems());
    let read_before = run.read();

    proxy.restore().await;
    until("ready again", Duration::from_secs(60), || {
        run.health.report().is_ok()
    })
    .await;
    let not_ready = cut_at.elapsed().as_secs();
    until("reading on", Duration::from_secs(60), || {
        run.read() > read_before
    })
    .await;
    feeding.await.unwrap();
    let summary = run.finish(stream.valid()).await;
    assert_eq!(summary.events, EVENTS as u64);
    stream.assert_exactly_once(false).await;
    println!(
        "soak: broker cut 30 s: not ready until {not_ready} s after the cut; {} events, each once",
        summary.events
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outage_longer_than_the_limit_fails_the_run_and_a_restart_resumes_exactly() {
    let s3 = address(&setting("AWS_ENDPOINT_URL"));
    let mut proxy = Proxy::start("127.0.0.1:0".parse().unwrap(), s3).await;
    let mut options = storage_options_from_env();
    options.insert("AWS_ENDPOINT_URL".into(), format!("http://{}", proxy.addr));
    let mut stream = Stream::new(
        "it-outage-limit",
        &setting("STRATUS_KAFKA_BROKERS"),
        options,
    )
    .await;
    stream.config.give_up_after = Duration::from_secs(5);
    produce(&stream.topic, &stream.events).await;
    let run = Running::start(&stream.pipeline, &stream.config);
    until("a first commit", Duration::from_secs(60), || {
        run.landed() > 0
    })
    .await;

    proxy.cut().await;
    let error = run.run.await.unwrap().unwrap_err().to_string();
    assert!(
        error.contains("still failing after 5 s of retries (--give-up-after)")
            && (error.starts_with("sink raw: ") || error.starts_with("checkpoint: ")),
        "{error}"
    );

    proxy.restore().await;
    let config = RunConfig {
        until_caught_up: true,
        ..stream.config.clone()
    };
    run_to_end(&stream.pipeline, &config).await.unwrap();
    stream.assert_exactly_once(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watermark_that_stands_still_while_events_arrive_is_not_ready_until_it_moves() {
    let topic = unique("it-stuck");
    create_topic(&topic, 1).await;
    let root = env!("CARGO_MANIFEST_DIR");
    let yaml = format!(
        "name: it-stuck\nsources:\n  metrics:\n    kafka: {{topic: {topic}, group: {topic}}}\n    \
         schema: {root}/schemas/cloud.metrics.json\n    event_time: {{field: ts}}\n\
         sinks:\n  raw: {{from: metrics, delta: {{table: raw_metrics}}}}\n\
         commit: {{max_rows: 1000, max_interval: 200ms}}\n"
    );
    let pipeline = Pipeline::from_yaml(std::path::Path::new("it-stuck.yaml"), &yaml)
        .await
        .unwrap();
    let tables = format!(
        "s3://{}/{}",
        setting("STRATUS_S3_BUCKET"),
        unique("it-stuck")
    );
    let config = RunConfig {
        until_caught_up: false,
        watermark_stuck_after: Duration::from_secs(2),
        ..RunConfig::backfill(
            &setting("STRATUS_KAFKA_BROKERS"),
            &tables,
            storage_options_from_env(),
        )
    };
    let run = Running::start(&pipeline, &config);
    // Every event at one event time: the watermark moves once, then stands still.
    let frozen = chrono::Utc::now().timestamp_millis() - 600_000;
    let (stuck_topic, mut sent) = (topic.clone(), 0);
    let feeding = tokio::spawn(async move {
        loop {
            let batch: Vec<_> = (0..10).map(|i| metric_event(frozen, sent + i)).collect();
            produce(&stuck_topic, &batch).await;
            sent += 10;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    until(
        "the stuck watermark on /readyz",
        Duration::from_secs(30),
        || {
            run.problems()
                .starts_with("source metrics watermark: has not moved for ")
        },
    )
    .await;
    feeding.abort();
    let _ = feeding.await;
    assert!(run.landed() > 0, "the events themselves land");

    // Newer events move it: ready again.
    produce(
        &topic,
        &[metric_event(chrono::Utc::now().timestamp_millis(), 0)],
    )
    .await;
    until("ready again", Duration::from_secs(30), || {
        run.health.report().is_ok()
    })
    .await;
    run.stop.send(()).unwrap();
    run.run.await.unwrap().unwrap();
}

/// Writes zeros to `dir/filler` until the file system is full.
fn fill(dir: &std::path::Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("filler")).unwrap();
    let chunk = vec![0u8; 64 << 10];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.flush();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_fails_the_run_naming_the_path_and_it_resumes_once_space_is_back() {
    // A 16 MiB tmpfs of its own holds the tables: mounting it needs root, as CI runs.
    let dir = std::env::temp_dir().join(unique("it-disk-full"));
    std::fs::create_dir_all(&dir).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(
        mounted.success(),
        "this test mounts a tmpfs: run it as root"
    );
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let _unmount = Unmount(dir.clone());

    let mut stream = Stream::new(
        "it-disk-full",
        &setting("STRATUS_KAFKA_BROKERS"),
        HashMap::new(),
    )
    .await;
    let tables = dir.join("tables").display().to_string();
    stream.tables = tables.clone();
    stream.config.table_root = tables.clone();
    stream.config.until_caught_up = true;
    stream.config.give_up_after = Duration::from_secs(3);
    produce(&stream.topic, &stream.events).await;

    fill(&dir);
    let error = run_to_end(&stream.pipeline, &stream.config)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("still failing after 3 s of retries")
            && error.contains(&tables)
            && error.contains("No space left on device"),
        "{error}"
    );

    std::fs::remove_file(dir.join("filler")).unwrap();
    run_to_end(&stream.pipeline, &stream.config).await.unwrap();
    stream.assert_exactly_once(true).await;
}
