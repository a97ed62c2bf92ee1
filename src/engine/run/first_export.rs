//! The first export of a database that already held rows when it was set
//! up: its rows stamped in bounded steps, then every patient's file, in
//! patient order. The second core encodes one step's segment (and then one
//! chunk's patient files) while this thread reads and stamps the next.

use std::collections::HashSet;
use std::thread::{Scope, ScopedJoinHandle};

use super::{CHUNK, Run, SEGMENT_BYTES, SEGMENT_ROWS};
use crate::changelog::segment_path;
use crate::db::FirstExport;
use crate::engine::EngineError;
use crate::engine::host::fault_point;
use crate::folder::Folder;
use crate::folder::layout::patient_path;
use crate::model::{PatientDoc, patient_file_name};
use crate::xmlstore::{Segment, encode_patient, encode_segment};

/// A step's segment being encoded on the other core.
struct Encoding<'s> {
    seq: u64,
    bytes: ScopedJoinHandle<'s, Vec<u8>>,
}

/// A chunk of patient files being encoded on the other core.
struct FileChunk<'s> {
    /// The chunk's last patient: where the file stage stands once it is
    /// written.
    last: String,
    /// Patients whose file is already in the folder.
    present: Vec<String>,
    files: ScopedJoinHandle<'s, Vec<(String, Vec<u8>, String)>>,
}

fn joined<T>(handle: ScopedJoinHandle<'_, T>) -> T {
    handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

impl Run<'_> {
    /// Runs the first export while it is unfinished. Until every row is
    /// stamped and every step's segment is in the folder, nothing else
    /// writes the state (a segment not yet written is made again from the
    /// state after a crash, so that state must not change); if a segment
    /// cannot be written, the run stops here.
    pub(super) fn first_export(&mut self) -> Result<(), EngineError> {
        if self.db.first_export()?.is_none() {
            return Ok(());
        }
        // A step whose segment a crash left unwritten: made again from the
        // state, the same bytes.
        if self.db.first_export_unwritten()? {
            self.write_outbox_quietly()?;
            if self.db.first_export_unwritten()? {
                return Err(self.first_export_waits());
            }
        }
        if self.db.first_export()? == Some(FirstExport::Stamping) {
            self.progress.step("recording the database's rows", self.db.first_export_left()?);
            std::thread::scope(|scope| self.stamp_steps(scope))?;
        }
        if let Some(FirstExport::Files { after }) = self.db.first_export()? {
            if self.new_horizon.is_some() {
                // As in `write_outbox`: files wait for the import.
                return Ok(());
            }
            self.progress.step("writing patient files", self.db.first_export_left()?);
            std::thread::scope(|scope| self.write_first_files(scope, after))?;
        }
        Ok(())
    }

    fn first_export_waits(&self) -> EngineError {
        EngineError::FirstExportWaits { folder: self.cfg.folder.display().to_string() }
    }

    /// Stamps step after step; each step's segment is encoded on the other
    /// core while the next step is stamped (a step only inserts rows, so
    /// it cannot change the state an earlier step's segment is made of).
    fn stamp_steps<'s>(&mut self, scope: &'s Scope<'s, '_>) -> Result<(), EngineError> {
        let mut in_flight: Option<Encoding<'s>> = None;
        while self.db.first_export()? == Some(FirstExport::Stamping) {
            let mut w = self.db.begin_write(self.now_ms)?;
            w.stamp_first_export(SEGMENT_ROWS, SEGMENT_BYTES)?;
            let mut stamped = w.commit()?;
            self.progress.advance(stamped.rows as u64);
            let rows = std::mem::take(&mut stamped.first_export_rows);
            let seq = stamped.seq;
            self.note_stamped(stamped);
            fault_point("first-export-step");
            if let Some(previous) = in_flight.take() {
                self.publish_segment(previous)?;
            }
            if let Some(seq) = seq {
                let (site, created_ms) = (self.cfg.site, self.now_ms);
                let bytes = scope.spawn(move || {
                    encode_segment(&Segment { site, seq, created_ms, rows: rows.into_iter().collect() })
                });
                in_flight = Some(Encoding { seq, bytes });
            }
        }
        if let Some(last) = in_flight.take() {
            self.publish_segment(last)?;
        }
        Ok(())
    }

    fn publish_segment(&mut self, encoding: Encoding<'_>) -> Result<(), EngineError> {
        let bytes = joined(encoding.bytes);
        let path = segment_path(self.cfg.site, encoding.seq);
        let size = bytes.len();
        if let Err(e) = self.folder.write_batch(&[(path.clone(), bytes)]) {
            self.rec.skipped("write", Some(&path), format!("could not be written: {e}; will retry"));
            return Err(self.first_export_waits());
        }
        fault_point("after-segment-write");
        self.counts.segments_written += 1;
        self.counts.bytes_written += size as u64;
        self.db.first_export_segment_written(encoding.seq, self.now_ms)?;
        Ok(())
    }

    /// Writes every patient's file, in patient order, a chunk at a time:
    /// one chunk is encoded on the other core while this thread reads the
    /// next from the database and writes the one before.
    fn write_first_files<'s>(
        &mut self,
        scope: &'s Scope<'s, '_>,
        mut after: Option<String>,
    ) -> Result<(), EngineError> {
        let mut in_flight: Option<FileChunk<'s>> = None;
        loop {
            let docs = self.db.first_export_patients(after.as_deref(), CHUNK)?;
            let last = docs.last().map(|d| d.patient.0.clone());
            let next = last.map(|last| self.encode_files(scope, docs, last));
            if let Some(previous) = in_flight.take()
                && !self.write_file_chunk(previous)?
            {
                // A write failed: the next run goes on from the last chunk
                // written whole.
                return Ok(());
            }
            match next {
                Some(chunk) => {
                    after = Some(chunk.last.clone());
                    in_flight = Some(chunk);
                }
                None => {
                    self.db.first_export_files_until(None)?;
                    return Ok(());
                }
            }
        }
    }

    /// Starts encoding the files of a chunk of patients. A patient whose
    /// file is already in the folder (a family joined with a populated
    /// database) is left to the ordinary path, which reads and joins the
    /// file first.
    fn encode_files<'s>(
        &mut self,
        scope: &'s Scope<'s, '_>,
        docs: Vec<PatientDoc>,
        last: String,
    ) -> FileChunk<'s> {
        let mut absent = Vec::with_capacity(docs.len());
        let mut present = Vec::new();
        for doc in docs {
            let path = patient_path(&patient_file_name(&doc.patient.0));
            match self.folder.metadata(&path) {
                Ok(None) => absent.push((path, doc)),
                Ok(Some(_)) | Err(_) => present.push(doc.patient.0),
            }
        }
        let files = scope.spawn(move || {
            absent.into_iter().map(|(path, doc)| (path, encode_patient(&doc), doc.patient.0)).collect()
        });
        FileChunk { last, present, files }
    }

    /// Writes a chunk's files and records how far the file stage got.
    /// False when a write failed.
    fn write_file_chunk(&mut self, chunk: FileChunk<'_>) -> Result<bool, EngineError> {
        let writes = joined(chunk.files);
        let wanted = writes.len();
        let mut done = HashSet::new();
        self.progress.advance((wanted + chunk.present.len()) as u64);
        self.write_files(writes, &mut done)?;
        if done.len() < wanted {
            return Ok(false);
        }
        if !chunk.present.is_empty() {
            self.db.queue_patient_files(&chunk.present)?;
        }
        self.db.first_export_files_until(Some(&chunk.last))?;
        Ok(true)
    }
}
