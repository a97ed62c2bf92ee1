//! One sync run: guard, export, import (full scan), read-repair, site file,
//! report. Every step is safe to interrupt: the database commits come
//! first, files are rewritten from the database, and the outbox makes the
//! file writes of an export idempotent.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tracing::instrument;

use super::host::{SystemClock, fault_point, machine_fingerprint};
use super::report::{Counts, Outcome, Recorder, RunReport};
use super::{EngineError, MAX_CLOCK_SKEW_MS};
use crate::conflicts::{PatientName, classify_patient_name, is_copy_of_site_file};
use crate::db::{Db, SiteConfig};
use crate::folder::layout::{MANIFEST, PATIENTS_DIR, SITES_DIR, patient_path, site_path};
use crate::folder::{DiskFolder, Entry, Folder, IgnoreRules, ReadError};
use crate::model::{Clock, PatientDoc, patient_file_name, shard_of, write_hex_bytes};
use crate::xmlstore::{
    Limits, SiteFile, decode_manifest, decode_patient, decode_site, encode_patient, encode_site, format_time,
};

/// Files applied per database transaction during a scan.
const CHUNK: usize = 256;
/// How often the reconcile loop may go round before it leaves the rest for
/// the next run (each round only follows rows that moved between patients).
const MAX_ROUNDS: usize = 8;

/// Options of one run.
#[derive(Clone, Debug)]
pub struct SyncOptions {
    /// What started the run: `manual`, `init`, `interval`, `watcher`, ...
    pub trigger: String,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions { trigger: "manual".into() }
    }
}

/// The single-instance lock for a database, held for the whole run.
pub(crate) struct InstanceLock {
    _file: File,
}

pub(crate) fn lock_path(db_path: &Path) -> PathBuf {
    let mut name = db_path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push("-clinicsync.lock");
    db_path.with_file_name(name)
}

pub(crate) fn take_lock(db_path: &Path) -> Result<InstanceLock, EngineError> {
    let path = lock_path(db_path);
    let file = File::options().create(true).truncate(false).write(true).open(&path).map_err(|source| {
        EngineError::Io { what: format!("cannot create the lock file {}", path.display()), source }
    })?;
    match file.try_lock() {
        Ok(()) => Ok(InstanceLock { _file: file }),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(EngineError::Busy { db: db_path.display().to_string() })
        }
        Err(std::fs::TryLockError::Error(source)) => {
            Err(EngineError::Io { what: format!("cannot lock {}", path.display()), source })
        }
    }
}

/// The staging directory for atomic writes: beside the database, outside
/// the synced folder.
pub(crate) fn staging_dir(db_path: &Path) -> PathBuf {
    let dir = db_path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    dir.join(".clinicsync-staging")
}

/// Runs one complete sync of the database at `db_path`.
pub fn sync(db_path: &Path, options: &SyncOptions) -> Result<RunReport, EngineError> {
    sync_with_clock(db_path, options, &SystemClock)
}

/// [`sync`] with an explicit clock.
#[instrument(skip_all, fields(db = %db_path.display(), trigger = %options.trigger))]
pub fn sync_with_clock(
    db_path: &Path,
    options: &SyncOptions,
    clock: &dyn Clock,
) -> Result<RunReport, EngineError> {
    let db = Db::open(db_path)?;
    let _lock = take_lock(db_path)?;
    let cfg = db.site_config()?;
    let started_ms = clock.now_ms();
    let run_id = db.begin_run(&options.trigger, started_ms)?;
    let folder = DiskFolder::new(cfg.folder.clone(), Some(staging_dir(db_path)));
    let mut run = Run {
        db,
        folder,
        cfg,
        clock,
        rec: Recorder::new(started_ms),
        counts: Counts::default(),
        limits: Limits::default(),
        ignore: IgnoreRules::new(),
        now_ms: started_ms,
    };
    let result = run.execute();
    run.rec.finish();
    let (outcome, error) = match result {
        Ok(()) if run.rec.partial => (Outcome::Partial, None),
        Ok(()) => (Outcome::Ok, None),
        Err(e) => {
            let message = e.to_string();
            run.rec.skipped("failed", None, message.clone());
            (Outcome::Failed, Some(message))
        }
    };
    if outcome != Outcome::Failed {
        // The site file says when this site last synced completely; a
        // failure to publish it is itself worth a retry.
        if let Err(e) = run.publish_site_file(outcome == Outcome::Ok) {
            run.rec.skipped(
                "site-file",
                Some(&site_path(run.cfg.site)),
                format!("could not be written: {e}"),
            );
        }
    }
    let outcome = if outcome == Outcome::Ok && run.rec.partial { Outcome::Partial } else { outcome };
    let ended_ms = clock.now_ms();
    let report = RunReport {
        run_id: Some(run_id),
        trigger: options.trigger.clone(),
        outcome,
        started_ms,
        ended_ms,
        counts: run.counts.clone(),
        error,
        events: run.rec.events.clone(),
    };
    let summary = serde_json::to_value(&report.counts).expect("counts serialise");
    run.db.finish_run(run_id, ended_ms, outcome.as_str(), &summary, &report.events)?;
    tracing::info!(outcome = outcome.as_str(), "run finished");
    Ok(report)
}

/// A patient file (or a copy of one) found in the folder.
#[derive(Clone, Debug)]
struct FileRef {
    path: String,
    /// The 32-hex stem of the original it belongs to.
    stem: String,
    copy: bool,
}

enum Loaded {
    /// Read and decoded.
    Doc { doc: PatientDoc, bytes: Vec<u8>, entry: Entry, sha: String },
    /// Same size, mtime and hash as when it was last applied.
    Unchanged { bytes: Vec<u8>, entry: Entry },
    /// Gone since it was listed.
    Gone,
    /// Not usable now; the recorder has the reason.
    Skipped,
}

struct Run<'c> {
    db: Db,
    folder: DiskFolder,
    cfg: SiteConfig,
    clock: &'c dyn Clock,
    rec: Recorder,
    counts: Counts,
    limits: Limits,
    ignore: IgnoreRules,
    now_ms: u64,
}

fn sha_hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(64);
    write_hex_bytes(&mut out, &Sha256::digest(bytes));
    out
}

impl Run<'_> {
    fn execute(&mut self) -> Result<(), EngineError> {
        self.guard()?;
        self.export()?;
        self.import_full_scan()?;
        // Changes the app made while the import ran were stamped by the
        // import's transactions; write them now rather than next run.
        self.write_outbox()?;
        Ok(())
    }

    /// Step 1: refuse to run where running could do harm.
    fn guard(&mut self) -> Result<(), EngineError> {
        let here = machine_fingerprint();
        if self.cfg.machine != here {
            return Err(EngineError::CopiedDatabase {
                db: self.db.path().display().to_string(),
                recorded: self.cfg.machine.clone(),
                here,
            });
        }
        let folder_display = self.cfg.folder.display().to_string();
        if !self.cfg.folder.is_dir() {
            return Err(EngineError::FolderUnreachable { folder: folder_display });
        }
        let manifest = match self.folder.read(MANIFEST, 1 << 20) {
            Ok(bytes) => decode_manifest(&bytes).map_err(|e| EngineError::BadManifest {
                folder: folder_display.clone(),
                reason: e.to_string(),
            })?,
            Err(ReadError::NotFound) => return Err(EngineError::NotAFamily { folder: folder_display }),
            Err(e) => return Err(EngineError::BadManifest { folder: folder_display, reason: e.to_string() }),
        };
        if manifest.family != self.cfg.family {
            return Err(EngineError::OtherFamily {
                folder: folder_display,
                theirs: manifest.family.short(),
                ours: self.cfg.family.short(),
            });
        }
        let site_hex = self.cfg.site.to_string();
        for entry in self.folder.list(SITES_DIR).map_err(|e| self.io("cannot list sites/", e))? {
            if !self.ignore.is_ignored(&entry.name) && is_copy_of_site_file(&entry.name, &site_hex) {
                return Err(EngineError::SiteOnTwoMachines { file: format!("{SITES_DIR}/{}", entry.name) });
            }
        }
        let own = site_path(self.cfg.site);
        match self.folder.read(&own, 1 << 20) {
            Ok(bytes) => match decode_site(&bytes) {
                Ok(published) => {
                    let ours = self.db.head_seq()?;
                    if published.head_seq > ours {
                        return Err(EngineError::RestoredBackup {
                            db: self.db.path().display().to_string(),
                            published: published.head_seq,
                            ours,
                        });
                    }
                }
                // Our own file is rewritten at the end of the run.
                Err(e) => self.rec.warning(
                    "site-file",
                    Some(&own),
                    format!("this site's own file is unreadable ({e}); it will be rewritten"),
                ),
            },
            Err(ReadError::NotFound) => {}
            Err(e) => {
                self.rec.warning("site-file", Some(&own), format!("this site's own file cannot be read: {e}"))
            }
        }
        Ok(())
    }

    fn io(&self, what: &str, source: std::io::Error) -> EngineError {
        EngineError::Io { what: what.to_owned(), source }
    }

    /// Step 2: turn local changes into versions, then write the patient
    /// files of every export not yet fully written.
    fn export(&mut self) -> Result<(), EngineError> {
        let mut w = self.db.begin_write(self.now_ms)?;
        let stamped = w.take_stamped();
        w.commit()?;
        self.note_stamped(stamped);
        fault_point("after-export-commit");
        self.write_outbox()
    }

    fn note_stamped(&mut self, stamped: crate::db::StampOutcome) {
        for warning in stamped.warnings {
            self.rec.warning("export", None, warning);
        }
        if let Some(seq) = stamped.seq {
            self.counts.exported_rows += stamped.rows as u64;
            self.counts.exported_versions += stamped.versions as u64;
            self.rec.info(
                "export",
                None,
                format!(
                    "recorded {} changed rows of {} patients ({} new versions) as export #{seq}",
                    stamped.rows,
                    stamped.patients.len(),
                    stamped.versions
                ),
            );
        }
    }

    fn write_outbox(&mut self) -> Result<(), EngineError> {
        let (max_seq, patients) = self.db.outbox_patients()?;
        let Some(max_seq) = max_seq else { return Ok(()) };
        let complete = self.reconcile(Vec::new(), patients.into_iter().collect())?;
        if complete {
            self.db.outbox_done(max_seq, self.now_ms)?;
        }
        Ok(())
    }

    /// Step 3 (full-scan form): every patient file and copy in the folder.
    fn import_full_scan(&mut self) -> Result<(), EngineError> {
        let shards = self.folder.list(PATIENTS_DIR).map_err(|e| self.io("cannot list patients/", e))?;
        if shards.is_empty() {
            self.rec.info(
                "scan",
                Some(PATIENTS_DIR),
                "the folder holds no patient files (nothing is deleted for that)".into(),
            );
        }
        let mut files = Vec::new();
        for shard in shards {
            if self.ignore.is_ignored(&shard.name) {
                continue;
            }
            let shard_path = format!("{PATIENTS_DIR}/{}", shard.name);
            if !shard.is_dir {
                self.rec.warning(
                    "unknown-file",
                    Some(&shard_path),
                    "is not a clinicsync file; left alone".into(),
                );
                continue;
            }
            let valid_shard =
                shard.name.len() == 2 && shard.name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
            if !valid_shard {
                self.rec.warning(
                    "unknown-file",
                    Some(&shard_path),
                    "is not a clinicsync folder; left alone".into(),
                );
                continue;
            }
            let entries = self
                .folder
                .list(&shard_path)
                .map_err(|e| self.io(&format!("cannot list {shard_path}"), e))?;
            for entry in entries {
                if self.ignore.is_ignored(&entry.name) {
                    continue;
                }
                let path = format!("{shard_path}/{}", entry.name);
                if entry.is_dir {
                    self.rec.warning(
                        "unknown-file",
                        Some(&path),
                        "is a folder where only patient files belong; left alone".into(),
                    );
                    continue;
                }
                match classify_patient_name(&entry.name) {
                    PatientName::Original { stem } => {
                        // A file in the wrong shard is data all the same:
                        // merge it like a copy.
                        let copy = shard_of(&stem) != shard.name;
                        files.push(FileRef { path, stem, copy });
                    }
                    PatientName::Copy { stem } => files.push(FileRef { path, stem, copy: true }),
                    PatientName::Unknown => {
                        self.rec.warning(
                            "unknown-file",
                            Some(&path),
                            "is not a clinicsync file name; left alone".into(),
                        );
                    }
                }
            }
        }
        self.reconcile(files, BTreeSet::new())?;
        Ok(())
    }

    /// Reads and verifies one file. Nothing of a file that fails is used.
    fn load(&mut self, f: &FileRef) -> Result<Loaded, EngineError> {
        self.counts.files_scanned += 1;
        let entry = match self.folder.metadata(&f.path) {
            Ok(Some(e)) => e,
            Ok(None) => return Ok(Loaded::Gone),
            Err(e) => {
                self.rec.skipped("skipped", Some(&f.path), format!("cannot be read: {e}; will retry"));
                self.counts.files_skipped += 1;
                return Ok(Loaded::Skipped);
            }
        };
        let bytes = match self.folder.read(&f.path, self.limits.max_file_bytes) {
            Ok(b) => b,
            Err(ReadError::NotFound) => return Ok(Loaded::Gone),
            Err(e) => {
                self.rec.skipped("skipped", Some(&f.path), format!("was not applied: {e}; will retry"));
                self.counts.files_skipped += 1;
                return Ok(Loaded::Skipped);
            }
        };
        self.counts.bytes_read += bytes.len() as u64;
        let sha = sha_hex(&bytes);
        if let Some((size, mtime, seen_sha)) = self.db.file_seen(&f.path)?
            && size == bytes.len() as u64
            && mtime == entry.mtime_ns
            && seen_sha == sha
        {
            self.counts.files_unchanged += 1;
            return Ok(Loaded::Unchanged { bytes, entry });
        }
        let doc = match decode_patient(&bytes, self.limits) {
            Ok(doc) => doc,
            Err(e) => {
                let retry = if e.is_transient() {
                    "will retry next run"
                } else {
                    "will retry once it is repaired or replaced"
                };
                self.rec.skipped("skipped", Some(&f.path), format!("was not applied: {e}; {retry}"));
                self.counts.files_skipped += 1;
                return Ok(Loaded::Skipped);
            }
        };
        let expected = patient_file_name(&doc.patient.0);
        if expected != f.stem {
            self.rec.skipped(
                "skipped",
                Some(&f.path),
                format!(
                    "was not applied: it holds patient {} whose file would be named {expected}.xml",
                    doc.patient
                ),
            );
            self.counts.files_skipped += 1;
            return Ok(Loaded::Skipped);
        }
        let limit = self.now_ms.saturating_add(MAX_CLOCK_SKEW_MS);
        if let Some(ahead) = doc.stamps().filter(|h| h.wall_ms() > limit).max() {
            // Rounded to the minute: people read "3days", not "2days 23h 59m 59s".
            let minutes = (ahead.wall_ms() - self.now_ms + 30_000) / 60_000;
            let by = humantime::format_duration(std::time::Duration::from_secs(minutes * 60));
            self.rec.skipped(
                "held-back",
                Some(&f.path),
                format!("held back: site {}'s clock is {by} ahead of this computer's; it is applied once the clocks agree", ahead.site().short()),
            );
            self.counts.files_held_back += 1;
            return Ok(Loaded::Skipped);
        }
        Ok(Loaded::Doc { doc, bytes, entry, sha })
    }

    /// Joins files into the database and rewrites every patient file that
    /// is behind the database (read-repair), following rows that moved
    /// between patients. Returns true when every wanted patient file is
    /// now up to date.
    fn reconcile(
        &mut self,
        mut queue: Vec<FileRef>,
        mut want: BTreeSet<String>,
    ) -> Result<bool, EngineError> {
        // Original files read this run: stem -> (bytes, entry) or None when absent.
        let mut originals: BTreeMap<String, Option<(Vec<u8>, Entry)>> = BTreeMap::new();
        let mut blocked: BTreeSet<String> = BTreeSet::new();
        let mut done: BTreeSet<String> = BTreeSet::new();
        for _round in 0..MAX_ROUNDS {
            // The original file of every wanted patient must be read (and
            // joined) before it may be rewritten.
            let mut queued: BTreeSet<String> =
                queue.iter().filter(|f| !f.copy).map(|f| f.stem.clone()).collect();
            for patient in want.difference(&done) {
                let stem = patient_file_name(patient);
                if originals.contains_key(&stem) || blocked.contains(&stem) || queued.contains(&stem) {
                    continue;
                }
                queued.insert(stem.clone());
                queue.push(FileRef { path: patient_path(&stem), stem, copy: false });
            }
            for chunk in std::mem::take(&mut queue).chunks(CHUNK) {
                self.apply_chunk(chunk, &mut want, &mut originals, &mut blocked)?;
            }
            let pending: Vec<String> = want.difference(&done).cloned().collect();
            let mut writes: Vec<(String, Vec<u8>, String)> = Vec::new();
            for patient in pending {
                let stem = patient_file_name(&patient);
                if blocked.contains(&stem) {
                    continue;
                }
                let Some(existing) = originals.get(&stem) else { continue };
                let doc = self.db.doc_for_patient(&patient)?;
                if doc.rows.is_empty() && existing.is_none() {
                    done.insert(patient);
                    continue;
                }
                let bytes = encode_patient(&doc);
                let unchanged = existing.as_ref().is_some_and(|(old, _)| *old == bytes);
                if unchanged {
                    done.insert(patient);
                    continue;
                }
                // The file must not have changed since we read it: a newer
                // delivery is read and joined first, next round.
                let path = patient_path(&stem);
                let now =
                    self.folder.metadata(&path).map_err(|e| self.io(&format!("cannot stat {path}"), e))?;
                let same = match (existing, &now) {
                    (None, None) => true,
                    (Some((old, e)), Some(n)) => {
                        e.size == n.size && e.mtime_ns == n.mtime_ns && old.len() as u64 == n.size
                    }
                    _ => false,
                };
                if !same {
                    originals.remove(&stem);
                    continue;
                }
                writes.push((path, bytes, patient));
            }
            self.write_files(&mut writes, &mut done)?;
            if want.iter().all(|p| done.contains(p) || blocked.contains(&patient_file_name(p))) {
                break;
            }
        }
        let left: Vec<&String> =
            want.iter().filter(|p| !done.contains(*p) && !blocked.contains(&patient_file_name(p))).collect();
        if !left.is_empty() {
            self.rec.skipped(
                "write",
                None,
                format!(
                    "{} patient files kept changing while this run read them; the next run finishes them",
                    left.len()
                ),
            );
        }
        Ok(left.is_empty() && want.iter().all(|p| !blocked.contains(&patient_file_name(p))))
    }

    fn apply_chunk(
        &mut self,
        chunk: &[FileRef],
        want: &mut BTreeSet<String>,
        originals: &mut BTreeMap<String, Option<(Vec<u8>, Entry)>>,
        blocked: &mut BTreeSet<String>,
    ) -> Result<(), EngineError> {
        let mut loaded = Vec::with_capacity(chunk.len());
        for f in chunk {
            match self.load(f)? {
                Loaded::Doc { doc, bytes, entry, sha } => loaded.push((f, doc, bytes, entry, sha)),
                Loaded::Unchanged { bytes, entry } => {
                    if !f.copy {
                        originals.insert(f.stem.clone(), Some((bytes, entry)));
                    }
                }
                Loaded::Gone => {
                    if !f.copy {
                        originals.insert(f.stem.clone(), None);
                    }
                }
                Loaded::Skipped => {
                    if !f.copy {
                        // Never overwrite what we cannot read: it may be a
                        // newer version still arriving.
                        blocked.insert(f.stem.clone());
                    }
                }
            }
        }
        if loaded.is_empty() {
            return Ok(());
        }
        let mut w = self.db.begin_write(self.now_ms)?;
        let stamped = w.take_stamped();
        let mut results = Vec::with_capacity(loaded.len());
        for (f, doc, _, entry, sha) in &loaded {
            let result = w.apply_doc(doc, &f.path);
            if result.is_ok() {
                w.record_file(&f.path, entry.size, entry.mtime_ns, sha)?;
            }
            results.push(result);
        }
        w.commit()?;
        self.note_stamped(stamped);
        for ((f, doc, bytes, entry, _), result) in loaded.into_iter().zip(results) {
            match result {
                Ok(outcome) => {
                    want.insert(doc.patient.0.clone());
                    want.extend(outcome.affected.iter().cloned());
                    if !f.copy {
                        originals.insert(f.stem.clone(), Some((bytes, entry)));
                    }
                    for warning in outcome.warnings {
                        self.rec.warning("schema", Some(&f.path), warning);
                    }
                    if outcome.rows_changed > 0 {
                        self.counts.files_applied += 1;
                        self.counts.rows_applied += outcome.rows_changed as u64;
                        self.rec.applied(
                            &f.path,
                            format!(
                                "applied {} changed rows of patient {}",
                                outcome.rows_changed, doc.patient
                            ),
                        );
                    }
                    if outcome.new_conflicts > 0 {
                        self.counts.new_conflicts += outcome.new_conflicts as u64;
                        self.rec.warning(
                            "conflict",
                            Some(&f.path),
                            format!(
                                "{} concurrent edits of patient {} kept for review (`clinicsync conflicts`)",
                                outcome.new_conflicts, doc.patient
                            ),
                        );
                    }
                    if f.copy {
                        self.counts.conflict_copies_merged += 1;
                        self.rec.info(
                            "conflict-copy",
                            Some(&f.path),
                            format!("merged into {}; the copy is left in place", patient_path(&f.stem)),
                        );
                    }
                }
                Err(e) => {
                    self.counts.files_skipped += 1;
                    self.rec.skipped(
                        "skipped",
                        Some(&f.path),
                        format!("could not be applied to the database, nothing of it was kept: {e}"),
                    );
                    if !f.copy {
                        blocked.insert(f.stem.clone());
                    }
                }
            }
        }
        Ok(())
    }

    fn write_files(
        &mut self,
        writes: &mut Vec<(String, Vec<u8>, String)>,
        done: &mut BTreeSet<String>,
    ) -> Result<(), EngineError> {
        const BATCH_BYTES: usize = 16 << 20;
        while !writes.is_empty() {
            let mut size = 0;
            let mut n = 0;
            while n < writes.len() && (n == 0 || size + writes[n].1.len() <= BATCH_BYTES) {
                size += writes[n].1.len();
                n += 1;
            }
            let batch: Vec<(String, Vec<u8>, String)> = writes.drain(..n).collect();
            let files: Vec<(String, Vec<u8>)> =
                batch.iter().map(|(p, b, _)| (p.clone(), b.clone())).collect();
            if let Err(e) = self.folder.write_batch(&files) {
                self.rec.skipped(
                    "write",
                    None,
                    format!("could not write {} patient files: {e}; will retry", files.len()),
                );
                continue;
            }
            let mut w = self.db.begin_write(self.now_ms)?;
            let stamped = w.take_stamped();
            for (path, bytes) in &files {
                if let Ok(Some(entry)) = self.folder.metadata(path) {
                    w.record_file(path, entry.size, entry.mtime_ns, &sha_hex(bytes))?;
                }
                self.counts.files_written += 1;
                self.counts.bytes_written += bytes.len() as u64;
            }
            w.commit()?;
            self.note_stamped(stamped);
            done.extend(batch.into_iter().map(|(_, _, patient)| patient));
        }
        Ok(())
    }

    /// Step 6 (part): publish this site's file.
    fn publish_site_file(&mut self, ok: bool) -> Result<(), EngineError> {
        let last_sync_ms = if ok { Some(self.clock.now_ms()) } else { self.db.last_ok_ms()? };
        let file = SiteFile {
            site: self.cfg.site,
            family: self.cfg.family,
            name: self.cfg.name.clone(),
            app_version: env!("CARGO_PKG_VERSION").to_owned(),
            head_seq: self.db.head_seq()?,
            last_sync_ms,
            machine: self.cfg.machine.clone(),
            mapping: self.db.mapping().fingerprint(),
        };
        let path = site_path(self.cfg.site);
        let bytes = encode_site(&file);
        if self.folder.read(&path, 1 << 20).ok().as_deref() != Some(bytes.as_slice()) {
            fault_point("before-site-file");
            self.folder
                .write_batch(&[(path, bytes)])
                .map_err(|e| self.io("cannot write the site file", e))?;
            if let Some(ms) = last_sync_ms {
                tracing::debug!(last_sync = %format_time(ms), "site file published");
            }
        }
        Ok(())
    }
}
