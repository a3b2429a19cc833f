//! The demo's HTML report: one self-contained file (inline SVG, no script, nothing fetched),
//! so it opens offline in any browser.
//!
//! In: the demo's anomaly score table and the generator's labels. Out: `report.html` with, per
//! instance, its CPU utilisation (5-minute mean) over time, the windows the ensemble flagged
//! (anomaly score ≥ the report's threshold) as red dots, and the labelled anomalies as shaded
//! bands.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use datafusion::prelude::SessionContext;

use super::{DemoReport, THRESHOLDS};
use crate::generate::Labels;

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 140.0;
const PAD: f64 = 30.0;

/// One instance's CPU series: (window end µs, mean, anomaly score).
type Series = Vec<(i64, f64, f64)>;

async fn cpu_series(ctx: &SessionContext) -> anyhow::Result<BTreeMap<String, Series>> {
    let mut out: BTreeMap<String, Series> = BTreeMap::new();
    if !ctx.table_exist("metric_anomaly_scores_5m")? {
        return Ok(out);
    }
    let batches = ctx
        .sql(
            "SELECT CAST(resource_id AS VARCHAR) AS r, CAST(window_end AS BIGINT) AS t, \
             mean AS v, anomaly_score AS s FROM metric_anomaly_scores_5m \
             WHERE metric = 'CPUUtilization' ORDER BY r, t",
        )
        .await?
        .collect()
        .await?;
    for b in &batches {
        let r = arrow::compute::cast(b.column(0), &DataType::Utf8)?;
        let r = r.as_string::<i32>();
        let t = arrow::compute::cast(b.column(1), &DataType::Int64)?;
        let t = t.as_primitive::<Int64Type>();
        let v = arrow::compute::cast(b.column(2), &DataType::Float64)?;
        let v = v.as_primitive::<Float64Type>();
        let s = arrow::compute::cast(b.column(3), &DataType::Float64)?;
        let s = s.as_primitive::<Float64Type>();
        for i in 0..b.num_rows() {
            if r.is_valid(i) && t.is_valid(i) && v.is_valid(i) && s.is_valid(i) {
                out.entry(r.value(i).to_string()).or_default().push((
                    t.value(i),
                    v.value(i),
                    s.value(i),
                ));
            }
        }
    }
    Ok(out)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// One chart: the series as a line, flagged windows as dots, labelled anomalies as bands.
fn chart(name: &str, series: &Series, labels: &Labels, threshold: f64) -> String {
    let (Some(first), Some(last)) = (series.first(), series.last()) else {
        return String::new();
    };
    let (t0, t1) = (first.0, last.0.max(first.0 + 1));
    let x = |t: i64| PAD + (t - t0) as f64 / (t1 - t0) as f64 * (WIDTH - 2.0 * PAD);
    let y = |v: f64| HEIGHT - PAD / 2.0 - v.clamp(0.0, 100.0) / 100.0 * (HEIGHT - PAD);
    let mut svg = format!(
        r#"<svg class="chart" data-resource="{}" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" xmlns="http://www.w3.org/2000/svg" role="img"><title>{} CPU utilisation</title>"#,
        escape(name),
        escape(name)
    );
    // Metric anomalies only: cost leaks and price spikes are not on this chart.
    let marked = labels
        .anomalies
        .iter()
        .filter(|a| a.subject == name && a.metric != "cost" && a.metric != "price");
    for a in marked {
        let (a0, a1) = (x(a.start_us.max(t0)), x(a.end_us.min(t1)));
        let _ = write!(
            svg,
            r##"<rect class="label" x="{a0:.1}" y="0" width="{:.1}" height="{HEIGHT}" fill="#fde68a"><title>{} {}: {} to {}</title></rect>"##,
            (a1 - a0).max(2.0),
            a.kind,
            a.metric,
            a.start,
            a.end
        );
    }
    let points: Vec<String> = series
        .iter()
        .map(|&(t, v, _)| format!("{:.1},{:.1}", x(t), y(v)))
        .collect();
    let _ = write!(
        svg,
        r##"<polyline fill="none" stroke="#2563eb" stroke-width="1" points="{}"/>"##,
        points.join(" ")
    );
    for &(t, v, s) in series.iter().filter(|p| p.2 >= threshold) {
        let _ = write!(
            svg,
            r##"<circle class="flag" cx="{:.1}" cy="{:.1}" r="2.5" fill="#dc2626"><title>score {s:.2}</title></circle>"##,
            x(t),
            y(v)
        );
    }
    let _ = write!(
        svg,
        r##"<text x="{PAD}" y="12" font-size="11" fill="#374151">{} — CPU % (5-minute mean)</text></svg>"##,
        escape(name)
    );
    svg
}

/// Writes the report; returns how many charts it holds.
pub async fn write(
    path: &std::path::Path,
    report: &DemoReport,
    ctx: &SessionContext,
    labels: &Labels,
) -> anyhow::Result<usize> {
    let threshold = THRESHOLDS.last().copied().unwrap_or(0.7);
    let series = cpu_series(ctx).await?;
    let mut html = String::from(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Stratus demo report</title>\
         <style>body{font-family:system-ui,sans-serif;margin:2em;color:#111}table{border-collapse:collapse}\
         td,th{border:1px solid #ddd;padding:4px 8px;text-align:right}.chart{display:block;margin:8px 0}</style>\
         </head><body><h1>Stratus demo</h1>",
    );
    let _ = write!(
        html,
        "<p>{} events ({} invalid, sent to the dead-letter topic); {} one-minute and {} five-minute \
         windows; {} windows scored. Labelled anomalies are shaded; red dots are windows with an \
         anomaly score of at least {threshold}.</p><table><tr><th>score ≥</th><th>anomalies found</th>\
         <th>flagged windows</th><th>inside an anomaly</th></tr>",
        report.produced, report.invalid, report.features_1m, report.features_5m, report.scored_5m
    );
    for d in &report.detection {
        let _ = write!(
            html,
            "<tr><td>{:.1}</td><td>{} of {}</td><td>{}</td><td>{}</td></tr>",
            d.threshold, d.found, d.labelled, d.flagged, d.flagged_in_anomaly
        );
    }
    html.push_str("</table><h2>CPU utilisation per instance</h2>");
    for (name, s) in &series {
        html.push_str(&chart(name, s, labels, threshold));
    }
    html.push_str("</body></html>\n");
    std::fs::write(path, html)?;
    Ok(series.len())
}
