//! `oci-blocks rechunk`: an image any tool built, rewritten as blocks and a
//! capped set of plain layers (the builder's [`oci_blocks_builder::rechunk`]).

use std::process::ExitCode;

use anyhow::{Context, Result};
use oci_blocks_builder::Fallback;
use oci_blocks_builder::rechunk::{DEFAULT_MAX_LAYERS, RechunkSpec, rechunk};
use oci_blocks_client::ImageRef;
use oci_blocks_core::layout::OciRef;

use crate::build::{FallbackArg, Reproducible};
use crate::output::{bytes, outln};
use crate::transfer::{Transport, copy_between, fetch_documents, fetch_with};

/// Rewrite an existing image (built by docker, buildah, Jib, ...) into blocks
/// beside its layers, and a legacy variant of at most --max-layers plain
/// layers.
///
/// Its layers are kept, each without the files that became blocks (jars,
/// Python distributions); the blocks' imports go in groups of layers on top.
/// References: oci:DIR[:TAG], docker://HOST[:PORT]/REPO[:TAG|@DIGEST].
#[derive(clap::Args)]
pub struct Args {
    /// The image to rechunk.
    src: String,
    /// Where to write the result.
    dest: String,
    /// At most N layers in each output manifest: the source's layers plus
    /// the groups of blocks.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_LAYERS)]
    max_layers: usize,
    /// `index` writes a fallback index (legacy manifest, blocks manifest,
    /// anchor); `none` the bare blocks manifest.
    #[arg(long, value_enum, value_name = "index|none", default_value = "index")]
    fallback: FallbackArg,
    /// Only this platform of a source index (OS/ARCH[/VARIANT]). Repeatable;
    /// default: every platform.
    #[arg(long = "platform", value_name = "OS/ARCH")]
    platforms: Vec<String>,
    /// An earlier rechunk of the same application (oci: or docker://): its
    /// number of groups is kept when it fits, so that groups whose
    /// components did not change keep their layers' digests.
    #[arg(long, value_name = "IMAGE")]
    prior: Option<String>,
    #[command(flatten)]
    reproducible: Reproducible,
    #[command(flatten)]
    transport: Transport,
}

/// The layout of `image`: itself for an `oci:` reference, else what `fetch`
/// brings into a temporary layout (kept alive by the returned directory).
fn layout_of(
    image: &str,
    fetch: impl FnOnce(&str) -> Result<(tempfile::TempDir, String)>,
) -> Result<(Option<tempfile::TempDir>, OciRef)> {
    Ok(match ImageRef::parse(image)? {
        ImageRef::Layout(r) => (None, r),
        ImageRef::Registry(_) => {
            let (tmp, tag) = fetch(image)?;
            let r = OciRef {
                path: tmp.path().to_path_buf(),
                tag: Some(tag),
            };
            (Some(tmp), r)
        }
    })
}

pub fn run(args: Args) -> Result<ExitCode> {
    let options = args.transport.options()?;
    let dest = ImageRef::parse(&args.dest)?;
    let (_fetched, src_ref) = layout_of(&args.src, |image| fetch_with(image, &options))?;
    // Of a prior, only the documents are read.
    let (_prior_fetched, prior) = match args.prior.as_deref() {
        Some(image) => {
            let (tmp, r) = layout_of(image, |image| fetch_documents(image, &options))?;
            (tmp, Some(r))
        }
        None => (None, None),
    };
    let staged = match &dest {
        ImageRef::Layout(_) => None,
        ImageRef::Registry(_) => Some(tempfile::tempdir().context("a temporary directory")?),
    };
    let out = match (&dest, &staged) {
        (ImageRef::Layout(r), _) => r.clone(),
        (_, Some(tmp)) => OciRef {
            path: tmp.path().join("out"),
            tag: Some("rechunked".into()),
        },
        _ => unreachable!("a registry destination is staged"),
    };
    let spec = RechunkSpec {
        src: src_ref,
        origin: args.src.clone(),
        out: out.clone(),
        platforms: args.platforms.clone(),
        max_layers: args.max_layers,
        fallback: match args.fallback {
            FallbackArg::Index => Fallback::Index,
            FallbackArg::None => Fallback::None,
        },
        source_date_epoch: args.reproducible.epoch()?,
        cache_dir: args.reproducible.cache_dir(),
        prior,
    };
    let report = rechunk(&spec).context("rechunk")?;
    let pushed = match &staged {
        Some(_) => Some(copy_between(
            &out.to_string(),
            &args.dest,
            &options,
            args.transport.json(),
        )?),
        None => None,
    };
    if args.transport.json() {
        #[derive(serde::Serialize)]
        struct Out<'a> {
            image: &'a str,
            #[serde(flatten)]
            report: &'a oci_blocks_builder::rechunk::RechunkReport,
            #[serde(skip_serializing_if = "Option::is_none")]
            pushed: Option<&'a oci_blocks_client::CopyReport>,
        }
        let out = Out {
            image: &args.dest,
            report: &report,
            pushed: pushed.as_ref(),
        };
        outln!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    outln!("{} -> {}", args.src, args.dest);
    for (p, built) in report.platforms.iter().zip(&report.build.platforms) {
        let block_bytes: u64 = p.components.iter().map(|c| c.bytes).sum();
        outln!(
            "  {}: {} layers kept ({} rewritten without their blocks), {} blocks ({}) in {} groups",
            built.platform,
            p.layers,
            p.rewritten,
            p.components.len(),
            bytes(block_bytes),
            p.groups
        );
        for (why, n) in &p.kept {
            outln!("    {n} files stay in the layers: {why}");
        }
        outln!("    blocks manifest {}", built.manifest);
        if let Some(legacy) = &built.legacy_manifest {
            outln!("    legacy manifest {legacy}");
        }
    }
    if let Some(r) = &pushed {
        outln!(
            "  pushed: {} blobs, {} transferred",
            r.blobs,
            bytes(r.bytes_transferred)
        );
    }
    Ok(ExitCode::SUCCESS)
}
