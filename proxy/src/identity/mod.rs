//! The proxy's mesh identity: an ECDSA P-256 key made in memory (never
//! written anywhere), a CSR sent with the workload's token to the control
//! plane, and the certificate it returns, renewed at 70 % of its life with
//! jittered backoff on failure and swapped in without dropping connections.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use arc_swap::ArcSwap;
use metrics::{Gauge, gauge};
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

use ferry_config::{IdentitySpec, SpiffeId};

use crate::tls::TlsState;

/// Renew when this fraction of the lifetime has passed.
const RENEW_AT: f64 = 0.7;
/// Backoff after a failed renewal: first and longest.
const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What the control plane answers to a certify request.
#[derive(Deserialize)]
struct CertifyResponse {
    spiffe_id: String,
    certificate_chain: Vec<String>,
    trust_bundle: Vec<String>,
    expires_at: i64,
}

/// A certificate being held.
#[derive(Clone, Debug)]
pub struct Held {
    /// The identity it names.
    pub spiffe_id: SpiffeId,
    /// When it was issued (received).
    pub issued_at: SystemTime,
    /// When it expires.
    pub expires_at: SystemTime,
}

/// Why certification failed.
#[derive(Debug, thiserror::Error)]
pub enum CertifyError {
    /// The control plane refused: retrying will not help (bad token, bad CSR).
    #[error("the control plane refused: {0}")]
    Refused(String),
    /// It could not be reached or answered oddly: retry later.
    #[error("{0}")]
    Transient(String),
}

/// The proxy's identity, kept current.
pub struct Identity {
    spec: IdentitySpec,
    client: reqwest::Client,
    url: String,
    file_anchors: Vec<CertificateDer<'static>>,
    /// Anchors the control plane published last (certify answer or watch).
    published_anchors: std::sync::Mutex<Vec<String>>,
    /// TLS material for connections between proxies.
    pub tls: Arc<TlsState>,
    held: ArcSwap<Option<Held>>,
    expiry: Gauge,
}

impl Identity {
    /// Loads the trust bundle; no certificate is held until
    /// [`Identity::obtain_first`].
    pub fn new(spec: &IdentitySpec) -> anyhow::Result<Arc<Self>> {
        let (bundle, source) = match (&spec.trust_bundle_pem, &spec.trust_bundle) {
            (Some(pem), _) => (
                pem.as_bytes().to_vec(),
                "the trust bundle given as PEM".to_owned(),
            ),
            (None, Some(path)) => (
                std::fs::read(path).with_context(|| {
                    format!("identity: cannot read trust bundle {}", path.display())
                })?,
                path.display().to_string(),
            ),
            (None, None) => anyhow::bail!("identity: no trust_bundle configured"),
        };
        let file_anchors = CertificateDer::pem_slice_iter(&bundle)
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("identity: {source} holds a malformed certificate"))?;
        anyhow::ensure!(
            !file_anchors.is_empty(),
            "identity: {source} holds no certificate"
        );
        let mut roots = RootCertStore::empty();
        for anchor in &file_anchors {
            roots.add(anchor.clone())?;
        }
        let mut client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .tls_certs_only(std::iter::empty());
        for anchor in &file_anchors {
            client = client.add_root_certificate(reqwest::Certificate::from_der(anchor.as_ref())?);
        }
        let base = spec
            .control_plane
            .as_deref()
            .context("identity: no control_plane URL configured")?;
        let identity = Arc::new(Self {
            spec: spec.clone(),
            client: client.build()?,
            url: format!("{}/v1/identity/certify", base.trim_end_matches('/')),
            file_anchors,
            published_anchors: std::sync::Mutex::new(Vec::new()),
            tls: TlsState::new(roots)?,
            held: ArcSwap::from_pointee(None),
            expiry: gauge!("identity_cert_expiry_timestamp_seconds"),
        });
        Ok(identity)
    }

    /// Gets the first certificate, retrying transient failures (a refusal,
    /// such as a bad token, is an error at once), then renews in the background.
    pub async fn obtain_first(self: &Arc<Self>) -> anyhow::Result<()> {
        let mut backoff = BACKOFF_FIRST;
        loop {
            match self.certify().await {
                Ok(()) => break,
                Err(CertifyError::Refused(why)) => {
                    bail!("identity: the control plane refused this proxy: {why}")
                }
                Err(CertifyError::Transient(why)) => {
                    tracing::warn!(%why, "identity: no certificate yet; retrying");
                    tokio::time::sleep(jitter(backoff)).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        tokio::spawn(renew_forever(Arc::clone(self)));
        Ok(())
    }

    /// Trusts `anchors` (PEM), as the control plane publishes them, beside
    /// the configured ones: a rotated issuer is trusted once announced.
    pub fn trust_published(&self, anchors: &[String]) -> anyhow::Result<()> {
        let mut published = self
            .published_anchors
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if published.as_slice() == anchors {
            return Ok(());
        }
        let mut roots = RootCertStore::empty();
        for anchor in &self.file_anchors {
            roots.add(anchor.clone())?;
        }
        for pem in anchors {
            roots.add(
                CertificateDer::from_pem_slice(pem.as_bytes())
                    .context("a published trust anchor is not PEM")?,
            )?;
        }
        self.tls.set_roots(roots)?;
        *published = anchors.to_vec();
        Ok(())
    }

    /// The control plane's API, e.g. `https://ferry-control-plane.ferry:8086`.
    pub fn control_plane_url(&self) -> &str {
        self.url
            .strip_suffix("/v1/identity/certify")
            .unwrap_or(&self.url)
    }

    /// The certificate held now.
    pub fn held(&self) -> Option<Held> {
        self.held.load().as_ref().clone()
    }

    fn token(&self) -> Result<String, CertifyError> {
        if let Some(path) = &self.spec.token_file {
            // Re-read each time: projected tokens are rotated by the kubelet.
            return read_token(path);
        }
        self.spec
            .token
            .clone()
            .ok_or_else(|| CertifyError::Refused("no token configured".to_owned()))
    }

    /// One certify round trip; on success the new certificate is in use.
    pub async fn certify(&self) -> Result<(), CertifyError> {
        let token = self.token()?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CertifyError::Transient(e.to_string()))?;
        let csr = CertificateParams::default()
            .serialize_request(&key)
            .and_then(|csr| csr.pem())
            .map_err(|e| CertifyError::Transient(e.to_string()))?;
        let response = self
            .client
            .post(&self.url)
            .bearer_auth(token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(serde_json::json!({ "csr": csr }).to_string())
            .send()
            .await
            .map_err(|e| CertifyError::Transient(format!("cannot reach {}: {e}", self.url)))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| CertifyError::Transient(format!("reading the answer: {e}")))?;
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::BAD_REQUEST
        {
            return Err(CertifyError::Refused(format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&body)
            )));
        }
        if !status.is_success() {
            return Err(CertifyError::Transient(format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&body)
            )));
        }
        let answer: CertifyResponse = serde_json::from_slice(&body)
            .map_err(|e| CertifyError::Transient(format!("unreadable answer: {e}")))?;
        self.install(answer, key)
            .map_err(|e| CertifyError::Transient(e.to_string()))
    }

    fn install(&self, answer: CertifyResponse, key: KeyPair) -> anyhow::Result<()> {
        let chain = answer
            .certificate_chain
            .iter()
            .map(|pem| CertificateDer::from_pem_slice(pem.as_bytes()))
            .collect::<Result<Vec<_>, _>>()
            .context("the certificate chain is not PEM")?;
        anyhow::ensure!(!chain.is_empty(), "the control plane sent no certificate");
        let spiffe_id: SpiffeId = answer.spiffe_id.parse().map_err(anyhow::Error::msg)?;
        anyhow::ensure!(
            crate::tls::spiffe_id_of(&chain[0]).as_ref() == Some(&spiffe_id),
            "the certificate does not name {spiffe_id}"
        );
        let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes())?;
        self.trust_published(&answer.trust_bundle)?;
        self.tls.set_certificate(chain, key)?;
        let expires_at =
            UNIX_EPOCH + Duration::from_secs(u64::try_from(answer.expires_at).unwrap_or(0));
        self.expiry.set(answer.expires_at as f64);
        tracing::info!(identity = %spiffe_id, expires_in = ?expires_at.duration_since(SystemTime::now()).unwrap_or_default(), "holding a new certificate");
        self.held.store(Arc::new(Some(Held {
            spiffe_id,
            issued_at: SystemTime::now(),
            expires_at,
        })));
        Ok(())
    }
}

fn read_token(path: &Path) -> Result<String, CertifyError> {
    let token = std::fs::read_to_string(path).map_err(|e| {
        CertifyError::Transient(format!("cannot read token file {}: {e}", path.display()))
    })?;
    Ok(token.trim().to_owned())
}

/// Renews at 70 % of each certificate's life; retries with jittered,
/// doubling backoff until it succeeds.
async fn renew_forever(identity: Arc<Identity>) {
    loop {
        let Some(held) = identity.held() else { return };
        let lifetime = held
            .expires_at
            .duration_since(held.issued_at)
            .unwrap_or_default();
        let renew_at = held.issued_at + lifetime.mul_f64(RENEW_AT);
        let wait = renew_at
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        tokio::time::sleep(jitter(wait)).await;
        let mut backoff = BACKOFF_FIRST;
        loop {
            match identity.certify().await {
                Ok(()) => break,
                Err(err) => {
                    let left = held
                        .expires_at
                        .duration_since(SystemTime::now())
                        .unwrap_or_default();
                    tracing::warn!(%err, ?left, "identity: renewal failed; retrying");
                    tokio::time::sleep(jitter(backoff).min(left.max(BACKOFF_FIRST))).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }
}

/// `delay` give or take 10 %, so a fleet does not renew in lockstep.
fn jitter(delay: Duration) -> Duration {
    delay.mul_f64(0.9 + rand::random::<f64>() * 0.2)
}
