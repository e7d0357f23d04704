//! `http(s)://`: any server that answers Range requests. Listing works when
//! the base URL is an S3-style bucket endpoint that answers ListObjectsV2.

use std::ops::Range;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use http::{HeaderMap, StatusCode, header};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use serde::Deserialize;

use super::{ListPage, ObjectMeta, Origin, OriginError, check_length};

/// Characters escaped in a key's path segments.
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'+');

/// Largest page asked of an S3-style listing endpoint.
const LIST_PAGE: usize = 1000;

/// Reads objects from an HTTP(S) server.
pub struct HttpOrigin {
    client: reqwest::Client,
    base: String,
}

impl HttpOrigin {
    /// An origin for `base` (a key is appended to it); `timeout` bounds each request.
    pub fn new(base: &str, timeout: Duration) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .build()?;
        let mut base = base.to_owned();
        if !base.ends_with('/') {
            base.push('/');
        }
        Ok(Self { client, base })
    }

    fn url_of(&self, key: &str) -> String {
        let mut url = String::with_capacity(self.base.len() + key.len() + 8);
        url.push_str(&self.base);
        for (i, segment) in key.split('/').enumerate() {
            if i > 0 {
                url.push('/');
            }
            url.extend(utf8_percent_encode(segment, SEGMENT));
        }
        url
    }

    fn unavailable(&self, detail: impl std::fmt::Display) -> OriginError {
        OriginError::unavailable(&self.base, detail)
    }

    /// Maps a non-success status to the error it means.
    fn status_error(&self, key: &str, status: StatusCode) -> OriginError {
        match status {
            StatusCode::NOT_FOUND => OriginError::NotFound {
                key: key.to_owned(),
            },
            StatusCode::PRECONDITION_FAILED | StatusCode::RANGE_NOT_SATISFIABLE => {
                OriginError::Changed {
                    key: key.to_owned(),
                }
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => OriginError::Denied {
                origin: self.base.clone(),
                detail: format!("HTTP {status} for '{key}'"),
            },
            _ => self.unavailable(format!("HTTP {status} for '{key}'")),
        }
    }

    async fn head_inner(&self, key: &str) -> Result<ObjectMeta, OriginError> {
        let response = self
            .client
            .head(self.url_of(key))
            .send()
            .await
            .map_err(|e| self.unavailable(e))?;
        if !response.status().is_success() {
            return Err(self.status_error(key, response.status()));
        }
        let headers = response.headers();
        let size = header_str(headers, header::CONTENT_LENGTH)
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| self.unavailable(format!("no Content-Length for '{key}'")))?;
        let modified = header_str(headers, header::LAST_MODIFIED)
            .and_then(|v| httpdate::parse_http_date(v).ok())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let etag = match header_str(headers, header::ETAG) {
            Some(tag) => strip_etag(tag).to_owned(),
            // Without an ETag the version is pinned by size and modification time.
            None => format!("{}{}", WEAK_PREFIX, version_from(size, modified)),
        };
        Ok(ObjectMeta {
            key: key.to_owned(),
            size,
            etag,
            modified,
        })
    }

    async fn read_inner(
        &self,
        key: &str,
        range: Range<u64>,
        etag: &str,
    ) -> Result<Bytes, OriginError> {
        let want = usize::try_from(range.end - range.start)
            .map_err(|_| self.unavailable("range too large"))?;
        let mut request = self.client.get(self.url_of(key)).header(
            header::RANGE,
            format!("bytes={}-{}", range.start, range.end.saturating_sub(1)),
        );
        if !etag.starts_with(WEAK_PREFIX) {
            request = request.header(header::IF_MATCH, format!("\"{etag}\""));
        }
        let mut response = request.send().await.map_err(|e| self.unavailable(e))?;
        match response.status() {
            StatusCode::PARTIAL_CONTENT => {
                let starts_right = header_str(response.headers(), header::CONTENT_RANGE)
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split_once('-'))
                    .is_some_and(|(start, _)| start == range.start.to_string());
                if !starts_right {
                    return Err(self.unavailable(format!(
                        "answered a different range than bytes {}-{} of '{key}'",
                        range.start,
                        range.end.saturating_sub(1)
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
        while let Some(piece) = response.chunk().await.map_err(|e| self.unavailable(e))? {
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
        let mut page = ListPage::default();
        let mut cursor = start_after.map(str::to_owned);
        loop {
            let ask = (max - page.objects.len() + 1).min(LIST_PAGE);
            let url = list_url(&self.base, prefix, cursor.as_deref(), ask);
            let response = self
                .client
                .get(url)
                .send()
                .await
                .map_err(|e| self.unavailable(e))?;
            if !response.status().is_success() {
                return Err(OriginError::Unsupported {
                    origin: self.base.clone(),
                    what: "listing (it did not answer an S3 ListObjectsV2 request)",
                });
            }
            let body = response.text().await.map_err(|e| self.unavailable(e))?;
            let result: ListBucketResult =
                quick_xml::de::from_str(&body).map_err(|_| OriginError::Unsupported {
                    origin: self.base.clone(),
                    what: "listing (its answer to ListObjectsV2 was not S3 XML)",
                })?;
            let fetched = result.contents.len();
            for item in result.contents {
                if page.objects.len() == max {
                    page.truncated = true;
                    return Ok(page);
                }
                cursor = Some(item.key.clone());
                page.objects.push(ObjectMeta {
                    modified: humantime::parse_rfc3339(item.last_modified.trim())
                        .unwrap_or(SystemTime::UNIX_EPOCH),
                    etag: strip_etag(&item.etag).to_owned(),
                    size: item.size,
                    key: item.key,
                });
            }
            if !result.is_truncated || fetched == 0 {
                return Ok(page);
            }
        }
    }
}

/// The ListObjectsV2 URL for one page (the serializer is not `Send`, so it
/// lives outside the async function).
fn list_url(base: &str, prefix: &str, start_after: Option<&str>, max_keys: usize) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    query
        .append_pair("list-type", "2")
        .append_pair("prefix", prefix)
        .append_pair("max-keys", &max_keys.to_string());
    if let Some(after) = start_after {
        query.append_pair("start-after", after);
    }
    format!("{base}?{}", query.finish())
}

/// Marks a version tag made up from size and date because the server sent no ETag.
const WEAK_PREFIX: &str = "ferry-weak-";

fn version_from(size: u64, modified: SystemTime) -> String {
    let secs = modified
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    format!("{size:x}-{secs:x}")
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// An ETag without `W/` and quotes.
fn strip_etag(tag: &str) -> &str {
    let tag = tag.trim();
    let tag = tag.strip_prefix("W/").unwrap_or(tag);
    tag.trim_matches('"')
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListBucketResult {
    #[serde(default)]
    is_truncated: bool,
    #[serde(default)]
    contents: Vec<ListedObject>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListedObject {
    key: String,
    size: u64,
    #[serde(default, rename = "ETag")]
    etag: String,
    #[serde(default)]
    last_modified: String,
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_escaped_segment_by_segment() {
        let origin = HttpOrigin::new("http://h/base", Duration::from_secs(1)).expect("origin");
        assert_eq!(origin.url_of("a b/c?d#e"), "http://h/base/a%20b/c%3Fd%23e");
    }

    #[test]
    fn etags_lose_quotes_and_weakness() {
        assert_eq!(strip_etag("\"abc\""), "abc");
        assert_eq!(strip_etag("W/\"abc\""), "abc");
    }

    #[test]
    fn s3_list_xml_parses() {
        let xml = r#"<?xml version="1.0"?><ListBucketResult><Name>b</Name><IsTruncated>true</IsTruncated>
            <Contents><Key>a/1</Key><Size>3</Size><ETag>"e1"</ETag><LastModified>2024-01-02T03:04:05.000Z</LastModified></Contents>
            <Contents><Key>a/2</Key><Size>4</Size><ETag>"e2"</ETag><LastModified>2024-01-02T03:04:05.000Z</LastModified></Contents>
            </ListBucketResult>"#;
        let parsed: ListBucketResult = quick_xml::de::from_str(xml).expect("xml");
        assert!(parsed.is_truncated);
        assert_eq!(parsed.contents.len(), 2);
        assert_eq!(parsed.contents[1].etag, "\"e2\"");
    }
}
