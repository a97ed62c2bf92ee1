//! `clinicsync status`: online or offline, last sync, pending changes,
//! conflicts, and every site of the family as its site file shows it.

use std::path::Path;

use serde::Serialize;

use super::EngineError;
use super::host::SystemClock;
use super::sites::{self, PeerFile, Sites};
use super::staging_dir;
use crate::db::{Db, HeldDeletes, KeptCopy};
use crate::folder::layout::{MANIFEST, SITES_DIR};
use crate::folder::{DiskFolder, IgnoreRules};
use crate::model::Clock;
use crate::model::short_id;
use crate::xmlstore::{decode_manifest, format_time};

/// A sync older than this earns a warning.
const STALE_AFTER_MS: u64 = 60 * 60 * 1000;
/// A site whose last sync is stamped this far in this computer's future
/// has a clock running ahead.
const CLOCK_AHEAD_WARN_MS: u64 = 2 * 60 * 1000;

/// The status of this site. Field names are part of the `--json` output.
#[derive(Clone, Debug, Serialize)]
pub struct StatusReport {
    /// The status in one line, and what needs a person.
    pub verdict: super::verdict::Verdict,
    pub site: String,
    pub site_name: String,
    pub family: String,
    pub folder: String,
    /// The folder is reachable and holds this family's manifest.
    pub online: bool,
    pub last_sync_ms: Option<u64>,
    pub last_sync: Option<String>,
    /// The last complete sync is over an hour old (or there was none).
    pub stale: bool,
    /// Outcome of the newest finished run: ok, partial or failed.
    pub last_outcome: Option<String>,
    /// When that run ended (its own time, not the last complete sync's).
    pub last_run_ms: Option<u64>,
    pub last_run: Option<String>,
    /// Local changes not yet written to the folder; non-zero turns the
    /// status red.
    pub pending_changes: u64,
    pub open_conflicts: u64,
    /// Conflict copies merged and left in the folder because
    /// `auto_delete_conflicts` is off.
    pub kept_copies: Vec<KeptCopy>,
    /// Patients other sites deleted whose deletion the mass-delete guard
    /// holds back here.
    pub held_deletes: HeldDeletes,
    /// The first of those patients by name (at most 50).
    pub held_patients: Vec<HeldPatientView>,
    /// The warning about them (the page shows them with its buttons instead).
    #[serde(skip)]
    pub held_warning: Option<String>,
    pub sites: Vec<SiteStatus>,
    /// Document files: where they are kept and how many are not in step.
    pub documents: DocumentsStatus,
    /// The last `clinicsync verify`: when, and how many problems it found.
    pub last_verify: Option<LastVerify>,
    /// Each replicated table, and whether changes to it wait.
    pub tables: Vec<TableStatus>,
    pub warnings: Vec<String>,
}

/// One replicated table: changes waiting to go out or to come in.
#[derive(Clone, Debug, Serialize)]
pub struct TableStatus {
    pub table: String,
    /// Rows the app changed here that are not exported yet.
    pub to_send: u64,
    /// Rows from other sites that the last `sync --only` of another table
    /// read and left for a full sync (null: no table run since the last
    /// full sync, so none were left).
    pub from_others: Option<u64>,
    /// Either is non-zero: `sync --only TABLE` (or a full sync) carries them.
    pub waiting: bool,
}

/// Every mapped table with what waits for it.
fn tables(db: &Db) -> Result<Vec<TableStatus>, EngineError> {
    let to_send = db.pending_by_table()?;
    let left: Option<std::collections::BTreeMap<String, u64>> =
        db.meta(super::run::TABLES_WAITING)?.and_then(|v| serde_json::from_str(&v).ok());
    Ok(db
        .mapping()
        .tables()
        .map(|table| {
            let to_send = to_send.get(table).copied().unwrap_or(0);
            let from_others = left.as_ref().map(|l| l.get(table).copied().unwrap_or(0));
            TableStatus {
                table: table.to_owned(),
                to_send,
                from_others,
                waiting: to_send > 0 || from_others.unwrap_or(0) > 0,
            }
        })
        .collect())
}

/// Held patients `status` lists.
const HELD_LISTED: usize = 50;

/// A patient whose deletion is held, for people.
#[derive(Clone, Debug, Serialize)]
pub struct HeldPatientView {
    pub id: String,
    pub name: Option<String>,
    /// Its other rows whose deletion waits with it.
    pub rows: u64,
    pub site: Option<String>,
    /// The deleting site's name, from its site file ("this site" for this
    /// one; null when its file is not read).
    pub site_name: Option<String>,
    pub deleted: Option<String>,
}

/// When the folder was last verified, and what was found.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct LastVerify {
    pub at_ms: u64,
    pub problems: u64,
}

/// Document files at this site.
#[derive(Clone, Debug, Serialize)]
pub struct DocumentsStatus {
    /// Whether the mapping has a documents table.
    pub mapped: bool,
    /// The local documents folder (null: not set, files do not travel).
    pub folder: Option<String>,
    /// Documents whose body has not arrived in the folder yet.
    pub waiting: u64,
    /// Documents whose copy failed its integrity check.
    pub failed: u64,
}

/// One site of the family.
#[derive(Clone, Debug, Serialize)]
pub struct SiteStatus {
    pub site: String,
    pub name: String,
    pub this_site: bool,
    pub app_version: String,
    pub head_seq: u64,
    /// The last of its segments this site has applied (for itself: null).
    pub applied_seq: Option<u64>,
    pub last_sync_ms: Option<u64>,
    pub last_sync: Option<String>,
    pub warning: Option<String>,
}

pub fn status(db_path: &Path) -> Result<StatusReport, EngineError> {
    let db = Db::open(db_path)?;
    let cfg = db.site_config()?;
    let now = SystemClock.now_ms();
    let folder = DiskFolder::new(cfg.folder.clone(), Some(staging_dir(db_path)));
    let mut warnings = Vec::new();
    let manifest = if cfg.folder.is_dir() {
        folder.read(MANIFEST, 1 << 20).ok().and_then(|b| decode_manifest(&b).ok())
    } else {
        None
    };
    let online = manifest.as_ref().is_some_and(|m| m.family == cfg.family);
    if let Some((site, at)) = manifest.and_then(|m| m.deleted) {
        warnings.push(format!(
            "the family's data was deleted from the folder by site {} at {} (`clinicsync family delete`): syncing has stopped; this database keeps all its data",
            site.short(),
            format_time(at)
        ));
    }
    if !online {
        warnings.push(format!(
            "the sync folder {} is not reachable or is not this family's folder",
            cfg.folder.display()
        ));
    }
    let last_sync_ms = db.last_ok_ms()?;
    let stale = last_sync_ms.is_none_or(|ms| now.saturating_sub(ms) > STALE_AFTER_MS);
    match last_sync_ms {
        None => warnings.push("this site has not completed a sync yet".into()),
        Some(ms) if now.saturating_sub(ms) > STALE_AFTER_MS => {
            warnings.push(format!("not synced for over an hour (last complete sync {})", format_time(ms)));
        }
        Some(_) => {}
    }
    let last_finished = db.last_finished_run()?;
    let last_run_ms = last_finished.as_ref().and_then(|r| r.ended_ms);
    let last_outcome = last_finished.and_then(|r| r.outcome);
    let held_deletes = db.held_deletes()?;
    let mut held_warning = None;
    if held_deletes.rows > 0 {
        let sites: Vec<&str> = held_deletes.sites.iter().map(|s| short_id(s)).collect();
        let mut what = Vec::new();
        if held_deletes.patients > 0 {
            let own: u64 = held_deletes.tables.iter().map(|t| t.rows).sum();
            what.push(format!(
                "{} patients (with {} of their rows)",
                held_deletes.patients,
                held_deletes.rows - own - held_deletes.patients
            ));
        }
        what.extend(held_deletes.tables.iter().map(|t| format!("{} rows of {}", t.rows, t.table)));
        let sentence = format!(
            "{} deleted at site {} are still shown here: more than the mass-delete guard lets through on its own; if that deletion is right, run `clinicsync sync --confirm-deletes`; to keep them and send them back to every site, run `clinicsync sync --keep-deleted`",
            what.join(" and "),
            sites.join(", ")
        );
        held_warning = Some(sentence.clone());
        warnings.push(sentence);
    }
    let (waiting, failed) = super::documents::short(&db)?;
    let settings = super::settings::load(&db)?;
    let documents = DocumentsStatus {
        mapped: db.mapping().documents().is_some(),
        folder: settings.documents_folder.as_ref().map(|f| f.display().to_string()),
        waiting,
        failed,
    };
    if failed > 0 {
        warnings.push(format!(
            "{failed} documents were not placed: their copy in the folder failed its integrity check (CRC file integrity check failed; see `clinicsync documents`); they are tried again every run"
        ));
    }
    if documents.mapped && documents.folder.is_none() && waiting + failed > 0 {
        warnings.push("documents_folder is not set: the files of documents changed elsewhere are not placed here; set it with `clinicsync settings documents_folder=PATH`".into());
    }
    let watermarks = db.watermarks()?;
    let mut sites = Vec::new();
    if online {
        let found = match sites::read(&folder, &IgnoreRules::new(), cfg.family, cfg.site) {
            Ok(found) => found,
            Err(e) => {
                warnings.push(format!("{SITES_DIR}/ cannot be listed: {e}"));
                Sites::default()
            }
        };
        if let Some((path, client)) = &found.own_copy {
            warnings.push(format!(
                "{path} is a copy of this site's file made by {}: this site id is in use on two computers; run `clinicsync reassign` on one of them",
                client.label()
            ));
        }
        warnings.extend(found.problems.iter().map(|p| format!("{} {}", p.path(), p.message())));
        for PeerFile { file, .. } in found.own.into_iter().chain(found.peers) {
            let this_site = file.site == cfg.site;
            let mut warning = None;
            let ahead_ms = file.last_sync_ms.map_or(0, |ms| ms.saturating_sub(now));
            if let Some(left) = file.left_ms {
                warning = Some(format!(
                    "left the family {} (`clinicsync detach`); the others no longer wait for it",
                    format_time(left)
                ));
            } else if this_site && file.machine != super::host::machine_fingerprint() {
                warning = Some(
                    "this site id is in use on another computer too: run `clinicsync reassign` on one of them"
                        .to_owned(),
                );
            } else if ahead_ms > CLOCK_AHEAD_WARN_MS {
                warning = Some(format!(
                    "its clock is about {} ahead of this computer's; its changes may be held back",
                    humantime::format_duration(std::time::Duration::from_secs(ahead_ms / 1000))
                ));
            } else if file.app_version != env!("CARGO_PKG_VERSION") {
                warning = Some(format!(
                    "runs clinicsync {}, this site runs {}",
                    file.app_version,
                    env!("CARGO_PKG_VERSION")
                ));
            } else if file.mapping != db.mapping().fingerprint() {
                warning = Some("replicates a different set of tables".to_owned());
            }
            sites.push(SiteStatus {
                site: file.site.to_string(),
                name: file.name,
                this_site,
                app_version: file.app_version,
                head_seq: file.head_seq,
                applied_seq: (!this_site).then(|| watermarks.get(&file.site).copied().unwrap_or(0)),
                last_sync_ms: file.last_sync_ms,
                last_sync: file.last_sync_ms.map(format_time),
                warning,
            });
        }
    }
    let site_names: std::collections::HashMap<&str, &str> = sites
        .iter()
        .map(|s| (s.site.as_str(), if s.this_site { "this site" } else { s.name.as_str() }))
        .collect();
    let held_patients = db
        .held_patients(HELD_LISTED)?
        .into_iter()
        .map(|p| HeldPatientView {
            site_name: p.site.as_deref().and_then(|id| site_names.get(id)).map(|n| (*n).to_owned()),
            deleted: p.deleted_ms.map(format_time),
            id: p.id,
            name: p.name,
            rows: p.rows,
            site: p.site,
        })
        .collect();
    let mut report = StatusReport {
        verdict: super::verdict::Verdict::default(),
        held_patients,
        held_warning,
        site: cfg.site.to_string(),
        site_name: cfg.name,
        family: cfg.family.to_string(),
        folder: cfg.folder.display().to_string(),
        online,
        last_sync_ms,
        last_sync: last_sync_ms.map(format_time),
        stale,
        last_outcome,
        last_run_ms,
        last_run: last_run_ms.map(format_time),
        pending_changes: db.pending_changes()?,
        open_conflicts: db.open_conflict_count()?,
        kept_copies: db.kept_copies()?,
        held_deletes,
        sites,
        documents,
        last_verify: db.meta(super::verify::LAST_VERIFY)?.and_then(|v| serde_json::from_str(&v).ok()),
        tables: tables(&db)?,
        warnings,
    };
    report.verdict = super::verdict::judge(&report, settings.auto_sync);
    Ok(report)
}
