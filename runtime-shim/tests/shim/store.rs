//! The block store through `oci-blocks-shim`: shared blocks are extracted
//! once, `store` reports which root filesystems use which blocks, and
//! `store reclaim` removes exactly the blocks no remaining root filesystem uses.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use anyhow::{Context, Result, ensure};
use oci_blocks_fixture::{self as fixture, ImageSpec};
use oci_blocks_shim::store::BlockStore;

fn shim(args: &[&str]) -> Result<Output> {
    Ok(Command::new(env!("CARGO_BIN_EXE_oci-blocks-shim"))
        .args(args)
        .output()?)
}

fn json(args: &[&str]) -> Result<serde_json::Value> {
    let out = shim(args)?;
    ensure!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// An image importing one file from each named block.
fn image(dir: &Path, blocks: &[&str]) -> Result<Vec<String>> {
    let mut toml = String::from("description = \"store test\"\n");
    let mut entries = Vec::new();
    for b in blocks {
        toml += &format!(
            "[[blocks]]\nname = \"{b}\"\nentries = [{{ path = \"{b}.jar\", content = \"content of {b}\" }}]\n"
        );
        entries.push(format!(
            "{{ path = \"lib/.import.{b}.jar\", content = \"/{b}.jar from {{block:{b}}}\" }}"
        ));
    }
    toml += &format!(
        "[[layers]]\nmedia_type = \"import\"\nentries = [{}]\n",
        entries.join(", ")
    );
    let built = fixture::build(&ImageSpec::from_toml(&toml, "store test")?, dir, "latest")?;
    Ok(blocks
        .iter()
        .map(|b| built.blocks[*b].to_string())
        .collect())
}

fn unpack(image: &Path, rootfs: &Path, store: &Path) -> Result<serde_json::Value> {
    json(&[
        "unpack",
        "--store",
        &store.display().to_string(),
        &format!("oci:{}:latest", image.display()),
        &rootfs.display().to_string(),
    ])
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn reclaim_removes_only_the_blocks_no_remaining_rootfs_uses() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let t = tmp.path();
    let store = t.join("store");
    let s = store.display().to_string();
    let a = image(&t.join("a"), &["x", "y"])?;
    let b = image(&t.join("b"), &["y", "z"])?;
    let (x, y, z) = (&a[0], &a[1], &b[1]);

    let first = unpack(&t.join("a"), &t.join("r1"), &store)?;
    ensure!(strings(&first["blocks_extracted"]).len() == 2);
    let second = unpack(&t.join("b"), &t.join("r2"), &store)?;
    ensure!(
        strings(&second["blocks_extracted"]) == [z.clone()]
            && strings(&second["blocks_reused"]) == [y.clone()],
        "the shared block is extracted once: {second}"
    );
    ensure!(fs::read_to_string(t.join("r2/lib/y.jar"))? == "content of y");

    let listed = json(&["store", "--store", &s, "--json"])?;
    let users = |d: &str| {
        listed["blocks"]
            .as_array()
            .and_then(|bs| bs.iter().find(|b| b["digest"] == d))
            .and_then(|b| b["users"].as_u64())
    };
    ensure!(
        users(x) == Some(1) && users(y) == Some(2) && users(z) == Some(1),
        "{listed}"
    );

    let dry = json(&["store", "--store", &s, "--json", "reclaim", "--dry-run"])?;
    ensure!(dry["blocks"].as_array().is_some_and(Vec::is_empty), "{dry}");

    // The first root filesystem is deleted: only x is no longer used.
    fs::remove_dir_all(t.join("r1"))?;
    let dry = json(&["store", "--store", &s, "--json", "reclaim", "--dry-run"])?;
    ensure!(
        dry["blocks"][0][0] == x.as_str() && dry["blocks"].as_array().map(Vec::len) == Some(1),
        "{dry}"
    );
    ensure!(
        BlockStore::open(&store)?.blocks()?.len() == 3,
        "a dry run removes nothing"
    );
    // An extraction killed midway leaves a directory in tmp/: reclaim clears it.
    fs::create_dir_all(store.join("tmp/extract-killed/tree"))?;
    let done = json(&["store", "--store", &s, "--json", "reclaim"])?;
    ensure!(done["bytes"].as_u64().is_some_and(|b| b > 0), "{done}");
    let left: Vec<String> = BlockStore::open(&store)?
        .blocks()?
        .into_iter()
        .map(|(d, _)| d.to_string())
        .collect();
    ensure!(
        left == {
            let mut v = vec![y.clone(), z.clone()];
            v.sort();
            v
        },
        "{left:?}"
    );
    ensure!(fs::read_dir(store.join("tmp"))?.next().is_none());
    ensure!(
        fs::read_to_string(t.join("r2/lib/z.jar"))? == "content of z",
        "the live rootfs is untouched"
    );

    // Another directory at the same path is not the root filesystem recorded.
    // (The old one is moved away first, so the new one cannot reuse its inode
    // number, as a directory made after a deletion may.)
    fs::rename(t.join("r2"), t.join("r2-moved"))?;
    fs::create_dir(t.join("r2"))?;
    let done = json(&["store", "--store", &s, "--json", "reclaim"])?;
    ensure!(done["blocks"].as_array().map(Vec::len) == Some(2), "{done}");
    ensure!(BlockStore::open(&store)?.blocks()?.is_empty());

    // Unpacking again extracts again.
    let again = unpack(&t.join("b"), &t.join("r3"), &store)?;
    ensure!(strings(&again["blocks_extracted"]).len() == 2, "{again}");
    // Forgetting it keeps the directory but frees its blocks.
    let out = shim(&[
        "store",
        "--store",
        &s,
        "forget",
        &t.join("r3").display().to_string(),
    ])?;
    ensure!(out.status.success());
    ensure!(t.join("r3/lib/y.jar").is_file());
    let done = json(&["store", "--store", &s, "--json", "reclaim"])?;
    ensure!(done["blocks"].as_array().map(Vec::len) == Some(2), "{done}");
    let out = shim(&[
        "store",
        "--store",
        &s,
        "forget",
        &t.join("nowhere").display().to_string(),
    ])?;
    ensure!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not recorded"),
        "forgetting an unknown root filesystem is an error"
    );
    Ok(())
}

#[test]
fn reclaim_waits_for_unpacks_holding_the_store() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let store = BlockStore::open(tmp.path().join("store"))?;
    let lock = store.lock_shared()?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_oci-blocks-shim"))
        .args(["store", "--store"])
        .arg(store.dir())
        .arg("reclaim")
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("starting reclaim")?;
    std::thread::sleep(std::time::Duration::from_millis(300));
    let early = child.try_wait()?;
    drop(lock);
    let status = child.wait()?;
    ensure!(
        early.is_none(),
        "reclaim ran while an unpack held the store"
    );
    ensure!(status.success());
    Ok(())
}

/// A store command on a directory that is not a store (a typo) fails,
/// naming it, and creates nothing there.
#[test]
fn a_store_command_on_a_missing_store_fails_and_creates_nothing() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let typo = tmp.path().join("stroe");
    for args in [
        &["store"][..],
        &["store", "reclaim", "--dry-run"],
        &["store", "reclaim"],
    ] {
        let mut all = args.to_vec();
        let typo_text = typo.display().to_string();
        all.extend(["--store", &typo_text]);
        let out = shim(&all)?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.code() == Some(2)
                && err.starts_with("oci-blocks-shim: error: ")
                && err.contains("not a block store")
                && err.contains("stroe"),
            "{args:?}: {err}"
        );
        ensure!(!typo.exists(), "{args:?} created {}", typo.display());
    }
    Ok(())
}
