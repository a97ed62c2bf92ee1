//! `clinicsync history PATIENT`: one patient's changes, oldest first, or
//! the patients a search matched.

use std::path::Path;
use std::process::ExitCode;

use super::print_json;
use crate::engine::{self, HistoryLine};
use crate::model::shown;

pub(super) fn print(db: &Path, query: &str, json: bool) -> anyhow::Result<ExitCode> {
    let report = engine::history(db, query)?;
    if json {
        print_json(&report)?;
        return Ok(if report.matches.is_empty() { ExitCode::FAILURE } else { ExitCode::SUCCESS });
    }
    let Some(patient) = &report.patient else {
        if report.matches.is_empty() {
            eprintln!("clinicsync: no patient's id or name matches {:?}", shown(query));
            return Ok(ExitCode::FAILURE);
        }
        say!("{} patients match {:?}; give one of these ids:", report.matches.len(), shown(query));
        for m in &report.matches {
            say!("  {}  {}", shown(&m.id), shown(m.name.as_deref().unwrap_or("(no name)")));
        }
        return Ok(ExitCode::SUCCESS);
    };
    say!(
        "History of {} ({}), oldest first:",
        shown(patient.name.as_deref().unwrap_or("a patient without a name")),
        shown(&patient.id)
    );
    for line in &report.lines {
        say!("  {}", line_words(line));
    }
    Ok(ExitCode::SUCCESS)
}

/// One change in words: "2026-12-04T02:41:00Z Home visits: phone "1" → "2"".
pub(crate) fn line_words(l: &HistoryLine) -> String {
    let when = l.at.as_deref().unwrap_or("");
    let column = l.column.as_deref().unwrap_or("").replace('_', " ");
    let table = match &l.row {
        Some(row) => format!("{} {row}", l.table),
        None => l.table.clone(),
    };
    let what = match l.kind.as_str() {
        "edit" => format!(
            "{table} {column}: {:?} → {:?}",
            l.old_value.as_deref().unwrap_or(""),
            l.new_value.as_deref().unwrap_or("")
        ),
        "set" => format!("{table} {column} set to {:?}", l.new_value.as_deref().unwrap_or("")),
        "deleted" => format!("deleted the {table} row"),
        "restored" => format!("brought back the {table} row"),
        other => other.to_owned(),
    };
    format!("{} {}: {}", shown(when), shown(&l.by), shown(&what))
}
