//! The Kubernetes source against a real kube-apiserver (envtest-style, see
//! `kube_env`): policy ConfigMaps and their Events, the tenancy rules, pools
//! from Services and EndpointSlices, identities by Pod uid, readiness after
//! the first lists, TokenReview, and the chart's RBAC checked against the
//! API server's audit log. Each defect found against a real server has its
//! regression test here. The relist after 410 Gone, which a real server
//! cannot produce on demand, runs against `fake_kube`.

mod fake_kube;
mod kube_env;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use ferry_config::{ProxyConfig, Role, WatchEvent};
use ferry_control_plane::identity::{TokenError, TokenValidator};
use ferry_control_plane::policy::{PolicyStore, PoolKey, Published, ViewKey};
use ferry_control_plane::sources::kubernetes::{self, TokenReviewValidator};
use kube_env::{Endpoint, KubeEnv, LIMIT, apply, delete, event_about, policy_map};

const OWN: &str = "ferry-system";
const DOMAIN: &str = "cluster.local";

fn start(client: kube::Client) -> Arc<PolicyStore> {
    let store = PolicyStore::new(DOMAIN, Vec::new(), None);
    kubernetes::start(client, store.clone(), OWN, DOMAIN);
    store
}

/// Waits until every source has listed once.
async fn synced(store: &PolicyStore) {
    tokio::time::timeout(LIMIT, store.synced())
        .await
        .unwrap_or_else(|_| panic!("never synced: waiting for {:?}", store.unsynced()));
}

/// Waits until the published state satisfies `check`.
async fn published(store: &PolicyStore, check: impl Fn(&Published) -> bool) -> Arc<Published> {
    let mut updates = store.subscribe();
    let found = tokio::time::timeout(LIMIT, updates.wait_for(|p| check(p))).await;
    match found {
        Ok(Ok(published)) => published.clone(),
        _ => panic!(
            "the store never got there; documents: {:?}, pools: {:?}, refused: {:?}",
            store.current().state.documents.keys().collect::<Vec<_>>(),
            store.current().state.discovered_pools,
            store.refusals()
        ),
    }
}

/// What proxies of `role` in `namespace` are streamed.
fn view(published: &Published, role: Role, namespace: &str) -> ferry_config::ProxySnapshot {
    published.snapshot_for(&ViewKey {
        role,
        namespace: namespace.to_owned(),
    })
}

fn dataset_names(published: &Published, document: &str) -> Vec<String> {
    published
        .state
        .documents
        .iter()
        .find(|(k, _)| k.name == document)
        .map(|(_, d)| d.policy.datasets.iter().map(|d| d.name.clone()).collect())
        .unwrap_or_default()
}

fn refused(store: &PolicyStore, document: &str) -> Option<String> {
    store
        .refusals()
        .into_iter()
        .find(|r| r.key.name == document)
        .map(|r| r.message)
}

const TENANTS: &str = "tenants:\n  - namespace: train\n    origins: [\"s3://data/train/\", \"https://files.example.com/train/\"]\n";

fn dataset(name: &str, origin: &str) -> String {
    format!("datasets:\n  - {{ name: {name}, bucket: {name}, origin: \"{origin}\" }}\n")
}

#[tokio::test]
async fn policy_configmaps_are_scoped_followed_and_refused_with_an_event() {
    let Some(env) = KubeEnv::start("policies") else {
        return;
    };
    let client = env.client().await;
    kube_env::namespace(&client, OWN, &[]).await;
    kube_env::namespace(&client, "train", &[]).await;
    let mesh = format!("{TENANTS}{}", dataset("imagenet", "s3://data/imagenet/"));
    apply(&client, policy_map(OWN, "mesh", &mesh)).await;
    apply(
        &client,
        policy_map("train", "job", &dataset("laion", "s3://data/train/laion/")),
    )
    .await;
    // Not labelled: ignored.
    apply(
        &client,
        json!({ "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": { "name": "other", "namespace": "train" },
                "data": { "policy.yaml": dataset("ignored", "s3://data/train/x/") } }),
    )
    .await;
    let store = start(client.clone());
    synced(&store).await;
    let state = store.current();
    let scopes: Vec<(String, Option<String>)> = state
        .state
        .documents
        .iter()
        .map(|(k, d)| (k.name.clone(), d.namespace.clone()))
        .collect();
    assert_eq!(
        scopes,
        [
            (format!("{OWN}/mesh"), None),
            ("train/job".to_owned(), Some("train".to_owned())),
        ],
        "in force as soon as the control plane is ready: the control plane's namespace is \
         mesh-wide, others their own"
    );

    // An update is followed.
    let two = dataset("laion", "s3://data/train/laion/")
        + "  - { name: coco, bucket: coco, origin: \"s3://data/train/coco/\" }\n";
    apply(&client, policy_map("train", "job", &two)).await;
    published(&store, |p| {
        dataset_names(p, "train/job") == ["laion", "coco"]
    })
    .await;

    // A broken one is refused with an Event naming line and field; the last
    // good version stays.
    let version = store.current().version;
    apply(
        &client,
        policy_map(
            "train",
            "job",
            "datasets:\n  - name: laion\n    chunk_size: lots\n",
        ),
    )
    .await;
    let message = event_about(&client, "train", "ConfigMap", "job", |m| {
        m.contains("chunk_size")
    })
    .await;
    assert!(
        message.contains(":3:") && message.contains("datasets[0].chunk_size"),
        "the Event says where: {message}"
    );
    assert!(refused(&store, "train/job").is_some());
    assert_eq!(store.current().version, version, "nothing was published");
    assert_eq!(
        dataset_names(&store.current(), "train/job"),
        ["laion", "coco"]
    );

    // Deleted: gone from the mesh.
    delete(&client, "v1", "ConfigMap", "train", "job").await;
    published(&store, |p| p.state.documents.len() == 1).await;
}

/// Defect 1: a namespace's ConfigMap made workers read their own files.
#[tokio::test]
async fn a_namespace_reads_only_the_origins_the_mesh_admin_allows_it() {
    let Some(env) = KubeEnv::start("tenancy") else {
        return;
    };
    let client = env.client().await;
    kube_env::namespace(&client, OWN, &[]).await;
    kube_env::namespace(&client, "train", &[]).await;
    kube_env::namespace(&client, "eval", &[]).await;
    apply(&client, policy_map(OWN, "mesh", TENANTS)).await;
    let store = start(client.clone());
    synced(&store).await;

    let token = "file:///var/run/secrets/kubernetes.io/serviceaccount/";
    for (name, policy, why) in [
        (
            "steal",
            dataset("steal", token),
            "file:// origins are the mesh admin's alone",
        ),
        (
            "elsewhere",
            dataset("elsewhere", "s3://data/eval/"),
            "may use origins starting with",
        ),
        (
            "metadata",
            dataset("metadata", "http://169.254.169.254/latest/meta-data/"),
            "may use origins starting with",
        ),
        (
            "escape",
            dataset("escape", "https://files.example.com/train/../private/"),
            "may use origins starting with",
        ),
        (
            "wide",
            "datasets:\n  - { name: wide, bucket: wide, origin: \"s3://data/train/w/\", \
             allow: [\"spiffe://cluster.local/ns/*/sa/*\"] }\n"
                .to_owned(),
            "only by identities of its namespace",
        ),
    ] {
        apply(&client, policy_map("train", name, &policy)).await;
        let message = event_about(&client, "train", "ConfigMap", name, |m| m.contains(why)).await;
        assert!(message.contains("refused"), "{name}: {message}");
        assert!(
            refused(&store, &format!("train/{name}")).is_some(),
            "{name}"
        );
    }
    apply(
        &client,
        policy_map("train", "ok", &dataset("laion", "s3://data/train/laion/")),
    )
    .await;
    let state = published(&store, |p| !dataset_names(p, "train/ok").is_empty()).await;
    let worker = view(&state, Role::Worker, "ferry-system");
    let names: Vec<&str> = worker.datasets.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["laion"], "workers get only what was accepted");
    let laion = &worker.datasets[0];
    assert_eq!(
        laion.namespace.as_deref(),
        Some("train"),
        "marked with its owner"
    );
    assert_eq!(
        laion.allow.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
        ["spiffe://cluster.local/ns/train/sa/*"]
    );

    // The mesh admin withdraws the allowance: the data set goes, with an Event.
    apply(
        &client,
        policy_map(OWN, "mesh", "tenants:\n  - namespace: train\n"),
    )
    .await;
    published(&store, |p| dataset_names(p, "train/ok").is_empty()).await;
    event_about(&client, "train", "ConfigMap", "ok", |m| {
        m.contains("allows namespace 'train' no origins")
    })
    .await;
    // And gives it back: the held document is accepted again.
    apply(&client, policy_map(OWN, "mesh", TENANTS)).await;
    published(&store, |p| dataset_names(p, "train/ok") == ["laion"]).await;
    assert!(refused(&store, "train/ok").is_none());
}

fn members(published: &Published, namespace: Option<&str>, pool: &str) -> Vec<(String, String)> {
    let key = PoolKey {
        namespace: namespace.map(str::to_owned),
        name: pool.to_owned(),
    };
    published
        .state
        .discovered_pools
        .get(&key)
        .map(|p| {
            p.members
                .iter()
                .map(|m| {
                    (
                        m.address.clone(),
                        m.identity
                            .as_ref()
                            .map(|i| i.to_string())
                            .unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn sidecar_pool(published: &Published, namespace: &str, pool: &str) -> Vec<String> {
    let snapshot = view(published, Role::Sidecar, namespace);
    snapshot
        .pools
        .iter()
        .find(|p| p.name == pool)
        .map(|p| p.members.iter().map(|m| m.address.clone()).collect())
        .unwrap_or_default()
}

const WORKER: &str = "spiffe://cluster.local/ns/ferry-system/sa/worker";

/// The mesh pool `cache-workers`: Service `workers`, with the Pod whose uid
/// is `worker_0` ready at 192.0.2.1.
async fn mesh_pool(client: &kube::Client, worker_0: &str, annotations: Value) {
    let endpoints = [Endpoint::ready("192.0.2.1", Some(("worker-0", worker_0)))];
    kube_env::pool(
        client,
        OWN,
        "workers",
        "cache-workers",
        annotations,
        &endpoints,
    )
    .await;
}

/// Defect 2: a Service in any namespace joined the mesh-wide pool.
#[tokio::test]
async fn a_namespace_service_never_joins_a_mesh_wide_pool() {
    let Some(env) = KubeEnv::start("pools") else {
        return;
    };
    let client = env.client().await;
    kube_env::namespace(&client, OWN, &["worker"]).await;
    kube_env::namespace(&client, "train", &["job"]).await;
    let w0 = kube_env::pod(&client, OWN, "worker-0", "worker").await;
    let w1 = kube_env::pod(&client, OWN, "worker-1", "worker").await;
    let job = kube_env::pod(&client, "train", "job-0", "job").await;
    // The slices carry only kubernetes.io/service-name, as the controller makes them.
    let mesh_endpoints = [
        Endpoint::ready("192.0.2.1", Some(("worker-0", w0.as_str()))),
        Endpoint::ready("192.0.2.2", Some(("worker-1", w1.as_str()))),
    ];
    kube_env::pool(
        &client,
        OWN,
        "workers",
        "cache-workers",
        json!({}),
        &mesh_endpoints,
    )
    .await;
    // Dual stack: the same Pods again over IPv6, and an FQDN slice: neither adds a member.
    apply(
        &client,
        kube_env::slice(
            OWN,
            "workers-v6",
            "workers",
            "IPv6",
            4143,
            &[Endpoint::ready(
                "2001:db8::1",
                Some(("worker-0", w0.as_str())),
            )],
        ),
    )
    .await;
    apply(
        &client,
        kube_env::slice(
            OWN,
            "workers-fqdn",
            "workers",
            "FQDN",
            4143,
            &[Endpoint::ready("worker-0.example.com", None)],
        ),
    )
    .await;
    // The rogue: train's Service with the mesh pool's name, one endpoint with
    // no Pod and one of train's own Pods.
    let rogue = [
        Endpoint::ready("192.0.2.66", None),
        Endpoint::ready("192.0.2.67", Some(("job-0", job.as_str()))),
    ];
    kube_env::pool(
        &client,
        "train",
        "rogue",
        "cache-workers",
        json!({}),
        &rogue,
    )
    .await;
    let store = start(client.clone());
    synced(&store).await;
    let state = store.current();
    assert_eq!(
        members(&state, None, "cache-workers"),
        [
            ("192.0.2.1:4143".to_owned(), WORKER.to_owned()),
            ("192.0.2.2:4143".to_owned(), WORKER.to_owned())
        ],
        "the mesh pool: its own Service's IPv4 endpoints, each with its Pod's identity, once"
    );
    assert_eq!(
        members(&state, Some("train"), "cache-workers"),
        [(
            "192.0.2.67:4143".to_owned(),
            "spiffe://cluster.local/ns/train/sa/job".to_owned()
        )],
        "train's own pool; the endpoint with no Pod and no named identity is left out"
    );
    for namespace in ["train", "eval"] {
        assert_eq!(
            sidecar_pool(&state, namespace, "cache-workers"),
            ["192.0.2.1:4143", "192.0.2.2:4143"],
            "sidecars of {namespace} use the mesh pool: mesh-wide names win"
        );
    }

    // A pool Service that names its workers' identity admits members with no Pod.
    let identity = json!({ "ferry.dev/worker-identity": "spiffe://cluster.local/ns/train/sa/job" });
    let no_pod = [Endpoint::ready("192.0.2.70", None)];
    kube_env::pool(&client, "train", "own", "train-pool", identity, &no_pod).await;
    let state = published(&store, |p| {
        !members(p, Some("train"), "train-pool").is_empty()
    })
    .await;
    assert_eq!(
        members(&state, Some("train"), "train-pool"),
        [(
            "192.0.2.70:4143".to_owned(),
            "spiffe://cluster.local/ns/train/sa/job".to_owned()
        )]
    );
    assert_eq!(
        sidecar_pool(&state, "train", "train-pool"),
        ["192.0.2.70:4143"]
    );
    assert!(
        sidecar_pool(&state, "eval", "train-pool").is_empty(),
        "another namespace does not see train's pool"
    );

    // A terminating endpoint leaves; the Service going takes its pool along.
    let leaving = Endpoint {
        terminating: true,
        ready: false,
        ..Endpoint::ready("192.0.2.2", Some(("worker-1", w1.as_str())))
    };
    apply(
        &client,
        kube_env::slice(
            OWN,
            "workers-a",
            "workers",
            "IPv4",
            4143,
            &[
                Endpoint::ready("192.0.2.1", Some(("worker-0", w0.as_str()))),
                leaving,
            ],
        ),
    )
    .await;
    published(&store, |p| members(p, None, "cache-workers").len() == 1).await;
    delete(&client, "v1", "Service", OWN, "workers").await;
    published(&store, |p| {
        !p.state
            .discovered_pools
            .keys()
            .any(|k| k.namespace.is_none())
    })
    .await;
}

/// Defect 3: a pool with no ready endpoint froze every sidecar's configuration.
#[tokio::test]
async fn an_empty_pool_is_streamed_as_a_valid_state() {
    let Some(env) = KubeEnv::start("empty-pool") else {
        return;
    };
    let client = env.client().await;
    kube_env::namespace(&client, OWN, &["worker"]).await;
    let w0 = kube_env::pod(&client, OWN, "worker-0", "worker").await;
    mesh_pool(&client, &w0, json!({})).await;
    let unready = Endpoint {
        ready: false,
        ..Endpoint::ready("192.0.2.9", Some(("worker-0", w0.as_str())))
    };
    kube_env::pool(&client, OWN, "spare", "spare-pool", json!({}), &[unready]).await;
    let policy = "datasets:\n  - { name: imagenet, bucket: imagenet, origin: \"s3://d/i/\", pool: cache-workers }\n  \
                  - { name: laion, bucket: laion, origin: \"s3://d/l/\", pool: spare-pool }\n";
    apply(&client, policy_map(OWN, "mesh", policy)).await;
    let store = start(client.clone());
    synced(&store).await;
    // The first snapshot after the lists already has the members: Services
    // are not published before their slices.
    let state = store.current();
    assert_eq!(members(&state, None, "cache-workers").len(), 1);
    let line = state.line_for(&ViewKey {
        role: Role::Sidecar,
        namespace: "train".into(),
    });
    let WatchEvent::Snapshot(snapshot) = serde_json::from_slice(&line).expect("a proxy reads it")
    else {
        panic!("not a snapshot");
    };
    let names: Vec<&str> = snapshot.datasets.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["imagenet", "laion"], "both data sets are streamed");
    let spare = snapshot
        .pools
        .iter()
        .find(|p| p.name == "spare-pool")
        .expect("spare");
    assert!(
        spare.members.is_empty(),
        "the empty pool is streamed as empty"
    );
    let config = ProxyConfig {
        role: Role::Sidecar,
        pools: snapshot.pools.clone(),
        datasets: ferry_config::Datasets(snapshot.datasets.clone()),
        ..ProxyConfig::default()
    };
    config
        .validate("snapshot")
        .expect("a proxy's validation takes it");
}

/// Defect 5: a Pod re-created under the same name kept its old identity.
#[tokio::test]
async fn a_recreated_pod_brings_its_new_identity() {
    let Some(env) = KubeEnv::start("recreated") else {
        return;
    };
    let client = env.client().await;
    kube_env::namespace(&client, OWN, &["worker", "cache"]).await;
    let first = kube_env::pod(&client, OWN, "worker-0", "worker").await;
    apply(
        &client,
        kube_env::pool_service(OWN, "workers", "cache-workers", json!({})),
    )
    .await;
    let endpoints = |uid: &str| {
        kube_env::slice(
            OWN,
            "workers-a",
            "workers",
            "IPv4",
            4143,
            &[Endpoint::ready("192.0.2.1", Some(("worker-0", uid)))],
        )
    };
    apply(&client, endpoints(&first)).await;
    let store = start(client.clone());
    synced(&store).await;
    assert_eq!(
        members(&store.current(), None, "cache-workers"),
        [("192.0.2.1:4143".to_owned(), WORKER.to_owned())]
    );
    delete(&client, "v1", "Pod", OWN, "worker-0").await;
    let second = kube_env::pod(&client, OWN, "worker-0", "cache").await;
    assert_ne!(first, second, "a new Pod, a new uid");
    apply(&client, endpoints(&second)).await;
    let cache = "spiffe://cluster.local/ns/ferry-system/sa/cache".to_owned();
    published(&store, |p| {
        members(p, None, "cache-workers") == [("192.0.2.1:4143".to_owned(), cache.clone())]
    })
    .await;
    assert_eq!(
        sidecar_pool(&store.current(), "train", "cache-workers"),
        ["192.0.2.1:4143"]
    );
}

/// Defect 4: readiness came before the sources had listed. With 0.4 s added
/// to every answer of the API server, the store is not synced until the
/// lists are in, and then already holds them.
#[tokio::test]
async fn the_store_is_synced_only_with_every_list_applied() {
    let Some(env) = KubeEnv::start("slow") else {
        return;
    };
    let client = env.client().await;
    kube_env::namespace(&client, OWN, &["worker"]).await;
    let w0 = kube_env::pod(&client, OWN, "worker-0", "worker").await;
    apply(
        &client,
        policy_map(OWN, "mesh", &dataset("imagenet", "s3://d/i/")),
    )
    .await;
    mesh_pool(&client, &w0, json!({})).await;
    let relay = kube_env::Relay::start(&env.url, Duration::from_millis(400)).await;
    let slow = env.kubeconfig_with("slow", kube_env::ADMIN_TOKEN, Some(&relay.url));
    let store = start(kube_env::client_from(&slow).await);
    assert!(!store.unsynced().is_empty(), "not synced before the lists");
    synced(&store).await;
    let state = store.current();
    assert_eq!(dataset_names(&state, &format!("{OWN}/mesh")), ["imagenet"]);
    assert_eq!(members(&state, None, "cache-workers").len(), 1);
}

#[tokio::test]
async fn token_review_names_service_accounts_and_refuses_the_rest() {
    let Some(env) = KubeEnv::start("tokenreview") else {
        return;
    };
    let client = env.client().await;
    kube_env::namespace(&client, "train", &["job"]).await;
    let validator = TokenReviewValidator::new(client.clone());
    let good = kube_env::token(&client, "train", "job", kubernetes::TOKEN_AUDIENCE).await;
    let workload = validator.validate(&good).await.expect("valid");
    assert_eq!(
        (
            workload.namespace.as_str(),
            workload.service_account.as_str()
        ),
        ("train", "job")
    );
    let other = kube_env::token(&client, "train", "job", "https://kubernetes.default.svc").await;
    for (what, token) in [
        ("another audience", other.as_str()),
        ("garbage", "not-a-token"),
    ] {
        assert!(
            matches!(validator.validate(token).await, Err(TokenError::Invalid)),
            "{what} is refused"
        );
    }
    assert!(matches!(
        validator.validate("").await,
        Err(TokenError::Missing)
    ));
    // The API server unreachable: unavailable, not invalid.
    let away = env.kubeconfig_with("away", kube_env::ADMIN_TOKEN, Some("https://127.0.0.1:1"));
    let unreachable = TokenReviewValidator::new(kube_env::client_from(&away).await);
    assert!(matches!(
        unreachable.validate(&good).await,
        Err(TokenError::Unavailable(_))
    ));
}

const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n  - level: Metadata\n";

/// The chart's RBAC, applied to a real API server, lets the control plane
/// (the real binary, on its own service account's token, everything on:
/// policies, pools, TokenReview, the CA Secret, the published trust bundle,
/// injection, a shared warm-up order) do all it does — nothing refused — and grants nothing it
/// does not use, as the server's audit log records.
#[tokio::test]
async fn the_chart_rbac_grants_exactly_what_the_control_plane_uses() {
    let Some(helm) = kube_env::chart::helm("rbac") else {
        return;
    };
    let Some(env) = KubeEnv::start_with_files(
        "rbac",
        "--audit-policy-file=DIR/audit-policy.yaml --audit-log-path=DIR/audit.log",
        &[("audit-policy.yaml", AUDIT_POLICY)],
    ) else {
        return;
    };
    let admin = env.client().await;
    kube_env::namespace(&admin, OWN, &["worker"]).await;
    kube_env::namespace(&admin, "train", &["job"]).await;
    let objects = kube_env::chart::render(&helm, OWN, "").expect("the chart renders");
    let mut granted = BTreeSet::new();
    for object in objects.iter().filter(|o| {
        let kind = o["kind"].as_str().unwrap_or_default();
        kind.contains("Role") || kind == "ServiceAccount" || kind == "MutatingWebhookConfiguration"
    }) {
        apply(&admin, object.clone()).await;
        if !matches!(object["kind"].as_str(), Some("ClusterRole" | "Role")) {
            continue;
        }
        for rule in object["rules"].as_array().expect("rules") {
            for group in rule["apiGroups"].as_array().expect("groups") {
                for resource in rule["resources"].as_array().expect("resources") {
                    for verb in rule["verbs"].as_array().expect("verbs") {
                        granted.insert((
                            group.as_str().unwrap_or_default().to_owned(),
                            resource.as_str().unwrap_or_default().to_owned(),
                            verb.as_str().unwrap_or_default().to_owned(),
                        ));
                    }
                }
            }
        }
    }
    // Everything it does: policies (one refused: an Event), a pool with a
    // Pod to look up and a bad annotation (an Event), a TokenReview, the CA
    // Secret, the trust bundle's ConfigMap (edited: put back), the webhook's
    // caBundle, namespaces for injection, a warm-up order's ConfigMap.
    let w0 = kube_env::pod(&admin, OWN, "worker-0", "worker").await;
    let mesh_policy = format!("{TENANTS}{}", dataset("imagenet", "s3://data/imagenet/"));
    apply(&admin, policy_map(OWN, "mesh", &mesh_policy)).await;
    apply(&admin, policy_map("train", "bad", "datasets: 7\n")).await;
    mesh_pool(
        &admin,
        &w0,
        json!({ "ferry.dev/worker-identity": "nobody" }),
    )
    .await;
    let token = kube_env::token(
        &admin,
        OWN,
        "ferry-control-plane",
        "https://kubernetes.default.svc.cluster.local",
    )
    .await;
    let kubeconfig = env.kubeconfig_with("control-plane", &token, None);
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_ferry-control-plane"));
    let plane = kube_env::plane::KubePlane::start(
        binary,
        &kubeconfig,
        &env.dir.join("plane"),
        &[
            "--namespace",
            OWN,
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--ca-secret",
            "ferry-ca",
            "--trust-bundle-configmap",
            "ferry-trust-bundle",
            "--inject",
            "--webhook-listen",
            "127.0.0.1:0",
            "--webhook-configuration",
            "ferry-sidecar-injector",
        ],
    );
    event_about(&admin, "train", "ConfigMap", "bad", |_| true).await;
    event_about(&admin, OWN, "Service", "workers", |m| {
        m.contains("worker-identity")
    })
    .await;
    let bundles: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(admin.clone(), OWN);
    let bundle_published = || async {
        bundles
            .get_opt("ferry-trust-bundle")
            .await
            .ok()
            .flatten()
            .and_then(|m| m.data)
            .and_then(|d| d.get("bundle.pem").cloned())
            == Some(plane.bundle.clone())
    };
    kube_env::until("the trust bundle is published", &bundle_published).await;
    apply(
        &admin,
        json!({ "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": { "name": "ferry-trust-bundle", "namespace": OWN },
                "data": { "bundle.pem": "edited" } }),
    )
    .await;
    kube_env::until("the edited trust bundle is put back", &bundle_published).await;
    let webhooks: kube::Api<
        k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration,
    > = kube::Api::all(admin.clone());
    kube_env::until("the webhook's caBundle is the trust bundle", || async {
        webhooks
            .get("ferry-sidecar-injector")
            .await
            .ok()
            .and_then(|w| w.webhooks)
            .and_then(|w| w[0].client_config.ca_bundle.clone())
            .map(|b| b.0)
            == Some(plane.bundle.clone().into_bytes())
    })
    .await;
    let proxy_token = kube_env::token(&admin, "train", "job", kubernetes::TOKEN_AUDIENCE).await;
    let certified = kube_env::certify(&plane.url, &plane.bundle, &proxy_token).await;
    assert_eq!(certified, 200, "a proxy's token passes TokenReview");
    // A warm-up order, shared with other replicas through a ConfigMap.
    let ordered = reqwest::Client::new()
        .post(format!("http://{}/warm/imagenet", plane.admin))
        .send()
        .await
        .expect("order");
    assert_eq!(ordered.status(), reqwest::StatusCode::ACCEPTED);
    kube_env::until("the warm-up order is shared", || async {
        bundles
            .get_opt(kubernetes::WARM_ORDERS_CONFIGMAP)
            .await
            .ok()
            .flatten()
            .and_then(|m| m.data)
            .is_some_and(|d| d.contains_key("imagenet"))
    })
    .await;

    let user = format!("system:serviceaccount:{OWN}:ferry-control-plane");
    let log = std::fs::read_to_string(env.dir.join("audit.log")).expect("audit log");
    let mut used = BTreeSet::new();
    for line in log.lines() {
        let entry: Value = serde_json::from_str(line).expect("audit JSON");
        if entry["user"]["username"] != user.as_str() || entry["objectRef"]["resource"].is_null() {
            continue; // someone else's, or /version and discovery (allowed to all)
        }
        let call = (
            entry["objectRef"]["apiGroup"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            entry["objectRef"]["resource"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            entry["verb"].as_str().unwrap_or_default().to_owned(),
        );
        assert_ne!(
            entry["responseStatus"]["code"],
            403,
            "{call:?} was refused: {line}\n{}",
            plane.log()
        );
        used.insert(call);
    }
    assert_eq!(
        used, granted,
        "what the control plane's account used (left) against what the chart grants (right)"
    );
}

#[tokio::test]
async fn an_expired_watch_relists_and_forgets_what_was_deleted_meanwhile() {
    const CONFIGMAPS: &str = "/api/v1/configmaps";
    let fake = fake_kube::FakeKube::start().await;
    fake.apply(
        CONFIGMAPS,
        policy_map(OWN, "a", &dataset("alpha", "s3://d/a/")),
    );
    fake.apply(
        CONFIGMAPS,
        policy_map(OWN, "b", &dataset("beta", "s3://d/b/")),
    );
    let store = start(fake.client());
    published(&store, |p| p.state.documents.len() == 2).await;
    let (lists_before, _) = fake.lists(CONFIGMAPS);
    // The watch breaks, its resource version expires, and meanwhile one
    // ConfigMap is deleted and one changed: only a relist can tell.
    fake.expire_watches(CONFIGMAPS);
    fake.delete(CONFIGMAPS, OWN, "a");
    fake.apply(
        CONFIGMAPS,
        policy_map(OWN, "b", &dataset("beta2", "s3://d/b/")),
    );
    published(&store, |p| {
        p.state.documents.len() == 1 && dataset_names(p, &format!("{OWN}/b")) == ["beta2"]
    })
    .await;
    let (lists_after, gone) = fake.lists(CONFIGMAPS);
    assert!(gone >= 1, "a watch was answered 410 Gone");
    assert!(lists_after > lists_before, "and the client listed again");
}
