//! The Conflicts page as decisions: grouped by patient (by name), both
//! values in full (a long one folded), who typed each and when, "Keep
//! this" on either side, "Keep every value shown" for one patient behind a
//! confirmation, and the outcome said in words. Ids only in a details
//! toggle.

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use super::operations::{confirm_form, confirmed, page};
use super::pages::{self, esc};
use super::{CheckedForm, WebState, blocking, page_context, refuse};
use crate::db::Keep;
use crate::engine::{self, ConflictView as Shown};

pub(super) fn routes() -> Router<WebState> {
    Router::new()
        .route("/conflicts", get(conflicts_page))
        .route("/conflicts/{id}/resolve", post(resolve))
        .route("/conflicts/keep-shown", get(keep_shown_confirm).post(keep_shown))
        .route("/conflicts/keep-site", get(keep_site_confirm).post(keep_site))
}

/// Values longer than this are folded (the start shown, the rest behind a
/// toggle).
const FOLD_CHARS: usize = 160;

/// A value in full, escaped, with what `other` does not have marked; a
/// long one folded behind a toggle.
fn value_html(value: &crate::model::Value, other: Option<&crate::model::Value>) -> String {
    let text = value.display_full();
    let marked = match other {
        Some(other) => highlight(&text, &other.display_full()),
        None => esc(&text),
    };
    if text.chars().count() <= FOLD_CHARS {
        return format!(r#"<blockquote class="value">{marked}</blockquote>"#);
    }
    let start: String = text.chars().take(FOLD_CHARS).collect();
    format!(
        r#"<blockquote class="value"><details><summary>{}… (show all)</summary>{marked}</details></blockquote>"#,
        esc(&start),
    )
}

/// Longest texts (in words) whose differences are marked; longer ones are
/// shown plain.
const DIFF_WORDS: usize = 600;

/// `text`, escaped, with the words the other value does not have in the
/// same place marked (`<mark>`): a word-level longest common subsequence.
fn highlight(text: &str, other: &str) -> String {
    let words = |t: &str| -> Vec<String> {
        let mut out = Vec::new();
        let mut word = String::new();
        for c in t.chars() {
            word.push(c);
            if c.is_whitespace() {
                out.push(std::mem::take(&mut word));
            }
        }
        if !word.is_empty() {
            out.push(word);
        }
        out
    };
    let (a, b) = (words(text), words(other));
    if a.len() > DIFF_WORDS || b.len() > DIFF_WORDS || text == other {
        return esc(text);
    }
    // lcs[i][j]: the common subsequence of a[i..] and b[j..].
    let mut lcs = vec![vec![0u16; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i].trim() == b[j].trim() {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = String::new();
    while i < a.len() {
        if j < b.len() && a[i].trim() == b[j].trim() {
            out.push_str(&esc(&a[i]));
            i += 1;
            j += 1;
        } else if j < b.len() && lcs[i][j + 1] >= lcs[i + 1][j] {
            j += 1;
        } else {
            out.push_str(&format!("<mark>{}</mark>", esc(&a[i])));
            i += 1;
        }
    }
    out
}

fn time(t: &Option<String>) -> String {
    t.as_deref().map(|t| format!(r#" on <time datetime="{0}">{0}</time>"#, esc(t))).unwrap_or_default()
}

/// One record with its two sides and their buttons.
fn record_html(csrf: &str, s: &Shown) -> String {
    let r = &s.record;
    let id = r.id;
    let form = |keep: &str, label: &str, class: &str| {
        format!(
            r#"<form class="inline" method="post" action="/conflicts/{id}/resolve"><input type="hidden" name="csrf" value="{csrf}"><input type="hidden" name="keep" value="{keep}"><button type="submit" class="{class}" name="choice" value="{keep}">{label}</button></form>"#,
            csrf = esc(csrf),
        )
    };
    let column = esc(&r.column.replace('_', " "));
    // Which row: a child table's row by its name.
    let heading = match &s.row {
        Some(row) => format!("{column} of {} {}", esc(&r.table), esc(row)),
        None => column.clone(),
    };
    // One value with who typed it; `note` (escaped) after.
    let side = |label: &str, value: &crate::model::Value, by: &str, at: &Option<String>, note: &str| {
        // Each side marks what the other does not have.
        let other = (r.kind != "deleted")
            .then(|| if std::ptr::eq(value, &r.value) { &r.winner_value } else { &r.value });
        format!(
            r#"<p>{label}</p>{value}<p class="muted">typed at {by}{at}{note}</p>"#,
            label = esc(label),
            value = value_html(value, other),
            by = esc(by),
            at = time(at),
        )
    };
    let (shown, other, keep_shown, keep_other) = if r.kind == "deleted" {
        (
            format!(
                "<p>This {table} row was deleted at {by}{at}, and the deletion did not see this edit.</p>",
                table = esc(&r.table),
                by = esc(&s.kept_by),
                at = time(&s.kept_at)
            ),
            side(
                &format!("The edit: {}", r.column.replace('_', " ")),
                &r.value,
                &s.lost_by,
                &s.lost_at,
                ". Restoring brings the row back with this value.",
            ),
            form("winner", "Keep the deletion", "secondary"),
            form("loser", "Restore the row with this value", "secondary"),
        )
    } else {
        (
            side("Shown now", &r.winner_value, &s.kept_by, &s.kept_at, ""),
            side("The other value", &r.value, &s.lost_by, &s.lost_at, ""),
            form("winner", "Keep this", "secondary"),
            form("loser", "Keep this", "secondary"),
        )
    };
    format!(
        r#"<article class="conflict" id="conflict-{id}"><h3>{heading} <span class="muted">({table})</span></h3>
<div class="sides"><div class="side">{shown}{keep_shown}</div><div class="side">{other}{keep_other}</div></div>
<details class="ids"><summary>Details</summary><span class="path">record #{id} · {table} {pk} · {hlc}</span></details></article>"#,
        table = esc(&r.table),
        pk = esc(&r.pk),
        hlc = esc(&r.hlc),
    )
}

#[derive(serde::Deserialize)]
struct Done {
    /// A record just settled, and the side kept (`winner` or `loser`).
    #[serde(default)]
    done: Option<i64>,
    #[serde(default)]
    side: Option<String>,
    /// How many records "Keep every value shown" settled.
    #[serde(default)]
    kept: Option<u64>,
}

async fn conflicts_page(State(st): State<WebState>, Query(q): Query<Done>) -> Response {
    let db = st.shared.db().to_path_buf();
    let all = q.done.is_some();
    let shown = match blocking(move || engine::conflict_views(&db, all)).await {
        Ok(shown) => shown,
        Err(r) => return r,
    };
    let mut body = String::from("<h1>Conflicts</h1>");
    if let Some(id) = q.done
        && let Some(s) = shown.iter().find(|s| s.record.id == id)
    {
        let loser = q.side.as_deref() == Some("loser");
        body.push_str(&format!(
            r#"<p class="notice done" role="status">{}</p>"#,
            esc(&outcome_words(s, loser))
        ));
    }
    if let Some(n) = q.kept {
        body.push_str(&format!(
            r#"<p class="notice done" role="status">Kept the {n} values chosen; every site will show them after its next sync.</p>"#
        ));
    }
    let open: Vec<&Shown> = shown.iter().filter(|s| s.record.status == "open").collect();
    if open.is_empty() {
        body.push_str("<p>No open conflicts.</p>");
        return Html(pages::layout("Conflicts", "/conflicts", &page_context(&st), &body, "")).into_response();
    }
    body.push_str(
        r#"<p class="muted">Two sites changed the same value before either saw the other's change. Every site shows the same one of them; the other is kept here until someone chooses.</p>"#,
    );
    // One site's values everywhere, for a person who knows that site is right.
    let mut sites: BTreeMap<String, String> = BTreeMap::new();
    for s in &open {
        for (id, name) in s.sites() {
            sites.insert(name, id);
        }
    }
    if open.len() > 1 && sites.len() > 1 {
        body.push_str(r#"<p class="bulk">"#);
        for (name, id) in &sites {
            body.push_str(&format!(
                r#"<a class="button-link" href="/conflicts/keep-site?site={}">Keep every value typed at {}…</a> "#,
                esc(id),
                esc(name)
            ));
        }
        body.push_str("</p>");
    }
    let mut by_patient: BTreeMap<(String, String), Vec<&Shown>> = BTreeMap::new();
    for s in open {
        by_patient
            .entry((s.patient.clone(), s.record.patient.clone().unwrap_or_default()))
            .or_default()
            .push(s);
    }
    for ((name, id), records) in &by_patient {
        body.push_str(&format!(r#"<section class="patient"><h2>{}</h2>"#, super::history::link(id, name)));
        for s in records {
            body.push_str(&record_html(&st.csrf, s));
        }
        if records.len() > 1 {
            body.push_str(&format!(
                r#"<form method="get" action="/conflicts/keep-shown"><input type="hidden" name="patient" value="{}"><button type="submit" class="secondary">Keep every value shown for {}…</button></form>"#,
                esc(id),
                esc(name)
            ));
        }
        body.push_str("</section>");
    }
    Html(pages::layout("Conflicts", "/conflicts", &page_context(&st), &body, "")).into_response()
}

/// What a settled record now means, in words; `loser`: the other value
/// was kept.
fn outcome_words(s: &Shown, loser: bool) -> String {
    let r = &s.record;
    let column = r.column.replace('_', " ");
    match (r.kind.as_str(), loser) {
        ("deleted", true) => format!(
            "Restored {}'s {} row with the {column} typed at {}; every site will show it after its next sync.",
            s.patient, r.table, s.lost_by
        ),
        ("deleted", false) => {
            format!("Kept the deletion of {}'s {} row; every site already agrees.", s.patient, r.table)
        }
        (_, true) => format!(
            "Kept the {column} typed at {} for {}; every site will show it after its next sync.",
            s.lost_by, s.patient
        ),
        (_, false) => format!(
            "Kept the {column} typed at {} for {}; every site will show it after its next sync.",
            s.kept_by, s.patient
        ),
    }
}

async fn resolve(
    State(st): State<WebState>,
    Path(id): Path<i64>,
    CheckedForm(form): CheckedForm,
) -> Response {
    let (keep, side) = match form.get("keep").map(String::as_str) {
        Some("winner") => (Keep::Winner, "winner"),
        Some("loser") => (Keep::Loser, "loser"),
        _ => return refuse(StatusCode::BAD_REQUEST, "Choose which value to keep."),
    };
    let db = st.shared.db().to_path_buf();
    // Resolving takes the sync lock; it waits for a run in progress.
    match blocking(move || engine::resolve_conflict_waiting(&db, id, keep)).await {
        Ok(_) => {
            // Carry the choice to the other sites now.
            let _ = st.shared.sync_now(false);
            Redirect::to(&format!("/conflicts?done={id}&side={side}")).into_response()
        }
        Err(r) => r,
    }
}

#[derive(serde::Deserialize)]
struct PatientQuery {
    patient: String,
}

async fn keep_shown_confirm(State(st): State<WebState>, Query(q): Query<PatientQuery>) -> Response {
    let db = st.shared.db().to_path_buf();
    let shown = match blocking(move || engine::conflict_views(&db, false)).await {
        Ok(shown) => shown,
        Err(r) => return r,
    };
    let mine: Vec<&Shown> =
        shown.iter().filter(|s| s.record.patient.as_deref() == Some(&q.patient)).collect();
    let Some(first) = mine.first() else {
        return page(
            &st,
            "Keep every value shown",
            Some(("done", "No conflict of this patient is open.")),
            &[],
            "",
        );
    };
    let lines: Vec<String> = mine
        .iter()
        .map(|s| {
            format!(
                "{}: keep “{}” (typed at {}), not “{}”",
                s.record.column.replace('_', " "),
                s.record.winner_value.display_short(),
                s.kept_by,
                s.record.value.display_short()
            )
        })
        .collect();
    let n = mine.len().to_string();
    let form = confirm_form(
        &st,
        "/conflicts/keep-shown",
        &[("confirm", "yes"), ("patient", &q.patient), ("count", &n)],
        "",
        "Keep them",
    );
    page(&st, &format!("Keep every value shown for {}", first.patient), None, &lines, &form)
}

async fn keep_shown(State(st): State<WebState>, CheckedForm(form): CheckedForm) -> Response {
    let patient = form.get("patient").cloned().unwrap_or_default();
    let choose =
        move |s: &Shown| (s.record.patient.as_deref() == Some(patient.as_str())).then_some(Keep::Winner);
    settle_many(&st, &form, "Keep every value shown", "conflicts of this patient are open", choose).await
}

/// Settles at once the open records `choose` picks (and how), once
/// confirmed, if they are as many as the person was shown (`count`).
async fn settle_many(
    st: &WebState,
    form: &std::collections::HashMap<String, String>,
    title: &str,
    what: &str,
    choose: impl Fn(&Shown) -> Option<Keep> + Send + 'static,
) -> Response {
    if !confirmed(form) {
        return Redirect::to("/conflicts").into_response();
    }
    let count: usize = form.get("count").and_then(|c| c.parse().ok()).unwrap_or(0);
    let db = st.shared.db().to_path_buf();
    let result = blocking(move || {
        let choices: Vec<(i64, Keep)> = engine::conflict_views(&db, false)?
            .iter()
            .filter_map(|s| choose(s).map(|keep| (s.record.id, keep)))
            .collect();
        if choices.len() != count {
            return Ok(Err(choices.len()));
        }
        for (id, keep) in &choices {
            engine::resolve_conflict_waiting(&db, *id, *keep)?;
        }
        Ok(Ok(choices.len()))
    })
    .await;
    match result {
        Ok(Ok(n)) => {
            let _ = st.shared.sync_now(false);
            Redirect::to(&format!("/conflicts?kept={n}")).into_response()
        }
        Ok(Err(now)) => {
            let msg = format!("Nothing was kept: {now} {what} now, not the {count} you were shown.");
            page(
                st,
                title,
                Some(("error", &msg)),
                &[],
                r#"<p><a href="/conflicts">Back to Conflicts</a></p>"#,
            )
        }
        Err(r) => r,
    }
}

#[derive(serde::Deserialize)]
struct SiteQuery {
    site: String,
}

async fn keep_site_confirm(State(st): State<WebState>, Query(q): Query<SiteQuery>) -> Response {
    let db = st.shared.db().to_path_buf();
    let shown = match blocking(move || engine::conflict_views(&db, false)).await {
        Ok(shown) => shown,
        Err(r) => return r,
    };
    let mine: Vec<(&Shown, bool)> =
        shown.iter().filter_map(|s| s.side_typed_at(&q.site).map(|shown_side| (s, shown_side))).collect();
    let Some((first, shown_side)) = mine.first() else {
        return page(
            &st,
            "Keep every value typed at one site",
            Some(("done", "No open conflict has a value typed there.")),
            &[],
            "",
        );
    };
    let site = if *shown_side { &first.kept_by } else { &first.lost_by };
    let lines: Vec<String> = mine
        .iter()
        .map(|(s, shown_side)| {
            let (keep, not) = if *shown_side {
                (&s.record.winner_value, &s.record.value)
            } else {
                (&s.record.value, &s.record.winner_value)
            };
            format!(
                "{}, {}: keep “{}”, not “{}”",
                s.patient,
                s.record.column.replace('_', " "),
                keep.display_short(),
                not.display_short()
            )
        })
        .collect();
    let n = mine.len().to_string();
    let form = confirm_form(
        &st,
        "/conflicts/keep-site",
        &[("confirm", "yes"), ("site", &q.site), ("count", &n)],
        "",
        "Keep them",
    );
    page(&st, &format!("Keep every value typed at {site}"), None, &lines, &form)
}

async fn keep_site(State(st): State<WebState>, CheckedForm(form): CheckedForm) -> Response {
    let site = form.get("site").cloned().unwrap_or_default();
    let choose =
        move |s: &Shown| s.side_typed_at(&site).map(|shown| if shown { Keep::Winner } else { Keep::Loser });
    settle_many(
        &st,
        &form,
        "Keep every value typed at one site",
        "conflicts have a value typed there",
        choose,
    )
    .await
}
