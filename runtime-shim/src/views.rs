//! One view of an image: a blocks manifest taken from a fallback index is
//! unpacked only if it is the image the index's legacy manifest shows to
//! every other client (`spec/fallback.md`, "One view").
//!
//! The blocks manifest must name that legacy manifest (its
//! `io.oci-blocks.legacy` annotation, covered by its digest); the two configs
//! must be equal but for `rootfs.diff_ids`; layers without imports must be
//! the same blobs; and each stub layer's materialization must have the
//! `diff_id` the legacy config gives it. Only the legacy manifest and its
//! config are read, never its layers. A verified materialization's `diff_id`
//! is kept in the block store by the stub's `diff_id` (which names every
//! block it imports), so a warm unpack does not compute it again.

use std::io::Read;
use std::sync::Arc;

use oci_blocks_core::Digest;
use oci_blocks_core::block::{BlockIndex, EntryMeta};
use oci_blocks_core::expand::{
    BlockContent, ImportBudget, expand, expanded_diff_id, first_difference, open_layer,
};
use oci_blocks_core::layout::OciDir;
use oci_blocks_core::limits::Limits;
use oci_blocks_core::manifest::{Manifest, diff_ids, without_diff_ids};
use oci_blocks_core::names::ANNOTATION_LEGACY;
use oci_blocks_core::oci_spec::image::Descriptor;
use oci_blocks_core::validate::{Rule, binding_violation};
use rustix::fs::OFlags;
use serde_json::Value;

use crate::materialize::StoreImports;
use crate::store::{blob_error, open_blob, open_tar};
use crate::{Error, Result};

/// Blocks as an expansion reads them from the store.
struct FromStore<'s, 'a> {
    imports: &'s mut StoreImports<'a>,
    subject: String,
}

impl BlockContent for FromStore<'_, '_> {
    fn index(&mut self, digest: &Digest) -> oci_blocks_core::Result<Arc<BlockIndex>> {
        self.imports
            .block(digest, &self.subject)
            .map(|b| b.index)
            .map_err(|e| oci_blocks_core::Error::Malformed {
                what: format!("block {digest}"),
                reason: e.to_string(),
            })
    }

    fn open(
        &mut self,
        digest: &Digest,
        entry: &EntryMeta,
    ) -> oci_blocks_core::Result<Box<dyn Read + '_>> {
        let fail = |e: std::io::Error| oci_blocks_core::Error::Io {
            path: format!(
                "block store: {digest}/{}",
                String::from_utf8_lossy(&entry.path.0)
            )
            .into(),
            source: e,
        };
        let block = self
            .imports
            .block(digest, &self.subject)
            .map_err(|e| fail(std::io::Error::other(e.to_string())))?;
        let fd =
            crate::fsat::open_beneath(&*block.tree, &entry.path.0, OFlags::RDONLY).map_err(fail)?;
        Ok(Box::new(std::fs::File::from(fd)))
    }
}

fn differ(subject: &str, reason: String) -> Error {
    Error::invalid(subject, format!("{reason} [{}]", Rule::FallbackViewsDiffer))
}

fn config_of(layout: &OciDir, m: &Manifest, subject: &str) -> Result<Value> {
    let c = m.typed().config();
    let d = Digest::try_from(c.digest())?;
    serde_json::from_slice(&layout.read_json_blob(&d, Some(c.size()))?)
        .map_err(|e| Error::invalid(format!("{subject}: config {d}"), e.to_string()))
}

/// Checks the blocks manifest `manifest` (digest `digest`, config `config`),
/// just unpacked with `imports`, against the legacy manifest `legacy` its
/// index offers for the same platform. `stubs[i]` says whether layer `i` had
/// import entries, and `stub_ids[i]` is its `diff_id`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn check(
    layout: &OciDir,
    digest: &Digest,
    manifest: &Manifest,
    config: &Value,
    legacy: &Descriptor,
    stubs: &[bool],
    imports: &mut StoreImports<'_>,
    limits: &Limits,
) -> Result<()> {
    let subject = format!("manifest {digest}");
    let legacy_digest = Digest::try_from(legacy.digest())?;
    let named = manifest
        .typed()
        .annotations()
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_LEGACY))
        .cloned();
    if let Some(v) = binding_violation(named.as_deref(), &legacy_digest, &subject) {
        return Err(Error::invalid(
            subject,
            format!("{} [{}]", v.message, v.rule),
        ));
    }
    let lsubject = format!("legacy manifest {legacy_digest}");
    let legacy_manifest =
        Manifest::from_bytes(layout.read_json_blob(&legacy_digest, Some(legacy.size()))?)?;
    let legacy_config = config_of(layout, &legacy_manifest, &lsubject)?;
    let legacy_ids = diff_ids(&legacy_config);
    if without_diff_ids(config.clone()) != without_diff_ids(legacy_config) {
        return Err(differ(
            &subject,
            format!("its config differs from that of the {lsubject} beyond rootfs.diff_ids"),
        ));
    }
    let (layers, legacy_layers) = (manifest.layers(), legacy_manifest.layers());
    if layers.len() != legacy_layers.len() || legacy_ids.len() != layers.len() {
        return Err(differ(
            &subject,
            format!(
                "{} layers, the {lsubject} {} (with {} diff_ids)",
                layers.len(),
                legacy_layers.len(),
                legacy_ids.len()
            ),
        ));
    }
    let store = imports.store;
    for (i, (layer, legacy_layer)) in layers.iter().zip(legacy_layers).enumerate() {
        let ld = Digest::try_from(layer.digest())?;
        let lsub = format!("layer {i} ({ld})");
        if !stubs[i] {
            if layer.digest() != legacy_layer.digest() {
                return Err(differ(
                    &lsub,
                    format!(
                        "it has no imports, but the {lsubject} has {} in its place",
                        legacy_layer.digest()
                    ),
                ));
            }
            continue;
        }
        let stub_id = Digest::parse(&diff_ids(config)[i])?;
        let materialized = match store.expanded(&stub_id) {
            Some(known) => known,
            None => {
                let mut blob = open_blob(layout, &ld, layer.size(), &lsub)?;
                let computed: Result<Digest> = (|| {
                    let stream = open_tar(&mut blob, layer.media_type().as_ref(), &lsub)?;
                    let mut source = FromStore {
                        imports: &mut *imports,
                        subject: lsub.clone(),
                    };
                    expanded_diff_id(
                        stream,
                        &mut source,
                        &lsub,
                        limits,
                        &mut ImportBudget::default(),
                    )
                    .map_err(|e| Error::invalid(&lsub, format!("cannot be materialized: {e}")))
                })();
                let verified = blob.finish().map_err(|e| blob_error(&lsub, e));
                verified?;
                let computed = computed?;
                store.record_expanded(&stub_id, &computed);
                computed
            }
        };
        if materialized.as_str() != legacy_ids[i] {
            let at = first_path(layout, layer, legacy_layer, imports, limits, &lsub)
                .map(|at| format!("; they first differ {at}"))
                .unwrap_or_default();
            return Err(differ(
                &lsub,
                format!(
                    "its materialization hashes to {materialized}, but the {lsubject} gives {} for this layer{at}",
                    legacy_ids[i]
                ),
            ));
        }
    }
    Ok(())
}

/// Where the materialization of the stub `layer` and the legacy layer first
/// differ, when the layout holds the legacy layer (a pull that took only the
/// blocks manifest does not): read on the failure path alone, so that a
/// reviewer sees which path a client of the legacy manifest gets otherwise.
fn first_path(
    layout: &OciDir,
    layer: &Descriptor,
    legacy_layer: &Descriptor,
    imports: &mut StoreImports<'_>,
    limits: &Limits,
    lsub: &str,
) -> Option<String> {
    use std::io::Seek;
    let legacy_digest = Digest::try_from(legacy_layer.digest()).ok()?;
    if !layout.has_blob(&legacy_digest) {
        return None;
    }
    let ld = Digest::try_from(layer.digest()).ok()?;
    let mut spool = tempfile::tempfile().ok()?;
    {
        let mut blob = layout.open_blob(&ld, Some(layer.size())).ok()?;
        let stream = open_layer(&mut blob, layer.media_type().as_ref()).ok()?;
        let mut source = FromStore {
            imports,
            subject: lsub.to_string(),
        };
        let mut budget = ImportBudget::default();
        expand(stream, &mut source, &mut spool, lsub, limits, &mut budget).ok()?;
    }
    spool.rewind().ok()?;
    let mut legacy = layout
        .open_blob(&legacy_digest, Some(legacy_layer.size()))
        .ok()?;
    let legacy_stream = open_layer(&mut legacy, legacy_layer.media_type().as_ref()).ok()?;
    first_difference(spool, legacy_stream).ok().flatten()
}
