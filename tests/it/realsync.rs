//! End to end through real cloud clients: two sites on real Syncthing
//! daemons (loopback only, `tests/realsync/syncthing-pair.sh`), partitioned
//! while both edit the same field, then healed: both converge, the conflict
//! is recorded at both, and the conflict copy Syncthing made is merged and
//! deleted; a document travels with its row. And two sites over rclone bisync (`tests/realsync/rclone-bisync.sh`),
//! which renames both sides of a clash away: the folders come to rest with
//! every patient's file and no copy. `.ci/run` installs both clients;
//! without them these tests fail unless `CLINICSYNC_SKIP_REALSYNC=1` says
//! to skip them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::*;

const HARNESS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/realsync/syncthing-pair.sh");

/// The running daemons; stopped even when the test fails.
struct Pair {
    base: tempfile::TempDir,
}

/// Runs a harness subcommand on `base` (`harness SUBCOMMAND BASE ARGS...`)
/// and returns what it printed.
fn harness(script: &str, base: &Path, args: &[&str]) -> String {
    let out = Command::new(script).arg(args[0]).arg(base).args(&args[1..]).output().expect("run the harness");
    assert!(
        out.status.success(),
        "{script} {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Whether the cloud client `program` is installed; without it a test
/// fails unless `CLINICSYNC_SKIP_REALSYNC` says to skip.
fn client_installed(program: &str, version_arg: &str) -> bool {
    if Command::new(program).arg(version_arg).output().is_ok() {
        return true;
    }
    assert!(
        std::env::var_os("CLINICSYNC_SKIP_REALSYNC").is_some(),
        "{program} is not installed (apt-get install {program}; `.ci/run` does); set CLINICSYNC_SKIP_REALSYNC=1 to skip"
    );
    eprintln!("skipped: {program} is not installed");
    false
}

impl Pair {
    fn run(&self, args: &[&str]) -> String {
        harness(HARNESS, self.base.path(), args)
    }

    fn folder(&self, i: usize) -> PathBuf {
        PathBuf::from(self.run(&["folder", &i.to_string()]))
    }

    fn wait_idle(&self) {
        self.run(&["wait-idle", "120"]);
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let _ = Command::new(HARNESS).arg("down").arg(self.base.path()).output();
    }
}

fn syncthing_copies(folder: &Path) -> Vec<String> {
    walkdir::WalkDir::new(folder)
        .into_iter()
        .filter_map(Result::ok)
        .map(|e| e.path().strip_prefix(folder).unwrap().to_string_lossy().into_owned())
        .filter(|p| p.contains(".sync-conflict-"))
        .collect()
}

fn init_at(db: &Path, folder: &Path, name: &str) {
    cli(db).args(["init", "--folder"]).arg(folder).args(["--site-name", name]).assert().success();
}

#[test]
fn two_sites_on_real_syncthing_converge_after_a_partition_and_the_conflict_copy_is_merged_and_deleted() {
    if !client_installed("syncthing", "--version") {
        return;
    }
    let pair = Pair { base: tempfile::tempdir().unwrap() };
    pair.run(&["up", "2"]);
    let (fa, fb) = (pair.folder(1), pair.folder(2));
    let dbs = tempfile::tempdir().unwrap();
    let (a, b) = (dbs.path().join("a.db"), dbs.path().join("b.db"));
    let (docs_a, docs_b) = (dbs.path().join("docs-a"), dbs.path().join("docs-b"));

    init_at(&a, &fa, "clinic");
    pair.wait_idle();
    init_at(&b, &fb, "laptop");
    for (db, docs) in [(&a, &docs_a), (&b, &docs_b)] {
        std::fs::create_dir_all(docs).unwrap();
        set(db, &[&format!("documents_folder={}", docs.display())]);
    }
    let id = add_patient(&app(&a), 1, 3);
    // A referral letter travels with its row.
    let letter: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(docs_a.join("referral.pdf"), &letter).unwrap();
    app(&a)
        .execute(
            "INSERT INTO documents (id, patient_id, file_name) VALUES ('letter-1', ?1, 'referral.pdf')",
            [&id],
        )
        .unwrap();
    sync_ok(&a);
    pair.wait_idle();
    sync_ok(&b);
    assert_eq!(dump(&a), dump(&b), "the patient reached the laptop through Syncthing");
    assert_eq!(std::fs::read(docs_b.join("referral.pdf")).unwrap(), letter, "and the letter, byte for byte");
    pair.wait_idle();

    // The laptop goes offline; both change the same phone number.
    pair.run(&["pause", "2"]);
    app(&a).execute("UPDATE patients SET phone = 'typed at the clinic' WHERE id = ?1", [&id]).unwrap();
    sync_ok(&a);
    std::thread::sleep(Duration::from_millis(1100));
    app(&b).execute("UPDATE patients SET phone = 'typed on the laptop' WHERE id = ?1", [&id]).unwrap();
    sync_ok(&b);
    pair.run(&["rescan"]);
    pair.run(&["resume", "2"]);
    pair.wait_idle();
    let made = syncthing_copies(&fa);
    assert!(!made.is_empty(), "Syncthing made a conflict copy of the patient file");

    let mut deleted = 0;
    for _ in 0..3 {
        for db in [&a, &b] {
            let report = sync_ok(db);
            deleted += report["counts"]["conflict_copies_deleted"].as_u64().unwrap();
        }
        pair.wait_idle();
    }
    assert!(deleted >= 1, "a site merged and deleted Syncthing's copy");
    for folder in [&fa, &fb] {
        assert_eq!(syncthing_copies(folder), Vec::<String>::new(), "no copy left in {}", folder.display());
    }
    assert_eq!(dump(&a), dump(&b));
    let phone = patient_field(&a, &id, "phone").unwrap();
    assert_eq!(phone, "typed on the laptop", "the later edit wins");
    for db in [&a, &b] {
        let conflicts: serde_json::Value = json_of(db, &["conflicts"]);
        assert_eq!(conflicts.as_array().unwrap().len(), 1, "{}", db.display());
        assert_eq!(conflicts[0]["lost_value"], "typed at the clinic");
    }
}

const RCLONE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/realsync/rclone-bisync.sh");

/// Two folders joined by rclone bisync: one reconciliation pass per
/// `bisync()`, nothing in the background.
struct Bisync {
    base: tempfile::TempDir,
}

impl Bisync {
    fn run(&self, args: &[&str]) -> String {
        harness(RCLONE, self.base.path(), args)
    }

    fn bisync(&self) {
        self.run(&["sync"]);
    }
}

/// Files of the patients folder that are not an original patient file.
fn copies_in(folder: &Path) -> Vec<String> {
    walkdir::WalkDir::new(folder.join("patients"))
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| e.path().strip_prefix(folder).unwrap().to_string_lossy().into_owned())
        .filter(|p| {
            !matches!(clinicsync::conflicts::classify_path(p), clinicsync::conflicts::Classified::Original(_))
        })
        .collect()
}

#[test]
fn two_sites_over_rclone_bisync_converge_and_their_folders_come_to_rest() {
    if !client_installed("rclone", "version") {
        return;
    }
    let pair = Bisync { base: tempfile::tempdir().unwrap() };
    pair.run(&["up", "2"]);
    let fa = PathBuf::from(pair.run(&["folder", "1"]));
    let fb = PathBuf::from(pair.run(&["folder", "2"]));
    let dbs = tempfile::tempdir().unwrap();
    let (a, b) = (dbs.path().join("a.db"), dbs.path().join("b.db"));
    init_at(&a, &fa, "clinic");
    let ids: Vec<String> = (0..20).map(|n| add_patient(&app(&a), n, 2)).collect();
    sync_ok(&a);
    pair.bisync();
    init_at(&b, &fb, "branch");
    pair.bisync();
    sync_ok(&b);
    assert_eq!(dump(&a), dump(&b));

    // Both sites edit the same four patients (different fields) between
    // two passes of the client: rclone renames both sides of each file.
    for id in &ids[..4] {
        app(&a).execute("UPDATE patients SET phone = 'from the clinic' WHERE id = ?1", [id]).unwrap();
        app(&b).execute("UPDATE patients SET email = 'branch@example.org' WHERE id = ?1", [id]).unwrap();
    }
    sync_ok(&a);
    sync_ok(&b);
    pair.bisync();
    assert!(!copies_in(&fa).is_empty(), "rclone made its conflict copies");

    // A clinic's day: every site syncs, then the client passes, a few times.
    for _ in 0..6 {
        for db in [&a, &b] {
            let (code, report) = sync(db);
            assert!(code == 0 || code == 3, "{report:#}");
        }
        pair.bisync();
    }
    assert_eq!(dump(&a), dump(&b));
    for id in &ids[..4] {
        assert_eq!(patient_field(&a, id, "phone").as_deref(), Some("from the clinic"));
        assert_eq!(patient_field(&a, id, "email").as_deref(), Some("branch@example.org"));
    }
    for folder in [&fa, &fb] {
        assert_eq!(copies_in(folder), Vec::<String>::new(), "no copy left in {}", folder.display());
        for id in &ids {
            assert!(patient_file(folder, id).exists(), "{id} has its file in {}", folder.display());
        }
    }
    // At rest: another round changes nothing.
    for db in [&a, &b] {
        let report = sync_ok(db);
        assert_eq!(report["counts"]["files_written"], 0, "{report:#}");
    }
}

#[test]
fn a_site_that_edited_a_patient_offline_while_the_others_purged_it_deletes_it_on_real_syncthing() {
    if !client_installed("syncthing", "--version") {
        return;
    }
    let trio = Pair { base: tempfile::tempdir().unwrap() };
    trio.run(&["up", "3"]);
    let folders: Vec<PathBuf> = (1..=3).map(|i| trio.folder(i)).collect();
    let dbs = tempfile::tempdir().unwrap();
    let sites: Vec<PathBuf> = ["a", "b", "c"].iter().map(|n| dbs.path().join(format!("{n}.db"))).collect();
    let (a, b, c) = (&sites[0], &sites[1], &sites[2]);
    init_at(a, &folders[0], "clinic");
    trio.wait_idle();
    init_at(b, &folders[1], "branch");
    init_at(c, &folders[2], "laptop");
    let doomed = add_patient(&app(a), 1, 2);
    let kept = add_patient(&app(a), 2, 1);
    sync_ok(a);
    trio.wait_idle();
    for db in [b, c, a] {
        sync_ok(db);
        trio.wait_idle();
    }
    assert_eq!(dump(a), dump(c));

    // The laptop leaves for weeks. The clinic deletes a patient, and a
    // month later the clinic and the branch purge it.
    trio.run(&["pause", "3"]);
    app(a).execute("DELETE FROM patients WHERE id = ?1", [&doomed]).unwrap();
    for db in [a, b, a, b] {
        sync_ok(db);
        trio.wait_idle();
    }
    days_pass(31);
    let mut purged = 0;
    for db in [a, b, a, b] {
        purged += sync_ok(db)["counts"]["tombstones_purged"].as_u64().unwrap();
        trio.wait_idle();
    }
    assert!(purged > 0, "the clinic and the branch purged the patient");
    assert!(!patient_file(&folders[0], &doomed).exists());

    // Offline, the laptop edits that patient; its run rewrites the file.
    app(c).execute("UPDATE patients SET phone = 'typed on the laptop' WHERE id = ?1", [&doomed]).unwrap();
    sync_ok(c);
    // Back online: Syncthing lets the edited file win over the deletion.
    trio.run(&["resume", "3"]);
    trio.wait_idle();
    assert!(patient_file(&folders[0], &doomed).exists(), "Syncthing brought the file back");

    let mut told = false;
    for _ in 0..3 {
        for db in [a, b, c] {
            let (code, report) = sync(db);
            assert!(code == 0 || code == 3, "{report:#}");
            told |= events_of(&report, "purge")
                .iter()
                .any(|e| e["message"].as_str().unwrap().contains("deleted and purged here"));
            trio.wait_idle();
        }
    }
    assert!(told, "a site that purged the patient said the file brought it back");
    for db in [a, b, c] {
        assert!(!has_patient(db, &doomed), "the delete wins at {}", db.display());
        assert!(has_patient(db, &kept));
    }
    assert_eq!(dump(a), dump(b));
    assert_eq!(dump(a), dump(c));
    let records = json_of(c, &["conflicts"]);
    assert!(
        records
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["kind"] == "deleted" && r["lost_value"] == "typed on the laptop"),
        "the laptop keeps its edit for review: {records:#}"
    );
}
