//! Validation of one manifest or index document: the JSON Schemas of
//! `spec/schemas` (embedded at build time) plus the semantic rules that a schema
//! cannot express (digest algorithms, duplicates, fallback ordering).

use std::sync::OnceLock;

use serde_json::Value;

use super::rules::{Report, Rule, Violation};
use crate::digest::Digest;
use crate::names::*;

/// The JSON Schemas of `spec/schemas`, as files, for tools that want them.
pub const SCHEMAS: &[(&str, &str)] = &[
    (
        "descriptor.schema.json",
        include_str!("../../../../spec/schemas/descriptor.schema.json"),
    ),
    (
        "blocks-manifest.schema.json",
        include_str!("../../../../spec/schemas/blocks-manifest.schema.json"),
    ),
    (
        "anchor-manifest.schema.json",
        include_str!("../../../../spec/schemas/anchor-manifest.schema.json"),
    ),
    (
        "fallback-index.schema.json",
        include_str!("../../../../spec/schemas/fallback-index.schema.json"),
    ),
    (
        "image-manifest.schema.json",
        include_str!("../../../../spec/schemas/image-manifest.schema.json"),
    ),
    (
        "image-index.schema.json",
        include_str!("../../../../spec/schemas/image-index.schema.json"),
    ),
    (
        "delta-artifact.schema.json",
        include_str!("../../../../spec/schemas/delta-artifact.schema.json"),
    ),
];

/// What kind of document a manifest or index is, as far as this extension cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DocumentKind {
    /// An image manifest with a `blocks` array.
    BlocksManifest,
    /// An image manifest without blocks (a plain image, or a legacy variant).
    ImageManifest,
    /// The GC anchor of a fallback index.
    AnchorManifest,
    /// A delta artifact (`spec/deltas.md`).
    DeltaArtifact,
    /// Any other artifact manifest.
    ArtifactManifest,
    /// An index with `io.oci-blocks.variant` entries.
    FallbackIndex,
    /// Any other image index.
    ImageIndex,
}

impl DocumentKind {
    /// Whether the document is an index.
    pub fn is_index(self) -> bool {
        matches!(self, DocumentKind::FallbackIndex | DocumentKind::ImageIndex)
    }

    /// A short human name.
    pub fn describe(self) -> &'static str {
        match self {
            DocumentKind::BlocksManifest => "blocks manifest",
            DocumentKind::ImageManifest => "image manifest",
            DocumentKind::AnchorManifest => "GC anchor manifest",
            DocumentKind::DeltaArtifact => "delta artifact",
            DocumentKind::ArtifactManifest => "artifact manifest",
            DocumentKind::FallbackIndex => "fallback index",
            DocumentKind::ImageIndex => "image index",
        }
    }
}

struct Schemas {
    blocks_manifest: jsonschema::Validator,
    anchor_manifest: jsonschema::Validator,
    fallback_index: jsonschema::Validator,
    image_manifest: jsonschema::Validator,
    image_index: jsonschema::Validator,
    delta_artifact: jsonschema::Validator,
}

struct Embedded;

impl jsonschema::Retrieve for Embedded {
    fn retrieve(
        &self,
        uri: &jsonschema::Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let name = uri.as_str().rsplit('/').next().unwrap_or_default();
        let (_, text) = SCHEMAS
            .iter()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| format!("no embedded schema {}", uri.as_str()))?;
        Ok(serde_json::from_str(text)?)
    }
}

fn schemas() -> &'static Schemas {
    static SCHEMAS_CELL: OnceLock<Schemas> = OnceLock::new();
    SCHEMAS_CELL.get_or_init(|| {
        let build = |name: &str| {
            let text = SCHEMAS
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, t)| *t)
                .unwrap_or_else(|| panic!("schema {name} is embedded"));
            let schema: Value = serde_json::from_str(text)
                .unwrap_or_else(|e| panic!("embedded schema {name} is JSON: {e}"));
            jsonschema::options()
                .with_draft(jsonschema::Draft::Draft202012)
                // `urls` are RFC 3986 URIs: formats are assertions here.
                .should_validate_formats(true)
                .with_retriever(Embedded)
                .build(&schema)
                .unwrap_or_else(|e| panic!("embedded schema {name} compiles: {e}"))
        };
        Schemas {
            blocks_manifest: build("blocks-manifest.schema.json"),
            anchor_manifest: build("anchor-manifest.schema.json"),
            fallback_index: build("fallback-index.schema.json"),
            image_manifest: build("image-manifest.schema.json"),
            image_index: build("image-index.schema.json"),
            delta_artifact: build("delta-artifact.schema.json"),
        }
    })
}

/// Classifies a parsed document, or says why it is neither manifest nor index.
pub fn classify(value: &Value) -> Result<DocumentKind, String> {
    let Some(obj) = value.as_object() else {
        return Err("not a JSON object".into());
    };
    let media_type = obj.get("mediaType").and_then(Value::as_str);
    let is_index =
        media_type == Some(OCI_INDEX) || (media_type.is_none() && obj.contains_key("manifests"));
    let is_manifest = media_type == Some(OCI_MANIFEST)
        || (media_type.is_none() && (obj.contains_key("layers") || obj.contains_key("config")));
    if is_index {
        let fallback = obj
            .get("manifests")
            .and_then(Value::as_array)
            .is_some_and(|ms| {
                ms.iter().any(|m| {
                    m.get("annotations")
                        .and_then(|a| a.get(ANNOTATION_VARIANT))
                        .is_some()
                })
            });
        return Ok(if fallback {
            DocumentKind::FallbackIndex
        } else {
            DocumentKind::ImageIndex
        });
    }
    if is_manifest {
        let artifact = obj.get("artifactType").and_then(Value::as_str);
        let config_type = obj
            .get("config")
            .and_then(|c| c.get("mediaType"))
            .and_then(Value::as_str);
        return Ok(if artifact == Some(ANCHOR_ARTIFACT_TYPE) {
            DocumentKind::AnchorManifest
        } else if artifact == Some(DELTA_ARTIFACT_TYPE) {
            DocumentKind::DeltaArtifact
        } else if obj.contains_key("blocks") || config_type == Some(BLOCKS_CONFIG) {
            DocumentKind::BlocksManifest
        } else if config_type == Some(OCI_CONFIG) {
            DocumentKind::ImageManifest
        } else {
            DocumentKind::ArtifactManifest
        });
    }
    Err(match media_type {
        Some(mt) => format!("mediaType {mt:?} is neither an OCI image manifest nor an index"),
        None => "no mediaType, and neither `layers` nor `manifests`".into(),
    })
}

/// The `io.oci-blocks.variant` annotation of an index entry.
pub fn variant_of(entry: &Value) -> Option<&str> {
    entry
        .get("annotations")
        .and_then(|a| a.get(ANNOTATION_VARIANT))
        .and_then(Value::as_str)
}

/// Validates a manifest or index document against the schemas and the semantic
/// rules. `subject` names it in violations (a file name, `manifest sha256:…`).
pub fn validate_document(bytes: &[u8], subject: &str) -> (Option<DocumentKind>, Report) {
    let mut report = Report::default();
    let value: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => {
            report.push(Violation::new(
                Rule::JsonMalformed,
                subject,
                format!("not valid JSON: {e}"),
            ));
            return (None, report);
        }
    };
    let kind = match classify(&value) {
        Ok(k) => k,
        Err(reason) => {
            let rule = if value.is_object() {
                Rule::Schema
            } else {
                Rule::JsonMalformed
            };
            let mut v = Violation::new(rule, subject, reason);
            if rule == Rule::Schema {
                v = v.at_pointer("/mediaType");
            }
            report.push(v);
            return (None, report);
        }
    };
    let schemas = schemas();
    let validator = match kind {
        DocumentKind::BlocksManifest => &schemas.blocks_manifest,
        DocumentKind::ImageManifest | DocumentKind::ArtifactManifest => &schemas.image_manifest,
        DocumentKind::AnchorManifest => &schemas.anchor_manifest,
        DocumentKind::DeltaArtifact => &schemas.delta_artifact,
        DocumentKind::FallbackIndex => &schemas.fallback_index,
        DocumentKind::ImageIndex => &schemas.image_index,
    };
    for err in validator.iter_errors(&value) {
        report.push(
            Violation::new(Rule::Schema, subject, err.to_string())
                .at_pointer(err.instance_path().as_str()),
        );
    }
    check_digests(&value, subject, &mut report);
    check_data(&value, subject, &mut report);
    if value.get("mediaType").is_none()
        && matches!(
            kind,
            DocumentKind::ImageManifest | DocumentKind::ArtifactManifest | DocumentKind::ImageIndex
        )
    {
        report.push(
            Violation::new(
                Rule::ManifestMediaTypeMissing,
                subject,
                "no mediaType: image-spec says it SHOULD be set (some tools, such as umoci 0.4.7, omit it)",
            )
            .at_pointer(""),
        );
    }
    if kind.is_index() {
        if kind == DocumentKind::FallbackIndex {
            check_fallback_index(&value, subject, &mut report);
        }
    } else {
        check_manifest(&value, kind, subject, &mut report);
        check_blocks(&value, subject, &mut report);
        if kind == DocumentKind::DeltaArtifact {
            check_delta(&value, subject, &mut report);
        }
    }
    (Some(kind), report)
}

/// The rules of a delta artifact the schema cannot state: a patch never
/// rebuilds its own base, rebuilds a block no other patch of the artifact
/// does, and is smaller than that block (`spec/deltas.md`).
fn check_delta(value: &Value, subject: &str, report: &mut Report) {
    let mut targets = std::collections::HashSet::new();
    for (i, layer) in value
        .get("layers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let annotation = |k: &str| layer.get("annotations")?.get(k)?.as_str();
        let (Some(base), Some(target)) = (
            annotation(ANNOTATION_DELTA_BASE),
            annotation(ANNOTATION_DELTA_TARGET),
        ) else {
            continue;
        };
        let pointer = format!("/layers/{i}/annotations");
        if base == target {
            report.push(
                Violation::new(
                    Rule::DeltaSelfPatch,
                    subject,
                    format!("the patch's base and target are both {target}"),
                )
                .at_pointer(&pointer),
            );
        }
        if !targets.insert(target) {
            report.push(
                Violation::new(
                    Rule::DeltaTargetDuplicate,
                    subject,
                    format!("another patch of this artifact already rebuilds {target}"),
                )
                .at_pointer(&pointer),
            );
        }
        let target_size =
            annotation(ANNOTATION_DELTA_TARGET_SIZE).and_then(|s| s.parse::<u64>().ok());
        let size = layer.get("size").and_then(Value::as_u64);
        if let (Some(t), Some(s)) = (target_size, size)
            && s >= t
        {
            report.push(
                Violation::new(
                    Rule::DeltaPatchLarger,
                    subject,
                    format!("the patch is {s} bytes, the block it rebuilds {t}: fetching the block costs less"),
                )
                .at_pointer(format!("/layers/{i}/size")),
            );
        }
    }
}

fn descriptors(value: &Value) -> Vec<(String, &Value)> {
    let mut out = Vec::new();
    for single in ["config", "subject"] {
        if let Some(d) = value.get(single) {
            out.push((format!("/{single}"), d));
        }
    }
    for list in ["layers", "blocks", "manifests"] {
        if let Some(items) = value.get(list).and_then(Value::as_array) {
            for (i, d) in items.iter().enumerate() {
                out.push((format!("/{list}/{i}"), d));
            }
        }
    }
    out
}

/// `digest.invalid` for a registered algorithm with a wrong encoding, and for
/// any digest of a block (this extension accepts sha256 and sha512 only);
/// `digest.unregistered`, a warning, for another algorithm elsewhere, which
/// image-spec says implementations SHOULD let pass.
fn check_digests(value: &Value, subject: &str, report: &mut Report) {
    for (pointer, d) in descriptors(value) {
        let Some(text) = d.get("digest").and_then(Value::as_str) else {
            continue;
        };
        // Digests that break the general grammar are the schema's to report.
        if !fits_digest_grammar(text) {
            continue;
        }
        let Err(crate::Error::InvalidDigest { reason, .. }) = Digest::parse(text) else {
            continue;
        };
        let algorithm = text.split(':').next().unwrap_or_default();
        let registered = matches!(algorithm, "sha256" | "sha512");
        let violation = if registered || pointer.starts_with("/blocks/") {
            Violation::new(Rule::DigestInvalid, subject, format!("{text:?}: {reason}"))
        } else {
            Violation::new(
                Rule::DigestUnregistered,
                subject,
                format!(
                    "{text:?}: algorithm {algorithm:?} is not one image-spec registers (sha256, sha512); it is allowed, but few tools can verify it"
                ),
            )
        };
        report.push(violation.at_pointer(format!("{pointer}/digest")));
    }
}

/// A descriptor's `data` (strict base 64, which the schema checks) decodes
/// to the content its size and digest name.
fn check_data(value: &Value, subject: &str, report: &mut Report) {
    use base64::Engine;
    for (pointer, d) in descriptors(value) {
        let Some(data) = d.get("data").and_then(Value::as_str) else {
            continue;
        };
        let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(data) else {
            continue;
        };
        let size = d.get("size").and_then(Value::as_u64);
        let digest = d
            .get("digest")
            .and_then(Value::as_str)
            .and_then(|t| Digest::parse(t).ok());
        let mismatch = if size.is_some_and(|s| s != bytes.len() as u64) {
            Some(format!(
                "data holds {} bytes, the descriptor's size is {}",
                bytes.len(),
                size.unwrap_or_default()
            ))
        } else {
            digest.and_then(|expected| {
                let mut h = crate::digest::Hasher::new(expected.algorithm());
                h.update(&bytes);
                let found = h.finish();
                (found != expected)
                    .then(|| format!("data hashes to {found}, the descriptor says {expected}"))
            })
        };
        if let Some(reason) = mismatch {
            report.push(
                Violation::new(Rule::DescriptorDataMismatch, subject, reason)
                    .at_pointer(format!("{pointer}/data")),
            );
        }
    }
}

/// What image-spec asks of a manifest beyond its schema: an empty config
/// needs an `artifactType`; layers SHOULD not be empty; a layer with an
/// import-layer media type needs `blocks`.
fn check_manifest(value: &Value, kind: DocumentKind, subject: &str, report: &mut Report) {
    let config_type = value
        .get("config")
        .and_then(|c| c.get("mediaType"))
        .and_then(Value::as_str);
    if config_type == Some(OCI_EMPTY) && value.get("artifactType").is_none() {
        report.push(
            Violation::new(
                Rule::ManifestArtifactTypeMissing,
                subject,
                format!("the config is the empty descriptor ({OCI_EMPTY}), so artifactType must say what the manifest is"),
            )
            .at_pointer("/config/mediaType"),
        );
    }
    if let Some(layers) = value.get("layers").and_then(Value::as_array) {
        if layers.is_empty() {
            report.push(
                Violation::new(
                    Rule::ManifestLayersEmpty,
                    subject,
                    "layers is empty: image-spec says it SHOULD have at least one entry, for portability",
                )
                .at_pointer("/layers"),
            );
        }
        let blocks = value.get("blocks").and_then(Value::as_array);
        let no_blocks = value.get("blocks").is_none();
        if config_type == Some(BLOCKS_CONFIG) && no_blocks {
            report.push(
                Violation::new(
                    Rule::BlocksMissing,
                    subject,
                    format!("the config has the blocks config media type {BLOCKS_CONFIG}, but the manifest has no blocks field: a copy tool that re-serialized it dropped the field (skopeo copy --preserve-digests keeps it)"),
                )
                .at_pointer("/config/mediaType"),
            );
        } else if blocks.is_some_and(|b| !b.is_empty()) && config_type == Some(OCI_CONFIG) {
            // Other config types are the schema's to refuse.
            report.push(
                Violation::new(
                    Rule::BlocksConfigMediaType,
                    subject,
                    format!("a manifest with blocks must give its config the media type {BLOCKS_CONFIG}, not {OCI_CONFIG}: clients that cannot resolve imports (podman, buildah, CRI-O) would otherwise run the stub layers with the imported files missing"),
                )
                .at_pointer("/config/mediaType"),
            );
        }
        // The anchor's layers are blocks, which its schema restricts.
        if no_blocks && config_type != Some(BLOCKS_CONFIG) && kind != DocumentKind::AnchorManifest {
            for (i, l) in layers.iter().enumerate() {
                let media_type = l
                    .get("mediaType")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if is_import_layer(media_type) {
                    report.push(
                        Violation::new(
                            Rule::BlocksMissing,
                            subject,
                            format!("layer {i} has the import-layer media type {media_type}, but the manifest has no blocks field: its imports cannot be resolved (a copy tool that re-serializes manifests drops the field; skopeo copy --preserve-digests keeps it)"),
                        )
                        .at_pointer(format!("/layers/{i}/mediaType")),
                    );
                }
            }
        }
    }
}

/// The image-spec's general digest grammar:
/// `algorithm ":" encoded`, `algorithm = component *(separator component)`,
/// `component = 1*[a-z0-9]`, `separator = [+._-]`, `encoded = 1*[a-zA-Z0-9=_-]`.
fn fits_digest_grammar(text: &str) -> bool {
    let Some((algorithm, encoded)) = text.split_once(':') else {
        return false;
    };
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    algorithm.split(['+', '.', '_', '-']).all(component_ok)
        && !encoded.is_empty()
        && encoded
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'=' | b'_' | b'-'))
}

fn digests_of<'a>(value: &'a Value, list: &str) -> Vec<(usize, &'a str)> {
    value
        .get(list)
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .enumerate()
                .filter_map(|(i, d)| Some((i, d.get("digest")?.as_str()?)))
                .collect()
        })
        .unwrap_or_default()
}

fn check_blocks(value: &Value, subject: &str, report: &mut Report) {
    let blocks = digests_of(value, "blocks");
    // First position of each digest: one pass, however many blocks.
    let mut first_block: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let mut layers: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (i, d) in digests_of(value, "layers") {
        layers.entry(d).or_insert(i);
    }
    for &(j, digest) in &blocks {
        let first = *first_block.entry(digest).or_insert(j);
        if first != j {
            let i = first;
            report.push(
                Violation::new(
                    Rule::BlocksDuplicate,
                    subject,
                    format!("block {digest} is listed twice (also /blocks/{i})"),
                )
                .at_pointer(format!("/blocks/{j}")),
            );
        }
        if let Some(&i) = layers.get(digest) {
            report.push(
                Violation::new(
                    Rule::BlocksAlsoLayer,
                    subject,
                    format!(
                        "block {digest} is also /layers/{i}; a blob is a layer or a block, not both"
                    ),
                )
                .at_pointer(format!("/blocks/{j}")),
            );
        }
    }
}

fn platform_text(entry: &Value) -> String {
    entry
        .get("platform")
        .map_or_else(|| "(no platform)".into(), crate::manifest::platform_text)
}

/// Whether the blocks manifest `blocks_doc` of a fallback index's entry
/// `entries[i]` names, in its `io.oci-blocks.legacy` annotation, the legacy
/// manifest the index offers for its platform (`spec/fallback.md`, "One
/// view"). Returns that legacy manifest's digest, and the violation when the
/// binding does not hold; `None` when the index offers no legacy manifest for
/// the platform (`fallback.legacy-missing` covers that).
pub fn check_binding(
    entries: &[Value],
    i: usize,
    blocks_doc: &Value,
    subject: &str,
) -> Option<(Digest, Option<Violation>)> {
    let legacy = crate::platform::legacy_of(entries, i)?;
    let legacy_digest = entries[legacy]
        .get("digest")
        .and_then(Value::as_str)
        .and_then(|d| Digest::parse(d).ok())?;
    let named = blocks_doc
        .get("annotations")
        .and_then(|a| a.get(ANNOTATION_LEGACY))
        .and_then(Value::as_str);
    let v = binding_violation(named, &legacy_digest, subject)
        .map(|v| v.at_pointer(format!("/manifests/{legacy}/digest")));
    Some((legacy_digest, v))
}

/// The `fallback.legacy-unbound` violation when a blocks manifest whose
/// `io.oci-blocks.legacy` annotation is `named` does not name `legacy`, the
/// legacy manifest its index offers for its platform.
pub fn binding_violation(named: Option<&str>, legacy: &Digest, subject: &str) -> Option<Violation> {
    let reason = match named {
        Some(n) if n == legacy.as_str() => return None,
        None => format!(
            "the blocks manifest has no {ANNOTATION_LEGACY} annotation naming its legacy manifest {legacy}"
        ),
        Some(other) => format!(
            "the blocks manifest names legacy manifest {other}, but the index offers {legacy} for its platform (a copy that rewrote the legacy manifest, recompressing its layers, breaks the binding; copy with --preserve-digests)"
        ),
    };
    Some(Violation::new(Rule::FallbackLegacyUnbound, subject, reason))
}

fn check_fallback_index(value: &Value, subject: &str, report: &mut Report) {
    let Some(entries) = value.get("manifests").and_then(Value::as_array) else {
        return;
    };
    let pointer = |i: usize| format!("/manifests/{i}");
    let mut anchors = Vec::new();
    let mut has_blocks = false;
    // The distinct platforms of the plain entries so far: an index has few,
    // however many entries it has.
    let mut plain_platforms: Vec<Option<&Value>> = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        match variant_of(entry) {
            None => {
                if !plain_platforms.contains(&entry.get("platform")) {
                    plain_platforms.push(entry.get("platform"));
                }
            }
            Some(VARIANT_BLOCKS) => {
                has_blocks = true;
                let legacy_before = plain_platforms.contains(&entry.get("platform"));
                if !legacy_before {
                    report.push(
                        Violation::new(
                            Rule::FallbackLegacyMissing,
                            subject,
                            format!(
                                "the blocks manifest for {} has no legacy manifest of the same platform before it",
                                platform_text(entry)
                            ),
                        )
                        .at_pointer(pointer(i)),
                    );
                }
            }
            Some(VARIANT_ANCHOR) => {
                anchors.push(i);
                // A missing platform is the schema's to report.
                let unknown = entry.get("platform").is_none_or(|p| {
                    p.get("os").and_then(Value::as_str) == Some("unknown")
                        && p.get("architecture").and_then(Value::as_str) == Some("unknown")
                });
                if !unknown {
                    report.push(
                        Violation::new(
                            Rule::FallbackAnchorPlatform,
                            subject,
                            format!(
                                "the GC anchor has platform {}; it must be unknown/unknown so that no client picks it",
                                platform_text(entry)
                            ),
                        )
                        .at_pointer(format!("{}/platform", pointer(i))),
                    );
                }
            }
            Some(other) => report.push(
                Violation::new(
                    Rule::FallbackVariantUnknown,
                    subject,
                    format!("unknown {ANNOTATION_VARIANT} value {other:?} (expected {VARIANT_BLOCKS:?} or {VARIANT_ANCHOR:?})"),
                )
                .at_pointer(format!("{}/annotations", pointer(i))),
            ),
        }
    }
    if has_blocks && anchors.is_empty() {
        report.push(
            Violation::new(
                Rule::FallbackAnchorMissing,
                subject,
                "the index has a blocks manifest but no GC anchor: a registry unaware of blocks would garbage-collect them",
            )
            .at_pointer("/manifests"),
        );
    }
    for &i in anchors.iter().skip(1) {
        report.push(
            Violation::new(
                Rule::FallbackAnchorDuplicate,
                subject,
                format!(
                    "a second GC anchor (the first is /manifests/{})",
                    anchors[0]
                ),
            )
            .at_pointer(pointer(i)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 28,000 blocks, the last a duplicate of the first and one also a layer:
    /// both found, each with the place of its twin.
    #[test]
    fn duplicates_are_found_among_many_blocks() {
        let digest = |i: usize| format!("sha256:{i:064x}");
        let mut blocks: Vec<Value> = (0..28_000)
            .map(
                |i| serde_json::json!({"mediaType": OCI_LAYER_TAR, "digest": digest(i), "size": 1}),
            )
            .collect();
        blocks
            .push(serde_json::json!({"mediaType": OCI_LAYER_TAR, "digest": digest(0), "size": 1}));
        let doc = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": BLOCKS_CONFIG, "digest": digest(99_999), "size": 2},
            "layers": [{"mediaType": OCI_LAYER_TAR, "digest": digest(12_345), "size": 1}],
            "blocks": blocks,
        });
        let (_, report) = validate_document(doc.to_string().as_bytes(), "big");
        let found: Vec<(Rule, Option<String>, String)> = report
            .errors()
            .map(|v| (v.rule, v.pointer.clone(), v.message.clone()))
            .collect();
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].0, Rule::BlocksAlsoLayer);
        assert_eq!(found[0].1.as_deref(), Some("/blocks/12345"));
        assert_eq!(found[1].0, Rule::BlocksDuplicate);
        assert_eq!(found[1].1.as_deref(), Some("/blocks/28000"));
        assert!(found[1].2.contains("also /blocks/0"), "{}", found[1].2);
    }
}
