//! The replicated state in the database: loading and saving row states,
//! turning the app's pending changes into stamped versions (collected into
//! the transaction's change-log segment), joining incoming documents, and
//! projecting the result onto the app's tables.

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashSet};

use rusqlite::{Connection, OptionalExtension, params};

use super::DbError;
use super::digests;
use super::mapping::{Mapping, TableRole};
use super::rowblob::{self, RowView};
use super::schema::quote;
use super::values::{Sql, from_ref};
use crate::model::{
    Base, FieldState, FieldVersion, Hlc, HlcClock, PatientDoc, PatientId, RowKey, RowState, SiteId, Value,
};
use crate::xmlstore::{PatientWriter, Segment, encode_patient, encode_segment, is_xml_safe};

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
}

fn corrupt(tbl: &str, pk: &str) -> DbError {
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
fn load_stored(conn: &Connection, tbl: &str, pk: &str) -> Result<Option<LoadedRow>, DbError> {
    let found: Option<(i64, Option<String>, Vec<u8>)> = conn
        .prepare_cached("SELECT cl, patient, state FROM _cs_rows WHERE tbl = ?1 AND pk = ?2")?
        .query_row(params![tbl, pk], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let Some((cl, patient, blob)) = found else { return Ok(None) };
    let row = decode_row(tbl, pk, cl, &blob)?;
    Ok(Some((row, patient, (cl, blob))))
}

/// A stored row: its state, its patient, and its `cl` and blob as stored.
type LoadedRow = (RowState, Option<String>, (i64, Vec<u8>));

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
fn save_row(
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
fn stored_before(
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
fn insert_new_row(
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
fn patient_of(ctx: &Ctx<'_>, tbl: &str, pk: &str, row: &RowState, fallback: Option<&str>) -> Option<String> {
    patient_in(ctx.mapping, tbl, pk, row, fallback)
}

fn patient_in(
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

fn current_row(
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
            conn.prepare_cached("DELETE FROM _cs_held WHERE tbl = ?1 AND pk = ?2")?
                .execute(params![tbl, pk])?;
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

pub(crate) fn key_is_safe(tbl: &str, pk: &str, batch: &mut StampBatch) -> bool {
    let safe = is_xml_safe(pk);
    if !safe {
        batch.warnings.push(format!(
            "row {tbl}/{pk:?} is not synced: its key contains control characters that no sync file can carry"
        ));
    }
    safe
}

/// A row of the first export as read from its table: a row with no
/// recorded versions, so every column gets a version, all with one stamp.
pub(crate) struct NewRow {
    pub(crate) pk: String,
    /// 1, or after a purge of the key, on from the purged tombstone's.
    pub(crate) cl: u64,
    pub(crate) stamp: Hlc,
    /// The row's columns, in the order of the table's column names.
    pub(crate) values: Vec<Value>,
}

/// A first-export row's state and its blob, made on any thread.
pub(crate) struct MadeRow {
    pk: String,
    patient: Option<String>,
    row: RowState,
    blob: Vec<u8>,
}

/// Makes a first-export row's state: needs no database, so the other core
/// does it while this one reads and inserts.
pub(crate) fn make_new_row(mapping: &Mapping, tbl: &str, names: &[String], new: NewRow) -> MadeRow {
    let mut row = RowState { cl: new.cl, ..RowState::default() };
    for (col, value) in names.iter().zip(new.values) {
        let version =
            FieldVersion::new(value, new.stamp, Base::default()).expect("a first version has no base");
        row.fields.insert(col.clone(), FieldState::single(version));
    }
    let patient = patient_in(mapping, tbl, &new.pk, &row, None);
    let blob = rowblob::encode(&row.fields, &row.deleted);
    MadeRow { pk: new.pk, patient, row, blob }
}

/// What a first-export row adds to its step's segment, by the estimate the
/// step's size limit counts.
pub(crate) fn new_row_bytes(tbl: &str, names: &[String], new: &NewRow) -> usize {
    let fields: usize = names.iter().zip(&new.values).map(|(c, v)| 120 + c.len() + value_size(v)).sum();
    fields + 100 + tbl.len() + new.pk.len()
}

/// Inserts a first-export row's state. Should the row have versions after
/// all, it is queued for the ordinary path instead.
pub(crate) fn insert_made_row(
    conn: &Connection,
    tbl: &str,
    made: MadeRow,
    batch: &mut StampBatch,
) -> Result<(), DbError> {
    let MadeRow { pk, patient, row, blob } = made;
    if !insert_new_row(conn, tbl, &pk, row.cl, patient.as_deref(), &blob)? {
        conn.prepare_cached("INSERT INTO _cs_pending (tbl, pk) VALUES (?1, ?2)")?
            .execute(params![tbl, pk])?;
        return Ok(());
    }
    match patient {
        Some(p) => batch.range_rows.push(((p, RowKey { table: tbl.to_owned(), pk }), row)),
        None => batch.warnings.push(no_patient(tbl, &pk)),
    }
    Ok(())
}

/// The cl a new row of this key starts at: 1, or after a purge of the key
/// (inserted again), on from the purged tombstone's, so every site takes
/// the insert.
pub(crate) fn new_row_cl(conn: &Connection, ctx: &Ctx<'_>, tbl: &str, pk: &str) -> Result<u64, DbError> {
    if !ctx.any_purged {
        return Ok(1);
    }
    let key = RowKey { table: tbl.to_owned(), pk: pk.to_owned() };
    Ok(purged_cl(conn, &key)?.unwrap_or(0) + 1)
}

fn no_patient(tbl: &str, pk: &str) -> String {
    format!(
        "row {tbl}/{pk} belongs to no patient (its patient column is empty), so it stays on this site until it has one"
    )
}

fn value_size(v: &Value) -> usize {
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
pub(crate) fn stamp_pending(
    conn: &Connection,
    ctx: &Ctx<'_>,
    clock: &mut HlcClock,
    now_ms: u64,
    max_rows: usize,
    max_bytes: usize,
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
             FROM _cs_pending GROUP BY tbl, pk ORDER BY at, max(id) LIMIT ?1",
        )?;
        stmt.query_map(params![max_rows as i64, now_ms as i64], |r| {
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
    let mut seen = HashSet::new();
    let mut done = Vec::with_capacity(entries.len());
    for (id, tbl, raw_pk, pk, edit_ms) in entries {
        done.push((id, tbl.clone(), raw_pk));
        let pk = match pk {
            Ok(pk) => pk,
            Err(bytes) => {
                batch.warnings.push(super::bulk::not_text_key(tbl.as_deref().unwrap_or("?"), &bytes));
                None
            }
        };
        if let (Some(tbl), Some(pk)) = (tbl, pk)
            && seen.insert((tbl.clone(), pk.clone()))
        {
            stamp_row(conn, ctx, clock, now_ms, edit_ms, &tbl, &pk, batch)?;
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

/// Turns a transaction's stamps into an outbox entry with its segment.
pub(crate) fn finish_batch(
    conn: &Connection,
    site: SiteId,
    now_ms: u64,
    batch: StampBatch,
) -> Result<StampOutcome, DbError> {
    let mut out = StampOutcome {
        rows: batch.rows.len() + batch.range_rows.len(),
        versions: batch.versions,
        patients: batch.patients.len(),
        warnings: batch.warnings,
        seq: None,
        first_export_rows: Vec::new(),
    };
    if let Some(from) = batch.range_from
        && !batch.range_rows.is_empty()
    {
        // Made from these rows now, or from the state after a crash (see
        // `range_segment`): the segment's bytes never pass through the
        // database.
        let seq: i64 =
            conn.query_row("SELECT coalesce(max(seq), 0) + 1 FROM _cs_outbox", [], |r| r.get(0))?;
        let to: i64 = conn.query_row("SELECT coalesce(max(rowid), 0) FROM _cs_rows", [], |r| r.get(0))?;
        out.patients = batch.range_rows.iter().map(|((p, _), _)| p).collect::<HashSet<_>>().len();
        out.first_export_rows = batch.range_rows;
        conn.prepare_cached(
            "INSERT INTO _cs_outbox (seq, created_ms, rows, from_row, to_row) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![seq, now_ms as i64, out.rows as i64, from, to])?;
        out.seq = Some(seq as u64);
        return Ok(out);
    }
    if batch.rows.is_empty() && batch.patients.is_empty() {
        return Ok(out);
    }
    let seq: i64 = conn.query_row("SELECT coalesce(max(seq), 0) + 1 FROM _cs_outbox", [], |r| r.get(0))?;
    let segment = encode_segment(&Segment { site, seq: seq as u64, created_ms: now_ms, rows: batch.rows });
    conn.prepare_cached("INSERT INTO _cs_outbox (seq, created_ms, segment, rows) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![seq, now_ms as i64, segment, out.rows as i64])?;
    let mut insert = conn.prepare_cached("INSERT INTO _cs_outbox_patients (seq, patient) VALUES (?1, ?2)")?;
    for p in &batch.patients {
        insert.execute(params![seq, p])?;
    }
    out.seq = Some(seq as u64);
    Ok(out)
}

/// The segment of a first-export step, made from the state rows it
/// inserted. Until it is in the folder nothing else writes the state, so
/// it is the same bytes every time.
pub(crate) fn range_segment(
    conn: &Connection,
    site: SiteId,
    seq: u64,
    created_ms: u64,
    (from, to): (i64, i64),
) -> Result<Vec<u8>, DbError> {
    let mut rows = BTreeMap::new();
    let mut stmt = conn.prepare_cached(
        "SELECT tbl, pk, cl, patient, state FROM _cs_rows WHERE rowid > ?1 AND rowid <= ?2 AND patient IS NOT NULL",
    )?;
    let mut found = stmt.query([from, to])?;
    while let Some(r) = found.next()? {
        let key = RowKey { table: r.get(0)?, pk: r.get(1)? };
        let patient: String = r.get(3)?;
        let state = decode_state(&key, r.get(2)?, r.get_ref(4)?)?;
        rows.insert((patient, key), state);
    }
    Ok(encode_segment(&Segment { site, seq, created_ms, rows }))
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
        if ctx.any_purged
            && let Some(cl) = purged_cl(conn, key)?
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
        let (row, had_records, before, stored) = match load_stored(conn, &key.table, &key.pk)? {
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
                if !row.join_from(&incoming) {
                    continue;
                }
                (row, had_records, Some(old_patient), Some(stored))
            }
            // A row new here is what came, as a join into nothing would
            // make it (which changes nothing only when nothing came).
            None => {
                if incoming.cl == 0 && incoming.fields.is_empty() && incoming.deleted.is_empty() {
                    continue;
                }
                (incoming.into_owned(), false, None, None)
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
        if had_records || has_records(Some(&row)) {
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

/// Projects a row, or parks it when the app's table refuses what is known
/// of it so far (a NOT NULL or CHECK constraint, typically a row whose
/// other fields are still on their way). The state keeps the row either
/// way. `Err(reason)` means parked.
pub(crate) fn project_or_park(
    conn: &Connection,
    ctx: &Ctx<'_>,
    key: &RowKey,
    row: &RowState,
) -> Result<Result<Vec<String>, String>, DbError> {
    // No savepoint needed: a statement that fails a constraint is rolled
    // back on its own (SQLite's default ABORT), the transaction stays.
    match project(conn, ctx, key, row) {
        Ok(warnings) => {
            if ctx.any_parked.get() {
                conn.prepare_cached("DELETE FROM _cs_unprojected WHERE tbl = ?1 AND pk = ?2")?
                    .execute(params![key.table, key.pk])?;
            }
            Ok(Ok(warnings))
        }
        Err(DbError::Sql(rusqlite::Error::SqliteFailure(e, message)))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            let reason = message.unwrap_or_else(|| e.to_string());
            conn.prepare_cached(
                "INSERT INTO _cs_unprojected (tbl, pk, reason) VALUES (?1, ?2, ?3)
                 ON CONFLICT (tbl, pk) DO UPDATE SET reason = excluded.reason",
            )?
            .execute(params![key.table, key.pk, reason])?;
            ctx.any_parked.set(true);
            Ok(Err(reason))
        }
        Err(e) => Err(e),
    }
}

/// Tries again to show every parked row; returns those still parked with
/// the reason.
pub(crate) fn retry_parked(conn: &Connection, ctx: &Ctx<'_>) -> Result<Vec<(RowKey, String)>, DbError> {
    let parked: Vec<RowKey> = {
        let mut stmt = conn.prepare("SELECT tbl, pk FROM _cs_unprojected ORDER BY tbl, pk")?;
        stmt.query_map([], |r| Ok(RowKey { table: r.get(0)?, pk: r.get(1)? }))?
            .collect::<rusqlite::Result<_>>()?
    };
    let mut still = Vec::new();
    for key in parked {
        let row = load_row(conn, &key.table, &key.pk)?.map(|(r, _)| r).unwrap_or_default();
        if let Err(reason) = project_or_park(conn, ctx, &key, &row)? {
            still.push((key, reason));
        }
    }
    Ok(still)
}

/// Makes the app's table show a row's state: the winning value of every
/// column the table has, or no row at all when the row is deleted.
fn project(conn: &Connection, ctx: &Ctx<'_>, key: &RowKey, row: &RowState) -> Result<Vec<String>, DbError> {
    let Some((key_col, _)) = ctx.mapping.table(&key.table) else { return Ok(Vec::new()) };
    let t = quote(&key.table);
    if !row.is_alive() {
        if ctx.hold_deletes && hold_delete(conn, ctx, key, row)? {
            return Ok(Vec::new());
        }
        conn.prepare_cached(&format!("DELETE FROM {t} WHERE {} = ?1", quote(key_col)))?.execute([&key.pk])?;
        return Ok(Vec::new());
    }
    let columns = ctx.columns.get(&key.table).map(Vec::as_slice).unwrap_or_default();
    let key_value = Value::Text(key.pk.clone());
    let mut present = Vec::with_capacity(columns.len());
    let mut values: Vec<Sql<'_>> = Vec::with_capacity(columns.len());
    for c in columns {
        // The key column always holds the row's key, whatever a file says.
        let value = if c == key_col { Some(&key_value) } else { row.value(c) };
        present.push(value.is_some());
        if let Some(v) = value {
            values.push(Sql(v));
        }
    }
    let mut warnings = Vec::new();
    if row.fields.len() > values.len().saturating_sub(1) {
        for c in row.fields.keys().filter(|c| !columns.contains(c)) {
            warnings.push(format!(
                "column {c} of table {} comes from another site but this database has no such column; clinicsync keeps its value and passes it on",
                key.table
            ));
        }
    }
    let sql = upsert_sql(&key.table, key_col, columns, &present);
    conn.prepare_cached(&sql)?.execute(rusqlite::params_from_iter(values.iter()))?;
    Ok(warnings)
}

/// Upsert statements by table, then by which columns are present.
type UpsertCache = std::collections::HashMap<String, std::collections::HashMap<Vec<bool>, std::rc::Rc<str>>>;

thread_local! {
    /// A row usually has every column, so the statement text is built once
    /// per table and shape, not once per row.
    static UPSERTS: std::cell::RefCell<UpsertCache> = std::cell::RefCell::new(UpsertCache::new());
}

fn upsert_sql(table: &str, key_col: &str, columns: &[String], present: &[bool]) -> std::rc::Rc<str> {
    UPSERTS.with(|cache| {
        let mut cache = cache.borrow_mut();
        // Looked up by reference: the hot path allocates nothing.
        if let Some(sql) = cache.get(table).and_then(|shapes| shapes.get(present)) {
            return sql.clone();
        }
        let names: Vec<String> =
            columns.iter().zip(present).filter(|(_, p)| **p).map(|(c, _)| quote(c)).collect();
        let placeholders: Vec<String> = (1..=names.len()).map(|i| format!("?{i}")).collect();
        let key = quote(key_col);
        let updates: Vec<String> =
            names.iter().filter(|n| **n != key).map(|n| format!("{n} = excluded.{n}")).collect();
        let on_conflict = if updates.is_empty() {
            "DO NOTHING".to_owned()
        } else {
            format!("DO UPDATE SET {}", updates.join(", "))
        };
        let sql: std::rc::Rc<str> = format!(
            "INSERT INTO {} ({}) VALUES ({}) ON CONFLICT ({key}) {on_conflict}",
            quote(table),
            names.join(", "),
            placeholders.join(", "),
        )
        .into();
        cache.entry(table.to_owned()).or_default().insert(present.to_vec(), sql.clone());
        sql
    })
}

/// Builds the document of one patient from the state: its root row and
/// every row whose patient column points at it, deleted rows included.
/// One patient's rows as stored; [`StoredPatient::decode`] checks and
/// decodes them, on any thread.
#[derive(Clone, Debug)]
pub struct StoredPatient {
    pub patient: String,
    rows: Vec<(RowKey, i64, Vec<u8>)>,
}

impl StoredPatient {
    /// The patient's document; an error names a damaged row.
    pub fn decode(self) -> Result<PatientDoc, DbError> {
        let mut doc = PatientDoc::new(PatientId(self.patient));
        for (key, cl, blob) in self.rows {
            let state = decode_state(&key, cl, rusqlite::types::ValueRef::Blob(&blob))?;
            doc.rows.insert(key, state);
        }
        Ok(doc)
    }

    /// The patient's file, the same bytes as `encode_patient` of
    /// [`Self::decode`] (or its error): written from the stored rows in
    /// place where each is one the blob view takes (`rowblob::RowView`),
    /// decoded where not.
    pub fn encode(self) -> Result<Vec<u8>, DbError> {
        match self.encode_in_place() {
            Some(bytes) => Ok(bytes),
            None => Ok(encode_patient(&self.decode()?)),
        }
    }

    fn encode_in_place(&self) -> Option<Vec<u8>> {
        let mut rows: Vec<&(RowKey, i64, Vec<u8>)> = self.rows.iter().collect();
        rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        if rows.windows(2).any(|w| w[0].0 == w[1].0) {
            return None;
        }
        let mut writer = PatientWriter::new(&self.patient, rows.len());
        let mut view = RowView::default();
        for (key, cl, blob) in rows {
            view.read(*cl, blob)?;
            writer.row(&key.table, &key.pk, &view);
        }
        Some(writer.finish())
    }
}

/// Groups `_cs_rows` rows (patient, tbl, pk, cl, state) ordered by
/// patient into each patient's stored rows.
pub(crate) fn collect_stored(mut rows: rusqlite::Rows<'_>) -> Result<Vec<StoredPatient>, DbError> {
    let mut patients: Vec<StoredPatient> = Vec::new();
    while let Some(r) = rows.next()? {
        let patient = r.get_ref(0)?.as_str().map_err(|e| DbError::Corrupt(e.to_string()))?;
        if patients.last().is_none_or(|p| p.patient != patient) {
            patients.push(StoredPatient { patient: patient.to_owned(), rows: Vec::with_capacity(24) });
        }
        let key = RowKey { table: r.get(1)?, pk: r.get(2)? };
        let cl: i64 = r.get(3)?;
        let rusqlite::types::ValueRef::Blob(blob) = r.get_ref(4)? else {
            return Err(corrupt(&key.table, &key.pk));
        };
        let blob = blob.to_vec();
        patients.last_mut().expect("pushed above").rows.push((key, cl, blob));
    }
    Ok(patients)
}

/// A patient's document and its file's bytes, or why the file would be
/// beyond `limits` (every reader would refuse it). Memory stays bounded
/// whatever the state holds: the rows are counted first, then the file is
/// written from the stored rows in place, and the document is decoded only
/// from a patient within the limits. (A state blob is never larger than
/// the same row in a file, so more blob bytes than a file may hold means
/// the file would be over.)
pub(crate) fn patient_for_file(
    conn: &Connection,
    patient: &str,
    limits: &crate::xmlstore::Limits,
) -> Result<Result<(PatientDoc, Vec<u8>), String>, DbError> {
    let (rows, blob_bytes): (i64, i64) = conn
        .prepare_cached("SELECT count(*), coalesce(sum(length(state)), 0) FROM _cs_rows WHERE patient = ?1")?
        .query_row([patient], |r| Ok((r.get(0)?, r.get(1)?)))?;
    if rows as u64 > limits.max_rows as u64 {
        return Ok(Err(format!(
            "it would hold {rows} rows, over the {} every clinicsync reads",
            limits.max_rows
        )));
    }
    if blob_bytes as u64 > limits.max_file_bytes {
        return Ok(Err(format!(
            "it would be more than {blob_bytes} bytes, over the {}-byte limit every clinicsync reads",
            limits.max_file_bytes
        )));
    }
    let mut stmt =
        conn.prepare_cached("SELECT patient, tbl, pk, cl, state FROM _cs_rows WHERE patient = ?1")?;
    let Some(stored) = collect_stored(stmt.query([patient])?)?.pop() else {
        let doc = PatientDoc::new(PatientId(patient.to_owned()));
        let bytes = encode_patient(&doc);
        return Ok(Ok((doc, bytes)));
    };
    let bytes = match stored.encode_in_place() {
        Some(bytes) => bytes,
        None => encode_patient(&stored.clone().decode()?),
    };
    if let Some(why) = limits.refusal(&bytes) {
        return Ok(Err(why));
    }
    Ok(Ok((stored.decode()?, bytes)))
}

/// These patients' rows as stored (a patient the state has no row of is
/// left out), in patient order.
pub(crate) fn stored_patients(conn: &Connection, patients: &[&str]) -> Result<Vec<StoredPatient>, DbError> {
    let list = serde_json::to_string(patients).expect("strings serialise");
    let mut stmt = conn.prepare_cached(
        "SELECT patient, tbl, pk, cl, state FROM _cs_rows
         WHERE patient IN (SELECT value FROM json_each(?1)) ORDER BY patient",
    )?;
    collect_stored(stmt.query([list])?)
}

/// A row's state from its `_cs_rows` columns.
pub(crate) fn decode_state(
    key: &RowKey,
    cl: i64,
    blob: rusqlite::types::ValueRef<'_>,
) -> Result<RowState, DbError> {
    let blob = blob.as_blob().map_err(|_| corrupt(&key.table, &key.pk))?;
    decode_row(&key.table, &key.pk, cl, blob)
}

fn decode_row(tbl: &str, pk: &str, cl: i64, blob: &[u8]) -> Result<RowState, DbError> {
    let (fields, deleted) = rowblob::decode(blob).ok_or_else(|| corrupt(tbl, pk))?;
    Ok(RowState { cl: cl as u64, fields, deleted })
}

pub(crate) fn doc_for_patient(conn: &Connection, patient: &str) -> Result<PatientDoc, DbError> {
    let mut stmt =
        conn.prepare_cached("SELECT patient, tbl, pk, cl, state FROM _cs_rows WHERE patient = ?1")?;
    match collect_stored(stmt.query([patient])?)?.pop() {
        Some(stored) => stored.decode(),
        None => Ok(PatientDoc::new(PatientId(patient.to_owned()))),
    }
}

/// Which value a person keeps when settling a conflict record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// The value the database shows now.
    Winner,
    /// The value that lost.
    Loser,
}

/// What settling a conflict record did.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub id: i64,
    pub table: String,
    pub pk: String,
    pub column: String,
    /// The value the field has now, everywhere once it has synced.
    pub value: Value,
}

/// Settles conflict record `id` with a new edit of the field whose base is
/// every concurrent version: it supersedes them all here and, once synced,
/// at every site, where the records close the same way.
pub(crate) fn resolve_conflict(
    conn: &Connection,
    ctx: &Ctx<'_>,
    clock: &mut HlcClock,
    now_ms: u64,
    id: i64,
    keep: Keep,
    batch: &mut StampBatch,
) -> Result<Resolved, DbError> {
    let record: Option<(String, String, String, String, String, String)> = conn
        .query_row("SELECT tbl, pk, col, hlc, status, kind FROM _cs_conflicts WHERE id = ?1", [id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
        })
        .optional()?;
    let Some((tbl, pk, col, hlc, status, kind)) = record else { return Err(DbError::NoSuchConflict(id)) };
    if status != "open" {
        return Err(DbError::ConflictSettled { id, how: "it was already resolved".into() });
    }
    let key = RowKey { table: tbl.clone(), pk: pk.clone() };
    stamp_if_pending(conn, ctx, clock, now_ms, &key, batch)?;
    let Some((mut row, old_patient)) = load_row(conn, &tbl, &pk)? else {
        if kind != "deleted" {
            return Err(DbError::Corrupt(format!(
                "conflict #{id} names {tbl}/{pk}, which has no recorded versions"
            )));
        }
        // The row was deleted and purged everywhere: the delete can be
        // accepted; the edit cannot travel any more.
        return match keep {
            Keep::Winner => {
                conn.execute(
                    "UPDATE _cs_conflicts SET status = 'resolved', resolved_ms = ?2 WHERE id = ?1",
                    params![id, now_ms as i64],
                )?;
                Ok(Resolved { id, table: tbl, pk, column: col, value: Value::Null })
            }
            Keep::Loser => Err(DbError::ConflictSettled {
                id,
                how: format!(
                    "{tbl}/{pk} was deleted and purged at every site; enter the value again in the app if it is still needed, then resolve with --keep winner"
                ),
            }),
        };
    };
    if kind == "deleted" {
        return resolve_delete(
            conn,
            ctx,
            clock,
            now_ms,
            id,
            keep,
            (key, row, old_patient),
            &col,
            &hlc,
            batch,
        );
    }
    if !row.is_alive() {
        return Err(DbError::ConflictSettled { id, how: format!("{tbl}/{pk} has been deleted") });
    }
    let Some(state) = row.fields.get(&col) else {
        return Err(DbError::Corrupt(format!(
            "conflict #{id} names a field {col} that {tbl}/{pk} does not have"
        )));
    };
    let Some(loser) = state.losers().iter().find(|v| v.hlc().encode() == hlc) else {
        // A later edit (here, or synced from another site) already settled it.
        sync_records(conn, &key, &row, old_patient.as_deref(), "", now_ms)?;
        return Err(DbError::ConflictSettled { id, how: "a later edit of the field settled it".into() });
    };
    let value = match keep {
        Keep::Winner => state.winner().value().clone(),
        Keep::Loser => loser.value().clone(),
    };
    let version = settling_version(clock, now_ms, state, value.clone());
    row.fields.insert(col.clone(), FieldState::single(version.clone()));
    let patient = patient_of(ctx, &tbl, &pk, &row, old_patient.as_deref());
    save_row(conn, ctx, &tbl, &pk, &row, patient.as_deref(), Some(old_patient.as_deref()), None)?;
    sync_records(conn, &key, &row, patient.as_deref(), "", now_ms)?;
    if let Err(reason) = project_or_park(conn, ctx, &key, &row)? {
        return Err(DbError::Corrupt(format!(
            "the app's table refuses {tbl}/{pk} with the chosen value: {reason}"
        )));
    }
    let mut stamped = RowState { cl: row.cl, ..RowState::default() };
    stamped.fields.insert(col.clone(), FieldState::single(version));
    batch.bytes += 220 + tbl.len() + pk.len() + col.len() + value_size(&value);
    batch.versions += 1;
    add_to_batch(batch, key, stamped, old_patient, patient);
    Ok(Resolved { id, table: tbl, pk, column: col, value })
}

/// A new version of a field made with everything it holds in view: it
/// supersedes every version there, here and wherever it travels.
fn settling_version(clock: &mut HlcClock, now_ms: u64, state: &FieldState, value: Value) -> FieldVersion {
    let base = state.context();
    clock.observe(base.latest().expect("a field state is never empty"));
    FieldVersion::new(value, clock.stamp(now_ms), base)
        .expect("a fresh stamp is after every stamp the clock observed")
}

/// Puts a locally made change of one row into the transaction's segment.
fn add_to_batch(
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

/// Settles an edit that lost to a delete: keep the delete (its view grows
/// to cover the edit, and every site's record closes when that arrives),
/// or keep the edit (the row lives again, with the edited value).
#[allow(clippy::too_many_arguments)]
fn resolve_delete(
    conn: &Connection,
    ctx: &Ctx<'_>,
    clock: &mut HlcClock,
    now_ms: u64,
    id: i64,
    keep: Keep,
    (key, mut row, old_patient): (RowKey, RowState, Option<String>),
    col: &str,
    hlc: &str,
    batch: &mut StampBatch,
) -> Result<Resolved, DbError> {
    let lost = row
        .lost_to_delete()
        .find(|(c, v)| c.as_str() == col && v.hlc().encode() == hlc)
        .map(|(_, v)| v.clone());
    let Some(lost) = lost else {
        sync_records(conn, &key, &row, old_patient.as_deref(), "", now_ms)?;
        return Err(DbError::ConflictSettled {
            id,
            how: "the row was restored, or its delete was accepted".into(),
        });
    };
    let mut stamped = RowState { cl: row.cl, ..RowState::default() };
    let value = match keep {
        Keep::Winner => {
            row.deleted.add(lost.hlc());
            stamped.deleted = row.deleted.clone();
            Value::Null
        }
        Keep::Loser => {
            let state = row.fields.get(col).expect("a lost version belongs to a field of the row");
            let version = settling_version(clock, now_ms, state, lost.value().clone());
            row.cl += 1;
            row.deleted = Base::default();
            row.fields.insert(col.to_owned(), FieldState::single(version));
            stamped.cl = row.cl;
            // The row comes back whole: its other fields travel too.
            stamped.fields = row.fields.clone();
            lost.value().clone()
        }
    };
    let patient = patient_of(ctx, &key.table, &key.pk, &row, old_patient.as_deref());
    save_row(conn, ctx, &key.table, &key.pk, &row, patient.as_deref(), Some(old_patient.as_deref()), None)?;
    sync_records(conn, &key, &row, patient.as_deref(), "", now_ms)?;
    if let Err(reason) = project_or_park(conn, ctx, &key, &row)? {
        return Err(DbError::Corrupt(format!("the app's table refuses {}/{}: {reason}", key.table, key.pk)));
    }
    batch.bytes += 300 + key.table.len() + key.pk.len() + 200 * stamped.fields.len();
    batch.versions += 1;
    let (table, pk) = (key.table.clone(), key.pk.clone());
    add_to_batch(batch, key, stamped, old_patient, patient);
    Ok(Resolved { id, table, pk, column: col.to_owned(), value })
}

/// True when a row's state may have conflict records: a field with
/// concurrent versions, or a tombstone.
fn has_records(row: Option<&RowState>) -> bool {
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
    conn.prepare_cached(
        "UPDATE _cs_conflicts SET status = 'resolved', resolved_ms = ?4
         WHERE tbl = ?1 AND pk = ?2 AND status = 'open'
           AND col || char(31) || hlc NOT IN (SELECT value FROM json_each(?3))",
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
               status = 'open', resolved_ms = NULL",
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
    Ok(new)
}

/// Holds an incoming deletion while the app still shows the row: the
/// state takes the tombstone, the app keeps the row until the mass-delete
/// guard has counted the run's deletions (see held.rs). A child row is
/// filed under its patient, so that it is applied or refused with the
/// patient's own deletion. Returns whether it was held.
fn hold_delete(conn: &Connection, ctx: &Ctx<'_>, key: &RowKey, row: &RowState) -> Result<bool, DbError> {
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
fn app_shows(conn: &Connection, ctx: &Ctx<'_>, key: &RowKey) -> Result<bool, DbError> {
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

/// True when the app still shows a row whose deletion is held.
fn is_held(conn: &Connection, tbl: &str, pk: &str) -> Result<bool, DbError> {
    Ok(conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM _cs_held WHERE tbl = ?1 AND pk = ?2)")?
        .query_row(params![tbl, pk], |r| r.get(0))?)
}

/// The causal length of a row purged here.
fn purged_cl(conn: &Connection, key: &RowKey) -> Result<Option<u64>, DbError> {
    let cl: Option<i64> = conn
        .prepare_cached("SELECT cl FROM _cs_purged WHERE tbl = ?1 AND pk = ?2")?
        .query_row(params![key.table, key.pk], |r| r.get(0))
        .optional()?;
    Ok(cl.map(|c| c as u64))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::model::{FieldVersion, Hlc, SiteId, Value};

    fn hlc(wall: u64, site: u8) -> Hlc {
        Hlc::new(wall, 0, SiteId::from_bytes([site; 16]))
    }

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::Integer),
            prop_oneof![any::<f64>(), Just(f64::NAN), Just(f64::INFINITY), Just(-0.0)].prop_map(Value::Real),
            "[a-c<&\"\r\n\t\u{1}é ]{0,6}".prop_map(Value::Text),
            proptest::collection::vec(any::<u8>(), 0..4).prop_map(Value::Blob),
        ]
    }

    /// A field version: stamped at `wall` by one of three sites, with a
    /// base of earlier stamps.
    fn version() -> impl Strategy<Value = FieldVersion> {
        (value(), 10..40u64, 1..4u8, proptest::collection::vec((0..10u64, 1..4u8), 0..3)).prop_map(
            |(value, wall, site, base)| {
                let base = Base::new(base.into_iter().map(|(w, s)| hlc(w, s)));
                FieldVersion::new(value, hlc(wall, site), base).expect("bases are before 10")
            },
        )
    }

    fn row() -> impl Strategy<Value = (RowKey, RowState)> {
        let fields = proptest::collection::btree_map(
            prop_oneof![Just("a"), Just("b"), Just("é"), Just("x y")].prop_map(String::from),
            proptest::collection::vec(version(), 1..3)
                .prop_map(|v| FieldState::from_versions(v).expect("not empty")),
            0..4,
        );
        let deleted = proptest::collection::vec((40..50u64, 1..4u8), 0..3)
            .prop_map(|stamps| Base::new(stamps.into_iter().map(|(w, s)| hlc(w, s))));
        (
            prop_oneof![Just("appointments"), Just("patients"), Just("notes")],
            "[0-9a-c]{1,2}",
            0..6u64,
            fields,
            deleted,
        )
            .prop_map(|(table, pk, cl, fields, deleted)| {
                (RowKey { table: table.into(), pk }, RowState { cl, fields, deleted })
            })
    }

    fn stored(rows: &[(RowKey, RowState)]) -> StoredPatient {
        StoredPatient {
            patient: "p1".into(),
            rows: rows
                .iter()
                .map(|(key, row)| (key.clone(), row.cl as i64, rowblob::encode(&row.fields, &row.deleted)))
                .collect(),
        }
    }

    fn both_ways(stored: &StoredPatient) -> (Result<Vec<u8>, String>, Result<Vec<u8>, String>) {
        let in_place = stored.clone().encode().map_err(|e| e.to_string());
        let decoded = stored.clone().decode().map(|doc| encode_patient(&doc)).map_err(|e| e.to_string());
        (in_place, decoded)
    }

    proptest! {
        #[test]
        fn a_file_written_from_stored_rows_is_the_file_of_their_decoded_document(
            rows in proptest::collection::vec(row(), 0..6),
        ) {
            let stored = stored(&rows);
            let (in_place, decoded) = both_ways(&stored);
            prop_assert_eq!(&in_place, &decoded);
            // Rows without concurrent versions, under distinct keys, are
            // written in place (the point of it), not decoded.
            let keys: BTreeSet<&RowKey> = rows.iter().map(|(k, _)| k).collect();
            let single = rows.iter().all(|(_, r)| r.fields.values().all(|f| f.versions().len() == 1));
            if keys.len() == rows.len() && single {
                prop_assert_eq!(stored.encode_in_place(), Some(in_place.unwrap()));
            }
        }
    }

    /// Blobs a view refuses are decoded instead: the same bytes, or the
    /// same error.
    #[test]
    fn blobs_not_in_canonical_form_give_what_decoding_gives() {
        let key = RowKey { table: "notes".into(), pk: "1".into() };
        let stamp = |out: &mut Vec<u8>, h: Hlc| {
            out.extend_from_slice(&h.wall_ms().to_be_bytes()[2..]);
            out.extend_from_slice(&h.counter().to_be_bytes());
            out.extend_from_slice(h.site().as_bytes());
        };
        // Layout 3 with two stamps; the fields and bases given by `body`.
        let blob = |body: &[u8]| {
            let mut out = vec![3, 2];
            stamp(&mut out, hlc(20, 1));
            stamp(&mut out, hlc(5, 2));
            out.extend_from_slice(body);
            out
        };
        let cases: [(&str, Vec<u8>); 5] = [
            // Fields "b" then "a": decoding sorts them.
            ("unsorted fields", blob(&[2, 1, b'b', 1, 0, 0, 0, 1, b'a', 1, 0, 0, 0])),
            // A base naming the same site's stamp twice: decoding keeps one.
            ("a base with a site twice", blob(&[1, 1, b'a', 1, 0, 2, 1, 1, 0])),
            // A base not before its version's stamp: damage.
            ("a base after its stamp", blob(&[1, 1, b'a', 1, 1, 1, 0, 0])),
            ("a byte left over", blob(&[1, 1, b'a', 1, 0, 0, 0, 9])),
            ("an unknown layout", vec![9, 0]),
        ];
        for (what, blob) in cases {
            let stored = StoredPatient { patient: "p1".into(), rows: vec![(key.clone(), 1, blob)] };
            assert_eq!(stored.encode_in_place(), None, "{what}");
            let (in_place, decoded) = both_ways(&stored);
            assert_eq!(in_place, decoded, "{what}");
        }
    }
}
