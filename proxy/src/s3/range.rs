//! The `Range` header: `bytes=a-b`, `bytes=a-` and `bytes=-n`.

use std::ops::Range;

use super::error::S3Error;

/// A parsed, not yet resolved, byte range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByteRange {
    /// `bytes=a-b` (inclusive) or `bytes=a-` (`end` absent).
    From {
        /// First byte.
        start: u64,
        /// Last byte, inclusive.
        end: Option<u64>,
    },
    /// `bytes=-n`: the last `n` bytes.
    Suffix(u64),
    /// Several ranges (`bytes=0-1,5-6`): S3 ignores such a header and
    /// answers 200 with the whole object, and so does Ferry.
    Several,
}

const FORMS: &str = "expected bytes=FIRST-LAST, bytes=FIRST- or bytes=-SUFFIX_LENGTH";

impl ByteRange {
    /// Parses a Range header value; malformed is a 400.
    pub fn parse(text: &str) -> Result<Self, S3Error> {
        let malformed =
            || S3Error::invalid_argument(format!("Range header '{text}' is malformed: {FORMS}"));
        let spec = text
            .trim()
            .strip_prefix("bytes=")
            .ok_or_else(malformed)?
            .trim();
        if spec.contains(',') {
            return Ok(Self::Several);
        }
        let (first, last) = spec.split_once('-').ok_or_else(malformed)?;
        let number = |digits: &str| -> Result<u64, S3Error> {
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(malformed());
            }
            digits.parse().map_err(|_| malformed())
        };
        let (first, last) = (first.trim(), last.trim());
        if first.is_empty() {
            return Ok(Self::Suffix(number(last)?));
        }
        let start = number(first)?;
        if last.is_empty() {
            return Ok(Self::From { start, end: None });
        }
        let end = number(last)?;
        if end < start {
            return Err(S3Error::invalid_argument(format!(
                "Range header '{text}' ends before it starts: {FORMS}"
            )));
        }
        Ok(Self::From {
            start,
            end: Some(end),
        })
    }

    /// Whether the answer is a 206 with `Content-Range` (not the whole object as a 200).
    pub fn is_partial(self) -> bool {
        self != Self::Several
    }

    /// The half-open byte range within an object of `size` bytes; a range
    /// that starts past the end is a 416 naming the size.
    pub fn resolve(self, size: u64, text: &str) -> Result<Range<u64>, S3Error> {
        match self {
            Self::Several => Ok(0..size),
            Self::From { start, end } => {
                if start >= size {
                    return Err(S3Error::invalid_range(text, size));
                }
                let end = end.map_or(size, |last| last.saturating_add(1).min(size));
                Ok(start..end)
            }
            Self::Suffix(len) => {
                if len == 0 || size == 0 {
                    return Err(S3Error::invalid_range(text, size));
                }
                Ok(size.saturating_sub(len)..size)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    fn resolve(text: &str, size: u64) -> Result<Range<u64>, S3Error> {
        ByteRange::parse(text)?.resolve(size, text)
    }

    #[test]
    fn every_form_resolves() {
        assert_eq!(resolve("bytes=0-9", 100), Ok(0..10));
        assert_eq!(resolve("bytes=90-200", 100), Ok(90..100), "clamped");
        assert_eq!(resolve("bytes=10-", 100), Ok(10..100));
        assert_eq!(resolve("bytes=-10", 100), Ok(90..100));
        assert_eq!(
            resolve("bytes=-1000", 100),
            Ok(0..100),
            "suffix longer than object"
        );
        assert_eq!(resolve("bytes=99-99", 100), Ok(99..100));
    }

    #[test]
    fn unsatisfiable_ranges_are_416_with_the_size() {
        for text in ["bytes=100-", "bytes=100-200", "bytes=-0"] {
            let err = resolve(text, 100).expect_err(text);
            assert_eq!(err.status, StatusCode::RANGE_NOT_SATISFIABLE);
            assert_eq!(err.object_size, Some(100));
        }
        assert!(resolve("bytes=0-", 0).is_err(), "empty object");
    }

    #[test]
    fn several_ranges_mean_the_whole_object_as_s3_answers() {
        let several = ByteRange::parse("bytes=0-1,4-5").expect("parses");
        assert_eq!(several, ByteRange::Several);
        assert!(!several.is_partial());
        assert_eq!(resolve("bytes=0-1,4-5", 100), Ok(0..100));
        assert!(ByteRange::parse("bytes=0-9").expect("one").is_partial());
    }

    #[test]
    fn malformed_ranges_are_400() {
        for text in [
            "bytes=",
            "bytes=a-b",
            "bytes=5-2",
            "items=0-1",
            "bytes=--1",
            "0-1",
            "bytes=1",
        ] {
            let err = ByteRange::parse(text).expect_err(text);
            assert_eq!(err.status, StatusCode::BAD_REQUEST, "{text}");
            assert!(err.message.contains(text), "{}", err.message);
        }
    }
}
