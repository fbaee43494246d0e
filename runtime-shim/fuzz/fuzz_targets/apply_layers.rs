//! Layers are untrusted: applying any two byte strings as consecutive layers
//! must fail cleanly or succeed, never panic, and never create, change or
//! remove anything outside the root filesystem.
//!
//! The first input byte chooses where the rest is split into the two layers,
//! so that a link planted by the first can be written through by the second.
#![no_main]

use std::fs;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use oci_blocks_shim::apply::Applier;

fn listing(dir: &Path) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = fs::read_dir(dir)
        .expect("listing")
        .filter_map(|e| e.ok())
        .map(|e| {
            let len = e.metadata().map(|m| m.len()).unwrap_or(0);
            (e.file_name().to_string_lossy().into_owned(), len)
        })
        .collect();
    out.sort();
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let at = rest.len() * usize::from(split) / 255;
    let (first, second) = rest.split_at(at);

    let outer = tempfile::tempdir().expect("temporary directory");
    let sentinel = outer.path().join("sentinel");
    fs::create_dir(&sentinel).expect("sentinel");
    fs::write(sentinel.join("keep"), "untouched").expect("sentinel file");
    let rootfs = outer.path().join("rootfs");
    fs::create_dir(&rootfs).expect("rootfs");
    let before = (listing(outer.path()), listing(&sentinel));

    let root = pathrs::Root::open(&rootfs).expect("root");
    let mut applier = Applier::new(&root, oci_blocks_core::limits::Limits::default());
    let applied = applier
        .apply_layer(first, None, "layer 0", first.len() as u64)
        .and_then(|()| applier.apply_layer(second, None, "layer 1", second.len() as u64));
    if applied.is_ok() {
        let _ = applier.finish();
    }

    assert_eq!(
        before,
        (listing(outer.path()), listing(&sentinel)),
        "something outside the root changed"
    );
    assert_eq!(
        fs::read_to_string(sentinel.join("keep")).ok().as_deref(),
        Some("untouched")
    );
    // Let the temporary directory go even if the layers left 0000 directories.
    writable(&rootfs);
});

fn writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            writable(&e.path());
        }
    }
}
