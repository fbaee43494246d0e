//! The registry with its storage in a bucket of a real S3-compatible server
//! (Garage, one node on 127.0.0.1), served by two replicas with no local
//! state: skopeo pushes through one and pulls through the other, blocks
//! survive a collection, ranges stream from the bucket, an upload started on
//! one replica finishes on the other, a replica killed mid-upload never
//! serves a partial blob, and a wrong digest never becomes visible.

use std::io::Write;
use std::path::Path;

use crate::common::*;
use anyhow::{Context, Result, ensure};
use oci_blocks_builder::Fallback;
use oci_blocks_core::Digest;
use oci_blocks_fixture::garage::Garage;
use serde_json::Value;

pub fn garage(tmp: &Path) -> Result<Garage> {
    need(&["garage"])?;
    Ok(Garage::start(&tmp.join("garage"), "registry")?)
}

/// A `serve` process on the bucket (`dir` only holds its log).
pub fn replica(garage: &Garage, dir: &Path, prefix: &str) -> Result<Registry> {
    let url = garage.url(prefix);
    Registry::spawn_with(
        dir,
        &["serve", "--addr", "127.0.0.1:0", "--storage", &url],
        &garage.env(),
    )
}

/// A pseudo-random blob of `len` bytes (seeded, so that each test's differ).
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
#[ignore = "needs garage and skopeo; .ci/run runs it"]
fn skopeo_round_trips_through_two_replicas_and_blocks_survive_gc() -> Result<()> {
    need(&["skopeo"])?;
    let tmp = tempfile::tempdir()?;
    let garage = garage(tmp.path())?;
    let a = replica(&garage, &tmp.path().join("a"), "one")?;
    let b = replica(&garage, &tmp.path().join("b"), "one")?;
    let image = build_java(&tmp.path().join("src"), Fallback::Index, None)?;
    let src = format!("oci:{}:latest", image.dir.display());
    skopeo_ok(&[
        "copy",
        "--all",
        "--retry-times",
        "0",
        "--dest-tls-verify=false",
        &src,
        &a.docker("java/app:v1"),
    ])?;
    // Replica B sees what A stored: the index byte for byte.
    let raw = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &b.docker("java/app:v1"),
    ])?;
    ensure!(
        raw.status.success() && raw.stdout == image.top_bytes,
        "{}",
        String::from_utf8_lossy(&raw.stderr)
    );

    // Blocks were pushed through the anchor; a bare blocks manifest needs
    // every one of them. Collect with untagged manifests going, then pull.
    let blocks_entry = image.entry(Some("blocks"))?;
    let blocks_doc = image.json(blocks_entry["digest"].as_str().context("digest")?)?;
    let blocks: Vec<String> = blocks_doc["blocks"]
        .as_array()
        .context("blocks")?
        .iter()
        .filter_map(|b| b["digest"].as_str().map(str::to_string))
        .collect();
    ensure!(blocks.len() >= 2, "{} blocks", blocks.len());
    let out = std::process::Command::new(registry_bin())
        .args([
            "gc",
            "--storage",
            &garage.url("one"),
            "--grace-period",
            "0s",
            "--delete-untagged",
        ])
        .envs(garage.env())
        .output()?;
    ensure!(
        out.status.success(),
        "gc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for d in &blocks {
        let r = http(
            "HEAD",
            &b.url(&format!("/v2/java/app/blobs/{d}")),
            &[],
            None,
        )?;
        ensure!(r.status == 200, "block {d} after gc: {}", r.describe());
    }
    let back = tmp.path().join("back");
    skopeo_ok(&[
        "copy",
        "--all",
        "--src-tls-verify=false",
        &b.docker("java/app:v1"),
        &format!("oci:{}:pulled", back.display()),
    ])?;
    let index: Value = serde_json::from_slice(&std::fs::read(back.join("index.json"))?)?;
    ensure!(
        index["manifests"][0]["digest"] == image.top.as_str(),
        "{index}"
    );
    for d in &blocks {
        let hex = d.trim_start_matches("sha256:");
        ensure!(
            back.join("blobs/sha256").join(hex).is_file(),
            "{d} not pulled"
        );
    }

    // A range of a block streams from the bucket.
    let d = &blocks[0];
    let whole = image.blob(d)?;
    let r = http(
        "GET",
        &a.url(&format!("/v2/java/app/blobs/{d}")),
        &[("Range", "bytes=5-104")],
        None,
    )?;
    ensure!(
        r.status == 206 && r.body == whole[5..105],
        "{}",
        r.describe()
    );
    ensure!(
        r.header("content-range") == Some(&format!("bytes 5-104/{}", whole.len())[..]),
        "{}",
        r.describe()
    );
    let r = http(
        "GET",
        &a.url(&format!("/v2/java/app/blobs/{d}")),
        &[("Range", &format!("bytes={}-", whole.len() + 10))],
        None,
    )?;
    ensure!(r.status == 416, "{}", r.describe());
    Ok(())
}

#[test]
#[ignore = "needs garage; .ci/run runs it"]
fn uploads_continue_across_replicas_and_never_show_a_partial_or_wrong_blob() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let garage = garage(tmp.path())?;
    let mut a = replica(&garage, &tmp.path().join("a"), "two")?;
    let b = replica(&garage, &tmp.path().join("b"), "two")?;

    // Started on A, finished on B, read from A.
    let blob = data(3 << 20, 1);
    let digest = Digest::sha256(&blob);
    let r = http("POST", &a.url("/v2/up/blobs/uploads/"), &[], None)?;
    ensure!(r.status == 202, "{}", r.describe());
    let location = r.header("location").context("location")?.to_string();
    let half = blob.len() / 2;
    let r = http(
        "PATCH",
        &a.url(&location),
        &[("Content-Range", &format!("0-{}", half - 1))],
        Some(&blob[..half]),
    )?;
    ensure!(r.status == 202, "{}", r.describe());
    let status = http("GET", &b.url(&location), &[], None)?;
    ensure!(
        status.status == 204 && status.header("range") == Some(&format!("0-{}", half - 1)[..]),
        "B sees A's chunk: {}",
        status.describe()
    );
    let r = http(
        "PATCH",
        &b.url(&location),
        &[("Content-Range", &format!("{half}-{}", blob.len() - 1))],
        Some(&blob[half..]),
    )?;
    ensure!(r.status == 202, "{}", r.describe());
    let r = http(
        "PUT",
        &b.url(&format!("{location}?digest={digest}")),
        &[],
        None,
    )?;
    ensure!(r.status == 201, "{}", r.describe());
    let got = http("GET", &a.url(&format!("/v2/up/blobs/{digest}")), &[], None)?;
    ensure!(got.status == 200 && got.body == blob, "{}", got.describe());

    // A digest the bytes do not have: refused, and neither digest appears.
    let other = data(1 << 20, 2);
    let claimed = Digest::sha256(b"something else");
    let r = http("POST", &a.url("/v2/up/blobs/uploads/"), &[], None)?;
    let location = r.header("location").context("location")?.to_string();
    let r = http("PATCH", &a.url(&location), &[], Some(&other))?;
    ensure!(r.status == 202, "{}", r.describe());
    let r = http(
        "PUT",
        &b.url(&format!("{location}?digest={claimed}")),
        &[],
        None,
    )?;
    ensure!(
        r.status == 400 && r.code() == "DIGEST_INVALID",
        "{}",
        r.describe()
    );
    for d in [claimed, Digest::sha256(&other)] {
        let r = http("HEAD", &b.url(&format!("/v2/up/blobs/{d}")), &[], None)?;
        ensure!(r.status == 404, "{d}: {}", r.describe());
    }

    // A killed in the middle of a chunk: nothing of it shows, on either
    // replica, and the upload goes on through B from where it stood.
    let big = data(24 << 20, 3);
    let digest = Digest::sha256(&big);
    let r = http("POST", &a.url("/v2/up/blobs/uploads/"), &[], None)?;
    let location = r.header("location").context("location")?.to_string();
    let mut socket = std::net::TcpStream::connect(&a.host)?;
    write!(
        socket,
        "PATCH {location} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        a.host,
        big.len()
    )?;
    socket.write_all(&big[..10 << 20])?;
    socket.flush()?;
    std::thread::sleep(std::time::Duration::from_millis(500));
    a.kill9();
    drop(socket);
    let status = http("GET", &b.url(&location), &[], None)?;
    ensure!(
        status.status == 204 && status.header("range") == Some("0-0"),
        "nothing of the broken chunk counts: {}",
        status.describe()
    );
    let r = http("HEAD", &b.url(&format!("/v2/up/blobs/{digest}")), &[], None)?;
    ensure!(r.status == 404, "{}", r.describe());
    let r = http("PATCH", &b.url(&location), &[], Some(&big))?;
    ensure!(r.status == 202, "{}", r.describe());
    let r = http(
        "PUT",
        &b.url(&format!("{location}?digest={digest}")),
        &[],
        None,
    )?;
    ensure!(r.status == 201, "{}", r.describe());
    let got = http("GET", &b.url(&format!("/v2/up/blobs/{digest}")), &[], None)?;
    ensure!(got.status == 200 && got.body == big, "{}", got.describe());
    Ok(())
}

#[test]
#[ignore = "needs garage; .ci/run runs it"]
fn a_store_that_goes_down_mid_push_gets_clean_errors_and_nothing_half_committed() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut garage = garage(tmp.path())?;
    let reg = replica(&garage, &tmp.path().join("a"), "three")?;
    let blob = data(2 << 20, 4);
    let digest = Digest::sha256(&blob);
    let r = http("POST", &reg.url("/v2/down/blobs/uploads/"), &[], None)?;
    ensure!(r.status == 202, "{}", r.describe());
    let location = r.header("location").context("location")?.to_string();
    let half = blob.len() / 2;
    let r = http(
        "PATCH",
        &reg.url(&location),
        &[("Content-Range", &format!("0-{}", half - 1))],
        Some(&blob[..half]),
    )?;
    ensure!(r.status == 202, "{}", r.describe());

    garage.stop();
    let started = std::time::Instant::now();
    let r = http(
        "PATCH",
        &reg.url(&location),
        &[("Content-Range", &format!("{half}-{}", blob.len() - 1))],
        Some(&blob[half..]),
    )?;
    ensure!(
        (500..600).contains(&r.status) && r.code() == "UNKNOWN",
        "a chunk while the store is down: {}",
        r.describe()
    );
    ensure!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "the error took {:?}",
        started.elapsed()
    );
    let r = http("GET", &reg.url("/v2/down/tags/list"), &[], None)?;
    ensure!(r.status >= 500, "{}", r.describe());

    // Back up: the client retries the chunk where the registry says the
    // session stands, and the blob is whole.
    garage.restart()?;
    let status = http("GET", &reg.url(&location), &[], None)?;
    ensure!(
        status.status == 204 && status.header("range") == Some(&format!("0-{}", half - 1)[..]),
        "the failed chunk left nothing: {}",
        status.describe()
    );
    let r = http(
        "PATCH",
        &reg.url(&location),
        &[("Content-Range", &format!("{half}-{}", blob.len() - 1))],
        Some(&blob[half..]),
    )?;
    ensure!(r.status == 202, "{}", r.describe());
    let r = http(
        "PUT",
        &reg.url(&format!("{location}?digest={digest}")),
        &[],
        None,
    )?;
    ensure!(r.status == 201, "{}", r.describe());
    let got = http(
        "GET",
        &reg.url(&format!("/v2/down/blobs/{digest}")),
        &[],
        None,
    )?;
    ensure!(got.status == 200 && got.body == blob, "{}", got.describe());
    Ok(())
}
