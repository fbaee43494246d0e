//! Online collection on a bucket, beside replicas that take pushes.
//!
//! A bucket has no lock, so a sweep is ordered against pushes by pairs of
//! "write, then read" on both sides (`registry/README.md`, "Online collection
//! across replicas", says why no pushed manifest loses a blob):
//!
//! ```text
//! gc/lease                        the collector that runs, until when (JSON)
//! gc/sweeps/ID                    collection ID is running; its time is the store's
//! gc/pending/ID                   a manifest PUT in progress and what it names (JSON)
//! gc/condemned/ALG/HEX/ID         collection ID is about to remove ALG:HEX
//! ```
//!
//! - A manifest PUT writes `gc/pending/`, then lists `gc/sweeps/`. The
//!   collector writes its sweep marker, then lists `gc/pending/` and keeps
//!   everything those name. Either the PUT sees the sweep or the collector
//!   sees the PUT.
//! - A PUT that sees a sweep records a use of every digest it names
//!   (`touched/`), then lists their `gc/condemned/` entries. The collector
//!   condemns a digest, then reads its last use again before removing it.
//!   Either the PUT sees the condemnation (and answers 503, to be retried) or
//!   the collector sees the use (and keeps the digest).
//! - An upload commit or a HEAD that finds a blob does the same; a commit
//!   waits until the blob is no longer condemned, then writes it again if the
//!   collector removed it.
//!
//! The times compared are the store's (`Last-Modified`), never a replica's.

use std::time::{Duration, SystemTime};

use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path as Key;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};
use oci_blocks_core::Digest;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio::runtime::Handle;

use super::S3Storage;
use crate::error::{Error, Result};
use crate::storage::ManifestFacts;

/// How long a collector's lease lasts unless renewed; a running collection
/// renews it (and its sweep marker) every third of that. A collector that
/// died holds the next one off for at most this long. Two collectors that
/// overlap anyway (where the store ignores conditional puts) are still safe:
/// each condemns under its own id; they only repeat work.
pub const LEASE_TTL: Duration = Duration::from_secs(120);

/// Sweep markers not renewed for this long, and manifest PUT records this
/// old, belong to processes that died, and a collection removes them.
pub const STALE_AFTER: Duration = Duration::from_secs(3600);

/// How long an upload commit waits for a collector to finish with its blob.
pub const CONDEMNED_WAIT: Duration = Duration::from_secs(30);

/// Requests in flight at once for one PUT's digests or one sweep step.
const PARALLEL: usize = 16;

#[derive(Serialize, Deserialize)]
struct Lease {
    holder: String,
    /// Seconds since the epoch, by the collector's clock.
    expires: u64,
}

#[derive(Serialize, Deserialize)]
struct Pending {
    repository: String,
    digests: Vec<String>,
}

/// A collection running on a bucket: its lease and sweep marker, removed on drop.
pub struct Sweep {
    /// The collection's id.
    pub id: String,
    /// When it started, by the store's clock.
    pub started: SystemTime,
    /// What manifest PUTs in progress at its start name, by repository.
    pub in_flight: Vec<(String, Vec<Digest>)>,
    store: Arc<dyn ObjectStore>,
    runtime: Handle,
    marker: Key,
    lease: Key,
    /// Held by the renewal task while it writes; true once the sweep ends.
    ended: Arc<tokio::sync::Mutex<bool>>,
}

impl Drop for Sweep {
    fn drop(&mut self) {
        let (store, marker, lease) = (&self.store, &self.marker, &self.lease);
        self.runtime.block_on(async {
            // No renewal may land after the lease is released.
            *self.ended.lock().await = true;
            let _ = store.delete(marker).await;
            if let Ok(r) = store.get(lease).await
                && let Ok(bytes) = r.bytes().await
                && serde_json::from_slice::<Lease>(&bytes).is_ok_and(|l| l.holder == self.id)
            {
                let _ = store.delete(lease).await;
            }
        });
    }
}

/// A manifest PUT in progress: its `gc/pending/` record, removed on drop.
pub struct PendingPut {
    store: Arc<dyn ObjectStore>,
    runtime: Handle,
    key: Key,
    _shared: super::S3Lock,
}

impl Drop for PendingPut {
    fn drop(&mut self) {
        let _ = self.runtime.block_on(self.store.delete(&self.key));
    }
}

fn lease_body(holder: &str) -> Result<Vec<u8>> {
    serde_json::to_vec(&Lease {
        holder: holder.to_string(),
        expires: unix(SystemTime::now() + LEASE_TTL),
    })
    .map_err(|e| Error::Corrupt(e.to_string()))
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl S3Storage {
    fn condemned_prefix(&self, digest: &Digest) -> Key {
        self.key(&format!(
            "gc/condemned/{}/{}",
            digest.algorithm().as_str(),
            digest.hex()
        ))
    }

    /// Collection `sweep`'s condemnation of `digest`.
    fn condemnation(&self, sweep: &Sweep, digest: &Digest) -> Key {
        Key::from(format!("{}/{}", self.condemned_prefix(digest), sweep.id))
    }

    /// Whether any collection has condemned `digest`.
    async fn is_condemned(&self, digest: &Digest) -> Result<bool> {
        Ok(!self.list(&self.condemned_prefix(digest)).await?.is_empty())
    }

    /// Records a use of `digest`, then says whether it may be relied on: false
    /// while a collection has condemned it.
    pub(super) async fn use_digest(&self, digest: &Digest) -> Result<bool> {
        self.put(&self.touched_key(digest), Vec::new()).await?;
        Ok(!self.is_condemned(digest).await?)
    }

    /// [`Self::use_digest`], waiting up to [`CONDEMNED_WAIT`] for a collection
    /// to finish with `digest` (an upload commit, which then writes it again
    /// if it was removed).
    pub(super) async fn use_digest_waiting(&self, digest: &Digest) -> Result<()> {
        let deadline = tokio::time::Instant::now() + CONDEMNED_WAIT;
        if self.use_digest(digest).await? {
            return Ok(());
        }
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if !self.is_condemned(digest).await? {
                return Ok(());
            }
        }
        Err(Error::Collecting {
            digest: digest.to_string(),
        })
    }

    /// Records a use of a blob found by HEAD or a mount; false while a
    /// collection has condemned it (the client should upload it).
    pub fn use_blob(&self, digest: &Digest) -> Result<bool> {
        self.block(self.use_digest(digest))
    }

    /// Starts a manifest PUT that will name `digests` in `name`. While a
    /// collection runs, records a use of each and fails with
    /// [`Error::Collecting`] if one is condemned.
    pub fn begin_manifest_put(&self, name: &str, digests: &[Digest]) -> Result<PendingPut> {
        let shared = self.lock_shared()?;
        let key = self.key(&format!("gc/pending/{}", uuid::Uuid::new_v4()));
        let record = Pending {
            repository: name.to_string(),
            digests: digests.iter().map(|d| d.to_string()).collect(),
        };
        let body = serde_json::to_vec(&record).map_err(|e| Error::Corrupt(e.to_string()))?;
        self.block(self.put(&key, body))?;
        let put = PendingPut {
            store: self.store.clone(),
            runtime: self.runtime.clone(),
            key,
            _shared: shared,
        };
        self.block(async {
            if self.list(&self.key("gc/sweeps")).await?.is_empty() {
                return Ok(());
            }
            let mut uses = futures_util::stream::iter(digests)
                .map(|d| async move { Ok::<_, Error>((d, self.use_digest(d).await?)) })
                .buffer_unordered(PARALLEL);
            while let Some((d, usable)) = uses.try_next().await? {
                if !usable {
                    return Err(Error::Collecting {
                        digest: d.to_string(),
                    });
                }
            }
            Ok(())
        })?;
        Ok(put)
    }

    /// Takes the lease, writes the sweep marker and reads what manifest PUTs
    /// in progress name.
    pub fn begin_collection(&self) -> Result<Sweep> {
        let id = uuid::Uuid::new_v4().to_string();
        let lease = self.key("gc/lease");
        self.block(self.take_lease(&lease, &id))?;
        let marker = self.key(&format!("gc/sweeps/{id}"));
        let mut sweep = Sweep {
            id: id.clone(),
            started: SystemTime::UNIX_EPOCH,
            in_flight: Vec::new(),
            store: self.store.clone(),
            runtime: self.runtime.clone(),
            marker: marker.clone(),
            lease: lease.clone(),
            ended: Arc::new(tokio::sync::Mutex::new(false)),
        };
        self.block(async {
            // The store's times read back in whole seconds (`Last-Modified`),
            // so the collection's start is the marker's second, rounded down.
            // Waiting a second first makes everything written before the
            // collector started older than that.
            tokio::time::sleep(Duration::from_secs(1)).await;
            self.put(&marker, id.as_bytes().to_vec()).await?;
            let written = self
                .head(&marker)
                .await?
                .ok_or_else(|| Error::Corrupt(format!("sweep marker {marker} vanished")))?;
            sweep.started = SystemTime::from(written.last_modified);
            let stale = sweep
                .started
                .checked_sub(STALE_AFTER)
                .unwrap_or(sweep.started);
            for m in self.list(&self.key("gc/sweeps")).await? {
                if m.location != marker && SystemTime::from(m.last_modified) < stale {
                    let _ = self.store.delete(&m.location).await;
                }
            }
            for m in self.list(&self.key("gc/pending")).await? {
                if SystemTime::from(m.last_modified) < stale {
                    let _ = self.store.delete(&m.location).await;
                    continue;
                }
                let Some(bytes) = self.get(&m.location).await? else {
                    continue; // finished meanwhile: its manifest is committed
                };
                let record: Pending = serde_json::from_slice(&bytes).map_err(|e| {
                    Error::Corrupt(format!("pending manifest record {}: {e}", m.location))
                })?;
                let digests = record
                    .digests
                    .iter()
                    .filter_map(|d| Digest::parse(d).ok())
                    .collect();
                sweep.in_flight.push((record.repository, digests));
            }
            Ok::<(), Error>(())
        })?;
        Ok(sweep)
    }

    async fn take_lease(&self, key: &Key, id: &str) -> Result<()> {
        let body = lease_body(id)?;
        // Read first: a store that ignores If-None-Match (Garage 2.5.0 does)
        // would let the conditional put below overwrite a live lease.
        if let Some(bytes) = self.get(key).await? {
            match serde_json::from_slice::<Lease>(&bytes) {
                Ok(l) if l.expires > unix(SystemTime::now()) => return Err(self.busy(key, &l)),
                // Expired, or unreadable: the holder died.
                _ => {
                    let _ = self.store.delete(key).await;
                }
            }
        }
        for _ in 0..2 {
            let create = PutOptions::from(PutMode::Create);
            match self
                .store
                .put_opts(key, PutPayload::from(body.clone()), create)
                .await
            {
                Ok(_) => break,
                Err(object_store::Error::AlreadyExists { .. })
                | Err(object_store::Error::Precondition { .. }) => {
                    let held = self.get(key).await?;
                    let lease = held
                        .as_deref()
                        .and_then(|b| serde_json::from_slice::<Lease>(b).ok());
                    match lease {
                        Some(l) if l.expires > unix(SystemTime::now()) => {
                            return Err(self.busy(key, &l));
                        }
                        // Expired, or unreadable: the holder died.
                        _ => {
                            let _ = self.store.delete(key).await;
                        }
                    }
                }
                Err(e) => return Err(self.error(key, e)),
            }
        }
        // Where the condition is ignored, two takers racing between the read
        // and the write both succeed; the last write holds the lease.
        let held = self.get(key).await?;
        match held
            .as_deref()
            .and_then(|b| serde_json::from_slice::<Lease>(b).ok())
        {
            Some(l) if l.holder == id => Ok(()),
            Some(l) => Err(self.busy(key, &l)),
            None => Err(Error::Corrupt(format!(
                "lease {key} vanished as it was taken"
            ))),
        }
    }

    fn busy(&self, key: &Key, lease: &Lease) -> Error {
        Error::Busy(format!(
            "s3://{}/{key} is held by collection {} until {} (a collector is running)",
            self.location.bucket,
            lease.holder,
            humantime::format_rfc3339_seconds(
                SystemTime::UNIX_EPOCH + Duration::from_secs(lease.expires)
            )
        ))
    }

    /// Condemns `digest` under `sweep`, reads its last use again, and removes
    /// it with `remove` only if that use is older than `cutoff` and `still`
    /// holds of what is stored; whether it was removed.
    pub(super) async fn remove_condemned<F, R>(
        &self,
        sweep: &Sweep,
        digest: &Digest,
        last_use: Option<SystemTime>,
        cutoff: SystemTime,
        remove: F,
    ) -> Result<bool>
    where
        F: FnOnce() -> R,
        R: std::future::Future<Output = Result<bool>>,
    {
        let mark = self.condemnation(sweep, digest);
        self.put(&mark, Vec::new()).await?;
        let result = async {
            let touched = self.head(&self.touched_key(digest)).await?;
            let used = touched
                .map(|m| SystemTime::from(m.last_modified))
                .into_iter()
                .chain(last_use)
                .max();
            if used.is_some_and(|t| t >= cutoff) {
                return Ok(false);
            }
            remove().await
        }
        .await;
        let _ = self.store.delete(&mark).await;
        result
    }

    /// Removes each blob of `blobs`, with its links from the repositories
    /// beside it, that was not used since `cutoff`: all are condemned, then
    /// their uses read again, then the unused ones removed. Which were removed.
    pub fn remove_unused_blobs(
        &self,
        sweep: &Sweep,
        blobs: &[(Digest, Vec<String>)],
        cutoff: SystemTime,
    ) -> Result<Vec<bool>> {
        let mark = |d: &Digest| self.condemnation(sweep, d);
        self.block(async {
            let mut out = Vec::with_capacity(blobs.len());
            for batch in blobs.chunks(1000) {
                futures_util::stream::iter(batch)
                    .map(|(d, _)| self.put_owned(mark(d)))
                    .buffer_unordered(PARALLEL)
                    .try_collect::<Vec<()>>()
                    .await?;
                let removed: Result<Vec<bool>> = futures_util::stream::iter(batch)
                    .map(|(d, links)| async move {
                        let used = self.head(&self.touched_key(d)).await?;
                        if used.is_some_and(|m| SystemTime::from(m.last_modified) >= cutoff) {
                            return Ok(false);
                        }
                        // Links first: a link without its blob is what a
                        // later collection repairs, a blob without links
                        // nobody serves.
                        for name in links {
                            self.remove_key(&self.blob_link(name, d)).await?;
                        }
                        self.remove_key(&self.blob_key(d)).await?;
                        self.remove_key(&self.touched_key(d)).await?;
                        Ok(true)
                    })
                    .buffered(PARALLEL)
                    .try_collect()
                    .await;
                futures_util::stream::iter(batch)
                    .map(|(d, _)| {
                        let key = mark(d);
                        async move {
                            let _ = self.store.delete(&key).await;
                        }
                    })
                    .buffer_unordered(PARALLEL)
                    .collect::<Vec<()>>()
                    .await;
                out.extend(removed?);
            }
            Ok(out)
        })
    }

    async fn put_owned(&self, key: Key) -> Result<()> {
        self.put(&key, Vec::new()).await
    }

    /// Deletes `key` without asking first whether it is there.
    async fn remove_key(&self, key: &Key) -> Result<()> {
        match self.store.delete(key).await {
            Ok(()) => Ok(()),
            Err(e) if super::is_not_found(&e) => Ok(()),
            Err(e) => Err(self.error(key, e)),
        }
    }

    /// Removes manifest `digest` from `name`, which no tag named when marked,
    /// if it was not pushed or used since `cutoff`.
    pub fn remove_unused_manifest(
        &self,
        sweep: &Sweep,
        name: &str,
        digest: &Digest,
        cutoff: SystemTime,
    ) -> Result<bool> {
        let Some(pushed) = self.manifest_pushed(name, digest)? else {
            return Ok(false);
        };
        self.block(
            self.remove_condemned(sweep, digest, Some(pushed), cutoff, || {
                self.delete_untagged_manifest_async(name, digest)
            }),
        )
    }

    /// Removes the link of `name` to `digest` if the blob is gone and was not
    /// used since `cutoff`.
    pub fn remove_dangling_link(
        &self,
        sweep: &Sweep,
        name: &str,
        digest: &Digest,
        cutoff: SystemTime,
    ) -> Result<bool> {
        self.block(async {
            self.remove_condemned(sweep, digest, None, cutoff, || async {
                if self.head(&self.blob_key(digest)).await?.is_some() {
                    return Ok(false);
                }
                self.delete(&self.blob_link(name, digest)).await
            })
            .await
        })
    }

    /// [`super::super::Storage::manifest_facts`], many requests at once.
    pub fn manifest_facts(&self, name: &str, digests: &[Digest]) -> Result<Vec<ManifestFacts>> {
        self.block(
            futures_util::stream::iter(digests)
                .map(|d| async move {
                    let pushed = self
                        .head(&self.manifest_record(name, d))
                        .await?
                        .map(|m| SystemTime::from(m.last_modified));
                    let (blobs, children) = self
                        .get(&self.blob_key(d))
                        .await?
                        .map(|b| crate::gc::references(&b))
                        .unwrap_or_default();
                    Ok(ManifestFacts {
                        pushed,
                        blobs,
                        children,
                        referrers: self.referrers_async(name, d).await?,
                    })
                })
                .buffered(PARALLEL)
                .try_collect(),
        )
    }

    /// [`super::super::Storage::resolve_tags`], many requests at once.
    pub fn resolve_tags(&self, name: &str, tags: &[String]) -> Result<Vec<Option<Digest>>> {
        self.block(
            futures_util::stream::iter(tags)
                .map(|t| async move {
                    let bytes = self.get(&self.tag_key(name, t)).await?;
                    Ok::<_, Error>(
                        bytes.and_then(|b| Digest::parse(String::from_utf8_lossy(&b).trim()).ok()),
                    )
                })
                .buffered(PARALLEL)
                .try_collect(),
        )
    }
}
