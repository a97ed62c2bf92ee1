//! `cargo bench --bench documents`: document files travelling with their
//! rows. Two sites, 1,000 documents of 1 MB (ten per patient): (h) the sending site's sync
//! that copies them into the folder, (i) the receiving site's sync that
//! places them, each against the floor measured in the same run (a plain
//! `std::fs::copy` of the same files); (j) a sync with no document change
//! (it reads no document file); (k) one 1 GiB document sent and received,
//! with the peak memory of each side. Prints one JSON line per figure.
//!
//! `BENCH_DOCS=1000` the number of documents, `BENCH_DOC_BYTES` their
//! size, `BENCH_RUNS=5` the runs per figure, `BENCH_BIG_MIB=1024` the size
//! of (k) (0: skip it), `BENCH_DIR` where the data goes (default
//! target/bench-data).

// A benchmark measures the real time things take.
#![allow(clippy::disallowed_methods)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Figure, cli, init_cli, median, report};
use rusqlite::{Connection, params};

fn env_or(key: &str, default: u64) -> u64 {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Writes `bytes` of deterministic content that differs by `seed`.
fn write_file(path: &Path, bytes: u64, seed: u64) {
    let mut file = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut block = vec![0u8; 64 << 10];
    let mut left = bytes;
    while left > 0 {
        for chunk in block.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
        }
        let n = left.min(block.len() as u64) as usize;
        file.write_all(&block[..n]).unwrap();
        left -= n as u64;
    }
    file.flush().unwrap();
}

/// Writes back every dirty page of the volume holding `dir` (`sync -f`).
fn flush(dir: &Path) {
    let done = std::process::Command::new("sync").arg("-f").arg(dir).status().unwrap();
    assert!(done.success());
}

struct Sites {
    dir: PathBuf,
    a: PathBuf,
    b: PathBuf,
    a_docs: PathBuf,
    patient: String,
}

fn two_sites(base: &Path, name: &str) -> Sites {
    let dir = base.join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let folder = dir.join("folder");
    let mut out = Vec::new();
    for site in ["a", "b"] {
        let docs = dir.join(format!("{site}-docs"));
        std::fs::create_dir_all(&docs).unwrap();
        let db = dir.join(format!("{site}.db"));
        init_cli(&db, &folder, site, &["--documents-folder".as_ref(), docs.as_os_str()]);
        out.push((db, docs));
    }
    let (b, _) = out.pop().unwrap();
    let (a, a_docs) = out.pop().unwrap();
    let patient = "0b7e4c1a-0000-4000-8000-000000000001".to_owned();
    Connection::open(&a)
        .unwrap()
        .execute("INSERT INTO patients (id, family_name) VALUES (?1, 'Bench')", [&patient])
        .unwrap();
    Sites { dir, a, b, a_docs, patient }
}

fn sync(db: &Path, args: &[&str]) -> (serde_json::Value, Duration, u64) {
    let mut all: Vec<&std::ffi::OsStr> = vec!["--db".as_ref(), db.as_os_str(), "sync".as_ref()];
    all.extend(args.iter().map(|a| std::ffi::OsStr::new(*a)));
    cli(&all)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let count = env_or("BENCH_DOCS", 1000);
    let size = env_or("BENCH_DOC_BYTES", 1 << 20);
    let runs = env_or("BENCH_RUNS", 5).max(1) as usize;
    let big_mib = env_or("BENCH_BIG_MIB", 1024);
    let base = PathBuf::from(std::env::var("BENCH_DIR").unwrap_or_else(|_| "target/bench-data".into()));
    std::fs::create_dir_all(&base).unwrap();

    let s = two_sites(&base, "documents");
    let app = Connection::open(&s.a).unwrap();
    let names: Vec<String> = (0..count).map(|i| format!("scans/{:02}/doc-{i:05}.pdf", i % 50)).collect();
    for name in &names {
        std::fs::create_dir_all(s.a_docs.join(name).parent().unwrap()).unwrap();
    }
    // Ten documents per patient, as a clinic has them.
    let tx = app.unchecked_transaction().unwrap();
    let patient = |i: usize| format!("0b7e4c1a-0000-4000-8000-{:012x}", 1000 + i / 10);
    for (i, name) in names.iter().enumerate() {
        if i % 10 == 0 {
            tx.execute("INSERT INTO patients (id, family_name) VALUES (?1, 'Bench')", [patient(i)]).unwrap();
        }
        tx.execute(
            "INSERT INTO documents (id, patient_id, file_name) VALUES (?1, ?2, ?3)",
            params![format!("doc-{i:05}"), patient(i), name],
        )
        .unwrap();
    }
    tx.commit().unwrap();

    let (mut h, mut i, mut floor, mut floor_synced) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut h_rss, mut i_rss) = (0, 0);
    for run in 0..runs as u64 {
        // New contents for every document: each run sends 1,000 new bodies.
        for (k, name) in names.iter().enumerate() {
            write_file(&s.a_docs.join(name), size, run * 1_000_003 + k as u64);
        }
        // Written back before anything is timed, so no run pays for the
        // generator's writes.
        flush(&s.dir);
        // The floor: the same files copied by the standard library, and
        // with one sync of the volume after (what durable copies cost).
        let copy_to = s.dir.join(format!("floor-{run}"));
        std::fs::create_dir_all(&copy_to).unwrap();
        let start = Instant::now();
        for (k, name) in names.iter().enumerate() {
            std::fs::copy(s.a_docs.join(name), copy_to.join(k.to_string())).unwrap();
        }
        floor.push(start.elapsed());
        flush(&copy_to);
        floor_synced.push(start.elapsed());
        let (sent, t, r) = sync(&s.a, &[]);
        assert_eq!(sent["counts"]["documents"]["exported"], count, "{sent:#}");
        h.push(t);
        h_rss = h_rss.max(r);
        let (got, t, r) = sync(&s.b, &[]);
        assert_eq!(got["counts"]["documents"]["placed"], count, "{got:#}");
        i.push(t);
        i_rss = i_rss.max(r);
        // The floor's copies stay until the end: creating files soon after
        // deleting many is slow on this file system.
    }
    let floor_ms = median(floor.clone()).as_secs_f64() * 1000.0;
    let synced_ms = median(floor_synced.clone()).as_secs_f64() * 1000.0;
    let ratio = |v: &[Duration], floor: f64| {
        ((median(v.to_vec()).as_secs_f64() * 1000.0 / floor) * 100.0).round() / 100.0
    };
    let extra = |v: &[Duration]| {
        serde_json::json!({"documents": count, "bytes_each": size,
            "floor_fs_copy_ms": (floor_ms * 100.0).round() / 100.0,
            "floor_fs_copy_and_sync_ms": (synced_ms * 100.0).round() / 100.0,
            "over_fs_copy": ratio(v, floor_ms), "over_fs_copy_and_sync": ratio(v, synced_ms)})
    };
    report(&Figure { name: "h_send_documents", n: count, runs: h.clone(), rss_kib: h_rss, extra: extra(&h) });
    report(&Figure {
        name: "i_receive_documents",
        n: count,
        runs: i.clone(),
        rss_kib: i_rss,
        extra: extra(&i),
    });

    // (j) nothing changed: a stat per document, no document file read.
    let mut j = Vec::new();
    let mut j_rss = 0;
    for _ in 0..runs {
        for db in [&s.a, &s.b] {
            let (quiet, t, r) = sync(db, &[]);
            assert_eq!(quiet["counts"]["documents"]["files_read"], 0, "{quiet:#}");
            j.push(t);
            j_rss = j_rss.max(r);
        }
    }
    report(&Figure {
        name: "j_noop_with_documents",
        n: count,
        runs: j,
        rss_kib: j_rss,
        extra: serde_json::json!({"documents": count}),
    });
    let _ = std::fs::remove_dir_all(&s.dir);

    // (k) one large document, streamed both ways.
    if big_mib > 0 {
        let s = two_sites(&base, "big-document");
        let name = "imaging/ct-series.bin";
        std::fs::create_dir_all(s.a_docs.join("imaging")).unwrap();
        write_file(&s.a_docs.join(name), big_mib << 20, 7);
        flush(&s.dir);
        Connection::open(&s.a)
            .unwrap()
            .execute(
                "INSERT INTO documents (id, patient_id, file_name) VALUES ('big', ?1, ?2)",
                params![s.patient, name],
            )
            .unwrap();
        let (_, sent, sent_rss) = sync(&s.a, &[]);
        let (got, received, got_rss) = sync(&s.b, &[]);
        assert_eq!(got["counts"]["documents"]["placed"], 1, "{got:#}");
        for (figure, t, rss) in [
            ("k_send_one_large_document", sent, sent_rss),
            ("k_receive_one_large_document", received, got_rss),
        ] {
            report(&Figure {
                name: figure,
                n: 1,
                runs: vec![t],
                rss_kib: rss,
                extra: serde_json::json!({"bytes": big_mib << 20}),
            });
        }
        let _ = std::fs::remove_dir_all(&s.dir);
    }
}
