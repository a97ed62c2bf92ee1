//! Per-patient rows digests (`_cs_digests`): for a patient that has one,
//! the sum of the hashes of its rows as its patient file holds them (see
//! [`RowsDigest`]). Read-repair takes a file whose digest equals this one
//! as up to date without reading the patient's rows from the state.
//!
//! The rule that keeps them true: every write of `_cs_rows` either moves
//! the digests of the patients it touches along with it (takes the row's
//! old hash out, adds the new one) or drops them. A digest is only ever
//! made whole from an encoding of the state (read-repair's comparison,
//! with no write in between). A build that did not know this table would
//! break the rule, so it came with state format 3, which such builds refuse
//! to open.

use rusqlite::{Connection, OptionalExtension, params};

use crate::model::RowState;
use crate::xmlstore::{RowSource, RowsDigest};

pub(crate) const TABLE: &str =
    "CREATE TABLE IF NOT EXISTS _cs_digests (patient TEXT PRIMARY KEY, rows BLOB NOT NULL) WITHOUT ROWID;";

/// Whether any patient has a digest: when none does (a new or seeding
/// database) writes skip the upkeep altogether.
pub(crate) fn any(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row("SELECT EXISTS (SELECT 1 FROM _cs_digests)", [], |r| r.get(0))
}

/// A patient's digest; one that does not decode counts as none.
pub(crate) fn get(conn: &Connection, patient: &str) -> rusqlite::Result<Option<RowsDigest>> {
    let blob: Option<Vec<u8>> = conn
        .prepare_cached("SELECT rows FROM _cs_digests WHERE patient = ?1")?
        .query_row([patient], |r| r.get(0))
        .optional()?;
    Ok(blob.and_then(|b| RowsDigest::from_bytes(&b)))
}

/// Reads a patient's digest and forgets it: the page a write of the
/// digest changes, read ahead (see `read_ahead.rs`).
pub(super) fn read_ahead(conn: &Connection, patient: &str) -> rusqlite::Result<()> {
    conn.prepare_cached("SELECT length(rows) FROM _cs_digests WHERE patient = ?1")?
        .query_row([patient], |_| Ok(()))
        .optional()?;
    Ok(())
}

pub(crate) fn put(conn: &Connection, patient: &str, digest: RowsDigest) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO _cs_digests (patient, rows) VALUES (?1, ?2)
         ON CONFLICT (patient) DO UPDATE SET rows = excluded.rows",
    )?
    .execute(params![patient, digest.to_bytes().as_slice()])?;
    Ok(())
}

pub(crate) fn drop(conn: &Connection, patient: &str) -> rusqlite::Result<()> {
    conn.prepare_cached("DELETE FROM _cs_digests WHERE patient = ?1")?.execute([patient])?;
    Ok(())
}

pub(crate) fn drop_all(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM _cs_digests", [])?;
    Ok(())
}

/// A stored row's part in its patient's digest, taken before the row
/// changes: the patient's digest and the row's hash.
pub(crate) struct Before {
    digest: RowsDigest,
    hash: RowsDigest,
}

impl Before {
    pub(crate) fn new(digest: RowsDigest, tbl: &str, pk: &str, row: &impl RowSource) -> Before {
        Before { digest, hash: RowsDigest::row(tbl, pk, row) }
    }
}

/// For [`after_save`]: `None` when the row's patient has no digest
/// (nothing to move).
pub(crate) fn before_save(
    conn: &Connection,
    tbl: &str,
    pk: &str,
    row: &RowState,
    patient: Option<&str>,
) -> rusqlite::Result<Option<Before>> {
    let Some(patient) = patient else { return Ok(None) };
    Ok(get(conn, patient)?.map(|digest| Before::new(digest, tbl, pk, row)))
}

/// Moves the digests after a row was saved: `before` is the patient its
/// old state was filed under (`None`: it had none), `old` what
/// [`before_save`] took of it just before. Without it, the old patient's
/// digest (if any) is dropped.
pub(crate) fn after_save(
    conn: &Connection,
    tbl: &str,
    pk: &str,
    row: &RowState,
    patient: Option<&str>,
    before: Option<Option<&str>>,
    old: Option<Before>,
) -> rusqlite::Result<()> {
    if let Some(Some(was)) = before {
        let stays = patient == Some(was);
        match old {
            Some(Before { digest, hash }) if stays => {
                put(conn, was, digest.minus(hash).plus(RowsDigest::row(tbl, pk, row)))?;
            }
            Some(Before { digest, hash }) => put(conn, was, digest.minus(hash))?,
            None => drop(conn, was)?,
        }
        if stays {
            return Ok(());
        }
    }
    if let Some(now) = patient
        && let Some(digest) = get(conn, now)?
    {
        put(conn, now, digest.plus(RowsDigest::row(tbl, pk, row)))?;
    }
    Ok(())
}
