//! Real folder files, damaged at random, through `clinicsync sync` as a
//! process: the family's patient file, the other site's unread change-log
//! segment and its site file, with bytes flipped, cut, repeated or
//! inserted, elements and attributes written twice, or two files spliced,
//! sealed again or not. Whatever the damage, the run ends in time and
//! under the memory ceiling ([`run_bounded`]), never panics, and either
//! applies the file whole or refuses it with a sentence naming it and
//! changes nothing; a file no reader accepts is never passed over in
//! silence; and nothing the database held is lost.

use std::collections::BTreeMap;
use std::fs;

use clinicsync::db::Db;
use clinicsync::model::{PatientDoc, PatientId, RowKey, RowState};
use clinicsync::xmlstore::{Limits, decode_patient, decode_segment, decode_site, seal, unseal};
use proptest::prelude::*;

use crate::format::{Damage, damage, damaged, restamp};
use crate::hostile_set::{Scene, fill, holdings, run_bounded};

/// The files damaged: where each is in the folder.
const TARGETS: [&str; 3] = ["patients/{SHARD}/{STEM}.xml", "log/{B}/{NEXT}.xml", "sites/{B}.xml"];

/// Every row this site's database holds, by key, as it would write them
/// (a row is kept under the patient its fields name, which need not be the
/// patient a file filed it under).
fn rows_held(scene: &Scene) -> BTreeMap<RowKey, RowState> {
    let db = Db::open(&scene.db()).unwrap();
    let patients: Vec<String> = db
        .conn()
        .prepare("SELECT DISTINCT patient FROM _cs_rows WHERE patient IS NOT NULL")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let names: Vec<&str> = patients.iter().map(String::as_str).collect();
    let mut rows = BTreeMap::new();
    for (p, found) in db.stored_for_files(&names, &Limits::default(), u64::MAX).unwrap() {
        match found {
            Ok(stored) => rows.extend(stored.decode().unwrap().rows),
            Err(sentence) => panic!("{p}: {sentence}"),
        }
    }
    rows
}

/// Whether `held` has every version of `row` (joining it changes nothing).
fn holds(held: &BTreeMap<RowKey, RowState>, key: &RowKey, row: &RowState) -> bool {
    held.get(key).is_some_and(|mine| mine.join(row) == *mine)
}

/// What a damaged file says, read as a reader of its kind reads it: the
/// rows it carries by patient, or why it is refused.
fn what_it_says(target: &str, bytes: &[u8]) -> Result<Vec<PatientDoc>, String> {
    let limits = Limits::default();
    match target {
        "patients/{SHARD}/{STEM}.xml" => {
            decode_patient(bytes, limits).map(|doc| vec![doc]).map_err(|e| e.to_string())
        }
        "log/{B}/{NEXT}.xml" => decode_segment(bytes, limits)
            .map(|segment| {
                let mut docs: BTreeMap<String, PatientDoc> = BTreeMap::new();
                for ((patient, key), row) in segment.rows {
                    docs.entry(patient.clone())
                        .or_insert_with(|| PatientDoc { patient: PatientId(patient), rows: BTreeMap::new() })
                        .rows
                        .insert(key, row);
                }
                docs.into_values().collect()
            })
            .map_err(|e| e.to_string()),
        _ => decode_site(bytes).map(|_| Vec::new()).map_err(|e| e.to_string()),
    }
}

/// The three files as the template holds them, without their trailers.
fn bodies() -> Vec<Vec<u8>> {
    TARGETS
        .iter()
        .map(|target| {
            let scene = Scene::for_item(target);
            let file = fs::read(scene.folder().join(fill(target))).unwrap();
            unseal(&file).unwrap().to_vec()
        })
        .collect()
}

fn check(target_index: usize, damage: &[Damage], reseal: bool) -> Result<(), TestCaseError> {
    let target = TARGETS[target_index];
    let bodies = bodies();
    let others: Vec<&[u8]> =
        bodies.iter().enumerate().filter(|(i, _)| *i != target_index).map(|(_, b)| b.as_slice()).collect();
    let bad = damaged(&bodies[target_index], damage, &others);
    let bytes = if reseal { seal(bad) } else { bad };
    let says = what_it_says(target, &bytes);

    let scene = Scene::for_item(target);
    let path = fill(target);
    fs::write(scene.folder().join(&path), &bytes).unwrap();
    let held_before = rows_held(&scene);
    let before = holdings(&scene.db());

    let ran = run_bounded(&scene, &path);
    // A file left undone is an error event; a site file of another family
    // or a log of an unknown site is a warning that it is ignored.
    let refusals: Vec<&serde_json::Value> = ran
        .events_naming(&path)
        .filter(|e| {
            e["level"].as_str() == Some("error")
                || ["site-file", "unknown-site"].contains(&e["kind"].as_str().unwrap_or(""))
        })
        .collect();
    if let Err(why) = &says {
        prop_assert!(
            !refusals.is_empty(),
            "{path} is not readable ({why}) and no sentence names it: {:#}",
            ran.report
        );
    }
    let held = rows_held(&scene);
    if refusals.is_empty() {
        // Applied: every row the file carries is in the database, whole.
        let docs = says.map_err(|why| TestCaseError::fail(format!("{path}: accepted though {why}")))?;
        for (key, row) in docs.iter().flat_map(|d| &d.rows) {
            prop_assert!(
                holds(&held, key, row),
                "{path} was applied in part: the database lacks some of {key:?}: {row:?}: {:#}",
                ran.report
            );
        }
    } else {
        // Refused: nothing of it reached the database.
        prop_assert!(
            holdings(&scene.db()) == before,
            "{path} was refused ({refusals:?}) but the database changed"
        );
    }
    // Whatever happened, nothing the database held is lost.
    for (key, row) in &held_before {
        prop_assert!(holds(&held, key, row), "{path}: the database lost what it held of {key:?}");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn a_damaged_folder_file_is_applied_whole_or_refused_with_a_sentence_in_time_and_memory(
        target in 0..TARGETS.len(),
        damage in proptest::collection::vec(prop_oneof![2 => damage(), 1 => restamp()], 1..4),
        reseal in proptest::bool::weighted(0.8),
    ) {
        check(target, &damage, reseal)?;
    }
}
