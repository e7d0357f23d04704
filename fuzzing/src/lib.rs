//! What each of Ferry's fuzz targets does with one input. The targets in
//! `fuzz/` (cargo-fuzz, nightly) call these; `tests/corpus.rs` replays every
//! file of `fuzz/corpus/<target>/` through them on stable, so each test run
//! checks the seeds and every crash ever found. An input may be refused;
//! none may panic or hang.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};

use ferry_config::{InjectionConfig, PolicyFile, ProxyConfig, SpiffeId, WatchEvent, from_yaml};
use ferry_control_plane::identity::ca::{CertificateAuthority, generate_issuer};
use ferry_control_plane::inject::{Injector, SidecarTemplate};
use ferry_proxy::mesh::Mesh;
use ferry_proxy::s3::FrontDoor;
use ferry_proxy::telemetry::Direction;

/// What a fuzz target does with one input.
pub type Target = fn(&[u8]);

/// The fuzz targets by name, as `fuzz/fuzz_targets/<name>.rs` and
/// `fuzz/corpus/<name>/` call them.
pub const TARGETS: [(&str, Target); 8] = [
    ("range_header", range_header),
    ("s3_request", s3_request),
    ("list_query", list_query),
    ("policy_yaml", policy_yaml),
    ("proxy_config", proxy_config),
    ("watch_line", watch_line),
    ("certify_request", certify_request),
    ("admission_review", admission_review),
];

/// The data set every front-door target reads: small, generated, local.
const WORKER: &str = "role: worker\nvirtual_host_domains: [localhost]\ndatasets:\n  \
                      - { name: data, origin: \"synthetic://?count=8&size=4KiB&seed=1\" }\n";

/// Longest any one request may take before the input counts as a hang.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

struct Door {
    runtime: tokio::runtime::Runtime,
    door: Arc<FrontDoor>,
    mesh: Arc<Mesh>,
}

fn door() -> &'static Door {
    static DOOR: OnceLock<Door> = OnceLock::new();
    DOOR.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the fuzz targets");
        let config: ProxyConfig = from_yaml(WORKER, "fuzz").expect("the fuzz worker's config");
        let (door, mesh) = runtime.block_on(async {
            let mesh = Mesh::new(config.clone(), None).expect("the fuzz worker's mesh");
            let door = FrontDoor::new(
                mesh.clone(),
                config.virtual_host_domains.clone(),
                Direction::Outbound,
                &config.limits,
            );
            (Arc::new(door), mesh)
        });
        Door {
            runtime,
            door,
            mesh,
        }
    })
}

/// Serves `request` through the front door and reads the whole answer.
fn serve(request: http::Request<Empty<Bytes>>) {
    let door = door();
    door.runtime.block_on(async {
        let answered = tokio::time::timeout(REQUEST_DEADLINE, async {
            let Ok(response) = door.door.clone().handle(request, None).await;
            let _ = response.into_body().collect().await;
        })
        .await;
        assert!(
            answered.is_ok(),
            "a request took longer than {REQUEST_DEADLINE:?}"
        );
    });
}

/// A GET of an object with the input as its `Range` header.
pub fn range_header(data: &[u8]) {
    let Ok(value) = http::HeaderValue::from_bytes(data) else {
        return;
    };
    let request = http::Request::get("/data/00000003.jpg")
        .header(http::header::RANGE, value)
        .body(Empty::new());
    if let Ok(request) = request {
        serve(request);
    }
}

/// An S3 request: the input's lines are the method, the path and query,
/// and the `Host` header.
pub fn s3_request(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.splitn(3, '\n');
    let method = lines.next().unwrap_or_default();
    let target = lines.next().unwrap_or("/");
    let host = lines.next().unwrap_or("localhost");
    let Ok(method) = http::Method::from_bytes(method.as_bytes()) else {
        return;
    };
    let request = http::Request::builder()
        .method(method)
        .uri(target)
        .header(http::header::HOST, host)
        .body(Empty::new());
    if let Ok(request) = request {
        serve(request);
    }
}

/// A listing of the data set with the input as its query string.
pub fn list_query(data: &[u8]) {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(request) = http::Request::get(format!("/data?{query}")).body(Empty::new()) {
        serve(request);
    }
}

/// A policy file, as a ConfigMap's `policy.yaml` or `--config-dir` gives it.
pub fn policy_yaml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(policy) = from_yaml::<PolicyFile>(text, "fuzz.yaml") {
        let _ = policy.check("fuzz.yaml");
    }
}

/// A proxy's configuration file.
pub fn proxy_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = from_yaml::<ProxyConfig>(text, "fuzz.yaml") {
        let _ = config.validate("fuzz.yaml");
    }
}

/// One line of the control plane's watch stream, applied to a worker's
/// mesh as a proxy would (building data sets connects to nothing until a
/// request comes).
pub fn watch_line(data: &[u8]) {
    let Ok(WatchEvent::Snapshot(snapshot)) = serde_json::from_slice::<WatchEvent>(data) else {
        return;
    };
    let door = door();
    door.runtime.block_on(async {
        let _ = door.mesh.apply(&snapshot);
    });
}

/// The body of a certify request (`{"csr": PEM}`), signed for a workload.
pub fn certify_request(data: &[u8]) {
    static CA: OnceLock<CertificateAuthority> = OnceLock::new();
    let ca = CA.get_or_init(|| {
        let state = std::env::temp_dir().join(format!("ferry-fuzz-ca-{}", std::process::id()));
        let config = ferry_config::ControlPlaneConfig {
            state_dir: state,
            ..ferry_config::ControlPlaneConfig::default()
        };
        let issuer = generate_issuer(&config.trust_domain).expect("an issuer");
        CertificateAuthority::open_with(&config, Some(issuer)).expect("a CA")
    });
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let Some(csr) = body.get("csr").and_then(|csr| csr.as_str()) else {
        return;
    };
    if let Ok(identity) = SpiffeId::workload("cluster.local", "train", "job") {
        let _ = ca.certify(csr, &identity);
    }
}

/// An AdmissionReview, as the API server posts it to the webhook.
pub fn admission_review(data: &[u8]) {
    static INJECTOR: OnceLock<Injector> = OnceLock::new();
    let injector = INJECTOR.get_or_init(|| {
        let template = SidecarTemplate {
            image: "ferry:fuzz".into(),
            image_pull_policy: "IfNotPresent".into(),
            control_plane_url: "https://ferry-control-plane.ferry-system.svc:8086".into(),
            control_plane_namespace: "ferry-system".into(),
            trust_bundle: String::new(),
            native: true,
            allow_mount: true,
        };
        let namespaces: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::from([(
            "train".to_owned(),
            BTreeMap::from([("ferry.dev/inject".to_owned(), "enabled".to_owned())]),
        )]);
        Injector::new(
            template,
            InjectionConfig::default().defaults,
            "ferry-system",
            Box::new(namespaces),
        )
    });
    let _ = injector.review(data);
}
