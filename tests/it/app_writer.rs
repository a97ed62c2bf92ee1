//! The app keeps writing through its own connection while clinicsync syncs:
//! no write is lost and the app never sees "database is locked".

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use rusqlite::{Connection, params};

use crate::support::*;

#[test]
fn an_app_writing_in_a_loop_during_syncs_loses_nothing_and_is_never_locked_out() {
    let (_family, a, b) = two_sites();
    let seed = add_patient(&app(&a), 0, 5);
    sync_ok(&a);

    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicU32::new(0));
    let writer = {
        let stop = Arc::clone(&stop);
        let progress = Arc::clone(&progress);
        let db = a.clone();
        let seed = seed.clone();
        std::thread::spawn(move || -> Result<(u32, u32), String> {
            // A typical app's busy timeout: five seconds.
            let conn = Connection::open(&db).map_err(|e| e.to_string())?;
            conn.busy_timeout(Duration::from_secs(5)).map_err(|e| e.to_string())?;
            let mut inserted = 0u32;
            let mut last_note = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let n = inserted + 1;
                conn.execute(
                    "INSERT INTO patients (id, family_name) VALUES (?1, ?2)",
                    params![uuid(9, n), format!("Loop{n}")],
                )
                .map_err(|e| format!("insert {n} failed: {e}"))?;
                inserted = n;
                progress.store(n, Ordering::Relaxed);
                conn.execute(
                    "UPDATE patients SET notes = ?1 WHERE id = ?2",
                    params![format!("edit {n}"), seed],
                )
                .map_err(|e| format!("update {n} failed: {e}"))?;
                last_note = n;
                std::thread::sleep(Duration::from_millis(2));
            }
            Ok((inserted, last_note))
        })
    };
    // Sync while the app writes, until both have clearly overlapped: at
    // least four syncs and forty app writes (bounded, so it cannot hang).
    let started = std::time::Instant::now();
    let mut syncs = 0;
    while syncs < 4 || progress.load(Ordering::Relaxed) < 40 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the app and the syncs did not overlap in time"
        );
        let (code, report) = sync(&a);
        assert!(code == 0, "sync during app writes: {report:#}");
        syncs += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let (inserted, last_note) = writer.join().expect("writer thread").expect("the app never failed to write");
    assert!(inserted >= 40, "the writer made progress ({inserted} inserts)");

    sync_ok(&a);
    sync_ok(&b);
    let count: i64 = app(&b)
        .query_row("SELECT count(*) FROM patients WHERE family_name LIKE 'Loop%'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(count, i64::from(inserted), "every insert reached the other site");
    assert_eq!(patient_field(&b, &seed, "notes").unwrap(), format!("edit {last_note}"), "the last edit won");
    assert_eq!(dump(&a), dump(&b));
}
