//! The build cache: which block an unchanged input already produced.
//!
//! A block's key hashes its rule, the canonical mtime, and for every entry its
//! block path, type, mode, size, link target, device, inode and modification and
//! change times (as git's index and make do). When the key is known and the blob
//! is in the output layout, the block is neither read nor written again: a
//! rebuild of unchanged inputs only stats them. Legacy layers (every import
//! materialized, gzip-compressed) are cached the same way, keyed by their trees.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use oci_blocks_core::Digest;
use oci_blocks_core::digest::{Algorithm, Hasher};
use serde::{Deserialize, Serialize};

use crate::input::{Entry, Kind};
use crate::plan::BlockPlan;

const FORMAT: &str = "oci-blocks build cache v3";

/// A cached block.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Cached {
    /// The block's digest.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// Its descriptor annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// A cached legacy layer (every import materialized).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CachedLayer {
    /// The layer's digest.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// Its diff ID.
    pub diff_id: Digest,
}

/// The cache, loaded from and saved to one JSON file.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Cache {
    #[serde(skip)]
    path: Option<PathBuf>,
    format: String,
    blocks: BTreeMap<String, Cached>,
    #[serde(default)]
    layers: BTreeMap<String, CachedLayer>,
}

fn hash_entry(h: &mut Hasher, path: &[u8], e: &Entry) {
    let link: &[u8] = match &e.kind {
        Kind::Symlink(t) => t,
        _ => b"",
    };
    h.update(path);
    h.update(
        format!(
            "\0{:?}\0{}\0{}\0{:?}\0{:?}\0",
            std::mem::discriminant(&e.kind),
            e.mode,
            e.size,
            e.dev_ino,
            e.stamp
        )
        .as_bytes(),
    );
    h.update(link);
    h.update(b"\n");
}

impl Cache {
    /// Loads the cache in `dir` (an unreadable or foreign file is ignored).
    pub fn load(dir: Option<&Path>) -> Cache {
        let Some(dir) = dir else {
            return Cache::default();
        };
        let path = dir.join("build-cache.json");
        let mut cache: Cache = fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .filter(|c: &Cache| c.format == FORMAT)
            .unwrap_or_default();
        cache.path = Some(path);
        cache.format = FORMAT.into();
        cache
    }

    /// The key of a block plan.
    pub fn key(plan: &BlockPlan, entries: &[Entry], epoch: u64) -> String {
        let mut h = Hasher::new(Algorithm::Sha256);
        h.update(format!("{FORMAT}\n{}\n{epoch}\n", plan.rule).as_bytes());
        for (path, i) in &plan.entries {
            hash_entry(&mut h, path, &entries[*i]);
        }
        h.finish().to_string()
    }

    /// The key of a legacy layer: the stub layer it materializes (whose
    /// digest names every block it imports).
    pub fn layer_key(stub: &Digest) -> String {
        format!("{FORMAT}\nlegacy of {stub}")
    }

    /// A cached legacy layer for `key`.
    pub fn get_layer(&self, key: &str) -> Option<&CachedLayer> {
        self.layers.get(key)
    }

    /// Records a legacy layer.
    pub fn put_layer(&mut self, key: String, value: CachedLayer) {
        self.layers.insert(key, value);
    }

    /// A cached block for `key`.
    pub fn get(&self, key: &str) -> Option<&Cached> {
        self.blocks.get(key)
    }

    /// Records a block.
    pub fn put(&mut self, key: String, value: Cached) {
        self.blocks.insert(key, value);
    }

    /// Writes the cache back (atomically); failures only cost the next build time.
    pub fn save(&self) {
        let Some(path) = &self.path else { return };
        let Some(dir) = path.parent() else { return };
        let write = || -> std::io::Result<()> {
            fs::create_dir_all(dir)?;
            let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
            tmp.write_all(&serde_json::to_vec(self).map_err(std::io::Error::other)?)?;
            tmp.persist(path).map_err(|e| e.error)?;
            Ok(())
        };
        if let Err(e) = write() {
            tracing::warn!("could not save the build cache {}: {e}", path.display());
        }
    }
}
