//! The S3-over-HTTP wire details that the HTTP origin and the sidecar's pool
//! upstream share: key paths, ranges, ETags, metadata headers, status
//! meanings and ListObjectsV2 pages.

use std::ops::Range;
use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, header};
use http_body_util::{BodyExt, Empty, Limited};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use serde::Deserialize;

use super::{ListPage, ObjectMeta, OriginError};

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

/// Marks a version tag made up from size and date because the server sent no ETag.
pub const WEAK_PREFIX: &str = "ferry-weak-";

/// Appends `key` to `path`, escaping each segment and keeping the `/`s.
pub fn push_key(path: &mut String, key: &str) {
    for (i, segment) in key.split('/').enumerate() {
        if i > 0 {
            path.push('/');
        }
        path.extend(utf8_percent_encode(segment, SEGMENT));
    }
}

/// A header as text, if present and ASCII.
pub fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// An ETag without `W/` and quotes.
pub fn strip_etag(tag: &str) -> &str {
    let tag = tag.trim();
    let tag = tag.strip_prefix("W/").unwrap_or(tag);
    tag.trim_matches('"')
}

/// `bytes=a-b` for a non-empty half-open range.
pub fn range_header(range: &Range<u64>) -> String {
    format!("bytes={}-{}", range.start, range.end.saturating_sub(1))
}

/// Whether a 206's `Content-Range` starts where `range` does.
pub fn content_range_starts_at(headers: &HeaderMap, start: u64) -> bool {
    header_str(headers, header::CONTENT_RANGE)
        .and_then(|v| v.strip_prefix("bytes "))
        .and_then(|v| v.split_once('-'))
        .is_some_and(|(first, _)| first.parse::<u64>() == Ok(start))
}

/// Object metadata from a HEAD response's headers.
pub fn meta_from_head(key: &str, headers: &HeaderMap) -> Result<ObjectMeta, String> {
    let size = header_str(headers, header::CONTENT_LENGTH)
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| format!("no Content-Length for '{key}'"))?;
    let modified = header_str(headers, header::LAST_MODIFIED)
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let etag = match header_str(headers, header::ETAG) {
        Some(tag) => strip_etag(tag).to_owned(),
        // Without an ETag the version is pinned by size and modification time.
        None => {
            let secs = modified
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default();
            format!("{WEAK_PREFIX}{size:x}-{secs:x}")
        }
    };
    Ok(ObjectMeta {
        key: key.to_owned(),
        size,
        etag,
        modified,
    })
}

/// What a non-success status from an S3-style server means for `key`.
/// `None` for statuses worth retrying elsewhere (5xx, 429).
pub fn definite_error(origin: &str, key: &str, status: StatusCode) -> Option<OriginError> {
    match status {
        StatusCode::NOT_FOUND => Some(OriginError::NotFound {
            key: key.to_owned(),
        }),
        StatusCode::PRECONDITION_FAILED | StatusCode::RANGE_NOT_SATISFIABLE => {
            Some(OriginError::Changed {
                key: key.to_owned(),
            })
        }
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Some(OriginError::Denied {
            origin: origin.to_owned(),
            detail: format!("HTTP {status} for '{key}'"),
        }),
        StatusCode::NOT_IMPLEMENTED => Some(OriginError::Unsupported {
            origin: origin.to_owned(),
            what: "this request (HTTP 501)",
        }),
        status if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS => None,
        status => Some(OriginError::unavailable(
            origin,
            format!("HTTP {status} for '{key}'"),
        )),
    }
}

/// Keys asked for per ListObjectsV2 page (S3's own maximum).
pub const LIST_PAGE: usize = 1000;

/// A listing of up to `max` objects under `prefix` after `start_after`,
/// paged through ListObjectsV2: `fetch` GETs the page with the query it is
/// given and returns the body; `not_a_listing` is the error for a body that
/// is not S3 XML.
pub async fn list_pages<E, F, Fut>(
    prefix: &str,
    start_after: Option<&str>,
    max: usize,
    mut fetch: F,
    not_a_listing: impl Fn() -> E,
) -> Result<ListPage, E>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<String, E>>,
{
    let mut page = ListPage::default();
    let mut cursor = start_after.map(str::to_owned);
    loop {
        // One more than wanted, so a full page can tell whether more follow.
        let ask = (max - page.objects.len() + 1).min(LIST_PAGE);
        let body = fetch(list_query(prefix, cursor.as_deref(), ask)).await?;
        let (objects, more) = parse_list(&body).ok_or_else(&not_a_listing)?;
        if absorb_page(&mut page, &mut cursor, objects, more, max) {
            return Ok(page);
        }
    }
}

/// Most bytes of one listing page's XML taken from a worker (a 1,000-object
/// page is a few hundred KiB).
pub const LIST_PAGE_BYTES: usize = 16 << 20;

/// The GET of `bucket`'s ListObjectsV2 page `query` (as [`list_pages`] gives
/// it) from the S3 endpoint at `host`: a worker of the mesh.
pub fn list_request(
    bucket: &str,
    host: &str,
    query: &str,
) -> Result<Request<Empty<Bytes>>, http::Error> {
    Request::get(format!("/{bucket}?{query}"))
        .header(header::HOST, host)
        .body(Empty::new())
}

/// The text of a listing page's response `body`, refused past [`LIST_PAGE_BYTES`].
pub async fn list_xml<B>(body: B) -> Result<String, String>
where
    B: http_body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let bytes = Limited::new(body, LIST_PAGE_BYTES)
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The query of a ListObjectsV2 request for one page.
fn list_query(prefix: &str, start_after: Option<&str>, max_keys: usize) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    query
        .append_pair("list-type", "2")
        .append_pair("prefix", prefix)
        .append_pair("max-keys", &max_keys.to_string());
    if let Some(after) = start_after {
        query.append_pair("start-after", after);
    }
    query.finish()
}

/// Adds one fetched page of a listing to `page`, which may hold at most
/// `max` objects, moving `cursor` to its last key. Returns whether `page` is
/// complete: full (then marked truncated), or the listing has no more.
fn absorb_page(
    page: &mut ListPage,
    cursor: &mut Option<String>,
    objects: Vec<ObjectMeta>,
    more: bool,
    max: usize,
) -> bool {
    let fetched = objects.len();
    for object in objects {
        if page.objects.len() == max {
            page.truncated = true;
            return true;
        }
        *cursor = Some(object.key.clone());
        page.objects.push(object);
    }
    if more && page.objects.len() == max {
        // The origin says more follow: no request for one more to find out.
        page.truncated = true;
        return true;
    }
    !more || fetched == 0
}

/// One ListObjectsV2 page: its objects and whether more follow; `None` if
/// the text is not an S3 listing.
pub fn parse_list(xml: &str) -> Option<(Vec<ObjectMeta>, bool)> {
    // serde takes any root element, and every field has a default: check the
    // root is a listing, or an error page would read as an empty bucket.
    if root_element(xml)? != "ListBucketResult" {
        return None;
    }
    let result: ListBucketResult = quick_xml::de::from_str(xml).ok()?;
    let objects = result
        .contents
        .into_iter()
        .map(|item| ObjectMeta {
            modified: humantime::parse_rfc3339(item.last_modified.trim())
                .unwrap_or(SystemTime::UNIX_EPOCH),
            etag: strip_etag(&item.etag).to_owned(),
            size: item.size,
            key: item.key,
        })
        .collect();
    Some((objects, result.is_truncated))
}

/// The name of the first element of an XML document.
fn root_element(xml: &str) -> Option<String> {
    let mut reader = quick_xml::Reader::from_str(xml);
    loop {
        match reader.read_event().ok()? {
            quick_xml::events::Event::Start(tag) | quick_xml::events::Event::Empty(tag) => {
                return Some(String::from_utf8_lossy(tag.local_name().as_ref()).into_owned());
            }
            quick_xml::events::Event::Eof => return None,
            _ => {}
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_listing_body_past_its_bound_is_refused() {
        let whole = http_body_util::Full::new(Bytes::from(vec![b'x'; LIST_PAGE_BYTES]));
        assert_eq!(list_xml(whole).await.map(|s| s.len()), Ok(LIST_PAGE_BYTES));
        let over = http_body_util::Full::new(Bytes::from(vec![b'x'; LIST_PAGE_BYTES + 1]));
        assert!(list_xml(over).await.is_err());
    }

    #[test]
    fn keys_are_escaped_segment_by_segment() {
        let mut path = String::from("/bucket/");
        push_key(&mut path, "a b/c?d#e+f");
        assert_eq!(path, "/bucket/a%20b/c%3Fd%23e%2Bf");
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
            <Contents><Key>a/2</Key><Size>4</Size><ETag>&quot;e2&quot;</ETag><LastModified>2024-01-02T03:04:05.000Z</LastModified></Contents>
            </ListBucketResult>"#;
        let (objects, truncated) = parse_list(xml).expect("xml");
        assert!(truncated);
        assert_eq!(objects.len(), 2);
        assert_eq!(objects[1].etag, "e2");
        assert_eq!(objects[0].size, 3);
        assert!(parse_list("<html>not a listing</html>").is_none());
        assert!(parse_list("<Error><Code>NoSuchBucket</Code></Error>").is_none());
        assert!(parse_list("not xml at all").is_none());
    }

    /// A listing of `count` keys as an origin pages it, 1,000 a page at most.
    fn origin_page(count: usize, query: &str) -> String {
        let asked: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let get = |name: &str| {
            asked
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let max: usize = get("max-keys").and_then(|m| m.parse().ok()).unwrap_or(1000);
        let start = get("start-after").map_or(0, |a| a[1..].parse::<usize>().expect("k#") + 1);
        let end = (start + max.min(1000)).min(count);
        let contents: String = (start..end)
            .map(|i| format!("<Contents><Key>k{i:05}</Key><Size>1</Size><ETag>e</ETag></Contents>"))
            .collect();
        format!(
            "<ListBucketResult><IsTruncated>{}</IsTruncated>{contents}</ListBucketResult>",
            end < count
        )
    }

    #[test]
    fn a_full_page_the_origin_says_is_truncated_costs_one_request() {
        for (count, max, requests, truncated) in [
            (2500, 1000, 1, true),
            (1000, 1000, 1, false),
            (2500, 1500, 2, true),
            (2500, 5000, 3, false),
        ] {
            let mut asked = 0;
            let page = futures::executor::block_on(list_pages(
                "",
                None,
                max,
                |query| {
                    asked += 1;
                    std::future::ready(Ok::<_, ()>(origin_page(count, &query)))
                },
                || (),
            ))
            .expect("listing");
            assert_eq!(
                (page.objects.len(), page.truncated, asked),
                (max.min(count), truncated, requests),
                "{count} keys, {max} a page"
            );
        }
    }

    #[test]
    fn statuses_split_into_definite_and_retryable() {
        assert!(matches!(
            definite_error("o", "k", StatusCode::NOT_FOUND),
            Some(OriginError::NotFound { .. })
        ));
        assert!(matches!(
            definite_error("o", "k", StatusCode::PRECONDITION_FAILED),
            Some(OriginError::Changed { .. })
        ));
        assert!(definite_error("o", "k", StatusCode::SERVICE_UNAVAILABLE).is_none());
        assert!(definite_error("o", "k", StatusCode::BAD_GATEWAY).is_none());
    }
}
