//! `oci-blocks-shim`: unpack images that use blocks, and manage the block store.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use oci_blocks_core::layout::{OciDir, OciRef, default_state_dir};
use oci_blocks_core::limits::human;
use oci_blocks_shim::options::UnpackArgs;
use oci_blocks_shim::store::BlockStore;
use oci_blocks_shim::unpack;

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
        #[command(flatten)]
        unpack: UnpackArgs,
    },
    /// Report what the block store holds, and reclaim what no root filesystem uses.
    Store {
        /// The block store (default: $XDG_DATA_HOME/oci-blocks).
        #[arg(long, global = true)]
        store: Option<PathBuf>,
        /// Print JSON.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        action: Option<StoreAction>,
    },
}

#[derive(Subcommand)]
enum StoreAction {
    /// List the blocks and the root filesystems using them (the default).
    List,
    /// Remove the blocks no remaining root filesystem uses. A root filesystem
    /// that was deleted, or replaced by another directory, no longer counts.
    Reclaim {
        /// Only report what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Stop counting ROOTFS as a user of its blocks (it is not touched).
    Forget {
        /// The root filesystem.
        rootfs: PathBuf,
    },
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
            unpack: args,
        } => {
            let r = OciRef::parse(&image)?;
            let layout = OciDir::open(&r.path)?;
            let options = args.options()?;
            let report = unpack(&layout, r.tag.as_deref(), &rootfs, &options)
                .with_context(|| format!("unpacking {image}"))?;
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Command::Store {
            store,
            json,
            action,
        } => {
            let store = store
                .or_else(default_state_dir)
                .context("no --store and no $XDG_DATA_HOME or $HOME")?;
            let store = BlockStore::open_existing(store)?;
            match action.unwrap_or(StoreAction::List) {
                StoreAction::List => list(&store, json)?,
                StoreAction::Reclaim { dry_run } => {
                    let r = store.reclaim(dry_run)?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&r)?);
                    } else {
                        let verb = if dry_run { "would remove" } else { "removed" };
                        for g in &r.gone {
                            println!("gone: {}", g.display());
                        }
                        for (d, size) in &r.blocks {
                            println!("{verb} {d} {}", human(*size));
                        }
                        println!(
                            "{verb} {} blocks, {}; {} root filesystems gone",
                            r.blocks.len(),
                            human(r.bytes),
                            r.gone.len()
                        );
                    }
                }
                StoreAction::Forget { rootfs } => {
                    if !store.forget(&rootfs)? {
                        anyhow::bail!("{} is not recorded in the store", rootfs.display());
                    }
                    println!("forgot {}", rootfs.display());
                }
            }
        }
    }
    Ok(())
}

fn list(store: &BlockStore, json: bool) -> Result<()> {
    let blocks = store.blocks()?;
    let users = store.users()?;
    let users_of = |d: &str| {
        users
            .iter()
            .filter(|(_, u)| u.live && u.blocks.iter().any(|b| b == d))
            .count()
    };
    if json {
        let value = serde_json::json!({
            "store": store.dir(),
            "blocks": blocks.iter().map(|(d, s)| serde_json::json!({
                "digest": d.as_str(), "size": s, "users": users_of(d.as_str()),
            })).collect::<Vec<_>>(),
            "rootfs": users.iter().map(|(_, u)| serde_json::json!({
                "path": u.rootfs, "manifest": u.manifest, "blocks": u.blocks.len(), "live": u.live,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let total: u64 = blocks.iter().map(|(_, s)| s).sum();
    for (d, s) in &blocks {
        println!("{d} {} used by {}", human(*s), users_of(d.as_str()));
    }
    for (_, u) in &users {
        let state = if u.live { "" } else { " (gone)" };
        println!(
            "rootfs {}{state}: {} blocks",
            u.rootfs.display(),
            u.blocks.len()
        );
    }
    println!(
        "{} blocks, {} in {}",
        blocks.len(),
        human(total),
        store.dir().display()
    );
    Ok(())
}
