//! Manifests and indexes come from registries and layouts: validating any bytes
//! must return a report, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oci_blocks_core::validate::validate_document;

fuzz_target!(|data: &[u8]| {
    let _ = validate_document(data, "fuzz");
});
