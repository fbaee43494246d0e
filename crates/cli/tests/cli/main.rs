//! The `oci-blocks` binary, end to end: one test binary, one module per
//! concern (building, the read-only commands, unpacking, transfers, and the
//! real tools of the interop matrix).

mod build;
mod commands;
mod common;
mod compare;
mod delta;
mod interop;
mod rechunk;
mod transfer;
mod unpack;
