//! The registry suite against real registries, each started on 127.0.0.1 on an
//! ephemeral port: `oci-blocks-registry` must pass every test, over plain HTTP
//! and over HTTPS with credentials; Debian's `docker-registry` (CNCF
//! distribution) must end as recorded, losing a bare manifest's blocks to its
//! garbage collector and keeping those the fallback anchor names.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use anyhow::{Context, Result, bail, ensure};

/// A registry process, killed when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `oci-blocks-registry serve --root ROOT` with `args`.
fn oci_blocks_registry(root: &Path, args: &[&str]) -> Result<Server> {
    let root = root.to_string_lossy();
    let mut all = vec!["--root", root.as_ref()];
    all.extend_from_slice(args);
    oci_blocks_registry_with(&all, &[])
}

/// `oci-blocks-registry serve` with `args` and `env`, its URL read from its
/// first line.
fn oci_blocks_registry_with(args: &[&str], env: &[(&str, String)]) -> Result<Server> {
    let bin = workspace_binary("oci-blocks-registry", "oci-blocks-registry")?;
    let mut child = Command::new(bin)
        .args(["serve", "--addr", "127.0.0.1:0"])
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .with_context(|| format!("unexpected first line {line:?}"))?
        .to_string();
    Ok(Server { child, url })
}

/// Debian's `docker-registry` with deletion enabled; its config file's path.
fn docker_registry(dir: &Path) -> Result<(Server, PathBuf)> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let config = dir.join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
             delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.join("storage").display()
        ),
    )?;
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let server = Server {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok((server, config));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("docker-registry did not listen on port {port}")
}

fn quoted(path: &Path) -> String {
    format!("'{}'", path.display())
}

#[test]
fn oci_blocks_registry_passes_every_test() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let root = tmp.path().join("root");
    let server = oci_blocks_registry(&root, &[])?;
    let gc = format!(
        "oci-blocks-registry gc --root {} --grace-period 0s",
        quoted(&root)
    );
    let out = suite()
        .args([
            "registry",
            "--json",
            "--url",
            &server.url,
            "--gc-command",
            &gc,
            "--expect",
        ])
        .arg(crate_dir().join("expected/oci-blocks-registry.toml"))
        .output()?;
    ensure!(out.status.success(), "{}", text(&out));
    let report = json_report(&out)?;
    let total = &report["summary"]["total"];
    ensure!(total["failed"] == 0 && total["skipped"] == 0, "{report:#}");
    ensure!(total["passed"].as_u64() >= Some(30), "{total}");
    for id in [
        "blocks/survive-gc",
        "blocks/anchor-keeps-blocks",
        "blocks/missing-block-refused",
    ] {
        ensure!(status_of(&report, id) == Some("passed"), "{id}");
    }

    // Without a GC command the GC tests say why they did not run.
    let out = suite()
        .args(["registry", "--json", "--url", &server.url])
        .output()?;
    ensure!(out.status.success(), "{}", text(&out));
    let report = json_report(&out)?;
    for r in results(&report) {
        let gc = r["id"] == "blocks/survive-gc" || r["id"] == "blocks/anchor-keeps-blocks";
        ensure!((r["status"] == "skipped") == gc, "{r}");
    }
    ensure!(
        results(&report).any(|r| r["why"]
            .as_str()
            .is_some_and(|w| w.contains("--gc-command"))),
        "{report:#}"
    );

    // A GC command that fails is a failure of both GC tests, with its output.
    let out = suite()
        .args([
            "registry",
            "--json",
            "--url",
            &server.url,
            "--gc-command",
            "echo collector broke >&2; exit 3",
        ])
        .output()?;
    ensure!(out.status.code() == Some(1), "{}", text(&out));
    let report = json_report(&out)?;
    let failed: Vec<&str> = results(&report)
        .filter(|r| r["status"] == "failed")
        .filter_map(|r| r["id"].as_str())
        .collect();
    ensure!(
        failed == ["blocks/survive-gc", "blocks/anchor-keeps-blocks"],
        "{failed:?}"
    );
    ensure!(report.to_string().contains("collector broke"), "{report:#}");
    Ok(())
}

/// The same suite with the registry's storage in a bucket of a real
/// S3-compatible server (Garage, one node), through two replicas: the suite
/// talks to one, and the collector runs as its own process on the bucket.
#[test]
#[ignore = "needs garage; .ci/run runs it"]
fn oci_blocks_registry_on_object_storage_passes_every_test() -> Result<()> {
    need(&["garage"])?;
    let tmp = tempfile::tempdir()?;
    let garage =
        oci_blocks_fixture::garage::Garage::start(&tmp.path().join("garage"), "conformance")?;
    let url = garage.url("registry");
    let env = garage.env();
    let server = oci_blocks_registry_with(&["--storage", &url], &env)?;
    let bin = workspace_binary("oci-blocks-registry", "oci-blocks-registry")?;
    let gc = format!("{} gc --storage {url} --grace-period 0s", quoted(&bin));
    let out = suite()
        .args([
            "registry",
            "--json",
            "--url",
            &server.url,
            "--gc-command",
            &gc,
            "--expect",
        ])
        .arg(crate_dir().join("expected/oci-blocks-registry.toml"))
        .envs(garage.env())
        .output()?;
    ensure!(out.status.success(), "{}", text(&out));
    let report = json_report(&out)?;
    let total = &report["summary"]["total"];
    ensure!(total["failed"] == 0 && total["skipped"] == 0, "{report:#}");
    ensure!(total["passed"].as_u64() >= Some(30), "{total}");
    for id in ["blocks/survive-gc", "blocks/anchor-keeps-blocks"] {
        ensure!(status_of(&report, id) == Some("passed"), "{id}");
    }
    Ok(())
}

#[test]
#[ignore = "needs docker-registry; .ci/run runs it"]
fn docker_registry_ends_as_recorded() -> Result<()> {
    need(&["docker-registry"])?;
    let tmp = tempfile::tempdir()?;
    let (server, config) = docker_registry(tmp.path())?;
    let gc = format!("docker-registry garbage-collect {}", quoted(&config));
    let out = suite()
        .args([
            "registry",
            "--json",
            "--url",
            &server.url,
            "--gc-command",
            &gc,
            "--expect",
        ])
        .arg(crate_dir().join("expected/docker-registry.toml"))
        .output()?;
    ensure!(out.status.success(), "{}", text(&out));
    let report = json_report(&out)?;
    // The two failure modes the fallback exists for, and its answer to the first.
    ensure!(status_of(&report, "blocks/missing-block-refused") == Some("failed"));
    ensure!(status_of(&report, "blocks/survive-gc") == Some("failed"));
    ensure!(status_of(&report, "blocks/anchor-keeps-blocks") == Some("passed"));
    for id in [
        "pull/blob",
        "push/chunked",
        "push/cross-mount",
        "blocks/manifest-accepted",
    ] {
        ensure!(status_of(&report, id) == Some("passed"), "{id}: {report:#}");
    }
    let lost = result_of(&report, "blocks/survive-gc")
        .map(|r| r.to_string())
        .unwrap_or_default();
    ensure!(
        lost.contains("sha256:"),
        "the failure names the lost blocks: {lost}"
    );
    Ok(())
}

#[test]
fn https_with_credentials_passes_and_without_them_fails_with_the_reason() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])?;
    let ca = tmp.path().join("ca.pem");
    std::fs::write(&ca, cert.cert.pem())?;
    std::fs::write(tmp.path().join("cert.pem"), cert.cert.pem())?;
    std::fs::write(tmp.path().join("key.pem"), cert.signing_key.serialize_pem())?;
    let hash = bcrypt::hash("s3cret", 4)?;
    std::fs::write(tmp.path().join("htpasswd"), format!("tester:{hash}\n"))?;
    let root = tmp.path().join("root");
    let dir = tmp.path().display().to_string();
    let server = oci_blocks_registry(
        &root,
        &[
            "--tls-cert",
            &format!("{dir}/cert.pem"),
            "--tls-key",
            &format!("{dir}/key.pem"),
            "--htpasswd",
            &format!("{dir}/htpasswd"),
            "--auth-pull",
        ],
    )?;
    ensure!(server.url.starts_with("https://"), "{}", server.url);
    let gc = format!(
        "oci-blocks-registry gc --root {} --grace-period 0s",
        quoted(&root)
    );
    let out = suite()
        .args(["registry", "--url", &server.url, "--gc-command", &gc])
        .args(["--username", "tester", "--password", "s3cret", "--ca-file"])
        .arg(&ca)
        .arg("--expect")
        .arg(crate_dir().join("expected/oci-blocks-registry.toml"))
        .output()?;
    ensure!(out.status.success(), "{}", text(&out));

    // A wrong password: the registry answers, and the tests fail naming 401.
    let out = suite()
        .args(["registry", "--json", "--url", &server.url, "--insecure"])
        .args(["--username", "tester", "--password", "wrong"])
        .output()?;
    ensure!(matches!(out.status.code(), Some(1 | 2)), "{}", text(&out));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(all.contains("401"), "{all}");

    // An unknown CA stops the run before any test, naming the certificate.
    let out = suite()
        .args([
            "registry",
            "--url",
            &server.url,
            "--username",
            "tester",
            "--password",
            "s3cret",
        ])
        .output()?;
    ensure!(out.status.code() == Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    ensure!(
        err.contains("certificate") || err.contains("issuer"),
        "{err}"
    );
    Ok(())
}
