//! Reading an input tree: every entry with the metadata the canonical form keeps
//! and the stat fields the build cache keys on. Symbolic links are recorded, never
//! followed; the tree is returned in canonical order.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// What an input entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link with its target as read.
    Symlink(Vec<u8>),
}

/// One file, directory or symlink of an input tree.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Path relative to the tree's root, `/`-separated, empty for the root.
    pub rel: Vec<u8>,
    /// Where it is on disk.
    pub abs: PathBuf,
    /// Its type.
    pub kind: Kind,
    /// `st_mode & 0o7777`.
    pub mode: u32,
    /// Size in bytes (regular files).
    pub size: u64,
    /// Device and inode, to find hard links.
    pub dev_ino: (u64, u64),
    /// Link count.
    pub nlink: u64,
    /// Modification time, seconds.
    pub mtime: i64,
    /// Modification and change times in nanoseconds, for the build cache.
    pub stamp: (i64, i64, i64, i64),
}

impl Entry {
    /// The canonical sort key: the path with a trailing `/` for directories.
    pub fn sort_key(&self) -> Vec<u8> {
        let mut k = self.rel.clone();
        if self.kind == Kind::Dir {
            k.push(b'/');
        }
        k
    }

    /// The last path component.
    pub fn name(&self) -> &[u8] {
        self.rel.rsplit(|&b| b == b'/').next().unwrap_or(&self.rel)
    }
}

fn entry(abs: &Path, rel: Vec<u8>) -> Result<Entry> {
    let meta = fs::symlink_metadata(abs).map_err(|e| Error::io(abs, e))?;
    let ft = meta.file_type();
    let kind = if ft.is_dir() {
        Kind::Dir
    } else if ft.is_file() {
        Kind::File
    } else if ft.is_symlink() {
        let target = fs::read_link(abs).map_err(|e| Error::io(abs, e))?;
        Kind::Symlink(target.as_os_str().as_bytes().to_vec())
    } else {
        let kind = if ft.is_fifo() {
            "a named pipe"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "a device node"
        };
        return Err(Error::Unsupported {
            path: abs.to_path_buf(),
            kind,
        });
    };
    Ok(Entry {
        rel,
        abs: abs.to_path_buf(),
        kind,
        mode: meta.mode() & 0o7777,
        size: if ft.is_file() { meta.len() } else { 0 },
        dev_ino: (meta.dev(), meta.ino()),
        nlink: meta.nlink(),
        mtime: meta.mtime(),
        stamp: (
            meta.mtime(),
            meta.mtime_nsec(),
            meta.ctime(),
            meta.ctime_nsec(),
        ),
    })
}

/// Reads the tree at `root` (a directory, or a single file) in canonical order.
/// The root itself is the first entry, with an empty `rel`. A root that is a
/// symbolic link is followed (the user named it); links inside are not.
pub fn walk(root: &Path) -> Result<Vec<Entry>> {
    let resolved = fs::canonicalize(root).map_err(|e| Error::io(root, e))?;
    let root_entry = entry(&resolved, Vec::new())?;
    let mut stack = if root_entry.kind == Kind::Dir {
        vec![(resolved.clone(), Vec::new())]
    } else {
        Vec::new()
    };
    let mut out = vec![root_entry];
    while let Some((dir, rel)) = stack.pop() {
        let listing = fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?;
        for item in listing {
            let item = item.map_err(|e| Error::io(&dir, e))?;
            let mut child_rel = rel.clone();
            if !child_rel.is_empty() {
                child_rel.push(b'/');
            }
            child_rel.extend_from_slice(item.file_name().as_bytes());
            let e = entry(&item.path(), child_rel.clone())?;
            if e.kind == Kind::Dir {
                stack.push((item.path(), child_rel));
            }
            out.push(e);
        }
    }
    out.sort_by_key(Entry::sort_key);
    Ok(out)
}
