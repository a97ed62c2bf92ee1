//! The local web page of `clinicsync run` (axum, 127.0.0.1 only): Status
//! with Sync Now and live progress, Latest Logs, Conflicts, Settings.
//! Every request needs the token `run` printed (given once as `?token=`,
//! then kept in a same-site cookie); every POST also needs the page's CSRF
//! token and, when the browser names one, this page's own origin.

mod conflicts;
mod held;
mod history;
mod operations;
mod pages;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use sha2::{Digest, Sha256};

use crate::db::Db;
use crate::engine::{self, Outcome, ProgressView};

/// What the page needs of the service that serves it, and all it knows of
/// it: the database, a view of the scheduler, and the requests it makes.
pub trait Service: Send + Sync + 'static {
    /// The database the service syncs.
    fn db(&self) -> &std::path::Path;
    /// What the page shows of the service now.
    fn view(&self) -> ServiceView;
    /// Queues a Sync Now; `from_page`: the page follows its run through
    /// [`ServiceView::page_runs_done`]. `Err` when the service is stopping
    /// or its queue is full.
    fn sync_now(&self, from_page: bool) -> Result<(), Stopping>;
    /// Queues a Sync Now: the receiver fires when its run has finished, and
    /// fails when the service stopped first.
    fn sync_now_and_wait(&self) -> tokio::sync::oneshot::Receiver<()>;
    /// Queues a documents-only run (Sync documents now), as
    /// [`Service::sync_now_and_wait`].
    fn sync_documents_and_wait(&self) -> tokio::sync::oneshot::Receiver<()>;
    /// Queues a run of one table only (the mapping's table at this index),
    /// as [`Service::sync_now_and_wait`].
    fn sync_table_and_wait(&self, table: u16) -> tokio::sync::oneshot::Receiver<()>;
    /// Stops starting runs (the run in progress finishes; requests waiting
    /// are dropped): the receiver fires once no run is in progress and
    /// none will start.
    fn stop_syncing(&self) -> tokio::sync::oneshot::Receiver<()>;
    /// Stops the service, as Ctrl-C does, once the page has answered.
    fn stop(&self);
    /// Settings were saved: the service takes them up.
    fn settings_changed(&self) -> Result<(), engine::EngineError>;
}

/// A request the service cannot take now (stopping, or its queue full).
#[derive(Debug)]
pub struct Stopping;

/// The service as the page shows it.
#[derive(Clone, Debug)]
pub struct ServiceView {
    /// The trigger of the run in progress.
    pub running: Option<&'static str>,
    pub queued: bool,
    pub last_run: Option<(Option<i64>, Outcome)>,
    pub runs_finished: u64,
    pub sync_requests: u64,
    /// The page's Sync Now runs that have finished, and the latest one.
    pub page_runs_done: u64,
    pub last_page_run: Option<(Option<i64>, Outcome)>,
    pub progress: ProgressView,
    /// The latest alerts, newest first.
    pub alerts: Vec<AlertView>,
}

/// An alert the service raised, and what sending it did.
#[derive(Clone, Debug)]
pub struct AlertView {
    pub at_ms: u64,
    pub kind: &'static str,
    pub reason: String,
    pub results: Vec<String>,
}

/// What every handler sees.
#[derive(Clone)]
pub struct WebState {
    shared: Arc<dyn Service>,
    token: Arc<str>,
    csrf: Arc<str>,
    port: u16,
}

/// The page's routes, behind the token and host checks.
pub fn router(shared: Arc<dyn Service>, token: String, port: u16) -> Router {
    let csrf = {
        let digest = Sha256::digest(format!("clinicsync-csrf:{token}").as_bytes());
        let mut hex = String::new();
        crate::model::write_hex_bytes(&mut hex, &digest[..16]);
        hex
    };
    let state = WebState { shared, token: token.into(), csrf: csrf.into(), port };
    Router::new()
        .route("/", get(status_page))
        .route("/logs", get(logs_page))
        .route("/settings", get(settings_page).post(save_settings))
        .route("/sync", post(sync_now))
        .route("/sync-documents", post(sync_documents))
        .route("/sync-table", post(sync_table))
        .route("/api/status", get(api_status))
        .merge(operations::routes())
        .merge(held::routes())
        .merge(conflicts::routes())
        .merge(history::routes())
        .route("/times.js", get(|| async { script(pages::LOCAL_TIMES) }))
        .route("/status.js", get(|| async { script(pages::STATUS_SCRIPT) }))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_FORM_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// One of the page's scripts, served as a file.
fn script(text: &'static str) -> Response {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], text).into_response()
}

fn cookie_name(port: u16) -> String {
    format!("clinicsync_{port}")
}

/// Constant-time comparison of two secrets.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn cookie_token<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn refuse(status: StatusCode, message: &str) -> Response {
    (status, Html(pages::refused(status, message))).into_response()
}

/// The most a form may send: the settings form is well under a kilobyte.
const MAX_FORM_BYTES: usize = 64 * 1024;

/// Every response, refusals included, is kept out of caches, frames and
/// other sites' referrers.
async fn guard(State(st): State<WebState>, request: Request, next: Next) -> Response {
    let mut response = checked(st, request, next).await;
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    // `same-origin`, not `no-referrer`: under `no-referrer` a browser sends
    // `Origin: null` with the page's own form posts, which cannot be told
    // from a sandboxed frame of another site's; `same-origin` already keeps
    // the page's addresses from every other site.
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; script-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    response
}

/// Host check (no DNS rebinding), token check, origin check for POSTs.
async fn checked(st: WebState, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    let allowed_hosts = [format!("127.0.0.1:{}", st.port), format!("localhost:{}", st.port)];
    if !allowed_hosts.iter().any(|h| h == host) {
        return refuse(StatusCode::MISDIRECTED_REQUEST, "This page answers only at 127.0.0.1.");
    }
    // The token in the link `clinicsync run` printed: swap it for a cookie
    // and drop it from the address bar.
    if request.method() == Method::GET
        && let Some(query) = request.uri().query()
        && let Some(given) = query.split('&').find_map(|kv| kv.strip_prefix("token="))
    {
        if !same_secret(given, &st.token) {
            return refuse(StatusCode::UNAUTHORIZED, "This link's token is not the current one.");
        }
        // Only ever to a path on this page (`//host` would leave it).
        let path = format!("/{}", request.uri().path().trim_start_matches('/'));
        let mut response = Redirect::to(&path).into_response();
        let cookie = format!("{}={}; HttpOnly; SameSite=Strict; Path=/", cookie_name(st.port), st.token);
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            response.headers_mut().insert(header::SET_COOKIE, value);
        }
        return response;
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let presented = cookie_token(headers, &cookie_name(st.port)).or(bearer);
    if !presented.is_some_and(|t| same_secret(t, &st.token)) {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "Open this page with the link that `clinicsync run` printed (it carries the page's token).",
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let ours = [format!("http://127.0.0.1:{}", st.port), format!("http://localhost:{}", st.port)];
        let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
        if let Some(origin) = origin
            && !ours.iter().any(|o| o == origin)
        {
            return refuse(StatusCode::FORBIDDEN, "A request from another web site was refused.");
        }
        let fetch_site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
        if fetch_site.is_some_and(|s| s != "same-origin" && s != "none") {
            return refuse(StatusCode::FORBIDDEN, "A request from another web site was refused.");
        }
        // Without an Origin, a Referer that names another site says where
        // the request came from just as well.
        let referer = headers.get(header::REFERER).and_then(|v| v.to_str().ok());
        if origin.is_none()
            && let Some(referer) = referer
            && !ours
                .iter()
                .any(|o| referer == o || referer.strip_prefix(o.as_str()).is_some_and(|r| r.starts_with('/')))
        {
            return refuse(StatusCode::FORBIDDEN, "A request from another web site was refused.");
        }
    }
    next.run(request).await
}

/// A POSTed form that passed the CSRF check: its `csrf` field, or the
/// `X-CSRF-Token` header, carries the page's CSRF token. A body that is
/// not a form carries none and is refused the same way.
struct CheckedForm(HashMap<String, String>);

impl axum::extract::FromRequest<WebState> for CheckedForm {
    type Rejection = Response;

    async fn from_request(request: Request, st: &WebState) -> Result<Self, Response> {
        let header_token =
            request.headers().get("x-csrf-token").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let form = match axum::Form::<HashMap<String, String>>::from_request(request, st).await {
            Ok(f) => f.0,
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(refuse(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "This form sent more than the page accepts; nothing was saved.",
                ));
            }
            // Not a form: no CSRF field in it, refused below unless the
            // header carries the token, and then an empty form.
            Err(_) => HashMap::new(),
        };
        let given = form.get("csrf").cloned().or(header_token);
        if given.is_some_and(|g| same_secret(&g, &st.csrf)) {
            Ok(CheckedForm(form))
        } else {
            Err(csrf_refused())
        }
    }
}

fn csrf_refused() -> Response {
    refuse(
        StatusCode::FORBIDDEN,
        "This form has expired or did not come from this page; reload the page and try again.",
    )
}

/// Runs blocking database work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, engine::EngineError> + Send + 'static,
) -> Result<T, Response> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(refuse(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())),
        Err(e) => Err(refuse(StatusCode::INTERNAL_SERVER_ERROR, &format!("internal error: {e}"))),
    }
}

fn page_context(st: &WebState) -> pages::Context {
    let view = st.shared.view();
    pages::Context { csrf: st.csrf.to_string(), running: view.running.is_some(), progress: view.progress }
}

async fn status_page(State(st): State<WebState>) -> Response {
    let db = st.shared.db().to_path_buf();
    match blocking(move || engine::status(&db)).await {
        Ok(report) => {
            let alerts = st.shared.view().alerts;
            Html(pages::status(&page_context(&st), &report, &alerts)).into_response()
        }
        Err(r) => r,
    }
}

#[derive(serde::Deserialize)]
struct LogsQuery {
    #[serde(default)]
    last: Option<u32>,
}

async fn logs_page(State(st): State<WebState>, Query(q): Query<LogsQuery>) -> Response {
    let db = st.shared.db().to_path_buf();
    let last = q.last.unwrap_or(30).clamp(1, 500);
    let runs = blocking(move || {
        let store = Db::open(&db)?;
        let mut out = Vec::new();
        for run in store.recent_runs(last)? {
            let events = store.run_events(run.id)?;
            out.push((run, events));
        }
        Ok((out, engine::sync_running(&db)))
    })
    .await;
    match runs {
        Ok((runs, running)) => Html(pages::logs(&page_context(&st), &runs, running)).into_response(),
        Err(r) => r,
    }
}

#[derive(serde::Deserialize)]
struct Flash {
    #[serde(default)]
    saved: Option<String>,
}

async fn settings_page(State(st): State<WebState>, Query(flash): Query<Flash>) -> Response {
    let db = st.shared.db().to_path_buf();
    match blocking(move || Ok((engine::settings_list(&db)?, engine::mapped_tables(&db)?))).await {
        Ok((list, tables)) => {
            let ctx = page_context(&st);
            let after = operations::section(&ctx, &tables);
            Html(pages::settings(&ctx, &list, None, flash.saved.is_some(), &after)).into_response()
        }
        Err(r) => r,
    }
}

async fn save_settings(State(st): State<WebState>, CheckedForm(form): CheckedForm) -> Response {
    let db = st.shared.db().to_path_buf();
    let current = match blocking(move || engine::settings_list(&db)).await {
        Ok(list) => list,
        Err(r) => return r,
    };
    let assignments: Vec<String> = current
        .iter()
        .filter_map(|s| {
            let new = form.get(s.key)?.trim();
            (new != s.value).then(|| format!("{}={new}", s.key))
        })
        .collect();
    if assignments.is_empty() {
        // Nothing differs from what is saved (or the form carried no
        // settings at all): nothing to save, and the page does not say so.
        return Redirect::to("/settings").into_response();
    }
    let db = st.shared.db().to_path_buf();
    let result = tokio::task::spawn_blocking(move || engine::settings_set(&db, &assignments)).await;
    match result {
        Ok(Ok(())) => {
            if let Err(e) = st.shared.settings_changed() {
                tracing::warn!("settings saved but not applied to the running service: {e}");
            }
            Redirect::to("/settings?saved=1").into_response()
        }
        Ok(Err(e)) => {
            // Show the form again with what was typed and the reason.
            let mut shown = current;
            for s in &mut shown {
                if let Some(v) = form.get(s.key) {
                    s.value = v.trim().to_owned();
                }
            }
            let body = pages::settings(&page_context(&st), &shown, Some(&e.to_string()), false, "");
            (StatusCode::BAD_REQUEST, Html(body)).into_response()
        }
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, &format!("internal error: {e}")),
    }
}

async fn sync_now(State(st): State<WebState>, headers: HeaderMap, _form: CheckedForm) -> Response {
    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json"));
    if wants_json {
        // The page's script follows its run through /api/status: the count
        // of finished Sync Now runs passes `manual_before` when it is done.
        let before = st.shared.view().page_runs_done;
        return match st.shared.sync_now(true) {
            Ok(()) => (
                StatusCode::ACCEPTED,
                axum::Json(serde_json::json!({ "queued": true, "manual_before": before })),
            )
                .into_response(),
            Err(Stopping) => {
                refuse(StatusCode::SERVICE_UNAVAILABLE, "The service is stopping or busy; try again.")
            }
        };
    }
    // Without script: wait for the run, then show Latest Logs.
    if st.shared.sync_now_and_wait().await.is_err() {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "The service is stopping; try again after it restarts.",
        );
    }
    Redirect::to("/logs").into_response()
}

/// Sync documents now: waits for the documents-only run, then shows
/// Latest Logs.
async fn sync_documents(State(st): State<WebState>, _form: CheckedForm) -> Response {
    if st.shared.sync_documents_and_wait().await.is_err() {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "The service is stopping; try again after it restarts.",
        );
    }
    Redirect::to("/logs").into_response()
}

/// Sync one table now (`sync --only TABLE`): waits for its run, then
/// shows Latest Logs.
async fn sync_table(State(st): State<WebState>, CheckedForm(form): CheckedForm) -> Response {
    let db = st.shared.db().to_path_buf();
    let tables = match blocking(move || engine::mapped_tables(&db)).await {
        Ok(tables) => tables,
        Err(r) => return r,
    };
    let asked = form.get("table").map(String::as_str).unwrap_or("");
    let Some(index) = tables.iter().position(|t| t == asked).and_then(|i| u16::try_from(i).ok()) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "That is not a table this site replicates; nothing was synced.",
        );
    };
    if st.shared.sync_table_and_wait(index).await.is_err() {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "The service is stopping; try again after it restarts.",
        );
    }
    Redirect::to("/logs").into_response()
}

async fn api_status(State(st): State<WebState>) -> Response {
    let db = st.shared.db().to_path_buf();
    match blocking(move || engine::status(&db)).await {
        Ok(report) => {
            let view = st.shared.view();
            let run = |r: Option<(Option<i64>, Outcome)>| {
                r.map(|(id, outcome)| serde_json::json!({ "id": id, "outcome": outcome.as_str() }))
            };
            let doc = serde_json::json!({
                "status": report,
                "running": view.running,
                "queued": view.queued,
                "runs_finished": view.runs_finished,
                "sync_requests": view.sync_requests,
                "last_run": run(view.last_run),
                "manual_done": view.page_runs_done,
                "last_manual": run(view.last_page_run),
                "progress": view.progress,
            });
            axum::Json(doc).into_response()
        }
        Err(r) => r,
    }
}
