//! `http(s)://`: any server that answers Range requests. Listing works when
//! the base URL is an S3-style bucket endpoint that answers ListObjectsV2.

use std::ops::Range;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use http::{StatusCode, header};

use super::wire::{self, WEAK_PREFIX, header_str, strip_etag};
use super::{ListPage, ObjectMeta, Origin, OriginError, check_length};

/// Reads objects from an HTTP(S) server.
pub struct HttpOrigin {
    client: reqwest::Client,
    base: String,
}

/// Addresses a namespace's HTTP origin never connects to, whatever its host
/// name resolves to: the machine itself, link-local ones (cloud metadata
/// services answer there), and the control plane's. The mesh admin who wants
/// a namespace to reach such an address names the IP in the namespace's
/// allowed prefix; IP literals are not resolved, so they are not filtered.
pub struct TenantResolver {
    /// The control plane's host, resolved at each lookup (its address may move).
    control_plane_host: Option<String>,
}

impl TenantResolver {
    /// A resolver that also keeps away from `control_plane_host`'s addresses.
    pub fn new(control_plane_host: Option<String>) -> Self {
        Self { control_plane_host }
    }
}

impl reqwest::dns::Resolve for TenantResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        let control_plane = self.control_plane_host.clone();
        Box::pin(async move {
            let found: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut denied: Vec<std::net::IpAddr> = Vec::new();
            if let Some(control_plane) = control_plane
                && let Ok(addresses) = tokio::net::lookup_host((control_plane.as_str(), 0)).await
            {
                denied.extend(addresses.map(|a| a.ip()));
            }
            let allowed: Vec<std::net::SocketAddr> = found
                .iter()
                .filter(|a| {
                    !ferry_config::off_limits_to_tenants(a.ip()) && !denied.contains(&a.ip())
                })
                .copied()
                .collect();
            if allowed.is_empty() {
                return Err(format!(
                    "{host} resolves only to addresses a namespace's origin may not reach \
                     ({found:?}: loopback, link-local or the control plane's)"
                )
                .into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

impl HttpOrigin {
    /// An origin for `base` (a key is appended to it); `timeout` bounds each
    /// request; `tenant`, for a namespace's data set, keeps its connections
    /// off the addresses it must not reach.
    pub fn new(
        base: &str,
        timeout: Duration,
        tenant: Option<TenantResolver>,
    ) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true);
        if let Some(resolver) = tenant {
            builder = builder.dns_resolver(std::sync::Arc::new(resolver));
        }
        let client = builder.build()?;
        let mut base = base.to_owned();
        if !base.ends_with('/') {
            base.push('/');
        }
        Ok(Self { client, base })
    }

    fn url_of(&self, key: &str) -> String {
        let mut url = String::with_capacity(self.base.len() + key.len() + 8);
        url.push_str(&self.base);
        wire::push_key(&mut url, key);
        url
    }

    fn unavailable(&self, detail: impl std::fmt::Display) -> OriginError {
        OriginError::unavailable(&self.base, detail)
    }

    /// A failed request, with its causes: reqwest's own message ("error
    /// sending request") says nothing of why.
    fn failed(&self, err: &reqwest::Error) -> OriginError {
        let mut detail = err.to_string();
        let mut cause = std::error::Error::source(err);
        while let Some(inner) = cause {
            detail.push_str(": ");
            detail.push_str(&inner.to_string());
            cause = inner.source();
        }
        self.unavailable(detail)
    }

    fn status_error(&self, key: &str, status: StatusCode) -> OriginError {
        wire::definite_error(&self.base, key, status)
            .unwrap_or_else(|| self.unavailable(format!("HTTP {status} for '{key}'")))
    }

    async fn head_inner(&self, key: &str) -> Result<ObjectMeta, OriginError> {
        let response = self
            .client
            .head(self.url_of(key))
            .send()
            .await
            .map_err(|e| self.failed(&e))?;
        if !response.status().is_success() {
            return Err(self.status_error(key, response.status()));
        }
        wire::meta_from_head(key, response.headers()).map_err(|e| self.unavailable(e))
    }

    async fn read_inner(
        &self,
        key: &str,
        range: Range<u64>,
        etag: &str,
    ) -> Result<Bytes, OriginError> {
        let want = usize::try_from(range.end - range.start)
            .map_err(|_| self.unavailable("range too large"))?;
        let mut request = self
            .client
            .get(self.url_of(key))
            .header(header::RANGE, wire::range_header(&range));
        if !etag.starts_with(WEAK_PREFIX) {
            request = request.header(header::IF_MATCH, format!("\"{etag}\""));
        }
        let span = tracing::Span::current();
        if !span.is_disabled() {
            // The origin fetch span's context, for an origin that traces too.
            let mut headers = http::HeaderMap::new();
            crate::telemetry::traces::inject(&span, &mut headers);
            request = request.headers(headers);
        }
        let mut response = request.send().await.map_err(|e| self.failed(&e))?;
        match response.status() {
            StatusCode::PARTIAL_CONTENT => {
                if !wire::content_range_starts_at(response.headers(), range.start) {
                    return Err(self.unavailable(format!(
                        "answered a different range than {} of '{key}'",
                        wire::range_header(&range)
                    )));
                }
            }
            // A whole-object answer is right only when the whole object was asked for.
            StatusCode::OK if range.start == 0 && response.content_length() == Some(range.end) => {}
            StatusCode::OK => {
                return Err(self.unavailable(format!(
                    "ignored the Range header for '{key}'; Ferry needs an origin with Range support"
                )));
            }
            status => return Err(self.status_error(key, status)),
        }
        if let Some(tag) = header_str(response.headers(), header::ETAG)
            && !etag.starts_with(WEAK_PREFIX)
            && strip_etag(tag) != etag
        {
            return Err(OriginError::Changed {
                key: key.to_owned(),
            });
        }
        let mut buf = BytesMut::with_capacity(want);
        while let Some(piece) = response.chunk().await.map_err(|e| self.failed(&e))? {
            if buf.len() + piece.len() > want {
                return Err(self.unavailable(format!("sent more bytes than asked for '{key}'")));
            }
            buf.extend_from_slice(&piece);
        }
        check_length(&self.base, key, &range, buf.len())?;
        Ok(buf.freeze())
    }

    async fn list_inner(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        max: usize,
    ) -> Result<ListPage, OriginError> {
        let fetch = |query: String| async move {
            let response = self
                .client
                .get(format!("{}?{query}", self.base))
                .send()
                .await
                .map_err(|e| self.failed(&e))?;
            if !response.status().is_success() {
                return Err(OriginError::Unsupported {
                    origin: self.base.clone(),
                    what: "listing (it did not answer an S3 ListObjectsV2 request)",
                });
            }
            response.text().await.map_err(|e| self.failed(&e))
        };
        wire::list_pages(prefix, start_after, max, fetch, || {
            OriginError::Unsupported {
                origin: self.base.clone(),
                what: "listing (its answer to ListObjectsV2 was not S3 XML)",
            }
        })
        .await
    }
}

impl Origin for HttpOrigin {
    fn describe(&self) -> &str {
        &self.base
    }

    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<ObjectMeta, OriginError>> {
        Box::pin(self.head_inner(key))
    }

    fn read<'a>(
        &'a self,
        key: &'a str,
        range: Range<u64>,
        etag: &'a str,
    ) -> BoxFuture<'a, Result<Bytes, OriginError>> {
        Box::pin(self.read_inner(key, range, etag))
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        start_after: Option<&'a str>,
        max: usize,
    ) -> BoxFuture<'a, Result<ListPage, OriginError>> {
        Box::pin(self.list_inner(prefix, start_after, max))
    }

    fn check_key<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), OriginError>> {
        // A URL resolves `.` and `..` segments: such a key would read
        // outside the base, and no object has that name anyway.
        let escapes = key
            .split('/')
            .any(|segment| segment == "." || segment == "..");
        Box::pin(std::future::ready(if escapes {
            Err(OriginError::InvalidKey {
                key: key.to_owned(),
                why: "'.' and '..' path segments are not allowed",
            })
        } else {
            Ok(())
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_appended_to_the_base() {
        let origin =
            HttpOrigin::new("http://h/base", Duration::from_secs(1), None).expect("origin");
        assert_eq!(origin.url_of("a b/c?d#e"), "http://h/base/a%20b/c%3Fd%23e");
    }
}
