//! The shim's one error type: every variant names the image part it is about.

use std::path::PathBuf;

/// Errors of the unpacker.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file-system operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An operation inside the root filesystem was refused or failed.
    #[error("{context}: {source}")]
    InRoot {
        /// What was being done, to which path.
        context: String,
        /// The resolver's error.
        source: pathrs::error::Error,
    },
    /// An error of the core crate (layout, digests, manifests).
    #[error(transparent)]
    Core(#[from] oci_blocks_core::Error),
    /// The image breaks a rule; nothing was made visible.
    #[error("{subject}: {reason}")]
    Invalid {
        /// The layer, block, entry or document concerned.
        subject: String,
        /// What is wrong.
        reason: String,
    },
    /// An option is wrong or unsafe.
    #[error("{option}: {reason}")]
    Option {
        /// The option.
        option: String,
        /// Why it is refused.
        reason: String,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn in_root(context: impl Into<String>, source: pathrs::error::Error) -> Self {
        Error::InRoot {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn invalid(subject: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Invalid {
            subject: subject.into(),
            reason: reason.into(),
        }
    }
}

/// Result with the shim's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
