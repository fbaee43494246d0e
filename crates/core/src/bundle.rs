//! Offline bundles (`spec/deltas.md`, "Offline bundles"): an OCI image layout
//! as one tar file, written deterministically and read back with every name,
//! entry type and blob checked, so a file carried into an air-gapped site
//! either yields exactly the blobs it names or is refused.
//!
//! Reading stores each blob in a layout only after it hashed to the digest
//! its name gives; `index.json` and `oci-layout` are bounded like manifests.
//! A name outside `oci-layout`, `index.json` and `blobs/ALG/HEX`, an entry
//! that is not a regular file, a duplicate and a truncated archive are
//! errors that name the entry.

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::path::Path;

use serde_json::Value;

use crate::digest::Digest;
use crate::layout::OciDir;
use crate::names::{
    ANNOTATION_BUNDLE_MATERIALIZED, ANNOTATION_BUNDLE_SINCE, ANNOTATION_REF_NAME,
    DELTA_ARTIFACT_TYPE, MAX_MANIFEST_SIZE,
};
use crate::{Error, Result};

/// The content of `oci-layout`.
const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

fn header(size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h
}

/// Writes a bundle: `oci-layout`, each blob of `blobs` (digest, size, the
/// layout that holds it) in the order given, and `index.json` last, so that
/// a file cut short anywhere lacks its index. Blobs are read verified, so a
/// layout whose file was altered fails the write.
pub fn write<'a>(
    out: impl Write,
    index_json: &[u8],
    blobs: impl IntoIterator<Item = (&'a Digest, u64, &'a OciDir)>,
) -> Result<()> {
    let mut builder = tar::Builder::new(out);
    let io_err = |e: io::Error| Error::io("bundle", e);
    let mut h = header(OCI_LAYOUT.len() as u64);
    builder
        .append_data(&mut h, "oci-layout", OCI_LAYOUT)
        .map_err(io_err)?;
    for (digest, size, layout) in blobs {
        let reader = layout.open_blob(digest, Some(size))?;
        let mut h = header(size);
        let name = format!("blobs/{}/{}", digest.algorithm().as_str(), digest.hex());
        builder.append_data(&mut h, &name, reader).map_err(|e| {
            match crate::digest::verification_error(&e) {
                Some(_) => Error::Malformed {
                    what: format!("blob {digest}"),
                    reason: format!("changed in {} while bundled: {e}", layout.root().display()),
                },
                None => io_err(e),
            }
        })?;
    }
    let mut h = header(index_json.len() as u64);
    builder
        .append_data(&mut h, "index.json", index_json)
        .map_err(io_err)?;
    builder
        .into_inner()
        .map_err(io_err)?
        .flush()
        .map_err(io_err)?;
    Ok(())
}

/// What a bundle's `index.json` says.
#[derive(Clone, Debug)]
pub struct Contents {
    /// The image's tag.
    pub tag: String,
    /// The image's top document: digest, size, media type.
    pub top: (Digest, u64, String),
    /// The delta artifacts it carries: digest and size.
    pub artifacts: Vec<(Digest, u64)>,
    /// The image whose blobs it leaves out, when made since one.
    pub since: Option<Digest>,
    /// The legacy layers it leaves out for its loader to materialize.
    pub materialized: Vec<Digest>,
    /// The blobs it holds.
    pub blobs: HashSet<Digest>,
}

/// Reads the bundle `file` into `into` (each blob verified) and returns
/// what its index says. Nothing but verified blobs is written to `into`.
pub fn extract(file: &Path, into: &OciDir) -> Result<Contents> {
    let what = file.display().to_string();
    let malformed = |reason: String| Error::Malformed {
        what: what.clone(),
        reason,
    };
    let f = std::fs::File::open(file).map_err(|e| Error::io(file, e))?;
    let mut archive = tar::Archive::new(io::BufReader::new(f));
    let mut seen: HashSet<String> = HashSet::new();
    let mut index_json: Option<Vec<u8>> = None;
    let mut layout_file = false;
    let mut blobs = HashSet::new();
    let entries = archive
        .entries()
        .map_err(|e| malformed(format!("not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| malformed(format!("truncated or not a tar archive: {e}")))?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let entry_what = |reason: String| malformed(format!("entry {name:?}: {reason}"));
        if entry.header().entry_type() != tar::EntryType::Regular
            && entry.header().entry_type() != tar::EntryType::Continuous
        {
            return Err(entry_what(format!(
                "a {:?} entry; a bundle holds regular files only",
                entry.header().entry_type()
            )));
        }
        let clean = name.strip_prefix("./").unwrap_or(&name).to_string();
        if !seen.insert(clean.clone()) {
            return Err(entry_what("appears twice".into()));
        }
        let size = entry
            .header()
            .size()
            .map_err(|e| entry_what(format!("size: {e}")))?;
        match clean.as_str() {
            "oci-layout" | "index.json" => {
                if size > MAX_MANIFEST_SIZE {
                    return Err(entry_what(format!(
                        "{size} bytes, more than the limit of {MAX_MANIFEST_SIZE}"
                    )));
                }
                let mut bytes = Vec::new();
                entry
                    .read_to_end(&mut bytes)
                    .map_err(|e| entry_what(format!("truncated: {e}")))?;
                if clean == "index.json" {
                    index_json = Some(bytes);
                } else {
                    layout_file = serde_json::from_slice::<Value>(&bytes)
                        .ok()
                        .and_then(|v| v.get("imageLayoutVersion")?.as_str().map(str::to_string))
                        .is_some();
                }
            }
            other => {
                let digest = other
                    .strip_prefix("blobs/")
                    .and_then(|rest| rest.split_once('/'))
                    .filter(|(_, hex)| !hex.contains('/'))
                    .and_then(|(alg, hex)| Digest::parse(&format!("{alg}:{hex}")).ok())
                    .ok_or_else(|| {
                        entry_what("not oci-layout, index.json or blobs/ALG/HEX".into())
                    })?;
                let mut counted = Counted {
                    inner: &mut entry,
                    n: 0,
                };
                let stored = into.write_blob_verified(&mut counted, &digest, Some(size));
                let read = counted.n;
                stored.map_err(|e| {
                    if read < size {
                        entry_what(format!("truncated after {read} of {size} bytes"))
                    } else {
                        entry_what(e.to_string())
                    }
                })?;
                blobs.insert(digest);
            }
        }
    }
    // The archive ends with two zero blocks; without them it was cut short,
    // even when every entry before the cut is whole.
    let mut f = std::fs::File::open(file).map_err(|e| Error::io(file, e))?;
    let len = f.metadata().map_err(|e| Error::io(file, e))?.len();
    let mut end = [0u8; 1024];
    let ended = len >= 1024
        && len % 512 == 0
        && io::Seek::seek(&mut f, io::SeekFrom::End(-1024)).is_ok()
        && f.read_exact(&mut end).is_ok()
        && end.iter().all(|b| *b == 0);
    if !ended {
        return Err(malformed(
            "no end-of-archive marker: the file is truncated".into(),
        ));
    }
    if !layout_file {
        return Err(malformed(
            "no oci-layout file: not an OCI layout archive".into(),
        ));
    }
    let index = index_json.ok_or_else(|| {
        malformed("no index.json (it comes last): the file is truncated or not a bundle".into())
    })?;
    parse_index(&index, blobs).map_err(|reason| malformed(format!("index.json: {reason}")))
}

/// A reader that counts what it yields.
struct Counted<R> {
    inner: R,
    n: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n += k as u64;
        Ok(k)
    }
}

fn parse_index(bytes: &[u8], blobs: HashSet<Digest>) -> std::result::Result<Contents, String> {
    let index: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let mut top = None;
    let mut artifacts = Vec::new();
    for (i, e) in index["manifests"]
        .as_array()
        .ok_or("no manifests")?
        .iter()
        .enumerate()
    {
        let digest = e["digest"]
            .as_str()
            .and_then(|d| Digest::parse(d).ok())
            .ok_or(format!("/manifests/{i}: no valid digest"))?;
        let size = e["size"]
            .as_u64()
            .ok_or(format!("/manifests/{i}: no size"))?;
        if let Some(tag) = e["annotations"][ANNOTATION_REF_NAME].as_str() {
            if top.is_some() {
                return Err("more than one tagged image; a bundle holds one".into());
            }
            let media_type = e["mediaType"].as_str().unwrap_or_default().to_string();
            top = Some((tag.to_string(), (digest, size, media_type)));
        } else if e["artifactType"].as_str() == Some(DELTA_ARTIFACT_TYPE) {
            artifacts.push((digest, size));
        } else {
            return Err(format!(
                "/manifests/{i}: untagged, and not a delta artifact"
            ));
        }
    }
    let (tag, top) = top.ok_or("no tagged image")?;
    let since = match index["annotations"][ANNOTATION_BUNDLE_SINCE].as_str() {
        Some(s) => Some(Digest::parse(s).map_err(|e| e.to_string())?),
        None => None,
    };
    let materialized = index["annotations"][ANNOTATION_BUNDLE_MATERIALIZED]
        .as_str()
        .unwrap_or_default()
        .split_whitespace()
        .map(|d| Digest::parse(d).map_err(|e| format!("{ANNOTATION_BUNDLE_MATERIALIZED}: {e}")))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(Contents {
        tag,
        top,
        artifacts,
        since,
        materialized,
        blobs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    type Entry<'a> = (&'a str, tar::EntryType, &'a [u8]);

    fn bundle_with(entries: &[Entry]) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().expect("temp");
        let mut b = tar::Builder::new(file.reopen().expect("reopen"));
        for (name, kind, bytes) in entries {
            let mut h = header(bytes.len() as u64);
            h.set_entry_type(*kind);
            if *kind == tar::EntryType::Symlink {
                h.set_size(0);
                b.append_link(&mut h, name, "/etc/passwd").expect("link");
            } else {
                // set_path would refuse `..`; write the raw name.
                let raw = &mut h.as_old_mut().name;
                raw[..name.len()].copy_from_slice(name.as_bytes());
                h.set_cksum();
                b.append(&h, *bytes).expect("append");
            }
        }
        b.into_inner().expect("finish");
        file
    }

    fn index_for(d: &Digest) -> Vec<u8> {
        serde_json::json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": d.as_str(), "size": 2,
            "annotations": {ANNOTATION_REF_NAME: "v1"}}]})
        .to_string()
        .into_bytes()
    }

    #[test]
    fn a_bundle_reads_back_and_hostile_ones_are_refused_by_entry() {
        let d = Digest::sha256(b"{}");
        let name = format!("blobs/sha256/{}", d.hex());
        let index = index_for(&d);
        let reg = tar::EntryType::Regular;
        let good = bundle_with(&[
            ("oci-layout", reg, OCI_LAYOUT),
            (&name, reg, b"{}"),
            ("index.json", reg, &index),
        ]);
        let dir = tempfile::tempdir().expect("dir");
        let layout = OciDir::create(dir.path()).expect("layout");
        let contents = extract(good.path(), &layout).expect("good bundle");
        assert_eq!(contents.tag, "v1");
        assert!(layout.has_blob(&d));

        let wrong = format!("blobs/sha256/{}", Digest::sha256(b"x").hex());
        let cases: Vec<(Vec<Entry>, &str)> = vec![
            (
                vec![
                    ("oci-layout", reg, OCI_LAYOUT),
                    ("index.json", reg, &index),
                    (&wrong, reg, b"{}"),
                ],
                "digest",
            ),
            (
                vec![("oci-layout", reg, OCI_LAYOUT), ("../../etc/x", reg, b"{}")],
                "../../etc/x",
            ),
            (
                vec![
                    ("oci-layout", reg, OCI_LAYOUT),
                    ("blobs/sha256/../../x", reg, b"{}"),
                ],
                "blobs/sha256/../../x",
            ),
            (
                vec![("oci-layout", tar::EntryType::Symlink, b"")],
                "Symlink",
            ),
            (
                vec![
                    ("oci-layout", reg, OCI_LAYOUT),
                    ("oci-layout", reg, OCI_LAYOUT),
                ],
                "twice",
            ),
            (
                vec![("index.json", reg, &index), (&name, reg, b"{}")],
                "oci-layout",
            ),
            (
                vec![("oci-layout", reg, OCI_LAYOUT), (&name, reg, b"{}")],
                "no index.json",
            ),
        ];
        for (entries, expected) in cases {
            let file = bundle_with(&entries);
            let dir = tempfile::tempdir().expect("dir");
            let layout = OciDir::create(dir.path()).expect("layout");
            let err = extract(file.path(), &layout).expect_err(expected);
            assert!(err.to_string().contains(expected), "{expected}: {err}");
            assert!(!dir.path().join("x").exists());
        }
        // Cut in the middle of a blob, and between entries.
        let bytes = std::fs::read(good.path()).expect("read");
        for at in [1024 + 512 + 1, 2048] {
            let cut = tempfile::NamedTempFile::new().expect("temp");
            std::fs::write(cut.path(), &bytes[..at]).expect("write");
            let dir = tempfile::tempdir().expect("dir");
            let layout = OciDir::create(dir.path()).expect("layout");
            let err = extract(cut.path(), &layout).expect_err("truncated");
            assert!(err.to_string().contains("truncated"), "cut at {at}: {err}");
        }
    }
}
