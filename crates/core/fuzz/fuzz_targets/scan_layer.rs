//! Layer and block bytes are untrusted: scanning any bytes as a tar layer must
//! report problems, never panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use oci_blocks_core::layout::OciDir;
use oci_blocks_core::names::OCI_LAYER_TAR;
use oci_blocks_core::validate::scan::scan_blob;

fn layout() -> &'static OciDir {
    static DIR: OnceLock<OciDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("oci-blocks-fuzz-{}", std::process::id()));
        OciDir::create(path).expect("temporary layout")
    })
}

fuzz_target!(|data: &[u8]| {
    let dir = layout();
    let (digest, size) = dir.write_blob_bytes(data).expect("blob written");
    let _ = scan_blob(dir, &digest, size, OCI_LAYER_TAR);
    let _ = std::fs::remove_file(dir.blob_path(&digest));
});
