//! The web page in real headless Chromium (Debian's chromium and
//! chromium-driver, installed by `.ci/run`): open it with the token, change
//! the interval, press Sync Now and watch it finish, find the run at the
//! top of Latest Logs with its events, resolve a conflict; a request
//! without the token, a POST without the CSRF token and a form posted from
//! another origin are refused; and every page passes axe-core (fetched from
//! the npm registry) without a serious accessibility violation.
//! Screenshots of each page are saved under `target/screenshots/`. Without
//! Chromium these tests fail unless `CLINICSYNC_SKIP_BROWSER=1` says to
//! skip them.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::service::Service;
use crate::support::*;
use crate::webdriver::{Browser, available};

fn screenshots() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).parent().expect("target/").join("screenshots")
}

fn setting(db: &std::path::Path, key: &str) -> Value {
    let list = json_of(db, &["settings"]);
    list.as_array().unwrap().iter().find(|s| s["key"] == key).unwrap()["value"].clone()
}

#[test]
fn clinic_staff_use_the_page_in_chromium() {
    if std::env::var("CLINICSYNC_SKIP_BROWSER").is_ok_and(|v| v == "1") {
        eprintln!("skipped: CLINICSYNC_SKIP_BROWSER=1");
        return;
    }
    if let Err(e) = available() {
        panic!("{e} (or set CLINICSYNC_SKIP_BROWSER=1 to skip this test)");
    }
    // Two sites with a conflict at a: both changed one phone number.
    let fam = Family::new();
    let a = fam.init("a");
    let b = fam.init("b");
    let patient = add_patient(&app(&a), 1, 2);
    sync_ok(&a);
    sync_ok(&b);
    edit_at_both(&a, &b, &patient, "phone", "+1 555 0101", "+1 555 0202");
    let open = json_of(&a, &["conflicts"]);
    assert_eq!(open.as_array().unwrap().len(), 1, "{open:#}");
    let lost = open[0]["lost_value"].as_str().unwrap().to_owned();
    let conflict_id = open[0]["id"].as_i64().unwrap();

    set(&a, &["sync_interval=1h"]);
    let service = Service::start(&a);
    let browser = Browser::start();
    let shots = screenshots();

    // Status, opened with the printed link.
    browser.goto(&format!("{}/?token={}", service.base, service.token));
    assert_eq!(browser.url(), format!("{}/", service.base), "the token leaves the address bar");
    assert_eq!(browser.text("#card-online .value"), "Online");
    assert!(browser.text("main").contains("Sites of this family"));
    let verdict = browser.text("#verdict");
    assert!(verdict.starts_with("Needs you:") && verdict.contains("1 conflict to review"), "{verdict}");
    browser.screenshot(&shots.join("status.png"));

    // Settings: change the interval.
    browser.click("nav a[href='/settings']");
    browser.type_into("#setting-sync_interval", "15");
    browser.click("#save-settings");
    browser.wait_text(".notice", Duration::from_secs(10), |t| t.contains("Settings saved"));
    assert_eq!(setting(&a, "sync_interval"), "15m");
    let shown = browser.run_async("arguments[0](document.getElementById('setting-sync_interval').value)");
    assert_eq!(shown, "15m", "the form shows the saved value");
    browser.screenshot(&shots.join("settings.png"));
    // A refusal is said next to its field, in words.
    browser.type_into("#setting-sync_interval", "soon");
    browser.click("#save-settings");
    let refused =
        browser.wait_text("#settings-form .bad", Duration::from_secs(10), |t| t.contains("Not saved"));
    assert!(refused.starts_with("Not saved: sync_interval must be"), "{refused}");
    assert_eq!(setting(&a, "sync_interval"), "15m", "nothing saved");
    browser.click("nav a[href='/settings']");
    // A click that loads a page returns before the page is there: each
    // read after one waits for what the new page says.
    let first =
        browser.wait_text("#settings-form .field label", Duration::from_secs(10), |t| t == "Sync folder");
    assert_eq!(first, "Sync folder", "the settings most people need first, in words");

    // Sync Now, with live progress, until it says it finished. Site b
    // changed a patient; with `watch` off only Sync Now picks it up.
    browser.click("details.advanced summary");
    browser.click("#setting-watch option[value='off']");
    browser.click("#save-settings");
    browser.wait_text(".notice", Duration::from_secs(10), |t| t.contains("Settings saved"));
    // (That no run starts on its own with watch off is the scheduler's
    // test on a paused clock; here the page's Sync Now brings the change.)
    let other = add_patient(&app(&b), 2, 1);
    sync_ok(&b);
    let runs_before = service.runs_finished();
    browser.click("nav a[href='/']");
    browser.click("#sync-button");
    let done = browser.wait_text("#progress", Duration::from_secs(30), |t| t.contains("Sync finished"));
    assert!(done.contains("ok"), "{done}");
    assert!(service.runs_finished() > runs_before);
    browser.screenshot(&shots.join("sync-now.png"));

    // Latest Logs: the new run is at the top, open, with its events.
    browser.click("#progress a[href='/logs']");
    let top = browser
        .wait_text("#runs section.run:first-child", Duration::from_secs(10), |t| t.contains("Sync Now"));
    assert!(top.contains("ok"), "{top}");
    // The patient B added, with one row of each of its three child tables.
    assert!(
        top.contains(
            "Brought in changes to 1 patient from b: Given2 Family2 (added, appointments, clinical notes, invoices)"
        ),
        "in a sentence, by name, with what changed: {top}"
    );
    let events = browser.text("#runs section.run:first-child .events");
    assert!(
        events.contains("brought in 4 changed rows of Given2 Family2"),
        "events name the patient: {events}"
    );
    assert!(has_patient(&a, &other));
    browser.screenshot(&shots.join("logs.png"));

    // Conflicts: keep the value that lost.
    browser.click("nav a[href='/conflicts']");
    let row = browser
        .wait_text(&format!("#conflict-{conflict_id}"), Duration::from_secs(10), |t| t.contains(&lost));
    assert!(row.contains("typed at this site") && row.contains("typed at b"), "sites by name: {row}");
    let group = browser.text("section.patient h2");
    assert_eq!(group, "Given1 Family1", "grouped by the patient's name");
    browser.screenshot(&shots.join("conflicts.png"));
    browser.click(&format!("#conflict-{conflict_id} button[value='loser']"));
    let said = browser.wait_text(".notice", Duration::from_secs(10), |t| t.contains("Kept"));
    assert_eq!(
        said,
        "Kept the phone typed at this site for Given1 Family1; every site will show it after its next sync."
    );
    assert_eq!(patient_field(&a, &patient, "phone").as_deref(), Some(lost.as_str()));
    assert!(json_of(&a, &["conflicts"]).as_array().unwrap().is_empty());
    browser.screenshot(&shots.join("conflicts-resolved.png"));

    // The patient's history, from the search on Status.
    browser.click("nav a[href='/']");
    browser.type_into("#patient-search", "family1");
    browser.click("form.search button");
    let history = browser.wait_text("#history", Duration::from_secs(10), |t| t.contains("phone"));
    assert!(history.contains("this site") && history.contains(&lost), "{history}");
    assert_eq!(browser.text("#patient"), "Given1 Family1");
    browser.screenshot(&shots.join("history.png"));

    // One table: an appointment changed here; its button is marked, and
    // syncs that table alone.
    app(&a)
        .execute(
            "UPDATE appointments SET status = 'arrived' WHERE patient_id = ?1 AND id = (SELECT min(id) FROM appointments WHERE patient_id = ?1)",
            [&patient],
        )
        .unwrap();
    browser.click("nav a[href='/']");
    browser
        .wait_text("#tables-body", Duration::from_secs(10), |t| t.contains("1 changed here, not sent yet"));
    browser.screenshot(&shots.join("tables-waiting.png"));
    browser.click("button.waiting[data-table='appointments']");
    let top = browser.wait_text("#runs section.run:first-child", Duration::from_secs(30), |t| {
        t.contains("Sync appointments only")
    });
    assert!(top.contains("ok"), "{top}");
    assert!(json_of(&a, &["status"])["tables"].as_array().unwrap().iter().all(|t| t["waiting"] == false));

    // Maintenance: an operation opens on what it would change, and Cancel
    // goes back to Settings.
    browser.click("nav a[href='/settings']");
    browser.click("#op-upload");
    browser.wait_text("main", Duration::from_secs(10), |t| {
        t.contains("No patient file in the folder is damaged.")
    });
    browser.screenshot(&shots.join("repair-confirm.png"));
    browser.click("main form a[href='/settings#maintenance']");
    browser.wait_text("#maintenance", Duration::from_secs(10), |t| t.contains("Maintenance"));

    // Refusals, from the page itself: without the token (no cookie), and a
    // POST without the CSRF token.
    let no_token = browser.run_async(
        "fetch('/api/status', { credentials: 'omit' }).then(r => arguments[0](r.status), e => arguments[0](String(e)))",
    );
    assert_eq!(no_token, 401);
    let no_csrf = browser.run_async(
        "fetch('/sync', { method: 'POST' }).then(r => arguments[0](r.status), e => arguments[0](String(e)))",
    );
    assert_eq!(no_csrf, 403);

    // A form on another origin that posts to the page, even carrying the
    // right CSRF token, changes nothing and starts no sync.
    // Resolving started a sync to carry the choice; let it end first.
    service.wait_idle();
    let runs_before = service.runs_finished();
    let csrf = service.csrf();
    let attack = format!(
        "data:text/html,<form id=f method=post action='{base}/settings'><input name=csrf value='{csrf}'><input name=sync_interval value=1></form><form id=g method=post action='{base}/sync'><input name=csrf value='{csrf}'></form><script>fetch('{base}/sync',{{method:'POST',mode:'no-cors',credentials:'include',body:new URLSearchParams({{csrf:'{csrf}'}})}}).finally(()=>document.getElementById('f').submit())</script>",
        base = service.base
    );
    browser.goto(&attack);
    // The script's POST has been answered before its form is submitted;
    // the form's answer is the page the browser shows.
    let refused =
        browser.wait_text("body", Duration::from_secs(30), |t| t.contains("refused") || t.contains("link"));
    browser.screenshot(&shots.join("cross-origin-refused.png"));
    assert_eq!(setting(&a, "sync_interval"), "15m", "a cross-origin form changed a setting");
    assert_eq!(service.runs_finished(), runs_before, "a cross-origin request started a sync");
    assert!(refused.contains("refused") || refused.contains("link"), "{refused}");
}

/// axe-core, the accessibility checker, from the npm registry: fetched
/// once into `target/` and checked against the registry's sha512.
fn axe_core() -> String {
    const VERSION: &str = "4.14.1";
    const SHA512: &str =
        "FHfa+lmNjQZfJz1q8wKqIDwC6DExcHt/pkjNQb09a3NPjCKg2rhu5qb2S4r76ASyFNNtuFooJpZe37OgudVGtQ==";
    let target = screenshots().parent().expect("target/").to_owned();
    let dir = target.join(format!("axe-core-{VERSION}"));
    let script = dir.join("package/axe.min.js");
    if !script.exists() {
        let tgz = target.join(format!("axe-core-{VERSION}.tgz"));
        let url = format!("https://registry.npmjs.org/axe-core/-/axe-core-{VERSION}.tgz");
        let got = std::process::Command::new("curl").args(["-sSfL", "-o"]).arg(&tgz).arg(&url).status();
        assert!(got.is_ok_and(|s| s.success()), "could not fetch {url} (curl)");
        use base64::Engine as _;
        use sha2::Digest as _;
        let digest = sha2::Sha512::digest(std::fs::read(&tgz).unwrap());
        assert_eq!(
            base64::engine::general_purpose::STANDARD.encode(digest),
            SHA512,
            "{url} is not the published package"
        );
        std::fs::create_dir_all(&dir).unwrap();
        let untar =
            std::process::Command::new("tar").arg("xzf").arg(&tgz).arg("-C").arg(&dir).status().unwrap();
        assert!(untar.success(), "could not unpack {}", tgz.display());
    }
    std::fs::read_to_string(&script).unwrap()
}

#[test]
fn every_page_is_accessible_and_a_held_deletion_is_kept_then_confirmed_from_the_page() {
    if std::env::var("CLINICSYNC_SKIP_BROWSER").is_ok_and(|v| v == "1") {
        eprintln!("skipped: CLINICSYNC_SKIP_BROWSER=1");
        return;
    }
    if let Err(e) = available() {
        panic!("{e} (or set CLINICSYNC_SKIP_BROWSER=1 to skip this test)");
    }
    let axe = axe_core();
    // A family with something on every page: a conflict, a held deletion.
    let fam = Family::new();
    let a = fam.init("a");
    let b = fam.init("b");
    let ids: Vec<String> = (0..30).map(|n| add_patient(&app(&a), n, 1)).collect();
    sync_ok(&a);
    sync_ok(&b);
    edit_at_both(&a, &b, &ids[29], "phone", "+1 555 0101", "+1 555 0202");
    for id in &ids[..25] {
        app(&b).execute("DELETE FROM patients WHERE id = ?1", [id]).unwrap();
    }
    sync_ok(&b);
    assert_eq!(sync(&a).0, 3, "the deletion is held at A");
    set(&a, &["sync_interval=1h", "watch=off"]);
    let service = Service::start(&a);
    let browser = Browser::start();
    browser.goto(&format!("{}/?token={}", service.base, service.token));
    let mut found = Vec::new();
    for path in [
        "/",
        "/logs",
        "/conflicts",
        "/settings",
        "/maintenance/baseline-upload",
        "/held/keep",
        "/history?q=given29",
    ] {
        browser.goto(&format!("{}{path}", service.base));
        let result = browser.run_async(&format!(
            "{axe}\n;axe.run(document).then(r => arguments[0](r.violations.filter(v => v.impact === 'serious' || v.impact === 'critical').map(v => v.id + ' (' + v.impact + '): ' + v.help + ': ' + v.nodes.map(n => n.target.join(' ')).join(', '))), e => arguments[0](['axe failed: ' + e]))"
        ));
        for v in result.as_array().expect("a list of violations") {
            found.push(format!("{path}: {}", v.as_str().unwrap_or_default()));
        }
    }
    assert!(found.is_empty(), "serious accessibility violations:\n{}", found.join("\n"));
    // The check itself works: a page with an image without a text
    // alternative and an unlabelled field fails it.
    let broken = browser.run_async(&format!(
        "document.body.insertAdjacentHTML('beforeend', '<img src=\"/x.png\"><input id=unlabelled>');\n{axe}\n;axe.run(document).then(r => arguments[0](r.violations.map(v => v.id)))"
    ));
    let found: Vec<&str> = broken.as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(found.contains(&"image-alt") && found.contains(&"label"), "{found:?}");

    // By keyboard alone: Tab reaches the verdict's button, which shows
    // where the focus is, and Enter follows it.
    browser.goto(&format!("{}/", service.base));
    let mut reached = false;
    for _ in 0..60 {
        browser.press("\u{E004}");
        let focused = browser.run_async("arguments[0](document.activeElement.textContent)");
        if focused == "Decide" {
            reached = true;
            break;
        }
    }
    assert!(reached, "Tab never reached the verdict's Decide button");
    let outline = browser.run_async("arguments[0](getComputedStyle(document.activeElement).outlineStyle)");
    assert_eq!(outline, "solid", "the focus is visible");
    // The page's poll (every 3 s) keeps the focus where it is.
    let kept = browser.run_async(
        "poll().then(d => arguments[0]([d !== null, document.activeElement.textContent]), e => arguments[0]([false, String(e)]))",
    );
    assert_eq!(kept, serde_json::json!([true, "Decide"]), "a poll redrew the verdict under the focus");
    browser.press("\u{E007}");
    // The page says when it moved to the section: its hashchange event.
    let moved = browser.run_async(
        "const done = arguments[0]; if (location.hash === '#held') done(location.hash); else window.addEventListener('hashchange', () => done(location.hash), { once: true });",
    );
    assert_eq!(moved, "#held", "Enter did not follow the button: {}", browser.url());

    // The held deletion, decided from the page: kept (refused) first...
    let shots = screenshots();
    browser.goto(&format!("{}/", service.base));
    let held = browser.text("#held");
    assert!(held.contains("b deleted 25 patients.") && held.contains("Given0 Family0"), "{held}");
    browser.screenshot(&shots.join("held-deletions.png"));
    browser.click("#held-keep");
    browser.wait_text("main", Duration::from_secs(10), |t| t.contains("These 25 patients stay here"));
    browser.click("#confirm");
    browser.wait_text(".notice", Duration::from_secs(30), |t| t.contains("Kept 25 patients"));
    sync_ok(&b);
    assert_eq!(app(&b).query_row("SELECT count(*) FROM patients", [], |r| r.get::<_, i64>(0)).unwrap(), 30);
    // ...then, deleted again at B, confirmed here.
    for id in &ids[..22] {
        app(&b).execute("DELETE FROM patients WHERE id = ?1", [id]).unwrap();
    }
    sync_ok(&b);
    assert_eq!(sync(&a).0, 3, "held again");
    browser.goto(&format!("{}/", service.base));
    browser.click("#held-delete");
    browser.wait_text("main", Duration::from_secs(10), |t| {
        t.contains("These 22 patients, and the 66 rows that go with them, are deleted here too")
    });
    browser.click("#confirm");
    browser.wait_text(".notice", Duration::from_secs(30), |t| t.contains("Deleted 22 patients here too."));
    assert_eq!(app(&a).query_row("SELECT count(*) FROM patients", [], |r| r.get::<_, i64>(0)).unwrap(), 8);
}
