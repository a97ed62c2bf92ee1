//! Deletions held by the mass-delete guard: the state has the tombstones
//! (they travel on, and the patient files carry them), but the app's tables
//! keep the rows until the guard lets them through, a person confirms
//! (`sync --confirm-deletes`) or refuses them (`sync --keep-deleted`).
//!
//! Every incoming deletion of a row the app shows is held while a run
//! imports; a held row is filed under its patient. The guard then counts
//! them in groups: the patients (their own rows, with every child row
//! filed under them), and each child table's rows held on their own (their
//! patient is not being deleted). A group is applied or kept whole.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::digests;
use super::mapping::TableRole;
use super::project::project_or_park;
use super::records::sync_records;
use super::schema::quote;
use super::state::{
    Ctx, StampBatch, add_to_batch, load_row, patient_of, save_row, stamp_if_pending, stamp_row,
};
use super::{Db, DbError};
use crate::model::{Base, Hlc, HlcClock, RowKey, RowState, SiteId, Value};

pub(super) const TABLE: &str = "
CREATE TABLE IF NOT EXISTS _cs_held (tbl TEXT NOT NULL, pk TEXT NOT NULL, patient TEXT NOT NULL,
  site TEXT, PRIMARY KEY (tbl, pk)) WITHOUT ROWID;
";

/// What the guard holds back.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct HeldDeletes {
    /// Patients whose deletion waits.
    pub patients: u64,
    /// Rows in all (the patients' own and their child rows, and the rows
    /// held on their own).
    pub rows: u64,
    /// The sites that deleted them (full ids).
    pub sites: Vec<String>,
    /// Child rows held on their own (their patient stays), per table.
    pub tables: Vec<HeldTable>,
}

/// A patient whose deletion the guard holds, as the page and `status` list
/// it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct HeldPatient {
    pub id: String,
    /// As the mapping names patients (null: it names none, or they are
    /// empty).
    pub name: Option<String>,
    /// Its rows of other tables whose deletion waits with it.
    pub rows: u64,
    /// The site that deleted it (full id), and when.
    pub site: Option<String>,
    pub deleted_ms: Option<u64>,
}

/// Rows of one child table whose deletion waits while their patient stays.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct HeldTable {
    pub table: String,
    pub rows: u64,
}

/// A group of held deletions the guard applies or keeps whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeldGroup {
    /// Patients' own rows, with the child rows filed under them.
    Patients,
    /// One child table's rows held on their own.
    Table(String),
}

/// What releasing a group applied to the app's tables.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Released {
    pub patients: u64,
    pub rows: u64,
}

/// Deletions refused in one write transaction, per deleting site.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Kept {
    /// Rows that live again.
    pub rows: u64,
    /// Of them, patients' own rows.
    pub patients: u64,
    /// Per site that deleted them: (site, rows, earliest and latest delete
    /// time in ms).
    pub by_site: Vec<(String, u64, u64, u64)>,
    /// Whether held rows are left for another transaction.
    pub more: bool,
}

impl HeldGroup {
    /// The group's rows in `_cs_held`, as an SQL condition.
    fn condition(&self, root: &str) -> String {
        let root = lit(root);
        let filed_under_held = format!("patient IN (SELECT pk FROM _cs_held WHERE tbl = {root})");
        match self {
            HeldGroup::Patients => format!("(tbl = {root} OR {filed_under_held})"),
            HeldGroup::Table(t) => format!("(tbl = {} AND tbl <> {root} AND NOT {filed_under_held})", lit(t)),
        }
    }
}

/// A name as an SQL string literal.
fn lit(name: &str) -> String {
    format!("'{}'", name.replace('\'', "''"))
}

impl Db {
    pub fn held_deletes(&self) -> Result<HeldDeletes, DbError> {
        let root = &self.mapping.root.table;
        let (patients, rows): (i64, i64) = self.conn.query_row(
            "SELECT count(*) FILTER (WHERE tbl = ?1), count(*) FROM _cs_held",
            [root],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let mut stmt =
            self.conn.prepare("SELECT DISTINCT site FROM _cs_held WHERE site IS NOT NULL ORDER BY site")?;
        let sites = stmt.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
        let mut stmt = self.conn.prepare(
            "SELECT tbl, count(*) FROM _cs_held
             WHERE tbl <> ?1 AND patient NOT IN (SELECT pk FROM _cs_held WHERE tbl = ?1)
             GROUP BY tbl ORDER BY tbl",
        )?;
        let tables = stmt
            .query_map([root], |r| Ok(HeldTable { table: r.get(0)?, rows: r.get::<_, i64>(1)? as u64 }))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(HeldDeletes { patients: patients as u64, rows: rows as u64, sites, tables })
    }

    /// The first `limit` patients whose deletion is held, by name.
    pub fn held_patients(&self, limit: usize) -> Result<Vec<HeldPatient>, DbError> {
        let root = &self.mapping.root.table;
        let mut stmt = self.conn.prepare(
            "SELECT h.pk, h.site, (SELECT count(*) FROM _cs_held c WHERE c.patient = h.pk AND c.tbl <> ?1)
             FROM _cs_held h WHERE h.tbl = ?1",
        )?;
        let rows: Vec<(String, Option<String>, i64)> = stmt
            .query_map([root], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let mut out = Vec::with_capacity(rows.len());
        for (id, site, children) in rows {
            let deleted_at = load_row(&self.conn, root, &id)?.and_then(|(row, _)| row.deleted_at());
            out.push(HeldPatient {
                name: self.patient_name(&id)?,
                site: deleted_at.map(|h| h.site().to_string()).or(site),
                deleted_ms: deleted_at.map(|h| h.wall_ms()),
                rows: children.max(0) as u64,
                id,
            });
        }
        // By name, then id: the list a person reads.
        out.sort_by(|a, b| (a.name.is_none(), &a.name, &a.id).cmp(&(b.name.is_none(), &b.name, &b.id)));
        out.truncate(limit);
        Ok(out)
    }

    /// A patient's name as the app shows it, from the columns the mapping
    /// names (`None`: none, or all empty).
    /// Whether the app still shows this patient because its deletion is
    /// held for a person to decide.
    pub fn patient_deletion_held(&self, id: &str) -> Result<bool, DbError> {
        is_held(&self.conn, &self.mapping.root.table, id)
    }

    pub fn patient_name(&self, id: &str) -> Result<Option<String>, DbError> {
        self.row_name(&self.mapping.root.table, id)
    }

    /// A row's name as the app shows it (a patient's name, an
    /// appointment's time and practitioner), from the columns the mapping
    /// names for its table; a row the app no longer shows (deleted) is
    /// named from the state, whose tombstone keeps the values until it is
    /// purged. `None`: the mapping names none, or they are all empty.
    pub fn row_name(&self, table: &str, pk: &str) -> Result<Option<String>, DbError> {
        let columns = self.mapping.row_name(table);
        let Some((key, _)) = self.mapping.table(table) else { return Ok(None) };
        if columns.is_empty() {
            return Ok(None);
        }
        let select: Vec<String> = columns.iter().map(|c| format!("CAST({} AS TEXT)", quote(c))).collect();
        let sql = format!("SELECT {} FROM {} WHERE {} = ?1", select.join(", "), quote(table), quote(key));
        let parts: Option<Vec<Option<String>>> = self
            .conn
            .prepare_cached(&sql)?
            .query_row([pk], |r| (0..columns.len()).map(|i| r.get(i)).collect())
            .optional()?;
        let parts = match parts {
            Some(parts) => parts,
            None => match load_row(&self.conn, table, pk)? {
                Some((row, _)) => columns
                    .iter()
                    .map(|c| {
                        row.value(c).and_then(|v| match v {
                            crate::model::Value::Null => None,
                            v => Some(v.display_full()),
                        })
                    })
                    .collect(),
                None => Vec::new(),
            },
        };
        let name: Vec<String> =
            parts.into_iter().flatten().map(|p| p.trim().to_owned()).filter(|p| !p.is_empty()).collect();
        Ok((!name.is_empty()).then(|| name.join(" ")))
    }

    /// Forgets held deletions of rows that live again (re-inserted at
    /// another site, or refused there with `--keep-deleted`): there is
    /// nothing to delete any more.
    pub fn forget_revived_held(&self) -> Result<u64, DbError> {
        let n = self.conn.execute(
            "DELETE FROM _cs_held WHERE EXISTS (SELECT 1 FROM _cs_rows r
               WHERE r.tbl = _cs_held.tbl AND r.pk = _cs_held.pk AND r.cl % 2 = 1)",
            [],
        )?;
        Ok(n as u64)
    }

    /// Rows a mapped table of the app shows (held ones included).
    pub fn table_count(&self, table: &str) -> Result<u64, DbError> {
        let n: i64 =
            self.conn.query_row(&format!("SELECT count(*) FROM {}", quote(table)), [], |r| r.get(0))?;
        Ok(n as u64)
    }

    /// Applies a group of held deletions to the app's tables (child rows
    /// first, so a foreign key never refuses the patient's row).
    pub fn release_held(&mut self, group: &HeldGroup) -> Result<Released, DbError> {
        let root = self.mapping.root.table.clone();
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute("INSERT INTO _cs_quiet (x) VALUES (1)", [])?;
        let mut released = Released::default();
        {
            let mut stmt = tx.prepare(&format!(
                "SELECT tbl, pk FROM _cs_held WHERE {} ORDER BY tbl = {}, tbl, pk",
                group.condition(&root),
                lit(&root)
            ))?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let (tbl, pk): (String, String) = (r.get(0)?, r.get(1)?);
                // Only a row whose state is still deleted (or purged) goes:
                // one brought back since (re-inserted elsewhere) stays.
                let alive: Option<bool> = tx
                    .prepare_cached("SELECT cl % 2 = 1 FROM _cs_rows WHERE tbl = ?1 AND pk = ?2")?
                    .query_row(params![tbl, pk], |r| r.get(0))
                    .optional()?;
                if alive == Some(true) {
                    continue;
                }
                if let Some((key, _)) = self.mapping.table(&tbl) {
                    let n = tx
                        .prepare_cached(&format!("DELETE FROM {} WHERE {} = ?1", quote(&tbl), quote(key)))?
                        .execute([&pk])?;
                    released.rows += n as u64;
                    if tbl == root {
                        released.patients += n as u64;
                    }
                }
            }
        }
        tx.execute(&format!("DELETE FROM _cs_held WHERE {}", group.condition(&root)), [])?;
        tx.execute("DELETE FROM _cs_quiet", [])?;
        tx.commit()?;
        Ok(released)
    }
}

/// Refuses up to `max_rows` held deletions (`sync --keep-deleted`): the
/// rows live again here and travel to every site as new inserts. The
/// patients' own rows go first.
pub(super) fn keep(
    conn: &Connection,
    ctx: &Ctx<'_>,
    clock: &mut HlcClock,
    now_ms: u64,
    batch: &mut StampBatch,
    max_rows: usize,
) -> Result<Kept, DbError> {
    let root = ctx.mapping.root.table.as_str();
    let keys: Vec<(RowKey, Option<String>)> = {
        let mut stmt =
            conn.prepare("SELECT tbl, pk, site FROM _cs_held ORDER BY tbl <> ?1, patient, tbl, pk LIMIT ?2")?;
        stmt.query_map(params![root, max_rows as i64 + 1], |r| {
            Ok((RowKey { table: r.get(0)?, pk: r.get(1)? }, r.get(2)?))
        })?
        .collect::<rusqlite::Result<_>>()?
    };
    let mut kept = Kept { more: keys.len() > max_rows, ..Kept::default() };
    for (key, site) in keys.into_iter().take(max_rows) {
        conn.prepare_cached("DELETE FROM _cs_held WHERE tbl = ?1 AND pk = ?2")?
            .execute(params![key.table, key.pk])?;
        let restored = match restore_row(conn, ctx, clock, now_ms, &key, batch)? {
            Some(restored) => restored,
            None => match restore_purged(conn, ctx, clock, now_ms, &key, batch)? {
                Some(restored) => restored,
                None => continue,
            },
        };
        let Restored { deleted_at } = restored;
        kept.rows += 1;
        kept.patients += u64::from(key.table == root);
        let site = deleted_at.map(|h| h.site().to_string()).or(site).unwrap_or_default();
        let at = deleted_at.map_or(0, |h| h.wall_ms());
        match kept.by_site.iter_mut().find(|(s, ..)| *s == site) {
            Some((_, n, first, last)) => {
                *n += 1;
                *first = (*first).min(at);
                *last = (*last).max(at);
            }
            None => kept.by_site.push((site, 1, at, at)),
        }
    }
    Ok(kept)
}

/// Holds an incoming deletion while the app still shows the row: the
/// state takes the tombstone, the app keeps the row until the mass-delete
/// guard has counted the run's deletions (see held.rs). A child row is
/// filed under its patient, so that it is applied or refused with the
/// patient's own deletion. Returns whether it was held.
pub(super) fn hold_delete(
    conn: &Connection,
    ctx: &Ctx<'_>,
    key: &RowKey,
    row: &RowState,
) -> Result<bool, DbError> {
    let Some((_, role)) = ctx.mapping.table(&key.table) else { return Ok(false) };
    let patient = match role {
        TableRole::Root => key.pk.clone(),
        TableRole::Child { patient_column } => {
            row.value(patient_column).and_then(Value::as_text).unwrap_or_default().to_owned()
        }
    };
    if !app_shows(conn, ctx, key)? {
        return Ok(false);
    }
    let site = row.deleted_at().map(|h| h.site().to_string());
    conn.prepare_cached(
        "INSERT INTO _cs_held (tbl, pk, patient, site) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (tbl, pk) DO UPDATE SET site = coalesce(excluded.site, site)",
    )?
    .execute(params![key.table, key.pk, patient, site])?;
    Ok(true)
}

/// Whether the app's table has the row.
pub(super) fn app_shows(conn: &Connection, ctx: &Ctx<'_>, key: &RowKey) -> Result<bool, DbError> {
    let Some((key_col, _)) = ctx.mapping.table(&key.table) else { return Ok(false) };
    Ok(conn
        .prepare_cached(&format!(
            "SELECT EXISTS (SELECT 1 FROM {} WHERE {} = ?1)",
            quote(&key.table),
            quote(key_col)
        ))?
        .query_row([&key.pk], |r| r.get(0))?)
}

/// A held deletion refused: the row lives again.
pub(crate) struct Restored {
    /// The stamp of the delete that was refused (its site and time).
    pub(crate) deleted_at: Option<Hlc>,
}

/// Refuses a held deletion (`sync --keep-deleted`): the app still shows
/// the row, so it lives again at every site as a new insert (the next odd
/// causal length, which every site takes over the tombstone), its fields
/// travelling whole so a site that already purged the tombstone has them.
/// An edit the app made to the row while it was held is stamped first.
/// None when the row has no state or is alive already.
pub(crate) fn restore_row(
    conn: &Connection,
    ctx: &Ctx<'_>,
    clock: &mut HlcClock,
    now_ms: u64,
    key: &RowKey,
    batch: &mut StampBatch,
) -> Result<Option<Restored>, DbError> {
    stamp_if_pending(conn, ctx, clock, now_ms, key, batch)?;
    let Some((mut row, old_patient)) = load_row(conn, &key.table, &key.pk)? else { return Ok(None) };
    // Alive again already, or deleted in the app here since it was held
    // (this site agrees with the delete): nothing to keep.
    if row.is_alive() || !app_shows(conn, ctx, key)? {
        return Ok(None);
    }
    let deleted_at = row.deleted_at();
    let old = if ctx.digests {
        digests::before_save(conn, &key.table, &key.pk, &row, old_patient.as_deref())?
    } else {
        None
    };
    row.cl += 1;
    row.deleted = Base::default();
    let stamped = RowState { cl: row.cl, fields: row.fields.clone(), ..RowState::default() };
    let patient = patient_of(ctx, &key.table, &key.pk, &row, old_patient.as_deref());
    save_row(conn, ctx, &key.table, &key.pk, &row, patient.as_deref(), Some(old_patient.as_deref()), old)?;
    sync_records(conn, key, &row, patient.as_deref(), "", now_ms)?;
    // The app shows the row already; this makes it show the state's values
    // (a row the app's table refuses now is parked and shown later).
    let _parked = project_or_park(conn, ctx, key, &row)?;
    batch.bytes += 300 + key.table.len() + key.pk.len() + 200 * stamped.fields.len();
    batch.versions += 1;
    add_to_batch(batch, key.clone(), stamped, old_patient, patient);
    Ok(Some(Restored { deleted_at }))
}

/// A held deletion of a row the other sites deleted and purged while this
/// site was away (its state went with the purge, see `drop_listed_purged`),
/// refused: the row goes back to every site as a new insert of what the
/// app shows, its causal length past the purged tombstone's, as any kept
/// row does. `None` when it is not such a row.
fn restore_purged(
    conn: &Connection,
    ctx: &Ctx<'_>,
    clock: &mut HlcClock,
    now_ms: u64,
    key: &RowKey,
    batch: &mut StampBatch,
) -> Result<Option<Restored>, DbError> {
    if load_row(conn, &key.table, &key.pk)?.is_some() || !app_shows(conn, ctx, key)? {
        return Ok(None);
    }
    let Some(deleted_at) = conn
        .prepare_cached("SELECT deleted_at FROM _cs_purged WHERE tbl = ?1 AND pk = ?2")?
        .query_row(params![key.table, key.pk], |r| r.get::<_, Option<String>>(0))
        .optional()?
    else {
        return Ok(None);
    };
    stamp_row(conn, ctx, clock, now_ms, now_ms, &key.table, &key.pk, batch)?;
    // The edits the purge took from it (its `deleted` records) that the app
    // shows are in the row that goes back: settled. Any other stays open
    // for a person (its version went with the purge).
    if let Some((row, _)) = load_row(conn, &key.table, &key.pk)? {
        super::records::settle_shown(conn, key, &row, now_ms)?;
    }
    Ok(Some(Restored { deleted_at: deleted_at.and_then(|h| Hlc::parse(&h).ok()) }))
}

/// True when the app still shows a row whose deletion is held.
pub(super) fn is_held(conn: &Connection, tbl: &str, pk: &str) -> Result<bool, DbError> {
    Ok(conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM _cs_held WHERE tbl = ?1 AND pk = ?2)")?
        .query_row(params![tbl, pk], |r| r.get(0))?)
}

/// A row the other sites purged while this site was away, still shown by
/// the app: its deletion goes through the guard like any other.
pub(super) fn hold_purged(
    conn: &Connection,
    key: &RowKey,
    patient: &str,
    site: Option<SiteId>,
) -> Result<(), DbError> {
    conn.prepare_cached(
        "INSERT INTO _cs_held (tbl, pk, patient, site) VALUES (?1, ?2, ?3, ?4) ON CONFLICT (tbl, pk) DO NOTHING",
    )?
    .execute(params![key.table, key.pk, patient, site.map(|s| s.to_string())])?;
    Ok(())
}

/// The app deleted a row whose deletion was held: it agrees, nothing is
/// held any more.
pub(super) fn release(conn: &Connection, tbl: &str, pk: &str) -> Result<(), DbError> {
    conn.prepare_cached("DELETE FROM _cs_held WHERE tbl = ?1 AND pk = ?2")?.execute(params![tbl, pk])?;
    Ok(())
}

impl Db {
    /// True when the app still shows a row whose deletion the mass-delete
    /// guard holds: its tombstone is not purged while so.
    pub fn is_held(&self, table: &str, pk: &str) -> Result<bool, DbError> {
        is_held(&self.conn, table, pk)
    }
}
