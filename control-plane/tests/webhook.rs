//! Injection end to end against a real kube-apiserver: the webhook is
//! registered (a `url` clientConfig on loopback: no Service routing without
//! kube-proxy), the control plane keeps its `caBundle`, and Pods created
//! through the API server are stored injected — or untouched, or refused
//! with their message — and still created when the control plane is down.

mod kube_env;

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};

use kube_env::{KubeEnv, apply, plane::KubePlane};

const OWN: &str = "ferry-system";

/// A port free now, for the webhook to listen on: its URL must be
/// registered before the control plane starts.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

fn pod(name: &str, annotations: Value, host_network: bool) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "annotations": annotations },
        "spec": {
            "hostNetwork": host_network,
            "containers": [{ "name": "trainer", "image": "pytorch/pytorch",
                             "env": [{ "name": "EPOCHS", "value": "10" }] }],
        },
    }))
    .expect("pod")
}

fn sidecar(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::Container> {
    pod.spec
        .as_ref()?
        .init_containers
        .as_ref()?
        .iter()
        .find(|c| c.name == "ferry-proxy")
}

#[tokio::test]
async fn pods_are_injected_through_the_api_server() {
    // Privileged containers allowed, as kubeadm and managed clusters do: the
    // mount option's sidecar is one.
    let Some(env) = KubeEnv::start_with("webhook", "--allow-privileged=true") else {
        return;
    };
    let admin = env.client().await;
    kube_env::namespace(&admin, OWN, &[]).await;
    kube_env::namespace(&admin, "train", &["default"]).await;
    kube_env::namespace(&admin, "plain", &["default"]).await;
    apply(
        &admin,
        json!({ "apiVersion": "v1", "kind": "Namespace",
                "metadata": { "name": "train", "annotations": { "ferry.dev/inject": "enabled" } } }),
    )
    .await;
    let port = free_port();
    apply(
        &admin,
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": { "name": "ferry-sidecar-injector" },
            "webhooks": [{
                "name": "inject.ferry.dev",
                "admissionReviewVersions": ["v1"],
                "clientConfig": { "url": format!("https://127.0.0.1:{port}/v1/inject") },
                "rules": [{ "operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                            "resources": ["pods"], "scope": "Namespaced" }],
                "namespaceSelector": { "matchExpressions": [{ "key": "kubernetes.io/metadata.name",
                    "operator": "NotIn", "values": [OWN, "kube-system", "kube-public"] }] },
                "failurePolicy": "Ignore",
                "sideEffects": "None",
                "timeoutSeconds": 5,
                "reinvocationPolicy": "IfNeeded",
            }],
        }),
    )
    .await;
    let listen = format!("127.0.0.1:{port}");
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_ferry-control-plane"));
    let plane = KubePlane::start(
        binary,
        &env.kubeconfig,
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
            "--inject",
            "--webhook-listen",
            &listen,
            "--webhook-configuration",
            "ferry-sidecar-injector",
            "--native-sidecars",
            "always",
            "--sidecar-image",
            "ferry:test",
            "--allow-mount",
        ],
    );
    let configurations: Api<
        k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration,
    > = Api::all(admin.clone());
    kube_env::until("the caBundle is patched", || async {
        configurations
            .get("ferry-sidecar-injector")
            .await
            .ok()
            .and_then(|c| c.webhooks)
            .and_then(|w| w[0].client_config.ca_bundle.clone())
            .map(|b| b.0)
            == Some(plane.bundle.clone().into_bytes())
    })
    .await;

    // Injected, as the API server stores it.
    let train: Api<Pod> = Api::namespaced(admin.clone(), "train");
    let created = train
        .create(&PostParams::default(), &pod("trainer-0", json!({}), false))
        .await
        .expect("created");
    let stored = train.get("trainer-0").await.expect("stored");
    let proxy = sidecar(&stored).expect("a ferry-proxy init container");
    assert_eq!(
        proxy.restart_policy.as_deref(),
        Some("Always"),
        "a native sidecar"
    );
    assert_eq!(
        stored
            .spec
            .as_ref()
            .and_then(|s| s.init_containers.as_ref())
            .map(|c| c[0].name.as_str()),
        Some("ferry-proxy"),
        "first among the init containers"
    );
    let startup = proxy
        .startup_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref());
    assert_eq!(startup.and_then(|h| h.path.as_deref()), Some("/ready"));
    assert!(proxy.readiness_probe.is_some());
    let env_of = |name: &str| {
        proxy
            .env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    };
    assert_eq!(
        env_of("FERRY_TRUST_BUNDLE"),
        Some(plane.bundle.clone()),
        "the bundle rides in the pod spec"
    );
    let token = stored
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .and_then(|v| v.iter().find(|v| v.name == "ferry-token"))
        .and_then(|v| v.projected.as_ref())
        .and_then(|p| p.sources.as_ref())
        .and_then(|s| s[0].service_account_token.clone())
        .expect("a projected token");
    assert_eq!(token.audience.as_deref(), Some("ferry.dev/identity"));
    assert_eq!(token.expiration_seconds, Some(3600));
    let app = &stored.spec.as_ref().expect("spec").containers[0];
    let app_env: Vec<(&str, Option<&str>)> = app
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.as_str(), e.value.as_deref()))
        .collect();
    assert!(app_env.contains(&("EPOCHS", Some("10"))), "kept");
    assert!(app_env.contains(&("AWS_ENDPOINT_URL_S3", Some("http://127.0.0.1:4140"))));
    assert!(app_env.contains(&("FERRY_ENDPOINT", Some("http://127.0.0.1:4140"))));
    assert_eq!(
        stored
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("ferry.dev/proxy"))
            .map(String::as_str),
        Some("sidecar")
    );
    eprintln!(
        "what Ferry added to the stored Pod:\n{}",
        added_by_ferry(&stored)
    );
    drop(created);

    // Left alone: declined, host network, a namespace that asked nothing.
    let declined = train
        .create(
            &PostParams::default(),
            &pod(
                "tensorboard",
                json!({ "ferry.dev/inject": "disabled" }),
                false,
            ),
        )
        .await
        .expect("created");
    let host = train
        .create(&PostParams::default(), &pod("agent", json!({}), true))
        .await
        .expect("created");
    let plain: Api<Pod> = Api::namespaced(admin.clone(), "plain");
    let elsewhere = plain
        .create(&PostParams::default(), &pod("web", json!({}), false))
        .await
        .expect("created");
    for untouched in [&declined, &host, &elsewhere] {
        assert!(
            sidecar(untouched).is_none(),
            "{:?} is untouched",
            untouched.metadata.name
        );
        assert_eq!(
            untouched
                .spec
                .as_ref()
                .map(|s| s.containers[0].env.iter().flatten().count()),
            Some(1)
        );
    }

    // Refused with its message, as kubectl apply would show it.
    let refused = train
        .create(
            &PostParams::default(),
            &pod(
                "typo",
                json!({ "config.ferry.dev/cache-size": "huge" }),
                false,
            ),
        )
        .await
        .expect_err("refused");
    let message = refused.to_string();
    assert!(
        message.contains("config.ferry.dev/cache-size")
            && message.contains("huge")
            && message.contains("allowed"),
        "{message}"
    );
    // The POSIX mount, allowed here: the API server takes the privileged
    // sidecar with its Bidirectional volume and the app's HostToContainer view.
    let mounted = train
        .create(
            &PostParams::default(),
            &pod(
                "imagefolder",
                json!({ "config.ferry.dev/mount": "/data" }),
                false,
            ),
        )
        .await
        .expect("created with the mount");
    let proxy = sidecar(&mounted).expect("injected");
    let security = proxy.security_context.as_ref().expect("security context");
    assert_eq!(security.privileged, Some(true));
    let propagation = |mounts: &Option<Vec<k8s_openapi::api::core::v1::VolumeMount>>| {
        mounts
            .iter()
            .flatten()
            .find(|m| m.name == "ferry-mount")
            .map(|m| (m.mount_path.clone(), m.mount_propagation.clone()))
    };
    assert_eq!(
        propagation(&proxy.volume_mounts),
        Some((
            "/var/run/ferry/mount".to_owned(),
            Some("Bidirectional".to_owned())
        ))
    );
    let app = &mounted.spec.as_ref().expect("spec").containers[0];
    assert_eq!(
        propagation(&app.volume_mounts),
        Some(("/data".to_owned(), Some("HostToContainer".to_owned())))
    );
    eprintln!(
        "what Ferry added to a pod asking for the mount:\n{}",
        added_by_ferry(&mounted)
    );

    let metrics = reqwest::get(format!("http://{}/metrics", plane.admin))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for expected in [
        r#"injection_total{result="injected",reason="namespace"} 2"#,
        r#"injection_total{result="skipped",reason="disabled"} 1"#,
        r#"injection_total{result="skipped",reason="host_network"} 1"#,
        r#"injection_total{result="skipped",reason="not_enabled"} 1"#,
        r#"injection_total{result="denied",reason="invalid_setting"} 1"#,
    ] {
        assert!(metrics.contains(expected), "{expected} in:\n{metrics}");
    }

    // The control plane down: pods are still created (failurePolicy: Ignore).
    plane.stop();
    let started = std::time::Instant::now();
    let without = train
        .create(
            &PostParams::default(),
            &pod("during-outage", json!({}), false),
        )
        .await
        .expect("created while the webhook is down");
    assert!(sidecar(&without).is_none());
    assert!(started.elapsed() < Duration::from_secs(10));
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(admin.clone(), OWN);
    let ca = secrets.get("ferry-ca").await.expect("the CA Secret");
    assert_eq!(ca.type_.as_deref(), Some("kubernetes.io/tls"));

    // Restarted with native sidecars `auto`: this API server is 1.28, so
    // the proxy is the first ordinary container, holding the app until ready.
    // The same CA comes back from its Secret: the caBundle stays valid.
    let plane = KubePlane::start(
        binary,
        &env.kubeconfig,
        &env.dir.join("plane-again"),
        &[
            "--namespace",
            OWN,
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--ca-secret",
            "ferry-ca",
            "--inject",
            "--webhook-listen",
            &listen,
            "--webhook-configuration",
            "ferry-sidecar-injector",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&ca.data.as_ref().expect("data")["tls.crt"].0).trim(),
        plane.bundle.trim(),
        "the restarted control plane uses the CA in the Secret"
    );
    let legacy = train
        .create(&PostParams::default(), &pod("legacy-0", json!({}), false))
        .await
        .expect("created");
    let first = &legacy.spec.as_ref().expect("spec").containers[0];
    assert_eq!(first.name, "ferry-proxy", "the first container");
    assert!(first.restart_policy.is_none());
    let hook = first
        .lifecycle
        .as_ref()
        .and_then(|l| l.post_start.as_ref())
        .and_then(|h| h.exec.as_ref())
        .and_then(|e| e.command.clone())
        .expect("a postStart hook");
    assert_eq!(&hook[..2], ["ferry-proxy", "await"]);
    assert!(sidecar(&legacy).is_none(), "not an init container");
    // Without --allow-mount, a pod that asks for the mount is refused, saying why.
    let refused = train
        .create(
            &PostParams::default(),
            &pod(
                "imagefolder-2",
                json!({ "config.ferry.dev/mount": "/data" }),
                false,
            ),
        )
        .await
        .expect_err("refused");
    let message = refused.to_string();
    assert!(
        message.contains("config.ferry.dev/mount") && message.contains("injection.mount.allowed"),
        "{message}"
    );
    drop(plane);
}

/// The parts of `pod` Ferry added, as YAML: the sidecar, the token volume,
/// the app's new variables and the label.
fn added_by_ferry(pod: &Pod) -> String {
    let spec = pod.spec.as_ref().expect("spec");
    let added = json!({
        "metadata": {
            "labels": { "ferry.dev/proxy": "sidecar" },
            "annotations": { "ferry.dev/injected": "true" },
        },
        "spec": {
            "initContainers": [sidecar(pod)],
            "containers": [{
                "name": spec.containers[0].name,
                "env": spec.containers[0].env.iter().flatten()
                    .filter(|e| e.name != "EPOCHS").collect::<Vec<_>>(),
                "volumeMounts": spec.containers[0].volume_mounts.iter().flatten()
                    .filter(|m| m.name == "ferry-mount").collect::<Vec<_>>(),
            }],
            "volumes": spec.volumes.iter().flatten()
                .filter(|v| v.name.starts_with("ferry-")).collect::<Vec<_>>(),
        },
    });
    let mut text = ferry_config::to_yaml(&added).unwrap_or_default();
    // The bundle is long and says nothing here.
    if let Some(start) = text.find("-----BEGIN CERTIFICATE-----")
        && let Some(end) = text[start..].find("-----END CERTIFICATE-----")
    {
        text.replace_range(start..start + end, "-----BEGIN CERTIFICATE-----\\n...");
    }
    text
}
