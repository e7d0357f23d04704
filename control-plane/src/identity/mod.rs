//! The identity service: a CA that turns a CSR and a bearer token into a
//! short-lived certificate naming the token's workload.

pub mod bundle_configmap;
pub mod ca;
pub mod ca_secret;
pub mod service;
pub mod tokens;

pub use ca::CertificateAuthority;
pub use service::IdentityService;
pub use tokens::{AnyOf, FileTokens, TokenError, TokenValidator, Workload};
