//! The replicated state in the database: loading and saving row states,
//! turning the app's pending changes into stamped versions, joining incoming
//! documents, and projecting the result onto the app's tables.

use std::collections::{BTreeMap, BTreeSet};

use rusqlite::{Connection, OptionalExtension, params};

use super::DbError;
use super::mapping::{Mapping, TableRole};
use super::schema::quote;
use super::values::{Sql, from_ref, hlc_at, opt_hlc_at};
use crate::model::{FieldState, FieldVersion, HlcClock, PatientDoc, PatientId, RowKey, RowState, Value};
use crate::xmlstore::is_xml_safe;

/// What the state code needs to know about the database's tables.
pub(crate) struct Ctx<'a> {
    pub(crate) mapping: &'a Mapping,
    /// Column names of each mapped table, as the database has them.
    pub(crate) columns: &'a BTreeMap<String, Vec<String>>,
}

/// What turning pending changes into versions did.
#[derive(Debug, Default)]
pub struct StampOutcome {
    /// The export sequence number created, if anything changed.
    pub seq: Option<u64>,
    pub rows: usize,
    pub versions: usize,
    pub patients: BTreeSet<String>,
    pub warnings: Vec<String>,
}

/// What joining one incoming document did.
#[derive(Debug, Default)]
pub struct ApplyOutcome {
    pub rows_changed: usize,
    pub new_conflicts: usize,
    /// Patients whose files may now be behind the database.
    pub affected: BTreeSet<String>,
    pub warnings: Vec<String>,
}

pub(crate) fn load_row(
    conn: &Connection,
    tbl: &str,
    pk: &str,
) -> Result<Option<(RowState, Option<String>)>, DbError> {
    let head: Option<(i64, Option<String>)> = conn
        .prepare_cached("SELECT cl, patient FROM _cs_rows WHERE tbl = ?1 AND pk = ?2")?
        .query_row(params![tbl, pk], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((cl, patient)) = head else { return Ok(None) };
    let mut stmt =
        conn.prepare_cached("SELECT col, hlc, base, value FROM _cs_clock WHERE tbl = ?1 AND pk = ?2")?;
    let mut rows = stmt.query(params![tbl, pk])?;
    let mut versions: BTreeMap<String, Vec<FieldVersion>> = BTreeMap::new();
    while let Some(r) = rows.next()? {
        let version = FieldVersion::new(from_ref(r.get_ref(3)?), hlc_at(r, 1)?, opt_hlc_at(r, 2)?)
            .map_err(|e| DbError::Corrupt(format!("{tbl}/{pk}: {e}")))?;
        versions.entry(r.get(0)?).or_default().push(version);
    }
    let fields = versions
        .into_iter()
        .map(|(c, vs)| (c, FieldState::from_versions(vs).expect("grouped versions are never empty")))
        .collect();
    Ok(Some((RowState { cl: cl as u64, fields }, patient)))
}

fn save_row(
    conn: &Connection,
    tbl: &str,
    pk: &str,
    old: Option<&RowState>,
    new: &RowState,
    patient: Option<&str>,
) -> Result<usize, DbError> {
    conn.prepare_cached(
        "INSERT INTO _cs_rows (tbl, pk, cl, patient) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (tbl, pk) DO UPDATE SET cl = excluded.cl, patient = excluded.patient",
    )?
    .execute(params![tbl, pk, new.cl as i64, patient])?;
    let mut written = 0;
    for (col, state) in &new.fields {
        if old.and_then(|o| o.fields.get(col)) == Some(state) {
            continue;
        }
        conn.prepare_cached("DELETE FROM _cs_clock WHERE tbl = ?1 AND pk = ?2 AND col = ?3")?
            .execute(params![tbl, pk, col])?;
        let mut insert = conn.prepare_cached(
            "INSERT INTO _cs_clock (tbl, pk, col, hlc, base, value) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for v in state.versions() {
            insert.execute(params![
                tbl,
                pk,
                col,
                v.hlc().encode(),
                v.base().map(|b| b.encode()),
                Sql(v.value())
            ])?;
            written += 1;
        }
    }
    Ok(written)
}

/// The patient a row belongs to. Rows of tables this database does not map
/// keep the patient of the document they arrived in.
fn patient_of(ctx: &Ctx<'_>, tbl: &str, pk: &str, row: &RowState, fallback: Option<&str>) -> Option<String> {
    match ctx.mapping.table(tbl) {
        Some((_, TableRole::Root)) => Some(pk.to_owned()),
        Some((_, TableRole::Child { patient_column })) => {
            row.value(patient_column).and_then(Value::as_text).map(str::to_owned)
        }
        None => fallback.map(str::to_owned),
    }
}

fn current_row(
    conn: &Connection,
    tbl: &str,
    key: &str,
    pk: &str,
) -> Result<Option<Vec<(String, Value)>>, DbError> {
    let sql = format!("SELECT * FROM {} WHERE {} = ?1", quote(tbl), quote(key));
    let mut stmt = conn.prepare_cached(&sql)?;
    let names: Vec<String> = stmt.column_names().into_iter().map(str::to_owned).collect();
    let row = stmt
        .query_row([pk], |r| {
            (0..names.len())
                .map(|i| Ok((names[i].clone(), from_ref(r.get_ref(i)?))))
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .optional()?;
    Ok(row)
}

/// Turns the app's pending changes into stamped versions and, if anything
/// changed, an outbox entry with the next sequence number.
pub(crate) fn stamp_pending(
    conn: &Connection,
    ctx: &Ctx<'_>,
    clock: &mut HlcClock,
    now_ms: u64,
) -> Result<StampOutcome, DbError> {
    let mut out = StampOutcome::default();
    let max_id: Option<i64> = conn.query_row("SELECT max(id) FROM _cs_pending", [], |r| r.get(0))?;
    let Some(max_id) = max_id else { return Ok(out) };
    let touched: Vec<(String, Option<String>)> = {
        let mut stmt = conn.prepare("SELECT DISTINCT tbl, pk FROM _cs_pending WHERE id <= ?1")?;
        stmt.query_map([max_id], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<_>>()?
    };
    for (tbl, pk) in touched {
        let Some(pk) = pk else { continue };
        let Some((key, _)) = ctx.mapping.table(&tbl) else { continue };
        if !is_xml_safe(&pk) {
            out.warnings.push(format!(
                "row {tbl}/{pk:?} is not synced: its key contains control characters that no sync file can carry"
            ));
            continue;
        }
        let current = current_row(conn, &tbl, key, &pk)?;
        let old = load_row(conn, &tbl, &pk)?;
        let (old_row, old_patient) = match &old {
            Some((r, p)) => (Some(r), p.clone()),
            None => (None, None),
        };
        let mut row = old_row.cloned().unwrap_or_default();
        match current {
            Some(columns) => {
                if !row.is_alive() {
                    row.cl += 1;
                }
                for (col, value) in columns {
                    let base = match row.fields.get(&col) {
                        Some(state) if state.winner().value() == &value => continue,
                        Some(state) => Some(state.max_hlc()),
                        None => None,
                    };
                    if let Some(b) = base {
                        // Guarantees base < stamp even if the stored clock was
                        // lost or rolled back.
                        clock.observe(b);
                    }
                    let version = FieldVersion::new(value, clock.stamp(now_ms), base)
                        .expect("a fresh stamp is after every stamp the clock observed");
                    row.fields.insert(col, FieldState::single(version));
                }
            }
            None if row.is_alive() => row.cl += 1,
            None => continue,
        }
        if old_row == Some(&row) {
            continue;
        }
        let patient = patient_of(ctx, &tbl, &pk, &row, old_patient.as_deref());
        if patient.is_none() {
            out.warnings.push(format!(
                "row {tbl}/{pk} belongs to no patient (its patient column is empty), so it stays on this site until it has one"
            ));
        }
        out.versions += save_row(conn, &tbl, &pk, old_row, &row, patient.as_deref())?;
        out.rows += 1;
        out.patients.extend(old_patient);
        out.patients.extend(patient);
    }
    conn.execute("DELETE FROM _cs_pending WHERE id <= ?1", [max_id])?;
    if !out.patients.is_empty() {
        let seq: i64 =
            conn.query_row("SELECT coalesce(max(seq), 0) + 1 FROM _cs_outbox", [], |r| r.get(0))?;
        conn.execute(
            "INSERT INTO _cs_outbox (seq, created_ms) VALUES (?1, ?2)",
            params![seq, now_ms as i64],
        )?;
        let mut insert =
            conn.prepare_cached("INSERT INTO _cs_outbox_patients (seq, patient) VALUES (?1, ?2)")?;
        for p in &out.patients {
            insert.execute(params![seq, p])?;
        }
        out.seq = Some(seq as u64);
    }
    Ok(out)
}

/// Joins an incoming document into the state and projects every changed row
/// onto the app's tables. The caller wraps it in a savepoint.
pub(crate) fn apply_doc(
    conn: &Connection,
    ctx: &Ctx<'_>,
    doc: &PatientDoc,
    source: &str,
    now_ms: u64,
) -> Result<ApplyOutcome, DbError> {
    let mut out = ApplyOutcome::default();
    for (key, incoming) in &doc.rows {
        let old = load_row(conn, &key.table, &key.pk)?;
        let (old_row, old_patient) = match &old {
            Some((r, p)) => (Some(r), p.clone()),
            None => (None, None),
        };
        let mut row = old_row.cloned().unwrap_or_default();
        if !row.join_from(incoming) {
            continue;
        }
        let fallback = old_patient.clone().unwrap_or_else(|| doc.patient.0.clone());
        let patient = patient_of(ctx, &key.table, &key.pk, &row, Some(&fallback));
        save_row(conn, &key.table, &key.pk, old_row, &row, patient.as_deref())?;
        for (col, state) in &row.fields {
            if state.losers().is_empty() || old_row.and_then(|o| o.fields.get(col)) == Some(state) {
                continue;
            }
            let winner = state.winner();
            let mut insert = conn.prepare_cached(
                "INSERT OR IGNORE INTO _cs_conflicts (tbl, pk, col, value, hlc, base, winner_value, winner_hlc,
                   patient, source, detected_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?;
            for loser in state.losers() {
                out.new_conflicts += insert.execute(params![
                    key.table,
                    key.pk,
                    col,
                    Sql(loser.value()),
                    loser.hlc().encode(),
                    loser.base().map(|b| b.encode()),
                    Sql(winner.value()),
                    winner.hlc().encode(),
                    patient,
                    source,
                    now_ms as i64
                ])?;
            }
        }
        out.warnings.extend(project(conn, ctx, key, &row)?);
        out.rows_changed += 1;
        out.affected.extend(old_patient);
        out.affected.extend(patient);
    }
    Ok(out)
}

/// Makes the app's table show a row's state: the winning value of every
/// column the table has, or no row at all when the row is deleted.
fn project(conn: &Connection, ctx: &Ctx<'_>, key: &RowKey, row: &RowState) -> Result<Vec<String>, DbError> {
    let Some((key_col, _)) = ctx.mapping.table(&key.table) else { return Ok(Vec::new()) };
    let t = quote(&key.table);
    if !row.is_alive() {
        conn.prepare_cached(&format!("DELETE FROM {t} WHERE {} = ?1", quote(key_col)))?.execute([&key.pk])?;
        return Ok(Vec::new());
    }
    let columns = ctx.columns.get(&key.table).map(Vec::as_slice).unwrap_or_default();
    let key_value = Value::Text(key.pk.clone());
    let mut names = Vec::new();
    let mut values: Vec<Sql<'_>> = Vec::new();
    for c in columns {
        // The key column always holds the row's key, whatever a file says.
        let value = if c == key_col { Some(&key_value) } else { row.value(c) };
        if let Some(v) = value {
            names.push(quote(c));
            values.push(Sql(v));
        }
    }
    let warnings = row
        .fields
        .keys()
        .filter(|c| !columns.contains(c))
        .map(|c| format!("column {c} of table {} comes from another site but this database has no such column; clinicsync keeps its value and passes it on", key.table))
        .collect();
    let placeholders: Vec<String> = (1..=names.len()).map(|i| format!("?{i}")).collect();
    let updates: Vec<String> =
        names.iter().filter(|n| **n != quote(key_col)).map(|n| format!("{n} = excluded.{n}")).collect();
    let on_conflict = if updates.is_empty() {
        "DO NOTHING".to_owned()
    } else {
        format!("DO UPDATE SET {}", updates.join(", "))
    };
    let sql = format!(
        "INSERT INTO {t} ({}) VALUES ({}) ON CONFLICT ({}) {on_conflict}",
        names.join(", "),
        placeholders.join(", "),
        quote(key_col)
    );
    conn.prepare_cached(&sql)?.execute(rusqlite::params_from_iter(values.iter()))?;
    Ok(warnings)
}

/// Builds the document of one patient from the state: its root row and
/// every row whose patient column points at it, deleted rows included.
pub(crate) fn doc_for_patient(conn: &Connection, patient: &str) -> Result<PatientDoc, DbError> {
    let mut doc = PatientDoc::new(PatientId(patient.to_owned()));
    let mut stmt = conn.prepare_cached(
        "SELECT r.tbl, r.pk, r.cl, c.col, c.hlc, c.base, c.value FROM _cs_rows r
         LEFT JOIN _cs_clock c ON c.tbl = r.tbl AND c.pk = r.pk WHERE r.patient = ?1",
    )?;
    let mut rows = stmt.query([patient])?;
    let mut versions: BTreeMap<RowKey, (u64, BTreeMap<String, Vec<FieldVersion>>)> = BTreeMap::new();
    while let Some(r) = rows.next()? {
        let key = RowKey { table: r.get(0)?, pk: r.get(1)? };
        let cl: i64 = r.get(2)?;
        let entry = versions.entry(key.clone()).or_insert_with(|| (cl as u64, BTreeMap::new()));
        let col: Option<String> = r.get(3)?;
        if let Some(col) = col {
            let version = FieldVersion::new(from_ref(r.get_ref(6)?), hlc_at(r, 4)?, opt_hlc_at(r, 5)?)
                .map_err(|e| DbError::Corrupt(format!("{}/{}: {e}", key.table, key.pk)))?;
            entry.1.entry(col).or_default().push(version);
        }
    }
    for (key, (cl, fields)) in versions {
        let fields = fields
            .into_iter()
            .map(|(c, vs)| (c, FieldState::from_versions(vs).expect("grouped versions are never empty")))
            .collect();
        doc.rows.insert(key, RowState { cl, fields });
    }
    Ok(doc)
}
