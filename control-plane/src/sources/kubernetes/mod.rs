//! The Kubernetes source (`--kubernetes`): policy ConfigMaps, worker pools
//! from Services and their EndpointSlices, TokenReview for certificates, and
//! the warm-up orders the control plane's replicas share.
//!
//! Scoping (DESIGN.md, "Tenancy and trust"): a ConfigMap labelled
//! `ferry.dev/policy: "true"` or a pool Service in the control plane's own
//! namespace is the mesh admin's and applies to the whole mesh; one in any
//! other namespace applies to that namespace's sidecars, and its data sets
//! may read only the origins the mesh admin's `tenants` table allows it.
//! RBAC needed: list/watch configmaps, services, endpointslices; get pods;
//! create events and tokenreviews; create configmaps and patch
//! `ferry-warm-orders` in its own namespace (`charts/ferry/templates/rbac.yaml`).

mod events;
mod policies;
mod pools;
mod tokenreview;
mod warm_orders;

use std::sync::Arc;

use kube::Client;

use crate::policy::PolicyStore;

pub use pools::WORKER_IDENTITY_ANNOTATION;
pub use tokenreview::TokenReviewValidator;
pub use warm_orders::WARM_ORDERS_CONFIGMAP;

/// Label of policy ConfigMaps.
pub const POLICY_LABEL: &str = "ferry.dev/policy";
/// Key of the policy inside a ConfigMap.
pub const POLICY_KEY: &str = "policy.yaml";
/// Label of Services whose endpoints form a worker pool; its value names the pool.
pub const POOL_LABEL: &str = "ferry.dev/cache-pool";
/// Audience of the tokens proxies present for certificates.
pub const TOKEN_AUDIENCE: &str = "ferry.dev/identity";

/// Follows the cluster into `store` in the background. The store counts
/// the source as listed once policies and pools have each been listed and
/// applied whole.
pub fn start(client: Client, store: Arc<PolicyStore>, own_namespace: &str, trust_domain: &str) {
    let policies_listed = store.expect_source("kubernetes policy ConfigMaps");
    let pools_listed = store.expect_source("kubernetes pool Services");
    tokio::spawn(policies::run(
        client.clone(),
        store.clone(),
        own_namespace.to_owned(),
        policies_listed,
    ));
    tokio::spawn(warm_orders::run(
        client.clone(),
        store.clone(),
        own_namespace.to_owned(),
    ));
    tokio::spawn(pools::run(
        client,
        store,
        own_namespace.to_owned(),
        trust_domain.to_owned(),
        pools_listed,
    ));
}
