//! What injection adds to a pod, as a JSON patch: the `ferry-proxy`
//! sidecar (a native sidecar where the cluster has them, else a first
//! container that holds the app until it is ready), its service-account
//! token, and the variables that point the app's S3 clients at it.

use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{Value, json};

use ferry_config::PodSettings;

use super::decide::SIDECAR_NAME;

/// Where the app reaches the sidecar.
pub const ENDPOINT: &str = "http://127.0.0.1:4140";
/// The sidecar's admin port (probes, metrics).
pub const ADMIN_PORT: u16 = 4191;
/// Where the projected token is mounted in the sidecar.
pub const TOKEN_DIR: &str = "/var/run/secrets/ferry.dev";
/// The projected token's volume.
pub const TOKEN_VOLUME: &str = "ferry-token";
/// Audience of the projected token (what TokenReview checks).
const TOKEN_AUDIENCE: &str = crate::sources::kubernetes::TOKEN_AUDIENCE;
/// Variables that mean a container brings AWS credentials of its own.
const OWN_CREDENTIALS: [&str; 4] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_PROFILE",
];
/// Annotation the webhook leaves on an injected pod.
pub const STATUS_ANNOTATION: &str = "ferry.dev/injected";
/// Label of injected pods (a PodMonitor selects them by it).
pub const PROXY_LABEL: &str = "ferry.dev/proxy";
/// The `emptyDir` the sidecar mounts the data sets on (the mount option).
pub const MOUNT_VOLUME: &str = "ferry-mount";
/// Where that volume is in the sidecar: its `--mount` directory.
pub const SIDECAR_MOUNT_DIR: &str = "/var/run/ferry/mount";

/// What every injected sidecar shares.
#[derive(Clone, Debug)]
pub struct SidecarTemplate {
    /// Its image.
    pub image: String,
    /// Its pull policy.
    pub image_pull_policy: String,
    /// The control plane URL it certifies and watches at.
    pub control_plane_url: String,
    /// The control plane's namespace (its certificate names it).
    pub control_plane_namespace: String,
    /// The trust bundle, PEM.
    pub trust_bundle: String,
    /// A native sidecar (an init container with `restartPolicy: Always`).
    pub native: bool,
    /// Pods may ask for the POSIX mount (a privileged sidecar).
    pub allow_mount: bool,
}

/// The JSON patch (as a list of operations) that injects `pod` with `settings`.
pub fn patch(pod: &Pod, settings: &PodSettings, template: &SidecarTemplate) -> Value {
    let mut operations = Vec::new();
    let spec = pod.spec.clone().unwrap_or_default();
    // The app's variables first, while container indices are still theirs.
    let regular_inits = spec.init_containers.iter().flatten().enumerate();
    for (index, container) in regular_inits {
        if container.restart_policy.as_deref() != Some("Always") {
            let at = format!("/spec/initContainers/{index}");
            operations.extend(app_env(container, &at, settings));
            operations.extend(app_mount(container, &at, settings));
        }
    }
    for (index, container) in spec.containers.iter().enumerate() {
        let at = format!("/spec/containers/{index}");
        operations.extend(app_env(container, &at, settings));
        operations.extend(app_mount(container, &at, settings));
    }
    let sidecar = sidecar(settings, template);
    operations.push(if template.native {
        // First, so the app's own init containers can read through it too.
        match &spec.init_containers {
            Some(_) => json!({ "op": "add", "path": "/spec/initContainers/0", "value": sidecar }),
            None => json!({ "op": "add", "path": "/spec/initContainers", "value": [sidecar] }),
        }
    } else {
        json!({ "op": "add", "path": "/spec/containers/0", "value": sidecar })
    });
    let volume = json!({
        "name": TOKEN_VOLUME,
        "projected": { "sources": [{ "serviceAccountToken": {
            "audience": TOKEN_AUDIENCE, "expirationSeconds": 3600, "path": "token",
        }}]},
    });
    let mut volumes = vec![volume];
    if settings.mount.is_some() {
        volumes.push(json!({ "name": MOUNT_VOLUME, "emptyDir": {} }));
    }
    match &spec.volumes {
        Some(_) => operations.extend(
            volumes
                .into_iter()
                .map(|v| json!({ "op": "add", "path": "/spec/volumes/-", "value": v })),
        ),
        None => operations.push(json!({ "op": "add", "path": "/spec/volumes", "value": volumes })),
    }
    let status = format!(
        "/metadata/annotations/{}",
        STATUS_ANNOTATION.replace('/', "~1")
    );
    operations.push(match &pod.metadata.annotations {
        Some(_) => json!({ "op": "add", "path": status, "value": "true" }),
        None => json!({ "op": "add", "path": "/metadata/annotations",
                        "value": { STATUS_ANNOTATION: "true" } }),
    });
    let label = format!("/metadata/labels/{}", PROXY_LABEL.replace('/', "~1"));
    operations.push(match &pod.metadata.labels {
        Some(_) => json!({ "op": "add", "path": label, "value": "sidecar" }),
        None => {
            json!({ "op": "add", "path": "/metadata/labels", "value": { PROXY_LABEL: "sidecar" } })
        }
    });
    Value::Array(operations)
}

/// The variables an app container gets, none that it sets already; AWS
/// placeholder credentials only where it brings none (the front door
/// ignores signatures; clients just need something to sign with).
fn app_env(container: &Container, at: &str, settings: &PodSettings) -> Vec<Value> {
    let env = container.env.as_deref().unwrap_or_default();
    let has = |name: &str| env.iter().any(|e| e.name == name);
    let mut wanted = vec![
        ("AWS_ENDPOINT_URL_S3", ENDPOINT),
        ("FERRY_ENDPOINT", ENDPOINT),
    ];
    if let Some(path) = &settings.mount {
        wanted.push(("FERRY_MOUNT", path.as_str()));
    }
    // Variables from envFrom cannot be seen here, and `env` would win over
    // them: a container with envFrom keeps whatever credentials it has.
    if container.env_from.is_none() && !OWN_CREDENTIALS.iter().any(|name| has(name)) {
        wanted.push(("AWS_ACCESS_KEY_ID", "ferry"));
        wanted.push(("AWS_SECRET_ACCESS_KEY", "ferry"));
    }
    let added: Vec<Value> = wanted
        .into_iter()
        .filter(|(name, _)| !has(name))
        .map(|(name, value)| json!({ "name": name, "value": value }))
        .collect();
    match (&container.env, added.is_empty()) {
        (_, true) => Vec::new(),
        (None, false) => vec![json!({ "op": "add", "path": format!("{at}/env"), "value": added })],
        (Some(_), false) => added
            .into_iter()
            .map(|value| json!({ "op": "add", "path": format!("{at}/env/-"), "value": value }))
            .collect(),
    }
}

/// The app's view of the mount: the sidecar's `emptyDir`, read-only, with
/// the sidecar's FUSE mount propagated into it (`HostToContainer`).
fn app_mount(container: &Container, at: &str, settings: &PodSettings) -> Vec<Value> {
    let Some(path) = &settings.mount else {
        return Vec::new();
    };
    let mount = json!({
        "name": MOUNT_VOLUME, "mountPath": path.as_str(),
        "mountPropagation": "HostToContainer", "readOnly": true,
    });
    vec![match &container.volume_mounts {
        Some(_) => json!({ "op": "add", "path": format!("{at}/volumeMounts/-"), "value": mount }),
        None => json!({ "op": "add", "path": format!("{at}/volumeMounts"), "value": [mount] }),
    }]
}

/// The `ferry-proxy` container.
fn sidecar(settings: &PodSettings, template: &SidecarTemplate) -> Value {
    let mut args: Vec<String> = [
        "sidecar",
        "--listen",
        "127.0.0.1:4140",
        "--admin",
        "0.0.0.0:4191",
        "--control-plane",
        &template.control_plane_url,
        "--control-plane-namespace",
        &template.control_plane_namespace,
        "--token-file",
        &format!("{TOKEN_DIR}/token"),
    ]
    .map(str::to_owned)
    .into();
    if let Some(size) = settings.cache_size {
        args.extend(["--cache-size".to_owned(), size.to_string()]);
    }
    if let Some(policy) = settings.cache_policy {
        args.extend(["--cache-policy".to_owned(), policy.as_str().to_owned()]);
    }
    if settings.mount.is_some() {
        args.extend(["--mount".to_owned(), SIDECAR_MOUNT_DIR.to_owned()]);
    }
    let field = |path: &str| json!({ "fieldRef": { "fieldPath": path } });
    let mut env = vec![
        json!({ "name": "POD_IP", "valueFrom": field("status.podIP") }),
        json!({ "name": "POD_NAMESPACE", "valueFrom": field("metadata.namespace") }),
        json!({ "name": "FERRY_TRUST_BUNDLE", "value": template.trust_bundle }),
    ];
    if let Some(level) = settings.log_level {
        env.push(json!({ "name": "RUST_LOG", "value": level.as_str() }));
    }
    let quantities = |cpu: &Option<ferry_config::Quantity>,
                      memory: &Option<ferry_config::Quantity>| {
        let mut map = serde_json::Map::new();
        for (key, quantity) in [("cpu", cpu), ("memory", memory)] {
            if let Some(quantity) = quantity {
                map.insert(key.to_owned(), json!(quantity.as_str()));
            }
        }
        map
    };
    let requests = quantities(&settings.cpu_request, &settings.memory_request);
    let limits = quantities(&settings.cpu_limit, &settings.memory_limit);
    let probe = |path: &str, period: u32, failures: u32| {
        json!({ "httpGet": { "path": path, "port": ADMIN_PORT },
                "periodSeconds": period, "failureThreshold": failures })
    };
    let mut container = json!({
        "name": SIDECAR_NAME,
        "image": template.image,
        "imagePullPolicy": template.image_pull_policy,
        "command": ["ferry-proxy"],
        "args": args,
        "env": env,
        "ports": [{ "name": "ferry-admin", "containerPort": ADMIN_PORT }],
        // The app starts only once this passes: Ferry serves by then.
        "startupProbe": probe("/ready", 1, 300),
        "readinessProbe": probe("/ready", 5, 3),
        "livenessProbe": probe("/live", 10, 6),
        "resources": {},
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": 65532,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": { "drop": ["ALL"] },
        },
        "volumeMounts": [{ "name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true }],
    });
    for (key, map) in [("requests", requests), ("limits", limits)] {
        if !map.is_empty() {
            container["resources"][key] = Value::Object(map);
        }
    }
    if settings.mount.is_some() {
        // Mounting FUSE takes CAP_SYS_ADMIN and /dev/fuse, and sharing the
        // mount (Bidirectional) takes a privileged container: the price of
        // the option, which the operator has to allow.
        container["securityContext"] = json!({
            "privileged": true,
            "runAsUser": 0,
            "runAsNonRoot": false,
            "readOnlyRootFilesystem": true,
        });
        if let Some(mounts) = container["volumeMounts"].as_array_mut() {
            mounts.push(json!({
                "name": MOUNT_VOLUME, "mountPath": SIDECAR_MOUNT_DIR,
                "mountPropagation": "Bidirectional",
            }));
        }
    }
    if template.native {
        container["restartPolicy"] = json!("Always");
    } else {
        // Kubernetes starts the next container only once this hook returns.
        container["lifecycle"] = json!({ "postStart": { "exec": {
            "command": ["ferry-proxy", "await", "--admin", format!("127.0.0.1:{ADMIN_PORT}")],
        }}});
    }
    container
}
