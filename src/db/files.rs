//! The patient files a full scan applied (`_cs_files`): their size, time
//! and hash, so that a file unchanged since is not read again.

use rusqlite::{OptionalExtension, params};

use super::{Db, DbError, WriteTx};

pub(super) const TABLE: &str = "
-- What a full scan last applied from each patient file, to skip unchanged files.
CREATE TABLE IF NOT EXISTS _cs_files (path TEXT PRIMARY KEY, size INTEGER NOT NULL,
  mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL) WITHOUT ROWID;
";

impl Db {
    /// What the file cache knows of a patient file: (size, mtime, sha256).
    pub fn file_seen(&self, path: &str) -> Result<Option<(u64, i64, String)>, DbError> {
        Ok(self
            .conn
            .prepare_cached("SELECT size, mtime_ns, sha256 FROM _cs_files WHERE path = ?1")?
            .query_row([path], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?, r.get(2)?)))
            .optional()?)
    }
}

impl WriteTx<'_> {
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
}
