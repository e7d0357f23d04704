//! S3-shaped errors: the right status, the S3 code, and a message that says
//! what happened.

use http::{HeaderValue, Method, Response, StatusCode, header};

use super::body::ProxyBody;
use super::xml;
use crate::origin::OriginError;

/// An error the app sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Error {
    /// HTTP status.
    pub status: StatusCode,
    /// S3 error code, e.g. `NoSuchKey`.
    pub code: &'static str,
    /// What happened.
    pub message: String,
    /// For 416: the object's size, sent as `Content-Range: bytes */size`.
    pub object_size: Option<u64>,
    /// For 503 `SlowDown`: seconds to wait, sent as `Retry-After`.
    pub retry_after: Option<u64>,
}

impl S3Error {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            object_size: None,
            retry_after: None,
        }
    }

    /// 404 `NoSuchBucket`.
    pub fn no_such_bucket(bucket: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NoSuchBucket",
            format!("bucket '{bucket}' is not a data set served by this proxy"),
        )
    }

    /// 404 `NoSuchKey`.
    pub fn no_such_key(bucket: &str, key: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NoSuchKey",
            format!("object '{key}' does not exist in data set '{bucket}'"),
        )
    }

    /// 416 `InvalidRange`, with the size for `Content-Range: bytes */size`.
    pub fn invalid_range(range: &str, size: u64) -> Self {
        Self {
            object_size: Some(size),
            ..Self::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "InvalidRange",
                format!("range '{range}' is not satisfiable for an object of {size} bytes"),
            )
        }
    }

    /// 400 `InvalidArgument`.
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "InvalidArgument", message)
    }

    /// 400 `InvalidRequest`.
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "InvalidRequest", message)
    }

    /// 414 (`InvalidURI`): a path and query of `len` bytes, over `max`.
    pub fn uri_too_long(len: usize, max: usize) -> Self {
        Self::new(
            StatusCode::URI_TOO_LONG,
            "InvalidURI",
            format!("the path and query are {len} bytes long; at most {max} are accepted"),
        )
    }

    /// 400 `InvalidURI`.
    pub fn invalid_uri(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "InvalidURI", message)
    }

    /// 403 `AccessDenied`.
    pub fn access_denied(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "AccessDenied", message)
    }

    /// 412 `PreconditionFailed`.
    pub fn precondition_failed(which: &str) -> Self {
        Self::new(
            StatusCode::PRECONDITION_FAILED,
            "PreconditionFailed",
            format!("the {which} condition does not hold for this object"),
        )
    }

    /// 501 `NotImplemented`.
    pub fn not_implemented(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_IMPLEMENTED, "NotImplemented", message)
    }

    /// 503 `ServiceUnavailable`.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            message,
        )
    }

    /// 503 `SlowDown` with `Retry-After`: the client should back off and retry.
    pub fn slow_down(message: impl Into<String>) -> Self {
        Self {
            retry_after: Some(1),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "SlowDown", message)
        }
    }

    /// 500 `InternalError`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
    }

    /// Maps an origin failure for `key` of `bucket` to what the app sees.
    pub fn from_origin(err: OriginError, bucket: &str) -> Self {
        match err {
            OriginError::NotFound { key } => Self::no_such_key(bucket, &key),
            OriginError::InvalidKey { .. } => Self::access_denied(err.to_string()),
            OriginError::Denied { .. } => Self::access_denied(err.to_string()),
            OriginError::Unsupported { .. } => Self::not_implemented(err.to_string()),
            OriginError::Changed { .. } => {
                Self::unavailable(format!("{err}; retry to read the new version"))
            }
            OriginError::Unavailable { .. } => Self::unavailable(err.to_string()),
            OriginError::Busy { .. } => Self::slow_down(err.to_string()),
            OriginError::Corrupt { .. } => Self::internal(err.to_string()),
        }
    }

    /// The response: XML body (none for HEAD), `Content-Range` for 416.
    pub fn into_response(self, method: &Method, resource: &str) -> Response<ProxyBody> {
        let body = if method == Method::HEAD {
            ProxyBody::EMPTY
        } else {
            ProxyBody::full(xml::error(self.code, &self.message, resource))
        };
        let mut response = Response::new(body);
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/xml"),
        );
        // HEAD answers have no body: the code and message travel as headers
        // too (as S3 does), so a sidecar can pass a worker's reason on.
        headers.insert("x-amz-error-code", HeaderValue::from_static(self.code));
        let printable: String = self
            .message
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() || c == ' ' {
                    c
                } else {
                    '?'
                }
            })
            .collect();
        if let Ok(value) = HeaderValue::from_str(&printable) {
            headers.insert("x-amz-error-message", value);
        }
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Some(size) = self.object_size
            && let Ok(value) = HeaderValue::from_str(&format!("bytes */{size}"))
        {
            headers.insert(header::CONTENT_RANGE, value);
        }
        response
    }
}
