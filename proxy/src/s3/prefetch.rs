//! The front door's one endpoint that is not S3: `/v1/prefetch/{bucket}`,
//! where a training job posts the order its next epoch will read (`POST`),
//! follows the prefetcher (`GET`) or stops it (`DELETE`). Answers are JSON,
//! errors too (`{"code": …, "message": …}`). `v1` is no valid bucket name,
//! so the path never hides a bucket.

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use percent_encoding::percent_decode_str;
use serde::Serialize;

use super::body::ProxyBody;
use super::error::S3Error;
use crate::dataset::{Dataset, OrderError};
use crate::prefetch::order;

/// Where the endpoint lives.
pub const PATH: &str = "/v1/prefetch/";

/// Largest order body: a million keys of 100 bytes, with room to spare.
/// Compact orders (a prefix or the previous keys, and a seed) are bytes.
const MAX_ORDER_BYTES: usize = 256 * 1024 * 1024;

/// The bucket a prefetch request names, if the path is the endpoint's.
pub fn bucket_of(path: &str) -> Option<Result<String, S3Error>> {
    let rest = path.strip_prefix(PATH)?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    Some(if rest.is_empty() || rest.contains('/') {
        Err(S3Error::invalid_uri(format!(
            "'{path}' names no bucket: use {PATH}{{bucket}}"
        )))
    } else {
        percent_decode_str(rest)
            .decode_utf8()
            .map(|b| b.into_owned())
            .map_err(|_| S3Error::invalid_uri(format!("'{rest}' does not decode to UTF-8")))
    })
}

/// Answers a prefetch request for `dataset` (found and authorized).
pub async fn answer<B>(dataset: &Dataset, request: Request<B>) -> Response<ProxyBody>
where
    B: http_body::Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let chunks = &dataset.chunks;
    match *request.method() {
        Method::GET | Method::HEAD => match dataset.prefetch.status(chunks) {
            Some(status) => json(StatusCode::OK, &status),
            None => no_order(dataset),
        },
        Method::DELETE => {
            if dataset.prefetch.stop(chunks) {
                let mut response = Response::new(ProxyBody::EMPTY);
                *response.status_mut() = StatusCode::NO_CONTENT;
                response
            } else {
                no_order(dataset)
            }
        }
        Method::POST => post(dataset, request).await,
        ref other => {
            let mut response = error(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!("{other} is not one of POST (an order), GET (its progress) or DELETE"),
            );
            response.headers_mut().insert(
                header::ALLOW,
                HeaderValue::from_static("POST, GET, HEAD, DELETE"),
            );
            response
        }
    }
}

async fn post<B>(dataset: &Dataset, request: Request<B>) -> Response<ProxyBody>
where
    B: http_body::Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "EntityTooLarge",
            format!(
                "an order has at most {MAX_ORDER_BYTES} bytes: describe a long one compactly (a prefix or the previous keys, and a permutation)"
            ),
        )
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_ORDER_BYTES as u64) {
        return too_large();
    }
    let body = match Limited::new(request.into_body(), MAX_ORDER_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => return too_large(),
        Err(err) => {
            return error(
                StatusCode::BAD_REQUEST,
                "IncompleteBody",
                format!("the order's body could not be read: {err}"),
            );
        }
    };
    let spec = match order::parse(&body) {
        Ok(spec) => spec,
        Err(bad) => return error(StatusCode::BAD_REQUEST, "MalformedOrder", bad.0),
    };
    drop(body);
    match dataset.post_order(spec).await {
        Ok(status) => json(StatusCode::ACCEPTED, &status),
        Err(OrderError::Bad(bad)) => error(StatusCode::BAD_REQUEST, "MalformedOrder", bad.0),
        Err(err @ OrderError::NoKeys) => {
            error(StatusCode::CONFLICT, "NoPreviousKeys", err.to_string())
        }
        Err(OrderError::Origin(err)) => {
            let err = S3Error::from_origin(err, &dataset.policy.bucket);
            error(err.status, err.code, err.message)
        }
        Err(err @ OrderError::Lost) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            err.to_string(),
        ),
    }
}

fn no_order(dataset: &Dataset) -> Response<ProxyBody> {
    error(
        StatusCode::NOT_FOUND,
        "NoSuchOrder",
        format!(
            "no order is being prefetched for bucket '{}'",
            dataset.policy.bucket
        ),
    )
}

/// An S3 error as this endpoint's JSON error.
pub fn from_s3(err: S3Error) -> Response<ProxyBody> {
    error(err.status, err.code, err.message)
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response<ProxyBody> {
    #[derive(Serialize)]
    struct Error<'a> {
        code: &'a str,
        message: String,
    }
    json(
        status,
        &Error {
            code,
            message: message.into(),
        },
    )
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<ProxyBody> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut response = Response::new(ProxyBody::full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_names_one_bucket() {
        assert_eq!(
            bucket_of("/v1/prefetch/data").map(|r| r.ok()),
            Some(Some("data".into()))
        );
        assert_eq!(
            bucket_of("/v1/prefetch/data/").map(|r| r.ok()),
            Some(Some("data".into()))
        );
        assert!(bucket_of("/v1/prefetch/").is_some_and(|r| r.is_err()));
        assert!(bucket_of("/v1/prefetch/a/b").is_some_and(|r| r.is_err()));
        assert!(bucket_of("/data/v1/prefetch/x").is_none());
    }
}
