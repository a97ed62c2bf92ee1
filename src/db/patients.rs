//! A patient's rows as the state stores them (`_cs_rows` by patient): read
//! as stored to decode on any thread, as a document, or encoded as its file.

use super::state::corrupt;
use crate::model::PatientDoc;
use crate::model::PatientId;
use crate::model::RowKey;
use crate::model::RowState;

use std::collections::HashMap;

use rusqlite::Connection;

use super::DbError;
use super::rowblob::{self, RowView};
use crate::xmlstore::{PatientWriter, encode_patient};

/// Builds the document of one patient from the state: its root row and
/// every row whose patient column points at it, deleted rows included.
/// One patient's rows as stored; [`StoredPatient::decode`] checks and
/// decodes them, on any thread.
#[derive(Clone, Debug)]
pub struct StoredPatient {
    pub patient: String,
    rows: Vec<(RowKey, i64, Vec<u8>)>,
}

impl StoredPatient {
    /// The patient's document; an error names a damaged row.
    pub fn decode(self) -> Result<PatientDoc, DbError> {
        let mut doc = PatientDoc::new(PatientId(self.patient));
        for (key, cl, blob) in self.rows {
            let state = decode_state(&key, cl, rusqlite::types::ValueRef::Blob(&blob))?;
            doc.rows.insert(key, state);
        }
        Ok(doc)
    }

    /// The patient's file, the same bytes as `encode_patient` of
    /// [`Self::decode`] (or its error): written from the stored rows in
    /// place where each is one the blob view takes (`rowblob::RowView`),
    /// decoded where not.
    pub fn encode(&self) -> Result<Vec<u8>, DbError> {
        match self.encode_in_place() {
            Some(bytes) => Ok(bytes),
            None => Ok(encode_patient(&self.clone().decode()?)),
        }
    }

    /// The patient's file ([`Self::encode`]), or why it would be beyond
    /// `limits`.
    pub fn file(&self, limits: &crate::xmlstore::Limits) -> Result<Result<Vec<u8>, String>, DbError> {
        let bytes = self.encode()?;
        Ok(match limits.refusal(&bytes) {
            Some(why) => Err(why),
            None => Ok(bytes),
        })
    }

    /// A patient with no rows.
    pub fn empty(patient: &str) -> StoredPatient {
        StoredPatient { patient: patient.to_owned(), rows: Vec::new() }
    }

    /// Whether the state holds no row of the patient.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Whether every row is deleted (an even causal length).
    pub fn only_deletions(&self) -> bool {
        self.rows.iter().all(|(_, cl, _)| !RowState::cl_is_alive(*cl as u64))
    }

    fn encode_in_place(&self) -> Option<Vec<u8>> {
        let mut rows: Vec<&(RowKey, i64, Vec<u8>)> = self.rows.iter().collect();
        rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        if rows.windows(2).any(|w| w[0].0 == w[1].0) {
            return None;
        }
        let mut writer = PatientWriter::new(&self.patient, rows.len());
        let mut view = RowView::default();
        for (key, cl, blob) in rows {
            view.read(*cl, blob)?;
            writer.row(&key.table, &key.pk, &view);
        }
        Some(writer.finish())
    }
}

/// Groups `_cs_rows` rows (patient, tbl, pk, cl, state) ordered by
/// patient into each patient's stored rows.
pub(crate) fn collect_stored(mut rows: rusqlite::Rows<'_>) -> Result<Vec<StoredPatient>, DbError> {
    let mut patients: Vec<StoredPatient> = Vec::new();
    while let Some(r) = rows.next()? {
        let patient = r.get_ref(0)?.as_str().map_err(|e| DbError::Corrupt(e.to_string()))?;
        if patients.last().is_none_or(|p| p.patient != patient) {
            patients.push(StoredPatient { patient: patient.to_owned(), rows: Vec::with_capacity(24) });
        }
        patients.last_mut().expect("pushed above").rows.push(stored_row(r)?);
    }
    Ok(patients)
}

/// One stored row from `patient, tbl, pk, cl, state`.
fn stored_row(r: &rusqlite::Row<'_>) -> Result<(RowKey, i64, Vec<u8>), DbError> {
    let key = RowKey { table: r.get(1)?, pk: r.get(2)? };
    let cl: i64 = r.get(3)?;
    let rusqlite::types::ValueRef::Blob(blob) = r.get_ref(4)? else {
        return Err(corrupt(&key.table, &key.pk));
    };
    let blob = blob.to_vec();
    Ok((key, cl, blob))
}

/// A patient, and its rows as stored or why its file would be beyond the
/// limits.
pub type ForFile = (String, Result<StoredPatient, String>);

/// The rows of these patients as stored, to write their files from, or
/// why that file would be beyond `limits` (every reader would refuse it).
/// One query for them all; memory stays bounded whatever the state holds:
/// a patient's rows are read until they pass the limits (then counted in
/// SQL for the sentence), and the files are written by the caller from the
/// stored rows in place ([`StoredPatient::file`]). (A state blob is never
/// larger than the same row in a file, so more blob bytes than a file may
/// hold means the file would be over.) A patient the state has no row of
/// comes back with no rows. Once the patients read hold `budget` bytes of
/// rows, no more are read: those not returned are for the caller to ask
/// for again.
pub(crate) fn stored_for_files(
    conn: &Connection,
    patients: &[&str],
    limits: &crate::xmlstore::Limits,
    budget: u64,
) -> Result<Vec<ForFile>, DbError> {
    let list = serde_json::to_string(patients).expect("strings serialise");
    let mut stmt = conn.prepare_cached(
        "SELECT patient, tbl, pk, cl, state FROM _cs_rows
         WHERE patient IN (SELECT value FROM json_each(?1)) ORDER BY patient",
    )?;
    let mut rows = stmt.query([list])?;
    let mut found: HashMap<String, Option<StoredPatient>> = HashMap::with_capacity(patients.len());
    // The patient being read, and its blob bytes so far.
    let mut current: Option<(StoredPatient, u64)> = None;
    let mut over: Option<String> = None;
    let mut held = 0u64;
    let mut complete = true;
    while let Some(r) = rows.next()? {
        let patient = r.get_ref(0)?.as_str().map_err(|e| DbError::Corrupt(e.to_string()))?;
        if over.as_deref() == Some(patient) {
            continue;
        }
        if current.as_ref().is_none_or(|(p, _)| p.patient != patient) {
            if let Some((done, bytes)) = current.take() {
                found.insert(done.patient.clone(), Some(done));
                held += bytes;
            }
            if held >= budget {
                complete = false;
                break;
            }
            current = Some((StoredPatient { patient: patient.to_owned(), rows: Vec::with_capacity(24) }, 0));
        }
        let (stored, blob_bytes) = current.as_mut().expect("set above");
        let row = stored_row(r)?;
        *blob_bytes += row.2.len() as u64;
        stored.rows.push(row);
        if stored.rows.len() > limits.max_rows || *blob_bytes > limits.max_file_bytes {
            let (stored, _) = current.take().expect("set above");
            found.insert(stored.patient.clone(), None);
            over = Some(stored.patient);
        }
    }
    if let Some((done, _)) = current.take() {
        found.insert(done.patient.clone(), Some(done));
    }
    drop(rows);
    let mut out = Vec::with_capacity(patients.len());
    for patient in patients {
        let result = match found.remove(*patient) {
            Some(Some(stored)) => Ok(stored),
            Some(None) => Err(beyond_limits(conn, patient, limits)?),
            None if complete => Ok(StoredPatient::empty(patient)),
            None => continue,
        };
        out.push(((*patient).to_owned(), result));
    }
    Ok(out)
}

/// Why a patient's file would be beyond `limits`, counted in SQL.
fn beyond_limits(
    conn: &Connection,
    patient: &str,
    limits: &crate::xmlstore::Limits,
) -> Result<String, DbError> {
    let (rows, blob_bytes): (i64, i64) = conn
        .prepare_cached("SELECT count(*), coalesce(sum(length(state)), 0) FROM _cs_rows WHERE patient = ?1")?
        .query_row([patient], |r| Ok((r.get(0)?, r.get(1)?)))?;
    if rows as u64 > limits.max_rows as u64 {
        return Ok(format!("it would hold {rows} rows, over the {} every clinicsync reads", limits.max_rows));
    }
    Ok(format!(
        "it would be more than {blob_bytes} bytes, over the {}-byte limit every clinicsync reads",
        limits.max_file_bytes
    ))
}

/// These patients' rows as stored (a patient the state has no row of is
/// left out), in patient order.
pub(crate) fn stored_patients(conn: &Connection, patients: &[&str]) -> Result<Vec<StoredPatient>, DbError> {
    let list = serde_json::to_string(patients).expect("strings serialise");
    let mut stmt = conn.prepare_cached(
        "SELECT patient, tbl, pk, cl, state FROM _cs_rows
         WHERE patient IN (SELECT value FROM json_each(?1)) ORDER BY patient",
    )?;
    collect_stored(stmt.query([list])?)
}

/// A row's state from its `_cs_rows` columns.
pub(crate) fn decode_state(
    key: &RowKey,
    cl: i64,
    blob: rusqlite::types::ValueRef<'_>,
) -> Result<RowState, DbError> {
    let blob = blob.as_blob().map_err(|_| corrupt(&key.table, &key.pk))?;
    decode_row(&key.table, &key.pk, cl, blob)
}

pub(super) fn decode_row(tbl: &str, pk: &str, cl: i64, blob: &[u8]) -> Result<RowState, DbError> {
    let (fields, deleted) = rowblob::decode(blob).ok_or_else(|| corrupt(tbl, pk))?;
    Ok(RowState { cl: cl as u64, fields, deleted })
}

pub(crate) fn doc_for_patient(conn: &Connection, patient: &str) -> Result<PatientDoc, DbError> {
    let mut stmt =
        conn.prepare_cached("SELECT patient, tbl, pk, cl, state FROM _cs_rows WHERE patient = ?1")?;
    match collect_stored(stmt.query([patient])?)?.pop() {
        Some(stored) => stored.decode(),
        None => Ok(PatientDoc::new(PatientId(patient.to_owned()))),
    }
}

/// Reads the stored rows of `patients` (the pages [`stored_for_files`]
/// reads) and forgets them: a read-ahead's part (see [`super::read_ahead`]).
/// Returns how many rows it read.
pub(super) fn read_rows_ahead(conn: &Connection, patients: &[&str]) -> rusqlite::Result<u64> {
    let list = serde_json::to_string(patients).expect("strings serialise");
    conn.query_row(
        "SELECT count(*), sum(length(state)) FROM _cs_rows
         WHERE patient IN (SELECT value FROM json_each(?1))",
        [list],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use std::collections::BTreeSet;

    use std::collections::BTreeMap;

    use crate::model::{Base, FieldState, RowState};
    use crate::model::{FieldVersion, Hlc, SiteId, Value};
    use crate::xmlstore::encode_patient;

    #[test]
    fn a_read_ahead_reads_the_stored_rows_of_the_patients_it_is_given_and_no_others() {
        let dir = tempfile::tempdir().unwrap();
        let db = super::super::Db::init_for_test(dir.path(), None);
        for (patient, rows) in [("p1", 3), ("p2", 5), ("p3", 2), ("other", 7)] {
            for i in 0..rows {
                db.conn()
                    .execute(
                        "INSERT INTO _cs_rows (tbl, pk, cl, patient, state) VALUES ('notes', ?1, 1, ?2, x'00')",
                        rusqlite::params![format!("{patient}-{i}"), patient],
                    )
                    .unwrap();
            }
        }
        let asked = |names: &[&str]| {
            names.iter().map(|n| (n.to_string(), format!("patients/00/{n}.xml"))).collect::<Vec<_>>()
        };
        // Spread over every thread, with a patient that has no rows.
        assert_eq!(db.read_ahead(asked(&["p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8"])).finish(), 10);
        assert_eq!(db.read_ahead(asked(&["p2"])).finish(), 5);
        assert_eq!(db.read_ahead(Vec::new()).finish(), 0);
    }

    fn hlc(wall: u64, site: u8) -> Hlc {
        Hlc::new(wall, 0, SiteId::from_bytes([site; 16]))
    }

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::Integer),
            prop_oneof![any::<f64>(), Just(f64::NAN), Just(f64::INFINITY), Just(-0.0)].prop_map(Value::Real),
            "[a-c<&\"\r\n\t\u{1}é ]{0,6}".prop_map(Value::Text),
            proptest::collection::vec(any::<u8>(), 0..4).prop_map(Value::Blob),
        ]
    }

    /// A field version: stamped at `wall` by one of three sites, with a
    /// base of earlier stamps.
    fn version() -> impl Strategy<Value = FieldVersion> {
        (value(), 10..40u64, 1..4u8, proptest::collection::vec((0..10u64, 1..4u8), 0..3)).prop_map(
            |(value, wall, site, base)| {
                let base = Base::new(base.into_iter().map(|(w, s)| hlc(w, s)));
                FieldVersion::new(value, hlc(wall, site), base).expect("bases are before 10")
            },
        )
    }

    fn row() -> impl Strategy<Value = (RowKey, RowState)> {
        let fields = proptest::collection::btree_map(
            prop_oneof![Just("a"), Just("b"), Just("é"), Just("x y")].prop_map(String::from),
            proptest::collection::vec(version(), 1..3)
                .prop_map(|v| FieldState::from_versions(v).expect("not empty")),
            0..4,
        );
        let deleted = proptest::collection::vec((40..50u64, 1..4u8), 0..3)
            .prop_map(|stamps| Base::new(stamps.into_iter().map(|(w, s)| hlc(w, s))));
        (
            prop_oneof![Just("appointments"), Just("patients"), Just("notes")],
            "[0-9a-c]{1,2}",
            0..6u64,
            fields,
            deleted,
        )
            .prop_map(|(table, pk, cl, fields, deleted)| {
                (RowKey { table: table.into(), pk }, RowState { cl, fields, deleted })
            })
    }

    fn stored(rows: &[(RowKey, RowState)]) -> StoredPatient {
        StoredPatient {
            patient: "p1".into(),
            rows: rows
                .iter()
                .map(|(key, row)| (key.clone(), row.cl as i64, rowblob::encode(&row.fields, &row.deleted)))
                .collect(),
        }
    }

    fn both_ways(stored: &StoredPatient) -> (Result<Vec<u8>, String>, Result<Vec<u8>, String>) {
        let in_place = stored.clone().encode().map_err(|e| e.to_string());
        let decoded = stored.clone().decode().map(|doc| encode_patient(&doc)).map_err(|e| e.to_string());
        (in_place, decoded)
    }

    #[test]
    fn patients_are_read_for_their_files_in_one_query_within_the_limits() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE _cs_rows (tbl TEXT NOT NULL, pk TEXT NOT NULL, cl INTEGER NOT NULL,
             patient TEXT, state BLOB NOT NULL, PRIMARY KEY (tbl, pk));",
        )
        .unwrap();
        let field = |text: &str, wall| {
            let version = FieldVersion::new(Value::Text(text.into()), hlc(wall, 1), Base::default()).unwrap();
            BTreeMap::from([("note".to_owned(), FieldState::single(version))])
        };
        for (patient, n) in [("p1", 3), ("p2", 5)] {
            for k in 0..n {
                let blob = rowblob::encode(&field(&format!("{patient} {k}"), 10 + k), &Base::default());
                conn.execute(
                    "INSERT INTO _cs_rows VALUES ('notes', ?1, ?2, ?3, ?4)",
                    rusqlite::params![format!("{patient}-{k}"), 1 + k % 2, patient, blob],
                )
                .unwrap();
            }
        }
        let limits = crate::xmlstore::Limits { max_rows: 4, ..Default::default() };
        let found = stored_for_files(&conn, &["p2", "p1", "p3"], &limits, u64::MAX).unwrap();
        let names: Vec<&str> = found.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(names, ["p2", "p1", "p3"], "every patient asked for, in the order asked");
        let over = found[0].1.as_ref().unwrap_err();
        assert!(over.contains("5 rows, over the 4"), "{over}");
        let p1 = found[1].1.as_ref().unwrap();
        assert!(!p1.is_empty() && !p1.only_deletions());
        let file = p1.file(&limits).unwrap().unwrap();
        assert_eq!(file, encode_patient(&p1.clone().decode().unwrap()));
        assert_eq!(p1.clone().decode().unwrap().rows.len(), 3);
        let p3 = found[2].1.as_ref().unwrap();
        assert!(p3.is_empty());
        assert_eq!(
            p3.file(&limits).unwrap().unwrap(),
            encode_patient(&PatientDoc::new(PatientId("p3".into())))
        );
    }

    proptest! {
        #[test]
        fn a_file_written_from_stored_rows_is_the_file_of_their_decoded_document(
            rows in proptest::collection::vec(row(), 0..6),
        ) {
            let stored = stored(&rows);
            let (in_place, decoded) = both_ways(&stored);
            prop_assert_eq!(&in_place, &decoded);
            // Rows without concurrent versions, under distinct keys, are
            // written in place (the point of it), not decoded.
            let keys: BTreeSet<&RowKey> = rows.iter().map(|(k, _)| k).collect();
            let single = rows.iter().all(|(_, r)| r.fields.values().all(|f| f.versions().len() == 1));
            if keys.len() == rows.len() && single {
                prop_assert_eq!(stored.encode_in_place(), Some(in_place.unwrap()));
            }
        }
    }

    /// Blobs a view refuses are decoded instead: the same bytes, or the
    /// same error.
    #[test]
    fn blobs_not_in_canonical_form_give_what_decoding_gives() {
        let key = RowKey { table: "notes".into(), pk: "1".into() };
        let stamp = |out: &mut Vec<u8>, h: Hlc| {
            out.extend_from_slice(&h.wall_ms().to_be_bytes()[2..]);
            out.extend_from_slice(&h.counter().to_be_bytes());
            out.extend_from_slice(h.site().as_bytes());
        };
        // Layout 3 with two stamps; the fields and bases given by `body`.
        let blob = |body: &[u8]| {
            let mut out = vec![3, 2];
            stamp(&mut out, hlc(20, 1));
            stamp(&mut out, hlc(5, 2));
            out.extend_from_slice(body);
            out
        };
        let cases: [(&str, Vec<u8>); 5] = [
            // Fields "b" then "a": decoding sorts them.
            ("unsorted fields", blob(&[2, 1, b'b', 1, 0, 0, 0, 1, b'a', 1, 0, 0, 0])),
            // A base naming the same site's stamp twice: decoding keeps one.
            ("a base with a site twice", blob(&[1, 1, b'a', 1, 0, 2, 1, 1, 0])),
            // A base not before its version's stamp: damage.
            ("a base after its stamp", blob(&[1, 1, b'a', 1, 1, 1, 0, 0])),
            ("a byte left over", blob(&[1, 1, b'a', 1, 0, 0, 0, 9])),
            ("an unknown layout", vec![9, 0]),
        ];
        for (what, blob) in cases {
            let stored = StoredPatient { patient: "p1".into(), rows: vec![(key.clone(), 1, blob)] };
            assert_eq!(stored.encode_in_place(), None, "{what}");
            let (in_place, decoded) = both_ways(&stored);
            assert_eq!(in_place, decoded, "{what}");
        }
    }
}
