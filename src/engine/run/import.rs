//! Import: read the other sites' change-log segments in order (decoding the
//! next on the other core while one is applied), or a full scan of the
//! patient files when the logs cannot say what changed.

use std::collections::{BTreeMap, BTreeSet};

use crate::changelog::{CatchUp, catch_up, segment_path};
use crate::db::{AHEAD_FEWEST, DiskProbe};
use crate::engine::EngineError;
use crate::folder::ReadError;
use crate::folder::layout::LOG_DIR;
use crate::model::{Hlc, PatientDoc, PatientId, RowKey, SiteId};
use crate::xmlstore::{DecodeError, Segment, decode_segment};

use super::{AHEAD_BYTES, Run, retry_hint};
use crate::engine::report::{EventKind, counted};

/// Patients an applied segment names in the log; the rest are counted.
const NAMED_IN_LOG: usize = 5;

/// Documents of a segment applied before the run asks whether their rows
/// came from the disk (then the rest are read ahead).
const PROBED_DOCS: usize = 4;

/// A segment read from the folder, decoding on the other core, or why it
/// could not be read.
pub(super) enum Fetched<'s> {
    Decoding(usize, std::thread::ScopedJoinHandle<'s, Result<Prepared, DecodeError>>),
    Unread(ReadError),
}

/// A decoded segment with what applying it needs worked out on the core
/// that decoded it: its rows grouped into one document per patient, and
/// the stamps the checks look at.
pub(super) struct Prepared {
    pub(super) site: SiteId,
    pub(super) seq: u64,
    pub(super) docs: BTreeMap<String, PatientDoc>,
    /// The latest stamp of a field version in it (the clock-skew check).
    pub(super) latest: Option<Hlc>,
    /// The latest of the writing site's own stamps, tombstones included:
    /// what this site acknowledges having applied.
    pub(super) own_latest: Option<Hlc>,
}

impl Prepared {
    fn new(segment: Segment) -> Prepared {
        let writer = segment.site;
        let mut latest = None;
        let mut own_latest = None;
        let mut docs: BTreeMap<String, PatientDoc> = BTreeMap::new();
        for ((patient, key), row) in segment.rows {
            let fields = row.fields.values().flat_map(|f| f.versions().iter().map(|v| v.hlc()));
            latest = latest.max(fields.clone().max());
            let own = fields.chain(row.deleted.stamps().iter().copied()).filter(|h| h.site() == writer);
            own_latest = own_latest.max(own.max());
            match docs.get_mut(&patient) {
                Some(doc) => {
                    doc.rows.insert(key, row);
                }
                None => {
                    let mut doc = PatientDoc::new(PatientId(patient.clone()));
                    doc.rows.insert(key, row);
                    docs.insert(patient, doc);
                }
            }
        }
        Prepared { site: segment.site, seq: segment.seq, docs, latest, own_latest }
    }
}

impl Run<'_> {
    /// Step 3: catch up with every other site, from its change-log where
    /// possible, from the patient files where not.
    pub(super) fn import(&mut self) -> Result<(), EngineError> {
        if !self.settings.use_logs {
            // Every run reads every file: this site has the tombstones the
            // others purged, and purges them itself.
            let clean = self.full_scan()?;
            if clean && let Some(horizon) = self.purges.new_horizon.take() {
                self.db.set_meta("horizon_applied", &horizon.encode())?;
            }
            return Ok(());
        }
        // A change-log whose site file has not arrived is not read (what
        // it holds up to is in that file): said, so it is not silent.
        let unknown = crate::engine::sites::unknown_sites(&self.folder, &self.sites.peers, self.cfg.site)
            .map_err(|e| self.io("cannot list log/", e))?;
        for site in unknown {
            self.rec.warning(
                EventKind::UnknownSite,
                Some(&format!("{LOG_DIR}/{site}")),
                format!("is the change-log of site {}, whose site file is not in the folder: its changes are read once that file arrives (if that site left the family, this folder can be deleted)", site.short()),
            );
        }
        let watermarks = self.db.watermarks()?;
        let mut plans = Vec::new();
        let last_scan: u64 = self.db.meta("last_full_scan_ms")?.and_then(|v| v.parse().ok()).unwrap_or(0);
        let mut scan = self.force_scan
            || self.now_ms.saturating_sub(last_scan) >= self.settings.full_scan_interval.as_millis() as u64;
        for peer in &self.sites.peers {
            let site = peer.file.site;
            let plan = catch_up(
                watermarks.get(&site).copied().unwrap_or(0),
                peer.file.head_seq,
                peer.file.oldest_seq,
            );
            scan |= matches!(plan, CatchUp::FullScanThen { .. });
            plans.push((site, peer.file.name.clone(), plan));
        }
        if scan {
            let why = if self.force_scan {
                "asked for (--full-scan)"
            } else if plans.iter().any(|(_, _, p)| matches!(p, CatchUp::FullScanThen { .. })) {
                "a site compacted changes this site never read"
            } else {
                "periodic (full_scan_interval)"
            };
            self.rec.info(EventKind::Scan, None, format!("reading every patient file: {why}"));
        }
        // A site that missed compacted changes may also have missed
        // tombstones the others purged since.
        if plans.iter().any(|(_, _, p)| matches!(p, CatchUp::FullScanThen { .. })) {
            self.purges.peer_horizon = self.purges.new_horizon;
        }
        let clean = if scan { self.full_scan()? } else { true };
        if clean && let Some(horizon) = self.purges.peer_horizon {
            self.apply_peer_purge(horizon)?;
        } else if clean && let Some(horizon) = self.purges.new_horizon {
            // An active site has the tombstones the others purged: it
            // purges them itself.
            self.db.set_meta("horizon_applied", &horizon.encode())?;
        }
        if clean {
            self.purges.new_horizon = None;
        }
        if clean {
            // What was compacted away is now read from the patient files:
            // continue each such site's log from its oldest segment.
            let resumes: Vec<(SiteId, u64)> = plans
                .iter()
                .filter_map(|(site, _, plan)| match plan {
                    CatchUp::FullScanThen { from, .. } => Some((*site, from - 1)),
                    _ => None,
                })
                .collect();
            if !resumes.is_empty() {
                let w = self.db.begin_write(self.now_ms)?;
                for (site, seq) in resumes {
                    w.set_watermark(site, seq)?;
                }
                let stamped = w.commit()?;
                self.note_stamped(stamped);
            }
        }
        let mut touched = BTreeSet::new();
        for (site, name, plan) in plans {
            let (from, to) = match plan {
                CatchUp::UpToDate => continue,
                CatchUp::Segments { from, to } => (from, to),
                CatchUp::FullScanThen { from, to } if clean => {
                    self.rec.info(
                        EventKind::Scan,
                        None,
                        format!("site {name} compacted changes this site never read; caught up from the patient files"),
                    );
                    (from, to)
                }
                CatchUp::FullScanThen { .. } => {
                    self.rec.skipped(
                        EventKind::Gap,
                        None,
                        format!("site {name} compacted changes this site never read, and the patient files could not all be read; the next run tries again"),
                    );
                    continue;
                }
            };
            self.read_segments(site, &name, from, to, &mut touched)?;
        }
        if !touched.is_empty() {
            // The files are read while what the segments brought is copied
            // into the database file.
            self.checkpoint_meanwhile();
        }
        // Read-repair: the files of every patient a segment changed.
        self.reconcile(Vec::new(), touched.into_iter().collect())?;
        Ok(())
    }

    /// Applies segments `from..=to` of a site in order, each in one
    /// transaction with the new watermark; stops at the first that is
    /// missing or unusable.
    pub(super) fn read_segments(
        &mut self,
        site: SiteId,
        name: &str,
        from: u64,
        to: u64,
        touched: &mut BTreeSet<String>,
    ) -> Result<(), EngineError> {
        self.progress.step("reading other sites' change-logs", to.saturating_sub(from) + 1);
        std::thread::scope(|scope| {
            // The next segment is read and decoded on the other core while
            // this one is applied.
            // A large segment (only a damaged or hostile one is larger than
            // an export writes) waits for its turn, so that two of them are
            // never in memory together.
            let mut ahead = None;
            for seq in from..=to {
                let fetched = match ahead.take() {
                    Some(fetched) => fetched,
                    None => self.fetch_segment(scope, site, seq),
                };
                if seq < to {
                    let next = segment_path(site, seq + 1);
                    let small =
                        self.folder.metadata(&next).ok().flatten().is_some_and(|e| e.size <= AHEAD_BYTES);
                    ahead = small.then(|| self.fetch_segment(scope, site, seq + 1));
                }
                if !self.apply_segment(site, name, seq, fetched, touched)? {
                    return Ok(());
                }
            }
            Ok(())
        })
    }

    /// Reads a segment and starts decoding it on the other core.
    pub(super) fn fetch_segment<'s>(
        &mut self,
        scope: &'s std::thread::Scope<'s, '_>,
        site: SiteId,
        seq: u64,
    ) -> Fetched<'s> {
        let path = segment_path(site, seq);
        match self.folder.read(&path, self.limits.max_file_bytes) {
            Ok(bytes) => {
                let limits = self.limits;
                let len = bytes.len();
                Fetched::Decoding(len, scope.spawn(move || decode_segment(&bytes, limits).map(Prepared::new)))
            }
            Err(e) => Fetched::Unread(e),
        }
    }

    /// Applies one segment in one transaction with the new watermark; false
    /// when the site's later segments must wait (a gap, or this one could
    /// not be applied).
    pub(super) fn apply_segment(
        &mut self,
        site: SiteId,
        name: &str,
        seq: u64,
        fetched: Fetched<'_>,
        touched: &mut BTreeSet<String>,
    ) -> Result<bool, EngineError> {
        self.progress.advance(1);
        let path = segment_path(site, seq);
        let (len, decoding) = match fetched {
            Fetched::Decoding(len, decoding) => (len, decoding),
            Fetched::Unread(ReadError::NotFound) => {
                self.rec.skipped(
                    EventKind::Gap,
                    Some(&path),
                    format!(
                        "segment #{seq} of site {name} has not arrived yet; its later changes wait for it"
                    ),
                );
                return Ok(false);
            }
            Fetched::Unread(e) => {
                self.counts.files_skipped += 1;
                self.rec.skipped(
                    EventKind::Skipped,
                    Some(&path),
                    format!("was not applied: {e}; will retry"),
                );
                return Ok(false);
            }
        };
        self.counts.bytes_read += len as u64;
        let decoded = decoding.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        let segment = match decoded {
            Ok(s) => s,
            Err(e) => {
                self.counts.files_skipped += 1;
                self.rec.skipped(
                    EventKind::Skipped,
                    Some(&path),
                    format!("was not applied: {e}; {}; the site's later changes wait for it", retry_hint(&e)),
                );
                return Ok(false);
            }
        };
        if segment.site != site || segment.seq != seq {
            self.counts.files_skipped += 1;
            self.rec.skipped(
                EventKind::Skipped,
                Some(&path),
                format!(
                    "holds segment #{} of site {}, not what its name says; not applied",
                    segment.seq,
                    segment.site.short()
                ),
            );
            return Ok(false);
        }
        if let Some(ahead) = self.too_far_ahead(segment.latest.into_iter()) {
            self.hold_back(&path, ahead);
            return Ok(false);
        }
        let Prepared { mut docs, own_latest, .. } = segment;
        if let Some(only) = &mut self.only {
            only.keep_own(&mut docs);
        }
        let mut w = self.db.begin_write(self.now_ms)?;
        w.hold_deletes();
        let mut rows = 0;
        let mut conflicts = 0;
        let mut warnings = Vec::new();
        let mut affected = BTreeSet::new();
        let mut failure = None;
        let mut changed = Vec::new();
        // The patients whose rows changed, and the first few, to name them
        // in the log.
        let mut patients = 0;
        let mut named = Vec::new();
        // A family on the disk: once the first documents' rows came from
        // it, the others' are read ahead while they are applied.
        let probe = DiskProbe::start();
        let mut _read_ahead = None;
        let mut applied = 0;
        // A failed document drops the whole transaction below, so no
        // document needs a savepoint of its own.
        while let Some((_, doc)) = docs.pop_first() {
            if applied == PROBED_DOCS && probe.went_to_disk() {
                let later: Vec<RowKey> = docs.values().flat_map(|d| d.rows.keys().cloned()).collect();
                if later.len() >= AHEAD_FEWEST {
                    _read_ahead = w.read_ahead(&later);
                }
            }
            applied += 1;
            let patient = doc.patient.0.clone();
            match w.apply_doc_unguarded(doc, &path) {
                Ok(o) => {
                    rows += o.rows_changed;
                    conflicts += o.new_conflicts;
                    if o.rows_changed > 0 {
                        patients += 1;
                        if named.len() < NAMED_IN_LOG {
                            named.push(patient.clone());
                        }
                    }
                    changed.push((patient.clone(), o.changed));
                    warnings.extend(o.warnings);
                    affected.extend(o.affected);
                    if !o.stale_purged.is_empty() {
                        // Rows this site purged, from a site that has not
                        // applied their deletion: its file is read, and
                        // told the deletion (read-repair).
                        affected.insert(patient);
                    }
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failure {
            drop(w);
            self.counts.files_skipped += 1;
            self.rec.skipped(
                EventKind::Skipped,
                Some(&path),
                format!("could not be applied to the database, nothing of it was kept: {e}; the site's later changes wait for it"),
            );
            return Ok(false);
        }
        // A table run applied part of the segment: the next full sync
        // reads it again.
        if self.only.is_none() {
            w.set_watermark(site, seq)?;
            if let Some(h) = own_latest {
                w.set_ack_stamp(site, h)?;
            }
        }
        let stamped = w.commit()?;
        self.progress.advance(stamped.rows as u64);
        self.note_stamped(stamped);
        self.counts.segments_applied += 1;
        self.counts.rows_applied += rows as u64;
        for (patient, what) in changed {
            self.brought.note(&patient, what);
        }
        for warning in warnings {
            self.rec.warning(EventKind::Schema, Some(&path), warning);
        }
        if rows > 0 {
            let names = self.patient_names(&named, patients)?;
            let rows = counted(rows as u64, "changed row", "changed rows");
            self.rec.applied(&path, format!("brought in {rows} of {names} from {name}"));
        }
        if conflicts > 0 {
            self.counts.new_conflicts += conflicts as u64;
            self.rec.warning(
                EventKind::Conflict,
                Some(&path),
                format!(
                    "{} kept for review (`clinicsync conflicts`)",
                    counted(conflicts as u64, "concurrent edit", "concurrent edits")
                ),
            );
        }
        touched.extend(affected);
        Ok(true)
    }

    /// "Jane Smith, John Doe and 3 more patients": the patients by name
    /// (their ids where the mapping names none), `total` in all.
    pub(super) fn patient_names(&self, ids: &[String], total: usize) -> Result<String, EngineError> {
        let mut names = Vec::with_capacity(ids.len());
        for id in ids {
            names.push(self.db.patient_name(id)?.unwrap_or_else(|| format!("patient {id}")));
        }
        let more = total.saturating_sub(names.len());
        Ok(match (names.as_slice(), more) {
            ([], _) => format!("{total} patients"),
            ([one], 0) => one.clone(),
            (all, 0) => format!("{} and {}", all[..all.len() - 1].join(", "), all[all.len() - 1]),
            (some, more) => format!("{} and {more} more patients", some.join(", ")),
        })
    }

    pub(super) fn too_far_ahead(&self, stamps: impl Iterator<Item = Hlc>) -> Option<Hlc> {
        let limit = self.now_ms.saturating_add(self.settings.max_clock_skew.as_millis() as u64);
        stamps.filter(|h| h.wall_ms() > limit).max()
    }

    pub(super) fn hold_back(&mut self, path: &str, ahead: Hlc) {
        // Rounded to the minute: people read "3days", not "2days 23h 59m 59s".
        let minutes = (ahead.wall_ms() - self.now_ms + 30_000) / 60_000;
        let by = humantime::format_duration(std::time::Duration::from_secs(minutes * 60));
        self.counts.files_held_back += 1;
        self.rec.skipped(
            EventKind::HeldBack,
            Some(path),
            format!("held back: site {}'s clock is {by} ahead of this computer's; it is applied once the clocks agree", ahead.site().short()),
        );
    }
}
