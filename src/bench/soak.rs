//! `stratus bench --soak`: whether a long run costs what its first day cost.
//!
//! In: keys and days. The bench streams that many days of event time — one `cloud.metrics`
//! point per key per minute, in time order, generated as it goes — through a named pipe into
//! the bench pipeline (raw rows, 1- and 5-minute features with 24-hour carried baselines, to
//! Delta and a topic), which runs as a process of its own, as `stratus run` would. Out: one row
//! per simulated day, reported by that process as the day's last event is read: its resident
//! set size and peak, the bytes its newest checkpoint wrote beside the bytes of the state that
//! checkpoint stands for, and events/s over the day. Flat rows from day 2 on
//! (day 1 fills the 24-hour baselines) say the state is bounded.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use tokio::io::AsyncBufReadExt;

use super::{BenchError, MINUTE_WINDOWS, Result, pipeline_yaml, rss_mib, run_marking};
use crate::demo::events::metric_events;
use crate::job::run::RunConfig;
use crate::pipeline::Pipeline;
use crate::say;

/// Minutes of event time per simulated day.
const DAY_MINUTES: usize = 1440;

/// What to soak.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    pub brokers: String,
    pub keys: usize,
    pub days: usize,
    /// Events per cycle (`commit.max_rows`).
    pub max_rows: usize,
    /// The repository root (for the schema and SQL files).
    pub root: PathBuf,
    pub work_dir: PathBuf,
}

const MIB: f64 = 1024.0 * 1024.0;

/// One simulated day, as the pipeline process saw it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct DayReport {
    pub day: usize,
    /// Events of the days so far.
    pub events: u64,
    /// Wall-clock seconds the day took.
    pub seconds: f64,
    pub rss_mib: f64,
    pub peak_rss_mib: f64,
    /// Bytes the newest checkpoint wrote when the day ended, and the bytes of the state it
    /// stands for (every file it lists).
    pub checkpoint_bytes: i64,
    pub checkpoint_state_bytes: i64,
}

/// Runs the soak and prints a row per day.
pub async fn soak(config: &SoakConfig) -> Result<()> {
    std::fs::create_dir_all(&config.work_dir)?;
    let name = format!("stratus-soak-{}", chrono::Utc::now().timestamp_millis());
    say!(
        "stratus bench --soak: {} keys, {} days of one point per key per minute ({} events), {} events per cycle",
        config.keys,
        config.days,
        config.keys * config.days * DAY_MINUTES,
        config.max_rows
    );
    let pipe = config.work_dir.join("events.pipe");
    let made = std::process::Command::new("mkfifo").arg(&pipe).status()?;
    if !made.success() {
        return Err(BenchError::Create {
            path: pipe,
            source: std::io::Error::other("mkfifo failed"),
        });
    }
    let file = config.work_dir.join(format!("{name}.yaml"));
    let source = format!("file: {{path: {}}}", pipe.display());
    std::fs::write(
        &file,
        pipeline_yaml(
            &config.root,
            &config.root.join("sql"),
            &name,
            &source,
            config.max_rows,
            MINUTE_WINDOWS,
        ),
    )?;
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args(["bench", "--brokers", &config.brokers, "--keys"])
        .arg(config.keys.to_string())
        .arg("--soak-pipeline")
        .arg(&file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .map_err(BenchError::Start)?;
    let (keys, days) = (config.keys.max(1), config.days.max(1));
    let writer = tokio::task::spawn_blocking(move || write_events(&pipe, keys, days));
    let Some(stdout) = child.stdout.take() else {
        return Err(BenchError::Start(std::io::Error::other("no stdout")));
    };
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    println!(
        "| day | events | events/s | RSS (MiB) | peak RSS (MiB) | checkpoint written (MiB) | state checkpointed (MiB) |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    while let Some(line) = lines.next_line().await? {
        let day: DayReport = serde_json::from_str(&line).map_err(|source| BenchError::Report {
            line: line.clone(),
            source,
        })?;
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} |",
            day.day,
            day.events,
            (keys * DAY_MINUTES) as f64 / day.seconds,
            day.rss_mib,
            day.peak_rss_mib,
            day.checkpoint_bytes as f64 / MIB,
            day.checkpoint_state_bytes as f64 / MIB,
        );
    }
    let status = child.wait().await?;
    writer
        .await
        .map_err(|e| BenchError::Start(std::io::Error::other(e.to_string())))??;
    if !status.success() {
        return Err(BenchError::RunFailed { file, status });
    }
    Ok(())
}

/// Writes `days` of one point per key per minute to the named pipe at `pipe`, ending 30 s
/// after a 5-minute boundary well in the past.
fn write_events(pipe: &Path, keys: usize, days: usize) -> Result<()> {
    let mut out = std::io::BufWriter::with_capacity(
        1 << 20,
        std::fs::OpenOptions::new().write(true).open(pipe)?,
    );
    let minutes = days * DAY_MINUTES;
    let now_ms = chrono::Utc::now().timestamp_millis();
    let end_ms = now_ms - now_ms.rem_euclid(300_000) - 300_000 + 30_000;
    for minute in 0..minutes {
        let minute_end = end_ms - (minutes - minute - 1) as i64 * 60_000;
        for e in metric_events(minute as u64, keys, keys, minute_end, 0) {
            out.write_all(&e.payload)?;
            out.write_all(b"\n")?;
        }
    }
    out.flush()?;
    Ok(())
}

/// The pipeline process's side: runs the soak pipeline file to the end (a backfill of the
/// pipe) and prints a [`DayReport`] as a JSON line each time another `keys` × 1,440 events
/// have been read.
pub async fn soak_pipeline_file(brokers: &str, file: &Path, keys: usize) -> Result<()> {
    let pipeline = Pipeline::load(file).await?;
    let tables = file.with_extension("").display().to_string();
    let config = RunConfig::backfill(brokers, &tables, Default::default());
    let per_day = (keys.max(1) * DAY_MINUTES) as u64;
    let mut started = Instant::now();
    run_marking(&pipeline, &config, per_day, None, |day, _, metrics| {
        let line = DayReport {
            day: day as usize,
            events: day * per_day,
            seconds: started.elapsed().as_secs_f64(),
            rss_mib: rss_mib().0,
            // The memory limit restarts the peak each cycle it measures: it keeps the highest.
            peak_rss_mib: config
                .memory
                .peak()
                .map_or(f64::NAN, |b| b as f64 / (1 << 20) as f64),
            checkpoint_bytes: metrics
                .checkpoint_bytes
                .with_label_values(&[pipeline.name.as_str()])
                .get(),
            checkpoint_state_bytes: metrics
                .checkpoint_state_bytes
                .with_label_values(&[pipeline.name.as_str()])
                .get(),
        };
        started = Instant::now();
        println!("{}", serde_json::to_string(&line)?);
        Ok(())
    })
    .await?;
    Ok(())
}
