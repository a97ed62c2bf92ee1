//! The outbox (`_cs_outbox`, `_cs_outbox_patients`): one entry per
//! export, kept until its segment and every patient file it touched are in
//! the folder, so an interrupted export is written again, never lost.

use super::state::StampBatch;
use super::state::StampOutcome;
use crate::model::RowKey;
use crate::model::SiteId;
use std::collections::{BTreeMap, HashSet};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::patients::decode_state;
use super::{Db, DbError};
use crate::xmlstore::{Segment, encode_segment};

pub(super) const TABLE: &str = "
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
-- The exports not done, and those whose segment is not in the folder: every
-- run asks for them, and the done ones are kept (their times), one per export.
CREATE INDEX IF NOT EXISTS _cs_outbox_undone ON _cs_outbox (seq) WHERE done_ms IS NULL;
CREATE INDEX IF NOT EXISTS _cs_outbox_unwritten ON _cs_outbox (seq) WHERE segment_ms IS NULL;
";

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

/// The patients of the undone exports up to `?1`, looked up by their
/// exports' numbers (a join walked every list kept up to `?1`).
const UNDONE_PATIENTS: &str = "SELECT DISTINCT patient FROM _cs_outbox_patients
     WHERE seq IN (SELECT seq FROM _cs_outbox WHERE done_ms IS NULL AND seq <= ?1) ORDER BY patient";

impl Db {
    /// The patients touched by undone exports up to `max_seq`.
    pub fn outbox_patients(&self, max_seq: u64) -> Result<Vec<String>, DbError> {
        let mut stmt = self.conn.prepare(UNDONE_PATIENTS)?;
        let patients = stmt.query_map([max_seq as i64], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
        Ok(patients)
    }

    /// Marks every export up to `seq` as fully written (segment and patient
    /// files) and drops the copies of their segments and their lists of
    /// patients (nothing reads the list of a written export: kept, they
    /// grew by every patient each sync touched).
    pub fn outbox_done(&mut self, seq: u64, now_ms: u64) -> Result<(), DbError> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "UPDATE _cs_outbox SET done_ms = ?2, segment_ms = coalesce(segment_ms, ?2), segment = NULL
             WHERE seq <= ?1 AND done_ms IS NULL",
            params![seq as i64, now_ms as i64],
        )?;
        tx.execute("DELETE FROM _cs_outbox_patients WHERE seq <= ?1", [seq as i64])?;
        tx.commit()?;
        Ok(())
    }

    /// Records that the segments of these exports are in the folder: readers
    /// may see them even while a patient file they touched waits.
    pub fn segments_written(&self, seqs: &[u64], now_ms: u64) -> Result<(), DbError> {
        let mut stmt = self
            .conn
            .prepare_cached("UPDATE _cs_outbox SET segment_ms = ?2 WHERE seq = ?1 AND segment_ms IS NULL")?;
        for seq in seqs {
            stmt.execute(params![*seq as i64, now_ms as i64])?;
        }
        Ok(())
    }

    /// When each own export up to `max_seq` from `from_seq` on was created.
    pub fn export_times(&self, from_seq: u64, max_seq: u64) -> Result<Vec<(u64, u64)>, DbError> {
        let mut stmt = self.conn.prepare(
            "SELECT seq, created_ms FROM _cs_outbox WHERE seq >= ?1 AND seq <= ?2 AND segment_ms IS NOT NULL ORDER BY seq",
        )?;
        let rows = stmt.query_map([from_seq as i64, max_seq as i64], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The highest export sequence number committed.
    pub fn head_seq(&self) -> Result<u64, DbError> {
        let max: Option<i64> = self.conn.query_row("SELECT max(seq) FROM _cs_outbox", [], |r| r.get(0))?;
        Ok(max.unwrap_or(0) as u64)
    }

    /// Leaves these patients' files to the ordinary path (read and join
    /// the file, then write it if it is behind): they join the latest
    /// export's unwritten patients.
    pub fn queue_patient_files(&mut self, patients: &[String]) -> Result<(), DbError> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let seq: Option<i64> = tx.query_row("SELECT max(seq) FROM _cs_outbox", [], |r| r.get(0))?;
        let seq = seq.ok_or_else(|| DbError::Corrupt("the first export recorded no export".into()))?;
        {
            let mut insert = tx
                .prepare_cached("INSERT OR IGNORE INTO _cs_outbox_patients (seq, patient) VALUES (?1, ?2)")?;
            for p in patients {
                insert.execute(params![seq, p])?;
            }
        }
        tx.execute("UPDATE _cs_outbox SET done_ms = NULL WHERE seq = ?1", [seq])?;
        tx.commit()?;
        Ok(())
    }

    /// Undone exports, oldest first.
    pub fn undone_seqs(&self) -> Result<Vec<u64>, DbError> {
        let mut stmt = self.conn.prepare("SELECT seq FROM _cs_outbox WHERE done_ms IS NULL ORDER BY seq")?;
        let rows = stmt.query_map([], |r| Ok(r.get::<_, i64>(0)? as u64))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The bytes of an export's segment while it is not yet in the folder
    /// (once published, only compaction may remove it, and it is never
    /// written again).
    pub fn segment_bytes(&self, seq: u64) -> Result<Option<Vec<u8>>, DbError> {
        type Entry = (Option<Vec<u8>>, i64, Option<i64>, Option<i64>);
        let entry: Option<Entry> = self
            .conn
            .prepare_cached(
                "SELECT segment, created_ms, from_row, to_row FROM _cs_outbox WHERE seq = ?1 AND segment_ms IS NULL",
            )?
            .query_row([seq as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .optional()?;
        match entry {
            Some((Some(bytes), ..)) => Ok(Some(bytes)),
            Some((None, created_ms, Some(from), Some(to))) => {
                let site = self.site_config()?.site;
                Ok(Some(range_segment(&self.conn, site, seq, created_ms as u64, (from, to))?))
            }
            _ => Ok(None),
        }
    }

    /// The highest sequence number up to which every segment is in the
    /// folder: what the site file may announce to readers.
    pub fn written_head(&self) -> Result<u64, DbError> {
        let first_undone: Option<i64> =
            self.conn
                .query_row("SELECT min(seq) FROM _cs_outbox WHERE segment_ms IS NULL", [], |r| r.get(0))?;
        match first_undone {
            Some(seq) => Ok(seq as u64 - 1),
            None => self.head_seq(),
        }
    }
}

impl super::WriteTx<'_> {
    /// Puts the state's rows after `after` (by table and key) into this
    /// transaction's export whole, every version, until `max_rows` rows or
    /// about `max_bytes`: a segment of what this site holds, to make a
    /// damaged folder whole again (`baseline upload`). Returns where to go
    /// on from, or `None` when every row is in.
    pub fn republish_state(
        &mut self,
        after: Option<&(String, String)>,
        max_rows: usize,
        max_bytes: usize,
    ) -> Result<Option<(String, String)>, DbError> {
        let (t, p) = after.cloned().unwrap_or_default();
        let mut stmt = self.tx.prepare_cached(
            "SELECT tbl, pk, cl, patient, state FROM _cs_rows WHERE (tbl, pk) > (?1, ?2) ORDER BY tbl, pk LIMIT ?3",
        )?;
        let mut rows = stmt.query(params![t, p, max_rows as i64])?;
        let (mut last, mut fetched, mut bytes) = (None, 0, 0);
        while let Some(r) = rows.next()? {
            let (tbl, pk, cl, patient, blob): (String, String, i64, Option<String>, Vec<u8>) =
                (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?);
            fetched += 1;
            bytes += 2 * blob.len() + 200;
            let state = super::patients::decode_row(&tbl, &pk, cl, &blob)?;
            if let Some(patient) = patient {
                self.batch.versions += state.fields.values().map(|f| f.versions().len()).sum::<usize>();
                self.batch.patients.insert(patient.clone());
                self.batch.rows.insert((patient, RowKey { table: tbl.clone(), pk: pk.clone() }), state);
            }
            last = Some((tbl, pk));
            if bytes >= max_bytes {
                break;
            }
        }
        Ok(if fetched == max_rows || bytes >= max_bytes { last } else { None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export(db: &mut Db, sql: &str, now_ms: u64) -> u64 {
        db.conn().execute_batch(sql).unwrap();
        let mut w = db.begin_write(now_ms).unwrap();
        assert!(!w.stamp_pending(100, 1 << 20).unwrap());
        w.commit().unwrap().seq.expect("an export")
    }

    fn lists(db: &Db) -> i64 {
        db.conn().query_row("SELECT count(*) FROM _cs_outbox_patients", [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn a_written_exports_patients_go_with_it_and_the_unwritten_ones_are_found_by_export() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::init_for_test(dir.path(), None);
        let first = export(
            &mut db,
            "INSERT INTO patients (id, family_name) VALUES ('p1', 'Ames'), ('p2', 'Bell')",
            2_000,
        );
        let second = export(&mut db, "UPDATE patients SET family_name = 'Cole' WHERE id = 'p2'", 3_000);
        assert_eq!(db.outbox_patients(first).unwrap(), ["p1", "p2"]);
        assert_eq!(db.outbox_patients(second).unwrap(), ["p1", "p2"]);
        assert_eq!(db.pending_changes().unwrap(), 3, "two patients, then one");
        db.outbox_done(first, 4_000).unwrap();
        assert_eq!(lists(&db), 1, "the first export's list went with it");
        assert_eq!(db.outbox_patients(second).unwrap(), ["p2"]);
        assert_eq!(db.pending_changes().unwrap(), 1);
        db.outbox_done(second, 5_000).unwrap();
        assert_eq!(lists(&db), 0);
        assert!(db.outbox_patients(second).unwrap().is_empty());
        assert_eq!(db.undone_seqs().unwrap(), Vec::<u64>::new());
        // A written export's list, as an earlier version left it, is not
        // walked to find the unwritten exports' patients: those are looked
        // up by their export's number.
        db.conn()
            .execute("INSERT INTO _cs_outbox_patients (seq, patient) VALUES (?1, 'p1')", [first as i64])
            .unwrap();
        assert!(db.outbox_patients(second).unwrap().is_empty());
        let plan: Vec<String> = db
            .conn()
            .prepare(&format!("EXPLAIN QUERY PLAN {UNDONE_PATIENTS}"))
            .unwrap()
            .query_map([second as i64], |r| r.get(3))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert!(
            plan.iter().any(|step| step.contains("_cs_outbox_patients USING PRIMARY KEY (seq=?)")),
            "{plan:?}"
        );
    }

    /// SQLite's virtual-machine steps (in hundreds) that `f` takes: a
    /// measure of the work a query does, whatever the machine's speed.
    fn steps(db: &Db, f: impl FnOnce(&Db)) -> u64 {
        let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = count.clone();
        db.conn().progress_handler(
            100,
            Some(move || {
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                false
            }),
        );
        f(db);
        db.conn().progress_handler(100, None::<fn() -> bool>);
        count.load(std::sync::atomic::Ordering::Relaxed)
    }

    #[test]
    fn what_every_run_asks_of_the_outbox_and_the_runs_costs_the_same_after_years_of_exports() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::init_for_test(dir.path(), None);
        let seq = export(&mut db, "INSERT INTO patients (id, family_name) VALUES ('p1', 'Ames')", 2_000);
        db.outbox_done(seq, 3_000).unwrap();
        let run = db.begin_run("interval", 3_000).unwrap();
        db.finish_run(run, 3_100, "ok", &serde_json::json!({}), &[]).unwrap();
        let asked = |db: &Db| {
            let head = db.head_seq().unwrap();
            db.undone_seqs().unwrap();
            db.outbox_patients(head).unwrap();
            db.written_head().unwrap();
            db.first_export_unwritten().unwrap();
            db.pending_changes().unwrap();
            assert_eq!(db.last_ok_ms().unwrap(), Some(3_100));
            db.last_finished_run().unwrap().expect("a run");
        };
        let before = steps(&db, asked);
        // Twenty thousand exports and runs done before (a busy site's
        // years), kept for their times and for Latest Logs.
        db.conn()
            .execute_batch(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
                 INSERT INTO _cs_outbox (seq, created_ms, rows, segment_ms, done_ms)
                   SELECT -i, 1000, 2, 1000, 1000 FROM n;
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
                 INSERT INTO _cs_runs (id, started_ms, ended_ms, trigger, outcome)
                   SELECT -i, 1000, 1000 + i % 1000, 'interval', 'ok' FROM n;",
            )
            .unwrap();
        let after = steps(&db, asked);
        assert!(after <= before + 5, "{before} hundred steps, then {after}");
    }
}
