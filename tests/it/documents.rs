//! Documents travel with their rows: a file added, changed or deleted at
//! one site follows at the other, byte for byte, checked on every copy;
//! a damaged or missing body waits or fails without being placed; paths
//! that could leave the documents folder are refused. Through the CLI, on
//! real files.

use std::fs;
use std::path::{Path, PathBuf};

use rusqlite::params;

use crate::support::*;

/// Two sites with documents folders (`a-docs`, `b-docs`) and one shared
/// patient.
struct Docs {
    family: Family,
    a: PathBuf,
    b: PathBuf,
    patient: String,
}

impl Docs {
    fn new() -> Docs {
        let family = Family::new();
        let mut dbs = Vec::new();
        for site in ["a", "b"] {
            let docs = family.dir.path().join(format!("{site}-docs"));
            fs::create_dir_all(&docs).unwrap();
            let db = family.db(site);
            cli(&db)
                .args(["init", "--folder"])
                .arg(family.folder())
                .args(["--site-name", site, "--documents-folder"])
                .arg(&docs)
                .assert()
                .success();
            dbs.push(db);
        }
        let b = dbs.pop().unwrap();
        let a = dbs.pop().unwrap();
        let patient = add_patient(&app(&a), 1, 0);
        sync_ok(&a);
        sync_ok(&b);
        Docs { family, a, b, patient }
    }

    fn docs(&self, site: &str) -> PathBuf {
        self.family.dir.path().join(format!("{site}-docs"))
    }

    /// Adds a document row at `db` and writes its file there.
    fn add(&self, db: &Path, site: &str, id: &str, path: &str, bytes: &[u8]) {
        let full = self.docs(site).join(path);
        fs::create_dir_all(full.parent().unwrap()).unwrap();
        fs::write(&full, bytes).unwrap();
        app(db)
            .execute(
                "INSERT INTO documents (id, patient_id, file_name, mime_type) VALUES (?1, ?2, ?3, 'application/pdf')",
                params![id, self.patient, path],
            )
            .unwrap();
    }

    fn bodies(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for shard in fs::read_dir(self.family.folder().join("docs")).into_iter().flatten() {
            for body in fs::read_dir(shard.unwrap().path()).unwrap() {
                out.push(body.unwrap().path());
            }
        }
        out.sort();
        out
    }
}

/// Bytes of every value, longer than one piece of a streamed copy.
fn pdf_bytes(seed: u8, len: usize) -> Vec<u8> {
    let mut out = b"%PDF-1.4\n".to_vec();
    out.extend((0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    out
}

#[test]
fn a_document_added_changed_and_deleted_at_one_site_follows_at_the_other() {
    let t = Docs::new();
    let first = pdf_bytes(1, 700_000);
    t.add(&t.a, "a", "doc-1", "letters/referral.pdf", &first);
    let report = sync_ok(&t.a);
    assert_eq!(report["counts"]["documents"]["exported"], 1);
    assert_eq!(report["counts"]["documents"]["published"], 1);
    assert_eq!(t.bodies().len(), 1);
    let report = sync_ok(&t.b);
    assert_eq!(report["counts"]["documents"]["placed"], 1, "{report:#}");
    let at_b = t.docs("b").join("letters/referral.pdf");
    assert_eq!(fs::read(&at_b).unwrap(), first, "byte for byte");

    // A run with nothing new reads no document file, at either site.
    for db in [&t.a, &t.b] {
        let quiet = sync_ok(db);
        assert_eq!(quiet["counts"]["documents"]["files_read"], 0, "{quiet:#}");
        assert_eq!(quiet["counts"]["exported_rows"], 0);
    }

    // Edited in place at A: the new bytes reach B.
    let second = pdf_bytes(2, 500_000);
    fs::write(t.docs("a").join("letters/referral.pdf"), &second).unwrap();
    let report = sync_ok(&t.a);
    assert_eq!(report["counts"]["documents"]["exported"], 1);
    sync_ok(&t.b);
    assert_eq!(fs::read(&at_b).unwrap(), second);
    assert_eq!(t.bodies().len(), 2, "the old body stays until it is purged");

    // Deleted at A: B's file goes to the trash, never unlinked.
    app(&t.a).execute("DELETE FROM documents WHERE id = 'doc-1'", []).unwrap();
    sync_ok(&t.a);
    let report = sync_ok(&t.b);
    assert_eq!(report["counts"]["documents"]["trashed"], 1, "{report:#}");
    assert!(!at_b.exists());
    let listed = json_of(&t.b, &["documents"]);
    let trash = listed["trash"].as_array().unwrap();
    assert_eq!(trash.len(), 1, "{listed:#}");
    assert_eq!(trash[0]["original"], "letters/referral.pdf");
    let trashed = t.docs("b").join(trash[0]["trashed"].as_str().unwrap());
    assert_eq!(fs::read(trashed).unwrap(), second, "the trash keeps the file");
    assert!(
        t.docs("a").join("letters/referral.pdf").exists(),
        "the app's own delete leaves its file to the app"
    );
}

#[test]
fn a_damaged_body_is_never_placed_and_is_placed_once_its_site_publishes_it_again() {
    let t = Docs::new();
    let bytes = pdf_bytes(3, 300_000);
    t.add(&t.a, "a", "doc-1", "scan.pdf", &bytes);
    sync_ok(&t.a);
    let body = t.bodies().pop().unwrap();
    let mut damaged = fs::read(&body).unwrap();
    damaged[123_456] ^= 0x01;
    fs::write(&body, &damaged).unwrap();

    let (code, report) = sync(&t.b);
    assert_eq!(code, 3, "partial: {report:#}");
    assert_eq!(report["outcome"], "partial");
    assert!(!t.docs("b").join("scan.pdf").exists(), "a damaged body is never placed");
    let said = events_of(&report, "document")
        .into_iter()
        .map(|e| e["message"].as_str().unwrap().to_owned())
        .find(|m| m.contains("CRC file integrity check failed"))
        .unwrap_or_else(|| panic!("no integrity event: {report:#}"));
    let good_sha = body.file_name().unwrap().to_str().unwrap();
    assert!(said.contains(good_sha) && said.contains("expected 300009 bytes"), "{said}");
    assert!(said.contains("scan.pdf of Given1 Family1 not placed"), "names the patient: {said}");
    let status = json_of(&t.b, &["status"]);
    assert_eq!(status["documents"]["failed"], 1, "{status:#}");
    let listed = json_of(&t.b, &["documents"]);
    assert_eq!(listed["failed"][0]["path"], "scan.pdf");
    // Tried again, still refused, while the copy stays damaged.
    assert_eq!(sync(&t.b).0, 3);
    assert_eq!(fs::read(&body).unwrap(), damaged, "B leaves the bad copy for A to replace");

    // A's full scan finds its body damaged and publishes it again.
    let (code, report) = sync_with(&t.a, &["--full-scan"]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["counts"]["documents"]["published"], 1, "{report:#}");
    assert_eq!(fs::read(&body).unwrap(), bytes);
    sync_ok(&t.b);
    assert_eq!(fs::read(t.docs("b").join("scan.pdf")).unwrap(), bytes);
    assert_eq!(json_of(&t.b, &["status"])["documents"]["failed"], 0);
}

#[test]
fn a_row_whose_body_has_not_arrived_waits_and_the_run_is_ok() {
    let t = Docs::new();
    let bytes = pdf_bytes(4, 10_000);
    t.add(&t.a, "a", "doc-1", "notes/x-ray.pdf", &bytes);
    sync_ok(&t.a);
    let body = t.bodies().pop().unwrap();
    let aside = t.family.dir.path().join("body-in-transit");
    fs::rename(&body, &aside).unwrap();

    // The row arrives before the body.
    let report = sync_ok(&t.b);
    assert_eq!(report["counts"]["documents"]["waiting"], 1, "{report:#}");
    assert!(
        events_of(&report, "document")
            .iter()
            .any(|e| e["message"].as_str().unwrap().starts_with("waiting for 1 documents")),
        "{report:#}"
    );
    let status = json_of(&t.b, &["status"]);
    assert_eq!(status["documents"]["waiting"], 1);
    assert_eq!(app(&t.b).query_row("SELECT count(*) FROM documents", [], |r| r.get::<_, i64>(0)).unwrap(), 1);

    // A zero-byte placeholder of the body (an online-only file, or one the
    // client has only begun): still waiting, nothing placed.
    fs::write(&body, b"").unwrap();
    let report = sync_ok(&t.b);
    assert_eq!(report["counts"]["documents"]["waiting"], 1);
    assert!(!t.docs("b").join("notes/x-ray.pdf").exists());

    fs::rename(&aside, &body).unwrap();
    let report = sync_ok(&t.b);
    assert_eq!(report["counts"]["documents"]["placed"], 1);
    assert_eq!(fs::read(t.docs("b").join("notes/x-ray.pdf")).unwrap(), bytes);
    assert_eq!(json_of(&t.b, &["status"])["documents"]["waiting"], 0);
}

#[test]
fn one_file_at_two_sites_is_stored_once_and_concurrent_edits_keep_both_bodies() {
    let t = Docs::new();
    let same = pdf_bytes(5, 20_000);
    t.add(&t.a, "a", "doc-a", "consent.pdf", &same);
    t.add(&t.b, "b", "doc-b", "signed/consent.pdf", &same);
    sync_ok(&t.a);
    sync_ok(&t.b);
    sync_ok(&t.a);
    assert_eq!(t.bodies().len(), 1, "the same bytes are stored once");
    assert_eq!(fs::read(t.docs("a").join("signed/consent.pdf")).unwrap(), same);
    assert_eq!(fs::read(t.docs("b").join("consent.pdf")).unwrap(), same);

    // Both sites change the same document before either syncs.
    let (at_a, at_b) = (pdf_bytes(6, 20_000), pdf_bytes(7, 20_000));
    fs::write(t.docs("a").join("consent.pdf"), &at_a).unwrap();
    fs::write(t.docs("b").join("consent.pdf"), &at_b).unwrap();
    sync_ok(&t.a);
    sync_ok(&t.b);
    sync_ok(&t.a);
    assert_eq!(t.bodies().len(), 3, "both new bodies are kept");
    let shown_a = fs::read(t.docs("a").join("consent.pdf")).unwrap();
    assert_eq!(shown_a, fs::read(t.docs("b").join("consent.pdf")).unwrap(), "both show the same body");
    assert!(shown_a == at_a || shown_a == at_b);
    for db in [&t.a, &t.b] {
        let open = json_of(db, &["conflicts"]);
        let open = open.as_array().unwrap();
        assert_eq!(open.len(), 1, "{open:#?}");
        assert_eq!((open[0]["table"].as_str(), open[0]["pk"].as_str()), (Some("documents"), Some("doc-a")));
        let lost = open[0]["lost_value"].as_str().unwrap();
        assert!(lost.starts_with("the document's file of 20009 bytes, sha256 "), "{lost}");
    }
    // Long after, nothing named goes: both sides of the open conflict, and
    // the first body, which doc-b at B still names.
    days_pass(8);
    for db in [&t.a, &t.b, &t.a, &t.b] {
        sync_ok(db);
    }
    let left = t.bodies();
    assert_eq!(left.len(), 3, "{left:?}");
    let shas: Vec<String> =
        left.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    let sha_of = |bytes: &[u8]| {
        use sha2::Digest;
        let mut hex = String::new();
        for b in sha2::Sha256::digest(bytes) {
            hex.push_str(&format!("{b:02x}"));
        }
        hex
    };
    for bytes in [&at_a, &at_b, &same] {
        assert!(shas.contains(&sha_of(bytes)), "{shas:?}");
    }
    // Once doc-b is deleted and its deletion purged, its body goes too.
    app(&t.b).execute("DELETE FROM documents WHERE id = 'doc-b'", []).unwrap();
    for db in [&t.b, &t.a] {
        sync_ok(db);
    }
    days_pass(8);
    for db in [&t.a, &t.b, &t.a, &t.b] {
        sync_ok(db);
    }
    // Purged now; the body it named goes a retention later.
    days_pass(8);
    for db in [&t.a, &t.b, &t.a, &t.b] {
        sync_ok(db);
    }
    let left: Vec<String> =
        t.bodies().iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert!(!left.contains(&sha_of(&same)), "{left:?}");
    assert_eq!(left.len(), 2, "{left:?}");
}

#[test]
fn paths_that_could_leave_the_documents_folder_are_refused_and_nothing_outside_is_touched() {
    let t = Docs::new();
    let outside = t.family.dir.path().join("outside.txt");
    fs::write(&outside, b"not a document").unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    fs::write(elsewhere.path().join("secret.pdf"), b"secret").unwrap();
    std::os::unix::fs::symlink(elsewhere.path().join("secret.pdf"), t.docs("a").join("link.pdf")).unwrap();
    std::os::unix::fs::symlink(elsewhere.path(), t.docs("a").join("linked")).unwrap();
    let conn = app(&t.a);
    for (id, path) in [
        ("up", "../outside.txt"),
        ("abs", outside.to_str().unwrap()),
        ("link", "link.pdf"),
        ("through", "linked/secret.pdf"),
    ] {
        conn.execute(
            "INSERT INTO documents (id, patient_id, file_name) VALUES (?1, ?2, ?3)",
            params![id, t.patient, path],
        )
        .unwrap();
    }
    let (code, report) = sync(&t.a);
    assert_eq!(code, 3, "{report:#}");
    let said: Vec<String> =
        events_of(&report, "document").iter().map(|e| e["message"].as_str().unwrap().to_owned()).collect();
    for (path, why) in [
        ("../outside.txt", "goes up out of the documents folder"),
        (outside.to_str().unwrap(), "absolute"),
        ("link.pdf", "not a regular file"),
        ("linked/secret.pdf", "passes through the link"),
    ] {
        assert!(said.iter().any(|m| m.contains(path) && m.contains(why)), "{path}: {said:#?}");
    }
    assert!(!t.family.folder().join("docs").exists(), "nothing was read into the folder");
    assert_eq!(report["counts"]["documents"]["refused"], 4);
    // B receives the rows; it writes nothing outside its documents folder.
    let (code, _) = sync(&t.b);
    assert_eq!(code, 0, "the rows have no body to place");
    assert_eq!(fs::read(&outside).unwrap(), b"not a document");
    assert_eq!(fs::read(elsewhere.path().join("secret.pdf")).unwrap(), b"secret");
    assert!(fs::read_dir(t.docs("b")).unwrap().next().is_none());
}

#[test]
fn a_file_whose_checksum_columns_disagree_with_the_row_is_not_exported() {
    let t = Docs::new();
    t.add(&t.a, "a", "doc-1", "report.pdf", b"the real report");
    app(&t.a).execute("UPDATE documents SET byte_size = 3, sha256 = 'abc' WHERE id = 'doc-1'", []).unwrap();
    let (code, report) = sync(&t.a);
    assert_eq!(code, 3, "{report:#}");
    assert!(
        events_of(&report, "document")
            .iter()
            .any(|e| e["message"].as_str().unwrap().contains("the row's sha256 column says abc")),
        "{report:#}"
    );
    assert!(!t.family.folder().join("docs").exists());
}

#[test]
fn sync_docs_only_carries_document_files_and_leaves_other_sites_changes_for_the_next_sync() {
    let t = Docs::new();
    t.add(&t.a, "a", "doc-1", "letter.pdf", b"a letter");
    let (code, report) = sync_with(&t.a, &["--docs-only"]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["trigger"], "documents");
    assert_eq!(report["counts"]["documents"]["published"], 1);
    // B's documents-only run reads no change-log: the row is not here yet.
    let (code, report) = sync_with(&t.b, &["--docs-only"]);
    assert_eq!(code, 0);
    assert_eq!(report["counts"]["segments_applied"], 0, "{report:#}");
    assert!(!t.docs("b").join("letter.pdf").exists());
    sync_ok(&t.b);
    assert_eq!(fs::read(t.docs("b").join("letter.pdf")).unwrap(), b"a letter");
}

#[test]
fn while_the_service_runs_a_document_changed_in_place_is_exported_within_seconds() {
    let t = Docs::new();
    t.add(&t.a, "a", "doc-1", "letter.pdf", b"first version");
    sync_ok(&t.a);
    set(&t.a, &["sync_interval=1h"]);
    let service = crate::service::Service::start(&t.a);
    service.wait_idle();
    assert_eq!(t.bodies().len(), 1);
    // The app overwrites the file and changes no row: only the watch on
    // the documents folder sees it (the interval is an hour).
    fs::write(t.docs("a").join("letter.pdf"), b"second version, signed").unwrap();
    let took = service
        .wait_for("the new body in the folder", std::time::Duration::from_secs(10), || t.bodies().len() == 2);
    eprintln!("exported {took:?} after the file changed");
    service.wait_idle();
    drop(service);
    sync_ok(&t.b);
    assert_eq!(fs::read(t.docs("b").join("letter.pdf")).unwrap(), b"second version, signed");
}

#[test]
fn the_page_shows_documents_waiting_and_its_button_runs_a_documents_only_sync() {
    let t = Docs::new();
    t.add(&t.a, "a", "doc-1", "letter.pdf", b"for the page");
    sync_ok(&t.a);
    let body = t.bodies().pop().unwrap();
    let aside = t.family.dir.path().join("in-transit");
    fs::rename(&body, &aside).unwrap();
    sync_ok(&t.b);
    let page = crate::service::Page::open(&t.b);
    let (_, html) = page.get("/");
    assert!(html.contains("waiting for 1 documents whose files have not arrived yet"), "{html}");
    assert!(html.contains("Sync documents now"));

    // The body arrives; the button places it (a documents-only run).
    fs::rename(&aside, &body).unwrap();
    let (code, location, _) = page.post("/sync-documents", &[]);
    assert_eq!((code, location.as_str()), (303, "/logs"), "redirected to Latest Logs once the run is done");
    assert_eq!(fs::read(t.docs("b").join("letter.pdf")).unwrap(), b"for the page");
    let latest = json_of(&t.b, &["log", "--last", "1"]);
    assert_eq!(latest[0]["run"]["trigger"], "documents", "{latest:#}");
    assert!(page.get("/").1.contains("every document's file is in step"));
    assert_eq!(page.post_body("/sync-documents", String::new()).0, 403, "the CSRF token is required");
}

#[test]
fn a_large_document_travels_in_pieces_not_whole_in_memory() {
    let t = Docs::new();
    let size = 96 << 20;
    let path = t.docs("a").join("imaging/series.bin");
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    {
        use std::io::Write;
        let mut file = std::io::BufWriter::new(fs::File::create(&path).unwrap());
        let piece: Vec<u8> = (0..1 << 20).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        for k in 0..96u8 {
            let mut p = piece.clone();
            p[0] = k;
            file.write_all(&p).unwrap();
        }
    }
    app(&t.a)
        .execute(
            "INSERT INTO documents (id, patient_id, file_name) VALUES ('big', ?1, 'imaging/series.bin')",
            [&t.patient],
        )
        .unwrap();
    let sent = sync_ok(&t.a);
    let got = sync_ok(&t.b);
    assert_eq!(got["counts"]["documents"]["placed"], 1);
    for report in [&sent, &got] {
        let rss_mib = report["peak_rss_kib"].as_u64().unwrap() / 1024;
        assert!(rss_mib < 48, "a 96 MiB document took {rss_mib} MiB of memory: {report:#}");
    }
    let placed = t.docs("b").join("imaging/series.bin");
    assert_eq!(fs::metadata(&placed).unwrap().len(), size);
    assert!(fs::read(&placed).unwrap() == fs::read(&path).unwrap(), "byte for byte");
}

#[test]
fn a_hostile_body_in_the_folder_is_never_followed_read_whole_or_placed() {
    let t = Docs::new();
    let bytes = pdf_bytes(9, 50_000);
    t.add(&t.a, "a", "doc-1", "x.pdf", &bytes);
    sync_ok(&t.a);
    let body = t.bodies().pop().unwrap();
    let good = fs::read(&body).unwrap();

    // Larger than the row says: refused without being copied.
    let mut larger = good.clone();
    larger.extend_from_slice(&[0; 4096]);
    fs::write(&body, &larger).unwrap();
    let (code, report) = sync(&t.b);
    assert_eq!(code, 3, "{report:#}");
    assert_eq!(report["counts"]["documents"]["files_read"], 0, "{report:#}");
    assert!(format!("{report}").contains("the copy in the folder has 54105 bytes"), "{report:#}");

    // A link to a file elsewhere with the right bytes, and a FIFO: neither
    // is followed or opened (the run does not hang), nothing is placed.
    let elsewhere = t.family.dir.path().join("elsewhere.pdf");
    fs::write(&elsewhere, &good).unwrap();
    fs::remove_file(&body).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &body).unwrap();
    let (_, report) = sync(&t.b);
    assert_eq!(report["counts"]["documents"]["placed"], 0, "{report:#}");
    fs::remove_file(&body).unwrap();
    assert!(std::process::Command::new("mkfifo").arg(&body).status().unwrap().success());
    let (_, report) = sync(&t.b);
    assert_eq!(report["counts"]["documents"]["placed"], 0, "{report:#}");
    assert!(!t.docs("b").join("x.pdf").exists());

    fs::remove_file(&body).unwrap();
    fs::write(&body, &good).unwrap();
    sync_ok(&t.b);
    assert_eq!(fs::read(t.docs("b").join("x.pdf")).unwrap(), bytes);
}

#[test]
fn a_body_nothing_names_is_removed_after_every_site_has_the_change_and_the_retention_passed() {
    let t = Docs::new();
    t.add(&t.a, "a", "doc-1", "letter.pdf", b"first draft");
    sync_ok(&t.a);
    sync_ok(&t.b);
    let first = t.bodies();
    fs::write(t.docs("a").join("letter.pdf"), b"signed copy").unwrap();
    sync_ok(&t.a);
    sync_ok(&t.b);
    assert_eq!(t.bodies().len(), 2);
    // Within the retention nothing goes, however often the sites sync.
    days_pass(1);
    sync_ok(&t.a);
    sync_ok(&t.b);
    assert_eq!(t.bodies().len(), 2);
    days_pass(7);
    let report = sync_ok(&t.a);
    assert_eq!(report["counts"]["documents"]["bodies_removed"], 1, "{report:#}");
    let left = t.bodies();
    assert_eq!(left.len(), 1);
    assert!(!left.contains(&first[0]), "the superseded body went, the current one stays");
    sync_ok(&t.b);
    assert_eq!(fs::read(t.docs("b").join("letter.pdf")).unwrap(), b"signed copy");
}

#[test]
fn two_rows_naming_one_file_never_overwrite_each_other() {
    let t = Docs::new();
    t.add(&t.a, "a", "doc-1", "letters/a.pdf", b"the first letter");
    sync_ok(&t.a);
    sync_ok(&t.b);
    // Here: a second row names the same file, written another way.
    app(&t.a)
        .execute(
            "INSERT INTO documents (id, patient_id, file_name) VALUES ('doc-2', ?1, './letters//a.pdf')",
            [&t.patient],
        )
        .unwrap();
    let (code, report) = sync(&t.a);
    assert_eq!(code, 3, "{report:#}");
    assert!(format!("{report}").contains("another row of the table names the same file"), "{report:#}");
    // From elsewhere: a row with its own body moved onto doc-1's file.
    t.add(&t.a, "a", "doc-3", "other.pdf", b"something else");
    app(&t.a).execute("DELETE FROM documents WHERE id = 'doc-2'", []).unwrap();
    sync(&t.a);
    app(&t.a).execute("UPDATE documents SET file_name = 'LETTERS/a.pdf' WHERE id = 'doc-3'", []).unwrap();
    sync(&t.a);
    let (code, report) = sync(&t.b);
    assert_eq!(code, 3, "{report:#}");
    assert!(format!("{report}").contains("is the file of another document here"), "{report:#}");
    assert_eq!(fs::read(t.docs("b").join("letters/a.pdf")).unwrap(), b"the first letter");
    assert_eq!(fs::read(t.docs("a").join("letters/a.pdf")).unwrap(), b"the first letter");
}
