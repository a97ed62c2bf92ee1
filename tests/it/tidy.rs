//! House rules that the compiler does not check: the pure core stays pure,
//! dependencies between top-level modules point down, only the platform
//! module names a platform, and every source file says what it is for.

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
fn only_the_platform_module_names_a_platform() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let platform = root.join("platform");
    let named = ["cfg!(", "#[cfg(", "target_os", "std::os::", "rustix", "windows_sys"];
    let mut offences = Vec::new();
    for file in rust_files(&root).into_iter().filter(|f| !f.starts_with(&platform)) {
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") || code.starts_with("#[cfg(test)]") {
                continue;
            }
            if let Some(word) = named.iter().find(|w| code.contains(**w)) {
                offences.push(format!("{}:{}: {word}", file.display(), n + 1));
            }
        }
    }
    assert!(
        offences.is_empty(),
        "what differs between systems belongs in src/platform:\n{}",
        offences.join("\n")
    );
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

/// The top-level modules from the bottom up: a module uses only modules of
/// the layers below its own (ARCHITECTURE.md, "Codemap").
const LAYERS: &[&[&str]] = &[
    &["model", "platform"],
    &["xmlstore", "conflicts", "changelog"],
    &["db", "folder"],
    &["engine"],
    &["web"],
    &["service"],
    &["cli"],
];

/// The top-level modules a source file names, by `crate::` paths (grouped
/// or not) and by `super::` chains that climb out of its own module.
fn modules_named(module_path: &[String], text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            if let Some(group) = after.strip_prefix('{') {
                let inner = &group[..group.find('}').unwrap_or(group.len())];
                for part in inner.split(',') {
                    let name: String =
                        part.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                    out.push((n + 1, name));
                }
            } else {
                out.push((n + 1, after.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()));
            }
            rest = after;
        }
        let mut rest = code;
        while let Some(at) = rest.find("super::") {
            // Only the start of a chain: not the second `super::` of one.
            let before = &rest[..at];
            let mut after = &rest[at..];
            let mut climbs = 0;
            while let Some(next) = after.strip_prefix("super::") {
                climbs += 1;
                after = next;
            }
            if !before.ends_with("::") && climbs >= module_path.len() {
                out.push((n + 1, after.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()));
            }
            rest = after;
        }
    }
    out
}

#[test]
fn dependencies_between_top_level_modules_point_down() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let layer_of = |name: &str| LAYERS.iter().position(|layer| layer.contains(&name));
    let mut offences = Vec::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let Some(top) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else { continue };
        if top == "lib" || top == "main" {
            continue;
        }
        let Some(own) = layer_of(&top) else {
            offences.push(format!("src/{top} is not placed in a layer of LAYERS"));
            continue;
        };
        let files = if path.is_dir() { rust_files(&path) } else { vec![path.clone()] };
        for file in files {
            // The file's module path: src/engine/run/guard.rs is engine::run::guard.
            let relative = file.strip_prefix(&src).unwrap().with_extension("");
            let mut module_path: Vec<String> =
                relative.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
            if module_path.last().is_some_and(|l| l == "mod") {
                module_path.pop();
            }
            let text = std::fs::read_to_string(&file).unwrap();
            for (line, name) in modules_named(&module_path, &text) {
                let Some(theirs) = layer_of(&name) else { continue };
                if name != top && theirs >= own {
                    offences.push(format!("{}:{line}: {top} uses {name}", file.display()));
                }
            }
        }
    }
    assert!(offences.is_empty(), "dependencies must point down (see LAYERS):\n{}", offences.join("\n"));
}

#[test]
fn the_dependency_check_sees_crate_paths_groups_and_climbing_supers() {
    let engine_run = ["engine".to_owned(), "run".to_owned()];
    let found = |text: &str| -> Vec<String> {
        modules_named(&engine_run, text).into_iter().map(|(_, name)| name).collect()
    };
    assert_eq!(found("use crate::db::Db;"), ["db"]);
    assert_eq!(found("use crate::{cli, web::Service};"), ["cli", "web"]);
    assert_eq!(found("let x = super::super::service::Shared::new();"), ["service"]);
    assert_eq!(found("use super::Run; // crate::cli in a comment"), Vec::<String>::new());
}
