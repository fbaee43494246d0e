//! The build cache: which block an unchanged input already produced.
//!
//! A block's key hashes its rule, the canonical mtime, and for every entry its
//! block path, type, mode, size, link target, device, inode and modification and
//! change times (as git's index and make do). When the key is known and the blob
//! is in the output layout, the block is neither read nor written again: a
//! rebuild of unchanged inputs only stats them.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use oci_blocks_core::Digest;
use serde::{Deserialize, Serialize};

use crate::input::{Entry, Kind};
use crate::plan::BlockPlan;

const FORMAT: &str = "oci-blocks build cache v2";

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

/// The cache, loaded from and saved to one JSON file.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Cache {
    #[serde(skip)]
    path: Option<PathBuf>,
    format: String,
    blocks: BTreeMap<String, Cached>,
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
        let mut h =
            oci_blocks_core::digest::Hasher::new(oci_blocks_core::digest::Algorithm::Sha256);
        h.update(format!("{FORMAT}\n{}\n{epoch}\n", plan.rule).as_bytes());
        for (path, i) in &plan.entries {
            let e = &entries[*i];
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
        h.finish().to_string()
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
