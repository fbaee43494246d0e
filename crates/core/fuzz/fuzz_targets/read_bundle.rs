//! A bundle file is carried in from outside: reading any bytes as one must
//! fail with an error or yield only blobs that hash to their names, never
//! panic and never write outside its layout.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oci_blocks_core::layout::OciDir;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = dir.path().join("bundle.tar");
    std::fs::write(&file, data).expect("bundle written");
    let layout = OciDir::create(dir.path().join("layout")).expect("layout");
    if let Ok(contents) = oci_blocks_core::bundle::extract(&file, &layout) {
        for d in &contents.blobs {
            let size = std::fs::metadata(layout.blob_path(d)).expect("blob stored").len();
            layout.read_blob(d, Some(size), size).expect("a stored blob verifies");
        }
    }
    // Nothing but the file and the layout below the directory.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("listing")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(names.len() <= 2, "{names:?}");
});
