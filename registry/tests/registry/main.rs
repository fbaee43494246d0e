//! `oci-blocks-registry` end to end: the HTTP API request by request, the
//! real skopeo against it, and its storage in a real S3-compatible server.

mod api;
mod common;
mod s3;
mod s3_gc;
mod skopeo;
