//! The crate's one error type, for storage, configuration and start-up failures.
//!
//! Errors that reach a client over HTTP are [`crate::api::ApiError`]s, which carry a
//! distribution-spec error code; this type is what the storage and the commands
//! return, and the API maps it to `500` where nothing better applies.

use std::path::PathBuf;

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
    /// The configuration file or a flag is wrong.
    #[error("configuration: {0}")]
    Config(String),
    /// The htpasswd file cannot be used.
    #[error("htpasswd {}: line {line}: {message}", path.display())]
    Htpasswd {
        /// The file.
        path: PathBuf,
        /// The 1-based line.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
    /// The TLS certificate or key cannot be used.
    #[error("TLS: {0}")]
    Tls(String),
    /// Stored content is not what its name says (a damaged storage root).
    #[error("storage: {0}")]
    Corrupt(String),
    /// An object-store request failed.
    #[error("{key}: {source}")]
    ObjectStore {
        /// The object concerned, as s3://BUCKET/KEY.
        key: String,
        /// The store's error.
        source: Box<object_store::Error>,
    },
    /// A collection is removing a digest that a request relies on; the
    /// request may be retried once it is done (`503`).
    #[error("{digest} is being removed by a garbage collection; retry")]
    Collecting {
        /// The digest.
        digest: String,
    },
    /// Another collector holds the lease.
    #[error("garbage collection: {0}")]
    Busy(String),
    /// An error of the core crate.
    #[error(transparent)]
    Core(#[from] oci_blocks_core::Error),
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches a path to an I/O error.
pub(crate) trait IoContext<T> {
    fn at(self, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: &std::path::Path) -> Result<T> {
        self.map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}
