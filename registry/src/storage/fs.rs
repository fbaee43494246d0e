//! The registry's storage on a file-system root (the embedded default).
//!
//! ```text
//! ROOT/
//!   blobs/ALG/XX/HEX                  every blob once, manifests included
//!   uploads/ID/data                   an upload session's bytes so far
//!   uploads/ID/repository             the repository it was opened in
//!   repositories/NAME/_blobs/ALG/HEX      the blob is linked into NAME (empty file)
//!   repositories/NAME/_manifests/ALG/HEX  a manifest of NAME (holds its media type)
//!   repositories/NAME/_tags/TAG           the tag (holds the manifest digest)
//!   repositories/NAME/_referrers/ALG/SUBJECT-HEX/ALG/HEX   NAME's manifest HEX has subject SUBJECT
//!   gc.lock
//! ```
//!
//! Repository components cannot start with `_`, so a nested repository such as
//! `a/b` never collides with the directories of `a`.
//!
//! Bytes become visible only by `rename`: an upload is staged under `uploads/`,
//! verified against its digest, `fsync`ed and renamed into `blobs/`; tags and
//! manifest records are written to a temporary name in their directory and renamed.
//! A blob that two clients commit at once is renamed twice to the same name with the
//! same content, and one copy is kept.
//!
//! `gc.lock` orders garbage collection against manifest commits: a manifest PUT holds
//! it shared while it checks that its references exist and records the manifest, and
//! the collector holds it exclusively while it marks and sweeps, so a PUT never
//! commits a reference to a blob the sweep is deleting. A blob DELETE holds it
//! exclusively too, and refuses a blob that a manifest of the repository
//! references, so that no stored manifest names a blob its repository lost.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use oci_blocks_core::Digest;
use oci_blocks_core::digest::{Algorithm, Hasher};

use crate::error::{Error, IoContext, Result};

use super::ManifestCommit;

/// A storage root.
#[derive(Debug)]
pub struct FsStorage {
    root: PathBuf,
}

/// A held `gc.lock`, released on drop.
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

impl FsStorage {
    /// Opens the storage of an existing root, for commands that only read or
    /// collect it: a root that does not exist (a typo) is an error, not an
    /// empty registry.
    pub fn open_existing(root: &Path) -> Result<FsStorage> {
        let missing: Vec<&str> = ["blobs", "repositories"]
            .into_iter()
            .filter(|sub| !root.join(sub).is_dir())
            .collect();
        if !missing.is_empty() {
            return Err(Error::Config(format!(
                "{} is not a registry root (no {} directory); `serve` creates one",
                root.display(),
                missing.join(" or ")
            )));
        }
        FsStorage::open(root)
    }

    /// Opens (creating if needed) the storage under `root`.
    pub fn open(root: &Path) -> Result<FsStorage> {
        for sub in ["blobs", "uploads", "repositories"] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).at(&dir)?;
        }
        Ok(FsStorage {
            root: root.to_path_buf(),
        })
    }

    /// The storage root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn lock(&self, exclusive: bool) -> Result<FileLock> {
        let path = self.root.join("gc.lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .at(&path)?;
        let op = if exclusive {
            rustix::fs::FlockOperation::LockExclusive
        } else {
            rustix::fs::FlockOperation::LockShared
        };
        rustix::fs::flock(&file, op)
            .map_err(io::Error::from)
            .at(&path)?;
        Ok(FileLock { _file: file })
    }

    /// Takes `gc.lock` shared (manifest commits), blocking while a collection runs.
    pub fn lock_shared(&self) -> Result<FileLock> {
        self.lock(false)
    }

    /// Takes `gc.lock` exclusively (garbage collection), blocking while commits run.
    pub fn lock_exclusive(&self) -> Result<FileLock> {
        self.lock(true)
    }

    // ---- blobs -------------------------------------------------------------

    /// Where the blob `digest` is stored.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.root
            .join("blobs")
            .join(digest.algorithm().as_str())
            .join(&hex[..2])
            .join(hex)
    }

    /// The size of a stored blob, if it is stored.
    pub fn blob_size(&self, digest: &Digest) -> Option<u64> {
        fs::metadata(self.blob_path(digest))
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len())
    }

    /// Reads a whole stored blob (manifests; callers bound the size).
    pub fn read_blob(&self, digest: &Digest) -> Result<Option<Vec<u8>>> {
        let path = self.blob_path(digest);
        match fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Io { path, source: e }),
        }
    }

    /// Marks a blob as just used, so that a collection's grace period protects it.
    pub fn touch_blob(&self, digest: &Digest) {
        if let Ok(f) = File::options().write(true).open(self.blob_path(digest)) {
            let _ = f.set_modified(SystemTime::now());
        }
    }

    fn repo(&self, name: &str) -> PathBuf {
        self.root.join("repositories").join(name)
    }

    fn digest_file(dir: PathBuf, digest: &Digest) -> PathBuf {
        dir.join(digest.algorithm().as_str()).join(digest.hex())
    }

    fn blob_link(&self, name: &str, digest: &Digest) -> PathBuf {
        Self::digest_file(self.repo(name).join("_blobs"), digest)
    }

    /// Whether the blob is stored and linked into repository `name`.
    pub fn linked_blob_size(&self, name: &str, digest: &Digest) -> Option<u64> {
        if self.blob_link(name, digest).is_file() {
            self.blob_size(digest)
        } else {
            None
        }
    }

    /// Links a stored blob into repository `name`.
    pub fn link_blob(&self, name: &str, digest: &Digest) -> Result<()> {
        let link = self.blob_link(name, digest);
        if link.is_file() {
            return Ok(());
        }
        create_parent(&link)?;
        File::create(&link).at(&link)?;
        Ok(())
    }

    /// Removes a blob's link from repository `name`; whether there was one.
    pub fn unlink_blob(&self, name: &str, digest: &Digest) -> Result<bool> {
        remove_file_if_exists(&self.blob_link(name, digest))
    }

    // ---- uploads -----------------------------------------------------------

    fn upload_dir(&self, id: &str) -> PathBuf {
        self.root.join("uploads").join(id)
    }

    /// The file an upload session's bytes are appended to.
    pub fn upload_data(&self, id: &str) -> PathBuf {
        self.upload_dir(id).join("data")
    }

    /// Opens an upload session for repository `name`; its id.
    pub fn new_upload(&self, name: &str) -> Result<String> {
        let id = uuid::Uuid::new_v4().to_string();
        let dir = self.upload_dir(&id);
        fs::create_dir(&dir).at(&dir)?;
        let repo = dir.join("repository");
        fs::write(&repo, name).at(&repo)?;
        let data = dir.join("data");
        File::create(&data).at(&data)?;
        Ok(id)
    }

    /// The repository and current size of an upload session, if it is open.
    /// `id` must be the text of a UUID.
    pub fn upload(&self, id: &str) -> Option<(String, u64)> {
        uuid::Uuid::parse_str(id).ok()?;
        let dir = self.upload_dir(id);
        let repo = fs::read_to_string(dir.join("repository")).ok()?;
        let size = fs::metadata(dir.join("data")).ok()?.len();
        Some((repo, size))
    }

    /// Discards an upload session.
    pub fn remove_upload(&self, id: &str) -> Result<()> {
        let dir = self.upload_dir(id);
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::Io {
                path: dir,
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// Hashes an upload session's bytes (after a restart, or for sha512).
    pub fn hash_upload(&self, id: &str, algorithm: Algorithm) -> Result<Digest> {
        let path = self.upload_data(id);
        let mut file = File::open(&path).at(&path)?;
        let mut hasher = Hasher::new(algorithm);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).at(&path)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(hasher.finish())
    }

    /// Makes a verified upload the blob `digest`, linked into `name`: fsync, rename
    /// into `blobs/`, fsync the directory, drop the session. The caller has checked
    /// the digest.
    pub fn commit_upload(&self, id: &str, digest: &Digest, name: &str) -> Result<()> {
        let data = self.upload_data(id);
        let dest = self.blob_path(digest);
        if dest.is_file() {
            // Same name, same content: keep the stored copy, refresh its age.
            self.touch_blob(digest);
        } else {
            let file = File::options().write(true).open(&data).at(&data)?;
            file.sync_all().at(&data)?;
            // The age the grace period sees is the commit's, not the first byte's.
            file.set_modified(SystemTime::now()).at(&data)?;
            drop(file);
            create_parent(&dest)?;
            fs::rename(&data, &dest).at(&dest)?;
            sync_parent(&dest)?;
        }
        self.link_blob(name, digest)?;
        self.remove_upload(id)
    }

    /// Stores `bytes` as the blob `digest` (manifests) unless it is stored.
    pub fn put_blob_bytes(&self, digest: &Digest, bytes: &[u8]) -> Result<()> {
        let dest = self.blob_path(digest);
        if dest.is_file() {
            self.touch_blob(digest);
            return Ok(());
        }
        write_atomic(&dest, bytes, true)
    }

    /// Upload session ids with the time their data was last written.
    pub fn uploads(&self) -> Result<Vec<(String, SystemTime)>> {
        let dir = self.root.join("uploads");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).at(&dir)? {
            let entry = entry.at(&dir)?;
            let id = entry.file_name().to_string_lossy().into_owned();
            let modified = fs::metadata(entry.path().join("data"))
                .and_then(|m| m.modified())
                .or_else(|_| entry.metadata().and_then(|m| m.modified()))
                .unwrap_or(SystemTime::UNIX_EPOCH);
            out.push((id, modified));
        }
        Ok(out)
    }

    // ---- manifests, tags, referrers ---------------------------------------

    fn manifest_record(&self, name: &str, digest: &Digest) -> PathBuf {
        Self::digest_file(self.repo(name).join("_manifests"), digest)
    }

    fn tag_file(&self, name: &str, tag: &str) -> PathBuf {
        self.repo(name).join("_tags").join(tag)
    }

    fn referrer_file(&self, name: &str, subject: &Digest, digest: &Digest) -> PathBuf {
        self.repo(name)
            .join("_referrers")
            .join(subject.algorithm().as_str())
            .join(subject.hex())
            .join(digest.algorithm().as_str())
            .join(digest.hex())
    }

    /// The media type of manifest `digest` in repository `name`, if it is there.
    pub fn manifest_media_type(&self, name: &str, digest: &Digest) -> Option<String> {
        fs::read_to_string(self.manifest_record(name, digest)).ok()
    }

    /// When manifest `digest` was last pushed to `name`.
    pub fn manifest_pushed(&self, name: &str, digest: &Digest) -> Option<SystemTime> {
        fs::metadata(self.manifest_record(name, digest))
            .and_then(|m| m.modified())
            .ok()
    }

    /// Records a manifest whose references the caller has checked (holding the
    /// shared lock): its bytes as a blob, its referenced blobs linked into `name`,
    /// its record, its referrer entry and its tag.
    pub fn put_manifest(&self, name: &str, m: &ManifestCommit<'_>) -> Result<()> {
        self.put_blob_bytes(m.digest, m.bytes)?;
        for blob in m.blobs {
            self.link_blob(name, blob)?;
        }
        write_atomic(
            &self.manifest_record(name, m.digest),
            m.media_type.as_bytes(),
            false,
        )?;
        if let Some(subject) = m.subject {
            let path = self.referrer_file(name, subject, m.digest);
            create_parent(&path)?;
            File::create(&path).at(&path)?;
        }
        if let Some(tag) = m.tag {
            write_atomic(
                &self.tag_file(name, tag),
                m.digest.as_str().as_bytes(),
                false,
            )?;
        }
        Ok(())
    }

    /// The manifest a tag points at.
    pub fn resolve_tag(&self, name: &str, tag: &str) -> Option<Digest> {
        let text = fs::read_to_string(self.tag_file(name, tag)).ok()?;
        Digest::parse(text.trim()).ok()
    }

    /// Whether repository `name` exists (has held a blob, manifest or tag).
    pub fn repository_exists(&self, name: &str) -> bool {
        let dir = self.repo(name);
        ["_blobs", "_manifests", "_tags"]
            .iter()
            .any(|s| dir.join(s).is_dir())
    }

    /// The tags of `name`, sorted.
    pub fn tags(&self, name: &str) -> Result<Vec<String>> {
        let dir = self.repo(name).join("_tags");
        let mut tags = Vec::new();
        match fs::read_dir(&dir) {
            Ok(entries) => {
                for entry in entries {
                    let entry = entry.at(&dir)?;
                    let tag = entry.file_name().to_string_lossy().into_owned();
                    if crate::names::valid_tag(&tag) {
                        tags.push(tag);
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::Io {
                    path: dir,
                    source: e,
                });
            }
        }
        tags.sort();
        Ok(tags)
    }

    /// Removes a tag; whether it existed.
    pub fn delete_tag(&self, name: &str, tag: &str) -> Result<bool> {
        remove_file_if_exists(&self.tag_file(name, tag))
    }

    /// [`super::Storage::delete_manifest`] for a manifest the caller knows no tag points
    /// at (the collector's case), without reading every tag.
    pub fn delete_untagged_manifest(&self, name: &str, digest: &Digest) -> Result<bool> {
        let bytes = self.read_blob(digest)?;
        if !remove_file_if_exists(&self.manifest_record(name, digest))? {
            return Ok(false);
        }
        if let Some(subject) = bytes.as_deref().and_then(super::subject_of) {
            remove_file_if_exists(&self.referrer_file(name, &subject, digest))?;
        }
        Ok(true)
    }

    /// The manifests of `name` whose subject is `subject`.
    pub fn referrers(&self, name: &str, subject: &Digest) -> Result<Vec<Digest>> {
        let dir = self
            .repo(name)
            .join("_referrers")
            .join(subject.algorithm().as_str())
            .join(subject.hex());
        let mut out = Vec::new();
        for (algorithm, hex) in list_digest_files(&dir)? {
            if let Ok(d) = Digest::parse(&format!("{algorithm}:{hex}")) {
                if self.manifest_record(name, &d).is_file() {
                    out.push(d);
                }
            }
        }
        out.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        Ok(out)
    }

    /// The manifests recorded in `name`.
    pub fn manifests(&self, name: &str) -> Result<Vec<Digest>> {
        let dir = self.repo(name).join("_manifests");
        Ok(list_digest_files(&dir)?
            .into_iter()
            .filter_map(|(a, h)| Digest::parse(&format!("{a}:{h}")).ok())
            .collect())
    }

    /// The blobs linked into `name`.
    pub fn linked_blobs(&self, name: &str) -> Result<Vec<Digest>> {
        let dir = self.repo(name).join("_blobs");
        Ok(list_digest_files(&dir)?
            .into_iter()
            .filter_map(|(a, h)| Digest::parse(&format!("{a}:{h}")).ok())
            .collect())
    }

    /// Every repository, sorted.
    pub fn repositories(&self) -> Result<Vec<String>> {
        let base = self.root.join("repositories");
        let mut out = Vec::new();
        let mut stack = vec![String::new()];
        while let Some(prefix) = stack.pop() {
            let dir = if prefix.is_empty() {
                base.clone()
            } else {
                base.join(&prefix)
            };
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(Error::Io {
                        path: dir,
                        source: e,
                    });
                }
            };
            for entry in entries {
                let entry = entry.at(&dir)?;
                let file_name = entry.file_name().to_string_lossy().into_owned();
                if file_name.starts_with('_') || !entry.file_type().at(&dir)?.is_dir() {
                    continue;
                }
                let name = if prefix.is_empty() {
                    file_name
                } else {
                    format!("{prefix}/{file_name}")
                };
                if self.repository_exists(&name) {
                    out.push(name.clone());
                }
                stack.push(name);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Every stored blob with its size and modification time.
    pub fn blobs(&self) -> Result<Vec<(Digest, u64, SystemTime)>> {
        let base = self.root.join("blobs");
        let mut out = Vec::new();
        for algorithm in read_names(&base)? {
            let alg_dir = base.join(&algorithm);
            for fan in read_names(&alg_dir)? {
                let fan_dir = alg_dir.join(&fan);
                for entry in fs::read_dir(&fan_dir).at(&fan_dir)? {
                    let entry = entry.at(&fan_dir)?;
                    let hex = entry.file_name().to_string_lossy().into_owned();
                    let Ok(digest) = Digest::parse(&format!("{algorithm}:{hex}")) else {
                        continue; // a temporary file of a write in progress
                    };
                    let Ok(meta) = entry.metadata() else {
                        continue; // removed meanwhile
                    };
                    let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                    out.push((digest, meta.len(), modified));
                }
            }
        }
        Ok(out)
    }

    /// Removes a stored blob.
    pub fn remove_blob(&self, digest: &Digest) -> Result<bool> {
        remove_file_if_exists(&self.blob_path(digest))
    }
}

fn read_names(dir: &Path) -> Result<Vec<String>> {
    match fs::read_dir(dir) {
        Ok(entries) => {
            let mut out = Vec::new();
            for e in entries {
                out.push(e.at(dir)?.file_name().to_string_lossy().into_owned());
            }
            Ok(out)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::Io {
            path: dir.to_path_buf(),
            source: e,
        }),
    }
}

/// `(algorithm, hex)` of the files under `dir/ALG/HEX`.
fn list_digest_files(dir: &Path) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for algorithm in read_names(dir)? {
        for hex in read_names(&dir.join(&algorithm))? {
            if !hex.starts_with('.') {
                out.push((algorithm.clone(), hex));
            }
        }
    }
    Ok(out)
}

fn create_parent(path: &Path) -> Result<()> {
    match path.parent() {
        Some(parent) => fs::create_dir_all(parent).at(parent),
        None => Ok(()),
    }
}

fn sync_parent(path: &Path) -> Result<()> {
    if let Some(parent) = path.parent() {
        File::open(parent).and_then(|d| d.sync_all()).at(parent)?;
    }
    Ok(())
}

fn remove_file_if_exists(path: &Path) -> Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::Io {
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

/// Writes `bytes` to a temporary name beside `path` and renames it into place.
fn write_atomic(path: &Path, bytes: &[u8], durable: bool) -> Result<()> {
    create_parent(path)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .at(dir)?;
    tmp.write_all(bytes).at(tmp.path())?;
    if durable {
        tmp.as_file().sync_all().at(tmp.path())?;
    }
    tmp.persist(path).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: e.error,
    })?;
    if durable {
        sync_parent(path)?;
    }
    Ok(())
}
