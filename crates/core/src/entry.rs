//! Tar entries as every reader in the project sees them: one cleaner for entry
//! names and one classifier for entry types and reserved names.
//!
//! The validator, the unpacker, the block store and the builder all read layers
//! and blocks through these functions, so that an archive that one of them
//! approves is the archive another one applies. Two readers that cleaned names
//! differently (`x/../.import.y`, `a/../b`) or that disagreed on which entry
//! types exist (GNU sparse files, vendor types) could each be right on their
//! own and still see two different images.
//!
//! Names are cleaned lexically, as containerd and umoci clean them: a leading
//! `/` and `./` are dropped, `.` and empty components are skipped, and `..`
//! removes the previous component, stopping at the root. Names stay bytes: a
//! name that is not UTF-8 is not folded into another by lossy decoding.

use crate::import::{ImportError, import_name};
use crate::names::{OPAQUE_WHITEOUT, WHITEOUT_PREFIX};

/// A tar entry name after cleaning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CleanName {
    /// The path relative to the root, components joined by `/`, without a
    /// trailing `/`; empty for the root itself.
    pub path: Vec<u8>,
    /// The name was absolute (after at most one leading `./`).
    pub absolute: bool,
    /// The name had a `..` component.
    pub dotdot: bool,
    /// A `..` would have climbed above the root and was stopped there.
    pub escapes: bool,
}

impl CleanName {
    /// The path for display.
    pub fn display(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }

    /// Whether the name breaks `block.path-unclean`: absolute, or with a `..`
    /// component (`spec/blocks.md`).
    pub fn is_unclean(&self) -> bool {
        self.absolute || self.dotdot
    }

    /// The final component (empty for the root).
    pub fn file_name(&self) -> &[u8] {
        file_name(&self.path)
    }

    /// Everything before the final component (empty at the root).
    pub fn parent(&self) -> &[u8] {
        parent(&self.path)
    }
}

/// The final component of a cleaned path.
pub fn file_name(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => &path[i + 1..],
        None => path,
    }
}

/// Everything before the final component of a cleaned path (empty for a
/// path of one component).
pub fn parent(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => &path[..i],
        None => &[],
    }
}

/// Cleans a tar entry name (or hard-link target).
pub fn clean(raw: &[u8]) -> CleanName {
    let after_dot = raw.strip_prefix(b"./").unwrap_or(raw);
    let absolute = raw.starts_with(b"/") || after_dot.starts_with(b"/");
    let mut parts: Vec<&[u8]> = Vec::new();
    let (mut dotdot, mut escapes) = (false, false);
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                dotdot = true;
                if parts.pop().is_none() {
                    escapes = true;
                }
            }
            c => parts.push(c),
        }
    }
    CleanName {
        path: parts.join(&b'/'),
        absolute,
        dotdot,
        escapes,
    }
}

/// Joins a cleaned directory path and a relative path.
pub fn join(dir: &[u8], rel: &[u8]) -> Vec<u8> {
    match (dir.is_empty(), rel.is_empty()) {
        (true, _) => rel.to_vec(),
        (false, true) => dir.to_vec(),
        (false, false) => [dir, b"/", rel].concat(),
    }
}

/// Whether cleaned `path` is `dir` or lies below it.
pub fn is_at_or_below(path: &[u8], dir: &[u8]) -> bool {
    dir.is_empty()
        || path == dir
        || (path.len() > dir.len() && path.starts_with(dir) && path[dir.len()] == b'/')
}

/// What an entry's type makes of it.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A regular file (`0`, the old `\0`, and contiguous `7`).
    File,
    /// A hard link (`1`).
    HardLink,
    /// A symbolic link (`2`).
    Symlink,
    /// A character device (`3`).
    CharDevice,
    /// A block device (`4`).
    BlockDevice,
    /// A directory (`5`).
    Dir,
    /// A FIFO (`6`).
    Fifo,
    /// A PAX global header (`g`): metadata, not a file.
    GlobalHeader,
}

impl Kind {
    /// A short name for messages.
    pub fn describe(self) -> &'static str {
        match self {
            Kind::File => "regular file",
            Kind::HardLink => "hard link",
            Kind::Symlink => "symbolic link",
            Kind::CharDevice => "character device",
            Kind::BlockDevice => "block device",
            Kind::Dir => "directory",
            Kind::Fifo => "FIFO",
            Kind::GlobalHeader => "PAX global header",
        }
    }
}

/// Classifies an entry type. The error names a type no reader here applies:
/// GNU sparse files (which image-spec says SHOULD NOT be used and which tar
/// readers expand differently), volume headers, multi-volume continuations,
/// and any other vendor type (`layer.entry-type`).
pub fn kind(t: tar::EntryType) -> Result<Kind, String> {
    use tar::EntryType as T;
    Ok(match t {
        T::Regular | T::Continuous => Kind::File,
        T::Link => Kind::HardLink,
        T::Symlink => Kind::Symlink,
        T::Char => Kind::CharDevice,
        T::Block => Kind::BlockDevice,
        T::Directory => Kind::Dir,
        T::Fifo => Kind::Fifo,
        T::XGlobalHeader => Kind::GlobalHeader,
        T::GNUSparse => return Err("a GNU sparse file (type S)".into()),
        other => {
            let byte = other.as_byte();
            let shown = if byte.is_ascii_graphic() {
                format!("{:?}", byte as char)
            } else {
                format!("0x{byte:02x}")
            };
            return Err(format!("an entry of unsupported type {shown}"));
        }
    })
}

/// The prefix of PAX records that carry extended attributes.
pub const XATTR_RECORD: &str = "SCHILY.xattr.";

/// An entry's extended attributes, from its `SCHILY.xattr.*` PAX records.
pub fn xattrs<R: std::io::Read>(
    entry: &mut tar::Entry<'_, R>,
) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    let Some(records) = entry.pax_extensions()? else {
        return Ok(out);
    };
    for record in records {
        let record = record?;
        if let Some(name) = record.key().ok().and_then(|k| k.strip_prefix(XATTR_RECORD)) {
            out.push((name.to_string(), record.value_bytes().to_vec()));
        }
    }
    Ok(out)
}

/// What a cleaned name means to a layer (`spec/imports.md`, image-spec
/// `layer.md`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// The root directory itself (`./`, `/`).
    Root,
    /// An opaque whiteout of the parent directory.
    Opaque,
    /// A whiteout of the sibling this names (possibly `""`, `.` or `..`,
    /// which the caller refuses).
    Whiteout(Vec<u8>),
    /// An import entry creating the sibling this names, or why its name is
    /// invalid.
    Import(Result<Vec<u8>, ImportError>),
    /// Anything else.
    Plain,
}

/// The role of a cleaned name.
pub fn role(name: &CleanName) -> Role {
    let base = name.file_name();
    if name.path.is_empty() {
        return Role::Root;
    }
    if base == OPAQUE_WHITEOUT.as_bytes() {
        return Role::Opaque;
    }
    if let Some(hidden) = base.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
        return Role::Whiteout(hidden.to_vec());
    }
    let text = String::from_utf8_lossy(base);
    match import_name(&text) {
        // `import_name` looks at the text; NAME keeps the entry's bytes.
        Some(Ok(_)) => Role::Import(Ok(base[crate::names::IMPORT_PREFIX.len()..].to_vec())),
        Some(Err(e)) => Role::Import(Err(e)),
        None => Role::Plain,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(raw: &str) -> (String, bool, bool, bool) {
        let n = clean(raw.as_bytes());
        (n.display(), n.absolute, n.dotdot, n.escapes)
    }

    #[test]
    fn names_are_cleaned_lexically_and_clamped_at_the_root() {
        assert_eq!(c("a/b"), ("a/b".into(), false, false, false));
        assert_eq!(c("./a//./b/"), ("a/b".into(), false, false, false));
        assert_eq!(c("/etc/passwd"), ("etc/passwd".into(), true, false, false));
        assert_eq!(c(".//x"), ("x".into(), true, false, false));
        assert_eq!(c("a/../b"), ("b".into(), false, true, false));
        assert_eq!(
            c("x/../.import.y"),
            (".import.y".into(), false, true, false)
        );
        assert_eq!(c("../../x"), ("x".into(), false, true, true));
        assert_eq!(c("./"), ("".into(), false, false, false));
        assert_eq!(c("."), ("".into(), false, false, false));
    }

    #[test]
    fn bytes_that_are_not_utf8_are_kept() {
        let n = clean(b"d/\xff\xfe");
        assert_eq!(n.path, b"d/\xff\xfe");
        assert_ne!(clean(b"\xff").path, clean(b"\xfe").path);
    }

    #[test]
    fn roles_follow_the_cleaned_name() {
        assert_eq!(
            role(&clean(b"x/../.import.y")),
            Role::Import(Ok(b"y".to_vec()))
        );
        assert_eq!(role(&clean(b"a/.wh..wh..opq")), Role::Opaque);
        assert_eq!(role(&clean(b"a/.wh.b")), Role::Whiteout(b"b".to_vec()));
        assert_eq!(role(&clean(b"./")), Role::Root);
        assert!(matches!(role(&clean(b"a/.import.")), Role::Import(Err(_))));
        assert_eq!(role(&clean(b"a/b")), Role::Plain);
    }

    #[test]
    fn unsupported_types_are_named() {
        assert!(kind(tar::EntryType::GNUSparse).is_err_and(|e| e.contains("sparse")));
        assert!(kind(tar::EntryType::new(b'V')).is_err_and(|e| e.contains("'V'")));
        assert_eq!(kind(tar::EntryType::new(b'7')), Ok(Kind::File));
        assert_eq!(kind(tar::EntryType::new(0)), Ok(Kind::File));
    }

    #[test]
    fn prefixes() {
        assert!(is_at_or_below(b"a/b", b"a"));
        assert!(is_at_or_below(b"a", b"a"));
        assert!(!is_at_or_below(b"ab", b"a"));
        assert!(is_at_or_below(b"x", b""));
        assert_eq!(join(b"", b"x"), b"x");
        assert_eq!(join(b"a", b""), b"a");
        assert_eq!(join(b"a", b"b"), b"a/b");
    }
}
