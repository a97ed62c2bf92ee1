//! Deletions that arrive: a purge another site did, the mass-delete guard
//! and a person's decision on what it held, and rows the app's tables
//! refuse for now (parked).

use std::collections::BTreeMap;

use crate::db::HeldGroup;
use crate::engine::EngineError;
use crate::model::Hlc;
use crate::model::short_id;

use super::{PARKED_NAMED, Run, SEGMENT_ROWS};
use crate::engine::report::{EventKind, counted};

impl Run<'_> {
    /// This site was away while others purged tombstones it never read.
    /// The rows they say they purged (`<purged>` in their site files) that
    /// this site still holds go here too (through the mass-delete guard),
    /// instead of coming back. Runs after a complete full scan. A row no
    /// site lists any more (purged longer ago than the sites publish) is
    /// kept: if it comes back, the sites that purged it write its deletion
    /// into its file.
    pub(super) fn apply_peer_purge(&mut self, horizon: Hlc) -> Result<(), EngineError> {
        let listed: Vec<_> = self.sites.purged_elsewhere().0.into_values().collect();
        self.counts.purged_elsewhere += self.db.drop_listed_purged(&listed, horizon, self.now_ms)? as u64;
        self.db.set_meta("horizon_applied", &horizon.encode())?;
        if self.counts.purged_elsewhere > 0 {
            self.rec.info(
                EventKind::Purge,
                None,
                format!(
                    "{} rows this site still had were deleted and purged by the other sites while it was away (horizon {}); they are deleted here too",
                    self.counts.purged_elsewhere,
                    crate::xmlstore::format_time(horizon.wall_ms())
                ),
            );
        }
        Ok(())
    }

    /// `sync --keep-deleted`: every deletion the guard held when the run
    /// started is refused. The rows stay in the app's tables and go back to
    /// every site as new inserts, in bounded exports.
    pub(super) fn keep_deleted(&mut self) -> Result<(), EngineError> {
        if !self.keep_deleted {
            return Ok(());
        }
        let mut kept = crate::db::Kept { more: true, ..Default::default() };
        while kept.more {
            let mut w = self.db.begin_write(self.now_ms)?;
            let step = w.keep_held(SEGMENT_ROWS)?;
            let stamped = w.commit()?;
            self.note_stamped(stamped);
            kept.rows += step.rows;
            kept.patients += step.patients;
            kept.more = step.more;
            for (site, n, first, last) in step.by_site {
                match kept.by_site.iter_mut().find(|(s, ..)| *s == site) {
                    Some((_, m, f, l)) => {
                        *m += n;
                        *f = (*f).min(first);
                        *l = (*l).max(last);
                    }
                    None => kept.by_site.push((site, n, first, last)),
                }
            }
        }
        self.counts.rows_kept += kept.rows;
        if kept.by_site.is_empty() {
            self.rec.info(EventKind::KeepDeleted, None, "no deletion was held; nothing to keep".into());
        }
        for (site, n, first, last) in &kept.by_site {
            let when = if first == last {
                crate::xmlstore::format_time(*first)
            } else {
                format!(
                    "between {} and {}",
                    crate::xmlstore::format_time(*first),
                    crate::xmlstore::format_time(*last)
                )
            };
            self.rec.info(
                EventKind::KeepDeleted,
                None,
                format!(
                    "kept {n} rows that {} deleted {when} (refused with --keep-deleted); they stay here and go back to every site as new rows",
                    self.site_label(site)
                ),
            );
        }
        self.write_outbox_quietly()
    }

    /// The mass-delete guard. Every incoming deletion of a row the app
    /// shows was held while it was applied; now the run knows how many
    /// there are. The patients' deletions (with their child rows) are one
    /// group, and each child table's rows deleted on their own are
    /// another: a group within the threshold (of the patients, or of that
    /// table's rows) is applied to the app's tables; a larger one waits for
    /// `sync --confirm-deletes` or `sync --keep-deleted`, and the run is
    /// partial.
    pub(super) fn guard_deletes(&mut self) -> Result<(), EngineError> {
        if self.db.held_deletes()?.rows == 0 {
            return Ok(());
        }
        self.db.forget_revived_held()?;
        let held = self.db.held_deletes()?;
        if held.rows == 0 {
            return Ok(());
        }
        let percent = u64::from(self.settings.mass_delete_percent);
        let min = self.settings.mass_delete_min_patients;
        let sites = held.sites.iter().map(|s| self.site_label(s)).collect::<Vec<_>>().join(", ");
        let mut groups = Vec::new();
        if held.patients > 0 {
            let root = self.db.mapping().root.table.clone();
            let own: u64 = held.tables.iter().map(|t| t.rows).sum();
            groups.push((HeldGroup::Patients, root, held.patients, held.rows - own));
        }
        for t in &held.tables {
            groups.push((HeldGroup::Table(t.table.clone()), t.table.clone(), t.rows, t.rows));
        }
        for (group, table, count, rows) in groups {
            // A table run lets through only that child table's rows deleted
            // on their own: their edits here are stamped, while another
            // table's (a patient's child rows go with it) may not be yet;
            // the rest waits, held, for the next full sync.
            if let Some(only) = &self.only
                && !matches!(&group, HeldGroup::Table(t) if *t == only.table)
            {
                continue;
            }
            let total = self.db.table_count(&table)?;
            let limit = min.max((total * percent).div_ceil(100));
            let what = match group {
                HeldGroup::Patients => counted(count, "patient", "patients"),
                _ => format!("{} of {table}", counted(count, "row", "rows")),
            };
            if count <= limit || self.confirm_deletes {
                let released = self.db.release_held(&group)?;
                self.counts.patients_deleted += released.patients;
                self.counts.rows_deleted += released.rows;
                let why = if count > limit { " (confirmed with --confirm-deletes)" } else { "" };
                let with = match group {
                    HeldGroup::Patients if released.rows > released.patients => {
                        match released.rows - released.patients {
                            1 => " with one of their rows".to_owned(),
                            n => format!(" with {n} of their rows"),
                        }
                    }
                    _ => String::new(),
                };
                self.rec.info(
                    EventKind::Delete,
                    None,
                    format!("deleted {what}{with} that {sites} deleted{why}"),
                );
                continue;
            }
            self.counts.rows_held += rows;
            let (whole, shown) = match group {
                HeldGroup::Patients => {
                    self.counts.deletes_held += count;
                    (
                        format!("{percent}% of this database's {total} patients, and at least {min}"),
                        format!("they and their {} rows are still shown here", rows - count),
                    )
                }
                _ => (
                    format!("{percent}% of the {total} rows of {table}, and at least {min}"),
                    "their patients stay, and the rows are still shown here".to_owned(),
                ),
            };
            self.rec.skipped(
                EventKind::HeldDeletes,
                None,
                format!(
                    "{what} were deleted at {sites}: more than {limit} ({whole}), so {shown} and their deletion waits; everything else was applied. If the deletion is right, run `clinicsync sync --confirm-deletes`; to keep them and send them back to every site, run `clinicsync sync --keep-deleted`"
                ),
            );
        }
        Ok(())
    }

    /// A site as people know it: "site" and its name ("this site" for this
    /// one), or its short id when its site file is not read.
    pub(super) fn site_label(&self, site: &str) -> String {
        match self.sites.peers.iter().find(|p| p.file.site.to_string() == site) {
            Some(p) => format!("site {}", p.file.name),
            None if site == self.cfg.site.to_string() => "this site".to_owned(),
            None => format!("site {}", short_id(site)),
        }
    }

    /// Rows whose fields arrived only in part wait outside the app's tables;
    /// once the rest has arrived they are shown.
    pub(super) fn show_parked_rows(&mut self) -> Result<(), EngineError> {
        if !self.db.has_parked()? {
            return Ok(());
        }
        let mut w = self.db.begin_write(self.now_ms)?;
        let still = w.retry_parked()?;
        let stamped = w.commit()?;
        self.note_stamped(stamped);
        // The first few by name, the rest counted per table: a file of a
        // hundred thousand such rows must not make as many log lines.
        let mut more: BTreeMap<String, u64> = BTreeMap::new();
        // Rows said alike (no name of their own, one patient, one reason)
        // are one line with their number.
        // (row name, table, " of PATIENT", reason) and how many.
        type Alike = (Option<String>, String, String, String);
        let mut said: Vec<(Alike, u64)> = Vec::new();
        for (i, (key, reason)) in still.into_iter().enumerate() {
            if i >= PARKED_NAMED {
                *more.entry(key.table).or_default() += 1;
                continue;
            }
            // The row by its name where the app's columns give one, and
            // its patient's name.
            let name = self.db.row_name(&key.table, &key.pk)?;
            let of = match self.db.patient_of_row(&key)? {
                Some(p) => format!(" of {}", self.patient_names(std::slice::from_ref(&p), 1)?),
                None => String::new(),
            };
            let alike = (name, key.table, of, reason);
            match said.iter_mut().find(|(s, _)| *s == alike) {
                Some((_, n)) => *n += 1,
                None => said.push((alike, 1)),
            }
        }
        for ((name, table, of, reason), n) in said {
            let row = match (name, n) {
                (Some(name), 1) => format!("the {table} row {} is", crate::model::shown(&name)),
                (Some(name), n) => format!("{n} {table} rows {} are", crate::model::shown(&name)),
                (None, 1) => format!("a row of {table}{of} is"),
                (None, n) => format!("{n} rows of {table}{of} are"),
            };
            let (it, its) = if n == 1 { ("it", "its") } else { ("them", "their") };
            self.rec.skipped(
                EventKind::Parked,
                None,
                format!(
                    "{row} kept by clinicsync but the app's table cannot hold {it} yet ({reason}); the rest of {its} data is on its way, and every run tries again"
                ),
            );
        }
        for (table, n) in more {
            self.rec.skipped(
                EventKind::Parked,
                None,
                format!(
                    "and {n} more rows of {table} that the app's table cannot hold yet; every run tries again"
                ),
            );
        }
        Ok(())
    }
}
