//! Per-grant workload identity: a ServiceAccount token from the TokenRequest API, exchanged for
//! an Entra token by client assertion (audience `api://AzureADTokenExchange`).

use crate::api::GrantIdentity;
use crate::azure::client::AssertionSource;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::PostParams;
use kube::{Api, Client};

/// Audience Entra expects on federated tokens.
pub const TOKEN_EXCHANGE_AUDIENCE: &str = "api://AzureADTokenExchange";

/// Gets ServiceAccount tokens of the grant's own namespace (never another's).
#[derive(Clone)]
pub struct ServiceAccountTokens {
    client: Client,
}

impl std::fmt::Debug for ServiceAccountTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServiceAccountTokens")
    }
}

impl ServiceAccountTokens {
    /// New source.
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

#[async_trait::async_trait]
impl AssertionSource for ServiceAccountTokens {
    async fn assertion(&self, namespace: &str, identity: &GrantIdentity) -> Result<String, String> {
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        let tr = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: Some(vec![TOKEN_EXCHANGE_AUDIENCE.into()]),
                expiration_seconds: Some(3600),
                ..Default::default()
            }),
            ..Default::default()
        };
        let out: TokenRequest = api
            .create_subresource(
                "token",
                &identity.service_account_name,
                &PostParams::default(),
                &tr,
            )
            .await
            .map_err(|e| {
                format!(
                    "TokenRequest for {namespace}/{} failed: {e}",
                    identity.service_account_name
                )
            })?;
        out.status
            .and_then(|s| s.token)
            .ok_or_else(|| "TokenRequest returned no token".into())
    }
}
