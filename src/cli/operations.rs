//! The commands for operating a site's sync: `detach`, `verify` and
//! `documents`, with their human output.

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;

use super::print_json;
use crate::engine;
use crate::model::{short_id, shown};
use crate::xmlstore::format_time;

#[derive(Subcommand, Debug)]
pub(super) enum BaselineAction {
    /// Make this database's tables (or one) equal to what the family holds:
    /// what the app changed is sent first, the database is copied to
    /// `<db>.before-baseline-<time>`, then rows are put back, corrected or
    /// removed. Says how many per table.
    Download {
        /// Only this table (say `appointments`).
        #[arg(long, value_name = "TABLE")]
        table: Option<String>,
        /// Say what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Publish every row this site holds again and write every patient file
    /// again from it (joined with what the folder holds: newer values of
    /// other sites stay). Replaces patient files nothing can read, after
    /// copying each to `<db>.replaced-<time>/`.
    Upload {
        /// Say which files would be replaced; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand, Debug)]
pub(super) enum FamilyAction {
    /// This site leaves the family (as `detach`), then every file of the
    /// family is removed from the folder; `clinicsync.xml` stays as a note
    /// of who deleted it and when. The other sites stop syncing, keep all
    /// their data and delete nothing.
    Delete {
        /// The family id as `clinicsync status` shows it (asked for on a
        /// terminal when not given).
        #[arg(long, value_name = "FAMILY")]
        confirm: Option<String>,
        /// Say what would be deleted; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// `clinicsync detach [--dry-run]`.
pub(super) fn detach(db: &Path, dry_run: bool, json: bool) -> anyhow::Result<ExitCode> {
    let report = engine::detach(db, dry_run)?;
    if json {
        return print_json(&report).map(|()| ExitCode::SUCCESS);
    }
    let site = format!("{} ({})", shown(&report.site_name), short_id(&report.site));
    if dry_run {
        say!(
            "Would export the {} local changes not yet in the folder, publish a last site file saying site {site} left family {}, and remove clinicsync's {} triggers and {} tables from {}. The app's tables stay as they are.",
            report.pending_changes,
            short_id(&report.family),
            report.triggers,
            report.tables,
            shown(&db.display().to_string())
        );
    } else {
        say!(
            "Site {site} left family {}: its changes are in the folder, the other sites no longer wait for it, and clinicsync's {} triggers and {} tables are gone from {}. The app's tables are as they were; `clinicsync init` joins again.",
            short_id(&report.family),
            report.triggers,
            report.tables,
            shown(&db.display().to_string())
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `clinicsync family delete [--confirm FAMILY] [--dry-run]`: without
/// `--confirm`, the family id is asked for on a terminal.
pub(super) fn family_delete(
    db: &Path,
    confirm: Option<String>,
    dry_run: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    use std::io::{BufRead, IsTerminal, Write};
    let confirm = match confirm {
        Some(c) => c,
        None if dry_run => String::new(),
        None if std::io::stdin().is_terminal() => {
            let status = engine::status(db)?;
            eprint!(
                "This deletes every file of family {} from {} for every site (each keeps its own data). Type the family id to go ahead: ",
                short_id(&status.family),
                shown(&status.folder)
            );
            std::io::stderr().flush()?;
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            line.trim().to_owned()
        }
        None => anyhow::bail!(
            "family delete needs the family id as `clinicsync status` shows it: pass it with --confirm FAMILY"
        ),
    };
    let report = engine::family_delete(db, &confirm, dry_run)?;
    if json {
        return print_json(&report).map(|()| ExitCode::SUCCESS);
    }
    let family = short_id(&report.family);
    if dry_run {
        say!(
            "Would detach this site, then delete {} files of family {family} from the folder and leave clinicsync.xml as a note of who deleted it. {} other files there are not the family's and would stay.",
            report.files,
            report.left_alone.len()
        );
    } else {
        say!(
            "Deleted {} files of family {family} from the folder; clinicsync.xml now says this site deleted it. This database keeps its data and no longer syncs.",
            report.files
        );
        for n in &report.not_removed {
            say!("Not removed: {}", shown(n));
        }
    }
    for f in &report.left_alone {
        say!("Left alone (not the family's): {}", shown(f));
    }
    Ok(ExitCode::SUCCESS)
}

/// `clinicsync baseline download [--table T] [--dry-run]`.
pub(super) fn baseline_download(
    db: &Path,
    table: Option<&str>,
    dry_run: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let report = engine::baseline_download(db, table, dry_run)?;
    if json {
        return print_json(&report).map(|()| ExitCode::SUCCESS);
    }
    let verb = if dry_run { "Would put back" } else { "Put back" };
    for t in &report.tables {
        say!("{}: {verb} {} rows, correct {} and remove {}.", shown(&t.table), t.added, t.changed, t.removed);
    }
    if let Some(copy) = &report.backup {
        say!("The database as it was is copied to {}.", shown(copy));
    }
    Ok(ExitCode::SUCCESS)
}

/// `clinicsync baseline upload [--dry-run]`.
pub(super) fn baseline_upload(db: &Path, dry_run: bool, json: bool) -> anyhow::Result<ExitCode> {
    let report = engine::baseline_upload(db, dry_run)?;
    if json {
        return print_json(&report).map(|()| ExitCode::SUCCESS);
    }
    if dry_run {
        say!(
            "Would publish every row this site holds again and write every patient file again; {} patient files nothing can read would be replaced (each copied first):",
            report.replaced.len()
        );
    } else {
        say!(
            "Published {} rows again in {} exports and wrote the patient files again; {} patient files nothing could read were replaced{}.",
            report.rows,
            report.exports,
            report.replaced.len(),
            report
                .replaced_copies
                .as_deref()
                .map(|d| format!(" (copies in {})", shown(d)))
                .unwrap_or_default()
        );
    }
    for path in &report.replaced {
        say!("  {}", shown(path));
    }
    for path in &report.not_held {
        say!(
            "Left as it is (this site does not hold that patient; the site that does writes it again): {}",
            shown(path)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `clinicsync verify`: exits 1 when it finds a problem.
pub(super) fn verify(db: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let report = engine::verify(db)?;
    if json {
        print_json(&report)?;
    } else {
        let c = &report.checked;
        say!(
            "Checked {} site files, {} change-log segments, {} patient files and {} document bodies.",
            c.site_files,
            c.segments,
            c.patient_files,
            c.document_bodies
        );
        for p in &report.problems {
            say!("{}: {}. {}", shown(&p.path), shown(&p.problem), shown(&p.advice));
        }
        if report.problems.is_empty() {
            say!("No problems found.");
        }
    }
    if report.problems.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    if !json {
        eprintln!("clinicsync: the folder has {} problems (listed above)", report.problems.len());
    }
    Ok(ExitCode::from(1))
}

/// `clinicsync documents`.
pub(super) fn documents(db: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let report = engine::documents(db)?;
    if json {
        print_json(&report)?;
    } else {
        print_documents(&report);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_documents(r: &engine::DocumentsReport) {
    let Some(table) = &r.table else {
        say!("The mapping has no documents table: no files travel with the rows.");
        return;
    };
    match &r.folder {
        Some(folder) => say!("Documents folder: {} (rows of {})", shown(folder), shown(table)),
        None => say!(
            "Documents folder: not set, so files do not travel (`clinicsync settings documents_folder=PATH`)"
        ),
    }
    let line = |d: &engine::DocumentLine| {
        let path = d.path.as_deref().unwrap_or("(no path)");
        let patient = d.patient.as_deref().map(|p| format!(", patient {}", shown(p))).unwrap_or_default();
        let since = d.since_ms.map(|t| format!(" since {}", format_time(t))).unwrap_or_default();
        let said = d.said.as_deref().map(|s| format!(": {}", shown(s))).unwrap_or_default();
        format!("  {} ({} {}{patient}){since}{said}", shown(path), shown(table), shown(&d.pk))
    };
    for (title, list) in [
        ("Failed their integrity check (tried again every run)", &r.failed),
        ("Waiting for their file to arrive in the folder", &r.waiting),
        ("Changed elsewhere, placed by the next run", &r.due),
    ] {
        if !list.is_empty() {
            say!("{title}: {}", list.len());
            for d in list.iter() {
                say!("{}", line(d));
            }
        }
    }
    if !r.trash.is_empty() {
        say!("In the trash (deleted or replaced at another site; kept for log_retention): {}", r.trash.len());
        for t in &r.trash {
            say!("  {} (was {}, {})", shown(&t.trashed), shown(&t.original), format_time(t.at_ms));
        }
    }
    if r.failed.is_empty() && r.waiting.is_empty() && r.due.is_empty() {
        say!("Every document's file is in step.");
    }
}
