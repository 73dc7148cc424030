//! Minimal JWT handling with ring: HS256 access tokens issued by the sim, and verification of
//! client assertions (RS256 / ES256) against an issuer's JWKS.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use ring::signature;
use serde_json::Value;

pub fn b64(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

pub fn unb64(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok()
}

/// Signs `claims` as an HS256 JWT.
pub fn sign_hs256(key: &hmac::Key, claims: &Value) -> String {
    let header = serde_json::json!({"typ": "JWT", "alg": "HS256", "kid": "azure-sim"});
    let h = b64(header.to_string().as_bytes());
    let p = b64(claims.to_string().as_bytes());
    let input = format!("{h}.{p}");
    let sig = hmac::sign(key, input.as_bytes());
    format!("{input}.{}", b64(sig.as_ref()))
}

/// Verifies an HS256 JWT signed by `key` and returns its claims.
pub fn verify_hs256(key: &hmac::Key, token: &str) -> Option<Value> {
    let (input, sig) = token.rsplit_once('.')?;
    let header = decode_part(input.split('.').next()?)?;
    if header.get("alg").and_then(Value::as_str) != Some("HS256") {
        return None;
    }
    hmac::verify(key, input.as_bytes(), &unb64(sig)?).ok()?;
    decode_part(input.split('.').nth(1)?)
}

fn decode_part(p: &str) -> Option<Value> {
    serde_json::from_slice(&unb64(p)?).ok()
}

/// A parsed (unverified) JWT.
pub struct Parsed {
    pub header: Value,
    pub claims: Value,
    pub signing_input: String,
    pub signature: Vec<u8>,
}

pub fn parse(token: &str) -> Option<Parsed> {
    let mut parts = token.split('.');
    let (h, p, s) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    Some(Parsed {
        header: decode_part(h)?,
        claims: decode_part(p)?,
        signing_input: format!("{h}.{p}"),
        signature: unb64(s)?,
    })
}

/// Verifies the signature of `jwt` with one of the JWKS keys (matched by `kid` when present).
pub fn verify_with_jwks(jwt: &Parsed, jwks: &Value) -> bool {
    let alg = jwt.header.get("alg").and_then(Value::as_str).unwrap_or("");
    let kid = jwt.header.get("kid").and_then(Value::as_str);
    let Some(keys) = jwks.get("keys").and_then(Value::as_array) else {
        return false;
    };
    keys.iter()
        .filter(|k| kid.is_none() || k.get("kid").and_then(Value::as_str) == kid)
        .any(|k| verify_key(alg, k, jwt))
}

fn verify_key(alg: &str, k: &Value, jwt: &Parsed) -> bool {
    let field = |n: &str| k.get(n).and_then(Value::as_str).and_then(unb64);
    let msg = jwt.signing_input.as_bytes();
    match alg {
        "RS256" => {
            let (Some(n), Some(e)) = (field("n"), field("e")) else {
                return false;
            };
            signature::RsaPublicKeyComponents { n: &n, e: &e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, msg, &jwt.signature)
                .is_ok()
        }
        "ES256" => {
            let (Some(x), Some(y)) = (field("x"), field("y")) else {
                return false;
            };
            let mut point = vec![0x04];
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                .verify(msg, &jwt.signature)
                .is_ok()
        }
        _ => false,
    }
}
