//! `stratus demo` end to end on its embedded Kafka: every produced event is accounted for, the
//! feature windows that closed are in their tables, every 5-minute window is scored, the spot
//! and billing pipelines forecast, recommend and alert, the report renders in Chromium, and the
//! shipped rules and dashboard read only series the run exports.

use stratus::demo::{DemoConfig, run};

use crate::unique;

#[tokio::test(flavor = "multi_thread")]
async fn demo_lands_every_valid_event_and_dead_letters_the_rest() {
    let out = std::env::temp_dir().join(unique("it-demo"));
    // 3 instances × 3 metrics, one point a minute each, for 2.5 days (the spot forecasts need
    // two): at most 3 of the 8 partitions get a key, and the empty ones must not hold the
    // backfill's watermark back.
    let report = run(&DemoConfig {
        days: 2.5,
        resources: 3,
        seed: 5,
        out_dir: out.clone(),
    })
    .await
    .unwrap();
    assert_eq!(report.produced, 3 * 3 * 1440 * 5 / 2);
    // The shipped rules and dashboard read series the three shipped pipelines export.
    let scraped = std::fs::read_to_string(out.join("metrics.prom")).unwrap();
    crate::exported::assert_rules_and_dashboard_read_what_is_exported(&scraped);
    // Spot forecasts whose target came are counted against their actuals.
    let spot = [("pipeline", "spot-prices")];
    let resolved = crate::exported::sum(&scraped, "stratus_forecasts_resolved_total", &spot);
    let covered = |level| {
        let matching = [("pipeline", "spot-prices"), ("level", level)];
        crate::exported::sum(&scraped, "stratus_forecast_covered_total", &matching)
    };
    assert!(resolved > 100.0, "{resolved} spot forecasts resolved");
    assert!(
        covered("80") <= covered("95")
            && covered("95") <= resolved
            && covered("95") > 0.5 * resolved,
        "{} / {} of {resolved}",
        covered("80"),
        covered("95")
    );
    assert!(report.spot_events > 0 && report.billing_events > 0);
    assert!(report.produced_invalid > 0);
    assert_eq!(report.invalid, report.produced_invalid as u64);
    assert_eq!(
        report.valid,
        (report.produced - report.produced_invalid) as u64
    );
    assert_eq!(report.raw_rows, report.valid as i64);
    // Every valid point but those in still-open windows is in a closed 1-minute window.
    assert!(
        report.features_1m > 0 && report.features_1m <= report.valid,
        "{report:?}"
    );
    assert!(
        report.features_5m > 0 && report.features_5m < report.features_1m,
        "{report:?}"
    );
    assert_eq!(report.scored_5m, report.features_5m);
    let labels: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("labels.json")).unwrap()).unwrap();
    let metric_labels = labels["anomalies"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["metric"] != "cost" && a["metric"] != "price")
        .count();
    assert_eq!(report.detection.len(), 3);
    for pair in report.detection.windows(2) {
        // A higher threshold flags a subset.
        assert!(pair[1].flagged <= pair[0].flagged && pair[1].found <= pair[0].found);
    }
    for d in &report.detection {
        assert_eq!(d.labelled, metric_labels);
        assert!(d.found <= d.labelled && d.flagged_in_anomaly <= d.flagged);
    }
    let cost_leaks = labels["anomalies"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == "cost_leak")
        .count();
    assert_eq!(report.cost_alerts.len(), 3);
    assert!(report.cost_alerts.iter().all(|a| a.labelled == cost_leaks));
    // The spot pipeline forecast from each pool's third day and recommended for the workloads.
    let f = &report.forecasts;
    assert!(f.rows > 0 && f.checked > 0 && f.checked <= f.rows, "{f:?}");
    assert!(
        f.inside_80 <= f.inside_95 && f.inside_95 <= f.checked,
        "{f:?}"
    );
    let kinds: Vec<&str> = report
        .recommendations
        .iter()
        .map(|r| r.kind.as_str())
        .collect();
    for kind in ["instance_mix", "spot_vs_on_demand"] {
        assert!(kinds.contains(&kind), "{kinds:?}");
    }
    // The report: one CPU chart per instance, a forecast chart per spot pool with both
    // intervals, the Pareto front with one chosen point; self-contained (nothing to fetch, no
    // script).
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert_eq!(html.matches("<svg class=\"chart cpu\"").count(), 3);
    assert_eq!(html.matches("class=\"label\"").count(), metric_labels);
    let forecasts = html.matches("<svg class=\"chart forecast\"").count();
    assert!(forecasts > 0);
    for band in ["interval80", "interval95"] {
        assert_eq!(
            html.matches(&format!("class=\"{band}\"")).count(),
            forecasts
        );
    }
    assert_eq!(html.matches("<svg class=\"chart pareto\"").count(), 1);
    assert_eq!(html.matches("class=\"point chosen\"").count(), 1);
    for outside in ["<script", " src=", " href=", "url("] {
        assert!(
            !html.contains(outside),
            "the report refers outside itself: {outside}"
        );
    }
    // Headless Chromium (Debian's package) renders it: every chart in the DOM, no console
    // message, nothing fetched.
    let browser = std::process::Command::new(crate::setting("STRATUS_CHROMIUM"))
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--enable-logging=stderr",
        ])
        .args(["--v=0", "--dump-dom"])
        .arg(format!("file://{}", out.join("report.html").display()))
        .output()
        .unwrap();
    assert!(browser.status.success());
    let dom = String::from_utf8_lossy(&browser.stdout);
    assert_eq!(dom.matches("<svg class=\"chart cpu\"").count(), 3, "{dom}");
    assert_eq!(
        dom.matches("<svg class=\"chart forecast\"").count(),
        forecasts
    );
    assert_eq!(dom.matches("<svg class=\"chart pareto\"").count(), 1);
    // Every chart draws its lines: CPU, forecast median and price, the Pareto front.
    assert_eq!(dom.matches("<polyline").count(), 3 + 2 * forecasts + 1);
    let log = String::from_utf8_lossy(&browser.stderr);
    let console: Vec<&str> = log.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(console.is_empty(), "console messages: {console:?}");
    std::fs::remove_dir_all(&out).unwrap();
}
