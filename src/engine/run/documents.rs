//! Documents: the files the documents table's rows point at travel with
//! their rows. Before the import, each document's local file is looked at
//! (a stat; read only when its size or time moved): a new or changed one is
//! copied into `docs/` by its checksums and its body stamped on the row, a
//! field like any other. After the import, each row whose body changed
//! elsewhere gets its file from `docs/`, checked on the way (size, CRC32,
//! sha256) and renamed into place, or waits for a body that has not
//! arrived; a row deleted elsewhere has its file moved to the trash.

use crate::db::{DocFile, DueState, TrashedDocument};
use crate::engine::EngineError;
use crate::engine::report::EventKind;
use crate::folder::ReadError;
use crate::folder::documents::{DocumentsFolder, LocalFile, PlaceError};
use crate::model::{Body, RowKey, shown};
use crate::xmlstore::format_time;

use super::Run;

/// What the documents steps did (part of the run's counts).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct DocumentCounts {
    /// Local files new or changed whose bodies were stamped on their rows.
    pub exported: u64,
    /// Bodies copied into `docs/` (a body already there is not copied).
    pub published: u64,
    /// Bodies placed in the documents folder from `docs/`.
    pub placed: u64,
    /// Documents whose body has not arrived in the folder yet.
    pub waiting: u64,
    /// Bodies whose copy failed its check (not placed).
    pub failed: u64,
    /// Local files moved to the trash (deleted or replaced elsewhere).
    pub trashed: u64,
    /// Documents whose path or file was refused (each has an event).
    pub refused: u64,
    /// Document files opened: local files and bodies in `docs/`.
    pub files_read: u64,
}

impl Run<'_> {
    /// The documents folder, when the mapping has a documents table and
    /// the setting names a folder that is there.
    fn documents_folder(&mut self) -> Option<(String, DocumentsFolder)> {
        let table = self.db.mapping().documents()?.table.clone();
        let root = self.settings.documents_folder.clone()?;
        if !root.is_dir() {
            self.rec.skipped(
                EventKind::Document,
                None,
                format!(
                    "the documents folder {} is not there (a drive not mounted?): no document file was exported or placed",
                    shown(&root.display().to_string())
                ),
            );
            return None;
        }
        Some((table, DocumentsFolder::new(root)))
    }

    fn refuse_document(&mut self, key: &RowKey, path: &str, why: &str) {
        self.counts.documents.refused += 1;
        self.rec.skipped(
            EventKind::Document,
            None,
            format!("document {} ({} {}) is not synced: {why}", shown(path), key.table, shown(&key.pk)),
        );
    }

    /// Before the import: exports every document whose local file is new
    /// or changed since it was last in step with its row.
    pub(super) fn export_documents(&mut self) -> Result<(), EngineError> {
        let Some((table, docs)) = self.documents_folder() else { return Ok(()) };
        let rows = self.db.document_paths()?;
        if rows.is_empty() {
            return Ok(());
        }
        let known = self.db.doc_files(&table)?;
        let mut changed = Vec::new();
        for (pk, path) in rows {
            let Some(path) = path else { continue };
            let key = RowKey { table: table.clone(), pk };
            let full = match docs.resolve(&path) {
                Ok(full) => full,
                Err(why) => {
                    self.refuse_document(&key, &path, &why);
                    continue;
                }
            };
            let local = match docs.stat(&full) {
                Ok(Some(local)) => local,
                // No file here: nothing to export (a body the row names is
                // placed after the import).
                Ok(None) => continue,
                Err(e) => {
                    self.refuse_document(&key, &path, &e.to_string());
                    continue;
                }
            };
            let was = known.get(&key.pk);
            if was.is_some_and(|w| w.path == path && w.size == local.size && w.mtime_ns == local.mtime_ns) {
                continue;
            }
            changed.push((key, path, full, local, was.map(|w| w.body.clone())));
        }
        if changed.is_empty() {
            return Ok(());
        }
        self.progress.step("copying documents", changed.len() as u64);
        let mut stamps = Vec::new();
        for (key, path, full, local, was) in changed {
            self.progress.advance(1);
            self.counts.documents.files_read += 1;
            let staged = match docs.open(&full).and_then(|mut f| self.folder.stage_body(&mut f)) {
                Ok(staged) => staged,
                Err(e) => {
                    self.refuse_document(&key, &path, &format!("it cannot be read: {e}"));
                    continue;
                }
            };
            let body = staged.body.clone();
            if docs.stat(&full).ok().flatten() != Some(local) || body.size != local.size {
                self.folder.discard_body(staged);
                self.rec.skipped(
                    EventKind::Document,
                    None,
                    format!(
                        "document {} changed while it was copied; it is copied again next run",
                        shown(&path)
                    ),
                );
                continue;
            }
            let file = DocFile {
                path: path.clone(),
                size: local.size,
                mtime_ns: local.mtime_ns,
                body: body.clone(),
            };
            if let Some(why) = self.app_checksums_disagree(&key, &body)? {
                self.folder.discard_body(staged);
                self.refuse_document(&key, &path, &why);
                continue;
            }
            let shows = self.db.document_bodies(&key)?.and_then(|(_, bodies)| bodies.last().cloned());
            if was.as_ref() == Some(&body) || shows.as_ref() == Some(&body) {
                // Touched, or the file already holds the body the row shows.
                self.folder.discard_body(staged);
                self.db.set_doc_file(&key, &file)?;
                if shows.as_ref() == Some(&body) {
                    self.db.clear_due(&key)?;
                }
                continue;
            }
            let exists = self.folder.metadata(&body.folder_path()).ok().flatten().is_some();
            match self.folder.publish_body(staged, false) {
                Ok(_) => self.counts.documents.published += u64::from(!exists),
                Err(e) => {
                    self.rec.skipped(
                        EventKind::Document,
                        Some(&body.folder_path()),
                        format!(
                            "document {} could not be copied into the folder: {e}; tried again next run",
                            shown(&path)
                        ),
                    );
                    continue;
                }
            }
            let edit_ms = u64::try_from(local.mtime_ns / 1_000_000).unwrap_or(0).min(self.now_ms);
            stamps.push((key, file, was, edit_ms));
        }
        if stamps.is_empty() {
            return Ok(());
        }
        let mut w = self.db.begin_write(self.now_ms)?;
        let mut exported = Vec::new();
        for (key, file, was, edit_ms) in &stamps {
            if w.stamp_body(key, file, was.as_ref(), *edit_ms)? {
                exported.push((file.path.clone(), file.body.clone()));
            }
        }
        let stamped = w.commit()?;
        self.note_stamped(stamped);
        for (path, body) in exported {
            self.counts.documents.exported += 1;
            self.rec.info(EventKind::Document, None, format!("exported document {} ({body})", shown(&path)));
        }
        Ok(())
    }

    /// Why the app's own checksum columns (when it fills them) disagree
    /// with the file, if they do.
    fn app_checksums_disagree(&self, key: &RowKey, body: &Body) -> Result<Option<String>, EngineError> {
        let Some(row) = self.db.document_row(&key.pk)? else { return Ok(None) };
        if let Some(sha) = row.sha256.as_deref().map(str::trim).filter(|s| !s.is_empty())
            && !sha.eq_ignore_ascii_case(body.sha256())
        {
            return Ok(Some(format!(
                "the row's sha256 column says {} but the file's sha256 is {}; the app's row and its file disagree",
                shown(sha),
                body.sha256()
            )));
        }
        if let Some(size) = row.byte_size
            && u64::try_from(size).ok() != Some(body.size)
        {
            return Ok(Some(format!(
                "the row's byte_size column says {size} but the file has {} bytes; the app's row and its file disagree",
                body.size
            )));
        }
        Ok(None)
    }

    /// After the import: places the bodies of rows changed elsewhere, and
    /// moves the files of rows deleted elsewhere to the trash.
    pub(super) fn place_documents(&mut self) -> Result<(), EngineError> {
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
        for d in due {
            self.progress.advance(1);
            let key = RowKey { table: d.table, pk: d.pk };
            match self.place_one(&docs, &key)? {
                Some(DueState::Waiting) => waiting += 1,
                Some(DueState::Failed) => self.counts.documents.failed += 1,
                _ => {}
            }
        }
        self.counts.documents.waiting = waiting;
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

    /// One due document; returns the state it is left in (`None`: done).
    fn place_one(&mut self, docs: &DocumentsFolder, key: &RowKey) -> Result<Option<DueState>, EngineError> {
        let was = self.db.doc_file(key)?;
        let state = self.db.document_bodies(key)?;
        let row = self.db.document_row(&key.pk)?;
        let (alive, bodies) = match (state, row) {
            (Some((true, bodies)), Some(row)) => (row, bodies),
            // Alive in the state, not yet in the app's table (parked), or
            // deleted with the deletion held: it stays due.
            (Some((true, _)), None) | (Some((false, _)), Some(_)) => return Ok(Some(DueState::Due)),
            // Deleted elsewhere and gone from the app's table.
            (Some((false, _)) | None, None) => {
                if let Some(was) = was {
                    self.trash(docs, key, &was.path)?;
                    self.db.forget_doc_file(key)?;
                }
                self.db.clear_due(key)?;
                return Ok(None);
            }
            (None, Some(_)) => {
                self.db.clear_due(key)?;
                return Ok(None);
            }
        };
        let (Some(path), Some(wanted)) = (alive.path, bodies.last().cloned()) else {
            self.db.clear_due(key)?;
            return Ok(None);
        };
        let full = match docs.resolve(&path) {
            Ok(full) => full,
            Err(why) => {
                self.refuse_document(key, &path, &why);
                self.db.set_due(key, DueState::Failed, &why, self.now_ms)?;
                return Ok(Some(DueState::Failed));
            }
        };
        let local = match docs.stat(&full) {
            Ok(local) => local,
            Err(e) => {
                let why = e.to_string();
                self.refuse_document(key, &path, &why);
                self.db.set_due(key, DueState::Failed, &why, self.now_ms)?;
                return Ok(Some(DueState::Failed));
            }
        };
        let in_step = was
            .as_ref()
            .filter(|w| w.path == path && local == Some(LocalFile { size: w.size, mtime_ns: w.mtime_ns }));
        if let Some(w) = in_step
            && w.body == wanted
        {
            self.db.clear_due(key)?;
            return Ok(None);
        }
        if local.is_some() && in_step.is_none() && was.as_ref().is_some_and(|w| w.path == path) {
            // Changed here since it was last in step and not exported yet:
            // never overwritten; the next run exports it and the conflict
            // rule decides.
            return Ok(Some(DueState::Due));
        }
        // Fetch the body.
        let body_path = wanted.folder_path();
        let waiting = |run: &mut Self, why: String| -> Result<Option<DueState>, EngineError> {
            run.db.set_due(key, DueState::Waiting, &why, run.now_ms)?;
            Ok(Some(DueState::Waiting))
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
            Some(_) => {}
        }
        self.counts.documents.files_read += 1;
        let mut from = match self.folder.open_body(&body_path) {
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
                return Ok(Some(DueState::Failed));
            }
        };
        // Whatever is at the target and not in step (a file the row did not
        // know) is kept in the trash, never overwritten.
        if local.is_some() && in_step.is_none() {
            self.trash(docs, key, &path)?;
        }
        match docs.place(&full, &mut from, &wanted) {
            Ok(placed) => {
                let file = DocFile {
                    path: path.clone(),
                    size: placed.size,
                    mtime_ns: placed.mtime_ns,
                    body: wanted.clone(),
                };
                self.db.set_doc_file(key, &file)?;
                self.db.clear_due(key)?;
                if let Some(w) = was.filter(|w| w.path != path) {
                    // Renamed elsewhere: the file under its old name goes.
                    let old = docs.resolve(&w.path).ok();
                    if old.is_some_and(|old| {
                        docs.stat(&old).ok().flatten()
                            == Some(LocalFile { size: w.size, mtime_ns: w.mtime_ns })
                    }) {
                        self.trash(docs, key, &w.path)?;
                    }
                }
                self.counts.documents.placed += 1;
                self.rec.info(
                    EventKind::Document,
                    None,
                    format!("placed document {} ({wanted})", shown(&path)),
                );
                Ok(None)
            }
            Err(PlaceError::Mismatch(said)) => {
                let patient = self.db.patient_of_row(key)?.unwrap_or_default();
                self.rec.skipped(
                    EventKind::Document,
                    Some(&body_path),
                    format!(
                        "document {} of patient {} not placed: {said}. The copy in the folder is damaged; it is left for the site that wrote it to replace, and tried again next run",
                        shown(&path),
                        shown(&patient)
                    ),
                );
                self.db.set_due(key, DueState::Failed, &said, self.now_ms)?;
                Ok(Some(DueState::Failed))
            }
            Err(PlaceError::Io(e)) => {
                let why = format!("it could not be written: {e}");
                self.rec.skipped(
                    EventKind::Document,
                    None,
                    format!("document {} not placed: {why}; tried again next run", shown(&path)),
                );
                self.db.set_due(key, DueState::Failed, &why, self.now_ms)?;
                Ok(Some(DueState::Failed))
            }
        }
    }

    /// On a full scan: every body this site holds in step is checked in
    /// `docs/` (present, its size, its checksums), and one missing or
    /// damaged there is published again from the local file.
    fn check_published_bodies(&mut self) -> Result<(), EngineError> {
        let Some((table, docs)) = self.documents_folder() else { return Ok(()) };
        let mut checked = std::collections::HashSet::new();
        for (pk, file) in self.db.doc_files(&table)? {
            if !checked.insert(file.body.clone()) {
                continue;
            }
            let body_path = file.body.folder_path();
            let problem =
                match self.folder.metadata(&body_path) {
                    Ok(None) => Some("is missing".to_owned()),
                    Ok(Some(e)) if e.size != file.body.size => {
                        Some(format!("has {} bytes instead of {}", e.size, file.body.size))
                    }
                    Ok(Some(_)) => {
                        self.counts.documents.files_read += 1;
                        match self.folder.open_body(&body_path).map_err(|e| e.to_string()).and_then(
                            |mut f| crate::folder::body_io::digest(&mut f).map_err(|e| e.to_string()),
                        ) {
                            Ok(found) => crate::folder::body_io::mismatch(&file.body, &found)
                                .map(|said| format!("is damaged ({said})")),
                            // Online-only or held: not judged this time.
                            Err(_) => None,
                        }
                    }
                    Err(_) => None,
                };
            let Some(problem) = problem else { continue };
            let key = RowKey { table: table.clone(), pk };
            let Ok(full) = docs.resolve(&file.path) else { continue };
            if docs.stat(&full).ok().flatten() != Some(LocalFile { size: file.size, mtime_ns: file.mtime_ns })
            {
                // Changed here since: the export publishes the new body.
                continue;
            }
            self.counts.documents.files_read += 1;
            let staged = match docs.open(&full).and_then(|mut f| self.folder.stage_body(&mut f)) {
                Ok(staged) if staged.body == file.body => staged,
                Ok(staged) => {
                    self.folder.discard_body(staged);
                    continue;
                }
                Err(e) => {
                    self.refuse_document(&key, &file.path, &format!("it cannot be read: {e}"));
                    continue;
                }
            };
            match self.folder.publish_body(staged, true) {
                Ok(_) => {
                    self.counts.documents.published += 1;
                    self.rec.warning(
                        EventKind::Document,
                        Some(&body_path),
                        format!("the folder's copy of document {} {problem}; published it again from this site's file", shown(&file.path)),
                    );
                }
                Err(e) => self.rec.skipped(
                    EventKind::Document,
                    Some(&body_path),
                    format!(
                        "the folder's copy of document {} {problem}, and publishing it again failed: {e}",
                        shown(&file.path)
                    ),
                ),
            }
        }
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
