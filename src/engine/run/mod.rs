//! One sync run, as a sequence of steps ([`Run::execute`] lists them in
//! order): guard, export, import (change-logs, or a full scan of the
//! patient files), deletions, read-repair, conflict copies, purge,
//! compaction, site file, report. Each step is a file of this module; the
//! [`Run`] is what they share. Every step is safe to interrupt: database
//! commits come first, files are rewritten from the database, and the
//! outbox makes an export's file writes idempotent.

use std::path::Path;

use sha2::{Digest, Sha256};
use tracing::instrument;

use super::host::{SystemClock, peak_rss_kib};
use super::progress::Progress;
use super::report::{Counts, EventKind, Outcome, Recorder, RunReport};
use super::settings::{self, Settings};
use super::sites::{Sites, retry_hint};
use super::{EngineError, staging_dir};
use crate::db::{Checkpointing, Db, SiteConfig};
use crate::folder::layout::site_path;
use crate::folder::{DiskFolder, IgnoreRules};
use crate::model::{Clock, write_hex_bytes};
use crate::xmlstore::Limits;

mod bodies;
mod brought;
mod copies;
mod deletes;
mod documents;
mod export;
mod first_export;
mod guard;
mod import;
mod lock;
mod only;
mod placing;
mod repair;
mod scan;
mod tidy;

use copies::{Copies, MergedCopy};
pub use documents::DocumentCounts;
pub use lock::sync_running;
pub(crate) use lock::{take_lock, take_lock_or_wait};
use only::OnlyTable;
pub(crate) use only::TABLES_WAITING;
pub use only::{table_trigger, trigger_table};
use scan::Scanned;
use scan::{FileRef, Loaded};
use tidy::Purges;

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
    /// Only the documents: export new and changed document files and place
    /// those whose rows are already here (`sync --docs-only`); other
    /// sites' changes are not read.
    pub docs_only: bool,
    /// Only this table's changes, both ways (`sync --only TABLE`): the
    /// other tables' changes stay pending here and unapplied from the
    /// others' logs until a full sync.
    pub only: Option<String>,
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
            docs_only: false,
            only: None,
            wait_for_lock: None,
        }
    }
}

/// Most paths a run remembers for [`SyncOptions::track_touched`]; a run
/// that touched more reports none, and the watcher treats everything it
/// saw as news.
const TOUCHED_CAP: usize = 20_000;

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
    let mut db = Db::open(db_path)?;
    let _lock = take_lock_or_wait(db_path, options.wait_for_lock)?;
    // The run's commits are synced once before each change to the folder
    // (which may depend on them) and once at the end, not each on its own.
    let durable = db.defer_durability()?;
    let cfg = db.site_config()?;
    if db.meta(super::INIT_UNFINISHED)?.is_some() {
        return Err(EngineError::InitUnfinished {
            db: db_path.display().to_string(),
            folder: cfg.folder.display().to_string(),
        });
    }
    if let Some(table) = &options.only
        && db.mapping().table(table).is_none()
    {
        return Err(EngineError::Refused(format!(
            "{} is not a table this site replicates; the tables are: {}",
            crate::model::shown(table),
            db.mapping().tables().collect::<Vec<_>>().join(", ")
        )));
    }
    let settings = settings::load(&db)?;
    let progress = options.progress.clone();
    progress.set_running(true);
    let _running = RunningGuard(progress.clone());
    let started_ms = clock.now_ms();
    let run_id = db.begin_run(&options.trigger, started_ms)?;
    let after_interruption = db.run_before_interrupted(run_id)?;
    let mut folder = DiskFolder::new(cfg.folder.clone(), Some(staging_dir(db_path)));
    let before_change = durable.clone();
    folder.before_changes(std::sync::Arc::new(move || before_change.sync()));
    if options.track_touched {
        folder.track_touched(TOUCHED_CAP);
    }
    let mut run = Run {
        checkpoint: None,
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
        sites: Sites::default(),
        force_scan: options.full_scan,
        confirm_deletes: options.confirm_deletes,
        keep_deleted: options.keep_deleted,
        after_interruption,
        copies: Copies::default(),
        scanned: Scanned::default(),
        purges: Purges::default(),
        only: options.only.clone().map(OnlyTable::new),
        brought: brought::Tally::default(),
        cold: false,
    };
    let result = if options.docs_only {
        run.execute_documents()
    } else if run.only.is_some() {
        run.execute_table()
    } else {
        run.execute()
    };
    run.rec.finish();
    let not_local = run.folder.stats().not_local;
    if not_local > 0 {
        // Each file has its own event; this one says what to do.
        run.rec.skipped(
            EventKind::Skipped,
            None,
            format!(
                "{not_local} files in the folder are online-only on this computer: the cloud client has not downloaded them, so they are not read (reading one would download it) and nothing in them is applied or deleted until it has; set the sync folder to stay on this device (OneDrive: Always keep on this device; Dropbox: Make available offline)"
            ),
        );
    }
    let (outcome, error) = match result {
        Ok(()) if run.rec.partial => (Outcome::Partial, None),
        Ok(()) => (Outcome::Ok, None),
        Err(e) => {
            let message = e.to_string();
            run.rec.skipped(EventKind::Failed, None, message.clone());
            (Outcome::Failed, Some(message))
        }
    };
    if outcome != Outcome::Failed
        && let Err(e) = run.publish_site_file(outcome == Outcome::Ok && run.full_sync(options))
    {
        // The site file says when this site last synced completely; failing
        // to publish it is itself worth a retry.
        run.rec.skipped(
            EventKind::SiteFile,
            Some(&site_path(run.cfg.site)),
            format!("could not be written: {e}"),
        );
    }
    let outcome = if outcome == Outcome::Ok && run.rec.partial { Outcome::Partial } else { outcome };
    // What a table run left, this one read (looked up first: a run with
    // nothing to do writes nothing).
    if outcome != Outcome::Failed && run.full_sync(options) && run.db.meta(TABLES_WAITING)?.is_some() {
        run.db.delete_meta(TABLES_WAITING)?;
    }
    run.counts.brought_in = run.brought_in()?;
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
    // What the run says it did is durable before it says so.
    durable.sync().map_err(|e| run.io("cannot make the database's last commits durable", e))?;
    tracing::info!(outcome = outcome.as_str(), "run finished");
    Ok(report)
}

/// Marks the progress handle idle when the run ends, however it ends.
struct RunningGuard(Progress);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.set_running(false);
    }
}

struct Run<'c> {
    /// A checkpoint copying the run's commits into the database file while
    /// the run goes on. Declared first, so that however the run ends it
    /// finishes before `db`'s connection closes (whose own checkpoint
    /// copies what it left).
    checkpoint: Option<Checkpointing>,
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
    /// The family's site files as the guard read them: the other sites,
    /// and whether every one was readable (else nothing that waits for
    /// every site, compaction or purging, goes ahead).
    sites: Sites,
    force_scan: bool,
    confirm_deletes: bool,
    keep_deleted: bool,
    /// The run before this one never finished: it may have left temp files.
    after_interruption: bool,
    /// What each step owns, declared beside the step.
    copies: Copies,
    scanned: Scanned,
    purges: Purges,
    /// Set for a `sync --only TABLE` run.
    only: Option<OnlyTable>,
    /// Whose changes the run brought in, for its sentence.
    brought: brought::Tally,
    /// Whether stamping read from the disk (the family is not in memory):
    /// then a smaller batch of files to write is read ahead too.
    cold: bool,
}

fn sha_hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(64);
    write_hex_bytes(&mut out, &Sha256::digest(bytes));
    out
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
        self.place_documents()?;
        self.progress.step("tidying the folder", 0);
        self.merge_nearby_copies()?;
        self.settle_copies()?;
        self.compact()?;
        self.purge_tombstones()?;
        self.forget_old_history()?;
        self.remove_unreferenced_bodies()?;
        self.record_patient_dirs()?;
        Ok(())
    }

    /// `sync --docs-only`: the guard, the export (a document's body is
    /// stamped on its row, so the rows' changes go too), and placing the
    /// documents whose rows are already here.
    fn execute_documents(&mut self) -> Result<(), EngineError> {
        self.progress.step("checking the folder", 0);
        self.guard()?;
        self.remove_leftovers()?;
        self.export()?;
        self.place_documents()
    }

    /// Whether this run syncs everything (not documents or one table only).
    fn full_sync(&self, options: &SyncOptions) -> bool {
        !options.docs_only && self.only.is_none()
    }

    /// Starts copying what the run committed so far into the database file
    /// on another thread (see [`Db::checkpoint_meanwhile`]), unless one is
    /// still at it: called after applying segments, before reading the
    /// files they touched. (In a sending run, after stamping or after the
    /// patient files are written, it bought nothing: the copying and the
    /// files' writes wait on the same disk, and little is left to overlap.)
    fn checkpoint_meanwhile(&mut self) {
        if self.checkpoint.as_ref().is_none_or(Checkpointing::finished) {
            self.checkpoint = Some(self.db.checkpoint_meanwhile());
        }
    }

    fn io(&self, what: &str, source: std::io::Error) -> EngineError {
        EngineError::Io { what: what.to_owned(), cause: source }
    }
}
