//! Where each kind of file lives in the folder (format version 1).

use crate::model::{SiteId, shard_of};

/// The family manifest.
pub const MANIFEST: &str = "clinicsync.xml";
/// Site files: `sites/<site>.xml`.
pub const SITES_DIR: &str = "sites";
/// Patient files: `patients/<shard>/<name>.xml`.
pub const PATIENTS_DIR: &str = "patients";

pub fn site_path(site: SiteId) -> String {
    format!("{SITES_DIR}/{site}.xml")
}

/// The path of the patient file with this 32-hex-digit stem.
pub fn patient_path(stem: &str) -> String {
    format!("{PATIENTS_DIR}/{}/{stem}.xml", shard_of(stem))
}
