//! `cargo bench`: the change-log benchmarks. Generates realistic families
//! (N patients, about 20 child rows each), measures each figure as the
//! median of several runs with its peak RSS, and measures this machine's
//! floors in the same run. Prints one JSON line per figure.
//!
//! `BENCH_GENERATE=PATH` only writes an app database (first size) for
//! profiling by hand. `BENCH_SIZES=1000,10000` picks the sizes (default 1000,10000,100000),
//! `BENCH_RUNS=5` the runs per figure, `BENCH_DIR` where families are
//! generated (default target/bench-data). Each case is generated into a new
//! directory and all are deleted at the end, never between figures (a
//! create right after a big delete is slow on this file system).

// A benchmark measures the real time things take.
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};

/// The allocator the `clinicsync` executable uses, so (f) measures what it does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::time::{Duration, Instant};

mod common;

use clinicsync::db::{Db, InitParams, REFERENCE_SCHEMA};
use clinicsync::model::{FamilyId, SiteId};
use clinicsync::xmlstore::{Limits, decode_patient};
use common::{Figure, cli, measure, median, peak_rss_kib, report, reset_peak_rss};

fn init_cli(db: &Path, folder: &Path, name: &str) -> (serde_json::Value, Duration, u64) {
    common::init_cli(db, folder, name, &[])
}
use rusqlite::{Connection, params};

/// A small deterministic generator (xorshift), so every run builds the
/// same family.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
    fn words(&mut self, n: usize) -> String {
        const WORDS: &[&str] = &[
            "patient",
            "reports",
            "mild",
            "pain",
            "left",
            "knee",
            "since",
            "fall",
            "reviewed",
            "medication",
            "no",
            "change",
            "blood",
            "pressure",
            "stable",
            "follow-up",
            "in",
            "two",
            "weeks",
            "advised",
            "rest",
            "ice",
            "physiotherapy",
            "referral",
            "sent",
            "discussed",
            "diet",
            "sleep",
            "improved",
        ];
        (0..n).map(|_| self.pick(WORDS)).collect::<Vec<_>>().join(" ")
    }
}

fn uuid(kind: u32, n: u64) -> String {
    format!("{kind:08x}-0000-4000-8000-{n:012x}")
}

/// Rows per patient: 6 appointments, 6 notes, 5 invoices, 3 documents.
const CHILDREN: [(&str, u64); 4] =
    [("appointments", 6), ("clinical_notes", 6), ("invoices", 5), ("documents", 3)];

/// Inserts N patients with their child rows into an app database.
fn generate_app_db(path: &Path, n: u64) -> rusqlite::Result<u64> {
    let mut conn = Connection::open(path)?;
    conn.execute_batch(REFERENCE_SCHEMA)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let tx = conn.transaction()?;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut rows = 0;
    {
        let mut patient = tx.prepare(
            "INSERT INTO patients (id, family_name, given_name, birth_date, sex, phone, email, address, notes, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, '2026-11-01T09:00:00Z')",
        )?;
        let mut appt = tx.prepare(
            "INSERT INTO appointments (id, patient_id, starts_at, duration_min, practitioner, status, notes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        let mut note = tx.prepare(
            "INSERT INTO clinical_notes (id, patient_id, written_at, author, body) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        let mut invoice = tx.prepare(
            "INSERT INTO invoices (id, patient_id, issued_at, amount_cents, currency, status) VALUES (?1, ?2, ?3, ?4, 'EUR', ?5)",
        )?;
        let mut doc = tx.prepare(
            "INSERT INTO documents (id, patient_id, file_name, mime_type, byte_size, sha256, added_at)
             VALUES (?1, ?2, ?3, 'application/pdf', ?4, ?5, '2026-10-01')",
        )?;
        for p in 0..n {
            let id = uuid(1, p);
            let family = rng.pick(&[
                "Okafor",
                "Lindqvist",
                "García",
                "Nguyen",
                "O'Brien",
                "Kowalski",
                "Haddad",
                "Tanaka",
            ]);
            let given = rng.pick(&["Ada", "Erik", "María", "Lan", "Seán", "Zofia", "Omar", "Hiroshi"]);
            patient.execute(params![
                id,
                family,
                given,
                format!(
                    "19{:02}-{:02}-{:02}",
                    30 + rng.next() % 70,
                    1 + rng.next() % 12,
                    1 + rng.next() % 28
                ),
                rng.pick(&["F", "M", "X"]),
                format!("+44 20 7946 {:04}", rng.next() % 10_000),
                format!("{}.{}{}@example.org", given.to_lowercase(), family.to_lowercase(), p),
                format!(
                    "{} {} Road\nTown {}",
                    1 + rng.next() % 200,
                    rng.pick(&["Mill", "Station", "Church"]),
                    p % 97
                ),
                rng.words(12),
            ])?;
            rows += 1;
            for c in 0..CHILDREN[0].1 {
                appt.execute(params![
                    uuid(2, p * 100 + c),
                    id,
                    format!("2026-12-{:02}T{:02}:30:00Z", 1 + c, 8 + rng.next() % 9),
                    15 * (1 + rng.next() % 4) as i64,
                    rng.pick(&["Dr Shah", "Dr Byrne", "Nurse Reid"]),
                    rng.pick(&["booked", "done", "cancelled"]),
                    rng.words(6),
                ])?;
            }
            for c in 0..CHILDREN[1].1 {
                note.execute(params![
                    uuid(3, p * 100 + c),
                    id,
                    format!("2026-11-{:02}T10:00:00Z", 1 + c),
                    rng.pick(&["Dr Shah", "Dr Byrne"]),
                    rng.words(25)
                ])?;
            }
            for c in 0..CHILDREN[2].1 {
                invoice.execute(params![
                    uuid(4, p * 100 + c),
                    id,
                    format!("2026-11-{:02}", 1 + c),
                    (1_000 + rng.next() % 20_000) as i64,
                    rng.pick(&["open", "paid"])
                ])?;
            }
            for c in 0..CHILDREN[3].1 {
                doc.execute(params![
                    uuid(5, p * 100 + c),
                    id,
                    format!("scan-{p}-{c}.pdf"),
                    (10_000 + rng.next() % 900_000) as i64,
                    format!("{:064x}", rng.next()),
                ])?;
            }
            rows += CHILDREN.iter().map(|(_, k)| k).sum::<u64>();
        }
    }
    tx.commit()?;
    Ok(rows)
}

/// Peak RSS since the last reset, in KiB (Linux).
fn sync_cli(db: &Path) -> (serde_json::Value, Duration, u64) {
    cli(&["--db".as_ref(), db.as_os_str(), "sync".as_ref()])
}

fn patient_files(folder: &Path) -> Vec<PathBuf> {
    folder_files(&folder.join("patients"))
}

/// Every file under the folder (patient files, change-log segments, site
/// files, the family manifest), sorted.
fn folder_files(folder: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = walkdir::WalkDir::new(folder)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .collect();
    out.sort();
    out
}

/// Every row of the app's tables, column values in table order, to insert
/// again for the insert floor.
fn app_rows(path: &Path) -> Vec<(String, usize, Vec<rusqlite::types::Value>)> {
    let conn = Connection::open(path).unwrap();
    let tables = std::iter::once("patients").chain(CHILDREN.iter().map(|(t, _)| *t));
    tables
        .map(|table| {
            let mut stmt = conn.prepare(&format!("SELECT * FROM {table} ORDER BY rowid")).unwrap();
            let width = stmt.column_count();
            let mut values = Vec::new();
            let mut rows = stmt.query([]).unwrap();
            while let Some(row) = rows.next().unwrap() {
                values.extend((0..width).map(|i| row.get::<_, rusqlite::types::Value>(i).unwrap()));
            }
            (table.to_owned(), width, values)
        })
        .collect()
}

/// This machine's floors for the same work, measured in the same run.
struct Floors {
    /// Plain std::fs temp+rename writes of as many files of the same sizes
    /// as the full export left in the folder (patient files and segments).
    write: Duration,
    /// Reading those files back.
    read: Duration,
    /// A plain rusqlite bulk insert of the same rows (the app's rows, every
    /// table and column) in one transaction.
    insert: Duration,
    /// The narrower floors of the earliest benchmark figures, kept so that they stay
    /// comparable: writing the patient files only, and inserting as many
    /// rows of one short, constant shape into one table.
    write_patient_files: Duration,
    read_patient_files: Duration,
    insert_uniform: Duration,
}

/// Writes files of these sizes (temp + rename, 256 shard directories) and
/// reads them back; returns both times.
fn write_and_read(out: &Path, staging: &Path, sizes: &[u64]) -> (Duration, Duration) {
    std::fs::create_dir_all(staging).unwrap();
    let max = sizes.iter().copied().max().unwrap_or(0) as usize;
    let filler: Vec<u8> = (0..max).map(|i| b"abcdefghij<>\n"[i % 13]).collect();
    let (_, write, _) = measure(|| {
        for (i, size) in sizes.iter().enumerate() {
            let shard = out.join(format!("{:02x}", i % 256));
            if i < 256 {
                std::fs::create_dir_all(&shard).unwrap();
            }
            let tmp = staging.join(format!("{i}.tmp"));
            std::fs::write(&tmp, &filler[..*size as usize]).unwrap();
            std::fs::rename(&tmp, shard.join(format!("{i:032x}.xml"))).unwrap();
        }
    });
    let (_, read, _) = measure(|| {
        let mut total = 0usize;
        for entry in walkdir::WalkDir::new(out).into_iter().filter_map(Result::ok) {
            if entry.file_type().is_file() {
                total += std::fs::read(entry.path()).unwrap().len();
            }
        }
        total
    });
    (write, read)
}

/// A duration in milliseconds, to two decimals.
fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 100_000.0).round() / 100.0
}

/// `t` over `floor`, to one decimal.
fn ratio(t: Duration, floor: Duration) -> f64 {
    ((t.as_secs_f64() / floor.as_secs_f64()) * 10.0).round() / 10.0
}

/// Replaces files of these sizes, written beforehand into `dir` by
/// [`write_and_read`], via temp + rename (each replaced file's blocks are
/// freed, as when a sync rewrites patient files); returns the time.
fn replace_floor(dir: &Path, staging: &Path, sizes: &[u64]) -> Duration {
    std::fs::create_dir_all(staging).unwrap();
    let max = sizes.iter().copied().max().unwrap_or(0) as usize;
    let filler: Vec<u8> = (0..max).map(|i| b"klmnopqrst<>\n"[i % 13]).collect();
    let (_, replace, _) = measure(|| {
        for (i, size) in sizes.iter().enumerate() {
            let tmp = staging.join(format!("{i}.tmp"));
            std::fs::write(&tmp, &filler[..*size as usize]).unwrap();
            std::fs::rename(&tmp, dir.join(format!("{:02x}", i % 256)).join(format!("{i:032x}.xml")))
                .unwrap();
        }
    });
    replace
}

/// Opens a fresh database with the app's schema, as the floor's inserts do.
fn floor_db(path: &Path) -> Connection {
    let conn = Connection::open(path).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "NORMAL").unwrap();
    conn.pragma_update(None, "foreign_keys", "OFF").unwrap();
    conn.execute_batch(REFERENCE_SCHEMA).unwrap();
    conn
}

fn floors(dir: &Path, all_sizes: &[u64], patient_sizes: &[u64], app: &Path, rows: u64, n: u64) -> Floors {
    let (write, read) = write_and_read(&dir.join("floor-files"), &dir.join("floor-staging"), all_sizes);
    let (write_patient_files, read_patient_files) =
        write_and_read(&dir.join("floor-patient-files"), &dir.join("floor-staging-2"), patient_sizes);
    let tables = app_rows(app);
    let (_, insert, _) = measure(|| {
        let mut conn = floor_db(&dir.join("floor.db"));
        let tx = conn.transaction().unwrap();
        for (table, width, values) in &tables {
            let marks = vec!["?"; *width].join(", ");
            let mut stmt = tx.prepare(&format!("INSERT INTO {table} VALUES ({marks})")).unwrap();
            for row in values.chunks(*width) {
                stmt.execute(rusqlite::params_from_iter(row)).unwrap();
            }
        }
        tx.commit().unwrap();
    });
    drop(tables);
    let (_, insert_uniform, _) = measure(|| {
        let mut conn = floor_db(&dir.join("floor-uniform.db"));
        let tx = conn.transaction().unwrap();
        {
            let mut stmt = tx
                .prepare("INSERT INTO clinical_notes (id, patient_id, written_at, author, body) VALUES (?1, ?2, ?3, ?4, ?5)")
                .unwrap();
            for r in 0..rows {
                stmt.execute(params![
                    uuid(9, r),
                    uuid(1, r % n),
                    "2026-11-01",
                    "Dr Shah",
                    "reviewed medication no change"
                ])
                .unwrap();
            }
        }
        tx.commit().unwrap();
    });
    Floors { write, read, insert, write_patient_files, read_patient_files, insert_uniform }
}

fn run_size(base: &Path, n: u64, runs: usize) {
    let dir = base.join(format!("n{n}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let a = dir.join("a.db");
    let b = dir.join("b.db");
    let folder = dir.join("folder");
    let rows = generate_app_db(&a, n).unwrap();

    // (c) the full export of a populated database: its first `init`.
    let (init_a, c_time, c_rss) = init_cli(&a, &folder, "a");
    let files = patient_files(&folder);
    let size_of = |p: &PathBuf| std::fs::metadata(p).unwrap().len();
    let sizes: Vec<u64> = files.iter().map(size_of).collect();
    let all_sizes: Vec<u64> = folder_files(&folder).iter().map(size_of).collect();
    let bytes: u64 = sizes.iter().sum();
    let counts = &init_a["first_run"]["counts"];
    report(&Figure {
        name: "c_full_export",
        n,
        runs: vec![c_time],
        rss_kib: c_rss,
        extra: serde_json::json!({"rows": rows, "patient_files": files.len(), "patient_bytes": bytes,
            "segments": counts["segments_written"], "versions": counts["exported_versions"]}),
    });

    // The floors, measured right after (c) so both see the same file
    // system conditions (creates right after a big delete are slow here).
    let floor = floors(&dir, &all_sizes, &sizes, &a, rows, n);

    // (d) seeding a new site from the folder: its `init` joins the family.
    let (init_b, d_time, d_rss) = init_cli(&b, &folder, "b");
    let counts = &init_b["first_run"]["counts"];
    report(&Figure {
        name: "d_seed_new_site",
        n,
        runs: vec![d_time],
        rss_kib: d_rss,
        extra: serde_json::json!({"rows_applied": counts["rows_applied"],
            "segments_applied": counts["segments_applied"], "files_read": counts["files_scanned"]}),
    });
    sync_cli(&a);

    // (a) a run with nothing to do (the whole process: start, open, check).
    let mut times = Vec::new();
    let mut rss = 0;
    for _ in 0..runs {
        let (report, t, r) = sync_cli(&b);
        assert_eq!(report["counts"]["folder"]["patient_lists"], 0);
        times.push(t);
        rss = rss.max(r);
    }
    report(&Figure { name: "a_noop_run", n, runs: times, rss_kib: rss, extra: serde_json::json!({}) });

    // (b) importing 100 patients changed by another site, (g) that site's
    // own sync sending them, and (e) the import with use_logs off.
    let app = Connection::open(&a).unwrap();
    let mut g_times = Vec::new();
    let mut g_rss = 0;
    app.busy_timeout(Duration::from_secs(30)).unwrap();
    let mut round = 0u64;
    let mut change_100 = || {
        round += 1;
        let tx = app.unchecked_transaction().unwrap();
        for k in 0..100u64 {
            let p = (round * 7919 + k * 104_729) % n;
            tx.execute(
                "UPDATE patients SET phone = ?1 WHERE id = ?2",
                params![format!("+1 555 {round:04} {k}"), uuid(1, p)],
            )
            .unwrap();
            tx.execute(
                "UPDATE appointments SET status = ?1 WHERE id = ?2",
                params![format!("moved {round}"), uuid(2, p * 100 + round % 6)],
            )
            .unwrap();
        }
        tx.commit().unwrap();
        let (report, t, r) = sync_cli(&a);
        assert!(report["counts"]["exported_rows"].as_u64().unwrap() >= 100, "{report:#}");
        (t, r, report["counts"]["files_written"].as_u64().unwrap())
    };
    let mut b_times = Vec::new();
    let mut b_rss = 0;
    let mut g_files = 0;
    for _ in 0..runs {
        let (sent, sent_rss, files) = change_100();
        g_files = files;
        g_times.push(sent);
        g_rss = g_rss.max(sent_rss);
        let (report, t, r) = sync_cli(&b);
        assert!(report["counts"]["rows_applied"].as_u64().unwrap() >= 100, "{report:#}");
        b_times.push(t);
        b_rss = b_rss.max(r);
    }
    // The floor: replacing as many patient files as a run of (g) wrote.
    let g_floor = replace_floor(
        &dir.join("floor-patient-files"),
        &dir.join("floor-staging-g"),
        &sizes[..(g_files as usize).min(sizes.len())],
    );
    report(&Figure {
        name: "g_send_100_changed",
        n,
        runs: g_times.clone(),
        rss_kib: g_rss,
        extra: serde_json::json!({"files_written": g_files,
            "replace_files_floor_ms": ms(g_floor), "over_replace_floor": ratio(median(g_times), g_floor)}),
    });
    report(&Figure {
        name: "b_import_100_changed",
        n,
        runs: b_times.clone(),
        rss_kib: b_rss,
        extra: serde_json::json!({}),
    });
    // (h) a day of front-desk edits: 10,000 single-row updates, each its
    // own transaction (WAL, synchronous=NORMAL, as an app writes), then
    // A's sync sending them and B's receiving them; with the floor of the
    // same run for replacing as many patient files (temp + rename).
    let updates = 10_000u64;
    let mut h_send = Vec::new();
    let mut h_receive = Vec::new();
    let (mut h_send_rss, mut h_receive_rss, mut h_files) = (0, 0, 0u64);
    app.pragma_update(None, "synchronous", "NORMAL").unwrap();
    for run in 0..runs.min(3) as u64 {
        let mut update = app.prepare("UPDATE patients SET phone = ?1 WHERE id = ?2").unwrap();
        for i in 0..updates {
            update.execute(params![format!("+1 555 {run} {i}"), uuid(1, (i * 104_729) % n)]).unwrap();
        }
        let (report, t, r) = sync_cli(&a);
        assert_eq!(report["counts"]["exported_rows"].as_u64(), Some(updates.min(n)), "{report:#}");
        h_files = report["counts"]["files_written"].as_u64().unwrap();
        h_send.push(t);
        h_send_rss = h_send_rss.max(r);
        let (report, t, r) = sync_cli(&b);
        assert_eq!(report["counts"]["rows_applied"].as_u64(), Some(updates.min(n)), "{report:#}");
        h_receive.push(t);
        h_receive_rss = h_receive_rss.max(r);
    }
    let replace = replace_floor(
        &dir.join("floor-patient-files"),
        &dir.join("floor-staging-3"),
        &sizes[..(h_files as usize).min(sizes.len())],
    );
    report(&Figure {
        name: "h_send_10000_updates",
        n,
        runs: h_send.clone(),
        rss_kib: h_send_rss,
        extra: serde_json::json!({"updates": updates, "files_written": h_files,
            "replace_files_floor_ms": ms(replace),
            "over_replace_floor": ratio(median(h_send.clone()), replace),
            "over_full_export": ratio(median(h_send.clone()), c_time)}),
    });
    report(&Figure {
        name: "h_receive_10000_updates",
        n,
        runs: h_receive,
        rss_kib: h_receive_rss,
        extra: serde_json::json!({"updates": updates}),
    });
    cli(&["--db".as_ref(), b.as_os_str(), "settings".as_ref(), "use_logs=off".as_ref()]);
    let mut e_times = Vec::new();
    let mut e_rss = 0;
    for _ in 0..runs.min(3) {
        change_100();
        let (report, t, r) = sync_cli(&b);
        assert_eq!(report["counts"]["full_scan"], true);
        e_times.push(t);
        e_rss = e_rss.max(r);
    }
    let e_over_b = ratio(median(e_times.clone()), median(b_times));
    report(&Figure {
        name: "e_import_100_changed_without_logs",
        n,
        runs: e_times,
        rss_kib: e_rss,
        extra: serde_json::json!({"e_over_b": e_over_b}),
    });

    // (f) applying field versions: decoded patient files joined into a
    // fresh database, files read and parsed beforehand (not timed).
    let sample_files: Vec<&PathBuf> = files.iter().take(4_000).collect();
    let f_db = dir.join("f.db");
    let mut f_runs = Vec::new();
    let mut f_rss = 0;
    let mut versions = 0usize;
    for run in 0..runs.min(3) {
        let path = f_db.with_extension(format!("{run}.db"));
        let mut db = Db::init(
            &path,
            InitParams {
                site: SiteId::from_bytes([run as u8 + 1; 16]),
                family: FamilyId::from_bytes([9; 16]),
                name: "f".into(),
                folder: dir.join("unused"),
                machine: "bench".into(),
                mapping: None,
                now_ms: 0,
            },
        )
        .unwrap();
        reset_peak_rss();
        let mut applying = Duration::ZERO;
        versions = 0;
        for chunk in sample_files.chunks(256) {
            // Read and parse outside the clock: this figure is the join into SQLite.
            let docs: Vec<_> = chunk
                .iter()
                .map(|p| decode_patient(&std::fs::read(p).unwrap(), Limits::default()).unwrap())
                .collect();
            versions += docs
                .iter()
                .flat_map(|d| d.rows.values())
                .flat_map(|r| r.fields.values())
                .map(|f| f.versions().len())
                .sum::<usize>();
            let start = Instant::now();
            let mut w = db.begin_write(1).unwrap();
            for d in &docs {
                w.apply_doc(d, "bench").unwrap();
            }
            w.commit().unwrap();
            applying += start.elapsed();
        }
        f_runs.push(applying);
        f_rss = f_rss.max(peak_rss_kib());
    }
    let per_sec = versions as f64 / median(f_runs.clone()).as_secs_f64();
    report(&Figure {
        name: "f_apply_versions",
        n,
        runs: f_runs,
        rss_kib: f_rss,
        extra: serde_json::json!({"versions": versions, "versions_per_sec": per_sec.round()}),
    });

    println!(
        "{}",
        serde_json::json!({
            "figure": "floors", "n": n, "files": all_sizes.len(), "file_bytes": all_sizes.iter().sum::<u64>(),
            "write_files_ms": ms(floor.write), "read_files_ms": ms(floor.read), "sqlite_insert_rows_ms": ms(floor.insert),
            "c_over_write_plus_insert_floor": ratio(c_time, floor.write + floor.insert),
            "d_over_read_plus_insert_floor": ratio(d_time, floor.read + floor.insert),
            "narrow": {
                "write_patient_files_ms": ms(floor.write_patient_files),
                "read_patient_files_ms": ms(floor.read_patient_files),
                "sqlite_insert_uniform_rows_ms": ms(floor.insert_uniform),
                "c_over_write_plus_insert_floor": ratio(c_time, floor.write_patient_files + floor.insert_uniform),
                "d_over_read_plus_insert_floor": ratio(d_time, floor.read_patient_files + floor.insert_uniform),
            },
        })
    );
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing
    // useful either: this binary only benchmarks when asked to.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let sizes: Vec<u64> = std::env::var("BENCH_SIZES")
        .unwrap_or_else(|_| "1000,10000,100000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let runs: usize = std::env::var("BENCH_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(5).max(1);
    let base = PathBuf::from(std::env::var("BENCH_DIR").unwrap_or_else(|_| "target/bench-data".into()));
    std::fs::create_dir_all(&base).unwrap();
    // BENCH_GENERATE=PATH only writes the app database of the first size
    // (for profiling `clinicsync init` by hand).
    if let Ok(path) = std::env::var("BENCH_GENERATE") {
        let rows = generate_app_db(Path::new(&path), sizes[0]).unwrap();
        eprintln!("generated {path}: {} patients, {rows} rows", sizes[0]);
        return;
    }
    for n in &sizes {
        run_size(&base, *n, runs);
    }
    for n in &sizes {
        let _ = std::fs::remove_dir_all(base.join(format!("n{n}-{}", std::process::id())));
    }
}
