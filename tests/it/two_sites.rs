//! Two (and three) sites on one folder: the acceptance scenarios of the core
//! replication issue, run through the CLI as a process.

use rusqlite::params;

use crate::support::*;

#[test]
fn fifty_patients_reach_the_other_site_and_edits_on_both_sides_converge() {
    let (_family, a, b) = two_sites();
    let conn_a = app(&a);
    let ids: Vec<String> = (0..50).map(|n| add_patient(&conn_a, n, 3)).collect();
    let report = sync_ok(&a);
    assert_eq!(report["counts"]["exported_rows"], 50 + 50 * 9);
    assert_eq!(report["counts"]["files_written"], 50);
    sync_ok(&b);
    assert_eq!(dump(&a), dump(&b));
    assert_eq!(dump(&b)[0].1.len(), 50, "patients at B");

    let conn_b = app(&b);
    for id in &ids[..10] {
        conn_a.execute("UPDATE patients SET phone = 'A-' || phone WHERE id = ?1", [id]).unwrap();
    }
    for id in &ids[10..20] {
        conn_b.execute("UPDATE patients SET email = 'b-' || email WHERE id = ?1", [id]).unwrap();
        conn_b.execute("UPDATE appointments SET status = 'done' WHERE patient_id = ?1", [id]).unwrap();
    }
    sync_ok(&a);
    sync_ok(&b);
    sync_ok(&a);
    assert_eq!(dump(&a), dump(&b));
    assert_eq!(patient_field(&b, &ids[0], "phone").unwrap(), "A-+1 555 0000");
    assert_eq!(patient_field(&a, &ids[15], "email").unwrap(), "b-p15@example.org");
    // Nothing to do any more: a further round changes nothing.
    let again = sync_ok(&b);
    assert_eq!(again["counts"]["files_written"], 0);
    assert_eq!(again["counts"]["rows_applied"], 0);
}

#[test]
fn concurrent_edits_of_different_fields_both_survive_in_either_order() {
    for a_first in [true, false] {
        let (_family, a, b, id) = two_sites_sharing_a_patient(1);
        app(&a).execute("UPDATE patients SET phone = 'phone from A' WHERE id = ?1", [&id]).unwrap();
        app(&b).execute("UPDATE patients SET email = 'email from B' WHERE id = ?1", [&id]).unwrap();
        let (first, second) = if a_first { (&a, &b) } else { (&b, &a) };
        sync_ok(first);
        sync_ok(second);
        sync_ok(first);
        for db in [&a, &b] {
            assert_eq!(patient_field(db, &id, "phone").unwrap(), "phone from A", "a_first={a_first}");
            assert_eq!(patient_field(db, &id, "email").unwrap(), "email from B", "a_first={a_first}");
        }
        assert_eq!(dump(&a), dump(&b));
        let status: serde_json::Value = json_of(&a, &["status"]);
        assert_eq!(status["open_conflicts"], 0, "different fields are not a conflict");
    }
}

#[test]
fn concurrent_edits_of_one_field_converge_to_the_later_stamp_and_both_sites_keep_the_other() {
    let (_family, a, b, id) = two_sites_sharing_a_patient(0);
    app(&a).execute("UPDATE patients SET phone = 'typed at A' WHERE id = ?1", [&id]).unwrap();
    // B's edit is stamped later (B exports after A), so it wins.
    sync_ok(&a);
    app(&b).execute("UPDATE patients SET phone = 'typed at B' WHERE id = ?1", [&id]).unwrap();
    sync_ok(&b);
    sync_ok(&a);
    for db in [&a, &b] {
        assert_eq!(patient_field(db, &id, "phone").unwrap(), "typed at B");
        let status: serde_json::Value = json_of(db, &["status"]);
        assert_eq!(status["open_conflicts"], 1, "{}", db.display());
        let conflicts: serde_json::Value = json_of(db, &["conflicts"]);
        assert_eq!(conflicts[0]["lost_value"], "typed at A");
        assert_eq!(conflicts[0]["kept_value"], "typed at B");
        assert_eq!(conflicts[0]["column"], "phone");
    }
    let text = cli(&a).arg("status").output().unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains("Conflicts: 1 open"));
}

fn last_edit_ms(db: &std::path::Path) -> i64 {
    app(db).query_row("SELECT max(at_ms) FROM _cs_pending", [], |r| r.get(0)).unwrap()
}

#[test]
fn the_later_edit_wins_even_when_the_earlier_one_syncs_last() {
    let (_family, a, b, id) = two_sites_sharing_a_patient(0);
    // A's receptionist types first; B's a moment later. B syncs first, and
    // A (a laptop, say) hours later: the time of the typing decides.
    app(&a).execute("UPDATE patients SET phone = 'typed first at A' WHERE id = ?1", [&id]).unwrap();
    app(&b).execute("UPDATE patients SET phone = 'typed later at B' WHERE id = ?1", [&id]).unwrap();
    // Typed in the same millisecond or not, A's was first: the times the
    // triggers recorded say so.
    let typed_at_b = last_edit_ms(&b);
    app(&a).execute("UPDATE _cs_pending SET at_ms = min(at_ms, ?1)", [typed_at_b - 1]).unwrap();
    assert!(typed_at_b > last_edit_ms(&a));
    sync_ok(&b);
    sync_ok(&a);
    sync_ok(&b);
    for db in [&a, &b] {
        assert_eq!(patient_field(db, &id, "phone").unwrap(), "typed later at B", "{}", db.display());
        let conflicts: serde_json::Value = json_of(db, &["conflicts"]);
        assert_eq!(conflicts[0]["lost_value"], "typed first at A", "kept for review at {}", db.display());
    }
    // A later edit at A, made with both values in view, settles it (A's
    // clock has seen B's stamp, so it stamps after it).
    app(&a).execute("UPDATE patients SET phone = 'settled at A' WHERE id = ?1", [&id]).unwrap();
    sync_ok(&a);
    sync_ok(&b);
    for db in [&a, &b] {
        assert_eq!(patient_field(db, &id, "phone").unwrap(), "settled at A");
        assert_eq!(json_of(db, &["status"])["open_conflicts"], 0);
    }
}

#[test]
fn a_third_site_learns_of_a_conflict_it_never_took_part_in() {
    let (family, a, b) = two_sites();
    let c = family.init("c");
    let id = add_patient(&app(&a), 1, 0);
    sync_ok(&a);
    sync_ok(&b);
    app(&a).execute("UPDATE patients SET given_name = 'Ann' WHERE id = ?1", [&id]).unwrap();
    app(&b).execute("UPDATE patients SET given_name = 'Anne' WHERE id = ?1", [&id]).unwrap();
    sync_ok(&a);
    sync_ok(&b);
    sync_ok(&c);
    assert_eq!(dump(&b), dump(&c));
    assert_eq!(clinicsync::db::Db::open(&c).unwrap().open_conflict_count().unwrap(), 1);
}

#[test]
fn a_patient_with_hundreds_of_child_rows_replicates_whole() {
    let (_family, a, b) = two_sites();
    add_patient(&app(&a), 7, 200);
    sync_ok(&a);
    sync_ok(&b);
    let at_b = dump(&b);
    assert_eq!(at_b[1].1.len(), 200, "appointments");
    assert_eq!(at_b[2].1.len(), 200, "clinical notes");
    assert_eq!(dump(&a), at_b);
}

#[test]
fn rows_that_move_between_patients_leave_the_old_file_and_join_the_new() {
    let (family, a, b) = two_sites();
    let conn = app(&a);
    let p1 = add_patient(&conn, 1, 1);
    let p2 = add_patient(&conn, 2, 0);
    sync_ok(&a);
    sync_ok(&b);
    let appt = uuid(2, 10_000);
    conn.execute("UPDATE appointments SET patient_id = ?1 WHERE id = ?2", params![p2, appt]).unwrap();
    // Meanwhile B edits the same appointment's notes under its old patient.
    app(&b).execute("UPDATE appointments SET notes = 'bring referral' WHERE id = ?1", [&appt]).unwrap();
    sync_ok(&a);
    sync_ok(&b);
    sync_ok(&a);
    assert_eq!(dump(&a), dump(&b));
    let (owner, notes): (String, String) = app(&b)
        .query_row("SELECT patient_id, notes FROM appointments WHERE id = ?1", [&appt], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((owner.as_str(), notes.as_str()), (p2.as_str(), "bring referral"));
    for db in [&a, &b] {
        let filed_under: String = app(db)
            .query_row("SELECT patient FROM _cs_rows WHERE tbl = 'appointments' AND pk = ?1", [&appt], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(filed_under, p2, "the state files the moved row under its new patient");
    }
    let old_file = std::fs::read_to_string(patient_file(&family.folder(), &p1)).unwrap();
    let new_file = std::fs::read_to_string(patient_file(&family.folder(), &p2)).unwrap();
    assert!(!old_file.contains(&appt), "the moved row is still in the old patient's file");
    assert!(new_file.contains(&appt), "the moved row is missing from the new patient's file");
}

#[test]
fn a_database_with_data_joins_a_family_and_both_sides_merge() {
    let family = Family::new();
    let a = family.init("a");
    add_patient(&app(&a), 1, 2);
    sync_ok(&a);
    // B's app already has its own patients before clinicsync is set up.
    let b = family.db("b");
    let conn_b = new_clinic_db(&b);
    add_patient(&conn_b, 2, 2);
    drop(conn_b);
    cli(&b).args(["init", "--folder"]).arg(family.folder()).assert().success();
    sync_ok(&a);
    assert_eq!(dump(&a), dump(&b));
    assert_eq!(dump(&a)[0].1.len(), 2, "both patients everywhere");
}

#[test]
fn deleting_a_row_deletes_it_at_the_other_site() {
    let (_family, a, b) = two_sites();
    let conn = app(&a);
    let id = add_patient(&conn, 1, 2);
    sync_ok(&a);
    sync_ok(&b);
    conn.execute("DELETE FROM invoices WHERE patient_id = ?1", [&id]).unwrap();
    sync_ok(&a);
    sync_ok(&b);
    let n: i64 = app(&b).query_row("SELECT count(*) FROM invoices", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 0);
    // The same key inserted again comes back everywhere.
    conn.execute(
        "INSERT INTO invoices (id, patient_id, issued_at, amount_cents) VALUES (?1, ?2, '2026-12-01', 5)",
        params![uuid(4, 10_000), id],
    )
    .unwrap();
    sync_ok(&a);
    sync_ok(&b);
    assert_eq!(dump(&a), dump(&b));
    let n: i64 = app(&b).query_row("SELECT count(*) FROM invoices", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 1);
}

/// Two clinics started from copies of one database, then set up
/// clinicsync: the second one's first export finds the shared patient's
/// file already in the folder and joins it instead of writing over it.
#[test]
fn a_first_export_joins_a_patient_file_already_in_the_folder() {
    let family = Family::new();
    let a = family.db("a");
    let b = family.db("b");
    let conn_a = new_clinic_db(&a);
    let shared = add_patient(&conn_a, 1, 1);
    drop(conn_a);
    std::fs::copy(&a, &b).unwrap();
    let conn_b = app(&b);
    conn_b.execute("UPDATE patients SET email = 'b@example.org' WHERE id = ?1", [&shared]).unwrap();
    let own = add_patient(&conn_b, 2, 1);
    drop(conn_b);
    cli(&a).args(["init", "--folder"]).arg(family.folder()).assert().success();
    let file = patient_file(&family.folder(), &shared);
    let site_a = json_of(&a, &["status"])["site"].as_str().unwrap().to_owned();
    cli(&b).args(["init", "--folder"]).arg(family.folder()).assert().success();
    let site_b = json_of(&b, &["status"])["site"].as_str().unwrap().to_owned();
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains(&site_a) && text.contains(&site_b), "the file holds both sites' versions");
    assert!(patient_file(&family.folder(), &own).exists());
    sync_ok(&a);
    assert_eq!(dump(&a), dump(&b));
    // The email was typed differently at the two sites: a conflict at both.
    let open = |db: &std::path::Path| json_of(db, &["status"])["open_conflicts"].as_u64().unwrap();
    assert!(open(&a) >= 1);
    assert_eq!(open(&a), open(&b));
}

/// An app that stores a key as a BLOB (SQLite lets it, even in a text
/// column): that row is not synced, with a warning naming it, and the
/// rest of the export goes on.
#[test]
fn a_row_whose_key_is_stored_as_bytes_is_left_out_with_a_warning() {
    let (_family, a, b) = two_sites();
    let conn = app(&a);
    conn.execute("INSERT INTO patients (id, family_name) VALUES (x'6869', 'Bytes')", []).unwrap();
    let fine = add_patient(&conn, 1, 1);
    let (code, report) = sync(&a);
    assert_eq!(code, 0, "{report:#}");
    let said = serde_json::to_string(&report["events"]).unwrap();
    assert!(said.contains("stored as bytes, not text"), "{said}");
    sync_ok(&b);
    assert!(patient_field(&b, &fine, "family_name").is_some());
    let at_b: i64 = app(&b).query_row("SELECT count(*) FROM patients", [], |r| r.get(0)).unwrap();
    assert_eq!(at_b, 1, "only the patient with a text key travels");
}
