//! Entra token endpoint and ARM authentication over HTTPS: client secrets, client assertions
//! verified through OIDC discovery + JWKS (ES256 and RS256), AADSTS errors, ARM 401s.

use crate::azure_support;

use accessgrant_sim::azure::SimConfig;
use azure_support::*;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{self, KeyPair};
use serde_json::{Value, json};

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const SUBJECT: &str = "system:serviceaccount:team-a:deployer";
const AUDIENCE: &str = "api://AzureADTokenExchange";

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

fn claims_of(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap_or_default();
    let bytes = URL_SAFE_NO_PAD.decode(payload).unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

fn now_secs() -> i64 {
    #[allow(clippy::disallowed_methods)]
    chrono::Utc::now().timestamp()
}

#[tokio::test]
async fn client_secret_token_identifies_the_caller() {
    let sim = Sim::start().await;
    let r = sim
        .token_raw(&[
            ("client_id", OPERATOR_APP),
            ("client_secret", OPERATOR_SECRET),
            ("grant_type", "client_credentials"),
            ("scope", "https://management.azure.com/.default"),
        ])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["token_type"], "Bearer");
    let expires = r.body["expires_in"]
        .as_i64()
        .expect("expires_in is a JSON number");
    assert!(expires > 300, "tokens must live > 5 minutes");
    assert!(r.body["ext_expires_in"].is_number());
    let c = claims_of(r.body["access_token"].as_str().unwrap_or_default());
    assert_eq!(c["oid"], OPERATOR_OID);
    assert_eq!(c["tid"], TENANT);
    assert_eq!(c["appid"], OPERATOR_APP);
    assert_eq!(c["aud"], "https://management.azure.com");

    // ARM knows who calls: the call log records the oid.
    let tok = r.body["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(sim.jit_get(&tok).await.status, 200);
    let calls = sim.control("GET", "/_sim/calls", None).await;
    let calls = calls.body.as_array().cloned().unwrap_or_default();
    assert!(
        calls.iter().any(|c| c["operation"] == "Token"
            && c["caller"] == OPERATOR_OID
            && c["status"] == 200)
    );
    let get = calls
        .iter()
        .find(|c| c["operation"] == "JitNetworkAccessPolicies_Get")
        .expect("ARM call logged");
    assert_eq!(get["caller"], OPERATOR_OID);
    assert_eq!(get["method"], "GET");
    assert!(
        get["path"]
            .as_str()
            .unwrap_or_default()
            .ends_with("?api-version=2020-01-01")
    );
    assert!(get["time"].is_string());
    assert_eq!(sim.control("DELETE", "/_sim/calls", None).await.status, 204);
    let calls = sim.control("GET", "/_sim/calls", None).await;
    assert_eq!(calls.body, json!([]));
}

#[tokio::test]
async fn token_errors_are_aadsts_shaped() {
    let sim = Sim::start().await;
    let base = [
        ("client_id", OPERATOR_APP),
        ("client_secret", OPERATOR_SECRET),
        ("grant_type", "client_credentials"),
        ("scope", "https://management.azure.com/.default"),
    ];
    let with = |k: &str, v: &'static str| {
        base.iter()
            .map(|(a, b)| if *a == k { (*a, v) } else { (*a, *b) })
            .collect::<Vec<_>>()
    };
    type Case<'a> = (Vec<(&'a str, &'a str)>, u16, &'a str, u64);
    let cases: Vec<Case> = vec![
        (
            with("client_secret", "wrong"),
            401,
            "invalid_client",
            7000215,
        ),
        (
            with("client_id", "00000000-0000-4000-8000-00000000dead"),
            400,
            "unauthorized_client",
            700016,
        ),
        (
            with("grant_type", "password"),
            400,
            "unsupported_grant_type",
            70003,
        ),
        (
            with("scope", "https://management.azure.com/user_impersonation"),
            400,
            "invalid_scope",
            1002012,
        ),
        (
            base.iter()
                .filter(|(k, _)| *k != "scope")
                .cloned()
                .collect(),
            400,
            "invalid_request",
            900144,
        ),
    ];
    for (form, status, error, code) in cases {
        let r = sim.token_raw(&form).await;
        assert_eq!(r.status, status, "{form:?}: {}", r.body);
        assert_eq!(r.body["error"], error);
        assert_eq!(r.body["error_codes"], json!([code]));
        assert!(
            r.body["error_description"]
                .as_str()
                .unwrap_or_default()
                .starts_with(&format!("AADSTS{code}:"))
        );
        assert!(r.body["trace_id"].is_string() && r.body["correlation_id"].is_string());
    }
    let r = sim
        .http
        .post(format!("{}/not-a-tenant/oauth2/v2.0/token", sim.base))
        .body("grant_type=client_credentials")
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status().as_u16(), 400);
}

#[tokio::test]
async fn arm_requires_a_valid_sim_token() {
    let sim = Sim::start().await;
    let r = sim
        .call(
            "GET",
            &format!("{JIT_POLICY}?api-version=2020-01-01"),
            None,
            None,
        )
        .await;
    assert_eq!((r.status, r.code()), (401, "AuthenticationFailed"));
    assert!(r.header("www-authenticate").is_some());
    let r = sim
        .call(
            "GET",
            &format!("{JIT_POLICY}?api-version=2020-01-01"),
            Some("eyJhbGciOiJub25lIn0.e30.x"),
            None,
        )
        .await;
    assert_eq!((r.status, r.code()), (401, "InvalidAuthenticationToken"));
    // A token for another resource is refused by ARM.
    let other = sim
        .token_raw(&[
            ("client_id", OPERATOR_APP),
            ("client_secret", OPERATOR_SECRET),
            ("grant_type", "client_credentials"),
            ("scope", "https://graph.microsoft.com/.default"),
        ])
        .await;
    let t = other.body["access_token"].as_str().unwrap_or_default();
    let r = sim
        .call(
            "GET",
            &format!("{JIT_POLICY}?api-version=2020-01-01"),
            Some(t),
            None,
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (401, "InvalidAuthenticationTokenAudience")
    );
    // Unauthenticated calls are logged with a null caller.
    let calls = sim.control("GET", "/_sim/calls", None).await;
    assert!(calls.body.as_array().is_some_and(|a| {
        a.iter()
            .any(|c| c["caller"].is_null() && c["status"] == 401)
    }));
}

/// An OIDC issuer like kube-sim's: discovery document + JWKS over plain HTTP on loopback.
async fn oidc_server(jwks: Value) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let disc = json!({
        "issuer": ISSUER,
        "jwks_uri": format!("{ISSUER}/openid/v1/jwks"),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
    });
    let app = axum::Router::new()
        .route(
            "/.well-known/openid-configuration",
            axum::routing::get(move || {
                let d = disc.clone();
                async move { d.to_string() }
            }),
        )
        .route(
            "/openid/v1/jwks",
            axum::routing::get(move || {
                let j = jwks.clone();
                async move { j.to_string() }
            }),
        );
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (base, task)
}

struct Signer {
    es: signature::EcdsaKeyPair,
    rsa: signature::RsaKeyPair,
    rng: SystemRandom,
}

impl Signer {
    fn new() -> Signer {
        let rng = SystemRandom::new();
        let pk8 = signature::EcdsaKeyPair::generate_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &rng,
        )
        .expect("ec key");
        let es = signature::EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            pk8.as_ref(),
            &rng,
        )
        .expect("ec key parse");
        let der = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/azure/assertion-rsa-test-key.der"),
        )
        .expect("rsa fixture");
        let rsa = signature::RsaKeyPair::from_der(&der).expect("rsa key");
        Signer { es, rsa, rng }
    }

    fn jwks(&self) -> Value {
        let p = self.es.public_key().as_ref();
        let rsa_pub = signature::RsaPublicKeyComponents::<Vec<u8>>::from(self.rsa.public());
        json!({"keys": [
            {"kty": "EC", "crv": "P-256", "kid": "ec-1", "alg": "ES256", "use": "sig",
             "x": b64(&p[1..33]), "y": b64(&p[33..65])},
            {"kty": "RSA", "kid": "rsa-1", "alg": "RS256", "use": "sig",
             "n": b64(&rsa_pub.n), "e": b64(&rsa_pub.e)},
        ]})
    }

    fn sign(&self, alg: &str, claims: &Value) -> String {
        let kid = if alg == "ES256" { "ec-1" } else { "rsa-1" };
        let h = b64(json!({"alg": alg, "kid": kid, "typ": "JWT"})
            .to_string()
            .as_bytes());
        let p = b64(claims.to_string().as_bytes());
        let input = format!("{h}.{p}");
        let sig = if alg == "ES256" {
            self.es
                .sign(&self.rng, input.as_bytes())
                .expect("sign")
                .as_ref()
                .to_vec()
        } else {
            let mut out = vec![0u8; self.rsa.public().modulus_len()];
            self.rsa
                .sign(
                    &signature::RSA_PKCS1_SHA256,
                    &self.rng,
                    input.as_bytes(),
                    &mut out,
                )
                .expect("rsa sign");
            out
        };
        format!("{input}.{}", b64(&sig))
    }
}

fn sa_claims(sub: &str, aud: &str, exp_in: i64) -> Value {
    let now = now_secs();
    json!({"iss": ISSUER, "sub": sub, "aud": [aud], "iat": now, "nbf": now, "exp": now + exp_in,
           "kubernetes.io": {"namespace": "team-a", "serviceaccount": {"name": "deployer"}}})
}

async fn assertion_token(sim: &Sim, assertion: &str) -> Resp {
    sim.token_raw(&[
        ("client_assertion", assertion),
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ),
        ("client_id", DEPLOYER_APP),
        ("grant_type", "client_credentials"),
        ("scope", "https://management.azure.com/.default"),
    ])
    .await
}

#[tokio::test]
async fn federated_credentials_via_oidc_discovery() {
    let signer = Signer::new();
    let (base, _server) = oidc_server(signer.jwks()).await;
    let world = accessgrant_sim::azure::World::from_file(&world_path()).expect("world");
    let mut cfg = SimConfig::new(world);
    cfg.oidc_discovery = vec![(ISSUER.to_string(), base)];
    let sim = Sim::start_config(cfg).await;

    for alg in ["ES256", "RS256"] {
        let r = assertion_token(&sim, &signer.sign(alg, &sa_claims(SUBJECT, AUDIENCE, 600))).await;
        assert_eq!(r.status, 200, "{alg}: {}", r.body);
        let c = claims_of(r.body["access_token"].as_str().unwrap_or_default());
        assert_eq!(c["oid"], DEPLOYER_OID);
        assert_eq!(c["appid"], DEPLOYER_APP);
        // The exchanged token works on ARM as the deployer.
        let tok = r.body["access_token"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let l = sim
            .pim_get(&tok, "", "roleEligibilitySchedules", &filter("asTarget()"))
            .await;
        assert_eq!(l.status, 200);
        assert!(l.body["value"].as_array().is_some_and(|v| {
            v.iter()
                .all(|e| e["properties"]["principalId"] == DEPLOYER_OID)
                && !v.is_empty()
        }));
    }

    let cases = [
        (
            signer.sign(
                "ES256",
                &sa_claims("system:serviceaccount:team-b:deployer", AUDIENCE, 600),
            ),
            700213,
        ),
        (
            signer.sign("ES256", &sa_claims(SUBJECT, "api://other", 600)),
            700212,
        ),
        (
            signer.sign("RS256", &sa_claims(SUBJECT, AUDIENCE, -60)),
            700024,
        ),
    ];
    for (assertion, code) in cases {
        let r = assertion_token(&sim, &assertion).await;
        assert_eq!(r.body["error_codes"], json!([code]), "{}", r.body);
        assert_eq!(r.body["error"], "invalid_client");
    }
    // A tampered signature.
    let good = signer.sign("ES256", &sa_claims(SUBJECT, AUDIENCE, 600));
    let mut parts: Vec<String> = good.split('.').map(String::from).collect();
    parts[1] = b64(
        sa_claims("system:serviceaccount:team-a:admin", AUDIENCE, 600)
            .to_string()
            .as_bytes(),
    );
    let r = assertion_token(&sim, &parts.join(".")).await;
    assert_eq!(r.body["error_codes"], json!([700027]), "{}", r.body);
    // Garbage is refused, not a panic.
    let r = assertion_token(&sim, "not-a-jwt").await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn assertion_from_an_issuer_without_discovery_is_refused() {
    let signer = Signer::new();
    let sim = Sim::start().await;
    let r = assertion_token(
        &sim,
        &signer.sign("ES256", &sa_claims(SUBJECT, AUDIENCE, 600)),
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.body["error_codes"], json!([50166]));
    assert!(
        r.body["error_description"]
            .as_str()
            .unwrap_or_default()
            .starts_with("AADSTS50166:")
    );
}
