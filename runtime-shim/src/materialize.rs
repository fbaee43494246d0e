//! Materializing imports from the block store into a root filesystem.
//!
//! An import at `D/NAME` behaves as if the layer held, at that position, the
//! entries of the block at and below `SOURCE` (`spec/imports.md`): `D` is
//! resolved inside the root like the parent of any layer entry, and below it
//! every path is created relative to an open directory without following any
//! symbolic link ([`crate::fsat`]). Whatever lower layers left at `D/NAME` or
//! below it is replaced exactly as a layer entry would replace it: a
//! directory over a directory merges, anything else is removed, and a
//! symbolic link is removed, never followed.
//!
//! The entries are placed in canonical order (`spec/fallback.md`,
//! "Materialized entries"): directories before what they hold, and of every
//! set of paths that are one file in the block (a regular file and the hard
//! links to it), the first in that order gets the content and the others are
//! hard links to it, whatever order the block's archive had. A hard link to a
//! file outside the imported subtree becomes such a file of its own. Files
//! come from the store by copy, reflink or, for read-only root filesystems,
//! hard link; the store's shared inodes are then never chowned, chmodded or
//! touched.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use oci_blocks_core::Digest;
use oci_blocks_core::block::{self, EntryMeta, Item, Placed, PlanError};
use oci_blocks_core::entry;
use oci_blocks_core::expand::ImportBudget;
use oci_blocks_core::import::ImportEntry;
use oci_blocks_core::layout::OciDir;
use oci_blocks_core::limits::Limits;
use oci_blocks_core::oci_spec::image::Descriptor;
use oci_blocks_core::validate::Rule;
use pathrs::Root;
use rustix::fs::{AtFlags, Mode, OFlags};

use crate::apply::{ImportHeader, ImportSource, Materialized, as_path, set_xattrs, timestamps};
use crate::fsat::{self, DirCache};
use crate::store::{BlockStore, Extracted};
use crate::unpack::LinkMode;
use crate::{Error, Result};

/// The core's plan of an import, with its errors named as the unpacker
/// names them.
fn plan<'b>(
    block: &'b Extracted,
    import: &ImportEntry,
    subject: &str,
) -> Result<(Vec<Item<'b>>, u64)> {
    block::plan(&block.index, import.source_in_block().as_bytes()).map_err(|e| {
        let what = match &e {
            PlanError::SourceMissing => {
                format!("block {} has no entry {}", import.digest(), import.source())
            }
            other => format!("block {}: {other}", import.digest()),
        };
        Error::invalid(subject, format!("{what} [{}]", e.rule()))
    })
}

/// Imports resolved from the block store.
pub(crate) struct StoreImports<'a> {
    pub(crate) layout: &'a OciDir,
    pub(crate) store: &'a BlockStore,
    pub(crate) declared: HashMap<Digest, Descriptor>,
    pub(crate) extracted: HashMap<Digest, Extracted>,
    pub(crate) link: LinkMode,
    pub(crate) privileged: bool,
    pub(crate) limits: Limits,
    /// What the image's imports materialized so far.
    budget: ImportBudget,
    pub(crate) report_extracted: Vec<String>,
    pub(crate) report_reused: Vec<String>,
    pub(crate) skipped_xattrs: Vec<String>,
    /// Whether reflinks are still worth trying (`--link auto`).
    clones: bool,
}

/// Copies `len` bytes of `src` into the empty `dst` in the kernel
/// (`copy_file_range`), through a buffer where the kernel cannot.
fn copy_contents(src: &OwnedFd, dst: &OwnedFd, len: u64) -> io::Result<()> {
    let mut left = len;
    while left > 0 {
        let chunk = usize::try_from(left.min(1 << 30)).unwrap_or(1 << 30);
        match rustix::fs::copy_file_range(src, None, dst, None, chunk) {
            Ok(0) => break,
            Ok(n) => left = left.saturating_sub(n as u64),
            Err(
                rustix::io::Errno::XDEV
                | rustix::io::Errno::NOSYS
                | rustix::io::Errno::INVAL
                | rustix::io::Errno::OPNOTSUPP,
            ) if left == len => {
                let (mut from, mut to) = (
                    fs::File::from(src.try_clone()?),
                    fs::File::from(dst.try_clone()?),
                );
                io::copy(&mut from, &mut to)?;
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
    }
    if left > 0 {
        // The store's file is shorter than its size a moment ago.
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the block store's file changed while it was copied",
        ));
    }
    Ok(())
}

impl<'a> StoreImports<'a> {
    pub(crate) fn new(
        layout: &'a OciDir,
        store: &'a BlockStore,
        declared: HashMap<Digest, Descriptor>,
        link: LinkMode,
        limits: Limits,
    ) -> Self {
        StoreImports {
            layout,
            store,
            declared,
            extracted: HashMap::new(),
            link,
            privileged: rustix::process::geteuid().is_root(),
            limits,
            budget: ImportBudget::default(),
            report_extracted: Vec::new(),
            report_reused: Vec::new(),
            skipped_xattrs: Vec::new(),
            clones: true,
        }
    }

    /// The block, extracted into the store if it is not there yet.
    pub(crate) fn block(&mut self, digest: &Digest, subject: &str) -> Result<Extracted> {
        if let Some(e) = self.extracted.get(digest) {
            return Ok(e.clone());
        }
        let d = self.declared.get(digest).ok_or_else(|| {
            Error::invalid(
                subject,
                format!(
                    "block {digest} is not listed in the manifest's blocks [{}]",
                    Rule::ImportUndeclaredDigest
                ),
            )
        })?;
        let (ex, new) = self.store.ensure(
            self.layout,
            digest,
            d.size(),
            d.media_type().as_ref(),
            &self.limits,
        )?;
        if new {
            self.report_extracted.push(digest.to_string());
        } else {
            self.report_reused.push(digest.to_string());
        }
        self.extracted.insert(digest.clone(), ex.clone());
        Ok(ex)
    }

    /// Places the file `content` (a regular file of the block) as `name` in
    /// `dir`. `sources` caches the block's directories.
    fn place_file(
        &mut self,
        block: &Extracted,
        sources: &mut DirCache,
        content: &EntryMeta,
        dir: impl AsFd,
        name: &[u8],
        shown: &Path,
    ) -> Result<()> {
        let store_err = |e: io::Error| {
            let stored = String::from_utf8_lossy(&content.path.0).into_owned();
            Error::io(Path::new("block store").join(stored), e)
        };
        let (sdir, sname) = fsat::split(&content.path.0);
        let src_dir = sources
            .open_beneath(&*block.tree, sdir)
            .map_err(store_err)?;
        if self.link == LinkMode::Hardlink {
            let src = src_dir;
            let st = rustix::fs::statat(src, sname, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| store_err(e.into()))?;
            if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile
            {
                return Err(store_err(io::Error::other(
                    "not a regular file in the store",
                )));
            }
            rustix::fs::linkat(src, sname, dir, name, AtFlags::empty())
                .map_err(|e| Error::io(shown, e.into()))?;
            return Ok(());
        }
        let src = rustix::fs::openat(
            src_dir,
            sname,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| store_err(e.into()))?;
        let st = rustix::fs::fstat(&src).map_err(|e| store_err(e.into()))?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
            return Err(store_err(io::Error::other(
                "not a regular file in the store",
            )));
        }
        let dst = fsat::create_file_at(dir, name).map_err(|e| Error::io(shown, e))?;
        let cloned = match self.link {
            LinkMode::Reflink => match rustix::fs::ioctl_ficlone(&dst, &src) {
                Ok(()) => true,
                Err(e) => {
                    let stored = String::from_utf8_lossy(&content.path.0).into_owned();
                    return Err(Error::Option {
                        option: "--link reflink".into(),
                        reason: format!(
                            "the file system of the block store cannot clone {stored}: {e}"
                        ),
                    });
                }
            },
            // Once the file systems have refused a clone, copy without asking.
            LinkMode::Auto if self.clones => match rustix::fs::ioctl_ficlone(&dst, &src) {
                Ok(()) => true,
                Err(e) => {
                    self.clones = !matches!(
                        e,
                        rustix::io::Errno::OPNOTSUPP
                            | rustix::io::Errno::XDEV
                            | rustix::io::Errno::INVAL
                            | rustix::io::Errno::NOTTY
                    );
                    false
                }
            },
            _ => false,
        };
        if !cloned {
            copy_contents(&src, &dst, st.st_size as u64).map_err(|e| Error::io(shown, e))?;
        }
        // Ownership first: a chown clears set-id bits and capabilities.
        if self.privileged {
            rustix::fs::fchown(
                &dst,
                Some(rustix::process::Uid::from_raw(content.uid as u32)),
                Some(rustix::process::Gid::from_raw(content.gid as u32)),
            )
            .map_err(|e| Error::io(shown, e.into()))?;
        }
        rustix::fs::fchmod(&dst, Mode::from_raw_mode(content.mode & 0o7777))
            .map_err(|e| Error::io(shown, e.into()))?;
        set_xattrs(
            &dst,
            shown,
            &content.xattrs,
            self.privileged,
            &mut self.skipped_xattrs,
        );
        rustix::fs::futimens(&dst, &timestamps(content.mtime))
            .map_err(|e| Error::io(shown, e.into()))?;
        Ok(())
    }

    /// Gives a directory its final metadata.
    fn finish_dir(
        &mut self,
        fd: BorrowedFd<'_>,
        meta: Option<&EntryMeta>,
        header: &ImportHeader,
        shown: &Path,
    ) -> Result<()> {
        let (mode, uid, gid, mtime) = match meta {
            Some(m) => (m.mode, m.uid, m.gid, m.mtime),
            None => (0o755, header.uid, header.gid, header.mtime),
        };
        if self.privileged {
            rustix::fs::fchown(
                fd,
                Some(rustix::process::Uid::from_raw(uid as u32)),
                Some(rustix::process::Gid::from_raw(gid as u32)),
            )
            .map_err(|e| Error::io(shown, e.into()))?;
        }
        rustix::fs::fchmod(fd, Mode::from_raw_mode(mode & 0o7777))
            .map_err(|e| Error::io(shown, e.into()))?;
        if let Some(m) = meta {
            set_xattrs(
                &fd,
                shown,
                &m.xattrs,
                self.privileged,
                &mut self.skipped_xattrs,
            );
        }
        let _ = rustix::fs::futimens(fd, &timestamps(mtime));
        Ok(())
    }
}

impl ImportSource for StoreImports<'_> {
    fn materialize(
        &mut self,
        root: &Root,
        target: &[u8],
        import: &ImportEntry,
        header: &ImportHeader,
        subject: &str,
    ) -> Result<Materialized> {
        let block = self.block(import.digest(), subject)?;
        let (items, bytes) = plan(&block, import, subject)?;
        self.budget
            .add(
                &self.limits,
                import.digest(),
                block.index.content_bytes(),
                bytes,
                items.len() as u64,
            )
            .map_err(|e| Error::invalid(subject, format!("{e} [{}]", Rule::LimitExceeded)))?;

        let (dpath, dname) = fsat::split(target);
        let in_root = |e| Error::in_root(format!("materializing {}", as_path(target).display()), e);
        let parent = if dpath.is_empty() {
            root.resolve(".").map_err(in_root)?
        } else {
            root.resolve(as_path(dpath)).map_err(in_root)?
        };
        let shown = |rel: &[u8]| as_path(&entry::join(target, rel)).to_path_buf();
        let fresh = fsat::stat_at(&parent, dname).map_err(|e| Error::io(shown(b""), e))?
            == fsat::Found::Nothing;

        // The block's directories, opened once for all the files they hold.
        let mut sources = DirCache::default();
        // The destination itself.
        let mut stack: Vec<(Vec<u8>, OwnedFd)> = Vec::new();
        let mut dirs: Vec<(Vec<u8>, Option<&EntryMeta>)> = Vec::new();
        let mut links: Vec<(&Item<'_>, &[u8])> = Vec::new();
        let first = &items[0];
        match &first.placed {
            Placed::Dir(meta) => {
                let (fd, _) =
                    fsat::ensure_dir_at(&parent, dname).map_err(|e| Error::io(shown(b""), e))?;
                if !self.privileged {
                    let _ = rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o700));
                }
                dirs.push((Vec::new(), *meta));
                stack.push((Vec::new(), fd));
            }
            other => {
                if !fresh {
                    fsat::remove_at(&parent, dname).map_err(|e| Error::io(shown(b""), e))?;
                }
                self.place(&block, &mut sources, other, &parent, dname, &shown(b""))?;
            }
        }
        for item in &items[1..] {
            let (pdir, name) = fsat::split(&item.rel);
            while stack.last().is_some_and(|(rel, _)| rel.as_slice() != pdir) {
                stack.pop();
            }
            let Some((_, pfd)) = stack.last() else {
                return Err(Error::invalid(
                    subject,
                    format!("{} has no parent in the import", shown(&item.rel).display()),
                ));
            };
            let here = shown(&item.rel);
            match &item.placed {
                Placed::Dir(meta) => {
                    let fd = if fresh {
                        rustix::fs::mkdirat(pfd, name, Mode::from_raw_mode(0o700))
                            .map_err(|e| Error::io(&here, e.into()))?;
                        fsat::open_dir_at(pfd, name).map_err(|e| Error::io(&here, e))?
                    } else {
                        let (fd, _) =
                            fsat::ensure_dir_at(pfd, name).map_err(|e| Error::io(&here, e))?;
                        if !self.privileged {
                            let _ = rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o700));
                        }
                        fd
                    };
                    dirs.push((item.rel.clone(), *meta));
                    stack.push((item.rel.clone(), fd));
                }
                Placed::Link(..) => links.push((item, name)),
                other => {
                    if !fresh {
                        fsat::remove_at(pfd, name).map_err(|e| Error::io(&here, e))?;
                    }
                    self.place(&block, &mut sources, other, pfd, name, &here)?;
                }
            }
        }
        stack.clear();
        // Hard links, once every file they name is in place.
        // The tree made, for what follows; only directories were opened.
        let mut made = DirCache::default();
        let top = match &first.placed {
            Placed::Dir(_) => {
                Some(fsat::open_dir_at(&parent, dname).map_err(|e| Error::io(shown(b""), e))?)
            }
            _ => None,
        };
        if let Some(top) = &top {
            for (item, name) in links {
                let Placed::Link(leader, _) = item.placed else {
                    continue;
                };
                let leader = &items[leader].rel;
                let here = shown(&item.rel);
                let (ldir, lname) = fsat::split(leader);
                let lfd = made
                    .open_beneath(top, ldir)
                    .map_err(|e| Error::io(&here, e))?
                    .try_clone_to_owned()
                    .map_err(|e| Error::io(&here, e))?;
                let (pdir, _) = fsat::split(&item.rel);
                let pfd = made
                    .open_beneath(top, pdir)
                    .map_err(|e| Error::io(&here, e))?;
                if !fresh {
                    fsat::remove_at(pfd, name).map_err(|e| Error::io(&here, e))?;
                }
                rustix::fs::linkat(&lfd, lname, pfd, name, AtFlags::empty())
                    .map_err(|e| Error::io(&here, e.into()))?;
            }
        }
        // Directories last, deepest first: their final modes and times.
        let mut made_dirs = Vec::new();
        for (rel, meta) in dirs.into_iter().rev() {
            let (mode, mtime) = meta.map_or((0o755, header.mtime), |m| (m.mode, m.mtime));
            made_dirs.push((entry::join(target, &rel), mode, mtime));
            let here = shown(&rel);
            let Some(top) = &top else {
                continue;
            };
            let fd = made
                .open_beneath(top, &rel)
                .map_err(|e| Error::io(&here, e))?;
            self.finish_dir(fd, meta, header, &here)?;
        }
        made_dirs.reverse();
        Ok(Materialized {
            paths: items.iter().map(|i| entry::join(target, &i.rel)).collect(),
            dirs: made_dirs,
        })
    }
}

impl StoreImports<'_> {
    /// Creates a file or symlink `name` in `dir` (nothing is there).
    fn place(
        &mut self,
        block: &Extracted,
        sources: &mut DirCache,
        placed: &Placed<'_>,
        dir: &impl AsFd,
        name: &[u8],
        shown: &Path,
    ) -> Result<()> {
        match placed {
            Placed::File(content) => self.place_file(block, sources, content, dir, name, shown),
            Placed::Symlink(meta) => {
                let link = meta.link.as_ref().map(|l| &l.0[..]).unwrap_or_default();
                rustix::fs::symlinkat(link, dir, name).map_err(|e| Error::io(shown, e.into()))?;
                for (x, _) in &meta.xattrs {
                    self.skipped_xattrs.push(format!(
                        "{}: {x} (not restored on symlinks)",
                        shown.display()
                    ));
                }
                Ok(())
            }
            // Directories and links are placed by the caller.
            Placed::Dir(_) | Placed::Link(..) => Ok(()),
        }
    }
}
