//! Which tables clinicsync replicates: the root table (one row per patient)
//! and the child tables that point at it. Built in: the reference clinic
//! schema. Custom: a TOML file, checked against the live database.

use rusqlite::Connection;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The reference clinic schema that `init` creates in an empty database.
pub const REFERENCE_SCHEMA: &str = "
CREATE TABLE patients (id TEXT PRIMARY KEY, family_name TEXT NOT NULL, given_name TEXT,
  birth_date TEXT, sex TEXT, phone TEXT, email TEXT, address TEXT, notes TEXT, updated_at TEXT);
CREATE TABLE appointments (id TEXT PRIMARY KEY,
  patient_id TEXT NOT NULL REFERENCES patients(id) ON DELETE CASCADE,
  starts_at TEXT NOT NULL, duration_min INTEGER, practitioner TEXT, status TEXT, notes TEXT);
CREATE TABLE clinical_notes (id TEXT PRIMARY KEY,
  patient_id TEXT NOT NULL REFERENCES patients(id) ON DELETE CASCADE,
  written_at TEXT NOT NULL, author TEXT, body TEXT);
CREATE TABLE invoices (id TEXT PRIMARY KEY,
  patient_id TEXT NOT NULL REFERENCES patients(id) ON DELETE CASCADE,
  issued_at TEXT NOT NULL, amount_cents INTEGER NOT NULL, currency TEXT, status TEXT);
CREATE TABLE documents (id TEXT PRIMARY KEY,
  patient_id TEXT NOT NULL REFERENCES patients(id) ON DELETE CASCADE,
  file_name TEXT NOT NULL, mime_type TEXT, byte_size INTEGER, sha256 TEXT, added_at TEXT);
";

/// The table mapping, as written in a mapping TOML file.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    pub root: RootTable,
    #[serde(default)]
    pub children: Vec<ChildTable>,
    /// The table whose rows describe document files, if any.
    #[serde(default)]
    pub documents: Option<DocumentsTable>,
}

/// A mapped table whose rows each describe one file in the site's local
/// documents folder: `path` holds the file's path relative to that folder.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocumentsTable {
    pub table: String,
    pub path: String,
}

/// The table with one row per patient.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootTable {
    pub table: String,
    pub key: String,
    /// The columns that name a patient for people, in the order shown
    /// ("given_name family_name"); not part of what is replicated, so not
    /// of the fingerprint either.
    #[serde(default)]
    pub name: Vec<String>,
}

/// A table whose rows belong to a patient through `patient`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChildTable {
    pub table: String,
    pub key: String,
    pub patient: String,
    /// The columns that name one of its rows for people ("starts_at
    /// practitioner"); not replicated, not in the fingerprint.
    #[serde(default)]
    pub name: Vec<String>,
}

/// How a mapped table relates to the patient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableRole<'a> {
    Root,
    Child { patient_column: &'a str },
}

/// Why a mapping was refused. Each message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    #[error("the mapping file is not valid TOML for a clinicsync mapping: {0}")]
    Toml(#[from] toml::de::Error),
    #[error(
        "{name:?} is not a plain table or column name (use letters, digits and _ only, and not the _cs_ or sqlite_ prefixes)"
    )]
    BadName { name: String },
    #[error("table {table} is mapped twice")]
    Duplicate { table: String },
    #[error("table {table} does not exist in the database")]
    NoTable { table: String },
    #[error("table {table} has no column {column}")]
    NoColumn { table: String, column: String },
    #[error(
        "table {table} uses an INTEGER PRIMARY KEY ({column}), which SQLite hands out by counting up: two sites would give different records the same number. Replicated tables need globally unique TEXT keys, such as UUIDs"
    )]
    IntegerKey { table: String, column: String },
    #[error("column {column} of table {table} is not the table's single-column primary key")]
    NotPrimaryKey { table: String, column: String },
    #[error(
        "the key column {column} of table {table} is declared {declared}; replicated keys must be TEXT (UUIDs)"
    )]
    KeyNotText { table: String, column: String, declared: String },
    #[error(
        "the documents table {table} is not one of the mapped tables; map it as the root or a child table first"
    )]
    DocumentsNotMapped { table: String },
    #[error("cannot read the database schema: {0}")]
    Sql(#[from] rusqlite::Error),
}

impl Mapping {
    /// The mapping of the reference clinic schema.
    pub fn builtin() -> Mapping {
        let child = |(table, name): (&str, &[&str])| ChildTable {
            table: table.into(),
            key: "id".into(),
            patient: "patient_id".into(),
            name: name.iter().map(|c| (*c).to_owned()).collect(),
        };
        let children: [(&str, &[&str]); 4] = [
            ("appointments", &["starts_at", "practitioner"]),
            ("clinical_notes", &["written_at", "author"]),
            ("invoices", &["issued_at", "amount_cents", "currency"]),
            ("documents", &["file_name"]),
        ];
        Mapping {
            root: RootTable {
                table: "patients".into(),
                key: "id".into(),
                name: vec!["given_name".into(), "family_name".into()],
            },
            children: children.into_iter().map(child).collect(),
            documents: Some(DocumentsTable { table: "documents".into(), path: "file_name".into() }),
        }
    }

    /// The reference schema's mapping as databases set up before documents
    /// travelled recorded it (no `[documents]`): it is read as today's.
    pub(crate) fn upgraded(self) -> Mapping {
        let builtin = Mapping::builtin();
        let same_root = self.root.table == builtin.root.table && self.root.key == builtin.root.key;
        let unnamed = |c: &ChildTable| ChildTable { name: Vec::new(), ..c.clone() };
        let same_children = self.children.iter().map(unnamed).eq(builtin.children.iter().map(unnamed));
        let named = !self.root.name.is_empty() || self.children.iter().any(|c| !c.name.is_empty());
        if !named && same_root && same_children {
            // The reference schema's mapping as recorded before documents
            // travelled, or before it named patients.
            if self.documents.is_none() || self.documents == builtin.documents {
                return builtin;
            }
        }
        self
    }

    /// The documents table and its path column, if the mapping has one.
    pub fn documents(&self) -> Option<&DocumentsTable> {
        self.documents.as_ref()
    }

    pub fn from_toml(text: &str) -> Result<Mapping, MappingError> {
        let mapping: Mapping = toml::from_str(text)?;
        mapping.check_names()?;
        Ok(mapping)
    }

    /// The mapping as TOML, for storing in the database.
    pub fn to_toml(&self) -> String {
        let mut out = format!("[root]\ntable = {:?}\nkey = {:?}\n", self.root.table, self.root.key);
        if !self.root.name.is_empty() {
            out.push_str(&format!("name = {:?}\n", self.root.name));
        }
        for c in &self.children {
            out.push_str(&format!(
                "\n[[children]]\ntable = {:?}\nkey = {:?}\npatient = {:?}\n",
                c.table, c.key, c.patient
            ));
            if !c.name.is_empty() {
                out.push_str(&format!("name = {:?}\n", c.name));
            }
        }
        if let Some(d) = &self.documents {
            out.push_str(&format!("\n[documents]\ntable = {:?}\npath = {:?}\n", d.table, d.path));
        }
        out
    }

    /// A short fingerprint, published in the site file so sites can see
    /// whether they replicate the same tables.
    pub fn fingerprint(&self) -> String {
        // What is replicated: the names shown to people are not.
        let replicated = Mapping {
            root: RootTable { name: Vec::new(), ..self.root.clone() },
            children: self.children.iter().map(|c| ChildTable { name: Vec::new(), ..c.clone() }).collect(),
            ..self.clone()
        };
        let mut hex = String::new();
        crate::model::write_hex_bytes(&mut hex, &Sha256::digest(replicated.to_toml().as_bytes())[..8]);
        hex
    }

    /// The columns that name a row of `table` for people (the root's name
    /// a patient).
    pub fn row_name(&self, table: &str) -> &[String] {
        if self.root.table == table {
            return &self.root.name;
        }
        self.children.iter().find(|c| c.table == table).map_or(&[], |c| c.name.as_slice())
    }

    /// The columns that name a patient (empty: patients are shown by id).
    pub fn patient_name(&self) -> &[String] {
        &self.root.name
    }

    /// Every mapped table name, root first.
    pub fn tables(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.root.table.as_str()).chain(self.children.iter().map(|c| c.table.as_str()))
    }

    /// The key column and role of a mapped table.
    pub fn table(&self, name: &str) -> Option<(&str, TableRole<'_>)> {
        if self.root.table == name {
            return Some((&self.root.key, TableRole::Root));
        }
        self.children
            .iter()
            .find(|c| c.table == name)
            .map(|c| (c.key.as_str(), TableRole::Child { patient_column: &c.patient }))
    }

    fn check_names(&self) -> Result<(), MappingError> {
        let mut seen = std::collections::BTreeSet::new();
        for name in self.tables() {
            if !seen.insert(name) {
                return Err(MappingError::Duplicate { table: name.into() });
            }
        }
        let names = std::iter::once(&self.root.table)
            .chain(std::iter::once(&self.root.key))
            .chain(self.root.name.iter())
            .chain(self.children.iter().flat_map(|c| [&c.table, &c.key, &c.patient]))
            .chain(self.children.iter().flat_map(|c| c.name.iter()))
            .chain(self.documents.iter().flat_map(|d| [&d.table, &d.path]));
        for name in names {
            if !is_plain_name(name) {
                return Err(MappingError::BadName { name: name.clone() });
            }
        }
        if let Some(d) = &self.documents
            && self.table(&d.table).is_none()
        {
            return Err(MappingError::DocumentsNotMapped { table: d.table.clone() });
        }
        Ok(())
    }

    /// Checks the mapping against the live database schema.
    pub fn validate(&self, conn: &Connection) -> Result<(), MappingError> {
        self.check_names()?;
        for table in self.tables() {
            let (key, role) = self.table(table).expect("iterating our own tables");
            let columns = table_columns(conn, table)?;
            if columns.is_empty() {
                return Err(MappingError::NoTable { table: table.into() });
            }
            let find = |name: &str| columns.iter().find(|c| c.name.eq_ignore_ascii_case(name));
            let key_col = find(key)
                .ok_or_else(|| MappingError::NoColumn { table: table.into(), column: key.into() })?;
            let pk_count = columns.iter().filter(|c| c.pk > 0).count();
            if key_col.pk == 0 || pk_count != 1 {
                return Err(MappingError::NotPrimaryKey { table: table.into(), column: key.into() });
            }
            let declared = key_col.declared.to_ascii_uppercase();
            if declared == "INTEGER" {
                return Err(MappingError::IntegerKey { table: table.into(), column: key.into() });
            }
            let texty = ["TEXT", "CHAR", "CLOB", "UUID"].iter().any(|t| declared.contains(t));
            if !texty {
                return Err(MappingError::KeyNotText {
                    table: table.into(),
                    column: key.into(),
                    declared: if declared.is_empty() { "without a type".into() } else { declared },
                });
            }
            if let TableRole::Child { patient_column } = role {
                find(patient_column).ok_or_else(|| MappingError::NoColumn {
                    table: table.into(),
                    column: patient_column.into(),
                })?;
            }
            for column in self.row_name(table) {
                find(column)
                    .ok_or_else(|| MappingError::NoColumn { table: table.into(), column: column.clone() })?;
            }
        }
        if let Some(d) = &self.documents {
            let columns = table_columns(conn, &d.table)?;
            if !columns.iter().any(|c| c.name.eq_ignore_ascii_case(&d.path)) {
                return Err(MappingError::NoColumn { table: d.table.clone(), column: d.path.clone() });
            }
        }
        Ok(())
    }
}

fn is_plain_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit()
        && !lower.starts_with("_cs_")
        && !lower.starts_with("sqlite_")
}

/// One column as `PRAGMA table_info` reports it.
#[derive(Clone, Debug)]
pub(crate) struct ColumnInfo {
    pub(crate) name: String,
    pub(crate) declared: String,
    pub(crate) pk: i64,
}

pub(crate) fn table_columns(conn: &Connection, table: &str) -> rusqlite::Result<Vec<ColumnInfo>> {
    let mut stmt = conn.prepare("SELECT name, type, pk FROM pragma_table_info(?1)")?;
    let rows =
        stmt.query_map([table], |r| Ok(ColumnInfo { name: r.get(0)?, declared: r.get(1)?, pk: r.get(2)? }))?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_mapping_fits_the_reference_schema() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(REFERENCE_SCHEMA).unwrap();
        Mapping::builtin().validate(&conn).unwrap();
        let back = Mapping::from_toml(&Mapping::builtin().to_toml()).unwrap();
        assert_eq!(back, Mapping::builtin());
    }

    #[test]
    fn a_documents_table_must_be_mapped_and_have_its_path_column() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(REFERENCE_SCHEMA).unwrap();
        let base = "[root]\ntable = \"patients\"\nkey = \"id\"\n\n[[children]]\ntable = \"documents\"\nkey = \"id\"\npatient = \"patient_id\"\n";
        let good = Mapping::from_toml(&format!(
            "{base}\n[documents]\ntable = \"documents\"\npath = \"file_name\"\n"
        ))
        .unwrap();
        good.validate(&conn).unwrap();
        assert_eq!(Mapping::from_toml(&good.to_toml()).unwrap(), good);
        let unmapped = format!("{base}\n[documents]\ntable = \"invoices\"\npath = \"status\"\n");
        assert!(matches!(Mapping::from_toml(&unmapped), Err(MappingError::DocumentsNotMapped { .. })));
        let no_column =
            Mapping::from_toml(&format!("{base}\n[documents]\ntable = \"documents\"\npath = \"where\"\n"))
                .unwrap();
        assert!(matches!(no_column.validate(&conn), Err(MappingError::NoColumn { .. })));
        // The reference mapping as older databases stored it reads as today's.
        let older = Mapping { documents: None, ..unnamed(Mapping::builtin()) };
        assert_eq!(older.upgraded(), Mapping::builtin());
        assert_eq!(good.clone().upgraded(), good, "a custom mapping is left as it is");
    }

    /// The mapping without the columns that name rows, as recorded before
    /// they were named.
    fn unnamed(m: Mapping) -> Mapping {
        Mapping {
            root: RootTable { name: Vec::new(), ..m.root.clone() },
            children: m.children.iter().map(|c| ChildTable { name: Vec::new(), ..c.clone() }).collect(),
            ..m
        }
    }

    #[test]
    fn the_columns_naming_a_patient_are_kept_but_not_replicated() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(REFERENCE_SCHEMA).unwrap();
        let builtin = Mapping::builtin();
        let unnamed = unnamed(builtin.clone());
        assert_eq!(
            builtin.fingerprint(),
            unnamed.fingerprint(),
            "sites that name patients differently agree"
        );
        assert_eq!(Mapping::from_toml(&builtin.to_toml()).unwrap(), builtin);
        assert_eq!(unnamed.upgraded(), builtin, "a reference mapping recorded before names is today's");
        let wrong = Mapping {
            root: RootTable { name: vec!["nickname".into()], ..builtin.root.clone() },
            ..builtin.clone()
        };
        assert!(
            matches!(wrong.validate(&conn), Err(MappingError::NoColumn { column, .. }) if column == "nickname")
        );
    }

    #[test]
    fn integer_keys_are_refused_with_a_reason() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE people (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT);").unwrap();
        let mapping = Mapping::from_toml("[root]\ntable = \"people\"\nkey = \"id\"\n").unwrap();
        let err = mapping.validate(&conn).unwrap_err().to_string();
        assert!(err.contains("INTEGER PRIMARY KEY") && err.contains("UUID"), "{err}");
    }

    #[test]
    fn bad_names_and_missing_tables_are_refused() {
        assert!(Mapping::from_toml("[root]\ntable = \"x; DROP TABLE y\"\nkey = \"id\"\n").is_err());
        assert!(Mapping::from_toml("[root]\ntable = \"_cs_meta\"\nkey = \"id\"\n").is_err());
        assert!(Mapping::from_toml("[root]\ntable = \"p\"\nkey = \"id\"\nextra = 1\n").is_err());
        let conn = Connection::open_in_memory().unwrap();
        let mapping = Mapping::from_toml("[root]\ntable = \"nope\"\nkey = \"id\"\n").unwrap();
        assert!(matches!(mapping.validate(&conn), Err(MappingError::NoTable { .. })));
    }
}
