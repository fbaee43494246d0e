//! The unpacker's behaviour through `oci-blocks-shim unpack`: whiteouts,
//! malicious layers and imports that must fail or stay inside the root,
//! hard-link materialization, extended attributes, and unpacking without
//! privileges.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, Result, ensure};
use oci_blocks_fixture::{self as fixture, ImageSpec};

/// The workspace root, where the committed example images are.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `oci-blocks-shim` from the workspace root.
fn shim(args: &[&str]) -> Result<Output> {
    Command::new(env!("CARGO_BIN_EXE_oci-blocks-shim"))
        .args(args)
        .current_dir(repo())
        .output()
        .context("running oci-blocks-shim")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Unpacks `image` into `rootfs` with the store `store`: the shim's report.
fn unpack(image: &str, rootfs: &Path, store: &Path) -> Result<serde_json::Value> {
    let out = shim(&[
        "unpack",
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

#[test]
fn a_whiteout_never_hides_an_entry_of_its_own_layer() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let spec = ImageSpec::from_toml(
        r#"
description = "own-layer whiteouts"
[[layers]]
entries = [{ path = "g/", type = "dir" }, { path = "g/f", content = "old" }, { path = "o/", type = "dir" }, { path = "o/lower", content = "lower" }, { path = "d/", type = "dir" }, { path = "d/lower", content = "lower" }]
[[layers]]
entries = [{ path = "g/f", content = "new" }, { path = "g/.wh.f" }, { path = "o/.wh..wh..opq" }, { path = "o/upper", content = "upper" }, { path = "d/", type = "dir" }, { path = "d/upper", content = "upper" }, { path = ".wh.d" }]
"#,
        "own layer",
    )?;
    fixture::build(&spec, &tmp.path().join("img"), "latest")?;
    let root = tmp.path().join("root");
    unpack(
        &format!("oci:{}:latest", tmp.path().join("img").display()),
        &root,
        &tmp.path().join("store"),
    )?;
    ensure!(
        fs::read_to_string(root.join("g/f"))? == "new",
        "the whiteout hid its own layer's file"
    );
    ensure!(
        !root.join("o/lower").exists() && root.join("o/upper").exists(),
        "opaque whiteout"
    );
    // A whiteout after its own layer's directory still hides the lower one's
    // children.
    ensure!(
        !root.join("d/lower").exists() && root.join("d/upper").exists(),
        "whiteout after the layer's own directory"
    );
    Ok(())
}

/// Entries below a lower layer's symlink follow it inside the root (a
/// merged-/usr Debian base links /lib to usr/lib), and a directory replaced
/// by a symlink halfway through a layer is never written through its old
/// handle: the parent directories the applier keeps open are dropped.
#[test]
fn entries_below_symlinks_resolve_inside_the_root_as_they_are_now() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let spec = ImageSpec::from_toml(
        r#"
description = "merged /usr"
[[layers]]
entries = [{ path = "usr/", type = "dir" }, { path = "usr/lib/", type = "dir" }, { path = "lib", type = "symlink", target = "usr/lib" }, { path = "abs", type = "symlink", target = "/usr/lib" }, { path = "real/", type = "dir" }, { path = "other/", type = "dir" }]
[[layers]]
entries = [{ path = "lib/x", content = "x" }, { path = "abs/y", content = "y" }, { path = "lib/sub/", type = "dir" }, { path = "lib/sub/z", content = "z" }, { path = "real/f1", content = "1" }, { path = "real", type = "symlink", target = "other" }, { path = "real/f2", content = "2" }, { path = "lib/after", content = "a" }]
"#,
        "merged usr",
    )?;
    fixture::build(&spec, &tmp.path().join("img"), "latest")?;
    let root = tmp.path().join("root");
    unpack(
        &format!("oci:{}:latest", tmp.path().join("img").display()),
        &root,
        &tmp.path().join("store"),
    )?;
    for (path, content) in [
        ("usr/lib/x", "x"),
        ("usr/lib/y", "y"),
        ("usr/lib/sub/z", "z"),
        ("usr/lib/after", "a"),
        ("other/f2", "2"),
    ] {
        ensure!(
            fs::read_to_string(root.join(path)).ok().as_deref() == Some(content),
            "{path} is not where the symlinks lead inside the root"
        );
    }
    for link in ["lib", "abs", "real"] {
        ensure!(
            fs::symlink_metadata(root.join(link))?
                .file_type()
                .is_symlink(),
            "{link} is no longer a symlink"
        );
    }
    ensure!(
        !root.join("other/f1").exists() && fs::read_dir(root.join("other"))?.count() == 1,
        "the replaced directory's file appeared elsewhere"
    );
    Ok(())
}

/// A directory outside every root filesystem: nothing may appear in it, and
/// neither it nor its file may change mode, owner or time.
struct Sentinel(PathBuf, Vec<(u32, u32, i64)>);

fn stamp(p: &Path) -> Result<(u32, u32, i64)> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::symlink_metadata(p)?;
    Ok((m.mode(), m.uid(), m.mtime()))
}

impl Sentinel {
    fn new(dir: &Path) -> Result<Sentinel> {
        let p = dir.join("sentinel");
        fs::create_dir_all(&p)?;
        fs::write(p.join("keep"), "untouched")?;
        let stamps = vec![stamp(&p)?, stamp(&p.join("keep"))?];
        Ok(Sentinel(p, stamps))
    }
    fn check(&self, case: &str) -> Result<()> {
        let names: Vec<String> = fs::read_dir(&self.0)?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        ensure!(
            names == ["keep"],
            "{case}: the sentinel outside the root changed: {names:?}"
        );
        ensure!(
            fs::read_to_string(self.0.join("keep"))? == "untouched",
            "{case}: sentinel file changed"
        );
        let now = vec![stamp(&self.0)?, stamp(&self.0.join("keep"))?];
        ensure!(
            now == self.1,
            "{case}: the sentinel's mode, owner or time changed: {:?} -> {now:?}",
            self.1
        );
        Ok(())
    }
}

fn malicious(
    case: &str,
    layers: &str,
    blocks: &str,
    tmp: &Path,
    sentinel: &Sentinel,
) -> Result<(bool, PathBuf, String)> {
    let toml = format!("description = \"{case}\"\n{blocks}\n{layers}");
    let spec = ImageSpec::from_toml(&toml, case)?;
    let dir = tmp.join(format!("img-{}", case.replace(' ', "-")));
    fixture::build(&spec, &dir, "latest")?;
    let root = tmp.join(format!("root-{}", case.replace(' ', "-")));
    let out = shim(&[
        "unpack",
        "--store",
        &tmp.join("store").display().to_string(),
        &format!("oci:{}:latest", dir.display()),
        &root.display().to_string(),
    ])?;
    sentinel.check(case)?;
    if !out.status.success() {
        ensure!(
            !root.exists(),
            "{case}: a failed unpack left {}",
            root.display()
        );
    }
    Ok((out.status.success(), root, text(&out)))
}

#[test]
fn malicious_images_fail_or_stay_inside_the_root() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let sentinel = Sentinel::new(tmp.path())?;
    let s = sentinel.0.display().to_string();
    let rel_up = format!("{}{}", "../".repeat(12), s.trim_start_matches('/'));

    // Symlinks planted by one layer and written through by a later one.
    for (case, target) in [
        ("absolute symlink escape", s.clone()),
        ("relative symlink escape", rel_up.clone()),
    ] {
        let layers = format!(
            "[[layers]]\nentries = [{{ path = \"evil\", type = \"symlink\", target = \"{target}\" }}]\n[[layers]]\nentries = [{{ path = \"evil/pwned\", content = \"x\" }}]\n"
        );
        let (ok, root, out) = malicious(case, &layers, "", tmp.path(), &sentinel)?;
        if ok {
            ensure!(!Path::new(&s).join("pwned").exists(), "{case}: {out}");
        }
        let _ = root;
    }
    // `..` in entry names, in one layer.
    let layers =
        format!("[[layers]]\nentries = [{{ path = \"{rel_up}/pwned\", content = \"x\" }}]\n");
    let (ok, root, _) = malicious("dotdot entry name", &layers, "", tmp.path(), &sentinel)?;
    ensure!(
        ok && root.join(s.trim_start_matches('/')).join("pwned").is_file(),
        "a `..` name is clamped inside the root"
    );
    // A hard link to a host file: resolved inside the root, where it does not exist.
    let layers = "[[layers]]\nentries = [{ path = \"passwd\", type = \"hardlink\", target = \"/etc/passwd\" }]\n";
    let (ok, _, out) = malicious("hardlink escape", layers, "", tmp.path(), &sentinel)?;
    ensure!(
        !ok,
        "a hard link to a path outside the image must fail: {out}"
    );
    // A symlinked parent, then a hard link through it.
    let layers = format!(
        "[[layers]]\nentries = [{{ path = \"up\", type = \"symlink\", target = \"{s}\" }}]\n[[layers]]\nentries = [{{ path = \"steal\", type = \"hardlink\", target = \"up/keep\" }}]\n"
    );
    let (ok, _, out) = malicious(
        "hardlink through symlinked parent",
        &layers,
        "",
        tmp.path(),
        &sentinel,
    )?;
    ensure!(!ok, "{out}");
    // The root entry replaced by a symlink.
    let layers = format!(
        "[[layers]]\nentries = [{{ path = \"./\", type = \"symlink\", target = \"{s}\" }}, {{ path = \"pwned\", content = \"x\" }}]\n"
    );
    malicious("root entry as symlink", &layers, "", tmp.path(), &sentinel)?;
    // A whiteout of the root's parent and of `..`.
    let layers = "[[layers]]\nentries = [{ path = \"a/.wh...\" }]\n";
    let (ok, _, _) = malicious("whiteout of dotdot", layers, "", tmp.path(), &sentinel)?;
    ensure!(!ok);

    // Imports.
    let block = "[[blocks]]\nname = \"b\"\nentries = [{ path = \"lib.jar\", content = \"jar\" }]\n";
    let import_layer = |content: &str| {
        format!(
            "[[layers]]\nmedia_type = \"import\"\nentries = [{{ path = \"app/.import.lib.jar\", content = \"{content}\" }}]\n"
        )
    };
    for (case, content, blocks, needle) in [
        ("import source dotdot", "/../../etc/passwd from {block:b}", block.to_string(), "`..`"),
        ("import undeclared digest", "/lib.jar from {block:hidden}", format!("{block}[[blocks]]\nname = \"hidden\"\ndeclared = false\nentries = [{{ path = \"lib.jar\", content = \"x\" }}]\n"), "not listed"),
        ("import source missing", "/other.jar from {block:b}", block.to_string(), "has no entry"),
        // Unique content: a verified block of the same digest would be served from the store.
        ("import tampered block", "/lib.jar from {block:b}", block.replace("name = \"b\"", "name = \"b\"\ncorrupt = true").replace("content = \"jar\"", "content = \"only in the tampered image\""), "digest mismatch"),
        ("block with whiteout", "/lib.jar from {block:b}", block.replace("{ path = \"lib.jar\", content = \"jar\" }", "{ path = \"lib.jar\", content = \"jar\" }, { path = \".wh.etc\" }"), "whiteouts"),
        ("block with import entry", "/lib.jar from {block:b}", block.replace("{ path = \"lib.jar\", content = \"jar\" }", "{ path = \"lib.jar\", content = \"jar\" }, { path = \".import.x\", content = \"/x from sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae\" }"), "import entries"),
        ("block with dotdot path", "/lib.jar from {block:b}", block.replace("{ path = \"lib.jar\", content = \"jar\" }", "{ path = \"lib.jar\", content = \"jar\" }, { path = \"../escape\", content = \"x\" }"), "`..`"),
    ] {
        let (ok, _, out) = malicious(case, &import_layer(content), &blocks, tmp.path(), &sentinel)?;
        ensure!(!ok && out.contains(needle), "{case}: expected a failure naming {needle:?}: {out}");
    }
    // An import under a symlinked parent: refused (the link dangles inside the
    // root) or placed inside the root, never in the sentinel.
    let layers = format!(
        "[[layers]]\nentries = [{{ path = \"app\", type = \"symlink\", target = \"{s}\" }}]\n{}",
        import_layer("/lib.jar from {block:b}")
    );
    let (ok, root, out) = malicious(
        "import under symlinked parent",
        &layers,
        block,
        tmp.path(),
        &sentinel,
    )?;
    ensure!(
        !ok || root
            .join(s.trim_start_matches('/'))
            .join("lib.jar")
            .is_file(),
        "{out}"
    );
    // The same with the link's target present inside the root: the absolute
    // link is re-anchored at the root, and the import lands there.
    let layers = format!(
        "[[layers]]\nentries = [{{ path = \"{inside}/\", type = \"dir\" }}, {{ path = \"app\", type = \"symlink\", target = \"{s}\" }}]\n{}",
        import_layer("/lib.jar from {block:b}"),
        inside = s.trim_start_matches('/'),
    );
    let (ok, root, out) = malicious(
        "import through a re-anchored link",
        &layers,
        block,
        tmp.path(),
        &sentinel,
    )?;
    ensure!(
        ok && root
            .join(s.trim_start_matches('/'))
            .join("lib.jar")
            .is_file(),
        "{out}"
    );
    // Nothing of a refused block stayed in the store.
    let blocks_dir = tmp.path().join("store/blocks/sha256");
    let kept: Vec<String> = fs::read_dir(&blocks_dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    ensure!(
        kept.len() == 1,
        "only the one good block is in the store: {kept:?}"
    );
    ensure!(
        fs::read_dir(tmp.path().join("store/tmp"))?.next().is_none(),
        "extraction leftovers in the store"
    );
    Ok(())
}

#[test]
fn hardlink_materialization_needs_read_only() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let out = shim(&[
        "unpack",
        "--link",
        "hardlink",
        "--store",
        &tmp.path().join("s").display().to_string(),
        "oci:examples/hello-blocks:latest",
        &tmp.path().join("r").display().to_string(),
    ])?;
    ensure!(
        out.status.code() == Some(2) && text(&out).contains("--read-only"),
        "{}",
        text(&out)
    );
    let out = shim(&[
        "unpack",
        "--link",
        "hardlink",
        "--read-only",
        "--store",
        &tmp.path().join("s").display().to_string(),
        "oci:examples/hello-blocks:latest",
        &tmp.path().join("r").display().to_string(),
    ])?;
    ensure!(out.status.success(), "{}", text(&out));
    use std::os::unix::fs::MetadataExt;
    let jar = tmp.path().join("r/app/lib/guava-32.1.3-jre.jar");
    ensure!(
        fs::metadata(&jar).context("imported jar")?.nlink() == 2,
        "shares its inode with the store"
    );
    Ok(())
}

/// What a malicious case must end in.
enum Outcome {
    /// The unpack fails and its message contains this.
    Fails(&'static str),
    /// The unpack succeeds and this holds of the root filesystem.
    Unpacks(fn(&Path) -> bool),
    /// Either, as long as nothing outside the root changed.
    Safe,
}

impl Outcome {
    fn check(&self, case: &str, ok: bool, root: &Path, out: &str) -> Result<()> {
        match self {
            Outcome::Fails(needle) => ensure!(
                !ok && out.contains(needle),
                "{case}: expected a failure naming {needle:?}, got: {out}"
            ),
            Outcome::Unpacks(holds) => ensure!(
                ok && holds(root),
                "{case}: expected a safe unpack with the right result: {out}"
            ),
            Outcome::Safe => {}
        }
        Ok(())
    }
}

/// The containerd `TestBreakouts` patterns, the umoci scoping cases, the
/// tar-rs advisories and malformed archives. `{S}` is the sentinel's absolute
/// path, `{UP}` a relative path climbing to it from any depth.
const LAYER_CASES: &[(&str, &str, Outcome)] = &[
    (
        "whiteout through a symlinked directory",
        r#"[[layers]]
entries = [{ path = "l", type = "symlink", target = "{S}" }]
[[layers]]
entries = [{ path = "l/.wh.keep" }]"#,
        Outcome::Safe,
    ),
    (
        "opaque whiteout through a symlinked directory",
        r#"[[layers]]
entries = [{ path = "l", type = "symlink", target = "{S}" }]
[[layers]]
entries = [{ path = "l/.wh..wh..opq" }]"#,
        Outcome::Safe,
    ),
    (
        "whiteout of a symlink removes the link only",
        r#"[[layers]]
entries = [{ path = "l", type = "symlink", target = "{S}/keep" }]
[[layers]]
entries = [{ path = ".wh.l" }]"#,
        Outcome::Unpacks(|r| fs::symlink_metadata(r.join("l")).is_err()),
    ),
    (
        "whiteout of dot",
        r#"[[layers]]
entries = [{ path = "a/.wh.." }]"#,
        Outcome::Fails("whiteout must name a file"),
    ),
    (
        "whiteout of the root",
        r#"[[layers]]
entries = [{ path = ".wh." }]"#,
        Outcome::Fails("whiteout must name a file"),
    ),
    (
        "opaque whiteout at the root",
        r#"[[layers]]
entries = [{ path = "a", content = "lower" }]
[[layers]]
entries = [{ path = ".wh..wh..opq" }, { path = "b", content = "upper" }]"#,
        Outcome::Unpacks(|r| !r.join("a").exists() && r.join("b").is_file()),
    ),
    (
        "symlink then a file of the same name in one layer",
        r#"[[layers]]
entries = [{ path = "x", type = "symlink", target = "{S}/keep" }, { path = "x", content = "mine" }]"#,
        Outcome::Unpacks(|r| {
            fs::symlink_metadata(r.join("x")).is_ok_and(|m| m.is_file())
                && fs::read_to_string(r.join("x")).is_ok_and(|c| c == "mine")
        }),
    ),
    (
        "symlink then a directory of the same name and a file in it",
        r#"[[layers]]
entries = [{ path = "d", type = "symlink", target = "{S}" }, { path = "d/", type = "dir" }, { path = "d/f", content = "in" }]"#,
        Outcome::Unpacks(|r| {
            fs::symlink_metadata(r.join("d")).is_ok_and(|m| m.is_dir()) && r.join("d/f").is_file()
        }),
    ),
    (
        "symlink chain escape",
        r#"[[layers]]
entries = [{ path = "a", type = "symlink", target = "b" }, { path = "b", type = "symlink", target = "{S}" }]
[[layers]]
entries = [{ path = "a/pwned", content = "x" }]"#,
        Outcome::Safe,
    ),
    (
        "symlink to slash is the root",
        r#"[[layers]]
entries = [{ path = "r", type = "symlink", target = "/" }]
[[layers]]
entries = [{ path = "r/pwned", content = "x" }]"#,
        Outcome::Unpacks(|r| r.join("pwned").is_file()),
    ),
    (
        "symlink to dotdot is the root",
        r#"[[layers]]
entries = [{ path = "up", type = "symlink", target = ".." }]
[[layers]]
entries = [{ path = "up/pwned", content = "x" }]"#,
        Outcome::Unpacks(|r| r.join("pwned").is_file()),
    ),
    (
        "relative symlink climbing from a subdirectory",
        r#"[[layers]]
entries = [{ path = "d/", type = "dir" }, { path = "d/l", type = "symlink", target = "../{UP}" }]
[[layers]]
entries = [{ path = "d/l/pwned", content = "x" }]"#,
        Outcome::Safe,
    ),
    (
        "dead symlink written through",
        r#"[[layers]]
entries = [{ path = "dead", type = "symlink", target = "/oci-blocks-nonexistent/dir" }]
[[layers]]
entries = [{ path = "dead/pwned", content = "x" }]"#,
        Outcome::Safe,
    ),
    (
        "dead symlink to the sentinel replaced by a file",
        r#"[[layers]]
entries = [{ path = "dead", type = "symlink", target = "{S}/new" }]
[[layers]]
entries = [{ path = "dead", content = "x" }]"#,
        Outcome::Unpacks(|r| fs::symlink_metadata(r.join("dead")).is_ok_and(|m| m.is_file())),
    ),
    (
        "hard link with a relative escape",
        r#"[[layers]]
entries = [{ path = "h", type = "hardlink", target = "../../../../../../etc/passwd" }]"#,
        Outcome::Fails("creating hard link"),
    ),
    (
        "hard link to a symlink that points out, then written",
        r#"[[layers]]
entries = [{ path = "l", type = "symlink", target = "{S}/keep" }]
[[layers]]
entries = [{ path = "h", type = "hardlink", target = "l" }]
[[layers]]
entries = [{ path = "h", content = "overwritten" }]"#,
        Outcome::Safe,
    ),
    (
        "a hard-linked file rewritten does not change its twin",
        r#"[[layers]]
entries = [{ path = "f", content = "orig" }, { path = "g", type = "hardlink", target = "f" }]
[[layers]]
entries = [{ path = "g", content = "new" }]"#,
        Outcome::Unpacks(|r| {
            fs::read_to_string(r.join("f")).is_ok_and(|c| c == "orig")
                && fs::read_to_string(r.join("g")).is_ok_and(|c| c == "new")
        }),
    ),
    (
        "hard link to a directory",
        r#"[[layers]]
entries = [{ path = "d/", type = "dir" }, { path = "h", type = "hardlink", target = "d" }]"#,
        Outcome::Fails("creating hard link"),
    ),
    (
        "directory entry through a symlink does not chmod its target",
        r#"[[layers]]
entries = [{ path = "d", type = "symlink", target = "{S}" }]
[[layers]]
entries = [{ path = "d/", type = "dir", mode = 0o777 }]"#,
        Outcome::Safe,
    ),
    (
        "directory replaced by a symlink before its time is set",
        r#"[[layers]]
entries = [{ path = "d/", type = "dir" }]
[[layers]]
entries = [{ path = "d", type = "symlink", target = "{S}" }]"#,
        Outcome::Unpacks(|r| fs::symlink_metadata(r.join("d")).is_ok_and(|m| m.is_symlink())),
    ),
    (
        "fifo replaced by a file",
        r#"[[layers]]
entries = [{ path = "p", type = "fifo" }]
[[layers]]
entries = [{ path = "p", content = "x" }]"#,
        Outcome::Unpacks(|r| fs::read_to_string(r.join("p")).is_ok_and(|c| c == "x")),
    ),
    (
        "symlink loop written through",
        r#"[[layers]]
entries = [{ path = "a", type = "symlink", target = "b" }, { path = "b", type = "symlink", target = "a" }]
[[layers]]
entries = [{ path = "a/x", content = "x" }]"#,
        Outcome::Safe,
    ),
    (
        "absolute entry name",
        r#"[[layers]]
entries = [{ path = "/abs", content = "x" }]"#,
        Outcome::Unpacks(|r| r.join("abs").is_file()),
    ),
    (
        "an entry named dotdot",
        r#"[[layers]]
entries = [{ path = "..", content = "x" }]"#,
        Outcome::Unpacks(|r| fs::read_dir(r).is_ok_and(|mut d| d.next().is_none())),
    ),
    (
        "PAX path climbing out",
        r#"[[layers]]
entries = [{ path = "innocent", content = "x", pax = { path = "{UP}/pwned" } }]"#,
        Outcome::Unpacks(|r| !r.join("innocent").exists()),
    ),
    (
        "PAX linkpath escape written through",
        r#"[[layers]]
entries = [{ path = "l", type = "symlink", target = "x", pax = { linkpath = "{S}" } }]
[[layers]]
entries = [{ path = "l/pwned", content = "x" }]"#,
        Outcome::Safe,
    ),
    (
        "PAX size contradicting the ustar size",
        r#"[[layers]]
entries = [{ path = "f", content = "0123456789", pax = { size = "4" } }]"#,
        Outcome::Fails("contradicts the header's size"),
    ),
    (
        "truncated inside a file's content",
        r#"[[layers]]
truncate = 1000
entries = [{ path = "f", content = "0123456789", repeat = 200 }]"#,
        Outcome::Fails("malformed tar"),
    ),
    (
        "truncated inside a header",
        r#"[[layers]]
truncate = 300
entries = [{ path = "f", content = "x" }]"#,
        Outcome::Fails("layer 0"),
    ),
    (
        "trailing garbage after the end-of-archive marker",
        r#"[[layers]]
trailing = "a hidden entry a lenient reader would find"
entries = [{ path = "f", content = "x" }]"#,
        Outcome::Fails("after the end-of-archive marker"),
    ),
    (
        "not a tar at all",
        r##"[[layers]]
raw = "this is not a tar archive, only some text that is long enough to look like one""##,
        Outcome::Fails("layer 0"),
    ),
    (
        "a corrupt gzip layer",
        r#"[[layers]]
media_type = "tar+gzip"
corrupt = true
entries = [{ path = "f", content = "some content to compress", repeat = 20 }]"#,
        Outcome::Fails("digest"),
    ),
    (
        "a diff ID that does not match",
        r#"[[layers]]
wrong_diff_id = true
entries = [{ path = "f", content = "x" }]"#,
        Outcome::Fails("diff_ids"),
    ),
    (
        "a trusted.* extended attribute",
        r#"[[layers]]
entries = [{ path = "f", content = "x", xattrs = { "trusted.overlay.opaque" = "y" } }]"#,
        Outcome::Fails("trusted.overlay.opaque"),
    ),
];

#[test]
fn malicious_layers_fail_or_stay_inside_the_root() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let sentinel = Sentinel::new(tmp.path())?;
    let s = sentinel.0.display().to_string();
    let up = format!("{}{}", "../".repeat(12), s.trim_start_matches('/'));
    ensure!(LAYER_CASES.len() >= 30);
    for (case, layers, outcome) in LAYER_CASES {
        let layers = layers.replace("{S}", &s).replace("{UP}", &up);
        let (ok, root, out) = malicious(case, &layers, "", tmp.path(), &sentinel)?;
        ensure!(
            !Path::new("/oci-blocks-nonexistent").exists(),
            "{case}: created a host path"
        );
        outcome.check(case, ok, &root, &out)?;
    }
    Ok(())
}

/// Import cases beyond those above: conflicts in one layer, blocks with
/// escaping links, sources through a block's symlinks, malformed import entries.
#[test]
fn malicious_imports_fail_or_stay_inside_the_root() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let sentinel = Sentinel::new(tmp.path())?;
    let s = sentinel.0.display().to_string();
    let block = |extra: &str| {
        format!(
            "[[blocks]]\nname = \"b\"\nentries = [{{ path = \"lib.jar\", content = \"jar\" }}{extra}]\n"
        )
    };
    let layer =
        |entries: &str| format!("[[layers]]\nmedia_type = \"import\"\nentries = [{entries}]\n");
    let import = r#"{ path = "app/.import.lib.jar", content = "/lib.jar from {block:b}" }"#;
    let cases: Vec<(&str, String, String, Outcome)> = vec![
        (
            "import then a file of the same name",
            block(""),
            layer(&format!(
                r#"{import}, {{ path = "app/lib.jar", content = "x" }}"#
            )),
            Outcome::Fails("import.conflict"),
        ),
        (
            "a file then an import of the same name",
            block(""),
            layer(&format!(
                r#"{{ path = "app/lib.jar", content = "x" }}, {import}"#
            )),
            Outcome::Fails("import.conflict"),
        ),
        (
            "block with a hard link climbing out",
            block(r#", { path = "h", type = "hardlink", target = "../../etc/passwd" }"#),
            layer(import),
            Outcome::Fails("block.path-unclean"),
        ),
        (
            "block symlink pointing out, written through by a later layer",
            block(&format!(
                r#", {{ path = "l", type = "symlink", target = "{s}" }}"#
            )),
            format!(
                "{}[[layers]]\nentries = [{{ path = \"app/l/pwned\", content = \"x\" }}]\n",
                layer(r#"{ path = "app/.import.l", content = "/l from {block:b}" }"#)
            ),
            Outcome::Safe,
        ),
        (
            "import source through a block's symlink",
            block(r#", { path = "d", type = "symlink", target = "/" }"#),
            layer(r#"{ path = "app/.import.passwd", content = "/d/etc/passwd from {block:b}" }"#),
            Outcome::Fails("has no entry"),
        ),
        (
            "import entry that is a symlink",
            block(""),
            layer(
                r#"{ path = "app/.import.lib.jar", type = "symlink", target = "/lib.jar from x" }"#,
            ),
            Outcome::Fails("regular file"),
        ),
        (
            "import entry larger than the limit",
            block(""),
            layer(
                r#"{ path = "app/.import.lib.jar", content = "/lib.jar from {block:b} ", repeat = 200 }"#,
            ),
            Outcome::Fails("more than 4096"),
        ),
        (
            "import entry with an empty name",
            block(""),
            layer(r#"{ path = "app/.import.", content = "/lib.jar from {block:b}" }"#),
            Outcome::Fails("app/.import."),
        ),
        (
            "import entry with a relative source",
            block(""),
            layer(r#"{ path = "app/.import.lib.jar", content = "lib.jar from {block:b}" }"#),
            Outcome::Fails("app/.import.lib.jar"),
        ),
        (
            "an import whited out later leaves the store whole",
            block(""),
            format!(
                "{}[[layers]]\nentries = [{{ path = \"app/.wh.lib.jar\" }}]\n",
                layer(import)
            ),
            Outcome::Unpacks(|r| {
                let store = r.parent().map(|p| p.join("store/blocks/sha256"));
                let in_store = store.and_then(|s| fs::read_dir(s).ok()).is_some_and(|d| {
                    d.filter_map(|e| e.ok()).any(|e| {
                        fs::read_to_string(e.path().join("tree/lib.jar")).is_ok_and(|c| c == "jar")
                    })
                });
                !r.join("app/lib.jar").exists() && in_store
            }),
        ),
    ];
    for (case, blocks, layers, outcome) in &cases {
        let (ok, root, out) = malicious(case, layers, blocks, tmp.path(), &sentinel)?;
        outcome.check(case, ok, &root, &out)?;
    }
    Ok(())
}

/// With hard links into the store, a later layer that rewrites an imported
/// file replaces the link; the store's copy keeps its content.
#[test]
fn a_later_layer_never_writes_into_a_hard_linked_store_file() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let spec = ImageSpec::from_toml(
        r#"
description = "imported file rewritten"
[[blocks]]
name = "b"
entries = [{ path = "lib.jar", content = "from the block" }]
[[layers]]
media_type = "import"
entries = [{ path = "app/.import.lib.jar", content = "/lib.jar from {block:b}" }]
[[layers]]
entries = [{ path = "app/lib.jar", content = "rewritten" }]
"#,
        "rewrite",
    )?;
    fixture::build(&spec, &tmp.path().join("img"), "latest")?;
    let store = tmp.path().join("store");
    let out = shim(&[
        "unpack",
        "--link",
        "hardlink",
        "--read-only",
        "--store",
        &store.display().to_string(),
        &format!("oci:{}:latest", tmp.path().join("img").display()),
        &tmp.path().join("root").display().to_string(),
    ])?;
    ensure!(out.status.success(), "{}", text(&out));
    ensure!(fs::read_to_string(tmp.path().join("root/app/lib.jar"))? == "rewritten");
    let blocks: Vec<_> = fs::read_dir(store.join("blocks/sha256"))?.collect::<Result<_, _>>()?;
    ensure!(blocks.len() == 1);
    ensure!(
        fs::read_to_string(blocks[0].path().join("tree/lib.jar"))? == "from the block",
        "the store's file was written through the hard link"
    );
    Ok(())
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    let n = rustix::fs::lgetxattr(path, name, &mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}

#[test]
fn user_and_capability_xattrs_are_restored_from_layers_and_blocks() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    // A version 2 capability set granting CAP_NET_BIND_SERVICE (bit 10).
    let cap = "\\u0002\\u0000\\u0000\\u0002\\u0000\\u0004\\u0000\\u0000\\u0000\\u0000\\u0000\\u0000\\u0000\\u0000\\u0000\\u0000\\u0000\\u0000\\u0000\\u0000";
    let spec = ImageSpec::from_toml(
        &format!(
            r#"
description = "xattrs"
[[blocks]]
name = "b"
entries = [{{ path = "lib.jar", content = "jar", xattrs = {{ "user.origin" = "block" }} }}]
[[layers]]
media_type = "import"
entries = [
  {{ path = "d/", type = "dir", xattrs = {{ "user.dir" = "yes" }} }},
  {{ path = "d/f", content = "x", xattrs = {{ "user.comment" = "hello" }} }},
  {{ path = "d/ping", content = "bin", mode = 0o755, xattrs = {{ "security.capability" = "{cap}" }} }},
  {{ path = "d/label", content = "x", xattrs = {{ "security.selinux" = "system_u:object_r:bin_t:s0" }} }},
  {{ path = "app/.import.lib.jar", content = "/lib.jar from {{block:b}}" }},
]
"#
        ),
        "xattrs",
    )?;
    fixture::build(&spec, &tmp.path().join("img"), "latest")?;
    let root = tmp.path().join("root");
    let report = unpack(
        &format!("oci:{}:latest", tmp.path().join("img").display()),
        &root,
        &tmp.path().join("store"),
    )?;
    ensure!(xattr(&root.join("d/f"), "user.comment").as_deref() == Some(&b"hello"[..]));
    ensure!(xattr(&root.join("d"), "user.dir").as_deref() == Some(&b"yes"[..]));
    ensure!(
        xattr(&root.join("app/lib.jar"), "user.origin").as_deref() == Some(&b"block"[..]),
        "the block entry's xattr is materialized"
    );
    let skipped: Vec<String> = report["applied"]["skipped_xattrs"]
        .as_array()
        .context("skipped_xattrs")?
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    ensure!(
        xattr(&root.join("d/label"), "security.selinux").is_none()
            && skipped
                .iter()
                .any(|s| s.starts_with("d/label: security.selinux")),
        "other namespaces are reported, not restored: {skipped:?}"
    );
    // Restored when the unpacker may (root with CAP_SETFCAP), else reported.
    let cap_set = xattr(&root.join("d/ping"), "security.capability").is_some();
    let cap_skipped = skipped
        .iter()
        .any(|s| s.starts_with("d/ping: security.capability"));
    ensure!(
        cap_set != cap_skipped,
        "security.capability is either set or reported: set {cap_set}, {skipped:?}"
    );
    Ok(())
}

/// Without privilege, a read-only directory of a lower layer is still filled
/// by a later one, and gets its mode back at the end (as `umoci unpack
/// --rootless` does). As root the unpack runs as `nobody` through `setpriv`.
#[test]
fn rootless_unpack_fills_read_only_directories() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir()?;
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o777))?;
    let spec = ImageSpec::from_toml(
        r#"
description = "read-only directories"
[[layers]]
entries = [{ path = "ro/", type = "dir", mode = 0o555 }, { path = "ro/a", content = "a" }, { path = "sealed/", type = "dir", mode = 0o500 }, { path = "sealed/s", content = "s", mode = 0o400 }]
[[layers]]
entries = [{ path = "ro/b", content = "b" }, { path = "sealed/t", content = "t" }]
"#,
        "read-only dirs",
    )?;
    fixture::build(&spec, &tmp.path().join("img"), "latest")?;
    let root = tmp.path().join("root");
    let args = [
        "unpack".to_string(),
        "--store".into(),
        tmp.path().join("store").display().to_string(),
        format!("oci:{}:latest", tmp.path().join("img").display()),
        root.display().to_string(),
    ];
    let privileged = rustix::process::geteuid().is_root();
    let out = if privileged {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(env!("CARGO_BIN_EXE_oci-blocks-shim"))
            .args(&args)
            .output()
            .context("setpriv (util-linux)")?
    } else {
        Command::new(env!("CARGO_BIN_EXE_oci-blocks-shim"))
            .args(&args)
            .output()?
    };
    ensure!(out.status.success(), "{}", text(&out));
    let mode =
        |p: &str| -> Result<u32> { Ok(fs::metadata(root.join(p))?.permissions().mode() & 0o7777) };
    ensure!(
        mode("ro")? == 0o555 && mode("sealed")? == 0o500,
        "final modes restored"
    );
    ensure!(fs::read_to_string(root.join("ro/b"))? == "b");
    ensure!(fs::read_to_string(root.join("sealed/t"))? == "t");
    // Let the temporary directory be removed.
    for d in ["ro", "sealed"] {
        fs::set_permissions(root.join(d), fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}
