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
    // Every code object's co_filename, found by walking the marshal data:
    // the spans whose content is an absolute path ending in `/SOURCE_REL`
    // get a same-length placeholder for the prefix before it.
    let magic = u16::from_le_bytes([data[0], data[1]]);
    let suffix = format!("/{source_rel}");
    let mut retype = Vec::new();
    for (start, end) in filename_spans(&data[16..], magic).unwrap_or_default() {
        let (start, end) = (start + 16, end + 16);
        let content = &out[start..end];
        if !(content.starts_with(b"/") && content.ends_with(suffix.as_bytes())) {
            continue;
        }
        let prefix_len = content.len() - source_rel.len();
        if prefix_len >= 2 {
            let mut replaced = vec![b'_'; prefix_len];
            replaced[0] = b'/';
            replaced[prefix_len - 1] = b'/';
            out[start..start + prefix_len].copy_from_slice(&replaced);
            // A prefix that was not ASCII made CPython write the string as
            // UTF-8 (`u`, or `t` interned); now it is ASCII, it takes the
            // type CPython writes for an ASCII string, or two prefixes of
            // one length would still give two files.
            if out[start..end].is_ascii()
                && start >= 21
                && matches!(out[start - 5] & 0x7f, b'u' | b't')
            {
                retype.push((start - 5, start, end));
            }
        }
    }
    if !retype.is_empty() {
        let mut rebuilt = Vec::with_capacity(out.len());
        let mut pos = 0;
        for (header, start, end) in retype {
            rebuilt.extend_from_slice(&out[pos..header]);
            let flag = out[header] & 0x80;
            let len = end - start;
            match u8::try_from(len) {
                Ok(short) => rebuilt.extend_from_slice(&[b'z' | flag, short]),
                Err(_) => {
                    rebuilt.push(b'a' | flag);
                    rebuilt.extend_from_slice(&(len as u32).to_le_bytes());
                }
            }
            rebuilt.extend_from_slice(&out[start..end]);
            pos = end;
        }
        rebuilt.extend_from_slice(&out[pos..]);
        out = rebuilt;
    }
    (out != data).then_some(out)
}

/// How deep marshal objects may nest before the walk gives up (CPython
/// itself stops at 2000; real modules stay far below 100).
const MAX_MARSHAL_DEPTH: usize = 500;

/// The code object layout of the CPython version that wrote a `.pyc`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum CodeLayout {
    /// 3.7: argcount, kwonlyargcount, nlocals, stacksize, flags; code, consts,
    /// names, varnames, freevars, cellvars, filename, name; firstlineno; lnotab.
    Py37,
    /// 3.8 to 3.10: as 3.7 with posonlyargcount after argcount.
    Py38,
    /// 3.11 and later: argcount, posonlyargcount, kwonlyargcount, stacksize,
    /// flags; code, consts, names, localsplusnames, localspluskinds, filename,
    /// name, qualname; firstlineno; linetable, exceptiontable.
    Py311,
}

/// Walks marshal data the way CPython's `marshal.loads` reads it.
struct Marshal<'a> {
    data: &'a [u8],
    pos: usize,
    layout: CodeLayout,
    /// Content spans of every code object's `co_filename` that is a string
    /// of its own (not a reference to an earlier one).
    filenames: Vec<(usize, usize)>,
}

impl Marshal<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let end = self.pos.checked_add(n)?;
        let bytes = self.data.get(self.pos..end)?;
        self.pos = end;
        Some(bytes)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Skips one object; returns the content span when it is a string.
    fn object(&mut self, depth: usize) -> Option<Option<(usize, usize)>> {
        if depth > MAX_MARSHAL_DEPTH {
            return None;
        }
        let kind = self.u8()? & 0x7f;
        let string = |m: &mut Self, len: usize| -> Option<Option<(usize, usize)>> {
            let start = m.pos;
            m.take(len)?;
            Some(Some((start, m.pos)))
        };
        match kind {
            b'0' | b'N' | b'F' | b'T' | b'S' | b'.' => {}
            b'i' | b'r' => {
                self.take(4)?;
            }
            b'I' | b'g' => {
                self.take(8)?;
            }
            b'y' => {
                self.take(16)?;
            }
            b'l' => {
                let n = self.u32()? as i32;
                self.take(n.unsigned_abs() as usize * 2)?;
            }
            b'f' => {
                let n = self.u8()?;
                self.take(usize::from(n))?;
            }
            b'x' => {
                for _ in 0..2 {
                    let n = self.u8()?;
                    self.take(usize::from(n))?;
                }
            }
            b's' | b't' | b'u' | b'a' | b'A' => {
                let n = self.u32()? as usize;
                return string(self, n);
            }
            b'z' | b'Z' => {
                let n = self.u8()?;
                return string(self, usize::from(n));
            }
            b'(' | b'[' | b'<' | b'>' => {
                for _ in 0..self.u32()? {
                    self.object(depth + 1)?;
                }
            }
            b')' => {
                for _ in 0..self.u8()? {
                    self.object(depth + 1)?;
                }
            }
            b'{' => loop {
                // Keys and values until a NULL key.
                if self.data.get(self.pos).map(|b| b & 0x7f) == Some(b'0') {
                    self.pos += 1;
                    break;
                }
                self.object(depth + 1)?;
                self.object(depth + 1)?;
            },
            b':' => {
                // A slice (3.14): start, stop, step.
                for _ in 0..3 {
                    self.object(depth + 1)?;
                }
            }
            b'c' => self.code(depth)?,
            _ => return None,
        }
        Some(None)
    }

    fn code(&mut self, depth: usize) -> Option<()> {
        let ints = match self.layout {
            CodeLayout::Py37 => 5,
            CodeLayout::Py38 => 6,
            CodeLayout::Py311 => 5,
        };
        self.take(4 * ints)?;
        // The objects before co_filename.
        let before = match self.layout {
            CodeLayout::Py37 | CodeLayout::Py38 => 6,
            CodeLayout::Py311 => 5,
        };
        for _ in 0..before {
            self.object(depth + 1)?;
        }
        if let Some(span) = self.object(depth + 1)? {
            self.filenames.push(span);
        }
        // name (and qualname), firstlineno, then the line and exception tables.
        let (names, tables) = match self.layout {
            CodeLayout::Py37 | CodeLayout::Py38 => (1, 1),
            CodeLayout::Py311 => (2, 2),
        };
        for _ in 0..names {
            self.object(depth + 1)?;
        }
        self.take(4)?;
        for _ in 0..tables {
            self.object(depth + 1)?;
        }
        Some(())
    }
}

/// The content spans of every `co_filename` in the marshal data of a `.pyc`
/// (after its 16-byte header) written by the CPython of `magic`, or `None`
/// when the data is not what that CPython writes.
fn filename_spans(data: &[u8], magic: u16) -> Option<Vec<(usize, usize)>> {
    let layout = match magic {
        0..3400 => CodeLayout::Py37,
        3400..3450 => CodeLayout::Py38,
        _ => CodeLayout::Py311,
    };
    let mut m = Marshal {
        data,
        pos: 0,
        layout,
        filenames: Vec::new(),
    };
    m.object(0)?;
    Some(m.filenames)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
        haystack.windows(needle.len()).position(|w| w == needle)
    }

    /// A marshalled str as CPython writes it: short ASCII (`z`, with the
    /// reference flag) when it can, else UTF-8 (`u`).
    fn string(text: &str) -> Vec<u8> {
        if text.is_ascii() && text.len() < 256 {
            let mut o = vec![b'z' | 0x80, text.len() as u8];
            o.extend_from_slice(text.as_bytes());
            o
        } else {
            let mut o = vec![b'u' | 0x80];
            o.extend_from_slice(&(text.len() as u32).to_le_bytes());
            o.extend_from_slice(text.as_bytes());
            o
        }
    }

    fn bytes_obj(b: &[u8]) -> Vec<u8> {
        let mut o = vec![b's'];
        o.extend_from_slice(&(b.len() as u32).to_le_bytes());
        o.extend_from_slice(b);
        o
    }

    fn small_tuple(items: &[Vec<u8>]) -> Vec<u8> {
        let mut o = vec![b')', items.len() as u8];
        for i in items {
            o.extend_from_slice(i);
        }
        o
    }

    /// A 3.11-layout code object whose `co_filename` is `filename` (an
    /// object: a string, or a reference), with `consts`.
    fn code(filename: Vec<u8>, consts: Vec<Vec<u8>>) -> Vec<u8> {
        let mut o = vec![b'c' | 0x80];
        for v in [0u32, 0, 0, 4, 0] {
            o.extend_from_slice(&v.to_le_bytes());
        }
        o.extend(bytes_obj(b"\x97\x00d\x00S\x00"));
        o.extend(small_tuple(&consts));
        o.extend(small_tuple(&[string("print")]));
        o.extend(small_tuple(&[]));
        o.extend(bytes_obj(b""));
        o.extend(filename);
        o.extend(string("<module>"));
        o.extend(string("<module>"));
        o.extend_from_slice(&1u32.to_le_bytes());
        o.extend(bytes_obj(b"\xf0\x03\x01\x01\x01"));
        o.extend(bytes_obj(b""));
        o
    }

    /// A `.pyc` of CPython 3.11 for a module compiled at `prefix`: a module
    /// code object with a nested function whose filename refers back to the
    /// module's, as CPython writes it.
    fn pyc(prefix: &str, mtime: u32, size: u32) -> Vec<u8> {
        let mut d = 3495u16.to_le_bytes().to_vec();
        d.extend_from_slice(b"\r\n");
        d.extend_from_slice(&[0, 0, 0, 0]);
        d.extend_from_slice(&mtime.to_le_bytes());
        d.extend_from_slice(&size.to_le_bytes());
        let name = format!("{prefix}rich/filesize.py");
        // The module's filename is object 1 (its code object is 0); the
        // nested function refers to it.
        let mut inner_ref = vec![b'r'];
        inner_ref.extend_from_slice(&1u32.to_le_bytes());
        let inner = code(inner_ref, vec![vec![b'N']]);
        d.extend(code(string(&name), vec![inner, string("a docstring")]));
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

    /// The failure found on a real environment: a byte pair inside pip's
    /// random directory name looks like a string header (`z`, then a byte
    /// equal to the length of the rest). Walking the marshal data, only the
    /// real header counts, and the two installs agree.
    #[test]
    fn a_header_lookalike_in_the_prefix_is_not_taken_for_the_string() {
        let rest = "npoux/lib/rich/filesize.py";
        let lookalike = format!("/tmp/pip-target-6z{}npoux/lib/", rest.len() as u8 as char);
        let plain = format!("/tmp/pip-target-6k{}npoux/lib/", 'q');
        assert_eq!(lookalike.len(), plain.len());
        let x = canonical_pyc(&pyc(&lookalike, 1, 1), "rich/filesize.py", 1, 1, 1);
        let y = canonical_pyc(&pyc(&plain, 1, 1), "rich/filesize.py", 1, 1, 1);
        assert!(x.is_some());
        assert_eq!(x, y);
    }

    /// The case the property below found: a prefix with a character that is
    /// not ASCII is written by CPython as a `u` string, an ASCII one as `z`.
    #[test]
    fn a_prefix_that_is_not_ascii_gives_the_file_an_ascii_one_gives() {
        let a = canonical_pyc(&pyc("/\u{80}/site/", 5, 9), "rich/filesize.py", 5, 9, 1);
        let b = canonical_pyc(&pyc("/xy/site/", 5, 9), "rich/filesize.py", 5, 9, 1);
        assert!(a.is_some());
        assert_eq!(a, b);
    }

    proptest! {
        /// Any two prefixes of one length give the same bytes, whatever
        /// characters pip's random names or a user's directories hold.
        #[test]
        fn any_prefixes_of_one_length_give_one_file(
            a in proptest::collection::vec(1u32..0x11_0000u32, 1..40),
            b in proptest::collection::vec(1u32..0x11_0000u32, 1..40),
        ) {
            let text = |cs: &[u32]| -> String {
                cs.iter()
                    .filter_map(|&c| char::from_u32(c))
                    .filter(|&c| c != '/' && c != '\0')
                    .collect()
            };
            let (a, mut b) = (text(&a), text(&b));
            // Pad the shorter to the same UTF-8 length.
            let mut a = a;
            while a.len() < b.len() { a.push('x'); }
            while b.len() < a.len() { b.push('y'); }
            let pa = pyc(&format!("/{a}/site/"), 5, 9);
            let pb = pyc(&format!("/{b}/site/"), 5, 9);
            let ca = canonical_pyc(&pa, "rich/filesize.py", 5, 9, 1).expect("rewritten");
            let cb = canonical_pyc(&pb, "rich/filesize.py", 5, 9, 1).expect("rewritten");
            if a.is_ascii() {
                prop_assert_eq!(ca.len(), pa.len());
            }
            prop_assert_eq!(ca, cb);
        }
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
        // Data that is not what CPython writes is left as it is.
        let mut cut = stale.clone();
        cut.truncate(40);
        assert_eq!(canonical_pyc(&cut, "rich/filesize.py", 1, 7, 1), None);
        assert_eq!(canonical_pyc(b"short", "x.py", 0, 0, 1), None);
        let mut old_magic = stale;
        old_magic[0..2].copy_from_slice(&3000u16.to_le_bytes());
        assert_eq!(
            canonical_pyc(&old_magic, "rich/filesize.py", 100, 7, 1),
            None
        );
    }

    /// Real CPython output: the same module compiled under many random
    /// directories of one length, some holding `z` and `Z` followed by a
    /// byte that looks like a length, canonicalizes to one file.
    #[test]
    #[ignore = "needs python3; .ci/run runs it"]
    fn cpython_compiled_files_under_random_prefixes_become_one() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let module =
            "def f(x):\n    return lambda: x\n\nclass C:\n    def m(self):\n        pass\n";
        let mut outputs = Vec::new();
        for i in 0..41u32 {
            // Names of one length, with lookalike headers in them; the last
            // with a character that is not ASCII (two bytes in UTF-8, as
            // the two characters it replaces).
            let name = if i == 40 {
                "pip-target-00éZ2q0040".to_string()
            } else {
                format!(
                    "pip-target-{:02}z{}Z{}q{i:04}",
                    i % 10,
                    (b'!' + (i % 90) as u8) as char,
                    (b'0' + (i % 10) as u8) as char
                )
            };
            let site = tmp.path().join(&name).join("site");
            std::fs::create_dir_all(site.join("pkg"))?;
            let src = site.join("pkg/mod.py");
            std::fs::write(&src, module)?;
            let out = std::process::Command::new("python3")
                .arg("-c")
                .arg("import py_compile,sys; py_compile.compile(sys.argv[1], cfile=sys.argv[2], doraise=True)")
                .arg(&src)
                .arg(site.join("mod.pyc"))
                .output()?;
            anyhow::ensure!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let data = std::fs::read(site.join("mod.pyc"))?;
            let meta = std::fs::metadata(&src)?;
            use std::os::unix::fs::MetadataExt;
            let canonical = canonical_pyc(&data, "pkg/mod.py", meta.mtime(), meta.size(), 1)
                .ok_or_else(|| anyhow::anyhow!("{name}: left as it was"))?;
            outputs.push((name, canonical));
        }
        for (name, c) in &outputs[1..] {
            anyhow::ensure!(c == &outputs[0].1, "{name} differs from {}", outputs[0].0);
        }
        // And CPython still loads it.
        let file = tmp.path().join("canonical.pyc");
        std::fs::write(&file, &outputs[0].1)?;
        let out = std::process::Command::new("python3")
            .arg("-c")
            .arg("import marshal,sys; d=open(sys.argv[1],'rb').read(); exec(marshal.loads(d[16:])); print(f(3)())")
            .arg(&file)
            .output()?;
        anyhow::ensure!(
            out.status.success() && out.stdout == b"3\n",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }
}
