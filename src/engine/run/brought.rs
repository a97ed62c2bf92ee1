//! Who changed what, for a run's sentence in Latest Logs: per site whose
//! changes a run brought in, how many patients they touched, and the first
//! few patients by name with what changed of each ("Jane Smith (phone,
//! appointments)"). Memory stays small: beyond the named few, a patient
//! costs one hash per site.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};

use super::Run;
use crate::engine::EngineError;
use crate::engine::report::{BroughtIn, ChangedPatient};
use crate::model::SiteId;

/// Patients named per site in a run's sentence; the rest are counted.
const NAMED: usize = 5;

/// What a run brought in so far, by the site that made each change.
#[derive(Default)]
pub(super) struct Tally {
    by_site: BTreeMap<SiteId, SiteTally>,
}

#[derive(Default)]
struct SiteTally {
    seen: HashSet<u64>,
    named: Vec<(String, BTreeSet<String>)>,
}

impl Tally {
    /// Adds what one patient's document changed (`ApplyOutcome::changed`).
    pub(super) fn note(&mut self, patient: &str, changed: BTreeMap<SiteId, BTreeSet<String>>) {
        let mut hasher = DefaultHasher::new();
        patient.hash(&mut hasher);
        let hash = hasher.finish();
        for (site, what) in changed {
            let tally = self.by_site.entry(site).or_default();
            if let Some((_, said)) = tally.named.iter_mut().find(|(p, _)| p == patient) {
                said.extend(what);
            } else if tally.seen.insert(hash) && tally.named.len() < NAMED {
                tally.named.push((patient.to_owned(), what));
            }
        }
    }
}

impl Run<'_> {
    /// The tally in words: sites by name ("this site" for this one),
    /// patients by name, a deletion still held said as such.
    pub(super) fn brought_in(&mut self) -> Result<Vec<BroughtIn>, EngineError> {
        let tally = std::mem::take(&mut self.brought);
        let mut out = Vec::with_capacity(tally.by_site.len());
        for (site, SiteTally { seen, named }) in tally.by_site {
            let name = if site == self.cfg.site {
                "this site".to_owned()
            } else {
                match self.sites.peers.iter().find(|p| p.file.site == site) {
                    Some(p) => p.file.name.clone(),
                    None => format!("site {}", site.short()),
                }
            };
            let mut patients = Vec::with_capacity(named.len());
            for (id, mut changed) in named {
                // A deleted patient's rows went with it: the deletion says
                // it all.
                if changed.contains("deleted") {
                    let held = self.db.patient_deletion_held(&id)?;
                    changed =
                        BTreeSet::from([
                            if held { "deletion held for you to decide" } else { "deleted" }.to_owned()
                        ]);
                }
                let name = self.db.patient_name(&id)?;
                patients.push(ChangedPatient { id, name, changed: changed.into_iter().collect() });
            }
            out.push(BroughtIn { site: name, patients: seen.len() as u64, named: patients });
        }
        Ok(out)
    }
}
