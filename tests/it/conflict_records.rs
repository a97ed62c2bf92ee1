//! Conflict records: a concurrent edit of one field keeps the losing value
//! at every site; settling one (`conflicts resolve`) is a new edit that
//! reaches every site and closes the record there; a later edit that saw
//! both values closes it too.

use std::path::Path;

use crate::support::*;

fn conflicts(db: &Path, all: bool) -> Vec<serde_json::Value> {
    let args: &[&str] = if all { &["conflicts", "--all"] } else { &["conflicts"] };
    json_of(db, args).as_array().unwrap().clone()
}

/// Two sites with one open conflict on a patient's phone: B's value won.
fn conflicted() -> (Family, std::path::PathBuf, std::path::PathBuf, String) {
    let (family, a, b, id) = two_sites_sharing_a_patient(0);
    app(&a).execute("UPDATE patients SET phone = 'typed at A' WHERE id = ?1", [&id]).unwrap();
    sync_ok(&a);
    app(&b).execute("UPDATE patients SET phone = 'typed at B' WHERE id = ?1", [&id]).unwrap();
    sync_ok(&b);
    sync_ok(&a);
    for db in [&a, &b] {
        let open = conflicts(db, false);
        assert_eq!(open.len(), 1, "{}", db.display());
        assert_eq!(open[0]["lost_value"], "typed at A");
        assert!(open[0]["lost_site"].as_str().is_some_and(|s| s.len() == 8), "{:?}", open[0]);
    }
    (family, a, b, id)
}

#[test]
fn keeping_the_losing_value_reaches_every_site_and_closes_the_record_everywhere() {
    let (_family, a, b, id) = conflicted();
    let record = conflicts(&a, false)[0]["id"].as_i64().unwrap();
    let out =
        cli(&a).args(["conflicts", "resolve", &record.to_string(), "--keep", "loser"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("typed at A"));
    assert_eq!(patient_field(&a, &id, "phone").unwrap(), "typed at A", "at once, here");
    assert!(conflicts(&a, false).is_empty());
    assert_eq!(conflicts(&a, true)[0]["status"], "resolved");

    sync_ok(&a);
    sync_ok(&b);
    for db in [&a, &b] {
        assert_eq!(patient_field(db, &id, "phone").unwrap(), "typed at A", "{}", db.display());
        assert!(conflicts(db, false).is_empty(), "closed at {}", db.display());
    }
    assert_eq!(dump(&a), dump(&b));

    // Settling it again is refused, with the reason.
    let again =
        cli(&b).args(["conflicts", "resolve", &record.to_string(), "--keep", "winner"]).output().unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already settled"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

#[test]
fn keeping_the_winner_is_an_edit_too_and_closes_the_record_at_the_other_site() {
    let (_family, a, b, id) = conflicted();
    let record = conflicts(&b, false)[0]["id"].as_i64().unwrap();
    cli(&b).args(["conflicts", "resolve", &record.to_string(), "--keep", "winner"]).assert().success();
    sync_ok(&b);
    sync_ok(&a);
    for db in [&a, &b] {
        assert_eq!(patient_field(db, &id, "phone").unwrap(), "typed at B");
        assert!(conflicts(db, false).is_empty(), "closed at {}", db.display());
    }
}

#[test]
fn an_app_edit_made_with_both_values_in_view_settles_the_record() {
    let (_family, a, b, id) = conflicted();
    app(&a).execute("UPDATE patients SET phone = 'agreed by phone call' WHERE id = ?1", [&id]).unwrap();
    sync_ok(&a);
    sync_ok(&b);
    for db in [&a, &b] {
        assert_eq!(patient_field(db, &id, "phone").unwrap(), "agreed by phone call");
        assert!(conflicts(db, false).is_empty(), "closed at {}", db.display());
    }
}

#[test]
fn an_unknown_record_is_refused_with_a_pointer_to_the_list() {
    let family = Family::new();
    let a = family.init("a");
    let out = cli(&a).args(["conflicts", "resolve", "99", "--keep", "loser"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no conflict record #99"));
    let bad = cli(&a).args(["conflicts", "resolve", "1", "--keep", "both"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2), "a usage error");
}
