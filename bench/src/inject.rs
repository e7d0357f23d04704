//! `ferry-bench inject`: how long the injection webhook takes to answer.
//!
//! 1. Direct: the webhook's own server (TLS, HTTP/2, the same code the
//!    control plane runs) answers AdmissionReviews one after another on one
//!    connection, as the API server sends them; a pod it injects against a
//!    pod it only looks at (the baseline, in the same run).
//! 2. Through a real kube-apiserver (with `--kube-assets`, `kube-env`): Pod
//!    creations (server-side dry run: admitted, never stored) in a namespace
//!    the webhook injects against one it is never called for.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use serde_json::{Value, json};

use ferry_config::{ControlPlaneConfig, InjectionConfig, SpiffeId};
use ferry_control_plane::api_certificate::ApiCertificate;
use ferry_control_plane::identity::CertificateAuthority;
use ferry_control_plane::inject::{Injector, SidecarTemplate};

use crate::report::Table;

/// Flags of `ferry-bench inject`.
#[derive(Args, Debug)]
pub struct InjectArgs {
    /// Timed admissions of each kind.
    #[arg(long, default_value_t = 1000)]
    pub admissions: usize,
    /// Untimed admissions first (connection, allocator, caches).
    #[arg(long, default_value_t = 100)]
    pub warmup: usize,
    /// The folder of kube-env: also measure through a real kube-apiserver.
    #[arg(long, env = "FERRY_TEST_KUBE_ASSETS")]
    pub kube_assets: Option<PathBuf>,
    /// Write the results as JSON here too.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Latencies of one kind of request, in milliseconds.
#[derive(Debug, Serialize)]
pub struct Latencies {
    what: String,
    count: usize,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

impl Latencies {
    fn of(what: &str, mut samples: Vec<Duration>) -> Self {
        samples.sort();
        let at = |q: f64| {
            let index = ((samples.len() as f64 * q).ceil() as usize).saturating_sub(1);
            samples.get(index).map_or(0.0, |d| d.as_secs_f64() * 1e3)
        };
        Self {
            what: what.to_owned(),
            count: samples.len(),
            p50_ms: at(0.50),
            p90_ms: at(0.90),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }
}

/// Everything `inject` measured.
#[derive(Debug, Serialize)]
pub struct InjectReport {
    direct: Vec<Latencies>,
    api_server: Vec<Latencies>,
}

/// Runs `ferry-bench inject`.
pub async fn run(args: &InjectArgs) -> anyhow::Result<InjectReport> {
    let dir = std::env::temp_dir().join(format!("ferry-bench-inject-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let direct = direct(args, &dir).await;
    let api_server = match &args.kube_assets {
        Some(assets) => through_api_server(args, assets, &dir).await,
        None => {
            eprintln!("ferry-bench inject: no --kube-assets: measuring the webhook directly only");
            Ok(Vec::new())
        }
    };
    let _ = std::fs::remove_dir_all(&dir);
    let report = InjectReport {
        direct: direct?,
        api_server: api_server?,
    };
    let mut table = Table::new(&["measured", "count", "p50 ms", "p90 ms", "p99 ms", "max ms"]);
    for row in report.direct.iter().chain(&report.api_server) {
        table.row(vec![
            row.what.clone(),
            row.count.to_string(),
            format!("{:.3}", row.p50_ms),
            format!("{:.3}", row.p90_ms),
            format!("{:.3}", row.p99_ms),
            format!("{:.3}", row.max_ms),
        ]);
    }
    table.print();
    if let Some(path) = &args.json {
        crate::report::write_json(path, &report)?;
    }
    Ok(report)
}

/// The AdmissionReview of a training pod's creation in `namespace`.
fn review(namespace: &str, index: usize) -> Value {
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": format!("train-{index}"), "namespace": namespace,
                      "labels": { "job-name": "epoch" } },
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                { "name": "trainer", "image": "pytorch/pytorch", "command": ["python", "train.py"],
                  "env": [{ "name": "EPOCHS", "value": "90" }],
                  "resources": { "limits": { "nvidia.com/gpu": "8" } } },
                { "name": "logger", "image": "fluent-bit" },
            ],
        },
    });
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": format!("00000000-0000-0000-0000-{index:012}"),
            "kind": { "group": "", "version": "v1", "kind": "Pod" },
            "resource": { "group": "", "version": "v1", "resource": "pods" },
            "namespace": namespace, "operation": "CREATE",
            "userInfo": { "username": "system:serviceaccount:kube-system:job-controller" },
            "object": pod, "dryRun": false,
        }
    })
}

/// The webhook's server in this process, answered over TLS and HTTP/2.
async fn direct(args: &InjectArgs, dir: &Path) -> anyhow::Result<Vec<Latencies>> {
    let config = ControlPlaneConfig {
        state_dir: dir.join("ca"),
        ..ControlPlaneConfig::default()
    };
    let ca = Arc::new(CertificateAuthority::open(&config)?);
    let template = SidecarTemplate {
        image: "ferry:bench".into(),
        image_pull_policy: "IfNotPresent".into(),
        control_plane_url: "https://ferry-control-plane.ferry-system.svc:8086".into(),
        control_plane_namespace: "ferry-system".into(),
        trust_bundle: ca.bundle_pem(),
        native: true,
        allow_mount: false,
    };
    let namespaces: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::from([
        (
            "train".to_owned(),
            BTreeMap::from([("ferry.dev/inject".to_owned(), "enabled".to_owned())]),
        ),
        ("plain".to_owned(), BTreeMap::new()),
    ]);
    let injector = Arc::new(Injector::new(
        template,
        InjectionConfig::default().defaults,
        "ferry-system",
        Box::new(namespaces),
    ));
    let identity = SpiffeId::workload("cluster.local", "ferry-system", "ferry-control-plane")
        .map_err(anyhow::Error::msg)?;
    let certificate = ApiCertificate::start(ca.clone(), vec!["127.0.0.1".into()], identity)?;
    let mut tls = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(certificate);
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("https://{}/v1/inject", listener.local_addr()?);
    let server = tokio::spawn(ferry_control_plane::inject::serve(
        listener,
        tokio_rustls::TlsAcceptor::from(Arc::new(tls)),
        injector.clone(),
    ));
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.bundle_pem().as_bytes())?])
        .build()?;
    let mut rows = Vec::new();
    for (what, namespace) in [
        ("direct: pod looked at and let through (baseline)", "plain"),
        ("direct: pod injected", "train"),
    ] {
        let mut samples = Vec::with_capacity(args.admissions);
        for index in 0..args.warmup + args.admissions {
            let body = review(namespace, index).to_string();
            let started = Instant::now();
            let response = client.post(&url).body(body).send().await?;
            anyhow::ensure!(
                response.status().is_success(),
                "the webhook answered {}",
                response.status()
            );
            let answer: Value = serde_json::from_slice(&response.bytes().await?)?;
            let elapsed = started.elapsed();
            let patched = answer["response"]["patch"].is_string();
            anyhow::ensure!(
                patched == (namespace == "train"),
                "unexpected answer: {answer}"
            );
            if index >= args.warmup {
                samples.push(elapsed);
            }
        }
        rows.push(Latencies::of(what, samples));
    }
    // The webhook's own work, without TLS or HTTP: decide and patch.
    let mut samples = Vec::with_capacity(args.admissions);
    for index in 0..args.admissions {
        let body = review("train", index).to_string();
        let started = Instant::now();
        injector
            .review(body.as_bytes())
            .map_err(anyhow::Error::msg)?;
        samples.push(started.elapsed());
    }
    rows.push(Latencies::of("in process: decide and patch only", samples));
    server.abort();
    Ok(rows)
}

/// Pod creations through a real kube-apiserver, with and without the webhook.
async fn through_api_server(
    args: &InjectArgs,
    assets: &Path,
    dir: &Path,
) -> anyhow::Result<Vec<Latencies>> {
    let kube_dir = dir.join("kube");
    let output = Command::new(assets.join("kube-env"))
        .args(["up", &kube_dir.display().to_string()])
        .output()
        .context("running kube-env")?;
    anyhow::ensure!(
        output.status.success(),
        "kube-env up failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let _down = KubeEnvDown {
        assets: assets.to_owned(),
        dir: kube_dir.clone(),
    };
    let kubeconfig = kube_dir.join("kubeconfig");
    let client = {
        let kubeconfig = kube::config::Kubeconfig::read_from(&kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
        kube::Client::try_from(config)?
    };
    use kube::api::{Api, Patch, PatchParams, PostParams};
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    for (name, annotations) in [
        ("ferry-system", json!({})),
        ("train", json!({ "ferry.dev/inject": "enabled" })),
    ] {
        let manifest = json!({ "apiVersion": "v1", "kind": "Namespace",
                               "metadata": { "name": name, "annotations": annotations } });
        namespaces
            .patch(
                name,
                &PatchParams::apply("ferry-bench").force(),
                &Patch::Apply(&manifest),
            )
            .await?;
        let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(client.clone(), name);
        let account = json!({ "apiVersion": "v1", "kind": "ServiceAccount",
                              "metadata": { "name": "default", "namespace": name } });
        accounts
            .patch(
                "default",
                &PatchParams::apply("ferry-bench").force(),
                &Patch::Apply(&account),
            )
            .await?;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let configurations: Api<
        k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration,
    > = Api::all(client.clone());
    let webhook = json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": { "name": "ferry-sidecar-injector" },
        "webhooks": [{
            "name": "inject.ferry.dev", "admissionReviewVersions": ["v1"],
            "clientConfig": { "url": format!("https://127.0.0.1:{port}/v1/inject") },
            "rules": [{ "operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                        "resources": ["pods"], "scope": "Namespaced" }],
            "namespaceSelector": { "matchExpressions": [{ "key": "kubernetes.io/metadata.name",
                "operator": "NotIn", "values": ["ferry-system", "kube-system", "kube-public"] }] },
            "failurePolicy": "Fail", "sideEffects": "None", "timeoutSeconds": 5,
        }],
    });
    configurations
        .patch(
            "ferry-sidecar-injector",
            &PatchParams::apply("ferry-bench").force(),
            &Patch::Apply(&webhook),
        )
        .await?;
    let _plane = PlaneProcess::start(&kubeconfig, dir, port)?;
    // Ready once the webhook's certificate is trusted by the API server.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let bundle = configurations
            .get("ferry-sidecar-injector")
            .await?
            .webhooks
            .and_then(|w| w[0].client_config.ca_bundle.clone());
        if bundle.is_some() {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the webhook's caBundle was never set"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let mut rows = Vec::new();
    for (what, namespace) in [
        (
            "API server: pod created, no webhook called (baseline)",
            "ferry-system",
        ),
        ("API server: pod created and injected", "train"),
    ] {
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), namespace);
        let mut samples = Vec::with_capacity(args.admissions);
        for index in 0..args.warmup + args.admissions {
            let pod: k8s_openapi::api::core::v1::Pod =
                serde_json::from_value(review(namespace, index)["request"]["object"].clone())?;
            let started = Instant::now();
            let created = pods.create(&dry_run, &pod).await?;
            let elapsed = started.elapsed();
            let injected = created
                .spec
                .and_then(|s| s.init_containers)
                .is_some_and(|c| c.iter().any(|c| c.name == "ferry-proxy"));
            anyhow::ensure!(
                injected == (namespace == "train"),
                "pod {index} in {namespace}: injected {injected}"
            );
            if index >= args.warmup {
                samples.push(elapsed);
            }
        }
        rows.push(Latencies::of(what, samples));
    }
    Ok(rows)
}

/// Stops a kube-env when dropped.
struct KubeEnvDown {
    assets: PathBuf,
    dir: PathBuf,
}

impl Drop for KubeEnvDown {
    fn drop(&mut self) {
        let _ = Command::new(self.assets.join("kube-env"))
            .args(["down", &self.dir.display().to_string()])
            .output();
    }
}

/// The control plane with its webhook, as a child of this binary.
struct PlaneProcess(Child);

impl PlaneProcess {
    fn start(kubeconfig: &Path, dir: &Path, webhook_port: u16) -> anyhow::Result<Self> {
        let webhook = format!("127.0.0.1:{webhook_port}");
        let child = Command::new(std::env::current_exe()?)
            .arg("run-control-plane")
            .args(["--kubernetes", "--namespace", "ferry-system"])
            .args(["--state-dir", &dir.join("plane").display().to_string()])
            .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args(["--inject", "--webhook-listen", &webhook])
            .args([
                "--webhook-configuration",
                "ferry-sidecar-injector",
                "--native-sidecars",
                "always",
            ])
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the control plane")?;
        Ok(Self(child))
    }
}

impl Drop for PlaneProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
