//! Documents: the files the documents table's rows point at travel with
//! their rows. Before the import, each document's local file is looked at
//! (a stat; read only when its size or time moved): a new or changed one is
//! copied into `docs/` by its checksums and its body stamped on the row, a
//! field like any other. After the import, each row whose body changed
//! elsewhere gets its file from `docs/`, checked on the way (size, CRC32,
//! sha256) and renamed into place, or waits for a body that has not
//! arrived; a row deleted elsewhere has its file moved to the trash.

use crate::db::DocFile;
use crate::engine::EngineError;
use crate::engine::report::EventKind;
use crate::folder::StagedBody;
use crate::folder::documents::{DocumentsFolder, LocalFile};
use crate::model::{Body, RowKey, same_file_key, shown};

use super::{Run, on_both_cores};

/// Documents copied per batch: their temp files are made durable at once.
pub(super) const DOCS_PER_BATCH: usize = 64;
/// New bodies stamped per export: a segment of about 2,000 versions stays
/// far below a segment's limits (each is about 250 bytes).
const STAMPS_PER_EXPORT: usize = 2_000;
/// Documents exported or placed that a run names one by one; the rest are
/// counted.
pub(super) const NAMED_PER_RUN: u64 = 50;

/// A new body to stamp on its row once it is in the folder: the file it
/// was read from, the body the file was last in step with, and when the
/// file was written (the edit's time).
struct BodyStamp {
    key: RowKey,
    file: DocFile,
    was: Option<Body>,
    edit_ms: u64,
}

/// A document whose local file is new or changed since it was last in
/// step with its row.
struct Changed {
    key: RowKey,
    path: String,
    full: std::path::PathBuf,
    local: LocalFile,
    was: Option<Body>,
}

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
    /// Bodies this site wrote that nothing names any more, removed from
    /// `docs/`.
    pub bodies_removed: u64,
    /// Documents whose path or file was refused (each has an event).
    pub refused: u64,
    /// Document files opened: local files and bodies in `docs/`.
    pub files_read: u64,
}

impl Run<'_> {
    /// The documents folder, when the mapping has a documents table and
    /// the setting names a folder that is there.
    pub(super) fn documents_folder(&mut self) -> Option<(String, DocumentsFolder)> {
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

    pub(super) fn refuse_document(&mut self, key: &RowKey, path: &str, why: &str) {
        self.counts.documents.refused += 1;
        // Its patient by name (a database that cannot say leaves it out:
        // the refusal itself is what matters).
        let of = self
            .db
            .patient_of_row(key)
            .ok()
            .flatten()
            .and_then(|p| self.patient_names(std::slice::from_ref(&p), 1).ok())
            .map(|who| format!(" of {who}"))
            .unwrap_or_default();
        self.rec.skipped(
            EventKind::Document,
            None,
            format!("document {}{of} is not synced: {why}", shown(path)),
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
        // A stat per document, on both cores: most of a run with nothing
        // to do when a site has many documents.
        let [mine, theirs] = on_both_cores(rows, |part| {
            part.into_iter()
                .filter_map(|(pk, path)| {
                    let path = path?;
                    let found = docs.resolve(&path).map(|full| {
                        let local = docs.stat(&full);
                        (full, local)
                    });
                    Some((pk, path, found))
                })
                .collect::<Vec<_>>()
        });
        let found: Vec<_> = mine.into_iter().chain(theirs).collect();
        // Rows whose paths name one file: only the row whose file it was
        // may export it (a second would take the first one's file as its own).
        let mut rows_of_file: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        for (_, path, _) in &found {
            *rows_of_file.entry(same_file_key(path)).or_default() += 1;
        }
        let mut changed = Vec::new();
        for (pk, path, found) in found {
            let key = RowKey { table: table.clone(), pk };
            let (full, local) = match found {
                Ok(found) => found,
                Err(why) => {
                    self.refuse_document(&key, &path, &why);
                    continue;
                }
            };
            let local = match local {
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
            let file = same_file_key(&path);
            if rows_of_file.get(&file).is_some_and(|n| *n > 1)
                && was.is_none_or(|w| same_file_key(&w.path) != file)
            {
                self.refuse_document(
                    &key,
                    &path,
                    "another row of the table names the same file; two rows cannot share one file (give each its own)",
                );
                continue;
            }
            changed.push(Changed { key, path, full, local, was: was.map(|w| w.body.clone()) });
        }
        if changed.is_empty() {
            return Ok(());
        }
        self.progress.step("copying documents", changed.len() as u64);
        let stager = match self.folder.body_stager() {
            Ok(stager) => stager,
            Err(e) => {
                self.rec.skipped(
                    EventKind::Document,
                    Some("docs"),
                    format!("no document could be copied into the folder: {e}; tried again next run"),
                );
                return Ok(());
            }
        };
        let mut stamps = Vec::new();
        let mut rest = changed;
        while !rest.is_empty() {
            let chunk: Vec<Changed> = rest.drain(..rest.len().min(DOCS_PER_BATCH)).collect();
            // Copied and checksummed on both cores; nothing durable yet.
            let [mine, theirs] = on_both_cores(chunk, |part| {
                part.into_iter()
                    .map(|c| {
                        let staged = docs.open(&c.full).and_then(|mut f| stager.stage(&mut f));
                        (c, staged)
                    })
                    .collect::<Vec<_>>()
            });
            let mut to_publish = Vec::new();
            let mut publishing = Vec::new();
            for (c, staged) in mine.into_iter().chain(theirs) {
                self.progress.advance(1);
                self.counts.documents.files_read += 1;
                if let Some(ready) = self.judge_copy(&docs, c, staged)? {
                    to_publish.push(ready.0);
                    publishing.push(ready.1);
                }
            }
            let mut outcome: std::collections::HashMap<Body, Result<bool, String>> =
                std::collections::HashMap::new();
            for (body, result) in self.folder.publish_bodies(to_publish, false) {
                let result = result.map_err(|e| e.to_string());
                // The same bytes twice in one batch: published once is enough.
                if outcome.get(&body).is_none_or(|r| r.is_err()) {
                    outcome.insert(body, result);
                }
            }
            for (body, result) in &outcome {
                if matches!(result, Ok(true)) {
                    self.counts.documents.published += 1;
                    self.db.note_published(body)?;
                } else if let Err(e) = result {
                    self.rec.skipped(
                        EventKind::Document,
                        Some(&body.folder_path()),
                        format!(
                            "a document body could not be copied into the folder: {e}; tried again next run"
                        ),
                    );
                }
            }
            stamps.extend(
                publishing.into_iter().filter(|stamp| matches!(outcome.get(&stamp.file.body), Some(Ok(_)))),
            );
            if stamps.len() >= STAMPS_PER_EXPORT {
                self.stamp_bodies(std::mem::take(&mut stamps))?;
            }
        }
        self.stamp_bodies(stamps)?;
        if self.counts.documents.exported > NAMED_PER_RUN {
            let n = self.counts.documents.exported;
            self.rec.info(EventKind::Document, None, format!("exported {n} documents in all"));
        }
        Ok(())
    }

    /// Stamps the new bodies of documents on their rows: one export (and
    /// change-log segment) per call.
    fn stamp_bodies(&mut self, stamps: Vec<BodyStamp>) -> Result<(), EngineError> {
        if stamps.is_empty() {
            return Ok(());
        }
        let mut w = self.db.begin_write(self.now_ms)?;
        let mut exported = Vec::new();
        for BodyStamp { key, file, was, edit_ms } in &stamps {
            if w.stamp_body(key, file, was.as_ref(), *edit_ms)? {
                exported.push((file.path.clone(), file.body.clone()));
            }
        }
        let stamped = w.commit()?;
        self.note_stamped(stamped);
        for (path, body) in exported {
            self.counts.documents.exported += 1;
            if self.counts.documents.exported <= NAMED_PER_RUN {
                self.rec.info(
                    EventKind::Document,
                    None,
                    format!("exported document {} ({body})", shown(&path)),
                );
            }
        }
        Ok(())
    }

    /// What to do with a staged copy of a changed local file: `Some` (the
    /// copy to publish and the stamp to make) when it is a new body of its
    /// row; `None` when it was refused, touched only, or already the body
    /// the row shows (each said or recorded).
    fn judge_copy(
        &mut self,
        docs: &DocumentsFolder,
        c: Changed,
        staged: std::io::Result<StagedBody>,
    ) -> Result<Option<(StagedBody, BodyStamp)>, EngineError> {
        let Changed { key, path, full, local, was } = c;
        let staged = match staged {
            Ok(staged) => staged,
            Err(e) => {
                self.refuse_document(&key, &path, &format!("it cannot be read: {e}"));
                return Ok(None);
            }
        };
        let body = staged.body.clone();
        if docs.stat(&full).ok().flatten() != Some(local) || body.size != local.size {
            self.folder.discard_body(staged);
            self.rec.skipped(
                EventKind::Document,
                None,
                format!("document {} changed while it was copied; it is copied again next run", shown(&path)),
            );
            return Ok(None);
        }
        let file =
            DocFile { path: path.clone(), size: local.size, mtime_ns: local.mtime_ns, body: body.clone() };
        if let Some(why) = self.app_checksums_disagree(&key, &body)? {
            self.folder.discard_body(staged);
            self.refuse_document(&key, &path, &why);
            return Ok(None);
        }
        let shows = self.db.document_bodies(&key)?.and_then(|(_, bodies)| bodies.last().cloned());
        if was.as_ref() == Some(&body) || shows.as_ref() == Some(&body) {
            // Touched, or the file already holds the body the row shows.
            self.folder.discard_body(staged);
            self.db.set_doc_file(&key, &file)?;
            if shows.as_ref() == Some(&body) {
                self.db.clear_due(&key)?;
            }
            return Ok(None);
        }
        let edit_ms = u64::try_from(local.mtime_ns / 1_000_000).unwrap_or(0).min(self.now_ms);
        Ok(Some((staged, BodyStamp { key, file, was, edit_ms })))
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

    /// On a full scan: every body this site holds in step is checked in
    /// `docs/` (present, its size, its checksums), and one missing or
    /// damaged there is published again from the local file.
    pub(super) fn check_published_bodies(&mut self) -> Result<(), EngineError> {
        let Some((table, docs)) = self.documents_folder() else { return Ok(()) };
        let mut checked = std::collections::HashSet::new();
        for (pk, file) in self.db.doc_files(&table)? {
            // Only a body a live row still names: one nothing names may
            // have been removed on purpose.
            let key = RowKey { table: table.clone(), pk: pk.clone() };
            let named = self
                .db
                .document_bodies(&key)?
                .is_some_and(|(alive, bodies)| alive && bodies.contains(&file.body));
            if !named || !checked.insert(file.body.clone()) {
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
            let Ok(full) = docs.resolve(&file.path) else { continue };
            if docs.stat(&full).ok().flatten() != Some(LocalFile { size: file.size, mtime_ns: file.mtime_ns })
            {
                // Changed here since: the export publishes the new body.
                continue;
            }
            self.counts.documents.files_read += 1;
            let staged = match self
                .folder
                .body_stager()
                .and_then(|st| docs.open(&full).and_then(|mut f| st.stage(&mut f)))
            {
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
            let published = self.folder.publish_bodies(vec![staged], true).pop().map(|(_, r)| r);
            match published.unwrap_or(Ok(false)) {
                Ok(_) => {
                    self.db.note_published(&file.body)?;
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
}
