//! Validation: the rules of `spec/`, checked on documents and whole images.
//!
//! Validation never stops at the first problem: it returns a [`Report`] of
//! [`Violation`]s, each carrying the [`Rule`] it breaks (a stable id such as
//! `import.undeclared-digest`), where it was found (document, layer, entry, JSON
//! pointer) and what is wrong. I/O failures are [`crate::Error`]s instead.

mod document;
mod image;
mod rules;
pub mod scan;

pub use document::{
    DocumentKind, SCHEMAS, binding_violation, check_binding, classify, validate_document,
    variant_of,
};
pub use image::{
    BlobInfo, EntryInfo, ImageInfo, ImageReport, IndexInfo, ManifestInfo, check_image,
    check_image_within, distinct_blocks,
};
pub use rules::{Report, Rule, Severity, Violation};
