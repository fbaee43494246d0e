//! Blocks are as untrusted as layers: a block made of any bytes, a lower
//! layer of any bytes, and a stub layer that imports from the block (its
//! root, and one path the first input bytes name) must unpack or fail
//! cleanly, never panic, and never create, change or remove anything
//! outside the root filesystem or in the image layout. The host sentinel is
//! the root's sibling, so `../sentinel` from the block or the lower layer
//! names it. A second unpack of the same image, in the same link mode, must
//! leave every file of the block store as the first left it: owner, mode,
//! size and time (with `--link hardlink` the root shares those inodes, so a
//! chown or chmod through a link would show here).
//!
//! The first input byte chooses where the rest is split into the block and
//! the lower layer; the second and third choose the imported path's length
//! and where it starts in the block's bytes; the fourth's low bit chooses
//! copies or hard links into the store.
#![no_main]

use std::fs;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use oci_blocks_core::Digest;
use oci_blocks_core::layout::OciDir;
use oci_blocks_core::names::{BLOCKS_CONFIG, IMPORT_LAYER_TAR, OCI_LAYER_TAR, OCI_MANIFEST};
use oci_blocks_core::oci_spec::image::{Descriptor, MediaType};
use oci_blocks_shim::{LinkMode, UnpackOptions, unpack};
use serde_json::json;

/// Path, size, mode, owner, group and modification time of everything below
/// `dir`.
fn listing(dir: &Path) -> Vec<(String, u64, u32, u32, u32, i64)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(m) = fs::symlink_metadata(&p) else { continue };
        if m.is_dir() {
            for e in fs::read_dir(&p).into_iter().flatten().flatten() {
                stack.push(e.path());
            }
        }
        out.push((
            p.display().to_string(),
            m.len(),
            m.mode(),
            m.uid(),
            m.gid(),
            m.mtime(),
        ));
    }
    out.sort();
    out
}

/// A tar of regular files, each as given.
fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, content) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, path, *content).expect("tar");
    }
    b.into_inner().expect("tar")
}

/// Writes an image of `layers` (uncompressed, the second an import layer)
/// declaring `block`, tagged `latest`.
fn write_image(dir: &OciDir, block: &[u8], layers: [Vec<u8>; 2]) -> Option<()> {
    let (bd, bs) = dir.write_blob_bytes(block).ok()?;
    let mut descriptors = Vec::new();
    let mut diff_ids = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let (d, s) = dir.write_blob_bytes(l).ok()?;
        let media_type = if i == 1 { IMPORT_LAYER_TAR } else { OCI_LAYER_TAR };
        descriptors.push(json!({"mediaType": media_type, "digest": d.as_str(), "size": s}));
        diff_ids.push(d.to_string());
    }
    let config = json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}});
    let (cd, cs) = dir.write_blob_bytes(&serde_json::to_vec(&config).ok()?).ok()?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": BLOCKS_CONFIG, "digest": cd.as_str(), "size": cs},
        "layers": descriptors,
        "blocks": [{"mediaType": OCI_LAYER_TAR, "digest": bd.as_str(), "size": bs}],
    });
    let (md, ms) = dir.write_blob_bytes(&serde_json::to_vec(&manifest).ok()?).ok()?;
    let desc = Descriptor::new(MediaType::ImageManifest, ms, md.as_oci().clone());
    dir.set_tag("latest", desc).ok()
}

fuzz_target!(|data: &[u8]| {
    let [split, len, start, mode, rest @ ..] = data else {
        return;
    };
    let at = rest.len() * usize::from(*split) / 255;
    let (block_bytes, lower_bytes) = rest.split_at(at);
    let from = (usize::from(*start) * block_bytes.len() / 255).min(block_bytes.len());
    let to = (from + usize::from(*len)).min(block_bytes.len());
    let source: String = String::from_utf8_lossy(&block_bytes[from..to])
        .chars()
        .filter(|c| !c.is_control())
        .collect();

    let outer = tempfile::tempdir().expect("temporary directory");
    let sentinel = outer.path().join("sentinel");
    fs::create_dir(&sentinel).expect("sentinel");
    fs::write(sentinel.join("keep"), "untouched").expect("sentinel file");
    let layout = outer.path().join("layout");
    let dir = OciDir::create(&layout).expect("layout");
    let digest = Digest::sha256(block_bytes);
    let stub = tar_of(&[
        ("imp/.import.all", format!("/ from {digest}\n").as_bytes()),
        ("imp/.import.one", format!("/{source} from {digest}\n").as_bytes()),
    ]);
    if write_image(&dir, block_bytes, [lower_bytes.to_vec(), stub]).is_none() {
        return;
    }
    let store = outer.path().join("store");
    let before = (listing(&sentinel), listing(&layout));
    let rootfs = outer.path().join("rootfs");
    let hardlink = mode & 1 == 1;
    let options = UnpackOptions {
        store: store.clone(),
        link: if hardlink { LinkMode::Hardlink } else { LinkMode::Copy },
        read_only: hardlink,
        platform: None,
        limits: oci_blocks_core::limits::Limits::default(),
    };
    let first = unpack(&dir, Some("latest"), &rootfs, &options).is_ok();
    assert_eq!(
        before,
        (listing(&sentinel), listing(&layout)),
        "something outside the root changed"
    );
    if first {
        let blocks = store.join("blocks");
        let stored = listing(&blocks);
        let again = outer.path().join("rootfs-again");
        let _ = unpack(&dir, Some("latest"), &again, &options);
        assert_eq!(stored, listing(&blocks), "a second unpack changed the store's files");
    }
    assert_eq!(
        fs::read_to_string(sentinel.join("keep")).ok().as_deref(),
        Some("untouched")
    );
});
