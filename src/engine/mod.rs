//! One sync run and the commands around it: `init` (create or join a
//! family), `sync` (Sync Now), `status`, `reassign`. This is the edge where
//! the database, the folder, the clock and the codecs meet.

mod baseline;
mod conflicts;
mod detach;
mod documents;
mod family;
mod history;
mod host;
mod operation;
mod progress;
mod report;
mod run;
mod settings;
mod sites;
mod status;
mod tombstones;
mod verdict;
mod verify;

use std::path::{Path, PathBuf};

pub use baseline::{DownloadReport, UploadReport, baseline_download, baseline_upload};
pub use conflicts::{ConflictView, conflict_views};
pub use detach::{DetachReport, detach};
pub use documents::{DocumentLine, DocumentsReport, documents};
pub use family::{FamilyDeleteReport, family_delete};
pub use history::{HistoryLine, HistoryReport, PatientMatch, history};
pub(crate) use host::monotonic_now;
pub use host::{SystemClock, machine_fingerprint};
pub use operation::{operation_trigger, trigger_operation};
pub use progress::{Progress, ProgressView};
pub(crate) use report::counted;
pub use report::{
    Counts, Outcome, Piece, RunReport, conflict_json, outcome_words, summary_pieces, summary_sentence,
    summary_text,
};
pub use run::{
    DocumentCounts, SyncOptions, sync, sync_running, sync_with_clock, table_trigger, trigger_table,
};
pub use settings::{SettingError, SettingView, Settings};
pub use status::{HeldPatientView, SiteStatus, StatusReport, TableStatus, status};
pub use tombstones::{TombstoneReport, TombstoneView, tombstones};
pub use verdict::{Need, Verdict};
pub use verify::{Checked, VerifyProblem, VerifyReport, verify};

use crate::db::{Db, DbError, InitParams, Mapping};
use crate::folder::layout::{MANIFEST, PATIENTS_DIR, SITES_DIR};
use crate::folder::{DiskFolder, IgnoreRules, ReadError};
use crate::model::{Clock, FamilyId, SiteId};
use crate::xmlstore::{Manifest, decode_manifest, encode_manifest};

/// The staging directory for atomic writes: beside the database, outside
/// the synced folder.
pub(crate) fn staging_dir(db_path: &Path) -> PathBuf {
    let dir = db_path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    dir.join(".clinicsync-staging")
}

/// Why a command could not do its work. Every message is one sentence that
/// says what is wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("another clinicsync is already syncing {db}; wait for it to finish")]
    Busy { db: String },
    #[error(
        "this database was set up on another computer (machine {recorded}, this one is {here}); a copy must not sync under the same site id: run `clinicsync reassign --db {db}` to give this copy a site id of its own"
    )]
    CopiedDatabase { db: String, recorded: String, here: String },
    #[error(
        "the folder already holds exports #1 to #{published} of this site but this database only knows up to #{ours}: it was restored from an older backup; run `clinicsync reassign --db {db}` to continue under a new site id (its data comes back from the folder)"
    )]
    RestoredBackup { db: String, published: u64, ours: u64 },
    #[error(
        "{file} is a copy of this site's own file (made by {client}): this site id is in use on two computers; stop clinicsync on one of them and run `clinicsync reassign` there, then delete the copy"
    )]
    SiteOnTwoMachines { file: String, client: &'static str },
    #[error(
        "the sync folder {folder} is not reachable (not mounted, moved or deleted?); nothing was changed, and the next run tries again"
    )]
    FolderUnreachable { folder: String },
    #[error(
        "{folder} holds no clinicsync.xml: it is not this family's folder, or the cloud client has not finished downloading it; nothing was changed"
    )]
    NotAFamily { folder: String },
    #[error("{folder}/clinicsync.xml cannot be used: {reason}")]
    BadManifest { folder: String, reason: String },
    #[error(
        "the setup of {db} was interrupted before it finished; run `clinicsync --db {db} init --folder {folder}` again to finish it"
    )]
    InitUnfinished { db: String, folder: String },
    #[error(
        "the setup of {db} was interrupted while it set up the folder {recorded}; run `clinicsync --db {db} init --folder {recorded}` to finish it there"
    )]
    InitOtherFolder { db: String, recorded: String },
    #[error(
        "{folder} belongs to family {theirs}, but this database syncs with family {ours}; point the database at its own folder"
    )]
    OtherFamily { folder: String, theirs: String, ours: String },
    #[error(
        "{folder} is not empty and holds no clinicsync family; choose an empty folder or the family's folder"
    )]
    FolderNotEmpty { folder: String },
    #[error(
        "the first export of this database could not write its change-log into {folder}; it goes on from where it stopped on the next run, and nothing is imported until then"
    )]
    FirstExportWaits { folder: String },
    #[error(
        "the family's data was deleted from {folder} by site {site} at {at} (`clinicsync family delete`); this database keeps all its data and nothing was deleted here; to sync again, run `clinicsync detach`, then `clinicsync init` with a new folder"
    )]
    FamilyDeleted { folder: String, site: String, at: String },
    /// An operation that would lose something if it went ahead; the
    /// sentence says why and what to do.
    #[error("{0}")]
    Refused(String),
    #[error("cannot read the mapping file {path}: {reason}")]
    MappingFile { path: String, reason: String },
    #[error(transparent)]
    Setting(#[from] SettingError),
    /// The cause is in the message (not a `source` too, or `{:#}` would
    /// say it twice).
    #[error("{what}: {cause}")]
    Io { what: String, cause: std::io::Error },
}

/// Recorded by `Db::init` with the setup, removed once the folder is set
/// up too: while present, `init` run again finishes the setup and a sync
/// refuses to run.
pub(crate) const INIT_UNFINISHED: &str = "init_unfinished";

/// What `init` sets up.
#[derive(Clone, Debug, Default)]
pub struct InitOptions {
    pub db: PathBuf,
    pub folder: PathBuf,
    pub site_name: Option<String>,
    pub mapping: Option<PathBuf>,
    /// The app's local documents folder (its files travel with the rows).
    pub documents_folder: Option<PathBuf>,
    /// Where the first run reports its progress.
    pub progress: Progress,
}

/// What `init` did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct InitReport {
    pub site: String,
    pub site_name: String,
    pub family: String,
    /// True when the folder already held a family and this site joined it.
    pub joined: bool,
    pub folder: String,
    /// The first sync: the full export (and, when joining, the seeding).
    pub first_run: RunReport,
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> EngineError {
    move |cause| EngineError::Io { what, cause }
}

/// Sets up a database and a folder: creates a family in an empty folder or
/// joins the one the folder holds, then runs the first sync.
pub fn init(options: &InitOptions) -> Result<InitReport, EngineError> {
    let mut draw = || host::random_id_bytes();
    init_with(options, &SystemClock, &mut draw)
}

/// [`init`] with an explicit clock and source of random ids (the
/// deterministic simulation gives both).
pub fn init_with(
    options: &InitOptions,
    clock: &dyn Clock,
    draw_id: &mut dyn FnMut() -> std::io::Result<[u8; 16]>,
) -> Result<InitReport, EngineError> {
    // A path this system cannot use (a device name on Windows) is refused
    // before anything is made.
    for (what, path) in [("the database", &options.db), ("the folder", &options.folder)] {
        let full = std::path::absolute(path).unwrap_or_else(|_| path.clone());
        if let Some(why) = crate::platform::unusable_path(&full) {
            return Err(EngineError::Io {
                what: format!("{what} {} cannot be used", full.display()),
                cause: std::io::Error::new(std::io::ErrorKind::InvalidInput, why),
            });
        }
    }
    // Refuse before touching the folder; Db::init checks again, atomically.
    // A setup that was interrupted (killed, or the folder refused a write)
    // after the database was set up is finished with what it recorded.
    let mut resume = None;
    if let Ok(db) = Db::open(&options.db) {
        let cfg = db.site_config()?;
        if db.meta(INIT_UNFINISHED)?.is_none() {
            return Err(DbError::AlreadyInitialized {
                path: options.db.display().to_string(),
                site: cfg.site.to_string(),
                folder: cfg.folder.display().to_string(),
            }
            .into());
        }
        let asked = std::path::absolute(&options.folder).unwrap_or_else(|_| options.folder.clone());
        if asked != cfg.folder {
            return Err(EngineError::InitOtherFolder {
                db: options.db.display().to_string(),
                recorded: cfg.folder.display().to_string(),
            });
        }
        let name = db.meta("site_name")?.unwrap_or_default();
        resume = Some((cfg, name));
    }
    let mapping = match &options.mapping {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| EngineError::MappingFile {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            let mapping = Mapping::from_toml(&text).map_err(|e| EngineError::MappingFile {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            Some(mapping)
        }
    };
    let folder_path = std::path::absolute(&options.folder)
        .map_err(io_err(format!("cannot resolve {}", options.folder.display())))?;
    std::fs::create_dir_all(&folder_path)
        .map_err(io_err(format!("cannot create the folder {}", folder_path.display())))?;
    settings::check_folder(&options.db, &folder_path, None)?;
    let documents_folder = match &options.documents_folder {
        Some(docs) => settings::check_documents_folder(docs, &folder_path)?,
        None => None,
    };
    let folder = DiskFolder::new(folder_path.clone(), Some(staging_dir(&options.db)));
    let folder_display = folder_path.display().to_string();
    let existing = match folder.read(MANIFEST, 1 << 20) {
        Ok(bytes) => Some(decode_manifest(&bytes).map_err(|e| EngineError::BadManifest {
            folder: folder_display.clone(),
            reason: e.to_string(),
        })?),
        Err(ReadError::NotFound) => None,
        Err(e) => return Err(EngineError::BadManifest { folder: folder_display, reason: e.to_string() }),
    };
    if let Some((site, at)) = existing.as_ref().and_then(|m| m.deleted) {
        return Err(EngineError::FamilyDeleted {
            folder: folder_display,
            site: site.short(),
            at: crate::xmlstore::format_time(at),
        });
    }
    if existing.is_none() {
        let ignore = IgnoreRules::new();
        let entries = folder.list("").map_err(io_err(format!("cannot list {folder_display}")))?;
        // An interrupted setup may have made the two folders already.
        let made_by_setup = |e: &crate::folder::Entry| {
            resume.is_some()
                && e.is_dir
                && [SITES_DIR, PATIENTS_DIR].contains(&e.name.as_str())
                && folder.list(&e.name).is_ok_and(|inside| inside.iter().all(|i| ignore.is_ignored(&i.name)))
        };
        if entries.iter().any(|e| !ignore.is_ignored(&e.name) && !made_by_setup(e)) {
            return Err(EngineError::FolderNotEmpty { folder: folder_display });
        }
    }
    let (family, site, site_name) = match resume {
        Some((cfg, name)) => {
            if let Some(m) = &existing
                && m.family != cfg.family
            {
                return Err(EngineError::OtherFamily {
                    folder: folder_display,
                    theirs: m.family.short(),
                    ours: cfg.family.short(),
                });
            }
            (cfg.family, cfg.site, name)
        }
        None => {
            let mut random =
                |what: &str| draw_id().map_err(io_err(format!("cannot draw a random {what} id")));
            let family = match &existing {
                Some(m) => m.family,
                None => FamilyId::from_bytes(random("family")?),
            };
            let site = SiteId::from_bytes(random("site")?);
            let site_name = options.site_name.clone().unwrap_or_else(|| format!("site {}", site.short()));
            let params = InitParams {
                site,
                family,
                name: site_name.clone(),
                folder: folder_path.clone(),
                machine: machine_fingerprint(),
                mapping,
                now_ms: clock.now_ms(),
            };
            drop(Db::init(&options.db, params)?);
            (family, site, site_name)
        }
    };
    host::fault_point("init-before-manifest");
    if existing.is_none() {
        let manifest = Manifest { family, created_ms: clock.now_ms(), deleted: None };
        for dir in [SITES_DIR, PATIENTS_DIR] {
            std::fs::create_dir_all(folder_path.join(dir))
                .map_err(io_err(format!("cannot create {dir}/ in {folder_display}")))?;
        }
        folder
            .write_batch(&[(MANIFEST.to_owned(), encode_manifest(&manifest))])
            .map_err(io_err(format!("cannot write {folder_display}/{MANIFEST}")))?;
    }
    // The first run catches up from the change-logs; a periodic full scan
    // is due only after the interval.
    let db = Db::open(&options.db)?;
    db.set_meta("last_full_scan_ms", &clock.now_ms().to_string())?;
    if let Some(docs) = &documents_folder {
        db.set_meta(&format!("setting.{}", settings::DOCUMENTS_FOLDER), &docs.display().to_string())?;
    }
    db.delete_meta(INIT_UNFINISHED)?;
    drop(db);
    let first_run = sync_with_clock(
        &options.db,
        &SyncOptions { trigger: "init".into(), progress: options.progress.clone(), ..SyncOptions::default() },
        clock,
    )?;
    Ok(InitReport {
        site: site.to_string(),
        site_name,
        family: family.to_string(),
        joined: existing.is_some(),
        folder: folder_display,
        first_run,
    })
}

/// What `reassign` did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ReassignReport {
    pub old_site: String,
    pub new_site: String,
}

/// Gives a database a new site id on this computer: for a copy of a
/// database, or one restored from an older backup. Its data stays; its old
/// site's exports are still in the folder and come back as imports.
pub fn reassign(db_path: &Path) -> Result<ReassignReport, EngineError> {
    let mut db = Db::open(db_path)?;
    let _lock = run::take_lock(db_path)?;
    let old = db.site_config()?.site;
    let new =
        SiteId::from_bytes(host::random_id_bytes().map_err(io_err("cannot draw a random site id".into()))?);
    db.reassign(new, &machine_fingerprint())?;
    Ok(ReassignReport { old_site: old.to_string(), new_site: new.to_string() })
}

/// The mapped tables of a database, in the mapping's order.
pub fn mapped_tables(db_path: &Path) -> Result<Vec<String>, EngineError> {
    Ok(Db::open(db_path)?.mapping().tables().map(str::to_owned).collect())
}

/// The mapped table at `index` of [`mapped_tables`].
pub fn mapped_table(db_path: &Path, index: usize) -> Result<String, EngineError> {
    mapped_tables(db_path)?
        .into_iter()
        .nth(index)
        .ok_or_else(|| EngineError::Refused(format!("the mapping has no table number {index} (it changed?)")))
}

/// The settings a run and the service use, with their defaults.
pub fn settings_load(db_path: &Path) -> Result<Settings, EngineError> {
    settings::load(&Db::open(db_path)?)
}

/// The settings of a database, as `clinicsync settings` shows them.
pub fn settings_list(db_path: &Path) -> Result<Vec<SettingView>, EngineError> {
    settings::list(&Db::open(db_path)?)
}

/// Changes settings (`KEY=VALUE`), all or none.
pub fn settings_set(db_path: &Path, assignments: &[String]) -> Result<(), EngineError> {
    settings::set(&Db::open(db_path)?, assignments)
}

/// Settles an open conflict record: keeps the winner or the losing value,
/// as a new edit that the next sync carries to every site. Holds the
/// database's sync lock, so it never runs inside a sync.
pub fn resolve_conflict(
    db_path: &Path,
    id: i64,
    keep: crate::db::Keep,
) -> Result<crate::db::Resolved, EngineError> {
    resolve_with_lock(db_path, id, keep, None)
}

/// [`resolve_conflict`], waiting for a sync in progress instead of failing.
pub fn resolve_conflict_waiting(
    db_path: &Path,
    id: i64,
    keep: crate::db::Keep,
) -> Result<crate::db::Resolved, EngineError> {
    resolve_with_lock(db_path, id, keep, Some(|| {}))
}

fn resolve_with_lock(
    db_path: &Path,
    id: i64,
    keep: crate::db::Keep,
    on_wait: Option<fn()>,
) -> Result<crate::db::Resolved, EngineError> {
    let mut db = Db::open(db_path)?;
    let _lock = run::take_lock_or_wait(db_path, on_wait)?;
    let mut w = db.begin_write(SystemClock.now_ms())?;
    let resolved = w.resolve_conflict(id, keep)?;
    w.commit()?;
    tracing::info!(id, table = %resolved.table, column = %resolved.column, "conflict resolved");
    Ok(resolved)
}
