//! The `stratus` binary: the command line of [`stratus::cli`], with no functions of its own.

/// mimalloc instead of glibc's malloc. glibc raises its mmap threshold each time a large block
/// is freed, after which the per-cycle batches (tens of MB each) come from per-thread heap
/// arenas it seldom gives back, so the resident set grew far past the live heap. mimalloc's v2
/// line: it gives freed pages back after 10 ms, v3 after a second, which held 70–115 MiB more at
/// peak in `stratus bench` (BENCHMARKS.md, "mimalloc v2").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    stratus::cli::main(stratus::sql::Functions::default())
}
