//! The status in one line for people: "Up to date with Home visits and
//! Branch", or "Needs you:" and each thing that does, with where to see to
//! it. Built from the status report, so the page and `clinicsync status`
//! say the same.

use serde::Serialize;

use super::report::counted;
use super::status::StatusReport;

/// One thing that needs a person. Field names are part of `--json`.
#[derive(Clone, Debug, Serialize)]
pub struct Need {
    /// In words: "3 conflicts to review".
    pub what: String,
    /// Where the page sees to it (a path of the page).
    pub page: &'static str,
    /// The words on the page's button for it ("Review them").
    pub action: &'static str,
    /// When the button does it at once: the form it posts to `page`, as
    /// `(field, value)` pairs (with the page's CSRF token added); none when
    /// it opens `page`.
    pub post: Option<&'static [(&'static str, &'static str)]>,
    /// The command that does, in a terminal.
    pub command: &'static str,
}

/// The button that syncs now.
const SYNC_NOW: (&str, &str, Option<&[(&str, &str)]>) = ("/sync", "Sync Now", Some(&[]));

/// The verdict. Field names are part of `--json`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Verdict {
    /// Nothing needs anyone.
    pub ok: bool,
    /// The line: "Up to date with ..." or "Needs you: ...".
    pub sentence: String,
    pub needs: Vec<Need>,
}

/// Judges a status report; `auto_sync`: whether the service syncs on its
/// own.
pub(crate) fn judge(s: &StatusReport, auto_sync: bool) -> Verdict {
    let mut needs = Vec::new();
    let mut need = |what: String,
                    (page, action, post): (
        &'static str,
        &'static str,
        Option<&'static [(&'static str, &'static str)]>,
    ),
                    command: &'static str| {
        needs.push(Need { what, page, action, post, command });
    };
    if !s.online {
        need(
            format!(
                "the sync folder {} cannot be reached (is the drive there and the cloud client running?)",
                s.folder
            ),
            ("/settings", "Open Settings", None),
            "clinicsync settings",
        );
    }
    match s.last_outcome.as_deref() {
        Some("failed") => need("the last sync failed".into(), ("/logs", "See why", None), "clinicsync log"),
        Some("partial") => {
            need("the last sync left something undone".into(), ("/logs", "See what", None), "clinicsync log")
        }
        None => need("this site has not synced yet".into(), SYNC_NOW, "clinicsync sync"),
        _ => {}
    }
    if s.open_conflicts > 0 {
        need(
            format!("{} to review", counted(s.open_conflicts, "conflict", "conflicts")),
            ("/conflicts", "Review them", None),
            "clinicsync conflicts",
        );
    }
    if s.held_deletes.patients > 0 {
        need(
            format!(
                "the deletion of {} waits for you",
                counted(s.held_deletes.patients, "patient", "patients")
            ),
            ("/#held", "Decide", None),
            "clinicsync status",
        );
    } else if s.held_deletes.rows > 0 {
        need(
            format!("the deletion of {} waits for you", counted(s.held_deletes.rows, "row", "rows")),
            ("/#held", "Decide", None),
            "clinicsync status",
        );
    }
    if s.documents.failed > 0 {
        need(
            format!("{} failed their integrity check", counted(s.documents.failed, "document", "documents")),
            ("/#documents", "See which", None),
            "clinicsync documents",
        );
    }
    if let Some(v) = s.last_verify.as_ref().filter(|v| v.problems > 0) {
        need(
            format!(
                "the last verification found {} in the folder",
                counted(v.problems, "problem", "problems")
            ),
            ("/logs", "See the problems", None),
            "clinicsync verify",
        );
    }
    if s.stale && s.last_sync_ms.is_some() {
        need("no complete sync for over an hour".into(), SYNC_NOW, "clinicsync sync");
    }
    if !auto_sync {
        need(
            "automatic sync is off".into(),
            ("/settings", "Turn it on", Some(&[("auto_sync", "on")])),
            "clinicsync settings auto_sync=on",
        );
    }
    let ok = needs.is_empty();
    let sentence = if ok {
        let others: Vec<&str> = s.sites.iter().filter(|x| !x.this_site).map(|x| x.name.as_str()).collect();
        let with = match others.as_slice() {
            [] => "the sync folder".to_owned(),
            [one] => (*one).to_owned(),
            [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
        };
        let waiting = if s.pending_changes > 0 {
            format!("; {} here go with the next sync", counted(s.pending_changes, "change", "changes"))
        } else {
            String::new()
        };
        format!("Up to date with {with}{waiting}")
    } else {
        format!("Needs you: {}", needs.iter().map(|n| n.what.as_str()).collect::<Vec<_>>().join("; "))
    };
    Verdict { ok, sentence, needs }
}
