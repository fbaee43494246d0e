//! What a block may hold (`spec/blocks.md`, "What a block is"), checked entry
//! by entry as an archive streams, by the validator and by the block store
//! alike.
//!
//! A block is as untrusted as a layer, and it is shared by every image that
//! declares it, so it must be self-contained and unambiguous: relative, clean
//! paths; no whiteouts and no import entries; only files, directories and
//! links; no path twice; no path below a non-directory (a symlink `lib` and a
//! file `lib/x` would make `lib/x` mean one thing in the archive and another
//! on a file system); and hard links that name a regular file of the block.

use std::collections::HashMap;
use std::fmt;

use crate::entry::{self, Kind, Role};
use crate::validate::Rule;

/// One way a block breaks the rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockProblem {
    /// The rule.
    pub rule: Rule,
    /// The entry, as the archive names it.
    pub entry: String,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for BlockProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "entry {}: {} [{}]", self.entry, self.reason, self.rule)
    }
}

/// How deep a chain of hard links to hard links may go.
const MAX_LINK_CHAIN: usize = 64;

/// The shape of a block, fed one entry at a time.
#[derive(Debug, Default)]
pub struct BlockShape {
    /// Each path's kind, and the name it had in the archive.
    kinds: HashMap<Vec<u8>, (Kind, String)>,
    /// Hard links: path to target and the entry's name.
    links: HashMap<Vec<u8>, (Vec<u8>, String)>,
    problems: Vec<BlockProblem>,
}

impl BlockShape {
    fn problem(&mut self, rule: Rule, entry: &str, reason: impl Into<String>) {
        self.problems.push(BlockProblem {
            rule,
            entry: entry.to_string(),
            reason: reason.into(),
        });
    }

    /// Records one entry: its raw name, its kind (or why its type is not
    /// one), and a hard link's raw target. Returns whether the entry may be
    /// extracted (a problem of its own was found otherwise).
    pub fn add(&mut self, raw: &[u8], kind: Result<Kind, String>, link: Option<&[u8]>) -> bool {
        let shown = String::from_utf8_lossy(raw).into_owned();
        let before = self.problems.len();
        let name = entry::clean(raw);
        if name.is_unclean() {
            self.problem(
                Rule::BlockPathUnclean,
                &shown,
                "a block path must be relative and must not contain `..`",
            );
        }
        let kind = match kind {
            Ok(Kind::GlobalHeader) => return true,
            Ok(k) => k,
            Err(why) => {
                self.problem(
                    Rule::BlockEntryType,
                    &shown,
                    format!("a block holds files, directories and links, not {why}"),
                );
                return false;
            }
        };
        match entry::role(&name) {
            Role::Whiteout(_) | Role::Opaque => self.problem(
                Rule::BlockWhiteout,
                &shown,
                "a block must not contain whiteouts",
            ),
            Role::Import(_) => self.problem(
                Rule::BlockImportEntry,
                &shown,
                "a block must not contain import entries",
            ),
            Role::Root | Role::Plain => {}
        }
        if !matches!(
            kind,
            Kind::File | Kind::Dir | Kind::Symlink | Kind::HardLink
        ) {
            self.problem(
                Rule::BlockEntryType,
                &shown,
                format!(
                    "a block holds files, directories and links, not a {}",
                    kind.describe()
                ),
            );
        }
        if name.path.is_empty() {
            // The block root: only a directory can be it.
            if kind != Kind::Dir {
                self.problem(
                    Rule::BlockPathPrefix,
                    &shown,
                    format!(
                        "the block root must be a directory, not a {}",
                        kind.describe()
                    ),
                );
            }
            return self.problems.len() == before;
        }
        if kind == Kind::HardLink {
            match link {
                None => self.problem(
                    Rule::BlockHardlinkTarget,
                    &shown,
                    "a hard link without a target",
                ),
                Some(target) => {
                    let t = entry::clean(target);
                    if t.is_unclean() {
                        self.problem(
                            Rule::BlockPathUnclean,
                            &format!("{shown} (hard link to {})", String::from_utf8_lossy(target)),
                            "a block path must be relative and must not contain `..`",
                        );
                    } else {
                        self.links
                            .insert(name.path.clone(), (t.path, shown.clone()));
                    }
                }
            }
        }
        if let Some((_, first)) = self.kinds.insert(name.path.clone(), (kind, shown.clone())) {
            self.problem(
                Rule::BlockDuplicatePath,
                &shown,
                format!("the block already has an entry for this path ({first})"),
            );
        }
        self.problems.len() == before
    }

    /// The problems that need the whole block: paths below a non-directory,
    /// and hard links that name no regular file of the block.
    pub fn finish(mut self) -> Vec<BlockProblem> {
        let mut below: Vec<(String, String, Kind)> = Vec::new();
        for (path, (_, shown)) in &self.kinds {
            let mut p = &path[..];
            while let Some(i) = p.iter().rposition(|&b| b == b'/') {
                p = &p[..i];
                if let Some((k, prefix)) = self.kinds.get(p).filter(|(k, _)| *k != Kind::Dir) {
                    below.push((shown.clone(), prefix.clone(), *k));
                    break;
                }
            }
        }
        below.sort();
        for (shown, prefix, k) in below {
            self.problem(
                Rule::BlockPathPrefix,
                &shown,
                format!(
                    "it lies below {prefix}, which is a {} in the block, not a directory",
                    k.describe()
                ),
            );
        }
        let mut broken = Vec::new();
        for (target, shown) in self.links.values() {
            if let Err(why) = self.resolve(target) {
                broken.push((shown.clone(), target.clone(), why));
            }
        }
        broken.sort();
        for (shown, target, why) in broken {
            self.problem(
                Rule::BlockHardlinkTarget,
                &shown,
                format!(
                    "a hard link in a block must name a regular file of the block; {} {why}",
                    String::from_utf8_lossy(&target)
                ),
            );
        }
        self.problems
    }

    /// Follows a hard link's target to a regular file.
    fn resolve(&self, target: &[u8]) -> Result<(), String> {
        let mut t = target.to_vec();
        for _ in 0..MAX_LINK_CHAIN {
            match self.kinds.get(&t) {
                None => return Err("is not in the block".into()),
                Some((Kind::File, _)) => return Ok(()),
                Some((Kind::HardLink, _)) => match self.links.get(&t) {
                    Some((next, _)) => t = next.clone(),
                    None => return Err("is a hard link without a target".into()),
                },
                Some((k, _)) => return Err(format!("is a {}", k.describe())),
            }
        }
        Err(format!(
            "starts a chain of more than {MAX_LINK_CHAIN} hard links"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(entries: &[(&str, Kind, Option<&str>)]) -> Vec<(Rule, String)> {
        let mut s = BlockShape::default();
        for (p, k, l) in entries {
            s.add(p.as_bytes(), Ok(*k), l.map(str::as_bytes));
        }
        s.finish().into_iter().map(|p| (p.rule, p.entry)).collect()
    }

    #[test]
    fn a_path_below_a_symlink_is_refused_whatever_the_order() {
        let want = vec![(Rule::BlockPathPrefix, "evil/etc/passwd".to_string())];
        assert_eq!(
            shape(&[
                ("evil", Kind::Symlink, None),
                ("evil/etc/passwd", Kind::File, None)
            ]),
            want
        );
        assert_eq!(
            shape(&[
                ("evil/etc/passwd", Kind::File, None),
                ("evil", Kind::Symlink, None)
            ]),
            want
        );
        assert!(shape(&[("d/", Kind::Dir, None), ("d/x", Kind::File, None)]).is_empty());
        assert_eq!(
            shape(&[("f", Kind::File, None), ("f/x", Kind::File, None)])[0].0,
            Rule::BlockPathPrefix
        );
    }

    #[test]
    fn hard_links_name_a_regular_file_of_the_block() {
        assert!(shape(&[("h", Kind::HardLink, Some("f")), ("f", Kind::File, None)]).is_empty());
        assert!(
            shape(&[
                ("f", Kind::File, None),
                ("h1", Kind::HardLink, Some("f")),
                ("h2", Kind::HardLink, Some("h1"))
            ])
            .is_empty()
        );
        for bad in [
            vec![("l", Kind::Symlink, None), ("h", Kind::HardLink, Some("l"))],
            vec![("d/", Kind::Dir, None), ("h", Kind::HardLink, Some("d"))],
            vec![("h", Kind::HardLink, Some("missing"))],
            vec![
                ("a", Kind::HardLink, Some("b")),
                ("b", Kind::HardLink, Some("a")),
            ],
        ] {
            let found = shape(&bad);
            assert!(
                found.iter().any(|(r, _)| *r == Rule::BlockHardlinkTarget),
                "{bad:?}: {found:?}"
            );
        }
    }

    #[test]
    fn duplicates_whiteouts_imports_and_types() {
        let found = shape(&[("x", Kind::File, None), ("./x", Kind::File, None)]);
        assert_eq!(found, vec![(Rule::BlockDuplicatePath, "./x".to_string())]);
        assert_eq!(
            shape(&[("a/.wh.b", Kind::File, None)])[0].0,
            Rule::BlockWhiteout
        );
        assert_eq!(
            shape(&[(".wh..wh..opq", Kind::File, None)])[0].0,
            Rule::BlockWhiteout
        );
        assert_eq!(
            shape(&[("a/.import.b", Kind::File, None)])[0].0,
            Rule::BlockImportEntry
        );
        assert_eq!(
            shape(&[("dev", Kind::CharDevice, None)])[0].0,
            Rule::BlockEntryType
        );
        assert_eq!(
            shape(&[("../x", Kind::File, None)])[0].0,
            Rule::BlockPathUnclean
        );
        assert_eq!(
            shape(&[("f", Kind::File, None), ("h", Kind::HardLink, Some("../f"))])[0].0,
            Rule::BlockPathUnclean
        );
        let mut s = BlockShape::default();
        assert!(!s.add(b"x", Err("a GNU sparse file (type S)".into()), None));
        assert_eq!(s.finish()[0].rule, Rule::BlockEntryType);
    }
}

/// A path or link target as bytes: written as a string when it is UTF-8,
/// else as the array of its bytes, so that no name is folded into another.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Name(pub Vec<u8>);

impl serde::Serialize for Name {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(text) => s.serialize_str(text),
            Err(_) => s.serialize_bytes(&self.0),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Name {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Text(String),
            Bytes(Vec<u8>),
        }
        Ok(Name(match <Repr as serde::Deserialize>::deserialize(d)? {
            Repr::Text(t) => t.into_bytes(),
            Repr::Bytes(b) => b,
        }))
    }
}

/// The metadata of one block entry, as its tar header gives it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EntryMeta {
    /// The cleaned path in the block.
    pub path: Name,
    /// File, directory, symlink or hard link.
    pub kind: Kind,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Modification time.
    pub mtime: u64,
    /// Content bytes (regular files).
    pub size: u64,
    /// Link target: a symlink's as written, a hard link's as a cleaned block path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<Name>,
    /// Extended attributes (`SCHILY.xattr.*` records).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl EntryMeta {
    /// The metadata of a tar entry of `kind` (its type, classified), with its
    /// extended attributes.
    pub fn of<R: std::io::Read>(
        entry: &mut tar::Entry<'_, R>,
        kind: Kind,
    ) -> std::io::Result<EntryMeta> {
        let xattrs = entry::xattrs(entry)?;
        let header = entry.header();
        let link = entry.link_name_bytes().map(|l| {
            Name(if kind == Kind::HardLink {
                entry::clean(&l).path
            } else {
                l.into_owned()
            })
        });
        Ok(EntryMeta {
            path: Name(entry::clean(&entry.path_bytes()).path),
            kind,
            mode: header.mode()? & 0o7777,
            uid: header.uid().unwrap_or(0),
            gid: header.gid().unwrap_or(0),
            mtime: header.mtime().unwrap_or(0),
            size: if kind == Kind::File { entry.size() } else { 0 },
            link,
            xattrs,
        })
    }
}

/// A block's entries, sorted by path, for lookups by path and by subtree.
#[derive(Clone, Debug, Default)]
pub struct BlockIndex {
    entries: Vec<EntryMeta>,
    by_path: HashMap<Vec<u8>, usize>,
    content_bytes: u64,
}

impl BlockIndex {
    /// Indexes entries (in any order).
    pub fn new(mut entries: Vec<EntryMeta>) -> Self {
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        let by_path = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.path.0.clone(), i))
            .collect();
        let content_bytes = entries
            .iter()
            .filter(|e| e.kind == Kind::File)
            .map(|e| e.size)
            .sum();
        BlockIndex {
            entries,
            by_path,
            content_bytes,
        }
    }

    /// Every entry, sorted by path bytes.
    pub fn entries(&self) -> &[EntryMeta] {
        &self.entries
    }

    /// Bytes of the block's regular files.
    pub fn content_bytes(&self) -> u64 {
        self.content_bytes
    }

    /// The entry at `path`.
    pub fn get(&self, path: &[u8]) -> Option<&EntryMeta> {
        self.by_path.get(path).map(|&i| &self.entries[i])
    }

    /// The entries strictly below `dir` (all of them for the root).
    pub fn below(&self, dir: &[u8]) -> &[EntryMeta] {
        if dir.is_empty() {
            return &self.entries;
        }
        let prefix = [dir, b"/"].concat();
        let start = self.entries.partition_point(|e| e.path.0 < prefix);
        let len = self.entries[start..].partition_point(|e| e.path.0.starts_with(&prefix));
        &self.entries[start..start + len]
    }

    /// The regular file a block entry is, following hard links.
    pub fn file_of<'b>(&'b self, e: &'b EntryMeta) -> Option<&'b EntryMeta> {
        let mut cur = e;
        for _ in 0..MAX_LINK_CHAIN {
            match cur.kind {
                Kind::File => return Some(cur),
                Kind::HardLink => cur = self.get(&cur.link.as_ref()?.0)?,
                _ => return None,
            }
        }
        None
    }
}

/// What one path an import creates becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placed<'b> {
    /// A directory: with the block entry's metadata, or (implied by deeper
    /// entries, or the block root) with mode 0755 and the import entry's
    /// owner and time.
    Dir(Option<&'b EntryMeta>),
    /// A symbolic link.
    Symlink(&'b EntryMeta),
    /// A regular file with this entry's content and metadata.
    File(&'b EntryMeta),
    /// A hard link to the file placed at the item with this index.
    Link(usize, &'b EntryMeta),
}

/// One path an import creates, relative to `D/NAME` (empty: `D/NAME`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item<'b> {
    /// The path below `D/NAME`.
    pub rel: Vec<u8>,
    /// What it becomes.
    pub placed: Placed<'b>,
}

impl Item<'_> {
    /// The canonical sort key: the path, with a `/` after a directory.
    fn key(&self) -> Vec<u8> {
        let mut k = self.rel.clone();
        if matches!(self.placed, Placed::Dir(_)) && !k.is_empty() {
            k.push(b'/');
        }
        k
    }
}

/// Why an import cannot be planned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlanError {
    /// The block has no entry `SOURCE`, explicit or implied.
    SourceMissing,
    /// A hard link names no regular file (the block was not checked).
    BrokenLink(Vec<u8>),
    /// An entry of a type a block may not hold.
    EntryType(Vec<u8>, Kind),
}

impl PlanError {
    /// The rule it breaks.
    pub fn rule(&self) -> Rule {
        match self {
            PlanError::SourceMissing => Rule::ImportSourceMissing,
            PlanError::BrokenLink(_) => Rule::BlockHardlinkTarget,
            PlanError::EntryType(..) => Rule::BlockEntryType,
        }
    }
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::SourceMissing => f.write_str("the block has no such entry"),
            PlanError::BrokenLink(p) => write!(
                f,
                "hard link {} names no regular file of the block",
                String::from_utf8_lossy(p)
            ),
            PlanError::EntryType(p, k) => write!(
                f,
                "{} is a {}, which a block may not hold",
                String::from_utf8_lossy(p),
                k.describe()
            ),
        }
    }
}

/// Everything an import of `source` (the block path, `""` for the root)
/// creates, in canonical order (`spec/fallback.md`, "Materialized entries"),
/// and the bytes of the files among them.
///
/// Directories come before what they hold. Of the paths that are one file in
/// the block (a regular file and the hard links to it), the first in that
/// order is [`Placed::File`] and the others [`Placed::Link`] to it, whatever
/// order the block's archive had; a hard link whose file lies outside the
/// imported subtree is therefore a file of its own. Directories that only
/// deeper entries imply are [`Placed::Dir`]`(None)`.
pub fn plan<'b>(block: &'b BlockIndex, source: &[u8]) -> Result<(Vec<Item<'b>>, u64), PlanError> {
    let named = block.get(source);
    let below = block.below(source);
    if named.is_none() && below.is_empty() && !source.is_empty() {
        return Err(PlanError::SourceMissing);
    }
    let item = |rel: Vec<u8>, e: &'b EntryMeta| -> Result<Item<'b>, PlanError> {
        let placed = match e.kind {
            Kind::Dir => Placed::Dir(Some(e)),
            Kind::Symlink => Placed::Symlink(e),
            Kind::File | Kind::HardLink => Placed::File(
                block
                    .file_of(e)
                    .ok_or_else(|| PlanError::BrokenLink(e.path.0.clone()))?,
            ),
            other => return Err(PlanError::EntryType(e.path.0.clone(), other)),
        };
        Ok(Item { rel, placed })
    };
    let mut items = vec![match named {
        Some(e) => item(Vec::new(), e)?,
        None => Item {
            rel: Vec::new(),
            placed: Placed::Dir(None),
        },
    }];
    if matches!(items[0].placed, Placed::Dir(_)) {
        let skip = if source.is_empty() {
            0
        } else {
            source.len() + 1
        };
        for e in below {
            items.push(item(e.path.0[skip..].to_vec(), e)?);
        }
    }
    let mut have: std::collections::HashSet<Vec<u8>> =
        items.iter().map(|i| i.rel.clone()).collect();
    let mut implied = Vec::new();
    for i in &items {
        let mut p = &i.rel[..];
        while let Some(at) = p.iter().rposition(|&b| b == b'/') {
            p = &p[..at];
            if have.insert(p.to_vec()) {
                implied.push(p.to_vec());
            }
        }
    }
    items.extend(implied.into_iter().map(|rel| Item {
        rel,
        placed: Placed::Dir(None),
    }));
    items.sort_by_cached_key(Item::key);
    let mut leaders: HashMap<&[u8], usize> = HashMap::new();
    let mut bytes = 0;
    for (i, it) in items.iter_mut().enumerate() {
        if let Placed::File(f) = it.placed {
            match leaders.get(&f.path.0[..]) {
                Some(&leader) => it.placed = Placed::Link(leader, f),
                None => {
                    leaders.insert(&f.path.0, i);
                    bytes += f.size;
                }
            }
        }
    }
    Ok((items, bytes))
}

#[cfg(test)]
mod plan_tests {
    use super::*;

    fn meta(path: &str, kind: Kind, link: Option<&str>) -> EntryMeta {
        EntryMeta {
            path: Name(path.as_bytes().to_vec()),
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 1,
            size: if kind == Kind::File { 3 } else { 0 },
            link: link.map(|l| Name(l.as_bytes().to_vec())),
            xattrs: Vec::new(),
        }
    }

    fn shown(items: &[Item<'_>]) -> Vec<String> {
        items
            .iter()
            .map(|i| {
                let rel = String::from_utf8_lossy(&i.rel).into_owned();
                match i.placed {
                    Placed::Dir(Some(_)) => format!("{rel}/"),
                    Placed::Dir(None) => format!("{rel}/ (implied)"),
                    Placed::Symlink(_) => format!("{rel} ->"),
                    Placed::File(f) => format!("{rel} = {}", String::from_utf8_lossy(&f.path.0)),
                    Placed::Link(l, _) => {
                        format!("{rel} => {}", String::from_utf8_lossy(&items[l].rel))
                    }
                }
            })
            .collect()
    }

    #[test]
    fn the_first_path_of_a_file_holds_it_whatever_the_archive_order() {
        let block = BlockIndex::new(vec![
            meta("pkg/hard.py", Kind::HardLink, Some("pkg/mod.py")),
            meta("pkg/mod.py", Kind::File, None),
            meta("pkg/sub/x", Kind::File, None),
            meta("pkg", Kind::Dir, None),
        ]);
        let (items, bytes) = plan(&block, b"pkg").expect("plan");
        assert_eq!(
            shown(&items),
            [
                "/",
                "hard.py = pkg/mod.py",
                "mod.py => hard.py",
                "sub/ (implied)",
                "sub/x = pkg/sub/x",
            ]
        );
        assert_eq!(bytes, 6);
        // One file of the subtree: the link's file is outside it.
        let (items, _) = plan(&block, b"pkg/hard.py").expect("plan");
        assert_eq!(shown(&items), [" = pkg/mod.py"]);
        assert_eq!(plan(&block, b"nothing"), Err(PlanError::SourceMissing));
        let (items, _) = plan(&block, b"").expect("root");
        assert_eq!(items[0].placed, Placed::Dir(None));
    }
}
