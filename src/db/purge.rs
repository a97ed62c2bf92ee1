//! Tombstones and their purge: which rows are deleted and when, the stamps
//! other sites acknowledge, and the rows purged from the state (remembered
//! by key, so a stale copy of a purged row is never taken back).

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::rowblob;
use super::{Db, DbError, WriteTx};
use crate::model::{Base, Hlc, RowKey, RowState, SiteId};
use crate::xmlstore::PurgedKey;

/// A row the other sites purged while this site was away (deleted at
/// `horizon`, the delete's stamp). It is removed from the state and
/// remembered as purged; the app's row goes through the mass-delete guard
/// like any incoming deletion.
fn drop_row(
    conn: &rusqlite::Connection,
    key: &RowKey,
    row: &RowState,
    patient: &str,
    deleted: &Base,
    now_ms: u64,
) -> Result<(), DbError> {
    conn.prepare_cached("DELETE FROM _cs_rows WHERE tbl = ?1 AND pk = ?2")?
        .execute(params![key.table, key.pk])?;
    super::digests::drop(conn, patient)?;
    // Versions the delete did not see (edits this site made while away,
    // whenever it made them) lose to it, as an edit a delete did not see
    // always does, and are kept here for a person to see.
    let deleted_at = deleted.latest().map(|h| h.encode()).unwrap_or_default();
    super::records::lost_to_purge(conn, key, row, patient, deleted, &deleted_at, now_ms)?;
    // Its causal length as a tombstone: past the live row's.
    let cl = if row.is_alive() { row.cl + 1 } else { row.cl };
    conn.prepare_cached(
        "INSERT INTO _cs_purged (tbl, pk, cl, patient, deleted_at, purged_ms, base) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (tbl, pk) DO UPDATE SET cl = max(cl, excluded.cl)",
    )?
    .execute(params![key.table, key.pk, cl as i64, patient, deleted_at, now_ms as i64, deleted.encode()])?;
    super::held::hold_purged(conn, key, patient, deleted.latest().map(|h| h.site()))?;
    Ok(())
}

/// What a purged row's delete saw: the recorded base, or for a row purged
/// before that was kept, the delete's stamp alone.
fn seen_by_delete(base: Option<&str>, deleted_at: Option<&str>) -> Base {
    base.and_then(|b| Base::parse(b, usize::MAX))
        .unwrap_or_else(|| Base::new(deleted_at.and_then(|h| Hlc::parse(h).ok())))
}

pub(super) const TABLES: &str = "
CREATE TABLE IF NOT EXISTS _cs_purged (tbl TEXT NOT NULL, pk TEXT NOT NULL, cl INTEGER NOT NULL,
  patient TEXT, deleted_at TEXT, purged_ms INTEGER NOT NULL, base TEXT, PRIMARY KEY (tbl, pk)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS _cs_ack_stamps (site TEXT PRIMARY KEY, stamp TEXT NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS _cs_rows_dead ON _cs_rows (tbl, pk) WHERE cl % 2 = 0;
";

/// A deleted row the state still holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tombstone {
    pub table: String,
    pub pk: String,
    pub patient: Option<String>,
    pub cl: u64,
    /// The delete's stamp, when the tombstone says what its delete saw.
    pub deleted_at: Option<Hlc>,
}

/// A row purged from the state.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Purged {
    pub table: String,
    pub pk: String,
    pub patient: Option<String>,
    pub deleted_at: Option<String>,
    pub purged_ms: u64,
}

impl WriteTx<'_> {
    /// Records that this site has applied `site`'s changes up to `stamp`.
    pub fn set_ack_stamp(&self, site: SiteId, stamp: Hlc) -> Result<(), DbError> {
        self.tx
            .prepare_cached(
                "INSERT INTO _cs_ack_stamps (site, stamp) VALUES (?1, ?2)
                 ON CONFLICT (site) DO UPDATE SET stamp = max(stamp, excluded.stamp)",
            )?
            .execute(params![site.to_string(), stamp.encode()])?;
        Ok(())
    }
}

impl Db {
    /// For each other site, the latest of its stamps this site has applied
    /// from its change-log.
    pub fn ack_stamps(&self) -> Result<BTreeMap<SiteId, Hlc>, DbError> {
        let mut stmt = self.conn.prepare("SELECT site, stamp FROM _cs_ack_stamps")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = BTreeMap::new();
        for row in rows {
            let (site, stamp) = row?;
            if let (Ok(site), Ok(stamp)) = (SiteId::parse(&site), Hlc::parse(&stamp)) {
                out.insert(site, stamp);
            }
        }
        Ok(out)
    }

    /// Every tombstone in the state.
    pub fn tombstones(&self) -> Result<Vec<Tombstone>, DbError> {
        let mut stmt = self
            .conn
            .prepare("SELECT tbl, pk, patient, cl, state FROM _cs_rows WHERE cl % 2 = 0 ORDER BY tbl, pk")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, Vec<u8>>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (table, pk, patient, cl, blob) = row?;
            let deleted_at = rowblob::decode(&blob).and_then(|(_, deleted)| deleted.latest());
            out.push(Tombstone { table, pk, patient, cl: cl as u64, deleted_at });
        }
        Ok(out)
    }

    /// Removes tombstones from the state and remembers them as purged.
    /// Their records of lost edits close.
    pub fn purge(&mut self, rows: &[Tombstone], now_ms: u64) -> Result<(), DbError> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for t in rows {
            // What the delete saw, kept so the deletion can be told again
            // to a site that brings the row back (see purged_tombstones).
            let base: Option<String> = tx
                .prepare_cached("SELECT state FROM _cs_rows WHERE tbl = ?1 AND pk = ?2")?
                .query_row(params![t.table, t.pk], |r| r.get::<_, Vec<u8>>(0))
                .optional()?
                .and_then(|blob| rowblob::decode(&blob))
                .map(|(_, deleted)| deleted.encode())
                .filter(|b| !b.is_empty());
            tx.prepare_cached("DELETE FROM _cs_rows WHERE tbl = ?1 AND pk = ?2")?
                .execute(params![t.table, t.pk])?;
            if let Some(patient) = &t.patient {
                super::digests::drop(&tx, patient)?;
            }
            tx.prepare_cached(
                "INSERT INTO _cs_purged (tbl, pk, cl, patient, deleted_at, purged_ms, base)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (tbl, pk) DO UPDATE SET cl = max(cl, excluded.cl), deleted_at = excluded.deleted_at,
                   purged_ms = excluded.purged_ms, base = excluded.base",
            )?
            .execute(params![
                t.table,
                t.pk,
                t.cl as i64,
                t.patient,
                t.deleted_at.map(|h| h.encode()),
                now_ms as i64,
                base
            ])?;
            super::records::close_purged(&tx, &t.table, &t.pk, now_ms)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The tombstones of rows purged here, as far as they are still known:
    /// the causal length and what the delete saw (or, for a row purged
    /// before that was kept, its stamp). Written into a patient file that
    /// brings such a row back, they tell the site that still has it to
    /// delete it too. Keys not purged here are left out.
    pub fn purged_tombstones(&self, keys: &[RowKey]) -> Result<Vec<(RowKey, RowState)>, DbError> {
        let mut out = Vec::new();
        let mut stmt = self
            .conn
            .prepare_cached("SELECT cl, deleted_at, base FROM _cs_purged WHERE tbl = ?1 AND pk = ?2")?;
        for key in keys {
            let found: Option<(i64, Option<String>, Option<String>)> = stmt
                .query_row(params![key.table, key.pk], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()?;
            let Some((cl, deleted_at, base)) = found else { continue };
            let deleted = seen_by_delete(base.as_deref(), deleted_at.as_deref());
            out.push((key.clone(), RowState { cl: cl as u64, deleted, ..RowState::default() }));
        }
        Ok(out)
    }

    /// Rows purged from the state, newest first.
    pub fn purged(&self) -> Result<Vec<Purged>, DbError> {
        let mut stmt = self.conn.prepare(
            "SELECT tbl, pk, patient, deleted_at, purged_ms FROM _cs_purged ORDER BY purged_ms DESC, tbl, pk",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(Purged {
                table: r.get(0)?,
                pk: r.get(1)?,
                patient: r.get(2)?,
                deleted_at: r.get(3)?,
                purged_ms: r.get::<_, i64>(4)? as u64,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The rows other sites say they purged (`<purged>` in their site
    /// files) that this site still holds with no higher causal length:
    /// they were deleted while this site was away, and go here too (the
    /// app's rows through the mass-delete guard). An edit this site made
    /// after the delete is kept as a `deleted` record. Whether the rows'
    /// files are in the folder does not matter (a file may not have
    /// arrived yet, or a client may have brought an old one back). Returns
    /// how many rows went.
    pub fn drop_listed_purged(
        &mut self,
        listed: &[PurgedKey],
        horizon: Hlc,
        now_ms: u64,
    ) -> Result<usize, DbError> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut n = 0;
        for p in listed {
            let key = RowKey { table: p.table.clone(), pk: p.pk.clone() };
            let Some((row, patient)) = super::state::load_row(&tx, &key.table, &key.pk)? else { continue };
            if row.cl > p.cl {
                continue;
            }
            let deleted = if p.deleted.is_empty() { Base::new([horizon]) } else { p.deleted.clone() };
            drop_row(&tx, &key, &row, patient.as_deref().unwrap_or_default(), &deleted, now_ms)?;
            tx.prepare_cached("UPDATE _cs_purged SET cl = max(cl, ?3) WHERE tbl = ?1 AND pk = ?2")?
                .execute(params![key.table, key.pk, p.cl as i64])?;
            n += 1;
        }
        tx.commit()?;
        Ok(n)
    }

    /// Rows purged here since `since_ms`, newest first, at most `limit`:
    /// what the site file publishes.
    pub fn recent_purged(&self, since_ms: u64, limit: usize) -> Result<Vec<PurgedKey>, DbError> {
        let mut stmt = self.conn.prepare(
            "SELECT tbl, pk, cl, deleted_at, base FROM _cs_purged WHERE purged_ms >= ?1
             ORDER BY purged_ms DESC, tbl, pk LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![since_ms as i64, limit as i64], |r| {
            let deleted_at: Option<String> = r.get(3)?;
            let base: Option<String> = r.get(4)?;
            Ok(PurgedKey {
                table: r.get(0)?,
                pk: r.get(1)?,
                cl: r.get::<_, i64>(2)? as u64,
                deleted: seen_by_delete(base.as_deref(), deleted_at.as_deref()),
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Every patient the state holds rows of (deleted ones included).
    pub fn patients(&self) -> Result<Vec<String>, DbError> {
        let mut stmt =
            self.conn.prepare("SELECT DISTINCT patient FROM _cs_rows WHERE patient IS NOT NULL")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// True when this patient's own row was purged here.
    pub fn is_purged_patient(&self, patient: &str) -> Result<bool, DbError> {
        let root = &self.mapping.root.table;
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM _cs_purged WHERE tbl = ?1 AND pk = ?2")?
            .query_row(params![root, patient], |_| Ok(()))
            .optional()?
            .is_some())
    }
}

/// The causal length of a row purged here.
pub(super) fn purged_cl(conn: &Connection, key: &RowKey) -> Result<Option<u64>, DbError> {
    let cl: Option<i64> = conn
        .prepare_cached("SELECT cl FROM _cs_purged WHERE tbl = ?1 AND pk = ?2")?
        .query_row(params![key.table, key.pk], |r| r.get(0))
        .optional()?;
    Ok(cl.map(|c| c as u64))
}
