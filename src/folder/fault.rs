//! The folder's test hooks, for conditions a test cannot make on Linux or
//! as root: `CLINICSYNC_FAULT` names one fault for the whole process.

use std::io;

/// `CLINICSYNC_FAULT=fail-write:PREFIX` makes every batch that writes a
/// path starting with PREFIX fail (the tests of a folder that refuses
/// writes; root ignores permissions).
pub(super) fn write_fault() -> Option<String> {
    std::env::var("CLINICSYNC_FAULT").ok()?.strip_prefix("fail-write:").map(str::to_owned)
}

/// The test hooks for conditions Linux cannot make: `CLINICSYNC_FAULT=
/// held:PREFIX` (every open, rename and removal of a path starting with
/// PREFIX fails as a file another program holds open, as Windows says while
/// a cloud client transfers it), `held:PREFIX:N` (only the first N tries of
/// each such path, per process), `held-writes:PREFIX` (renames and
/// removals only: a client that lets others read the file but not replace
/// it), and `online-only:PREFIX` (such files are online-only placeholders).
enum Fault {
    Held { prefix: String, tries: Option<u32>, writes_only: bool },
    OnlineOnly(String),
}

fn fault() -> Option<&'static Fault> {
    static FAULT: std::sync::OnceLock<Option<Fault>> = std::sync::OnceLock::new();
    FAULT
        .get_or_init(|| {
            let spec = std::env::var("CLINICSYNC_FAULT").ok()?;
            let held = spec.strip_prefix("held:").map(|r| (r, false));
            if let Some((rest, writes_only)) =
                held.or_else(|| spec.strip_prefix("held-writes:").map(|r| (r, true)))
            {
                let (prefix, tries) = match rest.rsplit_once(':') {
                    Some((prefix, n)) if n.parse::<u32>().is_ok() => (prefix, n.parse().ok()),
                    _ => (rest, None),
                };
                return Some(Fault::Held { prefix: prefix.to_owned(), tries, writes_only });
            }
            spec.strip_prefix("online-only:").map(|p| Fault::OnlineOnly(p.to_owned()))
        })
        .as_ref()
}

/// The held-file fault for one try of `rel`, if it applies.
pub(super) fn held_fault(rel: &str, writing: bool) -> Option<io::Error> {
    let Some(Fault::Held { prefix, tries, writes_only }) = fault() else { return None };
    if !rel.starts_with(prefix.as_str()) || (*writes_only && !writing) {
        return None;
    }
    if let Some(limit) = tries {
        static SEEN: std::sync::Mutex<Option<std::collections::HashMap<String, u32>>> =
            std::sync::Mutex::new(None);
        let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
        let n = seen.get_or_insert_default().entry(rel.to_owned()).or_default();
        if *n >= *limit {
            return None;
        }
        *n += 1;
    }
    Some(io::Error::new(
        io::ErrorKind::ResourceBusy,
        "the process cannot access the file because it is being used by another process (a test fault)",
    ))
}

pub(super) fn online_only_fault(rel: &str) -> bool {
    matches!(fault(), Some(Fault::OnlineOnly(prefix)) if rel.starts_with(prefix.as_str()))
}
