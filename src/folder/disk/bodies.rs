//! Document bodies in the folder (`docs/<xx>/<sha256>`): opened for a
//! streaming read, and published from a local file by copying it to a temp
//! file with its checksums computed on the way, reading the copy back to
//! check it, and only then renaming it into place. A body is never
//! rewritten: its name is its sha256.

use std::fs::{self, File};
use std::io::{self, Seek};
use std::path::PathBuf;

use super::{DiskFolder, open_regular};
use crate::folder::ReadError;
use crate::folder::body_io::{copy_digesting, digest, mismatch};
use crate::folder::fault::online_only_fault;
use crate::model::Body;
use crate::platform;

/// A body copied into a temp file of the folder's volume, not yet published.
pub struct StagedBody {
    temp: PathBuf,
    file: File,
    /// What the copy read from the source.
    pub body: Body,
}

impl DiskFolder {
    /// Opens a body for a streaming read; fails as [`DiskFolder::read`]
    /// does (a link, a FIFO, an online-only placeholder are not opened).
    pub fn open_body(&self, path: &str) -> Result<File, ReadError> {
        self.count(|s| s.reads += 1);
        let full = self.full(path)?;
        self.no_links_within(path)?;
        let opened = if online_only_fault(path) {
            Err(ReadError::NotLocal)
        } else {
            open_regular(&full, || self.patiently(path, false, || platform::read_no_follow().open(&full)))
        };
        if let Err(ReadError::NotLocal) = opened {
            self.not_local.borrow_mut().insert(path.to_owned());
        }
        opened
    }

    /// Copies `from` into a temp file on the folder's volume, computing
    /// the body's checksums on the way.
    pub fn stage_body(&self, from: &mut impl io::Read) -> io::Result<StagedBody> {
        let docs = self.full("docs")?;
        if self.staging.is_none() {
            self.no_links_within("docs/x")?;
            fs::create_dir_all(&docs)?;
        }
        let temp = self.temp_for(&docs.join("body"), 0);
        let mut file = File::options().read(true).write(true).create_new(true).open(&temp)?;
        match copy_digesting(from, &mut file) {
            Ok(body) => Ok(StagedBody { temp, file, body }),
            Err(e) => {
                let _ = fs::remove_file(&temp);
                Err(e)
            }
        }
    }

    /// Drops a staged body (its file already holds what it should).
    pub fn discard_body(&self, staged: StagedBody) {
        drop(staged.file);
        let _ = fs::remove_file(&staged.temp);
    }

    /// Makes a staged body durable, reads it back and checks it against
    /// what was copied, and renames it to its place (`docs/<xx>/<sha256>`).
    /// A body already there with the right size is left as it is (the same
    /// file published before, here or at another site) unless `replace`
    /// (the one there was found damaged).
    pub fn publish_body(&self, mut staged: StagedBody, replace: bool) -> io::Result<String> {
        let path = staged.body.folder_path();
        let result = (|| {
            if !replace && self.metadata(&path)?.is_some_and(|e| !e.is_dir && e.size == staged.body.size) {
                return Ok(());
            }
            staged.file.sync_data()?;
            staged.file.rewind()?;
            let copy = digest(&mut staged.file)?;
            if let Some(said) = mismatch(&staged.body, &copy) {
                return Err(io::Error::other(format!("the copy in the folder does not read back: {said}")));
            }
            let target = self.full(&path)?;
            self.no_links_within(&path)?;
            let parent = target.parent().expect("a body path has a folder");
            fs::create_dir_all(parent)?;
            self.count(|s| s.files_written += 1);
            self.note_touched([path.as_str()]);
            self.patiently(&path, true, || fs::rename(&staged.temp, &target))?;
            platform::sync_dir(parent)
        })();
        drop(staged.file);
        let _ = fs::remove_file(&staged.temp);
        result.map(|()| path)
    }
}
