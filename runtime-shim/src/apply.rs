//! Applying one layer's tar stream to a root filesystem, as the image-spec's
//! `layer.md` says, with every path resolved inside the root.
//!
//! All file-system operations go through a [`pathrs::Root`]: each path is
//! resolved as if the root were `/` (openat2 `RESOLVE_IN_ROOT` where the kernel
//! has it, a checked component walk where it does not), so an absolute or `..`
//! symlink planted by a lower layer is re-anchored at the root and never
//! followed on the host. Entry names are cleaned and entry types classified by
//! the core's [`oci_blocks_core::entry`], the same functions the validator
//! uses, so both read the same archive. Whiteouts apply only to lower layers:
//! a `.wh.` entry never removes what its own layer created, whichever comes
//! first in the tar, and opaque whiteouts are applied when the layer ends.
//! Directory times are set last, once every layer is in place.
//!
//! The same applier extracts blocks into the block store, with the rules of
//! [`oci_blocks_core::block`] enforced: a block is as untrusted as a layer.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs::Permissions;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use oci_blocks_core::block::{BlockShape, EntryMeta};
use oci_blocks_core::entry::{self, Kind, Role};
use oci_blocks_core::import::ImportEntry;
use oci_blocks_core::limits::Limits;
use oci_blocks_core::names::MAX_IMPORT_SIZE;
use oci_blocks_core::tarcheck;
use oci_blocks_core::validate::Rule;
use pathrs::flags::OpenFlags;
use pathrs::{InodeType, Root};
use rustix::fs::{AtFlags, Mode};

use crate::fsat::{self, DirCache, Found};

use crate::{Error, Result};

/// A cleaned path as a [`Path`].
pub(crate) fn as_path(bytes: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(bytes))
}

/// The tar header fields of an import entry that the directories it creates
/// without an entry of their own take (`spec/imports.md`, "Metadata").
#[derive(Clone, Copy, Debug, Default)]
pub struct ImportHeader {
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Modification time.
    pub mtime: u64,
}

/// What an import created.
#[derive(Debug, Default)]
pub struct Materialized {
    /// Every path (cleaned, relative to the root), so that whiteouts of the
    /// same layer leave them alone.
    pub paths: Vec<Vec<u8>>,
    /// Its directories' modes and times, which are set again when every
    /// layer is in place, as for a layer's directories.
    pub dirs: Vec<(Vec<u8>, u32, u64)>,
}

/// Materializes import entries; the unpacker backs it with the block store.
pub trait ImportSource {
    /// Creates `target` (cleaned, relative to the root) from `import`.
    fn materialize(
        &mut self,
        root: &Root,
        target: &[u8],
        import: &ImportEntry,
        header: &ImportHeader,
        subject: &str,
    ) -> Result<Materialized>;
}

/// What applying layers did beyond the obvious.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ApplyReport {
    /// Tar entries applied.
    pub entries: u64,
    /// Import entries materialized.
    pub imports: u64,
    /// Device nodes skipped because the unpacker is not root.
    pub skipped_devices: Vec<String>,
    /// Extended attributes not restored, each as `PATH: NAME (why)`.
    pub skipped_xattrs: Vec<String>,
}

/// Refuses `trusted.*` extended attributes: that namespace configures the
/// host (overlayfs keeps its whiteouts and redirects there), not the image.
fn refuse_trusted(xattrs: &[(String, Vec<u8>)], esubject: &str) -> Result<()> {
    match xattrs.iter().find(|(name, _)| name.starts_with("trusted.")) {
        Some((name, _)) => Err(Error::invalid(
            esubject,
            format!(
                "extended attribute {name} refused: trusted.* attributes configure the host, not the image"
            ),
        )),
        None => Ok(()),
    }
}

/// Sets the extended attributes this unpacker restores on `file`: `user.*`
/// always, `security.capability` when privileged (it needs CAP_SETFCAP).
/// Everything else, and what the file system refuses, is reported.
pub(crate) fn set_xattrs(
    file: &impl std::os::fd::AsFd,
    path: &Path,
    xattrs: &[(String, Vec<u8>)],
    privileged: bool,
    skipped: &mut Vec<String>,
) {
    for (name, value) in xattrs {
        let why = if name.starts_with("user.") || (privileged && name == "security.capability") {
            match rustix::fs::fsetxattr(file, name.as_str(), value, rustix::fs::XattrFlags::empty())
            {
                Ok(()) => continue,
                Err(e) => e.to_string(),
            }
        } else if name == "security.capability" {
            "needs CAP_SETFCAP".to_string()
        } else {
            "namespace not restored".to_string()
        };
        skipped.push(format!("{}: {name} ({why})", path.display()));
    }
}

/// Access and modification time `mtime`, as a layer entry sets them.
pub(crate) fn timestamps(mtime: u64) -> rustix::fs::Timestamps {
    let t = rustix::fs::Timespec {
        tv_sec: i64::try_from(mtime).unwrap_or(i64::MAX),
        tv_nsec: 0,
    };
    rustix::fs::Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// The paths one layer made, for its whiteouts: they never hide them.
#[derive(Default)]
struct Own(BTreeSet<Vec<u8>>);

impl Own {
    fn insert(&mut self, path: Vec<u8>) {
        self.0.insert(path);
    }

    fn contains(&self, path: &[u8]) -> bool {
        self.0.contains(path)
    }

    /// Whether the layer made `path` or anything below it.
    fn any_at_or_below(&self, path: &[u8]) -> bool {
        if path.is_empty() {
            return !self.0.is_empty();
        }
        if self.contains(path) {
            return true;
        }
        let below = [path, b"/"].concat();
        self.0
            .range(below.clone()..)
            .next()
            .is_some_and(|p| p.starts_with(&below))
    }
}

/// A block being extracted: its shape, the metadata of every entry, and the
/// hard links, which are made once every entry is in place so that any
/// order works.
#[derive(Default)]
struct BlockRecord {
    shape: BlockShape,
    entries: Vec<EntryMeta>,
    links: Vec<(Vec<u8>, Vec<u8>, String)>,
}

/// Applies layers to one root, in order.
pub struct Applier<'r> {
    root: &'r Root,
    privileged: bool,
    limits: Limits,
    /// Directories' final modes and times, applied last. Without privilege a
    /// directory stays owner-writable until then (as `umoci --rootless` does),
    /// so that a read-only directory of a lower layer can still be filled.
    dir_times: Vec<(Vec<u8>, u32, u64)>,
    /// When set, the tar is a block: what a block may hold is enforced and
    /// every entry's metadata is recorded here.
    block: Option<BlockRecord>,
    /// Directories known to exist, so that parents are not re-created (and
    /// re-resolved) for every file.
    known_dirs: BTreeSet<Vec<u8>>,
    /// Parent directories resolved in the root, reused while consecutive
    /// entries share them; emptied whenever anything is removed or an
    /// import changes the tree, since a symlink may alias a cached path.
    parents: DirCache,
    /// What was done.
    pub report: ApplyReport,
}

/// The directory `parent` (cleaned, relative) in the root, resolved as every
/// path in it is (symlinks followed inside the root), from `cache` when the
/// previous entry resolved it already. The entry's own name is then created
/// relative to it with `O_NOFOLLOW`/`O_EXCL`, as pathrs creates it.
fn parent_fd<'c>(
    cache: &'c mut DirCache,
    root: &Root,
    parent: &[u8],
) -> Result<std::os::fd::BorrowedFd<'c>> {
    if cache.get(parent).is_none() {
        let at: &[u8] = if parent.is_empty() { b"." } else { parent };
        let handle = root
            .resolve(as_path(at))
            .map_err(|e| Error::in_root(format!("resolving {}", as_path(at).display()), e))?;
        let fd = OwnedFd::from(handle);
        let st = rustix::fs::fstat(&fd).map_err(|e| Error::io(as_path(at), e.into()))?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Directory {
            return Err(Error::io(
                as_path(at),
                io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
            ));
        }
        cache.insert(parent, fd);
    }
    cache.get(parent).ok_or_else(|| {
        Error::io(
            as_path(parent),
            io::Error::other("left the directory cache"),
        )
    })
}

/// Whether `path` is a directory (not a link to one) inside the root.
pub(crate) fn is_dir(root: &Root, path: &[u8]) -> bool {
    let at = if path.is_empty() { b"." as &[u8] } else { path };
    root.resolve_nofollow(as_path(at))
        .and_then(|h| {
            h.reopen(OpenFlags::O_RDONLY | OpenFlags::O_DIRECTORY | OpenFlags::O_NOFOLLOW)
        })
        .is_ok()
}

impl<'r> Applier<'r> {
    /// An applier for `root` within `limits`; ownership and device nodes are
    /// applied only when running as root.
    pub fn new(root: &'r Root, limits: Limits) -> Self {
        Applier {
            root,
            privileged: rustix::process::geteuid().is_root(),
            limits,
            dir_times: Vec::new(),
            block: None,
            known_dirs: BTreeSet::new(),
            parents: DirCache::default(),
            report: ApplyReport::default(),
        }
    }

    /// An applier for extracting a block: it refuses what a block may not
    /// hold, keeps files without write permission, and records every entry's
    /// metadata.
    pub fn for_block(root: &'r Root, limits: Limits) -> Self {
        let mut a = Applier::new(root, limits);
        a.block = Some(BlockRecord::default());
        a
    }

    /// For a block: makes its hard links, checks the rules that need the
    /// whole block, and returns its entries' metadata, sorted by path.
    pub fn finish_block(&mut self, subject: &str) -> Result<Vec<EntryMeta>> {
        let Some(record) = self.block.take() else {
            return Ok(Vec::new());
        };
        if let Some(p) = record.shape.finish().into_iter().next() {
            return Err(Error::invalid(
                format!("{subject}: entry {}", p.entry),
                format!("{} [{}]", p.reason, p.rule),
            ));
        }
        for (path, target, shown) in &record.links {
            self.root
                .create(
                    as_path(path),
                    &InodeType::Hardlink(as_path(target).to_path_buf()),
                )
                .map_err(|e| Error::in_root(format!("{subject}: creating hard link {shown}"), e))?;
        }
        let mut entries = record.entries;
        entries.sort_by(|a, b| a.path.0.cmp(&b.path.0));
        Ok(entries)
    }

    fn remove(&mut self, path: &[u8]) -> Result<()> {
        if path.is_empty() {
            return Ok(());
        }
        let (dir, name) = fsat::split(path);
        let Ok(pfd) = parent_fd(&mut self.parents, self.root, dir) else {
            return Ok(());
        };
        if !matches!(fsat::stat_at(pfd, name), Ok(Found::Dir | Found::Other)) {
            return Ok(());
        }
        self.parents.clear();
        let below = [path, b"/"].concat();
        self.known_dirs
            .retain(|d| d.as_slice() != path && !d.starts_with(&below));
        self.root
            .remove_all(as_path(path))
            .map_err(|e| Error::in_root(format!("removing {}", as_path(path).display()), e))
    }

    fn parent_dirs(&mut self, path: &[u8]) -> Result<()> {
        let parent = entry::clean(path);
        let parent = parent.parent();
        if parent.is_empty() || self.known_dirs.contains(parent) {
            return Ok(());
        }
        self.root
            .mkdir_all(as_path(parent), &Permissions::from_mode(0o755))
            .map_err(|e| {
                Error::in_root(
                    format!("creating the parents of {}", as_path(path).display()),
                    e,
                )
            })?;
        let mut p = parent;
        loop {
            self.known_dirs.insert(p.to_vec());
            match p.iter().rposition(|&b| b == b'/') {
                Some(i) => p = &p[..i],
                None => break,
            }
        }
        Ok(())
    }

    /// Applies one uncompressed layer, whose blob has `compressed` bytes.
    /// `imports` resolves `.import.` entries when the layer may have them;
    /// without it they are plain files. An entry that would take the layer
    /// past its expansion bound is refused before it is written.
    pub fn apply_layer(
        &mut self,
        stream: impl Read,
        mut imports: Option<&mut dyn ImportSource>,
        subject: &str,
        compressed: u64,
    ) -> Result<()> {
        let bound = self.limits.expansion_limit(compressed);
        let mut own = Own::default();
        let mut opaque: Vec<Vec<u8>> = Vec::new();
        // Import targets of this layer: no other entry of the layer may be
        // at or below one ([import.conflict]).
        let mut imported: BTreeSet<Vec<u8>> = BTreeSet::new();
        let mut import_entries: BTreeSet<Vec<u8>> = BTreeSet::new();
        let mut import_count = 0u64;
        let mut archive = tar::Archive::new(stream);
        let entries = archive
            .entries()
            .map_err(|e| Error::invalid(subject, format!("not a tar archive: {e}")))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| tar_error(subject, e))?;
            tarcheck::check_entry(&mut entry).map_err(|e| {
                Error::invalid(
                    subject,
                    format!("malformed tar: {e} [{}]", Rule::LayerTarMalformed),
                )
            })?;
            let raw = entry.path_bytes().into_owned();
            let shown = String::from_utf8_lossy(&raw).into_owned();
            let esubject = format!("{subject}: entry {shown}");
            let end = entry.raw_file_position().saturating_add(entry.size());
            if end > bound {
                let e = self
                    .limits
                    .check_expansion(subject, compressed, end)
                    .err()
                    .map_or_else(|| "over its expansion bound".to_string(), |e| e.to_string());
                return Err(Error::invalid(
                    esubject,
                    format!("{e} [{}]", Rule::LimitExceeded),
                ));
            }
            let kind = entry::kind(entry.header().entry_type());
            if let Some(block) = &mut self.block {
                let link = entry.link_name_bytes().map(|l| l.into_owned());
                if !block.shape.add(&raw, kind.clone(), link.as_deref()) {
                    let shape = std::mem::take(&mut block.shape);
                    let p = shape.finish().into_iter().next();
                    return Err(match p {
                        Some(p) => Error::invalid(
                            format!("{subject}: entry {}", p.entry),
                            format!("{} [{}]", p.reason, p.rule),
                        ),
                        None => Error::invalid(esubject, "not something a block may hold"),
                    });
                }
            }
            let kind = match kind {
                Ok(Kind::GlobalHeader) => continue,
                Ok(k) => k,
                Err(why) => {
                    return Err(Error::invalid(
                        esubject,
                        format!(
                            "{why}, which this unpacker does not apply [{}]",
                            Rule::LayerEntryType
                        ),
                    ));
                }
            };
            let name = entry::clean(&raw);
            self.report.entries += 1;
            let role = entry::role(&name);
            let path = name.path.clone();
            let parent = name.parent().to_vec();
            match role {
                Role::Root => continue,
                Role::Opaque if self.block.is_none() => {
                    opaque.push(parent);
                    continue;
                }
                Role::Whiteout(hidden) if self.block.is_none() => {
                    if hidden.is_empty() || hidden == b"." || hidden == b".." {
                        return Err(Error::invalid(esubject, "a whiteout must name a file"));
                    }
                    let target = entry::join(&parent, &hidden);
                    if !own.any_at_or_below(&target) {
                        self.remove(&target)?;
                    } else if is_dir(self.root, &target) {
                        // This layer already put something at or below the
                        // whited-out path: what lower layers had there is still
                        // hidden, as by an opaque whiteout, and the layer's own
                        // entries stay.
                        opaque.push(target);
                    }
                    continue;
                }
                Role::Import(named) if imports.is_some() => {
                    let source = imports
                        .as_deref_mut()
                        .ok_or_else(|| Error::invalid(&esubject, "no import source"))?;
                    let target_name = named
                        .map_err(|e| Error::invalid(&esubject, format!("{e} [{}]", e.rule())))?;
                    if kind != Kind::File {
                        return Err(Error::invalid(
                            &esubject,
                            format!(
                                "an import entry must be a regular file, not a {} [{}]",
                                kind.describe(),
                                Rule::ImportEntryType
                            ),
                        ));
                    }
                    if entry.size() > MAX_IMPORT_SIZE {
                        return Err(Error::invalid(
                            &esubject,
                            format!(
                                "{} bytes, more than {MAX_IMPORT_SIZE} [{}]",
                                entry.size(),
                                Rule::ImportTooLarge
                            ),
                        ));
                    }
                    if !import_entries.insert(path.clone()) {
                        return Err(Error::invalid(
                            &esubject,
                            format!(
                                "the same import entry appears twice in the layer [{}]",
                                Rule::ImportDuplicate
                            ),
                        ));
                    }
                    import_count += 1;
                    self.limits
                        .check_imports_per_layer(subject, import_count)
                        .map_err(|e| {
                            Error::invalid(&esubject, format!("{e} [{}]", Rule::LimitExceeded))
                        })?;
                    let header = ImportHeader {
                        uid: entry.header().uid().unwrap_or(0),
                        gid: entry.header().gid().unwrap_or(0),
                        mtime: entry.header().mtime().unwrap_or(0),
                    };
                    let mut content = Vec::new();
                    entry
                        .read_to_end(&mut content)
                        .map_err(|e| Error::invalid(&esubject, e.to_string()))?;
                    let parsed = ImportEntry::parse(&content)
                        .map_err(|e| Error::invalid(&esubject, format!("{e} [{}]", e.rule())))?;
                    let target = entry::join(&parent, &target_name);
                    if own.any_at_or_below(&target) {
                        return Err(Error::invalid(
                            &esubject,
                            format!(
                                "the layer also holds {} [{}]",
                                as_path(&target).display(),
                                Rule::ImportConflict
                            ),
                        ));
                    }
                    self.parent_dirs(&target)?;
                    let below = [&target[..], b"/"].concat();
                    self.known_dirs
                        .retain(|d| *d != target && !d.starts_with(&below));
                    self.parents.clear();
                    let made = source.materialize(self.root, &target, &parsed, &header, &esubject);
                    self.parents.clear();
                    let made = made?;
                    for p in made.paths {
                        own.insert(p);
                    }
                    self.dir_times.extend(made.dirs);
                    imported.insert(target);
                    self.report.imports += 1;
                    continue;
                }
                _ => {}
            }
            if let Some(t) = conflicting_import(&imported, &path) {
                return Err(Error::invalid(
                    esubject,
                    format!(
                        "the layer also imports {} [{}]",
                        as_path(t).display(),
                        Rule::ImportConflict
                    ),
                ));
            }
            self.apply_entry(&mut entry, kind, &path, &esubject)?;
            own.insert(path);
        }
        tarcheck::check_end(archive.into_inner()).map_err(|e| {
            Error::invalid(
                subject,
                format!("malformed tar: {e} [{}]", Rule::LayerTarMalformed),
            )
        })?;
        for dir in opaque {
            self.clear_lower(&dir, &own)?;
        }
        Ok(())
    }

    /// Removes what lower layers put under `dir`, keeping what this layer made.
    fn clear_lower(&mut self, dir: &[u8], own: &Own) -> Result<()> {
        let at: &[u8] = if dir.is_empty() { b"." } else { dir };
        let Ok(handle) = self.root.resolve_nofollow(as_path(at)) else {
            return Ok(());
        };
        let Ok(file) = handle.reopen(OpenFlags::O_RDONLY | OpenFlags::O_DIRECTORY) else {
            return Ok(());
        };
        let names = crate::fsat::list(&file).map_err(|e| Error::io(as_path(dir), e))?;
        for name in names {
            let child = entry::join(dir, &name);
            if own.contains(&child) {
                if is_dir(self.root, &child) {
                    self.clear_lower(&child, own)?;
                }
            } else if own.any_at_or_below(&child) {
                self.clear_lower(&child, own)?;
            } else {
                self.remove(&child)?;
            }
        }
        Ok(())
    }

    fn apply_entry(
        &mut self,
        entry: &mut tar::Entry<'_, impl Read>,
        kind: Kind,
        path: &[u8],
        esubject: &str,
    ) -> Result<()> {
        let meta = EntryMeta::of(entry, kind)
            .map_err(|e| Error::invalid(esubject, format!("unreadable header: {e}")))?;
        refuse_trusted(&meta.xattrs, esubject)?;
        let (mode, uid, gid, mtime) = (meta.mode, meta.uid, meta.gid, meta.mtime);
        let header = entry.header();
        let shown = as_path(path).display().to_string();
        let in_root = |what: &'static str| {
            let p = shown.clone();
            move |e| Error::in_root(format!("{what} {p}"), e)
        };
        let fs_path = as_path(path);
        let link = entry.link_name_bytes().map(|l| l.into_owned());
        let xattrs = meta.xattrs.clone();
        if let Some(record) = &mut self.block {
            record.entries.push(meta);
        }
        let (dname, fname) = fsat::split(path);
        if kind == Kind::Dir {
            // Missing parents as for any other entry (0755), not as this one.
            self.parent_dirs(path)?;
            let pfd = parent_fd(&mut self.parents, self.root, dname)?;
            let found = fsat::stat_at(pfd, fname).map_err(|e| Error::io(fs_path, e))?;
            if found == Found::Other {
                // A file or a symlink (never followed) gives way.
                rustix::fs::unlinkat(pfd, fname, AtFlags::empty())
                    .map_err(|e| Error::io(fs_path, e.into()))?;
            }
            if found != Found::Dir {
                rustix::fs::mkdirat(pfd, fname, Mode::from_raw_mode(0o700))
                    .map_err(|e| Error::io(fs_path, e.into()))?;
            }
            let dir = fsat::open_dir_at(pfd, fname).map_err(|e| Error::io(fs_path, e))?;
            if found == Found::Other {
                self.parents.clear();
            }
            self.known_dirs.insert(path.to_vec());
            if self.privileged {
                rustix::fs::fchown(
                    &dir,
                    Some(rustix::process::Uid::from_raw(uid as u32)),
                    Some(rustix::process::Gid::from_raw(gid as u32)),
                )
                .map_err(|e| Error::io(fs_path, e.into()))?;
            }
            let now = if self.privileged { mode } else { mode | 0o700 };
            rustix::fs::fchmod(&dir, Mode::from_raw_mode(now & 0o7777))
                .map_err(|e| Error::io(fs_path, e.into()))?;
            set_xattrs(
                &dir,
                fs_path,
                &xattrs,
                self.privileged,
                &mut self.report.skipped_xattrs,
            );
            self.dir_times.push((path.to_vec(), mode, mtime));
            // The next entries are most likely in it.
            self.parents.insert(path, dir);
            return Ok(());
        }
        self.remove(path)?;
        self.parent_dirs(path)?;
        match kind {
            Kind::File => {
                let pfd = parent_fd(&mut self.parents, self.root, dname)?;
                let mut file = std::fs::File::from(
                    fsat::create_file_at(pfd, fname).map_err(|e| Error::io(fs_path, e))?,
                );
                io::copy(entry, &mut file).map_err(|e| tar_error(esubject, e))?;
                // Ownership first: a chown clears set-id bits and capabilities.
                if self.privileged {
                    std::os::unix::fs::fchown(&file, Some(uid as u32), Some(gid as u32))
                        .map_err(|e| Error::io(fs_path, e))?;
                }
                // The block store's files are never written after extraction.
                let kept = if self.block.is_some() {
                    mode & 0o7555
                } else {
                    mode
                };
                file.set_permissions(Permissions::from_mode(kept))
                    .map_err(|e| Error::io(fs_path, e))?;
                set_xattrs(
                    &file,
                    fs_path,
                    &xattrs,
                    self.privileged,
                    &mut self.report.skipped_xattrs,
                );
                file.set_modified(UNIX_EPOCH + Duration::from_secs(mtime))
                    .map_err(|e| Error::io(fs_path, e))?;
            }
            Kind::Symlink => {
                let target =
                    link.ok_or_else(|| Error::invalid(esubject, "a symlink without a target"))?;
                let pfd = parent_fd(&mut self.parents, self.root, dname)?;
                rustix::fs::symlinkat(&target[..], pfd, fname)
                    .map_err(|e| Error::io(fs_path, e.into()))?;
                for (name, _) in &xattrs {
                    let why = "not restored on symlinks";
                    (self.report.skipped_xattrs).push(format!("{shown}: {name} ({why})"));
                }
            }
            Kind::HardLink => {
                let target =
                    link.ok_or_else(|| Error::invalid(esubject, "a hard link without a target"))?;
                let target = entry::clean(&target).path;
                if target.is_empty() {
                    return Err(Error::invalid(esubject, "a hard link to the root"));
                }
                if let Some(record) = &mut self.block {
                    // Made at the end, so that a link may come before its target.
                    record.links.push((path.to_vec(), target, shown));
                    return Ok(());
                }
                self.root
                    .create(
                        fs_path,
                        &InodeType::Hardlink(as_path(&target).to_path_buf()),
                    )
                    .map_err(in_root("creating hard link"))?;
            }
            Kind::Fifo => {
                self.root
                    .create(fs_path, &InodeType::Fifo(Permissions::from_mode(mode)))
                    .map_err(in_root("creating fifo"))?;
            }
            Kind::CharDevice | Kind::BlockDevice => {
                if !self.privileged {
                    self.report.skipped_devices.push(shown);
                    return Ok(());
                }
                let dev = rustix::fs::makedev(
                    header.device_major().ok().flatten().unwrap_or(0),
                    header.device_minor().ok().flatten().unwrap_or(0),
                );
                let perm = Permissions::from_mode(mode);
                let inode = if kind == Kind::CharDevice {
                    InodeType::CharacterDevice(perm, dev)
                } else {
                    InodeType::BlockDevice(perm, dev)
                };
                self.root
                    .create(fs_path, &inode)
                    .map_err(in_root("creating device"))?;
            }
            Kind::Dir | Kind::GlobalHeader => {}
        }
        Ok(())
    }

    /// Sets directory times (last, so that later entries do not bump them) and
    /// returns what was done.
    pub fn finish(self) -> Result<ApplyReport> {
        let mut done = BTreeSet::new();
        let mut parents = DirCache::default();
        // Deepest last-declared first; a directory declared again by a later
        // layer takes that layer's mode and time.
        for (path, mode, mtime) in self.dir_times.iter().rev() {
            if !done.insert(path) {
                continue;
            }
            // Siblings come together, so their parent is resolved once.
            let (parent, name) = fsat::split(path);
            let Ok(pfd) = parent_fd(&mut parents, self.root, parent) else {
                continue;
            };
            if let Ok(dir) = fsat::open_dir_at(pfd, name) {
                if !self.privileged {
                    rustix::fs::fchmod(&dir, Mode::from_raw_mode(*mode & 0o7777))
                        .map_err(|e| Error::io(as_path(path), e.into()))?;
                }
                let _ = rustix::fs::futimens(&dir, &timestamps(*mtime));
            }
        }
        Ok(self.report)
    }
}

/// The import target of this layer at or above `path`, if any.
fn conflicting_import<'a>(imported: &'a BTreeSet<Vec<u8>>, path: &[u8]) -> Option<&'a Vec<u8>> {
    let mut p = path;
    loop {
        if let Some(t) = imported.get(p) {
            return Some(t);
        }
        match p.iter().rposition(|&b| b == b'/') {
            Some(i) => p = &p[..i],
            None => return None,
        }
    }
}

/// A tar read failure, naming a bound it hit when it was one.
pub(crate) fn tar_error(subject: &str, e: io::Error) -> Error {
    match oci_blocks_core::limits::exceeded_in(&e) {
        Some(bound) => Error::invalid(subject, format!("{bound} [{}]", Rule::LimitExceeded)),
        None => match oci_blocks_core::digest::verification_error(&e) {
            Some(inner) => crate::store::core_error(subject, inner),
            None => Error::invalid(
                subject,
                format!("malformed tar: {e} [{}]", Rule::LayerTarMalformed),
            ),
        },
    }
}
