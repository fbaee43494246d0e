//! `oci-blocks copy`, `push` and `pull`: moving images between layouts and
//! registries with the blocks-aware client, only the missing bytes.

use std::collections::HashSet;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::ArgAction;
use oci_blocks_client::auth::Credentials;
use oci_blocks_client::copy::Progress;
use oci_blocks_client::{CopyOptions, CopyReport, ImageRef, RegistryOptions, Selection};
use oci_blocks_core::Digest;
use oci_blocks_core::layout::{OciDir, OciRef};
use oci_blocks_shim::store::BlockStore;
use oci_blocks_shim::{unpack, unpack_bundle};

use crate::output::{bytes, outln};

/// Options shared by the transfers.
#[derive(clap::Args, Clone)]
pub struct Transport {
    /// Blobs transferred at once.
    #[arg(long, default_value_t = 6)]
    jobs: usize,
    /// Verify the source registry's TLS certificate; =false also allows plain
    /// HTTP. A bare flag means true, as in skopeo.
    #[arg(
        long,
        default_value_t = true,
        action = ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    src_tls_verify: bool,
    /// Verify the destination registry's TLS certificate; =false also allows
    /// plain HTTP. A bare flag means true, as in skopeo.
    #[arg(
        long,
        default_value_t = true,
        action = ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    dest_tls_verify: bool,
    /// USER:PASSWORD for the source registry (default: the auth files).
    #[arg(long, value_name = "USER:PASSWORD")]
    src_creds: Option<String>,
    /// USER:PASSWORD for the destination registry (default: the auth files).
    #[arg(long, value_name = "USER:PASSWORD")]
    dest_creds: Option<String>,
    /// Directory of *.crt CA certificates for the source registry.
    #[arg(long, value_name = "DIR")]
    src_cert_dir: Option<PathBuf>,
    /// Directory of *.crt CA certificates for the destination registry.
    #[arg(long, value_name = "DIR")]
    dest_cert_dir: Option<PathBuf>,
    /// Blobs larger than this many bytes are uploaded in chunks of this size.
    #[arg(long, default_value_t = 8 * 1024 * 1024, value_name = "BYTES")]
    chunk_size: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

impl Transport {
    /// The copy options these flags ask for.
    pub fn options(&self) -> Result<CopyOptions> {
        Ok(CopyOptions {
            jobs: self.jobs,
            src: registry_options(
                self.src_tls_verify,
                &self.src_creds,
                &self.src_cert_dir,
                self.chunk_size,
            )?,
            dest: registry_options(
                self.dest_tls_verify,
                &self.dest_creds,
                &self.dest_cert_dir,
                self.chunk_size,
            )?,
            ..CopyOptions::default()
        })
    }

    /// Whether the report is asked for as JSON.
    pub fn json(&self) -> bool {
        self.json
    }
}

/// Copy an image between layouts and registries (any direction), moving only
/// the blobs the destination lacks; manifests keep their exact bytes and digests.
///
/// References: oci:DIR[:TAG], docker://HOST[:PORT]/REPO[:TAG|@DIGEST]. Every
/// entry of an index is copied, blocks included.
#[derive(clap::Args)]
pub struct CopyArgs {
    /// The source image.
    src: String,
    /// The destination.
    dest: String,
    #[command(flatten)]
    transport: Transport,
}

/// Push an image from an OCI layout to a registry (copy with a layout source).
#[derive(clap::Args)]
pub struct PushArgs {
    /// The image, oci:DIR[:TAG].
    src: String,
    /// The destination, docker://HOST[:PORT]/REPO[:TAG].
    dest: String,
    #[command(flatten)]
    transport: Transport,
}

/// Pull an image into the block store's layout, fetching only what the store
/// lacks (blocks already extracted are not downloaded), then optionally unpack
/// it.
///
/// From an index, only this platform's blocks manifest (else its plain
/// manifest) is fetched. Every digest is verified before anything is stored.
#[derive(clap::Args)]
pub struct PullArgs {
    /// The image, docker://HOST[:PORT]/REPO[:TAG|@DIGEST] (or oci:DIR[:TAG]).
    image: String,
    /// Unpack into this root filesystem (must not exist, or be empty).
    #[arg(long, value_name = "ROOTFS", conflicts_with = "bundle")]
    unpack: Option<PathBuf>,
    /// Unpack into an OCI runtime bundle (DIR/config.json, DIR/rootfs).
    #[arg(long, value_name = "DIR")]
    bundle: Option<PathBuf>,
    /// The store, the platform to pull (and unpack), how to materialize, the
    /// bounds.
    #[command(flatten)]
    options: oci_blocks_shim::options::UnpackArgs,
    #[command(flatten)]
    source: SourceArgs,
    /// Blobs transferred at once.
    #[arg(long, default_value_t = 6)]
    jobs: usize,
    /// Fetch every missing block whole, even where a delta artifact has a
    /// patch against a block the store holds.
    #[arg(long)]
    no_delta: bool,
    /// Blocks larger than this many bytes are fetched whole (applying a
    /// patch holds its base in memory).
    #[arg(long, default_value_t = oci_blocks_client::copy::DEFAULT_DELTA_MAX_SIZE,
          value_name = "BYTES")]
    delta_max_size: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// How to reach a registry one reads from (`pull`, `inspect`).
#[derive(clap::Args, Clone)]
pub struct SourceArgs {
    /// Verify the registry's TLS certificate; =false also allows plain HTTP.
    /// A bare flag means true, as in skopeo.
    #[arg(
        long,
        default_value_t = true,
        action = ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    tls_verify: bool,
    /// USER:PASSWORD (default: the auth files).
    #[arg(long, value_name = "USER:PASSWORD")]
    creds: Option<String>,
    /// Directory of *.crt CA certificates.
    #[arg(long, value_name = "DIR")]
    cert_dir: Option<PathBuf>,
}

impl SourceArgs {
    /// The registry options these flags ask for.
    pub(crate) fn options(&self) -> Result<RegistryOptions> {
        registry_options(
            self.tls_verify,
            &self.creds,
            &self.cert_dir,
            8 * 1024 * 1024,
        )
    }
}

/// Copies the whole image `image` (docker://…) into a temporary layout, for
/// the commands that read layouts: the layout and the tag it has there.
pub fn fetch_to_temp(image: &str, source: &SourceArgs) -> Result<(tempfile::TempDir, String)> {
    let options = CopyOptions {
        src: source.options()?,
        ..CopyOptions::default()
    };
    fetch_with(image, &options)
}

/// [`fetch_to_temp`] with the source options of a copy.
pub fn fetch_with(image: &str, options: &CopyOptions) -> Result<(tempfile::TempDir, String)> {
    let tmp = tempfile::tempdir().context("a temporary directory")?;
    let tag = "fetched".to_string();
    let dest = ImageRef::Layout(OciRef {
        path: tmp.path().to_path_buf(),
        tag: Some(tag.clone()),
    });
    copy_between(image, &dest.to_string(), options, false)?;
    Ok((tmp, tag))
}

/// The index, manifests and configs of the registry image `image` (no
/// layers, no blocks) in a temporary layout, each verified: what a command
/// that reads only an image's documents needs (`rechunk --prior`).
pub fn fetch_documents(image: &str, options: &CopyOptions) -> Result<(tempfile::TempDir, String)> {
    const MAX_CONFIG: usize = 8 << 20;
    let ImageRef::Registry(r) = ImageRef::parse(image)? else {
        bail!("{image}: not a docker:// reference");
    };
    let tmp = tempfile::tempdir().context("a temporary directory")?;
    let layout = OciDir::create(tmp.path())?;
    runtime()?.block_on(async {
        let registry = oci_blocks_client::Registry::connect(&r.host, options.src.clone()).await?;
        let (top_bytes, media_type, digest) =
            registry.get_manifest(&r.repository, &r.reference()).await?;
        layout.write_blob_verified(&top_bytes[..], &digest, Some(top_bytes.len() as u64))?;
        let top: serde_json::Value = serde_json::from_slice(&top_bytes)
            .with_context(|| format!("{image}: {digest} is not JSON"))?;
        let mut manifests = vec![top.clone()];
        for e in top
            .get("manifests")
            .and_then(|m| m.as_array())
            .into_iter()
            .flatten()
        {
            let Some(d) = e.get("digest").and_then(|d| d.as_str()) else {
                continue;
            };
            let (b, _, d) = registry.get_manifest(&r.repository, d).await?;
            layout.write_blob_verified(&b[..], &d, Some(b.len() as u64))?;
            manifests.push(
                serde_json::from_slice(&b).with_context(|| format!("{image}: {d} is not JSON"))?,
            );
        }
        for m in &manifests {
            let Some(config) = m
                .get("config")
                .and_then(|c| c.get("digest"))
                .and_then(|d| d.as_str())
            else {
                continue;
            };
            let d = Digest::parse(config)?;
            let body = registry
                .get_blob(&r.repository, &d)
                .await?
                .bytes()
                .await
                .with_context(|| format!("{image}: config {d}"))?;
            if body.len() > MAX_CONFIG {
                bail!(
                    "{image}: config {d} is larger than {}",
                    bytes(MAX_CONFIG as u64)
                );
            }
            layout.write_blob_verified(&body[..], &d, Some(body.len() as u64))?;
        }
        let descriptor = serde_json::from_value(serde_json::json!({
            "mediaType": media_type, "digest": digest.to_string(), "size": top_bytes.len(),
        }))?;
        layout.set_tag("fetched", descriptor)?;
        anyhow::Ok(())
    })?;
    Ok((tmp, "fetched".to_string()))
}

/// Copies `src` to `dest` (any references) with a progress bar on a terminal.
pub fn copy_between(
    src: &str,
    dest: &str,
    options: &CopyOptions,
    quiet: bool,
) -> Result<CopyReport> {
    let src_ref = ImageRef::parse(src)?;
    let dest_ref = ImageRef::parse(dest)?;
    let bar = Bar::new(quiet);
    runtime()?
        .block_on(oci_blocks_client::copy(&src_ref, &dest_ref, options, &bar))
        .with_context(|| format!("copying {src} to {dest}"))
}

fn registry_options(
    tls_verify: bool,
    creds: &Option<String>,
    cert_dir: &Option<PathBuf>,
    chunk_size: u64,
) -> Result<RegistryOptions> {
    if chunk_size == 0 {
        bail!("--chunk-size must be at least 1");
    }
    Ok(RegistryOptions {
        tls_verify,
        credentials: creds.as_deref().map(Credentials::parse).transpose()?,
        cert_dir: cert_dir.clone(),
        chunk_size,
        ..RegistryOptions::default()
    })
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// A byte progress bar on a terminal, nothing otherwise.
struct Bar(Option<indicatif::ProgressBar>);

impl Bar {
    fn new(quiet: bool) -> Bar {
        if quiet || !std::io::stderr().is_terminal() {
            return Bar(None);
        }
        let bar = indicatif::ProgressBar::new(0);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}",
        ) {
            bar.set_style(style);
        }
        Bar(Some(bar))
    }
}

impl Progress for Bar {
    fn start(&self, blobs: usize, total: u64) {
        if let Some(b) = &self.0 {
            b.set_length(total);
            b.set_message(format!("{blobs} blobs"));
        }
    }
    fn blob_done(&self, _digest: &Digest, size: u64, _moved: bool) {
        if let Some(b) = &self.0 {
            b.inc(size);
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}

fn print_report(what: &str, report: &CopyReport) -> Result<()> {
    outln!("{what}: {} ({})", report.digest, report.media_type);
    outln!(
        "  {} manifests, {} blobs: {} transferred ({}), {} already there ({}), {} mounted, {} reused from the store ({})",
        report.manifests,
        report.blobs,
        report.blobs_transferred,
        bytes(report.bytes_transferred),
        report.blobs_skipped,
        bytes(report.bytes_skipped),
        report.blobs_mounted,
        report.blobs_reused,
        bytes(report.bytes_reused),
    );
    if report.blobs_patched > 0 || report.deltas_failed > 0 {
        outln!(
            "  {} blocks rebuilt from patches ({} moved, {} saved), {} deltas failed and were fetched whole",
            report.blobs_patched,
            bytes(report.bytes_patched),
            bytes(report.bytes_saved),
            report.deltas_failed,
        );
    }
    Ok(())
}

fn do_copy(
    src: &str,
    dest: &str,
    t: &Transport,
    require: Option<(bool, bool)>,
) -> Result<ExitCode> {
    let src_ref = ImageRef::parse(src)?;
    let dest_ref = ImageRef::parse(dest)?;
    if let Some((src_layout, dest_registry)) = require {
        if src_layout && !matches!(src_ref, ImageRef::Layout(_)) {
            bail!("push takes an oci:DIR[:TAG] source; use copy for other sources");
        }
        if dest_registry && !matches!(dest_ref, ImageRef::Registry(_)) {
            bail!("push takes a docker:// destination; use copy for other destinations");
        }
    }
    let report = copy_between(src, dest, &t.options()?, t.json)?;
    if t.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&format!("{src} -> {dest}"), &report)?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run_copy(args: CopyArgs) -> Result<ExitCode> {
    do_copy(&args.src, &args.dest, &args.transport, None)
}

pub fn run_push(args: PushArgs) -> Result<ExitCode> {
    do_copy(&args.src, &args.dest, &args.transport, Some((true, true)))
}

/// A layout tag for an image reference (`HOST/REPO:TAG` spelled with `_`).
fn local_tag(image: &ImageRef) -> String {
    let text = image.to_string();
    let text = text
        .trim_start_matches("docker://")
        .trim_start_matches("oci:");
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[derive(serde::Serialize)]
struct PullReport {
    image: String,
    layout: String,
    #[serde(flatten)]
    copy: CopyReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    unpack: Option<oci_blocks_shim::UnpackReport>,
}

pub fn run_pull(args: PullArgs) -> Result<ExitCode> {
    let image = ImageRef::parse(&args.image)?;
    let mut unpack_options = args.options.options()?;
    let store_dir = unpack_options.store.clone();
    let store = BlockStore::open(&store_dir)?;
    let have: HashSet<Digest> = store.blocks()?.into_iter().map(|(d, _)| d).collect();
    let layout_dir = store_dir.join("images");
    let tag = local_tag(&image);
    let dest = ImageRef::Layout(OciRef {
        path: layout_dir.clone(),
        tag: Some(tag.clone()),
    });
    let platform = match &args.options.platform {
        Some(p) => oci_blocks_core::platform::Platform::parse(p)?.to_string(),
        None => oci_blocks_core::platform::Platform::host().to_string(),
    };
    let options = CopyOptions {
        jobs: args.jobs,
        src: args.source.options()?,
        have,
        selection: Selection::Platform(platform.clone()),
        deltas: !args.no_delta,
        delta_max_size: args.delta_max_size,
        ..CopyOptions::default()
    };
    let bar = Bar::new(args.json);
    let copy = runtime()?
        .block_on(oci_blocks_client::copy(&image, &dest, &options, &bar))
        .with_context(|| format!("pulling {}", args.image))?;
    drop(bar);
    unpack_options.platform = Some(platform);
    let layout = OciDir::open(&layout_dir)?;
    let unpacked = match (&args.unpack, &args.bundle) {
        (Some(rootfs), _) => Some(unpack(&layout, Some(&tag), rootfs, &unpack_options)?),
        (None, Some(bundle)) => Some(unpack_bundle(&layout, Some(&tag), bundle, &unpack_options)?),
        (None, None) => None,
    };
    let report = PullReport {
        image: args.image.clone(),
        layout: format!("oci:{}:{tag}", layout_dir.display()),
        copy,
        unpack: unpacked,
    };
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(
            &format!("{} -> {}", report.image, report.layout),
            &report.copy,
        )?;
        if let Some(u) = &report.unpack {
            outln!(
                "  unpacked {} layers; {} blocks extracted, {} reused",
                u.layers,
                u.blocks_extracted.len(),
                u.blocks_reused.len()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
