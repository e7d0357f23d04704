//! The injection webhook's decisions and patches against golden files:
//! each `tests/injection/<name>.pod.yaml` is admitted, and what the webhook
//! answers (result, reason, message, patch) must equal
//! `<name>.golden.json` (`UPDATE_GOLDEN=1` rewrites them). An injected pod,
//! patched, is a valid Pod, and admitting it again changes nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionReview};
use serde_json::{Value, json};

use ferry_config::InjectionConfig;
use ferry_control_plane::inject::{Decision, Injector, SidecarTemplate};

const BUNDLE: &str = "-----BEGIN CERTIFICATE-----\nTEST\n-----END CERTIFICATE-----\n";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/injection")
}

fn injector(native: bool) -> Injector {
    injector_allowing_mount(native, true)
}

fn injector_allowing_mount(native: bool, allow_mount: bool) -> Injector {
    let template = SidecarTemplate {
        image: "ferry:test".into(),
        image_pull_policy: "IfNotPresent".into(),
        control_plane_url: "https://ferry-control-plane.ferry-system.svc:8086".into(),
        control_plane_namespace: "ferry-system".into(),
        trust_bundle: BUNDLE.into(),
        native,
        allow_mount,
    };
    let namespaces: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::from([
        (
            "train".to_owned(),
            BTreeMap::from([("ferry.dev/inject".to_owned(), "enabled".to_owned())]),
        ),
        ("default".to_owned(), BTreeMap::new()),
    ]);
    Injector::new(
        template,
        InjectionConfig::default().defaults,
        "ferry-system",
        Box::new(namespaces),
    )
}

/// The AdmissionReview the API server sends for creating `pod`.
fn review_of(pod: &Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": { "group": "", "version": "v1", "kind": "Pod" },
            "resource": { "group": "", "version": "v1", "resource": "pods" },
            "requestKind": { "group": "", "version": "v1", "kind": "Pod" },
            "requestResource": { "group": "", "version": "v1", "resource": "pods" },
            "name": pod["metadata"]["name"],
            "namespace": pod["metadata"]["namespace"],
            "operation": "CREATE",
            "userInfo": { "username": "system:serviceaccount:kube-system:job-controller" },
            "object": pod,
            "oldObject": null,
            "dryRun": false,
        }
    })
}

/// What the webhook answers for `pod`: the decision and the response.
fn admit(injector: &Injector, pod: &Value) -> (Decision, Value, Option<Value>) {
    let review: AdmissionReview<Pod> = serde_json::from_value(review_of(pod)).expect("review");
    let request: AdmissionRequest<Pod> = review.try_into().expect("request");
    let (decision, response) = injector.answer(&request);
    let patch = response
        .patch
        .as_ref()
        .map(|bytes| serde_json::from_slice::<Value>(bytes).expect("the patch is JSON"));
    let answer = serde_json::to_value(response.into_review()).expect("review JSON");
    (decision, answer, patch)
}

fn golden(name: &str, native: bool) {
    let text =
        std::fs::read_to_string(fixtures().join(format!("{name}.pod.yaml"))).expect("fixture");
    let pod: Value = ferry_config::from_yaml(&text, name).expect("fixture YAML");
    let injector = injector(native);
    let (decision, answer, patch) = admit(&injector, &pod);
    let response = &answer["response"];
    let got = json!({
        "result": decision.result(),
        "reason": decision.reason(),
        "allowed": response["allowed"],
        "message": response["status"]["message"],
        "patch": patch,
    });
    let suffix = if native { "" } else { ".legacy" };
    let path = fixtures().join(format!("{name}{suffix}.golden.json"));
    let rendered = serde_json::to_string_pretty(&got).expect("JSON") + "\n";
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &rendered).expect("write golden");
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} is missing: run with UPDATE_GOLDEN=1", path.display()));
    assert_eq!(
        rendered,
        want,
        "{name}: the answer differs from {}",
        path.display()
    );

    if let Some(patch) = patch {
        // The patched pod is a Pod, and a second admission leaves it as it is.
        let patch: json_patch::Patch = serde_json::from_value(patch).expect("a JSON patch");
        let mut patched = pod.clone();
        json_patch::patch(&mut patched, &patch).expect("the patch applies to the pod");
        let typed: Pod = serde_json::from_value(patched.clone()).expect("a valid Pod");
        let sidecars = typed.spec.as_ref().map_or(0, |s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
                .filter(|c| c.name == "ferry-proxy")
                .count()
        });
        assert_eq!(sidecars, 1, "{name}: one sidecar");
        let (again, _, second) = admit(&injector, &patched);
        assert_eq!(again, Decision::Skip("already_injected"), "{name}");
        assert!(
            second.is_none(),
            "{name}: a second admission changes nothing"
        );
    }
}

#[test]
fn a_plain_training_pod_gets_a_native_sidecar() {
    golden("plain", true);
}

#[test]
fn without_native_sidecars_the_proxy_is_a_first_container_that_holds_the_app() {
    golden("plain", false);
}

#[test]
fn variables_the_app_sets_are_kept() {
    golden("env-set", true);
}

#[test]
fn an_app_with_its_own_credentials_gets_no_placeholders() {
    golden("aws-credentials", true);
}

#[test]
fn a_job_s_pod_gets_the_sidecar_before_its_init_containers() {
    golden("job", true);
}

#[test]
fn every_per_pod_setting_reaches_the_sidecar() {
    golden("annotations", true);
}

#[test]
fn an_invalid_setting_denies_the_pod_with_its_message() {
    golden("bad-annotation", true);
}

#[test]
fn pods_that_must_not_be_injected_are_left_alone() {
    for name in [
        "host-network",
        "already-injected",
        "pod-disabled",
        "plain-namespace",
        "system",
    ] {
        golden(name, true);
    }
}

#[test]
fn a_pod_can_ask_for_itself() {
    golden("pod-enabled", true);
}

#[test]
fn a_pod_that_asks_for_the_mount_shares_it_through_an_empty_dir() {
    golden("mount", true);
    golden("mount", false);
    golden("mount-taken", true);
}

#[test]
fn the_mount_is_refused_where_the_operator_does_not_allow_it() {
    let text = std::fs::read_to_string(fixtures().join("mount.pod.yaml")).expect("fixture");
    let pod: Value = ferry_config::from_yaml(&text, "mount").expect("YAML");
    let (decision, answer, patch) = admit(&injector_allowing_mount(true, false), &pod);
    assert_eq!(decision.result(), "denied");
    assert!(patch.is_none());
    let message = answer["response"]["status"]["message"]
        .as_str()
        .expect("a message");
    assert!(
        message.contains("config.ferry.dev/mount") && message.contains("injection.mount.allowed"),
        "{message}"
    );
    // A pod that does not ask is injected as before.
    let text = std::fs::read_to_string(fixtures().join("plain.pod.yaml")).expect("fixture");
    let pod: Value = ferry_config::from_yaml(&text, "plain").expect("YAML");
    let (decision, _, _) = admit(&injector_allowing_mount(true, false), &pod);
    assert_eq!(decision.result(), "injected");
}

/// On the wire the patch is base64, as the AdmissionReview API says.
#[test]
fn the_answer_carries_the_patch_in_base64() {
    let text = std::fs::read_to_string(fixtures().join("plain.pod.yaml")).expect("fixture");
    let pod: Value = ferry_config::from_yaml(&text, "plain").expect("YAML");
    let injector = injector(true);
    let answer = injector
        .review(review_of(&pod).to_string().as_bytes())
        .expect("an answer");
    let answer: Value = serde_json::from_slice(&answer).expect("JSON");
    let encoded = answer["response"]["patch"]
        .as_str()
        .expect("a base64 string");
    let decoded: k8s_openapi::ByteString =
        serde_json::from_value(Value::String(encoded.to_owned())).expect("base64");
    let (_, _, patch) = admit(&injector, &pod);
    assert_eq!(
        serde_json::from_slice::<Value>(&decoded.0).expect("JSON"),
        patch.expect("a patch")
    );
    assert_eq!(answer["response"]["patchType"], "JSONPatch");
    assert_eq!(
        answer["response"]["uid"],
        "705ab4f5-6393-11e8-b7cc-42010a800002"
    );
}

/// Every flag injection passes to the sidecar exists in `ferry-proxy sidecar --help`.
#[test]
fn the_injected_flags_exist() {
    let proxy = Path::new(env!("CARGO_BIN_EXE_ferry-control-plane")).with_file_name("ferry-proxy");
    assert!(
        proxy.exists(),
        "{} is missing: run the workspace tests (scripts/test) so it is built",
        proxy.display()
    );
    let help = std::process::Command::new(&proxy)
        .args(["sidecar", "--help"])
        .output()
        .expect("ferry-proxy sidecar --help");
    let help = String::from_utf8_lossy(&help.stdout);
    for fixture in ["annotations", "mount"] {
        let text = std::fs::read_to_string(fixtures().join(format!("{fixture}.pod.yaml")))
            .expect("fixture");
        let pod: Value = ferry_config::from_yaml(&text, fixture).expect("YAML");
        let (_, _, patch) = admit(&injector(true), &pod);
        let patch = patch.expect("injected");
        let sidecar = patch
            .as_array()
            .expect("operations")
            .iter()
            .find(|op| {
                op["path"] == "/spec/initContainers/0" || op["path"] == "/spec/initContainers"
            })
            .map(|op| match op["value"].as_array() {
                Some(list) => list[0].clone(),
                None => op["value"].clone(),
            })
            .expect("the sidecar");
        for arg in sidecar["args"].as_array().expect("args") {
            let arg = arg.as_str().expect("text");
            if arg.starts_with("--") {
                assert!(
                    help.contains(arg),
                    "{arg} is not a flag of ferry-proxy sidecar"
                );
            }
        }
    }
    let await_help = std::process::Command::new(&proxy)
        .args(["await", "--help"])
        .output()
        .expect("ferry-proxy await --help");
    assert!(String::from_utf8_lossy(&await_help.stdout).contains("--admin"));
}
