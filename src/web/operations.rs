//! The page's maintenance operations (listed on Settings): verify the
//! folder, repair it from this computer (`baseline upload`), make this
//! computer's tables equal to the family's (`baseline download`), leave
//! the family (`detach`) and delete the family's data (`family delete`).
//! Each that changes something opens on a confirmation that says, from the
//! operation's own dry run, what it will change; only the confirmed form
//! runs it. Leaving and deleting end syncing here, so they stop the
//! scheduler first and the service after answering.

use axum::Router;
use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use super::pages::{self, esc};
use super::{CheckedForm, WebState, page_context};
use crate::engine::{self, EngineError};
use crate::model::short_id;

pub(super) fn routes() -> Router<WebState> {
    Router::new()
        .route("/maintenance/verify", post(verify))
        .route("/maintenance/baseline-upload", get(upload_confirm).post(upload))
        .route("/maintenance/baseline-download", get(download_confirm).post(download))
        .route("/maintenance/detach", get(detach_confirm).post(detach))
        .route("/maintenance/family-delete", get(family_confirm).post(family_delete))
}

/// The Settings page's list of operations.
pub(super) fn section(ctx: &pages::Context, tables: &[String]) -> String {
    let options: String =
        tables.iter().map(|t| format!(r#"<option value="{0}">{0} only</option>"#, esc(t))).collect();
    format!(
        r#"<h2 id="maintenance">Maintenance</h2>
<div class="field"><form method="post" action="/maintenance/verify"><input type="hidden" name="csrf" value="{csrf}">
<button type="submit" class="secondary" id="op-verify">Verify the folder</button></form>
<div class="help">Reads every file in the sync folder and checks it; changes nothing. Problems are listed in Latest Logs.</div></div>
<div class="field"><a href="/maintenance/baseline-upload" id="op-upload">Repair the folder from this computer…</a>
<div class="help">Writes every patient file and this computer's change-log again from its database, for a folder damaged by a person or a cloud client.</div></div>
<div class="field"><form method="get" action="/maintenance/baseline-download"><label for="op-download-table">Make this computer's tables equal to the family's</label>
<select id="op-download-table" name="table"><option value="">every table</option>{options}</select>
<button type="submit" class="secondary" id="op-download">Review…</button></form>
<div class="help">For a database damaged here (rows lost or changed past clinicsync). What this computer changed is sent first, and the database is copied before anything is replaced.</div></div>
<div class="field"><a href="/maintenance/detach" id="op-detach">Stop syncing this computer (leave the family)…</a>
<div class="help">The app's data stays as it is; clinicsync's tables are removed from the database.</div></div>
<div class="field"><a href="/maintenance/family-delete" id="op-family-delete">Delete the family's data from the sync folder…</a>
<div class="help">For when the practice stops using clinicsync: every site keeps its data; the folder's copy of it is removed.</div></div>"#,
        csrf = esc(&ctx.csrf),
    )
}

/// A page of the operations: its title, sentences (escaped here) and an
/// optional form (already HTML).
pub(super) fn page(
    st: &WebState,
    title: &str,
    notice: Option<(&str, &str)>,
    lines: &[String],
    form: &str,
) -> Response {
    let mut body = format!("<h1>{}</h1>", esc(title));
    if let Some((class, text)) = notice {
        let role = if class.contains("error") { "alert" } else { "status" };
        body.push_str(&format!(r#"<p class="notice {class}" role="{role}">{}</p>"#, esc(text)));
    }
    for line in lines {
        body.push_str(&format!("<p>{}</p>", esc(line)));
    }
    body.push_str(form);
    Html(pages::layout(title, "/settings", &page_context(st), &body, "")).into_response()
}

/// A confirmation form: hidden fields, then `inner` (already HTML), then
/// the button, and a way back.
pub(super) fn confirm_form(
    st: &WebState,
    action: &str,
    hidden: &[(&str, &str)],
    inner: &str,
    button: &str,
) -> String {
    let hidden: String = hidden
        .iter()
        .map(|(k, v)| format!(r#"<input type="hidden" name="{}" value="{}">"#, esc(k), esc(v)))
        .collect();
    format!(
        r#"<form method="post" action="{action}"><input type="hidden" name="csrf" value="{csrf}">{hidden}{inner}
<button type="submit" id="confirm">{button}</button> <a href="/settings#maintenance">Cancel</a></form>"#,
        csrf = esc(&st.csrf),
        button = esc(button),
    )
}

/// A list of paths, at most `max` shown.
fn list(items: &[String], max: usize) -> String {
    let mut out: Vec<String> = items.iter().take(max).cloned().collect();
    if items.len() > max {
        out.push(format!("and {} more", items.len() - max));
    }
    out.join(", ")
}

/// Runs an operation off the async threads; its error as a sentence.
pub(super) async fn run<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, EngineError> + Send + 'static,
) -> Result<T, String> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(e) => Err(format!("internal error: {e}")),
    }
}

async fn verify(State(st): State<WebState>, _form: CheckedForm) -> Response {
    let db = st.shared.db().to_path_buf();
    match run(move || engine::verify(&db)).await {
        Ok(_) => Redirect::to("/logs").into_response(),
        Err(e) => page(&st, "Verify the folder", Some(("error", &e)), &[], ""),
    }
}

pub(super) fn confirmed(form: &std::collections::HashMap<String, String>) -> bool {
    form.get("confirm").is_some_and(|v| v == "yes")
}

async fn upload_confirm(State(st): State<WebState>) -> Response {
    let title = "Repair the folder from this computer";
    let db = st.shared.db().to_path_buf();
    let dry = match run(move || engine::baseline_upload(&db, true)).await {
        Ok(r) => r,
        Err(e) => return page(&st, title, Some(("error", &e)), &[], ""),
    };
    let mut lines = vec![
        "This writes every row this computer holds into its change-log again, and every patient file again from its database. Other sites' newer values stay, and nothing is deleted anywhere. A sync runs first and after.".to_owned(),
    ];
    lines.push(match dry.replaced.len() {
        0 => "No patient file in the folder is damaged.".to_owned(),
        n => format!(
            "{n} damaged patient files will be replaced (each is copied beside the database first): {}.",
            list(&dry.replaced, 20)
        ),
    });
    if !dry.not_held.is_empty() {
        lines.push(format!(
            "{} damaged files are of patients this computer does not hold; they are left as they are: {}.",
            dry.not_held.len(),
            list(&dry.not_held, 20)
        ));
    }
    let form =
        confirm_form(&st, "/maintenance/baseline-upload", &[("confirm", "yes")], "", "Repair the folder");
    page(&st, title, None, &lines, &form)
}

async fn upload(State(st): State<WebState>, CheckedForm(form): CheckedForm) -> Response {
    let title = "Repair the folder from this computer";
    if !confirmed(&form) {
        return Redirect::to("/maintenance/baseline-upload").into_response();
    }
    let db = st.shared.db().to_path_buf();
    match run(move || engine::baseline_upload(&db, false)).await {
        Ok(r) => {
            let mut lines = vec![format!(
                "{} rows were published again in {} exports, and every patient file was written again.",
                r.rows, r.exports
            )];
            if let Some(copies) = &r.replaced_copies {
                lines.push(format!(
                    "Replaced {} damaged files; the damaged files were kept in {copies}.",
                    r.replaced.len()
                ));
            }
            page(&st, title, Some(("done", "The folder was repaired.")), &lines, LOGS_LINK)
        }
        Err(e) => page(&st, title, Some(("error", &format!("Nothing was replaced: {e}"))), &[], LOGS_LINK),
    }
}

pub(super) const LOGS_LINK: &str = r#"<p><a href="/logs">See Latest Logs</a></p>"#;

#[derive(serde::Deserialize)]
struct TableQuery {
    #[serde(default)]
    table: String,
}

async fn download_confirm(State(st): State<WebState>, Query(q): Query<TableQuery>) -> Response {
    let title = "Make this computer's tables equal to the family's";
    let db = st.shared.db().to_path_buf();
    let table = (!q.table.is_empty()).then(|| q.table.clone());
    let dry = match run(move || engine::baseline_download(&db, table.as_deref(), true)).await {
        Ok(r) => r,
        Err(e) => return page(&st, title, Some(("error", &e)), &[], ""),
    };
    let mut lines = vec![
        "First a sync sends what this computer changed, and the database is copied beside itself (a backup you can open). Then each table is made equal to what the family holds:".to_owned(),
    ];
    for t in &dry.tables {
        lines.push(format!(
            "{}: {} rows put back, {} corrected, {} removed (as of now; the sync may bring more).",
            t.table, t.added, t.changed, t.removed
        ));
    }
    let form = confirm_form(
        &st,
        "/maintenance/baseline-download",
        &[("confirm", "yes"), ("table", &q.table)],
        "",
        "Replace them",
    );
    page(&st, title, None, &lines, &form)
}

async fn download(State(st): State<WebState>, CheckedForm(form): CheckedForm) -> Response {
    let title = "Make this computer's tables equal to the family's";
    let table = form.get("table").filter(|t| !t.is_empty()).cloned();
    if !confirmed(&form) {
        return Redirect::to("/maintenance/baseline-download").into_response();
    }
    let db = st.shared.db().to_path_buf();
    match run(move || engine::baseline_download(&db, table.as_deref(), false)).await {
        Ok(r) => {
            let mut lines: Vec<String> = r
                .tables
                .iter()
                .map(|t| {
                    format!(
                        "{}: {} rows put back, {} corrected, {} removed.",
                        t.table, t.added, t.changed, t.removed
                    )
                })
                .collect();
            if let Some(backup) = &r.backup {
                lines.push(format!("The database as it was is kept in {backup}."));
            }
            page(&st, title, Some(("done", "The tables are equal to the family's.")), &lines, LOGS_LINK)
        }
        Err(e) => page(&st, title, Some(("error", &format!("Nothing was replaced: {e}"))), &[], LOGS_LINK),
    }
}

async fn detach_confirm(State(st): State<WebState>) -> Response {
    let title = "Stop syncing this computer";
    let db = st.shared.db().to_path_buf();
    let dry = match run(move || engine::detach(&db, true)).await {
        Ok(r) => r,
        Err(e) => return page(&st, title, Some(("error", &e)), &[], ""),
    };
    let lines = [
        format!(
            "This computer ({}) leaves the family {}. First a sync sends its {} changes not yet in the folder; then a last note tells the other sites it left, so they stop waiting for it.",
            dry.site_name,
            short_id(&dry.family),
            dry.pending_changes
        ),
        format!(
            "Then clinicsync's {} triggers and {} tables are removed from the database, and with them the patient history clinicsync kept here (a backup of the database keeps it). The app's data stays exactly as it is. clinicsync stops here; to join again later, set it up again (`clinicsync init`).",
            dry.triggers, dry.tables
        ),
    ];
    let form = confirm_form(&st, "/maintenance/detach", &[("confirm", "yes")], "", "Leave the family");
    page(&st, title, None, &lines, &form)
}

async fn detach(State(st): State<WebState>, CheckedForm(form): CheckedForm) -> Response {
    if !confirmed(&form) {
        return Redirect::to("/maintenance/detach").into_response();
    }
    let db = st.shared.db().to_path_buf();
    let result = ending(&st, move || engine::detach(&db, false)).await;
    let title = "Stop syncing this computer";
    match result {
        Ok(r) => page(
            &st,
            title,
            Some(("done", "This computer has left the family, and clinicsync has stopped here.")),
            &[format!(
                "Its changes were sent first; {} triggers and {} tables of clinicsync were removed; the app's data is as it was.",
                r.triggers, r.tables
            )],
            "",
        ),
        Err(e) => page(&st, title, Some(("error", &stopped_after(&e))), &[], ""),
    }
}

async fn family_confirm(State(st): State<WebState>) -> Response {
    let title = "Delete the family's data from the sync folder";
    let db = st.shared.db().to_path_buf();
    let dry = match run(move || engine::family_delete(&db, "", true)).await {
        Ok(r) => r,
        Err(e) => return page(&st, title, Some(("error", &e)), &[], ""),
    };
    let family = short_id(&dry.family).to_owned();
    let mut lines = vec![
        format!(
            "This computer leaves the family first (its changes are sent), then {} files of the family are removed from the sync folder: site files, change-logs, patient files and document files. A short note stays in their place saying this computer deleted them.",
            dry.files
        ),
        "Every site keeps all the data in its own database; the other sites stop syncing and say why. Nothing is deleted from any database.".to_owned(),
    ];
    if !dry.left_alone.is_empty() {
        lines.push(format!(
            "{} files in the folder are not the family's and stay: {}.",
            dry.left_alone.len(),
            list(&dry.left_alone, 20)
        ));
    }
    let inner = format!(
        r#"<div class="field"><label for="confirm-family">Type the family's id, {family}, to confirm</label><input id="confirm-family" name="family" autocomplete="off" required></div>"#,
        family = esc(&family)
    );
    let form = confirm_form(
        &st,
        "/maintenance/family-delete",
        &[("confirm", "yes")],
        &inner,
        "Delete the family's data",
    );
    page(&st, title, None, &lines, &form)
}

async fn family_delete(State(st): State<WebState>, CheckedForm(form): CheckedForm) -> Response {
    let title = "Delete the family's data from the sync folder";
    let typed = form.get("family").map(|t| t.trim().to_owned()).unwrap_or_default();
    let db = st.shared.db().to_path_buf();
    // The typed id is checked before syncing stops: a typo changes nothing.
    let family = {
        let db = db.clone();
        match run(move || Ok(crate::db::Db::open(&db)?.site_config()?.family.to_string())).await {
            Ok(family) => family,
            Err(e) => return page(&st, title, Some(("error", &e)), &[], ""),
        }
    };
    if !confirmed(&form) || (typed != short_id(&family) && typed != family) {
        let msg = format!("Nothing was deleted: the id typed was not this family's ({}).", short_id(&family));
        return page(
            &st,
            title,
            Some(("error", &msg)),
            &[],
            r#"<p><a href="/maintenance/family-delete">Back</a></p>"#,
        );
    }
    match ending(&st, move || engine::family_delete(&db, &typed, false)).await {
        Ok(r) => {
            let mut lines = vec![format!("{} files of the family were removed from the folder.", r.files)];
            if !r.not_removed.is_empty() {
                lines.push(format!("These could not be removed: {}.", list(&r.not_removed, 20)));
            }
            page(
                &st,
                title,
                Some((
                    "done",
                    "The family's data was deleted from the folder, and clinicsync has stopped here.",
                )),
                &lines,
                "",
            )
        }
        Err(e) => page(&st, title, Some(("error", &stopped_after(&e))), &[], ""),
    }
}

/// Runs an operation that ends syncing here: the scheduler stops first
/// (the run in progress finishes), then the operation, then the service
/// once the page has answered, whatever the outcome.
async fn ending<T: Send + 'static>(
    st: &WebState,
    f: impl FnOnce() -> Result<T, EngineError> + Send + 'static,
) -> Result<T, String> {
    if st.shared.stop_syncing().await.is_err() {
        return Err("the service is stopping".to_owned());
    }
    let result = run(f).await;
    st.shared.stop();
    result
}

fn stopped_after(error: &str) -> String {
    format!(
        "It did not happen: {error}. clinicsync has stopped here; start it again (`clinicsync run`) and it syncs as before."
    )
}
