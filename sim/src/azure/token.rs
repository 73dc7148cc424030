//! Entra token endpoint: `POST /{tenant}/oauth2/v2.0/token`, client credentials with a client
//! secret or a client assertion (federated credential).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State as AxState};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::jwt;
use super::server::{Pre, Shared, json_response, pre_checks, record, reset_response};
use super::state::OpClass;
use super::world::Principal;

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

struct AadError {
    status: u16,
    error: &'static str,
    code: u32,
    description: String,
    retry_after: Option<u64>,
}

fn aad(status: u16, error: &'static str, code: u32, description: impl Into<String>) -> AadError {
    AadError {
        status,
        error,
        code,
        description: description.into(),
        retry_after: None,
    }
}

fn aad_response(e: &AadError, now: DateTime<Utc>) -> Response {
    let trace = uuid::Uuid::new_v4().to_string();
    let corr = uuid::Uuid::new_v4().to_string();
    let ts = now.format("%Y-%m-%d %H:%M:%SZ").to_string();
    let body = json!({
        "error": e.error,
        "error_description": format!(
            "AADSTS{}: {} Trace ID: {trace} Correlation ID: {corr} Timestamp: {ts}",
            e.code, e.description
        ),
        "error_codes": [e.code],
        "timestamp": ts,
        "trace_id": trace,
        "correlation_id": corr,
    });
    let mut r = json_response(e.status, Some(&body));
    if let Some(ra) = e.retry_after
        && let Ok(v) = http::HeaderValue::from_str(&ra.to_string())
    {
        r.headers_mut().insert("retry-after", v);
    }
    r
}

pub async fn token(
    AxState(shared): AxState<Arc<Shared>>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Response {
    let now = super::clock::now();
    let path = format!("/{tenant}/oauth2/v2.0/token");
    let method = http::Method::POST;
    let pre = {
        let mut st = shared.lock();
        let pre = pre_checks(&mut st, "Token", None, None, OpClass::Write, now, false);
        match &pre {
            Pre::Reset => record(
                &mut st,
                now,
                None,
                &method,
                &path,
                "Token",
                0,
                Some("reset"),
            ),
            Pre::Respond(e, _) => record(
                &mut st,
                now,
                None,
                &method,
                &path,
                "Token",
                e.status,
                Some("injected"),
            ),
            Pre::Go { .. } => {}
        }
        pre
    };
    match pre {
        Pre::Reset => return reset_response(),
        Pre::Respond(e, _) => {
            let mut a = aad(
                e.status,
                "temporarily_unavailable",
                50196,
                e.message.clone(),
            );
            a.retry_after = e.retry_after;
            return aad_response(&a, now);
        }
        Pre::Go { latency_ms, .. } => {
            if latency_ms > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(latency_ms)).await;
            }
        }
    }
    let result = issue(&shared, &tenant, &body, now).await;
    let mut st = shared.lock();
    match result {
        Ok((oid, v)) => {
            record(&mut st, now, Some(&oid), &method, &path, "Token", 200, None);
            json_response(200, Some(&v))
        }
        Err(e) => {
            record(&mut st, now, None, &method, &path, "Token", e.status, None);
            aad_response(&e, now)
        }
    }
}

async fn issue(
    shared: &Shared,
    tenant: &str,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<(String, Value), AadError> {
    let form: Vec<(String, String)> = form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let field = |k: &str| {
        form.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    };
    let missing = |p: &str| {
        aad(
            400,
            "invalid_request",
            900144,
            format!("The request body must contain the following parameter: '{p}'."),
        )
    };
    let (tenant_id, principal) = {
        let st = shared.lock();
        let Some(t) = st.world.tenant(tenant) else {
            return Err(aad(
                400,
                "invalid_request",
                90002,
                format!(
                    "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."
                ),
            ));
        };
        let tid = t.id.clone();
        let grant = field("grant_type").ok_or_else(|| missing("grant_type"))?;
        if grant != "client_credentials" {
            return Err(aad(
                400,
                "unsupported_grant_type",
                70003,
                format!("The app requested an unsupported grant type '{grant}'."),
            ));
        }
        let client_id = field("client_id").ok_or_else(|| missing("client_id"))?;
        let p = st
            .world
            .principal_by_app(&client_id)
            .filter(|p| p.tenant_id.as_deref().is_some_and(|x| x.eq_ignore_ascii_case(&tid)))
            .cloned()
            .ok_or_else(|| {
                aad(
                    400,
                    "unauthorized_client",
                    700016,
                    format!("Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant."),
                )
            })?;
        (tid, p)
    };
    let scope = field("scope").ok_or_else(|| missing("scope"))?;
    let Some(resource) = scope
        .split_whitespace()
        .next()
        .and_then(|s| s.strip_suffix("/.default"))
    else {
        return Err(aad(
            400,
            "invalid_scope",
            1002012,
            format!(
                "The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
            ),
        ));
    };
    let resource = resource.trim_end_matches('/').to_string();
    let appidacr;
    if let Some(secret) = field("client_secret") {
        if principal.client_secret.as_deref() != Some(secret.as_str()) {
            return Err(aad(
                401,
                "invalid_client",
                7000215,
                format!(
                    "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{}'.",
                    principal.app_id.as_deref().unwrap_or_default()
                ),
            ));
        }
        appidacr = "1";
    } else if let Some(assertion) = field("client_assertion") {
        if field("client_assertion_type").as_deref() != Some(ASSERTION_TYPE) {
            return Err(aad(
                400,
                "invalid_request",
                50027,
                format!("client_assertion_type must be '{ASSERTION_TYPE}'."),
            ));
        }
        verify_assertion(shared, &principal, &assertion, now).await?;
        appidacr = "2";
    } else {
        return Err(aad(
            401,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        ));
    }
    let lifetime = shared.token_lifetime.num_seconds().max(60);
    let mut claims = json!({
        "aud": resource,
        "iss": format!("https://sts.windows.net/{tenant_id}/"),
        "iat": now.timestamp(),
        "nbf": now.timestamp(),
        "exp": now.timestamp() + lifetime,
        "appid": principal.app_id,
        "appidacr": appidacr,
        "idp": format!("https://sts.windows.net/{tenant_id}/"),
        "idtyp": if principal.kind == super::world::PrincipalType::User { "user" } else { "app" },
        "oid": principal.object_id,
        "sub": principal.object_id,
        "tid": tenant_id,
        "uti": uuid::Uuid::new_v4().to_string(),
        "ver": "1.0",
        "name": principal.display_name,
    });
    if principal.kind == super::world::PrincipalType::User {
        claims["upn"] = json!(
            principal
                .email
                .clone()
                .unwrap_or(principal.display_name.clone())
        );
        claims["amr"] = if principal.mfa {
            json!(["pwd", "mfa"])
        } else {
            json!(["pwd"])
        };
    }
    let token = jwt::sign_hs256(&shared.key, &claims);
    Ok((
        principal.object_id.clone(),
        json!({
            "token_type": "Bearer",
            "expires_in": lifetime - 1,
            "ext_expires_in": lifetime - 1,
            "access_token": token,
        }),
    ))
}

async fn fetch_json(shared: &Shared, url: &str) -> Result<Value, String> {
    let r = shared
        .http
        .get(url)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    if !r.status().is_success() {
        return Err(format!("GET {url}: HTTP {}", r.status()));
    }
    r.json::<Value>()
        .await
        .map_err(|e| format!("GET {url}: {e}"))
}

async fn verify_assertion(
    shared: &Shared,
    principal: &Principal,
    assertion: &str,
    now: DateTime<Utc>,
) -> Result<(), AadError> {
    let Some(parsed) = jwt::parse(assertion) else {
        return Err(aad(
            400,
            "invalid_client",
            50027,
            "JWT token is invalid or malformed.",
        ));
    };
    let s = |k: &str| {
        parsed
            .claims
            .get(k)
            .and_then(Value::as_str)
            .map(String::from)
    };
    let iss = s("iss").unwrap_or_default();
    let sub = s("sub").unwrap_or_default();
    let auds: Vec<String> = match parsed.claims.get("aud") {
        Some(Value::String(a)) => vec![a.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(String::from))
            .collect(),
        _ => Vec::new(),
    };
    let Some((_, base)) = shared.discovery.iter().find(|(i, _)| *i == iss) else {
        return Err(aad(
            401,
            "invalid_client",
            50166,
            format!(
                "Request to External OIDC endpoint failed: no OIDC discovery is configured for issuer '{iss}'."
            ),
        ));
    };
    let base = base.trim_end_matches('/');
    let oidc_fail = |m: String| {
        aad(
            401,
            "invalid_client",
            50166,
            format!("Request to External OIDC endpoint failed: {m}"),
        )
    };
    let disc = fetch_json(shared, &format!("{base}/.well-known/openid-configuration"))
        .await
        .map_err(oidc_fail)?;
    let jwks_uri = disc
        .get("jwks_uri")
        .and_then(Value::as_str)
        .ok_or_else(|| oidc_fail("the discovery document has no jwks_uri".into()))?;
    // The document may name the issuer's own host; fetch from the configured base instead.
    let jwks_url = if let Some(rest) = jwks_uri.strip_prefix(iss.trim_end_matches('/')) {
        format!("{base}{rest}")
    } else if jwks_uri.starts_with('/') {
        format!("{base}{jwks_uri}")
    } else {
        jwks_uri.to_string()
    };
    let jwks = fetch_json(shared, &jwks_url).await.map_err(oidc_fail)?;
    if !jwt::verify_with_jwks(&parsed, &jwks) {
        return Err(aad(
            401,
            "invalid_client",
            700027,
            "Client assertion failed signature validation.",
        ));
    }
    let exp = parsed
        .claims
        .get("exp")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let nbf = parsed
        .claims
        .get("nbf")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if exp <= now.timestamp() || nbf > now.timestamp() + 300 {
        return Err(aad(
            401,
            "invalid_client",
            700024,
            format!(
                "Client assertion is not within its valid time range. Current time: {}, assertion valid from {nbf}, expiry time of assertion {exp}.",
                now.timestamp()
            ),
        ));
    }
    let st = shared.lock();
    let fics: Vec<_> = st
        .world
        .federated_credentials
        .iter()
        .filter(|f| {
            st.world
                .find_principal_any(&f.principal)
                .is_some_and(|p| p.object_id == principal.object_id)
        })
        .collect();
    let by_iss: Vec<_> = fics.iter().filter(|f| f.issuer == iss).collect();
    if by_iss.is_empty() {
        return Err(aad(
            401,
            "invalid_client",
            700211,
            format!(
                "No matching federated identity record found for presented assertion issuer '{iss}'. Please check your federated identity credential Subject, Audience and Issuer against the presented assertion."
            ),
        ));
    }
    let by_sub: Vec<_> = by_iss.iter().filter(|f| f.subject == sub).collect();
    if by_sub.is_empty() {
        return Err(aad(
            401,
            "invalid_client",
            700213,
            format!(
                "No matching federated identity record found for presented assertion subject '{sub}'. Please check your federated identity credential Subject, Audience and Issuer against the presented assertion."
            ),
        ));
    }
    if !by_sub.iter().any(|f| auds.contains(&f.audience)) {
        return Err(aad(
            401,
            "invalid_client",
            700212,
            format!(
                "No matching federated identity record found for presented assertion audience '{}'. Please check your federated identity credential Subject, Audience and Issuer against the presented assertion.",
                auds.join(",")
            ),
        ));
    }
    Ok(())
}
