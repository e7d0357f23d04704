//! The Kubernetes source (`--kubernetes`): policy ConfigMaps, worker pools
//! from Services and their EndpointSlices, and TokenReview for certificates.
//!
//! Scoping: a ConfigMap labelled `ferry.dev/policy: "true"` in the control
//! plane's own namespace applies to the whole mesh; one in any other
//! namespace applies to that namespace's sidecars (workers serve every data
//! set, so names and buckets are unique across the mesh). RBAC needed:
//! list/watch configmaps, services, endpointslices; get pods; create events
//! and tokenreviews (`charts/ferry/templates/control-plane-rbac.yaml`).

mod events;
mod policies;
mod pools;
mod tokenreview;

use std::sync::Arc;

use kube::Client;

use crate::policy::PolicyStore;

pub use tokenreview::TokenReviewValidator;

/// Label of policy ConfigMaps.
pub const POLICY_LABEL: &str = "ferry.dev/policy";
/// Key of the policy inside a ConfigMap.
pub const POLICY_KEY: &str = "policy.yaml";
/// Label of Services whose endpoints form a worker pool; its value names the pool.
pub const POOL_LABEL: &str = "ferry.dev/cache-pool";
/// Audience of the tokens proxies present for certificates.
pub const TOKEN_AUDIENCE: &str = "ferry.dev/identity";

/// Follows the cluster into `store` in the background.
pub fn start(client: Client, store: Arc<PolicyStore>, own_namespace: &str, trust_domain: &str) {
    tokio::spawn(policies::run(
        client.clone(),
        store.clone(),
        own_namespace.to_owned(),
    ));
    tokio::spawn(pools::run(client, store, trust_domain.to_owned()));
}
