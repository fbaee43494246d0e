//! The conformance suite judged: it must end as recorded against known
//! registries and unpackers, and catch the faults it exists to catch.

mod common;
mod registries;
mod unpackers;
