//! What differs between the systems clinicsync runs on (Linux, macOS,
//! Windows), in one place: a file's time and the identity of its folder
//! and volume, opening a file without following a link or blocking, making
//! a batch of writes durable, whether a folder is writable, files only
//! their owner reads, and the signals that stop the service. Everything
//! else uses these and has no `cfg` of its own.

use std::fs::{self, File, Metadata, OpenOptions};
use std::io;
use std::path::Path;
use std::time::UNIX_EPOCH;

pub mod login;

/// A file's modification time in nanoseconds since the epoch (0 when the
/// system does not tell, or it is before 1970).
pub fn mtime_ns(meta: &Metadata) -> i64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Whether two existing directories are on one volume (a rename between
/// them is atomic).
pub fn same_volume(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        match (fs::metadata(a), fs::metadata(b)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev(),
            _ => false,
        }
    }
    #[cfg(windows)]
    {
        // The drive or share each path starts with (a folder mounted inside
        // another volume counts as that volume: the rename then fails and
        // is reported, nothing is lost).
        let root = |p: &Path| {
            std::path::absolute(p)
                .ok()
                .and_then(|p| p.components().next().map(|c| c.as_os_str().to_ascii_lowercase()))
        };
        root(a).is_some() && root(a) == root(b)
    }
}

/// An identity of a directory that changes when it is deleted and made
/// again, or another volume is mounted in its place: (device, inode) on
/// Unix; on Windows, its creation time.
pub fn dir_identity(path: &Path) -> Option<(u64, u64)> {
    let meta = fs::metadata(path).ok()?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        Some((meta.dev(), meta.ino()))
    }
    #[cfg(windows)]
    {
        let created = meta.created().ok()?.duration_since(UNIX_EPOCH).ok()?;
        Some((0, u64::try_from(created.as_nanos()).unwrap_or(u64::MAX)))
    }
}

/// What a file that is not a regular file is, for the sentence that skips
/// it; `None` for a regular file.
pub fn not_regular(kind: fs::FileType) -> Option<&'static str> {
    if kind.is_file() {
        return None;
    }
    if kind.is_symlink() {
        return Some("a link");
    }
    if kind.is_dir() {
        return Some("a folder");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt as _;
        if kind.is_fifo() {
            return Some("a FIFO (a named pipe)");
        }
        if kind.is_socket() {
            return Some("a socket");
        }
        if kind.is_block_device() || kind.is_char_device() {
            return Some("a device");
        }
    }
    Some("a special file")
}

/// Options that open a file for reading without following a link at its
/// last component and without blocking (a FIFO opened for reading waits for
/// a writer forever; Windows has no FIFOs in folders, and opens a link or
/// junction itself rather than what it points at).
pub fn read_no_follow() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
        options.custom_flags(flags.bits() as i32);
    }
    #[cfg(windows)]
    {
        use std::os::windows::fs::OpenOptionsExt as _;
        const FILE_FLAG_OPEN_REPARSE_POINT: u32 = 0x0020_0000;
        options.custom_flags(FILE_FLAG_OPEN_REPARSE_POINT);
    }
    options
}

/// Whether an error means another program holds the file open (on
/// Windows a sharing or lock violation, which a cloud client causes while
/// it uploads or downloads the file; a busy file elsewhere): worth a short
/// wait and another try.
pub fn is_held(e: &io::Error) -> bool {
    if e.kind() == io::ErrorKind::ResourceBusy {
        return true;
    }
    #[cfg(windows)]
    {
        const ERROR_SHARING_VIOLATION: i32 = 32;
        const ERROR_LOCK_VIOLATION: i32 = 33;
        matches!(e.raw_os_error(), Some(ERROR_SHARING_VIOLATION | ERROR_LOCK_VIOLATION))
    }
    #[cfg(not(windows))]
    {
        false
    }
}

/// Whether a file is a cloud client's online-only placeholder whose bytes
/// are not on this computer, so that reading it would download it (OneDrive
/// Files On-Demand, Dropbox online-only): on Windows the offline,
/// recall-on-open or recall-on-data-access attribute; on macOS a dataless
/// file (File Provider). Its listing, size and time are real.
pub fn online_only(meta: &Metadata) -> bool {
    #[cfg(windows)]
    {
        use std::os::windows::fs::MetadataExt as _;
        const FILE_ATTRIBUTE_OFFLINE: u32 = 0x1000;
        const FILE_ATTRIBUTE_RECALL_ON_OPEN: u32 = 0x4_0000;
        const FILE_ATTRIBUTE_RECALL_ON_DATA_ACCESS: u32 = 0x40_0000;
        meta.file_attributes()
            & (FILE_ATTRIBUTE_OFFLINE | FILE_ATTRIBUTE_RECALL_ON_OPEN | FILE_ATTRIBUTE_RECALL_ON_DATA_ACCESS)
            != 0
    }
    #[cfg(target_os = "macos")]
    {
        use std::os::macos::fs::MetadataExt as _;
        const SF_DATALESS: u32 = 0x4000_0000;
        meta.st_flags() & SF_DATALESS != 0
    }
    #[cfg(not(any(windows, target_os = "macos")))]
    {
        let _ = meta;
        false
    }
}

/// Whether [`sync_volume`] makes every written file on a volume durable at
/// once (Linux's `syncfs`). Elsewhere each file is synced on its own.
pub const SYNCS_A_VOLUME: bool = cfg!(target_os = "linux");

/// Makes every file written on the volume of `anchor` durable (Linux only;
/// see [`SYNCS_A_VOLUME`]).
pub fn sync_volume(anchor: &Path) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        rustix::fs::syncfs(File::open(anchor)?)?;
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = anchor;
        Err(io::Error::new(io::ErrorKind::Unsupported, "no syncfs on this system"))
    }
}

/// Makes the entries of a directory (a rename into it) durable. Windows
/// cannot open a directory to sync it; NTFS journals the rename itself.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(windows)]
    {
        let _ = dir;
        Ok(())
    }
}

/// Whether this user may create files in the directory `dir`.
pub fn dir_writable(dir: &Path) -> bool {
    #[cfg(unix)]
    {
        rustix::fs::access(dir, rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK).is_ok()
    }
    #[cfg(windows)]
    {
        // ACLs decide, and only trying tells.
        let probe = dir.join(format!("~$clinicsync-write-test.{}.tmp", std::process::id()));
        let made = File::create(&probe).is_ok();
        let _ = fs::remove_file(&probe);
        made
    }
}

/// Whether users other than the owner may read the file (its mode on Unix;
/// on Windows the file has its folder's access list, which this does not
/// judge).
pub fn readable_by_others(meta: &Metadata) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        meta.permissions().mode() & 0o077 != 0
    }
    #[cfg(windows)]
    {
        let _ = meta;
        false
    }
}

/// Creates (or truncates) a file only its owner may read and write (mode
/// 0600 on Unix; on Windows it takes its folder's access list).
pub fn create_private(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(path)
}

/// Waits until the service is asked to stop: Ctrl-C, or SIGTERM on Unix
/// (a service manager's stop), or on Windows the console closing or the
/// user logging off or the system shutting down.
pub async fn stop_requested() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(windows)]
    {
        use tokio::signal::windows::{ctrl_close, ctrl_shutdown};
        match (ctrl_close(), ctrl_shutdown()) {
            (Ok(mut close), Ok(mut shutdown)) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = close.recv() => {}
                    _ = shutdown.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_s_time_is_what_the_system_says_in_nanoseconds() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a");
        fs::write(&file, b"x").unwrap();
        let meta = fs::metadata(&file).unwrap();
        let expected = meta.modified().unwrap().duration_since(UNIX_EPOCH).unwrap().as_nanos() as i64;
        assert_eq!(mtime_ns(&meta), expected);
        assert!(expected > 1_700_000_000_000_000_000, "after 2023");
    }

    #[test]
    fn a_folder_is_on_its_own_volume_and_writable_and_a_private_file_is_not_readable_by_others() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        fs::create_dir(&sub).unwrap();
        assert!(same_volume(dir.path(), &sub));
        assert!(dir_writable(&sub));
        assert!(dir_identity(&sub).is_some());
        let token = sub.join("token");
        create_private(&token).unwrap();
        assert!(!readable_by_others(&fs::metadata(&token).unwrap()));
        sync_dir(&sub).unwrap();
        assert_eq!(sync_volume(&sub).is_ok(), SYNCS_A_VOLUME);
    }
}
