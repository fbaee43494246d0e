//! The media types and annotation keys the suite writes, as the OCI
//! specifications and the proposal (`spec/`) spell them. The suite keeps its
//! own copy: it must not take them from the implementation it judges.

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// A blocks manifest's config: an OCI image config under the proposal's own
/// media type (`spec/blocks.md`).
pub const BLOCKS_CONFIG: &str = "application/vnd.oci-blocks.image.config.v1+json";
/// The OCI empty descriptor's media type.
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
/// An uncompressed tar layer (and block).
pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// An uncompressed tar layer with import entries.
pub const IMPORT_LAYER_TAR: &str = "application/vnd.oci-blocks.image.layer.v1.tar";
/// The artifact type of the GC anchor.
pub const ANCHOR_TYPE: &str = "application/vnd.oci-blocks.anchor.v1";
/// The annotation that marks the anchor and the blocks manifest in an index.
pub const VARIANT: &str = "io.oci-blocks.variant";
/// The blocks manifest's annotation naming its legacy manifest
/// (`spec/fallback.md`, "One view").
pub const LEGACY: &str = "io.oci-blocks.legacy";
/// Media type of blobs that are not layers.
pub const OCTET_STREAM: &str = "application/octet-stream";
/// The `index.json` annotation that names a tag.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
