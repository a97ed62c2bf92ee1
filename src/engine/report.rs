//! What a run did, as data: counts, events, outcome. Written to the
//! database at the end of every run (Latest Logs) and printed by the CLI.

use serde::Serialize;

use serde_json::json;

use crate::db::{ConflictRecord, EventRecord};
use crate::model::{Hlc, shown};
use crate::xmlstore::format_time;

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Everything visible in the folder was applied and everything local
    /// was written.
    Ok,
    /// Something was skipped, held back or left for the next run; the
    /// events say what and why.
    Partial,
    /// The run stopped before changing anything it should not; the error
    /// says what to do.
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Partial => "partial",
            Outcome::Failed => "failed",
        }
    }
}

/// Counts of one run. Field names are part of the `--json` output.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Counts {
    /// Local rows turned into new versions.
    pub exported_rows: u64,
    pub exported_versions: u64,
    /// Patient files (and copies) looked at.
    pub files_scanned: u64,
    /// Files skipped because they are unchanged since they were applied.
    pub files_unchanged: u64,
    /// Patient files read-repair found up to date by their rows digest,
    /// without reading the patient's rows from the database.
    pub files_digest_matched: u64,
    /// Files whose content changed this database.
    pub files_applied: u64,
    pub rows_applied: u64,
    pub new_conflicts: u64,
    /// Cloud clients' conflict copies joined into the database, then
    /// deleted (`auto_delete_conflicts` on) or kept and remembered (off).
    pub conflict_copies_merged: u64,
    pub conflict_copies_deleted: u64,
    pub conflict_copies_kept: u64,
    pub files_written: u64,
    pub bytes_written: u64,
    pub bytes_read: u64,
    /// Files not applied (incomplete, damaged, unknown format) or not
    /// written; each has an event.
    pub files_skipped: u64,
    /// Files held back because a site's clock is too far ahead.
    pub files_held_back: u64,
    /// Change-log segments written, applied from other sites, deleted by
    /// compaction.
    pub segments_written: u64,
    pub segments_applied: u64,
    pub segments_deleted: u64,
    /// Patients another site deleted whose deletion reached the app's
    /// tables this run, and those the mass-delete guard holds back.
    pub patients_deleted: u64,
    pub deletes_held: u64,
    /// Rows another site deleted whose deletion reached the app's tables
    /// this run (patients' own rows and child rows), and the rows the
    /// guard holds back (the held patients' rows included).
    pub rows_deleted: u64,
    pub rows_held: u64,
    /// Rows whose held deletion was refused (`sync --keep-deleted`): they
    /// live again and go back to every site.
    pub rows_kept: u64,
    /// Tombstones purged, and patient files of purged patients removed.
    pub tombstones_purged: u64,
    pub files_removed: u64,
    /// Rows this site still had that others purged while it was away.
    pub purged_elsewhere: u64,
    /// Whether this run scanned every patient file.
    pub full_scan: bool,
    /// What happened to document files.
    pub documents: super::run::DocumentCounts,
    /// Whose changes were brought in, per site: the patients they touched
    /// and the first few by name with what changed.
    pub brought_in: Vec<BroughtIn>,
    /// What the run asked of the folder.
    pub folder: crate::folder::FolderStats,
}

/// The changes one site made that a run brought in.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct BroughtIn {
    /// The site's name ("this site" for this one).
    pub site: String,
    /// How many patients its changes touched.
    pub patients: u64,
    /// The first few of them.
    pub named: Vec<ChangedPatient>,
}

/// One patient a run changed, and what of it changed.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct ChangedPatient {
    pub id: String,
    /// The patient's name (none where the mapping names no columns).
    pub name: Option<String>,
    /// A patient's own fields by column ("phone"), "added", "deleted",
    /// "brought back", or "deletion held for you to decide"; other tables'
    /// rows by their table ("appointments").
    pub changed: Vec<String>,
}

/// The result of one run.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    pub run_id: Option<i64>,
    pub trigger: String,
    pub outcome: Outcome,
    pub started_ms: u64,
    pub ended_ms: u64,
    pub counts: Counts,
    /// For a failed run: one sentence saying what is wrong and what to do.
    pub error: Option<String>,
    /// The process's peak resident memory so far, in KiB (Linux; else null).
    pub peak_rss_kib: Option<u64>,
    pub events: Vec<EventRecord>,
    /// The folder paths this run wrote or removed, when the run was asked
    /// to remember them and there were not too many (not in `--json`).
    #[serde(skip)]
    pub touched: Option<Vec<String>>,
}

impl RunReport {
    /// The one-line summary the CLI prints.
    pub fn summary_line(&self) -> String {
        let c = &self.counts;
        match self.outcome {
            Outcome::Failed => format!("sync failed: {}", self.error.as_deref().unwrap_or("unknown error")),
            outcome => {
                let mut line = format!(
                    "sync {}: exported {} rows, applied {} rows from {} segments and {} files, wrote {} segments and {} files",
                    outcome.as_str(),
                    c.exported_rows,
                    c.rows_applied,
                    c.segments_applied,
                    c.files_applied,
                    c.segments_written,
                    c.files_written
                );
                if c.full_scan {
                    line.push_str(", scanned every patient file");
                }
                if c.new_conflicts > 0 {
                    line.push_str(&format!(", {} new conflicts to review", c.new_conflicts));
                }
                if c.folder.not_local > 0 {
                    line.push_str(&format!(
                        ", {} files online-only (not yet on this computer)",
                        c.folder.not_local
                    ));
                }
                if c.folder.held > 0 {
                    line.push_str(&format!(", {} files held open by another program", c.folder.held));
                }
                if c.files_skipped + c.files_held_back > 0 {
                    line.push_str(&format!(
                        ", {} files skipped and {} held back (see `clinicsync log`)",
                        c.files_skipped, c.files_held_back
                    ));
                }
                line
            }
        }
    }
}

/// What an event is about. The names are part of the `--json` output and
/// of Latest Logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EventKind {
    Applied,
    Skipped,
    Gap,
    HeldBack,
    TooLarge,
    Write,
    SiteFile,
    UnknownSite,
    UnknownFile,
    ConflictCopy,
    Conflict,
    Schema,
    Parked,
    Delete,
    HeldDeletes,
    KeepDeleted,
    Purge,
    Compact,
    Export,
    Scan,
    Leftovers,
    Document,
    /// What a `sync --only` run left for a full sync.
    Tables,
    Failed,
}

impl EventKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EventKind::Applied => "applied",
            EventKind::Skipped => "skipped",
            EventKind::Gap => "gap",
            EventKind::HeldBack => "held-back",
            EventKind::TooLarge => "too-large",
            EventKind::Write => "write",
            EventKind::SiteFile => "site-file",
            EventKind::UnknownSite => "unknown-site",
            EventKind::UnknownFile => "unknown-file",
            EventKind::ConflictCopy => "conflict-copy",
            EventKind::Conflict => "conflict",
            EventKind::Schema => "schema",
            EventKind::Parked => "parked",
            EventKind::Delete => "delete",
            EventKind::HeldDeletes => "held-deletes",
            EventKind::KeepDeleted => "keep-deleted",
            EventKind::Purge => "purge",
            EventKind::Compact => "compact",
            EventKind::Export => "export",
            EventKind::Scan => "scan",
            EventKind::Leftovers => "leftovers",
            EventKind::Document => "document",
            EventKind::Tables => "tables",
            EventKind::Failed => "failed",
        }
    }
}

/// "1 patient", "3 patients": a count with its noun.
pub(crate) fn counted(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Collects the events of a run as it goes.
pub(crate) struct Recorder {
    pub(crate) events: Vec<EventRecord>,
    pub(crate) partial: bool,
    now_ms: u64,
    applied_logged: usize,
    applied_unlogged: usize,
}

/// Beyond this many "applied" events a run logs only their number.
const MAX_APPLIED_EVENTS: usize = 200;

impl Recorder {
    pub(crate) fn new(now_ms: u64) -> Recorder {
        Recorder { events: Vec::new(), partial: false, now_ms, applied_logged: 0, applied_unlogged: 0 }
    }

    fn push(&mut self, level: &str, kind: EventKind, path: Option<&str>, message: String) {
        // The same sentence about the same file twice in a row (a file two
        // steps tried to read) is said once.
        if self.events.last().is_some_and(|e| {
            e.level == level && e.kind == kind.as_str() && e.path.as_deref() == path && e.message == message
        }) {
            return;
        }
        self.events.push(EventRecord {
            at_ms: self.now_ms,
            level: level.to_owned(),
            kind: kind.as_str().to_owned(),
            path: path.map(str::to_owned),
            message,
        });
    }

    pub(crate) fn info(&mut self, kind: EventKind, path: Option<&str>, message: String) {
        self.push("info", kind, path, message);
    }

    /// Something worth a look that does not make the run partial.
    pub(crate) fn warning(&mut self, kind: EventKind, path: Option<&str>, message: String) {
        self.push("warning", kind, path, message);
    }

    /// Something left undone: the run ends `partial` and the next run
    /// tries again.
    pub(crate) fn skipped(&mut self, kind: EventKind, path: Option<&str>, message: String) {
        self.partial = true;
        self.push("error", kind, path, message);
    }

    pub(crate) fn applied(&mut self, path: &str, message: String) {
        if self.applied_logged < MAX_APPLIED_EVENTS {
            self.applied_logged += 1;
            self.push("info", EventKind::Applied, Some(path), message);
        } else {
            self.applied_unlogged += 1;
        }
    }

    pub(crate) fn finish(&mut self) {
        if self.applied_unlogged > 0 {
            let n = self.applied_unlogged;
            self.push("info", EventKind::Applied, None, format!("and {n} more files applied"));
            self.applied_unlogged = 0;
        }
    }
}

/// A field's value as a person reads it: a document's body as the file it
/// names, anything else cut short.
fn value_words(column: &str, value: &crate::model::Value) -> String {
    match value.as_text().filter(|_| column == crate::model::BODY_FIELD).and_then(crate::model::Body::parse) {
        Some(body) => format!("the document's file of {body}"),
        None => value.display_short(),
    }
}

/// A conflict record as `conflicts --json` and the web page show it.
pub fn conflict_json(c: &ConflictRecord) -> serde_json::Value {
    json!({
        "id": c.id,
        "table": c.table,
        "pk": c.pk,
        "column": c.column,
        "patient": c.patient,
        "lost_value": value_words(&c.column, &c.value),
        "lost_hlc": c.hlc,
        "lost_site": Hlc::parse(&c.hlc).ok().map(|h| h.site().short()),
        "lost_at": Hlc::parse(&c.hlc).ok().map(|h| format_time(h.wall_ms())),
        "kind": c.kind,
        "kept_value": (c.kind != "deleted").then(|| value_words(&c.column, &c.winner_value)),
        "deleted_by": (c.kind == "deleted").then(|| Hlc::parse(&c.winner_hlc).ok().map(|h| h.site().short())).flatten(),
        "kept_hlc": c.winner_hlc,
        "source": c.source,
        "detected_ms": c.detected_ms,
        "status": c.status,
    })
}

/// A recorded run's outcome in a word: its own, or for one that has none
/// "in progress" when it is the newest and a sync holds the database now,
/// else "interrupted" (the process stopped before it finished).
pub fn outcome_words(outcome: Option<&str>, newest_while_running: bool) -> &str {
    match outcome {
        Some(o) => o,
        None if newest_while_running => "in progress",
        None => "interrupted",
    }
}

/// A piece of a run's sentence: words, or a patient the page links to
/// its history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    Patient { id: String, name: String },
}

impl Piece {
    fn text(&self) -> &str {
        match self {
            Piece::Text(t) => t,
            Piece::Patient { name, .. } => name,
        }
    }
}

/// What a run did, in a sentence for people (Latest Logs, `clinicsync
/// log`): only what happened, "Nothing to do" when nothing did. An
/// operation's record says its own sentence. The counters stay in
/// [`summary_text`].
pub fn summary_sentence(summary: &serde_json::Value) -> String {
    summary_pieces(summary).iter().map(Piece::text).collect()
}

/// [`summary_sentence`] in pieces, its patients apart (names shown
/// safely: control characters spelled out).
pub fn summary_pieces(summary: &serde_json::Value) -> Vec<Piece> {
    if let Some(said) = summary.get("said").and_then(serde_json::Value::as_str) {
        return vec![Piece::Text(said.to_owned())];
    }
    let get = |k: &str| summary.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
    let docs = |k: &str| {
        summary.get("documents").and_then(|d| d.get(k)).and_then(serde_json::Value::as_u64).unwrap_or(0)
    };
    // (counter, what was done with "#" for the count, one, many)
    const SAID: [(&str, &str, &str, &str); 8] = [
        ("exported_rows", "sent #", "change", "changes"),
        ("rows_applied", "brought in # from other sites", "change", "changes"),
        ("patients_deleted", "deleted # that other sites deleted", "patient", "patients"),
        ("deletes_held", "held back the deletion of # for you to decide", "patient", "patients"),
        ("new_conflicts", "found # to review", "conflict", "conflicts"),
        ("conflict_copies_merged", "merged # a cloud client made", "conflict copy", "conflict copies"),
        ("files_skipped", "skipped # (see why below)", "file", "files"),
        ("files_held_back", "held back # from a clock running ahead", "file", "files"),
    ];
    // Whose changes, to whom, where the run says it.
    let brought: Vec<Vec<Piece>> = summary
        .get("brought_in")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|site| serde_json::from_value::<BroughtIn>(site.clone()).ok())
        .filter(|site| site.patients > 0)
        .map(|site| brought_in_words(&site))
        .collect();
    let mut parts: Vec<Vec<Piece>> = SAID
        .iter()
        .filter(|(key, ..)| get(key) > 0)
        .flat_map(|(key, said, one, many)| match *key {
            "rows_applied" if !brought.is_empty() => brought.clone(),
            _ => vec![vec![Piece::Text(said.replace('#', &counted(get(key), one, many)))]],
        })
        .collect();
    let mut words = |text: String| parts.push(vec![Piece::Text(text)]);
    match (docs("exported"), docs("placed")) {
        (0, 0) => {}
        (sent, 0) => words(format!("sent {}", counted(sent, "document file", "document files"))),
        (0, placed) => words(format!("placed {}", counted(placed, "document file", "document files"))),
        (sent, placed) => {
            words(format!("sent {} and placed {placed}", counted(sent, "document file", "document files")))
        }
    }
    if parts.is_empty() {
        return vec![Piece::Text("Nothing to do: already up to date".to_owned())];
    }
    let mut pieces = Vec::new();
    for (i, part) in parts.into_iter().enumerate() {
        if i > 0 {
            pieces.push(Piece::Text("; ".to_owned()));
        }
        pieces.extend(part);
    }
    // Every part starts with words: the first is said with a capital.
    if let Some(Piece::Text(first)) = pieces.first_mut()
        && let Some(c) = first.get(..1)
    {
        *first = c.to_uppercase() + &first[1..];
    }
    pieces
}

/// "brought in changes to 3 patients from Home visits: Jane Smith (phone),
/// John Doe (added) and 1 more"; fields and tables said with spaces
/// ("family name", "clinical notes").
fn brought_in_words(site: &BroughtIn) -> Vec<Piece> {
    let patients = counted(site.patients, "patient", "patients");
    let mut pieces =
        vec![Piece::Text(format!("brought in changes to {patients} from {}: ", shown(&site.site)))];
    let more = site.patients.saturating_sub(site.named.len() as u64);
    let items = site.named.len() + usize::from(more > 0);
    for (i, p) in site.named.iter().enumerate() {
        if i > 0 {
            pieces.push(Piece::Text(if i + 1 == items { " and " } else { ", " }.to_owned()));
        }
        let what: Vec<String> = p.changed.iter().map(|c| shown(c).replace('_', " ")).collect();
        match &p.name {
            Some(name) => pieces.push(Piece::Patient { id: p.id.clone(), name: shown(name).into_owned() }),
            None => pieces.push(Piece::Text("a patient without a name".to_owned())),
        }
        pieces.push(Piece::Text(format!(" ({})", what.join(", "))));
    }
    if more > 0 {
        let and = if site.named.is_empty() { "" } else { " and " };
        pieces.push(Piece::Text(format!("{and}{more} more")));
    }
    // Adjacent words are one piece.
    let mut joined: Vec<Piece> = Vec::with_capacity(pieces.len());
    for piece in pieces {
        match (joined.last_mut(), piece) {
            (Some(Piece::Text(last)), Piece::Text(t)) => last.push_str(&t),
            (_, piece) => joined.push(piece),
        }
    }
    joined
}

/// A run's counts in one line of words (Latest Logs).
pub fn summary_text(summary: &serde_json::Value) -> String {
    // An operation's record says what it did in a sentence.
    if let Some(said) = summary.get("said").and_then(serde_json::Value::as_str) {
        return said.to_owned();
    }
    let get = |k: &str| summary.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
    let scan = if summary.get("full_scan").and_then(serde_json::Value::as_bool) == Some(true) {
        "; scanned every patient file"
    } else {
        ""
    };
    format!(
        "exported {} rows; applied {} rows from {} segments and {} files; wrote {} segments and {} files; {} unchanged; {} skipped; {} held back; {} new conflicts{scan}",
        get("exported_rows"),
        get("rows_applied"),
        get("segments_applied"),
        get("files_applied"),
        get("segments_written"),
        get("files_written"),
        get("files_unchanged"),
        get("files_skipped"),
        get("files_held_back"),
        get("new_conflicts")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runs_counts_read_as_a_sentence_of_what_happened() {
        let said = |v: serde_json::Value| summary_sentence(&v);
        assert_eq!(said(json!({})), "Nothing to do: already up to date");
        assert_eq!(
            said(json!({ "exported_rows": 1, "new_conflicts": 2, "files_skipped": 1 })),
            "Sent 1 change; found 2 conflicts to review; skipped 1 file (see why below)"
        );
        assert_eq!(
            said(json!({ "rows_applied": 4, "documents": { "exported": 0, "placed": 1 } })),
            "Brought in 4 changes from other sites; placed 1 document file"
        );
        assert_eq!(said(json!({ "said": "verified the folder" })), "verified the folder");
        let brought = json!({ "rows_applied": 9, "brought_in": [
            { "site": "Home visits", "patients": 7, "named": [
                { "id": "p1", "name": "Jane Smith", "changed": ["phone"] },
                { "id": "p2", "name": "John \u{1b}Doe", "changed": ["added", "appointments"] },
            ] },
            { "site": "Branch", "patients": 1, "named": [{ "id": "p3", "name": null, "changed": ["deleted"] }] },
        ] });
        let pieces = summary_pieces(&brought);
        assert_eq!(
            pieces[1],
            Piece::Patient { id: "p1".into(), name: "Jane Smith".into() },
            "the page links each named patient: {pieces:?}"
        );
        assert_eq!(pieces[2], Piece::Text(" (phone), ".into()));
        assert_eq!(
            said(brought),
            "Brought in changes to 7 patients from Home visits: Jane Smith (phone), John \\u{1b}Doe (added, appointments) and 5 more; brought in changes to 1 patient from Branch: a patient without a name (deleted)"
        );
    }
}
