//! `POST /v1/identity/certify`: a CSR and a bearer token in, a certificate
//! chain out, whose only SAN is the SPIFFE ID of the token's workload.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use metrics::counter;
use serde::{Deserialize, Serialize};

use ferry_config::SpiffeId;

use super::ca::{CertificateAuthority, CertifyError};
use super::tokens::{TokenError, TokenValidator};

/// Largest certify request body accepted.
const MAX_BODY: usize = 64 * 1024;

/// The certify request body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CertifyRequest {
    csr: String,
}

/// The certify answer.
#[derive(Serialize, Deserialize, Debug)]
pub struct CertifyResponse {
    /// The identity the certificate names.
    pub spiffe_id: String,
    /// PEM certificates, leaf first.
    pub certificate_chain: Vec<String>,
    /// PEM trust anchors to verify peers with.
    pub trust_bundle: Vec<String>,
    /// Expiry, seconds since the epoch.
    pub expires_at: i64,
}

/// Issues workload certificates.
pub struct IdentityService {
    ca: Arc<CertificateAuthority>,
    tokens: Arc<dyn TokenValidator>,
    trust_domain: String,
}

impl IdentityService {
    /// A service signing with `ca` for workloads `tokens` vouches for.
    pub fn new(
        ca: Arc<CertificateAuthority>,
        tokens: Arc<dyn TokenValidator>,
        trust_domain: &str,
    ) -> Self {
        Self {
            ca,
            tokens,
            trust_domain: trust_domain.to_owned(),
        }
    }

    /// The CA.
    pub fn ca(&self) -> &CertificateAuthority {
        &self.ca
    }

    /// Answers `POST /v1/identity/certify`.
    pub async fn certify(&self, request: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        if request.method() != Method::POST {
            return error(StatusCode::METHOD_NOT_ALLOWED, "use POST", "method");
        }
        let token = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or_default()
            .to_owned();
        let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("the request body is unreadable or larger than {MAX_BODY} bytes"),
                    "bad_request",
                );
            }
        };
        let workload = match self.tokens.validate(&token).await {
            Ok(workload) => workload,
            Err(TokenError::Unavailable(why)) => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("cannot check the token now: {why}"),
                    "unavailable",
                );
            }
            Err(refused) => {
                return error(StatusCode::UNAUTHORIZED, &refused.to_string(), "bad_token");
            }
        };
        let Ok(CertifyRequest { csr }) = serde_json::from_slice::<CertifyRequest>(&body) else {
            return error(
                StatusCode::BAD_REQUEST,
                "the body must be JSON {\"csr\": \"<PEM certificate signing request>\"}",
                "bad_request",
            );
        };
        let identity = match SpiffeId::workload(
            &self.trust_domain,
            &workload.namespace,
            &workload.service_account,
        ) {
            Ok(identity) => identity,
            Err(why) => return error(StatusCode::INTERNAL_SERVER_ERROR, &why, "signing"),
        };
        match self.ca.certify(&csr, &identity) {
            Ok(issued) => {
                counter!("identity_certificates_issued_total").increment(1);
                tracing::info!(%identity, expires_at = issued.expires_at, "issued a workload certificate");
                json(
                    StatusCode::OK,
                    &CertifyResponse {
                        spiffe_id: identity.to_string(),
                        certificate_chain: issued.chain_pem,
                        trust_bundle: self.ca.anchors_pem().to_vec(),
                        expires_at: issued.expires_at,
                    },
                )
            }
            Err(CertifyError::BadCsr(why)) => error(
                StatusCode::BAD_REQUEST,
                &format!("the CSR is malformed: {why}"),
                "bad_csr",
            ),
            Err(CertifyError::Signing(why)) => {
                error(StatusCode::INTERNAL_SERVER_ERROR, &why, "signing")
            }
        }
    }
}

fn json(status: StatusCode, value: &impl Serialize) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A refusal: `{"error": message}` and a counted reason.
fn error(status: StatusCode, message: &str, reason: &'static str) -> Response<Full<Bytes>> {
    counter!("identity_certificates_refused_total", "reason" => reason).increment(1);
    tracing::info!(%status, reason, "refused a certify request");
    json(status, &serde_json::json!({ "error": message }))
}
