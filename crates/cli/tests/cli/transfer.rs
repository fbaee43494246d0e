//! `oci-blocks push`, `pull` and `copy` against this project's registry (run
//! in-process) and Debian's docker-registry: an update moves only v2's new
//! bytes, copies keep every digest, a tampered blob never reaches the store, and
//! a failed pull resumes without fetching again what it completed.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::time::Duration;

use crate::common::*;
use anyhow::{Context, Result, ensure};
use oci_blocks_core::Digest;
use oci_blocks_core::layout::OciDir;
use serde_json::Value;

/// This project's registry, served in-process on an ephemeral port; its host.
pub(crate) fn our_registry(root: &Path) -> Result<String> {
    our_registry_with(root, None, None)
}

fn our_registry_with(
    root: &Path,
    htpasswd: Option<&Path>,
    tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
) -> Result<String> {
    use oci_blocks_registry::gc::GcOptions;
    use oci_blocks_registry::server::{ServeOptions, serve_listener};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let options = ServeOptions {
        addr,
        storage: oci_blocks_registry::storage::Location::Dir(root.to_path_buf()),
        htpasswd: htpasswd.map(Path::to_path_buf),
        auth_pull: htpasswd.is_some(),
        tls,
        gc_interval: None,
        gc: GcOptions::default(),
        shutdown_timeout: Duration::from_secs(1),
    };
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime for the registry");
        if let Err(e) = runtime.block_on(serve_listener(listener, options)) {
            eprintln!("registry: {e}");
        }
    });
    Ok(addr.to_string())
}

/// Runs oci-blocks, which must succeed, and parses its stdout (warnings, such as
/// retries, go to stderr).
pub(crate) fn json_ok(args: &[&str]) -> Result<Value> {
    let out = oci_blocks(args)?;
    ensure!(
        out.status.success(),
        "oci-blocks {args:?} failed:\n{}",
        text(&out)
    );
    serde_json::from_slice(&out.stdout).with_context(|| text(&out))
}

/// Builds one corpus version as a bare blocks image (`--fallback none`).
fn build_bare(kind: &str, dir: &Path, v: &str, out: &Path) -> Result<()> {
    let (sub, dest) = corpus_paths(kind);
    ok(&[
        "build",
        "--no-cache",
        "--fallback",
        "none",
        "--add",
        &format!("{}:{dest}", dir.join(v).join(sub).display()),
        "--out",
        &format!("oci:{}:{v}", out.display()),
    ])?;
    Ok(())
}

/// Copies `src` (a registry reference) back into a new layout and checks that
/// it holds exactly the digests `image:tag` has; each was verified on the way.
fn copy_back_keeps_digests(src: &str, image: &Path, tag: &str, back: &Path) -> Result<()> {
    json_ok(&[
        "copy",
        "--json",
        "--src-tls-verify=false",
        src,
        &format!("oci:{}:v1", back.display()),
    ])?;
    let built: BTreeSet<_> = blobs_of(image, tag)?.into_keys().collect();
    let copied: BTreeSet<_> = blobs_of(back, "v1")?.into_keys().collect();
    ensure!(
        built == copied,
        "{src}: digests differ: {:?}",
        built.symmetric_difference(&copied)
    );
    Ok(())
}

/// The tree the java-app example unpacks to.
fn java_app_tree() -> Result<BTreeMap<String, Node>> {
    let example = repo().join("examples/java-app");
    expected_tree(
        &[
            (example.join("lib"), "/app/lib"),
            (example.join("app"), "/app/classes"),
        ],
        &|_, b| b,
    )
}

/// Digest -> size of every blob (config, layers, blocks) of the tagged image's
/// blocks manifest, and the bytes of its manifests.
fn blobs_and_manifests(layout: &Path, tag: &str) -> Result<(BTreeMap<String, u64>, u64)> {
    let dir = OciDir::open(layout)?;
    let roots = dir.resolve(Some(tag))?;
    let top = Digest::try_from(roots[0].digest())?;
    let top_bytes = dir.read_json_blob(&top, None)?;
    let mut manifest_bytes = top_bytes.len() as u64;
    let mut doc: Value = serde_json::from_slice(&top_bytes)?;
    if let Some(entries) = doc.get("manifests").and_then(Value::as_array) {
        let entry = entries
            .iter()
            .find(|e| e["annotations"]["io.oci-blocks.variant"] == "blocks")
            .or_else(|| entries.first())
            .context("an entry")?;
        let d = Digest::parse(entry["digest"].as_str().context("digest")?)?;
        let bytes = dir.read_json_blob(&d, None)?;
        manifest_bytes += bytes.len() as u64;
        doc = serde_json::from_slice(&bytes)?;
    }
    let mut blobs = BTreeMap::new();
    let mut descriptors = vec![doc["config"].clone()];
    for list in ["layers", "blocks"] {
        descriptors.extend(doc[list].as_array().cloned().unwrap_or_default());
    }
    for d in descriptors {
        blobs.insert(
            d["digest"].as_str().context("digest")?.to_string(),
            d["size"].as_u64().context("size")?,
        );
    }
    Ok((blobs, manifest_bytes))
}

/// The bytes an update from v1 to v2 must move at least: v2's blobs that v1
/// lacks, and v2's manifests.
fn new_bytes(image: &Path) -> Result<u64> {
    let (v1, _) = blobs_and_manifests(image, "v1")?;
    let (v2, v2_manifests) = blobs_and_manifests(image, "v2")?;
    Ok(v2
        .iter()
        .filter(|(d, _)| !v1.contains_key(*d))
        .map(|(_, s)| s)
        .sum::<u64>()
        + v2_manifests)
}

fn update_moves_only_new_bytes(
    kind: &str,
    host: &str,
    image: &Path,
    dir: &Path,
    tmp: &Path,
    who: &str,
) -> Result<()> {
    let (sub, dest) = corpus_paths(kind);
    let limit = new_bytes(image)? as f64 * 1.1;
    let mut pushed = Vec::new();
    for v in ["v1", "v2"] {
        let report = json_ok(&[
            "push",
            "--json",
            "--dest-tls-verify=false",
            &format!("oci:{}:{v}", image.display()),
            &format!("docker://{host}/corpus/{kind}:{v}"),
        ])?;
        pushed.push(report);
    }
    let sent = pushed[1]["network_bytes_sent"].as_u64().context("sent")?;
    ensure!(
        (sent as f64) <= limit,
        "{who}: pushing v2 after v1 sent {sent} bytes, more than 1.1 x the {} new bytes:\n{}",
        limit / 1.1,
        pushed[1]
    );
    ensure!(
        pushed[1]["blobs_skipped"].as_u64() > Some(0),
        "{}",
        pushed[1]
    );

    // Pull v1 then v2 into one store, unpacking each.
    let store = tmp.join(format!("store-{who}-{kind}"));
    let mut pulls = Vec::new();
    for v in ["v1", "v2"] {
        let rootfs = tmp.join(format!("rootfs-{who}-{kind}-{v}"));
        let report = json_ok(&[
            "pull",
            "--json",
            "--tls-verify=false",
            "--store",
            store.to_str().context("utf-8")?,
            "--unpack",
            rootfs.to_str().context("utf-8")?,
            &format!("docker://{host}/corpus/{kind}:{v}"),
        ])?;
        let input = dir.join(v).join(sub);
        let expected = expected_tree(&[(input.clone(), dest)], &canonical_pyc_of(&input))?;
        assert_same(&expected, &tree(&rootfs)?, &format!("{who}: pulled {v}"))?;
        pulls.push(report);
    }
    let received = pulls[1]["network_bytes_received"]
        .as_u64()
        .context("received")?;
    ensure!(
        (received as f64) <= limit,
        "{who}: pulling v2 after v1 received {received} bytes, more than 1.1 x the {} new bytes:\n{}",
        limit / 1.1,
        pulls[1]
    );
    ensure!(
        pulls[1]["blobs_reused"].as_u64() > Some(0),
        "v2 reuses v1's blocks from the store: {}",
        pulls[1]
    );
    Ok(())
}

fn update_against_both_registries(kind: &str) -> Result<()> {
    need(&["docker-registry", "curl"])?;
    let dir = corpus(kind)?;
    let tmp = tempfile::tempdir()?;
    let image = tmp.path().join("image");
    for v in ["v1", "v2"] {
        build_bare(kind, &dir, v, &image)?;
    }
    let ours = our_registry(&tmp.path().join("ours"))?;
    update_moves_only_new_bytes(kind, &ours, &image, &dir, tmp.path(), "oci-blocks-registry")?;
    let distribution = DockerRegistry::start(&tmp.path().join("distribution"))?;
    let host = format!("127.0.0.1:{}", distribution.port);
    update_moves_only_new_bytes(kind, &host, &image, &dir, tmp.path(), "docker-registry")?;
    Ok(())
}

#[test]
#[ignore = "needs curl, docker-registry and the corpus (apt-get, pip and the network); .ci/run runs it"]
fn a_java_update_pushes_and_pulls_only_the_new_bytes_against_both_registries() -> Result<()> {
    update_against_both_registries("java")
}

#[test]
#[ignore = "needs curl, docker-registry and the corpus (apt-get, pip and the network); .ci/run runs it"]
fn a_python_update_pushes_and_pulls_only_the_new_bytes_against_both_registries() -> Result<()> {
    update_against_both_registries("python")
}

#[test]
#[ignore = "needs curl, docker-registry; .ci/run runs it"]
fn copies_keep_every_digest_and_the_anchor_keeps_blocks_through_docker_registry_gc() -> Result<()> {
    need(&["docker-registry", "curl"])?;
    let tmp = tempfile::tempdir()?;
    let image = repo().join("target/examples/transfer-java-app");
    ok(&[
        "build",
        "-f",
        "examples/java-app/build.toml",
        "--out",
        &format!("oci:{}:latest", image.display()),
    ])?;
    let top = OciDir::open(&image)?.resolve(Some("latest"))?[0]
        .digest()
        .to_string();
    let ours = our_registry(&tmp.path().join("ours"))?;
    let mut distribution = DockerRegistry::start(&tmp.path().join("distribution"))?;
    let theirs = format!("127.0.0.1:{}", distribution.port);

    let report = json_ok(&[
        "push",
        "--json",
        "--dest-tls-verify=false",
        &format!("oci:{}:latest", image.display()),
        &format!("docker://{ours}/app:v1"),
    ])?;
    ensure!(report["digest"] == top.as_str(), "{report}");
    // Within one registry: mounted, not transferred.
    let report = json_ok(&[
        "copy",
        "--json",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        &format!("docker://{ours}/app:v1"),
        &format!("docker://{ours}/mirror/app:v1"),
    ])?;
    ensure!(
        report["blobs_transferred"] == 0 && report["blobs_mounted"] == report["blobs"],
        "{report}"
    );
    // Registry to registry: the same index digest arrives.
    let report = json_ok(&[
        "copy",
        "--json",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        &format!("docker://{ours}/app:v1"),
        &format!("docker://{theirs}/app:v1"),
    ])?;
    ensure!(report["digest"] == top.as_str(), "{report}");
    // Back to a layout: every digest as built.
    copy_back_keeps_digests(
        &format!("docker://{theirs}/app:v1"),
        &image,
        "latest",
        &tmp.path().join("back"),
    )?;

    // docker-registry's GC knows no blocks; the anchor keeps them. Then a pull
    // from it unpacks whole.
    distribution.garbage_collect()?;
    let rootfs = tmp.path().join("rootfs");
    json_ok(&[
        "pull",
        "--json",
        "--tls-verify=false",
        "--store",
        tmp.path().join("store").to_str().context("utf-8")?,
        "--unpack",
        rootfs.to_str().context("utf-8")?,
        &format!("docker://{theirs}/app:v1"),
    ])?;
    let expected = java_app_tree()?;
    assert_same(
        &expected,
        &tree(&rootfs)?,
        "pulled after docker-registry GC",
    )?;
    Ok(())
}

#[test]
fn a_tampered_blob_is_refused_and_a_failed_pull_resumes() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let image = tmp.path().join("image");
    ok(&[
        "build",
        "-f",
        "examples/java-app/build.toml",
        "--fallback",
        "none",
        "--out",
        &format!("oci:{}:latest", image.display()),
    ])?;
    let root = tmp.path().join("ours");
    let host = our_registry(&root)?;
    json_ok(&[
        "push",
        "--json",
        "--dest-tls-verify=false",
        &format!("oci:{}:latest", image.display()),
        &format!("docker://{host}/app:v1"),
    ])?;
    // Flip one byte of the largest block in the registry's storage.
    let (blobs, _) = blobs_and_manifests(&image, "latest")?;
    let manifest: Value = {
        let dir = OciDir::open(&image)?;
        let d = Digest::try_from(dir.resolve(Some("latest"))?[0].digest())?;
        serde_json::from_slice(&dir.read_json_blob(&d, None)?)?
    };
    let block = manifest["blocks"]
        .as_array()
        .context("blocks")?
        .iter()
        .max_by_key(|b| b["size"].as_u64())
        .context("a block")?["digest"]
        .as_str()
        .context("digest")?
        .to_string();
    let hex = block.trim_start_matches("sha256:");
    let stored =
        oci_blocks_registry::storage::FsStorage::open(&root)?.blob_path(&Digest::parse(&block)?);
    let original = std::fs::read(&stored)?;
    let mut tampered = original.clone();
    tampered[original.len() / 2] ^= 0xff;
    std::fs::write(&stored, &tampered)?;

    let store = tmp.path().join("store");
    let rootfs = tmp.path().join("rootfs");
    let out = oci_blocks(&[
        "pull",
        "--tls-verify=false",
        "--jobs",
        "1",
        "--store",
        store.to_str().context("utf-8")?,
        "--unpack",
        rootfs.to_str().context("utf-8")?,
        &format!("docker://{host}/app:v1"),
    ])?;
    ensure!(!out.status.success(), "a tampered block was accepted");
    let message = text(&out);
    ensure!(message.contains(hex), "the error names the blob: {message}");
    ensure!(!rootfs.exists(), "a rootfs was created");
    let layout_blob = store.join("images/blobs/sha256").join(hex);
    ensure!(!layout_blob.exists(), "the tampered blob was stored");
    ensure!(
        !store.join("blocks/sha256").join(hex).exists(),
        "the tampered block was extracted"
    );
    let fetched_before = blob_files_in(&store.join("images/blobs/sha256"))?;

    // Repaired, the same pull finishes, fetching only what it lacked.
    std::fs::write(&stored, &original)?;
    let report = json_ok(&[
        "pull",
        "--json",
        "--tls-verify=false",
        "--store",
        store.to_str().context("utf-8")?,
        "--unpack",
        rootfs.to_str().context("utf-8")?,
        &format!("docker://{host}/app:v1"),
    ])?;
    let skipped = report["blobs_skipped"].as_u64().context("skipped")? as usize;
    let fetched_again: usize = report["blobs_transferred"].as_u64().context("n")? as usize;
    ensure!(
        skipped == fetched_before.len() && skipped + fetched_again == blobs.len(),
        "the second pull skips the {} blobs the first completed: {report}",
        fetched_before.len()
    );
    let expected = java_app_tree()?;
    assert_same(&expected, &tree(&rootfs)?, "pulled after the repair")?;
    Ok(())
}

fn blob_files_in(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries {
            out.push(e?.file_name().to_string_lossy().into_owned());
        }
    }
    Ok(out)
}

#[test]
fn credentials_come_from_the_auth_file_or_the_flags() -> Result<()> {
    use base64::Engine;
    let tmp = tempfile::tempdir()?;
    let htpasswd = tmp.path().join("htpasswd");
    std::fs::write(&htpasswd, format!("alice:{}\n", bcrypt::hash("s3cret", 4)?))?;
    let host = our_registry_with(&tmp.path().join("ours"), Some(&htpasswd), None)?;
    let image = repo().join("examples/hello-blocks");
    let push = |extra: &[&str], auth_file: &Path| -> Result<std::process::Output> {
        Ok(std::process::Command::new(env!("CARGO_BIN_EXE_oci-blocks"))
            .arg("push")
            .arg("--dest-tls-verify=false")
            .args(extra)
            .arg(format!("oci:{}", image.display()))
            .arg(format!("docker://{host}/hello:v1"))
            .env("REGISTRY_AUTH_FILE", auth_file)
            .env("HOME", tmp.path())
            .env_remove("XDG_RUNTIME_DIR")
            .output()?)
    };
    let none = tmp.path().join("none.json");
    let out = push(&[], &none)?;
    ensure!(!out.status.success(), "pushed without credentials");
    ensure!(text(&out).contains("401"), "{}", text(&out));
    let out = push(&["--dest-creds", "alice:wrong"], &none)?;
    ensure!(!out.status.success(), "pushed with a wrong password");
    let out = push(&["--dest-creds", "alice:s3cret"], &none)?;
    ensure!(out.status.success(), "{}", text(&out));
    let auth_file = tmp.path().join("auth.json");
    let token = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
    std::fs::write(
        &auth_file,
        format!(r#"{{"auths":{{"{host}":{{"auth":"{token}"}}}}}}"#),
    )?;
    let out = push(&[], &auth_file)?;
    ensure!(out.status.success(), "{}", text(&out));
    // Reads need them too here (--auth-pull): the pull finds them in the file.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_oci-blocks"))
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{host}/hello:v1"))
        .arg(format!("oci:{}:v1", tmp.path().join("back").display()))
        .env("REGISTRY_AUTH_FILE", &auth_file)
        .output()?;
    ensure!(out.status.success(), "{}", text(&out));
    Ok(())
}

/// What the test proxy does to its first connections.
#[derive(Clone, Copy)]
enum Fault {
    /// Cut the connection after this many bytes from the client (an upload
    /// broken off mid-chunk).
    CutUpload(usize),
    /// Stop forwarding after this many bytes from the server (a download that
    /// hangs), until the client gives up or is killed.
    StallDownload(usize),
}

/// A TCP proxy in front of `target`: `faulty` connections suffer `fault` (for
/// cuts, the first ones to carry that many bytes; for stalls, the first ones
/// opened); the others are forwarded untouched.
fn proxy(target: String, faulty: usize, fault: Fault) -> Result<String> {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?.to_string();
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    /// Forwards until `limit` bytes; then cuts (or stalls), except when `budget`
    /// is given and spent, in which case it forwards the rest.
    fn pump(
        mut from: TcpStream,
        mut to: TcpStream,
        mut limit: usize,
        stall: bool,
        budget: Option<Arc<AtomicUsize>>,
    ) {
        let mut moved = 0usize;
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(k) = from.read(&mut buf) {
            let n = k.min(limit - moved);
            if k == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
            moved += n;
            if moved >= limit {
                let spend = |b: &Arc<AtomicUsize>| {
                    b.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| c.checked_sub(1))
                        .is_ok()
                };
                if budget.as_ref().is_none_or(spend) {
                    break;
                }
                limit = usize::MAX;
                if to.write_all(&buf[n..k]).is_err() {
                    break;
                }
                moved += k - n;
            }
        }
        if stall && moved >= limit {
            // Hold both ends open without forwarding.
            std::thread::sleep(Duration::from_secs(3600));
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    }
    // Cuts go to the first connections that carry enough bytes, whichever they
    // are (a TLS probe or a ping may open connections first).
    let budget = Arc::new(AtomicUsize::new(faulty));
    std::thread::spawn(move || {
        for (n, client) in listener.incoming().enumerate() {
            let Ok(client) = client else { continue };
            let Ok(server) = TcpStream::connect(&target) else {
                continue;
            };
            let (up, down, stall, cut_budget) = match fault {
                Fault::CutUpload(after) => (after, usize::MAX, false, Some(budget.clone())),
                _ if n >= faulty => (usize::MAX, usize::MAX, false, None),
                Fault::StallDownload(after) => (usize::MAX, after, true, None),
            };
            let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else {
                continue;
            };
            std::thread::spawn(move || pump(client, server, up, false, cut_budget));
            std::thread::spawn(move || pump(server2, client2, down, stall, None));
        }
    });
    Ok(addr)
}

#[test]
#[ignore = "needs curl, docker-registry; .ci/run runs it"]
fn chunked_uploads_survive_broken_connections_on_both_registries() -> Result<()> {
    need(&["docker-registry", "curl"])?;
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data)?;
    // Incompressible, 3 MiB: three chunks of 1 MiB.
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let payload: Vec<u8> = (0..3 * 1024 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect();
    std::fs::write(data.join("model.bin"), &payload)?;
    let image = tmp.path().join("image");
    ok(&[
        "build",
        "--no-cache",
        "--fallback",
        "none",
        "--block",
        "*.bin",
        "--add",
        &format!("{}:/opt/data", data.display()),
        "--out",
        &format!("oci:{}:v1", image.display()),
    ])?;
    let distribution = DockerRegistry::start(&tmp.path().join("distribution"))?;
    for (who, host) in [
        (
            "oci-blocks-registry",
            our_registry(&tmp.path().join("ours"))?,
        ),
        (
            "docker-registry",
            format!("127.0.0.1:{}", distribution.port),
        ),
    ] {
        let proxy = proxy(host.clone(), 2, Fault::CutUpload(700_000))?;
        let out = oci_blocks(&[
            "push",
            "--json",
            "--dest-tls-verify=false",
            "--jobs",
            "1",
            "--chunk-size",
            "1048576",
            &format!("oci:{}:v1", image.display()),
            &format!("docker://{proxy}/big:v1"),
        ])?;
        ensure!(
            out.status.success(),
            "{who}: push through a cutting proxy:\n{}",
            text(&out)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            stderr.contains("chunk failed"),
            "{who}: the proxy cut a connection mid-chunk, and the push went on:\n{stderr}"
        );
        let report: Value = serde_json::from_slice(&out.stdout)?;
        ensure!(
            report["blobs_transferred"].as_u64() >= Some(2),
            "{who}: {report}"
        );
        // Read back directly: every digest verified on the way into a layout.
        copy_back_keeps_digests(
            &format!("docker://{host}/big:v1"),
            &image,
            "v1",
            &tmp.path().join(format!("back-{who}")),
        )?;
    }
    Ok(())
}

#[test]
#[ignore = "needs the corpus (apt-get, pip and the network); .ci/run runs it"]
fn a_pull_killed_midway_does_not_fetch_again_what_it_completed() -> Result<()> {
    let dir = corpus("java")?;
    let tmp = tempfile::tempdir()?;
    let image = tmp.path().join("image");
    build_bare("java", &dir, "v1", &image)?;
    let host = our_registry(&tmp.path().join("ours"))?;
    json_ok(&[
        "push",
        "--json",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", image.display()),
        &format!("docker://{host}/java:v1"),
    ])?;
    // Downloads through the proxy hang after 4 MB on the first two connections.
    let hanging = proxy(host.clone(), 2, Fault::StallDownload(4_000_000))?;
    let store = tmp.path().join("store");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_oci-blocks"))
        .args(["pull", "--tls-verify=false", "--jobs", "1", "--store"])
        .arg(&store)
        .arg(format!("docker://{hanging}/java:v1"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let blobs_dir = store.join("images/blobs/sha256");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut last = 0;
    loop {
        let n = blob_files_in(&blobs_dir)?.len();
        if n > 0 && n == last {
            break; // stalled: nothing new for one poll
        }
        last = n;
        ensure!(
            std::time::Instant::now() < deadline,
            "the pull never stalled"
        );
        ensure!(
            child.try_wait()?.is_none(),
            "the pull ended before it was killed"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    child.kill()?;
    child.wait()?;
    let completed = blob_files_in(&blobs_dir)?;
    ensure!(!completed.is_empty(), "nothing completed before the kill");

    let report = json_ok(&[
        "pull",
        "--json",
        "--tls-verify=false",
        "--store",
        store.to_str().context("utf-8")?,
        &format!("docker://{host}/java:v1"),
    ])?;
    let total = report["blobs"].as_u64().context("blobs")? as usize;
    ensure!(
        report["blobs_skipped"].as_u64() == Some(completed.len() as u64)
            && report["blobs_transferred"].as_u64() == Some((total - completed.len()) as u64),
        "the second pull fetches only the {} blobs the killed one had not completed: {report}",
        total - completed.len()
    );
    Ok(())
}

#[test]
fn https_with_a_ca_directory_or_without_verification() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])?;
    let certs = tmp.path().join("certs");
    std::fs::create_dir_all(&certs)?;
    std::fs::write(certs.join("ca.crt"), cert.cert.pem())?;
    let (cert_file, key_file) = (tmp.path().join("cert.pem"), tmp.path().join("key.pem"));
    std::fs::write(&cert_file, cert.cert.pem())?;
    std::fs::write(&key_file, cert.signing_key.serialize_pem())?;
    let host = our_registry_with(&tmp.path().join("ours"), None, Some((cert_file, key_file)))?;
    let image = format!("oci:{}", repo().join("examples/hello-blocks").display());
    let dest = format!("docker://{host}/hello:v1");
    // Verified against the test's CA.
    let report = json_ok(&[
        "push",
        "--json",
        "--dest-cert-dir",
        certs.to_str().context("utf-8")?,
        &image,
        &dest,
    ])?;
    ensure!(report["blobs_transferred"].as_u64() > Some(0), "{report}");
    // An unknown CA is refused, and does not fall back to plain HTTP.
    let out = oci_blocks(&["push", &image, &dest])?;
    ensure!(!out.status.success(), "an unknown CA was trusted");
    // Without verification (skopeo's --tls-verify=false), HTTPS still works.
    let report = json_ok(&[
        "copy",
        "--json",
        "--src-tls-verify=false",
        &dest,
        &format!("oci:{}:v1", tmp.path().join("back").display()),
    ])?;
    ensure!(report["blobs_transferred"].as_u64() > Some(0), "{report}");
    Ok(())
}

/// A front for `target` that wants a bearer token from its own `/token`
/// endpoint (given for alice:s3cret), as registries behind a token service do.
/// Returns its address and the scopes tokens were asked for.
fn bearer_front(target: String) -> Result<(String, std::sync::Arc<std::sync::Mutex<Vec<String>>>)> {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?.to_string();
    let scopes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = scopes.clone();
    let front = addr.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { continue };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && client.read(&mut byte).is_ok_and(|n| n == 1) {
                head.push(byte[0]);
                if head == [0x16] {
                    break; // a TLS hello: this front speaks plain HTTP only
                }
            }
            if head == [0x16] {
                continue;
            }
            let text = String::from_utf8_lossy(&head).to_string();
            let lower = text.to_ascii_lowercase();
            let path = text
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_string();
            let reply = |client: &mut TcpStream, status: &str, extra: &str, body: &str| {
                let _ = write!(
                    client,
                    "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            };
            if path.starts_with("/token") {
                use base64::Engine;
                let good = format!(
                    "authorization: basic {}",
                    base64::engine::general_purpose::STANDARD.encode("alice:s3cret")
                )
                .to_ascii_lowercase();
                if let Ok(mut s) = seen.lock() {
                    s.push(path.clone());
                }
                if lower.contains(&good) {
                    reply(
                        &mut client,
                        "200 OK",
                        "Content-Type: application/json\r\n",
                        r#"{"token":"t0k3n"}"#,
                    );
                } else {
                    reply(&mut client, "401 Unauthorized", "", "");
                }
                continue;
            }
            if !lower.contains("authorization: bearer t0k3n") {
                let challenge = format!(
                    "WWW-Authenticate: Bearer realm=\"http://{front}/token\",service=\"test\"\r\n"
                );
                reply(&mut client, "401 Unauthorized", &challenge, "");
                continue;
            }
            // One request per connection, so that every request is checked:
            // forward this one with `Connection: close`, then its response.
            let Ok(mut server) = TcpStream::connect(&target) else {
                continue;
            };
            let mut forwarded: String = text
                .trim_end_matches("\r\n")
                .split("\r\n")
                .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
                .map(|l| format!("{l}\r\n"))
                .collect();
            forwarded.push_str("Connection: close\r\n\r\n");
            let length: usize = lower
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            let mut body = vec![0u8; length];
            if client.read_exact(&mut body).is_err()
                || server.write_all(forwarded.as_bytes()).is_err()
                || server.write_all(&body).is_err()
            {
                continue;
            }
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut server, &mut client);
            });
        }
    });
    Ok((addr, scopes))
}

#[test]
fn bearer_tokens_are_fetched_from_the_challenge_realm() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let host = our_registry(&tmp.path().join("ours"))?;
    let (front, scopes) = bearer_front(host)?;
    let image = format!("oci:{}", repo().join("examples/hello-blocks").display());
    let dest = format!("docker://{front}/hello:v1");
    let out = oci_blocks(&[
        "push",
        "--dest-tls-verify=false",
        "--dest-creds",
        "alice:wrong",
        &image,
        &dest,
    ])?;
    ensure!(
        !out.status.success(),
        "a token was given for a wrong password"
    );
    let report = json_ok(&[
        "push",
        "--json",
        "--dest-tls-verify=false",
        "--dest-creds",
        "alice:s3cret",
        &image,
        &dest,
    ])?;
    ensure!(report["blobs_transferred"].as_u64() > Some(0), "{report}");
    let asked = scopes.lock().map(|s| s.clone()).unwrap_or_default();
    ensure!(
        asked
            .iter()
            .any(|p| p.contains("scope=repository%3Ahello%3Apull%2Cpush")
                && p.contains("service=test")),
        "the token was asked for the push scope: {asked:?}"
    );
    Ok(())
}

/// A reply of the hostile registry.
enum Reply {
    /// A status, extra headers and a body.
    Full(&'static str, String, Vec<u8>),
    /// 200 with an endless body of zeros, announcing `Content-Length` when
    /// given.
    Endless(Option<u64>),
}

/// A registry that answers from `route` (method, path and lowercased head
/// to reply), one request per connection, and records every request line.
/// Plain HTTP only, on `ip`.
fn hostile_registry(
    ip: &str,
    route: impl Fn(&str, &str, &str) -> Reply + Send + Sync + 'static,
) -> Result<(String, std::sync::Arc<std::sync::Mutex<Vec<String>>>)> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind((ip, 0))?;
    let addr = listener.local_addr()?.to_string();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let route = std::sync::Arc::new(route);
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { continue };
            let (log, route) = (log.clone(), route.clone());
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && client.read(&mut byte).is_ok_and(|n| n == 1) {
                    head.push(byte[0]);
                    if head == [0x16] {
                        return; // a TLS hello
                    }
                }
                let text = String::from_utf8_lossy(&head).to_string();
                let mut words = text.split_whitespace();
                let (method, path) = (
                    words.next().unwrap_or_default().to_string(),
                    words.next().unwrap_or_default().to_string(),
                );
                if let Ok(mut l) = log.lock() {
                    l.push(format!("{method} {path}"));
                }
                match route(&method, &path, &text.to_ascii_lowercase()) {
                    Reply::Full(status, headers, body) => {
                        let _ = write!(
                            client,
                            "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        );
                        let _ = client.write_all(&body);
                    }
                    Reply::Endless(length) => {
                        let length = length
                            .map(|l| format!("Content-Length: {l}\r\n"))
                            .unwrap_or_default();
                        let _ = write!(
                            client,
                            "HTTP/1.1 200 OK\r\n{length}Connection: close\r\n\r\n"
                        );
                        let zeros = vec![b'0'; 1 << 16];
                        while client.write_all(&zeros).is_ok() {}
                    }
                }
            });
        }
    });
    Ok((addr, seen))
}

fn json_reply(media_type: &str, value: &Value) -> Reply {
    Reply::Full(
        "200 OK",
        format!("Content-Type: {media_type}\r\n"),
        serde_json::to_vec(value).unwrap_or_default(),
    )
}

fn not_found() -> Reply {
    Reply::Full("404 Not Found", String::new(), Vec::new())
}

/// Bytes of every file below `dir`.
fn bytes_below(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        if let Ok(m) = std::fs::symlink_metadata(&p) {
            if m.is_dir() {
                if let Ok(rd) = std::fs::read_dir(&p) {
                    stack.extend(rd.filter_map(|e| e.ok()).map(|e| e.path()));
                }
            } else {
                total += m.len();
            }
        }
    }
    total
}

/// A registry that streams forever for a small blob, announces a 1 GiB
/// manifest, or serves index graphs that are deep or fan out: `pull` stops at
/// each bound, names it, and stores next to nothing.
#[test]
fn a_hostile_registry_costs_a_pull_bounded_work() -> Result<()> {
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_digest = Digest::sha256(config);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest.as_str(), "size": config.len()},
        "layers": [],
    });
    let manifest_bytes = serde_json::to_vec(&manifest)?;
    let manifest_digest = Digest::sha256(&manifest_bytes);
    // index_k names index_{k+1} twice (a diamond), down to the manifest.
    let mut diamond: Vec<Vec<u8>> = vec![manifest_bytes.clone()];
    for _ in 0..40 {
        let below = diamond.last().cloned().unwrap_or_default();
        let d = serde_json::json!({"mediaType": if diamond.len() == 1 {"application/vnd.oci.image.manifest.v1+json"} else {"application/vnd.oci.image.index.v1+json"}, "digest": Digest::sha256(&below).as_str(), "size": below.len()});
        let index = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [d, d]});
        diamond.push(serde_json::to_vec(&index)?);
    }
    let top = diamond.last().cloned().unwrap_or_default();
    // A chain of 10,000 indexes, each naming the next (served by digest).
    let mut chain: Vec<Vec<u8>> = vec![manifest_bytes.clone()];
    for _ in 0..10_000 {
        let below = chain.last().cloned().unwrap_or_default();
        let kind = if chain.len() == 1 {
            "application/vnd.oci.image.manifest.v1+json"
        } else {
            "application/vnd.oci.image.index.v1+json"
        };
        let index = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [{"mediaType": kind, "digest": Digest::sha256(&below).as_str(), "size": below.len()}]});
        chain.push(serde_json::to_vec(&index)?);
    }
    let chain_top = chain.last().cloned().unwrap_or_default();
    let by_digest: BTreeMap<String, Vec<u8>> = diamond
        .iter()
        .chain(&chain)
        .map(|b| (Digest::sha256(b).to_string(), b.clone()))
        .collect();
    let (host, seen) = hostile_registry("127.0.0.1", move |_, path, _| {
        let cd = config_digest.to_string();
        match path {
            "/v2/" => Reply::Full("200 OK", String::new(), Vec::new()),
            "/v2/evil/manifests/endless-blob" => {
                let mut m = manifest.clone();
                m["config"]["size"] = serde_json::json!(195);
                json_reply("application/vnd.oci.image.manifest.v1+json", &m)
            }
            "/v2/evil/manifests/huge" => Reply::Endless(Some(1 << 30)),
            "/v2/evil/manifests/huge-chunked" => Reply::Endless(None),
            "/v2/evil/manifests/diamond" => Reply::Full(
                "200 OK",
                "Content-Type: application/vnd.oci.image.index.v1+json\r\n".into(),
                top.clone(),
            ),
            "/v2/evil/manifests/chain" => Reply::Full(
                "200 OK",
                "Content-Type: application/vnd.oci.image.index.v1+json\r\n".into(),
                chain_top.clone(),
            ),
            p if p == format!("/v2/evil/blobs/{cd}") => Reply::Endless(None),
            p => match p
                .strip_prefix("/v2/evil/manifests/")
                .and_then(|d| by_digest.get(d))
            {
                Some(bytes) => Reply::Full(
                    "200 OK",
                    "Content-Type: application/vnd.oci.image.index.v1+json\r\n".into(),
                    bytes.clone(),
                ),
                None => not_found(),
            },
        }
    })?;
    let _ = manifest_digest;
    let tmp = tempfile::tempdir()?;
    // `pull` for a platform's image, `copy` for a whole index graph.
    let pull = |tag: &str| -> Result<(bool, String, u64)> {
        let store = tmp.path().join(format!("store-{tag}"));
        let image = format!("docker://{host}/evil:{tag}");
        let dest = format!("oci:{}", store.display());
        let store_text = store.display().to_string();
        let args: Vec<&str> = if tag == "diamond" || tag == "chain" {
            vec!["copy", "--src-tls-verify=false", &image, &dest]
        } else {
            vec!["pull", "--tls-verify=false", "--store", &store_text, &image]
        };
        let out = oci_blocks(&args)?;
        Ok((out.status.success(), text(&out), bytes_below(&store)))
    };
    for (tag, needles) in [
        ("endless-blob", &["195", "size"][..]),
        ("huge", &["4194304 bytes", "announces 1073741824"][..]),
        ("huge-chunked", &["4194304 bytes", "more than"][..]),
        ("diamond", &["8 levels of nested indexes"][..]),
        ("chain", &["8 levels of nested indexes"][..]),
    ] {
        let (ok, out, stored) = pull(tag)?;
        ensure!(!ok, "{tag}: the pull succeeded: {out}");
        for n in needles {
            ensure!(
                out.contains(n),
                "{tag}: the error does not name {n:?}: {out}"
            );
        }
        ensure!(stored < 1 << 20, "{tag}: {stored} bytes stored");
    }
    let requests = seen.lock().map(|s| s.clone()).unwrap_or_default();
    let blob_gets = requests.iter().filter(|r| r.contains("/blobs/")).count();
    ensure!(
        blob_gets == 1,
        "the endless blob was fetched {blob_gets} times: {requests:?}"
    );
    let index_gets = requests
        .iter()
        .filter(|r| r.contains("/manifests/sha256:"))
        .count();
    ensure!(
        index_gets <= 16,
        "each index of the diamond and the chain is fetched once, down to the depth bound: {index_gets} GETs"
    );
    Ok(())
}

/// A registry whose bearer challenge names a token realm on another host over
/// plain HTTP gets no credentials there; one on its own host does.
#[test]
fn credentials_go_to_a_token_realm_only_over_https_or_on_the_registry_host() -> Result<()> {
    let token_log = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen_auth = token_log.clone();
    let (token, _) = hostile_registry("127.0.0.1", move |_, path, head| {
        if let Ok(mut l) = seen_auth.lock() {
            l.push(format!(
                "{path} authorization={}",
                head.contains("authorization: basic")
            ));
        }
        json_reply("application/json", &serde_json::json!({"token": "t"}))
    })?;
    let token_port = token.rsplit(':').next().unwrap_or_default().to_string();
    let (other, _) = hostile_registry("127.0.0.2", {
        let seen_auth = token_log.clone();
        move |_, path, head| {
            if let Ok(mut l) = seen_auth.lock() {
                l.push(format!(
                    "{path} authorization={}",
                    head.contains("authorization: basic")
                ));
            }
            json_reply("application/json", &serde_json::json!({"token": "t"}))
        }
    })?;
    let other_port = other.rsplit(':').next().unwrap_or_default().to_string();
    for (realm_host, port, sent) in [
        ("127.0.0.2", other_port, false),
        ("127.0.0.1", token_port, true),
    ] {
        let realm = format!("http://{realm_host}:{port}/token");
        let (host, _) = hostile_registry("127.0.0.1", move |_, _, head| {
            if head.contains("authorization: bearer t") {
                not_found()
            } else {
                Reply::Full(
                    "401 Unauthorized",
                    format!("WWW-Authenticate: Bearer realm=\"{realm}\",service=\"x\"\r\n"),
                    Vec::new(),
                )
            }
        })?;
        let tmp = tempfile::tempdir()?;
        let _ = oci_blocks(&[
            "pull",
            "--tls-verify=false",
            "--creds",
            "alice:s3cret",
            "--store",
            &tmp.path().display().to_string(),
            &format!("docker://{host}/app:v1"),
        ])?;
        let log = token_log.lock().map(|l| l.clone()).unwrap_or_default();
        let asked = log.last().cloned().unwrap_or_default();
        ensure!(
            asked.ends_with(&format!("authorization={sent}")),
            "realm on {realm_host}: {log:?}"
        );
    }
    Ok(())
}

/// What a skopeo user expects of the flags and the errors: a bare
/// `--dest-tls-verify` means true and takes no argument, a refused
/// connection says so, HTTPS to a plain-HTTP registry says what to do, and
/// `inspect` reads an image in a registry.
#[test]
fn transfers_speak_as_skopeo_does() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let copy = tmp.path().join("copy");
    // Bare: the next argument is the source, not the flag's value.
    ok(&[
        "copy",
        "--dest-tls-verify",
        "--src-tls-verify",
        "oci:examples/hello-blocks:latest",
        &format!("oci:{}:latest", copy.display()),
    ])?;
    ensure!(copy.join("index.json").is_file());
    let out = oci_blocks(&[
        "copy",
        "--dest-tls-verify",
        "false",
        "oci:examples/hello-blocks:latest",
    ])?;
    // Without `=`, `false` is the source (as in skopeo), not the flag's value.
    ensure!(
        out.status.code() == Some(2) && text(&out).contains("\"false\""),
        "`--dest-tls-verify false` took `false` as the value: {}",
        text(&out)
    );

    // Nothing listens on a port just released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let out = oci_blocks(&[
        "pull",
        "--tls-verify=false",
        "--store",
        &tmp.path().join("store").display().to_string(),
        &format!("docker://127.0.0.1:{port}/a/b:v1"),
    ])?;
    let t = text(&out).to_lowercase();
    ensure!(
        out.status.code() == Some(2) && t.contains("connection refused"),
        "the cause is not in the error: {t}"
    );

    let host = our_registry(&tmp.path().join("registry"))?;
    ok(&[
        "push",
        "--dest-tls-verify=false",
        "oci:examples/hello-blocks:latest",
        &format!("docker://{host}/hello/blocks:v1"),
    ])?;
    let out = oci_blocks(&[
        "pull",
        "--store",
        &tmp.path().join("store").display().to_string(),
        &format!("docker://{host}/hello/blocks:v1"),
    ])?;
    let t = text(&out);
    ensure!(
        out.status.code() == Some(2) && t.contains("plain-HTTP registry"),
        "HTTPS to a plain-HTTP registry gives no hint: {t}"
    );

    let remote = json_ok(&[
        "inspect",
        "--json",
        "--tls-verify=false",
        &format!("docker://{host}/hello/blocks:v1"),
    ])?;
    let local = json_ok(&["inspect", "--json", "oci:examples/hello-blocks:latest"])?;
    ensure!(remote["valid"] == true, "{remote}");
    ensure!(
        remote["info"]["manifests"] == local["info"]["manifests"],
        "inspect of the registry copy differs from the layout's:\n{remote}\n{local}"
    );
    Ok(())
}

#[test]
fn a_blob_file_cut_short_in_the_destination_is_fetched_again() -> Result<()> {
    // Copies into a layout sync once before the tag, not per blob, so a
    // crash may leave a blob file cut short: a later pull must not take it
    // for the blob.
    let tmp = tempfile::tempdir()?;
    let t = tmp.path();
    let image = t.join("image");
    crate::delta::build_versions(t, &image)?;
    let host = our_registry(&t.join("registry"))?;
    json_ok(&[
        "push",
        "--json",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", image.display()),
        &format!("docker://{host}/app:v1"),
    ])?;
    let store = t.join("store");
    let s = store.to_str().context("utf-8")?;
    ok(&[
        "pull",
        "--tls-verify=false",
        "--store",
        s,
        &format!("docker://{host}/app:v1"),
    ])?;
    let images = store.join("images/blobs/sha256");
    let largest = fs::read_dir(&images)?
        .map(|e| Ok(e?.path()))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .max_by_key(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .context("a blob")?;
    let whole = fs::read(&largest)?;
    fs::write(&largest, &whole[..whole.len() / 2])?;
    let report = json_ok(&[
        "pull",
        "--json",
        "--tls-verify=false",
        "--store",
        s,
        &format!("docker://{host}/app:v1"),
    ])?;
    ensure!(
        report["blobs_transferred"].as_u64() >= Some(1),
        "{report:#}"
    );
    ensure!(fs::read(&largest)? == whole, "the blob is whole again");
    Ok(())
}
