//! Settings and markers (`_cs_meta`): one text value per key.

use rusqlite::{Connection, OptionalExtension, params};

use super::{Db, DbError};

pub(super) const TABLE: &str = "
CREATE TABLE IF NOT EXISTS _cs_meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
";

pub(super) fn has_state(conn: &Connection) -> Result<bool, DbError> {
    let n: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '_cs_meta'",
        [],
        |r| r.get(0),
    )?;
    Ok(n > 0)
}

pub(super) fn meta_get(conn: &Connection, key: &str) -> Result<Option<String>, DbError> {
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

pub(super) fn meta_delete(conn: &Connection, key: &str) -> Result<(), DbError> {
    conn.prepare_cached("DELETE FROM _cs_meta WHERE key = ?1")?.execute([key])?;
    Ok(())
}

pub(super) fn meta_set(conn: &Connection, key: &str, value: &str) -> Result<(), DbError> {
    conn.prepare_cached("INSERT INTO _cs_meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value")?
        .execute(params![key, value])?;
    Ok(())
}

impl Db {
    pub fn meta(&self, key: &str) -> Result<Option<String>, DbError> {
        meta_get(&self.conn, key)
    }

    pub fn delete_meta(&self, key: &str) -> Result<(), DbError> {
        meta_delete(&self.conn, key)
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), DbError> {
        meta_set(&self.conn, key, value)
    }
}
