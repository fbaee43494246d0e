//! A stub layer's materialization: the layer a legacy manifest carries in
//! its place (`spec/fallback.md`, "Materialized layers").
//!
//! The stub's entries are copied byte for byte, each with the extension
//! headers before it, except import entries: each is replaced, at its
//! position, by the entries it materializes ([`block::plan`]), written in the
//! canonical tar form with the block's metadata ([`canonical`]). The archive
//! ends with two zero blocks. The result is a pure function of the stub and
//! the blocks it names, so a builder that writes it, a validator that checks
//! a legacy layer against it and an unpacker that checks the legacy manifest
//! it was offered all compute the same bytes, and the same diff ID.
//!
//! The stub streams: nothing of it is held beyond one entry's headers, and
//! block contents are read from wherever a [`BlockContent`] keeps them.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use crate::block::{self, BlockIndex, BlockShape, EntryMeta, Placed};
use crate::canonical::{self, CanonicalTar, Meta};
use crate::digest::{Algorithm, Digest, DigestReader, HashingWriter};
use crate::entry::{self, Kind, Role};
use crate::import::ImportEntry;
use crate::layout::OciDir;
use crate::limits::Limits;
use crate::names::{Compression, MAX_IMPORT_SIZE, tar_compression};
use crate::{Error, Result};

/// Where an expansion reads blocks from.
pub trait BlockContent {
    /// The entries of block `digest`.
    fn index(&mut self, digest: &Digest) -> Result<Arc<BlockIndex>>;
    /// The content of `entry`, a regular file of block `digest`.
    fn open(&mut self, digest: &Digest, entry: &EntryMeta) -> Result<Box<dyn Read + '_>>;
}

/// What an expansion wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expanded {
    /// Entries of the stub copied as they are.
    pub copied: u64,
    /// Import entries replaced.
    pub imports: u64,
    /// Entries written in their place.
    pub materialized: u64,
}

fn malformed(what: &str, reason: impl std::fmt::Display) -> Error {
    Error::Malformed {
        what: what.to_string(),
        reason: reason.to_string(),
    }
}

/// The stream state shared by the reader tapping the stub and the writer of
/// materialized entries: bytes of the stub below `end` are copied when
/// `copy` is set and dropped otherwise; bytes past it wait in `pending`
/// until the entry they belong to is known.
struct Shared<'w> {
    out: &'w mut dyn Write,
    pos: u64,
    end: u64,
    copy: bool,
    pending: Vec<u8>,
}

struct Tap<'s, 'w, R> {
    inner: R,
    shared: &'s RefCell<Shared<'w>>,
}

impl<R: Read> Read for Tap<'_, '_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut s = self.shared.borrow_mut();
        let below = (s.end.saturating_sub(s.pos)).min(n as u64) as usize;
        if s.copy {
            s.out.write_all(&buf[..below])?;
        }
        s.pending.extend_from_slice(&buf[below..n]);
        s.pos += n as u64;
        Ok(n)
    }
}

struct Out<'s, 'w>(&'s RefCell<Shared<'w>>);

impl Write for Out<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.borrow_mut().out.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.borrow_mut().out.flush()
    }
}

/// Writes the materialization of the uncompressed stub layer `stub` to
/// `out`; `subject` names the layer in errors. The imports may materialize
/// what `limits` allow ([`Limits::check_import_bytes`]), counted from
/// `budget` (what earlier layers of the image materialized), which is
/// updated.
pub fn expand(
    stub: impl Read,
    blocks: &mut dyn BlockContent,
    out: &mut dyn Write,
    subject: &str,
    limits: &Limits,
    budget: &mut ImportBudget,
) -> Result<Expanded> {
    let shared = RefCell::new(Shared {
        out,
        pos: 0,
        end: 0,
        copy: false,
        pending: Vec::new(),
    });
    let mut done = Expanded::default();
    let mut tar = CanonicalTar::new(Out(&shared), 0);
    let mut archive = tar::Archive::new(Tap {
        inner: stub,
        shared: &shared,
    });
    let io_err = |e: io::Error| malformed(subject, format!("not a readable tar: {e}"));
    for entry in archive.entries().map_err(io_err)? {
        let mut entry = entry.map_err(io_err)?;
        crate::tarcheck::check_entry(&mut entry).map_err(io_err)?;
        let raw = entry.path_bytes().into_owned();
        let name = entry::clean(&raw);
        let kind = entry::kind(entry.header().entry_type())
            .map_err(|why| malformed(subject, format!("entry {}: {why}", name.display())))?;
        let target_name = match entry::role(&name) {
            Role::Import(Ok(n)) if kind == Kind::File => Some(n),
            _ => None,
        };
        let end = entry
            .raw_file_position()
            .saturating_add(entry.size())
            .div_ceil(512)
            .saturating_mul(512);
        {
            let mut s = shared.borrow_mut();
            let headers = std::mem::take(&mut s.pending);
            if target_name.is_none() {
                s.out.write_all(&headers).map_err(io_err)?;
            }
            s.end = end;
            s.copy = target_name.is_none();
        }
        let Some(target_name) = target_name else {
            done.copied += 1;
            continue;
        };
        let esubject = format!("{subject}: entry {}", name.display());
        if entry.size() > MAX_IMPORT_SIZE {
            return Err(malformed(
                &esubject,
                format!("more than {MAX_IMPORT_SIZE} bytes"),
            ));
        }
        let header = (
            entry.header().uid().unwrap_or(0),
            entry.header().gid().unwrap_or(0),
            entry.header().mtime().unwrap_or(0),
        );
        let mut content = Vec::new();
        entry.read_to_end(&mut content).map_err(io_err)?;
        let import = ImportEntry::parse(&content).map_err(|e| malformed(&esubject, e))?;
        let target = entry::join(name.parent(), &target_name);
        let index = blocks.index(import.digest())?;
        let (items, bytes) = block::plan(&index, import.source_in_block().as_bytes())
            .map_err(|e| malformed(&esubject, format!("{e} [{}]", e.rule())))?;
        budget
            .add(
                limits,
                import.digest(),
                index.content_bytes(),
                bytes,
                items.len() as u64,
            )
            .map_err(|e| {
                malformed(
                    &esubject,
                    format!("{e} [{}]", crate::validate::Rule::LimitExceeded),
                )
            })?;
        for item in &items {
            let path = entry::join(&target, &item.rel);
            let (kind, meta, link) = header_of(item, header, &target, &items);
            let written = match item.placed {
                Placed::File(f) => {
                    let mut reader = blocks.open(import.digest(), f)?;
                    tar.entry(kind, &path, &meta, &[], Some((f.size, &mut reader)))
                }
                _ => tar.entry(kind, &path, &meta, &link, None),
            };
            written.map_err(|e| {
                malformed(
                    &esubject,
                    format!("writing {}: {e}", entry::clean(&path).display()),
                )
            })?;
            done.materialized += 1;
        }
        done.imports += 1;
    }
    let rest = archive.into_inner();
    crate::tarcheck::check_end(rest).map_err(io_err)?;
    let mut s = shared.borrow_mut();
    s.pending.clear();
    s.out.write_all(&[0u8; 1024]).map_err(io_err)?;
    s.out.flush().map_err(io_err)?;
    Ok(done)
}

/// The header of a materialized entry: its type, its metadata (the block's,
/// or for an implied directory 0755 with the import entry's `header`), and
/// its link target.
fn header_of<'b>(
    item: &block::Item<'b>,
    header: (u64, u64, u64),
    target: &[u8],
    items: &[block::Item<'_>],
) -> (canonical::Kind, Meta<'b>, Vec<u8>) {
    let meta = |m: &'b EntryMeta| Meta {
        mode: m.mode,
        uid: m.uid,
        gid: m.gid,
        mtime: m.mtime,
        xattrs: &m.xattrs,
    };
    match item.placed {
        Placed::Dir(Some(m)) => (canonical::Kind::Dir, meta(m), Vec::new()),
        Placed::Dir(None) => (
            canonical::Kind::Dir,
            Meta {
                mode: 0o755,
                uid: header.0,
                gid: header.1,
                mtime: header.2,
                xattrs: &[],
            },
            Vec::new(),
        ),
        Placed::Symlink(m) => (
            canonical::Kind::Symlink,
            meta(m),
            m.link.as_ref().map(|l| l.0.clone()).unwrap_or_default(),
        ),
        Placed::File(f) => (canonical::Kind::File, meta(f), Vec::new()),
        Placed::Link(leader, f) => (
            canonical::Kind::HardLink,
            meta(f),
            entry::join(target, &items[leader].rel),
        ),
    }
}

/// What an image's imports have materialized so far, against
/// [`Limits::check_import_bytes`].
#[derive(Clone, Debug, Default)]
pub struct ImportBudget {
    /// Bytes materialized.
    pub materialized: u64,
    /// Entries materialized.
    pub entries: u64,
    /// Content bytes of the distinct blocks imported.
    pub content: u64,
    blocks: std::collections::HashSet<Digest>,
}

impl ImportBudget {
    /// Counts an import of `bytes` in `entries` entries from block `digest`
    /// (whose files hold `content` bytes), failing when it takes the image
    /// past its bounds.
    pub fn add(
        &mut self,
        limits: &Limits,
        digest: &Digest,
        content: u64,
        bytes: u64,
        entries: u64,
    ) -> std::result::Result<(), crate::limits::Exceeded> {
        let content = if self.blocks.contains(digest) {
            self.content
        } else {
            self.content + content
        };
        let total = self.materialized + bytes;
        limits.check_import_bytes(total, content)?;
        let entries = self.entries.saturating_add(entries);
        limits.check_import_entries(entries)?;
        self.entries = entries;
        self.blocks.insert(digest.clone());
        self.content = content;
        self.materialized = total;
        Ok(())
    }
}

/// The layer a legacy manifest carries for the stub layer `stub` (its blob,
/// of `media_type`), as this project writes it: the materialization,
/// compressed with [`crate::gzip::ParallelGz::for_layers`], written to
/// `out`. Returns the materialization's diff ID and `out`. The builder's
/// legacy layers are made by it, so an offline bundle can leave them out
/// and its loader make them again (`spec/deltas.md`).
pub fn write_materialized_gzip<W: Write>(
    stub: &mut crate::digest::VerifyingReader<File>,
    media_type: &str,
    blocks: &mut dyn BlockContent,
    out: W,
    subject: &str,
) -> Result<(Digest, W)> {
    let mut decoded = decompressed_layer(stub, media_type)?;
    let gz = crate::gzip::ParallelGz::for_layers(out).map_err(|e| Error::io(subject, e))?;
    let mut hashing = HashingWriter::new(gz);
    expand(
        &mut decoded,
        blocks,
        &mut hashing,
        subject,
        &Limits::default(),
        &mut ImportBudget::default(),
    )?;
    drop(decoded);
    let (diff_id, gz) = hashing.finish();
    let out = gz.finish().map_err(|e| Error::io(subject, e))?;
    Ok((diff_id, out))
}

/// The diff ID of a stub layer's materialization.
pub fn expanded_diff_id(
    stub: impl Read,
    blocks: &mut dyn BlockContent,
    subject: &str,
    limits: &Limits,
    budget: &mut ImportBudget,
) -> Result<Digest> {
    let mut h = HashingWriter::new(io::sink());
    expand(stub, blocks, &mut h, subject, limits, budget)?;
    Ok(h.finish().0)
}

/// A block of an OCI layout, indexed: its uncompressed tar (the blob itself,
/// or a decompressed copy) and where each regular file's content starts.
struct LayoutBlock {
    index: Arc<BlockIndex>,
    file: File,
    offsets: HashMap<Vec<u8>, u64>,
    _spool: Option<tempfile::NamedTempFile>,
}

/// The blocks a manifest declares, read from an OCI layout (verified as they
/// are indexed).
pub struct LayoutBlocks<'a> {
    dir: &'a OciDir,
    declared: HashMap<Digest, (String, u64)>,
    loaded: HashMap<Digest, LayoutBlock>,
}

impl<'a> LayoutBlocks<'a> {
    /// The blocks `declared` (digest to media type and size) of `dir`.
    pub fn new(dir: &'a OciDir, declared: HashMap<Digest, (String, u64)>) -> Self {
        LayoutBlocks {
            dir,
            declared,
            loaded: HashMap::new(),
        }
    }

    fn load(&mut self, digest: &Digest) -> Result<&LayoutBlock> {
        if !self.loaded.contains_key(digest) {
            let block = self.read(digest)?;
            self.loaded.insert(digest.clone(), block);
        }
        self.loaded
            .get(digest)
            .ok_or_else(|| malformed(&format!("block {digest}"), "not loaded"))
    }

    fn read(&self, digest: &Digest) -> Result<LayoutBlock> {
        let what = format!("block {digest}");
        let (media_type, size) = self.declared.get(digest).ok_or_else(|| {
            malformed(
                &what,
                format!(
                    "not declared in the manifest's blocks [{}]",
                    crate::validate::Rule::ImportUndeclaredDigest
                ),
            )
        })?;
        let compression = tar_compression(media_type)
            .ok_or_else(|| malformed(&what, format!("media type {media_type} is not a tar")))?;
        // Verified first, whole: what is indexed is what the digest names.
        let mut blob = self.dir.open_blob(digest, Some(*size))?;
        let spool = match compression {
            Compression::None => {
                io::copy(&mut blob, &mut io::sink())
                    .map_err(|e| Error::io(self.dir.blob_path(digest), e))?;
                None
            }
            Compression::Gzip | Compression::Zstd => {
                let mut tmp = tempfile::NamedTempFile::new()
                    .map_err(|e| Error::io(std::env::temp_dir(), e))?;
                let mut decoded: Box<dyn Read> = match compression {
                    Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(&mut blob)),
                    _ => Box::new(
                        zstd::stream::read::Decoder::new(&mut blob)
                            .map_err(|e| malformed(&what, format!("zstd: {e}")))?,
                    ),
                };
                io::copy(&mut decoded, tmp.as_file_mut()).map_err(|e| malformed(&what, e))?;
                drop(decoded);
                io::copy(&mut blob, &mut io::sink())
                    .map_err(|e| Error::io(self.dir.blob_path(digest), e))?;
                Some(tmp)
            }
        };
        blob.finish()
            .map_err(|e| match crate::digest::verification_error(&e) {
                Some(inner) => malformed(&what, inner),
                None => Error::io(self.dir.blob_path(digest), e),
            })?;
        let file = match &spool {
            Some(t) => t.reopen().map_err(|e| Error::io(t.path(), e))?,
            None => File::open(self.dir.blob_path(digest))
                .map_err(|e| Error::io(self.dir.blob_path(digest), e))?,
        };
        let (index, offsets) = index_tar(&file, &what)?;
        Ok(LayoutBlock {
            index: Arc::new(index),
            file,
            offsets,
            _spool: spool,
        })
    }
}

/// Indexes an uncompressed block tar: its entries and where each regular
/// file's content starts. A block that breaks the rules for blocks is refused.
pub fn index_tar(file: &File, what: &str) -> Result<(BlockIndex, HashMap<Vec<u8>, u64>)> {
    let mut archive = tar::Archive::new(file);
    let mut entries = Vec::new();
    let mut offsets = HashMap::new();
    let mut shape = BlockShape::default();
    let io_err = |e: io::Error| malformed(what, format!("not a readable tar: {e}"));
    for entry in archive.entries().map_err(io_err)? {
        let mut entry = entry.map_err(io_err)?;
        crate::tarcheck::check_entry(&mut entry).map_err(io_err)?;
        let raw = entry.path_bytes().into_owned();
        let kind = entry::kind(entry.header().entry_type());
        let link = entry.link_name_bytes().map(|l| l.into_owned());
        shape.add(&raw, kind.clone(), link.as_deref());
        let Ok(kind) = kind else { continue };
        if kind == Kind::GlobalHeader {
            continue;
        }
        let meta = EntryMeta::of(&mut entry, kind).map_err(io_err)?;
        if kind == Kind::File {
            offsets.insert(meta.path.0.clone(), entry.raw_file_position());
        }
        entries.push(meta);
    }
    if let Some(p) = shape.finish().into_iter().next() {
        return Err(malformed(what, p));
    }
    Ok((BlockIndex::new(entries), offsets))
}

/// Reads `len` bytes of a file from `offset`, without moving a cursor.
struct At<'f> {
    file: &'f File,
    offset: u64,
    left: u64,
}

impl Read for At<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.left as usize);
        let n = self.file.read_at(&mut buf[..want], self.offset)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "block content cut short",
            ));
        }
        self.offset += n as u64;
        self.left -= n as u64;
        Ok(n)
    }
}

impl BlockContent for LayoutBlocks<'_> {
    fn index(&mut self, digest: &Digest) -> Result<Arc<BlockIndex>> {
        Ok(self.load(digest)?.index.clone())
    }

    fn open(&mut self, digest: &Digest, entry: &EntryMeta) -> Result<Box<dyn Read + '_>> {
        let block = self.load(digest)?;
        let offset = *block.offsets.get(&entry.path.0).ok_or_else(|| {
            malformed(
                &format!("block {digest}"),
                format!("no file {}", String::from_utf8_lossy(&entry.path.0)),
            )
        })?;
        Ok(Box::new(At {
            file: &block.file,
            offset,
            left: entry.size,
        }))
    }
}

/// Opens a layer of the layout decompressed, hashing the decompressed stream.
pub fn open_layer<'a>(
    blob: &'a mut crate::digest::VerifyingReader<File>,
    media_type: &str,
) -> Result<DigestReader<Box<dyn Read + 'a>>> {
    Ok(DigestReader::new(
        decompressed_layer(blob, media_type)?,
        Algorithm::Sha256,
    ))
}

/// Opens a layer of the layout decompressed, for a reader that has no use
/// for its diff ID (one already checked): [`open_layer`] without the hash.
pub fn decompressed_layer<'a>(
    blob: &'a mut crate::digest::VerifyingReader<File>,
    media_type: &str,
) -> Result<Box<dyn Read + 'a>> {
    Ok(match tar_compression(media_type) {
        Some(Compression::None) => Box::new(blob),
        Some(Compression::Gzip) => Box::new(flate2::read::MultiGzDecoder::new(blob)),
        Some(Compression::Zstd) => Box::new(
            zstd::stream::read::Decoder::new(blob)
                .map_err(|e| malformed(media_type, format!("zstd: {e}")))?,
        ),
        None => return Err(malformed(media_type, "not a tar media type")),
    })
}

/// The entries of an uncompressed tar as comparable records: path, type,
/// mode, owner, time, link target, extended attributes and content digest.
fn records(stream: impl Read) -> io::Result<Vec<(Vec<u8>, String)>> {
    let mut archive = tar::Archive::new(stream);
    let mut out = Vec::new();
    for e in archive.entries()? {
        let mut e = e?;
        let h = e.header().clone();
        let xattrs = entry::xattrs(&mut e)?;
        let link = e
            .link_name_bytes()
            .map(|l| String::from_utf8_lossy(&l).into_owned());
        let path = entry::clean(&e.path_bytes()).path;
        let mut hashing = HashingWriter::new(io::sink());
        io::copy(&mut e, &mut hashing)?;
        out.push((
            path,
            format!(
                "type {:?}, mode {:o}, owner {}:{}, mtime {}, link {:?}, xattrs {:?}, content {}",
                h.entry_type(),
                h.mode().unwrap_or(0),
                h.uid().unwrap_or(0),
                h.gid().unwrap_or(0),
                h.mtime().unwrap_or(0),
                link,
                xattrs.iter().map(|(k, _)| k).collect::<Vec<_>>(),
                hashing.finish().0
            ),
        ));
    }
    Ok(out)
}

/// The first entry at which two uncompressed tars differ, described, or
/// `None` when they hold the same entries.
pub fn first_difference(expected: impl Read, found: impl Read) -> io::Result<Option<String>> {
    let (a, b) = (records(expected)?, records(found)?);
    for i in 0..a.len().max(b.len()) {
        let shown = |p: &[u8]| String::from_utf8_lossy(p).into_owned();
        match (a.get(i), b.get(i)) {
            (Some(x), Some(y)) if x == y => continue,
            (Some((pa, ma)), Some((pb, mb))) if pa == pb => {
                return Ok(Some(format!(
                    "at {}: materialized {ma}, legacy {mb}",
                    shown(pa)
                )));
            }
            (Some((pa, _)), Some((pb, _))) => {
                return Ok(Some(format!(
                    "entry {i}: materialized {}, legacy {}",
                    shown(pa),
                    shown(pb)
                )));
            }
            (Some((pa, _)), None) => {
                return Ok(Some(format!(
                    "at {}: missing from the legacy layer",
                    shown(pa)
                )));
            }
            (None, Some((pb, _))) => {
                return Ok(Some(format!("at {}: only in the legacy layer", shown(pb))));
            }
            (None, None) => break,
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks kept in memory, for tests.
    type Contents = HashMap<Vec<u8>, Vec<u8>>;
    struct Mem(HashMap<Digest, (Arc<BlockIndex>, Contents)>);

    impl BlockContent for Mem {
        fn index(&mut self, digest: &Digest) -> Result<Arc<BlockIndex>> {
            Ok(self.0[digest].0.clone())
        }
        fn open(&mut self, digest: &Digest, entry: &EntryMeta) -> Result<Box<dyn Read + '_>> {
            Ok(Box::new(&self.0[digest].1[&entry.path.0][..]))
        }
    }

    fn file(path: &str, size: u64) -> EntryMeta {
        EntryMeta {
            path: block::Name(path.as_bytes().to_vec()),
            kind: Kind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 1,
            size,
            link: None,
            xattrs: Vec::new(),
        }
    }

    #[test]
    fn imports_are_replaced_in_place_and_the_rest_is_copied_byte_for_byte() -> anyhow::Result<()> {
        let jar = Digest::sha256(b"the jar block");
        let mem = HashMap::from([(
            jar.clone(),
            (
                Arc::new(BlockIndex::new(vec![file("lib.jar", 3)])),
                HashMap::from([(b"lib.jar".to_vec(), b"JAR".to_vec())]),
            ),
        )]);
        let mut stub = tar::Builder::new(Vec::new());
        let mut add = |path: &str, content: &[u8]| -> io::Result<()> {
            let mut h = tar::Header::new_gnu();
            h.set_size(content.len() as u64);
            h.set_mode(0o600);
            h.set_uid(7);
            h.set_mtime(12345);
            h.set_cksum();
            stub.append_data(&mut h, path, content)
        };
        add("app/before", b"b")?;
        add(
            "app/.import.lib.jar",
            format!("/lib.jar from {jar}\n").as_bytes(),
        )?;
        add(&format!("app/{}", "long".repeat(40)), b"after")?;
        let stub = stub.into_inner()?;
        let mut out = Vec::new();
        let done = expand(
            &stub[..],
            &mut Mem(mem),
            &mut out,
            "stub",
            &Limits::default(),
            &mut ImportBudget::default(),
        )?;
        assert_eq!((done.copied, done.imports, done.materialized), (2, 1, 1));
        let mut a = tar::Archive::new(&out[..]);
        let got: Vec<(String, Vec<u8>, u64)> = a
            .entries()?
            .map(|e| {
                let mut e = e?;
                let mut c = Vec::new();
                e.read_to_end(&mut c)?;
                Ok((
                    String::from_utf8_lossy(&e.path_bytes()).into_owned(),
                    c,
                    e.header().uid()?,
                ))
            })
            .collect::<io::Result<_>>()?;
        assert_eq!(got[0], ("app/before".into(), b"b".to_vec(), 7));
        assert_eq!(got[1], ("app/lib.jar".into(), b"JAR".to_vec(), 0));
        assert_eq!(got[2].1, b"after");
        // The copied entries are the stub's bytes: the first entry, and the
        // long name's GNU header with its entry, appear unchanged.
        assert_eq!(&out[..1024], &stub[..1024]);
        assert!(out.ends_with(&[0u8; 1024]));
        assert_eq!(out.len() % 512, 0);
        Ok(())
    }
}
