//! Manifests and indexes that keep the exact bytes they were read from.
//!
//! `oci-spec`'s types drop fields they do not know, `blocks` among them, and
//! re-serializing a document changes its digest. [`Manifest`] and [`Index`] hold
//! the raw bytes (the only thing ever written, pushed or hashed), a typed view
//! from `oci-spec` for the standard fields, and this extension's own fields parsed
//! from the same bytes.

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};
use serde_json::Value;

use crate::digest::Digest;
use crate::names::{ANNOTATION_VARIANT, MAX_MANIFEST_SIZE};
use crate::{Error, Result};

/// An image manifest, possibly with `blocks`, and its raw bytes.
#[derive(Clone, Debug)]
pub struct Manifest {
    raw: Vec<u8>,
    digest: Digest,
    typed: ImageManifest,
    blocks: Vec<Descriptor>,
}

fn parse_value(raw: &[u8], what: &str) -> Result<Value> {
    if raw.len() as u64 > MAX_MANIFEST_SIZE {
        return Err(Error::Malformed {
            what: what.into(),
            reason: format!(
                "{} bytes, more than the limit of {MAX_MANIFEST_SIZE}",
                raw.len()
            ),
        });
    }
    serde_json::from_slice(raw).map_err(|source| Error::Json {
        what: what.into(),
        source,
    })
}

fn malformed(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Malformed {
        what: what.into(),
        reason: e.to_string(),
    }
}

impl Manifest {
    /// Parses a manifest, keeping `raw` as is. Structural errors are returned;
    /// the rules of the spec are checked by [`crate::validate`].
    pub fn from_bytes(raw: Vec<u8>) -> Result<Self> {
        let digest = Digest::sha256(&raw);
        let what = format!("manifest {digest}");
        let value = parse_value(&raw, &what)?;
        let typed: ImageManifest =
            serde_json::from_value(value.clone()).map_err(|e| malformed(&what, e))?;
        let blocks = match value.get("blocks") {
            None => Vec::new(),
            Some(b) => serde_json::from_value(b.clone())
                .map_err(|e| malformed(&what, format!("blocks: {e}")))?,
        };
        Ok(Manifest {
            raw,
            digest,
            typed,
            blocks,
        })
    }

    /// The exact bytes.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// The sha256 digest of the exact bytes.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The standard fields.
    pub fn typed(&self) -> &ImageManifest {
        &self.typed
    }

    /// The layers.
    pub fn layers(&self) -> &[Descriptor] {
        self.typed.layers()
    }

    /// The blocks (empty when the field is absent).
    pub fn blocks(&self) -> &[Descriptor] {
        &self.blocks
    }

    /// Every blob the manifest references: config, layers, blocks.
    pub fn blobs(&self) -> impl Iterator<Item = &Descriptor> {
        std::iter::once(self.typed.config())
            .chain(self.typed.layers())
            .chain(&self.blocks)
    }
}

/// An image index and its raw bytes.
#[derive(Clone, Debug)]
pub struct Index {
    raw: Vec<u8>,
    digest: Digest,
    typed: ImageIndex,
}

impl Index {
    /// Parses an index, keeping `raw` as is.
    pub fn from_bytes(raw: Vec<u8>) -> Result<Self> {
        let digest = Digest::sha256(&raw);
        let what = format!("index {digest}");
        let value = parse_value(&raw, &what)?;
        let typed = serde_json::from_value(value).map_err(|e| malformed(&what, e))?;
        Ok(Index { raw, digest, typed })
    }

    /// The exact bytes.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// The sha256 digest of the exact bytes.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The standard fields.
    pub fn typed(&self) -> &ImageIndex {
        &self.typed
    }

    /// The entry with `io.oci-blocks.variant` = `variant`, if any.
    pub fn variant(&self, variant: &str) -> Option<&Descriptor> {
        self.typed.manifests().iter().find(|d| {
            d.annotations()
                .as_ref()
                .and_then(|a| a.get(ANNOTATION_VARIANT))
                .is_some_and(|v| v == variant)
        })
    }
}

/// A platform object (`{"os": ..., "architecture": ..., "variant": ...}`) as
/// `os/arch[/variant]`; `?` stands for a missing field.
pub fn platform_text(platform: &Value) -> String {
    let s = |k: &str| platform.get(k).and_then(Value::as_str).unwrap_or("?");
    let mut t = format!("{}/{}", s("os"), s("architecture"));
    if let Some(v) = platform.get("variant").and_then(Value::as_str) {
        t.push('/');
        t.push_str(v);
    }
    t
}

/// An image config's `rootfs.diff_ids`, in order (none when absent).
pub fn diff_ids(config: &Value) -> Vec<String> {
    config
        .pointer("/rootfs/diff_ids")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// An image config without its `rootfs.diff_ids`: what a legacy manifest's
/// config and its blocks manifest's config must share (`spec/fallback.md`).
pub fn without_diff_ids(mut config: Value) -> Value {
    if let Some(rootfs) = config.get_mut("rootfs").and_then(Value::as_object_mut) {
        rootfs.remove("diff_ids");
    }
    config
}

/// The GC anchor manifest of `spec/fallback.md` for these block descriptors:
/// an artifact manifest whose config is the empty descriptor and whose layers
/// are the blocks, so that a registry unaware of blocks keeps them.
pub fn anchor_manifest(blocks: Vec<Value>) -> Value {
    use crate::names::{
        ANCHOR_ARTIFACT_TYPE, OCI_EMPTY, OCI_EMPTY_DIGEST, OCI_EMPTY_SIZE, OCI_MANIFEST,
    };
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": ANCHOR_ARTIFACT_TYPE,
        "config": {"mediaType": OCI_EMPTY, "digest": OCI_EMPTY_DIGEST, "size": OCI_EMPTY_SIZE},
        "layers": blocks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = r#"{
  "schemaVersion": 2,
  "mediaType": "application/vnd.oci.image.manifest.v1+json",
  "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a", "size": 2},
  "layers": [],
  "blocks": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae", "size": 3, "x-unknown": true}],
  "x-future-field": {"kept": [1, 2, 3]}
}"#;

    #[test]
    fn keeps_raw_bytes_unknown_fields_and_blocks() {
        let m = Manifest::from_bytes(MANIFEST.as_bytes().to_vec()).expect("parses");
        assert_eq!(m.raw(), MANIFEST.as_bytes());
        assert_eq!(m.digest(), &Digest::sha256(MANIFEST.as_bytes()));
        assert_eq!(m.blocks().len(), 1);
        assert_eq!(m.blocks()[0].size(), 3);
        assert_eq!(m.blobs().count(), 2);
        // What oci-spec would write back has lost the unknown fields: that is why
        // the raw bytes are kept.
        let reserialized = serde_json::to_vec(m.typed()).expect("serializes");
        assert!(!String::from_utf8_lossy(&reserialized).contains("x-future-field"));
    }

    #[test]
    fn rejects_malformed_blocks_and_json() {
        let bad = MANIFEST.replace(r#""size": 3"#, r#""size": "three""#);
        let err = Manifest::from_bytes(bad.into_bytes()).expect_err("bad block");
        assert!(err.to_string().contains("blocks"), "{err}");
        assert!(matches!(
            Manifest::from_bytes(b"{not json".to_vec()),
            Err(Error::Json { .. })
        ));
    }
}
