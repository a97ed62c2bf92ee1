//! `clinicsync verify`: reads every file of the family's folder and checks
//! it whole: the manifest, every site file, each site's change-log (every
//! segment decodes, none is missing between the oldest kept and the last
//! announced), every patient file (trailer, format, name, and whether it
//! holds what this database holds), and every document body (its name is
//! its sha256; the bodies this site's rows name are there). One line per
//! problem with what to do; nothing is changed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Serialize;

use super::host::SystemClock;
use super::{EngineError, sites, staging_dir};
use crate::conflicts::{Classified, FileKind, classify_path};
use crate::db::Db;
use crate::folder::layout::{LOG_DIR, MANIFEST, PATIENTS_DIR};
use crate::folder::{DiskFolder, IgnoreRules, ReadError, body_io};
use crate::model::{Clock, RowKey, SiteId, body_at, patient_file_name, shown};
use crate::xmlstore::{Limits, decode_manifest, decode_patient, decode_segment, format_time};

/// What `verify` found. Field names are part of the `--json` output.
#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    pub at_ms: u64,
    pub at: String,
    /// Files read and checked, by kind.
    pub checked: Checked,
    pub problems: Vec<VerifyProblem>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Checked {
    pub site_files: u64,
    pub segments: u64,
    pub patient_files: u64,
    pub document_bodies: u64,
}

/// One problem: the file, what is wrong, what to do.
#[derive(Clone, Debug, Serialize)]
pub struct VerifyProblem {
    pub path: String,
    pub problem: String,
    pub advice: String,
}

/// Where the last verification is kept for the page.
pub(crate) const LAST_VERIFY: &str = "last_verify";

struct Verifier {
    folder: DiskFolder,
    ignore: IgnoreRules,
    limits: Limits,
    checked: Checked,
    problems: Vec<VerifyProblem>,
}

impl Verifier {
    fn problem(&mut self, path: &str, problem: impl Into<String>, advice: &str) {
        self.problems.push(VerifyProblem {
            path: path.to_owned(),
            problem: problem.into(),
            advice: advice.to_owned(),
        });
    }

    /// Every file under `dir` that is not a cloud client's litter.
    fn files_under(&self, dir: &str) -> std::io::Result<Vec<String>> {
        let walked = self.folder.walk(dir)?;
        Ok(walked
            .files
            .into_iter()
            .filter(|(_, e)| !self.ignore.is_ignored(&e.name))
            .map(|(p, _)| p)
            .collect())
    }

    /// Reads a file whole, or says why it cannot be.
    fn read(&mut self, path: &str) -> Option<Vec<u8>> {
        match self.folder.read(path, self.limits.max_file_bytes) {
            Ok(bytes) => Some(bytes),
            Err(ReadError::NotLocal) => {
                self.problem(
                    path,
                    "is online-only on this computer",
                    "set the sync folder to stay on this device",
                );
                None
            }
            Err(e) => {
                self.problem(
                    path,
                    e.to_string(),
                    "if it stays so, run `clinicsync sync` at the site that wrote it",
                );
                None
            }
        }
    }
}

/// Verifies the folder of the database at `db_path`; records the result
/// for the page.
pub fn verify(db_path: &Path) -> Result<VerifyReport, EngineError> {
    super::operation::recorded(
        db_path,
        "verify",
        || verify_folder(db_path),
        |r| {
            let c = &r.checked;
            let n = r.problems.len();
            super::operation::Done {
                outcome: if n == 0 { super::Outcome::Ok } else { super::Outcome::Partial },
                sentence: format!(
                    "verified the folder: {} site files, {} segments, {} patient files and {} document bodies read; {}",
                    c.site_files,
                    c.segments,
                    c.patient_files,
                    c.document_bodies,
                    match n {
                        0 => "no problem found".to_owned(),
                        n => format!("{n} problems found"),
                    }
                ),
                events: r
                    .problems
                    .iter()
                    .map(|p| ("error", Some(p.path.clone()), format!("{}; {}", p.problem, p.advice)))
                    .collect(),
            }
        },
    )
}

fn verify_folder(db_path: &Path) -> Result<VerifyReport, EngineError> {
    let db = Db::open(db_path)?;
    let cfg = db.site_config()?;
    let folder = DiskFolder::new(cfg.folder.clone(), Some(staging_dir(db_path)));
    let mut v = Verifier {
        folder,
        ignore: IgnoreRules::new(),
        limits: Limits::default(),
        checked: Checked::default(),
        problems: Vec::new(),
    };
    let io = |what: &str| {
        let what = what.to_owned();
        move |cause| EngineError::Io { what, cause }
    };

    // The manifest.
    if let Some(bytes) = v.read(MANIFEST) {
        match decode_manifest(&bytes) {
            Ok(m) if m.family == cfg.family => {}
            Ok(m) => v.problem(
                MANIFEST,
                format!("belongs to family {}, not this database's {}", m.family.short(), cfg.family.short()),
                "point this site at its own family's folder (`clinicsync settings folder=...`)",
            ),
            Err(e) => v.problem(MANIFEST, e.to_string(), "restore it from another site's folder"),
        }
    }

    // Site files.
    let found = sites::read(&v.folder, &v.ignore, cfg.family, cfg.site).map_err(io("cannot list sites/"))?;
    for p in &found.problems {
        v.problem(p.path(), p.message(), "the site that owns it rewrites it on its next sync");
    }
    let purged_elsewhere = found.purged_elsewhere();
    let mut heads: BTreeMap<SiteId, (u64, u64)> = BTreeMap::new();
    for peer in found.own.iter().chain(&found.peers) {
        v.checked.site_files += 1;
        heads.insert(peer.file.site, (peer.file.oldest_seq, peer.file.head_seq));
    }

    // Each site's change-log.
    for entry in v.folder.list(LOG_DIR).map_err(io("cannot list log/"))? {
        let Ok(site) = SiteId::parse(&entry.name) else { continue };
        if !entry.is_dir {
            continue;
        }
        let dir = format!("{LOG_DIR}/{site}");
        let mut present = BTreeSet::new();
        for path in v.files_under(&dir).map_err(io(&format!("cannot list {dir}/")))? {
            let Classified::Original(FileKind::Segment { seq, .. }) = classify_path(&path) else { continue };
            present.insert(seq);
            let Some(bytes) = v.read(&path) else { continue };
            v.checked.segments += 1;
            match decode_segment(&bytes, v.limits) {
                Ok(seg) if seg.site == site && seg.seq == seq => {}
                Ok(seg) => v.problem(
                    &path,
                    format!("holds export #{} of site {}, not what its name says", seg.seq, seg.site.short()),
                    "it is not read; the site that owns this log writes its exports again",
                ),
                Err(e) => {
                    v.problem(&path, e.to_string(), "the site that wrote it writes it again on its next sync")
                }
            }
        }
        let Some(&(oldest, head)) = heads.get(&site) else {
            v.problem(&dir, "is a change-log with no site file", "it is read once its site file arrives");
            continue;
        };
        let from = oldest.max(1).max(present.first().copied().unwrap_or(1));
        for seq in from..=head {
            if !present.contains(&seq) {
                v.problem(
                    &crate::changelog::segment_path(site, seq),
                    format!("is missing: site {} announces exports up to #{head}", site.short()),
                    "if it stays missing, the sites that have not applied it read every patient file instead (a full scan)",
                );
            }
        }
    }

    // Patient files, against this database.
    for path in v.files_under(PATIENTS_DIR).map_err(io("cannot list patients/"))? {
        let stem = match classify_path(&path) {
            Classified::Original(FileKind::Patient { stem }) => stem,
            Classified::Copy { client, .. } => {
                v.problem(
                    &path,
                    format!("is a conflict copy made by {}", client.label()),
                    "the next `clinicsync sync` merges it into the original",
                );
                continue;
            }
            _ => continue,
        };
        let Some(bytes) = v.read(&path) else { continue };
        v.checked.patient_files += 1;
        let doc = match decode_patient(&bytes, v.limits) {
            Ok(doc) => doc,
            Err(e) => {
                v.problem(
                    &path,
                    e.to_string(),
                    "`clinicsync sync` at a site that has this patient writes it again",
                );
                continue;
            }
        };
        if patient_file_name(&doc.patient.0) != stem {
            v.problem(
                &path,
                "holds another patient than its name says".to_owned(),
                "it is not read under this name; `clinicsync sync` at a site that has this patient writes its file again",
            );
            continue;
        }
        let ours = db.doc_for_patient(&doc.patient.0)?;
        // A tombstone another site purged need not be in the file.
        if !doc.covers_but(&ours, |key, row| purged_elsewhere.has(key, row)) {
            v.problem(
                &path,
                "lacks changes this database has",
                "run `clinicsync sync` here: it writes them into the file",
            );
        }
    }

    // Document bodies: each named by its sha256, and every body this
    // site's live rows name is there.
    let mut bodies = BTreeSet::new();
    for path in v.files_under("docs").map_err(io("cannot list docs/"))? {
        if path.rsplit('/').next().is_some_and(|name| name.starts_with("~$")) {
            continue;
        }
        let Some(name) = body_at(&path).map(str::to_owned) else {
            v.problem(
                &path,
                "is not a document body clinicsync wrote",
                "clinicsync does not read it; remove it if nobody needs it",
            );
            continue;
        };
        v.checked.document_bodies += 1;
        let found = v
            .folder
            .open_body(&path)
            .map_err(|e| e.to_string())
            .and_then(|mut f| body_io::digest(&mut f).map_err(|e| e.to_string()));
        match found {
            Ok(body) if body.sha256() == name => {
                bodies.insert(name);
            }
            Ok(body) => v.problem(
                &path,
                format!("is damaged: its sha256 is {} ({} bytes)", body.sha256(), body.size),
                "the next full scan of a site that has this document writes it again (`clinicsync sync --full-scan`)",
            ),
            Err(e) => v.problem(&path, format!("cannot be read: {e}"), "if it stays so, check the file and the cloud client"),
        }
    }
    if let Some(table) = db.mapping().documents().map(|d| d.table.clone()) {
        for (pk, _) in db.document_paths()? {
            let key = RowKey { table: table.clone(), pk };
            let Some((true, shown_bodies)) = db.document_bodies(&key)? else { continue };
            if let Some(body) = shown_bodies.last()
                && !bodies.contains(body.sha256())
                && !v.problems.iter().any(|p| p.path == body.folder_path())
            {
                let of = match db.patient_of_row(&key)? {
                    Some(p) => match db.patient_name(&p)? {
                        Some(name) => format!(" of {}", shown(&name)),
                        None => format!(" of patient {}", shown(&p)),
                    },
                    None => String::new(),
                };
                v.problem(
                    &body.folder_path(),
                    format!("is missing: it is the file of document {body}{of}"),
                    "the site that has it writes it again on its next full scan (`clinicsync sync --full-scan`)",
                );
            }
        }
    }

    let at_ms = SystemClock.now_ms();
    let report = VerifyReport { at_ms, at: format_time(at_ms), checked: v.checked, problems: v.problems };
    let summary =
        serde_json::json!({ "at_ms": at_ms, "problems": report.problems.len(), "checked": report.checked });
    db.set_meta(LAST_VERIFY, &summary.to_string())?;
    Ok(report)
}
