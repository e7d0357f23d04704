//! The `caBundle` of the control plane's MutatingWebhookConfiguration, kept
//! equal to the mesh's trust bundle: the configuration is watched, and any
//! webhook whose bundle differs (a fresh install, an upgrade that reset it,
//! an edit) is patched at once, so the API server always trusts the
//! webhook's certificate.

use futures::StreamExt;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use metrics::counter;
use serde_json::json;

/// Keeps every webhook of configuration `name` on `bundle_pem`, until the
/// process ends.
pub async fn keep_ca_bundle(client: Client, name: String, bundle_pem: String) {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let stream = watcher::watcher(api.clone(), config).default_backoff();
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        let configuration = match event {
            Ok(Event::InitApply(c) | Event::Apply(c)) => c,
            Ok(_) => continue,
            Err(err) => {
                tracing::warn!(%err, configuration = %name, "watching the webhook configuration");
                continue;
            }
        };
        match reconcile(&api, &name, &configuration, bundle_pem.as_bytes()).await {
            Ok(0) => {}
            Ok(patched) => {
                counter!("webhook_ca_bundle_patched_total").increment(patched as u64);
                tracing::info!(configuration = %name, webhooks = patched, "webhook caBundle set to the trust bundle");
            }
            // The next change (this one, re-read) comes as an event again.
            Err(err) => {
                tracing::warn!(configuration = %name, %err, "cannot set the webhook's caBundle")
            }
        }
    }
}

/// Patches the webhooks of `configuration` whose `caBundle` is not `bundle`; how many.
async fn reconcile(
    api: &Api<MutatingWebhookConfiguration>,
    name: &str,
    configuration: &MutatingWebhookConfiguration,
    bundle: &[u8],
) -> Result<usize, kube::Error> {
    let mut operations = Vec::new();
    for (index, webhook) in configuration.webhooks.iter().flatten().enumerate() {
        let current = webhook
            .client_config
            .ca_bundle
            .as_ref()
            .map(|b| b.0.as_slice());
        if current != Some(bundle) {
            operations.push(json!({
                "op": "add",
                "path": format!("/webhooks/{index}/clientConfig/caBundle"),
                "value": k8s_openapi::ByteString(bundle.to_vec()),
            }));
        }
    }
    if operations.is_empty() {
        return Ok(0);
    }
    // Pinned to the version seen: after a concurrent edit this fails, and
    // the edit's own event brings the next try.
    let version = configuration
        .metadata
        .resource_version
        .clone()
        .unwrap_or_default();
    operations.insert(
        0,
        json!({ "op": "test", "path": "/metadata/resourceVersion", "value": version }),
    );
    let count = operations.len() - 1;
    let patch: json_patch::Patch =
        serde_json::from_value(json!(operations)).map_err(kube::Error::SerdeError)?;
    api.patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await?;
    Ok(count)
}
