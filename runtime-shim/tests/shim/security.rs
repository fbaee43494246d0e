//! Hostile blocks and imports through `oci-blocks-shim unpack`: nothing an image
//! holds may reach a file outside the root filesystem, and the block store's
//! shared inodes keep their owner and mode.
//!
//! Each case runs in a work directory that also holds a host tree (`host/`):
//! files with known content, modes and times that the image aims at by their
//! absolute paths. Every file of the work directory other than the root
//! filesystems and the store is recorded before the unpack and compared after
//! it: type, mode, owner, size, link count, time, content and link target.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};
use oci_blocks_core::Digest;
use oci_blocks_fixture::{self as fixture, ImageSpec};

/// What is recorded of one path.
#[derive(Debug, PartialEq, Eq)]
struct Stamp {
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    nlink: u64,
    mtime: i64,
    content: Option<Digest>,
    link: Option<PathBuf>,
}

fn stamp(p: &Path) -> Result<Stamp> {
    let m = fs::symlink_metadata(p)?;
    let content = if m.is_file() {
        Some(Digest::sha256(&fs::read(p)?))
    } else {
        None
    };
    let link = if m.file_type().is_symlink() {
        Some(fs::read_link(p)?)
    } else {
        None
    };
    Ok(Stamp {
        mode: m.mode(),
        uid: m.uid(),
        gid: m.gid(),
        size: m.len(),
        nlink: m.nlink(),
        mtime: m.mtime(),
        content,
        link,
    })
}

/// Every path below `dir` except those whose first component `skip` names.
fn snapshot(dir: &Path, skip: &dyn Fn(&str) -> bool) -> Result<BTreeMap<PathBuf, Stamp>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let rel = p.strip_prefix(dir)?.to_path_buf();
        let first = rel
            .components()
            .next()
            .map(|c| c.as_os_str().to_string_lossy().into_owned());
        if first.as_deref().is_some_and(skip) {
            continue;
        }
        if fs::symlink_metadata(&p)?.is_dir() {
            for e in fs::read_dir(&p)? {
                stack.push(e?.path());
            }
        }
        // The work directory itself gains the outputs.
        if !rel.as_os_str().is_empty() {
            out.insert(rel, stamp(&p)?);
        }
    }
    Ok(out)
}

/// A work directory with a host tree the images aim at.
struct Host {
    tmp: tempfile::TempDir,
}

impl Host {
    fn new() -> Result<Host> {
        let tmp = tempfile::tempdir()?;
        let host = tmp.path().join("host");
        fs::create_dir_all(host.join("bin"))?;
        fs::write(host.join("secret"), "host secret")?;
        fs::write(host.join("bin/tool"), "#!/bin/sh\n")?;
        let mode = |p: &Path, m: u32| {
            fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(m))
        };
        mode(&host.join("secret"), 0o600)?;
        mode(&host.join("bin/tool"), 0o755)?;
        Ok(Host { tmp })
    }

    fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// The host tree's absolute path.
    fn host(&self) -> String {
        self.path().join("host").display().to_string()
    }

    fn store(&self) -> PathBuf {
        self.path().join("store")
    }

    /// The work directory minus root filesystems and the store.
    fn snapshot(&self) -> Result<BTreeMap<PathBuf, Stamp>> {
        snapshot(self.path(), &|first| {
            first.starts_with("root") || first == "store"
        })
    }

    /// Builds the image described by `toml` (`{HOST}` is the host tree's path)
    /// as `img-NAME`.
    fn image(&self, name: &str, toml: &str) -> Result<PathBuf> {
        let text = format!(
            "description = \"{name}\"\n{}",
            toml.replace("{HOST}", &self.host())
        );
        let dir = self.path().join(format!("img-{name}"));
        fixture::build(&ImageSpec::from_toml(&text, name)?, &dir, "latest")?;
        Ok(dir)
    }

    /// Unpacks `img` into `root-NAME` with `extra` options; checks that nothing
    /// outside changed and that a failure leaves no root filesystem. Returns
    /// whether it succeeded, the root filesystem and the output.
    fn unpack(&self, name: &str, img: &Path, extra: &[&str]) -> Result<(bool, PathBuf, String)> {
        let before = self.snapshot()?;
        let root = self.path().join(format!("root-{name}"));
        let out = Command::new(env!("CARGO_BIN_EXE_oci-blocks-shim"))
            .arg("unpack")
            .arg("--store")
            .arg(self.store())
            .args(extra)
            .arg(format!("oci:{}:latest", img.display()))
            .arg(&root)
            .output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let after = self.snapshot()?;
        for (path, was) in &before {
            match after.get(path) {
                None => anyhow::bail!("{name}: {} disappeared: {text}", path.display()),
                Some(now) => ensure!(
                    now == was,
                    "{name}: {} changed from {was:?} to {now:?}: {text}",
                    path.display()
                ),
            }
        }
        let new: Vec<_> = after.keys().filter(|p| !before.contains_key(*p)).collect();
        ensure!(
            new.is_empty(),
            "{name}: new paths outside the root: {new:?}"
        );
        if !out.status.success() {
            ensure!(
                !root.exists(),
                "{name}: a failed unpack left {}",
                root.display()
            );
        }
        Ok((out.status.success(), root, text))
    }

    /// Every file of the store's extracted trees: owner and mode, by path.
    fn store_inodes(&self) -> Result<BTreeMap<PathBuf, (u32, u32, u32)>> {
        let mut out = BTreeMap::new();
        for (p, s) in snapshot(&self.store().join("blocks"), &|_| false)? {
            out.insert(p, (s.uid, s.gid, s.mode));
        }
        Ok(out)
    }
}

const HARDLINK: &[&str] = &["--link", "hardlink", "--read-only"];

fn fails_naming(case: &str, result: &(bool, PathBuf, String), needles: &[&str]) -> Result<()> {
    let (ok, _, out) = result;
    ensure!(!ok, "{case}: the unpack succeeded: {out}");
    for n in needles {
        ensure!(
            out.contains(n),
            "{case}: the error does not name {n:?}: {out}"
        );
    }
    Ok(())
}

/// A block's symlink `evil -> /` and a setuid file below it: extracting the
/// block must not reach the host file of that path, even though the layer
/// imports only another file of the block.
#[test]
fn a_block_symlink_never_leads_extraction_to_the_host() -> Result<()> {
    let h = Host::new()?;
    let img = h.image(
        "setuid",
        r#"
[[blocks]]
name = "b"
entries = [
  { path = "lib.jar", content = "jar" },
  { path = "evil", type = "symlink", target = "/" },
  { path = "evil{HOST}/bin/tool", content = "owned", mode = 0o4755 },
]
[[layers]]
media_type = "import"
entries = [{ path = "app/.import.lib.jar", content = "/lib.jar from {block:b}" }]
"#,
    )?;
    let r = h.unpack("setuid", &img, &[])?;
    fails_naming(
        "setuid",
        &r,
        &["block.path-prefix", "evil", "symbolic link"],
    )?;
    Ok(())
}

/// An import whose SOURCE passes through a block's symlink, copied and hard
/// linked: the host file must not be read, nor its inode linked.
#[test]
fn an_import_source_never_passes_through_a_block_symlink() -> Result<()> {
    let h = Host::new()?;
    let img = h.image(
        "through",
        r#"
[[blocks]]
name = "b"
entries = [
  { path = "evil", type = "symlink", target = "/" },
  { path = "evil{HOST}/secret", content = "decoy" },
]
[[layers]]
media_type = "import"
entries = [{ path = "app/.import.secret", content = "/evil{HOST}/secret from {block:b}" }]
"#,
    )?;
    for (case, extra) in [("through-copy", &[][..]), ("through-hardlink", HARDLINK)] {
        let r = h.unpack(case, &img, extra)?;
        fails_naming(case, &r, &["block.path-prefix"])?;
    }
    // A valid block, whose link has nothing below it: the SOURCE names no
    // entry of the block, which is all an import can name, so the host file
    // the link would lead to is neither copied nor linked.
    let img = h.image(
        "through-valid",
        r#"
[[blocks]]
name = "b"
entries = [
  { path = "lib.jar", content = "jar" },
  { path = "evil", type = "symlink", target = "/" },
]
[[layers]]
media_type = "import"
entries = [{ path = "app/.import.secret", content = "/evil{HOST}/secret from {block:b}" }]
"#,
    )?;
    for (case, extra) in [
        ("through-valid-copy", &[][..]),
        ("through-valid-hardlink", HARDLINK),
    ] {
        let r = h.unpack(case, &img, extra)?;
        fails_naming(case, &r, &["import.source-missing", "app/.import.secret"])?;
    }
    Ok(())
}

/// A block's hard link to its own symlink that points at a host file.
#[test]
fn a_block_hard_link_to_a_block_symlink_is_refused() -> Result<()> {
    let h = Host::new()?;
    let img = h.image(
        "hardlink-symlink",
        r#"
[[blocks]]
name = "b"
entries = [
  { path = "link", type = "symlink", target = "{HOST}/secret" },
  { path = "h", type = "hardlink", target = "link" },
]
[[layers]]
media_type = "import"
entries = [{ path = "app/.import.h", content = "/h from {block:b}" }]
"#,
    )?;
    for (case, extra) in [("hl-copy", &[][..]), ("hl-hardlink", HARDLINK)] {
        let r = h.unpack(case, &img, extra)?;
        fails_naming(case, &r, &["block.hardlink-target", "link"])?;
    }
    Ok(())
}

/// With `--link hardlink`, a block's hard link entry that names another owner
/// must not re-own the store's shared inode for every later unpack.
#[test]
fn a_block_hard_link_entry_never_re_owns_the_stores_inode() -> Result<()> {
    let h = Host::new()?;
    let img = h.image(
        "reown",
        r#"
[[blocks]]
name = "b"
entries = [
  { path = "lib/", type = "dir" },
  { path = "lib/a.jar", content = "jar", mode = 0o644 },
  { path = "lib/b.jar", type = "hardlink", target = "lib/a.jar", uid = 4242, gid = 4242, mode = 0o4777 },
]
[[layers]]
media_type = "import"
entries = [{ path = "app/.import.lib", content = "/lib from {block:b}" }]
"#,
    )?;
    let (ok, root, out) = h.unpack("reown-1", &img, HARDLINK)?;
    ensure!(ok, "{out}");
    let stored = h.store_inodes()?;
    let a = root.join("app/lib/a.jar");
    let b = root.join("app/lib/b.jar");
    ensure!(
        fs::metadata(&a)?.ino() == fs::metadata(&b)?.ino(),
        "b.jar is a.jar"
    );
    ensure!(fs::read_to_string(&b)? == "jar");
    // As root, the store holds the block's owner (0); never the link entry's.
    let files: Vec<_> = stored
        .iter()
        .filter(|(p, _)| p.ends_with("a.jar"))
        .collect();
    ensure!(files.len() == 1, "{stored:?}");
    let (uid, gid, mode) = *files[0].1;
    ensure!(
        (uid, gid) == (0, 0) && mode & 0o7000 == 0,
        "the store's inode was re-owned or given set-id bits: {uid}:{gid} {mode:o}"
    );
    // A later unpack sees the block's own metadata.
    let (ok, root2, out) = h.unpack("reown-2", &img, &[])?;
    ensure!(ok, "{out}");
    let m = fs::metadata(root2.join("app/lib/a.jar"))?;
    ensure!(
        (m.uid(), m.gid(), m.mode() & 0o7777) == (0, 0, 0o644),
        "a copy after the hard-linked unpack: {}:{} {:o}",
        m.uid(),
        m.gid(),
        m.mode()
    );
    ensure!(h.store_inodes()? == stored, "the store changed");
    Ok(())
}

/// What lower layers left at or below an import's destination is replaced as
/// a layer entry would replace it: a symlink there is removed, never followed.
#[test]
fn materialization_replaces_lower_symlinks_at_and_below_its_destination() -> Result<()> {
    let h = Host::new()?;
    let block = r#"
[[blocks]]
name = "b"
entries = [
  { path = "pkg/", type = "dir" },
  { path = "pkg/sub/", type = "dir" },
  { path = "pkg/sub/x", content = "from the block" },
  { path = "pkg/f", content = "file" },
]
[[blocks]]
name = "j"
entries = [{ path = "lib.jar", content = "jar" }]
"#;
    let up = "../".repeat(16);
    let cases = [
        ("below-abs", "site/pkg/sub", "{HOST}".to_string()),
        ("below-rel", "site/pkg/sub", format!("{up}{{HOST}}")),
        (
            "below-dangling",
            "site/pkg/sub",
            "/nonexistent-oci-blocks".into(),
        ),
        ("below-file", "site/pkg/f", "{HOST}/secret".into()),
        ("at-dir", "site/pkg", "{HOST}".into()),
    ];
    for (case, link, target) in cases {
        let img = h.image(
            case,
            &format!(
                r#"{block}
[[layers]]
entries = [{{ path = "site/pkg/", type = "dir" }}, {{ path = "{link}", type = "symlink", target = "{target}" }}]
[[layers]]
media_type = "import"
entries = [{{ path = "site/.import.pkg", content = "/pkg from {{block:b}}" }}]
"#
            ),
        )?;
        let (ok, root, out) = h.unpack(case, &img, &[])?;
        ensure!(ok, "{case}: a valid image must unpack: {out}");
        let sub = root.join("site/pkg/sub");
        ensure!(
            fs::symlink_metadata(&sub)?.is_dir(),
            "{case}: site/pkg/sub is not a directory"
        );
        ensure!(
            fs::read_to_string(sub.join("x"))? == "from the block",
            "{case}"
        );
        ensure!(
            fs::symlink_metadata(root.join("site/pkg/f"))?.is_file(),
            "{case}: site/pkg/f"
        );
    }
    // A file import over a lower symlink to a host file.
    let img = h.image(
        "at-file",
        &format!(
            r#"{block}
[[layers]]
entries = [{{ path = "app/lib.jar", type = "symlink", target = "{{HOST}}/secret" }}]
[[layers]]
media_type = "import"
entries = [{{ path = "app/.import.lib.jar", content = "/lib.jar from {{block:j}}" }}]
"#
        ),
    )?;
    for (case, extra) in [("at-file-copy", &[][..]), ("at-file-hardlink", HARDLINK)] {
        let (ok, root, out) = h.unpack(case, &img, extra)?;
        ensure!(ok, "{case}: {out}");
        let jar = root.join("app/lib.jar");
        ensure!(fs::symlink_metadata(&jar)?.is_file(), "{case}");
        ensure!(fs::read_to_string(&jar)? == "jar", "{case}");
    }
    Ok(())
}

/// A block's hard link may come before the file it names, and the paths that
/// are one file in the block stay one file.
#[test]
fn a_hard_link_before_its_target_materializes() -> Result<()> {
    let h = Host::new()?;
    let img = h.image(
        "link-first",
        r#"
[[blocks]]
name = "b"
entries = [
  { path = "pkg/", type = "dir" },
  { path = "pkg/hard.py", type = "hardlink", target = "pkg/mod.py" },
  { path = "pkg/mod.py", content = "print(1)", mode = 0o640 },
  { path = "pkg/sub/", type = "dir" },
  { path = "pkg/sub/again.py", type = "hardlink", target = "pkg/hard.py" },
]
[[layers]]
media_type = "import"
entries = [
  { path = "site/.import.pkg", content = "/pkg from {block:b}" },
  { path = "one/.import.again.py", content = "/pkg/sub/again.py from {block:b}" },
]
"#,
    )?;
    for (case, extra) in [
        ("link-first-copy", &[][..]),
        ("link-first-hardlink", HARDLINK),
    ] {
        let (ok, root, out) = h.unpack(case, &img, extra)?;
        ensure!(ok, "{case}: {out}");
        let (a, b, c) = (
            fs::metadata(root.join("site/pkg/hard.py"))?,
            fs::metadata(root.join("site/pkg/mod.py"))?,
            fs::metadata(root.join("site/pkg/sub/again.py"))?,
        );
        ensure!(a.ino() == b.ino() && b.ino() == c.ino(), "{case}: one file");
        ensure!(fs::read_to_string(root.join("site/pkg/mod.py"))? == "print(1)");
        // A link whose file is outside the imported subtree becomes that file.
        let single = root.join("one/again.py");
        ensure!(fs::read_to_string(&single)? == "print(1)", "{case}");
        if extra.is_empty() {
            ensure!(
                a.mode() & 0o7777 == 0o640,
                "{case}: the file's mode: {:o}",
                a.mode()
            );
            ensure!(fs::metadata(&single)?.ino() != a.ino());
        }
    }
    Ok(())
}

/// One block imported a thousand times: refused by the ratio long before
/// the disk fills, and by the absolute bound when the ratio is raised.
#[test]
fn imports_of_one_block_a_thousand_times_stop_early() -> Result<()> {
    let h = Host::new()?;
    let imports: Vec<String> = (0..1000)
        .map(|i| {
            format!(r#"{{ path = "app/.import.copy{i}", content = "/big from {{block:b}}" }}"#)
        })
        .collect();
    let img = h.image(
        "amplify",
        &format!(
            r#"
[[blocks]]
name = "b"
entries = [{{ path = "big", content = "0123456789abcdef", repeat = 65536 }}]
[[layers]]
media_type = "import+gzip"
entries = [{}]
"#,
            imports.join(", ")
        ),
    )?;
    let r = h.unpack("amplify", &img, &[])?;
    fails_naming(
        "amplify",
        &r,
        &["limit.exceeded", "--max-import-ratio", "app/.import.copy68"],
    )?;
    let r = h.unpack(
        "amplify-absolute",
        &img,
        &[
            "--max-import-ratio",
            "100000",
            "--max-import-bytes",
            "10MiB",
        ],
    )?;
    fails_naming("amplify-absolute", &r, &["--max-import-bytes", "10.0 MiB"])?;
    let r = h.unpack(
        "amplify-count",
        &img,
        &[
            "--max-import-ratio",
            "1000",
            "--max-import-bytes",
            "2GiB",
            "--max-imports-per-layer",
            "999",
        ],
    )?;
    fails_naming(
        "amplify-count",
        &r,
        &["--max-imports-per-layer", "1000 import entries"],
    )?;
    // Raised far enough, the same image unpacks.
    let (ok, root, out) = h.unpack(
        "amplify-raised",
        &img,
        &["--max-import-ratio", "1000", "--max-import-bytes", "2GiB"],
    )?;
    ensure!(ok, "{out}");
    ensure!(fs::metadata(root.join("app/copy999"))?.len() == 1 << 20);
    Ok(())
}

/// A block of many empty files imported many times costs inodes, not bytes,
/// so the byte bounds never see it: the entry bound stops it at the import
/// that would pass it, naming its flag.
#[test]
fn imports_of_many_empty_files_stop_at_the_entry_bound() -> Result<()> {
    let h = Host::new()?;
    let mut files = vec![r#"{ path = "d/", type = "dir" }"#.to_string()];
    files.extend((0..500).map(|i| format!(r#"{{ path = "d/f{i}" }}"#)));
    let imports: Vec<String> = (0..40)
        .map(|i| format!(r#"{{ path = "app/.import.d{i}", content = "/d from {{block:b}}" }}"#))
        .collect();
    let img = h.image(
        "entries",
        &format!(
            "[[blocks]]\nname = \"b\"\nentries = [{}]\n[[layers]]\nmedia_type = \"import\"\nentries = [{}]\n",
            files.join(", "),
            imports.join(", ")
        ),
    )?;
    // Each import materializes 501 entries: the 20th would take the image
    // to 10,020.
    let r = h.unpack("entries", &img, &["--max-import-entries", "10000"])?;
    fails_naming(
        "entries",
        &r,
        &[
            "limit.exceeded",
            "--max-import-entries",
            "10000 entries per image",
            "app/.import.d19",
        ],
    )?;
    let (ok, root, out) = h.unpack("entries-default", &img, &[])?;
    ensure!(ok, "{out}");
    ensure!(root.join("app/d39/f499").is_file(), "{out}");
    Ok(())
}

/// Writes a gzip layer of one tar entry claiming `size` zero bytes, as
/// concatenated gzip members, so that a few MiB stand for GiBs; tags it.
fn bomb(dir: &Path, size: u64) -> Result<PathBuf> {
    use flate2::{Compression, write::GzEncoder};
    use oci_blocks_core::layout::OciDir;
    use std::io::Write;
    let layout = OciDir::create(dir)?;
    let mut header = tar::Header::new_ustar();
    header.set_path("zeros")?;
    header.set_size(size);
    header.set_mode(0o644);
    header.set_cksum();
    let member = |bytes: &[u8]| -> Result<Vec<u8>> {
        let mut e = GzEncoder::new(Vec::new(), Compression::new(6));
        e.write_all(bytes)?;
        Ok(e.finish()?)
    };
    let chunk = member(&vec![0u8; 1 << 20])?;
    let mut blob = member(header.as_bytes())?;
    let mut hasher =
        oci_blocks_core::digest::Hasher::new(oci_blocks_core::digest::Algorithm::Sha256);
    hasher.update(header.as_bytes());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..(size >> 20) {
        blob.extend_from_slice(&chunk);
        hasher.update(&zeros);
    }
    // The end-of-archive marker.
    blob.extend_from_slice(&member(&[0u8; 1024])?);
    hasher.update(&[0u8; 1024]);
    let (ld, ls) = layout.write_blob_bytes(&blob)?;
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [hasher.finish().as_str()]},
    });
    let (cd, cs) = layout.write_blob_bytes(&serde_json::to_vec(&config)?)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.as_str(), "size": cs},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": ld.as_str(), "size": ls}],
    });
    let bytes = serde_json::to_vec(&manifest)?;
    let (md, ms) = layout.write_blob_bytes(&bytes)?;
    let desc = oci_blocks_core::oci_spec::image::Descriptor::new(
        oci_blocks_core::oci_spec::image::MediaType::ImageManifest,
        ms,
        md.as_oci().clone(),
    );
    layout.set_tag("latest", desc)?;
    Ok(dir.to_path_buf())
}

/// A 5 MiB gzip layer that expands to 5 GiB is refused before anything of it
/// is written.
#[test]
fn a_decompression_bomb_is_refused_before_it_is_written() -> Result<()> {
    let h = Host::new()?;
    let img = bomb(&h.path().join("img-bomb"), 5 << 30)?;
    let compressed: u64 = fs::read_dir(img.join("blobs/sha256"))?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .max()
        .unwrap_or(0);
    ensure!(compressed < 8 << 20, "the bomb is {compressed} bytes");
    let r = h.unpack("bomb", &img, &[])?;
    fails_naming("bomb", &r, &["limit.exceeded", "--max-expansion", "zeros"])?;
    Ok(())
}

/// Everything compared of a tree: type, mode, owner, time, size, content,
/// link target, `user.*` attributes, and which paths are one file. A time
/// after `since` is the time of the unpack (a parent no entry declares), not
/// the image's, and shows as `recent`.
fn tree_of(root: &Path, since: i64) -> Result<BTreeMap<PathBuf, String>> {
    let mut out = BTreeMap::new();
    let mut first_of_inode: BTreeMap<u64, PathBuf> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = fs::symlink_metadata(&p)?;
        let rel = p.strip_prefix(root)?.to_path_buf();
        if m.is_dir() {
            let mut children: Vec<_> = fs::read_dir(&p)?
                .map(|e| e.map(|e| e.path()))
                .collect::<Result<_, _>>()?;
            children.sort();
            stack.extend(children.into_iter().rev());
        }
        if rel.as_os_str().is_empty() {
            continue;
        }
        let mut buf = vec![0u8; 64];
        let xattr = rustix::fs::lgetxattr(&p, "user.origin", &mut buf)
            .map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
            .ok();
        let mut line = format!(
            "{:o} {}:{} mtime {} size {} xattr {:?}",
            m.mode(),
            m.uid(),
            m.gid(),
            match m.mtime() {
                _ if m.file_type().is_symlink() => "-".to_string(),
                t if t >= since => "recent".to_string(),
                t => t.to_string(),
            },
            if m.is_dir() { 0 } else { m.len() },
            xattr
        );
        if m.is_file() {
            line += &format!(" {}", Digest::sha256(&fs::read(&p)?));
            if m.nlink() > 1 {
                let first = first_of_inode.entry(m.ino()).or_insert_with(|| rel.clone());
                line += &format!(" one file with {}", first.display());
            }
        } else if m.file_type().is_symlink() {
            line += &format!(" -> {}", fs::read_link(&p)?.display());
        }
        out.insert(rel, line);
    }
    Ok(out)
}

/// The legacy manifest of a fallback index gives exactly the tree its blocks
/// manifest materializes: the unpacker's materialization and the legacy
/// layers written from `spec/fallback.md`'s definition agree, for hard links
/// in any order, implied directories, symbolic links, owners, modes, times,
/// extended attributes, merges into lower directories, lower links at and
/// below the destination, and whiteouts of the same layer.
#[test]
fn the_legacy_manifest_unpacks_to_the_tree_its_blocks_manifest_materializes() -> Result<()> {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64
        - 1;
    let h = Host::new()?;
    let img = h.image(
        "views",
        r#"
index = "fallback"

[[blocks]]
name = "dist"
entries = [
  { path = "pkg/", type = "dir", mode = 0o750 },
  { path = "pkg/hard.py", type = "hardlink", target = "pkg/mod.py" },
  { path = "pkg/mod.py", content = "print(1)", mode = 0o640, uid = 1000, gid = 1000 },
  { path = "pkg/sub/deep/x", content = "implied parents", mode = 0o4755 },
  { path = "pkg/link", type = "symlink", target = "../elsewhere" },
  { path = "pkg/attr", content = "with an attribute", xattrs = { "user.origin" = "the block" } },
  { path = "pkg-1.0.dist-info/", type = "dir" },
  { path = "pkg-1.0.dist-info/RECORD", content = "pkg/mod.py,," },
  { path = "tool", type = "hardlink", target = "pkg/mod.py" },
]

[[blocks]]
name = "jar"
entries = [{ path = "lib.jar", content = "PK jar" }]

[[layers]]
entries = [
  { path = "site/", type = "dir" },
  { path = "site/pkg/", type = "dir" },
  { path = "site/pkg/old.py", content = "a lower file that stays" },
  { path = "site/pkg/sub", type = "symlink", target = "{HOST}" },
  { path = "site/gone/", type = "dir" },
  { path = "site/gone/file", content = "hidden by a whiteout of the same layer" },
  { path = "app/lib.jar", type = "symlink", target = "{HOST}/secret" },
]

[[layers]]
media_type = "import+gzip"
entries = [
  { path = "site/.import.pkg", content = "/pkg from {block:dist}" },
  { path = "site/.import.pkg-1.0.dist-info", content = "/pkg-1.0.dist-info from {block:dist}" },
  { path = "site/.wh.gone" },
  { path = "bin/.import.tool", content = "/tool from {block:dist}" },
  { path = "app/.import.lib.jar", content = "/lib.jar from {block:jar}" },
  { path = "whole/.import.copy", content = "/ from {block:jar}" },
  { path = "fresh/.import.pkg", content = "/pkg from {block:dist}" },
]

[[layers]]
entries = [
  { path = "site/pkg/later.txt", content = "a later layer writes into the imported directory" },
  { path = "fresh/pkg/sub/later.txt", content = "and into one no layer declares" },
]
"#,
    )?;
    let (ok, blocks_root, out) = h.unpack("views-blocks", &img, &[])?;
    ensure!(ok, "{out}");
    ensure!(out.contains("\"blocks_variant\": true"), "{out}");
    // The same layout, tagged at its legacy manifest.
    let layout = oci_blocks_core::layout::OciDir::open(&img)?;
    let index: serde_json::Value = serde_json::from_slice(&fs::read(
        img.join("blobs/sha256").join(
            layout.resolve(Some("latest"))?[0]
                .digest()
                .to_string()
                .trim_start_matches("sha256:"),
        ),
    )?)?;
    let legacy = &index["manifests"][0];
    ensure!(legacy["annotations"].is_null(), "{legacy}");
    let desc: oci_blocks_core::oci_spec::image::Descriptor =
        serde_json::from_value(legacy.clone())?;
    let legacy_img = h.path().join("img-views-legacy");
    fs::create_dir(&legacy_img)?;
    for name in ["oci-layout", "index.json"] {
        fs::copy(img.join(name), legacy_img.join(name))?;
    }
    std::os::unix::fs::symlink(img.join("blobs"), legacy_img.join("blobs"))?;
    oci_blocks_core::layout::OciDir::open(&legacy_img)?.set_tag("latest", desc)?;
    let (ok, legacy_root, out) = h.unpack("views-legacy", &legacy_img, &[])?;
    ensure!(ok, "{out}");
    ensure!(out.contains("\"blocks_variant\": false"), "{out}");
    let (a, b) = (tree_of(&blocks_root, since)?, tree_of(&legacy_root, since)?);
    let mut diffs = Vec::new();
    for k in a
        .keys()
        .chain(b.keys())
        .collect::<std::collections::BTreeSet<_>>()
    {
        if a.get(k) != b.get(k) {
            diffs.push(format!(
                "{}:\n  blocks {:?}\n  legacy {:?}",
                k.display(),
                a.get(k),
                b.get(k)
            ));
        }
    }
    ensure!(
        diffs.is_empty(),
        "the two views differ:\n{}",
        diffs.join("\n")
    );
    ensure!(a.len() > 15, "{a:#?}");
    ensure!(fs::read_to_string(blocks_root.join("site/pkg/old.py"))? == "a lower file that stays");
    ensure!(!blocks_root.join("site/gone").exists());
    Ok(())
}

/// A block the store recorded in the earlier format (`entries.json`, whose
/// tree was fixed up by path) is not trusted: it is extracted again.
#[test]
fn a_block_of_the_earlier_store_format_is_extracted_again() -> Result<()> {
    let h = Host::new()?;
    let img = h.image(
        "old-format",
        r#"
[[blocks]]
name = "b"
entries = [{ path = "lib.jar", content = "the verified content" }]
[[layers]]
media_type = "import"
entries = [{ path = "app/.import.lib.jar", content = "/lib.jar from {block:b}" }]
"#,
    )?;
    let (ok, _, out) = h.unpack("old-1", &img, &[])?;
    ensure!(
        ok && out.contains("\"blocks_extracted\": [\n    \"sha256:"),
        "{out}"
    );
    // Turn the store's record into the earlier format, with a planted tree.
    let blocks = h.store().join("blocks/sha256");
    let block = fs::read_dir(&blocks)?.next().context("a block")??.path();
    fs::remove_file(block.join("block.json"))?;
    fs::write(
        block.join("entries.json"),
        r#"{"lib.jar":{"kind":"file","mode":420,"uid":0,"gid":0,"mtime":1}}"#,
    )?;
    let jar = block.join("tree/lib.jar");
    fs::set_permissions(&jar, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    fs::write(&jar, "planted")?;
    let (ok, root, out) = h.unpack("old-2", &img, &[])?;
    ensure!(
        ok && out.contains("\"blocks_extracted\": [\n    \"sha256:"),
        "extracted again: {out}"
    );
    ensure!(fs::read_to_string(root.join("app/lib.jar"))? == "the verified content");
    ensure!(fs::read_to_string(block.join("tree/lib.jar"))? == "the verified content");
    Ok(())
}
