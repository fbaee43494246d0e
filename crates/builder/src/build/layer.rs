//! Writing tar content: blocks and stub layers in the canonical form of
//! `spec/reproducibility.md` (Python compiled files made canonical on the
//! way), materialized legacy layers, and the merging of adds into fewer
//! layers for `--max-layers`.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;

use oci_blocks_core::Digest;
use oci_blocks_core::canonical::CanonicalTar;
use oci_blocks_core::digest::HashingWriter;
use oci_blocks_core::expand::LayoutBlocks;
use oci_blocks_core::gzip::ParallelGz;
use oci_blocks_core::layout::OciDir;

use crate::input::{Entry, Kind};
use crate::plan::{self, BlockPlan};
use crate::{Error, Result, python};

pub(super) fn layer_path(dest: &str, rel: &[u8]) -> Vec<u8> {
    let mut p = dest.trim_matches('/').as_bytes().to_vec();
    if !rel.is_empty() {
        if !p.is_empty() {
            p.push(b'/');
        }
        p.extend_from_slice(rel);
    }
    p
}

/// What goes into a tar: an input entry, a synthesized directory, or an import.
#[derive(Clone)]
pub(super) enum Item<'a> {
    /// An input entry, with what the canonical `.pyc` rule needs when it applies.
    Input(&'a Entry, Option<Pyc<'a>>),
    Dir(u32),
    /// An import entry's content, and the path it materializes.
    Import(String, Vec<u8>),
}

/// The `site-packages` of a Python block, and the entries of its input tree.
#[derive(Clone, Copy)]
pub(super) struct Pyc<'a> {
    site: &'a [u8],
    by_rel: &'a HashMap<&'a [u8], &'a Entry>,
}

fn write_items<W: Write>(
    tar: &mut CanonicalTar<W>,
    items: &[(Vec<u8>, Item<'_>)],
    epoch: u64,
) -> Result<()> {
    let mut first_path: HashMap<(u64, u64), &[u8]> = HashMap::new();
    for (path, item) in items {
        let io_err = |e| Error::io(String::from_utf8_lossy(path).into_owned(), e);
        match item {
            Item::Dir(mode) => tar.dir(path, *mode).map_err(io_err)?,
            Item::Import(content, _) => tar
                .file_bytes(path, 0o644, content.as_bytes())
                .map_err(io_err)?,
            Item::Input(e, site) => match &e.kind {
                Kind::Dir => tar
                    .dir(path, e.mode)
                    .map_err(|err| Error::io(&e.abs, err))?,
                Kind::Symlink(target) => tar
                    .symlink(path, e.mode, target)
                    .map_err(|err| Error::io(&e.abs, err))?,
                Kind::File => {
                    if e.nlink > 1 {
                        if let Some(first) = first_path.get(&e.dev_ino) {
                            tar.hardlink(path, e.mode, first)
                                .map_err(|err| Error::io(&e.abs, err))?;
                            continue;
                        }
                        first_path.insert(e.dev_ino, path);
                    }
                    let rewritten = match site {
                        Some(pyc) => rewrite_pyc(e, *pyc, epoch).transpose()?,
                        None => None,
                    };
                    if let Some(bytes) = rewritten {
                        tar.file_bytes(path, e.mode, &bytes)
                            .map_err(|err| Error::io(&e.abs, err))?;
                    } else {
                        let mut f = File::open(&e.abs).map_err(|err| Error::io(&e.abs, err))?;
                        tar.file(path, e.mode, e.size, &mut f)
                            .map_err(|err| Error::io(&e.abs, err))?;
                    }
                }
            },
        }
    }
    Ok(())
}

/// The canonical form of a `.pyc` input, or `None` when the rule leaves it alone.
fn rewrite_pyc(e: &Entry, pyc: Pyc<'_>, epoch: u64) -> Option<Result<Vec<u8>>> {
    let name = e.name();
    if !name.ends_with(b".pyc") || e.size < 16 {
        return None;
    }
    let dir = e.rel.get(..e.rel.len() - name.len() - 1)?;
    let pkg = dir
        .strip_suffix(b"/__pycache__")
        .or_else(|| (dir == b"__pycache__").then_some(&b""[..]))?;
    let module = name.split(|&b| b == b'.').next()?;
    let mut source_rel = pkg.to_vec();
    if !source_rel.is_empty() {
        source_rel.push(b'/');
    }
    source_rel.extend_from_slice(module);
    source_rel.extend_from_slice(b".py");
    let source = pyc.by_rel.get(&source_rel[..])?;
    let in_site = source_rel.get(pyc.site.len()..)?;
    let in_site = std::str::from_utf8(in_site.strip_prefix(b"/").unwrap_or(in_site)).ok()?;
    let data = match std::fs::read(&e.abs) {
        Ok(d) => d,
        Err(err) => return Some(Err(Error::io(&e.abs, err))),
    };
    python::canonical_pyc(&data, in_site, source.mtime, source.size, epoch).map(Ok)
}

fn sort_items(items: &mut [(Vec<u8>, Item<'_>)]) {
    items.sort_by_cached_key(|(p, item)| {
        let mut k = p.clone();
        let is_dir = matches!(
            item,
            Item::Dir(_)
                | Item::Input(
                    Entry {
                        kind: Kind::Dir,
                        ..
                    },
                    _
                )
        );
        if is_dir {
            k.push(b'/');
        }
        k
    });
}

pub(super) fn write_block(
    out: &OciDir,
    plan: &BlockPlan,
    entries: &[Entry],
    by_rel: &HashMap<&[u8], &Entry>,
    epoch: u64,
) -> Result<(Digest, u64)> {
    let pyc = plan.python.as_ref().map(|py| Pyc {
        site: &py.site_packages,
        by_rel,
    });
    let items: Vec<(Vec<u8>, Item<'_>)> = plan
        .entries
        .iter()
        .map(|(p, i)| (p.clone(), Item::Input(&entries[*i], pyc)))
        .collect();
    let mut tar = CanonicalTar::new(out.blob_writer()?, epoch);
    write_items(&mut tar, &items, epoch)?;
    let writer = tar.finish().map_err(|e| Error::io(out.root(), e))?;
    Ok(writer.commit()?)
}

/// Directory entries for the components of `dest` above it.
pub(super) fn parent_dirs(dest: &str) -> Vec<(Vec<u8>, Item<'static>)> {
    let mut items = Vec::new();
    let mut prefix = String::new();
    for component in dest.split('/').filter(|c| !c.is_empty()) {
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(component);
        if prefix.len() < dest.len() {
            items.push((prefix.clone().into_bytes(), Item::Dir(0o755)));
        }
    }
    items
}

/// Writes items as a canonical, canonically gzipped layer; returns its digest,
/// size and diff ID.
pub(super) fn write_layer(
    out: &OciDir,
    items: &mut [(Vec<u8>, Item<'_>)],
    epoch: u64,
) -> Result<(Digest, u64, Digest)> {
    sort_items(items);
    let blob = out.blob_writer()?;
    let gz = ParallelGz::for_layers(blob).map_err(|e| Error::io(out.root(), e))?;
    let mut tar = CanonicalTar::new(HashingWriter::new(gz), epoch);
    write_items(&mut tar, items, epoch)?;
    let (diff_id, gz) = tar.finish().map_err(|e| Error::io(out.root(), e))?.finish();
    let blob = gz.finish().map_err(|e| Error::io(out.root(), e))?;
    let (digest, size) = blob.commit()?;
    Ok((digest, size, diff_id))
}

/// Writes the materialization of the stub layer `stub` (`spec/fallback.md`)
/// as a canonically gzipped layer; returns its digest, size and diff ID.
pub(super) fn write_materialized(
    out: &OciDir,
    stub: &Digest,
    size: u64,
    blocks: &mut LayoutBlocks<'_>,
) -> Result<(Digest, u64, Digest)> {
    let mut blob = out.open_blob(stub, Some(size))?;
    let (diff_id, written) = oci_blocks_core::expand::write_materialized_gzip(
        &mut blob,
        oci_blocks_core::names::IMPORT_LAYER_TAR_GZIP,
        blocks,
        out.blob_writer()?,
        &format!("stub layer {stub}"),
    )?;
    let (digest, size) = written.commit()?;
    Ok((digest, size, diff_id))
}

/// Which adds share a layer: each add alone, unless `max_layers` asks for fewer
/// layers, in which case the bottom adds are merged into one. Base layers are
/// never merged: they stay shared, byte for byte, with the base image.
pub(super) fn layer_groups(
    max_layers: Option<usize>,
    base: usize,
    adds: usize,
) -> Result<Vec<std::ops::Range<usize>>> {
    let singles = || (0..adds).map(|i| i..i + 1).collect();
    let Some(max) = max_layers else {
        return Ok(singles());
    };
    let needed = base + usize::from(adds > 0);
    if max < needed {
        return Err(Error::option(
            format!("--max-layers {max}"),
            format!(
                "the base image has {base} layers, which are kept as they are, and the added layers need at least one more: the cap can be at least {needed}"
            ),
        ));
    }
    let room = max - base;
    if adds <= room {
        return Ok(singles());
    }
    let first = adds - room + 1;
    Ok(std::iter::once(0..first)
        .chain((first..adds).map(|i| i..i + 1))
        .collect())
}

/// The entries of one layer, merged from several adds as the layers would have
/// stacked: a later path replaces an earlier one (and its subtree when the
/// types differ), and an import replaces what the earlier adds had at its path.
#[derive(Default)]
pub(super) struct Merged<'a> {
    items: BTreeMap<Vec<u8>, Item<'a>>,
}

impl<'a> Merged<'a> {
    fn is_dir(item: &Item<'_>) -> bool {
        matches!(
            item,
            Item::Dir(_)
                | Item::Input(
                    Entry {
                        kind: Kind::Dir,
                        ..
                    },
                    _
                )
        )
    }

    fn remove_subtree(&mut self, path: &[u8]) {
        let mut prefix = path.to_vec();
        prefix.push(b'/');
        let below: Vec<Vec<u8>> = self
            .items
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for k in below {
            self.items.remove(&k);
        }
    }

    pub(super) fn add(&mut self, items: Vec<(Vec<u8>, Item<'a>)>, dest: &str) -> Result<()> {
        for (path, item) in items {
            // A path at or below an import of an earlier add would modify the
            // imported tree, which one layer cannot express.
            let into_import = self.items.values().any(|existing| match existing {
                Item::Import(_, target) => {
                    plan::is_under(&path, target) && !matches!(item, Item::Import(..))
                }
                _ => false,
            });
            if into_import {
                return Err(Error::option(
                    format!("--max-layers (merging the layer of {dest})"),
                    format!(
                        "{} would change a tree an earlier layer imports; raise the cap",
                        String::from_utf8_lossy(&path)
                    ),
                ));
            }
            if let Item::Import(_, target) = &item {
                self.items.remove(target);
                self.remove_subtree(target);
            }
            if let Some(existing) = self.items.get(&path) {
                if !(Self::is_dir(existing) && Self::is_dir(&item)) {
                    self.remove_subtree(&path);
                }
            }
            self.items.insert(path, item);
        }
        Ok(())
    }

    pub(super) fn into_vec(self) -> Vec<(Vec<u8>, Item<'a>)> {
        self.items.into_iter().collect()
    }
}
