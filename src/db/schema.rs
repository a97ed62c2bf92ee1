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
-- Filled by the triggers: which rows the app touched since the last export,
-- and when (ms since the epoch, by the computer's clock as the app wrote).
CREATE TABLE IF NOT EXISTS _cs_pending (id INTEGER PRIMARY KEY, tbl TEXT, pk TEXT, at_ms INTEGER);
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

/// The time of the app's write, in ms since the epoch, as the triggers
/// record it. `julianday('now')` is in every SQLite an app may link (and is
/// the same for every row one statement writes); it counts whole ms.
const NOW_MS: &str = "CAST(round((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER)";

/// Creates (or re-creates) the capture triggers of every mapped table. The
/// triggers record only which row changed and when; the export compares the
/// row with its recorded versions to find the changed columns, so columns
/// the app adds later are captured without new triggers, and stamps them
/// with the time of the app's last write of the row.
pub(crate) fn install_triggers(conn: &Connection, mapping: &Mapping) -> rusqlite::Result<()> {
    let now = NOW_MS;
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
               INSERT INTO _cs_pending (tbl, pk, at_ms) VALUES ({lit}, NEW.{k}, {now});
             END;
             CREATE TRIGGER \"_cs_{table}_au\" AFTER UPDATE ON {t} {quiet} BEGIN
               INSERT INTO _cs_pending (tbl, pk, at_ms) VALUES ({lit}, OLD.{k}, {now});
               INSERT INTO _cs_pending (tbl, pk, at_ms) SELECT {lit}, NEW.{k}, {now} WHERE NEW.{k} IS NOT OLD.{k};
             END;
             CREATE TRIGGER \"_cs_{table}_ad\" AFTER DELETE ON {t} {quiet} BEGIN
               INSERT INTO _cs_pending (tbl, pk, at_ms) VALUES ({lit}, OLD.{k}, {now});
             END;"
        ))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::db::Db;
    use crate::model::RowKey;

    fn init(dir: &std::path::Path) -> Db {
        Db::init_for_test(dir, None)
    }

    fn stamp_wall(db: &Db, pk: &str) -> u64 {
        let doc = db.doc_for_patient(pk).unwrap();
        doc.rows[&RowKey { table: "patients".into(), pk: pk.into() }].fields["family_name"]
            .winner()
            .hlc()
            .wall_ms()
    }

    #[test]
    fn an_edit_is_stamped_with_the_time_the_app_wrote_it_never_later_than_now() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = init(dir.path());
        let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
        db.conn()
            .execute("INSERT INTO patients (id, family_name) VALUES ('p1', 'Ames'), ('p2', 'Bell'), ('p3', 'Cole')", [])
            .unwrap();
        let recorded: i64 =
            db.conn().query_row("SELECT min(at_ms) FROM _cs_pending", [], |r| r.get(0)).unwrap();
        assert!(recorded as u128 >= before.saturating_sub(1), "the trigger records the write's time");
        // The times as a laptop would have recorded them over a day.
        for (pk, at) in [("p1", 5_000), ("p2", 4_000), ("p3", 99_000)] {
            db.conn()
                .execute("UPDATE _cs_pending SET at_ms = ?2 WHERE pk = ?1", rusqlite::params![pk, at])
                .unwrap();
        }
        let mut w = db.begin_write(10_000).unwrap();
        assert!(!w.stamp_pending(100, 1 << 20).unwrap());
        w.commit().unwrap();
        assert_eq!(stamp_wall(&db, "p2"), 4_000);
        assert_eq!(stamp_wall(&db, "p1"), 5_000, "rows go in the order they were written");
        assert_eq!(stamp_wall(&db, "p3"), 10_000, "a time ahead of the sync's clock is not believed");
        let left: i64 = db.conn().query_row("SELECT count(*) FROM _cs_pending", [], |r| r.get(0)).unwrap();
        assert_eq!(left, 0);

        // An edit made before stamps this site has issued since stamps after them.
        db.conn().execute("UPDATE patients SET family_name = 'Ames-Bell' WHERE id = 'p1'", []).unwrap();
        db.conn().execute("UPDATE _cs_pending SET at_ms = 6_000", []).unwrap();
        let mut w = db.begin_write(11_000).unwrap();
        w.stamp_pending(100, 1 << 20).unwrap();
        w.commit().unwrap();
        assert_eq!(stamp_wall(&db, "p1"), 10_000, "after the clock's latest stamp, not before it");
    }

    #[test]
    fn a_database_set_up_before_edit_times_records_them_once_opened() {
        let dir = tempfile::tempdir().unwrap();
        drop(init(dir.path()));
        let conn = rusqlite::Connection::open(dir.path().join("clinic.db")).unwrap();
        // The state as an older clinicsync left it.
        conn.execute_batch(
            "DROP TRIGGER \"_cs_patients_ai\"; DROP TRIGGER \"_cs_patients_au\"; DROP TRIGGER \"_cs_patients_ad\";
             DROP TRIGGER \"_cs_appointments_ai\"; DROP TRIGGER \"_cs_appointments_au\"; DROP TRIGGER \"_cs_appointments_ad\";
             DROP TRIGGER \"_cs_clinical_notes_ai\"; DROP TRIGGER \"_cs_clinical_notes_au\"; DROP TRIGGER \"_cs_clinical_notes_ad\";
             DROP TRIGGER \"_cs_invoices_ai\"; DROP TRIGGER \"_cs_invoices_au\"; DROP TRIGGER \"_cs_invoices_ad\";
             ALTER TABLE _cs_pending DROP COLUMN at_ms;
             CREATE TRIGGER \"_cs_patients_ai\" AFTER INSERT ON patients BEGIN
               INSERT INTO _cs_pending (tbl, pk) VALUES ('patients', NEW.id);
             END;
             INSERT INTO patients (id, family_name) VALUES ('p1', 'Ames');",
        )
        .unwrap();
        let db = Db::open(&dir.path().join("clinic.db")).unwrap();
        db.conn().execute("INSERT INTO patients (id, family_name) VALUES ('p2', 'Bell')", []).unwrap();
        let times: Vec<Option<i64>> = db
            .conn()
            .prepare("SELECT at_ms FROM _cs_pending ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(times.len(), 2);
        assert_eq!(times[0], None, "the older entry has no time: it is stamped with the sync's");
        assert!(times[1].is_some(), "the new trigger records the time");
    }
}
