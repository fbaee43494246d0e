//! What a build reports: per platform, its manifest, config, layers and
//! blocks, and the fallback index with the cost of its legacy copy.

use std::collections::BTreeMap;

use oci_blocks_core::Digest;
use serde::Serialize;

/// What a build produced.
#[derive(Clone, Debug, Serialize)]
pub struct BuildReport {
    /// The image reference written.
    pub image: String,
    /// Each platform's image, in index order.
    pub platforms: Vec<PlatformReport>,
    /// The fallback index, when one was written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<FallbackReport>,
}

/// One platform's image.
#[derive(Clone, Debug, Serialize)]
pub struct PlatformReport {
    /// `os/arch[/variant]`.
    pub platform: String,
    /// The (blocks) manifest's digest.
    pub manifest: Digest,
    /// The config's digest.
    pub config: Digest,
    /// The layers, base layers first.
    pub layers: Vec<LayerReport>,
    /// The blocks.
    pub blocks: Vec<BlockReport>,
    /// Added layers merged to respect `--max-layers`, by destination.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub merged: Vec<Vec<String>>,
    /// The legacy manifest's digest, when a fallback was built.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub legacy_manifest: Option<Digest>,
}

/// The fallback index of a build.
#[derive(Clone, Debug, Serialize)]
pub struct FallbackReport {
    /// The index's digest (what the tag names).
    pub index: Digest,
    /// The GC anchor's digest.
    pub anchor: Digest,
    /// Bytes of the layers only the legacy manifests use: what the legacy copy
    /// costs in storage and transfer.
    pub legacy_only_bytes: u64,
}

/// A layer of the built image.
#[derive(Clone, Debug, Serialize)]
pub struct LayerReport {
    /// Digest.
    pub digest: Digest,
    /// Compressed size.
    pub size: u64,
    /// Media type.
    pub media_type: String,
    /// Where it came from (`base`, or the add's DEST).
    pub source: String,
    /// Number of import entries.
    pub imports: usize,
}

/// A block of the built image.
#[derive(Clone, Debug, Serialize)]
pub struct BlockReport {
    /// Digest.
    pub digest: Digest,
    /// Size.
    pub size: u64,
    /// The rule that made it.
    pub rule: String,
    /// Descriptor annotations.
    pub annotations: BTreeMap<String, String>,
    /// Whether the build cache spared reading and writing it.
    pub cached: bool,
}
