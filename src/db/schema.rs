//! clinicsync's own tables (all prefixed `_cs_`) and the capture triggers it
//! installs on every mapped table.

use rusqlite::Connection;

use super::mapping::Mapping;

/// The capture tables: the triggers fill `_cs_pending`, and stay quiet
/// while `_cs_quiet` holds a row.
pub(super) const CAPTURE: &str = "
-- Holds a row only inside clinicsync's own write transactions: the capture
-- triggers stay quiet while it does, so applied changes never echo back.
CREATE TABLE IF NOT EXISTS _cs_quiet (x INTEGER);
-- Filled by the triggers: which rows the app touched since the last export,
-- and when (ms since the epoch, by the computer's clock as the app wrote).
CREATE TABLE IF NOT EXISTS _cs_pending (id INTEGER PRIMARY KEY, tbl TEXT, pk TEXT, at_ms INTEGER);
CREATE INDEX IF NOT EXISTS _cs_pending_row ON _cs_pending (tbl, pk);
";

/// Every table clinicsync keeps in the app's database, in the order they
/// are made: a table's name, and the SQL that makes it (with its indexes
/// and the tables made with it), from the module that owns the table. `init`
/// makes them all; `open` makes those a database set up by an earlier
/// version lacks.
pub(super) const TABLES: &[(&str, &str)] = &[
    ("_cs_meta", super::meta::TABLE),
    ("_cs_quiet", CAPTURE),
    ("_cs_rows", super::state::TABLE),
    ("_cs_outbox", super::outbox::TABLE),
    ("_cs_unprojected", super::project::TABLE),
    ("_cs_watermarks", super::watermarks::TABLE),
    ("_cs_conflicts", super::records::TABLE),
    ("_cs_runs", super::runs::TABLE),
    ("_cs_files", super::files::TABLE),
    ("_cs_copies", super::copies::TABLE),
    ("_cs_held", super::held::TABLE),
    ("_cs_history", super::history::TABLE),
    ("_cs_purged", super::purge::TABLES),
    ("_cs_digests", super::digests::TABLE),
    ("_cs_dirs", super::dirs::TABLE),
    ("_cs_doc_files", super::documents::TABLE),
];

/// Columns added to a table after the state format was frozen: (table,
/// column, the SQL that adds it). `open` adds those a database lacks.
const COLUMNS_ADDED: &[(&str, &str, &str)] = &[
    ("_cs_conflicts", "kind", "ALTER TABLE _cs_conflicts ADD COLUMN kind TEXT NOT NULL DEFAULT 'edit'"),
    (
        "_cs_outbox",
        "from_row",
        "ALTER TABLE _cs_outbox ADD COLUMN from_row INTEGER; ALTER TABLE _cs_outbox ADD COLUMN to_row INTEGER",
    ),
    ("_cs_purged", "base", "ALTER TABLE _cs_purged ADD COLUMN base TEXT"),
    ("_cs_files", "file_id", "ALTER TABLE _cs_files ADD COLUMN file_id INTEGER"),
];

/// Indexes added to a table after it was first made: (index, the SQL of its
/// table, which makes what is missing). `open` makes those a database lacks.
const INDEXES_ADDED: &[(&str, &str)] = &[
    ("_cs_outbox_undone", super::outbox::TABLE),
    ("_cs_outbox_unwritten", super::outbox::TABLE),
    ("_cs_runs_ok", super::runs::TABLE),
];

/// clinicsync's triggers and tables in the database: (triggers, tables).
pub(super) fn own_objects(conn: &Connection) -> rusqlite::Result<(Vec<String>, Vec<String>)> {
    let list = |kind: &str| -> rusqlite::Result<Vec<String>> {
        conn.prepare(r"SELECT name FROM sqlite_master WHERE type = ?1 AND name LIKE '\_cs\_%' ESCAPE '\' ORDER BY name")?
            .query_map([kind], |r| r.get(0))?
            .collect()
    };
    Ok((list("trigger")?, list("table")?))
}

/// Removes clinicsync's triggers and tables (their indexes go with them),
/// all or nothing; the app's tables are not touched.
pub(super) fn remove_own(conn: &Connection) -> rusqlite::Result<()> {
    let (triggers, tables) = own_objects(conn)?;
    let tx = conn.unchecked_transaction()?;
    for t in &triggers {
        tx.execute_batch(&format!("DROP TRIGGER IF EXISTS {}", quote(t)))?;
    }
    for t in &tables {
        tx.execute_batch(&format!("DROP TABLE IF EXISTS {}", quote(t)))?;
    }
    tx.commit()
}

/// Makes every table (a new database).
pub(super) fn create_all(conn: &Connection) -> rusqlite::Result<()> {
    TABLES.iter().try_for_each(|(_, sql)| conn.execute_batch(sql))
}

/// Makes the tables, columns and indexes a database set up by an earlier
/// version lacks.
pub(super) fn create_missing(conn: &Connection) -> rusqlite::Result<()> {
    for (table, sql) in TABLES {
        let present: bool =
            conn.query_row("SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = ?1)", [table], |r| {
                r.get(0)
            })?;
        if !present {
            conn.execute_batch(sql)?;
        }
    }
    for (table, column, sql) in COLUMNS_ADDED {
        let present: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2)",
            [table, column],
            |r| r.get(0),
        )?;
        if !present {
            conn.execute_batch(sql)?;
        }
    }
    for (index, sql) in INDEXES_ADDED {
        let present: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?1)",
            [index],
            |r| r.get(0),
        )?;
        if !present {
            conn.execute_batch(sql)?;
        }
    }
    Ok(())
}

pub(crate) fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The time of the app's write, in ms since the epoch, as the triggers
/// record it. `julianday('now')` is in every SQLite an app may link (and is
/// the same for every row one statement writes); it counts whole ms.
const NOW_MS: &str = "CAST(round((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER)";

/// Creates (or re-creates) the capture triggers of every mapped table. The
/// triggers record only which row changed and when; the export compares the
/// row with its recorded versions to find the changed columns, so columns
/// the app adds later are captured without new triggers, and stamps them
/// with the time of the app's last write of the row.
pub(crate) fn install_triggers(conn: &Connection, mapping: &Mapping) -> rusqlite::Result<()> {
    let now = NOW_MS;
    for table in mapping.tables() {
        let (key, _) = mapping.table(table).expect("a mapped table");
        let t = quote(table);
        let k = quote(key);
        let lit = format!("'{}'", table.replace('\'', "''"));
        let quiet = "WHEN NOT EXISTS (SELECT 1 FROM _cs_quiet)";
        conn.execute_batch(&format!(
            "DROP TRIGGER IF EXISTS \"_cs_{table}_ai\";
             DROP TRIGGER IF EXISTS \"_cs_{table}_au\";
             DROP TRIGGER IF EXISTS \"_cs_{table}_ad\";
             CREATE TRIGGER \"_cs_{table}_ai\" AFTER INSERT ON {t} {quiet} BEGIN
               INSERT INTO _cs_pending (tbl, pk, at_ms) VALUES ({lit}, NEW.{k}, {now});
             END;
             CREATE TRIGGER \"_cs_{table}_au\" AFTER UPDATE ON {t} {quiet} BEGIN
               INSERT INTO _cs_pending (tbl, pk, at_ms) VALUES ({lit}, OLD.{k}, {now});
               INSERT INTO _cs_pending (tbl, pk, at_ms) SELECT {lit}, NEW.{k}, {now} WHERE NEW.{k} IS NOT OLD.{k};
             END;
             CREATE TRIGGER \"_cs_{table}_ad\" AFTER DELETE ON {t} {quiet} BEGIN
               INSERT INTO _cs_pending (tbl, pk, at_ms) VALUES ({lit}, OLD.{k}, {now});
             END;"
        ))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::db::Db;
    use crate::model::RowKey;

    fn init(dir: &std::path::Path) -> Db {
        Db::init_for_test(dir, None)
    }

    fn stamp_wall(db: &Db, pk: &str) -> u64 {
        let doc = db.doc_for_patient(pk).unwrap();
        doc.rows[&RowKey { table: "patients".into(), pk: pk.into() }].fields["family_name"]
            .winner()
            .hlc()
            .wall_ms()
    }

    #[test]
    fn an_edit_is_stamped_with_the_time_the_app_wrote_it_never_later_than_now() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = init(dir.path());
        #[allow(clippy::disallowed_methods)] // the trigger's clock against the computer's
        let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
        db.conn()
            .execute("INSERT INTO patients (id, family_name) VALUES ('p1', 'Ames'), ('p2', 'Bell'), ('p3', 'Cole')", [])
            .unwrap();
        let recorded: i64 =
            db.conn().query_row("SELECT min(at_ms) FROM _cs_pending", [], |r| r.get(0)).unwrap();
        assert!(recorded as u128 >= before.saturating_sub(1), "the trigger records the write's time");
        // The times as a laptop would have recorded them over a day.
        for (pk, at) in [("p1", 5_000), ("p2", 4_000), ("p3", 99_000)] {
            db.conn()
                .execute("UPDATE _cs_pending SET at_ms = ?2 WHERE pk = ?1", rusqlite::params![pk, at])
                .unwrap();
        }
        let mut w = db.begin_write(10_000).unwrap();
        assert!(!w.stamp_pending(100, 1 << 20).unwrap());
        w.commit().unwrap();
        assert_eq!(stamp_wall(&db, "p2"), 4_000);
        assert_eq!(stamp_wall(&db, "p1"), 5_000, "rows go in the order they were written");
        assert_eq!(stamp_wall(&db, "p3"), 10_000, "a time ahead of the sync's clock is not believed");
        let left: i64 = db.conn().query_row("SELECT count(*) FROM _cs_pending", [], |r| r.get(0)).unwrap();
        assert_eq!(left, 0);

        // An edit made before stamps this site has issued since stamps after them.
        db.conn().execute("UPDATE patients SET family_name = 'Ames-Bell' WHERE id = 'p1'", []).unwrap();
        db.conn().execute("UPDATE _cs_pending SET at_ms = 6_000", []).unwrap();
        let mut w = db.begin_write(11_000).unwrap();
        w.stamp_pending(100, 1 << 20).unwrap();
        w.commit().unwrap();
        assert_eq!(stamp_wall(&db, "p1"), 10_000, "after the clock's latest stamp, not before it");
    }

    #[test]
    fn a_database_set_up_before_edit_times_records_them_once_opened() {
        let dir = tempfile::tempdir().unwrap();
        drop(init(dir.path()));
        let conn = rusqlite::Connection::open(dir.path().join("clinic.db")).unwrap();
        // The state as an older clinicsync left it.
        conn.execute_batch(
            "DROP TRIGGER \"_cs_patients_ai\"; DROP TRIGGER \"_cs_patients_au\"; DROP TRIGGER \"_cs_patients_ad\";
             DROP TRIGGER \"_cs_appointments_ai\"; DROP TRIGGER \"_cs_appointments_au\"; DROP TRIGGER \"_cs_appointments_ad\";
             DROP TRIGGER \"_cs_clinical_notes_ai\"; DROP TRIGGER \"_cs_clinical_notes_au\"; DROP TRIGGER \"_cs_clinical_notes_ad\";
             DROP TRIGGER \"_cs_invoices_ai\"; DROP TRIGGER \"_cs_invoices_au\"; DROP TRIGGER \"_cs_invoices_ad\";
             ALTER TABLE _cs_pending DROP COLUMN at_ms;
             CREATE TRIGGER \"_cs_patients_ai\" AFTER INSERT ON patients BEGIN
               INSERT INTO _cs_pending (tbl, pk) VALUES ('patients', NEW.id);
             END;
             INSERT INTO patients (id, family_name) VALUES ('p1', 'Ames');",
        )
        .unwrap();
        let db = Db::open(&dir.path().join("clinic.db")).unwrap();
        db.conn().execute("INSERT INTO patients (id, family_name) VALUES ('p2', 'Bell')", []).unwrap();
        let times: Vec<Option<i64>> = db
            .conn()
            .prepare("SELECT at_ms FROM _cs_pending ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(times.len(), 2);
        assert_eq!(times[0], None, "the older entry has no time: it is stamped with the sync's");
        assert!(times[1].is_some(), "the new trigger records the time");
    }
}
