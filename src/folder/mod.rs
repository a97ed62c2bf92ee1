//! The sync folder as a file system: listing, bounded reads, atomic batched
//! writes and removal, with paths relative to the folder root and `/` as the
//! separator. This is the only module that touches the folder's files.

mod disk;
pub mod layout;

pub use crate::conflicts::IgnoreRules;
pub use disk::{DirChanges, DiskFolder, FolderStats, is_left_temp};

use std::io;

/// One entry of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub is_dir: bool,
    pub size: u64,
    /// Modification time in nanoseconds since the epoch (0 when unknown).
    pub mtime_ns: i64,
}

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("it is {size} bytes, over the {limit}-byte limit")]
    TooLarge { size: u64, limit: u64 },
    #[error("it does not exist")]
    NotFound,
    /// A FIFO, a device, a socket, a folder, or a link: opening it could
    /// hang the run or reach outside the folder.
    #[error("it is {0}, not a regular file; clinicsync does not open it")]
    NotRegular(&'static str),
    #[error("it cannot be read: {0}")]
    Io(#[from] io::Error),
}

/// The sync folder. Small on purpose: the real directory implements it, and
/// a simulation can implement it in memory.
pub trait Folder {
    /// Lists a directory; a missing directory, or one that is a link, is an
    /// empty list (no access follows a link inside the folder).
    fn list(&self, dir: &str) -> io::Result<Vec<Entry>>;
    /// Stats one file; `None` when it does not exist.
    fn metadata(&self, path: &str) -> io::Result<Option<Entry>>;
    /// Reads a whole file, refusing one larger than `limit` bytes.
    fn read(&self, path: &str, limit: u64) -> Result<Vec<u8>, ReadError>;
    /// Writes each file atomically (readers see the old or the new bytes,
    /// never a mix), and the whole batch durably, creating directories.
    fn write_batch(&self, files: &[(String, Vec<u8>)]) -> io::Result<()>;
    /// Removes a file; a missing file is not an error.
    fn remove(&self, path: &str) -> io::Result<()>;
    /// Removes a directory if it is empty; returns whether it did.
    fn remove_empty_dir(&self, dir: &str) -> io::Result<bool>;
}
