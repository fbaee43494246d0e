//! `oci-blocks-registry`: serve the distribution API, or collect garbage.

use std::io::IsTerminal;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use oci_blocks_registry::config::{FileConfig, duration};
use oci_blocks_registry::gc::{self, GcOptions};
use oci_blocks_registry::server::{ServeOptions, serve};
use oci_blocks_registry::storage::{Location, Storage};

/// An OCI registry that keeps blocks alive through garbage collection.
#[derive(Parser)]
#[command(name = "oci-blocks-registry", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the OCI distribution API.
    Serve(ServeArgs),
    /// Delete blobs and (optionally) untagged manifests nothing references.
    Gc(GcArgs),
}

#[derive(Args)]
struct Common {
    /// A TOML file with the same settings as the flags (flags win).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The storage root, a directory.
    #[arg(long, conflicts_with = "storage")]
    root: Option<PathBuf>,
    /// The storage as a URL: `s3://BUCKET/PREFIX` (endpoint, region and
    /// credentials from AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID and
    /// AWS_SECRET_ACCESS_KEY or the shared credentials file), or a directory.
    #[arg(long, value_name = "URL")]
    storage: Option<String>,
    /// Unreferenced blobs younger than this are kept [default: 1h].
    #[arg(long, value_name = "DURATION")]
    grace_period: Option<String>,
    /// Also remove manifests that no tag reaches, and what only they reference.
    #[arg(long)]
    delete_untagged: bool,
    /// Upload sessions untouched this long are discarded [default: 24h].
    #[arg(long, value_name = "DURATION")]
    upload_expiry: Option<String>,
    /// Request and GC logs as JSON lines instead of text.
    #[arg(long, value_name = "text|json")]
    log_format: Option<String>,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    common: Common,
    /// Address to listen on [default: 127.0.0.1:5000]; port 0 picks one.
    #[arg(long, value_name = "HOST:PORT")]
    addr: Option<String>,
    /// htpasswd file (bcrypt): writes need these credentials.
    #[arg(long)]
    htpasswd: Option<PathBuf>,
    /// Reads need credentials too.
    #[arg(long)]
    auth_pull: bool,
    /// TLS certificate chain (PEM).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Collect garbage on this interval while serving.
    #[arg(long, value_name = "DURATION")]
    gc_interval: Option<String>,
    /// How long shutdown waits for requests in flight [default: 30s].
    #[arg(long, value_name = "DURATION")]
    shutdown_timeout: Option<String>,
}

#[derive(Args)]
struct GcArgs {
    #[command(flatten)]
    common: Common,
    /// List what would be removed and the bytes reclaimed; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Exit status when the work could not be done (as every binary of the
/// project: 0 done, 1 a verdict of invalid, 2 could not run).
const EXIT_ERROR: u8 = 2;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("oci-blocks-registry: error: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let file = load(&args.common)?;
            init_logs(
                args.common
                    .log_format
                    .as_deref()
                    .or(file.log_format.as_deref()),
            )?;
            let options = serve_options(&args, &file)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(serve(options))?;
            Ok(())
        }
        Command::Gc(args) => {
            let file = load(&args.common)?;
            init_logs(
                args.common
                    .log_format
                    .as_deref()
                    .or(file.log_format.as_deref()),
            )?;
            let location = location(&args.common, &file)?;
            let mut options = gc_options(&args.common, &file)?;
            options.dry_run = args.dry_run;
            // A bucket's storage blocks on an async runtime.
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let report = runtime.block_on(async move {
                tokio::task::spawn_blocking(move || {
                    let storage = Storage::open_existing_location(&location)?;
                    gc::collect(&storage, &options)
                })
                .await
            })??;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
                return Ok(());
            }
            let verb = if report.dry_run {
                "would remove"
            } else {
                "removed"
            };
            for m in &report.manifests_removed {
                println!("{verb} manifest {m}");
            }
            for b in &report.blobs_removed {
                println!("{verb} blob {} ({} bytes)", b.digest, b.size);
            }
            println!(
                "{} repositories, {} manifests and {} blobs kept, {} unreferenced blobs within the grace period; {verb} {} manifests and {} blobs, {} bytes, in {:.3}s",
                report.repositories,
                report.manifests_marked,
                report.blobs_marked,
                report.blobs_young,
                report.manifests_removed.len(),
                report.blobs_removed.len(),
                report.bytes_reclaimed,
                report.seconds
            );
            Ok(())
        }
    }
}

fn load(common: &Common) -> Result<FileConfig> {
    match &common.config {
        Some(path) => Ok(FileConfig::load(path)?),
        None => Ok(FileConfig::default()),
    }
}

fn init_logs(format: Option<&str>) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal, never in a log file.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format.unwrap_or("text") {
        "text" => builder.init(),
        "json" => builder.json().init(),
        other => bail!("--log-format {other:?}: expected text or json"),
    }
    Ok(())
}

fn location(common: &Common, file: &FileConfig) -> Result<Location> {
    if let Some(root) = &common.root {
        return Ok(Location::Dir(root.clone()));
    }
    if let Some(url) = &common.storage {
        return Ok(Location::parse(url)?);
    }
    match (&file.root, &file.storage) {
        (Some(_), Some(_)) => bail!("the configuration file sets both root and storage"),
        (Some(root), None) => Ok(Location::Dir(root.clone())),
        (None, Some(url)) => Ok(Location::parse(url)?),
        (None, None) => bail!(
            "no storage: pass --root DIR or --storage s3://BUCKET/PREFIX, or set root or storage in the configuration file"
        ),
    }
}

fn gc_options(common: &Common, file: &FileConfig) -> Result<GcOptions> {
    let mut options = GcOptions::default();
    if let Some(t) = common
        .grace_period
        .as_deref()
        .or(file.grace_period.as_deref())
    {
        options.grace_period = duration("grace-period", t)?;
    }
    if let Some(t) = common
        .upload_expiry
        .as_deref()
        .or(file.upload_expiry.as_deref())
    {
        options.upload_expiry = duration("upload-expiry", t)?;
    }
    options.delete_untagged = common.delete_untagged || file.delete_untagged.unwrap_or(false);
    Ok(options)
}

fn serve_options(args: &ServeArgs, file: &FileConfig) -> Result<ServeOptions> {
    let addr_text = args
        .addr
        .clone()
        .or_else(|| file.addr.clone())
        .unwrap_or_else(|| "127.0.0.1:5000".into());
    let addr: SocketAddr = addr_text
        .to_socket_addrs()
        .with_context(|| format!("--addr {addr_text:?}: expected HOST:PORT"))?
        .next()
        .with_context(|| format!("--addr {addr_text:?}: the host has no address"))?;
    let tls = match (
        args.tls_cert.clone().or_else(|| file.tls_cert.clone()),
        args.tls_key.clone().or_else(|| file.tls_key.clone()),
    ) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => bail!("TLS needs both tls-cert and tls-key"),
    };
    let gc_interval = match args.gc_interval.as_deref().or(file.gc_interval.as_deref()) {
        Some(t) => Some(duration("gc-interval", t)?).filter(|d| !d.is_zero()),
        None => None,
    };
    let shutdown_timeout = match args
        .shutdown_timeout
        .as_deref()
        .or(file.shutdown_timeout.as_deref())
    {
        Some(t) => duration("shutdown-timeout", t)?,
        None => Duration::from_secs(30),
    };
    Ok(ServeOptions {
        addr,
        storage: location(&args.common, file)?,
        htpasswd: args.htpasswd.clone().or_else(|| file.htpasswd.clone()),
        auth_pull: args.auth_pull || file.auth_pull.unwrap_or(false),
        tls,
        gc_interval,
        gc: gc_options(&args.common, file)?,
        shutdown_timeout,
    })
}
