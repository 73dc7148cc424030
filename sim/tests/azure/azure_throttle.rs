//! ARM throttling (token buckets per subscription + principal + read/write/delete) and fault
//! injection over HTTPS.

use crate::azure_support;

use std::time::Duration;

use azure_support::*;
use serde_json::json;

fn small_buckets(y: &mut serde_norway::Value) {
    let b = |burst: u64, rate: u64| {
        serde_norway::from_str::<serde_norway::Value>(&format!(
            "{{burst: {burst}, perSecond: {rate}}}"
        ))
        .expect("yaml")
    };
    set_yaml(y, &["settings", "throttle", "reads"], b(3, 1));
    set_yaml(y, &["settings", "throttle", "writes"], b(200, 10));
    set_yaml(y, &["settings", "throttle", "deletes"], b(200, 10));
}

/// Waits out a Retry-After: the server told us how long to stay away (this is the behaviour
/// under test, not synchronisation).
async fn honour(retry_after: &str) {
    let secs: u64 = retry_after.parse().expect("Retry-After in seconds");
    tokio::time::sleep(Duration::from_millis(secs * 1000 + 100)).await;
}

#[tokio::test]
async fn token_bucket_refuses_and_restarts_the_wait() {
    let sim = Sim::start_with(small_buckets).await;
    let tok = sim.operator().await;
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let r = sim.jit_get(&tok).await;
        assert_eq!(r.status, 200);
        remaining.push(
            r.header("x-ms-ratelimit-remaining-subscription-reads")
                .expect("header"),
        );
    }
    assert_eq!(remaining, vec!["2", "1", "0"]);
    let r = sim.jit_get(&tok).await;
    assert_eq!((r.status, r.code()), (429, "SubscriptionRequestsThrottled"));
    let ra = r.header("retry-after").expect("Retry-After");
    // Before Retry-After elapses: refused again.
    let again = sim.jit_get(&tok).await;
    assert_eq!(again.status, 429);
    let ra = again.header("retry-after").unwrap_or(ra);
    // Writes are a separate bucket and other principals have their own.
    let w = sim.jit_initiate(&tok, json!({"virtualMachines": []})).await;
    assert_eq!(w.status, 400, "writes are not throttled: {}", w.body);
    let alice = sim.token(ALICE_APP, ALICE_SECRET).await;
    assert_eq!(sim.jit_get(&alice).await.status, 200);
    honour(&ra).await;
    let ok = sim.jit_get(&tok).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
}

#[tokio::test]
async fn throttle_storm_fault_honours_retry_after() {
    let sim = Sim::start().await;
    let tok = sim.operator().await;
    let f = sim
        .control("POST", "/_sim/faults", Some(&json!({"operation": "JitNetworkAccessPolicies_Initiate", "subscription": SUB, "kind": "throttle", "retryAfterSeconds": 2, "count": 1})))
        .await;
    assert_eq!(f.status, 201, "{}", f.body);
    let body = json!({"virtualMachines": [{"id": VM1, "ports": [{"number": 22, "duration": "PT1H", "allowedSourceAddressPrefix": "10.0.0.1"}]}]});
    let r = sim.jit_initiate(&tok, body.clone()).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after").as_deref(), Some("2"));
    // Reads are unaffected (other operation); the storm's write is refused again early.
    assert_eq!(sim.jit_get(&tok).await.status, 200);
    let early = sim.jit_initiate(&tok, body.clone()).await;
    assert_eq!(
        early.status, 429,
        "a request before Retry-After is refused again"
    );
    honour("2").await;
    let ok = sim.jit_initiate(&tok, body).await;
    assert_eq!(ok.status, 202, "{}", ok.body);
    // The log shows the refused calls.
    let calls = sim.control("GET", "/_sim/calls", None).await;
    let n429 = calls
        .body
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|c| {
                    c["operation"] == "JitNetworkAccessPolicies_Initiate" && c["status"] == 429
                })
                .count()
        })
        .unwrap_or(0);
    assert_eq!(n429, 2);
}

#[tokio::test]
async fn error_latency_reset_faults() {
    let sim = Sim::start().await;
    let tok = sim.operator().await;
    // 503 once, for one operation and subscription.
    sim.control("POST", "/_sim/faults", Some(&json!({"operation": "JitNetworkAccessPolicies_Get", "kind": "error", "status": 503, "count": 1, "retryAfterSeconds": 1}))).await;
    let r = sim.jit_get(&tok).await;
    assert_eq!((r.status, r.code()), (503, "ServiceUnavailable"));
    assert_eq!(r.header("retry-after").as_deref(), Some("1"));
    assert_eq!(sim.jit_get(&tok).await.status, 200);
    // Another subscription's fault does not apply.
    sim.control("POST", "/_sim/faults", Some(&json!({"operation": "*", "subscription": "20ff7fc3-e762-44dd-bd96-b71116dcdc23", "kind": "error", "status": 500}))).await;
    assert_eq!(sim.jit_get(&tok).await.status, 200);
    assert_eq!(
        sim.control("DELETE", "/_sim/faults", None).await.status,
        204
    );
    // Latency.
    sim.control(
        "POST",
        "/_sim/faults",
        Some(&json!({"operation": "*", "kind": "latency", "latencyMs": 300, "count": 1})),
    )
    .await;
    let t0 = tokio::time::Instant::now();
    assert_eq!(sim.jit_get(&tok).await.status, 200);
    assert!(t0.elapsed() >= Duration::from_millis(300));
    // Connection reset: the client sees a transport error, then the next call works.
    sim.control(
        "POST",
        "/_sim/faults",
        Some(&json!({"operation": "JitNetworkAccessPolicies_Get", "kind": "reset", "count": 1})),
    )
    .await;
    let e = sim
        .http
        .get(format!("{}{JIT_POLICY}?api-version=2020-01-01", sim.base))
        .bearer_auth(&tok)
        .send()
        .await;
    assert!(
        e.is_err(),
        "expected a transport error, got {:?}",
        e.map(|r| r.status())
    );
    assert_eq!(sim.jit_get(&tok).await.status, 200);
    // Token endpoint faults are named explicitly.
    sim.control(
        "POST",
        "/_sim/faults",
        Some(&json!({"operation": "Token", "kind": "error", "status": 503, "count": 1})),
    )
    .await;
    let r = sim
        .token_raw(&[
            ("client_id", OPERATOR_APP),
            ("client_secret", OPERATOR_SECRET),
            ("grant_type", "client_credentials"),
            ("scope", "https://management.azure.com/.default"),
        ])
        .await;
    assert_eq!(r.status, 503);
    assert!(r.body["error_codes"].is_array());
    let bad = sim
        .control("POST", "/_sim/faults", Some(&json!({"kind": "explode"})))
        .await;
    assert_eq!(bad.status, 400);
}

#[tokio::test]
async fn state_dump_lists_everything() {
    let sim = Sim::start().await;
    let tok = sim.operator().await;
    let (_, r) = sim
        .pim_put(&tok, RG_SCOPE, activate(OPERATOR_OID, READER, "PT1H"))
        .await;
    assert_eq!(r.status, 201);
    let s = sim.control("GET", "/_sim/state", None).await;
    assert_eq!(s.status, 200);
    for k in [
        "jitPolicies",
        "roleAssignmentScheduleRequests",
        "roleAssignmentSchedules",
        "roleAssignmentScheduleInstances",
        "roleEligibilitySchedules",
    ] {
        assert!(s.body[k].is_array(), "{k}");
    }
    assert_eq!(
        s.body["roleAssignmentScheduleRequests"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    let t = sim.control("PUT", "/_sim/throttle", Some(&json!({"reads": {"burst": 1, "perSecond": 0.5}, "writes": {"burst": 5, "perSecond": 1}, "deletes": {"burst": 5, "perSecond": 1}}))).await;
    assert_eq!(t.status, 200, "{}", t.body);
    assert_eq!(sim.jit_get(&tok).await.status, 200);
    assert_eq!(sim.jit_get(&tok).await.status, 429);
}
