//! A fake cloud provider over real directories: one folder per site, a
//! server copy of every file, and a scheduler (the simulation) that decides
//! what each site uploads and receives, and when. It delivers late, out of
//! order and half-written, and resolves two sites' edits of one file the way
//! each real client does, with that client's conflict-copy names.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Whose semantics the provider follows when two sites changed one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// The newer version keeps the name; the older one becomes
    /// `NAME.sync-conflict-DATE-TIME-DEVICE.xml` on every site.
    Syncthing,
    /// The server keeps the first upload; the later one becomes
    /// `NAME (Site N's conflicted copy DATE).xml` on every site.
    Dropbox,
    /// The server keeps the first upload; the losing machine renames its
    /// version to `NAME (conflicted copy DATE TIME).xml` and never uploads it.
    Nextcloud,
    /// Both versions are renamed (`NAME.xml.conflict1`, `.conflict2`) and
    /// the original name disappears, also when both sides wrote the same
    /// bytes.
    Rclone,
    /// The last upload replaces the file; no copy (a Google Drive-like
    /// client).
    LastWriter,
}

pub(crate) const FLAVORS: [Flavor; 5] =
    [Flavor::Syncthing, Flavor::Dropbox, Flavor::Nextcloud, Flavor::Rclone, Flavor::LastWriter];

pub(crate) struct FakeCloud {
    flavor: Flavor,
    roots: Vec<PathBuf>,
    /// The simulation's time: a file the client writes is stamped with it,
    /// as a real client stamps it with the time it wrote it (so a site file
    /// delivered long ago looks old, and a dormant site is dormant).
    clock: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The provider's copy of every file.
    server: BTreeMap<String, Vec<u8>>,
    /// Per site: each file as it was when the site and the server last
    /// agreed on it.
    base: Vec<BTreeMap<String, Vec<u8>>>,
    /// Per site: files delivered only in part so far, with their full bytes.
    partial: Vec<BTreeMap<String, Vec<u8>>>,
    /// Per site: conflict copies the client keeps to itself (Nextcloud).
    local_only: Vec<BTreeSet<String>>,
    /// Makes every conflict copy's name unique.
    conflicts: u64,
    /// Conflict copies made so far.
    pub(crate) copies_made: u64,
}

impl FakeCloud {
    pub(crate) fn new(
        flavor: Flavor,
        roots: Vec<PathBuf>,
        clock: std::sync::Arc<std::sync::atomic::AtomicU64>,
    ) -> FakeCloud {
        let n = roots.len();
        FakeCloud {
            flavor,
            roots,
            clock,
            server: BTreeMap::new(),
            base: vec![BTreeMap::new(); n],
            partial: vec![BTreeMap::new(); n],
            local_only: vec![BTreeSet::new(); n],
            conflicts: 0,
            copies_made: 0,
        }
    }

    fn scan(&self, site: usize) -> BTreeMap<String, Vec<u8>> {
        let root = &self.roots[site];
        let mut out = BTreeMap::new();
        for entry in walkdir::WalkDir::new(root).sort_by_file_name() {
            let entry = entry.expect("walk a site folder");
            if entry.file_type().is_file() {
                let rel = entry.path().strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
                out.insert(rel, fs::read(entry.path()).expect("read a site file"));
            }
        }
        out
    }

    fn write(&self, site: usize, path: &str, bytes: &[u8]) {
        let full = self.roots[site].join(path);
        fs::create_dir_all(full.parent().unwrap()).unwrap();
        fs::write(&full, bytes).unwrap();
        let now = self.clock.load(std::sync::atomic::Ordering::Relaxed);
        let file = fs::File::options().write(true).open(&full).unwrap();
        file.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_millis(now)).unwrap();
    }

    fn remove(&self, site: usize, path: &str) {
        let full = self.roots[site].join(path);
        if full.exists() {
            fs::remove_file(full).unwrap();
        }
    }

    /// Sends every local change of `site` to the server, resolving clashes
    /// the flavor's way. Returns whether the server changed.
    pub(crate) fn upload(&mut self, site: usize) -> bool {
        let local = self.scan(site);
        let mut changed = false;
        self.local_only[site].retain(|p| local.contains_key(p));
        for (path, bytes) in &local {
            if self.partial[site].contains_key(path) || self.local_only[site].contains(path) {
                continue;
            }
            let base = self.base[site].get(path).cloned();
            if base.as_ref() == Some(bytes) {
                continue;
            }
            match self.server.get(path).cloned() {
                // rclone bisync 1.60 compares no contents: the same new
                // bytes written on both sides are "new or changed in both
                // paths", and both sides are renamed.
                Some(theirs)
                    if theirs == *bytes
                        && self.flavor == Flavor::Rclone
                        && Some(&theirs) != base.as_ref() =>
                {
                    self.clash(site, path, bytes.clone(), theirs);
                    changed = true;
                }
                Some(theirs) if theirs == *bytes => {
                    self.base[site].insert(path.clone(), bytes.clone());
                }
                // Nobody else changed it (or they deleted it: an edit wins
                // over a delete).
                server if server == base || server.is_none() => {
                    self.server.insert(path.clone(), bytes.clone());
                    self.base[site].insert(path.clone(), bytes.clone());
                    changed = true;
                }
                Some(theirs) => {
                    self.clash(site, path, bytes.clone(), theirs);
                    changed = true;
                }
                None => unreachable!("a missing server copy is handled above"),
            }
        }
        let gone: Vec<String> = self.base[site]
            .keys()
            .filter(|p| !local.contains_key(*p) && !self.partial[site].contains_key(*p))
            .cloned()
            .collect();
        for path in gone {
            let base = self.base[site].remove(&path);
            if self.server.get(&path) == base.as_ref() {
                self.server.remove(&path);
                changed = true;
            }
        }
        changed
    }

    /// Both `site` (with `ours`) and someone else (with `theirs`, on the
    /// server) changed `path`.
    fn clash(&mut self, site: usize, path: &str, ours: Vec<u8>, theirs: Vec<u8>) {
        self.conflicts += 1;
        self.copies_made += u64::from(self.flavor != Flavor::LastWriter);
        let n = self.conflicts;
        let (dir, name) = path.rsplit_once('/').map_or(("", path), |(d, n)| (d, n));
        let stem = name.strip_suffix(".xml").unwrap_or(name);
        let at = |copy: String| if dir.is_empty() { copy } else { format!("{dir}/{copy}") };
        match self.flavor {
            Flavor::Syncthing => {
                // The upload now is the newer edit: it keeps the name.
                let device: String = format!("SITE{site:03}").chars().take(7).collect();
                let copy = at(format!("{stem}.sync-conflict-20261121-{:06}-{device}.xml", n % 1_000_000));
                self.server.insert(copy, theirs);
                self.server.insert(path.to_owned(), ours.clone());
                self.base[site].insert(path.to_owned(), ours);
            }
            Flavor::Dropbox => {
                let copy =
                    at(format!("{stem} (Site {site}'s conflicted copy 2026-11-{:02}).xml", n % 28 + 1));
                let copy = if self.server.contains_key(&copy) {
                    at(format!("{stem} (Site {site}'s conflicted copy 2026-11-21) ({n}).xml"))
                } else {
                    copy
                };
                fs::rename(self.roots[site].join(path), self.roots[site].join(&copy)).unwrap();
                self.server.insert(copy.clone(), ours.clone());
                self.base[site].insert(copy, ours);
                self.write(site, path, &theirs);
                self.base[site].insert(path.to_owned(), theirs);
            }
            Flavor::Nextcloud => {
                let copy = at(format!("{stem} (conflicted copy 2026-11-21 {:06}).xml", n % 1_000_000));
                fs::rename(self.roots[site].join(path), self.roots[site].join(&copy)).unwrap();
                self.local_only[site].insert(copy);
                self.write(site, path, &theirs);
                self.base[site].insert(path.to_owned(), theirs);
            }
            Flavor::Rclone => {
                let free = |cloud: &FakeCloud, k: u64| -> u64 {
                    let mut k = k;
                    while cloud.server.contains_key(&format!("{path}.conflict{k}")) {
                        k += 2;
                    }
                    k
                };
                let theirs_name = format!("{path}.conflict{}", free(self, 1));
                let ours_name = format!("{path}.conflict{}", free(self, 2));
                self.server.remove(path);
                self.server.insert(theirs_name, theirs);
                fs::rename(self.roots[site].join(path), self.roots[site].join(&ours_name)).unwrap();
                self.server.insert(ours_name.clone(), ours.clone());
                self.base[site].insert(ours_name, ours);
                self.base[site].remove(path);
            }
            Flavor::LastWriter => {
                self.server.insert(path.to_owned(), ours.clone());
                self.base[site].insert(path.to_owned(), ours);
            }
        }
    }

    /// Paths the server has news of for `site`, in a stable order.
    pub(crate) fn pending(&self, site: usize) -> Vec<String> {
        let mut out: BTreeSet<String> = BTreeSet::new();
        for (path, bytes) in &self.server {
            if self.base[site].get(path) != Some(bytes) || self.partial[site].contains_key(path) {
                out.insert(path.clone());
            }
        }
        for path in self.base[site].keys().chain(self.partial[site].keys()) {
            if !self.server.contains_key(path) {
                out.insert(path.clone());
            }
        }
        out.into_iter().collect()
    }

    /// Brings one path at `site` to the server's version, or only its first
    /// half when `half`. A path the site changed locally waits for its
    /// upload (the client never overwrites an unsent local change).
    pub(crate) fn deliver(&mut self, site: usize, path: &str, half: bool) {
        let local = fs::read(self.roots[site].join(path)).ok();
        if let Some(full) = self.partial[site].get(path) {
            let cut = &full[..full.len() / 2];
            if local.as_deref() != Some(cut) {
                // The site changed the half-written file: it is its own now.
                self.partial[site].remove(path);
                return;
            }
        } else if local.as_ref() != self.base[site].get(path) {
            return;
        }
        self.partial[site].remove(path);
        match self.server.get(path).cloned() {
            Some(bytes) if half && bytes.len() > 1 => {
                self.write(site, path, &bytes[..bytes.len() / 2]);
                self.partial[site].insert(path.to_owned(), bytes);
            }
            Some(bytes) => {
                self.write(site, path, &bytes);
                self.base[site].insert(path.to_owned(), bytes);
            }
            None => {
                self.remove(site, path);
                self.base[site].remove(path);
            }
        }
    }

    /// Delivers everything to everyone, whole.
    pub(crate) fn deliver_all(&mut self) -> bool {
        let mut any = false;
        for site in 0..self.roots.len() {
            for path in self.pending(site) {
                self.deliver(site, &path, false);
                any = true;
            }
        }
        any
    }

    /// What the provider knows of one path, for a failure message.
    pub(crate) fn describe(&self, path: &str) -> String {
        let len = |b: Option<&Vec<u8>>| b.map(Vec::len);
        let sites: Vec<String> = (0..self.roots.len())
            .map(|i| {
                format!(
                    "site {i}: base {:?} partial {:?} local-only {} on disk {:?}",
                    len(self.base[i].get(path)),
                    len(self.partial[i].get(path)),
                    self.local_only[i].contains(path),
                    fs::read(self.roots[i].join(path)).ok().map(|b| b.len())
                )
            })
            .collect();
        format!("server {:?}; {}", len(self.server.get(path)), sites.join("; "))
    }

    pub(crate) fn root(&self, site: usize) -> &Path {
        &self.roots[site]
    }
}
