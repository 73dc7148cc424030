//! HTTP plumbing of the ARM client: the TLS client, azure_identity's options, body parsing,
//! Retry-After, backoff and redaction.

use super::error::AzureError;
use azure_core::http::{ClientOptions, RetryOptions, Transport};
use rand::RngExt;
use std::sync::Arc;
use std::time::Duration;

/// Client construction errors.
#[derive(Debug, thiserror::Error)]
pub enum ArmClientError {
    /// TLS or HTTP client setup.
    #[error("HTTP client: {0}")]
    Http(String),
    /// Credential setup.
    #[error("credential: {0}")]
    Credential(String),
}

/// Idle connections kept per host after a burst.
const POOL_MAX_IDLE: usize = 32;

/// Builds a reqwest client trusting the platform roots plus `extra_ca_pem`, with rustls + ring.
pub fn http_client(
    extra_ca_pem: Option<&[u8]>,
    timeout: Duration,
) -> Result<reqwest::Client, ArmClientError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for c in native.certs {
        let _ = roots.add(c);
    }
    if let Some(pem) = extra_ca_pem {
        use rustls::pki_types::pem::PemObject as _;
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| ArmClientError::Http(format!("bad CA file: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| ArmClientError::Http(format!("bad CA certificate: {e}")))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ArmClientError::Http(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(timeout)
        // A burst at real latency opens a connection per call in flight (HTTP/1.1, ~50 KB
        // each with its buffers); keep enough for the steady state, not all of them.
        .pool_max_idle_per_host(POOL_MAX_IDLE)
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| ArmClientError::Http(e.to_string()))
}

pub(super) fn client_options(http: &reqwest::Client, authority: &url::Url) -> ClientOptions {
    let mut custom = azure_core::cloud::CustomConfiguration::default();
    custom.authority_host = authority.as_str().trim_end_matches('/').to_string();
    ClientOptions {
        // One retry loop only: ours (ArmClient::call) retries token failures too.
        retry: RetryOptions::none(),
        transport: Some(Transport::new(Arc::new(http.clone()))),
        cloud: Some(Arc::new(custom.into())),
        ..Default::default()
    }
}

/// Parses a JSON body into `T`, as an `Invalid` error when it does not fit.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, AzureError> {
    serde_json::from_slice(body).map_err(|e| AzureError::Invalid {
        status: 0,
        code: "UnparseableResponse".into(),
        message: e.to_string(),
    })
}

/// The subscription a path belongs to (lower case), or `tenant` for tenant-level paths.
pub fn subscription_of(path: &str) -> String {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    segs.windows(2)
        .find(|w| w[0].eq_ignore_ascii_case("subscriptions"))
        .map(|w| w[1].to_ascii_lowercase())
        .unwrap_or_else(|| "tenant".into())
}

pub(super) fn retry_after_secs(h: &reqwest::header::HeaderMap) -> Option<u64> {
    if let Some(ms) = h
        .get("retry-after-ms")
        .or_else(|| h.get("x-ms-retry-after-ms"))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        return Some(ms.div_ceil(1000));
    }
    h.get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

pub(super) fn backoff(attempt: u32) -> Duration {
    let base = 200u64.saturating_mul(1u64 << attempt.min(8));
    let jitter = rand::rng().random_range(0..=base / 2);
    Duration::from_millis(base + jitter)
}

/// Removes anything that looks like a bearer token or secret from an error message.
pub fn redact(s: &str) -> String {
    s.split_whitespace()
        .map(|w| {
            if w.len() > 60 && w.chars().filter(|c| *c == '.').count() >= 2 {
                "[redacted]"
            } else {
                w
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
