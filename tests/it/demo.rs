//! `stratus demo` end to end on its embedded Kafka: every produced event is accounted for.

use stratus::demo::{DemoConfig, run};

use crate::unique;

#[tokio::test(flavor = "multi_thread")]
async fn demo_lands_every_valid_event_and_dead_letters_the_rest() {
    let out = std::env::temp_dir().join(unique("it-demo"));
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
    assert_eq!(report.table_rows, report.valid as i64);
    std::fs::remove_dir_all(&out).unwrap();
}
