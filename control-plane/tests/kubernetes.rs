//! The Kubernetes source against an API server that speaks the list/watch
//! protocol, driving the real kube-rs client: policy ConfigMaps, pools from
//! EndpointSlices, relisting after 410 Gone, and TokenReview.

mod fake_kube;

use std::sync::Arc;
use std::time::Duration;

use fake_kube::FakeKube;
use serde_json::{Value, json};

use ferry_control_plane::identity::{TokenError, TokenValidator};
use ferry_control_plane::policy::{PolicyStore, Published};
use ferry_control_plane::sources::kubernetes::{self, TokenReviewValidator};

const CONFIGMAPS: &str = "/api/v1/configmaps";
const SERVICES: &str = "/api/v1/services";
const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
const OWN_NAMESPACE: &str = "ferry-system";
const LIMIT: Duration = Duration::from_secs(10);

fn policy_map(namespace: &str, name: &str, policy: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": name, "namespace": namespace, "labels": { "ferry.dev/policy": "true" } },
        "data": { "policy.yaml": policy },
    })
}

fn dataset(name: &str) -> String {
    format!("datasets:\n  - {{ name: {name}, bucket: {name}, origin: \"s3://data/{name}/\" }}\n")
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

fn dataset_names(published: &Published, document: &str) -> Vec<String> {
    published
        .state
        .documents
        .iter()
        .find(|(k, _)| k.name == document)
        .map(|(_, d)| d.policy.datasets.iter().map(|d| d.name.clone()).collect())
        .unwrap_or_default()
}

fn start(fake: &FakeKube) -> Arc<PolicyStore> {
    let store = PolicyStore::new("cluster.local", Vec::new(), None);
    kubernetes::start(fake.client(), store.clone(), OWN_NAMESPACE, "cluster.local");
    store
}

#[tokio::test]
async fn policy_configmaps_are_scoped_followed_and_refused_with_an_event() {
    let fake = FakeKube::start().await;
    fake.apply(
        CONFIGMAPS,
        policy_map(OWN_NAMESPACE, "mesh", &dataset("imagenet")),
    );
    fake.apply(CONFIGMAPS, policy_map("train", "job", &dataset("laion")));
    // Not labelled: ignored.
    fake.apply(
        CONFIGMAPS,
        json!({ "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": { "name": "other", "namespace": "train" },
                "data": { "policy.yaml": dataset("ignored") } }),
    );
    let store = start(&fake);
    let state = published(&store, |p| p.state.documents.len() == 2).await;
    let scopes: Vec<(String, Option<String>)> = state
        .state
        .documents
        .iter()
        .map(|(k, d)| (k.name.clone(), d.namespace.clone()))
        .collect();
    assert_eq!(
        scopes,
        [
            (format!("{OWN_NAMESPACE}/mesh"), None),
            ("train/job".to_owned(), Some("train".to_owned())),
        ],
        "the control plane's namespace is mesh-wide, others their own"
    );

    // An update is followed.
    fake.apply(
        CONFIGMAPS,
        policy_map(
            "train",
            "job",
            &(dataset("laion") + "  - { name: coco, bucket: coco, origin: \"s3://data/coco/\" }\n"),
        ),
    );
    published(&store, |p| {
        dataset_names(p, "train/job") == ["laion", "coco"]
    })
    .await;

    // A broken one is refused with an Event naming line and field; the last
    // good version stays.
    let version = store.current().version;
    fake.apply(
        CONFIGMAPS,
        policy_map(
            "train",
            "job",
            "datasets:\n  - name: laion\n    chunk_size: lots\n",
        ),
    );
    let event = fake
        .wait_for_event(LIMIT, |e| e["reason"] == "InvalidPolicy")
        .await
        .expect("an InvalidPolicy Event");
    assert_eq!(event["involvedObject"]["kind"], "ConfigMap");
    assert_eq!(event["involvedObject"]["name"], "job");
    assert_eq!(event["type"], "Warning");
    let message = event["message"].as_str().expect("message");
    assert!(
        message.contains(":3:") && message.contains("datasets[0].chunk_size"),
        "the Event says where: {message}"
    );
    assert_eq!(store.refusals().len(), 1);
    assert_eq!(store.current().version, version, "nothing was published");
    assert_eq!(
        dataset_names(&store.current(), "train/job"),
        ["laion", "coco"]
    );

    // Deleted: gone from the mesh.
    fake.delete(CONFIGMAPS, "train", "job");
    published(&store, |p| p.state.documents.len() == 1).await;
}

#[tokio::test]
async fn an_expired_watch_relists_and_forgets_what_was_deleted_meanwhile() {
    let fake = FakeKube::start().await;
    fake.apply(
        CONFIGMAPS,
        policy_map(OWN_NAMESPACE, "a", &dataset("alpha")),
    );
    fake.apply(CONFIGMAPS, policy_map(OWN_NAMESPACE, "b", &dataset("beta")));
    let store = start(&fake);
    published(&store, |p| p.state.documents.len() == 2).await;
    let (lists_before, _) = fake.lists(CONFIGMAPS);
    // The watch breaks, its resource version expires, and meanwhile one
    // ConfigMap is deleted and one changed: only a relist can tell.
    fake.expire_watches(CONFIGMAPS);
    fake.delete(CONFIGMAPS, OWN_NAMESPACE, "a");
    fake.apply(
        CONFIGMAPS,
        policy_map(OWN_NAMESPACE, "b", &dataset("beta2")),
    );
    published(&store, |p| {
        p.state.documents.len() == 1 && dataset_names(p, &format!("{OWN_NAMESPACE}/b")) == ["beta2"]
    })
    .await;
    let (lists_after, gone) = fake.lists(CONFIGMAPS);
    assert!(gone >= 1, "a watch was answered 410 Gone");
    assert!(lists_after > lists_before, "and the client listed again");
}

fn pool_service(namespace: &str, name: &str, pool: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": name, "namespace": namespace, "labels": { "ferry.dev/cache-pool": pool } },
        "spec": { "ports": [{ "name": "inbound", "port": 4143 }] },
    })
}

/// An EndpointSlice of Service `service`: (ip, pod, ready, terminating) per endpoint.
fn slice(
    namespace: &str,
    name: &str,
    service: &str,
    pool: &str,
    endpoints: &[(&str, &str, bool, bool)],
) -> Value {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|(ip, pod, ready, terminating)| {
            json!({
                "addresses": [ip],
                "conditions": { "ready": ready, "serving": ready, "terminating": terminating },
                "targetRef": { "kind": "Pod", "name": pod, "namespace": namespace },
                "zone": "zone-a",
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": { "name": name, "namespace": namespace,
                      "labels": { "ferry.dev/cache-pool": pool, "kubernetes.io/service-name": service } },
        "addressType": "IPv4",
        "ports": [{ "name": "metrics", "port": 4191 }, { "name": "inbound", "port": 4143 }],
        "endpoints": endpoints,
    })
}

fn members(published: &Published, pool: &str) -> Vec<(String, Option<String>)> {
    published
        .state
        .discovered_pools
        .get(pool)
        .map(|p| {
            p.members
                .iter()
                .map(|m| {
                    (
                        m.address.clone(),
                        m.identity.as_ref().map(|i| i.to_string()),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn endpoint_slices_make_pools_and_terminating_endpoints_leave_them() {
    let fake = FakeKube::start().await;
    fake.add_pod("ferry", "worker-0", "worker");
    fake.add_pod("ferry", "worker-1", "worker");
    fake.add_pod("ferry", "worker-2", "cache");
    fake.apply(SERVICES, pool_service("ferry", "workers", "cache-workers"));
    fake.apply(
        SLICES,
        slice(
            "ferry",
            "workers-abc",
            "workers",
            "cache-workers",
            &[
                ("10.0.0.1", "worker-0", true, false),
                ("10.0.0.2", "worker-1", true, false),
                ("10.0.0.9", "worker-9", false, false),
            ],
        ),
    );
    let store = start(&fake);
    let worker = Some("spiffe://cluster.local/ns/ferry/sa/worker".to_owned());
    let state = published(&store, |p| members(p, "cache-workers").len() == 2).await;
    assert_eq!(
        members(&state, "cache-workers"),
        [
            ("10.0.0.1:4143".to_owned(), worker.clone()),
            ("10.0.0.2:4143".to_owned(), worker.clone())
        ],
        "ready endpoints on the inbound port, each with its Pod's identity"
    );

    // worker-1 terminates: it leaves the pool (drained); a new slice adds worker-2.
    fake.apply(
        SLICES,
        slice(
            "ferry",
            "workers-abc",
            "workers",
            "cache-workers",
            &[
                ("10.0.0.1", "worker-0", true, false),
                ("10.0.0.2", "worker-1", false, true),
            ],
        ),
    );
    fake.apply(
        SLICES,
        slice(
            "ferry",
            "workers-def",
            "workers",
            "cache-workers",
            &[("10.0.0.3", "worker-2", true, false)],
        ),
    );
    let state = published(&store, |p| {
        members(p, "cache-workers")
            .iter()
            .map(|m| m.0.as_str())
            .collect::<Vec<_>>()
            == ["10.0.0.1:4143", "10.0.0.3:4143"]
    })
    .await;
    assert_eq!(
        members(&state, "cache-workers")[1].1.as_deref(),
        Some("spiffe://cluster.local/ns/ferry/sa/cache")
    );

    // The Service goes: so does the pool.
    fake.delete(SERVICES, "ferry", "workers");
    published(&store, |p| {
        !p.state.discovered_pools.contains_key("cache-workers")
    })
    .await;
}

#[tokio::test]
async fn token_review_names_service_accounts_and_refuses_the_rest() {
    let fake = FakeKube::start().await;
    let audience = json!(["ferry.dev/identity"]);
    fake.review(
        "good",
        json!({ "authenticated": true, "audiences": audience,
                "user": { "username": "system:serviceaccount:train:job" } }),
    );
    fake.review(
        "other-audience",
        json!({ "authenticated": true, "audiences": ["https://kubernetes.default.svc"],
                "user": { "username": "system:serviceaccount:train:job" } }),
    );
    fake.review(
        "a-person",
        json!({ "authenticated": true, "audiences": audience, "user": { "username": "alice" } }),
    );
    let validator = TokenReviewValidator::new(fake.client());
    let workload = validator.validate("good").await.expect("valid");
    assert_eq!(
        (
            workload.namespace.as_str(),
            workload.service_account.as_str()
        ),
        ("train", "job")
    );
    for token in ["other-audience", "a-person", "unknown"] {
        assert!(
            matches!(validator.validate(token).await, Err(TokenError::Invalid)),
            "{token} is refused"
        );
    }
    assert!(matches!(
        validator.validate("").await,
        Err(TokenError::Missing)
    ));
    let asked = fake.reviews();
    assert_eq!(
        asked[0]["spec"]["audiences"], audience,
        "the review asks for Ferry's audience"
    );
}

/// (API group, resource, verb) of a request to the API server.
fn permission(method: &http::Method, path: &str, watching: bool) -> (String, String, String) {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match segments.as_slice() {
        ["api", "v1", rest @ ..] => (String::new(), rest.to_vec()),
        ["apis", group, _version, rest @ ..] => ((*group).to_owned(), rest.to_vec()),
        _ => panic!("unexpected path {path}"),
    };
    let (resource, named) = match rest.as_slice() {
        ["namespaces", _, resource] => (*resource, false),
        ["namespaces", _, resource, _name] => (*resource, true),
        [resource] => (*resource, false),
        [resource, _name] => (*resource, true),
        _ => panic!("unexpected path {path}"),
    };
    let verb = match (method.as_str(), named, watching) {
        ("GET", _, true) => "watch",
        ("GET", true, false) => "get",
        ("GET", false, false) => "list",
        ("POST", _, _) => "create",
        (other, _, _) => panic!("unexpected method {other}"),
    };
    (group, resource.to_owned(), verb.to_owned())
}

#[tokio::test]
async fn the_written_rbac_grants_every_call_the_source_makes() {
    let fake = FakeKube::start().await;
    fake.add_pod("ferry", "worker-0", "worker");
    fake.apply(SERVICES, pool_service("ferry", "workers", "cache-workers"));
    fake.apply(
        SLICES,
        slice(
            "ferry",
            "s",
            "workers",
            "cache-workers",
            &[("10.0.0.1", "worker-0", true, false)],
        ),
    );
    fake.apply(CONFIGMAPS, policy_map("train", "bad", "datasets: 7\n"));
    fake.review("t", json!({ "authenticated": false }));
    let store = start(&fake);
    published(&store, |p| !members(p, "cache-workers").is_empty()).await;
    fake.wait_for_event(LIMIT, |e| e["reason"] == "InvalidPolicy")
        .await
        .expect("event");
    let _ = TokenReviewValidator::new(fake.client()).validate("t").await;

    let rbac_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../charts/ferry/templates/control-plane-rbac.yaml");
    let text = std::fs::read_to_string(&rbac_path).expect("the RBAC file");
    let mut granted = Vec::new();
    for document in text.split("\n---\n") {
        let value: Value = ferry_config::from_yaml(document, "rbac").expect("YAML");
        if value["kind"] != "ClusterRole" {
            continue;
        }
        for rule in value["rules"].as_array().expect("rules") {
            for group in rule["apiGroups"].as_array().expect("groups") {
                for resource in rule["resources"].as_array().expect("resources") {
                    for verb in rule["verbs"].as_array().expect("verbs") {
                        granted.push((
                            group.as_str().unwrap_or_default().to_owned(),
                            resource.as_str().unwrap_or_default().to_owned(),
                            verb.as_str().unwrap_or_default().to_owned(),
                        ));
                    }
                }
            }
        }
    }
    let mut used: Vec<(String, String, String)> = fake
        .requests()
        .iter()
        .map(|(method, path, watching)| permission(method, path, *watching))
        .collect();
    used.sort();
    used.dedup();
    for call in &used {
        assert!(
            granted.contains(call),
            "{call:?} is used but not granted in {}",
            rbac_path.display()
        );
    }
    for grant in &granted {
        assert!(used.contains(grant), "{grant:?} is granted but never used");
    }
}
