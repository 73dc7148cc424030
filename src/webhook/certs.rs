//! The webhook's TLS certificate and the stamp key: from mounted files (cert-manager, a
//! Secret volume) or generated once and kept in Secrets of the operator's namespace, so every
//! replica serves the same certificate and signs with the same key. A self-generated CA is
//! patched into the webhook configurations' `caBundle`.

use base64::Engine as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// PEM material for the server.
#[derive(Clone)]
pub struct ServingCert {
    /// Certificate chain (PEM).
    pub cert_pem: String,
    /// Private key (PEM).
    pub key_pem: String,
    /// The CA to publish in `caBundle` (self-generated only).
    pub ca_pem: Option<String>,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCert")
            .field("ca", &self.ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

/// Errors preparing TLS or the key.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// Files.
    #[error("{0}")]
    Io(String),
    /// Generation or parsing.
    #[error("{0}")]
    Crypto(String),
    /// Kubernetes.
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
}

/// Reads `tls.crt` and `tls.key` from a directory (a mounted kubernetes.io/tls Secret).
pub fn from_dir(dir: &Path) -> Result<ServingCert, CertError> {
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .map_err(|e| CertError::Io(format!("reading {}: {e}", dir.join(f).display())))
    };
    Ok(ServingCert {
        cert_pem: read("tls.crt")?,
        key_pem: read("tls.key")?,
        ca_pem: None,
    })
}

/// A new CA and a serving certificate for `dns_names` (plus localhost and loopback IPs).
pub fn generate(dns_names: &[String]) -> Result<ServingCert, CertError> {
    let e = |x: rcgen::Error| CertError::Crypto(x.to_string());
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "accessgrant-operator webhook CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = rcgen::date_time_ymd(2024, 1, 1);
    ca.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let ca_key = KeyPair::generate().map_err(e)?;
    let ca_cert = ca.self_signed(&ca_key).map_err(e)?;
    let issuer = Issuer::new(ca, ca_key);
    let mut names = dns_names.to_vec();
    names.push("localhost".into());
    let mut leaf = CertificateParams::new(names).map_err(e)?;
    for ip in ["127.0.0.1", "::1"] {
        if let Ok(addr) = ip.parse() {
            leaf.subject_alt_names.push(SanType::IpAddress(addr));
        }
    }
    leaf.distinguished_name
        .push(DnType::CommonName, "accessgrant-operator webhook");
    leaf.use_authority_key_identifier_extension = true;
    leaf.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.not_before = rcgen::date_time_ymd(2024, 1, 1);
    leaf.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let leaf_key = KeyPair::generate().map_err(e)?;
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).map_err(e)?;
    Ok(ServingCert {
        cert_pem: leaf_cert.pem(),
        key_pem: leaf_key.serialize_pem(),
        ca_pem: Some(ca_cert.pem()),
    })
}

fn secret_str(s: &Secret, k: &str) -> Option<String> {
    s.data
        .as_ref()
        .and_then(|d| d.get(k))
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
}

/// Gets a Secret, or creates it from `make()` when absent; a concurrent creator wins and its
/// Secret is used (all replicas converge on one).
async fn get_or_create(
    client: &Client,
    namespace: &str,
    name: &str,
    make: impl FnOnce() -> Result<BTreeMap<String, ByteString>, CertError>,
    type_: &str,
) -> Result<Secret, CertError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    if let Some(s) = api.get_opt(name).await? {
        return Ok(s);
    }
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                "accessgrant-operator".to_string(),
            )])),
            ..Default::default()
        },
        data: Some(make()?),
        type_: Some(type_.to_string()),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(s) => Ok(s),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(api.get(name).await?),
        Err(e) => Err(e.into()),
    }
}

/// The self-generated serving certificate, shared through a Secret.
pub async fn shared_generated(
    client: &Client,
    namespace: &str,
    secret: &str,
    dns_names: &[String],
) -> Result<ServingCert, CertError> {
    let names = dns_names.to_vec();
    let s = get_or_create(
        client,
        namespace,
        secret,
        move || {
            let c = generate(&names)?;
            Ok(BTreeMap::from([
                ("tls.crt".to_string(), ByteString(c.cert_pem.into_bytes())),
                ("tls.key".to_string(), ByteString(c.key_pem.into_bytes())),
                (
                    "ca.crt".to_string(),
                    ByteString(c.ca_pem.unwrap_or_default().into_bytes()),
                ),
            ]))
        },
        "kubernetes.io/tls",
    )
    .await?;
    match (
        secret_str(&s, "tls.crt"),
        secret_str(&s, "tls.key"),
        secret_str(&s, "ca.crt"),
    ) {
        (Some(cert_pem), Some(key_pem), ca) => Ok(ServingCert {
            cert_pem,
            key_pem,
            ca_pem: ca.filter(|c| !c.is_empty()),
        }),
        _ => Err(CertError::Crypto(format!(
            "Secret {namespace}/{secret} lacks tls.crt or tls.key"
        ))),
    }
}

/// The stamp key: from a file, or from a Secret (created with 32 random bytes if absent).
pub async fn stamp_key(
    client: &Client,
    file: Option<&Path>,
    namespace: &str,
    secret: &str,
) -> Result<crate::stamp::StampKey, CertError> {
    if let Some(f) = file {
        let bytes = std::fs::read(f)
            .map_err(|e| CertError::Io(format!("reading the stamp key {}: {e}", f.display())))?;
        return crate::stamp::StampKey::from_bytes(&bytes).map_err(CertError::Crypto);
    }
    let s = get_or_create(
        client,
        namespace,
        secret,
        || {
            let (bytes, _) = crate::stamp::StampKey::generate().map_err(CertError::Crypto)?;
            Ok(BTreeMap::from([("key".to_string(), ByteString(bytes))]))
        },
        "Opaque",
    )
    .await?;
    let bytes = s
        .data
        .as_ref()
        .and_then(|d| d.get("key"))
        .map(|b| b.0.clone())
        .ok_or_else(|| CertError::Crypto(format!("Secret {namespace}/{secret} lacks key")))?;
    crate::stamp::StampKey::from_bytes(&bytes).map_err(CertError::Crypto)
}

/// Puts `ca_pem` into every webhook's `clientConfig.caBundle` of the named configurations
/// (both kinds). Returns how many configurations were patched; absent ones are skipped.
pub async fn patch_ca_bundle(
    client: &Client,
    name: &str,
    ca_pem: &str,
) -> Result<usize, CertError> {
    let bundle = base64::engine::general_purpose::STANDARD.encode(ca_pem.as_bytes());
    let mut patched = 0;
    let mutating: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    if let Some(c) = mutating.get_opt(name).await? {
        let n = c.webhooks.as_ref().map_or(0, Vec::len);
        patch_each(&mutating, name, n, &bundle).await?;
        patched += 1;
    }
    let validating: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    if let Some(c) = validating.get_opt(name).await? {
        let n = c.webhooks.as_ref().map_or(0, Vec::len);
        patch_each(&validating, name, n, &bundle).await?;
        patched += 1;
    }
    Ok(patched)
}

async fn patch_each<K>(api: &Api<K>, name: &str, n: usize, bundle: &str) -> Result<(), CertError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    if n == 0 {
        return Ok(());
    }
    let ops: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            serde_json::json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": bundle})
        })
        .collect();
    let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(ops))
        .map_err(|e| CertError::Crypto(e.to_string()))?;
    api.patch(name, &PatchParams::default(), &Patch::Json::<()>(patch))
        .await?;
    Ok(())
}

/// A rustls server configuration for the certificate.
pub fn server_config(c: &ServingCert) -> Result<Arc<rustls::ServerConfig>, CertError> {
    use rustls::pki_types::pem::PemObject as _;
    let certs: Vec<rustls::pki_types::CertificateDer<'static>> =
        rustls::pki_types::CertificateDer::pem_slice_iter(c.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| CertError::Crypto(format!("certificate: {e}")))?;
    if certs.is_empty() {
        return Err(CertError::Crypto("no certificate in tls.crt".into()));
    }
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes())
        .map_err(|e| CertError::Crypto(format!("private key in tls.key: {e}")))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| CertError::Crypto(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| CertError::Crypto(e.to_string()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Serves `app` over TLS on `listener` until the process ends.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: axum::Router,
) {
    use tower::ServiceExt as _;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let Ok((tcp, _peer)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let Ok(Ok(stream)) =
                tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp))
                    .await
            else {
                return;
            };
            let svc =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let app = app.clone();
                    async move { app.oneshot(req.map(axum::body::Body::new)).await }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}
