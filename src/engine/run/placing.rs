//! Documents after the import: each row whose body changed elsewhere gets
//! its file from `docs/`, copied beside its target on both cores with its
//! size, CRC32 and sha256 checked on the way, made durable in batches and
//! renamed into place; one whose body has not arrived waits (the run stays
//! `ok`), one whose copy fails its check is never placed (`partial`); a row
//! deleted elsewhere has its file moved to the trash.

use std::fs::File;

use crate::db::{DocFile, DueState, TrashedDocument};
use crate::engine::EngineError;
use crate::engine::report::EventKind;
use crate::folder::ReadError;
use crate::folder::documents::{DocumentsFolder, LocalFile, PlaceError};
use crate::model::{Body, RowKey, shown};
use crate::xmlstore::format_time;

use super::documents::{DOCS_PER_BATCH, NAMED_PER_RUN};
use super::{Run, on_both_cores};

/// What looking at a due document decided.
enum Planned {
    /// In step, or nothing to place: no longer due.
    Done,
    /// Left for a later run in this state.
    Left(DueState),
    Fetch(Box<Fetch>),
}

/// A body to copy into the documents folder, its file opened.
struct Fetch {
    key: RowKey,
    path: String,
    full: std::path::PathBuf,
    wanted: Body,
    from: File,
    /// A file the row did not know is at the target: to the trash first.
    displace: bool,
    /// The local file as last in step (its old path, when renamed).
    was: Option<DocFile>,
}

impl Run<'_> {
    /// After the import: places the bodies of rows changed elsewhere, and
    /// moves the files of rows deleted elsewhere to the trash.
    pub(super) fn place_documents(&mut self) -> Result<(), EngineError> {
        // Without a documents folder, rows stay marked until one is set:
        // nothing to read on every run.
        if self.settings.documents_folder.is_none() {
            return Ok(());
        }
        if self.counts.full_scan {
            self.check_published_bodies()?;
        }
        let due = self.db.due_documents()?;
        if due.is_empty() {
            return self.tidy_trash();
        }
        let Some((_, docs)) = self.documents_folder() else { return Ok(()) };
        self.progress.step("placing documents", due.len() as u64);
        let mut waiting = 0;
        let mut due = due;
        while !due.is_empty() {
            let chunk: Vec<_> = due.drain(..due.len().min(DOCS_PER_BATCH)).collect();
            let mut fetches = Vec::new();
            for d in chunk {
                self.progress.advance(1);
                let key = RowKey { table: d.table, pk: d.pk };
                match self.plan_one(&docs, &key)? {
                    Planned::Left(DueState::Waiting) => waiting += 1,
                    Planned::Left(DueState::Failed) => self.counts.documents.failed += 1,
                    Planned::Left(DueState::Due) | Planned::Done => {}
                    Planned::Fetch(fetch) => fetches.push(*fetch),
                }
            }
            self.fetch(&docs, fetches)?;
        }
        self.counts.documents.waiting = waiting;
        if self.counts.documents.placed > NAMED_PER_RUN {
            let n = self.counts.documents.placed;
            self.rec.info(EventKind::Document, None, format!("placed {n} documents in all"));
        }
        if waiting > 0 {
            self.rec.warning(
                EventKind::Document,
                None,
                format!(
                    "waiting for {waiting} documents: their bodies have not arrived in the folder yet (the cloud client is still bringing them); each is placed when it has"
                ),
            );
        }
        self.tidy_trash()
    }

    /// Looks at one due document: done with it, leaves it for a later run,
    /// or opens its body to be fetched.
    fn plan_one(&mut self, docs: &DocumentsFolder, key: &RowKey) -> Result<Planned, EngineError> {
        let was = self.db.doc_file(key)?;
        let state = self.db.document_bodies(key)?;
        let row = self.db.document_row(&key.pk)?;
        let (alive, bodies) = match (state, row) {
            (Some((true, bodies)), Some(row)) => (row, bodies),
            // Alive in the state, not yet in the app's table (parked), or
            // deleted with the deletion held: it stays due.
            (Some((true, _)), None) | (Some((false, _)), Some(_)) => return Ok(Planned::Left(DueState::Due)),
            // Deleted elsewhere and gone from the app's table.
            (Some((false, _)) | None, None) => {
                if let Some(was) = was {
                    self.trash(docs, key, &was.path)?;
                    self.db.forget_doc_file(key)?;
                }
                self.db.clear_due(key)?;
                return Ok(Planned::Done);
            }
            (None, Some(_)) => {
                self.db.clear_due(key)?;
                return Ok(Planned::Done);
            }
        };
        let (Some(path), Some(wanted)) = (alive.path, bodies.last().cloned()) else {
            self.db.clear_due(key)?;
            return Ok(Planned::Done);
        };
        let resolved = match self.db.doc_file_at(key, &path)? {
            // Placing it would replace another document's file.
            Some(other) => Err(format!(
                "its path {path:?} is the file of another document here ({} {other}); two rows cannot share one file",
                key.table
            )),
            None => docs.resolve(&path),
        };
        let full = match resolved {
            Ok(full) => full,
            Err(why) => {
                self.refuse_document(key, &path, &why);
                self.db.set_due(key, DueState::Failed, &why, self.now_ms)?;
                return Ok(Planned::Left(DueState::Failed));
            }
        };
        let local = match docs.stat(&full) {
            Ok(local) => local,
            Err(e) => {
                let why = e.to_string();
                self.refuse_document(key, &path, &why);
                self.db.set_due(key, DueState::Failed, &why, self.now_ms)?;
                return Ok(Planned::Left(DueState::Failed));
            }
        };
        let in_step = was
            .as_ref()
            .filter(|w| w.path == path && local == Some(LocalFile { size: w.size, mtime_ns: w.mtime_ns }));
        if let Some(w) = in_step
            && w.body == wanted
        {
            self.db.clear_due(key)?;
            return Ok(Planned::Done);
        }
        if local.is_some() && in_step.is_none() && was.as_ref().is_some_and(|w| w.path == path) {
            // Changed here since it was last in step and not exported yet:
            // never overwritten; the next run exports it and the conflict
            // rule decides.
            return Ok(Planned::Left(DueState::Due));
        }
        // Fetch the body.
        let body_path = wanted.folder_path();
        let waiting = |run: &mut Self, why: String| -> Result<Planned, EngineError> {
            run.db.set_due(key, DueState::Waiting, &why, run.now_ms)?;
            Ok(Planned::Left(DueState::Waiting))
        };
        let entry = match self.folder.metadata(&body_path) {
            Ok(entry) => entry,
            Err(e) => return waiting(self, format!("its body {body_path} cannot be looked at: {e}")),
        };
        match entry {
            None => return waiting(self, format!("its body {body_path} has not arrived in the folder")),
            Some(e) if e.size < wanted.size => {
                return waiting(
                    self,
                    format!(
                        "its body {body_path} has {} of {} bytes so far (still arriving, or a placeholder)",
                        e.size, wanted.size
                    ),
                );
            }
            Some(e) if e.size > wanted.size => {
                // Not copied at all: it cannot be the body, and it could be
                // any size.
                let said = format!(
                    "CRC file integrity check failed: expected {} bytes, CRC32 {:08x}, sha256 {}; the copy in the folder has {} bytes",
                    wanted.size,
                    wanted.crc32,
                    wanted.sha256(),
                    e.size
                );
                let patient = self.db.patient_of_row(key)?.unwrap_or_default();
                let patient = self.patient_names(std::slice::from_ref(&patient), 1)?;
                self.rec.skipped(
                    EventKind::Document,
                    Some(&body_path),
                    format!(
                        "document {} of {} not placed: {said}. The copy in the folder is damaged; it is left for the site that wrote it to replace, and tried again next run",
                        shown(&path),
                        shown(&patient)
                    ),
                );
                self.db.set_due(key, DueState::Failed, &said, self.now_ms)?;
                return Ok(Planned::Left(DueState::Failed));
            }
            Some(_) => {}
        }
        self.counts.documents.files_read += 1;
        let from = match self.folder.open_body(&body_path) {
            Ok(f) => f,
            Err(ReadError::NotLocal) => {
                return waiting(self, format!("its body {body_path} is online-only here"));
            }
            Err(ReadError::NotFound) => {
                return waiting(self, format!("its body {body_path} has not arrived in the folder"));
            }
            Err(e) => {
                let why = format!("its body {body_path}: {e}");
                self.rec.skipped(
                    EventKind::Document,
                    Some(&body_path),
                    format!("document {} not placed: {why}; tried again next run", shown(&path)),
                );
                self.db.set_due(key, DueState::Failed, &why, self.now_ms)?;
                return Ok(Planned::Left(DueState::Failed));
            }
        };
        Ok(Planned::Fetch(Box::new(Fetch {
            key: key.clone(),
            path,
            full,
            wanted,
            from,
            // Whatever is at the target and not in step (a file the row did
            // not know) is kept in the trash, never overwritten.
            displace: local.is_some() && in_step.is_none(),
            was,
        })))
    }

    /// Copies the opened bodies beside their targets (on both cores,
    /// checked on the way), makes the copies durable at once, then puts
    /// each in place and records it.
    fn fetch(&mut self, docs: &DocumentsFolder, fetches: Vec<Fetch>) -> Result<(), EngineError> {
        if fetches.is_empty() {
            return Ok(());
        }
        let [mine, theirs] = on_both_cores(fetches, |part| {
            part.into_iter()
                .map(|mut f| {
                    let copied = docs.copy_in(&f.full, &mut f.from, &f.wanted);
                    (f, copied)
                })
                .collect::<Vec<_>>()
        });
        let mut arrived = Vec::new();
        for (f, copied) in mine.into_iter().chain(theirs) {
            match copied {
                Ok(a) => arrived.push((f, a)),
                Err(PlaceError::Mismatch(said)) => {
                    let patient = self.db.patient_of_row(&f.key)?.unwrap_or_default();
                    let patient = self.patient_names(std::slice::from_ref(&patient), 1)?;
                    self.rec.skipped(
                        EventKind::Document,
                        Some(&f.wanted.folder_path()),
                        format!(
                            "document {} of {} not placed: {said}. The copy in the folder is damaged; it is left for the site that wrote it to replace, and tried again next run",
                            shown(&f.path),
                            shown(&patient)
                        ),
                    );
                    self.db.set_due(&f.key, DueState::Failed, &said, self.now_ms)?;
                    self.counts.documents.failed += 1;
                }
                Err(PlaceError::Io(e)) => self.not_placed(&f, &e.to_string())?,
            }
        }
        let durable = docs.make_durable(&arrived.iter().map(|(_, a)| a).collect::<Vec<_>>());
        // Renamed into place, then the renames made durable, and only then
        // recorded as in step: a rename lost to a crash leaves the record
        // as it was, and the body is fetched again.
        let mut placed = Vec::new();
        let mut dirs = std::collections::BTreeSet::new();
        for (f, a) in arrived {
            if let Err(e) = &durable {
                docs.discard(a);
                self.not_placed(&f, &e.to_string())?;
                continue;
            }
            if f.displace {
                self.trash(docs, &f.key, &f.path)?;
            }
            match docs.put_in_place(a) {
                Ok((local, dir)) => {
                    dirs.insert(dir);
                    placed.push((f, local));
                }
                Err(e) => self.not_placed(&f, &e.to_string())?,
            }
        }
        if let Err(e) = docs.sync_dirs(dirs) {
            for (f, _) in placed {
                self.not_placed(&f, &e.to_string())?;
            }
            return Ok(());
        }
        for (f, local) in placed {
            let file = DocFile {
                path: f.path.clone(),
                size: local.size,
                mtime_ns: local.mtime_ns,
                body: f.wanted.clone(),
            };
            self.db.set_doc_file(&f.key, &file)?;
            self.db.clear_due(&f.key)?;
            if let Some(w) = f.was.filter(|w| w.path != f.path) {
                // Renamed elsewhere: the file under its old name goes.
                let old = docs.resolve(&w.path).ok();
                if old.is_some_and(|old| {
                    docs.stat(&old).ok().flatten() == Some(LocalFile { size: w.size, mtime_ns: w.mtime_ns })
                }) {
                    self.trash(docs, &f.key, &w.path)?;
                }
            }
            self.counts.documents.placed += 1;
            if self.counts.documents.placed <= NAMED_PER_RUN {
                self.rec.info(
                    EventKind::Document,
                    None,
                    format!("placed document {} ({})", shown(&f.path), f.wanted),
                );
            }
        }
        Ok(())
    }

    fn not_placed(&mut self, f: &Fetch, cause: &str) -> Result<(), EngineError> {
        let why = format!("it could not be written: {cause}");
        self.rec.skipped(
            EventKind::Document,
            None,
            format!("document {} not placed: {why}; tried again next run", shown(&f.path)),
        );
        self.db.set_due(&f.key, DueState::Failed, &why, self.now_ms)?;
        self.counts.documents.failed += 1;
        Ok(())
    }

    /// Moves a document's local file to the trash, if it is there.
    fn trash(&mut self, docs: &DocumentsFolder, key: &RowKey, path: &str) -> Result<(), EngineError> {
        let Ok(full) = docs.resolve(path) else { return Ok(()) };
        if !matches!(docs.stat(&full), Ok(Some(_))) {
            return Ok(());
        }
        let when = format_time(self.now_ms).replace(':', "-");
        match docs.to_trash(path, &full, &when) {
            Ok(trashed) => {
                self.db.add_trash(&TrashedDocument {
                    trashed: trashed.clone(),
                    original: path.to_owned(),
                    table: key.table.clone(),
                    pk: key.pk.clone(),
                    at_ms: self.now_ms,
                })?;
                self.counts.documents.trashed += 1;
                self.rec.info(
                    EventKind::Document,
                    None,
                    format!(
                        "moved document {} to {} (deleted or replaced at another site)",
                        shown(path),
                        shown(&trashed)
                    ),
                );
            }
            Err(e) => self.rec.skipped(
                EventKind::Document,
                None,
                format!(
                    "document {} could not be moved to the trash: {e}; tried again next run",
                    shown(path)
                ),
            ),
        }
        Ok(())
    }

    /// Removes trashed files kept longer than the retention.
    fn tidy_trash(&mut self) -> Result<(), EngineError> {
        let keep_ms = self.settings.log_retention.as_millis() as u64;
        let old: Vec<_> =
            self.db.trash()?.into_iter().filter(|t| t.at_ms.saturating_add(keep_ms) < self.now_ms).collect();
        if old.is_empty() {
            return Ok(());
        }
        let Some(root) = self.settings.documents_folder.clone() else { return Ok(()) };
        let docs = DocumentsFolder::new(root);
        for t in old {
            if docs.remove_from_trash(&t.trashed).is_ok() {
                self.db.forget_trash(&t.trashed)?;
            }
        }
        Ok(())
    }
}
