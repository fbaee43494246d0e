//! A patch, its declared sizes and its base come from a registry or a bundle:
//! applying any bytes must fail cleanly or rebuild exactly the declared
//! number of bytes, never panic, and never decode past the declared size.
//! Input: 1 byte of flags, 4 + 4 bytes of declared base and target sizes
//! (kept under 1 MiB), then the base and the patch split at the base size.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oci_blocks_core::Digest;
use oci_blocks_core::delta::{Patch, Recompress};

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let flags = data[0];
    let number = |b: &[u8]| u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])) % (1 << 20);
    let (base_size, target_size) = (number(&data[1..5]), number(&data[5..9]));
    let rest = &data[9..];
    let split = (base_size as usize).min(rest.len());
    let (base, patch) = rest.split_at(split);
    let recompress = (flags & 1 == 1).then_some(Recompress {
        base_raw_size: base_size,
        target_raw_size: target_size,
    });
    let p = Patch {
        digest: Digest::sha256(patch),
        size: patch.len() as u64,
        base: Digest::sha256(base),
        base_size: base.len() as u64,
        target: Digest::sha256(b"target"),
        target_size,
        recompress,
    };
    let mut out = Vec::new();
    if p.apply(base, patch, &mut out).is_ok() && recompress.is_none() {
        assert_eq!(out.len() as u64, target_size);
    }
});
