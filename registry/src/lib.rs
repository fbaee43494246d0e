//! `oci-blocks-registry`: an OCI distribution-spec v1.1 registry that implements the
//! blocks extension's registry requirements (`spec/blocks.md`, "Registry
//! requirements"): a manifest is accepted only when its blocks exist, and garbage
//! collection keeps every blob a kept manifest names as a block.
//!
//! - [`storage`]: the file-system layout; atomic, digest-verified commits.
//! - [`api`]: the HTTP API (axum), streaming uploads and downloads.
//! - [`manifest`]: what is checked of a pushed manifest before storage is touched.
//! - [`gc`]: mark and sweep, safe against concurrent pushes.
//! - [`auth`]: htpasswd (bcrypt) basic authentication.
//! - [`config`]: the configuration file.
//! - [`server`]: listening, TLS, graceful shutdown, request logs, periodic GC.
//!
//! The storage and the collector are synchronous; only the HTTP side is async.

pub mod api;
pub mod auth;
pub mod config;
mod error;
pub mod gc;
pub mod manifest;
pub use oci_blocks_core::repository as names;
pub mod server;
pub mod storage;

pub use error::{Error, Result};
