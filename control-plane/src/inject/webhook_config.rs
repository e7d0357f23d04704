//! The `caBundle` of the control plane's MutatingWebhookConfiguration, kept
//! equal to the mesh's trust bundle: at start, and checked again every
//! minute (after a rotation, or when someone edits it), so the API server
//! always trusts the webhook's certificate.

use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use metrics::counter;
use serde_json::json;

/// How often the bundle is checked.
const EVERY: Duration = Duration::from_secs(60);

/// Keeps every webhook of configuration `name` on `bundle_pem`, until the
/// process ends.
pub async fn keep_ca_bundle(client: Client, name: String, bundle_pem: String) {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client);
    let mut every = tokio::time::interval(EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        match reconcile(&api, &name, bundle_pem.as_bytes()).await {
            Ok(0) => {}
            Ok(patched) => {
                counter!("webhook_ca_bundle_patched_total").increment(patched as u64);
                tracing::info!(configuration = %name, webhooks = patched, "webhook caBundle set to the trust bundle");
            }
            Err(err) => {
                tracing::warn!(configuration = %name, %err, "cannot keep the webhook's caBundle")
            }
        }
    }
}

/// Patches the webhooks of `name` whose `caBundle` is not `bundle`; how many.
async fn reconcile(
    api: &Api<MutatingWebhookConfiguration>,
    name: &str,
    bundle: &[u8],
) -> Result<usize, kube::Error> {
    let configuration = api.get(name).await?;
    let mut operations = Vec::new();
    for (index, webhook) in configuration.webhooks.iter().flatten().enumerate() {
        let current = webhook
            .client_config
            .ca_bundle
            .as_ref()
            .map(|b| b.0.as_slice());
        if current != Some(bundle) {
            let encoded = k8s_openapi::ByteString(bundle.to_vec());
            operations.push(json!({
                "op": "add",
                "path": format!("/webhooks/{index}/clientConfig/caBundle"),
                "value": encoded,
            }));
        }
    }
    if operations.is_empty() {
        return Ok(0);
    }
    // Pinned to the version read: a concurrent edit makes this fail and the
    // next round read again, instead of patching the wrong webhook.
    let version = configuration.metadata.resource_version.unwrap_or_default();
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
