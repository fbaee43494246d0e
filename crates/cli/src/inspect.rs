//! `oci-blocks inspect`: what an image holds, layer by layer and block by block.

use std::process::ExitCode;

use anyhow::Result;
use oci_blocks_client::ImageRef;
use oci_blocks_core::layout::OciDir;
use oci_blocks_core::names::{
    ANNOTATION_MAVEN_COORDINATES, ANNOTATION_PYTHON_DISTRIBUTION, ANNOTATION_TITLE,
};
use oci_blocks_core::validate::{BlobInfo, ImageInfo, check_image, distinct_blocks};

use crate::EXIT_INVALID;
use crate::output::{bytes, outln, print_report};

/// Show an image's indexes, manifests, layers, blocks and imports.
///
/// Reads the whole image (every blob is verified on the way), so the output ends
/// with the validation verdict; the exit status is 1 when the image is invalid.
/// An image in a registry is fetched whole into a temporary layout first.
#[derive(clap::Args)]
pub struct Args {
    /// The image, as oci:DIR[:TAG] or docker://HOST[:PORT]/REPO[:TAG|@DIGEST].
    #[arg(value_name = "IMAGE")]
    image: String,
    #[command(flatten)]
    source: crate::transfer::SourceArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

fn short(digest: &str) -> &str {
    let end = digest.find(':').map_or(0, |i| i + 13).min(digest.len());
    &digest[..end]
}

fn short_type(media_type: &str) -> String {
    if let Some(s) = media_type.strip_prefix("application/vnd.oci.image.layer.v1.") {
        s.to_string()
    } else if let Some(s) = media_type.strip_prefix("application/vnd.oci-blocks.image.layer.v1.") {
        format!("import {s}")
    } else {
        media_type.to_string()
    }
}

fn blob_line(i: usize, b: &BlobInfo) -> String {
    let mut line = format!(
        "    {i:>3} {} {:<40} {:>10}",
        short(&b.digest),
        short_type(&b.media_type),
        bytes(b.size)
    );
    if let Some(u) = b.uncompressed_size {
        line.push_str(&format!(" ({} uncompressed)", bytes(u)));
    }
    line.push_str(&format!(", {} entries", b.entries));
    line
}

fn print_text(reference: &str, info: &ImageInfo) -> std::io::Result<()> {
    outln!("{reference}");
    for index in &info.indexes {
        outln!(
            "\n{} {} ({})",
            index.kind.describe(),
            index.digest,
            bytes(index.size)
        );
        for (i, e) in index.entries.iter().enumerate() {
            let mut line = format!("  [{i}] {}", short(&e.digest));
            if let Some(p) = &e.platform {
                line.push_str(&format!(" {p}"));
            }
            if let Some(v) = &e.variant {
                line.push_str(&format!(" variant={v}"));
            }
            outln!("{line}");
        }
        if let Some((n, shared)) = index.shared_across_platforms {
            outln!(
                "  shared across platforms: {n} blocks, {} stored once",
                bytes(shared)
            );
        }
        if let Some(cost) = index.legacy_only_bytes {
            outln!(
                "  legacy copy: {} in layers that only the legacy manifest uses",
                bytes(cost)
            );
        }
    }
    for m in &info.manifests {
        outln!("\n{} {} ({})", m.kind.describe(), m.digest, bytes(m.size));
        if let Some(c) = &m.config {
            outln!("  config {c}");
        }
        outln!(
            "  layers: {}, {}",
            m.layers.len(),
            bytes(m.layers.iter().map(|l| l.size).sum())
        );
        for (i, l) in m.layers.iter().enumerate() {
            let mut line = blob_line(i, l);
            if !l.imports.is_empty() {
                line.push_str(&format!(", {} imports", l.imports.len()));
            }
            outln!("{line}");
            for imp in &l.imports {
                outln!(
                    "          /{} <- {} from {}",
                    imp.target,
                    imp.import.source(),
                    short(imp.import.digest().as_str())
                );
            }
        }
        if !m.blocks.is_empty() {
            outln!(
                "  blocks: {}, {}",
                m.blocks.len(),
                bytes(m.blocks.iter().map(|b| b.size).sum())
            );
        }
        for (i, b) in m.blocks.iter().enumerate() {
            outln!("{}", blob_line(i, b));
            if !b.top_level.is_empty() {
                outln!("          holds: {}", b.top_level.join(", "));
            }
            for key in [
                ANNOTATION_TITLE,
                ANNOTATION_MAVEN_COORDINATES,
                ANNOTATION_PYTHON_DISTRIBUTION,
            ] {
                if let Some(v) = b.annotations.get(key) {
                    outln!("          {key}: {v}");
                }
            }
        }
    }
    let blocks = distinct_blocks(info);
    if !blocks.is_empty() {
        outln!(
            "\n{} distinct blocks, {}",
            blocks.len(),
            bytes(blocks.iter().map(|(_, s)| s).sum())
        );
    }
    Ok(())
}

pub fn run(args: Args) -> Result<ExitCode> {
    let (_fetched, dir, tag) = match ImageRef::parse(&args.image)? {
        ImageRef::Layout(reference) => (None, OciDir::open(&reference.path)?, reference.tag),
        ImageRef::Registry(_) => {
            let (tmp, tag) = crate::transfer::fetch_to_temp(&args.image, &args.source)?;
            let dir = OciDir::open(tmp.path())?;
            (Some(tmp), dir, Some(tag))
        }
    };
    let result = check_image(&dir, tag.as_deref())?;
    if args.json {
        #[derive(serde::Serialize)]
        struct Out<'a> {
            image: &'a str,
            valid: bool,
            #[serde(flatten)]
            result: &'a oci_blocks_core::validate::ImageReport,
        }
        let out = Out {
            image: &args.image,
            valid: result.report.is_valid(),
            result: &result,
        };
        outln!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_text(&args.image, &result.info)?;
        outln!();
        print_report(&args.image, &result.report)?;
    }
    Ok(if result.report.is_valid() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_INVALID)
    })
}
