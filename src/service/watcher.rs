//! The file watcher: tells the scheduler which folder paths changed. Only a
//! hint (events can be lost, coalesced or late); the interval is the truth.

use std::path::{Path, PathBuf};

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc::UnboundedSender;

use super::scheduler::Hint;

/// Watches `root` recursively; each event becomes a [`Hint`] with the
/// paths relative to `root`, after `prefix`. Dropping the returned watcher
/// stops it.
pub(super) fn watch(
    root: &Path,
    prefix: &'static str,
    hints: UnboundedSender<Hint>,
) -> notify::Result<RecommendedWatcher> {
    let base: PathBuf = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    let plain = root.to_path_buf();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let hint = match event {
            Ok(event) => {
                if !matters(&event.kind) {
                    return;
                }
                let paths = event
                    .paths
                    .iter()
                    .filter_map(|p| relative(p, &base, &plain))
                    .map(|p| format!("{prefix}{p}"))
                    .collect();
                Hint { paths }
            }
            // The watcher lost track (queue overflow): everything may have changed.
            Err(_) => Hint::default(),
        };
        let _ = hints.send(hint);
    })?;
    watcher.watch(root, RecursiveMode::Recursive)?;
    Ok(watcher)
}

/// Reads and opens are not changes; everything else may be.
fn matters(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

fn relative(path: &Path, base: &Path, plain: &Path) -> Option<String> {
    let rel = path.strip_prefix(base).or_else(|_| path.strip_prefix(plain)).ok()?;
    let parts: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    (!parts.is_empty()).then(|| parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_paths_become_folder_paths() {
        let base = Path::new("/srv/family");
        assert_eq!(
            relative(Path::new("/srv/family/patients/ab/x.xml"), base, base).as_deref(),
            Some("patients/ab/x.xml")
        );
        assert_eq!(relative(Path::new("/srv/family"), base, base), None);
        assert_eq!(relative(Path::new("/elsewhere/x.xml"), base, base), None);
    }
}
