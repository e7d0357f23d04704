//! The trust bundle published in a ConfigMap of the control plane's
//! namespace (key `bundle.pem`), for the proxies the chart runs there: a
//! worker must verify the control plane before it can ask it anything.
//! (Injected sidecars get the bundle in their pod spec instead.) The
//! ConfigMap is watched, so an edit or a deletion is undone at once.

use std::collections::BTreeMap;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};

/// The key holding the PEM bundle.
pub const BUNDLE_KEY: &str = "bundle.pem";

/// Keeps ConfigMap `namespace/name` holding `bundle_pem`, until the process ends.
pub async fn keep(client: Client, namespace: String, name: String, bundle_pem: String) {
    let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let stream = watcher::watcher(api.clone(), config).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let data = BTreeMap::from([(BUNDLE_KEY.to_owned(), bundle_pem)]);
    // Whether the last list or change showed the ConfigMap.
    let mut seen = false;
    while let Some(event) = stream.next().await {
        let current = match event {
            Ok(Event::Init) => {
                seen = false;
                continue;
            }
            Ok(Event::InitApply(map) | Event::Apply(map)) => {
                seen = true;
                Some(map)
            }
            Ok(Event::InitDone) if seen => continue,
            Ok(Event::InitDone | Event::Delete(_)) => None,
            Err(err) => {
                tracing::warn!(%err, "watching the trust bundle's ConfigMap");
                continue;
            }
        };
        if let Err(err) = reconcile(&api, &name, current, &data).await {
            tracing::warn!(configmap = %format!("{namespace}/{name}"), %err, "cannot publish the trust bundle");
        }
    }
}

async fn reconcile(
    api: &Api<ConfigMap>,
    name: &str,
    current: Option<ConfigMap>,
    data: &BTreeMap<String, String>,
) -> Result<(), kube::Error> {
    match current {
        Some(current) if current.data.as_ref() == Some(data) => Ok(()),
        Some(mut current) => {
            current.data = Some(data.clone());
            api.replace(name, &PostParams::default(), &current).await?;
            tracing::info!(configmap = name, "trust bundle republished");
            Ok(())
        }
        None => {
            let map = ConfigMap {
                metadata: crate::managed::metadata(name, None),
                data: Some(data.clone()),
                ..ConfigMap::default()
            };
            match api.create(&PostParams::default(), &map).await {
                // Another replica was first, with the same bundle.
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
                other => other.map(|_| tracing::info!(configmap = name, "trust bundle published")),
            }
        }
    }
}
