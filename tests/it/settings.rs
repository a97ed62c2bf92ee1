//! Settings: the folder is checked before it is saved (missing, a file,
//! holding the database, not this family's), a moved folder is accepted;
//! the status page's per-site warnings; the progress bar shows on a
//! terminal and stays quiet when piped.

use std::fs;
use std::process::Command;

use crate::support::*;

fn refused(db: &std::path::Path, assignment: &str, expected: &str) {
    let out = cli(db).arg("settings").args(assignment.split(' ')).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{assignment} was accepted");
    assert!(stderr.contains(expected), "{assignment}: {stderr}");
}

fn folder_setting(db: &std::path::Path) -> String {
    let list = json_of(db, &["settings"]);
    list.as_array().unwrap().iter().find(|s| s["key"] == "folder").unwrap()["value"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn the_folder_setting_is_checked_before_it_is_saved() {
    let fam = Family::new();
    let a = fam.init("a");
    let before = folder_setting(&a);
    let dir = fam.dir.path();

    refused(&a, &format!("folder={}", dir.join("missing").display()), "does not exist");
    fs::write(dir.join("a-file"), "x").unwrap();
    refused(&a, &format!("folder={}", dir.join("a-file").display()), "is a file, not a folder");
    // The folder that holds the database (the cloud client would carry it).
    refused(&a, &format!("folder={}", dir.display()), "holds the database itself");
    fs::create_dir(dir.join("empty")).unwrap();
    refused(&a, &format!("folder={}", dir.join("empty").display()), "holds no clinicsync.xml");
    // Another family's folder.
    let other = Family::new();
    other.init("x");
    refused(&a, &format!("folder={}", other.folder().display()), "is not this family's folder");
    // All or none: a good key beside a bad folder is not saved either.
    refused(&a, &format!("sync_interval=7 folder={}", dir.join("missing").display()), "does not exist");
    assert_eq!(folder_setting(&a), before);
    let list = json_of(&a, &["settings"]);
    assert_eq!(list.as_array().unwrap().iter().find(|s| s["key"] == "sync_interval").unwrap()["value"], "5m");

    // The family's folder moved (a new cloud client location): accepted.
    let moved = dir.join("moved-here");
    fs::rename(fam.folder(), &moved).unwrap();
    cli(&a).arg("settings").arg(format!("folder={}", moved.display())).assert().success();
    assert_eq!(folder_setting(&a), moved.display().to_string());
    let patient = add_patient(&app(&a), 3, 1);
    sync_ok(&a);
    assert!(patient_file(&moved, &patient).exists());
}

#[test]
fn init_refuses_a_folder_that_holds_the_database() {
    let fam = Family::new();
    let out = cli(&fam.db("a")).args(["init", "--folder"]).arg(fam.dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds the database itself"));
}

#[test]
fn status_warns_of_a_site_id_in_use_on_another_computer() {
    let fam = Family::new();
    let a = fam.init("a");
    let status = json_of(&a, &["status"]);
    let me = status["sites"].as_array().unwrap().iter().find(|s| s["this_site"] == true).unwrap().clone();
    assert!(me["warning"].is_null(), "{me:#}");
    // The same database read on another computer.
    let out =
        cli(&a).env("CLINICSYNC_MACHINE_ID", "another-computer").args(["status", "--json"]).output().unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let me = status["sites"].as_array().unwrap().iter().find(|s| s["this_site"] == true).unwrap().clone();
    assert!(me["warning"].as_str().unwrap().contains("in use on another computer"), "{me:#}");
}

#[test]
fn a_long_first_export_shows_progress_on_a_terminal_and_nothing_when_piped() {
    let fam = Family::new();
    let conn = new_clinic_db(&fam.db("a"));
    for n in 0..200 {
        add_patient(&conn, n, 3);
    }
    drop(conn);
    // Piped: nothing on stderr.
    let out = cli(&fam.db("a")).args(["init", "--folder"]).arg(fam.folder()).output().unwrap();
    assert!(out.status.success());
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));

    // On a terminal (`script` gives the process one): a bar with the step.
    let conn = new_clinic_db(&fam.db("b"));
    for n in 0..200 {
        add_patient(&conn, 100_000 + n, 3);
    }
    drop(conn);
    let bin = assert_cmd::cargo::cargo_bin("clinicsync");
    let command = format!("'{}' --db '{}' sync --full-scan", bin.display(), fam.db("a").display());
    // a's next run scans b's 200 patients; the bar is asked to show at once.
    cli(&fam.db("b")).args(["init", "--folder"]).arg(fam.folder()).assert().success();
    let out = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("CLINICSYNC_PROGRESS_AFTER_MS", "0")
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("patient files") || shown.contains("change-logs"), "no progress bar: {shown}");
    assert!(shown.contains("sync ok"), "{shown}");
}
