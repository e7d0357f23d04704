//! The mesh CA: an issuer key and certificate loaded from files (a mounted
//! Secret) or generated once and kept with mode 0600 (local runs), and the
//! trust bundle it publishes, which may hold old anchors beside the current
//! issuer so an issuer can be rotated with overlap.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
    SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;

use ferry_config::{ControlPlaneConfig, SpiffeId};

/// Certificates are valid from a little before they are issued, so a peer
/// whose clock runs slightly behind still accepts them.
const BACKDATE: Duration = Duration::from_secs(60);
/// Lifetime of a generated issuer.
const ISSUER_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A certificate issued to a workload.
pub struct Issued {
    /// Leaf first, then the issuer.
    pub chain_pem: Vec<String>,
    /// When it expires (seconds since the epoch).
    pub expires_at: i64,
}

/// Why a CSR could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum CertifyError {
    /// The request is not a usable CSR.
    #[error("the CSR is malformed: {0}")]
    BadCsr(String),
    /// Signing failed on our side.
    #[error("signing failed: {0}")]
    Signing(String),
}

/// The CA.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    issuer_pem: String,
    anchors_pem: Vec<String>,
    lifetime: Duration,
}

impl CertificateAuthority {
    /// Opens the CA `config` describes, generating one in the state directory
    /// when no issuer files are given, and writes the trust bundle there.
    pub fn open(config: &ControlPlaneConfig) -> anyhow::Result<Self> {
        Self::open_with(config, None)
    }

    /// [`CertificateAuthority::open`], with the issuer (certificate and key,
    /// PEM) given by the caller when `issuer` is set (a Kubernetes Secret).
    pub fn open_with(
        config: &ControlPlaneConfig,
        issuer: Option<(String, String)>,
    ) -> anyhow::Result<Self> {
        fs::create_dir_all(&config.state_dir).with_context(|| {
            format!(
                "cannot create state directory {}",
                config.state_dir.display()
            )
        })?;
        let (issuer_pem, key_pem) = match (issuer, &config.ca_cert, &config.ca_key) {
            (Some(issuer), None, None) => issuer,
            (Some(_), _, _) => bail!("give the CA as a Secret or as files, not both"),
            (None, ca_cert, ca_key) => match (ca_cert, ca_key) {
                (Some(cert), Some(key)) => (
                    fs::read_to_string(cert).with_context(|| {
                        format!("cannot read CA certificate {}", cert.display())
                    })?,
                    fs::read_to_string(key)
                        .with_context(|| format!("cannot read CA key {}", key.display()))?,
                ),
                (None, None) => load_or_generate(&config.state_dir, &config.trust_domain)?,
                _ => bail!(
                    "give both the CA certificate and the CA key, or neither (to generate one)"
                ),
            },
        };
        // Parse errors must not echo the key material.
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|_| anyhow::anyhow!("the CA key is not a PEM private key"))?;
        let issuer = Issuer::from_ca_cert_pem(&issuer_pem, key)
            .map_err(|e| anyhow::anyhow!("the CA certificate is not usable: {e}"))?;
        let mut anchors_pem = vec![issuer_pem.trim().to_owned()];
        if let Some(path) = &config.extra_anchors {
            let text = fs::read_to_string(path)
                .with_context(|| format!("cannot read trust anchors {}", path.display()))?;
            for anchor in CertificateDer::pem_slice_iter(text.as_bytes()) {
                let anchor = anchor
                    .with_context(|| format!("{} holds a malformed certificate", path.display()))?;
                anchors_pem.push(pem_of_certificate(&anchor));
            }
        }
        let ca = Self {
            issuer,
            issuer_pem,
            anchors_pem,
            lifetime: config.cert_lifetime.0,
        };
        let bundle = config.state_dir.join("bundle.pem");
        fs::write(&bundle, ca.bundle_pem())
            .with_context(|| format!("cannot write {}", bundle.display()))?;
        Ok(ca)
    }

    /// The trust bundle: every anchor, PEM, issuer first.
    pub fn bundle_pem(&self) -> String {
        self.anchors_pem.join("\n") + "\n"
    }

    /// The anchors one by one.
    pub fn anchors_pem(&self) -> &[String] {
        &self.anchors_pem
    }

    /// Signs `csr_pem` for `identity`: the certificate's only SAN is that
    /// SPIFFE ID, whatever the CSR asked for.
    pub fn certify(&self, csr_pem: &str, identity: &SpiffeId) -> Result<Issued, CertifyError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CertifyError::BadCsr(e.to_string()))?;
        let now = OffsetDateTime::now_utc();
        let not_after = now + self.lifetime;
        csr.params = workload_params(identity, now, not_after)
            .map_err(|e| CertifyError::Signing(e.to_string()))?;
        let leaf = csr
            .signed_by(&self.issuer)
            .map_err(|e| CertifyError::Signing(e.to_string()))?;
        Ok(Issued {
            chain_pem: vec![leaf.pem(), self.issuer_pem.trim().to_owned()],
            expires_at: not_after.unix_timestamp(),
        })
    }

    /// A certificate and key for the control plane's own TLS listener.
    pub fn server_identity(
        &self,
        names: &[String],
        identity: &SpiffeId,
        lifetime: Duration,
    ) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let now = OffsetDateTime::now_utc();
        let mut params = workload_params(identity, now, now + lifetime)?;
        for name in names {
            params.subject_alt_names.push(match name.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(name.as_str().try_into()?),
            });
        }
        let leaf = params.signed_by(&key, &self.issuer)?;
        let issuer = CertificateDer::from_pem_slice(self.issuer_pem.as_bytes())?;
        let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes())?;
        Ok((vec![leaf.der().clone(), issuer], key))
    }
}

/// What every workload certificate carries.
fn workload_params(
    identity: &SpiffeId,
    now: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::default();
    params.not_before = now - BACKDATE;
    params.not_after = not_after;
    params.serial_number = Some(random_serial());
    params.subject_alt_names = vec![SanType::URI(identity.as_str().try_into()?)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // a positive integer
    SerialNumber::from_slice(&bytes)
}

fn pem_of_certificate(certificate: &CertificateDer<'_>) -> String {
    pem_encode("CERTIFICATE", certificate.as_ref())
}

/// PEM armour for DER bytes.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der)).trim().to_owned()
}

/// The CA kept in `dir`, generated there on first use.
fn load_or_generate(dir: &Path, trust_domain: &str) -> anyhow::Result<(String, String)> {
    let cert_path = dir.join("ca.pem");
    let key_path = dir.join("ca.key");
    if cert_path.exists() || key_path.exists() {
        let cert = fs::read_to_string(&cert_path)
            .with_context(|| format!("cannot read {}", cert_path.display()))?;
        let key = fs::read_to_string(&key_path)
            .with_context(|| format!("cannot read {}", key_path.display()))?;
        return Ok((cert, key));
    }
    let (cert_pem, key_pem) = generate_issuer(trust_domain)?;
    // The key first, with its mode set at creation: it is never readable by others.
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&key_path)
        .with_context(|| format!("cannot create {}", key_path.display()))?;
    file.write_all(key_pem.as_bytes())?;
    fs::write(&cert_path, &cert_pem)
        .with_context(|| format!("cannot write {}", cert_path.display()))?;
    tracing::info!(certificate = %cert_path.display(), "generated a new mesh CA");
    Ok((cert_pem, key_pem))
}

/// A new self-signed issuer for `trust_domain`: certificate and key, PEM.
pub fn generate_issuer(trust_domain: &str) -> anyhow::Result<(String, String)> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + ISSUER_LIFETIME;
    params.serial_number = Some(random_serial());
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.distinguished_name.push(
        DnType::CommonName,
        format!("Ferry mesh CA ({trust_domain})"),
    );
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_encoding_round_trips() {
        for der in [
            vec![1u8],
            vec![1, 2],
            vec![1, 2, 3],
            (0..200).map(|i| i as u8).collect(),
        ] {
            let pem = pem_encode("CERTIFICATE", &der);
            let back = CertificateDer::from_pem_slice(pem.as_bytes()).expect("parse");
            assert_eq!(back.as_ref(), &der[..]);
        }
    }
}
