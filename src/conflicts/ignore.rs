//! Names that cloud clients, operating systems and office programs leave in
//! a synced folder and that are never clinicsync data: temporary, partial,
//! placeholder and metadata files. The importer skips them silently.

use globset::{Glob, GlobSet, GlobSetBuilder};

/// Glob patterns matched against a single file or directory name.
const PATTERNS: &[&str] = &[
    // Syncthing: in-progress downloads, its marker folder and versions.
    ".syncthing.*.tmp",
    "~syncthing~*.tmp",
    ".stfolder",
    ".stignore",
    ".stversions",
    // Dropbox.
    ".dropbox",
    ".dropbox.attr",
    ".dropbox.cache",
    // Nextcloud / ownCloud.
    "*.part",
    ".owncloudsync.log*",
    ".nextcloudsync.log*",
    ".sync_*.db*",
    "._sync_*.db*",
    // Resilio Sync.
    "*.!sync",
    ".sync",
    // iCloud Drive placeholders.
    ".*.icloud",
    // Synology Drive and NAS metadata.
    "@eaDir",
    ".SynologyWorkingDirectory",
    "#recycle",
    // Google Drive and OneDrive transfer folders and markers.
    ".tmp.drivedownload",
    ".tmp.driveupload",
    ".~*",
    // Seafile.
    ".seafile-data",
    "seafile-ignore.txt",
    // rclone bisync's listings and test markers.
    "*.lst",
    "*.lst-new",
    ".rclone-bisync-marker",
    // Browsers, rclone and generic partial downloads.
    "*.partial",
    "*.crdownload",
    "*.tmp",
    // Office lock files and our own fallback temp names (`~$<name>.tmp`).
    "~$*",
    ".~lock.*",
    // Operating system litter.
    "desktop.ini",
    "Desktop.ini",
    "Thumbs.db",
    ".DS_Store",
    "._*",
    ".Trash*",
    ".directory",
];

/// The compiled ignore rules.
pub struct IgnoreRules {
    set: GlobSet,
}

impl IgnoreRules {
    pub fn new() -> IgnoreRules {
        let mut builder = GlobSetBuilder::new();
        for pattern in PATTERNS {
            builder.add(Glob::new(pattern).expect("the built-in ignore patterns are valid globs"));
        }
        IgnoreRules { set: builder.build().expect("the built-in ignore patterns compile") }
    }

    /// True when a file or directory with this name is never clinicsync data.
    pub fn is_ignored(&self, name: &str) -> bool {
        self.set.is_match(name)
    }
}

impl Default for IgnoreRules {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_litter_is_ignored_and_our_names_are_not() {
        let rules = IgnoreRules::new();
        for name in [
            ".syncthing.0123abcd.xml.tmp",
            "0123.xml.partial",
            ".0123.xml.icloud",
            "desktop.ini",
            ".DS_Store",
            ".dropbox.cache",
            "~$0123.xml.tmp",
            "x.xml.part",
        ] {
            assert!(rules.is_ignored(name), "{name} should be ignored");
        }
        for name in ["0123456789abcdef0123456789abcdef.xml", "ab", "clinicsync.xml"] {
            assert!(!rules.is_ignored(name), "{name} should not be ignored");
        }
    }
}
