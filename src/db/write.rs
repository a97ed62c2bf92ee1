//! A write transaction on the state: what the engine calls to stamp the
//! app's changes, join incoming documents, settle conflicts and hold
//! deletions, all or nothing.

use std::borrow::Cow;
use std::collections::BTreeMap;

use super::documents::{self, DocFile};
use super::held::Kept;
use super::mapping::Mapping;
use super::meta::meta_set;
use super::read_ahead::ReadAhead;
use super::resolve::{Keep, Resolved};
use super::state::{ApplyOutcome, Ctx, StampBatch, StampOutcome};
use super::{DbError, bulk, held, outbox, project, resolve, state};
use crate::model::{BODY_FIELD, Body, HlcClock, PatientDoc, RowKey, SiteId, Value};

/// A write transaction on the state. Dropping it without `commit` rolls
/// everything back.
pub struct WriteTx<'a> {
    pub(super) tx: rusqlite::Transaction<'a>,
    /// Whether the app had pending changes when the transaction began.
    pub(super) pending: bool,
    pub(super) clock_at_start: HlcClock,
    pub(super) mapping: &'a Mapping,
    pub(super) columns: &'a BTreeMap<String, Vec<String>>,
    pub(super) clock: HlcClock,
    pub(super) site: SiteId,
    pub(super) now_ms: u64,
    pub(super) batch: StampBatch,
    pub(super) hold_deletes: bool,
    pub(super) any_purged: bool,
    pub(super) any_parked: std::cell::Cell<bool>,
    /// Whether any patient has a rows digest (see digests.rs). Digests are
    /// made only outside write transactions, so it holds until the end.
    pub(super) digests: bool,
}

/// The transaction's context for the `state` functions. A macro, not a
/// method, so that it borrows only these fields while the clock and the
/// batch are borrowed mutably beside it.
macro_rules! tx_ctx {
    ($w:expr) => {
        Ctx {
            mapping: $w.mapping,
            columns: $w.columns,
            hold_deletes: $w.hold_deletes,
            any_purged: $w.any_purged,
            any_parked: &$w.any_parked,
            digests: $w.digests,
        }
    };
}

impl WriteTx<'_> {
    /// From now on in this transaction, incoming deletions of patients are
    /// kept out of the app's tables (held) instead of applied; see
    /// [`Db::held_deletes`](super::Db::held_deletes).
    pub fn hold_deletes(&mut self) {
        self.hold_deletes = true;
    }

    /// Refuses up to `max_rows` held deletions (`sync --keep-deleted`): the
    /// rows live again here and travel to every site as new inserts.
    pub fn keep_held(&mut self, max_rows: usize) -> Result<Kept, DbError> {
        let ctx = tx_ctx!(self);
        held::keep(&self.tx, &ctx, &mut self.clock, self.now_ms, &mut self.batch, max_rows)
    }

    /// Stamps the app's pending changes, oldest first, until about
    /// `max_rows` rows or `max_bytes` of segment are stamped. Returns false
    /// when nothing is left pending.
    pub fn stamp_pending(&mut self, max_rows: usize, max_bytes: usize) -> Result<bool, DbError> {
        self.stamp_pending_of(None, max_rows, max_bytes)
    }

    /// [`WriteTx::stamp_pending`] for the rows of one table only (`None`:
    /// every table); the other tables' changes stay pending.
    pub fn stamp_pending_of(
        &mut self,
        table: Option<&str>,
        max_rows: usize,
        max_bytes: usize,
    ) -> Result<bool, DbError> {
        let ctx = tx_ctx!(self);
        state::stamp_pending(
            &self.tx,
            &ctx,
            &mut self.clock,
            self.now_ms,
            max_rows,
            max_bytes,
            table,
            &mut self.batch,
        )
    }

    /// Stamps the next rows of the first export (the rows the database
    /// held when it was set up), until about `max_rows` rows or `max_bytes`
    /// of segment. Returns false when the first export is finished. Until
    /// it is, nothing else may write the state: the run finishes it before
    /// stamping later changes and before importing.
    pub fn stamp_first_export(&mut self, max_rows: usize, max_bytes: usize) -> Result<bool, DbError> {
        let ctx = tx_ctx!(self);
        bulk::stamp_next(&self.tx, &ctx, &mut self.clock, self.now_ms, max_rows, max_bytes, &mut self.batch)
    }

    /// Joins one incoming document, all or nothing: on error nothing of it
    /// stays applied and the transaction remains usable. Rows the app
    /// changed since the last export are stamped first (outside the
    /// document's savepoint, so those stamps stand whatever happens).
    pub fn apply_doc(&mut self, doc: &PatientDoc, source: &str) -> Result<ApplyOutcome, DbError> {
        self.refuse_forged(doc)?;
        self.stamp_pending_rows(doc.rows.keys())?;
        let ctx = tx_ctx!(self);
        let rows = doc.rows.iter().map(|(k, r)| (Cow::Borrowed(k), Cow::Borrowed(r)));
        let sp = self.tx.savepoint()?;
        let outcome = state::apply_doc(&sp, &ctx, self.now_ms, &doc.patient.0, rows, source)?;
        sp.commit()?;
        for stamp in doc.stamps() {
            self.clock.observe(stamp);
        }
        Ok(outcome)
    }

    /// Joins one incoming document, taking its rows, without a savepoint of
    /// its own, for a caller that drops the whole transaction when any
    /// document fails (a segment is applied all or nothing). On error the
    /// transaction holds part of the document and must not be committed.
    /// Cheaper than [`WriteTx::apply_doc`]: a row new here is not copied,
    /// and a savepoint makes SQLite copy every page the document touches
    /// into its statement journal first.
    pub fn apply_doc_unguarded(&mut self, doc: PatientDoc, source: &str) -> Result<ApplyOutcome, DbError> {
        self.refuse_forged(&doc)?;
        self.stamp_pending_rows(doc.rows.keys())?;
        let latest = doc.stamps().max();
        let ctx = tx_ctx!(self);
        let PatientDoc { patient, rows } = doc;
        let rows = rows.into_iter().map(|(k, r)| (Cow::Owned(k), Cow::Owned(r)));
        let outcome = state::apply_doc(&self.tx, &ctx, self.now_ms, &patient.0, rows, source)?;
        if let Some(stamp) = latest {
            self.clock.observe(stamp);
        }
        Ok(outcome)
    }

    /// Refuses a document with a version stamped by this site after every
    /// stamp this site has issued: no clinicsync made it.
    fn refuse_forged(&self, doc: &PatientDoc) -> Result<(), DbError> {
        let (wall, counter) = self.clock.state();
        match doc.stamps().find(|h| h.site() == self.site && (h.wall_ms(), h.counter()) > (wall, counter)) {
            Some(h) => Err(DbError::ForgedStamp(h.encode())),
            None => Ok(()),
        }
    }

    /// Reads these rows' states and the app's rows on other threads and
    /// connections while this transaction goes on (see `read_ahead.rs`):
    /// for a caller whose rows come from the disk. `None` for a database
    /// in memory only.
    pub fn read_ahead(&self, rows: &[RowKey]) -> Option<ReadAhead> {
        let path = self.tx.path().filter(|path| !path.is_empty())?;
        let rows = rows.iter().map(|k| (k.table.as_str(), k.pk.as_str()));
        Some(state::read_ahead_rows(std::path::Path::new(path), self.mapping, rows))
    }

    /// Stamps these rows now if the app changed them since the last export
    /// (outside any document's savepoint, so those stamps stand whatever
    /// happens to the document).
    fn stamp_pending_rows<'k>(&mut self, keys: impl Iterator<Item = &'k RowKey>) -> Result<(), DbError> {
        if !self.pending {
            return Ok(());
        }
        let ctx = tx_ctx!(self);
        for key in keys {
            state::stamp_if_pending(&self.tx, &ctx, &mut self.clock, self.now_ms, key, &mut self.batch)?;
        }
        Ok(())
    }

    /// Settles an open conflict record with a new edit of its field that
    /// supersedes every concurrent value (see [`Keep`]).
    pub fn resolve_conflict(&mut self, id: i64, keep: Keep) -> Result<Resolved, DbError> {
        let ctx = tx_ctx!(self);
        resolve::resolve_conflict(&self.tx, &ctx, &mut self.clock, self.now_ms, id, keep, &mut self.batch)
    }

    /// Tries again to show every parked row in the app's tables; returns
    /// those still parked, with the reason.
    pub fn retry_parked(&mut self) -> Result<Vec<(crate::model::RowKey, String)>, DbError> {
        let ctx = tx_ctx!(self);
        project::retry_parked(&self.tx, &ctx)
    }

    /// Stamps a new body of a document, read from its local file, and
    /// records the file as in step, in one transaction. The edit saw what
    /// the file was last in step with (`file_was`): every version of the
    /// field when that is the body the row shows, else only the versions of
    /// that body, so a body that arrived and was not placed yet becomes a
    /// conflict, not overwritten unseen. Returns false when the row has no
    /// live state.
    pub fn stamp_body(
        &mut self,
        key: &RowKey,
        file: &DocFile,
        file_was: Option<&Body>,
        edit_ms: u64,
    ) -> Result<bool, DbError> {
        let base = documents::body_base(&self.tx, key, file_was)?;
        let ctx = tx_ctx!(self);
        let stamped = state::stamp_field(
            &self.tx,
            &ctx,
            &mut self.clock,
            self.now_ms,
            edit_ms,
            key,
            BODY_FIELD,
            Value::Text(file.body.encode()),
            base,
            &mut self.batch,
        )?;
        if stamped {
            documents::set_doc_file(&self.tx, key, file)?;
        }
        Ok(stamped)
    }

    /// Commits; what was stamped becomes one export with its segment.
    pub fn commit(mut self) -> Result<StampOutcome, DbError> {
        let batch = std::mem::take(&mut self.batch);
        let outcome = outbox::finish_batch(&self.tx, self.site, self.now_ms, batch)?;
        if self.clock != self.clock_at_start {
            let (wall, counter) = self.clock.state();
            meta_set(&self.tx, "hlc_wall", &wall.to_string())?;
            meta_set(&self.tx, "hlc_counter", &counter.to_string())?;
        }
        self.tx.execute("DELETE FROM _cs_quiet", [])?;
        self.tx.commit()?;
        Ok(outcome)
    }
}
