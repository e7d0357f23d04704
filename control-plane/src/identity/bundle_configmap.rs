//! The trust bundle published in a ConfigMap of the control plane's
//! namespace (key `bundle.pem`), for the proxies the chart runs there: a
//! worker must verify the control plane before it can ask it anything.
//! (Injected sidecars get the bundle in their pod spec instead.) Checked
//! again every minute, so an edit or a deletion is undone.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, PostParams};

/// The key holding the PEM bundle.
pub const BUNDLE_KEY: &str = "bundle.pem";
/// How often the ConfigMap is checked.
const EVERY: Duration = Duration::from_secs(60);

/// Keeps ConfigMap `namespace/name` holding `bundle_pem`, until the process ends.
pub async fn keep(client: Client, namespace: String, name: String, bundle_pem: String) {
    let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
    let mut every = tokio::time::interval(EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if let Err(err) = reconcile(&api, &name, &bundle_pem).await {
            tracing::warn!(configmap = %format!("{namespace}/{name}"), %err, "cannot publish the trust bundle");
        }
    }
}

async fn reconcile(api: &Api<ConfigMap>, name: &str, bundle_pem: &str) -> Result<(), kube::Error> {
    let data = BTreeMap::from([(BUNDLE_KEY.to_owned(), bundle_pem.to_owned())]);
    match api.get_opt(name).await? {
        Some(current) if current.data.as_ref() == Some(&data) => Ok(()),
        Some(mut current) => {
            current.data = Some(data);
            api.replace(name, &PostParams::default(), &current).await?;
            tracing::info!(configmap = name, "trust bundle republished");
            Ok(())
        }
        None => {
            let map = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(name.to_owned()),
                    labels: Some(BTreeMap::from([(
                        "app.kubernetes.io/managed-by".to_owned(),
                        "ferry-control-plane".to_owned(),
                    )])),
                    ..ObjectMeta::default()
                },
                data: Some(data),
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
