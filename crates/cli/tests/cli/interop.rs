//! The fallback image against the real tools from Debian: skopeo picks the
//! legacy manifest and umoci unpacks it to the build inputs; docker-registry
//! (CNCF distribution) keeps the blocks through its garbage collection thanks to
//! the GC anchor, and loses them without it. Registries are started here on
//! 127.0.0.1 with ephemeral ports and stopped here. When CI=true a missing tool
//! fails the test; elsewhere the test says it was skipped.

use std::collections::BTreeMap;
use std::fs;

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;
use anyhow::{Context, Result, ensure};

fn build_python_sample(dir: &Path, extra: &[&str]) -> Result<serde_json::Value> {
    let reference = format!("oci:{}:v1", dir.display());
    let mut args = vec![
        "build",
        "--no-cache",
        "-f",
        "examples/python-app/build.toml",
        "--out",
        &reference,
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = oci_blocks(&args)?;
    ensure!(out.status.success(), "{}", text(&out));
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn sample_adds() -> Vec<(PathBuf, &'static str)> {
    let py = repo().join("examples/python-app");
    vec![
        (
            py.join("site-packages"),
            "/usr/local/lib/python3.11/site-packages",
        ),
        (py.join("bin"), "/usr/local/bin"),
        (py.join("app"), "/app"),
    ]
}

fn expected_sample_tree() -> Result<BTreeMap<String, Node>> {
    expected_tree(&sample_adds(), &|_, b| b)
}

#[test]
#[ignore = "needs skopeo, umoci; .ci/run runs it"]
fn skopeo_picks_the_legacy_manifest_and_umoci_unpacks_the_inputs() -> Result<()> {
    need(&["skopeo", "umoci"])?;
    let tmp = tempfile::tempdir()?;
    let out = tmp.path().join("out");
    let report = build_python_sample(&out, &[])?;
    let legacy = report["platforms"][0]["legacy_manifest"]
        .as_str()
        .context("a fallback index")?
        .to_string();
    let copy = tmp.path().join("copy");
    run(Command::new("skopeo")
        .args(["copy", "--quiet"])
        .arg(format!("oci:{}:v1", out.display()))
        .arg(format!("oci:{}:v1", copy.display())))?;
    let index: serde_json::Value = serde_json::from_slice(&fs::read(copy.join("index.json"))?)?;
    ensure!(
        index["manifests"][0]["digest"] == legacy.as_str(),
        "skopeo did not pick the legacy manifest {legacy}: {index}"
    );

    let bundle = tmp.path().join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--rootless", "--image"])
        .arg(format!("{}:v1", copy.display()))
        .arg(&bundle))?;
    assert_same(
        &expected_sample_tree()?,
        &tree(&bundle.join("rootfs"))?,
        "umoci unpack of the legacy manifest",
    )
}

fn blocks_of(report: &serde_json::Value) -> Result<Vec<String>> {
    Ok(report["platforms"][0]["blocks"]
        .as_array()
        .context("blocks")?
        .iter()
        .filter_map(|b| b["digest"].as_str().map(str::to_string))
        .collect())
}

#[test]
#[ignore = "needs curl, docker-registry, skopeo; .ci/run runs it"]
fn the_gc_anchor_keeps_blocks_through_docker_registry_garbage_collection() -> Result<()> {
    need(&["skopeo", "docker-registry", "curl"])?;
    let tmp = tempfile::tempdir()?;
    let mut registry = DockerRegistry::start(tmp.path())?;
    let port = registry.port;

    // --fallback none: skopeo does not know `blocks`, so it never pushes them, and
    // blocks pushed by hand are deleted by the garbage collector, since no
    // manifest it understands references them. This is the failure mode the
    // anchor exists for.
    let bare = tmp.path().join("bare");
    let report = build_python_sample(&bare, &["--fallback", "none"])?;
    ensure!(report["fallback"].is_null(), "{report}");
    let blocks = blocks_of(&report)?;
    ensure!(blocks.len() == 4, "{report}");
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:v1", bare.display()))
        .arg(format!("docker://127.0.0.1:{port}/sample/bare:v1")))?;
    for b in &blocks {
        ensure!(
            registry.blob_status("sample/bare", b)? == 404,
            "expected skopeo not to push block {b}"
        );
        registry.push_blob("sample/bare", &bare, b)?;
        ensure!(
            registry.blob_status("sample/bare", b)? == 200,
            "block {b} not pushed by hand"
        );
    }
    let gc = registry.garbage_collect()?;
    for b in &blocks {
        ensure!(
            registry.blob_status("sample/bare", b)? == 404,
            "expected GC to delete the unanchored block {b}:\n{gc}"
        );
    }

    // The fallback index (the default), copied with --all: the blocks arrive as
    // the anchor's layers and survive GC.
    let fallback = tmp.path().join("fallback");
    let report = build_python_sample(&fallback, &[])?;
    ensure!(
        blocks_of(&report)? == blocks,
        "the same sample gives the same blocks"
    );
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--all", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:v1", fallback.display()))
        .arg(format!("docker://127.0.0.1:{port}/sample/fallback:v1")))?;
    for b in &blocks {
        ensure!(
            registry.blob_status("sample/fallback", b)? == 200,
            "block {b} not pushed with --all"
        );
    }
    let gc = registry.garbage_collect()?;
    for b in &blocks {
        ensure!(
            registry.blob_status("sample/fallback", b)? == 200,
            "the anchor did not keep block {b} through GC:\n{gc}"
        );
    }
    Ok(())
}

/// An image made the umoci way (init, new, unpack, repack): umoci 0.4.7 writes
/// no `mediaType` in its manifest. It validates with a warning, inspects, and
/// serves as a base whose files reach the unpacked image.
#[test]
#[ignore = "needs umoci; .ci/run runs it"]
fn a_umoci_made_image_serves_as_a_base() -> Result<()> {
    need(&["umoci"])?;
    let tmp = tempfile::tempdir()?;
    let layout = tmp.path().join("umoci");
    let image = format!("{}:base", layout.display());
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout))?;
    run(Command::new("umoci").args(["new", "--image", &image]))?;
    let bundle = tmp.path().join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--rootless", "--image", &image])
        .arg(&bundle))?;
    let etc = bundle.join("rootfs/etc");
    fs::create_dir_all(&etc)?;
    fs::write(etc.join("os-release"), "ID=umoci-made\n")?;
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&bundle))?;

    let base = format!("oci:{}:base", layout.display());
    let out = oci_blocks(&["validate", &base])?;
    ensure!(out.status.success(), "{}", text(&out));
    // The warning appears exactly when umoci left mediaType out.
    let index: serde_json::Value = serde_json::from_slice(&fs::read(layout.join("index.json"))?)?;
    let digest = index["manifests"][0]["digest"].as_str().context("digest")?;
    let manifest: serde_json::Value = serde_json::from_slice(&fs::read(
        layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:")),
    )?)?;
    ensure!(
        text(&out).contains("manifest.media-type-missing") == manifest["mediaType"].is_null(),
        "{manifest}: {}",
        text(&out)
    );
    let out = oci_blocks(&["inspect", &base])?;
    ensure!(out.status.success(), "{}", text(&out));

    let app = format!("oci:{}:app", tmp.path().join("app").display());
    ok(&[
        "build",
        "--no-cache",
        "--base",
        &base,
        "--add",
        "examples/java-app/lib:/app/lib",
        "--out",
        &app,
    ])?;
    ok(&["validate", &app])?;
    let root = tmp.path().join("root");
    ok(&[
        "unpack",
        "--store",
        &tmp.path().join("store").display().to_string(),
        &app,
        &root.display().to_string(),
    ])?;
    ensure!(fs::read_to_string(root.join("etc/os-release"))? == "ID=umoci-made\n");
    ensure!(
        fs::read(root.join("app/lib/strings-3.4.0.jar"))?
            == fs::read(repo().join("examples/java-app/lib/strings-3.4.0.jar"))?
    );
    Ok(())
}

/// The Python sample pushed to a docker-registry as `sample/app:v1`: the
/// registry and the blocks manifest's digest.
fn published_sample(tmp: &Path) -> Result<(DockerRegistry, String)> {
    let registry = DockerRegistry::start(&tmp.join("registry"))?;
    let out = tmp.join("out");
    let report = build_python_sample(&out, &[])?;
    let blocks_manifest = report["platforms"][0]["manifest"]
        .as_str()
        .context("the blocks manifest")?
        .to_string();
    ok(&[
        "push",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", out.display()),
        &format!("docker://127.0.0.1:{}/sample/app:v1", registry.port),
    ])?;
    Ok((registry, blocks_manifest))
}

/// podman (containers/image, as buildah and CRI-O) pulls the fallback index's
/// tag as the complete legacy image, and refuses the blocks manifest by
/// digest instead of storing an image whose imported files are missing.
#[test]
#[ignore = "needs podman and docker-registry, and root; .ci/run runs it"]
fn podman_pulls_the_tag_whole_and_refuses_the_blocks_manifest() -> Result<()> {
    need(&["podman", "docker-registry", "curl"])?;
    let tmp = tempfile::tempdir()?;
    let (registry, blocks_manifest) = published_sample(tmp.path())?;
    let store = tmp.path().join("podman");
    let repo = format!("127.0.0.1:{}/sample/app", registry.port);

    let by_digest = format!("{repo}@{blocks_manifest}");
    let out = podman(&store, &["pull", "--tls-verify=false", &by_digest]).output()?;
    let t = text(&out);
    ensure!(
        !out.status.success(),
        "podman pulled the blocks manifest: {t}"
    );
    ensure!(
        t.contains(oci_blocks_core::names::BLOCKS_CONFIG),
        "the refusal does not name the config media type: {t}"
    );
    let images = run(&mut podman(&store, &["images", "-q", "--no-trunc"]))?;
    ensure!(images.trim().is_empty(), "podman kept an image: {images}");

    let tag = format!("{repo}:v1");
    run(&mut podman(&store, &["pull", "--tls-verify=false", &tag]))?;
    let mounted = run(&mut podman(&store, &["image", "mount", &tag]))?;
    let root = PathBuf::from(mounted.trim());
    // Unmounted whatever the comparison finds.
    let result = tree(&root).and_then(|t| {
        assert_same(
            &expected_sample_tree()?,
            &t,
            "podman pull of the fallback tag",
        )
    });
    run(&mut podman(&store, &["image", "unmount", &tag]))?;
    result
}

/// containerd (`ctr`, native snapshotter) pulls and unpacks the fallback
/// index's tag as the complete legacy image, and refuses to unpack the blocks
/// manifest by digest, naming the import-layer media type.
#[test]
#[ignore = "needs containerd and docker-registry, and root; .ci/run runs it"]
fn ctr_pulls_the_tag_whole_and_refuses_the_blocks_manifest() -> Result<()> {
    need(&["containerd", "ctr", "docker-registry", "curl"])?;
    let tmp = tempfile::tempdir()?;
    let (registry, blocks_manifest) = published_sample(tmp.path())?;
    let containerd = Containerd::start(&tmp.path().join("containerd"))?;
    let repo = format!("127.0.0.1:{}/sample/app", registry.port);
    let pull = |reference: &str| {
        containerd
            .ctr(&[
                "images",
                "pull",
                "--plain-http",
                "--snapshotter",
                "native",
                reference,
            ])
            .output()
    };

    let by_digest = format!("{repo}@{blocks_manifest}");
    let out = pull(&by_digest)?;
    let t = text(&out);
    ensure!(
        !out.status.success(),
        "ctr unpacked the blocks manifest: {t}"
    );
    ensure!(
        t.contains(oci_blocks_core::names::IMPORT_LAYER_TAR_GZIP),
        "the refusal does not name the import-layer media type: {t}"
    );

    let tag = format!("{repo}:v1");
    let out = pull(&tag)?;
    ensure!(out.status.success(), "{}", text(&out));
    let root = tmp.path().join("mnt");
    fs::create_dir_all(&root)?;
    run(&mut containerd.ctr(&[
        "images",
        "mount",
        "--snapshotter",
        "native",
        &tag,
        &root.display().to_string(),
    ]))?;
    // Unmounted whatever the comparison finds.
    let result = tree(&root)
        .and_then(|t| assert_same(&expected_sample_tree()?, &t, "ctr pull of the fallback tag"));
    run(&mut containerd.ctr(&["images", "unmount", &root.display().to_string()]))?;
    result
}
