//! The first export of a database that already holds rows: every mapped
//! table is read in storage order and each row is stamped as new, in
//! bounded transactions that each record where they got to, instead of
//! queueing every row for the one-row-at-a-time path of later exports.
//!
//! While the first export is unfinished nothing else writes the state (the
//! run's export finishes it before stamping the app's later changes and
//! before importing), so a row it reaches has no recorded versions; if one
//! has after all, the row is queued for the ordinary path instead.

use std::sync::{Arc, mpsc};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OptionalExtension, params};

use super::DbError;
use super::mapping::Mapping;
use super::patients::{StoredPatient, collect_stored};
use super::purge::purged_cl;
use super::rowblob;
use super::schema::quote;
use super::state::{
    Ctx, StampBatch, insert_new_row, key_is_safe, key_text, no_patient, not_text_key, patient_in, value_size,
};
use super::values::from_ref;
use crate::model::{Base, FieldState, FieldVersion, Hlc, HlcClock, RowKey, RowState, Value};

/// Rows per slice the other core makes states of.
const SLICE_ROWS: usize = 512;

/// Rows of one table read for the first export, sent to be made into
/// states.
struct Slice {
    /// The table's place in the mapping's order.
    table: usize,
    names: Arc<[String]>,
    rows: Vec<NewRow>,
}

impl Slice {
    fn new(table: usize, names: &Arc<[String]>) -> Slice {
        Slice { table, names: names.clone(), rows: Vec::with_capacity(SLICE_ROWS) }
    }
}

/// The `_cs_meta` key holding the first export's cursor while it is
/// unfinished.
pub(crate) const CURSOR_KEY: &str = "first_export";

/// Where the first export has got to in one table.
#[derive(Clone, Debug, PartialEq, Eq)]
enum After {
    Start,
    /// The last rowid done (tables with rowids: read in rowid order).
    Rowid(i64),
    /// The last key done (`WITHOUT ROWID` tables: read in key order), as
    /// stored: text, or a BLOB an app put in the text key column.
    Key {
        blob: bool,
        bytes: Vec<u8>,
    },
}

impl After {
    /// The key read from a row, as it compares in the table's index.
    fn key(value: ValueRef<'_>) -> After {
        match value {
            ValueRef::Blob(b) => After::Key { blob: true, bytes: b.to_vec() },
            ValueRef::Text(t) => After::Key { blob: false, bytes: t.to_vec() },
            // A text-affinity key column stores numbers as text; anything
            // else compares as its text.
            ValueRef::Integer(i) => After::Key { blob: false, bytes: i.to_string().into_bytes() },
            ValueRef::Real(r) => After::Key { blob: false, bytes: r.to_string().into_bytes() },
            ValueRef::Null => After::Key { blob: false, bytes: Vec::new() },
        }
    }

    /// The key as a statement parameter, of its own storage class.
    fn key_param(blob: bool, bytes: &[u8]) -> ToSqlOutput<'_> {
        ToSqlOutput::Borrowed(if blob { ValueRef::Blob(bytes) } else { ValueRef::Text(bytes) })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Cursor {
    /// Stamping: the table (by its place in the mapping's order) and the
    /// last row done.
    Stamp { table: usize, after: After },
    /// Every row is stamped and its segment written; the patient files are
    /// written in patient order, after this patient.
    Files { after: Option<String> },
}

/// The stage of an unfinished first export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FirstExport {
    /// Rows are left to stamp: nothing else may write the state yet.
    Stamping,
    /// Every row is stamped; patient files are left to write, for the
    /// patients after this one.
    Files { after: Option<String> },
}

impl Cursor {
    fn encode(&self) -> String {
        match self {
            Cursor::Stamp { table, after: After::Start } => format!("{table}"),
            Cursor::Stamp { table, after: After::Rowid(r) } => format!("{table} r{r}"),
            Cursor::Stamp { table, after: After::Key { blob, bytes } } => {
                format!("{table} {}{}", if *blob { 'b' } else { 't' }, B64.encode(bytes))
            }
            Cursor::Files { after: None } => "files".into(),
            Cursor::Files { after: Some(p) } => format!("files p{p}"),
        }
    }

    fn decode(text: &str) -> Option<Cursor> {
        if let Some(rest) = text.strip_prefix("files") {
            return match rest.strip_prefix(" p") {
                Some(p) => Some(Cursor::Files { after: Some(p.to_owned()) }),
                None if rest.is_empty() => Some(Cursor::Files { after: None }),
                None => None,
            };
        }
        let (table, after) = match text.split_once(' ') {
            None => (text, After::Start),
            Some((t, rest)) => {
                let after = if let Some(r) = rest.strip_prefix('r') {
                    After::Rowid(r.parse().ok()?)
                } else if let Some(t) = rest.strip_prefix('t') {
                    After::Key { blob: false, bytes: B64.decode(t).ok()? }
                } else {
                    After::Key { blob: true, bytes: B64.decode(rest.strip_prefix('b')?).ok()? }
                };
                (t, after)
            }
        };
        Some(Cursor::Stamp { table: table.parse().ok()?, after })
    }
}

fn load_cursor(conn: &Connection) -> Result<Option<Cursor>, DbError> {
    let text = super::meta::meta_get(conn, CURSOR_KEY)?;
    match text {
        None => Ok(None),
        Some(t) => Cursor::decode(&t)
            .map(Some)
            .ok_or_else(|| DbError::Corrupt(format!("the first export's position {t:?} is unreadable"))),
    }
}

fn save_cursor(conn: &Connection, cursor: Option<&Cursor>) -> Result<(), DbError> {
    match cursor {
        Some(c) => super::meta::meta_set(conn, CURSOR_KEY, &c.encode()),
        None => super::meta::meta_delete(conn, CURSOR_KEY),
    }
}

/// Marks the rows the mapped tables hold now for the first export (called
/// by `init`, in its transaction). Rows the app changes from now on are
/// captured by the triggers as usual.
pub(crate) fn start(conn: &Connection, mapping: &Mapping) -> Result<(), DbError> {
    for table in mapping.tables() {
        let any: bool =
            conn.query_row(&format!("SELECT EXISTS (SELECT 1 FROM {})", quote(table)), [], |r| r.get(0))?;
        if any {
            return save_cursor(conn, Some(&Cursor::Stamp { table: 0, after: After::Start }));
        }
    }
    Ok(())
}

/// The stage of the first export, while it is unfinished.
pub(crate) fn stage(conn: &Connection) -> Result<Option<FirstExport>, DbError> {
    Ok(load_cursor(conn)?.map(|c| match c {
        Cursor::Stamp { .. } => FirstExport::Stamping,
        Cursor::Files { after } => FirstExport::Files { after },
    }))
}

/// Makes the index of the state by patient, when the first export's
/// stamping has dropped it (see `stamp_next`).
pub(crate) fn restore_patient_index(conn: &Connection) -> Result<(), DbError> {
    let present: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = '_cs_rows_patient')",
        [],
        |r| r.get(0),
    )?;
    if !present {
        conn.execute_batch("CREATE INDEX _cs_rows_patient ON _cs_rows (patient)")?;
    }
    Ok(())
}

/// Records that the patient files are written up to `patient` (`None`:
/// all of them; the first export is finished).
pub(crate) fn files_written_until(conn: &Connection, patient: Option<&str>) -> Result<(), DbError> {
    let cursor = patient.map(|p| Cursor::Files { after: Some(p.to_owned()) });
    save_cursor(conn, cursor.as_ref())
}

/// The next patients of the first export's file stage, after `after`,
/// each with every row the state holds.
pub(crate) fn next_patients(
    conn: &Connection,
    after: Option<&str>,
    max: usize,
) -> Result<Vec<StoredPatient>, DbError> {
    let after = after.unwrap_or("");
    let last: Option<String> = conn
        .prepare_cached(
            "SELECT max(patient) FROM (SELECT DISTINCT patient FROM _cs_rows
             WHERE patient > ?1 ORDER BY patient LIMIT ?2)",
        )?
        .query_row(params![after, max as i64], |r| r.get(0))?;
    let Some(last) = last else { return Ok(Vec::new()) };
    let mut stmt = conn.prepare_cached(
        "SELECT patient, tbl, pk, cl, state FROM _cs_rows WHERE patient > ?1 AND patient <= ?2 ORDER BY patient",
    )?;
    collect_stored(stmt.query(params![after, last])?)
}

/// Rows the first export has not reached yet, or patients whose files it
/// has not written (for the status page).
pub(crate) fn left(conn: &Connection, mapping: &Mapping) -> Result<u64, DbError> {
    let (table, after) = match load_cursor(conn)? {
        None => return Ok(0),
        Some(Cursor::Files { after }) => {
            let n: i64 = conn.query_row(
                "SELECT count(DISTINCT patient) FROM _cs_rows WHERE patient > ?1",
                [after.unwrap_or_default()],
                |r| r.get(0),
            )?;
            return Ok(n as u64);
        }
        Some(Cursor::Stamp { table, after }) => (table, after),
    };
    let mut left = 0u64;
    for (i, name) in mapping.tables().enumerate().skip(table) {
        let (key, _) = mapping.table(name).expect("a mapped table");
        let after = if i == table { &after } else { &After::Start };
        let n: i64 = match after {
            After::Start => {
                conn.query_row(&format!("SELECT count(*) FROM {}", quote(name)), [], |r| r.get(0))?
            }
            After::Rowid(r) => {
                conn.query_row(&format!("SELECT count(*) FROM {} WHERE rowid > ?1", quote(name)), [r], |r| {
                    r.get(0)
                })?
            }
            After::Key { blob, bytes } => conn.query_row(
                &format!("SELECT count(*) FROM {} WHERE {} > ?1", quote(name), quote(key)),
                [After::key_param(*blob, bytes)],
                |r| r.get(0),
            )?,
        };
        left += n as u64;
    }
    Ok(left)
}

/// Whether a table is read in rowid order: it has rowids, and no column
/// of its own hides them (a column named `rowid`, `oid` or `_rowid_`).
fn by_rowid(conn: &Connection, table: &str) -> Result<bool, DbError> {
    let without: Option<bool> = conn
        .prepare_cached("SELECT wr FROM pragma_table_list WHERE name = ?1 AND schema = 'main'")?
        .query_row([table], |r| r.get(0))
        .optional()?;
    let hidden: bool = conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM pragma_table_info(?1) WHERE lower(name) IN ('rowid', 'oid', '_rowid_'))",
        )?
        .query_row([table], |r| r.get(0))?;
    Ok(!without.unwrap_or(false) && !hidden)
}

/// Stamps the next rows of the first export, until `max_rows` rows or
/// about `max_bytes` of segment; records the new position in the same
/// transaction. Returns true when rows are left.
pub(crate) fn stamp_next(
    conn: &Connection,
    ctx: &Ctx<'_>,
    clock: &mut HlcClock,
    now_ms: u64,
    max_rows: usize,
    max_bytes: usize,
    batch: &mut StampBatch,
) -> Result<bool, DbError> {
    let Some(Cursor::Stamp { table, after }) = load_cursor(conn)? else { return Ok(false) };
    let mut cursor = (table, after);
    // The patient index is built once after the last step (a sort) instead
    // of kept up row by row (inserts into the middle of a growing index):
    // a sixth of the stamping at 100,000 patients. Nothing reads the state
    // by patient until the stamping ends.
    conn.execute_batch("DROP INDEX IF EXISTS _cs_rows_patient")?;
    // The rows inserted here do not keep digests up (they are new rows of
    // a database that had none until now): any digest goes.
    if ctx.digests {
        super::digests::drop_all(conn)?;
    }
    batch.range_from =
        Some(conn.query_row("SELECT coalesce(max(rowid), 0) FROM _cs_rows", [], |r| r.get(0))?);
    let tables: Vec<&str> = ctx.mapping.tables().collect();
    let mapping = ctx.mapping;
    let names_of = &tables;
    std::thread::scope(|scope| {
        // Rows are read and inserted here, while the other core makes the
        // states of the slice read before (all within this transaction).
        let (to_maker, slices) = mpsc::sync_channel::<Slice>(1);
        let (to_inserter, made) = mpsc::channel::<(usize, Vec<MadeRow>)>();
        scope.spawn(move || {
            for slice in slices {
                let table = names_of[slice.table];
                let rows =
                    slice.rows.into_iter().map(|r| make_new_row(mapping, table, &slice.names, r)).collect();
                if to_inserter.send((slice.table, rows)).is_err() {
                    return;
                }
            }
        });
        let mut in_flight = 0usize;
        let insert_one = |in_flight: &mut usize, batch: &mut StampBatch| -> Result<(), DbError> {
            let (table, rows) = made.recv().expect("the maker sends a slice back for each it receives");
            *in_flight -= 1;
            for row in rows {
                insert_made_row(conn, names_of[table], row, batch)?;
            }
            Ok(())
        };
        let send = |slice: Slice, in_flight: &mut usize, batch: &mut StampBatch| -> Result<(), DbError> {
            if slice.rows.is_empty() {
                return Ok(());
            }
            to_maker.send(slice).expect("the maker runs until the slices end");
            *in_flight += 1;
            // One slice being made while the next is read.
            if *in_flight > 1 {
                insert_one(in_flight, batch)?;
            }
            Ok(())
        };
        let mut done = 0usize;
        while cursor.0 < tables.len() && done < max_rows && batch.bytes < max_bytes {
            let table = tables[cursor.0];
            let (key, _) = ctx.mapping.table(table).expect("a mapped table");
            let rowid = by_rowid(conn, table)?;
            // The position column first, then the key as text (as the capture
            // triggers record it), then the row.
            let (order, after_sql) = if rowid { ("rowid", "rowid") } else { (key, key) };
            let filter = match cursor.1 {
                After::Start => String::new(),
                _ => format!("WHERE {} > ?2", quote(after_sql)),
            };
            let order = if rowid { order.to_owned() } else { quote(order) };
            let sql = format!(
                "SELECT {order}, CAST({k} AS TEXT), typeof({k}), * FROM {t} {filter} ORDER BY {order} LIMIT ?1",
                k = quote(key),
                t = quote(table)
            );
            let mut stmt = conn.prepare_cached(&sql)?;
            let names: Arc<[String]> = stmt.column_names().into_iter().skip(3).map(str::to_owned).collect();
            let want = (max_rows - done) as i64;
            let mut rows = match &cursor.1 {
                After::Start => stmt.query(params![want])?,
                After::Rowid(r) => stmt.query(params![want, r])?,
                After::Key { blob, bytes } => stmt.query(params![want, After::key_param(*blob, bytes)])?,
            };
            let mut slice = Slice::new(cursor.0, &names);
            let mut fetched = 0i64;
            while let Some(r) = rows.next()? {
                fetched += 1;
                cursor.1 = if rowid { After::Rowid(r.get(0)?) } else { After::key(r.get_ref(0)?) };
                // As the capture queue sees keys (`state::key_text`).
                let pk = key_text(r.get_ref(1)?, r.get_ref(2)?).unwrap_or_else(|bytes| {
                    batch.warnings.push(not_text_key(table, &bytes));
                    None
                });
                done += 1;
                let Some(pk) = pk else { continue };
                if !key_is_safe(table, &pk, batch) {
                    continue;
                }
                let values = (0..names.len())
                    .map(|i| Ok(from_ref(r.get_ref(i + 3)?)))
                    .collect::<rusqlite::Result<_>>()?;
                let cl = new_row_cl(conn, ctx, table, &pk)?;
                let row = NewRow { pk, cl, stamp: clock.stamp(now_ms), values };
                batch.bytes += new_row_bytes(table, &names, &row);
                batch.versions += names.len();
                slice.rows.push(row);
                if slice.rows.len() == SLICE_ROWS {
                    send(std::mem::replace(&mut slice, Slice::new(cursor.0, &names)), &mut in_flight, batch)?;
                }
                if batch.bytes >= max_bytes {
                    break;
                }
            }
            send(slice, &mut in_flight, batch)?;
            if fetched < want && batch.bytes < max_bytes {
                cursor = (cursor.0 + 1, After::Start);
            }
        }
        while in_flight > 0 {
            insert_one(&mut in_flight, batch)?;
        }
        // Leaving the scope drops the sender, which ends the maker.
        Ok::<_, DbError>(())
    })?;
    let finished = cursor.0 >= tables.len();
    if finished {
        // The patient index is back in the transaction that ends the
        // stamping: the file stage reads by patient.
        restore_patient_index(conn)?;
    }
    let next = match finished {
        true => Cursor::Files { after: None },
        false => Cursor::Stamp { table: cursor.0, after: cursor.1 },
    };
    save_cursor(conn, Some(&next))?;
    Ok(!finished)
}

/// A row of the first export as read from its table: a row with no
/// recorded versions, so every column gets a version, all with one stamp.
pub(super) struct NewRow {
    pub(super) pk: String,
    /// 1, or after a purge of the key, on from the purged tombstone's.
    pub(super) cl: u64,
    pub(super) stamp: Hlc,
    /// The row's columns, in the order of the table's column names.
    pub(super) values: Vec<Value>,
}

/// A first-export row's state and its blob, made on any thread.
pub(super) struct MadeRow {
    pk: String,
    patient: Option<String>,
    row: RowState,
    blob: Vec<u8>,
}

/// Makes a first-export row's state: needs no database, so the other core
/// does it while this one reads and inserts.
pub(super) fn make_new_row(mapping: &Mapping, tbl: &str, names: &[String], new: NewRow) -> MadeRow {
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
pub(super) fn new_row_bytes(tbl: &str, names: &[String], new: &NewRow) -> usize {
    let fields: usize = names.iter().zip(&new.values).map(|(c, v)| 120 + c.len() + value_size(v)).sum();
    fields + 100 + tbl.len() + new.pk.len()
}

/// Inserts a first-export row's state. Should the row have versions after
/// all, it is queued for the ordinary path instead.
pub(super) fn insert_made_row(
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
pub(super) fn new_row_cl(conn: &Connection, ctx: &Ctx<'_>, tbl: &str, pk: &str) -> Result<u64, DbError> {
    if !ctx.any_purged {
        return Ok(1);
    }
    let key = RowKey { table: tbl.to_owned(), pk: pk.to_owned() };
    Ok(purged_cl(conn, &key)?.unwrap_or(0) + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{Db, Mapping, REFERENCE_SCHEMA};
    use crate::model::{
        FieldState, FieldVersion, Hlc, PatientDoc, PatientId, RowKey, RowState, SiteId, Value,
    };

    /// The app's `clinic.db` in `dir`, with its tables made by `schema`.
    fn app_db(dir: &std::path::Path, schema: &str) -> Connection {
        let conn = Connection::open(dir.join("clinic.db")).unwrap();
        conn.execute_batch(schema).unwrap();
        conn
    }

    /// Sets up `clinic.db` in `dir` (which the test has filled) for a site.
    fn init(dir: &std::path::Path, mapping: Option<Mapping>) -> Db {
        Db::init_for_test(dir, mapping)
    }

    /// Gives patient `pk` a `family_name` version from another site, as
    /// an import would (nothing in clinicsync does this before the first
    /// export reaches the row; the first export must not overwrite it).
    fn give_version(db: &mut Db, pk: &str, name: &str) -> Hlc {
        let other = Hlc::new(500, 0, SiteId::from_bytes([3; 16]));
        let mut row = RowState { cl: 1, ..RowState::default() };
        let version = FieldVersion::new(Value::Text(name.into()), other, Default::default()).unwrap();
        row.fields.insert("family_name".into(), FieldState::single(version));
        let mut doc = PatientDoc::new(PatientId(pk.into()));
        doc.rows.insert(RowKey { table: "patients".into(), pk: pk.into() }, row);
        let mut w = db.begin_write(2_000).unwrap();
        w.apply_doc(&doc, "test").unwrap();
        w.commit().unwrap();
        other
    }

    /// The keys queued for the ordinary path.
    fn pending_keys(db: &Db) -> Vec<String> {
        db.conn()
            .prepare("SELECT pk FROM _cs_pending")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn a_row_that_has_versions_already_goes_the_ordinary_way() {
        let dir = tempfile::tempdir().unwrap();
        let conn = app_db(dir.path(), REFERENCE_SCHEMA);
        conn.execute("INSERT INTO patients (id, family_name) VALUES ('p1', 'Ames'), ('p2', 'Bell')", [])
            .unwrap();
        let mut db = init(dir.path(), None);
        assert!(db.first_export_unfinished().unwrap());
        // p2 gets versions before the first export reaches it (nothing in
        // clinicsync does this; the first export must not overwrite them).
        let other = give_version(&mut db, "p2", "Bell");

        let mut w = db.begin_write(3_000).unwrap();
        assert!(!w.stamp_first_export(100, 1 << 20).unwrap(), "the first export is finished");
        let first = w.commit().unwrap();
        assert_eq!(first.rows, 1, "only p1 is stamped as new");
        assert_eq!(db.first_export().unwrap(), Some(FirstExport::Files { after: None }), "files are next");
        let queued = pending_keys(&db);
        assert_eq!(queued, ["p2"]);
        // The ordinary path keeps the other site's version and stamps only
        // what the app has beyond it.
        let mut w = db.begin_write(4_000).unwrap();
        assert!(!w.stamp_pending(100, 1 << 20).unwrap());
        w.commit().unwrap();
        let doc = db.doc_for_patient("p2").unwrap();
        let state = &doc.rows[&RowKey { table: "patients".into(), pk: "p2".into() }];
        assert_eq!(state.fields["family_name"].winner().hlc(), other);
        assert!(state.fields.len() > 1, "the app's other columns are stamped");
    }

    #[test]
    fn a_step_of_many_slices_inserts_each_row_once_and_queues_the_one_with_versions() {
        let dir = tempfile::tempdir().unwrap();
        let conn = app_db(dir.path(), REFERENCE_SCHEMA);
        for i in 0..1_300 {
            conn.execute("INSERT INTO patients (id, family_name) VALUES (?1, 'n')", [format!("p{i:04}")])
                .unwrap();
        }
        let mut db = init(dir.path(), None);
        // p0700, in the middle of the first step's second slice, already has
        // a version from another site.
        give_version(&mut db, "p0700", "m");

        let indexed = |db: &Db| -> bool {
            db.conn()
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = '_cs_rows_patient')",
                    [],
                    |r| r.get(0),
                )
                .unwrap()
        };
        let mut steps = Vec::new();
        loop {
            let mut w = db.begin_write(3_000).unwrap();
            let more = w.stamp_first_export(1_000, 1 << 30).unwrap();
            steps.push(w.commit().unwrap());
            // The patient index is made again as the stamping ends.
            assert_eq!(indexed(&db), !more);
            if !more {
                break;
            }
        }
        // Missing outside the stamping (a hand edit): made again on opening.
        db.conn().execute_batch("DROP INDEX _cs_rows_patient").unwrap();
        drop(db);
        let db = Db::open(&dir.path().join("clinic.db")).unwrap();
        assert!(indexed(&db));
        let rows: Vec<usize> = steps.iter().map(|s| s.rows).collect();
        assert_eq!(rows, [999, 300], "p0700 goes the ordinary way");
        let first: Vec<&str> = steps[0].first_export_rows.iter().map(|((_, k), _)| k.pk.as_str()).collect();
        assert_eq!(first.len(), 999);
        assert!(first.windows(2).all(|w| w[0] < w[1]) && !first.contains(&"p0700"));
        let stamped: i64 = db.conn().query_row("SELECT count(*) FROM _cs_rows", [], |r| r.get(0)).unwrap();
        assert_eq!(stamped, 1_300);
        let queued = pending_keys(&db);
        assert_eq!(queued, ["p0700"]);
    }

    #[test]
    fn small_steps_read_every_row_once_in_key_or_rowid_order() {
        let dir = tempfile::tempdir().unwrap();
        // A WITHOUT ROWID root (read in key order) and a child whose own
        // `oid` column hides the rowid (read in key order too).
        let conn = app_db(
            dir.path(),
            "CREATE TABLE clients (uid TEXT PRIMARY KEY, name TEXT) WITHOUT ROWID;
             CREATE TABLE visits (vid TEXT PRIMARY KEY, client TEXT, oid TEXT);
             CREATE TABLE notes (id TEXT PRIMARY KEY, client TEXT, body TEXT);",
        );
        // Keys an app stored as BLOBs in the text key column are skipped
        // with a warning (the capture queue cannot find them again either),
        // and they do not confuse the key-order cursor.
        conn.execute("INSERT INTO clients VALUES (x'6339', 'blob key')", []).unwrap();
        conn.execute("INSERT INTO clients VALUES (x'ff00', 'not text')", []).unwrap();
        for i in 0..7 {
            conn.execute("INSERT INTO clients VALUES (?1, 'n')", [format!("c{i}")]).unwrap();
            conn.execute("INSERT INTO visits VALUES (?1, ?2, 'x')", [format!("v{i}"), format!("c{i}")])
                .unwrap();
            conn.execute("INSERT INTO notes VALUES (?1, ?2, 'b')", [format!("n{i}"), format!("c{i}")])
                .unwrap();
        }
        let mapping = Mapping::from_toml(
            "[root]\ntable = \"clients\"\nkey = \"uid\"\n\n[[children]]\ntable = \"visits\"\nkey = \"vid\"\npatient = \"client\"\n\n[[children]]\ntable = \"notes\"\nkey = \"id\"\npatient = \"client\"\n",
        )
        .unwrap();
        assert!(!by_rowid(&conn, "clients").unwrap());
        assert!(!by_rowid(&conn, "visits").unwrap());
        assert!(by_rowid(&conn, "notes").unwrap());
        let mut db = init(dir.path(), Some(mapping));
        let mut steps = 0;
        let mut rows = 0;
        let mut warnings = Vec::new();
        loop {
            let mut w = db.begin_write(2_000).unwrap();
            let more = w.stamp_first_export(3, 1 << 20).unwrap();
            let outcome = w.commit().unwrap();
            rows += outcome.rows;
            warnings.extend(outcome.warnings);
            steps += 1;
            if !more {
                break;
            }
        }
        assert_eq!(rows, 21, "every row once, those with BLOB keys left out");
        assert!(steps >= 8, "three rows a step: {steps}");
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings.iter().all(|w| w.contains("stored as bytes, not text")), "{warnings:?}");
        let stamped: i64 = db.conn().query_row("SELECT count(*) FROM _cs_rows", [], |r| r.get(0)).unwrap();
        assert_eq!(stamped, 21);
        assert_eq!(db.first_export().unwrap(), Some(FirstExport::Files { after: None }));
    }

    #[test]
    fn cursors_read_back() {
        for c in [
            Cursor::Stamp { table: 0, after: After::Start },
            Cursor::Stamp { table: 3, after: After::Rowid(-7) },
            Cursor::Stamp { table: 1, after: After::Key { blob: false, bytes: b"a b\tc".to_vec() } },
            Cursor::Stamp { table: 2, after: After::Key { blob: false, bytes: Vec::new() } },
            Cursor::Stamp { table: 2, after: After::Key { blob: true, bytes: vec![0, 255, 7] } },
            Cursor::Files { after: None },
            Cursor::Files { after: Some("files p x".into()) },
            Cursor::Files { after: Some(String::new()) },
        ] {
            assert_eq!(Cursor::decode(&c.encode()), Some(c));
        }
        assert_eq!(Cursor::decode("x"), None);
        assert_eq!(Cursor::decode("1 q5"), None);
        assert_eq!(Cursor::decode("filesx"), None);
    }
}
