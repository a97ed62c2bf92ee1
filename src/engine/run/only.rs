//! `sync --only TABLE`: one table's changes, both ways, and nothing else.
//! Its rows are stamped and published in this site's change-log, and its
//! rows in the other sites' segments are joined; every other table's
//! changes stay pending here and unapplied from the others' logs. No
//! watermark or acknowledgement moves (the segments were not applied
//! whole), so the next full sync reads those segments again and the join,
//! being idempotent, carries the rest. Patient files are rewritten by that
//! full sync too: rewriting one now would mean joining all of its tables.

use std::collections::{BTreeMap, BTreeSet};

use crate::changelog::{CatchUp, catch_up};
use crate::engine::EngineError;
use crate::engine::report::{EventKind, counted};
use crate::model::PatientDoc;

use super::{Run, SEGMENT_BYTES, SEGMENT_ROWS};

/// Meta key: rows of each table that a `sync --only` run read in other
/// sites' segments and left for the next full sync (JSON object).
pub(crate) const TABLES_WAITING: &str = "tables_waiting";

/// The trigger a table run is recorded with (Latest Logs reads it back
/// with [`trigger_table`]).
pub fn table_trigger(table: &str) -> String {
    format!("{}{table}", crate::db::TABLE_RUN_PREFIX)
}

/// The table of a table run's trigger.
pub fn trigger_table(trigger: &str) -> Option<&str> {
    trigger.strip_prefix(crate::db::TABLE_RUN_PREFIX)
}

/// The table a `sync --only` run carries, and what it left.
pub(super) struct OnlyTable {
    pub(super) table: String,
    /// Rows of other tables read in the others' segments and not applied.
    pub(super) left: BTreeMap<String, u64>,
}

impl OnlyTable {
    pub(super) fn new(table: String) -> OnlyTable {
        OnlyTable { table, left: BTreeMap::new() }
    }

    /// Keeps the rows of this table in `docs`; counts the rest as left.
    pub(super) fn keep_own(&mut self, docs: &mut BTreeMap<String, PatientDoc>) {
        for doc in docs.values_mut() {
            doc.rows.retain(|key, _| {
                let ours = key.table == self.table;
                if !ours {
                    *self.left.entry(key.table.clone()).or_default() += 1;
                }
                ours
            });
        }
        docs.retain(|_, doc| !doc.rows.is_empty());
    }
}

impl Run<'_> {
    /// The steps of a `sync --only` run: the guard, this table's export
    /// (its change-log segments only), this table's rows from the others'
    /// segments, the deletion guard for this table's rows, and for the
    /// documents table its files.
    pub(super) fn execute_table(&mut self) -> Result<(), EngineError> {
        let table = self.only.as_ref().expect("a table run").table.clone();
        self.progress.step("checking the folder", 0);
        self.guard()?;
        self.refuse_table_run(&table)?;
        self.remove_leftovers()?;
        self.progress.step("recording local changes", 0);
        loop {
            let mut w = self.db.begin_write(self.now_ms)?;
            let more = w.stamp_pending_of(Some(&table), SEGMENT_ROWS, SEGMENT_BYTES)?;
            let stamped = w.commit()?;
            self.progress.advance(stamped.rows as u64);
            self.note_stamped(stamped);
            if !more {
                break;
            }
        }
        let documents = self.db.mapping().documents().is_some_and(|d| d.table == table);
        if documents {
            self.export_documents()?;
        }
        self.write_outbox()?;
        self.import_table(&table)?;
        self.show_parked_rows()?;
        // Only this table's own held deletions (see `guard_deletes`).
        self.guard_deletes()?;
        // Rows the app changed in this table while the import ran.
        self.write_outbox()?;
        if documents {
            self.place_documents()?;
        }
        self.say_what_waits(&table)
    }

    /// What a table run cannot do safely: it reads change-logs only, and
    /// must not publish rows before this site has caught up with the
    /// family's purges.
    fn refuse_table_run(&self, table: &str) -> Result<(), EngineError> {
        let why = if self.db.first_export_unfinished()? {
            "this site's first export is not finished"
        } else if !self.settings.use_logs {
            "use_logs is off, so every sync reads every patient file, and a sync of one table reads change-logs"
        } else if self.purges.new_horizon.is_some() {
            "other sites removed deletions this site has not applied yet"
        } else {
            return Ok(());
        };
        Err(EngineError::Refused(format!(
            "{table} was not synced on its own: {why}; run a full sync (`clinicsync sync`, or Sync Now)"
        )))
    }

    /// This table's rows from every other site's segments after its
    /// watermark. A site whose log this site cannot continue (it compacted
    /// changes never read here) needs a full scan, which a table run does
    /// not do: said, and the run is partial.
    fn import_table(&mut self, table: &str) -> Result<(), EngineError> {
        let watermarks = self.db.watermarks()?;
        let plans: Vec<_> = self
            .sites
            .peers
            .iter()
            .map(|p| {
                let site = p.file.site;
                let plan =
                    catch_up(watermarks.get(&site).copied().unwrap_or(0), p.file.head_seq, p.file.oldest_seq);
                (site, p.file.name.clone(), plan)
            })
            .collect();
        let mut touched = BTreeSet::new();
        for (site, name, plan) in plans {
            match plan {
                CatchUp::UpToDate => {}
                CatchUp::Segments { from, to } => self.read_segments(site, &name, from, to, &mut touched)?,
                CatchUp::FullScanThen { .. } => self.rec.skipped(
                    EventKind::Gap,
                    None,
                    format!(
                        "site {name} compacted changes this site never read: only a full sync reads them (from the patient files), so its changes to {table} wait for one"
                    ),
                ),
            }
        }
        Ok(())
    }

    /// Ends a table run with one sentence: which tables still wait, and
    /// what for (changes here to send, changes from others to apply).
    fn say_what_waits(&mut self, table: &str) -> Result<(), EngineError> {
        let left = std::mem::take(&mut self.only.as_mut().expect("a table run").left);
        let to_send = self.db.pending_by_table()?;
        self.db.set_meta(TABLES_WAITING, &serde_json::to_string(&left).expect("a map serialises"))?;
        let mut tables: BTreeSet<&String> = left.keys().collect();
        tables.extend(to_send.keys().filter(|t| *t != table));
        let waits: Vec<String> = tables
            .into_iter()
            .map(|t| {
                let mut what = Vec::new();
                if let Some(n) = to_send.get(t) {
                    what.push(format!("{} here to send", counted(*n, "changed row", "changed rows")));
                }
                if let Some(n) = left.get(t) {
                    what.push(format!("{} from other sites to apply", counted(*n, "row", "rows")));
                }
                format!("{t} ({})", what.join(", "))
            })
            .collect();
        let message = if waits.is_empty() {
            format!("synced {table} only; no other table has changes waiting")
        } else {
            format!("synced {table} only; still waiting for a full sync: {}", waits.join("; "))
        };
        self.rec.info(EventKind::Tables, None, message);
        Ok(())
    }
}
