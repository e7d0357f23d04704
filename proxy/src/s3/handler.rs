//! The S3 front door: routes each request to its data set and answers from
//! the chunk layer, streaming multi-chunk bodies as chunks arrive.

use std::convert::Infallible;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use futures::{StreamExt, stream};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};

use super::body::ProxyBody;
use super::conditional::{self, Precondition};
use super::error::S3Error;
use super::prefetch;
use super::range::ByteRange;
use super::route::{self, Operation};
use super::token;
use super::xml::{self, ListingFlavour, ListingPage};
use crate::admission::{Admission, Admitted};
use crate::chunk::ReadAhead;
use crate::dataset::{Dataset, DatasetRead, Datasets};
use crate::mesh::Mesh;
use crate::metadata::ObjectInfo;
use crate::metadata::list::ListRequest;
use crate::origin::OriginError;
use crate::telemetry::traces;
use crate::telemetry::{Direction, TrafficMetrics};
use ferry_config::{Limits, SpiffeId, SpiffePattern};
use metrics::counter;
use tracing::Instrument;

/// Most keys one listing page returns (S3's limit).
const MAX_KEYS: usize = 1000;

/// Serves the S3 API for a set of data sets.
pub struct FrontDoor {
    /// What the proxy still waits for before it serves (`None`: nothing).
    waiting: std::sync::Mutex<Option<&'static str>>,
    /// Whether `waiting` is `None`, read without the lock on every request.
    serving: std::sync::atomic::AtomicBool,
    mesh: Arc<Mesh>,
    domains: Vec<String>,
    started: SystemTime,
    direction: Direction,
    /// With mutual TLS: the trust domain whose workloads a data set with no
    /// `allow` list is served to. `None`: no authorization (plaintext).
    authorize: Option<String>,
    /// Bounds on requests and response bytes at once.
    admission: Admission,
}

impl FrontDoor {
    /// A front door for the data sets of `mesh` on the `direction`
    /// listener, within `limits`; `domains` are virtual-host suffixes.
    pub fn new(
        mesh: Arc<Mesh>,
        domains: Vec<String>,
        direction: Direction,
        limits: &Limits,
    ) -> Self {
        Self {
            waiting: std::sync::Mutex::new(None),
            serving: std::sync::atomic::AtomicBool::new(true),
            mesh,
            domains,
            started: SystemTime::now(),
            direction,
            authorize: None,
            admission: Admission::new(limits, direction.as_str()),
        }
    }

    /// Authorizes every request by its peer's identity against the data
    /// set's `allow` list, when `trust_domain` is given.
    pub fn authorizing(mut self, trust_domain: Option<String>) -> Self {
        self.authorize = trust_domain;
        self
    }

    /// Until [`FrontDoor::wait_for`]`(None)`, answers every request with a
    /// 503 saying that the proxy waits for `what` (rather than leaving
    /// clients hanging on a connection nobody answers).
    pub fn wait_for(&self, what: Option<&'static str>) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        *waiting = what;
        self.serving
            .store(what.is_none(), std::sync::atomic::Ordering::Release);
    }

    /// Answers one request; failures are S3 error responses, never panics.
    /// `peer` is the caller's verified identity (mutual TLS only).
    pub async fn handle<B>(
        self: Arc<Self>,
        request: Request<B>,
        peer: Option<Arc<SpiffeId>>,
    ) -> Result<Response<ProxyBody>, Infallible>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if let Some(bucket) = self.prefetch_bucket(&request) {
            return Ok(self.prefetch(bucket, request, peer.as_deref()).await);
        }
        if let Some(refused) = malformed(&request) {
            let metrics = self.mesh.datasets();
            let metrics = metrics.unknown(self.direction);
            metrics.requests.increment(1);
            metrics.count_response(refused.status.as_u16());
            return Ok(refused.into_response(request.method(), ""));
        }
        if !self.serving.load(std::sync::atomic::Ordering::Acquire)
            && let Some(what) = *self.waiting.lock().unwrap_or_else(|p| p.into_inner())
        {
            let error = S3Error::unavailable(format!(
                "ferry-proxy is starting: it waits for {what}; retry shortly"
            ));
            return Ok(error.into_response(request.method(), request.uri().path()));
        }
        let started = Instant::now();
        // Only a sampled request has spans: the rest cost a coin toss.
        let span = match traces::sampled(request.headers(), self.direction == Direction::Outbound) {
            Some(parent) => {
                let span = tracing::debug_span!(
                    "request",
                    otel.kind = "server",
                    http.request.method = request.method().as_str(),
                    url.path = request.uri().path(),
                    direction = self.direction.as_str(),
                    dataset = tracing::field::Empty,
                    cache.outcome = tracing::field::Empty,
                    http.response.status_code = tracing::field::Empty,
                );
                traces::set_parent(&span, parent);
                span
            }
            None => tracing::Span::none(),
        };
        // One configuration for the whole request, even if it changes meanwhile.
        let datasets = self.mesh.datasets();
        let (response, dataset) = self
            .dispatch(&datasets, &request, peer.as_deref(), &span)
            .instrument(span.clone())
            .await;
        let metrics: &TrafficMetrics = match &dataset {
            Some(dataset) => dataset.metrics.traffic(self.direction),
            None => datasets.unknown(self.direction),
        };
        if !span.is_disabled() {
            span.record("http.response.status_code", response.status().as_u16());
            if let Some(dataset) = &dataset {
                span.record("dataset", dataset.policy.name.as_str());
            }
        }
        metrics.requests.increment(1);
        metrics.count_response(response.status().as_u16());
        // Streamed bodies count their bytes as they go out.
        if let Some(len) = response.body().full_len()
            && request.method() != Method::HEAD
        {
            metrics.response_bytes.increment(len as u64);
        }
        metrics.latency.record(started.elapsed());
        Ok(response)
    }

    async fn dispatch<B>(
        &self,
        datasets: &Datasets,
        request: &Request<B>,
        peer: Option<&SpiffeId>,
        span: &tracing::Span,
    ) -> (Response<ProxyBody>, Option<Arc<Dataset>>) {
        let uri = request.uri();
        let method = request.method();
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| uri.host());
        let operation = match route::route(method, uri, host, &self.domains) {
            Ok(operation) => operation,
            Err(err) => return (err.into_response(method, uri.path()), None),
        };
        let bucket = match &operation {
            Operation::ListBuckets => {
                return (self.list_buckets(datasets), None);
            }
            Operation::HeadBucket { bucket }
            | Operation::GetBucketLocation { bucket }
            | Operation::ListObjects { bucket, .. }
            | Operation::GetObject { bucket, .. }
            | Operation::HeadObject { bucket, .. } => bucket.as_ref(),
        };
        let Some(dataset) = datasets.get(bucket) else {
            return (
                S3Error::no_such_bucket(bucket).into_response(method, uri.path()),
                None,
            );
        };
        if let Err(denied) = self.authorized(dataset, peer) {
            return (
                denied.into_response(method, uri.path()),
                Some(dataset.clone()),
            );
        }
        let mut admitted = match self.admission.admit().await {
            Ok(admitted) => admitted,
            Err(refused) => {
                let error = S3Error::slow_down(refused.message(self.admission.wait()));
                return (
                    error.into_response(method, uri.path()),
                    Some(dataset.clone()),
                );
            }
        };
        let result = match &operation {
            Operation::HeadBucket { .. } => Ok(empty(StatusCode::OK)),
            Operation::GetBucketLocation { .. } => Ok(xml_response(xml::bucket_location())),
            Operation::ListObjects { v2, .. } => list_objects(dataset, request, *v2).await,
            Operation::GetObject { key, .. } | Operation::HeadObject { key, .. } => {
                let read = ObjectRead {
                    dataset,
                    key,
                    head_only: matches!(operation, Operation::HeadObject { .. }),
                    direction: self.direction,
                    span,
                    admission: &self.admission,
                };
                read.respond(request.headers(), &mut admitted).await
            }
            Operation::ListBuckets => Ok(self.list_buckets(datasets)),
        };
        let response = result
            .unwrap_or_else(|err| err.into_response(method, uri.path()))
            .map(|body| body.holding(admitted));
        (response, Some(dataset.clone()))
    }

    /// The bucket of a request to the prefetch endpoint. A virtual-hosted
    /// GET of that path is a key of its bucket, not the endpoint.
    fn prefetch_bucket<B>(&self, request: &Request<B>) -> Option<Result<String, S3Error>> {
        let bucket = prefetch::bucket_of(request.uri().path())?;
        let reads = matches!(*request.method(), Method::GET | Method::HEAD);
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok());
        if reads && route::virtual_host_bucket(host, &self.domains).is_some() {
            return None;
        }
        Some(bucket)
    }

    /// Answers `/v1/prefetch/{bucket}` for a peer that may read the bucket.
    async fn prefetch<B>(
        &self,
        bucket: Result<String, S3Error>,
        request: Request<B>,
        peer: Option<&SpiffeId>,
    ) -> Response<ProxyBody>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let bucket = match bucket {
            Ok(bucket) => bucket,
            Err(err) => return prefetch::from_s3(err),
        };
        let datasets = self.mesh.datasets();
        let Some(dataset) = datasets.get(&bucket) else {
            return prefetch::from_s3(S3Error::no_such_bucket(&bucket));
        };
        if let Err(denied) = self.authorized(dataset, peer) {
            return prefetch::from_s3(denied);
        }
        prefetch::answer(dataset, request).await
    }

    /// Whether `peer` may read `dataset`: always without authorization; with
    /// it, when the peer is of the data set's namespace (if a namespace owns
    /// it) and a pattern of its `allow` list (or, if it has none, any
    /// workload of the trust domain) matches, or when the peer has this
    /// proxy's own identity (another worker of the pool, reading the
    /// listing a warm-up shares).
    fn authorized(&self, dataset: &Dataset, peer: Option<&SpiffeId>) -> Result<(), S3Error> {
        let Some(trust_domain) = &self.authorize else {
            return Ok(());
        };
        let name = &dataset.policy.name;
        let allowed = peer.is_some_and(|peer| {
            if let Some(owner) = &dataset.policy.namespace
                && peer.namespace() != Some(owner.as_str())
            {
                return false;
            }
            if dataset.policy.allow.is_empty() {
                SpiffePattern::any_workload(trust_domain).matches(peer)
            } else {
                dataset
                    .policy
                    .allow
                    .iter()
                    .any(|pattern| pattern.matches(peer))
            }
        });
        if allowed || peer.is_some_and(|peer| self.mesh.own_id().as_ref() == Some(peer)) {
            return Ok(());
        }
        counter!("inbound_authz_denied_total", "dataset" => name.clone()).increment(1);
        let who = peer.map_or_else(|| "an unidentified peer".to_owned(), |p| p.to_string());
        tracing::info!(identity = %who, dataset = %name, "denied access to a data set");
        let owner = dataset
            .policy
            .namespace
            .as_ref()
            .map(|n| format!(" (it belongs to namespace '{n}')"))
            .unwrap_or_default();
        Err(S3Error::access_denied(format!(
            "identity {who} is not allowed to read data set '{name}'{owner}"
        )))
    }

    fn list_buckets(&self, datasets: &Datasets) -> Response<ProxyBody> {
        let buckets = datasets.iter().map(|d| d.policy.bucket.as_str());
        xml_response(xml::list_buckets(buckets, self.started))
    }
}

/// Longest path and query accepted (S3 keys are at most 1,024 bytes; the
/// head as a whole is bounded by `limits.max_header_bytes`, past which
/// hyper answers 431 before the request gets here).
const MAX_URI_BYTES: usize = 8 * 1024;

/// What is wrong with a request before it is routed: a URI too long for
/// any key (414), or a read that carries a body (400, never read).
fn malformed<B: http_body::Body>(request: &Request<B>) -> Option<S3Error> {
    let uri = request.uri();
    let uri_len = uri.path().len() + uri.query().map_or(0, str::len);
    if uri_len > MAX_URI_BYTES {
        return Some(S3Error::uri_too_long(uri_len, MAX_URI_BYTES));
    }
    let read = matches!(*request.method(), Method::GET | Method::HEAD);
    if read && !request.body().is_end_stream() {
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|len| len != "0");
        let chunked = request.headers().contains_key(header::TRANSFER_ENCODING);
        // HTTP/2 marks a bodiless request by ending the stream with its
        // headers; over HTTP/1.1 a body is announced by one of these.
        if declared || chunked || request.version() == http::Version::HTTP_2 {
            return Some(S3Error::invalid_request(format!(
                "a {} carries no body: send it without one",
                request.method()
            )));
        }
    }
    None
}

fn empty(status: StatusCode) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::EMPTY);
    *response.status_mut() = status;
    response
}

fn xml_response(document: String) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(document));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/xml"),
    );
    response
}

/// Maps an origin failure, forgetting metadata the origin says is stale.
fn origin_failure(dataset: &Dataset, err: OriginError) -> S3Error {
    dataset.forget_if_changed(&err);
    S3Error::from_origin(err, &dataset.policy.bucket)
}

/// The headers every object response carries.
fn object_headers(headers: &mut HeaderMap, info: &ObjectInfo) {
    headers.insert(header::ETAG, info.etag_header.clone());
    headers.insert(header::LAST_MODIFIED, info.last_modified_header.clone());
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
}

/// A GET or HEAD of one object.
struct ObjectRead<'a> {
    dataset: &'a Arc<Dataset>,
    key: &'a str,
    head_only: bool,
    direction: Direction,
    span: &'a tracing::Span,
    admission: &'a Admission,
}

impl ObjectRead<'_> {
    async fn respond(
        &self,
        request_headers: &HeaderMap,
        admitted: &mut Admitted,
    ) -> Result<Response<ProxyBody>, S3Error> {
        let dataset = self.dataset;
        let info = dataset
            .metadata
            .object(self.key)
            .await
            .map_err(|e| origin_failure(dataset, e))?;
        if conditional::evaluate(request_headers, &info.meta.etag, info.meta.modified)?
            == Precondition::NotModified
        {
            let mut response = empty(StatusCode::NOT_MODIFIED);
            object_headers(response.headers_mut(), &info);
            return Ok(response);
        }
        let size = info.meta.size;
        let (range, partial) = match request_headers.get(header::RANGE) {
            Some(value) => {
                let text = value
                    .to_str()
                    .map_err(|_| S3Error::invalid_argument("Range header is not ASCII"))?;
                let parsed = ByteRange::parse(text)?;
                (parsed.resolve(size, text)?, parsed.is_partial())
            }
            None => (0..size, false),
        };
        let body = if self.head_only || range.is_empty() {
            ProxyBody::EMPTY
        } else {
            self.body(&info, range.clone(), admitted).await?
        };
        let mut response = Response::new(body);
        let headers = response.headers_mut();
        object_headers(headers, &info);
        headers.insert(
            header::CONTENT_LENGTH,
            HeaderValue::from(range.end - range.start),
        );
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        if partial {
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
            let content_range = format!("bytes {}-{}/{size}", range.start, range.end - 1);
            if let Ok(value) = HeaderValue::from_str(&content_range) {
                response.headers_mut().insert(header::CONTENT_RANGE, value);
            }
        }
        Ok(response)
    }

    /// The body for a non-empty `range`: the first chunk is in hand before
    /// the response starts (so an origin failure is a clean 503), the rest
    /// stream as the chunk layer delivers them. Read-ahead is the app's
    /// front door's: a worker's inbound requests come from sidecars that
    /// read ahead themselves. The bytes the body can hold at once (its
    /// first chunk and a window of the next) are reserved first.
    async fn body(
        &self,
        info: &Arc<ObjectInfo>,
        range: Range<u64>,
        admitted: &mut Admitted,
    ) -> Result<ProxyBody, S3Error> {
        let dataset = self.dataset;
        let ahead = match self.direction {
            Direction::Outbound | Direction::Mount => ReadAhead::IfSequential,
            Direction::Inbound => ReadAhead::Never,
        };
        let remaining = range.end - range.start;
        self.admission
            .reserve(admitted, remaining.min(dataset.chunks.window_bytes()))
            .await
            .map_err(|refused| S3Error::slow_down(refused.message(self.admission.wait())))?;
        let DatasetRead { chunks: read, turn } = dataset
            .read(info, range, ahead)
            .await
            .map_err(|e| S3Error::from_origin(e, &dataset.policy.bucket))?;
        if !self.span.is_disabled() {
            self.span
                .record("cache.outcome", read.first_source.as_str());
        }
        let body = match read.rest {
            None => ProxyBody::full(read.head),
            Some(rest) => ProxyBody::stream(
                stream::once(futures::future::ready(Ok(read.head)))
                    .chain(rest)
                    .boxed(),
                remaining,
                dataset
                    .metrics
                    .traffic(self.direction)
                    .response_bytes
                    .clone(),
            ),
        };
        Ok(body.in_turn(turn))
    }
}

async fn list_objects<B>(
    dataset: &Arc<Dataset>,
    request: &Request<B>,
    v2: bool,
) -> Result<Response<ProxyBody>, S3Error> {
    let mut prefix = String::new();
    let mut delimiter = None;
    let mut max_keys = MAX_KEYS;
    let mut start_after = None;
    let mut token = None;
    let mut marker = String::new();
    let mut url_encoded = false;
    for (name, value) in route::query_pairs(request.uri()) {
        match name.as_ref() {
            "prefix" => prefix = value.into_owned(),
            "delimiter" => delimiter = Some(value.into_owned()),
            "max-keys" => {
                max_keys = value
                    .parse::<usize>()
                    .map_err(|_| {
                        S3Error::invalid_argument(format!(
                            "max-keys '{value}' is not a whole number"
                        ))
                    })?
                    .min(MAX_KEYS)
            }
            "start-after" => start_after = Some(value.into_owned()),
            "continuation-token" => token = Some(value.into_owned()),
            "marker" => marker = value.into_owned(),
            "encoding-type" if value == "url" => url_encoded = true,
            "encoding-type" => {
                return Err(S3Error::invalid_argument(format!(
                    "encoding-type '{value}' is unknown: expected url"
                )));
            }
            _ => {}
        }
    }
    let after = if v2 {
        match &token {
            Some(token) => token::decode_token(token).ok_or_else(|| {
                S3Error::invalid_argument(format!(
                    "continuation-token '{token}' is not one Ferry issued"
                ))
            })?,
            None => start_after.clone().unwrap_or_default(),
        }
    } else {
        marker.clone()
    };
    let outcome = dataset
        .list(&ListRequest {
            prefix: &prefix,
            delimiter: delimiter.as_deref(),
            max_keys,
            after: &after,
        })
        .await
        .map_err(|e| origin_failure(dataset, e))?;
    let page = ListingPage {
        bucket: &dataset.policy.bucket,
        prefix: &prefix,
        delimiter: delimiter.as_deref(),
        max_keys,
        url_encoded,
        objects: &outcome.objects,
        common_prefixes: &outcome.common_prefixes,
        truncated: outcome.truncated,
    };
    let next_token = outcome.next_after.as_deref().map(token::encode_token);
    let flavour = if v2 {
        ListingFlavour::V2 {
            start_after: start_after.as_deref(),
            continuation_token: token.as_deref(),
            next_continuation_token: next_token.as_deref(),
        }
    } else {
        ListingFlavour::V1 {
            marker: &marker,
            next_marker: outcome.next_after.as_deref(),
        }
    };
    Ok(xml_response(page.to_xml(&flavour)))
}
