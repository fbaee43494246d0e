//! `oci-blocks-shim` end to end: hostile images, the block store, and the
//! unpacker's behaviour.

mod security;
mod store;
mod unpack;
