//! `clinicsync run`: the service while the app runs. Syncs on the interval,
//! after the cloud client delivers files and after the app changes rows,
//! and on Sync Now; serves the local web page; raises alerts; stops cleanly
//! on SIGTERM or Ctrl-C after the run in progress.

pub mod alert;
pub mod login;
pub mod scheduler;
mod watcher;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use tokio::sync::{mpsc, watch};

use crate::db::Db;
use crate::engine::{self, Progress, SyncOptions};
use crate::model::Clock as _;
use crate::web::{AlertView, ServiceView, Stopping};
use alert::AlertTarget;
use scheduler::{Alert, Control, Hint, Hooks, RunDone, Schedule, SchedulerState, Trigger};

/// How `clinicsync run` was started.
#[derive(Clone, Debug)]
pub struct ServiceOptions {
    pub db: PathBuf,
    /// Overrides the `web_port` setting (0: any free port).
    pub web_port: Option<u16>,
}

/// Alerts kept for the page.
const ALERTS_KEPT: usize = 20;

/// The folder watched, its identity (device, inode) when the watch began,
/// and the watcher.
type Watched = (PathBuf, (u64, u64), notify::RecommendedWatcher);

/// The running service as the web page and the hooks see it.
pub(crate) struct Shared {
    db: PathBuf,
    progress: Progress,
    control: mpsc::Sender<Control>,
    state: watch::Receiver<SchedulerState>,
    alerts: Mutex<VecDeque<AlertView>>,
    /// Tasks the service started beside the scheduler (alerts being sent,
    /// the page's wait for a Sync Now): waited for briefly when it stops.
    tasks: Mutex<tokio::task::JoinSet<()>>,
    watcher: Mutex<Option<Watched>>,
    /// The watch on the local documents folder, when one is set.
    docs_watcher: Mutex<Option<Watched>>,
    hints: mpsc::UnboundedSender<Hint>,
    /// Stops the service (as Ctrl-C does), for the page's operations that
    /// end syncing here.
    stop: tokio::sync::Notify,
}

impl crate::web::Service for Shared {
    fn db(&self) -> &Path {
        &self.db
    }

    fn view(&self) -> ServiceView {
        let state = self.state.borrow().clone();
        ServiceView {
            running: state.running,
            queued: state.queued,
            last_run: state.last_run,
            runs_finished: state.runs_finished,
            sync_requests: state.sync_requests,
            page_runs_done: state.page_runs_done,
            last_page_run: state.last_page_run,
            progress: self.progress.view(),
            alerts: self.alerts.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect(),
        }
    }

    fn sync_now(&self, from_page: bool) -> Result<(), Stopping> {
        self.control.try_send(Control::SyncNow { reply: None, from_page }).map_err(|_| Stopping)
    }

    fn sync_now_and_wait(&self) -> tokio::sync::oneshot::Receiver<()> {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let (reply, replied) = tokio::sync::oneshot::channel();
        let control = self.control.clone();
        self.spawn(async move {
            if control.send(Control::SyncNow { reply: Some(reply), from_page: false }).await.is_ok()
                && replied.await.is_ok()
            {
                let _ = done_tx.send(());
            }
        });
        done_rx
    }

    fn sync_documents_and_wait(&self) -> tokio::sync::oneshot::Receiver<()> {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let (reply, replied) = tokio::sync::oneshot::channel();
        let control = self.control.clone();
        self.spawn(async move {
            if control.send(Control::SyncDocuments { reply: Some(reply) }).await.is_ok()
                && replied.await.is_ok()
            {
                let _ = done_tx.send(());
            }
        });
        done_rx
    }

    fn sync_table_and_wait(&self, table: u16) -> tokio::sync::oneshot::Receiver<()> {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let (reply, replied) = tokio::sync::oneshot::channel();
        let control = self.control.clone();
        self.spawn(async move {
            if control.send(Control::SyncTable { table, reply: Some(reply) }).await.is_ok()
                && replied.await.is_ok()
            {
                let _ = done_tx.send(());
            }
        });
        done_rx
    }

    fn stop_syncing(&self) -> tokio::sync::oneshot::Receiver<()> {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let control = self.control.clone();
        let mut state = self.state.clone();
        self.spawn(async move {
            let _ = control.send(Control::Shutdown).await;
            if state.wait_for(|s| s.stopped).await.is_ok() {
                let _ = done_tx.send(());
            }
        });
        done_rx
    }

    fn stop(&self) {
        self.stop.notify_one();
    }

    fn settings_changed(&self) -> Result<(), engine::EngineError> {
        Shared::settings_changed(self)
    }
}

impl Shared {
    /// Starts a task the service waits for when it stops (finished ones
    /// are reaped first, so the set does not grow).
    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task);
    }

    /// Tells the scheduler about changed settings, and watches the new
    /// folder if it moved.
    fn settings_changed(&self) -> Result<(), engine::EngineError> {
        let settings = engine::settings_load(&self.db)?;
        let folder = Db::open(&self.db)?.site_config()?.folder;
        let _ = self.control.try_send(Control::Settings(schedule_of(&settings)));
        self.rewatch(&folder);
        self.rewatch_documents();
        Ok(())
    }

    /// Watches `folder`, unless it is already watched and is still the
    /// same directory (a folder deleted and created again, or a drive
    /// mounted again, needs a new watch).
    fn rewatch(&self, folder: &Path) {
        self.rewatch_in(&self.watcher, folder, "");
    }

    /// Watches the documents folder as [`Shared::rewatch`] watches the
    /// sync folder: a new or changed document is exported within seconds.
    /// Its paths reach the scheduler under `/documents/`, which no path of
    /// the sync folder can be.
    fn rewatch_documents(&self) {
        match engine::settings_load(&self.db).ok().and_then(|s| s.documents_folder) {
            Some(folder) => self.rewatch_in(&self.docs_watcher, &folder, "/documents/"),
            None => *self.docs_watcher.lock().unwrap_or_else(|e| e.into_inner()) = None,
        }
    }

    fn rewatch_in(&self, slot: &Mutex<Option<Watched>>, folder: &Path, prefix: &'static str) {
        let identity = crate::platform::dir_identity(folder);
        let mut current = slot.lock().unwrap_or_else(|e| e.into_inner());
        if current.as_ref().is_some_and(|(f, id, _)| f == folder && Some(*id) == identity) {
            return;
        }
        let Some(identity) = identity else {
            // Unreachable now; the next run tries again.
            *current = None;
            return;
        };
        *current = match watcher::watch(folder, prefix, self.hints.clone()) {
            Ok(w) => Some((folder.to_path_buf(), identity, w)),
            Err(e) => {
                tracing::warn!(
                    "cannot watch {} for new files ({e}); syncing on the interval only",
                    folder.display()
                );
                None
            }
        };
    }
}

fn schedule_of(s: &engine::Settings) -> Schedule {
    Schedule { auto_sync: s.auto_sync, watch: s.watch, interval: s.sync_interval, alert_after: s.alert_after }
}

/// The real world behind the scheduler: the engine, the database, alerts.
struct RealHooks {
    db: PathBuf,
    progress: Progress,
    shared: Arc<Shared>,
    /// A connection kept open to ask cheaply whether the app changed rows.
    poll_db: Arc<Mutex<Option<Db>>>,
}

impl Hooks for RealHooks {
    async fn run(&self, trigger: Trigger) -> RunDone {
        let db = self.db.clone();
        let mut options = SyncOptions {
            trigger: trigger.as_str().to_owned(),
            progress: self.progress.clone(),
            track_touched: true,
            docs_only: trigger == Trigger::Documents,
            // A `clinicsync sync` from the command line may hold the lock:
            // wait for it rather than fail.
            wait_for_lock: Some(|| {}),
            ..SyncOptions::default()
        };
        let result = tokio::task::spawn_blocking(move || {
            if let Trigger::Table(index) = trigger {
                let table = engine::mapped_table(&db, usize::from(index))?;
                options.trigger = engine::table_trigger(&table);
                options.only = Some(table);
            }
            engine::sync(&db, &options)
        })
        .await;
        let (shared, db) = (self.shared.clone(), self.db.clone());
        let _ = tokio::task::spawn_blocking(move || {
            if let Ok(cfg) = Db::open(&db).and_then(|d| d.site_config()) {
                shared.rewatch(&cfg.folder);
                shared.rewatch_documents();
            }
        })
        .await;
        match result {
            Ok(Ok(report)) => RunDone {
                run_id: report.run_id,
                outcome: report.outcome,
                error: report.error,
                touched: report.touched,
            },
            Ok(Err(e)) => RunDone {
                run_id: None,
                outcome: engine::Outcome::Failed,
                error: Some(e.to_string()),
                touched: None,
            },
            Err(e) => RunDone {
                run_id: None,
                outcome: engine::Outcome::Failed,
                error: Some(format!("the sync stopped unexpectedly: {e}")),
                touched: None,
            },
        }
    }

    async fn local_changes(&self) -> bool {
        let db = self.db.clone();
        let conn = self.poll_db.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|e| e.into_inner());
            if guard.is_none() {
                *guard = Db::open(&db).ok();
            }
            match guard.as_ref().map(Db::has_pending) {
                Some(Ok(pending)) => pending,
                // Reopen next time (the file may have been replaced).
                _ => {
                    *guard = None;
                    false
                }
            }
        })
        .await
        .unwrap_or(false)
    }

    async fn alert(&self, alert: Alert) {
        let db = self.db.clone();
        let shared = self.shared.clone();
        // Sending may take a while; the scheduler does not wait for it.
        self.shared.spawn(async move {
            let target = match tokio::task::spawn_blocking(move || alert_target(&db)).await {
                Ok(Ok(t)) => t,
                _ => AlertTarget::default(),
            };
            let results = alert::send(&target, &alert).await;
            let mut alerts = shared.alerts.lock().unwrap_or_else(|e| e.into_inner());
            alerts.push_front(AlertView {
                at_ms: engine::SystemClock.now_ms(),
                kind: alert.kind.as_str(),
                reason: alert.reason,
                results,
            });
            alerts.truncate(ALERTS_KEPT);
        });
    }
}

fn alert_target(db_path: &Path) -> Result<AlertTarget, engine::EngineError> {
    let settings = engine::settings_load(db_path)?;
    let name = Db::open(db_path)?.site_config()?.name;
    Ok(AlertTarget {
        command: settings.alert_command,
        url: settings.alert_url,
        site_name: name,
        db: db_path.display().to_string(),
    })
}

/// The token file beside the database: `<db>-clinicsync.token`.
pub fn token_path(db_path: &Path) -> PathBuf {
    let mut name = db_path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push("-clinicsync.token");
    db_path.with_file_name(name)
}

/// Reads the page's token, or makes one (readable by this user only).
fn load_or_make_token(db_path: &Path) -> anyhow::Result<String> {
    use std::io::Write as _;
    let path = token_path(db_path);
    if let Ok(meta) = std::fs::symlink_metadata(&path)
        && (!meta.is_file() || crate::platform::readable_by_others(&path, &meta))
    {
        // Other users could read it (or it is not a plain file): the token
        // may be known, so it is replaced by a new one only this user reads.
        eprintln!(
            "clinicsync: {} could be read by other users; the page gets a new token, readable by this user only",
            crate::model::shown(&path.display().to_string())
        );
        std::fs::remove_file(&path).with_context(|| format!("cannot replace {}", path.display()))?;
    }
    if let Ok(text) = std::fs::read_to_string(&path) {
        let token = text.trim();
        if token.len() >= 32 && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Ok(token.to_owned());
        }
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("cannot draw a random token: {e}"))?;
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let (mut file, not_private) = crate::platform::create_private(&path)
        .with_context(|| format!("cannot write the token file {}", path.display()))?;
    if let Some(why) = not_private {
        eprintln!(
            "clinicsync: {} cannot be made readable by this user only ({}); its folder's permissions decide who can read it",
            crate::model::shown(&path.display().to_string()),
            crate::model::shown(&why)
        );
    }
    file.write_all(token.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(token)
}

/// Runs the service until SIGTERM or Ctrl-C.
pub fn run(options: &ServiceOptions) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the service's runtime")?;
    runtime.block_on(serve(options))
}

/// Holds `<db>-clinicsync.service.lock` while the service runs: one
/// service per database (runs are serialised anyway; two services would
/// only fight over the page and the alerts).
fn take_service_lock(db_path: &Path) -> anyhow::Result<std::fs::File> {
    let path = service_lock_path(db_path);
    let file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot create the lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(anyhow::anyhow!(
            "clinicsync run is already running for {}; use its web page, or stop it first",
            db_path.display()
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(anyhow::anyhow!("cannot lock {}: {e}", path.display())),
    }
}

fn service_lock_path(db_path: &Path) -> PathBuf {
    let mut name = db_path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push("-clinicsync.service.lock");
    db_path.with_file_name(name)
}

/// Whether a `clinicsync run` for this database runs now (it holds the
/// service lock; the lock is tried and let go at once).
pub fn is_running(db_path: &Path) -> anyhow::Result<bool> {
    let path = service_lock_path(db_path);
    let file = match std::fs::File::options().write(true).open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(anyhow::anyhow!("cannot open the lock file {}: {e}", path.display())),
    };
    match file.try_lock() {
        Ok(()) => Ok(false),
        Err(std::fs::TryLockError::WouldBlock) => Ok(true),
        Err(std::fs::TryLockError::Error(e)) => Err(anyhow::anyhow!("cannot lock {}: {e}", path.display())),
    }
}

async fn serve(options: &ServiceOptions) -> anyhow::Result<()> {
    let db_path = options.db.clone();
    let _service_lock = take_service_lock(&db_path)?;
    let (settings, cfg, last_ok) = {
        let db = Db::open(&db_path)?;
        (engine::settings_load(&db_path)?, db.site_config()?, db.last_ok_ms()?)
    };
    let token = load_or_make_token(&db_path)?;
    let port = options.web_port.unwrap_or(settings.web_port);
    let listener =
        tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await.with_context(|| {
            format!("cannot open the web page on 127.0.0.1:{port} (another program uses it? change web_port)")
        })?;
    let port = listener.local_addr().context("cannot read the web page's address")?.port();

    let progress = Progress::new();
    let (control_tx, control_rx) = mpsc::channel(64);
    let (hint_tx, hint_rx) = mpsc::unbounded_channel();
    let (state_tx, state_rx) = watch::channel(SchedulerState::default());
    let shared = Arc::new(Shared {
        db: db_path.clone(),
        progress: progress.clone(),
        control: control_tx.clone(),
        state: state_rx,
        alerts: Mutex::new(VecDeque::new()),
        tasks: Mutex::new(tokio::task::JoinSet::new()),
        watcher: Mutex::new(None),
        docs_watcher: Mutex::new(None),
        hints: hint_tx,
        stop: tokio::sync::Notify::new(),
    });
    shared.rewatch(&cfg.folder);
    shared.rewatch_documents();
    let hooks = Arc::new(RealHooks {
        db: db_path.clone(),
        progress,
        shared: shared.clone(),
        poll_db: Arc::new(Mutex::new(None)),
    });
    let now = engine::SystemClock.now_ms();
    let last_success_ago = last_ok.map(|ms| Duration::from_millis(now.saturating_sub(ms)));
    let scheduler = tokio::spawn(scheduler::run(
        hooks,
        schedule_of(&settings),
        last_success_ago,
        control_rx,
        hint_rx,
        state_tx,
    ));

    let app = crate::web::router(shared.clone(), token.clone(), port);
    println!(
        "clinicsync is running for site {:?} ({}), folder {}",
        cfg.name,
        cfg.site.short(),
        cfg.folder.display()
    );
    println!("Web page: http://127.0.0.1:{port}/?token={token}");
    println!("Stop with Ctrl-C; a sync in progress finishes first.");
    use std::io::Write as _;
    let _ = std::io::stdout().flush();

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_page(listener, app, stop_rx));
    tokio::select! {
        _ = crate::platform::stop_requested() => {}
        _ = shared.stop.notified() => {}
    }
    eprintln!("clinicsync: stopping after the sync in progress (if any)");
    let _ = control_tx.send(Control::Shutdown).await;
    let _ = scheduler.await;
    let _ = stop_tx.send(());
    // Open page connections (live status) get a moment, not forever.
    let _ = tokio::time::timeout(Duration::from_secs(3), server).await;
    // Alerts still being sent (and the page's waits) get the same moment.
    let mut tasks = std::mem::take(&mut *shared.tasks.lock().unwrap_or_else(|e| e.into_inner()));
    let _ =
        tokio::time::timeout(Duration::from_secs(3), async { while tasks.join_next().await.is_some() {} })
            .await;
    shared.watcher.lock().unwrap_or_else(|e| e.into_inner()).take();
    eprintln!("clinicsync: stopped");
    Ok(())
}

/// Most connections the page serves at once; more are closed at once.
const PAGE_CONNECTIONS: usize = 64;
/// How long a connection has to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the page until `stop`: HTTP/1 with a header timeout, so a
/// connection that never finishes its headers is closed, and at most
/// [`PAGE_CONNECTIONS`] connections at once, so many of them cannot grow
/// the service's memory. At `stop`, idle connections are closed and the
/// requests being answered are finished (the page's answer to the
/// operation that stopped the service among them) before it returns.
async fn serve_page(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(PAGE_CONNECTIONS));
    let (stopping_tx, stopping) = watch::channel(false);
    let mut stop = std::pin::pin!(stop);
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => {
                let _ = stopping_tx.send(true);
                let _ = slots.acquire_many(PAGE_CONNECTIONS as u32).await;
                return;
            }
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else {
            // Out of descriptors, say: wait a moment rather than spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let mut stopping = stopping.clone();
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = async { stopping.wait_for(|s| *s).await.is_ok() } => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            drop(slot);
        });
    }
}
