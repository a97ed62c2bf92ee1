//! `clinicsync demo`: a family of two sites (a front desk and a laptop on
//! home visits) with fixture patients, edited on both sides, synced, and
//! checked for convergence. Everything it builds stays in DIR to look at.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use rusqlite::{Connection, params};
use serde_json::json;

use crate::db::{Db, REFERENCE_SCHEMA};
use crate::engine::{self, InitOptions, Outcome, SyncOptions};
use crate::model::short_id;

const PATIENTS: &str = include_str!("../../fixtures/demo/patients.csv");
const MARKER: &str = ".clinicsync-demo";

/// Splits one fixture line on commas; `\,` is a comma and `\n` a newline.
fn fields(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('n') => out.last_mut().expect("never empty").push('\n'),
                Some(other) => out.last_mut().expect("never empty").push(other),
                None => {}
            },
            ',' => out.push(String::new()),
            c => out.last_mut().expect("never empty").push(c),
        }
    }
    out
}

/// A child row id derived from the patient's UUID (deterministic fixtures).
fn child_id(patient: &str, kind: u8, n: u8) -> String {
    format!("{}0000{}{kind:x}{n:03x}", &patient[..24], &patient[32..])
}

fn seed_front_desk(path: &Path) -> anyhow::Result<usize> {
    let mut conn = Connection::open(path)?;
    conn.execute_batch(REFERENCE_SCHEMA)?;
    let tx = conn.transaction()?;
    let mut count = 0;
    for line in PATIENTS.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let f = fields(line);
        if f.len() != 8 {
            bail!("the demo fixture line {line:?} does not have 8 fields");
        }
        let email = if f[6].is_empty() { None } else { Some(&f[6]) };
        tx.execute(
            "INSERT INTO patients (id, family_name, given_name, birth_date, sex, phone, email, address, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, '2026-11-01T09:00:00Z')",
            params![f[0], f[1], f[2], f[3], f[4], f[5], email, f[7]],
        )?;
        for n in 0..2u8 {
            tx.execute(
                "INSERT INTO appointments (id, patient_id, starts_at, duration_min, practitioner, status)
                 VALUES (?1, ?2, ?3, ?4, 'Dr Shah', 'booked')",
                params![
                    child_id(&f[0], 1, n),
                    f[0],
                    format!("2026-12-{:02}T{:02}:30:00Z", 1 + count % 20, 9 + n),
                    15 + 15 * n as i64
                ],
            )?;
        }
        tx.execute(
            "INSERT INTO clinical_notes (id, patient_id, written_at, author, body) VALUES (?1, ?2, '2026-11-02T10:00:00Z', 'Dr Shah', ?3)",
            params![child_id(&f[0], 2, 0), f[0], format!("Reviewed {} {}.\r\nNo change to medication.", f[2], f[1])],
        )?;
        tx.execute(
            "INSERT INTO invoices (id, patient_id, issued_at, amount_cents, currency, status) VALUES (?1, ?2, '2026-11-03', ?3, 'GBP', 'open')",
            params![child_id(&f[0], 3, 0), f[0], 4_500 + 250 * count as i64],
        )?;
        count += 1;
    }
    tx.commit()?;
    Ok(count)
}

/// The demo's document: a short referral letter.
const REFERRAL_LETTER: &str = "Referral to Dermatology\n\nDear colleague,\n\nPlease see Adaeze, who has had a changing mole on the left forearm for three months.\n\nKind regards,\nDr. Okafor, Front desk practice\n";

fn sync_quiet(db: &Path) -> anyhow::Result<engine::RunReport> {
    let report = engine::sync(db, &SyncOptions { trigger: "demo".into(), ..SyncOptions::default() })?;
    if report.outcome == Outcome::Failed {
        bail!("the demo sync of {} failed: {}", db.display(), report.error.unwrap_or_default());
    }
    Ok(report)
}

pub(super) fn run(dir: &Path, json_out: bool) -> anyhow::Result<ExitCode> {
    if dir.exists() {
        let is_demo = dir.join(MARKER).exists();
        let empty = std::fs::read_dir(dir).map(|mut d| d.next().is_none()).unwrap_or(false);
        if !is_demo && !empty {
            bail!("{} exists and is not a clinicsync demo; choose another directory", dir.display());
        }
        std::fs::remove_dir_all(dir)
            .with_context(|| format!("cannot clear the old demo in {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(
        dir.join(MARKER),
        "clinicsync demo directory; `clinicsync demo` may delete and rebuild it\n",
    )?;
    let folder = dir.join("shared-folder");
    let front = dir.join("front-desk.db");
    let home = dir.join("home-visits.db");
    let front_docs = dir.join("front-desk-documents");
    let home_docs = dir.join("home-visits-documents");
    for docs in [&front_docs, &home_docs] {
        std::fs::create_dir_all(docs).with_context(|| format!("cannot create {}", docs.display()))?;
    }
    let say = |line: String| {
        if !json_out {
            say!("{line}");
        }
    };

    let patients = seed_front_desk(&front)?;
    say(format!(
        "Front desk: a clinic database with {patients} patients, their appointments, notes and invoices."
    ));
    let a = engine::init(&InitOptions {
        db: front.clone(),
        folder: folder.clone(),
        site_name: Some("Front desk".into()),
        documents_folder: Some(front_docs.clone()),
        ..InitOptions::default()
    })?;
    say(format!(
        "Front desk: created sync family {} and exported {} rows to the shared folder.",
        short_id(&a.family),
        a.first_run.counts.exported_rows
    ));
    let b = engine::init(&InitOptions {
        db: home.clone(),
        folder: folder.clone(),
        site_name: Some("Home visits".into()),
        documents_folder: Some(home_docs.clone()),
        ..InitOptions::default()
    })?;
    let seeded = &b.first_run.counts;
    say(format!(
        "Home visits: joined the family and seeded {} rows from the front desk's change-log ({} segment{}).",
        seeded.rows_applied,
        seeded.segments_applied,
        if seeded.segments_applied == 1 { "" } else { "s" }
    ));

    // Both sites now change things before either syncs again.
    let first = "0b7e4c1a-2f3d-4e5a-8b6c-1d2e3f4a5b01";
    let second = "0b7e4c1a-2f3d-4e5a-8b6c-1d2e3f4a5b02";
    let third = "0b7e4c1a-2f3d-4e5a-8b6c-1d2e3f4a5b03";
    let fc = Connection::open(&front)?;
    fc.execute("UPDATE patients SET phone = '+44 20 7946 0999' WHERE id = ?1", [first])?;
    fc.execute("UPDATE patients SET address = '14 Harbour Lane\nWhitby YO21 3PU' WHERE id = ?1", [second])?;
    fc.execute(
        "INSERT INTO patients (id, family_name, given_name, birth_date) VALUES ('0b7e4c1a-2f3d-4e5a-8b6c-1d2e3f4a5b21', 'Novak', 'Petra', '1993-05-17')",
        [],
    )?;
    // A referral letter: the row, and its file in the documents folder.
    let letter = "referrals/referral-dermatology.txt";
    std::fs::create_dir_all(front_docs.join("referrals"))?;
    std::fs::write(front_docs.join(letter), REFERRAL_LETTER)?;
    fc.execute(
        "INSERT INTO documents (id, patient_id, file_name, mime_type, byte_size, added_at) VALUES ('0b7e4c1a-2f3d-4e5a-8b6c-1d2e3f4a5d01', ?1, ?2, 'text/plain', ?3, '2026-11-20T09:30:00Z')",
        params![first, letter, REFERRAL_LETTER.len() as i64],
    )?;
    let hc = Connection::open(&home)?;
    hc.execute("UPDATE patients SET email = 'adaeze@example.net' WHERE id = ?1", [first])?;
    hc.execute(
        "UPDATE patients SET address = 'Harbour View Care Home\nWhitby YO21 3PU' WHERE id = ?1",
        [second],
    )?;
    hc.execute(
        "INSERT INTO clinical_notes (id, patient_id, written_at, author, body) VALUES (?1, ?2, '2026-11-20T15:10:00Z', 'Nurse Reid', 'Home visit: wound healing well.')",
        params![child_id(third, 2, 1), third],
    )?;
    drop((fc, hc));
    say("Front desk changed a phone number and an address, added a patient and filed a referral letter; Home visits, offline, changed the same patient's email, the same address, and wrote a note.".into());

    let r1 = sync_quiet(&front)?;
    let r2 = sync_quiet(&home)?;
    let r3 = sync_quiet(&front)?;
    say(format!(
        "Synced front desk, home visits, front desk: {}; {}; {}.",
        r1.outcome.as_str(),
        r2.outcome.as_str(),
        r3.outcome.as_str()
    ));

    let front_db = Db::open(&front)?;
    let home_db = Db::open(&home)?;
    let left = front_db.dump_mapped_tables()?;
    let right = home_db.dump_mapped_tables()?;
    let letter_arrived =
        std::fs::read(home_docs.join(letter)).ok().as_deref() == Some(REFERRAL_LETTER.as_bytes());
    let converged = left == right && letter_arrived;
    let rows: usize = left.iter().map(|(_, rows)| rows.len()).sum();
    let conflicts = front_db.conflicts(true)?;
    let home_conflicts = home_db.open_conflict_count()?;
    if json_out {
        say!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "converged": converged,
                "rows": rows,
                "tables": left.iter().map(|(t, r)| json!({"table": t, "rows": r.len()})).collect::<Vec<_>>(),
                "open_conflicts": { "front_desk": conflicts.len(), "home_visits": home_conflicts },
                "document_arrived": letter_arrived,
                "folder": folder.display().to_string(),
                "databases": [front.display().to_string(), home.display().to_string()],
            }))?
        );
    } else if converged {
        let per_table: Vec<String> = left.iter().map(|(t, r)| format!("{} {t}", r.len())).collect();
        say!("Converged: both sites hold the same {rows} rows ({}).", per_table.join(", "));
        say!(
            "The referral letter filed at the front desk is in {} byte for byte (checked by its sha256 and CRC32 on every copy).",
            home_docs.join(letter).display()
        );
        for c in &conflicts {
            say!(
                "Both sites edited {}.{} of the same patient at once: both now show {:?}; the other value {:?} is kept for review ({} open conflict at each site).",
                c.table,
                c.column,
                c.winner_value.display_short(),
                c.value.display_short(),
                home_conflicts
            );
        }
        // Paths as this system writes them (a backslash on Windows).
        let at = |name: &str| dir.join(name).display().to_string();
        let (shared, front, home) = (at("shared-folder"), at("front-desk.db"), at("home-visits.db"));
        say!("Look at:");
        say!("  {shared}                the folder a cloud client would carry");
        say!("  clinicsync status --db {front}");
        say!("  clinicsync log --db {home}");
        say!("  clinicsync conflicts --db {front}");
        say!(
            "  clinicsync run --db {front}     the service and its web page (Status, Sync Now, Latest Logs, Conflicts, Settings)"
        );
    } else {
        say!("NOT converged: the two sites differ. This is a bug; please report it with {}.", dir.display());
    }
    Ok(if converged { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
