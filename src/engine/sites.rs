//! The family's site files (`sites/<site>.xml`), read and judged in one
//! place: the run, `status` and `tombstones` see the same sites and the same
//! problems, so `tombstones` never calls purgeable what the run will not
//! purge.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use crate::conflicts::{Classified, Client, FileKind, classify_path};
use crate::folder::layout::{LOG_DIR, SITES_DIR};
use crate::folder::{DiskFolder, IgnoreRules, ReadError};
use crate::model::{FamilyId, Hlc, RowKey, RowState, SiteId};
use crate::xmlstore::{DecodeError, PurgedKey, SiteFile, decode_site};

/// Largest site file read (a site file lists at most a few thousand purged
/// keys).
const MAX_SITE_FILE: u64 = 1 << 20;

/// A site as its site file shows it.
pub(crate) struct PeerFile {
    pub(crate) file: SiteFile,
    /// The site file's modification time, for sites that never synced.
    pub(crate) mtime_ms: u64,
}

impl PeerFile {
    /// When the site was last seen syncing, for whether it still holds
    /// compaction and purging back: never, once it left the family.
    pub(crate) fn last_seen_ms(&self) -> u64 {
        match self.file.left_ms {
            Some(_) => 0,
            None => self.file.last_sync_ms.unwrap_or(0).max(self.mtime_ms),
        }
    }
}

/// Something wrong with one file in `sites/`.
pub(crate) enum Problem {
    /// Another site's file cannot be read now (damaged, being written, not
    /// a regular file): what that site has applied is not known.
    Unreadable { path: String, reason: String },
    /// This site's own file cannot be read; the run writes it again.
    OwnUnreadable { path: String, reason: String },
    /// A site file of another family.
    OtherFamily { path: String },
    /// A file named for one site holding another.
    WrongName { path: String, holds: SiteId },
    /// A cloud client's copy of another site's file: that site id is in use
    /// on two computers.
    CopyOfOther { path: String, of: String, client: Client },
}

impl Problem {
    pub(crate) fn path(&self) -> &str {
        match self {
            Problem::Unreadable { path, .. }
            | Problem::OwnUnreadable { path, .. }
            | Problem::OtherFamily { path }
            | Problem::WrongName { path, .. }
            | Problem::CopyOfOther { path, .. } => path,
        }
    }

    /// What is wrong and what happens, as a sentence that follows the path.
    pub(crate) fn message(&self) -> String {
        match self {
            Problem::Unreadable { reason, .. } => format!("cannot be read: {reason}"),
            Problem::OwnUnreadable { reason, .. } => {
                format!("this site's own file is unreadable ({reason}); it will be rewritten")
            }
            Problem::OtherFamily { .. } => "belongs to another family; ignored".into(),
            Problem::WrongName { holds, .. } => {
                format!("holds site {} under another name; ignored", holds.short())
            }
            Problem::CopyOfOther { of, client, .. } => format!(
                "is a copy of {of} made by {}: that site id seems to be in use on two computers; that site stops itself when it sees this copy; delete the copy once it has run `clinicsync reassign`",
                client.label()
            ),
        }
    }

    /// Whether it leaves a site's progress unknown: then nothing that waits
    /// for every site (compaction, purging) goes ahead.
    pub(crate) fn leaves_a_site_unknown(&self) -> bool {
        matches!(self, Problem::Unreadable { .. })
    }
}

/// What `sites/` says.
#[derive(Default)]
pub(crate) struct Sites {
    /// The other sites of this family, each from a readable file named for it.
    pub(crate) peers: Vec<PeerFile>,
    /// This site's own file, when readable and of this family.
    pub(crate) own: Option<PeerFile>,
    /// A cloud client's copy of this site's own file, and the client: this
    /// site id is in use on two computers.
    pub(crate) own_copy: Option<(String, Client)>,
    pub(crate) problems: Vec<Problem>,
}

impl Sites {
    /// Whether every site's progress is known (no site file was unreadable).
    pub(crate) fn complete(&self) -> bool {
        !self.problems.iter().any(Problem::leaves_a_site_unknown)
    }

    /// The files that could not be read, for a sentence saying what waits.
    pub(crate) fn unreadable(&self) -> impl Iterator<Item = &str> {
        self.problems.iter().filter(|p| p.leaves_a_site_unknown()).map(Problem::path)
    }

    /// The latest purge horizon another site publishes.
    pub(crate) fn purge_horizon(&self) -> Option<Hlc> {
        self.peers.iter().filter_map(|p| p.file.purge_horizon).max()
    }

    /// The rows the other sites say they purged lately (`<purged>`), each
    /// as the site that purged it at the highest causal length lists it.
    pub(crate) fn purged_elsewhere(&self) -> PurgedElsewhere {
        let mut listed: BTreeMap<RowKey, PurgedKey> = BTreeMap::new();
        for p in self.peers.iter().flat_map(|peer| &peer.file.purged) {
            let key = RowKey { table: p.table.clone(), pk: p.pk.clone() };
            match listed.entry(key) {
                Entry::Vacant(slot) => {
                    slot.insert(p.clone());
                }
                Entry::Occupied(mut slot) if p.cl > slot.get().cl => {
                    slot.insert(p.clone());
                }
                Entry::Occupied(_) => {}
            }
        }
        PurgedElsewhere(listed)
    }
}

/// The rows other sites purged lately, by key.
pub(crate) struct PurgedElsewhere(pub(crate) BTreeMap<RowKey, PurgedKey>);

impl PurgedElsewhere {
    /// Whether `row` is a tombstone another site purged. A site purges only
    /// what every active site has, so a patient file lacking it altogether
    /// is not behind for it.
    pub(crate) fn has(&self, key: &RowKey, row: &RowState) -> bool {
        !row.is_alive() && self.0.get(key).is_some_and(|p| p.cl >= row.cl)
    }
}

/// Reads every site file of the folder for the site `own` of `family`.
pub(crate) fn read(
    folder: &DiskFolder,
    ignore: &IgnoreRules,
    family: FamilyId,
    own: SiteId,
) -> std::io::Result<Sites> {
    let mut sites = Sites { peers: Vec::new(), own: None, own_copy: None, problems: Vec::new() };
    let own_hex = own.to_string();
    let own_name = format!("{own_hex}.xml");
    for entry in folder.list(SITES_DIR)? {
        if ignore.is_ignored(&entry.name) || entry.is_dir {
            continue;
        }
        let path = format!("{SITES_DIR}/{}", entry.name);
        match classify_path(&path) {
            Classified::Original(_) => {}
            Classified::Copy { of: FileKind::Site { site }, client } if site == own_hex => {
                sites.own_copy = Some((path, client));
                continue;
            }
            Classified::Copy { of, client } => {
                sites.problems.push(Problem::CopyOfOther { path, of: of.path(), client });
                continue;
            }
            Classified::Unknown => continue,
        }
        let is_own = entry.name == own_name;
        let file = match folder.read(&path, MAX_SITE_FILE) {
            Ok(bytes) => match decode_site(&bytes) {
                Ok(file) => file,
                Err(e) if is_own => {
                    sites.problems.push(Problem::OwnUnreadable { path, reason: e.to_string() });
                    continue;
                }
                Err(e) => {
                    let reason = format!("{e}; {}", retry_hint(&e));
                    sites.problems.push(Problem::Unreadable { path, reason });
                    continue;
                }
            },
            Err(ReadError::NotFound) => continue,
            Err(e) => {
                sites.problems.push(Problem::Unreadable { path, reason: format!("{e}; will retry") });
                continue;
            }
        };
        if file.family != family {
            sites.problems.push(Problem::OtherFamily { path });
            continue;
        }
        let mtime_ms = u64::try_from(entry.mtime_ns / 1_000_000).unwrap_or(0);
        if is_own {
            sites.own = Some(PeerFile { file, mtime_ms });
        } else if format!("{}.xml", file.site) != entry.name {
            sites.problems.push(Problem::WrongName { path, holds: file.site });
        } else {
            sites.peers.push(PeerFile { file, mtime_ms });
        }
    }
    Ok(sites)
}

/// When a file that could not be decoded is worth trying again.
pub(crate) fn retry_hint(e: &DecodeError) -> &'static str {
    if e.is_transient() { "will retry next run" } else { "will retry once it is repaired or replaced" }
}

/// Sites with a change-log in the folder but no site file among `peers`.
pub(crate) fn unknown_sites(
    folder: &DiskFolder,
    peers: &[PeerFile],
    own: SiteId,
) -> std::io::Result<Vec<SiteId>> {
    let mut out = Vec::new();
    for entry in folder.list(LOG_DIR)? {
        if let Ok(site) = SiteId::parse(&entry.name)
            && entry.is_dir
            && site != own
            && !peers.iter().any(|p| p.file.site == site)
        {
            out.push(site);
        }
    }
    Ok(out)
}
