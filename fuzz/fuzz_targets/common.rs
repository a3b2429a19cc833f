//! What the pipeline and SQL targets share: one runtime for the checks, which are async, and
//! what a refusal must say.

use std::path::Path;
use std::sync::OnceLock;

use stratus::pipeline::Diagnostics;

/// One current-thread runtime for every input of the process.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

/// Whether `text` names a place outside the repository's files: a URL or a device.
#[allow(dead_code)]
pub fn reaches_outside(text: &str) -> bool {
    ["://", "/dev/", "/proc/", "/sys/"]
        .iter()
        .any(|s| text.contains(s))
}

/// Every diagnostic says something, and one about `file` points inside `text` — counting its
/// lines as YAML does, ended by `\r\n`, `\r` or `\n`.
#[allow(dead_code)]
pub fn assert_located(diagnostics: &Diagnostics, file: &Path, text: &str) {
    assert!(!diagnostics.0.is_empty(), "refused with no diagnostic");
    let lines = text
        .replace("\r\n", "\n")
        .replace('\r', "\n")
        .lines()
        .count()
        .max(1);
    for d in &diagnostics.0 {
        assert!(!d.message.is_empty(), "an empty diagnostic: {d:?}");
        if d.file == file
            && let Some(line) = d.line
        {
            assert!(
                (1..=lines + 1).contains(&line),
                "line {line} of a {lines}-line file: {d:?}"
            );
        }
    }
}
