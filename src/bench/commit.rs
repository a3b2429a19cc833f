//! `stratus bench --delta-commits ROOT`: one Delta append's latency as the table's log grows.
//!
//! In: a table root (an `s3://` URL, with the `AWS_*` settings of the environment, or a
//! directory), under which a fresh table is made. Out: at a few log lengths, p50 / p99 / max
//! of delta-rs's default commit — whose post-commit hook lists the whole `_delta_log` on every
//! commit (to clean expired log files) and writes a checkpoint inside every 100th — beside the
//! commit Stratus's sink makes ([`commit_properties`]: neither; it writes checkpoints beside
//! its appends and cleans the log when it vacuums). The two alternate on the same table, one
//! row each, so both see the same log.

use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, Int64Array, RecordBatch};
use deltalake::DeltaTable;
use deltalake::kernel::transaction::CommitProperties;

use super::{BenchError, Result, percentile};
use crate::say;
use crate::sink::delta::{commit_properties, open_table};
use crate::sink::storage_options_from_env;

/// Log lengths (commits) at which the two are timed.
const LOG_LENGTHS: [usize; 3] = [100, 1_000, 2_000];
/// Commits timed of each kind at each length.
const TIMED: usize = 25;

fn row(v: i64) -> Result<RecordBatch> {
    let a: ArrayRef = Arc::new(Int64Array::from(vec![v]));
    Ok(RecordBatch::try_from_iter([("v", a)])?)
}

/// Appends one row; returns the table after and the milliseconds the append took.
async fn append(
    table: DeltaTable,
    v: i64,
    properties: CommitProperties,
    location: &str,
) -> Result<(DeltaTable, f64)> {
    let started = Instant::now();
    let table = table
        .write(vec![row(v)?])
        .with_commit_properties(properties)
        .await
        .map_err(|source| BenchError::Delta {
            table: location.to_string(),
            source: Box::new(source),
        })?;
    Ok((table, started.elapsed().as_secs_f64() * 1e3))
}

fn summary(mut ms: Vec<f64>) -> String {
    ms.sort_by(f64::total_cmp);
    format!(
        "{:.1} / {:.1} / {:.1}",
        percentile(&ms, 50.0),
        percentile(&ms, 99.0),
        ms.last().copied().unwrap_or(f64::NAN)
    )
}

/// Times the two kinds of commit on a fresh table under `root`, and prints them.
pub async fn delta_commits(root: &str) -> Result<()> {
    let location = format!(
        "{}/bench-delta-commit-{}",
        root.trim_end_matches('/'),
        chrono::Utc::now().timestamp_millis()
    );
    let mut table = open_table(&location, &storage_options_from_env()).await?;
    say!("one-row Delta appends to {location}, {TIMED} of each kind per log length, alternating");
    say!("");
    say!(
        "| log length (commits) | delta-rs's default commit p50 / p99 / max (ms) | Stratus's commit p50 / p99 / max (ms) |"
    );
    say!("| ---: | ---: | ---: |");
    let mut commits = 0_i64;
    for length in LOG_LENGTHS {
        while commits < length as i64 {
            (table, _) = append(table, commits, commit_properties(Vec::new()), &location).await?;
            commits += 1;
        }
        let (mut default, mut ours) = (Vec::new(), Vec::new());
        for _ in 0..TIMED {
            let (t, ms) = append(table, commits, CommitProperties::default(), &location).await?;
            default.push(ms);
            let (t, ms) = append(t, commits + 1, commit_properties(Vec::new()), &location).await?;
            ours.push(ms);
            table = t;
            commits += 2;
        }
        say!("| {length} | {} | {} |", summary(default), summary(ours));
    }
    Ok(())
}
