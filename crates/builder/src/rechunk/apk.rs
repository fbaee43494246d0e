//! Alpine packages of an image's final tree, from apk's database
//! (`lib/apk/db/installed`): which packages are installed, which files each
//! owns (`F:` directories and `R:` files), and each file's SHA-1 as
//! installed (`Z:Q1…`). The database is the image's own: bounded in size,
//! and a record that does not parse is skipped.

use std::fs;
use std::path::Path;

use base64::Engine as _;
use oci_blocks_core::entry::{self, Kind};

use super::tree::Tree;
use crate::{Error, Result};

/// The database.
pub const INSTALLED: &str = "lib/apk/db/installed";
/// The largest database read.
pub const MAX_DB: u64 = 64 << 20;

/// One installed package.
#[derive(Clone, Debug)]
pub struct Package {
    /// `P:`.
    pub name: String,
    /// `V:`.
    pub version: String,
    /// `o:`, the origin (source) package, else the name.
    pub origin: String,
    /// Its files relative to the root, each with its `Z:` checksum (the
    /// SHA-1, base64, after `Q1`).
    pub files: Vec<(Vec<u8>, Option<String>)>,
}

/// Whether `path` is the database [`database_paths`] names.
pub fn is_database(path: &[u8]) -> bool {
    path == INSTALLED.as_bytes()
}

/// The database file to read, when the tree has one.
pub fn database_paths(tree: &Tree) -> Vec<Vec<u8>> {
    match tree.get(INSTALLED.as_bytes()) {
        Some(n) if n.kind == Kind::File && n.size <= MAX_DB => vec![INSTALLED.as_bytes().to_vec()],
        _ => Vec::new(),
    }
}

/// The installed packages, from the database extracted below `root`.
pub fn read(root: &Path) -> Result<Vec<Package>> {
    let path = root.join(INSTALLED);
    let Ok(meta) = fs::metadata(&path) else {
        return Ok(Vec::new());
    };
    if meta.len() > MAX_DB {
        return Ok(Vec::new());
    }
    let text = fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let text = String::from_utf8_lossy(&text);
    let mut out = Vec::new();
    for record in text.split("\n\n") {
        let (mut name, mut version, mut origin) = (None, None, None);
        let mut dir = Vec::new();
        let mut files: Vec<(Vec<u8>, Option<String>)> = Vec::new();
        for line in record.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            match key {
                "P" => name = Some(value.to_string()),
                "V" => version = Some(value.to_string()),
                "o" => origin = Some(value.to_string()),
                "F" => dir = entry::clean(value.as_bytes()).path,
                "R" => files.push((
                    entry::join(&dir, &entry::clean(value.as_bytes()).path),
                    None,
                )),
                "Z" => {
                    if let (Some(last), Some(sum)) = (files.last_mut(), value.strip_prefix("Q1")) {
                        last.1 = Some(sum.to_string());
                    }
                }
                _ => {}
            }
        }
        let (Some(name), Some(version)) = (name, version) else {
            continue;
        };
        out.push(Package {
            origin: origin.unwrap_or_else(|| name.clone()),
            name,
            version,
            files,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// A file's SHA-1 as apk records it (base64, without the `Q1`).
pub fn checksum_of(path: &Path) -> Result<String> {
    use sha1::Digest as _;
    let mut file = fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = sha1::Sha1::new();
    std::io::copy(&mut file, &mut hasher).map_err(|e| Error::io(path, e))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(hasher.finalize()))
}
