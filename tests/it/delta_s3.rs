//! Delta Lake on the S3 server: a partitioned table written through the sink, read back with
//! DataFusion, with the commit's offsets read back from the log.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Date32Array, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::prelude::SessionContext;

use stratus::sink::{
    DeltaSink, DeltaSinkConfig, SourceOffsets, offset_marks, storage_options_from_env,
};

use crate::{setting, unique};

const DAYS: i32 = 4;
const ROWS_PER_COMMIT: i64 = 2_500;
const COMMITS: i64 = 3;

fn batch(commit: i64) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("resource_id", DataType::Utf8, false),
        Field::new("cost_cents", DataType::Int64, false),
        Field::new("value", DataType::Float64, false),
        Field::new("date", DataType::Date32, false),
    ]));
    let ids: Vec<i64> = (0..ROWS_PER_COMMIT)
        .map(|i| commit * ROWS_PER_COMMIT + i)
        .collect();
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from_iter_values(
                ids.iter().map(|i| format!("r-{}", i % 97)),
            )),
            Arc::new(Int64Array::from_iter_values(ids.iter().map(|i| i * 3 + 1))),
            Arc::new(Float64Array::from_iter_values(
                ids.iter().map(|i| (*i % 1000) as f64 * 0.5),
            )),
            Arc::new(Date32Array::from_iter_values(
                ids.iter().map(|i| 20_000 + (*i % DAYS as i64) as i32),
            )),
        ],
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn partitioned_table_on_s3_reads_back_exactly() {
    let location = format!(
        "s3://{}/{}/costs",
        setting("STRATUS_S3_BUCKET"),
        unique("it-delta")
    );
    let config = DeltaSinkConfig {
        location: location.clone(),
        partition_columns: vec!["date".into()],
        pipeline: "it".into(),
        checkpoint_interval: 2,
        compact_after_files: 0,
        storage_options: storage_options_from_env(),
        vacuum: None,
    };
    let mut sink = DeltaSink::open(config.clone()).await.unwrap();
    assert!(
        sink.resume_offsets("costs", &[0, 1])
            .await
            .unwrap()
            .is_empty()
    );
    for commit in 0..COMMITS {
        let offsets: SourceOffsets = HashMap::from([
            (("costs".to_string(), 0), 100 * (commit + 1)),
            (("costs".to_string(), 1), 7 + commit),
        ]);
        let stats = sink
            .commit(vec![batch(commit)], &offset_marks(&offsets))
            .await
            .unwrap();
        assert_eq!(stats.version, commit);
        assert_eq!(stats.rows, ROWS_PER_COMMIT as usize);
    }

    // A fresh process sees the last commit's offsets.
    let reopened = DeltaSink::open(config).await.unwrap();
    assert_eq!(
        reopened.resume_offsets("costs", &[0, 1, 2]).await.unwrap(),
        HashMap::from([(0, 300), (1, 9)])
    );
    let table = reopened.table();
    let files: Vec<String> = table.get_file_uris().unwrap().collect();
    assert_eq!(
        files.len() as i64,
        COMMITS * DAYS as i64,
        "one file per day per commit"
    );
    assert!(
        files
            .iter()
            .all(|f| f.starts_with(&location) && f.contains("/date=2024-")),
        "{files:?}"
    );

    let ctx = SessionContext::new();
    table.update_datafusion_session(&ctx.state()).unwrap();
    ctx.register_table("costs", table.table_provider().await.unwrap())
        .unwrap();
    let out = ctx
        .sql("SELECT count(*), sum(cost_cents), count(DISTINCT resource_id), sum(value) FROM costs")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let row = &out[0];
    let n = ROWS_PER_COMMIT * COMMITS;
    let count = row
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .value(0);
    let sum = row
        .column(1)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .value(0);
    let distinct = row
        .column(2)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .value(0);
    let value = row
        .column(3)
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap()
        .value(0);
    assert_eq!(count, n);
    assert_eq!(sum, (0..n).map(|i| i * 3 + 1).sum::<i64>());
    assert_eq!(distinct, 97);
    assert_eq!(value, (0..n).map(|i| (i % 1000) as f64 * 0.5).sum::<f64>());

    // Partition pruning: a filter on the partition column reads only that day's rows.
    let day = ctx
        .sql("SELECT count(*) FROM costs WHERE date = DATE '2024-10-04'")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let per_day = day[0]
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .value(0);
    assert_eq!(
        per_day,
        (0..n).filter(|i| i % DAYS as i64 == 0).count() as i64
    );
}
