//! House rules that the compiler does not check: the pure core stays pure,
//! and every source file says what it is for.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in walkdir::WalkDir::new(dir) {
        let entry = entry.expect("walk the source tree");
        if entry.path().extension().is_some_and(|e| e == "rs") {
            out.push(entry.into_path());
        }
    }
    out.sort();
    out
}

#[test]
fn the_pure_core_touches_no_file_system_clock_randomness_or_database() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let forbidden = [
        "std::fs",
        "File::",
        "SystemTime::now",
        "Instant::now",
        "thread_rng",
        "getrandom",
        "std::env",
        "rusqlite",
        "crate::db",
        "crate::folder",
        "crate::engine",
        "crate::cli",
        "tracing::",
    ];
    let mut offences = Vec::new();
    for module in ["model", "xmlstore", "conflicts", "changelog"] {
        for file in rust_files(&root.join(module)) {
            let text = std::fs::read_to_string(&file).unwrap();
            for (n, line) in text.lines().enumerate() {
                if line.trim_start().starts_with("//") {
                    continue;
                }
                for word in forbidden {
                    if line.contains(word) {
                        offences.push(format!("{}:{}: uses {word}", file.display(), n + 1));
                    }
                }
            }
        }
    }
    assert!(offences.is_empty(), "the pure core must stay pure:\n{}", offences.join("\n"));
}

#[test]
fn every_source_file_opens_with_a_doc_comment() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut missing = Vec::new();
    for dir in ["src", "tests", "benches"].into_iter().filter(|d| root.join(d).is_dir()) {
        for file in rust_files(&root.join(dir)) {
            let text = std::fs::read_to_string(&file).unwrap();
            if !text.starts_with("//!") {
                missing.push(file.display().to_string());
            }
        }
    }
    assert!(missing.is_empty(), "files without a leading //! line:\n{}", missing.join("\n"));
}
