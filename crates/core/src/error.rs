//! The crate's one error type.
//!
//! I/O and format failures are errors; rule violations found by validation are not
//! (they are collected in a [`crate::validate::Report`]), so that a validator can
//! report every problem of an image instead of stopping at the first one.

use std::path::PathBuf;

use crate::digest::Digest;
use crate::import::ImportError;

/// Errors of this crate.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file-system operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A string is not a digest this crate accepts.
    #[error("invalid digest {value:?}: {reason}")]
    InvalidDigest {
        /// The rejected text.
        value: String,
        /// Why it was rejected.
        reason: String,
    },
    /// Content did not hash to the digest it was stored or fetched under.
    #[error("digest mismatch: expected {expected}, content hashes to {found}")]
    DigestMismatch {
        /// The digest the content should have had.
        expected: Digest,
        /// The digest it has.
        found: Digest,
    },
    /// Content did not have the size its descriptor gives.
    #[error("size mismatch for {digest}: expected {expected} bytes, found {found}")]
    SizeMismatch {
        /// The blob concerned.
        digest: Digest,
        /// The size in the descriptor.
        expected: u64,
        /// The size found (a lower bound when reading stopped early).
        found: u64,
    },
    /// A blob is not in the layout.
    #[error("blob {digest} not found in {}", layout.display())]
    BlobNotFound {
        /// The blob looked for.
        digest: Digest,
        /// The OCI layout searched.
        layout: PathBuf,
    },
    /// A blob is larger than the reader accepts.
    #[error("blob {digest} is {size} bytes, more than the limit of {limit}")]
    TooLarge {
        /// The blob concerned.
        digest: Digest,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A directory is not an OCI image layout.
    #[error("{}: not an OCI image layout: {reason}", path.display())]
    NotALayout {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// An image reference could not be parsed.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// The reference as given.
        reference: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No image with the tag is in the layout.
    #[error("{}: no image tagged {tag:?} (tags: {})", layout.display(), if available.is_empty() { "none".to_string() } else { available.join(", ") })]
    TagNotFound {
        /// The layout.
        layout: PathBuf,
        /// The tag asked for.
        tag: String,
        /// The tags the layout has.
        available: Vec<String>,
    },
    /// A JSON document could not be parsed.
    #[error("{what}: malformed JSON: {source}")]
    Json {
        /// What was being parsed (file name, digest).
        what: String,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// A JSON document parsed but is not the expected structure.
    #[error("{what}: {reason}")]
    Malformed {
        /// What was being parsed.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A delta patch cannot be applied, or did not rebuild its block
    /// (`spec/deltas.md`).
    #[error("{what}: {reason}")]
    Patch {
        /// The patch and the block it rebuilds (`patch D for block T`).
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// An import entry is invalid.
    #[error(transparent)]
    Import(#[from] ImportError),
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// The spec rule an error about a blob or an import breaks, when it is one.
    pub fn rule(&self) -> Option<crate::validate::Rule> {
        use crate::validate::Rule;
        match self {
            Error::DigestMismatch { .. } => Some(Rule::BlobDigestMismatch),
            Error::SizeMismatch { .. } | Error::TooLarge { .. } => Some(Rule::BlobSizeMismatch),
            Error::BlobNotFound { .. } => Some(Rule::BlobMissing),
            Error::InvalidDigest { .. } => Some(Rule::DigestInvalid),
            Error::Import(e) => Some(e.rule()),
            _ => None,
        }
    }
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
