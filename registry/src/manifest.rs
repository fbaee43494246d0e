//! What the registry checks of a pushed manifest: before it looks at storage,
//! its media type, the project's JSON Schemas and semantic rules (through the
//! core crate), and the list of what it references; for an index, once its
//! children are known to be stored, that each blocks manifest is bound to the
//! index's legacy manifest.
//!
//! Blocks are references exactly like config and layers: a manifest is only accepted
//! when every one of them is stored (`spec/blocks.md`, "Registry requirements").

use oci_blocks_core::Digest;
use oci_blocks_core::names::{BLOCKS_CONFIG, OCI_INDEX, OCI_MANIFEST, VARIANT_BLOCKS};
use oci_blocks_core::validate::{check_binding, validate_document, variant_of};
use serde_json::Value;

pub use oci_blocks_core::names::{DOCKER_MANIFEST, DOCKER_MANIFEST_LIST};

/// The manifest media types this registry stores.
pub const MANIFEST_MEDIA_TYPES: &[&str] = &[
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
];

/// A manifest that passed the document checks.
#[derive(Debug)]
pub struct Checked {
    /// The media type it is stored and served with.
    pub media_type: String,
    /// Blobs it references: config, layers and blocks, in document order.
    pub blobs: Vec<Reference>,
    /// Manifests it references (an index's children).
    pub children: Vec<Digest>,
    /// Its `subject`, if any.
    pub subject: Option<Digest>,
    /// Its `artifactType`, or the config media type of an image manifest.
    pub artifact_type: Option<String>,
}

/// One referenced blob.
#[derive(Debug)]
pub struct Reference {
    /// The JSON pointer of its descriptor (`/blocks/3`).
    pub pointer: String,
    /// Its digest.
    pub digest: Digest,
    /// The size its descriptor gives.
    pub size: Option<u64>,
}

/// Checks a pushed manifest's bytes; the error is the `MANIFEST_INVALID` message.
pub fn check(bytes: &[u8], content_type: Option<&str>) -> Result<Checked, String> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| format!("manifest is not valid JSON: {e}"))?;
    let declared = value.get("mediaType").and_then(Value::as_str);
    let content_type = content_type.map(|c| c.split(';').next().unwrap_or(c).trim());
    let media_type = match (declared, content_type) {
        (Some(d), Some(c)) if d != c && MANIFEST_MEDIA_TYPES.contains(&c) => {
            return Err(format!(
                "mediaType {d:?} does not match the Content-Type {c:?} it was pushed with"
            ));
        }
        (Some(d), _) => d,
        (None, Some(c)) => c,
        (None, None) => {
            return Err("no mediaType in the manifest and no Content-Type header".into());
        }
    };
    if !MANIFEST_MEDIA_TYPES.contains(&media_type) {
        return Err(format!(
            "unsupported manifest media type {media_type:?} (expected one of {})",
            MANIFEST_MEDIA_TYPES.join(", ")
        ));
    }
    if value.get("schemaVersion").and_then(Value::as_u64) != Some(2) {
        return Err("schemaVersion must be 2".into());
    }
    let is_index = media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST;
    if media_type == OCI_MANIFEST || media_type == OCI_INDEX {
        // The project's schemas and rules; a document without mediaType is
        // classified by its fields, so give the core the one we settled on.
        let (_, report) = if declared.is_some() {
            validate_document(bytes, "manifest")
        } else {
            let mut v = value.clone();
            if let Some(obj) = v.as_object_mut() {
                obj.insert("mediaType".into(), Value::String(media_type.into()));
            }
            validate_document(v.to_string().as_bytes(), "manifest")
        };
        let errors: Vec<String> = report
            .errors()
            .map(|v| match &v.pointer {
                Some(p) if !p.is_empty() => format!("{} at {p}: {}", v.rule.id(), v.message),
                _ => format!("{}: {}", v.rule.id(), v.message),
            })
            .collect();
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
    }
    let mut blobs = Vec::new();
    let mut children = Vec::new();
    if is_index {
        let manifests = value
            .get("manifests")
            .and_then(Value::as_array)
            .ok_or("an index needs a `manifests` array")?;
        for (i, d) in manifests.iter().enumerate() {
            children.push(descriptor(d, &format!("/manifests/{i}"))?.digest);
        }
    } else {
        let config = value
            .get("config")
            .ok_or("an image manifest needs a `config` descriptor")?;
        blobs.push(descriptor(config, "/config")?);
        let layers = value
            .get("layers")
            .and_then(Value::as_array)
            .ok_or("an image manifest needs a `layers` array")?;
        for list in ["layers", "blocks"] {
            let items = if list == "layers" {
                Some(layers)
            } else {
                value.get(list).and_then(Value::as_array)
            };
            for (i, d) in items.into_iter().flatten().enumerate() {
                if is_foreign(d) {
                    continue;
                }
                blobs.push(descriptor(d, &format!("/{list}/{i}"))?);
            }
        }
    }
    let subject = match value.get("subject") {
        Some(d) => Some(descriptor(d, "/subject")?.digest),
        None => None,
    };
    let artifact_type = value
        .get("artifactType")
        .and_then(Value::as_str)
        .or_else(|| {
            (!is_index)
                .then(|| value.get("config")?.get("mediaType")?.as_str())
                .flatten()
        })
        .map(str::to_string);
    Ok(Checked {
        media_type: media_type.to_string(),
        blobs,
        children,
        subject,
        artifact_type,
    })
}

/// Checks, for an index whose children are stored, that each blocks manifest
/// names the legacy manifest the index offers for its platform
/// (`fallback.legacy-unbound`): a copy tool that rewrites the legacy manifest
/// (recompressing its layers) leaves the blocks manifest bound to another
/// image, which blocks-aware clients would refuse on every pull. A Docker
/// manifest list may not name a blocks manifest at all. `read` gives a
/// stored child's bytes.
pub fn check_bindings(
    bytes: &[u8],
    read: impl Fn(&Digest) -> Option<Vec<u8>>,
) -> Result<(), String> {
    let Ok(value) = serde_json::from_slice::<Value>(bytes) else {
        return Ok(());
    };
    let Some(entries) = value.get("manifests").and_then(Value::as_array) else {
        return Ok(());
    };
    let docker_list = value.get("mediaType").and_then(Value::as_str) == Some(DOCKER_MANIFEST_LIST);
    let child = |entry: &Value| {
        entry
            .get("digest")
            .and_then(Value::as_str)
            .and_then(|d| Digest::parse(d).ok())
            .and_then(|d| read(&d))
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
    };
    for (i, entry) in entries.iter().enumerate() {
        let subject = format!("/manifests/{i}");
        if docker_list {
            // What skopeo falls back to when the OCI index is refused: the
            // list drops every annotation, so a blocks manifest would pass
            // for a plain image of its platform.
            let is_blocks = child(entry).is_some_and(|d| {
                d.get("blocks").is_some()
                    || d.pointer("/config/mediaType").and_then(Value::as_str) == Some(BLOCKS_CONFIG)
            });
            if is_blocks {
                return Err(format!(
                    "{subject} is a blocks manifest, and a Docker manifest list cannot carry the io.oci-blocks.variant annotation that tells clients what it is: push the OCI index as it is (skopeo copy --preserve-digests)"
                ));
            }
            continue;
        }
        if variant_of(entry) != Some(VARIANT_BLOCKS) {
            continue;
        }
        let Some(doc) = child(entry) else {
            continue;
        };
        if let Some((_, Some(v))) = check_binding(entries, i, &doc, &subject) {
            return Err(format!("{} at {subject}: {}", v.rule.id(), v.message));
        }
    }
    Ok(())
}

fn descriptor(d: &Value, pointer: &str) -> Result<Reference, String> {
    let text = d
        .get("digest")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{pointer}: descriptor without a digest"))?;
    let digest = Digest::parse(text).map_err(|e| format!("{pointer}/digest: {e}"))?;
    Ok(Reference {
        pointer: pointer.to_string(),
        digest,
        size: d.get("size").and_then(Value::as_u64),
    })
}

/// Docker's foreign and OCI's non-distributable layers with URLs live elsewhere and
/// are never pushed, as distribution treats them.
fn is_foreign(d: &Value) -> bool {
    let media_type = d.get("mediaType").and_then(Value::as_str).unwrap_or("");
    let has_urls = d
        .get("urls")
        .and_then(Value::as_array)
        .is_some_and(|u| !u.is_empty());
    has_urls && (media_type.contains("foreign") || media_type.contains("nondistributable"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_blocks_core::names::{BLOCKS_CONFIG, IMPORT_LAYER_TAR, OCI_CONFIG};

    const CONFIG: &str = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
    const BLOCK: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    fn manifest(extra: &str) -> String {
        let config = if extra.contains("\"blocks\"") {
            BLOCKS_CONFIG
        } else {
            OCI_CONFIG
        };
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}",
            "config":{{"mediaType":"{config}","digest":"{CONFIG}","size":2}},
            "layers":[]{extra}}}"#
        )
    }

    #[test]
    fn blocks_are_references() {
        let m = manifest(&format!(
            r#","blocks":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{BLOCK}","size":3}}]"#
        ));
        let c = check(m.as_bytes(), Some(OCI_MANIFEST)).expect("valid");
        let pointers: Vec<_> = c.blobs.iter().map(|r| r.pointer.as_str()).collect();
        assert_eq!(pointers, ["/config", "/blocks/0"]);
        assert_eq!(c.blobs[1].digest.as_str(), BLOCK);
    }

    #[test]
    fn wrong_documents_are_refused_with_the_reason() {
        let cases = [
            ("{", "not valid JSON"),
            (r#"{"schemaVersion":2}"#, r#""config" is a required property"#),
            (
                &manifest("").replace(
                    r#""layers":[]"#,
                    &format!(
                        r#""layers":[{{"mediaType":"{IMPORT_LAYER_TAR}","digest":"{BLOCK}","size":3}}]"#
                    ),
                ),
                "blocks.missing",
            ),
            (
                &manifest("").replace(OCI_CONFIG, BLOCKS_CONFIG),
                "blocks.missing at /config/mediaType",
            ),
            (
                &manifest(&format!(
                    r#","blocks":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{BLOCK}","size":3}}]"#
                ))
                .replace(BLOCKS_CONFIG, OCI_CONFIG),
                "blocks.config-media-type",
            ),
            (
                &manifest(r#","blocks":[{"mediaType":"x","digest":"md5:00","size":1}]"#),
                "blocks",
            ),
            (
                &manifest("").replace("\"schemaVersion\":2", "\"schemaVersion\":1"),
                "schemaVersion",
            ),
        ];
        for (doc, needle) in cases {
            let err = check(doc.as_bytes(), Some(OCI_MANIFEST)).expect_err(doc);
            assert!(err.contains(needle), "{doc}: {err}");
        }
        let err = check(br#"{"schemaVersion":2}"#, None).expect_err("no type");
        assert!(err.contains("no mediaType"), "{err}");
        let err = check(manifest("").as_bytes(), Some(OCI_INDEX)).expect_err("mismatch");
        assert!(err.contains("does not match the Content-Type"), "{err}");
        let err = check(
            br#"{"schemaVersion":2,"mediaType":"text/plain"}"#,
            Some("text/plain"),
        )
        .expect_err("unsupported");
        assert!(err.contains("unsupported manifest media type"), "{err}");
    }
}
