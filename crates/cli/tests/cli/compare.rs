//! `oci-blocks compare`: on a small series of plain images, every figure of
//! the as-built, blocks and delta strategies is checked against values this
//! test computes itself from the images, from its own `rechunk` and from its
//! own `delta`; the HTML page is rendered in Chromium and its charts must be
//! drawn.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use crate::common::*;
use crate::transfer::json_ok;
use anyhow::{Context, Result, ensure};
use serde_json::Value;

fn doc(layout: &Path, digest: &str) -> Result<Value> {
    let hex = digest.split(':').nth(1).context("digest")?;
    Ok(serde_json::from_slice(&fs::read(
        layout.join("blobs/sha256").join(hex),
    )?)?)
}

fn tagged(layout: &Path, tag: &str) -> Result<(String, u64)> {
    let index: Value = serde_json::from_slice(&fs::read(layout.join("index.json"))?)?;
    let e = index["manifests"]
        .as_array()
        .context("manifests")?
        .iter()
        .find(|e| e["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .with_context(|| format!("tag {tag}"))?;
    Ok((
        e["digest"].as_str().context("digest")?.to_string(),
        e["size"].as_u64().context("size")?,
    ))
}

/// (documents, blobs) a client fetches for `tag`, computed here: a plain
/// manifest alone; from a rechunk index, the index, the blocks manifest,
/// the legacy manifest and the legacy config (as `pull` does).
fn fetched(
    layout: &Path,
    tag: &str,
    blocks: bool,
) -> Result<(BTreeMap<String, u64>, BTreeMap<String, u64>)> {
    let (top, size) = tagged(layout, tag)?;
    let mut docs = BTreeMap::from([(top.clone(), size)]);
    let mut blobs = BTreeMap::new();
    let add = |m: &Value, blobs: &mut BTreeMap<String, u64>, all: bool| {
        blobs.insert(
            m["config"]["digest"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            m["config"]["size"].as_u64().unwrap_or(0),
        );
        if all {
            for l in ["layers", "blocks"] {
                for d in m[l].as_array().into_iter().flatten() {
                    blobs.insert(
                        d["digest"].as_str().unwrap_or_default().to_string(),
                        d["size"].as_u64().unwrap_or(0),
                    );
                }
            }
        }
    };
    let top_doc = doc(layout, &top)?;
    match top_doc["manifests"].as_array() {
        None => add(&top_doc, &mut blobs, true),
        Some(entries) => {
            let variant = |e: &Value| {
                e["annotations"]["io.oci-blocks.variant"]
                    .as_str()
                    .map(str::to_string)
            };
            let legacy = entries
                .iter()
                .find(|e| variant(e).is_none())
                .context("legacy")?;
            let blocks_entry = entries
                .iter()
                .find(|e| variant(e).as_deref() == Some("blocks"))
                .context("blocks")?;
            let ld = legacy["digest"].as_str().context("d")?;
            docs.insert(ld.to_string(), legacy["size"].as_u64().context("s")?);
            let lm = doc(layout, ld)?;
            if blocks {
                let bd = blocks_entry["digest"].as_str().context("d")?;
                docs.insert(bd.to_string(), blocks_entry["size"].as_u64().context("s")?);
                add(&doc(layout, bd)?, &mut blobs, true);
                add(&lm, &mut blobs, false);
            } else {
                add(&lm, &mut blobs, true);
            }
        }
    }
    Ok((docs, blobs))
}

/// (bytes, blob requests, manifest requests) of v0 cold and of v0 → v1.
fn expected_steps(layout: &Path, tags: [&str; 2], blocks: bool) -> Result<[(u64, u64, u64); 2]> {
    let (d0, b0) = fetched(layout, tags[0], blocks)?;
    let (d1, b1) = fetched(layout, tags[1], blocks)?;
    let cold = (
        d0.values().sum::<u64>() + b0.values().sum::<u64>(),
        b0.len() as u64,
        d0.len() as u64,
    );
    let new: BTreeMap<&String, &u64> = b1.iter().filter(|(d, _)| !b0.contains_key(*d)).collect();
    let update = (
        d1.values().sum::<u64>() + new.values().copied().sum::<u64>(),
        new.len() as u64,
        d1.len() as u64,
    );
    Ok([cold, update])
}

fn strategy<'a>(report: &'a Value, id: &str) -> Result<&'a Value> {
    report["strategies"]
        .as_array()
        .context("strategies")?
        .iter()
        .find(|s| s["id"] == id)
        .with_context(|| format!("strategy {id}"))
}

fn step(s: &Value, i: usize) -> (u64, u64, u64) {
    let p = &s["steps"][i];
    (
        p["bytes"].as_u64().unwrap_or(0),
        p["blob_requests"].as_u64().unwrap_or(0),
        p["manifest_requests"].as_u64().unwrap_or(0),
    )
}

/// Two plain images (each version's legacy manifest alone, a jar bumped).
fn plain_series(t: &Path) -> Result<std::path::PathBuf> {
    let image = t.join("image");
    crate::delta::build_versions(t, &image)?;
    for v in ["v1", "v2"] {
        tag_legacy_as(&image, v, &format!("plain-{v}"))?;
    }
    Ok(image)
}

#[test]
fn compare_figures_match_what_the_images_rechunk_and_delta_give() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let t = tmp.path();
    let image = plain_series(t)?;
    let src = |v: &str| format!("oci:{}:plain-{v}", image.display());
    let before: BTreeSet<String> = fs::read_dir(image.join("blobs/sha256"))?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    let index_before = fs::read(image.join("index.json"))?;
    let md = t.join("report.md");
    let report = json_ok(&[
        "compare",
        "--json",
        "--max-layers",
        "8",
        "--markdown",
        md.to_str().context("utf-8")?,
        &src("v1"),
        &src("v2"),
    ])?;
    // The inputs are untouched.
    let after: BTreeSet<String> = fs::read_dir(image.join("blobs/sha256"))?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    ensure!(before == after && index_before == fs::read(image.join("index.json"))?);

    // As built, from the images themselves.
    let built = strategy(&report, "as-built")?;
    let expected = expected_steps(&image, ["plain-v1", "plain-v2"], false)?;
    ensure!(
        step(built, 0) == expected[0] && step(built, 1) == expected[1],
        "as built: {:?} {:?}, expected {expected:?}",
        step(built, 0),
        step(built, 1)
    );
    let storage: u64 = {
        let (d0, b0) = fetched(&image, "plain-v1", false)?;
        let (d1, b1) = fetched(&image, "plain-v2", false)?;
        let mut all = d0;
        all.extend(b0);
        all.extend(d1);
        all.extend(b1);
        all.values().sum()
    };
    ensure!(
        built["storage"][1] == storage,
        "storage {} vs {storage}",
        built["storage"]
    );
    ensure!(built["layers"] == 1);

    // Blocks, from this test's own rechunk (v2 with v1 as prior).
    let r = t.join("rechunked");
    ok(&[
        "rechunk",
        "--max-layers",
        "8",
        &src("v1"),
        &format!("oci:{}:v1", r.display()),
    ])?;
    ok(&[
        "rechunk",
        "--max-layers",
        "8",
        "--prior",
        &format!("oci:{}:v1", r.display()),
        &src("v2"),
        &format!("oci:{}:v2", r.display()),
    ])?;
    let blocks = strategy(&report, "blocks")?;
    let expected = expected_steps(&r, ["v1", "v2"], true)?;
    ensure!(
        step(blocks, 0) == expected[0] && step(blocks, 1) == expected[1],
        "blocks: {:?} {:?}, expected {expected:?}",
        step(blocks, 0),
        step(blocks, 1)
    );
    let legacy = strategy(&report, "per-component")?;
    let expected_legacy = expected_steps(&r, ["v1", "v2"], false)?;
    ensure!(
        step(legacy, 1) == expected_legacy[1],
        "per component: {:?}, expected {:?}",
        step(legacy, 1),
        expected_legacy[1]
    );

    // Deltas, from this test's own delta: the patched blocks count their
    // patch, plus the artifact and two more manifest requests.
    let made = json_ok(&[
        "delta",
        "--json",
        "--from",
        &format!("oci:{}:v1", r.display()),
        &format!("oci:{}:v2", r.display()),
    ])?;
    let patches = made["patches"].as_array().context("patches")?;
    ensure!(!patches.is_empty(), "{made:#}");
    let artifact: u64 = {
        let index: Value = serde_json::from_slice(&fs::read(r.join("index.json"))?)?;
        index["manifests"]
            .as_array()
            .context("m")?
            .iter()
            .filter(|e| e["artifactType"] == "application/vnd.oci-blocks.delta.v1")
            .map(|e| e["size"].as_u64().unwrap_or(0))
            .sum()
    };
    let saved: u64 = patches
        .iter()
        .map(|p| p["target_size"].as_u64().unwrap_or(0) - p["size"].as_u64().unwrap_or(0))
        .sum();
    let deltas = strategy(&report, "blocks+deltas")?;
    let (bytes, blob_requests, manifest_requests) = expected[1];
    ensure!(
        step(deltas, 1)
            == (
                bytes - saved + artifact,
                blob_requests,
                manifest_requests + 2
            ),
        "deltas: {:?}, expected {:?}",
        step(deltas, 1),
        (
            bytes - saved + artifact,
            blob_requests,
            manifest_requests + 2
        )
    );
    ensure!(
        step(deltas, 0) == step(blocks, 0),
        "a cold pull uses no delta"
    );
    ensure!(
        strategy(&report, "flat")?["layers"] == 1 && blocks["unpack_cold"].as_f64() > Some(0.0),
        "{report:#}"
    );

    // Markdown holds every strategy and how each figure was computed.
    let text = fs::read_to_string(&md)?;
    for needle in [
        "as built",
        "one flat layer",
        "blocks + deltas",
        "update v0 → v1",
        "**storage**",
    ] {
        ensure!(text.contains(needle), "markdown lacks {needle:?}:\n{text}");
    }
    Ok(())
}

#[test]
fn compare_needs_two_versions_and_names_a_bad_one() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let image = plain_series(tmp.path())?;
    let out = oci_blocks(&["compare", &format!("oci:{}:plain-v1", image.display())])?;
    ensure!(!out.status.success(), "{}", text(&out));
    let out = oci_blocks(&[
        "compare",
        &format!("oci:{}:plain-v1", image.display()),
        &format!("oci:{}:nope", image.display()),
    ])?;
    ensure!(
        !out.status.success() && text(&out).contains("nope"),
        "{}",
        text(&out)
    );
    Ok(())
}

/// The bytes of a PNG's pixels, filtered as stored (zlib of the IDAT chunks).
fn png_pixels(png: &[u8]) -> Result<Vec<u8>> {
    ensure!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let mut at = 8;
    let mut idat = Vec::new();
    while at + 8 <= png.len() {
        let len = u32::from_be_bytes(png[at..at + 4].try_into()?) as usize;
        let kind = &png[at + 4..at + 8];
        if kind == b"IDAT" {
            idat.extend_from_slice(&png[at + 8..at + 8 + len]);
        }
        at += 12 + len;
    }
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::ZlibDecoder::new(&idat[..]), &mut out)?;
    Ok(out)
}

#[test]
#[ignore = "needs chromium; .ci/run runs it"]
fn the_html_charts_are_drawn_in_chromium() -> Result<()> {
    need(&["chromium"])?;
    let tmp = tempfile::tempdir()?;
    let t = tmp.path();
    let image = plain_series(t)?;
    let html = t.join("report.html");
    ok(&[
        "compare",
        "--no-unpack",
        "--html",
        html.to_str().context("utf-8")?,
        &format!("oci:{}:plain-v1", image.display()),
        &format!("oci:{}:plain-v2", image.display()),
    ])?;
    let page = fs::read_to_string(&html)?;
    for external in ["<script", "src=", "href=", "url(", "@import"] {
        ensure!(
            !page.contains(external),
            "the page is self-contained: {external}"
        );
    }
    let chromium = |extra: &[&str]| -> Result<std::process::Output> {
        let mut cmd = std::process::Command::new("chromium");
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
        ])
        .args(extra)
        .arg(format!("file://{}", html.display()))
        .env("HOME", t);
        Ok(cmd.output()?)
    };
    // The rendered DOM holds the three charts and their bars: 5 strategies
    // by 2 pulls (bytes, requests) and by 2 versions (storage).
    let dom = chromium(&["--dump-dom"])?;
    let dom = String::from_utf8_lossy(&dom.stdout);
    ensure!(
        dom.matches("<svg").count() == 3,
        "three charts in the DOM:\n{dom}"
    );
    ensure!(dom.matches(r#"class="bar""#).count() == 30, "30 bars");
    // A screenshot is not blank: many pixels differ from the background.
    let shot = t.join("shot.png");
    let out = chromium(&[
        &format!("--screenshot={}", shot.display()),
        "--window-size=1000,1800",
    ])?;
    ensure!(
        shot.is_file(),
        "no screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pixels = png_pixels(&fs::read(&shot)?)?;
    let mut counts = BTreeMap::new();
    for b in &pixels {
        *counts.entry(*b).or_insert(0usize) += 1;
    }
    let background = counts.values().max().copied().unwrap_or(0);
    let drawn = pixels.len() - background;
    ensure!(
        drawn * 50 > pixels.len() && counts.len() > 32,
        "the screenshot looks blank: {drawn} of {} bytes differ from the background, {} values",
        pixels.len(),
        counts.len()
    );
    Ok(())
}

/// A corpus set's two versions as plain images (each built the default way,
/// its legacy manifest tagged alone): Spark's jars of pyspark, or the Python
/// environment.
fn corpus_series(kind: &str, t: &Path) -> Result<std::path::PathBuf> {
    let (sub, dest) = corpus_paths(kind);
    let dir = update_corpus(kind, t)?;
    let image = t.join("image");
    for v in ["v1", "v2"] {
        build_corpus_version(&dir, v, sub, dest, &format!("oci:{}:{v}", image.display()))?;
        tag_legacy_as(&image, v, &format!("plain-{v}"))?;
    }
    Ok(image)
}

#[test]
#[ignore = "needs the corpus (apt-get, pip and the network); .ci/run runs it"]
fn compares_blocks_update_bytes_are_what_a_pull_receives() -> Result<()> {
    for kind in ["pyspark", "python"] {
        let tmp = tempfile::tempdir()?;
        let t = tmp.path();
        let image = corpus_series(kind, t)?;
        let src = |v: &str| format!("oci:{}:plain-{v}", image.display());
        let report = json_ok(&["compare", "--json", "--no-unpack", &src("v1"), &src("v2")])?;
        // The same rechunk, pushed, and pulled as a client would: v1, then v2
        // through a counting proxy, with and without deltas.
        let r = t.join("rechunked");
        ok(&["rechunk", &src("v1"), &format!("oci:{}:v1", r.display())])?;
        ok(&[
            "rechunk",
            "--prior",
            &format!("oci:{}:v1", r.display()),
            &src("v2"),
            &format!("oci:{}:v2", r.display()),
        ])?;
        let host = crate::transfer::our_registry(&t.join("registry"))?;
        for v in ["v1", "v2"] {
            ok(&[
                "push",
                "--dest-tls-verify=false",
                &format!("oci:{}:{v}", r.display()),
                &format!("docker://{host}/{kind}:{v}"),
            ])?;
        }
        ok(&[
            "delta",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            "--from",
            &format!("docker://{host}/{kind}:v1"),
            &format!("docker://{host}/{kind}:v2"),
        ])?;
        for (id, extra) in [("blocks", "--no-delta"), ("blocks+deltas", "--jobs=6")] {
            let store = t.join(format!("store-{id}"));
            let s = store.to_str().context("utf-8")?;
            ok(&[
                "pull",
                "--tls-verify=false",
                "--store",
                s,
                &format!("docker://{host}/{kind}:v1"),
            ])?;
            let (proxy, received) = crate::delta::counting_proxy(host.clone())?;
            ok(&[
                "pull",
                "--tls-verify=false",
                extra,
                "--store",
                s,
                &format!("docker://{proxy}/{kind}:v2"),
            ])?;
            let measured = received.load(std::sync::atomic::Ordering::SeqCst);
            let (bytes, blobs, manifests) = step(strategy(&report, id)?, 1);
            // The proxy also counts HTTP headers: at most 1 KiB a request.
            let slack = (blobs + manifests) * 1024;
            ensure!(
                bytes <= measured && measured <= bytes + slack,
                "{kind} {id}: compare says {bytes} bytes in {} requests, the proxy counted {measured}",
                blobs + manifests
            );
        }
    }
    Ok(())
}
