//! Namespaces' annotations, followed from the API server into memory so a
//! decision never waits for a lookup (the API server waits for the webhook).

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};

use crate::policy::PolicyStore;

/// Where a namespace's annotations come from.
pub trait NamespaceAnnotations: Send + Sync {
    /// The annotations of `namespace`, if it is known.
    fn annotations(&self, namespace: &str) -> Option<BTreeMap<String, String>>;
}

impl NamespaceAnnotations for Store<Namespace> {
    fn annotations(&self, namespace: &str) -> Option<BTreeMap<String, String>> {
        self.get(&ObjectRef::new(namespace))
            .map(|ns| ns.metadata.annotations.clone().unwrap_or_default())
    }
}

/// Follows every namespace in the background; `store` counts the source as
/// listed once the first list is in.
pub fn follow_namespaces(client: Client, store: &Arc<PolicyStore>) -> Store<Namespace> {
    let listed = store.expect_source("kubernetes namespaces");
    let (reader, writer) = reflector::store();
    let api: Api<Namespace> = Api::all(client);
    let stream = reflector::reflector(writer, watcher::watcher(api, watcher::Config::default()))
        .default_backoff();
    let ready = reader.clone();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut listed = Some(listed);
        let mut ready = std::pin::pin!(ready.wait_until_ready());
        loop {
            tokio::select! {
                event = stream.next() => match event {
                    Some(Ok(_)) => {}
                    Some(Err(err)) => tracing::warn!(%err, "watching namespaces"),
                    None => return,
                },
                result = &mut ready, if listed.is_some() => {
                    if result.is_ok()
                        && let Some(listed) = listed.take()
                    {
                        listed.listed();
                    }
                }
            }
        }
    });
    reader
}
