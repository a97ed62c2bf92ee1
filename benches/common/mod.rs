//! What the benchmarks share: timing a run of the real `clinicsync`
//! binary with its peak memory, medians, and one JSON line per figure.

// A benchmark measures the real time things take.
#![allow(clippy::disallowed_methods, dead_code)]

use std::time::{Duration, Instant};

pub(crate) fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

pub(crate) fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

pub(crate) fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub(crate) struct Figure {
    pub(crate) name: &'static str,
    pub(crate) n: u64,
    pub(crate) runs: Vec<Duration>,
    pub(crate) rss_kib: u64,
    pub(crate) extra: serde_json::Value,
}

pub(crate) fn report(f: &Figure) {
    let median_ms = median(f.runs.clone()).as_secs_f64() * 1000.0;
    let mut line = serde_json::json!({
        "figure": f.name,
        "n": f.n,
        "median_ms": (median_ms * 100.0).round() / 100.0,
        "runs": f.runs.len(),
        "min_ms": (f.runs.iter().min().unwrap().as_secs_f64() * 100_000.0).round() / 100.0,
        "peak_rss_mib": (f.rss_kib as f64 / 1024.0 * 10.0).round() / 10.0,
    });
    if let (Some(obj), Some(extra)) = (line.as_object_mut(), f.extra.as_object()) {
        obj.extend(extra.clone());
    }
    println!("{line}");
}

/// Times `f` once, with the peak RSS it reached.
pub(crate) fn measure<T>(f: impl FnOnce() -> T) -> (T, Duration, u64) {
    reset_peak_rss();
    let start = Instant::now();
    let out = f();
    (out, start.elapsed(), peak_rss_kib())
}

/// Runs the real `clinicsync` binary with `--json`; returns its report,
/// the wall time, and the peak RSS the run reported (KiB).
pub(crate) fn cli(args: &[&std::ffi::OsStr]) -> (serde_json::Value, Duration, u64) {
    let start = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_clinicsync"))
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    let elapsed = start.elapsed();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON from {args:?} ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    let run = if json.get("first_run").is_some() { &json["first_run"] } else { &json };
    if let Some(outcome) = run.get("outcome") {
        assert_eq!(outcome, "ok", "benchmark run was not ok: {json:#}");
    }
    let rss = run["peak_rss_kib"].as_u64().unwrap_or(0);
    (json, elapsed, rss)
}

/// Runs `clinicsync init` for a site, with `extra` arguments.
pub(crate) fn init_cli(
    db: &std::path::Path,
    folder: &std::path::Path,
    name: &str,
    extra: &[&std::ffi::OsStr],
) -> (serde_json::Value, Duration, u64) {
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "--db".as_ref(),
        db.as_os_str(),
        "init".as_ref(),
        "--folder".as_ref(),
        folder.as_os_str(),
        "--site-name".as_ref(),
        name.as_ref(),
    ];
    args.extend_from_slice(extra);
    cli(&args)
}
