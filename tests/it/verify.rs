//! `clinicsync verify`: every file of the folder read and checked, one line
//! per problem, nothing changed; quiet on a healthy folder.

use std::fs;
use std::path::Path;

use clinicsync::xmlstore::{seal, unseal};

use crate::support::*;

/// A family of two sites with five patients, three exports at A, and a
/// document, all synced.
fn healthy() -> (Family, std::path::PathBuf, std::path::PathBuf, Vec<String>) {
    let (family, a, b) = two_sites();
    let docs = family.dir.path().join("a-docs");
    fs::create_dir_all(&docs).unwrap();
    set(&a, &[&format!("documents_folder={}", docs.display())]);
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(add_patient(&app(&a), n, 1));
        sync_ok(&a);
    }
    fs::write(docs.join("scan.pdf"), b"a scanned consent form").unwrap();
    app(&a)
        .execute("INSERT INTO documents (id, patient_id, file_name) VALUES ('d1', ?1, 'scan.pdf')", [&ids[0]])
        .unwrap();
    sync_ok(&a);
    sync_ok(&b);
    (family, a, b, ids)
}

fn verify(db: &Path) -> (i32, serde_json::Value) {
    let out = cli(db).args(["verify", "--json"]).output().unwrap();
    (out.status.code().unwrap_or(-1), serde_json::from_slice(&out.stdout).unwrap())
}

#[test]
fn a_healthy_folder_has_no_problems() {
    let (_family, a, b, _) = healthy();
    for db in [&a, &b] {
        let (code, report) = verify(db);
        assert_eq!(code, 0, "{report:#}");
        assert_eq!(report["problems"], serde_json::json!([]), "{report:#}");
        assert_eq!(report["checked"]["site_files"], 2);
        assert!(report["checked"]["segments"].as_u64().unwrap() >= 4, "{report:#}");
        assert_eq!(report["checked"]["patient_files"], 3);
        assert_eq!(report["checked"]["document_bodies"], 1);
    }
    let text = cli(&a).arg("verify").output().unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains("No problems found."));
    assert_eq!(json_of(&a, &["status"])["last_verify"]["problems"], 0);
}

#[test]
fn each_kind_of_damage_is_found_and_named() {
    let (family, a, b, ids) = healthy();
    let folder = family.folder();
    // A truncated patient file.
    let patient = patient_file(&folder, &ids[1]);
    let bytes = fs::read(&patient).unwrap();
    fs::write(&patient, &bytes[..bytes.len() / 2]).unwrap();
    // A missing segment in the middle of A's log.
    let log: Vec<_> = {
        let site_dir = fs::read_dir(folder.join("log"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|dir| fs::read_dir(dir).unwrap().count() >= 3);
        let mut files: Vec<_> = fs::read_dir(site_dir.unwrap()).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        files
    };
    fs::remove_file(&log[1]).unwrap();
    // A damaged document body (same size).
    let body_dir = fs::read_dir(folder.join("docs")).unwrap().next().unwrap().unwrap().path();
    let body = fs::read_dir(&body_dir).unwrap().next().unwrap().unwrap().path();
    let mut damaged = fs::read(&body).unwrap();
    damaged[3] ^= 0x20;
    fs::write(&body, &damaged).unwrap();
    // B's site file as a newer clinicsync would write it.
    let b_site = fs::read_dir(folder.join("sites"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| fs::read_to_string(p).unwrap().contains("name=\"b\""))
        .unwrap();
    let inner = String::from_utf8(unseal(&fs::read(&b_site).unwrap()).unwrap().to_vec()).unwrap();
    fs::write(&b_site, seal(inner.replace("format=\"1\"", "format=\"7\"").into_bytes())).unwrap();

    let before: Vec<_> =
        walkdir::WalkDir::new(&folder).into_iter().map(|e| e.unwrap().path().to_owned()).collect();
    let (code, report) = verify(&a);
    assert_eq!(code, 1, "{report:#}");
    let problems = report["problems"].as_array().unwrap();
    let said = |path: &Path, words: &str| {
        let rel = path.strip_prefix(&folder).unwrap().to_string_lossy().into_owned();
        assert!(
            problems
                .iter()
                .any(|p| p["path"] == rel.as_str() && p["problem"].as_str().unwrap().contains(words)),
            "{rel}: {words}: {report:#}"
        );
    };
    said(&patient, "trailer");
    said(&log[1], "is missing");
    said(&body, "is damaged");
    said(&b_site, "newer");
    assert_eq!(problems.len(), 4, "{report:#}");
    for p in problems {
        assert!(!p["advice"].as_str().unwrap().is_empty());
    }
    let after: Vec<_> =
        walkdir::WalkDir::new(&folder).into_iter().map(|e| e.unwrap().path().to_owned()).collect();
    assert_eq!(before, after, "verify changes nothing");
    assert_eq!(json_of(&a, &["status"])["last_verify"]["problems"], 4);
    // In Latest Logs: the operation and each problem, and not a sync.
    let log = json_of(&a, &["log", "--last", "1"]);
    assert_eq!(log[0]["run"]["trigger"], "operation verify", "{log:#}");
    assert_eq!(log[0]["run"]["outcome"], "partial", "{log:#}");
    assert_eq!(log[0]["events"].as_array().unwrap().len(), 4, "{log:#}");
    assert!(log[0]["run"]["summary"]["said"].as_str().unwrap().ends_with("; 4 problems found"), "{log:#}");
    let status = json_of(&a, &["status"]);
    assert_eq!(status["last_outcome"], "ok", "the last sync's outcome, not the verification's: {status:#}");
    let human = cli(&a).args(["log", "--last", "1"]).output().unwrap();
    assert!(String::from_utf8_lossy(&human.stdout).contains("verified the folder: "));
    let text = cli(&b).arg("verify").output().unwrap();
    assert_eq!(text.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&text.stderr).contains("problems (listed above)"));
}
