//! Deciding what becomes a block: the Java, Python and explicit rules of
//! `spec/reproducibility.md` applied to one input tree.

use std::collections::{BTreeMap, HashMap};

use globset::{Glob, GlobSet, GlobSetBuilder};
use oci_blocks_core::names::{
    ANNOTATION_MAVEN_COORDINATES, ANNOTATION_PYTHON_DISTRIBUTION, ANNOTATION_TITLE,
};

use crate::input::{Entry, Kind};
use crate::{Error, Result, jar, python};

/// The explicit rules of a build.
#[derive(Clone, Debug)]
pub struct Rules {
    patterns: Vec<String>,
    globs: GlobSet,
    /// Files smaller than this stay in the layer (jars and explicit rules).
    pub min_size: u64,
}

impl Rules {
    /// Rules from `--block` globs (relative to each `--add` source).
    pub fn new(patterns: &[String], min_size: u64) -> Result<Self> {
        let mut b = GlobSetBuilder::new();
        for p in patterns {
            let glob =
                Glob::new(p).map_err(|e| Error::option(format!("--block {p}"), e.to_string()))?;
            b.add(glob);
        }
        let globs = b
            .build()
            .map_err(|e| Error::option("--block", e.to_string()))?;
        Ok(Rules {
            patterns: patterns.to_vec(),
            globs,
            min_size,
        })
    }
}

/// Per-block information the pyc rule needs.
#[derive(Clone, Debug)]
pub struct PythonBlock {
    /// The `site-packages` directory, relative to the input root.
    pub site_packages: Vec<u8>,
}

/// One block to write.
#[derive(Clone, Debug)]
pub struct BlockPlan {
    /// Which rule made it, for messages and the cache key.
    pub rule: String,
    /// Entries: block path and index into the input entries, in canonical order.
    pub entries: Vec<(Vec<u8>, usize)>,
    /// Imports: the path `D/NAME` relative to the input root, and SOURCE.
    pub imports: Vec<(Vec<u8>, String)>,
    /// Descriptor annotations known from the plan (a jar's Maven coordinates are
    /// read when the block is written, see [`BlockPlan::annotate`]).
    pub annotations: BTreeMap<String, String>,
    /// Set for Python distributions.
    pub python: Option<PythonBlock>,
}

impl BlockPlan {
    /// The descriptor annotations, reading what the plan left for later (a jar's
    /// Maven coordinates), so that a cached block needs no read at all.
    pub fn annotate(&self, entries: &[Entry]) -> Result<BTreeMap<String, String>> {
        let mut annotations = self.annotations.clone();
        if self.rule == "jar" {
            if let Some((_, i)) = self.entries.first() {
                if let Some(coordinates) = jar::maven_coordinates(&entries[*i].abs)? {
                    annotations.insert(ANNOTATION_MAVEN_COORDINATES.to_string(), coordinates);
                }
            }
        }
        Ok(annotations)
    }
}

/// What the rules decided for one input tree.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// Blocks to write.
    pub blocks: Vec<BlockPlan>,
    /// Paths (relative to the input root) replaced by imports, with their subtrees.
    pub owned: Vec<Vec<u8>>,
}

impl Plan {
    /// Whether `rel` is an owned root or lies below one.
    pub fn is_owned(&self, rel: &[u8]) -> bool {
        self.owned.iter().any(|root| is_under(rel, root))
    }
}

pub(crate) fn is_under(path: &[u8], root: &[u8]) -> bool {
    path == root
        || (path.len() > root.len()
            && path.starts_with(root)
            && (root.is_empty() || path[root.len()] == b'/'))
}

fn join(a: &[u8], b: &[u8]) -> Vec<u8> {
    if a.is_empty() {
        return b.to_vec();
    }
    let mut p = a.to_vec();
    p.push(b'/');
    p.extend_from_slice(b);
    p
}

use oci_blocks_core::entry::parent;

fn utf8(path: &[u8], entries: &[Entry], i: usize) -> Result<String> {
    String::from_utf8(path.to_vec()).map_err(|_| Error::Unsupported {
        path: entries[i].abs.clone(),
        kind: "a file name that is not UTF-8 (an import entry cannot name it)",
    })
}

/// Applies the rules to an input tree (as returned by [`crate::input::walk`]).
pub fn plan(entries: &[Entry], rules: &Rules) -> Result<Plan> {
    let index: HashMap<&[u8], usize> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (&e.rel[..], i))
        .collect();
    let subtree = |root: &[u8]| -> Vec<usize> {
        entries
            .iter()
            .enumerate()
            .filter(|(_, e)| is_under(&e.rel, root))
            .map(|(i, _)| i)
            .collect()
    };
    let mut plan = Plan::default();
    let mut owner: Vec<(Vec<u8>, String)> = Vec::new();
    let mut claim = |root: Vec<u8>, rule: &str, owner: &mut Vec<(Vec<u8>, String)>| -> Result<()> {
        if let Some((_, first)) = owner
            .iter()
            .find(|(r, _)| is_under(&root, r) || is_under(r, &root))
        {
            let i = index.get(&root[..]).copied().unwrap_or(0);
            return Err(Error::RuleConflict {
                path: entries[i].abs.clone(),
                first: first.clone(),
                second: rule.to_string(),
            });
        }
        owner.push((root, rule.to_string()));
        Ok(())
    };

    // Python: one block per distribution found from its RECORD. Which
    // distributions claim each top-level name (and each child of a shared one)
    // is decided across all RECORDs of one site-packages directory.
    let mut sites: BTreeMap<Vec<u8>, Vec<python::Distribution>> = BTreeMap::new();
    for e in entries {
        let dir = parent(&e.rel);
        if e.kind != Kind::File || e.name() != b"RECORD" || !dir.ends_with(b".dist-info") {
            continue;
        }
        let Some(&dist_idx) = index.get(dir) else {
            continue;
        };
        let dist = python::read_distribution(&entries[dist_idx].abs)?;
        sites.entry(parent(dir).to_vec()).or_default().push(dist);
    }
    for (site, dists) in &sites {
        let mut claims: BTreeMap<String, Vec<&str>> = BTreeMap::new();
        for d in dists {
            for p in &d.inside {
                let mut parts = p.splitn(3, '/');
                let top = parts.next().unwrap_or_default().to_string();
                let child = parts.next().map(|c| format!("{top}/{c}"));
                for key in std::iter::once(top).chain(child) {
                    let list = claims.entry(key).or_default();
                    if !list.contains(&d.dist_info.as_str()) {
                        list.push(&d.dist_info);
                    }
                }
            }
        }
        for dist in dists {
            python_block(
                &mut plan, &mut owner, &mut claim, entries, &index, site, dist, &claims, &subtree,
            )?;
        }
    }
    // Explicit rules.
    if !rules.patterns.is_empty() {
        for (i, e) in entries.iter().enumerate() {
            let text = String::from_utf8_lossy(&e.rel);
            if e.rel.is_empty() || !rules.globs.is_match(text.as_ref()) {
                continue;
            }
            if e.kind == Kind::File && e.size < rules.min_size {
                continue;
            }
            if owner
                .iter()
                .any(|(r, rule)| is_under(&e.rel, r) && rule.starts_with("--block"))
            {
                continue; // inside a directory an explicit rule already took
            }
            let label = format!("--block {}", rules.patterns.join(","));
            claim(e.rel.clone(), &label, &mut owner)?;
            let name = e.name().to_vec();
            let block_entries = subtree(&e.rel)
                .into_iter()
                .map(|j| {
                    let mut p = name.clone();
                    p.extend_from_slice(&entries[j].rel[e.rel.len()..]);
                    (p, j)
                })
                .collect();
            let source = format!("/{}", utf8(&name, entries, i)?);
            plan.blocks.push(BlockPlan {
                rule: label,
                entries: block_entries,
                imports: vec![(e.rel.clone(), source)],
                annotations: BTreeMap::from([(
                    ANNOTATION_TITLE.to_string(),
                    utf8(&name, entries, i)?,
                )]),
                python: None,
            });
        }
    }
    // Java: one block per jar not already taken.
    for (i, e) in entries.iter().enumerate() {
        if e.kind != Kind::File || !e.name().ends_with(b".jar") || e.size < rules.min_size {
            continue;
        }
        if owner.iter().any(|(r, _)| is_under(&e.rel, r)) {
            continue;
        }
        claim(e.rel.clone(), "jar", &mut owner)?;
        let name = utf8(e.name(), entries, i)?;
        plan.blocks.push(BlockPlan {
            rule: "jar".into(),
            entries: vec![(name.clone().into_bytes(), i)],
            imports: vec![(e.rel.clone(), format!("/{name}"))],
            annotations: BTreeMap::from([(ANNOTATION_TITLE.to_string(), name.clone())]),
            python: None,
        });
    }
    plan.owned = owner.into_iter().map(|(r, _)| r).collect();
    Ok(plan)
}

/// The plan of a tree that is one block as a whole (a system package):
/// every regular file at its path, each imported at its place.
pub fn whole(entries: &[Entry], annotations: &BTreeMap<String, String>) -> Result<Plan> {
    let mut block = BlockPlan {
        rule: "package".into(),
        entries: Vec::new(),
        imports: Vec::new(),
        annotations: annotations.clone(),
        python: None,
    };
    let mut owned = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        if e.rel.is_empty() {
            continue;
        }
        // Files only: the directories are the image's, and a block's
        // digest must not depend on the umask its scratch tree was made with.
        if e.kind == Kind::File {
            block.entries.push((e.rel.clone(), i));
            block
                .imports
                .push((e.rel.clone(), format!("/{}", utf8(&e.rel, entries, i)?)));
            owned.push(e.rel.clone());
        }
    }
    if block.imports.is_empty() {
        return Ok(Plan::default());
    }
    Ok(Plan {
        blocks: vec![block],
        owned,
    })
}

#[allow(clippy::too_many_arguments)]
fn python_block(
    plan: &mut Plan,
    owner: &mut Vec<(Vec<u8>, String)>,
    claim: &mut impl FnMut(Vec<u8>, &str, &mut Vec<(Vec<u8>, String)>) -> Result<()>,
    entries: &[Entry],
    index: &HashMap<&[u8], usize>,
    site: &[u8],
    dist: &python::Distribution,
    claims: &BTreeMap<String, Vec<&str>>,
    subtree: &impl Fn(&[u8]) -> Vec<usize>,
) -> Result<()> {
    let mine = |key: &str| {
        claims
            .get(key)
            .is_some_and(|c| c.len() == 1 && c[0] == dist.dist_info)
    };
    let mut roots: Vec<String> = Vec::new();
    for p in &dist.inside {
        let mut parts = p.splitn(3, '/');
        let top = parts.next().unwrap_or_default();
        let root = if top != "__pycache__" && mine(top) {
            top.to_string()
        } else if let Some(child) = parts.next() {
            let key = format!("{top}/{child}");
            if !mine(&key) {
                continue;
            }
            key
        } else {
            continue;
        };
        if !roots.contains(&root) && index.contains_key(&join(site, root.as_bytes())[..]) {
            roots.push(root);
        }
    }
    if roots.is_empty() {
        return Ok(());
    }
    roots.sort();
    let label = format!("python {}=={}", dist.name, dist.version);
    let mut block_entries: Vec<(Vec<u8>, usize)> = Vec::new();
    let mut imports = Vec::new();
    for root in &roots {
        let rel = join(site, root.as_bytes());
        claim(rel.clone(), &label, owner)?;
        if let Some((shared, _)) = root.split_once('/') {
            let shared_rel = join(site, shared.as_bytes());
            if let Some(&si) = index.get(&shared_rel[..]) {
                if !block_entries.iter().any(|(p, _)| p == shared.as_bytes()) {
                    block_entries.push((shared.as_bytes().to_vec(), si));
                }
            }
        }
        for j in subtree(&rel) {
            let in_block = entries[j].rel[site.len()..]
                .strip_prefix(b"/")
                .unwrap_or(&entries[j].rel[site.len()..]);
            block_entries.push((in_block.to_vec(), j));
        }
        imports.push((rel, format!("/{root}")));
    }
    block_entries.sort_by_key(|(p, j)| {
        let mut k = p.clone();
        if entries[*j].kind == Kind::Dir {
            k.push(b'/');
        }
        k
    });
    let annotations = BTreeMap::from([
        (ANNOTATION_TITLE.to_string(), dist.name.clone()),
        (
            ANNOTATION_PYTHON_DISTRIBUTION.to_string(),
            format!("{}=={}", dist.name, dist.version),
        ),
    ]);
    plan.blocks.push(BlockPlan {
        rule: label,
        entries: block_entries,
        imports,
        annotations,
        python: Some(PythonBlock {
            site_packages: site.to_vec(),
        }),
    });
    Ok(())
}
