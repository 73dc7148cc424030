//! ArmClient behaviour against a running azure-sim over HTTPS (its own CA), through
//! azure_identity's real credential code pointed at the sim's authority host.

use crate::wait;

use accessgrant_operator::azure::client::{ArmClient, ArmConfig, AuthConfig, Caller};
use accessgrant_operator::azure::error::AzureError;
use accessgrant_operator::azure::models::{
    RoleAssignmentScheduleRequest, jit_initiate_body, pim_request_body,
};
use accessgrant_operator::lifecycle::{JitInitiatePort, JitInitiateVm, PimRequestBody};
use accessgrant_sim::azure::{RunningSim, SimConfig, World, serve};
use chrono::Duration;
use serde_json::{Value, json};
use std::path::PathBuf;

const TENANT: &str = "3c0a2b4e-7d1f-4c6a-9e8b-1f2a3b4c5d6e";
const OPERATOR_APP: &str = "6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4ea1";
const OPERATOR_OID: &str = "6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4e01";
const SUB: &str = "5f1e7a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b";
const OTHER_SUB: &str = "20ff7fc3-e762-44dd-bd96-b71116dcdc23";

fn rg() -> String {
    format!("/subscriptions/{SUB}/resourceGroups/rg-sandbox")
}
fn role(guid: &str) -> String {
    format!("/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/{guid}")
}
const READER: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";

async fn sim() -> RunningSim {
    accessgrant_sim::azure::install_crypto_provider();
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("sim/worlds/sandbox.yaml");
    let world = World::from_file(&path).expect("sandbox world");
    serve(SimConfig::new(world))
        .await
        .expect("azure-sim starts")
}

/// The operator's client settings against `sim`.
fn config(sim: &RunningSim) -> ArmConfig {
    let base = url::Url::parse(&sim.base_url()).expect("url");
    let mut cfg = ArmConfig::new(
        base.clone(),
        base,
        AuthConfig::ClientSecret {
            tenant_id: TENANT.into(),
            client_id: OPERATOR_APP.into(),
            secret: "sandbox-operator-secret".into(),
        },
    );
    cfg.extra_ca_pem = Some(sim.ca_pem().as_bytes().to_vec());
    cfg
}

fn client(sim: &RunningSim) -> ArmClient {
    ArmClient::new(config(sim), None).expect("client")
}

fn control(sim: &RunningSim) -> reqwest::Client {
    accessgrant_operator::azure::client::http_client(
        Some(sim.ca_pem().as_bytes()),
        std::time::Duration::from_secs(10),
    )
    .expect("control client")
}

async fn calls(sim: &RunningSim) -> Vec<Value> {
    control(sim)
        .get(format!("{}/_sim/calls", sim.base_url()))
        .send()
        .await
        .expect("calls")
        .json()
        .await
        .expect("json")
}

fn activate(
    role_guid: &str,
    minutes: i64,
    justification: Option<&str>,
) -> RoleAssignmentScheduleRequest {
    pim_request_body(&PimRequestBody {
        request_type: "SelfActivate",
        principal_id: OPERATOR_OID.into(),
        role_definition_id: role(role_guid),
        linked_role_eligibility_schedule_id: None,
        target_role_assignment_schedule_id: None,
        start: Some(accessgrant_operator::clock::now()),
        duration: Some(Duration::minutes(minutes)),
        justification: justification.map(str::to_string),
        ticket: None,
    })
}

#[tokio::test]
async fn tls_token_and_jit_initiate_supersede() {
    let sim = sim().await;
    let c = client(&sim);
    let pol = c
        .jit_policy(SUB, "rg-sandbox", "westeurope", "default")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(pol.vms.len(), 2);
    assert!(
        c.jit_policy(SUB, "rg-sandbox", "westeurope", "nope")
            .await
            .expect("get")
            .is_none(),
        "404 is None"
    );
    let vm = format!(
        "{}/providers/Microsoft.Compute/virtualMachines/vm-sandbox-1",
        rg()
    );
    let body = |marker: &str| {
        jit_initiate_body(
            &[JitInitiateVm {
                id: vm.clone(),
                ports: vec![JitInitiatePort {
                    number: 22,
                    allowed_source_address_prefix: "10.0.0.0/8".into(),
                    end_time_utc: accessgrant_operator::clock::now() + Duration::minutes(30),
                }],
            }],
            marker,
        )
    };
    let first = c
        .jit_initiate(
            SUB,
            "rg-sandbox",
            "westeurope",
            "default",
            &body("[ag:t/a#1.x]"),
        )
        .await
        .expect("initiate");
    assert!(matches!(
        first.ports[0].status.as_str(),
        "Initiated" | "Initiating"
    ));
    c.jit_initiate(
        SUB,
        "rg-sandbox",
        "westeurope",
        "default",
        &body("[ag:t/a#2.x]"),
    )
    .await
    .expect("second initiate");
    let pol = c
        .jit_policy(SUB, "rg-sandbox", "westeurope", "default")
        .await
        .expect("get")
        .expect("exists");
    let old = pol
        .requests
        .iter()
        .find(|r| r.justification.as_deref() == Some("[ag:t/a#1.x]"))
        .expect("first request listed");
    assert_eq!(
        (
            old.ports[0].status.as_str(),
            old.ports[0].status_reason.as_deref()
        ),
        ("Revoked", Some("NewerRequestInitiated"))
    );
    // A port the policy does not have is refused by Azure.
    let bad = jit_initiate_body(
        &[JitInitiateVm {
            id: vm.clone(),
            ports: vec![JitInitiatePort {
                number: 8080,
                allowed_source_address_prefix: "10.0.0.0/8".into(),
                end_time_utc: accessgrant_operator::clock::now() + Duration::minutes(30),
            }],
        }],
        "x",
    );
    let e = c
        .jit_initiate(SUB, "rg-sandbox", "westeurope", "default", &bad)
        .await
        .expect_err("refused");
    assert_eq!(e.category(), "Invalid", "{e}");
    // The token endpoint was used and every ARM call carried the operator's identity.
    let log = calls(&sim).await;
    assert!(log.iter().any(|c| c["operation"] == "Token"));
    assert!(
        log.iter()
            .filter(|c| c["operation"] != "Token")
            .all(|c| c["caller"] == OPERATOR_OID)
    );
}

#[tokio::test]
async fn pim_activate_exists_floor_and_policy_read() {
    let sim = sim().await;
    let c = client(&sim);
    let pol = c
        .pim_policy(&rg(), &role(READER))
        .await
        .expect("policy")
        .expect("readable");
    assert_eq!(pol.enduser_max_duration, Some(Duration::hours(8)));
    let name = uuid::Uuid::new_v4().to_string();
    let v = c
        .pim_put(
            &rg(),
            &name,
            &activate(READER, 60, Some("test")),
            &Caller::Operator,
        )
        .await
        .expect("activate");
    assert_eq!(v.status, "Provisioned");
    let inst = c
        .pim_instance(&rg(), &role(READER), OPERATOR_OID)
        .await
        .expect("list")
        .expect("active instance");
    assert!(inst.end.is_some());
    // Same name again: our own request, found by GET.
    let again = c
        .pim_put(
            &rg(),
            &name,
            &activate(READER, 60, Some("test")),
            &Caller::Operator,
        )
        .await
        .expect_err("exists");
    assert_eq!(again.category(), "RequestExists");
    assert_eq!(
        c.pim_get(&rg(), &name, &Caller::Operator)
            .await
            .expect("get")
            .map(|r| r.status),
        Some("Provisioned".into())
    );
    // A second activation overlaps.
    let e = c
        .pim_put(
            &rg(),
            &uuid::Uuid::new_v4().to_string(),
            &activate(READER, 60, Some("test")),
            &Caller::Operator,
        )
        .await
        .expect_err("overlap");
    assert!(matches!(e, AzureError::RoleAssignmentExists { .. }), "{e}");
    // Deactivation inside the 5-minute floor.
    let mut off = activate(READER, 60, None);
    off.properties.request_type = Some("SelfDeactivate".into());
    off.properties.schedule_info = None;
    let e = c
        .pim_put(
            &rg(),
            &uuid::Uuid::new_v4().to_string(),
            &off,
            &Caller::Operator,
        )
        .await
        .expect_err("floor");
    assert!(
        matches!(e, AzureError::ActiveDurationTooShort { .. }),
        "{e}"
    );
}

#[tokio::test]
async fn each_seed_policy_rule_is_classified() {
    let sim = sim().await;
    let c = client(&sim);
    for (guid, minutes, justification, rule) in [
        (
            "9980e02c-c2be-4d73-94e8-173b1dc7cf3c",
            30,
            Some("x"),
            "TicketingRule",
        ),
        (
            "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1",
            120,
            Some("x"),
            "ExpirationRule",
        ),
        (
            "73c42c96-874c-492b-b04d-ab87d138a893",
            30,
            None,
            "JustificationRule",
        ),
        (
            "de139f84-1756-47ae-9be6-808fbbe84772",
            30,
            Some("x"),
            "MfaRule",
        ),
        (
            "8e3af657-a8ff-443c-a75c-2fe8c4bcb635",
            30,
            Some("x"),
            "EligibilityRule",
        ),
    ] {
        let e = c
            .pim_put(
                &rg(),
                &uuid::Uuid::new_v4().to_string(),
                &activate(guid, minutes, justification),
                &Caller::Operator,
            )
            .await
            .expect_err(rule);
        match e {
            AzureError::PolicyRules { rules, message } => {
                assert!(rules.iter().any(|r| r == rule), "{rule}: {rules:?}");
                assert!(
                    message.starts_with("The following policy rules failed: ["),
                    "{message}"
                );
            }
            other => panic!("{rule}: {other}"),
        }
    }
    // SelfActivate for another principal is refused.
    let mut other = activate(READER, 30, Some("x"));
    other.properties.principal_id = Some("6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4e02".into());
    let e = c
        .pim_put(
            &rg(),
            &uuid::Uuid::new_v4().to_string(),
            &other,
            &Caller::Operator,
        )
        .await
        .expect_err("not self");
    assert!(!e.is_transient(), "{e}");
}

#[tokio::test]
async fn approval_flow_and_cancel() {
    let sim = sim().await;
    let c = client(&sim);
    let approval_role = "4633458b-17de-408a-b874-0445c86b69e6";
    let name = uuid::Uuid::new_v4().to_string();
    let v = c
        .pim_put(
            &rg(),
            &name,
            &activate(approval_role, 30, Some("x")),
            &Caller::Operator,
        )
        .await
        .expect("put");
    assert_eq!(v.status, "PendingApproval");
    let r = control(&sim)
        .post(format!(
            "{}/_sim/pim/requests/{name}/approve",
            sim.base_url()
        ))
        .send()
        .await
        .expect("approve");
    assert!(r.status().is_success());
    assert_eq!(
        c.pim_get(&rg(), &name, &Caller::Operator)
            .await
            .expect("get")
            .map(|r| r.status),
        Some("Provisioned".into())
    );
    // Cancel works on a pending request only.
    let sim2 = self::sim().await;
    let c2 = client(&sim2);
    let name2 = uuid::Uuid::new_v4().to_string();
    c2.pim_put(
        &rg(),
        &name2,
        &activate(approval_role, 30, Some("x")),
        &Caller::Operator,
    )
    .await
    .expect("put");
    c2.pim_cancel(&rg(), &name2, &Caller::Operator)
        .await
        .expect("cancel");
    assert_eq!(
        c2.pim_get(&rg(), &name2, &Caller::Operator)
            .await
            .expect("get")
            .map(|r| r.status),
        Some("Canceled".into())
    );
    assert!(
        c2.pim_cancel(&rg(), &name2, &Caller::Operator)
            .await
            .is_err(),
        "not pending any more"
    );
}

#[tokio::test]
async fn throttling_storm_waits_out_retry_after_and_spares_other_subscriptions() {
    let sim = sim().await;
    let c = client(&sim);
    // Warm the token so the storm only hits ARM.
    c.jit_policy(OTHER_SUB, "myRg1", "westeurope", "default")
        .await
        .expect("warm");
    let r = control(&sim)
        .post(format!("{}/_sim/faults", sim.base_url()))
        .json(&json!({"operation": "JitNetworkAccessPolicies_Get", "subscription": SUB, "kind": "throttle", "retryAfterSeconds": 2, "count": 1}))
        .send()
        .await
        .expect("fault");
    assert!(r.status().is_success());
    control(&sim)
        .delete(format!("{}/_sim/calls", sim.base_url()))
        .send()
        .await
        .expect("clear");
    let (a, b) = tokio::join!(
        c.jit_policy(SUB, "rg-sandbox", "westeurope", "default"),
        async {
            // Another subscription is not held up by the throttled bucket.
            c.jit_policy(OTHER_SUB, "myRg1", "westeurope", "default")
                .await
        }
    );
    assert!(
        a.expect("throttled call succeeds after Retry-After")
            .is_some()
    );
    assert!(b.expect("other subscription").is_some());
    let log = calls(&sim).await;
    let ours: Vec<&Value> = log
        .iter()
        .filter(|c| c["path"].as_str().is_some_and(|p| p.contains(SUB)))
        .collect();
    assert_eq!(ours.len(), 2, "one 429, then one retry: {ours:?}");
    assert_eq!(ours[0]["status"], 429);
    let t = |v: &Value| {
        chrono::DateTime::parse_from_rfc3339(v["time"].as_str().expect("time")).expect("rfc3339")
    };
    let gap = t(ours[1]) - t(ours[0]);
    assert!(
        gap >= Duration::milliseconds(1990),
        "retried {gap} after the 429, before Retry-After"
    );
    assert_eq!(ours[1]["status"], 200);
}

#[tokio::test]
async fn access_expires_by_wall_clock() {
    let sim = sim().await;
    let c = client(&sim);
    let start = accessgrant_operator::clock::now();
    let mut body = activate(READER, 1, Some("expiry"));
    if let Some(e) = body
        .properties
        .schedule_info
        .as_mut()
        .and_then(|s| s.expiration.as_mut())
    {
        e.duration = Some("PT2S".into());
    }
    c.pim_put(
        &rg(),
        &uuid::Uuid::new_v4().to_string(),
        &body,
        &Caller::Operator,
    )
    .await
    .expect("activate");
    let vm = format!(
        "{}/providers/Microsoft.Compute/virtualMachines/vm-sandbox-2",
        rg()
    );
    let jit = jit_initiate_body(
        &[JitInitiateVm {
            id: vm,
            ports: vec![JitInitiatePort {
                number: 3389,
                allowed_source_address_prefix: "10.0.0.0/8".into(),
                end_time_utc: start + Duration::seconds(2),
            }],
        }],
        "[ag:t/expiry#1.x]",
    );
    c.jit_initiate(SUB, "rg-sandbox", "westeurope", "default", &jit)
        .await
        .expect("initiate");
    // Wait (with a deadline) until both ended by themselves.
    let reason = wait::eventually(
        "PIM and JIT access to expire",
        std::time::Duration::from_secs(20),
        std::time::Duration::from_millis(250),
        || async {
            let pim_gone = c
                .pim_instance(&rg(), &role(READER), OPERATOR_OID)
                .await
                .expect("list")
                .is_none();
            let pol = c
                .jit_policy(SUB, "rg-sandbox", "westeurope", "default")
                .await
                .expect("get")
                .expect("policy");
            let port = pol
                .requests
                .iter()
                .find(|r| r.justification.as_deref() == Some("[ag:t/expiry#1.x]"))
                .map(|r| r.ports[0].clone())
                .expect("request listed");
            if pim_gone && port.status == "Revoked" {
                Ok(port.status_reason)
            } else {
                Err(format!("pim gone={pim_gone}, jit={port:?}"))
            }
        },
    )
    .await;
    assert_eq!(reason.as_deref(), Some("Expired"));
    assert!(
        accessgrant_operator::clock::now() >= start + Duration::seconds(2),
        "not before its end"
    );
}

#[tokio::test]
async fn removals_go_before_grants_when_both_wait_for_the_write_budget() {
    let sim = sim().await;
    let mut cfg = config(&sim);
    // One write in the bucket, then two per second: everything after the first waits.
    cfg.writes.capacity = 1.0;
    cfg.writes.refill_per_sec = 2.0;
    let metrics = accessgrant_operator::telemetry::Metrics::new();
    let c = std::sync::Arc::new(ArmClient::new(cfg, None).expect("client").with_telemetry(
        metrics.clone(),
        accessgrant_operator::telemetry::Readiness::new(),
    ));
    c.jit_policy(SUB, "rg-sandbox", "westeurope", "default")
        .await
        .expect("warm the token");
    let vm = format!(
        "{}/providers/Microsoft.Compute/virtualMachines/vm-sandbox-1",
        rg()
    );
    let send = |c: std::sync::Arc<ArmClient>, marker: String| {
        let vm = vm.clone();
        async move {
            let body = jit_initiate_body(
                &[JitInitiateVm {
                    id: vm,
                    ports: vec![JitInitiatePort {
                        number: 22,
                        allowed_source_address_prefix: "10.0.0.0/8".into(),
                        end_time_utc: accessgrant_operator::clock::now() + Duration::minutes(30),
                    }],
                }],
                &marker,
            );
            c.jit_initiate(SUB, "rg-sandbox", "westeurope", "default", &body)
                .await
                .map(|_| ())
        }
    };
    let grants: Vec<_> = (0..5)
        .map(|i| tokio::spawn(send(c.clone(), format!("grant-{i}"))))
        .collect();
    // Once grants are waiting for the budget, removals arrive.
    wait::eventually(
        "grants waiting for write tokens",
        std::time::Duration::from_secs(10),
        std::time::Duration::from_millis(10),
        || {
            let text = metrics.encode();
            async move {
                let waited = text
                    .lines()
                    .find(|l| l.starts_with("accessgrant_arm_throttle_wait_seconds_total"))
                    .and_then(|l| l.split_whitespace().last())
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0);
                if waited > 0.0 {
                    Ok(())
                } else {
                    Err(format!("waited {waited}"))
                }
            }
        },
    )
    .await;
    let removals: Vec<_> = (0..3)
        .map(|i| {
            tokio::spawn(accessgrant_operator::azure::client::as_removal(send(
                c.clone(),
                format!("close-{i}"),
            )))
        })
        .collect();
    for h in grants.into_iter().chain(removals) {
        h.await.expect("join").expect("initiate");
    }
    let order: Vec<String> = calls(&sim)
        .await
        .iter()
        .filter(|c| c["operation"] == "JitNetworkAccessPolicies_Initiate")
        .map(|c| c["path"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(order.len(), 8);
    // The azure-sim log has no bodies: read the order from Azure's request list instead.
    let pol = c
        .jit_policy(SUB, "rg-sandbox", "westeurope", "default")
        .await
        .expect("get")
        .expect("exists");
    let mut reqs: Vec<_> = pol
        .requests
        .iter()
        .filter_map(|r| Some((r.start?, r.justification.clone()?)))
        .filter(|(_, j)| j.starts_with("grant-") || j.starts_with("close-"))
        .collect();
    reqs.sort();
    let kinds: Vec<&str> = reqs.iter().map(|(_, j)| &j[..5]).collect();
    assert_eq!(
        kinds,
        [
            "grant", "close", "close", "close", "grant", "grant", "grant", "grant"
        ],
        "removals overtake waiting grants: {reqs:?}"
    );
}

/// A client sized like ARM's buckets (reads: `burst`, `per_sec`).
fn client_with_reads(sim: &RunningSim, burst: f64, per_sec: f64) -> ArmClient {
    let mut cfg = config(sim);
    cfg.reads.capacity = burst;
    cfg.reads.refill_per_sec = per_sec;
    ArmClient::new(cfg, None).expect("client")
}

#[tokio::test]
async fn a_restarted_client_seeds_its_buckets_from_the_first_answer() {
    let sim = sim().await;
    control(&sim)
        .put(format!("{}/_sim/throttle", sim.base_url()))
        .json(&json!({"reads": {"burst": 10, "perSecond": 5}}))
        .send()
        .await
        .expect("throttle")
        .error_for_status()
        .expect("throttle accepted");
    // A previous life of the operator spent most of the read budget.
    let before = client_with_reads(&sim, 10.0, 5.0);
    for _ in 0..8 {
        before
            .jit_policy(SUB, "rg-sandbox", "westeurope", "default")
            .await
            .expect("read");
    }
    drop(before);
    // The new process knows nothing of that; a burst of reads must not run into ARM's limit.
    let after = std::sync::Arc::new(client_with_reads(&sim, 10.0, 5.0));
    let reads: Vec<_> = (0..12)
        .map(|_| {
            let c = after.clone();
            tokio::spawn(async move {
                c.jit_policy(SUB, "rg-sandbox", "westeurope", "default")
                    .await
                    .map(|_| ())
            })
        })
        .collect();
    for r in reads {
        r.await.expect("join").expect("read after the restart");
    }
    let log = calls(&sim).await;
    let reads: Vec<&Value> = log
        .iter()
        .filter(|c| c["operation"] == "JitNetworkAccessPolicies_Get")
        .collect();
    assert_eq!(reads.len(), 20, "8 + 12 reads reached azure-sim");
    let throttled = reads.iter().filter(|c| c["status"] == 429).count();
    assert_eq!(
        throttled, 0,
        "the restarted client took its budget from Azure's first answer, not from a full bucket"
    );
}
