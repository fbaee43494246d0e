//! Helpers shared by the suite's tests: the binaries under test and the tools
//! they are compared with.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, Result, bail};

/// The suite's binary.
pub fn suite() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_oci-blocks-conformance"));
    cmd.env("PATH", path_with_binaries());
    cmd
}

/// The directory of this build's binaries.
pub fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_oci-blocks-conformance"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// `PATH` with this build's binaries first, so that the command templates
/// read as the README writes them (`oci-blocks unpack ...`).
pub fn path_with_binaries() -> String {
    format!(
        "{}:{}",
        bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// One of the workspace's binaries, built if this test run did not build it
/// (`cargo test -p oci-blocks-conformance` builds only the suite).
pub fn workspace_binary(name: &str, package: &str) -> Result<PathBuf> {
    let path = bin_dir().join(name);
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", package, "--bin", name])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()?;
        if !status.success() || !path.exists() {
            bail!("could not build {name}");
        }
    }
    Ok(path)
}

/// This crate's directory.
pub fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Fails unless the external tools are on PATH. The tests that call it are
/// `#[ignore]`d; `.ci/run` installs the tools and runs them, so a missing
/// tool is a failure, never a silent pass.
pub fn need(tools: &[&str]) -> Result<()> {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| {
            !Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {t}"))
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .collect();
    if !missing.is_empty() {
        bail!("missing {missing:?}: this test needs them (.ci/run installs them)");
    }
    Ok(())
}

/// Stdout and stderr of a run, for error messages.
pub fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The number of vector descriptions in the repository.
pub fn vector_count() -> Result<usize> {
    let mut n = 0;
    for group in std::fs::read_dir(crate_dir().join("vectors"))? {
        for file in std::fs::read_dir(group?.path())? {
            if file?.path().extension().is_some_and(|e| e == "toml") {
                n += 1;
            }
        }
    }
    Ok(n)
}

/// Parses the JSON report printed by `--json`.
pub fn json_report(out: &Output) -> Result<serde_json::Value> {
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("not a JSON report:\n{}", text(out)))
}

/// Every result of a JSON report.
pub fn results(report: &serde_json::Value) -> impl Iterator<Item = &serde_json::Value> {
    report["results"].as_array().into_iter().flatten()
}

/// The result of test `id` in a JSON report.
pub fn result_of<'a>(report: &'a serde_json::Value, id: &str) -> Option<&'a serde_json::Value> {
    results(report).find(|r| r["id"] == id)
}

/// The status of test `id` in a JSON report.
pub fn status_of<'a>(report: &'a serde_json::Value, id: &str) -> Option<&'a str> {
    result_of(report, id)?["status"].as_str()
}
