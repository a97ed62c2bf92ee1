//! The app's local documents folder: the files the documents table's rows
//! point at. A row's path is taken relative to the folder, and refused when
//! it could reach outside it (`..`, an absolute path, a link on the way);
//! a body is placed by copying it to a temp file beside its target,
//! checking it, and renaming it into place; nothing is ever unlinked on a
//! signal from another site: it is moved to `.clinicsync-trash/`.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::body_io::{copy_and_digest, mismatch};
use crate::model::Body;
use crate::platform;

/// The folder inside the documents folder where replaced and deleted
/// documents are kept.
pub const TRASH: &str = ".clinicsync-trash";

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The size and modification time of a document's local file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalFile {
    pub size: u64,
    pub mtime_ns: i64,
}

/// A body copied and checked beside its target, not yet in place.
#[derive(Debug)]
pub struct Arriving {
    temp: PathBuf,
    target: PathBuf,
}

/// Why a body was not placed.
#[derive(Debug)]
pub enum PlaceError {
    /// The copy does not hold what the row says (the sentence says what).
    Mismatch(String),
    Io(io::Error),
}

impl From<io::Error> for PlaceError {
    fn from(e: io::Error) -> Self {
        PlaceError::Io(e)
    }
}

/// The local documents folder.
pub struct DocumentsFolder {
    root: PathBuf,
    /// Folders inside it already seen to be folders, not links (each is
    /// looked at once, not once per document in it).
    known_dirs: Mutex<HashSet<PathBuf>>,
}

impl DocumentsFolder {
    pub fn new(root: PathBuf) -> DocumentsFolder {
        DocumentsFolder { root, known_dirs: Mutex::new(HashSet::new()) }
    }

    /// The full path of a document's file, or why its path is refused. A
    /// path is relative, with `/` or `\` between names; it may not go up
    /// (`..`), start at a root or drive, name the trash, or pass through a
    /// link inside the folder (the file itself is checked when opened).
    pub fn resolve(&self, rel: &str) -> Result<PathBuf, String> {
        if rel.is_empty() {
            return Err("its path is empty".into());
        }
        let drive = rel.len() >= 2 && rel.as_bytes()[1] == b':' && rel.as_bytes()[0].is_ascii_alphabetic();
        if rel.starts_with(['/', '\\']) || drive {
            return Err(format!(
                "its path {rel:?} is absolute; a document's path is relative to the documents folder"
            ));
        }
        let mut full = self.root.clone();
        let parts: Vec<&str> = rel.split(['/', '\\']).filter(|p| !p.is_empty() && *p != ".").collect();
        for (i, part) in parts.iter().enumerate() {
            if *part == ".." {
                return Err(format!("its path {rel:?} goes up out of the documents folder (..)"));
            }
            if i == 0 && *part == TRASH {
                return Err(format!("its path {rel:?} is in clinicsync's trash"));
            }
            if part.contains('\0') || platform::windows_name_problem(part).is_some() {
                return Err(format!("its path {rel:?} has a name no computer of the family can use"));
            }
            full.push(part);
            let known = || self.known_dirs.lock().unwrap_or_else(|e| e.into_inner()).contains(&full);
            if i + 1 < parts.len() && !known() {
                match fs::symlink_metadata(&full) {
                    Ok(meta) if meta.file_type().is_symlink() => {
                        return Err(format!(
                            "its path {rel:?} passes through the link {part}; clinicsync does not follow links in the documents folder"
                        ));
                    }
                    Ok(meta) if !meta.is_dir() => {
                        return Err(format!("its path {rel:?} passes through {part}, which is not a folder"));
                    }
                    Ok(_) => {
                        self.known_dirs.lock().unwrap_or_else(|e| e.into_inner()).insert(full.clone());
                    }
                    Err(_) => {}
                }
            }
        }
        if parts.is_empty() {
            return Err(format!("its path {rel:?} names no file"));
        }
        Ok(full)
    }

    /// The file's size and time; `None` when there is none. A link or
    /// anything but a regular file is refused with a sentence.
    pub fn stat(&self, full: &Path) -> io::Result<Option<LocalFile>> {
        match fs::symlink_metadata(full) {
            Ok(meta) => {
                if let Some(what) = platform::not_regular(meta.file_type()) {
                    return Err(io::Error::other(format!(
                        "it is {what}, not a regular file; clinicsync does not open it"
                    )));
                }
                Ok(Some(LocalFile { size: meta.len(), mtime_ns: platform::mtime_ns(&meta) }))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Opens a document's file for reading, without following a link.
    pub fn open(&self, full: &Path) -> io::Result<File> {
        let file = platform::read_no_follow().open(full)?;
        if let Some(what) = platform::not_regular(file.metadata()?.file_type()) {
            return Err(io::Error::other(format!(
                "it is {what}, not a regular file; clinicsync does not open it"
            )));
        }
        Ok(file)
    }

    /// Copies a body to a temp file beside `full` and checks the copy
    /// against `expected` (size, CRC32, sha256, computed from the copy
    /// itself). Nothing is made durable or in place yet (see
    /// [`DocumentsFolder::make_durable`] and [`DocumentsFolder::put_in_place`]).
    /// Shareable between threads.
    pub fn copy_in(&self, full: &Path, from: &mut File, expected: &Body) -> Result<Arriving, PlaceError> {
        let parent = full.parent().expect("a resolved path is inside the folder");
        fs::create_dir_all(parent)?;
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let temp = parent.join(format!(".~clinicsync-{}-{n}.tmp", std::process::id()));
        let result = (|| {
            let mut file = File::options().read(true).write(true).create_new(true).open(&temp)?;
            let found = copy_and_digest(from, &mut file)?;
            if let Some(said) = mismatch(expected, &found) {
                return Err(PlaceError::Mismatch(said));
            }
            Ok(())
        })();
        match result {
            Ok(()) => Ok(Arriving { temp, target: full.to_path_buf() }),
            Err(e) => {
                let _ = fs::remove_file(&temp);
                Err(e)
            }
        }
    }

    /// Makes copied bodies durable: an fsync each, or for many one syncfs
    /// of the documents folder's volume.
    pub fn make_durable(&self, arriving: &[&Arriving]) -> io::Result<()> {
        if arriving.len() > 16 && platform::SYNCS_A_VOLUME {
            return platform::sync_volume(&self.root);
        }
        for a in arriving {
            File::options().write(true).open(&a.temp)?.sync_data()?;
        }
        Ok(())
    }

    /// Renames a durable copy into place (replacing what is there: move
    /// anything worth keeping away first); returns the file and its folder,
    /// whose rename [`DocumentsFolder::sync_dirs`] makes durable.
    pub fn put_in_place(&self, arriving: Arriving) -> io::Result<(LocalFile, PathBuf)> {
        let parent = arriving.target.parent().expect("inside the folder").to_path_buf();
        let result = fs::rename(&arriving.temp, &arriving.target).and_then(|()| {
            self.stat(&arriving.target)?.ok_or_else(|| io::Error::other("the placed file vanished"))
        });
        if result.is_err() {
            let _ = fs::remove_file(&arriving.temp);
        }
        result.map(|local| (local, parent))
    }

    /// Makes renames in these folders durable: an fsync of each, or for
    /// many one syncfs of the volume.
    pub fn sync_dirs(&self, dirs: std::collections::BTreeSet<PathBuf>) -> io::Result<()> {
        if dirs.len() > 8 && platform::SYNCS_A_VOLUME {
            return platform::sync_volume(&self.root);
        }
        dirs.iter().try_for_each(|d| platform::sync_dir(d))
    }

    /// Drops a copy that will not be placed.
    pub fn discard(&self, arriving: Arriving) {
        let _ = fs::remove_file(&arriving.temp);
    }

    /// Moves a file into the trash, under `.clinicsync-trash/<when>/` with
    /// its path; returns where it went, relative to the folder.
    pub fn to_trash(&self, rel: &str, full: &Path, when: &str) -> io::Result<String> {
        let clean: Vec<&str> = rel.split(['/', '\\']).filter(|p| !p.is_empty() && *p != ".").collect();
        let mut trashed = format!("{TRASH}/{when}/{}", clean.join("/"));
        let mut n = 1;
        while fs::symlink_metadata(self.root.join(&trashed)).is_ok() {
            n += 1;
            trashed = format!("{TRASH}/{when}/{} ({n})", clean.join("/"));
        }
        let target = self.root.join(&trashed);
        fs::create_dir_all(target.parent().expect("a trash path has a folder"))?;
        fs::rename(full, &target)?;
        Ok(trashed)
    }

    /// Removes a file from the trash for good (its retention passed).
    pub fn remove_from_trash(&self, trashed: &str) -> io::Result<()> {
        if !trashed.starts_with(&format!("{TRASH}/")) || trashed.split('/').any(|p| p == "..") {
            return Err(io::Error::other(format!("{trashed:?} is not in the trash")));
        }
        match fs::remove_file(self.root.join(trashed)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_could_leave_the_folder_are_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let docs = DocumentsFolder::new(dir.path().to_path_buf());
        assert_eq!(docs.resolve("letters/a.pdf").unwrap(), dir.path().join("letters").join("a.pdf"));
        assert_eq!(docs.resolve("letters\\a.pdf").unwrap(), dir.path().join("letters").join("a.pdf"));
        for (bad, says) in [
            ("", "empty"),
            ("../x.pdf", "goes up"),
            ("a/../../x.pdf", "goes up"),
            ("/etc/passwd", "absolute"),
            ("\\\\server\\share\\x", "absolute"),
            ("C:\\x.pdf", "absolute"),
            (".clinicsync-trash/x.pdf", "trash"),
            ("a/CON", "no computer"),
        ] {
            let said = docs.resolve(bad).unwrap_err();
            assert!(said.contains(says), "{bad}: {said}");
        }
    }
}
