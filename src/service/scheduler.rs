//! When the service syncs: on the interval, shortly after the cloud client
//! delivers files (debounced), shortly after the app changes rows, and on
//! Sync Now; never two runs at once; alerts once per incident. Everything
//! the scheduler does to the world goes through [`Hooks`], so its timing is
//! tested with tokio's paused clock and a fake.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use crate::engine::Outcome;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior, sleep_until};

/// After the last file event of a burst, wait this long for more.
pub const QUIET: Duration = Duration::from_millis(400);
/// ...but start at most this long after the burst's first event.
pub const MAX_DEBOUNCE: Duration = Duration::from_millis(1500);
/// How often the database is asked whether the app changed rows.
pub const LOCAL_POLL: Duration = Duration::from_millis(700);
/// File events this long after a run ended may still be its own echo.
const ECHO_GRACE: Duration = Duration::from_secs(2);
/// No stale alert sooner than this after the service starts: the first
/// run after a weekend off gets its chance.
pub const STARTUP_GRACE: Duration = Duration::from_secs(120);
/// File events remembered during a run; beyond this, the run is followed
/// by another whatever the events were.
const MAX_EVENTS_DURING_RUN: usize = 10_000;

/// What the scheduler needs from the settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub auto_sync: bool,
    /// React to file events and to the app's changes (off: only the
    /// interval and Sync Now start runs).
    pub watch: bool,
    pub interval: Duration,
    pub alert_after: Duration,
}

/// Why a run starts, strongest first when several are waiting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Trigger {
    /// Sync Now (the web page).
    Manual,
    /// The cloud client delivered files.
    Watcher,
    /// The app changed rows.
    LocalChange,
    Interval,
    /// The first run when the service starts.
    Startup,
    /// Sync documents now (the web page): only document files. After the
    /// full runs, so a full run asked for at the same time is the one that
    /// runs.
    Documents,
    /// Sync one table now (the web page): the mapping's table at this
    /// index, and nothing else.
    Table(u16),
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Manual => "manual",
            Trigger::Watcher => "watcher",
            Trigger::LocalChange => "local-change",
            Trigger::Interval => "interval",
            Trigger::Startup => "startup",
            Trigger::Documents => "documents",
            Trigger::Table(_) => "table",
        }
    }

    /// A run that carries part of the changes only.
    pub fn partial(self) -> bool {
        matches!(self, Trigger::Documents | Trigger::Table(_))
    }

    /// The run that carries what two waiting requests ask for: the same
    /// one, a full run over a partial one, and a full run for two
    /// different partial ones (so neither is dropped).
    fn merged(self, other: Trigger) -> Trigger {
        if self == other {
            self
        } else if self.partial() && other.partial() {
            Trigger::Manual
        } else {
            self.min(other)
        }
    }
}

/// How a run ended, as the scheduler needs it.
#[derive(Clone, Debug)]
pub struct RunDone {
    pub run_id: Option<i64>,
    pub outcome: Outcome,
    pub error: Option<String>,
    /// Folder paths the run wrote or removed; `None` when unknown (then
    /// every file event seen during the run counts as news).
    pub touched: Option<Vec<String>>,
}

/// Why an alert is raised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AlertKind {
    Failed,
    Stale,
}

impl AlertKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            AlertKind::Failed => "failed",
            AlertKind::Stale => "stale",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alert {
    pub kind: AlertKind,
    /// One sentence for a person.
    pub reason: String,
}

/// What the scheduler does to the world.
pub trait Hooks: Send + Sync + 'static {
    /// Runs one sync to the end.
    fn run(&self, trigger: Trigger) -> impl Future<Output = RunDone> + Send;
    /// Whether the app has changed rows that are not exported yet.
    fn local_changes(&self) -> impl Future<Output = bool> + Send;
    /// Sends an alert (command or URL); failures are the hook's to log.
    fn alert(&self, alert: Alert) -> impl Future<Output = ()> + Send;
}

/// Requests from the web page and the signal handler.
#[derive(Debug)]
pub enum Control {
    /// Sync Now: a run that starts after any run in progress; the reply
    /// comes when it has finished.
    SyncNow {
        reply: Option<oneshot::Sender<RunDone>>,
        /// Asked by the web page, which follows its runs through
        /// [`SchedulerState::page_runs_done`].
        from_page: bool,
    },
    /// Sync documents now: a documents-only run (unless a full one is
    /// waiting too); the reply comes when it has finished.
    SyncDocuments {
        reply: Option<oneshot::Sender<RunDone>>,
    },
    /// Sync one table now (the mapping's table at this index), as
    /// [`Control::SyncDocuments`].
    SyncTable {
        table: u16,
        reply: Option<oneshot::Sender<RunDone>>,
    },
    Settings(Schedule),
    /// Finish the run in progress, then stop.
    Shutdown,
}

/// A file event: the folder paths it names (relative, `/`-separated).
#[derive(Debug, Default)]
pub struct Hint {
    pub paths: Vec<String>,
}

/// The scheduler's view, for the web page.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SchedulerState {
    pub running: Option<&'static str>,
    pub queued: bool,
    /// The id and outcome of the latest finished run.
    pub last_run: Option<(Option<i64>, Outcome)>,
    pub runs_finished: u64,
    /// Sync Now requests received (the page's, the command line's
    /// through the page): a refused request never adds one.
    pub sync_requests: u64,
    /// The web page's Sync Now requests whose run has finished, and the id
    /// and outcome of the latest such run: the page's script follows its
    /// own run by these.
    pub page_runs_done: u64,
    pub last_page_run: Option<(Option<i64>, Outcome)>,
    /// The scheduler has stopped: no run is in progress and none starts.
    pub stopped: bool,
}

struct Pending {
    trigger: Trigger,
    replies: Vec<oneshot::Sender<RunDone>>,
    /// Requests from the web page among them.
    from_page: u64,
}

/// Runs the schedule until [`Control::Shutdown`] (or every sender is gone).
/// `last_success_ago` is how long ago the last successful sync ended
/// (`None`: never), for the stale alert.
pub async fn run<H: Hooks>(
    hooks: Arc<H>,
    mut schedule: Schedule,
    last_success_ago: Option<Duration>,
    mut control: mpsc::Receiver<Control>,
    mut hints: mpsc::UnboundedReceiver<Hint>,
    state: watch::Sender<SchedulerState>,
) {
    let start = Instant::now();
    let mut last_success = last_success_ago.map(|ago| start.checked_sub(ago).unwrap_or(start));
    // Until a first success, the stale clock counts from the start.
    let mut stale_since = last_success.unwrap_or(start);
    let mut stale_alerted = false;
    let mut failed_alerted = false;
    let mut last_start = start;
    let mut pending: Option<Pending> =
        Some(Pending { trigger: Trigger::Startup, replies: Vec::new(), from_page: 0 });
    // The run in progress: its task, who waits for it, how many of its
    // requests came from the page, and what started it.
    type Running = (JoinHandle<RunDone>, Vec<oneshot::Sender<RunDone>>, u64, Trigger);
    let mut running: Option<Running> = None;
    let mut debounce: Option<(Instant, Instant)> = None;
    let mut during_run: Vec<String> = Vec::new();
    let mut during_run_overflow = false;
    let mut hints_open = true;
    // After a failed run, rows the app changed wait for the next interval,
    // watcher or manual run instead of retrying at every poll.
    let mut local_paused = false;
    let mut echo: (HashSet<String>, Instant) = (HashSet::new(), start);
    let mut shutting_down = false;
    let mut poll = tokio::time::interval(LOCAL_POLL);
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);

    let queue = |pending: &mut Option<Pending>,
                 trigger: Trigger,
                 reply: Option<oneshot::Sender<RunDone>>,
                 from_page: bool| {
        let p = pending.get_or_insert(Pending { trigger, replies: Vec::new(), from_page: 0 });
        p.trigger = p.trigger.merged(trigger);
        p.replies.extend(reply);
        p.from_page += u64::from(from_page);
    };

    loop {
        // Start a waiting run when none is in progress.
        if running.is_none()
            && !shutting_down
            && let Some(p) = pending.take()
        {
            last_start = Instant::now();
            let h = hooks.clone();
            let trigger = p.trigger;
            running =
                Some((tokio::spawn(async move { h.run(trigger).await }), p.replies, p.from_page, trigger));
            state.send_modify(|s| {
                s.running = Some(trigger.as_str());
                s.queued = false;
            });
        }
        if shutting_down && running.is_none() {
            state.send_modify(|s| s.stopped = true);
            return;
        }
        let next_interval = (schedule.auto_sync && !shutting_down).then(|| last_start + schedule.interval);
        let stale_at =
            (!stale_alerted).then(|| (stale_since + schedule.alert_after).max(start + STARTUP_GRACE));

        tokio::select! {
            done = async { (&mut running.as_mut().expect("guarded").0).await }, if running.is_some() => {
                let (_, replies, from_page, trigger) = running.take().expect("guarded");
                let done = done.unwrap_or_else(|e| RunDone {
                    run_id: None,
                    outcome: Outcome::Failed,
                    error: Some(format!("the sync stopped unexpectedly: {e}")),
                    touched: None,
                });
                let now = Instant::now();
                local_paused = done.outcome == Outcome::Failed;
                match done.outcome {
                    // Only document files, or one table: not a sync of
                    // everything.
                    Outcome::Ok if trigger.partial() => {}
                    Outcome::Ok => {
                        last_success = Some(now);
                        stale_since = now;
                        stale_alerted = false;
                        failed_alerted = false;
                    }
                    Outcome::Failed => {
                        if !failed_alerted {
                            failed_alerted = true;
                            let reason = done.error.clone().unwrap_or_else(|| "a sync failed".into());
                            hooks.alert(Alert { kind: AlertKind::Failed, reason }).await;
                        }
                    }
                    Outcome::Partial => failed_alerted = false,
                }
                // File events the run caused are not news; the rest are.
                echo = (echo_set(done.touched.as_deref().unwrap_or_default()), now + ECHO_GRACE);
                let news = std::mem::take(&mut during_run_overflow)
                    || during_run.drain(..).any(|p| done.touched.is_none() || !echo.0.contains(&p));
                during_run.clear();
                if news {
                    debounce = Some((now, now + QUIET));
                }
                state.send_modify(|s| {
                    s.running = None;
                    s.last_run = Some((done.run_id, done.outcome));
                    s.runs_finished += 1;
                    if from_page > 0 {
                        s.page_runs_done += from_page;
                        s.last_page_run = Some((done.run_id, done.outcome));
                    }
                });
                for reply in replies {
                    let _ = reply.send(done.clone());
                }
            }
            msg = control.recv(), if !shutting_down => match msg {
                Some(Control::SyncNow { reply, from_page }) => {
                    queue(&mut pending, Trigger::Manual, reply, from_page);
                    state.send_modify(|s| {
                        s.queued = running.is_some();
                        s.sync_requests += 1;
                    });
                }
                Some(Control::SyncDocuments { reply }) => {
                    queue(&mut pending, Trigger::Documents, reply, false);
                    state.send_modify(|s| s.queued = running.is_some());
                }
                Some(Control::SyncTable { table, reply }) => {
                    queue(&mut pending, Trigger::Table(table), reply, false);
                    state.send_modify(|s| s.queued = running.is_some());
                }
                Some(Control::Settings(new)) => schedule = new,
                Some(Control::Shutdown) | None => {
                    shutting_down = true;
                    // Waiting requests get no run; dropping them says so.
                    pending = None;
                }
            },
            hint = hints.recv(), if hints_open && !shutting_down => {
                let Some(hint) = hint else {
                    // The watcher is gone; the interval carries on.
                    hints_open = false;
                    continue;
                };
                let now = Instant::now();
                if running.is_some() {
                    if during_run.len() + hint.paths.len() > MAX_EVENTS_DURING_RUN || hint.paths.is_empty() {
                        during_run_overflow = true;
                    } else {
                        during_run.extend(hint.paths);
                    }
                    continue;
                }
                if !schedule.watch {
                    continue;
                }
                let fresh = now > echo.1 || hint.paths.is_empty() || hint.paths.iter().any(|p| !echo.0.contains(p));
                if !fresh {
                    continue;
                }
                debounce = Some(match debounce {
                    None => (now, now + QUIET),
                    Some((first, _)) => (first, (now + QUIET).min(first + MAX_DEBOUNCE)),
                });
            }
            _ = sleep_until(debounce.map_or(start, |d| d.1)), if debounce.is_some() && !shutting_down => {
                debounce = None;
                queue(&mut pending, Trigger::Watcher, None, false);
            }
            _ = sleep_until(next_interval.unwrap_or(start)), if next_interval.is_some() && running.is_none() && pending.is_none() => {
                queue(&mut pending, Trigger::Interval, None, false);
            }
            _ = sleep_until(stale_at.unwrap_or(start)), if stale_at.is_some() => {
                stale_alerted = true;
                let reason = match last_success {
                    Some(at) => format!(
                        "no sync has succeeded for {} (alert_after is {})",
                        humantime::format_duration(round_secs(at.elapsed())),
                        humantime::format_duration(schedule.alert_after)
                    ),
                    None => format!(
                        "no sync has succeeded since the service started {} ago",
                        humantime::format_duration(round_secs(start.elapsed()))
                    ),
                };
                hooks.alert(Alert { kind: AlertKind::Stale, reason }).await;
            }
            _ = poll.tick(), if schedule.watch && running.is_none() && pending.is_none() && !shutting_down && !local_paused => {
                if hooks.local_changes().await {
                    queue(&mut pending, Trigger::LocalChange, None, false);
                }
            }
        }
    }
}

/// The paths a run touched and every folder above them (creating a file
/// can create its shard folder).
fn echo_set(touched: &[String]) -> HashSet<String> {
    let mut set = HashSet::with_capacity(touched.len());
    for path in touched {
        let mut p = path.as_str();
        set.insert(p.to_owned());
        while let Some((parent, _)) = p.rsplit_once('/') {
            if !set.insert(parent.to_owned()) {
                break;
            }
            p = parent;
        }
    }
    set
}

fn round_secs(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

#[cfg(test)]
mod tests {
    //! The schedule on tokio's paused clock: time moves only when every
    //! task waits, so the instants below are exact, not timings.

    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;

    #[derive(Default)]
    struct Fake {
        /// (start offset from the test's start, trigger) of every run.
        runs: Mutex<Vec<(Duration, Trigger)>>,
        alerts: Mutex<Vec<(Duration, Alert)>>,
        /// Outcomes to return, in order; then `ok`.
        outcomes: Mutex<VecDeque<Outcome>>,
        touched: Mutex<Vec<String>>,
        run_takes: Mutex<Duration>,
        local: AtomicBool,
        concurrent: AtomicUsize,
        max_concurrent: AtomicUsize,
        t0: Mutex<Option<Instant>>,
    }

    impl Fake {
        fn since(&self) -> Duration {
            self.t0.lock().unwrap().expect("t0 set").elapsed()
        }
        fn runs(&self) -> Vec<(Duration, Trigger)> {
            self.runs.lock().unwrap().clone()
        }
    }

    impl Hooks for Fake {
        async fn run(&self, trigger: Trigger) -> RunDone {
            let now = self.concurrent.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_concurrent.fetch_max(now, Ordering::SeqCst);
            self.runs.lock().unwrap().push((self.since(), trigger));
            // The run exports what the app changed.
            self.local.store(false, Ordering::SeqCst);
            let takes = *self.run_takes.lock().unwrap();
            tokio::time::sleep(takes).await;
            self.concurrent.fetch_sub(1, Ordering::SeqCst);
            let outcome = self.outcomes.lock().unwrap().pop_front().unwrap_or(Outcome::Ok);
            RunDone {
                run_id: None,
                outcome,
                error: (outcome == Outcome::Failed).then(|| "the folder is not reachable".to_owned()),
                touched: Some(self.touched.lock().unwrap().clone()),
            }
        }
        async fn local_changes(&self) -> bool {
            self.local.load(Ordering::SeqCst)
        }
        async fn alert(&self, alert: Alert) {
            let at = self.since();
            self.alerts.lock().unwrap().push((at, alert));
        }
    }

    struct Harness {
        fake: Arc<Fake>,
        control: mpsc::Sender<Control>,
        hints: mpsc::UnboundedSender<Hint>,
        task: JoinHandle<()>,
    }

    fn schedule(interval_min: u64) -> Schedule {
        Schedule {
            auto_sync: true,
            watch: true,
            interval: Duration::from_secs(interval_min * 60),
            alert_after: Duration::from_secs(3600),
        }
    }

    fn start(fake: Fake, schedule: Schedule, last_success_ago: Option<Duration>) -> Harness {
        let fake = Arc::new(fake);
        *fake.t0.lock().unwrap() = Some(Instant::now());
        if fake.run_takes.lock().unwrap().is_zero() {
            *fake.run_takes.lock().unwrap() = Duration::from_millis(300);
        }
        let (control, control_rx) = mpsc::channel(16);
        let (hints, hints_rx) = mpsc::unbounded_channel();
        let (state, _) = watch::channel(SchedulerState::default());
        let task = tokio::spawn(run(fake.clone(), schedule, last_success_ago, control_rx, hints_rx, state));
        Harness { fake, control, hints, task }
    }

    fn hint(path: &str) -> Hint {
        Hint { paths: vec![path.to_owned()] }
    }

    async fn sleep(ms: u64) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn runs_at_start_then_every_interval() {
        let h = start(Fake::default(), schedule(5), Some(Duration::ZERO));
        sleep(16 * 60 * 1000).await;
        let runs = h.fake.runs();
        let starts: Vec<u64> = runs.iter().map(|(d, _)| d.as_secs()).collect();
        assert_eq!(starts, [0, 300, 600, 900], "{runs:?}");
        assert_eq!(runs[0].1, Trigger::Startup);
        assert!(runs[1..].iter().all(|(_, t)| *t == Trigger::Interval));
    }

    #[tokio::test(start_paused = true)]
    async fn auto_sync_off_runs_only_when_asked() {
        let mut s = schedule(5);
        s.auto_sync = false;
        let h = start(Fake::default(), s, Some(Duration::ZERO));
        sleep(30 * 60 * 1000).await;
        assert_eq!(h.fake.runs().len(), 1, "only the startup run");
        let (tx, rx) = oneshot::channel();
        h.control.send(Control::SyncNow { reply: Some(tx), from_page: false }).await.unwrap();
        let done = rx.await.expect("Sync Now answers when its run is done");
        assert_eq!(done.outcome, Outcome::Ok);
        assert_eq!(h.fake.runs().last().unwrap().1, Trigger::Manual);
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_a_thousand_files_is_one_run_within_two_seconds() {
        let h = start(Fake::default(), schedule(60), Some(Duration::ZERO));
        sleep(10_000).await;
        // 1,000 files land over one second.
        for i in 0..1000 {
            h.hints.send(hint(&format!("patients/ab/{i:032x}.xml"))).unwrap();
            if i % 10 == 9 {
                sleep(10).await;
            }
        }
        sleep(10_000).await;
        let runs = h.fake.runs();
        let watcher: Vec<_> = runs.iter().filter(|(_, t)| *t == Trigger::Watcher).collect();
        assert_eq!(watcher.len(), 1, "{runs:?}");
        let first_hint = Duration::from_secs(10);
        assert!(watcher[0].0 - first_hint <= Duration::from_secs(2), "{runs:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_trickle_still_syncs_within_the_debounce_limit() {
        let h = start(Fake::default(), schedule(60), Some(Duration::ZERO));
        sleep(1_000).await;
        // A file every 200 ms for 6 s: the quiet period never comes.
        for i in 0..30 {
            h.hints.send(hint(&format!("log/s/{i}.xml"))).unwrap();
            sleep(200).await;
        }
        sleep(5_000).await;
        let runs: Vec<_> = h.fake.runs().into_iter().filter(|(_, t)| *t == Trigger::Watcher).collect();
        assert!(runs[0].0 <= Duration::from_millis(1_000) + MAX_DEBOUNCE, "{runs:?}");
        assert!((2..=6).contains(&runs.len()), "a few runs, not one per file: {runs:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_runs_own_writes_do_not_start_another_run() {
        let fake = Fake::default();
        *fake.touched.lock().unwrap() =
            vec!["log/me/00000000000000000002.xml".into(), "patients/ab/x.xml".into()];
        *fake.run_takes.lock().unwrap() = Duration::from_secs(2);
        let h = start(fake, schedule(60), Some(Duration::ZERO));
        // During the startup run, the watcher reports the run's own writes
        // (and the shard folder they created)...
        sleep(500).await;
        h.hints.send(hint("patients/ab/x.xml")).unwrap();
        h.hints.send(hint("patients/ab")).unwrap();
        sleep(2_000).await;
        // ...and again just after it (inotify is late).
        h.hints.send(hint("log/me/00000000000000000002.xml")).unwrap();
        sleep(10_000).await;
        assert_eq!(h.fake.runs().len(), 1, "{:?}", h.fake.runs());
        // Another site's file during a run starts one more run after it.
        h.control.send(Control::SyncNow { reply: None, from_page: false }).await.unwrap();
        sleep(500).await;
        h.hints.send(hint("patients/cd/y.xml")).unwrap();
        sleep(10_000).await;
        let triggers: Vec<Trigger> = h.fake.runs().iter().map(|r| r.1).collect();
        assert_eq!(triggers, [Trigger::Startup, Trigger::Manual, Trigger::Watcher]);
    }

    #[tokio::test(start_paused = true)]
    async fn sync_now_during_a_run_waits_for_it_and_never_overlaps() {
        let fake = Fake::default();
        *fake.run_takes.lock().unwrap() = Duration::from_secs(5);
        let h = start(fake, schedule(60), Some(Duration::ZERO));
        sleep(1_000).await;
        let (a, ra) = oneshot::channel();
        let (b, rb) = oneshot::channel();
        h.control.send(Control::SyncNow { reply: Some(a), from_page: false }).await.unwrap();
        h.control.send(Control::SyncNow { reply: Some(b), from_page: false }).await.unwrap();
        let (da, db) = tokio::join!(ra, rb);
        assert!(da.is_ok() && db.is_ok());
        let runs = h.fake.runs();
        // The two requests joined one run, after the startup run.
        assert_eq!(runs.iter().map(|r| r.1).collect::<Vec<_>>(), [Trigger::Startup, Trigger::Manual]);
        assert_eq!(runs[1].0, Duration::from_secs(5));
        assert_eq!(h.fake.max_concurrent.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn two_partial_requests_waiting_together_become_one_full_run() {
        let fake = Fake::default();
        *fake.run_takes.lock().unwrap() = Duration::from_secs(5);
        let h = start(fake, schedule(60), Some(Duration::ZERO));
        sleep(1_000).await;
        let (a, ra) = oneshot::channel();
        let (b, rb) = oneshot::channel();
        h.control.send(Control::SyncTable { table: 1, reply: Some(a) }).await.unwrap();
        h.control.send(Control::SyncTable { table: 1, reply: Some(b) }).await.unwrap();
        let (da, db) = tokio::join!(ra, rb);
        assert!(da.is_ok() && db.is_ok());
        let (c, rc) = oneshot::channel();
        let (d, rd) = oneshot::channel();
        h.control.send(Control::SyncTable { table: 2, reply: Some(c) }).await.unwrap();
        sleep(1_000).await;
        // While the table run goes, another table and the documents: both
        // wait, and one full run carries them.
        h.control.send(Control::SyncTable { table: 3, reply: Some(d) }).await.unwrap();
        h.control.send(Control::SyncDocuments { reply: None }).await.unwrap();
        let (dc, dd) = tokio::join!(rc, rd);
        assert!(dc.is_ok() && dd.is_ok());
        let runs: Vec<Trigger> = h.fake.runs().into_iter().map(|r| r.1).collect();
        assert_eq!(runs, [Trigger::Startup, Trigger::Table(1), Trigger::Table(2), Trigger::Manual]);
        // A full request beside a partial one is the full one.
        assert_eq!(Trigger::Table(0).merged(Trigger::Interval), Trigger::Interval);
    }

    #[tokio::test(start_paused = true)]
    async fn with_watch_off_neither_arriving_files_nor_local_changes_start_a_run() {
        let mut s = schedule(60);
        s.watch = false;
        let h = start(Fake::default(), s, Some(Duration::ZERO));
        sleep(20_000).await;
        h.hints.send(hint("patients/ab/x.xml")).unwrap();
        h.fake.local.store(true, Ordering::SeqCst);
        sleep(10 * 60 * 1000).await;
        let runs = h.fake.runs();
        assert_eq!(runs.len(), 1, "only the startup run: {runs:?}");
        // The interval still runs.
        sleep(51 * 60 * 1000).await;
        assert_eq!(h.fake.runs().last().unwrap().1, Trigger::Interval);
    }

    #[tokio::test(start_paused = true)]
    async fn local_changes_are_exported_within_two_seconds() {
        let h = start(Fake::default(), schedule(60), Some(Duration::ZERO));
        sleep(20_000).await;
        h.fake.local.store(true, Ordering::SeqCst);
        sleep(5_000).await;
        let runs = h.fake.runs();
        let local: Vec<_> = runs.iter().filter(|r| r.1 == Trigger::LocalChange).collect();
        assert_eq!(local.len(), 1, "{runs:?}");
        assert!(local[0].0 <= Duration::from_secs(22), "{runs:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_run_alerts_once_per_incident() {
        let fake = Fake::default();
        // Three failures, one success, two failures.
        const F: Outcome = Outcome::Failed;
        *fake.outcomes.lock().unwrap() = VecDeque::from([F, F, F, Outcome::Ok, F, F]);
        let h = start(fake, schedule(1), Some(Duration::ZERO));
        sleep(6 * 60 * 1000 + 30_000).await;
        let alerts = h.fake.alerts.lock().unwrap().clone();
        let failed: Vec<_> = alerts.iter().filter(|(_, a)| a.kind == AlertKind::Failed).collect();
        assert_eq!(failed.len(), 2, "{alerts:?}");
        assert!(failed[0].1.reason.contains("not reachable"));
        // Failed runs do not loop on pending local changes.
        assert_eq!(h.fake.runs().len(), 7);
    }

    #[tokio::test(start_paused = true)]
    async fn no_success_for_longer_than_alert_after_alerts_once_until_a_success() {
        let fake = Fake::default();
        // Every run is partial: never a complete success.
        *fake.outcomes.lock().unwrap() = std::iter::repeat_n(Outcome::Partial, 200).collect();
        // The last success was 50 minutes ago; alert_after is 1 hour.
        let h = start(fake, schedule(5), Some(Duration::from_secs(50 * 60)));
        sleep(9 * 60 * 1000).await;
        assert!(h.fake.alerts.lock().unwrap().is_empty(), "not yet an hour");
        sleep(2 * 60 * 1000).await;
        let alerts = h.fake.alerts.lock().unwrap().clone();
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        assert_eq!(alerts[0].1.kind, AlertKind::Stale);
        assert_eq!(alerts[0].0, Duration::from_secs(10 * 60));
        // Hours more of the same incident: still one alert.
        sleep(5 * 3600 * 1000).await;
        assert_eq!(h.fake.alerts.lock().unwrap().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_absence_gets_the_first_run_before_any_alert() {
        // Last success three days ago (the clinic was closed): the startup
        // run succeeds, so there is no alert.
        let h = start(Fake::default(), schedule(5), Some(Duration::from_secs(3 * 24 * 3600)));
        sleep(3 * 60 * 1000).await;
        assert!(h.fake.alerts.lock().unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_finishes_the_run_in_progress_and_starts_no_other() {
        let fake = Fake::default();
        *fake.run_takes.lock().unwrap() = Duration::from_secs(4);
        let h = start(fake, schedule(5), Some(Duration::ZERO));
        sleep(1_000).await;
        h.control.send(Control::SyncNow { reply: None, from_page: false }).await.unwrap();
        h.control.send(Control::Shutdown).await.unwrap();
        let stopped_at = {
            h.task.await.unwrap();
            h.fake.since()
        };
        assert_eq!(stopped_at, Duration::from_secs(4), "stops when the startup run is done");
        assert_eq!(h.fake.runs().len(), 1, "the queued Sync Now is dropped");
        assert_eq!(h.fake.concurrent.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn echo_covers_the_folders_a_write_created() {
        let set = echo_set(&["patients/ab/x.xml".to_owned(), "patients/ab/y.xml".to_owned()]);
        for p in ["patients", "patients/ab", "patients/ab/x.xml", "patients/ab/y.xml"] {
            assert!(set.contains(p), "{p}");
        }
        assert!(!set.contains("patients/cd"));
    }
}
