//! The real sync folder on disk. New bytes are written to a staging
//! directory outside the synced tree (on the same volume), made durable (an
//! fsync each, or for a large batch one `syncfs`), then renamed into place,
//! so a cloud client never sees a temporary or half-written file. Where no
//! staging directory on the same volume can be had, the temp file is
//! `~$<name>.tmp` beside the target, a name every major client skips.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::fault::{held_fault, online_only_fault, write_fault};
use super::{Entry, ReadError};

mod bodies;
mod fetch;
mod leftovers;
mod release;
mod walk;
use crate::platform;
pub use bodies::StagedBody;
pub use fetch::Fetched;
pub use leftovers::is_left_temp;
use release::Releaser;
pub use walk::Walked;

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Up to this many directories, a batch's renames are made durable by an
/// fsync of each; beyond, by one syncfs (256 fsyncs of shard directories
/// took a tenth of a millisecond each, 0.5 s of a 10,000-patient first
/// export).
const SYNC_DIRS_ONE_BY_ONE: usize = 8;

/// Up to this many files, a batch's temp files are made durable by an
/// fsync of each; beyond, by one syncfs. A syncfs also waits for every
/// other dirty page of the volume (the database's own writes, other
/// programs'), which for a site file alone cost more than its fsync.
const SYNC_FILES_ONE_BY_ONE: usize = 16;

/// What must be done before the folder changes (see
/// [`DiskFolder::before_changes`]).
pub type BeforeChange = std::sync::Arc<dyn Fn() -> io::Result<()> + Send + Sync>;

/// A sync folder on the local file system.
pub struct DiskFolder {
    root: PathBuf,
    staging: Option<PathBuf>,
    /// Called before every write or removal in the folder.
    before_change: Option<BeforeChange>,
    stats: Cell<FolderStats>,
    /// The paths this folder wrote or removed, when asked to remember them
    /// (the service tells its own writes from a cloud client's with it).
    touched: RefCell<Option<Touched>>,
    /// How this folder's own writes and removals changed the modification
    /// time of the directories under `patients/`: per directory, (before,
    /// after) of each change, in order.
    own_changes: RefCell<DirChanges>,
    /// Names listed that are not UTF-8 (a client on another system made
    /// them), by the path a run knows them as (with U+FFFD where the bytes
    /// were not text): a copy so named is read and removed like any other.
    raw_names: RefCell<std::collections::HashMap<String, PathBuf>>,
    /// Folders inside the root already seen not to be links this run (each
    /// is looked at once, not once per file in it).
    not_links: RefCell<std::collections::HashSet<PathBuf>>,
    /// Files another program held open through every retry, with what was
    /// said (tried again this run without waiting), and online-only files
    /// seen.
    held: RefCell<std::collections::BTreeMap<String, String>>,
    not_local: RefCell<BTreeSet<String>>,
    /// Closes the files a batch replaced, off the writing thread.
    releaser: RefCell<Releaser>,
}

/// Per directory, the (before, after) modification times of each change
/// this folder made in it, in order (`None`: the directory did not exist).
pub type DirChanges = std::collections::HashMap<String, Vec<(Option<i64>, Option<i64>)>>;

struct Touched {
    paths: Vec<String>,
    cap: usize,
    overflowed: bool,
}

/// What a folder was asked to do: the no-op-run tests assert on these
/// rather than on timing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct FolderStats {
    /// Directory listings, any directory.
    pub lists: u64,
    /// Listings of `patients/` or a directory inside it.
    pub patient_lists: u64,
    /// Listed entries whose size and time were looked up (a call each on
    /// Linux and macOS).
    pub entries_statted: u64,
    pub reads: u64,
    pub files_written: u64,
    pub removes: u64,
    /// Tries repeated because another program held a file open, and the
    /// files given up for it this run (each named by an event).
    pub held_retries: u64,
    pub held: u64,
    /// Files not read because they are online-only placeholders.
    pub not_local: u64,
}

impl DiskFolder {
    /// Opens the folder at `root`. `staging` is a directory outside the
    /// synced tree for temp files; it is used only if it can be created and
    /// lies on the same volume as `root`.
    pub fn new(root: PathBuf, staging: Option<PathBuf>) -> DiskFolder {
        let staging = staging.filter(|dir| same_volume(&root, dir));
        DiskFolder {
            root,
            staging,
            before_change: None,
            stats: Cell::new(FolderStats::default()),
            touched: RefCell::new(None),
            own_changes: RefCell::new(DirChanges::new()),
            raw_names: RefCell::new(std::collections::HashMap::new()),
            not_links: RefCell::new(std::collections::HashSet::new()),
            held: RefCell::default(),
            not_local: RefCell::default(),
            releaser: RefCell::default(),
        }
    }

    /// Has `hook` called before every write or removal in the folder (and
    /// in its siblings'): a run makes the database commits the change
    /// depends on durable with it. When it fails, the change is not made.
    pub fn before_changes(&mut self, hook: BeforeChange) {
        self.before_change = Some(hook);
    }

    /// Runs the hook of [`DiskFolder::before_changes`].
    fn about_to_change(&self) -> io::Result<()> {
        match &self.before_change {
            Some(hook) => hook(),
            None => Ok(()),
        }
    }

    /// The changes this folder made to directories under `patients/` since
    /// the last call (see [`DirChanges`]): a run tells its own changes from
    /// a cloud client's with them.
    pub fn take_own_changes(&self) -> DirChanges {
        std::mem::take(&mut self.own_changes.borrow_mut())
    }

    /// The modification time of a directory of the folder, `None` when it
    /// does not exist.
    pub fn dir_mtime(&self, dir: &str) -> io::Result<Option<i64>> {
        match fs::symlink_metadata(self.full(dir)?) {
            Ok(meta) => Ok(Some(entry_of(String::new(), &meta).mtime_ns)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Runs `change` on directory entries of the folder, noting how it
    /// changed the modification times of those under `patients/`.
    fn noting_changes<T>(&self, rels: &[&str], change: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        let dirs: BTreeSet<&str> = rels
            .iter()
            .filter_map(|rel| rel.rsplit_once('/').map(|(dir, _)| dir))
            .filter(|dir| dir.starts_with(super::layout::PATIENTS_DIR))
            .collect();
        let before: Vec<Option<i64>> = dirs.iter().map(|d| self.dir_mtime(d).ok().flatten()).collect();
        let result = change();
        let mut own = self.own_changes.borrow_mut();
        for (dir, before) in dirs.into_iter().zip(before) {
            let after = self.dir_mtime(dir).ok().flatten();
            own.entry(dir.to_owned()).or_default().push((before, after));
        }
        result
    }

    /// Starts remembering the paths written or removed, up to `cap` of them.
    pub fn track_touched(&self, cap: usize) {
        *self.touched.borrow_mut() = Some(Touched { paths: Vec::new(), cap, overflowed: false });
    }

    /// The paths written or removed since [`DiskFolder::track_touched`];
    /// `None` when not tracking or when there were more than its cap.
    pub fn take_touched(&self) -> Option<Vec<String>> {
        let touched = self.touched.borrow_mut().take()?;
        (!touched.overflowed).then_some(touched.paths)
    }

    /// A second handle on the same folder, for writing from another
    /// thread; [`DiskFolder::absorb`] adds what it did to this one.
    pub fn sibling(&self) -> DiskFolder {
        let touched = self.touched.borrow().as_ref().map(|t| Touched {
            paths: Vec::new(),
            cap: t.cap,
            overflowed: false,
        });
        DiskFolder {
            root: self.root.clone(),
            staging: self.staging.clone(),
            before_change: self.before_change.clone(),
            stats: Cell::new(FolderStats::default()),
            touched: RefCell::new(touched),
            own_changes: RefCell::new(DirChanges::new()),
            raw_names: RefCell::new(std::collections::HashMap::new()),
            not_links: RefCell::new(std::collections::HashSet::new()),
            held: RefCell::default(),
            not_local: RefCell::default(),
            releaser: RefCell::default(),
        }
    }

    /// Adds what a sibling did: its counters, the paths it touched, its
    /// changes to directories and the names it listed that are not UTF-8.
    pub fn absorb(&self, sibling: DiskFolder) {
        for (dir, changes) in sibling.own_changes.take() {
            self.own_changes.borrow_mut().entry(dir).or_default().extend(changes);
        }
        let o = sibling.stats.get();
        self.count(|s| {
            s.lists += o.lists;
            s.patient_lists += o.patient_lists;
            s.entries_statted += o.entries_statted;
            s.reads += o.reads;
            s.files_written += o.files_written;
            s.removes += o.removes;
            s.held_retries += o.held_retries;
        });
        self.held.borrow_mut().extend(sibling.held.take());
        self.raw_names.borrow_mut().extend(sibling.raw_names.take());
        self.not_local.borrow_mut().extend(sibling.not_local.take());
        if let Some(theirs) = sibling.touched.into_inner() {
            if theirs.overflowed {
                if let Some(ours) = self.touched.borrow_mut().as_mut() {
                    ours.overflowed = true;
                    ours.paths = Vec::new();
                }
            } else {
                self.note_touched(theirs.paths.iter().map(String::as_str));
            }
        }
    }

    fn note_touched<'p>(&self, paths: impl IntoIterator<Item = &'p str>) {
        if let Some(t) = self.touched.borrow_mut().as_mut()
            && !t.overflowed
        {
            for path in paths {
                if t.paths.len() >= t.cap {
                    t.overflowed = true;
                    t.paths = Vec::new();
                    return;
                }
                t.paths.push(path.to_owned());
            }
        }
    }

    /// What this folder was asked to do so far.
    pub fn stats(&self) -> FolderStats {
        FolderStats {
            held: self.held.borrow().len() as u64,
            not_local: self.not_local.borrow().len() as u64,
            ..self.stats.get()
        }
    }

    fn count(&self, f: impl FnOnce(&mut FolderStats)) {
        let mut stats = self.stats.get();
        f(&mut stats);
        self.stats.set(stats);
    }

    /// Whether temp files go to a staging directory (true) or beside their
    /// targets as `~$<name>.tmp` (false).
    pub fn uses_staging(&self) -> bool {
        self.staging.is_some()
    }

    /// Refuses a path inside the folder that passes through a link: a
    /// folder that is a link (say `patients/ab` to a folder elsewhere) would
    /// let a read or a write reach outside the synced folder. The folder's
    /// own root may be a link (a cloud drive mounted elsewhere).
    fn no_links_within(&self, rel: &str) -> io::Result<()> {
        let mut at = self.root.clone();
        let mut parts = rel.split('/').filter(|p| !p.is_empty()).peekable();
        while let Some(part) = parts.next() {
            if parts.peek().is_none() {
                break;
            }
            at.push(part);
            if self.not_links.borrow().contains(&at) {
                continue;
            }
            match fs::symlink_metadata(&at) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(io::Error::other(format!(
                        "{} is a link, and clinicsync does not follow links inside the folder",
                        at.strip_prefix(&self.root).unwrap_or(&at).display()
                    )));
                }
                Ok(_) => {
                    self.not_links.borrow_mut().insert(at.clone());
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn full(&self, rel: &str) -> io::Result<PathBuf> {
        let rel_path = Path::new(rel);
        let safe = rel_path.components().all(|c| matches!(c, Component::Normal(_)));
        if !safe {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("unsafe folder path {rel:?}")));
        }
        if let Some(raw) = self.raw_names.borrow().get(rel) {
            return Ok(raw.clone());
        }
        Ok(self.root.join(rel_path))
    }

    fn temp_for(&self, target: &Path, index: usize) -> PathBuf {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        match &self.staging {
            Some(dir) => dir.join(format!("{}-{n}-{index}.tmp", std::process::id())),
            None => {
                let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                target.with_file_name(format!("~${name}.{}-{n}.tmp", std::process::id()))
            }
        }
    }
}

/// The waits between tries of a file another program holds open: a cloud
/// client holds a file for the moment it hashes or transfers it.
const HELD_WAITS_MS: [u64; 4] = [50, 150, 300, 500];

fn same_volume(root: &Path, staging: &Path) -> bool {
    fs::create_dir_all(staging).is_ok() && platform::same_volume(root, staging)
}

/// Opens a regular file for reading (with `open`) without following a link
/// and without blocking (a FIFO opened for reading waits for a writer
/// forever); an online-only placeholder is not opened.
fn open_regular(path: &Path, open: impl FnOnce() -> io::Result<File>) -> Result<File, ReadError> {
    let kind = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ReadError::NotFound),
        Err(e) => return Err(e.into()),
    };
    if let Some(what) = platform::not_regular(kind.file_type()) {
        return Err(ReadError::NotRegular(what));
    }
    if platform::online_only(&kind) {
        return Err(ReadError::NotLocal);
    }
    let file = match open() {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ReadError::NotFound),
        Err(e) => return Err(e.into()),
    };
    // Swapped for something else between the look and the open.
    if let Some(what) = platform::not_regular(file.metadata()?.file_type()) {
        return Err(ReadError::NotRegular(what));
    }
    Ok(file)
}

fn entry_of(name: String, meta: &fs::Metadata) -> Entry {
    Entry {
        name,
        is_dir: meta.is_dir(),
        size: meta.len(),
        mtime_ns: platform::mtime_ns(meta),
        id: platform::file_id(meta),
    }
}

/// The folder's operations: every access to its files goes through these.
impl DiskFolder {
    /// Lists a directory; a missing directory, or one that is a link, is an
    /// empty list (no access follows a link inside the folder).
    pub fn list(&self, dir: &str) -> io::Result<Vec<Entry>> {
        self.list_except(dir, |_, _| true)
    }

    /// As [`DiskFolder::list`], leaving out, without a call per file to
    /// stat it, the entries `keep` refuses by name and the file id the
    /// listing gives ([`crate::platform::listed_id`]; `None` where it gives
    /// none).
    pub fn list_except(&self, dir: &str, keep: impl Fn(&str, Option<u64>) -> bool) -> io::Result<Vec<Entry>> {
        let patients = dir.starts_with(super::layout::PATIENTS_DIR);
        self.count(|s| {
            s.lists += 1;
            s.patient_lists += u64::from(patients);
        });
        let path = if dir.is_empty() { self.root.clone() } else { self.full(dir)? };
        if !dir.is_empty() {
            self.no_links_within(dir)?;
            // A folder that is a link holds nothing of ours: a full scan
            // names it where it lists its parent.
            if fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
                return Ok(Vec::new());
            }
        }
        let reader = match fs::read_dir(&path) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for item in reader {
            let item = item?;
            let name = match item.file_name().into_string() {
                Ok(name) => name,
                Err(raw) => {
                    let name = raw.to_string_lossy().into_owned();
                    let rel = if dir.is_empty() { name.clone() } else { format!("{dir}/{name}") };
                    self.raw_names.borrow_mut().insert(rel, item.path());
                    name
                }
            };
            if !keep(&name, platform::listed_id(&item)) {
                continue;
            }
            self.count(|s| s.entries_statted += 1);
            // A file removed between listing and stat is simply gone.
            match item.metadata() {
                Ok(meta) => out.push(entry_of(name, &meta)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Stats one file; `None` when it does not exist.
    pub fn metadata(&self, path: &str) -> io::Result<Option<Entry>> {
        let full = self.full(path)?;
        self.no_links_within(path)?;
        match fs::symlink_metadata(&full) {
            Ok(meta) => {
                let name = full.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                Ok(Some(entry_of(name, &meta)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Opens a file of the folder for reading (counted as a read): not a
    /// link, a FIFO or anything but a regular file, and not an online-only
    /// placeholder (remembered as such).
    fn open_for_reading(&self, path: &str) -> Result<File, ReadError> {
        self.count(|s| s.reads += 1);
        let full = self.full(path)?;
        self.no_links_within(path)?;
        let opened = if online_only_fault(path) {
            Err(ReadError::NotLocal)
        } else {
            open_regular(&full, || self.patiently(path, false, || platform::read_no_follow().open(&full)))
        };
        if let Err(ReadError::NotLocal) = opened {
            self.not_local.borrow_mut().insert(path.to_owned());
        }
        opened
    }

    /// Reads a whole file, refusing one larger than `limit` bytes.
    pub fn read(&self, path: &str, limit: u64) -> Result<Vec<u8>, ReadError> {
        let file = self.open_for_reading(path)?;
        let size = file.metadata()?.len();
        if size > limit {
            return Err(ReadError::TooLarge { size, limit });
        }
        let mut bytes = Vec::with_capacity(size as usize);
        // `take` guards against a file that grows while we read it.
        file.take(limit + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > limit {
            return Err(ReadError::TooLarge { size: bytes.len() as u64, limit });
        }
        Ok(bytes)
    }

    /// Writes each file atomically (readers see the old or the new bytes,
    /// never a mix), and the whole batch durably, creating directories.
    pub fn write_batch(&self, files: &[(String, Vec<u8>)]) -> io::Result<()> {
        self.write_files(files, false).map(|_| ())
    }

    /// As [`DiskFolder::write_batch`], returning each file's size and
    /// modification time as written, in the batch's order (taken from the
    /// file this run wrote, before it took the file's name: a client that
    /// replaces the file right after cannot be taken for it).
    pub fn write_batch_entries(&self, files: &[(String, Vec<u8>)]) -> io::Result<Vec<Entry>> {
        let written = self.write_files(files, false)?;
        Ok(written.into_iter().filter_map(Result::ok).collect())
    }

    /// As [`DiskFolder::write_batch_entries`], but a file another program
    /// holds open past the retries is left as it was, its place in the
    /// result holding the error, and the rest of the batch is written.
    pub fn write_batch_except_held(&self, files: &[(String, Vec<u8>)]) -> io::Result<Vec<io::Result<Entry>>> {
        self.write_files(files, true)
    }

    fn write_files(
        &self,
        files: &[(String, Vec<u8>)],
        skip_held: bool,
    ) -> io::Result<Vec<io::Result<Entry>>> {
        if files.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(prefix) = write_fault()
            && files.iter().any(|(rel, _)| rel.starts_with(&prefix))
        {
            return Err(io::Error::other(format!("fault injected for writes under {prefix}")));
        }
        self.about_to_change()?;
        self.count(|s| s.files_written += files.len() as u64);
        self.note_touched(files.iter().map(|(rel, _)| rel.as_str()));
        let mut staged: Vec<(PathBuf, PathBuf)> = Vec::with_capacity(files.len());
        let mut written: Vec<io::Result<Entry>> = Vec::with_capacity(files.len());
        let rels: Vec<&str> = files.iter().map(|(rel, _)| rel.as_str()).collect();
        // A small batch, or a system without syncfs: each file synced as
        // it is written.
        let one_by_one = files.len() <= SYNC_FILES_ONE_BY_ONE || !platform::SYNCS_A_VOLUME;
        let result = self.noting_changes(&rels, || {
            // Each folder of the batch is looked at once (a first export
            // writes thousands of files into 256 shards).
            let mut checked: BTreeSet<&str> = BTreeSet::new();
            for (index, (rel, bytes)) in files.iter().enumerate() {
                let target = self.full(rel)?;
                let parent_rel = rel.rsplit_once('/').map_or("", |(dir, _)| dir);
                if checked.insert(parent_rel) {
                    self.no_links_within(rel)?;
                    if let Some(parent) = target.parent() {
                        fs::create_dir_all(parent)?;
                    }
                }
                let temp = self.temp_for(&target, index);
                staged.push((temp.clone(), target));
                let mut f = File::create(&temp)?;
                f.write_all(bytes)?;
                if one_by_one {
                    f.sync_data()?;
                }
                // The name is the target's: the entry a listing will show.
                let name = rel.rsplit_once('/').map_or(rel.as_str(), |(_, name)| name).to_owned();
                written.push(Ok(entry_of(name, &f.metadata()?)));
            }
            // For a large batch one syncfs makes every temp file durable:
            // far cheaper than an fsync per file (measured in docs/performance.md).
            let anchor = self.staging.as_deref().unwrap_or(&self.root);
            if !one_by_one {
                platform::sync_volume(anchor)?;
            }
            let mut dirs = BTreeSet::new();
            for (((temp, target), (rel, _)), entry) in staged.iter().zip(files).zip(written.iter_mut()) {
                // Held open through the rename, the replaced file is freed
                // on another thread (see release.rs).
                let replaced = Releaser::hold(target);
                match self.patiently(rel, true, || fs::rename(temp, target)) {
                    Ok(()) => {
                        if let Some(file) = replaced {
                            self.releaser.borrow_mut().release(file);
                        }
                    }
                    Err(e) if skip_held && platform::is_held(&e) => {
                        let _ = fs::remove_file(temp);
                        *entry = Err(e);
                        continue;
                    }
                    Err(e) => return Err(e),
                }
                if let Some(parent) = target.parent() {
                    dirs.insert(parent.to_path_buf());
                }
            }
            // The replaced files are freed from here on, not in between the
            // renames (see release.rs).
            self.releaser.borrow_mut().hand_over();
            // The renames durable too: each directory's fsync, or for a
            // batch spread over many directories (the first export's chunks
            // touch all 256 shards) one more syncfs, which commits every
            // directory change at once.
            if dirs.len() > SYNC_DIRS_ONE_BY_ONE && platform::SYNCS_A_VOLUME {
                platform::sync_volume(anchor)?;
            } else {
                for dir in dirs {
                    platform::sync_dir(&dir)?;
                }
            }
            Ok(())
        });
        if result.is_err() {
            for (temp, _) in &staged {
                let _ = fs::remove_file(temp);
            }
        }
        result.map(|()| written)
    }

    /// Runs `op` on the file `rel`, trying again after a short wait while
    /// another program holds it open ([`HELD_WAITS_MS`]); past the last
    /// try the error says so.
    fn patiently<T>(&self, rel: &str, writing: bool, mut op: impl FnMut() -> io::Result<T>) -> io::Result<T> {
        let waited_before = self.held.borrow().contains_key(rel);
        let mut waits = HELD_WAITS_MS[..if waited_before { 0 } else { HELD_WAITS_MS.len() }].iter();
        loop {
            let result = match held_fault(rel, writing) {
                Some(e) => Err(e),
                None => op(),
            };
            match result {
                Err(e) if platform::is_held(&e) => match waits.next() {
                    Some(&ms) => {
                        self.count(|s| s.held_retries += 1);
                        std::thread::sleep(std::time::Duration::from_millis(ms));
                    }
                    None => {
                        // Said the same way each time this run gives up on it.
                        let said = self.held.borrow_mut().entry(rel.to_owned()).or_insert_with(|| {
                            let tries = HELD_WAITS_MS.len() + 1;
                            let waited: u64 = HELD_WAITS_MS.iter().sum();
                            format!(
                                "another program (the cloud client, while it transfers the file?) held it open through {tries} tries over {waited} ms ({e})"
                            )
                        }).clone();
                        return Err(io::Error::new(e.kind(), said));
                    }
                },
                other => return other,
            }
        }
    }

    /// Removes a file; a missing file is not an error.
    pub fn remove(&self, path: &str) -> io::Result<()> {
        self.about_to_change()?;
        self.count(|s| s.removes += 1);
        self.note_touched([path]);
        let full = self.full(path)?;
        self.no_links_within(path)?;
        self.noting_changes(&[path], || match self.patiently(path, true, || fs::remove_file(&full)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        })
    }

    /// Removes a directory if it is empty; returns whether it did.
    pub fn remove_empty_dir(&self, dir: &str) -> io::Result<bool> {
        let full = self.full(dir)?;
        self.no_links_within(&format!("{dir}/."))?;
        self.noting_changes(&[dir], || match fs::remove_dir(&full) {
            Ok(()) => {
                self.note_touched([dir]);
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty => Ok(false),
            Err(e) => Err(e),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hook_runs_before_every_write_and_removal_and_a_failing_one_stops_it() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("folder");
        fs::create_dir_all(&root).unwrap();
        let mut folder = DiskFolder::new(root.clone(), Some(dir.path().join("staging")));
        let calls = Arc::new(AtomicUsize::new(0));
        let fail = Arc::new(AtomicUsize::new(0));
        let (counted, failing) = (calls.clone(), fail.clone());
        folder.before_changes(Arc::new(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            match failing.load(Ordering::SeqCst) {
                0 => Ok(()),
                _ => Err(io::Error::other("the log could not be synced")),
            }
        }));
        folder.write_batch(&[("a.xml".into(), b"a".to_vec())]).unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // A sibling on another thread runs it too.
        let sibling = folder.sibling();
        std::thread::spawn(move || sibling.write_batch(&[("b.xml".into(), b"b".to_vec())]).unwrap())
            .join()
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        folder.remove("b.xml").unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        // When it fails, nothing changes.
        fail.store(1, Ordering::SeqCst);
        let e = folder.write_batch(&[("c.xml".into(), b"c".to_vec())]).unwrap_err();
        assert!(e.to_string().contains("could not be synced"), "{e}");
        assert!(!root.join("c.xml").exists());
        assert!(folder.remove("a.xml").is_err());
        assert!(root.join("a.xml").exists());
    }

    #[test]
    fn a_sibling_writes_on_another_thread_and_its_writes_count_here() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("folder");
        fs::create_dir_all(&root).unwrap();
        let folder = DiskFolder::new(root.clone(), Some(dir.path().join("staging")));
        folder.track_touched(3);
        folder.write_batch(&[("a.xml".into(), b"a".to_vec())]).unwrap();
        let sibling = folder.sibling();
        let sibling = std::thread::spawn(move || {
            sibling.write_batch(&[("log/b.xml".into(), b"b".to_vec())]).unwrap();
            sibling
        })
        .join()
        .unwrap();
        folder.absorb(sibling);
        assert_eq!(folder.stats().files_written, 2);
        assert_eq!(fs::read(root.join("log/b.xml")).unwrap(), b"b");
        assert_eq!(folder.take_touched(), Some(vec!["a.xml".to_owned(), "log/b.xml".to_owned()]));
        // Past the cap, the sibling's overflow is this folder's overflow.
        folder.track_touched(1);
        let sibling = folder.sibling();
        sibling.write_batch(&[("c.xml".into(), b"c".to_vec()), ("d.xml".into(), b"d".to_vec())]).unwrap();
        folder.absorb(sibling);
        assert_eq!(folder.take_touched(), None);
    }

    #[test]
    fn batch_writes_land_whole_and_leave_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("folder");
        fs::create_dir_all(&root).unwrap();
        for staging in [Some(dir.path().join("staging")), None] {
            let folder = DiskFolder::new(root.clone(), staging.clone());
            assert_eq!(folder.uses_staging(), staging.is_some());
            let files =
                vec![("a/b/one.xml".to_owned(), b"1".to_vec()), ("two.xml".to_owned(), b"22".to_vec())];
            folder.write_batch(&files).unwrap();
            assert_eq!(folder.read("a/b/one.xml", 10).unwrap(), b"1");
            assert!(matches!(folder.read("two.xml", 1), Err(ReadError::TooLarge { .. })));
            let names: Vec<String> = folder.list("").unwrap().into_iter().map(|e| e.name).collect();
            assert_eq!(names, ["a", "two.xml"]);
        }
        assert!(fs::read_dir(dir.path().join("staging")).unwrap().next().is_none());
    }

    #[test]
    fn a_batch_returns_each_file_as_written_which_a_later_stat_agrees_with() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("folder");
        fs::create_dir_all(&root).unwrap();
        let folder = DiskFolder::new(root.clone(), Some(dir.path().join("staging")));
        let files = vec![
            ("patients/ab/one.xml".to_owned(), b"1".to_vec()),
            ("patients/cd/two.xml".to_owned(), b"22".to_vec()),
            ("three.xml".to_owned(), b"333".to_vec()),
        ];
        folder.write_batch(&files[..1]).unwrap();
        let written = folder.write_batch_entries(&files).unwrap();
        assert_eq!(written.len(), 3);
        for ((path, bytes), entry) in files.iter().zip(&written) {
            let now = folder.metadata(path).unwrap().expect("written");
            assert_eq!(
                (&entry.name, entry.size, entry.mtime_ns),
                (&now.name, bytes.len() as u64, now.mtime_ns)
            );
            assert!(entry.mtime_ns > 0 && !entry.is_dir);
        }
        // A file replaced after the batch is not the one it returned.
        fs::write(root.join("three.xml"), b"4444").unwrap();
        let now = folder.metadata("three.xml").unwrap().unwrap();
        assert_ne!((now.size, now.mtime_ns), (written[2].size, written[2].mtime_ns));
    }

    #[test]
    fn paths_cannot_escape_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let folder = DiskFolder::new(dir.path().to_path_buf(), None);
        assert!(folder.read("../etc/passwd", 10).is_err());
        assert!(folder.write_batch(&[("/abs".into(), vec![])]).is_err());
    }
}
