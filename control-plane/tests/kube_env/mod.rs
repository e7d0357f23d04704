//! A real Kubernetes API server (kube-apiserver v1.28 and etcd, from
//! `../shared/kube/kube-env`) for one test, the envtest way: started in a
//! temporary directory, stopped by PID when the test ends. Tests that need
//! it call [`KubeEnv::start`]; where `FERRY_TEST_KUBE_ASSETS` is unset it
//! returns `None` after saying that the test is skipped and why.
#![allow(dead_code)]

pub mod chart;
pub mod plane;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Event, Namespace, ServiceAccount};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kube::{Client, Config};
use serde_json::{Value, json};

/// The variable naming the folder with `kube-env`.
pub const ASSETS: &str = "FERRY_TEST_KUBE_ASSETS";
/// The admin token of every kube-env (in `system:masters`).
pub const ADMIN_TOKEN: &str = "kube-env-admin-token";
/// Longest wait for anything the API server does.
pub const LIMIT: Duration = Duration::from_secs(20);

/// A running API server.
pub struct KubeEnv {
    assets: PathBuf,
    /// Its state: etcd data, certificates, logs, kubeconfig.
    pub dir: PathBuf,
    /// A kubeconfig with the admin token.
    pub kubeconfig: PathBuf,
    /// `https://127.0.0.1:PORT`.
    pub url: String,
}

impl KubeEnv {
    /// Starts one for `test`, or says why the test is skipped.
    pub fn start(test: &str) -> Option<Self> {
        Self::start_with(test, "")
    }

    /// [`KubeEnv::start`] with more kube-apiserver flags.
    pub fn start_with(test: &str, apiserver_args: &str) -> Option<Self> {
        Self::start_with_files(test, apiserver_args, &[])
    }

    /// [`KubeEnv::start`] with more kube-apiserver flags (`DIR` in them is
    /// replaced by the server's directory) and `files` written there first.
    pub fn start_with_files(
        test: &str,
        apiserver_args: &str,
        files: &[(&str, &str)],
    ) -> Option<Self> {
        let Some(assets) = std::env::var_os(ASSETS) else {
            eprintln!(
                "skipped {test}: {ASSETS} is not set (it names ../shared/kube; scripts/test sets it)"
            );
            return None;
        };
        let assets = PathBuf::from(assets);
        let dir = std::env::temp_dir().join(format!(
            "ferry-kube-{test}-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).expect("kube-env directory");
        for (name, content) in files {
            std::fs::write(dir.join(name), content).expect("kube-env file");
        }
        let args = apiserver_args.replace("DIR", &dir.display().to_string());
        let output = Command::new(assets.join("kube-env"))
            .args(["up", &dir.display().to_string()])
            .env("KUBE_ENV_APISERVER_ARGS", args)
            .output()
            .expect("run kube-env");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "kube-env up failed: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let value = |name: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name}=")))
                .map(|v| v.trim_matches('\'').to_owned())
                .unwrap_or_else(|| panic!("kube-env printed no {name}: {stdout}"))
        };
        Some(Self {
            assets,
            kubeconfig: PathBuf::from(value("KUBECONFIG")),
            url: value("FERRY_TEST_KUBE_URL"),
            dir,
        })
    }

    /// A client with the admin token.
    pub async fn client(&self) -> Client {
        client_from(&self.kubeconfig).await
    }

    /// A kubeconfig that authenticates with `token` instead, written beside
    /// the admin one; `server` replaces the API server's URL when given.
    pub fn kubeconfig_with(&self, name: &str, token: &str, server: Option<&str>) -> PathBuf {
        let text = std::fs::read_to_string(&self.kubeconfig).expect("kubeconfig");
        let mut text = text.replace(ADMIN_TOKEN, token);
        if let Some(server) = server {
            text = text.replace(&self.url, server);
        }
        let path = self.dir.join(format!("kubeconfig-{name}"));
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    /// The API server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("apiserver.log")).unwrap_or_default()
    }
}

impl Drop for KubeEnv {
    fn drop(&mut self) {
        let _ = Command::new(self.assets.join("kube-env"))
            .args(["down", &self.dir.display().to_string()])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now()) % 1_000_000
}

/// A client from a kubeconfig file.
pub async fn client_from(path: &Path) -> Client {
    let kubeconfig = Kubeconfig::read_from(path).expect("read kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    Client::try_from(config).expect("client")
}

/// Creates (or updates) `object`, given as its JSON manifest, with
/// server-side apply.
pub async fn apply(client: &Client, object: Value) {
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
    let api_version = object["apiVersion"].as_str().expect("apiVersion");
    let kind = object["kind"].as_str().expect("kind");
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let plural = format!("{}s", kind.to_lowercase());
    let resource = ApiResource::from_gvk_with_plural(&gvk, &plural);
    let name = object["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_owned();
    let api: Api<DynamicObject> = match object["metadata"]["namespace"].as_str() {
        Some(namespace) => Api::namespaced_with(client.clone(), namespace, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    if let Err(err) = api
        .patch(
            &name,
            &PatchParams::apply("ferry-test").force(),
            &Patch::Apply(&object),
        )
        .await
    {
        panic!("applying {kind} {name}: {err}");
    }
}

/// Deletes `kind` `namespace/name` (`apiVersion` as in a manifest).
pub async fn delete(client: &Client, api_version: &str, kind: &str, namespace: &str, name: &str) {
    use kube::api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind};
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let plural = format!("{}s", kind.to_lowercase());
    let resource = ApiResource::from_gvk_with_plural(&gvk, &plural);
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    api.delete(name, &DeleteParams::default().grace_period(0))
        .await
        .unwrap_or_else(|err| panic!("deleting {kind} {namespace}/{name}: {err}"));
}

/// Creates namespaces and, in each, service accounts (a Pod needs its
/// service account to exist).
pub async fn namespace(client: &Client, name: &str, accounts: &[&str]) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let manifest = json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": name } });
    namespaces
        .patch(
            name,
            &PatchParams::apply("ferry-test").force(),
            &Patch::Apply(&manifest),
        )
        .await
        .expect("namespace");
    for account in accounts {
        apply(
            client,
            json!({ "apiVersion": "v1", "kind": "ServiceAccount",
                    "metadata": { "name": account, "namespace": name } }),
        )
        .await;
    }
}

/// A service account token for `audience`, as a projected volume would hold.
pub async fn token(client: &Client, namespace: &str, account: &str, audience: &str) -> String {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(vec![audience.to_owned()]),
            expiration_seconds: Some(3600),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    api.create_token_request(account, &PostParams::default(), &request)
        .await
        .expect("token request")
        .status
        .and_then(|s| s.token)
        .expect("token")
}

/// A Pod `name` running as `account`, with its uid.
pub async fn pod(client: &Client, namespace: &str, name: &str, account: &str) -> String {
    apply(
        client,
        json!({ "apiVersion": "v1", "kind": "Pod",
                "metadata": { "name": name, "namespace": namespace },
                "spec": { "serviceAccountName": account,
                          "containers": [{ "name": "worker", "image": "ferry-proxy" }] } }),
    )
    .await;
    let api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), namespace);
    api.get(name).await.expect("pod").metadata.uid.expect("uid")
}

/// A Service whose endpoints form pool `pool`, with more `annotations`.
pub fn pool_service(namespace: &str, name: &str, pool: &str, annotations: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": name, "namespace": namespace,
                      "labels": { "ferry.dev/cache-pool": pool },
                      "annotations": annotations },
        "spec": { "ports": [{ "name": "inbound", "port": 4143 }] },
    })
}

/// A pool Service `service` of pool `pool` (with `annotations`) and one
/// IPv4 slice of its `endpoints` on port 4143, named `<service>-a`.
pub async fn pool(
    client: &Client,
    namespace: &str,
    service: &str,
    pool: &str,
    annotations: Value,
    endpoints: &[Endpoint<'_>],
) {
    apply(client, pool_service(namespace, service, pool, annotations)).await;
    let name = format!("{service}-a");
    apply(
        client,
        slice(namespace, &name, service, "IPv4", 4143, endpoints),
    )
    .await;
}

/// One endpoint of a slice.
pub struct Endpoint<'a> {
    /// Its address (the API server refuses loopback: use 192.0.2.x).
    pub ip: &'a str,
    /// The Pod behind it: name and uid.
    pub pod: Option<(&'a str, &'a str)>,
    /// Ready (else not ready).
    pub ready: bool,
    /// Terminating.
    pub terminating: bool,
}

impl<'a> Endpoint<'a> {
    /// A ready endpoint of Pod `pod` (name, uid).
    pub fn ready(ip: &'a str, pod: Option<(&'a str, &'a str)>) -> Self {
        Self {
            ip,
            pod,
            ready: true,
            terminating: false,
        }
    }
}

/// An EndpointSlice of Service `service`, as the EndpointSlice controller
/// makes it (without the pool label: only `kubernetes.io/service-name`).
pub fn slice(
    namespace: &str,
    name: &str,
    service: &str,
    address_type: &str,
    port: u16,
    endpoints: &[Endpoint<'_>],
) -> Value {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|e| {
            let mut endpoint = json!({
                "addresses": [e.ip],
                "conditions": { "ready": e.ready, "serving": e.ready, "terminating": e.terminating },
                "zone": "zone-a",
            });
            if let Some((pod, uid)) = e.pod {
                endpoint["targetRef"] =
                    json!({ "kind": "Pod", "name": pod, "namespace": namespace, "uid": uid });
            }
            endpoint
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": { "name": name, "namespace": namespace,
                      "labels": { "kubernetes.io/service-name": service } },
        "addressType": address_type,
        "ports": [{ "name": "admin", "port": 4191 }, { "name": "inbound", "port": port }],
        "endpoints": endpoints,
    })
}

/// A policy ConfigMap.
pub fn policy_map(namespace: &str, name: &str, policy: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": name, "namespace": namespace, "labels": { "ferry.dev/policy": "true" } },
        "data": { "policy.yaml": policy },
    })
}

/// Waits for a Warning Event about `kind` `namespace/name` whose message
/// satisfies `check`, and returns its message.
pub async fn event_about(
    client: &Client,
    namespace: &str,
    kind: &str,
    name: &str,
    check: impl Fn(&str) -> bool,
) -> String {
    let api: Api<Event> = Api::namespaced(client.clone(), namespace);
    let selector = format!("involvedObject.kind={kind},involvedObject.name={name}");
    let stream = watcher::watcher(api, watcher::Config::default().fields(&selector));
    let found = tokio::time::timeout(LIMIT, async {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            if let Ok(watcher::Event::Apply(e) | watcher::Event::InitApply(e)) = event {
                let message = e.message.clone().unwrap_or_default();
                if e.type_.as_deref() == Some("Warning") && check(&message) {
                    return message;
                }
            }
        }
        String::new()
    })
    .await;
    match found {
        Ok(message) if !message.is_empty() => message,
        _ => panic!("no matching Warning Event about {kind} {namespace}/{name}"),
    }
}

/// A TCP relay that adds a fixed latency to everything the server sends:
/// a slow API server, without `netem`.
pub struct Relay {
    /// `https://127.0.0.1:PORT`, to use instead of the server's URL.
    pub url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Relays to the server at `url` (`https://host:port`), delaying its
    /// answers by `latency`.
    pub async fn start(url: &str, latency: Duration) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let target = url.trim_start_matches("https://").to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let upstream = tokio::io::copy(&mut client_read, &mut server_write);
                    // Each chunk from the server leaves `latency` after it came.
                    let (queue, mut queued) =
                        tokio::sync::mpsc::channel::<(tokio::time::Instant, Vec<u8>)>(1024);
                    let reader = async move {
                        let mut buffer = vec![0u8; 64 * 1024];
                        while let Ok(n) = server_read.read(&mut buffer).await {
                            if n == 0
                                || queue
                                    .send((
                                        tokio::time::Instant::now() + latency,
                                        buffer[..n].to_vec(),
                                    ))
                                    .await
                                    .is_err()
                            {
                                break;
                            }
                        }
                    };
                    let writer = async move {
                        while let Some((due, bytes)) = queued.recv().await {
                            tokio::time::sleep_until(due).await;
                            if client_write.write_all(&bytes).await.is_err() {
                                break;
                            }
                        }
                    };
                    let _ = tokio::join!(upstream, reader, writer);
                });
            }
        });
        Self {
            url: format!("https://{address}"),
            task,
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Polls `check` until it holds, for at most [`LIMIT`].
pub async fn until<F, Fut>(what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + LIMIT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `POST /v1/identity/certify` at the control plane `url` (trusting
/// `bundle`) with `token` and a fresh CSR; the status code.
pub async fn certify(url: &str, bundle: &str, token: &str) -> u16 {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(bundle.as_bytes()).expect("anchor")])
        .build()
        .expect("client");
    client
        .post(format!("{url}/v1/identity/certify"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(json!({ "csr": csr }).to_string())
        .send()
        .await
        .expect("certify")
        .status()
        .as_u16()
}
