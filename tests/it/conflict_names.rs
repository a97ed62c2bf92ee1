//! The conflict-copy name grammar against `fixtures/conflict-names/`: real
//! names from every major cloud client map to their original, and provider
//! litter and look-alike names never do.

use std::path::Path;

use clinicsync::conflicts::{Classified, IgnoreRules, classify_path};

fn rows(file: &str) -> Vec<Vec<String>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/conflict-names").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect()
}

/// What the importer makes of a path: litter in any component is skipped
/// before the grammar is asked.
fn importer_view(path: &str) -> Option<Classified> {
    let ignore = IgnoreRules::new();
    if path.split('/').any(|part| ignore.is_ignored(part)) {
        return None;
    }
    Some(classify_path(path))
}

#[test]
fn every_client_s_copy_maps_to_its_original() {
    let rows = rows("copies.tsv");
    assert!(rows.len() >= 40, "the fixture lost its examples");
    let mut wrong = Vec::new();
    for row in rows {
        let [path, original, client] = row.as_slice() else { panic!("malformed fixture row {row:?}") };
        match importer_view(path) {
            Some(Classified::Copy { of, client: c }) => {
                let label = serde_json::to_value(c).unwrap();
                if of.path() != *original || label != client.as_str() {
                    wrong.push(format!(
                        "{path}: mapped to {} by {label}, want {original} by {client}",
                        of.path()
                    ));
                }
            }
            other => wrong.push(format!("{path}: {other:?}, want a copy of {original}")),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn litter_and_look_alikes_are_never_copies() {
    let mut wrong = Vec::new();
    for row in rows("not-copies.tsv") {
        let [path, why] = row.as_slice() else { panic!("malformed fixture row {row:?}") };
        if let Some(c @ Classified::Copy { .. }) = importer_view(path) {
            wrong.push(format!("{path} ({why}) was taken for {c:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
