//! Image references as skopeo writes them: `oci:DIR[:TAG]` and
//! `docker://HOST[:PORT]/REPO[:TAG|@DIGEST]`.

use std::fmt;

use oci_blocks_core::Digest;
use oci_blocks_core::layout::OciRef;

use crate::error::{Error, Result};

/// Where an image is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageRef {
    /// An OCI image layout.
    Layout(OciRef),
    /// A repository in a registry.
    Registry(RegistryRef),
}

/// `HOST[:PORT]/REPO[:TAG|@DIGEST]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryRef {
    /// `HOST[:PORT]`.
    pub host: String,
    /// The repository name.
    pub repository: String,
    /// The tag, if given.
    pub tag: Option<String>,
    /// The digest, if given (it wins over the tag).
    pub digest: Option<Digest>,
}

impl RegistryRef {
    /// What to put after `/manifests/`: the digest, else the tag, else `latest`.
    pub fn reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".into(),
        }
    }
}

impl ImageRef {
    /// Parses a reference.
    pub fn parse(text: &str) -> Result<ImageRef> {
        let invalid = |reason: &str| Error::Reference {
            reference: text.to_string(),
            reason: reason.to_string(),
        };
        if text.starts_with("oci:") {
            return Ok(ImageRef::Layout(OciRef::parse(text)?));
        }
        let Some(rest) = text.strip_prefix("docker://") else {
            return Err(invalid(
                "expected oci:DIR[:TAG] or docker://HOST[:PORT]/REPO[:TAG|@DIGEST]",
            ));
        };
        let (host, path) = rest
            .split_once('/')
            .ok_or_else(|| invalid("no repository after the host"))?;
        if host.is_empty() {
            return Err(invalid("empty host"));
        }
        let (path, digest) = match path.split_once('@') {
            Some((p, d)) => (p, Some(Digest::parse(d)?)),
            None => (path, None),
        };
        let (repository, tag) = match path.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r, Some(t.to_string())),
            _ => (path, None),
        };
        if !oci_blocks_core::repository::valid_name(repository) {
            return Err(invalid(&format!(
                "repository {repository:?} is not a valid name: lowercase letters and digits, with one '.', one or two '_' or any '-' between them, and '/' between components"
            )));
        }
        if let Some(t) = tag
            .as_deref()
            .filter(|t| !oci_blocks_core::repository::valid_tag(t))
        {
            return Err(invalid(&format!(
                "tag {t:?} is not valid (up to 128 letters, digits, '_', '.', '-', not starting with '.' or '-')"
            )));
        }
        Ok(ImageRef::Registry(RegistryRef {
            host: host.to_string(),
            repository: repository.to_string(),
            tag,
            digest,
        }))
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Layout(r) => write!(f, "{r}"),
            ImageRef::Registry(r) => {
                write!(f, "docker://{}/{}", r.host, r.repository)?;
                if let Some(t) = &r.tag {
                    write!(f, ":{t}")?;
                }
                if let Some(d) = &r.digest {
                    write!(f, "@{d}")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_kinds() {
        let d = "sha256:".to_string() + &"a".repeat(64);
        let r = ImageRef::parse(&format!("docker://127.0.0.1:5000/a/b:v1@{d}")).expect("ref");
        let ImageRef::Registry(r) = r else {
            panic!("registry")
        };
        assert_eq!(r.host, "127.0.0.1:5000");
        assert_eq!(r.repository, "a/b");
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.reference(), d);
        let ImageRef::Registry(r) = ImageRef::parse("docker://h/x").expect("ref") else {
            panic!("registry")
        };
        assert_eq!(r.reference(), "latest");
        assert!(matches!(
            ImageRef::parse("oci:/tmp/x:v1"),
            Ok(ImageRef::Layout(_))
        ));
        for bad in [
            "docker://host",
            "docker:///x",
            "docker://h/UPPER",
            "docker://h/x:bad/tag",
            "docker://h/x@sha256:short",
            "registry/x",
            // The registry's grammar: these were accepted by the client.
            "docker://h/a..b",
            "docker://h/a___b",
            "docker://h/a/-b",
            "docker://h/x:.tag",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad}");
        }
    }
}
