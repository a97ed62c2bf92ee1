//! The patient files this site has applied or found up to date
//! (`_cs_files`): their size, time and hash, so that a file unchanged since
//! is not read again (or, known by size and time only, not parsed again).

use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::read_ahead::{self, ReadAhead};
use super::{Db, DbError, WriteTx};

/// A file as a listing or stat shows it: (path, size, mtime, file id).
pub(crate) type FileSeen = (String, u64, i64, Option<u64>);

/// What `_cs_files` holds of a file for a listing: (size, mtime, file id).
pub(crate) type Seen = (u64, i64, Option<u64>);

/// What `_cs_files` holds of a file: (size, mtime, sha256, file id).
pub(crate) type Recorded = (u64, i64, String, Option<u64>);

/// The bounds of the paths in folder `dir/`, both excluded: they sort
/// between `dir/` and `dir0` ('0' follows '/').
fn paths_in(dir: &str) -> (String, String) {
    (format!("{dir}/"), format!("{dir}0"))
}

/// A file id as stored: SQLite's integers are signed, so the id's 64 bits
/// are kept as they are.
fn id_column(id: Option<u64>) -> Option<i64> {
    id.map(|i| i as i64)
}

fn id_of(column: Option<i64>) -> Option<u64> {
    column.map(|i| i as u64)
}

pub(super) const TABLE: &str = "
-- Each patient file as last applied, written or found up to date, to skip it while unchanged.
-- file_id: its number on the volume where the system gives one (see platform::file_id).
CREATE TABLE IF NOT EXISTS _cs_files (path TEXT PRIMARY KEY, size INTEGER NOT NULL,
  mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL, file_id INTEGER) WITHOUT ROWID;
";

impl Db {
    /// The size, time and file id of every file recorded in folder `dir`,
    /// by path: one query for a folder's worth of files.
    pub(crate) fn files_seen_in(
        &self,
        dir: &str,
    ) -> Result<std::collections::HashMap<String, Seen>, DbError> {
        let rows = self
            .conn
            .prepare_cached(
                "SELECT path, size, mtime_ns, file_id FROM _cs_files WHERE path > ?1 AND path < ?2",
            )?
            .query_map(paths_in(dir), |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    (r.get::<_, i64>(1)? as u64, r.get::<_, i64>(2)?, id_of(r.get(3)?)),
                ))
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Reads the records of the files in each of `dirs` on other threads
    /// and connections, as [`Db::files_seen_in`] will, in order (see
    /// `read_ahead.rs`); waited for when dropped.
    pub(crate) fn read_ahead_files_in(&self, dirs: Vec<String>) -> ReadAhead {
        read_ahead::spawn(&self.path, dirs, |conn, dirs| {
            let mut read = 0;
            for dir in dirs {
                read += conn
                    .prepare_cached(
                        "SELECT count(*), sum(file_id) FROM _cs_files WHERE path > ?1 AND path < ?2",
                    )?
                    .query_row(paths_in(&dir), |r| r.get::<_, i64>(0))?
                    .max(0) as u64;
            }
            Ok(read)
        })
    }

    /// What the file cache knows of a patient file: (size, mtime, sha256,
    /// file id).
    pub(crate) fn file_seen(&self, path: &str) -> Result<Option<Recorded>, DbError> {
        Ok(self
            .conn
            .prepare_cached("SELECT size, mtime_ns, sha256, file_id FROM _cs_files WHERE path = ?1")?
            .query_row([path], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?, r.get(2)?, id_of(r.get(3)?))))
            .optional()?)
    }

    /// Records the file ids of files read and found byte for byte as
    /// recorded (files recorded before ids were, or by a build without
    /// them): from then on a listing tells them unchanged without a stat.
    pub(crate) fn record_file_ids(&mut self, files: &[FileSeen]) -> Result<(), DbError> {
        if files.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut update = tx.prepare_cached(
                "UPDATE _cs_files SET file_id = ?4 WHERE path = ?1 AND size = ?2 AND mtime_ns = ?3",
            )?;
            for (path, size, mtime_ns, id) in files {
                update.execute(params![path, *size as i64, mtime_ns, id_column(*id)])?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

impl Db {
    /// Records patient files read-repair found equal to this database's
    /// encoding, by (path, size, mtime): a later run that meets them
    /// unchanged (a shard listed for another file's sake) need not read
    /// them. A recorded hash stays while size and time are the same (the
    /// bytes are); otherwise it is cleared, so a full scan still parses the
    /// file once.
    pub(crate) fn record_files_verified(&mut self, files: &[FileSeen]) -> Result<(), DbError> {
        if files.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut upsert = tx.prepare_cached(
                "INSERT INTO _cs_files (path, size, mtime_ns, sha256, file_id) VALUES (?1, ?2, ?3, '', ?4)
                 ON CONFLICT (path) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns,
                   sha256 = CASE WHEN size = excluded.size AND mtime_ns = excluded.mtime_ns THEN sha256 ELSE '' END,
                   file_id = excluded.file_id",
            )?;
            for (path, size, mtime_ns, id) in files {
                upsert.execute(params![path, *size as i64, mtime_ns, id_column(*id)])?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

/// Reads a file's record and forgets it: a read-ahead's part (see
/// `read_ahead.rs`).
pub(super) fn read_record_ahead(conn: &rusqlite::Connection, path: &str) -> rusqlite::Result<()> {
    conn.prepare_cached("SELECT length(sha256) FROM _cs_files WHERE path = ?1")?
        .query_row([path], |_| Ok(()))
        .optional()?;
    Ok(())
}

impl WriteTx<'_> {
    /// Records that a patient file's content was applied, for the full scan
    /// to skip it while it is unchanged.
    pub fn record_file(
        &self,
        path: &str,
        size: u64,
        mtime_ns: i64,
        id: Option<u64>,
        sha256: &str,
    ) -> Result<(), DbError> {
        self.tx
            .prepare_cached(
                "INSERT INTO _cs_files (path, size, mtime_ns, sha256, file_id) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (path) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns,
                   sha256 = excluded.sha256, file_id = excluded.file_id",
            )?
            .execute(params![path, size as i64, mtime_ns, sha256, id_column(id)])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_ahead_reads_the_records_of_the_folders_it_is_given_and_no_others() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::init_for_test(dir.path(), None);
        let mut files = Vec::new();
        for (shard, count) in [("00", 3), ("0a", 5), ("ab", 2), ("ff", 7)] {
            for i in 0..count {
                files.push((format!("patients/{shard}/{i:032x}.xml"), 10, 20, Some(i as u64)));
            }
        }
        // A folder whose name starts like another's is not one of its.
        files.push(("patients/0ab/x.xml".to_owned(), 1, 1, None));
        db.record_files_verified(&files).unwrap();
        let dirs = |names: &[&str]| names.iter().map(|d| format!("patients/{d}")).collect::<Vec<_>>();
        assert_eq!(db.read_ahead_files_in(dirs(&["0a", "ab", "ff"])).finish(), 14);
        assert_eq!(db.read_ahead_files_in(dirs(&["00", "0ab"])).finish(), 4);
        assert_eq!(db.read_ahead_files_in(dirs(&["12"])).finish(), 0);
        assert_eq!(db.files_seen_in("patients/0a").unwrap().len(), 5, "as the listing reads them");
    }
}
