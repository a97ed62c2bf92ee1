//! clinicsync's own tables (all prefixed `_cs_`) and the capture triggers it
//! installs on every mapped table.

use rusqlite::Connection;

use super::mapping::Mapping;

/// The `_cs_` tables. Idempotent.
pub(crate) const STATE_TABLES: &str = "
CREATE TABLE IF NOT EXISTS _cs_meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
-- Holds a row only inside clinicsync's own write transactions: the capture
-- triggers stay quiet while it does, so applied changes never echo back.
CREATE TABLE IF NOT EXISTS _cs_quiet (x INTEGER);
-- Filled by the triggers: which rows the app touched since the last export.
CREATE TABLE IF NOT EXISTS _cs_pending (id INTEGER PRIMARY KEY, tbl TEXT, pk TEXT);
CREATE INDEX IF NOT EXISTS _cs_pending_row ON _cs_pending (tbl, pk);
-- Per replicated row: causal length (odd alive, even deleted), the patient it
-- belongs to, and the maximal versions of its fields (see rowblob.rs).
CREATE TABLE IF NOT EXISTS _cs_rows (tbl TEXT NOT NULL, pk TEXT NOT NULL, cl INTEGER NOT NULL,
  patient TEXT, state BLOB NOT NULL, PRIMARY KEY (tbl, pk));
CREATE INDEX IF NOT EXISTS _cs_rows_patient ON _cs_rows (patient);
-- Exports: one per change-log segment. The segment's bytes are kept until
-- the segment and every affected patient file are written.
-- segment_ms: when its segment reached the folder (what readers may see);
-- done_ms: when every patient file it touched was written too.
-- from_row, to_row: a first-export step's segment is not stored; it is
-- made from the _cs_rows rows with rowids in (from_row, to_row].
CREATE TABLE IF NOT EXISTS _cs_outbox (seq INTEGER PRIMARY KEY, created_ms INTEGER NOT NULL,
  segment BLOB, rows INTEGER NOT NULL DEFAULT 0, segment_ms INTEGER, done_ms INTEGER,
  from_row INTEGER, to_row INTEGER);
CREATE TABLE IF NOT EXISTS _cs_outbox_patients (seq INTEGER NOT NULL, patient TEXT NOT NULL,
  PRIMARY KEY (seq, patient)) WITHOUT ROWID;
-- Rows the state holds but the app's table cannot show yet (a NOT NULL or
-- CHECK constraint refuses the fields known so far); retried every run.
CREATE TABLE IF NOT EXISTS _cs_unprojected (tbl TEXT NOT NULL, pk TEXT NOT NULL, reason TEXT NOT NULL,
  PRIMARY KEY (tbl, pk)) WITHOUT ROWID;
-- The last segment applied from each other site.
CREATE TABLE IF NOT EXISTS _cs_watermarks (site TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
-- Concurrent edits of one field (kind 'edit'), or an edit a concurrent
-- delete did not see (kind 'deleted'): the value that lost, kept for review.
CREATE TABLE IF NOT EXISTS _cs_conflicts (id INTEGER PRIMARY KEY, tbl TEXT NOT NULL,
  pk TEXT NOT NULL, col TEXT NOT NULL, value, hlc TEXT NOT NULL, base TEXT, winner_value,
  winner_hlc TEXT NOT NULL, patient TEXT, source TEXT, detected_ms INTEGER NOT NULL,
  status TEXT NOT NULL DEFAULT 'open', resolved_ms INTEGER, kind TEXT NOT NULL DEFAULT 'edit',
  UNIQUE (tbl, pk, col, hlc));
-- Latest Logs.
CREATE TABLE IF NOT EXISTS _cs_runs (id INTEGER PRIMARY KEY, started_ms INTEGER NOT NULL,
  ended_ms INTEGER, trigger TEXT NOT NULL, outcome TEXT, summary TEXT);
CREATE TABLE IF NOT EXISTS _cs_run_events (id INTEGER PRIMARY KEY, run_id INTEGER NOT NULL,
  at_ms INTEGER NOT NULL, level TEXT NOT NULL, kind TEXT NOT NULL, path TEXT, message TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS _cs_run_events_run ON _cs_run_events (run_id);
-- What a full scan last applied from each patient file, to skip unchanged files.
CREATE TABLE IF NOT EXISTS _cs_files (path TEXT PRIMARY KEY, size INTEGER NOT NULL,
  mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL) WITHOUT ROWID;
";

pub(crate) fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Creates (or re-creates) the capture triggers of every mapped table. The
/// triggers record only which row changed; the export compares the row with
/// its recorded versions to find the changed columns, so columns the app adds
/// later are captured without new triggers.
pub(crate) fn install_triggers(conn: &Connection, mapping: &Mapping) -> rusqlite::Result<()> {
    for table in mapping.tables() {
        let (key, _) = mapping.table(table).expect("a mapped table");
        let t = quote(table);
        let k = quote(key);
        let lit = format!("'{}'", table.replace('\'', "''"));
        let quiet = "WHEN NOT EXISTS (SELECT 1 FROM _cs_quiet)";
        conn.execute_batch(&format!(
            "DROP TRIGGER IF EXISTS \"_cs_{table}_ai\";
             DROP TRIGGER IF EXISTS \"_cs_{table}_au\";
             DROP TRIGGER IF EXISTS \"_cs_{table}_ad\";
             CREATE TRIGGER \"_cs_{table}_ai\" AFTER INSERT ON {t} {quiet} BEGIN
               INSERT INTO _cs_pending (tbl, pk) VALUES ({lit}, NEW.{k});
             END;
             CREATE TRIGGER \"_cs_{table}_au\" AFTER UPDATE ON {t} {quiet} BEGIN
               INSERT INTO _cs_pending (tbl, pk) VALUES ({lit}, OLD.{k});
               INSERT INTO _cs_pending (tbl, pk) SELECT {lit}, NEW.{k} WHERE NEW.{k} IS NOT OLD.{k};
             END;
             CREATE TRIGGER \"_cs_{table}_ad\" AFTER DELETE ON {t} {quiet} BEGIN
               INSERT INTO _cs_pending (tbl, pk) VALUES ({lit}, OLD.{k});
             END;"
        ))?;
    }
    Ok(())
}
