//! SQLite: the table mapping, the capture triggers, clinicsync's `_cs_`
//! state tables and the run log. The database uses WAL and a busy timeout so
//! the app keeps writing while a sync runs; clinicsync's write transactions
//! are short and take the write lock up front.

mod baseline;
mod bulk;
mod copies;
mod digests;
mod dirs;
mod documents;
mod durability;
mod files;
mod held;
mod history;
mod mapping;
mod meta;
mod outbox;
mod patients;
mod project;
mod purge;
mod read_ahead;
mod records;
mod resolve;
mod rowblob;
mod runs;
mod schema;
mod state;
mod values;
mod watermarks;
mod write;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior, params};

pub use baseline::TableBaseline;
pub use bulk::FirstExport;
pub use copies::KeptCopy;
pub use documents::{DocFile, DocumentRow, DueDocument, DueState, TrashedDocument, Unreferenced};
pub use durability::{Checkpointing, WalSync};
pub(crate) use files::{FileSeen, Seen};
pub use held::{HeldDeletes, HeldGroup, HeldPatient, HeldTable, Kept, Released};
pub use history::HistoryEntry;
pub use mapping::{
    ChildTable, DocumentsTable, Mapping, MappingError, REFERENCE_SCHEMA, RootTable, TableRole,
};
pub use patients::{ForFile, StoredPatient};
pub use purge::{Purged, Tombstone};
pub use read_ahead::{AHEAD_FEWEST, DiskProbe, ReadAhead};
pub use records::ConflictRecord;
pub use resolve::{Keep, Resolved};
pub use runs::{EventRecord, OPERATION_PREFIX, RunRecord, TABLE_RUN_PREFIX};
pub use state::{ApplyOutcome, StampOutcome};
pub use write::WriteTx;

use crate::model::{FamilyId, HlcClock, PatientDoc, SiteId};
use crate::xmlstore::RowsDigest;
use meta::{has_state, meta_get, meta_set};
use state::StampBatch;

/// The version of the `_cs_` tables this build understands. 2: row states
/// may be in blob layouts 3 and 4 (see rowblob.rs), which builds knowing
/// only format 1 cannot read; a format-1 database is taken up to 2 when
/// opened, so such a build refuses it with a clear sentence instead.
/// 3: patients' rows digests (`_cs_digests`), which every write of a row
/// must keep true; a build that does not know them would leave them stale,
/// so it must refuse the database.
pub const STATE_FORMAT: i64 = 3;

/// How long a statement waits for another connection's lock.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Database failures.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(
        "{path} is not set up for clinicsync yet: run `clinicsync init --db {path} --folder FOLDER` first"
    )]
    NotInitialized { path: String },
    #[error("{path} is already set up for clinicsync (site {site}, folder {folder})")]
    AlreadyInitialized { path: String, site: String, folder: String },
    #[error(
        "{path} was set up by a newer clinicsync (state format {found}, this one knows {STATE_FORMAT}); upgrade clinicsync"
    )]
    NewerState { path: String, found: i64 },
    #[error(
        "the database already has tables but no mapping was given and they are not the reference clinic schema: {0}"
    )]
    Mapping(#[from] MappingError),
    #[error("clinicsync's state in the database is damaged: {0}")]
    Corrupt(String),
    #[error("there is no conflict record #{0}; `clinicsync conflicts --all` lists them")]
    NoSuchConflict(i64),
    #[error("conflict #{id} is already settled: {how}")]
    ConflictSettled { id: i64, how: String },
    #[error(
        "it holds a version stamped by this site ({0}) that this site never made, so no clinicsync wrote it"
    )]
    ForgedStamp(String),
    #[error(
        "it holds a version of {table} {pk} field {column} under the stamp {stamp} that differs from the version this database has under it; one edit has one stamp, so one of the two copies was damaged or forged"
    )]
    StampClash { table: String, pk: String, column: String, stamp: String },
    #[error("database error: {0}")]
    Sql(#[from] rusqlite::Error),
}

/// Every row of every mapped table: (table, rows in key order).
pub type TableDump = Vec<(String, Vec<Vec<crate::model::Value>>)>;

/// Who this site is, as stored in `_cs_meta`.
#[derive(Clone, Debug)]
pub struct SiteConfig {
    pub site: SiteId,
    pub family: FamilyId,
    pub name: String,
    pub folder: PathBuf,
    pub machine: String,
}

/// What `init` records about a new site.
pub struct InitParams {
    pub site: SiteId,
    pub family: FamilyId,
    pub name: String,
    pub folder: PathBuf,
    pub machine: String,
    /// `None`: the reference clinic schema (created if the database is empty).
    pub mapping: Option<Mapping>,
    pub now_ms: u64,
}

/// An open clinicsync database.
pub struct Db {
    conn: Connection,
    path: PathBuf,
    mapping: Mapping,
    columns: BTreeMap<String, Vec<String>>,
}

fn connect(path: &Path, create: bool) -> Result<Connection, DbError> {
    let mut flags =
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // WAL lets the app read and write while clinicsync reads. FULL makes
    // every commit durable before files that depend on it are published.
    // Foreign keys stay off on this connection: incoming rows may arrive
    // before the rows they point at, and a delete must not cascade behind
    // the state's back (the app's own deletes cascade on its connection).
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    // The checkpoint SQLite runs when the last connection closes stays on
    // (about 3 ms a run): after a run the .db file alone holds every commit,
    // so a clinic that backs up or copies just clinic.db copies it whole.
    // (A receiving run starts it early: `Db::checkpoint_meanwhile`.)
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

fn load_columns(conn: &Connection, mapping: &Mapping) -> Result<BTreeMap<String, Vec<String>>, DbError> {
    let mut out = BTreeMap::new();
    for table in mapping.tables() {
        let cols = mapping::table_columns(conn, table)?.into_iter().map(|c| c.name).collect();
        out.insert(table.to_owned(), cols);
    }
    Ok(out)
}

impl Db {
    /// clinicsync's triggers and tables here: (triggers, tables).
    pub fn clinicsync_objects(&self) -> Result<(Vec<String>, Vec<String>), DbError> {
        Ok(schema::own_objects(&self.conn)?)
    }

    /// Removes clinicsync's triggers and tables from the database (the
    /// site leaves its family); the app's tables stay as they are.
    pub fn detach(self) -> Result<(), DbError> {
        schema::remove_own(&self.conn)?;
        Ok(())
    }

    /// Opens a database that `init` has set up.
    pub fn open(path: &Path) -> Result<Db, DbError> {
        let display = path.display().to_string();
        if !path.exists() {
            return Err(DbError::NotInitialized { path: display });
        }
        let conn = connect(path, false)?;
        if !has_state(&conn)? {
            return Err(DbError::NotInitialized { path: display });
        }
        let format: i64 = meta_get(&conn, "state_format")?.and_then(|f| f.parse().ok()).unwrap_or(0);
        if format > STATE_FORMAT {
            return Err(DbError::NewerState { path: display, found: format });
        }
        if format < STATE_FORMAT {
            meta_set(&conn, "state_format", &STATE_FORMAT.to_string())?;
        }
        schema::create_missing(&conn)?;
        // The first export's stamping drops the patient index and makes it
        // again in the transaction that ends the stamping; should it be
        // missing at any other time (a hand edit), it is made here.
        if bulk::stage(&conn)? != Some(FirstExport::Stamping) {
            bulk::restore_patient_index(&conn)?;
        }
        let mapping_text =
            meta_get(&conn, "mapping")?.ok_or_else(|| DbError::Corrupt("no mapping recorded".into()))?;
        let mapping = Mapping::from_toml(&mapping_text)?.upgraded();
        if mapping.to_toml() != mapping_text {
            meta_set(&conn, "mapping", &mapping.to_toml())?;
        }
        let edit_times: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM pragma_table_info('_cs_pending') WHERE name = 'at_ms')",
            [],
            |r| r.get(0),
        )?;
        if !edit_times {
            // The triggers record when the app wrote, in one step with the
            // column they fill.
            let tx = conn.unchecked_transaction()?;
            tx.execute_batch("ALTER TABLE _cs_pending ADD COLUMN at_ms INTEGER")?;
            schema::install_triggers(&tx, &mapping)?;
            tx.commit()?;
        }
        let columns = load_columns(&conn, &mapping)?;
        Ok(Db { conn, path: path.to_path_buf(), mapping, columns })
    }

    /// Sets up a database for clinicsync: the reference schema when it is
    /// empty and no mapping is given, the `_cs_` tables, the triggers, and
    /// every existing row queued for the first export. All or nothing.
    pub fn init(path: &Path, params: InitParams) -> Result<Db, DbError> {
        let mut conn = connect(path, true)?;
        if has_state(&conn)? {
            let site = meta_get(&conn, "site_id")?.unwrap_or_default();
            let folder = meta_get(&conn, "folder")?.unwrap_or_default();
            return Err(DbError::AlreadyInitialized { path: path.display().to_string(), site, folder });
        }
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mapping = match params.mapping {
            Some(m) => m,
            None => {
                let user_tables: i64 = tx.query_row(
                    "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
                    [],
                    |r| r.get(0),
                )?;
                if user_tables == 0 {
                    tx.execute_batch(REFERENCE_SCHEMA)?;
                }
                Mapping::builtin()
            }
        };
        mapping.validate(&tx)?;
        schema::create_all(&tx)?;
        schema::install_triggers(&tx, &mapping)?;
        bulk::start(&tx, &mapping)?;
        for (key, value) in [
            ("state_format", STATE_FORMAT.to_string()),
            ("site_id", params.site.to_string()),
            ("family_id", params.family.to_string()),
            ("site_name", params.name.clone()),
            ("folder", params.folder.display().to_string()),
            ("machine", params.machine.clone()),
            ("mapping", mapping.to_toml()),
            ("created_ms", params.now_ms.to_string()),
            ("hlc_wall", "0".into()),
            ("hlc_counter", "0".into()),
            // Until the folder is set up too (engine::init removes it).
            ("init_unfinished", "1".into()),
        ] {
            meta_set(&tx, key, &value)?;
        }
        tx.commit()?;
        let columns = load_columns(&conn, &mapping)?;
        Ok(Db { conn, path: path.to_path_buf(), mapping, columns })
    }

    /// `clinic.db` in `dir` set up for a test site (ids 01.., family 02..,
    /// the folder `dir/folder`, created at 1,000 ms), with `mapping` or the
    /// reference schema.
    #[cfg(test)]
    pub(crate) fn init_for_test(dir: &Path, mapping: Option<Mapping>) -> Db {
        let params = InitParams {
            site: SiteId::from_bytes([1; 16]),
            family: FamilyId::from_bytes([2; 16]),
            name: "a".into(),
            folder: dir.join("folder"),
            machine: "m".into(),
            mapping,
            now_ms: 1_000,
        };
        Db::init(&dir.join("clinic.db"), params).expect("set up a test database")
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    /// The underlying connection, for read-only queries by callers.
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    pub fn site_config(&self) -> Result<SiteConfig, DbError> {
        let get = |k: &str| -> Result<String, DbError> {
            self.meta(k)?.ok_or_else(|| DbError::Corrupt(format!("no {k} recorded")))
        };
        let site = SiteId::parse(&get("site_id")?).map_err(|e| DbError::Corrupt(e.to_string()))?;
        let family = FamilyId::parse(&get("family_id")?).map_err(|e| DbError::Corrupt(e.to_string()))?;
        Ok(SiteConfig {
            site,
            family,
            name: get("site_name")?,
            folder: PathBuf::from(get("folder")?),
            machine: get("machine")?,
        })
    }

    fn clock(&self) -> Result<HlcClock, DbError> {
        let site = self.site_config()?.site;
        let wall = self.meta("hlc_wall")?.and_then(|v| v.parse().ok()).unwrap_or(0);
        let counter = self.meta("hlc_counter")?.and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok(HlcClock::new(site, wall, counter))
    }

    /// Starts a write transaction: takes the write lock and silences the
    /// capture triggers. Every row it joins is first stamped if the app
    /// changed it, so nothing the app wrote can be overwritten unseen.
    pub fn begin_write(&mut self, now_ms: u64) -> Result<WriteTx<'_>, DbError> {
        let clock = self.clock()?;
        let site = clock.site();
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute("INSERT INTO _cs_quiet (x) VALUES (1)", [])?;
        // Nobody else writes while this transaction holds the write lock, so
        // if nothing is pending now, nothing will be until it ends.
        let pending: bool = tx.query_row("SELECT EXISTS (SELECT 1 FROM _cs_pending)", [], |r| r.get(0))?;
        let any_purged: bool = tx.query_row("SELECT EXISTS (SELECT 1 FROM _cs_purged)", [], |r| r.get(0))?;
        let any_parked: bool =
            tx.query_row("SELECT EXISTS (SELECT 1 FROM _cs_unprojected)", [], |r| r.get(0))?;
        let digests = digests::any(&tx)?;
        Ok(WriteTx {
            digests,
            pending,
            clock_at_start: clock,
            tx,
            mapping: &self.mapping,
            columns: &self.columns,
            clock,
            site,
            now_ms,
            batch: StampBatch::default(),
            hold_deletes: false,
            any_purged,
            any_parked: std::cell::Cell::new(any_parked),
        })
    }

    /// The rows digests these patients have (see digests.rs).
    pub(crate) fn digests_of(&self, patients: &[&str]) -> Result<HashMap<String, RowsDigest>, DbError> {
        let mut out = HashMap::new();
        for p in patients {
            if let Some(d) = digests::get(&self.conn, p)? {
                out.insert((*p).to_owned(), d);
            }
        }
        Ok(out)
    }

    /// The patients whose recorded rows digest is not that of their rows
    /// as this database encodes them now: none, unless a write of the
    /// state failed to keep the digests up. A check for tests and for
    /// support; reads every patient that has a digest.
    pub fn stale_digests(&self) -> Result<Vec<String>, DbError> {
        let patients: Vec<String> = self
            .conn
            .prepare("SELECT patient FROM _cs_digests ORDER BY patient")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let mut stale = Vec::new();
        for patient in patients {
            // Through the decoder, not the in-place writer read-repair uses.
            let ours = crate::xmlstore::encode_patient(&self.doc_for_patient(&patient)?);
            if RowsDigest::of_file(&ours, &patient) != digests::get(&self.conn, &patient)? {
                stale.push(patient);
            }
        }
        Ok(stale)
    }

    /// Records patients' rows digests, each computed from this database's
    /// encoding of the patient with no write to the state since it was
    /// read (the caller's promise; see digests.rs).
    pub(crate) fn store_digests(&mut self, found: &[(String, RowsDigest)]) -> Result<(), DbError> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for (patient, digest) in found {
            digests::put(&tx, patient, *digest)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// These patients' rows as stored, to decode on any thread (a patient
    /// with no rows is left out).
    pub fn stored_patients(&self, patients: &[&str]) -> Result<Vec<StoredPatient>, DbError> {
        patients::stored_patients(&self.conn, patients)
    }

    /// These patients' rows as stored, to write their files from, or why
    /// a patient's file would be beyond `limits`, until they hold `budget`
    /// bytes (see `patients::stored_for_files`).
    pub fn stored_for_files(
        &self,
        patients: &[&str],
        limits: &crate::xmlstore::Limits,
        budget: u64,
    ) -> Result<Vec<ForFile>, DbError> {
        patients::stored_for_files(&self.conn, patients, limits, budget)
    }

    /// Reads what a run looks up about these patients before it writes
    /// their files, on other threads and connections while this one goes
    /// on: each patient's digest and its file's record, then its stored
    /// rows. The run's own lookups of them (the digests, the file records,
    /// [`Db::stored_for_files`]) then find their pages in the system's cache
    /// instead of waiting on the disk for each in turn (a family that has
    /// not been read for a while). `files`: (patient, the path of its
    /// file). Changes and keeps nothing; waited for when dropped.
    pub fn read_ahead(&self, files: Vec<(String, String)>) -> ReadAhead {
        read_ahead::spawn(&self.path, files, |conn, part| {
            for (patient, path) in &part {
                digests::read_ahead(conn, patient)?;
                files::read_record_ahead(conn, path)?;
            }
            let patients: Vec<&str> = part.iter().map(|(patient, _)| patient.as_str()).collect();
            patients::read_rows_ahead(conn, &patients)
        })
    }

    /// The document of one patient as this database knows it.
    pub fn doc_for_patient(&self, patient: &str) -> Result<PatientDoc, DbError> {
        patients::doc_for_patient(&self.conn, patient)
    }

    /// Rows the app changed that are not yet exported (the "turns red"
    /// indicator), counting both captured rows and unwritten exports.
    pub fn pending_changes(&self) -> Result<u64, DbError> {
        let rows: i64 = self.conn.query_row(
            "SELECT count(*) FROM (SELECT DISTINCT tbl, pk FROM _cs_pending)",
            [],
            |r| r.get(0),
        )?;
        let outbox: i64 = self.conn.query_row(
            "SELECT count(*) FROM _cs_outbox_patients WHERE seq IN (SELECT seq FROM _cs_outbox WHERE done_ms IS NULL)",
            [],
            |r| r.get(0),
        )?;
        // The first export: rows stamped but not yet in the folder, and
        // what it has not reached.
        let stamped: i64 = self.conn.query_row(
            "SELECT coalesce(sum(rows), 0) FROM _cs_outbox WHERE from_row IS NOT NULL AND segment_ms IS NULL",
            [],
            |r| r.get(0),
        )?;
        let first = bulk::left(&self.conn, &self.mapping)?;
        Ok(rows as u64 + outbox as u64 + stamped as u64 + first)
    }

    /// Rows the app changed and no export has stamped yet, per table (only
    /// the tables with some).
    pub fn pending_by_table(&self) -> Result<BTreeMap<String, u64>, DbError> {
        let mut stmt = self.conn.prepare(
            "SELECT tbl, count(*) FROM (SELECT DISTINCT tbl, pk FROM _cs_pending) WHERE tbl IS NOT NULL GROUP BY tbl",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.max(0) as u64)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Whether the app changed anything since the last export (one read; no
    /// write transaction needed to find out).
    pub fn has_pending(&self) -> Result<bool, DbError> {
        Ok(self.has_captured()? || self.first_export_unfinished()?)
    }

    /// Whether the rows the database held when it was set up are not all
    /// stamped yet (the first export is done in bounded steps; see
    /// [`WriteTx::stamp_first_export`]).
    pub fn first_export_unfinished(&self) -> Result<bool, DbError> {
        Ok(bulk::stage(&self.conn)?.is_some())
    }

    /// The stage of the first export while it is unfinished.
    pub fn first_export(&self) -> Result<Option<FirstExport>, DbError> {
        bulk::stage(&self.conn)
    }

    /// The first export's next patients (in patient order, after `after`),
    /// each as this database knows it, for writing their files.
    pub fn first_export_patients(
        &self,
        after: Option<&str>,
        max: usize,
    ) -> Result<Vec<StoredPatient>, DbError> {
        bulk::next_patients(&self.conn, after, max)
    }

    /// Rows the first export has not stamped yet, or patients whose files
    /// it has not written.
    pub fn first_export_left(&self) -> Result<u64, DbError> {
        bulk::left(&self.conn, &self.mapping)
    }

    /// Records that the first export's patient files are written up to
    /// `patient` (`None`: all; the first export is finished).
    pub fn first_export_files_until(&self, patient: Option<&str>) -> Result<(), DbError> {
        bulk::files_written_until(&self.conn, patient)
    }

    /// Whether some rows wait outside the app's tables.
    pub fn has_parked(&self) -> Result<bool, DbError> {
        Ok(self.conn.query_row("SELECT EXISTS (SELECT 1 FROM _cs_unprojected)", [], |r| r.get(0))?)
    }
}

impl Db {
    /// Every row of every mapped table, ordered by key: what two converged
    /// sites must agree on (the demo and the tests compare these).
    pub fn dump_mapped_tables(&self) -> Result<TableDump, DbError> {
        let mut out = Vec::new();
        for table in self.mapping.tables() {
            let (key, _) = self.mapping.table(table).expect("a mapped table");
            let mut stmt = self.conn.prepare(&format!(
                "SELECT * FROM {} ORDER BY {}",
                schema::quote(table),
                schema::quote(key)
            ))?;
            let n = stmt.column_count();
            let rows = stmt
                .query_map([], |r| {
                    (0..n).map(|i| Ok(values::from_ref(r.get_ref(i)?))).collect::<rusqlite::Result<Vec<_>>>()
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            out.push((table.to_owned(), rows));
        }
        Ok(out)
    }

    /// Whether the app changed rows since the last export (the capture
    /// queue; the first export is not counted).
    pub fn has_captured(&self) -> Result<bool, DbError> {
        Ok(self.conn.query_row("SELECT EXISTS (SELECT 1 FROM _cs_pending)", [], |r| r.get(0))?)
    }

    /// Records that a first-export step's segment is in the folder (its
    /// patient files are the first export's last stage).
    pub fn first_export_segment_written(&self, seq: u64, now_ms: u64) -> Result<(), DbError> {
        self.conn.execute(
            "UPDATE _cs_outbox SET segment_ms = coalesce(segment_ms, ?2), done_ms = coalesce(done_ms, ?2)
             WHERE seq = ?1",
            params![seq as i64, now_ms as i64],
        )?;
        Ok(())
    }

    /// Whether a first-export step's segment is not in the folder yet
    /// (until it is, nothing else may change the state it is made from).
    pub fn first_export_unwritten(&self) -> Result<bool, DbError> {
        Ok(self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM _cs_outbox WHERE from_row IS NOT NULL AND segment_ms IS NULL)",
            [],
            |r| r.get(0),
        )?)
    }
}

impl Db {
    /// Moves this database to a new site id, in one transaction. The new
    /// identity starts its own change-log: exports whose segments are already
    /// in the folder belong to the old site's log (other sites have them there, and this database
    /// gets its old site's later changes back as imports from it); exports
    /// not yet written are renumbered from 1 and re-encoded under the new id.
    pub fn reassign(&mut self, new_site: SiteId, machine: &str) -> Result<(), DbError> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Exports whose segment is in the folder belong to the old site's log.
        tx.execute(
            "DELETE FROM _cs_outbox_patients WHERE seq IN (SELECT seq FROM _cs_outbox WHERE segment_ms IS NOT NULL)",
            [],
        )?;
        tx.execute("DELETE FROM _cs_outbox WHERE segment_ms IS NOT NULL", [])?;
        let undone: Vec<(i64, Option<Vec<u8>>)> = {
            let mut stmt = tx.prepare("SELECT seq, segment FROM _cs_outbox ORDER BY seq")?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<_>>()?
        };
        for (n, (old_seq, segment)) in undone.into_iter().enumerate() {
            let new_seq = n as i64 + 1;
            let segment = match segment {
                Some(bytes) => {
                    let mut s = crate::xmlstore::decode_segment(&bytes, crate::xmlstore::Limits::default())
                        .map_err(|e| DbError::Corrupt(format!("unwritten export #{old_seq}: {e}")))?;
                    s.site = new_site;
                    s.seq = new_seq as u64;
                    Some(crate::xmlstore::encode_segment(&s))
                }
                None => None,
            };
            tx.execute(
                "UPDATE _cs_outbox SET seq = ?2, segment = ?3 WHERE seq = ?1",
                params![old_seq, new_seq, segment],
            )?;
            tx.execute("UPDATE _cs_outbox_patients SET seq = ?2 WHERE seq = ?1", params![old_seq, new_seq])?;
        }
        meta_set(&tx, "site_id", &new_site.to_string())?;
        meta_set(&tx, "machine", machine)?;
        meta_set(&tx, "oldest_seq", "1")?;
        tx.commit()?;
        Ok(())
    }
}
