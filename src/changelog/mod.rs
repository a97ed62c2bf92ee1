//! The change-log's rules, pure: where segments live, what a reader must
//! do to catch up with a site, and which of its own segments a site may
//! delete. The engine does the I/O; these functions decide.

use crate::model::SiteId;

/// Segments: `log/<site>/<seq:010>.xml`.
pub const LOG_DIR: &str = "log";

pub fn segment_path(site: SiteId, seq: u64) -> String {
    format!("{LOG_DIR}/{site}/{seq:010}.xml")
}

/// How to catch up with one other site.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CatchUp {
    /// Nothing new.
    UpToDate,
    /// Read segments `from..=to` in order.
    Segments { from: u64, to: u64 },
    /// The segments after our watermark are gone (compacted while we were
    /// away): scan the patient files, then read `from..=to`.
    FullScanThen { from: u64, to: u64 },
}

/// `watermark`: the last segment of the site we applied (0: none).
/// `head`: the last segment it announces. `oldest`: the first it still keeps.
pub fn catch_up(watermark: u64, head: u64, oldest: u64) -> CatchUp {
    if head <= watermark {
        CatchUp::UpToDate
    } else if watermark + 1 < oldest {
        CatchUp::FullScanThen { from: oldest, to: head }
    } else {
        CatchUp::Segments { from: watermark + 1, to: head }
    }
}

/// What a site knows of another site when it compacts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The last of our segments the peer has applied (0: none).
    pub acked: u64,
    /// When the peer was last seen syncing, ms since the epoch.
    pub last_seen_ms: u64,
}

/// Compaction policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Segments younger than this are kept whatever the acks say.
    pub keep_ms: u64,
    /// Peers not seen for this long no longer hold compaction back.
    pub dormant_after_ms: u64,
}

/// The highest own segment that may be deleted, given our segments'
/// `(seq, created_ms)` in seq order (only written ones), the peers, the
/// time, and the policy; `None` when nothing may go. A segment goes only
/// when every active peer has applied it and it is older than the
/// retention.
pub fn compaction_limit(
    exports: &[(u64, u64)],
    peers: &[Peer],
    now_ms: u64,
    policy: Retention,
) -> Option<u64> {
    let active = peers.iter().filter(|p| now_ms.saturating_sub(p.last_seen_ms) < policy.dormant_after_ms);
    let acked_by_all = active.map(|p| p.acked).min().unwrap_or(u64::MAX);
    let cutoff = now_ms.saturating_sub(policy.keep_ms);
    let mut limit = None;
    for &(seq, created_ms) in exports {
        if seq > acked_by_all || created_ms > cutoff {
            break;
        }
        limit = Some(seq);
    }
    limit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catch_up_plans() {
        assert_eq!(catch_up(5, 5, 1), CatchUp::UpToDate);
        assert_eq!(catch_up(0, 3, 1), CatchUp::Segments { from: 1, to: 3 });
        assert_eq!(catch_up(4, 9, 5), CatchUp::Segments { from: 5, to: 9 });
        assert_eq!(catch_up(2, 9, 5), CatchUp::FullScanThen { from: 5, to: 9 });
    }

    #[test]
    fn compaction_waits_for_active_peers_and_the_retention() {
        let day = 86_400_000;
        let policy = Retention { keep_ms: 7 * day, dormant_after_ms: 30 * day };
        let now = 100 * day;
        let exports: Vec<(u64, u64)> = (1..=10).map(|s| (s, s * 10 * day / 2)).collect();
        let active = Peer { acked: 6, last_seen_ms: now - day };
        let dormant = Peer { acked: 1, last_seen_ms: now - 40 * day };
        assert_eq!(compaction_limit(&exports, &[active, dormant], now, policy), Some(6));
        let lagging = Peer { acked: 2, last_seen_ms: now };
        assert_eq!(compaction_limit(&exports, &[active, lagging], now, policy), Some(2));
        let never = Peer { acked: 0, last_seen_ms: now };
        assert_eq!(compaction_limit(&exports, &[never], now, policy), None);
        // Retention: at day 52 only segments created by day 45 may go.
        let all = Peer { acked: 10, last_seen_ms: 52 * day };
        assert_eq!(compaction_limit(&exports, &[all], 52 * day, policy), Some(9));
        // No peers at all: the retention alone decides.
        assert_eq!(compaction_limit(&exports, &[], 52 * day, policy), Some(9));
    }
}
