//! The unpack suite: every vector through any unpacker's command line.
//!
//! For each vector the suite writes an OCI layout into a fresh work directory
//! `W`, runs the command template through `sh -c` with `W` as the working
//! directory, and judges what it left behind. Placeholders, each replaced by a
//! shell-quoted value: `{layout}` (the layout directory), `{ref}` (the tag),
//! `{rootfs}` (where the root filesystem must appear; it does not exist yet),
//! `{tmp}` (an empty scratch directory) and `{platform}` (`OS/ARCH[/VARIANT]`).
//!
//! Whatever the vector expects, the unpacker must stay inside the root: after
//! the run `W` holds only `layout`, `rootfs` and `tmp`, the layout is unchanged
//! and shares no inode with the root filesystem, and the run's host directory
//! (what hostile vectors aim at as `{host}`, outside every work directory)
//! holds exactly the guards the suite put there, untouched.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::json;

use crate::report::{Outcome, TestResult, write_file};
use crate::tree::{Tree, diff};
use crate::vectors::{ExpectResult, Platform, Vector};

/// How to run the unpack suite.
pub struct Options {
    /// The command template.
    pub command: String,
    /// The platform the unpacker picks from an index.
    pub platform: Platform,
    /// How long one run may take before it is killed.
    pub timeout: Duration,
    /// Run only the vectors whose id contains this text.
    pub only: Option<String>,
    /// Keep each vector's work directory under this directory.
    pub keep: Option<PathBuf>,
    /// Compare regular files' modes without their write bits.
    pub read_only_files: bool,
}

/// Runs every vector and returns one result per vector.
pub fn run(options: &Options) -> Result<Vec<TestResult>> {
    ensure!(
        options.command.contains("{rootfs}"),
        "the command template has no {{rootfs}}: the suite could never find a tree"
    );
    let scratch;
    let base = match &options.keep {
        Some(dir) => {
            fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
            dir.clone()
        }
        None => {
            scratch = tempfile::Builder::new()
                .prefix("oci-blocks-conformance-")
                .tempdir()?;
            scratch.path().to_path_buf()
        }
    };
    let host_dir = tempfile::Builder::new()
        .prefix("oci-blocks-conformance-host-")
        .tempdir()?;
    let host = host_dir.path();
    let mut results = Vec::new();
    let mut made: BTreeSet<String> = fs::read_dir(&base)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()?;
    for vector in crate::vectors::all()? {
        if let Some(only) = &options.only
            && !vector.id.contains(only.as_str())
        {
            continue;
        }
        let started = Instant::now();
        let dir_name = vector.id.replace('/', "-");
        made.insert(dir_name.clone());
        made.insert(format!("{dir_name}.log"));
        let work = base.join(&dir_name);
        let outcome = match run_one(&vector, &work, &base, &made, host, options) {
            Ok(outcome) => outcome,
            Err(e) => Outcome::failed(format!("the suite could not judge: {e:#}")),
        };
        empty_dir(host);
        if options.keep.is_none() {
            remove_all(&work);
        }
        results.push(TestResult {
            id: vector.id.clone(),
            description: vector.spec.description.clone(),
            outcome,
            duration: started.elapsed(),
        });
    }
    ensure!(
        !results.is_empty(),
        "no vector matches --only {:?}",
        options.only.as_deref().unwrap_or("")
    );
    Ok(results)
}

/// Quotes a value for `sh`.
fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// The template with every placeholder replaced by its quoted value.
fn expand(template: &str, values: &[(&str, String)]) -> String {
    let mut out = template.to_string();
    for (name, value) in values {
        out = out.replace(&format!("{{{name}}}"), &quote(value));
    }
    out
}

fn run_one(
    vector: &Vector,
    work: &Path,
    base: &Path,
    made: &BTreeSet<String>,
    host: &Path,
    options: &Options,
) -> Result<Outcome> {
    if work.exists() {
        remove_all(work);
    }
    let layout = work.join("layout");
    let rootfs = work.join("rootfs");
    let tmp = work.join("tmp");
    let host_text = path_text(host)?;
    vector.write_layout(&layout, &options.platform, &host_text)?;
    fs::create_dir_all(&tmp)?;
    prepare_host(vector, host)?;
    let before = Tree::read(&layout)?;

    let command = expand(
        &options.command,
        &[
            ("layout", path_text(&layout)?),
            ("ref", vector.name().to_string()),
            ("rootfs", path_text(&rootfs)?),
            ("tmp", path_text(&tmp)?),
            ("platform", options.platform.to_string()),
        ],
    );
    let log_path = base.join(format!("{}.log", vector.id.replace('/', "-")));
    let (status, log) = execute(&command, work, &log_path, options.timeout)?;

    // The root filesystem is read once, for the containment checks and for
    // the verdict.
    let root = if rootfs.is_dir() {
        Some(Tree::read(&rootfs)?)
    } else {
        None
    };
    let places = Places {
        work,
        base,
        made,
        host,
        layout: &layout,
    };
    let breaches = containment(vector, &places, &before, root.as_ref())?;
    if !breaches.is_empty() {
        return Ok(Outcome::Failed {
            reason: format!(
                "the unpacker wrote outside the root filesystem\n{}",
                log_tail(&log)
            ),
            diff: Some(breaches.join("\n")),
        });
    }
    let expect = &vector.spec.expect;
    Ok(match (expect.result, status) {
        (_, Exit::TimedOut) => Outcome::failed(format!(
            "killed after {} s\n{}",
            options.timeout.as_secs(),
            log_tail(&log)
        )),
        (ExpectResult::Tree, Exit::Code(code)) if code != 0 => Outcome::failed(format!(
            "exited {code}, but the image is valid\n{}",
            log_tail(&log)
        )),
        (ExpectResult::Tree, _) => {
            let Some(root) = &root else {
                return Ok(Outcome::failed(format!(
                    "exited 0 but created no root filesystem at {}\n{}",
                    rootfs.display(),
                    log_tail(&log)
                )));
            };
            let mut expected = Tree::expected(&expect.tree)?;
            let mut found = root.clone();
            if options.read_only_files {
                expected.without_file_write_bits();
                found.without_file_write_bits();
            }
            let lines = diff(&expected, &found);
            if lines.is_empty() {
                Outcome::Passed
            } else {
                Outcome::Failed {
                    reason: format!(
                        "the root filesystem differs from the expected tree in {} path(s)",
                        lines.len()
                    ),
                    diff: Some(lines.join("\n")),
                }
            }
        }
        (ExpectResult::Fail, Exit::Code(0)) => Outcome::failed(format!(
            "exited 0, but the image is invalid ({}) and must be refused",
            expect.rule.as_deref().unwrap_or("see the vector")
        )),
        (ExpectResult::Fail, _) => {
            let left = root.as_ref().map_or(0, |r| r.nodes.len());
            if left > 0 || (rootfs.exists() && !rootfs.is_dir()) {
                Outcome::failed(format!(
                    "refused the image but left a root filesystem with {left} entries: \
                     a refused image must produce no root filesystem"
                ))
            } else {
                Outcome::Passed
            }
        }
        (ExpectResult::Contained, _) => Outcome::Passed,
    })
}

fn path_text(path: &Path) -> Result<String> {
    path.to_str()
        .map(String::from)
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

/// How the command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Exit {
    /// It exited with this code (a signal counts as 128 + the signal).
    Code(i32),
    /// It ran past the timeout and was killed.
    TimedOut,
}

/// Runs `sh -c command` in its own process group, its output into `log_path`.
fn execute(
    command: &str,
    cwd: &Path,
    log_path: &Path,
    timeout: Duration,
) -> Result<(Exit, String)> {
    let log = fs::File::create(log_path)?;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("start sh")?;
    let deadline = Instant::now() + timeout;
    let exit = loop {
        if let Some(status) = child.try_wait()? {
            use std::os::unix::process::ExitStatusExt;
            break Exit::Code(
                status
                    .code()
                    .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
            );
        }
        if Instant::now() >= deadline {
            if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
            let _ = child.kill();
            let _ = child.wait();
            break Exit::TimedOut;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let text = String::from_utf8_lossy(&fs::read(log_path)?).into_owned();
    Ok((exit, text))
}

fn log_tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let start = lines.len().saturating_sub(12);
    let mut out = String::from("output:");
    if lines.is_empty() {
        out.push_str(" (none)");
    }
    for l in &lines[start..] {
        out.push_str("\n  ");
        out.push_str(l);
    }
    out
}

/// The host path a `{host}/NAME` guard or escape names.
fn host_path(host: &Path, path: &str) -> PathBuf {
    host.join(path.strip_prefix("{host}/").unwrap_or(path))
}

/// Creates the vector's guards in the (empty) host directory.
fn prepare_host(vector: &Vector, host: &Path) -> Result<()> {
    empty_dir(host);
    for g in &vector.spec.expect.guards {
        let path = host_path(host, &g.path);
        let mode = if g.kind == "dir" { 0o755 } else { 0o644 };
        if g.kind == "dir" {
            fs::create_dir(&path)
        } else {
            fs::write(&path, &g.content)
        }
        .and_then(|()| {
            fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(mode))
        })
        .with_context(|| format!("guard {}", path.display()))?;
    }
    Ok(())
}

/// Removes everything in `dir`, keeping `dir`.
fn empty_dir(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_all(&path);
        } else {
            let _ = fs::remove_file(&path);
        }
    }
}

/// Where one vector runs.
struct Places<'a> {
    /// Its work directory, `W`.
    work: &'a Path,
    /// The directory of every work directory.
    base: &'a Path,
    /// The names the suite made in `base`.
    made: &'a BTreeSet<String>,
    /// The run's host directory.
    host: &'a Path,
    /// `W/layout`.
    layout: &'a Path,
}

/// Every way the run left the root, given the layout's tree before the run
/// and the root filesystem's after it: one line each.
fn containment(
    vector: &Vector,
    places: &Places<'_>,
    before: &Tree,
    root: Option<&Tree>,
) -> Result<Vec<String>> {
    let Places {
        work,
        base,
        made,
        host,
        layout,
    } = *places;
    let mut out = Vec::new();
    let allowed = ["layout", "rootfs", "tmp"];
    for entry in fs::read_dir(work)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if !allowed.contains(&name.as_str()) {
            out.push(format!(
                "created {name} beside the root filesystem (in {})",
                work.display()
            ));
        }
    }
    for entry in fs::read_dir(base)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if !made.contains(&name) {
            out.push(format!(
                "created {name} two levels above the root filesystem"
            ));
        }
    }
    let after = Tree::read(layout)?;
    for line in diff(before, &after) {
        out.push(format!("changed the image layout: {line}"));
    }
    if let Some(root) = root {
        let inodes: BTreeSet<&String> = after.links.values().collect();
        for (path, inode) in &root.links {
            if inodes.contains(inode) {
                out.push(format!(
                    "rootfs/{path} is a hard link to a file of the image layout"
                ));
            }
        }
    }
    let expect = &vector.spec.expect;
    let mut known = BTreeSet::new();
    for g in &expect.guards {
        let path = host_path(host, &g.path);
        known.insert(path.clone());
        let meta = fs::symlink_metadata(&path);
        // Its content, its link count and its mode (a setuid bit set
        // through a link would show there).
        let intact = match (g.kind.as_str(), &meta) {
            ("dir", Ok(m)) if m.is_dir() => {
                fs::read_dir(&path)?.next().is_none() && m.mode() & 0o7777 == 0o755
            }
            (_, Ok(m)) if m.is_file() => {
                fs::read(&path)? == g.content.as_bytes()
                    && m.nlink() == 1
                    && m.mode() & 0o7777 == 0o644
            }
            _ => false,
        };
        if !intact {
            out.push(format!(
                "disturbed the host path {} (a guard)",
                path.display()
            ));
        }
    }
    for e in &expect.escapes {
        let path = host_path(host, e);
        known.insert(path.clone());
        if fs::symlink_metadata(&path).is_ok() {
            out.push(format!("created the host path {}", path.display()));
        }
    }
    for entry in fs::read_dir(host)? {
        let path = entry?.path();
        if !known.contains(&path) {
            out.push(format!("created the host path {}", path.display()));
        }
    }
    Ok(out)
}

/// Removes a tree even when the unpacker left directories without write
/// permission.
fn remove_all(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if fs::remove_dir_all(path).is_ok() {
        return;
    }
    fn open_up(p: &Path) {
        if let Ok(m) = fs::symlink_metadata(p)
            && m.is_dir()
        {
            let _ = fs::set_permissions(p, fs::Permissions::from_mode(0o700));
            if let Ok(entries) = fs::read_dir(p) {
                for e in entries.flatten() {
                    open_up(&e.path());
                }
            }
        }
    }
    open_up(path);
    let _ = fs::remove_dir_all(path);
}

/// What `{host}` stands for in written vectors: a harness that runs them
/// itself watches this directory.
pub const VECTORS_HOST: &str = "/tmp/oci-blocks-conformance-host";

/// Writes every vector under `out` (which must not exist, or be empty):
/// `GROUP/NAME/layout` and `GROUP/NAME/vector.json` (the expectation and the
/// expected tree), plus `vectors.json` listing them. The directory appears
/// whole or not at all.
pub fn write_vectors(out: &Path, platform: &Platform) -> Result<usize> {
    if out.exists() {
        ensure!(
            out.is_dir() && fs::read_dir(out)?.next().is_none(),
            "{} exists and is not an empty directory",
            out.display()
        );
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let staging = tempfile::Builder::new()
        .prefix(".vectors-")
        .tempdir_in(&parent)
        .with_context(|| format!("create a directory in {}", parent.display()))?;
    let vectors = crate::vectors::all()?;
    let mut list = Vec::new();
    for v in &vectors {
        let dir = staging.path().join(&v.id);
        v.write_layout(&dir.join("layout"), platform, VECTORS_HOST)?;
        let e = &v.spec.expect;
        let tree = Tree::expected(&e.tree)?;
        let doc = json!({
            "id": v.id,
            "description": v.spec.description,
            "ref": v.name(),
            "platform": platform.to_string(),
            "host": VECTORS_HOST,
            "expect": e.result,
            "rule": e.rule,
            "tree": tree.nodes,
            "hardlinks": tree.links,
            "guards": e.guards,
            "escapes": e.escapes,
        });
        write_file(
            &dir.join("vector.json"),
            &serde_json::to_string_pretty(&doc)?,
        )?;
        list.push(json!({"id": v.id, "description": v.spec.description, "expect": e.result}));
    }
    write_file(
        &staging.path().join("vectors.json"),
        &serde_json::to_string_pretty(&list)?,
    )?;
    if out.exists() {
        fs::remove_dir(out)?;
    }
    let staged = staging.keep();
    if let Err(e) = fs::rename(&staged, out) {
        remove_all(&staged);
        bail!("move the vectors to {}: {e}", out.display());
    }
    Ok(vectors.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_quoted_for_the_shell() {
        let cmd = expand(
            "tool {layout}:{ref} {rootfs} ${HOME}",
            &[
                ("layout", "/a b/it's".into()),
                ("ref", "v1".into()),
                ("rootfs", "/r".into()),
            ],
        );
        assert_eq!(cmd, r"tool '/a b/it'\''s':'v1' '/r' ${HOME}");
    }

    #[test]
    fn a_command_that_hangs_is_killed_with_its_children() -> Result<()> {
        let tmp = tempfile::tempdir()?;
        let log = tmp.path().join("log");
        let started = Instant::now();
        let (exit, _) = execute(
            "sleep 30 & sleep 30; echo never",
            tmp.path(),
            &log,
            Duration::from_millis(300),
        )?;
        assert_eq!(exit, Exit::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(10));
        let (exit, text) = execute(
            "echo out; echo err >&2; exit 3",
            tmp.path(),
            &log,
            Duration::from_secs(10),
        )?;
        assert_eq!(exit, Exit::Code(3));
        assert!(text.contains("out") && text.contains("err"), "{text}");
        Ok(())
    }
}
