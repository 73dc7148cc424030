//! Authentication (static bearer tokens, ServiceAccount JWTs), the ServiceAccount `token`
//! subresource (TokenRequest), and the OIDC discovery documents of the token issuer.

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use ring::rand::SystemRandom;
use ring::signature::{self, RsaKeyPair};
use serde_json::{Value, json};

use super::error::{ApiError, ApiResult, FieldError};
use super::registry::StoreKey;
use super::server::{Ctx, ResReq, Sim, json_response};

/// The requesting user, as kube-apiserver's authenticators produce it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    pub username: String,
    pub uid: String,
    pub groups: Vec<String>,
}

impl UserInfo {
    pub fn new(username: &str, groups: &[&str]) -> Self {
        let mut groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        if !groups.iter().any(|g| g == "system:authenticated") {
            groups.push("system:authenticated".into());
        }
        Self {
            username: username.into(),
            uid: String::new(),
            groups,
        }
    }
    pub fn anonymous() -> Self {
        Self {
            username: "system:anonymous".into(),
            uid: String::new(),
            groups: vec!["system:unauthenticated".into()],
        }
    }
}

pub(crate) struct Auth {
    pub tokens: HashMap<String, UserInfo>,
    pub allow_anonymous: bool,
}

impl Auth {
    /// The authenticated user (bearer token, ServiceAccount JWT, or anonymous when allowed);
    /// impersonation is checked afterwards by the authorizer (`rbac::impersonate`).
    pub(crate) fn authenticate_only(
        &self,
        headers: &HeaderMap,
        signer: &Signer,
    ) -> ApiResult<UserInfo> {
        let Some(h) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
            return if self.allow_anonymous {
                Ok(UserInfo::anonymous())
            } else {
                Err(ApiError::unauthorized())
            };
        };
        let token = h
            .strip_prefix("Bearer ")
            .or_else(|| h.strip_prefix("bearer "))
            .ok_or_else(ApiError::unauthorized)?
            .trim();
        if let Some(u) = self.tokens.get(token) {
            return Ok(u.clone());
        }
        if let Some(claims) = signer.verify(token, &signer.issuer) {
            let ns = claims["kubernetes.io"]["namespace"]
                .as_str()
                .unwrap_or_default();
            let sub = claims["sub"].as_str().unwrap_or_default();
            return Ok(UserInfo {
                username: sub.to_string(),
                uid: claims["kubernetes.io"]["serviceaccount"]["uid"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                groups: vec![
                    "system:serviceaccounts".into(),
                    format!("system:serviceaccounts:{ns}"),
                    "system:authenticated".into(),
                ],
            });
        }
        Err(ApiError::unauthorized())
    }
}

/// A simulator-only RSA key (not a secret: it ships in the source so every run signs with
/// the same key and start-up needs no key generation).
const DEFAULT_KEY_PEM: &str = include_str!("sa-signing-key.pem");

pub(crate) struct Signer {
    key: RsaKeyPair,
    rng: SystemRandom,
    pub kid: String,
    n: Vec<u8>,
    e: Vec<u8>,
    public_der: Vec<u8>,
    pub issuer: String,
}

fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    let b64: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

impl Signer {
    /// Loads a PKCS#8 PEM RSA key (the built-in one when `pem` is None).
    pub fn new(pem: Option<&str>, issuer: &str) -> anyhow::Result<Self> {
        let der = pem_to_der(pem.unwrap_or(DEFAULT_KEY_PEM))
            .ok_or_else(|| anyhow::anyhow!("signing key is not PEM"))?;
        let key = RsaKeyPair::from_pkcs8(&der)
            .map_err(|e| anyhow::anyhow!("signing key rejected: {e}"))?;
        let comps = signature::RsaPublicKeyComponents::<Vec<u8>>::from(key.public());
        let public_der = key.public().as_ref().to_vec();
        let digest = ring::digest::digest(&ring::digest::SHA256, &public_der);
        Ok(Self {
            kid: B64URL.encode(digest.as_ref()),
            n: comps.n,
            e: comps.e,
            public_der,
            key,
            rng: SystemRandom::new(),
            issuer: issuer.to_string(),
        })
    }

    pub fn sign(&self, claims: &Value) -> ApiResult<String> {
        let header = json!({"alg": "RS256", "kid": self.kid});
        let input = format!(
            "{}.{}",
            B64URL.encode(header.to_string()),
            B64URL.encode(claims.to_string())
        );
        let mut sig = vec![0u8; self.key.public().modulus_len()];
        self.key
            .sign(
                &signature::RSA_PKCS1_SHA256,
                &self.rng,
                input.as_bytes(),
                &mut sig,
            )
            .map_err(|_| ApiError::internal("signing failed"))?;
        Ok(format!("{input}.{}", B64URL.encode(sig)))
    }

    /// Claims of a valid, unexpired token of ours whose audience includes `audience`.
    pub fn verify(&self, token: &str, audience: &str) -> Option<Value> {
        let mut parts = token.split('.');
        let (h, c, s) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let sig = B64URL.decode(s).ok()?;
        let key = signature::UnparsedPublicKey::new(
            &signature::RSA_PKCS1_2048_8192_SHA256,
            &self.public_der,
        );
        key.verify(format!("{h}.{c}").as_bytes(), &sig).ok()?;
        let claims: Value = serde_json::from_slice(&B64URL.decode(c).ok()?).ok()?;
        let now = super::clock::now().timestamp();
        if claims["exp"].as_i64()? < now || claims["iss"].as_str()? != self.issuer {
            return None;
        }
        let aud_ok = match &claims["aud"] {
            Value::String(a) => a == audience,
            Value::Array(a) => a.iter().any(|x| x.as_str() == Some(audience)),
            _ => false,
        };
        aud_ok.then_some(claims)
    }

    pub fn jwks(&self) -> Value {
        json!({"keys": [{
            "use": "sig", "kty": "RSA", "kid": self.kid, "alg": "RS256",
            "n": B64URL.encode(&self.n), "e": B64URL.encode(&self.e),
        }]})
    }
}

pub(crate) fn openid_configuration(sim: &Sim) -> Value {
    json!({
        "issuer": sim.issuer,
        "jwks_uri": format!("{}/openid/v1/jwks", sim.base_url),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
    })
}

/// `POST /api/v1/namespaces/{ns}/serviceaccounts/{name}/token`.
pub(crate) fn token_request(
    sim: &Arc<Sim>,
    ctx: &Ctx,
    rr: &ResReq,
    body: &[u8],
) -> ApiResult<Response> {
    let req: Value = if body.is_empty() {
        json!({})
    } else if ctx.content_type.contains("protobuf") {
        super::protobuf::decode(body).ok_or_else(|| {
            ApiError::new(
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format",
            )
        })?
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding request body: {e}")))?
    };
    let ns = rr.ns_str();
    let name = rr.name_str();
    let sa = sim
        .lock()
        .store
        .get(&StoreKey::new("", "serviceaccounts"), ns, name)
        .ok_or_else(|| ApiError::not_found_gr("", "serviceaccounts", name))?;
    let audiences: Vec<String> = match req["spec"]["audiences"].as_array() {
        Some(a) if !a.is_empty() => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        _ => vec![sim.issuer.clone()],
    };
    let exp_secs = req["spec"]["expirationSeconds"].as_i64().unwrap_or(3600);
    let tr_def = super::registry::ResourceDef {
        group: "authentication.k8s.io".into(),
        kind: "TokenRequest".into(),
        ..(*rr.def).clone()
    };
    if exp_secs < 600 {
        return Err(ApiError::invalid(
            &tr_def,
            name,
            &[FieldError::invalid(
                "spec.expirationSeconds",
                &json!(exp_secs),
                "may not specify a duration less than 10 minutes",
            )],
        ));
    }
    if exp_secs > 1 << 32 {
        return Err(ApiError::invalid(
            &tr_def,
            name,
            &[FieldError::invalid(
                "spec.expirationSeconds",
                &json!(exp_secs),
                "may not specify a duration larger than 2^32 seconds",
            )],
        ));
    }
    let now = super::clock::now();
    let exp = now + chrono::Duration::seconds(exp_secs);
    let sa_uid = sa["metadata"]["uid"].as_str().unwrap_or_default();
    let claims = json!({
        "aud": audiences,
        "exp": exp.timestamp(),
        "iat": now.timestamp(),
        "nbf": now.timestamp(),
        "iss": sim.issuer,
        "jti": uuid::Uuid::new_v4().to_string(),
        "kubernetes.io": {
            "namespace": ns,
            "serviceaccount": {"name": name, "uid": sa_uid},
        },
        "sub": format!("system:serviceaccount:{ns}:{name}"),
    });
    let token = sim.signer.sign(&claims)?;
    let mut spec = req["spec"].clone();
    if !spec.is_object() {
        spec = json!({});
    }
    spec["audiences"] = json!(audiences);
    spec["expirationSeconds"] = json!(exp_secs);
    if spec.get("boundObjectRef").is_none() {
        spec["boundObjectRef"] = Value::Null;
    }
    Ok(json_response(
        StatusCode::CREATED,
        &json!({
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": name, "namespace": ns, "creationTimestamp": null},
            "spec": spec,
            "status": {
                "token": token,
                "expirationTimestamp": exp.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            },
        }),
    ))
}
