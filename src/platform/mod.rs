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
#[cfg(windows)]
mod win32;

/// A file's modification time in nanoseconds since the epoch (0 when the
/// system does not tell, or it is before 1970).
pub fn mtime_ns(meta: &Metadata) -> i64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// A file's number on its volume (the inode), where a directory listing
/// gives it without opening or statting the file: Linux and macOS. A file
/// written in place keeps it; one put in place by a rename (every cloud
/// client's and clinicsync's way of replacing a file) has the number of
/// the file it was written as. `None` on Windows, whose listing gives size
/// and time without a call per file anyway.
pub fn file_id(meta: &Metadata) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        Some(meta.ino())
    }
    #[cfg(windows)]
    {
        let _ = meta;
        None
    }
}

/// [`file_id`] of a listed entry, from the listing alone.
pub fn listed_id(entry: &fs::DirEntry) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirEntryExt as _;
        Some(entry.ino())
    }
    #[cfg(windows)]
    {
        let _ = entry;
        None
    }
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

/// Whether a file can be held open while a rename replaces it (POSIX: the
/// rename only drops its name, and the file is freed when the last handle
/// closes). Windows may refuse to replace a file that is open.
pub const HOLDS_REPLACED: bool = cfg!(unix);

/// How many files this process may hold open at once (its soft limit), or
/// `None` where no such limit applies or it cannot be told (Windows).
pub fn open_files_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        rustix::process::getrlimit(rustix::process::Resource::Nofile).current
    }
    #[cfg(windows)]
    {
        None
    }
}

/// How many bytes the calling thread has had read from the disk so far,
/// not counting what the system's cache served: Linux's `read_bytes` in
/// `/proc/thread-self/io`. `None` where the system does not say (macOS,
/// Windows, a Linux without I/O accounting or without `/proc`).
pub fn thread_disk_reads() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        let io = fs::read_to_string("/proc/thread-self/io").ok()?;
        io.lines().find_map(|line| line.strip_prefix("read_bytes:")).and_then(|n| n.trim().parse().ok())
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
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

/// Whether users other than the owner may read the file: its mode on
/// Unix; on Windows, whether its access list allows anyone but this user
/// (an access list that cannot be read is not judged).
pub fn readable_by_others(path: &Path, meta: &Metadata) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let _ = path;
        meta.permissions().mode() & 0o077 != 0
    }
    #[cfg(windows)]
    {
        let _ = meta;
        win32::others_allowed(path).unwrap_or(false)
    }
}

/// Creates (or truncates) a file only its owner may read and write: mode
/// 0600 on Unix; on Windows an access list of its own that allows this user
/// alone (not inherited from its folder). Where the volume keeps no access
/// lists (FAT, exFAT) the file is made all the same and the second value
/// says why it is not private.
pub fn create_private(path: &Path) -> io::Result<(File, Option<String>)> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
        Ok((options.open(path)?, None))
    }
    #[cfg(windows)]
    {
        use std::os::windows::fs::OpenOptionsExt as _;
        // Writing, and changing the file's access list.
        const GENERIC_WRITE: u32 = 0x4000_0000;
        const WRITE_DAC: u32 = 0x0004_0000;
        const READ_CONTROL: u32 = 0x0002_0000;
        options.access_mode(GENERIC_WRITE | WRITE_DAC | READ_CONTROL);
        let file = options.open(path)?;
        let why = win32::owner_only(&file).err().map(|e| e.to_string());
        Ok((file, why))
    }
}

/// Whether the process `pid` is running (`None` where that cannot be told):
/// a signal-0 probe on Unix, the process's exit code on Windows.
pub fn process_alive(pid: u32) -> Option<bool> {
    #[cfg(unix)]
    {
        let pid = rustix::process::Pid::from_raw(i32::try_from(pid).ok()?)?;
        match rustix::process::test_kill_process(pid) {
            Ok(()) => Some(true),
            // It exists, as another user's process.
            Err(rustix::io::Errno::PERM) => Some(true),
            Err(rustix::io::Errno::SRCH) => Some(false),
            Err(_) => None,
        }
    }
    #[cfg(windows)]
    {
        win32::process_alive(pid)
    }
}

/// Why `path` cannot name a folder on this system, if it cannot: on
/// Windows, a part of it that is a reserved device name or ends with a dot
/// or a space (see [`windows_name_problem`]). Elsewhere every such name is
/// an ordinary one.
pub fn unusable_path(path: &Path) -> Option<String> {
    if !cfg!(windows) {
        return None;
    }
    path.components().find_map(|part| match part {
        std::path::Component::Normal(name) => windows_name_problem(&name.to_string_lossy()),
        _ => None,
    })
}

/// Why Windows programs cannot use `name` as a file or folder name, if they
/// cannot: a reserved device name (CON, PRN, AUX, NUL, COM1 to COM9, LPT1
/// to LPT9, in any case and with any extension: `nul.txt` is the null
/// device too), or a name that ends with a dot or a space (Windows drops
/// them, so the name opens another file).
pub fn windows_name_problem(name: &str) -> Option<String> {
    let stem = name.split('.').next().unwrap_or("").trim_end_matches(' ').to_ascii_uppercase();
    let numbered = |prefix: &str| {
        stem.strip_prefix(prefix).is_some_and(|n| {
            matches!(n, "1" | "2" | "3" | "4" | "5" | "6" | "7" | "8" | "9" | "¹" | "²" | "³")
        })
    };
    if matches!(stem.as_str(), "CON" | "PRN" | "AUX" | "NUL" | "CONIN$" | "CONOUT$")
        || numbered("COM")
        || numbered("LPT")
    {
        return Some(format!(
            "\"{name}\" is a device name on Windows ({stem}), which no folder may be called there; rename that folder"
        ));
    }
    if name.ends_with('.') || name.ends_with(' ') {
        return Some(format!(
            "\"{name}\" ends with a dot or a space, which Windows drops, so the name would open another folder; rename that folder"
        ));
    }
    None
}

/// A command line run by the system's shell: `sh -c` on Unix, `cmd /S /C`
/// on Windows (the alert command the user configured).
pub fn shell(command: &str) -> std::process::Command {
    #[cfg(unix)]
    {
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c").arg(command);
        cmd
    }
    #[cfg(windows)]
    {
        use std::os::windows::process::CommandExt as _;
        let mut cmd = std::process::Command::new("cmd");
        cmd.raw_arg(format!("/S /C \"{command}\""));
        cmd
    }
}

/// Commands and shell lines the unit tests run, in each system's terms.
#[cfg(test)]
pub(crate) mod testing {
    use std::process::Command;

    /// A program that exits at once with success.
    pub(crate) fn succeeds() -> Command {
        if cfg!(windows) { super::shell("exit 0") } else { Command::new("true") }
    }

    /// A program that runs until it is killed (or its input, kept open by
    /// the caller, ends).
    pub(crate) fn waits() -> Command {
        let (program, arg) = if cfg!(windows) { ("find", "never") } else { ("sleep", "300") };
        let mut cmd = Command::new(program);
        cmd.arg(arg).stdin(std::process::Stdio::piped());
        cmd
    }

    /// A shell line that writes `$A|$B` (two environment variables) to
    /// `path`; the file may end with a line break.
    pub(crate) fn write_two_vars(a: &str, b: &str, path: &std::path::Path) -> String {
        if cfg!(windows) {
            format!("echo %{a}%^|%{b}%> \"{}\"", path.display())
        } else {
            format!("printf '%s|%s' \"${a}\" \"${b}\" > '{}'", path.display())
        }
    }

    /// A shell line that says `broken` on stderr and exits with 3.
    pub(crate) fn fails_saying_broken() -> &'static str {
        if cfg!(windows) { "echo broken 1>&2 & exit 3" } else { "echo broken >&2; exit 3" }
    }
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
    fn what_a_thread_read_from_the_disk_is_counted_on_linux_only_and_only_grows() {
        let before = thread_disk_reads();
        assert_eq!(before.is_some(), cfg!(target_os = "linux") && Path::new("/proc/thread-self/io").exists());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        fs::write(&file, vec![7u8; 1 << 16]).unwrap();
        assert_eq!(fs::read(&file).unwrap().len(), 1 << 16);
        if let (Some(before), Some(after)) = (before, thread_disk_reads()) {
            assert!(after >= before, "{before} then {after}");
        }
        // Another thread's reads are its own.
        let other = std::thread::spawn(thread_disk_reads).join().unwrap();
        assert_eq!(other.is_some(), before.is_some());
    }

    #[test]
    fn device_names_and_trailing_dots_are_refused_as_windows_names() {
        for bad in
            ["CON", "con", "Nul.txt", "aux.tar.gz", "COM1", "lpt9", "COM¹", "prn ", "notes.", "trailing "]
        {
            assert!(windows_name_problem(bad).is_some(), "{bad}");
        }
        for good in ["CONTACTS", "console", "COM10", "LPT0", "ClinicSync", "a.b", "nul_backup", ".hidden"] {
            assert_eq!(windows_name_problem(good), None, "{good}");
        }
        let deep = Path::new("clinic").join("CON").join("shared");
        assert_eq!(unusable_path(&deep).is_some(), cfg!(windows));
    }

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
        let (_, not_private) = create_private(&token).unwrap();
        assert_eq!(not_private, None, "the system took the owner-only permissions");
        // Read back on Unix. (Wine, where the Windows build's tests run,
        // accepts a file's access list but reads back its default one.)
        if cfg!(unix) {
            assert!(!readable_by_others(&token, &fs::metadata(&token).unwrap()));
            // A file made the usual way is readable by others (mode 0644).
            let plain = sub.join("plain");
            fs::write(&plain, b"x").unwrap();
            assert!(readable_by_others(&plain, &fs::metadata(&plain).unwrap()));
        }
        sync_dir(&sub).unwrap();
        assert_eq!(sync_volume(&sub).is_ok(), SYNCS_A_VOLUME);
    }
}
