//! The legacy layers of fallback vectors, written from the vectors'
//! descriptions as `spec/fallback.md` ("Materialized layers") defines them.
//!
//! This is the suite's own reading of that definition, written from the
//! spec text and sharing no code with the project's crates: a stub layer's
//! entries byte for byte, each import entry replaced by the entries it
//! materializes in canonical order and canonical tar form, then two zero
//! blocks. An unpacker under test checks the legacy manifest against its own
//! materialization, so the two readings must agree byte for byte.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::{Context, Result, bail};

use crate::vectors::EntrySpec;

/// One block entry as the suite writes it: cleaned path and header fields.
#[derive(Clone, Debug)]
struct BlockEntry {
    path: Vec<u8>,
    kind: u8,
    mode: u32,
    content: Vec<u8>,
    link: Vec<u8>,
}

/// Cleans a name as `spec/imports.md` says readers do.
fn clean(raw: &str) -> Vec<u8> {
    let mut parts: Vec<&str> = Vec::new();
    for c in raw.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/").into_bytes()
}

fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(&text.as_bytes()[text.len() - digits..]);
    field[digits] = 0;
}

/// `reproducibility.md`'s name rule: `name`, else `prefix`/`name` split at a
/// `/`, else a PAX `path` record.
fn split(name: &[u8]) -> Option<(&[u8], &[u8])> {
    if name.len() <= 100 {
        return Some((&[], name));
    }
    let end = if name.ends_with(b"/") {
        name.len() - 1
    } else {
        name.len()
    };
    (0..end)
        .rev()
        .filter(|&i| name[i] == b'/')
        .map(|i| (&name[..i], &name[i + 1..]))
        .find(|(p, n)| p.len() <= 155 && !n.is_empty() && n.len() <= 100)
}

fn header(
    typeflag: u8,
    name: &[u8],
    prefix: &[u8],
    mode: u32,
    size: u64,
    link: &[u8],
    mtime: u64,
) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name);
    octal(&mut h[100..108], u64::from(mode & 0o7777));
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], mtime);
    h[156] = typeflag;
    h[157..157 + link.len()].copy_from_slice(link);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    octal(&mut h[329..337], 0);
    octal(&mut h[337..345], 0);
    h[345..345 + prefix.len()].copy_from_slice(prefix);
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..154].copy_from_slice(format!("{sum:06o}").as_bytes());
    h[154] = 0;
    h[155] = b' ';
    h
}

fn pad(out: &mut Vec<u8>) {
    while out.len() % 512 != 0 {
        out.push(0);
    }
}

/// One entry in canonical form: the suite's vectors have uid and gid 0 and
/// mtime 1 everywhere, and no extended attributes.
fn canonical(out: &mut Vec<u8>, typeflag: u8, path: &[u8], mode: u32, content: &[u8], link: &[u8]) {
    let mut name = path.to_vec();
    if typeflag == b'5' {
        name.push(b'/');
    }
    let mut records = Vec::new();
    let split_name = split(&name);
    let mut pax = |key: &str, value: &[u8]| {
        // "<len> <key>=<value>\n", where <len> counts itself.
        let body = key.len() + value.len() + 3;
        let mut len = body + 1;
        while len != body + len.to_string().len() {
            len = body + len.to_string().len();
        }
        records.extend_from_slice(format!("{len} {key}=").as_bytes());
        records.extend_from_slice(value);
        records.push(b'\n');
    };
    // Records sorted by key: linkpath before path.
    if link.len() > 100 {
        pax("linkpath", link);
    }
    if split_name.is_none() {
        pax("path", &name);
    }
    if !records.is_empty() {
        out.extend_from_slice(&header(
            b'x',
            b"././@PaxHeader",
            &[],
            0o644,
            records.len() as u64,
            &[],
            1,
        ));
        out.extend_from_slice(&records);
        pad(out);
    }
    let (prefix, short) = split_name.unwrap_or_else(|| (&[], &name[..100]));
    let link_field = &link[..link.len().min(100)];
    out.extend_from_slice(&header(
        typeflag,
        short,
        prefix,
        mode,
        content.len() as u64,
        link_field,
        1,
    ));
    out.extend_from_slice(content);
    pad(out);
}

/// The block's entries, by cleaned path.
fn block_entries(entries: &[EntrySpec]) -> Result<BTreeMap<Vec<u8>, BlockEntry>> {
    let mut out = BTreeMap::new();
    for e in entries {
        let (kind, mode) = match e.kind.as_str() {
            "file" => (b'0', 0o644),
            "dir" => (b'5', 0o755),
            "symlink" => (b'2', 0o777),
            "hardlink" => (b'1', 0o644),
            other => bail!("a block entry of type {other:?}"),
        };
        let path = clean(&e.path);
        let link = match kind {
            b'1' => clean(e.target.as_deref().unwrap_or_default()),
            b'2' => e.target.clone().unwrap_or_default().into_bytes(),
            _ => Vec::new(),
        };
        let content = if kind == b'0' {
            e.content.repeat(e.repeat.unwrap_or(1)).into_bytes()
        } else {
            Vec::new()
        };
        out.insert(
            path.clone(),
            BlockEntry {
                path,
                kind,
                mode: e.mode.unwrap_or(mode),
                content,
                link,
            },
        );
    }
    Ok(out)
}

/// The regular file a block entry is, through hard links.
fn file_of<'b>(
    block: &'b BTreeMap<Vec<u8>, BlockEntry>,
    mut e: &'b BlockEntry,
) -> Result<&'b BlockEntry> {
    for _ in 0..64 {
        match e.kind {
            b'0' => return Ok(e),
            b'1' => e = block.get(&e.link).context("a hard link to nothing")?,
            _ => bail!("a hard link to a non-file"),
        }
    }
    bail!("a hard-link chain")
}

/// The materialized entries of an import of `source` (cleaned, `""` for the
/// root) at `target`.
fn materialize(
    out: &mut Vec<u8>,
    block: &BTreeMap<Vec<u8>, BlockEntry>,
    source: &[u8],
    target: &[u8],
) -> Result<()> {
    let join = |rel: &[u8]| -> Vec<u8> {
        match (target.is_empty(), rel.is_empty()) {
            (_, true) => target.to_vec(),
            (true, false) => rel.to_vec(),
            (false, false) => [target, b"/", rel].concat(),
        }
    };
    // (rel, entry or None for an implied directory)
    let mut items: Vec<(Vec<u8>, Option<&BlockEntry>)> = Vec::new();
    let prefix = [source, b"/"].concat();
    let named = block.get(source).filter(|_| !source.is_empty());
    match named {
        Some(e) => items.push((Vec::new(), Some(e))),
        None => items.push((Vec::new(), None)),
    }
    if named.is_none_or(|e| e.kind == b'5') {
        for (p, e) in block {
            let rel = if source.is_empty() {
                Some(&p[..])
            } else {
                p.strip_prefix(&prefix[..])
            };
            if let Some(rel) = rel.filter(|r| !r.is_empty()) {
                items.push((rel.to_vec(), Some(e)));
            }
        }
    }
    let mut have: HashSet<Vec<u8>> = items.iter().map(|(r, _)| r.clone()).collect();
    let mut implied = Vec::new();
    for (rel, _) in &items {
        let mut p = &rel[..];
        while let Some(i) = p.iter().rposition(|&b| b == b'/') {
            p = &p[..i];
            if have.insert(p.to_vec()) {
                implied.push(p.to_vec());
            }
        }
    }
    items.extend(implied.into_iter().map(|r| (r, None)));
    let key = |(rel, e): &(Vec<u8>, Option<&BlockEntry>)| {
        let mut k = rel.clone();
        if e.is_none_or(|e| e.kind == b'5') && !k.is_empty() {
            k.push(b'/');
        }
        k
    };
    items.sort_by_key(key);
    let mut leaders: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    for (rel, e) in &items {
        let path = join(rel);
        match e {
            None => canonical(out, b'5', &path, 0o755, &[], &[]),
            Some(e) if e.kind == b'5' => canonical(out, b'5', &path, e.mode, &[], &[]),
            Some(e) if e.kind == b'2' => canonical(out, b'2', &path, e.mode, &[], &e.link),
            Some(e) => {
                let f = file_of(block, e)?;
                match leaders.get(&f.path) {
                    Some(leader) => canonical(out, b'1', &path, f.mode, &[], leader),
                    None => {
                        leaders.insert(f.path.clone(), path.clone());
                        canonical(out, b'0', &path, f.mode, &f.content, &[]);
                    }
                }
            }
        }
    }
    Ok(())
}

/// Writes one stub entry as the suite writes it into the stub (its extension
/// headers included), and gives its content with placeholders substituted.
pub type WriteEntry<'a> = dyn Fn(&EntrySpec) -> Result<(Vec<u8>, String)> + 'a;

/// The legacy layer of the stub `stub`: `one` writes one of its entries, and
/// `blocks` maps a block digest to its entries.
pub fn legacy_layer(
    stub: &[EntrySpec],
    one: &WriteEntry<'_>,
    blocks: &HashMap<String, Vec<EntrySpec>>,
) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for e in stub {
        let (bytes, content) = one(e)?;
        let path = clean(&e.path);
        let (dir, base) = match path.iter().rposition(|&b| b == b'/') {
            Some(i) => (&path[..i], &path[i + 1..]),
            None => (&[][..], &path[..]),
        };
        let name = base
            .strip_prefix(b".import.")
            .filter(|n| !n.is_empty() && *n != b"." && *n != b"..");
        let Some(name) = name.filter(|_| e.kind == "file") else {
            out.extend_from_slice(&bytes);
            continue;
        };
        let line = content.strip_suffix('\n').unwrap_or(&content);
        let (source, digest) = line
            .rsplit_once(" from ")
            .context("an import entry without ` from `")?;
        let block = blocks
            .get(digest)
            .with_context(|| format!("no block {digest}"))?;
        let target = if dir.is_empty() {
            name.to_vec()
        } else {
            [dir, b"/", name].concat()
        };
        materialize(&mut out, &block_entries(block)?, &clean(source), &target)?;
    }
    out.extend_from_slice(&[0u8; 1024]);
    Ok(out)
}
