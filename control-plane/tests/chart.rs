//! The Helm chart with a real `helm`: lint, the schema refusing bad values,
//! every rendered object a valid Kubernetes object (typed, no field
//! dropped), the settings and flags it passes understood by the binaries,
//! and the manifests applied to a real API server.

mod kube_env;

use std::collections::BTreeSet;
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use ferry_config::{ControlPlaneConfig, PolicyFile};
use kube_env::chart::{self, ValuesFile};

const NAMESPACE: &str = "ferry-system";

/// Every option on.
const ALL_ON: &str = r#"
workers: { disk: { enabled: true, persistent: true, size: 200Gi, storageClassName: fast } }
identity: { issuer: { existingSecret: ferry-issuer } }
injection: { nativeSidecars: never, sidecar: { cacheSize: 2GiB, cachePolicy: lru, cpuLimit: "2", memoryLimit: 4Gi }, mount: { allowed: true, path: /data } }
datasets:
  - { name: imagenet, origin: "s3://ml-datasets/imagenet/train/", chunk_size: 4MiB, cache: { sidecar: { size: 4GiB }, worker: { size: 64GiB } } }
tenants:
  - { namespace: train, origins: ["s3://ml-datasets/train/"] }
monitoring:
  serviceMonitor: { enabled: true }
  podMonitor: { enabled: true }
  prometheusRule: { enabled: true }
  grafanaDashboard: { enabled: true }
imagePullSecrets: [{ name: registry }]
"#;

/// The branches the other two leave out: a disk tier on an emptyDir, no
/// injection, one worker.
const ALTERNATIVES: &str = r#"
workers: { replicas: 1, disk: { enabled: true, size: 20Gi } }
injection: { enabled: false }
"#;

fn kinds(objects: &[Value]) -> Vec<String> {
    objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {:?}", kinds(objects)))
}

#[test]
fn helm_lint_is_clean_with_defaults_and_with_everything_on() {
    let Some(helm) = chart::helm("lint") else {
        return;
    };
    let all_on = ValuesFile::new(ALL_ON);
    let dir = chart::chart_dir();
    let alternatives = ValuesFile::new(ALTERNATIVES);
    for extra in [
        vec![],
        vec!["-f", all_on.as_str()],
        vec!["-f", alternatives.as_str()],
    ] {
        let mut args = vec!["lint", dir.to_str().expect("path"), "--strict"];
        args.extend(extra);
        let (ok, stdout, stderr) = chart::run(&helm, &args);
        assert!(ok, "helm lint {args:?}: {stdout}{stderr}");
        assert!(stdout.contains("0 chart(s) failed"), "{stdout}");
    }
}

#[test]
fn bad_values_are_refused_by_the_schema_with_their_key() {
    let Some(helm) = chart::helm("schema") else {
        return;
    };
    for (values, says) in [
        ("workers: { replicas: -1 }", "workers.replicas"),
        ("controlPlane: { replicas: 0 }", "controlPlane.replicas"),
        ("workers: { cacheSize: lots }", "workers.cacheSize"),
        ("workers: { disk: { size: 10GB } }", "workers.disk.size"),
        (
            "injection: { sidecar: { memoryLimit: 4 gigs } }",
            "injection.sidecar.memoryLimit",
        ),
        (
            "injection: { failurePolicy: Sometimes }",
            "injection.failurePolicy",
        ),
        ("controlPlane: { replcas: 3 }", "replcas"),
        ("datasets: [{ name: imagenet }]", "origin"),
        ("tenants: [{ namespace: Team_A }]", "tenants.0.namespace"),
        (
            "injection: { mount: { allowed: true, path: data } }",
            "injection.mount.path",
        ),
        (
            "injection: { mount: { allowed: true, path: /a/../b } }",
            "injection.mount.path",
        ),
        (
            "injection: { mount: { path: /data } }",
            "injection.mount.path needs injection.mount.allowed",
        ),
    ] {
        let error = chart::render(&helm, NAMESPACE, values).expect_err(values);
        assert!(error.contains(says), "{values}: {error}");
    }
}

/// Deserializes `object` into `K` and back: an error, or a field the type
/// does not know (dropped on the way), fails.
fn round_trip<K: Serialize + DeserializeOwned>(object: &Value) -> Result<(), String> {
    let typed: K = serde_json::from_value(object.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    let want = without_nulls(object.clone());
    if back == want {
        Ok(())
    } else {
        Err(format!(
            "fields were dropped or changed:\nrendered  {}\nround trip {}",
            serde_json::to_string(&want).unwrap_or_default(),
            serde_json::to_string(&back).unwrap_or_default()
        ))
    }
}

fn without_nulls(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, without_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(without_nulls).collect()),
        other => other,
    }
}

/// Checks one rendered object against its typed k8s-openapi struct (or,
/// for the Prometheus Operator's kinds, its shape).
fn check_object(object: &Value) -> Result<(), String> {
    use k8s_openapi::api::{admissionregistration, apps, core, policy, rbac};
    match object["kind"].as_str().unwrap_or_default() {
        "ServiceAccount" => round_trip::<core::v1::ServiceAccount>(object),
        "ConfigMap" => round_trip::<core::v1::ConfigMap>(object),
        "Service" => round_trip::<core::v1::Service>(object),
        "Deployment" => round_trip::<apps::v1::Deployment>(object),
        "StatefulSet" => round_trip::<apps::v1::StatefulSet>(object),
        "PodDisruptionBudget" => round_trip::<policy::v1::PodDisruptionBudget>(object),
        "ClusterRole" => round_trip::<rbac::v1::ClusterRole>(object),
        "ClusterRoleBinding" => round_trip::<rbac::v1::ClusterRoleBinding>(object),
        "Role" => round_trip::<rbac::v1::Role>(object),
        "RoleBinding" => round_trip::<rbac::v1::RoleBinding>(object),
        "MutatingWebhookConfiguration" => {
            round_trip::<admissionregistration::v1::MutatingWebhookConfiguration>(object)
        }
        "ServiceMonitor" | "PodMonitor" | "PrometheusRule"
            if object["apiVersion"] == "monitoring.coreos.com/v1" && object["spec"].is_object() =>
        {
            Ok(())
        }
        other => Err(format!(
            "{other} is not a kind this chart is known to render"
        )),
    }
}

#[test]
fn every_rendered_object_is_a_valid_kubernetes_object() {
    let Some(helm) = chart::helm("objects") else {
        return;
    };
    for (label, values) in [
        ("defaults", ""),
        ("everything on", ALL_ON),
        ("the alternatives", ALTERNATIVES),
    ] {
        let objects = chart::render(&helm, NAMESPACE, values).expect("renders");
        eprintln!("helm template with {label}: {} objects", objects.len());
        for object in &objects {
            if let Err(err) = check_object(object) {
                panic!(
                    "{label}: {} {}: {err}",
                    object["kind"], object["metadata"]["name"]
                );
            }
        }
    }
}

/// The flags of `binary SUBCOMMAND --help`.
fn flags_of(binary: &Path, subcommand: Option<&str>) -> BTreeSet<String> {
    let output = std::process::Command::new(binary)
        .args(subcommand)
        .arg("--help")
        .output()
        .expect("--help");
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .filter(|word| word.starts_with("--"))
        .map(|word| word.trim_end_matches([',', '=']).to_owned())
        .collect()
}

fn container(object: &Value) -> &Value {
    &object["spec"]["template"]["spec"]["containers"][0]
}

#[test]
fn the_settings_and_flags_the_chart_passes_are_what_the_binaries_take() {
    let Some(helm) = chart::helm("settings") else {
        return;
    };
    let plane_binary = Path::new(env!("CARGO_BIN_EXE_ferry-control-plane"));
    let proxy_binary = plane_binary.with_file_name("ferry-proxy");
    assert!(
        proxy_binary.exists(),
        "{} is missing: run the workspace tests",
        proxy_binary.display()
    );
    for values in ["", ALL_ON, ALTERNATIVES] {
        let objects = chart::render(&helm, NAMESPACE, values).expect("renders");
        // The control plane's file: its schema takes it whole.
        let settings =
            find(&objects, "ConfigMap", "ferry-control-plane")["data"]["control-plane.yaml"]
                .as_str()
                .expect("control-plane.yaml");
        let config: ControlPlaneConfig = ferry_config::from_yaml(settings, "control-plane.yaml")
            .expect("the control plane reads it");
        assert!(config.kubernetes);
        config
            .injection
            .validate()
            .expect("consistent injection settings");
        assert_eq!(config.injection.enabled, values != ALTERNATIVES);
        assert_eq!(config.injection.allow_mount, values == ALL_ON);
        assert_eq!(
            config.injection.defaults.mount.as_ref().map(|p| p.as_str()),
            (values == ALL_ON).then_some("/data")
        );
        assert_eq!(config.namespace, NAMESPACE);
        assert!(
            config
                .server_names
                .contains(&"ferry-control-plane.ferry-system.svc".to_owned()),
            "the Service's name is in the API's certificate"
        );
        // Their command lines: every flag exists.
        for (kind, name, binary, subcommand) in [
            ("Deployment", "ferry-control-plane", plane_binary, None),
            (
                "StatefulSet",
                "ferry-worker",
                proxy_binary.as_path(),
                Some("worker"),
            ),
        ] {
            let container = container(find(&objects, kind, name));
            let known = flags_of(binary, subcommand);
            for arg in container["args"].as_array().expect("args") {
                let arg = arg.as_str().expect("text");
                if arg.starts_with("--") {
                    assert!(
                        known.contains(arg),
                        "{kind} {name}: {arg} is not a flag of {}",
                        binary.display()
                    );
                }
            }
        }
    }
    // The mesh admin's policy, when values give one.
    let objects = chart::render(&helm, NAMESPACE, ALL_ON).expect("renders");
    let policy = find(&objects, "ConfigMap", "ferry-mesh-policy");
    assert_eq!(policy["metadata"]["labels"]["ferry.dev/policy"], "true");
    let text = policy["data"]["policy.yaml"].as_str().expect("policy.yaml");
    let file: PolicyFile = ferry_config::from_yaml(text, "policy.yaml").expect("a policy file");
    file.check("policy.yaml").expect("valid");
    assert_eq!(file.datasets[0].name, "imagenet");
    assert_eq!(file.tenants[0].namespace, "train");
    // Monitoring: the rules and the dashboard are the files, not copies.
    let rules = find(&objects, "PrometheusRule", "ferry");
    let file_rules: Value = ferry_config::from_yaml(
        &std::fs::read_to_string(chart::chart_dir().join("alerts/ferry.rules.yaml"))
            .expect("rules"),
        "rules",
    )
    .expect("YAML");
    assert_eq!(rules["spec"]["groups"], file_rules["groups"]);
    let dashboard = find(&objects, "ConfigMap", "ferry-dashboard");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let json: Value = serde_json::from_str(dashboard["data"]["ferry.json"].as_str().expect("json"))
        .expect("the dashboard is JSON");
    assert_eq!(json["uid"], "ferry-golden");
}

/// The rendered manifests are accepted by a real API server (the Prometheus
/// Operator's kinds need their CRDs, so they are left out here).
#[tokio::test]
async fn the_rendered_chart_applies_to_a_real_api_server() {
    let Some(helm) = chart::helm("apply") else {
        return;
    };
    let Some(env) = kube_env::KubeEnv::start("chart-apply") else {
        return;
    };
    let client = env.client().await;
    let values = ALL_ON.replace(
        "podMonitor: { enabled: true }",
        "podMonitor: { enabled: false }",
    );
    // Each in a namespace of its own: a StatefulSet's volume claims cannot
    // change in place, as an upgrade that turns persistence on would find.
    for (namespace, values) in [
        ("ferry-system", ""),
        ("ferry-full", values.as_str()),
        ("ferry-alt", ALTERNATIVES),
    ] {
        kube_env::namespace(&client, namespace, &[]).await;
        let objects = chart::render(&helm, namespace, values).expect("renders");
        for object in objects
            .into_iter()
            .filter(|o| o["apiVersion"] != "monitoring.coreos.com/v1")
        {
            kube_env::apply(&client, object).await;
        }
    }
}

/// No image builder runs here, so the Dockerfile is checked against what
/// uses it: the toolchain the workspace pins, the binaries and the user the
/// chart and the injected sidecar run.
#[test]
fn the_image_is_what_the_chart_runs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).expect("Dockerfile");
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("Cargo.toml");
    let rust_version = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .expect("rust-version")
        .trim_matches('"');
    assert!(
        dockerfile.contains(&format!("FROM rust:{rust_version}-")),
        "the builder uses Rust {rust_version}"
    );
    for binary in ["ferry-proxy", "ferry-control-plane"] {
        assert!(
            dockerfile.contains(&format!("target/release/{binary} /out/{binary}")),
            "{binary} is in the image"
        );
    }
    assert!(dockerfile.contains("USER 65532:65532"));
    let Some(helm) = chart::helm("image") else {
        return;
    };
    let objects = chart::render(&helm, NAMESPACE, "").expect("renders");
    let chart_file =
        std::fs::read_to_string(chart::chart_dir().join("Chart.yaml")).expect("Chart.yaml");
    let app_version = chart_file
        .lines()
        .find_map(|l| l.strip_prefix("appVersion: "))
        .expect("appVersion")
        .trim_matches('"');
    let package_version = manifest
        .lines()
        .find_map(|l| l.strip_prefix("version = "))
        .expect("version")
        .trim_matches('"');
    assert_eq!(
        app_version, package_version,
        "the chart's appVersion is the binaries' version"
    );
    for (kind, name, command) in [
        ("Deployment", "ferry-control-plane", "ferry-control-plane"),
        ("StatefulSet", "ferry-worker", "ferry-proxy"),
    ] {
        let container = container(find(&objects, kind, name));
        assert_eq!(container["image"], format!("ferry:{app_version}"));
        assert_eq!(container["command"][0], command);
        assert_eq!(container["securityContext"]["runAsUser"], 65532);
    }
}
