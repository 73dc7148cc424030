//! Control API under `/_sim/` (approve/deny, revoke, faults, throttle, calls, state).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State as AxState};
use axum::response::Response;
use chrono::Duration;
use serde_json::{Value, json};

use super::arm::ArmError;
use super::server::{Shared, json_bytes_response, json_response};
use super::state::Fault;
use super::world::ThrottleSettings;
use super::{jit, pim};

fn err(e: &ArmError) -> Response {
    json_response(e.status, Some(&e.body()))
}

fn body_json(b: &[u8]) -> Result<Value, ArmError> {
    serde_json::from_slice(b).map_err(|e| ArmError::invalid_body(format!("invalid JSON body: {e}")))
}

pub async fn get_calls(AxState(s): AxState<Arc<Shared>>) -> Response {
    // The log holds up to 100,000 calls, read under the state lock: its records are kept
    // serialised.
    let body = s.lock().calls.to_json();
    json_bytes_response(200, body)
}

pub async fn clear_calls(AxState(s): AxState<Arc<Shared>>) -> Response {
    s.lock().calls.clear();
    json_response(204, None)
}

pub async fn get_state(AxState(s): AxState<Arc<Shared>>) -> Response {
    let now = super::clock::now();
    let mut st = s.lock();
    st.expire(now);
    st.expire_all_jit(now);
    json_response(200, Some(&st.dump(now)))
}

pub async fn get_faults(AxState(s): AxState<Arc<Shared>>) -> Response {
    let st = s.lock();
    json_response(200, Some(&json!(st.faults)))
}

pub async fn clear_faults(AxState(s): AxState<Arc<Shared>>) -> Response {
    let mut st = s.lock();
    st.faults.clear();
    // A throttle storm's pending Retry-After blocks end with it.
    for b in st.buckets.values_mut() {
        b.blocked_until = None;
    }
    json_response(204, None)
}

pub async fn add_fault(AxState(s): AxState<Arc<Shared>>, body: Bytes) -> Response {
    match parse_fault(&body) {
        Ok(f) => {
            let v = json!(f);
            s.lock().faults.push(f);
            json_response(201, Some(&v))
        }
        Err(e) => err(&e),
    }
}

fn parse_fault(body: &[u8]) -> Result<Fault, ArmError> {
    let v = body_json(body)?;
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(String::from);
    let u = |k: &str| v.get(k).and_then(Value::as_u64);
    let kind = s("kind").unwrap_or_default();
    if !["throttle", "error", "latency", "reset"].contains(&kind.as_str()) {
        return Err(ArmError::bad_request(
            "InvalidFault",
            "kind must be one of throttle, error, latency, reset",
        ));
    }
    let status = u("status").unwrap_or(if kind == "throttle" { 429 } else { 503 });
    if !(400..=599).contains(&status) {
        return Err(ArmError::bad_request(
            "InvalidFault",
            "status must be 400..599",
        ));
    }
    Ok(Fault {
        id: uuid::Uuid::new_v4().to_string(),
        operation: s("operation").unwrap_or_else(|| "*".into()),
        subscription: s("subscription"),
        kind,
        status: status as u16,
        retry_after_seconds: u("retryAfterSeconds").map(|s| s.min(86_400)),
        latency_ms: u("latencyMs").unwrap_or(100).min(600_000),
        jitter_ms: u("jitterMs").unwrap_or(0).min(600_000),
        count: u("count"),
        until: u("durationSeconds")
            .map(|d| super::clock::now() + Duration::seconds(d.min(10 * 365 * 86_400) as i64)),
    })
}

pub async fn get_throttle(AxState(s): AxState<Arc<Shared>>) -> Response {
    let st = s.lock();
    json_response(200, Some(&json!(st.throttle)))
}

pub async fn put_throttle(AxState(s): AxState<Arc<Shared>>, body: Bytes) -> Response {
    match serde_json::from_slice::<ThrottleSettings>(&body) {
        Ok(t)
            if [t.reads, t.writes, t.deletes].iter().any(|b| {
                !(b.burst.is_finite()
                    && b.per_second.is_finite()
                    && b.burst >= 0.0
                    && b.per_second >= 0.0)
            }) =>
        {
            err(&ArmError::invalid_body(
                "burst and perSecond must be finite and >= 0",
            ))
        }
        Ok(t) => {
            let mut st = s.lock();
            st.throttle = t;
            st.buckets.clear();
            json_response(200, Some(&json!(t)))
        }
        Err(e) => err(&ArmError::invalid_body(format!(
            "invalid throttle settings: {e}"
        ))),
    }
}

pub async fn approve(AxState(s): AxState<Arc<Shared>>, Path(name): Path<String>) -> Response {
    let now = super::clock::now();
    let mut st = s.lock();
    st.expire(now);
    match pim::approve(&mut st, &name, now) {
        Ok(v) => json_response(200, Some(&v)),
        Err(e) => err(&e),
    }
}

pub async fn deny(AxState(s): AxState<Arc<Shared>>, Path(name): Path<String>) -> Response {
    let mut st = s.lock();
    match pim::deny(&mut st, &name) {
        Ok(v) => json_response(200, Some(&v)),
        Err(e) => err(&e),
    }
}

pub async fn pim_revoke(AxState(s): AxState<Arc<Shared>>, body: Bytes) -> Response {
    let now = super::clock::now();
    let v = match body_json(&body) {
        Ok(v) => v,
        Err(e) => return err(&e),
    };
    let f = |k: &str| v.get(k).and_then(Value::as_str).map(String::from);
    let (Some(scope), Some(role), Some(principal)) =
        (f("scope"), f("roleDefinitionId"), f("principalId"))
    else {
        return err(&ArmError::bad_request(
            "InvalidRequestContent",
            "scope, roleDefinitionId and principalId are required",
        ));
    };
    let mut st = s.lock();
    st.expire(now);
    let n = pim::revoke(&mut st, &scope, &role, &principal, now);
    if n == 0 {
        return err(&ArmError::new(
            404,
            "NotFound",
            "No active assignment matches.",
        ));
    }
    json_response(200, Some(&json!({"revoked": n})))
}

pub async fn jit_revoke(AxState(s): AxState<Arc<Shared>>, body: Bytes) -> Response {
    let now = super::clock::now();
    let v = match body_json(&body) {
        Ok(v) => v,
        Err(e) => return err(&e),
    };
    let Some(vm) = v.get("vmId").and_then(Value::as_str) else {
        return err(&ArmError::bad_request(
            "InvalidRequestContent",
            "vmId is required",
        ));
    };
    let port = v.get("port").and_then(Value::as_u64);
    let mut st = s.lock();
    let n = jit::revoke(&mut st, vm, port, now);
    if n == 0 {
        return err(&ArmError::new(404, "NotFound", "No open JIT port matches."));
    }
    json_response(200, Some(&json!({"revoked": n})))
}
