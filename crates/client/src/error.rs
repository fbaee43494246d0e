//! The crate's one error type.

/// Errors of the registry client.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An image reference is not `oci:DIR[:TAG]` or `docker://HOST/REPO[:TAG|@DIGEST]`.
    #[error("invalid image reference {reference:?}: {reason}")]
    Reference {
        /// The text given.
        reference: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A request could not be made or answered (after retries).
    #[error("{method} {url}: {message}")]
    Http {
        /// The method.
        method: String,
        /// The URL.
        url: String,
        /// What happened.
        message: String,
    },
    /// The registry answered with an error status.
    #[error("{method} {url}: {status}: {body}")]
    Status {
        /// The method.
        method: String,
        /// The URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The registry's error body (distribution-spec codes), shortened.
        body: String,
    },
    /// Content did not match the digest (or size) it was fetched under.
    #[error("{what}: expected {expected}, got {found}")]
    Mismatch {
        /// Which blob or manifest.
        what: String,
        /// The digest or size expected.
        expected: String,
        /// What the content has.
        found: String,
    },
    /// A manifest or index is not what a copy can walk.
    #[error("{what}: {reason}")]
    Document {
        /// Which document.
        what: String,
        /// Why.
        reason: String,
    },
    /// A registry's answer exceeds a bound of the client.
    #[error("{what}: {reason} (limit: {limit})")]
    Limit {
        /// Which request or document.
        what: String,
        /// What exceeded the bound.
        reason: String,
        /// The bound.
        limit: String,
    },
    /// A credentials file cannot be read.
    #[error("credentials {}: {reason}", path.display())]
    Credentials {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// A local file operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: std::path::PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An error of the core crate (layouts, digests).
    #[error(transparent)]
    Core(#[from] oci_blocks_core::Error),
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
