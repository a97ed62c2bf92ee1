//! The sync folder as a file system: listing, bounded reads, atomic batched
//! writes and removal, with paths relative to the folder root and `/` as the
//! separator. This is the only module that touches the folder's files.
//! There is one folder, the real directory ([`DiskFolder`]); the
//! simulation models the folder's behaviour in memory on its own.

pub mod body_io;
mod disk;
pub mod documents;
mod fault;
pub mod layout;

pub use crate::conflicts::IgnoreRules;
pub use disk::{
    BeforeChange, DirChanges, DiskFolder, Fetched, FolderStats, StagedBody, Walked, is_left_temp,
};

use std::io;

/// One entry of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub is_dir: bool,
    pub size: u64,
    /// Modification time in nanoseconds since the epoch (0 when unknown).
    pub mtime_ns: i64,
    /// The file's number on its volume where the system gives it
    /// ([`crate::platform::file_id`]).
    pub id: Option<u64>,
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
    /// A cloud client's online-only placeholder: reading it would download
    /// it, so it is not read (and it is not absent either).
    #[error(
        "it is online-only: the cloud client has not downloaded it to this computer, and clinicsync does not open it (opening would download it)"
    )]
    NotLocal,
    #[error("it cannot be read: {0}")]
    Io(#[from] io::Error),
}
