//! `clinicsync detach`: this site leaves the family. What the app changed
//! is exported first (a complete sync, which must succeed); a last site
//! file says the site left, so the others stop waiting for it before they
//! compact their logs and purge deletions; then clinicsync's triggers and
//! `_cs_` tables are removed, and the app's tables are left as they are.
//! `init` can join again later, as a new site.

use std::path::Path;

use serde::Serialize;

use super::host::SystemClock;
use super::run::take_lock;
use super::{EngineError, staging_dir};
use crate::db::Db;
use crate::folder::DiskFolder;
use crate::folder::layout::site_path;
use crate::model::{Clock, short_id};
use crate::xmlstore::{decode_site, encode_site};

/// What `detach` did, or would do. Field names are part of `--json`.
#[derive(Clone, Debug, Serialize)]
pub struct DetachReport {
    pub site: String,
    pub site_name: String,
    pub family: String,
    pub dry_run: bool,
    /// Local changes not yet in the folder before the last sync.
    pub pending_changes: u64,
    /// clinicsync's triggers and tables removed (or to be removed).
    pub triggers: usize,
    pub tables: usize,
}

pub fn detach(db_path: &Path, dry_run: bool) -> Result<DetachReport, EngineError> {
    let db = Db::open(db_path)?;
    let cfg = db.site_config()?;
    let (triggers, tables) = db.clinicsync_objects()?;
    let report = DetachReport {
        site: cfg.site.to_string(),
        site_name: cfg.name.clone(),
        family: cfg.family.to_string(),
        dry_run,
        pending_changes: db.pending_changes()?,
        triggers: triggers.len(),
        tables: tables.len(),
    };
    drop(db);
    if dry_run {
        return Ok(report);
    }
    // Everything the app changed goes to the folder first.
    super::baseline::sync_first(db_path, "detach", |e| {
        format!(
            "this site did not leave the family: its last sync failed ({e}), and what it has not exported would not reach the others; run `clinicsync detach` again once `clinicsync sync` succeeds"
        )
    })?;
    let _lock = take_lock(db_path)?;
    let db = Db::open(db_path)?;
    let pending = db.pending_changes()?;
    if pending > 0 {
        return Err(EngineError::Refused(format!(
            "this site did not leave the family: the app changed {pending} rows during the last sync; run `clinicsync detach` again"
        )));
    }
    // The last site file: the site left.
    let folder = DiskFolder::new(cfg.folder.clone(), Some(staging_dir(db_path)));
    let path = site_path(cfg.site);
    let mut file = folder
        .read(&path, 1 << 20)
        .ok()
        .and_then(|b| decode_site(&b).ok())
        .ok_or_else(|| {
            EngineError::Refused(format!(
                "this site did not leave the family: its site file {path} cannot be read back; run `clinicsync sync`, then `clinicsync detach` again"
            ))
        })?;
    file.left_ms = Some(SystemClock.now_ms());
    folder.write_batch(&[(path.clone(), encode_site(&file))]).map_err(|cause| EngineError::Io {
        what: format!("cannot write {path} (this site is still in the family)"),
        cause,
    })?;
    db.detach()?;
    tracing::info!(site = short_id(&report.site), "left the family");
    Ok(report)
}
