//! The fallback image against the real tools from Debian: skopeo picks the
//! legacy manifest and umoci unpacks it to the build inputs; docker-registry
//! (CNCF distribution) keeps the blocks through its garbage collection thanks to
//! the GC anchor, and loses them without it. Registries are started here on
//! 127.0.0.1 with ephemeral ports and stopped here. When CI=true a missing tool
//! fails the test; elsewhere the test says it was skipped.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use common::*;

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    ensure!(out.status.success(), "{cmd:?} failed:\n{}", text(&out));
    Ok(text(&out))
}

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
fn skopeo_picks_the_legacy_manifest_and_umoci_unpacks_the_inputs() -> Result<()> {
    if !have(&["skopeo", "umoci"])? {
        return Ok(());
    }
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

struct Registry {
    child: Option<Child>,
    config: PathBuf,
    port: u16,
}

impl Registry {
    fn start(dir: &Path) -> Result<Registry> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let config = dir.join("config.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.join("storage").display()
            ),
        )?;
        let mut r = Registry {
            child: None,
            config,
            port,
        };
        r.serve()?;
        Ok(r)
    }

    fn serve(&mut self) -> Result<()> {
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.status(&format!("http://127.0.0.1:{}/v2/", self.port))? == 200 {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("docker-registry did not answer on port {}", self.port)
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn status(&self, url: &str) -> Result<u16> {
        let out = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-I",
                "--max-time",
                "5",
                url,
            ])
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0))
    }

    fn blob_status(&self, repo: &str, digest: &str) -> Result<u16> {
        self.status(&format!(
            "http://127.0.0.1:{}/v2/{repo}/blobs/{digest}",
            self.port
        ))
    }

    fn garbage_collect(&mut self) -> Result<String> {
        self.stop();
        let out = run(Command::new("docker-registry")
            .arg("garbage-collect")
            .arg(&self.config));
        self.serve()?;
        out
    }

    /// Pushes a blob from a layout with the plain monolithic upload.
    fn push_blob(&self, repo: &str, layout: &Path, digest: &str) -> Result<()> {
        let base = format!("http://127.0.0.1:{}", self.port);
        let out = run(Command::new("curl").args([
            "-s",
            "-i",
            "-X",
            "POST",
            &format!("{base}/v2/{repo}/blobs/uploads/"),
        ]))?;
        let location = out
            .lines()
            .find_map(|l| {
                l.strip_prefix("Location: ")
                    .or_else(|| l.strip_prefix("location: "))
            })
            .context("upload location")?
            .trim()
            .to_string();
        let url = if location.starts_with('/') {
            format!("{base}{location}")
        } else {
            location
        };
        let sep = if url.contains('?') { '&' } else { '?' };
        let file = layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"));
        run(Command::new("curl")
            .args([
                "-sf",
                "-X",
                "PUT",
                "-H",
                "Content-Type: application/octet-stream",
                "--data-binary",
            ])
            .arg(format!("@{}", file.display()))
            .arg(format!("{url}{sep}digest={digest}")))?;
        Ok(())
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
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
fn the_gc_anchor_keeps_blocks_through_docker_registry_garbage_collection() -> Result<()> {
    if !have(&["skopeo", "docker-registry", "curl"])? {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let mut registry = Registry::start(tmp.path())?;
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
