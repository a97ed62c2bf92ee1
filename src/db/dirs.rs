//! The modification times of the folder's patient directories as this
//! site last accounted for them. A directory's time moves when a file in it
//! is added, removed or renamed; a run compares, lists only the directories
//! whose time moved for a reason other than its own writes, and so finds a
//! cloud client's conflict copies without listing every patient file.

use std::collections::HashMap;

use rusqlite::{TransactionBehavior, params};

use super::{Db, DbError};

pub(super) const TABLE: &str = "
CREATE TABLE IF NOT EXISTS _cs_dirs (dir TEXT PRIMARY KEY, mtime_ns INTEGER) WITHOUT ROWID;
";

impl Db {
    /// Each directory's accounted-for modification time (`None`: it did
    /// not exist). Empty before the first run that recorded them.
    pub fn dir_mtimes(&self) -> Result<HashMap<String, Option<i64>>, DbError> {
        let mut stmt = self.conn.prepare("SELECT dir, mtime_ns FROM _cs_dirs")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Records the directories' accounted-for modification times.
    pub fn set_dir_mtimes(&mut self, dirs: &[(String, Option<i64>)]) -> Result<(), DbError> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO _cs_dirs (dir, mtime_ns) VALUES (?1, ?2)
                 ON CONFLICT (dir) DO UPDATE SET mtime_ns = excluded.mtime_ns",
            )?;
            for (dir, mtime) in dirs {
                stmt.execute(params![dir, mtime])?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}
