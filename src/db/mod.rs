//! SQLite: the table mapping, the capture triggers, clinicsync's `_cs_`
//! state tables and the run log. The database uses WAL and a busy timeout so
//! the app keeps writing while a sync runs; clinicsync's write transactions
//! are short and take the write lock up front.

mod mapping;
mod runs;
mod schema;
mod state;
mod values;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};

pub use mapping::{ChildTable, Mapping, MappingError, REFERENCE_SCHEMA, RootTable, TableRole};
pub use runs::{ConflictRecord, EventRecord, RunRecord};
pub use state::{ApplyOutcome, StampOutcome};

use crate::model::{FamilyId, HlcClock, PatientDoc, SiteId};
use state::Ctx;

/// The version of the `_cs_` tables this build understands.
pub const STATE_FORMAT: i64 = 1;

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
    #[error("database error: {0}")]
    Sql(#[from] rusqlite::Error),
}

impl DbError {
    /// True for a lock that did not clear within the busy timeout.
    pub fn is_transient(&self) -> bool {
        matches!(self, DbError::Sql(rusqlite::Error::SqliteFailure(e, _))
            if matches!(e.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked))
    }
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
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

fn has_state(conn: &Connection) -> Result<bool, DbError> {
    let n: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '_cs_meta'",
        [],
        |r| r.get(0),
    )?;
    Ok(n > 0)
}

fn meta_get(conn: &Connection, key: &str) -> Result<Option<String>, DbError> {
    Ok(conn
        .prepare_cached("SELECT value FROM _cs_meta WHERE key = ?1")?
        .query_row([key], |r| r.get::<_, rusqlite::types::Value>(0))
        .optional()?
        .map(|v| match v {
            rusqlite::types::Value::Integer(i) => i.to_string(),
            rusqlite::types::Value::Real(r) => r.to_string(),
            rusqlite::types::Value::Text(t) => t,
            rusqlite::types::Value::Blob(_) | rusqlite::types::Value::Null => String::new(),
        }))
}

fn meta_set(conn: &Connection, key: &str, value: &str) -> Result<(), DbError> {
    conn.prepare_cached("INSERT INTO _cs_meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value")?
        .execute(params![key, value])?;
    Ok(())
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
        let mapping_text =
            meta_get(&conn, "mapping")?.ok_or_else(|| DbError::Corrupt("no mapping recorded".into()))?;
        let mapping = Mapping::from_toml(&mapping_text)?;
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
        tx.execute_batch(schema::STATE_TABLES)?;
        schema::install_triggers(&tx, &mapping)?;
        schema::queue_all_rows(&tx, &mapping)?;
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
        ] {
            meta_set(&tx, key, &value)?;
        }
        tx.commit()?;
        let columns = load_columns(&conn, &mapping)?;
        Ok(Db { conn, path: path.to_path_buf(), mapping, columns })
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

    pub fn meta(&self, key: &str) -> Result<Option<String>, DbError> {
        meta_get(&self.conn, key)
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), DbError> {
        meta_set(&self.conn, key, value)
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

    /// Starts a write transaction: takes the write lock, silences the
    /// capture triggers, and first turns the app's pending changes into
    /// versions, so nothing the app wrote can be overwritten unseen.
    pub fn begin_write(&mut self, now_ms: u64) -> Result<WriteTx<'_>, DbError> {
        let mut clock = self.clock()?;
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute("INSERT INTO _cs_quiet (x) VALUES (1)", [])?;
        let ctx = Ctx { mapping: &self.mapping, columns: &self.columns };
        let stamped = state::stamp_pending(&tx, &ctx, &mut clock, now_ms)?;
        Ok(WriteTx {
            tx,
            mapping: &self.mapping,
            columns: &self.columns,
            clock,
            now_ms,
            stamped: Some(stamped),
        })
    }

    /// The document of one patient as this database knows it.
    pub fn doc_for_patient(&self, patient: &str) -> Result<PatientDoc, DbError> {
        state::doc_for_patient(&self.conn, patient)
    }

    /// Patients of exports whose files are not all written yet.
    pub fn outbox_patients(&self) -> Result<(Option<u64>, Vec<String>), DbError> {
        let max: Option<i64> =
            self.conn.query_row("SELECT max(seq) FROM _cs_outbox WHERE done_ms IS NULL", [], |r| r.get(0))?;
        let mut stmt = self.conn.prepare(
            "SELECT DISTINCT p.patient FROM _cs_outbox_patients p JOIN _cs_outbox o ON o.seq = p.seq
             WHERE o.done_ms IS NULL ORDER BY p.patient",
        )?;
        let patients = stmt.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
        Ok((max.map(|m| m as u64), patients))
    }

    /// Marks every export up to `seq` as fully written.
    pub fn outbox_done(&self, seq: u64, now_ms: u64) -> Result<(), DbError> {
        self.conn.execute(
            "UPDATE _cs_outbox SET done_ms = ?2 WHERE seq <= ?1 AND done_ms IS NULL",
            params![seq as i64, now_ms as i64],
        )?;
        Ok(())
    }

    /// The highest export sequence number committed.
    pub fn head_seq(&self) -> Result<u64, DbError> {
        let max: Option<i64> = self.conn.query_row("SELECT max(seq) FROM _cs_outbox", [], |r| r.get(0))?;
        Ok(max.unwrap_or(0) as u64)
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
            "SELECT count(*) FROM _cs_outbox_patients p JOIN _cs_outbox o ON o.seq = p.seq WHERE o.done_ms IS NULL",
            [],
            |r| r.get(0),
        )?;
        Ok((rows + outbox) as u64)
    }

    /// What the file cache knows of a patient file: (size, mtime, sha256).
    pub fn file_seen(&self, path: &str) -> Result<Option<(u64, i64, String)>, DbError> {
        Ok(self
            .conn
            .prepare_cached("SELECT size, mtime_ns, sha256 FROM _cs_files WHERE path = ?1")?
            .query_row([path], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?, r.get(2)?)))
            .optional()?)
    }

    /// The number of patients this database holds (alive or deleted).
    pub fn patient_count(&self) -> Result<u64, DbError> {
        let n: i64 = self.conn.query_row(
            "SELECT count(DISTINCT patient) FROM _cs_rows WHERE patient IS NOT NULL",
            [],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }
}

/// A write transaction on the state. Dropping it without `commit` rolls
/// everything back.
pub struct WriteTx<'a> {
    tx: rusqlite::Transaction<'a>,
    mapping: &'a Mapping,
    columns: &'a BTreeMap<String, Vec<String>>,
    clock: HlcClock,
    now_ms: u64,
    stamped: Option<StampOutcome>,
}

impl WriteTx<'_> {
    /// What turning pending changes into versions did at the start.
    pub fn take_stamped(&mut self) -> StampOutcome {
        self.stamped.take().unwrap_or_default()
    }

    /// Joins one incoming document, all or nothing: on error nothing of it
    /// stays applied and the transaction remains usable.
    pub fn apply_doc(&mut self, doc: &PatientDoc, source: &str) -> Result<ApplyOutcome, DbError> {
        let sp = self.tx.savepoint()?;
        let ctx = Ctx { mapping: self.mapping, columns: self.columns };
        let outcome = state::apply_doc(&sp, &ctx, doc, source, self.now_ms)?;
        sp.commit()?;
        for stamp in doc.stamps() {
            self.clock.observe(stamp);
        }
        Ok(outcome)
    }

    /// Records that a patient file's content was applied, for the full scan
    /// to skip it while it is unchanged.
    pub fn record_file(&self, path: &str, size: u64, mtime_ns: i64, sha256: &str) -> Result<(), DbError> {
        self.tx
            .prepare_cached(
                "INSERT INTO _cs_files (path, size, mtime_ns, sha256) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (path) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns, sha256 = excluded.sha256",
            )?
            .execute(params![path, size as i64, mtime_ns, sha256])?;
        Ok(())
    }

    pub fn commit(self) -> Result<(), DbError> {
        let (wall, counter) = self.clock.state();
        meta_set(&self.tx, "hlc_wall", &wall.to_string())?;
        meta_set(&self.tx, "hlc_counter", &counter.to_string())?;
        self.tx.execute("DELETE FROM _cs_quiet", [])?;
        self.tx.commit()?;
        Ok(())
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
}
