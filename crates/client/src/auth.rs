//! Credentials as the containers tools and docker keep them: `auths` entries of
//! `$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
//! `~/.config/containers/auth.json` and `~/.docker/config.json`, first match wins.
//!
//! They are sent to the registry they are for, and to the token realm its
//! bearer challenge names only over HTTPS or on the registry's own host
//! ([`crate::registry`]): a realm on another host over plain HTTP gets a
//! token request without them.

use std::path::{Path, PathBuf};

use base64::Engine;
use serde_json::Value;

use crate::error::{Error, Result};

/// A user name and password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user.
    pub username: String,
    /// The password or token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Parses `USER:PASSWORD` (skopeo's `--creds`).
    pub fn parse(text: &str) -> Result<Credentials> {
        let (username, password) = text.split_once(':').ok_or_else(|| Error::Reference {
            reference: "--creds".into(),
            reason: "expected USER:PASSWORD".into(),
        })?;
        Ok(Credentials {
            username: username.to_string(),
            password: password.to_string(),
        })
    }
}

/// The auth files looked at, in order.
pub fn auth_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE") {
        files.push(PathBuf::from(p));
    }
    if let Some(p) = std::env::var_os("XDG_RUNTIME_DIR") {
        files.push(PathBuf::from(p).join("containers/auth.json"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        let home = PathBuf::from(home);
        files.push(home.join(".config/containers/auth.json"));
        files.push(home.join(".docker/config.json"));
    }
    files
}

/// Credentials for `host` from the auth files, if any has them.
pub fn lookup(host: &str) -> Result<Option<Credentials>> {
    for file in auth_files() {
        if let Some(c) = lookup_in(&file, host)? {
            return Ok(Some(c));
        }
    }
    Ok(None)
}

/// Credentials for `host` from one auth file (absent file: none).
pub fn lookup_in(file: &Path, host: &str) -> Result<Option<Credentials>> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::Io {
                path: file.to_path_buf(),
                source: e,
            });
        }
    };
    let bad = |reason: String| Error::Credentials {
        path: file.to_path_buf(),
        reason,
    };
    let value: Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let Some(auths) = value.get("auths").and_then(Value::as_object) else {
        return Ok(None);
    };
    let key = auths.iter().find(|(k, _)| {
        let k = k
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        k == host || k.split('/').next() == Some(host)
    });
    let Some((key, entry)) = key else {
        return Ok(None);
    };
    let Some(encoded) = entry.get("auth").and_then(Value::as_str) else {
        return Ok(None);
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| bad(format!("auths.{key}.auth is not base64: {e}")))?;
    let text =
        String::from_utf8(decoded).map_err(|_| bad(format!("auths.{key}.auth is not UTF-8")))?;
    Credentials::parse(&text)
        .map(Some)
        .map_err(|_| bad(format!("auths.{key}.auth is not USER:PASSWORD")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_auths_entries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("auth.json");
        let token = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
        std::fs::write(
            &file,
            format!(r#"{{"auths":{{"https://reg.example:5000":{{"auth":"{token}"}}}}}}"#),
        )
        .expect("write");
        let c = lookup_in(&file, "reg.example:5000")
            .expect("read")
            .expect("found");
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("alice", "s3cret")
        );
        assert!(lookup_in(&file, "other:5000").expect("read").is_none());
        assert!(
            lookup_in(&dir.path().join("absent"), "x")
                .expect("absent")
                .is_none()
        );
        std::fs::write(&file, r#"{"auths":{"h":{"auth":"!!"}}}"#).expect("write");
        let err = lookup_in(&file, "h").expect_err("bad base64");
        assert!(err.to_string().contains("auths.h.auth"), "{err}");
    }
}
