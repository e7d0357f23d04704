//! Conditional requests (RFC 9110 §13.2.2 order): `If-Match`,
//! `If-Unmodified-Since`, `If-None-Match`, `If-Modified-Since`.

use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderMap, header};

use super::error::S3Error;

/// What the preconditions decide.
#[derive(Debug, PartialEq, Eq)]
pub enum Precondition {
    /// Serve the object.
    Proceed,
    /// 304: the client's copy is current.
    NotModified,
}

/// Evaluates the request's preconditions against the object's ETag and date.
pub fn evaluate(
    headers: &HeaderMap,
    etag: &str,
    modified: SystemTime,
) -> Result<Precondition, S3Error> {
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(wanted) = text(header::IF_MATCH) {
        if !matches_any(wanted, etag) {
            return Err(S3Error::precondition_failed("If-Match"));
        }
    } else if let Some(date) = text(header::IF_UNMODIFIED_SINCE).and_then(parse_date)
        && seconds(modified) > date
    {
        return Err(S3Error::precondition_failed("If-Unmodified-Since"));
    }
    if let Some(unwanted) = text(header::IF_NONE_MATCH) {
        if matches_any(unwanted, etag) {
            return Ok(Precondition::NotModified);
        }
    } else if let Some(date) = text(header::IF_MODIFIED_SINCE).and_then(parse_date)
        && seconds(modified) <= date
    {
        return Ok(Precondition::NotModified);
    }
    Ok(Precondition::Proceed)
}

/// Whether a comma-separated list of entity tags (or `*`) includes `etag`.
pub fn matches_any(list: &str, etag: &str) -> bool {
    list.split(',').any(|candidate| {
        let candidate = candidate.trim();
        let candidate = candidate.strip_prefix("W/").unwrap_or(candidate);
        candidate == "*" || candidate.trim_matches('"') == etag
    })
}

fn parse_date(text: &str) -> Option<u64> {
    httpdate::parse_http_date(text).ok().map(seconds)
}

/// HTTP dates have whole seconds; compare at that precision.
fn seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use std::time::Duration;

    fn with(pairs: &[(header::HeaderName, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(name.clone(), HeaderValue::from_static(value));
        }
        headers
    }

    const MODIFIED: Duration = Duration::from_secs(1_700_000_000); // Tue, 14 Nov 2023 22:13:20 GMT

    fn check(pairs: &[(header::HeaderName, &'static str)]) -> Result<Precondition, S3Error> {
        evaluate(&with(pairs), "abc", UNIX_EPOCH + MODIFIED)
    }

    #[test]
    fn if_match_and_if_none_match() {
        assert_eq!(
            check(&[(header::IF_MATCH, "\"abc\"")]),
            Ok(Precondition::Proceed)
        );
        assert_eq!(check(&[(header::IF_MATCH, "*")]), Ok(Precondition::Proceed));
        assert!(check(&[(header::IF_MATCH, "\"xyz\"")]).is_err());
        assert_eq!(
            check(&[(header::IF_NONE_MATCH, "\"x\", W/\"abc\"")]),
            Ok(Precondition::NotModified)
        );
        assert_eq!(
            check(&[(header::IF_NONE_MATCH, "\"x\"")]),
            Ok(Precondition::Proceed)
        );
    }

    #[test]
    fn dates_compare_at_second_precision() {
        let at = "Tue, 14 Nov 2023 22:13:20 GMT";
        let before = "Tue, 14 Nov 2023 22:13:19 GMT";
        assert_eq!(
            check(&[(header::IF_MODIFIED_SINCE, at)]),
            Ok(Precondition::NotModified)
        );
        assert_eq!(
            check(&[(header::IF_MODIFIED_SINCE, before)]),
            Ok(Precondition::Proceed)
        );
        assert!(check(&[(header::IF_UNMODIFIED_SINCE, before)]).is_err());
        assert_eq!(
            check(&[(header::IF_UNMODIFIED_SINCE, at)]),
            Ok(Precondition::Proceed)
        );
        assert_eq!(
            check(&[(header::IF_MODIFIED_SINCE, "garbage")]),
            Ok(Precondition::Proceed)
        );
    }

    #[test]
    fn etag_conditions_take_precedence_over_dates() {
        // A true If-Match overrides a failing If-Unmodified-Since (S3 and RFC 9110).
        let before = "Tue, 14 Nov 2023 22:13:19 GMT";
        assert_eq!(
            check(&[
                (header::IF_MATCH, "\"abc\""),
                (header::IF_UNMODIFIED_SINCE, before)
            ]),
            Ok(Precondition::Proceed)
        );
        // A false If-None-Match means modified regardless of If-Modified-Since.
        let after = "Wed, 15 Nov 2023 00:00:00 GMT";
        assert_eq!(
            check(&[
                (header::IF_NONE_MATCH, "\"x\""),
                (header::IF_MODIFIED_SINCE, after)
            ]),
            Ok(Precondition::Proceed)
        );
    }
}
