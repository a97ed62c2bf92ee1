//! The command line: parses arguments (clap), runs one command, prints a
//! human summary or one JSON document (`--json`), and maps the result to
//! the exit code: 0 ok, 1 error, 2 usage, 3 the run finished `partial`.

/// `println!` for the CLI's output: a reader that went away (`clinicsync
/// log | head`) ends the program quietly instead of with a panic.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::cli::print_line(format_args!($($arg)*))
    };
}

mod demo;
mod history;
mod operations;
use operations::{BaselineAction, FamilyAction};
mod progress;
mod status;
use status::print_status;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use serde_json::json;

use crate::db::{Db, Keep};
use crate::engine::{self, InitOptions, Outcome, Progress, RunReport, SyncOptions};
use crate::model::short_id;
use crate::model::shown;
use crate::xmlstore::format_time;

/// Exit code of a run that finished `partial`.
pub const EXIT_PARTIAL: u8 = 3;

#[derive(Parser, Debug)]
#[command(
    name = "clinicsync",
    version,
    about = "Keeps clinic SQLite databases in step through a cloud-synced folder"
)]
struct Cli {
    /// The clinic database.
    #[arg(long, global = true, default_value = "clinic.db", value_name = "PATH")]
    db: PathBuf,
    /// Print one JSON document on stdout instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Set up the database and the sync folder (create a family, or join one).
    Init {
        /// The folder the cloud client carries.
        #[arg(long, value_name = "PATH")]
        folder: PathBuf,
        /// A name for this site, shown to the other sites.
        #[arg(long, value_name = "NAME")]
        site_name: Option<String>,
        /// A TOML file mapping an existing app's tables (default: the
        /// reference clinic schema).
        #[arg(long, value_name = "FILE.toml")]
        mapping: Option<PathBuf>,
        /// The folder the app keeps its documents in (referral letters,
        /// scans): their files travel with the documents table's rows.
        #[arg(long, value_name = "PATH")]
        documents_folder: Option<PathBuf>,
    },
    /// Sync Now: one complete run.
    Sync {
        /// Also scan every patient file (finds conflict copies and files a
        /// cloud client overwrote; slower on a large folder).
        #[arg(long)]
        full_scan: bool,
        /// Apply the incoming deletions that the mass-delete guard holds
        /// back (`status` says how many and from which site).
        #[arg(long)]
        confirm_deletes: bool,
        /// Refuse the deletions that the mass-delete guard holds back: the
        /// rows stay here and go back to every site as new rows.
        #[arg(long, conflicts_with = "confirm_deletes")]
        keep_deleted: bool,
        /// Only the documents: copy new and changed document files into
        /// the folder and place the ones that arrived (other sites' row
        /// changes wait for the next full sync).
        #[arg(long, conflicts_with_all = ["full_scan", "confirm_deletes", "keep_deleted"])]
        docs_only: bool,
        /// Only this table's changes, both ways (say, `appointments`): the
        /// other tables' changes wait, here and from the other sites, for
        /// the next full sync, which carries them.
        #[arg(long, value_name = "TABLE", conflicts_with_all = ["full_scan", "confirm_deletes", "keep_deleted", "docs_only"])]
        only: Option<String>,
    },
    /// Every change this site knows of one patient, field by field: who
    /// made it and when (PATIENT: an id, or part of a name; several
    /// matches are listed to choose from).
    History { patient: String },
    /// Documents waiting for their file, documents whose copy failed its
    /// check, and the files in the documents folder's trash.
    Documents,
    /// This site leaves the family: what the app changed is exported
    /// first, a last site file says it left (the others stop waiting for
    /// it), then clinicsync's triggers and tables are removed. The app's
    /// data is untouched; `init` can join again later.
    Detach {
        /// Say what would happen; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Make the folder whole again from this database.
    Baseline {
        #[command(subcommand)]
        action: BaselineAction,
    },
    /// The family's data in the folder.
    Family {
        #[command(subcommand)]
        action: FamilyAction,
    },
    /// Read every file of the folder and check it: the manifest, site
    /// files, each site's change-log, patient files against this database,
    /// document bodies. Changes nothing; exits 1 when it finds a problem.
    Verify,
    /// The service while the app runs: syncs every few minutes, within
    /// seconds of files arriving or the app changing rows, and serves the
    /// local web page (Status, Sync Now, Latest Logs, Conflicts, Settings).
    Run {
        /// Serve the page on this port instead of the `web_port` setting
        /// (0: any free port; the printed link says which).
        #[arg(long, value_name = "PORT")]
        web_port: Option<u16>,
    },
    /// Start `clinicsync run` for this database when you log in (a systemd
    /// user unit on Linux, a launchd agent on macOS, a Task Scheduler task
    /// on Windows), stop doing so, or see whether it is set up and running.
    Service {
        #[command(subcommand)]
        action: ServiceAction,
    },
    /// Online/offline, last sync, pending changes, the other sites.
    Status,
    /// Latest Logs: the newest runs with what they did.
    Log {
        /// How many runs to show.
        #[arg(long, default_value_t = 10)]
        last: u32,
    },
    /// The open conflict records: values that lost a concurrent edit; or
    /// `conflicts resolve ID --keep winner|loser` to settle one.
    Conflicts {
        /// Include resolved records.
        #[arg(long)]
        all: bool,
        #[command(subcommand)]
        action: Option<ConflictAction>,
    },
    /// Deleted rows still carried as tombstones, and the step each is at on
    /// its way to being purged (waiting for the retention, waiting for
    /// named sites, purgeable), then the rows already purged.
    Tombstones,
    /// Show the settings, or change them: `settings use_logs=off log_retention=14days`.
    Settings {
        #[arg(value_name = "KEY=VALUE")]
        assignments: Vec<String>,
    },
    /// Give this database a new site id (after copying it to another
    /// computer, or restoring it from an older backup).
    Reassign,
    /// Build a demo family of two sites in DIR (default ./demo) and sync it.
    Demo {
        #[arg(value_name = "DIR", default_value = "demo")]
        dir: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum ConflictAction {
    /// Settle a conflict: keep the value shown now (winner) or the one that
    /// lost (loser). The choice is a new edit; the next sync carries it to
    /// every site, where the record closes too.
    Resolve {
        /// The record's number, as `clinicsync conflicts` shows it.
        id: i64,
        #[arg(long, value_enum)]
        keep: KeepArg,
    },
}

#[derive(Subcommand, Debug)]
enum ServiceAction {
    /// Register the service to start at login, and start it now.
    Install {
        /// Print the definition and the commands without changing anything.
        #[arg(long)]
        dry_run: bool,
    },
    /// Stop the service and no longer start it at login.
    Uninstall,
    /// Whether the service is registered and whether it runs now (exits 0
    /// either way).
    Status,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum KeepArg {
    Winner,
    Loser,
}

/// Runs the command line; returns the process exit code.
/// Writes one line to stdout (see `say!`).
pub(crate) fn print_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("clinicsync: cannot write its output: {e}");
    }
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = e.exit_code();
            let _ = e.print();
            return ExitCode::from(code.clamp(0, 255) as u8);
        }
    };
    init_tracing();
    let json = cli.json;
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            let message = format!("{e:#}");
            if json {
                say!("{}", json!({ "ok": false, "error": message }));
            }
            eprintln!("clinicsync: {}", shown(&message));
            ExitCode::from(1)
        }
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr);
    // Directives are parsed only when given: the parser compiles a regex
    // first, a millisecond of every run's start.
    let _ = match std::env::var_os("CLINICSYNC_LOG") {
        Some(_) => builder
            .with_env_filter(
                EnvFilter::try_from_env("CLINICSYNC_LOG").unwrap_or_else(|_| EnvFilter::new("warn")),
            )
            .try_init(),
        None => builder.with_max_level(tracing::Level::WARN).try_init(),
    };
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    say!("{}", serde_json::to_string_pretty(value).context("cannot format the JSON output")?);
    Ok(())
}

fn exit_for(outcome: Outcome) -> ExitCode {
    match outcome {
        Outcome::Ok => ExitCode::SUCCESS,
        Outcome::Partial => ExitCode::from(EXIT_PARTIAL),
        Outcome::Failed => ExitCode::from(1),
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let db = cli.db;
    match cli.command {
        Command::Init { folder, site_name, mapping, documents_folder } => {
            if site_name.as_deref().is_some_and(|n| n.chars().any(char::is_control)) {
                anyhow::bail!(
                    "--site-name holds a control character (a line break, tab or escape); a site's name is one line of plain text"
                );
            }
            let options = InitOptions {
                db: db.clone(),
                folder,
                site_name,
                mapping,
                documents_folder,
                progress: Progress::new(),
            };
            let report = progress::with_bar(&options.progress.clone(), || engine::init(&options))?;
            if cli.json {
                print_json(&report)?;
            } else {
                let verb = if report.joined { "Joined" } else { "Created" };
                say!(
                    "{verb} family {} in {}; this site is {:?} ({}).",
                    short_id(&report.family),
                    shown(&report.folder),
                    report.site_name,
                    short_id(&report.site)
                );
                print_run(&report.first_run);
            }
            Ok(exit_for(report.first_run.outcome))
        }
        Command::Sync { full_scan, confirm_deletes, keep_deleted, docs_only, only } => {
            let trigger = match &only {
                Some(table) => engine::table_trigger(table),
                None if docs_only => "documents".into(),
                None => "manual".into(),
            };
            let options = SyncOptions {
                trigger,
                full_scan,
                confirm_deletes,
                keep_deleted,
                docs_only,
                only,
                wait_for_lock: Some(|| {
                    eprintln!(
                        "clinicsync: another sync of this database is running; waiting for it to finish"
                    )
                }),
                ..SyncOptions::default()
            };
            let report = progress::with_bar(&options.progress.clone(), || engine::sync(&db, &options))?;
            if cli.json {
                print_json(&report)?;
            } else {
                print_run(&report);
            }
            if report.outcome == Outcome::Failed && !cli.json {
                eprintln!("clinicsync: {}", shown(report.error.as_deref().unwrap_or("the run failed")));
            }
            Ok(exit_for(report.outcome))
        }
        Command::Run { web_port } => {
            crate::service::run(&crate::service::ServiceOptions { db, web_port })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Service { action } => {
            run_service_action(&db, action, cli.json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Detach { dry_run } => operations::detach(&db, dry_run, cli.json),
        Command::Verify => operations::verify(&db, cli.json),
        Command::Baseline { action: BaselineAction::Download { table, dry_run } } => {
            operations::baseline_download(&db, table.as_deref(), dry_run, cli.json)
        }
        Command::Baseline { action: BaselineAction::Upload { dry_run } } => {
            operations::baseline_upload(&db, dry_run, cli.json)
        }
        Command::Family { action: FamilyAction::Delete { confirm, dry_run } } => {
            operations::family_delete(&db, confirm, dry_run, cli.json)
        }
        Command::Documents => operations::documents(&db, cli.json),
        Command::History { patient } => history::print(&db, &patient, cli.json),
        Command::Status => {
            let report = engine::status(&db)?;
            if cli.json {
                print_json(&report)?;
            } else {
                print_status(&report);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Log { last } => {
            let store = Db::open(&db)?;
            let runs = store.recent_runs(last)?;
            let running = engine::sync_running(&db);
            let mut out = Vec::new();
            for run in runs {
                let events = store.run_events(run.id)?;
                out.push((run, events));
            }
            if cli.json {
                let doc: Vec<_> =
                    out.iter().map(|(run, events)| json!({ "run": run, "events": events })).collect();
                print_json(&doc)?;
            } else if out.is_empty() {
                say!("No runs yet.");
            } else {
                for (i, (run, events)) in out.iter().enumerate() {
                    let outcome = engine::outcome_words(run.outcome.as_deref(), i == 0 && running);
                    say!(
                        "#{} {} {} {}",
                        run.id,
                        format_time(run.started_ms),
                        shown(&run.trigger),
                        shown(outcome)
                    );
                    if let Some(summary) = &run.summary {
                        say!("    {}", shown(&engine::summary_sentence(summary)));
                        say!("    ({})", engine::summary_text(summary));
                    }
                    for e in events {
                        let path = e.path.as_deref().map(|p| format!("{}: ", shown(p))).unwrap_or_default();
                        say!("    [{}] {path}{}", shown(&e.level), shown(&e.message));
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Conflicts { action: Some(ConflictAction::Resolve { id, keep }), .. } => {
            let keep = match keep {
                KeepArg::Winner => Keep::Winner,
                KeepArg::Loser => Keep::Loser,
            };
            let r = engine::resolve_conflict(&db, id, keep)?;
            if cli.json {
                print_json(&json!({
                    "id": r.id,
                    "table": r.table,
                    "pk": r.pk,
                    "column": r.column,
                    "value": r.value.display_short(),
                }))?;
            } else {
                say!(
                    "Conflict #{} settled: {}/{} {} is now {:?}. The next sync carries this to every site.",
                    r.id,
                    shown(&r.table),
                    shown(&r.pk),
                    shown(&r.column),
                    r.value.display_short()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Conflicts { all, action: None } => {
            if cli.json {
                let records = Db::open(&db)?.conflicts(!all)?;
                let doc: Vec<_> = records.iter().map(engine::conflict_json).collect();
                print_json(&doc)?;
                return Ok(ExitCode::SUCCESS);
            }
            let views = engine::conflict_views(&db, all)?;
            if views.is_empty() {
                say!("No open conflicts.");
            } else {
                for v in &views {
                    let c = &v.record;
                    let at = |t: &Option<String>| {
                        t.as_deref().map(|t| format!(" {}", shown(t))).unwrap_or_default()
                    };
                    let outcome = if c.kind == "deleted" {
                        format!(
                            "the row was deleted at {}{} by someone who had not seen this edit",
                            shown(&v.kept_by),
                            at(&v.kept_at)
                        )
                    } else {
                        format!(
                            "shown {:?} (typed at {}{})",
                            c.winner_value.display_short(),
                            shown(&v.kept_by),
                            at(&v.kept_at)
                        )
                    };
                    say!(
                        "#{} {}, {} {}: {outcome}; the other {:?} (typed at {}{}) [{}]",
                        c.id,
                        shown(&v.patient),
                        shown(&c.table),
                        shown(&c.column),
                        c.value.display_short(),
                        shown(&v.lost_by),
                        at(&v.lost_at),
                        shown(&c.status),
                    );
                }
                if !all {
                    say!(
                        "Settle one with `clinicsync conflicts resolve ID --keep winner|loser` (for an edit that lost to a delete: winner keeps the delete, loser brings the row back with the edit)."
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Tombstones => {
            let report = engine::tombstones(&db)?;
            if cli.json {
                print_json(&report)?;
            } else if report.tombstones.is_empty() && report.purged.is_empty() {
                say!("No tombstones: nothing deleted is waiting to be purged.");
            } else {
                for t in &report.tombstones {
                    let when = match (&t.deleted_at, &t.deleted_by) {
                        (Some(at), Some(by)) => format!("deleted {at} at site {by}"),
                        _ => "deleted (by a clinicsync that did not stamp deletes)".to_owned(),
                    };
                    let step = match t.step {
                        "waiting-retention" => {
                            format!(
                                "kept until {}",
                                t.purgeable_after.as_deref().unwrap_or("the retention has passed")
                            )
                        }
                        "waiting-sites" => format!("waiting for {} to have it", t.waiting_for.join(", ")),
                        "purgeable" => "purgeable: a sync within 5 minutes purges it".to_owned(),
                        "waiting-confirmation" => {
                            "held by the mass-delete guard: `clinicsync sync --confirm-deletes` applies it, `--keep-deleted` refuses it".to_owned()
                        }
                        "waiting-review" => {
                            "kept: an edit made without seeing the delete waits for review (`clinicsync conflicts`)".to_owned()
                        }
                        _ => "kept".to_owned(),
                    };
                    say!("{}/{}: {}; {}", shown(&t.table), shown(&t.pk), shown(&when), shown(&step));
                }
                for p in &report.purged {
                    say!("{}/{}: purged {}", shown(&p.table), shown(&p.pk), format_time(p.purged_ms));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Settings { assignments } => {
            if !assignments.is_empty() {
                engine::settings_set(&db, &assignments)?;
            }
            let list = engine::settings_list(&db)?;
            if cli.json {
                print_json(&list)?;
            } else {
                for s in &list {
                    let default = if s.value == s.default {
                        String::new()
                    } else if s.default.is_empty() {
                        " (default: empty)".to_owned()
                    } else {
                        format!(" (default {})", s.default)
                    };
                    say!("{:<20} {}{}\n{:<20} {}", s.key, shown(&s.value), shown(&default), "", s.help);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Reassign => {
            let report = engine::reassign(&db)?;
            if cli.json {
                print_json(&report)?;
            } else {
                say!(
                    "This database now syncs as site {} (was {}). Run `clinicsync sync` to continue.",
                    short_id(&report.new_site),
                    short_id(&report.old_site)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { dir } => demo::run(&dir, cli.json),
    }
}

fn print_run(report: &RunReport) {
    say!("{}", shown(&report.summary_line()));
    for e in report.events.iter().filter(|e| e.level != "info") {
        let path = e.path.as_deref().map(|p| format!("{}: ", shown(p))).unwrap_or_default();
        say!("  {path}{}", shown(&e.message));
    }
}

fn run_service_action(db: &std::path::Path, action: ServiceAction, json: bool) -> anyhow::Result<()> {
    use crate::service::login;
    // "a systemd user unit named X (its file)"
    let entry = |kind: &str, name: &str, file: &Option<PathBuf>| {
        let file =
            file.as_ref().map(|f| format!(" ({})", shown(&f.display().to_string()))).unwrap_or_default();
        format!("{kind} named {}{file}", shown(name))
    };
    let database = shown(&db.display().to_string()).into_owned();
    match action {
        ServiceAction::Install { dry_run } => {
            let report = login::install(db, dry_run)?;
            if json {
                return print_json(&report);
            }
            if dry_run {
                say!("Would install {}:", entry(report.kind, &report.name, &report.file));
                say!("");
                say!("{}", shown_block(&report.definition));
                say!("");
                say!("Then run:");
                for c in &report.commands {
                    say!("    {}", shown(c));
                }
            } else {
                let verb = if report.was_installed { "Replaced" } else { "Installed" };
                let now = if report.already_running {
                    " A clinicsync run started by hand holds this database now: the one started at login waits, tries again every minute, and takes over once that one stops."
                } else {
                    " It runs now."
                };
                say!(
                    "{verb} {}: clinicsync run starts for {} when you log in.{now}",
                    entry(report.kind, &report.name, &report.file),
                    database
                );
            }
        }
        ServiceAction::Uninstall => {
            let report = login::uninstall(db)?;
            if json {
                return print_json(&report);
            }
            if report.was_installed {
                say!(
                    "Removed {}: clinicsync no longer starts at login for {}.",
                    entry(report.kind, &report.name, &report.file),
                    database
                );
            } else {
                say!(
                    "Nothing to remove: no {} named {} is installed.",
                    report.kind.trim_start_matches("a "),
                    shown(&report.name)
                );
            }
        }
        ServiceAction::Status => {
            let status = login::status(db)?;
            if json {
                return print_json(&status);
            }
            if status.installed {
                say!("Starts at login: yes, as {}.", entry(status.kind, &status.name, &status.file));
            } else {
                say!("Starts at login: no (`clinicsync service install` sets it up).");
            }
            say!("Running now: {}.", if status.running { "yes" } else { "no" });
        }
    }
    Ok(())
}

/// A multi-line text with each line made safe to print.
fn shown_block(text: &str) -> String {
    text.lines().map(shown).collect::<Vec<_>>().join("\n")
}
