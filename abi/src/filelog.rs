//! Regular files the app writes (issue 3): an additive section of the staging memfd, after the
//! sockets' output log ([`crate::netlog::NETLOG_END`]); a memfd shorter than [`FILELOG_END`]
//! has no file log.
//!
//! ```text
//! +------------------+ FILELOG_OFF (page aligned)
//! | FileLogHeader    |   magic, epoch, counts
//! +------------------+ FILE_RECS_OFF
//! | [FileRec]        |   one per replicated file open for writing at the checkpoint
//! +------------------+ FILE_RANGES_OFF
//! | [FileRange]      |   the changed byte ranges of every file, file after file
//! +------------------+ FILE_DATA_OFF
//! | bytes            |   the ranges' contents, read with pread during the pause
//! +------------------+ FILELOG_END
//! ```
//!
//! Written in the last chunk of an epoch only (the header carries the epoch; a section written
//! for another epoch reads as "no file changed"). A [`FileRec`] with [`FR_WHOLE`] replaces the
//! standby's copy (truncate to zero, write the ranges, set the size); otherwise its ranges are
//! written over the copy and the copy's size is set to `size`. A record with no range and
//! [`FR_CHANGED`] clear only says "this file is followed" (restore reopens it under the
//! standby's file root).

use crate::{FD_PATH_MAX, PAGE_SIZE};

pub const FILELOG_MAGIC: u64 = u64::from_le_bytes(*b"REMUSFIL");

/// Directories whose files are replicated, `:`-separated (default: the working directory at
/// start). `-` (or an empty list) replicates none.
pub const ENV_REPLICATE_DIRS: &str = "REMUS_REPLICATE_DIRS";

/// Replicated files followed at one checkpoint.
pub const MAX_FILE_RECS: usize = 256;
/// Changed ranges per epoch, all files together.
pub const MAX_FILE_RANGES: usize = 8192;
/// Changed bytes per epoch, all files together. An epoch that changed more stops protection
/// (the shim says which file): it is never shipped torn.
pub const FILE_DATA_MAX: usize = 64 << 20;

pub const FILELOG_OFF: usize = crate::netlog::NETLOG_END.div_ceil(PAGE_SIZE) * PAGE_SIZE;
pub const FILE_RECS_OFF: usize = FILELOG_OFF + PAGE_SIZE;
pub const FILE_RANGES_OFF: usize = FILE_RECS_OFF + MAX_FILE_RECS * core::mem::size_of::<FileRec>();
pub const FILE_DATA_OFF: usize =
    (FILE_RANGES_OFF + MAX_FILE_RANGES * core::mem::size_of::<FileRange>()).div_ceil(PAGE_SIZE)
        * PAGE_SIZE;
pub const FILELOG_END: usize = FILE_DATA_OFF + FILE_DATA_MAX;

const _: () = assert!(core::mem::size_of::<FileLogHeader>() <= PAGE_SIZE);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FileLogHeader {
    /// [`FILELOG_MAGIC`] when the section was written for `epoch`.
    pub magic: u64,
    pub epoch: u64,
    pub n_files: u32,
    pub n_ranges: u32,
    pub data_bytes: u64,
}

/// The standby's copy is replaced: the file is new to the shim (first seen, or seen again
/// under another path or inode).
pub const FR_WHOLE: u32 = 1;
/// Something changed this epoch (ranges, or the size).
pub const FR_CHANGED: u32 = 2;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct FileRec {
    /// The file's size at the checkpoint.
    pub size: u64,
    /// `FR_*` bits.
    pub flags: u32,
    pub path_len: u32,
    /// Index of its first range in the range table, and how many.
    pub first_range: u32,
    pub n_ranges: u32,
    /// Absolute path (`readlink /proc/self/fd/N`).
    pub path: [u8; FD_PATH_MAX],
}

/// `len` bytes at `offset` of the file; the bytes are at `data_off` in the data area.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileRange {
    pub offset: u64,
    pub len: u64,
    pub data_off: u64,
}
