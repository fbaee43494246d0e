//! The shared block store: each block verified and extracted once, kept as a
//! tree with its entries' metadata beside it, and materialized into root
//! filesystems from there.
//!
//! Layout: `DIR/blocks/<alg>/<hex>/tree/` (the extracted block, regular files
//! without write permission) and `block.json` (each entry's type, mode,
//! owner, time, size and link target as the block records them, which
//! materialization applies). A block is extracted into `DIR/tmp/` and renamed
//! into place only after its digest has been verified, so the store never
//! holds a partial or tampered block.
//!
//! A block is as untrusted as a layer. It is extracted through the same
//! in-root applier, with the rules of `spec/blocks.md` enforced as it
//! streams (no path below a non-directory, hard links that name a regular
//! file of the block), and every later read of its tree walks the recorded
//! path below an open descriptor of the tree without following any symbolic
//! link. A block extracted under an earlier `block.json` format is extracted
//! again.
//!
//! Each unpacked root filesystem is recorded in `DIR/users/` with the blocks
//! it uses and the identity (device and inode) of its directory. A root
//! filesystem that is gone, or whose path now holds another directory, no
//! longer keeps its blocks: [`BlockStore::reclaim`] removes the blocks no
//! remaining root filesystem uses. (A directory made at the same path after
//! the old one was deleted may get the old inode number back; it then still
//! counts, so the error is to keep blocks, never to remove them early.) Unpacks hold a shared lock on `DIR/lock`
//! from their first extraction until their record is written; reclaiming
//! takes it exclusively, so it never removes a block an unpack is about to
//! record.

use std::fs::{self, Permissions};
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use oci_blocks_core::Digest;
use oci_blocks_core::block::{BlockIndex, EntryMeta};
use oci_blocks_core::digest::verification_error;
use oci_blocks_core::layout::OciDir;
use oci_blocks_core::limits::{Bounded, Limits};
use oci_blocks_core::names::{Compression, tar_compression};
use pathrs::Root;

use crate::apply::Applier;
use crate::{Error, Result};

/// The format of `block.json`. A block recorded in another format (or in the
/// `entries.json` of the first one) is extracted again.
const FORMAT: u32 = 2;

#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    format: u32,
    entries: Vec<EntryMeta>,
}

/// A root filesystem recorded as using blocks of the store.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct User {
    /// The root filesystem's absolute path.
    pub rootfs: PathBuf,
    /// Device and inode of that directory when it was unpacked.
    pub dev: u64,
    /// See `dev`.
    pub ino: u64,
    /// The manifest unpacked there.
    pub manifest: String,
    /// The blocks it uses.
    pub blocks: Vec<String>,
    /// Whether the directory is still there (not serialized in the record).
    #[serde(skip)]
    pub live: bool,
}

/// What [`BlockStore::reclaim`] removed (or, dry, would remove).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Reclaimed {
    /// Root filesystems that are gone, whose records were dropped.
    pub gone: Vec<PathBuf>,
    /// Blocks no remaining root filesystem uses, with their sizes.
    pub blocks: Vec<(String, u64)>,
    /// Bytes those blocks held.
    pub bytes: u64,
}

/// A lock on the store; released when dropped.
#[derive(Debug)]
pub struct StoreLock(#[allow(dead_code)] fs::File);

/// A directory of extracted blocks shared by every image unpacked with it.
#[derive(Clone, Debug)]
pub struct BlockStore {
    dir: PathBuf,
}

/// One extracted block.
#[derive(Clone, Debug)]
pub struct Extracted {
    /// The extracted tree, open: every read walks below it without following
    /// symbolic links.
    pub tree: Arc<OwnedFd>,
    /// Its entries' metadata.
    pub index: Arc<BlockIndex>,
}

impl Extracted {
    fn new(tree: OwnedFd, entries: Vec<EntryMeta>) -> Self {
        Extracted {
            tree: Arc::new(tree),
            index: Arc::new(BlockIndex::new(entries)),
        }
    }
}

/// Opens a tar blob of `media_type` for reading, verified against its digest.
pub(crate) fn open_tar<'a>(
    blob: &'a mut oci_blocks_core::digest::VerifyingReader<fs::File>,
    media_type: &str,
    subject: &str,
) -> Result<Box<dyn Read + 'a>> {
    Ok(match tar_compression(media_type) {
        Some(Compression::None) => Box::new(blob),
        Some(Compression::Gzip) => Box::new(flate2::read::MultiGzDecoder::new(blob)),
        Some(Compression::Zstd) => Box::new(
            zstd::stream::read::Decoder::new(blob)
                .map_err(|e| Error::invalid(subject, format!("zstd: {e}")))?,
        ),
        None => {
            return Err(Error::invalid(
                subject,
                format!("media type {media_type} is not a tar this unpacker reads"),
            ));
        }
    })
}

/// Turns a verification failure surfacing as an I/O error into a clear one.
pub(crate) fn blob_error(subject: &str, e: io::Error) -> Error {
    match verification_error(&e) {
        Some(inner) => core_error(subject, inner),
        None => Error::invalid(subject, e.to_string()),
    }
}

/// A core error about `subject`, with the rule it breaks when it names one.
pub(crate) fn core_error(subject: &str, e: &oci_blocks_core::Error) -> Error {
    match e.rule() {
        Some(rule) => Error::invalid(subject, format!("{e} [{rule}]")),
        None => Error::invalid(subject, e.to_string()),
    }
}

/// Opens a blob of the layout for verified reading; a missing blob is
/// `blob.missing`.
pub(crate) fn open_blob(
    layout: &OciDir,
    digest: &Digest,
    size: u64,
    subject: &str,
) -> Result<oci_blocks_core::digest::VerifyingReader<fs::File>> {
    layout
        .open_blob(digest, Some(size))
        .map_err(|e| core_error(subject, &e))
}

impl BlockStore {
    /// Opens an existing store, for commands that only report on it or
    /// reclaim it: a directory that is not a store (a typo) is an error.
    pub fn open_existing(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        if !dir.join("blocks").is_dir() {
            return Err(Error::Option {
                option: format!("--store {}", dir.display()),
                reason: "is not a block store (no blocks directory); an unpack creates one".into(),
            });
        }
        BlockStore::open(dir)
    }

    /// Opens (creating) the store at `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        for sub in ["blocks", "tmp", "users", "expanded"] {
            fs::create_dir_all(dir.join(sub)).map_err(|e| Error::io(dir.join(sub), e))?;
        }
        Ok(BlockStore { dir })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn block_dir(&self, digest: &Digest) -> PathBuf {
        self.dir
            .join("blocks")
            .join(digest.algorithm().as_str())
            .join(digest.hex())
    }

    /// Digests of every block in the store.
    pub fn blocks(&self) -> Result<Vec<(Digest, u64)>> {
        let mut out = Vec::new();
        let root = self.dir.join("blocks");
        for alg in fs::read_dir(&root).map_err(|e| Error::io(&root, e))? {
            let alg = alg.map_err(|e| Error::io(&root, e))?;
            for b in fs::read_dir(alg.path()).map_err(|e| Error::io(alg.path(), e))? {
                let b = b.map_err(|e| Error::io(alg.path(), e))?;
                let text = format!(
                    "{}:{}",
                    alg.file_name().to_string_lossy(),
                    b.file_name().to_string_lossy()
                );
                if let Ok(d) = Digest::parse(&text) {
                    out.push((d, dir_size(&b.path())));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn lock(&self, op: rustix::fs::FlockOperation) -> Result<StoreLock> {
        let path = self.dir.join("lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        rustix::fs::flock(&file, op).map_err(|e| Error::io(&path, e.into()))?;
        Ok(StoreLock(file))
    }

    /// A shared lock: held by an unpack while it extracts blocks and until it
    /// records its root filesystem, so that no reclaim runs in between.
    pub fn lock_shared(&self) -> Result<StoreLock> {
        self.lock(rustix::fs::FlockOperation::LockShared)
    }

    fn user_path(&self, rootfs: &Path) -> PathBuf {
        let key = Digest::sha256(rootfs.as_os_str().as_encoded_bytes());
        self.dir.join("users").join(format!("{}.json", key.hex()))
    }

    /// Records that `rootfs` (an existing directory) uses `blocks`.
    pub fn record_user(&self, rootfs: &Path, manifest: &str, blocks: Vec<String>) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let rootfs = fs::canonicalize(rootfs).map_err(|e| Error::io(rootfs, e))?;
        let meta = fs::metadata(&rootfs).map_err(|e| Error::io(&rootfs, e))?;
        let user = User {
            dev: meta.dev(),
            ino: meta.ino(),
            manifest: manifest.to_string(),
            blocks,
            rootfs: rootfs.clone(),
            live: true,
        };
        let path = self.user_path(&rootfs);
        let json =
            serde_json::to_vec_pretty(&user).map_err(|e| Error::io(&path, io::Error::other(e)))?;
        let mut tmp = tempfile::NamedTempFile::new_in(self.dir.join("users"))
            .map_err(|e| Error::io(self.dir.join("users"), e))?;
        io::Write::write_all(&mut tmp, &json).map_err(|e| Error::io(&path, e))?;
        tmp.persist(&path).map_err(|e| Error::io(&path, e.error))?;
        Ok(())
    }

    /// Drops the record of `rootfs`, so its blocks can be reclaimed while it
    /// still exists. Returns whether there was one.
    pub fn forget(&self, rootfs: &Path) -> Result<bool> {
        let rootfs = fs::canonicalize(rootfs).unwrap_or_else(|_| rootfs.to_path_buf());
        let path = self.user_path(&rootfs);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    /// Every recorded root filesystem, with whether it is still there.
    pub fn users(&self) -> Result<Vec<(PathBuf, User)>> {
        use std::os::unix::fs::MetadataExt;
        let dir = self.dir.join("users");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
            let path = e.map_err(|e| Error::io(&dir, e))?.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let Ok(bytes) = fs::read(&path) else { continue };
            let Ok(mut user) = serde_json::from_slice::<User>(&bytes) else {
                tracing::warn!("{}: not a user record, ignored", path.display());
                continue;
            };
            user.live = fs::symlink_metadata(&user.rootfs)
                .is_ok_and(|m| m.is_dir() && m.dev() == user.dev && m.ino() == user.ino);
            out.push((path, user));
        }
        out.sort_by(|a, b| a.1.rootfs.cmp(&b.1.rootfs));
        Ok(out)
    }

    /// Removes the records of root filesystems that are gone and the blocks
    /// no remaining one uses, and clears abandoned extractions. With `dry_run`
    /// only reports what it would remove.
    pub fn reclaim(&self, dry_run: bool) -> Result<Reclaimed> {
        let _lock = self.lock(rustix::fs::FlockOperation::LockExclusive)?;
        let mut out = Reclaimed::default();
        let mut used = std::collections::HashSet::new();
        for (record, user) in self.users()? {
            if user.live {
                used.extend(user.blocks);
            } else {
                if !dry_run {
                    fs::remove_file(&record).map_err(|e| Error::io(&record, e))?;
                }
                out.gone.push(user.rootfs);
            }
        }
        for (digest, size) in self.blocks()? {
            if !used.contains(digest.as_str()) {
                if !dry_run {
                    self.remove(&digest)?;
                }
                out.bytes += size;
                out.blocks.push((digest.to_string(), size));
            }
        }
        if !dry_run {
            // Under the exclusive lock no extraction runs: what is in tmp/ is
            // left by one that was killed.
            let tmp = self.dir.join("tmp");
            for e in fs::read_dir(&tmp)
                .map_err(|e| Error::io(&tmp, e))?
                .flatten()
            {
                make_writable(&e.path());
                let _ = fs::remove_dir_all(e.path());
            }
        }
        Ok(out)
    }

    /// Removes a block (its tree is made writable first).
    pub fn remove(&self, digest: &Digest) -> Result<()> {
        let dir = self.block_dir(digest);
        make_writable(&dir);
        fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))
    }

    fn expanded_path(&self, stub: &Digest) -> PathBuf {
        self.dir
            .join("expanded")
            .join(stub.algorithm().as_str())
            .join(stub.hex())
    }

    /// The `diff_id` of the materialization of the stub layer whose `diff_id`
    /// is `stub`, when an earlier unpack computed it.
    pub fn expanded(&self, stub: &Digest) -> Option<Digest> {
        let text = fs::read_to_string(self.expanded_path(stub)).ok()?;
        Digest::parse(text.trim()).ok()
    }

    /// Remembers the `diff_id` of a stub layer's materialization. A failure
    /// only costs a later unpack the computation.
    pub fn record_expanded(&self, stub: &Digest, materialized: &Digest) {
        let path = self.expanded_path(stub);
        let written = (|| -> io::Result<()> {
            let parent = path.parent().unwrap_or(&self.dir);
            fs::create_dir_all(parent)?;
            let mut tmp = tempfile::NamedTempFile::new_in(parent)?;
            io::Write::write_all(&mut tmp, materialized.as_str().as_bytes())?;
            tmp.persist(&path).map_err(|e| e.error)?;
            Ok(())
        })();
        if let Err(e) = written {
            tracing::warn!("{}: not recorded: {e}", path.display());
        }
    }

    /// A block the store holds in the current format.
    fn load(&self, digest: &Digest) -> Option<Extracted> {
        let dir = self.block_dir(digest);
        let bytes = fs::read(dir.join("block.json")).ok()?;
        let record: Record = serde_json::from_slice(&bytes).ok()?;
        if record.format != FORMAT {
            return None;
        }
        let tree = crate::fsat::open_dir(&dir.join("tree")).ok()?;
        Some(Extracted::new(tree, record.entries))
    }

    /// Moves a block directory of an earlier format (or a broken one) out of
    /// the way, and removes it.
    fn discard_stale(&self, digest: &Digest) -> Result<()> {
        let dir = self.block_dir(digest);
        if fs::symlink_metadata(&dir).is_err() {
            return Ok(());
        }
        let aside = tempfile::Builder::new()
            .prefix("stale-")
            .tempdir_in(self.dir.join("tmp"))
            .map_err(|e| Error::io(self.dir.join("tmp"), e))?
            .keep();
        let gone = aside.join("block");
        match fs::rename(&dir, &gone) {
            Ok(()) => {}
            // Another unpack moved it first.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&dir, e)),
        }
        make_writable(&aside);
        let _ = fs::remove_dir_all(&aside);
        Ok(())
    }

    /// The extracted block, extracting it first (verified, within `limits`)
    /// if the store lacks it. The flag says whether it was extracted now.
    pub fn ensure(
        &self,
        layout: &OciDir,
        digest: &Digest,
        size: u64,
        media_type: &str,
        limits: &Limits,
    ) -> Result<(Extracted, bool)> {
        if let Some(found) = self.load(digest) {
            return Ok((found, false));
        }
        self.discard_stale(digest)?;
        let dir = self.block_dir(digest);
        let subject = format!("block {digest}");
        let tmp = tempfile::Builder::new()
            .prefix("extract-")
            .tempdir_in(self.dir.join("tmp"))
            .map_err(|e| Error::io(self.dir.join("tmp"), e))?;
        let tree = tmp.path().join("tree");
        fs::create_dir(&tree).map_err(|e| Error::io(&tree, e))?;
        let root = Root::open(&tree)
            .map_err(|e| Error::in_root(format!("opening {}", tree.display()), e))?;
        let mut blob = open_blob(layout, digest, size, &subject)?;
        let mut applier = Applier::for_block(&root, *limits);
        let applied: Result<_> = (|| {
            let stream = open_tar(&mut blob, media_type, &subject)?;
            let mut bounded = Bounded::expansion(stream, limits, &subject, size);
            applier.apply_layer(&mut bounded, None, &subject, size)?;
            io::copy(&mut bounded, &mut io::sink())
                .map_err(|e| crate::apply::tar_error(&subject, e))?;
            Ok(())
        })();
        // A corrupt blob often shows first as a malformed tar: name the cause.
        let verified = blob.finish().map_err(|e| blob_error(&subject, e));
        verified?;
        applied?;
        let entries = applier.finish_block(&subject)?;
        applier.finish()?;
        let json = serde_json::to_vec(&Record {
            format: FORMAT,
            entries: entries.clone(),
        })
        .map_err(|e| Error::io(tmp.path(), io::Error::other(e)))?;
        fs::write(tmp.path().join("block.json"), json).map_err(|e| Error::io(tmp.path(), e))?;
        if let Some(parent) = dir.parent() {
            fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        let kept = tmp.keep();
        if let Err(e) = fs::rename(&kept, &dir) {
            make_writable(&kept);
            let _ = fs::remove_dir_all(&kept);
            // Another unpack extracted it at the same time.
            return match self.load(digest) {
                Some(found) => Ok((found, false)),
                None => Err(Error::io(&dir, e)),
            };
        }
        let tree = crate::fsat::open_dir(&dir.join("tree")).map_err(|e| Error::io(&dir, e))?;
        Ok((Extracted::new(tree, entries), true))
    }
}

fn make_writable(dir: &Path) {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        if let Ok(meta) = fs::symlink_metadata(&p) {
            if meta.is_dir() {
                let _ = fs::set_permissions(&p, Permissions::from_mode(0o755));
                if let Ok(rd) = fs::read_dir(&p) {
                    stack.extend(rd.filter_map(|e| e.ok()).map(|e| e.path()));
                }
            } else if meta.is_file() {
                let _ = fs::set_permissions(&p, Permissions::from_mode(0o644));
            }
        }
    }
}

fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        if let Ok(meta) = fs::symlink_metadata(&p) {
            if meta.is_dir() {
                if let Ok(rd) = fs::read_dir(&p) {
                    stack.extend(rd.filter_map(|e| e.ok()).map(|e| e.path()));
                }
            } else {
                total += meta.len();
            }
        }
    }
    total
}
