//! Hostile items in the folder that a run must neither hang on nor follow
//! out of the folder: FIFOs named like clinicsync's files, links in place
//! of files and of shard folders. Each is skipped with a sentence naming
//! it, and nothing outside the folder changes.

use std::fs;
use std::path::Path;
use std::time::Duration;

use crate::support::*;

/// Makes a FIFO (a named pipe): opening it for reading waits for a writer.
fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo").arg(path).status().expect("run mkfifo");
    assert!(status.success());
}

/// Runs a command of the CLI and insists it ends (a hang fails the test).
fn finishes(db: &Path, args: &[&str]) -> (i32, String, String) {
    let out = cli(db).args(args).timeout(Duration::from_secs(60)).output().expect("run clinicsync");
    let code = out.status.code().unwrap_or_else(|| panic!("{args:?} did not finish (hung?)"));
    (
        code,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn fifos_named_like_clinicsync_files_are_skipped_and_never_hang_a_run() {
    let (family, a, b, id) = two_sites_sharing_a_patient(1);
    let folder = family.folder();
    // Another site's next segment, a patient file, a site file of a site
    // that does not exist yet.
    let site_a = json_of(&a, &["status"])["site"].as_str().unwrap().to_owned();
    let fifos = [
        folder.join("log").join(&site_a).join("0000000099.xml"),
        patient_file(&folder, &id).with_file_name("ffffffffffffffffffffffffffffffff.xml"),
        folder.join("sites").join("abababababababababababababababab.xml"),
    ];
    for fifo in &fifos {
        mkfifo(fifo);
    }
    for args in [&["sync", "--json"][..], &["sync", "--full-scan", "--json"], &["status"], &["tombstones"]] {
        let (code, stdout, stderr) = finishes(&b, args);
        assert!(code == 0 || code == 3, "{args:?}: {code} {stdout} {stderr}");
    }
    let (_, stdout, _) = finishes(&b, &["sync", "--full-scan", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let skipped: Vec<&serde_json::Value> = events_of(&report, "skipped");
    assert!(
        skipped
            .iter()
            .any(|e| e["message"].as_str().unwrap().contains("a FIFO (a named pipe), not a regular file")),
        "named with a sentence: {report:#}"
    );
    assert_eq!(dump(&a), dump(&b), "everything else synced");
}

#[test]
fn a_fifo_in_place_of_clinicsync_xml_fails_the_run_with_a_sentence_instead_of_hanging() {
    let family = Family::new();
    let a = family.init("a");
    let manifest = family.folder().join("clinicsync.xml");
    fs::remove_file(&manifest).unwrap();
    mkfifo(&manifest);
    let (code, _, stderr) = finishes(&a, &["sync"]);
    assert_eq!(code, 1, "{stderr}");
    let (code, stdout, stderr) = finishes(&a, &["status"]);
    assert!(code == 0 || code == 1, "{stdout} {stderr}");
    let (code, _, stderr) = finishes(&a, &["settings", &format!("folder={}", family.folder().display())]);
    assert_eq!(code, 1, "{stderr}");
}

#[test]
fn a_shard_folder_that_links_outside_is_never_written_through() {
    let family = Family::new();
    let a = family.init("a");
    let id = add_patient(&app(&a), 1, 1);
    sync_ok(&a);
    let original = patient_file(&family.folder(), &id);
    let shard = original.parent().unwrap().to_owned();
    // The shard becomes a link to a decoy folder outside the synced folder.
    let decoy = family.dir.path().join("decoy");
    fs::create_dir_all(&decoy).unwrap();
    fs::remove_dir_all(&shard).unwrap();
    std::os::unix::fs::symlink(&decoy, &shard).unwrap();
    // A patient file that links to the database itself.
    let other = add_patient(&app(&a), 2, 1);
    sync_ok(&a);
    let linked = patient_file(&family.folder(), &other);
    let db_before = fs::read(&a).unwrap().len();
    if linked.parent().unwrap() != shard {
        fs::remove_file(&linked).unwrap();
        std::os::unix::fs::symlink(&a, &linked).unwrap();
    }
    for args in
        [&["sync", "--json"][..], &["sync", "--full-scan", "--json"], &["sync", "--full-scan", "--json"]]
    {
        let (code, stdout, stderr) = finishes(&a, args);
        assert!(code == 0 || code == 3, "{args:?}: {stdout} {stderr}");
    }
    assert_eq!(fs::read_dir(&decoy).unwrap().count(), 0, "nothing was written through the link");
    assert!(fs::symlink_metadata(&shard).unwrap().file_type().is_symlink(), "the link is left alone");
    if linked.parent().unwrap() != shard {
        assert!(fs::symlink_metadata(&linked).unwrap().file_type().is_symlink(), "never written through");
    }
    assert!(fs::read(&a).unwrap().len() >= db_before, "the database is intact");
    assert!(has_patient(&a, &id) && has_patient(&a, &other), "nothing is deleted for that");
}

#[test]
fn names_and_keys_from_the_folder_reach_the_terminal_with_their_control_characters_shown() {
    let family = Family::new();
    let a = family.init("a");
    let evil = family.db("evil");
    let name = "evil\u{1b}]0;pwned\u{7}\r\nWarning:   forged line\u{1b}[2J\u{202e}";
    // clinicsync itself refuses such a name; a hostile site file carries it
    // as character references.
    let refused = cli(&evil)
        .args(["init", "--folder"])
        .arg(family.folder())
        .args(["--site-name", name])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--site-name holds a control character"));
    cli(&evil)
        .args(["init", "--folder"])
        .arg(family.folder())
        .args(["--site-name", "evil"])
        .assert()
        .success();
    let evil_site = json_of(&evil, &["status"])["site"].as_str().unwrap().to_owned();
    let site_file = family.folder().join("sites").join(format!("{evil_site}.xml"));
    let text = fs::read_to_string(&site_file).unwrap();
    let body = text[..text.find("<!--clinicsync").unwrap()].replace(
        "name=\"evil\"",
        "name=\"evil&#27;]0;pwned&#7;&#13;&#10;Warning:   forged line&#27;[2J\u{202e}\"",
    );
    fs::write(&site_file, clinicsync::xmlstore::seal(body.into_bytes())).unwrap();
    // A conflict copy whose name carries a new line and an escape.
    let id = add_patient(&app(&a), 1, 1);
    assert_eq!(sync(&a).0, 3, "the hostile site file is refused");
    let original = patient_file(&family.folder(), &id);
    let stem = clinicsync::model::patient_file_name(&id);
    fs::copy(&original, original.with_file_name(format!("{stem} (\u{1b}[31mred\nfake line).xml"))).unwrap();
    sync_with(&a, &["--full-scan"]);
    for args in
        [&["status"][..], &["log", "--last", "3"], &["sync", "--full-scan"], &["conflicts"], &["tombstones"]]
    {
        let (_, stdout, stderr) = finishes(&a, args);
        for text in [&stdout, &stderr] {
            assert!(
                !text.chars().any(|c| (c.is_control() && c != '\n') || c == '\u{202e}'),
                "{args:?} printed a raw control character: {text:?}"
            );
            assert!(
                !text.lines().any(|l| l.starts_with("Warning:   forged") || l.starts_with("fake line")),
                "{text}"
            );
        }
    }
    let (_, log, _) = finishes(&a, &["log", "--last", "3"]);
    assert!(log.contains("attribute name=\"evil\\u{1b}]0;pwned\\u{7}\\r\\nWarning:"), "shown visibly: {log}");
}

#[test]
fn a_change_log_whose_site_file_has_not_arrived_is_named_not_passed_over() {
    let (family, a, b) = two_sites();
    add_patient(&app(&b), 1, 1);
    sync_ok(&b);
    let site_b = json_of(&b, &["status"])["site"].as_str().unwrap().to_owned();
    fs::remove_file(family.folder().join("sites").join(format!("{site_b}.xml"))).unwrap();
    let (_, report) = sync(&a);
    let said = events_of(&report, "unknown-site");
    assert_eq!(said.len(), 1, "{report:#}");
    assert_eq!(said[0]["path"], format!("log/{site_b}").as_str());
    assert!(said[0]["message"].as_str().unwrap().contains("read once that file arrives"));
}

#[test]
fn a_file_with_a_version_this_site_never_stamped_is_refused_whole() {
    let (family, a, b) = two_sites();
    sync_ok(&a);
    let site_b = json_of(&b, &["status"])["site"].as_str().unwrap().to_owned();
    // B's own id on a version ten minutes ahead of B's clock (within the
    // clock-skew allowance): B never made it.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let stamp = format!("{:012x}0000{site_b}", now + 600_000);
    let id = uuid(9, 9);
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<patient-file format=\"1\" patient=\"{id}\">\n  <row table=\"patients\" pk=\"{id}\" cl=\"1\">\n    <f c=\"family_name\" h=\"{stamp}\" t=\"text\">Forged</f>\n  </row>\n</patient-file>\n"
    );
    let path = patient_file(&family.folder(), &id);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, clinicsync::xmlstore::seal(body.into_bytes())).unwrap();
    let (code, report) = sync_with(&b, &["--full-scan"]);
    assert_eq!(code, 3, "{report:#}");
    let skipped = events_of(&report, "skipped");
    assert!(
        skipped.iter().any(|e| e["message"].as_str().unwrap().contains("that this site never made")),
        "{report:#}"
    );
    assert!(!has_patient(&b, &id), "nothing of it applied");
}

#[test]
fn many_rows_the_app_cannot_hold_yet_make_a_few_log_lines_not_one_each() {
    let family = Family::new();
    let a = family.init("a");
    let id = uuid(7, 7);
    let h = "019aa4b6450700000123456789abcdef0123456789abcdef";
    let mut body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<patient-file format=\"1\" patient=\"{id}\">\n  <row table=\"patients\" pk=\"{id}\" cl=\"1\">\n    <f c=\"family_name\" h=\"{h}\" t=\"text\">Many</f>\n  </row>\n"
    );
    // Notes whose other fields have not arrived: the app's NOT NULL
    // columns refuse them for now.
    for n in 0..25 {
        body.push_str(&format!(
            "  <row table=\"clinical_notes\" pk=\"n{n}\" cl=\"1\">\n    <f c=\"patient_id\" h=\"{h}\" t=\"text\">{id}</f>\n  </row>\n"
        ));
    }
    body.push_str("</patient-file>\n");
    let path = patient_file(&family.folder(), &id);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, clinicsync::xmlstore::seal(body.into_bytes())).unwrap();
    let (code, report) = sync_with(&a, &["--full-scan"]);
    assert_eq!(code, 3, "{report:#}");
    let parked = events_of(&report, "parked");
    assert_eq!(parked.len(), 2, "twenty looked at, said alike in one line, and one count: {parked:?}");
    assert!(
        parked[0]["message"]
            .as_str()
            .unwrap()
            .starts_with("20 rows of clinical_notes of Many are kept by clinicsync"),
        "{parked:?}"
    );
    assert!(
        parked[1]["message"].as_str().unwrap().starts_with("and 5 more rows of clinical_notes"),
        "{parked:?}"
    );
}

#[test]
fn a_patient_beyond_what_every_reader_accepts_is_not_written_and_the_run_says_so() {
    let family = Family::new();
    let a = family.init("a");
    let conn = app(&a);
    let id = add_patient(&conn, 1, 0);
    let tx = conn.unchecked_transaction().unwrap();
    for i in 0..25_001 {
        tx.execute(
            "INSERT INTO clinical_notes (id, patient_id, written_at, body) VALUES (?1, ?2, '2026-11-01', 'seen')",
            rusqlite::params![format!("note-{i}"), id],
        )
        .unwrap();
    }
    tx.commit().unwrap();
    let (code, report) = sync(&a);
    assert_eq!(code, 3, "{report:#}");
    let too_large = events_of(&report, "too-large");
    assert!(
        too_large
            .iter()
            .any(|e| e["message"].as_str().unwrap().starts_with(
                "is not written: it would hold 25002 rows, over the 25000 every clinicsync reads"
            )),
        "{report:#}"
    );
    assert!(!patient_file(&family.folder(), &id).exists());
    // The rows still travel in the change-log: another site gets them all.
    let b = family.db("b");
    let joined =
        cli(&b).args(["init", "--folder"]).arg(family.folder()).args(["--site-name", "b"]).output().unwrap();
    // B cannot write the patient's file either, and says so too.
    assert_eq!(joined.status.code(), Some(3), "{}", String::from_utf8_lossy(&joined.stderr));
    let notes: i64 = app(&b)
        .query_row("SELECT count(*) FROM clinical_notes WHERE patient_id = ?1", [&id], |r| r.get(0))
        .unwrap();
    assert_eq!(notes, 25_001);
}

#[test]
fn output_to_a_reader_that_went_away_ends_quietly() {
    let family = Family::new();
    let a = family.init("a");
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("clinicsync"))
        .args(["--db"])
        .arg(&a)
        .arg("log")
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
