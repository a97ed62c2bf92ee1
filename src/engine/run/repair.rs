//! Read-repair: join what the patient files hold into the database, chunk by
//! chunk, and write every file that is behind the database again.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use crate::db::{AHEAD_FEWEST, DbError, DiskProbe, StoredPatient};
use crate::engine::EngineError;
use crate::folder::layout::patient_path;
use crate::folder::{Entry, Fetched};
use crate::model::{PatientDoc, PatientId, patient_file_name, shard_of};
use crate::xmlstore::{RowsDigest, encode_patient};

use super::{
    CHUNK, CHUNK_BYTES, FileRef, Loaded, MAX_REQUEUES, MergedCopy, Run, WRITE_BATCH_BYTES, on_both_cores,
    sha_hex,
};
use crate::engine::report::{EventKind, counted};

/// A file to compare with this database's encoding: its place in the
/// chunk, bytes and metadata, the patient's stored rows, the patient.
pub(super) type Comparison = (usize, Vec<u8>, Entry, Option<StoredPatient>, String);

/// What a chunk learned about a patient's original file.
pub(super) enum Original {
    /// Its bytes, and what it holds when this run decoded it.
    Present(Vec<u8>, Entry, Option<Box<PatientDoc>>),
    /// Its bytes, byte for byte the file this site last wrote or joined
    /// (its size, time and hash as recorded): it holds nothing this
    /// database lacks, but may be behind it. Not decoded.
    AsRecorded(Vec<u8>, Entry),
    Absent,
    /// Unreadable: never overwritten.
    Blocked,
}

/// Bytes of stored rows a chunk reads at once to write files from.
const OURS_BYTES: u64 = 8 << 20;

/// Patients of this site's in a chunk from which their stored rows are read
/// ahead ([`crate::db::Db::read_ahead`]): half a chunk. For fewer the other
/// threads and connections cost more than they save (100 patients sent at
/// N = 10,000 took 14 ms longer with them where measured), unless the
/// run's stamping found the family on the disk.
const READ_AHEAD_FROM: usize = CHUNK / 2;

/// A patient's stored rows, and its file's bytes or why it would be
/// beyond the limits.
type Ours = (StoredPatient, Result<Vec<u8>, String>);

/// A patient's stored rows with its file, or why it would be beyond the
/// limits.
fn ours_of(
    patient: &str,
    found: Result<StoredPatient, String>,
    limits: &crate::xmlstore::Limits,
) -> Result<Ours, DbError> {
    Ok(match found {
        Ok(stored) => {
            let file = stored.file(limits)?;
            (stored, file)
        }
        Err(why) => (StoredPatient::empty(patient), Err(why)),
    })
}

/// Files of this site's patients in a chunk that [`Run::read_own_files`] reads
/// one at a time before it asks whether they came from the disk.
const PROBED_FILES: usize = 4;

/// Threads that read the rest of such a chunk's files once they come from
/// the disk: a disk serves several reads at once (here eight threads read
/// 100 patient files not in memory in half the time one took, and random
/// reads of the database's pages went from 70 to 24 µs each).
const FILE_THREADS: usize = 8;

pub(super) enum Work {
    File(FileRef),
    Patient(String),
}

impl Run<'_> {
    /// Joins files into the database and rewrites every patient file that
    /// is behind the database (read-repair), following rows that moved
    /// between patients. Works in chunks, so memory stays bounded however
    /// many files there are. Returns true when every wanted patient file is
    /// up to date.
    pub(super) fn reconcile(
        &mut self,
        files: Vec<FileRef>,
        patients: Vec<String>,
    ) -> Result<bool, EngineError> {
        let step = if files.is_empty() { "writing patient files" } else { "reading patient files" };
        self.progress.step(step, (files.len() + patients.len()) as u64);
        let mut queue: VecDeque<Work> = files.into_iter().map(Work::File).collect();
        queue.extend(patients.into_iter().map(Work::Patient));
        let mut done: HashSet<String> = HashSet::new();
        let mut blocked: HashSet<String> = HashSet::new();
        let mut requeued: HashMap<String, u32> = HashMap::new();
        let mut left = 0usize;
        // Tombstones another site purged: every active site had them then,
        // so a file lacking one altogether is not behind for it (two sites
        // that each purged a different row of a patient would otherwise
        // write its file over each other until both had purged both).
        let purged_elsewhere = self.sites.purged_elsewhere();
        while !queue.is_empty() {
            let mut to_load: Vec<FileRef> = Vec::new();
            let mut loading: HashSet<String> = HashSet::new();
            let mut wanted: BTreeSet<String> = BTreeSet::new();
            let mut chunk_bytes = 0u64;
            while to_load.len() < CHUNK && chunk_bytes < CHUNK_BYTES {
                let Some(work) = queue.pop_front() else { break };
                match work {
                    Work::File(f) => {
                        if f.copy.is_none() {
                            loading.insert(f.stem.clone());
                        }
                        chunk_bytes += f.size;
                        to_load.push(f);
                    }
                    Work::Patient(p) => {
                        let stem = patient_file_name(&p);
                        if done.contains(&p) || blocked.contains(&stem) {
                            continue;
                        }
                        if loading.insert(stem.clone()) {
                            let path = patient_path(&stem);
                            let size = self.folder.metadata(&path).ok().flatten().map_or(0, |e| e.size);
                            chunk_bytes += size;
                            to_load.push(FileRef { path, stem, copy: None, repair: Some(p.clone()), size });
                        }
                        wanted.insert(p);
                    }
                }
            }
            let mut in_sync = HashSet::new();
            let mut changed = HashSet::new();
            // A large batch of this site's patients (a bulk edit): their
            // stored rows are read ahead while the chunk's files are read.
            let mine = to_load.iter().filter(|f| f.repair.is_some()).count();
            let read_ahead = (mine >= READ_AHEAD_FROM || (self.cold && mine >= AHEAD_FEWEST)).then(|| {
                let files = to_load.iter().filter_map(|f| Some((f.repair.clone()?, f.path.clone())));
                self.db.read_ahead(files.collect())
            });
            let originals = self.apply_chunk(&to_load, &mut wanted, &mut in_sync, &mut changed)?;
            let ids = std::mem::take(&mut self.scanned.ids);
            self.db.record_file_ids(&ids)?;
            self.progress.advance(to_load.len() as u64);
            // The patients whose file this chunk may write: the others are
            // settled, or read and joined in a later chunk.
            let mut candidates = Vec::with_capacity(wanted.len());
            for patient in wanted {
                let stem = patient_file_name(&patient);
                if done.contains(&patient) || blocked.contains(&stem) {
                    continue;
                }
                if in_sync.contains(&patient) && !changed.contains(&patient) {
                    done.insert(patient);
                    continue;
                }
                match originals.get(&stem) {
                    Some(Original::Blocked) => {
                        blocked.insert(stem);
                    }
                    Some(_) => candidates.push(patient),
                    // A patient a row moved to or from: its file is read
                    // and joined in a later chunk.
                    None => self.requeue(&mut queue, &mut requeued, patient, &mut left),
                }
            }
            let mut writes: Vec<(String, Vec<u8>, String)> = Vec::new();
            let mut writes_bytes = 0;
            drop(read_ahead);
            let mut ours = self.ours_for(&candidates)?;
            for patient in candidates {
                let stem = patient_file_name(&patient);
                if blocked.contains(&stem) {
                    continue;
                }
                let existing = match originals.get(&stem) {
                    Some(Original::Present(bytes, entry, _) | Original::AsRecorded(bytes, entry)) => {
                        Some((bytes, entry))
                    }
                    _ => None,
                };
                let found = match ours.remove(&patient) {
                    Some(found) => found,
                    // Past what `ours_for` reads at once: alone.
                    None => self.ours_alone(&patient)?,
                };
                let (stored, from_state) = match found {
                    (stored, Ok(bytes)) => (stored, bytes),
                    (_, Err(why)) => {
                        self.file_too_large(&stem, &patient, &why);
                        done.insert(patient);
                        continue;
                    }
                };
                // The rows as a document only where they are compared or
                // joined with a file (decoding is most of a file's cost).
                let as_stored = (stored.is_empty(), stored.only_deletions());
                let stale = self.purges.stale.remove(&stem);
                let compared = matches!(originals.get(&stem), Some(Original::Present(_, _, Some(_))));
                let mut doc = if stale.is_some() || compared || self.copies.docs.contains_key(&stem) {
                    Some(stored.decode()?)
                } else {
                    None
                };
                let mut retold = 0;
                let mut rejoined = false;
                // What brought purged rows back: the original, or when a
                // client renamed it away, a copy of it merged this run.
                let bringer = match (&stale, originals.get(&stem)) {
                    (None, _) => None,
                    (Some(_), Some(Original::Present(_, _, Some(file)))) => Some(file.as_ref().clone()),
                    (Some(_), Some(Original::Absent)) => self.copy_doc(&stem),
                    _ => None,
                };
                if let Some(keys) = stale
                    && let Some(file) = bringer
                    && let Some(ours) = doc.as_mut()
                {
                    rejoined = true;
                    // The file brings back rows this site purged (a site that
                    // was away wrote them): it is written again with their
                    // deletion, joined with what it holds, so that site
                    // deletes them too and keeps its later edits for review.
                    for (key, tombstone) in self.db.purged_tombstones(&keys)? {
                        ours.rows.insert(key, tombstone);
                        retold += 1;
                    }
                    *ours = file.join(ours);
                }
                if retold > 0 {
                    let path = patient_path(&stem);
                    let patient = self.patient_names(std::slice::from_ref(&patient), 1)?;
                    self.rec.warning(
                        EventKind::Purge,
                        Some(&path),
                        format!(
                            "brings back {retold} rows of {patient} that were deleted and purged here; a site that has not applied the deletion wrote them, so the file is written again with the deletion and that site deletes them too (its edits are kept there for review)"
                        ),
                    );
                }
                if let Some(Original::Present(_, _, Some(file))) = originals.get(&stem)
                    && let Some(ours) = &doc
                    && file.covers_but(ours, |key, row| purged_elsewhere.has(key, row))
                {
                    // The file already holds everything this site knows
                    // (and maybe more it refuses, such as rows it purged),
                    // but for tombstones another site purged: it is not
                    // behind.
                    done.insert(patient);
                    continue;
                }
                let (empty, only_deletions) = match &doc {
                    Some(d) => (d.rows.is_empty(), d.rows.values().all(|row| !row.is_alive())),
                    None => as_stored,
                };
                if empty {
                    // Nothing known of the patient: its file is left as it
                    // is, unless this run purged the patient (its file goes;
                    // a site still keeping the tombstone may write it again,
                    // and it is left alone after that).
                    if existing.is_some() && self.purges.purged_now.contains(&patient) {
                        let path = patient_path(&stem);
                        match self.folder.remove(&path) {
                            Ok(()) => self.counts.files_removed += 1,
                            Err(e) => self.rec.warning(
                                EventKind::Purge,
                                Some(&path),
                                format!("could not be deleted: {e}; will retry"),
                            ),
                        }
                    }
                    done.insert(patient);
                    continue;
                }
                let mut bytes = match &doc {
                    Some(doc) if rejoined => encode_patient(doc),
                    _ => from_state,
                };
                if existing.is_some_and(|(old, _)| *old == bytes) {
                    done.insert(patient);
                    continue;
                }
                if rejoined && let Some(why) = self.limits.refusal(&bytes) {
                    self.file_too_large(&stem, &patient, &why);
                    done.insert(patient);
                    continue;
                }
                if existing.is_none() && !self.copies.docs.contains_key(&stem) && only_deletions {
                    // Only deletions, and no file: the sites that purged
                    // them removed it (writing it again would bring back a
                    // file they remove again, and two sites doing so at
                    // once clash), or it never existed. A site that still
                    // shows a row writes its own file, and is told the
                    // deletion in it.
                    done.insert(patient);
                    continue;
                }
                if existing.is_none()
                    && self.copies.docs.contains_key(&stem)
                    && !self.rebuilds_original(&stem)
                {
                    // Another site rebuilds it; the copies stay until then.
                    self.copies.left_for_leader.insert(stem);
                    continue;
                }
                if existing.is_none()
                    && let Some(doc) = &doc
                    && let Some(copy) = self.copy_covering(&stem, doc)
                {
                    // The original is gone (rclone renames both sides of a
                    // conflict) and a copy already holds everything this
                    // site knows: it becomes the original as it is, so sites
                    // that refuse part of it (rows they purged) and sites
                    // that keep it write the same bytes instead of clashing
                    // again.
                    bytes = copy;
                }
                // The file must not have changed since it was read: a newer
                // delivery is read and joined first.
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
                    self.requeue(&mut queue, &mut requeued, patient, &mut left);
                    continue;
                }
                writes_bytes += bytes.len();
                writes.push((path, bytes, patient));
                if writes_bytes >= WRITE_BATCH_BYTES {
                    // What a chunk writes is held in memory a batch at a time.
                    self.write_files(std::mem::take(&mut writes), &mut done)?;
                    writes_bytes = 0;
                }
            }
            drop(originals);
            self.write_files(writes, &mut done)?;
        }
        if !self.copies.merged.is_empty() {
            self.copies.settled.extend(done.iter().map(|p| patient_file_name(p)));
        }
        if left > 0 {
            self.rec.skipped(
                EventKind::Write,
                None,
                format!(
                    "{left} patient files kept changing while this run read them; the next run finishes them"
                ),
            );
        }
        Ok(left == 0 && blocked.is_empty())
    }

    /// The stored rows and file bytes of these patients: one query,
    /// encoded on both cores; as many as [`OURS_BYTES`] of rows hold (the
    /// rest are read one by one, [`Self::ours_alone`]).
    fn ours_for(&self, patients: &[String]) -> Result<HashMap<String, Ours>, EngineError> {
        let names: Vec<&str> = patients.iter().map(String::as_str).collect();
        let stored = self.db.stored_for_files(&names, &self.limits, OURS_BYTES)?;
        let limits = &self.limits;
        let [mine, theirs] = on_both_cores(stored, |part| {
            part.into_iter()
                .map(|(patient, found)| {
                    Ok::<_, DbError>((patient.clone(), ours_of(&patient, found, limits)?))
                })
                .collect::<Result<Vec<_>, DbError>>()
        });
        Ok(mine?.into_iter().chain(theirs?).collect())
    }

    /// One patient's stored rows and file bytes, read alone.
    fn ours_alone(&self, patient: &str) -> Result<Ours, EngineError> {
        // With no budget every patient asked for comes back.
        let found = self.db.stored_for_files(&[patient], &self.limits, u64::MAX)?.pop();
        let found = found.map_or_else(|| Ok(StoredPatient::empty(patient)), |(_, found)| found);
        Ok(ours_of(patient, found, &self.limits)?)
    }

    pub(super) fn requeue(
        &mut self,
        queue: &mut VecDeque<Work>,
        requeued: &mut HashMap<String, u32>,
        patient: String,
        left: &mut usize,
    ) {
        let n = requeued.entry(patient.clone()).or_insert(0);
        *n += 1;
        if *n > MAX_REQUEUES {
            *left += 1;
        } else {
            queue.push_back(Work::Patient(patient));
        }
    }

    /// Loads and joins one chunk of files in one transaction. Returns what
    /// it learned of each original file; adds the patients whose files may
    /// now be behind to `wanted`.
    pub(super) fn apply_chunk(
        &mut self,
        chunk: &[FileRef],
        wanted: &mut BTreeSet<String>,
        in_sync: &mut HashSet<String>,
        changed: &mut HashSet<String>,
    ) -> Result<HashMap<String, Original>, EngineError> {
        let mut originals = HashMap::new();
        let mut loaded = Vec::with_capacity(chunk.len());
        let mut compared = self.compare_with_ours(chunk)?;
        for (f, compared) in chunk.iter().zip(compared.iter_mut()) {
            if let Some(patient) = &f.repair
                && let Some(state) = compared.take()
            {
                if matches!(state, Original::Absent) {
                    // Not there: a new patient, or rclone renamed both
                    // sides of a conflict away from the original name.
                    self.copies.suspect_shards.insert(shard_of(&f.stem));
                }
                if matches!(state, Original::Present(..)) {
                    in_sync.insert(patient.clone());
                }
                originals.insert(f.stem.clone(), state);
                continue;
            }
            match self.load(f)? {
                Loaded::Doc { doc, bytes, entry, sha } => loaded.push((f, doc, bytes, entry, sha)),
                Loaded::Unchanged { bytes, entry } if f.copy.is_none() => {
                    originals.insert(f.stem.clone(), Original::Present(bytes, entry, None));
                }
                Loaded::Gone if f.copy.is_none() => {
                    originals.insert(f.stem.clone(), Original::Absent);
                }
                // Never overwrite what cannot be read: it may be a newer
                // version still arriving.
                Loaded::Skipped if f.copy.is_none() => {
                    originals.insert(f.stem.clone(), Original::Blocked);
                }
                // A copy merged by an earlier run and still there.
                Loaded::Unchanged { entry, .. } => {
                    if let Some(client) = f.copy
                        && self.settings.auto_delete_conflicts
                    {
                        self.copies.merged.push(MergedCopy {
                            path: f.path.clone(),
                            stem: f.stem.clone(),
                            patient: None,
                            client,
                            size: entry.size,
                            mtime_ns: entry.mtime_ns,
                            settled_before: true,
                        });
                    }
                }
                Loaded::Gone | Loaded::Skipped => {}
            }
        }
        if loaded.is_empty() {
            return Ok(originals);
        }
        let mut w = self.db.begin_write(self.now_ms)?;
        w.hold_deletes();
        let mut results = Vec::with_capacity(loaded.len());
        for (f, doc, _, entry, sha) in &loaded {
            let result = w.apply_doc(doc, &f.path);
            if result.is_ok() {
                w.record_file(&f.path, entry.size, entry.mtime_ns, entry.id, sha)?;
            }
            results.push(result);
        }
        let stamped = w.commit()?;
        self.note_stamped(stamped);
        for ((f, doc, bytes, entry, _), result) in loaded.into_iter().zip(results) {
            let (size, mtime_ns) = (entry.size, entry.mtime_ns);
            match result {
                Ok(outcome) => {
                    wanted.insert(doc.patient.0.clone());
                    wanted.extend(outcome.affected.iter().cloned());
                    if outcome.rows_changed > 0 {
                        changed.insert(doc.patient.0.clone());
                        changed.extend(outcome.affected.iter().cloned());
                    }
                    let patient = doc.patient.clone();
                    if !outcome.stale_purged.is_empty() {
                        // An original or a copy: either way its writer has
                        // not applied the deletion, and is told it.
                        let keys = self.purges.stale.entry(f.stem.clone()).or_default();
                        keys.extend(outcome.stale_purged.iter().cloned());
                        keys.sort();
                        keys.dedup();
                    }
                    if f.copy.is_none() {
                        originals
                            .insert(f.stem.clone(), Original::Present(bytes, entry, Some(Box::new(doc))));
                    } else {
                        self.copies.docs.entry(f.stem.clone()).or_default().push(f.path.clone());
                    }
                    for warning in outcome.warnings {
                        self.rec.warning(EventKind::Schema, Some(&f.path), warning);
                    }
                    self.brought.note(&patient.0, outcome.changed);
                    if outcome.rows_changed > 0 {
                        self.counts.files_applied += 1;
                        self.counts.rows_applied += outcome.rows_changed as u64;
                        let who = self.patient_names(std::slice::from_ref(&patient.0), 1)?;
                        let rows = counted(outcome.rows_changed as u64, "changed row", "changed rows");
                        self.rec
                            .applied(&f.path, format!("brought in {rows} of {who} from its patient file"));
                    }
                    if outcome.new_conflicts > 0 {
                        self.counts.new_conflicts += outcome.new_conflicts as u64;
                        let who = self.patient_names(std::slice::from_ref(&patient.0), 1)?;
                        self.rec.warning(
                            EventKind::Conflict,
                            Some(&f.path),
                            format!(
                                "{} of {who} kept for review (Conflicts, or `clinicsync conflicts`)",
                                counted(outcome.new_conflicts as u64, "concurrent edit", "concurrent edits")
                            ),
                        );
                    }
                    if let Some(client) = f.copy {
                        self.counts.conflict_copies_merged += 1;
                        self.copies.merged.push(MergedCopy {
                            path: f.path.clone(),
                            stem: f.stem.clone(),
                            patient: Some(patient.0.clone()),
                            client,
                            size,
                            mtime_ns,
                            settled_before: false,
                        });
                    }
                }
                Err(e) => {
                    self.counts.files_skipped += 1;
                    self.rec.skipped(
                        EventKind::Skipped,
                        Some(&f.path),
                        format!("could not be applied to the database, nothing of it was kept: {e}"),
                    );
                    if f.copy.is_none() {
                        originals.insert(f.stem.clone(), Original::Blocked);
                    }
                }
            }
        }
        Ok(originals)
    }

    /// Stats and reads these files of the folder, in order: one at a time,
    /// and once the first [`PROBED_FILES`] came from the disk, the rest on
    /// [`FILE_THREADS`] threads at once.
    fn read_own_files(&self, paths: Vec<&str>) -> Vec<Fetched> {
        let limit = self.limits.max_file_bytes;
        let probe = DiskProbe::start();
        let (probed, rest) = paths.split_at(paths.len().min(PROBED_FILES));
        let mut out = self.folder.fetch_all(probed, limit, 1);
        let cold = rest.len() >= AHEAD_FEWEST && probe.went_to_disk();
        out.extend(self.folder.fetch_all(rest, limit, if cold { FILE_THREADS } else { 1 }));
        out
    }

    /// Read-repair's fast paths. A file whose rows digest equals the one
    /// this database keeps for the patient holds exactly its rows: up to
    /// date, with neither the state's rows read nor the file parsed. Else a
    /// file whose bytes equal this database's encoding of the patient is up
    /// to date, and the patient's digest is recorded for next time. For
    /// each file of the chunk to repair: `Some` when that settles it
    /// (equal, or absent), `None` when it differs or cannot be read (the
    /// caller loads it in full). The patients' rows are read in one query;
    /// both cores decode and encode, half each.
    pub(super) fn compare_with_ours(
        &mut self,
        chunk: &[FileRef],
    ) -> Result<Vec<Option<Original>>, EngineError> {
        let mut out: Vec<Option<Original>> = chunk.iter().map(|_| None).collect();
        let mut files = Vec::new();
        let ours: Vec<(usize, &FileRef, &str)> =
            chunk.iter().enumerate().filter_map(|(i, f)| Some((i, f, f.repair.as_deref()?))).collect();
        let fetched = self.read_own_files(ours.iter().map(|(_, f, _)| f.path.as_str()).collect());
        for ((i, f, patient), fetched) in ours.into_iter().zip(fetched) {
            let (entry, bytes) = match fetched {
                Fetched::Read(entry, bytes) => (entry, bytes),
                Fetched::Absent => {
                    out[i] = Some(Original::Absent);
                    continue;
                }
                // Read again, and judged, where the file is loaded.
                Fetched::Unread => continue,
            };
            self.scanned.read.insert(f.path.clone());
            self.counts.files_scanned += 1;
            self.counts.bytes_read += bytes.len() as u64;
            files.push((i, patient, bytes, entry));
        }
        if files.is_empty() {
            return Ok(out);
        }
        let names: Vec<&str> = files.iter().map(|(_, p, _, _)| *p).collect();
        let known = self.db.digests_of(&names)?;
        // Files of patients with a digest, hashed on both cores.
        let with_digest = files.iter().filter(|(_, p, _, _)| known.contains_key(*p)).collect();
        let matched: HashSet<usize> = on_both_cores(with_digest, |part| {
            part.into_iter()
                .filter(|(_, patient, bytes, _)| {
                    RowsDigest::of_file(bytes, patient).as_ref() == known.get(*patient)
                })
                .map(|(i, _, _, _)| *i)
                .collect::<Vec<usize>>()
        })
        .into_iter()
        .flatten()
        .collect();
        let mut rest = Vec::with_capacity(files.len());
        let mut verified = Vec::new();
        for (i, patient, bytes, entry) in files {
            if matched.contains(&i) {
                self.counts.files_digest_matched += 1;
                verified.push((chunk[i].path.clone(), entry.size, entry.mtime_ns, entry.id));
                out[i] = Some(Original::Present(bytes, entry, None));
            } else {
                rest.push((i, patient, bytes, entry));
            }
        }
        // A file as this site recorded it needs no comparison here: the
        // patient's file is written again if it differs from this
        // database's encoding (what a changed patient's file always does).
        // Not while rows purged here may be in it (those files are decoded).
        if self.purges.peer_horizon.is_none() {
            let mut unknown = Vec::with_capacity(rest.len());
            for (i, patient, bytes, entry) in rest {
                let f = &chunk[i];
                let seen = if self.purges.stale.contains_key(&f.stem) {
                    None
                } else {
                    self.db.file_seen(&f.path)?
                };
                let recorded = match seen {
                    Some((size, mtime, sha, id))
                        if size == bytes.len() as u64
                            && mtime == entry.mtime_ns
                            && sha == sha_hex(&bytes) =>
                    {
                        self.note_file_id(&f.path, id, &entry);
                        true
                    }
                    _ => false,
                };
                if recorded {
                    self.counts.files_unchanged += 1;
                    out[i] = Some(Original::AsRecorded(bytes, entry));
                } else {
                    unknown.push((i, patient, bytes, entry));
                }
            }
            rest = unknown;
        }
        if rest.is_empty() {
            self.db.record_files_verified(&verified)?;
            return Ok(out);
        }
        let names: Vec<&str> = rest.iter().map(|(_, p, _, _)| *p).collect();
        let mut stored: HashMap<String, StoredPatient> =
            self.db.stored_patients(&names)?.into_iter().map(|s| (s.patient.clone(), s)).collect();
        let work: Vec<Comparison> = rest
            .into_iter()
            .map(|(i, patient, bytes, entry)| (i, bytes, entry, stored.remove(patient), patient.to_owned()))
            .collect();
        let compare = |work: Vec<Comparison>| {
            let mut settled = Vec::new();
            for (i, bytes, entry, rows, patient) in work {
                let ours = match rows {
                    Some(rows) => rows.encode()?,
                    None => encode_patient(&PatientDoc::new(PatientId(patient.clone()))),
                };
                if ours == bytes {
                    let digest = RowsDigest::of_file(&ours, &patient).map(|d| (patient, d));
                    settled.push((i, Original::Present(bytes, entry, None), digest));
                }
            }
            Ok::<_, DbError>(settled)
        };
        let [settled, other_half] = on_both_cores(work, compare);
        let mut digests = Vec::new();
        for (i, original, digest) in settled?.into_iter().chain(other_half?) {
            if let Original::Present(_, entry, _) = &original {
                verified.push((chunk[i].path.clone(), entry.size, entry.mtime_ns, entry.id));
            }
            out[i] = Some(original);
            digests.extend(digest);
        }
        // Files found up to date are known by size and time from now on: a
        // shard listed later for another file's sake does not read them.
        self.db.record_files_verified(&verified)?;
        // Nothing wrote the state since its rows were read above.
        if !digests.is_empty() {
            self.db.store_digests(&digests)?;
        }
        Ok(out)
    }

    pub(super) fn write_files(
        &mut self,
        mut writes: Vec<(String, Vec<u8>, String)>,
        done: &mut HashSet<String>,
    ) -> Result<(), EngineError> {
        while !writes.is_empty() {
            let mut size = 0;
            let mut n = 0;
            while n < writes.len() && (n == 0 || size + writes[n].1.len() <= WRITE_BATCH_BYTES) {
                size += writes[n].1.len();
                n += 1;
            }
            let (files, patients): (Vec<(String, Vec<u8>)>, Vec<String>) =
                writes.drain(..n).map(|(path, bytes, patient)| ((path, bytes), patient)).unzip();
            let written = match self.folder.write_batch_except_held(&files) {
                Ok(written) => written,
                Err(e) => {
                    self.rec.skipped(
                        EventKind::Write,
                        None,
                        format!("could not write {} patient files: {e}; will retry", files.len()),
                    );
                    continue;
                }
            };
            let mut wrote = Vec::with_capacity(patients.len());
            let w = self.db.begin_write(self.now_ms)?;
            // Each file recorded as this run wrote it (a file a client
            // replaced since is read again next time).
            for (((path, bytes), patient), written) in files.iter().zip(patients).zip(written) {
                match written {
                    Ok(entry) => {
                        w.record_file(path, entry.size, entry.mtime_ns, entry.id, &sha_hex(bytes))?;
                        self.counts.files_written += 1;
                        self.counts.bytes_written += bytes.len() as u64;
                        wrote.push(patient);
                    }
                    Err(e) => self.rec.skipped(
                        EventKind::Write,
                        Some(path),
                        format!("was not written: {e}; will retry"),
                    ),
                }
            }
            let stamped = w.commit()?;
            self.progress.advance(stamped.rows as u64);
            self.note_stamped(stamped);
            done.extend(wrote);
        }
        Ok(())
    }

    /// A patient's file this site does not write: every reader would refuse
    /// it.
    pub(super) fn file_too_large(&mut self, stem: &str, patient: &str, why: &str) {
        let patient =
            self.patient_names(&[patient.to_owned()], 1).unwrap_or_else(|_| "This patient".to_owned());
        self.rec.skipped(
            EventKind::TooLarge,
            Some(&patient_path(stem)),
            format!(
                "is not written: {why}. {patient} holds more than a patient file may carry. Its changes still travel in this site's change-log, but a site that joins later, or reads the folder again from scratch, does not get this patient from the folder"
            ),
        );
    }
}
