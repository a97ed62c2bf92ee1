//! The run's last steps: purge tombstones every site has seen, compact this
//! site's change-log, and publish its site file.

use crate::model::{Hlc, RowKey};
use std::collections::{BTreeSet, HashMap, HashSet};

use crate::changelog::{Peer, Retention, compaction_limit, segment_path};
use crate::engine::EngineError;
use crate::engine::host::fault_point;
use crate::folder::layout::site_path;
use crate::xmlstore::{SiteFile, decode_site, encode_site};

use super::{PURGE_CHECK_MS, PURGED_PUBLISHED, Run, SITE_FILE_REFRESH_MS};
use crate::engine::report::EventKind;

/// Purges: the ones other sites did that this site has to apply, and the
/// ones this run does.
#[derive(Default)]
pub(super) struct Purges {
    /// Set when this site returns after peers purged tombstones it never
    /// read: the latest purge horizon, and (filled by the full scan) the
    /// patient files the folder has.
    pub(super) peer_horizon: Option<Hlc>,
    /// The latest purge horizon the other sites publish, when this site
    /// has not applied it yet.
    pub(super) new_horizon: Option<Hlc>,
    /// Patients whose own row this run purged.
    pub(super) purged_now: HashSet<String>,
    /// Patient files (by stem) holding rows this site purged whose deletion
    /// they do not carry: the keys, to write the deletion into them.
    pub(super) stale: HashMap<String, Vec<RowKey>>,
}

/// How often a run removes patient history older than its retention.
const HISTORY_TIDY_MS: u64 = 24 * 3600 * 1000;

impl Run<'_> {
    /// Step 6 (part): once a day, the patient history older than
    /// `history_retention` goes.
    pub(super) fn forget_old_history(&mut self) -> Result<(), EngineError> {
        let last: u64 = self.db.meta("last_history_tidy_ms")?.and_then(|v| v.parse().ok()).unwrap_or(0);
        if self.now_ms.saturating_sub(last) < HISTORY_TIDY_MS {
            return Ok(());
        }
        self.db.set_meta("last_history_tidy_ms", &self.now_ms.to_string())?;
        let before = self.now_ms.saturating_sub(self.settings.history_retention.as_millis() as u64);
        let n = self.db.forget_history_before(before)?;
        if n > 0 {
            self.rec.info(
                EventKind::Purge,
                None,
                format!("removed {n} entries of the patient history older than history_retention"),
            );
        }
        Ok(())
    }

    /// Step 6 (part): purge tombstones every active site has, once they are
    /// older than the retention; rewrite their patients' files without
    /// them (or remove the file of a purged patient); publish the horizon.
    pub(super) fn purge_tombstones(&mut self) -> Result<(), EngineError> {
        if !self.sites.complete() {
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
        let unknown = crate::engine::sites::unknown_sites(&self.folder, &self.sites.peers, self.cfg.site)
            .map_err(|e| self.io("cannot list log/", e))?;
        let plan = crate::engine::tombstones::plan(
            &self.db,
            &self.sites,
            &unknown,
            self.cfg.site,
            &self.settings,
            self.now_ms,
        )?;
        let ready: Vec<crate::db::Tombstone> = plan
            .into_iter()
            .filter(|(_, step)| matches!(step, crate::engine::tombstones::Step::Purgeable))
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
            EventKind::Purge,
            None,
            format!(
                "purged {} tombstones that every active site has and that are older than the retention",
                ready.len()
            ),
        );
        let root = self.db.mapping().root.table.clone();
        self.purges.purged_now.extend(ready.iter().filter(|t| t.table == root).map(|t| t.pk.clone()));
        let patients: BTreeSet<String> = ready.into_iter().filter_map(|t| t.patient).collect();
        self.reconcile(Vec::new(), patients.into_iter().collect())?;
        Ok(())
    }

    /// How far the other sites have applied this site's change-log, and
    /// the retention and dormancy that decide what may go.
    pub(super) fn log_peers(&self) -> (Vec<Peer>, Retention) {
        let peers = self
            .sites
            .peers
            .iter()
            .map(|p| Peer {
                acked: p.file.acks.get(&self.cfg.site).copied().unwrap_or(0),
                last_seen_ms: p.last_seen_ms(),
            })
            .collect();
        let policy = Retention {
            keep_ms: self.settings.log_retention.as_millis() as u64,
            dormant_after_ms: self.settings.dormancy.as_millis() as u64,
        };
        (peers, policy)
    }

    /// Step 6: delete own segments every active site has applied and that
    /// are older than the retention.
    pub(super) fn compact(&mut self) -> Result<(), EngineError> {
        if !self.sites.complete() {
            return Ok(());
        }
        let oldest = self.oldest_seq()?;
        let head = self.db.written_head()?;
        if oldest > head {
            return Ok(());
        }
        let (peers, policy) = self.log_peers();
        let exports = self.db.export_times(oldest, head)?;
        let Some(limit) = compaction_limit(&exports, &peers, self.now_ms, policy) else { return Ok(()) };
        let mut removed = oldest;
        for seq in oldest..=limit {
            let path = segment_path(self.cfg.site, seq);
            if let Err(e) = self.folder.remove(&path) {
                self.rec.warning(
                    EventKind::Compact,
                    Some(&path),
                    format!("could not be deleted: {e}; will retry"),
                );
                break;
            }
            self.counts.segments_deleted += 1;
            removed = seq + 1;
        }
        if removed > oldest {
            self.db.set_meta("oldest_seq", &removed.to_string())?;
            self.rec.info(
                EventKind::Compact,
                None,
                format!("deleted own segments #{oldest} to #{} (every active site has them)", removed - 1),
            );
        }
        Ok(())
    }

    pub(super) fn oldest_seq(&self) -> Result<u64, EngineError> {
        Ok(self.db.meta("oldest_seq")?.and_then(|v| v.parse().ok()).unwrap_or(1))
    }

    /// Step 6 (part): publish this site's file.
    pub(super) fn publish_site_file(&mut self, ok: bool) -> Result<(), EngineError> {
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
            left_ms: None,
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
