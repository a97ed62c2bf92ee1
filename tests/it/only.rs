//! `clinicsync sync --only TABLE`: one table's changes move both ways, the
//! others wait (here and in the others' logs) and the next full sync
//! carries them; the end state equals a family that only ever ran full
//! syncs, and nothing is applied twice.

use std::path::Path;

use rusqlite::params;

use crate::support::*;

fn set(db: &Path, sql: &str, id: &str, value: &str) {
    app(db).execute(sql, params![value, id]).unwrap();
}

fn value(db: &Path, table: &str, column: &str, id: &str) -> String {
    app(db).query_row(&format!("SELECT {column} FROM {table} WHERE id = ?1"), [id], |r| r.get(0)).unwrap()
}

const APPT: &str = "UPDATE appointments SET status = ?1 WHERE id = ?2";
const NOTE: &str = "UPDATE clinical_notes SET body = ?1 WHERE id = ?2";

/// The same edits at A and B, in one family synced with `--only
/// appointments` where the flag is given and in another synced in full
/// every time; returns the two families' databases.
fn edits(only: bool) -> (Family, std::path::PathBuf, std::path::PathBuf) {
    let (family, a, b) = two_sites();
    for n in 0..3 {
        add_patient(&app(&a), n, 2);
    }
    sync_ok(&a);
    sync_ok(&b);
    let (a1, b1) = (uuid(2, 0), uuid(2, 10_001));
    let (n1, n2) = (uuid(3, 0), uuid(3, 20_000));
    set(&a, APPT, &a1, "arrived");
    set(&a, NOTE, &n1, "typed at A");
    sync_ok(&a);
    set(&b, APPT, &b1, "cancelled");
    set(&b, NOTE, &n2, "typed at B");
    let args: &[&str] = if only { &["--only", "appointments"] } else { &[] };
    for db in [&b, &a] {
        let (code, report) = sync_with(db, args);
        assert_eq!((code, report["outcome"].as_str()), (0, Some("ok")), "{report:#}");
    }
    if only {
        // B has A's appointment, not A's note; B's note is still here only.
        assert_eq!(value(&b, "appointments", "status", &a1), "arrived");
        assert_eq!(value(&b, "clinical_notes", "body", &n1), "note 0\r\n  indented\tline ");
        assert_eq!(value(&a, "appointments", "status", &b1), "cancelled");
        assert_eq!(value(&a, "clinical_notes", "body", &n2), "note 0\r\n  indented\tline ");
    }
    (family, a, b)
}

#[test]
fn one_table_moves_both_ways_and_the_next_full_sync_carries_the_rest_once() {
    let (_only_family, a, b) = edits(true);
    let (_full_family, fa, fb) = edits(false);

    // B says what waits, per table: its note to send, A's note to apply.
    let status = json_of(&b, &["status"]);
    let notes = status["tables"].as_array().unwrap().iter().find(|t| t["table"] == "clinical_notes").unwrap();
    assert_eq!((notes["to_send"].as_u64(), notes["from_others"].as_u64()), (Some(1), Some(1)), "{status:#}");
    assert_eq!(notes["waiting"], true);
    let appts = status["tables"].as_array().unwrap().iter().find(|t| t["table"] == "appointments").unwrap();
    assert_eq!(appts["waiting"], false, "{status:#}");
    let a_site = status["sites"].as_array().unwrap().iter().find(|s| s["this_site"] == false).unwrap();
    assert!(a_site["applied_seq"].as_u64() < a_site["head_seq"].as_u64(), "no watermark moved: {a_site:#}");
    let human = cli(&b).arg("status").output().unwrap();
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(
        human.contains("clinical_notes: 1 changed row here to send, 1 row from other sites to apply"),
        "{human}"
    );
    let log = json_of(&b, &["log", "--last", "1"]);
    let said = log[0]["events"].as_array().unwrap().iter().find(|e| e["kind"] == "tables").unwrap();
    assert!(
        said["message"]
            .as_str()
            .unwrap()
            .contains("synced appointments only; still waiting for a full sync: clinical_notes"),
        "{said:#}"
    );
    assert_eq!(log[0]["run"]["trigger"], "only appointments");

    // The next full sync at B applies A's note once (A's appointment,
    // read again with it, changes nothing) and sends B's note.
    let report = sync_ok(&b);
    assert_eq!(report["counts"]["rows_applied"], 1, "{report:#}");
    assert_eq!(report["counts"]["exported_rows"], 1, "{report:#}");
    sync_ok(&a);
    for db in [&a, &b] {
        let status = json_of(db, &["status"]);
        assert!(status["tables"].as_array().unwrap().iter().all(|t| t["waiting"] == false), "{status:#}");
        assert_eq!(status["open_conflicts"], 0, "{status:#}");
    }
    for db in [&fa, &fb] {
        sync_ok(db);
    }
    assert_eq!(dump(&a), dump(&b));
    assert_eq!(dump(&a), dump(&fa), "the same as a family that only ran full syncs");
    assert_eq!(dump(&fa), dump(&fb));
    assert_eq!(value(&a, "clinical_notes", "body", &uuid(3, 20_000)), "typed at B");
    assert_eq!(value(&b, "clinical_notes", "body", &uuid(3, 0)), "typed at A");
}

#[test]
fn a_table_that_is_not_replicated_is_refused_by_name() {
    let (_family, a, _b) = two_sites();
    let out = cli(&a).args(["sync", "--only", "appointmnets"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("appointmnets is not a table this site replicates; the tables are: "), "{err}");
    assert!(err.contains("appointments"), "{err}");
    assert!(
        json_of(&a, &["log"]).as_array().unwrap().iter().all(|r| r["run"]["trigger"] != "only appointmnets")
    );
}

#[test]
fn the_page_lists_the_tables_waiting_and_syncs_one_with_its_button() {
    let (_family, a, b) = two_sites();
    add_patient(&app(&a), 0, 1);
    sync_ok(&a);
    sync_ok(&b);
    let page = crate::service::Page::open(&b);
    set(&b, APPT, &uuid(2, 0), "arrived");
    set(&b, NOTE, &uuid(3, 0), "typed at B");
    let row = |html: &str, table: &str| {
        let start = html.find(&format!("<td>{table}</td>")).unwrap_or_else(|| panic!("{table}: {html}"));
        html[start..start + html[start..].find("</tr>").unwrap()].to_owned()
    };
    let (_, html) = page.get("/");
    assert!(row(&html, "appointments").contains("1 changed here, not sent yet"), "{html}");
    assert!(
        row(&html, "appointments").contains(r#"class="waiting" data-table="appointments">Sync appointments"#)
    );
    assert!(row(&html, "invoices").contains(r#"<td>none</td>"#), "{html}");

    let (code, location, _) = page.post("/sync-table", &[("table", "appointments")]);
    assert_eq!((code, location.as_str()), (303, "/logs"), "to Latest Logs after the run");
    let latest = json_of(&b, &["log", "--last", "1"]);
    assert_eq!(latest[0]["run"]["trigger"], "only appointments", "{latest:#}");
    assert_eq!(latest[0]["run"]["outcome"], "ok", "{latest:#}");
    let (_, html) = page.get("/");
    assert!(row(&html, "appointments").contains("<td>none</td>"), "{html}");
    assert!(row(&html, "clinical_notes").contains("1 changed here, not sent yet"), "{html}");
    // A: the appointment arrived, the note did not.
    sync_ok(&a);
    assert_eq!(value(&a, "appointments", "status", &uuid(2, 0)), "arrived");
    assert_eq!(value(&a, "clinical_notes", "body", &uuid(3, 0)), "note 0\r\n  indented\tline ");

    assert_eq!(page.post("/sync-table", &[("table", "nosuch")]).0, 400);
    assert_eq!(
        page.post_body("/sync-table", "table=appointments".into()).0,
        403,
        "the CSRF token is required"
    );
}

#[test]
fn a_conflict_a_table_run_found_is_not_found_again_by_the_full_sync() {
    let (_family, a, b) = two_sites();
    add_patient(&app(&a), 0, 1);
    sync_ok(&a);
    sync_ok(&b);
    let appt = uuid(2, 0);
    set(&a, APPT, &appt, "arrived");
    set(&a, NOTE, &uuid(3, 0), "typed at A");
    sync_ok(&a);
    set(&b, APPT, &appt, "cancelled");
    let (code, report) = sync_with(&b, &["--only", "appointments"]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["counts"]["new_conflicts"], 1, "{report:#}");
    let report = sync_ok(&b);
    assert_eq!(report["counts"]["new_conflicts"], 0, "{report:#}");
    assert_eq!(report["counts"]["rows_applied"], 1, "the note only: {report:#}");
    assert_eq!(json_of(&b, &["conflicts"]).as_array().unwrap().len(), 1);
    sync_ok(&a);
    assert_eq!(dump(&a), dump(&b));
}

#[test]
fn a_table_run_never_applies_a_deletion_over_an_edit_of_another_table_not_yet_sent() {
    let (_family, a, b) = two_sites();
    let ids: Vec<String> = (0..3).map(|n| add_patient(&app(&a), n, 1)).collect();
    sync_ok(&a);
    sync_ok(&b);
    // A deletes a patient; B, not knowing, edits its appointment.
    app(&a).execute("DELETE FROM patients WHERE id = ?1", [&ids[0]]).unwrap();
    sync_ok(&a);
    set(&b, APPT, &uuid(2, 0), "arrived");
    // A patients-only run takes the deletion in but does not apply it: the
    // appointment's edit is not stamped yet.
    let (code, report) = sync_with(&b, &["--only", "patients"]);
    assert_eq!(code, 0, "{report:#}");
    let shown: i64 =
        app(&b).query_row("SELECT count(*) FROM patients WHERE id = ?1", [&ids[0]], |r| r.get(0)).unwrap();
    assert_eq!(shown, 1, "its deletion waits, held, for the full sync");
    assert_eq!(value(&b, "appointments", "status", &uuid(2, 0)), "arrived", "still shown with the edit");
    // The full sync stamps the edit, then applies the deletion: the edit
    // the deletion did not see is kept for review.
    sync_ok(&b);
    let records = json_of(&b, &["conflicts"]);
    let records = records.as_array().unwrap();
    assert!(
        records.iter().any(|r| r["kind"] == "deleted" && r["lost_value"] == "arrived"),
        "the edit is kept: {records:#?}"
    );
    sync_ok(&a);
    assert_eq!(dump(&a), dump(&b));
}
