//! The certificate of the control plane's own API listener, re-issued by
//! the mesh CA before it expires (proxies open new watch connections at any
//! time, and each handshake checks it).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use ferry_config::SpiffeId;

use crate::identity::CertificateAuthority;

/// How long the API's certificate lives.
const LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Re-issued when this much of its life has passed.
const RENEW_AT: f64 = 0.5;

/// Hands every handshake the current certificate.
#[derive(Debug)]
pub struct ApiCertificate {
    current: Mutex<Arc<CertifiedKey>>,
}

impl ApiCertificate {
    /// Issues the first certificate (for `names` and `identity`) and keeps
    /// re-issuing it in the background.
    pub fn start(
        ca: Arc<CertificateAuthority>,
        names: Vec<String>,
        identity: SpiffeId,
    ) -> anyhow::Result<Arc<Self>> {
        let this = Arc::new(Self {
            current: Mutex::new(issue(&ca, &names, &identity)?),
        });
        let renewing = Arc::downgrade(&this);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(LIFETIME.mul_f64(RENEW_AT)).await;
                let Some(this) = renewing.upgrade() else {
                    return;
                };
                match issue(&ca, &names, &identity) {
                    Ok(key) => *this.current.lock().unwrap_or_else(|p| p.into_inner()) = key,
                    // The current one still has half its life: try again later.
                    Err(err) => tracing::error!(%err, "cannot re-issue the API certificate"),
                }
            }
        });
        Ok(this)
    }
}

impl ResolvesServerCert for ApiCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

fn issue(
    ca: &CertificateAuthority,
    names: &[String],
    identity: &SpiffeId,
) -> anyhow::Result<Arc<CertifiedKey>> {
    let (chain, key) = ca.server_identity(names, identity, LIFETIME)?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let signing = provider.key_provider.load_private_key(key)?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}
