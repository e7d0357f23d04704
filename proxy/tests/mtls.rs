//! Mesh identity and mutual TLS with real processes: the control plane
//! issues certificates, a sidecar and a worker talk over mTLS, and every way
//! a peer can be wrong is refused with its own error and counter.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::plane::ControlPlane;
use common::{ProxyProcess, TempDir};
use ferry_config::SyntheticSpec;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use reqwest::StatusCode;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

const SPEC: &str = "count=40&size=30KiB&seed=3";
fn expected(index: u64) -> Vec<u8> {
    common::synthetic_object(SPEC, index)
}

fn key_of(index: u64) -> String {
    SyntheticSpec::from_query(SPEC).expect("spec").key(index)
}

fn worker(plane: &ControlPlane, token: &str, extra: &[&str]) -> ProxyProcess {
    let origin = format!("synthetic://?{SPEC}");
    let mut args: Vec<String> = ["worker", "--origin", &origin, "--bucket", "imagenet"]
        .map(str::to_owned)
        .into();
    args.extend(plane.flags(token));
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    ProxyProcess::start(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn sidecar(
    plane: &ControlPlane,
    token: &str,
    workers: &[&ProxyProcess],
    extra: &[&str],
) -> ProxyProcess {
    let pool = workers
        .iter()
        .map(|w| w.inbound.expect("inbound").to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut args: Vec<String> = [
        "sidecar",
        "--pool",
        &pool,
        "--bucket",
        "imagenet",
        "--cache-size",
        "0",
    ]
    .map(str::to_owned)
    .into();
    args.extend(plane.flags(token));
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    ProxyProcess::start(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

const ALLOW_TRAIN: &[&str] = &["--allow", "spiffe://cluster.local/ns/train/sa/*"];

#[tokio::test(flavor = "multi_thread")]
async fn allowed_identities_read_over_mtls_and_others_are_denied_by_name() {
    let dir = TempDir::new("mtls-authz");
    let plane = ControlPlane::start(dir.path(), &[]);
    let worker = worker(&plane, "worker-token", ALLOW_TRAIN);
    let trainer = sidecar(&plane, "train-token", &[&worker], &[]);
    let intruder = sidecar(&plane, "other-token", &[&worker], &[]);
    let client = reqwest::Client::new();
    for index in 0..5 {
        let body = client
            .get(trainer.url(&format!("/imagenet/{}", key_of(index))))
            .send()
            .await
            .expect("get")
            .bytes()
            .await
            .expect("body");
        assert!(body[..] == expected(index)[..], "object {index}");
    }
    let denied = client
        .get(intruder.url(&format!("/imagenet/{}", key_of(1))))
        .send()
        .await
        .expect("get");
    assert_eq!(denied.status(), StatusCode::FORBIDDEN);
    let text = denied.text().await.expect("text");
    assert!(text.contains("<Code>AccessDenied</Code>"), "{text}");
    assert!(
        text.contains("spiffe://cluster.local/ns/other/sa/intruder") && text.contains("imagenet"),
        "the refusal names the identity and the data set: {text}"
    );
    assert!(
        worker
            .metric("inbound_authz_denied_total", &[("dataset", "imagenet")])
            .await
            >= 1.0
    );
    let identity = common::get_json(&client, trainer.admin_url("/identity")).await;
    assert_eq!(
        identity["spiffe_id"],
        "spiffe://cluster.local/ns/train/sa/job"
    );
    assert!(
        trainer
            .metric("identity_cert_expiry_timestamp_seconds", &[])
            .await
            > 0.0
    );
}

/// Defense in depth for tenancy: a worker serves a namespace's data set to
/// that namespace alone, even where its `allow` list says more.
#[tokio::test(flavor = "multi_thread")]
async fn a_namespace_data_set_is_served_to_that_namespace_only() {
    let dir = TempDir::new("mtls-tenant");
    let plane = ControlPlane::start(dir.path(), &[]);
    let config = dir.path().join("worker.yaml");
    std::fs::write(
        &config,
        format!(
            "role: worker\nlisten: 127.0.0.1:0\nadmin: 127.0.0.1:0\ninbound: 127.0.0.1:0\n\
             identity: {{ mode: control-plane, control_plane: \"{}\", token: worker-token, \
             trust_bundle: \"{}\", watch: false }}\n\
             datasets:\n  - {{ name: imagenet, bucket: imagenet, origin: \"synthetic://?{SPEC}\", \
             namespace: train, allow: [\"spiffe://cluster.local/ns/*/sa/*\"] }}\n",
            plane.url,
            plane.bundle.display()
        ),
    )
    .expect("config");
    let worker = ProxyProcess::start(&["--config", config.to_str().expect("path")]);
    let trainer = sidecar(&plane, "train-token", &[&worker], &[]);
    let intruder = sidecar(&plane, "other-token", &[&worker], &[]);
    let client = reqwest::Client::new();
    let body = client
        .get(trainer.url(&format!("/imagenet/{}", key_of(2))))
        .send()
        .await
        .expect("get")
        .bytes()
        .await
        .expect("body");
    assert!(body[..] == expected(2)[..], "train reads its own data set");
    let denied = client
        .get(intruder.url(&format!("/imagenet/{}", key_of(2))))
        .send()
        .await
        .expect("get");
    assert_eq!(denied.status(), StatusCode::FORBIDDEN);
    let text = denied.text().await.expect("text");
    assert!(
        text.contains("<Code>AccessDenied</Code>")
            && text.contains("spiffe://cluster.local/ns/other/sa/intruder")
            && text.contains("belongs to namespace &apos;train&apos;"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_with_another_identity_is_a_failed_attempt_naming_both() {
    let dir = TempDir::new("mtls-mismatch");
    let plane = ControlPlane::start(dir.path(), &[]);
    let worker = worker(&plane, "worker-token", &[]);
    let proxy = sidecar(
        &plane,
        "train-token",
        &[&worker],
        &[
            "--worker-identity",
            "spiffe://cluster.local/ns/ferry/sa/someone-else",
        ],
    );
    let response = reqwest::get(proxy.url(&format!("/imagenet/{}", key_of(2))))
        .await
        .expect("get");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let text = response.text().await.expect("text");
    assert!(
        text.contains("spiffe://cluster.local/ns/ferry/sa/worker") && text.contains("someone-else"),
        "both identities are named: {text}"
    );
    assert!(
        proxy
            .metric("upstream_identity_mismatches_total", &[])
            .await
            >= 1.0
    );
}

/// Accepts any server certificate: these tests are about the client's.
#[derive(Debug)]
struct AnyServer;

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A certificate for `spiffe://cluster.local/ns/train/sa/job`, valid from
/// `from` to `until` (offsets from now), signed by `issuer`.
fn client_certificate(
    issuer: &Issuer<'_, KeyPair>,
    from: time::Duration,
    until: time::Duration,
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = CertificateParams::default();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now + from;
    params.not_after = now + until;
    params.subject_alt_names = vec![SanType::URI(
        "spiffe://cluster.local/ns/train/sa/job"
            .try_into()
            .expect("uri"),
    )];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, issuer).expect("sign");
    let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).expect("key der");
    (vec![cert.der().clone()], key)
}

/// Connects to `address` with the given client certificate (or none), sends
/// one HTTP/1.1 request and returns what the TLS and HTTP layers said.
async fn attempt(
    address: std::net::SocketAddr,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<u16, String> {
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("versions")
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AnyServer));
    let mut config = match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let stream = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("worker").expect("name"), stream)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request = http::Request::get(format!("/imagenet/{}", key_of(0)))
        .header("host", "worker")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("request");
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    Ok(response.status().as_u16())
}

async fn refused_with(
    reason: &str,
    identity: impl FnOnce(
        &ControlPlane,
    ) -> Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) {
    let dir = TempDir::new(&format!("mtls-{reason}"));
    let plane = ControlPlane::start(dir.path(), &[]);
    let worker = worker(&plane, "worker-token", &[]);
    let outcome = attempt(worker.inbound.expect("inbound"), identity(&plane)).await;
    assert!(
        outcome.is_err(),
        "{reason}: the worker answered {outcome:?}"
    );
    let refused = worker
        .metric(
            "inbound_tls_handshake_failures_total",
            &[("reason", reason)],
        )
        .await;
    assert_eq!(refused, 1.0, "{reason} is counted: {outcome:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_on_the_inbound_port_is_refused_and_counted() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = TempDir::new("mtls-garbage");
    let plane = ControlPlane::start(dir.path(), &[]);
    let worker = worker(&plane, "worker-token", &[]);
    let inbound = worker.inbound.expect("inbound");
    for probe in [
        &b"GET /imagenet/x HTTP/1.1\r\nHost: worker\r\n\r\n"[..],
        &[0x16, 0x03, 0x01, 0xff, 0xff, 0x00, 0x13, 0x37, 0xde, 0xad][..],
    ] {
        let mut stream = tokio::net::TcpStream::connect(inbound)
            .await
            .expect("connect");
        stream.write_all(probe).await.expect("send");
        let mut answer = Vec::new();
        let closed = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            stream.read_to_end(&mut answer),
        )
        .await;
        assert!(
            closed.is_ok(),
            "the worker closes a connection that is not TLS"
        );
        assert!(
            !String::from_utf8_lossy(&answer).contains("HTTP/1.1"),
            "and never answers it in HTTP"
        );
    }
    let refused = worker
        .metric(
            "inbound_tls_handshake_failures_total",
            &[("reason", "not_tls")],
        )
        .await;
    assert_eq!(refused, 2.0, "both probes are counted");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_client_certificate_is_refused() {
    refused_with("no_certificate", |_| None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_from_another_ca_is_refused() {
    refused_with("unknown_issuer", |_| {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let other = Issuer::new(params, key);
        Some(client_certificate(
            &other,
            time::Duration::minutes(-5),
            time::Duration::hours(1),
        ))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_certificate_is_refused() {
    refused_with("expired", |plane| {
        Some(client_certificate(
            &plane.issuer(),
            time::Duration::hours(-2),
            time::Duration::hours(-1),
        ))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_not_yet_valid_certificate_is_refused() {
    refused_with("not_yet_valid", |plane| {
        Some(client_certificate(
            &plane.issuer(),
            time::Duration::hours(1),
            time::Duration::hours(2),
        ))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_valid_certificate_outside_the_allow_list_gets_403() {
    let dir = TempDir::new("mtls-allow");
    let plane = ControlPlane::start(dir.path(), &[]);
    let worker = worker(
        &plane,
        "worker-token",
        &["--allow", "spiffe://cluster.local/ns/eval/sa/*"],
    );
    let identity = client_certificate(
        &plane.issuer(),
        time::Duration::minutes(-5),
        time::Duration::hours(1),
    );
    let status = attempt(worker.inbound.expect("inbound"), Some(identity)).await;
    assert_eq!(status, Ok(403));
    assert_eq!(
        worker
            .metric("inbound_authz_denied_total", &[("dataset", "imagenet")])
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_connections_do_not_starve_real_handshakes() {
    let dir = TempDir::new("mtls-flood");
    let plane = ControlPlane::start(dir.path(), &[]);
    let dir_path = dir.path().to_path_buf();
    let config = dir_path.join("worker.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\ninbound: 127.0.0.1:0\nidentity:\n  mode: control-plane\n  \
             control_plane: {}\n  token: worker-token\n  trust_bundle: {}\n  handshake_timeout: 2s\n  max_handshakes: 2\n\
             datasets:\n  - name: imagenet\n    origin: 'synthetic://?{SPEC}'\n",
            plane.url,
            plane.bundle.display()
        ),
    )
    .expect("config");
    let worker = ProxyProcess::start(&["--config", config.to_str().expect("path")]);
    let inbound = worker.inbound.expect("inbound");
    // Far more silent connections than handshake slots.
    let mut silent = Vec::new();
    for _ in 0..50 {
        silent.push(
            tokio::net::TcpStream::connect(inbound)
                .await
                .expect("connect"),
        );
    }
    let proxy = sidecar(&plane, "train-token", &[&worker], &[]);
    let body = reqwest::get(proxy.url(&format!("/imagenet/{}", key_of(4))))
        .await
        .expect("get")
        .bytes()
        .await
        .expect("body");
    assert!(body[..] == expected(4)[..], "a real handshake got through");
    // The silent ones are dropped at the deadline and counted.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let timeouts = worker
            .metric(
                "inbound_tls_handshake_failures_total",
                &[("reason", "timeout")],
            )
            .await;
        if timeouts >= 50.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {timeouts} timeouts counted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(silent);
}

#[tokio::test(flavor = "multi_thread")]
async fn old_and_new_anchors_let_old_and_new_certificates_talk() {
    let dir = TempDir::new("mtls-rotation");
    let old_dir = dir.path().join("old");
    let new_dir = dir.path().join("new");
    std::fs::create_dir_all(&old_dir).expect("mkdir");
    std::fs::create_dir_all(&new_dir).expect("mkdir");
    let old = ControlPlane::start(&old_dir, &[]);
    let old_ca = old.state.join("ca.pem");
    // The new issuer publishes the old anchor beside itself.
    let new = ControlPlane::start(
        &new_dir,
        &["--extra-anchors", old_ca.to_str().expect("path")],
    );
    let bundle = std::fs::read_to_string(&new.bundle).expect("bundle");
    assert_eq!(
        bundle.matches("BEGIN CERTIFICATE").count(),
        2,
        "old and new anchors"
    );
    // Both proxies trust both anchors; the worker holds an old certificate,
    // the sidecar a new one.
    let worker = {
        let origin = format!("synthetic://?{SPEC}");
        ProxyProcess::start(&[
            "worker",
            "--origin",
            &origin,
            "--bucket",
            "imagenet",
            "--control-plane",
            &old.url,
            "--token",
            "worker-token",
            "--trust-bundle",
            new.bundle.to_str().expect("path"),
        ])
    };
    let proxy = {
        let pool = worker.inbound.expect("inbound").to_string();
        ProxyProcess::start(&[
            "sidecar",
            "--pool",
            &pool,
            "--bucket",
            "imagenet",
            "--control-plane",
            &new.url,
            "--token",
            "train-token",
            "--trust-bundle",
            new.bundle.to_str().expect("path"),
        ])
    };
    let body = reqwest::get(proxy.url(&format!("/imagenet/{}", key_of(6))))
        .await
        .expect("get")
        .bytes()
        .await
        .expect("body");
    assert!(body[..] == expected(6)[..]);
}

#[tokio::test(flavor = "multi_thread")]
async fn certificates_are_renewed_under_load_without_a_failed_read() {
    let dir = TempDir::new("mtls-renewal");
    // 3 s certificates: renewed about every 2 s.
    let plane = ControlPlane::start(dir.path(), &["--cert-lifetime", "3s"]);
    let worker = worker(&plane, "worker-token", &[]);
    let proxy = sidecar(&plane, "train-token", &[&worker], &[]);
    let client = reqwest::Client::new();
    let identity = |address: String| {
        let client = client.clone();
        async move {
            let value = common::get_json(&client, address).await;
            value["issued_at"].as_u64().expect("issued_at")
        }
    };
    let first = identity(proxy.admin_url("/identity")).await;
    let worker_first = identity(worker.admin_url("/identity")).await;
    let started = std::time::Instant::now();
    let mut reads = 0u64;
    // Read until both proxies have renewed twice (bounded by a deadline).
    loop {
        let index = reads % 40;
        let response = client
            .get(proxy.url(&format!("/imagenet/{}", key_of(index))))
            .send()
            .await
            .expect("get");
        assert_eq!(response.status(), StatusCode::OK, "read {reads}");
        assert!(
            response.bytes().await.expect("body")[..] == expected(index)[..],
            "read {reads}"
        );
        reads += 1;
        if started.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
    let last = identity(proxy.admin_url("/identity")).await;
    let worker_last = identity(worker.admin_url("/identity")).await;
    assert!(
        last >= first + 2,
        "the sidecar renewed: issued {first} then {last}"
    );
    assert!(
        worker_last >= worker_first + 2,
        "the worker renewed: issued {worker_first} then {worker_last}"
    );
    let issued = reqwest::get(format!("http://{}/metrics", plane.admin))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let count = common::sum_samples(&issued, "identity_certificates_issued_total", &[]);
    assert!(
        count >= 6.0,
        "at least two renewals each: {count} certificates issued"
    );
    assert!(reads > 50, "reads went on throughout: {reads}");
}

/// A TCP front for the control plane that drops every connection until
/// opened, then forwards them.
async fn gated_front(to: String, open: Arc<std::sync::atomic::AtomicBool>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            if !open.load(std::sync::atomic::Ordering::SeqCst) {
                continue; // dropped: the proxy sees a failed attempt
            }
            let to = to.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    format!("https://{address}")
}

#[tokio::test(flavor = "multi_thread")]
async fn ready_is_false_until_the_first_certificate_is_held() {
    let dir = TempDir::new("mtls-ready");
    let plane = ControlPlane::start(dir.path(), &[]);
    let open = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let front = gated_front(
        plane.url.trim_start_matches("https://").to_owned(),
        open.clone(),
    )
    .await;
    let origin = format!("synthetic://?{SPEC}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry-proxy"))
        .args(["worker", "--origin", &origin, "--bucket", "imagenet"])
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(["--inbound", "127.0.0.1:0"])
        .args(["--control-plane", &front, "--token", "worker-token"])
        .args(["--trust-bundle", plane.bundle.to_str().expect("path")])
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start worker");
    let lines = common::read_lines(child.stdout.take().expect("stdout"));
    let _child = KillOnDrop(child);
    let waiting = lines
        .recv_timeout(Duration::from_secs(10))
        .expect("a waiting line");
    let waiting: serde_json::Value = serde_json::from_str(&waiting).expect("json");
    assert_eq!(waiting["event"], "waiting", "{waiting}");
    let admin = waiting["admin"].as_str().expect("admin").to_owned();
    let get = |path: &str| {
        let url = format!("http://{admin}{path}");
        async move { reqwest::get(url).await.expect("admin answers").status() }
    };
    assert_eq!(get("/live").await, StatusCode::OK);
    assert_eq!(get("/ready").await, StatusCode::SERVICE_UNAVAILABLE);
    // The front door answers at once, saying what it waits for, rather
    // than holding the client on a connection nobody serves.
    let listen = waiting["listen"].as_str().expect("listen");
    let early = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client")
        .get(format!("http://{listen}/imagenet/00000001.jpg"))
        .send()
        .await
        .expect("an answer, not a hang");
    assert_eq!(early.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = early.text().await.expect("body");
    assert!(
        body.contains("<Code>ServiceUnavailable</Code>")
            && body.contains("waits for its first certificate"),
        "{body}"
    );
    open.store(true, std::sync::atomic::Ordering::SeqCst);
    let ready = lines
        .recv_timeout(Duration::from_secs(20))
        .expect("ready once the control plane answers");
    assert!(ready.contains(r#""event":"ready""#), "{ready}");
    assert_eq!(get("/ready").await, StatusCode::OK);
}

/// A child process killed when the test ends, passed or not.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ca_key_is_private_and_never_logged_or_exported() {
    let dir = TempDir::new("mtls-key");
    let plane = ControlPlane::start(dir.path(), &[]);
    let _worker = worker(&plane, "worker-token", &[]);
    let key_path = plane.state.join("ca.key");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key_path)
        .expect("key")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let key = std::fs::read_to_string(&key_path).expect("key");
    let body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(body.len() > 40);
    let metrics = reqwest::get(format!("http://{}/metrics", plane.admin))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let logs = plane.stderr.lock().expect("lock").clone();
    for line in key.lines().filter(|l| !l.starts_with("-----")) {
        assert!(
            !logs.contains(line),
            "a line of the CA key appears in the logs"
        );
        assert!(
            !metrics.contains(line),
            "a line of the CA key appears in the metrics"
        );
    }
    assert!(
        logs.contains("issued a workload certificate"),
        "logs were captured: {logs}"
    );
}
