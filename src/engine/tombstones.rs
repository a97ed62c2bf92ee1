//! Which tombstones can be purged, and `clinicsync tombstones`: every
//! deleted row the state holds and the step it is at (waiting for the
//! retention, waiting for named sites to have it, purgeable), and the rows
//! already purged.
//!
//! A tombstone stamped `h` by site X is purged once it is older than the
//! retention and every active site has it: each one's site file
//! acknowledges a stamp of X at or after `h` (X's stamps grow with its
//! change-log, so that site has applied the segment that carried the
//! delete). Sites not seen for the dormancy period do not hold it back;
//! when one returns, the purge horizon tells it what was purged.

use std::path::Path;

use serde::Serialize;

use super::EngineError;
use super::host::SystemClock;
use super::run::{PeerFile, staging_dir};
use super::settings::{self, Settings};
use crate::db::{Db, Purged, Tombstone};
use crate::folder::layout::{LOG_DIR, SITES_DIR};
use crate::folder::{DiskFolder, Folder, IgnoreRules};
use crate::model::{Clock, SiteId};
use crate::xmlstore::{decode_site, format_time};

/// Where a tombstone is on its way to being purged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Written by a clinicsync that did not stamp deletes: kept.
    Unstamped,
    /// Younger than the retention.
    Young {
        purgeable_after_ms: u64,
    },
    /// These active sites have not acknowledged it yet.
    Waiting {
        sites: Vec<String>,
    },
    /// An edit it did not see waits for review (`clinicsync conflicts`).
    Review,
    /// The mass-delete guard holds it: waiting for `sync --confirm-deletes`.
    Held,
    Purgeable,
}

/// Every tombstone of the state with its step.
/// `unknown`: sites the folder shows (they have a change-log) whose site
/// file this site has not read: nothing is purged while one exists, since
/// nobody can tell what it has.
pub(crate) fn plan(
    db: &Db,
    peers: &[PeerFile],
    unknown: &[SiteId],
    own: SiteId,
    settings: &Settings,
    now_ms: u64,
) -> Result<Vec<(Tombstone, Step)>, EngineError> {
    let retention = settings.log_retention.as_millis() as u64;
    let dormancy = settings.dormancy.as_millis() as u64;
    let active: Vec<&PeerFile> = peers
        .iter()
        .filter(|p| {
            let seen = p.file.last_sync_ms.unwrap_or(0).max(p.mtime_ms);
            now_ms.saturating_sub(seen) <= dormancy
        })
        .collect();
    let mut out = Vec::new();
    for t in db.tombstones()? {
        let step = match t.deleted_at {
            None => Step::Unstamped,
            Some(_) if db.is_held(&t.table, &t.pk)? => Step::Held,
            Some(_) if db.has_open_lost_edits(&t.table, &t.pk)? => Step::Review,
            Some(h) if h.wall_ms().saturating_add(retention) > now_ms => {
                Step::Young { purgeable_after_ms: h.wall_ms().saturating_add(retention) }
            }
            Some(h) => {
                let mut waiting: Vec<String> = active
                    .iter()
                    .filter(|p| p.file.site != h.site() && p.file.site != own)
                    .filter(|p| p.file.ack_stamps.get(&h.site()).is_none_or(|acked| *acked < h))
                    .map(|p| format!("{} ({})", p.file.site.short(), p.file.name))
                    .collect();
                waiting
                    .extend(unknown.iter().map(|s| format!("{} (its site file has not arrived)", s.short())));
                if waiting.is_empty() { Step::Purgeable } else { Step::Waiting { sites: waiting } }
            }
        };
        out.push((t, step));
    }
    Ok(out)
}

/// One tombstone as `clinicsync tombstones` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct TombstoneView {
    pub table: String,
    pub pk: String,
    pub patient: Option<String>,
    /// When it was deleted, and by which site (short id).
    pub deleted_at: Option<String>,
    pub deleted_by: Option<String>,
    /// `waiting-retention`, `waiting-sites`, `waiting-review` (an edit it
    /// did not see is an open conflict record), `waiting-confirmation` (the
    /// mass-delete guard holds it), `purgeable`, `unstamped`.
    pub step: &'static str,
    /// For `waiting-sites`: the sites that have not got it yet.
    pub waiting_for: Vec<String>,
    /// For `waiting-retention`: when it can be purged.
    pub purgeable_after: Option<String>,
}

/// What `clinicsync tombstones` prints.
#[derive(Clone, Debug, Serialize)]
pub struct TombstoneReport {
    pub tombstones: Vec<TombstoneView>,
    pub purged: Vec<Purged>,
}

/// Sites with a change-log in the folder but no site file among `peers`.
pub(crate) fn unknown_sites(
    folder: &DiskFolder,
    peers: &[PeerFile],
    own: SiteId,
) -> std::io::Result<Vec<SiteId>> {
    let mut out = Vec::new();
    for entry in folder.list(LOG_DIR)? {
        if let Ok(site) = SiteId::parse(&entry.name)
            && entry.is_dir
            && site != own
            && !peers.iter().any(|p| p.file.site == site)
        {
            out.push(site);
        }
    }
    Ok(out)
}

/// Lists the tombstones of a database and the step each is at.
pub fn tombstones(db_path: &Path) -> Result<TombstoneReport, EngineError> {
    let db = Db::open(db_path)?;
    let cfg = db.site_config()?;
    let settings = settings::load(&db)?;
    let folder = DiskFolder::new(cfg.folder.clone(), Some(staging_dir(db_path)));
    let ignore = IgnoreRules::new();
    let mut peers = Vec::new();
    for entry in folder.list(SITES_DIR).unwrap_or_default() {
        if ignore.is_ignored(&entry.name) || !entry.name.ends_with(".xml") {
            continue;
        }
        let Ok(bytes) = folder.read(&format!("{SITES_DIR}/{}", entry.name), 1 << 20) else { continue };
        let Ok(file) = decode_site(&bytes) else { continue };
        if file.family != cfg.family || file.site == cfg.site || format!("{}.xml", file.site) != entry.name {
            continue;
        }
        let mtime_ms = u64::try_from(entry.mtime_ns / 1_000_000).unwrap_or(0);
        peers.push(PeerFile { file, mtime_ms });
    }
    let now = SystemClock.now_ms();
    let unknown = unknown_sites(&folder, &peers, cfg.site).unwrap_or_default();
    let tombstones = plan(&db, &peers, &unknown, cfg.site, &settings, now)?
        .into_iter()
        .map(|(t, step)| {
            let (name, waiting_for, purgeable_after) = match step {
                Step::Unstamped => ("unstamped", Vec::new(), None),
                Step::Young { purgeable_after_ms } => {
                    ("waiting-retention", Vec::new(), Some(format_time(purgeable_after_ms)))
                }
                Step::Waiting { sites } => ("waiting-sites", sites, None),
                Step::Review => ("waiting-review", Vec::new(), None),
                Step::Held => ("waiting-confirmation", Vec::new(), None),
                Step::Purgeable => ("purgeable", Vec::new(), None),
            };
            TombstoneView {
                table: t.table,
                pk: t.pk,
                patient: t.patient,
                deleted_at: t.deleted_at.map(|h| format_time(h.wall_ms())),
                deleted_by: t.deleted_at.map(|h| h.site().short()),
                step: name,
                waiting_for,
                purgeable_after,
            }
        })
        .collect();
    Ok(TombstoneReport { tombstones, purged: db.purged()? })
}
