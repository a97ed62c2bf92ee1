//! Live progress of a run: which step it is at and how far through it, for
//! the command line's progress bar and the web page's Sync Now.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// A handle a run reports its progress to; clones share the same state, so
/// a watcher (a progress bar, the web page) reads what the run writes.
#[derive(Clone, Debug, Default)]
pub struct Progress(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    running: AtomicBool,
    /// The step and its size, changed together (and `done` reset) under
    /// the lock, so a reader never sees one step's name with another's size.
    step: Mutex<(&'static str, u64)>,
    done: AtomicU64,
}

/// What a run is doing right now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProgressView {
    pub running: bool,
    /// The step, in words (empty between runs).
    pub step: &'static str,
    pub done: u64,
    /// Zero when the step does not know its size.
    pub total: u64,
}

impl Progress {
    pub fn new() -> Progress {
        Progress::default()
    }

    /// Marks a run as started or finished.
    pub(crate) fn set_running(&self, running: bool) {
        self.0.running.store(running, Ordering::Release);
        if !running {
            self.step("", 0);
        }
    }

    /// Enters a step of `total` items (0 when unknown).
    pub(crate) fn step(&self, step: &'static str, total: u64) {
        let mut current = self.0.step.lock().unwrap_or_else(|e| e.into_inner());
        *current = (step, total);
        self.0.done.store(0, Ordering::Release);
    }

    /// Counts `n` more items of the current step done.
    pub(crate) fn advance(&self, n: u64) {
        self.0.done.fetch_add(n, Ordering::AcqRel);
    }

    pub fn view(&self) -> ProgressView {
        let current = self.0.step.lock().unwrap_or_else(|e| e.into_inner());
        let (step, total) = *current;
        let done = self.0.done.load(Ordering::Acquire);
        drop(current);
        ProgressView {
            running: self.0.running.load(Ordering::Acquire),
            step,
            // Requeued work can count an item twice.
            done: if total > 0 { done.min(total) } else { done },
            total,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_the_state_and_done_never_passes_total() {
        let p = Progress::new();
        let watcher = p.clone();
        p.set_running(true);
        p.step("reading patient files", 10);
        p.advance(4);
        assert_eq!(
            watcher.view(),
            ProgressView { running: true, step: "reading patient files", done: 4, total: 10 }
        );
        p.advance(9);
        assert_eq!(watcher.view().done, 10);
        p.set_running(false);
        assert_eq!(watcher.view(), ProgressView { running: false, step: "", done: 0, total: 0 });
    }
}
