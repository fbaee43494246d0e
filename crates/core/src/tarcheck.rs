//! Tar checks beyond what the `tar` crate makes, shared by every reader in the
//! project so that the validator and the unpacker see the same archive.
//!
//! Two archives can look different to two readers without any reader
//! failing: a PAX `size` record that contradicts the ustar header's size
//! (readers that ignore PAX then find other entries), and data after the
//! end-of-archive marker (readers that skip zero blocks then find entries the
//! others never saw). Both are refused as `layer.tar-malformed`, and so is a
//! PAX global header with records other than `comment`: some readers apply
//! global records (`path`, `uid`, `mtime`) to every later entry and others
//! ignore them.

use std::io::{self, Read};

/// Fails when the entry's PAX `size` record contradicts a non-zero size in
/// its ustar header. A header size of 0 is what writers put there when the
/// real size only fits in PAX, so it is accepted.
pub fn check_entry_size<R: Read>(entry: &tar::Entry<'_, R>) -> io::Result<()> {
    let effective = entry.size();
    let header = entry.header().size().unwrap_or(0);
    if header != 0 && header != effective {
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "entry {name}: the PAX size {effective} contradicts the header's size {header}"
            ),
        ));
    }
    Ok(())
}

/// Every per-entry check: [`check_entry_size`], and a PAX global header (`g`)
/// may carry only `comment` records (`git archive` writes one).
pub fn check_entry<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<()> {
    check_entry_size(entry)?;
    if entry.header().entry_type() != tar::EntryType::XGlobalHeader {
        return Ok(());
    }
    let Some(records) = entry.pax_extensions()? else {
        return Ok(());
    };
    for record in records {
        let record = record?;
        let key = record.key().unwrap_or("(not UTF-8)");
        if key != "comment" {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "a PAX global header with a {key:?} record: readers disagree on whether it applies to later entries"
                ),
            ));
        }
    }
    Ok(())
}

/// Reads what follows the end-of-archive marker and fails unless it is all
/// zero bytes (the marker's second block and record padding).
pub fn check_end(mut rest: impl Read) -> io::Result<()> {
    let mut buf = [0u8; 8192];
    let mut offset = 0u64;
    loop {
        let n = match rest.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if let Some(i) = buf[..n].iter().position(|&b| b != 0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "data after the end-of-archive marker ({} bytes past it)",
                    offset + i as u64
                ),
            ));
        }
        offset += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(pax_size: Option<&str>, header_size: u64, content: &[u8]) -> io::Result<Vec<u8>> {
        let mut b = tar::Builder::new(Vec::new());
        if let Some(s) = pax_size {
            b.append_pax_extensions([("size", s.as_bytes())])?;
        }
        let mut h = tar::Header::new_ustar();
        h.set_path("f")?;
        h.set_size(header_size);
        h.set_cksum();
        b.append(&h, content)?;
        b.into_inner()
    }

    fn check(bytes: &[u8]) -> io::Result<()> {
        let mut a = tar::Archive::new(bytes);
        for e in a.entries()? {
            check_entry(&mut e?)?;
        }
        check_end(a.into_inner())
    }

    #[test]
    fn agreeing_sizes_and_a_clean_end_pass() -> io::Result<()> {
        check(&archive(None, 3, b"abc")?)?;
        check(&archive(Some("3"), 3, b"abc")?)?;
        // A header size of 0 beside a PAX size is how writers store sizes ustar cannot hold.
        check(&archive(Some("3"), 0, b"abc")?)
    }

    #[test]
    fn a_pax_size_contradicting_the_header_is_refused() -> io::Result<()> {
        let e = check(&archive(Some("2"), 3, b"abc")?).err();
        assert!(e.is_some_and(|e| e.to_string().contains("PAX size 2")));
        Ok(())
    }

    #[test]
    fn a_global_header_may_carry_only_a_comment() -> io::Result<()> {
        for (key, ok) in [("comment", true), ("path", false), ("mtime", false)] {
            let mut b = tar::Builder::new(Vec::new());
            let record = format!("{} {key}=x\n", key.len() + 6);
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::XGlobalHeader);
            h.set_path("pax_global_header")?;
            h.set_size(record.len() as u64);
            h.set_cksum();
            b.append(&h, record.as_bytes())?;
            let mut f = tar::Header::new_ustar();
            f.set_path("f")?;
            f.set_size(0);
            f.set_cksum();
            b.append(&f, &[][..])?;
            let e = check(&b.into_inner()?).err();
            assert_eq!(e.is_none(), ok, "{key}: {e:?}");
        }
        Ok(())
    }

    #[test]
    fn bytes_after_the_end_marker_are_refused() -> io::Result<()> {
        let mut bytes = archive(None, 3, b"abc")?;
        bytes.extend_from_slice(b"hidden entry");
        let e = check(&bytes).err();
        assert!(e.is_some_and(|e| e.to_string().contains("after the end-of-archive")));
        let mut zeros = archive(None, 3, b"abc")?;
        zeros.extend_from_slice(&[0; 4096]);
        check(&zeros)
    }
}
