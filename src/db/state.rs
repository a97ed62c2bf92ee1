//! The replicated state in the database: loading and saving row states,
//! turning the app's pending changes into stamped versions (collected into
//! the transaction's change-log segment), joining incoming documents, and
//! projecting the result onto the app's tables.

use super::held::is_held;
use super::patients::decode_row;
use super::project::project_or_park;
use super::records::has_records;
use super::records::sync_records;
use std::borrow::Cow;
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashSet};

use rusqlite::{Connection, OptionalExtension, params};

use super::DbError;
use super::digests;
use super::history;
use super::mapping::{Mapping, TableRole};
use super::purge::purged_cl;
use super::read_ahead::{self, AHEAD_FEWEST, DiskProbe};
use super::rowblob::{self, RowView};
use super::schema::quote;
use super::values::from_ref;
use crate::model::{Base, FieldState, FieldVersion, HlcClock, RowKey, RowState, SiteId, Value};
use crate::xmlstore::is_xml_safe;

pub(super) const TABLE: &str = "
-- Per replicated row: causal length (odd alive, even deleted), the patient it
-- belongs to, and the maximal versions of its fields (see rowblob.rs).
CREATE TABLE IF NOT EXISTS _cs_rows (tbl TEXT NOT NULL, pk TEXT NOT NULL, cl INTEGER NOT NULL,
  patient TEXT, state BLOB NOT NULL, PRIMARY KEY (tbl, pk));
CREATE INDEX IF NOT EXISTS _cs_rows_patient ON _cs_rows (patient);
";

/// What the state code needs to know about the database's tables.
pub(crate) struct Ctx<'a> {
    pub(crate) mapping: &'a Mapping,
    /// Column names of each mapped table, as the database has them.
    pub(crate) columns: &'a BTreeMap<String, Vec<String>>,
    /// Incoming deletions of patients (and of their rows) are held: the
    /// state takes them, the app's tables keep the rows until confirmed.
    pub(crate) hold_deletes: bool,
    /// Whether any row was ever purged here (most databases: no, and the
    /// per-row check is skipped).
    pub(crate) any_purged: bool,
    /// Whether `_cs_unprojected` may hold rows (most transactions: no, and
    /// a projected row need not be looked for there). Set when a row is
    /// parked.
    pub(crate) any_parked: &'a Cell<bool>,
    /// Whether any patient has a rows digest to keep up (see digests.rs).
    pub(crate) digests: bool,
}

/// Versions stamped in one write transaction: its change-log segment.
#[derive(Default)]
pub(crate) struct StampBatch {
    pub(crate) rows: BTreeMap<(String, RowKey), RowState>,
    /// A first-export step: its segment is made from the state rows the
    /// transaction inserted (rowids after this one), which are
    /// `range_rows`, kept in memory to make it right after the commit.
    pub(crate) range_from: Option<i64>,
    pub(crate) range_rows: Vec<((String, RowKey), RowState)>,
    pub(crate) patients: BTreeSet<String>,
    pub(crate) versions: usize,
    pub(crate) bytes: usize,
    pub(crate) warnings: Vec<String>,
}

/// What an export transaction stamped.
#[derive(Debug, Default)]
pub struct StampOutcome {
    /// The export (segment) sequence number created, if anything changed.
    pub seq: Option<u64>,
    pub rows: usize,
    pub versions: usize,
    pub patients: usize,
    pub warnings: Vec<String>,
    /// A first-export step: the rows of its segment (which is not stored;
    /// see [`crate::db::Db::segment_bytes`]), by (patient, row).
    pub first_export_rows: Vec<((String, RowKey), RowState)>,
}

/// What joining one incoming document did.
#[derive(Debug, Default)]
pub struct ApplyOutcome {
    pub rows_changed: usize,
    pub new_conflicts: usize,
    /// Patients whose files may now be behind the database.
    pub affected: BTreeSet<String>,
    pub warnings: Vec<String>,
    /// Rows kept in the state that the app's table cannot show yet.
    pub parked: usize,
    /// Rows refused because this site purged them, where the file does not
    /// carry their deletion (a site that has not applied it wrote them).
    pub stale_purged: Vec<RowKey>,
    /// What the rows of the document now show differently, by the site
    /// that made each change, in words: a patient's field by its column
    /// ("phone", "deleted", "added"), another table's rows by the table.
    pub changed: BTreeMap<SiteId, BTreeSet<String>>,
}

impl ApplyOutcome {
    fn note(&mut self, mapping: &Mapping, table: &str, site: SiteId, change: history::Change<'_>) {
        let what = match change {
            _ if table != mapping.root.table => table,
            history::Change::Field(column) => column,
            history::Change::Deleted => "deleted",
            history::Change::Restored => "brought back",
            history::Change::Added => "added",
        };
        let said = self.changed.entry(site).or_default();
        if !said.contains(what) {
            said.insert(what.to_owned());
        }
    }
}

pub(super) fn corrupt(tbl: &str, pk: &str) -> DbError {
    DbError::Corrupt(format!("the recorded versions of {tbl}/{pk} are damaged"))
}

pub(crate) fn load_row(
    conn: &Connection,
    tbl: &str,
    pk: &str,
) -> Result<Option<(RowState, Option<String>)>, DbError> {
    Ok(load_stored(conn, tbl, pk)?.map(|(row, patient, _)| (row, patient)))
}

/// [`load_row`] with the stored columns its state was decoded from.
pub(super) fn load_stored(conn: &Connection, tbl: &str, pk: &str) -> Result<Option<LoadedRow>, DbError> {
    let found: Option<(i64, Option<String>, Vec<u8>)> = conn
        .prepare_cached("SELECT cl, patient, state FROM _cs_rows WHERE tbl = ?1 AND pk = ?2")?
        .query_row(params![tbl, pk], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let Some((cl, patient, blob)) = found else { return Ok(None) };
    let row = decode_row(tbl, pk, cl, &blob)?;
    Ok(Some((row, patient, (cl, blob))))
}

/// A stored row: its state, its patient, and its `cl` and blob as stored.
pub(super) type LoadedRow = (RowState, Option<String>, (i64, Vec<u8>));

/// Saves a row's state under `patient`. `before` is the patient its stored
/// state is filed under (`None`: it has no stored state). A row that stays
/// with its patient keeps its patient-index entry untouched: SQLite
/// rewrites an index entry whenever its column is assigned, even the same
/// value, and that was a fifth of the pages an import wrote.
///
/// The patients' rows digests follow: `old` is what the caller took of
/// the stored state before changing the row ([`digests::before_save`]);
/// without it the old patient's digest is dropped.
#[allow(clippy::too_many_arguments)]
pub(super) fn save_row(
    conn: &Connection,
    ctx: &Ctx<'_>,
    tbl: &str,
    pk: &str,
    row: &RowState,
    patient: Option<&str>,
    before: Option<Option<&str>>,
    old: Option<digests::Before>,
) -> Result<(), DbError> {
    let blob = rowblob::encode(&row.fields, &row.deleted);
    let mut saved = false;
    if before == Some(patient) {
        let n = conn
            .prepare_cached("UPDATE _cs_rows SET cl = ?3, state = ?4 WHERE tbl = ?1 AND pk = ?2")?
            .execute(params![tbl, pk, row.cl as i64, blob])?;
        saved = n == 1;
    }
    if !saved {
        conn.prepare_cached(
            "INSERT INTO _cs_rows (tbl, pk, cl, patient, state) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (tbl, pk) DO UPDATE SET cl = excluded.cl, patient = excluded.patient, state = excluded.state",
        )?
        .execute(params![tbl, pk, row.cl as i64, patient, blob])?;
    }
    if ctx.digests {
        digests::after_save(conn, tbl, pk, row, patient, before, old)?;
    }
    Ok(())
}

/// [`digests::before_save`] for a row changed since it was loaded, from
/// its stored columns (`cl` and blob): only when its patient has a digest,
/// and read in place when the blob view takes the blob.
pub(super) fn stored_before(
    conn: &Connection,
    tbl: &str,
    pk: &str,
    patient: Option<&str>,
    (cl, blob): &(i64, Vec<u8>),
) -> Result<Option<digests::Before>, DbError> {
    let Some(digest) = patient.map(|p| digests::get(conn, p)).transpose()?.flatten() else {
        return Ok(None);
    };
    let mut view = RowView::default();
    if view.read(*cl, blob).is_some() {
        return Ok(Some(digests::Before::new(digest, tbl, pk, &view)));
    }
    let row = decode_row(tbl, pk, *cl, blob)?;
    Ok(Some(digests::Before::new(digest, tbl, pk, &row)))
}

/// Inserts the state of a row that has none, its blob already made; false
/// (and nothing written) when it has one.
pub(super) fn insert_new_row(
    conn: &Connection,
    tbl: &str,
    pk: &str,
    cl: u64,
    patient: Option<&str>,
    blob: &[u8],
) -> Result<bool, DbError> {
    let n = conn
        .prepare_cached(
            "INSERT INTO _cs_rows (tbl, pk, cl, patient, state) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (tbl, pk) DO NOTHING",
        )?
        .execute(params![tbl, pk, cl as i64, patient, blob])?;
    Ok(n == 1)
}

/// The patient a row belongs to. Rows of tables this database does not map
/// keep the patient of the document they arrived in.
pub(super) fn patient_of(
    ctx: &Ctx<'_>,
    tbl: &str,
    pk: &str,
    row: &RowState,
    fallback: Option<&str>,
) -> Option<String> {
    patient_in(ctx.mapping, tbl, pk, row, fallback)
}

pub(super) fn patient_in(
    mapping: &Mapping,
    tbl: &str,
    pk: &str,
    row: &RowState,
    fallback: Option<&str>,
) -> Option<String> {
    match mapping.table(tbl) {
        Some((_, TableRole::Root)) => Some(pk.to_owned()),
        Some((_, TableRole::Child { patient_column })) => {
            row.value(patient_column).and_then(Value::as_text).map(str::to_owned)
        }
        None => fallback.map(str::to_owned),
    }
}

pub(super) fn current_row(
    conn: &Connection,
    tbl: &str,
    key: &str,
    pk: &str,
) -> Result<Option<Vec<(String, Value)>>, DbError> {
    let sql = format!("SELECT * FROM {} WHERE {} = ?1", quote(tbl), quote(key));
    let mut stmt = conn.prepare_cached(&sql)?;
    let names: Vec<String> = stmt.column_names().into_iter().map(str::to_owned).collect();
    let row = stmt
        .query_row([pk], |r| {
            (0..names.len())
                .map(|i| Ok((names[i].clone(), from_ref(r.get_ref(i)?))))
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .optional()?;
    Ok(row)
}

/// Turns the app's current row into versions: every column whose value
/// differs from the recorded winner gets a new stamp, and the causal length
/// follows the row's existence. Records the change in `batch`. The stamp
/// takes `edit_ms`, when the app last wrote the row, or, when this site's
/// clock has issued or seen a later stamp since, the next stamp after it
/// (a site's stamps grow with its log, and an edit stamps above what it
/// supersedes).
#[allow(clippy::too_many_arguments)]
pub(crate) fn stamp_row(
    conn: &Connection,
    ctx: &Ctx<'_>,
    clock: &mut HlcClock,
    now_ms: u64,
    edit_ms: u64,
    tbl: &str,
    pk: &str,
    batch: &mut StampBatch,
) -> Result<(), DbError> {
    let Some((key, _)) = ctx.mapping.table(tbl) else { return Ok(()) };
    if !key_is_safe(tbl, pk, batch) {
        return Ok(());
    }
    let current = current_row(conn, tbl, key, pk)?;
    let old = load_row(conn, tbl, pk)?;
    let (old_row, old_patient) = match &old {
        Some((r, p)) => (Some(r), p.clone()),
        None => (None, None),
    };
    let mut row = old_row.cloned().unwrap_or_default();
    if old_row.is_none() && ctx.any_purged {
        // A key purged here, inserted again: its causal length goes on
        // from the purged tombstone's, so every site takes the insert.
        let key = RowKey { table: tbl.to_owned(), pk: pk.to_owned() };
        row.cl = purged_cl(conn, &key)?.unwrap_or(0);
    }
    let mut stamped = RowState::default();
    // One stamp for every column this change touches: they were written
    // together, and a field's versions stay uniquely stamped.
    let mut stamp = None;
    match current {
        Some(columns) => {
            if !row.is_alive() && !is_held(conn, tbl, pk)? {
                row.cl += 1;
                row.deleted = Base::default();
            }
            for (col, value) in columns {
                let base = match row.fields.get(&col) {
                    Some(state) if state.winner().value() == &value => continue,
                    // Everything the field holds was in view of this edit.
                    Some(state) => state.context(),
                    None => Base::default(),
                };
                if let Some(b) = base.latest() {
                    // Keeps base < stamp even if the stored clock was lost.
                    clock.observe(b);
                }
                batch.bytes += 120 + col.len() + value_size(&value) + 49 * base.stamps().len();
                let hlc = match stamp {
                    // A later base than the shared stamp needs a fresh one.
                    Some(h) if base.latest().is_none_or(|b| b < h) => h,
                    _ => {
                        let h = clock.stamp(edit_ms);
                        stamp = Some(h);
                        h
                    }
                };
                let version = FieldVersion::new(value, hlc, base)
                    .expect("a fresh stamp is after every stamp the clock observed");
                stamped.fields.insert(col.clone(), FieldState::single(version.clone()));
                row.fields.insert(col, FieldState::single(version));
                batch.versions += 1;
            }
        }
        // The app deleted a row whose deletion was held: it agrees.
        None if !row.is_alive() => {
            super::held::release(conn, tbl, pk)?;
            return Ok(());
        }
        None => {
            // The delete saw every version the row holds, and carries its
            // own stamp: an edit it did not see is told apart later.
            let mut seen = row.context();
            if let Some(latest) = seen.latest() {
                clock.observe(latest);
            }
            let h = stamp.unwrap_or_else(|| clock.stamp(edit_ms));
            seen.add(h);
            row.cl += 1;
            row.deleted = seen;
            batch.bytes += 49 * row.deleted.stamps().len();
        }
    }
    if old_row == Some(&row) {
        return Ok(());
    }
    stamped.cl = row.cl;
    stamped.deleted = row.deleted.clone();
    let patient = patient_of(ctx, tbl, pk, &row, old_patient.as_deref());
    let before = old_row.map(|_| old_patient.as_deref());
    let old = match old_row {
        Some(old) if ctx.digests => digests::before_save(conn, tbl, pk, old, old_patient.as_deref())?,
        _ => None,
    };
    save_row(conn, ctx, tbl, pk, &row, patient.as_deref(), before, old)?;
    if let Some(old_row) = old_row {
        let key = RowKey { table: tbl.to_owned(), pk: pk.to_owned() };
        // Only the fields this change stamped can show something new.
        let shown_before = history::Before::of(old_row, &stamped);
        history::record(conn, &key, patient.as_deref(), &shown_before, &row, now_ms, &mut |_, _| {})?;
    }
    if has_records(old_row) || has_records(Some(&row)) {
        // An edit made with every concurrent value in view settles them.
        let key = RowKey { table: tbl.to_owned(), pk: pk.to_owned() };
        sync_records(conn, &key, &row, patient.as_deref(), "", now_ms)?;
    }
    batch.bytes += 100 + tbl.len() + pk.len();
    match &patient {
        Some(p) => {
            let slot = (p.clone(), RowKey { table: tbl.to_owned(), pk: pk.to_owned() });
            match batch.rows.get_mut(&slot) {
                Some(existing) => {
                    existing.join_from(&stamped);
                }
                None => {
                    batch.rows.insert(slot, stamped);
                }
            }
        }
        None => batch.warnings.push(no_patient(tbl, pk)),
    }
    batch.patients.extend(old_patient);
    batch.patients.extend(patient);
    Ok(())
}

/// Stamps one field of a live row with a value clinicsync itself observed
/// (a document's body), as an edit that saw `base`: the field keeps every
/// version `base` does not cover, so an edit made without seeing a value
/// becomes a conflict with it. Returns false when the row has no live
/// state (nothing to stamp).
#[allow(clippy::too_many_arguments)]
pub(crate) fn stamp_field(
    conn: &Connection,
    ctx: &Ctx<'_>,
    clock: &mut HlcClock,
    now_ms: u64,
    edit_ms: u64,
    key: &RowKey,
    column: &str,
    value: Value,
    base: Base,
    batch: &mut StampBatch,
) -> Result<bool, DbError> {
    let Some((old_row, patient)) = load_row(conn, &key.table, &key.pk)? else { return Ok(false) };
    if !old_row.is_alive() {
        return Ok(false);
    }
    if let Some(b) = base.latest() {
        clock.observe(b);
    }
    let version = FieldVersion::new(value, clock.stamp(edit_ms), base)
        .expect("a fresh stamp is after every stamp the clock observed");
    let mut row = old_row.clone();
    let joined = match row.fields.get(column) {
        Some(state) => state.join(&FieldState::single(version.clone())),
        None => FieldState::single(version.clone()),
    };
    row.fields.insert(column.to_owned(), joined);
    let old = if ctx.digests {
        digests::before_save(conn, &key.table, &key.pk, &old_row, patient.as_deref())?
    } else {
        None
    };
    save_row(conn, ctx, &key.table, &key.pk, &row, patient.as_deref(), Some(patient.as_deref()), old)?;
    if has_records(Some(&old_row)) || has_records(Some(&row)) {
        sync_records(conn, key, &row, patient.as_deref(), "", now_ms)?;
    }
    let mut stamped = RowState { cl: row.cl, ..RowState::default() };
    stamped.fields.insert(column.to_owned(), FieldState::single(version));
    batch.versions += 1;
    batch.bytes += 220 + key.table.len() + key.pk.len() + column.len();
    add_to_batch(batch, key.clone(), stamped, patient.clone(), patient);
    Ok(true)
}

pub(crate) fn key_is_safe(tbl: &str, pk: &str, batch: &mut StampBatch) -> bool {
    let safe = is_xml_safe(pk);
    if !safe {
        batch.warnings.push(format!(
            "row {tbl}/{pk:?} is not synced: its key contains control characters that no sync file can carry"
        ));
    }
    safe
}

pub(super) fn no_patient(tbl: &str, pk: &str) -> String {
    format!(
        "row {tbl}/{pk} belongs to no patient (its patient column is empty), so it stays on this site until it has one"
    )
}

pub(super) fn value_size(v: &Value) -> usize {
    match v {
        Value::Text(t) => t.len(),
        Value::Blob(b) => b.len() * 4 / 3,
        _ => 24,
    }
}

/// A key as text (`None` for NULL), or the bytes of one no text can carry.
pub(crate) type KeyText = Result<Option<String>, Vec<u8>>;

/// A row's key as the sync carries it, read as `CAST(key AS TEXT),
/// typeof(key)`: the text (`None` for NULL), or the bytes of a key the app
/// stored as a BLOB or as text that is not UTF-8, which no text can find
/// again and no file can carry (such a row is not synced).
pub(crate) fn key_text(text: rusqlite::types::ValueRef<'_>, kind: rusqlite::types::ValueRef<'_>) -> KeyText {
    match text {
        rusqlite::types::ValueRef::Text(t) => match std::str::from_utf8(t) {
            Ok(t) if kind.as_str() != Ok("blob") => Ok(Some(t.to_owned())),
            _ => Err(t.to_vec()),
        },
        // `CAST(… AS TEXT)` gives text or NULL.
        _ => Ok(None),
    }
}

/// Stamps pending rows in capture order until `max_rows` rows or about
/// `max_bytes` of segment are done. Returns true when it stopped at a limit
/// (more may be pending), false when it consumed everything there was.
/// `only`: the rows of that table alone; the others stay pending.
#[allow(clippy::too_many_arguments)]
pub(crate) fn stamp_pending(
    conn: &Connection,
    ctx: &Ctx<'_>,
    clock: &mut HlcClock,
    now_ms: u64,
    max_rows: usize,
    max_bytes: usize,
    only: Option<&str>,
    batch: &mut StampBatch,
) -> Result<bool, DbError> {
    // A key an app stored as a BLOB cannot be found again by its text, so
    // its row is not synced (with a warning), as in the first export. Rows
    // go in the order the app last wrote them, each stamped with the time
    // of that write (never later than now), so the later edit wins.
    type Entry = (i64, Option<String>, rusqlite::types::Value, KeyText, u64);
    let entries: Vec<Entry> = {
        let mut stmt = conn.prepare_cached(
            "SELECT max(id), tbl, pk, CAST(pk AS TEXT), typeof(pk), min(coalesce(max(at_ms), ?2), ?2) AS at
             FROM _cs_pending WHERE ?3 IS NULL OR tbl = ?3
             GROUP BY tbl, pk ORDER BY at, max(id) LIMIT ?1",
        )?;
        stmt.query_map(params![max_rows as i64, now_ms as i64, only], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                key_text(r.get_ref(3)?, r.get_ref(4)?),
                r.get::<_, i64>(5)?.max(0) as u64,
            ))
        })?
        .collect::<rusqlite::Result<_>>()?
    };
    let fetched = entries.len();
    // The rows' states and the app's rows are read ahead while they are
    // stamped in turn: a bulk edit's from the start, a smaller one's once
    // its first rows came from the disk.
    let path = conn.path().filter(|path| !path.is_empty()).map(std::path::Path::new);
    let read_from = |from: usize| {
        let rows = entries[from..]
            .iter()
            .filter_map(|(_, tbl, _, pk, _)| Some((tbl.as_deref()?, pk.as_ref().ok()?.as_deref()?)));
        path.map(|path| read_ahead_rows(path, ctx.mapping, rows))
    };
    let mut read_ahead = if fetched >= READ_AHEAD_FROM { read_from(0) } else { None };
    let probe = DiskProbe::start();
    let mut seen = HashSet::new();
    let mut done = Vec::with_capacity(entries.len());
    for (i, (id, tbl, raw_pk, pk, edit_ms)) in entries.iter().enumerate() {
        if i == PROBED && read_ahead.is_none() && fetched >= PROBED + AHEAD_FEWEST && probe.went_to_disk() {
            read_ahead = read_from(PROBED);
        }
        done.push((*id, tbl.clone(), raw_pk.clone()));
        let pk = match pk {
            Ok(pk) => pk.as_deref(),
            Err(bytes) => {
                batch.warnings.push(not_text_key(tbl.as_deref().unwrap_or("?"), bytes));
                None
            }
        };
        if let (Some(tbl), Some(pk)) = (tbl.as_deref(), pk)
            && seen.insert((tbl.to_owned(), pk.to_owned()))
        {
            stamp_row(conn, ctx, clock, now_ms, *edit_ms, tbl, pk, batch)?;
        }
        if batch.bytes >= max_bytes {
            break;
        }
    }
    // Each stamped row's entries up to the last one read (by the key as
    // stored: an app may store keys of any type).
    let mut forget =
        conn.prepare_cached("DELETE FROM _cs_pending WHERE tbl IS ?1 AND pk IS ?2 AND id <= ?3")?;
    for (id, tbl, raw_pk) in done {
        forget.execute(params![tbl, raw_pk, id])?;
    }
    Ok(batch.bytes >= max_bytes || fetched == max_rows)
}

/// Pending rows from which [`stamp_pending`] reads ahead from the start:
/// for fewer the other threads cost more than they save, unless the rows
/// come from the disk.
const READ_AHEAD_FROM: usize = 256;

/// Rows [`stamp_pending`] stamps before it asks whether they came from the
/// disk.
const PROBED: usize = 8;

/// Reads these rows' states and the app's rows, `(table, key)` in the
/// order they will be read, on other threads and connections (see
/// `read_ahead.rs`); a table this site does not replicate is left out.
pub(super) fn read_ahead_rows<'r>(
    path: &std::path::Path,
    mapping: &Mapping,
    rows: impl Iterator<Item = (&'r str, &'r str)>,
) -> read_ahead::ReadAhead {
    let rows = rows
        .filter_map(|(tbl, pk)| {
            let (key, _) = mapping.table(tbl)?;
            Some((tbl.to_owned(), key.to_owned(), pk.to_owned()))
        })
        .collect();
    read_ahead::spawn(path, rows, read_rows_ahead)
}

/// Reads each row's state and the app's row, as [`stamp_row`] and
/// [`apply_doc`] will, and where its patient's history and digest change
/// (see `read_ahead.rs`): `(table, key column, key)`.
fn read_rows_ahead(conn: &Connection, rows: Vec<(String, String, String)>) -> rusqlite::Result<u64> {
    let mut read = 0;
    let mut patients = HashSet::new();
    for (tbl, key, pk) in rows {
        let patient: Option<String> = conn
            .prepare_cached("SELECT patient, length(state) FROM _cs_rows WHERE tbl = ?1 AND pk = ?2")?
            .query_row(params![tbl, pk], |r| r.get(0))
            .optional()?
            .flatten();
        if let Some(patient) = patient
            && patients.insert(patient.clone())
        {
            history::read_ahead(conn, &patient)?;
            digests::read_ahead(conn, &patient)?;
        }
        let sql = format!("SELECT * FROM {} WHERE {} = ?1", quote(&tbl), quote(&key));
        if conn.prepare_cached(&sql)?.query_row([&pk], |_| Ok(())).optional()?.is_some() {
            read += 1;
        }
    }
    Ok(read)
}

/// Stamps one row now if the app changed it since the last export, so an
/// incoming version can never overwrite an unseen local edit.
pub(crate) fn stamp_if_pending(
    conn: &Connection,
    ctx: &Ctx<'_>,
    clock: &mut HlcClock,
    now_ms: u64,
    key: &RowKey,
    batch: &mut StampBatch,
) -> Result<(), DbError> {
    let pending: Option<i64> = conn
        .prepare_cached(
            "SELECT min(coalesce(max(at_ms), ?3), ?3) FROM _cs_pending WHERE tbl = ?1 AND pk = ?2 HAVING count(*) > 0",
        )?
        .query_row(params![key.table, key.pk, now_ms as i64], |r| r.get(0))
        .optional()?;
    if let Some(edit_ms) = pending {
        stamp_row(conn, ctx, clock, now_ms, edit_ms.max(0) as u64, &key.table, &key.pk, batch)?;
        conn.prepare_cached("DELETE FROM _cs_pending WHERE tbl = ?1 AND pk = ?2")?
            .execute(params![key.table, key.pk])?;
    }
    Ok(())
}

/// Joins an incoming document's rows into the state and projects every
/// changed row onto the app's tables. The caller wraps it in a savepoint,
/// or drops the whole transaction on error. Rows given owned are joined
/// without a copy.
pub(crate) fn apply_doc<'r>(
    conn: &Connection,
    ctx: &Ctx<'_>,
    now_ms: u64,
    doc_patient: &str,
    rows: impl Iterator<Item = (Cow<'r, RowKey>, Cow<'r, RowState>)>,
    source: &str,
) -> Result<ApplyOutcome, DbError> {
    let mut out = ApplyOutcome::default();
    for (key, incoming) in rows {
        let key = key.as_ref();
        let purged = if ctx.any_purged { purged_cl(conn, key)? } else { None };
        if let Some(cl) = purged
            && incoming.cl <= cl
        {
            // A copy of a row purged here: it was deleted, and stays so. (An
            // edit made without seeing the delete loses to it, as before the
            // purge; the site that made it keeps it as a record.)
            if incoming.cl < cl {
                out.stale_purged.push(key.clone());
            }
            continue;
        }
        let (row, had_records, before, stored, shown_before) = match load_stored(conn, &key.table, &key.pk)? {
            Some((mut row, old_patient, stored)) => {
                if let Some((column, stamp)) = row.clash_with(&incoming) {
                    return Err(DbError::StampClash {
                        table: key.table.clone(),
                        pk: key.pk.clone(),
                        column: column.to_owned(),
                        stamp: stamp.encode(),
                    });
                }
                let had_records = has_records(Some(&row));
                let shown_before = history::Before::of(&row, &incoming);
                if !row.join_from(&incoming) {
                    continue;
                }
                (row, had_records, Some(old_patient), Some(stored), Some(shown_before))
            }
            // A row new here is what came, as a join into nothing would
            // make it (which changes nothing only when nothing came).
            None => {
                if incoming.cl == 0 && incoming.fields.is_empty() && incoming.deleted.is_empty() {
                    continue;
                }
                (incoming.into_owned(), false, None, None, None)
            }
        };
        let stored_under = before.as_ref().map(|p| p.as_deref());
        let fallback = stored_under.flatten().unwrap_or(doc_patient);
        let patient = patient_of(ctx, &key.table, &key.pk, &row, Some(fallback));
        // Hashed only now that the row changes (a full scan joins every
        // file, and most change nothing), from its state as stored.
        let old = match (stored_under, &stored) {
            (Some(was), Some(stored)) if ctx.digests => {
                stored_before(conn, &key.table, &key.pk, was, stored)?
            }
            _ => None,
        };
        save_row(conn, ctx, &key.table, &key.pk, &row, patient.as_deref(), stored_under, old)?;
        let mut note = |site, change: history::Change<'_>| out.note(ctx.mapping, &key.table, site, change);
        match &shown_before {
            Some(shown_before) => {
                history::record(conn, key, patient.as_deref(), shown_before, &row, now_ms, &mut note)?
            }
            None if row.is_alive() => {
                if let Some(h) = row.fields.values().map(|f| f.winner().hlc()).max() {
                    note(h.site(), history::Change::Added);
                }
            }
            None => {}
        }
        // A row purged here that lives again (inserted anew past its
        // tombstone) may have records from before the purge: they are
        // settled by what it is now (the purge's own stay for a person).
        if had_records || has_records(Some(&row)) || purged.is_some() {
            out.new_conflicts += sync_records(conn, key, &row, patient.as_deref(), source, now_ms)?;
        }
        match project_or_park(conn, ctx, key, &row)? {
            Ok(warnings) => out.warnings.extend(warnings),
            Err(_) => out.parked += 1,
        }
        out.rows_changed += 1;
        out.affected.extend(before.flatten());
        out.affected.extend(patient);
    }
    Ok(out)
}

/// Puts a locally made change of one row into the transaction's segment.
pub(super) fn add_to_batch(
    batch: &mut StampBatch,
    key: RowKey,
    stamped: RowState,
    old_patient: Option<String>,
    patient: Option<String>,
) {
    if let Some(p) = &patient {
        match batch.rows.get_mut(&(p.clone(), key.clone())) {
            Some(existing) => {
                existing.join_from(&stamped);
            }
            None => {
                batch.rows.insert((p.clone(), key), stamped);
            }
        }
    }
    batch.patients.extend(old_patient);
    batch.patients.extend(patient);
}

/// The warning for a row whose key the sync cannot carry.
pub(crate) fn not_text_key(table: &str, key: &[u8]) -> String {
    format!(
        "a row of {table} is not synced: its key {:?} is stored as bytes, not text; store it as text in the app",
        String::from_utf8_lossy(key)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;

    #[test]
    fn a_bulk_edit_is_stamped_whole_while_its_rows_are_read_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::init_for_test(dir.path(), None);
        let many = READ_AHEAD_FROM + 44;
        for i in 0..many {
            db.conn()
                .execute("INSERT INTO patients (id, family_name) VALUES (?1, 'Ames')", [format!("p{i:04}")])
                .unwrap();
        }
        let rows = |db: &Db| -> (i64, i64) {
            let stored = db.conn().query_row("SELECT count(*) FROM _cs_rows", [], |r| r.get(0)).unwrap();
            let pending = db.conn().query_row("SELECT count(*) FROM _cs_pending", [], |r| r.get(0)).unwrap();
            (stored, pending)
        };
        assert_eq!(rows(&db), (0, many as i64));
        let mut w = db.begin_write(10_000).unwrap();
        assert!(!w.stamp_pending(usize::MAX, usize::MAX).unwrap());
        w.commit().unwrap();
        assert_eq!(rows(&db), (many as i64, 0), "every row stamped, nothing left pending");
        // What the threads read: the rows that are there, by table and key.
        let asked = ["p0000", "p0001", "absent"]
            .map(|pk| ("patients".to_owned(), "id".to_owned(), pk.to_owned()))
            .to_vec();
        assert_eq!(read_rows_ahead(db.conn(), asked).unwrap(), 2);
        // A transaction's read-ahead (applying a segment whose first rows
        // came from the disk) reads them on its own threads; a table this
        // site does not replicate is not asked for.
        let w = db.begin_write(20_000).unwrap();
        let key = |table: &str, pk: &str| RowKey { table: table.into(), pk: pk.into() };
        let keys = [
            key("patients", "p0000"),
            key("patients", "p0001"),
            key("patients", "absent"),
            key("other", "p0002"),
        ];
        assert_eq!(w.read_ahead(&keys).expect("a database file").finish(), 2);
        drop(w);
    }
}
