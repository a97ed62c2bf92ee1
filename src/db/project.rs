//! Projecting the state onto the app's tables, and the rows the app's
//! tables refuse for now (`_cs_unprojected`, "parked"), retried every run.

use super::state::Ctx;
use super::state::load_row;
use crate::model::RowKey;
use crate::model::RowState;
use crate::model::Value;

use rusqlite::{Connection, params};

use super::DbError;
use super::held::hold_delete;
use super::schema::quote;
use super::values::Sql;

pub(super) const TABLE: &str = "
-- Rows the state holds but the app's table cannot show yet (a NOT NULL or
-- CHECK constraint refuses the fields known so far); retried every run.
CREATE TABLE IF NOT EXISTS _cs_unprojected (tbl TEXT NOT NULL, pk TEXT NOT NULL, reason TEXT NOT NULL,
  PRIMARY KEY (tbl, pk)) WITHOUT ROWID;
";

/// Projects a row, or parks it when the app's table refuses what is known
/// of it so far (a NOT NULL or CHECK constraint, typically a row whose
/// other fields are still on their way). The state keeps the row either
/// way. `Err(reason)` means parked.
pub(crate) fn project_or_park(
    conn: &Connection,
    ctx: &Ctx<'_>,
    key: &RowKey,
    row: &RowState,
) -> Result<Result<Vec<String>, String>, DbError> {
    super::documents::mark_due(conn, ctx, key)?;
    // No savepoint needed: a statement that fails a constraint is rolled
    // back on its own (SQLite's default ABORT), the transaction stays.
    match project(conn, ctx, key, row) {
        Ok(warnings) => {
            if ctx.any_parked.get() {
                conn.prepare_cached("DELETE FROM _cs_unprojected WHERE tbl = ?1 AND pk = ?2")?
                    .execute(params![key.table, key.pk])?;
            }
            Ok(Ok(warnings))
        }
        Err(DbError::Sql(rusqlite::Error::SqliteFailure(e, message)))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            let reason = message.unwrap_or_else(|| e.to_string());
            conn.prepare_cached(
                "INSERT INTO _cs_unprojected (tbl, pk, reason) VALUES (?1, ?2, ?3)
                 ON CONFLICT (tbl, pk) DO UPDATE SET reason = excluded.reason",
            )?
            .execute(params![key.table, key.pk, reason])?;
            ctx.any_parked.set(true);
            Ok(Err(reason))
        }
        Err(e) => Err(e),
    }
}

/// Tries again to show every parked row; returns those still parked with
/// the reason.
pub(crate) fn retry_parked(conn: &Connection, ctx: &Ctx<'_>) -> Result<Vec<(RowKey, String)>, DbError> {
    let parked: Vec<RowKey> = {
        let mut stmt = conn.prepare("SELECT tbl, pk FROM _cs_unprojected ORDER BY tbl, pk")?;
        stmt.query_map([], |r| Ok(RowKey { table: r.get(0)?, pk: r.get(1)? }))?
            .collect::<rusqlite::Result<_>>()?
    };
    let mut still = Vec::new();
    for key in parked {
        let row = load_row(conn, &key.table, &key.pk)?.map(|(r, _)| r).unwrap_or_default();
        if let Err(reason) = project_or_park(conn, ctx, &key, &row)? {
            still.push((key, reason));
        }
    }
    Ok(still)
}

/// Makes the app's table show a row's state: the winning value of every
/// column the table has, or no row at all when the row is deleted.
pub(super) fn project(
    conn: &Connection,
    ctx: &Ctx<'_>,
    key: &RowKey,
    row: &RowState,
) -> Result<Vec<String>, DbError> {
    let Some((key_col, _)) = ctx.mapping.table(&key.table) else { return Ok(Vec::new()) };
    let t = quote(&key.table);
    if !row.is_alive() {
        if ctx.hold_deletes && hold_delete(conn, ctx, key, row)? {
            return Ok(Vec::new());
        }
        conn.prepare_cached(&format!("DELETE FROM {t} WHERE {} = ?1", quote(key_col)))?.execute([&key.pk])?;
        return Ok(Vec::new());
    }
    let columns = ctx.columns.get(&key.table).map(Vec::as_slice).unwrap_or_default();
    let key_value = Value::Text(key.pk.clone());
    let mut present = Vec::with_capacity(columns.len());
    let mut values: Vec<Sql<'_>> = Vec::with_capacity(columns.len());
    for c in columns {
        // The key column always holds the row's key, whatever a file says.
        let value = if c == key_col { Some(&key_value) } else { row.value(c) };
        present.push(value.is_some());
        if let Some(v) = value {
            values.push(Sql(v));
        }
    }
    let mut warnings = Vec::new();
    if row.fields.len() > values.len().saturating_sub(1) {
        // clinicsync's own fields (a document's body) have no column.
        for c in row.fields.keys().filter(|c| !columns.contains(c) && !c.starts_with("_cs_")) {
            warnings.push(format!(
                "column {c} of table {} comes from another site but this database has no such column; clinicsync keeps its value and passes it on",
                key.table
            ));
        }
    }
    let sql = upsert_sql(&key.table, key_col, columns, &present);
    conn.prepare_cached(&sql)?.execute(rusqlite::params_from_iter(values.iter()))?;
    Ok(warnings)
}

/// Upsert statements by table, then by which columns are present.
pub(super) type UpsertCache =
    std::collections::HashMap<String, std::collections::HashMap<Vec<bool>, std::rc::Rc<str>>>;

pub(super) fn upsert_sql(
    table: &str,
    key_col: &str,
    columns: &[String],
    present: &[bool],
) -> std::rc::Rc<str> {
    UPSERTS.with(|cache| {
        let mut cache = cache.borrow_mut();
        // Looked up by reference: the hot path allocates nothing.
        if let Some(sql) = cache.get(table).and_then(|shapes| shapes.get(present)) {
            return sql.clone();
        }
        let names: Vec<String> =
            columns.iter().zip(present).filter(|(_, p)| **p).map(|(c, _)| quote(c)).collect();
        let placeholders: Vec<String> = (1..=names.len()).map(|i| format!("?{i}")).collect();
        let key = quote(key_col);
        let updates: Vec<String> =
            names.iter().filter(|n| **n != key).map(|n| format!("{n} = excluded.{n}")).collect();
        let on_conflict = if updates.is_empty() {
            "DO NOTHING".to_owned()
        } else {
            format!("DO UPDATE SET {}", updates.join(", "))
        };
        let sql: std::rc::Rc<str> = format!(
            "INSERT INTO {} ({}) VALUES ({}) ON CONFLICT ({key}) {on_conflict}",
            quote(table),
            names.join(", "),
            placeholders.join(", "),
        )
        .into();
        cache.entry(table.to_owned()).or_default().insert(present.to_vec(), sql.clone());
        sql
    })
}

thread_local! {
    /// A row usually has every column, so the statement text is built once
    /// per table and shape, not once per row.
    static UPSERTS: std::cell::RefCell<UpsertCache> = std::cell::RefCell::new(UpsertCache::new());
}
