//! Temp files a killed clinicsync left, in the folder (`~$<name>.<pid>-<n>.tmp`)
//! or in the staging directory (`<pid>-<n>-<index>.tmp`): told from a
//! running process's by its id, and removed.

use std::fs;
use std::io;

use super::{DiskFolder, entry_of};
use crate::folder::Entry;
use crate::platform;

/// How old a temp file of a process that may still run must be before it
/// counts as left behind: no batch takes this long.
const STALE_TEMP_AFTER_NS: i64 = 3600 * 1_000_000_000;

/// The process id in one of this module's temp file names: `~$<name>.<pid>-<n>.tmp`
/// beside a target, `<pid>-<n>-<index>.tmp` in the staging directory.
fn temp_pid(name: &str) -> Option<u32> {
    let stem = name.strip_suffix(".tmp")?;
    let tail = match stem.strip_prefix("~$") {
        Some(beside) => beside.rsplit_once('.')?.1,
        None => stem,
    };
    tail.split('-').next()?.parse().ok()
}

/// Whether a file is a temp file a killed clinicsync left: one of our temp
/// names, of another process that is not running (or, where that cannot be
/// told, older than any batch takes).
fn left_behind(name: &str, mtime_ns: i64, now_ns: i64) -> bool {
    match temp_pid(name) {
        Some(pid) if pid == std::process::id() => false,
        Some(pid) => {
            platform::process_alive(pid) == Some(false)
                || now_ns.saturating_sub(mtime_ns) > STALE_TEMP_AFTER_NS
        }
        None => false,
    }
}

/// Whether a folder entry is a temp file a killed clinicsync left (see
/// [`DiskFolder::remove_left_temps`]), judged at `now_ms`.
pub fn is_left_temp(entry: &Entry, now_ms: u64) -> bool {
    !entry.is_dir && entry.name.starts_with("~$") && left_behind(&entry.name, entry.mtime_ns, ns(now_ms))
}

fn ns(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX).saturating_mul(1_000_000)
}

impl DiskFolder {
    /// Removes the temp files a killed clinicsync left in `dir` of the
    /// folder (they are named `~$<name>.<pid>-<n>.tmp`, which clients skip,
    /// but nothing else would ever remove them). Returns their paths.
    pub fn remove_left_temps(&self, dir: &str, now_ms: u64) -> io::Result<Vec<String>> {
        let mut removed = Vec::new();
        for entry in self.list(dir)? {
            if is_left_temp(&entry, now_ms) {
                let path = if dir.is_empty() { entry.name } else { format!("{dir}/{}", entry.name) };
                self.remove(&path)?;
                removed.push(path);
            }
        }
        Ok(removed)
    }

    /// Removes the temp files a killed clinicsync left in the staging
    /// directory. Returns how many.
    pub fn remove_left_staged(&self, now_ms: u64) -> io::Result<u64> {
        let Some(dir) = &self.staging else { return Ok(0) };
        let now = ns(now_ms);
        let mut n = 0;
        for item in fs::read_dir(dir)? {
            let item = item?;
            let name = item.file_name().to_string_lossy().into_owned();
            let Ok(meta) = item.metadata() else { continue };
            let mtime = entry_of(name.clone(), &meta).mtime_ns;
            if meta.is_file() && left_behind(&name, mtime, now) {
                match fs::remove_file(item.path()) {
                    Ok(()) => n += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_dead_process_s_temp_files_count_as_left_behind() {
        assert_eq!(temp_pid("~$0123.xml.4242-7.tmp"), Some(4242));
        assert_eq!(temp_pid("4242-7-3.tmp"), Some(4242));
        assert_eq!(temp_pid("~$notes.docx"), None, "an office lock file is not ours");
        assert_eq!(temp_pid("~$0123.xml.tmp"), None);
        #[allow(clippy::disallowed_methods)] // a test of the rule itself, at the real time
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64;
        let mine = format!("~$0123.xml.{}-1.tmp", std::process::id());
        assert!(!left_behind(&mine, 0, now), "this process's own temp file");
        let mut child = platform::testing::waits().spawn().unwrap();
        let running = format!("{}-1-0.tmp", child.id());
        assert!(!left_behind(&running, now, now), "a running process's temp file");
        let hour = 3600 * 1_000_000_000;
        assert!(left_behind(&running, now - hour - 1, now), "older than any batch: the id was reused");
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(left_behind(&running, now, now), "once it has gone, even a fresh file");
    }
}
