//! `oci-blocks build`: an application and its dependencies into a blocks image.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use oci_blocks_builder::file::BuildFile;
use oci_blocks_builder::{Add, BuildSpec, Fallback, NoProgress, Progress, build_with_progress};
use oci_blocks_core::layout::{OciRef, default_state_dir};

use crate::output::{bytes, outln};

/// Build an image whose Java and Python dependencies live in reproducible blocks.
///
/// Each --add becomes one layer. Jars become one block each (with their Maven
/// coordinates), installed Python distributions one block each (found from
/// *.dist-info/RECORD), --block globs one block per match; the layer holds
/// .import. entries in their place. The same dependency gives the same block
/// digest in any image, built at any time.
#[derive(clap::Args)]
pub struct Args {
    /// A build file (build.toml); options given here override or extend it.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Option<PathBuf>,
    /// Base image (oci:DIR[:TAG]): its layers are reused byte for byte, its config inherited.
    #[arg(long, value_name = "oci:DIR[:TAG]")]
    base: Option<String>,
    /// Add the tree (or file) SRC at the absolute path DEST, as one layer. Repeatable.
    #[arg(long = "add", value_name = "SRC:DEST")]
    adds: Vec<String>,
    /// Entrypoint: a JSON array, or one executable.
    #[arg(long)]
    entrypoint: Option<String>,
    /// Command: a JSON array, or one argument.
    #[arg(long)]
    cmd: Option<String>,
    /// Environment variable K=V. Repeatable.
    #[arg(long = "env", value_name = "K=V")]
    env: Vec<String>,
    /// Working directory.
    #[arg(long)]
    workdir: Option<String>,
    /// User (name, UID, or UID:GID).
    #[arg(long)]
    user: Option<String>,
    /// Label K=V. Repeatable.
    #[arg(long = "label", value_name = "K=V")]
    labels: Vec<String>,
    /// Platform OS/ARCH[/VARIANT] (default: the base's, or linux/amd64).
    /// Repeatable: several platforms give one index, identical content across
    /// them giving the same blocks, stored once.
    #[arg(long = "platform", value_name = "OS/ARCH")]
    platforms: Vec<String>,
    /// Add SRC at DEST only for one platform (after the common layers). Repeatable.
    #[arg(long = "add-for", num_args = 2, value_names = ["OS/ARCH", "SRC:DEST"])]
    add_for: Vec<String>,
    /// Output image, oci:DIR[:TAG] (created, or added to if it exists).
    #[arg(long, value_name = "oci:DIR[:TAG]")]
    out: Option<String>,
    /// Make each match of GLOB (relative to an --add source) a block. Repeatable.
    #[arg(long = "block", value_name = "GLOB")]
    blocks: Vec<String>,
    /// Files smaller than this many bytes stay in the layer.
    #[arg(long, value_name = "BYTES")]
    block_min_size: Option<u64>,
    #[command(flatten)]
    reproducible: Reproducible,
    /// Give layers with imports the standard layer media type (for experiments:
    /// clients unaware of imports then unpack them without the blocks).
    #[arg(long)]
    standard_media_type: bool,
    /// How to publish: `index` writes a fallback index (legacy manifest with every
    /// import materialized, blocks manifest, GC anchor) that unmodified clients
    /// and registries handle; `none` writes the bare blocks manifest.
    #[arg(long, value_enum, value_name = "index|none")]
    fallback: Option<FallbackArg>,
    /// At most N layers: adjacent added layers are merged to fit (base layers
    /// stay shared). Without it, more than 125 layers draws a warning.
    #[arg(long, value_name = "N")]
    max_layers: Option<usize>,
    /// Leave the base image's blobs out of the output layout (they stay
    /// referenced; validate reports them as absent by design).
    #[arg(long)]
    sparse: bool,
    /// Print the build report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum FallbackArg {
    Index,
    None,
}

fn command_line(value: &str, option: &str) -> Result<Vec<String>> {
    if value.trim_start().starts_with('[') {
        serde_json::from_str(value)
            .with_context(|| format!("{option} {value}: not a JSON array of strings"))
    } else {
        Ok(vec![value.to_string()])
    }
}

fn parse_add(value: &str) -> Result<Add> {
    let Some((src, dest)) = value.rsplit_once(':') else {
        bail!("--add {value}: expected SRC:DEST");
    };
    if src.is_empty() || dest.is_empty() {
        bail!("--add {value}: expected SRC:DEST");
    }
    Ok(Add::new(src, dest))
}

/// The time and cache options of the commands that write blocks (`build`,
/// `rechunk`).
#[derive(clap::Args)]
pub(crate) struct Reproducible {
    /// The mtime of every entry (default: $SOURCE_DATE_EPOCH, else 1).
    #[arg(long, value_name = "SECONDS")]
    source_date_epoch: Option<u64>,
    /// Build cache directory (default: $XDG_DATA_HOME/oci-blocks).
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Do not use or update the build cache.
    #[arg(long)]
    no_cache: bool,
}

impl Reproducible {
    /// `--source-date-epoch`, else `$SOURCE_DATE_EPOCH`, else 1.
    pub(crate) fn epoch(&self) -> Result<u64> {
        source_date_epoch(self.source_date_epoch)
    }

    /// The build cache, unless `--no-cache`.
    pub(crate) fn cache_dir(&self) -> Option<PathBuf> {
        if self.no_cache {
            None
        } else {
            self.cache_dir.clone().or_else(default_state_dir)
        }
    }
}

fn source_date_epoch(arg: Option<u64>) -> Result<u64> {
    Ok(match arg {
        Some(e) => e,
        None => match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(v) => v
                .parse()
                .with_context(|| format!("SOURCE_DATE_EPOCH={v}: not a number of seconds"))?,
            Err(_) => 1,
        },
    })
}

fn spec_from(args: &Args) -> Result<BuildSpec> {
    let file = match &args.file {
        Some(path) => BuildFile::load(path)?,
        None => BuildFile::default(),
    };
    let out = args
        .out
        .clone()
        .or(file.out.clone())
        .context("no output: give --out oci:DIR[:TAG] (or `out` in the build file)")?;
    let mut adds: Vec<Add> = file.add.iter().map(|a| Add::new(&a.src, &a.dest)).collect();
    for a in &args.adds {
        adds.push(parse_add(a)?);
    }
    let mut labels: BTreeMap<String, String> = file.labels.clone();
    for l in &args.labels {
        let (k, v) = l
            .split_once('=')
            .with_context(|| format!("--label {l}: expected K=V"))?;
        labels.insert(k.to_string(), v.to_string());
    }
    let epoch = args.reproducible.epoch()?;
    Ok(BuildSpec {
        base: args
            .base
            .clone()
            .or(file.base.clone())
            .map(|b| OciRef::parse(&b))
            .transpose()?,
        adds,
        entrypoint: match &args.entrypoint {
            Some(e) => Some(command_line(e, "--entrypoint")?),
            None => file.entrypoint.clone(),
        },
        cmd: match &args.cmd {
            Some(c) => Some(command_line(c, "--cmd")?),
            None => file.cmd.clone(),
        },
        env: file.env.iter().chain(&args.env).cloned().collect(),
        workdir: args.workdir.clone().or(file.workdir.clone()),
        user: args.user.clone().or(file.user.clone()),
        labels,
        platforms: if !args.platforms.is_empty() {
            args.platforms.clone()
        } else if !file.platforms.is_empty() {
            file.platforms.clone()
        } else {
            file.platform.iter().cloned().collect()
        },
        adds_for: {
            let mut adds_for = Vec::new();
            for (p, table) in &file.per_platform {
                for a in &table.add {
                    adds_for.push((p.clone(), Add::new(&a.src, &a.dest)));
                }
            }
            for pair in args.add_for.chunks(2) {
                if let [p, a] = pair {
                    adds_for.push((p.clone(), parse_add(a)?));
                }
            }
            adds_for
        },
        out: OciRef::parse(&out)?,
        block_globs: file.blocks.iter().chain(&args.blocks).cloned().collect(),
        block_min_size: args.block_min_size.or(file.block_min_size).unwrap_or(0),
        source_date_epoch: epoch,
        cache_dir: args.reproducible.cache_dir(),
        import_media_type: !args.standard_media_type,
        max_layers: args.max_layers.or(file.max_layers),
        sparse: args.sparse,
        fallback: match args.fallback {
            Some(FallbackArg::Index) => Fallback::Index,
            Some(FallbackArg::None) => Fallback::None,
            None => file.fallback.unwrap_or_default(),
        },
    })
}

/// A progress bar on stderr, for people at a terminal.
struct Bar(indicatif::ProgressBar);

impl Progress for Bar {
    fn start(&self, platform: &str, blocks: usize, bytes: u64) {
        self.0.reset();
        self.0.set_length(bytes);
        self.0
            .set_message(format!("{blocks} blocks for {platform}"));
    }
    fn block_done(&self, bytes: u64) {
        self.0.inc(bytes);
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

pub fn run(args: Args) -> Result<ExitCode> {
    let spec = spec_from(&args)?;
    let report = if !args.json && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        let bar = indicatif::ProgressBar::new(0).with_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        build_with_progress(&spec, &Bar(bar))?
    } else {
        build_with_progress(&spec, &NoProgress)?
    };
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    outln!("{}", report.image);
    for p in &report.platforms {
        let block_bytes: u64 = p.blocks.iter().map(|b| b.size).sum();
        let cached = p.blocks.iter().filter(|b| b.cached).count();
        outln!("  {}", p.platform);
        outln!("    manifest {}", p.manifest);
        outln!("    config   {}", p.config);
        for l in &p.layers {
            let imports = if l.imports > 0 {
                format!(", {} imports", l.imports)
            } else {
                String::new()
            };
            outln!(
                "    layer    {} {:>10}  {}{imports}",
                l.digest,
                bytes(l.size),
                l.source
            );
        }
        outln!(
            "    blocks   {} ({}), {cached} unchanged since the last build",
            p.blocks.len(),
            bytes(block_bytes)
        );
        for group in &p.merged {
            outln!(
                "    merged   {} into one layer (--max-layers)",
                group.join(", ")
            );
        }
        if let Some(legacy) = &p.legacy_manifest {
            outln!("    legacy   {legacy}");
        }
    }
    if let Some(f) = &report.fallback {
        outln!("  fallback index {} (GC anchor {})", f.index, f.anchor);
        outln!(
            "  the legacy copy costs {} in layers only it uses",
            bytes(f.legacy_only_bytes)
        );
    }
    Ok(ExitCode::SUCCESS)
}
