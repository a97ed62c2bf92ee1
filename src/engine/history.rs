//! `clinicsync history PATIENT` and the page's patient history: every
//! change this site knows of one patient, field by field, with who made it
//! and when (see `db/history.rs` for what is kept).

use std::path::Path;

use serde::Serialize;

use super::EngineError;
use super::conflicts::SiteNames;
use crate::db::Db;

/// Most patients a search lists.
const MATCHES: usize = 20;

/// A patient found by a search.
#[derive(Clone, Debug, Serialize)]
pub struct PatientMatch {
    pub id: String,
    pub name: Option<String>,
}

/// One change, for people. Field names are part of `--json`.
#[derive(Clone, Debug, Serialize)]
pub struct HistoryLine {
    pub table: String,
    pub pk: String,
    /// A child table's row by its name ("2026-12-01T10:00 Dr Smith");
    /// `None` for the patient's own row.
    pub row: Option<String>,
    pub column: Option<String>,
    /// `set` (what a field shows now, as typed), `edit` (a value replaced),
    /// `deleted`, `restored`.
    pub kind: String,
    pub old_value: Option<String>,
    pub new_value: Option<String>,
    /// The site that made it ("this site" for this one), and when.
    pub by: String,
    pub at: Option<String>,
}

/// What `history` found. Field names are part of `--json`.
#[derive(Clone, Debug, Serialize)]
pub struct HistoryReport {
    pub query: String,
    /// Every patient the query matched (at most 20).
    pub matches: Vec<PatientMatch>,
    /// The one patient shown, when the query found exactly one.
    pub patient: Option<PatientMatch>,
    pub lines: Vec<HistoryLine>,
}

/// Finds the patients `query` names (an id, or part of a name); with
/// exactly one, its history.
pub fn history(db_path: &Path, query: &str) -> Result<HistoryReport, EngineError> {
    let db = Db::open(db_path)?;
    let matches: Vec<PatientMatch> =
        db.find_patients(query, MATCHES)?.into_iter().map(|(id, name)| PatientMatch { id, name }).collect();
    let mut report = HistoryReport { query: query.to_owned(), matches, patient: None, lines: Vec::new() };
    let [one] = report.matches.as_slice() else { return Ok(report) };
    let one = one.clone();
    let sites = SiteNames::read(db_path)?;
    // A row's key and its patient column are ids, not what people changed.
    let is_id = |table: &str, column: Option<&str>| {
        let Some(column) = column else { return false };
        match db.mapping().table(table) {
            Some((key, crate::db::TableRole::Child { patient_column })) => {
                column == key || column == patient_column
            }
            Some((key, crate::db::TableRole::Root)) => column == key,
            None => false,
        }
    };
    for e in db.history(&one.id)? {
        if is_id(&e.table, e.column.as_deref()) {
            continue;
        }
        let (by, at) = e.hlc.as_deref().map(|h| sites.who(h)).unwrap_or_else(|| ("this site".into(), None));
        let row = if e.table == db.mapping().root.table { None } else { db.row_name(&e.table, &e.pk)? };
        report.lines.push(HistoryLine {
            row,
            table: e.table,
            pk: e.pk,
            column: e.column,
            kind: e.kind,
            old_value: e.old_value,
            new_value: e.new_value,
            by,
            at,
        });
    }
    report.patient = Some(one);
    Ok(report)
}
