//! `oci-blocks-shim`: unpack images that use blocks, and manage the block store.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use oci_blocks_core::layout::{OciDir, OciRef, default_state_dir};
use oci_blocks_shim::store::BlockStore;
use oci_blocks_shim::{LinkMode, UnpackOptions, unpack};

/// Secure unpacker for OCI images with blocks.
#[derive(Parser)]
#[command(name = "oci-blocks-shim", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Unpack IMAGE (oci:DIR[:TAG]) into ROOTFS, resolving imports from the store.
    Unpack {
        /// The image.
        image: String,
        /// The root filesystem to create.
        rootfs: PathBuf,
        /// The block store (default: $XDG_DATA_HOME/oci-blocks).
        #[arg(long)]
        store: Option<PathBuf>,
        /// How imported files are materialized.
        #[arg(long, value_enum, default_value = "auto")]
        link: LinkMode,
        /// The root filesystem will be mounted read-only (allows --link hardlink).
        #[arg(long)]
        read_only: bool,
        /// Platform to pick from an index (default: this machine's).
        #[arg(long)]
        platform: Option<String>,
    },
    /// Report what the block store holds.
    Store {
        /// The block store (default: $XDG_DATA_HOME/oci-blocks).
        #[arg(long)]
        store: Option<PathBuf>,
    },
}

fn default_store() -> PathBuf {
    default_state_dir().unwrap_or_else(|| PathBuf::from("oci-blocks"))
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("oci-blocks-shim: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<()> {
    match Cli::parse().command {
        Command::Unpack {
            image,
            rootfs,
            store,
            link,
            read_only,
            platform,
        } => {
            let r = OciRef::parse(&image)?;
            let layout = OciDir::open(&r.path)?;
            let options = UnpackOptions {
                store: store.unwrap_or_else(default_store),
                link,
                read_only,
                platform,
            };
            let report = unpack(&layout, r.tag.as_deref(), &rootfs, &options)
                .with_context(|| format!("unpacking {image}"))?;
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Command::Store { store } => {
            let store = BlockStore::open(store.unwrap_or_else(default_store))?;
            let blocks = store.blocks()?;
            let total: u64 = blocks.iter().map(|(_, s)| s).sum();
            for (d, s) in &blocks {
                println!("{d} {s}");
            }
            println!(
                "{} blocks, {total} bytes in {}",
                blocks.len(),
                store.dir().display()
            );
        }
    }
    Ok(())
}
