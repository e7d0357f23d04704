//! The few S3 XML documents a read-only front door sends.

use std::fmt::Write;
use std::time::SystemTime;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use quick_xml::escape::escape;

use crate::origin::ObjectMeta;

const NAMESPACE: &str = "http://s3.amazonaws.com/doc/2006-03-01/";
const HEADER: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";

/// What `encoding-type=url` leaves alone: RFC 3986 unreserved and `/`.
const URL_ENCODED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

/// An `<Error>` document.
pub fn error(code: &str, message: &str, resource: &str) -> String {
    format!(
        "{HEADER}<Error><Code>{code}</Code><Message>{}</Message><Resource>{}</Resource></Error>",
        escape(message),
        escape(resource)
    )
}

/// ISO 8601 with milliseconds, as S3 writes dates in XML.
pub fn iso_date(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

/// A `ListAllMyBucketsResult` for the served buckets.
pub fn list_buckets<'a>(buckets: impl Iterator<Item = &'a str>, created: SystemTime) -> String {
    let mut xml = format!(
        "{HEADER}<ListAllMyBucketsResult xmlns=\"{NAMESPACE}\"><Owner><ID>ferry</ID>\
         <DisplayName>ferry</DisplayName></Owner><Buckets>"
    );
    let created = iso_date(created);
    for bucket in buckets {
        let _ = write!(
            xml,
            "<Bucket><Name>{}</Name><CreationDate>{created}</CreationDate></Bucket>",
            escape(bucket)
        );
    }
    xml.push_str("</Buckets></ListAllMyBucketsResult>");
    xml
}

/// A `LocationConstraint` (empty: the default region).
pub fn bucket_location() -> String {
    format!("{HEADER}<LocationConstraint xmlns=\"{NAMESPACE}\"></LocationConstraint>")
}

/// One page of a listing, to be written as V1 or V2.
pub struct ListingPage<'a> {
    /// Bucket name.
    pub bucket: &'a str,
    /// The request's prefix.
    pub prefix: &'a str,
    /// The request's delimiter.
    pub delimiter: Option<&'a str>,
    /// The request's max-keys.
    pub max_keys: usize,
    /// Whether keys are URL-encoded (`encoding-type=url`).
    pub url_encoded: bool,
    /// Objects in the page.
    pub objects: &'a [ObjectMeta],
    /// Common prefixes in the page.
    pub common_prefixes: &'a [String],
    /// Whether more follow.
    pub truncated: bool,
}

/// Extra elements that differ between ListObjects V1 and V2.
pub enum ListingFlavour<'a> {
    /// ListObjects (V1).
    V1 {
        /// The request's marker.
        marker: &'a str,
        /// Where the next page starts, when truncated.
        next_marker: Option<&'a str>,
    },
    /// ListObjectsV2.
    V2 {
        /// The request's start-after.
        start_after: Option<&'a str>,
        /// The request's continuation token.
        continuation_token: Option<&'a str>,
        /// Token for the next page, when truncated.
        next_continuation_token: Option<&'a str>,
    },
}

impl ListingPage<'_> {
    fn text<'t>(&self, value: &'t str) -> std::borrow::Cow<'t, str> {
        if self.url_encoded {
            std::borrow::Cow::Owned(utf8_percent_encode(value, URL_ENCODED).to_string())
        } else {
            escape(value)
        }
    }

    /// The `ListBucketResult` document.
    pub fn to_xml(&self, flavour: &ListingFlavour<'_>) -> String {
        let mut xml = String::with_capacity(256 + self.objects.len() * 200);
        let _ = write!(
            xml,
            "{HEADER}<ListBucketResult xmlns=\"{NAMESPACE}\"><Name>{}</Name><Prefix>{}</Prefix>",
            escape(self.bucket),
            self.text(self.prefix)
        );
        match flavour {
            ListingFlavour::V1 {
                marker,
                next_marker,
            } => {
                let _ = write!(xml, "<Marker>{}</Marker>", self.text(marker));
                if let Some(next) = next_marker {
                    let _ = write!(xml, "<NextMarker>{}</NextMarker>", self.text(next));
                }
            }
            ListingFlavour::V2 {
                start_after,
                continuation_token,
                next_continuation_token,
            } => {
                if let Some(after) = start_after {
                    let _ = write!(xml, "<StartAfter>{}</StartAfter>", self.text(after));
                }
                if let Some(token) = continuation_token {
                    let _ = write!(
                        xml,
                        "<ContinuationToken>{}</ContinuationToken>",
                        escape(*token)
                    );
                }
                if let Some(token) = next_continuation_token {
                    let _ = write!(
                        xml,
                        "<NextContinuationToken>{}</NextContinuationToken>",
                        escape(*token)
                    );
                }
                let _ = write!(
                    xml,
                    "<KeyCount>{}</KeyCount>",
                    self.objects.len() + self.common_prefixes.len()
                );
            }
        }
        let _ = write!(xml, "<MaxKeys>{}</MaxKeys>", self.max_keys);
        if let Some(delimiter) = self.delimiter {
            let _ = write!(xml, "<Delimiter>{}</Delimiter>", self.text(delimiter));
        }
        if self.url_encoded {
            xml.push_str("<EncodingType>url</EncodingType>");
        }
        let _ = write!(xml, "<IsTruncated>{}</IsTruncated>", self.truncated);
        for object in self.objects {
            let _ = write!(
                xml,
                "<Contents><Key>{}</Key><LastModified>{}</LastModified><ETag>&quot;{}&quot;</ETag>\
                 <Size>{}</Size><StorageClass>STANDARD</StorageClass></Contents>",
                self.text(&object.key),
                iso_date(object.modified),
                escape(&object.etag),
                object.size
            );
        }
        for prefix in self.common_prefixes {
            let _ = write!(
                xml,
                "<CommonPrefixes><Prefix>{}</Prefix></CommonPrefixes>",
                self.text(prefix)
            );
        }
        xml.push_str("</ListBucketResult>");
        xml
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_escape_their_text() {
        let xml = error("NoSuchKey", "object '<a&b>' is missing", "/b/<a&b>");
        assert!(
            xml.contains("<Message>object &apos;&lt;a&amp;b&gt;&apos; is missing</Message>")
                || xml.contains("<Message>object &#39;&lt;a&amp;b&gt;&#39; is missing</Message>")
                || xml.contains("<Message>object '&lt;a&amp;b&gt;' is missing</Message>"),
            "{xml}"
        );
        assert!(
            xml.contains("<Resource>/b/&lt;a&amp;b&gt;</Resource>"),
            "{xml}"
        );
    }

    #[test]
    fn url_encoding_keeps_slashes_and_encodes_the_rest() {
        let page = ListingPage {
            bucket: "b",
            prefix: "a b/",
            delimiter: Some("/"),
            max_keys: 10,
            url_encoded: true,
            objects: &[],
            common_prefixes: &["a b/c+d/".to_owned()],
            truncated: false,
        };
        let xml = page.to_xml(&ListingFlavour::V2 {
            start_after: None,
            continuation_token: None,
            next_continuation_token: None,
        });
        assert!(xml.contains("<Prefix>a%20b/</Prefix>"), "{xml}");
        assert!(xml.contains("<Prefix>a%20b/c%2Bd/</Prefix>"), "{xml}");
        assert!(xml.contains("<KeyCount>1</KeyCount>"), "{xml}");
    }
}
