//! The canonical tar form of `spec/reproducibility.md`, byte for byte.
//!
//! A block's digest is the dedup promise, so its bytes are fixed by the spec down
//! to header fields: ustar, PAX records only for `path`, `linkpath` and `size`
//! when ustar cannot hold them, uid/gid 0, empty owner names, one mtime, octal
//! fields NUL-terminated, the checksum as six digits, NUL, space, and exactly two
//! zero blocks at the end. The `tar` crate makes its own choices for several of
//! these (GNU long names, checksum format), so the header is written here; the
//! tests read every archive back with the `tar` crate.
//!
//! The same writer, given each entry's metadata ([`Meta`]), writes the entries
//! an import materializes into a legacy layer (`spec/fallback.md`), so that
//! every implementation writes them alike: a block's owner, time and extended
//! attributes go where ustar holds them, and into PAX records (`uid`, `gid`,
//! `mtime`, `SCHILY.xattr.*`) where it does not.

use std::io::{self, Read, Write};

const BLOCK: usize = 512;
const NAME_LEN: usize = 100;
const PREFIX_LEN: usize = 155;
/// The largest size the 12-byte octal field holds (11 digits): 8 GiB - 1.
const MAX_USTAR_SIZE: u64 = 0o77777777777;

/// The largest value of the 8-byte octal `uid` and `gid` fields (7 digits).
const MAX_USTAR_ID: u64 = 0o7777777;

/// Writes canonical tar entries to `out`. Entries must be given in canonical
/// order (sorted by name bytes, directories with their trailing `/`).
pub struct CanonicalTar<W: Write> {
    out: W,
    mtime: u64,
}

/// An entry's type in a canonical archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File = b'0' as isize,
    /// A hard link.
    HardLink = b'1' as isize,
    /// A symbolic link.
    Symlink = b'2' as isize,
    /// A directory.
    Dir = b'5' as isize,
}

/// The metadata of one entry.
#[derive(Clone, Copy, Debug)]
pub struct Meta<'a> {
    /// Permission bits (`& 0o7777` is written).
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Modification time.
    pub mtime: u64,
    /// Extended attributes, written as `SCHILY.xattr.NAME` records.
    pub xattrs: &'a [(String, Vec<u8>)],
}

fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(&text.as_bytes()[text.len() - digits..]);
    field[digits] = 0;
}

/// Splits a name into ustar `prefix` and `name`, or `None` if it needs PAX.
fn split_name(name: &[u8]) -> Option<(&[u8], &[u8])> {
    if name.len() <= NAME_LEN {
        return Some((&[], name));
    }
    let body_end = if name.ends_with(b"/") {
        name.len() - 1
    } else {
        name.len()
    };
    (0..body_end)
        .rev()
        .filter(|&i| name[i] == b'/')
        .map(|i| (&name[..i], &name[i + 1..]))
        .find(|(prefix, rest)| {
            prefix.len() <= PREFIX_LEN && !rest.is_empty() && rest.len() <= NAME_LEN
        })
}

fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    // "<len> <key>=<value>\n", where <len> counts itself.
    let body = key.len() + value.len() + 3; // space, '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut rec = format!("{len} {key}=").into_bytes();
    rec.extend_from_slice(value);
    rec.push(b'\n');
    rec
}

impl<W: Write> CanonicalTar<W> {
    /// A writer stamping every entry with `mtime` (`SOURCE_DATE_EPOCH`).
    pub fn new(out: W, mtime: u64) -> Self {
        CanonicalTar { out, mtime }
    }

    fn header(
        &mut self,
        kind: Kind,
        name: &[u8],
        mode: u32,
        size: u64,
        link: &[u8],
    ) -> io::Result<()> {
        let meta = Meta {
            mode,
            uid: 0,
            gid: 0,
            mtime: self.mtime,
            xattrs: &[],
        };
        self.entry_header(kind, name, &meta, size, link)
    }

    fn entry_header(
        &mut self,
        kind: Kind,
        name: &[u8],
        meta: &Meta<'_>,
        size: u64,
        link: &[u8],
    ) -> io::Result<()> {
        let mut pax: Vec<(String, &[u8])> = Vec::new();
        let split = split_name(name);
        if split.is_none() {
            pax.push(("path".into(), name));
        }
        if link.len() > NAME_LEN {
            pax.push(("linkpath".into(), link));
        }
        let texts = [size, meta.uid, meta.gid, meta.mtime].map(|n| n.to_string());
        if size > MAX_USTAR_SIZE {
            pax.push(("size".into(), texts[0].as_bytes()));
        }
        if meta.uid > MAX_USTAR_ID {
            pax.push(("uid".into(), texts[1].as_bytes()));
        }
        if meta.gid > MAX_USTAR_ID {
            pax.push(("gid".into(), texts[2].as_bytes()));
        }
        if meta.mtime > MAX_USTAR_SIZE {
            pax.push(("mtime".into(), texts[3].as_bytes()));
        }
        for (key, value) in meta.xattrs {
            pax.push((format!("SCHILY.xattr.{key}"), value));
        }
        if !pax.is_empty() {
            pax.sort_by(|a, b| a.0.cmp(&b.0));
            let records: Vec<u8> = pax.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
            // The extended header carries the entry's time (for a block,
            // `SOURCE_DATE_EPOCH`, like every other header).
            let h = raw_header(
                b'x',
                b"././@PaxHeader",
                &[],
                0o644,
                records.len() as u64,
                &[],
                (0, 0, meta.mtime.min(MAX_USTAR_SIZE)),
            );
            self.out.write_all(&h)?;
            self.out.write_all(&records)?;
            self.pad(records.len() as u64)?;
        }
        let (prefix, short) = split.unwrap_or_else(|| (&[], &name[..NAME_LEN]));
        let link_field = &link[..link.len().min(NAME_LEN)];
        let size_field = if size > MAX_USTAR_SIZE { 0 } else { size };
        let clamp = |v: u64, max: u64| if v > max { 0 } else { v };
        let h = raw_header(
            kind as u8,
            short,
            prefix,
            meta.mode & 0o7777,
            size_field,
            link_field,
            (
                clamp(meta.uid, MAX_USTAR_ID),
                clamp(meta.gid, MAX_USTAR_ID),
                clamp(meta.mtime, MAX_USTAR_SIZE),
            ),
        );
        self.out.write_all(&h)
    }

    /// An entry with its own metadata: `content` gives a regular file's
    /// `size` bytes; `link` is a link's target. A directory's `path` is
    /// given without its trailing `/`.
    pub fn entry(
        &mut self,
        kind: Kind,
        path: &[u8],
        meta: &Meta<'_>,
        link: &[u8],
        content: Option<(u64, &mut dyn Read)>,
    ) -> io::Result<()> {
        match (kind, content) {
            (Kind::File, Some((size, content))) => {
                self.entry_header(kind, path, meta, size, &[])?;
                self.content(size, content)
            }
            (Kind::File, None) => self.entry_header(kind, path, meta, 0, &[]),
            (Kind::Dir, _) => {
                let mut name = path.to_vec();
                name.push(b'/');
                self.entry_header(kind, &name, meta, 0, &[])
            }
            (_, _) => self.entry_header(kind, path, meta, 0, link),
        }
    }

    fn content(&mut self, size: u64, content: &mut dyn Read) -> io::Result<()> {
        let copied = io::copy(&mut content.take(size), &mut self.out)?;
        if copied != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("file shrank while it was archived: {copied} of {size} bytes"),
            ));
        }
        self.pad(size)
    }

    /// The writer, for bytes that are copied into the archive as they are.
    pub fn raw(&mut self) -> &mut W {
        &mut self.out
    }
}

fn raw_header(
    typeflag: u8,
    name: &[u8],
    prefix: &[u8],
    mode: u32,
    size: u64,
    link: &[u8],
    (uid, gid, mtime): (u64, u64, u64),
) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    h[..name.len()].copy_from_slice(name);
    octal(&mut h[100..108], u64::from(mode));
    octal(&mut h[108..116], uid);
    octal(&mut h[116..124], gid);
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
    let text = format!("{:06o}", sum);
    h[148..154].copy_from_slice(text.as_bytes());
    h[154] = 0;
    h[155] = b' ';
    h
}

impl<W: Write> CanonicalTar<W> {
    fn pad(&mut self, len: u64) -> io::Result<()> {
        let rem = (len % BLOCK as u64) as usize;
        if rem != 0 {
            self.out.write_all(&[0u8; BLOCK][..BLOCK - rem])?;
        }
        Ok(())
    }

    /// A directory; `path` without its trailing `/`.
    pub fn dir(&mut self, path: &[u8], mode: u32) -> io::Result<()> {
        let mut name = path.to_vec();
        name.push(b'/');
        self.header(Kind::Dir, &name, mode, 0, &[])
    }

    /// A regular file of exactly `size` bytes read from `content`.
    pub fn file(
        &mut self,
        path: &[u8],
        mode: u32,
        size: u64,
        content: &mut impl Read,
    ) -> io::Result<()> {
        self.header(Kind::File, path, mode, size, &[])?;
        self.content(size, content)
    }

    /// A regular file with the given bytes.
    pub fn file_bytes(&mut self, path: &[u8], mode: u32, content: &[u8]) -> io::Result<()> {
        self.file(path, mode, content.len() as u64, &mut &content[..])
    }

    /// A symbolic link to `target`, written as given.
    pub fn symlink(&mut self, path: &[u8], mode: u32, target: &[u8]) -> io::Result<()> {
        self.header(Kind::Symlink, path, mode, 0, target)
    }

    /// A hard link to the earlier entry `target`.
    pub fn hardlink(&mut self, path: &[u8], mode: u32, target: &[u8]) -> io::Result<()> {
        self.header(Kind::HardLink, path, mode, 0, target)
    }

    /// Writes the two zero blocks that end the archive and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[0u8; 2 * BLOCK])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(f: impl FnOnce(&mut CanonicalTar<Vec<u8>>) -> io::Result<()>) -> Vec<u8> {
        let mut t = CanonicalTar::new(Vec::new(), 1);
        f(&mut t).expect("write");
        t.finish().expect("finish")
    }

    #[test]
    fn header_fields_are_the_spec_values() {
        let a = archive(|t| t.file_bytes(b"hello.txt", 0o100644, b"hi\n"));
        assert_eq!(a.len(), 512 + 512 + 1024, "header, padded content, end");
        let h = &a[..512];
        assert_eq!(&h[..9], b"hello.txt");
        assert_eq!(
            &h[100..108],
            b"0000644\0",
            "permission bits only, zero-padded, NUL"
        );
        assert_eq!(&h[108..116], b"0000000\0");
        assert_eq!(&h[124..136], b"00000000003\0");
        assert_eq!(&h[136..148], b"00000000001\0");
        assert_eq!(h[156], b'0');
        assert_eq!(&h[257..265], b"ustar\x0000");
        assert!(h[265..329].iter().all(|&b| b == 0), "empty uname and gname");
        assert_eq!(&h[154..156], b"\0 ", "checksum: six digits, NUL, space");
        let sum: u32 = h
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u32::from(b)
                }
            })
            .sum();
        assert_eq!(&h[148..154], format!("{sum:06o}").as_bytes());
        assert!(
            a[1024..].iter().all(|&b| b == 0),
            "exactly two zero blocks at the end"
        );
    }

    #[test]
    fn long_names_use_prefix_then_pax() {
        let dir = "d".repeat(60);
        let mid = format!("{dir}/{}/{}", "e".repeat(60), "f".repeat(60));
        let a = archive(|t| t.file_bytes(mid.as_bytes(), 0o644, b""));
        assert_eq!(
            &a[345..345 + 121],
            format!("{dir}/{}", "e".repeat(60)).as_bytes(),
            "prefix"
        );
        assert_eq!(&a[..60], "f".repeat(60).as_bytes());
        let huge = "g".repeat(300);
        let a = archive(|t| t.file_bytes(huge.as_bytes(), 0o644, b"x"));
        assert_eq!(a[156], b'x', "a PAX header first");
        assert_eq!(&a[..14], b"././@PaxHeader");
        let mut ar = tar::Archive::new(&a[..]);
        let e = ar
            .entries()
            .expect("entries")
            .next()
            .expect("one entry")
            .expect("entry");
        assert_eq!(e.path_bytes().as_ref(), huge.as_bytes());
    }

    #[test]
    fn pax_record_length_counts_itself() {
        let r = pax_record("path", &[b'a'; 93]);
        assert_eq!(r.len(), 103);
        assert!(r.starts_with(b"103 path="));
        let r = pax_record("path", b"x");
        assert_eq!(r, b"9 path=x\n");
        let r = pax_record("path", &[b'a'; 2]);
        assert_eq!(r, b"11 path=aa\n", "the length's own digits push it to 11");
    }

    #[test]
    fn the_tar_crate_reads_every_entry_type_back() {
        let long_target = "t".repeat(150);
        let a = archive(|t| {
            t.dir(b"a", 0o755)?;
            t.file_bytes(b"a/f", 0o4755, b"content")?;
            t.hardlink(b"a/g", 0o4755, b"a/f")?;
            t.symlink(b"a/l", 0o777, long_target.as_bytes())
        });
        let mut ar = tar::Archive::new(&a[..]);
        let got: Vec<(String, tar::EntryType, u32, Option<String>)> = ar
            .entries()
            .expect("entries")
            .map(|e| {
                let e = e.expect("entry");
                (
                    String::from_utf8_lossy(&e.path_bytes()).into_owned(),
                    e.header().entry_type(),
                    e.header().mode().expect("mode"),
                    e.link_name_bytes()
                        .map(|l| String::from_utf8_lossy(&l).into_owned()),
                )
            })
            .collect();
        assert_eq!(
            got[0],
            ("a/".into(), tar::EntryType::Directory, 0o755, None)
        );
        assert_eq!(
            got[1],
            ("a/f".into(), tar::EntryType::Regular, 0o4755, None)
        );
        assert_eq!(
            got[2],
            (
                "a/g".into(),
                tar::EntryType::Link,
                0o4755,
                Some("a/f".into())
            )
        );
        assert_eq!(
            got[3],
            (
                "a/l".into(),
                tar::EntryType::Symlink,
                0o777,
                Some(long_target)
            )
        );
    }

    #[test]
    fn a_file_that_shrinks_while_archived_is_an_error() {
        let mut t = CanonicalTar::new(Vec::new(), 1);
        let err = t
            .file(b"f", 0o644, 10, &mut &b"short"[..])
            .expect_err("shrank");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
