//! File-system operations relative to an open directory that never follow a
//! symbolic link: every path is walked one component at a time with
//! `O_NOFOLLOW`, and every final component is created, opened, linked or
//! removed with the `*at` calls and `AT_SYMLINK_NOFOLLOW` semantics.
//!
//! `spec/imports.md` asks for exactly this below an import's destination
//! (`RESOLVE_BENEATH` with `RESOLVE_NO_SYMLINKS`, "or the equivalent walk"),
//! and the block store reads its extracted trees the same way, so that
//! neither a lower layer's symlink in the root filesystem nor a block's own
//! symlink in the store can lead an operation anywhere else.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

/// What is at a name, without following it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    /// Nothing.
    Nothing,
    /// A directory.
    Dir,
    /// Anything else (file, symlink, device, …).
    Other,
}

fn errno(e: rustix::io::Errno) -> io::Error {
    e.into()
}

/// What `name` in `dir` is.
pub fn stat_at(dir: impl AsFd, name: &[u8]) -> io::Result<Found> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => Ok(Found::Dir),
        Ok(_) => Ok(Found::Other),
        Err(rustix::io::Errno::NOENT) => Ok(Found::Nothing),
        Err(e) => Err(errno(e)),
    }
}

/// Opens the directory `name` of `dir`; a symlink there is an error.
pub fn open_dir_at(dir: impl AsFd, name: &[u8]) -> io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno)
}

/// Opens a directory given by path, for use as the starting point of walks.
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno)
}

/// Opens `path` (relative, cleaned, components separated by `/`) below
/// `dir`, following no symbolic link at any component. `flags` apply to the
/// final component (`O_NOFOLLOW` is always added).
pub fn open_beneath(dir: impl AsFd, path: &[u8], flags: OFlags) -> io::Result<OwnedFd> {
    let mut parts = path
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .peekable();
    let mut current: Option<OwnedFd> = None;
    while let Some(part) = parts.next() {
        if part == b"." || part == b".." {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a path with `.` or `..` components",
            ));
        }
        let last = parts.peek().is_none();
        let at = match &current {
            Some(fd) => fd.as_fd(),
            None => dir.as_fd(),
        };
        let opened = if last {
            rustix::fs::openat(
                at,
                part,
                flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
        } else {
            rustix::fs::openat(
                at,
                part,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
        };
        current = Some(opened.map_err(errno)?);
    }
    match current {
        Some(fd) => Ok(fd),
        None => rustix::fs::openat(dir, ".", flags | OFlags::CLOEXEC, Mode::empty()).map_err(errno),
    }
}

/// The directory `path` below `dir` (empty: `dir` itself, duplicated).
pub fn open_dir_beneath(dir: impl AsFd, path: &[u8]) -> io::Result<OwnedFd> {
    open_beneath(dir, path, OFlags::RDONLY | OFlags::DIRECTORY)
}

/// Removes `name` from `dir` and, for a directory, everything below it,
/// without following any symbolic link. Directories are made writable first,
/// so that a read-only directory of a lower layer can be emptied.
pub fn remove_at(dir: impl AsFd, name: &[u8]) -> io::Result<()> {
    match stat_at(dir.as_fd(), name)? {
        Found::Nothing => return Ok(()),
        Found::Other => {
            return rustix::fs::unlinkat(dir, name, AtFlags::empty()).map_err(errno);
        }
        Found::Dir => {}
    }
    // An explicit stack: an image can nest directories deeper than a
    // recursion would like.
    let mut stack: Vec<(OwnedFd, Vec<Vec<u8>>)> = Vec::new();
    let top = open_dir_at(dir.as_fd(), name)?;
    let _ = rustix::fs::fchmod(&top, Mode::from_raw_mode(0o700));
    let children = list(&top)?;
    stack.push((top, children));
    while let Some((fd, mut children)) = stack.pop() {
        let Some(child) = children.pop() else {
            // Empty now: the parent removes it when its turn comes.
            continue;
        };
        match stat_at(&fd, &child)? {
            Found::Nothing => stack.push((fd, children)),
            Found::Other => {
                rustix::fs::unlinkat(&fd, &child[..], AtFlags::empty()).map_err(errno)?;
                stack.push((fd, children));
            }
            Found::Dir => {
                let sub = open_dir_at(&fd, &child)?;
                let _ = rustix::fs::fchmod(&sub, Mode::from_raw_mode(0o700));
                let grandchildren = list(&sub)?;
                if grandchildren.is_empty() {
                    drop(sub);
                    rustix::fs::unlinkat(&fd, &child[..], AtFlags::REMOVEDIR).map_err(errno)?;
                    stack.push((fd, children));
                } else {
                    // Come back to this child once it is empty.
                    children.push(child);
                    stack.push((fd, children));
                    stack.push((sub, grandchildren));
                }
            }
        }
    }
    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR).map_err(errno)
}

/// The names in an open directory, without `.` and `..`.
pub fn list(dir: impl AsFd) -> io::Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for e in rustix::fs::Dir::read_from(dir).map_err(errno)? {
        let e = e.map_err(errno)?;
        let name = e.file_name().to_bytes();
        if name != b"." && name != b".." {
            out.push(name.to_vec());
        }
    }
    Ok(out)
}

/// A directory `name` in `dir`, opened: an existing directory is kept (its
/// contents merge), anything else there is removed first. Returns the
/// directory and whether it was created.
pub fn ensure_dir_at(dir: impl AsFd, name: &[u8]) -> io::Result<(OwnedFd, bool)> {
    let created = match stat_at(dir.as_fd(), name)? {
        Found::Dir => false,
        found => {
            if found == Found::Other {
                rustix::fs::unlinkat(dir.as_fd(), name, AtFlags::empty()).map_err(errno)?;
            }
            rustix::fs::mkdirat(dir.as_fd(), name, Mode::from_raw_mode(0o700)).map_err(errno)?;
            true
        }
    };
    Ok((open_dir_at(dir, name)?, created))
}

/// Creates the regular file `name` in `dir` (nothing may be there), for writing.
pub fn create_file_at(dir: impl AsFd, name: &[u8]) -> io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(errno)
}

/// At most this many directories stay open in a [`DirCache`]: a deep tree
/// must not exhaust the process's file descriptors.
const CACHED_DIRS: usize = 32;

/// Open directories by cleaned relative path, reused while consecutive
/// operations share them. Archives list a directory's entries together, so
/// the files of one directory cost one open instead of one walk each.
///
/// The cache keeps a chain: each entry is an ancestor of the next. Whoever
/// removes or replaces anything must [`DirCache::forget`] it first, so that
/// no cached descriptor names a directory that left the tree.
#[derive(Default)]
pub struct DirCache {
    chain: Vec<(Vec<u8>, OwnedFd)>,
}

fn is_at_or_below(path: &[u8], dir: &[u8]) -> bool {
    dir.is_empty()
        || (path.starts_with(dir) && (path.len() == dir.len() || path[dir.len()] == b'/'))
}

impl DirCache {
    /// The cached directory `path`, if it is cached.
    pub fn get(&self, path: &[u8]) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.chain
            .iter()
            .rev()
            .find(|(p, _)| p.as_slice() == path)
            .map(|(_, fd)| fd.as_fd())
    }

    /// Caches `fd` as the directory `path`, dropping what is not one of its
    /// ancestors.
    pub fn insert(&mut self, path: &[u8], fd: OwnedFd) -> std::os::fd::BorrowedFd<'_> {
        while self
            .chain
            .last()
            .is_some_and(|(p, _)| !is_at_or_below(path, p) || p.as_slice() == path)
        {
            self.chain.pop();
        }
        if self.chain.len() >= CACHED_DIRS {
            self.chain.remove(0);
        }
        self.chain.push((path.to_vec(), fd));
        let (_, fd) = &self.chain[self.chain.len() - 1];
        fd.as_fd()
    }

    /// Drops every cached directory at or below `path`.
    pub fn forget(&mut self, path: &[u8]) {
        self.chain.retain(|(p, _)| !is_at_or_below(p, path));
    }

    /// Drops everything.
    pub fn clear(&mut self) {
        self.chain.clear();
    }

    /// The directory `path` below `base`, opened as [`open_dir_beneath`]
    /// does (no symbolic link followed at any component), starting from the
    /// deepest cached ancestor. Every directory it opens is cached.
    pub fn open_beneath(
        &mut self,
        base: impl AsFd,
        path: &[u8],
    ) -> io::Result<std::os::fd::BorrowedFd<'_>> {
        if path.is_empty() {
            let fd = open_dir_beneath(base, b"")?;
            return Ok(self.insert(b"", fd));
        }
        let mut at = self
            .chain
            .iter()
            .rposition(|(p, _)| !p.is_empty() && is_at_or_below(path, p))
            .map_or(0, |i| self.chain[i].0.len());
        while at < path.len() {
            let from = if at == 0 { 0 } else { at + 1 };
            let end = path[from..]
                .iter()
                .position(|&b| b == b'/')
                .map_or(path.len(), |i| from + i);
            let part = &path[from..end];
            if part.is_empty() || part == b"." || part == b".." {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a path with empty, `.` or `..` components",
                ));
            }
            let fd = if at == 0 {
                open_dir_at(base.as_fd(), part)?
            } else {
                let parent = self
                    .get(&path[..at])
                    .ok_or_else(|| io::Error::other("a parent left the directory cache"))?;
                open_dir_at(parent, part)?
            };
            self.insert(&path[..end], fd);
            at = end;
        }
        self.get(path)
            .ok_or_else(|| io::Error::other("a directory left the directory cache"))
    }
}

/// Splits a cleaned relative path into its parent and final component.
pub fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_refuse_symlinks_at_every_component() -> io::Result<()> {
        let tmp = tempfile::tempdir()?;
        let outside = tempfile::tempdir()?;
        std::fs::write(outside.path().join("secret"), "host")?;
        std::fs::create_dir(tmp.path().join("d"))?;
        std::fs::write(tmp.path().join("d/f"), "in")?;
        std::os::unix::fs::symlink(outside.path(), tmp.path().join("link"))?;
        std::os::unix::fs::symlink(outside.path().join("secret"), tmp.path().join("d/s"))?;
        let root = open_dir(tmp.path())?;
        assert!(open_beneath(&root, b"d/f", OFlags::RDONLY).is_ok());
        assert!(open_beneath(&root, b"link/secret", OFlags::RDONLY).is_err());
        assert!(open_beneath(&root, b"d/s", OFlags::RDONLY).is_err());
        assert!(open_beneath(&root, b"d/../link", OFlags::RDONLY).is_err());
        // Removing a link to a directory removes the link, not its target.
        remove_at(&root, b"link")?;
        assert!(outside.path().join("secret").exists());
        let (d, created) = ensure_dir_at(&root, b"d")?;
        assert!(!created);
        remove_at(&d, b"s")?;
        assert!(outside.path().join("secret").exists());
        Ok(())
    }

    #[test]
    fn the_directory_cache_walks_as_open_beneath_does() -> io::Result<()> {
        let tmp = tempfile::tempdir()?;
        let outside = tempfile::tempdir()?;
        std::fs::create_dir_all(tmp.path().join("a/b/c"))?;
        std::fs::create_dir_all(tmp.path().join("a/x"))?;
        std::os::unix::fs::symlink(outside.path(), tmp.path().join("a/link"))?;
        std::fs::create_dir(outside.path().join("inner"))?;
        let root = open_dir(tmp.path())?;
        let mut cache = DirCache::default();
        let c = cache.open_beneath(&root, b"a/b/c")?;
        rustix::fs::mkdirat(c, "made", Mode::from_raw_mode(0o755))?;
        assert!(tmp.path().join("a/b/c/made").is_dir());
        // From a cached ancestor into a sibling, and back to an ancestor.
        let x = cache.open_beneath(&root, b"a/x")?;
        rustix::fs::mkdirat(x, "y", Mode::from_raw_mode(0o755))?;
        assert!(tmp.path().join("a/x/y").is_dir());
        let a = cache.open_beneath(&root, b"a")?;
        assert_eq!(stat_at(a, b"b")?, Found::Dir);
        // A symlink is refused at every component, cached ancestor or not.
        assert!(cache.open_beneath(&root, b"a/link").is_err());
        assert!(cache.open_beneath(&root, b"a/link/inner").is_err());
        cache.clear();
        assert!(cache.open_beneath(&root, b"a/link/inner").is_err());
        assert!(cache.open_beneath(&root, b"a/../a").is_err());
        assert!(cache.open_beneath(&root, b"a//b").is_err());
        // A forgotten directory is walked to again: replaced by a symlink
        // meanwhile, it is refused instead of reused.
        cache.open_beneath(&root, b"a/b/c")?;
        std::fs::rename(tmp.path().join("a/b"), tmp.path().join("gone"))?;
        std::os::unix::fs::symlink(outside.path(), tmp.path().join("a/b"))?;
        cache.forget(b"a/b");
        assert!(cache.get(b"a/b/c").is_none());
        assert!(cache.get(b"a").is_some());
        assert!(cache.open_beneath(&root, b"a/b/c").is_err());
        // Deeper than the cache holds.
        let deep: Vec<String> = (0..3 * CACHED_DIRS).map(|i| format!("d{i}")).collect();
        std::fs::create_dir_all(tmp.path().join(deep.join("/")))?;
        let fd = cache.open_beneath(&root, deep.join("/").as_bytes())?;
        rustix::fs::mkdirat(fd, "end", Mode::from_raw_mode(0o755))?;
        assert!(tmp.path().join(deep.join("/")).join("end").is_dir());
        assert!(cache.chain.len() <= CACHED_DIRS);
        Ok(())
    }

    #[test]
    fn removal_empties_deep_and_read_only_trees() -> io::Result<()> {
        let tmp = tempfile::tempdir()?;
        let mut p = tmp.path().join("top");
        for i in 0..200 {
            p = p.join(format!("d{i}"));
        }
        std::fs::create_dir_all(&p)?;
        std::fs::write(p.join("f"), "x")?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            tmp.path().join("top/d0"),
            std::fs::Permissions::from_mode(0o500),
        )?;
        let root = open_dir(tmp.path())?;
        remove_at(&root, b"top")?;
        assert!(!tmp.path().join("top").exists());
        Ok(())
    }
}
