//! Deletions the mass-delete guard holds, on the page: the patients by
//! name with how many of their rows go with them, the site that deleted
//! them and when, and two decisions, **Delete them here too**
//! (`sync --confirm-deletes`) and **Keep them** (`sync --keep-deleted`),
//! each behind a confirmation that carries how many patients it was shown,
//! so a list that grew since is looked at again rather than decided blind.

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use super::operations::{LOGS_LINK, confirm_form, confirmed, page, run};
use super::pages::esc;
use super::{CheckedForm, WebState};
use crate::engine::{self, Outcome, StatusReport, SyncOptions};

pub(super) fn routes() -> Router<WebState> {
    Router::new()
        .route("/held/delete", get(delete_confirm).post(decide_delete))
        .route("/held/keep", get(keep_confirm).post(decide_keep))
}

/// A held patient in words: "Jane Smith, with 12 other rows, deleted at
/// Home visits" (escaped; the time a `<time>` the page shows locally).
fn patient_line(p: &engine::HeldPatientView) -> String {
    let name = match &p.name {
        Some(name) => super::history::link(&p.id, name),
        None => format!(r#"a patient without a name <span class="muted path">{}</span>"#, esc(&p.id)),
    };
    let rows = match p.rows {
        0 => String::new(),
        n => format!(", with {n} appointments, notes and other rows"),
    };
    let by = p.site_name.as_deref().map(|s| format!(", deleted at {}", esc(s))).unwrap_or_default();
    let when = p
        .deleted
        .as_deref()
        .map(|t| format!(r#" on <time datetime="{0}">{0}</time>"#, esc(t)))
        .unwrap_or_default();
    format!("<li>{name}{rows}{by}{when}</li>")
}

/// Who deleted them, in words.
fn deleters(s: &StatusReport) -> String {
    let mut names: Vec<&str> = s.held_patients.iter().filter_map(|p| p.site_name.as_deref()).collect();
    names.sort_unstable();
    names.dedup();
    match names.as_slice() {
        [] => "Another site".to_owned(),
        [one] => one.to_string(),
        many => many.join(" and "),
    }
}

/// The list (escaped HTML), with how many are not shown.
fn list(s: &StatusReport) -> String {
    let mut out = String::from(r#"<ul id="held-list">"#);
    for p in &s.held_patients {
        out.push_str(&patient_line(p));
    }
    out.push_str("</ul>");
    let more = s.held_deletes.patients.saturating_sub(s.held_patients.len() as u64);
    if more > 0 {
        out.push_str(&format!("<p>and {more} more patients.</p>"));
    }
    out
}

/// The Status page's section, when deletions are held.
pub(super) fn section(s: &StatusReport) -> String {
    let h = &s.held_deletes;
    if h.patients == 0 {
        return String::new();
    }
    format!(
        r#"<section id="held" aria-labelledby="held-title"><h2 id="held-title">Deletions waiting for you</h2>
<p class="notice">{who} deleted {n} patients. That is more than clinicsync deletes without asking, so they are still shown here until you decide.</p>
{list}
<form class="inline" method="get" action="/held/delete"><button type="submit" id="held-delete">Delete them here too…</button></form>
<form class="inline" method="get" action="/held/keep"><button type="submit" class="secondary" id="held-keep">Keep them…</button></form></section>"#,
        who = esc(&deleters(s)),
        n = h.patients,
        list = list(s),
    )
}

async fn status(st: &WebState) -> Result<StatusReport, String> {
    let db = st.shared.db().to_path_buf();
    run(move || engine::status(&db)).await
}

async fn delete_confirm(State(st): State<WebState>) -> Response {
    confirm(&st, true).await
}

async fn keep_confirm(State(st): State<WebState>) -> Response {
    confirm(&st, false).await
}

async fn confirm(st: &WebState, delete: bool) -> Response {
    let title = if delete { "Delete them here too" } else { "Keep them" };
    let s = match status(st).await {
        Ok(s) => s,
        Err(e) => return page(st, title, Some(("error", &e)), &[], ""),
    };
    let n = s.held_deletes.patients;
    if n == 0 {
        return page(st, title, Some(("done", "No deletion is waiting any more.")), &[], LOGS_LINK);
    }
    let who = deleters(&s);
    let line = if delete {
        format!(
            "These {n} patients, and the {} rows that go with them, are deleted here too, as {who} deleted them. Every site then agrees they are gone.",
            s.held_deletes.rows.saturating_sub(n)
        )
    } else {
        format!(
            "These {n} patients stay here with everything that goes with them, and go back to every site, {who} included, as new records with the next syncs."
        )
    };
    let action = if delete { "/held/delete" } else { "/held/keep" };
    let button = if delete { "Delete them here too" } else { "Keep them" };
    let shown = n.to_string();
    let form = format!(
        "{}{}",
        list(&s),
        confirm_form(st, action, &[("confirm", "yes"), ("patients", &shown)], "", button)
    );
    page(st, title, None, &[line], &form)
}

async fn decide_delete(State(st): State<WebState>, CheckedForm(form): CheckedForm) -> Response {
    decide(&st, &form, true).await
}

async fn decide_keep(State(st): State<WebState>, CheckedForm(form): CheckedForm) -> Response {
    decide(&st, &form, false).await
}

async fn decide(st: &WebState, form: &std::collections::HashMap<String, String>, delete: bool) -> Response {
    let title = if delete { "Delete them here too" } else { "Keep them" };
    let back = if delete { "/held/delete" } else { "/held/keep" };
    if !confirmed(form) {
        return Redirect::to(back).into_response();
    }
    let s = match status(st).await {
        Ok(s) => s,
        Err(e) => return page(st, title, Some(("error", &e)), &[], ""),
    };
    let shown: u64 = form.get("patients").and_then(|n| n.parse().ok()).unwrap_or(0);
    if shown != s.held_deletes.patients {
        let msg = format!(
            "Nothing was done: {} patients wait now, not the {shown} you were shown. Look at the list again.",
            s.held_deletes.patients
        );
        return page(
            st,
            title,
            Some(("error", &msg)),
            &[],
            &format!(r#"<p><a href="{back}">Review again</a></p>"#),
        );
    }
    let db = st.shared.db().to_path_buf();
    let options = SyncOptions {
        trigger: if delete { "confirm-deletes".into() } else { "keep-deleted".into() },
        confirm_deletes: delete,
        keep_deleted: !delete,
        // The service's own run may hold the database: wait for it.
        wait_for_lock: Some(|| {}),
        ..SyncOptions::default()
    };
    match run(move || engine::sync(&db, &options)).await {
        Ok(report) if report.outcome != Outcome::Failed => {
            let done = if delete {
                format!("Deleted {shown} patients here too.")
            } else {
                format!("Kept {shown} patients; every site shows them again after its next sync.")
            };
            page(st, title, Some(("done", &done)), &[], LOGS_LINK)
        }
        Ok(report) => {
            let e = report.error.unwrap_or_else(|| "the sync failed".into());
            page(st, title, Some(("error", &format!("Nothing was decided: {e}"))), &[], LOGS_LINK)
        }
        Err(e) => page(st, title, Some(("error", &format!("Nothing was decided: {e}"))), &[], LOGS_LINK),
    }
}
