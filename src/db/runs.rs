//! Latest Logs and conflict records: what each run did, and the values that
//! lost a concurrent edit.

use rusqlite::{OptionalExtension, params};

use super::{Db, DbError};

pub(super) const TABLE: &str = "
-- Latest Logs.
CREATE TABLE IF NOT EXISTS _cs_runs (id INTEGER PRIMARY KEY, started_ms INTEGER NOT NULL,
  ended_ms INTEGER, trigger TEXT NOT NULL, outcome TEXT, summary TEXT);
CREATE TABLE IF NOT EXISTS _cs_run_events (id INTEGER PRIMARY KEY, run_id INTEGER NOT NULL,
  at_ms INTEGER NOT NULL, level TEXT NOT NULL, kind TEXT NOT NULL, path TEXT, message TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS _cs_run_events_run ON _cs_run_events (run_id);
-- The runs that ended ok by their end: the last sync's time is asked for often.
CREATE INDEX IF NOT EXISTS _cs_runs_ok ON _cs_runs (ended_ms) WHERE outcome = 'ok';
";

/// One run, as `clinicsync log` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RunRecord {
    pub id: i64,
    pub started_ms: u64,
    pub ended_ms: Option<u64>,
    pub trigger: String,
    /// `ok`, `partial`, `failed`; `None` for a run that never finished
    /// (the process was stopped or crashed).
    pub outcome: Option<String>,
    pub summary: Option<serde_json::Value>,
}

/// One event of a run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EventRecord {
    pub at_ms: u64,
    /// `info`, `warning` or `error`.
    pub level: String,
    pub kind: String,
    pub path: Option<String>,
    pub message: String,
}

/// The trigger of a run of one table starts with this (`only appointments`).
pub const TABLE_RUN_PREFIX: &str = "only ";
/// The record of an operation (`verify`, `baseline ...`) in Latest Logs has
/// a trigger starting with this; it is not a sync.
pub const OPERATION_PREFIX: &str = "operation ";

/// The records that are syncs (not operations).
const A_SYNC: &str = "trigger NOT LIKE 'operation %'";
/// The runs that sync everything: not documents only, not one table, not
/// an operation.
const A_COMPLETE_SYNC: &str =
    "trigger NOT LIKE 'operation %' AND trigger NOT LIKE 'only %' AND trigger IS NOT 'documents'";

const RUN_COLUMNS: &str = "SELECT id, started_ms, ended_ms, trigger, outcome, summary FROM _cs_runs";

fn run_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRecord> {
    let summary: Option<String> = r.get(5)?;
    Ok(RunRecord {
        id: r.get(0)?,
        started_ms: r.get::<_, i64>(1)? as u64,
        ended_ms: r.get::<_, Option<i64>>(2)?.map(|v| v as u64),
        trigger: r.get(3)?,
        outcome: r.get(4)?,
        summary: summary.and_then(|s| serde_json::from_str(&s).ok()),
    })
}

impl Db {
    /// Records the start of a run; returns its id.
    pub fn begin_run(&self, trigger: &str, now_ms: u64) -> Result<i64, DbError> {
        self.conn.execute(
            "INSERT INTO _cs_runs (started_ms, trigger) VALUES (?1, ?2)",
            params![now_ms as i64, trigger],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Records the end of a run with its events, in one transaction.
    pub fn finish_run(
        &mut self,
        id: i64,
        now_ms: u64,
        outcome: &str,
        summary: &serde_json::Value,
        events: &[EventRecord],
    ) -> Result<(), DbError> {
        let tx = self.conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO _cs_run_events (run_id, at_ms, level, kind, path, message) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for e in events {
                insert.execute(params![id, e.at_ms as i64, e.level, e.kind, e.path, e.message])?;
            }
        }
        tx.execute(
            "UPDATE _cs_runs SET ended_ms = ?2, outcome = ?3, summary = ?4 WHERE id = ?1",
            params![id, now_ms as i64, outcome, summary.to_string()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The newest runs first.
    pub fn recent_runs(&self, limit: u32) -> Result<Vec<RunRecord>, DbError> {
        let mut stmt = self.conn.prepare(&format!("{RUN_COLUMNS} ORDER BY id DESC LIMIT ?1"))?;
        let rows = stmt.query_map([limit], run_record)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Whether the run before `run_id` never finished (the process was
    /// killed, or the computer stopped).
    pub fn run_before_interrupted(&self, run_id: i64) -> Result<bool, DbError> {
        Ok(self
            .conn
            .query_row(
                "SELECT outcome IS NULL FROM _cs_runs WHERE id < ?1 ORDER BY id DESC LIMIT 1",
                [run_id],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(false))
    }

    /// The last sync that finished, whatever its outcome.
    pub fn last_finished_run(&self) -> Result<Option<RunRecord>, DbError> {
        // From the newest back to the first that matches.
        let sql = format!("{RUN_COLUMNS} WHERE outcome IS NOT NULL AND {A_SYNC} ORDER BY id DESC LIMIT 1");
        Ok(self.conn.query_row(&sql, [], run_record).optional()?)
    }

    /// The end time of the last complete sync that ended `ok`.
    pub fn last_ok_ms(&self) -> Result<Option<u64>, DbError> {
        // The latest end first (an ok run has one), to the first that is a
        // complete sync.
        let v: Option<i64> = self
            .conn
            .query_row(
                &format!(
                    "SELECT ended_ms FROM _cs_runs WHERE outcome = 'ok' AND {A_COMPLETE_SYNC} ORDER BY ended_ms DESC LIMIT 1"
                ),
                [],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        Ok(v.map(|v| v as u64))
    }

    pub fn run_events(&self, run_id: i64) -> Result<Vec<EventRecord>, DbError> {
        let mut stmt = self.conn.prepare(
            "SELECT at_ms, level, kind, path, message FROM _cs_run_events WHERE run_id = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map([run_id], |r| {
            Ok(EventRecord {
                at_ms: r.get::<_, i64>(0)? as u64,
                level: r.get(1)?,
                kind: r.get(2)?,
                path: r.get(3)?,
                message: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}
