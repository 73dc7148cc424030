//! How the operator authenticates to Azure: its own credential (secret, workload identity,
//! managed identity) and client assertions for a grant's workload identity.

use crate::api::GrantIdentity;
use azure_identity::ClientAssertion;
use std::sync::Arc;

/// How the operator authenticates to Azure.
#[derive(Clone)]
pub enum AuthConfig {
    /// AKS workload identity (federated token file).
    WorkloadIdentity {
        /// Tenant id.
        tenant_id: String,
        /// Client id.
        client_id: String,
        /// Token file.
        token_file: std::path::PathBuf,
    },
    /// Managed identity (IMDS or App Service endpoint).
    ManagedIdentity {
        /// User-assigned client id, or system-assigned when None.
        client_id: Option<String>,
    },
    /// Client secret.
    ClientSecret {
        /// Tenant id.
        tenant_id: String,
        /// Client id.
        client_id: String,
        /// Secret (never logged).
        secret: String,
    },
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthConfig::WorkloadIdentity {
                tenant_id,
                client_id,
                ..
            } => write!(f, "WorkloadIdentity({tenant_id}/{client_id})"),
            AuthConfig::ManagedIdentity { client_id } => {
                write!(f, "ManagedIdentity({client_id:?})")
            }
            AuthConfig::ClientSecret {
                tenant_id,
                client_id,
                ..
            } => write!(f, "ClientSecret({tenant_id}/{client_id}, secret redacted)"),
        }
    }
}

/// Supplies a client assertion (e.g. a ServiceAccount token) for a grant's workload identity.
#[async_trait::async_trait]
pub trait AssertionSource: Send + Sync + std::fmt::Debug {
    /// A fresh assertion JWT for `identity` of `namespace`.
    async fn assertion(&self, namespace: &str, identity: &GrantIdentity) -> Result<String, String>;
}

#[derive(Debug)]
pub(super) struct GrantAssertion {
    pub(super) source: Arc<dyn AssertionSource>,
    pub(super) namespace: String,
    pub(super) identity: GrantIdentity,
}

#[async_trait::async_trait]
impl ClientAssertion for GrantAssertion {
    async fn secret(
        &self,
        _options: Option<azure_core::http::ClientMethodOptions<'_>>,
    ) -> azure_core::Result<String> {
        self.source
            .assertion(&self.namespace, &self.identity)
            .await
            .map_err(|e| {
                azure_core::Error::with_message(azure_core::error::ErrorKind::Credential, e)
            })
    }
}
