//! `oci-blocks unpack` through the binary: built images unpack to their inputs,
//! plain images unpack as umoci unpacks them, bundles carry the process umoci
//! would write, and blocks are extracted once into the store. The unpacker's
//! own behaviour (whiteouts, malicious input, extended attributes) is tested
//! in `runtime-shim/tests`.

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::common::*;
use anyhow::{Context, Result, ensure};
use oci_blocks_fixture::{self as fixture, ImageSpec};

fn unpack(image: &str, rootfs: &Path, store: &Path) -> Result<serde_json::Value> {
    let out = oci_blocks(&[
        "unpack",
        "--json",
        "--store",
        &store.display().to_string(),
        image,
        &rootfs.display().to_string(),
    ])?;
    ensure!(
        out.status.success(),
        "unpack {image} failed: {}",
        text(&out)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// `umoci unpack --rootless` of `layout:tag` into the bundle `bundle`.
pub(crate) fn umoci_unpack(layout: &Path, tag: &str, bundle: &Path) -> Result<()> {
    let out = Command::new("umoci")
        .args(["unpack", "--rootless", "--image"])
        .arg(format!("{}:{tag}", layout.display()))
        .arg(bundle)
        .output()?;
    ensure!(out.status.success(), "umoci: {}", text(&out));
    Ok(())
}

/// `skopeo copy` of `from:tag` to `to:tag`, both layouts: the legacy variant
/// of a fallback index, as clients unaware of blocks pick it.
pub(crate) fn skopeo_copy(from: &Path, to: &Path, tag: &str) -> Result<()> {
    let out = Command::new("skopeo")
        .args(["copy", "--quiet"])
        .arg(format!("oci:{}:{tag}", from.display()))
        .arg(format!("oci:{}:{tag}", to.display()))
        .output()?;
    ensure!(out.status.success(), "skopeo: {}", text(&out));
    Ok(())
}

#[test]
fn built_samples_unpack_to_their_inputs_and_share_blocks_in_the_store() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let store = tmp.path().join("store");
    let py = repo().join("examples/python-app");
    let image = format!("oci:{}:v1", tmp.path().join("py").display());
    ok(&[
        "build",
        "--no-cache",
        "-f",
        "examples/python-app/build.toml",
        "--out",
        &image,
    ])?;
    let report = unpack(&image, &tmp.path().join("root1"), &store)?;
    ensure!(
        report["blocks_variant"] == true
            && report["blocks_extracted"].as_array().map(Vec::len) == Some(4),
        "{report}"
    );
    let adds = [
        (
            py.join("site-packages"),
            "/usr/local/lib/python3.11/site-packages",
        ),
        (py.join("bin"), "/usr/local/bin"),
        (py.join("app"), "/app"),
    ];
    assert_same(
        &expected_tree(&adds, &|_, b| b)?,
        &tree(&tmp.path().join("root1"))?,
        "python sample",
    )?;

    // A second image importing the same blocks extracts none of them again.
    let again = unpack(&image, &tmp.path().join("root2"), &store)?;
    ensure!(
        again["blocks_extracted"].as_array().map(Vec::len) == Some(0)
            && again["blocks_reused"].as_array().map(Vec::len) == Some(4),
        "{again}"
    );
    let java = repo().join("examples/java-app");
    let jimage = format!("oci:{}:v1", tmp.path().join("java").display());
    ok(&[
        "build",
        "--no-cache",
        "-f",
        "examples/java-app/build.toml",
        "--out",
        &jimage,
    ])?;
    unpack(&jimage, &tmp.path().join("root3"), &store)?;
    let jadds = [
        (java.join("lib"), "/app/lib"),
        (java.join("app"), "/app/classes"),
    ];
    assert_same(
        &expected_tree(&jadds, &|_, b| b)?,
        &tree(&tmp.path().join("root3"))?,
        "java sample",
    )
}

const LAYER_SEMANTICS: &str = r##"
description = "Plain layer semantics: whiteouts, opaque whiteouts, hard links, symlinks, file over directory, directory over file."

[[layers]]
entries = [
  { path = "a/", type = "dir" },
  { path = "a/x", content = "x" },
  { path = "a/y", content = "y" },
  { path = "b/", type = "dir" },
  { path = "b/one", content = "1" },
  { path = "b/two", content = "2" },
  { path = "c/", type = "dir" },
  { path = "c/inner", content = "inner" },
  { path = "d", content = "a file that becomes a directory" },
  { path = "h/", type = "dir" },
  { path = "h/f", content = "linked", mode = 0o640 },
  { path = "h/g", type = "hardlink", target = "h/f" },
  { path = "s/", type = "dir" },
  { path = "s/rel", type = "symlink", target = "../h/f" },
  { path = "s/abs", type = "symlink", target = "/h/f" },
  { path = "x/", type = "dir", mode = 0o750 },
  { path = "x/script", content = "#!/bin/sh\n", mode = 0o755 },
]

[[layers]]
entries = [
  { path = "a/.wh.x" },
  { path = "b/three", content = "3" },
  { path = "b/.wh..wh..opq" },
  { path = "c", content = "a directory replaced by a file" },
  { path = "d/", type = "dir" },
  { path = "d/z", content = "z" },
  { path = "n/", type = "dir" },
  { path = "n/deep/", type = "dir" },
  { path = "n/deep/file", content = "deep" },
]
"##;

#[test]
#[ignore = "needs skopeo, umoci; .ci/run runs it"]
fn plain_images_unpack_as_umoci_unpacks_them() -> Result<()> {
    need(&["umoci", "skopeo"])?;
    let tmp = tempfile::tempdir()?;
    let spec = ImageSpec::from_toml(LAYER_SEMANTICS, "layer semantics")?;
    let layout = tmp.path().join("plain");
    fixture::build(&spec, &layout, "latest")?;
    // The legacy variant of the Python sample: a plain image made by the builder.
    let py = tmp.path().join("py");
    ok(&[
        "build",
        "--no-cache",
        "-f",
        "examples/python-app/build.toml",
        "--out",
        &format!("oci:{}:latest", py.display()),
    ])?;
    let copy = tmp.path().join("legacy");
    skopeo_copy(&py, &copy, "latest")?;
    let images = [layout, copy];
    for (i, image) in images.iter().enumerate() {
        let ours = tmp.path().join(format!("ours-{i}"));
        unpack(
            &format!("oci:{}:latest", image.display()),
            &ours,
            &tmp.path().join("store"),
        )?;
        let bundle = tmp.path().join(format!("umoci-{i}"));
        umoci_unpack(image, "latest", &bundle)?;
        assert_same(
            &tree(&bundle.join("rootfs"))?,
            &tree(&ours)?,
            &format!("ours against umoci, image {}", image.display()),
        )?;
    }
    Ok(())
}

#[test]
#[ignore = "needs skopeo, umoci; .ci/run runs it"]
fn a_bundle_has_the_process_umoci_would_write() -> Result<()> {
    need(&["umoci", "skopeo"])?;
    let tmp = tempfile::tempdir()?;
    let built = tmp.path().join("built");
    ok(&[
        "build",
        "--no-cache",
        "-f",
        "examples/java-app/build.toml",
        "--out",
        &format!("oci:{}:v1", built.display()),
    ])?;
    // Ours from the fallback index (the blocks variant), umoci from the legacy copy.
    let ours = tmp.path().join("ours");
    let out = oci_blocks(&[
        "unpack",
        "--store",
        &tmp.path().join("store").display().to_string(),
        "--bundle",
        &ours.display().to_string(),
        &format!("oci:{}:v1", built.display()),
    ])?;
    ensure!(out.status.success(), "{}", text(&out));
    let legacy = tmp.path().join("legacy");
    skopeo_copy(&built, &legacy, "v1")?;
    let theirs = tmp.path().join("theirs");
    umoci_unpack(&legacy, "v1", &theirs)?;
    let read = |p: &Path| -> Result<serde_json::Value> {
        Ok(serde_json::from_slice(&fs::read(p.join("config.json"))?)?)
    };
    let (a, b) = (read(&theirs)?, read(&ours)?);
    for key in ["args", "env", "cwd", "user"] {
        ensure!(
            a["process"][key] == b["process"][key],
            "process.{key}: umoci {} ours {}",
            a["process"][key],
            b["process"][key]
        );
    }
    ensure!(b["root"]["path"] == "rootfs");
    assert_same(
        &tree(&theirs.join("rootfs"))?,
        &tree(&ours.join("rootfs"))?,
        "bundle rootfs",
    )
}

/// For each corpus set: v1 then v2 built as blocks images and unpacked into one
/// store (v2 extracts only its new block), each equal to `umoci unpack
/// --rootless` of v2's legacy variant, as is our unpack of that legacy variant.
fn corpus_unpacks_as_umoci(kind: &str, dest: &str, sub: &str) -> Result<()> {
    need(&["umoci", "skopeo"])?;
    let dir = corpus(kind)?;
    let tmp = tempfile::tempdir()?;
    let t = tmp.path();
    let image = t.join("image");
    let store = t.join("store");
    let mut extracted = Vec::new();
    for v in ["v1", "v2"] {
        build_corpus_version(&dir, v, sub, dest, &format!("oci:{}:{v}", image.display()))?;
        let report = unpack(
            &format!("oci:{}:{v}", image.display()),
            &t.join(format!("ours-{v}")),
            &store,
        )?;
        ensure!(report["blocks_variant"] == true, "{report}");
        extracted.push(report["blocks_extracted"].as_array().map_or(0, Vec::len));
    }
    ensure!(
        extracted[0] > 1 && extracted[1] == 1,
        "{kind}: v2 after v1 extracts only its one new block: {extracted:?}"
    );
    let legacy = t.join("legacy");
    skopeo_copy(&image, &legacy, "v2")?;
    let bundle = t.join("umoci");
    umoci_unpack(&legacy, "v2", &bundle)?;
    let theirs = tree(&bundle.join("rootfs"))?;
    ensure!(theirs.len() > 10, "{kind}: umoci's tree is the corpus");
    assert_same(
        &theirs,
        &tree(&t.join("ours-v2"))?,
        &format!("{kind}: blocks v2 against umoci"),
    )?;
    unpack(
        &format!("oci:{}:v2", legacy.display()),
        &t.join("ours-legacy"),
        &store,
    )?;
    assert_same(
        &theirs,
        &tree(&t.join("ours-legacy"))?,
        &format!("{kind}: legacy v2 against umoci"),
    )
}

#[test]
#[ignore = "needs skopeo, umoci and the corpus (apt-get, pip and the network); .ci/run runs it"]
fn java_corpus_unpacks_as_umoci_unpacks_it() -> Result<()> {
    corpus_unpacks_as_umoci("java", "/app/lib", "lib")
}

#[test]
#[ignore = "needs skopeo, umoci and the corpus (apt-get, pip and the network); .ci/run runs it"]
fn python_corpus_unpacks_as_umoci_unpacks_it() -> Result<()> {
    corpus_unpacks_as_umoci("python", "/usr/lib/python3/site-packages", "site-packages")
}

const IMPORT_SEMANTICS: &str = r##"
description = "Imports: a file, a directory, a symlink, a nested directory, a block root; in several layers; overwritten, whited out and opaqued by later layers."

[[blocks]]
name = "lib"
entries = [
  { path = "lib.jar", content = "jar bytes" },
  { path = "docs/", type = "dir", mode = 0o750 },
  { path = "docs/a.txt", content = "a" },
  { path = "docs/sub/", type = "dir" },
  { path = "docs/sub/b.txt", content = "b", mode = 0o600 },
  { path = "link", type = "symlink", target = "docs/a.txt" },
  { path = "bin/", type = "dir" },
  { path = "bin/tool", content = "#!/bin/sh\n", mode = 0o755 },
]

[[blocks]]
name = "py"
entries = [
  { path = "pkg/", type = "dir" },
  { path = "pkg/__init__.py", content = "" },
  { path = "pkg/mod.py", content = "x = 1\n" },
]

[[layers]]
entries = [
  { path = "app/", type = "dir" },
  { path = "app/keep", content = "base" },
  { path = "app/docs", content = "a file the import replaces" },
  { path = "usr/", type = "dir" },
  { path = "usr/site/", type = "dir" },
  { path = "usr/site/old.py", content = "merged with the imported directory" },
]

[[layers]]
media_type = "import"
entries = [
  { path = "app/.import.lib.jar", content = "/lib.jar from {block:lib}" },
  { path = "app/.import.docs", content = "/docs from {block:lib}" },
  { path = "app/.import.link", content = "/link from {block:lib}" },
  { path = "app/.import.tool", content = "/bin/tool from {block:lib}" },
  { path = "usr/.import.site", content = "/ from {block:py}" },
]

[[layers]]
media_type = "import"
entries = [
  { path = "opt/", type = "dir" },
  { path = "opt/.import.sub", content = "/docs/sub from {block:lib}" },
  { path = "app/lib.jar", content = "overwritten by a later layer" },
  { path = "app/.wh.link" },
  { path = "app/docs/.wh..wh..opq" },
  { path = "app/docs/new.txt", content = "after the opaque whiteout" },
  { path = "srv/", type = "dir" },
  { path = "srv/.import.tool", content = "/bin/tool from {block:lib}" },
]
"##;

/// Rewrites a blocks image's layers into plain ones, each import entry
/// replaced by the block entries it names (a tar-level rewrite, independent of
/// the unpacker), and returns the plain layers' tars.
fn plain_equivalent(layout: &Path) -> Result<Vec<Vec<u8>>> {
    use oci_blocks_core::import::ImportEntry;
    use std::io::Read;
    let dir = oci_blocks_core::layout::OciDir::open(layout)?;
    let (_, m) = manifest_of(&dir, "latest", "blocks")?;
    let mut blocks = std::collections::BTreeMap::new();
    for b in m.blocks() {
        let mut bytes = Vec::new();
        open_layer(&dir, b)?.read_to_end(&mut bytes)?;
        blocks.insert(b.digest().to_string(), bytes);
    }
    let mut out = Vec::new();
    for l in m.layers() {
        let mut plain = tar::Builder::new(Vec::new());
        let mut ar = tar::Archive::new(open_layer(&dir, l)?);
        for e in ar.entries()? {
            let mut e = e?;
            let path = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            let (parent, name) = path.rsplit_once('/').unwrap_or(("", path.as_str()));
            let Some(target) = name.strip_prefix(".import.") else {
                let mut header = e.header().clone();
                let mut data = Vec::new();
                e.read_to_end(&mut data)?;
                plain.append_data(&mut header, &path, &data[..])?;
                continue;
            };
            let target = if parent.is_empty() {
                target.to_string()
            } else {
                format!("{parent}/{target}")
            };
            let mut content = Vec::new();
            e.read_to_end(&mut content)?;
            let import = ImportEntry::parse(&content)?;
            let source = import.source_in_block().to_string();
            let block = blocks
                .get(import.digest().as_str())
                .context("declared block")?;
            if source.is_empty() {
                let mut h = tar::Header::new_ustar();
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_mtime(1);
                plain.append_data(&mut h, format!("{target}/"), &[][..])?;
            }
            let mut bar = tar::Archive::new(&block[..]);
            for be in bar.entries()? {
                let mut be = be?;
                let bp = String::from_utf8_lossy(&be.path_bytes())
                    .trim_end_matches('/')
                    .to_string();
                let rel = if source.is_empty() {
                    Some(bp.as_str())
                } else if bp == source {
                    Some("")
                } else {
                    bp.strip_prefix(&format!("{source}/"))
                };
                let Some(rel) = rel else { continue };
                let dest = if rel.is_empty() {
                    target.clone()
                } else {
                    format!("{target}/{rel}")
                };
                let mut header = be.header().clone();
                let mut data = Vec::new();
                be.read_to_end(&mut data)?;
                if header.entry_type().is_symlink() {
                    let link = be.link_name()?.context("symlink target")?.into_owned();
                    plain.append_link(&mut header, &dest, link)?;
                } else {
                    plain.append_data(&mut header, &dest, &data[..])?;
                }
            }
        }
        out.push(plain.into_inner()?);
    }
    Ok(out)
}

/// A blocks image unpacks to the tree umoci makes of its plain equivalent.
#[test]
#[ignore = "needs umoci; .ci/run runs it"]
fn imports_unpack_as_their_plain_equivalent_under_umoci() -> Result<()> {
    need(&["umoci"])?;
    let tmp = tempfile::tempdir()?;
    let t = tmp.path();
    let spec = ImageSpec::from_toml(IMPORT_SEMANTICS, "import semantics")?;
    fixture::build(&spec, &t.join("blocks"), "latest")?;
    let layers = plain_equivalent(&t.join("blocks"))?;
    let mut plain = ImageSpec::from_toml(
        &format!(
            "description = \"plain equivalent\"\nindex = \"none\"\n{}",
            "[[layers]]\nraw = \"\"\n".repeat(layers.len())
        ),
        "plain",
    )?;
    for (spec_layer, tar) in plain.layers.iter_mut().zip(layers) {
        spec_layer.raw = Some(String::from_utf8(tar).context("test tars are UTF-8")?);
    }
    fixture::build(&plain, &t.join("plain"), "latest")?;
    let bundle = t.join("umoci");
    umoci_unpack(&t.join("plain"), "latest", &bundle)?;
    let ours = t.join("ours");
    let report = unpack(
        &format!("oci:{}:latest", t.join("blocks").display()),
        &ours,
        &t.join("store"),
    )?;
    ensure!(report["applied"]["imports"] == 7, "{report}");
    let theirs = tree(&bundle.join("rootfs"))?;
    for must in [
        "app/docs/new.txt",
        "usr/site/pkg/mod.py",
        "usr/site/old.py",
        "opt/sub/b.txt",
        "srv/tool",
    ] {
        ensure!(
            theirs.contains_key(must),
            "the reference tree has {must}: {theirs:?}"
        );
    }
    ensure!(!theirs.contains_key("app/link") && !theirs.contains_key("app/docs/a.txt"));
    assert_same(
        &theirs,
        &tree(&ours)?,
        "imports against umoci of the plain equivalent",
    )
}
