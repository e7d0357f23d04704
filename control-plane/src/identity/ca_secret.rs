//! The mesh CA kept in a Kubernetes Secret of the control plane's namespace
//! (`kubernetes.io/tls`: `tls.crt`, `tls.key`). The first replica that finds
//! none generates one and creates the Secret; creation is atomic in the API
//! server, so when two replicas race, one creates and the other reads what
//! it created: the mesh never has two CAs.

use std::collections::BTreeMap;

use anyhow::Context;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, PostParams};

use super::ca::generate_issuer;

const CERT_KEY: &str = "tls.crt";
const KEY_KEY: &str = "tls.key";

/// The issuer (certificate and key, PEM) in Secret `namespace/name`,
/// created with a new one if there is none.
pub async fn load_or_create(
    client: Client,
    namespace: &str,
    name: &str,
    trust_domain: &str,
) -> anyhow::Result<(String, String)> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    if let Some(secret) = api
        .get_opt(name)
        .await
        .with_context(|| format!("cannot read the CA Secret {namespace}/{name}"))?
    {
        return issuer_of(&secret, namespace, name);
    }
    let (cert_pem, key_pem) = generate_issuer(trust_domain)?;
    let secret = Secret {
        metadata: crate::managed::metadata(name, Some(namespace)),
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(BTreeMap::from([
            (
                CERT_KEY.to_owned(),
                ByteString(cert_pem.clone().into_bytes()),
            ),
            (KEY_KEY.to_owned(), ByteString(key_pem.clone().into_bytes())),
        ])),
        ..Secret::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!(secret = %format!("{namespace}/{name}"), "generated the mesh CA and stored it");
            Ok((cert_pem, key_pem))
        }
        // Another replica was first: use its CA.
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let secret = api
                .get(name)
                .await
                .with_context(|| format!("cannot read the CA Secret {namespace}/{name}"))?;
            issuer_of(&secret, namespace, name)
        }
        Err(err) => {
            Err(err).with_context(|| format!("cannot create the CA Secret {namespace}/{name}"))
        }
    }
}

fn issuer_of(secret: &Secret, namespace: &str, name: &str) -> anyhow::Result<(String, String)> {
    let field = |key: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .with_context(|| format!("the CA Secret {namespace}/{name} has no {key}"))
    };
    Ok((field(CERT_KEY)?, field(KEY_KEY)?))
}
