//! The base image of a build: validated, its platform's manifest chosen, its
//! config, layers and blocks read, and its blobs (and its legacy variant's)
//! copied into the output layout unless the output is sparse.

use oci_blocks_core::Digest;
use oci_blocks_core::layout::{OciDir, OciRef};
use oci_blocks_core::manifest::{Index, Manifest};
use oci_blocks_core::names::OCI_INDEX;
use oci_blocks_core::oci_spec;
use oci_blocks_core::validate::check_image;
use serde_json::Value;

use crate::{Error, Result};

pub(super) struct Base {
    /// The base's config, inherited.
    pub config: Value,
    /// Its layer descriptors, reused byte for byte.
    pub layers: Vec<Value>,
    /// Its block descriptors, which the new image keeps declaring.
    pub blocks: Vec<Value>,
    /// The layers and diff IDs of the base's legacy variant: its own layers
    /// when it has no imports, its legacy manifest's when it is a fallback
    /// index, none when it has imports but no legacy variant.
    pub legacy: Option<(Vec<Value>, Vec<Value>)>,
}

/// The first errors of a whole-image validation of `tag`, if it is invalid.
pub(crate) fn invalid(dir: &OciDir, tag: Option<&str>) -> Result<Option<String>> {
    let checked = check_image(dir, tag)?;
    if checked.report.is_valid() {
        return Ok(None);
    }
    let errors: Vec<String> = checked
        .report
        .errors()
        .take(10)
        .map(ToString::to_string)
        .collect();
    Ok(Some(errors.join("\n")))
}

/// Loads the base image `reference` for `platform`, validated whole, and
/// copies its layers and blocks into `out` unless the output is sparse.
pub(super) fn load_base(
    reference: &OciRef,
    platform: Option<&str>,
    out: &OciDir,
    sparse: bool,
) -> Result<Base> {
    let dir = OciDir::open(&reference.path)?;
    if let Some(report) = invalid(&dir, reference.tag.as_deref())? {
        return Err(Error::InvalidBase {
            reference: reference.to_string(),
            report,
        });
    }
    let roots = dir.resolve(reference.tag.as_deref())?;
    let [root] = roots.as_slice() else {
        return Err(Error::InvalidBase {
            reference: reference.to_string(),
            report: format!("{} images in the layout; name one with :TAG", roots.len()),
        });
    };
    let mut digest = Digest::try_from(root.digest())?;
    let mut size = root.size();
    let mut bytes = dir.read_json_blob(&digest, Some(size))?;
    let mut legacy_entry = None;
    if root.media_type().to_string() == OCI_INDEX {
        let index = Index::from_bytes(bytes)?;
        let wanted = super::spec::wanted_platform(platform)?;
        let raw: Value = serde_json::from_slice(index.raw()).map_err(|e| Error::InvalidBase {
            reference: reference.to_string(),
            report: e.to_string(),
        })?;
        let entries = array_at(&raw, "/manifests");
        let choice = oci_blocks_core::platform::choose(&entries, &wanted).ok_or_else(|| {
            Error::InvalidBase {
                reference: reference.to_string(),
                report: format!("no manifest for platform {wanted} in the index"),
            }
        })?;
        let descriptors = index.typed().manifests();
        let chosen = descriptors
            .get(choice.index)
            .ok_or_else(|| Error::InvalidBase {
                reference: reference.to_string(),
                report: "an index entry that is not a descriptor".into(),
            })?;
        legacy_entry = choice.legacy.and_then(|i| descriptors.get(i)).cloned();
        digest = Digest::try_from(chosen.digest())?;
        size = chosen.size();
        bytes = dir.read_json_blob(&digest, Some(size))?;
    }
    let manifest = Manifest::from_bytes(bytes)?;
    let config_desc = manifest.typed().config();
    let config_digest = Digest::try_from(config_desc.digest())?;
    let config: Value =
        serde_json::from_slice(&dir.read_json_blob(&config_digest, Some(config_desc.size()))?)
            .map_err(|e| Error::InvalidBase {
                reference: reference.to_string(),
                report: format!("config: {e}"),
            })?;
    let raw: Value = serde_json::from_slice(manifest.raw()).map_err(|e| Error::InvalidBase {
        reference: reference.to_string(),
        report: e.to_string(),
    })?;
    let (layers, blocks) = (array_at(&raw, "/layers"), array_at(&raw, "/blocks"));
    let legacy = match legacy_entry {
        Some(entry) => Some(load_legacy(&dir, out, reference, &entry, sparse)?),
        None if blocks.is_empty() => Some((layers.clone(), array_at(&config, "/rootfs/diff_ids"))),
        None => None,
    };
    if !sparse {
        copy_blobs(&dir, out, manifest.layers().iter().chain(manifest.blocks()))?;
    }
    Ok(Base {
        config,
        layers,
        blocks,
        legacy,
    })
}

/// The layers and diff IDs of a base image's legacy manifest, its blobs copied.
fn load_legacy(
    dir: &OciDir,
    out: &OciDir,
    reference: &OciRef,
    entry: &oci_spec::image::Descriptor,
    sparse: bool,
) -> Result<(Vec<Value>, Vec<Value>)> {
    let invalid = |report: String| Error::InvalidBase {
        reference: reference.to_string(),
        report,
    };
    let d = Digest::try_from(entry.digest())?;
    let legacy = Manifest::from_bytes(dir.read_json_blob(&d, Some(entry.size()))?)?;
    let c = legacy.typed().config();
    let cd = Digest::try_from(c.digest())?;
    let config: Value = serde_json::from_slice(&dir.read_json_blob(&cd, Some(c.size()))?)
        .map_err(|e| invalid(format!("legacy config: {e}")))?;
    if !sparse {
        copy_blobs(dir, out, legacy.layers().iter())?;
    }
    let raw: Value = serde_json::from_slice(legacy.raw()).map_err(|e| invalid(e.to_string()))?;
    Ok((
        array_at(&raw, "/layers"),
        array_at(&config, "/rootfs/diff_ids"),
    ))
}

/// The array at `pointer` in a JSON document (empty when absent).
pub(super) fn array_at(value: &Value, pointer: &str) -> Vec<Value> {
    value
        .pointer(pointer)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// Copies blobs from a base image's layout into the output, byte for byte and
/// verified as they are copied, unless the output already has them.
fn copy_blobs<'d>(
    dir: &OciDir,
    out: &OciDir,
    descriptors: impl Iterator<Item = &'d oci_spec::image::Descriptor>,
) -> Result<()> {
    if dir.root() == out.root() {
        return Ok(());
    }
    for d in descriptors {
        let digest = Digest::try_from(d.digest())?;
        if !out.has_blob(&digest) {
            out.write_blob_verified(
                dir.open_blob(&digest, Some(d.size()))?,
                &digest,
                Some(d.size()),
            )?;
        }
    }
    Ok(())
}
