//! The patient history page: a search by name (or id), the patients it
//! matched, and one patient's changes, oldest first: when, who, which
//! field, the old and the new value.

use axum::Router;
use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

use super::pages::{self, esc};
use super::{WebState, blocking, page_context};
use crate::engine;

pub(super) fn routes() -> Router<WebState> {
    Router::new().route("/history", get(history_page))
}

/// The search form (on Status and on this page).
pub(super) fn search_form(value: &str) -> String {
    format!(
        r#"<form method="get" action="/history" role="search" class="search"><label for="patient-search">Find a patient's history</label><input id="patient-search" name="q" value="{}" placeholder="a name, or part of one"> <button type="submit" class="secondary">Show history</button></form>"#,
        esc(value)
    )
}

/// A link to a patient's history.
pub(super) fn link(id: &str, name: &str) -> String {
    format!(r#"<a href="/history?q={}">{}</a>"#, esc(&url_encode(id)), esc(name))
}

/// Percent-encodes a query value (ids are plain, names may not be).
fn url_encode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[derive(serde::Deserialize)]
struct Search {
    #[serde(default)]
    q: String,
}

async fn history_page(State(st): State<WebState>, Query(search): Query<Search>) -> Response {
    let mut body = format!("<h1>Patient history</h1>{}", search_form(&search.q));
    if !search.q.trim().is_empty() {
        let db = st.shared.db().to_path_buf();
        let q = search.q.clone();
        let report = match blocking(move || engine::history(&db, &q)).await {
            Ok(r) => r,
            Err(r) => return r,
        };
        match &report.patient {
            None if report.matches.is_empty() => body.push_str(&format!(
                r#"<p class="notice">No patient's name matches “{}”.</p>"#,
                esc(&search.q)
            )),
            None => {
                body.push_str(&format!(
                    r#"<p>{} patients match “{}”:</p><ul id="matches">"#,
                    report.matches.len(),
                    esc(&search.q)
                ));
                for m in &report.matches {
                    body.push_str(&format!(
                        "<li>{}</li>",
                        link(&m.id, m.name.as_deref().unwrap_or("a patient without a name"))
                    ));
                }
                body.push_str("</ul>");
            }
            Some(p) => {
                body.push_str(&format!(
                    r#"<h2 id="patient">{}</h2><details class="ids"><summary>Details</summary><span class="path">{}</span></details>
<p class="muted">Every change this computer knows of, oldest first: values replaced here or at another site, rows deleted or brought back, and what each field shows now.</p>
<table id="history"><thead><tr><th scope="col">When</th><th scope="col">Who</th><th scope="col">What</th><th scope="col">Was</th><th scope="col">Became</th></tr></thead><tbody>"#,
                    esc(p.name.as_deref().unwrap_or("a patient without a name")),
                    esc(&p.id)
                ));
                for l in &report.lines {
                    let column = l.column.as_deref().unwrap_or("").replace('_', " ");
                    let table = match &l.row {
                        Some(row) => format!("{} {row}", l.table),
                        None => l.table.clone(),
                    };
                    let what = match l.kind.as_str() {
                        "deleted" => format!("{table}: row deleted"),
                        "restored" => format!("{table}: row brought back"),
                        "set" => format!("{table}: {column} (shown now)"),
                        _ => format!("{table}: {column}"),
                    };
                    let when =
                        l.at.as_deref()
                            .map(|t| format!(r#"<time datetime="{0}">{0}</time>"#, esc(t)))
                            .unwrap_or_default();
                    body.push_str(&format!(
                        r#"<tr class="{kind}"><td>{when}</td><td>{by}</td><td>{what}</td><td>{old}</td><td>{new}</td></tr>"#,
                        kind = esc(&l.kind),
                        by = esc(&l.by),
                        what = esc(&what),
                        old = esc(l.old_value.as_deref().unwrap_or("")),
                        new = esc(l.new_value.as_deref().unwrap_or("")),
                    ));
                }
                body.push_str("</tbody></table>");
            }
        }
    }
    Html(pages::layout("Patient history", "/history", &page_context(&st), &body, "")).into_response()
}
