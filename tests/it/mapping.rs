//! An existing app's own schema, mapped with a TOML file: exact values of
//! every storage class survive the trip, integer keys are refused, and
//! columns the app adds later are captured without new triggers.

use std::fs;

use rusqlite::params;

use crate::support::*;

const SCHEMA: &str = "
CREATE TABLE clients (uid TEXT PRIMARY KEY, name TEXT NOT NULL, a, b, c, d);
CREATE TABLE visits (vid TEXT PRIMARY KEY, client TEXT REFERENCES clients(uid), x, y);
";

const MAPPING: &str = "
[root]
table = \"clients\"
key = \"uid\"

[[children]]
table = \"visits\"
key = \"vid\"
patient = \"client\"
";

/// Runs `init --mapping` for a database of the family.
fn init_with_mapping(family: &Family, db: &std::path::Path, mapping: &str) -> std::process::Output {
    let file = family.dir.path().join("mapping.toml");
    fs::write(&file, mapping).unwrap();
    cli(db).args(["init", "--folder"]).arg(family.folder()).arg("--mapping").arg(&file).output().unwrap()
}

#[test]
fn every_storage_class_round_trips_exactly_through_the_folder() {
    let family = Family::new();
    let mut dbs = Vec::new();
    for site in ["a", "b"] {
        let db = family.db(site);
        app(&db).execute_batch(SCHEMA).unwrap();
        assert!(init_with_mapping(&family, &db, MAPPING).status.success());
        dbs.push(db);
    }
    let (a, b) = (&dbs[0], &dbs[1]);
    let conn = app(a);
    let insert = "INSERT INTO clients (uid, name, a, b, c, d) VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
    conn.execute(insert, params!["c1", "extremes", i64::MIN, i64::MAX, -0.0f64, f64::INFINITY]).unwrap();
    conn.execute(
        insert,
        params![
            "c2",
            "  leading and trailing  ",
            vec![0u8, 255, 10, 13, 60],
            "cr\r\nlf\n\ttab  trailing  ",
            "bell\u{7} nul-free control\u{1b}[0m",
            "emoji 🩺 <xml> & \"quotes\" 'apos' ]]>"
        ],
    )
    .unwrap();
    conn.execute(
        insert,
        params!["c3", "reals", Option::<i64>::None, 1e-300, f64::MIN_POSITIVE, f64::NEG_INFINITY],
    )
    .unwrap();
    conn.execute(insert, params!["c4", "more", 0.1f64, -123.456e200, 5e-324, ""]).unwrap();
    conn.execute("INSERT INTO visits (vid, client, x, y) VALUES ('v1', 'c2', 42, x'00')", []).unwrap();
    sync_ok(a);
    sync_ok(b);
    assert_eq!(dump(a), dump(b));
    // And the value that SQLite gives back is the one the app wrote.
    let (minus_zero, inf): (f64, f64) = app(b)
        .query_row("SELECT c, d FROM clients WHERE uid = 'c1'", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap();
    let (minus_zero_a, _): (f64, f64) = app(a)
        .query_row("SELECT c, d FROM clients WHERE uid = 'c1'", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap();
    assert_eq!(minus_zero.to_bits(), minus_zero_a.to_bits());
    assert_eq!(inf, f64::INFINITY);
    let text: String = app(b).query_row("SELECT b FROM clients WHERE uid = 'c2'", [], |r| r.get(0)).unwrap();
    assert_eq!(text, "cr\r\nlf\n\ttab  trailing  ");
    let name: String =
        app(b).query_row("SELECT name FROM clients WHERE uid = 'c2'", [], |r| r.get(0)).unwrap();
    assert_eq!(name, "  leading and trailing  ");

    // Columns the app adds later replicate without touching the triggers.
    for db in [a, b] {
        app(db).execute("ALTER TABLE clients ADD COLUMN insurer TEXT", []).unwrap();
    }
    conn.execute("UPDATE clients SET insurer = 'Mutual' WHERE uid = 'c1'", []).unwrap();
    sync_ok(a);
    sync_ok(b);
    let insurer: String =
        app(b).query_row("SELECT insurer FROM clients WHERE uid = 'c1'", [], |r| r.get(0)).unwrap();
    assert_eq!(insurer, "Mutual");
}

#[test]
fn integer_auto_increment_keys_are_refused_with_an_explanation() {
    let family = Family::new();
    let db = family.db("a");
    app(&db).execute_batch("CREATE TABLE people (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT);").unwrap();
    let out = init_with_mapping(&family, &db, "[root]\ntable = \"people\"\nkey = \"id\"\n");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("INTEGER PRIMARY KEY") && err.contains("UUIDs"), "{err}");
    // Nothing was installed: the database is as it was.
    let n: i64 = app(&db)
        .query_row("SELECT count(*) FROM sqlite_master WHERE name LIKE '\\_cs\\_%' ESCAPE '\\'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(n, 0);
}

#[test]
fn a_mapping_that_does_not_fit_the_database_is_refused() {
    let family = Family::new();
    let db = family.db("a");
    app(&db).execute_batch(SCHEMA).unwrap();
    let out =
        init_with_mapping(&family, &db, &MAPPING.replace("patient = \"client\"", "patient = \"customer\""));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no column customer"));
}

#[test]
fn a_database_with_other_tables_and_no_mapping_is_refused() {
    let family = Family::new();
    let db = family.db("a");
    app(&db).execute_batch("CREATE TABLE stock (sku TEXT PRIMARY KEY);").unwrap();
    let out = cli(&db).args(["init", "--folder"]).arg(family.folder()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("patients does not exist"));
}
