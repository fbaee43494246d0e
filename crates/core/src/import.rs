//! The import-entry grammar: parsing and formatting `D/.import.NAME` entries.
//!
//! An import entry is a regular file in a layer whose name starts with
//! [`IMPORT_PREFIX`]. Its content is one UTF-8 line, `SOURCE from DIGEST`, split at
//! the last ` from `, with an optional trailing newline. `spec/imports.md` has the
//! ABNF; this module is its executable form, and every error it returns maps to one
//! rule id of the spec through [`ImportError::rule`].

use std::fmt;

use crate::digest::Digest;
use crate::names::{IMPORT_PREFIX, MAX_IMPORT_SIZE};
use crate::validate::Rule;

/// A parsed, valid import entry: which path of which block to materialize.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ImportEntry {
    source: String,
    digest: Digest,
}

/// Why an import entry (its name or its content) is invalid.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    /// The content is longer than [`MAX_IMPORT_SIZE`].
    #[error("content is {size} bytes, more than the limit of {MAX_IMPORT_SIZE}")]
    TooLarge {
        /// The content's size.
        size: u64,
    },
    /// The content is not UTF-8.
    #[error("content is not UTF-8")]
    NotUtf8,
    /// The content is not `SOURCE from DIGEST` on one line.
    #[error("content is not `SOURCE from DIGEST` on one line: {reason}")]
    Syntax {
        /// What is wrong.
        reason: &'static str,
    },
    /// SOURCE does not start with `/`.
    #[error("SOURCE {path:?} is not absolute (it must start with `/`)")]
    SourceRelative {
        /// The SOURCE given.
        path: String,
    },
    /// SOURCE has a `..` component.
    #[error("SOURCE {path:?} has a `..` component")]
    SourceDotDot {
        /// The SOURCE given.
        path: String,
    },
    /// SOURCE is not clean: `.` or empty components, a trailing `/`, a NUL.
    #[error("SOURCE {path:?} is not a clean path: {reason}")]
    SourceUnclean {
        /// The SOURCE given.
        path: String,
        /// What is unclean about it.
        reason: &'static str,
    },
    /// DIGEST is not a valid digest.
    #[error("DIGEST {value:?} is invalid: {reason}")]
    DigestInvalid {
        /// The DIGEST given.
        value: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The entry's file name is `.import.` with nothing after it.
    #[error("the entry name `.import.` has an empty NAME")]
    NameEmpty,
    /// The entry's NAME is `.` or `..`.
    #[error("the entry name `.import.{name}` has NAME `{name}`, which is not allowed")]
    NameDot {
        /// The NAME (`.` or `..`).
        name: String,
    },
}

impl ImportError {
    /// The spec rule this error violates.
    pub fn rule(&self) -> Rule {
        match self {
            ImportError::TooLarge { .. } => Rule::ImportTooLarge,
            ImportError::NotUtf8 => Rule::ImportNotUtf8,
            ImportError::Syntax { .. } => Rule::ImportSyntax,
            ImportError::SourceRelative { .. } => Rule::ImportSourceRelative,
            ImportError::SourceDotDot { .. } => Rule::ImportSourceDotDot,
            ImportError::SourceUnclean { .. } => Rule::ImportSourceUnclean,
            ImportError::DigestInvalid { .. } => Rule::ImportDigestInvalid,
            ImportError::NameEmpty => Rule::ImportNameEmpty,
            ImportError::NameDot { .. } => Rule::ImportNameDot,
        }
    }
}

const SEPARATOR: &str = " from ";

impl ImportEntry {
    /// An import entry for `source` in the block `digest`, checking `source`.
    pub fn new(source: impl Into<String>, digest: Digest) -> Result<Self, ImportError> {
        let source = source.into();
        check_source(&source)?;
        Ok(ImportEntry { source, digest })
    }

    /// Parses the content of an import entry.
    pub fn parse(content: &[u8]) -> Result<Self, ImportError> {
        if content.len() as u64 > MAX_IMPORT_SIZE {
            return Err(ImportError::TooLarge {
                size: content.len() as u64,
            });
        }
        let text = std::str::from_utf8(content).map_err(|_| ImportError::NotUtf8)?;
        let line = text.strip_suffix('\n').unwrap_or(text);
        if line.contains('\n') {
            return Err(ImportError::Syntax {
                reason: "more than one line",
            });
        }
        if line.contains('\r') {
            return Err(ImportError::Syntax {
                reason: "carriage return (lines end with LF only)",
            });
        }
        let Some(at) = line.rfind(SEPARATOR) else {
            return Err(ImportError::Syntax {
                reason: "no ` from ` separator",
            });
        };
        let (source, digest) = (&line[..at], &line[at + SEPARATOR.len()..]);
        if source.is_empty() {
            return Err(ImportError::Syntax {
                reason: "empty SOURCE",
            });
        }
        let digest = Digest::parse(digest).map_err(|e| ImportError::DigestInvalid {
            value: digest.to_string(),
            reason: match e {
                crate::Error::InvalidDigest { reason, .. } => reason,
                other => other.to_string(),
            },
        })?;
        ImportEntry::new(source, digest)
    }

    /// The content of this entry as a builder writes it: one line ending in `\n`.
    pub fn to_content(&self) -> String {
        format!("{}{SEPARATOR}{}\n", self.source, self.digest)
    }

    /// SOURCE, an absolute clean path inside the block (`/` is the block root).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// SOURCE as a path relative to the block root: empty for the root itself.
    pub fn source_in_block(&self) -> &str {
        self.source.trim_start_matches('/')
    }

    /// The block's digest.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }
}

impl fmt::Display for ImportEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{SEPARATOR}{}", self.source, self.digest)
    }
}

fn check_source(source: &str) -> Result<(), ImportError> {
    let unclean = |reason| ImportError::SourceUnclean {
        path: source.to_string(),
        reason,
    };
    let Some(rest) = source.strip_prefix('/') else {
        return Err(ImportError::SourceRelative {
            path: source.to_string(),
        });
    };
    if source.contains('\0') {
        return Err(unclean("contains a NUL byte"));
    }
    if source.contains('\n') || source.contains('\r') {
        return Err(unclean("contains a line break"));
    }
    if rest.is_empty() {
        return Ok(());
    }
    for component in rest.split('/') {
        match component {
            ".." => {
                return Err(ImportError::SourceDotDot {
                    path: source.to_string(),
                });
            }
            "." => return Err(unclean("has a `.` component")),
            "" if source.ends_with('/') => return Err(unclean("ends with `/`")),
            "" => return Err(unclean("has an empty component (`//`)")),
            _ => {}
        }
    }
    Ok(())
}

/// If `file_name` (one path component) is an import entry's name, its NAME, checked.
///
/// Returns `None` for a name without the [`IMPORT_PREFIX`].
pub fn import_name(file_name: &str) -> Option<Result<&str, ImportError>> {
    let name = file_name.strip_prefix(IMPORT_PREFIX)?;
    Some(match name {
        "" => Err(ImportError::NameEmpty),
        "." | ".." => Err(ImportError::NameDot {
            name: name.to_string(),
        }),
        _ => Ok(name),
    })
}

/// The file name of the import entry that materializes `name`.
pub fn entry_file_name(name: &str) -> String {
    format!("{IMPORT_PREFIX}{name}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const D: &str = "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";

    fn digest() -> Digest {
        Digest::parse(D).expect("valid digest")
    }

    #[test]
    fn parses_the_simple_form_with_and_without_newline() {
        let e = ImportEntry::parse(format!("/guava.jar from {D}\n").as_bytes()).expect("valid");
        assert_eq!(e.source(), "/guava.jar");
        assert_eq!(e.digest(), &digest());
        assert_eq!(
            ImportEntry::parse(format!("/guava.jar from {D}").as_bytes()),
            Ok(e)
        );
    }

    #[test]
    fn splits_at_the_last_from() {
        let e = ImportEntry::parse(format!("/a from b from {D}").as_bytes()).expect("valid");
        assert_eq!(e.source(), "/a from b");
    }

    #[test]
    fn root_source_names_the_whole_block() {
        let e = ImportEntry::parse(format!("/ from {D}").as_bytes()).expect("valid");
        assert_eq!(e.source_in_block(), "");
    }

    #[test]
    fn each_bad_content_gets_its_own_rule() {
        let cases: &[(String, Rule)] = &[
            (format!("a/b from {D}"), Rule::ImportSourceRelative),
            (format!("/a/../b from {D}"), Rule::ImportSourceDotDot),
            (format!("/.. from {D}"), Rule::ImportSourceDotDot),
            (format!("/a/./b from {D}"), Rule::ImportSourceUnclean),
            (format!("/a//b from {D}"), Rule::ImportSourceUnclean),
            (format!("/a/ from {D}"), Rule::ImportSourceUnclean),
            (format!("/a\0b from {D}"), Rule::ImportSourceUnclean),
            (format!("/a from {D}\n\n"), Rule::ImportSyntax),
            (format!("/a from {D}\r\n"), Rule::ImportSyntax),
            (format!(" from {D}"), Rule::ImportSyntax),
            ("/a".to_string(), Rule::ImportSyntax),
            ("/a from sha256:abc".to_string(), Rule::ImportDigestInvalid),
            (
                format!("/a from {}", D.to_uppercase()),
                Rule::ImportDigestInvalid,
            ),
            (format!("/a from {D}x"), Rule::ImportDigestInvalid),
        ];
        for (content, rule) in cases {
            let err = ImportEntry::parse(content.as_bytes()).expect_err(content);
            assert_eq!(err.rule(), *rule, "{content:?}: {err}");
        }
        let err = ImportEntry::parse(&[0xff, 0xfe]).expect_err("not utf-8");
        assert_eq!(err.rule(), Rule::ImportNotUtf8);
        let big = format!("/{} from {D}", "a".repeat(4096));
        assert_eq!(
            ImportEntry::parse(big.as_bytes()).map_err(|e| e.rule()),
            Err(Rule::ImportTooLarge)
        );
    }

    #[test]
    fn content_of_exactly_the_limit_is_accepted() {
        let pad = MAX_IMPORT_SIZE as usize - " from ".len() - D.len() - 1;
        let content = format!("/{} from {D}", "a".repeat(pad - 1));
        assert_eq!(content.len() as u64, MAX_IMPORT_SIZE - 1);
        let content = format!("{content}\n");
        assert!(ImportEntry::parse(content.as_bytes()).is_ok());
    }

    #[test]
    fn names() {
        assert_eq!(import_name("guava.jar"), None);
        assert_eq!(import_name(".import.guava.jar"), Some(Ok("guava.jar")));
        assert_eq!(import_name(".import."), Some(Err(ImportError::NameEmpty)));
        assert!(matches!(
            import_name(".import.."),
            Some(Err(ImportError::NameDot { .. }))
        ));
        assert!(matches!(
            import_name(".import..."),
            Some(Err(ImportError::NameDot { .. }))
        ));
        assert_eq!(import_name(".import...."), Some(Ok("...")));
    }

    fn source_strategy() -> impl Strategy<Value = String> {
        let component =
            "[^/\0\n\r]{1,12}".prop_filter("not a dot component", |c| c != "." && c != "..");
        prop::collection::vec(component, 0..6).prop_map(|cs| format!("/{}", cs.join("/")))
    }

    proptest! {
        #[test]
        fn format_then_parse_is_identity(source in source_strategy()) {
            let entry = ImportEntry::new(source, digest()).expect("strategy makes valid sources");
            let content = entry.to_content();
            prop_assert_eq!(ImportEntry::parse(content.as_bytes()), Ok(entry.clone()));
            prop_assert_eq!(ImportEntry::parse(content.trim_end_matches('\n').as_bytes()), Ok(entry));
        }

        #[test]
        fn no_input_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = ImportEntry::parse(&bytes);
        }

        #[test]
        fn no_near_miss_panics(prefix in "[/a-z. ]{0,20}", suffix in "[a-f0-9: ]{0,80}") {
            let content = format!("{prefix} from {suffix}");
            if let Ok(e) = ImportEntry::parse(content.as_bytes()) {
                let formatted = e.to_content();
                prop_assert_eq!(formatted.trim_end(), content.trim_end());
            }
        }
    }
}
