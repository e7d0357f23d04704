//! The sidecar's upstream: the same S3 requests a worker answers, each sent
//! to the worker that owns it, with failover, hedging, per-request deadlines
//! and a retry budget. It is an [`Origin`] to the chunk layer, so caching,
//! single-flight and read-ahead work exactly as on a worker.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;

use crate::origin::wire::{self, WEAK_PREFIX};
use crate::origin::{ListPage, ObjectMeta, Origin, OriginError, check_length};
use crate::outbound::balance::rendezvous::chunk_route;
use crate::outbound::balance::{Member, Pool};
use crate::telemetry::traces;
use tracing::Instrument;

/// Why one attempt at one worker failed.
enum AttemptError {
    /// The worker answered for the object: no other worker will say otherwise.
    Definite(OriginError),
    /// The worker could not answer; another one may.
    Retryable(String),
    /// The worker is overloaded (`SlowDown`): back-pressure to pass on to
    /// the app, not a failure to eject it for or to spill to another worker.
    Busy(String),
}

type Attempt<T> = Result<T, AttemptError>;

/// Attempts in flight for one request: the member, whether it is the hedge, the outcome.
type Running<'a, T> = FuturesUnordered<BoxFuture<'a, (Arc<Member>, bool, Attempt<T>)>>;

/// A data set's upstream on a sidecar: its pool, and optionally its origin
/// for when the whole pool is down.
pub struct PoolUpstream {
    pool: Arc<Pool>,
    bucket: String,
    fallback: Option<Arc<dyn Origin>>,
    describe: String,
}

impl PoolUpstream {
    /// Reads `bucket` from `pool`; `fallback` is read when no worker can answer.
    pub fn new(pool: Arc<Pool>, bucket: &str, fallback: Option<Arc<dyn Origin>>) -> Self {
        Self {
            describe: format!("pool '{}'", pool.name),
            pool,
            bucket: bucket.to_owned(),
            fallback,
        }
    }

    /// The pool.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    fn object_path(&self, key: &str) -> String {
        let mut path = String::with_capacity(self.bucket.len() + key.len() + 8);
        path.push('/');
        path.push_str(&self.bucket);
        path.push('/');
        wire::push_key(&mut path, key);
        path
    }

    /// Sends one request to `member`, recording time to headers.
    async fn send(
        &self,
        member: &Member,
        mut request: Request<Empty<Bytes>>,
        started_arriving: &AtomicBool,
    ) -> Attempt<http::Response<Incoming>> {
        // The worker's request span continues this attempt's trace.
        traces::inject(&tracing::Span::current(), request.headers_mut());
        let begun = Instant::now();
        let response = member
            .connection
            .send(request)
            .await
            .map_err(|e| AttemptError::Retryable(e.to_string()))?;
        started_arriving.store(true, Ordering::Release);
        let elapsed = begun.elapsed();
        member.metrics.latency.record(elapsed);
        self.pool.latency.record(elapsed);
        Ok(response)
    }

    /// What a worker's error response means; a refusal carries the
    /// worker's own message (which names the identity and the data set).
    async fn status_failure(
        &self,
        member: &Member,
        key: &str,
        response: http::Response<Incoming>,
    ) -> AttemptError {
        let status = response.status();
        if status == StatusCode::SERVICE_UNAVAILABLE
            && response
                .headers()
                .get("x-amz-error-code")
                .is_some_and(|code| code == "SlowDown")
        {
            member.metrics.busy.increment(1);
            return AttemptError::Busy(format!("worker {} asked to slow down", member.address));
        }
        match wire::definite_error(&self.describe, key, status) {
            Some(OriginError::Denied { origin, .. }) => {
                let message = error_message(response)
                    .await
                    .unwrap_or_else(|| format!("HTTP {status} for '{key}'"));
                AttemptError::Definite(OriginError::Denied {
                    origin,
                    detail: format!("worker {} said: {message}", member.address),
                })
            }
            Some(err) => AttemptError::Definite(err),
            None => AttemptError::Retryable(format!("{} answered HTTP {status}", member.address)),
        }
    }

    async fn head_at(
        &self,
        member: Arc<Member>,
        key: &str,
        arriving: Arc<AtomicBool>,
    ) -> Attempt<ObjectMeta> {
        let request = Request::head(self.object_path(key))
            .header(header::HOST, member.address.as_str())
            .body(Empty::new())
            .map_err(|e| unsendable(key, e))?;
        let response = self.send(&member, request, &arriving).await?;
        if !response.status().is_success() {
            return Err(self.status_failure(&member, key, response).await);
        }
        wire::meta_from_head(key, response.headers()).map_err(AttemptError::Retryable)
    }

    async fn read_at(
        &self,
        member: Arc<Member>,
        key: &str,
        range: Range<u64>,
        etag: &str,
        arriving: Arc<AtomicBool>,
    ) -> Attempt<Bytes> {
        let mut request = Request::get(self.object_path(key))
            .header(header::HOST, member.address.as_str())
            .header(header::RANGE, wire::range_header(&range));
        if !etag.starts_with(WEAK_PREFIX) {
            request = request.header(header::IF_MATCH, format!("\"{etag}\""));
        }
        let request = request.body(Empty::new()).map_err(|e| unsendable(key, e))?;
        let response = self.send(&member, request, &arriving).await?;
        let status = response.status();
        let whole = status == StatusCode::OK && range.start == 0;
        if status != StatusCode::PARTIAL_CONTENT && !whole {
            return Err(if status.is_success() {
                AttemptError::Retryable(format!(
                    "{} answered {status} to a range request",
                    member.address
                ))
            } else {
                self.status_failure(&member, key, response).await
            });
        }
        if status == StatusCode::PARTIAL_CONTENT
            && !wire::content_range_starts_at(response.headers(), range.start)
        {
            return Err(AttemptError::Retryable(format!(
                "{} answered a different range",
                member.address
            )));
        }
        let want = (range.end - range.start) as usize;
        let mut body = response.into_body();
        let mut buf = BytesMut::with_capacity(want);
        while let Some(frame) = body.frame().await {
            let frame = frame
                .map_err(|e| AttemptError::Retryable(format!("{}: body: {e}", member.address)))?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > want {
                    return Err(AttemptError::Retryable(format!(
                        "{} sent too many bytes",
                        member.address
                    )));
                }
                buf.extend_from_slice(&data);
            }
        }
        check_length(&member.address, key, &range, buf.len())
            .map_err(|e| AttemptError::Retryable(e.to_string()))?;
        Ok(buf.freeze())
    }

    async fn list_at(
        &self,
        member: Arc<Member>,
        prefix: &str,
        start_after: Option<&str>,
        max: usize,
        arriving: Arc<AtomicBool>,
    ) -> Attempt<ListPage> {
        let (member, arriving) = (&member, &arriving);
        let fetch = |query: String| async move {
            let request = wire::list_request(&self.bucket, &member.address, &query)
                .map_err(|e| unsendable(prefix, e))?;
            let response = self.send(member, request, arriving).await?;
            if !response.status().is_success() {
                return Err(self.status_failure(member, prefix, response).await);
            }
            wire::list_xml(response.into_body())
                .await
                .map_err(|e| AttemptError::Retryable(format!("{}: {e}", member.address)))
        };
        wire::list_pages(prefix, start_after, max, fetch, || {
            AttemptError::Retryable(format!(
                "{} sent a listing that is not S3 XML",
                member.address
            ))
        })
        .await
    }

    /// Runs `attempt` against the candidates for `route` until one answers:
    /// failover on retryable errors, one hedge when the first is slow, all
    /// within the retry budget; `fallback` when no worker can answer.
    async fn run<'a, T, A, F>(
        &'a self,
        what: &str,
        route: u64,
        attempt: A,
        fallback: F,
    ) -> Result<T, OriginError>
    where
        T: Send + 'a,
        A: Fn(Arc<Member>, Arc<AtomicBool>) -> BoxFuture<'a, Attempt<T>>,
        F: FnOnce(&'a dyn Origin) -> BoxFuture<'a, Result<T, OriginError>>,
    {
        let (candidates, everyone_ejected) = self.pool.ranked(route);
        self.pool.budget.record_request();
        let timeout = self.pool.chunk_timeout;
        let mut failures: Vec<String> = Vec::new();
        let mut next = 0;
        let mut started = 0usize;
        let mut running: Running<'a, T> = FuturesUnordered::new();
        // The attempt a hedge may race: its worker, and whether its headers came.
        let mut primary: Option<(Arc<Member>, Arc<AtomicBool>)> = None;
        let hedge_delay = self.pool.hedge_after();
        let mut hedge = hedge_delay.map(|delay| Box::pin(tokio::time::sleep(delay)));

        // Starts the next candidate that will take a request; false if none is left.
        let launch = |hedged: bool,
                      attempt_number: usize,
                      next: &mut usize,
                      running: &mut Running<'a, T>,
                      failures: &mut Vec<String>|
         -> Option<(Arc<Member>, Arc<AtomicBool>)> {
            while *next < candidates.len() {
                let member = Arc::clone(&candidates[*next]);
                *next += 1;
                if !everyone_ejected && !member.claim() {
                    failures.push(format!("{}: ejected", member.address));
                    continue;
                }
                let arriving = Arc::new(AtomicBool::new(false));
                let guard = member.start();
                let span = tracing::debug_span!(
                    "upstream attempt",
                    otel.kind = "client",
                    worker = member.address.as_str(),
                    attempt = attempt_number,
                    hedged,
                    what,
                );
                let work = attempt(Arc::clone(&member), Arc::clone(&arriving));
                running.push(Box::pin(
                    async move {
                        let result = match tokio::time::timeout(timeout, work).await {
                            Ok(result) => result,
                            Err(_) => Err(AttemptError::Retryable(format!(
                                "no answer within {timeout:?}"
                            ))),
                        };
                        drop(guard);
                        (member, hedged, result)
                    }
                    .instrument(span),
                ) as BoxFuture<'a, _>);
                return Some((candidates[*next - 1].clone(), arriving));
            }
            None
        };

        loop {
            if running.is_empty() {
                if started > 0 && next < candidates.len() && !self.pool.budget.try_retry() {
                    failures.push("retry budget exhausted".to_owned());
                    break;
                }
                match launch(false, started + 1, &mut next, &mut running, &mut failures) {
                    Some(launched) => {
                        started += 1;
                        primary = Some(launched);
                    }
                    None => break,
                }
            }
            tokio::select! {
                Some((member, hedged, result)) = running.next() => match result {
                    Ok(value) => {
                        self.pool.succeeded(&member);
                        if hedged {
                            member.metrics.hedges_won.increment(1);
                            if let Some((primary, arriving)) = &primary
                                && !arriving.load(Ordering::Acquire)
                            {
                                self.pool.beaten_by_hedge(primary);
                            }
                        }
                        // Dropping `running` cancels the loser (RST_STREAM).
                        return Ok(value);
                    }
                    Err(AttemptError::Definite(err)) => {
                        self.pool.succeeded(&member);
                        return Err(err);
                    }
                    Err(AttemptError::Retryable(why)) => {
                        self.pool.failed(&member);
                        member.metrics.failovers.increment(1);
                        failures.push(format!("{}: {why}", member.address));
                    }
                    // A hedge still running may answer; else the app backs off.
                    Err(AttemptError::Busy(why)) => {
                        if running.is_empty() {
                            return Err(OriginError::Busy {
                                origin: self.describe.clone(),
                                detail: why,
                            });
                        }
                        failures.push(format!("{}: {why}", member.address));
                    }
                },
                () = async { if let Some(timer) = hedge.as_mut() { timer.await } }, if hedge.is_some() => {
                    hedge = None;
                    let slow = primary.as_ref().is_some_and(|(_, a)| !a.load(Ordering::Acquire));
                    if slow
                        && running.len() == 1
                        && next < candidates.len()
                        && self.pool.budget.try_retry()
                        && launch(true, started + 1, &mut next, &mut running, &mut failures).is_some()
                    {
                        started += 1;
                        if let Some(member) = candidates.get(next - 1) {
                            member.metrics.hedges.increment(1);
                        }
                    }
                }
            }
        }
        self.pool_down(what, failures, fallback).await
    }

    async fn pool_down<'a, T, F>(
        &'a self,
        what: &str,
        failures: Vec<String>,
        fallback: F,
    ) -> Result<T, OriginError>
    where
        F: FnOnce(&'a dyn Origin) -> BoxFuture<'a, Result<T, OriginError>>,
    {
        let detail = if failures.is_empty() {
            format!("it has no members to serve {what}")
        } else {
            format!("no worker could serve {what}: {}", failures.join("; "))
        };
        match &self.fallback {
            Some(origin) => {
                tracing::warn!(pool = %self.pool.name, %detail, origin = origin.describe(), "reading the origin directly");
                fallback(origin.as_ref()).await
            }
            None => Err(OriginError::Unavailable {
                origin: self.describe.clone(),
                detail,
            }),
        }
    }
}

/// The message of an S3 error: its `x-amz-error-message` header, or the
/// `<Message>` of its body (read at most 16 KiB).
async fn error_message(response: http::Response<Incoming>) -> Option<String> {
    if let Some(message) = response
        .headers()
        .get("x-amz-error-message")
        .and_then(|v| v.to_str().ok())
    {
        return Some(message.to_owned());
    }
    let body = http_body_util::Limited::new(response.into_body(), 16 * 1024)
        .collect()
        .await
        .ok()?
        .to_bytes();
    let text = String::from_utf8_lossy(&body);
    let start = text.find("<Message>")? + "<Message>".len();
    let end = text[start..].find("</Message>")? + start;
    quick_xml::escape::unescape(&text[start..end])
        .ok()
        .map(|m| m.into_owned())
}

/// A key that cannot even be put in a request: no worker could serve it.
fn unsendable(key: &str, _: http::Error) -> AttemptError {
    AttemptError::Definite(OriginError::InvalidKey {
        key: key.to_owned(),
        why: "it cannot be sent in an HTTP request",
    })
}

impl Origin for PoolUpstream {
    fn describe(&self) -> &str {
        &self.describe
    }

    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<ObjectMeta, OriginError>> {
        Box::pin(async move {
            self.run(
                &format!("HEAD '{key}'"),
                chunk_route(key, 0),
                |member, arriving| Box::pin(self.head_at(member, key, arriving)),
                |origin| origin.head(key),
            )
            .await
        })
    }

    fn read<'a>(
        &'a self,
        key: &'a str,
        range: Range<u64>,
        etag: &'a str,
    ) -> BoxFuture<'a, Result<Bytes, OriginError>> {
        Box::pin(async move {
            let what = format!(
                "bytes {}-{} of '{key}'",
                range.start,
                range.end.saturating_sub(1)
            );
            let fallback_range = range.clone();
            self.run(
                &what,
                chunk_route(key, range.start),
                |member, arriving| {
                    Box::pin(self.read_at(member, key, range.clone(), etag, arriving))
                },
                move |origin| origin.read(key, fallback_range, etag),
            )
            .await
        })
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        start_after: Option<&'a str>,
        max: usize,
    ) -> BoxFuture<'a, Result<ListPage, OriginError>> {
        Box::pin(async move {
            let mut route = String::with_capacity(prefix.len() + 5);
            route.push_str("list:");
            route.push_str(prefix);
            self.run(
                &format!("LIST '{prefix}'"),
                chunk_route(&route, 0),
                |member, arriving| {
                    Box::pin(self.list_at(member, prefix, start_after, max, arriving))
                },
                move |origin| origin.list(prefix, start_after, max),
            )
            .await
        })
    }
}
