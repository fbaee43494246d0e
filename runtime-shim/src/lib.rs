//! The oci-blocks runtime shim: a secure unpacker for OCI images that resolves
//! import entries from a shared block store.
//!
//! - [`apply`] applies layers as the image-spec says, every path resolved inside
//!   the root filesystem through `pathrs` (in-root resolution: symlinks planted by
//!   an image are re-anchored at the root, never followed on the host).
//! - [`store`] verifies each block once, extracts it once (as untrusted as a
//!   layer), and keeps it for every image that imports from it; imports are
//!   materialized from it below an open directory, following no symlink
//!   ([`fsat`]).
//! - [`unpack`] picks the manifest (the blocks variant of a fallback index),
//!   verifies every blob and diff ID while streaming, materializes imports, and
//!   renames the finished root filesystem into place; a blocks manifest
//!   from a fallback index only when it is the image the index's legacy
//!   manifest shows (`views`).
//!
//! Synchronous, like the rest of the image handling.

pub mod apply;
pub mod bundle;
mod error;
pub mod fsat;
mod materialize;
pub mod options;
pub mod store;
pub mod unpack;
mod views;

pub use error::{Error, Result};
pub use unpack::{LinkMode, UnpackOptions, UnpackReport, unpack, unpack_bundle};
