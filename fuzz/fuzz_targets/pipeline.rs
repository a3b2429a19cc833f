//! Any text given as a pipeline file must either check into a plan or be refused with
//! diagnostics that name the file, and a line inside it when they give one — never panic.
//!
//! The text is checked as `pipelines/fuzz.yaml` of this repository, so the shipped schemas,
//! SQL and models it names resolve as the shipped pipelines' do. Inputs that name a URL or a
//! device (`://`, `/dev/`, `/proc/`) are skipped: reaching a network store or reading an
//! endless file is not the parser's business. Run: `scripts/fuzz pipeline`.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use stratus::pipeline::Pipeline;

mod common;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if common::reaches_outside(text) {
        return;
    }
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines/fuzz.yaml");
    common::runtime().block_on(async {
        if let Err(diagnostics) = Pipeline::from_yaml(&file, text).await {
            common::assert_located(&diagnostics, &file, text);
        }
    });
});
