//! Python: installed distributions from `*.dist-info/RECORD`, their names and
//! versions from `METADATA`, and the canonical form of their compiled files.

use std::fs;
use std::path::Path;

use crate::{Error, Result};

/// One installed distribution.
#[derive(Clone, Debug)]
pub struct Distribution {
    /// The `.dist-info` directory name.
    pub dist_info: String,
    /// `Name` from METADATA.
    pub name: String,
    /// `Version` from METADATA.
    pub version: String,
    /// RECORD paths inside `site-packages` (relative, no `..`).
    pub inside: Vec<String>,
}

/// Reads a distribution from its `.dist-info` directory.
pub fn read_distribution(dist_info: &Path) -> Result<Distribution> {
    let record_path = dist_info.join("RECORD");
    let malformed = |path: &Path, reason: String| Error::MalformedDistribution {
        path: path.to_path_buf(),
        reason,
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_path(&record_path)
        .map_err(|e| malformed(&record_path, format!("unreadable RECORD: {e}")))?;
    let mut inside = Vec::new();
    for (line, row) in reader.records().enumerate() {
        let row = row.map_err(|e| malformed(&record_path, format!("line {}: {e}", line + 1)))?;
        let Some(path) = row.get(0).filter(|p| !p.is_empty()) else {
            return Err(malformed(
                &record_path,
                format!("line {}: empty path", line + 1),
            ));
        };
        if row.len() != 3 {
            return Err(malformed(
                &record_path,
                format!(
                    "line {}: {} fields, RECORD rows have 3 (path,hash,size)",
                    line + 1,
                    row.len()
                ),
            ));
        }
        let outside = path.starts_with('/') || path.split('/').any(|c| c == "..");
        if !outside {
            inside.push(path.trim_start_matches("./").to_string());
        }
    }
    let metadata_path = dist_info.join("METADATA");
    let metadata = fs::read_to_string(&metadata_path)
        .map_err(|e| malformed(&metadata_path, format!("unreadable METADATA: {e}")))?;
    let field = |key: &str| {
        metadata
            .lines()
            .take_while(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.trim().to_string())
    };
    let (Some(name), Some(version)) = (field("Name"), field("Version")) else {
        return Err(malformed(
            &metadata_path,
            "METADATA has no Name or no Version field".into(),
        ));
    };
    Ok(Distribution {
        dist_info: dist_info
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        name,
        version,
        inside,
    })
}

/// Whether a magic number is that of CPython 3.7 or later (PEP 552 headers):
/// the third and fourth bytes are `\r\n`, and the little-endian number is at
/// least 3390, the first 3.7 magic.
fn pep552_magic(magic: &[u8]) -> bool {
    magic.len() == 4 && magic[2..4] == *b"\r\n" && u16::from_le_bytes([magic[0], magic[1]]) >= 3390
}

/// Applies the `__pycache__` rules of `spec/reproducibility.md` to a `.pyc`'s
/// bytes: for a timestamp-based file whose recorded mtime and size match its
/// source, the recorded mtime becomes `epoch` (header rule); in every PEP 552
/// file, the compile-time path prefix of `co_filename` becomes a same-length
/// placeholder (path rule). `source_rel` is the source path relative to
/// `site-packages`. Returns `None` when the file is left as it is.
pub fn canonical_pyc(
    data: &[u8],
    source_rel: &str,
    source_mtime: i64,
    source_size: u64,
    epoch: u64,
) -> Option<Vec<u8>> {
    if data.len() < 16 || !pep552_magic(&data[..4]) {
        return None;
    }
    let mut out = data.to_vec();
    let recorded_mtime = u32::from_le_bytes([data[8], data[9], data[10], data[11]]);
    let recorded_size = u32::from_le_bytes([data[12], data[13], data[14], data[15]]);
    let timestamped = data[4..8] == [0, 0, 0, 0];
    let fresh = recorded_mtime == source_mtime as u32 && recorded_size == source_size as u32;
    if timestamped && fresh {
        out[8..12].copy_from_slice(&(epoch as u32).to_le_bytes());
    }
    if let Some((start, end)) = find_filename(&out, source_rel) {
        let full = out[start..end].to_vec();
        let prefix_len = full.len() - source_rel.len();
        if prefix_len >= 2 {
            let mut replaced = vec![b'_'; prefix_len];
            replaced[0] = b'/';
            replaced[prefix_len - 1] = b'/';
            replaced.extend_from_slice(source_rel.as_bytes());
            replace_all(&mut out[16..], &full, &replaced);
        }
    }
    (out != data).then_some(out)
}

/// Finds the marshal string whose content ends with `/` + `source_rel`.
fn find_filename(data: &[u8], source_rel: &str) -> Option<(usize, usize)> {
    let mut suffix = b"/".to_vec();
    suffix.extend_from_slice(source_rel.as_bytes());
    let mut from = 16;
    while let Some(off) = find(&data[from..], &suffix) {
        let end = from + off + suffix.len();
        let hit = from + off;
        // The string's header sits before its content: short forms have a 1-byte
        // length, long forms a 4-byte little-endian one.
        for start in (16..=hit).rev().take(4096) {
            let len = end - start;
            if start >= 2
                && matches!(data[start - 2] & 0x7f, b'z' | b'Z')
                && usize::from(data[start - 1]) == len
            {
                return Some((start, end));
            }
            if start >= 5
                && matches!(data[start - 5] & 0x7f, b'a' | b'A' | b'u' | b't')
                && u32::from_le_bytes([
                    data[start - 4],
                    data[start - 3],
                    data[start - 2],
                    data[start - 1],
                ]) as usize
                    == len
            {
                return Some((start, end));
            }
        }
        from = hit + 1;
    }
    None
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn replace_all(data: &mut [u8], from: &[u8], to: &[u8]) {
    debug_assert_eq!(from.len(), to.len());
    let mut i = 0;
    while let Some(off) = find(&data[i..], from) {
        data[i + off..i + off + to.len()].copy_from_slice(to);
        i += off + to.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pyc(prefix: &str, mtime: u32, size: u32) -> Vec<u8> {
        let mut d = vec![0xa7, 0x0d, 0x0d, 0x0a, 0, 0, 0, 0];
        d.extend_from_slice(&mtime.to_le_bytes());
        d.extend_from_slice(&size.to_le_bytes());
        d.extend_from_slice(b"\xe3code...");
        let name = format!("{prefix}rich/filesize.py");
        d.push(0xfa);
        d.push(name.len() as u8);
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(b"...more");
        d
    }

    #[test]
    fn two_installs_become_identical() {
        let a = canonical_pyc(
            &pyc("/tmp/pip-target-07541tk1/lib/python/", 100, 7),
            "rich/filesize.py",
            100,
            7,
            1,
        )
        .expect("rewritten");
        let b = canonical_pyc(
            &pyc("/tmp/pip-target-6fvvl3cb/lib/python/", 200, 7),
            "rich/filesize.py",
            200,
            7,
            1,
        )
        .expect("rewritten");
        assert_eq!(a, b);
        assert_eq!(&a[8..12], &1u32.to_le_bytes());
        let prefix = "/tmp/pip-target-07541tk1/lib/python/";
        let canonical = format!("/{}/rich/filesize.py", "_".repeat(prefix.len() - 2));
        assert!(find(&a, canonical.as_bytes()).is_some());
        assert_eq!(
            a.len(),
            pyc("/tmp/pip-target-07541tk1/lib/python/", 100, 7).len()
        );
    }

    #[test]
    fn stale_hash_based_and_foreign_files_are_left_alone() {
        // Stale (mtime or size differ) or hash-based: the header is kept, only
        // the path rule applies.
        let stale = pyc("/x/", 100, 7);
        let out = canonical_pyc(&stale, "rich/filesize.py", 101, 7, 1).expect("path rewritten");
        assert_eq!(&out[8..12], &100u32.to_le_bytes(), "stale mtime kept");
        let out = canonical_pyc(&stale, "rich/filesize.py", 100, 8, 1).expect("path rewritten");
        assert_eq!(
            &out[8..12],
            &100u32.to_le_bytes(),
            "stale size keeps the mtime"
        );
        let mut hashed = stale.clone();
        hashed[4] = 1;
        let out = canonical_pyc(&hashed, "rich/filesize.py", 100, 7, 1).expect("path rewritten");
        assert_eq!(&out[..16], &hashed[..16], "hash-based header untouched");
        // A prefix of one byte cannot be rewritten: nothing changes.
        let mut tiny = stale.clone();
        tiny.truncate(16);
        assert_eq!(canonical_pyc(&tiny, "rich/filesize.py", 1, 7, 1), None);
        assert_eq!(canonical_pyc(b"short", "x.py", 0, 0, 1), None);
        let mut old_magic = stale;
        old_magic[0..2].copy_from_slice(&3000u16.to_le_bytes());
        assert_eq!(
            canonical_pyc(&old_magic, "rich/filesize.py", 100, 7, 1),
            None
        );
    }
}
