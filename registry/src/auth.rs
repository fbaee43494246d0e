//! Basic authentication against an htpasswd file of bcrypt hashes, the format
//! `htpasswd -B` writes and distribution reads.
//!
//! Clients send credentials with every request, and a bcrypt check costs tens of
//! milliseconds by design, so a successful check is remembered (as a SHA-256 of the
//! user, the password and the stored hash) for the life of the process.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;

use base64::Engine;
use sha2::{Digest as _, Sha256};

use crate::error::{Error, IoContext, Result};

/// The realm named in `WWW-Authenticate`.
pub const REALM: &str = "oci-blocks-registry";

/// Users and the rule for reads.
#[derive(Debug)]
pub struct Auth {
    users: HashMap<String, String>,
    verified: Mutex<HashSet<[u8; 32]>>,
    /// Whether reads need credentials too.
    pub auth_pull: bool,
}

/// What a request's `Authorization` header amounts to.
#[derive(Debug, PartialEq, Eq)]
pub enum Credentials {
    /// No header, or an empty user (anonymous).
    Anonymous,
    /// A known user with the right password.
    Valid(String),
    /// Anything else.
    Invalid,
}

impl Auth {
    /// Reads an htpasswd file: `user:$2y$…` lines; `#` comments and blank lines
    /// are skipped. Hashes other than bcrypt are refused, naming the line.
    pub fn load(path: &Path, auth_pull: bool) -> Result<Auth> {
        let text = std::fs::read_to_string(path).at(path)?;
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |message: String| Error::Htpasswd {
                path: path.to_path_buf(),
                line: i + 1,
                message,
            };
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| bad("expected USER:HASH".into()))?;
            if user.is_empty() {
                return Err(bad("empty user name".into()));
            }
            if !["$2y$", "$2b$", "$2a$"].iter().any(|p| hash.starts_with(p)) {
                return Err(bad(format!(
                    "user {user:?}: only bcrypt hashes are supported (htpasswd -B)"
                )));
            }
            users.insert(user.to_string(), hash.to_string());
        }
        if users.is_empty() {
            return Err(Error::Htpasswd {
                path: path.to_path_buf(),
                line: 0,
                message: "no users".into(),
            });
        }
        Ok(Auth {
            users,
            verified: Mutex::new(HashSet::new()),
            auth_pull,
        })
    }

    /// Checks an `Authorization` header value.
    pub fn check(&self, header: Option<&str>) -> Credentials {
        let Some(header) = header else {
            return Credentials::Anonymous;
        };
        let Some(encoded) = header
            .strip_prefix("Basic ")
            .or_else(|| header.strip_prefix("basic "))
        else {
            return Credentials::Invalid;
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
            return Credentials::Invalid;
        };
        let Ok(text) = String::from_utf8(decoded) else {
            return Credentials::Invalid;
        };
        let Some((user, password)) = text.split_once(':') else {
            return Credentials::Invalid;
        };
        if user.is_empty() {
            return Credentials::Anonymous;
        }
        let Some(hash) = self.users.get(user) else {
            return Credentials::Invalid;
        };
        let key: [u8; 32] = Sha256::new()
            .chain_update(user)
            .chain_update([0])
            .chain_update(password)
            .chain_update([0])
            .chain_update(hash)
            .finalize()
            .into();
        let cached = self.verified.lock().is_ok_and(|v| v.contains(&key));
        if cached {
            return Credentials::Valid(user.to_string());
        }
        if bcrypt::verify(password, hash).unwrap_or(false) {
            if let Ok(mut v) = self.verified.lock() {
                v.insert(key);
            }
            Credentials::Valid(user.to_string())
        } else {
            Credentials::Invalid
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, password: &str) -> String {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {token}")
    }

    #[test]
    fn checks_bcrypt_passwords() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("htpasswd");
        let hash = bcrypt::hash("s3cret", 4).expect("hash");
        std::fs::write(&path, format!("# users\nalice:{hash}\n")).expect("write");
        let auth = Auth::load(&path, false).expect("load");
        assert_eq!(
            auth.check(Some(&basic("alice", "s3cret"))),
            Credentials::Valid("alice".into())
        );
        // Twice: the second answer comes from the cache and must agree.
        assert_eq!(
            auth.check(Some(&basic("alice", "s3cret"))),
            Credentials::Valid("alice".into())
        );
        assert_eq!(
            auth.check(Some(&basic("alice", "wrong"))),
            Credentials::Invalid
        );
        assert_eq!(
            auth.check(Some(&basic("bob", "s3cret"))),
            Credentials::Invalid
        );
        assert_eq!(auth.check(Some("Bearer abc")), Credentials::Invalid);
        assert_eq!(auth.check(Some("Basic !!!")), Credentials::Invalid);
        assert_eq!(auth.check(Some(&basic("", ""))), Credentials::Anonymous);
        assert_eq!(auth.check(None), Credentials::Anonymous);
    }

    #[test]
    fn refuses_other_hashes_naming_the_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("htpasswd");
        std::fs::write(&path, "alice:{SHA}abc\n").expect("write");
        let err = Auth::load(&path, false).expect_err("sha1");
        assert!(err.to_string().contains("line 1"), "{err}");
        assert!(err.to_string().contains("bcrypt"), "{err}");
    }
}
