//! File trees: the one a vector expects, the one an unpacker produced, and the
//! difference between them.
//!
//! A tree maps each path below the root (the root itself excluded) to its type,
//! permission bits, size, content digest and link target. Ownership and times
//! are not compared: rootless unpackers cannot keep the first, and the
//! proposal does not change how layers set the second. Hard links are checked
//! where the vector expects them; further sharing of inodes (an unpacker that
//! links identical files) is allowed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// An entry of an expected tree, as a vector description writes it.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedEntry {
    /// The path below the root, without a leading `/`.
    pub path: String,
    /// `file` (default), `dir`, `symlink` or `fifo`.
    #[serde(rename = "type", default = "file")]
    pub kind: String,
    /// Permission bits (default 0o644 for files and FIFOs, 0o755 for directories).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// A file's content.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub content: String,
    /// Repeat the content this many times.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat: Option<usize>,
    /// A symbolic link's target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Another path of the tree this file must be a hard link to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

fn file() -> String {
    "file".into()
}

/// What a path is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Node {
    /// `file`, `dir`, `symlink`, `fifo`, `char`, `block` or `socket`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Permission bits, `None` for symbolic links (always 0777 on Linux).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// A file's size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// A file's `sha256:` content digest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// A symbolic link's target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind)?;
        if let Some(m) = self.mode {
            write!(f, " {m:04o}")?;
        }
        if let Some(s) = self.size {
            write!(f, " {s} bytes")?;
        }
        if let Some(d) = &self.digest {
            write!(f, " {}", short(d))?;
        }
        if let Some(t) = &self.target {
            write!(f, " -> {t}")?;
        }
        Ok(())
    }
}

fn short(digest: &str) -> &str {
    digest.get(..19).unwrap_or(digest)
}

/// A tree: each path's node, and the hard links it must have.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Tree {
    /// Path to node.
    pub nodes: BTreeMap<String, Node>,
    /// For the expected tree: path to the path it must be hard linked to.
    /// For a tree read from disk: path to its (device, inode).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub links: BTreeMap<String, String>,
}

impl Tree {
    /// The tree a vector expects.
    pub fn expected(entries: &[ExpectedEntry]) -> Result<Tree> {
        let mut tree = Tree::default();
        for e in entries {
            let path = e.path.trim_end_matches('/').to_string();
            let node = match e.kind.as_str() {
                "file" => {
                    let content = e.content.repeat(e.repeat.unwrap_or(1));
                    Node {
                        kind: "file".into(),
                        mode: Some(e.mode.unwrap_or(0o644)),
                        size: Some(content.len() as u64),
                        digest: Some(sha256(content.as_bytes())),
                        target: None,
                    }
                }
                "dir" => Node {
                    kind: "dir".into(),
                    mode: Some(e.mode.unwrap_or(0o755)),
                    size: None,
                    digest: None,
                    target: None,
                },
                "symlink" => Node {
                    kind: "symlink".into(),
                    mode: None,
                    size: None,
                    digest: None,
                    target: Some(
                        e.target
                            .clone()
                            .with_context(|| format!("expected symlink {path} has no target"))?,
                    ),
                },
                "fifo" => Node {
                    kind: "fifo".into(),
                    mode: Some(e.mode.unwrap_or(0o644)),
                    size: None,
                    digest: None,
                    target: None,
                },
                other => bail!("expected entry {path}: unknown type {other:?}"),
            };
            if let Some(link) = &e.link {
                tree.links.insert(path.clone(), link.clone());
            }
            if tree.nodes.insert(path.clone(), node).is_some() {
                bail!("expected entry {path} is listed twice");
            }
        }
        for (path, link) in &tree.links {
            if !tree.nodes.contains_key(link) {
                bail!("expected entry {path} links to {link}, which the tree lacks");
            }
        }
        Ok(tree)
    }

    /// Clears the write bits of every regular file's mode.
    pub fn without_file_write_bits(&mut self) {
        for node in self.nodes.values_mut().filter(|n| n.kind == "file") {
            node.mode = node.mode.map(|m| m & !0o222);
        }
    }

    /// Reads the tree below `root`, following no symbolic link.
    pub fn read(root: &Path) -> Result<Tree> {
        let mut tree = Tree::default();
        walk(root, "", &mut tree)?;
        Ok(tree)
    }
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn walk(dir: &Path, prefix: &str, tree: &mut Tree) -> Result<()> {
    let mut names: Vec<_> = fs::read_dir(dir)
        .with_context(|| format!("read {}", dir.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()?;
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let rel = format!("{prefix}{}", name.to_string_lossy());
        let meta =
            fs::symlink_metadata(&path).with_context(|| format!("stat {}", path.display()))?;
        let ft = meta.file_type();
        let mode = Some(meta.mode() & 0o7777);
        let mut node = Node {
            kind: String::new(),
            mode,
            size: None,
            digest: None,
            target: None,
        };
        if ft.is_dir() {
            node.kind = "dir".into();
        } else if ft.is_file() {
            node.kind = "file".into();
            node.size = Some(meta.len());
            node.digest = Some(file_digest(&path)?);
            tree.links
                .insert(rel.clone(), format!("{}:{}", meta.dev(), meta.ino()));
        } else if ft.is_symlink() {
            node.kind = "symlink".into();
            node.mode = None;
            let target = fs::read_link(&path)?;
            node.target = Some(target.to_string_lossy().into_owned());
        } else if ft.is_fifo() {
            node.kind = "fifo".into();
        } else if ft.is_char_device() {
            node.kind = "char".into();
        } else if ft.is_block_device() {
            node.kind = "block".into();
        } else {
            node.kind = "socket".into();
        }
        let is_dir = ft.is_dir();
        tree.nodes.insert(rel.clone(), node);
        if is_dir {
            walk(&path, &format!("{rel}/"), tree)?;
        }
    }
    Ok(())
}

fn file_digest(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

/// The differences between an expected tree and an actual one, one line each:
/// `- PATH  NODE` for a missing path, `+ PATH  NODE` for an extra one,
/// `~ PATH  expected NODE, found NODE` for a changed one.
pub fn diff(expected: &Tree, actual: &Tree) -> Vec<String> {
    let mut out = Vec::new();
    let paths: BTreeSet<&String> = expected.nodes.keys().chain(actual.nodes.keys()).collect();
    for path in paths {
        match (expected.nodes.get(path), actual.nodes.get(path)) {
            (Some(e), None) => out.push(format!("- {path}  {e}")),
            (None, Some(a)) => out.push(format!("+ {path}  {a}")),
            (Some(e), Some(a)) if e != a => out.push(format!("~ {path}  expected {e}, found {a}")),
            _ => {}
        }
    }
    for (path, link) in &expected.links {
        let (Some(a), Some(b)) = (actual.links.get(path), actual.links.get(link)) else {
            continue;
        };
        if a != b {
            out.push(format!(
                "~ {path}  expected a hard link to {link}, found a separate file"
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: &str) -> ExpectedEntry {
        ExpectedEntry {
            path: path.into(),
            kind: kind.into(),
            mode: None,
            content: String::new(),
            repeat: None,
            target: None,
            link: None,
        }
    }

    #[test]
    fn a_tree_read_from_disk_matches_its_description() -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir()?;
        let root = tmp.path();
        fs::create_dir(root.join("d"))?;
        fs::write(root.join("d/a"), "hello")?;
        fs::set_permissions(root.join("d/a"), fs::Permissions::from_mode(0o644))?;
        fs::set_permissions(root.join("d"), fs::Permissions::from_mode(0o755))?;
        fs::hard_link(root.join("d/a"), root.join("b"))?;
        std::os::unix::fs::symlink("d/a", root.join("s"))?;
        let mut a = entry("d/a", "file");
        a.content = "hello".into();
        let mut b = a.clone();
        b.path = "b".into();
        b.link = Some("d/a".into());
        let mut s = entry("s", "symlink");
        s.target = Some("d/a".into());
        let expected = Tree::expected(&[entry("d", "dir"), a, b, s])?;
        let actual = Tree::read(root)?;
        assert_eq!(diff(&expected, &actual), Vec::<String>::new());

        // Each kind of difference is reported on its own line.
        fs::remove_file(root.join("b"))?;
        fs::write(root.join("b"), "hello")?;
        fs::set_permissions(root.join("b"), fs::Permissions::from_mode(0o644))?;
        fs::set_permissions(root.join("d"), fs::Permissions::from_mode(0o700))?;
        fs::write(root.join("extra"), "")?;
        fs::remove_file(root.join("s"))?;
        let lines = diff(&expected, &Tree::read(root)?);
        assert_eq!(lines.len(), 4, "{lines:#?}");
        assert!(
            lines[0].starts_with("~ d  expected dir 0755, found dir 0700"),
            "{lines:?}"
        );
        assert!(lines[1].starts_with("+ extra  file"), "{lines:?}");
        assert!(lines[2].starts_with("- s  symlink -> d/a"), "{lines:?}");
        assert!(
            lines[3].contains("expected a hard link to d/a"),
            "{lines:?}"
        );
        Ok(())
    }

    #[test]
    fn content_differences_show_size_and_digest() -> Result<()> {
        let tmp = tempfile::tempdir()?;
        fs::write(tmp.path().join("f"), "other")?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(tmp.path().join("f"), fs::Permissions::from_mode(0o644))?;
        let mut f = entry("f", "file");
        f.content = "hello!".into();
        let lines = diff(&Tree::expected(&[f])?, &Tree::read(tmp.path())?);
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].contains("6 bytes") && lines[0].contains("5 bytes"),
            "{lines:?}"
        );
        Ok(())
    }

    #[test]
    fn a_wrong_expected_tree_is_refused() {
        let mut l = entry("a", "file");
        l.link = Some("nowhere".into());
        assert!(Tree::expected(&[l]).is_err());
        assert!(Tree::expected(&[entry("a", "dir"), entry("a", "dir")]).is_err());
        assert!(Tree::expected(&[entry("s", "symlink")]).is_err());
        assert!(Tree::expected(&[entry("x", "socket")]).is_err());
    }
}
