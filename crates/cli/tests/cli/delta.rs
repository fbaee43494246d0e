//! `oci-blocks delta`, `pull` with deltas, `bundle` and `load`: a changed
//! jar reaches a puller as a patch against the version its store holds,
//! through this project's registry (referrers API), docker-registry (the
//! tag schema) and an offline bundle, rebuilt byte for byte; bad patches fall
//! back to whole blocks, bad bundles are refused and leave nothing behind.
//! Bytes are counted by a proxy in front of the registry and by the bundle's
//! file size, not by the client's own report.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::common::*;
use crate::transfer::{json_ok, our_registry};
use anyhow::{Context, Result, ensure};
use oci_blocks_core::Digest;
use serde_json::Value;

/// Pseudo-random bytes (xorshift), which deflate cannot shrink much, as
/// compiled classes behave in a jar.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A deflated jar of `classes` classes; those in `changed` get other bytes.
fn jar(classes: usize, changed: &[usize], salt: u64) -> Result<Vec<u8>> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .last_modified_time(zip::DateTime::default());
    for i in 0..classes {
        w.start_file(format!("com/example/C{i}.class"), options)?;
        let seed = if changed.contains(&i) {
            1_000_000 + i as u64 + salt
        } else {
            i as u64
        };
        std::io::Write::write_all(&mut w, &noise(1500 + (i % 7) * 300, seed))?;
    }
    Ok(w.finish()?.into_inner())
}

/// Two versions of a dependency directory: `app` bumped with a few classes
/// changed, `lib` unchanged, `extra` only in v2 (no base for it).
fn versions(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let (v1, v2) = (dir.join("v1/lib"), dir.join("v2/lib"));
    fs::create_dir_all(&v1)?;
    fs::create_dir_all(&v2)?;
    fs::write(v1.join("app-1.0.jar"), jar(800, &[], 0)?)?;
    fs::write(v2.join("app-1.1.jar"), jar(800, &[3, 250, 600, 799], 0)?)?;
    let lib = jar(50, &[], 77)?;
    fs::write(v1.join("lib-2.0.jar"), &lib)?;
    fs::write(v2.join("lib-2.0.jar"), &lib)?;
    fs::write(v2.join("extra-0.1.jar"), jar(40, &[0], 99)?)?;
    Ok((v1, v2))
}

/// Builds both versions into `image` (tags v1, v2, with the fallback index).
pub(crate) fn build_versions(dir: &Path, image: &Path) -> Result<(PathBuf, PathBuf)> {
    let (v1, v2) = versions(dir)?;
    for (v, src) in [("v1", &v1), ("v2", &v2)] {
        ok(&[
            "build",
            "--no-cache",
            "--add",
            &format!("{}:/app/lib", src.display()),
            "--out",
            &format!("oci:{}:{v}", image.display()),
        ])?;
    }
    Ok((v1, v2))
}

/// A TCP proxy in front of `target` that counts the bytes it forwards to
/// the client: the bytes a pull really received.
pub(crate) fn counting_proxy(target: String) -> Result<(String, Arc<AtomicU64>)> {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?.to_string();
    let counted = Arc::new(AtomicU64::new(0));
    let total = counted.clone();
    fn pump(mut from: TcpStream, mut to: TcpStream, count: Option<Arc<AtomicU64>>) {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
            if let Some(c) = &count {
                c.fetch_add(n as u64, Ordering::SeqCst);
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    }
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let Ok(server) = TcpStream::connect(&target) else {
                continue;
            };
            let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                continue;
            };
            let total = total.clone();
            std::thread::spawn(move || pump(client, server, None));
            std::thread::spawn(move || pump(s2, c2, Some(total)));
        }
    });
    Ok((addr, counted))
}

/// The blocks of the blocks manifest of `tag` in `layout`: digest to
/// (size, title).
fn blocks_of(layout: &Path, tag: &str) -> Result<BTreeMap<String, (u64, String)>> {
    let dir = oci_blocks_core::layout::OciDir::open(layout)?;
    let (_, m) = manifest_of(&dir, tag, "blocks")?;
    Ok(m.blocks()
        .iter()
        .map(|b| {
            (
                b.digest().to_string(),
                (
                    b.size(),
                    b.annotations()
                        .as_ref()
                        .and_then(|a| a.get("org.opencontainers.image.title").cloned())
                        .unwrap_or_default(),
                ),
            )
        })
        .collect())
}

fn the_block(blocks: &BTreeMap<String, (u64, String)>, title: &str) -> Result<(String, u64)> {
    blocks
        .iter()
        .find(|(_, (_, t))| t.starts_with(title))
        .map(|(d, (s, _))| (d.clone(), *s))
        .with_context(|| format!("no block titled {title}* in {blocks:?}"))
}

/// The bytes of `digest` in a layout.
fn blob(layout: &Path, digest: &str) -> Result<Vec<u8>> {
    let d = Digest::parse(digest)?;
    Ok(fs::read(
        layout
            .join("blobs")
            .join(d.algorithm().as_str())
            .join(d.hex()),
    )?)
}

/// Pushes v1 and v2 to `host`, makes the deltas there, pulls v1 into a store
/// and then v2 through a counting proxy; checks the patch was used, the
/// rebuilt block is v2's byte for byte, the tree is v2's, and the bytes
/// received are the patch's and the new jar's, not the bumped jar's.
fn delta_reaches_a_puller(
    host: &str,
    image: &Path,
    v2: &Path,
    tmp: &Path,
    who: &str,
) -> Result<()> {
    for v in ["v1", "v2"] {
        json_ok(&[
            "push",
            "--json",
            "--dest-tls-verify=false",
            &format!("oci:{}:{v}", image.display()),
            &format!("docker://{host}/app:{v}"),
        ])?;
    }
    let made = json_ok(&[
        "delta",
        "--json",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--from",
        &format!("docker://{host}/app:v1"),
        &format!("docker://{host}/app:v2"),
    ])?;
    let blocks = blocks_of(image, "v2")?;
    let (app, app_size) = the_block(&blocks, "app")?;
    let (_, extra_size) = the_block(&blocks, "extra")?;
    let patches = made["patches"].as_array().context("patches")?;
    ensure!(
        patches.len() == 1 && patches[0]["target"] == app.as_str(),
        "{who}: one patch, for the bumped jar: {made:#}"
    );
    ensure!(
        made["blocks_new"] == 2 && made["blocks_without_base"] == 1,
        "{made:#}"
    );
    let patch_size = patches[0]["size"].as_u64().context("size")?;
    ensure!(
        patch_size * 20 < app_size,
        "{who}: patch of {patch_size} bytes for {app_size}"
    );

    let store = tmp.join(format!("store-{who}"));
    let pull = |image: &str, rootfs: &Path, extra: &[&str]| -> Result<Value> {
        let mut args = vec![
            "pull",
            "--json",
            "--tls-verify=false",
            "--store",
            store.to_str().context("utf-8")?,
            "--unpack",
            rootfs.to_str().context("utf-8")?,
        ];
        args.extend_from_slice(extra);
        args.push(image);
        json_ok(&args)
    };
    pull(
        &format!("docker://{host}/app:v1"),
        &tmp.join(format!("{who}-v1")),
        &[],
    )?;
    let (proxy, received) = counting_proxy(host.to_string())?;
    let rootfs = tmp.join(format!("{who}-v2"));
    let report = pull(&format!("docker://{proxy}/app:v2"), &rootfs, &[])?;
    ensure!(
        report["blobs_patched"] == 1 && report["deltas_failed"] == 0,
        "{who}: the bumped jar came as a patch: {report:#}"
    );
    let expected = expected_tree(&[(v2, "/app/lib")], &|_, b| b)?;
    assert_same(
        &expected,
        &tree(&rootfs)?,
        &format!("{who}: v2 pulled with deltas"),
    )?;
    let images = store.join("images");
    ensure!(
        blob(&images, &app)? == blob(image, &app)?,
        "{who}: the rebuilt block is v2's byte for byte"
    );
    let moved = received.load(Ordering::SeqCst);
    // The new jar, the patch, v2's manifests, config and stub layer, and the
    // HTTP around them; the bumped jar alone is far more.
    let bound = extra_size + patch_size + 64 * 1024;
    ensure!(
        moved <= bound && moved * 4 < app_size,
        "{who}: pulling v2 received {moved} bytes; bound {bound}, the bumped jar is {app_size}: {report:#}"
    );
    // Without deltas, the same pull into a fresh store moves the whole jar.
    let plain_store = tmp.join(format!("plain-store-{who}"));
    json_ok(&[
        "pull",
        "--json",
        "--tls-verify=false",
        "--store",
        plain_store.to_str().context("utf-8")?,
        &format!("docker://{host}/app:v1"),
    ])?;
    let (proxy, received) = counting_proxy(host.to_string())?;
    let plain = json_ok(&[
        "pull",
        "--json",
        "--no-delta",
        "--tls-verify=false",
        "--store",
        plain_store.to_str().context("utf-8")?,
        &format!("docker://{proxy}/app:v2"),
    ])?;
    ensure!(plain["blobs_patched"] == 0, "{plain:#}");
    ensure!(
        received.load(Ordering::SeqCst) > app_size,
        "--no-delta fetched the whole jar"
    );
    Ok(())
}

#[test]
fn a_bumped_jar_reaches_a_puller_as_a_patch_through_the_referrers_api() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let image = tmp.path().join("image");
    let (_, v2) = build_versions(tmp.path(), &image)?;
    let host = our_registry(&tmp.path().join("registry"))?;
    delta_reaches_a_puller(&host, &image, &v2, tmp.path(), "oci-blocks-registry")
}

#[test]
#[ignore = "needs docker-registry; .ci/run runs it"]
fn a_bumped_jar_reaches_a_puller_through_docker_registry_and_the_tag_schema() -> Result<()> {
    need(&["docker-registry", "curl"])?;
    let tmp = tempfile::tempdir()?;
    let image = tmp.path().join("image");
    let (_, v2) = build_versions(tmp.path(), &image)?;
    let registry = DockerRegistry::start(&tmp.path().join("distribution"))?;
    let host = format!("127.0.0.1:{}", registry.port);
    delta_reaches_a_puller(&host, &image, &v2, tmp.path(), "docker-registry")?;
    // The artifact is listed under the tag schema's tag of v2's blocks
    // manifest, since docker-registry 2.8 has no referrers API.
    let dir = oci_blocks_core::layout::OciDir::open(&image)?;
    let (subject, _) = manifest_of(&dir, "v2", "blocks")?;
    let tags = run(std::process::Command::new("curl")
        .args(["-sf", &format!("http://{host}/v2/app/tags/list")]))?;
    let tag = format!("sha256-{}", subject.hex());
    ensure!(tags.contains(&tag), "tag {tag} in {tags}");
    Ok(())
}

#[test]
fn bad_patches_fall_back_to_the_whole_block_and_say_so() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let image = tmp.path().join("image");
    let (_, v2) = build_versions(tmp.path(), &image)?;
    let layout = format!("oci:{}", image.display());
    let made = json_ok(&[
        "delta",
        "--json",
        "--from",
        &format!("{layout}:v1"),
        &format!("{layout}:v2"),
    ])?;
    let patch = made["patches"][0]["digest"]
        .as_str()
        .context("a patch")?
        .to_string();
    let target = made["patches"][0]["target"]
        .as_str()
        .context("target")?
        .to_string();
    let good = blob(&image, &patch)?;
    let d = Digest::parse(&patch)?;
    let patch_file = image.join("blobs/sha256").join(d.hex());
    // Each way a patch can be bad: tampered (digest), not zstd, truncated.
    let mut tampered = good.clone();
    let at = tampered.len() / 2;
    tampered[at] ^= 0xff;
    let cases: [(&str, Vec<u8>); 3] = [
        ("tampered", tampered),
        ("garbage", b"this is not a zstd frame".to_vec()),
        ("truncated", good[..good.len() / 2].to_vec()),
    ];
    for (what, bytes) in cases {
        fs::write(&patch_file, &bytes)?;
        let store = tmp.path().join(format!("store-{what}"));
        let rootfs = tmp.path().join(format!("rootfs-{what}"));
        let s = store.to_str().context("utf-8")?;
        ok(&["pull", "--store", s, &format!("{layout}:v1")])?;
        let out = oci_blocks(&[
            "pull",
            "--json",
            "--store",
            s,
            "--unpack",
            rootfs.to_str().context("utf-8")?,
            &format!("{layout}:v2"),
        ])?;
        ensure!(out.status.success(), "{what}: {}", text(&out));
        let report: Value = serde_json::from_slice(&out.stdout)?;
        ensure!(
            report["blobs_patched"] == 0 && report["deltas_failed"] == 1,
            "{what}: {report:#}"
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            stderr.contains("delta failed") && stderr.contains(&target),
            "{what}: the fallback is said, naming the block: {stderr}"
        );
        let expected = expected_tree(&[(&v2, "/app/lib")], &|_, b| b)?;
        assert_same(&expected, &tree(&rootfs)?, what)?;
        ensure!(blob(&store.join("images"), &target)? == blob(&image, &target)?);
    }
    // A store without the base pulls whole, without a failure to report.
    fs::write(&patch_file, &good)?;
    let store = tmp.path().join("store-fresh");
    let report = json_ok(&[
        "pull",
        "--json",
        "--store",
        store.to_str().context("utf-8")?,
        &format!("{layout}:v2"),
    ])?;
    ensure!(
        report["blobs_patched"] == 0 && report["deltas_failed"] == 0,
        "{report:#}"
    );
    Ok(())
}

#[test]
fn delta_refuses_images_without_blocks_and_names_them() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let image = tmp.path().join("image");
    build_versions(tmp.path(), &image)?;
    let layout = format!("oci:{}", image.display());
    // The legacy manifest alone is a plain image.
    tag_legacy_as(&image, "v2", "plain")?;
    let out = oci_blocks(&[
        "delta",
        "--from",
        &format!("{layout}:v1"),
        &format!("{layout}:plain"),
    ])?;
    ensure!(!out.status.success(), "{}", text(&out));
    ensure!(text(&out).contains("no blocks manifest"), "{}", text(&out));
    Ok(())
}

/// Every blob file of a layout: digest to bytes.
fn all_blobs(layout: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    for alg in fs::read_dir(layout.join("blobs"))? {
        let alg = alg?;
        for f in fs::read_dir(alg.path())? {
            let f = f?;
            out.insert(
                format!(
                    "{}:{}",
                    alg.file_name().to_string_lossy(),
                    f.file_name().to_string_lossy()
                ),
                fs::read(f.path())?,
            );
        }
    }
    Ok(out)
}

/// Every blob `tag` of `layout` reaches (index, manifests, configs, layers,
/// blocks): digest to size, walked from `index.json` independently of the
/// code under test.
fn graph_of(layout: &Path, tag: &str) -> Result<BTreeMap<String, u64>> {
    let index: Value = serde_json::from_slice(&fs::read(layout.join("index.json"))?)?;
    let top = index["manifests"]
        .as_array()
        .context("manifests")?
        .iter()
        .find(|e| e["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .with_context(|| format!("no tag {tag}"))?;
    let mut out = BTreeMap::new();
    let mut pending = vec![top.clone()];
    while let Some(d) = pending.pop() {
        let digest = d["digest"].as_str().context("digest")?.to_string();
        out.insert(digest.clone(), d["size"].as_u64().context("size")?);
        let Ok(doc) = serde_json::from_slice::<Value>(&blob(layout, &digest)?) else {
            continue;
        };
        if !doc.is_object() || doc.get("schemaVersion").is_none() {
            continue;
        }
        for list in ["manifests", "layers", "blocks"] {
            pending.extend(doc[list].as_array().cloned().unwrap_or_default());
        }
        if let Some(c) = doc.get("config") {
            out.insert(
                c["digest"].as_str().context("config")?.to_string(),
                c["size"].as_u64().context("size")?,
            );
        }
    }
    Ok(out)
}

/// The blobs of `tag` in `layout` (its whole graph), with their bytes.
fn image_blobs(layout: &Path, tag: &str) -> Result<BTreeMap<String, Vec<u8>>> {
    let all = all_blobs(layout)?;
    let graph = graph_of(layout, tag)?;
    graph
        .keys()
        .map(|d| {
            Ok((
                d.clone(),
                all.get(d)
                    .cloned()
                    .with_context(|| format!("{d} missing"))?,
            ))
        })
        .collect()
}

#[test]
fn a_bundle_since_v1_carries_the_patch_and_loads_to_v2_byte_for_byte() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let t = tmp.path();
    let image = t.join("image");
    let (_, v2) = build_versions(t, &image)?;
    let layout = format!("oci:{}", image.display());
    let file = t.join("update.tar");
    let report = json_ok(&[
        "bundle",
        "--json",
        &format!("{layout}:v2"),
        "--since",
        &format!("{layout}:v1"),
        "--delta",
        "-o",
        file.to_str().context("utf-8")?,
    ])?;
    let size = fs::metadata(&file)?.len();
    let blocks = blocks_of(&image, "v2")?;
    let (app, app_size) = the_block(&blocks, "app")?;
    ensure!(report["patches"].as_u64() >= Some(1), "{report:#}");
    // The bundle does not carry the bumped jar's block.
    let listing = run(std::process::Command::new("tar").arg("tf").arg(&file))?;
    ensure!(
        !listing.contains(Digest::parse(&app)?.hex()),
        "the bundle carries the bumped block whole:\n{listing}"
    );
    ensure!(size == report["bytes"].as_u64().unwrap_or(0), "{report:#}");
    // Neither the bumped jar nor the legacy layer that holds it travels:
    // the patch, the new jar and the documents do.
    let (_, extra_size) = the_block(&blocks, "extra")?;
    ensure!(
        size < extra_size + 64 * 1024 && size * 4 < app_size,
        "a bundle of {size} bytes; the new jar is {extra_size}, the bumped one {app_size}: {report:#}"
    );

    // Loaded onto v1 into a new layout: v2's graph, byte for byte.
    let dest = t.join("site");
    json_ok(&[
        "load",
        "--json",
        file.to_str().context("utf-8")?,
        "--onto",
        &format!("{layout}:v1"),
        "--into",
        &format!("oci:{}:v2", dest.display()),
    ])?;
    ensure!(
        image_blobs(&dest, "v2")? == image_blobs(&image, "v2")?,
        "the loaded image is v2's"
    );
    ensure!(all_blobs(&dest)?.contains_key(&app), "{app} rebuilt");
    ok(&["validate", &format!("oci:{}:v2", dest.display())])?;
    let rootfs = t.join("rootfs");
    ok(&[
        "unpack",
        "--store",
        t.join("store").to_str().context("utf-8")?,
        &format!("oci:{}:v2", dest.display()),
        rootfs.to_str().context("utf-8")?,
    ])?;
    let expected = expected_tree(&[(&v2, "/app/lib")], &|_, b| b)?;
    assert_same(
        &expected,
        &tree(&rootfs)?,
        "unpacked from the loaded bundle",
    )?;
    Ok(())
}

#[test]
fn a_plain_images_gzip_layer_travels_as_a_patch_between_its_contents() -> Result<()> {
    // A plain image (here v1's and v2's legacy manifests alone) has no stub
    // layers to materialize its layers from: the bundle patches its changed
    // gzip layer between the uncompressed contents, and the loader
    // recompresses it, digest verified.
    let tmp = tempfile::tempdir()?;
    let t = tmp.path();
    let image = t.join("image");
    build_versions(t, &image)?;
    for v in ["v1", "v2"] {
        tag_legacy_as(&image, v, &format!("plain-{v}"))?;
    }
    let file = t.join("update.tar");
    let layout = format!("oci:{}", image.display());
    let report = json_ok(&[
        "bundle",
        "--json",
        &format!("{layout}:plain-v2"),
        "--since",
        &format!("{layout}:plain-v1"),
        "--delta",
        "-o",
        file.to_str().context("utf-8")?,
    ])?;
    let changed: u64 = {
        let v1 = graph_of(&image, "plain-v1")?;
        graph_of(&image, "plain-v2")?
            .iter()
            .filter(|(d, _)| !v1.contains_key(*d))
            .map(|(_, s)| s)
            .sum()
    };
    let size = fs::metadata(&file)?.len();
    ensure!(
        report["patches"] == 1 && size * 10 < changed,
        "the changed layer travels as a patch: {size} bytes for {changed} of new blobs: {report:#}"
    );
    let dest = t.join("site");
    ok(&[
        "load",
        file.to_str().context("utf-8")?,
        "--onto",
        &format!("{layout}:plain-v1"),
        "--into",
        &format!("oci:{}:v2", dest.display()),
    ])?;
    ensure!(image_blobs(&dest, "v2")? == image_blobs(&image, "plain-v2")?);
    Ok(())
}

/// Runs `load` expecting a refusal that names `needle`, and checks that the
/// destination was not created.
fn refused(file: &Path, onto: Option<&str>, dest: &Path, needle: &str) -> Result<()> {
    let mut args = vec!["load".to_string(), file.display().to_string()];
    if let Some(o) = onto {
        args.extend(["--onto".to_string(), o.to_string()]);
    }
    args.extend(["--into".to_string(), format!("oci:{}:v2", dest.display())]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = oci_blocks(&args)?;
    ensure!(!out.status.success(), "{args:?} succeeded: {}", text(&out));
    ensure!(
        text(&out).contains(needle),
        "{args:?}: the error names {needle:?}: {}",
        text(&out)
    );
    ensure!(!dest.exists(), "{args:?} left {} behind", dest.display());
    Ok(())
}

#[test]
fn truncated_tampered_or_misbased_bundles_are_refused_and_leave_nothing() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let t = tmp.path();
    let image = t.join("image");
    build_versions(t, &image)?;
    let layout = format!("oci:{}", image.display());
    let file = t.join("update.tar");
    ok(&[
        "bundle",
        &format!("{layout}:v2"),
        "--since",
        &format!("{layout}:v1"),
        "--delta",
        "-o",
        file.to_str().context("utf-8")?,
    ])?;
    let good = fs::read(&file)?;
    let dest = t.join("site");
    let v1 = format!("{layout}:v1");

    // Cut short, in the middle and at the end.
    for (i, at) in [good.len() / 2, good.len() - 1024].into_iter().enumerate() {
        let cut = t.join(format!("cut-{i}.tar"));
        fs::write(&cut, &good[..at])?;
        refused(&cut, Some(&v1), &dest, "truncated")?;
    }
    // One byte of a blob changed: named by the blob's digest.
    let listing = run(std::process::Command::new("tar").arg("tvf").arg(&file))?;
    let largest = listing
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((f.get(2)?.parse::<u64>().ok()?, f.last()?.to_string()))
        })
        .max()
        .context("entries")?;
    let at = find(&good, format!("{}\0", largest.1).as_bytes()).context("the entry header")?;
    let mut tampered = good.clone();
    tampered[at - at % 512 + 512 + 100] ^= 0x01;
    let bad = t.join("tampered.tar");
    fs::write(&bad, &tampered)?;
    refused(
        &bad,
        Some(&v1),
        &dest,
        largest.1.rsplit('/').next().unwrap_or_default(),
    )?;
    // Onto another image than the one it was made since, or onto none.
    refused(
        &file,
        Some(&format!("{layout}:v2")),
        &dest,
        "was made since",
    )?;
    refused(&file, None, &dest, "--onto")?;
    // Onto v1 with the patch's base missing: refused before writing.
    let partial = t.join("partial");
    ok(&["copy", &v1, &format!("oci:{}:v1", partial.display())])?;
    let blocks = blocks_of(&partial, "v1")?;
    let (base, _) = the_block(&blocks, "app")?;
    let d = Digest::parse(&base)?;
    fs::remove_file(partial.join("blobs/sha256").join(d.hex()))?;
    refused(
        &file,
        Some(&format!("oci:{}:v1", partial.display())),
        &dest,
        &base,
    )?;
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[test]
fn a_whole_bundle_loads_without_an_earlier_image() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let t = tmp.path();
    let image = t.join("image");
    build_versions(t, &image)?;
    let file = t.join("whole.tar");
    ok(&[
        "bundle",
        &format!("oci:{}:v2", image.display()),
        "-o",
        file.to_str().context("utf-8")?,
    ])?;
    let dest = t.join("site");
    ok(&[
        "load",
        file.to_str().context("utf-8")?,
        "--into",
        &format!("oci:{}", dest.display()),
    ])?;
    ensure!(image_blobs(&dest, "v2")? == image_blobs(&image, "v2")?);
    Ok(())
}

#[test]
#[ignore = "needs skopeo; .ci/run runs it"]
fn skopeo_reads_a_whole_bundle_as_an_oci_archive() -> Result<()> {
    need(&["skopeo"])?;
    let tmp = tempfile::tempdir()?;
    let t = tmp.path();
    let image = t.join("image");
    build_versions(t, &image)?;
    let file = t.join("whole.tar");
    ok(&[
        "bundle",
        &format!("oci:{}:v2", image.display()),
        "-o",
        file.to_str().context("utf-8")?,
    ])?;
    let out = t.join("copied");
    run(std::process::Command::new("skopeo").args([
        "copy",
        "--all",
        "--preserve-digests",
        &format!("oci-archive:{}:v2", file.display()),
        &format!("oci:{}:v2", out.display()),
    ]))?;
    ensure!(image_blobs(&out, "v2")? == image_blobs(&image, "v2")?);
    Ok(())
}

/// A corpus set in two versions, each version built the default way (a
/// fallback index), pushed to `host`, diffed, and pulled through a counting
/// proxy into a store that holds v1: the blocks rebuilt from patches are v2's
/// byte for byte, the tree is v2's, and the pull received less than the
/// blocks v1 lacks. Then the same update as a bundle, loaded onto v1.
fn corpus_update_with_deltas(kind: &str, host: &str, who: &str) -> Result<()> {
    let (sub, dest) = corpus_paths(kind);
    let tmp = tempfile::tempdir()?;
    let t = tmp.path();
    let dir = update_corpus(kind, t)?;
    let image = t.join("image");
    for v in ["v1", "v2"] {
        build_corpus_version(&dir, v, sub, dest, &format!("oci:{}:{v}", image.display()))?;
        json_ok(&[
            "push",
            "--json",
            "--dest-tls-verify=false",
            &format!("oci:{}:{v}", image.display()),
            &format!("docker://{host}/{kind}:{v}"),
        ])?;
    }
    let made = json_ok(&[
        "delta",
        "--json",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--from",
        &format!("docker://{host}/{kind}:v1"),
        &format!("docker://{host}/{kind}:v2"),
    ])?;
    let patches = made["patches"].as_array().context("patches")?;
    ensure!(
        !patches.is_empty(),
        "{who} {kind}: some block has a patch: {made:#}"
    );
    let v1 = blocks_of(&image, "v1")?;
    let new_blocks: u64 = blocks_of(&image, "v2")?
        .iter()
        .filter(|(d, _)| !v1.contains_key(*d))
        .map(|(_, (s, _))| s)
        .sum();

    let store = t.join("store");
    let s = store.to_str().context("utf-8")?;
    ok(&[
        "pull",
        "--tls-verify=false",
        "--store",
        s,
        &format!("docker://{host}/{kind}:v1"),
    ])?;
    let (proxy, received) = counting_proxy(host.to_string())?;
    let rootfs = t.join("rootfs");
    let report = json_ok(&[
        "pull",
        "--json",
        "--tls-verify=false",
        "--store",
        s,
        "--unpack",
        rootfs.to_str().context("utf-8")?,
        &format!("docker://{proxy}/{kind}:v2"),
    ])?;
    ensure!(
        report["blobs_patched"].as_u64() == Some(patches.len() as u64)
            && report["deltas_failed"] == 0,
        "{who} {kind}: every patch used: {report:#}"
    );
    for p in patches {
        let target = p["target"].as_str().context("target")?;
        ensure!(
            blob(&store.join("images"), target)? == blob(&image, target)?,
            "{who} {kind}: block {target} rebuilt byte for byte"
        );
    }
    let input = dir.join("v2").join(sub);
    let expected = expected_tree(&[(input.clone(), dest)], &canonical_pyc_of(&input))?;
    assert_same(
        &expected,
        &tree(&rootfs)?,
        &format!("{who} {kind}: v2 with deltas"),
    )?;
    let moved = received.load(Ordering::SeqCst);
    ensure!(
        moved < new_blocks,
        "{who} {kind}: the pull received {moved} bytes, the blocks v1 lacks are {new_blocks}: {report:#}"
    );

    let file = t.join("update.tar");
    ok(&[
        "bundle",
        &format!("oci:{}:v2", image.display()),
        "--since",
        &format!("oci:{}:v1", image.display()),
        "--delta",
        "-o",
        file.to_str().context("utf-8")?,
    ])?;
    let size = fs::metadata(&file)?.len();
    ensure!(
        size < new_blocks,
        "{kind}: a bundle of {size} bytes for {new_blocks} of new blocks"
    );
    let site = t.join("site");
    ok(&[
        "load",
        file.to_str().context("utf-8")?,
        "--onto",
        &format!("oci:{}:v1", image.display()),
        "--into",
        &format!("oci:{}:v2", site.display()),
    ])?;
    ensure!(
        image_blobs(&site, "v2")? == image_blobs(&image, "v2")?,
        "{kind}: the bundle loads to v2's every blob"
    );
    Ok(())
}

#[test]
#[ignore = "needs docker-registry and the corpus (apt-get, pip and the network); .ci/run runs it"]
fn spark_and_python_updates_travel_as_patches_through_both_registries_and_a_bundle() -> Result<()> {
    need(&["docker-registry", "curl"])?;
    let tmp = tempfile::tempdir()?;
    let ours = our_registry(&tmp.path().join("ours"))?;
    let distribution = DockerRegistry::start(&tmp.path().join("distribution"))?;
    let theirs = format!("127.0.0.1:{}", distribution.port);
    for kind in ["pyspark", "python"] {
        corpus_update_with_deltas(kind, &ours, "oci-blocks-registry")?;
        corpus_update_with_deltas(kind, &theirs, "docker-registry")?;
    }
    Ok(())
}

#[test]
fn a_bundle_loads_into_a_registry_that_holds_the_earlier_image() -> Result<()> {
    // The site's registry holds v1; the loader takes the blobs the bundle
    // leaves out from there (no --onto layout), and pushes v2, tag last.
    let tmp = tempfile::tempdir()?;
    let t = tmp.path();
    let image = t.join("image");
    let (_, v2) = build_versions(t, &image)?;
    let host = our_registry(&t.join("registry"))?;
    json_ok(&[
        "push",
        "--json",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", image.display()),
        &format!("docker://{host}/site/app:v1"),
    ])?;
    let file = t.join("update.tar");
    ok(&[
        "bundle",
        &format!("oci:{}:v2", image.display()),
        "--since",
        &format!("oci:{}:v1", image.display()),
        "--delta",
        "-o",
        file.to_str().context("utf-8")?,
    ])?;
    let site_v1 = format!("docker://{host}/site/app:v1");
    json_ok(&[
        "load",
        "--json",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        file.to_str().context("utf-8")?,
        "--onto",
        &site_v1,
        "--into",
        &format!("docker://{host}/site/app:v2"),
    ])?;
    // What the registry serves as v2 is v2, every blob.
    let back = t.join("back");
    json_ok(&[
        "copy",
        "--json",
        "--src-tls-verify=false",
        &format!("docker://{host}/site/app:v2"),
        &format!("oci:{}:v2", back.display()),
    ])?;
    ensure!(image_blobs(&back, "v2")? == image_blobs(&image, "v2")?);
    let rootfs = t.join("rootfs");
    ok(&[
        "pull",
        "--tls-verify=false",
        "--store",
        t.join("store").to_str().context("utf-8")?,
        "--unpack",
        rootfs.to_str().context("utf-8")?,
        &format!("docker://{host}/site/app:v2"),
    ])?;
    let expected = expected_tree(&[(&v2, "/app/lib")], &|_, b| b)?;
    assert_same(&expected, &tree(&rootfs)?, "v2 loaded into a registry")?;
    Ok(())
}
