//! Every file under a folder of the sync folder, for the commands that
//! look at all of it (`verify`, `family delete`, `baseline upload`).

use std::io;

use super::DiskFolder;
use crate::folder::Entry;

/// What [`DiskFolder::walk`] found.
pub struct Walked {
    /// Every file, by its path in the folder, with its entry; sorted.
    pub files: Vec<(String, Entry)>,
    /// Every folder, the walked one first, each before the folders in it.
    pub dirs: Vec<String>,
}

impl DiskFolder {
    /// Every file and folder under `dir` (a path inside the folder; a
    /// missing one is empty). No link is followed, as in
    /// [`DiskFolder::list`].
    pub fn walk(&self, dir: &str) -> io::Result<Walked> {
        let mut walked = Walked { files: Vec::new(), dirs: Vec::new() };
        let mut todo = vec![dir.to_owned()];
        while let Some(at) = todo.pop() {
            for entry in self.list(&at)? {
                let path = format!("{at}/{}", entry.name);
                if entry.is_dir {
                    todo.push(path);
                } else {
                    walked.files.push((path, entry));
                }
            }
            walked.dirs.push(at);
        }
        walked.files.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(walked)
    }
}
