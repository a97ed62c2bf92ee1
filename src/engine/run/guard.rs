//! The run's first step: refuse to run where running could do harm (a copied
//! database, another family's folder, a folder gone), read the other sites'
//! files, and clear what an interrupted run left behind.

use crate::conflicts::decorated_copy_of;
use crate::engine::EngineError;
use crate::engine::host::{file_time_now_ms, machine_fingerprint};
use crate::folder::ReadError;
use crate::folder::layout::{LOG_DIR, MANIFEST, PATIENTS_DIR, SITES_DIR};
use crate::model::Hlc;
use crate::xmlstore::decode_manifest;

use super::Run;
use crate::engine::report::EventKind;
use crate::engine::sites::Problem;

impl Run<'_> {
    /// Step 1: refuse to run where running could do harm.
    pub(super) fn guard(&mut self) -> Result<(), EngineError> {
        let here = machine_fingerprint();
        if self.cfg.machine != here {
            return Err(EngineError::CopiedDatabase {
                db: self.db.path().display().to_string(),
                recorded: self.cfg.machine.clone(),
                here,
            });
        }
        let folder_display = self.cfg.folder.display().to_string();
        if !self.cfg.folder.is_dir() {
            return Err(EngineError::FolderUnreachable { folder: folder_display });
        }
        let manifest = match self.folder.read(MANIFEST, 1 << 20) {
            Ok(bytes) => decode_manifest(&bytes).map_err(|e| EngineError::BadManifest {
                folder: folder_display.clone(),
                reason: e.to_string(),
            })?,
            Err(ReadError::NotFound) => return Err(EngineError::NotAFamily { folder: folder_display }),
            Err(e) => return Err(EngineError::BadManifest { folder: folder_display, reason: e.to_string() }),
        };
        if let Some((site, at)) = manifest.deleted {
            return Err(EngineError::FamilyDeleted {
                folder: folder_display,
                site: site.short(),
                at: crate::xmlstore::format_time(at),
            });
        }
        if manifest.family != self.cfg.family {
            return Err(EngineError::OtherFamily {
                folder: folder_display,
                theirs: manifest.family.short(),
                ours: self.cfg.family.short(),
            });
        }
        self.find_decorated_folders()?;
        let sites = super::super::sites::read(&self.folder, &self.ignore, self.cfg.family, self.cfg.site)
            .map_err(|e| self.io("cannot list sites/", e))?;
        if let Some((file, client)) = sites.own_copy {
            return Err(EngineError::SiteOnTwoMachines { file, client: client.label() });
        }
        for problem in &sites.problems {
            match problem {
                Problem::Unreadable { .. } => {
                    self.rec.skipped(EventKind::SiteFile, Some(problem.path()), problem.message())
                }
                Problem::CopyOfOther { .. } => {
                    self.rec.warning(EventKind::ConflictCopy, Some(problem.path()), problem.message())
                }
                _ => self.rec.warning(EventKind::SiteFile, Some(problem.path()), problem.message()),
            }
        }
        if let Some(own) = &sites.own {
            let ours = self.db.head_seq()?;
            if own.file.head_seq > ours {
                return Err(EngineError::RestoredBackup {
                    db: self.db.path().display().to_string(),
                    published: own.file.head_seq,
                    ours,
                });
            }
        }
        let horizon = sites.purge_horizon();
        let applied = self.db.meta("horizon_applied")?.and_then(|h| Hlc::parse(&h).ok());
        if horizon.is_some() && horizon > applied {
            self.purges.new_horizon = horizon;
        }
        self.sites = sites;
        Ok(())
    }

    /// Top-level folders a cloud client decorated: a copy of `patients/`
    /// is scanned like a folder of copies; copies of `sites/` and `log/`
    /// are reported and left alone (their content also reaches this site
    /// through the patient files).
    pub(super) fn find_decorated_folders(&mut self) -> Result<(), EngineError> {
        let root = self.folder.list("").map_err(|e| self.io("cannot list the folder", e))?;
        for entry in root {
            if !entry.is_dir || self.ignore.is_ignored(&entry.name) {
                continue;
            }
            if let Some(client) = decorated_copy_of(&entry.name, PATIENTS_DIR) {
                self.copies.decorated.push((entry.name, client));
                continue;
            }
            for top in [SITES_DIR, LOG_DIR] {
                if let Some(client) = decorated_copy_of(&entry.name, top) {
                    self.rec.warning(
                        EventKind::ConflictCopy,
                        Some(&entry.name),
                        format!(
                            "is a copy of the {top}/ folder made by {}; clinicsync does not read it, and it can be deleted",
                            client.label()
                        ),
                    );
                }
            }
        }
        Ok(())
    }

    /// Removes the temp files a killed run left: in the staging directory
    /// beside the database (every run: one listing), and where there is
    /// none, beside their targets in the folder, after a run that did not
    /// finish (the full scan also removes any it meets).
    pub(super) fn remove_leftovers(&mut self) -> Result<(), EngineError> {
        match self.folder.remove_left_staged(file_time_now_ms()) {
            Ok(0) => {}
            Ok(n) => self.rec.info(
                EventKind::Leftovers,
                None,
                format!("removed {n} temp files that a stopped run left beside the database"),
            ),
            Err(e) => self.rec.warning(
                EventKind::Leftovers,
                None,
                format!("could not remove the temp files a stopped run left beside the database: {e}"),
            ),
        }
        if self.folder.uses_staging() || !self.after_interruption {
            return Ok(());
        }
        let mut dirs = vec![String::new(), SITES_DIR.to_owned(), format!("{LOG_DIR}/{}", self.cfg.site)];
        let shards = self.folder.list(PATIENTS_DIR).map_err(|e| self.io("cannot list patients/", e))?;
        dirs.extend(shards.into_iter().filter(|e| e.is_dir).map(|e| format!("{PATIENTS_DIR}/{}", e.name)));
        let mut removed = 0;
        for dir in dirs {
            match self.folder.remove_left_temps(&dir, file_time_now_ms()) {
                Ok(paths) => removed += paths.len(),
                Err(e) => self.rec.warning(
                    EventKind::Leftovers,
                    Some(&dir),
                    format!("could not remove the temp files a stopped run left: {e}"),
                ),
            }
        }
        if removed > 0 {
            self.rec.info(
                EventKind::Leftovers,
                None,
                format!("removed {removed} temp files that a stopped run left in the folder"),
            );
        }
        Ok(())
    }
}
