//! Which files the block rules may take, why others stay in their layers,
//! and which group a component goes to (`spec/fallback.md`, "Rechunking").

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use oci_blocks_core::Digest;
use oci_blocks_core::entry::{self, Kind};
use oci_blocks_core::names::{ANNOTATION_MAVEN_COORDINATES, ANNOTATION_PYTHON_DISTRIBUTION};

use super::tree::{self, Tree};
use crate::{Error, Result};

/// Whether the block rules could take this path: a jar, or anything in a
/// `site-packages` or `dist-packages` directory.
pub(super) fn rule_could_take(path: &[u8]) -> bool {
    let mut parts = path.split(|&b| b == b'/').peekable();
    let mut in_site = false;
    while let Some(p) = parts.next() {
        if parts.peek().is_none() {
            return in_site || p.ends_with(b".jar");
        }
        in_site |= p == b"site-packages" || p == b"dist-packages";
    }
    false
}

/// Why a file the rules could take stays in its layer, if it does: a block
/// holds files owned by root, without links or extended attributes.
pub(super) fn why_kept(tree: &Tree, path: &[u8], node: &tree::Node) -> Option<&'static str> {
    if node.kind != Kind::File {
        return Some("not a regular file");
    }
    if node.linked {
        return Some("hard-linked");
    }
    if node.owner != (0, 0) {
        return Some("not owned by root");
    }
    if node.xattrs {
        return Some("has extended attributes");
    }
    if !tree::parents_are_dirs(tree, path) {
        return Some("below a non-directory");
    }
    None
}

/// The nodes at or below `root`, in order.
pub(super) fn below<'t>(
    tree: &'t Tree,
    root: &'t [u8],
) -> impl Iterator<Item = (&'t Vec<u8>, &'t tree::Node)> {
    tree.range(root.to_vec()..)
        .take_while(move |(p, _)| p.starts_with(root))
        .filter(move |(p, _)| entry::is_at_or_below(p, root))
}

pub(super) fn text(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

/// The origin components are grouped by.
pub(super) fn origin_of(
    rule: &str,
    annotations: &BTreeMap<String, String>,
    paths: &[Vec<u8>],
) -> String {
    if let Some(c) = annotations.get(ANNOTATION_MAVEN_COORDINATES) {
        return c.split(':').next().unwrap_or(c).to_string();
    }
    if let Some(d) = annotations.get(ANNOTATION_PYTHON_DISTRIBUTION) {
        let name = d.split("==").next().unwrap_or(d);
        // PEP 503 normalization: one project, however it is spelled.
        return oci_blocks_core::names::normalize_python_name(name);
    }
    let name = paths
        .first()
        .map(|p| text(p.rsplit(|&b| b == b'/').next().unwrap_or(p)))
        .unwrap_or_else(|| rule.to_string());
    // A jar without Maven coordinates: its name without the version, so
    // that its versions share an origin.
    oci_blocks_core::names::name_without_version(&name).to_string()
}

/// The group of an origin among `groups` (`spec/fallback.md`, "Rechunking").
pub fn group_of(ecosystem: &str, origin: &str, groups: usize) -> usize {
    let d = Digest::sha256(format!("{ecosystem}:{origin}").as_bytes());
    let hex = d.hex();
    let n = u64::from_str_radix(&hex[..16], 16).unwrap_or(0);
    (n % groups.max(1) as u64) as usize
}

/// Moves `rel` (a file or directory below `from`) to the same place below
/// `to`.
pub(super) fn move_into(from: &Path, to: &Path, rel: &[u8]) -> Result<()> {
    let src = from.join(OsStr::from_bytes(rel));
    let dest = to.join(OsStr::from_bytes(rel));
    if let Some(p) = dest.parent() {
        fs::create_dir_all(p).map_err(|e| Error::io(p, e))?;
    }
    fs::rename(&src, &dest).map_err(|e| Error::io(&src, e))
}

/// Moves the file `src` to `dest`, making the directories above `dest`.
pub(super) fn move_to(src: &Path, dest: &Path) -> Result<()> {
    if let Some(p) = dest.parent() {
        fs::create_dir_all(p).map_err(|e| Error::io(p, e))?;
    }
    fs::rename(src, dest).map_err(|e| Error::io(src, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(name: &str) -> String {
        origin_of(
            "jar",
            &BTreeMap::new(),
            &[format!("app/lib/{name}").into_bytes()],
        )
    }

    #[test]
    fn a_jar_without_coordinates_is_named_up_to_its_version() {
        assert_eq!(origin("spark-core_2.12-3.5.5.jar"), "spark-core");
        assert_eq!(origin("scala-library-2.12.18.jar"), "scala-library");
        assert_eq!(origin("arpack_combined_all-0.1.jar"), "arpack_combined_all");
        assert_eq!(origin("py4j-0.10.9.7.jar"), "py4j");
        assert_eq!(origin("guava.jar"), "guava");
        assert_eq!(origin("1-2.jar"), "1");
        assert_eq!(origin("2.jar"), "2");
        // Versions of one jar share their origin, so their group.
        assert_eq!(
            origin("json4s-jackson_2.12-3.7.0-M11.jar"),
            origin("json4s-jackson_2.12-3.7.1.jar")
        );
    }
}
