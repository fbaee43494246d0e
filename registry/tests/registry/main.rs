//! `oci-blocks-registry` end to end: the HTTP API request by request, and
//! the real skopeo against it.

mod api;
mod common;
mod skopeo;
