//! Mark-and-sweep garbage collection that treats blocks as references.
//!
//! Mark: from every tag (and every manifest, unless untagged ones are to go) of every
//! repository, follow an index's children, a manifest's config, layers and
//! **blocks**, and the referrers of everything kept (`spec/blocks.md`, "Registry
//! requirements", 2). Sweep: delete every blob that nothing marked and that is older
//! than the grace period, then the repository links to blobs that are gone.
//!
//! Safety while pushes run:
//! - on a directory, the whole collection holds `gc.lock` exclusively, and a
//!   manifest PUT holds it shared from its existence check to its commit, so a
//!   manifest is either marked or checked after the sweep;
//! - on a bucket, which has no lock, what pushes in progress name is a root, and
//!   each removal is announced before the last use is read again
//!   ([`crate::storage::s3`]'s `collect` module says why that suffices);
//! - the grace period is measured from the collection's start (by the storage's
//!   clock), and a commit (or a client's HEAD of an existing blob) refreshes a
//!   blob's age, so blobs of a push whose manifest has not arrived yet are kept;
//! - with `delete_untagged`, a manifest pushed within the grace period is a root
//!   too (its index may not have arrived yet);
//! - upload sessions are never touched unless abandoned for longer than
//!   `upload_expiry`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

use oci_blocks_core::Digest;
use serde::Serialize;
use serde_json::Value;

use crate::error::Result;
use crate::storage::{ManifestFacts, Storage, Unused};

/// How a collection runs.
#[derive(Clone, Debug)]
pub struct GcOptions {
    /// Unreferenced blobs younger than this are kept.
    pub grace_period: Duration,
    /// Manifests that no tag reaches are removed (and what only they held).
    pub delete_untagged: bool,
    /// Report, change nothing.
    pub dry_run: bool,
    /// Upload sessions untouched for this long are discarded.
    pub upload_expiry: Duration,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            grace_period: Duration::from_secs(3600),
            delete_untagged: false,
            dry_run: false,
            upload_expiry: Duration::from_secs(24 * 3600),
        }
    }
}

/// One blob the sweep removed (or would remove).
#[derive(Clone, Debug, Serialize)]
pub struct SweptBlob {
    /// Its digest.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
}

/// What a collection did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GcReport {
    /// Whether nothing was changed.
    pub dry_run: bool,
    /// Repositories walked.
    pub repositories: usize,
    /// Manifests marked.
    pub manifests_marked: usize,
    /// Blobs marked (manifests included).
    pub blobs_marked: usize,
    /// Unreferenced blobs kept because they are younger than the grace period.
    pub blobs_young: usize,
    /// Untagged manifests removed, as `REPOSITORY@DIGEST`.
    pub manifests_removed: Vec<String>,
    /// Blobs removed.
    pub blobs_removed: Vec<SweptBlob>,
    /// Bytes those blobs held.
    pub bytes_reclaimed: u64,
    /// Abandoned upload sessions discarded.
    pub uploads_removed: usize,
    /// Wall time of the collection, lock wait excluded.
    pub seconds: f64,
}

/// Runs one collection.
pub fn collect(storage: &Storage, options: &GcOptions) -> Result<GcReport> {
    let collection = storage.begin_collection()?;
    let started = Instant::now();
    let cutoff = collection
        .started
        .checked_sub(options.grace_period)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut report = GcReport {
        dry_run: options.dry_run,
        ..GcReport::default()
    };

    let repositories = storage.repositories()?;
    report.repositories = repositories.len();
    let mut marked: HashSet<Digest> = HashSet::new();
    // What pushes in progress name is kept whether it is a manifest yet or not.
    for (_, digests) in &collection.in_flight {
        marked.extend(digests.iter().cloned());
    }
    for name in &repositories {
        let present: BTreeSet<Digest> = storage.manifests(name)?.into_iter().collect();
        let listed: Vec<Digest> = present.iter().cloned().collect();
        let facts: HashMap<Digest, ManifestFacts> = listed
            .iter()
            .cloned()
            .zip(storage.manifest_facts(name, &listed)?)
            .collect();
        let tags = storage.tags(name)?;
        let mut roots: Vec<Digest> = storage
            .resolve_tags(name, &tags)?
            .into_iter()
            .flatten()
            .collect();
        for (repository, digests) in &collection.in_flight {
            if repository == name {
                roots.extend(digests.iter().cloned());
            }
        }
        if options.delete_untagged {
            // A manifest pushed within the grace period may be a child whose index
            // is still on its way (clients push children first).
            for (d, f) in &facts {
                if f.pushed.is_some_and(|t| t > cutoff) {
                    roots.push(d.clone());
                }
            }
        } else {
            roots.extend(present.iter().cloned());
        }
        let mut kept: HashSet<Digest> = HashSet::new();
        let mut stack = roots;
        while let Some(d) = stack.pop() {
            let Some(f) = facts.get(&d) else {
                continue;
            };
            if !kept.insert(d.clone()) {
                continue;
            }
            marked.insert(d.clone());
            marked.extend(f.blobs.iter().cloned());
            stack.extend(f.children.iter().cloned());
            stack.extend(f.referrers.iter().cloned());
        }
        report.manifests_marked += kept.len();
        for d in present.iter().filter(|d| !kept.contains(*d)) {
            // Tags are roots, so nothing tagged is ever here.
            let unused = Unused::Manifest { name, digest: d };
            if options.dry_run || storage.remove_unused(&collection, unused, cutoff)? {
                report.manifests_removed.push(format!("{name}@{d}"));
            }
        }
    }
    report.blobs_marked = marked.len();

    let stored = storage.blobs()?;
    let mut links: HashMap<Digest, Vec<String>> = HashMap::new();
    for name in &repositories {
        for d in storage.linked_blobs(name)? {
            links.entry(d).or_default().push(name.clone());
        }
    }
    let mut candidates: Vec<(Digest, Vec<String>)> = Vec::new();
    let mut sizes: Vec<u64> = Vec::new();
    for (digest, size, modified) in &stored {
        if marked.contains(digest) {
            continue;
        }
        if *modified > cutoff {
            report.blobs_young += 1;
            continue;
        }
        candidates.push((
            digest.clone(),
            links.get(digest).cloned().unwrap_or_default(),
        ));
        sizes.push(*size);
    }
    let removed: Vec<bool> = if options.dry_run {
        vec![true; candidates.len()]
    } else {
        storage.remove_unused_blobs(&collection, &candidates, cutoff)?
    };
    for (((digest, _), size), gone) in candidates.iter().zip(sizes).zip(removed) {
        if gone {
            report.bytes_reclaimed += size;
            report.blobs_removed.push(SweptBlob {
                digest: digest.to_string(),
                size,
            });
        } else {
            // Used again while the collection ran.
            report.blobs_young += 1;
        }
    }
    report.blobs_removed.sort_by(|a, b| a.digest.cmp(&b.digest));

    if !options.dry_run {
        let present: HashSet<&Digest> = stored.iter().map(|(d, _, _)| d).collect();
        let dangling: Vec<(&Digest, &String)> = links
            .iter()
            .filter(|(d, _)| !present.contains(d))
            .flat_map(|(d, names)| names.iter().map(move |n| (d, n)))
            .collect();
        for (digest, name) in dangling {
            storage.remove_unused(&collection, Unused::Link { name, digest }, cutoff)?;
        }
        let expiry = collection
            .started
            .checked_sub(options.upload_expiry)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        for (id, modified) in storage.uploads()? {
            if modified < expiry {
                storage.remove_upload(&id)?;
                report.uploads_removed += 1;
            }
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The blobs (config, layers, blocks) and child manifests a manifest references.
/// Unparsable content references nothing (it was validated when pushed).
pub(crate) fn references(bytes: &[u8]) -> (Vec<Digest>, Vec<Digest>) {
    let Ok(value) = serde_json::from_slice::<Value>(bytes) else {
        return (Vec::new(), Vec::new());
    };
    let digest = |d: &Value| Digest::parse(d.get("digest")?.as_str()?).ok();
    let list = |key: &str| -> Vec<Digest> {
        value
            .get(key)
            .and_then(Value::as_array)
            .map(|items| items.iter().filter_map(digest).collect())
            .unwrap_or_default()
    };
    let mut blobs: Vec<Digest> = value.get("config").and_then(digest).into_iter().collect();
    blobs.extend(list("layers"));
    blobs.extend(list("blocks"));
    (blobs, list("manifests"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_follow_blocks() {
        let a = "sha256:".to_string() + &"a".repeat(64);
        let b = "sha256:".to_string() + &"b".repeat(64);
        let c = "sha256:".to_string() + &"c".repeat(64);
        let doc = format!(
            r#"{{"config":{{"digest":"{a}"}},"layers":[{{"digest":"{b}"}}],"blocks":[{{"digest":"{c}"}}]}}"#
        );
        let (blobs, children) = references(doc.as_bytes());
        let got: Vec<_> = blobs.iter().map(|d| d.as_str().to_string()).collect();
        assert_eq!(got, [a, b, c.clone()]);
        assert!(children.is_empty());
        let (blobs, children) =
            references(format!(r#"{{"manifests":[{{"digest":"{c}"}}]}}"#).as_bytes());
        assert!(blobs.is_empty());
        assert_eq!(children.len(), 1);
    }
}
