//! The rules of the spec, one id each, and the report that collects violations.

use std::fmt;

use serde::Serialize;

macro_rules! rules {
    ($( $(#[$doc:meta])* $variant:ident = $id:literal, $severity:ident, $spec:literal; )*) => {
        /// A rule of `spec/`, named by a stable id (`import.undeclared-digest`).
        ///
        /// The ids appear in `spec/*.md`, in `spec/examples/expected.toml` and in
        /// the CLI's output; they never change meaning once published.
        #[non_exhaustive]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Rule {
            $( $(#[$doc])* $variant, )*
        }

        impl Rule {
            /// Every rule, in spec order.
            pub const ALL: &'static [Rule] = &[$(Rule::$variant),*];

            /// The stable id.
            pub fn id(self) -> &'static str {
                match self { $(Rule::$variant => $id,)* }
            }

            /// Whether a violation makes the document invalid.
            pub fn severity(self) -> Severity {
                match self { $(Rule::$variant => Severity::$severity,)* }
            }

            /// The spec file that states the rule.
            pub fn spec_file(self) -> &'static str {
                match self { $(Rule::$variant => $spec,)* }
            }
        }
    };
}

rules! {
    /// The document is not JSON, or not a JSON object.
    JsonMalformed = "json.malformed", Error, "blocks.md";
    /// A JSON Schema of `spec/schemas` is violated.
    Schema = "schema", Error, "blocks.md";
    /// A digest fits the general grammar but not an accepted algorithm.
    DigestInvalid = "digest.invalid", Error, "blocks.md";
    /// A digest of an algorithm image-spec does not register (allowed, SHOULD pass).
    DigestUnregistered = "digest.unregistered", Warning, "blocks.md";
    /// A descriptor's `data` is not the content its digest and size name.
    DescriptorDataMismatch = "descriptor.data-mismatch", Error, "blocks.md";
    /// A manifest with the empty config has no `artifactType`.
    ManifestArtifactTypeMissing = "manifest.artifact-type-missing", Error, "blocks.md";
    /// A manifest with no layers (SHOULD have at least one).
    ManifestLayersEmpty = "manifest.layers-empty", Warning, "blocks.md";
    /// A plain manifest or index without `mediaType` (SHOULD be set).
    ManifestMediaTypeMissing = "manifest.media-type-missing", Warning, "blocks.md";
    /// A layer has an import-layer media type, or the config the blocks
    /// config media type, but the manifest has no `blocks`.
    BlocksMissing = "blocks.missing", Error, "blocks.md";
    /// A manifest with blocks has a config media type other than the blocks one.
    BlocksConfigMediaType = "blocks.config-media-type", Error, "blocks.md";
    /// The same digest appears twice in `blocks`.
    BlocksDuplicate = "blocks.duplicate", Error, "blocks.md";
    /// A digest is both a layer and a block of one manifest.
    BlocksAlsoLayer = "blocks.also-layer", Error, "blocks.md";
    /// A blocks-variant entry has no legacy entry of its platform before it.
    FallbackLegacyMissing = "fallback.legacy-missing", Error, "fallback.md";
    /// An index with blocks variants has no GC anchor.
    FallbackAnchorMissing = "fallback.anchor-missing", Error, "fallback.md";
    /// The anchor's platform is not `unknown/unknown`.
    FallbackAnchorPlatform = "fallback.anchor-platform", Error, "fallback.md";
    /// More than one anchor in one index.
    FallbackAnchorDuplicate = "fallback.anchor-duplicate", Error, "fallback.md";
    /// `io.oci-blocks.variant` has an unknown value.
    FallbackVariantUnknown = "fallback.variant-unknown", Error, "fallback.md";
    /// A block of a blocks manifest is missing from the anchor's layers.
    FallbackAnchorIncomplete = "fallback.anchor-incomplete", Error, "fallback.md";
    /// A blocks manifest does not name the legacy manifest of its platform.
    FallbackLegacyUnbound = "fallback.legacy-unbound", Error, "fallback.md";
    /// The legacy manifest is not what its blocks manifest materializes to.
    FallbackViewsDiffer = "fallback.views-differ", Error, "fallback.md";
    /// A delta patch rebuilds the block it applies to.
    DeltaSelfPatch = "delta.self-patch", Error, "deltas.md";
    /// Two patches of one delta artifact rebuild the same block.
    DeltaTargetDuplicate = "delta.target-duplicate", Error, "deltas.md";
    /// A patch is not smaller than the block it rebuilds.
    DeltaPatchLarger = "delta.patch-larger", Error, "deltas.md";
    /// A referenced blob is not in the layout.
    BlobMissing = "blob.missing", Error, "blocks.md";
    /// A blob a sparse layout omits on purpose.
    BlobAbsentSparse = "blob.absent-sparse", Warning, "blocks.md";
    /// A blob's content does not hash to its digest.
    BlobDigestMismatch = "blob.digest-mismatch", Error, "blocks.md";
    /// A blob's size differs from its descriptor.
    BlobSizeMismatch = "blob.size-mismatch", Error, "blocks.md";
    /// A layer or block is not a readable tar under its media type.
    LayerTarMalformed = "layer.tar-malformed", Error, "imports.md";
    /// A layer or block entry has a type no reader here applies (GNU sparse, vendor types).
    LayerEntryType = "layer.entry-type", Error, "imports.md";
    /// A layer entry name is absolute or has `..`; readers clean it lexically.
    LayerPathUnclean = "layer.path-unclean", Warning, "imports.md";
    /// A layer, block or image exceeds a bound of the implementation.
    LimitExceeded = "limit.exceeded", Error, "imports.md";
    /// A layer's uncompressed digest is not its `rootfs.diff_ids` entry.
    LayerDiffIdMismatch = "layer.diff-id-mismatch", Error, "imports.md";
    /// A layer with import entries uses a standard media type (SHOULD NOT).
    LayerImportMediaType = "layer.import-media-type", Warning, "imports.md";
    /// A `.import.` entry that is not a regular file.
    ImportEntryType = "import.entry-type", Error, "imports.md";
    /// `.import.` with an empty NAME.
    ImportNameEmpty = "import.name-empty", Error, "imports.md";
    /// NAME is `.` or `..`.
    ImportNameDot = "import.name-dot", Error, "imports.md";
    /// Content over 4 KiB.
    ImportTooLarge = "import.too-large", Error, "imports.md";
    /// Content is not UTF-8.
    ImportNotUtf8 = "import.not-utf8", Error, "imports.md";
    /// Content is not `SOURCE from DIGEST` on one line.
    ImportSyntax = "import.syntax", Error, "imports.md";
    /// SOURCE is not absolute.
    ImportSourceRelative = "import.source-relative", Error, "imports.md";
    /// SOURCE has a `..` component.
    ImportSourceDotDot = "import.source-dotdot", Error, "imports.md";
    /// SOURCE is not clean.
    ImportSourceUnclean = "import.source-unclean", Error, "imports.md";
    /// DIGEST is not a valid digest.
    ImportDigestInvalid = "import.digest-invalid", Error, "imports.md";
    /// DIGEST is not in the manifest's `blocks`.
    ImportUndeclaredDigest = "import.undeclared-digest", Error, "imports.md";
    /// The block has no entry at SOURCE.
    ImportSourceMissing = "import.source-missing", Error, "imports.md";
    /// The same import entry twice in one layer.
    ImportDuplicate = "import.duplicate", Error, "imports.md";
    /// `D/NAME` and `D/.import.NAME` in one layer.
    ImportConflict = "import.conflict", Error, "imports.md";
    /// A block contains a whiteout.
    BlockWhiteout = "block.whiteout", Error, "imports.md";
    /// A block contains an import entry.
    BlockImportEntry = "block.import-entry", Error, "imports.md";
    /// A block entry path is absolute or has `..`.
    BlockPathUnclean = "block.path-unclean", Error, "imports.md";
    /// A block entry lies below a non-directory entry of the block.
    BlockPathPrefix = "block.path-prefix", Error, "blocks.md";
    /// A block's hard link names no regular file of the block.
    BlockHardlinkTarget = "block.hardlink-target", Error, "blocks.md";
    /// Two entries of a block have the same path.
    BlockDuplicatePath = "block.duplicate-path", Error, "blocks.md";
    /// A block entry is not a file, directory or link.
    BlockEntryType = "block.entry-type", Error, "blocks.md";
}

impl Rule {
    /// The rule with this id.
    pub fn from_id(id: &str) -> Option<Rule> {
        Rule::ALL.iter().copied().find(|r| r.id() == id)
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

impl Serialize for Rule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.id())
    }
}

/// Whether a violation invalidates the document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// A MUST was broken: the document is invalid.
    Error,
    /// A SHOULD was broken: the document is valid but questionable.
    Warning,
}

/// One broken rule, located as precisely as possible.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// The rule.
    pub rule: Rule,
    /// Its severity (from the rule).
    pub severity: Severity,
    /// What the violation is in: a file, `manifest sha256:…`, `layer 2 (sha256:…)`.
    pub subject: String,
    /// The tar entry concerned, for layer and block rules.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry: Option<String>,
    /// The JSON pointer concerned, for document rules.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pointer: Option<String>,
    /// What is wrong, in words.
    pub message: String,
}

impl Violation {
    /// A violation of `rule` in `subject`.
    pub fn new(rule: Rule, subject: impl Into<String>, message: impl Into<String>) -> Self {
        Violation {
            rule,
            severity: rule.severity(),
            subject: subject.into(),
            entry: None,
            pointer: None,
            message: message.into(),
        }
    }

    /// Locates the violation at a tar entry.
    pub fn at_entry(mut self, entry: impl Into<String>) -> Self {
        self.entry = Some(entry.into());
        self
    }

    /// Locates the violation at a JSON pointer.
    pub fn at_pointer(mut self, pointer: impl Into<String>) -> Self {
        let p = pointer.into();
        self.pointer = Some(if p.is_empty() { "/".into() } else { p });
        self
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.severity == Severity::Warning {
            f.write_str("warning: ")?;
        }
        write!(f, "{}", self.subject)?;
        if let Some(e) = &self.entry {
            write!(f, ": entry {e}")?;
        }
        if let Some(p) = &self.pointer {
            write!(f, ": {p}")?;
        }
        write!(f, ": {} [{}]", self.message, self.rule)
    }
}

/// The violations found in a document or an image.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Every violation, in the order found.
    pub violations: Vec<Violation>,
}

impl Report {
    /// Records a violation.
    pub fn push(&mut self, v: Violation) {
        self.violations.push(v);
    }

    /// Records the violations of another report.
    pub fn extend(&mut self, other: Report) {
        self.violations.extend(other.violations);
    }

    /// No error-severity violation.
    pub fn is_valid(&self) -> bool {
        self.errors().next().is_none()
    }

    /// The violations that make the document invalid.
    pub fn errors(&self) -> impl Iterator<Item = &Violation> {
        self.violations
            .iter()
            .filter(|v| v.severity == Severity::Error)
    }

    /// The violations of SHOULD rules.
    pub fn warnings(&self) -> impl Iterator<Item = &Violation> {
        self.violations
            .iter()
            .filter(|v| v.severity == Severity::Warning)
    }

    /// Whether some violation is of `rule`.
    pub fn has(&self, rule: Rule) -> bool {
        self.violations.iter().any(|v| v.rule == rule)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for v in &self.violations {
            writeln!(f, "{v}")?;
        }
        Ok(())
    }
}
