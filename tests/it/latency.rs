//! A live stream's window results go out as soon as the watermark closes the window, not when
//! a cycle of a million events or an hour ends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use stratus::job::run::{RunConfig, run_pipeline};
use stratus::metrics::PipelineMetrics;
use stratus::metrics::health::Health;
use stratus::pipeline::Pipeline;

use crate::{create_topic, metric_event, produce, read_delta, setting, unique};

/// Polls `check` every 20 ms until it holds; panics, saying `what`, after `limit`.
async fn until(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "{what} not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_window_is_committed_as_soon_as_the_watermark_closes_it() {
    let brokers = setting("STRATUS_KAFKA_BROKERS");
    let topic = unique("it-latency");
    create_topic(&topic, 1).await;
    let dir = std::env::temp_dir().join(unique("it-latency"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("counts.sql"),
        "SELECT resource_id, window_start, count(*) AS n FROM metrics \
         GROUP BY resource_id, tumble(interval '1 second')",
    )
    .unwrap();
    let name = unique("it-latency");
    let root = env!("CARGO_MANIFEST_DIR");
    // Cycles of a million events or an hour: only a window's close can end one soon.
    let yaml = format!(
        "name: {name}\n\
         sources:\n  metrics:\n    kafka: {{topic: {topic}, group: {name}}}\n    schema: {root}/schemas/cloud.metrics.json\n    event_time: {{field: ts, max_out_of_orderness: 1s}}\n\
         stages:\n  counts: {{sql: counts.sql}}\n\
         sinks:\n  counts: {{from: counts, delta: {{table: counts}}}}\n\
         commit: {{max_rows: 1000000, max_interval: 1h}}\n"
    );
    let pipeline = Pipeline::from_yaml(&dir.join("p.yaml"), &yaml)
        .await
        .unwrap();
    let tables = dir.join("tables");
    let mut config =
        RunConfig::backfill(&brokers, &tables.display().to_string(), Default::default());
    config.until_caught_up = false;
    let health = Health::new();
    let stop = Arc::new(tokio::sync::Notify::new());
    let run = {
        let (health, stop) = (health.clone(), stop.clone());
        tokio::spawn(async move {
            run_pipeline(
                &pipeline,
                &config,
                PipelineMetrics::new(),
                health,
                stop.notified(),
            )
            .await
        })
    };
    until(
        "the pipeline reading",
        Duration::from_secs(60),
        async || health.report().is_ok(),
    )
    .await;

    // One event in a window, then one whose event time moves the watermark past its end.
    let now = chrono::Utc::now().timestamp_millis();
    produce(
        &topic,
        &[metric_event(now, 1), metric_event(now + 3_000, 2)],
    )
    .await;
    let table = tables.join("counts").display().to_string();
    until(
        "the window's result in Delta",
        Duration::from_secs(60),
        async || tables.join("counts/_delta_log").exists() && !read_delta(&table).await.is_empty(),
    )
    .await;
    let rows = read_delta(&table).await;
    assert_eq!(rows.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    let n = rows[0]
        .column_by_name("n")
        .unwrap()
        .as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .unwrap()
        .value(0);
    assert_eq!(n, 1, "the first event's window, closed by the second");

    stop.notify_one();
    let summary = run.await.unwrap().unwrap();
    assert_eq!(summary.events, 2);
    std::fs::remove_dir_all(&dir).unwrap();
}
