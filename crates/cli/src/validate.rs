//! `oci-blocks validate`: check manifests, indexes or whole images against the spec.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use oci_blocks_core::layout::{OciDir, OciRef};
use oci_blocks_core::validate::{Report, check_image_within, validate_document};

use crate::EXIT_INVALID;
use crate::output::{outln, print_report};

/// Validate a manifest or index file, or a whole image in an OCI layout.
///
/// A file is checked against the JSON Schemas and semantic rules of spec/; an image
/// (oci:DIR[:TAG]) is read completely: every blob is verified, every layer and
/// block scanned, and every import checked against its block. Each problem is
/// printed with the rule it breaks. Exit status: 0 valid, 1 invalid, 2 error.
#[derive(clap::Args)]
pub struct Args {
    /// Manifest or index files, or oci:DIR[:TAG] images.
    #[arg(required = true, value_name = "FILE|oci:DIR[:TAG]")]
    targets: Vec<String>,
    /// Print one JSON object per target instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    limits: oci_blocks_shim::options::LimitArgs,
}

#[derive(serde::Serialize)]
struct Outcome<'a> {
    target: &'a str,
    valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<oci_blocks_core::validate::DocumentKind>,
    violations: &'a [oci_blocks_core::validate::Violation],
}

fn validate_target(
    target: &str,
    limits: &oci_blocks_core::limits::Limits,
) -> Result<(Option<oci_blocks_core::validate::DocumentKind>, Report)> {
    if target.starts_with("oci:") {
        let reference = OciRef::parse(target)?;
        let dir = OciDir::open(&reference.path)?;
        let result = check_image_within(&dir, reference.tag.as_deref(), limits)
            .with_context(|| format!("validating {target}"))?;
        let kind = result
            .info
            .indexes
            .last()
            .map(|i| i.kind)
            .or_else(|| result.info.manifests.last().map(|m| m.kind));
        Ok((kind, result.report))
    } else {
        let path = PathBuf::from(target);
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        Ok(validate_document(&bytes, target))
    }
}

pub fn run(args: Args) -> Result<ExitCode> {
    let mut all_valid = true;
    for target in &args.targets {
        let (kind, report) = validate_target(target, &args.limits.limits())?;
        all_valid &= report.is_valid();
        if args.json {
            let outcome = Outcome {
                target,
                valid: report.is_valid(),
                kind,
                violations: &report.violations,
            };
            outln!("{}", serde_json::to_string(&outcome)?);
        } else {
            let what = match kind {
                Some(k) => format!("{target} ({})", k.describe()),
                None => target.clone(),
            };
            print_report(&what, &report)?;
        }
    }
    Ok(if all_valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_INVALID)
    })
}
