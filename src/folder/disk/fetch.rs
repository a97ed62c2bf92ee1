//! Statting and reading many files of the folder at once, on several
//! threads: a disk serves several reads at the same time, so files that are
//! not in the system's cache wait less when read together than one by one.

use super::{DiskFolder, Entry};

/// What statting and reading one file of the folder found.
pub enum Fetched {
    Read(Entry, Vec<u8>),
    Absent,
    /// Not read: not a regular file, beyond the limit, held open by another
    /// program, online-only, or an error. The caller reads it again where
    /// it says why.
    Unread,
}

impl DiskFolder {
    /// Stats and reads each of `paths` (at most `limit` bytes each), in
    /// order, on up to `threads` threads (each with a sibling of this folder,
    /// absorbed after); a part whose thread cannot start is read on this one.
    /// Never follows a link or opens what is not a regular file, as
    /// [`DiskFolder::read`].
    pub fn fetch_all(&self, paths: &[&str], limit: u64, threads: usize) -> Vec<Fetched> {
        if threads <= 1 || paths.len() < 2 {
            return paths.iter().map(|path| self.fetch(path, limit)).collect();
        }
        let mut out = Vec::with_capacity(paths.len());
        std::thread::scope(|scope| {
            let started: Vec<_> = paths
                .chunks(paths.len().div_ceil(threads))
                .map(|part| {
                    let folder = self.sibling();
                    let read = move || {
                        let fetched: Vec<Fetched> =
                            part.iter().map(|path| folder.fetch(path, limit)).collect();
                        (fetched, folder)
                    };
                    std::thread::Builder::new()
                        .name("read-files".into())
                        .spawn_scoped(scope, read)
                        .map_err(|_| part)
                })
                .collect();
            for thread in started {
                match thread {
                    Ok(thread) => {
                        let (fetched, folder) =
                            thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                        self.absorb(folder);
                        out.extend(fetched);
                    }
                    Err(part) => out.extend(part.iter().map(|path| self.fetch(path, limit))),
                }
            }
        });
        out
    }

    /// Stats and reads one file.
    fn fetch(&self, path: &str, limit: u64) -> Fetched {
        match self.metadata(path) {
            Ok(Some(entry)) => match self.read(path, limit) {
                Ok(bytes) => Fetched::Read(entry, bytes),
                Err(_) => Fetched::Unread,
            },
            Ok(None) => Fetched::Absent,
            Err(_) => Fetched::Unread,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_files_read_on_several_threads_come_back_in_order_and_counted_and_a_fifo_is_not_opened() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("folder");
        std::fs::create_dir_all(root.join("patients/ab")).unwrap();
        let mut paths = Vec::new();
        for i in 0..40 {
            let path = format!("patients/ab/{i:02}.xml");
            std::fs::write(root.join(&path), format!("file {i}")).unwrap();
            paths.push(path);
        }
        paths.insert(7, "patients/ab/gone.xml".to_owned());
        paths.insert(20, "patients/ab/large.xml".to_owned());
        std::fs::write(root.join("patients/ab/large.xml"), vec![b'x'; 100]).unwrap();
        // A named pipe where the system makes one (opening it to read would
        // wait for a writer).
        let fifo = std::process::Command::new("mkfifo").arg(root.join("patients/ab/fifo.xml")).status();
        if fifo.is_ok_and(|status| status.success()) {
            paths.insert(30, "patients/ab/fifo.xml".to_owned());
        }
        let asked: Vec<&str> = paths.iter().map(String::as_str).collect();
        for threads in [1, 8] {
            let folder = DiskFolder::new(root.clone(), None);
            let fetched = folder.fetch_all(&asked, 50, threads);
            assert_eq!(fetched.len(), asked.len());
            for (path, got) in asked.iter().zip(&fetched) {
                match (path.rsplit('/').next().unwrap(), got) {
                    ("gone.xml", Fetched::Absent) | ("large.xml" | "fifo.xml", Fetched::Unread) => {}
                    (name, Fetched::Read(entry, bytes)) => {
                        let i: usize = name.trim_end_matches(".xml").parse().unwrap();
                        assert_eq!(bytes, format!("file {i}").as_bytes(), "{threads} threads");
                        assert_eq!(entry.name, name);
                    }
                    (name, _) => panic!("{name}: not what it is ({threads} threads)"),
                }
            }
            // Every file asked that exists is counted as read, whichever
            // thread read it.
            assert_eq!(folder.stats().reads, asked.len() as u64 - 1, "{threads} threads");
        }
    }
}
