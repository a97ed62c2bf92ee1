//! The patient history (`_cs_history`): an append-only record of every
//! value this site's state replaced, with the value that replaced it and
//! who typed each, and of every row deleted or brought back, whether the
//! change was made here (stamped) or applied from another site. Together
//! with the state's current versions (each with its stamp), it tells every
//! change this site knows of a patient, field by field, without the
//! change-logs, which are compacted. A value never replaced is in the
//! state only: a new site that takes in a family's data writes no history.
//! Entries older than the `history_retention` setting are removed.

use rusqlite::{Connection, params};

use super::values::{Sql, from_ref};
use super::{Db, DbError};
use crate::model::{Hlc, RowKey, RowState, SiteId, Value};

pub(super) const TABLE: &str = "
-- Values the state replaced, and rows deleted or brought back: what happened
-- to each patient's data at this site, kept for `history_retention`.
CREATE TABLE IF NOT EXISTS _cs_history (id INTEGER PRIMARY KEY, patient TEXT, tbl TEXT NOT NULL,
  pk TEXT NOT NULL, col TEXT, old_value, old_hlc TEXT, new_value, new_hlc TEXT, kind TEXT NOT NULL,
  recorded_ms INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS _cs_history_patient ON _cs_history (patient, id);
";

/// What a row showed before a change: whether it was alive, and the value
/// and stamp each field showed.
pub(super) struct Before {
    alive: bool,
    winners: Vec<(String, Value, Hlc)>,
}

impl Before {
    /// The row as it is now, for the fields `change` brings a version of
    /// that the row does not show (the only ones it can replace).
    pub(super) fn of(row: &RowState, change: &RowState) -> Before {
        let winners = change
            .fields
            .iter()
            .filter_map(|(c, incoming)| {
                let w = row.fields.get(c)?.winner();
                (incoming.winner().hlc() != w.hlc()).then(|| (c.clone(), w.value().clone(), w.hlc()))
            })
            .collect();
        Before { alive: row.is_alive(), winners }
    }
}

/// What one change did to a row, said to `note` with the site that made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Change<'a> {
    /// The field shows another value.
    Field(&'a str),
    Deleted,
    Restored,
    /// A row new here.
    Added,
}

/// Reads a patient's latest entry and forgets it: the index page where its
/// next entry goes, read ahead (see `read_ahead.rs`).
pub(super) fn read_ahead(conn: &Connection, patient: &str) -> rusqlite::Result<()> {
    conn.prepare_cached("SELECT max(id) FROM _cs_history WHERE patient = ?1")?
        .query_row([patient], |_| Ok(()))
}

/// Records what changed between `before` and `after` (the row as saved),
/// and tells `note` each change with the site that made it.
pub(super) fn record(
    conn: &Connection,
    key: &RowKey,
    patient: Option<&str>,
    before: &Before,
    after: &RowState,
    now_ms: u64,
    note: &mut dyn FnMut(SiteId, Change<'_>),
) -> Result<(), DbError> {
    let mut insert = conn.prepare_cached(
        "INSERT INTO _cs_history (patient, tbl, pk, col, old_value, old_hlc, new_value, new_hlc, kind, recorded_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    for (col, old_value, old_hlc) in &before.winners {
        let Some(state) = after.fields.get(col) else { continue };
        let new = state.winner();
        if new.hlc() == *old_hlc {
            continue;
        }
        note(new.hlc().site(), Change::Field(col));
        insert.execute(params![
            patient,
            key.table,
            key.pk,
            col,
            Sql(old_value),
            old_hlc.encode(),
            Sql(new.value()),
            new.hlc().encode(),
            "edit",
            now_ms as i64
        ])?;
    }
    let row_change = match (before.alive, after.is_alive()) {
        (true, false) => Some(("deleted", after.deleted.latest())),
        (false, true) => Some(("restored", after.fields.values().map(|f| f.winner().hlc()).max())),
        _ => None,
    };
    if let Some((kind, stamp)) = row_change {
        if let Some(h) = stamp {
            note(h.site(), if after.is_alive() { Change::Restored } else { Change::Deleted });
        }
        insert.execute(params![
            patient,
            key.table,
            key.pk,
            Option::<String>::None,
            Option::<String>::None,
            Option::<String>::None,
            Option::<String>::None,
            stamp.map(|h| h.encode()),
            kind,
            now_ms as i64
        ])?;
    }
    Ok(())
}

/// One change of a patient's data this site knows, for people.
#[derive(Clone, Debug, serde::Serialize)]
pub struct HistoryEntry {
    pub table: String,
    pub pk: String,
    /// The field (null for a row deleted or brought back).
    pub column: Option<String>,
    /// `set` (the value a field shows now, as typed), `edit` (a value
    /// replaced), `deleted`, `restored`.
    pub kind: String,
    /// The values as people read them (null for a row deleted or brought
    /// back).
    pub old_value: Option<String>,
    pub new_value: Option<String>,
    /// The stamp of the change: the site that made it and when.
    pub hlc: Option<String>,
}

impl Db {
    /// Every change this site knows of one patient, oldest first: the
    /// recorded ones, then what each field of its rows shows now.
    pub fn history(&self, patient: &str) -> Result<Vec<HistoryEntry>, DbError> {
        let mut stmt = self.conn.prepare(
            "SELECT tbl, pk, col, kind, old_value, new_value, new_hlc FROM _cs_history WHERE patient = ?1 ORDER BY id",
        )?;
        let mut out: Vec<HistoryEntry> = stmt
            .query_map([patient], |r| {
                let field = r.get::<_, Option<String>>(2)?.is_some();
                Ok(HistoryEntry {
                    table: r.get(0)?,
                    pk: r.get(1)?,
                    column: r.get(2)?,
                    kind: r.get(3)?,
                    old_value: field
                        .then(|| r.get_ref(4).map(from_ref))
                        .transpose()?
                        .map(|v| v.display_full()),
                    new_value: field
                        .then(|| r.get_ref(5).map(from_ref))
                        .transpose()?
                        .map(|v| v.display_full()),
                    hlc: r.get(6)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        for (key, row) in self.doc_for_patient(patient)?.rows {
            for (col, state) in &row.fields {
                let w = state.winner();
                out.push(HistoryEntry {
                    table: key.table.clone(),
                    pk: key.pk.clone(),
                    column: Some(col.clone()),
                    kind: "set".into(),
                    old_value: None,
                    new_value: Some(w.value().display_full()),
                    hlc: Some(w.hlc().encode()),
                });
            }
        }
        // By when each change was made.
        out.sort_by_key(|e| e.hlc.as_deref().and_then(|h| Hlc::parse(h).ok()));
        Ok(out)
    }

    /// Patients whose id is `query`, or whose name (the mapping's name
    /// columns, as the app shows them) contains it, ignoring case: at most
    /// `limit`, by name. (id, name).
    pub fn find_patients(&self, query: &str, limit: usize) -> Result<Vec<(String, Option<String>)>, DbError> {
        let key = super::schema::quote(&self.mapping.root.key);
        let table = super::schema::quote(&self.mapping.root.table);
        let columns = self.mapping.patient_name();
        let name = if columns.is_empty() {
            "''".to_owned()
        } else {
            columns
                .iter()
                .map(|c| format!("coalesce(CAST({} AS TEXT), '')", super::schema::quote(c)))
                .collect::<Vec<_>>()
                .join(" || ' ' || ")
        };
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {key} FROM {table} WHERE {key} = ?1 OR (?1 <> '' AND instr(lower({name}), lower(?1)) > 0) LIMIT ?2"
        ))?;
        let ids: Vec<String> = stmt
            .query_map(params![query.trim(), limit as i64], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let name = self.patient_name(&id)?;
            out.push((id, name));
        }
        // A deleted patient is found by its id.
        if out.is_empty()
            && super::state::load_row(&self.conn, &self.mapping.root.table, query.trim())?.is_some()
        {
            out.push((query.trim().to_owned(), self.patient_name(query.trim())?));
        }
        out.sort_by(|a, b| (&a.1, &a.0).cmp(&(&b.1, &b.0)));
        Ok(out)
    }

    /// Removes history entries recorded before `before_ms`; returns how many.
    pub fn forget_history_before(&self, before_ms: u64) -> Result<u64, DbError> {
        Ok(self.conn.execute("DELETE FROM _cs_history WHERE recorded_ms < ?1", [before_ms as i64])? as u64)
    }
}
