//! Conflict copies kept in the folder after they were merged (when
//! `auto_delete_conflicts` is off): remembered so `status` can list them.
//! A copy's content hash also sits in `_cs_files`, so an unchanged copy is
//! never merged twice.

use rusqlite::params;

use super::{Db, DbError};

/// A merged conflict copy that is still in the folder.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct KeptCopy {
    pub path: String,
    /// The original it was merged into.
    pub original: String,
    /// The cloud client whose naming it follows.
    pub client: String,
    pub merged_ms: u64,
}

pub(super) const TABLE: &str = "
CREATE TABLE IF NOT EXISTS _cs_copies (path TEXT PRIMARY KEY, original TEXT NOT NULL,
  client TEXT NOT NULL, merged_ms INTEGER NOT NULL) WITHOUT ROWID;
";

impl Db {
    /// Remembers a copy that was merged and left in place.
    pub fn keep_copy(&self, copy: &KeptCopy) -> Result<(), DbError> {
        self.conn
            .prepare_cached(
                "INSERT INTO _cs_copies (path, original, client, merged_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (path) DO UPDATE SET original = excluded.original, client = excluded.client,
                   merged_ms = excluded.merged_ms",
            )?
            .execute(params![copy.path, copy.original, copy.client, copy.merged_ms as i64])?;
        Ok(())
    }

    /// Forgets a copy (deleted by clinicsync or by someone else), and what
    /// a scan knew of it.
    pub fn forget_copy(&self, path: &str) -> Result<(), DbError> {
        self.conn.prepare_cached("DELETE FROM _cs_copies WHERE path = ?1")?.execute([path])?;
        self.conn.prepare_cached("DELETE FROM _cs_files WHERE path = ?1")?.execute([path])?;
        Ok(())
    }

    /// True when this copy was merged and kept by an earlier run.
    pub fn is_kept_copy(&self, path: &str) -> Result<bool, DbError> {
        let mut stmt = self.conn.prepare_cached("SELECT 1 FROM _cs_copies WHERE path = ?1")?;
        Ok(stmt.exists([path])?)
    }

    /// Every merged copy still in the folder, by path.
    pub fn kept_copies(&self) -> Result<Vec<KeptCopy>, DbError> {
        let mut stmt =
            self.conn.prepare("SELECT path, original, client, merged_ms FROM _cs_copies ORDER BY path")?;
        let rows = stmt.query_map([], |r| {
            Ok(KeptCopy {
                path: r.get(0)?,
                original: r.get(1)?,
                client: r.get(2)?,
                merged_ms: r.get::<_, i64>(3)? as u64,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}
