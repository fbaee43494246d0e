//! The oci-blocks builder: application trees and their dependencies into images
//! whose dependencies live in reproducible, shared blocks.
//!
//! Design, in the order a build runs:
//! - [`input`] reads each `--add` tree without following links, in canonical order.
//! - [`plan`] applies the block rules of `spec/reproducibility.md`: one block per
//!   jar (with its Maven coordinates), one per installed Python distribution (one
//!   import per top-level name), explicit globs.
//! - Blocks are written in parallel as canonical, uncompressed tar (`oci_blocks_core::canonical`),
//!   hashed as they stream into the layout; Python compiled files are made
//!   reproducible by [`python::canonical_pyc`]. A stat-keyed [`cache`] spares
//!   unchanged blocks on a rebuild.
//! - Each `--add` becomes one canonical, gzip-compressed stub layer in which the
//!   block contents are replaced by `.import.` entries; the config inherits the
//!   base image's; blobs are written first and `index.json` last.
//!
//! Nothing is held whole in memory: files stream from disk into blobs.

pub mod build;
pub mod cache;
mod error;
pub mod file;
pub mod input;
pub mod jar;
pub mod plan;
pub mod python;
pub mod rechunk;

pub use build::{
    Add, BuildReport, BuildSpec, Fallback, NoProgress, PlatformReport, Progress, build,
    build_with_progress,
};
pub use error::{Error, Result};
