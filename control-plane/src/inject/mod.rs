//! Sidecar injection: the control plane's mutating admission webhook
//! (`POST /v1/inject` on `:8443`). An `admission.k8s.io/v1` AdmissionReview
//! of a Pod comes in; the answer allows it unchanged, allows it with a JSON
//! patch that adds the `ferry-proxy` sidecar, or denies it naming the
//! annotation that is wrong. Every decision is counted in
//! `injection_total{result,reason}` and timed in `injection_latency_seconds`.

pub mod decide;
mod namespaces;
pub mod patch;
mod server;
mod webhook_config;

use std::collections::BTreeMap;
use std::time::Instant;

use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use metrics::{counter, histogram};

use ferry_config::PodSettings;

pub use decide::{Decision, INJECT_ANNOTATION, SIDECAR_NAME, decide};
pub use namespaces::{NamespaceAnnotations, follow_namespaces};
pub use patch::SidecarTemplate;
pub use server::serve;
pub use webhook_config::keep_ca_bundle;

/// Why a pod that asks for the mount is refused where it is not allowed.
const MOUNT_NOT_ALLOWED: &str = "annotation config.ferry.dev/mount: the POSIX mount needs a privileged \
     sidecar, and this cluster's Ferry does not allow it (chart value injection.mount.allowed); \
     read through S3 at $AWS_ENDPOINT_URL_S3 instead";

/// Decides and patches admission reviews.
pub struct Injector {
    template: SidecarTemplate,
    defaults: PodSettings,
    own_namespace: String,
    namespaces: Box<dyn NamespaceAnnotations>,
}

impl Injector {
    /// An injector adding `template` with `defaults` (overridden per pod by
    /// annotation), never in `own_namespace`; `namespaces` tells each
    /// namespace's annotations.
    pub fn new(
        template: SidecarTemplate,
        defaults: PodSettings,
        own_namespace: &str,
        namespaces: Box<dyn NamespaceAnnotations>,
    ) -> Self {
        Self {
            template,
            defaults,
            own_namespace: own_namespace.to_owned(),
            namespaces,
        }
    }

    /// Answers one AdmissionReview (JSON); a body that is not one is an
    /// error, answered 400 by the server.
    pub fn review(&self, body: &[u8]) -> Result<Vec<u8>, String> {
        let started = Instant::now();
        let review: AdmissionReview<Pod> = serde_json::from_slice(body)
            .map_err(|e| format!("not an admission.k8s.io/v1 AdmissionReview of a Pod: {e}"))?;
        let request: AdmissionRequest<Pod> = review
            .try_into()
            .map_err(|e| format!("the AdmissionReview carries no request: {e}"))?;
        let (decision, response) = self.answer(&request);
        counter!("injection_total", "result" => decision.result(), "reason" => decision.reason())
            .increment(1);
        histogram!("injection_latency_seconds", "result" => decision.result())
            .record(started.elapsed());
        encode(response)
    }

    /// The decision for `request` and the response that carries it out.
    pub fn answer(&self, request: &AdmissionRequest<Pod>) -> (Decision, AdmissionResponse) {
        let response = AdmissionResponse::from(request);
        let pod = match (&request.operation, &request.object) {
            (Operation::Create, Some(pod)) => pod,
            _ => return (Decision::Skip("not_a_pod_creation"), response),
        };
        let namespace = request
            .namespace
            .clone()
            .or_else(|| pod.metadata.namespace.clone())
            .unwrap_or_default();
        let namespace_annotations = self.namespaces.annotations(&namespace);
        let decision = match decide(
            pod,
            &namespace,
            namespace_annotations.as_ref(),
            &self.own_namespace,
            &self.defaults,
        ) {
            Decision::Inject(settings, _)
                if settings.mount.is_some() && !self.template.allow_mount =>
            {
                Decision::Deny(MOUNT_NOT_ALLOWED.to_owned())
            }
            decision => decision,
        };
        let response = match &decision {
            Decision::Skip(_) => response,
            Decision::Deny(message) => response.deny(message),
            Decision::Inject(settings, _) => {
                let operations = patch::patch(pod, settings, &self.template);
                let patched = serde_json::from_value::<json_patch::Patch>(operations)
                    .map_err(|e| e.to_string())
                    .and_then(|p| response.clone().with_patch(p).map_err(|e| e.to_string()));
                match patched {
                    Ok(patched) => patched,
                    Err(err) => {
                        // Ours to fix; the pod is let through as it is.
                        tracing::error!(%err, "cannot encode an injection patch");
                        return (Decision::Skip("patch_error"), response);
                    }
                }
            }
        };
        (decision, response)
    }
}

/// The AdmissionReview carrying `response`, as JSON. kube-rs writes the
/// patch as an array of byte values; the API's schema (and other clients
/// than the Go API server) want the base64 string, a third of the size.
fn encode(response: AdmissionResponse) -> Result<Vec<u8>, String> {
    let patch = response.patch.clone();
    let mut review = serde_json::to_value(response.into_review())
        .map_err(|e| format!("cannot encode the answer: {e}"))?;
    if let Some(patch) = patch {
        review["response"]["patch"] = serde_json::to_value(k8s_openapi::ByteString(patch))
            .map_err(|e| format!("cannot encode the patch: {e}"))?;
    }
    serde_json::to_vec(&review).map_err(|e| format!("cannot encode the answer: {e}"))
}

/// Annotations by namespace, for tests and fixed setups.
impl NamespaceAnnotations for BTreeMap<String, BTreeMap<String, String>> {
    fn annotations(&self, namespace: &str) -> Option<BTreeMap<String, String>> {
        self.get(namespace).cloned()
    }
}
