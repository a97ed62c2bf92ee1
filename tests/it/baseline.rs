//! `clinicsync baseline upload`: a folder damaged by hand (patient files
//! deleted, one cut short) is made whole again from a site's database; the
//! file nothing could read is kept aside first; a new site seeded from the
//! folder equals the others.

use std::fs;

use crate::support::*;

#[test]
fn a_damaged_folder_is_made_whole_again_and_a_new_site_seeds_from_it() {
    let (family, a, b) = two_sites();
    let ids: Vec<String> = (0..6).map(|n| add_patient(&app(&a), n, 2)).collect();
    sync_ok(&a);
    sync_ok(&b);
    app(&b).execute("UPDATE patients SET phone = 'newer, typed at B' WHERE id = ?1", [&ids[5]]).unwrap();
    sync_ok(&b);
    let folder = family.folder();
    // By hand: two patient files deleted, one cut short, and A's change-log
    // gone (a person "tidying up").
    fs::remove_file(patient_file(&folder, &ids[0])).unwrap();
    fs::remove_file(patient_file(&folder, &ids[1])).unwrap();
    let cut = patient_file(&folder, &ids[2]);
    let bytes = fs::read(&cut).unwrap();
    fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    let a_site = json_of(&a, &["status"])["site"].as_str().unwrap().to_owned();
    fs::remove_dir_all(folder.join("log").join(&a_site)).unwrap();

    let dry = cli(&a).args(["baseline", "upload", "--dry-run", "--json"]).output().unwrap();
    let dry: serde_json::Value = serde_json::from_slice(&dry.stdout).unwrap();
    let cut_rel = cut.strip_prefix(&folder).unwrap().to_string_lossy().into_owned();
    assert_eq!(dry["replaced"], serde_json::json!([cut_rel]), "{dry:#}");
    assert_eq!(fs::read(&cut).unwrap().len(), bytes.len() / 3, "a dry run changes nothing");

    let out = cli(&a).args(["baseline", "upload", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["rows"], 6 * 7, "every row A holds: {report:#}");
    let copies = std::path::PathBuf::from(report["replaced_copies"].as_str().unwrap());
    assert_eq!(
        fs::read(copies.join(&cut_rel)).unwrap(),
        &bytes[..bytes.len() / 3],
        "the damaged file was kept"
    );
    for id in &ids {
        assert!(patient_file(&folder, id).exists(), "{id}");
    }
    let (code, verified) = {
        let out = cli(&a).args(["verify", "--json"]).output().unwrap();
        (out.status.code(), serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap())
    };
    assert_eq!((code, verified["problems"].as_array().unwrap().len()), (Some(0), 0), "{verified:#}");

    // A new site seeded from the folder equals the others, B's newer value
    // included (the join decided, A did not override it).
    let c = family.init("c");
    sync_ok(&b);
    sync_ok(&c);
    assert_eq!(patient_field(&c, &ids[5], "phone").unwrap(), "newer, typed at B");
    assert_eq!(dump(&c), dump(&a));
    assert_eq!(dump(&b), dump(&a));
}
