//! `oci-blocks build` through the binary: reproducibility, dedup across
//! applications, the v1 to v2 update of real Java and Python dependency sets,
//! the built tree against its inputs, the build cache, a base image, and bad
//! input.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;
use anyhow::{Context, Result, ensure};

fn copy_tree(from: &Path, to: &Path, reverse: bool) -> Result<()> {
    fs::create_dir_all(to)?;
    let mut items: Vec<_> = fs::read_dir(from)?.collect::<Result<_, _>>()?;
    items.sort_by_key(|e| e.file_name());
    if reverse {
        items.reverse();
    }
    for e in items {
        let target = to.join(e.file_name());
        let meta = fs::symlink_metadata(e.path())?;
        if meta.is_dir() {
            copy_tree(&e.path(), &target, reverse)?;
        } else if meta.file_type().is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(e.path())?, &target)?;
        } else {
            fs::copy(e.path(), &target)?;
        }
        if !meta.file_type().is_symlink() {
            fs::set_permissions(&target, meta.permissions())?;
        }
    }
    Ok(())
}

fn set_mtimes(root: &Path, secs: i64) -> Result<()> {
    let status = Command::new("find")
        .arg(root)
        .args(["-exec", "touch", "-h", "-d", &format!("@{secs}"), "{}", "+"])
        .status()?;
    ensure!(status.success(), "touch failed");
    Ok(())
}

fn build_sample(
    sample: &str,
    src_root: &Path,
    out: &Path,
    umask: &str,
) -> Result<BTreeMap<String, String>> {
    // The build file's adds are relative to it: copy it beside the inputs.
    fs::copy(
        repo().join("examples").join(sample).join("build.toml"),
        src_root.join("build.toml"),
    )?;
    let out_ref = format!("oci:{}:v1", out.display());
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask {umask} && exec \"$0\" build --no-cache -f \"$1\" --out \"$2\"",
        ))
        .arg(env!("CARGO_BIN_EXE_oci-blocks"))
        .arg(src_root.join("build.toml"))
        .arg(&out_ref)
        .output()?;
    ensure!(status.status.success(), "build failed: {}", text(&status));
    ok(&["validate", &out_ref])?;
    blobs_of(out, "v1")
}

#[test]
fn builds_are_reproducible_whatever_the_order_mtimes_umask_and_directory() -> Result<()> {
    for sample in ["java-app", "python-app"] {
        let tmp = tempfile::tempdir()?;
        let (a, b) = (
            tmp.path().join("a/src"),
            tmp.path().join("elsewhere/deeper/src"),
        );
        copy_tree(&repo().join("examples").join(sample), &a, false)?;
        copy_tree(&repo().join("examples").join(sample), &b, true)?;
        set_mtimes(&a, 1_600_000_000)?;
        set_mtimes(&b, 1_700_000_000)?;
        let first = build_sample(sample, &a, &tmp.path().join("out-a"), "022")?;
        let second = build_sample(sample, &b, &tmp.path().join("out-b"), "077")?;
        ensure!(
            first == second,
            "{sample}: digests differ:\n{first:#?}\n{second:#?}"
        );
        ensure!(
            first.values().filter(|v| v.starts_with("block")).count() >= 4,
            "{sample}: {first:#?}"
        );
    }
    Ok(())
}

fn make_jar(path: &Path, group: &str, artifact: &str, version: &str) -> Result<()> {
    let mut zip = zip::ZipWriter::new(fs::File::create(path)?);
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .last_modified_time(zip::DateTime::default());
    zip.start_file("META-INF/MANIFEST.MF", opts)?;
    zip.write_all(b"Manifest-Version: 1.0\r\n\r\n")?;
    zip.start_file(
        format!("META-INF/maven/{group}/{artifact}/pom.properties"),
        opts,
    )?;
    write!(
        zip,
        "groupId={group}\nartifactId={artifact}\nversion={version}\n"
    )?;
    zip.start_file(format!("{artifact}/Lib.class"), opts)?;
    zip.write_all(
        format!("class bytes of {artifact} {version}")
            .repeat(50)
            .as_bytes(),
    )?;
    zip.finish()?;
    Ok(())
}

#[test]
fn two_applications_share_exactly_their_common_jars() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    for (app, last) in [("one", "only-in-one"), ("two", "only-in-two")] {
        let lib = tmp.path().join(app).join("lib");
        fs::create_dir_all(&lib)?;
        for i in 0..9 {
            make_jar(
                &lib.join(format!("shared-{i}-1.0.jar")),
                "org.example",
                &format!("shared-{i}"),
                "1.0",
            )?;
        }
        make_jar(
            &lib.join(format!("{last}-1.0.jar")),
            "org.example",
            last,
            "1.0",
        )?;
        fs::write(
            tmp.path().join(app).join("Main.class"),
            format!("main of {app}"),
        )?;
    }
    let mut blocks = Vec::new();
    for app in ["one", "two"] {
        let dir = tmp.path().join(app);
        let out = format!(
            "oci:{}:latest",
            tmp.path().join(format!("out-{app}")).display()
        );
        ok(&[
            "build",
            "--no-cache",
            "--add",
            &format!("{}:/app/lib", dir.join("lib").display()),
            "--add",
            &format!("{}:/app/Main.class", dir.join("Main.class").display()),
            "--out",
            &out,
        ])?;
        let b: BTreeMap<String, String> =
            blobs_of(&tmp.path().join(format!("out-{app}")), "latest")?
                .into_iter()
                .filter(|(_, v)| v.starts_with("block"))
                .collect();
        ensure!(b.len() == 10, "{app}: {b:#?}");
        blocks.push(b);
    }
    let shared: BTreeSet<&String> = blocks[0]
        .keys()
        .filter(|k| blocks[1].contains_key(*k))
        .collect();
    let shared_titles: BTreeSet<&str> = shared.iter().map(|k| blocks[0][*k].as_str()).collect();
    let expected: BTreeSet<String> = (0..9)
        .map(|i| format!("block shared-{i}-1.0.jar"))
        .collect();
    ensure!(
        shared_titles == expected.iter().map(String::as_str).collect(),
        "shared: {shared_titles:?}"
    );
    Ok(())
}

fn update_adds_only_the_changed_dependency(
    kind: &str,
    dest: &str,
    sub: &str,
    changed: &str,
) -> Result<()> {
    let dir = corpus(kind)?;
    let tmp = tempfile::tempdir()?;
    let out = tmp.path().join("out");
    let mut tags = Vec::new();
    for v in ["v1", "v2"] {
        let reference = format!("oci:{}:{v}", out.display());
        build_corpus_version(&dir, v, sub, dest, &reference)?;
        ok(&["validate", &reference])?;
        tags.push(blobs_of(&out, v)?);
    }
    let new: BTreeMap<&String, &String> = tags[1]
        .iter()
        .filter(|(k, _)| !tags[0].contains_key(*k))
        .collect();
    let kinds: Vec<&str> = new.values().map(|v| v.as_str()).collect();
    let blocks: Vec<&&str> = kinds.iter().filter(|k| k.starts_with("block")).collect();
    ensure!(
        kinds.iter().filter(|k| **k == "manifest").count() == 1
            && kinds.iter().filter(|k| **k == "config").count() == 1
            && kinds.iter().filter(|k| **k == "layer").count() == 1
            && blocks.len() == 1
            && blocks[0].contains(changed),
        "{kind}: new blobs for v2 should be one block ({changed}), the stub layer, config and manifest; found {new:#?}"
    );
    Ok(())
}

#[test]
#[ignore = "needs the corpus (apt-get, pip and the network); .ci/run runs it"]
fn java_corpus_update_ships_one_new_block() -> Result<()> {
    update_adds_only_the_changed_dependency("java", "/app/lib", "lib", "py4j0.10.9.9.jar")
}

#[test]
#[ignore = "needs the corpus (apt-get, pip and the network); .ci/run runs it"]
fn python_corpus_update_ships_one_new_block() -> Result<()> {
    update_adds_only_the_changed_dependency(
        "python",
        "/usr/lib/python3/site-packages",
        "site-packages",
        "attrs",
    )
}

fn check_materialized(
    adds: &[(&Path, &str)],
    transform: &dyn Fn(&Path, Vec<u8>) -> Vec<u8>,
    what: &str,
) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let out = tmp.path().join("out");
    let mut args = vec!["build".to_string(), "--no-cache".into()];
    for (src, dest) in adds {
        args.push("--add".into());
        args.push(format!("{}:{dest}", src.display()));
    }
    args.push("--out".into());
    args.push(format!("oci:{}:t", out.display()));
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
    let root = tmp.path().join("rootfs");
    materialize(&out, "t", &root)?;
    assert_same(&expected_tree(adds, transform)?, &tree(&root)?, what)
}

#[test]
fn materialized_samples_equal_their_inputs() -> Result<()> {
    let java = repo().join("examples/java-app");
    check_materialized(
        &[
            (&java.join("lib"), "/app/lib"),
            (&java.join("app"), "/app/classes"),
        ],
        &|_, b| b,
        "java-app",
    )?;
    let py = repo().join("examples/python-app");
    check_materialized(
        &[
            (
                &py.join("site-packages"),
                "/usr/local/lib/python3.11/site-packages",
            ),
            (&py.join("bin"), "/usr/local/bin"),
        ],
        &|_, b| b,
        "python-app",
    )
}

#[test]
#[ignore = "needs the corpus (apt-get, pip and the network); .ci/run runs it"]
fn materialized_python_corpus_equals_its_input_with_canonical_pyc() -> Result<()> {
    let dir = corpus("python")?;
    let site = dir.join("v1/site-packages");
    check_materialized(
        &[(&site, "/usr/lib/python3/site-packages")],
        &canonical_pyc_of(&site),
        "python corpus",
    )
}

#[test]
fn a_rebuild_of_unchanged_inputs_is_served_by_the_cache() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let cache = tmp.path().join("cache");
    let src = tmp.path().join("java-app");
    copy_tree(&repo().join("examples/java-app"), &src, false)?;
    let out = format!("oci:{}:latest", tmp.path().join("out").display());
    let file = src.join("build.toml");
    let run = || -> Result<serde_json::Value> {
        let out = oci_blocks(&[
            "build",
            "-f",
            file.to_str().context("utf-8")?,
            "--cache-dir",
            cache.to_str().context("utf-8")?,
            "--out",
            &out,
            "--json",
        ])?;
        ensure!(out.status.success(), "{}", text(&out));
        Ok(serde_json::from_slice(&out.stdout)?)
    };
    let (cold, warm) = (run()?, run()?);
    let cached = |r: &serde_json::Value| {
        r["platforms"][0]["blocks"]
            .as_array()
            .map(|b| b.iter().filter(|b| b["cached"] == true).count())
    };
    ensure!(
        cached(&cold) == Some(0) && cached(&warm) == Some(4),
        "cold {cold}\nwarm {warm}"
    );
    let field = |r: &serde_json::Value, k: &str| r["platforms"][0][k].clone();
    ensure!(
        field(&cold, "manifest") == field(&warm, "manifest")
            && field(&cold, "legacy_manifest") == field(&warm, "legacy_manifest"),
        "the cache changed the image"
    );
    // A changed jar changes its block and the cached legacy layer with it.
    fs::copy(
        src.join("lib/greeting-format-0.9.1.jar"),
        src.join("lib/strings-3.4.0.jar"),
    )?;
    let changed = run()?;
    ensure!(cached(&changed) == Some(3), "{changed}");
    ensure!(
        field(&changed, "legacy_manifest") != field(&warm, "legacy_manifest"),
        "a stale legacy layer was reused from the cache"
    );
    ok(&["validate", &out])?;
    Ok(())
}

#[test]
fn a_base_image_is_reused_byte_for_byte_and_its_config_inherited() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (base_dir, base) = build_python_base(tmp.path())?;
    let out_dir = tmp.path().join("app");
    let app = format!("oci:{}:app", out_dir.display());
    ok(&[
        "build",
        "--no-cache",
        "--base",
        &base,
        "--add",
        "examples/java-app/lib:/app/lib",
        "--env",
        "APP_ENV=override",
        "--out",
        &app,
    ])?;
    ok(&["validate", &app])?;
    let (b, a) = (blobs_of(&base_dir, "base")?, blobs_of(&out_dir, "app")?);
    for (digest, kind) in &b {
        if kind == "layer" || kind.starts_with("block") {
            ensure!(a.contains_key(digest), "base {kind} {digest} not reused");
        }
    }
    let json: serde_json::Value =
        serde_json::from_slice(&oci_blocks(&["inspect", "--json", &app])?.stdout)?;
    let config_digest = json["info"]["manifests"][0]["config"]
        .as_str()
        .context("config")?;
    let config: serde_json::Value = serde_json::from_slice(&fs::read(
        out_dir
            .join("blobs/sha256")
            .join(config_digest.trim_start_matches("sha256:")),
    )?)?;
    let env: Vec<&str> = config["config"]["Env"]
        .as_array()
        .context("env")?
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    ensure!(
        env.contains(&"APP_ENV=override") && !env.contains(&"APP_ENV=sample"),
        "{env:?}"
    );
    ensure!(
        config["config"]["Entrypoint"][0] == "python3",
        "entrypoint not inherited: {config}"
    );
    ensure!(
        config["rootfs"]["diff_ids"].as_array().map(Vec::len) == Some(4),
        "{config}"
    );
    Ok(())
}

/// The Python sample built as a base image under `dir`: its layout and reference.
fn build_python_base(dir: &Path) -> Result<(PathBuf, String)> {
    let base_dir = dir.join("base");
    let base = format!("oci:{}:base", base_dir.display());
    ok(&[
        "build",
        "--no-cache",
        "-f",
        "examples/python-app/build.toml",
        "--out",
        &base,
    ])?;
    Ok((base_dir, base))
}

fn fails_naming(args: &[&str], needles: &[&str]) -> Result<()> {
    let out = oci_blocks(args)?;
    let t = text(&out);
    ensure!(
        out.status.code() == Some(2),
        "{args:?}: exit {:?}: {t}",
        out.status.code()
    );
    for n in needles {
        ensure!(t.contains(n), "{args:?}: {n:?} not in: {t}");
    }
    Ok(())
}

#[test]
fn bad_input_is_refused_with_the_path_and_the_reason_and_nothing_tagged() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let out_dir = tmp.path().join("out");
    let out = format!("oci:{}:t", out_dir.display());
    let lib = "examples/java-app/lib";
    fails_naming(
        &[
            "build",
            "--no-cache",
            "--add",
            "no/such/dir:/app",
            "--out",
            &out,
        ],
        &["no/such/dir", "no such file"],
    )?;
    fails_naming(
        &[
            "build",
            "--no-cache",
            "--add",
            &format!("{lib}:app/lib"),
            "--out",
            &out,
        ],
        &["\"app/lib\"", "not an absolute path"],
    )?;
    fails_naming(
        &[
            "build",
            "--no-cache",
            "--add",
            &format!("{lib}:/x"),
            "--add",
            &format!("{lib}:/x/"),
            "--out",
            &out,
        ],
        &["/x", "two --add"],
    )?;

    let bad = tmp.path().join("bad");
    fs::create_dir_all(&bad)?;
    fs::write(bad.join("broken-1.0.jar"), b"this is not a zip archive")?;
    fails_naming(
        &[
            "build",
            "--no-cache",
            "--add",
            &format!("{}:/app", bad.display()),
            "--out",
            &out,
        ],
        &["broken-1.0.jar", "malformed jar"],
    )?;
    fs::remove_file(bad.join("broken-1.0.jar"))?;

    let site = bad.join("site");
    fs::create_dir_all(site.join("pkg-1.0.dist-info"))?;
    fs::write(
        site.join("pkg-1.0.dist-info/METADATA"),
        "Name: pkg\nVersion: 1.0\n",
    )?;
    fs::write(
        site.join("pkg-1.0.dist-info/RECORD"),
        "pkg/__init__.py,sha256=x\n",
    )?;
    fails_naming(
        &[
            "build",
            "--no-cache",
            "--add",
            &format!("{}:/site", site.display()),
            "--out",
            &out,
        ],
        &["RECORD", "line 1", "2 fields"],
    )?;

    let looped = tmp.path().join("loop");
    std::os::unix::fs::symlink(&looped, &looped)?;
    fails_naming(
        &[
            "build",
            "--no-cache",
            "--add",
            &format!("{}:/app", looped.display()),
            "--out",
            &out,
        ],
        &["loop"],
    )?;

    let fifo = tmp.path().join("withfifo");
    fs::create_dir_all(&fifo)?;
    let st = Command::new("mkfifo").arg(fifo.join("pipe")).status()?;
    ensure!(st.success());
    fails_naming(
        &[
            "build",
            "--no-cache",
            "--add",
            &format!("{}:/app", fifo.display()),
            "--out",
            &out,
        ],
        &["pipe", "named pipe"],
    )?;

    // A base that is not a valid image: one flipped byte in a layer.
    let base_dir = tmp.path().join("base");
    ok(&[
        "build",
        "--no-cache",
        "-f",
        "examples/java-app/build.toml",
        "--out",
        &format!("oci:{}:b", base_dir.display()),
    ])?;
    let layer = blobs_of(&base_dir, "b")?
        .into_iter()
        .find(|(_, k)| k == "layer")
        .context("a layer")?
        .0;
    let path = base_dir
        .join("blobs/sha256")
        .join(layer.trim_start_matches("sha256:"));
    let mut bytes = fs::read(&path)?;
    bytes[20] ^= 1;
    fs::write(&path, bytes)?;
    fails_naming(
        &[
            "build",
            "--no-cache",
            "--base",
            &format!("oci:{}:b", base_dir.display()),
            "--add",
            &format!("{lib}:/lib"),
            "--out",
            &out,
        ],
        &["base image", "is not valid", &layer],
    )?;

    // Nothing was ever tagged in the output.
    if out_dir.join("index.json").exists() {
        let index = fs::read_to_string(out_dir.join("index.json"))?;
        ensure!(
            !index.contains("\"t\""),
            "a failed build tagged its output: {index}"
        );
    }
    let _ = fs::set_permissions(&bad, fs::Permissions::from_mode(0o755));
    Ok(())
}

#[test]
fn block_globs_make_blocks_and_small_files_stay_in_the_layer() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("models/big"))?;
    fs::write(src.join("models/big/weights.bin"), vec![7u8; 100_000])?;
    fs::write(src.join("models/big/config.json"), b"{}")?;
    fs::write(src.join("models/tiny.bin"), b"tiny")?;
    fs::write(src.join("README"), b"readme")?;
    let out_dir = tmp.path().join("out");
    let out = format!("oci:{}:g", out_dir.display());
    let add = format!("{}:/srv", src.display());
    ok(&[
        "build",
        "--no-cache",
        "--add",
        &add,
        "--block",
        "models/*",
        "--block-min-size",
        "1000",
        "--out",
        &out,
    ])?;
    ok(&["validate", &out])?;
    let json: serde_json::Value =
        serde_json::from_slice(&oci_blocks(&["inspect", "--json", &out])?.stdout)?;
    let m = json["info"]["manifests"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["kind"] == "blocks-manifest"))
        .context("a blocks manifest")?;
    let titles: Vec<&str> = m["blocks"]
        .as_array()
        .context("blocks")?
        .iter()
        .filter_map(|b| b["annotations"]["org.opencontainers.image.title"].as_str())
        .collect();
    ensure!(
        titles == ["big"],
        "the directory models/big is one block, tiny.bin stays: {titles:?}"
    );
    let imports: Vec<&str> = m["layers"][0]["imports"]
        .as_array()
        .context("imports")?
        .iter()
        .filter_map(|i| i["target"].as_str())
        .collect();
    ensure!(imports == ["srv/models/big"], "{imports:?}");
    let root = tmp.path().join("rootfs");
    materialize(&out_dir, "g", &root)?;
    assert_same(
        &expected_tree(&[(&src, "/srv")], &|_, b| b)?,
        &tree(&root)?,
        "glob build",
    )?;

    // A glob that claims a path a Python distribution owns is a configuration error.
    let py = repo().join("examples/python-app/site-packages");
    fails_naming(
        &[
            "build",
            "--no-cache",
            "--add",
            &format!("{}:/sp", py.display()),
            "--block",
            "greeting",
            "--out",
            &out,
        ],
        &["greeting", "claimed by two block rules"],
    )
}

#[test]
fn max_layers_merges_added_layers_and_keeps_the_tree() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut adds = Vec::new();
    for i in 0..130 {
        let dir = tmp.path().join(format!("in/{i:03}"));
        fs::create_dir_all(dir.join("nested"))?;
        if i % 2 == 0 {
            fs::write(dir.join("nested/shared.txt"), format!("written by {i}\n"))?;
            fs::write(dir.join("data.txt"), format!("layer {i}\n"))?;
            if i % 10 == 0 {
                make_jar(
                    &dir.join(format!("dep-{i}.jar")),
                    "org.example",
                    &format!("dep-{i}"),
                    "1.0",
                )?;
            }
            adds.push(format!("{}:/opt/d{i}", dir.display()));
        } else {
            // Odd layers land inside the previous one: they overwrite its files.
            fs::write(dir.join("shared.txt"), format!("written by {i}\n"))?;
            adds.push(format!("{}:/opt/d{}/nested", dir.display(), i - 1));
        }
    }
    let build = |dir: &str, extra: &[&str]| -> Result<serde_json::Value> {
        let mut args = vec![
            "build",
            "--no-cache",
            "--fallback",
            "none",
            "--json",
            "--out",
        ];
        let out = format!("oci:{}:t", tmp.path().join(dir).display());
        args.push(&out);
        for a in &adds {
            args.push("--add");
            args.push(a);
        }
        args.extend_from_slice(extra);
        let o = oci_blocks(&args)?;
        ensure!(o.status.success(), "{}", text(&o));
        ok(&["validate", &out])?;
        Ok(serde_json::from_slice(&o.stdout)?)
    };
    let uncapped = build("uncapped", &[]).context("uncapped build")?;
    ensure!(uncapped["platforms"][0]["layers"].as_array().map(Vec::len) == Some(130));
    let capped = build("capped", &["--max-layers", "127"])?;
    ensure!(
        capped["platforms"][0]["layers"].as_array().map(Vec::len) == Some(127),
        "{}",
        capped["platforms"][0]["layers"]
    );
    ensure!(
        capped["platforms"][0]["merged"][0].as_array().map(Vec::len) == Some(4),
        "{}",
        capped["platforms"][0]["merged"]
    );
    let (a, b) = (tmp.path().join("root-a"), tmp.path().join("root-b"));
    materialize(&tmp.path().join("uncapped"), "t", &a)?;
    materialize(&tmp.path().join("capped"), "t", &b)?;
    assert_same(
        &describe(&a, &|_, x| x)?,
        &describe(&b, &|_, x| x)?,
        "capped against uncapped",
    )?;
    let tree = describe(&b, &|_, x| x)?;
    ensure!(
        tree.get("opt/d0/nested/shared.txt")
            .map(|n| n.content.clone())
            == Some(oci_blocks_core::Digest::sha256(b"written by 1\n").to_string()),
        "the later layer's file must win: {:?}",
        tree.get("opt/d0/nested/shared.txt")
    );
    // A cap below what the added layers need is refused.
    fails_naming(
        &[
            "build",
            "--no-cache",
            "--add",
            &adds[0],
            "--max-layers",
            "0",
            "--out",
            &format!("oci:{}:x", tmp.path().join("x").display()),
        ],
        &["--max-layers 0", "at least 1"],
    )
}

#[test]
fn sparse_output_omits_exactly_the_base_blobs() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (base_dir, base) = build_python_base(tmp.path())?;
    let out_dir = tmp.path().join("app");
    let app = format!("oci:{}:app", out_dir.display());
    ok(&[
        "build",
        "--no-cache",
        "--sparse",
        "--base",
        &base,
        "--add",
        "examples/java-app/lib:/app/lib",
        "--out",
        &app,
    ])?;
    let base_blobs: BTreeSet<String> = fs::read_dir(base_dir.join("blobs/sha256"))?
        .filter_map(|e| e.ok())
        .map(|e| format!("sha256:{}", e.file_name().to_string_lossy()))
        .collect();
    // Every blob of the base that the app's images reference (layers, blocks,
    // legacy layers), and only those, is absent.
    let present: BTreeSet<String> = fs::read_dir(out_dir.join("blobs/sha256"))?
        .filter_map(|e| e.ok())
        .map(|e| format!("sha256:{}", e.file_name().to_string_lossy()))
        .collect();
    let out = oci_blocks(&["validate", "--json", &app])?;
    ensure!(
        out.status.success(),
        "a sparse layout is valid: {}",
        text(&out)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let absent: BTreeSet<String> = json["violations"]
        .as_array()
        .context("violations")?
        .iter()
        .filter(|v| v["rule"] == "blob.absent-sparse")
        .filter_map(|v| {
            v["message"]
                .as_str()?
                .split_whitespace()
                .nth(1)
                .map(str::to_string)
        })
        .collect();
    let base_referenced: BTreeSet<String> = {
        let b = blobs_of(&base_dir, "base")?;
        let layout = oci_blocks_core::layout::OciDir::open(&base_dir)?;
        let (_, legacy) = manifest_of(&layout, "base", "legacy")?;
        b.into_iter()
            .filter(|(_, k)| k == "layer" || k.starts_with("block"))
            .map(|(d, _)| d)
            .chain(legacy.layers().iter().map(|l| l.digest().to_string()))
            .collect()
    };
    ensure!(
        absent == base_referenced,
        "absent {absent:#?}\nbase {base_referenced:#?}"
    );
    ensure!(
        absent
            .iter()
            .all(|d| !present.contains(d) && base_blobs.contains(d))
    );
    // --sparse needs a base.
    fails_naming(
        &[
            "build",
            "--no-cache",
            "--sparse",
            "--add",
            "examples/java-app/lib:/lib",
            "--out",
            &app,
        ],
        &["--sparse", "no --base"],
    )
}

/// The Python corpus's v1 set installed for linux/arm64 (wheels for aarch64,
/// the same pure-Python wheels), made once under target/.
fn python_corpus_arm64() -> Result<PathBuf> {
    let dir = repo().join("target/corpus/python-arm64");
    if dir.join("site-packages").is_dir() {
        return Ok(dir);
    }
    let script = fs::read_to_string(repo().join("benches/corpus/python-env.sh"))?;
    let set = script
        .split("v1=(")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .context("v1 in python-env.sh")?;
    let tmp = dir.with_extension("tmp");
    let _ = fs::remove_dir_all(&tmp);
    let mut cmd = Command::new("python3");
    cmd.args([
        "-m",
        "pip",
        "install",
        "-q",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        "3.11",
        "--implementation",
        "cp",
    ])
    .args([
        "--platform",
        "manylinux2014_aarch64",
        "--platform",
        "manylinux_2_28_aarch64",
        "--platform",
        "manylinux_2_17_aarch64",
    ])
    .arg("--target")
    .arg(tmp.join("site-packages"))
    .args(set.split_whitespace());
    let out = cmd.output()?;
    ensure!(
        out.status.success(),
        "cannot install the arm64 Python set: {}",
        text(&out)
    );
    fs::rename(&tmp, &dir)?;
    Ok(dir)
}

#[test]
#[ignore = "needs the corpus (apt-get, pip and the network); .ci/run runs it"]
fn a_two_platform_python_build_shares_every_pure_python_block() -> Result<()> {
    let (amd64, arm64) = (corpus("python")?, python_corpus_arm64()?);
    let amd64 = amd64.join("v1/site-packages");
    let arm64 = arm64.join("site-packages");
    let tmp = tempfile::tempdir()?;
    let out = format!("oci:{}:multi", tmp.path().join("out").display());
    let dest = "/usr/lib/python3/site-packages";
    let o = oci_blocks(&[
        "build",
        "--no-cache",
        "--json",
        "--out",
        &out,
        "--platform",
        "linux/amd64",
        "--platform",
        "linux/arm64",
        "--add-for",
        "linux/amd64",
        &format!("{}:{dest}", amd64.display()),
        "--add-for",
        "linux/arm64",
        &format!("{}:{dest}", arm64.display()),
    ])?;
    ensure!(o.status.success(), "{}", text(&o));
    ok(&["validate", &out])?;
    let report: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    let blocks = |i: usize| -> BTreeMap<String, String> {
        report["platforms"][i]["blocks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|b| {
                Some((
                    b["annotations"]["io.oci-blocks.python.distribution"]
                        .as_str()?
                        .to_string(),
                    b["digest"].as_str()?.to_string(),
                ))
            })
            .collect()
    };
    let (a, b) = (blocks(0), blocks(1));
    ensure!(a.len() == 12 && b.len() == 12, "{a:#?} {b:#?}");
    // Pure-Python distributions say so in their WHEEL file.
    let mut pure = BTreeSet::new();
    for e in fs::read_dir(&amd64)? {
        let e = e?;
        let wheel = e.path().join("WHEEL");
        if wheel.is_file() && fs::read_to_string(&wheel)?.contains("Root-Is-Purelib: true") {
            let meta = fs::read_to_string(e.path().join("METADATA"))?;
            let field = |k: &str| {
                meta.lines()
                    .find_map(|l| l.strip_prefix(k))
                    .map(|v| v.trim().to_string())
            };
            pure.insert(format!(
                "{}=={}",
                field("Name:").context("Name")?,
                field("Version:").context("Version")?
            ));
        }
    }
    ensure!(pure.len() >= 6, "pure distributions: {pure:?}");
    let shared: BTreeSet<String> = a
        .iter()
        .filter(|(k, v)| b.get(*k) == Some(v))
        .map(|(k, _)| k.clone())
        .collect();
    ensure!(
        shared == pure,
        "shared blocks {shared:?}, pure-Python distributions {pure:?}"
    );
    let inspect = ok(&["inspect", &out])?;
    ensure!(
        inspect.contains(&format!("shared across platforms: {} blocks", pure.len())),
        "{inspect}"
    );

    // A platform given twice, and --add-for a platform not being built, are refused.
    let add = format!("{}:{dest}", amd64.display());
    fails_naming(
        &[
            "build",
            "--no-cache",
            "--platform",
            "linux/amd64",
            "--platform",
            "linux/amd64",
            "--add",
            &add,
            "--out",
            &out,
        ],
        &["linux/amd64", "twice"],
    )?;
    fails_naming(
        &[
            "build",
            "--no-cache",
            "--platform",
            "linux/amd64",
            "--add-for",
            "linux/s390x",
            &add,
            "--out",
            &out,
        ],
        &["linux/s390x", "not a platform being built"],
    )
}

#[test]
fn max_layers_below_the_base_layers_is_refused() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (_, base) = build_python_base(tmp.path())?;
    let out = format!("oci:{}:x", tmp.path().join("x").display());
    fails_naming(
        &[
            "build",
            "--no-cache",
            "--base",
            &base,
            "--add",
            "examples/java-app/lib:/lib",
            "--max-layers",
            "3",
            "--out",
            &out,
        ],
        &[
            "--max-layers 3",
            "the base image has 3 layers",
            "at least 4",
        ],
    )?;
    ok(&[
        "build",
        "--no-cache",
        "--base",
        &base,
        "--add",
        "examples/java-app/lib:/lib",
        "--add",
        "examples/java-app/app:/classes",
        "--max-layers",
        "4",
        "--out",
        &out,
    ])?;
    ok(&["validate", &out])?;
    Ok(())
}

/// A 24-distribution environment (numpy, pandas, pydantic-core, SQLAlchemy,
/// Flask...) installed twice with `pip install --target`, the second bumping
/// only requests: the update adds requests' block and nothing else.
#[test]
#[ignore = "needs pip and PyPI for the corpus; .ci/run runs it"]
fn a_real_python_environment_updates_by_one_block() -> Result<()> {
    let dir = corpus("python-large")?;
    let tmp = tempfile::tempdir()?;
    let mut blocks = Vec::new();
    for v in ["v1", "v2"] {
        let out = oci_blocks(&[
            "build",
            "--no-cache",
            "--json",
            "--add",
            &format!(
                "{}:/usr/lib/python3/site-packages",
                dir.join(v).join("site-packages").display()
            ),
            "--out",
            &format!("oci:{}:latest", tmp.path().join(v).display()),
        ])?;
        ensure!(out.status.success(), "{}", text(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let listed: BTreeMap<String, (u64, String)> = report["platforms"][0]["blocks"]
            .as_array()
            .context("blocks")?
            .iter()
            .map(|b| {
                (
                    b["digest"].as_str().unwrap_or_default().to_string(),
                    (
                        b["size"].as_u64().unwrap_or_default(),
                        b["annotations"]["io.oci-blocks.python.distribution"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                    ),
                )
            })
            .collect();
        blocks.push(listed);
    }
    ensure!(blocks[0].len() == 24, "{} blocks", blocks[0].len());
    let new: Vec<&(u64, String)> = blocks[1]
        .iter()
        .filter(|(d, _)| !blocks[0].contains_key(*d))
        .map(|(_, b)| b)
        .collect();
    ensure!(
        new.len() == 1 && new[0].1 == "requests==2.32.3",
        "the update adds only requests' block: {new:?}"
    );
    Ok(())
}

/// pandas and what it needs installed in six separate `pip install --target`
/// runs, each in its own random temporary directory, give byte-identical
/// blocks.
#[test]
#[ignore = "needs pip and PyPI; .ci/run runs it"]
fn separate_pip_installs_give_identical_blocks() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let set = [
        "pandas==2.2.2",
        "numpy==1.26.4",
        "python-dateutil==2.9.0.post0",
        "pytz==2024.1",
        "six==1.16.0",
    ];
    let mut runs: Vec<BTreeMap<String, String>> = Vec::new();
    for i in 0..6 {
        let site = tmp.path().join(format!("run{i}/site-packages"));
        let out = Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "-q",
                "--no-deps",
                "--only-binary=:all:",
                "--target",
            ])
            .arg(&site)
            .args(set)
            .output()?;
        ensure!(out.status.success(), "pip: {}", text(&out));
        let out = oci_blocks(&[
            "build",
            "--no-cache",
            "--json",
            "--add",
            &format!("{}:/app/site-packages", site.display()),
            "--out",
            &format!(
                "oci:{}:latest",
                tmp.path().join(format!("img{i}")).display()
            ),
        ])?;
        ensure!(out.status.success(), "{}", text(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        runs.push(
            report["platforms"][0]["blocks"]
                .as_array()
                .context("blocks")?
                .iter()
                .map(|b| {
                    (
                        b["annotations"]["io.oci-blocks.python.distribution"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                        b["digest"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect(),
        );
    }
    ensure!(runs[0].len() == set.len(), "{:?}", runs[0]);
    for (i, r) in runs.iter().enumerate().skip(1) {
        ensure!(r == &runs[0], "run {i} differs: {r:?} vs {:?}", runs[0]);
    }
    Ok(())
}

/// A build that fails after it has written blocks leaves nothing at `--out`,
/// and no staging directory beside it; an existing layout keeps its tags.
#[test]
fn a_failed_build_leaves_nothing_behind() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let out = tmp.path().join("out");
    let jars = repo().join("examples/java-app/lib");
    // The first platform builds (its blocks are written), the second's add
    // does not exist.
    let failed = oci_blocks(&[
        "build",
        "--platform",
        "linux/amd64",
        "--platform",
        "linux/arm64",
        "--add",
        &format!("{}:/app/lib", jars.display()),
        "--add-for",
        "linux/arm64",
        &format!("{}:/opt", tmp.path().join("missing").display()),
        "--out",
        &format!("oci:{}:v1", out.display()),
    ])?;
    ensure!(!failed.status.success(), "{}", text(&failed));
    ensure!(text(&failed).contains("missing"), "{}", text(&failed));
    let left: Vec<String> = fs::read_dir(tmp.path())?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    ensure!(left.is_empty(), "left behind: {left:?}");
    // Into an existing layout: it keeps what it had.
    let good = oci_blocks(&[
        "build",
        "--add",
        &format!("{}:/app/lib", jars.display()),
        "--out",
        &format!("oci:{}:v1", out.display()),
    ])?;
    ensure!(good.status.success(), "{}", text(&good));
    let index = fs::read(out.join("index.json"))?;
    let failed = oci_blocks(&[
        "build",
        "--add",
        &format!("{}:/opt", tmp.path().join("missing").display()),
        "--out",
        &format!("oci:{}:v2", out.display()),
    ])?;
    ensure!(!failed.status.success());
    ensure!(
        fs::read(out.join("index.json"))? == index,
        "index.json changed"
    );
    // A directory that is not a layout is refused, untouched.
    let other = tmp.path().join("notes");
    fs::create_dir(&other)?;
    fs::write(other.join("todo.txt"), "mine")?;
    let refused = oci_blocks(&[
        "build",
        "--add",
        &format!("{}:/app/lib", jars.display()),
        "--out",
        &format!("oci:{}", other.display()),
    ])?;
    ensure!(
        !refused.status.success() && text(&refused).contains("not an OCI image layout"),
        "{}",
        text(&refused)
    );
    ensure!(fs::read_dir(&other)?.count() == 1, "the directory changed");
    Ok(())
}

/// On a two-platform base, `--platform linux/arm64` builds on the base's
/// arm64 blocks manifest (its blocks stay blocks), not on its legacy
/// manifest; without `--platform`, on this machine's.
#[test]
fn a_build_on_a_multi_platform_base_takes_the_platforms_blocks_manifest() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let jars = repo().join("examples/java-app/lib");
    let arm_only = tmp.path().join("arm-only");
    fs::create_dir_all(&arm_only)?;
    fs::copy(
        jars.join("strings-3.4.0.jar"),
        arm_only.join("native-arm64.jar"),
    )?;
    let base = format!("oci:{}:base", tmp.path().join("base").display());
    ok(&[
        "build",
        "--platform",
        "linux/amd64",
        "--platform",
        "linux/arm64",
        "--add",
        &format!("{}:/app/lib", jars.display()),
        "--add-for",
        "linux/arm64",
        &format!("{}:/opt/native", arm_only.display()),
        "--out",
        &base,
    ])?;
    let app = tmp.path().join("app");
    fs::create_dir_all(&app)?;
    fs::write(app.join("main.txt"), "the application")?;
    let build_on = |platform: Option<&str>, tag: &str| -> Result<serde_json::Value> {
        let out = format!("oci:{}:{tag}", tmp.path().join("out").display());
        let mut args = vec!["build", "--json", "--base", &base];
        if let Some(p) = platform {
            args.extend(["--platform", p]);
        }
        let add = format!("{}:/app/main", app.display());
        args.extend(["--add", &add, "--out", &out]);
        let o = oci_blocks(&args)?;
        ensure!(o.status.success(), "{}", text(&o));
        Ok(serde_json::from_slice(&o.stdout)?)
    };
    let arm = build_on(Some("linux/arm64"), "arm")?;
    ensure!(arm["platforms"][0]["platform"] == "linux/arm64", "{arm}");
    // The base's blocks manifest for arm64 imports five jars: they stay
    // blocks of the new image, the arm64-only one among them.
    let layout = oci_blocks_core::layout::OciDir::open(tmp.path().join("out"))?;
    let manifest = manifest_of(&layout, "arm", "blocks")?.1;
    let titles: Vec<String> = manifest
        .blocks()
        .iter()
        .filter_map(|b| {
            b.annotations()
                .as_ref()?
                .get("org.opencontainers.image.title")
                .cloned()
        })
        .collect();
    ensure!(
        manifest.blocks().len() == 5,
        "blocks of the arm64 base: {titles:?}"
    );
    let host = build_on(None, "host")?;
    ensure!(
        host["platforms"][0]["platform"] == oci_blocks_core::platform::Platform::host().to_string(),
        "{host}"
    );
    Ok(())
}

/// Rewrites the legacy manifest of the Python sample the way umoci 0.4.7
/// writes its images: no `mediaType` in the manifest or in `index.json`
/// (image-spec: SHOULD). Returns the layout directory and the tag `plain`.
fn plain_without_media_types(dir: &Path) -> Result<(PathBuf, String)> {
    let (base_dir, _) = build_python_base(dir)?;
    let layout = oci_blocks_core::layout::OciDir::open(&base_dir)?;
    let (legacy, _) = manifest_of(&layout, "base", "legacy")?;
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&layout.read_json_blob(&legacy, None)?)?;
    ensure!(manifest["mediaType"].is_string(), "{manifest}");
    manifest
        .as_object_mut()
        .context("manifest")?
        .remove("mediaType");
    let bytes = serde_json::to_vec(&manifest)?;
    let (digest, size) = layout.write_blob_bytes(&bytes)?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": oci_blocks_core::names::OCI_MANIFEST,
            "digest": digest.to_string(),
            "size": size,
            "annotations": {"org.opencontainers.image.ref.name": "plain"},
        }],
    });
    fs::write(base_dir.join("index.json"), serde_json::to_vec(&index)?)?;
    let reference = format!("oci:{}:plain", base_dir.display());
    Ok((base_dir, reference))
}

#[test]
fn an_image_without_media_types_validates_inspects_and_serves_as_a_base() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (_, plain) = plain_without_media_types(tmp.path())?;
    let out = oci_blocks(&["validate", &plain])?;
    let t = text(&out);
    ensure!(out.status.success(), "validate refused it: {t}");
    ensure!(t.contains("manifest.media-type-missing"), "no warning: {t}");
    let out = oci_blocks(&["inspect", &plain])?;
    ensure!(out.status.success(), "inspect refused it: {}", text(&out));

    let app = format!("oci:{}:app", tmp.path().join("app").display());
    ok(&[
        "build",
        "--no-cache",
        "--base",
        &plain,
        "--add",
        "examples/java-app/lib:/app/lib",
        "--out",
        &app,
    ])?;
    ok(&["validate", &app])?;
    let root = tmp.path().join("root");
    let store = tmp.path().join("store");
    ok(&[
        "unpack",
        "--store",
        &store.display().to_string(),
        &app,
        &root.display().to_string(),
    ])?;
    // The base's files and the added jars are both there.
    let jar = fs::read(root.join("app/lib/strings-3.4.0.jar"))?;
    ensure!(jar == fs::read(repo().join("examples/java-app/lib/strings-3.4.0.jar"))?);
    let site = root.join("usr/local/lib/python3.11/site-packages");
    ensure!(site.is_dir(), "base layers missing from {}", root.display());
    Ok(())
}
