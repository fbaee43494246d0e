//! `oci-blocks unpack`: an image into a root filesystem, imports resolved.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use oci_blocks_core::layout::{OciDir, OciRef};
use oci_blocks_shim::{unpack, unpack_bundle};

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
    #[command(flatten)]
    unpack: oci_blocks_shim::options::UnpackArgs,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let reference = OciRef::parse(&args.image)?;
    let layout = OciDir::open(&reference.path)?;
    let options = args.unpack.options()?;
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
