//! `clinicsync detach`: a site leaves the family with its changes in the
//! folder, clinicsync removed from its database and the app's rows
//! untouched; the others stop waiting for it; `init` joins again, and
//! deletions the family made meanwhile apply to it without anything
//! coming back.

use std::path::Path;

use crate::support::*;

fn own_objects(db: &Path) -> i64 {
    app(db)
        .query_row("SELECT count(*) FROM sqlite_master WHERE name LIKE '\\_cs\\_%' ESCAPE '\\'", [], |r| {
            r.get(0)
        })
        .unwrap()
}

fn app_rows(db: &Path) -> Vec<(String, String)> {
    app(db)
        .prepare("SELECT id, coalesce(phone, '') FROM patients ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn a_site_leaves_with_its_changes_sent_the_others_stop_waiting_and_it_can_join_again() {
    let (family, a, b) = two_sites();
    let ids: Vec<String> = (0..3).map(|n| add_patient(&app(&a), n, 1)).collect();
    sync_ok(&a);
    sync_ok(&b);
    // B changes a phone and leaves before syncing it.
    app(&b)
        .execute("UPDATE patients SET phone = 'typed at B before leaving' WHERE id = ?1", [&ids[0]])
        .unwrap();

    let dry = cli(&b).args(["detach", "--dry-run"]).output().unwrap();
    assert!(dry.status.success());
    assert!(String::from_utf8_lossy(&dry.stdout).contains("Would export the 1 local changes"), "{dry:?}");
    let objects = own_objects(&b);
    assert!(objects > 10);
    let rows_before = app_rows(&b);
    let out = cli(&b).args(["detach", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(own_objects(&b), 0, "no _cs_ table or trigger left");
    assert_eq!(app_rows(&b), rows_before, "the app's rows are untouched");
    // The app goes on working without clinicsync.
    app(&b).execute("UPDATE patients SET email = 'after@example.org' WHERE id = ?1", [&ids[1]]).unwrap();
    let status = cli(&b).arg("status").output().unwrap();
    assert!(!status.status.success(), "the database is no longer set up for clinicsync");

    // A got B's last change, and sees that B left.
    sync_ok(&a);
    assert_eq!(patient_field(&a, &ids[0], "phone").unwrap(), "typed at B before leaving");
    let sites = json_of(&a, &["status"])["sites"].clone();
    let b_site = sites.as_array().unwrap().iter().find(|s| s["name"] == "b").unwrap().clone();
    assert!(b_site["warning"].as_str().unwrap().contains("left the family"), "{b_site:#}");

    // A deletes a patient; with B gone nobody holds the purge back.
    app(&a).execute("DELETE FROM patients WHERE id = ?1", [&ids[2]]).unwrap();
    sync_ok(&a);
    days_pass(8);
    sync_ok(&a);
    let report = sync_ok(&a);
    let purged = json_of(&a, &["tombstones"])["purged"].as_array().unwrap().len();
    assert!(purged >= 1, "A purged without waiting for B: {report:#}");

    // B joins again: the deletion applies to it, nothing comes back.
    cli(&b)
        .args(["init", "--folder"])
        .arg(family.folder())
        .args(["--site-name", "b again"])
        .assert()
        .success();
    sync_ok(&b);
    sync_ok(&a);
    sync_ok(&b);
    assert!(!has_patient(&b, &ids[2]), "the family's deletion applied to the returning site");
    assert!(!has_patient(&a, &ids[2]), "nothing the returning site held came back");
    assert_eq!(patient_field(&a, &ids[1], "email").unwrap(), "after@example.org");
    assert_eq!(dump(&a), dump(&b));
}

#[test]
fn family_delete_removes_the_familys_files_and_the_other_sites_stop_keeping_everything() {
    let (family, a, b) = two_sites();
    let ids: Vec<String> = (0..4).map(|n| add_patient(&app(&a), n, 2)).collect();
    sync_ok(&a);
    sync_ok(&b);
    let folder = family.folder();
    // Not the family's: a person's note and a file inside one of its folders.
    std::fs::write(folder.join("README from the IT person.txt"), b"do not touch").unwrap();
    std::fs::write(folder.join("patients").join("notes.txt"), b"mine").unwrap();
    let status = json_of(&a, &["status"]);
    let short = &status["family"].as_str().unwrap()[..8];

    // A wrong id deletes nothing.
    let wrong = cli(&a).args(["family", "delete", "--confirm", "deadbeef"]).output().unwrap();
    assert_eq!(wrong.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("nothing was deleted"));
    assert!(own_objects(&a) > 0);
    let dry = cli(&a).args(["family", "delete", "--dry-run", "--json"]).output().unwrap();
    let dry: serde_json::Value = serde_json::from_slice(&dry.stdout).unwrap();
    assert!(dry["files"].as_u64().unwrap() >= 6, "{dry:#}");
    assert!(folder.join("patients").read_dir().unwrap().count() > 1, "a dry run deletes nothing");

    let done = cli(&a).args(["family", "delete", "--confirm", short, "--json"]).output().unwrap();
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    let done: serde_json::Value = serde_json::from_slice(&done.stdout).unwrap();
    assert_eq!(done["files"], dry["files"]);
    let left: Vec<String> = walkdir::WalkDir::new(&folder)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| e.path().strip_prefix(&folder).unwrap().to_string_lossy().into_owned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(left, ["README from the IT person.txt", "clinicsync.xml", "patients/notes.txt"], "{left:?}");
    let note = std::fs::read_to_string(folder.join("clinicsync.xml")).unwrap();
    assert!(note.contains("deleted-by=") && !note.contains("<row"), "{note}");
    assert_eq!(own_objects(&a), 0);
    assert_eq!(app_rows(&a).len(), 4, "A keeps its data");

    // B stops with a clear status, keeps every row, deletes nothing.
    let rows_before = dump(&b);
    let (code, report) = sync(&b);
    assert_eq!(code, 1, "{report:#}");
    assert!(report["error"].as_str().unwrap().contains("deleted from"), "{report:#}");
    assert_eq!(dump(&b), rows_before);
    assert!(has_patient(&b, &ids[3]));
    let status = json_of(&b, &["status"]);
    assert!(
        status["warnings"].as_array().unwrap().iter().any(|w| w.as_str().unwrap().contains("family delete")),
        "{status:#}"
    );
    // Nobody joins a deleted family by mistake.
    let c = family.db("c");
    let joined = cli(&c).args(["init", "--folder"]).arg(&folder).output().unwrap();
    assert_eq!(joined.status.code(), Some(1));
}
