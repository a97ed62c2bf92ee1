//! Making an app table equal to the replicated state again (`baseline
//! download`), and the consistent copy of the database taken before.

use std::collections::HashMap;
use std::path::Path;

use rusqlite::params;
use serde::Serialize;

use super::project::project;
use super::schema::quote;
use super::state::Ctx;
use super::values::from_ref;
use super::{Db, DbError, WriteTx};
use crate::model::{RowKey, Value};

/// What making one table equal to the state changed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TableBaseline {
    pub table: String,
    /// Rows the state has that the table lacked.
    pub added: u64,
    /// Rows whose values differed from the state's.
    pub changed: u64,
    /// Rows the table had that the state does not (never synced, or deleted
    /// in the family).
    pub removed: u64,
}

impl Db {
    /// Copies the whole database to `to` with SQLite's backup API: a
    /// consistent copy while the app keeps writing.
    pub fn backup_to(&self, to: &Path) -> Result<(), DbError> {
        let mut copy = rusqlite::Connection::open(to)?;
        let backup = rusqlite::backup::Backup::new(&self.conn, &mut copy)?;
        backup.run_to_completion(256, std::time::Duration::from_millis(10), None)?;
        Ok(())
    }
}

impl WriteTx<'_> {
    /// Makes the app's `table` show exactly the replicated state: rows the
    /// state has are put back as it has them, rows it does not have (or has
    /// as deleted, unless the deletion is held) are removed. Quiet: nothing
    /// of it is captured as a local change.
    pub fn rebaseline(&mut self, table: &str) -> Result<TableBaseline, DbError> {
        let Some((key_col, _)) = self.mapping.table(table) else {
            return Err(DbError::Corrupt(format!("{table} is not a mapped table")));
        };
        let key_col = key_col.to_owned();
        let ctx = Ctx {
            mapping: self.mapping,
            columns: self.columns,
            hold_deletes: false,
            any_purged: self.any_purged,
            any_parked: &self.any_parked,
            digests: self.digests,
        };
        let columns = self.columns.get(table).cloned().unwrap_or_default();
        // The app's rows as they are, by key.
        let mut app: HashMap<String, Vec<(String, Value)>> = HashMap::new();
        {
            let sql = format!("SELECT CAST({} AS TEXT) AS _key, * FROM {}", quote(&key_col), quote(table));
            let mut stmt = self.tx.prepare(&sql)?;
            let names: Vec<String> = stmt.column_names().into_iter().map(str::to_owned).collect();
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let Some(pk) = r.get::<_, Option<String>>(0)? else { continue };
                let values = (1..names.len())
                    .map(|i| Ok((names[i].clone(), from_ref(r.get_ref(i)?))))
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                app.insert(pk, values);
            }
        }
        let mut out = TableBaseline { table: table.to_owned(), ..TableBaseline::default() };
        let state: Vec<(String, i64, Vec<u8>)> = self
            .tx
            .prepare("SELECT pk, cl, state FROM _cs_rows WHERE tbl = ?1")?
            .query_map(params![table], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (pk, cl, blob) in state {
            let row = super::patients::decode_row(table, &pk, cl, &blob)?;
            let current = app.remove(&pk);
            let key = RowKey { table: table.to_owned(), pk: pk.clone() };
            if !row.is_alive() {
                if current.is_some() && !super::held::is_held(&self.tx, table, &pk)? {
                    project(&self.tx, &ctx, &key, &row)?;
                    out.removed += 1;
                }
                continue;
            }
            let differs = |values: &[(String, Value)]| {
                values.iter().any(|(c, v)| {
                    c != &key_col && columns.contains(c) && row.value(c).is_some_and(|s| s != v)
                })
            };
            match current {
                None => {
                    project(&self.tx, &ctx, &key, &row)?;
                    out.added += 1;
                }
                Some(values) if differs(&values) => {
                    project(&self.tx, &ctx, &key, &row)?;
                    out.changed += 1;
                }
                Some(_) => {}
            }
        }
        // What is left the state does not know: rows written past clinicsync.
        let delete = format!("DELETE FROM {} WHERE {} = ?1", quote(table), quote(&key_col));
        for pk in app.keys() {
            self.tx.prepare_cached(&delete)?.execute([pk])?;
            out.removed += 1;
        }
        Ok(out)
    }
}
