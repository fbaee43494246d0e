//! `oci-blocks-client`: the registry transport of oci-blocks. It copies images
//! between OCI layouts and registries in any direction, moving only what the
//! destination (or the caller's block store) lacks: blocks travel like layers,
//! manifests as their exact bytes.
//!
//! - [`reference`]: `oci:DIR[:TAG]` and `docker://HOST/REPO[:TAG|@DIGEST]`.
//! - [`auth`]: credentials from the containers and docker auth files.
//! - [`registry`]: one registry over the distribution API (auth challenges,
//!   retries, chunked and resumable uploads, mounts).
//! - [`copy`]: the copy itself, concurrent and verified.
//! - [`delta`]: delta artifacts found, pushed and applied (`spec/deltas.md`).
//!
//! This crate is async (tokio); callers that are not build a runtime.

pub mod auth;
pub mod copy;
pub mod delta;
mod error;
pub mod reference;
pub mod registry;

pub use copy::{CopyOptions, CopyReport, Selection, copy};
pub use error::{Error, Result};
pub use reference::{ImageRef, RegistryRef};
pub use registry::{Registry, RegistryOptions};
