//! Unpacking an image from an OCI layout into a root filesystem: the manifest
//! chosen (the blocks variant of a fallback index when there is one), every
//! layer verified against its digest and its diff ID while it streams, imports
//! materialized from the block store, and the result renamed into place only
//! when everything verified.

use std::fs;
use std::path::{Path, PathBuf};

use oci_blocks_core::Digest;
use oci_blocks_core::digest::{Algorithm, DigestReader};
use oci_blocks_core::layout::OciDir;
use oci_blocks_core::limits::{Bounded, Limits};
use oci_blocks_core::manifest::{Index, Manifest};
use oci_blocks_core::names::{OCI_INDEX, is_import_layer};
use oci_blocks_core::oci_spec::image::Descriptor;
use oci_blocks_core::platform::{self, Platform};
use oci_blocks_core::validate::Rule;
use pathrs::Root;

use crate::apply::{Applier, ApplyReport, ImportSource};
use crate::materialize::StoreImports;
use crate::store::{BlockStore, blob_error, open_blob, open_tar};
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
    /// Bounds on what the image may cost.
    pub limits: Limits,
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

/// The manifest an unpack takes, and the legacy manifest its index offers
/// for the same platform when it is a blocks variant.
struct Chosen {
    digest: Digest,
    manifest: Manifest,
    legacy: Option<Descriptor>,
}

/// Chooses the manifest to unpack: for an index, the blocks variant of the
/// platform when present, else the platform's first plain entry.
fn choose(layout: &OciDir, root: &Descriptor, wanted: &Platform) -> Result<Chosen> {
    let digest = Digest::try_from(root.digest())?;
    let bytes = layout.read_json_blob(&digest, Some(root.size()))?;
    if root.media_type().to_string() != OCI_INDEX {
        return Ok(Chosen {
            digest: digest.clone(),
            manifest: Manifest::from_bytes(bytes)?,
            legacy: None,
        });
    }
    let index = Index::from_bytes(bytes)?;
    let value: serde_json::Value = serde_json::from_slice(index.raw())
        .map_err(|e| Error::invalid(format!("index {digest}"), e.to_string()))?;
    let entries = value
        .get("manifests")
        .and_then(serde_json::Value::as_array)
        .cloned()
        .unwrap_or_default();
    let choice = platform::choose(&entries, wanted).ok_or_else(|| {
        Error::invalid(
            format!("index {digest}"),
            format!("no manifest for platform {wanted}"),
        )
    })?;
    let descriptors = index.typed().manifests();
    let chosen = descriptors.get(choice.index).ok_or_else(|| {
        Error::invalid(
            format!("index {digest}"),
            "an entry that is not a descriptor",
        )
    })?;
    let d = Digest::try_from(chosen.digest())?;
    let m = Manifest::from_bytes(layout.read_json_blob(&d, Some(chosen.size()))?)?;
    Ok(Chosen {
        digest: d,
        manifest: m,
        legacy: choice.legacy.and_then(|i| descriptors.get(i)).cloned(),
    })
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
    let wanted = match &options.platform {
        Some(p) => Platform::parse(p)?,
        None => Platform::host(),
    };
    let Chosen {
        digest,
        manifest,
        legacy,
    } = choose(layout, root_desc, &wanted)?;
    let config_desc = manifest.typed().config();
    let config_digest = Digest::try_from(config_desc.digest())?;
    let config: serde_json::Value =
        serde_json::from_slice(&layout.read_json_blob(&config_digest, Some(config_desc.size()))?)
            .map_err(|e| Error::invalid(format!("config {config_digest}"), e.to_string()))?;
    let diff_ids = oci_blocks_core::manifest::diff_ids(&config);
    if diff_ids.len() != manifest.layers().len() {
        return Err(Error::invalid(
            format!("manifest {digest}"),
            format!(
                "{} layers but {} rootfs.diff_ids [{}]",
                manifest.layers().len(),
                diff_ids.len(),
                Rule::LayerDiffIdMismatch
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
    let declared = manifest
        .blocks()
        .iter()
        .filter_map(|b| Digest::try_from(b.digest()).ok().map(|d| (d, b.clone())))
        .collect();
    let mut imports = StoreImports::new(layout, &store, declared, options.link, options.limits);
    let has_blocks = !manifest.blocks().is_empty();
    let mut applier = Applier::new(&root, options.limits);
    let mut stubs = Vec::new();
    for (i, layer) in manifest.layers().iter().enumerate() {
        let imports_before = applier.report.imports;
        let ld = Digest::try_from(layer.digest())?;
        let subject = format!("layer {i} ({ld})");
        let media_type = layer.media_type().to_string();
        let mut blob = open_blob(layout, &ld, layer.size(), &subject)?;
        let applied: Result<_> = (|| {
            let stream = open_tar(&mut blob, &media_type, &subject)?;
            let bounded = Bounded::expansion(stream, &options.limits, &subject, layer.size());
            let mut hashing = DigestReader::new(bounded, Algorithm::Sha256);
            let source: Option<&mut dyn ImportSource> =
                if has_blocks || is_import_layer(&media_type) {
                    Some(&mut imports)
                } else {
                    None
                };
            applier.apply_layer(&mut hashing, source, &subject, layer.size())?;
            Ok(hashing
                .finish()
                .map_err(|e| crate::apply::tar_error(&subject, e))?
                .0)
        })();
        // A corrupt blob often shows first as a malformed tar: name the cause.
        let verified = blob.finish().map_err(|e| blob_error(&subject, e));
        if let (Err(_), Err(cause)) = (&applied, verified) {
            return Err(cause);
        }
        let diff_id = applied?;
        stubs.push(applier.report.imports > imports_before);
        if diff_id.as_str() != diff_ids[i] {
            return Err(Error::invalid(
                subject,
                format!(
                    "uncompressed content hashes to {diff_id}, rootfs.diff_ids says {} [{}]",
                    diff_ids[i],
                    Rule::LayerDiffIdMismatch
                ),
            ));
        }
    }
    if let Some(legacy) = &legacy {
        crate::views::check(
            layout,
            &digest,
            &manifest,
            &config,
            legacy,
            &stubs,
            &mut imports,
            &options.limits,
        )?;
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
