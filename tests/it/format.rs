//! The folder formats, frozen: golden bytes for the patient file, the site
//! file and the manifest, a data-driven set of bad files with the exact
//! error each must produce (`fixtures/bad-files/`), and damaged real files
//! that no decoder may panic on. Set UPDATE_EXPECT=1 to rewrite the
//! expectations after a deliberate format change.

use std::collections::BTreeMap;
use std::path::Path;

use clinicsync::model::{
    Base, FamilyId, FieldState, FieldVersion, Hlc, PatientDoc, PatientId, RowKey, RowState, SiteId, Value,
};
use clinicsync::xmlstore::{
    Limits, Manifest, SiteFile, decode_patient, encode_manifest, encode_patient, encode_site, seal,
};
use expect_test::expect_file;
use proptest::prelude::*;

fn golden_doc() -> PatientDoc {
    let a = SiteId::parse("0123456789abcdef0123456789abcdef").unwrap();
    let b = SiteId::parse("fedcba9876543210fedcba9876543210").unwrap();
    let h = |wall: u64, site| Hlc::new(1_763_700_000_000 + wall, 0, site);
    let v = |value, at, seen: &[Hlc]| FieldVersion::new(value, at, Base::new(seen.iter().copied())).unwrap();
    let single = |value, at| FieldState::single(v(value, at, &[]));
    let mut patient = BTreeMap::new();
    patient
        .insert("id".to_owned(), single(Value::Text("3f2504e0-4f89-11d3-9a0c-0305e82c3301".into()), h(1, a)));
    patient.insert("family_name".to_owned(), single(Value::Text("O'Brien & <Sons> \"Ltd\"".into()), h(2, a)));
    patient.insert("notes".to_owned(), single(Value::Text("line one\r\n\tline two  ".into()), h(3, a)));
    patient.insert("given_name".to_owned(), single(Value::Text("Zoë 🩺".into()), h(4, a)));
    patient.insert("sex".to_owned(), single(Value::Null, h(5, a)));
    patient.insert("address".to_owned(), single(Value::Text("bell\u{7}".into()), h(6, a)));
    // A concurrent edit: two maximal versions of one field.
    patient.insert(
        "phone".to_owned(),
        FieldState::from_versions(vec![
            v(Value::Text("+1 555 0100".into()), h(10, a), &[h(1, a)]),
            v(Value::Text("+1 555 0199".into()), h(11, b), &[h(1, a)]),
        ])
        .unwrap(),
    );
    // An edit made with both sites' versions in view: a base of two stamps.
    patient.insert(
        "email".to_owned(),
        FieldState::single(v(Value::Text("settled@example.org".into()), h(12, a), &[h(10, a), h(11, b)])),
    );
    let mut visit = BTreeMap::new();
    visit.insert("id".to_owned(), single(Value::Text("a1".into()), h(7, b)));
    visit.insert("duration_min".to_owned(), single(Value::Integer(i64::MIN), h(7, b)));
    visit.insert("weight".to_owned(), single(Value::Real(-0.0), h(7, b)));
    visit.insert("ratio".to_owned(), single(Value::Real(1e300), h(7, b)));
    visit.insert("limit".to_owned(), single(Value::Real(f64::INFINITY), h(7, b)));
    visit.insert("scan".to_owned(), single(Value::Blob(vec![0, 1, 2, 254, 255]), h(7, b)));
    let mut rows = BTreeMap::new();
    rows.insert(
        RowKey { table: "patients".into(), pk: "3f2504e0-4f89-11d3-9a0c-0305e82c3301".into() },
        RowState { cl: 1, fields: patient, deleted: Base::default() },
    );
    rows.insert(
        RowKey { table: "appointments".into(), pk: "a1".into() },
        RowState { cl: 1, fields: visit, deleted: Base::default() },
    );
    rows.insert(
        RowKey { table: "invoices".into(), pk: "gone".into() },
        RowState { cl: 2, fields: BTreeMap::new(), deleted: Base::new([h(20, a), h(11, b)]) },
    );
    PatientDoc { patient: PatientId("3f2504e0-4f89-11d3-9a0c-0305e82c3301".into()), rows }
}

#[test]
fn the_patient_file_format_is_frozen() {
    let bytes = encode_patient(&golden_doc());
    expect_file!["../../fixtures/format/patient-v1.xml"].assert_eq(std::str::from_utf8(&bytes).unwrap());
    assert_eq!(decode_patient(&bytes, Limits::default()).unwrap(), golden_doc());
}

#[test]
fn the_site_file_and_manifest_formats_are_frozen() {
    let site = SiteFile {
        site: SiteId::parse("0123456789abcdef0123456789abcdef").unwrap(),
        family: FamilyId::parse("00112233445566778899aabbccddeeff").unwrap(),
        name: "Front desk".into(),
        app_version: "0.1.0".into(),
        head_seq: 12,
        oldest_seq: 5,
        acks: [(SiteId::parse("fedcba9876543210fedcba9876543210").unwrap(), 40)].into_iter().collect(),
        ack_stamps: [(
            SiteId::parse("fedcba9876543210fedcba9876543210").unwrap(),
            Hlc::new(1_763_699_000_000, 1, SiteId::parse("fedcba9876543210fedcba9876543210").unwrap()),
        )]
        .into_iter()
        .collect(),
        purge_horizon: Some(Hlc::new(
            1_763_600_000_000,
            0,
            SiteId::parse("0123456789abcdef0123456789abcdef").unwrap(),
        )),
        last_sync_ms: Some(1_763_700_000_000),
        left_ms: None,
        machine: "5e1f0c2a9b3d4e6f".into(),
        mapping: "a1b2c3d4e5f60718".into(),
        purged: vec![clinicsync::xmlstore::PurgedKey {
            table: "patients".into(),
            pk: "0b7e4c1a-2f3d-4e5f-8a9b-0c1d2e3f4a5b".into(),
            cl: 2,
            deleted: Base::new([Hlc::new(
                1_763_600_000_000,
                0,
                SiteId::parse("0123456789abcdef0123456789abcdef").unwrap(),
            )]),
        }],
    };
    expect_file!["../../fixtures/format/site-v1.xml"]
        .assert_eq(std::str::from_utf8(&encode_site(&site)).unwrap());
    let manifest = Manifest { family: site.family, created_ms: 1_763_700_000_000, deleted: None };
    expect_file!["../../fixtures/format/manifest-v1.xml"]
        .assert_eq(std::str::from_utf8(&encode_manifest(&manifest)).unwrap());
}

/// Each `fixtures/bad-files/NAME.xml` is a patient file body (sealed by the
/// test unless NAME starts with `raw-`); `NAME.expected` holds the error.
#[test]
fn bad_files_are_refused_with_their_exact_error() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/bad-files");
    let update = std::env::var_os("UPDATE_EXPECT").is_some();
    let mut cases = 0;
    let mut entries: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for path in entries.into_iter().filter(|p| p.extension().is_some_and(|e| e == "xml")) {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let body = std::fs::read(&path).unwrap();
        let file = if name.starts_with("raw-") { body } else { seal(body) };
        let limits = Limits {
            max_file_bytes: 4096,
            max_elements: 50,
            max_rows: 20,
            max_text_bytes: 256,
            max_depth: 8,
        };
        let error = match decode_patient(&file, limits) {
            Ok(doc) => panic!("{name} was accepted: {doc:?}"),
            Err(e) => format!("{e}\n"),
        };
        let expected_path = path.with_extension("expected");
        if update {
            std::fs::write(&expected_path, &error).unwrap();
        }
        let expected = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|_| panic!("{} is missing (run with UPDATE_EXPECT=1)", expected_path.display()));
        assert_eq!(error, expected, "{name}");
        cases += 1;
    }
    assert!(cases >= 15, "only {cases} bad-file cases found");
}

#[test]
fn the_segment_format_is_frozen() {
    use clinicsync::xmlstore::{Segment, decode_segment, encode_segment};
    let doc = golden_doc();
    let rows = doc.rows.into_iter().map(|(key, row)| ((doc.patient.0.clone(), key), row)).collect();
    let segment = Segment {
        site: SiteId::parse("0123456789abcdef0123456789abcdef").unwrap(),
        seq: 42,
        created_ms: 1_763_700_000_000,
        rows,
    };
    let bytes = encode_segment(&segment);
    expect_file!["../../fixtures/format/segment-v1.xml"].assert_eq(std::str::from_utf8(&bytes).unwrap());
    assert_eq!(decode_segment(&bytes, Limits::default()).unwrap(), segment);
}

/// A mutation of a real file: the kinds of damage a disk, a cloud client or
/// a hostile hand can do.
#[derive(Clone, Debug)]
pub(crate) enum Damage {
    Flip {
        at: usize,
        to: u8,
    },
    Cut {
        at: usize,
    },
    Repeat {
        from: usize,
        len: usize,
        to: usize,
    },
    Insert {
        at: usize,
        bytes: Vec<u8>,
    },
    /// The `nth` element (counted modulo the elements there are) written
    /// twice, one after the other.
    DupElement {
        nth: usize,
    },
    /// The `nth` attribute written twice on its element.
    DupAttr {
        nth: usize,
    },
    /// One hex digit of the `nth` stamp (an `h` or `b` attribute) set to
    /// `digit`: the file stays well-formed and says something else.
    Restamp {
        nth: usize,
        at: usize,
        digit: u8,
    },
    /// The file up to `at`, then another file (`other`, modulo the others
    /// given) from `from` on.
    Splice {
        at: usize,
        other: usize,
        from: usize,
    },
}

/// `body` with each of `damage` done to it in turn; `others` are the files
/// a splice takes its second part from.
pub(crate) fn damaged(body: &[u8], damage: &[Damage], others: &[&[u8]]) -> Vec<u8> {
    let mut out = body.to_vec();
    for d in damage {
        let n = out.len().max(1);
        match d {
            Damage::Flip { at, to } => {
                let at = at % n;
                if at < out.len() {
                    out[at] = *to;
                }
            }
            Damage::Cut { at } => out.truncate(at % n),
            Damage::Repeat { from, len, to } => {
                let from = from % n;
                let end = (from + len).min(out.len());
                let piece = out[from.min(end)..end].to_vec();
                let to = to % n;
                out.splice(to.min(out.len())..to.min(out.len()), piece);
            }
            Damage::Insert { at, bytes } => {
                let at = (at % n).min(out.len());
                out.splice(at..at, bytes.iter().copied());
            }
            Damage::DupElement { nth } => {
                let starts: Vec<usize> = out
                    .windows(2)
                    .enumerate()
                    .filter(|(_, w)| w[0] == b'<' && w[1].is_ascii_alphabetic())
                    .map(|(i, _)| i)
                    .collect();
                if let Some(&start) = starts.get(nth % starts.len().max(1))
                    && let Some(end) = element_end(&out, start)
                {
                    let piece = out[start..end].to_vec();
                    out.splice(end..end, piece);
                }
            }
            Damage::DupAttr { nth } => {
                let quotes: Vec<usize> =
                    out.windows(2).enumerate().filter(|(_, w)| w == b"=\"").map(|(i, _)| i).collect();
                if let Some(&eq) = quotes.get(nth % quotes.len().max(1)) {
                    let name = out[..eq].iter().rposition(|&b| b == b' ').map_or(eq, |i| i + 1);
                    if let Some(close) = out[eq + 2..].iter().position(|&b| b == b'"') {
                        let end = eq + 2 + close + 1;
                        let mut piece = vec![b' '];
                        piece.extend_from_slice(&out[name..end]);
                        out.splice(end..end, piece);
                    }
                }
            }
            Damage::Restamp { nth, at, digit } => {
                let stamps: Vec<usize> = out
                    .windows(4)
                    .enumerate()
                    .filter(|(_, w)| w == b" h=\"" || w == b" b=\"")
                    .map(|(i, _)| i + 4)
                    .collect();
                if let Some(&start) = stamps.get(nth % stamps.len().max(1)) {
                    let len = out[start..].iter().position(|b| !b.is_ascii_hexdigit()).unwrap_or(0);
                    if len > 0 {
                        out[start + at % len] = b"0123456789abcdef"[usize::from(*digit % 16)];
                    }
                }
            }
            Damage::Splice { at, other, from } => {
                if !others.is_empty() {
                    let other = others[other % others.len()];
                    out.truncate(at % n);
                    out.extend_from_slice(&other[from % other.len().max(1)..]);
                }
            }
        }
    }
    out
}

/// Where the element opening at `start` ends: after its `/>`, or after the
/// first `</name>` that follows.
fn element_end(bytes: &[u8], start: usize) -> Option<usize> {
    let name_len = bytes[start + 1..].iter().position(|b| !(b.is_ascii_alphanumeric() || *b == b'-'))?;
    let name = &bytes[start + 1..start + 1 + name_len];
    let open_end = start + bytes[start..].iter().position(|&b| b == b'>')?;
    if bytes[open_end - 1] == b'/' {
        return Some(open_end + 1);
    }
    let mut close = b"</".to_vec();
    close.extend_from_slice(name);
    close.push(b'>');
    let at = bytes[open_end..].windows(close.len()).position(|w| w == close.as_slice())?;
    Some(open_end + at + close.len())
}

/// A stamp changed in one digit: damage that a well-formedness check
/// cannot see.
pub(crate) fn restamp() -> impl Strategy<Value = Damage> {
    (any::<usize>(), any::<usize>(), any::<u8>()).prop_map(|(nth, at, digit)| Damage::Restamp {
        nth,
        at,
        digit,
    })
}

pub(crate) fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, to)| Damage::Flip { at, to }),
        any::<usize>().prop_map(|at| Damage::Cut { at }),
        (any::<usize>(), 0usize..400, any::<usize>()).prop_map(|(from, len, to)| Damage::Repeat {
            from,
            len,
            to
        }),
        (
            any::<usize>(),
            proptest::collection::vec(
                prop_oneof![
                    Just(b'<'),
                    Just(b'>'),
                    Just(b'"'),
                    Just(b'&'),
                    Just(b'='),
                    Just(b' '),
                    Just(0u8),
                    Just(0x1b),
                    any::<u8>()
                ],
                0..40
            )
        )
            .prop_map(|(at, bytes)| Damage::Insert { at, bytes }),
        any::<usize>().prop_map(|nth| Damage::DupElement { nth }),
        any::<usize>().prop_map(|nth| Damage::DupAttr { nth }),
        restamp(),
        (any::<usize>(), any::<usize>(), any::<usize>()).prop_map(|(at, other, from)| Damage::Splice {
            at,
            other,
            from
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Damaged files (sealed again, so the parser sees them, or not) never
    /// panic a decoder: each is refused with an error or decodes to what
    /// the bytes say; a patient file that decodes encodes again the same.
    #[test]
    fn damaged_files_are_refused_or_read_never_a_panic(damage in proptest::collection::vec(damage(), 1..4), reseal in any::<bool>()) {
        use clinicsync::xmlstore::{decode_segment, decode_site, encode_segment, Segment};
        let patient = encode_patient(&golden_doc());
        let segment = encode_segment(&Segment {
            site: SiteId::parse("0123456789abcdef0123456789abcdef").unwrap(),
            seq: 7,
            created_ms: 1_763_700_000_000,
            rows: golden_doc().rows.into_iter().map(|(k, r)| (("3f2504e0-4f89-11d3-9a0c-0305e82c3301".to_owned(), k), r)).collect(),
        });
        let site = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/format/site-v1.xml")).unwrap();
        let bodies: Vec<Vec<u8>> =
            [patient, segment, site].iter().map(|f| clinicsync::xmlstore::unseal(f).unwrap().to_vec()).collect();
        for (i, body) in bodies.iter().enumerate() {
            let others: Vec<&[u8]> =
                bodies.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, b)| b.as_slice()).collect();
            let bad = damaged(body, &damage, &others);
            let bytes = if reseal { seal(bad) } else { bad };
            if let Ok(doc) = decode_patient(&bytes, Limits::default()) {
                prop_assert_eq!(decode_patient(&encode_patient(&doc), Limits::default()).unwrap(), doc);
            }
            let _ = decode_segment(&bytes, Limits::default());
            let _ = decode_site(&bytes);
        }
    }
}
