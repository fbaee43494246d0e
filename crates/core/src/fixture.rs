//! Small OCI images built from compact TOML descriptions.
//!
//! The image examples of `spec/examples/images/` and the tests of every crate
//! describe an image as blocks and layers of tar entries, each entry written
//! exactly as given: paths are not cleaned, so malicious and invalid images can be
//! described as easily as valid ones. Import contents may name a block's digest
//! as `{block:NAME}`. The output is deterministic: the same description always
//! gives the same blobs, so a committed example layout can be checked for drift.
//!
//! A test description language, not part of the library proper: behind the
//! `fixture` feature, which only the workspace's tests enable.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::digest::Digest;
use crate::layout::OciDir;
use crate::names::*;
use crate::{Error, Result};

/// An image description.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSpec {
    /// What the image is for.
    pub description: String,
    /// The verdict validation must reach (for spec examples).
    #[serde(default)]
    pub expect: Option<Expect>,
    /// Blocks, in manifest order.
    #[serde(default)]
    pub blocks: Vec<BlockSpec>,
    /// Layers, bottom first.
    #[serde(default)]
    pub layers: Vec<LayerSpec>,
    /// How the image is published in the layout.
    #[serde(default)]
    pub index: IndexMode,
    /// Mark the layout entry sparse (`io.oci-blocks.sparse`).
    #[serde(default)]
    pub sparse: bool,
}

/// The expected verdict of a spec example.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// `valid` or `invalid`.
    pub verdict: String,
    /// For invalid examples, the one rule id reported as an error.
    #[serde(default)]
    pub rule: Option<String>,
    /// Text that the violation's subject contains (`layer 1`, `block 0`).
    #[serde(default)]
    pub subject: Option<String>,
    /// The tar entry the violation names.
    #[serde(default)]
    pub entry: Option<String>,
    /// Rule ids that must be reported as warnings.
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// How the image is published.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum IndexMode {
    /// The bare manifest is tagged.
    #[default]
    None,
    /// A fallback index: legacy manifest (every import materialized), GC
    /// anchor, blocks manifest naming its legacy manifest (the order builders
    /// write).
    Fallback,
    /// A fallback index whose anchor lacks the last block.
    FallbackIncompleteAnchor,
    /// A fallback index whose blocks manifest does not name its legacy
    /// manifest.
    FallbackUnbound,
}

/// A block.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockSpec {
    /// The name `{block:NAME}` refers to.
    pub name: String,
    /// Whether the block is listed in the manifest (it is stored either way).
    #[serde(default = "yes")]
    pub declared: bool,
    /// `tar`, `tar+gzip` or `tar+zstd`.
    #[serde(default = "tar")]
    pub media_type: String,
    /// Descriptor annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Flip one byte of the stored blob.
    #[serde(default)]
    pub corrupt: bool,
    /// Leave the blob out of the layout.
    #[serde(default)]
    pub missing: bool,
    /// The entries.
    #[serde(default)]
    pub entries: Vec<EntrySpec>,
}

/// A layer.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerSpec {
    /// `tar`, `tar+gzip`, `tar+zstd`, `import`, `import+gzip`, `import+zstd`.
    #[serde(default = "tar")]
    pub media_type: String,
    /// Record a wrong diff ID for this layer in the config.
    #[serde(default)]
    pub wrong_diff_id: bool,
    /// Flip one byte of the stored blob.
    #[serde(default)]
    pub corrupt: bool,
    /// Store these bytes instead of a tar.
    #[serde(default)]
    pub raw: Option<String>,
    /// Cut the uncompressed tar to this many bytes (a truncated archive).
    #[serde(default)]
    pub truncate: Option<usize>,
    /// Bytes appended after the tar's end-of-archive marker.
    #[serde(default)]
    pub trailing: Option<String>,
    /// Leave the blob out of the layout.
    #[serde(default)]
    pub missing: bool,
    /// The entries.
    #[serde(default)]
    pub entries: Vec<EntrySpec>,
    /// In a fallback index, the legacy manifest's layer in place of this
    /// one's materialization (two views that differ).
    #[serde(default)]
    pub legacy: Option<Vec<EntrySpec>>,
}

/// A tar entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntrySpec {
    /// The path, written as is.
    pub path: String,
    /// `file` (default), `dir`, `symlink`, `hardlink`, `fifo`, `char`,
    /// `gnu-sparse` (an old-GNU sparse file, all hole), or `typeflag:X` for
    /// any other one-byte type.
    #[serde(rename = "type", default = "file")]
    pub kind: String,
    /// File content; `{block:NAME}` becomes that block's digest.
    #[serde(default)]
    pub content: String,
    /// File content as bytes, for content that is not UTF-8 (replaces `content`).
    #[serde(default)]
    pub bytes: Option<Vec<u8>>,
    /// Repeat the content this many times.
    #[serde(default)]
    pub repeat: Option<usize>,
    /// Link target.
    #[serde(default)]
    pub target: Option<String>,
    /// Permission bits (default 0o644 for files, 0o755 for directories).
    #[serde(default)]
    pub mode: Option<u32>,
    /// Owner (default 0).
    #[serde(default)]
    pub uid: u64,
    /// Group (default 0).
    #[serde(default)]
    pub gid: u64,
    /// Extended attributes, written as `SCHILY.xattr.NAME` PAX records.
    #[serde(default)]
    pub xattrs: BTreeMap<String, String>,
    /// Further PAX records written before the entry, as given (`path`,
    /// `linkpath`, `size`, ...), which may contradict the ustar header.
    #[serde(default)]
    pub pax: BTreeMap<String, String>,
}

fn yes() -> bool {
    true
}
fn tar() -> String {
    "tar".into()
}
fn file() -> String {
    "file".into()
}

/// What [`build`] wrote.
#[derive(Clone, Debug)]
pub struct Built {
    /// The digest tagged `latest`: the blocks manifest or the fallback index.
    pub root: Digest,
    /// The blocks manifest.
    pub manifest: Digest,
    /// Each block's digest by name.
    pub blocks: BTreeMap<String, Digest>,
}

impl ImageSpec {
    /// Parses a TOML description.
    pub fn from_toml(text: &str, what: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| Error::Malformed {
            what: what.to_string(),
            reason: e.to_string(),
        })
    }
}

fn invalid(what: &str, reason: impl Into<String>) -> Error {
    Error::Malformed {
        what: what.to_string(),
        reason: reason.into(),
    }
}

fn media_type_of(short: &str) -> Result<&'static str> {
    Ok(match short {
        "tar" => OCI_LAYER_TAR,
        "tar+gzip" => OCI_LAYER_TAR_GZIP,
        "tar+zstd" => OCI_LAYER_TAR_ZSTD,
        "import" => IMPORT_LAYER_TAR,
        "import+gzip" => IMPORT_LAYER_TAR_GZIP,
        "import+zstd" => IMPORT_LAYER_TAR_ZSTD,
        other => return Err(invalid("fixture", format!("unknown media type {other:?}"))),
    })
}

fn substitute(text: &str, blocks: &BTreeMap<String, Digest>) -> Result<String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("{block:") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 7..];
        let end = after
            .find('}')
            .ok_or_else(|| invalid("fixture", "unterminated {block:"))?;
        let name = &after[..end];
        let digest = blocks.get(name).ok_or_else(|| {
            invalid(
                "fixture",
                format!("no block named {name:?} before this entry"),
            )
        })?;
        out.push_str(digest.as_str());
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn write_name(field: &mut [u8], value: &str, what: &str) -> Result<()> {
    let bytes = value.as_bytes();
    if bytes.len() > field.len() {
        return Err(invalid(
            what,
            format!("{value:?} is longer than {} bytes", field.len()),
        ));
    }
    field.fill(0);
    field[..bytes.len()].copy_from_slice(bytes);
    Ok(())
}

/// Writes entries as a tar archive, each header exactly as described.
pub fn tar_of(entries: &[EntrySpec], blocks: &BTreeMap<String, Digest>) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for e in entries {
        let mut header = if e.kind == "gnu-sparse" {
            tar::Header::new_gnu()
        } else {
            tar::Header::new_ustar()
        };
        let (entry_type, default_mode) = match e.kind.as_str() {
            // An old-GNU sparse file with no data blocks (all hole).
            "gnu-sparse" => (tar::EntryType::GNUSparse, 0o644),
            "file" => (tar::EntryType::Regular, 0o644),
            "dir" => (tar::EntryType::Directory, 0o755),
            "symlink" => (tar::EntryType::Symlink, 0o777),
            "hardlink" => (tar::EntryType::Link, 0o644),
            "fifo" => (tar::EntryType::Fifo, 0o644),
            "char" => (tar::EntryType::Char, 0o644),
            // Any typeflag, as `typeflag:V`.
            other => match other.strip_prefix("typeflag:").map(str::as_bytes) {
                Some([byte]) => (tar::EntryType::new(*byte), 0o644),
                _ => return Err(invalid(&e.path, format!("unknown entry type {other:?}"))),
            },
        };
        header.set_entry_type(entry_type);
        header.set_mode(e.mode.unwrap_or(default_mode));
        header.set_uid(e.uid);
        header.set_gid(e.gid);
        header.set_mtime(1);
        let content = match (&e.bytes, entry_type) {
            (Some(bytes), _) => bytes.clone(),
            (None, tar::EntryType::Regular) => substitute(&e.content, blocks)?
                .repeat(e.repeat.unwrap_or(1))
                .into_bytes(),
            _ => Vec::new(),
        };
        header.set_size(content.len() as u64);
        if let Some(gnu) = header.as_gnu_mut().filter(|_| e.kind == "gnu-sparse") {
            gnu.set_real_size(0);
        }
        write_name(&mut header.as_old_mut().name, &e.path, &e.path)?;
        if let Some(target) = &e.target {
            write_name(&mut header.as_old_mut().linkname, target, &e.path)?;
        }
        header.set_cksum();
        let records: Vec<(String, &[u8])> = e
            .xattrs
            .iter()
            .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.as_bytes()))
            .chain(e.pax.iter().map(|(k, v)| (k.clone(), v.as_bytes())))
            .collect();
        if !records.is_empty() {
            builder
                .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))
                .map_err(|err| Error::io(&e.path, err))?;
        }
        builder
            .append(&header, &content[..])
            .map_err(|err| Error::io(&e.path, err))?;
    }
    builder.into_inner().map_err(|err| Error::io("tar", err))
}

fn compress(data: Vec<u8>, media_type: &str) -> Result<Vec<u8>> {
    match tar_compression(media_type) {
        Some(Compression::Gzip) => {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
            enc.write_all(&data).map_err(|e| Error::io("gzip", e))?;
            enc.finish().map_err(|e| Error::io("gzip", e))
        }
        Some(Compression::Zstd) => zstd::encode_all(&data[..], 3).map_err(|e| Error::io("zstd", e)),
        _ => Ok(data),
    }
}

fn corrupt(dir: &OciDir, digest: &Digest) -> Result<()> {
    let path = dir.blob_path(digest);
    let mut bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let mid = bytes.len() / 2;
    if let Some(b) = bytes.get_mut(mid) {
        *b ^= 0x01;
    }
    std::fs::write(&path, bytes).map_err(|e| Error::io(&path, e))
}

fn descriptor(media_type: &str, digest: &Digest, size: u64) -> Value {
    json!({"mediaType": media_type, "digest": digest.as_str(), "size": size})
}

fn write_json(dir: &OciDir, value: &Value) -> Result<(Digest, u64)> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|source| Error::Json {
        what: "fixture".into(),
        source,
    })?;
    dir.write_blob_bytes(&bytes)
}

fn config(diff_ids: &[String]) -> Value {
    json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": []
    })
}

fn manifest(
    dir: &OciDir,
    layers: &[(Value, String)],
    blocks: Option<&[Value]>,
    legacy: Option<&Digest>,
) -> Result<(Digest, u64)> {
    let diff_ids: Vec<String> = layers.iter().map(|(_, d)| d.clone()).collect();
    let (cd, cs) = write_json(dir, &config(&diff_ids))?;
    let mut m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(
            if blocks.is_some_and(|b| !b.is_empty()) { BLOCKS_CONFIG } else { OCI_CONFIG },
            &cd,
            cs,
        ),
        "layers": layers.iter().map(|(l, _)| l.clone()).collect::<Vec<_>>(),
    });
    if let Some(blocks) = blocks {
        m["blocks"] = Value::Array(blocks.to_vec());
    }
    if let Some(legacy) = legacy {
        m["annotations"] = json!({ ANNOTATION_LEGACY: legacy.as_str() });
    }
    write_json(dir, &m)
}

/// Builds the described image into the layout at `path` (created if needed) and
/// tags it `tag`.
pub fn build(spec: &ImageSpec, path: &Path, tag: &str) -> Result<Built> {
    let dir = OciDir::create(path)?;
    let mut digests = BTreeMap::new();
    let mut declared = Vec::new();
    for b in &spec.blocks {
        let media_type = media_type_of(&b.media_type)?;
        let blob = compress(tar_of(&b.entries, &digests)?, media_type)?;
        let (digest, size) = dir.write_blob_bytes(&blob)?;
        if b.corrupt {
            corrupt(&dir, &digest)?;
        }
        if b.missing {
            let path = dir.blob_path(&digest);
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        }
        if b.declared {
            let mut d = descriptor(media_type, &digest, size);
            if !b.annotations.is_empty() {
                d["annotations"] = json!(b.annotations);
            }
            declared.push(d);
        }
        digests.insert(b.name.clone(), digest);
    }
    let mut layers = Vec::new();
    for (i, l) in spec.layers.iter().enumerate() {
        let media_type = media_type_of(&l.media_type)?;
        let mut uncompressed = match &l.raw {
            Some(raw) => raw.as_bytes().to_vec(),
            None => tar_of(&l.entries, &digests)?,
        };
        if let Some(n) = l.truncate {
            uncompressed.truncate(n);
        }
        if let Some(t) = &l.trailing {
            uncompressed.extend_from_slice(t.as_bytes());
        }
        let diff_id = if l.wrong_diff_id {
            Digest::sha256(format!("not layer {i}").as_bytes())
        } else {
            Digest::sha256(&uncompressed)
        };
        let (digest, size) = dir.write_blob_bytes(&compress(uncompressed, media_type)?)?;
        if l.corrupt {
            corrupt(&dir, &digest)?;
        }
        if l.missing {
            let path = dir.blob_path(&digest);
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        }
        layers.push((descriptor(media_type, &digest, size), diff_id.to_string()));
    }
    let blocks_field = (!spec.blocks.is_empty()).then_some(&declared[..]);
    let legacy = if spec.index != IndexMode::None {
        // The legacy manifest: each layer with imports replaced by its
        // materialization, the others reused (`spec/fallback.md`).
        let block_types: std::collections::HashMap<Digest, (String, u64)> = declared
            .iter()
            .filter_map(|d| {
                Some((
                    Digest::parse(d["digest"].as_str()?).ok()?,
                    (d["mediaType"].as_str()?.to_string(), d["size"].as_u64()?),
                ))
            })
            .collect();
        let mut blocks = crate::expand::LayoutBlocks::new(&dir, block_types);
        let mut legacy_layers = Vec::new();
        for ((desc, diff_id), spec_layer) in layers.iter().zip(&spec.layers) {
            if let Some(entries) = &spec_layer.legacy {
                let tar = tar_of(entries, &digests)?;
                let legacy_diff = Digest::sha256(&tar);
                let (ld, ls) = dir.write_blob_bytes(&tar)?;
                legacy_layers.push((descriptor(OCI_LAYER_TAR, &ld, ls), legacy_diff.to_string()));
                continue;
            }
            let media_type = desc["mediaType"].as_str().unwrap_or_default();
            let digest = Digest::parse(desc["digest"].as_str().unwrap_or_default())?;
            let size = desc["size"].as_u64().unwrap_or_default();
            // A layer that cannot be materialized (the image is invalid on
            // purpose) stays as it is.
            let mut expanded = Vec::new();
            let done = dir.open_blob(&digest, Some(size)).and_then(|mut blob| {
                let mut stub = crate::expand::open_layer(&mut blob, media_type)?;
                crate::expand::expand(
                    &mut stub,
                    &mut blocks,
                    &mut expanded,
                    "fixture layer",
                    &crate::limits::Limits::default(),
                    &mut crate::expand::ImportBudget::default(),
                )
            });
            if done.is_err() || done.as_ref().is_ok_and(|d| d.imports == 0) {
                legacy_layers.push((desc.clone(), diff_id.clone()));
                continue;
            }
            let standard = match tar_compression(media_type) {
                Some(Compression::Gzip) => OCI_LAYER_TAR_GZIP,
                Some(Compression::Zstd) => OCI_LAYER_TAR_ZSTD,
                _ => OCI_LAYER_TAR,
            };
            let legacy_diff = Digest::sha256(&expanded);
            let (ld, ls) = dir.write_blob_bytes(&compress(expanded, standard)?)?;
            legacy_layers.push((descriptor(standard, &ld, ls), legacy_diff.to_string()));
        }
        Some(manifest(&dir, &legacy_layers, None, None)?)
    } else {
        None
    };
    // A fallback's blocks manifest names its legacy manifest.
    let bound = legacy
        .as_ref()
        .map(|(d, _)| d)
        .filter(|_| spec.index != IndexMode::FallbackUnbound);
    let (md, ms) = manifest(&dir, &layers, blocks_field, bound)?;
    let mut root = (OCI_MANIFEST, md.clone(), ms);
    if let Some((ld, ls)) = legacy {
        dir.write_blob_bytes(b"{}")?;
        let mut anchor_layers = declared.clone();
        if spec.index == IndexMode::FallbackIncompleteAnchor {
            anchor_layers.pop();
        }
        let anchor = crate::manifest::anchor_manifest(anchor_layers);
        let (ad, as_) = write_json(&dir, &anchor)?;
        let platform = json!({"architecture": "amd64", "os": "linux"});
        let mut legacy = descriptor(OCI_MANIFEST, &ld, ls);
        legacy["platform"] = platform.clone();
        let mut blocks = descriptor(OCI_MANIFEST, &md, ms);
        blocks["platform"] = platform;
        blocks["annotations"] = json!({ANNOTATION_VARIANT: VARIANT_BLOCKS});
        let mut anchor = descriptor(OCI_MANIFEST, &ad, as_);
        anchor["platform"] = json!({"architecture": "unknown", "os": "unknown"});
        anchor["annotations"] = json!({ANNOTATION_VARIANT: VARIANT_ANCHOR});
        let index = json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [legacy, anchor, blocks],
        });
        let (id, is) = write_json(&dir, &index)?;
        root = (OCI_INDEX, id, is);
    }
    let media = if root.0 == OCI_INDEX {
        oci_spec::image::MediaType::ImageIndex
    } else {
        oci_spec::image::MediaType::ImageManifest
    };
    let mut descriptor = oci_spec::image::Descriptor::new(media, root.2, root.1.as_oci().clone());
    if spec.sparse {
        descriptor.set_annotations(Some(
            [(ANNOTATION_SPARSE.to_string(), "true".to_string())].into(),
        ));
    }
    dir.set_tag(tag, descriptor)?;
    Ok(Built {
        root: root.1,
        manifest: md,
        blocks: digests,
    })
}
