//! Damaged, truncated, foreign and newer-format patient files: each is
//! skipped whole with a sentence naming it, the run ends `partial` (exit 3),
//! and once the file is repaired the next run applies it and ends `ok`.

use std::fs;

use clinicsync::xmlstore::seal;

use crate::support::*;

#[test]
fn damaged_files_are_skipped_whole_and_applied_once_repaired() {
    let (family, a, b) = two_sites();
    // B reads patient files only (no change-logs), the way a site does when
    // logs are off or after a long absence.
    set(&b, &["use_logs=off"]);
    let conn = app(&a);
    let ids: Vec<String> = (0..5).map(|n| add_patient(&conn, n, 2)).collect();
    sync_ok(&a);
    let paths: Vec<_> = ids.iter().map(|id| patient_file(&family.folder(), id)).collect();
    let originals: Vec<Vec<u8>> = paths.iter().map(|p| fs::read(p).unwrap()).collect();

    // 0: cut in the middle.
    fs::write(&paths[0], &originals[0][..originals[0].len() / 2]).unwrap();
    // 1: one byte changed, so the trailer no longer matches.
    let mut changed = originals[1].clone();
    let at = changed.windows(7).position(|w| w == b"Family1").unwrap();
    changed[at] = b'X';
    fs::write(&paths[1], &changed).unwrap();
    // 2: a sealed file that is not XML at all.
    fs::write(&paths[2], seal(b"PK\x03\x04 this is a zip, not a patient\n<<<".to_vec())).unwrap();
    // 3: a file from a newer clinicsync (format 99), otherwise well formed.
    let body = clinicsync::xmlstore::unseal(&originals[3]).unwrap();
    let newer = String::from_utf8(body.to_vec()).unwrap().replace("format=\"1\"", "format=\"99\"");
    fs::write(&paths[3], seal(newer.into_bytes())).unwrap();

    let (code, report) = sync(&b);
    assert_eq!(code, 3, "a run that skipped files exits 3: {report:#}");
    assert_eq!(report["outcome"], "partial");
    assert_eq!(report["counts"]["files_skipped"], 4);
    let skipped = events_of(&report, "skipped");
    let message_for = |i: usize| {
        let rel = paths[i].strip_prefix(family.folder()).unwrap().to_string_lossy().into_owned();
        skipped
            .iter()
            .find(|e| e["path"] == rel.as_str())
            .unwrap_or_else(|| panic!("no event names {rel}: {report:#}"))["message"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert!(message_for(0).contains("trailer"), "{}", message_for(0));
    assert!(message_for(1).contains("sha256"), "{}", message_for(1));
    assert!(
        message_for(2).contains("line 1") && message_for(2).contains("not an XML document"),
        "{}",
        message_for(2)
    );
    assert!(message_for(3).contains("format version 99"), "{}", message_for(3));

    // Nothing of a skipped file was applied; the good file was.
    let at_b: Vec<String> = app(&b)
        .prepare("SELECT id FROM patients ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(at_b, vec![ids[4].clone()]);
    let children: i64 = app(&b).query_row("SELECT count(*) FROM appointments", [], |r| r.get(0)).unwrap();
    assert_eq!(children, 2, "only the good patient's rows");
    // The skipped files were left exactly as they were.
    assert_eq!(fs::read(&paths[0]).unwrap(), &originals[0][..originals[0].len() / 2]);
    // Latest Logs names each file too.
    let log = String::from_utf8(cli(&b).args(["log", "--last", "1"]).output().unwrap().stdout).unwrap();
    assert!(log.contains("partial") && log.contains("format version 99"), "{log}");

    // The site that wrote them does not overwrite what it cannot read either.
    let (code_a, _) = sync_with(&a, &["--full-scan"]);
    assert_eq!(code_a, 3);

    for (path, bytes) in paths.iter().zip(&originals) {
        fs::write(path, bytes).unwrap();
    }
    let report = sync_ok(&b);
    assert_eq!(report["counts"]["files_applied"], 4);
    sync_ok(&a);
    assert_eq!(dump(&a), dump(&b));
}

#[test]
fn hostile_xml_is_refused_without_expanding_anything() {
    let family = Family::new();
    let a = family.init("a");
    let id = uuid(1, 1);
    let path = patient_file(&family.folder(), &id);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let bomb = format!(
        "<?xml version=\"1.0\"?>\n<!DOCTYPE lolz [<!ENTITY lol \"lol\"><!ENTITY lol2 \"&lol;&lol;&lol;&lol;\">]>\n<patient-file format=\"1\" patient=\"{id}\">&lol2;</patient-file>\n"
    );
    fs::write(&path, seal(bomb.into_bytes())).unwrap();
    let (code, report) = sync_with(&a, &["--full-scan"]);
    assert_eq!(code, 3);
    let skipped = events_of(&report, "skipped");
    assert_eq!(skipped.len(), 1);
    assert!(skipped[0]["message"].as_str().unwrap().contains("document type declaration"), "{report:#}");
    let n: i64 = app(&a).query_row("SELECT count(*) FROM patients", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 0);
}

#[test]
fn a_file_whose_name_does_not_match_its_patient_is_not_applied() {
    let (family, a, b) = two_sites();
    let id = add_patient(&app(&a), 1, 0);
    sync_ok(&a);
    // Copy the file to the name of another (unknown) patient.
    let bytes = fs::read(patient_file(&family.folder(), &id)).unwrap();
    let other = patient_file(&family.folder(), &uuid(1, 2));
    fs::create_dir_all(other.parent().unwrap()).unwrap();
    fs::write(&other, bytes).unwrap();
    let (code, report) = sync_with(&b, &["--full-scan"]);
    assert_eq!(code, 3, "{report:#}");
    assert!(
        events_of(&report, "skipped")[0]["message"]
            .as_str()
            .unwrap()
            .contains("the patient it holds is not the one its name says")
    );
}

#[test]
fn provider_temp_files_and_strangers_are_not_data_and_a_missing_patients_folder_deletes_nothing() {
    let (family, a, b, id) = two_sites_sharing_a_patient(1);
    let file = patient_file(&family.folder(), &id);
    let shard = file.parent().unwrap();
    fs::write(shard.join(".syncthing.x.xml.tmp"), b"partial").unwrap();
    fs::write(shard.join("x.xml.partial"), b"partial").unwrap();
    fs::write(shard.join("notes.txt"), b"someone dropped this here").unwrap();
    let (code, report) = sync_with(&b, &["--full-scan"]);
    assert_eq!(code, 0, "{report:#}");
    let unknown = events_of(&report, "unknown-file");
    assert_eq!(unknown.len(), 1, "only the stranger is mentioned: {report:#}");
    assert!(unknown[0]["path"].as_str().unwrap().ends_with("notes.txt"));

    // The whole patients/ folder vanishes (moved, or not yet downloaded):
    // nothing is deleted anywhere.
    fs::rename(family.folder().join("patients"), family.dir.path().join("moved-away")).unwrap();
    let (code, report) = sync_with(&b, &["--full-scan"]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(dump(&a), dump(&b));
    assert_eq!(dump(&b)[0].1.len(), 1);
}

#[test]
fn a_file_from_a_site_whose_clock_is_days_ahead_is_held_back() {
    use clinicsync::model::{
        FieldState, FieldVersion, Hlc, PatientDoc, PatientId, RowKey, RowState, SiteId, Value,
    };
    let family = Family::new();
    let a = family.init("a");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let ahead = Hlc::new(now + 3 * 24 * 3600 * 1000, 0, SiteId::from_bytes([0x42; 16]));
    let id = uuid(1, 1);
    let mut doc = PatientDoc::new(PatientId(id.clone()));
    let mut row = RowState { cl: 1, ..RowState::default() };
    for (col, value) in [("id", id.as_str()), ("family_name", "Future")] {
        let v = FieldVersion::new(Value::Text(value.into()), ahead, Default::default()).unwrap();
        row.fields.insert(col.into(), FieldState::single(v));
    }
    doc.rows.insert(RowKey { table: "patients".into(), pk: id.clone() }, row);
    let path = patient_file(&family.folder(), &id);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, clinicsync::xmlstore::encode_patient(&doc)).unwrap();
    let (code, report) = sync_with(&a, &["--full-scan"]);
    assert_eq!(code, 3, "{report:#}");
    assert_eq!(report["counts"]["files_held_back"], 1);
    let held = events_of(&report, "held-back");
    assert!(held[0]["message"].as_str().unwrap().contains("site 42424242's clock is 3days"), "{report:#}");
    let n: i64 = app(&a).query_row("SELECT count(*) FROM patients", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 0, "nothing of a held-back file is applied");
}
