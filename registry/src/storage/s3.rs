//! The registry's storage in an S3-compatible bucket, through `object_store`.
//!
//! The keys under `PREFIX/` mirror the file-system layout ([`super::fs`]):
//!
//! ```text
//! blobs/ALG/XX/HEX                       every blob once, manifests included
//! touched/ALG/HEX                        a blob was used (HEAD, commit) at its time
//! uploads/ID/repository                  an upload session's repository
//! uploads/ID/chunks/OFFSET-SIZE-PATCH    a PATCH that arrived whole (empty)
//! uploads/ID/parts/OFFSET/PATCH/NNNNNN   its bytes, in parts of 512 KiB
//! repositories/NAME/_blobs/ALG/HEX       the blob is linked into NAME (empty)
//! repositories/NAME/_manifests/ALG/HEX   a manifest of NAME (holds its media type)
//! repositories/NAME/_tags/TAG            the tag (holds the manifest digest)
//! repositories/NAME/_referrers/ALG/SUBJECT-HEX/ALG/HEX
//! gc/...                                 collections and pushes in progress ([`collect`])
//! ```
//!
//! Everything an upload needs lives in the bucket, so any replica can continue
//! a session another started: its size is the sum of its chunks, and its
//! digest, when the replica has not hashed it as it arrived, is computed from
//! them. A blob becomes visible only once verified: its chunks are streamed
//! into one multipart upload of the final key, hashed on the way, and the
//! upload is completed only when the digest matches (S3 shows a multipart
//! object only when it is complete); otherwise it is aborted. A blob of at
//! most [`SINGLE_PUT_MAX`] bytes is hashed in memory and written with one PUT. Two replicas
//! committing the same blob write the same bytes to the same key, and either
//! write is the blob. Tags and records are single PUTs, which S3 makes
//! atomic. S3 has no modification time to refresh, so a blob's use is a
//! `touched/` object whose time the collector reads beside the blob's own.
//!
//! Collections run online beside replicas that take pushes: [`collect`] says
//! how they are ordered.
//!
//! The storage API is synchronous: each call blocks on the registry's async
//! runtime, from the blocking threads the API runs storage work on.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as Key;
use object_store::{
    GetOptions, GetRange, ObjectMeta, ObjectStore, PutPayload, RetryConfig, WriteMultipart,
};
use oci_blocks_core::Digest;
use oci_blocks_core::digest::{Algorithm, Hasher};
use tokio::runtime::Handle;
use tokio::sync::RwLock;

use super::{ManifestCommit, S3Location};
use crate::error::{Error, Result};

mod collect;
pub use collect::{LEASE_TTL, PendingPut, Sweep};

/// The chunks (PATCH requests) one upload session may have in a bucket: each
/// is objects that the commit reads back, so a client sending a blob a few
/// bytes at a time would otherwise cost the store without bound.
pub const MAX_CHUNKS: usize = 10_000;

/// The size of the part objects a PATCH body is stored as: what one body in
/// flight holds in memory.
pub const PART_SIZE: usize = 512 << 10;

/// Upload commits that run at once: each holds up to a few multipart parts
/// (5 MiB each) in memory.
pub const COMMITS_AT_ONCE: usize = 2;

/// Blobs up to this size are committed with one PUT of bytes held in memory;
/// larger ones stream through a multipart upload (whose parts must be 5 MiB
/// or more, and which costs three requests more).
pub const SINGLE_PUT_MAX: u64 = 4 << 20;

/// Storage in a bucket.
pub struct S3Storage {
    store: Arc<dyn ObjectStore>,
    location: S3Location,
    runtime: Handle,
    /// Orders manifest commits against collections and blob deletions in
    /// this process (the file-system backend's `gc.lock`).
    commits: Arc<RwLock<()>>,
    /// [`COMMITS_AT_ONCE`] permits.
    commit_slots: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for S3Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "S3Storage({})", self.location)
    }
}

/// A held commit lock.
pub enum S3Lock {
    /// Shared: a manifest commit.
    Shared(#[allow(dead_code)] tokio::sync::OwnedRwLockReadGuard<()>),
    /// Exclusive: a collection or a blob deletion.
    Exclusive(#[allow(dead_code)] tokio::sync::OwnedRwLockWriteGuard<()>),
}

fn is_not_found(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

/// Credentials from the shared credentials file (`AWS_SHARED_CREDENTIALS_FILE`,
/// else `~/.aws/credentials`), section `AWS_PROFILE` (else `default`).
fn shared_credentials() -> Option<(String, String, Option<String>)> {
    let path = std::env::var_os("AWS_SHARED_CREDENTIALS_FILE")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".aws/credentials"))
        })?;
    let text = std::fs::read_to_string(path).ok()?;
    let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
    let mut in_section = false;
    let mut values: HashMap<String, String> = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_section = name.trim() == profile;
            continue;
        }
        if in_section && let Some((k, v)) = line.split_once('=') {
            values.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    Some((
        values.remove("aws_access_key_id")?,
        values.remove("aws_secret_access_key")?,
        values.remove("aws_session_token"),
    ))
}

impl S3Storage {
    /// Storage in `location`, configured the AWS way: `AWS_ENDPOINT_URL`,
    /// `AWS_REGION`, `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`, else the
    /// shared credentials file and `AWS_PROFILE`. Requests are path-style
    /// unless `AWS_VIRTUAL_HOSTED_STYLE_REQUEST=true`; an `http://` endpoint
    /// is allowed. Must be called inside the registry's runtime.
    pub fn open(location: &S3Location) -> Result<S3Storage> {
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(&location.bucket);
        let endpoint = std::env::var("AWS_ENDPOINT_URL")
            .or_else(|_| std::env::var("AWS_ENDPOINT"))
            .ok();
        if let Some(endpoint) = &endpoint {
            builder = builder.with_endpoint(endpoint);
            if endpoint.starts_with("http://") {
                builder = builder.with_allow_http(true);
            }
        }
        if std::env::var_os("AWS_REGION").is_none()
            && std::env::var_os("AWS_DEFAULT_REGION").is_none()
        {
            builder = builder.with_region("us-east-1");
        }
        if std::env::var_os("AWS_ACCESS_KEY_ID").is_none()
            && let Some((id, secret, token)) = shared_credentials()
        {
            builder = builder
                .with_access_key_id(id)
                .with_secret_access_key(secret);
            if let Some(token) = token {
                builder = builder.with_token(token);
            }
        }
        // A store that is down answers 5xx within seconds, for clients to
        // retry, instead of holding requests through minutes of retries here.
        let store = builder
            .with_retry(RetryConfig {
                max_retries: 3,
                retry_timeout: Duration::from_secs(10),
                ..RetryConfig::default()
            })
            .build()
            .map_err(|e| Error::Config(format!("--storage {location}: {e}")))?;
        let runtime = Handle::try_current().map_err(|_| {
            Error::Config("object storage needs the registry's async runtime".into())
        })?;
        Ok(S3Storage {
            store: Arc::new(store),
            location: location.clone(),
            runtime,
            commits: Arc::new(RwLock::new(())),
            commit_slots: Arc::new(tokio::sync::Semaphore::new(COMMITS_AT_ONCE)),
        })
    }

    /// Where the storage is, for messages.
    pub fn location(&self) -> &S3Location {
        &self.location
    }

    fn key(&self, rel: &str) -> Key {
        if self.location.prefix.is_empty() {
            Key::from(rel)
        } else {
            Key::from(format!("{}/{rel}", self.location.prefix))
        }
    }

    fn error(&self, key: &Key, source: object_store::Error) -> Error {
        Error::ObjectStore {
            key: format!("s3://{}/{key}", self.location.bucket),
            source: Box::new(source),
        }
    }

    fn block<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    // ---- primitives (async) ---------------------------------------------------

    async fn head(&self, key: &Key) -> Result<Option<ObjectMeta>> {
        match self.store.head(key).await {
            Ok(m) => Ok(Some(m)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(self.error(key, e)),
        }
    }

    async fn get(&self, key: &Key) -> Result<Option<Bytes>> {
        match self.store.get(key).await {
            Ok(r) => Ok(Some(r.bytes().await.map_err(|e| self.error(key, e))?)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(self.error(key, e)),
        }
    }

    async fn put(&self, key: &Key, bytes: Vec<u8>) -> Result<()> {
        self.store
            .put(key, PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|e| self.error(key, e))
    }

    /// Deletes `key`; whether it was there.
    async fn delete(&self, key: &Key) -> Result<bool> {
        if self.head(key).await?.is_none() {
            return Ok(false);
        }
        match self.store.delete(key).await {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(self.error(key, e)),
        }
    }

    /// Every object below `prefix`, recursively.
    async fn list(&self, prefix: &Key) -> Result<Vec<ObjectMeta>> {
        let mut stream = self.store.list(Some(prefix));
        let mut out = Vec::new();
        while let Some(m) = stream.next().await {
            out.push(m.map_err(|e| self.error(prefix, e))?);
        }
        Ok(out)
    }

    /// The names directly below `prefix`: sub-prefixes and objects.
    async fn children(&self, prefix: &Key) -> Result<(Vec<String>, Vec<ObjectMeta>)> {
        let listed = self
            .store
            .list_with_delimiter(Some(prefix))
            .await
            .map_err(|e| self.error(prefix, e))?;
        let dirs = listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect();
        Ok((dirs, listed.objects))
    }

    // ---- locks ------------------------------------------------------------------

    /// Takes the commit lock shared (manifest commits).
    pub fn lock_shared(&self) -> Result<S3Lock> {
        Ok(S3Lock::Shared(
            self.block(self.commits.clone().read_owned()),
        ))
    }

    /// Takes the commit lock exclusively (collections, blob deletions).
    pub fn lock_exclusive(&self) -> Result<S3Lock> {
        Ok(S3Lock::Exclusive(
            self.block(self.commits.clone().write_owned()),
        ))
    }

    // ---- blobs --------------------------------------------------------------

    /// The key of blob `digest`.
    pub fn blob_key(&self, digest: &Digest) -> Key {
        let hex = digest.hex();
        self.key(&format!(
            "blobs/{}/{}/{hex}",
            digest.algorithm().as_str(),
            &hex[..2]
        ))
    }

    fn touched_key(&self, digest: &Digest) -> Key {
        self.key(&format!(
            "touched/{}/{}",
            digest.algorithm().as_str(),
            digest.hex()
        ))
    }

    /// The store, for streaming reads.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The size of a stored blob, if it is stored.
    pub fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        let key = self.blob_key(digest);
        Ok(self.block(self.head(&key))?.map(|m| m.size))
    }

    /// A whole stored blob (manifests; callers bound the size).
    pub fn read_blob(&self, digest: &Digest) -> Result<Option<Vec<u8>>> {
        let key = self.blob_key(digest);
        Ok(self.block(self.get(&key))?.map(|b| b.to_vec()))
    }

    /// A byte range of a blob, streamed: the response body of a GET.
    pub async fn get_blob(
        &self,
        digest: &Digest,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<Option<object_store::GetResult>> {
        let key = self.blob_key(digest);
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..GetOptions::default()
        };
        match self.store.get_opts(&key, options).await {
            Ok(r) => Ok(Some(r)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(self.error(&key, e)),
        }
    }

    fn repo(&self, name: &str, rest: &str) -> Key {
        self.key(&format!("repositories/{name}/{rest}"))
    }

    fn digest_rel(digest: &Digest) -> String {
        format!("{}/{}", digest.algorithm().as_str(), digest.hex())
    }

    fn blob_link(&self, name: &str, digest: &Digest) -> Key {
        self.repo(name, &format!("_blobs/{}", Self::digest_rel(digest)))
    }

    /// Whether the blob is stored and linked into repository `name`.
    pub fn linked_blob_size(&self, name: &str, digest: &Digest) -> Result<Option<u64>> {
        let link = self.blob_link(name, digest);
        if self.block(self.head(&link))?.is_none() {
            return Ok(None);
        }
        self.blob_size(digest)
    }

    /// Links a stored blob into repository `name`.
    pub fn link_blob(&self, name: &str, digest: &Digest) -> Result<()> {
        let link = self.blob_link(name, digest);
        self.block(self.put(&link, Vec::new()))
    }

    /// Removes a blob's link from `name`; whether there was one.
    pub fn unlink_blob(&self, name: &str, digest: &Digest) -> Result<bool> {
        let link = self.blob_link(name, digest);
        self.block(self.delete(&link))
    }

    // ---- uploads --------------------------------------------------------------

    fn upload_key(&self, id: &str, rest: &str) -> Key {
        self.key(&format!("uploads/{id}/{rest}"))
    }

    /// Opens an upload session for `name`; its id.
    pub fn new_upload(&self, name: &str) -> Result<String> {
        let id = uuid::Uuid::new_v4().to_string();
        let key = self.upload_key(&id, "repository");
        self.block(self.put(&key, name.as_bytes().to_vec()))?;
        Ok(id)
    }

    /// The chunks of a session, by offset: the PATCHes that arrived whole.
    async fn chunks(&self, id: &str) -> Result<Vec<Chunk>> {
        let mut out: Vec<Chunk> = self
            .list(&self.upload_key(id, "chunks"))
            .await?
            .into_iter()
            .filter_map(|m| Chunk::parse(m.location.filename()?))
            .collect();
        out.sort_by_key(|c| c.offset);
        Ok(out)
    }

    /// The repository and size of an open session; `id` must be a UUID.
    pub fn upload(&self, id: &str) -> Result<Option<(String, u64)>> {
        if uuid::Uuid::parse_str(id).is_err() {
            return Ok(None);
        }
        self.block(async {
            let Some(repo) = self.get(&self.upload_key(id, "repository")).await? else {
                return Ok(None);
            };
            let chunks = self.chunks(id).await?;
            let size = contiguous_size(&chunks).ok_or_else(|| {
                Error::Corrupt(format!(
                    "upload {id}: its chunks in the bucket are not contiguous"
                ))
            })?;
            Ok(Some((String::from_utf8_lossy(&repo).into_owned(), size)))
        })
    }

    /// Appends one request body to session `id` at `offset`: its bytes go to
    /// part objects of at most [`PART_SIZE`] bytes, and a chunk object that
    /// names them is written last, so nothing of the body counts unless it
    /// arrived whole (and, with `expected`, at that length). At most one part
    /// per body is held in memory.
    pub async fn append_chunk<S, E>(
        &self,
        id: &str,
        offset: u64,
        mut body: S,
        expected: Option<u64>,
    ) -> Result<AppendOutcome<E>>
    where
        S: futures_util::Stream<Item = std::result::Result<Bytes, E>> + Unpin,
    {
        let held = self.chunks(id).await?.len();
        if held >= MAX_CHUNKS {
            return Ok(AppendOutcome::TooManyChunks(held));
        }
        let patch = uuid::Uuid::new_v4().simple().to_string();
        let parts = self.upload_key(id, &format!("parts/{offset:020}/{patch}"));
        let mut part = bytes::BytesMut::new();
        let mut count = 0usize;
        let mut written = 0u64;
        let flush = async |part: &mut bytes::BytesMut, count: &mut usize| -> Result<()> {
            let key = Key::from(format!("{parts}/{:06}", *count));
            *count += 1;
            let payload = PutPayload::from(part.split().freeze());
            self.store
                .put(&key, payload)
                .await
                .map(|_| ())
                .map_err(|e| self.error(&key, e))
        };
        let failed = loop {
            let Some(next) = body.next().await else {
                break None;
            };
            let mut bytes = match next {
                Ok(b) => b,
                Err(e) => break Some(AppendOutcome::BodyFailed(e, written)),
            };
            written += bytes.len() as u64;
            while !bytes.is_empty() {
                // One allocation of the part's size, not a doubling series.
                if part.capacity() < PART_SIZE {
                    part.reserve(PART_SIZE - part.len());
                }
                let room = PART_SIZE - part.len();
                let take = bytes.split_to(room.min(bytes.len()));
                part.extend_from_slice(&take);
                if part.len() == PART_SIZE
                    && let Err(e) = flush(&mut part, &mut count).await
                {
                    self.drop_parts(&parts).await;
                    return Err(e);
                }
            }
        };
        if let Some(outcome) = failed {
            self.drop_parts(&parts).await;
            return Ok(outcome);
        }
        if expected.is_some_and(|e| e != written) {
            self.drop_parts(&parts).await;
            return Ok(AppendOutcome::WrongLength(written));
        }
        if !part.is_empty()
            && let Err(e) = flush(&mut part, &mut count).await
        {
            self.drop_parts(&parts).await;
            return Err(e);
        }
        if written > 0 {
            let chunk = Chunk {
                offset,
                size: written,
                patch,
            };
            self.put(
                &self.upload_key(id, &format!("chunks/{}", chunk.name())),
                Vec::new(),
            )
            .await?;
        }
        Ok(AppendOutcome::Done(written))
    }

    /// Removes the parts of a body that will not count (best effort: a
    /// session's leftovers go with it).
    async fn drop_parts(&self, parts: &Key) {
        if let Ok(objects) = self.list(parts).await {
            for m in objects {
                let _ = self.store.delete(&m.location).await;
            }
        }
    }

    /// Discards a session.
    pub fn remove_upload(&self, id: &str) -> Result<()> {
        self.block(async {
            for m in self.list(&self.key(&format!("uploads/{id}"))).await? {
                match self.store.delete(&m.location).await {
                    Err(e) if !is_not_found(&e) => return Err(self.error(&m.location, e)),
                    _ => {}
                }
            }
            Ok(())
        })
    }

    /// The bytes of a session's chunks, in order, streamed.
    fn session_bytes<'a>(
        &'a self,
        id: &'a str,
        chunks: &'a [Chunk],
    ) -> impl futures_util::Stream<Item = Result<Bytes>> + 'a {
        futures_util::stream::iter(chunks)
            .then(move |c| async move {
                let prefix = self.upload_key(id, &format!("parts/{:020}/{}", c.offset, c.patch));
                let mut parts = self.list(&prefix).await?;
                parts.sort_by(|a, b| a.location.cmp(&b.location));
                let size: u64 = parts.iter().map(|m| m.size).sum();
                if size != c.size {
                    return Err(Error::Corrupt(format!(
                        "upload {id}: the chunk at {} holds {size} bytes in the bucket, not {}",
                        c.offset, c.size
                    )));
                }
                Ok(futures_util::stream::iter(parts)
                    .then(move |m| async move {
                        let got = self
                            .store
                            .get(&m.location)
                            .await
                            .map_err(|e| self.error(&m.location, e))?;
                        Ok::<_, Error>(
                            got.into_stream()
                                .map(move |b| b.map_err(|e| self.error(&m.location, e))),
                        )
                    })
                    .try_flatten())
            })
            .try_flatten()
    }

    /// Hashes a session's bytes (a session another replica started).
    pub fn hash_upload(&self, id: &str, algorithm: Algorithm) -> Result<Digest> {
        self.block(async {
            let chunks = self.chunks(id).await?;
            let mut hasher = Hasher::new(algorithm);
            let mut bytes = std::pin::pin!(self.session_bytes(id, &chunks));
            while let Some(b) = bytes.next().await {
                hasher.update(&b?);
            }
            Ok(hasher.finish())
        })
    }

    /// Makes a verified upload the blob `digest`, linked into `name`: its
    /// chunks are streamed into the blob's key, hashed again on the way, and
    /// the write completes only if the digest matches.
    pub fn commit_upload(&self, id: &str, digest: &Digest, name: &str) -> Result<()> {
        self.block(async {
            // Before looking for the blob: a collection that removes it
            // either sees this use or is waited for.
            self.use_digest_waiting(digest).await?;
            let dest = self.blob_key(digest);
            if self.head(&dest).await?.is_none() {
                let chunks = self.chunks(id).await?;
                let size: u64 = chunks.iter().map(|c| c.size).sum();
                // Bounded memory: a commit holds a multipart part or a small
                // blob, and only so many run at once.
                let _slot = self.commit_slots.acquire().await;
                let written = if size <= SINGLE_PUT_MAX {
                    self.write_small(id, &chunks, digest, &dest).await
                } else {
                    self.write_multipart(id, &chunks, digest, &dest).await
                };
                match written {
                    Ok(()) => {}
                    // Another replica committing the same blob finished first
                    // (Garage aborts a key's other multipart uploads when one
                    // completes): the blob is there, verified by that replica.
                    Err(e @ Error::ObjectStore { .. }) => {
                        if self.head(&dest).await?.is_none_or(|m| m.size != size) {
                            return Err(e);
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            self.put(&self.blob_link(name, digest), Vec::new()).await
        })?;
        self.remove_upload(id)
    }

    /// Writes a blob of at most [`SINGLE_PUT_MAX`] bytes with one PUT, once
    /// its bytes hash to `digest`.
    async fn write_small(
        &self,
        id: &str,
        chunks: &[Chunk],
        digest: &Digest,
        dest: &Key,
    ) -> Result<()> {
        let mut hasher = Hasher::new(digest.algorithm());
        let mut body = Vec::new();
        let mut bytes = std::pin::pin!(self.session_bytes(id, chunks));
        while let Some(b) = bytes.next().await {
            let b = b?;
            if body.len() + b.len() > SINGLE_PUT_MAX as usize {
                return Err(Error::Corrupt(format!(
                    "upload {id} grew beyond {SINGLE_PUT_MAX} bytes while it was committed"
                )));
            }
            hasher.update(&b);
            body.extend_from_slice(&b);
        }
        let actual = hasher.finish();
        if &actual != digest {
            return Err(Error::Corrupt(format!(
                "upload {id} hashes to {actual} in the bucket, not {digest}"
            )));
        }
        self.put(dest, body).await
    }

    /// Streams a session's chunks into a multipart upload of `dest`, hashed on
    /// the way, completed only if they hash to `digest`.
    async fn write_multipart(
        &self,
        id: &str,
        chunks: &[Chunk],
        digest: &Digest,
        dest: &Key,
    ) -> Result<()> {
        let mut hasher = Hasher::new(digest.algorithm());
        let upload = self
            .store
            .put_multipart(dest)
            .await
            .map_err(|e| self.error(dest, e))?;
        let mut writer = WriteMultipart::new(upload);
        let copied: Result<()> = async {
            let mut bytes = std::pin::pin!(self.session_bytes(id, chunks));
            while let Some(b) = bytes.next().await {
                let b = b?;
                hasher.update(&b);
                writer
                    .wait_for_capacity(1)
                    .await
                    .map_err(|e| self.error(dest, e))?;
                writer.write(&b);
            }
            Ok(())
        }
        .await;
        let actual = hasher.finish();
        if copied.is_err() || &actual != digest {
            let _ = writer.abort().await;
            copied?;
            return Err(Error::Corrupt(format!(
                "upload {id} hashes to {actual} in the bucket, not {digest}"
            )));
        }
        writer
            .finish()
            .await
            .map(|_| ())
            .map_err(|e| self.error(dest, e))
    }

    /// Stores `bytes` as blob `digest` (manifests) unless it is stored.
    pub fn put_blob_bytes(&self, digest: &Digest, bytes: &[u8]) -> Result<()> {
        let key = self.blob_key(digest);
        self.block(async {
            if self.head(&key).await?.is_none() {
                self.put(&key, bytes.to_vec()).await?;
            }
            self.put(&self.touched_key(digest), Vec::new()).await
        })
    }

    /// Session ids with the time their last chunk was written.
    pub fn uploads(&self) -> Result<Vec<(String, SystemTime)>> {
        self.block(async {
            let mut latest: HashMap<String, SystemTime> = HashMap::new();
            for m in self.list(&self.key("uploads")).await? {
                let parts: Vec<_> = m.location.parts().collect();
                let skip = usize::from(!self.location.prefix.is_empty())
                    * self.location.prefix.split('/').count();
                let Some(id) = parts.get(skip + 1) else {
                    continue;
                };
                let t = SystemTime::from(m.last_modified);
                let e = latest.entry(id.as_ref().to_string()).or_insert(t);
                *e = (*e).max(t);
            }
            Ok(latest.into_iter().collect())
        })
    }

    // ---- manifests, tags, referrers --------------------------------------------

    fn manifest_record(&self, name: &str, digest: &Digest) -> Key {
        self.repo(name, &format!("_manifests/{}", Self::digest_rel(digest)))
    }

    fn tag_key(&self, name: &str, tag: &str) -> Key {
        self.repo(name, &format!("_tags/{tag}"))
    }

    fn referrer_key(&self, name: &str, subject: &Digest, digest: &Digest) -> Key {
        self.repo(
            name,
            &format!(
                "_referrers/{}/{}",
                Self::digest_rel(subject),
                Self::digest_rel(digest)
            ),
        )
    }

    /// The media type of manifest `digest` in `name`.
    pub fn manifest_media_type(&self, name: &str, digest: &Digest) -> Result<Option<String>> {
        let key = self.manifest_record(name, digest);
        Ok(self
            .block(self.get(&key))?
            .map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    /// When manifest `digest` was last pushed to `name`.
    pub fn manifest_pushed(&self, name: &str, digest: &Digest) -> Result<Option<SystemTime>> {
        let key = self.manifest_record(name, digest);
        Ok(self
            .block(self.head(&key))?
            .map(|m| SystemTime::from(m.last_modified)))
    }

    /// Records a checked manifest: bytes, links, record, referrer entry, tag
    /// (last, so that a tag never names a manifest that is not there).
    pub fn put_manifest(&self, name: &str, m: &ManifestCommit<'_>) -> Result<()> {
        self.put_blob_bytes(m.digest, m.bytes)?;
        for blob in m.blobs {
            self.link_blob(name, blob)?;
        }
        self.block(async {
            self.put(
                &self.manifest_record(name, m.digest),
                m.media_type.as_bytes().to_vec(),
            )
            .await?;
            if let Some(subject) = m.subject {
                self.put(&self.referrer_key(name, subject, m.digest), Vec::new())
                    .await?;
            }
            if let Some(tag) = m.tag {
                self.put(
                    &self.tag_key(name, tag),
                    m.digest.as_str().as_bytes().to_vec(),
                )
                .await?;
            }
            Ok(())
        })
    }

    /// The manifest a tag points at.
    pub fn resolve_tag(&self, name: &str, tag: &str) -> Result<Option<Digest>> {
        let Some(bytes) = self.block(self.get(&self.tag_key(name, tag)))? else {
            return Ok(None);
        };
        Ok(Digest::parse(String::from_utf8_lossy(&bytes).trim()).ok())
    }

    /// Whether repository `name` has held a blob, manifest or tag.
    pub fn repository_exists(&self, name: &str) -> Result<bool> {
        let prefix = self.key(&format!("repositories/{name}"));
        let (dirs, _) = self.block(self.children(&prefix))?;
        Ok(dirs
            .iter()
            .any(|d| matches!(d.as_str(), "_blobs" | "_manifests" | "_tags")))
    }

    /// The tags of `name`, sorted.
    pub fn tags(&self, name: &str) -> Result<Vec<String>> {
        let (_, objects) = self.block(self.children(&self.repo(name, "_tags")))?;
        let mut tags: Vec<String> = objects
            .iter()
            .filter_map(|m| m.location.filename().map(str::to_string))
            .filter(|t| crate::names::valid_tag(t))
            .collect();
        tags.sort();
        Ok(tags)
    }

    /// Removes a tag; whether it existed.
    pub fn delete_tag(&self, name: &str, tag: &str) -> Result<bool> {
        self.block(self.delete(&self.tag_key(name, tag)))
    }

    /// [`super::Storage::delete_manifest`] for a manifest no tag points at.
    pub fn delete_untagged_manifest(&self, name: &str, digest: &Digest) -> Result<bool> {
        self.block(self.delete_untagged_manifest_async(name, digest))
    }

    async fn delete_untagged_manifest_async(&self, name: &str, digest: &Digest) -> Result<bool> {
        let bytes = self.get(&self.blob_key(digest)).await?;
        if !self.delete(&self.manifest_record(name, digest)).await? {
            return Ok(false);
        }
        if let Some(subject) = bytes.as_deref().and_then(super::subject_of) {
            self.delete(&self.referrer_key(name, &subject, digest))
                .await?;
        }
        Ok(true)
    }

    fn digests_below(&self, prefix: &Key) -> Result<Vec<Digest>> {
        let objects = self.block(self.list(prefix))?;
        Ok(objects
            .iter()
            .filter_map(|m| digest_of(&m.location, false))
            .collect())
    }

    /// The manifests of `name` whose subject is `subject`.
    pub fn referrers(&self, name: &str, subject: &Digest) -> Result<Vec<Digest>> {
        self.block(self.referrers_async(name, subject))
    }

    async fn referrers_async(&self, name: &str, subject: &Digest) -> Result<Vec<Digest>> {
        let prefix = self.repo(name, &format!("_referrers/{}", Self::digest_rel(subject)));
        let mut out = Vec::new();
        for m in self.list(&prefix).await? {
            let Some(d) = digest_of(&m.location, false) else {
                continue;
            };
            if self.head(&self.manifest_record(name, &d)).await?.is_some() {
                out.push(d);
            }
        }
        out.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        Ok(out)
    }

    /// The manifests recorded in `name`.
    pub fn manifests(&self, name: &str) -> Result<Vec<Digest>> {
        self.digests_below(&self.repo(name, "_manifests"))
    }

    /// The blobs linked into `name`.
    pub fn linked_blobs(&self, name: &str) -> Result<Vec<Digest>> {
        self.digests_below(&self.repo(name, "_blobs"))
    }

    /// Every repository, sorted.
    pub fn repositories(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut stack = vec![String::new()];
        while let Some(prefix) = stack.pop() {
            let key = if prefix.is_empty() {
                self.key("repositories")
            } else {
                self.key(&format!("repositories/{prefix}"))
            };
            let (dirs, _) = self.block(self.children(&key))?;
            let mut is_repo = false;
            for d in dirs {
                if d.starts_with('_') {
                    is_repo |= matches!(d.as_str(), "_blobs" | "_manifests" | "_tags");
                    continue;
                }
                stack.push(if prefix.is_empty() {
                    d
                } else {
                    format!("{prefix}/{d}")
                });
            }
            if is_repo {
                out.push(prefix);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Every stored blob with its size and the later of its write and its
    /// last use.
    pub fn blobs(&self) -> Result<Vec<(Digest, u64, SystemTime)>> {
        let touched: HashMap<Digest, SystemTime> = self
            .block(self.list(&self.key("touched")))?
            .into_iter()
            .filter_map(|m| Some((digest_of(&m.location, false)?, m.last_modified.into())))
            .collect();
        Ok(self
            .block(self.list(&self.key("blobs")))?
            .into_iter()
            .filter_map(|m| {
                let d = digest_of(&m.location, true)?;
                let written = SystemTime::from(m.last_modified);
                let used = touched.get(&d).copied().unwrap_or(written).max(written);
                Some((d, m.size, used))
            })
            .collect())
    }
}

/// How an [`S3Storage::append_chunk`] ended.
pub enum AppendOutcome<E> {
    /// The whole body is stored: its length.
    Done(u64),
    /// The body broke off after this many bytes; nothing was stored.
    BodyFailed(E, u64),
    /// The body had this many bytes, not the length declared; nothing was
    /// stored.
    WrongLength(u64),
    /// The session holds this many chunks, [`MAX_CHUNKS`] or more; nothing
    /// was stored.
    TooManyChunks(usize),
}

/// The digest a key ends in: `.../ALG/HEX`, or `.../ALG/XX/HEX` when
/// `fanned` (the `blobs/` layout).
fn digest_of(key: &Key, fanned: bool) -> Option<Digest> {
    let mut parts: Vec<String> = key.parts().map(|p| p.as_ref().to_string()).collect();
    let hex = parts.pop()?;
    if fanned {
        parts.pop()?;
    }
    let algorithm = parts.pop()?;
    Digest::parse(&format!("{algorithm}:{hex}")).ok()
}

/// The size of a session whose chunks are contiguous from 0.
fn contiguous_size(chunks: &[Chunk]) -> Option<u64> {
    let mut size = 0u64;
    for c in chunks {
        if c.offset != size {
            return None;
        }
        size = size.checked_add(c.size)?;
    }
    Some(size)
}

/// One PATCH body that arrived whole: `chunks/OFFSET-SIZE-PATCH`, naming its
/// parts `parts/OFFSET/PATCH/NNNNNN`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Chunk {
    offset: u64,
    size: u64,
    patch: String,
}

impl Chunk {
    fn name(&self) -> String {
        format!("{:020}-{:020}-{}", self.offset, self.size, self.patch)
    }

    fn parse(name: &str) -> Option<Chunk> {
        let mut fields = name.splitn(3, '-');
        let offset = fields.next()?.parse().ok()?;
        let size = fields.next()?.parse().ok()?;
        let patch = fields.next()?;
        (patch.len() == 32 && patch.bytes().all(|b| b.is_ascii_hexdigit())).then(|| Chunk {
            offset,
            size,
            patch: patch.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_names_round_trip_and_others_are_not_chunks() {
        let c = Chunk {
            offset: 5 << 20,
            size: 1234,
            patch: "0123456789abcdef0123456789abcdef".into(),
        };
        assert_eq!(Chunk::parse(&c.name()), Some(c.clone()));
        for bad in [
            "00000000000000000000",
            "x-1-0123456789abcdef0123456789abcdef",
            "1-2-../../etc",
            "1-2-0123456789abcdef0123456789abcde",
        ] {
            assert_eq!(Chunk::parse(bad), None, "{bad}");
        }
        let next = Chunk {
            offset: c.offset + c.size,
            size: 1,
            patch: c.patch.clone(),
        };
        assert_eq!(contiguous_size(std::slice::from_ref(&next)), None);
        let first = Chunk { offset: 0, ..c };
        let second = Chunk {
            offset: first.size,
            ..next
        };
        assert_eq!(contiguous_size(&[first, second]), Some(1235));
    }
}
