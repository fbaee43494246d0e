//! The builder's one error type: every variant names the input it is about.

use std::path::PathBuf;

/// Errors of the builder.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file-system operation on an input or output failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An error of the core crate (layout, digests).
    #[error(transparent)]
    Core(#[from] oci_blocks_core::Error),
    /// An `--add` source does not exist.
    #[error("--add {src}: no such file or directory")]
    MissingSource {
        /// The source as given.
        src: String,
    },
    /// A build option is wrong (relative DEST, duplicate DEST, bad platform, ...).
    #[error("{option}: {reason}")]
    Option {
        /// The option or build-file key.
        option: String,
        /// What is wrong.
        reason: String,
    },
    /// An input has a file type that cannot go into an image.
    #[error("{}: {kind} cannot be put in an image", path.display())]
    Unsupported {
        /// The input file.
        path: PathBuf,
        /// Its type.
        kind: &'static str,
    },
    /// A jar is not a readable zip archive.
    #[error("{}: malformed jar: {reason}", path.display())]
    MalformedJar {
        /// The jar.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A Python distribution's metadata is malformed.
    #[error("{}: {reason}", path.display())]
    MalformedDistribution {
        /// The RECORD or METADATA file.
        path: PathBuf,
        /// What is wrong (with the line where known).
        reason: String,
    },
    /// Two block rules claim the same path.
    #[error("{}: claimed by two block rules ({first}, {second})", path.display())]
    RuleConflict {
        /// The path.
        path: PathBuf,
        /// The first rule.
        first: String,
        /// The second rule.
        second: String,
    },
    /// A source image that cannot be rechunked, and why (which layer,
    /// entry or document).
    #[error("{image}: {reason}")]
    Image {
        /// The image, as the user named it.
        image: String,
        /// What is wrong, naming the layer, entry or field.
        reason: String,
    },
    /// The base image is not a valid image.
    #[error("base image {reference} is not valid:\n{report}")]
    InvalidBase {
        /// The reference.
        reference: String,
        /// The violations found.
        report: String,
    },
    /// The build file is malformed.
    #[error("{}: {reason}", path.display())]
    BuildFile {
        /// The build file.
        path: PathBuf,
        /// What is wrong.
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

    pub(crate) fn option(option: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Option {
            option: option.into(),
            reason: reason.into(),
        }
    }
}

/// Result with the builder's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
