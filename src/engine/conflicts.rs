//! Conflict records as people read them: the patient by name, and who
//! typed each value (a site's name, "this site" for this one) and when.
//! The page and `clinicsync conflicts` both show these.

use std::collections::HashMap;
use std::path::Path;

use super::EngineError;
use crate::db::{ConflictRecord, Db};
use crate::folder::{DiskFolder, IgnoreRules};
use crate::model::Hlc;
use crate::xmlstore::format_time;

/// A record as people read it.
pub struct ConflictView {
    pub record: ConflictRecord,
    pub patient: String,
    /// The row's name for a row of a child table ("2026-12-01T10:00 Dr
    /// Smith" for an appointment); `None` for the patient's own row.
    pub row: Option<String>,
    /// Who typed the value that lost, and the one shown ("this site" for
    /// this one), and when.
    pub lost_by: String,
    pub lost_at: Option<String>,
    pub kept_by: String,
    pub kept_at: Option<String>,
}

impl ConflictView {
    /// The side typed at `site` (its full id), if either was: `Some(true)`
    /// for the value shown, `Some(false)` for the other.
    pub fn side_typed_at(&self, site: &str) -> Option<bool> {
        let at = |hlc: &str| Hlc::parse(hlc).is_ok_and(|h| h.site().to_string() == site);
        if at(&self.record.winner_hlc) && self.record.kind != "deleted" {
            Some(true)
        } else if at(&self.record.hlc) {
            Some(false)
        } else {
            None
        }
    }

    /// The sites that typed the two values (full ids).
    pub fn sites(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (hlc, name) in [(&self.record.winner_hlc, &self.kept_by), (&self.record.hlc, &self.lost_by)] {
            if let Ok(h) = Hlc::parse(hlc) {
                out.push((h.site().to_string(), name.clone()));
            }
        }
        out
    }
}

/// The family's sites by name, for saying who made a change.
pub(crate) struct SiteNames {
    names: HashMap<String, String>,
    own: String,
}

impl SiteNames {
    /// The names in the site files the folder holds (none when it cannot
    /// be read: then sites are named by their short ids).
    pub(crate) fn read(db_path: &Path) -> Result<SiteNames, EngineError> {
        let cfg = Db::open(db_path)?.site_config()?;
        let folder = DiskFolder::new(cfg.folder.clone(), Some(super::staging_dir(db_path)));
        let found =
            super::sites::read(&folder, &IgnoreRules::new(), cfg.family, cfg.site).unwrap_or_default();
        let names = found
            .peers
            .iter()
            .map(|p| (p.file.site.to_string(), p.file.name.clone()))
            .chain(std::iter::once((cfg.site.to_string(), "this site".to_owned())))
            .collect();
        Ok(SiteNames { names, own: cfg.site.to_string() })
    }

    /// Who made the change stamped `hlc` ("this site", a site's name, or
    /// its short id when its file is not read), and when.
    pub(crate) fn who(&self, hlc: &str) -> (String, Option<String>) {
        match Hlc::parse(hlc) {
            Ok(h) => {
                let site = h.site().to_string();
                let name = self.names.get(&site).cloned().unwrap_or_else(|| {
                    if site == self.own {
                        "this site".to_owned()
                    } else {
                        format!("site {}", h.site().short())
                    }
                });
                (name, Some(format_time(h.wall_ms())))
            }
            Err(_) => ("another site".to_owned(), None),
        }
    }
}

/// The open records (or, with `all`, every record) as people read them.
pub fn conflict_views(db_path: &Path, all: bool) -> Result<Vec<ConflictView>, EngineError> {
    let sites = SiteNames::read(db_path)?;
    let who = |hlc: &str| sites.who(hlc);
    let db = Db::open(db_path)?;
    let mut names: HashMap<String, String> = HashMap::new();
    let mut out = Vec::new();
    for record in db.conflicts(!all)? {
        let patient_id = record.patient.clone().unwrap_or_default();
        let patient = match names.get(&patient_id) {
            Some(n) => n.clone(),
            None => {
                let n =
                    db.patient_name(&patient_id)?.unwrap_or_else(|| "a patient without a name".to_owned());
                names.insert(patient_id.clone(), n.clone());
                n
            }
        };
        let (lost_by, lost_at) = who(&record.hlc);
        let (kept_by, kept_at) = who(&record.winner_hlc);
        let row = if record.table == db.mapping().root.table {
            None
        } else {
            db.row_name(&record.table, &record.pk)?
        };
        out.push(ConflictView { row, record, patient, lost_by, lost_at, kept_by, kept_at });
    }
    Ok(out)
}
