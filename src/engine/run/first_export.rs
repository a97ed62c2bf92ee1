//! The first export of a database that already held rows when it was set
//! up: its rows stamped in bounded steps, then every patient's file, in
//! patient order. This thread only talks to SQLite; the second core
//! encodes and writes one step's segment (then one chunk's patient files)
//! while this thread stamps (reads) the next.

use std::collections::VecDeque;
use std::io;
use std::thread::{Scope, ScopedJoinHandle};

use super::{Run, SEGMENT_BYTES, SEGMENT_ROWS, sha_hex};
use crate::changelog::segment_path;
use crate::db::{DbError, FirstExport, StoredPatient};
use crate::engine::EngineError;
use crate::engine::host::fault_point;
use crate::engine::report::EventKind;
use crate::folder::layout::patient_path;
use crate::folder::{DiskFolder, Entry};
use crate::model::patient_file_name;
use crate::xmlstore::{Limits, Segment, encode_segment};

/// Patients per chunk of the file stage: one batch of writes (one syncfs
/// for its files, one for its renames), about 6 MB; see docs/performance.md.
const FILE_CHUNK: usize = 512;

/// Chunks being encoded and written while this thread reads the next.
const FILE_JOBS: usize = 2;

/// A step's segment being encoded and written on the other core.
struct SegmentJob<'s> {
    seq: u64,
    done: ScopedJoinHandle<'s, (DiskFolder, io::Result<usize>)>,
}

/// A chunk of patient files being encoded and written on the other core.
struct FileJob<'s> {
    /// The chunk's last patient: where the file stage stands once it is
    /// written.
    last: String,
    /// Patients whose file is already in the folder.
    present: Vec<String>,
    done: ScopedJoinHandle<'s, Result<WrittenFiles, DbError>>,
}

struct WrittenFiles {
    folder: DiskFolder,
    /// Each file written: its path, as written, and its sha256.
    files: Vec<(String, Entry, String)>,
    bytes: u64,
    failed: Option<(usize, io::Error)>,
    /// Patients whose file would be beyond what every clinicsync reads:
    /// left to the run's own writing of files, which says so.
    refused: Vec<String>,
}

fn joined<T>(handle: ScopedJoinHandle<'_, T>) -> T {
    handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Decodes, encodes and writes patient files in one batch (on the other
/// core).
fn write_patient_files(
    folder: DiskFolder,
    patients: Vec<(String, StoredPatient)>,
) -> Result<WrittenFiles, DbError> {
    let mut files: Vec<(String, Vec<u8>)> = Vec::with_capacity(patients.len());
    let mut refused = Vec::new();
    let limits = Limits::default();
    for (path, stored) in patients {
        let patient = stored.patient.clone();
        let bytes = stored.encode()?;
        if limits.refusal(&bytes).is_some() {
            refused.push(patient);
        } else {
            files.push((path, bytes));
        }
    }
    let bytes = files.iter().map(|(_, b)| b.len() as u64).sum();
    let entries = match folder.write_batch_entries(&files) {
        Ok(entries) => entries,
        Err(e) => {
            return Ok(WrittenFiles {
                folder,
                files: Vec::new(),
                bytes: 0,
                failed: Some((files.len(), e)),
                refused,
            });
        }
    };
    let written = files
        .into_iter()
        .zip(entries)
        .map(|((path, content), entry)| (path, entry, sha_hex(&content)))
        .collect();
    Ok(WrittenFiles { folder, files: written, bytes, failed: None, refused })
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
            if self.purges.new_horizon.is_some() {
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

    /// Stamps step after step; each step's segment is encoded and written
    /// on the other core while the next step is stamped (a step only
    /// inserts rows, so it cannot change the state an earlier step's
    /// segment is made of).
    fn stamp_steps<'s>(&mut self, scope: &'s Scope<'s, '_>) -> Result<(), EngineError> {
        let mut in_flight: Option<SegmentJob<'s>> = None;
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
                self.segment_written(previous)?;
            }
            if let Some(seq) = seq {
                let (site, created_ms) = (self.cfg.site, self.now_ms);
                let folder = self.folder.sibling();
                let done = scope.spawn(move || {
                    let bytes =
                        encode_segment(&Segment { site, seq, created_ms, rows: rows.into_iter().collect() });
                    let size = bytes.len();
                    let written = folder.write_batch(&[(segment_path(site, seq), bytes)]).map(|()| size);
                    (folder, written)
                });
                in_flight = Some(SegmentJob { seq, done });
            }
        }
        if let Some(last) = in_flight.take() {
            self.segment_written(last)?;
        }
        Ok(())
    }

    fn segment_written(&mut self, job: SegmentJob<'_>) -> Result<(), EngineError> {
        let (folder, written) = joined(job.done);
        self.folder.absorb(folder);
        let size = match written {
            Ok(size) => size,
            Err(e) => {
                let path = segment_path(self.cfg.site, job.seq);
                self.rec.skipped(
                    EventKind::Write,
                    Some(&path),
                    format!("could not be written: {e}; will retry"),
                );
                return Err(self.first_export_waits());
            }
        };
        fault_point("after-segment-write");
        self.counts.segments_written += 1;
        self.counts.bytes_written += size as u64;
        self.db.first_export_segment_written(job.seq, self.now_ms)?;
        Ok(())
    }

    /// Writes every patient's file, in patient order, a chunk at a time:
    /// one chunk is encoded and written on the other core while this
    /// thread reads the next from the database.
    fn write_first_files<'s>(
        &mut self,
        scope: &'s Scope<'s, '_>,
        mut after: Option<String>,
    ) -> Result<(), EngineError> {
        let mut in_flight: VecDeque<FileJob<'s>> = VecDeque::new();
        loop {
            let docs = self.db.first_export_patients(after.as_deref(), FILE_CHUNK)?;
            let last = docs.last().map(|d| d.patient.clone());
            let next = last.map(|last| self.start_files(scope, docs, last));
            let finished = next.is_none();
            if let Some(job) = next {
                after = Some(job.last.clone());
                in_flight.push_back(job);
            }
            while in_flight.len() > FILE_JOBS || (finished && !in_flight.is_empty()) {
                let previous = in_flight.pop_front().expect("not empty");
                if !self.files_written(previous)? {
                    // A write failed: the next run goes on from the last
                    // chunk written whole. Files a later chunk did write
                    // are then in the folder, and take the ordinary path
                    // (read and joined first), as in `start_files`.
                    for job in in_flight {
                        self.folder.absorb(joined(job.done)?.folder);
                    }
                    return Ok(());
                }
            }
            if finished {
                self.db.first_export_files_until(None)?;
                return Ok(());
            }
        }
    }

    /// Starts encoding and writing the files of a chunk of patients. A
    /// patient whose file is already in the folder (a family joined with a
    /// populated database) is left to the ordinary path, which reads and
    /// joins the file first.
    fn start_files<'s>(
        &mut self,
        scope: &'s Scope<'s, '_>,
        patients: Vec<StoredPatient>,
        last: String,
    ) -> FileJob<'s> {
        let mut absent = Vec::with_capacity(patients.len());
        let mut present = Vec::new();
        for stored in patients {
            let path = patient_path(&patient_file_name(&stored.patient));
            match self.folder.metadata(&path) {
                Ok(None) => absent.push((path, stored)),
                Ok(Some(_)) | Err(_) => present.push(stored.patient),
            }
        }
        let folder = self.folder.sibling();
        let done = scope.spawn(move || write_patient_files(folder, absent));
        FileJob { last, present, done }
    }

    /// Records a chunk's files and how far the file stage got. False when
    /// the chunk could not be written.
    fn files_written(&mut self, job: FileJob<'_>) -> Result<bool, EngineError> {
        let written = joined(job.done)?;
        self.folder.absorb(written.folder);
        if let Some((n, e)) = written.failed {
            self.rec.skipped(
                EventKind::Write,
                None,
                format!("could not write {n} patient files: {e}; will retry"),
            );
            return Ok(false);
        }
        let w = self.db.begin_write(self.now_ms)?;
        for (path, entry, sha) in &written.files {
            w.record_file(path, entry.size, entry.mtime_ns, entry.id, sha)?;
        }
        let stamped = w.commit()?;
        self.note_stamped(stamped);
        self.counts.files_written += written.files.len() as u64;
        self.counts.bytes_written += written.bytes;
        self.progress.advance((written.files.len() + job.present.len()) as u64);
        if !job.present.is_empty() {
            self.db.queue_patient_files(&job.present)?;
        }
        if !written.refused.is_empty() {
            self.db.queue_patient_files(&written.refused)?;
        }
        self.db.first_export_files_until(Some(&job.last))?;
        Ok(true)
    }
}
