//! Settling a conflict record: a new edit of the field (or of the deleted
//! row) made with every concurrent version in view, so it supersedes them
//! here and at every site it reaches.

use super::state::Ctx;
use super::state::StampBatch;
use super::state::add_to_batch;
use super::state::load_row;
use super::state::patient_of;
use super::state::save_row;
use super::state::stamp_if_pending;
use super::state::value_size;
use crate::model::Base;
use crate::model::FieldState;
use crate::model::FieldVersion;
use crate::model::HlcClock;
use crate::model::RowKey;
use crate::model::RowState;
use crate::model::Value;

use rusqlite::Connection;

use super::DbError;
use super::project::project_or_park;
use super::records::{self, sync_records};

/// Which value a person keeps when settling a conflict record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// The value the database shows now.
    Winner,
    /// The value that lost.
    Loser,
}

/// What settling a conflict record did.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub id: i64,
    pub table: String,
    pub pk: String,
    pub column: String,
    /// The value the field has now, everywhere once it has synced.
    pub value: Value,
}

/// Settles conflict record `id` with a new edit of the field whose base is
/// every concurrent version: it supersedes them all here and, once synced,
/// at every site, where the records close the same way.
pub(crate) fn resolve_conflict(
    conn: &Connection,
    ctx: &Ctx<'_>,
    clock: &mut HlcClock,
    now_ms: u64,
    id: i64,
    keep: Keep,
    batch: &mut StampBatch,
) -> Result<Resolved, DbError> {
    let Some((tbl, pk, col, hlc, status, kind)) = records::get(conn, id)? else {
        return Err(DbError::NoSuchConflict(id));
    };
    if status != "open" {
        return Err(DbError::ConflictSettled { id, how: "it was already resolved".into() });
    }
    let key = RowKey { table: tbl.clone(), pk: pk.clone() };
    stamp_if_pending(conn, ctx, clock, now_ms, &key, batch)?;
    let Some((mut row, old_patient)) = load_row(conn, &tbl, &pk)? else {
        if kind != "deleted" {
            return Err(DbError::Corrupt(format!(
                "conflict #{id} names {tbl}/{pk}, which has no recorded versions"
            )));
        }
        // The row was deleted and purged everywhere: the delete can be
        // accepted; the edit cannot travel any more.
        return match keep {
            Keep::Winner => {
                records::close(conn, id, now_ms)?;
                Ok(Resolved { id, table: tbl, pk, column: col, value: Value::Null })
            }
            Keep::Loser => Err(DbError::ConflictSettled {
                id,
                how: format!(
                    "{tbl}/{pk} was deleted and purged at every site; enter the value again in the app if it is still needed, then resolve with --keep winner"
                ),
            }),
        };
    };
    if kind == "deleted" {
        return resolve_delete(
            conn,
            ctx,
            clock,
            now_ms,
            id,
            keep,
            (key, row, old_patient),
            &col,
            &hlc,
            batch,
        );
    }
    if !row.is_alive() {
        return Err(DbError::ConflictSettled { id, how: format!("{tbl}/{pk} has been deleted") });
    }
    let Some(state) = row.fields.get(&col) else {
        return Err(DbError::Corrupt(format!(
            "conflict #{id} names a field {col} that {tbl}/{pk} does not have"
        )));
    };
    let Some(loser) = state.losers().iter().find(|v| v.hlc().encode() == hlc) else {
        // A later edit (here, or synced from another site) already settled it.
        sync_records(conn, &key, &row, old_patient.as_deref(), "", now_ms)?;
        return Err(DbError::ConflictSettled { id, how: "a later edit of the field settled it".into() });
    };
    let value = match keep {
        Keep::Winner => state.winner().value().clone(),
        Keep::Loser => loser.value().clone(),
    };
    let version = settling_version(clock, now_ms, state, value.clone());
    row.fields.insert(col.clone(), FieldState::single(version.clone()));
    let patient = patient_of(ctx, &tbl, &pk, &row, old_patient.as_deref());
    save_row(conn, ctx, &tbl, &pk, &row, patient.as_deref(), Some(old_patient.as_deref()), None)?;
    sync_records(conn, &key, &row, patient.as_deref(), "", now_ms)?;
    if let Err(reason) = project_or_park(conn, ctx, &key, &row)? {
        return Err(DbError::Corrupt(format!(
            "the app's table refuses {tbl}/{pk} with the chosen value: {reason}"
        )));
    }
    let mut stamped = RowState { cl: row.cl, ..RowState::default() };
    stamped.fields.insert(col.clone(), FieldState::single(version));
    batch.bytes += 220 + tbl.len() + pk.len() + col.len() + value_size(&value);
    batch.versions += 1;
    add_to_batch(batch, key, stamped, old_patient, patient);
    Ok(Resolved { id, table: tbl, pk, column: col, value })
}

/// A new version of a field made with everything it holds in view: it
/// supersedes every version there, here and wherever it travels.
pub(super) fn settling_version(
    clock: &mut HlcClock,
    now_ms: u64,
    state: &FieldState,
    value: Value,
) -> FieldVersion {
    let base = state.context();
    clock.observe(base.latest().expect("a field state is never empty"));
    FieldVersion::new(value, clock.stamp(now_ms), base)
        .expect("a fresh stamp is after every stamp the clock observed")
}

/// Settles an edit that lost to a delete: keep the delete (its view grows
/// to cover the edit, and every site's record closes when that arrives),
/// or keep the edit (the row lives again, with the edited value).
#[allow(clippy::too_many_arguments)]
pub(super) fn resolve_delete(
    conn: &Connection,
    ctx: &Ctx<'_>,
    clock: &mut HlcClock,
    now_ms: u64,
    id: i64,
    keep: Keep,
    (key, mut row, old_patient): (RowKey, RowState, Option<String>),
    col: &str,
    hlc: &str,
    batch: &mut StampBatch,
) -> Result<Resolved, DbError> {
    let lost = row
        .lost_to_delete()
        .find(|(c, v)| c.as_str() == col && v.hlc().encode() == hlc)
        .map(|(_, v)| v.clone());
    let Some(lost) = lost else {
        sync_records(conn, &key, &row, old_patient.as_deref(), "", now_ms)?;
        return Err(DbError::ConflictSettled {
            id,
            how: "the row was restored, or its delete was accepted".into(),
        });
    };
    let mut stamped = RowState { cl: row.cl, ..RowState::default() };
    let value = match keep {
        Keep::Winner => {
            row.deleted.add(lost.hlc());
            stamped.deleted = row.deleted.clone();
            Value::Null
        }
        Keep::Loser => {
            let state = row.fields.get(col).expect("a lost version belongs to a field of the row");
            let version = settling_version(clock, now_ms, state, lost.value().clone());
            row.cl += 1;
            row.deleted = Base::default();
            row.fields.insert(col.to_owned(), FieldState::single(version));
            stamped.cl = row.cl;
            // The row comes back whole: its other fields travel too.
            stamped.fields = row.fields.clone();
            lost.value().clone()
        }
    };
    let patient = patient_of(ctx, &key.table, &key.pk, &row, old_patient.as_deref());
    save_row(conn, ctx, &key.table, &key.pk, &row, patient.as_deref(), Some(old_patient.as_deref()), None)?;
    sync_records(conn, &key, &row, patient.as_deref(), "", now_ms)?;
    if let Err(reason) = project_or_park(conn, ctx, &key, &row)? {
        return Err(DbError::Corrupt(format!("the app's table refuses {}/{}: {reason}", key.table, key.pk)));
    }
    batch.bytes += 300 + key.table.len() + key.pk.len() + 200 * stamped.fields.len();
    batch.versions += 1;
    let (table, pk) = (key.table.clone(), key.pk.clone());
    add_to_batch(batch, key, stamped, old_patient, patient);
    Ok(Resolved { id, table, pk, column: col.to_owned(), value })
}
