//! The window operator against an independent reference: a seeded stream with out-of-order,
//! late and too-late events, replayed in arrival order with a bounded-out-of-orderness
//! watermark; the reference decides lateness and aggregates with plain loops.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{AsArray, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{
    DataType, Field, Float64Type, Int32Type, Int64Type, Schema, TimeUnit, TimestampMicrosecondType,
};
use datafusion::prelude::SessionContext;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{WatermarkTracker, WindowOperator, WindowSpec, parse_stage_sql};
use crate::operator::{Operator, OperatorState, Snapshot};

const S: i64 = 1_000_000;

#[derive(Clone, Debug)]
struct Event {
    key: String,
    ts: i64,
    value: f64,
}

fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("value", DataType::Float64, false),
    ]))
}

fn batch(events: &[Event]) -> RecordBatch {
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(StringArray::from_iter_values(
                events.iter().map(|e| e.key.as_str()),
            )),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(events.iter().map(|e| e.ts))
                    .with_timezone("UTC"),
            ),
            Arc::new(Float64Array::from_iter_values(
                events.iter().map(|e| e.value),
            )),
        ],
    )
    .unwrap()
}

/// Events in arrival order: mostly in order, some up to 20 s late (within the 5 s bound plus
/// 30 s lateness), a few 3-5 minutes late (too late).
fn stream(seed: u64) -> Vec<Event> {
    let mut rng = StdRng::seed_from_u64(seed);
    let base = 1_750_000_000 * S;
    (0..3_000)
        .map(|i| {
            let mut ts = base + i * 200_000 + rng.random_range(0..4 * S);
            let r = rng.random_range(0..100);
            if r < 6 {
                ts -= rng.random_range(10 * S..30 * S);
            } else if r < 8 {
                ts -= rng.random_range(180 * S..300 * S);
            }
            Event {
                key: format!("k{}", rng.random_range(0..5)),
                ts,
                value: rng.random_range(0..100) as f64,
            }
        })
        .collect()
}

/// (key, window_start) → (count, sum).
type Windows = BTreeMap<(String, i64), (i64, f64)>;

struct Run {
    /// (key, window_start) → (count, sum) of the last revision emitted.
    last: BTreeMap<(String, i64), (i64, f64)>,
    /// (key, window_start) → revisions emitted, in order.
    revisions: HashMap<(String, i64), Vec<i32>>,
    late: Vec<i64>,
}

async fn run(spec_sql: &str, events: &[Event], lateness: i64, chunk: usize) -> Run {
    run_restarting(spec_sql, events, lateness, chunk, &[]).await
}

/// The checkpoints a run loop takes of one operator, each whole or of what changed since the
/// one before, as the checkpoint store gives them back: per part the batches since its last
/// whole file, and the newest `meta`.
#[derive(Default)]
struct Checkpoints {
    parts: BTreeMap<String, Vec<RecordBatch>>,
    meta: serde_json::Value,
}

impl Checkpoints {
    fn take(&mut self, op: &mut dyn Operator, kind: Snapshot) {
        let state = op.checkpoint(&kind).unwrap();
        for (part, batches) in state.parts {
            let files = self.parts.entry(part.clone()).or_default();
            if !state.appended.contains(&part) {
                files.clear();
            }
            files.extend(batches);
        }
        self.meta = state.meta;
    }

    fn state(&self) -> OperatorState {
        OperatorState {
            meta: self.meta.clone(),
            parts: self.parts.clone(),
            ..OperatorState::default()
        }
    }
}

/// [`run`], with the operator checkpointed after each chunk (whole every tenth, its changes
/// otherwise) and replaced before each chunk in `restarts` by a new one restored from those
/// checkpoints.
async fn run_restarting(
    spec_sql: &str,
    events: &[Event],
    lateness: i64,
    chunk: usize,
    restarts: &[usize],
) -> Run {
    let query = parse_stage_sql(spec_sql).unwrap();
    let new_op = || {
        WindowOperator::new(
            query.clone(),
            "ts",
            lateness,
            schema(),
            SessionContext::new(),
            None,
        )
        .unwrap()
    };
    let mut op = new_op();
    let mut wm = WatermarkTracker::new(5 * S, 60 * S);
    let mut out = Vec::new();
    let mut late = Vec::new();
    let mut checkpoints = Checkpoints::default();
    for (n, part) in events.chunks(chunk).enumerate() {
        if restarts.contains(&n) {
            let mut state = op.snapshot().unwrap();
            state.extend(op.state_snapshot(false).unwrap());
            assert_eq!(
                state.iter().map(RecordBatch::num_rows).sum::<usize>(),
                op.buffered_rows()
            );
            let mut restored = new_op();
            Operator::restore(&mut restored, checkpoints.state()).unwrap();
            assert_eq!(restored.buffered_rows(), op.buffered_rows());
            assert_eq!(restored.open_windows(), op.open_windows());
            op = restored;
        }
        let late_rows = op.process(&batch(part)).await.unwrap();
        // Tumbling and hopping windows keep partial aggregates, unless an aggregate has an
        // order of its own (see `with_raw_rows`).
        let partial = !spec_sql.contains("ORDER BY") && !spec_sql.contains("session(");
        assert_eq!(op.keeps_partial_aggregates(), partial, "{spec_sql}");
        if let Some(l) = late_rows {
            let ts = l.column(1).as_primitive::<TimestampMicrosecondType>();
            late.extend(ts.values().iter().copied());
        }
        wm.observe(0, part.iter().map(|e| e.ts).max().unwrap(), n as i64);
        out.extend(op.advance(wm.watermark(n as i64)).await.unwrap());
        let kind = if n % 10 == 0 {
            Snapshot::Whole
        } else {
            Snapshot::changes()
        };
        checkpoints.take(&mut op, kind);
    }
    out.extend(op.advance(i64::MAX).await.unwrap());
    assert_eq!(
        op.buffered_rows(),
        0,
        "state left after the final watermark"
    );
    let mut last = BTreeMap::new();
    let mut revisions: HashMap<(String, i64), Vec<i32>> = HashMap::new();
    for b in &out {
        let keys = b.column_by_name("key").unwrap().as_string::<i32>();
        let starts = b
            .column_by_name("window_start")
            .unwrap()
            .as_primitive::<TimestampMicrosecondType>();
        let counts = b.column_by_name("n").unwrap().as_primitive::<Int64Type>();
        let sums = b
            .column_by_name("total")
            .unwrap()
            .as_primitive::<Float64Type>();
        let revs = b
            .column_by_name("revision")
            .unwrap()
            .as_primitive::<Int32Type>();
        let upd = b.column_by_name("is_update").unwrap().as_boolean();
        for i in 0..b.num_rows() {
            let id = (keys.value(i).to_string(), starts.value(i));
            assert_eq!(upd.value(i), revs.value(i) > 0);
            revisions.entry(id.clone()).or_default().push(revs.value(i));
            last.insert(id, (counts.value(i), sums.value(i)));
        }
    }
    Run {
        last,
        revisions,
        late,
    }
}

/// The reference: replay arrival order with the same watermark rule; an event is too late when
/// every window it belongs to ended at or before `watermark - lateness` on arrival.
fn reference(
    events: &[Event],
    windows_of: impl Fn(i64) -> Vec<(i64, i64)>,
    lateness: i64,
    chunk: usize,
) -> (Windows, Vec<i64>) {
    let mut watermark = i64::MIN;
    let mut max_ts = i64::MIN;
    let mut agg: BTreeMap<(String, i64), (i64, f64)> = BTreeMap::new();
    let mut late = Vec::new();
    for part in events.chunks(chunk) {
        for e in part {
            let live: Vec<_> = windows_of(e.ts)
                .into_iter()
                .filter(|(_, end)| end.saturating_add(lateness) > watermark)
                .collect();
            if live.is_empty() {
                late.push(e.ts);
            }
            for (start, _) in live {
                let a = agg.entry((e.key.clone(), start)).or_insert((0, 0.0));
                a.0 += 1;
                a.1 += e.value;
            }
        }
        max_ts = max_ts.max(part.iter().map(|e| e.ts).max().unwrap());
        watermark = watermark.max(max_ts - 5 * S);
    }
    (agg, late)
}

/// `sql` (`SELECT key, ...`) and the same with an aggregate that has an order of its own, so
/// that its windows keep raw rows instead of partial aggregates: both ways must agree.
fn with_raw_rows(sql: &str) -> [String; 2] {
    [
        sql.to_string(),
        sql.replacen(
            "SELECT key, ",
            "SELECT key, first_value(value ORDER BY ts) AS first, ",
            1,
        ),
    ]
}

#[tokio::test]
async fn tumbling_results_and_updates_match_the_reference() {
    for sql in with_raw_rows(
        "SELECT key, window_start, window_end, count(*) AS n, sum(value) AS total FROM m GROUP BY key, tumble(interval '10 seconds')",
    ) {
        tumbling_results_and_updates_match_the_reference_with(&sql).await;
    }
}

async fn tumbling_results_and_updates_match_the_reference_with(sql: &str) {
    let events = stream(11);
    let size = 10 * S;
    let lateness = 30 * S;
    let got = run(sql, &events, lateness, 50).await;
    let (want, want_late) = reference(
        &events,
        |t| {
            let s = t - t.rem_euclid(size);
            vec![(s, s + size)]
        },
        lateness,
        50,
    );
    assert_eq!(got.last, want);
    let mut got_late = got.late.clone();
    let mut want_late = want_late;
    got_late.sort();
    want_late.sort();
    assert_eq!(got_late, want_late);
    assert!(
        !want_late.is_empty(),
        "the stream must hold too-late events"
    );
    // Some windows were updated by late events; a group's revisions start at 0 and only grow
    // (a window's revision counts its firings, and an update re-emits only the keys it touched).
    assert!(got.revisions.values().any(|r| r.len() > 1));
    for r in got.revisions.values() {
        assert_eq!(r[0], 0);
        assert!(r.windows(2).all(|w| w[0] < w[1]), "{r:?}");
    }
}

#[tokio::test]
async fn an_operator_restored_from_its_snapshot_continues_exactly() {
    let events = stream(5);
    let restarts: Vec<usize> = (3..300).step_by(7).collect();
    let sqls = [
        "SELECT key, window_start, count(*) AS n, sum(value) AS total FROM s \
         GROUP BY key, tumble(interval '10 seconds')",
        "SELECT key, window_start, count(*) AS n, sum(value) AS total FROM s \
         GROUP BY key, hop(interval '5 seconds', interval '15 seconds')",
        "SELECT key, window_start, count(*) AS n, sum(value) AS total FROM s \
         GROUP BY key, session(interval '2 seconds')",
    ];
    for sql in sqls.iter().flat_map(|s| with_raw_rows(s)) {
        let sql = sql.as_str();
        let straight = run(sql, &events, 30 * S, 10).await;
        let restarted = run_restarting(sql, &events, 30 * S, 10, &restarts).await;
        assert_eq!(restarted.last, straight.last, "{sql}");
        assert_eq!(restarted.revisions, straight.revisions, "{sql}");
        assert_eq!(restarted.late, straight.late, "{sql}");
        assert!(
            straight.revisions.values().any(|r| r.len() > 1),
            "no update in {sql}"
        );
    }
}

#[tokio::test]
async fn hopping_windows_match_the_reference() {
    let events = stream(12);
    let (slide, size, lateness) = (5 * S, 15 * S, 30 * S);
    for sql in with_raw_rows(
        "SELECT key, window_start, count(*) AS n, sum(value) AS total FROM m GROUP BY hop(interval '5 seconds', interval '15 seconds'), key",
    ) {
        let got = run(&sql, &events, lateness, 40).await;
        let (want, want_late) = reference(
            &events,
            |t| {
                let mut out = Vec::new();
                let mut s = t - t.rem_euclid(slide);
                while s + size > t {
                    out.push((s, s + size));
                    s -= slide;
                }
                out
            },
            lateness,
            40,
        );
        assert_eq!(got.last, want);
        assert_eq!(got.late.len(), want_late.len());
    }
}

#[tokio::test]
async fn sessions_split_on_gaps_per_key() {
    // Key a: 0,1,2 s then 20,21 s (gap 5 s → two sessions); key b: 3 s alone.
    let ev = |key: &str, s: i64, value: f64| Event {
        key: key.into(),
        ts: 1_750_000_000 * S + s * S,
        value,
    };
    let events = vec![
        ev("a", 0, 1.0),
        ev("a", 1, 2.0),
        ev("b", 3, 10.0),
        ev("a", 2, 4.0),
        ev("a", 20, 8.0),
        ev("a", 21, 16.0),
    ];
    let got = run(
        "SELECT key, window_start, window_end, count(*) AS n, sum(value) AS total FROM m GROUP BY key, session(interval '5 seconds')",
        &events,
        0,
        2,
    )
    .await;
    let t0 = 1_750_000_000 * S;
    let want: BTreeMap<(String, i64), (i64, f64)> = [
        (("a".to_string(), t0), (3, 7.0)),
        (("a".to_string(), t0 + 20 * S), (2, 24.0)),
        (("b".to_string(), t0 + 3 * S), (1, 10.0)),
    ]
    .into_iter()
    .collect();
    assert_eq!(got.last, want);
    assert!(got.late.is_empty());
}

#[tokio::test]
async fn a_late_event_within_lateness_updates_only_its_key() {
    let t0 = 1_750_000_020 * S;
    let ev = |key: &str, s: i64| Event {
        key: key.into(),
        ts: t0 + s * S,
        value: 1.0,
    };
    let query = parse_stage_sql("SELECT key, count(*) AS n, sum(value) AS total, window_start FROM m GROUP BY key, tumble(interval '10 seconds')").unwrap();
    assert_eq!(query.window, Some(WindowSpec::Tumble { size: 10 * S }));
    let mut op =
        WindowOperator::new(query, "ts", 60 * S, schema(), SessionContext::new(), None).unwrap();
    op.process(&batch(&[ev("a", 1), ev("b", 2)])).await.unwrap();
    let first = op.advance(t0 + 10 * S).await.unwrap();
    assert_eq!(first.iter().map(RecordBatch::num_rows).sum::<usize>(), 2);
    op.process(&batch(&[ev("a", 3)])).await.unwrap();
    let update = op.advance(t0 + 11 * S).await.unwrap();
    let rows: usize = update.iter().map(RecordBatch::num_rows).sum();
    assert_eq!(rows, 1, "only key a is re-emitted");
    let b = &update[0];
    assert_eq!(
        b.column_by_name("key").unwrap().as_string::<i32>().value(0),
        "a"
    );
    assert_eq!(
        b.column_by_name("n")
            .unwrap()
            .as_primitive::<Int64Type>()
            .value(0),
        2
    );
    assert!(b.column_by_name("is_update").unwrap().as_boolean().value(0));
    // Past the lateness the event goes to the late output.
    assert!(op.advance(t0 + 71 * S).await.unwrap().is_empty());
    let late = op.process(&batch(&[ev("b", 4)])).await.unwrap().unwrap();
    assert_eq!(late.num_rows(), 1);
    assert_eq!(op.buffered_rows(), 0);
}

#[tokio::test]
async fn a_window_stage_over_a_window_stage_uses_each_upstream_result_once() {
    use arrow::array::{BooleanArray, Int32Array, Int64Array};
    let ts = || DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let upstream = Arc::new(Schema::new(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("window_start", ts(), false),
        Field::new("window_end", ts(), false),
        Field::new("n", DataType::Int64, false),
        Field::new("revision", DataType::Int32, false),
        Field::new("is_update", DataType::Boolean, false),
    ]));
    let t0 = 1_750_000_200 * S; // a 5-minute boundary
    let rows = |items: &[(&str, i64, i64, i32)]| {
        RecordBatch::try_new(
            upstream.clone(),
            vec![
                Arc::new(StringArray::from_iter_values(items.iter().map(|r| r.0))),
                Arc::new(
                    TimestampMicrosecondArray::from_iter_values(
                        items.iter().map(|r| t0 + r.1 * MINUTE_S),
                    )
                    .with_timezone("UTC"),
                ),
                Arc::new(
                    TimestampMicrosecondArray::from_iter_values(
                        items.iter().map(|r| t0 + (r.1 + 1) * MINUTE_S),
                    )
                    .with_timezone("UTC"),
                ),
                Arc::new(Int64Array::from_iter_values(items.iter().map(|r| r.2))),
                Arc::new(Int32Array::from_iter_values(items.iter().map(|r| r.3))),
                Arc::new(BooleanArray::from(
                    items.iter().map(|r| r.3 > 0).collect::<Vec<_>>(),
                )),
            ],
        )
        .unwrap()
    };
    let query = parse_stage_sql(
        "SELECT key, window_start, sum(n) AS n FROM one GROUP BY key, tumble(interval '5 minutes')",
    )
    .unwrap();
    let mut op = WindowOperator::new(
        query,
        "window_start",
        10 * MINUTE_S,
        upstream.clone(),
        SessionContext::new(),
        Some(vec!["key".into(), "window_start".into()]),
    )
    .unwrap();
    // Minute 0 first counts 3, then is updated to 4; minute 1 counts 2.
    op.process(&rows(&[("a", 0, 3, 0), ("a", 1, 2, 0)]))
        .await
        .unwrap();
    op.process(&rows(&[("a", 0, 4, 1)])).await.unwrap();
    let out = op.advance(t0 + 5 * MINUTE_S).await.unwrap();
    let n = out[0]
        .column_by_name("n")
        .unwrap()
        .as_primitive::<Int64Type>()
        .value(0);
    assert_eq!(n, 6, "the update replaces minute 0's first result");
    // The 5-minute result carries its own window and revision, not the upstream's.
    let schema = out[0].schema();
    assert_eq!(
        schema
            .fields()
            .iter()
            .filter(|f| f.name() == "window_start")
            .count(),
        1
    );
    assert_eq!(
        out[0]
            .column_by_name("revision")
            .unwrap()
            .as_primitive::<Int32Type>()
            .value(0),
        0
    );
    // A later update of minute 1 re-emits the 5-minute window as an update.
    op.process(&rows(&[("a", 1, 5, 1)])).await.unwrap();
    let out = op.advance(t0 + 6 * MINUTE_S).await.unwrap();
    assert_eq!(
        out[0]
            .column_by_name("n")
            .unwrap()
            .as_primitive::<Int64Type>()
            .value(0),
        9
    );
    assert!(
        out[0]
            .column_by_name("is_update")
            .unwrap()
            .as_boolean()
            .value(0)
    );
}

const MINUTE_S: i64 = 60 * S;

#[tokio::test]
async fn a_restatement_replaces_the_row_it_restates_before_and_after_the_window_fires() {
    let query = parse_stage_sql(
        "SELECT key, window_start, count(*) AS n, sum(value) AS total FROM m \
         GROUP BY key, tumble(interval '10 seconds')",
    )
    .unwrap();
    let mut op = WindowOperator::new(query, "ts", 60 * S, schema(), SessionContext::new(), None)
        .unwrap()
        .with_replace_by(&["key".to_string()])
        .unwrap();
    let event = |key: &str, ts: i64, value: f64| Event {
        key: key.into(),
        ts,
        value,
    };
    let base = 1_750_000_000 * S;
    op.process(&batch(&[
        event("a", base + S, 5.0),
        event("b", base + S, 1.0),
        event("a", base + 2 * S, 7.0),
    ]))
    .await
    .unwrap();
    let totals = |out: &[RecordBatch]| -> Vec<(String, i64, f64, i32)> {
        let mut rows = Vec::new();
        for b in out {
            let keys = b.column_by_name("key").unwrap().as_string::<i32>();
            let n = b.column_by_name("n").unwrap().as_primitive::<Int64Type>();
            let t = b
                .column_by_name("total")
                .unwrap()
                .as_primitive::<Float64Type>();
            let r = b
                .column_by_name("revision")
                .unwrap()
                .as_primitive::<Int32Type>();
            for i in 0..b.num_rows() {
                rows.push((
                    keys.value(i).to_string(),
                    n.value(i),
                    t.value(i),
                    r.value(i),
                ));
            }
        }
        rows.sort_by(|x, y| x.0.cmp(&y.0));
        rows
    };
    let fired = op.advance(base + 10 * S).await.unwrap();
    assert_eq!(
        totals(&fired),
        vec![("a".into(), 1, 7.0, 0), ("b".into(), 1, 1.0, 0)]
    );
    op.process(&batch(&[event("a", base + 3 * S, 9.0)]))
        .await
        .unwrap();
    let updated = op.advance(base + 11 * S).await.unwrap();
    assert_eq!(totals(&updated), vec![("a".into(), 1, 9.0, 1)]);
}

/// `batch` with a fourth column, `note`, that no stage SQL reads.
fn with_note(events: &[Event]) -> RecordBatch {
    let b = batch(events);
    let mut fields: Vec<_> = b.schema().fields().iter().cloned().collect();
    fields.push(Arc::new(Field::new("note", DataType::Utf8, false)));
    let mut columns = b.columns().to_vec();
    columns.push(Arc::new(StringArray::from_iter_values(
        events
            .iter()
            .map(|e| format!("note of {} at {}", e.key, e.ts)),
    )));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
}

#[tokio::test]
async fn a_stage_buffers_only_the_columns_its_sql_reads_and_the_late_output_keeps_all() {
    let t0 = 1_750_000_020 * S;
    let ev = |key: &str, s: i64, value: f64| Event {
        key: key.into(),
        ts: t0 + s * S,
        value,
    };
    // An aggregate with an order of its own: the windows keep raw rows.
    let query = parse_stage_sql("SELECT key, sum(value) AS total, first_value(value ORDER BY ts) AS first, window_start FROM m GROUP BY key, tumble(interval '10 seconds')").unwrap();
    let mut narrow = query.clone();
    narrow.reads = Some(vec!["key".into(), "value".into()]);
    let wide = with_note(&[]).schema();
    let open = |q| WindowOperator::new(q, "ts", 20 * S, wide.clone(), SessionContext::new(), None);
    let (mut all, mut op) = (open(query).unwrap(), open(narrow.clone()).unwrap());
    op.compile().await.unwrap();
    assert!(!op.keeps_partial_aggregates());
    let first = with_note(&[ev("a", 1, 2.0), ev("b", 2, 3.0), ev("a", 4, 5.0)]);
    all.process(&first).await.unwrap();
    op.process(&first).await.unwrap();
    // The state holds the event time and what the SQL reads, not `note`.
    let names = |b: &RecordBatch| -> Vec<String> {
        let schema = b.schema();
        schema.fields().iter().map(|f| f.name().clone()).collect()
    };
    let state = op.snapshot().unwrap();
    assert_eq!(
        names(&state[0]),
        [
            "key",
            "ts",
            "value",
            "__stratus_window",
            "__stratus_revision"
        ]
    );
    // A checkpoint taken before the stage narrowed (every column) restores into it.
    let mut restored = open(narrow).unwrap();
    restored
        .restore(&all.snapshot().unwrap(), all.watermark())
        .unwrap();
    assert_eq!(restored.buffered_rows(), 3);
    let totals = |out: Vec<RecordBatch>| -> BTreeMap<String, f64> {
        let mut t = BTreeMap::new();
        for b in &out {
            let keys = b.column_by_name("key").unwrap().as_string::<i32>();
            let sums = b
                .column_by_name("total")
                .unwrap()
                .as_primitive::<Float64Type>();
            for i in 0..b.num_rows() {
                t.insert(keys.value(i).to_string(), sums.value(i));
            }
        }
        t
    };
    let want = totals(all.advance(t0 + 10 * S).await.unwrap());
    assert_eq!(want, BTreeMap::from([("a".into(), 7.0), ("b".into(), 3.0)]));
    assert_eq!(totals(op.advance(t0 + 10 * S).await.unwrap()), want);
    assert_eq!(totals(restored.advance(t0 + 10 * S).await.unwrap()), want);
    // Too late: the late output is the whole event, `note` included.
    assert!(op.advance(t0 + 40 * S).await.unwrap().is_empty());
    let late = op
        .process(&with_note(&[ev("b", 5, 1.0)]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(names(&late), ["key", "ts", "value", "note"]);
    assert_eq!(
        late.column(3).as_string::<i32>().value(0),
        format!("note of b at {}", t0 + 5 * S)
    );
}

#[tokio::test]
async fn a_checkpoint_from_before_the_sql_read_a_column_restores_it_as_null_if_it_can_be() {
    let t0 = 1_750_000_020 * S;
    let ev = |key: &str, s: i64| Event {
        key: key.into(),
        ts: t0 + s * S,
        value: 1.0,
    };
    let wide = with_note(&[]).schema();
    let open = |sql: &str, reads: &[&str]| {
        let mut q = parse_stage_sql(sql).unwrap();
        q.reads = Some(reads.iter().map(|c| c.to_string()).collect());
        WindowOperator::new(q, "ts", 20 * S, wide.clone(), SessionContext::new(), None).unwrap()
    };
    // Aggregates with an order of their own: the windows keep raw rows.
    let count = "SELECT key, count(*) AS n, first_value(key ORDER BY ts) AS first, window_start FROM m GROUP BY key, tumble(interval '10 seconds')";
    let mut before = open(count, &["key"]);
    before
        .process(&with_note(&[ev("a", 1), ev("a", 2)]))
        .await
        .unwrap();
    let state = before.snapshot().unwrap();
    // The SQL now reads `note` (nullable here): the rows buffered before have none.
    let notes = "SELECT key, count(note) AS notes, first_value(key ORDER BY ts) AS first, window_start FROM m GROUP BY key, tumble(interval '10 seconds')";
    let nullable = Arc::new(Schema::new(
        wide.fields()
            .iter()
            .map(|f| Arc::new(f.as_ref().clone().with_nullable(f.name() == "note")))
            .collect::<Vec<_>>(),
    ));
    let mut q = parse_stage_sql(notes).unwrap();
    q.reads = Some(vec!["key".into(), "note".into()]);
    let mut after =
        WindowOperator::new(q, "ts", 20 * S, nullable, SessionContext::new(), None).unwrap();
    after.restore(&state, before.watermark()).unwrap();
    let out = after.advance(t0 + 10 * S).await.unwrap();
    let notes = out[0]
        .column_by_name("notes")
        .unwrap()
        .as_primitive::<Int64Type>();
    assert_eq!(notes.value(0), 0, "two rows restored, neither with a note");
    // `value` cannot be null: that restore stops, naming the column and what to do.
    let mut strict = open(
        "SELECT key, sum(value) AS total, first_value(key ORDER BY ts) AS first, window_start FROM m GROUP BY key, tumble(interval '10 seconds')",
        &["key", "value"],
    );
    let err = strict
        .restore(&state, before.watermark())
        .unwrap_err()
        .to_string();
    assert!(err.contains("no column `value`"), "{err}");
    assert!(err.contains("undo the SQL change"), "{err}");
}

/// Per key: the count and sum of `value`, and each output row's key and those, sorted.
fn results_text(out: &[RecordBatch], columns: &[&str]) -> Vec<String> {
    let mut text = Vec::new();
    for b in out {
        for i in 0..b.num_rows() {
            let row: Vec<String> = columns
                .iter()
                .map(|c| {
                    let col = b.column_by_name(c).unwrap();
                    let v = arrow::util::display::array_value_to_string(col, i).unwrap();
                    v.parse::<f64>().map_or(v, |x| format!("{x:.9e}"))
                })
                .collect();
            text.push(row.join(" "));
        }
    }
    text.sort();
    text
}

/// `n` events a second for `seconds` from `base`, over 3 keys.
fn dense_events(base: i64, seconds: i64, n: i64) -> Vec<Vec<Event>> {
    (0..seconds)
        .map(|step| {
            (0..n)
                .map(|i| Event {
                    key: format!("k{}", i % 3),
                    ts: base + step * S + i,
                    value: f64::from((step * 7 + i) as i32 % 23),
                })
                .collect()
        })
        .collect()
}

/// A query of decomposable aggregates and exact percentiles over a dense stream (many rows per
/// key and window, as measured when the first window fired) keeps, in each window after, the
/// aggregates' state per key — bounded by the keys, not by the events — and gives what the
/// same query over raw rows gives; its checkpoints stay mostly incremental. Over a sparse
/// stream (a row per key and window) windows keep their rows.
#[tokio::test]
async fn dense_windows_keep_per_key_partial_aggregates_not_their_rows() {
    // On a minute.
    let base = 1_750_000_020 * S;
    let sql = "SELECT key, window_start, count(*) AS n, sum(value) AS total, avg(value) AS mean, \
               stddev(value) AS sd, percentile_cont(value, 0.95) AS p95 FROM m \
               GROUP BY key, tumble(interval '1 minute')";
    let [partial, raw] = with_raw_rows(sql);
    let open = |sql: &str| {
        WindowOperator::new(
            parse_stage_sql(sql).unwrap(),
            "ts",
            0,
            schema(),
            SessionContext::new(),
            None,
        )
        .unwrap()
    };
    let (mut op, mut rows) = (open(&partial), open(&raw));
    let columns = ["key", "window_start", "n", "total", "mean", "sd", "p95"];
    let (mut got, mut want) = (Vec::new(), Vec::new());
    let (mut most, mut incremental, mut checkpoints) = (0, 0, 0);
    for (step, events) in dense_events(base, 170, 10).iter().enumerate() {
        op.process(&batch(events)).await.unwrap();
        rows.process(&batch(events)).await.unwrap();
        let watermark = events[0].ts;
        got.extend(op.advance(watermark).await.unwrap());
        want.extend(rows.advance(watermark).await.unwrap());
        // The first window fired at 60 s with 200 rows per key (the second had begun, with
        // rows): the third, from 120 s, keeps states.
        assert_eq!(op.dense(), step >= 60);
        if step >= 120 {
            most = most.max(op.buffered_rows());
        } else {
            assert_eq!(op.buffered_rows(), rows.buffered_rows());
        }
        // Checkpointed every third batch: merging the batches gained since the last one
        // keeps them incremental; merging all of them, every 16 batches, makes one whole.
        if step >= 120 && step % 3 == 2 {
            let c = Operator::checkpoint(&mut op, &Snapshot::changes()).unwrap();
            incremental += usize::from(c.appended.contains("window-states"));
            checkpoints += 1;
        }
    }
    got.extend(op.advance(i64::MAX).await.unwrap());
    want.extend(rows.advance(i64::MAX).await.unwrap());
    assert!(op.keeps_partial_aggregates() && !rows.keeps_partial_aggregates());
    // At most one state row per key for each of the batches not yet merged.
    assert!(most <= 3 * 16, "{most} state rows held");
    assert!(
        incremental >= checkpoints * 2 / 3 && incremental < checkpoints,
        "{incremental} of {checkpoints} checkpoints incremental"
    );
    assert_eq!(results_text(&got, &columns).len(), 9);
    assert_eq!(results_text(&got, &columns), results_text(&want, &columns));
    assert_eq!(op.buffered_rows(), 0);

    // A row per key and window: rows are kept.
    let mut sparse = open(&partial);
    for events in dense_events(base, 130, 3).iter().step_by(60) {
        sparse.process(&batch(events)).await.unwrap();
        sparse.advance(events[0].ts).await.unwrap();
    }
    assert!(sparse.keeps_partial_aggregates() && !sparse.dense());
    assert!(
        sparse
            .state_snapshot(false)
            .unwrap()
            .iter()
            .all(|b| b.num_rows() == 0)
    );
}

/// A stream that turns sparse goes back to windows of rows: the first firing of a window of
/// partial aggregates measures the stream as a window of rows does, and the results stay
/// those of the query over rows.
#[tokio::test]
async fn a_stream_that_turns_sparse_goes_back_to_windows_of_rows() {
    let base = 1_750_000_020 * S;
    let sql = "SELECT key, window_start, count(*) AS n, sum(value) AS total FROM m \
               GROUP BY key, tumble(interval '1 minute')";
    let [partial, raw] = with_raw_rows(sql);
    let open = |sql: &str| {
        WindowOperator::new(
            parse_stage_sql(sql).unwrap(),
            "ts",
            0,
            schema(),
            SessionContext::new(),
            None,
        )
        .unwrap()
    };
    let (mut op, mut rows) = (open(&partial), open(&raw));
    // Dense for 130 s (the window from 120 s keeps states), then a row per key a minute.
    let mut events = dense_events(base, 130, 10);
    events.extend((3..8).map(|minute| {
        (0..3)
            .map(|i| Event {
                key: format!("k{i}"),
                ts: base + minute * 60 * S + i,
                value: minute as f64,
            })
            .collect()
    }));
    let (mut got, mut want) = (Vec::new(), Vec::new());
    let mut dense = Vec::new();
    for events in &events {
        op.process(&batch(events)).await.unwrap();
        rows.process(&batch(events)).await.unwrap();
        got.extend(op.advance(events[0].ts).await.unwrap());
        want.extend(rows.advance(events[0].ts).await.unwrap());
        dense.push(op.dense());
    }
    // Dense from the first firing (60 s) until the window from 180 s, which keeps states
    // (it opened while the stream was dense) and held a row per key, fires at 240 s.
    let turned = dense.iter().rposition(|&d| d).unwrap();
    assert_eq!(turned, events.len() - 5, "{dense:?}");
    assert!(dense[60..=turned].iter().all(|&d| d));
    // The window from 300 s keeps rows: three, not state rows of a partial run.
    assert_eq!(op.buffered_rows(), rows.buffered_rows());
    got.extend(op.advance(i64::MAX).await.unwrap());
    want.extend(rows.advance(i64::MAX).await.unwrap());
    let columns = ["key", "window_start", "n", "total"];
    assert_eq!(results_text(&got, &columns), results_text(&want, &columns));
    assert_eq!(results_text(&got, &columns).len(), 3 * 8);
}

/// A window's partial aggregates restore from its checkpoint and finish as before; those of
/// another query are refused, saying what to do.
#[tokio::test]
async fn partial_aggregates_restore_and_those_of_another_query_are_refused() {
    let base = 1_750_000_020 * S;
    let open = |sql: &str| {
        WindowOperator::new(
            parse_stage_sql(sql).unwrap(),
            "ts",
            30 * S,
            schema(),
            SessionContext::new(),
            None,
        )
        .unwrap()
    };
    let sql = "SELECT key, window_start, count(*) AS n, sum(value) AS total FROM m \
               GROUP BY key, tumble(interval '1 minute')";
    let mut op = open(sql);
    let mut straight = open(sql);
    // The third window, from 120 s, keeps partial aggregates (see above).
    let events = dense_events(base, 150, 10);
    for events in &events {
        op.process(&batch(events)).await.unwrap();
        op.advance(events[0].ts).await.unwrap();
        straight.process(&batch(events)).await.unwrap();
        straight.advance(events[0].ts).await.unwrap();
    }
    assert!(op.dense());
    let state = Operator::checkpoint(&mut op, &Snapshot::Whole).unwrap();
    assert!(
        state.parts["window-states"]
            .iter()
            .any(|b| b.num_rows() > 0)
    );
    let mut restored = open(sql);
    Operator::restore(&mut restored, state.clone()).unwrap();
    let columns = ["key", "window_start", "n", "total"];
    assert_eq!(
        results_text(&restored.advance(i64::MAX).await.unwrap(), &columns),
        results_text(&straight.advance(i64::MAX).await.unwrap(), &columns)
    );

    // The same partial aggregates for a query that averages instead; for one that filters
    // (states of the same columns, made of other rows); for windows of another size.
    for other in [
        "SELECT key, window_start, count(*) AS n, avg(value) AS total FROM m \
         GROUP BY key, tumble(interval '1 minute')",
        "SELECT key, window_start, count(*) AS n, sum(value) AS total FROM m WHERE value > 3 \
         GROUP BY key, tumble(interval '1 minute')",
        "SELECT key, window_start, count(*) AS n, sum(value) AS total FROM m \
         GROUP BY key, tumble(interval '2 minutes')",
    ] {
        let mut other = open(other);
        Operator::restore(&mut other, state.clone()).unwrap();
        let err = other.advance(i64::MAX).await.unwrap_err().to_string();
        assert!(
            err.contains("partial aggregates of a query other than the stage's SQL now")
                && err.contains("undo the SQL change"),
            "{err}"
        );
    }
}

/// After a restart a stage holds windows of both kinds — restored ones with partial
/// aggregates, new ones with rows until a firing shows the stream dense again — and windows of
/// both that fire together come out as one batch per revision, so that what reads the results
/// (a carry) takes them in order of their start.
#[tokio::test]
async fn windows_of_rows_and_of_states_that_fire_together_come_out_together() {
    let base = 1_750_000_020 * S;
    let open = || {
        WindowOperator::new(
            parse_stage_sql(
                "SELECT key, window_start, count(*) AS n, sum(value) AS total FROM m \
                 GROUP BY key, tumble(interval '1 minute')",
            )
            .unwrap(),
            "ts",
            0,
            schema(),
            SessionContext::new(),
            None,
        )
        .unwrap()
    };
    let mut op = open();
    let events = dense_events(base, 240, 10);
    // The first window fires dense; the third keeps states.
    for events in &events[..150] {
        op.process(&batch(events)).await.unwrap();
        op.advance(events[0].ts).await.unwrap();
    }
    let state = Operator::checkpoint(&mut op, &Snapshot::Whole).unwrap();
    let mut restored = open();
    Operator::restore(&mut restored, state).unwrap();
    assert!(!restored.dense());
    // Rows of the fourth window arrive before the third closes (the watermark stays): it
    // keeps rows.
    for events in &events[150..] {
        restored.process(&batch(events)).await.unwrap();
    }
    let out = restored.advance(base + 240 * S).await.unwrap();
    let [fired] = out.as_slice() else {
        panic!("{} batches", out.len())
    };
    let starts = fired
        .column_by_name("window_start")
        .unwrap()
        .as_primitive::<TimestampMicrosecondType>();
    let mut starts: Vec<i64> = starts.values().to_vec();
    starts.dedup();
    starts.sort_unstable();
    starts.dedup();
    assert_eq!(starts, [base + 120 * S, base + 180 * S]);
}
