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
