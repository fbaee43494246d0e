//! Authentication to a registry: credentials as the containers tools and
//! docker keep them (`auths` entries of `$REGISTRY_AUTH_FILE`,
//! `$XDG_RUNTIME_DIR/containers/auth.json`, `~/.config/containers/auth.json`
//! and `~/.docker/config.json`, first match wins), and the scheme the
//! registry's challenge asks for: Basic, or bearer tokens fetched per scope
//! from the challenge's realm.
//!
//! Credentials are sent to the registry they are for, and to the token realm
//! only over HTTPS or on the registry's own host: a realm on another host over
//! plain HTTP gets a token request without them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use reqwest::Method;
use reqwest::header::{self, HeaderMap};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::registry::{check, http_error, with_causes};

/// The scheme a registry's `WWW-Authenticate` challenge asks for.
#[derive(Clone, Debug)]
pub(crate) enum Challenge {
    /// No authentication.
    None,
    /// Basic, with the credentials on every request.
    Basic,
    /// Bearer tokens from `realm`.
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

impl Challenge {
    /// The challenge of a 401's headers (Basic when none is understood).
    pub(crate) fn parse(headers: &HeaderMap) -> Challenge {
        let Some(value) = headers
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
        else {
            return Challenge::Basic;
        };
        let (scheme, params) = value.split_once(' ').unwrap_or((value, ""));
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Challenge::Basic;
        }
        let mut realm = None;
        let mut service = None;
        for part in params.split(',') {
            let Some((k, v)) = part.trim().split_once('=') else {
                continue;
            };
            let v = v.trim_matches('"').to_string();
            match k.trim() {
                "realm" => realm = Some(v),
                "service" => service = Some(v),
                _ => {}
            }
        }
        match realm {
            Some(realm) => Challenge::Bearer { realm, service },
            None => Challenge::Basic,
        }
    }
}

/// One registry's authentication state: its credentials, the scheme it
/// asked for, and the bearer tokens fetched so far, by scope.
#[derive(Debug)]
pub(crate) struct Auth {
    host: String,
    credentials: Option<Credentials>,
    challenge: tokio::sync::RwLock<Challenge>,
    tokens: tokio::sync::Mutex<HashMap<String, String>>,
}

impl Auth {
    /// The state for `host` (`HOST[:PORT]`) after its `/v2/` answered with
    /// `challenge`.
    pub(crate) fn new(
        host: String,
        credentials: Option<Credentials>,
        challenge: Challenge,
    ) -> Auth {
        Auth {
            host,
            credentials,
            challenge: tokio::sync::RwLock::new(challenge),
            tokens: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The `Authorization` header for a request needing `scope`, if any.
    pub(crate) async fn authorization(&self, scope: &str) -> Option<String> {
        let challenge = self.challenge.read().await.clone();
        match challenge {
            Challenge::None => None,
            Challenge::Basic => self.credentials.as_ref().map(|c| {
                let token = base64::engine::general_purpose::STANDARD
                    .encode(format!("{}:{}", c.username, c.password));
                format!("Basic {token}")
            }),
            Challenge::Bearer { .. } => self
                .tokens
                .lock()
                .await
                .get(scope)
                .map(|t| format!("Bearer {t}")),
        }
    }

    /// Whether the registry's credentials may go to a token `realm`: only
    /// over HTTPS, or to the registry's own host. A challenge that names
    /// another host over plain HTTP gets no credentials, so that a registry
    /// (or whoever answers for it) cannot send them to a host of its choice
    /// in the clear.
    fn may_send_credentials(&self, realm: &str) -> bool {
        let own = reqwest::Url::parse(&format!("http://{}/", self.host))
            .ok()
            .and_then(|u| u.host_str().map(str::to_string));
        match reqwest::Url::parse(realm) {
            Ok(url) if url.scheme() == "https" => true,
            Ok(url) => url.host_str().is_some() && url.host_str() == own.as_deref(),
            Err(_) => false,
        }
    }

    /// Answers a 401: remembers the scheme and, for bearer, fetches a token
    /// for `scope` with `client`.
    pub(crate) async fn authenticate(
        &self,
        client: &reqwest::Client,
        headers: &HeaderMap,
        scope: &str,
    ) -> Result<()> {
        let challenge = Challenge::parse(headers);
        *self.challenge.write().await = challenge.clone();
        let Challenge::Bearer { realm, service } = challenge else {
            return Ok(());
        };
        let mut req = client.get(&realm).query(&[("scope", scope)]);
        if let Some(s) = &service {
            req = req.query(&[("service", s.as_str())]);
        }
        if let Some(c) = &self.credentials {
            if self.may_send_credentials(&realm) {
                req = req.basic_auth(&c.username, Some(&c.password));
            } else {
                tracing::warn!(
                    %realm,
                    "the token realm is on another host over plain HTTP: asking for a token without the credentials of {}",
                    self.host
                );
            }
        }
        let get = Method::GET;
        let resp = req
            .send()
            .await
            .map_err(|e| http_error(&get, &realm, with_causes(&e)))?;
        let resp = check(resp, &get, &realm).await?;
        let text = resp
            .bytes()
            .await
            .map_err(|e| http_error(&get, &realm, with_causes(&e)))?;
        let body: Value = serde_json::from_slice(&text).map_err(|e| http_error(&get, &realm, e))?;
        let token = body
            .get("token")
            .or_else(|| body.get("access_token"))
            .and_then(Value::as_str)
            .ok_or_else(|| http_error(&get, &realm, "no token in the answer"))?;
        self.tokens
            .lock()
            .await
            .insert(scope.to_string(), token.to_string());
        Ok(())
    }
}

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
    fn challenges() {
        use reqwest::header::HeaderValue;
        let mut h = HeaderMap::new();
        h.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(
                r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a:pull""#,
            ),
        );
        match Challenge::parse(&h) {
            Challenge::Bearer { realm, service } => {
                assert_eq!(realm, "https://auth.example/token");
                assert_eq!(service.as_deref(), Some("registry.example"));
            }
            other => panic!("{other:?}"),
        }
        h.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Basic realm="x""#),
        );
        assert!(matches!(Challenge::parse(&h), Challenge::Basic));
        assert!(matches!(
            Challenge::parse(&HeaderMap::new()),
            Challenge::Basic
        ));
    }

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
