//! The `clinicsync` executable: everything lives in the library's `cli`.

/// mimalloc instead of the system allocator: the sync's model is many small
/// allocations made on one core and freed on the other, where glibc's
/// allocator spends much of its time (see docs/performance.md). Built
/// without transparent huge pages (Cargo.toml, docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    clinicsync::cli::main()
}
