//! Pipeline files as data: every shipped pipeline checks clean, and each file in
//! `tests/pipelines/invalid/` fails with the errors its `# expect:` header lines name.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema};
use datafusion::datasource::MemTable;

use super::Pipeline;

fn files(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn shipped_pipelines_validate() {
    let shipped = files("pipelines");
    assert!(!shipped.is_empty());
    for file in shipped {
        if let Err(e) = Pipeline::load(&file).await {
            panic!("{} does not validate:\n{e}", file.display());
        }
    }
}

#[tokio::test]
async fn invalid_pipelines_fail_with_the_expected_errors() {
    let cases = files("tests/pipelines/invalid");
    assert!(cases.len() >= 10, "{cases:?}");
    for file in cases {
        let text = std::fs::read_to_string(&file).unwrap();
        let expected: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .collect();
        assert!(
            !expected.is_empty(),
            "{} has no # expect: line",
            file.display()
        );
        let err = match Pipeline::load(&file).await {
            Ok(_) => panic!("{} validated, but should not", file.display()),
            Err(e) => e,
        };
        let rendered = err.to_string();
        for want in &expected {
            assert!(
                rendered.contains(want),
                "{}:\nwant {want:?}\ngot:\n{rendered}",
                file.display()
            );
        }
        // No follow-on errors: every error reported is one the file expects.
        for d in &err.0 {
            let line = d.to_string();
            assert!(
                expected.iter().any(|w| line.contains(w)),
                "{}: unexpected error {line:?}",
                file.display()
            );
        }
    }
}

#[tokio::test]
async fn window_stages_know_which_input_columns_their_sql_reads() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let metrics = Pipeline::load(&root.join("pipelines/cloud-metrics.yaml"))
        .await
        .unwrap();
    let reads = |stage: &str| {
        let plan = metrics.stages.iter().find(|s| s.name == stage).unwrap();
        plan.sql().unwrap().query.reads.clone().unwrap()
    };
    // 1 minute over the raw points: not `namespace` or `unit`, and the window columns are the
    // stage's own, not input.
    assert_eq!(
        reads("features_1m"),
        [
            "account_id",
            "az",
            "dimensions",
            "metric",
            "region",
            "resource_id",
            "service",
            "value"
        ]
    );
    // 5 minutes over the 1-minute features: the few it rolls up, none of the carried columns.
    assert_eq!(
        reads("features_5m"),
        [
            "account_id",
            "az",
            "instance_type",
            "max",
            "mean",
            "metric",
            "min",
            "p95",
            "region",
            "resource_id",
            "samples",
            "service"
        ]
    );
    // The same SQL over a relation named in capitals (DataFusion resolves it in lower case).
    let ctx = crate::sql::session_context();
    let schema = Arc::new(Schema::new(vec![
        Field::new("a", DataType::Utf8, false),
        Field::new("b", DataType::Float64, false),
        Field::new("c", DataType::Float64, false),
    ]));
    let table = MemTable::try_new(schema, vec![vec![]]).unwrap();
    ctx.register_table("cloudMetrics", Arc::new(table)).unwrap();
    let df = ctx
        .sql("SELECT a, sum(b) AS b FROM cloudMetrics WHERE c > 0 GROUP BY a")
        .await
        .unwrap();
    assert_eq!(
        crate::window::config::columns_read(df.clone(), "cloudMetrics"),
        Some(vec!["a".into(), "b".into(), "c".into()])
    );
    // A relation the plan does not scan: unknown, so everything is buffered.
    assert_eq!(crate::window::config::columns_read(df, "other"), None);
    // A stage's replace_by columns are read too (billing: a restated line item).
    let billing = Pipeline::load(&root.join("pipelines/billing.yaml"))
        .await
        .unwrap();
    let replacing: Vec<_> = billing
        .stages
        .iter()
        .filter_map(|s| match &s.kind {
            super::StageKind::Window(w) if !w.replace_by.is_empty() => Some(w),
            _ => None,
        })
        .collect();
    assert!(
        !replacing.is_empty(),
        "billing replaces restated line items"
    );
    for stage in replacing {
        let reads = stage.sql.query.reads.as_ref().unwrap();
        assert!(
            stage.replace_by.iter().all(|c| reads.contains(c)),
            "{reads:?}"
        );
    }
}

#[tokio::test]
async fn a_secret_written_in_a_pipeline_is_refused_and_never_shown() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pipelines/invalid/bad_kafka.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("sasl.password: hunter2-literal"));
    let err = Pipeline::load(&file).await.unwrap_err().to_string();
    assert!(err.contains("`sasl.password` is a secret"), "{err}");
    assert!(
        !err.contains("hunter2-literal"),
        "the secret is shown:\n{err}"
    );
}

/// Whether each shipped pipeline can run in a consumer group, re-keyed where its stages keep
/// state by keys its source's `key` does not follow, and what is said where it cannot.
#[tokio::test]
async fn a_source_keyed_otherwise_than_its_stages_is_re_keyed_or_keeps_a_pipeline_out_of_a_group() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let load = |name: &str| {
        let file = root.join("pipelines").join(name);
        async move { Pipeline::load(&file).await.unwrap() }
    };
    const FEEDBACK: &str = "feedback: {from: feedback, window: 30d, max_false_positive_rate: 0.05}";
    let line_of = |name: &str, wanted: &str| {
        let text = std::fs::read_to_string(root.join("pipelines").join(name)).unwrap();
        text.lines().position(|l| l.trim_start() == wanted).unwrap() + 1
    };

    // Keyed by resource, and every stage keeps its state per resource (and more).
    let metrics = load("cloud-metrics.yaml").await;
    assert_eq!(metrics.group_problems, vec![]);
    assert!(
        metrics.sources.iter().all(|s| s.repartition_by.is_empty()),
        "{:?}",
        metrics.sources
    );

    // Keyed by pool; the recommendation weighs every pool at once.
    let spot = load("spot-prices.yaml").await;
    let [problem] = spot.group_problems.as_slice() else {
        panic!("{:?}", spot.group_problems)
    };
    assert_eq!(
        problem.line,
        Some(line_of("spot-prices.yaml", "recommend:"))
    );
    assert!(
        problem
            .message
            .starts_with("stage `recommend` keeps one state over every row"),
        "{problem}"
    );

    // No key declared, and the hourly totals and their scores keep state per account and
    // service: re-keyed by both, which every one of them keeps its state by.
    let billing = load("billing.yaml").await;
    assert_eq!(billing.group_problems, vec![]);
    assert_eq!(billing.sources[0].repartition_by, ["account_id", "service"]);
    assert_eq!(
        billing.sources[0].repartition_topic(&billing.name),
        "billing.repartition.billing"
    );

    // Keyed by account: the per-resource stages would see a resource's rows on many workers,
    // so the source is re-keyed by the one event field every stage keeps its state by; the
    // verdicts on alerts, keyed by resource, then meet their alert's worker.
    let file = root.join("pipelines/cloud-metrics.yaml");
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("key: [resource_id]  ", "key: [account_id]   ");
    let by_account = Pipeline::from_yaml(&file, &text).await.unwrap();
    assert_eq!(by_account.group_problems, vec![]);
    let source = |p: &Pipeline, name: &str| {
        p.sources
            .iter()
            .find(|s| s.name == name)
            .unwrap()
            .repartition_by
            .clone()
    };
    assert_eq!(source(&by_account, "metrics"), ["resource_id"]);
    assert_eq!(source(&by_account, "feedback"), Vec::<String>::new());

    // A scorer keyed by metric alone, beside hourly CPU per resource: no event field is among
    // every stage's keys, so no re-keying can bring each key's rows together.
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("key: [resource_id, metric]", "key: [metric]");
    let by_metric = Pipeline::from_yaml(&file, &text).await.unwrap();
    let (feedback, keyed): (Vec<_>, Vec<_>) = by_metric
        .group_problems
        .iter()
        .partition(|p| p.message.contains("matches verdicts"));
    let [problem] = keyed.as_slice() else {
        panic!("{keyed:?}")
    };
    assert_eq!(problem.line, Some(line_of("cloud-metrics.yaml", "kafka:")));
    assert!(
        problem.message.starts_with(
            "source `metrics`'s stage(s) features_1m, features_5m, anomaly_5m, alerts, cpu_1h"
        ) && problem.message.contains("no field of its events"),
        "{problem}"
    );
    // The alerts' resource is now the metric: verdicts keyed by resource cannot meet them.
    assert_eq!(feedback.len(), 1, "{feedback:?}");
    assert!(source(&by_metric, "metrics").is_empty());

    // Verdicts keyed by something other than the alert's resource: only the feedback fails.
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("key: [resource]", "key: [alert_id]");
    let by_id = Pipeline::from_yaml(&file, &text).await.unwrap();
    let [problem] = by_id.group_problems.as_slice() else {
        panic!("{:?}", by_id.group_problems)
    };
    assert_eq!(problem.line, Some(line_of("cloud-metrics.yaml", FEEDBACK)));
    assert!(
        problem.message.starts_with(
            "stage `alerts` matches verdicts to the alerts its worker opened: in a consumer \
             group source `feedback` must be keyed by the alert's `resource`"
        ),
        "{problem}"
    );

    // A key field not in the schema is an error of its own.
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("key: [resource_id]  ", "key: [resource]     ");
    let err = Pipeline::from_yaml(&file, &text)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("key field `resource` is not in"), "{err}");
}
