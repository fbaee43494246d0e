//! Applying one layer's tar stream to a root filesystem, as the image-spec's
//! `layer.md` says, with every path resolved inside the root.
//!
//! All file-system operations go through a [`pathrs::Root`]: each path is
//! resolved as if the root were `/` (openat2 `RESOLVE_IN_ROOT` where the kernel
//! has it, a checked component walk where it does not), so an absolute or `..`
//! symlink planted by a lower layer is re-anchored at the root and never
//! followed on the host. Entry names are cleaned lexically first (`..` cannot
//! climb above the root). Whiteouts apply only to lower layers: a `.wh.` entry
//! never removes what its own layer created, whichever comes first in the tar,
//! and opaque whiteouts are applied when the layer ends. Directory times are set
//! last, once every layer is in place.

use std::collections::HashSet;
use std::fs::Permissions;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use oci_blocks_core::import::{ImportEntry, import_name};
use oci_blocks_core::names::{MAX_IMPORT_SIZE, OPAQUE_WHITEOUT, WHITEOUT_PREFIX};
use oci_blocks_core::tarcheck;
use oci_blocks_core::validate::scan::is_unclean;
use pathrs::flags::OpenFlags;
use pathrs::{InodeType, Root};

use crate::{Error, Result};

/// Cleans a tar entry name into a path relative to the root: leading `/` and
/// `./` dropped, `.` and empty components skipped, `..` clamped at the root.
pub fn clean(raw: &[u8]) -> PathBuf {
    let text = String::from_utf8_lossy(raw);
    let mut out = PathBuf::new();
    for c in Path::new(text.as_ref()).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

/// Materializes import entries; the unpacker backs it with the block store.
pub trait ImportSource {
    /// Creates `target` (relative to the root) from `import`, and returns every
    /// path it created, so whiteouts of the same layer leave them alone.
    fn materialize(
        &mut self,
        root: &Root,
        target: &Path,
        import: &ImportEntry,
        subject: &str,
    ) -> Result<Vec<PathBuf>>;
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

/// The prefix of PAX records that carry extended attributes.
const XATTR_RECORD: &str = "SCHILY.xattr.";

/// Reads an entry's extended attributes from its PAX records. `trusted.*`
/// attributes configure the host (overlayfs uses them for whiteouts and
/// redirects), so an image carrying one is refused.
fn xattrs_of<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    esubject: &str,
) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    let Some(records) = entry
        .pax_extensions()
        .map_err(|e| Error::invalid(esubject, format!("PAX records unreadable: {e}")))?
    else {
        return Ok(out);
    };
    for record in records {
        let record =
            record.map_err(|e| Error::invalid(esubject, format!("PAX record unreadable: {e}")))?;
        let Some(name) = record.key().ok().and_then(|k| k.strip_prefix(XATTR_RECORD)) else {
            continue;
        };
        if name.starts_with("trusted.") {
            return Err(Error::invalid(
                esubject,
                format!(
                    "extended attribute {name} refused: trusted.* attributes configure the host, not the image"
                ),
            ));
        }
        out.push((name.to_string(), record.value_bytes().to_vec()));
    }
    Ok(out)
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

/// The metadata of one block entry, recorded when a block is extracted.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct EntryMeta {
    /// `dir`, `file`, `symlink` or `hardlink`.
    pub kind: String,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Modification time.
    pub mtime: u64,
    /// Link target (symlinks as written; hard links as a cleaned block path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// Extended attributes, restored on materialization.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// Applies layers to one root, in order.
pub struct Applier<'r> {
    root: &'r Root,
    privileged: bool,
    /// Directories' final modes and times, applied last. Without privilege a
    /// directory stays owner-writable until then (as `umoci --rootless` does),
    /// so that a read-only directory of a lower layer can still be filled.
    dir_times: Vec<(PathBuf, u32, u64)>,
    /// When set, the tar is a block: whiteouts and import entries are refused
    /// and every entry's metadata is recorded here.
    block: Option<Vec<(PathBuf, EntryMeta)>>,
    /// Directories known to exist, so that parents are not re-created (and
    /// re-resolved) for every file.
    known_dirs: HashSet<PathBuf>,
    /// What was done.
    pub report: ApplyReport,
}

fn exists(root: &Root, path: &Path) -> bool {
    root.resolve_nofollow(path).is_ok()
}

/// Whether `path` is a directory (not a link to one) inside the root.
pub(crate) fn is_dir(root: &Root, path: &Path) -> bool {
    root.resolve_nofollow(path)
        .and_then(|h| {
            h.reopen(OpenFlags::O_RDONLY | OpenFlags::O_DIRECTORY | OpenFlags::O_NOFOLLOW)
        })
        .is_ok()
}

impl<'r> Applier<'r> {
    /// An applier for `root`; ownership and device nodes are applied only when
    /// running as root.
    pub fn new(root: &'r Root) -> Self {
        Applier {
            root,
            privileged: rustix::process::geteuid().is_root(),
            dir_times: Vec::new(),
            block: None,
            known_dirs: HashSet::new(),
            report: ApplyReport::default(),
        }
    }

    /// An applier for extracting a block: it refuses whiteouts and import
    /// entries and records every entry's metadata.
    pub fn for_block(root: &'r Root) -> Self {
        let mut a = Applier::new(root);
        a.block = Some(Vec::new());
        a
    }

    /// The metadata recorded by a block applier.
    pub fn recorded(&mut self) -> Vec<(PathBuf, EntryMeta)> {
        self.block.take().unwrap_or_default()
    }

    fn remove(&mut self, path: &Path) -> Result<()> {
        if path.as_os_str().is_empty() || !exists(self.root, path) {
            return Ok(());
        }
        self.known_dirs.retain(|d| !d.starts_with(path));
        self.root
            .remove_all(path)
            .map_err(|e| Error::in_root(format!("removing {}", path.display()), e))
    }

    fn parent_dirs(&mut self, path: &Path) -> Result<()> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            if self.known_dirs.contains(parent) {
                return Ok(());
            }
            self.root
                .mkdir_all(parent, &Permissions::from_mode(0o755))
                .map_err(|e| {
                    Error::in_root(format!("creating the parents of {}", path.display()), e)
                })?;
            self.known_dirs.extend(
                parent
                    .ancestors()
                    .filter(|a| !a.as_os_str().is_empty())
                    .map(Path::to_path_buf),
            );
        }
        Ok(())
    }

    /// Applies one uncompressed layer. `imports` resolves `.import.` entries
    /// when the layer may have them; without it they are plain files.
    pub fn apply_layer(
        &mut self,
        stream: impl Read,
        mut imports: Option<&mut dyn ImportSource>,
        subject: &str,
    ) -> Result<()> {
        let mut created: HashSet<PathBuf> = HashSet::new();
        let mut opaque: Vec<PathBuf> = Vec::new();
        // Import targets of this layer: no other entry of the layer may be
        // at or below one ([import.conflict]).
        let mut imported: Vec<PathBuf> = Vec::new();
        let mut archive = tar::Archive::new(stream);
        let entries = archive
            .entries()
            .map_err(|e| Error::invalid(subject, format!("not a tar archive: {e}")))?;
        for entry in entries {
            let mut entry =
                entry.map_err(|e| Error::invalid(subject, format!("malformed tar: {e}")))?;
            tarcheck::check_entry_size(&entry).map_err(|e| {
                Error::invalid(subject, format!("malformed tar: {e} [layer.tar-malformed]"))
            })?;
            let raw = entry.path_bytes().into_owned();
            let path = clean(&raw);
            let shown = String::from_utf8_lossy(&raw).into_owned();
            self.report.entries += 1;
            let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
                continue; // the root itself
            };
            let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
            if self.block.is_some() {
                let esubject = format!("{subject}: entry {shown}");
                if name.starts_with(WHITEOUT_PREFIX) {
                    return Err(Error::invalid(
                        esubject,
                        "a block must not contain whiteouts [block.whiteout]",
                    ));
                }
                if import_name(&name).is_some() {
                    return Err(Error::invalid(
                        esubject,
                        "a block must not contain import entries [block.import-entry]",
                    ));
                }
                let unclean = |p: &[u8]| is_unclean(&String::from_utf8_lossy(p));
                let link_unclean = entry.header().entry_type().is_hard_link()
                    && entry.link_name_bytes().is_some_and(|l| unclean(&l));
                if unclean(&raw) || link_unclean {
                    return Err(Error::invalid(
                        esubject,
                        "a block path must be relative and must not contain `..` [block.path-unclean]",
                    ));
                }
            }
            if name == OPAQUE_WHITEOUT {
                opaque.push(parent);
                continue;
            }
            if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
                let target = parent.join(hidden);
                if hidden.is_empty() || hidden == "." || hidden == ".." {
                    return Err(Error::invalid(
                        format!("{subject}: entry {shown}"),
                        "a whiteout must name a file",
                    ));
                }
                let own = created.iter().any(|c| c.starts_with(&target));
                if !own {
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
            if let (Some(source), Some(import)) = (imports.as_deref_mut(), import_name(&name)) {
                let esubject = format!("{subject}: entry {shown}");
                let target_name = import.map_err(|e| Error::invalid(&esubject, e.to_string()))?;
                if !entry.header().entry_type().is_file() {
                    return Err(Error::invalid(
                        &esubject,
                        "an import entry must be a regular file",
                    ));
                }
                if entry.size() > MAX_IMPORT_SIZE {
                    return Err(Error::invalid(
                        &esubject,
                        format!("{} bytes, more than {MAX_IMPORT_SIZE}", entry.size()),
                    ));
                }
                let mut content = Vec::new();
                entry
                    .read_to_end(&mut content)
                    .map_err(|e| Error::invalid(&esubject, e.to_string()))?;
                let parsed = ImportEntry::parse(&content)
                    .map_err(|e| Error::invalid(&esubject, e.to_string()))?;
                let target = parent.join(target_name);
                if created.iter().any(|c| c.starts_with(&target)) {
                    return Err(Error::invalid(
                        &esubject,
                        format!(
                            "the layer also holds {} [import.conflict]",
                            target.display()
                        ),
                    ));
                }
                self.parent_dirs(&target)?;
                self.known_dirs.retain(|d| !d.starts_with(&target));
                let made = source.materialize(self.root, &target, &parsed, &esubject)?;
                created.extend(made);
                imported.push(target);
                self.report.imports += 1;
                continue;
            }
            if let Some(t) = imported.iter().find(|t| path.starts_with(t)) {
                return Err(Error::invalid(
                    format!("{subject}: entry {shown}"),
                    format!("the layer also imports {} [import.conflict]", t.display()),
                ));
            }
            self.apply_entry(&mut entry, &path, &shown, subject)?;
            created.insert(path);
        }
        tarcheck::check_end(archive.into_inner()).map_err(|e| {
            Error::invalid(subject, format!("malformed tar: {e} [layer.tar-malformed]"))
        })?;
        for dir in opaque {
            self.clear_lower(&dir, &created)?;
        }
        Ok(())
    }

    /// Removes what lower layers put under `dir`, keeping what this layer made.
    fn clear_lower(&mut self, dir: &Path, created: &HashSet<PathBuf>) -> Result<()> {
        let at = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let Ok(handle) = self.root.resolve_nofollow(at) else {
            return Ok(());
        };
        let Ok(file) = handle.reopen(OpenFlags::O_RDONLY | OpenFlags::O_DIRECTORY) else {
            return Ok(());
        };
        let names: Vec<PathBuf> = rustix::fs::Dir::read_from(&file)
            .map_err(|e| Error::io(dir, e.into()))?
            .filter_map(|e| e.ok())
            .map(|e| PathBuf::from(String::from_utf8_lossy(e.file_name().to_bytes()).into_owned()))
            .filter(|n| n.as_os_str() != "." && n.as_os_str() != "..")
            .collect();
        for name in names {
            let child = dir.join(&name);
            if created.contains(&child) {
                if is_dir(self.root, &child) {
                    self.clear_lower(&child, created)?;
                }
            } else if created.iter().any(|c| c.starts_with(&child)) {
                self.clear_lower(&child, created)?;
            } else {
                self.remove(&child)?;
            }
        }
        Ok(())
    }

    fn apply_entry(
        &mut self,
        entry: &mut tar::Entry<'_, impl Read>,
        path: &Path,
        shown: &str,
        subject: &str,
    ) -> Result<()> {
        let header = entry.header();
        let kind = header.entry_type();
        let esubject = format!("{subject}: entry {shown}");
        let mode = header
            .mode()
            .map_err(|e| Error::invalid(&esubject, e.to_string()))?
            & 0o7777;
        let mtime = header.mtime().unwrap_or(0);
        let (uid, gid) = (header.uid().unwrap_or(0), header.gid().unwrap_or(0));
        let xattrs = xattrs_of(entry, &esubject)?;
        let header = entry.header();
        let in_root = |what: &'static str| {
            let p = path.display().to_string();
            move |e| Error::in_root(format!("{what} {p}"), e)
        };
        if let Some(recorded) = &mut self.block {
            let kind_name = match kind {
                k if k.is_dir() => "dir",
                k if k.is_symlink() => "symlink",
                k if k.is_hard_link() => "hardlink",
                k if k.is_file() || k == tar::EntryType::Continuous => "file",
                _ => {
                    return Err(Error::invalid(
                        &esubject,
                        format!("a block holds files, directories and links, not {kind:?}"),
                    ));
                }
            };
            let link = entry.link_name_bytes().map(|l| {
                if kind.is_hard_link() {
                    clean(&l).display().to_string()
                } else {
                    String::from_utf8_lossy(&l).into_owned()
                }
            });
            recorded.push((
                path.to_path_buf(),
                EntryMeta {
                    kind: kind_name.into(),
                    mode,
                    uid,
                    gid,
                    mtime,
                    link,
                    xattrs: xattrs.clone(),
                },
            ));
        }
        if kind.is_dir() {
            if !is_dir(self.root, path) {
                self.remove(path)?;
            }
            let handle = self
                .root
                .mkdir_all(path, &Permissions::from_mode(0o700))
                .map_err(in_root("creating directory"))?;
            let dir = handle
                .reopen(OpenFlags::O_RDONLY | OpenFlags::O_DIRECTORY)
                .map_err(in_root("opening directory"))?;
            self.known_dirs.insert(path.to_path_buf());
            if self.privileged {
                std::os::unix::fs::fchown(&dir, Some(uid as u32), Some(gid as u32))
                    .map_err(|e| Error::io(path, e))?;
            }
            let now = if self.privileged { mode } else { mode | 0o700 };
            dir.set_permissions(Permissions::from_mode(now))
                .map_err(|e| Error::io(path, e))?;
            set_xattrs(
                &dir,
                path,
                &xattrs,
                self.privileged,
                &mut self.report.skipped_xattrs,
            );
            self.dir_times.push((path.to_path_buf(), mode, mtime));
            return Ok(());
        }
        self.remove(path)?;
        self.parent_dirs(path)?;
        if kind.is_file() || kind == tar::EntryType::Continuous {
            let mut file = self
                .root
                .create_file(
                    path,
                    OpenFlags::O_WRONLY | OpenFlags::O_EXCL | OpenFlags::O_NOFOLLOW,
                    &Permissions::from_mode(0o600),
                )
                .map_err(in_root("creating file"))?;
            io::copy(entry, &mut file)
                .map_err(|e| Error::invalid(&esubject, format!("content unreadable: {e}")))?;
            // Ownership first: a chown clears set-id bits and capabilities.
            if self.privileged {
                std::os::unix::fs::fchown(&file, Some(uid as u32), Some(gid as u32))
                    .map_err(|e| Error::io(path, e))?;
            }
            file.set_permissions(Permissions::from_mode(mode))
                .map_err(|e| Error::io(path, e))?;
            set_xattrs(
                &file,
                path,
                &xattrs,
                self.privileged,
                &mut self.report.skipped_xattrs,
            );
            file.set_modified(UNIX_EPOCH + Duration::from_secs(mtime))
                .map_err(|e| Error::io(path, e))?;
        } else if kind.is_symlink() {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| Error::invalid(&esubject, "a symlink without a target"))?;
            let target = PathBuf::from(String::from_utf8_lossy(&target).into_owned());
            self.root
                .create(path, &InodeType::Symlink(target))
                .map_err(in_root("creating symlink"))?;
            for (name, _) in &xattrs {
                let why = "not restored on symlinks";
                (self.report.skipped_xattrs).push(format!("{}: {name} ({why})", path.display()));
            }
        } else if kind.is_hard_link() {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| Error::invalid(&esubject, "a hard link without a target"))?;
            let target = clean(&target);
            if target.as_os_str().is_empty() {
                return Err(Error::invalid(&esubject, "a hard link to the root"));
            }
            self.root
                .create(path, &InodeType::Hardlink(target))
                .map_err(in_root("creating hard link"))?;
        } else if kind.is_fifo() {
            self.root
                .create(path, &InodeType::Fifo(Permissions::from_mode(mode)))
                .map_err(in_root("creating fifo"))?;
        } else if kind.is_character_special() || kind.is_block_special() {
            if !self.privileged {
                self.report.skipped_devices.push(path.display().to_string());
                return Ok(());
            }
            let dev = rustix::fs::makedev(
                header.device_major().ok().flatten().unwrap_or(0),
                header.device_minor().ok().flatten().unwrap_or(0),
            );
            let perm = Permissions::from_mode(mode);
            let inode = if kind.is_character_special() {
                InodeType::CharacterDevice(perm, dev)
            } else {
                InodeType::BlockDevice(perm, dev)
            };
            self.root
                .create(path, &inode)
                .map_err(in_root("creating device"))?;
        } else if matches!(
            kind,
            tar::EntryType::XGlobalHeader
                | tar::EntryType::XHeader
                | tar::EntryType::GNULongName
                | tar::EntryType::GNULongLink
        ) {
            // Metadata entries the tar reader has already applied.
        } else {
            return Err(Error::invalid(
                &esubject,
                format!("unsupported entry type {kind:?}"),
            ));
        }
        Ok(())
    }

    /// Sets directory times (last, so that later entries do not bump them) and
    /// returns what was done.
    pub fn finish(self) -> Result<ApplyReport> {
        let mut done = HashSet::new();
        // Deepest last-declared first; a directory declared again by a later
        // layer takes that layer's mode and time.
        for (path, mode, mtime) in self.dir_times.iter().rev() {
            if !done.insert(path) {
                continue;
            }
            if let Ok(dir) = self
                .root
                .resolve_nofollow(path)
                .and_then(|h| h.reopen(OpenFlags::O_RDONLY | OpenFlags::O_DIRECTORY))
            {
                if !self.privileged {
                    dir.set_permissions(Permissions::from_mode(*mode))
                        .map_err(|e| Error::io(path, e))?;
                }
                let _ = dir.set_modified(UNIX_EPOCH + Duration::from_secs(*mtime));
            }
        }
        Ok(self.report)
    }
}
