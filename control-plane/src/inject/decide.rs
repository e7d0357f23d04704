//! Whether a pod gets the sidecar: `ferry.dev/inject: enabled | disabled`
//! on its namespace or on the pod (the pod's value wins), never in the
//! system namespaces or the control plane's own, never a `hostNetwork` pod
//! or one that has the sidecar already (so a second admission changes
//! nothing). Invalid per-pod settings deny the pod with a message.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;

use ferry_config::PodSettings;

/// The annotation that asks for (or refuses) injection.
pub const INJECT_ANNOTATION: &str = "ferry.dev/inject";
/// The injected container's name.
pub const SIDECAR_NAME: &str = "ferry-proxy";

/// Namespaces whose pods are never injected, besides the control plane's.
const SYSTEM_NAMESPACES: [&str; 2] = ["kube-system", "kube-public"];

/// What the webhook does with a pod, and why.
#[derive(Debug, PartialEq)]
pub enum Decision {
    /// Inject, with these settings; the reason is who asked (`namespace` or `pod`).
    Inject(Box<PodSettings>, &'static str),
    /// Leave the pod as it is.
    Skip(&'static str),
    /// Refuse the pod, saying why.
    Deny(String),
}

impl Decision {
    /// `injected`, `skipped` or `denied`: the `result` label.
    pub fn result(&self) -> &'static str {
        match self {
            Self::Inject(..) => "injected",
            Self::Skip(_) => "skipped",
            Self::Deny(_) => "denied",
        }
    }

    /// The `reason` label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Inject(_, by) => by,
            Self::Skip(why) => why,
            Self::Deny(_) => "invalid_setting",
        }
    }
}

/// What `ferry.dev/inject` says, if it says anything valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wish {
    Enabled,
    Disabled,
    Invalid,
}

fn wish(annotations: Option<&BTreeMap<String, String>>) -> Option<Wish> {
    annotations?
        .get(INJECT_ANNOTATION)
        .map(|value| match value.as_str() {
            "enabled" => Wish::Enabled,
            "disabled" => Wish::Disabled,
            _ => Wish::Invalid,
        })
}

/// Decides for `pod` in `namespace`, whose own annotations are
/// `namespace_annotations`; `own_namespace` is the control plane's.
pub fn decide(
    pod: &Pod,
    namespace: &str,
    namespace_annotations: Option<&BTreeMap<String, String>>,
    own_namespace: &str,
    defaults: &PodSettings,
) -> Decision {
    if SYSTEM_NAMESPACES.contains(&namespace) {
        return Decision::Skip("system_namespace");
    }
    if namespace == own_namespace {
        return Decision::Skip("control_plane_namespace");
    }
    let annotations = pod.metadata.annotations.as_ref();
    let asked_by = match (wish(annotations), wish(namespace_annotations)) {
        (Some(Wish::Invalid), _) | (None, Some(Wish::Invalid)) => {
            return Decision::Skip("invalid_inject_value");
        }
        (Some(Wish::Disabled), _) | (None, Some(Wish::Disabled)) => {
            return Decision::Skip("disabled");
        }
        (Some(Wish::Enabled), _) => "pod",
        (None, Some(Wish::Enabled)) => "namespace",
        (None, None) => return Decision::Skip("not_enabled"),
    };
    let spec = pod.spec.as_ref();
    if spec.and_then(|s| s.host_network).unwrap_or(false) {
        return Decision::Skip("host_network");
    }
    let has_sidecar = spec.is_some_and(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
            .any(|c| c.name == SIDECAR_NAME)
    });
    if has_sidecar {
        return Decision::Skip("already_injected");
    }
    let settings = annotations
        .map(|a| defaults.with_annotations(a.iter().map(|(k, v)| (k.as_str(), v.as_str()))))
        .unwrap_or_else(|| Ok(defaults.clone()));
    let settings = match settings {
        Ok(settings) => settings,
        Err(message) => return Decision::Deny(message),
    };
    if let (Some(path), Some(spec)) = (&settings.mount, spec) {
        // The API server would refuse two volumes at one path; say which.
        let taken = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .find(|c| {
                c.volume_mounts
                    .iter()
                    .flatten()
                    .any(|m| m.mount_path.trim_end_matches('/') == path.as_str())
            });
        if let Some(container) = taken {
            return Decision::Deny(format!(
                "annotation config.ferry.dev/mount: container {} already mounts a volume at {}; \
                 choose another path",
                container.name,
                path.as_str()
            ));
        }
    }
    Decision::Inject(Box::new(settings), asked_by)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(annotations: &[(&str, &str)], host_network: bool) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": "p", "annotations": annotations.iter().cloned().collect::<BTreeMap<_, _>>() },
            "spec": { "hostNetwork": host_network, "containers": [{ "name": "app", "image": "train" }] },
        }))
        .expect("pod")
    }

    fn namespace(value: &str) -> BTreeMap<String, String> {
        BTreeMap::from([(INJECT_ANNOTATION.to_owned(), value.to_owned())])
    }

    fn reason(
        pod: &Pod,
        namespace_annotations: Option<&BTreeMap<String, String>>,
        ns: &str,
    ) -> &'static str {
        decide(
            pod,
            ns,
            namespace_annotations,
            "ferry-system",
            &PodSettings::default(),
        )
        .reason()
    }

    #[test]
    fn the_pod_s_word_wins_over_its_namespace() {
        let enabled = namespace("enabled");
        let disabled = namespace("disabled");
        assert_eq!(
            reason(&pod(&[], false), Some(&enabled), "train"),
            "namespace"
        );
        assert_eq!(
            reason(
                &pod(&[(INJECT_ANNOTATION, "disabled")], false),
                Some(&enabled),
                "train"
            ),
            "disabled"
        );
        assert_eq!(
            reason(
                &pod(&[(INJECT_ANNOTATION, "enabled")], false),
                Some(&disabled),
                "train"
            ),
            "pod"
        );
        assert_eq!(
            reason(
                &pod(&[(INJECT_ANNOTATION, "enabled")], false),
                None,
                "train"
            ),
            "pod"
        );
        assert_eq!(reason(&pod(&[], false), None, "train"), "not_enabled");
        assert_eq!(
            reason(
                &pod(&[(INJECT_ANNOTATION, "yes")], false),
                Some(&enabled),
                "train"
            ),
            "invalid_inject_value"
        );
        assert_eq!(
            reason(&pod(&[], false), Some(&namespace("on")), "train"),
            "invalid_inject_value"
        );
    }

    #[test]
    fn system_pods_host_network_and_injected_pods_are_left_alone() {
        let enabled = namespace("enabled");
        let asked = [(INJECT_ANNOTATION, "enabled")];
        assert_eq!(
            reason(&pod(&asked, false), Some(&enabled), "kube-system"),
            "system_namespace"
        );
        assert_eq!(
            reason(&pod(&asked, false), Some(&enabled), "ferry-system"),
            "control_plane_namespace"
        );
        assert_eq!(
            reason(&pod(&asked, true), Some(&enabled), "train"),
            "host_network"
        );
        let mut injected = pod(&asked, false);
        if let Some(spec) = injected.spec.as_mut() {
            spec.init_containers = Some(vec![k8s_openapi::api::core::v1::Container {
                name: SIDECAR_NAME.into(),
                ..Default::default()
            }]);
        }
        assert_eq!(
            reason(&injected, Some(&enabled), "train"),
            "already_injected"
        );
    }

    #[test]
    fn an_invalid_setting_denies_the_pod_naming_it() {
        let decision = decide(
            &pod(
                &[
                    (INJECT_ANNOTATION, "enabled"),
                    ("config.ferry.dev/cache-size", "huge"),
                ],
                false,
            ),
            "train",
            None,
            "ferry-system",
            &PodSettings::default(),
        );
        let Decision::Deny(message) = decision else {
            panic!("denied: {decision:?}");
        };
        assert!(
            message.contains("config.ferry.dev/cache-size") && message.contains("'huge'"),
            "{message}"
        );
    }
}
