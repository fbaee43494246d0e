//! `oci-blocks unpack`: an image into a root filesystem, imports resolved.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use oci_blocks_core::layout::{OciDir, OciRef, default_state_dir};
use oci_blocks_shim::{LinkMode, UnpackOptions, unpack, unpack_bundle};

use crate::output::outln;

/// Unpack an image into a root filesystem, resolving its imports from the block
/// store.
///
/// From an index, the blocks variant of this machine's platform is chosen when
/// there is one, else the platform's plain manifest. Every blob and diff ID is
/// verified while it streams; every path is resolved inside ROOTFS; ROOTFS
/// appears only when everything verified.
#[derive(clap::Args)]
pub struct Args {
    /// The image, oci:DIR[:TAG].
    #[arg(value_name = "oci:DIR[:TAG]")]
    image: String,
    /// The root filesystem to create (must not exist, or be empty).
    #[arg(required_unless_present = "bundle", conflicts_with = "bundle")]
    rootfs: Option<PathBuf>,
    /// Write an OCI runtime bundle instead: DIR/config.json from the image
    /// configuration and DIR/rootfs, as `umoci unpack` does.
    #[arg(long, value_name = "DIR")]
    bundle: Option<PathBuf>,
    /// The block store (default: $XDG_DATA_HOME/oci-blocks).
    #[arg(long, value_name = "DIR")]
    store: Option<PathBuf>,
    /// How imported files are materialized: auto (reflink, else copy), reflink,
    /// copy, or hardlink (only with --read-only).
    #[arg(long, value_enum, default_value = "auto")]
    link: LinkMode,
    /// The root filesystem will be mounted read-only (allows --link hardlink).
    #[arg(long)]
    read_only: bool,
    /// Platform to pick from an index (default: this machine's).
    #[arg(long, value_name = "OS/ARCH")]
    platform: Option<String>,
    #[command(flatten)]
    limits: oci_blocks_shim::options::LimitArgs,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let reference = OciRef::parse(&args.image)?;
    let layout = OciDir::open(&reference.path)?;
    let store = args
        .store
        .clone()
        .or_else(default_state_dir)
        .context("no --store and no $HOME")?;
    let options = UnpackOptions {
        store,
        link: args.link,
        read_only: args.read_only,
        platform: args.platform.clone(),
        limits: args.limits.limits(),
    };
    let (report, target) = match (&args.bundle, &args.rootfs) {
        (Some(bundle), _) => (
            unpack_bundle(&layout, reference.tag.as_deref(), bundle, &options),
            bundle.clone(),
        ),
        (None, Some(rootfs)) => (
            unpack(&layout, reference.tag.as_deref(), rootfs, &options),
            rootfs.clone(),
        ),
        (None, None) => anyhow::bail!("give ROOTFS or --bundle DIR"),
    };
    let report = report.with_context(|| format!("unpacking {}", args.image))?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        outln!("{} -> {}", args.image, target.display());
        outln!(
            "  manifest {}{}, {} layers, {} entries, {} imports",
            report.manifest,
            if report.blocks_variant {
                " (blocks)"
            } else {
                ""
            },
            report.layers,
            report.applied.entries,
            report.applied.imports
        );
        outln!(
            "  blocks: {} extracted into the store, {} already there",
            report.blocks_extracted.len(),
            report.blocks_reused.len()
        );
        if !report.applied.skipped_devices.is_empty() {
            outln!(
                "  skipped device nodes (not root): {}",
                report.applied.skipped_devices.join(", ")
            );
        }
        for skipped in &report.applied.skipped_xattrs {
            outln!("  extended attribute not restored: {skipped}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
