//! What a build is asked for: the adds, the config, the platforms, the output
//! and how it is published, and the checks on them that come before any
//! input is read.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use oci_blocks_core::layout::OciRef;
use oci_blocks_core::platform::Platform;
use serde::Serialize;

use crate::{Error, Result};

/// One `--add SRC:DEST`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Add {
    /// The input tree or file.
    pub src: PathBuf,
    /// The absolute path it is placed at.
    pub dest: String,
    /// Set by [`crate::rechunk`]: the add's layer holds only the imports of
    /// its blocks, because the rest of the tree (its directories, the files
    /// no block owns) is already in the base image; the history names the
    /// layer by this label. Several such adds may share a DEST.
    pub imports_only: Option<String>,
    /// Set by [`crate::rechunk`] for a package of a system package manager:
    /// the add's whole tree is one block with these annotations, each of its
    /// regular files imported at its place, instead of the block rules.
    pub whole_block: Option<BTreeMap<String, String>>,
    /// Set by [`crate::rechunk`]: adjacent adds of the same group share one
    /// layer (without it, each add is a layer, or `max_layers` merges them).
    pub layer_group: Option<usize>,
}

impl Add {
    /// An ordinary `--add SRC:DEST`.
    pub fn new(src: impl Into<PathBuf>, dest: impl Into<String>) -> Self {
        Add {
            src: src.into(),
            dest: dest.into(),
            imports_only: None,
            whole_block: None,
            layer_group: None,
        }
    }
}

/// Everything a build needs.
#[derive(Clone, Debug)]
pub struct BuildSpec {
    /// The base image, whose layers are reused and whose config is inherited.
    pub base: Option<OciRef>,
    /// Layers to add, in order.
    pub adds: Vec<Add>,
    /// `config.Entrypoint`.
    pub entrypoint: Option<Vec<String>>,
    /// `config.Cmd`.
    pub cmd: Option<Vec<String>>,
    /// `K=V` environment entries (replacing inherited ones of the same K).
    pub env: Vec<String>,
    /// `config.WorkingDir`.
    pub workdir: Option<String>,
    /// `config.User`.
    pub user: Option<String>,
    /// `config.Labels` to add.
    pub labels: BTreeMap<String, String>,
    /// `OS/ARCH[/VARIANT]` of each image to build; none: the base's, or
    /// this machine's (as `docker build` and the unpacker default). Several
    /// give one index.
    pub platforms: Vec<String>,
    /// Layers added only for one platform (after the common ones).
    pub adds_for: Vec<(String, Add)>,
    /// Where the image goes.
    pub out: OciRef,
    /// Explicit block globs.
    pub block_globs: Vec<String>,
    /// Files below this size stay in the layer.
    pub block_min_size: u64,
    /// The canonical mtime (`SOURCE_DATE_EPOCH`).
    pub source_date_epoch: u64,
    /// Where the build cache lives (none: no cache).
    pub cache_dir: Option<PathBuf>,
    /// Use the import-layer media type for stub layers (the default).
    pub import_media_type: bool,
    /// How the image is published: a fallback index (the default) or the bare
    /// blocks manifest.
    pub fallback: Fallback,
    /// At most this many layers: adjacent added layers are merged to fit.
    pub max_layers: Option<usize>,
    /// Leave the base image's blobs out of the output layout (they stay
    /// referenced; the layout entry is marked `io.oci-blocks.sparse`).
    pub sparse: bool,
}

/// How a build publishes its image (`spec/fallback.md`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fallback {
    /// An index: the legacy manifest (every import materialized), the blocks
    /// manifest, and the GC anchor.
    #[default]
    Index,
    /// The bare blocks manifest, for registries and clients that know blocks.
    None,
}

/// Refuses options that contradict each other or name nothing, before
/// anything is written.
pub(super) fn check_options(spec: &BuildSpec) -> Result<()> {
    let mut platforms = HashSet::new();
    for p in &spec.platforms {
        parse_platform(p)?;
        if !platforms.insert(p.as_str()) {
            return Err(Error::option(
                format!("--platform {p}"),
                "the platform is given twice",
            ));
        }
    }
    for (p, add) in &spec.adds_for {
        if !platforms.contains(p.as_str()) {
            return Err(Error::option(
                format!("--add-for {p} {}:{}", add.src.display(), add.dest),
                format!("{p} is not a platform being built (give it with --platform)"),
            ));
        }
    }
    if spec.sparse && spec.base.is_none() {
        return Err(Error::option(
            "--sparse",
            "a sparse layout leaves out the base image's blobs, and there is no --base",
        ));
    }
    let mut seen = HashSet::new();
    let all_adds = spec
        .adds
        .iter()
        .map(|a| (None, a))
        .chain(spec.adds_for.iter().map(|(p, a)| (Some(p), a)));
    for (platform, add) in all_adds {
        let option = format!("--add {}:{}", add.src.display(), add.dest);
        if !add.dest.starts_with('/') {
            return Err(Error::option(
                option,
                format!("DEST {:?} is not an absolute path", add.dest),
            ));
        }
        if add.dest.split('/').any(|c| c == ".." || c == ".") {
            return Err(Error::option(
                option,
                format!("DEST {:?} has a `.` or `..` component", add.dest),
            ));
        }
        let clean = add.dest.trim_end_matches('/');
        if add.imports_only.is_none() && !seen.insert((platform, clean.to_string())) {
            return Err(Error::option(
                option,
                format!("DEST {:?} is given by two --add options", add.dest),
            ));
        }
        if std::fs::symlink_metadata(&add.src).is_err() {
            return Err(Error::MissingSource {
                src: add.src.display().to_string(),
            });
        }
    }
    Ok(())
}

/// `--platform OS/ARCH[/VARIANT]`, with the error that names the option.
pub fn platform_arg(text: &str) -> Result<Platform> {
    Platform::parse(text).map_err(|_| {
        Error::option(
            format!("--platform {text}"),
            "expected OS/ARCH or OS/ARCH/VARIANT",
        )
    })
}

/// The platform to take from an index: the one asked for, else the host's.
pub(crate) fn wanted_platform(platform: Option<&str>) -> Result<Platform> {
    platform.map_or_else(|| Ok(Platform::host()), platform_arg)
}

/// `OS/ARCH[/VARIANT]` into its parts (core's [`Platform`] spelling).
pub fn parse_platform(text: &str) -> Result<(String, String, Option<String>)> {
    let p = platform_arg(text)?;
    Ok((p.os, p.architecture, p.variant))
}
