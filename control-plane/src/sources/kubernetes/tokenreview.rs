//! Proxies' tokens checked with the Kubernetes TokenReview API: a projected
//! service account token for audience `ferry.dev/identity` names the
//! workload `system:serviceaccount:<namespace>:<account>`.

use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::Client;
use kube::api::{Api, PostParams};

use super::TOKEN_AUDIENCE;
use crate::identity::{TokenError, TokenValidator, Workload};

/// Prefix of a service account's user name.
const SERVICE_ACCOUNT_USER: &str = "system:serviceaccount:";

/// Validates tokens with the API server.
pub struct TokenReviewValidator {
    client: Client,
}

impl TokenReviewValidator {
    /// A validator asking the API server of `client`.
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

impl TokenValidator for TokenReviewValidator {
    fn validate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Workload, TokenError>> {
        Box::pin(async move {
            if token.is_empty() {
                return Err(TokenError::Missing);
            }
            let review = TokenReview {
                spec: TokenReviewSpec {
                    token: token.to_owned(),
                    audiences: Some(vec![TOKEN_AUDIENCE.to_owned()]),
                },
                ..TokenReview::default()
            };
            let api: Api<TokenReview> = Api::all(self.client.clone());
            let answer = api
                .create(&PostParams::default(), &review)
                .await
                .map_err(|e| TokenError::Unavailable(format!("TokenReview: {e}")))?;
            let status = answer.status.unwrap_or_default();
            if status.authenticated != Some(true) {
                return Err(TokenError::Invalid);
            }
            // An API server that ignores audiences answers none: refuse, as
            // the token could have been meant for someone else.
            let audiences = status.audiences.unwrap_or_default();
            if !audiences.iter().any(|a| a == TOKEN_AUDIENCE) {
                return Err(TokenError::Invalid);
            }
            let user = status.user.and_then(|u| u.username).unwrap_or_default();
            let (namespace, account) = user
                .strip_prefix(SERVICE_ACCOUNT_USER)
                .and_then(|rest| rest.split_once(':'))
                .ok_or(TokenError::Invalid)?;
            Ok(Workload {
                namespace: namespace.to_owned(),
                service_account: account.to_owned(),
            })
        })
    }
}
