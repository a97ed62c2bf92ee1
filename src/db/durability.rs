//! Commits made durable on demand: a sync run's commits are not each synced
//! on their own; the write-ahead log is synced once before anything that
//! depends on them leaves this computer, and once at the end.

use std::fs::OpenOptions;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::ThreadId;

use super::{Db, DbError};

/// Syncs a database's write-ahead log when a commit was made since the last
/// sync (see [`Db::defer_durability`]).
#[derive(Clone, Debug)]
pub struct WalSync {
    /// Set by SQLite's commit hook, which runs as a commit begins.
    dirty: Arc<AtomicBool>,
    /// The thread of the connection: only there is no commit of it under
    /// way while this runs.
    owner: ThreadId,
    wal: PathBuf,
    db: PathBuf,
    /// Whether commits are deferred at all: only with write-ahead logging
    /// (see [`Db::defer_durability`]); otherwise each is synced on its own.
    deferred: bool,
}

impl WalSync {
    /// Makes every commit so far durable: one sync of the write-ahead log.
    /// On the connection's thread, only when a commit was made since the
    /// last; on another thread (a folder's sibling writing while the
    /// connection commits the next step), always, and without taking the
    /// mark: a commit under way there may finish after this sync, and
    /// stays marked for the next one. On error the next call tries again.
    pub fn sync(&self) -> io::Result<()> {
        if !self.deferred
            || std::thread::current().id() == self.owner && !self.dirty.swap(false, Ordering::SeqCst)
        {
            return Ok(());
        }
        // Any handle syncs the file's data, whoever wrote it (Windows needs
        // one opened for writing). A log that is gone was checkpointed into
        // the database file by the last connection to close; none is open
        // then (any reader opens the log), so closing this handle on the
        // database file releases no lock of SQLite's.
        let result = match OpenOptions::new().read(true).write(true).open(&self.wal) {
            Ok(log) => log.sync_data(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                OpenOptions::new().read(true).write(true).open(&self.db).and_then(|db| db.sync_data())
            }
            Err(e) => Err(e),
        };
        result.map_err(|e| {
            if std::thread::current().id() == self.owner {
                self.dirty.store(true, Ordering::SeqCst);
            }
            io::Error::new(
                e.kind(),
                format!(
                    "the database's last changes could not be made durable ({}: {e})",
                    self.wal.display()
                ),
            )
        })
    }
}

/// A checkpoint of the write-ahead log running on its own thread and
/// connection (see [`Db::checkpoint_meanwhile`]); waited for when dropped.
pub struct Checkpointing(Option<std::thread::JoinHandle<()>>);

impl Checkpointing {
    /// Whether it has finished (or never started).
    pub fn finished(&self) -> bool {
        self.0.as_ref().is_none_or(std::thread::JoinHandle::is_finished)
    }
}

impl Drop for Checkpointing {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            // It only copies pages; a panic there has nothing to report.
            let _ = handle.join();
        }
    }
}

impl Db {
    /// Copies what the write-ahead log holds into the database file on
    /// another thread and connection while this one goes on: a passive
    /// checkpoint, which waits for nothing and stops where a reader still
    /// needs the log. What it copied, the checkpoint SQLite runs as the
    /// last connection closes does not copy again, so a run's end waits
    /// less (the .db file alone still holds every commit after a run). It
    /// syncs the log before copying and the database file after, as every
    /// checkpoint does. It changes nothing a reader sees; if it cannot run,
    /// the closing checkpoint copies everything, as before. (When the run
    /// commits again meanwhile SQLite leaves the file unsynced, and the
    /// close syncs what was copied. The thread must not sync the file
    /// through a handle of its own: closing any handle on it releases
    /// every lock SQLite holds there, POSIX locks being the process's.)
    pub fn checkpoint_meanwhile(&self) -> Checkpointing {
        let path = self.path.clone();
        let spawned = std::thread::Builder::new().name("checkpoint".into()).spawn(move || {
            if let Ok(conn) = super::connect(&path, false) {
                let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
            }
        });
        Checkpointing(spawned.ok())
    }

    /// From now on a commit on this connection is not synced on its own
    /// (`synchronous=NORMAL`): the returned [`WalSync`] makes the commits
    /// durable, and the caller runs it before anything that depends on them
    /// leaves this computer (a file written to or removed from the folder)
    /// and before it says a run is done. Write-ahead logging keeps the
    /// database whole either way: what a power cut before the sync loses is
    /// commits nothing outside this database depends on yet, which the next
    /// run makes again.
    ///
    /// Only with write-ahead logging, which `connect` asks for and a file
    /// system may refuse: otherwise commits stay synced on their own and
    /// the returned [`WalSync`] has nothing to do (it would otherwise open
    /// and close a handle on the database file during the run, and closing
    /// any handle on a file releases every POSIX lock the process holds on
    /// it, SQLite's included).
    pub fn defer_durability(&mut self) -> Result<WalSync, DbError> {
        let mode: String = self.conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
        let deferred = mode.eq_ignore_ascii_case("wal");
        if deferred {
            self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        }
        let dirty = Arc::new(AtomicBool::new(false));
        let flag = dirty.clone();
        self.conn.commit_hook(Some(move || {
            flag.store(true, Ordering::SeqCst);
            false
        }));
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        Ok(WalSync {
            dirty,
            owner: std::thread::current().id(),
            wal: wal.into(),
            db: self.path.clone(),
            deferred,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_leaves_the_log_to_sync_and_a_sync_settles_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::init_for_test(dir.path(), None);
        let durable = db.defer_durability().unwrap();
        let level: i64 = db.conn().query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap();
        assert_eq!(level, 1, "NORMAL: a commit does not sync on its own");
        assert!(!durable.dirty.load(Ordering::SeqCst), "nothing committed yet");
        db.set_meta("probe", "1").unwrap();
        assert!(durable.dirty.load(Ordering::SeqCst), "a commit is waiting to be made durable");
        durable.sync().unwrap();
        assert!(!durable.dirty.load(Ordering::SeqCst));
        // A read commits nothing to make durable.
        db.meta("probe").unwrap();
        durable.sync().unwrap();
        // A log that cannot be synced says which, and is tried again.
        db.set_meta("probe", "2").unwrap();
        let gone = dir.path().join("no-such-dir");
        let broken = WalSync { wal: gone.join("x-wal"), db: gone.join("x"), ..durable.clone() };
        let e = broken.sync().unwrap_err();
        assert!(e.to_string().contains("could not be made durable"), "{e}");
        assert!(durable.dirty.load(Ordering::SeqCst), "still to do");
        durable.sync().unwrap();
        // Another thread syncs whatever it finds, and leaves the mark to
        // the connection's thread (a commit may be under way there).
        db.set_meta("probe", "3").unwrap();
        let other = durable.clone();
        std::thread::spawn(move || other.sync().unwrap()).join().unwrap();
        assert!(durable.dirty.load(Ordering::SeqCst), "the mark is the connection thread's to take");
        durable.sync().unwrap();
        assert!(!durable.dirty.load(Ordering::SeqCst));
    }

    #[test]
    fn without_write_ahead_logging_every_commit_stays_synced_and_nothing_is_deferred() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::init_for_test(dir.path(), None);
        // As a file system that cannot share the log's index would leave it.
        let mode: String = db.conn().query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "delete");
        let durable = db.defer_durability().unwrap();
        let level: i64 = db.conn().query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap();
        assert_eq!(level, 2, "FULL: each commit synced on its own");
        db.set_meta("probe", "1").unwrap();
        // Nothing to make durable, so no file is opened: not even one that
        // is not there.
        let gone = dir.path().join("no-such-dir");
        let elsewhere = WalSync { wal: gone.join("x-wal"), db: gone.join("x"), ..durable.clone() };
        elsewhere.sync().unwrap();
        std::thread::spawn(move || elsewhere.sync().unwrap()).join().unwrap();
        assert!(!dir.path().join("clinic.db-wal").exists());
    }

    #[test]
    fn a_checkpoint_meanwhile_puts_the_commits_in_the_database_file_while_the_connection_is_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::init_for_test(dir.path(), None);
        let _durable = db.defer_durability().unwrap();
        // What the database file alone holds, as a copy of it without its log.
        let in_file = |name: &str| -> Option<String> {
            let copy = dir.path().join(format!("{name}.db"));
            std::fs::copy(dir.path().join("clinic.db"), &copy).unwrap();
            let conn = rusqlite::Connection::open(&copy).unwrap();
            conn.query_row("SELECT value FROM _cs_meta WHERE key = 'probe'", [], |r| r.get(0)).ok()
        };
        db.set_meta("probe", "1").unwrap();
        assert_eq!(in_file("before"), None, "the commit is in the log only");
        let checkpoint = db.checkpoint_meanwhile();
        drop(checkpoint);
        assert_eq!(in_file("after").as_deref(), Some("1"));
        assert_eq!(db.meta("probe").unwrap().as_deref(), Some("1"), "the connection goes on");
    }
}
