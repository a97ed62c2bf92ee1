//! The `clinicsync` executable: everything lives in the library's `cli`.

fn main() -> std::process::ExitCode {
    clinicsync::cli::main()
}
