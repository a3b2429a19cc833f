//! The `stratus` command line, as a library function: the `stratus` binary is
//! [`main`] with no functions of its own; a program that adds Rust functions to the SQL
//! (see [`Functions`]) calls it with them.
//!
//! In: the process's arguments. Out: what the command prints, and its exit code.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::kafka::{KafkaConnection, KafkaProperties};
use crate::sql::Functions;

/// Why a command failed: its message is printed as `stratus: <message>`.
pub type Error = Box<dyn std::error::Error + Send + Sync>;
type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Parser)]
#[command(
    name = "stratus",
    version,
    about = "Stream processing for cloud cost and reliability intelligence"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a pipeline file and everything it names — schemas, SQL, sinks — without running
    /// it. Prints every error with file, line and a hint; exits non-zero if there is any.
    Validate {
        /// The pipeline file, e.g. pipelines/cloud-metrics.yaml.
        file: PathBuf,
    },
    /// Run a pipeline until SIGTERM or Ctrl-C, then flush what can be flushed, commit and exit 0.
    Run {
        /// The pipeline file, e.g. pipelines/cloud-metrics.yaml.
        file: PathBuf,
        /// Kafka bootstrap servers.
        #[arg(long, env = "STRATUS_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
        brokers: String,
        /// A librdkafka properties file for every Kafka client of the run — security
        /// (`security.protocol`, `sasl.*`, `ssl.*`) and tuning — as Kafka's own tools take with
        /// --command-config; values may be ${env:NAME} or ${file:PATH}. The pipeline file's
        /// `kafka.properties` win over it.
        #[arg(long, env = "STRATUS_KAFKA_CONFIG", value_name = "FILE")]
        kafka_config: Option<PathBuf>,
        /// Where relative Delta table names live: a directory or s3://bucket/prefix. Object-store
        /// settings (endpoint, region, credentials) come from the AWS_* environment variables.
        #[arg(long, env = "STRATUS_TABLES", default_value = "tables")]
        tables: String,
        /// Address of /metrics, /healthz and /readyz.
        #[arg(long, env = "STRATUS_METRICS_ADDR", default_value = "127.0.0.1:9464")]
        metrics_addr: std::net::SocketAddr,
        /// Stop once every source is read up to where it ended at start (a backfill).
        #[arg(long)]
        until_caught_up: bool,
        /// How long the brokers (at start and while reading), the object store or a disk may
        /// keep failing before the run fails: meanwhile reading pauses, failed commits and
        /// checkpoints are retried with backoff and /readyz says what is failing. A delivery to
        /// Kafka waits up to librdkafka's message.timeout.ms (5 minutes by default).
        #[arg(
            long,
            env = "STRATUS_GIVE_UP_AFTER",
            default_value = "5m",
            value_name = "DURATION"
        )]
        give_up_after: String,
        /// The resident memory the process is to stay below: each cycle reads no more input
        /// than the room under it allows (down to 256 KiB, so the pipeline always moves on). A
        /// size (2GiB), a share of the container's memory limit or, without one, of the
        /// machine's memory (80%), or none (only each pipeline's commit.max_bytes bounds a cycle).
        #[arg(
            long,
            env = "STRATUS_MEMORY_LIMIT",
            default_value = crate::job::memory::DEFAULT_LIMIT,
            value_name = "SIZE"
        )]
        memory_limit: String,
        /// How long a source's watermark may stand still while its events arrive before
        /// /readyz says so (its windows do not close meanwhile).
        #[arg(long, default_value = "15m", value_name = "DURATION")]
        watermark_stuck_after: String,
        /// Read a source from a JSON-lines file instead of Kafka: SOURCE=FILE (repeatable). A
        /// backfill: it needs --name, writes its Delta tables only, and its dead letters and
        /// late rows to files under <tables>/_stratus/<name>/; it needs no broker when every
        /// source is replayed.
        #[arg(long, value_name = "SOURCE=FILE")]
        replay: Vec<String>,
        /// Run under this name instead of the file's: its own checkpoints, Delta `txn` app
        /// ids, metrics label and default consumer groups (a backfill needs one).
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// Run only the stages up to and including STAGE, and the sinks they feed.
        #[arg(long, value_name = "STAGE")]
        until_stage: Option<String>,
        /// Run as one worker of the pipeline's consumer group (its first source's `group`):
        /// each process started so takes a share of the partitions, with state per partition
        /// that moves with it when workers join or leave. The pipeline's topics need as many
        /// partitions each, and producers must key events by the stages' keys.
        #[arg(long)]
        cluster: bool,
    },
    /// Check a pipeline file and submit it, with every file it names by a relative path, to
    /// the cluster's control topic: the workers run it within seconds (a newer submit of the
    /// same name replaces it). Nothing is submitted if the file has errors.
    Submit {
        /// The pipeline file, e.g. pipelines/cloud-metrics.yaml.
        file: PathBuf,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// The pipelines submitted to the cluster: list, describe, stop, resume.
    Pipelines {
        #[command(subcommand)]
        command: PipelinesCommand,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Run every pipeline submitted to the cluster, each in its consumer group with the other
    /// workers, picking up new, changed and stopped ones as they are submitted; report each
    /// one's state on the status topic. Stops on SIGTERM or Ctrl-C after flushing them all.
    Worker {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// This worker's name on the status topic (default: host name and process id).
        #[arg(long, env = "STRATUS_WORKER_ID")]
        worker_id: Option<String>,
        /// Where relative Delta table names live: a directory or s3://bucket/prefix.
        #[arg(long, env = "STRATUS_TABLES", default_value = "tables")]
        tables: String,
        /// Where the submitted pipelines' files are laid out.
        #[arg(long, env = "STRATUS_WORKDIR")]
        workdir: Option<PathBuf>,
        /// Address of /metrics, /healthz and /readyz.
        #[arg(long, env = "STRATUS_METRICS_ADDR", default_value = "127.0.0.1:9464")]
        metrics_addr: std::net::SocketAddr,
        /// As for `stratus run`.
        #[arg(
            long,
            env = "STRATUS_GIVE_UP_AFTER",
            default_value = "5m",
            value_name = "DURATION"
        )]
        give_up_after: String,
        /// As for `stratus run`.
        #[arg(
            long,
            env = "STRATUS_MEMORY_LIMIT",
            default_value = crate::job::memory::DEFAULT_LIMIT,
            value_name = "SIZE"
        )]
        memory_limit: String,
    },
    /// Keep Delta tables healthy: compact each partition's small files, write a log
    /// checkpoint and remove expired log files, and vacuum data files no version within the
    /// retention refers to. Safe beside a running pipeline: rows and `txn` marks are kept.
    Maintain {
        /// Tables: names under --tables, or directories or s3:// URLs.
        #[arg(required = true)]
        tables: Vec<String>,
        /// Where relative table names live (as for `stratus run`).
        #[arg(long = "tables", env = "STRATUS_TABLES", default_value = "tables")]
        root: String,
        /// Compacted files are written up to this size, MiB.
        #[arg(long, default_value_t = 128)]
        target_size_mib: u64,
        /// Vacuum deletes data files unreferenced for longer than this; readers of, and time
        /// travel to, an older version need its files. From 1 day up to the table's
        /// `deletedFileRetentionDuration` (7 days by default), files no commit ever added (a
        /// crashed writer's) older than this go too.
        #[arg(long, default_value = "7d")]
        retention: String,
    },
    /// Measure the cloud-metrics pipeline against real Kafka: events/s, window latency and
    /// peak RSS, beside rdkafka's raw consume rate and a file replay. Build with --release.
    Bench {
        #[arg(long, env = "STRATUS_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
        brokers: String,
        /// Events to load.
        #[arg(long, default_value_t = 1_000_000)]
        events: usize,
        /// Distinct resources (keys); default 100,000 (10,000 with --soak).
        #[arg(long)]
        keys: Option<usize>,
        #[arg(long, default_value_t = 8)]
        partitions: i32,
        /// Instead: stream --days of event time (one point per key per minute) through the
        /// pipeline and print, per simulated day, RSS, checkpoint size and events/s.
        #[arg(long)]
        soak: bool,
        /// Days of event time for --soak.
        #[arg(long, default_value_t = 7)]
        days: usize,
        /// Instead: produce this many events/s for --seconds while the pipeline reads them
        /// live (1- and 5-second windows), and print p50/p99 from each window's close to its
        /// results on the topic and in Delta.
        #[arg(long)]
        rate: Option<u64>,
        /// Seconds to produce at --rate.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// With --rate: run the pipeline as this many worker processes (`stratus run
        /// --cluster`), each count in turn, e.g. 1,2,3: backlog events/s, live latency, and
        /// with the most workers, the delay a worker leaving and one joining cause.
        #[arg(long, value_delimiter = ',', value_name = "COUNTS")]
        workers: Vec<usize>,
        /// The pipeline's `commit.max_rows`: events per cycle (fewer: lower latency and memory,
        /// more per-cycle work).
        #[arg(long, default_value_t = 200_000)]
        max_rows: usize,
        /// Instead: time one-row Delta appends on a fresh table under this root (an s3:// URL,
        /// with the AWS_* settings of the environment, or a directory) as its log grows:
        /// delta-rs's default commit beside Stratus's.
        #[arg(long, value_name = "ROOT")]
        delta_commits: Option<String>,
        /// Scratch directory for the event file and the Delta tables (replaced).
        #[arg(long, default_value = "target/bench")]
        dir: PathBuf,
        /// With --rate: write the pipeline's Delta tables and checkpoints under this root
        /// instead of under --dir: an s3:// URL, with the AWS_* settings of the environment
        /// (the store's latency then counts in the figures), or a directory.
        #[arg(long = "tables", value_name = "ROOT")]
        table_root: Option<String>,
        /// Each pipeline run's memory limit, as `stratus run --memory-limit` takes it; by
        /// default none, so the figures are those of cycles sized by `--max-rows` alone.
        #[arg(long, default_value = "none", value_name = "SIZE")]
        memory_limit: String,
        /// Internal: run one bench pipeline file and report (the bench's child process).
        #[arg(long, hide = true)]
        run_pipeline: Option<PathBuf>,
        /// Internal: run the soak pipeline file and report each day (the soak's child process).
        #[arg(long, hide = true)]
        soak_pipeline: Option<PathBuf>,
        /// Internal: run a bench pipeline file live until it has read --events, and report
        /// (the child process of --rate).
        #[arg(long, hide = true)]
        live_pipeline: Option<PathBuf>,
    },
    /// Run the embedded default job: an in-process Kafka, generated cloud metrics,
    /// validation with a dead-letter topic, and a local Delta table, then a summary.
    Demo {
        /// Days of generated history (CPU, memory and network per instance, each minute),
        /// starting at midnight UTC of the Monday at or before now minus this; the anomalies
        /// fall in the second half. The detectors learn a weekly pattern in a week and alert
        /// only once they have: with less than two weeks, some anomalies go unseen.
        #[arg(long, default_value_t = 14.0)]
        days: f64,
        /// How many instances emit them.
        #[arg(long, default_value_t = 12)]
        resources: usize,
        /// Seed of the generator: the same seed gives the same events.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Directory for the demo's Delta tables (its previous demo tables are replaced).
        #[arg(long, default_value = "demo-output")]
        out: PathBuf,
    },
    /// Measure detectors or forecasts on labelled, held-out data.
    #[command(subcommand)]
    Evaluate(Evaluate),
    /// Generate realistic, seeded cloud telemetry with labelled anomalies — metrics with daily
    /// and weekly seasonality, spot prices as irregular steps, billing with restatements — to
    /// JSON-lines files (--out) or Kafka topics (--brokers), plus labels.json.
    Generate(GenerateArgs),
    /// The model registry: register trained ONNX models, list versions.
    #[command(subcommand)]
    Models(Models),
}

#[derive(clap::Args)]
struct GenerateArgs {
    /// Write DIR/cloud.metrics.jsonl, cloud.spot_prices.jsonl, cloud.billing.jsonl and
    /// labels.json.
    #[arg(long, required_unless_present = "brokers")]
    out: Option<PathBuf>,
    /// Produce to Kafka instead (labels.json goes to --labels).
    #[arg(long, conflicts_with = "out")]
    brokers: Option<String>,
    /// A librdkafka properties file for the producer (see `stratus run --kafka-config`).
    #[arg(long, value_name = "FILE", requires = "brokers")]
    kafka_config: Option<PathBuf>,
    /// Prefix of the topic names (cloud.metrics, cloud.spot_prices, cloud.billing).
    #[arg(long, default_value = "")]
    topic_prefix: String,
    /// Where labels.json goes with --brokers.
    #[arg(long, default_value = "labels.json")]
    labels: PathBuf,
    /// Events per second to Kafka; 0 sends as fast as the broker takes them.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Days of history, ending now (or starting at --start).
    #[arg(long, default_value_t = 7.0)]
    days: f64,
    /// First event time (RFC 3339); default: now minus --days, on the hour.
    #[arg(long)]
    start: Option<String>,
    /// Metric cadence, e.g. 1m or 5m.
    #[arg(long, default_value = "1m")]
    interval: String,
    #[arg(long, default_value_t = 20)]
    resources: usize,
    /// Share of resources given an anomaly.
    #[arg(long, default_value_t = 0.4)]
    anomaly_share: f64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

/// How to reach a cluster's control plane.
#[derive(clap::Args)]
struct ClusterArgs {
    /// Kafka bootstrap servers.
    #[arg(
        long,
        global = true,
        env = "STRATUS_KAFKA_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    brokers: String,
    /// A librdkafka properties file (security, tuning), as for `stratus run`.
    #[arg(long, global = true, env = "STRATUS_KAFKA_CONFIG", value_name = "FILE")]
    kafka_config: Option<PathBuf>,
    /// The compacted topic submitted pipelines live in.
    #[arg(long, global = true, env = "STRATUS_CONTROL_TOPIC", default_value = crate::cluster::control::CONTROL_TOPIC)]
    control_topic: String,
    /// The compacted topic workers report each pipeline's state on.
    #[arg(long, global = true, env = "STRATUS_STATUS_TOPIC", default_value = crate::cluster::control::STATUS_TOPIC)]
    status_topic: String,
}

impl ClusterArgs {
    fn plane(&self) -> Result<crate::cluster::control::ControlPlane> {
        let properties = kafka_properties(self.kafka_config.clone())?;
        let kafka = crate::kafka::KafkaConnection::new(&self.brokers, &properties)?;
        Ok(crate::cluster::control::ControlPlane::new(
            kafka,
            &self.control_topic,
            &self.status_topic,
        ))
    }
}

#[derive(Subcommand)]
enum PipelinesCommand {
    /// Each submitted pipeline: whether it is to run, its version, and each worker's state.
    List,
    /// A submitted pipeline's file, the files it names, and each worker's state.
    Describe { name: String },
    /// Stop a pipeline on every worker (each flushes and commits first).
    Stop { name: String },
    /// Run a stopped pipeline again.
    Resume { name: String },
}

#[derive(Subcommand)]
enum Models {
    /// Register DIR/model.onnx with DIR/manifest.json as the next version of the manifest's
    /// model. Running pipelines that follow the model pick it up at their next poll.
    Register {
        /// A directory holding model.onnx and manifest.json.
        dir: PathBuf,
        /// A directory or s3://bucket/prefix.
        #[arg(long, env = "STRATUS_MODELS", default_value = "models/registry")]
        registry: String,
    },
    /// List the registered models and versions.
    List {
        /// Only this model.
        name: Option<String>,
        #[arg(long, env = "STRATUS_MODELS", default_value = "models/registry")]
        registry: String,
    },
}

fn generate(args: GenerateArgs) -> Result<()> {
    use crate::generate::{GenerateConfig, generate, output};
    let GenerateArgs {
        out,
        brokers,
        kafka_config,
        topic_prefix,
        labels: labels_path,
        rate,
        days,
        start,
        interval,
        resources,
        anomaly_share,
        seed,
    } = args;
    let span_us = (days * 86_400e6) as i64;
    if span_us <= 0 {
        return Err("--days must be positive".into());
    }
    let interval_us = crate::duration::parse_duration(&interval).map_err(Error::from)?;
    let start_us = match start {
        Some(s) => chrono::DateTime::parse_from_rfc3339(&s)
            .map_err(|e| Error::from(format!("--start {s:?}: {e}")))?
            .timestamp_micros(),
        None => {
            let now = chrono::Utc::now().timestamp_micros();
            let start = now - span_us;
            start - start.rem_euclid(3_600_000_000)
        }
    };
    let config = GenerateConfig {
        seed,
        start_us,
        span_us,
        interval_us,
        resources,
        anomaly_share,
    };
    let started = std::time::Instant::now();
    let (labels, counts, labels_path) = match (out, brokers) {
        (Some(dir), _) => {
            let mut files = output::Files::new(&dir)?;
            let labels = generate(&config, &mut files)?;
            (labels, files.finish()?, dir.join("labels.json"))
        }
        (None, Some(brokers)) => {
            let kafka = KafkaConnection::new(&brokers, &kafka_properties(kafka_config)?)?;
            let mut kafka = output::Kafka::new(&kafka, &topic_prefix, rate)?;
            let labels = generate(&config, &mut kafka)?;
            (labels, kafka.finish()?, labels_path)
        }
        (None, None) => return Err("give --out DIR or --brokers HOST:PORT".into()),
    };
    std::fs::write(&labels_path, serde_json::to_string_pretty(&labels)? + "\n")
        .map_err(|e| Error::from(format!("{}: cannot write: {e}", labels_path.display())))?;
    let mut counts: Vec<_> = counts.into_iter().collect();
    counts.sort();
    let total: u64 = counts.iter().map(|c| c.1).sum();
    for (topic, n) in counts {
        crate::say!("{topic}: {n} events");
    }
    crate::say!(
        "{total} events from {} to {} in {:.1} s; {} anomalies labelled in {}",
        labels.start,
        labels.end,
        started.elapsed().as_secs_f64(),
        labels.anomalies.len(),
        labels_path.display()
    );
    Ok(())
}

async fn models(command: Models) -> Result<()> {
    use crate::score::registry::{Manifest, Registry};
    let options = crate::sink::storage_options_from_env();
    match command {
        Models::Register { dir, registry } => {
            let read = |file: &str| {
                let path = dir.join(file);
                std::fs::read(&path)
                    .map_err(|e| Error::from(format!("{}: cannot read: {e}", path.display())))
            };
            let manifest: Manifest =
                serde_json::from_slice(&read("manifest.json")?).map_err(|e| {
                    Error::from(format!("{}: {e}", dir.join("manifest.json").display()))
                })?;
            let onnx = read("model.onnx")?;
            let r = Registry::open(&registry, &options)?;
            let name = manifest.name.clone();
            let version = r.register(manifest, &onnx).await?;
            crate::say!("registered {name}@{version} in {registry}");
        }
        Models::List { name, registry } => {
            let r = Registry::open(&registry, &options)?;
            let names = match name {
                Some(n) => vec![n],
                None => r.names().await?,
            };
            for n in names {
                for v in r.versions(&n).await? {
                    let m = r.manifest(&n, v).await?;
                    let features: Vec<&str> = m.feature_names().collect();
                    let version = match m.training.delta_version {
                        v if v >= 0 => format!("Delta v{v}, "),
                        _ => String::new(),
                    };
                    crate::say!(
                        "{n}@{v}  created {}  trained on {} ({version}{} rows)  inputs: {}",
                        m.created_at,
                        m.training.table,
                        m.training.rows,
                        features.join(", ")
                    );
                }
            }
        }
    }
    Ok(())
}

#[derive(Subcommand)]
enum Evaluate {
    /// Replay labelled `timestamp,value` series through the detector ensemble (no look-ahead),
    /// write each row's anomaly score, and score the run as the Numenta Anomaly Benchmark does,
    /// beside a rolling z-score baseline.
    Detect {
        /// A `timestamp,value` CSV file, or a directory of them (searched recursively).
        input: PathBuf,
        /// Anomaly windows per file: NAB's combined_windows.json, or {"windows": {...}}.
        #[arg(long)]
        labels: PathBuf,
        /// Where the scored CSVs and report.json go.
        #[arg(long, default_value = "evaluate-output")]
        out: PathBuf,
        /// A YAML list of detectors with weights (default: robust_z, seasonal, cusum).
        #[arg(long)]
        detectors: Option<PathBuf>,
    },
    /// Forecast a held-out later time range and report MAE, MAPE, sMAPE, MASE and interval
    /// coverage for the naive and seasonal-naive baselines. Reads describe-spot-price-history
    /// CSV (one series per zone, type and product) or a `timestamp,value` CSV.
    Forecast {
        input: PathBuf,
        /// Grid step of the forecast origins.
        #[arg(long, default_value = "1h")]
        step: String,
        /// Comma-separated horizons.
        #[arg(long, default_value = "1h,6h,24h")]
        horizons: String,
        /// Season of the seasonal-naive forecast.
        #[arg(long, default_value = "24h")]
        season: String,
        /// Share of each series' time range held out at its end.
        #[arg(long, default_value_t = 0.3)]
        holdout: f64,
        /// Also write the figures as JSON here.
        #[arg(long)]
        report: Option<PathBuf>,
        /// Also evaluate this registered forecast model: NAME or NAME@VERSION.
        #[arg(long)]
        model: Option<String>,
        #[arg(long, env = "STRATUS_MODELS", default_value = "models/registry")]
        registry: String,
        /// Instead of evaluating, write the training range's features and targets as CSV (what
        /// models/train_forecast.py learns from).
        #[arg(long)]
        write_training_rows: Option<PathBuf>,
    },
}

async fn forecast_model(
    model: &str,
    registry: &str,
) -> Result<crate::forecast::model::ForecastModel> {
    use crate::score::registry::{ModelRef, Registry};
    let reference: ModelRef = model.parse().map_err(Error::from)?;
    let r = Registry::open(registry, &crate::sink::storage_options_from_env())?;
    let version = r.resolve(&reference).await?;
    let loaded = r.load(&reference.name, version).await?;
    let label = format!("{}@{version}", reference.name);
    crate::forecast::model::ForecastModel::new(&label, &loaded.onnx).map_err(Error::from)
}

fn evaluate(command: Evaluate, runtime: &tokio::runtime::Runtime) -> Result<()> {
    use crate::score::detect::DetectorSpec;
    match command {
        Evaluate::Detect {
            input,
            labels,
            out,
            detectors,
        } => {
            let specs = match detectors {
                None => DetectorSpec::default_ensemble(),
                Some(file) => {
                    let text = std::fs::read_to_string(&file).map_err(|e| {
                        Error::from(format!("{}: cannot read: {e}", file.display()))
                    })?;
                    serde_norway::from_str(&text)
                        .map_err(|e| Error::from(format!("{}: {e}", file.display())))?
                }
            };
            std::fs::create_dir_all(&out)?;
            let report = crate::evaluate::detect::evaluate(&input, &labels, &out, &specs)
                .map_err(Error::from)?;
            print!("{}", crate::evaluate::detect::render(&report));
            crate::say!(
                "scores in {}, report in {}",
                out.display(),
                out.join("report.json").display()
            );
        }
        Evaluate::Forecast {
            input,
            step,
            horizons,
            season,
            holdout,
            report,
            model,
            registry,
            write_training_rows,
        } => {
            use crate::evaluate::forecast;
            let us = |what: &str, text: &str| {
                crate::duration::parse_duration(text)
                    .map_err(|e| Error::from(format!("--{what}: {e}")))
                    .and_then(|v| {
                        if v > 0 {
                            Ok(v)
                        } else {
                            Err(Error::from(format!("--{what} must be positive")))
                        }
                    })
            };
            if !(0.05..0.95).contains(&holdout) {
                return Err("--holdout must be in [0.05, 0.95)".into());
            }
            let config = forecast::ForecastConfig {
                step_us: us("step", &step)?,
                horizons_us: horizons
                    .split(',')
                    .map(|h| us("horizons", h.trim()))
                    .collect::<Result<_>>()?,
                season_us: us("season", &season)?,
                holdout,
            };
            let series = forecast::read_series(&input).map_err(Error::from)?;
            if let Some(path) = write_training_rows {
                let rows =
                    forecast::write_training_rows(&series, &config, &path).map_err(Error::from)?;
                crate::say!("{rows} training rows in {}", path.display());
                return Ok(());
            }
            let mut model = match model {
                Some(m) => Some(runtime.block_on(forecast_model(&m, &registry))?),
                None => None,
            };
            let figures =
                forecast::evaluate(&series, &config, model.as_mut()).map_err(Error::from)?;
            print!("{}", forecast::render(&figures));
            if let Some(path) = report {
                std::fs::write(&path, serde_json::to_string_pretty(&figures)?)
                    .map_err(|e| Error::from(format!("{}: cannot write: {e}", path.display())))?;
            }
        }
    }
    Ok(())
}

/// The properties in `file`, if one is given.
/// The duration a flag gives.
fn duration(flag: &str, text: &str) -> Result<std::time::Duration> {
    crate::duration::parse_duration(text)
        .map(|us| std::time::Duration::from_micros(us.max(0) as u64))
        .map_err(|e| Error::from(format!("--{flag}: {e}")))
}

/// The process's memory limit as `--memory-limit` gives it.
fn memory_limit_of(text: &str) -> Result<std::sync::Arc<crate::job::memory::MemoryLimit>> {
    let limit = crate::job::memory::parse_limit(text)
        .map_err(|e| Error::from(format!("--memory-limit (STRATUS_MEMORY_LIMIT): {e}")))?;
    Ok(std::sync::Arc::new(crate::job::memory::MemoryLimit::new(
        limit,
    )))
}

fn kafka_properties(file: Option<PathBuf>) -> Result<KafkaProperties> {
    Ok(match file {
        Some(path) => KafkaProperties::from_file(&path)?,
        None => KafkaProperties::default(),
    })
}

/// Checks `file` and writes it, with the files it names, to the control topic.
async fn submit(file: &std::path::Path, cluster: &ClusterArgs, functions: Functions) -> Result<()> {
    let overrides = crate::pipeline::Overrides {
        functions,
        ..Default::default()
    };
    let pipeline = match crate::pipeline::Pipeline::load_with(file, &overrides).await {
        Ok(p) => p,
        Err(diagnostics) => {
            eprintln!("{diagnostics}");
            return Err(format!(
                "{}: {} error(s); nothing was submitted",
                file.display(),
                diagnostics.0.len()
            )
            .into());
        }
    };
    if !pipeline.group_problems.is_empty() {
        eprintln!(
            "{}",
            crate::pipeline::Diagnostics(pipeline.group_problems.clone())
        );
        return Err(format!(
            "{}: cannot run in a consumer group, as a cluster's workers run it; nothing was \
             submitted",
            file.display()
        )
        .into());
    }
    let definition = crate::cluster::control::bundle(file, &pipeline.name)?;
    let plane = cluster.plane()?;
    plane.ensure_topics().await?;
    plane.publish_definition(&definition).await?;
    println!(
        "submitted `{}` (version {}, {} files) to {}",
        definition.name,
        definition.version,
        definition.files.len() + 1,
        plane.control
    );
    Ok(())
}

/// `stratus pipelines …`.
async fn pipelines(command: PipelinesCommand, cluster: &ClusterArgs) -> Result<()> {
    use crate::cluster::control::Wanted;
    let plane = cluster.plane()?;
    plane.ensure_topics().await?;
    let workers = |name: &str, version: i64| -> Result<String> {
        let mut out = Vec::new();
        for s in plane.statuses()?.into_iter().filter(|s| s.pipeline == name) {
            let earlier = if s.version == version {
                ""
            } else {
                " (an earlier version)"
            };
            let error = s.error.map(|e| format!(": {e}")).unwrap_or_default();
            out.push(format!("{}: {}{earlier}{error}", s.worker, s.state));
        }
        Ok(out.join("; "))
    };
    match command {
        PipelinesCommand::List => {
            println!(
                "{:<24} {:<8} {:<14} WORKERS",
                "PIPELINE", "WANTED", "VERSION"
            );
            for d in plane.definitions()?.values() {
                let wanted = match d.state {
                    Wanted::Running => "running",
                    Wanted::Stopped => "stopped",
                };
                println!(
                    "{:<24} {:<8} {:<14} {}",
                    d.name,
                    wanted,
                    d.version,
                    workers(&d.name, d.version)?
                );
            }
        }
        PipelinesCommand::Describe { name } => {
            let d = plane.definition(&name)?;
            println!(
                "pipeline: {}
wanted: {:?}
version: {}",
                d.name, d.state, d.version
            );
            println!("workers: {}", workers(&d.name, d.version)?);
            println!(
                "--- {}
{}",
                d.file, d.text
            );
            for (path, text) in &d.files {
                println!(
                    "--- {path}
{text}"
                );
            }
        }
        PipelinesCommand::Stop { ref name } | PipelinesCommand::Resume { ref name } => {
            let mut d = plane.definition(name)?;
            d.state = match command {
                PipelinesCommand::Stop { .. } => Wanted::Stopped,
                _ => Wanted::Running,
            };
            d.version = chrono::Utc::now().timestamp_millis();
            plane.publish_definition(&d).await?;
            println!("`{name}`: {:?} (version {})", d.state, d.version);
        }
    }
    Ok(())
}

/// `stratus worker`, with its metrics server.
async fn worker(
    config: crate::cluster::worker::WorkerConfig,
    metrics_addr: std::net::SocketAddr,
) -> Result<()> {
    let shutdown = shutdown_signal();
    let (metrics, health, bound, _server) = serve_metrics(metrics_addr).await?;
    eprintln!(
        "stratus: worker {} starting; metrics on http://{bound}/metrics",
        config.id
    );
    crate::cluster::worker::run_worker(config, metrics, health, shutdown).await?;
    eprintln!("stratus: worker stopped");
    Ok(())
}

/// A metrics server with fresh metrics and health, on `addr`.
async fn serve_metrics(
    addr: std::net::SocketAddr,
) -> Result<(
    crate::metrics::PipelineMetrics,
    crate::metrics::health::Health,
    std::net::SocketAddr,
    tokio::task::JoinHandle<()>,
)> {
    use crate::metrics::server::{ServerState, serve};
    let metrics = crate::metrics::PipelineMetrics::new();
    let health = crate::metrics::health::Health::new();
    let (bound, server) = serve(
        addr,
        ServerState {
            metrics: metrics.clone(),
            health: health.clone(),
        },
    )
    .await?;
    Ok((metrics, health, bound, server))
}

/// Completes on SIGTERM or Ctrl-C. The handlers are in place when this returns, before the
/// future is first polled: a SIGTERM that comes while the run is still starting (Kubernetes
/// stops a pod whenever it likes) stops it as cleanly as a later one, rather than killing it.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = signal(SignalKind::terminate()).and_then(|term| {
        let interrupt = signal(SignalKind::interrupt())?;
        Ok((term, interrupt))
    });
    async move {
        let (mut term, mut interrupt) = match handlers {
            Ok(h) => h,
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM and SIGINT: {e}");
                return std::future::pending().await;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = interrupt.recv() => {}
        }
        eprintln!("stratus: stopping: flushing and committing");
    }
}

async fn run(
    file: PathBuf,
    config: crate::job::run::RunConfig,
    metrics_addr: std::net::SocketAddr,
    overrides: crate::pipeline::Overrides,
    cluster: bool,
) -> Result<()> {
    let pipeline = match crate::pipeline::Pipeline::load_with(&file, &overrides).await {
        Ok(p) => p,
        Err(diagnostics) => {
            eprintln!("{diagnostics}");
            return Err(format!(
                "{}: {} error(s); nothing was started",
                file.display(),
                diagnostics.0.len()
            )
            .into());
        }
    };
    let shutdown = shutdown_signal();
    let (metrics, health, bound, _server) = serve_metrics(metrics_addr).await?;
    eprintln!(
        "stratus: pipeline `{}` starting; metrics on http://{bound}/metrics",
        pipeline.name
    );
    let summary = match cluster {
        true => crate::cluster::run_member(&pipeline, &config, metrics, health, shutdown).await?,
        false => {
            crate::job::run::run_pipeline(&pipeline, &config, metrics, health, shutdown).await?
        }
    };
    eprintln!(
        "stratus: stopped: {} events ({} invalid, {} too late) in {} cycles",
        summary.events, summary.invalid, summary.late, summary.cycles
    );
    if let Some(peak) = config.memory.peak() {
        let limit = config
            .memory
            .limit()
            .map_or("no memory limit".to_string(), |l| {
                format!("memory limit {} MiB", l >> 20)
            });
        eprintln!("stratus: peak resident set {} MiB, {limit}", peak >> 20);
    }
    Ok(())
}

/// The `stratus` command line with `functions` added to its SQL: parses the process's
/// arguments, runs the command, and returns its exit code (an error is printed first).
pub fn main(functions: Functions) -> std::process::ExitCode {
    match command(functions) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stratus: {}", explained(e.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}

/// `e` and each cause under it that its message does not already say, joined by `: `.
pub(crate) fn explained(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let said = c.to_string();
        if !text.contains(&said) {
            text = format!("{text}: {said}");
        }
        cause = c.source();
    }
    text
}

/// Whether a panic raised in `file` with `message` is one a dependency catches itself: not
/// printed as a panic, since nothing fails. delta-rs aborts a multipart upload whose completion
/// failed (an object store cut off mid-upload) inside `catch_unwind`, as object_store's
/// `BufWriter::abort` panics for an upload already shutting down, then warns that the parts
/// are left for the store's lifecycle rules and retries the commit.
fn caught_upstream(file: &str, message: Option<&str>) -> bool {
    let file = file.replace('\\', "/");
    file.contains("/object_store-")
        && file.ends_with("/src/buffered.rs")
        && message == Some("Already shut down")
}

/// The log filter unless `RUST_LOG` says otherwise.
pub const QUIET: &str =
    "warn,buoyant_kernel::snapshot::builder=off,deltalake_core::kernel::transaction=error";

fn command(functions: Functions) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                // delta-kernel logs an ERROR when probing a table that does not exist yet,
                // which is how every new table starts; delta-rs a WARN each time a commit lost
                // the race to another writer's and is made on top of it, routine with workers.
                tracing_subscriber::EnvFilter::new(QUIET)
            }),
        )
        .with_writer(std::io::stderr)
        // Colours for a terminal only: a log collected from a pipe or a file (Kubernetes, a
        // service manager) is plain text.
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .init();
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str));
        let file = info.location().map_or("", |l| l.file());
        match caught_upstream(file, message) {
            true => tracing::debug!("{file}: {message:?}, caught where it was raised"),
            false => default_hook(info),
        }
    }));
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let outcome = dispatch(cli.command, functions, &runtime);
    // What a failed run left in flight (a table read on a blocking thread) is not waited for:
    // cancelled by a waiting shutdown, delta-kernel's reads panic instead of ending.
    runtime.shutdown_background();
    outcome
}

fn dispatch(
    command: Command,
    functions: Functions,
    runtime: &tokio::runtime::Runtime,
) -> Result<()> {
    match command {
        Command::Validate { file } => {
            let overrides = crate::pipeline::Overrides {
                functions,
                ..Default::default()
            };
            match runtime.block_on(crate::pipeline::Pipeline::load_with(&file, &overrides)) {
                Ok(p) => {
                    crate::say!(
                        "{}: ok — pipeline `{}`: {} source(s), {} stage(s), {} sink(s)",
                        file.display(),
                        p.name,
                        p.sources.len(),
                        p.stages.len(),
                        p.sinks.len()
                    );
                    for stage in &p.stages {
                        let window = stage
                            .window()
                            .map_or("no window".to_string(), |w| w.to_string());
                        let columns: Vec<&str> = stage
                            .output_schema
                            .fields()
                            .iter()
                            .map(|f| f.name().as_str())
                            .collect();
                        crate::say!("  stage {} ({window}) → {}", stage.name, columns.join(", "));
                        if let crate::pipeline::StageKind::Score(score) = &stage.kind {
                            for model in &score.unwatched {
                                crate::say!(
                                    "    {model}: its manifest records no training \
                                     distribution, so its input drift is not watched \
                                     (retrain it with scripts/train, or record one with \
                                     models/record_distribution.py)"
                                );
                            }
                        }
                    }
                    if p.group_problems.is_empty() {
                        crate::say!("  in a consumer group: each partition can run apart");
                        for s in p.sources.iter().filter(|s| !s.repartition_by.is_empty()) {
                            crate::say!(
                                "    source {} re-keyed by ({}) through topic {}: its stages \
                                 keep their state by keys its `key` does not follow",
                                s.name,
                                s.repartition_by.join(", "),
                                s.repartition_topic(&p.name)
                            );
                        }
                    } else {
                        crate::say!(
                            "  not in a consumer group (stratus run --cluster, submit, worker), \
                             only as one process:\n{}",
                            crate::pipeline::Diagnostics(p.group_problems.clone())
                        );
                    }
                }
                Err(diagnostics) => {
                    eprintln!("{diagnostics}");
                    eprintln!("{}: {} error(s)", file.display(), diagnostics.0.len());
                    std::process::exit(2);
                }
            }
        }
        Command::Run {
            file,
            brokers,
            kafka_config,
            tables,
            metrics_addr,
            until_caught_up,
            give_up_after,
            memory_limit,
            watermark_stuck_after,
            replay,
            name,
            until_stage,
            cluster,
        } => {
            let replay = replay
                .iter()
                .map(|r| match r.split_once('=') {
                    Some((source, path)) => Ok((source.to_string(), PathBuf::from(path))),
                    None => Err(Error::from(format!("--replay {r:?}: write SOURCE=FILE"))),
                })
                .collect::<Result<_>>()?;
            let overrides = crate::pipeline::Overrides {
                name,
                replay,
                until_stage,
                functions,
            };
            let config = crate::job::run::RunConfig {
                brokers,
                kafka: kafka_properties(kafka_config)?,
                table_root: tables,
                storage_options: crate::sink::storage_options_from_env(),
                until_caught_up,
                max_future: std::time::Duration::from_secs(300),
                give_up_after: duration("give-up-after", &give_up_after)?,
                watermark_stuck_after: duration("watermark-stuck-after", &watermark_stuck_after)?,
                shard: None,
                memory: memory_limit_of(&memory_limit)?,
            };
            runtime.block_on(run(file, config, metrics_addr, overrides, cluster))?
        }
        Command::Maintain {
            tables,
            root,
            target_size_mib,
            retention,
        } => {
            let retention_us = crate::duration::parse_duration(&retention).map_err(Error::from)?;
            let mut config =
                crate::sink::maintain::MaintainConfig::new(crate::sink::storage_options_from_env());
            config.retention = chrono::Duration::microseconds(retention_us);
            if let Some(size) = std::num::NonZeroU64::new(target_size_mib << 20) {
                config.target_size = size;
            }
            for table in tables {
                let location = crate::sink::resolve_location(&root, &table);
                let done = runtime.block_on(crate::sink::maintain::maintain(&location, &config))?;
                crate::say!(
                    "{location}: {} files → {} ({} partitions compacted), {} data files \
                     vacuumed, {} log files removed; version {}",
                    done.files_before,
                    done.files_after,
                    done.partitions_compacted,
                    done.files_deleted,
                    done.logs_removed,
                    done.version
                );
            }
        }
        Command::Bench {
            brokers,
            events,
            keys,
            partitions,
            max_rows,
            dir,
            memory_limit,
            run_pipeline,
            soak,
            days,
            soak_pipeline,
            rate,
            seconds,
            workers,
            live_pipeline,
            delta_commits,
            table_root,
        } => {
            if let Some(root) = delta_commits {
                return Ok(runtime.block_on(crate::bench::commit::delta_commits(&root))?);
            }
            let keys = keys.unwrap_or(if soak { 10_000 } else { 100_000 });
            for (file, live) in [(run_pipeline, false), (live_pipeline, true)] {
                if let Some(file) = file {
                    let memory = memory_limit_of(&memory_limit)?;
                    return Ok(runtime.block_on(crate::bench::run_pipeline_file(
                        &brokers,
                        &file,
                        events,
                        live,
                        memory,
                        table_root.as_deref(),
                    ))?);
                }
            }
            if let Some(file) = soak_pipeline {
                return Ok(runtime.block_on(crate::bench::soak::soak_pipeline_file(
                    &brokers, &file, keys,
                ))?);
            }
            if dir.exists() {
                std::fs::remove_dir_all(&dir)?;
            }
            if let Some(rate) = rate {
                let config = crate::bench::rate::RateConfig {
                    brokers,
                    rate,
                    seconds,
                    keys,
                    partitions,
                    max_rows,
                    root: std::env::current_dir()?,
                    work_dir: std::path::absolute(&dir)?,
                    table_root,
                };
                if !workers.is_empty() {
                    return Ok(runtime.block_on(crate::bench::cluster::cluster(&config, &workers))?);
                }
                return Ok(runtime.block_on(crate::bench::rate::rate(&config))?);
            }
            if soak {
                let config = crate::bench::soak::SoakConfig {
                    brokers,
                    keys,
                    days,
                    max_rows,
                    root: std::env::current_dir()?,
                    work_dir: std::path::absolute(&dir)?,
                };
                return Ok(runtime.block_on(crate::bench::soak::soak(&config))?);
            }
            let config = crate::bench::BenchConfig {
                brokers,
                events,
                keys,
                partitions,
                max_rows,
                memory_limit,
                root: std::env::current_dir()?,
                work_dir: std::path::absolute(&dir)?,
            };
            runtime.block_on(crate::bench::run(&config))?;
        }
        Command::Demo {
            days,
            resources,
            seed,
            out,
        } => {
            let config = crate::demo::DemoConfig {
                days,
                resources,
                seed,
                out_dir: out,
            };
            runtime.block_on(crate::demo::run(&config))?;
        }
        Command::Submit { file, cluster } => {
            runtime.block_on(submit(&file, &cluster, functions))?
        }
        Command::Pipelines { command, cluster } => {
            runtime.block_on(pipelines(command, &cluster))?
        }
        Command::Worker {
            cluster,
            worker_id,
            tables,
            workdir,
            metrics_addr,
            give_up_after,
            memory_limit,
        } => {
            let id = worker_id.unwrap_or_else(|| {
                let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_string())
                    .unwrap_or_else(|_| "worker".into());
                format!("{host}-{}", std::process::id())
            });
            let run = crate::job::run::RunConfig {
                give_up_after: duration("give-up-after", &give_up_after)?,
                memory: memory_limit_of(&memory_limit)?,
                kafka: kafka_properties(cluster.kafka_config.clone())?,
                until_caught_up: false,
                ..crate::job::run::RunConfig::backfill(
                    &cluster.brokers,
                    &tables,
                    crate::sink::storage_options_from_env(),
                )
            };
            let config = crate::cluster::worker::WorkerConfig {
                run,
                plane: cluster.plane()?,
                workdir: workdir
                    .unwrap_or_else(|| std::env::temp_dir().join(format!("stratus-worker-{id}"))),
                id,
                overrides: crate::pipeline::Overrides {
                    functions,
                    ..Default::default()
                },
            };
            runtime.block_on(worker(config, metrics_addr))?
        }
        Command::Evaluate(command) => evaluate(command, runtime)?,
        Command::Models(command) => runtime.block_on(models(command))?,
        Command::Generate(args) => generate(args)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{caught_upstream, explained};

    /// Only object_store's "Already shut down" from its buffered writer, which delta-rs catches,
    /// is kept from being printed as a panic; any other panic there, or that message from
    /// elsewhere, is printed.
    #[test]
    fn only_the_panic_delta_rs_catches_is_not_printed() {
        let buffered = "/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/\
                        object_store-0.13.2/src/buffered.rs";
        assert!(caught_upstream(buffered, Some("Already shut down")));
        assert!(!caught_upstream(buffered, Some("index out of bounds")));
        assert!(!caught_upstream(buffered, None));
        assert!(!caught_upstream(
            "src/job/run.rs",
            Some("Already shut down")
        ));
    }

    #[derive(Debug, thiserror::Error)]
    enum Failure {
        /// Context only: the cause is its source.
        #[error("pipeline cloud-metrics")]
        Context(#[source] std::io::Error),
        /// A message that says its cause already.
        #[error("cannot read x: {0}")]
        Says(#[source] std::io::Error),
    }

    #[test]
    fn a_failure_is_printed_with_every_cause_it_does_not_say_itself() {
        let io = || std::io::Error::other("disk full");
        assert_eq!(
            explained(&Failure::Context(io())),
            "pipeline cloud-metrics: disk full"
        );
        assert_eq!(explained(&Failure::Says(io())), "cannot read x: disk full");
    }
}
