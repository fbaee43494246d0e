//! Unpacking an image from an OCI layout into a root filesystem: the manifest
//! chosen (the blocks variant of a fallback index when there is one), every
//! layer verified against its digest and its diff ID while it streams, imports
//! materialized from the block store, and the result renamed into place only
//! when everything verified.

use std::collections::HashMap;
use std::fs::{self, Permissions};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use oci_blocks_core::Digest;
use oci_blocks_core::digest::{Algorithm, DigestReader};
use oci_blocks_core::import::ImportEntry;
use oci_blocks_core::layout::OciDir;
use oci_blocks_core::manifest::{Index, Manifest};
use oci_blocks_core::names::{ANNOTATION_VARIANT, OCI_INDEX, VARIANT_BLOCKS, is_import_layer};
use oci_blocks_core::oci_spec::image::Descriptor;
use pathrs::flags::OpenFlags;
use pathrs::{InodeType, Root};

use crate::apply::{Applier, ApplyReport, ImportSource};
use crate::store::{BlockStore, Extracted, blob_error, open_tar};
use crate::{Error, Result};

/// How imported files reach the root filesystem.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LinkMode {
    /// Reflink (FICLONE) where the file system allows, else copy.
    #[default]
    Auto,
    /// Reflink, or fail.
    Reflink,
    /// Copy.
    Copy,
    /// Hard links into the store: only for read-only root filesystems, since a
    /// write inside the container would change the shared store.
    Hardlink,
}

/// Options of an unpack.
#[derive(Clone, Debug)]
pub struct UnpackOptions {
    /// The block store.
    pub store: PathBuf,
    /// How imports are materialized.
    pub link: LinkMode,
    /// The root filesystem will be mounted read-only (allows [`LinkMode::Hardlink`]).
    pub read_only: bool,
    /// `os/arch` to pick from an index (default: this machine's).
    pub platform: Option<String>,
}

/// What an unpack did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct UnpackReport {
    /// The manifest unpacked.
    pub manifest: String,
    /// Its configuration's digest.
    pub config: String,
    /// Whether it is a blocks manifest.
    pub blocks_variant: bool,
    /// Layers applied.
    pub layers: usize,
    /// Blocks extracted into the store by this unpack.
    pub blocks_extracted: Vec<String>,
    /// Blocks the store already held.
    pub blocks_reused: Vec<String>,
    /// Entries, imports, skipped devices.
    pub applied: ApplyReport,
}

/// This machine's platform as `os/arch` (`linux/amd64`), what an unpack
/// picks from an index by default.
pub fn host_platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    format!("linux/{arch}")
}

/// Chooses the manifest to unpack: for an index, the blocks variant of the
/// platform when present, else the platform's first plain entry.
fn choose(layout: &OciDir, root: &Descriptor, platform: &str) -> Result<(Digest, Manifest)> {
    let digest = Digest::try_from(root.digest())?;
    let bytes = layout.read_json_blob(&digest, Some(root.size()))?;
    if root.media_type().to_string() != OCI_INDEX {
        return Ok((digest.clone(), Manifest::from_bytes(bytes)?));
    }
    let index = Index::from_bytes(bytes)?;
    let matches = |d: &&Descriptor| {
        d.platform().as_ref().is_some_and(|p| {
            let text = format!("{}/{}", p.os(), p.architecture());
            text == platform
                || p.variant()
                    .as_ref()
                    .is_some_and(|v| format!("{text}/{v}") == platform)
        })
    };
    let variant = |d: &&Descriptor| {
        d.annotations()
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_VARIANT))
            .cloned()
    };
    let entries = index.typed().manifests();
    let chosen = entries
        .iter()
        .filter(matches)
        .find(|d| variant(d).as_deref() == Some(VARIANT_BLOCKS))
        .or_else(|| {
            entries
                .iter()
                .filter(matches)
                .find(|d| variant(d).is_none())
        })
        .ok_or_else(|| {
            Error::invalid(
                format!("index {digest}"),
                format!("no manifest for platform {platform}"),
            )
        })?;
    let d = Digest::try_from(chosen.digest())?;
    let m = Manifest::from_bytes(layout.read_json_blob(&d, Some(chosen.size()))?)?;
    Ok((d, m))
}

struct StoreImports<'a> {
    layout: &'a OciDir,
    store: &'a BlockStore,
    declared: HashMap<Digest, Descriptor>,
    extracted: HashMap<Digest, Extracted>,
    link: LinkMode,
    privileged: bool,
    report_extracted: Vec<String>,
    report_reused: Vec<String>,
    skipped_xattrs: Vec<String>,
}

impl StoreImports<'_> {
    fn block(&mut self, digest: &Digest, subject: &str) -> Result<Extracted> {
        if let Some(e) = self.extracted.get(digest) {
            return Ok(e.clone());
        }
        let d = self.declared.get(digest).ok_or_else(|| {
            Error::invalid(subject, format!("block {digest} is not listed in the manifest's blocks [import.undeclared-digest]"))
        })?;
        let (ex, new) =
            self.store
                .ensure(self.layout, digest, d.size(), d.media_type().as_ref())?;
        if new {
            self.report_extracted.push(digest.to_string());
        } else {
            self.report_reused.push(digest.to_string());
        }
        self.extracted.insert(digest.clone(), ex.clone());
        Ok(ex)
    }

    /// Creates `dest` from the stored file; returns it open, except for hard links.
    fn place_file(
        &self,
        root: &Root,
        dest: &Path,
        source: &Path,
        mode: u32,
    ) -> Result<Option<fs::File>> {
        let in_root = |e| Error::in_root(format!("materializing {}", dest.display()), e);
        if self.link == LinkMode::Hardlink {
            let parent = dest.parent().unwrap_or(Path::new(""));
            let dir = root.resolve(parent).map_err(in_root)?;
            let name = dest.file_name().unwrap_or_default();
            let src_dir = fs::File::open(source.parent().unwrap_or(Path::new("/")))
                .map_err(|e| Error::io(source, e))?;
            rustix::fs::linkat(
                &src_dir,
                source.file_name().unwrap_or_default(),
                &dir,
                name,
                rustix::fs::AtFlags::empty(),
            )
            .map_err(|e| Error::io(dest, e.into()))?;
            return Ok(None);
        }
        let mut src = fs::File::open(source).map_err(|e| Error::io(source, e))?;
        let mut file = root
            .create_file(
                dest,
                OpenFlags::O_WRONLY | OpenFlags::O_EXCL | OpenFlags::O_NOFOLLOW,
                &Permissions::from_mode(0o600),
            )
            .map_err(in_root)?;
        let cloned = matches!(self.link, LinkMode::Auto | LinkMode::Reflink)
            && rustix::fs::ioctl_ficlone(&file, &src).is_ok();
        if !cloned {
            if self.link == LinkMode::Reflink {
                return Err(Error::Option {
                    option: "--link reflink".into(),
                    reason: format!("the file system of {} cannot clone files", source.display()),
                });
            }
            io::copy(&mut src, &mut file).map_err(|e| Error::io(source, e))?;
        }
        file.set_permissions(Permissions::from_mode(mode))
            .map_err(|e| Error::io(dest, e))?;
        Ok(Some(file))
    }
}

impl ImportSource for StoreImports<'_> {
    fn materialize(
        &mut self,
        root: &Root,
        target: &Path,
        import: &ImportEntry,
        subject: &str,
    ) -> Result<Vec<PathBuf>> {
        let block = self.block(import.digest(), subject)?;
        let source = import.source_in_block();
        let under = |p: &str| -> Option<String> {
            if source.is_empty() {
                Some(p.to_string())
            } else if p == source {
                Some(String::new())
            } else {
                p.strip_prefix(source)
                    .and_then(|r| r.strip_prefix('/'))
                    .map(str::to_string)
            }
        };
        let selected: Vec<(String, &crate::apply::EntryMeta, String)> = block
            .entries
            .iter()
            .filter_map(|(p, m)| under(p).map(|rel| (p.clone(), m, rel)))
            .collect();
        let implied_dir = source.is_empty()
            || block
                .entries
                .keys()
                .any(|p| p.starts_with(&format!("{source}/")));
        if selected.is_empty() && !implied_dir {
            return Err(Error::invalid(
                subject,
                format!(
                    "block {} has no entry {} [import.source-missing]",
                    import.digest(),
                    import.source()
                ),
            ));
        }
        // What the layer would have had at `target`: replace, or merge directories.
        let target_is_dir = selected
            .iter()
            .find(|(_, _, rel)| rel.is_empty())
            .is_none_or(|(_, m, _)| m.kind == "dir");
        // Into a target that did not exist nothing below it exists either, so
        // the per-entry existence checks are skipped.
        let fresh = root.resolve_nofollow(target).is_err();
        if !fresh {
            let existing_dir = crate::apply::is_dir(root, target);
            if !(existing_dir && target_is_dir) {
                root.remove_all(target)
                    .map_err(|e| Error::in_root(format!("replacing {}", target.display()), e))?;
            }
        }
        if target_is_dir {
            root.mkdir_all(target, &Permissions::from_mode(0o755))
                .map_err(|e| Error::in_root(format!("creating {}", target.display()), e))?;
        }
        let mut created = vec![target.to_path_buf()];
        let mut dir_modes = Vec::new();
        for (path, meta, rel) in &selected {
            let dest = if rel.is_empty() {
                target.to_path_buf()
            } else {
                target.join(rel)
            };
            let stored = block.tree.join(path);
            let in_root = |e| Error::in_root(format!("materializing {}", dest.display()), e);
            match meta.kind.as_str() {
                "dir" => {
                    // Into a fresh target, entries come parents first (sorted
                    // paths), so one mkdirat suffices; otherwise merge.
                    let made = fresh
                        && !rel.is_empty()
                        && root
                            .create(&dest, &InodeType::Directory(Permissions::from_mode(0o755)))
                            .is_ok();
                    if !made {
                        root.mkdir_all(&dest, &Permissions::from_mode(0o755))
                            .map_err(in_root)?;
                    }
                    dir_modes.push((dest.clone(), *meta));
                }
                "file" => {
                    if !fresh && root.resolve_nofollow(&dest).is_ok() {
                        root.remove_all(&dest).map_err(in_root)?;
                    }
                    if let Some(file) = self.place_file(root, &dest, &stored, meta.mode)? {
                        if self.privileged {
                            let (uid, gid) = (meta.uid as u32, meta.gid as u32);
                            let _ = std::os::unix::fs::fchown(&file, Some(uid), Some(gid));
                            // The chown cleared any set-id bits.
                            let _ = file.set_permissions(Permissions::from_mode(meta.mode));
                        }
                        crate::apply::set_xattrs(
                            &file,
                            &dest,
                            &meta.xattrs,
                            self.privileged,
                            &mut self.skipped_xattrs,
                        );
                        let _ = file.set_modified(UNIX_EPOCH + Duration::from_secs(meta.mtime));
                    }
                    created.push(dest);
                    continue;
                }
                "symlink" => {
                    if !fresh && root.resolve_nofollow(&dest).is_ok() {
                        root.remove_all(&dest).map_err(in_root)?;
                    }
                    let link = meta.link.clone().unwrap_or_default();
                    root.create(&dest, &InodeType::Symlink(PathBuf::from(link)))
                        .map_err(in_root)?;
                }
                "hardlink" => {
                    if !fresh && root.resolve_nofollow(&dest).is_ok() {
                        root.remove_all(&dest).map_err(in_root)?;
                    }
                    let link = meta.link.clone().unwrap_or_default();
                    match under(&link) {
                        // Inside the imported subtree: stays a hard link, re-rooted.
                        Some(inside) => {
                            let to = if inside.is_empty() {
                                target.to_path_buf()
                            } else {
                                target.join(inside)
                            };
                            root.create(&dest, &InodeType::Hardlink(to))
                                .map_err(in_root)?;
                        }
                        // Outside it: a regular file with the target's content.
                        None => {
                            let mode = block.entries.get(&link).map_or(0o644, |m| m.mode);
                            self.place_file(root, &dest, &block.tree.join(&link), mode)?;
                        }
                    }
                }
                other => {
                    return Err(Error::invalid(
                        subject,
                        format!("unexpected block entry type {other}"),
                    ));
                }
            }
            if self.privileged && meta.kind != "symlink" {
                if let Ok(f) = root
                    .resolve_nofollow(&dest)
                    .and_then(|h| h.reopen(OpenFlags::O_RDONLY))
                {
                    let _ =
                        std::os::unix::fs::fchown(&f, Some(meta.uid as u32), Some(meta.gid as u32));
                }
            }
            created.push(dest);
        }
        for (dest, meta) in dir_modes.into_iter().rev() {
            if let Ok(f) = root
                .resolve_nofollow(&dest)
                .and_then(|h| h.reopen(OpenFlags::O_RDONLY | OpenFlags::O_DIRECTORY))
            {
                let _ = f.set_permissions(Permissions::from_mode(meta.mode));
                crate::apply::set_xattrs(
                    &f,
                    &dest,
                    &meta.xattrs,
                    self.privileged,
                    &mut self.skipped_xattrs,
                );
                let _ = f.set_modified(UNIX_EPOCH + Duration::from_secs(meta.mtime));
            }
        }
        Ok(created)
    }
}

/// Refuses a target that exists and is not an empty directory.
fn ensure_empty(path: &Path, reason: &str) -> Result<()> {
    let occupied = path.exists()
        && fs::read_dir(path)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true);
    if occupied {
        return Err(Error::Option {
            option: path.display().to_string(),
            reason: reason.into(),
        });
    }
    Ok(())
}

/// Unpacks the image into `bundle/rootfs` and writes `bundle/config.json`
/// from its configuration (rootless when not running as root), as `umoci
/// unpack` does.
pub fn unpack_bundle(
    layout: &OciDir,
    tag: Option<&str>,
    bundle: &Path,
    options: &UnpackOptions,
) -> Result<UnpackReport> {
    ensure_empty(
        bundle,
        "the bundle directory must not exist yet, or be empty",
    )?;
    fs::create_dir_all(bundle).map_err(|e| Error::io(bundle, e))?;
    let result = unpack(layout, tag, &bundle.join("rootfs"), options).and_then(|report| {
        let config: serde_json::Value =
            serde_json::from_slice(&layout.read_json_blob(&Digest::parse(&report.config)?, None)?)
                .map_err(|e| Error::invalid(format!("config {}", report.config), e.to_string()))?;
        let rootless = !rustix::process::geteuid().is_root();
        crate::bundle::write_config(bundle, &crate::bundle::runtime_spec(&config, rootless)?)?;
        Ok(report)
    });
    if result.is_err() {
        let _ = fs::remove_dir_all(bundle);
    }
    result
}

/// Unpacks the image `tag` names in `layout` into `rootfs`, which must not
/// exist yet (or be an empty directory). On any error nothing is left at
/// `rootfs`.
pub fn unpack(
    layout: &OciDir,
    tag: Option<&str>,
    rootfs: &Path,
    options: &UnpackOptions,
) -> Result<UnpackReport> {
    if options.link == LinkMode::Hardlink && !options.read_only {
        return Err(Error::Option {
            option: "--link hardlink".into(),
            reason: "hard links share inodes with the block store, so a write inside the container would change every image using the block; use it only with --read-only".into(),
        });
    }
    ensure_empty(
        rootfs,
        "the root filesystem must not exist yet, or be an empty directory",
    )?;
    let roots = layout.resolve(tag)?;
    let [root_desc] = roots.as_slice() else {
        return Err(Error::invalid(
            layout.root().display().to_string(),
            format!("{} images in the layout; name one with :TAG", roots.len()),
        ));
    };
    let platform = options.platform.clone().unwrap_or_else(host_platform);
    let (digest, manifest) = choose(layout, root_desc, &platform)?;
    let config_desc = manifest.typed().config();
    let config_digest = Digest::try_from(config_desc.digest())?;
    let config: serde_json::Value =
        serde_json::from_slice(&layout.read_json_blob(&config_digest, Some(config_desc.size()))?)
            .map_err(|e| Error::invalid(format!("config {config_digest}"), e.to_string()))?;
    let diff_ids: Vec<String> = config
        .pointer("/rootfs/diff_ids")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if diff_ids.len() != manifest.layers().len() {
        return Err(Error::invalid(
            format!("manifest {digest}"),
            format!(
                "{} layers but {} rootfs.diff_ids [layer.diff-id-mismatch]",
                manifest.layers().len(),
                diff_ids.len()
            ),
        ));
    }

    let parent = rootfs
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let staging = tempfile::Builder::new()
        .prefix(".oci-blocks-unpack-")
        .tempdir_in(parent)
        .map_err(|e| Error::io(parent, e))?;
    let store = BlockStore::open(&options.store)?;
    let _lock = store.lock_shared()?;
    let root =
        Root::open(staging.path()).map_err(|e| Error::in_root("opening the staging root", e))?;
    let mut imports = StoreImports {
        layout,
        store: &store,
        declared: manifest
            .blocks()
            .iter()
            .filter_map(|b| Digest::try_from(b.digest()).ok().map(|d| (d, b.clone())))
            .collect(),
        extracted: HashMap::new(),
        link: options.link,
        privileged: rustix::process::geteuid().is_root(),
        report_extracted: Vec::new(),
        report_reused: Vec::new(),
        skipped_xattrs: Vec::new(),
    };
    let has_blocks = !manifest.blocks().is_empty();
    let mut applier = Applier::new(&root);
    for (i, layer) in manifest.layers().iter().enumerate() {
        let ld = Digest::try_from(layer.digest())?;
        let subject = format!("layer {i} ({ld})");
        let media_type = layer.media_type().to_string();
        let mut blob = layout.open_blob(&ld, Some(layer.size()))?;
        let applied: Result<_> = (|| {
            let stream = open_tar(&mut blob, &media_type, &subject)?;
            let mut hashing = DigestReader::new(stream, Algorithm::Sha256);
            let source: Option<&mut dyn ImportSource> =
                if has_blocks || is_import_layer(&media_type) {
                    Some(&mut imports)
                } else {
                    None
                };
            applier.apply_layer(&mut hashing, source, &subject)?;
            Ok(hashing.finish().map_err(|e| blob_error(&subject, e))?.0)
        })();
        // A corrupt blob often shows first as a malformed tar: name the cause.
        let verified = blob.finish().map_err(|e| blob_error(&subject, e));
        if let (Err(_), Err(cause)) = (&applied, verified) {
            return Err(cause);
        }
        let diff_id = applied?;
        if diff_id.as_str() != diff_ids[i] {
            return Err(Error::invalid(
                subject,
                format!(
                    "uncompressed content hashes to {diff_id}, rootfs.diff_ids says {} [layer.diff-id-mismatch]",
                    diff_ids[i]
                ),
            ));
        }
    }
    let mut applied = applier.finish()?;
    applied.skipped_xattrs.append(&mut imports.skipped_xattrs);
    let kept = staging.keep();
    let _ = fs::remove_dir(rootfs);
    fs::rename(&kept, rootfs).map_err(|e| Error::io(rootfs, e))?;
    let used: Vec<String> = imports
        .report_extracted
        .iter()
        .chain(&imports.report_reused)
        .cloned()
        .collect();
    if !used.is_empty() {
        // The root filesystem does not depend on the record (its files are
        // copies, clones or links of their own), only the store's reuse does.
        if let Err(e) = store.record_user(rootfs, digest.as_str(), used) {
            tracing::warn!("not recorded as a user of the block store: {e}");
        }
    }
    Ok(UnpackReport {
        manifest: digest.to_string(),
        config: config_digest.to_string(),
        blocks_variant: has_blocks,
        layers: manifest.layers().len(),
        blocks_extracted: imports.report_extracted,
        blocks_reused: imports.report_reused,
        applied,
    })
}
