//! Deep validation and inspection of an image in an OCI layout.
//!
//! Starting from `index.json` (or one tag of it), every index, manifest, config,
//! layer and block is read and verified once, each layer and block is scanned as a
//! tar stream, and every rule of `spec/imports.md` is checked: import entries
//! against the manifest's `blocks` and against the blocks' contents, blocks against
//! what a block may hold, diff IDs against the config. The same walk yields the
//! description `oci-blocks inspect` prints.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use oci_spec::image::{Descriptor, ImageConfiguration};
use serde::Serialize;
use serde_json::Value;

use super::document::{DocumentKind, validate_document, variant_of};
use super::rules::{Report, Rule, Violation};
use super::scan::{BlobProblem, FoundImport, TarScan, scan_blob_within, scan_block_within};
use crate::digest::Digest;
use crate::expand::{ImportBudget, LayoutBlocks, expand, first_difference, open_layer};
use crate::layout::OciDir;
use crate::limits::Limits;
use crate::names::{
    ANCHOR_ARTIFACT_TYPE, ANNOTATION_SPARSE, MAX_INDEX_DEPTH, VARIANT_BLOCKS, is_import_layer,
};
use crate::{Error, Result};

/// What an image holds, as `oci-blocks inspect` shows it.
#[derive(Debug, Default, Serialize)]
pub struct ImageInfo {
    /// Indexes, in the order visited.
    pub indexes: Vec<IndexInfo>,
    /// Manifests, in the order visited.
    pub manifests: Vec<ManifestInfo>,
}

/// One index.
#[derive(Debug, Serialize)]
pub struct IndexInfo {
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// Its kind.
    pub kind: DocumentKind,
    /// Its entries: digest, platform, variant.
    pub entries: Vec<EntryInfo>,
    /// For a fallback index: the bytes of layers that only the legacy manifests
    /// use, i.e. what the legacy copy costs in storage and transfer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub legacy_only_bytes: Option<u64>,
    /// With blocks manifests for several platforms: the blocks they share, which
    /// are stored and transferred once, and their bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared_across_platforms: Option<(usize, u64)>,
}

/// One entry of an index.
#[derive(Debug, Serialize)]
pub struct EntryInfo {
    /// The child's digest.
    pub digest: String,
    /// `os/arch[/variant]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// `io.oci-blocks.variant`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// One manifest.
#[derive(Debug, Serialize)]
pub struct ManifestInfo {
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// Its kind.
    pub kind: DocumentKind,
    /// The config's digest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    /// Its layers.
    pub layers: Vec<BlobInfo>,
    /// Its blocks.
    pub blocks: Vec<BlobInfo>,
}

/// One layer or block.
#[derive(Debug, Serialize)]
pub struct BlobInfo {
    /// Its digest.
    pub digest: String,
    /// Its media type.
    pub media_type: String,
    /// Its (compressed) size.
    pub size: u64,
    /// Its uncompressed size, when it could be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uncompressed_size: Option<u64>,
    /// Its number of tar entries.
    pub entries: u64,
    /// Its top-level names (at most 16).
    pub top_level: Vec<String>,
    /// Descriptor annotations (Maven coordinates, distribution names).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Import entries (layers only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub imports: Vec<FoundImport>,
}

/// The result of walking an image: its description and every violation found.
#[derive(Debug, Default, Serialize)]
pub struct ImageReport {
    /// What the image holds.
    pub info: ImageInfo,
    /// What is wrong with it.
    pub report: Report,
}

/// Walks the images `tag` names in `dir` (every entry of `index.json` when `tag`
/// is `None`), validating everything and describing it.
pub fn check_image(dir: &OciDir, tag: Option<&str>) -> Result<ImageReport> {
    check_image_within(dir, tag, &Limits::default())
}

/// [`check_image`] within the bounds `limits` sets on what is read (how far a
/// layer may expand, what imports may materialize).
pub fn check_image_within(dir: &OciDir, tag: Option<&str>, limits: &Limits) -> Result<ImageReport> {
    let roots = dir.resolve(tag)?;
    let mut walker = Walker {
        dir,
        out: ImageReport::default(),
        visited: HashSet::new(),
        scans: HashMap::new(),
        blocks_of: HashMap::new(),
        layers_of: HashMap::new(),
        docs: HashMap::new(),
        sparse: false,
        limits: *limits,
    };
    for (i, root) in roots.iter().enumerate() {
        walker.sparse = root
            .annotations()
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_SPARSE))
            .is_some_and(|v| v == "true");
        walker.visit(root, &format!("index.json /manifests/{i}"), 0)?;
    }
    Ok(walker.out)
}

struct Walker<'a> {
    dir: &'a OciDir,
    out: ImageReport,
    visited: HashSet<Digest>,
    scans: HashMap<Digest, TarScan>,
    blocks_of: HashMap<Digest, Vec<(Digest, u64)>>,
    layers_of: HashMap<Digest, Vec<(Digest, u64)>>,
    /// Each manifest's document, for the fallback checks.
    docs: HashMap<Digest, Value>,
    /// The image being walked is in a sparse layout.
    sparse: bool,
    /// The bounds on what validation may read.
    limits: Limits,
}

fn blob_violation(
    problem: &BlobProblem,
    subject: &str,
    digest: &Digest,
    sparse: bool,
) -> Violation {
    match problem {
        BlobProblem::Missing if sparse => Violation::new(
            Rule::BlobAbsentSparse,
            subject,
            format!(
                "blob {digest} is absent by design: the layout is sparse ({ANNOTATION_SPARSE})"
            ),
        ),
        BlobProblem::Missing => Violation::new(
            Rule::BlobMissing,
            subject,
            format!("blob {digest} is not in the layout"),
        ),
        BlobProblem::DigestMismatch(found) => Violation::new(
            Rule::BlobDigestMismatch,
            subject,
            format!("blob {digest} hashes to {found}"),
        ),
        BlobProblem::TooLarge { size, limit } => Violation::new(
            Rule::BlobSizeMismatch,
            subject,
            format!(
                "blob {digest} is {size} bytes, more than the {limit}-byte limit for a manifest, index or config"
            ),
        ),
        BlobProblem::SizeMismatch { expected, found } => Violation::new(
            Rule::BlobSizeMismatch,
            subject,
            format!("blob {digest} is {found} bytes, its descriptor says {expected}"),
        ),
    }
}

fn problem_of(err: &Error) -> Option<BlobProblem> {
    match err {
        Error::BlobNotFound { .. } => Some(BlobProblem::Missing),
        Error::DigestMismatch { found, .. } => Some(BlobProblem::DigestMismatch(found.clone())),
        Error::SizeMismatch {
            expected, found, ..
        } => Some(BlobProblem::SizeMismatch {
            expected: *expected,
            found: *found,
        }),
        Error::TooLarge { size, limit, .. } => Some(BlobProblem::TooLarge {
            size: *size,
            limit: *limit,
        }),
        _ => None,
    }
}

fn platform_text(d: &Descriptor) -> Option<String> {
    d.platform().as_ref().map(|p| {
        let mut t = format!("{}/{}", p.os(), p.architecture());
        if let Some(v) = p.variant() {
            t.push('/');
            t.push_str(v);
        }
        t
    })
}

impl Walker<'_> {
    fn digest_of(&mut self, d: &Descriptor, subject: &str) -> Option<Digest> {
        match Digest::try_from(d.digest()) {
            Ok(digest) => Some(digest),
            Err(e) => {
                self.out
                    .report
                    .push(Violation::new(Rule::DigestInvalid, subject, e.to_string()));
                None
            }
        }
    }

    fn read_json(&mut self, digest: &Digest, size: u64, subject: &str) -> Result<Option<Vec<u8>>> {
        match self.dir.read_json_blob(digest, Some(size)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) => match problem_of(&e) {
                Some(p) => {
                    self.out
                        .report
                        .push(blob_violation(&p, subject, digest, self.sparse));
                    Ok(None)
                }
                None => Err(e),
            },
        }
    }

    /// Visits the document `desc` names, `depth` indexes below the layout's
    /// `index.json`.
    fn visit(&mut self, desc: &Descriptor, parent: &str, depth: usize) -> Result<()> {
        let Some(digest) = self.digest_of(desc, parent) else {
            return Ok(());
        };
        if !self.visited.insert(digest.clone()) {
            return Ok(());
        }
        let Some(bytes) = self.read_json(&digest, desc.size(), parent)? else {
            return Ok(());
        };
        let (kind, report) = validate_document(&bytes, &format!("{parent} ({digest})"));
        self.out.report.extend(report);
        let Some(kind) = kind else { return Ok(()) };
        let Ok(value) = serde_json::from_slice::<Value>(&bytes) else {
            return Ok(());
        };
        if kind.is_index() {
            if depth >= MAX_INDEX_DEPTH {
                self.out.report.push(Violation::new(
                    Rule::LimitExceeded,
                    format!("{parent} ({digest})"),
                    format!(
                        "indexes nest deeper than {MAX_INDEX_DEPTH} levels; the rest is not read"
                    ),
                ));
                return Ok(());
            }
            self.visit_index(&digest, desc.size(), kind, &value, depth)
        } else {
            self.visit_manifest(&digest, desc.size(), kind, &value)
        }
    }

    fn visit_index(
        &mut self,
        digest: &Digest,
        size: u64,
        kind: DocumentKind,
        value: &Value,
        depth: usize,
    ) -> Result<()> {
        let subject = format!("index {digest}");
        let entries: Vec<(Descriptor, Option<String>)> = value
            .get("manifests")
            .and_then(Value::as_array)
            .map(|ms| {
                ms.iter()
                    .filter_map(|m| {
                        let d: Descriptor = serde_json::from_value(m.clone()).ok()?;
                        Some((d, variant_of(m).map(str::to_string)))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut info = IndexInfo {
            digest: digest.clone(),
            size,
            kind,
            entries: Vec::new(),
            legacy_only_bytes: None,
            shared_across_platforms: None,
        };
        for (i, (child, variant)) in entries.iter().enumerate() {
            info.entries.push(EntryInfo {
                digest: child.digest().to_string(),
                platform: platform_text(child),
                variant: variant.clone(),
            });
            self.visit(child, &format!("{subject} /manifests/{i}"), depth + 1)?;
        }
        if kind == DocumentKind::FallbackIndex {
            info.legacy_only_bytes = Some(self.check_fallback(&subject, &entries));
            self.check_views(&subject, &Self::raw_list(value, "manifests"))?;
        }
        let block_lists: Vec<&Vec<(Digest, u64)>> = entries
            .iter()
            .filter(|(_, v)| v.as_deref() != Some(crate::names::VARIANT_ANCHOR))
            .filter_map(|(d, _)| Digest::try_from(d.digest()).ok())
            .filter_map(|d| self.blocks_of.get(&d))
            .filter(|b| !b.is_empty())
            .collect();
        if block_lists.len() > 1 {
            let mut count: HashMap<&Digest, (usize, u64)> = HashMap::new();
            for list in &block_lists {
                for (d, size) in list.iter().collect::<HashSet<_>>() {
                    count.entry(d).or_insert((0, *size)).0 += 1;
                }
            }
            let shared: Vec<u64> = count
                .values()
                .filter(|(n, _)| *n > 1)
                .map(|(_, s)| *s)
                .collect();
            info.shared_across_platforms = Some((shared.len(), shared.iter().sum()));
        }
        self.out.info.indexes.push(info);
        Ok(())
    }

    /// Checks that the anchor holds every block; returns the legacy-only bytes.
    fn check_fallback(&mut self, subject: &str, entries: &[(Descriptor, Option<String>)]) -> u64 {
        let digests: Vec<(Option<Digest>, Option<&str>)> = entries
            .iter()
            .map(|(d, v)| (Digest::try_from(d.digest()).ok(), v.as_deref()))
            .collect();
        let anchor_layers: HashSet<Digest> = digests
            .iter()
            .filter(|(_, v)| *v == Some(crate::names::VARIANT_ANCHOR))
            .filter_map(|(d, _)| d.as_ref())
            .filter_map(|d| self.layers_of.get(d))
            .flatten()
            .map(|(d, _)| d.clone())
            .collect();
        let has_anchor = digests
            .iter()
            .any(|(_, v)| *v == Some(crate::names::VARIANT_ANCHOR));
        let mut blocks_layers = HashSet::new();
        for (d, v) in &digests {
            let (Some(d), Some(VARIANT_BLOCKS)) = (d, *v) else {
                continue;
            };
            for (layer, _) in self.layers_of.get(d).into_iter().flatten() {
                blocks_layers.insert(layer.clone());
            }
            if !has_anchor {
                continue;
            }
            for (block, _) in self.blocks_of.get(d).cloned().unwrap_or_default() {
                if !anchor_layers.contains(&block) {
                    self.out.report.push(Violation::new(
                        Rule::FallbackAnchorIncomplete,
                        subject,
                        format!("block {block} of the blocks manifest {d} is not a layer of the GC anchor, so a registry unaware of blocks would delete it"),
                    ));
                }
            }
        }
        let mut counted = HashSet::new();
        digests
            .iter()
            .filter(|(_, v)| v.is_none())
            .filter_map(|(d, _)| d.as_ref())
            .filter_map(|d| self.layers_of.get(d))
            .flatten()
            .filter(|(l, _)| !blocks_layers.contains(l) && counted.insert(l.clone()))
            .map(|(_, size)| size)
            .sum()
    }

    /// Checks that each platform's blocks manifest names the legacy manifest
    /// the index offers for its platform, and that the two are one image:
    /// the same config but for `rootfs.diff_ids`, the same layers where the
    /// blocks manifest has no imports, and legacy layers whose diff IDs are
    /// those of the stub layers' materializations (`spec/fallback.md`).
    fn check_views(&mut self, subject: &str, entries: &[Value]) -> Result<()> {
        for (i, entry) in entries.iter().enumerate() {
            if variant_of(entry) != Some(VARIANT_BLOCKS) {
                continue;
            }
            let digest_in = |e: &Value| {
                e.get("digest")
                    .and_then(Value::as_str)
                    .and_then(|d| Digest::parse(d).ok())
            };
            let Some(blocks_digest) = digest_in(entry) else {
                continue;
            };
            let Some(blocks_doc) = self.docs.get(&blocks_digest).cloned() else {
                continue;
            };
            let vsubject = format!("{subject} /manifests/{i} ({})", blocks_digest.short());
            // The legacy manifest a client unaware of blocks picks for this
            // platform (`fallback.legacy-missing` covers its absence).
            let Some((legacy_digest, unbound)) =
                super::document::check_binding(entries, i, &blocks_doc, &vsubject)
            else {
                continue;
            };
            if let Some(v) = unbound {
                self.out.report.push(v);
            }
            let Some(legacy_doc) = self.docs.get(&legacy_digest).cloned() else {
                continue;
            };
            self.compare_views(&vsubject, &blocks_doc, &legacy_doc, &legacy_digest)?;
        }
        Ok(())
    }

    fn compare_views(
        &mut self,
        subject: &str,
        blocks: &Value,
        legacy: &Value,
        legacy_digest: &Digest,
    ) -> Result<()> {
        let differ = |reason: String| Violation::new(Rule::FallbackViewsDiffer, subject, reason);
        let configs = [blocks, legacy].map(|m| {
            m.get("config")
                .and_then(|c| serde_json::from_value::<Descriptor>(c.clone()).ok())
        });
        let (Some(bc), Some(lc)) = (&configs[0], &configs[1]) else {
            return Ok(());
        };
        let read = |c: &Descriptor| -> Result<Option<Value>> {
            let Ok(d) = Digest::try_from(c.digest()) else {
                return Ok(None);
            };
            Ok(match self.dir.read_json_blob(&d, Some(c.size())) {
                Ok(bytes) => serde_json::from_slice(&bytes).ok(),
                Err(e) if problem_of(&e).is_some() => None,
                Err(e) => return Err(e),
            })
        };
        let (Some(bconf), Some(lconf)) = (read(bc)?, read(lc)?) else {
            return Ok(());
        };
        let legacy_ids = crate::manifest::diff_ids(&lconf);
        let (bconf, lconf) = (
            crate::manifest::without_diff_ids(bconf),
            crate::manifest::without_diff_ids(lconf),
        );
        if bconf != lconf {
            self.out.report.push(differ(format!(
                "the legacy manifest {legacy_digest} has another config: they may differ only in rootfs.diff_ids"
            )));
        }
        let b_layers = Self::descriptors(blocks, "layers");
        let l_layers = Self::descriptors(legacy, "layers");
        if b_layers.len() != l_layers.len() {
            self.out.report.push(differ(format!(
                "the blocks manifest has {} layers, its legacy manifest {legacy_digest} {}",
                b_layers.len(),
                l_layers.len()
            )));
            return Ok(());
        }
        let declared: HashMap<Digest, (String, u64)> = Self::descriptors(blocks, "blocks")
            .iter()
            .filter_map(|b| {
                Some((
                    Digest::try_from(b.digest()).ok()?,
                    (b.media_type().to_string(), b.size()),
                ))
            })
            .collect();
        let mut source = LayoutBlocks::new(self.dir, declared);
        let mut budget = ImportBudget::default();
        for (i, (bl, ll)) in b_layers.iter().zip(&l_layers).enumerate() {
            let Ok(bd) = Digest::try_from(bl.digest()) else {
                continue;
            };
            let Some(scan) = self.scans.get(&bd) else {
                continue;
            };
            // Unreadable or invalid stubs are reported by their own rules.
            if scan.blob_problem.is_some()
                || scan.tar_error.is_some()
                || !scan.bad_imports.is_empty()
                || !scan.non_regular_imports.is_empty()
            {
                continue;
            }
            if scan.imports.is_empty() {
                if bl.digest() != ll.digest() {
                    self.out.report.push(differ(format!(
                        "layer {i} has no imports, so the legacy manifest must reuse it; it has {} instead of {}",
                        ll.digest(),
                        bl.digest()
                    )));
                }
                continue;
            }
            let expanded = {
                let mut blob = self.dir.open_blob(&bd, Some(bl.size()))?;
                let mut stub = open_layer(&mut blob, bl.media_type().as_ref())?;
                let mut spool =
                    tempfile::tempfile().map_err(|e| Error::io(std::env::temp_dir(), e))?;
                let mut hashing = crate::digest::HashingWriter::new(&mut spool);
                let done = expand(
                    &mut stub,
                    &mut source,
                    &mut hashing,
                    &format!("layer {i}"),
                    &self.limits,
                    &mut budget,
                );
                match done {
                    Ok(_) => Some((hashing.finish().0, spool)),
                    Err(e) => {
                        self.out
                            .report
                            .push(differ(format!("layer {i} cannot be materialized: {e}")));
                        None
                    }
                }
            };
            let Some((diff_id, mut spool)) = expanded else {
                continue;
            };
            let Some(expected) = legacy_ids.get(i) else {
                continue;
            };
            if diff_id.as_str() == expected {
                continue;
            }
            use std::io::Seek;
            let mut at = format!(
                "its materialization hashes to {diff_id}, the legacy config says {expected}"
            );
            if let Ok(ld) = Digest::try_from(ll.digest()) {
                if let (Ok(mut blob), Ok(_)) =
                    (self.dir.open_blob(&ld, Some(ll.size())), spool.rewind())
                {
                    if let Ok(legacy_stream) = open_layer(&mut blob, ll.media_type().as_ref()) {
                        if let Ok(Some(first)) = first_difference(&mut spool, legacy_stream) {
                            at = first;
                        }
                    }
                }
            }
            self.out.report.push(differ(format!(
                "layer {i} of the legacy manifest {legacy_digest} is not the materialization of the stub layer {bd}: {at}"
            )));
        }
        Ok(())
    }

    fn raw_list(value: &Value, list: &str) -> Vec<Value> {
        value
            .get(list)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    }

    fn descriptors(value: &Value, list: &str) -> Vec<Descriptor> {
        value
            .get(list)
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .filter_map(|d| serde_json::from_value(d.clone()).ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn visit_manifest(
        &mut self,
        digest: &Digest,
        size: u64,
        kind: DocumentKind,
        value: &Value,
    ) -> Result<()> {
        let subject = format!("manifest {digest}");
        let layers = Self::descriptors(value, "layers");
        let blocks = Self::descriptors(value, "blocks");
        let config: Option<Descriptor> = value
            .get("config")
            .and_then(|c| serde_json::from_value(c.clone()).ok());
        let is_anchor =
            value.get("artifactType").and_then(Value::as_str) == Some(ANCHOR_ARTIFACT_TYPE);

        let diff_ids = match (&config, kind) {
            (Some(c), DocumentKind::BlocksManifest | DocumentKind::ImageManifest) => {
                self.config_diff_ids(c, &subject)?
            }
            (Some(c), _) => {
                if let Some(d) = self.digest_of(c, &subject) {
                    self.read_json(&d, c.size(), &format!("{subject} config"))?;
                }
                None
            }
            _ => None,
        };

        let mut info = ManifestInfo {
            digest: digest.clone(),
            size,
            kind,
            config: config.as_ref().map(|c| c.digest().to_string()),
            layers: Vec::new(),
            blocks: Vec::new(),
        };

        // Blocks first, so that imports can be checked against their contents.
        let mut declared: HashSet<Digest> = HashSet::new();
        let mut block_list = Vec::new();
        for (i, b) in blocks.iter().enumerate() {
            let bsubject = format!("{subject} block {i}");
            let Some(bd) = self.digest_of(b, &bsubject) else {
                continue;
            };
            let bsubject = format!("{subject} block {i} ({})", bd.short());
            self.scan(&bd, b, &bsubject, true)?;
            declared.insert(bd.clone());
            block_list.push((bd.clone(), b.size()));
            info.blocks.push(self.blob_info(&bd, b));
        }
        self.blocks_of.insert(digest.clone(), block_list);

        let mut layer_list = Vec::new();
        if let Some(ids) = &diff_ids {
            if ids.len() != layers.len() {
                self.out.report.push(Violation::new(
                    Rule::LayerDiffIdMismatch,
                    &subject,
                    format!(
                        "{} layers but the config has {} rootfs.diff_ids",
                        layers.len(),
                        ids.len()
                    ),
                ));
            }
        }
        for (i, l) in layers.iter().enumerate() {
            let lsubject = format!("{subject} layer {i}");
            let Some(ld) = self.digest_of(l, &lsubject) else {
                continue;
            };
            let lsubject = format!("{subject} layer {i} ({})", ld.short());
            layer_list.push((ld.clone(), l.size()));
            // The anchor's layers are blocks.
            self.scan(&ld, l, &lsubject, is_anchor)?;
            if !is_anchor {
                self.check_layer(
                    &ld,
                    l,
                    &lsubject,
                    &declared,
                    diff_ids.as_ref().and_then(|ids| ids.get(i)),
                );
            }
            info.layers.push(self.blob_info(&ld, l));
        }
        if kind == DocumentKind::BlocksManifest {
            self.check_import_bounds(&subject, &layer_list);
        }
        self.layers_of.insert(digest.clone(), layer_list);
        self.docs.insert(digest.clone(), value.clone());
        self.out.info.manifests.push(info);
        Ok(())
    }

    fn config_diff_ids(&mut self, c: &Descriptor, subject: &str) -> Result<Option<Vec<String>>> {
        let Some(cd) = self.digest_of(c, subject) else {
            return Ok(None);
        };
        let csubject = format!("{subject} config {}", cd.short());
        let Some(bytes) = self.read_json(&cd, c.size(), &csubject)? else {
            return Ok(None);
        };
        match serde_json::from_slice::<ImageConfiguration>(&bytes) {
            Ok(config) => Ok(Some(config.rootfs().diff_ids().clone())),
            Err(e) => {
                self.out.report.push(Violation::new(
                    Rule::Schema,
                    csubject,
                    format!("not an OCI image configuration: {e}"),
                ));
                Ok(None)
            }
        }
    }

    fn scan(
        &mut self,
        digest: &Digest,
        d: &Descriptor,
        subject: &str,
        as_block: bool,
    ) -> Result<()> {
        if self.scans.contains_key(digest) {
            return Ok(());
        }
        let media_type = d.media_type().to_string();
        let scan = if as_block {
            scan_block_within(self.dir, digest, d.size(), &media_type, &self.limits)?
        } else {
            scan_blob_within(self.dir, digest, d.size(), &media_type, &self.limits)?
        };
        let report = &mut self.out.report;
        if let Some(p) = &scan.blob_problem {
            report.push(blob_violation(p, subject, digest, self.sparse));
        } else if let Some(e) = &scan.tar_error {
            report.push(Violation::new(
                Rule::LayerTarMalformed,
                subject,
                format!("not a readable {media_type}: {e}"),
            ));
        }
        if let Some(bound) = &scan.limit {
            report.push(Violation::new(
                Rule::LimitExceeded,
                subject,
                bound.to_string(),
            ));
        }
        if as_block {
            for p in &scan.block_problems {
                report.push(Violation::new(p.rule, subject, &p.reason).at_entry(&p.entry));
            }
        } else {
            for (path, why) in &scan.bad_types {
                report.push(
                    Violation::new(
                        Rule::LayerEntryType,
                        subject,
                        format!("{why}, which no unpacker here applies"),
                    )
                    .at_entry(path),
                );
            }
            for path in &scan.unclean_paths {
                report.push(
                    Violation::new(
                        Rule::LayerPathUnclean,
                        subject,
                        "the name is absolute or has a `..` component; it is cleaned lexically, and `..` stops at the root",
                    )
                    .at_entry(path),
                );
            }
        }
        self.scans.insert(digest.clone(), scan);
        Ok(())
    }

    /// The bounds an unpacker applies to what the imports of one image
    /// materialize (`spec/imports.md`, "Size bounds"), planned from the
    /// blocks' indexes in layer order, so that `validate` refuses what
    /// `unpack` would.
    fn check_import_bounds(&mut self, subject: &str, layers: &[(Digest, u64)]) {
        let mut budget = ImportBudget::default();
        for (i, (digest, _)) in layers.iter().enumerate() {
            let Some(scan) = self.scans.get(digest) else {
                continue;
            };
            let lsubject = format!("{subject} layer {i} ({})", digest.short());
            let count = scan.imports.len() as u64;
            if let Err(e) = self
                .limits
                .check_imports_per_layer(&format!("layer {i}"), count)
            {
                self.out.report.push(Violation::new(
                    Rule::LimitExceeded,
                    &lsubject,
                    e.to_string(),
                ));
                return;
            }
            for found in &scan.imports {
                let block = found.import.digest();
                let Some(index) = self.scans.get(block).and_then(|b| b.index.as_ref()) else {
                    continue;
                };
                // A source the block lacks is reported by its own rule.
                let Ok((items, bytes)) =
                    crate::block::plan(index, found.import.source_in_block().as_bytes())
                else {
                    continue;
                };
                let added = budget.add(
                    &self.limits,
                    block,
                    index.content_bytes(),
                    bytes,
                    items.len() as u64,
                );
                if let Err(e) = added {
                    self.out.report.push(
                        Violation::new(Rule::LimitExceeded, &lsubject, e.to_string())
                            .at_entry(&found.entry),
                    );
                    return;
                }
            }
        }
    }

    fn check_layer(
        &mut self,
        digest: &Digest,
        d: &Descriptor,
        subject: &str,
        declared: &HashSet<Digest>,
        diff_id: Option<&String>,
    ) {
        let Some(scan) = self.scans.get(digest) else {
            return;
        };
        let report = &mut self.out.report;
        if let (Some(expected), Some(found)) = (diff_id, &scan.diff_id) {
            if expected != found.as_str() {
                report.push(Violation::new(
                    Rule::LayerDiffIdMismatch,
                    subject,
                    format!("uncompressed content hashes to {found}, the config's rootfs.diff_ids says {expected}"),
                ));
            }
        }
        for (path, kind) in &scan.non_regular_imports {
            report.push(
                Violation::new(
                    Rule::ImportEntryType,
                    subject,
                    format!("an import entry must be a regular file, this is a {kind}"),
                )
                .at_entry(path),
            );
        }
        for (path, err) in &scan.bad_imports {
            report.push(Violation::new(err.rule(), subject, err.to_string()).at_entry(path));
        }
        for path in &scan.duplicate_imports {
            report.push(
                Violation::new(
                    Rule::ImportDuplicate,
                    subject,
                    "the same import entry appears twice in the layer",
                )
                .at_entry(path),
            );
        }
        let has_imports = !(scan.imports.is_empty() && scan.bad_imports.is_empty());
        if has_imports && !is_import_layer(d.media_type().as_ref()) {
            report.push(Violation::new(
                Rule::LayerImportMediaType,
                subject,
                format!(
                    "the layer has import entries but media type {}; a client unaware of imports would unpack it without them",
                    d.media_type()
                ),
            ));
        }
        for found in &scan.imports {
            if scan.paths.contains(&found.target_bytes) {
                report.push(
                    Violation::new(
                        Rule::ImportConflict,
                        subject,
                        format!("the layer holds both {} and its import entry", found.target),
                    )
                    .at_entry(&found.entry),
                );
            }
            let block = found.import.digest();
            if !declared.contains(block) {
                report.push(
                    Violation::new(
                        Rule::ImportUndeclaredDigest,
                        subject,
                        format!("block {block} is not listed in the manifest's blocks"),
                    )
                    .at_entry(&found.entry),
                );
                continue;
            }
            let Some(block_scan) = self.scans.get(block) else {
                continue;
            };
            if block_scan.blob_problem.is_none()
                && block_scan.tar_error.is_none()
                && !block_scan.contains(found.import.source_in_block())
            {
                report.push(
                    Violation::new(
                        Rule::ImportSourceMissing,
                        subject,
                        format!("block {block} has no entry {}", found.import.source()),
                    )
                    .at_entry(&found.entry),
                );
            }
        }
    }

    fn blob_info(&self, digest: &Digest, d: &Descriptor) -> BlobInfo {
        let scan = self.scans.get(digest);
        BlobInfo {
            digest: digest.to_string(),
            media_type: d.media_type().to_string(),
            size: d.size(),
            uncompressed_size: scan.and_then(|s| s.diff_id.as_ref().map(|_| s.uncompressed_size)),
            entries: scan.map_or(0, |s| s.entries),
            top_level: scan
                .map(|s| s.top_level.iter().take(16).cloned().collect())
                .unwrap_or_default(),
            annotations: d
                .annotations()
                .as_ref()
                .map(|a| a.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default(),
            imports: scan.map(|s| s.imports.clone()).unwrap_or_default(),
        }
    }
}

/// The set of distinct blocks across the manifests of an image, with sizes.
pub fn distinct_blocks(info: &ImageInfo) -> BTreeSet<(String, u64)> {
    info.manifests
        .iter()
        .flat_map(|m| m.blocks.iter().map(|b| (b.digest.clone(), b.size)))
        .collect()
}
