//! Cloud clients' conflict copies in a real folder, through the CLI: each is
//! merged by join, the original is rewritten, and the copy is deleted (or
//! kept and remembered); a damaged copy is never deleted; a copy of this
//! site's own segment stops the run.

use std::fs;
use std::path::{Path, PathBuf};

use crate::support::*;

/// Two sites that both hold a patient; then A changes the phone and B,
/// before it sees A's change, changes it too. Returns the family, both
/// databases, the patient, and A's file bytes before and after its edit.
struct Scene {
    family: Family,
    a: PathBuf,
    b: PathBuf,
    id: String,
    before: Vec<u8>,
    after_a: Vec<u8>,
}

fn scene(b_settings: &[&str]) -> Scene {
    let (family, a, b) = two_sites();
    if !b_settings.is_empty() {
        set(&b, b_settings);
    }
    let id = add_patient(&app(&a), 7, 2);
    sync_ok(&a);
    sync_ok(&b);
    let file = patient_file(&family.folder(), &id);
    let before = fs::read(&file).unwrap();
    app(&a).execute("UPDATE patients SET phone = 'typed at A' WHERE id = ?1", [&id]).unwrap();
    sync_ok(&a);
    let after_a = fs::read(&file).unwrap();
    app(&b).execute("UPDATE patients SET phone = 'typed at B' WHERE id = ?1", [&id]).unwrap();
    Scene { family, a, b, id, before, after_a }
}

impl Scene {
    fn original(&self) -> PathBuf {
        patient_file(&self.family.folder(), &self.id)
    }

    fn stem(&self) -> String {
        clinicsync::model::patient_file_name(&self.id)
    }

    /// The cloud client kept the older file under the name and A's as a
    /// copy called `name` (relative to the original's folder).
    fn copy_as(&self, name: &str) -> PathBuf {
        let copy = self.original().with_file_name(name);
        fs::write(&copy, &self.after_a).unwrap();
        fs::write(self.original(), &self.before).unwrap();
        copy
    }

    /// Both sites end with both values: the winner in the table, the loser
    /// as an open conflict record.
    fn assert_converged(&self) {
        sync_ok(&self.a);
        sync_ok(&self.b);
        assert_eq!(dump(&self.a), dump(&self.b));
        let phone = patient_field(&self.a, &self.id, "phone").unwrap();
        for db in [&self.a, &self.b] {
            let conflicts: serde_json::Value = json_of(db, &["conflicts"]);
            let lost: Vec<&str> =
                conflicts.as_array().unwrap().iter().map(|c| c["lost_value"].as_str().unwrap()).collect();
            let mut both = vec![phone.as_str(), lost[0]];
            both.sort();
            assert_eq!(both, ["typed at A", "typed at B"], "{}", db.display());
            assert_eq!(lost.len(), 1, "{}", db.display());
        }
    }
}

fn copies_left(dir: &Path, stem: &str) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.to_ascii_lowercase().starts_with(stem) && *n != format!("{stem}.xml"))
        .collect()
}

#[test]
fn a_syncthing_copy_is_merged_into_the_original_and_deleted() {
    // B reads only patient files, so A's edit can reach it only through the copy.
    let s = scene(&["use_logs=off"]);
    let copy = s.copy_as(&format!("{}.sync-conflict-20240131-142233-7QKZ3XN.xml", s.stem()));
    let report = sync_ok(&s.b);
    assert!(!copy.exists(), "the merged copy is deleted");
    assert_eq!(report["counts"]["conflict_copies_merged"], 1);
    assert_eq!(report["counts"]["conflict_copies_deleted"], 1);
    let events = events_of(&report, "conflict-copy");
    assert!(events.iter().any(|e| e["message"].as_str().unwrap().contains("Syncthing")), "{events:?}");
    let merged = fs::read_to_string(s.original()).unwrap();
    assert!(merged.contains("typed at A") && merged.contains("typed at B"), "the original holds both values");
    s.assert_converged();
}

#[test]
fn with_logs_on_a_copy_beside_a_file_another_writer_changed_is_found_without_a_full_scan() {
    let s = scene(&[]);
    let copy = s.copy_as(&format!("{} (Jane Doe's conflicted copy 2024-01-31).xml", s.stem()));
    let report = sync_ok(&s.b);
    assert_eq!(report["counts"]["full_scan"], false);
    assert!(!copy.exists(), "{report:#}");
    assert_eq!(report["counts"]["conflict_copies_deleted"], 1);
    assert!(
        events_of(&report, "conflict-copy")
            .iter()
            .any(|e| e["message"].as_str().unwrap().contains("Dropbox"))
    );
    s.assert_converged();
}

#[test]
fn with_auto_delete_off_a_copy_is_merged_once_kept_and_listed() {
    let s = scene(&["use_logs=off", "auto_delete_conflicts=off"]);
    let name = format!("{} (conflicted copy 2024-01-31 142233).xml", s.stem());
    let copy = s.copy_as(&name);
    let first = sync_ok(&s.b);
    assert_eq!(first["counts"]["conflict_copies_merged"], 1);
    assert_eq!(first["counts"]["conflict_copies_kept"], 1);
    assert!(copy.exists(), "kept");
    let status: serde_json::Value = json_of(&s.b, &["status"]);
    let kept = status["kept_copies"].as_array().unwrap();
    assert_eq!(kept.len(), 1);
    assert!(kept[0]["path"].as_str().unwrap().ends_with(&name));
    assert_eq!(kept[0]["client"], "Nextcloud/ownCloud");
    let human = String::from_utf8(cli(&s.b).arg("status").output().unwrap().stdout).unwrap();
    assert!(human.contains(&name), "{human}");

    let second = sync_ok(&s.b);
    assert_eq!(second["counts"]["conflict_copies_merged"], 0, "never merged twice");
    assert_eq!(second["counts"]["conflict_copies_kept"], 0);

    set(&s.b, &["auto_delete_conflicts=on"]);
    let third = sync_ok(&s.b);
    assert_eq!(third["counts"]["conflict_copies_deleted"], 1);
    assert!(!copy.exists());
    let status: serde_json::Value = json_of(&s.b, &["status"]);
    assert_eq!(status["kept_copies"].as_array().unwrap().len(), 0);
    s.assert_converged();
}

#[test]
fn rclone_renames_both_sides_and_the_original_is_rebuilt_from_the_copies() {
    for settings in [&["use_logs=off"][..], &[]] {
        rclone_case(settings);
    }
}

fn rclone_case(settings: &[&str]) {
    let s = scene(settings);
    let dir = s.original().parent().unwrap().to_owned();
    fs::write(dir.join(format!("{}.xml..path1", s.stem())), &s.after_a).unwrap();
    fs::write(dir.join(format!("{}.xml..path2", s.stem())), &s.before).unwrap();
    fs::remove_file(s.original()).unwrap();
    let report = sync_ok(&s.b);
    assert_eq!(report["counts"]["conflict_copies_deleted"], 2, "{report:#}");
    assert!(s.original().exists(), "the original is written again");
    assert_eq!(copies_left(&dir, &s.stem()), Vec::<String>::new());
    s.assert_converged();
}

#[test]
fn a_decorated_patients_folder_is_merged_and_removed_once_empty() {
    let s = scene(&["use_logs=off"]);
    let shard = s.original().parent().unwrap().file_name().unwrap().to_owned();
    let decorated = s.family.folder().join("patients (Selective Sync Conflict)");
    fs::create_dir_all(decorated.join(&shard)).unwrap();
    fs::write(decorated.join(&shard).join(format!("{}.xml", s.stem())), &s.after_a).unwrap();
    fs::write(s.original(), &s.before).unwrap();
    let report = sync_ok(&s.b);
    assert_eq!(report["counts"]["conflict_copies_deleted"], 1, "{report:#}");
    assert!(!decorated.exists(), "the emptied copy of the folder is removed");
    s.assert_converged();
}

#[test]
fn a_damaged_copy_is_reported_and_never_deleted() {
    let s = scene(&["use_logs=off"]);
    let copy = s.copy_as(&format!("{} (1).xml", s.stem()));
    let half = s.after_a[..s.after_a.len() / 2].to_vec();
    fs::write(&copy, &half).unwrap();
    let (code, report) = sync(&s.b);
    assert_eq!((code, report["outcome"].as_str()), (3, Some("partial")), "{report:#}");
    assert!(copy.exists(), "a copy that could not be merged stays");
    assert_eq!(fs::read(&copy).unwrap(), half, "untouched");
    let skipped = events_of(&report, "skipped");
    assert!(
        skipped.iter().any(|e| e["path"].as_str().unwrap().ends_with(" (1).xml")),
        "the damaged copy is named: {report:#}"
    );
    // Once the client finishes the file, it is merged.
    fs::write(&copy, &s.after_a).unwrap();
    sync_ok(&s.b);
    assert!(!copy.exists());
    s.assert_converged();
}

#[test]
fn a_copy_of_this_site_s_own_segment_stops_the_run() {
    let family = Family::new();
    let a = family.init("a");
    add_patient(&app(&a), 1, 0);
    sync_ok(&a);
    let status: serde_json::Value = json_of(&a, &["status"]);
    let site = status["site"].as_str().unwrap();
    let log = family.folder().join("log").join(site);
    let first = fs::read_dir(&log).unwrap().next().unwrap().unwrap().path();
    let stem = first.file_stem().unwrap().to_string_lossy().into_owned();
    fs::copy(&first, log.join(format!("{stem} (DESKTOP-X's conflicted copy 2024-01-31).xml"))).unwrap();
    let out = cli(&a).args(["sync", "--full-scan"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("two computers") && err.contains("Dropbox"), "{err}");
}

/// Takes a site's change-log and site file out of the folder, as if its
/// cloud client had never delivered them: its changes can arrive only in
/// files.
fn forget_site(family: &Family, db: &Path) {
    let site = json_of(db, &["status"])["site"].as_str().unwrap().to_owned();
    fs::remove_dir_all(family.folder().join("log").join(&site)).unwrap();
    fs::remove_file(family.folder().join("sites").join(format!("{site}.xml"))).unwrap();
}

/// Moves a folder's modification time a second on, as a cloud client's
/// write there does (directory times move in coarse clock ticks, so a
/// write in the tick of the site's last run could leave it unchanged).
fn client_wrote_in(dir: &Path) {
    let now = fs::metadata(dir).unwrap().modified().unwrap();
    fs::File::open(dir).unwrap().set_modified(now + std::time::Duration::from_secs(1)).unwrap();
}

#[test]
fn a_copy_that_arrives_after_the_site_last_synced_is_merged_by_a_plain_sync() {
    let family = Family::new();
    let a = family.init("a");
    let ids: Vec<String> = (0..30).map(|n| add_patient(&app(&a), n, 1)).collect();
    sync_ok(&a);
    // Another site's version of a patient arrives as a copy only, while
    // A's log holds nothing new: only the shard folder's time tells.
    let b = family.init("b");
    app(&b).execute("UPDATE patients SET phone = 'typed at B' WHERE id = ?1", [&ids[4]]).unwrap();
    sync_ok(&b);
    let original = patient_file(&family.folder(), &ids[4]);
    let from_b = fs::read(&original).unwrap();
    let stem = clinicsync::model::patient_file_name(&ids[4]);
    // A's view: B's log and site file never came.
    forget_site(&family, &b);
    sync_ok(&a);
    let report = sync_ok(&a);
    assert_eq!(report["counts"]["folder"]["patient_lists"], 0, "settled: {report:#}");
    let dir = original.parent().unwrap().to_owned();
    let copy = dir.join(format!("{stem}.sync-conflict-20240131-142233-7QKZ3XN.xml"));
    fs::write(&copy, &from_b).unwrap();
    client_wrote_in(&dir);

    let report = sync_ok(&a);
    assert_eq!(report["counts"]["full_scan"], false);
    assert_eq!(
        report["counts"]["folder"]["patient_lists"], 1,
        "only the shard that changed is listed: {report:#}"
    );
    assert_eq!(report["counts"]["conflict_copies_deleted"], 1, "{report:#}");
    assert!(!copy.exists());
    assert_eq!(patient_field(&a, &ids[4], "phone").as_deref(), Some("typed at B"));
}

#[test]
fn a_copy_whose_join_changes_nothing_is_deleted_without_rewriting_the_original() {
    let family = Family::new();
    let a = family.init("a");
    let id = add_patient(&app(&a), 1, 2);
    sync_ok(&a);
    let original = patient_file(&family.folder(), &id);
    let dir = original.parent().unwrap().to_owned();
    let stem = clinicsync::model::patient_file_name(&id);
    let copy = dir.join(format!("{stem} (1).xml"));
    fs::copy(&original, &copy).unwrap();
    client_wrote_in(&dir);
    let before = fs::metadata(&original).unwrap().modified().unwrap();

    let report = sync_ok(&a);
    assert_eq!(report["counts"]["conflict_copies_deleted"], 1, "{report:#}");
    assert_eq!(report["counts"]["files_written"], 0, "{report:#}");
    assert!(!copy.exists());
    assert_eq!(fs::metadata(&original).unwrap().modified().unwrap(), before, "the original is untouched");
}

#[test]
fn an_original_a_client_renamed_away_is_written_again_by_a_plain_sync() {
    let family = Family::new();
    let a = family.init("a");
    let id = add_patient(&app(&a), 1, 2);
    sync_ok(&a);
    let original = patient_file(&family.folder(), &id);
    let dir = original.parent().unwrap().to_owned();
    let stem = clinicsync::model::patient_file_name(&id);
    // rclone bisync: both sides renamed, the original gone.
    let bytes = fs::read(&original).unwrap();
    fs::write(dir.join(format!("{stem}.xml..path1")), &bytes).unwrap();
    fs::write(dir.join(format!("{stem}.xml..path2")), &bytes).unwrap();
    fs::remove_file(&original).unwrap();
    client_wrote_in(&dir);

    let report = sync_ok(&a);
    assert_eq!(report["counts"]["full_scan"], false);
    assert!(original.exists(), "{report:#}");
    assert_eq!(fs::read(&original).unwrap(), bytes);
    assert_eq!(copies_left(&dir, &stem), Vec::<String>::new(), "{report:#}");
    let again = sync_ok(&a);
    assert_eq!(again["counts"]["folder"]["patient_lists"], 0, "the folder is at rest: {again:#}");
    assert_eq!(again["counts"]["files_written"], 0);
}

#[test]
fn an_original_renamed_away_into_copies_is_written_again_by_one_site_only() {
    let (family, a, b, id) = two_sites_sharing_a_patient(2);
    let site = |db: &Path| json_of(db, &["status"])["site"].as_str().unwrap().to_owned();
    let (leader, other) = if site(&a) < site(&b) { (&a, &b) } else { (&b, &a) };
    let original = patient_file(&family.folder(), &id);
    let dir = original.parent().unwrap().to_owned();
    let stem = clinicsync::model::patient_file_name(&id);
    let bytes = fs::read(&original).unwrap();
    fs::write(dir.join(format!("{stem}.xml..path1")), &bytes).unwrap();
    fs::write(dir.join(format!("{stem}.xml..path2")), &bytes).unwrap();
    fs::remove_file(&original).unwrap();
    client_wrote_in(&dir);

    // The other site merges the copies and leaves the file to the one site
    // that writes it, so two sites never write the same new file at once.
    let report = sync_ok(other);
    assert!(!original.exists(), "{report:#}");
    assert_eq!(copies_left(&dir, &stem).len(), 2);
    let said = events_of(&report, "conflict-copy");
    assert!(
        said.iter().any(|e| e["message"].as_str().unwrap().contains("the site that rebuilds it")),
        "{said:?}"
    );

    let report = sync_ok(leader);
    assert!(original.exists(), "{report:#}");
    assert_eq!(copies_left(&dir, &stem), Vec::<String>::new());
    assert_eq!(fs::read(&original).unwrap(), bytes);
    sync_ok(other);
    assert_eq!(dump(&a), dump(&b));
}

#[test]
fn a_copy_whose_name_is_not_utf8_is_merged_and_named_in_the_log() {
    use std::os::unix::ffi::OsStrExt;
    let family = Family::new();
    let a = family.init("a");
    let id = add_patient(&app(&a), 1, 1);
    sync_ok(&a);
    let b = family.init("b");
    app(&b).execute("UPDATE patients SET phone = 'only in the copy' WHERE id = ?1", [&id]).unwrap();
    sync_ok(&b);
    let original = patient_file(&family.folder(), &id);
    let from_b = fs::read(&original).unwrap();
    // A sees B's version only as a copy: B's log and site file never came.
    forget_site(&family, &b);
    sync_ok(&a);
    let dir = original.parent().unwrap().to_owned();
    let stem = clinicsync::model::patient_file_name(&id);
    // Latin-1 bytes from a client on another system: not UTF-8.
    let mut name = format!("{stem} (caf").into_bytes();
    name.extend_from_slice(b"\xe9 conflict).xml");
    let copy = dir.join(std::ffi::OsStr::from_bytes(&name));
    fs::write(&copy, &from_b).unwrap();
    client_wrote_in(&dir);

    let (_, report) = sync(&a);
    assert_eq!(patient_field(&a, &id, "phone").as_deref(), Some("only in the copy"), "{report:#}");
    assert!(!copy.exists(), "merged and deleted: {report:#}");
    let said = events_of(&report, "conflict-copy");
    assert!(
        said.iter().any(|e| e["path"].as_str().unwrap().contains("(caf\u{fffd} conflict).xml")),
        "{said:?}"
    );
}

#[test]
fn copies_in_many_shard_folders_at_once_are_each_merged_whichever_core_lists_them() {
    use std::os::unix::ffi::OsStrExt;
    let family = Family::new();
    let a = family.init("a");
    let ids: Vec<String> = (0..40).map(|n| add_patient(&app(&a), n, 1)).collect();
    sync_ok(&a);
    // Ten patients in ten different shard folders: more than a run lists
    // on one core.
    let mut picked: Vec<(String, PathBuf)> = Vec::new();
    for id in &ids {
        let dir = patient_file(&family.folder(), id).parent().unwrap().to_owned();
        if picked.len() < 10 && picked.iter().all(|(_, d)| *d != dir) {
            picked.push((id.clone(), dir));
        }
    }
    assert_eq!(picked.len(), 10);
    picked.sort_by(|x, y| x.1.cmp(&y.1));
    let b = family.init("b");
    for (id, _) in &picked {
        app(&b).execute("UPDATE patients SET phone = 'from B ' || id WHERE id = ?1", [id]).unwrap();
    }
    sync_ok(&b);
    let from_b: Vec<Vec<u8>> =
        picked.iter().map(|(id, _)| fs::read(patient_file(&family.folder(), id)).unwrap()).collect();
    // A sees B's versions only as copies: B's log and site file never came.
    forget_site(&family, &b);
    sync_ok(&a);
    let report = sync_ok(&a);
    assert_eq!(report["counts"]["folder"]["patient_lists"], 0, "settled: {report:#}");
    for ((id, dir), bytes) in picked.iter().zip(&from_b) {
        let stem = clinicsync::model::patient_file_name(id);
        // The first shard's copy (listed by the other core) has a name
        // that is not UTF-8, from a client on another system.
        let mut name = format!("{stem} (caf").into_bytes();
        name.extend_from_slice(if *dir == picked[0].1 { b"\xe9 conflict).xml" } else { b"e conflict).xml" });
        fs::write(dir.join(std::ffi::OsStr::from_bytes(&name)), bytes).unwrap();
        client_wrote_in(dir);
    }

    let report = sync_ok(&a);
    assert_eq!(report["counts"]["full_scan"], false);
    assert_eq!(report["counts"]["folder"]["patient_lists"], 10, "{report:#}");
    assert_eq!(report["counts"]["conflict_copies_deleted"], 10, "{report:#}");
    for (id, dir) in &picked {
        assert_eq!(patient_field(&a, id, "phone"), Some(format!("from B {id}")), "{report:#}");
        assert!(copies_left(dir, &clinicsync::model::patient_file_name(id)).is_empty(), "{report:#}");
    }
}
