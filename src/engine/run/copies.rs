//! Conflict copies: merge the copies a cloud client made, then delete or keep
//! each once its original holds everything it held; one site rebuilds an
//! original a client renamed away.

use crate::conflicts::{Classified, Client, FileKind, classify_path};
use crate::db::{AHEAD_FEWEST, Db, DbError, DiskProbe, KeptCopy, ReadAhead, Seen};
use crate::engine::EngineError;
use crate::folder::layout::{PATIENTS_DIR, patient_path};
use crate::folder::{DiskFolder, Entry, IgnoreRules};
use crate::model::PatientDoc;
use crate::xmlstore::decode_patient;
use std::collections::{BTreeSet, HashMap, HashSet};

use super::{COPIES_WAIT_FOR_LEADER_MS, FileRef, Run};
use crate::engine::report::EventKind;

/// A copy merged this run.
pub(super) struct MergedCopy {
    pub(super) path: String,
    pub(super) stem: String,
    /// The patient it holds, when this run read it.
    pub(super) patient: Option<String>,
    pub(super) client: Client,
    pub(super) size: u64,
    pub(super) mtime_ns: i64,
    /// Merged and kept by an earlier run once its original was up to
    /// date; its content is in the database since.
    pub(super) settled_before: bool,
}

/// What the conflict-copy steps learn and owe during a run.
#[derive(Default)]
pub(super) struct Copies {
    /// Top-level folders a cloud client decorated (`patients (Selective
    /// Sync Conflict)`): their files are merged as copies.
    pub(super) decorated: Vec<(String, Client)>,
    /// Copies joined into the database this run, waiting for their
    /// original to be brought up to date before they are deleted or kept.
    pub(super) merged: Vec<MergedCopy>,
    /// Stems whose original file is up to date after this run's writes.
    pub(super) settled: HashSet<String>,
    /// Shards holding a patient file that was not what this site expected
    /// (another writer's version, or gone): a cloud client may have left a
    /// conflict copy beside it.
    pub(super) suspect_shards: BTreeSet<String>,
    /// Decorated folders whose files are copies, deepest first once sorted
    /// by length: removed when the copies in them are gone.
    pub(super) dirs: BTreeSet<String>,
    /// Stems whose original is gone and left for another site to write
    /// again from their copies (see `rebuilds_original`).
    pub(super) left_for_leader: HashSet<String>,
    /// The copies applied this run, by stem: their paths (read again if an
    /// original must be rebuilt from one, so that memory does not grow with
    /// the number of copies).
    pub(super) docs: HashMap<String, Vec<String>>,
}

impl Run<'_> {
    /// With logs on, a run lists no patient folder unless it must. It lists
    /// a shard where it found another writer's version of a patient file,
    /// and every directory under `patients/` whose modification time moved
    /// for a reason other than this site's own writes (257 stats: a cloud
    /// client added, renamed or removed something there), and merges the
    /// conflict copies it finds; likewise a decorated `patients` folder.
    pub(super) fn merge_nearby_copies(&mut self) -> Result<(), EngineError> {
        let moved = self.check_patient_dirs()?;
        if self.counts.full_scan {
            return Ok(());
        }
        let mut files = Vec::new();
        for dir in moved {
            match dir.strip_prefix(PATIENTS_DIR).and_then(|d| d.strip_prefix('/')) {
                Some(shard) => {
                    self.copies.suspect_shards.insert(shard.to_owned());
                }
                None => {
                    // A shard folder added, removed or renamed: a decorated
                    // copy of one (`ab (Case Conflict)`) holds copies.
                    let entries =
                        self.folder.list(PATIENTS_DIR).map_err(|e| self.io("cannot list patients/", e))?;
                    let decorated: Vec<Entry> = entries
                        .into_iter()
                        .filter(|e| {
                            e.is_dir && !(e.name.len() == 2 && e.name.bytes().all(|b| b.is_ascii_hexdigit()))
                        })
                        .collect();
                    self.collect_patient_files(PATIENTS_DIR, decorated, &mut files)?;
                }
            }
        }
        for (top, _) in self.copies.decorated.clone() {
            let shards = self.folder.list(&top).map_err(|e| self.io(&format!("cannot list {top}"), e))?;
            self.collect_patient_files(&top, shards, &mut files)?;
        }
        let shards: Vec<String> = std::mem::take(&mut self.copies.suspect_shards)
            .into_iter()
            .map(|shard| format!("{PATIENTS_DIR}/{shard}"))
            .collect();
        files.extend(self.list_shards(&shards)?);
        files.retain(|f| f.copy.is_some() || f.repair.is_none());
        if !files.is_empty() {
            self.reconcile(files, Vec::new())?;
        }
        Ok(())
    }

    /// What the listings of these shard folders bring to the copy check,
    /// in order. The recorded files of each come from the database on this
    /// thread (read ahead on other threads once the first folders' came
    /// from the disk); listing and sorting the entries is about as much
    /// work again (at 100,000 patients a shard holds some 400 files, and a
    /// sync that brings 100 patients lists some 90 shards), so from eight
    /// folders on the first half is listed on another core, each folder
    /// handed over with its recorded files as soon as they are read (a few
    /// at a time: memory stays that of a few folders).
    fn list_shards(&self, dirs: &[String]) -> Result<Vec<FileRef>, EngineError> {
        let (ignore, read) = (&self.ignore, &self.scanned.read);
        let mut records = ShardRecords {
            db: &self.db,
            dirs: dirs.iter(),
            taken: 0,
            probe: DiskProbe::start(),
            ahead: None,
        };
        // The folders `records` has not yet given, listed on this thread.
        let here = |records: &mut ShardRecords| {
            records.try_fold(Vec::new(), |mut files, next| {
                let (dir, seen) = next?;
                let found = shard_files(&self.folder, ignore, read, dir, &seen)
                    .map_err(|(dir, e)| self.io(&format!("cannot list {dir}"), e))?;
                files.extend(found);
                Ok::<_, EngineError>(files)
            })
        };
        if dirs.len() < 8 {
            return here(&mut records);
        }
        let sibling = self.folder.sibling();
        let (their_files, sibling, my_files) = std::thread::scope(|scope| {
            let (hand, take) = std::sync::mpsc::sync_channel::<(&str, HashMap<String, Seen>)>(2);
            let other = scope.spawn(move || {
                let files = take.into_iter().try_fold(Vec::new(), |mut files, (dir, seen)| {
                    files.extend(shard_files(&sibling, ignore, read, dir, &seen)?);
                    Ok(files)
                });
                (files, sibling)
            });
            // The first half to the other thread.
            let handed = records.by_ref().take(dirs.len() / 2).try_for_each(|next| {
                let (dir, seen) = next?;
                // A send fails only once the other thread stopped at an
                // error, which it returns.
                let _ = hand.send((dir, seen));
                Ok::<_, EngineError>(())
            });
            drop(hand);
            let my_files = handed.and_then(|()| here(&mut records));
            let (their_files, sibling) =
                other.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (their_files, sibling, my_files)
        });
        self.folder.absorb(sibling);
        let mut files = their_files.map_err(|(dir, e)| self.io(&format!("cannot list {dir}"), e))?;
        files.extend(my_files?);
        Ok(files)
    }

    /// Deletes (or, with `auto_delete_conflicts` off, remembers) every copy
    /// merged this run whose original is now up to date. A copy whose
    /// original could not be written stays for the next run.
    pub(super) fn settle_copies(&mut self) -> Result<(), EngineError> {
        for c in std::mem::take(&mut self.copies.merged) {
            let original = patient_path(&c.stem);
            let file_of = match &c.patient {
                Some(p) => format!("the file of {}", self.patient_names(std::slice::from_ref(p), 1)?),
                None => "its original".to_owned(),
            };
            let made_by = c.client.label();
            if self.copies.left_for_leader.contains(&c.stem) {
                self.rec.info(
                    EventKind::ConflictCopy,
                    Some(&c.path),
                    format!("a copy made by {made_by}: merged; {file_of} is gone, and the site that rebuilds it writes it and deletes the copies (two sites writing it at once would clash again)"),
                );
                continue;
            }
            if !c.settled_before && !self.copies.settled.contains(&c.stem) {
                self.rec.skipped(
                    EventKind::ConflictCopy,
                    Some(&c.path),
                    format!("was merged, but {file_of} could not be brought up to date; the copy stays until it is"),
                );
                continue;
            }
            if !self.settings.auto_delete_conflicts {
                if !self.db.is_kept_copy(&c.path)? {
                    self.db.keep_copy(&KeptCopy {
                        path: c.path.clone(),
                        original: original.clone(),
                        client: made_by.to_owned(),
                        merged_ms: self.now_ms,
                    })?;
                    self.counts.conflict_copies_kept += 1;
                    self.rec.info(
                        EventKind::ConflictCopy,
                        Some(&c.path),
                        format!("a copy made by {made_by}: merged into {file_of} and kept (auto_delete_conflicts is off); it is not merged again unless it changes"),
                    );
                }
                continue;
            }
            // Delete only the bytes that were merged.
            match self.folder.metadata(&c.path) {
                Ok(Some(e)) if e.size == c.size && e.mtime_ns == c.mtime_ns => {}
                Ok(None) => {
                    self.db.forget_copy(&c.path)?;
                    continue;
                }
                _ => {
                    self.rec.info(
                        EventKind::ConflictCopy,
                        Some(&c.path),
                        "changed after it was merged; it is merged again next run".into(),
                    );
                    continue;
                }
            }
            if let Err(e) = self.folder.remove(&c.path) {
                self.rec.warning(
                    EventKind::ConflictCopy,
                    Some(&c.path),
                    format!("was merged into {file_of} but could not be deleted: {e}; will retry"),
                );
                continue;
            }
            self.db.forget_copy(&c.path)?;
            self.counts.conflict_copies_deleted += 1;
            self.rec.info(
                EventKind::ConflictCopy,
                Some(&c.path),
                format!("a copy made by {made_by}: merged into {file_of} and deleted"),
            );
        }
        if self.settings.auto_delete_conflicts {
            // Deepest first: shard copies before a decorated patients folder.
            let mut dirs: Vec<String> = std::mem::take(&mut self.copies.dirs).into_iter().collect();
            dirs.sort_by_key(|d| std::cmp::Reverse(d.matches('/').count()));
            for dir in dirs {
                if matches!(self.folder.remove_empty_dir(&dir), Ok(true)) {
                    self.rec.info(
                        EventKind::ConflictCopy,
                        Some(&dir),
                        "a copied folder, now empty: deleted".into(),
                    );
                }
            }
        }
        Ok(())
    }

    /// Whether this site writes again an original that a cloud client
    /// renamed away into copies (rclone: both sides renamed, the name gone).
    /// Every site that merged the copies would, and two sites writing the
    /// same new file between two passes of the client make it clash again,
    /// forever. So one site does it: the one with the lowest id among the
    /// sites active within the dormancy; any site does it once the copies
    /// have waited an hour (that site is away).
    pub(super) fn rebuilds_original(&self, stem: &str) -> bool {
        let dormancy = self.settings.dormancy.as_millis() as u64;
        let active = |last: u64| self.now_ms.saturating_sub(last) < dormancy;
        let leader = self
            .sites
            .peers
            .iter()
            .filter(|p| p.file.left_ms.is_none() && active(p.file.last_sync_ms.unwrap_or(p.mtime_ms)))
            .map(|p| p.file.site)
            .chain(std::iter::once(self.cfg.site))
            .min();
        if leader == Some(self.cfg.site) {
            return true;
        }
        let newest_copy_ms = self
            .copies
            .merged
            .iter()
            .filter(|c| c.stem == stem)
            .map(|c| (c.mtime_ns.max(0) / 1_000_000) as u64)
            .max()
            .unwrap_or(0);
        self.now_ms.saturating_sub(newest_copy_ms) > COPIES_WAIT_FOR_LEADER_MS
    }

    /// A copy of `stem` applied this run, read again and decoded (the
    /// first that still reads).
    pub(super) fn copy_doc(&self, stem: &str) -> Option<PatientDoc> {
        self.copies.docs.get(stem)?.iter().find_map(|path| {
            let bytes = self.folder.read(path, self.limits.max_file_bytes).ok()?;
            decode_patient(&bytes, self.limits).ok()
        })
    }

    /// The bytes of a copy of `stem` applied this run that already holds
    /// everything `doc` holds, read again from the folder.
    pub(super) fn copy_covering(&self, stem: &str, doc: &PatientDoc) -> Option<Vec<u8>> {
        self.copies.docs.get(stem)?.iter().find_map(|path| {
            let bytes = self.folder.read(path, self.limits.max_file_bytes).ok()?;
            let copy = decode_patient(&bytes, self.limits).ok()?;
            copy.covers(doc).then_some(bytes)
        })
    }
}

/// Shard folders whose recorded files [`Run::list_shards`] reads before it
/// asks whether they came from the disk.
const PROBED_DIRS: usize = 2;

/// Shard folders with their recorded files, in order; once the first
/// [`PROBED_DIRS`] folders' came from the disk, the rest are read ahead.
struct ShardRecords<'r> {
    db: &'r Db,
    dirs: std::slice::Iter<'r, String>,
    taken: usize,
    probe: DiskProbe,
    ahead: Option<ReadAhead>,
}

impl<'r> Iterator for ShardRecords<'r> {
    type Item = Result<(&'r str, HashMap<String, Seen>), DbError>;

    fn next(&mut self) -> Option<Self::Item> {
        let dir = self.dirs.next()?;
        if self.taken == PROBED_DIRS {
            // The folders after this one, which this thread reads now.
            let rest = self.dirs.as_slice();
            if rest.len() >= AHEAD_FEWEST && self.probe.went_to_disk() {
                self.ahead = Some(self.db.read_ahead_files_in(rest.to_vec()));
            }
        }
        self.taken += 1;
        Some(self.db.files_seen_in(dir).map(|seen| (dir.as_str(), seen)))
    }
}

/// What a listing of the shard folder `dir` brings to the copy check: its
/// conflict copies, and originals this run has not read whose size or time
/// is not the one recorded (`seen`: the folder's recorded files by path).
fn shard_files(
    folder: &DiskFolder,
    ignore: &IgnoreRules,
    read: &HashSet<String>,
    dir: &str,
    seen: &HashMap<String, Seen>,
) -> Result<Vec<FileRef>, (String, std::io::Error)> {
    // An original still the file this site last read or wrote (the same
    // file id: it was not replaced since, as every client replaces a file)
    // is not statted. A file changed in place, one replaced twice so that
    // it got its old id back, and any file on a mount whose ids stay with
    // the name wait for the full scan.
    let unchanged = |name: &str, id: Option<u64>| {
        let path = format!("{dir}/{name}");
        id.is_some()
            && seen.get(&path).is_some_and(|s| s.2 == id)
            && matches!(classify_path(&path), Classified::Original(FileKind::Patient { .. }))
    };
    let entries =
        folder.list_except(dir, |name, id| !unchanged(name, id)).map_err(|e| (dir.to_owned(), e))?;
    let mut files = Vec::new();
    for entry in entries {
        if entry.is_dir || ignore.is_ignored(&entry.name) {
            continue;
        }
        let path = format!("{dir}/{}", entry.name);
        match classify_path(&path) {
            Classified::Copy { of: FileKind::Patient { stem }, client } => {
                files.push(FileRef { path, stem, copy: Some(client), repair: None, size: entry.size });
            }
            // Another writer's version this run has not read, and no
            // change-log told of (an old file a client brought back, a site
            // that wrote rows it should not have).
            Classified::Original(FileKind::Patient { stem })
                if !read.contains(&path)
                    && seen.get(&path).map(|s| (s.0, s.1)) != Some((entry.size, entry.mtime_ns)) =>
            {
                files.push(FileRef { path, stem, copy: None, repair: None, size: entry.size });
            }
            _ => {}
        }
    }
    Ok(files)
}
