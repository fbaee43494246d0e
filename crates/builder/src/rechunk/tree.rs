//! An image's final tree, computed from its layers' tar streams without
//! extracting them, and the layers rewritten without chosen entries.
//!
//! Names are cleaned and entries classified by [`oci_blocks_core::entry`], as
//! every other reader of the project does. Whiteouts and opaque directories
//! apply to lower layers only (image-spec `layer.md`), and a later entry
//! replaces an earlier one at its path, with its subtree unless both are
//! directories. Each node remembers which layer and which entry of it wrote
//! it, so that a second pass over the same streams finds the same entry.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use oci_blocks_core::Digest;
use oci_blocks_core::digest::HashingWriter;
use oci_blocks_core::entry::{self, Kind, Role, parent};
use oci_blocks_core::expand::decompressed_layer;
use oci_blocks_core::gzip::ParallelGz;
use oci_blocks_core::layout::OciDir;
use oci_blocks_core::limits::Limits;
use rayon::prelude::*;

use crate::{Error, Result};

/// Entries the final tree of one image may hold; more is refused, naming
/// the limit, so that a hostile image costs bounded memory.
pub const MAX_ENTRIES: usize = 4_000_000;

/// A layer of the source image.
#[derive(Clone, Debug)]
pub struct Layer {
    /// Its digest.
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Its size.
    pub size: u64,
}

/// What is at one path of the final tree, and which entry put it there.
#[derive(Clone, Debug)]
pub struct Node {
    /// The layer (0 is the bottom one).
    pub layer: usize,
    /// The entry's position in that layer's tar stream.
    pub ordinal: usize,
    /// Its type.
    pub kind: Kind,
    /// Size in bytes (regular files).
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Owner and group.
    pub owner: (u64, u64),
    /// Modification time, seconds.
    pub mtime: u64,
    /// A hard link entry names it, or it is one.
    pub linked: bool,
    /// It carries extended attributes.
    pub xattrs: bool,
    /// A symbolic link's target.
    pub target: Option<Vec<u8>>,
}

/// The final tree: every path (cleaned, relative to the root) and its node.
pub type Tree = BTreeMap<Vec<u8>, Node>;

fn remove_below(tree: &mut Tree, dir: &[u8], lower_than: usize, with_dir: bool) {
    let mut prefix = dir.to_vec();
    if !prefix.is_empty() {
        prefix.push(b'/');
    }
    let below: Vec<Vec<u8>> = tree
        .range(prefix.clone()..)
        .take_while(|(k, _)| k.starts_with(&prefix))
        .filter(|(_, n)| n.layer < lower_than)
        .map(|(k, _)| k.clone())
        .collect();
    for k in below {
        tree.remove(&k);
    }
    if with_dir && tree.get(dir).is_some_and(|n| n.layer < lower_than) {
        tree.remove(dir);
    }
}

fn layer_error(image: &str, layer: &Layer, reason: impl std::fmt::Display) -> Error {
    Error::Image {
        image: image.to_string(),
        reason: format!("layer {}: {reason}", layer.digest),
    }
}

/// Calls `each(ordinal, entry)` for every entry of `layer`, decompressed,
/// with the expansion bound of [`Limits`] enforced.
fn for_each_entry(
    dir: &OciDir,
    image: &str,
    layer: &Layer,
    mut each: impl FnMut(usize, &mut tar::Entry<'_, &mut dyn Read>) -> Result<()>,
) -> Result<()> {
    let limits = Limits::default();
    let bound = limits
        .expansion_floor
        .saturating_add(limits.expansion_ratio.saturating_mul(layer.size));
    let mut blob = dir.open_blob(&layer.digest, Some(layer.size))?;
    // The source was validated whole, diff IDs included: this pass needs
    // only the entries.
    let mut stream = decompressed_layer(&mut blob, &layer.media_type)?;
    let reader: &mut dyn Read = &mut stream;
    let mut archive = tar::Archive::new(reader);
    let mut expanded: u64 = 0;
    let entries = archive
        .entries()
        .map_err(|e| layer_error(image, layer, e))?;
    for (ordinal, e) in entries.enumerate() {
        let mut e = e.map_err(|e| layer_error(image, layer, e))?;
        expanded = expanded.saturating_add(512 + e.size());
        if expanded > bound {
            return Err(layer_error(
                image,
                layer,
                format!(
                    "expands beyond {} (--max-expansion {} times its size plus {})",
                    oci_blocks_core::limits::human(bound),
                    limits.expansion_ratio,
                    oci_blocks_core::limits::human(limits.expansion_floor)
                ),
            ));
        }
        each(ordinal, &mut e)?;
    }
    Ok(())
}

/// A regular file larger than this is never kept by [`final_tree`].
pub const MAX_KEPT_FILE: u64 = 64 << 20;
/// Bytes of kept files [`final_tree`] holds in memory; more is refused,
/// naming the limit.
pub const MAX_KEPT: u64 = 512 << 20;

/// The content of the regular files [`final_tree`] kept, by the entry that
/// wrote each (layer, ordinal).
pub type Kept = HashMap<(usize, usize), Vec<u8>>;

/// The final tree of `layers`, applied bottom to top, and the content of
/// every regular file entry of at most [`MAX_KEPT_FILE`] bytes whose cleaned
/// path `keep` accepts (the package databases, read in the same pass so
/// that no layer is read again for them).
pub fn final_tree(
    dir: &OciDir,
    image: &str,
    layers: &[Layer],
    keep: &dyn Fn(&[u8]) -> bool,
) -> Result<(Tree, Kept)> {
    let mut tree = Tree::new();
    let mut kept = Kept::new();
    let mut kept_bytes: u64 = 0;
    for (i, layer) in layers.iter().enumerate() {
        let mut whiteouts: Vec<Vec<u8>> = Vec::new();
        let mut opaque: Vec<Vec<u8>> = Vec::new();
        let mut inserts: Vec<(Vec<u8>, Node, Option<Vec<u8>>)> = Vec::new();
        for_each_entry(dir, image, layer, |ordinal, e| {
            let name = entry::clean(&e.path_bytes());
            let kind = entry::kind(e.header().entry_type())
                .map_err(|r| layer_error(image, layer, format!("entry {}: {r}", name.display())))?;
            if kind == Kind::GlobalHeader {
                return Ok(());
            }
            match entry::role(&name) {
                Role::Root => {}
                Role::Opaque => opaque.push(parent(&name.path).to_vec()),
                Role::Whiteout(hidden) => {
                    if hidden.is_empty() || hidden == b"." || hidden == b".." {
                        return Err(layer_error(
                            image,
                            layer,
                            format!("entry {}: a whiteout of nothing", name.display()),
                        ));
                    }
                    whiteouts.push(entry::join(parent(&name.path), &hidden));
                }
                Role::Import(_) => {
                    return Err(layer_error(
                        image,
                        layer,
                        format!(
                            "entry {}: an import entry; rechunk takes images without blocks",
                            name.display()
                        ),
                    ));
                }
                Role::Plain => {
                    let header = e.header().clone();
                    let target = if kind == Kind::HardLink {
                        e.link_name_bytes().map(|t| entry::clean(t.as_ref()).path)
                    } else {
                        None
                    };
                    let xattrs = !entry::xattrs(e)
                        .map_err(|err| layer_error(image, layer, err))?
                        .is_empty();
                    let node = Node {
                        layer: i,
                        ordinal,
                        kind,
                        size: if kind == Kind::File { e.size() } else { 0 },
                        mode: header.mode().unwrap_or(0) & 0o7777,
                        owner: (header.uid().unwrap_or(0), header.gid().unwrap_or(0)),
                        mtime: header.mtime().unwrap_or(0),
                        linked: kind == Kind::HardLink,
                        xattrs,
                        target: if kind == Kind::Symlink {
                            e.link_name_bytes().map(|t| t.into_owned())
                        } else {
                            None
                        },
                    };
                    if kind == Kind::File && e.size() <= MAX_KEPT_FILE && keep(&name.path) {
                        kept_bytes = kept_bytes.saturating_add(e.size());
                        if kept_bytes > MAX_KEPT {
                            return Err(layer_error(
                                image,
                                layer,
                                format!(
                                    "entry {}: the package databases hold more than {}",
                                    name.display(),
                                    oci_blocks_core::limits::human(MAX_KEPT)
                                ),
                            ));
                        }
                        let mut content = Vec::with_capacity(e.size() as usize);
                        e.read_to_end(&mut content)
                            .map_err(|err| layer_error(image, layer, err))?;
                        kept.insert((i, ordinal), content);
                    }
                    inserts.push((name.path, node, target));
                }
            }
            Ok(())
        })?;
        for w in &whiteouts {
            remove_below(&mut tree, w, i, true);
        }
        for d in &opaque {
            remove_below(&mut tree, d, i, false);
        }
        for (path, node, target) in inserts {
            let replaces_dir = tree
                .get(&path)
                .is_some_and(|old| !(old.kind == Kind::Dir && node.kind == Kind::Dir));
            if replaces_dir {
                remove_below(&mut tree, &path, usize::MAX, false);
            }
            if let Some(t) = target.and_then(|t| tree.get_mut(&t)) {
                t.linked = true;
            }
            if let Some(old) = tree.insert(path, node) {
                kept.remove(&(old.layer, old.ordinal));
            }
            if tree.len() > MAX_ENTRIES {
                return Err(layer_error(
                    image,
                    layer,
                    format!("the image's tree has more than {MAX_ENTRIES} entries"),
                ));
            }
        }
    }
    // What whiteouts and later entries hid is not needed.
    let live: HashSet<(usize, usize)> = tree.values().map(|n| (n.layer, n.ordinal)).collect();
    kept.retain(|k, _| live.contains(k));
    Ok((tree, kept))
}

/// Writes the kept files among `paths` below `root`, as [`extract`] would.
pub fn write_kept(tree: &Tree, kept: &Kept, paths: &[Vec<u8>], root: &Path) -> Result<()> {
    for rel in paths {
        let Some(node) = tree.get(rel) else {
            continue;
        };
        let Some(content) = kept.get(&(node.layer, node.ordinal)) else {
            if node.size > MAX_KEPT_FILE {
                return Err(Error::Image {
                    image: String::from_utf8_lossy(rel).into_owned(),
                    reason: format!(
                        "a package database larger than {}",
                        oci_blocks_core::limits::human(MAX_KEPT_FILE)
                    ),
                });
            }
            continue;
        };
        let path = scratch_path(root, rel);
        if let Some(p) = path.parent() {
            fs::create_dir_all(p).map_err(|err| Error::io(p, err))?;
        }
        fs::write(&path, content).map_err(|err| Error::io(&path, err))?;
    }
    Ok(())
}

/// `path` with a first component that is a merged-/usr link (`bin ->
/// usr/bin`, as Debian since bookworm has them) replaced by its target:
/// where the file is in the tree.
pub fn through_usr_link(tree: &Tree, path: &[u8]) -> Vec<u8> {
    let Some(i) = path.iter().position(|&b| b == b'/') else {
        return path.to_vec();
    };
    let first = &path[..i];
    let merged = tree
        .get(first)
        .and_then(|n| n.target.as_deref())
        .is_some_and(|t| {
            let t = t.strip_prefix(b"/").unwrap_or(t);
            t.strip_prefix(b"usr/") == Some(first)
        });
    if merged {
        let mut out = b"usr/".to_vec();
        out.extend_from_slice(path);
        out
    } else {
        path.to_vec()
    }
}

/// Whether every directory above `path` is a directory of the tree (or has
/// no entry, as a layer may leave parents implicit).
pub fn parents_are_dirs(tree: &Tree, path: &[u8]) -> bool {
    let mut p = parent(path);
    while !p.is_empty() {
        if tree.get(p).is_some_and(|n| n.kind != Kind::Dir) {
            return false;
        }
        p = parent(p);
    }
    true
}

fn scratch_path(root: &Path, rel: &[u8]) -> std::path::PathBuf {
    root.join(OsStr::from_bytes(rel))
}

/// A layer written again without some of its entries: digest, size, diff ID.
pub type Rewritten = (Digest, u64, Digest);

/// A layer [`extract`] wrote without the entries it extracted (their
/// ordinals).
pub type Without = (HashSet<usize>, Rewritten);

/// Writes the regular files `wanted` (paths of `tree`) below `root`, with
/// their permission bits and modification times, reading each from the
/// entry that put it in the final tree. `root` holds nothing else, and no
/// symbolic link is ever made in it, so nothing is followed.
///
/// In the same pass, each layer that holds wanted entries is written into
/// `out` without them ([`rewrite`]): when the blocks end up owning exactly
/// those entries, which is the common case, no layer is read again for the
/// remainder. Returns that rewrite for each layer (`None` where no entry
/// was wanted), with the ordinals it left out.
pub fn extract(
    dir: &OciDir,
    image: &str,
    layers: &[Layer],
    tree: &Tree,
    wanted: &[Vec<u8>],
    root: &Path,
    out: &OciDir,
) -> Result<Vec<Option<Without>>> {
    let mut by_entry: HashMap<(usize, usize), &[u8]> = HashMap::new();
    for path in wanted {
        if let Some(n) = tree.get(path) {
            by_entry.insert((n.layer, n.ordinal), path);
        }
    }
    // Layers are read side by side: each writes its own paths, and only
    // directories, which `create_dir_all` makes whoever comes first, are
    // shared.
    let rewritten = layers
        .par_iter()
        .enumerate()
        .map(|(i, layer)| {
            let taken: HashSet<usize> = by_entry
                .keys()
                .filter(|(l, _)| *l == i)
                .map(|(_, o)| *o)
                .collect();
            if taken.is_empty() {
                return Ok(None);
            }
            let mut writer = Remainder::new(image, layer, out)?;
            for_each_entry(dir, image, layer, |ordinal, e| {
                let Some(rel) = by_entry.get(&(i, ordinal)) else {
                    return writer.append(e);
                };
                let path = scratch_path(root, rel);
                if let Some(p) = path.parent() {
                    fs::create_dir_all(p).map_err(|err| Error::io(p, err))?;
                }
                let mut file = fs::File::create_new(&path).map_err(|err| Error::io(&path, err))?;
                io::copy(e, &mut file).map_err(|err| layer_error(image, layer, err))?;
                let node = &tree[*rel];
                file.set_permissions(fs::Permissions::from_mode(node.mode))
                    .map_err(|err| Error::io(&path, err))?;
                file.set_modified(UNIX_EPOCH + Duration::from_secs(node.mtime))
                    .map_err(|err| Error::io(&path, err))?;
                Ok(())
            })?;
            Ok(Some((taken, writer.finish()?)))
        })
        .collect::<Result<Vec<_>>>()?;
    // Directories take their modes from the tree, last, so that a
    // read-only one does not stop the files below it.
    let mut dirs: Vec<&[u8]> = wanted.iter().map(|p| parent(p)).collect();
    dirs.sort_unstable();
    dirs.dedup();
    let mut done = HashSet::new();
    for mut d in dirs {
        while !d.is_empty() && done.insert(d) {
            if let Some(n) = tree.get(d).filter(|n| n.kind == Kind::Dir) {
                let path = scratch_path(root, d);
                fs::set_permissions(&path, fs::Permissions::from_mode(n.mode))
                    .map_err(|e| Error::io(&path, e))?;
            }
            d = parent(d);
        }
    }
    Ok(rewritten)
}

/// Writes `layer` again without the entries at `drop` (their ordinals), each
/// other entry with its header, extended records and content as they were
/// and its name cleaned;
/// returns the new layer's digest, size and diff ID. The output is gzip, the
/// same bytes for the same input.
pub fn rewrite(
    dir: &OciDir,
    image: &str,
    layer: &Layer,
    drop: &HashSet<usize>,
    out: &OciDir,
) -> Result<Rewritten> {
    let mut writer = Remainder::new(image, layer, out)?;
    for_each_entry(dir, image, layer, |ordinal, e| {
        if drop.contains(&ordinal) {
            return Ok(());
        }
        writer.append(e)
    })?;
    writer.finish()
}

/// A layer being written again, entry by entry ([`rewrite`]).
struct Remainder<'a> {
    image: &'a str,
    layer: &'a Layer,
    tar: tar::Builder<HashingWriter<ParallelGz<oci_blocks_core::layout::BlobWriter<'a>>>>,
}

impl<'a> Remainder<'a> {
    fn new(image: &'a str, layer: &'a Layer, out: &'a OciDir) -> Result<Self> {
        let gz = ParallelGz::for_layers(out.blob_writer()?)
            .map_err(|err| layer_error(image, layer, err))?;
        Ok(Remainder {
            image,
            layer,
            tar: tar::Builder::new(HashingWriter::new(gz)),
        })
    }

    /// Appends `e` with its header, extended records and content as they
    /// were, and its name cleaned.
    fn append(&mut self, e: &mut tar::Entry<'_, &mut dyn Read>) -> Result<()> {
        let (image, layer) = (self.image, self.layer);
        let io_err = |err: io::Error| layer_error(image, layer, err);
        let tar = &mut self.tar;
        // Names as every reader of the project cleans them (`./` kept for
        // the root): the same meaning, and no `..` for the writer to refuse.
        let mut path = entry::clean(&e.path_bytes()).path;
        if path.is_empty() {
            path = b"./".to_vec();
        }
        let link: Option<Vec<u8>> = e.link_name_bytes().map(|l| l.into_owned());
        let mut records: Vec<(String, Vec<u8>)> = Vec::new();
        if let Some(pax) = e.pax_extensions().map_err(io_err)? {
            for r in pax {
                let r = r.map_err(io_err)?;
                let key = r.key().map_err(|_| {
                    layer_error(image, layer, "a PAX record whose key is not UTF-8")
                })?;
                // The name and link target are written from the entry itself.
                if key != "path" && key != "linkpath" {
                    records.push((key.to_string(), r.value_bytes().to_vec()));
                }
            }
        }
        if !records.is_empty() {
            tar.append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), &v[..])))
                .map_err(io_err)?;
        }
        let mut header = e.header().clone();
        let path = Path::new(OsStr::from_bytes(&path));
        match link {
            Some(target) => tar
                .append_link(&mut header, path, Path::new(OsStr::from_bytes(&target)))
                .map_err(io_err)?,
            None => tar.append_data(&mut header, path, e).map_err(io_err)?,
        }
        Ok(())
    }

    fn finish(self) -> Result<Rewritten> {
        let (image, layer) = (self.image, self.layer);
        let io_err = |err: io::Error| layer_error(image, layer, err);
        let hashing = self.tar.into_inner().map_err(io_err)?;
        let (diff_id, gz) = hashing.finish();
        let blob = gz.finish().map_err(io_err)?;
        let (digest, size) = blob.commit()?;
        Ok((digest, size, diff_id))
    }
}
