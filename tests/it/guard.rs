//! The guard refuses to run where running could do harm, with one sentence
//! that says what to do; and the CLI's exit codes.

use std::fs;

use crate::support::*;

fn fails_with(db: &std::path::Path, env: Option<(&str, &str)>, needle: &str) -> serde_json::Value {
    let mut cmd = cli(db);
    if let Some((k, v)) = env {
        cmd.env(k, v);
    }
    let out = cmd.args(["sync", "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let error = report["error"].as_str().unwrap_or_default();
    assert!(error.contains(needle), "expected {needle:?} in {error:?}");
    report
}

#[test]
fn a_database_copied_to_another_computer_refuses_until_reassigned() {
    let family = Family::new();
    let a = family.init("a");
    let id = add_patient(&app(&a), 1, 1);
    sync_ok(&a);
    let copy = family.db("copy");
    fs::copy(&a, &copy).unwrap();
    let other = Some(("CLINICSYNC_MACHINE_ID", "another-computer"));
    let report = fails_with(&copy, other, "clinicsync reassign");
    assert_eq!(report["outcome"], "failed");
    cli(&copy).env("CLINICSYNC_MACHINE_ID", "another-computer").arg("reassign").assert().success();
    let out = cli(&copy)
        .env("CLINICSYNC_MACHINE_ID", "another-computer")
        .args(["sync", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    // The copy now has a site of its own: its edits reach the original.
    app(&copy).execute("UPDATE patients SET phone = 'from the copy' WHERE id = ?1", [&id]).unwrap();
    cli(&copy).env("CLINICSYNC_MACHINE_ID", "another-computer").arg("sync").assert().success();
    sync_ok(&a);
    assert_eq!(patient_field(&a, &id, "phone").unwrap(), "from the copy");
    let status: serde_json::Value = json_of(&a, &["status"]);
    assert_eq!(status["sites"].as_array().unwrap().len(), 2);
}

#[test]
fn a_database_restored_from_an_older_backup_refuses() {
    let family = Family::new();
    let a = family.init("a");
    let conn = app(&a);
    add_patient(&conn, 1, 0);
    sync_ok(&a);
    drop(conn);
    let backup = family.dir.path().join("backup.db");
    fs::copy(&a, &backup).unwrap();
    add_patient(&app(&a), 2, 0);
    sync_ok(&a);
    fs::copy(&backup, &a).unwrap();
    fails_with(&a, None, "restored from an older backup");
}

#[test]
fn a_database_of_an_older_state_format_is_taken_up_and_a_newer_one_refused() {
    let family = Family::new();
    let a = family.init("a");
    let meta = |value: &str| {
        rusqlite::Connection::open(&a)
            .unwrap()
            .execute("UPDATE _cs_meta SET value = ?1 WHERE key = 'state_format'", [value])
            .unwrap();
    };
    let format = || -> String {
        rusqlite::Connection::open(&a)
            .unwrap()
            .query_row("SELECT value FROM _cs_meta WHERE key = 'state_format'", [], |r| r.get(0))
            .unwrap()
    };
    // Set up by a build of format 1 or 2: opened, it is recorded as format
    // 3, which builds that cannot read its row layouts or do not keep its
    // patients' digests refuse; the digests' table is made, and the indexes
    // added since.
    let added = "'_cs_digests', '_cs_outbox_undone', '_cs_outbox_unwritten', '_cs_runs_ok'";
    for older in ["1", "2"] {
        meta(older);
        rusqlite::Connection::open(&a)
            .unwrap()
            .execute_batch(
                "DROP TABLE IF EXISTS _cs_digests; DROP INDEX _cs_outbox_undone;
                 DROP INDEX _cs_outbox_unwritten; DROP INDEX _cs_runs_ok",
            )
            .unwrap();
        sync_ok(&a);
        assert_eq!(format(), clinicsync::db::STATE_FORMAT.to_string());
        let made: i64 = rusqlite::Connection::open(&a)
            .unwrap()
            .query_row(&format!("SELECT count(*) FROM sqlite_master WHERE name IN ({added})"), [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(made, 4, "from format {older}");
    }
    assert_eq!(clinicsync::db::STATE_FORMAT, 3);
    meta("4");
    fails_with(
        &a,
        None,
        "set up by a newer clinicsync (state format 4, this one knows 3); upgrade clinicsync",
    );
    assert_eq!(format(), "4", "a newer database is left as it is");
}

#[test]
fn an_unreachable_folder_changes_nothing_and_the_next_run_goes_on() {
    let family = Family::new();
    let a = family.init("a");
    add_patient(&app(&a), 1, 0);
    let away = family.dir.path().join("unmounted");
    fs::rename(family.folder(), &away).unwrap();
    fails_with(&a, None, "not reachable");
    let status: serde_json::Value = json_of(&a, &["status"]);
    assert_eq!(status["online"], false);
    assert!(status["pending_changes"].as_u64().unwrap() > 0);
    fs::rename(&away, family.folder()).unwrap();
    sync_ok(&a);
}

#[test]
fn a_copy_of_our_own_site_file_means_our_id_is_on_two_computers() {
    let family = Family::new();
    let a = family.init("a");
    let status: serde_json::Value = json_of(&a, &["status"]);
    let site = status["site"].as_str().unwrap().to_owned();
    let sites = family.folder().join("sites");
    fs::copy(
        sites.join(format!("{site}.xml")),
        sites.join(format!("{site}.sync-conflict-20240131-142233-7QKZ3XN.xml")),
    )
    .unwrap();
    fails_with(&a, None, "two computers");
}

#[test]
fn a_second_sync_of_the_same_database_waits_its_turn() {
    let family = Family::new();
    let a = family.init("a");
    let mut name = a.file_name().unwrap().to_os_string();
    name.push("-clinicsync.lock");
    let lock = fs::File::options().write(true).open(a.with_file_name(name)).unwrap();
    lock.lock().unwrap();
    // The second sync says it waits, and waits while the first holds the lock.
    let mut waiting = std::process::Command::new(assert_cmd::cargo::cargo_bin("clinicsync"))
        .arg("--db")
        .arg(&a)
        .args(["sync", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for it to say so (the event), then it is blocked on the lock.
    let mut stderr = std::io::BufReader::new(waiting.stderr.take().unwrap());
    let mut said = String::new();
    while !said.contains("another sync of this database is running; waiting") {
        let mut line = String::new();
        let n = std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
        assert!(n > 0, "the second sync ended without saying it waits: {said}");
        said.push_str(&line);
    }
    assert!(waiting.try_wait().unwrap().is_none(), "the second sync ran while the first held the lock");
    lock.unlock().unwrap();
    let out = waiting.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{said}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["outcome"], "ok");
    // Commands that must not wait still refuse while a sync runs.
    lock.lock().unwrap();
    let out = cli(&a).arg("reassign").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already syncing"));
    lock.unlock().unwrap();
}

#[test]
fn init_refuses_a_folder_that_holds_something_else_and_a_database_set_up_twice() {
    let family = Family::new();
    let busy = family.dir.path().join("holiday-photos");
    fs::create_dir_all(&busy).unwrap();
    fs::write(busy.join("beach.jpg"), b"jpeg").unwrap();
    let db = family.db("a");
    let out = cli(&db).args(["init", "--folder"]).arg(&busy).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
    assert!(!db.exists() || clinicsync::db::Db::open(&db).is_err(), "nothing was set up");

    let a = family.init("a");
    let out = cli(&a).args(["init", "--folder"]).arg(family.folder()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already set up"));
}

#[test]
fn exit_codes_and_json_errors() {
    let family = Family::new();
    let missing = family.db("never-initialised");
    let out = cli(&missing).args(["sync", "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["ok"], false);
    assert!(doc["error"].as_str().unwrap().contains("clinicsync init"));
    // Usage errors exit 2.
    let out = cli(&missing).args(["sync", "--no-such-flag"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = cli(&missing).arg("init").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "--folder is required");
}

#[test]
fn the_demo_runs_and_reports_convergence() {
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().join("demo");
    for _ in 0..2 {
        // Twice: a second run rebuilds the demo it made before.
        let out =
            assert_cmd::Command::cargo_bin("clinicsync").unwrap().arg("demo").arg(&demo).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("Converged: both sites hold the same"), "{text}");
        assert!(text.contains("kept for review"), "{text}");
    }
    let elsewhere = dir.path().join("not-a-demo");
    fs::create_dir_all(&elsewhere).unwrap();
    fs::write(elsewhere.join("precious.txt"), b"x").unwrap();
    let out =
        assert_cmd::Command::cargo_bin("clinicsync").unwrap().arg("demo").arg(&elsewhere).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(elsewhere.join("precious.txt").exists());
}
