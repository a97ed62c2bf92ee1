//! Shared test helpers: sites with a database and a shared folder, the CLI
//! as a process, and an app connection that writes like a clinic app would.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use clinicsync::db::Db;
use clinicsync::model::Value;
use rusqlite::{Connection, params};

/// A family: one shared folder and the databases of its sites, in a temp dir.
pub(crate) struct Family {
    pub(crate) dir: tempfile::TempDir,
}

impl Family {
    pub(crate) fn new() -> Family {
        Family { dir: tempfile::tempdir().expect("temp dir") }
    }

    pub(crate) fn folder(&self) -> PathBuf {
        self.dir.path().join("shared")
    }

    pub(crate) fn db(&self, site: &str) -> PathBuf {
        self.dir.path().join(format!("{site}.db"))
    }

    /// Runs `clinicsync init` for a site and expects success.
    pub(crate) fn init(&self, site: &str) -> PathBuf {
        let db = self.db(site);
        cli(&db).args(["init", "--folder"]).arg(self.folder()).args(["--site-name", site]).assert().success();
        db
    }
}

/// A family of two sites, A and B (`a.db`, `b.db`), both set up. Keep
/// the family: its directory goes when it is dropped.
pub(crate) fn two_sites() -> (Family, PathBuf, PathBuf) {
    let family = Family::new();
    let a = family.init("a");
    let b = family.init("b");
    (family, a, b)
}

/// Two sites that both have one patient: added at A with `children` rows
/// of each child table, and synced to B.
pub(crate) fn two_sites_sharing_a_patient(children: u32) -> (Family, PathBuf, PathBuf, String) {
    let (family, a, b) = two_sites();
    let patient = add_patient(&app(&a), 1, children);
    sync_ok(&a);
    sync_ok(&b);
    (family, a, b, patient)
}

/// A concurrent edit: each site sets `column` of `patient` to its own value
/// before either syncs; then A, B and A again sync, so both sites know both
/// values (B's, stamped later, wins).
pub(crate) fn edit_at_both(a: &Path, b: &Path, patient: &str, column: &str, at_a: &str, at_b: &str) {
    for (db, value) in [(a, at_a), (b, at_b)] {
        app(db)
            .execute(&format!("UPDATE patients SET {column} = ?2 WHERE id = ?1"), params![patient, value])
            .unwrap();
    }
    for db in [a, b, a] {
        sync_ok(db);
    }
}

thread_local! {
    /// How far this test has let time pass for clinicsync (seconds).
    static LATER: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Lets `days` pass for every later command of this test: clinicsync's
/// clock runs that much further ahead (the `CLINICSYNC_CLOCK_OFFSET` hook),
/// so retention, dormancy and purging come without waiting.
pub(crate) fn days_pass(days: u64) {
    LATER.with(|l| l.set(l.get() + days * 24 * 3600));
}

/// The CLI as a process, with `--db` set.
pub(crate) fn cli(db: &Path) -> Command {
    let mut cmd = Command::cargo_bin("clinicsync").expect("the clinicsync binary is built");
    cmd.arg("--db")
        .arg(db)
        .env_remove("CLINICSYNC_FAULT")
        .env_remove("CLINICSYNC_MACHINE_ID")
        .env_remove("CLINICSYNC_CLOCK_OFFSET");
    let later = LATER.with(std::cell::Cell::get);
    if later > 0 {
        cmd.env("CLINICSYNC_CLOCK_OFFSET", format!("{later}s"));
    }
    cmd
}

/// Runs `clinicsync sync` and returns its exit code and JSON report.
pub(crate) fn sync(db: &Path) -> (i32, serde_json::Value) {
    sync_with(db, &[])
}

/// Runs `clinicsync sync` with extra arguments.
pub(crate) fn sync_with(db: &Path, args: &[&str]) -> (i32, serde_json::Value) {
    let out = cli(db).args(["sync", "--json"]).args(args).output().expect("run clinicsync");
    let code = out.status.code().unwrap_or(-1);
    let json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("sync printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    (code, json)
}

/// Runs a command with `--json` and parses what it prints.
pub(crate) fn json_of(db: &Path, args: &[&str]) -> serde_json::Value {
    let out = cli(db).args(args).arg("--json").output().expect("run clinicsync");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{args:?} printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout))
    })
}

/// Runs sync and insists it ends `ok`.
pub(crate) fn sync_ok(db: &Path) -> serde_json::Value {
    let (code, json) = sync(db);
    assert_eq!(code, 0, "sync of {} was not ok: {json:#}", db.display());
    assert_eq!(json["outcome"], "ok");
    json
}

/// An app connection, configured as a well-behaved app would be.
pub(crate) fn app(db: &Path) -> Connection {
    let conn = Connection::open(db).expect("open app connection");
    conn.busy_timeout(std::time::Duration::from_secs(30)).expect("busy timeout");
    conn.pragma_update(None, "foreign_keys", "ON").expect("foreign keys");
    conn
}

/// Creates the reference schema in a new database file (the app's own
/// database before clinicsync is set up).
pub(crate) fn new_clinic_db(path: &Path) -> Connection {
    let conn = app(path);
    conn.execute_batch(clinicsync::db::REFERENCE_SCHEMA).expect("reference schema");
    conn
}

pub(crate) fn uuid(prefix: u32, n: u32) -> String {
    format!("{prefix:08x}-0000-4000-8000-{n:012x}")
}

/// Adds a patient with `children` rows of each child table.
pub(crate) fn add_patient(conn: &Connection, n: u32, children: u32) -> String {
    let id = uuid(1, n);
    conn.execute(
        "INSERT INTO patients (id, family_name, given_name, phone, email) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            id,
            format!("Family{n}"),
            format!("Given{n}"),
            format!("+1 555 {n:04}"),
            format!("p{n}@example.org")
        ],
    )
    .expect("insert patient");
    for c in 0..children {
        let child = n * 10_000 + c;
        conn.execute(
            "INSERT INTO appointments (id, patient_id, starts_at, duration_min, status) VALUES (?1, ?2, ?3, 30, 'booked')",
            params![uuid(2, child), id, format!("2026-12-01T{:02}:00:00Z", c % 24)],
        )
        .expect("insert appointment");
        conn.execute(
            "INSERT INTO clinical_notes (id, patient_id, written_at, body) VALUES (?1, ?2, '2026-11-01', ?3)",
            params![uuid(3, child), id, format!("note {c}\r\n  indented\tline ")],
        )
        .expect("insert note");
        conn.execute(
            "INSERT INTO invoices (id, patient_id, issued_at, amount_cents, currency) VALUES (?1, ?2, '2026-11-02', ?3, 'EUR')",
            params![uuid(4, child), id, 1000 + c as i64],
        )
        .expect("insert invoice");
    }
    id
}

/// Every mapped table's rows, ordered by key.
pub(crate) fn dump(db: &Path) -> Vec<(String, Vec<Vec<Value>>)> {
    Db::open(db).expect("open db").dump_mapped_tables().expect("dump")
}

pub(crate) fn patient_field(db: &Path, id: &str, column: &str) -> Option<String> {
    app(db)
        .query_row(&format!("SELECT {column} FROM patients WHERE id = ?1"), [id], |r| r.get(0))
        .expect("query patient")
}

/// The events of a JSON run report with a given kind.
pub(crate) fn events_of<'a>(report: &'a serde_json::Value, kind: &str) -> Vec<&'a serde_json::Value> {
    report["events"].as_array().expect("events").iter().filter(|e| e["kind"] == kind).collect()
}

/// The path of a patient's file in the folder.
pub(crate) fn patient_file(folder: &Path, id: &str) -> PathBuf {
    let stem = clinicsync::model::patient_file_name(id);
    folder.join(clinicsync::folder::layout::patient_path(&stem))
}

/// Changes settings through the CLI.
pub(crate) fn set(db: &Path, assignments: &[&str]) {
    cli(db).arg("settings").args(assignments).assert().success();
}

/// Whether the app's `patients` table has this patient.
pub(crate) fn has_patient(db: &Path, id: &str) -> bool {
    app(db)
        .query_row("SELECT count(*) FROM patients WHERE id = ?1", [id], |r| r.get::<_, i64>(0))
        .expect("count")
        > 0
}

/// Copies a directory tree (a family's folder and databases) as it is.
pub(crate) fn copy_tree(from: &Path, to: &Path) {
    for entry in walkdir::WalkDir::new(from) {
        let entry = entry.unwrap();
        let target = to.join(entry.path().strip_prefix(from).unwrap());
        if entry.file_type().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Runs `sql` on the app's database with clinicsync's capture quiet: writes
/// that go past clinicsync, as a restore or a hand edit with the triggers
/// off would.
pub(crate) fn past_clinicsync(db: &Path, sql: &str) {
    app(db)
        .execute_batch(&format!("INSERT INTO _cs_quiet (x) VALUES (1); {sql}; DELETE FROM _cs_quiet;"))
        .unwrap();
}

/// The one number `sql` selects from the app's database.
pub(crate) fn count(db: &Path, sql: &str) -> i64 {
    app(db).query_row(sql, [], |r| r.get(0)).unwrap()
}
