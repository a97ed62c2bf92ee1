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
use super::settings::{self, Settings};
use super::sites::{self, PeerFile, Problem, Sites};
use super::staging_dir;
use crate::db::{Db, Purged, Tombstone};
use crate::folder::layout::SITES_DIR;
use crate::folder::{DiskFolder, IgnoreRules};
use crate::model::{Clock, SiteId};
use crate::xmlstore::format_time;

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
/// nobody can tell what it has; nor while a site file cannot be read.
pub(crate) fn plan(
    db: &Db,
    sites: &Sites,
    unknown: &[SiteId],
    own: SiteId,
    settings: &Settings,
    now_ms: u64,
) -> Result<Vec<(Tombstone, Step)>, EngineError> {
    let retention = settings.log_retention.as_millis() as u64;
    let dormancy = settings.dormancy.as_millis() as u64;
    let active: Vec<&PeerFile> =
        sites.peers.iter().filter(|p| now_ms.saturating_sub(p.last_seen_ms()) <= dormancy).collect();
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
                waiting.extend(
                    sites.unreadable().map(|path| format!("the site whose file {path} cannot be read")),
                );
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

/// Lists the tombstones of a database and the step each is at.
pub fn tombstones(db_path: &Path) -> Result<TombstoneReport, EngineError> {
    let db = Db::open(db_path)?;
    let cfg = db.site_config()?;
    let settings = settings::load(&db)?;
    let folder = DiskFolder::new(cfg.folder.clone(), Some(staging_dir(db_path)));
    // The same sites and the same judgement as the run's guard: a site
    // file the run cannot read holds back the purge here too.
    let sites = sites::read(&folder, &IgnoreRules::new(), cfg.family, cfg.site).unwrap_or_else(|e| Sites {
        problems: vec![Problem::Unreadable { path: SITES_DIR.to_owned(), reason: e.to_string() }],
        ..Sites::default()
    });
    let now = SystemClock.now_ms();
    let unknown = sites::unknown_sites(&folder, &sites.peers, cfg.site).unwrap_or_default();
    let tombstones = plan(&db, &sites, &unknown, cfg.site, &settings, now)?
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
