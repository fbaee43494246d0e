//! Where the registry keeps blobs, manifests, tags and upload sessions: a
//! directory on this machine ([`fs`], the default) or an S3-compatible bucket
//! ([`s3`]). Both keep the same promises: a blob becomes visible only after
//! its digest is verified, manifests and tags are stored byte for byte and
//! replaced atomically, and a manifest commit is ordered against collections:
//! on a directory by a lock (shared for commits, exclusive for collections and
//! deletions), on a bucket by the protocol of [`s3`]'s `collect` module.
//!
//! [`Storage`] is the one type the API and the collector use; it is
//! synchronous (the API calls it through `spawn_blocking`), except for the
//! streaming paths, which the API takes per backend.

pub mod fs;
pub mod s3;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use oci_blocks_core::Digest;
use oci_blocks_core::digest::Algorithm;

use crate::error::{Error, Result};
pub use fs::FsStorage;
pub use s3::S3Storage;

/// Where storage is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A directory (`--root DIR`).
    Dir(PathBuf),
    /// A bucket (`--storage s3://BUCKET/PREFIX`).
    S3(S3Location),
}

/// A bucket and a key prefix (no leading or trailing `/`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Location {
    /// The bucket.
    pub bucket: String,
    /// The prefix of every key, possibly empty.
    pub prefix: String,
}

impl fmt::Display for S3Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

impl Location {
    /// Parses `--storage`: `s3://BUCKET[/PREFIX]`, `file://DIR` or a directory.
    pub fn parse(text: &str) -> Result<Location> {
        if let Some(rest) = text.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let prefix = prefix.trim_matches('/');
            let bucket_ok = (3..=63).contains(&bucket.len())
                && bucket.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                });
            if !bucket_ok {
                return Err(Error::Config(format!(
                    "--storage {text}: {bucket:?} is not an S3 bucket name (3 to 63 of a-z, 0-9, '-', '.')"
                )));
            }
            let prefix_ok = prefix.split('/').all(|c| {
                !c.is_empty()
                    && c != "."
                    && c != ".."
                    && c.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            });
            if !prefix.is_empty() && !prefix_ok {
                return Err(Error::Config(format!(
                    "--storage {text}: the prefix {prefix:?} must be `/`-separated names of a-z, A-Z, 0-9, '-', '_', '.'"
                )));
            }
            return Ok(Location::S3(S3Location {
                bucket: bucket.to_string(),
                prefix: prefix.to_string(),
            }));
        }
        if text.contains("://") && !text.starts_with("file://") {
            return Err(Error::Config(format!(
                "--storage {text}: expected s3://BUCKET/PREFIX or a directory"
            )));
        }
        Ok(Location::Dir(PathBuf::from(
            text.strip_prefix("file://").unwrap_or(text),
        )))
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Dir(p) => write!(f, "{}", p.display()),
            Location::S3(s) => s.fmt(f),
        }
    }
}

/// The registry's storage.
#[derive(Debug)]
pub struct Storage {
    backend: Backend,
}

#[derive(Debug)]
enum Backend {
    Fs(FsStorage),
    S3(S3Storage),
}

/// A held commit lock, released on drop.
pub struct Lock {
    _held: Held,
}

enum Held {
    File(#[allow(dead_code)] fs::FileLock),
    S3(#[allow(dead_code)] s3::S3Lock),
}

macro_rules! each {
    ($self:ident, $b:ident => $e:expr) => {
        match &$self.backend {
            Backend::Fs($b) => $e,
            Backend::S3($b) => $e,
        }
    };
}

impl Storage {
    /// Opens (creating a directory if needed) the storage at `location`. A
    /// bucket must be opened inside the registry's async runtime.
    pub fn open_location(location: &Location) -> Result<Storage> {
        let backend = match location {
            Location::Dir(root) => Backend::Fs(FsStorage::open(root)?),
            Location::S3(s3) => Backend::S3(S3Storage::open(s3)?),
        };
        Ok(Storage { backend })
    }

    /// Opens existing storage, for commands that only read or collect it: a
    /// directory that is not a registry root (a typo) is an error.
    pub fn open_existing_location(location: &Location) -> Result<Storage> {
        let backend = match location {
            Location::Dir(root) => Backend::Fs(FsStorage::open_existing(root)?),
            Location::S3(s3) => Backend::S3(S3Storage::open(s3)?),
        };
        Ok(Storage { backend })
    }

    /// Opens (creating if needed) the storage under the directory `root`.
    pub fn open(root: &Path) -> Result<Storage> {
        Storage::open_location(&Location::Dir(root.to_path_buf()))
    }

    /// Opens the existing storage under the directory `root`.
    pub fn open_existing(root: &Path) -> Result<Storage> {
        Storage::open_existing_location(&Location::Dir(root.to_path_buf()))
    }

    /// The file-system backend, for the streaming paths.
    pub fn fs(&self) -> Option<&FsStorage> {
        match &self.backend {
            Backend::Fs(f) => Some(f),
            Backend::S3(_) => None,
        }
    }

    /// The bucket backend, for the streaming paths.
    pub fn s3(&self) -> Option<&S3Storage> {
        match &self.backend {
            Backend::S3(s) => Some(s),
            Backend::Fs(_) => None,
        }
    }

    /// Takes the commit lock exclusively (blob deletions through the API).
    pub fn lock_exclusive(&self) -> Result<Lock> {
        Ok(Lock {
            _held: match &self.backend {
                Backend::Fs(f) => Held::File(f.lock_exclusive()?),
                Backend::S3(s) => Held::S3(s.lock_exclusive()?),
            },
        })
    }

    /// The size of a stored blob, if it is stored.
    pub fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        match &self.backend {
            Backend::Fs(f) => Ok(f.blob_size(digest)),
            Backend::S3(s) => s.blob_size(digest),
        }
    }

    /// Reads a whole stored blob (manifests; callers bound the size).
    pub fn read_blob(&self, digest: &Digest) -> Result<Option<Vec<u8>>> {
        each!(self, b => b.read_blob(digest))
    }

    /// Records a use of a blob a client found (HEAD, mount), so that a
    /// collection's grace period protects it; false while a collection is
    /// removing it, when the client should be told it is not there.
    pub fn use_blob(&self, digest: &Digest) -> Result<bool> {
        match &self.backend {
            Backend::Fs(f) => {
                f.touch_blob(digest);
                Ok(true)
            }
            Backend::S3(s) => s.use_blob(digest),
        }
    }

    /// Starts a manifest PUT that will name `digests` (the manifest itself,
    /// its blobs and child manifests) in `name`, ordered against collections
    /// until the returned guard is dropped. [`Error::Collecting`] if a
    /// collection is removing one of them.
    pub fn begin_manifest_put(&self, name: &str, digests: &[Digest]) -> Result<ManifestPut> {
        Ok(ManifestPut {
            _held: match &self.backend {
                Backend::Fs(f) => PutHeld::File(f.lock_shared()?),
                Backend::S3(s) => PutHeld::S3(s.begin_manifest_put(name, digests)?),
            },
        })
    }

    /// Starts a collection: on a directory, takes `gc.lock` exclusively; on a
    /// bucket, takes the lease and announces the sweep ([`s3::Sweep`]).
    pub fn begin_collection(&self) -> Result<Collection> {
        Ok(match &self.backend {
            Backend::Fs(f) => Collection {
                started: SystemTime::now(),
                in_flight: Vec::new(),
                held: CollectionHeld::File(f.lock_exclusive()?),
            },
            Backend::S3(s) => {
                let mut sweep = s.begin_collection()?;
                Collection {
                    started: sweep.started,
                    in_flight: std::mem::take(&mut sweep.in_flight),
                    held: CollectionHeld::S3(sweep),
                }
            }
        })
    }

    /// Removes each blob of `blobs` (with its links from the repositories
    /// beside it) that nothing marked, unless it was used since `cutoff`;
    /// which were removed. On a bucket each use is read again under a
    /// condemnation that pushes see.
    pub fn remove_unused_blobs(
        &self,
        c: &Collection,
        blobs: &[(Digest, Vec<String>)],
        cutoff: SystemTime,
    ) -> Result<Vec<bool>> {
        match (&self.backend, &c.held) {
            (Backend::S3(s), CollectionHeld::S3(sweep)) => {
                s.remove_unused_blobs(sweep, blobs, cutoff)
            }
            // The exclusive lock keeps every push's commit out.
            (Backend::Fs(f), _) => blobs
                .iter()
                .map(|(digest, links)| {
                    for name in links {
                        f.unlink_blob(name, digest)?;
                    }
                    f.remove_blob(digest)
                })
                .collect(),
            (Backend::S3(_), CollectionHeld::File(_)) => Err(mismatched()),
        }
    }

    /// Removes an untagged manifest or a dangling link, unless it was used
    /// since `cutoff`; whether it was removed.
    pub fn remove_unused(
        &self,
        c: &Collection,
        what: Unused<'_>,
        cutoff: SystemTime,
    ) -> Result<bool> {
        match (&self.backend, &c.held) {
            (Backend::S3(s), CollectionHeld::S3(sweep)) => match what {
                Unused::Manifest { name, digest } => {
                    s.remove_unused_manifest(sweep, name, digest, cutoff)
                }
                Unused::Link { name, digest } => {
                    s.remove_dangling_link(sweep, name, digest, cutoff)
                }
            },
            (Backend::Fs(f), _) => match what {
                Unused::Manifest { name, digest } => f.delete_untagged_manifest(name, digest),
                Unused::Link { name, digest } => {
                    if f.blob_size(digest).is_some() {
                        return Ok(false);
                    }
                    f.unlink_blob(name, digest)
                }
            },
            (Backend::S3(_), CollectionHeld::File(_)) => Err(mismatched()),
        }
    }

    /// Whether the blob is stored and linked into repository `name`.
    pub fn linked_blob_size(&self, name: &str, digest: &Digest) -> Result<Option<u64>> {
        match &self.backend {
            Backend::Fs(f) => Ok(f.linked_blob_size(name, digest)),
            Backend::S3(s) => s.linked_blob_size(name, digest),
        }
    }

    /// Links a stored blob into repository `name`.
    pub fn link_blob(&self, name: &str, digest: &Digest) -> Result<()> {
        each!(self, b => b.link_blob(name, digest))
    }

    /// Removes a blob's link from repository `name`; whether there was one.
    pub fn unlink_blob(&self, name: &str, digest: &Digest) -> Result<bool> {
        each!(self, b => b.unlink_blob(name, digest))
    }

    /// A manifest of `name` that references the blob, if any (the caller
    /// holds the exclusive lock).
    pub fn manifest_referencing(&self, name: &str, digest: &Digest) -> Result<Option<Digest>> {
        for m in self.manifests(name)? {
            let Some(bytes) = self.read_blob(&m)? else {
                continue;
            };
            if crate::gc::references(&bytes).0.contains(digest) {
                return Ok(Some(m));
            }
        }
        Ok(None)
    }

    /// Opens an upload session for repository `name`; its id.
    pub fn new_upload(&self, name: &str) -> Result<String> {
        each!(self, b => b.new_upload(name))
    }

    /// The repository and current size of an upload session, if it is open.
    pub fn upload(&self, id: &str) -> Result<Option<(String, u64)>> {
        match &self.backend {
            Backend::Fs(f) => Ok(f.upload(id)),
            Backend::S3(s) => s.upload(id),
        }
    }

    /// Discards an upload session.
    pub fn remove_upload(&self, id: &str) -> Result<()> {
        each!(self, b => b.remove_upload(id))
    }

    /// Hashes an upload session's bytes.
    pub fn hash_upload(&self, id: &str, algorithm: Algorithm) -> Result<Digest> {
        each!(self, b => b.hash_upload(id, algorithm))
    }

    /// Makes a verified upload the blob `digest`, linked into `name`.
    pub fn commit_upload(&self, id: &str, digest: &Digest, name: &str) -> Result<()> {
        each!(self, b => b.commit_upload(id, digest, name))
    }

    /// Stores `bytes` as the blob `digest` unless it is stored.
    pub fn put_blob_bytes(&self, digest: &Digest, bytes: &[u8]) -> Result<()> {
        each!(self, b => b.put_blob_bytes(digest, bytes))
    }

    /// Upload session ids with the time their data was last written.
    pub fn uploads(&self) -> Result<Vec<(String, SystemTime)>> {
        each!(self, b => b.uploads())
    }

    /// The media type of manifest `digest` in repository `name`.
    pub fn manifest_media_type(&self, name: &str, digest: &Digest) -> Result<Option<String>> {
        match &self.backend {
            Backend::Fs(f) => Ok(f.manifest_media_type(name, digest)),
            Backend::S3(s) => s.manifest_media_type(name, digest),
        }
    }

    /// When manifest `digest` was last pushed to `name`.
    pub fn manifest_pushed(&self, name: &str, digest: &Digest) -> Result<Option<SystemTime>> {
        match &self.backend {
            Backend::Fs(f) => Ok(f.manifest_pushed(name, digest)),
            Backend::S3(s) => s.manifest_pushed(name, digest),
        }
    }

    /// The bytes and media type of manifest `digest` in `name`.
    pub fn read_manifest(&self, name: &str, digest: &Digest) -> Result<Option<(Vec<u8>, String)>> {
        let Some(media_type) = self.manifest_media_type(name, digest)? else {
            return Ok(None);
        };
        Ok(self.read_blob(digest)?.map(|b| (b, media_type)))
    }

    /// Records a manifest whose references the caller has checked.
    pub fn put_manifest(&self, name: &str, m: &ManifestCommit<'_>) -> Result<()> {
        each!(self, b => b.put_manifest(name, m))
    }

    /// The manifest a tag points at.
    pub fn resolve_tag(&self, name: &str, tag: &str) -> Result<Option<Digest>> {
        match &self.backend {
            Backend::Fs(f) => Ok(f.resolve_tag(name, tag)),
            Backend::S3(s) => s.resolve_tag(name, tag),
        }
    }

    /// Whether repository `name` exists.
    pub fn repository_exists(&self, name: &str) -> Result<bool> {
        match &self.backend {
            Backend::Fs(f) => Ok(f.repository_exists(name)),
            Backend::S3(s) => s.repository_exists(name),
        }
    }

    /// The tags of `name`, sorted.
    pub fn tags(&self, name: &str) -> Result<Vec<String>> {
        each!(self, b => b.tags(name))
    }

    /// Removes a tag; whether it existed.
    pub fn delete_tag(&self, name: &str, tag: &str) -> Result<bool> {
        each!(self, b => b.delete_tag(name, tag))
    }

    /// Removes manifest `digest` from `name`, with its tags and referrer entry.
    pub fn delete_manifest(&self, name: &str, digest: &Digest) -> Result<bool> {
        if !self.delete_untagged_manifest(name, digest)? {
            return Ok(false);
        }
        for tag in self.tags(name)? {
            if self.resolve_tag(name, &tag)?.as_ref() == Some(digest) {
                self.delete_tag(name, &tag)?;
            }
        }
        Ok(true)
    }

    /// [`Storage::delete_manifest`] for a manifest no tag points at.
    pub fn delete_untagged_manifest(&self, name: &str, digest: &Digest) -> Result<bool> {
        each!(self, b => b.delete_untagged_manifest(name, digest))
    }

    /// The manifests of `name` whose subject is `subject`.
    pub fn referrers(&self, name: &str, subject: &Digest) -> Result<Vec<Digest>> {
        each!(self, b => b.referrers(name, subject))
    }

    /// What a collection's mark needs of each of `digests`, manifests of `name`.
    pub fn manifest_facts(&self, name: &str, digests: &[Digest]) -> Result<Vec<ManifestFacts>> {
        match &self.backend {
            Backend::S3(s) => s.manifest_facts(name, digests),
            Backend::Fs(f) => digests
                .iter()
                .map(|d| {
                    let (blobs, children) = f
                        .read_blob(d)?
                        .map(|b| crate::gc::references(&b))
                        .unwrap_or_default();
                    Ok(ManifestFacts {
                        pushed: f.manifest_pushed(name, d),
                        blobs,
                        children,
                        referrers: f.referrers(name, d)?,
                    })
                })
                .collect(),
        }
    }

    /// The manifests `tags` of `name` point at (None for a tag that is gone).
    pub fn resolve_tags(&self, name: &str, tags: &[String]) -> Result<Vec<Option<Digest>>> {
        match &self.backend {
            Backend::S3(s) => s.resolve_tags(name, tags),
            Backend::Fs(_) => tags.iter().map(|t| self.resolve_tag(name, t)).collect(),
        }
    }

    /// The manifests recorded in `name`.
    pub fn manifests(&self, name: &str) -> Result<Vec<Digest>> {
        each!(self, b => b.manifests(name))
    }

    /// The blobs linked into `name`.
    pub fn linked_blobs(&self, name: &str) -> Result<Vec<Digest>> {
        each!(self, b => b.linked_blobs(name))
    }

    /// Every repository, sorted.
    pub fn repositories(&self) -> Result<Vec<String>> {
        each!(self, b => b.repositories())
    }

    /// Every stored blob with its size and the time it was last written or used.
    pub fn blobs(&self) -> Result<Vec<(Digest, u64, SystemTime)>> {
        each!(self, b => b.blobs())
    }
}

/// What a collection's mark needs of one manifest ([`Storage::manifest_facts`]).
#[derive(Clone, Debug, Default)]
pub struct ManifestFacts {
    /// When it was last pushed to the repository.
    pub pushed: Option<SystemTime>,
    /// The blobs it references: config, layers, blocks.
    pub blobs: Vec<Digest>,
    /// The manifests it references (an index's children).
    pub children: Vec<Digest>,
    /// The manifests of the repository whose subject it is.
    pub referrers: Vec<Digest>,
}

/// A manifest PUT in progress ([`Storage::begin_manifest_put`]).
pub struct ManifestPut {
    _held: PutHeld,
}

enum PutHeld {
    File(#[allow(dead_code)] fs::FileLock),
    S3(#[allow(dead_code)] s3::PendingPut),
}

/// A collection in progress ([`Storage::begin_collection`]).
pub struct Collection {
    /// When it started, by the storage's clock: grace periods count from here.
    pub started: SystemTime,
    /// What manifest PUTs in progress at the start name, by repository: roots.
    pub in_flight: Vec<(String, Vec<Digest>)>,
    held: CollectionHeld,
}

enum CollectionHeld {
    File(#[allow(dead_code)] fs::FileLock),
    S3(s3::Sweep),
}

fn mismatched() -> Error {
    Error::Corrupt("a collection begun on a directory cannot remove from a bucket".into())
}

/// What a collection removes one at a time ([`Storage::remove_unused`]).
#[derive(Clone, Copy, Debug)]
pub enum Unused<'a> {
    /// A manifest no tag reaches (`--delete-untagged`).
    Manifest {
        /// Its repository.
        name: &'a str,
        /// The manifest.
        digest: &'a Digest,
    },
    /// A repository's link to a blob that is not stored.
    Link {
        /// The repository.
        name: &'a str,
        /// The blob.
        digest: &'a Digest,
    },
}

/// What [`Storage::put_manifest`] records.
#[derive(Debug)]
pub struct ManifestCommit<'a> {
    /// The manifest's digest.
    pub digest: &'a Digest,
    /// The exact bytes pushed.
    pub bytes: &'a [u8],
    /// Its media type.
    pub media_type: &'a str,
    /// The blobs it references (config, layers, blocks), linked into the repository.
    pub blobs: &'a [Digest],
    /// Its subject, for the referrers API.
    pub subject: Option<&'a Digest>,
    /// The tag to point at it.
    pub tag: Option<&'a str>,
}

/// The `subject` digest of a manifest document.
pub fn subject_of(bytes: &[u8]) -> Option<Digest> {
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    Digest::parse(value.get("subject")?.get("digest")?.as_str()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_urls_parse_and_wrong_ones_say_why() {
        let s3 = |bucket: &str, prefix: &str| {
            Location::S3(S3Location {
                bucket: bucket.into(),
                prefix: prefix.into(),
            })
        };
        let ok = |t: &str| Location::parse(t).unwrap_or_else(|e| panic!("{t}: {e}"));
        assert_eq!(ok("s3://reg"), s3("reg", ""));
        assert_eq!(ok("s3://reg/"), s3("reg", ""));
        assert_eq!(ok("s3://reg/a/b/"), s3("reg", "a/b"));
        assert_eq!(ok("/var/lib/reg"), Location::Dir("/var/lib/reg".into()));
        assert_eq!(
            ok("file:///var/lib/reg"),
            Location::Dir("/var/lib/reg".into())
        );
        assert_eq!(ok("s3://reg/a/b").to_string(), "s3://reg/a/b");
        for (bad, why) in [
            ("s3://", "bucket name"),
            ("s3://UPPER/x", "bucket name"),
            ("s3://b/x", "bucket name"),
            ("s3://reg/a/../b", "prefix"),
            ("s3://reg/a//b", "prefix"),
            ("s3://reg/a b", "prefix"),
            ("gs://reg/x", "expected s3://"),
        ] {
            let e = Location::parse(bad).expect_err(bad).to_string();
            assert!(e.contains(why) && e.contains(bad), "{bad}: {e}");
        }
    }
}
