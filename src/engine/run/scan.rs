//! Finding patient files: the full scan, the patient folders whose time
//! moved (where a cloud client may have left a conflict copy), and reading
//! one file without trusting it.

use std::collections::HashSet;

use crate::conflicts::{Classified, Client, FileKind, classify_path};
use crate::engine::EngineError;
use crate::folder::layout::{LOG_DIR, PATIENTS_DIR};
use crate::folder::{Entry, ReadError};
use crate::model::{PatientDoc, patient_file_name, shard_of};
use crate::xmlstore::decode_patient;

use super::{Run, retry_hint, sha_hex};
use crate::engine::report::EventKind;

/// A patient file (or a copy of one) found in the folder.
#[derive(Clone, Debug)]
pub(super) struct FileRef {
    pub(super) path: String,
    /// The 32-hex stem of the original it belongs to.
    pub(super) stem: String,
    /// A conflict copy (or other decorated copy) of the stem's file, and
    /// the client whose naming it follows.
    pub(super) copy: Option<Client>,
    /// Read only to check it is up to date (read-repair of this patient):
    /// compared with this database's bytes first, decoded only if they differ.
    pub(super) repair: Option<String>,
    /// Its size when listed (0 when not known): what it adds to a chunk.
    pub(super) size: u64,
}

pub(super) enum Loaded {
    /// Read and decoded.
    Doc { doc: PatientDoc, bytes: Vec<u8>, entry: Entry, sha: String },
    /// Same size, mtime and hash as when it was last applied or written.
    Unchanged { bytes: Vec<u8>, entry: Entry },
    /// Not there (or gone since it was listed).
    Gone,
    /// Not usable now; the recorder has the reason.
    Skipped,
}

/// A patient folder as the copy check saw it: its path, its time as
/// recorded before this run (`None`: never recorded; the inner `None`: the
/// folder did not exist), and its time at the check.
pub(super) type DirSeen = (String, Option<Option<i64>>, Option<i64>);

/// A directory's time after this site's own changes, starting from
/// `from`: `None` when a change did not start where the one before ended
/// (someone else changed the directory in between).
pub(super) fn follow(
    from: Option<i64>,
    own: Option<&Vec<(Option<i64>, Option<i64>)>>,
) -> Option<Option<i64>> {
    let mut at = from;
    for (before, after) in own.into_iter().flatten() {
        if *before != at {
            return None;
        }
        at = *after;
    }
    Some(at)
}

/// What this run found of the patient files.
#[derive(Default)]
pub(super) struct Scanned {
    pub(super) listed_stems: HashSet<String>,
    /// Stems that have a conflict copy in the folder (filled by the full
    /// scan): their rows are never taken for purged elsewhere.
    pub(super) copy_stems: HashSet<String>,
    /// What the copy check saw of the patient folders (see `DirSeen`).
    pub(super) dirs_seen: Option<Vec<DirSeen>>,
    /// Patient files this run has read.
    pub(super) read: HashSet<String>,
    /// Files read and found as recorded whose file id is not: recorded
    /// after the chunk that read them.
    pub(super) ids: Vec<crate::db::FileSeen>,
}

impl Run<'_> {
    /// Notes the file id of a file read and found as recorded, when the
    /// record lacks it (recorded by an earlier version): it is recorded
    /// after the chunk (see [`Scanned::ids`]).
    pub(super) fn note_file_id(&mut self, path: &str, recorded: Option<u64>, entry: &Entry) {
        if entry.id.is_some() && recorded != entry.id {
            self.scanned.ids.push((path.to_owned(), entry.size, entry.mtime_ns, entry.id));
        }
    }

    /// Every patient file and copy in the folder. Returns true when every
    /// file could be read and applied.
    pub(super) fn full_scan(&mut self) -> Result<bool, EngineError> {
        self.counts.full_scan = true;
        let skipped_before = self.counts.files_skipped + self.counts.files_held_back;
        let shards = self.folder.list(PATIENTS_DIR).map_err(|e| self.io("cannot list patients/", e))?;
        if shards.is_empty() {
            self.rec.info(
                EventKind::Scan,
                Some(PATIENTS_DIR),
                "the folder holds no patient files (nothing is deleted for that)".into(),
            );
        }
        let mut files = Vec::new();
        self.collect_patient_files(PATIENTS_DIR, shards, &mut files)?;
        for (dir, client) in self.copies.decorated.clone() {
            self.rec.info(
                EventKind::ConflictCopy,
                Some(&dir),
                format!("is a copy of the patients/ folder made by {}; its files are merged", client.label()),
            );
            let shards = self.folder.list(&dir).map_err(|e| self.io(&format!("cannot list {dir}"), e))?;
            self.collect_patient_files(&dir, shards, &mut files)?;
        }
        self.check_logs_for_copies()?;
        // Kept copies someone deleted are forgotten.
        let listed: HashSet<&str> =
            files.iter().filter(|f| f.copy.is_some()).map(|f| f.path.as_str()).collect();
        for kept in self.db.kept_copies()? {
            if !listed.contains(kept.path.as_str()) {
                self.db.forget_copy(&kept.path)?;
            }
        }
        // A patient this site knows whose file the folder does not have (a
        // client lost or renamed it) is written again: read-repair of what
        // is missing, not only of what is read. Not while returning after a
        // purge: then absence is how the purge is learned.
        let mut missing = Vec::new();
        if self.purges.peer_horizon.is_none() {
            for patient in self.db.patients()? {
                let stem = patient_file_name(&patient);
                if !self.scanned.listed_stems.contains(&stem) && !self.scanned.copy_stems.contains(&stem) {
                    missing.push(patient);
                }
            }
        }
        let complete = self.reconcile(files, missing)?;
        self.db.set_meta("last_full_scan_ms", &self.now_ms.to_string())?;
        Ok(complete && self.counts.files_skipped + self.counts.files_held_back == skipped_before)
    }

    /// Adds every patient file and copy under `top`'s shard folders.
    pub(super) fn collect_patient_files(
        &mut self,
        top: &str,
        shards: Vec<Entry>,
        files: &mut Vec<FileRef>,
    ) -> Result<(), EngineError> {
        for shard in shards {
            if self.ignore.is_ignored(&shard.name) {
                continue;
            }
            let shard_path = format!("{top}/{}", shard.name);
            if !shard.is_dir {
                self.rec.warning(
                    EventKind::UnknownFile,
                    Some(&shard_path),
                    "is not a clinicsync file; left alone".into(),
                );
                continue;
            }
            if top != PATIENTS_DIR || shard.name.len() != 2 {
                self.copies.dirs.insert(shard_path.clone());
                if top != PATIENTS_DIR {
                    self.copies.dirs.insert(top.to_owned());
                }
            }
            let entries = self
                .folder
                .list(&shard_path)
                .map_err(|e| self.io(&format!("cannot list {shard_path}"), e))?;
            for entry in entries {
                if self.ignore.is_ignored(&entry.name) {
                    if crate::folder::is_left_temp(&entry, crate::engine::host::file_time_now_ms()) {
                        let path = format!("{shard_path}/{}", entry.name);
                        match self.folder.remove(&path) {
                            Ok(()) => self.rec.info(
                                EventKind::Leftovers,
                                Some(&path),
                                "removed: a temp file that a stopped run left".into(),
                            ),
                            Err(e) => self.rec.warning(
                                EventKind::Leftovers,
                                Some(&path),
                                format!("could not be removed: {e}"),
                            ),
                        }
                    }
                    continue;
                }
                let path = format!("{shard_path}/{}", entry.name);
                if entry.is_dir {
                    self.rec.warning(
                        EventKind::UnknownFile,
                        Some(&path),
                        "is a folder where only patient files belong; left alone".into(),
                    );
                    continue;
                }
                // Files in a decorated patients folder are copies whatever
                // their own names say.
                let decorated = self.copies.decorated.iter().find(|(d, _)| d == top).map(|(_, c)| *c);
                let in_real_top = format!("{PATIENTS_DIR}/{}/{}", shard.name, entry.name);
                match classify_path(&in_real_top) {
                    Classified::Original(FileKind::Patient { stem }) => {
                        if decorated.is_none() {
                            self.scanned.listed_stems.insert(stem.clone());
                        }
                        files.push(FileRef { path, stem, copy: decorated, repair: None, size: entry.size })
                    }
                    Classified::Copy { of: FileKind::Patient { stem }, client } => {
                        // A copy holds the patient's data too: the patient
                        // is in the folder, whatever became of its original.
                        self.scanned.copy_stems.insert(stem.clone());
                        files.push(FileRef {
                            path,
                            stem,
                            copy: Some(decorated.unwrap_or(client)),
                            repair: None,
                            size: entry.size,
                        })
                    }
                    _ => self.rec.warning(
                        EventKind::UnknownFile,
                        Some(&path),
                        "is not a clinicsync file name; left alone".into(),
                    ),
                }
            }
        }
        Ok(())
    }

    /// Copies of change-log segments: of this site's own, proof that its id
    /// is in use on two computers; of another site's, reported (that site
    /// stops itself when it sees them).
    pub(super) fn check_logs_for_copies(&mut self) -> Result<(), EngineError> {
        let own = self.cfg.site.to_string();
        let sites = self.folder.list(LOG_DIR).map_err(|e| self.io("cannot list log/", e))?;
        for dir in sites {
            if !dir.is_dir || self.ignore.is_ignored(&dir.name) {
                continue;
            }
            let dir_path = format!("{LOG_DIR}/{}", dir.name);
            let entries =
                self.folder.list(&dir_path).map_err(|e| self.io(&format!("cannot list {dir_path}"), e))?;
            for entry in entries {
                if self.ignore.is_ignored(&entry.name) {
                    continue;
                }
                let path = format!("{dir_path}/{}", entry.name);
                let Classified::Copy { of, client } = classify_path(&path) else { continue };
                let FileKind::Segment { site, seq } = &of else { continue };
                if *site == own && dir.name == own {
                    return Err(EngineError::SiteOnTwoMachines { file: path, client: client.label() });
                }
                self.rec.warning(
                    EventKind::ConflictCopy,
                    Some(&path),
                    format!(
                        "is a copy of export #{seq} of {}'s change-log made by {}: only one computer should write that site's change-log; left alone",
                        self.site_label(site),
                        client.label()
                    ),
                );
            }
        }
        Ok(())
    }

    /// Reads and verifies one file. Nothing of a file that fails is used.
    pub(super) fn load(&mut self, f: &FileRef) -> Result<Loaded, EngineError> {
        self.counts.files_scanned += 1;
        self.scanned.read.insert(f.path.clone());
        let entry = match self.folder.metadata(&f.path) {
            Ok(Some(e)) => e,
            Ok(None) => return Ok(Loaded::Gone),
            Err(e) => {
                self.rec.skipped(
                    EventKind::Skipped,
                    Some(&f.path),
                    format!("cannot be read: {e}; will retry"),
                );
                self.counts.files_skipped += 1;
                return Ok(Loaded::Skipped);
            }
        };
        let bytes = match self.folder.read(&f.path, self.limits.max_file_bytes) {
            Ok(b) => b,
            Err(ReadError::NotFound) => return Ok(Loaded::Gone),
            Err(e) => {
                self.rec.skipped(
                    EventKind::Skipped,
                    Some(&f.path),
                    format!("was not applied: {e}; will retry"),
                );
                self.counts.files_skipped += 1;
                return Ok(Loaded::Skipped);
            }
        };
        self.counts.bytes_read += bytes.len() as u64;
        if bytes.is_empty() {
            self.rec.skipped(
                EventKind::Skipped,
                Some(&f.path),
                "is empty (an online-only placeholder, or a file the cloud client has not filled yet); nothing is deleted for that, and it is read again next run".into(),
            );
            self.counts.files_skipped += 1;
            return Ok(Loaded::Skipped);
        }
        let sha = sha_hex(&bytes);
        // A copy is taken as merged only once it was settled (its
        // original brought up to date) and kept.
        let cached =
            self.purges.peer_horizon.is_none() && (f.copy.is_none() || self.db.is_kept_copy(&f.path)?);
        if cached
            && let Some((size, mtime, seen_sha, seen_id)) = self.db.file_seen(&f.path)?
            && size == bytes.len() as u64
            && mtime == entry.mtime_ns
            && seen_sha == sha
        {
            self.counts.files_unchanged += 1;
            self.note_file_id(&f.path, seen_id, &entry);
            return Ok(Loaded::Unchanged { bytes, entry });
        }
        if f.repair.is_some() {
            // Behind this database and changed since this site last saw
            // it: another writer's version, maybe a cloud client's pick
            // between two, with the other kept as a copy beside it.
            self.copies.suspect_shards.insert(shard_of(&f.stem));
        }
        let doc = match decode_patient(&bytes, self.limits) {
            Ok(doc) => doc,
            Err(e) => {
                self.rec.skipped(
                    EventKind::Skipped,
                    Some(&f.path),
                    format!("was not applied: {e}; {}", retry_hint(&e)),
                );
                self.counts.files_skipped += 1;
                return Ok(Loaded::Skipped);
            }
        };
        let expected = patient_file_name(&doc.patient.0);
        if expected != f.stem {
            self.rec.skipped(
                EventKind::Skipped,
                Some(&f.path),
                "was not applied: the patient it holds is not the one its name says (a file renamed or written wrongly); `clinicsync verify` lists it".into(),
            );
            self.counts.files_skipped += 1;
            return Ok(Loaded::Skipped);
        }
        if let Some(ahead) = self.too_far_ahead(doc.stamps()) {
            self.hold_back(&f.path, ahead);
            return Ok(Loaded::Skipped);
        }
        Ok(Loaded::Doc { doc, bytes, entry, sha })
    }

    /// Stats `patients/` and its 256 shard folders and returns those whose
    /// modification time is not the one this site accounted for, followed
    /// through this run's own changes ([`DiskFolder::take_own_changes`]).
    /// Remembers what it saw for [`Self::record_patient_dirs`]. The first
    /// run that keeps the times lists nothing (the periodic full scan finds
    /// what was there before).
    pub(super) fn check_patient_dirs(&mut self) -> Result<Vec<String>, EngineError> {
        let recorded = self.db.dir_mtimes()?;
        let own = self.folder.take_own_changes();
        let dirs = std::iter::once(PATIENTS_DIR.to_owned())
            .chain((0..=255u8).map(|b| format!("{PATIENTS_DIR}/{b:02x}")));
        let mut seen = Vec::with_capacity(257);
        let mut moved = Vec::new();
        for dir in dirs {
            let now = self.folder.dir_mtime(&dir).map_err(|e| self.io(&format!("cannot stat {dir}"), e))?;
            let then = recorded.get(&dir).copied();
            if let Some(then) = then
                && follow(then, own.get(&dir)) != Some(now)
            {
                moved.push(dir.clone());
            }
            seen.push((dir, then, now));
        }
        self.scanned.dirs_seen = Some(seen);
        Ok(moved)
    }

    /// Records the directories' times as this run accounted for them: what
    /// the check saw, moved on through the run's own later changes. A
    /// change by someone else after the check leaves a time the next run
    /// does not expect, so it lists that folder.
    pub(super) fn record_patient_dirs(&mut self) -> Result<(), EngineError> {
        let Some(seen) = self.scanned.dirs_seen.take() else { return Ok(()) };
        let own = self.folder.take_own_changes();
        // Only what changed is written: a run with nothing to do writes
        // nothing.
        let dirs: Vec<(String, Option<i64>)> = seen
            .into_iter()
            .filter_map(|(dir, recorded, at_check)| {
                let after = follow(at_check, own.get(&dir)).unwrap_or(at_check);
                (recorded != Some(after)).then_some((dir, after))
            })
            .collect();
        if !dirs.is_empty() {
            self.db.set_dir_mtimes(&dirs)?;
        }
        Ok(())
    }
}
