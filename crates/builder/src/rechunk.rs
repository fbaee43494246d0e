//! Rechunking: an image any tool built, rewritten as blocks beside its layers
//! and as a capped set of plain layers for legacy clients
//! (`spec/fallback.md`, "Rechunking").
//!
//! In the order it runs, for each platform of the source:
//! - `source` picks the source's manifests (a Docker schema 2 image is
//!   renamed to OCI's types first) and a prior's number of groups.
//! - [`tree::final_tree`] reads the layers' tar streams (nothing is
//!   extracted) into the final tree, with whiteouts and opaque directories
//!   applied.
//! - Components: the regular files of that tree that the block rules of
//!   `spec/reproducibility.md` can own (jars anywhere, Python distributions
//!   in any `site-packages` or `dist-packages`), owned by root, without hard
//!   links or extended attributes, are extracted to a scratch directory, and
//!   the builder's own [`plan`] decides the blocks there, so a jar or
//!   distribution gets the digest `build` gives it; [`dpkg`] reads which
//!   files each installed Debian package owns, each package one block.
//! - The source's layers are kept, each rewritten without the entries the
//!   blocks now own (a layer that loses nothing is kept byte for byte): that
//!   is the remainder, with every header, owner and extended attribute.
//! - `group` spreads the components over `min(max_layers / 2, max_layers -
//!   kept layers)` groups (a prior's number when it fits), by a hash of
//!   their origin (Maven group, Python project, Debian source package), so
//!   that a component that does not change stays in a group whose layer
//!   keeps its digest.
//! - The builder then writes the image on the remainder as its base, one
//!   imports-only layer per group: the blocks manifest, and with the default
//!   fallback the legacy manifest whose group layers are those imports
//!   materialized.

pub mod apk;
pub mod dpkg;
mod group;
mod managed;
pub mod npm;
mod source;
pub mod tree;

pub use group::group_of;
use group::{below, move_into, move_to, origin_of, rule_could_take, text, why_kept};
use source::{as_oci, descriptor_of, groups_of_prior, image_error, manifests, read_json};

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use oci_blocks_core::Digest;
use oci_blocks_core::entry::{self, Kind};
use oci_blocks_core::layout::{OciDir, OciRef};
use oci_blocks_core::names::{
    ANNOTATION_NPM_PACKAGE, ANNOTATION_TITLE, DOCKER_LAYER_TAR_GZIP, OCI_CONFIG, OCI_INDEX,
    OCI_LAYER_TAR_GZIP, OCI_MANIFEST,
};
use oci_blocks_core::platform::Platform;
use rayon::prelude::*;
use serde::Serialize;
use serde_json::{Value, json};

use crate::plan::{self, Rules};
use crate::{Add, BuildReport, BuildSpec, Error, Fallback, Result, input};
use tree::Layer;

/// The default cap on layers.
pub const DEFAULT_MAX_LAYERS: usize = 64;

/// What a rechunk is asked for.
#[derive(Clone, Debug)]
pub struct RechunkSpec {
    /// The source image, in a layout.
    pub src: OciRef,
    /// How the user named the source, for the history.
    pub origin: String,
    /// The output.
    pub out: OciRef,
    /// The platforms to take from a source index; all of them when empty.
    pub platforms: Vec<String>,
    /// The cap on layers of each output manifest.
    pub max_layers: usize,
    /// Whether a legacy manifest is written beside the blocks manifest.
    pub fallback: Fallback,
    /// `SOURCE_DATE_EPOCH` for the new layers and configs.
    pub source_date_epoch: u64,
    /// The build cache.
    pub cache_dir: Option<PathBuf>,
    /// An earlier rechunk of the same application, in a layout: its number
    /// of groups is kept when it fits, so that its unchanged groups keep
    /// their layers.
    pub prior: Option<OciRef>,
}

/// One component: a block the plan made, and where it goes.
#[derive(Clone, Debug, Serialize)]
pub struct Component {
    /// `jar` or `python`.
    pub ecosystem: String,
    /// The Maven group, the Python project, or the jar's name without one.
    pub origin: String,
    /// The paths its imports replace, relative to the root.
    pub paths: Vec<String>,
    /// Bytes of its files.
    pub bytes: u64,
    /// The group (legacy layer) it is in.
    pub group: usize,
}

/// What was rechunked for one platform.
#[derive(Clone, Debug, Serialize)]
pub struct RechunkPlatform {
    /// The platform, when the source is an index.
    pub platform: Option<String>,
    /// The source's layers, all kept.
    pub layers: usize,
    /// How many of them lost entries to blocks and were rewritten.
    pub rewritten: usize,
    /// The components that became blocks.
    pub components: Vec<Component>,
    /// Files the rules would take that stay in the layers, and why.
    pub kept: BTreeMap<String, usize>,
    /// Groups with components (added layers).
    pub groups: usize,
    /// How many groups components were spread over (`G` of `spec/fallback.md`).
    pub group_count: usize,
    /// Whether `G` is the prior rechunk's.
    pub prior_groups_kept: bool,
}

/// What a rechunk did.
#[derive(Clone, Debug, Serialize)]
pub struct RechunkReport {
    /// Per platform.
    pub platforms: Vec<RechunkPlatform>,
    /// The build on the remainder.
    pub build: BuildReport,
}

/// A package of a package manager (dpkg, npm): its files become one block,
/// each imported at its place.
struct SystemPackage {
    ecosystem: &'static str,
    origin: String,
    /// The directory the block's paths are relative to (empty: the root).
    root: Vec<u8>,
    /// Its files, relative to the image's root.
    files: Vec<Vec<u8>>,
    annotations: BTreeMap<String, String>,
}

/// One platform rechunked into the base layout: its remainder image, and
/// the adds of its groups.
struct PlatformWork {
    report: RechunkPlatform,
    manifest: (Digest, u64),
    adds: Vec<Add>,
}

fn rechunk_platform(
    spec: &RechunkSpec,
    src: &OciDir,
    platform: Option<&str>,
    manifest: &Value,
    base: &OciDir,
    scratch: &Path,
    prior_groups: Option<usize>,
) -> Result<PlatformWork> {
    let image = match platform {
        Some(p) => format!("{} ({p})", spec.origin),
        None => spec.origin.clone(),
    };
    if manifest.get("blocks").is_some() {
        return Err(image_error(
            &image,
            "already has blocks; rechunk takes images without them",
        ));
    }
    let layers: Vec<Layer> = manifest
        .get("layers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|l| descriptor_of(l, &image))
                .collect::<Result<Vec<_>>>()
        })
        .transpose()?
        .unwrap_or_default()
        .into_iter()
        .map(|(digest, media_type, size)| Layer {
            digest,
            media_type,
            size,
        })
        .collect();
    let fits = spec.max_layers.saturating_sub(layers.len());
    let prior_groups = prior_groups.filter(|g| *g <= fits && *g > 0);
    let room = prior_groups.unwrap_or_else(|| (spec.max_layers / 2).min(fits));
    if room == 0 {
        return Err(Error::option(
            format!("--max-layers {}", spec.max_layers),
            format!(
                "{image} has {} layers, which are kept, and the blocks need at least one more: the cap can be at least {}",
                layers.len(),
                layers.len() + 1
            ),
        ));
    }
    let (config_digest, _, config_size) = descriptor_of(
        manifest
            .get("config")
            .ok_or_else(|| image_error(&image, "the manifest has no config"))?,
        &image,
    )?;
    let mut config = read_json(src, &config_digest, config_size, &image)?;

    // The final tree, and the files a block could own.
    let keep = |p: &[u8]| dpkg::is_database(p) || apk::is_database(p) || npm::is_manifest(p);
    let (tree, kept_files) = tree::final_tree(src, &image, &layers, &keep)?;
    let mut kept: BTreeMap<String, usize> = BTreeMap::new();
    let mut wanted: Vec<Vec<u8>> = Vec::new();
    for (path, node) in &tree {
        if !rule_could_take(path) || node.kind == Kind::Dir {
            continue;
        }
        match why_kept(&tree, path, node) {
            Some(why) => *kept.entry(why.to_string()).or_default() += 1,
            None => wanted.push(path.clone()),
        }
    }
    // Debian packages: the files each installed package lists, unchanged
    // since dpkg installed them, that no other rule takes.
    let db = dpkg::database_paths(&tree);
    let manifests_npm = npm::manifests(&tree);
    let meta = scratch.join("meta");
    fs::create_dir_all(&meta).map_err(|e| Error::io(&meta, e))?;
    let apk_db = apk::database_paths(&tree);
    let mut meta_files = db.clone();
    meta_files.extend(manifests_npm.iter().cloned());
    meta_files.extend(apk_db.iter().cloned());
    tree::write_kept(&tree, &kept_files, &meta_files, &meta)?;
    drop(kept_files);
    // Debian and Alpine packages: the files each installed package lists,
    // that no other rule takes.
    let mut managers = Vec::new();
    if !db.is_empty() {
        managers.push(managed::debian(
            &tree,
            dpkg::read(&meta)?,
            dpkg::diversions(&meta)?,
        ));
    }
    if !apk_db.is_empty() {
        managers.push(managed::alpine(apk::read(&meta)?));
    }
    let managed_files = managed::candidates(&tree, &managers, &mut kept);
    let listed = managed::listed(&managers);
    // npm packages: every file of a node_modules/NAME directory with a
    // package.json, but the packages nested in its own node_modules.
    let npm_packages = npm::read(&meta, &manifests_npm)?;
    let mut npm_files: Vec<(usize, Vec<u8>)> = Vec::new();
    for (ni, p) in npm_packages.iter().enumerate() {
        let nested = entry::join(&p.dir, b"node_modules");
        for (f, node) in below(&tree, &p.dir) {
            if node.kind == Kind::Dir
                || entry::is_at_or_below(f, &nested)
                || rule_could_take(f)
                || listed.contains(f.as_slice())
            {
                continue;
            }
            match why_kept(&tree, f, node) {
                Some(why) => *kept.entry(why.to_string()).or_default() += 1,
                None => npm_files.push((ni, f.clone())),
            }
        }
    }
    let all = scratch.join("all");
    fs::create_dir_all(&all).map_err(|e| Error::io(&all, e))?;
    let mut to_extract = wanted.clone();
    to_extract.extend(managed_files.iter().map(|(_, _, f)| f.clone()));
    to_extract.extend(npm_files.iter().map(|(_, f)| f.clone()));
    let speculative = tree::extract(src, &image, &layers, &tree, &to_extract, &all, base)?;

    // The builder's rules decide the blocks, on the extracted files alone.
    let extracted: BTreeSet<&[u8]> = wanted.iter().map(Vec::as_slice).collect();
    let entries: Vec<input::Entry> = input::walk(&all)?;
    let planned = plan::plan(&entries, &Rules::new(&[], 0)?)?;
    let mut components: Vec<(plan::BlockPlan, Component)> = Vec::new();
    for block in planned.blocks {
        let roots: Vec<Vec<u8>> = block.imports.iter().map(|(t, _)| t.clone()).collect();
        // A block replaces its paths whole: every file of the final tree
        // below them must be in it.
        let whole = roots.iter().all(|root| {
            below(&tree, root).all(|(p, n)| n.kind == Kind::Dir || extracted.contains(p.as_slice()))
        });
        if !whole {
            *kept
                .entry("a component with files a block cannot hold".into())
                .or_default() += roots.len();
            continue;
        }
        // A file named .jar that is not a zip archive is not a jar.
        let Ok(annotations) = block.annotate(&entries) else {
            *kept.entry("not a readable jar".into()).or_default() += 1;
            continue;
        };
        let bytes = block.entries.iter().map(|(_, i)| entries[*i].size).sum();
        let ecosystem = if block.python.is_some() {
            "python"
        } else {
            "jar"
        };
        let component = Component {
            ecosystem: ecosystem.into(),
            origin: origin_of(&block.rule, &annotations, &roots),
            paths: roots.iter().map(|r| text(r)).collect(),
            bytes,
            group: 0,
        };
        components.push((block, component));
    }
    // Distributions that share a top-level name of one site-packages (a
    // namespace package) are planned together, so they stay in one group.
    let mut cluster: BTreeMap<Vec<u8>, String> = BTreeMap::new();
    for (block, c) in &components {
        if let Some(py) = &block.python {
            for (target, _) in &block.imports {
                let inside = &target[py.site_packages.len()..];
                let inside = inside.strip_prefix(b"/").unwrap_or(inside);
                let top = inside.split(|&b| b == b'/').next().unwrap_or(inside);
                let key = entry::join(&py.site_packages, top);
                let entry = cluster.entry(key).or_insert_with(|| c.origin.clone());
                if c.origin < *entry {
                    *entry = c.origin.clone();
                }
            }
        }
    }
    for (block, c) in &mut components {
        let key = block.python.as_ref().and_then(|py| {
            block.imports.iter().find_map(|(target, _)| {
                let inside = &target[py.site_packages.len()..];
                let inside = inside.strip_prefix(b"/").unwrap_or(inside);
                let top = inside.split(|&b| b == b'/').next().unwrap_or(inside);
                cluster.get(&entry::join(&py.site_packages, top)).cloned()
            })
        });
        c.group = group_of(&c.ecosystem, key.as_deref().unwrap_or(&c.origin), room);
    }

    // Debian packages whose files the other rules left alone, each file
    // still as dpkg installed it.
    let taken: Vec<Vec<u8>> = components
        .iter()
        .flat_map(|(_, c)| c.paths.iter().map(|p| p.as_bytes().to_vec()))
        .collect();
    let managed_files = managed_files
        .into_iter()
        .filter(|(_, _, f)| !taken.iter().any(|root| entry::is_at_or_below(f, root)))
        .collect();
    // Debian, Alpine and npm packages alike: a block of their files, each
    // imported at its place, the block's paths relative to the package's
    // root.
    let mut systems: Vec<SystemPackage> =
        managed::verified(&managers, managed_files, &all, &mut kept)?
            .into_iter()
            .map(|((mi, pi), files)| {
                let (m, p) = (&managers[mi], &managers[mi].packages[pi]);
                SystemPackage {
                    ecosystem: m.ecosystem,
                    origin: p.origin.clone(),
                    root: Vec::new(),
                    files,
                    annotations: BTreeMap::from([
                        (
                            m.annotation.to_string(),
                            format!("{}={}", p.name, p.version),
                        ),
                        (ANNOTATION_TITLE.to_string(), p.name.clone()),
                    ]),
                }
            })
            .collect();
    let mut npm_by: BTreeMap<usize, Vec<Vec<u8>>> = BTreeMap::new();
    for (ni, f) in npm_files {
        npm_by.entry(ni).or_default().push(f);
    }
    systems.extend(npm_by.into_iter().map(|(ni, files)| {
        let p = &npm_packages[ni];
        SystemPackage {
            ecosystem: "npm",
            origin: p.name.clone(),
            root: p.dir.clone(),
            files,
            annotations: BTreeMap::from([
                (
                    ANNOTATION_NPM_PACKAGE.to_string(),
                    format!("{}@{}", p.name, p.version),
                ),
                (ANNOTATION_TITLE.to_string(), p.name.clone()),
            ]),
        }
    }));
    let package_components: Vec<(usize, Component)> = systems
        .iter()
        .enumerate()
        .map(|(si, p)| {
            let bytes = p
                .files
                .iter()
                .filter_map(|f| tree.get(f))
                .map(|n| n.size)
                .sum();
            let component = Component {
                ecosystem: p.ecosystem.into(),
                origin: p.origin.clone(),
                paths: p.files.iter().map(|f| text(f)).collect(),
                bytes,
                group: group_of(p.ecosystem, &p.origin, room),
            };
            (si, component)
        })
        .collect();

    // Each group's components in trees of their own, one imports-only add
    // per tree, the adds of a group in one layer.
    // Per group: the jar and Python components, and the packages of
    // package managers (with their index in `systems`).
    type Members = (Vec<Component>, Vec<(usize, Component)>);
    let mut by_group: BTreeMap<usize, Members> = BTreeMap::new();
    for (_, c) in &components {
        by_group.entry(c.group).or_default().0.push(c.clone());
    }
    for (pi, c) in &package_components {
        by_group
            .entry(c.group)
            .or_default()
            .1
            .push((*pi, c.clone()));
    }
    let mut adds = Vec::new();
    let mut owned: Vec<Vec<u8>> = Vec::new();
    for (g, (members, managed)) in &by_group {
        let mut origins: Vec<&str> = members
            .iter()
            .chain(managed.iter().map(|(_, c)| c))
            .map(|c| c.origin.as_str())
            .collect();
        origins.sort_unstable();
        origins.dedup();
        let label = format!(
            "group {g} of {room}: {} from {}",
            origins.join(" "),
            spec.origin
        );
        if !members.is_empty() {
            let dir = scratch.join(format!("group-{g}"));
            fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            for c in members {
                for p in &c.paths {
                    move_into(&all, &dir, p.as_bytes())?;
                    owned.push(p.as_bytes().to_vec());
                }
            }
            adds.push(Add {
                src: dir,
                dest: "/".into(),
                imports_only: Some(label.clone()),
                whole_block: None,
                layer_group: Some(*g),
            });
        }
        for (si, _) in managed {
            let p = &systems[*si];
            let dir = scratch.join(format!("package-{si}"));
            fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            for f in &p.files {
                let inside = f[p.root.len()..]
                    .strip_prefix(b"/")
                    .unwrap_or(&f[p.root.len()..]);
                move_to(
                    &all.join(OsStr::from_bytes(f)),
                    &dir.join(OsStr::from_bytes(inside)),
                )?;
                owned.push(f.clone());
            }
            adds.push(Add {
                src: dir,
                dest: format!("/{}", text(&p.root)),
                imports_only: Some(label.clone()),
                whole_block: Some(p.annotations.clone()),
                layer_group: Some(*g),
            });
        }
    }
    components.extend(package_components.into_iter().map(|(_, c)| {
        (
            plan::BlockPlan {
                rule: "package".into(),
                entries: Vec::new(),
                imports: Vec::new(),
                annotations: BTreeMap::new(),
                python: None,
            },
            c,
        )
    }));

    // The remainder: each layer without what the blocks own.
    let mut drops: Vec<HashSet<usize>> = vec![HashSet::new(); layers.len()];
    for root in &owned {
        for (_, node) in below(&tree, root).filter(|(_, n)| n.kind != Kind::Dir) {
            drops[node.layer].insert(node.ordinal);
        }
    }
    let mut new_layers = Vec::new();
    let mut diff_ids: Vec<Value> = config
        .pointer("/rootfs/diff_ids")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if diff_ids.len() != layers.len() {
        return Err(image_error(
            &image,
            format!(
                "the config lists {} diff IDs for {} layers",
                diff_ids.len(),
                layers.len()
            ),
        ));
    }
    // Each layer is its own gzip stream: they are rewritten side by side.
    let written: Vec<(Value, Option<Digest>)> = layers
        .par_iter()
        .enumerate()
        .map(|(i, layer)| {
            if drops[i].is_empty() {
                let mut blob = src.open_blob(&layer.digest, Some(layer.size))?;
                base.write_blob_verified(&mut blob, &layer.digest, Some(layer.size))?;
                // Docker's gzip layer is the OCI one by another name, as when
                // skopeo converts an image to OCI.
                let media_type = if layer.media_type == DOCKER_LAYER_TAR_GZIP {
                    OCI_LAYER_TAR_GZIP
                } else {
                    layer.media_type.as_str()
                };
                let d = json!({
                    "mediaType": media_type, "digest": layer.digest.to_string(), "size": layer.size,
                });
                return Ok((d, None));
            }
            // The layer as the extraction already wrote it, when the blocks
            // took every entry extracted from it.
            let (digest, size, diff_id) = match &speculative[i] {
                Some((taken, done)) if *taken == drops[i] => done.clone(),
                _ => tree::rewrite(src, &image, layer, &drops[i], base)?,
            };
            let d = json!({
                "mediaType": OCI_LAYER_TAR_GZIP, "digest": digest.to_string(), "size": size,
            });
            Ok((d, Some(diff_id)))
        })
        .collect::<Result<_>>()?;
    let mut rewritten = 0;
    for (i, (d, diff_id)) in written.into_iter().enumerate() {
        new_layers.push(d);
        if let Some(diff_id) = diff_id {
            rewritten += 1;
            diff_ids[i] = json!(diff_id.to_string());
        }
    }
    config["rootfs"] = json!({"type": "layers", "diff_ids": diff_ids});
    let config_bytes =
        serde_json::to_vec(&config).map_err(|e| image_error(&image, e.to_string()))?;
    let (cd, cs) = base.write_blob_bytes(&config_bytes)?;
    let remainder = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": cd.to_string(), "size": cs},
        "layers": new_layers,
    });
    let bytes = serde_json::to_vec(&remainder).map_err(|e| image_error(&image, e.to_string()))?;
    let manifest = base.write_blob_bytes(&bytes)?;
    Ok(PlatformWork {
        report: RechunkPlatform {
            platform: platform.map(str::to_string),
            layers: layers.len(),
            rewritten,
            components: components.into_iter().map(|(_, c)| c).collect(),
            kept,
            groups: by_group.len(),
            group_count: room,
            prior_groups_kept: prior_groups.is_some(),
        },
        manifest,
        adds,
    })
}

/// Rechunks the image `spec.src` into `spec.out`.
pub fn rechunk(spec: &RechunkSpec) -> Result<RechunkReport> {
    let parent = spec
        .out
        .path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let scratch = tempfile::Builder::new()
        .prefix(".rechunk-")
        .tempdir_in(parent)
        .map_err(|e| Error::io(parent, e))?;
    let src = OciDir::open(&spec.src.path)?;
    let converted = as_oci(spec, &src, scratch.path())?;
    let mut spec = spec.clone();
    let src = match converted {
        Some(dir) => {
            spec.src.tag = Some("source".into());
            dir
        }
        None => src,
    };
    let spec = &spec;
    let base = OciDir::create(scratch.path().join("remainder"))?;
    // The source is validated whole on one core while the other reads its
    // layers for the final trees, which bound their own work; nothing is
    // written outside the scratch directory until validation has passed,
    // and its verdict comes first.
    let (validation, rechunked) = std::thread::scope(|s| {
        let validation = s.spawn(|| crate::build::invalid(&src, spec.src.tag.as_deref()));
        let rechunked = (|| -> Result<_> {
            let chosen = manifests(spec, &src)?;
            let mut works = Vec::new();
            for (i, (platform, manifest)) in chosen.iter().enumerate() {
                let dir = scratch.path().join(format!("platform-{i}"));
                let prior_groups = match &spec.prior {
                    Some(prior) => groups_of_prior(prior, platform.as_deref())?,
                    None => None,
                };
                works.push(rechunk_platform(
                    spec,
                    &src,
                    platform.as_deref(),
                    manifest,
                    &base,
                    &dir,
                    prior_groups,
                )?);
            }
            Ok((chosen, works))
        })();
        let validation = validation
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (validation, rechunked)
    });
    if let Some(report) = validation? {
        return Err(image_error(
            &spec.origin,
            format!("not a valid image:\n{report}"),
        ));
    }
    let (chosen, works) = rechunked?;
    // The remainder image is the base of the build.
    let top = if works.len() == 1 && chosen[0].0.is_none() {
        let (d, s) = &works[0].manifest;
        json!({"mediaType": OCI_MANIFEST, "digest": d.to_string(), "size": s})
    } else {
        let manifests: Vec<Value> = works
            .iter()
            .zip(&chosen)
            .map(|(w, (p, _))| {
                let (d, s) = &w.manifest;
                let p = p.as_deref().and_then(|p| Platform::parse(p).ok());
                let mut platform = json!({});
                if let Some(p) = p {
                    platform = json!({"os": p.os, "architecture": p.architecture});
                    if let Some(v) = p.variant {
                        platform["variant"] = json!(v);
                    }
                }
                json!({"mediaType": OCI_MANIFEST, "digest": d.to_string(), "size": s, "platform": platform})
            })
            .collect();
        let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests});
        let bytes =
            serde_json::to_vec(&index).map_err(|e| image_error(&spec.origin, e.to_string()))?;
        let (d, s) = base.write_blob_bytes(&bytes)?;
        json!({"mediaType": OCI_INDEX, "digest": d.to_string(), "size": s})
    };
    let descriptor =
        serde_json::from_value(top).map_err(|e| image_error(&spec.origin, e.to_string()))?;
    base.set_tag("remainder", descriptor)?;

    let per_platform = chosen.iter().any(|(p, _)| p.is_some());
    let mut build = BuildSpec {
        base: Some(OciRef {
            path: base.root().to_path_buf(),
            tag: Some("remainder".into()),
        }),
        adds: Vec::new(),
        entrypoint: None,
        cmd: None,
        env: Vec::new(),
        workdir: None,
        user: None,
        labels: BTreeMap::new(),
        platforms: Vec::new(),
        adds_for: Vec::new(),
        out: spec.out.clone(),
        block_globs: Vec::new(),
        block_min_size: 0,
        source_date_epoch: spec.source_date_epoch,
        cache_dir: spec.cache_dir.clone(),
        import_media_type: true,
        fallback: spec.fallback,
        max_layers: None,
        sparse: false,
    };
    let mut platforms = Vec::new();
    for (w, (p, _)) in works.into_iter().zip(&chosen) {
        match p {
            Some(p) if per_platform => {
                build.platforms.push(p.clone());
                build
                    .adds_for
                    .extend(w.adds.into_iter().map(|a| (p.clone(), a)));
            }
            _ => build.adds.extend(w.adds),
        }
        platforms.push(w.report);
    }
    let report = crate::build(&build)?;
    Ok(RechunkReport {
        platforms,
        build: report,
    })
}
