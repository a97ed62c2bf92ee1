//! Reading ahead on other threads: rows a run is about to read are read
//! first on read-only connections of their own, and nothing is kept; what
//! it buys is their pages in the system's cache when the run's connection
//! reads them. SQLite reads one page at a time, and a disk serves several
//! reads at once, so a family not read for a while (its pages on the disk)
//! waits less. Changes nothing a reader sees.

use std::path::Path;
use std::thread::JoinHandle;

use rusqlite::{Connection, OpenFlags};

/// Threads a read-ahead uses: four read a cold family's rows faster than
/// one or eight where measured.
const THREADS: usize = 4;

/// Rows being read ahead; waited for when dropped.
pub struct ReadAhead(Vec<JoinHandle<u64>>);

impl ReadAhead {
    /// Waits for it; the rows it read (0 from a thread that could not read).
    pub fn finish(mut self) -> u64 {
        self.0.drain(..).map(|thread| thread.join().unwrap_or(0)).sum()
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        for thread in self.0.drain(..) {
            // It only reads; a failure there has nothing to report.
            let _ = thread.join();
        }
    }
}

/// Runs `read` on [`THREADS`] threads, each with its own read-only
/// connection to the database at `path` and every fourth of `items` (so
/// that together they keep ahead of a reader going through them in order).
/// `read` returns how many rows it read.
pub(super) fn spawn<T: Send + 'static>(
    path: &Path,
    items: Vec<T>,
    read: fn(&Connection, Vec<T>) -> rusqlite::Result<u64>,
) -> ReadAhead {
    let mut parts: Vec<Vec<T>> =
        (0..THREADS).map(|_| Vec::with_capacity(items.len() / THREADS + 1)).collect();
    for (i, item) in items.into_iter().enumerate() {
        parts[i % THREADS].push(item);
    }
    let mut threads = Vec::with_capacity(THREADS);
    for part in parts.into_iter().filter(|part| !part.is_empty()) {
        let path = path.to_path_buf();
        let spawned = std::thread::Builder::new().name("read-ahead".into()).spawn(move || {
            let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
            Connection::open_with_flags(&path, flags).and_then(|conn| read(&conn, part)).unwrap_or(0)
        });
        // Without a thread the rows are simply read when they are needed.
        threads.extend(spawned.ok());
    }
    ReadAhead(threads)
}
