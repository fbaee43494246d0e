//! The distribution API spoken raw against the real binary: every push flow, the
//! read endpoints, blocks-aware manifest checks, and the errors bad input gets.

use std::io::{Read, Write};

use crate::common::*;
use anyhow::{Context, Result, ensure};
use oci_blocks_core::Digest;
use serde_json::{Value, json};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

fn start() -> Result<(tempfile::TempDir, Registry, String)> {
    let tmp = tempfile::tempdir()?;
    let reg = Registry::start(&tmp.path().join("root"), &[])?;
    let base = reg.url("");
    Ok((tmp, reg, base))
}

#[test]
fn chunked_streamed_and_monolithic_uploads_store_the_exact_bytes() -> Result<()> {
    let (_tmp, reg, base) = start()?;
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let digest = Digest::sha256(&data);

    // Chunked: POST, two PATCHes with Content-Range, status, final PUT.
    let r = http(
        "POST",
        &format!("{base}/v2/a/blobs/uploads/"),
        &[],
        Some(b""),
    )?;
    ensure!(r.status == 202, "{}", r.describe());
    let location = r.header("location").context("Location")?.to_string();
    ensure!(r.header("docker-upload-uuid").is_some());
    let url = reg.url(&location);
    let (first, second) = data.split_at(100_000);
    let r = http(
        "PATCH",
        &url,
        &[
            ("Content-Range", "0-99999"),
            ("Content-Type", "application/octet-stream"),
        ],
        Some(first),
    )?;
    ensure!(r.status == 202, "{}", r.describe());
    ensure!(r.header("range") == Some("0-99999"), "{}", r.describe());
    let r = http("GET", &url, &[], None)?;
    ensure!(
        r.status == 204 && r.header("range") == Some("0-99999"),
        "{}",
        r.describe()
    );
    // Out of order: 416 with the current range, and the session is unharmed.
    let r = http(
        "PATCH",
        &url,
        &[("Content-Range", "200000-200009")],
        Some(&[0u8; 10]),
    )?;
    ensure!(r.status == 416, "{}", r.describe());
    ensure!(r.header("range") == Some("0-99999"), "{}", r.describe());
    let range = format!("100000-{}", data.len() - 1);
    let r = http("PATCH", &url, &[("Content-Range", &range)], Some(second))?;
    ensure!(r.status == 202, "{}", r.describe());
    let r = http("PUT", &format!("{url}?digest={digest}"), &[], None)?;
    ensure!(r.status == 201, "{}", r.describe());
    ensure!(r.header("docker-content-digest") == Some(digest.as_str()));
    let got = http("GET", &format!("{base}/v2/a/blobs/{digest}"), &[], None)?;
    ensure!(
        got.status == 200 && got.body == data,
        "chunked upload round trip"
    );

    // Streamed: one PATCH without Content-Range, then PUT.
    let other: Vec<u8> = data.iter().rev().copied().collect();
    let other_digest = Digest::sha256(&other);
    let r = http("POST", &format!("{base}/v2/b/blobs/uploads/"), &[], None)?;
    let url = reg.url(r.header("location").context("Location")?);
    let r = http_stream("PATCH", &url, &[], std::io::Cursor::new(other.clone()))?;
    ensure!(r.status == 202, "{}", r.describe());
    let r = http("PUT", &format!("{url}?digest={other_digest}"), &[], None)?;
    ensure!(r.status == 201, "{}", r.describe());

    // Monolithic in two requests: POST then PUT with the body.
    let third = b"third blob".to_vec();
    let r = http("POST", &format!("{base}/v2/b/blobs/uploads/"), &[], None)?;
    let url = reg.url(r.header("location").context("Location")?);
    let r = http(
        "PUT",
        &format!("{url}?digest={}", Digest::sha256(&third)),
        &[],
        Some(&third),
    )?;
    ensure!(r.status == 201, "{}", r.describe());

    // HEAD gives the length without a body; Range gives a part.
    let r = http(
        "HEAD",
        &format!("{base}/v2/b/blobs/{other_digest}"),
        &[],
        None,
    )?;
    ensure!(r.status == 200 && r.body.is_empty(), "{}", r.describe());
    ensure!(r.header("content-length") == Some(&other.len().to_string()[..]));
    ensure!(r.header("docker-content-digest") == Some(other_digest.as_str()));
    let r = http(
        "GET",
        &format!("{base}/v2/b/blobs/{other_digest}"),
        &[("Range", "bytes=10-19")],
        None,
    )?;
    ensure!(r.status == 206, "{}", r.describe());
    ensure!(r.body == other[10..20], "ranged body");

    // Stored once across repositories, with the exact bytes.
    let stored: Vec<_> = blob_files(&reg.root.join("blobs"))?
        .into_iter()
        .filter(|(name, _)| name == digest.hex())
        .collect();
    ensure!(stored.len() == 1, "one copy: {stored:?}");
    ensure!(std::fs::read(&stored[0].1)? == data);
    // A blob of repository a is not visible through repository c without a mount.
    let r = http("GET", &format!("{base}/v2/c/blobs/{digest}"), &[], None)?;
    ensure!(
        r.status == 404 && r.code() == "BLOB_UNKNOWN",
        "{}",
        r.describe()
    );
    Ok(())
}

#[test]
fn cross_repository_mount_links_or_falls_back_to_an_upload() -> Result<()> {
    let (_tmp, _reg, base) = start()?;
    let digest = push_blob(&base, "src/app", b"shared dependency")?;
    let r = http(
        "POST",
        &format!("{base}/v2/dst/blobs/uploads/?mount={digest}&from=src/app"),
        &[],
        None,
    )?;
    ensure!(r.status == 201, "{}", r.describe());
    ensure!(r.header("location") == Some(&format!("/v2/dst/blobs/{digest}")[..]));
    let r = http("GET", &format!("{base}/v2/dst/blobs/{digest}"), &[], None)?;
    ensure!(r.body == b"shared dependency");
    // The source repository does not have it: an upload session instead.
    let r = http(
        "POST",
        &format!("{base}/v2/dst2/blobs/uploads/?mount={digest}&from=elsewhere"),
        &[],
        None,
    )?;
    ensure!(r.status == 202, "{}", r.describe());
    ensure!(
        r.header("location")
            .is_some_and(|l| l.contains("/blobs/uploads/"))
    );
    // Cancel that session: it is gone.
    let url = format!("{base}{}", r.header("location").context("Location")?);
    let r = http("DELETE", &url, &[], None)?;
    ensure!(r.status == 204, "{}", r.describe());
    let r = http("GET", &url, &[], None)?;
    ensure!(
        r.status == 404 && r.code() == "BLOB_UPLOAD_UNKNOWN",
        "{}",
        r.describe()
    );
    // Blob DELETE unlinks it from one repository only.
    let r = http(
        "DELETE",
        &format!("{base}/v2/dst/blobs/{digest}"),
        &[],
        None,
    )?;
    ensure!(r.status == 202, "{}", r.describe());
    let r = http("HEAD", &format!("{base}/v2/dst/blobs/{digest}"), &[], None)?;
    ensure!(r.status == 404, "{}", r.describe());
    let r = http(
        "HEAD",
        &format!("{base}/v2/src/app/blobs/{digest}"),
        &[],
        None,
    )?;
    ensure!(r.status == 200, "{}", r.describe());
    Ok(())
}

#[test]
fn a_manifest_naming_a_missing_block_is_refused_with_its_digest() -> Result<()> {
    let (_tmp, _reg, base) = start()?;
    push_blob(&base, "app", CONFIG)?;
    push_blob(&base, "app", b"layer")?;
    push_blob(&base, "app", b"block one")?;
    let m = manifest(
        CONFIG,
        &[b"layer"],
        &[b"block one", b"block two"],
        json!({}),
    );
    let r = put_manifest(&base, "app", "v1", &m, OCI_MANIFEST)?;
    ensure!(
        r.status == 400 && r.code() == "MANIFEST_BLOB_UNKNOWN",
        "{}",
        r.describe()
    );
    let missing = Digest::sha256(b"block two");
    ensure!(
        r.json()["errors"][0]["detail"]["digest"] == missing.as_str(),
        "detail names the block: {}",
        r.describe()
    );
    ensure!(
        r.json()["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("/blocks/1")),
        "{}",
        r.describe()
    );
    // Nothing was recorded: the tag does not exist.
    let r = http("GET", &format!("{base}/v2/app/manifests/v1"), &[], None)?;
    ensure!(
        r.status == 404 && r.code() == "MANIFEST_UNKNOWN",
        "{}",
        r.describe()
    );
    // With the block pushed, the same bytes are accepted and served back exactly.
    push_blob(&base, "app", b"block two")?;
    let r = put_manifest(&base, "app", "v1", &m, OCI_MANIFEST)?;
    ensure!(r.status == 201, "{}", r.describe());
    let digest = Digest::sha256(&m);
    ensure!(r.header("docker-content-digest") == Some(digest.as_str()));
    let got = http("GET", &format!("{base}/v2/app/manifests/v1"), &[], None)?;
    ensure!(got.body == m, "byte for byte");
    ensure!(got.header("content-type") == Some(OCI_MANIFEST));
    ensure!(got.header("docker-content-digest") == Some(digest.as_str()));
    let head = http(
        "HEAD",
        &format!("{base}/v2/app/manifests/{digest}"),
        &[],
        None,
    )?;
    ensure!(head.status == 200 && head.body.is_empty());
    ensure!(head.header("content-length") == Some(&m.len().to_string()[..]));
    Ok(())
}

#[test]
fn an_index_needs_its_children_in_the_repository() -> Result<()> {
    let (_tmp, _reg, base) = start()?;
    push_blob(&base, "app", CONFIG)?;
    let child = manifest(CONFIG, &[], &[], json!({}));
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [descriptor(OCI_MANIFEST, &child)],
    }))?;
    let r = put_manifest(&base, "app", "idx", &index, OCI_INDEX)?;
    ensure!(
        r.status == 400 && r.code() == "MANIFEST_BLOB_UNKNOWN",
        "{}",
        r.describe()
    );
    let child_digest = Digest::sha256(&child);
    let r = put_manifest(&base, "app", child_digest.as_str(), &child, OCI_MANIFEST)?;
    ensure!(r.status == 201, "{}", r.describe());
    let r = put_manifest(&base, "app", "idx", &index, OCI_INDEX)?;
    ensure!(r.status == 201, "{}", r.describe());
    Ok(())
}

#[test]
fn bad_input_gets_the_spec_error_codes() -> Result<()> {
    let (_tmp, reg, base) = start()?;
    // A wrong digest on the final PUT.
    let r = http(
        "POST",
        &format!(
            "{base}/v2/app/blobs/uploads/?digest={}",
            Digest::sha256(b"other")
        ),
        &[],
        Some(b"content"),
    )?;
    ensure!(
        r.status == 400 && r.code() == "DIGEST_INVALID",
        "{}",
        r.describe()
    );
    ensure!(
        r.json()["errors"][0]["detail"]["actual"] == Digest::sha256(b"content").as_str(),
        "{}",
        r.describe()
    );
    // ... and nothing of it is stored or left as a session.
    ensure!(
        blob_files(&reg.root.join("blobs"))?.is_empty(),
        "nothing stored"
    );
    ensure!(
        std::fs::read_dir(reg.root.join("uploads"))?
            .next()
            .is_none(),
        "no session left"
    );
    // Not a digest at all.
    let r = http("GET", &format!("{base}/v2/app/blobs/sha256:xyz"), &[], None)?;
    ensure!(
        r.status == 400 && r.code() == "DIGEST_INVALID",
        "{}",
        r.describe()
    );
    // A malformed Content-Range.
    let r = http("POST", &format!("{base}/v2/app/blobs/uploads/"), &[], None)?;
    let url = reg.url(r.header("location").context("Location")?);
    let r = http("PATCH", &url, &[("Content-Range", "5-1")], Some(b"abc"))?;
    ensure!(r.status == 416, "{}", r.describe());
    // Content-Range and body lengths disagree.
    let r = http("PATCH", &url, &[("Content-Range", "0-9")], Some(b"abc"))?;
    ensure!(r.status == 416, "{}", r.describe());
    // An upload session used through another repository.
    let other = url.replace("/v2/app/", "/v2/other/");
    let r = http("PATCH", &other, &[], Some(b"abc"))?;
    ensure!(
        r.status == 404 && r.code() == "BLOB_UPLOAD_UNKNOWN",
        "{}",
        r.describe()
    );
    // A malformed manifest, and one that breaks the project's schema.
    let r = put_manifest(&base, "app", "v1", b"{not json", OCI_MANIFEST)?;
    ensure!(
        r.status == 400 && r.code() == "MANIFEST_INVALID",
        "{}",
        r.describe()
    );
    push_blob(&base, "app", CONFIG)?;
    let bad = manifest(
        CONFIG,
        &[],
        &[],
        json!({"blocks": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": "md5:abc", "size": 1}]}),
    );
    let r = put_manifest(&base, "app", "v1", &bad, OCI_MANIFEST)?;
    ensure!(
        r.status == 400 && r.code() == "MANIFEST_INVALID",
        "{}",
        r.describe()
    );
    ensure!(
        r.json()["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("/blocks/0")),
        "the reason names the field: {}",
        r.describe()
    );
    // A descriptor whose size is not the blob's.
    let mut wrong_size: Value = serde_json::from_slice(&manifest(CONFIG, &[], &[], json!({})))?;
    wrong_size["config"]["size"] = json!(CONFIG.len() + 1);
    let r = put_manifest(
        &base,
        "app",
        "v1",
        &serde_json::to_vec(&wrong_size)?,
        OCI_MANIFEST,
    )?;
    ensure!(
        r.status == 400 && r.code() == "MANIFEST_INVALID",
        "{}",
        r.describe()
    );
    // A manifest pushed by a digest it does not have.
    let good = manifest(CONFIG, &[], &[], json!({}));
    let r = put_manifest(
        &base,
        "app",
        Digest::sha256(b"x").as_str(),
        &good,
        OCI_MANIFEST,
    )?;
    ensure!(
        r.status == 400 && r.code() == "DIGEST_INVALID",
        "{}",
        r.describe()
    );
    // Over 4 MiB: refused from the headers, before the body is read.
    let mut conn = std::net::TcpStream::connect(&reg.host)?;
    write!(
        conn,
        "PUT /v2/app/manifests/big HTTP/1.1\r\nHost: {}\r\nContent-Type: {OCI_MANIFEST}\r\nContent-Length: {}\r\n\r\n{{",
        reg.host,
        4 * 1024 * 1024 + 1
    )?;
    let mut head = [0u8; 64];
    let n = conn.read(&mut head)?;
    let status_line = String::from_utf8_lossy(&head[..n]).into_owned();
    ensure!(status_line.starts_with("HTTP/1.1 413"), "{status_line}");
    // Sent without a length, it is cut off at the limit.
    let big = manifest(
        CONFIG,
        &[],
        &[],
        json!({"annotations": {"pad": "x".repeat(4 * 1024 * 1024)}}),
    );
    let r = http_stream(
        "PUT",
        &format!("{base}/v2/app/manifests/big"),
        &[("Content-Type", OCI_MANIFEST)],
        std::io::Cursor::new(big),
    );
    if let Ok(r) = r {
        ensure!(r.status == 413, "{}", r.describe());
    }
    let r = http("GET", &format!("{base}/v2/app/manifests/big"), &[], None)?;
    ensure!(r.status == 404, "{}", r.describe());
    // Invalid repository names.
    for name in ["UPPER", "a..b", "-x", "a//b"] {
        let r = http("GET", &format!("{base}/v2/{name}/tags/list"), &[], None)?;
        ensure!(
            r.status == 400 && r.code() == "NAME_INVALID",
            "{name}: {}",
            r.describe()
        );
    }
    // Unknown things.
    let r = http("GET", &format!("{base}/v2/nothing/tags/list"), &[], None)?;
    ensure!(
        r.status == 404 && r.code() == "NAME_UNKNOWN",
        "{}",
        r.describe()
    );
    let r = http("GET", &format!("{base}/v2/app/manifests/nope"), &[], None)?;
    ensure!(
        r.status == 404 && r.code() == "MANIFEST_UNKNOWN",
        "{}",
        r.describe()
    );
    Ok(())
}

#[test]
fn tags_catalog_referrers_and_deletion() -> Result<()> {
    let (_tmp, _reg, base) = start()?;
    push_blob(&base, "app", CONFIG)?;
    let image = manifest(CONFIG, &[], &[], json!({}));
    let image_digest = Digest::sha256(&image);
    for tag in ["v3", "v1", "v2", "latest"] {
        let r = put_manifest(&base, "app", tag, &image, OCI_MANIFEST)?;
        ensure!(r.status == 201, "{}", r.describe());
    }
    let r = http("GET", &format!("{base}/v2/app/tags/list?n=2"), &[], None)?;
    ensure!(
        r.json()["tags"] == json!(["latest", "v1"]),
        "{}",
        r.describe()
    );
    ensure!(
        r.header("link") == Some("</v2/app/tags/list?n=2&last=v1>; rel=\"next\""),
        "{}",
        r.describe()
    );
    let r = http(
        "GET",
        &format!("{base}/v2/app/tags/list?n=2&last=v1"),
        &[],
        None,
    )?;
    ensure!(r.json()["tags"] == json!(["v2", "v3"]) && r.header("link").is_none());

    // Referrers: two artifacts with the image as subject, one filtered out.
    let empty = b"{}";
    push_blob(&base, "app", empty)?;
    let subject = descriptor(OCI_MANIFEST, &image);
    let mut sbom = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/spdx+json",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": Digest::sha256(empty).as_str(), "size": 2},
        "layers": [], "subject": subject, "annotations": {"kind": "sbom"},
    });
    let sbom_bytes = serde_json::to_vec(&sbom)?;
    let r = put_manifest(
        &base,
        "app",
        Digest::sha256(&sbom_bytes).as_str(),
        &sbom_bytes,
        OCI_MANIFEST,
    )?;
    ensure!(r.status == 201, "{}", r.describe());
    ensure!(
        r.header("oci-subject") == Some(image_digest.as_str()),
        "{}",
        r.describe()
    );
    sbom["artifactType"] = json!("application/vnd.example.sig");
    let sig_bytes = serde_json::to_vec(&sbom)?;
    put_manifest(
        &base,
        "app",
        Digest::sha256(&sig_bytes).as_str(),
        &sig_bytes,
        OCI_MANIFEST,
    )?;
    let r = http(
        "GET",
        &format!("{base}/v2/app/referrers/{image_digest}"),
        &[],
        None,
    )?;
    ensure!(r.status == 200 && r.header("content-type") == Some(OCI_INDEX));
    ensure!(
        r.json()["manifests"].as_array().map(Vec::len) == Some(2),
        "{}",
        r.describe()
    );
    let r = http(
        "GET",
        &format!("{base}/v2/app/referrers/{image_digest}?artifactType=application/spdx%2Bjson"),
        &[],
        None,
    )?;
    let manifests = r.json()["manifests"].clone();
    ensure!(
        manifests.as_array().map(Vec::len) == Some(1),
        "{}",
        r.describe()
    );
    ensure!(manifests[0]["digest"] == Digest::sha256(&sbom_bytes).as_str());
    ensure!(manifests[0]["annotations"]["kind"] == "sbom");
    ensure!(r.header("oci-filters-applied") == Some("artifactType"));

    // Catalog with pagination.
    for repo in ["b", "c/d"] {
        push_blob(&base, repo, b"x")?;
    }
    let r = http("GET", &format!("{base}/v2/_catalog"), &[], None)?;
    ensure!(
        r.json()["repositories"] == json!(["app", "b", "c/d"]),
        "{}",
        r.describe()
    );
    let r = http(
        "GET",
        &format!("{base}/v2/_catalog?n=1&last=app"),
        &[],
        None,
    )?;
    ensure!(r.json()["repositories"] == json!(["b"]) && r.header("link").is_some());

    // Delete a tag, then the manifest by digest: its other tags and its referrer
    // entry go with it.
    let r = http("DELETE", &format!("{base}/v2/app/manifests/v3"), &[], None)?;
    ensure!(r.status == 202, "{}", r.describe());
    let r = http(
        "DELETE",
        &format!("{base}/v2/app/manifests/{}", Digest::sha256(&sbom_bytes)),
        &[],
        None,
    )?;
    ensure!(r.status == 202, "{}", r.describe());
    let r = http(
        "GET",
        &format!("{base}/v2/app/referrers/{image_digest}"),
        &[],
        None,
    )?;
    ensure!(
        r.json()["manifests"].as_array().map(Vec::len) == Some(1),
        "{}",
        r.describe()
    );
    let r = http(
        "DELETE",
        &format!("{base}/v2/app/manifests/{image_digest}"),
        &[],
        None,
    )?;
    ensure!(r.status == 202, "{}", r.describe());
    let r = http("GET", &format!("{base}/v2/app/tags/list"), &[], None)?;
    ensure!(r.json()["tags"] == json!([]), "{}", r.describe());
    let r = http(
        "GET",
        &format!("{base}/v2/app/manifests/{image_digest}"),
        &[],
        None,
    )?;
    ensure!(r.status == 404, "{}", r.describe());
    Ok(())
}

#[test]
fn serve_collects_on_an_interval_and_expires_abandoned_uploads() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let root = tmp.path().join("root");
    let reg = Registry::start(
        &root,
        &[
            "--gc-interval",
            "500ms",
            "--grace-period",
            "1h",
            "--upload-expiry",
            "1h",
        ],
    )?;
    let base = reg.url("");
    let orphan = push_blob(&base, "app", b"referenced by nothing")?;
    push_blob(&base, "app", CONFIG)?;
    let kept = manifest(CONFIG, &[], &[], json!({}));
    let r = put_manifest(&base, "app", "v1", &kept, OCI_MANIFEST)?;
    ensure!(r.status == 201, "{}", r.describe());
    let r = http("POST", &format!("{base}/v2/app/blobs/uploads/"), &[], None)?;
    let session = reg.url(r.header("location").context("Location")?);
    let fresh = http("POST", &format!("{base}/v2/app/blobs/uploads/"), &[], None)?;
    let fresh = reg.url(fresh.header("location").context("Location")?);
    // Everything but the fresh session is now two hours old.
    age_blobs(&root)?;
    let id = session.rsplit('/').next().context("id")?;
    let data = root.join("uploads").join(id).join("data");
    std::fs::File::options()
        .write(true)
        .open(&data)?
        .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(7200))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let r = http("GET", &format!("{base}/v2/app/blobs/{orphan}"), &[], None)?;
        if r.status == 404 {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "the interval GC never ran"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // The collection kept what the tag references, dropped the abandoned
    // session and left the open one alone.
    let r = http("GET", &format!("{base}/v2/app/manifests/v1"), &[], None)?;
    ensure!(r.status == 200 && r.body == kept, "{}", r.describe());
    let r = http(
        "GET",
        &format!("{base}/v2/app/blobs/{}", Digest::sha256(CONFIG)),
        &[],
        None,
    )?;
    ensure!(r.status == 200, "{}", r.describe());
    let r = http("GET", &session, &[], None)?;
    ensure!(
        r.status == 404 && r.code() == "BLOB_UPLOAD_UNKNOWN",
        "{}",
        r.describe()
    );
    let r = http("GET", &fresh, &[], None)?;
    ensure!(r.status == 204, "{}", r.describe());
    ensure!(reg.logs().contains("garbage collection"), "{}", reg.logs());
    Ok(())
}

/// A blob that a stored manifest references cannot be deleted, and a DELETE
/// racing a manifest PUT that names the blob never leaves a stored manifest
/// whose blob its repository lost.
#[test]
fn a_referenced_blob_is_never_deleted_even_when_the_delete_races_the_manifest() -> Result<()> {
    let (_tmp, _reg, base) = start()?;
    push_blob(&base, "app", CONFIG)?;
    let layer = b"referenced layer".to_vec();
    let layer_digest = push_blob(&base, "app", &layer)?;
    let bytes = manifest(CONFIG, &[&layer], &[], json!({}));
    let r = put_manifest(&base, "app", "v1", &bytes, OCI_MANIFEST)?;
    ensure!(r.status == 201, "{}", r.describe());
    let r = http(
        "DELETE",
        &format!("{base}/v2/app/blobs/{layer_digest}"),
        &[],
        None,
    )?;
    ensure!(r.status == 409, "{}", r.describe());
    ensure!(
        r.describe().contains("DENIED")
            && r.describe().contains(&Digest::sha256(&bytes).to_string()),
        "the refusal names the manifest: {}",
        r.describe()
    );
    ensure!(
        http(
            "GET",
            &format!("{base}/v2/app/blobs/{layer_digest}"),
            &[],
            None
        )?
        .status
            == 200,
        "the blob is still served"
    );
    // Unreferenced, it goes.
    let loose = push_blob(&base, "app", b"nothing names this")?;
    let r = http("DELETE", &format!("{base}/v2/app/blobs/{loose}"), &[], None)?;
    ensure!(r.status == 202, "{}", r.describe());

    // The race, 200 times: each round a fresh blob and a manifest naming it.
    let mut broken = Vec::new();
    for i in 0..200 {
        let repo = format!("race{i}");
        let layer = format!("layer of round {i}").into_bytes();
        push_blob(&base, &repo, CONFIG)?;
        let d = push_blob(&base, &repo, &layer)?;
        let bytes = manifest(CONFIG, &[&layer], &[], json!({}));
        let (b1, b2) = (base.clone(), base.clone());
        let (r1, r2) = (repo.clone(), repo.clone());
        let target = d.clone();
        let put = std::thread::spawn(move || put_manifest(&b1, &r1, "v1", &bytes, OCI_MANIFEST));
        let del = std::thread::spawn(move || {
            http("DELETE", &format!("{b2}/v2/{r2}/blobs/{target}"), &[], None)
        });
        let (put, _) = (
            put.join().map_err(|_| anyhow::anyhow!("put panicked"))??,
            del.join()
                .map_err(|_| anyhow::anyhow!("delete panicked"))??,
        );
        if put.status == 201 {
            let got = http("GET", &format!("{base}/v2/{repo}/blobs/{d}"), &[], None)?;
            if got.status != 200 {
                broken.push(i);
            }
        }
    }
    ensure!(
        broken.is_empty(),
        "rounds whose stored manifest lost its blob: {broken:?}"
    );
    Ok(())
}

/// `gc` of a root that does not exist (a typo) fails naming it, dry run or
/// not, and creates nothing.
#[test]
fn gc_of_a_missing_root_fails_and_creates_nothing() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let typo = tmp.path().join("regsitry");
    for dry in [true, false] {
        let err = gc(&typo, if dry { &["--dry-run"] } else { &[] })
            .err()
            .context("gc of a missing root succeeded")?
            .to_string();
        ensure!(
            err.contains("not a registry root") && err.contains("regsitry"),
            "{err}"
        );
        ensure!(!typo.exists(), "gc created {}", typo.display());
    }
    // The error style and exit status every binary of the project shares.
    let out = std::process::Command::new(registry_bin())
        .args(["gc", "--root"])
        .arg(&typo)
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(2) && err.starts_with("oci-blocks-registry: error: "),
        "{:?}: {err}",
        out.status
    );
    Ok(())
}

/// What the distribution-spec conformance suite and RFC 9110 expect: a
/// manifest reference that is neither a tag nor a digest is unknown (404),
/// a request for several ranges gets the whole blob, and the request log
/// shows the query string.
#[test]
fn invalid_references_multiple_ranges_and_logged_queries() -> Result<()> {
    let (_tmp, reg, base) = start()?;
    let blob = b"0123456789".to_vec();
    let d = push_blob(&base, "app", &blob)?;
    for method in ["GET", "HEAD"] {
        let r = http(
            method,
            &format!("{base}/v2/app/manifests/.INVALID_MANIFEST_NAME"),
            &[],
            None,
        )?;
        ensure!(r.status == 404, "{method}: {}", r.describe());
        if method == "GET" {
            ensure!(r.code() == "MANIFEST_UNKNOWN", "{}", r.describe());
        }
    }
    let url = format!("{base}/v2/app/blobs/{d}");
    let r = http("GET", &url, &[("Range", "bytes=0-1,5-6")], None)?;
    ensure!(r.status == 200 && r.body == blob, "{}", r.describe());
    let r = http("GET", &url, &[("Range", "bytes=2-4")], None)?;
    ensure!(r.status == 206 && r.body == b"234", "{}", r.describe());
    let r = http(
        "GET",
        &format!("{base}/v2/app/tags/list?n=1&last=a"),
        &[],
        None,
    )?;
    ensure!(r.status == 200, "{}", r.describe());
    std::thread::sleep(std::time::Duration::from_millis(200));
    ensure!(
        reg.logs().contains("/v2/app/tags/list?n=1&last=a"),
        "{}",
        reg.logs()
    );
    Ok(())
}
