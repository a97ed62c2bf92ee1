//! The change-log: segments delivered late, twice or torn; a dormant site
//! returning after compaction; compaction never outrunning an active site;
//! a run with nothing to do touching no patient directory; read-repair
//! after a provider kept an older file, and by the patients' digests.

use std::fs;
use std::path::Path;

use clinicsync::changelog::{Peer, Retention, compaction_limit};
use proptest::prelude::*;
use rusqlite::params;

use crate::support::*;

fn site_id(db: &Path) -> String {
    clinicsync::db::Db::open(db).unwrap().site_config().unwrap().site.to_string()
}

#[test]
fn segments_late_twice_or_torn_wait_at_the_gap_and_apply_once() {
    // Two folders stand in for two computers; the test is the cloud client.
    let family = Family::new();
    let folder_a = family.folder();
    let folder_b = family.dir.path().join("shared-at-b");
    let a = family.init("a");
    copy_tree(&folder_a, &folder_b);
    let b = family.db("b");
    cli(&b).args(["init", "--folder"]).arg(&folder_b).assert().success();

    let conn = app(&a);
    let first = add_patient(&conn, 1, 2);
    sync_ok(&a);
    let second = add_patient(&conn, 2, 2);
    conn.execute("UPDATE patients SET phone = 'new' WHERE id = ?1", [&first]).unwrap();
    sync_ok(&a);
    let site = site_id(&a);
    let seg = |n: u64| format!("log/{site}/{n:010}.xml");
    let site_file = format!("sites/{site}.xml");
    let deliver = |rel: &str| {
        let to = folder_b.join(rel);
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        fs::copy(folder_a.join(rel), to).unwrap();
    };

    // Segment 2 and the site file arrive first: B waits at the gap.
    deliver(&seg(2));
    deliver(&site_file);
    let (code, report) = sync(&b);
    assert_eq!(code, 3, "{report:#}");
    assert!(events_of(&report, "gap")[0]["message"].as_str().unwrap().contains("segment #1"));
    assert_eq!(report["counts"]["segments_applied"], 0, "nothing after the gap is applied");
    assert_eq!(dump(&b)[0].1.len(), 0);

    // Segment 1 arrives torn: still waiting, nothing applied.
    let whole = fs::read(folder_a.join(seg(1))).unwrap();
    fs::create_dir_all(folder_b.join(seg(1)).parent().unwrap()).unwrap();
    fs::write(folder_b.join(seg(1)), &whole[..whole.len() * 2 / 3]).unwrap();
    let (code, report) = sync(&b);
    assert_eq!(code, 3, "{report:#}");
    assert!(events_of(&report, "skipped")[0]["message"].as_str().unwrap().contains("trailer"));
    assert_eq!(dump(&b)[0].1.len(), 0);

    // Whole at last: both segments apply, in order.
    deliver(&seg(1));
    let report = sync_ok(&b);
    assert_eq!(report["counts"]["segments_applied"], 2);
    assert_eq!(patient_field(&b, &first, "phone").unwrap(), "new");
    assert!(patient_field(&b, &second, "phone").is_some());
    assert_eq!(dump(&a), dump(&b));

    // Delivered twice (a client re-downloads it): nothing is applied again.
    deliver(&seg(1));
    deliver(&seg(2));
    let report = sync_ok(&b);
    assert_eq!(report["counts"]["segments_applied"], 0);
    assert_eq!(report["counts"]["rows_applied"], 0);
}

#[test]
fn a_segment_that_cannot_be_applied_keeps_nothing_of_it_and_waits() {
    let (family, a, b) = two_sites();
    let conn = app(&a);
    let first = add_patient(&conn, 1, 0);
    let second = add_patient(&conn, 2, 0);
    sync_ok(&a);
    sync_ok(&b);
    // B's recorded state of the second patient is damaged (a disk error,
    // say): joining anything into it fails.
    rusqlite::Connection::open(&b)
        .unwrap()
        .execute("UPDATE _cs_rows SET state = x'ff' WHERE pk = ?1", [&second])
        .unwrap();
    // One export, one segment: both patients' phones. The first patient is
    // joined before the second fails.
    let first_file = patient_file(&family.folder(), &first);
    let old_file = fs::read(&first_file).unwrap();
    conn.execute("UPDATE patients SET phone = 'new' WHERE id IN (?1, ?2)", [&first, &second]).unwrap();
    sync_ok(&a);
    // The segment has arrived at B, the patient file not yet (B reads it
    // like any other file once it has).
    fs::write(&first_file, &old_file).unwrap();
    for _ in 0..2 {
        let (code, report) = sync(&b);
        assert_ne!(code, 0, "{report:#}");
        let skipped = events_of(&report, "skipped");
        assert!(
            skipped.iter().any(|e| e["message"].as_str().unwrap().contains("nothing of it was kept")),
            "{report:#}"
        );
        assert_eq!(report["counts"]["segments_applied"], 0, "{report:#}");
        assert_eq!(
            patient_field(&b, &first, "phone").unwrap(),
            "+1 555 0001",
            "nothing of the segment stays"
        );
    }
}

#[test]
fn a_dormant_site_returns_after_compaction_scans_and_converges_without_resurrecting() {
    let (family, a, b) = two_sites();
    let c = family.init("c");
    let conn_a = app(&a);
    let keep = add_patient(&conn_a, 1, 2);
    let doomed = add_patient(&conn_a, 2, 2);
    sync_ok(&a);
    sync_ok(&b);
    sync_ok(&c);
    // C goes away. Its app keeps working: an edit to a patient.
    app(&c).execute("UPDATE patients SET email = 'edited while away' WHERE id = ?1", [&keep]).unwrap();
    // Meanwhile A deletes a patient's invoices and B edits; both sync often.
    conn_a.execute("DELETE FROM invoices WHERE patient_id = ?1", [&doomed]).unwrap();
    app(&b).execute("UPDATE patients SET phone = 'from B' WHERE id = ?1", [&keep]).unwrap();
    for db in [&a, &b, &a, &b] {
        sync_ok(db);
    }
    // A month passes: the retention (7 days) and C's dormancy (30 days).
    days_pass(31);
    let mut deleted = 0;
    for db in [&a, &b, &a, &b] {
        deleted += sync_ok(db)["counts"]["segments_deleted"].as_u64().unwrap();
    }
    assert!(deleted > 0, "A and B compacted while C was dormant");
    let a_log = family.folder().join("log").join(site_id(&a));
    assert!(!a_log.join(format!("{:010}.xml", 1)).exists(), "A's first segment is gone");

    // C returns: it must scan the patient files, then continue from the logs.
    let report = sync_ok(&c);
    assert_eq!(report["counts"]["full_scan"], true, "{report:#}");
    sync_ok(&a);
    sync_ok(&b);
    // Caught up: C continues from the logs, it does not scan again.
    let again = sync_ok(&c);
    assert_eq!(again["counts"]["full_scan"], false, "{again:#}");
    assert_eq!(dump(&a), dump(&b));
    assert_eq!(dump(&a), dump(&c));
    let invoices: i64 = app(&c)
        .query_row("SELECT count(*) FROM invoices WHERE patient_id = ?1", [&doomed], |r| r.get(0))
        .unwrap();
    assert_eq!(invoices, 0, "deleted rows stay deleted at the returning site");
    assert_eq!(patient_field(&a, &keep, "email").unwrap(), "edited while away");
    assert_eq!(patient_field(&c, &keep, "phone").unwrap(), "from B");
}

#[test]
fn a_run_with_nothing_to_do_lists_no_patient_directory() {
    let (family, a, b) = two_sites();
    let conn = app(&a);
    for n in 0..20 {
        add_patient(&conn, n, 1);
    }
    // Three more patients whose files share a shard folder with patient 3's.
    let shard = |n: u32| clinicsync::model::shard_of(&clinicsync::model::patient_file_name(&uuid(1, n)));
    let neighbours: Vec<u32> = (20..100_000).filter(|n| shard(*n) == shard(3)).take(3).collect();
    for n in &neighbours {
        add_patient(&conn, *n, 1);
    }
    sync_ok(&a);
    sync_ok(&b);
    sync_ok(&a);
    let mut statted_at_rest = 0;
    for db in [&a, &b] {
        let report = sync_ok(db);
        let folder = &report["counts"]["folder"];
        statted_at_rest = folder["entries_statted"].as_u64().unwrap();
        assert_eq!(folder["patient_lists"], 0, "{report:#}");
        assert_eq!(report["counts"]["full_scan"], false);
        assert_eq!(report["counts"]["files_scanned"], 0);
        assert_eq!(folder["files_written"], 0, "nothing is rewritten: {report:#}");
    }
    // A small change reads only what it touched, and lists only the shard
    // folder the other site wrote into (a copy could have arrived there).
    conn.execute("UPDATE patients SET phone = 'x' WHERE id = ?1", [uuid(1, 3)]).unwrap();
    let report = sync_ok(&a);
    assert_eq!(report["counts"]["folder"]["patient_lists"], 0, "its own write is not news: {report:#}");
    let report = sync_ok(&b);
    assert_eq!(report["counts"]["folder"]["patient_lists"], 1);
    assert_eq!(report["counts"]["segments_applied"], 1);
    assert_eq!(
        report["counts"]["files_scanned"], 1,
        "only the touched patient's file is read back, not the files beside it in the listed folder: {report:#}"
    );
    assert_eq!(
        report["counts"]["folder"]["entries_statted"], statted_at_rest,
        "nor are they statted: each is the file B last read or wrote: {report:#}"
    );
    // A file another writer put in place there without a change-log (a
    // client bringing back a version) is statted, found changed and read.
    let neighbour = patient_file(&family.folder(), &uuid(1, neighbours[0]));
    let put = neighbour.with_extension("put");
    std::fs::copy(&neighbour, &put).unwrap();
    std::fs::rename(&put, &neighbour).unwrap();
    let report = sync_ok(&b);
    assert_eq!(report["counts"]["folder"]["patient_lists"], 1, "{report:#}");
    assert_eq!(report["counts"]["folder"]["entries_statted"], statted_at_rest + 1, "{report:#}");
    assert_eq!(report["counts"]["files_scanned"], 1, "{report:#}");
    let report = sync_ok(&b);
    assert_eq!(report["counts"]["folder"]["patient_lists"], 0, "nothing new since");

    // With logs off, every run scans.
    set(&b, &["use_logs=off"]);
    let report = sync_ok(&b);
    assert_eq!(report["counts"]["full_scan"], true);
    assert!(report["counts"]["folder"]["patient_lists"].as_u64().unwrap() > 0);
}

#[test]
fn files_recorded_without_their_file_id_get_it_when_next_read_as_recorded() {
    let (_family, a, b) = two_sites();
    let conn = app(&a);
    for n in 0..5 {
        add_patient(&conn, n, 1);
    }
    sync_ok(&a);
    sync_ok(&b);
    let unknown = |db: &Path| -> i64 {
        app(db).query_row("SELECT count(*) FROM _cs_files WHERE file_id IS NULL", [], |r| r.get(0)).unwrap()
    };
    for db in [&a, &b] {
        assert_eq!(unknown(db), 0, "each file written or read is recorded with its id");
        // As a database recorded them before file ids were.
        app(db).execute("UPDATE _cs_files SET file_id = NULL", []).unwrap();
        let report = sync_with(db, &["--full-scan"]).1;
        assert_eq!(report["counts"]["files_scanned"], 5, "{report:#}");
        assert_eq!(unknown(db), 0);
    }
}

#[test]
fn a_provider_that_kept_an_older_file_is_repaired_by_the_next_site_that_applies_the_change() {
    let (family, a, b) = two_sites();
    let conn = app(&a);
    let id = add_patient(&conn, 1, 1);
    sync_ok(&a);
    sync_ok(&b);
    let path = patient_file(&family.folder(), &id);
    let before = fs::read(&path).unwrap();
    conn.execute("UPDATE patients SET phone = 'latest' WHERE id = ?1", params![id]).unwrap();
    sync_ok(&a);
    // A last-writer-wins client puts the older file back.
    fs::write(&path, &before).unwrap();
    sync_ok(&b);
    assert_eq!(patient_field(&b, &id, "phone").unwrap(), "latest");
    let repaired = fs::read_to_string(&path).unwrap();
    assert!(repaired.contains("latest"), "B rewrote the file it found behind");
}

#[test]
fn read_repair_settles_an_up_to_date_file_by_its_digest_and_still_repairs_one_behind() {
    let (family, a, b) = two_sites();
    let conn = app(&a);
    let id = add_patient(&conn, 1, 2);
    sync_ok(&a);
    // B compares the file with its rows the slow way once, and records the
    // patient's digest.
    let first = sync_ok(&b);
    assert_eq!(first["counts"]["files_digest_matched"], 0);
    let digests = || -> i64 {
        rusqlite::Connection::open(&b)
            .unwrap()
            .query_row("SELECT count(*) FROM _cs_digests WHERE patient = ?1", [&id], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(digests(), 1);
    // Up to date: A's file holds exactly what B's rows became, and B's
    // digest followed the change it applied.
    conn.execute("UPDATE patients SET phone = 'second' WHERE id = ?1", params![id]).unwrap();
    sync_ok(&a);
    let second = sync_ok(&b);
    assert_eq!(second["counts"]["files_digest_matched"], 1, "{second:#}");
    assert_eq!(second["counts"]["files_written"], 0, "{second:#}");
    assert_eq!(patient_field(&b, &id, "phone").unwrap(), "second");
    // Behind: a provider put the older file back. Its digest is not B's, so
    // B compares, finds it behind and writes it again.
    let path = patient_file(&family.folder(), &id);
    let older = fs::read(&path).unwrap();
    conn.execute("UPDATE patients SET phone = 'latest' WHERE id = ?1", params![id]).unwrap();
    sync_ok(&a);
    fs::write(&path, &older).unwrap();
    let third = sync_ok(&b);
    assert_eq!(third["counts"]["files_digest_matched"], 0, "{third:#}");
    assert!(fs::read_to_string(&path).unwrap().contains("latest"), "B rewrote the file it found behind");
    // B's own edit moves its digest too; A settles B's file by A's digest
    // once it has one.
    app(&b).execute("UPDATE patients SET phone = 'from b' WHERE id = ?1", params![id]).unwrap();
    sync_ok(&b);
    sync_ok(&a);
    for db in [&a, &b] {
        let stale = clinicsync::db::Db::open(db).unwrap().stale_digests().unwrap();
        assert!(stale.is_empty(), "{}: {stale:?}", db.display());
    }
    assert!(fs::read_to_string(&path).unwrap().contains("from b"));
}

#[test]
fn a_damaged_patient_file_does_not_hold_back_the_change_log() {
    let (family, a, b) = two_sites();
    let conn = app(&a);
    let first = add_patient(&conn, 1, 1);
    let second = add_patient(&conn, 2, 1);
    sync_ok(&a);
    sync_ok(&b);
    // The first patient's file is damaged in the folder; A cannot rewrite it.
    let path = patient_file(&family.folder(), &first);
    fs::write(&path, b"garbage from a broken disk").unwrap();
    conn.execute("UPDATE patients SET phone = 'one' WHERE id = ?1", [&first]).unwrap();
    let (code, _) = sync(&a);
    assert_eq!(code, 3, "A says it could not write that file");
    conn.execute("UPDATE patients SET phone = 'two' WHERE id = ?1", [&second]).unwrap();
    let (code, _) = sync(&a);
    assert_eq!(code, 3);
    // B still gets both edits through A's log.
    let (_, report) = sync(&b);
    assert_eq!(report["counts"]["segments_applied"], 2, "{report:#}");
    assert_eq!(patient_field(&b, &first, "phone").unwrap(), "one");
    assert_eq!(patient_field(&b, &second, "phone").unwrap(), "two");
    // Once the file is gone (or repaired), A writes it and the run is ok.
    fs::remove_file(&path).unwrap();
    sync_ok(&a);
    assert!(fs::read_to_string(&path).unwrap().contains("one"));
}

#[test]
fn settings_are_validated_and_shown() {
    let family = Family::new();
    let a = family.init("a");
    let out = cli(&a).args(["settings", "log_retention=14days", "use_logs=off", "--json"]).output().unwrap();
    assert!(out.status.success());
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let value = |k: &str| list.as_array().unwrap().iter().find(|s| s["key"] == k).unwrap()["value"].clone();
    assert_eq!(value("log_retention"), "14days");
    assert_eq!(value("use_logs"), "off");
    for bad in ["use_logs=maybe", "log_retention=soon", "colour=blue", "no-equals-sign"] {
        let out = cli(&a).args(["settings", bad]).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{bad}");
        assert!(!String::from_utf8_lossy(&out.stderr).is_empty());
    }
    // A refused assignment changes nothing, even beside a valid one.
    cli(&a).args(["settings", "use_logs=on", "dormancy=never"]).assert().failure();
    let list: serde_json::Value =
        serde_json::from_slice(&cli(&a).args(["settings", "--json"]).output().unwrap().stdout).unwrap();
    assert_eq!(list.as_array().unwrap().iter().find(|s| s["key"] == "use_logs").unwrap()["value"], "off");
}

#[test]
fn settings_that_would_break_the_rules_are_refused_with_the_reason() {
    let family = Family::new();
    let a = family.init("a");
    for (bad, least, why) in [
        ("log_retention=0s", "1day", "purged"),
        ("dormancy=2s", "7days", "holiday"),
        ("dormancy=6days", "7days", "count as gone"),
        ("full_scan_interval=0s", "1m", "use_logs=off"),
        ("max_clock_skew=1s", "1m", "clocks differ"),
    ] {
        let out = cli(&a).args(["settings", bad]).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{bad}");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(said.contains(&format!("at least {least}")) && said.contains(why), "{bad}: {said}");
    }
    set(&a, &["log_retention=1day", "dormancy=7days", "full_scan_interval=1m", "max_clock_skew=1m"]);
}

proptest! {
    /// Compaction never deletes a segment an active site has not applied,
    /// nor one younger than the retention, whatever the schedule.
    #[test]
    fn compaction_never_outruns_an_active_site(
        steps in proptest::collection::vec((0usize..3, 0u64..4, 0u64..3_000), 1..40),
        keep_ms in 0u64..5_000,
        dormant_after_ms in 1u64..10_000,
    ) {
        let policy = Retention { keep_ms, dormant_after_ms };
        let mut now = 0u64;
        let mut exports: Vec<(u64, u64)> = Vec::new();
        let mut peers = [Peer { acked: 0, last_seen_ms: 0 }; 3];
        let mut deleted_up_to = 0u64;
        for (who, advance, dt) in steps {
            now += dt;
            // The owner exports a segment now and then.
            if advance % 2 == 0 {
                exports.push((exports.len() as u64 + 1, now));
            }
            // A peer syncs: it applies some of what exists and is seen.
            let head = exports.len() as u64;
            peers[who].acked = (peers[who].acked + advance).min(head);
            peers[who].last_seen_ms = now;
            let retained: Vec<(u64, u64)> = exports.iter().copied().filter(|(s, _)| *s > deleted_up_to).collect();
            if let Some(limit) = compaction_limit(&retained, &peers, now, policy) {
                for p in &peers {
                    if now.saturating_sub(p.last_seen_ms) < dormant_after_ms {
                        prop_assert!(limit <= p.acked, "deleted #{limit} before an active peer applied it ({})", p.acked);
                    }
                }
                let created = exports[(limit - 1) as usize].1;
                prop_assert!(created <= now.saturating_sub(keep_ms));
                prop_assert!(limit > deleted_up_to);
                deleted_up_to = limit;
            }
        }
    }
}
