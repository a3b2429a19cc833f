//! The `stratus` binary: the command line of [`stratus::cli`], with no functions of its own.

/// mimalloc instead of glibc's malloc, for Rust's allocations and, through its `override`
/// feature (`malloc` and `free` linked into the binary), for librdkafka's and ONNX Runtime's too.
/// glibc raises its mmap threshold each time a large block is freed, after which the per-cycle
/// batches and librdkafka's fetch buffers come from per-thread arenas it seldom gives back.
/// mimalloc's v2 line gives freed pages back after 10 ms, v3 after a second. BENCHMARKS.md has
/// the figures for each ("mimalloc v2", "librdkafka on mimalloc too").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    stratus::cli::main(stratus::sql::Functions::default())
}
