//! Freeing the files a batch replaces off the writing thread. Replacing a
//! file by a rename frees the old one's blocks inside the rename: on a
//! volume mounted with online discard (as virtual disks often are) that is
//! a discard the rename waits for, 0.05-0.15 ms a patient file where it was
//! measured, most of the rename. Where the system allows it
//! ([`platform::HOLDS_REPLACED`]) the old file is opened before the rename,
//! so the rename only drops its name, and the handles are closed on another
//! thread once the batch's renames are done, which frees the blocks while
//! the run goes on. (Closed during the renames, the freeing competes with
//! them for the processor: with the closing thread woken on the renaming
//! thread's core, 100 renames took 16 ms instead of 1.6 where measured.)

use std::fs::File;
use std::path::Path;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::JoinHandle;

use crate::platform;

/// Replaced files held open and not yet closed, at most: a quarter of the
/// files this process may open ([`platform::open_files_limit`]), between
/// these two. The default limit can be as low as 256 (macOS: 64 held) or
/// 1,024 (Linux: 256 held). 256 lets a batch of a few hundred replacements
/// rename without waiting for the one before to be freed; holding 1,024 or
/// 4,096 bought nothing more where measured.
const HELD_FEWEST: usize = 16;
const HELD_MOST: usize = 256;

/// How many replaced files may wait to be closed.
fn held_at_most() -> usize {
    platform::open_files_limit().map_or(HELD_MOST, |limit| {
        usize::try_from(limit / 4).unwrap_or(HELD_MOST).clamp(HELD_FEWEST, HELD_MOST)
    })
}

/// Closes the files handed to it on a thread of its own; dropping it
/// closes the rest and waits until every one is closed. At most
/// [`held_at_most`] are open at once: half waiting here, half handed over
/// and not yet closed.
#[derive(Default)]
pub(super) struct Releaser {
    /// Replaced since the last hand-over.
    waiting: Vec<File>,
    /// Half of [`held_at_most`] (at least one), once asked.
    batch_most: usize,
    thread: Option<(SyncSender<File>, JoinHandle<()>)>,
}

impl Releaser {
    /// The file about to be replaced at `target`, held open (or `None`: it
    /// does not exist, is not a plain file, cannot be opened, or this
    /// system does not allow replacing an open file). Opened without
    /// following a link or waiting on a FIFO, and let go at once if it is
    /// anything but a plain file (a device is not held open).
    pub(super) fn hold(target: &Path) -> Option<File> {
        if !platform::HOLDS_REPLACED {
            return None;
        }
        let file = platform::read_no_follow().open(target).ok()?;
        file.metadata().is_ok_and(|m| m.is_file()).then_some(file)
    }

    /// Keeps `file` (replaced) to be closed at the next
    /// [`Releaser::hand_over`], or now on the closing thread when half of
    /// [`held_at_most`] are waiting.
    pub(super) fn release(&mut self, file: File) {
        if self.batch_most == 0 {
            self.batch_most = (held_at_most() / 2).max(1);
        }
        self.waiting.push(file);
        if self.waiting.len() >= self.batch_most {
            self.hand_over();
        }
    }

    /// Closes the files waiting on the closing thread (started on first
    /// use; when it cannot be started, here): called once a batch's
    /// renames are done. Waits while half of [`held_at_most`] handed over
    /// are not yet closed.
    pub(super) fn hand_over(&mut self) {
        if self.waiting.is_empty() {
            return;
        }
        if self.thread.is_none() {
            // Half minus the one the thread closes.
            let (sender, receiver) = sync_channel::<File>(self.batch_most - 1);
            let spawned = std::thread::Builder::new()
                .name("release-replaced".into())
                .spawn(move || receiver.into_iter().for_each(drop));
            match spawned {
                Ok(handle) => self.thread = Some((sender, handle)),
                Err(_) => return self.waiting.clear(),
            }
        }
        for file in self.waiting.drain(..) {
            if let Some((sender, _)) = &self.thread
                && let Err(returned) = sender.send(file)
            {
                // The thread is gone (it cannot panic on a close): here, then.
                drop(returned.0);
            }
        }
    }

    /// Closes every file handed over or waiting, and waits until they are.
    pub(super) fn finish(&mut self) {
        self.hand_over();
        if let Some((sender, handle)) = self.thread.take() {
            drop(sender);
            let _ = handle.join();
        }
    }
}

impl Drop for Releaser {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_held_through_its_replacement_is_the_old_one_while_the_name_shows_the_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("p.xml");
        std::fs::write(&target, b"old").unwrap();
        let temp = dir.path().join("p.tmp");
        std::fs::write(&temp, b"new").unwrap();
        let held = Releaser::hold(&target);
        assert_eq!(held.is_some(), platform::HOLDS_REPLACED);
        std::fs::rename(&temp, &target).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        let mut releaser = Releaser::default();
        if let Some(mut old) = held {
            use std::io::Read as _;
            let mut bytes = Vec::new();
            old.read_to_end(&mut bytes).unwrap();
            assert_eq!(bytes, b"old", "the handle is the replaced file");
            releaser.release(old);
            assert_eq!(releaser.waiting.len(), 1, "kept until the batch's renames are done");
            assert!(releaser.thread.is_none());
            releaser.hand_over();
            assert!(releaser.waiting.is_empty() && releaser.thread.is_some(), "handed to the closing thread");
        }
        releaser.finish();
        assert!(releaser.thread.is_none());
        assert!(Releaser::hold(&dir.path().join("absent.xml")).is_none());
        assert!(Releaser::hold(dir.path()).is_none(), "a folder is not held");
    }

    #[test]
    fn at_most_a_quarter_of_the_files_the_process_may_open_wait_to_be_closed() {
        let most = held_at_most();
        assert!((HELD_FEWEST..=HELD_MOST).contains(&most), "{most}");
        if let Some(limit) = platform::open_files_limit()
            && limit >= 4 * HELD_FEWEST as u64
        {
            assert!(most as u64 <= limit / 4, "{most} held with a limit of {limit}");
        }
        // A releaser handed far more files than it holds closes every one.
        let dir = tempfile::tempdir().unwrap();
        let mut releaser = Releaser::default();
        for i in 0..3 * most {
            let path = dir.path().join(format!("{i}.xml"));
            std::fs::write(&path, b"x").unwrap();
            releaser.release(File::open(&path).unwrap());
            assert!(releaser.waiting.len() < most / 2, "{} kept waiting", releaser.waiting.len());
        }
        releaser.finish();
        assert!(releaser.thread.is_none());
    }
}
