//! Any bytes, decoded against each shipped schema, must either append exactly one row or be
//! refused with an error and append nothing — never panic, never leave a partial row.
//!
//! The first input byte picks the schema; the rest is the event. Run: `scripts/fuzz`.

#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use stratus::validate::{BatchDecoder, EventSchema, TimeBounds};

const SCHEMAS: [(&str, &str); 3] = [
    (
        "cloud.metrics.json",
        include_str!("../../schemas/cloud.metrics.json"),
    ),
    (
        "cloud.spot_prices.json",
        include_str!("../../schemas/cloud.spot_prices.json"),
    ),
    (
        "cloud.billing.json",
        include_str!("../../schemas/cloud.billing.json"),
    ),
];

fn schemas() -> &'static [Arc<EventSchema>] {
    static COMPILED: OnceLock<Vec<Arc<EventSchema>>> = OnceLock::new();
    COMPILED.get_or_init(|| {
        SCHEMAS
            .iter()
            .map(|(file, text)| {
                Arc::new(EventSchema::from_json(file, text).expect("shipped schema compiles"))
            })
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, event)) = data.split_first() else {
        return;
    };
    let schema = &schemas()[pick as usize % SCHEMAS.len()];
    // A fixed clock keeps runs reproducible: events from 2006 to one day past 2026-01-01.
    let bounds = TimeBounds::plausible(1_767_225_600_000_000, 86_400_000_000);
    let mut decoder = BatchDecoder::new(schema.clone(), bounds, 2);
    let accepted = decoder.decode(event).is_ok();
    // A second copy of the same event must get the same verdict: the decoder keeps no state
    // between events besides the rows it has appended.
    assert_eq!(decoder.decode(event).is_ok(), accepted);
    let batch = decoder
        .flush()
        .expect("accepted rows always form a valid batch");
    assert_eq!(batch.num_rows(), if accepted { 2 } else { 0 });
});
