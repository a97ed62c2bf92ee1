//! The web page's HTML: server-rendered, readable without script, with a
//! little script for live status and Sync Now progress. Every value from
//! the database or the folder is escaped.

use axum::http::StatusCode;

use super::AlertView;
use crate::db::{EventRecord, RunRecord};
use crate::engine::{ProgressView, SettingView, StatusReport, summary_text};
use crate::xmlstore::format_time;

/// What every page needs.
pub(super) struct Context {
    pub(super) csrf: String,
    pub(super) running: bool,
    pub(super) progress: ProgressView,
}

/// Escapes text for HTML content and attribute values.
pub(super) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A time for people: UTC in the page, shown in the browser's local time
/// by the page's script.
fn time_html(iso: Option<&str>) -> String {
    match iso {
        Some(t) => format!(r#"<time datetime="{0}">{0}</time>"#, esc(t)),
        None => "never".to_owned(),
    }
}

/// Shows every `<time>` in local time; shared by all pages.
pub(super) const LOCAL_TIMES: &str = r#"
function localTime(iso) { const d = new Date(iso); return isNaN(d) ? iso : d.toLocaleString(); }
document.querySelectorAll('time[datetime]').forEach(t => { t.textContent = localTime(t.getAttribute('datetime')); });
"#;

const STYLE: &str = r#"
:root { --ok: #17653a; --ok-bg: #e3f4e8; --bad: #a4161a; --bad-bg: #fbe4e4; --warn-bg: #fff4d6; --ink: #1d2430; --muted: #5a6472; --line: #d5dae1; --accent: #1f5fae; }
* { box-sizing: border-box; }
body { margin: 0; font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink); background: #f6f7f9; }
a { color: var(--accent); }
.skip { position: absolute; left: -999px; } .skip:focus { left: 8px; top: 8px; background: #fff; padding: 4px 8px; z-index: 2; }
header { background: #fff; border-bottom: 1px solid var(--line); }
header .bar { max-width: 1100px; margin: 0 auto; padding: 10px 20px; display: flex; gap: 24px; align-items: center; flex-wrap: wrap; }
header .brand { font-weight: 700; font-size: 18px; }
nav a { margin-right: 16px; text-decoration: none; padding: 6px 2px; }
nav a[aria-current="page"] { font-weight: 700; border-bottom: 3px solid var(--accent); }
main { max-width: 1100px; margin: 0 auto; padding: 20px; }
h1 { font-size: 24px; margin: 4px 0 16px; }
h2 { font-size: 19px; margin: 28px 0 10px; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(200px, 1fr)); gap: 12px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; }
.card .label { color: var(--muted); font-size: 14px; }
.card .value { font-size: 18px; font-weight: 600; }
.good { color: var(--ok); } .bad { color: var(--bad); }
.card.good { background: var(--ok-bg); border-color: #9fd3b1; } .card.bad { background: var(--bad-bg); border-color: #eba8a8; }
.notice { background: var(--warn-bg); border: 1px solid #e8cf85; border-radius: 8px; padding: 10px 14px; margin: 10px 0; }
.notice.error { background: var(--bad-bg); border-color: #eba8a8; }
.notice.done { background: var(--ok-bg); border-color: #9fd3b1; }
table { border-collapse: collapse; width: 100%; background: #fff; border: 1px solid var(--line); }
th, td { text-align: left; padding: 8px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: #eef1f5; font-size: 14px; }
button, input[type=submit] { font: inherit; padding: 8px 16px; border-radius: 6px; border: 1px solid var(--accent); background: var(--accent); color: #fff; cursor: pointer; }
button.secondary { background: #fff; color: var(--accent); }
button.waiting { background: var(--bad); border-color: var(--bad); }
button:disabled { opacity: .6; cursor: wait; }
:focus-visible { outline: 3px solid #f0a500; outline-offset: 2px; }
details { background: #fff; border: 1px solid var(--line); border-radius: 8px; margin: 8px 0; padding: 8px 12px; }
summary { cursor: pointer; }
.events { margin: 8px 0 4px; padding-left: 18px; }
section.run { background: #fff; border: 1px solid var(--line); border-radius: 8px; margin: 8px 0; padding: 8px 12px; }
section.run p.said { margin: 2px 0 4px; } section.run details.run-events { border: none; padding: 0; margin: 0; }
.events li { margin: 2px 0; }
.lvl-error { color: var(--bad); font-weight: 600; } .lvl-warning { color: #8a5a00; font-weight: 600; }
.path { font-family: ui-monospace, monospace; font-size: 14px; }
.muted { color: var(--muted); }
form.inline { display: inline; }
label { font-weight: 600; display: block; }
.field { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; margin-bottom: 10px; }
.field input, .field select { font: inherit; padding: 6px 8px; width: 100%; max-width: 520px; border: 1px solid #9aa4b1; border-radius: 4px; }
.field .help { color: var(--muted); font-size: 14px; }
#progress { min-height: 1.5em; }
form.search { margin: 18px 0; } form.search input { font: inherit; padding: 6px 8px; width: 100%; max-width: 360px; border: 1px solid #9aa4b1; border-radius: 4px; }
details.advanced { margin: 14px 0; } details.advanced > summary { font-weight: 600; }
a.button-link { display: inline-block; padding: 8px 14px; border: 1px solid var(--accent); border-radius: 6px; background: #fff; text-decoration: none; margin: 4px 6px 4px 0; }
a.card-link { text-decoration: none; color: inherit; display: block; }
details.ids { background: none; border: none; padding: 0; margin: 2px 0; font-size: 13px; color: var(--muted); }
.conflict { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; margin: 10px 0; }
.conflict h3 { margin: 0 0 8px; font-size: 17px; }
.sides { display: grid; grid-template-columns: 1fr 1fr; gap: 14px; }
blockquote.value mark { background: #fff0a8; color: inherit; padding: 0 1px; }
blockquote.value { margin: 4px 0; padding: 6px 10px; background: #f6f7f9; border-left: 3px solid var(--line); white-space: pre-wrap; }
.verdict { font-size: 18px; border-radius: 8px; padding: 10px 14px; margin: 0 0 14px; border: 1px solid var(--line); }
.verdict.good { background: var(--ok-bg); border-color: #9fd3b1; } .verdict.bad { background: var(--bad-bg); border-color: #eba8a8; }
.verdict ul { margin: 4px 0 0; padding-left: 20px; }
progress { width: 260px; vertical-align: middle; }
"#;

/// A page: `script` is the page's own `<script src>` after the shared one
/// (scripts are served as files: the page's policy allows no inline
/// script).
pub(super) fn layout(title: &str, current: &str, ctx: &Context, body: &str, script: &str) -> String {
    let link = |href: &str, label: &str| {
        let aria = if href == current { r#" aria-current="page""# } else { "" };
        format!(r#"<a href="{href}"{aria}>{label}</a>"#)
    };
    format!(
        r##"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · clinicsync</title><style>{STYLE}</style></head>
<body data-csrf="{csrf}">
<a class="skip" href="#main">Skip to content</a>
<header><div class="bar"><span class="brand">clinicsync</span>
<nav aria-label="Sections">{status}{logs}{conflicts}{history}{settings}</nav>
<span class="muted" id="running-badge">{running}</span></div></header>
<main id="main">{body}</main>
<script src="/times.js"></script>{script}
</body></html>"##,
        title = esc(title),
        csrf = esc(&ctx.csrf),
        status = link("/", "Status"),
        logs = link("/logs", "Latest Logs"),
        conflicts = link("/conflicts", "Conflicts"),
        history = link("/history", "Patient history"),
        settings = link("/settings", "Settings"),
        running = if ctx.running { "Syncing…" } else { "" },
    )
}

/// A refusal (no token, wrong origin, expired form).
pub(super) fn refused(status: StatusCode, message: &str) -> String {
    format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>clinicsync: {code}</title><style>{STYLE}</style></head>
<body><main><h1>clinicsync</h1><p class="notice error" role="alert">{message}</p></main></body></html>"#,
        code = status.as_u16(),
        message = esc(message)
    )
}

pub(super) const STATUS_SCRIPT: &str = r#"
const csrf = document.body.dataset.csrf;
const $ = (id) => document.getElementById(id);
function setCard(id, text, good) {
  const card = $(id); if (!card) return;
  card.querySelector('.value').textContent = text;
  card.classList.toggle('good', good); card.classList.toggle('bad', !good);
}
function renderVerdict(v) {
  const box = $('verdict'); if (!box || !v) return;
  // Redrawn only when it says something else: a button that has the
  // keyboard's focus keeps it.
  const key = v.sentence + '|' + v.needs.map(n => n.action).join('|');
  if (box.dataset.key === key) return;
  box.dataset.key = key;
  box.className = 'verdict ' + (v.ok ? 'good' : 'bad');
  box.textContent = '';
  if (v.ok) { box.textContent = v.sentence; return; }
  const strong = document.createElement('strong'); strong.textContent = 'Needs you:'; box.appendChild(strong);
  const ul = document.createElement('ul');
  for (const n of v.needs) {
    const li = document.createElement('li'); li.append(n.what + ' ');
    if (n.post) {
      const form = document.createElement('form'); form.className = 'inline'; form.method = 'post'; form.action = n.page;
      for (const [k, val] of [['csrf', csrf], ...n.post]) {
        const input = document.createElement('input'); input.type = 'hidden'; input.name = k; input.value = val; form.appendChild(input);
      }
      const b = document.createElement('button'); b.type = 'submit'; b.className = 'need'; b.textContent = n.action;
      form.appendChild(b); li.appendChild(form);
    } else {
      const a = document.createElement('a'); a.className = 'button-link need'; a.href = n.page; a.textContent = n.action; li.appendChild(a);
    }
    ul.appendChild(li);
  }
  box.appendChild(ul);
}
function render(d) {
  const s = d.status;
  setCard('card-online', s.online ? 'Online' : 'Offline', s.online);
  const lastOk = s.last_outcome === 'ok' && !s.stale;
  let last = (s.last_run ? localTime(s.last_run) : 'never') + (s.last_outcome ? ' (' + s.last_outcome + ')' : '');
  if (s.last_outcome !== 'ok' && s.last_run) last += '; last complete sync ' + (s.last_sync ? localTime(s.last_sync) : 'never');
  setCard('card-last', last, lastOk);
  renderSites(s.sites);
  renderVerdict(s.verdict);
  setCard('card-pending', String(s.pending_changes), s.pending_changes === 0);
  setCard('card-conflicts', String(s.open_conflicts), s.open_conflicts === 0);
  const p = d.progress;
  $('running-badge').textContent = d.running ? 'Syncing…' : '';
  if (d.running) {
    const bar = p.total > 0 ? ` <progress max="${p.total}" value="${p.done}"></progress> ${p.done} of ${p.total}` : '';
    $('progress').innerHTML = '';
    const span = document.createElement('span');
    const percent = p.total > 0 ? Math.min(100, Math.floor(100 * p.done / p.total)) + '% · ' : '';
    span.textContent = 'Syncing… ' + percent + (p.step || 'starting') + ' ';
    $('progress').appendChild(span);
    if (bar) $('progress').insertAdjacentHTML('beforeend', bar);
  }
}
function renderSites(sites) {
  const body = $('sites-body'); if (!body || !sites.length) return;
  body.replaceChildren(...sites.map(site => {
    const tr = document.createElement('tr');
    const cells = [
      site.name + (site.this_site ? ' (this site)' : ''),
      site.last_sync ? localTime(site.last_sync) : 'never',
      site.app_version,
      site.applied_seq === null ? '—' : site.applied_seq + ' of ' + site.head_seq,
      site.warning || '',
    ];
    cells.forEach((text, i) => {
      const td = document.createElement('td'); td.textContent = text;
      if (i === 4 && site.warning) td.className = 'bad';
      tr.appendChild(td);
    });
    return tr;
  }));
}
async function poll() {
  try {
    const r = await fetch('/api/status', { headers: { Accept: 'application/json' } });
    if (r.ok) { const d = await r.json(); render(d); return d; }
  } catch (e) {}
  return null;
}
let watching = null;
async function follow(before) {
  const d = await poll();
  if (d && d.manual_done > before) {
    const outcome = d.last_manual ? d.last_manual.outcome : 'finished';
    const msg = $('progress');
    msg.textContent = 'Sync finished: ' + outcome + '. ';
    const a = document.createElement('a'); a.href = '/logs'; a.textContent = 'See Latest Logs';
    msg.appendChild(a);
    msg.className = outcome === 'ok' ? 'notice done' : 'notice error';
    $('sync-button').disabled = false;
    watching = null;
    return;
  }
  watching = setTimeout(() => follow(before), 400);
}
$('sync-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  $('sync-button').disabled = true;
  $('progress').className = '';
  $('progress').textContent = 'Starting…';
  try {
    const r = await fetch('/sync', { method: 'POST', headers: { 'Accept': 'application/json', 'X-CSRF-Token': csrf, 'Content-Type': 'application/x-www-form-urlencoded' }, body: 'csrf=' + encodeURIComponent(csrf) });
    if (!r.ok) throw new Error('HTTP ' + r.status);
    const j = await r.json();
    follow(j.manual_before);
  } catch (err) {
    $('progress').textContent = 'Sync Now could not start: ' + err.message;
    $('progress').className = 'notice error';
    $('sync-button').disabled = false;
  }
});
setInterval(() => { if (!watching) poll(); }, 3000);
"#;

/// The verdict line under the navigation: what is fine, or each thing
/// that needs a person with a link to where it is seen to.
fn verdict_html(v: &crate::engine::Verdict, csrf: &str) -> String {
    // What the page's script compares before redrawing it.
    let key = format!("{}|{}", v.sentence, v.needs.iter().map(|n| n.action).collect::<Vec<_>>().join("|"));
    if v.ok {
        return format!(
            r#"<div id="verdict" class="verdict good" role="status" data-key="{}">{}</div>"#,
            esc(&key),
            esc(&v.sentence)
        );
    }
    let items: String = v
        .needs
        .iter()
        .map(|n| {
            let button = match n.post {
                Some(fields) => {
                    let fields: String = fields
                        .iter()
                        .map(|(k, v)| format!(r#"<input type="hidden" name="{}" value="{}">"#, esc(k), esc(v)))
                        .collect();
                    format!(
                        r#"<form class="inline" method="post" action="{}"><input type="hidden" name="csrf" value="{}">{fields}<button type="submit" class="need">{}</button></form>"#,
                        esc(n.page),
                        esc(csrf),
                        esc(n.action)
                    )
                }
                None => format!(r#"<a class="button-link need" href="{}">{}</a>"#, esc(n.page), esc(n.action)),
            };
            format!(r#"<li>{} {button}</li>"#, esc(&n.what))
        })
        .collect();
    format!(
        r#"<div id="verdict" class="verdict bad" role="status" data-key="{}"><strong>Needs you:</strong><ul>{items}</ul></div>"#,
        esc(&key)
    )
}

/// Each replicated table, whether changes to it wait, and a button that
/// syncs it alone (strong while changes wait).
fn tables(ctx: &Context, s: &StatusReport) -> String {
    let mut out = String::from(
        r#"<h2>Tables</h2><table><thead><tr><th scope="col">Table</th><th scope="col">Changes waiting</th><th scope="col"><span class="muted">This table only</span></th></tr></thead><tbody id="tables-body">"#,
    );
    for t in &s.tables {
        let mut what = Vec::new();
        if t.to_send > 0 {
            what.push(format!("{} changed here, not sent yet", t.to_send));
        }
        if let Some(n) = t.from_others.filter(|n| *n > 0) {
            what.push(format!("{n} from other sites, not applied yet"));
        }
        let what = if what.is_empty() { "none".to_owned() } else { what.join("; ") };
        out.push_str(&format!(
            r#"<tr class="{row}"><td>{name}</td><td>{what}</td><td><form method="post" action="/sync-table"><input type="hidden" name="csrf" value="{csrf}"><input type="hidden" name="table" value="{name}"><button type="submit" class="{button}" data-table="{name}">Sync {name}</button></form></td></tr>"#,
            row = if t.waiting { "bad" } else { "" },
            name = esc(&t.table),
            what = esc(&what),
            csrf = esc(&ctx.csrf),
            button = if t.waiting { "waiting" } else { "secondary" },
        ));
    }
    out.push_str("</tbody></table>");
    out
}

/// The Status page.
pub(super) fn status(ctx: &Context, s: &StatusReport, alerts: &[AlertView]) -> String {
    let last_good = s.last_outcome.as_deref() == Some("ok") && !s.stale;
    let class = |good: bool| if good { "good" } else { "bad" };
    // `value_html` is already escaped.
    let card = |id: &str, label: &str, value_html: &str, good: bool| {
        format!(
            r#"<div class="card {}" id="{id}"><div class="label">{label}</div><div class="value">{value_html}</div></div>"#,
            class(good),
        )
    };
    // The last run's own time and outcome; when it was not ok, when the
    // last complete sync was.
    let mut last = format!(
        "{}{}",
        time_html(s.last_run.as_deref()),
        s.last_outcome.as_deref().map(|o| format!(" ({})", esc(o))).unwrap_or_default()
    );
    if s.last_outcome.as_deref() != Some("ok") && s.last_run.is_some() {
        last.push_str(&format!("; last complete sync {}", time_html(s.last_sync.as_deref())));
    }
    let conflicts_card = format!(
        r#"<a class="card-link" href="/conflicts">{}</a>"#,
        card("card-conflicts", "Open conflicts", &s.open_conflicts.to_string(), s.open_conflicts == 0)
    );
    let mut body = verdict_html(&s.verdict, &ctx.csrf);
    body.push_str(&format!(
        r#"<h1>{name}</h1>
<p class="muted">Folder: <span class="path">{folder}</span></p>
<details class="ids"><summary>Details</summary><span class="path">site {site} · family {family}</span></details>
<section class="cards" aria-label="Sync status">{online}{last}{pending}{conflicts}</section>"#,
        name = esc(&s.site_name),
        site = esc(&s.site),
        family = esc(&s.family),
        folder = esc(&s.folder),
        online = card("card-online", "Folder", if s.online { "Online" } else { "Offline" }, s.online),
        last = card("card-last", "Last sync", &last, last_good),
        pending = card(
            "card-pending",
            "Local changes waiting",
            &s.pending_changes.to_string(),
            s.pending_changes == 0
        ),
        conflicts = conflicts_card,
    ));
    for w in s.warnings.iter().filter(|w| Some(*w) != s.held_warning.as_ref()) {
        body.push_str(&format!(r#"<p class="notice" role="status">{}</p>"#, esc(w)));
    }
    body.push_str(&super::held::section(s));
    body.push_str(&super::history::search_form(""));
    if s.documents.mapped {
        let d = &s.documents;
        let line = match &d.folder {
            None => "Document files do not travel: no documents folder is set (Settings, documents_folder)."
                .to_owned(),
            Some(folder) => {
                let mut line = format!("Documents folder {}: ", esc(folder));
                match (d.waiting, d.failed) {
                    (0, 0) => line.push_str("every document's file is in step."),
                    (w, 0) => line.push_str(&format!("waiting for {w} documents whose files have not arrived yet.")),
                    (w, f) => line.push_str(&format!(
                        "{f} failed their integrity check and are tried again every run; {w} waiting for their files."
                    )),
                }
                line
            }
        };
        let good = d.folder.is_some() && d.failed == 0;
        body.push_str(&format!(
            r#"<h2 id="documents">Documents</h2><p id="documents-line" class="{}">{line}</p>
<form method="post" action="/sync-documents"><input type="hidden" name="csrf" value="{csrf}">
<button id="sync-documents-button" type="submit" class="secondary">Sync documents now</button></form>"#,
            class(good),
            csrf = esc(&ctx.csrf)
        ));
    }
    body.push_str(&tables(ctx, s));
    if let Some(v) = &s.last_verify {
        let found = match v.problems {
            0 => "no problems".to_owned(),
            n => format!("{n} problems (`clinicsync verify` lists them)"),
        };
        body.push_str(&format!(
            r#"<p id="last-verify" class="{}">Folder last verified {}: {}.</p>"#,
            class(v.problems == 0),
            time_html(Some(&crate::xmlstore::format_time(v.at_ms))),
            esc(&found)
        ));
    }
    let progress = if ctx.running { format!("Syncing: {}", esc(ctx.progress.step)) } else { String::new() };
    body.push_str(&format!(
        r#"<h2>Sync Now</h2>
<form id="sync-form" method="post" action="/sync"><input type="hidden" name="csrf" value="{csrf}">
<button id="sync-button" type="submit">Sync Now</button></form>
<div id="progress" aria-live="polite">{progress}</div>"#,
        csrf = esc(&ctx.csrf)
    ));
    body.push_str(
        r#"<h2>Sites of this family</h2><table><thead><tr><th scope="col">Site</th><th scope="col">Last sync</th><th scope="col">clinicsync</th><th scope="col">Exports applied here</th><th scope="col">Warning</th></tr></thead><tbody id="sites-body">"#,
    );
    for site in &s.sites {
        let me = if site.this_site { " (this site)" } else { "" };
        let applied = match site.applied_seq {
            None => "—".to_owned(),
            Some(a) => format!("{a} of {}", site.head_seq),
        };
        body.push_str(&format!(
            r#"<tr><td>{name}{me}<details class="ids"><summary>Details</summary><span class="path">{id}</span></details></td><td>{last}</td><td>{version}</td><td>{applied}</td><td class="{wclass}">{warning}</td></tr>"#,
            name = esc(&site.name),
            id = esc(&site.site),
            last = time_html(site.last_sync.as_deref()),
            version = esc(&site.app_version),
            wclass = if site.warning.is_some() { "bad" } else { "" },
            warning = esc(site.warning.as_deref().unwrap_or("")),
        ));
    }
    if s.sites.is_empty() {
        body.push_str(
            r#"<tr><td colspan="5" class="muted">No site files visible (is the folder offline?)</td></tr>"#,
        );
    }
    body.push_str("</tbody></table>");
    if !alerts.is_empty() {
        body.push_str("<h2>Alerts sent</h2><ul>");
        for a in alerts {
            body.push_str(&format!(
                "<li>{} — {}: {} <span class=\"muted\">({})</span></li>",
                time_html(Some(&format_time(a.at_ms))),
                esc(a.kind),
                esc(&a.reason),
                esc(&a.results.join("; "))
            ));
        }
        body.push_str("</ul>");
    }
    layout("Status", "/", ctx, &body, r#"<script src="/status.js"></script>"#)
}

/// Latest Logs: newest run first, each expanding to its events.
/// Latest Logs; `running`: a sync holds the database now, so the newest
/// run without an outcome is in progress, not interrupted.
pub(super) fn logs(ctx: &Context, runs: &[(RunRecord, Vec<EventRecord>)], running: bool) -> String {
    let mut body = String::from("<h1>Latest Logs</h1>");
    if runs.is_empty() {
        body.push_str(r#"<p class="muted">No runs yet.</p>"#);
    }
    body.push_str(r#"<div id="runs">"#);
    for (i, (run, events)) in runs.iter().enumerate() {
        let outcome = crate::engine::outcome_words(run.outcome.as_deref(), i == 0 && running);
        let class = match outcome {
            "ok" => "good",
            "in progress" => "",
            _ => "bad",
        };
        // The patients it names link to their history.
        let sentence: String = run
            .summary
            .as_ref()
            .map(crate::engine::summary_pieces)
            .unwrap_or_default()
            .iter()
            .map(|piece| match piece {
                crate::engine::Piece::Text(text) => esc(text),
                crate::engine::Piece::Patient { id, name } => super::history::link(id, name),
            })
            .collect();
        let counters = run.summary.as_ref().map(summary_text).unwrap_or_default();
        let open = if i == 0 { " open" } else { "" };
        // The sentence stays in view (its patients are links, which a
        // summary must not hold); the events fold.
        let said = match events.len() {
            0 => "What happened".to_owned(),
            n => format!("What happened ({})", crate::engine::counted(n as u64, "event", "events")),
        };
        body.push_str(&format!(
            r#"<section class="run" id="run-{id}"><div class="run-head"><strong>#{id}</strong> {time} · <span class="trigger">{trigger}</span> · <span class="{class} outcome">{outcome}</span></div><p class="said">{sentence}</p><details class="run-events"{open}><summary>{said}</summary><ul class="events">"#,
            id = run.id,
            outcome = esc(outcome),
            time = time_html(Some(&format_time(run.started_ms))),
            trigger = esc(&trigger_words(&run.trigger)),
        ));
        // What went wrong first, then what to look at, then the rest.
        let rank = |level: &str| match level {
            "error" => 0,
            "warning" => 1,
            _ => 2,
        };
        let mut events: Vec<&EventRecord> = events.iter().collect();
        events.sort_by_key(|e| rank(&e.level));
        for e in &events {
            let path = e
                .path
                .as_deref()
                .map(|p| format!(r#"<details class="ids"><summary>File</summary><span class="path">{}</span></details>"#, esc(p)))
                .unwrap_or_default();
            body.push_str(&format!(
                r#"<li class="event"><span class="lvl-{lvl}">[{lvl}]</span> {msg}{path}</li>"#,
                lvl = esc(&e.level),
                msg = esc(&e.message)
            ));
        }
        if events.is_empty() {
            body.push_str(r#"<li class="muted">nothing to do</li>"#);
        }
        body.push_str(&format!(
            r#"</ul><details class="ids"><summary>Details</summary><span class="muted">{}</span></details></details></section>"#,
            esc(&counters)
        ));
    }
    body.push_str("</div>");
    layout("Latest Logs", "/logs", ctx, &body, "")
}

fn trigger_words(trigger: &str) -> String {
    match trigger {
        "manual" => "Sync Now".to_owned(),
        "watcher" => "files arrived".to_owned(),
        "local-change" => "local changes".to_owned(),
        "interval" => "automatic".to_owned(),
        "startup" => "service started".to_owned(),
        "documents" => "Sync documents now".to_owned(),
        "confirm-deletes" => "Delete them here too".to_owned(),
        "keep-deleted" => "Keep them".to_owned(),
        other => match (crate::engine::trigger_table(other), crate::engine::trigger_operation(other)) {
            (Some(table), _) => format!("Sync {table} only"),
            (_, Some("verify")) => "Verify the folder".to_owned(),
            (_, Some("baseline download")) => "Make this computer's tables equal to the family's".to_owned(),
            (_, Some("baseline upload")) => "Repair the folder from this computer".to_owned(),
            _ => other.to_owned(),
        },
    }
}

/// One setting's field: its name and one sentence in plain words, and a
/// refusal of it next to it (a refusal names the setting first).
fn setting_field(s: &SettingView, error: Option<&str>) -> String {
    let id = format!("setting-{}", s.key);
    let input = if s.default == "on" || s.default == "off" {
        let opt = |v: &str, words: &str| {
            let sel = if s.value == v { " selected" } else { "" };
            format!(r#"<option value="{v}"{sel}>{words}</option>"#)
        };
        format!(
            r#"<select id="{id}" name="{key}" aria-describedby="{id}-help">{}{}</select>"#,
            opt("on", "On"),
            opt("off", "Off"),
            key = s.key
        )
    } else {
        format!(
            r#"<input id="{id}" name="{key}" value="{value}" aria-describedby="{id}-help">"#,
            key = s.key,
            value = esc(&s.value)
        )
    };
    let refused = error
        .filter(|e| e.starts_with(&format!("{} ", s.key)))
        .map(|e| format!(r#"<div class="bad" role="alert">Not saved: {}</div>"#, esc(e)))
        .unwrap_or_default();
    let default = match s.default {
        "" => "empty".to_owned(),
        "on" => "on".to_owned(),
        other => other.to_owned(),
    };
    format!(
        r#"<div class="field"><label for="{id}">{label}</label>{input}{refused}<div class="help" id="{id}-help">{words} <span class="muted">(default: {default}; <code>{key}</code>)</span></div></div>"#,
        label = esc(s.label),
        words = esc(s.words),
        default = esc(&default),
        key = s.key,
    )
}

/// The Settings page; `after` (HTML) follows the form.
pub(super) fn settings(
    ctx: &Context,
    list: &[SettingView],
    error: Option<&str>,
    saved: bool,
    after: &str,
) -> String {
    let mut body = String::from("<h1>Settings</h1>");
    if saved {
        body.push_str(r#"<p class="notice done" role="status">Settings saved. A new web port applies when clinicsync run restarts.</p>"#);
    }
    if let Some(e) = error {
        body.push_str(&format!(r#"<p class="notice error" role="alert">Nothing was saved: {}</p>"#, esc(e)));
    }
    body.push_str(&format!(
        r#"<form method="post" action="/settings" id="settings-form"><input type="hidden" name="csrf" value="{}">"#,
        esc(&ctx.csrf)
    ));
    // The few most people need first, in this order; the rest under
    // Advanced.
    const FIRST: [&str; 5] = ["folder", "use_logs", "auto_delete_conflicts", "auto_sync", "sync_interval"];
    let mut basic: Vec<&SettingView> = list.iter().filter(|s| s.basic).collect();
    basic.sort_by_key(|s| FIRST.iter().position(|k| *k == s.key).unwrap_or(FIRST.len()));
    for s in basic {
        body.push_str(&setting_field(s, error));
    }
    body.push_str(r#"<details class="advanced"><summary>Advanced</summary>"#);
    for s in list.iter().filter(|s| !s.basic) {
        body.push_str(&setting_field(s, error));
    }
    body.push_str("</details>");
    body.push_str(r#"<button type="submit" id="save-settings">Save settings</button></form>"#);
    body.push_str(after);
    layout("Settings", "/settings", ctx, &body, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_the_folder_cannot_become_markup() {
        assert_eq!(
            esc(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
        let html = time_html(Some("<b>"));
        assert!(!html.contains("<b>"), "{html}");
    }
}
