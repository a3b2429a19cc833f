//! Pipeline files as data: every shipped pipeline checks clean, and each file in
//! `tests/pipelines/invalid/` fails with the errors its `# expect:` header lines name.

use std::path::{Path, PathBuf};

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
