//! A crash between the database commit and the file writes (a fault point
//! aborts the process there), then another sync: converged, nothing lost,
//! nothing applied twice.

use crate::support::*;

fn crash_at(db: &std::path::Path, point: &str) {
    let out = cli(db).env("CLINICSYNC_FAULT", point).args(["sync", "--json"]).output().unwrap();
    assert!(!out.status.success(), "the fault point {point} did not stop the process");
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("fault injected at {point}")));
}

/// Runs `init` of a database with a fault injected, and expects it to fail.
fn init_failing(family: &Family, db: &std::path::Path, fault: &str) -> std::process::Output {
    let out = cli(db)
        .env("CLINICSYNC_FAULT", fault)
        .args(["init", "--folder"])
        .arg(family.folder())
        .output()
        .unwrap();
    assert!(!out.status.success(), "the fault {fault} did not stop init");
    out
}

#[test]
fn a_crash_after_the_export_commit_is_finished_by_the_next_run() {
    let (family, a, b) = two_sites();
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
    let (_family, a, b) = two_sites();
    add_patient(&app(&a), 1, 1);
    crash_at(&a, "before-site-file");
    // The folder's site file is behind the database: that is allowed (the
    // reverse means a restored backup).
    sync_ok(&a);
    sync_ok(&b);
    assert_eq!(dump(&a), dump(&b));
}

#[test]
fn a_first_export_stopped_halfway_goes_on_from_where_it_stopped() {
    let family = Family::new();
    let a = family.db("a");
    let conn = new_clinic_db(&a);
    // More rows than one step of the first export (5,000 rows).
    let tx = conn.unchecked_transaction().unwrap();
    for n in 0..5_200 {
        tx.execute(
            "INSERT INTO patients (id, family_name) VALUES (?1, ?2)",
            rusqlite::params![uuid(1, n), n],
        )
        .unwrap();
    }
    tx.commit().unwrap();
    init_failing(&family, &a, "first-export-step");
    let status: serde_json::Value = json_of(&a, &["status"]);
    let pending = status["pending_changes"].as_u64().unwrap();
    // Rows the first export has not reached, and those stamped but not yet
    // in the folder.
    assert_eq!(pending, 5_200);

    // The app goes on: a row the first step stamped, one it did not reach,
    // a deletion and an insert beyond where it stopped.
    conn.execute("UPDATE patients SET phone = 'early' WHERE id = ?1", [uuid(1, 0)]).unwrap();
    conn.execute("UPDATE patients SET phone = 'late' WHERE id = ?1", [uuid(1, 5_100)]).unwrap();
    conn.execute("DELETE FROM patients WHERE id = ?1", [uuid(1, 5_150)]).unwrap();
    let added = add_patient(&conn, 9_000, 1);

    let report = sync_ok(&a);
    let exported = report["counts"]["exported_rows"].as_u64().unwrap();
    assert!(exported < 5_000, "the run went on from where the first export stopped ({exported} rows)");
    let stamped: i64 = app(&a).query_row("SELECT sum(rows) FROM _cs_outbox", [], |r| r.get(0)).unwrap();
    // Every row once (the deleted one never), the early edit once more, the
    // new patient and its three child rows.
    assert_eq!(stamped, 5_199 + 1 + 4, "nothing was stamped twice");
    assert_eq!(json_of(&a, &["status"])["pending_changes"], 0);

    let b = family.init("b");
    assert_eq!(dump(&a), dump(&b));
    assert_eq!(patient_field(&b, &uuid(1, 0), "phone").unwrap(), "early");
    assert_eq!(patient_field(&b, &uuid(1, 5_100), "phone").unwrap(), "late");
    let gone: i64 = app(&b)
        .query_row("SELECT count(*) FROM patients WHERE id = ?1", [uuid(1, 5_150)], |r| r.get(0))
        .unwrap();
    assert_eq!(gone, 0);
    assert!(patient_file(&family.folder(), &added).exists());
    assert!(patient_file(&family.folder(), &uuid(1, 5_199)).exists());
}

/// A populated database whose first export stops after writing a
/// segment but before recording it: the next run makes the same bytes
/// again (a segment is never rewritten with different bytes).
#[test]
fn a_first_export_segment_written_but_not_recorded_is_the_same_bytes_next_run() {
    let family = Family::new();
    let a = family.db("a");
    let conn = new_clinic_db(&a);
    for n in 0..30 {
        add_patient(&conn, n, 2);
    }
    init_failing(&family, &a, "after-segment-write");
    let site = json_of(&a, &["status"])["site"].as_str().unwrap().to_owned();
    let segment = family.folder().join(format!("log/{site}/0000000001.xml"));
    let first = std::fs::read(&segment).expect("the segment was written before the crash");
    // The app changes a row in the meantime: it is a later export, not a
    // change to this one.
    conn.execute("UPDATE patients SET phone = 'changed' WHERE id = ?1", [uuid(1, 3)]).unwrap();
    sync_ok(&a);
    assert_eq!(std::fs::read(&segment).unwrap(), first, "the segment's bytes changed");
    let b = family.init("b");
    assert_eq!(dump(&a), dump(&b));
    assert_eq!(patient_field(&b, &uuid(1, 3), "phone").unwrap(), "changed");
}

/// A first export whose change-log cannot be written stops the run there
/// (its segments are made again from the state, which must not change
/// first) and goes on once the folder takes writes again.
#[test]
fn a_first_export_that_cannot_write_its_log_waits_and_imports_nothing() {
    let family = Family::new();
    let a = family.init("a");
    add_patient(&app(&a), 1, 1);
    sync_ok(&a);
    let b = family.db("b");
    let conn = new_clinic_db(&b);
    let own = add_patient(&conn, 2, 1);
    drop(conn);
    let out = init_failing(&family, &b, "fail-write:log/");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("could not write its change-log"), "{said}");
    // Nothing was imported while the first export waits.
    let patients: i64 = app(&b).query_row("SELECT count(*) FROM patients", [], |r| r.get(0)).unwrap();
    assert_eq!(patients, 1, "a's patient was imported before b's first export was written");
    let (code, report) = sync_with(&b, &[]);
    assert_eq!(code, 0, "{report:#}");
    sync_ok(&a);
    assert_eq!(dump(&a), dump(&b));
    assert!(patient_file(&family.folder(), &own).exists());
}

/// Patient files the first export's file stage cannot write (with several
/// chunks of them being written at once) are written by the next run, every
/// one of them.
#[test]
fn a_first_export_whose_patient_files_cannot_be_written_writes_them_next_run() {
    let family = Family::new();
    let a = family.db("a");
    let conn = new_clinic_db(&a);
    // Three chunks of the file stage: more than one in flight when a write fails.
    let ids: Vec<String> = (0..1_100).map(|n| add_patient(&conn, n, 0)).collect();
    drop(conn);
    let out = cli(&a)
        .env("CLINICSYNC_FAULT", "fail-write:patients/")
        .args(["init", "--folder"])
        .arg(family.folder())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("could not write 512 patient files"), "{said}");
    let written =
        |ids: &[String]| ids.iter().filter(|id| patient_file(&family.folder(), id).exists()).count();
    assert_eq!(written(&ids), 0);
    sync_ok(&a);
    assert_eq!(written(&ids), ids.len());
    let b = family.init("b");
    assert_eq!(dump(&a), dump(&b));
}

#[test]
fn an_init_stopped_before_the_folder_was_set_up_is_finished_by_init_run_again() {
    for fault in ["init-before-manifest", "fail-write:clinicsync.xml"] {
        let family = Family::new();
        let a = family.db("a");
        let out = init_failing(&family, &a, fault);
        assert!(!family.folder().join("clinicsync.xml").exists(), "{fault}");
        // Every other command says how to get out.
        let (code, _) = sync(&a);
        assert_eq!(code, 1, "{fault}");
        let said = cli(&a).arg("sync").output().unwrap();
        let said = String::from_utf8_lossy(&said.stderr);
        assert!(
            said.contains("was interrupted") && said.contains("init --folder"),
            "{fault}: {said} ({out:?})"
        );
        // Another folder is refused, naming the one the setup began with.
        let elsewhere = family.dir.path().join("elsewhere");
        let other = cli(&a).args(["init", "--folder"]).arg(&elsewhere).output().unwrap();
        assert_eq!(other.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&other.stderr).contains(&family.folder().display().to_string()));

        let site = {
            let conn = app(&a);
            conn.query_row("SELECT value FROM _cs_meta WHERE key = 'site_id'", [], |r| r.get::<_, String>(0))
                .unwrap()
        };
        let again = cli(&a).args(["init", "--folder"]).arg(family.folder()).arg("--json").output().unwrap();
        assert!(again.status.success(), "{fault}: {}", String::from_utf8_lossy(&again.stderr));
        let report: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
        assert_eq!(report["site"], site.as_str(), "the site it recorded");
        assert!(family.folder().join("clinicsync.xml").exists());
        let id = add_patient(&app(&a), 1, 1);
        sync_ok(&a);
        let b = family.init("b");
        assert!(has_patient(&b, &id), "{fault}: a second site joins the family");
        // Finished: init again is refused as for any database set up.
        assert_eq!(
            cli(&a).args(["init", "--folder"]).arg(family.folder()).output().unwrap().status.code(),
            Some(1)
        );
    }
}

/// A process that has ended: its id names temp files nobody writes any more.
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

#[test]
fn temp_files_a_killed_run_left_beside_the_database_are_removed_by_the_next_run() {
    let family = Family::new();
    let a = family.init("a");
    let staging = family.dir.path().join(".clinicsync-staging");
    let pid = dead_pid();
    for n in 0..30 {
        std::fs::write(staging.join(format!("{pid}-{n}-0.tmp")), b"<patient").unwrap();
    }
    let report = sync_ok(&a);
    let left = events_of(&report, "leftovers");
    assert!(left[0]["message"].as_str().unwrap().contains("removed 30 temp files"), "{left:?}");
    assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0);
}

#[test]
fn temp_files_a_killed_run_left_in_the_folder_are_removed_by_the_next_run() {
    // The database on another volume than the folder: no staging directory
    // can be had, and temp files are made beside their targets.
    let shm = std::path::Path::new("/dev/shm");
    let family = Family::new();
    assert_ne!(
        std::fs::metadata(shm).map(|m| std::os::unix::fs::MetadataExt::dev(&m)).ok(),
        Some(std::os::unix::fs::MetadataExt::dev(&std::fs::metadata(family.dir.path()).unwrap())),
        "this test needs /dev/shm on a volume of its own"
    );
    let dir = tempfile::tempdir_in(shm).unwrap();
    let a = dir.path().join("a.db");
    cli(&a).args(["init", "--folder"]).arg(family.folder()).assert().success();
    let id = add_patient(&app(&a), 1, 1);
    sync_ok(&a);
    let shard = patient_file(&family.folder(), &id).parent().unwrap().to_path_buf();
    let pid = dead_pid();
    let left = [
        shard.join(format!("~$x.xml.{pid}-1.tmp")),
        family.folder().join("sites").join(format!("~$y.xml.{pid}-2.tmp")),
        family.folder().join(format!("~$clinicsync.xml.{pid}-3.tmp")),
    ];
    for path in &left {
        std::fs::write(path, b"half a file").unwrap();
    }
    // Someone's office lock file is not ours and stays.
    let lock = shard.join("~$letter.docx");
    std::fs::write(&lock, b"").unwrap();
    // The run they came from never finished.
    app(&a).execute("INSERT INTO _cs_runs (started_ms, trigger) VALUES (1, 'manual')", []).unwrap();
    let report = sync_ok(&a);
    let said = events_of(&report, "leftovers");
    assert!(said.iter().any(|e| e["message"].as_str().unwrap().contains("removed 3 temp files")), "{said:?}");
    for path in &left {
        assert!(!path.exists(), "{} is removed", path.display());
    }
    assert!(lock.exists());
    // A full scan removes any it meets, whatever the run before did.
    std::fs::write(&left[0], b"half a file").unwrap();
    let report = sync_with(&a, &["--full-scan"]).1;
    assert!(!left[0].exists(), "{report:#}");
}

#[test]
fn a_run_that_never_finished_is_interrupted_unless_a_sync_holds_the_database_now() {
    let (_family, a, _b) = two_sites();
    add_patient(&app(&a), 1, 1);
    crash_at(&a, "after-export-commit");
    let said = |db: &std::path::Path| {
        let out = cli(db).args(["log", "--last", "1"]).output().unwrap();
        String::from_utf8(out.stdout).unwrap().lines().next().unwrap_or_default().to_owned()
    };
    assert!(said(&a).ends_with(" manual interrupted"), "{}", said(&a));
    // Another sync holds the database (as a run in progress does).
    let mut lock = a.as_os_str().to_owned();
    lock.push("-clinicsync.lock");
    let held = std::fs::File::options().write(true).open(&lock).unwrap();
    held.lock().unwrap();
    assert!(said(&a).ends_with(" manual in progress"), "{}", said(&a));
    drop(held);
    assert!(said(&a).ends_with(" manual interrupted"));
}
