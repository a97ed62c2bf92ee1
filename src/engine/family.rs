//! `clinicsync family delete`: this site leaves the family (`detach`), then
//! every file of the family is removed from the folder: site files,
//! change-logs, patient files and their conflict copies, document bodies.
//! Files that are not the family's (a cloud client's own, a person's note)
//! stay. `clinicsync.xml` stays as a note of which site deleted the family
//! and when, so the other sites stop with a clear status, keep all their
//! data and delete nothing.

use std::path::Path;

use serde::Serialize;

use super::detach::{DetachReport, detach};
use super::host::SystemClock;
use super::{EngineError, staging_dir};
use crate::conflicts::{Classified, classify_path};
use crate::db::Db;
use crate::folder::layout::{LOG_DIR, MANIFEST, PATIENTS_DIR, SITES_DIR};
use crate::folder::{DiskFolder, IgnoreRules};
use crate::model::Clock;
use crate::xmlstore::{decode_manifest, encode_manifest};

/// What `family delete` did, or would do. Field names are part of `--json`.
#[derive(Clone, Debug, Serialize)]
pub struct FamilyDeleteReport {
    pub family: String,
    pub dry_run: bool,
    /// The family's files removed from the folder (or to be removed).
    pub files: u64,
    /// Files in the family's folders that are not the family's, left alone.
    pub left_alone: Vec<String>,
    /// Files that could not be removed, with why.
    pub not_removed: Vec<String>,
    pub detach: DetachReport,
}

/// The folders of the family's files, deepest first once listed.
const FAMILY_DIRS: [&str; 4] = [SITES_DIR, LOG_DIR, PATIENTS_DIR, "docs"];

/// Whether `path` is one of the family's files: a name clinicsync writes
/// (or a cloud client's copy of one), a document body, a temp file.
fn is_familys(path: &str, entry: &crate::folder::Entry) -> bool {
    if !matches!(classify_path(path), Classified::Unknown) {
        return true;
    }
    let name = &entry.name;
    crate::model::body_at(path).is_some() || (name.starts_with("~$") && name.ends_with(".tmp"))
}

/// Deletes the family's data from the folder after `confirm` names the
/// family (its id as `status` shows it, or whole).
pub fn family_delete(
    db_path: &Path,
    confirm: &str,
    dry_run: bool,
) -> Result<FamilyDeleteReport, EngineError> {
    let db = Db::open(db_path)?;
    let cfg = db.site_config()?;
    drop(db);
    let family = cfg.family.to_string();
    if !dry_run && confirm != cfg.family.short() && confirm != family {
        return Err(EngineError::Refused(format!(
            "nothing was deleted: the family id given was {confirm:?}, and this family is {} (as `clinicsync status` shows it)",
            cfg.family.short()
        )));
    }
    let folder = DiskFolder::new(cfg.folder.clone(), Some(staging_dir(db_path)));
    let ignore = IgnoreRules::new();
    let io = |what: String| move |cause| EngineError::Io { what, cause };
    // Every file under the family's folders, and its folders, deepest last.
    let mut files = Vec::new();
    let mut left_alone = Vec::new();
    let mut dirs = Vec::new();
    for top in FAMILY_DIRS {
        let walked = folder.walk(top).map_err(io(format!("cannot list {top}/")))?;
        for (path, entry) in walked.files {
            if !ignore.is_ignored(&entry.name) && is_familys(&path, &entry) {
                files.push(path);
            } else {
                left_alone.push(path);
            }
        }
        dirs.extend(walked.dirs);
    }
    if dry_run {
        let detach = detach(db_path, true)?;
        return Ok(FamilyDeleteReport {
            family,
            dry_run,
            files: files.len() as u64,
            left_alone,
            not_removed: Vec::new(),
            detach,
        });
    }
    // The manifest must still be this family's (not already deleted).
    let manifest = folder
        .read(MANIFEST, 1 << 20)
        .ok()
        .and_then(|b| decode_manifest(&b).ok())
        .filter(|m| m.family == cfg.family && m.deleted.is_none())
        .ok_or_else(|| {
            EngineError::Refused(format!(
                "nothing was deleted: {}/{MANIFEST} is not this family's, or says its data was deleted already",
                cfg.folder.display()
            ))
        })?;
    let detach = detach(db_path, false)?;
    let mut removed = 0;
    let mut not_removed = Vec::new();
    for path in &files {
        match folder.remove(path) {
            Ok(()) => removed += 1,
            Err(e) => not_removed.push(format!("{path}: {e}")),
        }
    }
    dirs.sort_by_key(|d| std::cmp::Reverse(d.matches('/').count()));
    for dir in &dirs {
        let _ = folder.remove_empty_dir(dir);
    }
    let note = crate::xmlstore::Manifest { deleted: Some((cfg.site, SystemClock.now_ms())), ..manifest };
    folder
        .write_batch(&[(MANIFEST.to_owned(), encode_manifest(&note))])
        .map_err(io(format!("cannot write the note {MANIFEST}")))?;
    Ok(FamilyDeleteReport { family, dry_run, files: removed, left_alone, not_removed, detach })
}
