//! `stratus demo` end to end on its embedded Kafka: every produced event is accounted for, and
//! the feature windows that closed are in their tables.

use stratus::demo::{DemoConfig, run};

use crate::unique;

#[tokio::test(flavor = "multi_thread")]
async fn demo_lands_every_valid_event_and_dead_letters_the_rest() {
    let out = std::env::temp_dir().join(unique("it-demo"));
    // 20 resources, one point a minute each: 150 minutes of event time.
    let report = run(&DemoConfig {
        events: 3_000,
        resources: 20,
        seed: 5,
        out_dir: out.clone(),
    })
    .await
    .unwrap();
    assert_eq!(report.produced, 3_000);
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
    std::fs::remove_dir_all(&out).unwrap();
}
