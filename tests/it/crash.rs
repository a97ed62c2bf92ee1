//! A crash between the database commit and the file writes (a fault point
//! aborts the process there), then another sync: converged, nothing lost,
//! nothing applied twice.

use crate::support::*;

fn crash_at(db: &std::path::Path, point: &str) {
    let out = cli(db).env("CLINICSYNC_FAULT", point).args(["sync", "--json"]).output().unwrap();
    assert!(!out.status.success(), "the fault point {point} did not stop the process");
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("fault injected at {point}")));
}

#[test]
fn a_crash_after_the_export_commit_is_finished_by_the_next_run() {
    let family = Family::new();
    let a = family.init("a");
    let b = family.init("b");
    let conn = app(&a);
    let first = add_patient(&conn, 1, 2);
    sync_ok(&a);
    sync_ok(&b);

    conn.execute("UPDATE patients SET phone = 'after crash' WHERE id = ?1", [&first]).unwrap();
    let second = add_patient(&conn, 2, 2);
    crash_at(&a, "after-export-commit");
    // The export is committed but its files were never written.
    assert!(!patient_file(&family.folder(), &second).exists());
    let status: serde_json::Value = json_of(&a, &["status"]);
    assert!(status["pending_changes"].as_u64().unwrap() > 0, "the unwritten export shows as pending");

    let report = sync_ok(&a);
    assert_eq!(report["counts"]["exported_rows"], 0, "nothing is stamped twice");
    assert!(report["counts"]["files_written"].as_u64().unwrap() >= 2);
    sync_ok(&b);
    assert_eq!(dump(&a), dump(&b));
    assert_eq!(patient_field(&b, &first, "phone").unwrap(), "after crash");
    // The run that crashed shows in Latest Logs as interrupted.
    let log = cli(&a).args(["log", "--last", "3"]).output().unwrap();
    assert!(String::from_utf8_lossy(&log.stdout).contains("interrupted"));
    let log_json: serde_json::Value =
        serde_json::from_slice(&cli(&a).args(["log", "--json"]).output().unwrap().stdout).unwrap();
    assert!(log_json.as_array().unwrap().iter().any(|r| r["run"]["outcome"].is_null()));
}

#[test]
fn a_crash_before_the_site_file_is_written_is_harmless() {
    let family = Family::new();
    let a = family.init("a");
    let b = family.init("b");
    add_patient(&app(&a), 1, 1);
    crash_at(&a, "before-site-file");
    // The folder's site file is behind the database: that is allowed (the
    // reverse means a restored backup).
    sync_ok(&a);
    sync_ok(&b);
    assert_eq!(dump(&a), dump(&b));
}
