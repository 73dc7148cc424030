//! HTTPS server: routing, authentication, faults, throttling, the call log.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State as AxState};
use axum::response::Response;
use axum::routing::{get, post};
use chrono::{DateTime, Duration, Utc};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use ring::hmac;
use serde_json::{Value, json};

use super::arm::{ArmError, normalize_scope, scope_kind, subscription_of};
use super::jit::{self, JitPath};
use super::pim::{self, Caller};
use super::state::{BucketState, CallRecord, OpClass, State};
use super::time::fmt_time;

pub struct Shared {
    pub state: Mutex<State>,
    pub key: hmac::Key,
    pub token_lifetime: Duration,
    pub discovery: Vec<(String, String)>,
    pub http: reqwest::Client,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere; the state is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Marker: the outer service drops the connection without answering.
#[derive(Clone, Copy, Debug)]
pub struct ResetConnection;

/// The peer address of the connection.
#[derive(Clone, Copy, Debug)]
pub struct RemoteAddr(pub SocketAddr);

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(super::token::token))
        .route("/_sim/health", get(|| async { "ok" }))
        .route(
            "/_sim/calls",
            get(super::control::get_calls).delete(super::control::clear_calls),
        )
        .route("/_sim/state", get(super::control::get_state))
        .route(
            "/_sim/faults",
            get(super::control::get_faults)
                .post(super::control::add_fault)
                .delete(super::control::clear_faults),
        )
        .route(
            "/_sim/throttle",
            get(super::control::get_throttle).put(super::control::put_throttle),
        )
        .route(
            "/_sim/pim/requests/{name}/approve",
            post(super::control::approve),
        )
        .route("/_sim/pim/requests/{name}/deny", post(super::control::deny))
        .route("/_sim/pim/revoke", post(super::control::pim_revoke))
        .route("/_sim/jit/revoke", post(super::control::jit_revoke))
        .fallback(arm)
        .with_state(shared)
}

pub fn json_response(status: u16, body: Option<&Value>) -> Response {
    let mut b = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR));
    let body = match body {
        Some(v) => {
            b = b.header("content-type", "application/json; charset=utf-8");
            Body::from(v.to_string())
        }
        None => Body::empty(),
    };
    b.body(body)
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

/// A JSON answer already serialised.
pub fn json_bytes_response(status: u16, body: Vec<u8>) -> Response {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json; charset=utf-8")
        .body(Body::from(body))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

pub fn reset_response() -> Response {
    let mut r = Response::new(Body::empty());
    r.extensions_mut().insert(ResetConnection);
    r
}

// ---------- routing ----------

const JIT_VERSIONS: &[&str] = &["2020-01-01", "2015-06-01-preview"];
const PIM_VERSIONS: &[&str] = &[
    "2020-10-01",
    "2020-10-01-preview",
    "2022-04-01",
    "2022-04-01-preview",
    "2024-02-01-preview",
    "2024-09-01-preview",
];
const ROLE_VERSIONS: &[&str] = &[
    "2015-07-01",
    "2018-01-01-preview",
    "2022-04-01",
    "2022-05-01-preview",
];

#[derive(Debug, Clone)]
pub struct Route {
    pub op: &'static str,
    pub class: OpClass,
    pub versions: &'static [&'static str],
    pub scope: String,
    pub jit: Option<JitPath>,
    pub name: Option<String>,
}

fn not_found_route(path: &str) -> ArmError {
    ArmError::new(
        404,
        "InvalidResourceType",
        format!("The resource type could not be found for the request path '{path}'."),
    )
}

fn method_not_allowed(method: &Method) -> ArmError {
    ArmError::new(
        405,
        "MethodNotAllowed",
        format!("The HTTP method '{method}' is not supported for this resource."),
    )
}

pub fn classify(method: &Method, path: &str) -> Result<Route, ArmError> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let Some(i) = (0..segs.len().saturating_sub(1)).rev().find(|&i| {
        segs[i].eq_ignore_ascii_case("providers")
            && (segs[i + 1].eq_ignore_ascii_case("Microsoft.Authorization")
                || segs[i + 1].eq_ignore_ascii_case("Microsoft.Security"))
    }) else {
        return Err(not_found_route(path));
    };
    let scope = normalize_scope(&segs[..i].join("/"));
    let rest = &segs[i + 2..];
    let class = match *method {
        Method::GET | Method::HEAD => OpClass::Read,
        Method::DELETE => OpClass::Delete,
        _ => OpClass::Write,
    };
    let is = |s: &str, w: &str| s.eq_ignore_ascii_case(w);
    if segs[i + 1].eq_ignore_ascii_case("Microsoft.Security") {
        let (Some(sub), kind) = (subscription_of(&scope), scope_kind(&scope)) else {
            return Err(not_found_route(path));
        };
        if kind != "subscription" && kind != "resourcegroup" {
            return Err(not_found_route(path));
        }
        let rg = super::arm::resource_group_of(&scope);
        let mut jp = JitPath {
            subscription: sub,
            resource_group: rg.clone(),
            location: None,
            name: None,
            initiate: false,
        };
        let op: &'static str = match rest {
            [c] if is(c, "jitNetworkAccessPolicies") => {
                if *method != Method::GET {
                    return Err(method_not_allowed(method));
                }
                if rg.is_some() {
                    "JitNetworkAccessPolicies_ListByResourceGroup"
                } else {
                    "JitNetworkAccessPolicies_List"
                }
            }
            [l, loc, c] if is(l, "locations") && is(c, "jitNetworkAccessPolicies") => {
                jp.location = Some(loc.to_string());
                if *method != Method::GET {
                    return Err(method_not_allowed(method));
                }
                if rg.is_some() {
                    "JitNetworkAccessPolicies_ListByResourceGroupAndRegion"
                } else {
                    "JitNetworkAccessPolicies_ListByRegion"
                }
            }
            [l, loc, c, name] if is(l, "locations") && is(c, "jitNetworkAccessPolicies") => {
                if rg.is_none() {
                    return Err(not_found_route(path));
                }
                jp.location = Some(loc.to_string());
                jp.name = Some(name.to_string());
                match *method {
                    Method::GET => "JitNetworkAccessPolicies_Get",
                    Method::PUT => "JitNetworkAccessPolicies_CreateOrUpdate",
                    Method::DELETE => "JitNetworkAccessPolicies_Delete",
                    _ => return Err(method_not_allowed(method)),
                }
            }
            [l, loc, c, name, a]
                if is(l, "locations") && is(c, "jitNetworkAccessPolicies") && is(a, "initiate") =>
            {
                if rg.is_none() {
                    return Err(not_found_route(path));
                }
                jp.location = Some(loc.to_string());
                jp.name = Some(name.to_string());
                jp.initiate = true;
                if *method != Method::POST {
                    return Err(method_not_allowed(method));
                }
                "JitNetworkAccessPolicies_Initiate"
            }
            _ => return Err(not_found_route(path)),
        };
        return Ok(Route {
            op,
            class,
            versions: JIT_VERSIONS,
            scope,
            jit: Some(jp),
            name: None,
        });
    }
    // Microsoft.Authorization
    let (coll, name, action) = match rest {
        [c] => (*c, None, None),
        [c, n] => (*c, Some(n.to_string()), None),
        [c, n, a] => (*c, Some(n.to_string()), Some(*a)),
        _ => return Err(not_found_route(path)),
    };
    let m = method.clone();
    let get_or_list = |get: &'static str, list: &'static str| -> Result<&'static str, ArmError> {
        if m != Method::GET {
            return Err(method_not_allowed(&m));
        }
        if action.is_some() {
            return Err(not_found_route(path));
        }
        Ok(if name.is_some() { get } else { list })
    };
    let mut versions = PIM_VERSIONS;
    let op: &'static str = if is(coll, "roleAssignmentScheduleRequests") {
        match (name.is_some(), action, method.clone()) {
            (false, None, Method::GET) => "RoleAssignmentScheduleRequests_ListForScope",
            (true, None, Method::GET) => "RoleAssignmentScheduleRequests_Get",
            (true, None, Method::PUT) => "RoleAssignmentScheduleRequests_Create",
            (true, Some(a), Method::POST) if is(a, "cancel") => {
                "RoleAssignmentScheduleRequests_Cancel"
            }
            (true, Some(a), Method::POST) if is(a, "validate") => {
                "RoleAssignmentScheduleRequests_Validate"
            }
            (_, Some(a), _) if !is(a, "cancel") && !is(a, "validate") => {
                return Err(not_found_route(path));
            }
            _ => return Err(method_not_allowed(method)),
        }
    } else if is(coll, "roleAssignmentSchedules") {
        get_or_list(
            "RoleAssignmentSchedules_Get",
            "RoleAssignmentSchedules_ListForScope",
        )?
    } else if is(coll, "roleAssignmentScheduleInstances") {
        get_or_list(
            "RoleAssignmentScheduleInstances_Get",
            "RoleAssignmentScheduleInstances_ListForScope",
        )?
    } else if is(coll, "roleEligibilitySchedules") {
        get_or_list(
            "RoleEligibilitySchedules_Get",
            "RoleEligibilitySchedules_ListForScope",
        )?
    } else if is(coll, "roleEligibilityScheduleInstances") {
        get_or_list(
            "RoleEligibilityScheduleInstances_Get",
            "RoleEligibilityScheduleInstances_ListForScope",
        )?
    } else if is(coll, "roleManagementPolicies") {
        get_or_list(
            "RoleManagementPolicies_Get",
            "RoleManagementPolicies_ListForScope",
        )?
    } else if is(coll, "roleManagementPolicyAssignments")
        || is(coll, "roleManagementPolicyAssignment")
    {
        get_or_list(
            "RoleManagementPolicyAssignments_Get",
            "RoleManagementPolicyAssignments_ListForScope",
        )?
    } else if is(coll, "eligibleChildResources") {
        if name.is_some() {
            return Err(not_found_route(path));
        }
        get_or_list("EligibleChildResources_Get", "EligibleChildResources_Get")?
    } else if is(coll, "roleDefinitions") {
        versions = ROLE_VERSIONS;
        get_or_list("RoleDefinitions_Get", "RoleDefinitions_List")?
    } else {
        return Err(not_found_route(path));
    };
    Ok(Route {
        op,
        class,
        versions,
        scope,
        jit: None,
        name,
    })
}

// ---------- auth ----------

fn auth_error(code: &str, msg: String) -> ArmError {
    ArmError::new(401, code, msg)
}

pub fn authenticate(
    shared: &Shared,
    headers: &HeaderMap,
    now: DateTime<Utc>,
) -> Result<Caller, ArmError> {
    let Some(h) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        return Err(auth_error(
            "AuthenticationFailed",
            "Authentication failed. The 'Authorization' header is missing.".into(),
        ));
    };
    let Some(token) = h
        .split_once(' ')
        .filter(|(s, _)| s.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
    else {
        return Err(auth_error(
            "AuthenticationFailed",
            "Authentication failed. The 'Authorization' header is provided in an invalid format."
                .into(),
        ));
    };
    let Some(claims) = super::jwt::verify_hs256(&shared.key, token) else {
        return Err(auth_error(
            "InvalidAuthenticationToken",
            "The access token is invalid.".into(),
        ));
    };
    let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
    if exp <= now.timestamp() {
        let exp_t = DateTime::<Utc>::from_timestamp(exp, 0).unwrap_or(now);
        return Err(auth_error(
            "ExpiredAuthenticationToken",
            format!(
                "The access token expiry UTC time '{}' is earlier than current UTC time '{}'.",
                exp_t.format("%m/%d/%Y %H:%M:%S"),
                now.format("%m/%d/%Y %H:%M:%S")
            ),
        ));
    }
    let aud = claims.get("aud").and_then(Value::as_str).unwrap_or("");
    let aud_ok = [
        "https://management.azure.com",
        "https://management.core.windows.net",
    ]
    .iter()
    .any(|a| aud.trim_end_matches('/').eq_ignore_ascii_case(a));
    if !aud_ok {
        return Err(auth_error(
            "InvalidAuthenticationTokenAudience",
            format!(
                "The access token has been obtained for wrong audience or resource '{aud}'. It should exactly match with one of the allowed audiences 'https://management.core.windows.net/','https://management.core.windows.net','https://management.azure.com/','https://management.azure.com'."
            ),
        ));
    }
    let s = |k: &str| claims.get(k).and_then(Value::as_str).map(String::from);
    let oid = s("oid").unwrap_or_default();
    let mfa = claims
        .get("amr")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|x| x.as_str() == Some("mfa")));
    Ok(Caller {
        requestor: s("upn").unwrap_or_else(|| oid.clone()),
        oid,
        tid: s("tid").unwrap_or_default(),
        appid: s("appid"),
        mfa,
    })
}

// ---------- faults and throttling ----------

pub enum Pre {
    Go {
        latency_ms: u64,
        remaining: Option<(String, u64)>,
    },
    Respond(ArmError, Option<(String, u64)>),
    Reset,
}

fn error_code_for(status: u16) -> &'static str {
    match status {
        500 => "InternalServerError",
        502 => "BadGateway",
        503 => "ServiceUnavailable",
        504 => "GatewayTimeout",
        429 => "TooManyRequests",
        408 => "RequestTimeout",
        400 => "BadRequest",
        401 => "AuthenticationFailed",
        403 => "AuthorizationFailed",
        404 => "ResourceNotFound",
        409 => "Conflict",
        _ => "InjectedFault",
    }
}

fn throttled(class: OpClass, sub: Option<&str>, oid: &str, secs: u64) -> ArmError {
    let word = match class {
        OpClass::Read => "read",
        OpClass::Write => "write",
        OpClass::Delete => "delete",
    };
    let (code, msg) = match sub {
        Some(s) => (
            "SubscriptionRequestsThrottled",
            format!(
                "Number of '{word}' requests for subscription '{s}' actor '{oid}' exceeded. Please try again after '{secs}' seconds after additional tokens are available. Refer to https://aka.ms/arm-throttling"
            ),
        ),
        None => (
            "TenantRequestsThrottled",
            format!(
                "Number of '{word}' requests for tenant actor '{oid}' exceeded. Please try again after '{secs}' seconds after additional tokens are available. Refer to https://aka.ms/arm-throttling"
            ),
        ),
    };
    let mut e = ArmError::new(429, code, msg);
    e.retry_after = Some(secs);
    e
}

/// Applies faults (first match) then the token bucket, under the state lock.
pub fn pre_checks(
    state: &mut State,
    op: &str,
    sub: Option<&str>,
    oid: Option<&str>,
    class: OpClass,
    now: DateTime<Utc>,
    arm: bool,
) -> Pre {
    state
        .faults
        .retain(|f| f.until.is_none_or(|u| u > now) && f.count != Some(0));
    let bucket_key = oid.map(|o| {
        (
            sub.map(|s| s.to_ascii_lowercase())
                .unwrap_or_else(|| "tenant".into()),
            o.to_ascii_lowercase(),
            class,
        )
    });
    let header_name = |cls: OpClass| {
        if sub.is_some() {
            format!(
                "x-ms-ratelimit-remaining-subscription-{}",
                cls.header_word()
            )
        } else {
            format!("x-ms-ratelimit-remaining-tenant-{}", cls.header_word())
        }
    };
    let mut latency_ms = 0;
    if let Some(f) = state.faults.iter_mut().find(|f| {
        let op_ok = if f.operation == "*" {
            arm
        } else {
            f.operation.eq_ignore_ascii_case(op)
        };
        let sub_ok = f
            .subscription
            .as_deref()
            .is_none_or(|fs| sub.is_some_and(|s| s.eq_ignore_ascii_case(fs)));
        op_ok && sub_ok
    }) {
        if let Some(c) = f.count.as_mut() {
            *c = c.saturating_sub(1);
        }
        match f.kind.as_str() {
            "latency" => {
                let jitter = if f.jitter_ms > 0 {
                    (uuid::Uuid::new_v4().as_u128() % (u128::from(f.jitter_ms) + 1)) as u64
                } else {
                    0
                };
                latency_ms = f.latency_ms + jitter;
            }
            "reset" => return Pre::Reset,
            "throttle" => {
                let secs = f.retry_after_seconds.unwrap_or(5).max(1);
                if let Some(k) = bucket_key.clone() {
                    let b = state.buckets.entry(k).or_insert(BucketState {
                        tokens: 0.0,
                        last: now,
                        blocked_until: None,
                        block_seconds: secs,
                    });
                    b.blocked_until = Some(now + Duration::seconds(secs as i64));
                    b.block_seconds = secs;
                }
                return Pre::Respond(
                    throttled(class, sub, oid.unwrap_or("unknown"), secs),
                    Some((header_name(class), 0)),
                );
            }
            _ => {
                let mut e = ArmError::new(
                    f.status,
                    error_code_for(f.status),
                    format!("Injected fault ({} {}).", f.kind, f.status),
                );
                e.retry_after = f.retry_after_seconds;
                return Pre::Respond(e, None);
            }
        }
    }
    if !arm {
        return Pre::Go {
            latency_ms,
            remaining: None,
        };
    }
    let Some(key) = bucket_key else {
        return Pre::Go {
            latency_ms,
            remaining: None,
        };
    };
    let cfg = match class {
        OpClass::Read => state.throttle.reads,
        OpClass::Write => state.throttle.writes,
        OpClass::Delete => state.throttle.deletes,
    };
    if !state.throttle.enabled {
        return Pre::Go {
            latency_ms,
            remaining: Some((header_name(class), cfg.burst as u64)),
        };
    }
    let b = state.buckets.entry(key).or_insert(BucketState {
        tokens: cfg.burst,
        last: now,
        blocked_until: None,
        block_seconds: 1,
    });
    let elapsed = (now - b.last).num_milliseconds().max(0) as f64 / 1000.0;
    b.tokens = (b.tokens + elapsed * cfg.per_second).min(cfg.burst);
    b.last = now;
    if let Some(until) = b.blocked_until {
        if until > now {
            // Sent before Retry-After elapsed: refused again, and the wait restarts.
            let secs = b.block_seconds.max(1);
            b.blocked_until = Some(now + Duration::seconds(secs as i64));
            return Pre::Respond(
                throttled(class, sub, oid.unwrap_or("unknown"), secs),
                Some((header_name(class), 0)),
            );
        }
        b.blocked_until = None;
    }
    if b.tokens >= 1.0 {
        b.tokens -= 1.0;
        Pre::Go {
            latency_ms,
            remaining: Some((header_name(class), b.tokens.floor() as u64)),
        }
    } else {
        let secs = if cfg.per_second > 0.0 {
            ((1.0 - b.tokens) / cfg.per_second)
                .ceil()
                .clamp(1.0, 86_400.0) as u64
        } else {
            60
        };
        b.blocked_until = Some(now + Duration::seconds(secs as i64));
        b.block_seconds = secs;
        Pre::Respond(
            throttled(class, sub, oid.unwrap_or("unknown"), secs),
            Some((header_name(class), 0)),
        )
    }
}

#[allow(clippy::too_many_arguments)]
pub fn record(
    state: &mut State,
    now: DateTime<Utc>,
    caller: Option<&str>,
    method: &Method,
    path: &str,
    op: &str,
    status: u16,
    fault: Option<&str>,
) {
    state.calls.push(&CallRecord {
        time: fmt_time(now),
        caller: caller.map(String::from),
        method: method.to_string(),
        path: path.to_string(),
        operation: op.to_string(),
        status,
        fault: fault.map(String::from),
    });
}

// ---------- the ARM handler ----------

pub struct Query {
    pub pairs: Vec<(String, String)>,
}

impl Query {
    pub fn parse(q: Option<&str>) -> Query {
        Query {
            pairs: form_urlencoded::parse(q.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        }
    }
    pub fn get(&self, k: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.as_str())
    }
}

enum Answer {
    Json(u16, Value),
    List(Vec<Value>),
    Empty(u16),
}

async fn arm(AxState(shared): AxState<Arc<Shared>>, req: Request) -> Response {
    let now = super::clock::now();
    let (parts, body) = req.into_parts();
    let method = parts.method.clone();
    let path = parts.uri.path().to_string();
    let path_q = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| path.clone());
    let query = Query::parse(parts.uri.query());
    let host = parts
        .headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_string();
    let client_req_id = parts
        .headers
        .get("x-ms-client-request-id")
        .and_then(|h| h.to_str().ok())
        .map(String::from);
    let client_ip = parts
        .extensions
        .get::<RemoteAddr>()
        .map(|a| a.0.ip().to_string())
        .unwrap_or_else(|| "127.0.0.1".into());

    let mut extra: Vec<(String, String)> = Vec::new();
    let finish = |status: u16,
                  body: Option<Value>,
                  extra: Vec<(String, String)>,
                  retry_after: Option<u64>| {
        let mut r = json_response(status, body.as_ref());
        let h = r.headers_mut();
        let rid = uuid::Uuid::new_v4().to_string();
        let put = |h: &mut HeaderMap, k: &str, v: &str| {
            if let (Ok(k), Ok(v)) = (
                http::header::HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                h.insert(k, v);
            }
        };
        put(h, "x-ms-request-id", &rid);
        put(
            h,
            "x-ms-correlation-request-id",
            client_req_id.as_deref().unwrap_or(&rid),
        );
        if let Some(c) = &client_req_id {
            put(h, "x-ms-client-request-id", c);
        }
        for (k, v) in &extra {
            put(h, k, v);
        }
        if let Some(ra) = retry_after {
            put(h, "retry-after", &ra.to_string());
        }
        r
    };
    let err_resp = |e: &ArmError, extra: Vec<(String, String)>| {
        finish(e.status, Some(e.body()), extra, e.retry_after)
    };

    let route = match classify(&method, &path) {
        Ok(r) => r,
        Err(e) => {
            let caller = authenticate(&shared, &parts.headers, now).ok();
            let mut st = shared.lock();
            record(
                &mut st,
                now,
                caller.as_ref().map(|c| c.oid.as_str()),
                &method,
                &path_q,
                "Unknown",
                e.status,
                None,
            );
            return err_resp(&e, extra);
        }
    };
    let sub = subscription_of(&route.scope);

    // Authentication.
    let caller = match authenticate(&shared, &parts.headers, now) {
        Ok(c) => c,
        Err(e) => {
            let mut st = shared.lock();
            record(
                &mut st, now, None, &method, &path_q, route.op, e.status, None,
            );
            let mut x = extra.clone();
            x.push((
                "www-authenticate".into(),
                "Bearer authorization_uri=\"https://login.microsoftonline.com/common\", error=\"invalid_token\"".into(),
            ));
            return err_resp(&e, x);
        }
    };

    // Faults and throttling.
    let pre = {
        let mut st = shared.lock();
        let tenant_ok = sub
            .as_deref()
            .and_then(|s| st.world.subscription(s))
            .and_then(|s| s.tenant_id.clone())
            .is_none_or(|t| t.eq_ignore_ascii_case(&caller.tid));
        if !tenant_ok {
            let e = auth_error(
                "InvalidAuthenticationTokenTenant",
                format!(
                    "The access token is from the wrong issuer 'https://sts.windows.net/{}/'. It must match the tenant associated with this subscription. Please use the authority (URL) that matches the subscription.",
                    caller.tid
                ),
            );
            record(
                &mut st,
                now,
                Some(&caller.oid),
                &method,
                &path_q,
                route.op,
                401,
                None,
            );
            return err_resp(&e, extra);
        }
        let pre = pre_checks(
            &mut st,
            route.op,
            sub.as_deref(),
            Some(&caller.oid),
            route.class,
            now,
            true,
        );
        match &pre {
            Pre::Reset => {
                record(
                    &mut st,
                    now,
                    Some(&caller.oid),
                    &method,
                    &path_q,
                    route.op,
                    0,
                    Some("reset"),
                );
            }
            Pre::Respond(e, _) => {
                record(
                    &mut st,
                    now,
                    Some(&caller.oid),
                    &method,
                    &path_q,
                    route.op,
                    e.status,
                    Some("injected-or-throttled"),
                );
            }
            Pre::Go { .. } => {}
        }
        pre
    };
    let remaining = match pre {
        Pre::Reset => return reset_response(),
        Pre::Respond(e, rem) => {
            if let Some((k, v)) = rem {
                extra.push((k, v.to_string()));
            }
            return err_resp(&e, extra);
        }
        Pre::Go {
            latency_ms,
            remaining,
        } => {
            if latency_ms > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(latency_ms)).await;
            }
            remaining
        }
    };
    if let Some((k, v)) = remaining {
        extra.push((k, v.to_string()));
    }

    // api-version.
    let version_err = match query.get("api-version") {
        None => Some(ArmError::bad_request(
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        )),
        Some(v) if !route.versions.contains(&v) => Some(ArmError::bad_request(
            "InvalidApiVersionParameter",
            format!(
                "The api-version '{v}' is invalid. The supported versions are '{}'.",
                route.versions.join(",")
            ),
        )),
        Some(_) => None,
    };

    let body_bytes: Bytes = match axum::body::to_bytes(body, 4 * 1024 * 1024).await {
        Ok(b) => b,
        Err(_) => Bytes::new(),
    };
    let now = super::clock::now();
    let mut st = shared.lock();
    st.expire(now);
    let result = match version_err {
        Some(e) => Err(e),
        None => handle(
            &mut st,
            &route,
            &method,
            &query,
            &body_bytes,
            &caller,
            now,
            &client_ip,
        ),
    };
    let status = match &result {
        Ok(Answer::Json(s, _)) | Ok(Answer::Empty(s)) => *s,
        Ok(Answer::List(_)) => 200,
        Err(e) => e.status,
    };
    record(
        &mut st,
        now,
        Some(&caller.oid),
        &method,
        &path_q,
        route.op,
        status,
        None,
    );
    let page_size = st.world.settings.page_size;
    drop(st);
    match result {
        Ok(Answer::Json(s, v)) => finish(s, Some(v), extra, None),
        Ok(Answer::Empty(s)) => finish(s, None, extra, None),
        Ok(Answer::List(items)) => {
            let skip: usize = query
                .get("$skiptoken")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let page: Vec<Value> = items.iter().skip(skip).take(page_size).cloned().collect();
            let mut body = json!({ "value": page });
            if skip + page_size < items.len() {
                let mut q = form_urlencoded::Serializer::new(String::new());
                for (k, v) in &query.pairs {
                    if !k.eq_ignore_ascii_case("$skiptoken") {
                        q.append_pair(k, v);
                    }
                }
                q.append_pair("$skiptoken", &(skip + page_size).to_string());
                body["nextLink"] = json!(format!("https://{host}{path}?{}", q.finish()));
            }
            finish(200, Some(body), extra, None)
        }
        Err(e) => err_resp(&e, extra),
    }
}

fn parse_json(body: &[u8]) -> Result<Value, ArmError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(ArmError::invalid_body(
            "The request content was invalid: the body is empty.",
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        ArmError::invalid_body(format!(
            "The request content was invalid and could not be deserialized: '{e}'."
        ))
    })
}

#[allow(clippy::too_many_arguments)]
fn handle(
    st: &mut State,
    route: &Route,
    method: &Method,
    query: &Query,
    body: &[u8],
    caller: &Caller,
    now: DateTime<Utc>,
    client_ip: &str,
) -> Result<Answer, ArmError> {
    let _ = method;
    let scope = route.scope.as_str();
    let name = route.name.as_deref().unwrap_or_default();
    let filter = query.get("$filter");
    if let Some(jp) = &route.jit {
        return Ok(match route.op {
            "JitNetworkAccessPolicies_Get" => Answer::Json(200, jit::get(st, jp, now)?),
            "JitNetworkAccessPolicies_CreateOrUpdate" => {
                Answer::Json(200, jit::put(st, jp, &parse_json(body)?, now)?)
            }
            "JitNetworkAccessPolicies_Delete" => Answer::Empty(jit::delete(st, jp)?),
            "JitNetworkAccessPolicies_Initiate" => Answer::Json(
                202,
                jit::initiate(
                    st,
                    jp,
                    &parse_json(body)?,
                    now,
                    &caller.requestor,
                    client_ip,
                )?,
            ),
            _ => Answer::List(jit::list(st, jp, now)?),
        });
    }
    let read_scope_ok = |st: &State| pim::check_scope(st, scope, true);
    Ok(match route.op {
        "RoleAssignmentScheduleRequests_Create" => Answer::Json(
            201,
            pim::create(st, scope, name, &parse_json(body)?, caller, now, false)?,
        ),
        "RoleAssignmentScheduleRequests_Validate" => Answer::Json(
            200,
            pim::create(st, scope, name, &parse_json(body)?, caller, now, true)?,
        ),
        "RoleAssignmentScheduleRequests_Cancel" => {
            pim::cancel(st, scope, name)?;
            Answer::Empty(200)
        }
        "RoleAssignmentScheduleRequests_Get" => {
            Answer::Json(200, pim::get_request(st, scope, name)?)
        }
        "RoleAssignmentScheduleRequests_ListForScope" => {
            read_scope_ok(st)?;
            Answer::List(pim::list_requests(st, scope, filter, caller)?)
        }
        "RoleAssignmentSchedules_Get" => {
            Answer::Json(200, pim::get_assignment(st, scope, name, false, now)?)
        }
        "RoleAssignmentScheduleInstances_Get" => {
            Answer::Json(200, pim::get_assignment(st, scope, name, true, now)?)
        }
        "RoleAssignmentSchedules_ListForScope" => {
            read_scope_ok(st)?;
            Answer::List(pim::list_assignments(
                st, scope, filter, caller, false, now,
            )?)
        }
        "RoleAssignmentScheduleInstances_ListForScope" => {
            read_scope_ok(st)?;
            Answer::List(pim::list_assignments(st, scope, filter, caller, true, now)?)
        }
        "RoleEligibilitySchedules_Get" => {
            Answer::Json(200, pim::get_eligibility(st, scope, name, false)?)
        }
        "RoleEligibilityScheduleInstances_Get" => {
            Answer::Json(200, pim::get_eligibility(st, scope, name, true)?)
        }
        "RoleEligibilitySchedules_ListForScope" => {
            read_scope_ok(st)?;
            Answer::List(pim::list_eligibilities(
                st, scope, filter, caller, false, now,
            )?)
        }
        "RoleEligibilityScheduleInstances_ListForScope" => {
            read_scope_ok(st)?;
            Answer::List(pim::list_eligibilities(
                st, scope, filter, caller, true, now,
            )?)
        }
        "RoleManagementPolicies_Get" => Answer::Json(200, pim::get_policy(st, scope, name)?),
        "RoleManagementPolicies_ListForScope" => {
            read_scope_ok(st)?;
            Answer::List(pim::list_policies(st, scope, filter)?)
        }
        "RoleManagementPolicyAssignments_Get" => {
            Answer::Json(200, pim::get_policy_assignment(st, scope, name)?)
        }
        "RoleManagementPolicyAssignments_ListForScope" => {
            read_scope_ok(st)?;
            Answer::List(pim::list_policy_assignments(st, scope, filter)?)
        }
        "EligibleChildResources_Get" => {
            read_scope_ok(st)?;
            let all = query
                .get("$getAllChildren")
                .is_some_and(|v| v.eq_ignore_ascii_case("true"));
            Answer::List(pim::eligible_child_resources(
                st, scope, filter, all, caller, now,
            )?)
        }
        "RoleDefinitions_Get" => Answer::Json(200, pim::get_role(st, scope, name)?),
        "RoleDefinitions_List" => Answer::List(pim::list_roles(st, scope, filter)?),
        _ => {
            return Err(ArmError::new(
                404,
                "InvalidResourceType",
                "Unknown operation.",
            ));
        }
    })
}
