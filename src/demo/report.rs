//! The demo's HTML report: one self-contained file (inline SVG, no script, nothing fetched),
//! so it opens offline in any browser.
//!
//! In: the demo's tables and the generator's labels. Out: `report.html` with
//! - per instance, its CPU utilisation (5-minute mean) over time, the windows the ensemble
//!   flagged (anomaly score ≥ the report's threshold) as red dots, and the labelled anomalies as
//!   shaded bands;
//! - per spot pool, the hourly price and the forecast made 6 hours before each hour, with its
//!   80 % and 95 % intervals as bands;
//! - the instance mix's Pareto front (cost against risk), the chosen point marked.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use datafusion::prelude::SessionContext;

use super::{DemoReport, Result, THRESHOLDS};
use crate::generate::Labels;

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 140.0;
const PAD: f64 = 30.0;

/// One instance's CPU series: (window end µs, mean, anomaly score).
type Series = Vec<(i64, f64, f64)>;

async fn cpu_series(ctx: &SessionContext) -> Result<BTreeMap<String, Series>> {
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
        r#"<svg class="chart cpu" data-resource="{}" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" xmlns="http://www.w3.org/2000/svg" role="img"><title>{} CPU utilisation</title>"#,
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

/// The forecast horizon the report draws.
const HORIZON: i64 = 6;
const HOUR: i64 = 3_600_000_000;

/// A frame mapping (x, y) values onto a chart's area.
struct Frame {
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
}

impl Frame {
    fn fit(xs: impl Iterator<Item = f64> + Clone, ys: impl Iterator<Item = f64> + Clone) -> Self {
        let (x0, x1) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
        let (y0, y1) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
        let pad = ((y1 - y0) * 0.05).max(1e-9);
        Frame {
            x0,
            x1: x1.max(x0 + 1e-9),
            y0: y0 - pad,
            y1: y1 + pad,
        }
    }
    fn x(&self, v: f64) -> f64 {
        PAD + (v - self.x0) / (self.x1 - self.x0) * (WIDTH - 2.0 * PAD)
    }
    fn y(&self, v: f64) -> f64 {
        HEIGHT - PAD / 2.0 - (v - self.y0) / (self.y1 - self.y0) * (HEIGHT - PAD)
    }

    /// The value range as labels: the y extremes at the left edge, the x extremes below.
    fn axes(&self, x: impl Fn(f64) -> String, y: impl Fn(f64) -> String) -> String {
        let style = r##"font-size="9" fill="#6b7280""##;
        format!(
            r#"<text class="axis" x="2" y="{:.1}" {style}>{}</text><text class="axis" x="2" y="{:.1}" {style}>{}</text><text class="axis" x="{PAD}" y="{:.1}" {style}>{}</text><text class="axis" x="{:.1}" y="{:.1}" {style} text-anchor="end">{}</text>"#,
            self.y(self.y1) + 9.0,
            y(self.y1),
            self.y(self.y0),
            y(self.y0),
            HEIGHT - 1.0,
            x(self.x0),
            WIDTH - PAD,
            HEIGHT - 1.0,
            x(self.x1)
        )
    }
}

fn time_label(us: f64) -> String {
    chrono::DateTime::from_timestamp_micros(us as i64)
        .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_default()
}

/// One pool's hourly price as a step line, and the forecasts made `HORIZON` hours before each
/// hour: the 95 % and 80 % intervals as bands, the median dashed.
fn forecast_chart(
    pool: &str,
    prices: &[(i64, f64)],
    rows: &[super::figures::ForecastRow],
) -> String {
    let rows: Vec<_> = rows.iter().filter(|r| r.horizon == HORIZON).collect();
    if rows.is_empty() || prices.is_empty() {
        return String::new();
    }
    let target = |r: &super::figures::ForecastRow| (r.origin + r.horizon * HOUR) as f64;
    let xs = prices
        .iter()
        .map(|p| p.0 as f64)
        .chain(rows.iter().map(|r| target(r)));
    let ys = prices
        .iter()
        .map(|p| p.1)
        .chain(rows.iter().flat_map(|r| [r.quantiles[0], r.quantiles[4]]));
    let f = Frame::fit(xs, ys);
    let mut svg = format!(
        r#"<svg class="chart forecast" data-pool="{}" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" xmlns="http://www.w3.org/2000/svg" role="img"><title>{} spot price and its {HORIZON}-hour forecast</title>"#,
        escape(pool),
        escape(pool)
    );
    let band = |lo: usize, hi: usize| {
        let upper = rows
            .iter()
            .map(|r| format!("{:.1},{:.1}", f.x(target(r)), f.y(r.quantiles[hi])));
        let lower = rows
            .iter()
            .rev()
            .map(|r| format!("{:.1},{:.1}", f.x(target(r)), f.y(r.quantiles[lo])));
        upper.chain(lower).collect::<Vec<_>>().join(" ")
    };
    let _ = write!(
        svg,
        r##"<polygon class="interval95" fill="#dbeafe" points="{}"><title>95 % interval</title></polygon><polygon class="interval80" fill="#93c5fd" points="{}"><title>80 % interval</title></polygon>"##,
        band(0, 4),
        band(1, 3)
    );
    let median: Vec<String> = rows
        .iter()
        .map(|r| format!("{:.1},{:.1}", f.x(target(r)), f.y(r.quantiles[2])))
        .collect();
    let _ = write!(
        svg,
        r##"<polyline class="median" fill="none" stroke="#1d4ed8" stroke-dasharray="4 3" stroke-width="1" points="{}"/>"##,
        median.join(" ")
    );
    // The price holds until its next change: a step line.
    let mut steps = Vec::new();
    for (i, &(t, v)) in prices.iter().enumerate() {
        if i > 0 {
            steps.push(format!("{:.1},{:.1}", f.x(t as f64), f.y(prices[i - 1].1)));
        }
        steps.push(format!("{:.1},{:.1}", f.x(t as f64), f.y(v)));
    }
    let _ = write!(
        svg,
        r##"<polyline class="price" fill="none" stroke="#111827" stroke-width="1.2" points="{}"/>{}<text x="{PAD}" y="12" font-size="11" fill="#374151">{} — spot USD/h (black), forecast {HORIZON} h ahead: median (dashed), 80 % and 95 % intervals (bands)</text></svg>"##,
        steps.join(" "),
        f.axes(time_label, |v| format!("{v:.4}")),
        escape(pool)
    );
    svg
}

/// The Pareto front: expected cost (USD/h) against risk, each point titled with its mix, the
/// chosen one in red.
fn pareto_chart(subject: &str, points: &[(f64, f64, String, bool)]) -> String {
    if points.is_empty() {
        return String::new();
    }
    let f = Frame::fit(
        points.iter().map(|p| p.0),
        points.iter().map(|p| p.1).chain([0.0]),
    );
    let mut svg = format!(
        r#"<svg class="chart pareto" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" xmlns="http://www.w3.org/2000/svg" role="img"><title>{} instance mix: cost against risk</title>"#,
        escape(subject)
    );
    let mut sorted: Vec<_> = points.iter().collect();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let line: Vec<String> = sorted
        .iter()
        .map(|p| format!("{:.1},{:.1}", f.x(p.0), f.y(p.1)))
        .collect();
    let _ = write!(
        svg,
        r##"<polyline fill="none" stroke="#9ca3af" stroke-width="1" points="{}"/>"##,
        line.join(" ")
    );
    for (cost, risk, mix, chosen) in points {
        let (class, fill, r) = if *chosen {
            ("point chosen", "#dc2626", 5.0)
        } else {
            ("point", "#2563eb", 3.5)
        };
        let _ = write!(
            svg,
            r##"<circle class="{class}" cx="{:.1}" cy="{:.1}" r="{r}" fill="{fill}"><title>{} — {cost:.3} USD/h, risk {risk:.3}</title></circle>"##,
            f.x(*cost),
            f.y(*risk),
            escape(mix)
        );
    }
    let _ = write!(
        svg,
        r##"{}<text x="{PAD}" y="12" font-size="11" fill="#374151">{} — expected cost USD/h (→) against interruption risk (↑); red: chosen under the pipeline's weights</text></svg>"##,
        f.axes(|v| format!("{v:.3} USD/h"), |v| format!("{v:.3}")),
        escape(subject)
    );
    svg
}

/// Writes the report; returns how many charts it holds.
pub async fn write(
    path: &std::path::Path,
    report: &DemoReport,
    ctx: &SessionContext,
    labels: &Labels,
) -> Result<usize> {
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
    let mut charts = 0;
    for (name, s) in &series {
        html.push_str(&chart(name, s, labels, threshold));
        charts += 1;
    }
    let forecasts = super::figures::forecasts(ctx).await?;
    let f = &report.forecasts;
    let _ = write!(
        html,
        "<h2>Spot price forecasts</h2><p>The spot_price model's forecasts from each hour; of the \
         {} whose hour has come, {:.0} % held the price inside the 80 % interval and {:.0} % inside \
         the 95 % interval.</p>",
        f.checked,
        100.0 * f.inside_80 as f64 / f.checked.max(1) as f64,
        100.0 * f.inside_95 as f64 / f.checked.max(1) as f64
    );
    for (pool, rows) in &forecasts.rows {
        let prices = forecasts.prices.get(pool).map_or(&[][..], Vec::as_slice);
        let svg = forecast_chart(pool, prices, rows);
        charts += usize::from(!svg.is_empty());
        html.push_str(&svg);
    }
    if let Some((subject, points)) = super::figures::pareto_front(ctx).await? {
        let _ = write!(
            html,
            "<h2>Instance mix for {}</h2><p>The cost / risk Pareto front of the latest instance-mix \
             recommendation; hover a point for its mix.</p>",
            escape(&subject)
        );
        html.push_str(&pareto_chart(&subject, &points));
        charts += 1;
    }
    html.push_str("</body></html>\n");
    std::fs::write(path, html)?;
    Ok(charts)
}
