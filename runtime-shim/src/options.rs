//! Command-line options that every unpacking command shares (`oci-blocks
//! unpack`, `oci-blocks pull`, `oci-blocks-shim unpack`), as one clap
//! struct each, so that the flags are spelled and documented once.

use std::path::PathBuf;

use oci_blocks_core::layout::default_state_dir;
use oci_blocks_core::limits::{Limits, parse_bytes};

use crate::{Error, LinkMode, Result, UnpackOptions};

/// How an image is unpacked: the store, how imports are materialized, the
/// platform and the bounds.
#[derive(Clone, Debug, clap::Args)]
pub struct UnpackArgs {
    /// The block store (default: $XDG_DATA_HOME/oci-blocks).
    #[arg(long, value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// How imported files are materialized: auto (reflink, else copy),
    /// reflink, copy, or hardlink (only with --read-only).
    #[arg(long, value_enum, default_value = "auto")]
    pub link: LinkMode,
    /// The root filesystem will be mounted read-only (allows --link hardlink).
    #[arg(long)]
    pub read_only: bool,
    /// Platform to pick from an index (default: this machine's).
    #[arg(long, value_name = "OS/ARCH")]
    pub platform: Option<String>,
    #[command(flatten)]
    /// The bounds on what the image may cost.
    pub limits: LimitArgs,
}

impl UnpackArgs {
    /// The block store these options name, or the default one.
    pub fn store(&self) -> Result<PathBuf> {
        self.store
            .clone()
            .or_else(default_state_dir)
            .ok_or_else(|| Error::invalid("--store", "no --store and no $XDG_DATA_HOME or $HOME"))
    }

    /// The unpack options these flags give.
    pub fn options(&self) -> Result<UnpackOptions> {
        Ok(UnpackOptions {
            store: self.store()?,
            link: self.link,
            read_only: self.read_only,
            platform: self.platform.clone(),
            limits: self.limits.limits(),
        })
    }
}

/// The bounds on what an image may cost (`spec/imports.md`, "Size bounds").
#[derive(Clone, Debug, clap::Args)]
pub struct LimitArgs {
    /// Bytes of file content the imports of one image may materialize in
    /// all.
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes, default_value = "64GiB")]
    pub max_import_bytes: u64,
    /// How many times the content of the blocks it imports an image may
    /// materialize, plus 64 MiB (an import of one block a thousand times is
    /// refused early).
    #[arg(long, value_name = "N", default_value_t = Limits::default().import_ratio)]
    pub max_import_ratio: u64,
    /// Entries (files, directories, links) the imports of one image may
    /// materialize in all.
    #[arg(long, value_name = "N", default_value_t = Limits::default().import_entries)]
    pub max_import_entries: u64,
    /// Import entries in one layer.
    #[arg(long, value_name = "N", default_value_t = Limits::default().imports_per_layer)]
    pub max_imports_per_layer: u64,
    /// How many times its compressed size a layer or block may expand to
    /// (at least 1 GiB).
    #[arg(long, value_name = "N", default_value_t = Limits::default().expansion_ratio)]
    pub max_expansion: u64,
}

impl LimitArgs {
    /// The bounds these options give.
    pub fn limits(&self) -> Limits {
        Limits {
            import_bytes: self.max_import_bytes,
            import_ratio: self.max_import_ratio,
            import_entries: self.max_import_entries,
            imports_per_layer: self.max_imports_per_layer,
            expansion_ratio: self.max_expansion,
            ..Limits::default()
        }
    }
}
