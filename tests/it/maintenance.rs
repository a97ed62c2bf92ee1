//! The page's operations and decisions, through HTTP against `clinicsync run`:
//! each that changes something first shows what it will change (from its
//! dry run) and changes nothing until confirmed; leaving the family and
//! deleting its data stop the service after answering.

use std::fs;
use std::path::Path;

use crate::service::Page;
use crate::support::*;

#[test]
fn verify_repair_and_baseline_from_the_settings_page_change_nothing_until_confirmed() {
    let (family, a, _b) = two_sites();
    let ids: Vec<String> = (0..3).map(|n| add_patient(&app(&a), n, 2)).collect();
    sync_ok(&a);
    let page = Page::open(&a);
    let (code, html) = page.get("/settings");
    assert_eq!(code, 200);
    for id in ["op-verify", "op-upload", "op-download", "op-detach", "op-family-delete"] {
        assert!(html.contains(&format!(r#"id="{id}""#)), "{id}: {html}");
    }
    assert!(html.contains(r#"<option value="appointments">appointments only</option>"#));

    // Verify: runs and goes to Latest Logs, where it is recorded.
    let (code, location, _) = page.post("/maintenance/verify", &[]);
    assert_eq!((code, location.as_str()), (303, "/logs"));
    assert_eq!(json_of(&a, &["log", "--last", "1"])[0]["run"]["trigger"], "operation verify");

    // Repair: a patient file cut short is named on the confirmation.
    let cut = patient_file(&family.folder(), &ids[1]);
    let bytes = fs::read(&cut).unwrap();
    fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let rel = cut.strip_prefix(family.folder()).unwrap().to_string_lossy().into_owned();
    let (code, html) = page.get("/maintenance/baseline-upload");
    assert_eq!(code, 200);
    assert!(html.contains("1 damaged patient files will be replaced"), "{html}");
    assert!(html.contains(&rel), "{html}");
    let (code, location, _) = page.post("/maintenance/baseline-upload", &[]);
    assert_eq!((code, location.as_str()), (303, "/maintenance/baseline-upload"), "not confirmed");
    assert_eq!(fs::read(&cut).unwrap().len(), bytes.len() / 2, "nothing replaced unconfirmed");
    let (code, _, html) = page.post("/maintenance/baseline-upload", &[("confirm", "yes")]);
    assert_eq!(code, 200);
    assert!(html.contains("The folder was repaired."), "{html}");
    assert!(fs::read(&cut).unwrap().len() > bytes.len() / 2);
    let verified = cli(&a).args(["verify", "--json"]).output().unwrap();
    assert!(verified.status.success(), "{}", String::from_utf8_lossy(&verified.stdout));

    // Baseline download of one table: the counts first, then the rows back.
    past_clinicsync(&a, "DELETE FROM appointments");
    past_clinicsync(&a, "DELETE FROM clinical_notes");
    let (code, html) = page.get("/maintenance/baseline-download?table=appointments");
    assert_eq!(code, 200);
    assert!(html.contains("appointments: 6 rows put back, 0 corrected, 0 removed"), "{html}");
    assert!(!html.contains("clinical_notes:"), "one table only: {html}");
    assert_eq!(count(&a, "SELECT count(*) FROM appointments"), 0, "a look changes nothing");
    let (code, _, html) =
        page.post("/maintenance/baseline-download", &[("confirm", "yes"), ("table", "appointments")]);
    assert_eq!(code, 200, "{html}");
    assert!(html.contains("The tables are equal to the family&#39;s."), "{html}");
    assert_eq!(count(&a, "SELECT count(*) FROM appointments"), 6);
    assert_eq!(count(&a, "SELECT count(*) FROM clinical_notes"), 0, "the other table untouched");
    let (_, html) = page.get("/logs");
    assert!(html.contains("Make this computer&#39;s tables equal to the family&#39;s"), "{html}");
    assert!(html.contains("Repair the folder from this computer"), "{html}");
}

#[test]
fn leaving_the_family_from_the_page_stops_the_service_and_keeps_the_apps_rows() {
    let (_family, a, b) = two_sites();
    add_patient(&app(&a), 0, 2);
    sync_ok(&a);
    let page = Page::open(&a);
    app(&a).execute("UPDATE patients SET phone = 'sent before leaving'", []).unwrap();
    let (code, html) = page.get("/maintenance/detach");
    assert_eq!(code, 200);
    assert!(html.contains("leaves the family"), "{html}");
    assert!(html.contains("sends its 1 changes not yet in the folder"), "{html}");
    let (code, _, html) = page.post("/maintenance/detach", &[("confirm", "yes")]);
    assert_eq!(code, 200);
    assert!(html.contains("This computer has left the family, and clinicsync has stopped here."), "{html}");
    let (status, log) = page.service.wait_exit();
    assert!(status.success(), "{log}");
    let (triggers, tables) = {
        let conn = app(&a);
        let n = |kind: &str| -> i64 {
            conn.query_row(
                &format!("SELECT count(*) FROM sqlite_master WHERE type = '{kind}' AND name LIKE '\\_cs\\_%' ESCAPE '\\'"),
                [],
                |r| r.get(0),
            )
            .unwrap()
        };
        (n("trigger"), n("table"))
    };
    assert_eq!((triggers, tables), (0, 0));
    assert_eq!(count(&a, "SELECT count(*) FROM appointments"), 2);
    assert_eq!(count(&a, "SELECT count(*) FROM patients WHERE phone = 'sent before leaving'"), 1);
    sync_ok(&b);
    assert_eq!(
        app(&b).query_row("SELECT phone FROM patients", [], |r| r.get::<_, String>(0)).unwrap(),
        "sent before leaving",
        "its last change reached the others"
    );
}

#[test]
fn deleting_the_familys_data_needs_its_id_typed_and_then_stops_the_service() {
    let (family, a, b) = two_sites();
    add_patient(&app(&a), 0, 1);
    sync_ok(&a);
    sync_ok(&b);
    let page = Page::open(&a);
    let family_id = json_of(&a, &["status"])["family"].as_str().unwrap().to_owned();
    let short = &family_id[..8];
    let (code, html) = page.get("/maintenance/family-delete");
    assert_eq!(code, 200);
    assert!(html.contains(&format!("Type the family's id, {short}, to confirm")), "{html}");
    let (code, _, html) =
        page.post("/maintenance/family-delete", &[("confirm", "yes"), ("family", "deadbeef")]);
    assert_eq!(code, 200);
    assert!(html.contains("Nothing was deleted: the id typed was not this family&#39;s"), "{html}");
    assert_eq!(page.service.api_status()["status"]["online"], true, "still running, nothing deleted");
    assert!(family.folder().join("patients").exists());

    let (code, _, html) = page.post("/maintenance/family-delete", &[("confirm", "yes"), ("family", short)]);
    assert_eq!(code, 200);
    assert!(html.contains("The family&#39;s data was deleted from the folder"), "{html}");
    let (status, log) = page.service.wait_exit();
    assert!(status.success(), "{log}");
    assert!(
        !family.folder().join("patients").exists()
            || fs::read_dir(family.folder().join("patients")).unwrap().next().is_none()
    );
    let (code, report) = sync(&b);
    assert_ne!(code, 0);
    assert!(report["error"].as_str().unwrap().contains("deleted"), "{report:#}");
    assert_eq!(count(&b, "SELECT count(*) FROM patients"), 1, "B keeps its data");
}

/// A mass deletion at A held at B, shown on B's page by name.
fn held_at_b(a: &Path, b: &Path, ids: &[String]) {
    for id in ids {
        app(a).execute("DELETE FROM patients WHERE id = ?1", [id]).unwrap();
    }
    sync_ok(a);
    assert_eq!(sync(b).0, 3, "held at B");
}

#[test]
fn a_held_mass_deletion_is_kept_and_another_deleted_from_the_page_by_name() {
    let (_family, a, b) = two_sites();
    let ids: Vec<String> = (0..30).map(|n| add_patient(&app(&a), n, 1)).collect();
    sync_ok(&a);
    sync_ok(&b);
    held_at_b(&a, &b, &ids[..25]);
    let human = String::from_utf8(cli(&b).arg("status").output().unwrap().stdout).unwrap();
    assert!(human.contains("  Given0 Family0, with 3 other rows, deleted at a "), "{human}");
    let page = Page::open(&b);
    let (_, html) = page.get("/");
    assert!(html.contains("Deletions waiting for you"), "{html}");
    assert!(html.contains("a deleted 25 patients."), "{html}");
    assert!(
        html.contains(&format!(
            r#"<li><a href="/history?q={}">Given0 Family0</a>, with 3 appointments, notes and other rows, deleted at a on <time"#,
            ids[0]
        )),
        "{html}"
    );
    assert!(!html.contains("clinicsync sync --confirm-deletes"), "buttons, not commands: {html}");
    assert!(
        html.contains(r#"<li>the deletion of 25 patients waits for you <a class="button-link need" href="/#held">Decide</a></li>"#),
        "{html}"
    );

    // Keep them: the confirmation says what happens; a stale count is refused.
    let (code, html) = page.get("/held/keep");
    assert_eq!(code, 200);
    assert!(html.contains("These 25 patients stay here"), "{html}");
    let (_, _, html) = page.post("/held/keep", &[("confirm", "yes"), ("patients", "24")]);
    assert!(html.contains("Nothing was done: 25 patients wait now, not the 24 you were shown."), "{html}");
    assert_eq!(json_of(&b, &["status"])["held_deletes"]["patients"], 25);
    let (_, _, html) = page.post("/held/keep", &[("confirm", "yes"), ("patients", "25")]);
    assert!(html.contains("Kept 25 patients"), "{html}");
    assert_eq!(json_of(&b, &["status"])["held_deletes"]["patients"], 0);
    assert_eq!(json_of(&b, &["log", "--last", "1"])[0]["run"]["trigger"], "keep-deleted");
    sync_ok(&a);
    assert_eq!(count(&a, "SELECT count(*) FROM patients"), 30, "back at the site that deleted them");

    // Another deletion, this time deleted here too.
    held_at_b(&a, &b, &ids[..22]);
    let (code, html) = page.get("/held/delete");
    assert_eq!(code, 200);
    assert!(
        html.contains("These 22 patients, and the 66 rows that go with them, are deleted here too"),
        "{html}"
    );
    let (_, _, html) = page.post("/held/delete", &[("confirm", "yes"), ("patients", "22")]);
    assert!(html.contains("Deleted 22 patients here too."), "{html}");
    assert_eq!(count(&b, "SELECT count(*) FROM patients"), 8);
    sync_ok(&a);
    assert_eq!(dump(&a), dump(&b));
}

#[test]
fn each_thing_the_verdict_asks_of_a_person_has_its_button_and_the_button_does_it() {
    let (_family, a, _b) = two_sites();
    set(&a, &["auto_sync=off"]);
    let page = Page::open(&a);
    let (_, html) = page.get("/");
    assert!(
        html.contains(&format!(
            r#"<li>automatic sync is off <form class="inline" method="post" action="/settings"><input type="hidden" name="csrf" value="{}"><input type="hidden" name="auto_sync" value="on"><button type="submit" class="need">Turn it on</button></form></li>"#,
            page.csrf
        )),
        "{html}"
    );
    let status = json_of(&a, &["status"]);
    assert_eq!(status["verdict"]["needs"][0]["action"], "Turn it on", "{status:#}");
    // The button's form, as the browser sends it.
    let (code, _, _) = page.post("/settings", &[("auto_sync", "on")]);
    assert_eq!(code, 303);
    let shown = json_of(&a, &["settings"]);
    let auto = shown.as_array().unwrap().iter().find(|s| s["key"] == "auto_sync").unwrap();
    assert_eq!(auto["value"], "on", "{auto:#}");
    let (_, html) = page.get("/");
    assert!(!html.contains("automatic sync is off"), "{html}");
    assert!(html.contains(r#"class="verdict good""#), "{html}");
}

#[test]
fn the_last_sync_card_gives_the_last_runs_own_outcome_and_the_last_complete_sync() {
    let (family, a, _b) = two_sites();
    let page = Page::open(&a);
    let (_, html) = page.get("/");
    let card = |html: &str| {
        let at = html.find(r#"id="card-last""#).expect("the card");
        html[at..at + html[at..].find("</div></div>").unwrap()].to_owned()
    };
    assert!(card(&html).contains("(ok)") && !card(&html).contains("last complete sync"), "{}", card(&html));
    assert!(
        html.contains(
            r#"class="verdict good" role="status" data-key="Up to date with b|">Up to date with b</div>"#
        ),
        "{html}"
    );
    // The folder goes away: the next run fails.
    let aside = family.dir.path().join("folder-away");
    fs::rename(family.folder(), &aside).unwrap();
    let before = page.service.runs_finished();
    let (code, _, _) = page.post("/sync", &[]);
    assert!(code == 303 || code == 200, "{code}");
    page.service.wait_for("the failed run", std::time::Duration::from_secs(30), || {
        page.service.runs_finished() > before
    });
    let (_, html) = page.get("/");
    let last = card(&html);
    assert!(last.contains("(failed); last complete sync <time"), "{last}");
    assert!(html.contains(r#"<div class="card bad" id="card-last">"#), "red: {last}");
    assert!(
        html.contains(
            r#"<div id="verdict" class="verdict bad" role="status" data-key="Needs you: the sync folder "#
        ),
        "{html}"
    );
    assert!(html.contains(r#"<strong>Needs you:</strong><ul><li>the sync folder "#), "{html}");
    assert!(
        html.contains(r#"<a class="button-link need" href="/settings">Open Settings</a></li>"#),
        "{html}"
    );
    assert!(
        html.contains(
            r#"<li>the last sync failed <a class="button-link need" href="/logs">See why</a></li>"#
        ),
        "{html}"
    );
    let human = String::from_utf8(cli(&a).arg("status").output().unwrap().stdout).unwrap();
    assert!(human.starts_with("Needs you: the sync folder "), "{human}");
    assert!(human.contains("  - the last sync failed (`clinicsync log`)"), "{human}");
    fs::rename(&aside, family.folder()).unwrap();
}

#[test]
fn conflicts_are_grouped_by_patient_shown_in_full_and_settled_together() {
    let (_family, a, b, patient) = two_sites_sharing_a_patient(1);
    let long_a = format!("urgent referral: {}", "see the attached letter; ".repeat(10));
    let long_b = format!("routine referral: {}", "see the attached letter; ".repeat(10));
    edit_at_both(&a, &b, &patient, "phone", "+1 555 0101", "+1 555 0202");
    edit_at_both(&a, &b, &patient, "notes", &long_a, &long_b);
    let page = Page::open(&a);
    let (code, html) = page.get("/conflicts");
    assert_eq!(code, 200);
    assert!(
        html.contains(&format!(r#"<h2><a href="/history?q={patient}">Given1 Family1</a></h2>"#)),
        "{html}"
    );
    assert!(html.contains("(show all)"), "a long value is folded, not cut: {html}");
    assert!(
        html.contains("<mark>urgent </mark>referral: see the attached letter;"),
        "the difference marked: {html}"
    );
    assert!(html.contains("<mark>routine </mark>referral: see the attached letter;"), "{html}");
    let rest = format!("referral: {}", "see the attached letter; ".repeat(10));
    assert_eq!(html.matches(&rest).count(), 2, "both in full: {html}");
    assert!(html.contains("Keep every value shown for Given1 Family1"), "{html}");
    assert!(!visible_outside_details(&html).contains(&patient), "the patient's id only behind Details");

    let human = String::from_utf8(cli(&a).arg("conflicts").output().unwrap().stdout).unwrap();
    assert!(human.contains(" Given1 Family1, patients phone: shown \"+1 555 0202\" (typed at b "), "{human}");
    assert!(human.contains("the other \"+1 555 0101\" (typed at this site "), "{human}");
    let (code, html) = page.get(&format!("/conflicts/keep-shown?patient={patient}"));
    assert_eq!(code, 200);
    assert!(html.contains("phone: keep “+1 555 0202” (typed at b), not “+1 555 0101”"), "{html}");
    let (_, _, html) =
        page.post("/conflicts/keep-shown", &[("confirm", "yes"), ("patient", &patient), ("count", "3")]);
    assert!(
        html.contains(
            "Nothing was kept: 2 conflicts of this patient are open now, not the 3 you were shown."
        ),
        "{html}"
    );
    let (code, location, _) =
        page.post("/conflicts/keep-shown", &[("confirm", "yes"), ("patient", &patient), ("count", "2")]);
    assert_eq!((code, location.as_str()), (303, "/conflicts?kept=2"));
    assert!(json_of(&a, &["conflicts"]).as_array().unwrap().is_empty());
    let (_, html) = page.get(&location);
    assert!(
        html.contains("Kept the 2 values chosen; every site will show them after its next sync."),
        "{html}"
    );
    assert_eq!(patient_field(&a, &patient, "phone").as_deref(), Some("+1 555 0202"));
}

/// The text a page shows (tags and their attributes left out), without
/// what is folded behind a "Details" toggle.
fn visible_outside_details(html: &str) -> String {
    let unfolded: String = html
        .split(r#"<details class="ids">"#)
        .enumerate()
        .map(
            |(i, part)| {
                if i == 0 { part } else { part.split_once("</details>").map_or("", |(_, rest)| rest) }
            },
        )
        .collect();
    let mut text = String::new();
    let mut in_tag = false;
    for c in unfolded.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    text
}

#[test]
fn no_page_shows_an_id_outside_its_details() {
    let (family, a, b, patient) = two_sites_sharing_a_patient(1);
    edit_at_both(&a, &b, &patient, "phone", "+1 555 0101", "+1 555 0202");
    // Latest Logs with something in them: a patient brought in, then
    // deleted; a cloud client's copy merged; the folder verified.
    let other = add_patient(&app(&b), 2, 1);
    sync_ok(&b);
    sync_ok(&a);
    app(&b).execute("DELETE FROM patients WHERE id = ?1", [&other]).unwrap();
    sync_ok(&b);
    sync_ok(&a);
    let original = patient_file(&family.folder(), &patient);
    let stem = clinicsync::model::patient_file_name(&patient);
    std::fs::copy(
        &original,
        original.with_file_name(format!("{stem}.sync-conflict-20240131-142233-7QKZ3XN.xml")),
    )
    .unwrap();
    let report = json_of(&a, &["sync", "--full-scan"]);
    assert_eq!(report["counts"]["conflict_copies_deleted"], 1, "{report:#}");
    cli(&a).arg("verify").assert().success();
    // And a deletion held for a person.
    let held: Vec<String> = (3..5).map(|n| add_patient(&app(&b), n, 1)).collect();
    sync_ok(&b);
    sync_ok(&a);
    set(&a, &["mass_delete_min_patients=1", "mass_delete_percent=1"]);
    for id in &held {
        app(&b).execute("DELETE FROM patients WHERE id = ?1", [id]).unwrap();
    }
    sync_ok(&b);
    assert_eq!(sync(&a).0, 3, "held");
    let mut ids: Vec<String> = [&a, &b]
        .iter()
        .flat_map(|db| ["site", "family"].map(|k| json_of(db, &["status"])[k].as_str().unwrap().to_owned()))
        .collect();
    ids.extend([patient.clone(), other.clone()]);
    ids.extend(held);
    let page = Page::open(&a);
    let (_, logs) = page.get("/logs");
    for said in [
        format!(r#"<a href="/history?q={other}">Given2 Family2</a> (deleted)"#),
        "merged into the file of Given1 Family1 and deleted".to_owned(),
        "verif".to_owned(),
        "Given3 Family3</a> (deletion held for you to decide)".to_owned(),
    ] {
        assert!(logs.contains(&said), "{said:?} in {logs}: a run's sentence links the patients it names");
    }
    for path in [
        "/",
        "/conflicts",
        "/settings",
        "/logs",
        "/history?q=given2",
        "/held/keep",
        "/held/delete",
        "/maintenance/baseline-upload",
        "/maintenance/baseline-download",
        "/maintenance/detach",
    ] {
        let (code, html) = page.get(path);
        assert_eq!(code, 200);
        let text = visible_outside_details(&html);
        for id in &ids {
            assert!(!text.contains(id.as_str()), "{path} shows {id} outside Details: {text}");
        }
        let hex32 = text.split(|c: char| !c.is_ascii_hexdigit()).any(|w| w.len() >= 32);
        assert!(!hex32, "{path} shows a 32-hex id: {text}");
    }
}

#[test]
fn the_history_page_finds_a_patient_by_name_and_lists_its_changes() {
    let (_family, a, b, patient) = two_sites_sharing_a_patient(0);
    app(&b).execute("UPDATE patients SET phone = '+1 555 9999' WHERE id = ?1", [&patient]).unwrap();
    sync_ok(&b);
    sync_ok(&a);
    let page = Page::open(&a);
    let (_, html) = page.get("/");
    assert!(html.contains(r#"<form method="get" action="/history" role="search""#), "a search on Status");
    let (code, html) = page.get("/history?q=given1");
    assert_eq!(code, 200);
    assert!(html.contains(r#"<h2 id="patient">Given1 Family1</h2>"#), "{html}");
    assert!(
        html.contains(r#"<td>b</td><td>patients: phone</td><td>+1 555 0001</td><td>+1 555 9999</td>"#),
        "who changed what: {html}"
    );
    let (_, html) = page.get("/history?q=nobody");
    assert!(html.contains("No patient's name matches"), "{html}");
    assert!(!visible_outside_details(&page.get("/history?q=given1").1).contains(&patient));
}

#[test]
fn every_value_typed_at_one_site_is_kept_at_once_after_a_confirmation() {
    let (_family, a, b) = two_sites();
    let ids: Vec<String> = (1..=2).map(|n| add_patient(&app(&a), n, 0)).collect();
    sync_ok(&a);
    sync_ok(&b);
    for id in &ids {
        edit_at_both(&a, &b, id, "phone", &format!("typed at a {id}"), &format!("typed at b {id}"));
    }
    let site_a = json_of(&a, &["status"])["site"].as_str().unwrap().to_owned();
    let page = Page::open(&a);
    let (_, html) = page.get("/conflicts");
    assert!(
        html.contains(&format!(
            r#"href="/conflicts/keep-site?site={site_a}">Keep every value typed at this site…</a>"#
        )),
        "{html}"
    );
    let (code, html) = page.get(&format!("/conflicts/keep-site?site={site_a}"));
    assert_eq!(code, 200);
    assert!(html.contains("Keep every value typed at this site"), "{html}");
    assert!(html.contains(&format!("Given1 Family1, phone: keep “typed at a {}”", ids[0])), "{html}");
    let (code, location, _) =
        page.post("/conflicts/keep-site", &[("confirm", "yes"), ("site", &site_a), ("count", "2")]);
    assert_eq!((code, location.as_str()), (303, "/conflicts?kept=2"));
    for id in &ids {
        assert_eq!(patient_field(&a, id, "phone"), Some(format!("typed at a {id}")));
    }
    assert!(json_of(&a, &["conflicts"]).as_array().unwrap().is_empty());
}
