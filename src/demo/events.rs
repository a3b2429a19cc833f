//! Seeded synthetic `cloud.metrics` events for the demo, with a known share of invalid ones.
//!
//! Out: `(key, payload, valid)` triples. Valid events follow `schemas/cloud.metrics.json`; the
//! invalid ones are each wrong in one way the validator must catch (malformed JSON, a missing
//! field, an unknown unit, a string where a number belongs, an implausible time).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

/// One generated event.
#[derive(Debug, Clone)]
pub struct GeneratedEvent {
    pub key: String,
    pub payload: Vec<u8>,
    pub valid: bool,
}

const METRICS: [(&str, &str); 3] = [
    ("CPUUtilization", "Percent"),
    ("NetworkIn", "Bytes"),
    ("StatusCheckFailed", "Count"),
];
const ZONES: [&str; 3] = ["us-east-1a", "us-east-1b", "us-east-1c"];

/// `count` events for `resources` EC2 instances, one data point a minute each, ending at
/// `end_ms`; about `invalid_per_mille`/1000 of them are invalid.
pub fn metric_events(
    seed: u64,
    count: usize,
    resources: usize,
    end_ms: i64,
    invalid_per_mille: u32,
) -> Vec<GeneratedEvent> {
    let mut rng = StdRng::seed_from_u64(seed);
    let resources = resources.max(1);
    let steps = count.div_ceil(resources) as i64;
    (0..count)
        .map(|i| {
            let r = i % resources;
            let step = (i / resources) as i64;
            let ts_ms = end_ms - (steps - step) * 60_000;
            let (mut event, key) = metric_event(r, ts_ms, &mut rng);
            let valid = rng.random_range(0..1000) >= invalid_per_mille;
            let payload = if valid {
                event.to_string().into_bytes()
            } else {
                corrupt(&mut event, &mut rng)
            };
            GeneratedEvent {
                key,
                payload,
                valid,
            }
        })
        .collect()
}

/// The data point of EC2 instance number `resource` at `ts_ms`, and its key (the instance id).
pub fn metric_event(resource: usize, ts_ms: i64, rng: &mut StdRng) -> (serde_json::Value, String) {
    let r = resource;
    let (metric, unit) = METRICS[r % METRICS.len()];
    let resource_id = format!("i-{:017x}", 0xabc000 + r);
    let base = 20.0 + (r % 7) as f64 * 8.0;
    let value = match unit {
        "Percent" => (base + rng.random_range(-5.0..5.0_f64)).clamp(0.0, 100.0),
        "Bytes" => (base * 1e5 * rng.random_range(0.5..1.5_f64)).round(),
        _ => f64::from(rng.random_bool(0.01)),
    };
    let ts = chrono::DateTime::from_timestamp_millis(ts_ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default();
    let event = json!({
        "ts": ts,
        "account_id": format!("1234567890{:02}", r % 4),
        "region": "us-east-1",
        "az": ZONES[r % ZONES.len()],
        "resource_id": resource_id,
        "service": "EC2",
        "namespace": "AWS/EC2",
        "metric": metric,
        "value": value,
        "unit": unit,
        "dimensions": {"InstanceId": resource_id, "AutoScalingGroupName": format!("asg-{}", r % 5)}
    });
    (event, resource_id)
}

/// Makes a valid `cloud.metrics` event invalid in one of five ways the validator must catch.
pub fn corrupt(event: &mut serde_json::Value, rng: &mut StdRng) -> Vec<u8> {
    match rng.random_range(0..5) {
        0 => b"{\"ts\": \"2026-01-01T00:00:00Z\", \"value\": ".to_vec(),
        1 => {
            event.as_object_mut().map(|o| o.remove("metric"));
            event.to_string().into_bytes()
        }
        2 => {
            event["unit"] = json!("Furlongs");
            event.to_string().into_bytes()
        }
        3 => {
            event["value"] = json!("high");
            event.to_string().into_bytes()
        }
        _ => {
            event["ts"] = json!("1970-01-01T00:00:00Z");
            event.to_string().into_bytes()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::{BatchDecoder, EventSchema, TimeBounds};
    use std::sync::Arc;

    #[test]
    fn generated_events_are_valid_exactly_when_labelled_valid() {
        let schema = EventSchema::from_file(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/schemas/cloud.metrics.json"
        )))
        .unwrap();
        let end_ms = 1_767_225_600_000;
        let mut d = BatchDecoder::new(
            Arc::new(schema),
            TimeBounds::plausible(end_ms * 1000, 0),
            64,
        );
        let events = metric_events(7, 2000, 40, end_ms, 50);
        let invalid = events.iter().filter(|e| !e.valid).count();
        assert!((50..=150).contains(&invalid), "{invalid}");
        for e in &events {
            assert_eq!(
                d.decode(&e.payload).is_ok(),
                e.valid,
                "{}",
                String::from_utf8_lossy(&e.payload)
            );
        }
        let again = metric_events(7, 2000, 40, end_ms, 50);
        assert!(
            events
                .iter()
                .zip(&again)
                .all(|(a, b)| a.payload == b.payload)
        );
    }
}
