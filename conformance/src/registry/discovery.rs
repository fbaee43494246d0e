//! `discovery/*`: tag listing with pagination, and the referrers API.

use serde_json::Value;

use super::Ctx;
use super::check::{Check, Stop, fail, media_type, skip, status};
use super::content::{Content, OCI_INDEX, Referrer};
use super::http::{Method, Reply, Request};

/// The repository of the tag tests.
const TAGS_REPO: &str = "d";
/// The repository of the referrers tests.
const REFERRERS_REPO: &str = "e";
/// The tags pushed, in push order (not lexical order). All lowercase, so that
/// the two orders the spec allows, case-insensitive and "ASCIIbetical", agree.
const TAGS: [&str; 5] = ["v2", "v10", "alpha", "beta", "v1"];
/// The page size of the pagination test.
const PAGE: usize = 2;
/// Artifact types of the two referrers.
const SBOM_TYPE: &str = "application/vnd.oci-blocks.conformance.sbom.v1+json";
const SIGNATURE_TYPE: &str = "application/vnd.oci-blocks.conformance.signature.v1+json";

/// The subject and its first referrer, pushed.
#[derive(Clone, Debug)]
pub struct ReferrersFixture {
    subject: Content,
    sbom: Referrer,
}

impl Ctx<'_> {
    /// The five tags of one manifest, pushed on first use; sorted.
    fn tagged(&mut self) -> Check<(String, Vec<String>)> {
        let repo = self.repo(TAGS_REPO);
        if let Some(tags) = &self.tags {
            return Ok((repo, tags.clone()));
        }
        let image = self.fixtures.image("discovery/tags")?;
        for tag in TAGS {
            self.push_image(&repo, tag, &image)?;
        }
        let mut sorted: Vec<String> = TAGS.iter().map(|t| t.to_string()).collect();
        sorted.sort();
        self.tags = Some(sorted.clone());
        Ok((repo, sorted))
    }

    /// A subject manifest and an SBOM-typed referrer of it, pushed on first use.
    fn referred(&mut self) -> Check<(String, ReferrersFixture)> {
        let repo = self.repo(REFERRERS_REPO);
        if let Some(fixture) = &self.referrers {
            return Ok((repo, fixture.clone()));
        }
        let image = self.fixtures.image("discovery/referrers subject")?;
        self.push_image(&repo, "subject", &image)?;
        let sbom = self.push_referrer(&repo, "sbom", SBOM_TYPE, &image.manifest)?;
        let fixture = ReferrersFixture {
            subject: image.manifest,
            sbom,
        };
        self.referrers = Some(fixture.clone());
        Ok((repo, fixture))
    }

    /// Pushes a referrer of `subject` by digest (its config and layer first).
    fn push_referrer(
        &mut self,
        repo: &str,
        label: &str,
        artifact_type: &str,
        subject: &Content,
    ) -> Check<Referrer> {
        let referrer = self.fixtures.referrer(
            &format!("discovery/referrers {label}"),
            artifact_type,
            subject,
        );
        let empty = self.fixtures.empty();
        self.push_blobs(repo, &[&empty, &referrer.layer])?;
        self.push_manifest(repo, &referrer.manifest.digest, &referrer.manifest)?;
        Ok(referrer)
    }
}

/// The `tags` array of a tags/list answer.
fn tags_of(reply: &Reply) -> Check<Vec<String>> {
    let value: Value = serde_json::from_slice(&reply.body)
        .map_err(|e| fail(format!("{}: the body is not JSON: {e}", reply.what())))?;
    let tags = value
        .get("tags")
        .and_then(Value::as_array)
        .ok_or_else(|| fail(format!("{}: the body has no `tags` array", reply.what())))?;
    Ok(tags
        .iter()
        .map(|t| t.as_str().unwrap_or_default().to_string())
        .collect())
}

/// The target of a `Link: <...>; rel="next"` header.
fn next_link(reply: &Reply) -> Option<String> {
    reply
        .headers
        .get_all("link")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find(|link| link.contains("rel=\"next\"") || link.contains("rel=next"))
        .and_then(|link| {
            let start = link.find('<')?;
            let end = link[start..].find('>')? + start;
            Some(link[start + 1..end].to_string())
        })
}

/// `discovery/tags-list`.
pub fn tags_list(ctx: &mut Ctx<'_>) -> Check {
    let (repo, sorted) = ctx.tagged()?;
    let reply = ctx.send(&Request::new(Method::GET, format!("/v2/{repo}/tags/list")))?;
    status(&reply, &[200])?;
    let tags = tags_of(&reply)?;
    if tags != sorted {
        return Err(fail(format!(
            "{}: expected the tags {sorted:?} in lexical order, got {tags:?}",
            reply.what()
        )));
    }
    Ok(())
}

/// One page of tags/list: `expected` is what may follow; the page must be a
/// non-empty prefix of it, of [`PAGE`] tags, or fewer only with a `Link` or at
/// the end of the list (the spec's rule for `n`).
fn check_page(reply: &Reply, page: &[String], expected: &[String]) -> Check {
    let full = expected.len().min(PAGE);
    let prefix = page.len() <= PAGE && expected.starts_with(page);
    let short_ok = page.len() == full || next_link(reply).is_some();
    if prefix && !page.is_empty() && short_ok {
        return Ok(());
    }
    Err(fail(format!(
        "{}: expected the next {full} tags {:?} (fewer only with a Link header), got {page:?}{}",
        reply.what(),
        &expected[..full],
        if next_link(reply).is_some() {
            " and a Link"
        } else {
            " and no Link"
        }
    )))
}

/// Where the page after `reply` is: its `Link` rel="next", or, since the spec
/// makes the header optional, `?n=&last=` after a full page; `None` at the end.
fn next_page(
    ctx: &Ctx<'_>,
    reply: &Reply,
    page: &[String],
    path: &str,
) -> Option<Request<'static>> {
    if let Some(link) = next_link(reply) {
        return Some(Request::new(Method::GET, ctx.client.resolve(&link)));
    }
    let last = page.last().filter(|_| page.len() == PAGE)?;
    Some(
        Request::new(Method::GET, path.to_string())
            .query("n", PAGE.to_string())
            .query("last", last.clone()),
    )
}

/// `discovery/tags-pagination`.
pub fn tags_pagination(ctx: &mut Ctx<'_>) -> Check {
    let (repo, sorted) = ctx.tagged()?;
    let path = format!("/v2/{repo}/tags/list");
    let first = ctx.send(&Request::new(Method::GET, path.clone()).query("n", PAGE.to_string()))?;
    status(&first, &[200])?;
    let mut all = tags_of(&first)?;
    check_page(&first, &all, &sorted)?;
    let mut next = next_page(ctx, &first, &all, &path);
    // One more request than pages, to see the end of the list.
    for _ in 0..=sorted.len() {
        let Some(request) = next.take() else {
            break;
        };
        let reply = ctx.send(&request)?;
        status(&reply, &[200])?;
        let page = tags_of(&reply)?;
        let rest = sorted.get(all.len()..).unwrap_or_default();
        if rest.is_empty() && page.is_empty() {
            break;
        }
        check_page(&reply, &page, rest)?;
        next = next_page(ctx, &reply, &page, &path);
        all.extend(page);
    }
    if all != sorted {
        return Err(fail(format!(
            "GET {path}?n={PAGE} and the pages after it: expected {sorted:?} once each in order, got {all:?}"
        )));
    }
    let reply = ctx.send(
        &Request::new(Method::GET, path)
            .query("n", PAGE.to_string())
            .query("last", &sorted[1]),
    )?;
    status(&reply, &[200])?;
    let page = tags_of(&reply)?;
    check_page(&reply, &page, &sorted[2..])
}

/// GET of the referrers of `subject`, optionally filtered; a 404 is the
/// failure "referrers API not supported".
fn list_referrers(
    ctx: &mut Ctx<'_>,
    repo: &str,
    subject: &Content,
    filter: Option<&str>,
) -> Check<(Reply, Vec<Value>)> {
    let mut request = Request::new(
        Method::GET,
        format!("/v2/{repo}/referrers/{}", subject.digest),
    );
    if let Some(t) = filter {
        request = request.query("artifactType", t);
    }
    let reply = ctx.send(&request)?;
    if reply.status == 404 {
        return Err(fail(format!(
            "referrers API not supported: {} answered {}",
            reply.what(),
            reply.summary()
        )));
    }
    status(&reply, &[200])?;
    media_type(&reply, OCI_INDEX)?;
    let value: Value = serde_json::from_slice(&reply.body)
        .map_err(|e| fail(format!("{}: the body is not JSON: {e}", reply.what())))?;
    let manifests = value
        .get("manifests")
        .and_then(Value::as_array)
        .cloned()
        .ok_or_else(|| {
            fail(format!(
                "{}: the index has no `manifests` array",
                reply.what()
            ))
        })?;
    Ok((reply, manifests))
}

/// The listed descriptor of `referrer`, if any, checked against it.
fn find_referrer(reply: &Reply, listed: &[Value], referrer: &Referrer) -> Check<bool> {
    let Some(entry) = listed
        .iter()
        .find(|d| d.get("digest").and_then(Value::as_str) == Some(&referrer.manifest.digest))
    else {
        return Ok(false);
    };
    let artifact_type = entry.get("artifactType").and_then(Value::as_str);
    if artifact_type != Some(&referrer.artifact_type) {
        return Err(fail(format!(
            "{}: the entry of {} has artifactType {artifact_type:?}, expected {:?}",
            reply.what(),
            referrer.manifest.digest,
            referrer.artifact_type
        )));
    }
    let size = entry.get("size").and_then(Value::as_u64);
    if size != Some(referrer.manifest.size()) {
        return Err(fail(format!(
            "{}: the entry of {} has size {size:?}, expected {}",
            reply.what(),
            referrer.manifest.digest,
            referrer.manifest.size()
        )));
    }
    Ok(true)
}

/// `discovery/referrers`.
pub fn referrers(ctx: &mut Ctx<'_>) -> Check {
    let (repo, fixture) = ctx.referred()?;
    let (reply, listed) = list_referrers(ctx, &repo, &fixture.subject, None)?;
    if !find_referrer(&reply, &listed, &fixture.sbom)? {
        return Err(fail(format!(
            "{}: the referrer {} is not listed (got {} entries)",
            reply.what(),
            fixture.sbom.manifest.digest,
            listed.len()
        )));
    }
    Ok(())
}

/// `discovery/referrers-filter`.
pub fn referrers_filter(ctx: &mut Ctx<'_>) -> Check {
    let (repo, fixture) = ctx.referred()?;
    let signature = ctx.push_referrer(&repo, "signature", SIGNATURE_TYPE, &fixture.subject)?;
    let (reply, listed) = match list_referrers(ctx, &repo, &fixture.subject, Some(SBOM_TYPE)) {
        Ok(found) => found,
        Err(Stop::Fail { reason, .. }) if reason.starts_with("referrers API not supported") => {
            return Err(skip(format!(
                "{reason}; discovery/referrers reports the missing API"
            )));
        }
        Err(stop) => return Err(stop),
    };
    let applied = reply
        .header("oci-filters-applied")
        .is_some_and(|v| v.split(',').any(|f| f.trim() == "artifactType"));
    if !applied {
        return Err(skip(
            "filtering not applied (no OCI-Filters-Applied: artifactType); the spec lets clients filter",
        ));
    }
    if !find_referrer(&reply, &listed, &fixture.sbom)? {
        return Err(fail(format!(
            "{}: the referrer {} of the requested type is not listed",
            reply.what(),
            fixture.sbom.manifest.digest
        )));
    }
    let others: Vec<String> = listed
        .iter()
        .filter(|d| d.get("artifactType").and_then(Value::as_str) != Some(SBOM_TYPE))
        .map(|d| {
            d.get("digest")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string()
        })
        .collect();
    if !others.is_empty() {
        let note = if others.contains(&signature.manifest.digest) {
            format!(" (including the {SIGNATURE_TYPE} referrer)")
        } else {
            String::new()
        };
        return Err(fail(format!(
            "{}: OCI-Filters-Applied says artifactType, but entries of other types are listed: {}{note}",
            reply.what(),
            others.join(", ")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ureq::http::HeaderMap;

    fn reply(link: Option<&str>) -> Reply {
        let mut headers = HeaderMap::new();
        if let Some(link) = link
            && let Ok(value) = link.parse()
        {
            headers.insert("link", value);
        }
        Reply {
            method: Method::GET,
            target: "/v2/r/tags/list?n=2".into(),
            status: 200,
            headers,
            body: Vec::new(),
        }
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn pages_follow_the_spec_rule_for_n() {
        let all = strings(&["a", "b", "c"]);
        let link = Some("</v2/r/tags/list?n=2&last=a>; rel=\"next\"");
        assert!(check_page(&reply(None), &strings(&["a", "b"]), &all).is_ok());
        assert!(check_page(&reply(link), &strings(&["a"]), &all).is_ok());
        assert!(check_page(&reply(None), &strings(&["a"]), &all).is_err());
        assert!(check_page(&reply(None), &strings(&["b", "a"]), &all).is_err());
        assert!(check_page(&reply(None), &all, &all).is_err());
        assert!(check_page(&reply(None), &strings(&["c"]), &all[2..]).is_ok());
        assert_eq!(
            next_link(&reply(link)).as_deref(),
            Some("/v2/r/tags/list?n=2&last=a")
        );
    }
}
