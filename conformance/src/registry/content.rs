//! What the tests push: blobs, tar layers and blocks, configs, manifests and
//! indexes, all made from the run id so that every run's digests are new.
//!
//! Manifests are written with [`Json`], a small builder that keeps members in
//! the order given and can indent by any string: the blocks manifest is written
//! with unusual but valid formatting, which a registry must keep byte for byte.

use anyhow::{Context, Result};
use sha2::{Digest as _, Sha256};

pub use crate::names::{
    ANCHOR_TYPE, BLOCKS_CONFIG, IMPORT_LAYER_TAR, LAYER_TAR, LEGACY, OCI_CONFIG, OCI_EMPTY,
    OCI_INDEX, OCI_MANIFEST, OCTET_STREAM, VARIANT,
};

/// `sha256:<hex>` of some bytes.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A JSON document whose members keep the order they were given in.
#[derive(Clone, Debug)]
pub enum Json {
    /// A string.
    Str(String),
    /// A non-negative integer.
    Num(u64),
    /// An object, members in order.
    Obj(Vec<(String, Json)>),
    /// An array.
    Arr(Vec<Json>),
}

/// A JSON string.
pub fn s(text: impl Into<String>) -> Json {
    Json::Str(text.into())
}

/// A JSON object from `(key, value)` pairs, in order.
pub fn obj<const N: usize>(members: [(&str, Json); N]) -> Json {
    Json::Obj(members.map(|(k, v)| (k.to_string(), v)).into())
}

impl Json {
    /// Compact form, no whitespace.
    pub fn compact(&self) -> String {
        let mut out = String::new();
        self.write(&mut out, None, 0);
        out
    }

    /// Pretty form, each level indented by `indent`.
    pub fn pretty(&self, indent: &str) -> String {
        let mut out = String::new();
        self.write(&mut out, Some(indent), 0);
        out.push('\n');
        out
    }

    fn write(&self, out: &mut String, indent: Option<&str>, level: usize) {
        let newline = |out: &mut String, level: usize| {
            if let Some(unit) = indent {
                out.push('\n');
                out.push_str(&unit.repeat(level));
            }
        };
        match self {
            Json::Str(text) => out.push_str(&serde_json::Value::String(text.clone()).to_string()),
            Json::Num(n) => out.push_str(&n.to_string()),
            Json::Obj(members) if members.is_empty() => out.push_str("{}"),
            Json::Arr(items) if items.is_empty() => out.push_str("[]"),
            Json::Obj(members) => {
                out.push('{');
                for (i, (key, value)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    newline(out, level + 1);
                    out.push_str(&serde_json::Value::String(key.clone()).to_string());
                    out.push_str(if indent.is_some() { ": " } else { ":" });
                    value.write(out, indent, level + 1);
                }
                newline(out, level);
                out.push('}');
            }
            Json::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    newline(out, level + 1);
                    item.write(out, indent, level + 1);
                }
                newline(out, level);
                out.push(']');
            }
        }
    }
}

/// Some content addressed by digest: a blob, a manifest or an index.
#[derive(Clone, Debug)]
pub struct Content {
    /// Its media type (the `Content-Type` a manifest is pushed with).
    pub media_type: String,
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// `sha256:` of the bytes.
    pub digest: String,
}

impl Content {
    /// Content of a media type.
    pub fn new(media_type: &str, bytes: Vec<u8>) -> Content {
        Content {
            media_type: media_type.to_string(),
            digest: sha256(&bytes),
            bytes,
        }
    }

    /// Its size in bytes.
    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Its descriptor: `mediaType`, `digest`, `size`.
    pub fn descriptor(&self) -> Json {
        obj([
            ("mediaType", s(&self.media_type)),
            ("digest", s(&self.digest)),
            ("size", Json::Num(self.size())),
        ])
    }

    /// Its descriptor with further members appended.
    pub fn descriptor_with(&self, extra: Vec<(&str, Json)>) -> Json {
        let mut members = vec![
            ("mediaType".to_string(), s(&self.media_type)),
            ("digest".to_string(), s(&self.digest)),
            ("size".to_string(), Json::Num(self.size())),
        ];
        members.extend(extra.into_iter().map(|(k, v)| (k.to_string(), v)));
        Json::Obj(members)
    }
}

/// One entry of a tar archive the tests build.
enum Entry<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
}

/// An uncompressed tar archive: ustar headers, mode 0644/0755, uid/gid 0,
/// mtime 1, in the order given.
fn tar(entries: &[Entry<'_>]) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_ustar();
        let (path, data, kind, mode): (&str, &[u8], _, u32) = match entry {
            Entry::Dir(path) => (path, &[], tar::EntryType::Directory, 0o755),
            Entry::File(path, data) => (path, data, tar::EntryType::Regular, 0o644),
        };
        header
            .set_path(path)
            .with_context(|| format!("tar path {path:?}"))?;
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1);
        header.set_size(data.len() as u64);
        header.set_cksum();
        builder
            .append(&header, data)
            .with_context(|| format!("tar entry {path:?}"))?;
    }
    builder.into_inner().context("finishing a tar archive")
}

/// A plain image: one layer, its config and its manifest.
#[derive(Clone, Debug)]
pub struct Image {
    /// The image config.
    pub config: Content,
    /// The one layer.
    pub layer: Content,
    /// The manifest.
    pub manifest: Content,
}

impl Image {
    /// The blobs to push before the manifest.
    pub fn blobs(&self) -> Vec<&Content> {
        vec![&self.config, &self.layer]
    }
}

/// An artifact manifest that refers to a subject.
#[derive(Clone, Debug)]
pub struct Referrer {
    /// Its one layer.
    pub layer: Content,
    /// The manifest, with `artifactType` and `subject`.
    pub manifest: Content,
    /// Its artifact type.
    pub artifact_type: String,
}

/// A blocks image and everything of its fallback index.
#[derive(Clone, Debug)]
pub struct BlocksImage {
    /// Two tar blocks, `x.jar` and `y.jar` at their roots.
    pub blocks: Vec<Content>,
    /// A plain layer shared by both manifests.
    pub base: Content,
    /// The stub layer: `app/lib/.import.x.jar` and `app/lib/.import.y.jar`.
    pub stub: Content,
    /// The stub layer with the imports resolved, for the legacy manifest.
    pub materialized: Content,
    /// The blocks manifest's config.
    pub config: Content,
    /// The legacy manifest's config.
    pub legacy_config: Content,
    /// The empty JSON blob `{}`, the anchor's config.
    pub empty: Content,
    /// The blocks manifest, in unusual formatting.
    pub manifest: Content,
    /// The legacy manifest.
    pub legacy: Content,
    /// The GC anchor.
    pub anchor: Content,
    /// The fallback index: legacy, anchor, blocks.
    pub index: Content,
    /// The blocks manifest without its `blocks` field, as a copy tool that
    /// re-serializes it leaves it.
    pub stripped: Content,
    /// A plain manifest of the same platform that the blocks manifest does not
    /// name as its legacy manifest.
    pub other_legacy: Content,
    /// A fallback index offering `other_legacy`: its blocks manifest is unbound.
    pub unbound_index: Content,
}

/// A fallback index for linux/amd64: `legacy`, the anchor, the blocks manifest.
fn fallback_index(legacy: &Content, anchor: &Content, manifest: &Content) -> Content {
    let platform = || obj([("architecture", s("amd64")), ("os", s("linux"))]);
    let index_doc = obj([
        ("schemaVersion", Json::Num(2)),
        ("mediaType", s(OCI_INDEX)),
        (
            "manifests",
            Json::Arr(vec![
                legacy.descriptor_with(vec![("platform", platform())]),
                anchor.descriptor_with(vec![
                    ("artifactType", s(ANCHOR_TYPE)),
                    (
                        "platform",
                        obj([("architecture", s("unknown")), ("os", s("unknown"))]),
                    ),
                    ("annotations", obj([(VARIANT, s("anchor"))])),
                ]),
                manifest.descriptor_with(vec![
                    ("platform", platform()),
                    ("annotations", obj([(VARIANT, s("blocks"))])),
                ]),
            ]),
        ),
    ]);
    Content::new(OCI_INDEX, index_doc.pretty("  ").into_bytes())
}

impl BlocksImage {
    /// Blobs the blocks manifest references: blocks, layers and config.
    pub fn manifest_blobs(&self) -> Vec<&Content> {
        let mut all: Vec<&Content> = self.blocks.iter().collect();
        all.extend([&self.base, &self.stub, &self.config]);
        all
    }

    /// Blobs the whole fallback index references.
    pub fn index_blobs(&self) -> Vec<&Content> {
        let mut all = self.manifest_blobs();
        all.extend([&self.materialized, &self.legacy_config, &self.empty]);
        all
    }
}

/// Makes the run's content.
#[derive(Clone, Debug)]
pub struct Fixtures {
    run_id: String,
}

impl Fixtures {
    /// Content for the run `run_id`.
    pub fn new(run_id: &str) -> Fixtures {
        Fixtures {
            run_id: run_id.to_string(),
        }
    }

    /// `len` bytes (at least a header line) that name the run and `label`.
    pub fn data(&self, label: &str, len: usize) -> Vec<u8> {
        let mut out = format!(
            "oci-blocks registry conformance, run {}, {label}\n",
            self.run_id
        )
        .into_bytes();
        let mut block = Sha256::digest(&out);
        while out.len() < len {
            out.extend_from_slice(hex::encode(block).as_bytes());
            out.push(b'\n');
            block = Sha256::digest(block);
        }
        if len > 0 && out.len() > len {
            out.truncate(len);
        }
        out
    }

    /// A blob of `len` bytes.
    pub fn blob(&self, label: &str, len: usize) -> Content {
        Content::new(OCTET_STREAM, self.data(label, len))
    }

    /// A valid image config for amd64/linux whose `rootfs.diff_ids` are the
    /// digests of `layers` (all uncompressed).
    pub fn config(&self, label: &str, layers: &[&Content]) -> Content {
        let diff_ids = layers.iter().map(|l| s(&l.digest)).collect();
        let history = layers
            .iter()
            .map(|l| {
                obj([
                    ("created", s("1970-01-01T00:00:01Z")),
                    ("created_by", s(format!("conformance layer {}", l.digest))),
                ])
            })
            .collect();
        let doc = obj([
            ("created", s("1970-01-01T00:00:01Z")),
            ("architecture", s("amd64")),
            ("os", s("linux")),
            (
                "config",
                obj([
                    (
                        "Env",
                        Json::Arr(vec![s(format!("CONFORMANCE_RUN={}", self.run_id))]),
                    ),
                    (
                        "Labels",
                        obj([("io.oci-blocks.conformance.label", s(label))]),
                    ),
                ]),
            ),
            (
                "rootfs",
                obj([("type", s("layers")), ("diff_ids", Json::Arr(diff_ids))]),
            ),
            ("history", Json::Arr(history)),
        ]);
        Content::new(OCI_CONFIG, doc.compact().into_bytes())
    }

    /// A plain image manifest, compact, with an annotation naming `label`.
    pub fn manifest(&self, label: &str, config: &Content, layers: &[&Content]) -> Content {
        let doc = obj([
            ("schemaVersion", Json::Num(2)),
            ("mediaType", s(OCI_MANIFEST)),
            ("config", config.descriptor()),
            (
                "layers",
                Json::Arr(layers.iter().map(|l| l.descriptor()).collect()),
            ),
            (
                "annotations",
                obj([(
                    "org.opencontainers.image.description",
                    s(format!("conformance run {} {label}", self.run_id)),
                )]),
            ),
        ]);
        Content::new(OCI_MANIFEST, doc.compact().into_bytes())
    }

    /// A plain image with one small layer.
    pub fn image(&self, label: &str) -> Result<Image> {
        let text = self.data(&format!("{label} layer file"), 300);
        let path = format!("conformance/{label}.txt");
        let layer = Content::new(
            LAYER_TAR,
            tar(&[Entry::Dir("conformance/"), Entry::File(&path, &text)])?,
        );
        let config = self.config(label, &[&layer]);
        let manifest = self.manifest(label, &config, &[&layer]);
        Ok(Image {
            config,
            layer,
            manifest,
        })
    }

    /// An artifact manifest of `artifact_type` whose subject is `subject`,
    /// with the empty config and one layer.
    pub fn referrer(&self, label: &str, artifact_type: &str, subject: &Content) -> Referrer {
        let layer = Content::new("text/plain", self.data(label, 200));
        let doc = obj([
            ("schemaVersion", Json::Num(2)),
            ("mediaType", s(OCI_MANIFEST)),
            ("artifactType", s(artifact_type)),
            ("config", self.empty().descriptor()),
            ("layers", Json::Arr(vec![layer.descriptor()])),
            ("subject", subject.descriptor()),
            (
                "annotations",
                obj([(
                    "org.opencontainers.image.description",
                    s(format!("conformance run {} {label}", self.run_id)),
                )]),
            ),
        ]);
        Referrer {
            layer,
            manifest: Content::new(OCI_MANIFEST, doc.compact().into_bytes()),
            artifact_type: artifact_type.to_string(),
        }
    }

    /// The empty JSON blob `{}`.
    pub fn empty(&self) -> Content {
        Content::new(OCI_EMPTY, b"{}".to_vec())
    }

    /// A blocks image with two fresh blocks, and its fallback index.
    pub fn blocks_image(&self, label: &str) -> Result<BlocksImage> {
        let names = ["x.jar", "y.jar"];
        let jars: Vec<Vec<u8>> = names
            .iter()
            .map(|n| self.data(&format!("{label} block {n}"), 1500))
            .collect();
        let mut blocks = Vec::new();
        for (name, jar) in names.iter().zip(&jars) {
            blocks.push(Content::new(LAYER_TAR, tar(&[Entry::File(name, jar)])?));
        }
        let marker = self.data(&format!("{label} base layer"), 120);
        let base = Content::new(
            LAYER_TAR,
            tar(&[
                Entry::Dir("etc/"),
                Entry::File("etc/conformance-run", &marker),
            ])?,
        );
        let imports: Vec<(String, Vec<u8>)> = names
            .iter()
            .zip(&blocks)
            .map(|(name, block)| {
                (
                    format!("app/lib/.import.{name}"),
                    format!("/{name} from {}\n", block.digest).into_bytes(),
                )
            })
            .collect();
        let mut stub_entries = vec![Entry::Dir("app/"), Entry::Dir("app/lib/")];
        stub_entries.extend(imports.iter().map(|(p, c)| Entry::File(p, c)));
        let stub = Content::new(IMPORT_LAYER_TAR, tar(&stub_entries)?);
        let paths: Vec<String> = names.iter().map(|n| format!("app/lib/{n}")).collect();
        let mut legacy_entries = vec![Entry::Dir("app/"), Entry::Dir("app/lib/")];
        legacy_entries.extend(paths.iter().zip(&jars).map(|(p, j)| Entry::File(p, j)));
        let materialized = Content::new(LAYER_TAR, tar(&legacy_entries)?);

        let mut config = self.config(&format!("{label} blocks"), &[&base, &stub]);
        config.media_type = BLOCKS_CONFIG.to_string();
        let legacy_config = self.config(&format!("{label} blocks"), &[&base, &materialized]);
        let legacy = self.manifest(
            &format!("{label} legacy"),
            &legacy_config,
            &[&base, &materialized],
        );
        let manifest =
            self.blocks_manifest(label, &config, &[&base, &stub], Some(&blocks), &legacy);
        let stripped = self.blocks_manifest(label, &config, &[&base, &stub], None, &legacy);
        // Another plain image of the same platform, for an index that offers
        // a legacy manifest the blocks manifest does not name.
        let other_legacy = self.manifest(
            &format!("{label} another legacy"),
            &legacy_config,
            &[&base, &materialized],
        );
        let empty = self.empty();
        let anchor_doc = obj([
            ("schemaVersion", Json::Num(2)),
            ("mediaType", s(OCI_MANIFEST)),
            ("artifactType", s(ANCHOR_TYPE)),
            ("config", empty.descriptor()),
            (
                "layers",
                Json::Arr(blocks.iter().map(Content::descriptor).collect()),
            ),
        ]);
        let anchor = Content::new(OCI_MANIFEST, anchor_doc.pretty("  ").into_bytes());
        let index = fallback_index(&legacy, &anchor, &manifest);
        let unbound_index = fallback_index(&other_legacy, &anchor, &manifest);
        Ok(BlocksImage {
            blocks,
            base,
            stub,
            materialized,
            config,
            legacy_config,
            empty,
            manifest,
            legacy,
            anchor,
            index,
            stripped,
            other_legacy,
            unbound_index,
        })
    }

    /// A blocks manifest in unusual but valid formatting: 3-space indentation,
    /// members out of the usual order, an unknown top-level member and
    /// annotations.
    fn blocks_manifest(
        &self,
        label: &str,
        config: &Content,
        layers: &[&Content],
        blocks: Option<&[Content]>,
        legacy: &Content,
    ) -> Content {
        let descriptor = |c: &Content| {
            obj([
                ("size", Json::Num(c.size())),
                ("digest", s(&c.digest)),
                ("mediaType", s(&c.media_type)),
            ])
        };
        let block_list = blocks
            .unwrap_or_default()
            .iter()
            .zip(["x.jar", "y.jar"])
            .map(|(b, name)| {
                obj([
                    ("digest", s(&b.digest)),
                    ("mediaType", s(&b.media_type)),
                    ("size", Json::Num(b.size())),
                    (
                        "annotations",
                        obj([("org.opencontainers.image.title", s(name))]),
                    ),
                ])
            })
            .collect();
        let mut doc = obj([
            ("mediaType", s(OCI_MANIFEST)),
            (
                "x-conformance",
                obj([("note", s("kept byte for byte")), ("run", s(&self.run_id))]),
            ),
            ("schemaVersion", Json::Num(2)),
            (
                "layers",
                Json::Arr(layers.iter().map(|l| descriptor(l)).collect()),
            ),
            ("config", descriptor(config)),
            (
                "annotations",
                obj([
                    (
                        "org.opencontainers.image.description",
                        s(format!(
                            "conformance run {} {label} \u{2014} blocks",
                            self.run_id
                        )),
                    ),
                    ("io.oci-blocks.conformance", s("true")),
                    (LEGACY, s(&legacy.digest)),
                ]),
            ),
        ]);
        if blocks.is_some()
            && let Json::Obj(members) = &mut doc
        {
            // After config, before the annotations.
            let at = members.len() - 1;
            members.insert(at, ("blocks".to_string(), Json::Arr(block_list)));
        }
        Content::new(OCI_MANIFEST, doc.pretty("   ").into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The digest of the empty JSON object `{}`, as the image spec gives it.
    const EMPTY_DIGEST: &str =
        "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

    #[test]
    fn json_keeps_order_and_indents() {
        let doc = obj([
            ("b", Json::Num(1)),
            ("a", Json::Arr(vec![s("x\"y"), obj([])])),
        ]);
        assert_eq!(doc.compact(), r#"{"b":1,"a":["x\"y",{}]}"#);
        assert_eq!(
            doc.pretty("   "),
            "{\n   \"b\": 1,\n   \"a\": [\n      \"x\\\"y\",\n      {}\n   ]\n}\n"
        );
    }

    #[test]
    fn content_is_new_per_run_and_well_formed() {
        let a = Fixtures::new("aaaa");
        let b = Fixtures::new("bbbb");
        assert_ne!(a.blob("x", 100).digest, b.blob("x", 100).digest);
        assert_eq!(a.data("x", 3000).len(), 3000);
        let image = a.blocks_image("t").expect("image");
        assert_eq!(image.empty.digest, EMPTY_DIGEST);
        let manifest: serde_json::Value =
            serde_json::from_slice(&image.manifest.bytes).expect("manifest is JSON");
        assert_eq!(
            manifest["blocks"][1]["digest"],
            image.blocks[1].digest.as_str()
        );
        let text = String::from_utf8(image.manifest.bytes.clone()).expect("utf-8");
        assert!(text.contains("\n   \"x-conformance\": {"));
        let index: serde_json::Value =
            serde_json::from_slice(&image.index.bytes).expect("index is JSON");
        assert_eq!(index["manifests"][1]["annotations"][VARIANT], "anchor");
        let mut archive = tar::Archive::new(image.stub.bytes.as_slice());
        let mut found = String::new();
        for entry in archive.entries().expect("entries") {
            let mut entry = entry.expect("entry");
            if entry.path().expect("path").ends_with(".import.x.jar") {
                std::io::Read::read_to_string(&mut entry, &mut found).expect("read");
            }
        }
        assert_eq!(found, format!("/x.jar from {}\n", image.blocks[0].digest));
    }
}
