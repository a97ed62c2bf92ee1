//! Deletions held by the mass-delete guard: the state has the tombstones
//! (they travel on, and the patient files carry them), but the app's tables
//! keep the rows until a person confirms (`sync --confirm-deletes`) or the
//! next run finds the batch small enough.

use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::schema::quote;
use super::{Db, DbError};

pub(super) const TABLE: &str = "
CREATE TABLE IF NOT EXISTS _cs_held (tbl TEXT NOT NULL, pk TEXT NOT NULL, patient TEXT NOT NULL,
  site TEXT, PRIMARY KEY (tbl, pk)) WITHOUT ROWID;
";

/// What the guard holds back.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct HeldDeletes {
    /// Patients whose deletion waits.
    pub patients: u64,
    /// Rows in all (the patients' own and their child rows).
    pub rows: u64,
    /// The sites that deleted them (full ids).
    pub sites: Vec<String>,
}

impl Db {
    pub fn held_deletes(&self) -> Result<HeldDeletes, DbError> {
        let (patients, rows): (i64, i64) =
            self.conn.query_row("SELECT count(DISTINCT patient), count(*) FROM _cs_held", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        let mut stmt =
            self.conn.prepare("SELECT DISTINCT site FROM _cs_held WHERE site IS NOT NULL ORDER BY site")?;
        let sites = stmt.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
        Ok(HeldDeletes { patients: patients as u64, rows: rows as u64, sites })
    }

    /// Patients the app's table shows (held ones included).
    pub fn patient_count(&self) -> Result<u64, DbError> {
        let root = &self.mapping.root.table;
        let n: i64 =
            self.conn.query_row(&format!("SELECT count(*) FROM {}", quote(root)), [], |r| r.get(0))?;
        Ok(n as u64)
    }

    /// Applies every held deletion to the app's tables. Returns how many
    /// patients went.
    pub fn release_held(&mut self) -> Result<u64, DbError> {
        let held = self.held_deletes()?;
        if held.rows == 0 {
            return Ok(0);
        }
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute("INSERT INTO _cs_quiet (x) VALUES (1)", [])?;
        let rows: Vec<(String, String)> = {
            let mut stmt = tx.prepare("SELECT tbl, pk FROM _cs_held")?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<_>>()?
        };
        for (tbl, pk) in rows {
            // Only a row whose state is still deleted (or purged) goes: one
            // brought back since (re-inserted elsewhere) stays.
            let alive: Option<bool> = tx
                .query_row(
                    "SELECT cl % 2 = 1 FROM _cs_rows WHERE tbl = ?1 AND pk = ?2",
                    params![tbl, pk],
                    |r| r.get(0),
                )
                .optional()?;
            if alive != Some(true)
                && let Some((key, _)) = self.mapping.table(&tbl)
            {
                tx.execute(&format!("DELETE FROM {} WHERE {} = ?1", quote(&tbl), quote(key)), [&pk])?;
            }
        }
        tx.execute("DELETE FROM _cs_held", [])?;
        tx.execute("DELETE FROM _cs_quiet", [])?;
        tx.commit()?;
        Ok(held.patients)
    }
}
