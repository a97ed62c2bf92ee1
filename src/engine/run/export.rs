//! Export: stamp the app's changes and write them to this site's change-log
//! (through the outbox, so an interrupted write is done again, not lost).

use crate::changelog::segment_path;
use crate::db::{DiskProbe, StampOutcome};
use crate::engine::EngineError;
use crate::engine::host::fault_point;

use super::{Run, SEGMENT_BYTES, SEGMENT_ROWS, WRITE_BATCH_BYTES};
use crate::engine::report::{EventKind, counted};

impl Run<'_> {
    /// Step 2: turn local changes into versions, one bounded segment per
    /// transaction (short transactions: the app keeps writing), then write
    /// the segments and patient files of every export not yet written.
    pub(super) fn export(&mut self) -> Result<(), EngineError> {
        self.first_export()?;
        let probe = DiskProbe::start();
        while self.db.has_captured()? {
            let mut w = self.db.begin_write(self.now_ms)?;
            let more = w.stamp_pending(SEGMENT_ROWS, SEGMENT_BYTES)?;
            let stamped = w.commit()?;
            self.progress.advance(stamped.rows as u64);
            self.note_stamped(stamped);
            if !more {
                break;
            }
        }
        self.cold |= probe.went_to_disk();
        self.export_documents()?;
        fault_point("after-export-commit");
        self.write_outbox()
    }

    pub(super) fn note_stamped(&mut self, stamped: StampOutcome) {
        for warning in stamped.warnings {
            self.rec.warning(EventKind::Export, None, warning);
        }
        if let Some(seq) = stamped.seq {
            self.counts.exported_rows += stamped.rows as u64;
            self.counts.exported_versions += stamped.versions as u64;
            self.rec.info(
                EventKind::Export,
                None,
                format!(
                    "recorded {} of {} ({}) as export #{seq}",
                    counted(stamped.rows as u64, "changed row", "changed rows"),
                    counted(stamped.patients as u64, "patient", "patients"),
                    counted(stamped.versions as u64, "new version", "new versions"),
                ),
            );
        }
    }

    /// Writes the segments of undone exports, then the patient files they
    /// touched; marks them done when everything is written.
    pub(super) fn write_outbox(&mut self) -> Result<(), EngineError> {
        self.write_outbox_with(true)
    }

    /// [`Self::write_outbox`] as a part of another step's progress.
    pub(super) fn write_outbox_quietly(&mut self) -> Result<(), EngineError> {
        self.write_outbox_with(false)
    }

    pub(super) fn write_outbox_with(&mut self, own_step: bool) -> Result<(), EngineError> {
        let seqs = self.db.undone_seqs()?;
        let Some(&max_seq) = seqs.last() else { return Ok(()) };
        if own_step {
            self.progress.step("writing the change-log", seqs.len() as u64);
        }
        let mut batch: Vec<(String, Vec<u8>)> = Vec::new();
        let mut batch_bytes = 0;
        let mut in_folder = Vec::new();
        for seq in seqs {
            let Some(bytes) = self.db.segment_bytes(seq)? else { continue };
            let path = segment_path(self.cfg.site, seq);
            in_folder.push(seq);
            if own_step {
                self.progress.advance(1);
            }
            if self.folder.read(&path, bytes.len() as u64).ok().as_deref() == Some(bytes.as_slice()) {
                continue;
            }
            batch_bytes += bytes.len();
            batch.push((path, bytes));
            if batch_bytes >= WRITE_BATCH_BYTES && !self.write_segments(&mut batch, &mut batch_bytes) {
                return Ok(());
            }
        }
        if !self.write_segments(&mut batch, &mut batch_bytes) {
            return Ok(());
        }
        fault_point("after-segment-write");
        // The segments are published even if a patient file below waits (a
        // damaged file must not hold back this site's whole log).
        self.db.segments_written(&in_folder, self.now_ms)?;
        if self.only.is_some() {
            // A table run leaves patient files to the next full sync:
            // writing one joins the file's every table first.
            return Ok(());
        }
        let patients: Vec<String> = self.db.outbox_patients(max_seq)?;
        if self.purges.new_horizon.is_some() {
            // Others purged deletions this site has not applied yet: its
            // files are written after the import has applied them, or
            // they would publish rows the others purged.
            return Ok(());
        }
        let complete = self.reconcile(Vec::new(), patients)?;
        if complete {
            self.db.outbox_done(max_seq, self.now_ms)?;
        }
        Ok(())
    }

    pub(super) fn write_segments(&mut self, batch: &mut Vec<(String, Vec<u8>)>, bytes: &mut usize) -> bool {
        if batch.is_empty() {
            return true;
        }
        match self.folder.write_batch(batch) {
            Ok(()) => {
                self.counts.segments_written += batch.len() as u64;
                self.counts.bytes_written += *bytes as u64;
                batch.clear();
                *bytes = 0;
                true
            }
            Err(e) => {
                self.rec.skipped(
                    EventKind::Write,
                    None,
                    format!("could not write {} change-log segments: {e}; will retry", batch.len()),
                );
                false
            }
        }
    }
}
