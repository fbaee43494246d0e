//! One registry, spoken to over the distribution API: the `/v2/` ping, Basic and
//! bearer-token authentication from the registry's challenge, retries with
//! backoff on 5xx, 429 and broken connections, manifests by reference, and blobs
//! (HEAD, streamed GET, cross-repository mount, monolithic or chunked upload that
//! resumes from the registry's `Range` after an interruption).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use oci_blocks_core::Digest;
use oci_blocks_core::names::MAX_MANIFEST_SIZE;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, Response, StatusCode};
use tokio::io::AsyncReadExt;

use crate::auth::{Auth, Challenge, Credentials};
use crate::error::{Error, Result};

/// How to reach a registry.
#[derive(Clone, Debug)]
pub struct RegistryOptions {
    /// Verify TLS certificates; when off, plain HTTP is tried after HTTPS fails
    /// (skopeo's `--tls-verify=false`).
    pub tls_verify: bool,
    /// Credentials (else the auth files are consulted).
    pub credentials: Option<Credentials>,
    /// A directory of `*.crt` CA certificates to trust (skopeo's `--cert-dir`).
    pub cert_dir: Option<PathBuf>,
    /// Blobs larger than this are uploaded in chunks of this size.
    pub chunk_size: u64,
    /// Attempts per request on transient failures.
    pub retries: u32,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            tls_verify: true,
            credentials: None,
            cert_dir: None,
            chunk_size: 8 * 1024 * 1024,
            retries: 4,
        }
    }
}

/// A connected registry.
#[derive(Debug)]
pub struct Registry {
    client: reqwest::Client,
    base: String,
    host: String,
    options: RegistryOptions,
    auth: Auth,
    /// Body bytes sent (uploads, manifests).
    pub bytes_sent: AtomicU64,
    /// Body bytes received (blobs, manifests).
    pub bytes_received: AtomicU64,
}

/// Access a request needs, for bearer-token scopes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Reads.
    Pull,
    /// Reads and writes.
    Push,
}

fn scope(repository: &str, access: Access) -> String {
    match access {
        Access::Pull => format!("repository:{repository}:pull"),
        Access::Push => format!("repository:{repository}:pull,push"),
    }
}

pub(crate) fn http_error(method: &Method, url: &str, e: impl std::fmt::Display) -> Error {
    Error::Http {
        method: method.to_string(),
        url: url.to_string(),
        message: e.to_string(),
    }
}

/// A transport error with the causes below it, which reqwest keeps out of
/// its message: "error sending request: client error (Connect): tcp connect
/// error: Connection refused (os error 111)".
pub(crate) fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// [`with_causes`], with a hint when HTTPS reached a plain-HTTP server.
fn transport_error(method: &Method, url: &str, e: &reqwest::Error) -> Error {
    let mut message = with_causes(e);
    let lower = message.to_ascii_lowercase();
    if url.starts_with("https://")
        && (lower.contains("invalidcontenttype")
            || lower.contains("corrupt message")
            || lower.contains("wrong version number"))
    {
        message.push_str(
            " (HTTPS to a plain-HTTP registry? --tls-verify=false also allows plain HTTP)",
        );
    }
    http_error(method, url, message)
}

/// Fails with the registry's error body unless the status is a success.
pub(crate) async fn check(resp: Response, method: &Method, url: &str) -> Result<Response> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status().as_u16();
    let mut body = resp.text().await.unwrap_or_default();
    body.truncate(600);
    Err(Error::Status {
        method: method.to_string(),
        url: url.to_string(),
        status,
        body,
    })
}

impl Registry {
    /// Connects to `host` (`HOST[:PORT]`): pings `/v2/` over HTTPS, or over HTTP
    /// when TLS verification is off and HTTPS fails, and learns the auth scheme.
    pub async fn connect(host: &str, options: RegistryOptions) -> Result<Registry> {
        let mut builder = reqwest::Client::builder()
            .danger_accept_invalid_certs(!options.tls_verify)
            .pool_max_idle_per_host(32)
            .connect_timeout(Duration::from_secs(30))
            // A stalled transfer fails (and is retried) instead of hanging.
            .read_timeout(Duration::from_secs(60))
            .user_agent(concat!("oci-blocks/", env!("CARGO_PKG_VERSION")));
        if let Some(dir) = &options.cert_dir {
            for cert in read_certs(dir)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder
            .build()
            .map_err(|e| http_error(&Method::GET, host, e))?;
        let credentials = match &options.credentials {
            Some(c) => Some(c.clone()),
            None => crate::auth::lookup(host)?,
        };
        let own_host = host.to_string();
        let schemes: &[&str] = if options.tls_verify {
            &["https"]
        } else {
            &["https", "http"]
        };
        let mut last = None;
        for scheme in schemes {
            let url = format!("{scheme}://{host}/v2/");
            match client.get(&url).send().await {
                Ok(resp) => {
                    let challenge = match resp.status() {
                        StatusCode::UNAUTHORIZED => Challenge::parse(resp.headers()),
                        s if s.is_success() => Challenge::None,
                        _ => {
                            check(resp, &Method::GET, &url).await?;
                            Challenge::None
                        }
                    };
                    return Ok(Registry {
                        client,
                        base: format!("{scheme}://{host}"),
                        host: host.to_string(),
                        options,
                        auth: Auth::new(own_host, credentials, challenge),
                        bytes_sent: AtomicU64::new(0),
                        bytes_received: AtomicU64::new(0),
                    });
                }
                Err(e) => last = Some(transport_error(&Method::GET, &url, &e)),
            }
        }
        Err(last.unwrap_or_else(|| http_error(&Method::GET, host, "no scheme to try")))
    }

    /// `HOST[:PORT]`.
    pub fn host(&self) -> &str {
        &self.host
    }

    fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        }
    }

    /// Sends a request, answering one auth challenge and retrying transient
    /// failures with exponential backoff. The body is cloned per attempt.
    async fn send(
        &self,
        method: Method,
        path: &str,
        scope: &str,
        headers: &[(header::HeaderName, String)],
        body: Option<bytes::Bytes>,
    ) -> Result<Response> {
        self.send_with(method, path, scope, headers, body, self.options.retries)
            .await
    }

    /// [`Registry::send`] with its own number of attempts (1: no retry, for
    /// requests whose URL a failure may have made stale).
    async fn send_with(
        &self,
        method: Method,
        path: &str,
        scope: &str,
        headers: &[(header::HeaderName, String)],
        body: Option<bytes::Bytes>,
        retries: u32,
    ) -> Result<Response> {
        let url = self.url(path);
        let mut attempt = 0;
        let mut authenticated = false;
        loop {
            let mut req = self.client.request(method.clone(), &url);
            for (k, v) in headers {
                req = req.header(k, v);
            }
            if let Some(b) = &body {
                req = req.body(b.clone());
            }
            if let Some(auth) = self.auth.authorization(scope).await {
                req = req.header(header::AUTHORIZATION, auth);
            }
            let transient = match req.send().await {
                Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED && !authenticated => {
                    authenticated = true;
                    self.auth
                        .authenticate(&self.client, resp.headers(), scope)
                        .await?;
                    continue;
                }
                Ok(resp)
                    if resp.status().is_server_error()
                        || resp.status() == StatusCode::TOO_MANY_REQUESTS =>
                {
                    if attempt + 1 >= retries {
                        return Ok(resp);
                    }
                    format!("status {}", resp.status())
                }
                Ok(resp) => {
                    if let Some(b) = &body {
                        self.bytes_sent.fetch_add(b.len() as u64, Ordering::Relaxed);
                    }
                    return Ok(resp);
                }
                Err(e) => {
                    if attempt + 1 >= retries || e.is_builder() {
                        return Err(transport_error(&method, &url, &e));
                    }
                    with_causes(&e)
                }
            };
            attempt += 1;
            let wait = Duration::from_millis(200 * 4u64.pow(attempt - 1));
            tracing::warn!(%method, %url, attempt, reason = %transient, "retrying in {wait:?}");
            tokio::time::sleep(wait).await;
        }
    }

    /// Fetches a manifest: its bytes, media type and digest (verified when the
    /// reference is a digest).
    pub async fn get_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<(Vec<u8>, String, Digest)> {
        let path = format!("/v2/{repository}/manifests/{reference}");
        let accept = [
            oci_blocks_core::names::OCI_MANIFEST,
            oci_blocks_core::names::OCI_INDEX,
            oci_blocks_core::names::DOCKER_MANIFEST,
            oci_blocks_core::names::DOCKER_MANIFEST_LIST,
        ]
        .join(", ");
        let resp = self
            .send(
                Method::GET,
                &path,
                &scope(repository, Access::Pull),
                &[(header::ACCEPT, accept)],
                None,
            )
            .await?;
        let resp = check(resp, &Method::GET, &self.url(&path)).await?;
        let media_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let bytes = self
            .read_document(resp, &path, &format!("manifest {repository}:{reference}"))
            .await?;
        self.bytes_received
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        let digest = match Digest::parse(reference) {
            Ok(expected) => {
                let mut h = oci_blocks_core::digest::Hasher::new(expected.algorithm());
                h.update(&bytes);
                let found = h.finish();
                if found != expected {
                    return Err(Error::Mismatch {
                        what: format!("manifest {repository}@{reference}"),
                        expected: expected.to_string(),
                        found: found.to_string(),
                    });
                }
                expected
            }
            Err(_) => Digest::sha256(&bytes),
        };
        Ok((bytes, media_type, digest))
    }

    /// Reads a manifest-sized body: a document larger than any component
    /// accepts is refused before it is read (by its Content-Length) or as
    /// soon as it passes the bound.
    async fn read_document(&self, mut resp: Response, path: &str, what: &str) -> Result<Vec<u8>> {
        let too_large = |reason: String| Error::Limit {
            what: what.to_string(),
            reason,
            limit: format!("{MAX_MANIFEST_SIZE} bytes for a manifest or index"),
        };
        if let Some(declared) = resp.content_length().filter(|l| *l > MAX_MANIFEST_SIZE) {
            return Err(too_large(format!(
                "the registry announces {declared} bytes"
            )));
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| http_error(&Method::GET, path, e))?
        {
            if (bytes.len() + chunk.len()) as u64 > MAX_MANIFEST_SIZE {
                return Err(too_large(format!(
                    "the registry sent more than {MAX_MANIFEST_SIZE} bytes"
                )));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    }

    /// The referrers of `subject` with `artifact_type`, as the descriptors of
    /// the index the referrers API answers; `None` when the registry does
    /// not offer the API (a 404), so the caller uses the tag schema.
    pub async fn referrers(
        &self,
        repository: &str,
        subject: &Digest,
        artifact_type: &str,
    ) -> Result<Option<Vec<serde_json::Value>>> {
        let path = format!("/v2/{repository}/referrers/{subject}?artifactType={artifact_type}");
        let resp = self
            .send(
                Method::GET,
                &path,
                &scope(repository, Access::Pull),
                &[(
                    header::ACCEPT,
                    oci_blocks_core::names::OCI_INDEX.to_string(),
                )],
                None,
            )
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let resp = check(resp, &Method::GET, &self.url(&path)).await?;
        let bytes = self
            .read_document(resp, &path, &format!("referrers of {repository}@{subject}"))
            .await?;
        self.bytes_received
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        let index: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| Error::Document {
                what: format!("referrers of {repository}@{subject}"),
                reason: format!("not JSON: {e}"),
            })?;
        Ok(Some(
            index
                .get("manifests")
                .and_then(serde_json::Value::as_array)
                .cloned()
                .unwrap_or_default()
                .into_iter()
                // A registry that ignores the filter still answers correctly.
                .filter(|d| d.get("artifactType").and_then(|t| t.as_str()) == Some(artifact_type))
                .collect(),
        ))
    }

    /// Pushes a manifest's exact bytes under a tag or its digest. Returns the
    /// `OCI-Subject` header of the answer: a registry that sets it indexes
    /// the manifest's subject for the referrers API.
    pub async fn put_manifest(
        &self,
        repository: &str,
        reference: &str,
        bytes: &[u8],
        media_type: &str,
    ) -> Result<Option<String>> {
        let path = format!("/v2/{repository}/manifests/{reference}");
        let resp = self
            .send(
                Method::PUT,
                &path,
                &scope(repository, Access::Push),
                &[(header::CONTENT_TYPE, media_type.to_string())],
                Some(bytes::Bytes::copy_from_slice(bytes)),
            )
            .await?;
        let resp = check(resp, &Method::PUT, &self.url(&path)).await?;
        Ok(resp
            .headers()
            .get("oci-subject")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string))
    }

    /// Whether the repository has the blob.
    pub async fn has_blob(&self, repository: &str, digest: &Digest) -> Result<bool> {
        let path = format!("/v2/{repository}/blobs/{digest}");
        let resp = self
            .send(
                Method::HEAD,
                &path,
                &scope(repository, Access::Pull),
                &[],
                None,
            )
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => check(resp, &Method::HEAD, &self.url(&path))
                .await
                .map(|_| false),
        }
    }

    /// Streams a blob (the caller verifies it).
    pub async fn get_blob(&self, repository: &str, digest: &Digest) -> Result<Response> {
        let path = format!("/v2/{repository}/blobs/{digest}");
        let resp = self
            .send(
                Method::GET,
                &path,
                &scope(repository, Access::Pull),
                &[],
                None,
            )
            .await?;
        check(resp, &Method::GET, &self.url(&path)).await
    }

    /// Links a blob from another repository of this registry; whether it worked
    /// (else an upload is needed; the session the registry opened is cancelled).
    pub async fn mount(&self, repository: &str, digest: &Digest, from: &str) -> Result<bool> {
        let path = format!("/v2/{repository}/blobs/uploads/?mount={digest}&from={from}");
        let scope_text = format!("{} repository:{from}:pull", scope(repository, Access::Push));
        let resp = self
            .send(
                Method::POST,
                &path,
                &scope_text,
                &[],
                Some(bytes::Bytes::new()),
            )
            .await?;
        match resp.status() {
            StatusCode::CREATED => Ok(true),
            StatusCode::ACCEPTED => {
                if let Some(location) = location(&resp) {
                    let _ = self
                        .send(
                            Method::DELETE,
                            &location,
                            &scope(repository, Access::Push),
                            &[],
                            None,
                        )
                        .await;
                }
                Ok(false)
            }
            _ => check(resp, &Method::POST, &self.url(&path))
                .await
                .map(|_| false),
        }
    }

    /// Uploads a file as the blob `digest`: in one PUT when it is small, else in
    /// chunks; after an interrupted chunk the upload goes on from the offset the
    /// registry reports.
    pub async fn upload_file(
        &self,
        repository: &str,
        digest: &Digest,
        file: &Path,
        size: u64,
    ) -> Result<()> {
        let push = scope(repository, Access::Push);
        let start = format!("/v2/{repository}/blobs/uploads/");
        let resp = self
            .send(Method::POST, &start, &push, &[], Some(bytes::Bytes::new()))
            .await?;
        let resp = check(resp, &Method::POST, &self.url(&start)).await?;
        let mut location =
            location(&resp).ok_or_else(|| http_error(&Method::POST, &start, "no Location"))?;
        let mut f = tokio::fs::File::open(file).await.map_err(|e| Error::Io {
            path: file.to_path_buf(),
            source: e,
        })?;
        if size <= self.options.chunk_size {
            let body = read_chunk(&mut f, file, size).await?;
            let url = with_digest(&location, digest);
            let resp = self
                .send(
                    Method::PUT,
                    &url,
                    &push,
                    &[
                        (header::CONTENT_TYPE, "application/octet-stream".into()),
                        (header::CONTENT_LENGTH, size.to_string()),
                    ],
                    Some(body),
                )
                .await?;
            check(resp, &Method::PUT, &self.url(&url)).await?;
            return Ok(());
        }
        // Chunks go one attempt at a time. After a failure the registry is asked
        // how much it has (and for a fresh Location: distribution's carries
        // state), and the upload goes on from there; when it cannot say (a
        // session distribution cancelled), a new session starts from zero.
        let mut offset = 0u64;
        let mut failures = 0u32;
        loop {
            if offset >= size {
                let url = with_digest(&location, digest);
                let resp = self
                    .send(
                        Method::PUT,
                        &url,
                        &push,
                        &[(header::CONTENT_LENGTH, "0".into())],
                        Some(bytes::Bytes::new()),
                    )
                    .await?;
                check(resp, &Method::PUT, &self.url(&url)).await?;
                return Ok(());
            }
            let len = self.options.chunk_size.min(size - offset);
            use tokio::io::AsyncSeekExt;
            f.seek(std::io::SeekFrom::Start(offset))
                .await
                .map_err(|e| Error::Io {
                    path: file.to_path_buf(),
                    source: e,
                })?;
            let body = read_chunk(&mut f, file, len).await?;
            let range = format!("{offset}-{}", offset + len - 1);
            let sent = self
                .send_with(
                    Method::PATCH,
                    &location,
                    &push,
                    &[
                        (header::CONTENT_TYPE, "application/octet-stream".into()),
                        (header::CONTENT_RANGE, range),
                        (header::CONTENT_LENGTH, len.to_string()),
                    ],
                    Some(body),
                    1,
                )
                .await;
            let failure = match sent {
                Ok(resp) if resp.status().is_success() => {
                    if let Some(l) = location_of(resp.headers()) {
                        location = l;
                    }
                    offset += len;
                    continue;
                }
                Ok(resp) => {
                    let status = resp.status();
                    check(resp, &Method::PATCH, &self.url(&location))
                        .await
                        .err()
                        .unwrap_or_else(|| http_error(&Method::PATCH, &location, status))
                }
                Err(e) => e,
            };
            failures += 1;
            if failures > self.options.retries {
                return Err(failure);
            }
            tracing::warn!(url = %self.url(&location), error = %failure, "chunk failed; asking the registry where the upload stands");
            tokio::time::sleep(Duration::from_millis(200 * u64::from(failures))).await;
            match self.upload_status(&location, &push).await {
                Ok((at, l)) => {
                    offset = at;
                    location = l.unwrap_or(location);
                }
                Err(_) => {
                    let resp = self
                        .send(Method::POST, &start, &push, &[], Some(bytes::Bytes::new()))
                        .await?;
                    let resp = check(resp, &Method::POST, &self.url(&start)).await?;
                    location = location_of(resp.headers())
                        .ok_or_else(|| http_error(&Method::POST, &start, "no Location"))?;
                    offset = 0;
                }
            }
        }
    }

    /// How many bytes the registry holds of an upload, and the Location to go
    /// on with (if it gave one).
    async fn upload_status(&self, location: &str, scope: &str) -> Result<(u64, Option<String>)> {
        let resp = self.send(Method::GET, location, scope, &[], None).await?;
        let resp = check(resp, &Method::GET, &self.url(location)).await?;
        let next = location_of(resp.headers());
        let range = resp
            .headers()
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("0-0");
        let end: u64 = range
            .rsplit('-')
            .next()
            .and_then(|e| e.parse().ok())
            .unwrap_or(0);
        // "0-0" is both "nothing" and "one byte"; re-sending one byte is cheap.
        Ok((if end == 0 { 0 } else { end + 1 }, next))
    }
}

async fn read_chunk(f: &mut tokio::fs::File, path: &Path, len: u64) -> Result<bytes::Bytes> {
    let mut buf = vec![0u8; len as usize];
    f.read_exact(&mut buf).await.map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    Ok(bytes::Bytes::from(buf))
}

fn location_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::LOCATION)
        .and_then(|v: &HeaderValue| v.to_str().ok())
        .map(str::to_string)
}

fn location(resp: &Response) -> Option<String> {
    location_of(resp.headers())
}

fn with_digest(location: &str, digest: &Digest) -> String {
    let sep = if location.contains('?') { '&' } else { '?' };
    format!("{location}{sep}digest={digest}")
}

fn read_certs(dir: &Path) -> Result<Vec<reqwest::Certificate>> {
    let mut certs = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| Error::Io {
        path: dir.to_path_buf(),
        source: e,
    })?;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "crt") {
            let pem = std::fs::read(&path).map_err(|e| Error::Io {
                path: path.clone(),
                source: e,
            })?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| Error::Credentials {
                path: path.clone(),
                reason: format!("not a PEM certificate: {e}"),
            })?;
            certs.push(cert);
        }
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_locations_take_the_digest() {
        assert_eq!(
            with_digest("/v2/a/blobs/uploads/u?_state=x", &Digest::sha256(b"")),
            format!(
                "/v2/a/blobs/uploads/u?_state=x&digest={}",
                Digest::sha256(b"")
            )
        );
    }
}
