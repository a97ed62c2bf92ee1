//! The single-instance lock: one sync of a database at a time, across
//! processes.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::engine::EngineError;

/// The single-instance lock for a database, held for the whole run.
pub(crate) struct InstanceLock {
    _file: File,
}

pub(crate) fn lock_path(db_path: &Path) -> PathBuf {
    let mut name = db_path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push("-clinicsync.lock");
    db_path.with_file_name(name)
}

/// Whether a sync of this database runs now (its lock is held; tried once
/// and let go, so a display never waits for it).
pub fn sync_running(db_path: &Path) -> bool {
    let Ok(file) = File::options().write(true).open(lock_path(db_path)) else { return false };
    matches!(file.try_lock(), Err(std::fs::TryLockError::WouldBlock))
}

pub(crate) fn take_lock(db_path: &Path) -> Result<InstanceLock, EngineError> {
    take_lock_or_wait(db_path, None)
}

/// How long taking the lock retries before it counts as held by another
/// sync. A child process this process starts (an alert command; in tests,
/// a CLI run) holds a copy of every open descriptor from its fork until
/// its exec closes them, the lock file's too, and with it the lock: for
/// that moment a lock this process already let go still reads as held.
const LOCK_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Takes the lock; with `on_wait`, waits for it (calling `on_wait` first)
/// instead of failing when another sync holds it.
pub(crate) fn take_lock_or_wait(db_path: &Path, on_wait: Option<fn()>) -> Result<InstanceLock, EngineError> {
    let path = lock_path(db_path);
    let file = File::options().create(true).truncate(false).write(true).open(&path).map_err(|source| {
        EngineError::Io { what: format!("cannot create the lock file {}", path.display()), cause: source }
    })?;
    let lock_error = |cause| EngineError::Io { what: format!("cannot lock {}", path.display()), cause };
    let started = crate::engine::host::monotonic_now();
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(InstanceLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) if started.elapsed() < LOCK_GRACE => {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let Some(on_wait) = on_wait else {
                    return Err(EngineError::Busy { db: db_path.display().to_string() });
                };
                on_wait();
                file.lock().map_err(lock_error)?;
                return Ok(InstanceLock { _file: file });
            }
            Err(std::fs::TryLockError::Error(source)) => return Err(lock_error(source)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Children started while runs come and go (an alert command, the
    /// tests' CLI runs) never make a run see its own released lock as
    /// another sync's. Without the grace this test fails with `Busy` within
    /// a fraction of a second.
    #[test]
    fn a_child_process_starting_does_not_make_the_lock_look_taken() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("clinic.db");
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            let spawner = scope.spawn(|| {
                let mut spawned = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    crate::platform::testing::succeeds().status().unwrap();
                    spawned += 1;
                }
                spawned
            });
            let mut failed = None;
            for _ in 0..300 {
                match take_lock(&db) {
                    Ok(lock) => {
                        std::thread::sleep(std::time::Duration::from_micros(300));
                        drop(lock);
                    }
                    Err(e) => {
                        failed = Some(e.to_string());
                        break;
                    }
                }
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            assert!(spawner.join().unwrap() > 0);
            assert_eq!(failed, None);
        });
        // A lock another holder keeps is still refused, after the grace.
        let held = take_lock(&db).unwrap();
        let started = crate::engine::host::monotonic_now();
        assert!(matches!(take_lock(&db), Err(EngineError::Busy { .. })));
        assert!(started.elapsed() >= LOCK_GRACE);
        drop(held);
        take_lock(&db).unwrap();
    }
}
