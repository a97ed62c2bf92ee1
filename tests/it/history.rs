//! `clinicsync history PATIENT` and the page's patient history: every
//! change this site knows of one patient, field by field, with the site
//! that made it and when; a value replaced here or applied from another
//! site, and a deletion, are there; a search by name lists the patients.

use crate::support::*;

fn history(db: &std::path::Path, query: &str) -> (i32, String) {
    let out = cli(db).args(["history", query]).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8(out.stdout).unwrap())
}

#[test]
fn a_patients_history_lists_each_change_with_who_and_when_and_its_deletion() {
    let (_family, a, b) = two_sites();
    let patient = add_patient(&app(&a), 1, 1);
    add_patient(&app(&a), 2, 0);
    sync_ok(&a);
    sync_ok(&b);
    app(&b).execute("UPDATE patients SET phone = '+1 555 9999' WHERE id = ?1", [&patient]).unwrap();
    sync_ok(&b);
    sync_ok(&a);
    app(&a).execute("UPDATE patients SET email = 'new@example.org' WHERE id = ?1", [&patient]).unwrap();
    app(&b).execute("UPDATE appointments SET status = 'arrived' WHERE id = ?1", [uuid(2, 10_000)]).unwrap();
    sync_ok(&b);
    sync_ok(&a);

    let (code, text) = history(&a, "given1");
    assert_eq!(code, 0, "{text}");
    assert!(text.starts_with(&format!("History of Given1 Family1 ({patient}), oldest first:")), "{text}");
    assert!(text.contains(r#" b: patients phone: "+1 555 0001" → "+1 555 9999""#), "applied from B: {text}");
    assert!(
        text.contains(r#" this site: patients email: "p1@example.org" → "new@example.org""#),
        "made here: {text}"
    );
    assert!(text.contains(r#" this site: patients family name set to "Family1""#), "{text}");
    assert!(
        text.contains(r#" b: appointments 2026-12-01T00:00:00Z status: "booked" → "arrived""#),
        "a child row by its name: {text}"
    );
    let phone = text.find("phone: ").unwrap();
    let email = text.find("email: ").unwrap();
    assert!(phone < email, "oldest first: {text}");

    // Several matches: listed to choose from; none: an error.
    let (code, text) = history(&a, "family");
    assert_eq!(code, 0);
    assert!(text.starts_with(r#"2 patients match "family"; give one of these ids:"#), "{text}");
    assert!(text.contains(&format!("  {patient}  Given1 Family1")), "{text}");
    let (code, _) = history(&a, "nobody");
    assert_eq!(code, 1);
    // Deleted at B: the deletion is in A's history, found by the id.
    app(&b).execute("DELETE FROM patients WHERE id = ?1", [&patient]).unwrap();
    sync_ok(&b);
    sync_ok(&a);
    let (code, text) = history(&a, &patient);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains(" b: deleted the patients row"), "{text}");

    let report = json_of(&a, &["history", &patient]);
    assert_eq!(report["patient"]["id"], patient.as_str());
    assert!(
        report["lines"].as_array().unwrap().iter().any(|l| l["kind"] == "deleted" && l["by"] == "b"),
        "{report:#}"
    );
}

#[test]
fn a_site_that_takes_in_the_familys_data_writes_no_history() {
    let (_family, a, b) = two_sites();
    for n in 0..5 {
        add_patient(&app(&a), n, 2);
    }
    sync_ok(&a);
    sync_ok(&b);
    let n: i64 = app(&b).query_row("SELECT count(*) FROM _cs_history", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 0, "what is new here replaced nothing");
    // ...and what it shows is still in its history, as set.
    let (_, text) = history(&b, "Given3");
    assert!(text.contains(r#" a: patients phone set to "+1 555 0003""#), "{text}");
}

#[test]
fn latest_logs_say_whose_changes_to_which_patients_and_what_of_each() {
    let (_family, a, b) = two_sites();
    let edited = add_patient(&app(&a), 1, 1);
    let deleted = add_patient(&app(&a), 2, 0);
    for n in 3..8 {
        add_patient(&app(&a), n, 0);
    }
    sync_ok(&a);
    sync_ok(&b);
    let first = String::from_utf8(cli(&b).args(["log", "--last", "1"]).output().unwrap().stdout).unwrap();
    assert!(first.contains("Brought in changes to 7 patients from a: "), "{first}");
    assert!(first.contains(" and 2 more"), "five named, the rest counted: {first}");

    app(&a).execute("UPDATE patients SET phone = '+1 555 9999' WHERE id = ?1", [&edited]).unwrap();
    app(&a).execute("UPDATE appointments SET status = 'arrived' WHERE patient_id = ?1", [&edited]).unwrap();
    app(&a).execute("DELETE FROM patients WHERE id = ?1", [&deleted]).unwrap();
    sync_ok(&a);
    sync_ok(&b);
    let out = String::from_utf8(cli(&b).args(["log", "--last", "1"]).output().unwrap().stdout).unwrap();
    let said = out.lines().nth(1).unwrap_or_default();
    assert!(said.contains("Brought in changes to 2 patients from a: "), "{out}");
    assert!(said.contains("Given1 Family1 (appointments, phone)"), "fields and tables by name: {out}");
    assert!(said.contains("Given2 Family2 (deleted)"), "a deleted patient by the name it had: {out}");
    assert!(!said.contains(&edited) && !said.contains(&deleted), "no ids: {out}");
    let json = json_of(&b, &["log", "--last", "1"]);
    let brought = &json[0]["run"]["summary"]["brought_in"][0];
    assert_eq!(brought["site"], "a");
    assert_eq!(brought["patients"], 2);
}
