//! The `oci-blocks` binary, run as a user would: exit statuses, messages that name
//! the rule and the place, JSON output, and the example image the README uses.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, Result, ensure};
use oci_blocks_fixture::{self as fixture, ImageSpec};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run(args: &[&str]) -> Result<Output> {
    Command::new(env!("CARGO_BIN_EXE_oci-blocks"))
        .args(args)
        .current_dir(repo())
        .output()
        .context("running oci-blocks")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[derive(serde::Deserialize)]
struct Expected {
    examples: BTreeMap<String, toml::Value>,
}

#[test]
fn validate_judges_every_document_example_with_the_right_exit_status_and_rule() -> Result<()> {
    let dir = repo().join("spec/examples");
    let expected: Expected = toml::from_str(&fs::read_to_string(dir.join("expected.toml"))?)?;
    for (name, verdict) in &expected.examples {
        let path = format!("spec/examples/{name}");
        let out = run(&["validate", &path])?;
        let output = text(&out);
        match verdict.get("verdict").and_then(|v| v.as_str()) {
            Some("valid") => ensure!(out.status.code() == Some(0), "{name}: {output}"),
            _ => {
                ensure!(
                    out.status.code() == Some(1),
                    "{name}: exit {:?}: {output}",
                    out.status.code()
                );
                let rule = verdict
                    .get("rule")
                    .and_then(|v| v.as_str())
                    .context("rule")?;
                ensure!(
                    output.contains(&format!("[{rule}]")),
                    "{name}: rule {rule} not named: {output}"
                );
                ensure!(output.contains(name), "{name}: file not named: {output}");
            }
        }
    }
    Ok(())
}

#[test]
fn validate_judges_every_image_example_through_the_binary() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = repo().join("spec/examples/images");
    let mut seen = 0;
    for entry in fs::read_dir(&dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let spec = ImageSpec::from_toml(&fs::read_to_string(&path)?, &name)?;
        let out_dir = tmp.path().join(&name);
        fixture::build(&spec, &out_dir, "v1")?;
        let reference = format!("oci:{}:v1", out_dir.display());
        let out = run(&["validate", "--json", &reference])?;
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("{name}: --json output: {}", text(&out)))?;
        let expect = spec.expect.context("expect")?;
        if expect.verdict == "valid" {
            ensure!(
                out.status.code() == Some(0) && json["valid"] == true,
                "{name}: {json}"
            );
        } else {
            ensure!(
                out.status.code() == Some(1) && json["valid"] == false,
                "{name}: {json}"
            );
            let rule = expect.rule.context("rule")?;
            let violation = json["violations"]
                .as_array()
                .and_then(|vs| vs.iter().find(|v| v["rule"] == rule.as_str()))
                .with_context(|| format!("{name}: no {rule} in {json}"))?;
            if let Some(entry) = &expect.entry {
                ensure!(
                    violation["entry"] == entry.as_str(),
                    "{name}: entry {entry} not named: {violation}"
                );
            }
        }
        seen += 1;
    }
    ensure!(seen >= 30);
    Ok(())
}

#[test]
fn errors_name_the_file_and_exit_2() -> Result<()> {
    let out = run(&["validate", "no/such/manifest.json"])?;
    ensure!(out.status.code() == Some(2), "{}", text(&out));
    ensure!(
        text(&out).contains("no/such/manifest.json"),
        "{}",
        text(&out)
    );

    let tmp = tempfile::tempdir()?;
    let not_layout = format!("oci:{}", tmp.path().display());
    let out = run(&["inspect", &not_layout])?;
    ensure!(out.status.code() == Some(2), "{}", text(&out));
    ensure!(
        text(&out).contains("not an OCI image layout"),
        "{}",
        text(&out)
    );

    let out = run(&["inspect", "oci:examples/hello-blocks:no-such-tag"])?;
    ensure!(out.status.code() == Some(2), "{}", text(&out));
    ensure!(
        text(&out).contains("no image tagged \"no-such-tag\"") && text(&out).contains("latest"),
        "{}",
        text(&out)
    );

    let out = run(&["inspect", "containers-storage:x"])?;
    ensure!(
        out.status.code() == Some(2)
            && text(&out).contains("containers-storage:x")
            && text(&out).contains("oci:DIR[:TAG] or docker://"),
        "{}",
        text(&out)
    );
    Ok(())
}

#[test]
fn a_flipped_byte_in_a_blob_is_reported_with_its_digest() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let copy = tmp.path().join("img");
    copy_dir(&repo().join("examples/hello-blocks"), &copy)?;
    let reference = format!("oci:{}:latest", copy.display());
    ensure!(run(&["validate", &reference])?.status.success());
    // Corrupt the largest blob (a layer or block, not JSON).
    let blobs = copy.join("blobs/sha256");
    let largest = fs::read_dir(&blobs)?
        .filter_map(|e| e.ok())
        .max_by_key(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .context("a blob")?;
    let mut bytes = fs::read(largest.path())?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    fs::write(largest.path(), bytes)?;
    let out = run(&["validate", &reference])?;
    let output = text(&out);
    ensure!(out.status.code() == Some(1), "{output}");
    let digest = format!("sha256:{}", largest.file_name().to_string_lossy());
    ensure!(
        output.contains("[blob.digest-mismatch]") && output.contains(&digest),
        "{output}"
    );
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// The README's first command inspects `examples/hello-blocks`, made from the spec
/// example `valid-java-app.toml`. It must stay exactly what that description
/// builds; `UPDATE_EXAMPLES=1 cargo test` rewrites it.
#[test]
fn the_committed_example_image_is_current() -> Result<()> {
    let source = repo().join("spec/examples/images/valid-java-app.toml");
    let spec = ImageSpec::from_toml(&fs::read_to_string(&source)?, "valid-java-app.toml")?;
    let committed = repo().join("examples/hello-blocks");
    if std::env::var_os("UPDATE_EXAMPLES").is_some() {
        let _ = fs::remove_dir_all(&committed);
        fixture::build(&spec, &committed, "latest")?;
    }
    let tmp = tempfile::tempdir()?;
    let fresh = tmp.path().join("hello-blocks");
    fixture::build(&spec, &fresh, "latest")?;
    let list = |root: &Path| -> Result<BTreeMap<String, Vec<u8>>> {
        let mut out = BTreeMap::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for e in fs::read_dir(&dir)? {
                let p = e?.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let rel = p.strip_prefix(root)?.to_string_lossy().into_owned();
                    out.insert(rel, fs::read(&p)?);
                }
            }
        }
        Ok(out)
    };
    let (want, have) = (list(&fresh)?, list(&committed)?);
    ensure!(
        want == have,
        "examples/hello-blocks is stale (files {:?} vs {:?}); run UPDATE_EXAMPLES=1 cargo test -p oci-blocks",
        want.keys().collect::<Vec<_>>(),
        have.keys().collect::<Vec<_>>()
    );
    Ok(())
}

#[test]
fn inspect_shows_blocks_imports_coordinates_and_the_legacy_cost() -> Result<()> {
    let out = run(&["inspect", "oci:examples/hello-blocks:latest"])?;
    let output = text(&out);
    ensure!(out.status.success(), "{output}");
    for needle in [
        "fallback index sha256:",
        "variant=blocks",
        "variant=anchor",
        "legacy copy:",
        "blocks manifest sha256:",
        "GC anchor manifest",
        "/app/lib/guava-32.1.3-jre.jar <- /guava-32.1.3-jre.jar from sha256:",
        "io.oci-blocks.maven.coordinates: com.google.guava:guava:32.1.3-jre",
        "io.oci-blocks.python.distribution: mdurl==0.1.2",
        "holds: mdurl, mdurl-0.1.2.dist-info",
        "3 distinct blocks",
        ": valid",
    ] {
        ensure!(output.contains(needle), "missing {needle:?} in:\n{output}");
    }
    let out = run(&["inspect", "--json", "oci:examples/hello-blocks:latest"])?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    ensure!(json["valid"] == true, "{json}");
    let manifests = json["info"]["manifests"].as_array().context("manifests")?;
    let blocks_manifest = manifests
        .iter()
        .find(|m| m["kind"] == "blocks-manifest")
        .context("a blocks manifest")?;
    ensure!(
        blocks_manifest["blocks"].as_array().map(Vec::len) == Some(3),
        "{blocks_manifest}"
    );
    let imports: usize = blocks_manifest["layers"]
        .as_array()
        .context("layers")?
        .iter()
        .map(|l| l["imports"].as_array().map_or(0, Vec::len))
        .sum();
    ensure!(imports == 4, "expected 4 imports, found {imports}");
    Ok(())
}

#[test]
fn a_reader_that_goes_away_ends_the_output_quietly() -> Result<()> {
    // `oci-blocks inspect ... | head -1`: the reader closes the pipe early.
    let mut child = Command::new(env!("CARGO_BIN_EXE_oci-blocks"))
        .args(["inspect", "oci:examples/hello-blocks:latest"])
        .current_dir(repo())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    drop(child.stdout.take());
    let out = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success() && !stderr.contains("panicked"),
        "{:?}: {stderr}",
        out.status
    );
    Ok(())
}

/// What the unpacker does not check of an image, by design: the anchor is
/// for registries, and a block that no import names is never fetched
/// (`spec/blocks.md`, "Lazy fetching").
const NOT_UNPACKERS: &[&str] = &["fallback.anchor-incomplete"];

/// The validator and the unpacker read every example image alike: an image
/// `validate` approves unpacks, and one it refuses fails to unpack, naming
/// the same rule, and the names both see agree.
#[test]
fn validate_and_unpack_agree_on_every_image_example() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = repo().join("spec/examples/images");
    let mut disagree = Vec::new();
    for entry in fs::read_dir(&dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let spec = ImageSpec::from_toml(&fs::read_to_string(&path)?, &name)?;
        if spec.sparse {
            continue; // its blobs are elsewhere by design
        }
        let out_dir = tmp.path().join(&name);
        fixture::build(&spec, &out_dir, "v1")?;
        let reference = format!("oci:{}:v1", out_dir.display());
        let validated = run(&["validate", "--json", &reference])?;
        let json: serde_json::Value = serde_json::from_slice(&validated.stdout)?;
        let root = tmp.path().join(format!("{name}.rootfs"));
        // A store of its own: a block verified for one example would serve
        // another that has a corrupt copy of it.
        let unpacked = run(&[
            "unpack",
            "--store",
            &tmp.path()
                .join(format!("{name}.store"))
                .display()
                .to_string(),
            &reference,
            &root.display().to_string(),
        ])?;
        let rule = spec.expect.as_ref().and_then(|e| e.rule.clone());
        let exempt = rule.as_deref().is_some_and(|r| NOT_UNPACKERS.contains(&r));
        let agrees = match (&rule, json["valid"] == true, unpacked.status.success()) {
            (None, true, true) => true,
            (Some(r), false, false) => text(&unpacked).contains(&format!("[{r}]")),
            (Some(_), false, true) => exempt,
            _ => false,
        };
        if !agrees {
            disagree.push(format!(
                "{name}: validate {} / unpack {}: {}",
                json["valid"],
                unpacked.status,
                text(&unpacked)
            ));
        }
        if !unpacked.status.success() {
            ensure!(
                !root.exists(),
                "{name}: a failed unpack left its root filesystem"
            );
        }
    }
    ensure!(disagree.is_empty(), "{}", disagree.join("\n"));
    Ok(())
}

/// A layout whose index nests 200 indexes deep is judged, not followed
/// to the bottom: validate names the depth bound and exits 1.
#[test]
fn validate_stops_at_the_index_depth_bound() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = oci_blocks_core::layout::OciDir::create(tmp.path().join("deep"))?;
    let (mut digest, mut size) = dir.write_blob_bytes(
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#,
    )?;
    for _ in 0..200 {
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json", "digest": digest.as_str(), "size": size}],
        });
        (digest, size) = dir.write_blob_bytes(&serde_json::to_vec(&index)?)?;
    }
    let desc = oci_blocks_core::oci_spec::image::Descriptor::new(
        oci_blocks_core::oci_spec::image::MediaType::ImageIndex,
        size,
        digest.as_oci().clone(),
    );
    dir.set_tag("deep", desc)?;
    let out = run(&["validate", &format!("oci:{}:deep", dir.root().display())])?;
    ensure!(out.status.code() == Some(1), "{}", text(&out));
    ensure!(
        text(&out).contains("limit.exceeded") && text(&out).contains("deeper than 8"),
        "{}",
        text(&out)
    );
    Ok(())
}

/// The client spells repository names as the registry does: a name the
/// registry would refuse with NAME_INVALID is refused before any request.
#[test]
fn repository_names_follow_the_registrys_grammar() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    for name in ["a..b", "a___b", "a/-b", "UPPER"] {
        let out = run(&[
            "copy",
            &format!("docker://127.0.0.1:9/{name}:v1"),
            &format!("oci:{}", tmp.path().join("out").display()),
        ])?;
        ensure!(
            !out.status.success() && text(&out).contains("is not a valid name"),
            "{name}: {}",
            text(&out)
        );
    }
    Ok(())
}

/// Two views that differ are named where they first differ: `validate` and
/// `unpack` both say which layer and which path, so a reviewer can see what
/// a scanner of the legacy manifest would miss.
#[test]
fn views_that_differ_are_named_by_layer_and_path() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let name = "invalid-fallback-views-differ.toml";
    let path = repo().join("spec/examples/images").join(name);
    let spec = ImageSpec::from_toml(&fs::read_to_string(&path)?, name)?;
    let out_dir = tmp.path().join("img");
    fixture::build(&spec, &out_dir, "v1")?;
    let reference = format!("oci:{}:v1", out_dir.display());
    let validated = run(&["validate", &reference])?;
    let root = tmp.path().join("rootfs");
    let store = tmp.path().join("store");
    let unpacked = run(&[
        "unpack",
        "--store",
        &store.display().to_string(),
        &reference,
        &root.display().to_string(),
    ])?;
    for (what, out) in [("validate", &validated), ("unpack", &unpacked)] {
        ensure!(!out.status.success(), "{what} succeeded: {}", text(out));
        let said = text(out);
        for needle in ["fallback.views-differ", "layer 0", "app/lib/guava.jar"] {
            ensure!(
                said.contains(needle),
                "{what} does not name {needle:?}: {said}"
            );
        }
    }
    ensure!(!root.exists(), "a failed unpack left its root filesystem");
    Ok(())
}
