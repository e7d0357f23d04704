//! `ferryctl check` against admin endpoints that answer with canned mesh
//! states the real processes are slow to reach: a pool without workers, an
//! ejected worker, an empty pool at a sidecar, a refused snapshot.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use ferry_control_plane::ctl::Target;
use ferry_control_plane::ctl::check::{self, CheckSettings, Severity};
use ferry_control_plane::ctl::stat;

/// Serves `pages` (path → body) over HTTP on a port of its own.
async fn serve(pages: Vec<(&'static str, String)>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let pages = pages.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let page = pages
                        .iter()
                        .find(|(path, _)| *path == request.uri().path())
                        .map(|(_, body)| body.clone());
                    async move {
                        let mut response = http::Response::new(Full::new(Bytes::from(
                            page.clone().unwrap_or_default(),
                        )));
                        if page.is_none() {
                            *response.status_mut() = http::StatusCode::NOT_FOUND;
                        }
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn settings(control_plane: Option<SocketAddr>) -> CheckSettings {
    CheckSettings {
        control_plane: control_plane.map(|a| a.to_string()),
        expiry_warning: Duration::from_secs(3600),
        timeout: Duration::from_secs(5),
    }
}

fn has(report: &check::CheckReport, severity: Severity, text: &str) -> bool {
    report
        .findings
        .iter()
        .any(|f| f.severity == severity && format!("{} {}", f.subject, f.message).contains(text))
}

#[tokio::test]
async fn a_pool_without_workers_fails_with_advice() {
    let plane = serve(vec![
        ("/ready", "ready\n".into()),
        (
            "/policies",
            r#"{"version":7,"documents":[],"discovered_pools":[],
               "pools":[{"pool":"workers","members":0},{"pool":"spare","members":3}],
               "datasets_without_pool":[],"refused":[]}"#
                .into(),
        ),
        ("/proxies", r#"{"proxies":[]}"#.into()),
    ])
    .await;
    let report = check::run(&[], &settings(Some(plane))).await;
    assert!(!report.ok);
    assert!(has(&report, Severity::Ok, "configuration version 7"));
    assert!(has(&report, Severity::Fail, "pool workers has no workers"));
    assert!(has(&report, Severity::Ok, "pool spare 3 workers"));
    let empty = report
        .findings
        .iter()
        .find(|f| f.subject == "pool workers")
        .expect("the empty pool");
    assert!(
        empty
            .advice
            .as_deref()
            .is_some_and(|a| a.contains("ferry.dev/cache-pool"))
    );
    assert!(
        has(&report, Severity::Warn, "none to check"),
        "no proxies listed"
    );
}

#[tokio::test]
async fn an_ejected_worker_and_an_empty_pool_at_a_sidecar_are_reported() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let metrics = format!(
        "# TYPE identity_cert_expiry_timestamp_seconds gauge\n\
         identity_cert_expiry_timestamp_seconds {}\n\
         # TYPE control_plane_connected gauge\n\
         control_plane_connected 1\n\
         # TYPE config_version gauge\n\
         config_version 4\n\
         # TYPE pool_members gauge\n\
         pool_members{{pool=\"workers\"}} 2\n\
         pool_members{{pool=\"gone\"}} 0\n\
         # TYPE upstream_member_ejected gauge\n\
         upstream_member_ejected{{pool=\"workers\",member=\"10.0.0.7:4143\"}} 1\n\
         upstream_member_ejected{{pool=\"workers\",member=\"10.0.0.8:4143\"}} 0\n",
        now + 20 * 3600 + 30
    );
    let config = r#"{"role":"sidecar","control_plane":{"connected":true,"version":4,
        "applied_at":1,"last_error":"the control plane's snapshot is unreadable: unknown field `shard`",
        "refused_version":5}}"#;
    let sidecar = serve(vec![
        ("/ready", "ready\n".into()),
        ("/metrics", metrics),
        ("/config", config.into()),
    ])
    .await;
    let target = Target::named(sidecar.to_string());
    let report = check::run(&[target], &settings(None)).await;
    assert!(!report.ok, "an empty pool fails");
    assert!(has(
        &report,
        Severity::Fail,
        "refused the control plane's snapshot version 5: the control plane's snapshot is unreadable"
    ));
    assert!(has(&report, Severity::Ok, "certificate valid for 20h"));
    assert!(has(&report, Severity::Ok, "configuration version 4"));
    assert!(has(
        &report,
        Severity::Fail,
        "pool gone has no workers here"
    ));
    assert!(has(
        &report,
        Severity::Warn,
        "worker 10.0.0.7:4143 of pool workers is ejected"
    ));
    assert!(
        !has(&report, Severity::Warn, "10.0.0.8"),
        "a healthy worker is not reported"
    );
}

#[tokio::test]
async fn an_unreachable_proxy_fails() {
    let unused = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = unused.local_addr().expect("addr");
    drop(unused);
    let target = Target::named(addr.to_string());
    let report = check::run(&[target], &settings(None)).await;
    assert!(!report.ok);
    assert!(has(&report, Severity::Fail, "unreachable"));
}

#[tokio::test]
async fn stat_shows_each_worker_as_the_sidecar_sees_it() {
    let labels = |member: &str| format!("pool=\"workers\",member=\"{member}\"");
    let (a, b) = (labels("10.0.0.7:4143"), labels("10.0.0.8:4143"));
    let metrics = format!(
        "# TYPE upstream_requests_total counter\n\
         upstream_requests_total{{{a}}} 90\n\
         upstream_requests_total{{{b}}} 10\n\
         # TYPE upstream_failovers_total counter\n\
         upstream_failovers_total{{{a}}} 0\n\
         upstream_failovers_total{{{b}}} 4\n\
         # TYPE upstream_hedges_total counter\n\
         upstream_hedges_total{{{a}}} 3\n\
         upstream_hedges_total{{{b}}} 0\n\
         # TYPE upstream_hedges_won_total counter\n\
         upstream_hedges_won_total{{{a}}} 2\n\
         upstream_hedges_won_total{{{b}}} 0\n\
         # TYPE upstream_member_ejected gauge\n\
         upstream_member_ejected{{{a}}} 0\n\
         upstream_member_ejected{{{b}}} 1\n\
         # TYPE upstream_response_latency_seconds histogram\n\
         upstream_response_latency_seconds_bucket{{{a},le=\"0.001\"}} 0\n\
         upstream_response_latency_seconds_bucket{{{a},le=\"0.01\"}} 90\n\
         upstream_response_latency_seconds_bucket{{{a},le=\"+Inf\"}} 90\n\
         upstream_response_latency_seconds_sum{{{a}}} 0.4\n\
         upstream_response_latency_seconds_count{{{a}}} 90\n"
    );
    let sidecar = serve(vec![("/metrics", metrics)]).await;
    let target = Target::named(sidecar.to_string());
    let scrape = stat::scrape(&[target], Duration::from_secs(5)).await;
    let report = stat::report(None, &scrape);
    assert_eq!(report.workers.len(), 2, "{:?}", report.workers);
    let busy = &report.workers[0];
    assert_eq!(busy.member, "10.0.0.7:4143");
    assert_eq!(busy.requests, 90.0);
    assert_eq!((busy.hedges, busy.hedges_won), (3.0, 2.0));
    assert!(!busy.ejected);
    // Half of the 90 fall below 5.5 ms in the 1..10 ms bucket.
    assert!((busy.p50_ms.expect("p50") - 5.5).abs() < 1e-9);
    let sick = &report.workers[1];
    assert_eq!(sick.failovers, 4.0);
    assert!(sick.ejected);
    assert!(sick.p99_ms.is_none(), "no latency observed");
    let mut printed = Vec::new();
    stat::print(
        &report,
        ferry_control_plane::ctl::Output::Table,
        &mut printed,
    )
    .expect("print");
    let printed = String::from_utf8(printed).expect("utf-8");
    assert!(
        printed.contains("WORKERS (as sidecars see them)"),
        "{printed}"
    );
    let line = printed
        .lines()
        .find(|l| l.contains("10.0.0.8:4143"))
        .expect("the sick worker's row");
    assert!(
        line.contains("ejected") && line.contains("10 req"),
        "{line}"
    );
}
