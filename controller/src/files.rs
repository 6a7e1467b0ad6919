//! Replicated regular files on the standby (issue 3): each committed epoch's file changes
//! ([`FileWrite`]) are written into the standby's copy of the file, under the file root
//! (`remusd standby --file-root DIR`, default `/`: the same paths as on the primary's host).
//! Restore reopens the replicated files there ([`map`]).
//!
//! Applied in the receiver right after the epoch's image is applied (after verification, like
//! pages), before the ack: the primary releases nothing of an epoch whose file changes are not
//! in the standby's copies. Per file: `whole` truncates the copy first; the ranges are written
//! at their offsets; the copy's size is set to the primary's. With `--file-fsync` each changed
//! copy is fsynced before the ack. An epoch is written file by file, in place: if the standby
//! itself dies in the middle, the copies can hold part of an epoch (the standby's own crash is
//! not what remus protects against).

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use crate::image::FileWrite;

/// Where replicated files are written on this standby.
#[derive(Clone, Debug)]
pub struct FileRoot {
    pub root: PathBuf,
    pub fsync: bool,
}

static ROOT: OnceLock<FileRoot> = OnceLock::new();

/// Sets this process's file root (`remusd standby`, once, before any session). Without it,
/// file changes are not written anywhere (unit tests).
pub fn set_root(root: PathBuf, fsync: bool) {
    let _ = ROOT.set(FileRoot { root, fsync });
}

/// The file root, when set.
pub fn root() -> Option<FileRoot> {
    ROOT.get().cloned()
}

/// Where the primary's `path` lives under `root`. `None` for a path that is not absolute or
/// has `..` or `.` components (the primary names files by their canonical path).
pub fn map(root: &Path, path: &str) -> Option<PathBuf> {
    let p = Path::new(path);
    if !p.is_absolute()
        || p.components()
            .any(|c| !matches!(c, Component::RootDir | Component::Normal(_)))
    {
        return None;
    }
    Some(root.join(p.strip_prefix("/").ok()?))
}

/// Writes one epoch's changes into the copies under `root`.
pub fn apply(root: &FileRoot, files: &[FileWrite]) -> io::Result<()> {
    for f in files {
        let Some(dst) = map(&root.root, &f.path) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "replicated file path {:?} is not a canonical absolute path",
                    f.path
                ),
            ));
        };
        let ctx = |what: &str, e: io::Error| {
            io::Error::new(e.kind(), format!("{what} {}: {e}", dst.display()))
        };
        if let Some(dir) = dst.parent() {
            std::fs::create_dir_all(dir).map_err(|e| ctx("creating the directory of", e))?;
        }
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .mode(0o644)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&dst)
            .map_err(|e| ctx("opening", e))?;
        if f.whole {
            file.set_len(0).map_err(|e| ctx("truncating", e))?;
        }
        for (off, data) in &f.ranges {
            file.write_all_at(&data.0, *off)
                .map_err(|e| ctx("writing", e))?;
        }
        file.set_len(f.size)
            .map_err(|e| ctx("setting the size of", e))?;
        if root.fsync {
            file.sync_data().map_err(|e| ctx("syncing", e))?;
        }
        tracing::debug!(
            path = %dst.display(),
            whole = f.whole,
            ranges = f.ranges.len(),
            size = f.size,
            "replicated file updated"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::messages::PageBytes;

    #[test]
    fn maps_only_canonical_absolute_paths() {
        let r = Path::new("/srv/copy");
        assert_eq!(map(r, "/a/b"), Some(PathBuf::from("/srv/copy/a/b")));
        assert_eq!(map(Path::new("/"), "/a/b"), Some(PathBuf::from("/a/b")));
        assert_eq!(map(r, "a/b"), None);
        assert_eq!(map(r, "/a/../../etc/passwd"), None);
    }

    #[test]
    fn applies_whole_ranges_and_size_in_order() {
        let dir = std::env::temp_dir().join(format!("remus-files-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let root = FileRoot {
            root: dir.clone(),
            fsync: true,
        };
        let w = |whole, ranges: &[(u64, &[u8])], size| FileWrite {
            path: "/x/log".into(),
            whole,
            ranges: ranges
                .iter()
                .map(|(o, d)| (*o, PageBytes(d.to_vec())))
                .collect(),
            size,
        };
        let copy = dir.join("x/log");
        apply(&root, &[w(true, &[(0, b"hello world")], 11)]).unwrap();
        assert_eq!(std::fs::read(&copy).unwrap(), b"hello world");
        // A delta: overwrite in place, append, then a later epoch truncates.
        apply(&root, &[w(false, &[(0, b"J"), (11, b"!!")], 13)]).unwrap();
        assert_eq!(std::fs::read(&copy).unwrap(), b"Jello world!!");
        apply(&root, &[w(false, &[], 5), w(false, &[(5, b"?")], 6)]).unwrap();
        assert_eq!(std::fs::read(&copy).unwrap(), b"Jello?");
        // Whole replaces whatever the copy held.
        apply(&root, &[w(true, &[(0, b"ab")], 2)]).unwrap();
        assert_eq!(std::fs::read(&copy).unwrap(), b"ab");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
