//! Document bodies in the folder (`docs/<xx>/<sha256>`): opened for a
//! streaming read, and published in batches: each local file copied to a
//! temp file and its checksums computed from the copy (on any thread, see
//! [`BodyStager`]), the batch made durable at once, then renamed into
//! place. A body is never rewritten: its name
//! is its sha256.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use super::{DiskFolder, SYNC_DIRS_ONE_BY_ONE, SYNC_FILES_ONE_BY_ONE, TEMP_COUNTER};
use crate::folder::ReadError;
use crate::folder::body_io::copy_and_digest;
use crate::model::Body;
use crate::platform;

/// A body copied into a temp file on the folder's volume, not published.
pub struct StagedBody {
    temp: PathBuf,
    /// What the copy read from the source.
    pub body: Body,
}

/// Copies bodies into temp files on the folder's volume; shareable between
/// threads (it holds only where to put them).
#[derive(Clone, Debug)]
pub struct BodyStager {
    staging: Option<PathBuf>,
    docs: PathBuf,
}

impl BodyStager {
    /// Copies `from` into a new temp file and computes the body's
    /// checksums from the copy. Nothing is made durable yet.
    pub fn stage(&self, from: &mut File) -> io::Result<StagedBody> {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let temp = match &self.staging {
            Some(dir) => dir.join(format!("{pid}-{n}-body.tmp")),
            None => self.docs.join(format!("~$body.{pid}-{n}.tmp")),
        };
        let mut file = File::options().read(true).write(true).create_new(true).open(&temp)?;
        match copy_and_digest(from, &mut file) {
            Ok(body) => Ok(StagedBody { temp, body }),
            Err(e) => {
                drop(file);
                let _ = fs::remove_file(&temp);
                Err(e)
            }
        }
    }
}

impl DiskFolder {
    /// Opens a body for a streaming read; fails as [`DiskFolder::read`]
    /// does (a link, a FIFO, an online-only placeholder are not opened).
    pub fn open_body(&self, path: &str) -> Result<File, ReadError> {
        self.open_for_reading(path)
    }

    /// Where bodies are staged: the staging directory, or `docs/` itself
    /// (checked not to be a link, and made).
    pub fn body_stager(&self) -> io::Result<BodyStager> {
        let docs = self.full("docs")?;
        if self.staging.is_none() {
            self.no_links_within("docs/x")?;
            fs::create_dir_all(&docs)?;
        }
        Ok(BodyStager { staging: self.staging.clone(), docs })
    }

    /// Drops a staged body unpublished.
    pub fn discard_body(&self, staged: StagedBody) {
        let _ = fs::remove_file(&staged.temp);
    }

    /// Publishes staged bodies at `docs/<xx>/<sha256>` (their checksums
    /// were computed from the copies themselves): the batch is made durable
    /// at once, and each is renamed into place. A body
    /// already there with the right size is left as it is (the same file,
    /// published here or at another site) unless `replace` (the one there
    /// was found damaged). Returns each body with its outcome; every temp
    /// file is gone afterwards.
    pub fn publish_bodies(&self, staged: Vec<StagedBody>, replace: bool) -> Vec<(Body, io::Result<bool>)> {
        let mut out = Vec::with_capacity(staged.len());
        let mut ready = Vec::new();
        for s in staged {
            let path = s.body.folder_path();
            let present = match self.metadata(&path) {
                Ok(entry) => entry.is_some_and(|e| !e.is_dir && e.size == s.body.size),
                Err(e) => {
                    let body = s.body.clone();
                    self.discard_body(s);
                    out.push((body, Err(e)));
                    continue;
                }
            };
            if present && !replace {
                let body = s.body.clone();
                self.discard_body(s);
                out.push((body, Ok(false)));
                continue;
            }
            ready.push((s, path));
        }
        if ready.is_empty() {
            return out;
        }
        let result = self.make_durable(ready.iter().map(|(s, _)| s.temp.as_path()), ready.len());
        if let Err(e) = result {
            for (s, _) in ready {
                let body = s.body.clone();
                self.discard_body(s);
                out.push((body, Err(io::Error::new(e.kind(), e.to_string()))));
            }
            return out;
        }
        let mut dirs = BTreeSet::new();
        for (s, path) in ready {
            let body = s.body.clone();
            let renamed = (|| {
                let target = self.full(&path)?;
                self.no_links_within(&path)?;
                let parent = target.parent().expect("a body path has a folder").to_path_buf();
                fs::create_dir_all(&parent)?;
                self.count(|st| st.files_written += 1);
                self.note_touched([path.as_str()]);
                self.patiently(&path, true, || fs::rename(&s.temp, &target))?;
                dirs.insert(parent);
                Ok(true)
            })();
            if renamed.is_err() {
                self.discard_body(s);
            }
            out.push((body, renamed));
        }
        if let Err(e) = self.sync_dirs(dirs) {
            for (_, result) in out.iter_mut().filter(|(_, r)| matches!(r, Ok(true))) {
                *result = Err(io::Error::new(e.kind(), e.to_string()));
            }
        }
        out
    }

    /// Makes `count` written temp files durable: an fsync each, or for a
    /// large batch one syncfs of the volume.
    fn make_durable<'p>(&self, temps: impl Iterator<Item = &'p Path>, count: usize) -> io::Result<()> {
        if count > SYNC_FILES_ONE_BY_ONE && platform::SYNCS_A_VOLUME {
            return platform::sync_volume(self.staging.as_deref().unwrap_or(&self.root));
        }
        for temp in temps {
            File::options().write(true).open(temp)?.sync_data()?;
        }
        Ok(())
    }

    fn sync_dirs(&self, dirs: BTreeSet<PathBuf>) -> io::Result<()> {
        if dirs.len() > SYNC_DIRS_ONE_BY_ONE && platform::SYNCS_A_VOLUME {
            return platform::sync_volume(&self.root);
        }
        dirs.iter().try_for_each(|d| platform::sync_dir(d))
    }
}
