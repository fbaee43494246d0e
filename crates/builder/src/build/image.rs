//! The JSON documents a build writes, as typed values: descriptors, the
//! image config, the blocks and legacy manifests, the GC anchor and the
//! index, each serialized once and written as a blob of the output layout.

use std::time::{Duration, UNIX_EPOCH};

use oci_blocks_core::Digest;
use oci_blocks_core::layout::OciDir;
use oci_blocks_core::manifest::anchor_manifest;
use oci_blocks_core::names::*;
use oci_blocks_core::platform::Platform;
use serde_json::{Value, json};

use super::base::array_at;
use super::spec::{BuildSpec, parse_platform};
use crate::{Error, Result};

/// A blob written to the output layout: its digest and size.
#[derive(Clone, Debug)]
pub(super) struct Blob {
    pub digest: Digest,
    pub size: u64,
}

impl Blob {
    /// Serializes `value` and writes it as a blob.
    pub fn write_json(out: &OciDir, value: &Value) -> Result<Blob> {
        let bytes = serde_json::to_vec(value).map_err(|e| Error::option("json", e.to_string()))?;
        let (digest, size) = out.write_blob_bytes(&bytes)?;
        Ok(Blob { digest, size })
    }

    /// Its descriptor with `media_type`.
    pub fn descriptor(&self, media_type: &str) -> Value {
        descriptor(media_type, &self.digest, self.size)
    }
}

/// A descriptor: media type, digest, size.
pub(super) fn descriptor(media_type: &str, digest: &Digest, size: u64) -> Value {
    json!({"mediaType": media_type, "digest": digest.as_str(), "size": size})
}

/// An image manifest as the builder writes it.
pub(super) struct ImageManifest<'a> {
    /// The config blob and its media type.
    pub config: (&'a Blob, &'static str),
    /// Layer descriptors.
    pub layers: &'a [Value],
    /// Block descriptors (none: no `blocks` field).
    pub blocks: &'a [Value],
    /// The legacy manifest the blocks manifest names (`io.oci-blocks.legacy`).
    pub legacy: Option<&'a Digest>,
}

impl ImageManifest<'_> {
    /// The manifest document.
    pub fn to_value(&self) -> Value {
        let (config, media_type) = self.config;
        let mut m = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config.descriptor(media_type),
            "layers": self.layers,
        });
        if !self.blocks.is_empty() {
            m["blocks"] = Value::Array(self.blocks.to_vec());
        }
        if let Some(legacy) = self.legacy {
            m["annotations"] = json!({ ANNOTATION_LEGACY: legacy.as_str() });
        }
        m
    }

    /// Writes the manifest as a blob.
    pub fn write(&self, out: &OciDir) -> Result<Blob> {
        Blob::write_json(out, &self.to_value())
    }
}

/// An index entry for a manifest: its descriptor, platform and variant.
pub(super) fn index_entry(manifest: &Blob, platform: &Value, variant: Option<&str>) -> Value {
    let mut entry = manifest.descriptor(OCI_MANIFEST);
    entry["platform"] = platform.clone();
    if let Some(v) = variant {
        entry["annotations"] = json!({ ANNOTATION_VARIANT: v });
    }
    entry
}

/// Writes the GC anchor listing `blocks` (and the empty config it names);
/// returns it and its index entry.
pub(super) fn write_anchor(out: &OciDir, blocks: Vec<Value>) -> Result<(Blob, Value)> {
    out.write_blob_bytes(b"{}")?;
    let anchor = Blob::write_json(out, &anchor_manifest(blocks))?;
    let platform = json!({"architecture": "unknown", "os": "unknown"});
    let entry = index_entry(&anchor, &platform, Some(VARIANT_ANCHOR));
    Ok((anchor, entry))
}

/// Writes an OCI index of `manifests`.
pub(super) fn write_index(out: &OciDir, manifests: Vec<Value>) -> Result<Blob> {
    Blob::write_json(
        out,
        &json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}),
    )
}

/// The index `platform` object of a config.
pub(super) fn platform_json(config: &Value) -> Value {
    let (os, arch, variant) = platform_of(config);
    let mut p = json!({"architecture": arch, "os": os});
    if let Some(v) = variant {
        p["variant"] = json!(v);
    }
    p
}

/// The RFC 3339 time of `epoch`, as configs and history record it.
pub(super) fn created(epoch: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(epoch)).to_string()
}

fn platform_of(config: &Value) -> (String, String, Option<String>) {
    let s = |k: &str| config.get(k).and_then(Value::as_str).map(str::to_string);
    (
        s("os").unwrap_or_default(),
        s("architecture").unwrap_or_default(),
        s("variant"),
    )
}

/// The image config: the base's (or a new one for `platform`, else this
/// machine's), with the spec's settings, `diff_ids` and `history` added.
pub(super) fn make_config(
    spec: &BuildSpec,
    platform: Option<&str>,
    base: Option<&Value>,
    diff_ids: Vec<Value>,
    history: Vec<Value>,
) -> Result<Value> {
    let mut config = base.cloned().unwrap_or_else(|| {
        let host = Platform::host();
        let mut c = json!({"architecture": host.architecture, "os": host.os, "config": {}});
        if let Some(v) = host.variant {
            c["variant"] = json!(v);
        }
        c
    });
    if let Some(p) = platform {
        let (os, arch, variant) = parse_platform(p)?;
        if base.is_some() {
            let (bos, barch, _) = platform_of(&config);
            if (bos.as_str(), barch.as_str()) != (os.as_str(), arch.as_str()) {
                return Err(Error::option(
                    format!("--platform {p}"),
                    format!("the base image is {bos}/{barch}"),
                ));
            }
        }
        config["os"] = json!(os);
        config["architecture"] = json!(arch);
        if let Some(v) = variant {
            config["variant"] = json!(v);
        }
    }
    config["created"] = json!(created(spec.source_date_epoch));
    config["rootfs"] = json!({"type": "layers", "diff_ids": diff_ids});
    let mut all_history = array_at(&config, "/history");
    all_history.extend(history);
    config["history"] = Value::Array(all_history);
    if !config.get("config").is_some_and(Value::is_object) {
        config["config"] = json!({});
    }
    let c = &mut config["config"];
    if let Some(e) = &spec.entrypoint {
        c["Entrypoint"] = json!(e);
    }
    if let Some(cmd) = &spec.cmd {
        c["Cmd"] = json!(cmd);
    }
    if let Some(w) = &spec.workdir {
        c["WorkingDir"] = json!(w);
    }
    if let Some(u) = &spec.user {
        c["User"] = json!(u);
    }
    if !spec.env.is_empty() {
        let mut env: Vec<String> = c
            .get("Env")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        for kv in &spec.env {
            let Some((k, _)) = kv.split_once('=') else {
                return Err(Error::option(format!("--env {kv}"), "expected K=V"));
            };
            env.retain(|e| e.split_once('=').map_or(e.as_str(), |(ek, _)| ek) != k);
            env.push(kv.clone());
        }
        c["Env"] = json!(env);
    }
    if !spec.labels.is_empty() {
        if !c.get("Labels").is_some_and(Value::is_object) {
            c["Labels"] = json!({});
        }
        for (k, v) in &spec.labels {
            c["Labels"][k] = json!(v);
        }
    }
    Ok(config)
}
