//! `clinicsync documents`: the documents whose file is not in step here
//! (waiting for their body, or a copy that failed its check) and the files
//! in the documents folder's trash.

use std::path::Path;

use serde::Serialize;

use super::EngineError;
use super::settings;
use crate::db::{Db, DueState, TrashedDocument};
use crate::model::RowKey;

/// What `clinicsync documents` shows. Field names are part of `--json`.
#[derive(Clone, Debug, Serialize)]
pub struct DocumentsReport {
    /// The documents table, if the mapping has one.
    pub table: Option<String>,
    /// The local documents folder (`None`: not set; files do not travel).
    pub folder: Option<String>,
    pub waiting: Vec<DocumentLine>,
    pub failed: Vec<DocumentLine>,
    /// Rows changed elsewhere not yet looked at (the next run places them).
    pub due: Vec<DocumentLine>,
    pub trash: Vec<TrashedDocument>,
}

/// One document whose file is not in step.
#[derive(Clone, Debug, Serialize)]
pub struct DocumentLine {
    pub pk: String,
    /// Its path as the app's row has it.
    pub path: Option<String>,
    pub patient: Option<String>,
    /// What the last run said of it.
    pub said: Option<String>,
    pub since_ms: Option<u64>,
}

/// How many documents wait and failed, for `status`: (waiting, failed).
pub(crate) fn short(db: &Db) -> Result<(u64, u64), EngineError> {
    Ok(db.documents_short()?)
}

pub fn documents(db_path: &Path) -> Result<DocumentsReport, EngineError> {
    let db = Db::open(db_path)?;
    let settings = settings::load(&db)?;
    let mut report = DocumentsReport {
        table: db.mapping().documents().map(|d| d.table.clone()),
        folder: settings.documents_folder.map(|f| f.display().to_string()),
        waiting: Vec::new(),
        failed: Vec::new(),
        due: Vec::new(),
        trash: db.trash()?,
    };
    for d in db.due_documents()? {
        let key = RowKey { table: d.table.clone(), pk: d.pk.clone() };
        let line = DocumentLine {
            path: db.document_row(&d.pk)?.and_then(|r| r.path),
            patient: db.patient_of_row(&key)?,
            pk: d.pk,
            said: d.said,
            since_ms: d.since_ms,
        };
        match d.state {
            DueState::Waiting => report.waiting.push(line),
            DueState::Failed => report.failed.push(line),
            DueState::Due => report.due.push(line),
        }
    }
    Ok(report)
}
