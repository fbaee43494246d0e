//! Core of oci-blocks: the wire format of the blocks extension to the OCI image
//! format, and the checks that keep every component honest about it.
//!
//! The extension adds content-addressed **blocks** beside an image manifest's
//! layers, and **import entries** (`D/.import.NAME`) inside layers that materialize
//! files from those blocks when an image is unpacked. `spec/` in the repository is
//! the normative text; this crate is its executable form:
//!
//! - [`names`]: every media type, annotation key and reserved name, in one place.
//! - [`digest`]: a validated [`Digest`] and streaming hash verification.
//! - [`import`]: the import-entry grammar.
//! - [`entry`]: tar entry names cleaned and entry types classified, one way for
//!   every reader; [`block`]: what a block may hold.
//! - [`limits`]: the bounds on the work a hostile image can cause.
//! - [`canonical`]: the canonical tar form of `spec/reproducibility.md`;
//!   [`expand`]: a stub layer's materialization, the layer a legacy manifest
//!   carries in its place.
//! - [`validate`]: the JSON Schemas of `spec/schemas` plus the semantic rules, for
//!   one document ([`validate::validate_document`]) or a whole image in a layout
//!   ([`validate::check_image`]), each violation named by a stable rule id.
//! - [`manifest`]: manifests and indexes that keep their exact bytes;
//!   [`platform`]: platforms, and which index entry a client of one takes.
//! - [`tarcheck`]: the archive checks every tar reader here makes.
//! - [`bundle`]: offline bundles, an image layout as one verified tar file.
//! - [`delta`]: patches that rebuild a block from an earlier version of it,
//!   and the delta artifact that lists them.
//! - [`layout`]: an OCI image-layout store that verifies digests on write and read
//!   and never exposes a half-written blob.
//!
//! The crate is synchronous; it builds on `oci-spec` for the standard types but
//! keeps the raw bytes of manifests, since `oci-spec` drops unknown fields such as
//! `blocks`, and a re-serialized manifest would have another digest.

pub mod block;
pub mod bundle;
pub mod canonical;
pub mod delta;
pub mod digest;
pub mod entry;
mod error;
pub mod expand;
pub mod gzip;
pub mod import;
pub mod layout;
pub mod limits;
pub mod manifest;
pub mod names;
pub mod platform;
pub mod repository;
pub mod tarcheck;
pub mod validate;

pub use digest::Digest;
pub use error::{Error, Result};
pub use oci_spec;
