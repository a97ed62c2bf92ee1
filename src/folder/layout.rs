//! Where each kind of file lives in the folder (format version 1).

use crate::model::{SiteId, shard_of};

/// The family manifest.
pub const MANIFEST: &str = "clinicsync.xml";
/// Site files: `sites/<site>.xml`.
pub const SITES_DIR: &str = "sites";
/// Change-log segments: `log/<site>/<seq>.xml`.
pub const LOG_DIR: &str = "log";
/// Patient files: `patients/<shard>/<name>.xml`.
pub const PATIENTS_DIR: &str = "patients";

pub fn site_path(site: SiteId) -> String {
    format!("{SITES_DIR}/{site}.xml")
}

/// The path of the patient file with this 32-hex-digit stem.
pub fn patient_path(stem: &str) -> String {
    format!("{PATIENTS_DIR}/{}/{stem}.xml", shard_of(stem))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conflicts::{Classified, FileKind, classify_path};

    #[test]
    fn the_name_grammar_knows_every_path_we_write() {
        let stem = "00112233445566778899aabbccddeeff";
        let site = SiteId::parse(stem).unwrap();
        assert_eq!(classify_path(MANIFEST), Classified::Original(FileKind::Manifest));
        assert_eq!(
            classify_path(&site_path(site)),
            Classified::Original(FileKind::Site { site: stem.into() })
        );
        assert_eq!(
            classify_path(&patient_path(stem)),
            Classified::Original(FileKind::Patient { stem: stem.into() })
        );
        assert_eq!(
            classify_path(&crate::changelog::segment_path(site, 42)),
            Classified::Original(FileKind::Segment { site: stem.into(), seq: 42 })
        );
    }
}
