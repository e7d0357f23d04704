//! Who a bearer token belongs to. A `TokenValidator` turns a token into a
//! workload (namespace, service account); this validator reads a
//! file of bootstrap tokens, and the Kubernetes TokenReview validator comes
//! with the Kubernetes source.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use futures::future::BoxFuture;

use ferry_config::{BootstrapTokens, from_yaml_file};

/// A workload a token stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// Its namespace.
    pub namespace: String,
    /// Its service account.
    pub service_account: String,
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// No token was presented.
    #[error("no bearer token was presented")]
    Missing,
    /// The token is not known or not valid.
    #[error("the token is not valid")]
    Invalid,
    /// The validator could not decide (e.g. the API server is down).
    #[error("the token could not be checked: {0}")]
    Unavailable(String),
}

/// Decides which workload a token belongs to.
pub trait TokenValidator: Send + Sync + 'static {
    /// The workload `token` stands for.
    fn validate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Workload, TokenError>>;
}

/// Bootstrap tokens from a file.
pub struct FileTokens {
    tokens: HashMap<String, Workload>,
}

impl FileTokens {
    /// Reads the token file (YAML: `tokens: [{token, namespace, service_account}]`).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let file: BootstrapTokens = from_yaml_file(path)?;
        let mut tokens = HashMap::new();
        for entry in file.tokens {
            anyhow::ensure!(
                !entry.token.is_empty(),
                "{}: a token is empty",
                path.display()
            );
            // Namespace and account become SPIFFE path segments: check them now.
            ferry_config::SpiffeId::workload(
                "example.org",
                &entry.namespace,
                &entry.service_account,
            )
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            tokens.insert(
                entry.token,
                Workload {
                    namespace: entry.namespace,
                    service_account: entry.service_account,
                },
            );
        }
        Ok(Self { tokens })
    }

    /// No tokens: every request is refused.
    pub fn empty() -> Self {
        Self {
            tokens: HashMap::new(),
        }
    }

    /// Tokens known.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether no token is known.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

impl TokenValidator for FileTokens {
    fn validate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Workload, TokenError>> {
        Box::pin(async move {
            if token.is_empty() {
                return Err(TokenError::Missing);
            }
            self.tokens.get(token).cloned().ok_or(TokenError::Invalid)
        })
    }
}

/// Tries validators in order: the first that knows the token decides.
pub struct AnyOf(pub Vec<Arc<dyn TokenValidator>>);

impl TokenValidator for AnyOf {
    fn validate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Workload, TokenError>> {
        Box::pin(async move {
            let mut last = TokenError::Invalid;
            for validator in &self.0 {
                match validator.validate(token).await {
                    Ok(workload) => return Ok(workload),
                    Err(err) => last = err,
                }
            }
            Err(last)
        })
    }
}
