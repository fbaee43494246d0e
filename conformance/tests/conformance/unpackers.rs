//! The unpack suite against real unpackers: `oci-blocks unpack` must pass every
//! vector, `umoci unpack --rootless` (after skopeo picks the platform's
//! manifest) must end as recorded, and a deliberately naive unpacker must be
//! caught wherever it goes wrong.

use std::fs;
use std::path::Path;

use crate::common::*;
use anyhow::{Result, ensure};

/// The command templates, exactly as `conformance/README.md` gives them.
const OCI_BLOCKS: &str = "oci-blocks unpack --store {tmp}/store oci:{layout}:{ref} {rootfs}";
const OCI_BLOCKS_HARDLINK: &str =
    "oci-blocks unpack --link hardlink --read-only --store {tmp}/store oci:{layout}:{ref} {rootfs}";
const UMOCI: &str = "skopeo copy --quiet oci:{layout}:{ref} oci:{tmp}/image:{ref} && \
                     umoci unpack --rootless --image {tmp}/image:{ref} {tmp}/bundle && \
                     mv {tmp}/bundle/rootfs {rootfs}";

#[test]
fn oci_blocks_unpack_passes_every_vector_and_writes_every_report() -> Result<()> {
    workspace_binary("oci-blocks", "oci-blocks")?;
    let tmp = tempfile::tempdir()?;
    let junit = tmp.path().join("report.xml");
    let html = tmp.path().join("report.html");
    let out = suite()
        .args(["unpack", "--json", "--command", OCI_BLOCKS, "--expect"])
        .arg(crate_dir().join("expected/oci-blocks-unpack.toml"))
        .arg("--junit")
        .arg(&junit)
        .arg("--html")
        .arg(&html)
        .output()?;
    ensure!(out.status.success(), "{}", text(&out));
    let report = json_report(&out)?;
    let n = vector_count()?;
    ensure!(
        report["results"].as_array().map(Vec::len) == Some(n),
        "{n} vectors ran"
    );
    ensure!(
        report["summary"]["total"]["passed"] == n,
        "every vector passed: {report:#}"
    );

    let xml = fs::read_to_string(&junit)?;
    ensure!(xml.contains(&format!("tests=\"{n}\"")), "{xml}");
    ensure!(xml.contains("failures=\"0\""), "{xml}");
    for group in [
        "unpack.plain",
        "unpack.imports",
        "unpack.malicious",
        "unpack.fallback",
    ] {
        ensure!(
            xml.contains(&format!("<testsuite name=\"{group}\"")),
            "{group} in {xml}"
        );
    }
    let page = fs::read_to_string(&html)?;
    ensure!(page.matches("<tr class=\"passed\">").count() == n, "{page}");
    ensure!(
        !page.contains("<script") && !page.contains("href="),
        "self-contained"
    );
    Ok(())
}

/// With hard links into the block store, every vector passes too: the
/// store's shared inodes are never re-owned or re-moded through a link, and
/// nothing of the host is linked in. The store's files are read-only by
/// design, so file modes are compared without their write bits.
#[test]
fn oci_blocks_unpack_with_hard_links_passes_every_vector() -> Result<()> {
    workspace_binary("oci-blocks", "oci-blocks")?;
    let out = suite()
        .args([
            "unpack",
            "--json",
            "--read-only-files",
            "--command",
            OCI_BLOCKS_HARDLINK,
            "--expect",
        ])
        .arg(crate_dir().join("expected/oci-blocks-unpack.toml"))
        .output()?;
    ensure!(out.status.success(), "{}", text(&out));
    let report = json_report(&out)?;
    ensure!(
        report["summary"]["total"]["passed"] == vector_count()?,
        "every vector passed: {report:#}"
    );
    Ok(())
}

#[test]
#[ignore = "needs skopeo, umoci; .ci/run runs it"]
fn umoci_ends_as_recorded_and_refuses_every_import_vector() -> Result<()> {
    need(&["umoci", "skopeo"])?;
    let out = suite()
        .args(["unpack", "--json", "--command", UMOCI, "--expect"])
        .arg(crate_dir().join("expected/umoci-unpack.toml"))
        .output()?;
    ensure!(out.status.success(), "{}", text(&out));
    let report = json_report(&out)?;
    // What only a blocks-aware unpacker can do: resolve imports, and see that
    // a legacy manifest is not the image its blocks manifest materializes to.
    let blocks_aware = [
        "malicious/lower-symlink-below-import",
        "malicious/lower-dangling-symlink-below-import",
        "malicious/lower-symlink-at-import",
        "malicious/block-hardlink-mode",
        "fallback/views-differ",
        "fallback/unbound",
    ];
    for r in results(&report) {
        let id = r["id"].as_str().unwrap_or_default();
        let status = r["status"].as_str().unwrap_or_default();
        if id.starts_with("imports/") || blocks_aware.contains(&id) {
            ensure!(
                status == "failed",
                "{id}: a legacy unpacker cannot resolve imports"
            );
        } else if id != "plain/zstd-layer" {
            ensure!(status == "passed", "{id}: {r:#}");
        }
    }
    // A stub layer with a standard media type used to be the silent failure:
    // umoci applied it and the imported file was missing. The blocks config
    // media type now makes umoci refuse the manifest, naming the type.
    let refused = result_of(&report, "imports/standard-media-type");
    let reason = refused
        .and_then(|r| r["reason"].as_str())
        .unwrap_or_default();
    ensure!(
        reason.contains("exited 1")
            && reason.contains("application/vnd.oci-blocks.image.config.v1+json"),
        "{reason}"
    );
    Ok(())
}

#[test]
#[ignore = "needs python3; .ci/run runs it"]
fn a_naive_unpacker_is_caught_escaping_and_ignoring_whiteouts() -> Result<()> {
    need(&["python3"])?;
    let naive = crate_dir().join("tests/data/naive-unpack.py");
    let command = format!("python3 {} {{layout}} {{ref}} {{rootfs}}", naive.display());
    let out = suite()
        .args(["unpack", "--json", "--command", &command])
        .output()?;
    ensure!(out.status.code() == Some(1), "{}", text(&out));
    let report = json_report(&out)?;
    let failed = |id: &str| status_of(&report, id) == Some("failed");
    let reason = |id: &str| -> String {
        result_of(&report, id)
            .map(|r| format!("{} {}", r["reason"], r["diff"]))
            .unwrap_or_default()
    };
    for (id, because) in [
        ("malicious/path-absolute", "/escape-path-absolute"),
        (
            "malicious/path-dotdot",
            "created beside-the-root beside the root filesystem",
        ),
        (
            "malicious/symlink-absolute",
            "/guard-symlink-absolute (a guard)",
        ),
        (
            "malicious/hardlink-outside",
            "/guard-hardlink-outside (a guard)",
        ),
        ("malicious/overwrite-symlink", "disturbed the host path"),
        ("malicious/whiteout-escape", "/.wh.guard-whiteout-escape"),
        (
            "malicious/undeclared-digest",
            "exited 0, but the image is invalid (import.undeclared-digest)",
        ),
        ("plain/whiteout-file", "+ a/.wh.gone"),
        ("imports/file", "- app/lib/guava.jar"),
        ("fallback/anchor-first", "+ x.jar"),
    ] {
        ensure!(failed(id), "{id} should fail: {report:#}");
        ensure!(reason(id).contains(because), "{id}: {}", reason(id));
    }
    ensure!(status_of(&report, "plain/files-and-modes") == Some("passed"));
    // The reasons name the run's host directory, which is gone again.
    let reason = reason("malicious/path-absolute");
    let host = reason
        .split_whitespace()
        .find(|w| w.contains("oci-blocks-conformance-host-"))
        .unwrap_or_default();
    let host = Path::new(host)
        .parent()
        .unwrap_or(Path::new("/nonexistent"));
    ensure!(
        host.is_absolute() && !host.exists(),
        "{} is left: {reason}",
        host.display()
    );
    Ok(())
}

#[test]
fn recorded_outcomes_hold_a_run_in_both_directions() -> Result<()> {
    workspace_binary("oci-blocks", "oci-blocks")?;
    let tmp = tempfile::tempdir()?;
    let expect = tmp.path().join("expected.toml");
    let run = |expect: &Path| {
        suite()
            .args([
                "unpack",
                "--only",
                "plain/whiteout",
                "--command",
                OCI_BLOCKS,
                "--expect",
            ])
            .arg(expect)
            .output()
    };
    // Recorded as failing, now passing: an improvement fails the run too.
    fs::write(
        &expect,
        "[outcomes]\n\"plain/whiteout-file\" = \"failed\"\n\"plain/whiteout-directory\" = \"passed\"\n\"plain/whiteout-and-recreate\" = \"passed\"\n",
    )?;
    let out = run(&expect)?;
    ensure!(out.status.code() == Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        err.contains("plain/whiteout-file: recorded failed, now passed"),
        "{err}"
    );

    // A recorded test that no longer runs, and a new one without a record.
    fs::write(
        &expect,
        "[outcomes]\n\"plain/whiteout-file\" = \"passed\"\n\"plain/whiteout-directory\" = \"passed\"\n\"plain/gone\" = \"passed\"\n",
    )?;
    let out = run(&expect)?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(1), "{}", text(&out));
    ensure!(
        err.contains("plain/gone: recorded, but no such test ran"),
        "{err}"
    );
    ensure!(
        err.contains("plain/whiteout-and-recreate: passed, and no outcome is recorded"),
        "{err}"
    );

    // --record writes what --expect then accepts.
    let out = suite()
        .args([
            "unpack",
            "--only",
            "plain/whiteout",
            "--command",
            OCI_BLOCKS,
            "--record",
        ])
        .arg(&expect)
        .output()?;
    ensure!(out.status.success(), "{}", text(&out));
    ensure!(run(&expect)?.status.success());

    // A file that is not an expectations file is an error, not a pass.
    fs::write(&expect, "outcomes = 3\n")?;
    let out = run(&expect)?;
    ensure!(out.status.code() == Some(2), "{}", text(&out));
    ensure!(
        String::from_utf8_lossy(&out.stderr).starts_with("oci-blocks-conformance: error: ")
            && String::from_utf8_lossy(&out.stderr).contains("not an expectations file"),
        "{}",
        text(&out)
    );
    Ok(())
}

#[test]
fn an_unpacker_that_hangs_or_makes_no_tree_fails_with_the_reason() -> Result<()> {
    let out = suite()
        .args([
            "unpack",
            "--json",
            "--timeout",
            "1",
            "--only",
            "plain/files-and-modes",
        ])
        .args(["--command", "sleep 30 # {rootfs}"])
        .output()?;
    let report = json_report(&out)?;
    ensure!(out.status.code() == Some(1), "{}", text(&out));
    let reason = report["results"][0]["reason"].as_str().unwrap_or_default();
    ensure!(reason.starts_with("killed after 1 s"), "{reason}");

    let out = suite()
        .args(["unpack", "--json", "--only", "malicious/source-missing"])
        .args([
            "--command",
            "mkdir {rootfs} && touch {rootfs}/partial && false",
        ])
        .output()?;
    let report = json_report(&out)?;
    let reason = report["results"][0]["reason"].as_str().unwrap_or_default();
    ensure!(
        reason.contains("left a root filesystem with 1 entries"),
        "{reason}"
    );

    let out = suite().args(["unpack", "--command", "true"]).output()?;
    ensure!(out.status.code() == Some(2), "{}", text(&out));
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("no {rootfs}"),
        "{}",
        text(&out)
    );
    Ok(())
}

#[test]
fn vectors_are_written_whole_and_the_same_every_time() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    for dir in [&a, &b] {
        let out = suite()
            .args(["vectors", "--platform", "linux/amd64", "--out"])
            .arg(dir)
            .output()?;
        ensure!(out.status.success(), "{}", text(&out));
    }
    let files = |root: &Path| -> Result<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for e in fs::read_dir(&dir)? {
                let p = e?.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let rel = p.strip_prefix(root)?.display().to_string();
                    out.push((rel, fs::read(&p)?));
                }
            }
        }
        out.sort();
        Ok(out)
    };
    let (fa, fb) = (files(&a)?, files(&b)?);
    ensure!(fa == fb, "two runs wrote different vectors");
    let n = vector_count()?;
    let list: serde_json::Value = serde_json::from_slice(&fs::read(a.join("vectors.json"))?)?;
    ensure!(list.as_array().map(Vec::len) == Some(n));

    // Each vector is a layout that skopeo reads, with its expected tree.
    let v: serde_json::Value =
        serde_json::from_slice(&fs::read(a.join("imports/file/vector.json"))?)?;
    ensure!(v["expect"] == "tree" && v["ref"] == "file", "{v:#}");
    ensure!(v["tree"]["app/lib/guava.jar"]["mode"] == 0o640, "{v:#}");
    ensure!(a.join("imports/file/layout/oci-layout").is_file());

    // A directory that is not empty is refused, and left as it was.
    let out = suite().args(["vectors", "--out"]).arg(&a).output()?;
    ensure!(out.status.code() == Some(2), "{}", text(&out));
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("is not an empty directory"),
        "{}",
        text(&out)
    );
    ensure!(files(&a)? == fa);
    Ok(())
}

#[test]
fn keep_leaves_each_work_directory_with_the_platform_and_the_output() -> Result<()> {
    workspace_binary("oci-blocks", "oci-blocks")?;
    let tmp = tempfile::tempdir()?;
    let keep = tmp.path().join("kept");
    let command = format!("echo {{platform}} > {{tmp}}/platform; echo unpacking; {OCI_BLOCKS}");
    let out = suite()
        .args([
            "unpack",
            "--only",
            "fallback/multi-platform",
            "--platform",
            "linux/arm64/v8",
        ])
        .args(["--command", &command, "--keep"])
        .arg(&keep)
        .output()?;
    let on_arm64 = std::env::consts::ARCH == "aarch64";
    ensure!(
        out.status.code() == Some(if on_arm64 { 0 } else { 1 }),
        "{}",
        text(&out)
    );
    let work = keep.join("fallback-multi-platform");
    let platform = fs::read_to_string(work.join("tmp/platform"))?;
    ensure!(platform.trim() == "linux/arm64/v8", "{platform}");
    let log = fs::read_to_string(keep.join("fallback-multi-platform.log"))?;
    ensure!(log.starts_with("unpacking\n"), "{log}");
    ensure!(work.join("layout/index.json").is_file());
    // The vectors target arm64 and this unpacker picks its own platform: on any
    // other machine it finds no manifest for itself, and the failure says so.
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !on_arm64 {
        ensure!(
            stdout.contains("FAIL  fallback/multi-platform: exited"),
            "{stdout}"
        );
    }
    Ok(())
}

/// A vector's layout is one that an unmodified tool reads: skopeo sees the
/// blocks manifest with its one block.
#[test]
#[ignore = "needs skopeo; .ci/run runs it"]
fn vectors_are_layouts_that_skopeo_reads() -> Result<()> {
    need(&["skopeo"])?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("vectors");
    let out = suite()
        .args(["vectors", "--platform", "linux/amd64", "--out"])
        .arg(&dir)
        .output()?;
    ensure!(out.status.success(), "{}", text(&out));
    let out = std::process::Command::new("skopeo")
        .arg("inspect")
        .arg("--raw")
        .arg(format!(
            "oci:{}:file",
            dir.join("imports/file/layout").display()
        ))
        .output()?;
    ensure!(out.status.success(), "{}", text(&out));
    let m: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    ensure!(m["blocks"].as_array().map(Vec::len) == Some(1), "{m:#}");
    Ok(())
}
