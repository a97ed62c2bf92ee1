//! Removing document bodies nothing names any more. A body this site wrote
//! into `docs/` is removed once no version of any row names it (not a
//! conflict's loser, not a deleted row's history: those go with the purge),
//! that has been so for the retention, and every active site has applied
//! this site's change-log up to when it was first seen so: the rule by
//! which segments are compacted.

use crate::changelog::compaction_limit;
use crate::engine::EngineError;
use crate::engine::report::EventKind;

use super::{PURGE_CHECK_MS, Run};

impl Run<'_> {
    /// Step 6 (part): at most every few minutes, as the purge.
    pub(super) fn remove_unreferenced_bodies(&mut self) -> Result<(), EngineError> {
        let Some(table) = self.db.mapping().documents().map(|d| d.table.clone()) else { return Ok(()) };
        if !self.sites.complete() {
            return Ok(());
        }
        let interval = PURGE_CHECK_MS.min(self.settings.log_retention.as_millis() as u64);
        let last: u64 = self.db.meta("last_body_check_ms")?.and_then(|v| v.parse().ok()).unwrap_or(0);
        if self.now_ms.saturating_sub(last) < interval {
            return Ok(());
        }
        let published = self.db.published_bodies()?;
        if published.is_empty() {
            return Ok(());
        }
        self.db.set_meta("last_body_check_ms", &self.now_ms.to_string())?;
        let named = self.db.referenced_bodies(&table)?;
        let head = self.db.written_head()?;
        let (peers, policy) = self.log_peers();
        let mut removed = 0;
        for (sha, since) in published {
            match since {
                _ if named.contains(&sha) => {
                    if since.is_some() {
                        self.db.mark_unreferenced(&sha, None)?;
                    }
                }
                None => self.db.mark_unreferenced(&sha, Some((self.now_ms, head)))?,
                Some((since_ms, since_head)) => {
                    let due = compaction_limit(&[(since_head, since_ms)], &peers, self.now_ms, policy);
                    if due != Some(since_head) {
                        continue;
                    }
                    let path = crate::model::body_path(&sha);
                    match self.folder.remove(&path) {
                        Ok(()) => {
                            self.db.forget_published(&sha)?;
                            removed += 1;
                        }
                        Err(e) => {
                            self.rec.warning(
                                EventKind::Document,
                                Some(&path),
                                format!("could not be deleted: {e}; will retry"),
                            );
                        }
                    }
                }
            }
        }
        if removed > 0 {
            self.counts.documents.bodies_removed += removed;
            self.rec.info(
                EventKind::Document,
                None,
                format!(
                    "deleted {removed} document bodies from docs/ that no row names any more (every active site has applied the change, and the retention passed)"
                ),
            );
        }
        Ok(())
    }
}
