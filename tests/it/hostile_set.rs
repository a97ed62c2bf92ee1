//! The hostile folder set: every item in `fixtures/hostile/` (a file body
//! and where it goes) and every item this test makes at run time (FIFOs,
//! links, oversized and pathological files) is put into a real family's
//! folder, and a real `clinicsync sync --full-scan` runs over it. Each must
//! end with its exact sentence (`expect:` in the case; UPDATE_EXPECT=1
//! rewrites them after a deliberate change), within a time bound, under
//! the memory ceiling, with nothing of the file applied and no control
//! character reaching the terminal.
//!
//! A case file is a `#` line saying what it is, `at:` (the path in the
//! folder), optional `seal: no` (the body carries its own trailer, or
//! none) and `exit:` (the run's exit code, 3 unless said), `expect:`, a
//! line `---`, and the body. Placeholders: `{A}` this site, `{B}` the
//! other site, `{U}` a site with no site file, `{FAMILY}`, `{P}` the
//! patient, `{STEM}` and `{SHARD}` its file's name and shard, `{NEXT}` the
//! other site's next segment number (10 digits, `{SEQ}` as a number; its
//! segment is already in the folder and unread here), `{HB}` a stamp of the other site from now,
//! `{HA}` a stamp of this site's id from after its clock, `{HF}` a stamp
//! of the other site from the year 2100.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use clinicsync::xmlstore::seal;
use rusqlite::Connection;

use crate::support::*;

/// A run over any folder stays under this much resident memory
/// (ARCHITECTURE.md, "no run's memory grows with what the folder holds").
const CEILING_KIB: u64 = 160 * 1024;
/// A run over one hostile item ends well within this (a hang fails).
const TIME_BOUND: Duration = Duration::from_secs(60);

/// A family made once, in two states: in `pending`, site B has one more
/// segment in the folder that site A has not read yet (the segment cases
/// replace it); in `clean`, A has read everything.
pub(crate) struct Template {
    pending: tempfile::TempDir,
    clean: tempfile::TempDir,
    pub(crate) vars: BTreeMap<&'static str, String>,
}

pub(crate) fn template() -> &'static Template {
    static T: OnceLock<Template> = OnceLock::new();
    T.get_or_init(|| {
        let (family, a, b) = two_sites();
        let patient = add_patient(&app(&b), 1, 2);
        sync_ok(&b);
        sync_ok(&a);
        // B's next segment; its patient file goes back to what A has read,
        // so that only the segment tells of the change.
        let file = patient_file(&family.folder(), &patient);
        let read_by_a = fs::read(&file).unwrap();
        app(&b).execute("UPDATE patients SET phone = '+1 555 0142' WHERE id = ?1", [&patient]).unwrap();
        let report = sync_ok(&b);
        assert!(report["counts"]["segments_written"].as_u64().unwrap() >= 1, "{report:#}");
        fs::write(&file, read_by_a).unwrap();
        let status_a = json_of(&a, &["status"]);
        let status_b = json_of(&b, &["status"]);
        let site_a = status_a["site"].as_str().unwrap().to_owned();
        let site_b = status_b["site"].as_str().unwrap().to_owned();
        let log_b = family.folder().join("log").join(&site_b);
        let next = fs::read_dir(&log_b)
            .unwrap()
            .filter_map(|e| {
                e.unwrap().file_name().to_str().and_then(|n| n.strip_suffix(".xml")?.parse::<u64>().ok())
            })
            .max()
            .unwrap();
        let manifest = fs::read_to_string(family.folder().join("clinicsync.xml")).unwrap();
        let family_id = manifest.split("family=\"").nth(1).unwrap()[..32].to_owned();
        let stem = clinicsync::model::patient_file_name(&patient);
        let shard = clinicsync::folder::layout::patient_path(&stem).split('/').nth(1).unwrap().to_owned();
        let now_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        let stamp = |wall: u64, site: &str| format!("{wall:012x}0000{site}");
        let mut vars = BTreeMap::new();
        vars.insert("{A}", site_a.clone());
        vars.insert("{B}", site_b.clone());
        vars.insert("{U}", "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a".to_owned());
        vars.insert("{FAMILY}", family_id);
        vars.insert("{P}", patient);
        vars.insert("{STEM}", stem);
        vars.insert("{SHARD}", shard);
        vars.insert("{NEXT}", format!("{next:010}"));
        vars.insert("{SEQ}", next.to_string());
        vars.insert("{HB}", stamp(now_ms - 60_000, &site_b));
        // A minute ahead: beyond this site's own clock (only a forger
        // stamps with its id), within the skew allowed to another site.
        vars.insert("{HA}", stamp(now_ms + 60_000, &site_a));
        vars.insert("{HF}", stamp(4_102_444_800_000, &site_b));
        // Sentences name sites and families by their first 8 digits.
        for (short, long) in [("{A8}", "{A}"), ("{B8}", "{B}"), ("{U8}", "{U}"), ("{FAMILY8}", "{FAMILY}")] {
            let id = vars[long][..8].to_owned();
            vars.insert(short, id);
        }
        let clean = tempfile::tempdir().unwrap();
        copy_tree(family.dir.path(), clean.path());
        point_at_own_folder(clean.path());
        sync_ok(&clean.path().join("a.db"));
        Template { pending: family.dir, clean, vars }
    })
}

/// One case's own copy of the family.
pub(crate) struct Scene {
    dir: tempfile::TempDir,
}

impl Scene {
    /// For an item at `path`: a segment case replaces the unread segment.
    pub(crate) fn for_item(path: &str) -> Scene {
        let t = template();
        let from = if path.contains("{NEXT}") { &t.pending } else { &t.clean };
        let dir = tempfile::tempdir().unwrap();
        copy_tree(from.path(), dir.path());
        point_at_own_folder(dir.path());
        Scene { dir }
    }
    pub(crate) fn folder(&self) -> PathBuf {
        self.dir.path().join("shared")
    }
    pub(crate) fn db(&self) -> PathBuf {
        self.dir.path().join("a.db")
    }
}

/// A copied family's site A syncs with the copied folder, not the original.
fn point_at_own_folder(dir: &Path) {
    set(&dir.join("a.db"), &[&format!("folder={}", dir.join("shared").display())]);
}

pub(crate) fn fill(text: &str) -> String {
    template().vars.iter().fold(text.to_owned(), |t, (k, v)| t.replace(k, v))
}

/// The other way: ids and stamps back to their placeholders, so that an
/// expected sentence does not depend on the run.
fn unfill(text: &str) -> String {
    let mut vars: Vec<(&&str, &String)> =
        template().vars.iter().filter(|(k, _)| !["{NEXT}", "{SEQ}", "{SHARD}"].contains(k)).collect();
    // Longest first: a stamp holds a site's id.
    vars.sort_by_key(|(_, v)| std::cmp::Reverse(v.len()));
    vars.into_iter().fold(text.to_owned(), |t, (k, v)| t.replace(v.as_str(), k))
}

pub(crate) type Holdings =
    (Vec<(String, Vec<Vec<clinicsync::model::Value>>)>, Vec<(String, String, i64, Vec<u8>)>);

/// What the database holds: the app's rows and clinicsync's state.
pub(crate) fn holdings(db: &Path) -> Holdings {
    let conn = Connection::open(db).unwrap();
    let state = conn
        .prepare("SELECT tbl, pk, cl, state FROM _cs_rows ORDER BY tbl, pk")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    (dump(db), state)
}

/// What a run over a hostile item did.
struct Outcome {
    code: i32,
    sentence: String,
    elapsed: Duration,
}

/// A finished run over a folder item, after the checks every run passes.
pub(crate) struct Ran {
    pub(crate) code: i32,
    pub(crate) report: serde_json::Value,
    pub(crate) elapsed: Duration,
}

impl Ran {
    /// The events that name `path` (or a folder holding it).
    pub(crate) fn events_naming<'a>(
        &'a self,
        path: &'a str,
    ) -> impl Iterator<Item = &'a serde_json::Value> + 'a {
        self.report["events"].as_array().expect("events").iter().filter(move |e| {
            e["path"].as_str().is_some_and(|p| p == path || path.starts_with(&format!("{p}/")))
        })
    }
}

/// Runs a full-scan sync at site A over the scene and checks what holds
/// for every run, whatever the folder holds: it ends in time with a known
/// exit code and a report, stays under the memory ceiling, and neither
/// the run's report nor Latest Logs nor `status` prints a control
/// character.
pub(crate) fn run_bounded(scene: &Scene, path: &str) -> Ran {
    let db = scene.db();
    let started = Instant::now();
    let out = cli(&db)
        .args(["sync", "--full-scan", "--json"])
        .timeout(TIME_BOUND)
        .output()
        .expect("run clinicsync");
    let elapsed = started.elapsed();
    let code = out.status.code().unwrap_or_else(|| panic!("{path}: the run did not finish (hung?)"));
    assert!(
        code == 1 || code == 3 || code == 0,
        "{path}: exit {code}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{path}: no JSON report ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    let peak = report["peak_rss_kib"].as_u64().expect("the report gives the run's peak memory");
    assert!(peak < CEILING_KIB, "{path}: the run peaked at {peak} KiB, over the ceiling");
    // The same run in text, and Latest Logs: no raw control character.
    for args in [&["log"][..], &["status"]] {
        let text = cli(&db).args(args).timeout(TIME_BOUND).output().expect("run clinicsync");
        let shown = String::from_utf8_lossy(&text.stdout);
        assert!(
            !shown.chars().any(|c| c.is_control() && c != '\n'),
            "{path}: `{}` printed a control character: {shown:?}",
            args[0]
        );
    }
    Ran { code, report, elapsed }
}

/// Runs over a hostile item ([`run_bounded`]) and checks that it changed
/// nothing in the database and left the item itself as it was (when it is
/// a file). Returns the sentence about `path`: the message of the first
/// event naming it (or its folder), or the run's error.
fn run_over(scene: &Scene, path: &str) -> Outcome {
    let db = scene.db();
    let before = holdings(&db);
    let item = scene.folder().join(path);
    let item_bytes =
        fs::symlink_metadata(&item).ok().filter(|m| m.is_file()).map(|_| fs::read(&item).unwrap());
    let ran = run_bounded(scene, path);
    let report = &ran.report;
    assert!(holdings(&db) == before, "{path}: the database changed: {}", report["events"]);
    if let Some(bytes) = item_bytes {
        assert!(fs::read(&item).is_ok_and(|now| now == bytes), "{path}: the item was overwritten or removed");
    }
    let sentence = ran
        .events_naming(path)
        .next()
        .map(|e| format!("{}: {}", e["kind"].as_str().unwrap(), e["message"].as_str().unwrap()))
        .or_else(|| report["error"].as_str().map(|e| format!("error: {e}")))
        .unwrap_or_else(|| panic!("{path}: no sentence names it: {report:#}"));
    let sentence = sentence.replace(&scene.folder().display().to_string(), "{FOLDER}");
    Outcome { code: ran.code, sentence: unfill(&without_clock_gap(&sentence)), elapsed: ran.elapsed }
}

/// "site X's clock is 73years 27days ahead of this computer's": the gap
/// depends on today's date.
fn without_clock_gap(sentence: &str) -> String {
    match (sentence.find("'s clock is "), sentence.find(" ahead of this computer's")) {
        (Some(from), Some(to)) if from < to => {
            format!("{}'s clock is {{AHEAD}}{}", &sentence[..from], &sentence[to..])
        }
        _ => sentence.to_owned(),
    }
}

/// "the stamp 01a23d4ec2900000{B}": the time part of a stamp the test
/// did not make depends on when it ran.
fn without_stamp_time(sentence: &str) -> String {
    match sentence.find("the stamp ") {
        Some(at)
            if sentence[at + 10..].len() > 16
                && sentence[at + 10..at + 26].bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            format!("{}the stamp {{TIME}}{}", &sentence[..at], &sentence[at + 26..])
        }
        _ => sentence.to_owned(),
    }
}

struct Case {
    name: String,
    file: PathBuf,
    header: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Case {
    fn get(&self, key: &str) -> Option<&str> {
        self.header.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

fn cases() -> Vec<Case> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/hostile");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "case"))
        .map(|file| {
            let bytes = fs::read(&file).unwrap();
            let split = bytes.windows(5).position(|w| w == b"\n---\n").expect("a --- line");
            let head = std::str::from_utf8(&bytes[..split]).unwrap();
            let header = head
                .lines()
                .filter(|l| !l.starts_with('#'))
                .map(|l| {
                    let (k, v) = l.split_once(": ").unwrap_or_else(|| panic!("{}: {l}", file.display()));
                    (k.to_owned(), v.to_owned())
                })
                .collect();
            let name = file.file_stem().unwrap().to_string_lossy().into_owned();
            Case { name, header, body: bytes[split + 5..].to_vec(), file }
        })
        .collect()
}

/// Puts `body` at `path` in the scene (sealed unless `sealed` is false).
fn place(scene: &Scene, path: &str, body: &[u8], sealed: bool) {
    let body = fill(&String::from_utf8_lossy(body)).into_bytes();
    let target = scene.folder().join(path);
    fs::create_dir_all(target.parent().unwrap()).unwrap();
    fs::write(&target, if sealed { seal(body) } else { body }).unwrap();
}

#[test]
fn every_hostile_item_is_refused_with_its_sentence_in_time_and_memory_and_nothing_of_it_applied() {
    let update = std::env::var_os("UPDATE_EXPECT").is_some();
    let cases = cases();
    assert!(cases.len() >= 30, "only {} cases in fixtures/hostile", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let at = case.get("at").unwrap_or_else(|| panic!("{}: no at:", case.name));
        eprintln!("case {}", case.name);
        let scene = Scene::for_item(at);
        let path = fill(at);
        place(&scene, &path, &case.body, case.get("seal") != Some("no"));
        let outcome = run_over(&scene, &path);
        let exit: i32 = case.get("exit").map_or(3, |e| e.parse().unwrap());
        if outcome.code != exit {
            failures.push(format!("{}: exit {} (expected {exit})", case.name, outcome.code));
        }
        if update {
            let text = fs::read(&case.file).unwrap();
            let text = String::from_utf8_lossy(&text);
            let old = format!("expect: {}", case.get("expect").unwrap_or(""));
            let new = format!("expect: {}", outcome.sentence);
            let updated = if case.get("expect").is_some() {
                text.replacen(&old, &new, 1)
            } else {
                text.replacen("\n---\n", &format!("\n{new}\n---\n"), 1)
            };
            fs::write(&case.file, updated).unwrap();
        } else if case.get("expect") != Some(outcome.sentence.as_str()) {
            failures.push(format!(
                "{}:\n  expected {:?}\n  got      {:?}",
                case.name,
                case.get("expect"),
                outcome.sentence
            ));
        }
        assert!(outcome.elapsed < TIME_BOUND, "{}", case.name);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A valid patient file of the family's patient with `rows` note rows of
/// `fields` fields each, stamped by the other site.
fn big_patient_file(rows: usize, fields: usize, value: &str) -> Vec<u8> {
    let t = template();
    let (p, hb) = (&t.vars["{P}"], &t.vars["{HB}"]);
    let mut body =
        format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<patient-file format=\"1\" patient=\"{p}\">\n");
    for i in 0..rows {
        body.push_str(&format!("  <row table=\"clinical_notes\" pk=\"n{i:08}\" cl=\"1\" h=\"{hb}\">\n"));
        for f in 0..fields {
            body.push_str(&format!("    <f c=\"c{f:02}\" t=\"text\">{value}</f>\n"));
        }
        body.push_str("  </row>\n");
    }
    body.push_str("</patient-file>\n");
    seal(body.into_bytes())
}

/// Items no fixture can hold: FIFOs, links, files too large to keep in
/// the repository, names that are not UTF-8. Each is made here, then run
/// over like the fixtures.
#[test]
fn hostile_items_made_at_run_time_are_refused_with_their_sentence_in_time_and_memory() {
    use std::os::unix::ffi::OsStrExt as _;
    use std::os::unix::fs::symlink;
    let mkfifo = |at: &Path| {
        let status = std::process::Command::new("mkfifo").arg(at).status().expect("run mkfifo");
        assert!(status.success());
    };
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret.xml");
    fs::write(&secret, b"not for the folder").unwrap();
    type Make = Box<dyn Fn(&Path)>;
    // What it is, where it goes, how it is made, its sentence, the exit.
    let cases: Vec<(&str, &str, Make, &str, i32)> = vec![
        (
            "a FIFO in place of the other site's next segment",
            "log/{B}/{NEXT}.xml",
            Box::new(move |at: &Path| {
                fs::remove_file(at).unwrap();
                mkfifo(at);
            }),
            "skipped: was not applied: it is a FIFO (a named pipe), not a regular file; clinicsync does not open it; will retry",
            3,
        ),
        (
            "a FIFO in place of a patient file",
            "patients/{SHARD}/{STEM}.xml",
            Box::new(move |at: &Path| {
                fs::remove_file(at).unwrap();
                mkfifo(at);
            }),
            "skipped: was not applied: it is a FIFO (a named pipe), not a regular file; clinicsync does not open it; will retry",
            3,
        ),
        (
            "a link from a patient file to a file outside the folder",
            "patients/{SHARD}/{STEM}.xml",
            Box::new({
                let secret = secret.clone();
                move |at: &Path| {
                    fs::remove_file(at).unwrap();
                    symlink(&secret, at).unwrap();
                }
            }),
            "skipped: was not applied: it is a link, not a regular file; clinicsync does not open it; will retry",
            3,
        ),
        (
            "a link from the next segment to /dev/zero",
            "log/{B}/{NEXT}.xml",
            Box::new(|at: &Path| {
                fs::remove_file(at).unwrap();
                symlink("/dev/zero", at).unwrap();
            }),
            "skipped: was not applied: it is a link, not a regular file; clinicsync does not open it; will retry",
            3,
        ),
        (
            "a patient file one byte over the size limit",
            "patients/{SHARD}/{STEM}.xml",
            Box::new(|at: &Path| {
                let mut file = big_patient_file(1, 1, &"x".repeat(8 << 20));
                file.resize((16 << 20) + 1, b'\n');
                fs::write(at, file).unwrap();
            }),
            "skipped: was not applied: it is 16777217 bytes, over the 16777216-byte limit; will retry",
            3,
        ),
        (
            "a patient file with more than 150,000 elements",
            "patients/{SHARD}/{STEM}.xml",
            Box::new(|at: &Path| fs::write(at, big_patient_file(5_000, 30, "")).unwrap()),
            "skipped: was not applied: line 154840: it has more than 150000 elements; will retry once it is repaired or replaced",
            3,
        ),
        (
            "a patient file with 25,001 rows",
            "patients/{SHARD}/{STEM}.xml",
            Box::new(|at: &Path| fs::write(at, big_patient_file(25_001, 1, "")).unwrap()),
            "skipped: was not applied: line 75005: it has more than 25000 rows; will retry once it is repaired or replaced",
            3,
        ),
        (
            "a value one byte over the 8 MiB limit",
            "patients/{SHARD}/{STEM}.xml",
            Box::new(|at: &Path| fs::write(at, big_patient_file(1, 1, &"x".repeat((8 << 20) + 1))).unwrap()),
            "skipped: was not applied: line 4: a text is longer than the 8388608-byte limit; will retry once it is repaired or replaced",
            3,
        ),
        (
            "a patient file with another value under a stamp this site holds",
            "patients/{SHARD}/{STEM}.xml",
            Box::new(|at: &Path| {
                let file = fs::read(at).unwrap();
                let body = String::from_utf8(clinicsync::xmlstore::unseal(&file).unwrap().to_vec()).unwrap();
                assert!(body.contains(">+1 555 0142<"), "{body}");
                fs::write(at, seal(body.replace(">+1 555 0142<", ">+1 555 0143<").into_bytes())).unwrap();
            }),
            "skipped: could not be applied to the database, nothing of it was kept: it holds a version of patients {P} field phone under the stamp {TIME}{B} that differs from the version this database has under it; one edit has one stamp, so one of the two copies was damaged or forged",
            3,
        ),
        (
            "100,000 attributes on one element (quadratic to check for duplicates)",
            "log/{B}/{NEXT}.xml",
            Box::new(|at: &Path| {
                let t = template();
                let attrs: String = (0..100_000).map(|i| format!(" a{i}=\"1\"")).collect();
                let body = format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<segment format=\"1\" site=\"{}\" seq=\"{}\" created=\"2026-12-01T10:00:00.000Z\"{attrs}>\n</segment>\n",
                    t.vars["{B}"], t.vars["{SEQ}"]
                );
                fs::write(at, seal(body.into_bytes())).unwrap();
            }),
            "skipped: was not applied: line 2: an element has more than 32 attributes, which clinicsync never writes; will retry once it is repaired or replaced; the site's later changes wait for it",
            3,
        ),
    ];
    let mut failures = Vec::new();
    for (what, at, make, expected, exit) in &cases {
        let scene = Scene::for_item(at);
        let path = fill(at);
        make(&scene.folder().join(&path));
        let mut outcome = run_over(&scene, &path);
        outcome.sentence = without_stamp_time(&outcome.sentence);
        if outcome.sentence != *expected || outcome.code != *exit {
            failures.push(format!("{what}: exit {}, {:?}", outcome.code, outcome.sentence));
        }
    }
    // A conflict copy whose name is not UTF-8 and holds an ESC: read (not
    // passed over for its name), refused for what it holds, and named in
    // Latest Logs with its control characters shown, not sent.
    let scene = Scene::for_item("patients/{SHARD}/{STEM}.xml");
    let dir = scene.folder().join(fill("patients/{SHARD}"));
    let mut name = fill("{STEM} (\u{1b}]0;x\u{7}'s conflicted copy ").into_bytes();
    name.extend_from_slice(b"\xff).xml");
    let copy = dir.join(std::ffi::OsStr::from_bytes(&name));
    fs::write(&copy, b"<html>not a patient</html>").unwrap();
    let (code, report) = sync_with(&scene.db(), &["--full-scan"]);
    let skipped = events_of(&report, "skipped");
    assert!(
        code == 3
            && skipped.iter().any(|e| {
                e["path"].as_str().is_some_and(|p| p.contains("conflicted copy"))
                    && e["message"].as_str().is_some_and(|m| m.contains("integrity trailer"))
            }),
        "{report:#}"
    );
    let log = cli(&scene.db()).arg("log").output().unwrap();
    let log = String::from_utf8_lossy(&log.stdout);
    assert!(log.contains("conflicted copy") && !log.chars().any(|c| c.is_control() && c != '\n'), "{log:?}");
    assert!(fs::read(&secret).unwrap() == b"not for the folder");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
