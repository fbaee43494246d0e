//! Packages a system package manager installed (dpkg, apk), as one shape:
//! each package's files and the checksum its manager recorded for each, and
//! the one selection of the files that may become the package's block
//! (`spec/fallback.md`, "Rechunking").

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use oci_blocks_core::entry::Kind;

use super::group::{rule_could_take, why_kept};
use super::tree::{self, Tree};
use super::{apk, dpkg};
use crate::Result;

/// A checksum a package manager recorded for a file as it installed it.
#[derive(Clone, Debug)]
pub enum Sum {
    /// dpkg's MD5, lower-case hex.
    Md5(String),
    /// apk's SHA-1, base64 (without `Q1`).
    Sha1(String),
}

impl Sum {
    /// Whether the file at `path` still has this checksum.
    fn matches(&self, path: &Path) -> Result<bool> {
        Ok(match self {
            Sum::Md5(hex) => *hex == dpkg::md5_of(path)?,
            Sum::Sha1(b64) => *b64 == apk::checksum_of(path)?,
        })
    }
}

/// One installed package.
#[derive(Clone, Debug)]
pub struct Package {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// The source package it was built from, which groups it.
    pub origin: String,
    /// The paths it lists, relative to the root.
    pub files: Vec<Vec<u8>>,
    /// The checksums recorded for its files, by path.
    pub sums: BTreeMap<Vec<u8>, Sum>,
    /// Its configuration files, which stay in the layers.
    pub conffiles: HashSet<Vec<u8>>,
}

/// The packages of one manager, and how the report names what it keeps.
pub struct Manager {
    /// `debian` or `alpine` (the grouping's ECOSYSTEM).
    pub ecosystem: &'static str,
    /// The block annotation naming `NAME=VERSION`.
    pub annotation: &'static str,
    /// The installed packages, by name.
    pub packages: Vec<Package>,
    /// Paths no package owns alone (dpkg's diversions).
    pub excluded: HashSet<Vec<u8>>,
    /// Why a conffile stays.
    pub conffile: &'static str,
    /// Why a file that two packages list (or that is excluded) stays.
    pub shared: &'static str,
    /// Why a file without a checksum stays.
    pub no_sum: &'static str,
    /// Why a file whose checksum no longer matches stays.
    pub changed: &'static str,
}

/// dpkg's packages, every path taken where it is in `tree` (dpkg lists
/// /bin/bash where a merged /usr has usr/bin/bash).
pub fn debian(tree: &Tree, packages: Vec<dpkg::Package>, diverted: HashSet<Vec<u8>>) -> Manager {
    let at = |f: &[u8]| tree::through_usr_link(tree, f);
    Manager {
        ecosystem: "debian",
        annotation: oci_blocks_core::names::ANNOTATION_DEBIAN_PACKAGE,
        packages: packages
            .into_iter()
            .map(|p| Package {
                files: p.files.iter().map(|f| at(f)).collect(),
                sums: p
                    .md5sums
                    .into_iter()
                    .map(|(f, sum)| (at(&f), Sum::Md5(sum)))
                    .collect(),
                conffiles: p.conffiles.iter().map(|f| at(f)).collect(),
                name: p.name,
                version: p.version,
                origin: p.source,
            })
            .collect(),
        excluded: diverted.iter().map(|f| at(f)).collect(),
        conffile: "a Debian conffile",
        shared: "listed by two Debian packages, or diverted",
        no_sum: "a Debian file without an MD5 sum",
        changed: "changed since dpkg installed it",
    }
}

/// apk's packages.
pub fn alpine(packages: Vec<apk::Package>) -> Manager {
    Manager {
        ecosystem: "alpine",
        annotation: oci_blocks_core::names::ANNOTATION_ALPINE_PACKAGE,
        packages: packages
            .into_iter()
            .map(|p| Package {
                sums: p
                    .files
                    .iter()
                    .filter_map(|(f, sum)| Some((f.clone(), Sum::Sha1(sum.clone()?))))
                    .collect(),
                files: p.files.into_iter().map(|(f, _)| f).collect(),
                conffiles: HashSet::new(),
                name: p.name,
                version: p.version,
                origin: p.origin,
            })
            .collect(),
        excluded: HashSet::new(),
        conffile: "an Alpine conffile",
        shared: "listed by two Alpine packages",
        no_sum: "an Alpine file without a checksum",
        changed: "changed since apk installed it",
    }
}

/// A file that may go into its package's block: `(manager, package, path)`.
pub type Candidate = (usize, usize, Vec<u8>);

/// The files of each package's block, by `(manager, package)`.
pub type Blocks = BTreeMap<(usize, usize), Vec<Vec<u8>>>;

/// The regular files of `tree` that `managers` list and that no other rule
/// takes, in managers' order: a manager never takes what an earlier one
/// lists. The others are counted in `kept` by why they stay.
pub fn candidates(
    tree: &Tree,
    managers: &[Manager],
    kept: &mut BTreeMap<String, usize>,
) -> Vec<Candidate> {
    let mut out = Vec::new();
    let mut earlier: HashSet<&[u8]> = HashSet::new();
    for (mi, m) in managers.iter().enumerate() {
        let mut count: HashMap<&[u8], usize> = HashMap::new();
        for p in &m.packages {
            for f in &p.files {
                *count.entry(f.as_slice()).or_default() += 1;
            }
        }
        for (pi, p) in m.packages.iter().enumerate() {
            for f in &p.files {
                let Some(node) = tree.get(f) else { continue };
                if node.kind == Kind::Dir || rule_could_take(f) || earlier.contains(f.as_slice()) {
                    continue;
                }
                let why = if p.conffiles.contains(f) {
                    Some(m.conffile)
                } else if count.get(f.as_slice()).is_some_and(|n| *n > 1) || m.excluded.contains(f)
                {
                    Some(m.shared)
                } else if !p.sums.contains_key(f) {
                    Some(m.no_sum)
                } else {
                    why_kept(tree, f, node)
                };
                match why {
                    Some(why) => *kept.entry(why.to_string()).or_default() += 1,
                    None => out.push((mi, pi, f.clone())),
                }
            }
        }
        earlier.extend(count.into_keys());
    }
    out
}

/// Every path `managers` list, for the rules that come after them.
pub fn listed(managers: &[Manager]) -> HashSet<&[u8]> {
    managers
        .iter()
        .flat_map(|m| &m.packages)
        .flat_map(|p| &p.files)
        .map(Vec::as_slice)
        .collect()
}

/// The candidates, extracted below `all`, whose content still has the
/// checksum their manager recorded, by `(manager, package)`; the others
/// are counted in `kept`.
pub fn verified(
    managers: &[Manager],
    candidates: Vec<Candidate>,
    all: &Path,
    kept: &mut BTreeMap<String, usize>,
) -> Result<Blocks> {
    let mut out = Blocks::new();
    for (mi, pi, f) in candidates {
        let m = &managers[mi];
        let ok = match m.packages[pi].sums.get(&f) {
            Some(sum) => sum.matches(&all.join(OsStr::from_bytes(&f)))?,
            None => false,
        };
        if !ok {
            *kept.entry(m.changed.to_string()).or_default() += 1;
            continue;
        }
        out.entry((mi, pi)).or_default().push(f);
    }
    Ok(out)
}
