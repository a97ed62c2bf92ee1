//! Conflict records (`_cs_conflicts`): the values that lost a concurrent
//! edit, or an edit a concurrent delete did not see, kept for a person to
//! review. This module writes them; every site that holds the same state
//! shows the same records.

use rusqlite::{Connection, OptionalExtension, params};

use super::values::{Sql, from_ref};
use super::{Db, DbError};
use crate::model::{Base, FieldVersion, RowKey, RowState, Value};

pub(super) const TABLE: &str = "
-- Concurrent edits of one field (kind 'edit'), or an edit a concurrent
-- delete did not see (kind 'deleted'): the value that lost, kept for review.
CREATE TABLE IF NOT EXISTS _cs_conflicts (id INTEGER PRIMARY KEY, tbl TEXT NOT NULL,
  pk TEXT NOT NULL, col TEXT NOT NULL, value, hlc TEXT NOT NULL, base TEXT, winner_value,
  winner_hlc TEXT NOT NULL, patient TEXT, source TEXT, detected_ms INTEGER NOT NULL,
  status TEXT NOT NULL DEFAULT 'open', resolved_ms INTEGER, kind TEXT NOT NULL DEFAULT 'edit',
  UNIQUE (tbl, pk, col, hlc));
";

/// True when a row's state may have conflict records: a field with
/// concurrent versions, or a tombstone.
pub(super) fn has_records(row: Option<&RowState>) -> bool {
    row.is_some_and(|r| !r.is_alive() || r.fields.values().any(|f| f.versions().len() > 1))
}

/// Makes a row's open conflict records exactly what its state says, so
/// every site that holds the same state shows the same records whatever
/// order it learned things in:
/// - a tombstone that says what it saw: one `deleted` record per field
///   version it did not see (an edit that lost to the delete);
/// - otherwise one `edit` record per concurrent version that lost to the
///   field's winner.
///
/// Every other open record of the row is resolved: some later edit or
/// delete saw it, or the row lives again. Returns how many records are new
/// (or open again).
pub(crate) fn sync_records(
    conn: &Connection,
    key: &RowKey,
    row: &RowState,
    patient: Option<&str>,
    source: &str,
    now_ms: u64,
) -> Result<usize, DbError> {
    struct Wanted<'a> {
        col: &'a str,
        version: &'a FieldVersion,
        kind: &'static str,
        winner: Option<&'a FieldVersion>,
    }
    let mut wanted: Vec<Wanted<'_>> = Vec::new();
    let deleted_at = row.deleted_at();
    let lost: Vec<(&String, &FieldVersion)> = row.lost_to_delete().collect();
    if deleted_at.is_some() && !lost.is_empty() {
        wanted.extend(lost.into_iter().map(|(c, v)| Wanted {
            col: c,
            version: v,
            kind: "deleted",
            winner: None,
        }));
    } else if row.is_alive() || deleted_at.is_none() {
        for (col, state) in &row.fields {
            let winner = state.winner();
            for v in state.losers() {
                wanted.push(Wanted { col, version: v, kind: "edit", winner: Some(winner) });
            }
        }
    }
    let keep: Vec<String> =
        wanted.iter().map(|w| format!("{}\u{1f}{}", w.col, w.version.hlc().encode())).collect();
    // A version a purge took that came back (a site that kept it sent it
    // again) is a concurrent version of the state like any other: its
    // record is an ordinary one again (below), which only a person or a
    // later edit with it in view settles, as at every other site.
    // An edit a purge took (see `lost_to_purge`) is not in the state any
    // more, so no later edit or delete can have seen it: it stays open for a
    // person, unless the row shows its value now (`settle_shown`).
    conn.prepare_cached(
        "UPDATE _cs_conflicts SET status = 'resolved', resolved_ms = ?4
         WHERE tbl = ?1 AND pk = ?2 AND status = 'open'
           AND col || char(31) || hlc NOT IN (SELECT value FROM json_each(?3))
           AND source IS NOT 'purged while this site was away'",
    )?
    .execute(params![
        key.table,
        key.pk,
        serde_json::to_string(&keep).expect("strings serialise"),
        now_ms as i64
    ])?;
    let mut new = 0;
    for w in wanted {
        let hlc = w.version.hlc().encode();
        let was_open: Option<bool> = conn
            .prepare_cached("SELECT status = 'open' FROM _cs_conflicts WHERE tbl = ?1 AND pk = ?2 AND col = ?3 AND hlc = ?4")?
            .query_row(params![key.table, key.pk, w.col, hlc], |r| r.get(0))
            .optional()?;
        let (winner_value, winner_hlc) = match w.winner {
            Some(v) => (Some(Sql(v.value())), v.hlc().encode()),
            None => (None, deleted_at.map(|h| h.encode()).unwrap_or_default()),
        };
        conn.prepare_cached(
            "INSERT INTO _cs_conflicts (tbl, pk, col, value, hlc, base, winner_value, winner_hlc,
               patient, source, detected_ms, kind) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
             ON CONFLICT (tbl, pk, col, hlc) DO UPDATE SET kind = excluded.kind,
               winner_value = excluded.winner_value, winner_hlc = excluded.winner_hlc,
               status = 'open', resolved_ms = NULL,
               source = CASE WHEN source IS 'purged while this site was away' THEN excluded.source ELSE source END",
        )?
        .execute(params![
            key.table,
            key.pk,
            w.col,
            Sql(w.version.value()),
            hlc,
            (!w.version.base().is_empty()).then(|| w.version.base().encode()),
            winner_value,
            winner_hlc,
            patient,
            source,
            now_ms as i64,
            w.kind
        ])?;
        new += usize::from(was_open != Some(true));
    }
    if row.is_alive() {
        settle_shown(conn, key, row, now_ms)?;
    }
    Ok(new)
}

/// A value that lost a concurrent edit.
#[derive(Clone, Debug)]
pub struct ConflictRecord {
    pub id: i64,
    pub table: String,
    pub pk: String,
    pub column: String,
    pub value: Value,
    pub hlc: String,
    pub winner_value: Value,
    pub winner_hlc: String,
    pub patient: Option<String>,
    pub source: Option<String>,
    pub detected_ms: u64,
    pub status: String,
    /// `edit` (two edits of one field) or `deleted` (an edit a concurrent
    /// delete did not see; `winner_value` is null).
    pub kind: String,
}

/// Versions a purged row held that its delete did not see (edits this site
/// made while away, whenever it made them): they lose to it, as an edit a
/// delete did not see always does, and are kept for a person to see.
pub(super) fn lost_to_purge(
    conn: &Connection,
    key: &RowKey,
    row: &RowState,
    patient: &str,
    deleted: &Base,
    deleted_at: &str,
    now_ms: u64,
) -> Result<(), DbError> {
    let mut record = conn.prepare_cached(
        "INSERT INTO _cs_conflicts (tbl, pk, col, value, hlc, winner_value, winner_hlc, patient, source,
           detected_ms, kind) VALUES (?1, ?2, ?3, ?4, ?5, NULL, ?6, ?7, 'purged while this site was away', ?8, 'deleted')
         ON CONFLICT (tbl, pk, col, hlc) DO UPDATE SET kind = 'deleted', status = 'open', resolved_ms = NULL,
           source = excluded.source",
    )?;
    for (col, state) in &row.fields {
        for v in state.versions().iter().filter(|v| !deleted.covers(v.hlc())) {
            record.execute(params![
                key.table,
                key.pk,
                col,
                Sql(v.value()),
                v.hlc().encode(),
                deleted_at,
                patient,
                now_ms as i64
            ])?;
        }
    }
    Ok(())
}

/// One record's row, field, lost stamp, status and kind.
pub(super) type RecordHead = (String, String, String, String, String, String);

pub(super) fn get(conn: &Connection, id: i64) -> Result<Option<RecordHead>, DbError> {
    Ok(conn
        .query_row("SELECT tbl, pk, col, hlc, status, kind FROM _cs_conflicts WHERE id = ?1", [id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
        })
        .optional()?)
}

/// Closes one record: a person settled it.
pub(super) fn close(conn: &Connection, id: i64, now_ms: u64) -> Result<(), DbError> {
    conn.execute(
        "UPDATE _cs_conflicts SET status = 'resolved', resolved_ms = ?2 WHERE id = ?1",
        params![id, now_ms as i64],
    )?;
    Ok(())
}

/// Resolves the open records a purge made of a row that lives again (see
/// `lost_to_purge`) whose value is what the row shows now in that field:
/// nothing is left to choose.
pub(super) fn settle_shown(
    conn: &Connection,
    key: &RowKey,
    row: &RowState,
    now_ms: u64,
) -> Result<(), DbError> {
    let open: Vec<(i64, String, Value)> = conn
        .prepare_cached(
            "SELECT id, col, value FROM _cs_conflicts WHERE tbl = ?1 AND pk = ?2 AND status = 'open'
               AND source IS 'purged while this site was away'",
        )?
        .query_map(params![key.table, key.pk], |r| Ok((r.get(0)?, r.get(1)?, from_ref(r.get_ref(2)?))))?
        .collect::<rusqlite::Result<_>>()?;
    for (id, col, value) in open {
        if row.fields.get(&col).is_some_and(|f| *f.winner().value() == value) {
            close(conn, id, now_ms)?;
        }
    }
    Ok(())
}

/// A row purged here: none of its records is open any more.
pub(super) fn close_purged(conn: &Connection, table: &str, pk: &str, now_ms: u64) -> Result<(), DbError> {
    conn.prepare_cached(
        "UPDATE _cs_conflicts SET status = 'resolved', resolved_ms = ?3
         WHERE tbl = ?1 AND pk = ?2 AND status = 'open'",
    )?
    .execute(params![table, pk, now_ms as i64])?;
    Ok(())
}

impl Db {
    /// True when a tombstone has edits it did not see that nobody has
    /// reviewed yet (open `deleted` records): it is not purged while so.
    pub fn has_open_lost_edits(&self, table: &str, pk: &str) -> Result<bool, DbError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM _cs_conflicts WHERE tbl = ?1 AND pk = ?2 AND kind = 'deleted' AND status = 'open')",
            )?
            .query_row(params![table, pk], |r| r.get(0))?)
    }

    pub fn open_conflict_count(&self) -> Result<u64, DbError> {
        let n: i64 =
            self.conn
                .query_row("SELECT count(*) FROM _cs_conflicts WHERE status = 'open'", [], |r| r.get(0))?;
        Ok(n as u64)
    }

    /// Conflict records, newest first.
    pub fn conflicts(&self, open_only: bool) -> Result<Vec<ConflictRecord>, DbError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, tbl, pk, col, value, hlc, winner_value, winner_hlc, patient, source, detected_ms, status, kind
             FROM _cs_conflicts WHERE (?1 = 0 OR status = 'open') ORDER BY id DESC",
        )?;
        let rows = stmt.query_map([open_only as i64], |r| {
            Ok(ConflictRecord {
                id: r.get(0)?,
                table: r.get(1)?,
                pk: r.get(2)?,
                column: r.get(3)?,
                value: from_ref(r.get_ref(4)?),
                hlc: r.get(5)?,
                winner_value: from_ref(r.get_ref(6)?),
                winner_hlc: r.get(7)?,
                patient: r.get(8)?,
                source: r.get(9)?,
                detected_ms: r.get::<_, i64>(10)? as u64,
                status: r.get(11)?,
                kind: r.get(12)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}
