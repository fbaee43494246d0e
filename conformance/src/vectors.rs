//! Unpack test vectors: their compact descriptions and the OCI layouts made from
//! them.
//!
//! Each vector is a TOML file under `conformance/vectors/GROUP/NAME.toml`,
//! compiled into the binary. It describes blocks and layers as tar entries
//! written exactly as given (paths are not cleaned, so hostile archives are as
//! easy to describe as ordinary ones), how the image is published, and what an
//! unpacker must do with it: produce an expected tree, fail, or at least stay
//! inside the root. [`Vector::write_layout`] turns a description into an OCI
//! image layout; the same description, platform and host directory always give
//! the same bytes.
//!
//! `{host}` in an entry's path, link target or content, and in guard and escape
//! paths, stands for a directory on the host outside every root filesystem:
//! the suite makes a fresh one for each run, so that hostile vectors aim at
//! something it can watch and concurrent runs never share it.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::names;
use crate::tree::ExpectedEntry;

include!(concat!(env!("OUT_DIR"), "/vectors.rs"));

/// The groups, in report order.
pub const GROUPS: [&str; 4] = ["plain", "imports", "malicious", "fallback"];

/// A vector: its id (`GROUP/NAME`) and its description.
#[derive(Clone, Debug)]
pub struct Vector {
    /// `GROUP/NAME`.
    pub id: String,
    /// The parsed description.
    pub spec: VectorSpec,
}

/// A vector description (one TOML file).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VectorSpec {
    /// What the vector checks, one sentence.
    pub description: String,
    /// Blocks, in manifest order.
    #[serde(default)]
    pub blocks: Vec<BlockSpec>,
    /// Layers, bottom first.
    #[serde(default)]
    pub layers: Vec<LayerSpec>,
    /// Write a `blocks` field even when no block is declared.
    #[serde(default)]
    pub blocks_field: bool,
    /// Publish a fallback index instead of the bare manifest.
    #[serde(default)]
    pub fallback: Option<FallbackSpec>,
    /// What the unpacker must do.
    pub expect: Expect,
}

/// A block.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockSpec {
    /// The name `{block:NAME}` refers to.
    pub name: String,
    /// Whether the manifest lists it (the layout holds it either way).
    #[serde(default = "yes")]
    pub declared: bool,
    /// `tar`, `tar+gzip` or `tar+zstd`.
    #[serde(default = "tar")]
    pub media_type: String,
    /// The entries.
    #[serde(default)]
    pub entries: Vec<EntrySpec>,
}

/// A layer.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerSpec {
    /// `tar`, `tar+gzip`, `tar+zstd`, `import`, `import+gzip` or `import+zstd`.
    #[serde(default = "tar")]
    pub media_type: String,
    /// The entries.
    #[serde(default)]
    pub entries: Vec<EntrySpec>,
}

/// A tar entry, written exactly as given.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntrySpec {
    /// The path, as written in the header.
    pub path: String,
    /// `file` (default), `dir`, `symlink`, `hardlink`, `fifo`, `gnu-sparse`
    /// (an old-GNU sparse header, typeflag `S`, with no sparse map) or
    /// `typeflag:C` (any other one-byte type `C`, no content).
    #[serde(rename = "type", default = "file")]
    pub kind: String,
    /// File content; `{block:NAME}` becomes that block's digest.
    #[serde(default)]
    pub content: String,
    /// Repeat the content this many times.
    #[serde(default)]
    pub repeat: Option<usize>,
    /// Link target.
    #[serde(default)]
    pub target: Option<String>,
    /// Permission bits (default 0o644 for files, 0o755 for directories).
    #[serde(default)]
    pub mode: Option<u32>,
    /// PAX records written before the entry, as given (`path`, `linkpath`...).
    #[serde(default)]
    pub pax: BTreeMap<String, String>,
}

/// How a fallback index is published.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackSpec {
    /// The legacy manifest's layers, when they are not the blocks manifest's
    /// layers with every import materialized (`spec/fallback.md`), which the
    /// suite writes by default: a plain index, or two views that differ.
    #[serde(default)]
    pub legacy: Option<Vec<LayerSpec>>,
    /// Leave out the blocks manifest's `io.oci-blocks.legacy` annotation.
    #[serde(default)]
    pub unbound: bool,
    /// The order of the index's entries: `legacy`, `anchor`, `blocks` and
    /// `decoys` (default: decoys, legacy, anchor, blocks).
    #[serde(default = "default_order")]
    pub order: Vec<String>,
    /// Plain manifests for another platform, which no unpacker of the target
    /// platform may pick.
    #[serde(default)]
    pub decoys: Vec<Vec<LayerSpec>>,
}

/// What an unpacker must do with the vector.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// `tree`: succeed and produce `tree`; `fail`: exit non-zero and leave no
    /// root filesystem; `contained`: fail or succeed, but write nothing outside
    /// the root filesystem and disturb no guard.
    pub result: ExpectResult,
    /// For `result = "fail"`: the rule of `spec/` the image breaks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The expected tree, for `result = "tree"`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tree: Vec<ExpectedEntry>,
    /// Paths in the host directory (`{host}/NAME`) that the suite creates
    /// before the run and checks after it: a file must keep its content, a
    /// directory must stay empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guards: Vec<Guard>,
    /// Paths in the host directory that must not exist after the run (any
    /// other new entry there fails the run too; these name the aim).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub escapes: Vec<String>,
}

/// The three verdicts a vector can demand.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ExpectResult {
    /// Succeed with the expected tree.
    Tree,
    /// Fail, leaving no root filesystem.
    Fail,
    /// Fail or succeed, staying inside the root.
    Contained,
}

/// A host path that an escaping unpacker would disturb.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Guard {
    /// `{host}/NAME`.
    pub path: String,
    /// `file` (created with `content`) or `dir` (created empty).
    #[serde(rename = "type", default = "file")]
    pub kind: String,
    /// A file guard's content.
    #[serde(default)]
    pub content: String,
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
fn default_order() -> Vec<String> {
    ["decoys", "legacy", "anchor", "blocks"]
        .map(String::from)
        .to_vec()
}

/// A platform, `OS/ARCH[/VARIANT]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// `amd64`, `arm64`...
    pub architecture: String,
    /// `v8`...
    pub variant: Option<String>,
}

impl Platform {
    /// Parses `OS/ARCH[/VARIANT]`.
    pub fn parse(text: &str) -> Result<Platform> {
        let parts: Vec<&str> = text.split('/').collect();
        match parts.as_slice() {
            [os, arch] | [os, arch, _] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: parts.get(2).map(|v| v.to_string()),
            }),
            _ => bail!("platform {text:?} is not OS/ARCH[/VARIANT]"),
        }
    }

    /// This machine's platform, in the spelling of OCI image configs.
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            "loongarch64" => "loong64",
            other => other,
        };
        Platform {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: (architecture == "arm64").then(|| "v8".to_string()),
        }
    }

    /// A platform that differs from this one, for decoy manifests.
    fn decoy(&self) -> Platform {
        let architecture = if self.architecture == "s390x" {
            "ppc64le"
        } else {
            "s390x"
        };
        Platform {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: None,
        }
    }

    fn to_json(&self) -> Value {
        let mut p = json!({"architecture": self.architecture, "os": self.os});
        if let Some(v) = &self.variant {
            p["variant"] = json!(v);
        }
        p
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Every vector compiled into the suite, in group order then name order.
pub fn all() -> Result<Vec<Vector>> {
    let mut out = Vec::new();
    for group in GROUPS {
        for (id, text) in SOURCES
            .iter()
            .filter(|(id, _)| id.split('/').next() == Some(group))
        {
            let spec: VectorSpec =
                toml::from_str(text).with_context(|| format!("vector {id}: description"))?;
            let vector = Vector {
                id: id.to_string(),
                spec,
            };
            vector.check()?;
            out.push(vector);
        }
    }
    ensure!(
        out.len() == SOURCES.len(),
        "a vector lies outside the groups {GROUPS:?}"
    );
    Ok(out)
}

/// A blob written to the layout: its descriptor fields.
#[derive(Clone, Debug)]
struct Blob {
    media_type: String,
    digest: String,
    size: u64,
}

impl Blob {
    fn descriptor(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
    }
}

/// Writes blobs into an OCI layout's `blobs/sha256`.
struct LayoutWriter<'a> {
    root: &'a Path,
}

impl LayoutWriter<'_> {
    fn blob(&self, media_type: &str, bytes: &[u8]) -> Result<Blob> {
        let hex = hex::encode(Sha256::digest(bytes));
        let path = self.root.join("blobs/sha256").join(&hex);
        std::fs::write(&path, bytes).with_context(|| format!("write {}", path.display()))?;
        Ok(Blob {
            media_type: media_type.to_string(),
            digest: format!("sha256:{hex}"),
            size: bytes.len() as u64,
        })
    }

    fn json(&self, media_type: &str, value: &Value) -> Result<Blob> {
        let bytes = serde_json::to_vec_pretty(value)?;
        self.blob(media_type, &bytes)
    }
}

impl Vector {
    /// The vector's name, without its group; also the tag it is published under.
    pub fn name(&self) -> &str {
        self.id.rsplit('/').next().unwrap_or(&self.id)
    }

    /// Checks what parsing cannot: names, media types and expectations agree.
    fn check(&self) -> Result<()> {
        let id = &self.id;
        let spec = &self.spec;
        ensure!(
            self.name()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
            "vector {id}: a name is lowercase letters, digits and '-' (it is also the tag)"
        );
        for b in &spec.blocks {
            layer_media_type(&b.media_type, true)
                .with_context(|| format!("vector {id}: block {}", b.name))?;
        }
        let legacy = spec.fallback.iter().flat_map(|f| f.legacy.iter().flatten());
        let decoys = spec.fallback.iter().flat_map(|f| f.decoys.iter().flatten());
        for l in spec.layers.iter().chain(legacy).chain(decoys) {
            layer_media_type(&l.media_type, false).with_context(|| format!("vector {id}"))?;
        }
        if let Some(f) = &spec.fallback {
            for o in &f.order {
                ensure!(
                    ["legacy", "anchor", "blocks", "decoys"].contains(&o.as_str()),
                    "vector {id}: unknown fallback entry {o:?}"
                );
            }
        }
        ensure!(
            spec.expect.rule.is_some() == (spec.expect.result == ExpectResult::Fail),
            "vector {id}: a vector with result = \"fail\", and only one, names its rule"
        );
        match spec.expect.result {
            ExpectResult::Tree => ensure!(
                !spec.expect.tree.is_empty(),
                "vector {id}: result = \"tree\" needs a tree"
            ),
            _ => ensure!(
                spec.expect.tree.is_empty(),
                "vector {id}: only result = \"tree\" has a tree"
            ),
        }
        // The suite creates and removes these paths: keep them to single
        // names in its own host directory.
        let host_paths = spec.expect.guards.iter().map(|g| &g.path);
        for path in host_paths.chain(&spec.expect.escapes) {
            let name = path.strip_prefix("{host}/").unwrap_or("");
            ensure!(
                !name.is_empty() && !name.contains('/') && name != "." && name != "..",
                "vector {id}: host path {path} is not {{host}}/NAME"
            );
        }
        Ok(())
    }

    /// Writes the vector as an OCI image layout at `root` (created), its image
    /// tagged with the vector's name, for an unpacker of `platform`, with
    /// `host` for `{host}`.
    pub fn write_layout(&self, root: &Path, platform: &Platform, host: &str) -> Result<()> {
        let id = &self.id;
        std::fs::create_dir_all(root.join("blobs/sha256"))
            .with_context(|| format!("create {}", root.display()))?;
        std::fs::write(
            root.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )?;
        let w = LayoutWriter { root };
        let spec = &self.spec;

        let mut names = Names {
            blocks: BTreeMap::new(),
            host: host.to_string(),
        };
        let mut declared = Vec::new();
        for b in &spec.blocks {
            let media_type = layer_media_type(&b.media_type, true)?;
            let tar = tar_of(&b.entries, &names)
                .with_context(|| format!("vector {id}: block {}", b.name))?;
            let blob = w.blob(media_type, &compress(tar, media_type)?)?;
            if b.declared {
                declared.push(blob.descriptor());
            }
            names.blocks.insert(b.name.clone(), blob.digest.clone());
        }
        let has_blocks = !declared.is_empty() || spec.blocks_field;
        let blocks = has_blocks.then_some(declared.as_slice());
        // A fallback's legacy manifest first: the blocks manifest names it.
        let legacy = match &spec.fallback {
            None => None,
            Some(f) => Some(match &f.legacy {
                Some(layers) => self.manifest(&w, layers, None, &names, platform, None)?,
                None => self.legacy_manifest(&w, &names, platform)?,
            }),
        };
        let bound = legacy
            .as_ref()
            .filter(|_| has_blocks && !spec.fallback.as_ref().is_some_and(|f| f.unbound))
            .map(|l| l.digest.clone());
        let main = self.manifest(&w, &spec.layers, blocks, &names, platform, bound.as_deref())?;

        let top = match (&spec.fallback, legacy) {
            (Some(f), Some(legacy)) => {
                let anchor = anchor(&w, &declared)?;
                let decoy_platform = platform.decoy();
                let mut decoys = Vec::new();
                for layers in &f.decoys {
                    let m = self.manifest(&w, layers, None, &names, &decoy_platform, None)?;
                    let mut d = m.descriptor();
                    d["platform"] = decoy_platform.to_json();
                    decoys.push(d);
                }
                let mut entries = Vec::new();
                for o in &f.order {
                    match o.as_str() {
                        "decoys" => entries.extend(decoys.iter().cloned()),
                        "legacy" => {
                            let mut d = legacy.descriptor();
                            d["platform"] = platform.to_json();
                            entries.push(d);
                        }
                        "anchor" => {
                            let mut d = anchor.descriptor();
                            d["platform"] = json!({"architecture": "unknown", "os": "unknown"});
                            d["artifactType"] = json!(names::ANCHOR_TYPE);
                            d["annotations"] = json!({names::VARIANT: "anchor"});
                            entries.push(d);
                        }
                        _ => {
                            let mut d = main.descriptor();
                            d["platform"] = platform.to_json();
                            d["annotations"] = json!({names::VARIANT: "blocks"});
                            entries.push(d);
                        }
                    }
                }
                w.json(
                    names::OCI_INDEX,
                    &json!({"schemaVersion": 2, "mediaType": names::OCI_INDEX, "manifests": entries}),
                )?
            }
            _ => main,
        };
        let mut d = top.descriptor();
        d["annotations"] = json!({names::REF_NAME: self.name()});
        let index = json!({"schemaVersion": 2, "mediaType": names::OCI_INDEX, "manifests": [d]});
        std::fs::write(root.join("index.json"), serde_json::to_vec_pretty(&index)?)?;
        Ok(())
    }

    /// The legacy manifest of the vector's layers: each layer with import
    /// entries replaced by its materialization, the others as they are.
    fn legacy_manifest(
        &self,
        w: &LayoutWriter<'_>,
        names: &Names,
        platform: &Platform,
    ) -> Result<Blob> {
        let blocks: HashMap<String, Vec<EntrySpec>> = self
            .spec
            .blocks
            .iter()
            .filter_map(|b| Some((names.blocks.get(&b.name)?.clone(), b.entries.clone())))
            .collect();
        let one = |e: &EntrySpec| -> Result<(Vec<u8>, String)> {
            let mut t = tar_of(std::slice::from_ref(e), names)?;
            t.truncate(t.len().saturating_sub(1024));
            Ok((t, substitute(&e.content, names)?))
        };
        let mut layers = Vec::new();
        for l in &self.spec.layers {
            let has_imports = l.entries.iter().any(|e| {
                e.path
                    .rsplit('/')
                    .next()
                    .is_some_and(|b| b.starts_with(".import."))
            });
            if !has_imports {
                layers.push(Layer::Spec(l));
                continue;
            }
            let bytes = crate::materialize::legacy_layer(&l.entries, &one, &blocks)
                .with_context(|| format!("vector {}: materializing a layer", self.id))?;
            let standard = l.media_type.replace("import", "tar");
            layers.push(Layer::Tar(layer_media_type(&standard, false)?, bytes));
        }
        self.write_manifest(w, &layers, None, names, platform, None)
    }

    /// Writes a manifest of `layers` (and its config) for `platform`.
    fn manifest(
        &self,
        w: &LayoutWriter<'_>,
        layers: &[LayerSpec],
        blocks: Option<&[Value]>,
        names: &Names,
        platform: &Platform,
        legacy: Option<&str>,
    ) -> Result<Blob> {
        let layers: Vec<Layer<'_>> = layers.iter().map(Layer::Spec).collect();
        self.write_manifest(w, &layers, blocks, names, platform, legacy)
    }

    fn write_manifest(
        &self,
        w: &LayoutWriter<'_>,
        layers: &[Layer<'_>],
        blocks: Option<&[Value]>,
        names: &Names,
        platform: &Platform,
        legacy: Option<&str>,
    ) -> Result<Blob> {
        let mut descriptors = Vec::new();
        let mut diff_ids = Vec::new();
        for (i, l) in layers.iter().enumerate() {
            let (media_type, tar) = match l {
                Layer::Spec(l) => (
                    layer_media_type(&l.media_type, false)?,
                    tar_of(&l.entries, names)
                        .with_context(|| format!("vector {}: layer {i}", self.id))?,
                ),
                Layer::Tar(media_type, bytes) => (*media_type, bytes.clone()),
            };
            diff_ids.push(format!("sha256:{}", hex::encode(Sha256::digest(&tar))));
            descriptors.push(
                w.blob(media_type, &compress(tar, media_type)?)?
                    .descriptor(),
            );
        }
        let mut config = json!({
            "architecture": platform.architecture,
            "os": platform.os,
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        if let Some(v) = &platform.variant {
            config["variant"] = json!(v);
        }
        let config_type = if blocks.is_some_and(|b| !b.is_empty()) {
            names::BLOCKS_CONFIG
        } else {
            names::OCI_CONFIG
        };
        let config = w.json(config_type, &config)?;
        let mut m = json!({
            "schemaVersion": 2,
            "mediaType": names::OCI_MANIFEST,
            "config": config.descriptor(),
            "layers": descriptors,
        });
        if let Some(blocks) = blocks {
            m["blocks"] = Value::Array(blocks.to_vec());
        }
        if let Some(legacy) = legacy {
            m["annotations"] = json!({ names::LEGACY: legacy });
        }
        w.json(names::OCI_MANIFEST, &m)
    }
}

/// A layer to write: described, or already a tar.
enum Layer<'a> {
    Spec(&'a LayerSpec),
    Tar(&'static str, Vec<u8>),
}

/// The GC anchor: an artifact manifest whose layers are the blocks.
fn anchor(w: &LayoutWriter<'_>, blocks: &[Value]) -> Result<Blob> {
    let empty = w.blob(names::OCI_EMPTY, b"{}")?;
    let layers: Vec<Value> = blocks
        .iter()
        .map(|b| json!({"mediaType": b["mediaType"], "digest": b["digest"], "size": b["size"]}))
        .collect();
    w.json(
        names::OCI_MANIFEST,
        &json!({
            "schemaVersion": 2,
            "mediaType": names::OCI_MANIFEST,
            "artifactType": names::ANCHOR_TYPE,
            "config": empty.descriptor(),
            "layers": layers,
        }),
    )
}

/// The full media type of a short layer type.
fn layer_media_type(short: &str, block: bool) -> Result<&'static str> {
    Ok(match short {
        "tar" => "application/vnd.oci.image.layer.v1.tar",
        "tar+gzip" => "application/vnd.oci.image.layer.v1.tar+gzip",
        "tar+zstd" => "application/vnd.oci.image.layer.v1.tar+zstd",
        "import" if !block => "application/vnd.oci-blocks.image.layer.v1.tar",
        "import+gzip" if !block => "application/vnd.oci-blocks.image.layer.v1.tar+gzip",
        "import+zstd" if !block => "application/vnd.oci-blocks.image.layer.v1.tar+zstd",
        other => bail!("unknown media type {other:?}"),
    })
}

fn compress(tar: Vec<u8>, media_type: &str) -> Result<Vec<u8>> {
    if media_type.ends_with("+gzip") {
        let mut enc = flate2::GzBuilder::new()
            .operating_system(255)
            .write(Vec::new(), flate2::Compression::new(6));
        enc.write_all(&tar)?;
        Ok(enc.finish()?)
    } else if media_type.ends_with("+zstd") {
        Ok(zstd::encode_all(&tar[..], 3)?)
    } else {
        Ok(tar)
    }
}

/// What placeholders stand for while a layout is written.
struct Names {
    /// Block name to digest, for `{block:NAME}`.
    blocks: BTreeMap<String, String>,
    /// The host directory, for `{host}`.
    host: String,
}

/// Replaces `{block:NAME}` with that block's digest and `{host}` with the host
/// directory.
fn substitute(text: &str, names: &Names) -> Result<String> {
    let text = text.replace("{host}", &names.host);
    let mut out = String::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("{block:") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 7..];
        let end = after.find('}').context("unterminated {block:")?;
        let name = &after[..end];
        let digest = names
            .blocks
            .get(name)
            .with_context(|| format!("no block named {name:?} before this entry"))?;
        out.push_str(digest);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Sets a ustar name field to `value`, or to its first bytes when it is too
/// long, and returns whether a PAX record must carry the whole value.
fn set_name(field: &mut [u8], value: &str) -> bool {
    let bytes = value.as_bytes();
    let n = bytes.len().min(field.len());
    field.fill(0);
    field[..n].copy_from_slice(&bytes[..n]);
    bytes.len() > field.len()
}

/// A tar archive of `entries`, each header exactly as described: uid and gid
/// 0, mtime 1. A path or link target longer than ustar holds goes into a PAX
/// record, as tar writes it.
fn tar_of(entries: &[EntrySpec], names: &Names) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for e in entries {
        let (kind, default_mode) = match e.kind.as_str() {
            "file" => (tar::EntryType::Regular, 0o644),
            "dir" => (tar::EntryType::Directory, 0o755),
            "symlink" => (tar::EntryType::Symlink, 0o777),
            "hardlink" => (tar::EntryType::Link, 0o644),
            "fifo" => (tar::EntryType::Fifo, 0o644),
            "gnu-sparse" => (tar::EntryType::GNUSparse, 0o644),
            other => match other.strip_prefix("typeflag:").map(str::as_bytes) {
                Some(&[flag]) => (tar::EntryType::new(flag), 0o644),
                _ => bail!("entry {}: unknown type {other:?}", e.path),
            },
        };
        let content = if kind == tar::EntryType::Regular {
            substitute(&e.content, names)
                .with_context(|| format!("entry {}", e.path))?
                .repeat(e.repeat.unwrap_or(1))
                .into_bytes()
        } else {
            Vec::new()
        };
        let path = substitute(&e.path, names)?;
        // An old-GNU sparse header with no data blocks (all hole).
        let mut header = if kind == tar::EntryType::GNUSparse {
            tar::Header::new_gnu()
        } else {
            tar::Header::new_ustar()
        };
        header.set_entry_type(kind);
        header.set_mode(e.mode.unwrap_or(default_mode));
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1);
        header.set_size(content.len() as u64);
        if let Some(gnu) = header
            .as_gnu_mut()
            .filter(|_| kind == tar::EntryType::GNUSparse)
        {
            gnu.set_real_size(0);
        }
        let mut pax: BTreeMap<String, String> = BTreeMap::new();
        if set_name(&mut header.as_old_mut().name, &path) {
            pax.insert("path".into(), path.clone());
        }
        if let Some(target) = &e.target {
            let target = substitute(target, names)?;
            if set_name(&mut header.as_old_mut().linkname, &target) {
                pax.insert("linkpath".into(), target);
            }
        }
        header.set_cksum();
        for (k, v) in &e.pax {
            pax.insert(k.clone(), substitute(v, names)?);
        }
        if !pax.is_empty() {
            builder.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_bytes())))?;
        }
        builder.append(&header, &content[..])?;
    }
    Ok(builder.into_inner()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_vector_parses_and_builds_the_same_bytes_twice() -> Result<()> {
        let vectors = all()?;
        assert!(vectors.len() >= 30, "{} vectors", vectors.len());
        for g in GROUPS {
            assert!(
                vectors.iter().any(|v| v.id.starts_with(&format!("{g}/"))),
                "group {g} is empty"
            );
        }
        let tmp = tempfile::tempdir()?;
        for v in &vectors {
            let a = tmp.path().join(format!("{}-a", v.name()));
            let b = tmp.path().join(format!("{}-b", v.name()));
            v.write_layout(&a, &Platform::host(), "/tmp/h")?;
            v.write_layout(&b, &Platform::host(), "/tmp/h")?;
            assert_eq!(
                std::fs::read(a.join("index.json"))?,
                std::fs::read(b.join("index.json"))?,
                "{}",
                v.id
            );
        }
        Ok(())
    }

    #[test]
    fn a_block_digest_is_substituted_and_an_unknown_block_is_an_error() {
        let blocks = Names {
            blocks: BTreeMap::from([("b".to_string(), "sha256:ab".to_string())]),
            host: "/h".into(),
        };
        assert_eq!(
            substitute("/x from {block:b}\n", &blocks).ok(),
            Some("/x from sha256:ab\n".to_string())
        );
        assert_eq!(
            substitute("..{host}/x", &blocks).ok(),
            Some("../h/x".to_string())
        );
        let err = substitute("/x from {block:c}", &blocks).err();
        assert!(
            format!("{err:?}").contains("no block named \"c\""),
            "{err:?}"
        );
        assert!(substitute("{block:b", &blocks).is_err());
    }

    #[test]
    fn platforms_parse_and_decoys_differ() {
        let p = Platform::parse("linux/arm64/v8").ok();
        assert_eq!(
            p.as_ref().map(|p| p.to_string()),
            Some("linux/arm64/v8".into())
        );
        assert!(Platform::parse("linux").is_err());
        assert!(Platform::parse("/amd64").is_err());
        let host = Platform::host();
        assert_ne!(host.decoy(), host);
    }

    #[test]
    fn a_description_with_a_wrong_field_or_expectation_is_refused() {
        let bad_field = "description = \"x\"\n[expect]\nresult = \"tree\"\ntree = []\nextra = 1\n";
        assert!(toml::from_str::<VectorSpec>(bad_field).is_err());
        let spec: VectorSpec =
            toml::from_str("description = \"x\"\n[expect]\nresult = \"tree\"\n").expect("parses");
        let v = Vector {
            id: "plain/x".into(),
            spec,
        };
        let err = v.check().err();
        assert!(format!("{err:?}").contains("needs a tree"), "{err:?}");
    }
}
