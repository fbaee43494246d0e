//! Import-entry contents are untrusted layer data: parsing must never panic, and
//! whatever parses must format back to content that parses to the same entry.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oci_blocks_core::import::{ImportEntry, import_name};

fuzz_target!(|data: &[u8]| {
    if let Ok(entry) = ImportEntry::parse(data) {
        let again = ImportEntry::parse(entry.to_content().as_bytes());
        assert_eq!(again.as_ref(), Ok(&entry));
    }
    if let Ok(name) = std::str::from_utf8(data) {
        let _ = import_name(name);
    }
});
