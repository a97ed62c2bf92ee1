//! Files a cloud client holds open or has not downloaded, through the
//! folder layer's fault hook (`CLINICSYNC_FAULT=held:…` and
//! `online-only:…`): Linux has neither Windows' sharing violations nor
//! online-only placeholders, so the hook makes the folder report them as
//! Windows and macOS would. A held file is tried again after short waits;
//! held through every try it is skipped for the run with a sentence (the
//! run is partial, never failed) and taken by the next run. An online-only
//! file is never read and never taken for absent, and the run says how many
//! there are.

use std::path::Path;

use rusqlite::params;

use crate::support::*;

/// `clinicsync sync --json` with a fault set.
fn sync_with_fault(db: &Path, fault: &str) -> (i32, serde_json::Value) {
    let out = cli(db).args(["sync", "--json"]).env("CLINICSYNC_FAULT", fault).output().unwrap();
    let json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    (out.status.code().unwrap_or(-1), json)
}

fn errors_naming<'a>(report: &'a serde_json::Value, path_part: &str) -> Vec<&'a str> {
    report["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["level"] == "error" && e["path"].as_str().is_some_and(|p| p.contains(path_part)))
        .map(|e| e["message"].as_str().unwrap())
        .collect()
}

#[test]
fn a_segment_held_open_for_a_moment_is_read_after_a_short_wait() {
    let (_family, a, b) = two_sites();
    let patient = add_patient(&app(&a), 1, 2);
    sync_ok(&a);
    // Each of A's segments is held for its first two tries.
    let (code, report) = sync_with_fault(&b, "held:log/:2");
    assert_eq!(code, 0, "{report:#}");
    assert!(report["counts"]["folder"]["held_retries"].as_u64().unwrap() >= 2, "{report:#}");
    assert_eq!(report["counts"]["folder"]["held"], 0);
    assert!(has_patient(&b, &patient));
}

#[test]
fn a_segment_held_through_every_try_is_skipped_with_a_sentence_and_the_next_run_applies_it() {
    let (_family, a, b) = two_sites();
    let patient = add_patient(&app(&a), 1, 2);
    sync_ok(&a);
    let (code, report) = sync_with_fault(&b, "held:log/");
    assert_eq!(code, 3, "partial, not failed: {report:#}");
    assert_eq!(report["outcome"], "partial");
    let said = errors_naming(&report, "log/");
    assert!(
        !said.is_empty()
            && said.iter().all(|m| m
                .contains("another program (the cloud client, while it transfers the file?) held it open")
                && m.ends_with("will retry")),
        "{report:#}"
    );
    assert!(report["counts"]["folder"]["held"].as_u64().unwrap() >= 1);
    assert_eq!(report["counts"]["segments_applied"], 0, "nothing applied from a file not read");
    let next = sync_ok(&b);
    assert!(next["counts"]["segments_applied"].as_u64().unwrap() >= 1, "{next:#}");
    assert!(has_patient(&b, &patient));
}

#[test]
fn a_patient_file_held_open_is_not_written_this_run_and_its_change_still_travels() {
    let (family, a, b, patient) = two_sites_sharing_a_patient(1);
    app(&a).execute("UPDATE patients SET phone = '+1 555 0199' WHERE id = ?1", params![patient]).unwrap();
    let file = patient_file(&family.folder(), &patient);
    let old = std::fs::read(&file).unwrap();
    // Reading is allowed, replacing is not (a client that opened the file
    // without letting others delete or rename it).
    let (code, report) = sync_with_fault(&a, "held-writes:patients/");
    assert_eq!(code, 3, "{report:#}");
    let said = errors_naming(&report, "patients/");
    assert!(said.iter().any(|m| m.starts_with("was not written: another program")), "{report:#}");
    assert_eq!(std::fs::read(&file).unwrap(), old, "the held file is left as it was");
    // The change is in A's change-log all the same.
    sync_ok(&b);
    assert_eq!(patient_field(&b, &patient, "phone").as_deref(), Some("+1 555 0199"));
    // The next run at A writes the file.
    sync_ok(&a);
    assert!(String::from_utf8(std::fs::read(&file).unwrap()).unwrap().contains("+1 555 0199"));
}

#[test]
fn online_only_files_are_never_read_nor_taken_for_absent_and_the_run_counts_them() {
    let (family, a, b, patient) = two_sites_sharing_a_patient(1);
    // A's new segment is online-only at B.
    app(&a).execute("UPDATE patients SET phone = '+1 555 0123' WHERE id = ?1", params![patient]).unwrap();
    sync_ok(&a);
    let (code, report) = sync_with_fault(&b, "online-only:log/");
    assert_eq!(code, 3, "{report:#}");
    let said = errors_naming(&report, "log/");
    assert!(
        said.iter().any(|m| m.contains("it is online-only: the cloud client has not downloaded it")),
        "{report:#}"
    );
    let not_local = report["counts"]["folder"]["not_local"].as_u64().unwrap();
    assert!(not_local >= 1, "{report:#}");
    assert_eq!(report["counts"]["segments_applied"], 0);
    let summary: Vec<&str> = report["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["path"].is_null())
        .filter_map(|e| e["message"].as_str())
        .filter(|m| {
            m.starts_with(&format!("{not_local} files in the folder are online-only on this computer"))
        })
        .collect();
    assert_eq!(summary.len(), 1, "{report:#}");
    assert!(report["events"].to_string().contains("Always keep on this device"));
    sync_ok(&b);

    // A changes the patient again and its file is online-only at B, where
    // the same patient changed too: B neither reads the file nor writes
    // over it blind (it holds what B has not seen), and deletes nothing.
    app(&a).execute("UPDATE patients SET phone = '+1 555 0124' WHERE id = ?1", params![patient]).unwrap();
    sync_ok(&a);
    app(&b).execute("UPDATE patients SET email = 'b@example.org' WHERE id = ?1", params![patient]).unwrap();
    let file = patient_file(&family.folder(), &patient);
    let file_before = std::fs::read(&file).unwrap();
    let (code, report) = sync_with_fault(&b, "online-only:patients/");
    assert_eq!(code, 3, "{report:#}");
    let said = errors_naming(&report, "patients/");
    assert!(said.iter().any(|m| m.contains("it is online-only")), "{report:#}");
    assert_eq!(std::fs::read(&file).unwrap(), file_before, "not written over");
    assert!(has_patient(&b, &patient), "an unread file deletes nothing");

    let done = sync_ok(&b);
    assert_eq!(done["counts"]["folder"]["not_local"], 0);
    assert_eq!(patient_field(&b, &patient, "phone").as_deref(), Some("+1 555 0124"));
    let written = String::from_utf8(std::fs::read(&file).unwrap()).unwrap();
    assert!(written.contains("+1 555 0124") && written.contains("b@example.org"), "{written}");
    sync_ok(&a);
    assert_eq!(patient_field(&a, &patient, "email").as_deref(), Some("b@example.org"));
}
