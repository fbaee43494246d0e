//! Helpers shared by the CLI's integration tests: running the binary,
//! unpacking with the runtime shim, describing and comparing trees, the
//! corpus sets, and the registries and runtimes the interop tests start.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use oci_blocks_core::Digest;
use oci_blocks_core::layout::OciDir;
use oci_blocks_core::manifest::Manifest;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn oci_blocks(args: &[&str]) -> Result<Output> {
    Command::new(env!("CARGO_BIN_EXE_oci-blocks"))
        .args(args)
        .current_dir(repo())
        .output()
        .context("running oci-blocks")
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs the binary and fails with its output unless it succeeds.
pub fn ok(args: &[&str]) -> Result<String> {
    let out = oci_blocks(args)?;
    ensure!(
        out.status.success(),
        "oci-blocks {args:?} failed:\n{}",
        text(&out)
    );
    Ok(text(&out))
}

/// The manifest `tag` names, or, for a fallback index, its entry with the
/// variant `variant` (`blocks`) or without one (`legacy`).
pub fn manifest_of(layout: &OciDir, tag: &str, variant: &str) -> Result<(Digest, Manifest)> {
    let roots = layout.resolve(Some(tag))?;
    let d = Digest::try_from(roots[0].digest())?;
    let bytes = layout.read_json_blob(&d, None)?;
    if roots[0].media_type().to_string() != oci_blocks_core::names::OCI_INDEX {
        return Ok((d, Manifest::from_bytes(bytes)?));
    }
    let index = oci_blocks_core::manifest::Index::from_bytes(bytes)?;
    let entry = if variant == "legacy" {
        index
            .typed()
            .manifests()
            .first()
            .context("an entry")?
            .clone()
    } else {
        index.variant(variant).context("a blocks entry")?.clone()
    };
    let d = Digest::try_from(entry.digest())?;
    Ok((
        d.clone(),
        Manifest::from_bytes(layout.read_json_blob(&d, None)?)?,
    ))
}

/// Every blob digest the image at `dir`:`tag` references (manifest, config,
/// layers, blocks), for a fallback index those of its blocks manifest.
pub fn blobs_of(dir: &Path, tag: &str) -> Result<BTreeMap<String, String>> {
    let layout = OciDir::open(dir)?;
    let (d, m) = manifest_of(&layout, tag, "blocks")?;
    let mut out = BTreeMap::new();
    out.insert(d.to_string(), "manifest".to_string());
    out.insert(
        m.typed().config().digest().to_string(),
        "config".to_string(),
    );
    for l in m.layers() {
        out.insert(l.digest().to_string(), "layer".to_string());
    }
    for b in m.blocks() {
        let title = b
            .annotations()
            .as_ref()
            .and_then(|a| a.get("org.opencontainers.image.title").cloned())
            .unwrap_or_default();
        out.insert(b.digest().to_string(), format!("block {title}"));
    }
    Ok(out)
}

pub fn open_layer(
    layout: &OciDir,
    d: &oci_blocks_core::oci_spec::image::Descriptor,
) -> Result<Box<dyn Read>> {
    let digest = Digest::try_from(d.digest())?;
    let reader = layout.open_blob(&digest, Some(d.size()))?;
    Ok(if d.media_type().to_string().ends_with("+gzip") {
        Box::new(flate2::read::GzDecoder::new(reader))
    } else {
        Box::new(reader)
    })
}

/// Unpacks the image `tag` of the layout `dir` into `root` with the runtime
/// shim (its blocks variant, every import resolved), through a block store
/// beside `root`.
pub fn materialize(dir: &Path, tag: &str, root: &Path) -> Result<()> {
    let layout = OciDir::open(dir)?;
    let options = oci_blocks_shim::UnpackOptions {
        store: root.with_extension("store"),
        link: oci_blocks_shim::LinkMode::Copy,
        read_only: false,
        platform: None,
        limits: oci_blocks_core::limits::Limits::default(),
    };
    oci_blocks_shim::unpack(&layout, Some(tag), root, &options)
        .with_context(|| format!("unpacking {}:{tag}", dir.display()))?;
    Ok(())
}

/// One node of a tree, as compared: type, permission bits, size, content digest
/// or link target.
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct Node {
    pub kind: &'static str,
    pub mode: u32,
    pub size: u64,
    pub content: String,
}

/// Describes the tree at `root`; `transform` may rewrite a file's expected
/// bytes (the builder's canonical .pyc form).
pub fn describe(
    root: &Path,
    transform: &dyn Fn(&Path, Vec<u8>) -> Vec<u8>,
) -> Result<BTreeMap<String, Node>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = fs::symlink_metadata(&p)?;
        let rel = p.strip_prefix(root)?.to_string_lossy().into_owned();
        let node = if meta.is_dir() {
            for e in fs::read_dir(&p)? {
                stack.push(e?.path());
            }
            Node {
                kind: "dir",
                mode: meta.mode() & 0o7777,
                size: 0,
                content: String::new(),
            }
        } else if meta.file_type().is_symlink() {
            Node {
                kind: "symlink",
                mode: 0,
                size: 0,
                content: fs::read_link(&p)?.to_string_lossy().into_owned(),
            }
        } else if meta.is_file() {
            let bytes = transform(&p, fs::read(&p)?);
            Node {
                kind: "file",
                mode: meta.mode() & 0o7777,
                size: bytes.len() as u64,
                content: Digest::sha256(&bytes).to_string(),
            }
        } else {
            bail!("{}: unexpected file type", p.display());
        };
        out.insert(rel, node);
    }
    Ok(out)
}

/// Asserts two tree descriptions are equal, listing the differences.
pub fn assert_same(
    expected: &BTreeMap<String, Node>,
    actual: &BTreeMap<String, Node>,
    what: &str,
) -> Result<()> {
    let mut diffs = Vec::new();
    for (k, v) in expected {
        match actual.get(k) {
            None => diffs.push(format!("missing {k}")),
            Some(a) if a != v => diffs.push(format!("{k}: expected {v:?}, found {a:?}")),
            _ => {}
        }
    }
    for k in actual.keys().filter(|k| !expected.contains_key(*k)) {
        diffs.push(format!("unexpected {k}"));
    }
    ensure!(
        diffs.is_empty(),
        "{what}: {} differences:\n{}",
        diffs.len(),
        diffs
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    Ok(())
}

/// The tree under `root`, without `root` itself (whose mode is the test's).
pub fn tree(root: &Path) -> Result<BTreeMap<String, Node>> {
    let mut t = describe(root, &|_, b| b)?;
    t.remove("");
    Ok(t)
}

/// The tree the inputs `adds` (SRC, DEST) make when placed, with the directories
/// above each DEST as the builder writes them (0755).
pub fn expected_tree<P: AsRef<Path>>(
    adds: &[(P, &str)],
    transform: &dyn Fn(&Path, Vec<u8>) -> Vec<u8>,
) -> Result<BTreeMap<String, Node>> {
    let mut out = BTreeMap::new();
    for (src, dest) in adds {
        let dest = dest.trim_matches('/');
        let mut prefix = String::new();
        for c in dest.split('/') {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(c);
            out.entry(prefix.clone()).or_insert(Node {
                kind: "dir",
                mode: 0o755,
                size: 0,
                content: String::new(),
            });
        }
        for (rel, node) in describe(src.as_ref(), transform)? {
            let key = if rel.is_empty() {
                dest.to_string()
            } else {
                format!("{dest}/{rel}")
            };
            out.insert(key, node);
        }
    }
    Ok(out)
}

/// Tags the legacy manifest of the fallback index `tag` of the layout `dir`
/// as `name`: that manifest alone is a plain image.
pub fn tag_legacy_as(dir: &Path, tag: &str, name: &str) -> Result<()> {
    let layout = OciDir::open(dir)?;
    let (d, m) = manifest_of(&layout, tag, "legacy")?;
    ensure!(m.blocks().is_empty(), "the legacy manifest has no blocks");
    let bytes = layout.read_json_blob(&d, None)?;
    layout.set_tag(
        name,
        serde_json::from_value(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": d.to_string(), "size": bytes.len(),
        }))?,
    )?;
    Ok(())
}

/// Fails unless the external tools are on PATH. The tests that call it are
/// `#[ignore]`d, so a plain `cargo test` never runs them; `.ci/run` installs
/// the tools and runs them, and a missing tool is then a failure, never a
/// silent pass.
pub fn need(tools: &[&str]) -> Result<()> {
    let missing: Vec<&&str> = tools.iter().filter(|t| !on_path(t)).collect();
    ensure!(
        missing.is_empty(),
        "missing {missing:?}: this test needs them (.ci/run installs them)"
    );
    Ok(())
}

/// Whether `tool` is on PATH.
pub fn on_path(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The corpus sets that `benches/corpus/*.sh` make (`java`, `python`,
/// `python-large`, `pyspark`), made once under target/. They need pip, apt-get and the
/// network (Debian's and PyPI's packages) the first time, so the tests that
/// use them are `#[ignore]`d; failing to make one fails the test.
pub fn corpus(kind: &str) -> Result<PathBuf> {
    let dir = repo().join("target/corpus").join(kind);
    if dir.join("v2").is_dir() {
        return Ok(dir);
    }
    let script = repo().join("benches/corpus").join(match kind {
        "java" => "java-deps.sh",
        "python-large" => "python-large-env.sh",
        "pyspark" => "pyspark-jars.sh",
        _ => "python-env.sh",
    });
    let out = Command::new("bash").arg(&script).arg(&dir).output()?;
    ensure!(
        out.status.success() && dir.join("v2").is_dir(),
        "cannot make the {kind} corpus with {}: {}",
        script.display(),
        text(&out)
    );
    Ok(dir)
}

/// Where each corpus set's tree is below a version, and where it goes in
/// the image.
pub fn corpus_paths(kind: &str) -> (&'static str, &'static str) {
    match kind {
        "java" => ("lib", "/app/lib"),
        "pyspark" => ("lib", "/opt/spark/jars"),
        _ => ("site-packages", "/usr/lib/python3/site-packages"),
    }
}

/// The two versions of a corpus set for an update test: the set itself, or
/// for `pyspark` Spark's own 22 jars (50 MB) of its 252, the ones a release
/// rewrites a few classes of, copied below `t`.
pub fn update_corpus(kind: &str, t: &Path) -> Result<PathBuf> {
    let all = corpus(kind)?;
    if kind != "pyspark" {
        return Ok(all);
    }
    let (sub, _) = corpus_paths(kind);
    let subset = t.join("jars");
    for v in ["v1", "v2"] {
        fs::create_dir_all(subset.join(v).join(sub))?;
        for e in fs::read_dir(all.join(v).join(sub))? {
            let e = e?;
            if e.file_name().to_string_lossy().starts_with("spark-") {
                fs::copy(e.path(), subset.join(v).join(sub).join(e.file_name()))?;
            }
        }
    }
    Ok(subset)
}

/// Builds version `v` of a corpus set (its `sub` directory added at `dest`)
/// into `reference`, without the build cache.
pub fn build_corpus_version(
    dir: &Path,
    v: &str,
    sub: &str,
    dest: &str,
    reference: &str,
) -> Result<()> {
    ok(&[
        "build",
        "--no-cache",
        "--add",
        &format!("{}:{dest}", dir.join(v).join(sub).display()),
        "--out",
        reference,
    ])?;
    Ok(())
}

/// Runs a command, its stdout on success, stdout and stderr in the error.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    ensure!(out.status.success(), "{cmd:?} failed:\n{}", text(&out));
    Ok(text(&out))
}

/// Debian's docker-registry (CNCF distribution) on 127.0.0.1, on an ephemeral
/// port, killed when dropped.
pub struct DockerRegistry {
    child: Option<Child>,
    pub config: PathBuf,
    pub port: u16,
}

impl DockerRegistry {
    pub fn start(dir: &Path) -> Result<DockerRegistry> {
        fs::create_dir_all(dir)?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let config = dir.join("config.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.join("storage").display()
            ),
        )?;
        let mut r = DockerRegistry {
            child: None,
            config,
            port,
        };
        r.serve()?;
        Ok(r)
    }

    pub fn serve(&mut self) -> Result<()> {
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

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn status(&self, url: &str) -> Result<u16> {
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

    pub fn blob_status(&self, repo: &str, digest: &str) -> Result<u16> {
        self.status(&format!(
            "http://127.0.0.1:{}/v2/{repo}/blobs/{digest}",
            self.port
        ))
    }

    pub fn garbage_collect(&mut self) -> Result<String> {
        self.stop();
        let out = run(Command::new("docker-registry")
            .arg("garbage-collect")
            .arg(&self.config));
        self.serve()?;
        out
    }

    /// Pushes a blob from a layout with the plain monolithic upload.
    pub fn push_blob(&self, repo: &str, layout: &Path, digest: &str) -> Result<()> {
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

impl Drop for DockerRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the builder makes of each `.pyc` under `site`: the canonical form of
/// spec/reproducibility.md, so that trees can be compared with their input.
pub fn canonical_pyc_of(site: &Path) -> impl Fn(&Path, Vec<u8>) -> Vec<u8> + '_ {
    move |path: &Path, bytes: Vec<u8>| {
        let Ok(rel) = path.strip_prefix(site) else {
            return bytes;
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some(dir) = rel.parent().filter(|d| d.ends_with("__pycache__")) else {
            return bytes;
        };
        if !name.ends_with(".pyc") {
            return bytes;
        }
        let module = name.split('.').next().unwrap_or_default();
        let source_rel = dir
            .parent()
            .unwrap_or(Path::new(""))
            .join(format!("{module}.py"));
        let Ok(meta) = fs::metadata(site.join(&source_rel)) else {
            return bytes;
        };
        use std::os::unix::fs::MetadataExt;
        oci_blocks_builder::python::canonical_pyc(
            &bytes,
            &source_rel.to_string_lossy(),
            meta.mtime(),
            meta.len(),
            1,
        )
        .unwrap_or(bytes)
    }
}

/// Debian's containerd on a socket in a temporary directory, with its own
/// root and state and the native snapshotter; killed when dropped.
pub struct Containerd {
    child: Child,
    pub socket: PathBuf,
}

impl Containerd {
    pub fn start(dir: &Path) -> Result<Containerd> {
        fs::create_dir_all(dir)?;
        let socket = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        // Only what `ctr images pull` and `mount` need: no CRI, no snapshotter
        // that would probe the host's file systems.
        fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\", \"io.containerd.snapshotter.v1.btrfs\", \
                 \"io.containerd.snapshotter.v1.zfs\", \"io.containerd.snapshotter.v1.devmapper\", \
                 \"io.containerd.snapshotter.v1.aufs\"]\n\
                 [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n\
                 [debug]\n  address = \"\"\n[metrics]\n  address = \"\"\n",
                root = dir.join("root").display(),
                state = dir.join("state").display(),
                sock = socket.display(),
            ),
        )?;
        let log = fs::File::create(dir.join("containerd.log"))?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting containerd")?;
        let c = Containerd { child, socket };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if c.ctr(&["version"]).output()?.status.success() {
                return Ok(c);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!(
            "containerd did not answer on {}: {}",
            c.socket.display(),
            fs::read_to_string(dir.join("containerd.log")).unwrap_or_default()
        )
    }

    /// `ctr` against this containerd.
    pub fn ctr(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address").arg(&self.socket).args(args);
        cmd
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Debian's podman with vfs storage under `dir`, apart from the host's.
pub fn podman(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("podman");
    cmd.arg("--storage-driver")
        .arg("vfs")
        .arg("--root")
        .arg(dir.join("root"))
        .arg("--runroot")
        .arg(dir.join("run"))
        .args(args);
    cmd
}
