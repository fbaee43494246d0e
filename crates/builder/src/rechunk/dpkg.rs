//! Debian packages of an image's final tree, from dpkg's database: which
//! packages are installed (`var/lib/dpkg/status`), which files each owns
//! (`info/PACKAGE.list`), their MD5 sums as installed (`info/PACKAGE.md5sums`),
//! their conffiles, and the diversions.
//!
//! The database is the image's own, so it is read as untrusted input: each
//! file is bounded in size, and a line that does not parse is skipped.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::Path;

use oci_blocks_core::entry::{self, Kind};

use super::tree::Tree;
use crate::{Error, Result};

/// The status database.
pub const STATUS: &str = "var/lib/dpkg/status";
/// The per-package files.
pub const INFO: &str = "var/lib/dpkg/info";
/// The diversions.
pub const DIVERSIONS: &str = "var/lib/dpkg/diversions";
/// The largest database file read.
pub const MAX_DB_FILE: u64 = 64 << 20;

/// One installed package.
#[derive(Clone, Debug)]
pub struct Package {
    /// `Package`.
    pub name: String,
    /// `Version`.
    pub version: String,
    /// The source package (`Source`, else `Package`).
    pub source: String,
    /// The regular files and directories it lists, relative to the root.
    pub files: Vec<Vec<u8>>,
    /// MD5 sums of its files as installed, by path.
    pub md5sums: BTreeMap<Vec<u8>, String>,
    /// Its conffiles, relative to the root.
    pub conffiles: HashSet<Vec<u8>>,
}

/// Whether `path` could be one of [`database_paths`].
pub fn is_database(path: &[u8]) -> bool {
    if path == STATUS.as_bytes() || path == DIVERSIONS.as_bytes() {
        return true;
    }
    path.strip_prefix(INFO.as_bytes())
        .and_then(|rest| rest.strip_prefix(b"/"))
        .is_some_and(|name| {
            !name.contains(&b'/') && (name.ends_with(b".list") || name.ends_with(b".md5sums"))
        })
}

/// The database files of `tree` to read: the status, the diversions, and
/// every `.list` and `.md5sums` of `info/`.
pub fn database_paths(tree: &Tree) -> Vec<Vec<u8>> {
    if tree
        .get(STATUS.as_bytes())
        .is_none_or(|n| n.kind != Kind::File)
    {
        return Vec::new();
    }
    let mut prefix = INFO.as_bytes().to_vec();
    prefix.push(b'/');
    let mut out = vec![STATUS.as_bytes().to_vec()];
    if tree
        .get(DIVERSIONS.as_bytes())
        .is_some_and(|n| n.kind == Kind::File)
    {
        out.push(DIVERSIONS.as_bytes().to_vec());
    }
    for (path, node) in tree.range(prefix.clone()..) {
        if !path.starts_with(&prefix) {
            break;
        }
        let name = &path[prefix.len()..];
        if node.kind == Kind::File
            && !name.contains(&b'/')
            && (name.ends_with(b".list") || name.ends_with(b".md5sums"))
        {
            out.push(path.clone());
        }
    }
    out
}

fn read_bounded(root: &Path, rel: &str) -> Result<Option<String>> {
    let path = root.join(rel);
    let Ok(meta) = fs::metadata(&path) else {
        return Ok(None);
    };
    if meta.len() > MAX_DB_FILE {
        return Err(Error::Image {
            image: rel.to_string(),
            reason: format!(
                "dpkg's {rel} is larger than {}",
                oci_blocks_core::limits::human(MAX_DB_FILE)
            ),
        });
    }
    let bytes = fs::read(&path).map_err(|e| Error::io(&path, e))?;
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

fn clean(path: &str) -> Vec<u8> {
    entry::clean(path.as_bytes()).path
}

/// The installed packages, read from the database files extracted below
/// `root` (at their paths in the image).
pub fn read(root: &Path) -> Result<Vec<Package>> {
    let Some(status) = read_bounded(root, STATUS)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for paragraph in status.split("\n\n") {
        let mut fields: BTreeMap<&str, String> = BTreeMap::new();
        let mut last: Option<&str> = None;
        for line in paragraph.lines() {
            if let Some(rest) = line.strip_prefix([' ', '\t']) {
                if let Some(k) = last {
                    let v = fields.entry(k).or_default();
                    v.push('\n');
                    v.push_str(rest);
                }
            } else if let Some((k, v)) = line.split_once(':') {
                fields.insert(k, v.trim().to_string());
                last = Some(k);
            }
        }
        let (Some(name), Some(version), Some(state)) = (
            fields.get("Package"),
            fields.get("Version"),
            fields.get("Status"),
        ) else {
            continue;
        };
        if state != "install ok installed" {
            continue;
        }
        let arch = fields.get("Architecture").cloned().unwrap_or_default();
        let source = fields
            .get("Source")
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or(name)
            .to_string();
        let info = |ext: &str| -> Result<Option<String>> {
            match read_bounded(root, &format!("{INFO}/{name}:{arch}.{ext}"))? {
                Some(text) => Ok(Some(text)),
                None => read_bounded(root, &format!("{INFO}/{name}.{ext}")),
            }
        };
        let files = info("list")?
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with('/'))
            .map(clean)
            .filter(|p| !p.is_empty())
            .collect();
        let md5sums = info("md5sums")?
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (sum, path) = l.split_once("  ")?;
                (sum.len() == 32 && sum.bytes().all(|b| b.is_ascii_hexdigit()))
                    .then(|| (clean(path), sum.to_ascii_lowercase()))
            })
            .collect();
        let conffiles = fields
            .get("Conffiles")
            .map(|c| {
                c.lines()
                    .filter_map(|l| l.split_whitespace().next())
                    .map(clean)
                    .collect()
            })
            .unwrap_or_default();
        out.push(Package {
            name: name.clone(),
            version: version.clone(),
            source,
            files,
            md5sums,
            conffiles,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The paths dpkg diverts (both the diverted path and where it went).
pub fn diversions(root: &Path) -> Result<HashSet<Vec<u8>>> {
    let Some(text) = read_bounded(root, DIVERSIONS)? else {
        return Ok(HashSet::new());
    };
    // Triples of lines: from, to, package.
    Ok(text
        .lines()
        .enumerate()
        .filter(|(i, _)| i % 3 != 2)
        .map(|(_, l)| clean(l))
        .collect())
}

/// The MD5 sum of a file, in lower-case hex.
pub fn md5_of(path: &Path) -> Result<String> {
    use md5::Digest as _;
    let mut file = fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = md5::Md5::new();
    std::io::copy(&mut file, &mut hasher).map_err(|e| Error::io(path, e))?;
    Ok(hex_of(&hasher.finalize()))
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
