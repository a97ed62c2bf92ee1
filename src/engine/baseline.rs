//! `clinicsync baseline upload`: makes a damaged folder whole again from
//! this database. Every row this site holds is published again, whole, in
//! segments of its change-log, and every patient file is written again from
//! the state (joined with what the folder holds, as every write is: newer
//! values of other sites stay, and nothing this site lacks is deleted
//! anywhere). It is the one operation that replaces a patient file
//! clinicsync cannot read, and it first copies each one it replaces to
//! `<db>.replaced-<time>/`.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::host::SystemClock;
use super::run::{SyncOptions, sync, take_lock};
use super::{EngineError, Outcome, RunReport, staging_dir};
use crate::conflicts::{Classified, FileKind, classify_path};
use crate::db::Db;
use crate::folder::layout::PATIENTS_DIR;
use crate::folder::{DiskFolder, IgnoreRules};
use crate::model::Clock;
use crate::xmlstore::{Limits, decode_patient, format_time};

/// Rows and approximate bytes of state per republished segment.
const ROWS_PER_SEGMENT: usize = 5_000;
const BYTES_PER_SEGMENT: usize = 4 << 20;

/// What `baseline upload` did, or would do. Field names are part of `--json`.
#[derive(Clone, Debug, Serialize)]
pub struct UploadReport {
    pub dry_run: bool,
    /// Patient files in the folder that cannot be read, replaced (or to be).
    pub replaced: Vec<String>,
    /// Where the replaced files were copied first.
    pub replaced_copies: Option<String>,
    /// Damaged patient files of patients this site does not hold: left as
    /// they are (the site that holds the patient writes them again).
    pub not_held: Vec<String>,
    /// Exports made of the whole state, and the rows in them.
    pub exports: u64,
    pub rows: u64,
    /// The sync that wrote them and every patient file.
    pub run: Option<RunReport>,
}

/// A complete sync before an operation that replaces or removes
/// something: what the app changed must be in the folder first. When it
/// fails, the operation is refused with `refused(the error)`.
pub(super) fn sync_first(
    db_path: &Path,
    trigger: &str,
    refused: impl FnOnce(&str) -> String,
) -> Result<RunReport, EngineError> {
    let options =
        SyncOptions { trigger: trigger.into(), wait_for_lock: Some(|| {}), ..SyncOptions::default() };
    let report = sync(db_path, &options)?;
    if report.outcome == Outcome::Failed {
        return Err(EngineError::Refused(refused(report.error.as_deref().unwrap_or_default())));
    }
    Ok(report)
}

fn sync_for(db_path: &Path, what: &str) -> Result<RunReport, EngineError> {
    sync_first(db_path, "baseline-upload", |e| {
        format!("baseline upload stopped {what}: the sync failed ({e}); nothing was replaced")
    })
}

pub fn baseline_upload(db_path: &Path, dry_run: bool) -> Result<UploadReport, EngineError> {
    if dry_run {
        return upload(db_path, true);
    }
    super::operation::recorded(
        db_path,
        "baseline upload",
        || upload(db_path, false),
        |r| {
            let mut events: Vec<_> = r
            .replaced
            .iter()
            .map(|p| {
                let copy = r.replaced_copies.as_deref().unwrap_or_default();
                ("warning", Some(p.clone()), format!("could not be read; written again from this site's state (the damaged file was copied to {copy} first)"))
            })
            .collect();
            events.extend(r.not_held.iter().map(|p| {
                (
                    "warning",
                    Some(p.clone()),
                    "could not be read, and this site does not hold its patient: left as it is".to_owned(),
                )
            }));
            super::operation::Done {
                outcome: r.run.as_ref().map_or(Outcome::Ok, |run| run.outcome),
                sentence: format!(
                    "published again every row this site holds ({} rows in {} exports) and wrote every patient file again; {} damaged files replaced",
                    r.rows,
                    r.exports,
                    r.replaced.len()
                ),
                events,
            }
        },
    )
}

fn upload(db_path: &Path, dry_run: bool) -> Result<UploadReport, EngineError> {
    if !dry_run {
        // What the app changed goes first, and what the others wrote is in.
        sync_for(db_path, "before it began")?;
    }
    let db = Db::open(db_path)?;
    let cfg = db.site_config()?;
    let folder = DiskFolder::new(cfg.folder.clone(), Some(staging_dir(db_path)));
    let ignore = IgnoreRules::new();
    let limits = Limits::default();
    let io = |what: String| move |cause| EngineError::Io { what, cause };
    // The patients this site holds, by file name: a damaged file of a
    // patient this site does not hold is not replaced (nothing here could
    // write it again).
    let held: std::collections::HashSet<String> =
        db.patients()?.iter().map(|p| crate::model::patient_file_name(p)).collect();
    // Patient files nothing can read: (path, their bytes).
    let mut damaged = Vec::new();
    let mut not_held = Vec::new();
    let walked = folder.walk(PATIENTS_DIR).map_err(io(format!("cannot list {PATIENTS_DIR}/")))?;
    for (path, entry) in walked.files {
        let stem = match classify_path(&path) {
            Classified::Original(FileKind::Patient { stem }) if !ignore.is_ignored(&entry.name) => stem,
            _ => continue,
        };
        // Read as every file is (not a link, not a FIFO); a file that
        // cannot be opened at all is left for the next run to name.
        if let Ok(bytes) = folder.read(&path, limits.max_file_bytes)
            && decode_patient(&bytes, limits).is_err()
        {
            if held.contains(&stem) {
                damaged.push((path, bytes));
            } else {
                not_held.push(path);
            }
        }
    }
    damaged.sort();
    let replaced: Vec<String> = damaged.iter().map(|(p, _)| p.clone()).collect();
    if dry_run {
        return Ok(UploadReport {
            dry_run,
            replaced,
            replaced_copies: None,
            not_held,
            exports: 0,
            rows: 0,
            run: None,
        });
    }
    let mut copies = None;
    if !damaged.is_empty() {
        let mut dir = db_path.as_os_str().to_owned();
        dir.push(format!(".replaced-{}", format_time(SystemClock.now_ms()).replace(':', "-")));
        let dir = PathBuf::from(dir);
        for (path, bytes) in &damaged {
            let to = dir.join(path);
            std::fs::create_dir_all(to.parent().expect("a patient path has folders"))
                .map_err(io(format!("cannot create {}", dir.display())))?;
            std::fs::write(&to, bytes)
                .map_err(io(format!("cannot keep a copy of {path} in {}", dir.display())))?;
        }
        copies = Some(dir.display().to_string());
    }
    drop(db);
    let (mut exports, mut rows) = (0, 0);
    {
        let _lock = take_lock(db_path)?;
        let mut db = Db::open(db_path)?;
        for (path, _) in &damaged {
            folder.remove(path).map_err(io(format!("cannot replace {path}")))?;
        }
        let mut after = None;
        let mut first_seq = None;
        loop {
            let mut w = db.begin_write(SystemClock.now_ms())?;
            let next = w.republish_state(after.as_ref(), ROWS_PER_SEGMENT, BYTES_PER_SEGMENT)?;
            let done = w.commit()?;
            if let Some(seq) = done.seq {
                first_seq = first_seq.or(Some(seq));
                exports += 1;
                rows += done.rows as u64;
            }
            match next {
                Some(key) => after = Some(key),
                None => break,
            }
        }
        // Own segments lost from the folder before these: the log starts
        // at the state published again (a site behind it reads the patient
        // files, whole again, then goes on from there).
        if let Some(first) = first_seq {
            let oldest: u64 = db.meta("oldest_seq")?.and_then(|v| v.parse().ok()).unwrap_or(1);
            let mut lost = false;
            for seq in oldest..first {
                lost |=
                    folder.metadata(&crate::changelog::segment_path(cfg.site, seq)).ok().flatten().is_none();
            }
            if lost {
                db.set_meta("oldest_seq", &first.to_string())?;
            }
        }
    }
    // The sync writes the segments and every patient file they name.
    let run = sync_for(db_path, "after the state was recorded (the next sync writes it)")?;
    Ok(UploadReport { dry_run, replaced, replaced_copies: copies, not_held, exports, rows, run: Some(run) })
}

/// What `baseline download` did, or would do. Field names are part of
/// `--json`.
#[derive(Clone, Debug, Serialize)]
pub struct DownloadReport {
    pub dry_run: bool,
    pub tables: Vec<crate::db::TableBaseline>,
    /// The copy of the database taken before anything was replaced.
    pub backup: Option<String>,
}

/// `clinicsync baseline download [--table T]`: makes this database's
/// mapped tables (or one) equal to what the family holds. What the app
/// changed is exported first (a complete sync); the database is copied to
/// `<db>.before-baseline-<time>` before anything is replaced.
pub fn baseline_download(
    db_path: &Path,
    table: Option<&str>,
    dry_run: bool,
) -> Result<DownloadReport, EngineError> {
    if dry_run {
        return download(db_path, table, true);
    }
    super::operation::recorded(
        db_path,
        "baseline download",
        || download(db_path, table, false),
        |r| {
            let tables: Vec<String> = r
                .tables
                .iter()
                .map(|t| {
                    format!(
                        "{} ({} put back, {} corrected, {} removed)",
                        t.table, t.added, t.changed, t.removed
                    )
                })
                .collect();
            super::operation::Done {
                outcome: Outcome::Ok,
                sentence: format!(
                    "made {} equal to what the family holds; the database was copied first to {}",
                    tables.join(", "),
                    r.backup.as_deref().unwrap_or_default()
                ),
                events: Vec::new(),
            }
        },
    )
}

fn download(db_path: &Path, table: Option<&str>, dry_run: bool) -> Result<DownloadReport, EngineError> {
    let db = Db::open(db_path)?;
    let tables: Vec<String> = match table {
        Some(t) if db.mapping().table(t).is_some() => vec![t.to_owned()],
        Some(t) => {
            let known: Vec<&str> = db.mapping().tables().collect();
            return Err(EngineError::Refused(format!(
                "{t:?} is not a table this database syncs; the tables are: {}",
                known.join(", ")
            )));
        }
        None => db.mapping().tables().map(str::to_owned).collect(),
    };
    drop(db);
    if !dry_run {
        sync_first(db_path, "baseline-download", |e| {
            format!(
                "baseline download stopped before it began: the sync failed ({e}), so what this site changed might not be in the folder; nothing was replaced"
            )
        })?;
    }
    let _lock = take_lock(db_path)?;
    let mut db = Db::open(db_path)?;
    let backup = if dry_run {
        None
    } else {
        let mut path = db_path.as_os_str().to_owned();
        path.push(format!(".before-baseline-{}", format_time(SystemClock.now_ms()).replace(':', "-")));
        let path = PathBuf::from(path);
        db.backup_to(&path)?;
        Some(path.display().to_string())
    };
    let mut w = db.begin_write(SystemClock.now_ms())?;
    // Changes the app made since the sync are kept: stamped first.
    w.stamp_pending(usize::MAX, usize::MAX)?;
    let mut done = Vec::new();
    for t in &tables {
        done.push(w.rebaseline(t)?);
    }
    if !dry_run {
        w.commit()?;
    }
    Ok(DownloadReport { dry_run, tables: done, backup })
}
