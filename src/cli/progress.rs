//! The command line's progress bar (indicatif) for long runs: an initial
//! export, a full scan. Drawn on stderr only when it is a terminal, and
//! only once a run has taken long enough to be worth one.

use std::io::IsTerminal as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::engine::Progress;

/// A run shorter than this shows no bar at all
/// (`CLINICSYNC_PROGRESS_AFTER_MS` changes it, for tests).
const SHOW_AFTER: Duration = Duration::from_millis(700);

fn show_after() -> Duration {
    std::env::var("CLINICSYNC_PROGRESS_AFTER_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(SHOW_AFTER, Duration::from_millis)
}
const TICK: Duration = Duration::from_millis(100);

/// Runs `work`, drawing `progress` as a bar while it runs (terminals only).
pub(super) fn with_bar<T>(progress: &Progress, work: impl FnOnce() -> T) -> T {
    if !std::io::stderr().is_terminal() {
        return work();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        let progress = progress.clone();
        std::thread::spawn(move || draw(&progress, &stop))
    };
    let result = work();
    stop.store(true, Ordering::Release);
    let _ = watcher.join();
    result
}

fn draw(progress: &Progress, stop: &AtomicBool) {
    let started = crate::engine::monotonic_now();
    let show_after = show_after();
    let mut bar: Option<ProgressBar> = None;
    let counted = ProgressStyle::with_template("{spinner} {msg:<34} [{bar:30}] {pos}/{len} ({eta} left)")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let open = ProgressStyle::with_template("{spinner} {msg} {pos}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    let mut last_step = "";
    while !stop.load(Ordering::Acquire) {
        std::thread::sleep(TICK);
        if started.elapsed() < show_after {
            continue;
        }
        let view = progress.view();
        let b = bar.get_or_insert_with(|| ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()));
        if view.step != last_step {
            last_step = view.step;
            // Name, size and position first: a redraw in between must not
            // show the old step at zero.
            b.set_style(if view.total > 0 { counted.clone() } else { open.clone() });
            b.set_message(view.step);
            b.set_length(view.total);
            b.set_position(view.done);
            b.reset_elapsed();
            b.reset_eta();
        }
        if view.total > 0 {
            b.set_length(view.total);
        }
        b.set_position(view.done);
        b.tick();
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
}
