use std::collections::HashMap;
use std::sync::Arc;

use super::*;
use crate::validate::{BatchDecoder, EventSchema, TimeBounds};

const HOUR_US: i64 = 3_600_000_000;

fn config(seed: u64) -> GenerateConfig {
    GenerateConfig {
        seed,
        start_us: 1_764_547_200_000_000, // 2025-12-01T00:00:00Z, a Monday
        span_us: 4 * 24 * HOUR_US,
        interval_us: 5 * 60_000_000,
        resources: 12,
        anomaly_share: 0.5,
    }
}

type Events = Vec<(&'static str, String, String, i64)>;

fn run(config: &GenerateConfig) -> (Events, Labels) {
    let mut events = Vec::new();
    let labels =
        generate(config, &mut |topic: &'static str,
                               key: &str,
                               payload: &str,
                               ts: i64| {
            events.push((topic, key.to_string(), payload.to_string(), ts));
            Ok(())
        })
        .unwrap();
    (events, labels)
}

#[test]
fn the_same_seed_gives_the_same_events_and_another_seed_others() {
    let (a, la) = run(&config(7));
    let (b, lb) = run(&config(7));
    let (c, _) = run(&config(8));
    assert_eq!(a, b);
    assert_eq!(la.anomalies, lb.anomalies);
    assert_ne!(a, c);
}

#[test]
fn every_event_is_valid_for_its_schema_and_each_topic_is_in_time_order() {
    let (events, _) = run(&config(1));
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    let mut decoders: HashMap<&str, BatchDecoder> = HashMap::new();
    for topic in [METRICS_TOPIC, SPOT_TOPIC, BILLING_TOPIC] {
        let schema = EventSchema::from_file(&root.join(format!("{topic}.json"))).unwrap();
        let bounds = TimeBounds::plausible(i64::MAX / 2, 0);
        decoders.insert(topic, BatchDecoder::new(Arc::new(schema), bounds, 1024));
    }
    let mut last: HashMap<&str, i64> = HashMap::new();
    let mut per_topic: HashMap<&str, usize> = HashMap::new();
    for (topic, _, payload, ts) in &events {
        if let Err(e) = decoders.get_mut(topic).unwrap().decode(payload.as_bytes()) {
            panic!("{topic}: {e}: {payload}");
        }
        let before = last.insert(topic, *ts).unwrap_or(i64::MIN);
        assert!(*ts >= before, "{topic} out of order at {payload}");
        *per_topic.entry(topic).or_default() += 1;
    }
    // 12 resources × 3 metrics × 4 days of 5-minute points.
    assert_eq!(per_topic[METRICS_TOPIC], 12 * 3 * 4 * 288);
    assert!(
        per_topic[SPOT_TOPIC] >= 18,
        "at least the opening price of each series"
    );
    assert!(per_topic[BILLING_TOPIC] > 12 * 24 * 3);
}

#[test]
fn a_history_too_short_for_an_anomaly_labels_none_and_still_generates() {
    let c = GenerateConfig {
        span_us: 20 * 60_000_000,
        interval_us: 60_000_000,
        anomaly_share: 1.0,
        ..config(5)
    };
    let (events, labels) = run(&c);
    assert!(labels.anomalies.iter().all(|a| a.start_us < a.end_us));
    assert_eq!(
        events.iter().filter(|e| e.0 == METRICS_TOPIC).count(),
        12 * 3 * 20
    );
}

#[test]
fn restatements_reuse_a_line_item_id_later_with_another_cost() {
    let (events, _) = run(&config(3));
    let mut seen: HashMap<String, (i64, String)> = HashMap::new();
    let mut restated = 0;
    for (topic, key, payload, ts) in events.iter().filter(|e| e.0 == BILLING_TOPIC) {
        let _ = topic;
        if let Some((first_ts, first)) = seen.get(key) {
            restated += 1;
            assert!(ts > first_ts);
            assert_ne!(first, payload);
        } else {
            seen.insert(key.clone(), (*ts, payload.clone()));
        }
    }
    let share = restated as f64 / seen.len() as f64;
    assert!(
        (0.01..0.06).contains(&share),
        "{restated} of {}",
        seen.len()
    );
}

#[test]
fn anomalies_are_labelled_inside_the_history_and_visible_in_the_data() {
    let c = config(11);
    let (events, labels) = run(&c);
    assert!(!labels.anomalies.is_empty());
    for a in &labels.anomalies {
        assert!(
            a.start_us >= c.start_us && a.end_us <= c.start_us + c.span_us && a.start_us < a.end_us,
            "{a:?}"
        );
    }
    // A CPU level shift lifts the resource's CPU against the same hours a day earlier.
    let value = |payload: &str| -> f64 {
        let v: serde_json::Value = serde_json::from_str(payload).unwrap();
        v["value"].as_f64().unwrap()
    };
    for a in labels.anomalies.iter().filter(|a| a.kind == "level_shift") {
        let mean = |from: i64, to: i64| {
            let vals: Vec<f64> = events
                .iter()
                .filter(|e| e.0 == METRICS_TOPIC && e.1 == a.subject && (from..to).contains(&e.3))
                .filter(|e| e.2.contains("CPUUtilization"))
                .map(|e| value(&e.2))
                .collect();
            vals.iter().sum::<f64>() / vals.len().max(1) as f64
        };
        let during = mean(a.start_us, a.end_us);
        let day_before = mean(a.start_us - 24 * HOUR_US, a.end_us - 24 * HOUR_US);
        assert!(during > day_before * 1.2, "{a:?}: {during} vs {day_before}");
    }
}
