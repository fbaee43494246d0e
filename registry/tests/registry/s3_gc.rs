//! Collections on a bucket while replicas take pushes: 50 concurrent pushes
//! through two replicas lose nothing while collectors loop, a condemned blob
//! is never relied on by a push, and a live lease keeps a second collector out.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crate::common::*;
use crate::s3::{data, garage, replica};
use anyhow::{Context, Result, bail, ensure};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as Key;
use object_store::{ObjectStore, PutPayload};
use oci_blocks_core::Digest;
use oci_blocks_fixture::garage::Garage;
use serde_json::json;

/// `gc --storage URL ARGS...`: (success, stdout + stderr).
fn gc_bucket(garage: &Garage, prefix: &str, args: &[&str]) -> Result<(bool, String)> {
    let out = std::process::Command::new(registry_bin())
        .args(["gc", "--storage", &garage.url(prefix)])
        .args(args)
        .envs(garage.env())
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

/// One image push the way a client makes it: HEAD each blob, upload what is
/// missing, PUT the manifest; a 503 or a blob a collection took meanwhile
/// (`MANIFEST_BLOB_UNKNOWN`) is retried. The manifest's bytes and blobs.
fn push_image(
    base: &str,
    repo: &str,
    tag: &str,
    blobs: &[(&[u8], bool)],
    retries: &AtomicUsize,
) -> Result<(Vec<u8>, Vec<Vec<u8>>)> {
    let layers: Vec<&[u8]> = blobs.iter().filter(|b| !b.1).map(|b| b.0).collect();
    let blocks: Vec<&[u8]> = blobs.iter().filter(|b| b.1).map(|b| b.0).collect();
    let bytes = manifest(CONFIG, &layers, &blocks, json!({}));
    let mut all: Vec<&[u8]> = vec![CONFIG];
    all.extend(blobs.iter().map(|b| b.0));
    for _ in 0..40 {
        for blob in &all {
            let d = Digest::sha256(blob);
            let r = http("HEAD", &format!("{base}/v2/{repo}/blobs/{d}"), &[], None)?;
            if r.status != 200 {
                let r = http(
                    "POST",
                    &format!("{base}/v2/{repo}/blobs/uploads/?digest={d}"),
                    &[("Content-Type", "application/octet-stream")],
                    Some(blob),
                )?;
                ensure!(
                    r.status == 201 || r.status == 503,
                    "blob push: {}",
                    r.describe()
                );
            }
        }
        let r = put_manifest(
            base,
            repo,
            tag,
            &bytes,
            "application/vnd.oci.image.manifest.v1+json",
        )?;
        match (r.status, r.code().as_str()) {
            (201, _) => return Ok((bytes, all.iter().map(|b| b.to_vec()).collect())),
            (503, _) | (400, "MANIFEST_BLOB_UNKNOWN") => {
                retries.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
            _ => bail!("manifest push {repo}:{tag}: {}", r.describe()),
        }
    }
    bail!("manifest push {repo}:{tag} did not succeed in 40 attempts")
}

/// An acknowledged push: repository, tag, manifest bytes, blobs.
type Pushed = (String, String, Vec<u8>, Vec<Vec<u8>>);

#[test]
#[ignore = "needs garage; .ci/run runs it"]
fn fifty_concurrent_pushers_through_two_replicas_lose_nothing_while_collectors_loop() -> Result<()>
{
    let tmp = tempfile::tempdir()?;
    let garage = garage(tmp.path())?;
    let prefix = "busy";
    let a = replica(&garage, &tmp.path().join("a"), prefix)?;
    // The second replica collects on its own timer too: two collectors, one lease.
    let b = Registry::spawn_with(
        &tmp.path().join("b"),
        &[
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--storage",
            &garage.url(prefix),
            "--gc-interval",
            "2s",
            "--grace-period",
            "0s",
            "--delete-untagged",
        ],
        &garage.env(),
    )?;
    // Layers and blocks every image shares, pushed once and referenced by
    // nothing yet: with no grace period every collection may take them.
    let shared: Vec<Vec<u8>> = (0..8).map(|i| data(8192 + i, 100 + i as u64)).collect();
    for s in &shared {
        push_blob(&a.url(""), "seed/base", s)?;
    }

    let stop = AtomicBool::new(false);
    let runs = AtomicUsize::new(0);
    let busy = AtomicUsize::new(0);
    let swept = AtomicUsize::new(0);
    let retries = AtomicUsize::new(0);
    let failures: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let pushed: Mutex<Vec<Pushed>> = Mutex::new(Vec::new());
    let orphans: Mutex<Vec<(String, Digest)>> = Mutex::new(Vec::new());
    let started = Instant::now();
    std::thread::scope(|scope| -> Result<()> {
        // The third process, in a loop.
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                match gc_bucket(
                    &garage,
                    prefix,
                    &["--grace-period", "0s", "--delete-untagged"],
                ) {
                    Ok((true, text)) => {
                        runs.fetch_add(1, Ordering::Relaxed);
                        let n = text
                            .lines()
                            .filter(|l| l.starts_with("removed blob"))
                            .count();
                        swept.fetch_add(n, Ordering::Relaxed);
                    }
                    Ok((false, text)) if text.contains("is held by collection") => {
                        busy.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    Ok((false, text)) => failures.lock().expect("a pusher panicked").push(text),
                    Err(e) => failures
                        .lock()
                        .expect("a pusher panicked")
                        .push(e.to_string()),
                }
            }
        });
        let pushers: Vec<_> = (0..50usize)
            .map(|i| {
                let (shared, pushed, orphans, retries) = (&shared, &pushed, &orphans, &retries);
                let base = if i % 2 == 0 { a.url("") } else { b.url("") };
                scope.spawn(move || -> Result<()> {
                    let repo = format!("team{}/app", i % 5);
                    // Garbage beside each push: what the collectors should take.
                    let orphan = push_blob(&base, &repo, &data(3000 + i, 5000 + i as u64))?;
                    orphans
                        .lock()
                        .expect("a pusher panicked")
                        .push((repo.clone(), orphan));
                    // Three images each, one after the other, so that pushes
                    // span several collections.
                    for round in 0..3 {
                        let tag = format!("v{i}-{round}");
                        let own = data(40_000 + i, 1000 + (100 * round + i) as u64);
                        let blobs = [
                            (own.as_slice(), false),
                            (shared[(i + round) % 8].as_slice(), false),
                            (shared[(i + 3) % 8].as_slice(), true),
                            (shared[(i + 5 + round) % 8].as_slice(), true),
                        ];
                        let (bytes, all) = push_image(&base, &repo, &tag, &blobs, retries)?;
                        pushed.lock().expect("a pusher panicked").push((
                            repo.clone(),
                            tag,
                            bytes,
                            all,
                        ));
                        std::thread::sleep(Duration::from_millis(300 * (i as u64 % 4)));
                    }
                    Ok(())
                })
            })
            .collect();
        let mut errors = Vec::new();
        for p in pushers {
            match p.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => errors.push(format!("{e:#}")),
                Err(_) => errors.push("a pusher panicked".into()),
            }
        }
        stop.store(true, Ordering::Relaxed);
        ensure!(errors.is_empty(), "pushes failed: {errors:#?}");
        Ok(())
    })?;
    let pushing = started.elapsed();
    let failures = failures.into_inner().expect("a pusher panicked");
    ensure!(failures.is_empty(), "collections failed: {failures:#?}");
    let runs = runs.into_inner();
    // The replica's timer collects too; its log says how often.
    let by_replica = b
        .logs()
        .lines()
        .filter(|l| l.contains("garbage collection") && !l.contains("failed"))
        .count();
    ensure!(
        runs + by_replica >= 2,
        "only {runs} + {by_replica} collections ran during {pushing:?} of pushes; the test proves nothing"
    );

    // One more, with every push acknowledged: then every image pulls whole,
    // through either replica, and every orphan is gone.
    // (The replica's timer may hold the lease: wait for it.)
    let mut last = String::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    while Instant::now() < deadline {
        let (ok, text) = gc_bucket(
            &garage,
            prefix,
            &["--grace-period", "0s", "--delete-untagged"],
        )?;
        if ok {
            last.clear();
            break;
        }
        ensure!(text.contains("is held by collection"), "final gc: {text}");
        last = text;
        std::thread::sleep(Duration::from_millis(200));
    }
    ensure!(last.is_empty(), "final gc: {last}");
    let final_gc = started.elapsed() - pushing;
    let pushed = pushed.into_inner().expect("a pusher panicked");
    ensure!(pushed.len() == 150, "{} pushes acknowledged", pushed.len());
    // Whole through one replica; the other serves the same manifests.
    for (repo, tag, bytes, blobs) in &pushed {
        for reg in [&a, &b] {
            let r = http(
                "GET",
                &reg.url(&format!("/v2/{repo}/manifests/{tag}")),
                &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
                None,
            )?;
            ensure!(
                r.status == 200 && &r.body == bytes,
                "{repo}:{tag}: {}",
                r.describe()
            );
        }
        for blob in blobs {
            let d = Digest::sha256(blob);
            let r = http("GET", &a.url(&format!("/v2/{repo}/blobs/{d}")), &[], None)?;
            ensure!(
                r.status == 200 && Digest::sha256(&r.body) == d,
                "{repo}:{tag} lost {d}: {}",
                r.status
            );
        }
    }
    for (repo, d) in orphans.into_inner().expect("a pusher panicked") {
        let r = http("HEAD", &a.url(&format!("/v2/{repo}/blobs/{d}")), &[], None)?;
        ensure!(
            r.status == 404,
            "orphan {d} in {repo} survived: {}",
            r.status
        );
    }
    eprintln!(
        "150 pushes by 50 clients in {pushing:?} (final collection {final_gc:?}, checks {:?}): {runs} collections by the loop ({} refused by the lease, {} blobs swept), {by_replica} by the replica, {} push retries",
        started.elapsed() - pushing - final_gc,
        busy.into_inner(),
        swept.into_inner(),
        retries.into_inner()
    );
    drop(b);
    Ok(())
}

/// The bucket itself, for writing what a collector in progress would.
struct Bucket {
    store: Box<dyn ObjectStore>,
    runtime: tokio::runtime::Runtime,
    prefix: String,
}

impl Bucket {
    fn open(garage: &Garage, prefix: &str) -> Result<Bucket> {
        let env: std::collections::HashMap<_, _> = garage.env().into_iter().collect();
        let store = AmazonS3Builder::new()
            .with_bucket_name(
                garage
                    .url("")
                    .trim_start_matches("s3://")
                    .trim_end_matches('/'),
            )
            .with_endpoint(&env["AWS_ENDPOINT_URL"])
            .with_allow_http(true)
            .with_region(&env["AWS_REGION"])
            .with_access_key_id(&env["AWS_ACCESS_KEY_ID"])
            .with_secret_access_key(&env["AWS_SECRET_ACCESS_KEY"])
            .build()?;
        Ok(Bucket {
            store: Box::new(store),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
            prefix: prefix.to_string(),
        })
    }

    fn key(&self, rel: &str) -> Key {
        Key::from(format!("{}/{rel}", self.prefix))
    }

    fn put(&self, rel: &str, body: &[u8]) -> Result<()> {
        let key = self.key(rel);
        self.runtime
            .block_on(self.store.put(&key, PutPayload::from(body.to_vec())))
            .with_context(|| format!("put {key}"))?;
        Ok(())
    }

    fn delete(&self, rel: &str) -> Result<()> {
        self.runtime.block_on(self.store.delete(&self.key(rel)))?;
        Ok(())
    }

    fn exists(&self, rel: &str) -> bool {
        self.runtime
            .block_on(self.store.head(&self.key(rel)))
            .is_ok()
    }

    fn count(&self, rel: &str) -> Result<usize> {
        let key = self.key(rel);
        self.runtime.block_on(async {
            use futures_util::TryStreamExt;
            let all: Vec<_> = self.store.list(Some(&key)).try_collect().await?;
            Ok(all.len())
        })
    }
}

fn condemned(d: &Digest) -> String {
    format!("gc/condemned/sha256/{}/another-collection", d.hex())
}

#[test]
#[ignore = "needs garage; .ci/run runs it"]
fn a_blob_being_collected_is_never_relied_on_and_a_live_lease_keeps_a_collector_out() -> Result<()>
{
    let tmp = tempfile::tempdir()?;
    let garage = garage(tmp.path())?;
    let prefix = "protocol";
    let reg = replica(&garage, &tmp.path().join("a"), prefix)?;
    let bucket = Bucket::open(&garage, prefix)?;
    let base = reg.url("");
    let layer = data(10_000, 7);
    let d = push_blob(&base, "app", &layer)?;
    push_blob(&base, "app", CONFIG)?;

    // Another collection is running and is about to remove the layer.
    bucket.put("gc/sweeps/another-collection", b"another-collection")?;
    bucket.put(&condemned(&d), b"")?;
    let r = http("HEAD", &reg.url(&format!("/v2/app/blobs/{d}")), &[], None)?;
    ensure!(
        r.status == 404,
        "HEAD of a condemned blob: {}",
        r.describe()
    );
    let r = http(
        "POST",
        &reg.url(&format!("/v2/other/blobs/uploads/?mount={d}&from=app")),
        &[],
        Some(b""),
    )?;
    ensure!(
        r.status == 202,
        "mount of a condemned blob: {}",
        r.describe()
    );
    let bytes = manifest(CONFIG, &[&layer], &[], json!({}));
    let mt = "application/vnd.oci.image.manifest.v1+json";
    let r = put_manifest(&base, "app", "v1", &bytes, mt)?;
    ensure!(
        r.status == 503 && r.code() == "UNAVAILABLE" && r.header("retry-after") == Some("1"),
        "manifest naming a condemned blob: {}",
        r.describe()
    );
    ensure!(
        r.json()["errors"][0]["detail"]["digest"] == d.as_str(),
        "{}",
        r.describe()
    );
    ensure!(
        bucket.count("gc/pending")? == 0,
        "the refused PUT left its record"
    );
    let r = http("GET", &reg.url("/v2/app/manifests/v1"), &[], None)?;
    ensure!(
        r.status == 404,
        "a refused manifest is visible: {}",
        r.describe()
    );

    // An upload of the condemned blob waits for the collection to finish.
    let released = Mutex::new(None::<Instant>);
    let done = std::thread::scope(|scope| -> Result<Instant> {
        let upload = scope.spawn(|| -> Result<Instant> {
            push_blob(&base, "app", &layer)?;
            Ok(Instant::now())
        });
        std::thread::sleep(Duration::from_millis(1500));
        // As the collection would: the blob goes, then its condemnation.
        bucket.delete(&format!("blobs/sha256/{}/{}", &d.hex()[..2], d.hex()))?;
        *released.lock().expect("a pusher panicked") = Some(Instant::now());
        bucket.delete(&condemned(&d))?;
        upload
            .join()
            .map_err(|_| anyhow::anyhow!("upload panicked"))?
    })?;
    let released = released
        .into_inner()
        .expect("a pusher panicked")
        .context("released")?;
    ensure!(
        done > released,
        "the upload committed before the collection let go of the blob"
    );
    ensure!(
        bucket.exists(&format!("blobs/sha256/{}/{}", &d.hex()[..2], d.hex())),
        "the upload that waited did not write the blob again"
    );
    let r = put_manifest(&base, "app", "v1", &bytes, mt)?;
    ensure!(r.status == 201, "after the collection: {}", r.describe());

    // A live lease keeps a collector out, and names its holder; an expired
    // one is taken over, and released when the collection ends.
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)?
        .as_secs();
    let lease =
        |expires: u64| json!({"holder": "another-collection", "expires": expires}).to_string();
    bucket.put("gc/lease", lease(now + 600).as_bytes())?;
    let (ok, text) = gc_bucket(&garage, prefix, &["--grace-period", "0s"])?;
    ensure!(
        !ok && text.contains("gc/lease is held by collection another-collection until"),
        "gc beside a live lease: {text}"
    );
    bucket.delete("gc/sweeps/another-collection")?;
    bucket.put("gc/lease", lease(now - 10).as_bytes())?;
    let (ok, text) = gc_bucket(&garage, prefix, &["--grace-period", "0s"])?;
    ensure!(ok, "gc beside an expired lease: {text}");
    ensure!(!bucket.exists("gc/lease"), "the collector kept the lease");
    ensure!(
        bucket.count("gc/sweeps")? == 0,
        "the collector left its sweep marker"
    );
    let r = http("GET", &reg.url(&format!("/v2/app/blobs/{d}")), &[], None)?;
    ensure!(r.status == 200 && r.body == layer, "{}", r.status);
    Ok(())
}
