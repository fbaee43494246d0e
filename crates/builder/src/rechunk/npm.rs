//! npm packages of an image's final tree: each `node_modules/NAME` (or
//! `node_modules/@SCOPE/NAME`) directory with a `package.json` that names
//! the package and its version. The manifests are the image's own, read as
//! untrusted input: bounded in size, and one that does not parse is not a
//! package.

use std::fs;
use std::path::Path;

use oci_blocks_core::entry::{Kind, file_name as name, parent};

use super::tree::Tree;
use crate::{Error, Result};

/// The largest `package.json` read.
pub const MAX_MANIFEST: u64 = 4 << 20;

/// One installed package.
#[derive(Clone, Debug)]
pub struct Package {
    /// `name` (`@scope/name` for a scoped one).
    pub name: String,
    /// `version`.
    pub version: String,
    /// Its directory, relative to the root.
    pub dir: Vec<u8>,
}

/// Whether `dir` is a package directory of a `node_modules`.
fn is_package_dir(dir: &[u8]) -> bool {
    let up = parent(dir);
    if name(up) == b"node_modules" {
        return !name(dir).starts_with(b".") && !name(dir).starts_with(b"@");
    }
    name(up).starts_with(b"@") && name(parent(up)) == b"node_modules"
}

/// Whether `path` could be one of [`manifests`].
pub fn is_manifest(path: &[u8]) -> bool {
    name(path) == b"package.json" && is_package_dir(parent(path))
}

/// The `package.json` files of package directories in `tree`.
pub fn manifests(tree: &Tree) -> Vec<Vec<u8>> {
    tree.iter()
        .filter(|(p, n)| {
            n.kind == Kind::File
                && name(p) == b"package.json"
                && n.size <= MAX_MANIFEST
                && is_package_dir(parent(p))
        })
        .map(|(p, _)| p.clone())
        .collect()
}

/// The packages whose manifests (extracted below `root` at their paths)
/// name them and their version.
pub fn read(root: &Path, manifests: &[Vec<u8>]) -> Result<Vec<Package>> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = Vec::new();
    for m in manifests {
        let path = root.join(std::ffi::OsStr::from_bytes(m));
        let bytes = fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let Ok(json) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            continue;
        };
        let (Some(name), Some(version)) = (
            json.get("name").and_then(|n| n.as_str()),
            json.get("version").and_then(|v| v.as_str()),
        ) else {
            continue;
        };
        out.push(Package {
            name: name.to_string(),
            version: version.to_string(),
            dir: parent(m).to_vec(),
        });
    }
    Ok(out)
}
