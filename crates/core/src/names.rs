//! Every name the extension puts on the wire, in one place.
//!
//! Media types, annotation keys, reserved file-name prefixes and size bounds are
//! defined here and nowhere else, so that the builder, the registry, the runtime
//! shim and the conformance suite cannot drift apart. The normative text for each
//! constant is in `spec/` (the file is named in each doc comment).

/// Media type of an OCI image manifest (`spec/blocks.md`: a blocks manifest is one).
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of an OCI image index (`spec/fallback.md`: the fallback index is one).
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Media type of an OCI image configuration.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Media type of a blocks manifest's config (`spec/blocks.md`): an OCI image
/// configuration under the extension's own type, so that clients that cannot
/// resolve imports refuse the manifest as a non-image artifact instead of
/// running its stub layers.
pub const BLOCKS_CONFIG: &str = "application/vnd.oci-blocks.image.config.v1+json";
/// Media type of the OCI empty descriptor's content (`{}`), used as the anchor's config.
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
/// Digest of the two bytes `{}`, the OCI empty descriptor.
pub const OCI_EMPTY_DIGEST: &str =
    "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
/// Size of the OCI empty descriptor's content.
pub const OCI_EMPTY_SIZE: u64 = 2;

/// Standard OCI layer, uncompressed tar. Also a valid block media type.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// Standard OCI layer, gzip-compressed tar. Also a valid block media type.
pub const OCI_LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Standard OCI layer, zstd-compressed tar. Also a valid block media type.
pub const OCI_LAYER_TAR_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// A layer that contains import entries, uncompressed (`spec/imports.md`).
pub const IMPORT_LAYER_TAR: &str = "application/vnd.oci-blocks.image.layer.v1.tar";
/// A layer that contains import entries, gzip-compressed.
pub const IMPORT_LAYER_TAR_GZIP: &str = "application/vnd.oci-blocks.image.layer.v1.tar+gzip";
/// A layer that contains import entries, zstd-compressed.
pub const IMPORT_LAYER_TAR_ZSTD: &str = "application/vnd.oci-blocks.image.layer.v1.tar+zstd";

/// Media types a block descriptor may carry (`spec/blocks.md`).
pub const BLOCK_MEDIA_TYPES: &[&str] = &[OCI_LAYER_TAR, OCI_LAYER_TAR_GZIP, OCI_LAYER_TAR_ZSTD];
/// Media types of layers that may contain import entries.
pub const IMPORT_LAYER_MEDIA_TYPES: &[&str] = &[
    IMPORT_LAYER_TAR,
    IMPORT_LAYER_TAR_GZIP,
    IMPORT_LAYER_TAR_ZSTD,
];

/// Artifact type of the GC anchor manifest (`spec/fallback.md`).
pub const ANCHOR_ARTIFACT_TYPE: &str = "application/vnd.oci-blocks.anchor.v1";

/// Artifact type of a delta artifact: patches that rebuild blocks of its
/// subject from blocks of an earlier image (`spec/deltas.md`).
pub const DELTA_ARTIFACT_TYPE: &str = "application/vnd.oci-blocks.delta.v1";
/// Media type of one patch of a delta artifact: a zstd frame made with the
/// base block as its reference prefix (`spec/deltas.md`).
pub const DELTA_PATCH: &str = "application/vnd.oci-blocks.delta.patch.v1+zstd";
/// Patch annotation: the digest of the block the patch is applied to.
pub const ANNOTATION_DELTA_BASE: &str = "io.oci-blocks.delta.base.digest";
/// Patch annotation: the size of that block, in decimal.
pub const ANNOTATION_DELTA_BASE_SIZE: &str = "io.oci-blocks.delta.base.size";
/// Patch annotation: the digest of the block the patch rebuilds.
pub const ANNOTATION_DELTA_TARGET: &str = "io.oci-blocks.delta.target.digest";
/// Patch annotation: the size of that block, in decimal.
pub const ANNOTATION_DELTA_TARGET_SIZE: &str = "io.oci-blocks.delta.target.size";
/// Patch annotation: the patch is between the uncompressed contents of a
/// base and target gzip layer, and the target is their recompression with
/// the encoder this value names ([`RECOMPRESS_GZIP`]).
pub const ANNOTATION_DELTA_RECOMPRESS: &str = "io.oci-blocks.delta.recompress";
/// Patch annotation, with [`ANNOTATION_DELTA_RECOMPRESS`]: the base's
/// uncompressed size, in decimal.
pub const ANNOTATION_DELTA_BASE_RAW_SIZE: &str = "io.oci-blocks.delta.base.uncompressed-size";
/// Patch annotation, with [`ANNOTATION_DELTA_RECOMPRESS`]: the target's
/// uncompressed size, in decimal.
pub const ANNOTATION_DELTA_TARGET_RAW_SIZE: &str = "io.oci-blocks.delta.target.uncompressed-size";
/// The one recompression encoder: this project's layer gzip, version 1
/// ([`crate::gzip::ParallelGz::for_layers`]).
pub const RECOMPRESS_GZIP: &str = "oci-blocks-gzip-1";
/// Annotation of a delta artifact: the digest of the manifest whose blocks
/// are the patches' bases.
pub const ANNOTATION_DELTA_FROM: &str = "io.oci-blocks.delta.from";
/// Annotation of an offline bundle's `index.json`: the digest of the image
/// whose blobs the bundle leaves out (`spec/deltas.md`, "Offline bundles").
pub const ANNOTATION_BUNDLE_SINCE: &str = "io.oci-blocks.bundle.since";
/// Annotation of an offline bundle's `index.json`: the legacy layers, by
/// digest and separated by spaces, that the bundle leaves out because its
/// loader materializes them from their stub layers (`spec/deltas.md`).
pub const ANNOTATION_BUNDLE_MATERIALIZED: &str = "io.oci-blocks.bundle.materialized";

/// Annotation on an index entry naming which variant of the image it is.
pub const ANNOTATION_VARIANT: &str = "io.oci-blocks.variant";
/// Value of [`ANNOTATION_VARIANT`] on the blocks manifest.
pub const VARIANT_BLOCKS: &str = "blocks";
/// Value of [`ANNOTATION_VARIANT`] on the GC anchor.
pub const VARIANT_ANCHOR: &str = "anchor";
/// Annotation of a blocks manifest in a fallback index: the digest of the
/// legacy manifest of its platform, whose layers it materializes to
/// (`spec/fallback.md`, "One view").
pub const ANNOTATION_LEGACY: &str = "io.oci-blocks.legacy";
/// Block descriptor annotation: Maven `groupId:artifactId:version` of a jar block.
pub const ANNOTATION_MAVEN_COORDINATES: &str = "io.oci-blocks.maven.coordinates";
/// Block descriptor annotation: `name==version` of a Python distribution block.
pub const ANNOTATION_PYTHON_DISTRIBUTION: &str = "io.oci-blocks.python.distribution";
/// Block descriptor annotation: `name=version` of a Debian package block
/// (`rechunk`).
pub const ANNOTATION_DEBIAN_PACKAGE: &str = "io.oci-blocks.debian.package";
/// Block descriptor annotation: `name@version` of an npm package block
/// (`rechunk`).
pub const ANNOTATION_NPM_PACKAGE: &str = "io.oci-blocks.npm.package";
/// Block descriptor annotation: `name=version` of an Alpine package block
/// (`rechunk`).
pub const ANNOTATION_ALPINE_PACKAGE: &str = "io.oci-blocks.alpine.package";
/// Annotation on an `index.json` entry of an OCI layout: `true` when the layout
/// omits blobs of the image on purpose (a sparse export without its base image's
/// blobs, `spec/blocks.md`).
pub const ANNOTATION_SPARSE: &str = "io.oci-blocks.sparse";
/// The image-spec's tag annotation in an OCI layout's `index.json`.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The image-spec's title annotation.
pub const ANNOTATION_TITLE: &str = "org.opencontainers.image.title";

/// Reserved file-name prefix of an import entry (`spec/imports.md`).
pub const IMPORT_PREFIX: &str = ".import.";
/// Reserved file-name prefix of a whiteout (image-spec `layer.md`).
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// File name of an opaque whiteout (image-spec `layer.md`).
pub const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";
/// Largest allowed content of an import entry, in bytes.
pub const MAX_IMPORT_SIZE: u64 = 4096;
/// Largest manifest or index a component reads, in bytes (the registry limit too).
pub const MAX_MANIFEST_SIZE: u64 = 4 * 1024 * 1024;
/// How deep indexes may nest below the top document (an index of indexes is
/// depth 2); no image in use nests more than two or three.
pub const MAX_INDEX_DEPTH: usize = 8;

/// `true` for a layer media type that announces import entries.
pub fn is_import_layer(media_type: &str) -> bool {
    IMPORT_LAYER_MEDIA_TYPES.contains(&media_type)
}

/// Compression of a tar media type, from its structured-syntax suffix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// `+gzip`.
    Gzip,
    /// `+zstd`.
    Zstd,
}

/// Docker's image manifest (schema 2), which registries and `docker push`
/// still use; read as an image manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker's manifest list, read as an image index.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker's image config, the same JSON as an OCI image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker's gzip layer, a `tar+gzip` layer.
pub const DOCKER_LAYER_TAR_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// The compression of a layer or block media type, or `None` if it is not a tar
/// media type this crate can read.
pub fn tar_compression(media_type: &str) -> Option<Compression> {
    match media_type {
        OCI_LAYER_TAR | IMPORT_LAYER_TAR => Some(Compression::None),
        OCI_LAYER_TAR_GZIP | IMPORT_LAYER_TAR_GZIP | DOCKER_LAYER_TAR_GZIP => {
            Some(Compression::Gzip)
        }
        OCI_LAYER_TAR_ZSTD | IMPORT_LAYER_TAR_ZSTD => Some(Compression::Zstd),
        _ => None,
    }
}

/// A Python project name in PEP 503's normal form (lowercase, runs of `-`,
/// `_` and `.` as one `-`): one project, however a distribution spells it.
pub fn normalize_python_name(name: &str) -> String {
    let mut out = String::new();
    for c in name.to_ascii_lowercase().chars() {
        if matches!(c, '-' | '_' | '.') {
            if !out.ends_with('-') {
                out.push('-');
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A file name without its version: the name up to the first `-` or `_`
/// that a digit follows, without a `.jar` suffix (`spec/fallback.md`,
/// "Rechunking"), so that the versions of one component share it.
pub fn name_without_version(name: &str) -> &str {
    let stem = name.strip_suffix(".jar").unwrap_or(name);
    let cut = stem.char_indices().find(|&(i, c)| {
        matches!(c, '-' | '_')
            && stem[i + 1..]
                .chars()
                .next()
                .is_some_and(|d| d.is_ascii_digit())
    });
    match cut {
        Some((i, _)) if i > 0 => &stem[..i],
        _ => stem,
    }
}

/// The component a block holds, whatever its version, from its descriptor's
/// annotations: `maven:GROUP:ARTIFACT`, `python:NAME`, `debian:NAME`,
/// `npm:NAME`, `alpine:NAME`, else `title:` and the title without its
/// version. Two blocks with one component are versions of one dependency
/// (`spec/deltas.md`, "Choosing a base").
pub fn component_of<'a>(annotation: impl Fn(&str) -> Option<&'a str>) -> Option<String> {
    if let Some(c) = annotation(ANNOTATION_MAVEN_COORDINATES) {
        let mut parts = c.split(':');
        if let (Some(g), Some(a)) = (parts.next(), parts.next()) {
            return Some(format!("maven:{g}:{a}"));
        }
    }
    if let Some(d) = annotation(ANNOTATION_PYTHON_DISTRIBUTION) {
        let name = d.split("==").next().unwrap_or(d);
        return Some(format!("python:{}", normalize_python_name(name)));
    }
    for (key, ecosystem, separator) in [
        (ANNOTATION_DEBIAN_PACKAGE, "debian", '='),
        (ANNOTATION_ALPINE_PACKAGE, "alpine", '='),
    ] {
        if let Some(p) = annotation(key) {
            return Some(format!(
                "{ecosystem}:{}",
                p.split(separator).next().unwrap_or(p)
            ));
        }
    }
    if let Some(p) = annotation(ANNOTATION_NPM_PACKAGE) {
        // `@scope/name@version`: the version follows the last `@`.
        let name = match p.rfind('@') {
            Some(i) if i > 0 => &p[..i],
            _ => p,
        };
        return Some(format!("npm:{name}"));
    }
    let title = annotation(ANNOTATION_TITLE)?;
    let base = title.rsplit('/').next().unwrap_or(title);
    Some(format!("title:{}", name_without_version(base)))
}

#[cfg(test)]
mod component_tests {
    use super::*;

    fn of(pairs: &[(&str, &str)]) -> Option<String> {
        component_of(|k| pairs.iter().find(|(a, _)| *a == k).map(|(_, v)| *v))
    }

    #[test]
    fn versions_of_one_component_share_it_and_others_do_not() {
        let maven = |v| of(&[(ANNOTATION_MAVEN_COORDINATES, v)]);
        assert_eq!(
            maven("org.apache.spark:spark-core_2.12:3.5.4"),
            maven("org.apache.spark:spark-core_2.12:3.5.5")
        );
        assert_ne!(
            maven("org.apache.spark:spark-core_2.12:3.5.4"),
            maven("org.apache.spark:spark-sql_2.12:3.5.4")
        );
        let python = |v| of(&[(ANNOTATION_PYTHON_DISTRIBUTION, v)]);
        assert_eq!(python("Zope.Interface==6.0"), python("zope-interface==6.1"));
        assert_eq!(
            of(&[(ANNOTATION_NPM_PACKAGE, "@types/node@20.1.0")]).as_deref(),
            Some("npm:@types/node")
        );
        assert_eq!(
            of(&[(ANNOTATION_DEBIAN_PACKAGE, "libc6=2.36-9")]).as_deref(),
            Some("debian:libc6")
        );
        assert_eq!(
            of(&[(ANNOTATION_TITLE, "guava-32.1.2-jre.jar")]),
            of(&[(ANNOTATION_TITLE, "guava-33.0.0-jre.jar")])
        );
        assert_eq!(of(&[]), None);
        // A malformed coordinate falls through to the title.
        assert_eq!(
            of(&[
                (ANNOTATION_MAVEN_COORDINATES, "x"),
                (ANNOTATION_TITLE, "x-1.jar")
            ])
            .as_deref(),
            Some("title:x")
        );
    }
}
