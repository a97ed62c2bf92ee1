//! `clinicsync service install | uninstall | status`: registers `clinicsync
//! run` for one database with the system's service manager so it starts
//! when the user logs in, removes it, and says whether it is registered and
//! running. The definitions are in `platform::login`; this puts them in
//! place, runs the manager's commands, and undoes a half-done install.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, anyhow, bail};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::db::Db;
use crate::platform::login::{self, Account, Entry, Manager, Step};

/// What `install` and `uninstall` did, or `--dry-run` would do.
#[derive(Debug, Serialize)]
pub struct LoginReport {
    /// "a systemd user unit", ...
    pub kind: &'static str,
    pub name: String,
    /// Where the definition is kept (none for Task Scheduler, which keeps
    /// it itself).
    pub file: Option<PathBuf>,
    /// The definition.
    pub definition: String,
    /// The commands run (or that would run), as typed in a terminal.
    pub commands: Vec<String>,
    /// `install`: it was registered before and was replaced; `uninstall`:
    /// it was registered.
    pub was_installed: bool,
    /// `install`: a `clinicsync run` for this database was already running
    /// (started by hand): the one the manager starts retries every minute
    /// and takes over once that one stops.
    pub already_running: bool,
}

/// What `status` found.
#[derive(Debug, Serialize)]
pub struct LoginStatus {
    pub kind: &'static str,
    pub name: String,
    pub file: Option<PathBuf>,
    pub installed: bool,
    /// A `clinicsync run` holds this database's service lock now (started
    /// at login or by hand).
    pub running: bool,
}

/// The entry for `db` on this system.
fn entry_for(db: &Path) -> anyhow::Result<Entry> {
    let manager =
        Manager::here().ok_or_else(|| anyhow!("this system has no service manager clinicsync knows"))?;
    let db =
        std::path::absolute(db).with_context(|| format!("cannot find the full path of {}", db.display()))?;
    let exe = std::env::current_exe().context("cannot find where the clinicsync program is")?;
    // The same database reached by another path (a link) is the same entry.
    let key_path = std::fs::canonicalize(&db).unwrap_or_else(|_| db.clone());
    let key: String = Sha256::digest(key_path.to_string_lossy().as_bytes())[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let description = format!("clinicsync for {}", db.display());
    login::entry(manager, &Account::current(), &exe, &db, &key, &description, &std::env::temp_dir())
        .map_err(|e| anyhow!("cannot make the service definition: {e}"))
}

/// How a step is typed in a terminal (for the report).
fn typed(step: &Step) -> String {
    step.args
        .iter()
        .map(|a| {
            let a = a.to_string_lossy();
            if a.contains(' ') { format!("\"{a}\"") } else { a.into_owned() }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs a step's command and collects what it printed.
fn output(step: &Step) -> std::io::Result<std::process::Output> {
    let Some((program, args)) = step.args.split_first() else {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "an empty command"));
    };
    Command::new(program).args(args).output()
}

fn run_step(step: &Step) -> anyhow::Result<()> {
    let output = match output(step) {
        Ok(output) => output,
        // Stopping what cannot be reached: there is nothing to stop.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && step.may_fail => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!(
                "{} was not found: this system's service manager cannot be reached",
                step.args[0].to_string_lossy()
            )
        }
        Err(e) => bail!("cannot run `{}`: {e}", typed(step)),
    };
    if output.status.success() || step.may_fail {
        return Ok(());
    }
    let (stderr, stdout) = (String::from_utf8_lossy(&output.stderr), String::from_utf8_lossy(&output.stdout));
    let said =
        stderr.lines().chain(stdout.lines()).map(str::trim).find(|l| !l.is_empty()).unwrap_or("no message");
    bail!("`{}` failed ({}): {}", typed(step), output.status, crate::model::shown(said))
}

fn installed(entry: &Entry) -> anyhow::Result<bool> {
    if let Some(file) = &entry.file {
        return Ok(file.exists());
    }
    let Some(query) = &entry.query else { return Ok(false) };
    // A task's definition comes back when it exists (a query that prints
    // nothing has found nothing, whatever its exit status).
    let found = output(query).map_err(|e| anyhow!("cannot run `{}`: {e}", typed(query)))?;
    Ok(found.status.success() && String::from_utf8_lossy(&found.stdout).contains("<Task"))
}

fn report(entry: &Entry, steps: &[Step], was_installed: bool) -> LoginReport {
    LoginReport {
        already_running: false,
        kind: entry.manager.entry_kind(),
        name: entry.name.clone(),
        file: entry.file.clone(),
        definition: entry.text.clone(),
        commands: steps.iter().map(typed).collect(),
        was_installed,
    }
}

/// Registers `clinicsync run` for `db` to start at login, and starts it
/// now. An entry already there is replaced. If the manager refuses, the
/// definition written is removed again and the error says what it said.
pub fn install(db: &Path, dry_run: bool) -> anyhow::Result<LoginReport> {
    // A database the service cannot open would fail at every login.
    Db::open(db)?.site_config().with_context(|| format!("{} is not set up for clinicsync", db.display()))?;
    let entry = entry_for(db)?;
    let was_installed = installed(&entry)?;
    let mut steps = Vec::new();
    if was_installed {
        steps.extend(entry.unregister.iter().cloned());
    }
    steps.extend(entry.register.iter().cloned());
    let mut out = report(&entry, &steps, was_installed);
    out.already_running = super::is_running(db)?;
    if dry_run {
        return Ok(out);
    }
    if was_installed {
        for step in &entry.unregister {
            run_step(step)?;
        }
    }
    let written =
        entry.file.as_ref().or(entry.handover.as_ref()).ok_or_else(|| anyhow!("nowhere to write"))?;
    if let Some(dir) = written.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(written, entry.bytes()).with_context(|| format!("cannot write {}", written.display()))?;
    let registered = entry.register.iter().try_for_each(run_step);
    if let Some(handover) = &entry.handover {
        let _ = std::fs::remove_file(handover);
    }
    if let Err(e) = registered {
        // Nothing half-installed: undo what may have been registered.
        for step in &entry.unregister {
            let _ = run_step(&Step { may_fail: true, ..step.clone() });
        }
        if let Some(file) = &entry.file {
            let _ = std::fs::remove_file(file);
        }
        return Err(e.context(format!("{} was not installed", entry.manager.entry_kind())));
    }
    Ok(out)
}

/// Stops and removes the entry for `db`; says so when there is none.
pub fn uninstall(db: &Path) -> anyhow::Result<LoginReport> {
    let entry = entry_for(db)?;
    let mut was_installed = installed(&entry)?;
    let mut steps = if was_installed { entry.unregister.clone() } else { Vec::new() };
    for step in &steps {
        run_step(step)?;
    }
    if !was_installed
        && entry.file.is_none()
        && let Some((remove, before)) = entry.unregister.split_last()
    {
        // A manager that keeps the entry itself may hold one its query
        // cannot show (Wine's Task Scheduler has no query): unregistering
        // is tried anyway, and a success means there was one.
        for step in before {
            run_step(&Step { may_fail: true, ..step.clone() })?;
        }
        if output(remove).is_ok_and(|o| o.status.success()) {
            was_installed = true;
            steps = entry.unregister.clone();
        }
    }
    if let Some(file) = entry.file.as_ref().filter(|f| f.exists()) {
        std::fs::remove_file(file).with_context(|| format!("cannot remove {}", file.display()))?;
    }
    Ok(report(&entry, &steps, was_installed))
}

/// Whether an entry for `db` is registered, and whether a service for it
/// runs now.
pub fn status(db: &Path) -> anyhow::Result<LoginStatus> {
    let entry = entry_for(db)?;
    Ok(LoginStatus {
        kind: entry.manager.entry_kind(),
        installed: installed(&entry)?,
        running: super::is_running(db)?,
        name: entry.name,
        file: entry.file,
    })
}
