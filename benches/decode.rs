//! Decode + validate throughput: Stratus's schema-driven decoder against arrow-json's reader
//! (which decodes but checks no enum, range, length or time), on the same 200,000
//! `cloud.metrics` events, one core. Run: `cargo bench --bench decode`.

use std::io::Cursor;
use std::sync::Arc;
use std::time::Instant;

use arrow::json::ReaderBuilder;
use stratus::demo::events::metric_events;
use stratus::validate::{BatchDecoder, EventSchema, TimeBounds};

const EVENTS: usize = 200_000;
const BATCH: usize = 8_192;
const ROUNDS: usize = 5;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let schema = Arc::new(
        EventSchema::from_file(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/schemas/cloud.metrics.json"
        )))
        .expect("the shipped schema compiles"),
    );
    let now_ms = chrono::Utc::now().timestamp_millis();
    let events = metric_events(1, EVENTS, 1_000, now_ms, 0);
    let bytes: usize = events.iter().map(|e| e.payload.len()).sum();
    let mut ndjson = Vec::with_capacity(bytes + EVENTS);
    for e in &events {
        ndjson.extend_from_slice(&e.payload);
        ndjson.push(b'\n');
    }

    let mut ours = Vec::new();
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let mut d = BatchDecoder::new(
            schema.clone(),
            TimeBounds::plausible(now_ms * 1000, 0),
            BATCH,
        );
        let mut rows = 0;
        for e in &events {
            d.decode(&e.payload).expect("generated events are valid");
            if d.pending_rows() == BATCH {
                rows += d.flush().expect("batch").num_rows();
            }
        }
        rows += d.flush().expect("batch").num_rows();
        assert_eq!(rows, EVENTS);
        ours.push(EVENTS as f64 / started.elapsed().as_secs_f64());
    }

    let mut baseline = Vec::new();
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let reader = ReaderBuilder::new(schema.arrow_schema())
            .with_batch_size(BATCH)
            .build(Cursor::new(&ndjson))
            .expect("reader");
        let rows: usize = reader.map(|b| b.expect("batch").num_rows()).sum();
        assert_eq!(rows, EVENTS);
        baseline.push(EVENTS as f64 / started.elapsed().as_secs_f64());
    }

    println!(
        "decode {EVENTS} cloud.metrics events ({:.0} bytes each), median of {ROUNDS} rounds, one core:",
        bytes as f64 / EVENTS as f64
    );
    println!("| decoder | events/s | MB/s |");
    println!("| --- | ---: | ---: |");
    let mb = |rate: f64| rate * bytes as f64 / EVENTS as f64 / 1e6;
    let (o, b) = (median(ours), median(baseline));
    println!(
        "| stratus BatchDecoder (decode + validate) | {o:.0} | {:.0} |",
        mb(o)
    );
    println!(
        "| arrow-json ReaderBuilder (decode only, baseline) | {b:.0} | {:.0} |",
        mb(b)
    );
    println!("ratio: {:.2}", o / b);
}
