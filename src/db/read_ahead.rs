//! Reading ahead on other threads: rows a run is about to read are read
//! first on read-only connections of their own, and nothing is kept; what
//! it buys is their pages in the system's cache when the run's connection
//! reads them. SQLite reads one page at a time, and a disk serves several
//! reads at once, so a family not read for a while (its pages on the disk)
//! waits less. Changes nothing a reader sees. A large batch is always read
//! ahead; a small one only once a [`DiskProbe`] saw its first rows come
//! from the disk (for a family in memory the threads cost more than they
//! save).

use std::path::Path;
use std::thread::JoinHandle;

use rusqlite::{Connection, OpenFlags};

use crate::platform;

/// Threads a read-ahead uses: four read a cold family's rows faster than
/// one or eight where measured.
const THREADS: usize = 4;

/// Each read-ahead connection's own page cache, in KiB (SQLite's negative
/// `cache_size`): what it reads is thrown away, only the system's cache
/// keeps it. With SQLite's default 2 MiB, a page buffer allocated for
/// every page read cost the threads about as much processor time as the
/// reading (a 100-patient send: 67 against 58 ms of processor time with
/// 256 KiB, where measured).
const CACHE_KIB: i64 = 256;

/// Whether the calling thread read from the disk since the probe began
/// (not from the system's cache): at least eight pages. Always false
/// where the system does not say (see [`platform::thread_disk_reads`]).
pub struct DiskProbe(Option<u64>);

/// Read from the disk while a probe ran, at least, for a family to count as
/// not in memory: eight pages (one missed page can bring a few more with
/// it, a row read cold costs several).
const COLD_BYTES: u64 = 8 * 4096;

/// Items left after a probe, at least, for a read-ahead to start: a few
/// for each thread.
pub const AHEAD_FEWEST: usize = 4 * THREADS;

impl DiskProbe {
    /// Starts counting this thread's reads from the disk.
    pub fn start() -> DiskProbe {
        DiskProbe(platform::thread_disk_reads())
    }

    /// Whether this thread read at least eight pages from the disk since
    /// [`DiskProbe::start`].
    pub fn went_to_disk(&self) -> bool {
        read_from_disk(self.0, platform::thread_disk_reads())
    }
}

/// Whether the counts of bytes read from storage, before and now, tell of
/// at least [`COLD_BYTES`] read; an unknown count tells of nothing.
fn read_from_disk(before: Option<u64>, now: Option<u64>) -> bool {
    match (before, now) {
        (Some(before), Some(now)) => now.saturating_sub(before) >= COLD_BYTES,
        _ => false,
    }
}

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
            Connection::open_with_flags(&path, flags)
                .and_then(|conn| {
                    conn.pragma_update(None, "cache_size", -CACHE_KIB)?;
                    read(&conn, part)
                })
                .unwrap_or(0)
        });
        // Without a thread the rows are simply read when they are needed.
        threads.extend(spawned.ok());
    }
    ReadAhead(threads)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_counts_a_family_as_on_the_disk_from_eight_pages_read_and_never_where_the_system_does_not_say()
    {
        let probe = DiskProbe::start();
        assert!(!probe.went_to_disk(), "nothing read since it began");
        assert!(read_from_disk(Some(1000), Some(1000 + COLD_BYTES)), "eight pages");
        assert!(!read_from_disk(Some(1000), Some(1000 + COLD_BYTES - 1)), "not quite eight");
        assert!(!read_from_disk(Some(1000), Some(10)), "a count that went back tells nothing");
        assert!(!read_from_disk(None, Some(COLD_BYTES)), "unknown before: in memory");
        assert!(!read_from_disk(Some(0), None), "unknown now: in memory");
        assert!(!DiskProbe(None).went_to_disk());
    }
}
