//! Deletions that travel: tombstones reach every site and never come back,
//! absence never deletes, an edit concurrent with a delete is recorded, and
//! a large batch of incoming deletions waits for confirmation.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use crate::support::*;

fn count(db: &Path, sql: &str, id: &str) -> i64 {
    app(db).query_row(sql, [id], |r| r.get(0)).unwrap()
}

fn rows_of_patient(db: &Path, id: &str) -> i64 {
    count(db, "SELECT count(*) FROM patients WHERE id = ?1", id)
        + count(db, "SELECT count(*) FROM appointments WHERE patient_id = ?1", id)
        + count(db, "SELECT count(*) FROM clinical_notes WHERE patient_id = ?1", id)
        + count(db, "SELECT count(*) FROM invoices WHERE patient_id = ?1", id)
}

fn status(db: &Path) -> serde_json::Value {
    json_of(db, &["status"])
}

#[test]
fn a_deleted_patient_with_thirty_rows_is_gone_everywhere_and_stays_gone() {
    let (family, a, b) = two_sites();
    let id = add_patient(&app(&a), 1, 10);
    add_patient(&app(&a), 2, 1);
    sync_ok(&a);
    sync_ok(&b);
    assert_eq!(rows_of_patient(&b, &id), 31);
    let stale = fs::read(patient_file(&family.folder(), &id)).unwrap();

    app(&a).execute("DELETE FROM patients WHERE id = ?1", [&id]).unwrap();
    assert_eq!(rows_of_patient(&a, &id), 0, "the app's cascade");
    sync_ok(&a);
    let report = sync_ok(&b);
    assert_eq!(rows_of_patient(&b, &id), 0, "{report:#}");
    for (db, scan) in [(&b, false), (&a, true), (&b, true), (&a, false), (&b, false)] {
        let args: &[&str] = if scan { &["--full-scan"] } else { &[] };
        let (code, report) = sync_with(db, args);
        assert_eq!(code, 0, "{report:#}");
        assert_eq!(rows_of_patient(&a, &id) + rows_of_patient(&b, &id), 0);
    }
    // B's stale copy of the file comes back, as the file and as a copy.
    let file = patient_file(&family.folder(), &id);
    fs::write(&file, &stale).unwrap();
    fs::write(file.with_file_name(format!("{} (1).xml", clinicsync::model::patient_file_name(&id))), &stale)
        .unwrap();
    for db in [&b, &a, &b] {
        let (code, report) = sync_with(db, &["--full-scan"]);
        assert_eq!(code, 0, "{report:#}");
    }
    assert_eq!(rows_of_patient(&a, &id) + rows_of_patient(&b, &id), 0, "nothing came back");
    assert_eq!(dump(&a), dump(&b));
    assert_eq!(dump(&b)[0].1.len(), 1, "the other patient is untouched");
}

#[test]
fn a_row_deleted_then_inserted_again_exists_everywhere() {
    let (_family, a, b, id) = two_sites_sharing_a_patient(1);
    let appt: String =
        app(&a).query_row("SELECT id FROM appointments WHERE patient_id = ?1", [&id], |r| r.get(0)).unwrap();
    app(&b).execute("DELETE FROM appointments WHERE id = ?1", [&appt]).unwrap();
    sync_ok(&b);
    sync_ok(&a);
    assert_eq!(count(&a, "SELECT count(*) FROM appointments WHERE id = ?1", &appt), 0);
    app(&a)
        .execute(
            "INSERT INTO appointments (id, patient_id, starts_at, status) VALUES (?1, ?2, '2027-01-01T10:00', 'rebooked')",
            [&appt, &id],
        )
        .unwrap();
    sync_ok(&a);
    sync_ok(&b);
    sync_ok(&a);
    for db in [&a, &b] {
        assert_eq!(
            count(db, "SELECT count(*) FROM appointments WHERE id = ?1 AND status = 'rebooked'", &appt),
            1
        );
    }
    assert_eq!(dump(&a), dump(&b));
}

#[test]
fn a_delete_concurrent_with_an_edit_wins_everywhere_and_the_edit_is_kept_for_review() {
    for delete_first in [true, false] {
        let (_family, a, b, id) = two_sites_sharing_a_patient(2);
        app(&a).execute("DELETE FROM patients WHERE id = ?1", [&id]).unwrap();
        app(&b).execute("UPDATE patients SET phone = 'new number typed at B' WHERE id = ?1", [&id]).unwrap();
        let (first, second) = if delete_first { (&a, &b) } else { (&b, &a) };
        sync_ok(first);
        sync_ok(second);
        sync_ok(first);
        for db in [&a, &b] {
            assert_eq!(rows_of_patient(db, &id), 0, "delete_first={delete_first} {}", db.display());
            let records: serde_json::Value = json_of(db, &["conflicts"]);
            let records = records.as_array().unwrap();
            assert_eq!(records.len(), 1, "{records:?}");
            assert_eq!(records[0]["kind"], "deleted");
            assert_eq!(records[0]["lost_value"], "new number typed at B");
            assert_eq!(records[0]["column"], "phone");
        }
        let human = String::from_utf8(cli(&b).arg("conflicts").output().unwrap().stdout).unwrap();
        assert!(human.contains("deleted") && human.contains("new number typed at B"), "{human}");

        // Keeping the edit brings the patient back everywhere.
        if !delete_first {
            let record = json_of(&a, &["conflicts"])[0]["id"].as_i64().unwrap();
            cli(&a).args(["conflicts", "resolve", &record.to_string(), "--keep", "loser"]).assert().success();
            sync_ok(&a);
            sync_ok(&b);
            for db in [&a, &b] {
                assert_eq!(patient_field(db, &id, "phone").as_deref(), Some("new number typed at B"));
                assert_eq!(status(db)["open_conflicts"], 0);
            }
        }
    }
}

#[test]
fn an_emptied_or_removed_patients_folder_deletes_nothing() {
    for logs in ["on", "off"] {
        let (family, a, b) = two_sites();
        for db in [&a, &b] {
            set(db, &[&format!("use_logs={logs}")]);
        }
        let conn = app(&a);
        let ids: Vec<String> = (0..10).map(|n| add_patient(&conn, n, 1)).collect();
        sync_ok(&a);
        sync_ok(&b);
        let before = dump(&a);
        fs::remove_dir_all(family.folder().join("patients")).unwrap();
        for db in [&a, &b] {
            let (_, report) = sync_with(db, &["--full-scan"]);
            assert_ne!(report["outcome"], "failed", "{report:#}");
            assert_eq!(dump(db), before, "logs {logs}: nothing deleted at {}", db.display());
        }
        // The full scan wrote the missing files again from the database.
        for id in &ids {
            assert!(patient_file(&family.folder(), id).exists(), "logs {logs}: {id}'s file is back");
        }
    }
}

#[test]
fn a_hundred_zero_byte_placeholders_delete_nothing_and_are_named() {
    let (family, a, b) = two_sites();
    let conn = app(&a);
    let ids: Vec<String> = (0..100).map(|n| add_patient(&conn, n, 0)).collect();
    sync_ok(&a);
    sync_ok(&b);
    let before = dump(&a);
    for id in &ids {
        fs::write(patient_file(&family.folder(), id), b"").unwrap();
    }
    for db in [&b, &a] {
        let (code, report) = sync_with(db, &["--full-scan"]);
        assert_eq!(code, 3, "partial while the files are placeholders: {report:#}");
        let skipped = events_of(&report, "skipped");
        assert_eq!(skipped.len(), 100, "every placeholder is named");
        assert!(skipped[0]["message"].as_str().unwrap().contains("empty"), "{:?}", skipped[0]);
        assert_eq!(dump(db), before, "nothing deleted at {}", db.display());
    }
}

#[test]
fn deleting_thirty_percent_of_two_hundred_patients_waits_for_confirmation() {
    let (_family, a, b) = two_sites();
    let conn = app(&a);
    let ids: Vec<String> = (0..200).map(|n| add_patient(&conn, n, 1)).collect();
    sync_ok(&a);
    sync_ok(&b);
    // Two patients B holds in its own view: one gets a new note meanwhile.
    for id in &ids[..60] {
        conn.execute("DELETE FROM patients WHERE id = ?1", [id]).unwrap();
    }
    conn.execute("UPDATE patients SET notes = 'still here' WHERE id = ?1", [&ids[100]]).unwrap();
    sync_ok(&a);

    let (code, report) = sync(&b);
    assert_eq!((code, report["outcome"].as_str()), (3, Some("partial")), "{report:#}");
    assert_eq!(report["counts"]["deletes_held"], 60);
    let held = events_of(&report, "held-deletes");
    assert!(held[0]["message"].as_str().unwrap().contains("--confirm-deletes"), "{held:?}");
    assert_eq!(dump(&b)[0].1.len(), 200, "every patient still shown at B");
    assert_eq!(
        patient_field(&b, &ids[100], "notes").as_deref(),
        Some("still here"),
        "everything else applied"
    );
    let s = status(&b);
    assert_eq!(s["held_deletes"]["patients"], 60);
    let site_a = status(&a)["site"].as_str().unwrap().to_owned();
    assert_eq!(s["held_deletes"]["sites"][0], site_a.as_str());
    assert!(
        s["warnings"].as_array().unwrap().iter().any(|w| w.as_str().unwrap().contains("--confirm-deletes"))
    );

    let steps: Vec<String> = tombstones(&b)["tombstones"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["table"] == "patients")
        .map(|t| t["step"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(steps.len(), 60);
    assert!(steps.iter().all(|s| s == "waiting-confirmation"), "never purged while held: {steps:?}");

    // Still held on the next run, and after a full scan.
    assert_eq!(sync_with(&b, &["--full-scan"]).0, 3);
    assert_eq!(dump(&b)[0].1.len(), 200);

    let (code, report) = sync_with(&b, &["--confirm-deletes"]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["counts"]["patients_deleted"], 60);
    assert_eq!(dump(&b)[0].1.len(), 140);
    assert_eq!(dump(&a), dump(&b));
    assert_eq!(status(&b)["held_deletes"]["patients"], 0);
}

fn table_rows(db: &Path, table: &str) -> i64 {
    app(db).query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0)).unwrap()
}

#[test]
fn a_held_mass_deletion_holds_the_patients_child_rows_too() {
    let (_family, a, b) = two_sites();
    let conn = app(&a);
    let ids: Vec<String> = (0..100).map(|n| add_patient(&conn, n, 2)).collect();
    sync_ok(&a);
    sync_ok(&b);
    for id in &ids[..90] {
        conn.execute("DELETE FROM patients WHERE id = ?1", [id]).unwrap();
    }
    assert_eq!(table_rows(&a, "clinical_notes"), 20, "the app's cascade at A");
    sync_ok(&a);

    let (code, report) = sync(&b);
    assert_eq!(code, 3, "{report:#}");
    assert_eq!(report["counts"]["deletes_held"], 90);
    assert_eq!(report["counts"]["rows_held"], 90 * 7);
    for table in ["patients", "appointments", "clinical_notes", "invoices"] {
        let expected = if table == "patients" { 100 } else { 200 };
        assert_eq!(table_rows(&b, table), expected, "{table} still shown at B while the deletion waits");
    }
    let held = events_of(&report, "held-deletes");
    assert_eq!(held.len(), 1, "one hold: the patients with their rows: {held:?}");
    assert!(held[0]["message"].as_str().unwrap().contains("their 540 rows"), "{held:?}");
    let s = status(&b);
    assert_eq!(s["held_deletes"]["rows"], 630);
    assert_eq!(s["held_deletes"]["tables"].as_array().unwrap().len(), 0, "no table held on its own");

    // Another run, and a full scan, still hold everything.
    assert_eq!(sync_with(&b, &["--full-scan"]).0, 3);
    assert_eq!(table_rows(&b, "clinical_notes"), 200);

    let (code, report) = sync_with(&b, &["--confirm-deletes"]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["counts"]["patients_deleted"], 90);
    assert_eq!(report["counts"]["rows_deleted"], 630);
    assert_eq!(dump(&a), dump(&b));
}

#[test]
fn deleting_most_of_one_table_is_held_even_when_the_patients_stay() {
    let (_family, a, b) = two_sites();
    let conn = app(&a);
    for n in 0..50 {
        add_patient(&conn, n, 2);
    }
    sync_ok(&a);
    sync_ok(&b);
    conn.execute("DELETE FROM clinical_notes", []).unwrap();
    // A few appointments go too: within the guard, they are applied.
    conn.execute("DELETE FROM appointments WHERE rowid IN (SELECT rowid FROM appointments LIMIT 3)", [])
        .unwrap();
    sync_ok(&a);

    let (code, report) = sync(&b);
    assert_eq!(code, 3, "{report:#}");
    assert_eq!(table_rows(&b, "clinical_notes"), 100, "every note still shown at B");
    assert_eq!(table_rows(&b, "appointments"), 97, "the small deletion went through");
    assert_eq!(report["counts"]["deletes_held"], 0, "no patient was deleted");
    assert_eq!(report["counts"]["rows_held"], 100);
    let held = events_of(&report, "held-deletes");
    assert!(held[0]["message"].as_str().unwrap().contains("100 rows of clinical_notes"), "{held:?}");
    let s = status(&b);
    assert_eq!(s["held_deletes"]["tables"][0]["table"], "clinical_notes");
    assert_eq!(s["held_deletes"]["tables"][0]["rows"], 100);
    assert!(
        s["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains("100 rows of clinical_notes")),
        "{s:#}"
    );

    let (code, report) = sync_with(&b, &["--confirm-deletes"]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(table_rows(&b, "clinical_notes"), 0);
    assert_eq!(dump(&a), dump(&b));
}

#[test]
fn a_refused_mass_deletion_brings_the_rows_back_at_every_site() {
    let (family, a, b) = two_sites();
    let c = family.init("c");
    let conn = app(&a);
    let ids: Vec<String> = (0..40).map(|n| add_patient(&conn, n, 1)).collect();
    for db in [&a, &b, &c] {
        sync_ok(db);
    }
    let before = dump(&b);
    for id in &ids[..30] {
        conn.execute("DELETE FROM patients WHERE id = ?1", [id]).unwrap();
    }
    sync_ok(&a);
    assert_eq!(sync(&b).0, 3, "held at B");

    let (code, report) = sync_with(&b, &["--keep-deleted"]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["counts"]["rows_kept"], 120);
    let kept = events_of(&report, "keep-deleted");
    assert!(
        kept[0]["message"].as_str().unwrap().contains("that site a deleted"),
        "names the deleting site: {kept:?}"
    );
    assert!(kept[0]["message"].as_str().unwrap().contains("kept 120 rows"), "{kept:?}");
    assert_eq!(dump(&b), before, "nothing lost at B");
    assert_eq!(status(&b)["held_deletes"]["rows"], 0);

    // A, which deleted them, and C, which had them held or not, take the
    // rows back as new inserts; nobody holds anything any more.
    for db in [&a, &c, &b, &a] {
        let (code, report) = sync(db);
        assert!(code == 0 || code == 3, "{report:#}");
    }
    for db in [&a, &b, &c] {
        let (code, report) = sync(db);
        assert_eq!(code, 0, "{} settles: {report:#}", db.display());
        assert_eq!(dump(db), before, "{} has every row again", db.display());
    }

    // --keep-deleted and --confirm-deletes cannot be given together.
    cli(&b).args(["sync", "--keep-deleted", "--confirm-deletes"]).assert().code(2);
}

#[test]
fn a_few_deletions_pass_the_guard_at_once() {
    let (_family, a, b) = two_sites();
    let conn = app(&a);
    let ids: Vec<String> = (0..30).map(|n| add_patient(&conn, n, 1)).collect();
    sync_ok(&a);
    sync_ok(&b);
    for id in &ids[..5] {
        conn.execute("DELETE FROM patients WHERE id = ?1", [id]).unwrap();
    }
    sync_ok(&a);
    let report = sync_ok(&b);
    assert_eq!(report["counts"]["patients_deleted"], 5);
    assert_eq!(dump(&a), dump(&b));
}

/// A month passes (the retention, and the dormancy of a third site that
/// stays away), and A and B sync until they purge; returns how many
/// tombstones they purged.
fn month_passes_and_a_and_b_purge(a: &Path, b: &Path) -> u64 {
    days_pass(31);
    [a, b, a, b].iter().map(|db| sync_ok(db)["counts"]["tombstones_purged"].as_u64().unwrap()).sum()
}

fn tombstones(db: &Path) -> serde_json::Value {
    json_of(db, &["tombstones"])
}

#[test]
fn a_site_away_during_a_purge_deletes_what_was_purged_and_its_own_edit_travels() {
    let (family, a, b) = two_sites();
    let c = family.init("c");
    let conn = app(&a);
    let doomed = add_patient(&conn, 1, 10);
    let keep = add_patient(&conn, 2, 1);
    for db in [&a, &b, &c] {
        sync_ok(db);
    }
    let stale = fs::read(patient_file(&family.folder(), &doomed)).unwrap();
    // C goes away; its app keeps working.
    app(&c).execute("UPDATE patients SET email = 'edited while away' WHERE id = ?1", [&keep]).unwrap();

    conn.execute("DELETE FROM patients WHERE id = ?1", [&doomed]).unwrap();
    sync_ok(&a);
    let listed = tombstones(&a);
    let waiting: Vec<&serde_json::Value> =
        listed["tombstones"].as_array().unwrap().iter().filter(|t| t["patient"] == doomed.as_str()).collect();
    assert_eq!(waiting.len(), 31, "the patient and its 30 rows: {listed:#}");
    assert_eq!(waiting[0]["step"], "waiting-retention", "{listed:#}");
    // A week passes: the retention is over, but B and C have not seen it.
    days_pass(8);
    let listed = tombstones(&a);
    let waiting: Vec<&serde_json::Value> =
        listed["tombstones"].as_array().unwrap().iter().filter(|t| t["patient"] == doomed.as_str()).collect();
    assert_eq!(waiting[0]["step"], "waiting-sites", "B and C have not seen the delete yet");
    assert_eq!(waiting[0]["waiting_for"].as_array().unwrap().len(), 2);
    let human = String::from_utf8(cli(&a).arg("tombstones").output().unwrap().stdout).unwrap();
    assert!(human.contains("waiting for"), "{human}");

    for db in [&b, &a, &b] {
        sync_ok(db);
    }
    // A month passes: the retention (7 days) and C's dormancy (30 days).
    let purged = month_passes_and_a_and_b_purge(&a, &b);
    assert!(purged >= 31, "A and B purged while C was dormant ({purged})");
    assert!(!patient_file(&family.folder(), &doomed).exists(), "the purged patient's file is gone");
    let after = tombstones(&a);
    assert!(after["tombstones"].as_array().unwrap().iter().all(|t| t["patient"] != doomed.as_str()));
    assert_eq!(after["purged"].as_array().unwrap().len(), 31);
    assert!(
        String::from_utf8(cli(&a).arg("tombstones").output().unwrap().stdout).unwrap().contains("purged")
    );

    // C returns: the deleted patient stays deleted there, its edit travels.
    let report = sync_ok(&c);
    assert!(report["counts"]["purged_elsewhere"].as_u64().unwrap() >= 31, "{report:#}");
    assert_eq!(rows_of_patient(&c, &doomed), 0);
    for db in [&a, &b, &c, &a, &b] {
        sync_ok(db);
    }
    for db in [&a, &b, &c] {
        assert_eq!(rows_of_patient(db, &doomed), 0, "{}", db.display());
        assert_eq!(patient_field(db, &keep, "email").as_deref(), Some("edited while away"));
    }
    assert_eq!(dump(&a), dump(&b));
    assert_eq!(dump(&a), dump(&c));

    // A stale copy of the purged patient's file dropped back changes nothing.
    fs::write(patient_file(&family.folder(), &doomed), &stale).unwrap();
    for db in [&a, &b, &c] {
        let (code, report) = sync_with(db, &["--full-scan"]);
        assert_eq!(code, 0, "{report:#}");
    }
    for db in [&a, &b, &c] {
        assert_eq!(rows_of_patient(db, &doomed), 0, "not resurrected at {}", db.display());
    }
}

#[test]
fn an_edit_made_while_away_to_a_row_purged_meanwhile_loses_to_the_delete_and_is_kept_for_review() {
    let (family, a, b) = two_sites();
    let c = family.init("c");
    let conn = app(&a);
    let doomed = add_patient(&conn, 1, 2);
    add_patient(&conn, 2, 0);
    for db in [&a, &b, &c] {
        sync_ok(db);
    }
    let appt: String = conn
        .query_row("SELECT id FROM appointments WHERE patient_id = ?1 ORDER BY id LIMIT 1", [&doomed], |r| {
            r.get(0)
        })
        .unwrap();
    conn.execute("DELETE FROM patients WHERE id = ?1", [&doomed]).unwrap();
    for db in [&a, &b, &a, &b] {
        sync_ok(db);
    }
    // A month passes: the retention (7 days) and C's dormancy (30 days).
    days_pass(31);
    // While away, after the delete, C reschedules one of the appointments.
    app(&c)
        .execute("UPDATE appointments SET status = 'rescheduled while away' WHERE id = ?1", [&appt])
        .unwrap();
    for db in [&a, &b, &a, &b] {
        sync_ok(db);
    }
    assert!(!patient_file(&family.folder(), &doomed).exists(), "purged");
    for db in [&c, &a, &b, &c, &a, &b] {
        sync_ok(db);
    }
    for db in [&a, &b, &c] {
        assert_eq!(rows_of_patient(db, &doomed), 0, "the delete wins at {}", db.display());
    }
    assert_eq!(dump(&a), dump(&b));
    assert_eq!(dump(&a), dump(&c));
    // C, which made the edit, keeps it for a person to see.
    let records: serde_json::Value = json_of(&c, &["conflicts"]);
    let records = records.as_array().unwrap();
    assert!(
        records.iter().any(|r| r["kind"] == "deleted" && r["lost_value"] == "rescheduled while away"),
        "{records:?}"
    );
    let id =
        records.iter().find(|r| r["lost_value"] == "rescheduled while away").unwrap()["id"].as_i64().unwrap();
    let refused =
        cli(&c).args(["conflicts", "resolve", &id.to_string(), "--keep", "loser"]).output().unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("purged"));
    cli(&c).args(["conflicts", "resolve", &id.to_string(), "--keep", "winner"]).assert().success();
}

#[test]
fn nothing_is_purged_while_a_site_with_a_change_log_has_no_site_file_here() {
    let (family, a, b) = two_sites();
    let c = family.init("c");
    let doomed = add_patient(&app(&a), 1, 1);
    // C has written to the family: it has a change-log.
    add_patient(&app(&c), 2, 0);
    for db in [&a, &b, &c] {
        sync_ok(db);
    }
    app(&a).execute("DELETE FROM patients WHERE id = ?1", [&doomed]).unwrap();
    sync_ok(&a);
    sync_ok(&b);
    // C's site file has not reached A's folder (its change-log has).
    let c_site = json_of(&c, &["status"])["site"].as_str().unwrap().to_owned();
    fs::remove_file(family.folder().join("sites").join(format!("{c_site}.xml"))).unwrap();
    // The retention passes; C is not dormant.
    days_pass(8);
    for _ in 0..3 {
        assert_eq!(sync_ok(&a)["counts"]["tombstones_purged"], 0);
    }
    let listed = tombstones(&a);
    let waiting = &listed["tombstones"].as_array().unwrap()[0];
    assert_eq!(waiting["step"], "waiting-sites", "{listed:#}");
    assert!(waiting["waiting_for"].to_string().contains("has not arrived"), "{listed:#}");
}

#[test]
fn a_site_file_that_cannot_be_read_holds_back_the_purge_and_tombstones_says_so() {
    let (family, a, b, doomed) = two_sites_sharing_a_patient(1);
    app(&a).execute("DELETE FROM patients WHERE id = ?1", [&doomed]).unwrap();
    sync_ok(&a);
    sync_ok(&b);
    // A third site's file, damaged on its way (that site has no change-log
    // here yet): what it has applied is unknown.
    let damaged = "sites/77777777777777777777777777777777.xml";
    fs::write(family.folder().join(damaged), b"<?xml version=\"1.0\"?>\n<site format=\"1\"").unwrap();
    days_pass(8);
    for _ in 0..2 {
        let (code, report) = sync_with(&a, &[]);
        assert_eq!((code, &report["counts"]["tombstones_purged"]), (3, &serde_json::json!(0)), "{report:#}");
        assert!(
            events_of(&report, "site-file").iter().any(|e| e["path"] == damaged),
            "the run names the file: {report:#}"
        );
    }
    let listed = tombstones(&a);
    let steps: Vec<&serde_json::Value> = listed["tombstones"].as_array().unwrap().iter().collect();
    assert!(!steps.is_empty() && steps.iter().all(|t| t["step"] == "waiting-sites"), "{listed:#}");
    assert!(steps[0]["waiting_for"].to_string().contains(damaged), "{listed:#}");
    // Once the file is readable again (here: gone), the purge goes ahead.
    fs::remove_file(family.folder().join(damaged)).unwrap();
    assert!(tombstones(&a)["tombstones"].as_array().unwrap().iter().all(|t| t["step"] == "purgeable"));
    assert!(sync_ok(&a)["counts"]["tombstones_purged"].as_u64().unwrap() > 0);
}

#[test]
fn a_file_brought_back_by_a_site_that_edited_a_purged_patient_offline_is_told_the_deletion() {
    let (family, a, b) = two_sites();
    let c = family.init("c");
    let conn = app(&a);
    let doomed = add_patient(&conn, 1, 2);
    let keep = add_patient(&conn, 2, 1);
    for db in [&a, &b, &c] {
        sync_ok(db);
    }
    // C goes offline: its cloud client stops, so it works on its own copy
    // of the folder from now on.
    let offline = family.dir.path().join("offline-c");
    copy_tree(&family.folder(), &offline);
    set(&c, &[&format!("folder={}", offline.display())]);

    conn.execute("DELETE FROM patients WHERE id = ?1", [&doomed]).unwrap();
    for db in [&a, &b, &a, &b] {
        sync_ok(db);
    }
    let purged = month_passes_and_a_and_b_purge(&a, &b);
    assert!(purged >= 7, "A and B purged the patient while C was away ({purged})");
    let file = patient_file(&family.folder(), &doomed);
    assert!(!file.exists());

    // Offline, C edits the patient; its run writes the patient's file and
    // its change-log into its own copy of the folder.
    app(&c).execute("UPDATE patients SET phone = 'typed at C while away' WHERE id = ?1", [&doomed]).unwrap();
    sync_ok(&c);
    // C reconnects: its edited file wins over the deletion (as Syncthing
    // does), and its log and site file arrive too.
    let c_site = json_of(&c, &["status"])["site"].as_str().unwrap().to_owned();
    fs::copy(patient_file(&offline, &doomed), &file).unwrap();
    copy_tree(&offline.join("log").join(&c_site), &family.folder().join("log").join(&c_site));
    fs::copy(
        offline.join("sites").join(format!("{c_site}.xml")),
        family.folder().join("sites").join(format!("{c_site}.xml")),
    )
    .unwrap();
    set(&c, &[&format!("folder={}", family.folder().display())]);

    // A notices, says so, and writes the deletion into the file.
    let report = sync_ok(&a);
    let said = events_of(&report, "purge");
    assert!(
        said.iter().any(|e| e["message"].as_str().unwrap().contains("deleted and purged here")),
        "{report:#}"
    );
    assert_eq!(rows_of_patient(&a, &doomed), 0, "nothing comes back at A");
    // C deletes the patient too, and keeps its edit for review.
    for db in [&c, &b, &a, &c] {
        let (code, report) = sync(db);
        assert!(code == 0 || code == 3, "{report:#}");
    }
    for db in [&a, &b, &c] {
        assert_eq!(rows_of_patient(db, &doomed), 0, "the delete wins at {}", db.display());
    }
    assert_eq!(dump(&a), dump(&c));
    assert_eq!(dump(&b), dump(&c));
    let records = json_of(&c, &["conflicts"]);
    assert!(
        records
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["kind"] == "deleted" && r["lost_value"] == "typed at C while away"),
        "{records:#}"
    );
    assert!(has_patient(&c, &keep));
    // The folder comes to rest: nobody rewrites the file any more.
    for db in [&a, &b, &c] {
        let report = sync_ok(db);
        assert_eq!(report["counts"]["files_written"], 0, "{} : {report:#}", db.display());
    }
}

#[test]
fn a_returning_site_whose_client_has_not_downloaded_every_file_drops_only_what_was_purged() {
    let (family, a, b) = two_sites();
    let c = family.init("c");
    let conn = app(&a);
    let doomed = add_patient(&conn, 1, 2);
    let kept: Vec<String> = (2..6).map(|n| add_patient(&conn, n, 1)).collect();
    for db in [&a, &b, &c] {
        sync_ok(db);
    }
    // C goes away; A deletes a patient; a month later A and B purge it.
    conn.execute("DELETE FROM patients WHERE id = ?1", [&doomed]).unwrap();
    for db in [&a, &b, &a, &b] {
        sync_ok(db);
    }
    month_passes_and_a_and_b_purge(&a, &b);
    assert!(!patient_file(&family.folder(), &doomed).exists(), "purged");
    // C comes back, but its cloud client has not yet brought down the
    // files of two patients the others kept.
    let parked = family.dir.path().join("not-downloaded");
    fs::create_dir_all(&parked).unwrap();
    for id in &kept[..2] {
        fs::rename(patient_file(&family.folder(), id), parked.join(clinicsync::model::patient_file_name(id)))
            .unwrap();
    }
    let report = sync_ok(&c);
    assert_eq!(report["counts"]["full_scan"], true, "{report:#}");
    assert_eq!(rows_of_patient(&c, &doomed), 0, "what was purged goes");
    for id in &kept {
        assert!(has_patient(&c, id), "{id} is kept: its file has not arrived, it was not deleted");
    }
    // The files arrive; every site agrees.
    for id in &kept[..2] {
        fs::rename(parked.join(clinicsync::model::patient_file_name(id)), patient_file(&family.folder(), id))
            .unwrap();
    }
    for db in [&c, &a, &b, &c] {
        sync_ok(db);
    }
    assert_eq!(dump(&a), dump(&c));
    assert_eq!(dump(&b), dump(&c));
    assert_eq!(dump(&c)[0].1.len(), 4);
}

#[test]
fn an_edit_made_away_before_the_delete_it_never_reached_is_kept_for_review_after_the_purge() {
    let (family, a, b) = two_sites();
    let c = family.init("c");
    let conn = app(&a);
    let doomed = add_patient(&conn, 1, 1);
    add_patient(&conn, 2, 0);
    for db in [&a, &b, &c] {
        sync_ok(db);
    }
    // C, away, edits first (its edit never reaches the others); then A
    // deletes the patient, and a month later A and B purge it.
    app(&c)
        .execute("UPDATE patients SET phone = 'typed at C before the delete' WHERE id = ?1", [&doomed])
        .unwrap();
    conn.execute("DELETE FROM patients WHERE id = ?1", [&doomed]).unwrap();
    for db in [&a, &b, &a, &b] {
        sync_ok(db);
    }
    month_passes_and_a_and_b_purge(&a, &b);
    assert!(!patient_file(&family.folder(), &doomed).exists(), "purged");
    for db in [&c, &a, &b, &c] {
        let (code, report) = sync(db);
        assert!(code == 0 || code == 3, "{report:#}");
    }
    assert_eq!(rows_of_patient(&c, &doomed), 0, "the delete wins");
    let records = json_of(&c, &["conflicts"]);
    assert!(
        records
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["kind"] == "deleted" && r["lost_value"] == "typed at C before the delete"),
        "the edit the delete never saw is kept at C: {records:#}"
    );
}

#[test]
fn keeping_held_deletions_does_not_bring_back_a_row_this_site_deleted_meanwhile() {
    let (_family, a, b) = two_sites();
    let conn = app(&a);
    let ids: Vec<String> = (0..40).map(|n| add_patient(&conn, n, 0)).collect();
    sync_ok(&a);
    sync_ok(&b);
    for id in &ids[..30] {
        conn.execute("DELETE FROM patients WHERE id = ?1", [id]).unwrap();
    }
    sync_ok(&a);
    assert_eq!(sync(&b).0, 3, "held at B");
    // At B, someone deletes one of the held patients by hand: B agrees.
    app(&b).execute("DELETE FROM patients WHERE id = ?1", [&ids[0]]).unwrap();
    let (code, report) = sync_with(&b, &["--keep-deleted"]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["counts"]["rows_kept"], 29, "{report:#}");
    assert!(!has_patient(&b, &ids[0]), "not brought back");
    assert!(has_patient(&b, &ids[1]));
    sync_ok(&a);
    assert!(!has_patient(&a, &ids[0]) && has_patient(&a, &ids[1]));
}

/// Three sites with four patients: C is away (and edits the first) while
/// A deletes the first three and A and B purge them; C has not synced
/// since.
fn c_away_while_a_and_b_purge_what_it_edited() -> (Family, PathBuf, PathBuf, PathBuf, Vec<String>) {
    let (family, a, b) = two_sites();
    let c = family.init("c");
    let conn = app(&a);
    let ids: Vec<String> = (0..4).map(|n| add_patient(&conn, n, 1)).collect();
    for db in [&a, &b, &c] {
        sync_ok(db);
    }
    cli(&c).args(["settings", "mass_delete_min_patients=2"]).assert().success();
    app(&c).execute("UPDATE patients SET email = 'edited while away' WHERE id = ?1", [&ids[0]]).unwrap();
    for id in &ids[..3] {
        conn.execute("DELETE FROM patients WHERE id = ?1", [id]).unwrap();
    }
    for db in [&a, &b, &a] {
        sync_ok(db);
    }
    assert!(month_passes_and_a_and_b_purge(&a, &b) >= 9);
    (family, a, b, c, ids)
}

#[test]
fn a_returning_site_that_keeps_what_was_purged_while_it_was_away_sends_it_back_to_everyone() {
    let (_family, a, b, c, ids) = c_away_while_a_and_b_purge_what_it_edited();

    // C returns: the guard holds the three; the person keeps them.
    let (code, report) = sync(&c);
    assert_eq!((code, report["outcome"].as_str()), (3, Some("partial")), "{report:#}");
    assert_eq!(json_of(&c, &["status"])["held_deletes"]["patients"], 3);
    assert!(
        !json_of(&c, &["conflicts"]).as_array().unwrap().is_empty(),
        "the edit lost to the purge, for now"
    );
    let (code, report) = sync_with(&c, &["--keep-deleted"]);
    assert_eq!(code, 0, "{report:#}");
    let kept: Vec<_> = events_of(&report, "keep-deleted");
    assert!(kept.iter().any(|e| e["message"].as_str().unwrap().contains("kept 12 rows")), "{report:#}");
    for db in [&a, &b, &c, &a, &b] {
        sync_ok(db);
    }
    for db in [&a, &b, &c] {
        for id in &ids {
            assert_eq!(rows_of_patient(db, id), 4, "{id} at {}", db.display());
        }
    }
    assert_eq!(dump(&a), dump(&c), "nothing shown at C alone");
    assert_eq!(dump(&a), dump(&b));
    assert_eq!(patient_field(&a, &ids[0], "email").as_deref(), Some("edited while away"));
    assert!(json_of(&c, &["conflicts"]).as_array().unwrap().is_empty(), "kept with the row: settled");
}

/// Open conflict records as (table, row, field, stamp of the value kept
/// for review).
fn open_records(db: &Path) -> BTreeSet<(String, String, String, String)> {
    json_of(db, &["conflicts"])
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
            (s("table"), s("pk"), s("column"), s("lost_hlc"))
        })
        .collect()
}

#[test]
fn a_returning_site_that_keeps_purged_rows_leaves_the_same_records_open_as_everyone() {
    let (_family, a, b, c, ids) = c_away_while_a_and_b_purge_what_it_edited();
    // C returns and writes its files (the deletions held); A reads the
    // folder before C keeps the rows.
    assert_eq!(sync(&c).0, 3);
    sync(&a);
    let (code, report) = sync_with(&c, &["--keep-deleted"]);
    assert_eq!(code, 0, "{report:#}");
    for db in [&a, &b, &c, &a, &b, &c] {
        sync(db);
    }
    assert_eq!(dump(&a), dump(&c));
    assert_eq!(patient_field(&c, &ids[0], "email").as_deref(), Some("edited while away"));
    // Every site keeps the same records open: the same versions are
    // concurrent everywhere, and none is settled at one site alone.
    assert_eq!(open_records(&c), open_records(&a), "C and A");
    assert_eq!(open_records(&b), open_records(&a), "B and A");
}

#[test]
fn a_missing_file_of_a_patient_known_here_only_as_deleted_is_not_written_again() {
    let (family, a, b) = two_sites();
    let conn = app(&a);
    let gone = add_patient(&conn, 1, 1);
    let kept = add_patient(&conn, 2, 1);
    sync_ok(&a);
    sync_ok(&b);
    conn.execute("DELETE FROM patients WHERE id = ?1", [&gone]).unwrap();
    sync_ok(&a);
    sync_ok(&b);
    // Its file goes (a site that purged it removes it; here, by hand), and
    // so does the file of a patient still shown.
    fs::remove_file(patient_file(&family.folder(), &gone)).unwrap();
    fs::remove_file(patient_file(&family.folder(), &kept)).unwrap();
    for db in [&a, &b] {
        let (code, report) = sync_with(db, &["--full-scan"]);
        assert_eq!(code, 0, "{report:#}");
    }
    assert!(!patient_file(&family.folder(), &gone).exists(), "only deletions: nothing to bring back");
    assert!(patient_file(&family.folder(), &kept).exists(), "a patient still shown is written again");
    assert_eq!(dump(&a), dump(&b));
}
