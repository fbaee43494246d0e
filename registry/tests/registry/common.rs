//! Helpers for the registry's tests: start and stop the real binary on an
//! ephemeral port, run Debian's skopeo against it, speak raw HTTP, and make images.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use oci_blocks_core::Digest;
use oci_blocks_core::names::{BLOCKS_CONFIG, OCI_CONFIG};
use serde_json::{Value, json};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Fails unless the external tools run. The tests that call it are
/// `#[ignore]`d; `.ci/run` installs the tools and runs them, so a missing
/// tool is a failure, never a silent pass.
pub fn need(tools: &[&str]) -> Result<()> {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| {
            Command::new(t)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_err()
        })
        .collect();
    anyhow::ensure!(
        missing.is_empty(),
        "missing {missing:?}: this test needs them (.ci/run installs them)"
    );
    Ok(())
}

/// A running `oci-blocks-registry serve`, killed when dropped.
pub struct Registry {
    pub child: Option<Child>,
    pub root: PathBuf,
    /// `127.0.0.1:PORT`
    pub host: String,
    pub scheme: String,
    pub stderr: PathBuf,
}

pub fn registry_bin() -> &'static str {
    env!("CARGO_BIN_EXE_oci-blocks-registry")
}

impl Registry {
    /// Starts the registry on `root` with extra `serve` arguments.
    pub fn start(root: &Path, extra: &[&str]) -> Result<Registry> {
        let mut args = vec!["serve", "--addr", "127.0.0.1:0"];
        let root_text = root.to_str().context("utf-8 root")?;
        if !extra.contains(&"--config") {
            args.extend(["--root", root_text]);
        }
        args.extend(extra);
        Self::spawn(root, &args)
    }

    pub fn spawn(root: &Path, args: &[&str]) -> Result<Registry> {
        Self::spawn_with(root, args, &[])
    }

    /// [`Registry::spawn`] with extra environment variables.
    pub fn spawn_with(root: &Path, args: &[&str], env: &[(&str, String)]) -> Result<Registry> {
        std::fs::create_dir_all(root)?;
        let stderr = root.with_extension(format!(
            "stderr.{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos()
        ));
        let mut child = Command::new(registry_bin())
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr)?)
            .spawn()
            .context("starting oci-blocks-registry")?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let Some(url) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "registry did not start: {line:?}\n{}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
        };
        let (scheme, host) = url.split_once("://").context("url")?;
        Ok(Registry {
            child: Some(child),
            root: root.to_path_buf(),
            host: host.to_string(),
            scheme: scheme.to_string(),
            stderr,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.host)
    }

    pub fn docker(&self, repo_ref: &str) -> String {
        format!("docker://{}/{repo_ref}", self.host)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then the exit status (waiting at most `timeout`).
    pub fn terminate(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let mut c = self.child.take().context("not running")?;
        let pid = rustix::process::Pid::from_child(&c);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)?;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = c.try_wait()? {
                return Ok(status);
            }
            if std::time::Instant::now() > deadline {
                let _ = c.kill();
                bail!("registry did not exit within {timeout:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_file(&self.stderr);
    }
}

/// Runs `oci-blocks-registry gc --root ROOT ARGS`.
pub fn gc(root: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(registry_bin())
        .arg("gc")
        .arg("--root")
        .arg(root)
        .args(args)
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "gc {args:?} failed:\n{text}");
    Ok(text)
}

pub fn skopeo(args: &[&str]) -> Result<Output> {
    Command::new("skopeo")
        .args(args)
        .output()
        .context("running skopeo")
}

pub fn skopeo_ok(args: &[&str]) -> Result<String> {
    let out = skopeo(args)?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "skopeo {args:?} failed:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(text)
}

// ---- raw HTTP ------------------------------------------------------------------

pub struct Reply {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// The first error code of a distribution-spec error body.
    pub fn code(&self) -> String {
        self.json()["errors"][0]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub fn describe(&self) -> String {
        format!(
            "{} {:?} {}",
            self.status,
            self.headers,
            String::from_utf8_lossy(&self.body)
        )
    }
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

fn reply(mut r: ureq::http::Response<ureq::Body>) -> Result<Reply> {
    let status = r.status().as_u16();
    let headers = r
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                v.to_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let body = r
        .body_mut()
        .with_config()
        .limit(1 << 30)
        .read_to_vec()
        .unwrap_or_default();
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// One request; `body` None sends none.
pub fn http(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<Reply> {
    let mut builder = ureq::http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let agent = agent();
    let r = match body {
        Some(b) => agent.run(builder.body(b.to_vec())?),
        None => agent.run(builder.body(())?),
    }
    .with_context(|| format!("{method} {url}"))?;
    reply(r)
}

/// A request whose body is streamed from `reader`.
pub fn http_stream(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    reader: impl Read + Send + 'static,
) -> Result<Reply> {
    let mut builder = ureq::http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let mut reader = reader;
    let body = ureq::SendBody::from_reader(&mut reader);
    let r = agent()
        .run(builder.body(body)?)
        .with_context(|| format!("{method} {url}"))?;
    reply(r)
}

/// Uploads one blob monolithically (`POST ?digest=`).
pub fn push_blob(base: &str, repo: &str, bytes: &[u8]) -> Result<Digest> {
    let digest = Digest::sha256(bytes);
    let r = http(
        "POST",
        &format!("{base}/v2/{repo}/blobs/uploads/?digest={digest}"),
        &[("Content-Type", "application/octet-stream")],
        Some(bytes),
    )?;
    ensure!(r.status == 201, "blob push: {}", r.describe());
    Ok(digest)
}

pub fn put_manifest(
    base: &str,
    repo: &str,
    reference: &str,
    bytes: &[u8],
    media_type: &str,
) -> Result<Reply> {
    http(
        "PUT",
        &format!("{base}/v2/{repo}/manifests/{reference}"),
        &[("Content-Type", media_type)],
        Some(bytes),
    )
}

// ---- manifests ------------------------------------------------------------------

pub fn descriptor(media_type: &str, bytes: &[u8]) -> Value {
    json!({
        "mediaType": media_type,
        "digest": Digest::sha256(bytes).as_str(),
        "size": bytes.len(),
    })
}

/// A small image manifest over blobs already pushed; `blocks` optional.
pub fn manifest(config: &[u8], layers: &[&[u8]], blocks: &[&[u8]], extra: Value) -> Vec<u8> {
    let mut m = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor(if blocks.is_empty() { OCI_CONFIG } else { BLOCKS_CONFIG }, config),
        "layers": layers.iter().map(|l| descriptor("application/vnd.oci.image.layer.v1.tar", l)).collect::<Vec<_>>(),
    });
    if !blocks.is_empty() {
        m["blocks"] = blocks
            .iter()
            .map(|b| descriptor("application/vnd.oci.image.layer.v1.tar", b))
            .collect();
    }
    if let (Some(obj), Some(extra)) = (m.as_object_mut(), extra.as_object()) {
        obj.extend(extra.clone());
    }
    serde_json::to_vec_pretty(&m).expect("json")
}

pub const CONFIG: &[u8] =
    br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;

// ---- images ----------------------------------------------------------------------

/// An image in an OCI layout: its top-level document and the blobs of the layout.
pub struct Layout {
    pub dir: PathBuf,
    pub top: Digest,
    pub top_bytes: Vec<u8>,
}

impl Layout {
    pub fn blob(&self, d: &str) -> Result<Vec<u8>> {
        let d = Digest::parse(d)?;
        Ok(std::fs::read(
            self.dir
                .join("blobs")
                .join(d.algorithm().as_str())
                .join(d.hex()),
        )?)
    }

    pub fn json(&self, d: &str) -> Result<Value> {
        Ok(serde_json::from_slice(&self.blob(d)?)?)
    }

    /// The index entry with this variant (`None`: the legacy manifest).
    pub fn entry(&self, variant: Option<&str>) -> Result<Value> {
        let index: Value = serde_json::from_slice(&self.top_bytes)?;
        index["manifests"]
            .as_array()
            .context("manifests")?
            .iter()
            .find(|m| m["annotations"]["io.oci-blocks.variant"].as_str() == variant)
            .cloned()
            .context("no such entry")
    }
}

/// Builds the java-app example (four jars become blocks) into `out` with
/// `extra` added as a second directory, tagged `latest`.
pub fn build_java(
    out: &Path,
    fallback: oci_blocks_builder::Fallback,
    extra: Option<&Path>,
) -> Result<Layout> {
    use oci_blocks_builder::{Add, BuildSpec};
    let example = repo_root().join("examples/java-app");
    let mut adds = vec![
        Add::new(example.join("lib"), "/app/lib"),
        Add::new(example.join("app"), "/app/classes"),
    ];
    if let Some(extra) = extra {
        adds.push(Add::new(extra, "/data"));
    }
    let spec = BuildSpec {
        base: None,
        adds,
        entrypoint: Some(vec!["java".into(), "Main".into()]),
        cmd: None,
        env: Vec::new(),
        workdir: None,
        user: None,
        labels: Default::default(),
        platforms: vec!["linux/amd64".into()],
        adds_for: Vec::new(),
        out: oci_blocks_core::layout::OciRef::parse(&format!("oci:{}:latest", out.display()))?,
        block_globs: Vec::new(),
        block_min_size: 0,
        source_date_epoch: 1,
        cache_dir: None,
        import_media_type: true,
        fallback,
        max_layers: None,
        sparse: false,
    };
    oci_blocks_builder::build(&spec)?;
    let index: Value = serde_json::from_slice(&std::fs::read(out.join("index.json"))?)?;
    let top = Digest::parse(index["manifests"][0]["digest"].as_str().context("digest")?)?;
    let top_bytes = std::fs::read(out.join("blobs/sha256").join(top.hex()))?;
    Ok(Layout {
        dir: out.to_path_buf(),
        top,
        top_bytes,
    })
}

/// The digests of every blob file under an OCI layout or a registry's `blobs/`.
pub fn blob_files(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let e = e?;
            if e.file_type()?.is_dir() {
                stack.push(e.path());
            } else {
                out.push((e.file_name().to_string_lossy().into_owned(), e.path()));
            }
        }
    }
    Ok(out)
}

/// Sets every stored blob's age to two hours, so that a collection with a
/// shorter grace period treats them as old.
pub fn age_blobs(root: &Path) -> Result<()> {
    let old = std::time::SystemTime::now() - Duration::from_secs(7200);
    for (_, path) in blob_files(&root.join("blobs"))? {
        std::fs::File::options()
            .write(true)
            .open(&path)?
            .set_modified(old)?;
    }
    for (_, path) in blob_files(&root.join("repositories"))? {
        if path.components().any(|c| c.as_os_str() == "_manifests") {
            std::fs::File::options()
                .write(true)
                .open(&path)?
                .set_modified(old)?;
        }
    }
    Ok(())
}
