//! Mutual TLS between proxies: rustls configurations that present the
//! proxy's current certificate, verify peers against the current trust
//! anchors, and check SPIFFE IDs, which webpki does not look at.

use std::sync::Arc;

use arc_swap::ArcSwap;
use metrics::Counter;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, verify_server_cert_signed_by_trust_anchor};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, Error, RootCertStore, SignatureScheme};

use ferry_config::{SpiffeId, SpiffePattern};

/// The proxy's certificate and the anchors it trusts, both replaceable
/// while connections are open: new handshakes use the new ones.
pub struct TlsState {
    /// The current certificate and key.
    pub certified: ArcSwap<Option<Arc<CertifiedKey>>>,
    /// The current trust anchors.
    pub roots: ArcSwap<RootCertStore>,
    /// Client verifier built from `roots`.
    client_verifier: ArcSwap<Arc<dyn ClientCertVerifier>>,
    provider: Arc<CryptoProvider>,
    /// Client settings every pool member's configuration starts from.
    base_client: rustls::ClientConfig,
}

impl std::fmt::Debug for TlsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsState")
    }
}

/// aws-lc-rs with AES-128-GCM preferred: `ferry-bench crypto` measured
/// aws-lc-rs at 1.5× ring's bulk throughput (its AVX-512 AES-GCM) with equal
/// handshake rates, and AES-128 a few percent ahead of AES-256 (ChaCha20 at a
/// fifth, kept last for peers without AES instructions).
pub fn mesh_crypto_provider() -> CryptoProvider {
    use rustls::crypto::aws_lc_rs::{cipher_suite, default_provider};
    CryptoProvider {
        cipher_suites: vec![
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ],
        ..default_provider()
    }
}

impl TlsState {
    /// Empty state trusting `roots`; certificates arrive with [`TlsState::set_certificate`].
    pub fn new(roots: RootCertStore) -> anyhow::Result<Arc<Self>> {
        let provider = Arc::new(mesh_crypto_provider());
        let verifier = client_verifier(&roots, &provider)?;
        // Placeholder verifier and no certificate: each member's copy gets
        // its own verifier, and the resolver below, before it is used.
        let mut base_client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth();
        base_client.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(Self {
            certified: ArcSwap::from_pointee(None),
            roots: ArcSwap::from_pointee(roots),
            client_verifier: ArcSwap::from_pointee(verifier),
            provider,
            base_client,
        }))
    }

    /// Swaps in new trust anchors.
    pub fn set_roots(&self, roots: RootCertStore) -> anyhow::Result<()> {
        self.client_verifier
            .store(Arc::new(client_verifier(&roots, &self.provider)?));
        self.roots.store(Arc::new(roots));
        Ok(())
    }

    /// Swaps in a new certificate chain and its key.
    pub fn set_certificate(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: rustls::pki_types::PrivateKeyDer<'static>,
    ) -> anyhow::Result<()> {
        let signing = self.provider.key_provider.load_private_key(key)?;
        self.certified
            .store(Arc::new(Some(Arc::new(CertifiedKey::new(chain, signing)))));
        Ok(())
    }

    /// The SPIFFE ID of the certificate this proxy presents, once it has one.
    pub fn own_id(&self) -> Option<SpiffeId> {
        spiffe_id_of(self.current()?.cert.first()?)
    }

    fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.certified.load().as_ref().clone()
    }

    fn algorithms(&self) -> WebPkiSupportedAlgorithms {
        self.provider.signature_verification_algorithms
    }

    /// A server configuration for the worker's inbound listener: client
    /// certificates are required and verified against the current anchors.
    pub fn server_config(self: &Arc<Self>) -> anyhow::Result<rustls::ServerConfig> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(Arc::new(SwappableClientVerifier(self.clone())))
            .with_cert_resolver(Arc::new(CurrentCertificate(self.clone())));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }

    /// A client configuration that presents this proxy's certificate and
    /// accepts only a server whose SPIFFE ID matches `expected`.
    pub fn client_config(
        self: &Arc<Self>,
        expected: SpiffePattern,
        mismatches: Counter,
    ) -> rustls::ClientConfig {
        let mut config = self.base_client.clone();
        config
            .dangerous()
            .set_certificate_verifier(Arc::new(SpiffeServerVerifier {
                state: self.clone(),
                expected,
                mismatches,
            }));
        config.client_auth_cert_resolver = Arc::new(CurrentCertificate(self.clone()));
        config
    }
}

fn client_verifier(
    roots: &RootCertStore,
    provider: &Arc<CryptoProvider>,
) -> anyhow::Result<Arc<dyn ClientCertVerifier>> {
    Ok(
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots.clone()), provider.clone())
            .build()?,
    )
}

/// Presents whatever certificate is current.
#[derive(Debug)]
struct CurrentCertificate(Arc<TlsState>);

impl ResolvesServerCert for CurrentCertificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.current()
    }
}

impl ResolvesClientCert for CurrentCertificate {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.current()
    }

    fn has_certs(&self) -> bool {
        self.0.current().is_some()
    }
}

/// Delegates to the webpki client verifier of the current anchors.
#[derive(Debug)]
struct SwappableClientVerifier(Arc<TlsState>);

impl ClientCertVerifier for SwappableClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints would have to borrow from a value that may be swapped away;
        // an empty list tells clients to send whatever certificate they have.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.0
            .client_verifier
            .load()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.algorithms().supported_schemes()
    }
}

/// Verifies a worker: its chain with webpki, then its SPIFFE ID (the URI
/// SAN, which webpki does not check) against the identity expected of it.
#[derive(Debug)]
struct SpiffeServerVerifier {
    state: Arc<TlsState>,
    expected: SpiffePattern,
    mismatches: Counter,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        let roots = self.state.roots.load();
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots,
            intermediates,
            now,
            self.state.algorithms().all,
        )?;
        let presented = spiffe_id_of(end_entity);
        match &presented {
            Some(id) if self.expected.matches(id) => Ok(ServerCertVerified::assertion()),
            _ => {
                self.mismatches.increment(1);
                let presented =
                    presented.map_or_else(|| "no SPIFFE ID".to_owned(), |id| id.to_string());
                tracing::warn!(%presented, expected = self.expected.as_str(), "worker presented an unexpected identity");
                Err(Error::General(format!(
                    "worker presented {presented}, expected {}",
                    self.expected.as_str()
                )))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.state.algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.state.algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.state.algorithms().supported_schemes()
    }
}

/// The SPIFFE ID in a certificate's URI SAN, if it has exactly one.
pub fn spiffe_id_of(certificate: &CertificateDer<'_>) -> Option<SpiffeId> {
    SpiffeId::from_certificate(certificate.as_ref())
}

/// Why an inbound handshake failed, as a metric label.
pub fn handshake_failure_reason(err: &std::io::Error) -> &'static str {
    use rustls::CertificateError;
    let Some(tls) = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<Error>())
    else {
        return "io";
    };
    match tls {
        Error::NoCertificatesPresented => "no_certificate",
        Error::InvalidCertificate(reason) => match reason {
            CertificateError::UnknownIssuer => "unknown_issuer",
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not_yet_valid"
            }
            _ => "bad_certificate",
        },
        Error::NoApplicationProtocol => "no_alpn",
        // Plaintext HTTP, a port scanner's probe, random bytes.
        Error::InvalidMessage(_) => "not_tls",
        _ => "other",
    }
}
