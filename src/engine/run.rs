//! One sync run: guard, export, import (change-logs, or a full scan of the
//! patient files), read-repair, compaction, site file, report. Every step is
//! safe to interrupt: database commits come first, files are rewritten from
//! the database, and the outbox makes an export's file writes idempotent.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tracing::instrument;

use super::EngineError;
use super::host::{SystemClock, fault_point, machine_fingerprint, peak_rss_kib};
use super::progress::Progress;
use super::report::{Counts, Outcome, Recorder, RunReport};
use super::settings::{self, Settings};
use crate::changelog::{CatchUp, Peer, Retention, catch_up, compaction_limit, segment_path};
use crate::conflicts::{Classified, Client, FileKind, classify_path, decorated_copy_of};
use crate::db::{Db, DbError, HeldGroup, KeptCopy, SiteConfig, StampOutcome, StoredPatient};
use crate::folder::layout::{LOG_DIR, MANIFEST, PATIENTS_DIR, SITES_DIR, patient_path, site_path};
use crate::folder::{DiskFolder, Entry, Folder, IgnoreRules, ReadError};
use crate::model::{
    Clock, Hlc, PatientDoc, PatientId, RowKey, SiteId, patient_file_name, shard_of, write_hex_bytes,
};
use crate::xmlstore::{
    DecodeError, Limits, RowsDigest, Segment, SiteFile, decode_manifest, decode_patient, decode_segment,
    decode_site, encode_patient, encode_site,
};

mod first_export;

/// Files applied per database transaction during a scan, and the bytes
/// after which a chunk takes no more: a chunk's files and what they decode
/// to are in memory together (see `Limits` for one file's ceiling).
const CHUNK: usize = 256;
const CHUNK_BYTES: u64 = 4 << 20;
/// Rows and approximate bytes per change-log segment.
const SEGMENT_ROWS: usize = 5_000;
const SEGMENT_BYTES: usize = 4 << 20;
/// Largest segment decoded while the one before it is applied: an export
/// of `SEGMENT_BYTES` with its last row, with room to spare.
const AHEAD_BYTES: u64 = 2 * SEGMENT_BYTES as u64;
/// Bytes per batch of file writes (one syncfs each).
const WRITE_BATCH_BYTES: usize = 16 << 20;
/// How often a run looks for tombstones it can purge (at most).
const PURGE_CHECK_MS: u64 = 5 * 60 * 1000;
/// How long copies of an original that a client renamed away wait for the
/// site that rebuilds it before any site does.
const COPIES_WAIT_FOR_LEADER_MS: u64 = 3_600_000;
/// Parked rows a run names one by one; the rest are counted per table.
const PARKED_NAMED: usize = 20;
/// Most purged rows a site file lists (the newest; about 150 bytes each).
const PURGED_PUBLISHED: usize = 3_000;
/// How stale the published last-sync time of an idle site may get.
const SITE_FILE_REFRESH_MS: u64 = 5 * 60 * 1000;
/// How often one patient may be re-queued in a run (each time only follows
/// rows that moved between patients or files that changed while read).
const MAX_REQUEUES: u32 = 8;

/// Options of one run.
#[derive(Clone, Debug)]
pub struct SyncOptions {
    /// What started the run: `manual`, `init`, `interval`, `watcher`, ...
    pub trigger: String,
    /// Scan every patient file this run, whatever the change-logs say.
    pub full_scan: bool,
    /// Apply incoming deletions of patients even when there are more than
    /// the mass-delete guard lets through.
    pub confirm_deletes: bool,
    /// Refuse every held deletion: the rows stay here and go back to every
    /// site as new inserts.
    pub keep_deleted: bool,
    /// Where the run reports its step and how far through it is.
    pub progress: Progress,
    /// Remember the folder paths the run wrote or removed
    /// ([`RunReport::touched`]), so a file watcher can ignore its own echo.
    pub track_touched: bool,
    /// When another sync of this database is running: `None` fails with
    /// [`EngineError::Busy`]; `Some(f)` calls `f` once and waits for it.
    pub wait_for_lock: Option<fn()>,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            trigger: "manual".into(),
            full_scan: false,
            confirm_deletes: false,
            keep_deleted: false,
            progress: Progress::new(),
            track_touched: false,
            wait_for_lock: None,
        }
    }
}

/// Most paths a run remembers for [`SyncOptions::track_touched`]; a run
/// that touched more reports none, and the watcher treats everything it
/// saw as news.
const TOUCHED_CAP: usize = 20_000;

/// The single-instance lock for a database, held for the whole run.
pub(crate) struct InstanceLock {
    _file: File,
}

pub(crate) fn lock_path(db_path: &Path) -> PathBuf {
    let mut name = db_path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push("-clinicsync.lock");
    db_path.with_file_name(name)
}

pub(crate) fn take_lock(db_path: &Path) -> Result<InstanceLock, EngineError> {
    take_lock_or_wait(db_path, None)
}

/// How long taking the lock retries before it counts as held by another
/// sync. A child process this process starts (an alert command; in tests,
/// a CLI run) holds a copy of every open descriptor from its fork until
/// its exec closes them, the lock file's too, and with it the lock: for
/// that moment a lock this process already let go still reads as held.
const LOCK_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Takes the lock; with `on_wait`, waits for it (calling `on_wait` first)
/// instead of failing when another sync holds it.
pub(crate) fn take_lock_or_wait(db_path: &Path, on_wait: Option<fn()>) -> Result<InstanceLock, EngineError> {
    let path = lock_path(db_path);
    let file = File::options().create(true).truncate(false).write(true).open(&path).map_err(|source| {
        EngineError::Io { what: format!("cannot create the lock file {}", path.display()), source }
    })?;
    let lock_error = |source| EngineError::Io { what: format!("cannot lock {}", path.display()), source };
    let started = std::time::Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(InstanceLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) if started.elapsed() < LOCK_GRACE => {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let Some(on_wait) = on_wait else {
                    return Err(EngineError::Busy { db: db_path.display().to_string() });
                };
                on_wait();
                file.lock().map_err(lock_error)?;
                return Ok(InstanceLock { _file: file });
            }
            Err(std::fs::TryLockError::Error(source)) => return Err(lock_error(source)),
        }
    }
}

/// `f` over the first half of `items` on this thread and over the second
/// on another, at the same time (a clinic's machine has two cores or more);
/// the halves' results in order. Fewer than 8 items are not worth a thread.
fn on_both_cores<T: Send, R: Send>(mut items: Vec<T>, f: impl Fn(Vec<T>) -> R + Sync) -> [R; 2] {
    let theirs = items.split_off(items.len() / 2);
    if items.len() + theirs.len() < 8 {
        return [f(items), f(theirs)];
    }
    std::thread::scope(|scope| {
        let other = scope.spawn(|| f(theirs));
        let mine = f(items);
        [mine, other.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))]
    })
}

/// The staging directory for atomic writes: beside the database, outside
/// the synced folder.
pub(crate) fn staging_dir(db_path: &Path) -> PathBuf {
    let dir = db_path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    dir.join(".clinicsync-staging")
}

/// Runs one complete sync of the database at `db_path`.
pub fn sync(db_path: &Path, options: &SyncOptions) -> Result<RunReport, EngineError> {
    sync_with_clock(db_path, options, &SystemClock)
}

/// [`sync`] with an explicit clock.
#[instrument(skip_all, fields(db = %db_path.display(), trigger = %options.trigger))]
pub fn sync_with_clock(
    db_path: &Path,
    options: &SyncOptions,
    clock: &dyn Clock,
) -> Result<RunReport, EngineError> {
    let db = Db::open(db_path)?;
    let _lock = take_lock_or_wait(db_path, options.wait_for_lock)?;
    let cfg = db.site_config()?;
    if db.meta(super::INIT_UNFINISHED)?.is_some() {
        return Err(EngineError::InitUnfinished {
            db: db_path.display().to_string(),
            folder: cfg.folder.display().to_string(),
        });
    }
    let settings = settings::load(&db)?;
    let progress = options.progress.clone();
    progress.set_running(true);
    let _running = RunningGuard(progress.clone());
    let started_ms = clock.now_ms();
    let run_id = db.begin_run(&options.trigger, started_ms)?;
    let after_interruption = db.run_before_interrupted(run_id)?;
    let folder = DiskFolder::new(cfg.folder.clone(), Some(staging_dir(db_path)));
    if options.track_touched {
        folder.track_touched(TOUCHED_CAP);
    }
    let mut run = Run {
        db,
        folder,
        progress,
        cfg,
        clock,
        settings,
        rec: Recorder::new(started_ms),
        counts: Counts::default(),
        limits: Limits::default(),
        ignore: IgnoreRules::new(),
        now_ms: started_ms,
        peers: Vec::new(),
        peers_incomplete: false,
        force_scan: options.full_scan,
        confirm_deletes: options.confirm_deletes,
        keep_deleted: options.keep_deleted,
        after_interruption,
        peer_horizon: None,
        listed_stems: HashSet::new(),
        copy_stems: HashSet::new(),
        new_horizon: None,
        decorated: Vec::new(),
        merged_copies: Vec::new(),
        settled: HashSet::new(),
        suspect_shards: BTreeSet::new(),
        copy_dirs: BTreeSet::new(),
        purged_now: HashSet::new(),
        dirs_seen: None,
        stale_purged: HashMap::new(),
        read_this_run: HashSet::new(),
        left_for_leader: HashSet::new(),
        copy_docs: HashMap::new(),
    };
    let result = run.execute();
    run.rec.finish();
    let (outcome, error) = match result {
        Ok(()) if run.rec.partial => (Outcome::Partial, None),
        Ok(()) => (Outcome::Ok, None),
        Err(e) => {
            let message = e.to_string();
            run.rec.skipped("failed", None, message.clone());
            (Outcome::Failed, Some(message))
        }
    };
    if outcome != Outcome::Failed
        && let Err(e) = run.publish_site_file(outcome == Outcome::Ok)
    {
        // The site file says when this site last synced completely; failing
        // to publish it is itself worth a retry.
        run.rec.skipped("site-file", Some(&site_path(run.cfg.site)), format!("could not be written: {e}"));
    }
    let outcome = if outcome == Outcome::Ok && run.rec.partial { Outcome::Partial } else { outcome };
    let ended_ms = clock.now_ms();
    run.counts.folder = run.folder.stats();
    let report = RunReport {
        run_id: Some(run_id),
        trigger: options.trigger.clone(),
        outcome,
        started_ms,
        ended_ms,
        counts: run.counts.clone(),
        error,
        peak_rss_kib: peak_rss_kib(),
        events: run.rec.events.clone(),
        touched: run.folder.take_touched(),
    };
    let summary = serde_json::to_value(&report.counts).expect("counts serialise");
    run.db.finish_run(run_id, ended_ms, outcome.as_str(), &summary, &report.events)?;
    tracing::info!(outcome = outcome.as_str(), "run finished");
    Ok(report)
}

/// A segment read from the folder, decoding on the other core, or why it
/// could not be read.
enum Fetched<'s> {
    Decoding(usize, std::thread::ScopedJoinHandle<'s, Result<Prepared, DecodeError>>),
    Unread(ReadError),
}

/// A decoded segment with what applying it needs worked out on the core
/// that decoded it: its rows grouped into one document per patient, and
/// the stamps the checks look at.
struct Prepared {
    site: SiteId,
    seq: u64,
    docs: BTreeMap<String, PatientDoc>,
    /// The latest stamp of a field version in it (the clock-skew check).
    latest: Option<Hlc>,
    /// The latest of the writing site's own stamps, tombstones included:
    /// what this site acknowledges having applied.
    own_latest: Option<Hlc>,
}

impl Prepared {
    fn new(segment: Segment) -> Prepared {
        let writer = segment.site;
        let mut latest = None;
        let mut own_latest = None;
        let mut docs: BTreeMap<String, PatientDoc> = BTreeMap::new();
        for ((patient, key), row) in segment.rows {
            let fields = row.fields.values().flat_map(|f| f.versions().iter().map(|v| v.hlc()));
            latest = latest.max(fields.clone().max());
            let own = fields.chain(row.deleted.stamps().iter().copied()).filter(|h| h.site() == writer);
            own_latest = own_latest.max(own.max());
            match docs.get_mut(&patient) {
                Some(doc) => {
                    doc.rows.insert(key, row);
                }
                None => {
                    let mut doc = PatientDoc::new(PatientId(patient.clone()));
                    doc.rows.insert(key, row);
                    docs.insert(patient, doc);
                }
            }
        }
        Prepared { site: segment.site, seq: segment.seq, docs, latest, own_latest }
    }
}

/// A patient file (or a copy of one) found in the folder.
#[derive(Clone, Debug)]
struct FileRef {
    path: String,
    /// The 32-hex stem of the original it belongs to.
    stem: String,
    /// A conflict copy (or other decorated copy) of the stem's file, and
    /// the client whose naming it follows.
    copy: Option<Client>,
    /// Read only to check it is up to date (read-repair of this patient):
    /// compared with this database's bytes first, decoded only if they differ.
    repair: Option<String>,
    /// Its size when listed (0 when not known): what it adds to a chunk.
    size: u64,
}

enum Loaded {
    /// Read and decoded.
    Doc { doc: PatientDoc, bytes: Vec<u8>, entry: Entry, sha: String },
    /// Same size, mtime and hash as when it was last applied or written.
    Unchanged { bytes: Vec<u8>, entry: Entry },
    /// Not there (or gone since it was listed).
    Gone,
    /// Not usable now; the recorder has the reason.
    Skipped,
}

/// A file to compare with this database's encoding: its place in the
/// chunk, bytes and metadata, the patient's stored rows, the patient.
type Comparison = (usize, Vec<u8>, Entry, Option<StoredPatient>, String);

/// What a chunk learned about a patient's original file.
enum Original {
    /// Its bytes, and what it holds when this run decoded it.
    Present(Vec<u8>, Entry, Option<Box<PatientDoc>>),
    Absent,
    /// Unreadable: never overwritten.
    Blocked,
}

enum Work {
    File(FileRef),
    Patient(String),
}

/// Another site, as its site file shows it.
pub(super) struct PeerFile {
    pub(super) file: SiteFile,
    /// The site file's modification time, for sites that never synced.
    pub(super) mtime_ms: u64,
}

/// Marks the progress handle idle when the run ends, however it ends.
struct RunningGuard(Progress);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.set_running(false);
    }
}

struct Run<'c> {
    db: Db,
    folder: DiskFolder,
    progress: Progress,
    cfg: SiteConfig,
    clock: &'c dyn Clock,
    settings: Settings,
    rec: Recorder,
    counts: Counts,
    limits: Limits,
    ignore: IgnoreRules,
    now_ms: u64,
    peers: Vec<PeerFile>,
    /// A site file could not be read this run: what every site has is not
    /// known, so nothing that waits for every site (compaction, purging)
    /// goes ahead.
    peers_incomplete: bool,
    force_scan: bool,
    confirm_deletes: bool,
    keep_deleted: bool,
    /// The run before this one never finished: it may have left temp files.
    after_interruption: bool,
    /// Set when this site returns after peers purged tombstones it never
    /// read: the latest purge horizon, and (filled by the full scan) the
    /// patient files the folder has.
    peer_horizon: Option<Hlc>,
    listed_stems: HashSet<String>,
    /// Stems that have a conflict copy in the folder (filled by the full
    /// scan): their rows are never taken for purged elsewhere.
    copy_stems: HashSet<String>,
    /// The latest purge horizon the other sites publish, when this site
    /// has not applied it yet.
    new_horizon: Option<Hlc>,
    /// Top-level folders a cloud client decorated (`patients (Selective
    /// Sync Conflict)`): their files are merged as copies.
    decorated: Vec<(String, Client)>,
    /// Copies joined into the database this run, waiting for their
    /// original to be brought up to date before they are deleted or kept.
    merged_copies: Vec<MergedCopy>,
    /// Stems whose original file is up to date after this run's writes.
    settled: HashSet<String>,
    /// Shards holding a patient file that was not what this site expected
    /// (another writer's version, or gone): a cloud client may have left a
    /// conflict copy beside it.
    suspect_shards: BTreeSet<String>,
    /// Decorated folders whose files are copies, deepest first once sorted
    /// by length: removed when the copies in them are gone.
    copy_dirs: BTreeSet<String>,
    /// Patients whose own row this run purged.
    purged_now: HashSet<String>,
    /// The patient folders' times the copy check saw, recorded at the end.
    /// What the copy check saw of the patient folders (see `DirSeen`).
    dirs_seen: Option<Vec<DirSeen>>,
    /// Patient files (by stem) holding rows this site purged whose deletion
    /// they do not carry: the keys, to write the deletion into them.
    stale_purged: HashMap<String, Vec<RowKey>>,
    /// Patient files this run has read.
    read_this_run: HashSet<String>,
    /// Stems whose original is gone and left for another site to write
    /// again from their copies (see `rebuilds_original`).
    left_for_leader: HashSet<String>,
    /// The copies applied this run, by stem: their paths (read again if an
    /// original must be rebuilt from one, so that memory does not grow with
    /// the number of copies).
    copy_docs: HashMap<String, Vec<String>>,
}

/// A copy merged this run.
struct MergedCopy {
    path: String,
    stem: String,
    client: Client,
    size: u64,
    mtime_ns: i64,
    /// Merged and kept by an earlier run once its original was up to
    /// date; its content is in the database since.
    settled_before: bool,
}

/// A patient folder as the copy check saw it: its path, its time as
/// recorded before this run (`None`: never recorded; the inner `None`: the
/// folder did not exist), and its time at the check.
type DirSeen = (String, Option<Option<i64>>, Option<i64>);

/// A directory's time after this site's own changes, starting from
/// `from`: `None` when a change did not start where the one before ended
/// (someone else changed the directory in between).
fn follow(from: Option<i64>, own: Option<&Vec<(Option<i64>, Option<i64>)>>) -> Option<Option<i64>> {
    let mut at = from;
    for (before, after) in own.into_iter().flatten() {
        if *before != at {
            return None;
        }
        at = *after;
    }
    Some(at)
}

fn sha_hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(64);
    write_hex_bytes(&mut out, &Sha256::digest(bytes));
    out
}

fn retry_hint(e: &DecodeError) -> &'static str {
    if e.is_transient() { "will retry next run" } else { "will retry once it is repaired or replaced" }
}

impl Run<'_> {
    fn execute(&mut self) -> Result<(), EngineError> {
        self.progress.step("checking the folder", 0);
        self.guard()?;
        self.remove_leftovers()?;
        self.progress.step("recording local changes", 0);
        self.export()?;
        self.keep_deleted()?;
        self.import()?;
        self.show_parked_rows()?;
        self.guard_deletes()?;
        // Changes the app made while the import ran were stamped by the
        // import's transactions; write them now rather than next run.
        self.write_outbox()?;
        self.progress.step("tidying the folder", 0);
        self.merge_nearby_copies()?;
        self.settle_copies()?;
        self.compact()?;
        self.purge_tombstones()?;
        self.record_patient_dirs()?;
        Ok(())
    }

    fn io(&self, what: &str, source: std::io::Error) -> EngineError {
        EngineError::Io { what: what.to_owned(), source }
    }

    /// Step 1: refuse to run where running could do harm.
    fn guard(&mut self) -> Result<(), EngineError> {
        let here = machine_fingerprint();
        if self.cfg.machine != here {
            return Err(EngineError::CopiedDatabase {
                db: self.db.path().display().to_string(),
                recorded: self.cfg.machine.clone(),
                here,
            });
        }
        let folder_display = self.cfg.folder.display().to_string();
        if !self.cfg.folder.is_dir() {
            return Err(EngineError::FolderUnreachable { folder: folder_display });
        }
        let manifest = match self.folder.read(MANIFEST, 1 << 20) {
            Ok(bytes) => decode_manifest(&bytes).map_err(|e| EngineError::BadManifest {
                folder: folder_display.clone(),
                reason: e.to_string(),
            })?,
            Err(ReadError::NotFound) => return Err(EngineError::NotAFamily { folder: folder_display }),
            Err(e) => return Err(EngineError::BadManifest { folder: folder_display, reason: e.to_string() }),
        };
        if manifest.family != self.cfg.family {
            return Err(EngineError::OtherFamily {
                folder: folder_display,
                theirs: manifest.family.short(),
                ours: self.cfg.family.short(),
            });
        }
        let site_hex = self.cfg.site.to_string();
        self.find_decorated_folders()?;
        let entries = self.folder.list(SITES_DIR).map_err(|e| self.io("cannot list sites/", e))?;
        let own = format!("{site_hex}.xml");
        for entry in entries {
            if self.ignore.is_ignored(&entry.name) || entry.is_dir {
                continue;
            }
            match classify_path(&format!("{SITES_DIR}/{}", entry.name)) {
                Classified::Original(_) => {}
                Classified::Copy { of: FileKind::Site { site }, client } if site == site_hex => {
                    return Err(EngineError::SiteOnTwoMachines {
                        file: format!("{SITES_DIR}/{}", entry.name),
                        client: client.label(),
                    });
                }
                Classified::Copy { of, client } => {
                    self.rec.warning(
                        "conflict-copy",
                        Some(&format!("{SITES_DIR}/{}", entry.name)),
                        format!(
                            "is a copy of {} made by {}: that site id seems to be in use on two computers; that site stops itself when it sees this copy; delete the copy once it has run `clinicsync reassign`",
                            of.path(),
                            client.label()
                        ),
                    );
                    continue;
                }
                Classified::Unknown => continue,
            }
            let path = format!("{SITES_DIR}/{}", entry.name);
            let file = match self.folder.read(&path, 1 << 20) {
                Ok(bytes) => match decode_site(&bytes) {
                    Ok(file) => file,
                    Err(e) if entry.name == own => {
                        self.rec.warning(
                            "site-file",
                            Some(&path),
                            format!("this site's own file is unreadable ({e}); it will be rewritten"),
                        );
                        continue;
                    }
                    Err(e) => {
                        self.rec.skipped(
                            "site-file",
                            Some(&path),
                            format!("cannot be read: {e}; {}", retry_hint(&e)),
                        );
                        self.peers_incomplete = true;
                        continue;
                    }
                },
                Err(ReadError::NotFound) => continue,
                Err(e) => {
                    self.rec.skipped("site-file", Some(&path), format!("cannot be read: {e}; will retry"));
                    self.peers_incomplete = true;
                    continue;
                }
            };
            if file.family != self.cfg.family {
                self.rec.warning("site-file", Some(&path), "belongs to another family; ignored".into());
                continue;
            }
            if entry.name == own {
                let ours = self.db.head_seq()?;
                if file.head_seq > ours {
                    return Err(EngineError::RestoredBackup {
                        db: self.db.path().display().to_string(),
                        published: file.head_seq,
                        ours,
                    });
                }
                continue;
            }
            if format!("{}.xml", file.site) != entry.name {
                self.rec.warning(
                    "site-file",
                    Some(&path),
                    format!("holds site {} under another name; ignored", file.site.short()),
                );
                continue;
            }
            let mtime_ms = u64::try_from(entry.mtime_ns / 1_000_000).unwrap_or(0);
            self.peers.push(PeerFile { file, mtime_ms });
        }
        let horizon = self.peers.iter().filter_map(|p| p.file.purge_horizon).max();
        let applied = self.db.meta("horizon_applied")?.and_then(|h| Hlc::parse(&h).ok());
        if horizon.is_some() && horizon > applied {
            self.new_horizon = horizon;
        }
        Ok(())
    }

    /// Top-level folders a cloud client decorated: a copy of `patients/`
    /// is scanned like a folder of copies; copies of `sites/` and `log/`
    /// are reported and left alone (their content also reaches this site
    /// through the patient files).
    fn find_decorated_folders(&mut self) -> Result<(), EngineError> {
        let root = self.folder.list("").map_err(|e| self.io("cannot list the folder", e))?;
        for entry in root {
            if !entry.is_dir || self.ignore.is_ignored(&entry.name) {
                continue;
            }
            if let Some(client) = decorated_copy_of(&entry.name, PATIENTS_DIR) {
                self.decorated.push((entry.name, client));
                continue;
            }
            for top in [SITES_DIR, LOG_DIR] {
                if let Some(client) = decorated_copy_of(&entry.name, top) {
                    self.rec.warning(
                        "conflict-copy",
                        Some(&entry.name),
                        format!(
                            "is a copy of the {top}/ folder made by {}; clinicsync does not read it, and it can be deleted",
                            client.label()
                        ),
                    );
                }
            }
        }
        Ok(())
    }

    /// Removes the temp files a killed run left: in the staging directory
    /// beside the database (every run: one listing), and where there is
    /// none, beside their targets in the folder, after a run that did not
    /// finish (the full scan also removes any it meets).
    fn remove_leftovers(&mut self) -> Result<(), EngineError> {
        match self.folder.remove_left_staged() {
            Ok(0) => {}
            Ok(n) => self.rec.info(
                "leftovers",
                None,
                format!("removed {n} temp files that a stopped run left beside the database"),
            ),
            Err(e) => self.rec.warning(
                "leftovers",
                None,
                format!("could not remove the temp files a stopped run left beside the database: {e}"),
            ),
        }
        if self.folder.uses_staging() || !self.after_interruption {
            return Ok(());
        }
        let mut dirs = vec![String::new(), SITES_DIR.to_owned(), format!("{LOG_DIR}/{}", self.cfg.site)];
        let shards = self.folder.list(PATIENTS_DIR).map_err(|e| self.io("cannot list patients/", e))?;
        dirs.extend(shards.into_iter().filter(|e| e.is_dir).map(|e| format!("{PATIENTS_DIR}/{}", e.name)));
        let mut removed = 0;
        for dir in dirs {
            match self.folder.remove_left_temps(&dir) {
                Ok(paths) => removed += paths.len(),
                Err(e) => self.rec.warning(
                    "leftovers",
                    Some(&dir),
                    format!("could not remove the temp files a stopped run left: {e}"),
                ),
            }
        }
        if removed > 0 {
            self.rec.info(
                "leftovers",
                None,
                format!("removed {removed} temp files that a stopped run left in the folder"),
            );
        }
        Ok(())
    }

    /// Step 2: turn local changes into versions, one bounded segment per
    /// transaction (short transactions: the app keeps writing), then write
    /// the segments and patient files of every export not yet written.
    fn export(&mut self) -> Result<(), EngineError> {
        self.first_export()?;
        while self.db.has_captured()? {
            let mut w = self.db.begin_write(self.now_ms)?;
            let more = w.stamp_pending(SEGMENT_ROWS, SEGMENT_BYTES)?;
            let stamped = w.commit()?;
            self.progress.advance(stamped.rows as u64);
            self.note_stamped(stamped);
            if !more {
                break;
            }
        }
        fault_point("after-export-commit");
        self.write_outbox()
    }

    fn note_stamped(&mut self, stamped: StampOutcome) {
        for warning in stamped.warnings {
            self.rec.warning("export", None, warning);
        }
        if let Some(seq) = stamped.seq {
            self.counts.exported_rows += stamped.rows as u64;
            self.counts.exported_versions += stamped.versions as u64;
            self.rec.info(
                "export",
                None,
                format!(
                    "recorded {} changed rows of {} patients ({} new versions) as export #{seq}",
                    stamped.rows, stamped.patients, stamped.versions
                ),
            );
        }
    }

    /// Writes the segments of undone exports, then the patient files they
    /// touched; marks them done when everything is written.
    fn write_outbox(&mut self) -> Result<(), EngineError> {
        self.write_outbox_with(true)
    }

    /// [`Self::write_outbox`] as a part of another step's progress.
    fn write_outbox_quietly(&mut self) -> Result<(), EngineError> {
        self.write_outbox_with(false)
    }

    fn write_outbox_with(&mut self, own_step: bool) -> Result<(), EngineError> {
        let seqs = self.db.undone_seqs()?;
        let Some(&max_seq) = seqs.last() else { return Ok(()) };
        if own_step {
            self.progress.step("writing the change-log", seqs.len() as u64);
        }
        let mut batch: Vec<(String, Vec<u8>)> = Vec::new();
        let mut batch_bytes = 0;
        let mut in_folder = Vec::new();
        for seq in seqs {
            let Some(bytes) = self.db.segment_bytes(seq)? else { continue };
            let path = segment_path(self.cfg.site, seq);
            in_folder.push(seq);
            if own_step {
                self.progress.advance(1);
            }
            if self.folder.read(&path, bytes.len() as u64).ok().as_deref() == Some(bytes.as_slice()) {
                continue;
            }
            batch_bytes += bytes.len();
            batch.push((path, bytes));
            if batch_bytes >= WRITE_BATCH_BYTES && !self.write_segments(&mut batch, &mut batch_bytes) {
                return Ok(());
            }
        }
        if !self.write_segments(&mut batch, &mut batch_bytes) {
            return Ok(());
        }
        fault_point("after-segment-write");
        // The segments are published even if a patient file below waits (a
        // damaged file must not hold back this site's whole log).
        self.db.segments_written(&in_folder, self.now_ms)?;
        let patients: Vec<String> = self.db.outbox_patients(max_seq)?;
        if self.new_horizon.is_some() {
            // Others purged deletions this site has not applied yet: its
            // files are written after the import has applied them, or
            // they would publish rows the others purged.
            return Ok(());
        }
        let complete = self.reconcile(Vec::new(), patients)?;
        if complete {
            self.db.outbox_done(max_seq, self.now_ms)?;
        }
        Ok(())
    }

    fn write_segments(&mut self, batch: &mut Vec<(String, Vec<u8>)>, bytes: &mut usize) -> bool {
        if batch.is_empty() {
            return true;
        }
        match self.folder.write_batch(batch) {
            Ok(()) => {
                self.counts.segments_written += batch.len() as u64;
                self.counts.bytes_written += *bytes as u64;
                batch.clear();
                *bytes = 0;
                true
            }
            Err(e) => {
                self.rec.skipped(
                    "write",
                    None,
                    format!("could not write {} change-log segments: {e}; will retry", batch.len()),
                );
                false
            }
        }
    }

    /// Step 3: catch up with every other site, from its change-log where
    /// possible, from the patient files where not.
    fn import(&mut self) -> Result<(), EngineError> {
        if !self.settings.use_logs {
            // Every run reads every file: this site has the tombstones the
            // others purged, and purges them itself.
            let clean = self.full_scan()?;
            if clean && let Some(horizon) = self.new_horizon.take() {
                self.db.set_meta("horizon_applied", &horizon.encode())?;
            }
            return Ok(());
        }
        // A change-log whose site file has not arrived is not read (what
        // it holds up to is in that file): said, so it is not silent.
        let unknown = super::tombstones::unknown_sites(&self.folder, &self.peers, self.cfg.site)
            .map_err(|e| self.io("cannot list log/", e))?;
        for site in unknown {
            self.rec.warning(
                "unknown-site",
                Some(&format!("{LOG_DIR}/{site}")),
                format!("is the change-log of site {}, whose site file (sites/{site}.xml) is not in the folder: its changes are read once that file arrives (if that site left the family, its folder can be deleted)", site.short()),
            );
        }
        let watermarks = self.db.watermarks()?;
        let mut plans = Vec::new();
        let last_scan: u64 = self.db.meta("last_full_scan_ms")?.and_then(|v| v.parse().ok()).unwrap_or(0);
        let mut scan = self.force_scan
            || self.now_ms.saturating_sub(last_scan) >= self.settings.full_scan_interval.as_millis() as u64;
        for peer in &self.peers {
            let site = peer.file.site;
            let plan = catch_up(
                watermarks.get(&site).copied().unwrap_or(0),
                peer.file.head_seq,
                peer.file.oldest_seq,
            );
            scan |= matches!(plan, CatchUp::FullScanThen { .. });
            plans.push((site, peer.file.name.clone(), plan));
        }
        if scan {
            let why = if self.force_scan {
                "asked for (--full-scan)"
            } else if plans.iter().any(|(_, _, p)| matches!(p, CatchUp::FullScanThen { .. })) {
                "a site compacted changes this site never read"
            } else {
                "periodic (full_scan_interval)"
            };
            self.rec.info("scan", None, format!("reading every patient file: {why}"));
        }
        // A site that missed compacted changes may also have missed
        // tombstones the others purged since.
        if plans.iter().any(|(_, _, p)| matches!(p, CatchUp::FullScanThen { .. })) {
            self.peer_horizon = self.new_horizon;
        }
        let clean = if scan { self.full_scan()? } else { true };
        if clean && let Some(horizon) = self.peer_horizon {
            self.apply_peer_purge(horizon)?;
        } else if clean && let Some(horizon) = self.new_horizon {
            // An active site has the tombstones the others purged: it
            // purges them itself.
            self.db.set_meta("horizon_applied", &horizon.encode())?;
        }
        if clean {
            self.new_horizon = None;
        }
        if clean {
            // What was compacted away is now read from the patient files:
            // continue each such site's log from its oldest segment.
            let resumes: Vec<(SiteId, u64)> = plans
                .iter()
                .filter_map(|(site, _, plan)| match plan {
                    CatchUp::FullScanThen { from, .. } => Some((*site, from - 1)),
                    _ => None,
                })
                .collect();
            if !resumes.is_empty() {
                let w = self.db.begin_write(self.now_ms)?;
                for (site, seq) in resumes {
                    w.set_watermark(site, seq)?;
                }
                let stamped = w.commit()?;
                self.note_stamped(stamped);
            }
        }
        let mut touched = BTreeSet::new();
        for (site, name, plan) in plans {
            let (from, to) = match plan {
                CatchUp::UpToDate => continue,
                CatchUp::Segments { from, to } => (from, to),
                CatchUp::FullScanThen { from, to } if clean => {
                    self.rec.info(
                        "scan",
                        None,
                        format!("site {} ({name}) compacted changes this site never read; caught up from the patient files", site.short()),
                    );
                    (from, to)
                }
                CatchUp::FullScanThen { .. } => {
                    self.rec.skipped(
                        "gap",
                        None,
                        format!("site {} ({name}) compacted changes this site never read, and the patient files could not all be read; the next run tries again", site.short()),
                    );
                    continue;
                }
            };
            self.read_segments(site, &name, from, to, &mut touched)?;
        }
        // Read-repair: the files of every patient a segment changed.
        self.reconcile(Vec::new(), touched.into_iter().collect())?;
        Ok(())
    }

    /// This site was away while others purged tombstones it never read.
    /// The rows they say they purged (`<purged>` in their site files) that
    /// this site still holds go here too (through the mass-delete guard),
    /// instead of coming back. Runs after a complete full scan. A row no
    /// site lists any more (purged longer ago than the sites publish) is
    /// kept: if it comes back, the sites that purged it write its deletion
    /// into its file.
    fn apply_peer_purge(&mut self, horizon: Hlc) -> Result<(), EngineError> {
        let mut listed: BTreeMap<(String, String), crate::xmlstore::PurgedKey> = BTreeMap::new();
        for peer in &self.peers {
            for p in &peer.file.purged {
                let slot = listed.entry((p.table.clone(), p.pk.clone())).or_insert_with(|| p.clone());
                if p.cl > slot.cl {
                    *slot = p.clone();
                }
            }
        }
        let listed: Vec<_> = listed.into_values().collect();
        self.counts.purged_elsewhere += self.db.drop_listed_purged(&listed, horizon, self.now_ms)? as u64;
        self.db.set_meta("horizon_applied", &horizon.encode())?;
        if self.counts.purged_elsewhere > 0 {
            self.rec.info(
                "purge",
                None,
                format!(
                    "{} rows this site still had were deleted and purged by the other sites while it was away (horizon {}); they are deleted here too",
                    self.counts.purged_elsewhere,
                    crate::xmlstore::format_time(horizon.wall_ms())
                ),
            );
        }
        Ok(())
    }

    /// `sync --keep-deleted`: every deletion the guard held when the run
    /// started is refused. The rows stay in the app's tables and go back to
    /// every site as new inserts, in bounded exports.
    fn keep_deleted(&mut self) -> Result<(), EngineError> {
        if !self.keep_deleted {
            return Ok(());
        }
        let mut kept = crate::db::Kept { more: true, ..Default::default() };
        while kept.more {
            let mut w = self.db.begin_write(self.now_ms)?;
            let step = w.keep_held(SEGMENT_ROWS)?;
            let stamped = w.commit()?;
            self.note_stamped(stamped);
            kept.rows += step.rows;
            kept.patients += step.patients;
            kept.more = step.more;
            for (site, n, first, last) in step.by_site {
                match kept.by_site.iter_mut().find(|(s, ..)| *s == site) {
                    Some((_, m, f, l)) => {
                        *m += n;
                        *f = (*f).min(first);
                        *l = (*l).max(last);
                    }
                    None => kept.by_site.push((site, n, first, last)),
                }
            }
        }
        self.counts.rows_kept += kept.rows;
        if kept.by_site.is_empty() {
            self.rec.info("keep-deleted", None, "no deletion was held; nothing to keep".into());
        }
        for (site, n, first, last) in &kept.by_site {
            let when = if first == last {
                crate::xmlstore::format_time(*first)
            } else {
                format!(
                    "between {} and {}",
                    crate::xmlstore::format_time(*first),
                    crate::xmlstore::format_time(*last)
                )
            };
            self.rec.info(
                "keep-deleted",
                None,
                format!(
                    "kept {n} rows that site {} deleted {when} (refused with --keep-deleted); they stay here and go back to every site as new rows",
                    self.site_label(site)
                ),
            );
        }
        self.write_outbox_quietly()
    }

    /// The mass-delete guard. Every incoming deletion of a row the app
    /// shows was held while it was applied; now the run knows how many
    /// there are. The patients' deletions (with their child rows) are one
    /// group, and each child table's rows deleted on their own are
    /// another: a group within the threshold (of the patients, or of that
    /// table's rows) is applied to the app's tables; a larger one waits for
    /// `sync --confirm-deletes` or `sync --keep-deleted`, and the run is
    /// partial.
    fn guard_deletes(&mut self) -> Result<(), EngineError> {
        if self.db.held_deletes()?.rows == 0 {
            return Ok(());
        }
        self.db.forget_revived_held()?;
        let held = self.db.held_deletes()?;
        if held.rows == 0 {
            return Ok(());
        }
        let percent = u64::from(self.settings.mass_delete_percent);
        let min = self.settings.mass_delete_min_patients;
        let sites = held.sites.iter().map(|s| self.site_label(s)).collect::<Vec<_>>().join(", ");
        let mut groups = Vec::new();
        if held.patients > 0 {
            let root = self.db.mapping().root.table.clone();
            let own: u64 = held.tables.iter().map(|t| t.rows).sum();
            groups.push((HeldGroup::Patients, root, held.patients, held.rows - own));
        }
        for t in &held.tables {
            groups.push((HeldGroup::Table(t.table.clone()), t.table.clone(), t.rows, t.rows));
        }
        for (group, table, count, rows) in groups {
            let total = self.db.table_count(&table)?;
            let limit = min.max((total * percent).div_ceil(100));
            let what = match group {
                HeldGroup::Patients => format!("{count} patients"),
                _ => format!("{count} rows of {table}"),
            };
            if count <= limit || self.confirm_deletes {
                let released = self.db.release_held(&group)?;
                self.counts.patients_deleted += released.patients;
                self.counts.rows_deleted += released.rows;
                let why = if count > limit { " (confirmed with --confirm-deletes)" } else { "" };
                let with = match group {
                    HeldGroup::Patients if released.rows > released.patients => {
                        format!(" with {} of their rows", released.rows - released.patients)
                    }
                    _ => String::new(),
                };
                self.rec.info("delete", None, format!("deleted {what}{with} that site {sites} deleted{why}"));
                continue;
            }
            self.counts.rows_held += rows;
            let (whole, shown) = match group {
                HeldGroup::Patients => {
                    self.counts.deletes_held += count;
                    (
                        format!("{percent}% of this database's {total} patients, and at least {min}"),
                        format!("they and their {} rows are still shown here", rows - count),
                    )
                }
                _ => (
                    format!("{percent}% of the {total} rows of {table}, and at least {min}"),
                    "their patients stay, and the rows are still shown here".to_owned(),
                ),
            };
            self.rec.skipped(
                "held-deletes",
                None,
                format!(
                    "{what} were deleted at site {sites}: more than {limit} ({whole}), so {shown} and their deletion waits; everything else was applied. If the deletion is right, run `clinicsync sync --confirm-deletes`; to keep them and send them back to every site, run `clinicsync sync --keep-deleted`"
                ),
            );
        }
        Ok(())
    }

    /// A site as people know it: its short id and name.
    fn site_label(&self, site: &str) -> String {
        let short = site.get(..8).unwrap_or(site);
        match self.peers.iter().find(|p| p.file.site.to_string() == site) {
            Some(p) => format!("{short} ({})", p.file.name),
            None if site == self.cfg.site.to_string() => format!("{short} (this site)"),
            None => short.to_owned(),
        }
    }

    /// Rows whose fields arrived only in part wait outside the app's tables;
    /// once the rest has arrived they are shown.
    fn show_parked_rows(&mut self) -> Result<(), EngineError> {
        if !self.db.has_parked()? {
            return Ok(());
        }
        let mut w = self.db.begin_write(self.now_ms)?;
        let still = w.retry_parked()?;
        let stamped = w.commit()?;
        self.note_stamped(stamped);
        // The first few by name, the rest counted per table: a file of a
        // hundred thousand such rows must not make as many log lines.
        let mut more: BTreeMap<String, u64> = BTreeMap::new();
        for (i, (key, reason)) in still.into_iter().enumerate() {
            if i >= PARKED_NAMED {
                *more.entry(key.table).or_default() += 1;
                continue;
            }
            self.rec.skipped(
                "parked",
                None,
                format!(
                    "row {}/{} is kept by clinicsync but the app's table cannot hold it yet ({reason}); the rest of its data is on its way, and every run tries again",
                    key.table, key.pk
                ),
            );
        }
        for (table, n) in more {
            self.rec.skipped(
                "parked",
                None,
                format!(
                    "and {n} more rows of {table} that the app's table cannot hold yet; every run tries again"
                ),
            );
        }
        Ok(())
    }

    /// Applies segments `from..=to` of a site in order, each in one
    /// transaction with the new watermark; stops at the first that is
    /// missing or unusable.
    fn read_segments(
        &mut self,
        site: SiteId,
        name: &str,
        from: u64,
        to: u64,
        touched: &mut BTreeSet<String>,
    ) -> Result<(), EngineError> {
        self.progress.step("reading other sites' change-logs", to.saturating_sub(from) + 1);
        std::thread::scope(|scope| {
            // The next segment is read and decoded on the other core while
            // this one is applied.
            // A large segment (only a damaged or hostile one is larger than
            // an export writes) waits for its turn, so that two of them are
            // never in memory together.
            let mut ahead = None;
            for seq in from..=to {
                let fetched = match ahead.take() {
                    Some(fetched) => fetched,
                    None => self.fetch_segment(scope, site, seq),
                };
                if seq < to {
                    let next = segment_path(site, seq + 1);
                    let small =
                        self.folder.metadata(&next).ok().flatten().is_some_and(|e| e.size <= AHEAD_BYTES);
                    ahead = small.then(|| self.fetch_segment(scope, site, seq + 1));
                }
                if !self.apply_segment(site, name, seq, fetched, touched)? {
                    return Ok(());
                }
            }
            Ok(())
        })
    }

    /// Reads a segment and starts decoding it on the other core.
    fn fetch_segment<'s>(
        &mut self,
        scope: &'s std::thread::Scope<'s, '_>,
        site: SiteId,
        seq: u64,
    ) -> Fetched<'s> {
        let path = segment_path(site, seq);
        match self.folder.read(&path, self.limits.max_file_bytes) {
            Ok(bytes) => {
                let limits = self.limits;
                let len = bytes.len();
                Fetched::Decoding(len, scope.spawn(move || decode_segment(&bytes, limits).map(Prepared::new)))
            }
            Err(e) => Fetched::Unread(e),
        }
    }

    /// Applies one segment in one transaction with the new watermark; false
    /// when the site's later segments must wait (a gap, or this one could
    /// not be applied).
    fn apply_segment(
        &mut self,
        site: SiteId,
        name: &str,
        seq: u64,
        fetched: Fetched<'_>,
        touched: &mut BTreeSet<String>,
    ) -> Result<bool, EngineError> {
        self.progress.advance(1);
        let path = segment_path(site, seq);
        let (len, decoding) = match fetched {
            Fetched::Decoding(len, decoding) => (len, decoding),
            Fetched::Unread(ReadError::NotFound) => {
                self.rec.skipped(
                    "gap",
                    Some(&path),
                    format!("segment #{seq} of site {} ({name}) has not arrived yet; its later changes wait for it", site.short()),
                );
                return Ok(false);
            }
            Fetched::Unread(e) => {
                self.counts.files_skipped += 1;
                self.rec.skipped("skipped", Some(&path), format!("was not applied: {e}; will retry"));
                return Ok(false);
            }
        };
        self.counts.bytes_read += len as u64;
        let decoded = decoding.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        let segment = match decoded {
            Ok(s) => s,
            Err(e) => {
                self.counts.files_skipped += 1;
                self.rec.skipped(
                    "skipped",
                    Some(&path),
                    format!("was not applied: {e}; {}; the site's later changes wait for it", retry_hint(&e)),
                );
                return Ok(false);
            }
        };
        if segment.site != site || segment.seq != seq {
            self.counts.files_skipped += 1;
            self.rec.skipped(
                "skipped",
                Some(&path),
                format!(
                    "holds segment #{} of site {}, not what its name says; not applied",
                    segment.seq,
                    segment.site.short()
                ),
            );
            return Ok(false);
        }
        if let Some(ahead) = self.too_far_ahead(segment.latest.into_iter()) {
            self.hold_back(&path, ahead);
            return Ok(false);
        }
        let Prepared { docs, own_latest, .. } = segment;
        let mut w = self.db.begin_write(self.now_ms)?;
        w.hold_deletes();
        let mut rows = 0;
        let mut conflicts = 0;
        let mut warnings = Vec::new();
        let mut affected = BTreeSet::new();
        let mut failure = None;
        let patients = docs.len();
        // A failed document drops the whole transaction below, so no
        // document needs a savepoint of its own.
        for doc in docs.into_values() {
            let patient = doc.patient.0.clone();
            match w.apply_doc_unguarded(doc, &path) {
                Ok(o) => {
                    rows += o.rows_changed;
                    conflicts += o.new_conflicts;
                    warnings.extend(o.warnings);
                    affected.extend(o.affected);
                    if !o.stale_purged.is_empty() {
                        // Rows this site purged, from a site that has not
                        // applied their deletion: its file is read, and
                        // told the deletion (read-repair).
                        affected.insert(patient);
                    }
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failure {
            drop(w);
            self.counts.files_skipped += 1;
            self.rec.skipped(
                "skipped",
                Some(&path),
                format!("could not be applied to the database, nothing of it was kept: {e}; the site's later changes wait for it"),
            );
            return Ok(false);
        }
        w.set_watermark(site, seq)?;
        if let Some(h) = own_latest {
            w.set_ack_stamp(site, h)?;
        }
        let stamped = w.commit()?;
        self.progress.advance(stamped.rows as u64);
        self.note_stamped(stamped);
        self.counts.segments_applied += 1;
        self.counts.rows_applied += rows as u64;
        for warning in warnings {
            self.rec.warning("schema", Some(&path), warning);
        }
        if rows > 0 {
            self.rec.applied(&path, format!("applied {rows} changed rows of {patients} patients"));
        }
        if conflicts > 0 {
            self.counts.new_conflicts += conflicts as u64;
            self.rec.warning(
                "conflict",
                Some(&path),
                format!("{conflicts} concurrent edits kept for review (`clinicsync conflicts`)"),
            );
        }
        touched.extend(affected);
        Ok(true)
    }

    fn too_far_ahead(&self, stamps: impl Iterator<Item = Hlc>) -> Option<Hlc> {
        let limit = self.now_ms.saturating_add(self.settings.max_clock_skew.as_millis() as u64);
        stamps.filter(|h| h.wall_ms() > limit).max()
    }

    fn hold_back(&mut self, path: &str, ahead: Hlc) {
        // Rounded to the minute: people read "3days", not "2days 23h 59m 59s".
        let minutes = (ahead.wall_ms() - self.now_ms + 30_000) / 60_000;
        let by = humantime::format_duration(std::time::Duration::from_secs(minutes * 60));
        self.counts.files_held_back += 1;
        self.rec.skipped(
            "held-back",
            Some(path),
            format!("held back: site {}'s clock is {by} ahead of this computer's; it is applied once the clocks agree", ahead.site().short()),
        );
    }

    /// Every patient file and copy in the folder. Returns true when every
    /// file could be read and applied.
    fn full_scan(&mut self) -> Result<bool, EngineError> {
        self.counts.full_scan = true;
        let skipped_before = self.counts.files_skipped + self.counts.files_held_back;
        let shards = self.folder.list(PATIENTS_DIR).map_err(|e| self.io("cannot list patients/", e))?;
        if shards.is_empty() {
            self.rec.info(
                "scan",
                Some(PATIENTS_DIR),
                "the folder holds no patient files (nothing is deleted for that)".into(),
            );
        }
        let mut files = Vec::new();
        self.collect_patient_files(PATIENTS_DIR, shards, &mut files)?;
        for (dir, client) in self.decorated.clone() {
            self.rec.info(
                "conflict-copy",
                Some(&dir),
                format!("is a copy of the patients/ folder made by {}; its files are merged", client.label()),
            );
            let shards = self.folder.list(&dir).map_err(|e| self.io(&format!("cannot list {dir}"), e))?;
            self.collect_patient_files(&dir, shards, &mut files)?;
        }
        self.check_logs_for_copies()?;
        // Kept copies someone deleted are forgotten.
        let listed: HashSet<&str> =
            files.iter().filter(|f| f.copy.is_some()).map(|f| f.path.as_str()).collect();
        for kept in self.db.kept_copies()? {
            if !listed.contains(kept.path.as_str()) {
                self.db.forget_copy(&kept.path)?;
            }
        }
        // A patient this site knows whose file the folder does not have (a
        // client lost or renamed it) is written again: read-repair of what
        // is missing, not only of what is read. Not while returning after a
        // purge: then absence is how the purge is learned.
        let mut missing = Vec::new();
        if self.peer_horizon.is_none() {
            for patient in self.db.patients()? {
                let stem = patient_file_name(&patient);
                if !self.listed_stems.contains(&stem) && !self.copy_stems.contains(&stem) {
                    missing.push(patient);
                }
            }
        }
        let complete = self.reconcile(files, missing)?;
        self.db.set_meta("last_full_scan_ms", &self.now_ms.to_string())?;
        Ok(complete && self.counts.files_skipped + self.counts.files_held_back == skipped_before)
    }

    /// Adds every patient file and copy under `top`'s shard folders.
    fn collect_patient_files(
        &mut self,
        top: &str,
        shards: Vec<Entry>,
        files: &mut Vec<FileRef>,
    ) -> Result<(), EngineError> {
        for shard in shards {
            if self.ignore.is_ignored(&shard.name) {
                continue;
            }
            let shard_path = format!("{top}/{}", shard.name);
            if !shard.is_dir {
                self.rec.warning(
                    "unknown-file",
                    Some(&shard_path),
                    "is not a clinicsync file; left alone".into(),
                );
                continue;
            }
            if top != PATIENTS_DIR || shard.name.len() != 2 {
                self.copy_dirs.insert(shard_path.clone());
                if top != PATIENTS_DIR {
                    self.copy_dirs.insert(top.to_owned());
                }
            }
            let entries = self
                .folder
                .list(&shard_path)
                .map_err(|e| self.io(&format!("cannot list {shard_path}"), e))?;
            for entry in entries {
                if self.ignore.is_ignored(&entry.name) {
                    if crate::folder::is_left_temp(&entry) {
                        let path = format!("{shard_path}/{}", entry.name);
                        match self.folder.remove(&path) {
                            Ok(()) => self.rec.info(
                                "leftovers",
                                Some(&path),
                                "removed: a temp file that a stopped run left".into(),
                            ),
                            Err(e) => self.rec.warning(
                                "leftovers",
                                Some(&path),
                                format!("could not be removed: {e}"),
                            ),
                        }
                    }
                    continue;
                }
                let path = format!("{shard_path}/{}", entry.name);
                if entry.is_dir {
                    self.rec.warning(
                        "unknown-file",
                        Some(&path),
                        "is a folder where only patient files belong; left alone".into(),
                    );
                    continue;
                }
                // Files in a decorated patients folder are copies whatever
                // their own names say.
                let decorated = self.decorated.iter().find(|(d, _)| d == top).map(|(_, c)| *c);
                let in_real_top = format!("{PATIENTS_DIR}/{}/{}", shard.name, entry.name);
                match classify_path(&in_real_top) {
                    Classified::Original(FileKind::Patient { stem }) => {
                        if decorated.is_none() {
                            self.listed_stems.insert(stem.clone());
                        }
                        files.push(FileRef { path, stem, copy: decorated, repair: None, size: entry.size })
                    }
                    Classified::Copy { of: FileKind::Patient { stem }, client } => {
                        // A copy holds the patient's data too: the patient
                        // is in the folder, whatever became of its original.
                        self.copy_stems.insert(stem.clone());
                        files.push(FileRef {
                            path,
                            stem,
                            copy: Some(decorated.unwrap_or(client)),
                            repair: None,
                            size: entry.size,
                        })
                    }
                    _ => self.rec.warning(
                        "unknown-file",
                        Some(&path),
                        "is not a clinicsync file name; left alone".into(),
                    ),
                }
            }
        }
        Ok(())
    }

    /// Copies of change-log segments: of this site's own, proof that its id
    /// is in use on two computers; of another site's, reported (that site
    /// stops itself when it sees them).
    fn check_logs_for_copies(&mut self) -> Result<(), EngineError> {
        let own = self.cfg.site.to_string();
        let sites = self.folder.list(LOG_DIR).map_err(|e| self.io("cannot list log/", e))?;
        for dir in sites {
            if !dir.is_dir || self.ignore.is_ignored(&dir.name) {
                continue;
            }
            let dir_path = format!("{LOG_DIR}/{}", dir.name);
            let entries =
                self.folder.list(&dir_path).map_err(|e| self.io(&format!("cannot list {dir_path}"), e))?;
            for entry in entries {
                if self.ignore.is_ignored(&entry.name) {
                    continue;
                }
                let path = format!("{dir_path}/{}", entry.name);
                let Classified::Copy { of, client } = classify_path(&path) else { continue };
                let FileKind::Segment { site, .. } = &of else { continue };
                if *site == own && dir.name == own {
                    return Err(EngineError::SiteOnTwoMachines { file: path, client: client.label() });
                }
                self.rec.warning(
                    "conflict-copy",
                    Some(&path),
                    format!(
                        "is a copy of {} made by {}: only one computer should write that site's change-log; left alone",
                        of.path(),
                        client.label()
                    ),
                );
            }
        }
        Ok(())
    }

    /// Reads and verifies one file. Nothing of a file that fails is used.
    fn load(&mut self, f: &FileRef) -> Result<Loaded, EngineError> {
        self.counts.files_scanned += 1;
        self.read_this_run.insert(f.path.clone());
        let entry = match self.folder.metadata(&f.path) {
            Ok(Some(e)) => e,
            Ok(None) => return Ok(Loaded::Gone),
            Err(e) => {
                self.rec.skipped("skipped", Some(&f.path), format!("cannot be read: {e}; will retry"));
                self.counts.files_skipped += 1;
                return Ok(Loaded::Skipped);
            }
        };
        let bytes = match self.folder.read(&f.path, self.limits.max_file_bytes) {
            Ok(b) => b,
            Err(ReadError::NotFound) => return Ok(Loaded::Gone),
            Err(e) => {
                self.rec.skipped("skipped", Some(&f.path), format!("was not applied: {e}; will retry"));
                self.counts.files_skipped += 1;
                return Ok(Loaded::Skipped);
            }
        };
        self.counts.bytes_read += bytes.len() as u64;
        if bytes.is_empty() {
            self.rec.skipped(
                "skipped",
                Some(&f.path),
                "is empty (an online-only placeholder, or a file the cloud client has not filled yet); nothing is deleted for that, and it is read again next run".into(),
            );
            self.counts.files_skipped += 1;
            return Ok(Loaded::Skipped);
        }
        let sha = sha_hex(&bytes);
        // A copy is taken as merged only once it was settled (its
        // original brought up to date) and kept.
        let cached = self.peer_horizon.is_none() && (f.copy.is_none() || self.db.is_kept_copy(&f.path)?);
        if cached
            && let Some((size, mtime, seen_sha)) = self.db.file_seen(&f.path)?
            && size == bytes.len() as u64
            && mtime == entry.mtime_ns
            && seen_sha == sha
        {
            self.counts.files_unchanged += 1;
            return Ok(Loaded::Unchanged { bytes, entry });
        }
        if f.repair.is_some() {
            // Behind this database and changed since this site last saw
            // it: another writer's version, maybe a cloud client's pick
            // between two, with the other kept as a copy beside it.
            self.suspect_shards.insert(shard_of(&f.stem));
        }
        let doc = match decode_patient(&bytes, self.limits) {
            Ok(doc) => doc,
            Err(e) => {
                self.rec.skipped(
                    "skipped",
                    Some(&f.path),
                    format!("was not applied: {e}; {}", retry_hint(&e)),
                );
                self.counts.files_skipped += 1;
                return Ok(Loaded::Skipped);
            }
        };
        let expected = patient_file_name(&doc.patient.0);
        if expected != f.stem {
            self.rec.skipped(
                "skipped",
                Some(&f.path),
                format!(
                    "was not applied: it holds patient {} whose file would be named {expected}.xml",
                    doc.patient
                ),
            );
            self.counts.files_skipped += 1;
            return Ok(Loaded::Skipped);
        }
        if let Some(ahead) = self.too_far_ahead(doc.stamps()) {
            self.hold_back(&f.path, ahead);
            return Ok(Loaded::Skipped);
        }
        Ok(Loaded::Doc { doc, bytes, entry, sha })
    }

    /// Joins files into the database and rewrites every patient file that
    /// is behind the database (read-repair), following rows that moved
    /// between patients. Works in chunks, so memory stays bounded however
    /// many files there are. Returns true when every wanted patient file is
    /// up to date.
    fn reconcile(&mut self, files: Vec<FileRef>, patients: Vec<String>) -> Result<bool, EngineError> {
        let step = if files.is_empty() { "writing patient files" } else { "reading patient files" };
        self.progress.step(step, (files.len() + patients.len()) as u64);
        let mut queue: VecDeque<Work> = files.into_iter().map(Work::File).collect();
        queue.extend(patients.into_iter().map(Work::Patient));
        let mut done: HashSet<String> = HashSet::new();
        let mut blocked: HashSet<String> = HashSet::new();
        let mut requeued: HashMap<String, u32> = HashMap::new();
        let mut left = 0usize;
        while !queue.is_empty() {
            let mut to_load: Vec<FileRef> = Vec::new();
            let mut loading: HashSet<String> = HashSet::new();
            let mut wanted: BTreeSet<String> = BTreeSet::new();
            let mut chunk_bytes = 0u64;
            while to_load.len() < CHUNK && chunk_bytes < CHUNK_BYTES {
                let Some(work) = queue.pop_front() else { break };
                match work {
                    Work::File(f) => {
                        if f.copy.is_none() {
                            loading.insert(f.stem.clone());
                        }
                        chunk_bytes += f.size;
                        to_load.push(f);
                    }
                    Work::Patient(p) => {
                        let stem = patient_file_name(&p);
                        if done.contains(&p) || blocked.contains(&stem) {
                            continue;
                        }
                        if loading.insert(stem.clone()) {
                            let path = patient_path(&stem);
                            let size = self.folder.metadata(&path).ok().flatten().map_or(0, |e| e.size);
                            chunk_bytes += size;
                            to_load.push(FileRef { path, stem, copy: None, repair: Some(p.clone()), size });
                        }
                        wanted.insert(p);
                    }
                }
            }
            let mut in_sync = HashSet::new();
            let mut changed = HashSet::new();
            let originals = self.apply_chunk(&to_load, &mut wanted, &mut in_sync, &mut changed)?;
            self.progress.advance(to_load.len() as u64);
            let mut writes: Vec<(String, Vec<u8>, String)> = Vec::new();
            for patient in wanted {
                let stem = patient_file_name(&patient);
                if done.contains(&patient) || blocked.contains(&stem) {
                    continue;
                }
                if in_sync.contains(&patient) && !changed.contains(&patient) {
                    done.insert(patient);
                    continue;
                }
                let existing = match originals.get(&stem) {
                    Some(Original::Blocked) => {
                        blocked.insert(stem);
                        continue;
                    }
                    Some(Original::Present(bytes, entry, _)) => Some((bytes, entry)),
                    Some(Original::Absent) => None,
                    None => {
                        // A patient a row moved to or from: its file is read
                        // and joined in a later chunk.
                        self.requeue(&mut queue, &mut requeued, patient, &mut left);
                        continue;
                    }
                };
                let (mut doc, from_state) = match self.db.patient_for_file(&patient, &self.limits)? {
                    Ok(found) => found,
                    Err(why) => {
                        self.file_too_large(&stem, &patient, &why);
                        done.insert(patient);
                        continue;
                    }
                };
                let mut retold = 0;
                let mut rejoined = false;
                if let Some(keys) = self.stale_purged.remove(&stem)
                    && let Some(Original::Present(_, _, Some(file))) = originals.get(&stem)
                {
                    rejoined = true;
                    // The file brings back rows this site purged (a site that
                    // was away wrote them): it is written again with their
                    // deletion, joined with what it holds, so that site
                    // deletes them too and keeps its later edits for review.
                    for (key, tombstone) in self.db.purged_tombstones(&keys)? {
                        doc.rows.insert(key, tombstone);
                        retold += 1;
                    }
                    doc = file.join(&doc);
                }
                if retold > 0 {
                    let path = patient_path(&stem);
                    self.rec.warning(
                        "purge",
                        Some(&path),
                        format!(
                            "brings back {retold} rows of patient {patient} that were deleted and purged here; a site that has not applied the deletion wrote them, so the file is written again with the deletion and that site deletes them too (its edits are kept there for review)"
                        ),
                    );
                }
                if let Some(Original::Present(_, _, Some(file))) = originals.get(&stem)
                    && file.covers(&doc)
                {
                    // The file already holds everything this site knows
                    // (and maybe more it refuses, such as rows it purged):
                    // it is not behind.
                    done.insert(patient);
                    continue;
                }
                if doc.rows.is_empty() {
                    // Nothing known of the patient: its file is left as it
                    // is, unless this run purged the patient (its file goes;
                    // a site still keeping the tombstone may write it again,
                    // and it is left alone after that).
                    if existing.is_some() && self.purged_now.contains(&patient) {
                        let path = patient_path(&stem);
                        match self.folder.remove(&path) {
                            Ok(()) => self.counts.files_removed += 1,
                            Err(e) => self.rec.warning(
                                "purge",
                                Some(&path),
                                format!("could not be deleted: {e}; will retry"),
                            ),
                        }
                    }
                    done.insert(patient);
                    continue;
                }
                let mut bytes = if rejoined { encode_patient(&doc) } else { from_state };
                if existing.is_some_and(|(old, _)| *old == bytes) {
                    done.insert(patient);
                    continue;
                }
                if let Some(why) = self.limits.refusal(&bytes) {
                    self.file_too_large(&stem, &patient, &why);
                    done.insert(patient);
                    continue;
                }
                if existing.is_none() && self.copy_docs.contains_key(&stem) && !self.rebuilds_original(&stem)
                {
                    // Another site rebuilds it; the copies stay until then.
                    self.left_for_leader.insert(stem);
                    continue;
                }
                if existing.is_none()
                    && let Some(copy) = self.copy_covering(&stem, &doc)
                {
                    // The original is gone (rclone renames both sides of a
                    // conflict) and a copy already holds everything this
                    // site knows: it becomes the original as it is, so sites
                    // that refuse part of it (rows they purged) and sites
                    // that keep it write the same bytes instead of clashing
                    // again.
                    bytes = copy;
                }
                // The file must not have changed since it was read: a newer
                // delivery is read and joined first.
                let path = patient_path(&stem);
                let now =
                    self.folder.metadata(&path).map_err(|e| self.io(&format!("cannot stat {path}"), e))?;
                let same = match (existing, &now) {
                    (None, None) => true,
                    (Some((old, e)), Some(n)) => {
                        e.size == n.size && e.mtime_ns == n.mtime_ns && old.len() as u64 == n.size
                    }
                    _ => false,
                };
                if !same {
                    self.requeue(&mut queue, &mut requeued, patient, &mut left);
                    continue;
                }
                writes.push((path, bytes, patient));
            }
            drop(originals);
            self.write_files(writes, &mut done)?;
        }
        if !self.merged_copies.is_empty() {
            self.settled.extend(done.iter().map(|p| patient_file_name(p)));
        }
        if left > 0 {
            self.rec.skipped(
                "write",
                None,
                format!(
                    "{left} patient files kept changing while this run read them; the next run finishes them"
                ),
            );
        }
        Ok(left == 0 && blocked.is_empty())
    }

    /// With logs on, a run lists no patient folder unless it must. It lists
    /// a shard where it found another writer's version of a patient file,
    /// and every directory under `patients/` whose modification time moved
    /// for a reason other than this site's own writes (257 stats: a cloud
    /// client added, renamed or removed something there), and merges the
    /// conflict copies it finds; likewise a decorated `patients` folder.
    fn merge_nearby_copies(&mut self) -> Result<(), EngineError> {
        let moved = self.check_patient_dirs()?;
        if self.counts.full_scan {
            return Ok(());
        }
        let mut files = Vec::new();
        for dir in moved {
            match dir.strip_prefix(PATIENTS_DIR).and_then(|d| d.strip_prefix('/')) {
                Some(shard) => {
                    self.suspect_shards.insert(shard.to_owned());
                }
                None => {
                    // A shard folder added, removed or renamed: a decorated
                    // copy of one (`ab (Case Conflict)`) holds copies.
                    let entries =
                        self.folder.list(PATIENTS_DIR).map_err(|e| self.io("cannot list patients/", e))?;
                    let decorated: Vec<Entry> = entries
                        .into_iter()
                        .filter(|e| {
                            e.is_dir && !(e.name.len() == 2 && e.name.bytes().all(|b| b.is_ascii_hexdigit()))
                        })
                        .collect();
                    self.collect_patient_files(PATIENTS_DIR, decorated, &mut files)?;
                }
            }
        }
        for (top, _) in self.decorated.clone() {
            let shards = self.folder.list(&top).map_err(|e| self.io(&format!("cannot list {top}"), e))?;
            self.collect_patient_files(&top, shards, &mut files)?;
        }
        for shard in std::mem::take(&mut self.suspect_shards) {
            let dir = format!("{PATIENTS_DIR}/{shard}");
            let entries = self.folder.list(&dir).map_err(|e| self.io(&format!("cannot list {dir}"), e))?;
            for entry in entries {
                if entry.is_dir || self.ignore.is_ignored(&entry.name) {
                    continue;
                }
                let path = format!("{dir}/{}", entry.name);
                match classify_path(&path) {
                    Classified::Copy { of: FileKind::Patient { stem }, client } => {
                        files.push(FileRef {
                            path,
                            stem,
                            copy: Some(client),
                            repair: None,
                            size: entry.size,
                        });
                    }
                    // Another writer's version this run has not read, and
                    // no change-log told of (an old file a client brought
                    // back, a site that wrote rows it should not have).
                    Classified::Original(FileKind::Patient { stem })
                        if !self.read_this_run.contains(&path)
                            && self.db.file_seen(&path)?.is_none_or(|(size, mtime_ns, _)| {
                                size != entry.size || mtime_ns != entry.mtime_ns
                            }) =>
                    {
                        files.push(FileRef { path, stem, copy: None, repair: None, size: entry.size });
                    }
                    _ => {}
                }
            }
        }
        files.retain(|f| f.copy.is_some() || f.repair.is_none());
        if !files.is_empty() {
            self.reconcile(files, Vec::new())?;
        }
        Ok(())
    }

    /// Stats `patients/` and its 256 shard folders and returns those whose
    /// modification time is not the one this site accounted for, followed
    /// through this run's own changes ([`DiskFolder::take_own_changes`]).
    /// Remembers what it saw for [`Self::record_patient_dirs`]. The first
    /// run that keeps the times lists nothing (the periodic full scan finds
    /// what was there before).
    fn check_patient_dirs(&mut self) -> Result<Vec<String>, EngineError> {
        let recorded = self.db.dir_mtimes()?;
        let own = self.folder.take_own_changes();
        let dirs = std::iter::once(PATIENTS_DIR.to_owned())
            .chain((0..=255u8).map(|b| format!("{PATIENTS_DIR}/{b:02x}")));
        let mut seen = Vec::with_capacity(257);
        let mut moved = Vec::new();
        for dir in dirs {
            let now = self.folder.dir_mtime(&dir).map_err(|e| self.io(&format!("cannot stat {dir}"), e))?;
            let then = recorded.get(&dir).copied();
            if let Some(then) = then
                && follow(then, own.get(&dir)) != Some(now)
            {
                moved.push(dir.clone());
            }
            seen.push((dir, then, now));
        }
        self.dirs_seen = Some(seen);
        Ok(moved)
    }

    /// Records the directories' times as this run accounted for them: what
    /// the check saw, moved on through the run's own later changes. A
    /// change by someone else after the check leaves a time the next run
    /// does not expect, so it lists that folder.
    fn record_patient_dirs(&mut self) -> Result<(), EngineError> {
        let Some(seen) = self.dirs_seen.take() else { return Ok(()) };
        let own = self.folder.take_own_changes();
        // Only what changed is written: a run with nothing to do writes
        // nothing.
        let dirs: Vec<(String, Option<i64>)> = seen
            .into_iter()
            .filter_map(|(dir, recorded, at_check)| {
                let after = follow(at_check, own.get(&dir)).unwrap_or(at_check);
                (recorded != Some(after)).then_some((dir, after))
            })
            .collect();
        if !dirs.is_empty() {
            self.db.set_dir_mtimes(&dirs)?;
        }
        Ok(())
    }

    /// Deletes (or, with `auto_delete_conflicts` off, remembers) every copy
    /// merged this run whose original is now up to date. A copy whose
    /// original could not be written stays for the next run.
    fn settle_copies(&mut self) -> Result<(), EngineError> {
        for c in std::mem::take(&mut self.merged_copies) {
            let original = patient_path(&c.stem);
            let made_by = c.client.label();
            if self.left_for_leader.contains(&c.stem) {
                self.rec.info(
                    "conflict-copy",
                    Some(&c.path),
                    format!("a copy made by {made_by}: merged; {original} is gone, and the site that rebuilds it writes it and deletes the copies (two sites writing it at once would clash again)"),
                );
                continue;
            }
            if !c.settled_before && !self.settled.contains(&c.stem) {
                self.rec.skipped(
                    "conflict-copy",
                    Some(&c.path),
                    format!("was merged, but {original} could not be brought up to date; the copy stays until it is"),
                );
                continue;
            }
            if !self.settings.auto_delete_conflicts {
                if !self.db.is_kept_copy(&c.path)? {
                    self.db.keep_copy(&KeptCopy {
                        path: c.path.clone(),
                        original: original.clone(),
                        client: made_by.to_owned(),
                        merged_ms: self.now_ms,
                    })?;
                    self.counts.conflict_copies_kept += 1;
                    self.rec.info(
                        "conflict-copy",
                        Some(&c.path),
                        format!("a copy made by {made_by}: merged into {original} and kept (auto_delete_conflicts is off); it is not merged again unless it changes"),
                    );
                }
                continue;
            }
            // Delete only the bytes that were merged.
            match self.folder.metadata(&c.path) {
                Ok(Some(e)) if e.size == c.size && e.mtime_ns == c.mtime_ns => {}
                Ok(None) => {
                    self.db.forget_copy(&c.path)?;
                    continue;
                }
                _ => {
                    self.rec.info(
                        "conflict-copy",
                        Some(&c.path),
                        "changed after it was merged; it is merged again next run".into(),
                    );
                    continue;
                }
            }
            if let Err(e) = self.folder.remove(&c.path) {
                self.rec.warning(
                    "conflict-copy",
                    Some(&c.path),
                    format!("was merged into {original} but could not be deleted: {e}; will retry"),
                );
                continue;
            }
            self.db.forget_copy(&c.path)?;
            self.counts.conflict_copies_deleted += 1;
            self.rec.info(
                "conflict-copy",
                Some(&c.path),
                format!("a copy made by {made_by}: merged into {original} and deleted"),
            );
        }
        if self.settings.auto_delete_conflicts {
            // Deepest first: shard copies before a decorated patients folder.
            let mut dirs: Vec<String> = std::mem::take(&mut self.copy_dirs).into_iter().collect();
            dirs.sort_by_key(|d| std::cmp::Reverse(d.matches('/').count()));
            for dir in dirs {
                if matches!(self.folder.remove_empty_dir(&dir), Ok(true)) {
                    self.rec.info("conflict-copy", Some(&dir), "a copied folder, now empty: deleted".into());
                }
            }
        }
        Ok(())
    }

    /// Whether this site writes again an original that a cloud client
    /// renamed away into copies (rclone: both sides renamed, the name gone).
    /// Every site that merged the copies would, and two sites writing the
    /// same new file between two passes of the client make it clash again,
    /// forever. So one site does it: the one with the lowest id among the
    /// sites active within the dormancy; any site does it once the copies
    /// have waited an hour (that site is away).
    fn rebuilds_original(&self, stem: &str) -> bool {
        let dormancy = self.settings.dormancy.as_millis() as u64;
        let active = |last: u64| self.now_ms.saturating_sub(last) < dormancy;
        let leader = self
            .peers
            .iter()
            .filter(|p| active(p.file.last_sync_ms.unwrap_or(p.mtime_ms)))
            .map(|p| p.file.site)
            .chain(std::iter::once(self.cfg.site))
            .min();
        if leader == Some(self.cfg.site) {
            return true;
        }
        let newest_copy_ms = self
            .merged_copies
            .iter()
            .filter(|c| c.stem == stem)
            .map(|c| (c.mtime_ns.max(0) / 1_000_000) as u64)
            .max()
            .unwrap_or(0);
        self.now_ms.saturating_sub(newest_copy_ms) > COPIES_WAIT_FOR_LEADER_MS
    }

    /// A patient's file this site does not write: every reader would refuse
    /// it.
    fn file_too_large(&mut self, stem: &str, patient: &str, why: &str) {
        self.rec.skipped(
            "too-large",
            Some(&patient_path(stem)),
            format!(
                "is not written: {why}. Patient {patient} holds more than a patient file may carry. Its changes still travel in this site's change-log, but a site that joins later, or reads the folder again from scratch, does not get this patient from the folder"
            ),
        );
    }

    /// The bytes of a copy of `stem` applied this run that already holds
    /// everything `doc` holds, read again from the folder.
    fn copy_covering(&self, stem: &str, doc: &PatientDoc) -> Option<Vec<u8>> {
        self.copy_docs.get(stem)?.iter().find_map(|path| {
            let bytes = self.folder.read(path, self.limits.max_file_bytes).ok()?;
            let copy = decode_patient(&bytes, self.limits).ok()?;
            copy.covers(doc).then_some(bytes)
        })
    }

    fn requeue(
        &mut self,
        queue: &mut VecDeque<Work>,
        requeued: &mut HashMap<String, u32>,
        patient: String,
        left: &mut usize,
    ) {
        let n = requeued.entry(patient.clone()).or_insert(0);
        *n += 1;
        if *n > MAX_REQUEUES {
            *left += 1;
        } else {
            queue.push_back(Work::Patient(patient));
        }
    }

    /// Loads and joins one chunk of files in one transaction. Returns what
    /// it learned of each original file; adds the patients whose files may
    /// now be behind to `wanted`.
    fn apply_chunk(
        &mut self,
        chunk: &[FileRef],
        wanted: &mut BTreeSet<String>,
        in_sync: &mut HashSet<String>,
        changed: &mut HashSet<String>,
    ) -> Result<HashMap<String, Original>, EngineError> {
        let mut originals = HashMap::new();
        let mut loaded = Vec::with_capacity(chunk.len());
        let mut compared = self.compare_with_ours(chunk)?;
        for (f, compared) in chunk.iter().zip(compared.iter_mut()) {
            if let Some(patient) = &f.repair
                && let Some(state) = compared.take()
            {
                if matches!(state, Original::Absent) {
                    // Not there: a new patient, or rclone renamed both
                    // sides of a conflict away from the original name.
                    self.suspect_shards.insert(shard_of(&f.stem));
                }
                if matches!(state, Original::Present(..)) {
                    in_sync.insert(patient.clone());
                }
                originals.insert(f.stem.clone(), state);
                continue;
            }
            match self.load(f)? {
                Loaded::Doc { doc, bytes, entry, sha } => loaded.push((f, doc, bytes, entry, sha)),
                Loaded::Unchanged { bytes, entry } if f.copy.is_none() => {
                    originals.insert(f.stem.clone(), Original::Present(bytes, entry, None));
                }
                Loaded::Gone if f.copy.is_none() => {
                    originals.insert(f.stem.clone(), Original::Absent);
                }
                // Never overwrite what cannot be read: it may be a newer
                // version still arriving.
                Loaded::Skipped if f.copy.is_none() => {
                    originals.insert(f.stem.clone(), Original::Blocked);
                }
                // A copy merged by an earlier run and still there.
                Loaded::Unchanged { entry, .. } => {
                    if let Some(client) = f.copy
                        && self.settings.auto_delete_conflicts
                    {
                        self.merged_copies.push(MergedCopy {
                            path: f.path.clone(),
                            stem: f.stem.clone(),
                            client,
                            size: entry.size,
                            mtime_ns: entry.mtime_ns,
                            settled_before: true,
                        });
                    }
                }
                Loaded::Gone | Loaded::Skipped => {}
            }
        }
        if loaded.is_empty() {
            return Ok(originals);
        }
        let mut w = self.db.begin_write(self.now_ms)?;
        w.hold_deletes();
        let mut results = Vec::with_capacity(loaded.len());
        for (f, doc, _, entry, sha) in &loaded {
            let result = w.apply_doc(doc, &f.path);
            if result.is_ok() {
                w.record_file(&f.path, entry.size, entry.mtime_ns, sha)?;
            }
            results.push(result);
        }
        let stamped = w.commit()?;
        self.note_stamped(stamped);
        for ((f, doc, bytes, entry, _), result) in loaded.into_iter().zip(results) {
            let (size, mtime_ns) = (entry.size, entry.mtime_ns);
            match result {
                Ok(outcome) => {
                    wanted.insert(doc.patient.0.clone());
                    wanted.extend(outcome.affected.iter().cloned());
                    if outcome.rows_changed > 0 {
                        changed.insert(doc.patient.0.clone());
                        changed.extend(outcome.affected.iter().cloned());
                    }
                    let patient = doc.patient.clone();
                    if f.copy.is_none() && !outcome.stale_purged.is_empty() {
                        self.stale_purged.insert(f.stem.clone(), outcome.stale_purged.clone());
                    }
                    if f.copy.is_none() {
                        originals
                            .insert(f.stem.clone(), Original::Present(bytes, entry, Some(Box::new(doc))));
                    } else {
                        self.copy_docs.entry(f.stem.clone()).or_default().push(f.path.clone());
                    }
                    for warning in outcome.warnings {
                        self.rec.warning("schema", Some(&f.path), warning);
                    }
                    if outcome.rows_changed > 0 {
                        self.counts.files_applied += 1;
                        self.counts.rows_applied += outcome.rows_changed as u64;
                        self.rec.applied(
                            &f.path,
                            format!("applied {} changed rows of patient {}", outcome.rows_changed, patient),
                        );
                    }
                    if outcome.new_conflicts > 0 {
                        self.counts.new_conflicts += outcome.new_conflicts as u64;
                        self.rec.warning(
                            "conflict",
                            Some(&f.path),
                            format!(
                                "{} concurrent edits of patient {} kept for review (`clinicsync conflicts`)",
                                outcome.new_conflicts, patient
                            ),
                        );
                    }
                    if let Some(client) = f.copy {
                        self.counts.conflict_copies_merged += 1;
                        self.merged_copies.push(MergedCopy {
                            path: f.path.clone(),
                            stem: f.stem.clone(),
                            client,
                            size,
                            mtime_ns,
                            settled_before: false,
                        });
                    }
                }
                Err(e) => {
                    self.counts.files_skipped += 1;
                    self.rec.skipped(
                        "skipped",
                        Some(&f.path),
                        format!("could not be applied to the database, nothing of it was kept: {e}"),
                    );
                    if f.copy.is_none() {
                        originals.insert(f.stem.clone(), Original::Blocked);
                    }
                }
            }
        }
        Ok(originals)
    }

    /// Read-repair's fast paths. A file whose rows digest equals the one
    /// this database keeps for the patient holds exactly its rows: up to
    /// date, with neither the state's rows read nor the file parsed. Else a
    /// file whose bytes equal this database's encoding of the patient is up
    /// to date, and the patient's digest is recorded for next time. For
    /// each file of the chunk to repair: `Some` when that settles it
    /// (equal, or absent), `None` when it differs or cannot be read (the
    /// caller loads it in full). The patients' rows are read in one query;
    /// both cores decode and encode, half each.
    fn compare_with_ours(&mut self, chunk: &[FileRef]) -> Result<Vec<Option<Original>>, EngineError> {
        let mut out: Vec<Option<Original>> = chunk.iter().map(|_| None).collect();
        let mut files = Vec::new();
        for (i, f) in chunk.iter().enumerate() {
            let Some(patient) = &f.repair else { continue };
            let entry = match self.folder.metadata(&f.path) {
                Ok(Some(e)) => e,
                Ok(None) => {
                    out[i] = Some(Original::Absent);
                    continue;
                }
                Err(_) => continue,
            };
            let Ok(bytes) = self.folder.read(&f.path, self.limits.max_file_bytes) else { continue };
            self.read_this_run.insert(f.path.clone());
            self.counts.files_scanned += 1;
            self.counts.bytes_read += bytes.len() as u64;
            files.push((i, patient.as_str(), bytes, entry));
        }
        if files.is_empty() {
            return Ok(out);
        }
        let names: Vec<&str> = files.iter().map(|(_, p, _, _)| *p).collect();
        let known = self.db.digests_of(&names)?;
        // Files of patients with a digest, hashed on both cores.
        let with_digest = files.iter().filter(|(_, p, _, _)| known.contains_key(*p)).collect();
        let matched: HashSet<usize> = on_both_cores(with_digest, |part| {
            part.into_iter()
                .filter(|(_, patient, bytes, _)| {
                    RowsDigest::of_file(bytes, patient).as_ref() == known.get(*patient)
                })
                .map(|(i, _, _, _)| *i)
                .collect::<Vec<usize>>()
        })
        .into_iter()
        .flatten()
        .collect();
        let mut rest = Vec::with_capacity(files.len());
        for (i, patient, bytes, entry) in files {
            if matched.contains(&i) {
                self.counts.files_digest_matched += 1;
                out[i] = Some(Original::Present(bytes, entry, None));
            } else {
                rest.push((i, patient, bytes, entry));
            }
        }
        if rest.is_empty() {
            return Ok(out);
        }
        let names: Vec<&str> = rest.iter().map(|(_, p, _, _)| *p).collect();
        let mut stored: HashMap<String, StoredPatient> =
            self.db.stored_patients(&names)?.into_iter().map(|s| (s.patient.clone(), s)).collect();
        let work: Vec<Comparison> = rest
            .into_iter()
            .map(|(i, patient, bytes, entry)| (i, bytes, entry, stored.remove(patient), patient.to_owned()))
            .collect();
        let compare = |work: Vec<Comparison>| {
            let mut settled = Vec::new();
            for (i, bytes, entry, rows, patient) in work {
                let ours = match rows {
                    Some(rows) => rows.encode()?,
                    None => encode_patient(&PatientDoc::new(PatientId(patient.clone()))),
                };
                if ours == bytes {
                    let digest = RowsDigest::of_file(&ours, &patient).map(|d| (patient, d));
                    settled.push((i, Original::Present(bytes, entry, None), digest));
                }
            }
            Ok::<_, DbError>(settled)
        };
        let [settled, other_half] = on_both_cores(work, compare);
        let mut digests = Vec::new();
        for (i, original, digest) in settled?.into_iter().chain(other_half?) {
            out[i] = Some(original);
            digests.extend(digest);
        }
        // Nothing wrote the state since its rows were read above.
        if !digests.is_empty() {
            self.db.store_digests(&digests)?;
        }
        Ok(out)
    }

    fn write_files(
        &mut self,
        mut writes: Vec<(String, Vec<u8>, String)>,
        done: &mut HashSet<String>,
    ) -> Result<(), EngineError> {
        while !writes.is_empty() {
            let mut size = 0;
            let mut n = 0;
            while n < writes.len() && (n == 0 || size + writes[n].1.len() <= WRITE_BATCH_BYTES) {
                size += writes[n].1.len();
                n += 1;
            }
            let batch: Vec<(String, Vec<u8>, String)> = writes.drain(..n).collect();
            let files: Vec<(String, Vec<u8>)> =
                batch.iter().map(|(p, b, _)| (p.clone(), b.clone())).collect();
            if let Err(e) = self.folder.write_batch(&files) {
                self.rec.skipped(
                    "write",
                    None,
                    format!("could not write {} patient files: {e}; will retry", files.len()),
                );
                continue;
            }
            let w = self.db.begin_write(self.now_ms)?;
            for (path, bytes) in &files {
                if let Ok(Some(entry)) = self.folder.metadata(path) {
                    w.record_file(path, entry.size, entry.mtime_ns, &sha_hex(bytes))?;
                }
                self.counts.files_written += 1;
                self.counts.bytes_written += bytes.len() as u64;
            }
            let stamped = w.commit()?;
            self.progress.advance(stamped.rows as u64);
            self.note_stamped(stamped);
            done.extend(batch.into_iter().map(|(_, _, patient)| patient));
        }
        Ok(())
    }

    /// Step 6 (part): purge tombstones every active site has, once they are
    /// older than the retention; rewrite their patients' files without
    /// them (or remove the file of a purged patient); publish the horizon.
    fn purge_tombstones(&mut self) -> Result<(), EngineError> {
        if self.peers_incomplete {
            return Ok(());
        }
        // Planning reads every tombstone: not on every run (a run with
        // nothing to do stays cheap), at most every few minutes, or every
        // run when the retention is shorter than that.
        let interval = PURGE_CHECK_MS.min(self.settings.log_retention.as_millis() as u64);
        let last: u64 = self.db.meta("last_purge_check_ms")?.and_then(|v| v.parse().ok()).unwrap_or(0);
        if self.now_ms.saturating_sub(last) < interval {
            return Ok(());
        }
        self.db.set_meta("last_purge_check_ms", &self.now_ms.to_string())?;
        let unknown = super::tombstones::unknown_sites(&self.folder, &self.peers, self.cfg.site)
            .map_err(|e| self.io("cannot list log/", e))?;
        let plan = super::tombstones::plan(
            &self.db,
            &self.peers,
            &unknown,
            self.cfg.site,
            &self.settings,
            self.now_ms,
        )?;
        let ready: Vec<crate::db::Tombstone> = plan
            .into_iter()
            .filter(|(_, step)| matches!(step, super::tombstones::Step::Purgeable))
            .map(|(t, _)| t)
            .collect();
        if ready.is_empty() {
            return Ok(());
        }
        self.db.purge(&ready, self.now_ms)?;
        let horizon = ready.iter().filter_map(|t| t.deleted_at).max();
        let old: Option<Hlc> = self.db.meta("purge_horizon")?.and_then(|h| Hlc::parse(&h).ok());
        if let Some(h) = horizon.max(old) {
            self.db.set_meta("purge_horizon", &h.encode())?;
        }
        self.counts.tombstones_purged += ready.len() as u64;
        self.rec.info(
            "purge",
            None,
            format!(
                "purged {} tombstones that every active site has and that are older than the retention",
                ready.len()
            ),
        );
        let root = self.db.mapping().root.table.clone();
        self.purged_now.extend(ready.iter().filter(|t| t.table == root).map(|t| t.pk.clone()));
        let patients: BTreeSet<String> = ready.into_iter().filter_map(|t| t.patient).collect();
        self.reconcile(Vec::new(), patients.into_iter().collect())?;
        Ok(())
    }

    /// Step 6: delete own segments every active site has applied and that
    /// are older than the retention.
    fn compact(&mut self) -> Result<(), EngineError> {
        if self.peers_incomplete {
            return Ok(());
        }
        let oldest = self.oldest_seq()?;
        let head = self.db.written_head()?;
        if oldest > head {
            return Ok(());
        }
        let peers: Vec<Peer> = self
            .peers
            .iter()
            .map(|p| Peer {
                acked: p.file.acks.get(&self.cfg.site).copied().unwrap_or(0),
                last_seen_ms: p.file.last_sync_ms.unwrap_or(0).max(p.mtime_ms),
            })
            .collect();
        let policy = Retention {
            keep_ms: self.settings.log_retention.as_millis() as u64,
            dormant_after_ms: self.settings.dormancy.as_millis() as u64,
        };
        let exports = self.db.export_times(oldest, head)?;
        let Some(limit) = compaction_limit(&exports, &peers, self.now_ms, policy) else { return Ok(()) };
        let mut removed = oldest;
        for seq in oldest..=limit {
            let path = segment_path(self.cfg.site, seq);
            if let Err(e) = self.folder.remove(&path) {
                self.rec.warning("compact", Some(&path), format!("could not be deleted: {e}; will retry"));
                break;
            }
            self.counts.segments_deleted += 1;
            removed = seq + 1;
        }
        if removed > oldest {
            self.db.set_meta("oldest_seq", &removed.to_string())?;
            self.rec.info(
                "compact",
                None,
                format!("deleted own segments #{oldest} to #{} (every active site has them)", removed - 1),
            );
        }
        Ok(())
    }

    fn oldest_seq(&self) -> Result<u64, EngineError> {
        Ok(self.db.meta("oldest_seq")?.and_then(|v| v.parse().ok()).unwrap_or(1))
    }

    /// Step 6 (part): publish this site's file.
    fn publish_site_file(&mut self, ok: bool) -> Result<(), EngineError> {
        let last_sync_ms = if ok { Some(self.clock.now_ms()) } else { self.db.last_ok_ms()? };
        let head_seq = self.db.written_head()?;
        let file = SiteFile {
            site: self.cfg.site,
            family: self.cfg.family,
            name: self.cfg.name.clone(),
            app_version: env!("CARGO_PKG_VERSION").to_owned(),
            head_seq,
            oldest_seq: self.oldest_seq()?.min(head_seq + 1),
            acks: self.db.watermarks()?,
            ack_stamps: self.db.ack_stamps()?,
            purge_horizon: self.db.meta("purge_horizon")?.and_then(|h| Hlc::parse(&h).ok()),
            last_sync_ms,
            machine: self.cfg.machine.clone(),
            mapping: self.db.mapping().fingerprint(),
            // What this site purged within the dormancy: a site away for
            // longer than that is taken for gone, and what it brings back
            // is told the deletion by the file instead.
            purged: self.db.recent_purged(
                self.now_ms.saturating_sub(self.settings.dormancy.as_millis() as u64),
                PURGED_PUBLISHED,
            )?,
        };
        let path = site_path(self.cfg.site);
        let published = self.folder.read(&path, 1 << 20).ok().and_then(|b| decode_site(&b).ok());
        // A run that changed nothing else refreshes the published sync time
        // only every few minutes, so idle sites do not upload a file (and
        // wake every other site's watcher) on every run.
        let fresh = published.as_ref().is_some_and(|p| {
            let same_but_time = SiteFile { last_sync_ms: file.last_sync_ms, ..p.clone() } == file;
            let age = file.last_sync_ms.unwrap_or(0).saturating_sub(p.last_sync_ms.unwrap_or(0));
            same_but_time && age < SITE_FILE_REFRESH_MS
        });
        if !fresh {
            fault_point("before-site-file");
            let bytes = encode_site(&file);
            self.folder
                .write_batch(&[(path, bytes)])
                .map_err(|e| self.io("cannot write the site file", e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Children started while runs come and go (an alert command, the
    /// tests' CLI runs) never make a run see its own released lock as
    /// another sync's. Without the grace this test fails with `Busy` within
    /// a fraction of a second.
    #[test]
    fn a_child_process_starting_does_not_make_the_lock_look_taken() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("clinic.db");
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            let spawner = scope.spawn(|| {
                let mut spawned = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::process::Command::new("true").status().unwrap();
                    spawned += 1;
                }
                spawned
            });
            let mut failed = None;
            for _ in 0..300 {
                match take_lock(&db) {
                    Ok(lock) => {
                        std::thread::sleep(std::time::Duration::from_micros(300));
                        drop(lock);
                    }
                    Err(e) => {
                        failed = Some(e.to_string());
                        break;
                    }
                }
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            assert!(spawner.join().unwrap() > 0);
            assert_eq!(failed, None);
        });
        // A lock another holder keeps is still refused, after the grace.
        let held = take_lock(&db).unwrap();
        let started = std::time::Instant::now();
        assert!(matches!(take_lock(&db), Err(EngineError::Busy { .. })));
        assert!(started.elapsed() >= LOCK_GRACE);
        drop(held);
        take_lock(&db).unwrap();
    }
}
