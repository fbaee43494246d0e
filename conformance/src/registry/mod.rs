//! Registry conformance: the OCI distribution API as pushers and pullers of
//! blocks images use it, and the registry requirements of the blocks extension
//! (`spec/blocks.md`, "Registry requirements"; `spec/fallback.md`).
//!
//! [`run`] runs every test in a fixed order against one registry and returns one
//! [`TestResult`] per test. A test never aborts the run: what goes wrong becomes
//! its `Failed` outcome, with a reason that names the request, the expected and
//! the actual status, code, header or bytes. Each run is independent of earlier
//! ones against the same registry: its repositories are
//! `{namespace}/{run-id}-{letter}` and every blob it pushes names the run id, so
//! that every digest is new and a "missing" blob really is missing.
//!
//! The two garbage-collection tests share one run of the collector, done after
//! every other test.

mod blocks;
mod check;
mod content;
mod delete;
mod discovery;
mod http;
mod pull;
mod push;

use std::collections::HashSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use sha2::{Digest as _, Sha256};

use crate::report::{Outcome, TestResult};
use check::{Check, Stop, fail, setup, status};
use content::{Content, Fixtures, Image};
use http::{Client, ClientSettings, MANIFEST_ACCEPT, Method, Reply, Request};

/// Where the registry is and how to reach it.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The registry's base URL, e.g. `http://127.0.0.1:5000` (https also).
    pub url: String,
    /// Repositories are created under it, e.g. `conformance`.
    pub namespace: String,
    /// User for Basic authentication and token requests.
    pub username: Option<String>,
    /// Password for Basic authentication and token requests.
    pub password: Option<String>,
    /// The registry's garbage collector, run with `sh -c`; must exit 0.
    pub gc_command: Option<String>,
    /// Skip TLS certificate verification.
    pub insecure: bool,
    /// A PEM file of CA certificates for https; when given, the registry's
    /// certificate must chain to one of them (the built-in roots are not used).
    pub ca_file: Option<std::path::PathBuf>,
}

/// How a test runs.
#[derive(Clone, Copy)]
enum Body {
    /// On its own.
    Plain(fn(&mut Ctx<'_>) -> Check),
    /// The first of the two tests that share the garbage-collection run.
    GcSurvive,
    /// The second one, judged from the same run.
    GcAnchor,
}

/// One test of the list.
struct Test {
    id: &'static str,
    description: &'static str,
    body: Body,
}

const fn plain(
    id: &'static str,
    description: &'static str,
    body: fn(&mut Ctx<'_>) -> Check,
) -> Test {
    Test {
        id,
        description,
        body: Body::Plain(body),
    }
}

/// Every test, in the order they run.
const TESTS: &[Test] = &[
    plain(
        "pull/api-version",
        "GET /v2/ answers 200 (after authentication).",
        pull::api_version,
    ),
    plain(
        "pull/blob",
        "A pushed blob GETs back byte for byte, with a matching Docker-Content-Digest if any.",
        pull::blob,
    ),
    plain(
        "pull/blob-head",
        "HEAD of a blob answers 200 with Content-Length equal to its size.",
        pull::blob_head,
    ),
    plain(
        "pull/blob-unknown",
        "GET of a blob that was never pushed answers 404 (BLOB_UNKNOWN if there is an error body).",
        pull::blob_unknown,
    ),
    plain(
        "pull/manifest-by-tag",
        "GET of a manifest by tag serves its exact bytes, media type and digest.",
        pull::manifest_by_tag,
    ),
    plain(
        "pull/manifest-by-digest",
        "GET of a manifest by digest serves its exact bytes, media type and digest.",
        pull::manifest_by_digest,
    ),
    plain(
        "pull/manifest-head",
        "HEAD of a manifest by tag answers 200 with the right Docker-Content-Digest and Content-Length.",
        pull::manifest_head,
    ),
    plain(
        "pull/manifest-unknown",
        "GET of an unknown tag answers 404 with MANIFEST_UNKNOWN.",
        pull::manifest_unknown,
    ),
    plain(
        "push/monolithic",
        "POST then PUT ?digest= with the body answers 201 with a Location, and the blob is readable.",
        push::monolithic,
    ),
    plain(
        "push/monolithic-single-post",
        "POST ?digest= with the body answers 201 (a 202 session, which the spec allows, is a skip).",
        push::monolithic_single_post,
    ),
    plain(
        "push/chunked",
        "Three PATCHes with Content-Range, a GET of the session and a PUT ?digest= store the blob.",
        push::chunked,
    ),
    plain(
        "push/chunked-out-of-order",
        "A PATCH whose Content-Range does not start at the current end answers 416.",
        push::chunked_out_of_order,
    ),
    plain(
        "push/streamed",
        "A PATCH with a chunked body (no Content-Length or Content-Range) then PUT store the blob.",
        push::streamed,
    ),
    plain(
        "push/digest-mismatch",
        "PUT ?digest= with a digest other than the content's answers 400 DIGEST_INVALID and stores nothing.",
        push::digest_mismatch,
    ),
    plain(
        "push/cancel",
        "DELETE of an upload session answers 204, and the session then answers 404.",
        push::cancel,
    ),
    plain(
        "push/cross-mount",
        "POST ?mount=&from= of a blob the source has answers 201, and the blob is readable in the target.",
        push::cross_mount,
    ),
    plain(
        "push/cross-mount-unknown",
        "A mount of a blob the source lacks answers 202 with an upload session.",
        push::cross_mount_unknown,
    ),
    plain(
        "push/manifest",
        "PUT of an image manifest by tag answers 201 with a Location and its Docker-Content-Digest.",
        push::manifest,
    ),
    plain(
        "push/manifest-by-digest",
        "PUT of an image manifest by its digest answers 201.",
        push::manifest_by_digest,
    ),
    plain(
        "push/index",
        "An image index of two manifests is accepted and served byte for byte.",
        push::index,
    ),
    plain(
        "push/manifest-blob-unknown",
        "A manifest whose layer was never pushed is refused with a 4xx MANIFEST_BLOB_UNKNOWN.",
        push::manifest_blob_unknown,
    ),
    plain(
        "discovery/tags-list",
        "tags/list lists the five pushed tags in lexical order.",
        discovery::tags_list,
    ),
    plain(
        "discovery/tags-pagination",
        "tags/list?n=2 pages with Link rel=\"next\" through all tags once, and last= starts after it.",
        discovery::tags_pagination,
    ),
    plain(
        "discovery/referrers",
        "The referrers API lists an artifact pushed with a subject, with its artifactType, digest and size.",
        discovery::referrers,
    ),
    plain(
        "discovery/referrers-filter",
        "With OCI-Filters-Applied: artifactType, ?artifactType= lists only referrers of that type.",
        discovery::referrers_filter,
    ),
    plain(
        "delete/manifest",
        "DELETE of a manifest by digest answers 202, and it then answers 404.",
        delete::manifest,
    ),
    plain(
        "delete/tag",
        "DELETE of a tag answers 202; the tag is gone and other tags of the manifest remain.",
        delete::tag,
    ),
    plain(
        "delete/blob",
        "DELETE of a blob answers 202, and it then answers 404.",
        delete::blob,
    ),
    plain(
        "blocks/manifest-accepted",
        "A blocks manifest in unusual formatting is accepted by tag and served byte for byte by tag and digest.",
        blocks::manifest_accepted,
    ),
    plain(
        "blocks/blocks-served",
        "Every block of the blocks manifest GETs back byte for byte from its repository.",
        blocks::blocks_served,
    ),
    plain(
        "blocks/missing-block-refused",
        "A blocks manifest whose block was never pushed is refused with a 4xx MANIFEST_BLOB_UNKNOWN and not served.",
        blocks::missing_block_refused,
    ),
    plain(
        "blocks/fallback-index-accepted",
        "The legacy manifest, anchor, blocks manifest and fallback index are accepted and the index served byte for byte.",
        blocks::fallback_index_accepted,
    ),
    plain(
        "blocks/stripped-manifest-refused",
        "A blocks manifest without its blocks field (blocks config media type, an import layer) is refused with a 4xx MANIFEST_INVALID and not served.",
        blocks::stripped_manifest_refused,
    ),
    plain(
        "blocks/unbound-index-refused",
        "A fallback index whose blocks manifest names another legacy manifest than the one it offers is refused with a 4xx MANIFEST_INVALID (SHOULD).",
        blocks::unbound_index_refused,
    ),
    Test {
        id: "blocks/survive-gc",
        description: "After garbage collection, the blocks, config and layers of a tagged bare blocks manifest are all still served.",
        body: Body::GcSurvive,
    },
    Test {
        id: "blocks/anchor-keeps-blocks",
        description: "After garbage collection, the blocks of a tagged fallback index (referenced only by its anchor and blocks manifest) are all still served.",
        body: Body::GcAnchor,
    },
];

/// Runs every registry test, in a fixed order, and returns one result per test.
/// Errors only for problems that stop the whole run (the registry does not
/// answer /v2/ at all).
pub fn run(options: &Options) -> Result<Vec<TestResult>> {
    let client = Client::new(&ClientSettings {
        url: &options.url,
        username: options.username.as_deref(),
        password: options.password.as_deref(),
        insecure: options.insecure,
        ca_file: options.ca_file.as_deref(),
    })?;
    let mut ctx = Ctx::new(options, client, &run_id());
    ctx.client
        .get("/v2/")
        .with_context(|| format!("the registry at {} does not answer GET /v2/", options.url))?;
    let mut results = Vec::with_capacity(TESTS.len());
    let mut anchor: Option<(Check, Duration)> = None;
    for test in TESTS {
        let started = Instant::now();
        let (check, duration) = match test.body {
            Body::Plain(body) => {
                let check = guarded(|| body(&mut ctx));
                (check, started.elapsed())
            }
            Body::GcSurvive => {
                let gc = guarded(|| Ok(blocks::collect(&mut ctx)));
                match gc {
                    Ok(gc) => {
                        anchor = Some((gc.anchor, gc.anchor_time));
                        (gc.survive, started.elapsed().saturating_sub(gc.anchor_time))
                    }
                    Err(stop) => {
                        let reason = stop.text().to_string();
                        anchor = Some((Err(fail(reason)), Duration::ZERO));
                        (Err(stop), started.elapsed())
                    }
                }
            }
            Body::GcAnchor => anchor.take().unwrap_or_else(|| {
                (
                    Err(fail("the garbage-collection run did not take place")),
                    Duration::ZERO,
                )
            }),
        };
        results.push(TestResult {
            id: test.id.to_string(),
            description: test.description.to_string(),
            outcome: outcome(check),
            duration,
        });
    }
    Ok(results)
}

/// Runs a test body, turning a panic into a failure.
fn guarded<T>(body: impl FnOnce() -> Check<T>) -> Check<T> {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(check) => check,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(fail(format!("the test panicked: {message}")))
        }
    }
}

fn outcome(check: Check) -> Outcome {
    match check {
        Ok(()) => Outcome::Passed,
        Err(Stop::Fail { reason, diff }) => Outcome::Failed { reason, diff },
        Err(Stop::Skip(why)) => Outcome::Skipped { why },
    }
}

/// A short hex id, new for every run: sha256 of the time and the process id.
fn run_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let digest = Sha256::digest(format!("{nanos}-{}", std::process::id()));
    hex::encode(&digest[..6])
}

/// What the tests share: the client, the run's content, and what setup has
/// already been done.
pub(crate) struct Ctx<'a> {
    options: &'a Options,
    client: Client,
    run_id: String,
    fixtures: Fixtures,
    /// Blobs already pushed, as (repository, digest).
    pushed: HashSet<(String, String)>,
    /// The image the pull tests read, once pushed.
    pull_image: Option<Image>,
    /// The tags of the discovery tests, once pushed.
    tags: Option<Vec<String>>,
    /// The referrers fixture, once pushed.
    referrers: Option<discovery::ReferrersFixture>,
}

impl<'a> Ctx<'a> {
    fn new(options: &'a Options, client: Client, run_id: &str) -> Ctx<'a> {
        Ctx {
            options,
            client,
            run_id: run_id.to_string(),
            fixtures: Fixtures::new(run_id),
            pushed: HashSet::new(),
            pull_image: None,
            tags: None,
            referrers: None,
        }
    }

    /// The repository `{namespace}/{run-id}-{suffix}`.
    fn repo(&self, suffix: &str) -> String {
        let namespace = self.options.namespace.trim_matches('/');
        if namespace.is_empty() {
            format!("{}-{suffix}", self.run_id)
        } else {
            format!("{namespace}/{}-{suffix}", self.run_id)
        }
    }

    /// Sends a request.
    fn send(&mut self, request: &Request<'_>) -> Check<Reply> {
        Ok(self.client.send(request)?)
    }

    /// Starts an upload session: POST, 202 with a Location; the resolved URL.
    fn start_upload(&mut self, repo: &str) -> Check<String> {
        let reply = self.send(&Request::new(
            Method::POST,
            format!("/v2/{repo}/blobs/uploads/"),
        ))?;
        status(&reply, &[202])?;
        self.client
            .location(&reply)
            .ok_or_else(|| fail(format!("{}: 202 without a Location header", reply.what())))
    }

    /// Pushes a blob the simplest way, POST then PUT ?digest= with the body,
    /// unless this run already did; a failure is a setup failure.
    fn push_blob(&mut self, repo: &str, blob: &Content) -> Check {
        let key = (repo.to_string(), blob.digest.clone());
        if self.pushed.contains(&key) {
            return Ok(());
        }
        setup((|| {
            let location = self.start_upload(repo)?;
            let reply = self.send(
                &Request::new(Method::PUT, location)
                    .query("digest", &blob.digest)
                    .header("content-type", "application/octet-stream")
                    .body(&blob.bytes),
            )?;
            status(&reply, &[201])
        })())?;
        self.pushed.insert(key);
        Ok(())
    }

    /// Pushes several blobs.
    fn push_blobs(&mut self, repo: &str, blobs: &[&Content]) -> Check {
        for blob in blobs {
            self.push_blob(repo, blob)?;
        }
        Ok(())
    }

    /// PUTs a manifest (with its media type as Content-Type) and returns the reply.
    fn put_manifest(&mut self, repo: &str, reference: &str, manifest: &Content) -> Check<Reply> {
        self.send(
            &Request::new(Method::PUT, format!("/v2/{repo}/manifests/{reference}"))
                .header("content-type", &manifest.media_type)
                .body(&manifest.bytes),
        )
    }

    /// PUTs a manifest for setup: 201 expected.
    fn push_manifest(&mut self, repo: &str, reference: &str, manifest: &Content) -> Check {
        setup((|| {
            let reply = self.put_manifest(repo, reference, manifest)?;
            status(&reply, &[201])
        })())
    }

    /// Pushes an image's blobs and its manifest under `reference`.
    fn push_image(&mut self, repo: &str, reference: &str, image: &Image) -> Check {
        self.push_blobs(repo, &image.blobs())?;
        self.push_manifest(repo, reference, &image.manifest)
    }

    /// GETs (or HEADs) a manifest, accepting every manifest type.
    fn fetch_manifest(&mut self, method: Method, repo: &str, reference: &str) -> Check<Reply> {
        self.send(
            &Request::new(method, format!("/v2/{repo}/manifests/{reference}"))
                .header("accept", MANIFEST_ACCEPT),
        )
    }

    /// GETs a blob.
    fn get_blob(&mut self, repo: &str, digest: &str) -> Check<Reply> {
        self.send(&Request::new(
            Method::GET,
            format!("/v2/{repo}/blobs/{digest}"),
        ))
    }

    /// Deletes an upload session, ignoring the answer (tidying up).
    fn discard_upload(&mut self, location: &str) {
        let _ = self
            .client
            .send(&Request::new(Method::DELETE, location.to_string()));
    }
}
