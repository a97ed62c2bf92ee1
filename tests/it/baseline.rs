//! `clinicsync baseline upload`: a folder damaged by hand (patient files
//! deleted, one cut short) is made whole again from a site's database; the
//! file nothing could read is kept aside first; a new site seeded from the
//! folder equals the others.

use std::fs;

use crate::support::*;

#[test]
fn a_damaged_folder_is_made_whole_again_and_a_new_site_seeds_from_it() {
    let (family, a, b) = two_sites();
    let ids: Vec<String> = (0..6).map(|n| add_patient(&app(&a), n, 2)).collect();
    sync_ok(&a);
    sync_ok(&b);
    app(&b).execute("UPDATE patients SET phone = 'newer, typed at B' WHERE id = ?1", [&ids[5]]).unwrap();
    sync_ok(&b);
    let folder = family.folder();
    // By hand: two patient files deleted, one cut short, and A's change-log
    // gone (a person "tidying up").
    fs::remove_file(patient_file(&folder, &ids[0])).unwrap();
    fs::remove_file(patient_file(&folder, &ids[1])).unwrap();
    let cut = patient_file(&folder, &ids[2]);
    let bytes = fs::read(&cut).unwrap();
    fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    let a_site = json_of(&a, &["status"])["site"].as_str().unwrap().to_owned();
    fs::remove_dir_all(folder.join("log").join(&a_site)).unwrap();

    // A damaged file of a patient A does not hold: not A's to replace.
    let stranger = folder.join(clinicsync::folder::layout::patient_path(
        &clinicsync::model::patient_file_name("0f0f0f0f-0000-4000-8000-000000000099"),
    ));
    fs::create_dir_all(stranger.parent().unwrap()).unwrap();
    fs::write(&stranger, b"<patient-file cut short").unwrap();
    let stranger_rel = stranger.strip_prefix(&folder).unwrap().to_string_lossy().into_owned();

    let dry = cli(&a).args(["baseline", "upload", "--dry-run", "--json"]).output().unwrap();
    let dry: serde_json::Value = serde_json::from_slice(&dry.stdout).unwrap();
    let cut_rel = cut.strip_prefix(&folder).unwrap().to_string_lossy().into_owned();
    assert_eq!(dry["replaced"], serde_json::json!([cut_rel]), "{dry:#}");
    assert_eq!(dry["not_held"], serde_json::json!([stranger_rel]), "{dry:#}");
    assert_eq!(fs::read(&cut).unwrap().len(), bytes.len() / 3, "a dry run changes nothing");

    let out = cli(&a).args(["baseline", "upload", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["rows"], 6 * 7, "every row A holds: {report:#}");
    let copies = std::path::PathBuf::from(report["replaced_copies"].as_str().unwrap());
    assert_eq!(
        fs::read(copies.join(&cut_rel)).unwrap(),
        &bytes[..bytes.len() / 3],
        "the damaged file was kept"
    );
    for id in &ids {
        assert!(patient_file(&folder, id).exists(), "{id}");
    }
    let log = json_of(&a, &["log", "--last", "2"]);
    assert_eq!(log[0]["run"]["trigger"], "operation baseline upload", "{log:#}");
    assert_eq!(log[0]["events"][0]["path"], cut_rel.as_str(), "{log:#}");
    assert_eq!(log[1]["run"]["trigger"], "baseline-upload", "the sync it ended with: {log:#}");
    assert_eq!(fs::read(&stranger).unwrap(), b"<patient-file cut short", "left as it was");
    fs::remove_file(&stranger).unwrap();
    let (code, verified) = {
        let out = cli(&a).args(["verify", "--json"]).output().unwrap();
        (out.status.code(), serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap())
    };
    assert_eq!((code, verified["problems"].as_array().unwrap().len()), (Some(0), 0), "{verified:#}");

    // A new site seeded from the folder equals the others, B's newer value
    // included (the join decided, A did not override it).
    let c = family.init("c");
    sync_ok(&b);
    sync_ok(&c);
    assert_eq!(patient_field(&c, &ids[5], "phone").unwrap(), "newer, typed at B");
    assert_eq!(dump(&c), dump(&a));
    assert_eq!(dump(&b), dump(&a));
}

#[test]
fn baseline_download_puts_a_damaged_table_back_and_keeps_what_was_not_sent() {
    let (_family, a, b) = two_sites();
    let ids: Vec<String> = (0..5).map(|n| add_patient(&app(&a), n, 2)).collect();
    sync_ok(&a);
    sync_ok(&b);
    let healthy = dump(&a);
    // Damage at B past clinicsync: appointments and notes deleted, a phone
    // changed, a row clinicsync never saw.
    past_clinicsync(&b, "DELETE FROM appointments WHERE patient_id IN (SELECT id FROM patients LIMIT 2)");
    past_clinicsync(&b, "DELETE FROM clinical_notes");
    past_clinicsync(&b, &format!("UPDATE patients SET phone = 'garbled' WHERE id = '{}'", ids[3]));
    past_clinicsync(
        &b,
        &format!(
            "INSERT INTO appointments (id, patient_id, starts_at) VALUES ('stray', '{}', '2026-12-09T10:00:00Z')",
            ids[0]
        ),
    );
    // And an ordinary edit at B not synced yet: it must survive.
    app(&b).execute("UPDATE patients SET email = 'kept@example.org' WHERE id = ?1", [&ids[4]]).unwrap();

    // One table only: appointments back, notes still missing.
    let out = cli(&b).args(["baseline", "download", "--table", "appointments", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["tables"].as_array().unwrap().len(), 1, "{report:#}");
    assert_eq!(report["tables"][0]["added"], 4, "{report:#}");
    assert_eq!(report["tables"][0]["removed"], 1, "the stray row: {report:#}");
    assert_eq!(count(&b, "SELECT count(*) FROM appointments"), 10);
    assert_eq!(count(&b, "SELECT count(*) FROM appointments WHERE id = 'stray'"), 0);
    assert_eq!(count(&b, "SELECT count(*) FROM clinical_notes"), 0, "other tables untouched");
    let backup = report["backup"].as_str().unwrap();
    let copy = rusqlite::Connection::open(backup).unwrap();
    let stray: i64 =
        copy.query_row("SELECT count(*) FROM appointments WHERE id = 'stray'", [], |r| r.get(0)).unwrap();
    assert_eq!(stray, 1, "the copy opens and holds what was replaced");

    // Every table: notes and the phone back.
    let out = cli(&b).args(["baseline", "download", "--json"]).output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let notes =
        report["tables"].as_array().unwrap().iter().find(|t| t["table"] == "clinical_notes").unwrap().clone();
    assert_eq!(notes["added"], 10, "{report:#}");
    let patients =
        report["tables"].as_array().unwrap().iter().find(|t| t["table"] == "patients").unwrap().clone();
    assert_eq!(patients["changed"], 1, "{report:#}");
    assert_eq!(patient_field(&b, &ids[3], "phone").unwrap(), "+1 555 0003");
    let log = json_of(&b, &["log", "--last", "1"]);
    assert_eq!(log[0]["run"]["trigger"], "operation baseline download", "{log:#}");
    let said = log[0]["run"]["summary"]["said"].as_str().unwrap();
    assert!(said.contains("clinical_notes (10 put back, 0 corrected, 0 removed)"), "{said}");
    assert!(said.contains("the database was copied first to "), "{said}");
    // The edit made with clinicsync watching survived and reaches A.
    assert_eq!(patient_field(&b, &ids[4], "email").unwrap(), "kept@example.org");
    sync_ok(&b);
    sync_ok(&a);
    assert_eq!(patient_field(&a, &ids[4], "email").unwrap(), "kept@example.org");
    assert_eq!(dump(&a), dump(&b));
    assert_ne!(dump(&a), healthy, "only by the kept edit");
}
