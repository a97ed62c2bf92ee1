//! Property tests of the laws everything else relies on: join is
//! commutative, associative and idempotent; concurrency is reported exactly
//! when neither version supersedes the other; the patient file codec round
//! trips every value and never misreads a torn or altered file.

use clinicsync::model::{
    Base, FieldState, FieldVersion, Hlc, PatientDoc, PatientId, RowKey, RowState, SiteId, Value,
};
use clinicsync::xmlstore::{Limits, decode_patient, encode_patient};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<i64>().prop_map(Value::Integer),
        any::<u64>().prop_map(|b| Value::Real(f64::from_bits(b))),
        prop_oneof![Just(0.0f64), Just(-0.0), Just(f64::INFINITY), Just(f64::NEG_INFINITY), any::<f64>()]
            .prop_map(Value::Real),
        any::<String>().prop_map(Value::Text),
        "[ \t\r\na-z<>&\"']{0,12}".prop_map(Value::Text),
        vec(any::<u8>(), 0..16).prop_map(Value::Blob),
    ]
}

/// An honest history of one field, as sites write it: each write is made by
/// one of three sites with a random part of the earlier writes in view
/// (always its own), carries that view as its base, and is stamped past
/// everything in it, sometimes with a clock behind another site's. Sites
/// are drawn per history (`universe`), so independent histories never share
/// a site.
fn history() -> impl Strategy<Value = Vec<FieldVersion>> {
    (any::<u64>(), vec((0u8..3, value(), any::<u64>(), 0u64..3), 1..8)).prop_map(|(universe, ops)| {
        let mut out: Vec<FieldVersion> = Vec::new();
        for (site, v, mask, skew) in ops {
            let mut id = [site; 16];
            id[..8].copy_from_slice(&universe.to_le_bytes());
            let site = SiteId::from_bytes(id);
            let view: Vec<FieldVersion> = out
                .iter()
                .enumerate()
                .filter(|(j, w)| (mask >> (j % 64)) & 1 == 1 || w.hlc().site() == site)
                .map(|(_, w)| w.clone())
                .collect();
            let base = FieldState::from_versions(view).map(|f| f.context()).unwrap_or_default();
            let wall = base.latest().map_or(skew, |h| h.wall_ms() + 1 + skew);
            out.push(FieldVersion::new(v, Hlc::new(wall, 0, site), base).expect("stamped past its base"));
        }
        out
    })
}

/// A non-empty part of a history (what one site may hold).
fn part(history: &[FieldVersion], mask: u64) -> FieldState {
    let chosen: Vec<FieldVersion> = history
        .iter()
        .enumerate()
        .filter(|(i, _)| (mask >> (i % 64)) & 1 == 1)
        .map(|(_, v)| v.clone())
        .collect();
    FieldState::from_versions(chosen).unwrap_or_else(|| FieldState::single(history[0].clone()))
}

fn field() -> impl Strategy<Value = FieldState> {
    (history(), any::<u64>()).prop_map(|(h, mask)| part(&h, mask))
}

fn row() -> impl Strategy<Value = RowState> {
    let stamps = vec((0u64..12, 0u8..3), 0..3);
    (0u64..5, btree_map("[a-c]", field(), 0..3), stamps).prop_map(|(cl, fields, seen)| {
        // A tombstone may say what its delete saw; a live row never does.
        let deleted = if cl % 2 == 0 {
            Base::new(seen.into_iter().map(|(w, s)| Hlc::new(w, 0, SiteId::from_bytes([s; 16]))))
        } else {
            Base::default()
        };
        RowState { cl, fields, deleted }
    })
}

fn doc() -> impl Strategy<Value = PatientDoc> {
    let key = ("(patients|visits)", "[a-z0-9 &<\"-]{1,6}").prop_map(|(table, pk)| RowKey { table, pk });
    btree_map(key, row(), 0..4).prop_map(|rows| PatientDoc { patient: PatientId("p-1 & <co>".into()), rows })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn field_join_is_a_semilattice(h in history(), ma: u64, mb: u64, mc: u64) {
        let (a, b, c) = (part(&h, ma), part(&h, mb), part(&h, mc));
        prop_assert_eq!(a.join(&b), b.join(&a));
        prop_assert_eq!(a.join(&b).join(&c), a.join(&b.join(&c)));
        prop_assert_eq!(a.join(&a), a.clone());
    }

    #[test]
    fn row_join_is_a_semilattice(a in row(), b in row(), c in row()) {
        prop_assert_eq!(a.join(&b), b.join(&a));
        prop_assert_eq!(a.join(&b).join(&c), a.join(&b.join(&c)));
        prop_assert_eq!(a.join(&a), a.clone());
    }

    #[test]
    fn doc_join_is_a_semilattice(a in doc(), b in doc(), c in doc()) {
        prop_assert_eq!(a.join(&b), b.join(&a));
        prop_assert_eq!(a.join(&b).join(&c), a.join(&b.join(&c)));
        prop_assert_eq!(a.join(&a), a.clone());
    }

    #[test]
    fn a_doc_covers_another_exactly_when_joining_it_changes_nothing(a in doc(), b in doc()) {
        prop_assert_eq!(a.covers(&b), a.join(&b) == a);
        let joined = a.join(&b);
        prop_assert!(joined.covers(&a) && joined.covers(&b));
    }

    #[test]
    fn a_conflict_is_kept_exactly_when_neither_version_supersedes_the_other(h in history(), i: prop::sample::Index, j: prop::sample::Index) {
        let (x, y) = (h[i.index(h.len())].clone(), h[j.index(h.len())].clone());
        let joined = FieldState::single(x.clone()).join(&FieldState::single(y.clone()));
        let neither = x != y && !x.supersedes(&y) && !y.supersedes(&x);
        prop_assert_eq!(x.is_concurrent_with(&y), neither);
        prop_assert_eq!(joined.versions().len() == 2, neither);
        // The winner is always the higher stamp.
        prop_assert_eq!(joined.winner().hlc(), x.hlc().max(y.hlc()));
    }

    #[test]
    fn the_join_never_loses_a_maximal_version(h in history(), ma: u64, mb: u64) {
        let (a, b) = (part(&h, ma), part(&h, mb));
        let joined = a.join(&b);
        for v in a.versions().iter().chain(b.versions()) {
            let kept = joined.versions().contains(v);
            let superseded = joined.versions().iter().any(|w| w.supersedes(v));
            prop_assert!(kept || superseded, "{v:?} vanished without a successor");
        }
    }

    #[test]
    fn patient_files_round_trip(d in doc()) {
        let bytes = encode_patient(&d);
        prop_assert_eq!(decode_patient(&bytes, Limits::default()).unwrap(), d.clone());
        // Canonical: the same state always gives the same bytes.
        prop_assert_eq!(encode_patient(&d.join(&d)), bytes);
    }

    #[test]
    fn a_torn_or_altered_file_is_never_misread(d in doc(), cut in any::<prop::sample::Index>(), flip in any::<prop::sample::Index>(), bit in 0u8..8) {
        let bytes = encode_patient(&d);
        let at = cut.index(bytes.len() - 1);
        prop_assert!(decode_patient(&bytes[..at], Limits::default()).is_err());
        let mut altered = bytes.clone();
        let i = flip.index(bytes.len());
        altered[i] ^= 1 << bit;
        // Any accepted file must still be exactly the document written: an
        // altered file is either refused or (were a flip ever harmless)
        // read as the original, never as something else.
        if let Ok(back) = decode_patient(&altered, Limits::default()) {
            prop_assert_eq!(back, d);
        }
    }
}
