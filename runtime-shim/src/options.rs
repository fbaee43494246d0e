//! Command-line options that every unpacking command shares (`oci-blocks
//! unpack`, `oci-blocks pull`, `oci-blocks-shim unpack`), as one clap
//! struct each, so that the flags are spelled and documented once.

use oci_blocks_core::limits::{Limits, parse_bytes};

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
            imports_per_layer: self.max_imports_per_layer,
            expansion_ratio: self.max_expansion,
            ..Limits::default()
        }
    }
}
