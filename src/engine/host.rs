//! What the engine learns from the computer it runs on: the time, random
//! bytes, the machine fingerprint, and the test-only fault points.

use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::model::Clock;

/// The wall clock. The test hook `CLINICSYNC_CLOCK_OFFSET` (a duration
/// such as `31days`) sets it that far ahead, so tests through the command
/// line can let days pass (retention, dormancy, purging) without waiting.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        file_time_now_ms().saturating_add(clock_offset_ms())
    }
}

/// The computer's time as the file system stamps files, without the test
/// offset: for judging a file's age by its modification time.
#[allow(clippy::disallowed_methods)] // the clock module
pub(crate) fn file_time_now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A point on the monotonic clock, for measuring how long something takes
/// (never for what a run decides about the data).
#[allow(clippy::disallowed_methods)] // the clock module
pub(crate) fn monotonic_now() -> std::time::Instant {
    std::time::Instant::now()
}

fn clock_offset_ms() -> u64 {
    static OFFSET: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *OFFSET.get_or_init(|| {
        std::env::var("CLINICSYNC_CLOCK_OFFSET")
            .ok()
            .and_then(|v| humantime::parse_duration(&v).ok())
            .map_or(0, |d| d.as_millis() as u64)
    })
}

/// 16 random bytes from the operating system, for site and family ids.
pub(crate) fn random_id_bytes() -> std::io::Result<[u8; 16]> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(bytes)
}

/// A one-way fingerprint of this computer: a hash of `/etc/machine-id`
/// (systemd), else of the host name (on Windows, `COMPUTERNAME`).
/// `CLINICSYNC_MACHINE_ID` replaces the source, so tests can play two
/// computers on one machine.
pub fn machine_fingerprint() -> String {
    let source = std::env::var("CLINICSYNC_MACHINE_ID")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/machine-id").ok())
        .or_else(|| std::fs::read_to_string("/var/lib/dbus/machine-id").ok())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        // Windows names the computer in the environment.
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .unwrap_or_default();
    let digest = Sha256::digest(format!("clinicsync-machine:{}", source.trim()).as_bytes());
    let mut hex = String::new();
    crate::model::write_hex_bytes(&mut hex, &digest[..8]);
    hex
}

/// Aborts the process at a named point when `CLINICSYNC_FAULT` names it:
/// the crash tests use this to stop a sync between two of its steps.
pub(crate) fn fault_point(name: &str) {
    if std::env::var("CLINICSYNC_FAULT").is_ok_and(|v| v == name) {
        eprintln!("clinicsync: fault injected at {name}");
        std::process::abort();
    }
}

/// The process's peak resident set size in KiB, where the system tells it.
pub(crate) fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
