//! The demo's figures, read back from its Delta tables with DataFusion: detections and alerts
//! scored against the generator's labels, recommendations and their savings, and the spot
//! forecasts' interval coverage on what the prices then did.
//!
//! In: a session with the demo's tables registered under their names, and the labels.
//! Out: plain structs for the summary, the report and tests.

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use datafusion::prelude::SessionContext;

use super::{DemoError, Result, THRESHOLDS};
use crate::generate::Labels;

/// An anomaly counts as found by a window or alert ending up to this long after it.
const GRACE: i64 = 30 * 60_000_000;

/// Windows flagged (anomaly score ≥ `threshold`) against the generator's labels. A window is
/// inside an anomaly when its resource is the labelled one — any of its metrics, since a CPU
/// anomaly moves its network traffic too — and it ends during the anomaly or up to 30 minutes
/// after.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Detection {
    pub threshold: f64,
    /// Injected metric anomalies (spikes, level shifts, dips, memory drifts).
    pub labelled: usize,
    /// Of those, the ones with a flagged window inside them.
    pub found: usize,
    pub flagged: usize,
    pub flagged_in_anomaly: usize,
}

/// Alerts of one severity (their highest) against labelled anomalies: an alert is right when
/// its subject had a labelled anomaly that overlaps the alert's span (from its first message to
/// its last, with 30 minutes' grace after the anomaly).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AlertFigures {
    pub severity: String,
    pub alerts: usize,
    pub right: usize,
    /// Labelled anomalies with an alert of this severity or higher.
    pub found: usize,
    pub labelled: usize,
}

/// Recommendations of one kind at their latest revision, and their expected savings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecommendationFigures {
    pub kind: String,
    pub count: u64,
    /// USD a month.
    pub savings: f64,
}

/// One forecast row: from `origin`, the quantiles of the price `horizon` hours on.
#[derive(Debug, Clone, PartialEq)]
pub struct ForecastRow {
    pub origin: i64,
    pub horizon: i64,
    pub quantiles: [f64; 5],
}

/// The spot forecasts and the hourly prices they forecast, per pool (`type zone`).
#[derive(Debug, Clone, Default)]
pub struct Forecasts {
    pub prices: BTreeMap<String, Vec<(i64, f64)>>,
    pub rows: BTreeMap<String, Vec<ForecastRow>>,
}

/// How often the price then fell inside the forecast's intervals.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ForecastFigures {
    pub rows: usize,
    /// Rows whose target hour has passed within the demo's data.
    pub checked: usize,
    pub inside_80: usize,
    pub inside_95: usize,
}

const HOUR: i64 = 3_600_000_000;

fn strings(b: &RecordBatch, i: usize) -> Result<Vec<Option<String>>> {
    let c = arrow::compute::cast(b.column(i), &DataType::Utf8)?;
    Ok(c.as_string::<i32>()
        .iter()
        .map(|v| v.map(str::to_string))
        .collect())
}

fn ints(b: &RecordBatch, i: usize) -> Result<Vec<Option<i64>>> {
    let c = arrow::compute::cast(b.column(i), &DataType::Int64)?;
    Ok(c.as_primitive::<Int64Type>().iter().collect())
}

fn floats(b: &RecordBatch, i: usize) -> Result<Vec<Option<f64>>> {
    let c = arrow::compute::cast(b.column(i), &DataType::Float64)?;
    Ok(c.as_primitive::<Float64Type>().iter().collect())
}

async fn query(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>> {
    Ok(ctx.sql(sql).await?.collect().await?)
}

/// Scores the flagged windows against the labelled metric anomalies, per threshold.
pub async fn detection(ctx: &SessionContext, labels: &Labels) -> Result<Vec<Detection>> {
    let anomalies: Vec<_> = labels
        .anomalies
        .iter()
        .filter(|a| a.metric != "cost" && a.metric != "price")
        .collect();
    let mut out: Vec<Detection> = THRESHOLDS
        .iter()
        .map(|&threshold| Detection {
            threshold,
            labelled: anomalies.len(),
            ..Detection::default()
        })
        .collect();
    if !ctx.table_exist("metric_anomaly_scores_5m")? {
        return Ok(out);
    }
    let lowest = THRESHOLDS.iter().copied().fold(f64::INFINITY, f64::min);
    let flagged = query(
        ctx,
        &format!(
            "SELECT resource_id, CAST(window_end AS BIGINT), anomaly_score \
             FROM metric_anomaly_scores_5m WHERE anomaly_score >= {lowest}"
        ),
    )
    .await?;
    let mut found = vec![vec![false; anomalies.len()]; THRESHOLDS.len()];
    for b in &flagged {
        let (r, t, s) = (strings(b, 0)?, ints(b, 1)?, floats(b, 2)?);
        for ((r, t), s) in r.iter().zip(t).zip(s) {
            let (Some(r), Some(t), Some(s)) = (r, t, s) else {
                continue;
            };
            let hits: Vec<usize> = anomalies
                .iter()
                .enumerate()
                .filter(|(_, a)| a.subject == *r && t > a.start_us && t <= a.end_us + GRACE)
                .map(|(j, _)| j)
                .collect();
            for (k, d) in out.iter_mut().enumerate() {
                if s < d.threshold {
                    continue;
                }
                d.flagged += 1;
                d.flagged_in_anomaly += usize::from(!hits.is_empty());
                for &j in &hits {
                    found[k][j] = true;
                }
            }
        }
    }
    for (d, f) in out.iter_mut().zip(found) {
        d.found = f.iter().filter(|x| **x).count();
    }
    Ok(out)
}

/// Alerts in `table` by their highest severity, scored against `anomalies` — (subject, start,
/// end µs) — where `subject` is the SQL expression naming an alert's subject the same way.
pub async fn alert_figures(
    ctx: &SessionContext,
    table: &str,
    subject: &str,
    anomalies: &[(String, i64, i64)],
) -> Result<Vec<AlertFigures>> {
    // No table: the pipeline raised no alert (each severity then counts none).
    let mut spans: Vec<(String, i64, i64, i64)> = Vec::new();
    if ctx.table_exist(table)? {
        let rows = query(
            ctx,
            &format!(
                "SELECT {subject}, \
                 max(CASE severity WHEN 'critical' THEN 2 WHEN 'warning' THEN 1 ELSE 0 END), \
                 CAST(min(started_at) AS BIGINT), CAST(max(ts) AS BIGINT) \
                 FROM {table} GROUP BY alert_id, {subject}"
            ),
        )
        .await?;
        for b in &rows {
            let (r, level, a, e) = (strings(b, 0)?, ints(b, 1)?, ints(b, 2)?, ints(b, 3)?);
            for (((r, level), a), e) in r.into_iter().zip(level).zip(a).zip(e) {
                if let (Some(r), Some(level), Some(a), Some(e)) = (r, level, a, e) {
                    spans.push((r, level, a, e));
                }
            }
        }
    }
    let overlaps = |s: &(String, i64, i64, i64), a: &(String, i64, i64)| {
        a.0 == s.0 && s.2 <= a.2 + GRACE && a.1 <= s.3
    };
    Ok(["critical", "warning", "info"]
        .iter()
        .enumerate()
        .map(|(k, name)| {
            let level = 2 - k as i64;
            let mine: Vec<_> = spans.iter().filter(|s| s.1 == level).collect();
            AlertFigures {
                severity: name.to_string(),
                alerts: mine.len(),
                right: mine
                    .iter()
                    .filter(|s| anomalies.iter().any(|a| overlaps(s, a)))
                    .count(),
                found: anomalies
                    .iter()
                    .filter(|a| spans.iter().any(|s| s.1 >= level && overlaps(s, a)))
                    .count(),
                labelled: anomalies.len(),
            }
        })
        .collect())
}

/// Recommendations at their latest revision, per kind, with their expected savings.
pub async fn recommendation_figures(ctx: &SessionContext) -> Result<Vec<RecommendationFigures>> {
    let mut out = Vec::new();
    for table in ["recommendations_rightsizing", "recommendations_spot"] {
        if !ctx.table_exist(table)? {
            continue;
        }
        let rows = query(
            ctx,
            &format!(
                "SELECT kind, count(*), coalesce(sum(s), 0) FROM \
                 (SELECT rec_id, kind, last_value(expected_savings_usd['expected'] ORDER BY revision) AS s \
                  FROM {table} GROUP BY rec_id, kind) GROUP BY kind ORDER BY kind"
            ),
        )
        .await?;
        for b in &rows {
            let (kind, count, savings) = (strings(b, 0)?, ints(b, 1)?, floats(b, 2)?);
            for ((kind, count), savings) in kind.into_iter().zip(count).zip(savings) {
                out.push(RecommendationFigures {
                    kind: kind.unwrap_or_default(),
                    count: count.unwrap_or(0) as u64,
                    savings: savings.unwrap_or(0.0),
                });
            }
        }
    }
    Ok(out)
}

/// The forecast stage's rows and the hourly prices of each pool.
pub async fn forecasts(ctx: &SessionContext) -> Result<Forecasts> {
    let mut out = Forecasts::default();
    if !ctx.table_exist("spot_price_forecasts")? || !ctx.table_exist("spot_price_features_1h")? {
        return Ok(out);
    }
    // Each hour at its latest revision.
    let prices = query(
        ctx,
        "SELECT concat(instance_type, ' ', az), CAST(window_start AS BIGINT), \
         last_value(mean_price ORDER BY revision) FROM spot_price_features_1h \
         GROUP BY instance_type, az, window_start",
    )
    .await?;
    for b in &prices {
        let (pool, t, v) = (strings(b, 0)?, ints(b, 1)?, floats(b, 2)?);
        for ((pool, t), v) in pool.into_iter().zip(t).zip(v) {
            if let (Some(pool), Some(t), Some(v)) = (pool, t, v) {
                out.prices.entry(pool).or_default().push((t, v));
            }
        }
    }
    for p in out.prices.values_mut() {
        p.sort_by_key(|x| x.0);
    }
    let rows = query(
        ctx,
        "SELECT concat(instance_type, ' ', az), CAST(ts AS BIGINT), horizon_hours, \
         p025, p10, p50, p90, p975 FROM spot_price_forecasts ORDER BY 1, 2, 3",
    )
    .await?;
    for b in &rows {
        let (pool, t, h) = (strings(b, 0)?, ints(b, 1)?, ints(b, 2)?);
        let q: Vec<Vec<Option<f64>>> = (3..8).map(|i| floats(b, i)).collect::<Result<_, _>>()?;
        for i in 0..b.num_rows() {
            let (Some(pool), Some(origin), Some(horizon)) = (&pool[i], t[i], h[i]) else {
                continue;
            };
            let Some(quantiles) = q.iter().map(|c| c[i]).collect::<Option<Vec<f64>>>() else {
                continue;
            };
            out.rows.entry(pool.clone()).or_default().push(ForecastRow {
                origin,
                horizon,
                quantiles: [
                    quantiles[0],
                    quantiles[1],
                    quantiles[2],
                    quantiles[3],
                    quantiles[4],
                ],
            });
        }
    }
    Ok(out)
}

/// The price of a step series at `t`: its last value at or before `t`.
pub fn price_at(prices: &[(i64, f64)], t: i64) -> Option<f64> {
    let i = prices.partition_point(|p| p.0 <= t);
    i.checked_sub(1).map(|i| prices[i].1)
}

impl Forecasts {
    /// Coverage of the intervals on the hours whose price is known.
    pub fn figures(&self) -> ForecastFigures {
        let mut f = ForecastFigures::default();
        for (pool, rows) in &self.rows {
            f.rows += rows.len();
            let prices = self.prices.get(pool).map_or(&[][..], Vec::as_slice);
            let last = prices.last().map_or(i64::MIN, |p| p.0);
            for r in rows {
                let target = r.origin + r.horizon * HOUR;
                let Some(actual) = price_at(prices, target).filter(|_| target <= last) else {
                    continue;
                };
                let q = r.quantiles;
                f.checked += 1;
                f.inside_80 += usize::from(q[1] <= actual && actual <= q[3]);
                f.inside_95 += usize::from(q[0] <= actual && actual <= q[4]);
            }
        }
        f
    }
}

/// The instance-mix Pareto front of the latest mix recommendation: its subject and points
/// (cost USD/h, risk, mix, chosen).
pub async fn pareto_front(
    ctx: &SessionContext,
) -> Result<Option<(String, Vec<(f64, f64, String, bool)>)>> {
    if !ctx.table_exist("recommendations_spot")? {
        return Ok(None);
    }
    let rows = query(
        ctx,
        "SELECT subject, pareto_front FROM recommendations_spot \
         WHERE kind = 'instance_mix' ORDER BY ts DESC, subject LIMIT 1",
    )
    .await?;
    let Some(b) = rows.iter().find(|b| b.num_rows() > 0) else {
        return Ok(None);
    };
    let subject = strings(b, 0)?.remove(0).unwrap_or_default();
    let Some(list) = b.column(1).as_list_opt::<i32>() else {
        return Err(DemoError::Table(
            "recommendations_spot.pareto_front is not a list",
        ));
    };
    if list.is_null(0) {
        return Ok(None);
    }
    let points = list.value(0);
    let Some(points) = points.as_struct_opt() else {
        return Err(DemoError::Table(
            "recommendations_spot.pareto_front holds no structs",
        ));
    };
    let column = |name: &str| {
        points
            .column_by_name(name)
            .ok_or_else(|| DemoError::ParetoField(name.to_string()))
    };
    let cost = arrow::compute::cast(column("cost_usd_hour")?, &DataType::Float64)?;
    let risk = arrow::compute::cast(column("risk")?, &DataType::Float64)?;
    let mix = arrow::compute::cast(column("mix")?, &DataType::Utf8)?;
    let chosen = arrow::compute::cast(column("chosen")?, &DataType::Boolean)?;
    let (cost, risk) = (
        cost.as_primitive::<Float64Type>(),
        risk.as_primitive::<Float64Type>(),
    );
    let (mix, chosen) = (mix.as_string::<i32>(), chosen.as_boolean());
    Ok(Some((
        subject,
        (0..points.len())
            .map(|i| {
                (
                    cost.value(i),
                    risk.value(i),
                    mix.value(i).to_string(),
                    chosen.value(i),
                )
            })
            .collect(),
    )))
}
