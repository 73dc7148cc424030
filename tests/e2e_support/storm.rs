//! A throttling storm (tests/storm.rs runs a one-minute one, benches/throttle_storm.rs one of
//! minutes): azure-sim answers every ARM call on the sandbox subscription with 429 and
//! Retry-After for the whole storm, while grants wait on it and on a second, healthy
//! subscription. Checked from the call log and the grants: no call reaches a throttled bucket
//! before its Retry-After, the healthy subscription's grants become Active during the storm, and
//! every grant converges once it ends.

use super::audit::{Tracked, audit};
use super::*;
use accessgrant_operator::api::{AccessGrant, Phase};
use kube::api::DeleteParams;
use std::collections::BTreeMap;
use std::time::Instant;

/// The healthy second subscription (same tenant; the operator is admin there and eligible for
/// Reader).
pub const SUB_B: &str = "7d2e4f6a-1b3c-4d5e-8f9a-0b1c2d3e4f5a";

fn rg_b() -> String {
    format!("/subscriptions/{SUB_B}/resourceGroups/rg-storm")
}

fn role_b() -> String {
    format!("/subscriptions/{SUB_B}/providers/Microsoft.Authorization/roleDefinitions/{READER}")
}

fn vm_b(n: u8) -> String {
    format!(
        "{}/providers/Microsoft.Compute/virtualMachines/vm-storm-{n}",
        rg_b()
    )
}

/// Adds subscription B (rg-storm, two VMs in a JIT policy `default`, the operator admin there
/// and eligible for Reader).
pub fn two_subscriptions(w: &mut accessgrant_sim::azure::World) {
    w.subscriptions.push(
        serde_json::from_value(serde_json::json!({
            "id": SUB_B, "displayName": "Storm B", "tenantId": TENANT,
            "resourceGroups": [{"name": "rg-storm", "location": "westeurope"}]
        }))
        .expect("subscription"),
    );
    for n in 1..=2 {
        w.virtual_machines.push(
            serde_json::from_value(serde_json::json!({"id": vm_b(n), "location": "westeurope"}))
                .expect("vm"),
        );
    }
    let ports = serde_json::json!([
        {"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "10.0.0.0/8", "maxRequestAccessDuration": "PT3H"},
        {"number": 3389, "protocol": "TCP", "allowedSourceAddressPrefix": "10.0.0.0/8", "maxRequestAccessDuration": "PT3H"}
    ]);
    w.jit_policies.push(
        serde_json::from_value(serde_json::json!({
            "subscriptionId": SUB_B, "resourceGroup": "rg-storm", "location": "westeurope",
            "name": "default", "kind": "Basic",
            "properties": {"virtualMachines": [
                {"id": vm_b(1), "ports": ports.clone()},
                {"id": vm_b(2), "ports": ports}
            ]}
        }))
        .expect("jit policy"),
    );
    if let Some(op) = w
        .principals
        .iter_mut()
        .find(|p| p.object_id == OPERATOR_OID)
    {
        op.admin_scopes.push(format!("/subscriptions/{SUB_B}"));
    }
    w.eligibilities.push(
        serde_json::from_value(serde_json::json!({
            "id": "5b6c7d8e-9f0a-4b1c-8d2e-3f4a5b6c7d81",
            "instanceId": "5b6c7d8e-9f0a-4b1c-8d2e-3f4a5b6c7d82",
            "scope": format!("/subscriptions/{SUB_B}"),
            "roleDefinitionId": READER,
            "principalId": OPERATOR_OID,
        }))
        .expect("eligibility"),
    );
}

/// An AccessPolicy spec allowing both subscriptions.
fn policy_spec() -> Value {
    serde_json::json!({
        "jit": {
            "virtualMachines": [
                format!("{}/providers/Microsoft.Compute/virtualMachines/*", rg()),
                format!("{}/providers/Microsoft.Compute/virtualMachines/*", rg_b())
            ],
            "ports": [22, 3389],
            "sourcePrefixes": ["10.0.0.0/8"]
        },
        "pim": {
            "scopes": [format!("/subscriptions/{SUB}"), format!("/subscriptions/{SUB_B}")],
            "roleDefinitionIds": [role(READER), role_b()],
            "principals": [OPERATOR_OID, DEPLOYER_OID],
            "modes": ["Activate", "Assign"]
        },
        "maxDuration": "PT8H"
    })
}

/// Per subscription: tag, resource group id and name, role id, VM id by number.
type SubFixture = (&'static str, String, &'static str, String, fn(u8) -> String);

/// The grants: on each subscription two JIT, one SelfActivate and one AdminAssign.
fn grants(sub: &str) -> Vec<AccessGrant> {
    let (tag, rg_id, rg_name, role_id, vm_of): SubFixture = if sub == SUB {
        ("a", rg(), "rg-sandbox", role(READER), vm)
    } else {
        ("b", rg_b(), "rg-storm", role_b(), vm_b)
    };
    let jit = |name: String, n: u8, port: u16| -> AccessGrant {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "accessgrant.io/v1alpha1", "kind": "AccessGrant",
            "metadata": {"name": name},
            "spec": {"justification": "storm", "duration": "PT30M", "jit": {"subscriptionId": sub, "resourceGroup": rg_name, "location": "westeurope", "policyName": "default",
                "virtualMachines": [{"id": vm_of(n), "ports": [{"number": port, "allowedSourceAddressPrefix": "10.3.0.1"}]}]}}
        }))
        .expect("jit grant")
    };
    let pim = |name: String, mode: &str, principal: &str| -> AccessGrant {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "accessgrant.io/v1alpha1", "kind": "AccessGrant",
            "metadata": {"name": name},
            "spec": {"justification": "storm", "duration": "PT30M", "pim": {"mode": mode, "scope": rg_id, "roleDefinitionId": role_id, "principalId": principal}}
        }))
        .expect("pim grant")
    };
    vec![
        jit(format!("{tag}-jit-1"), 1, 22),
        jit(format!("{tag}-jit-2"), 2, 3389),
        pim(format!("{tag}-activate"), "Activate", OPERATOR_OID),
        pim(format!("{tag}-assign"), "Assign", DEPLOYER_OID),
    ]
}

/// Figures of a storm.
#[derive(Debug, Default)]
pub struct StormReport {
    pub storm_secs: u64,
    pub retry_after_secs: u64,
    /// Calls to the throttled subscription during the storm, and how many got 429.
    pub throttled_calls: usize,
    pub throttled_429: usize,
    /// Calls that reached a throttled bucket before its Retry-After (must be 0).
    pub early_calls: Vec<String>,
    /// Shortest gap between a 429 and the next call in its bucket (beyond in-flight calls).
    pub min_gap_ms: Option<i64>,
    /// Seconds from the storm's start until every healthy-subscription grant was Active.
    pub healthy_active_secs: f64,
    /// Seconds from the storm's end until every throttled-subscription grant was Active.
    pub converge_after_storm_secs: f64,
    /// The throttled subscription's grants near the storm's end (phase, Retrying condition).
    pub waiting: Vec<String>,
    /// Seconds from the storm's end to the first call the throttled subscription answered.
    pub first_success_after_storm_secs: Option<f64>,
    pub secs: f64,
}

fn t(v: &Value) -> chrono::DateTime<chrono::FixedOffset> {
    chrono::DateTime::parse_from_rfc3339(v["time"].as_str().expect("time")).expect("time")
}

fn class(method: &str) -> &'static str {
    match method {
        "GET" | "HEAD" => "read",
        "DELETE" => "delete",
        _ => "write",
    }
}

fn subscription(path: &str) -> Option<String> {
    let mut segs = path.split(['/', '?']);
    while let Some(s) = segs.next() {
        if s.eq_ignore_ascii_case("subscriptions") {
            return segs.next().map(str::to_ascii_lowercase);
        }
    }
    None
}

/// A call arriving within this long after a 429 in its bucket was already on its way when the
/// 429 was sent (concurrent reconciles share the bucket): not a call made after the answer.
const IN_FLIGHT: chrono::Duration = chrono::Duration::milliseconds(250);

/// Runs a storm of `storm_secs` with `retry_after` on the sandbox subscription.
pub async fn run(storm_secs: u64, retry_after: u64) -> StormReport {
    let started = Instant::now();
    let mut env = Env::start_bare_with(two_subscriptions).await;
    let api = env.namespace_with_policy("storm", policy_spec()).await;
    env.start_operator();
    // The operator is ready (its token obtained) before the storm, so the storm hits ARM only.
    wait_ready(&env).await;
    let r = env
        .control(
            reqwest::Method::POST,
            "/_sim/faults",
            Some(serde_json::json!({
                "operation": "*", "subscription": SUB, "kind": "throttle",
                "retryAfterSeconds": retry_after, "durationSeconds": storm_secs
            })),
        )
        .await;
    assert_eq!(r.status().as_u16(), 201, "storm fault added");
    let storm_start = Instant::now();
    let storm_end_wall =
        accessgrant_operator::clock::now() + chrono::Duration::seconds(storm_secs as i64);
    let pp = PostParams::default();
    let mut tracked = vec![];
    for g in grants(SUB).into_iter().chain(grants(SUB_B)) {
        tracked.push(Tracked::of(&api.create(&pp, &g).await.expect("create")));
    }

    // The healthy subscription is unaffected: Active during the storm.
    for g in grants(SUB_B) {
        let name = g.metadata.name.clone().expect("name");
        super::soak::reach(&api, &name, Phase::Active, storm_secs).await;
    }
    let healthy_active_secs = storm_start.elapsed().as_secs_f64();
    assert!(
        healthy_active_secs < storm_secs as f64,
        "the healthy subscription's grants became Active only after the storm ({healthy_active_secs:.1}s)"
    );
    // Near the storm's end, the throttled subscription's grants are still waiting: neither
    // Active (nothing got through) nor Failed (a 429 is transient).
    let late = storm_end_wall - chrono::Duration::seconds(3);
    crate::wait::eventually(
        "the last seconds of the storm",
        Duration::from_secs(storm_secs + 10),
        Duration::from_millis(200),
        || async move {
            if accessgrant_operator::clock::now() >= late {
                Ok(())
            } else {
                Err(format!("waiting for {late}"))
            }
        },
    )
    .await;
    let mut waiting = vec![];
    for g in grants(SUB) {
        let name = g.metadata.name.clone().expect("name");
        let st = api
            .get(&name)
            .await
            .expect("get")
            .status
            .unwrap_or_default();
        assert!(
            !matches!(st.phase, Phase::Active | Phase::Failed | Phase::Denied),
            "{name} is {:?} in the middle of a storm on its subscription",
            st.phase
        );
        waiting.push(format!(
            "{name}: {:?}{}",
            st.phase,
            st.conditions
                .iter()
                .find(|c| c.type_ == "Retrying")
                .map(|c| format!(" (Retrying {} {})", c.status, c.reason))
                .unwrap_or_default()
        ));
    }

    // The storm ends; every grant converges.
    crate::wait::eventually(
        "the storm to end",
        Duration::from_secs(storm_secs + 10),
        Duration::from_millis(200),
        || async move {
            if accessgrant_operator::clock::now() >= storm_end_wall {
                Ok(())
            } else {
                Err(format!("storm ends at {storm_end_wall}"))
            }
        },
    )
    .await;
    let storm_over = Instant::now();
    for g in grants(SUB) {
        let name = g.metadata.name.clone().expect("name");
        super::soak::reach(&api, &name, Phase::Active, 120).await;
    }
    let converge_after_storm_secs = storm_over.elapsed().as_secs_f64();

    // The call log: nothing reached a throttled bucket before its Retry-After.
    let calls = env.calls().await;
    let sub_a = SUB.to_ascii_lowercase();
    let mut buckets: BTreeMap<(String, String, &str), Vec<&Value>> = BTreeMap::new();
    for c in &calls {
        let path = c["path"].as_str().unwrap_or_default();
        if let Some(s) = subscription(path) {
            let caller = c["caller"].as_str().unwrap_or("-").to_string();
            let m = class(c["method"].as_str().unwrap_or_default());
            buckets.entry((s, caller, m)).or_default().push(c);
        }
    }
    let mut early = vec![];
    let mut min_gap: Option<i64> = None;
    let mut throttled_calls = 0;
    let mut throttled_429 = 0;
    for ((s, caller, m), list) in &buckets {
        if *s != sub_a {
            assert!(
                list.iter().all(|c| c["status"] != 429),
                "the healthy subscription was throttled ({caller} {m})"
            );
            continue;
        }
        throttled_calls += list.len();
        for (i, c) in list.iter().enumerate() {
            if c["status"] != 429 {
                continue;
            }
            throttled_429 += 1;
            let ra = chrono::Duration::seconds(retry_after as i64);
            for n in &list[i + 1..] {
                let d = t(n) - t(c);
                if d <= IN_FLIGHT {
                    continue;
                }
                min_gap =
                    Some(min_gap.map_or(d.num_milliseconds(), |g| g.min(d.num_milliseconds())));
                if d < ra {
                    early.push(format!(
                        "{} {} ({caller}, {m}) {} ms after a 429 at {} with Retry-After {retry_after}",
                        n["method"].as_str().unwrap_or_default(),
                        n["path"].as_str().unwrap_or_default(),
                        d.num_milliseconds(),
                        c["time"].as_str().unwrap_or_default()
                    ));
                }
                break;
            }
        }
    }

    let first_success_after_storm_secs = buckets
        .iter()
        .filter(|((s, _, _), _)| *s == sub_a)
        .flat_map(|(_, list)| list.iter())
        .filter(|c| c["status"].as_u64().is_some_and(|s| s < 400))
        .map(|c| t(c))
        .min()
        .map(|first| {
            (first.with_timezone(&chrono::Utc) - storm_end_wall).num_milliseconds() as f64 / 1000.0
        });

    // Nothing lost, nothing doubled: delete everything and audit.
    let live: Vec<AccessGrant> = api.list(&Default::default()).await.expect("list").items;
    let a = audit(
        &env.state().await,
        &tracked,
        &live,
        &[OPERATOR_OID, DEPLOYER_OID],
        true,
    );
    a.assert_clean("after the storm");
    for tr in &tracked {
        let made = a.jit_grants(&tr.key()) + a.pim_grants(&tr.key());
        assert_eq!(made, 1, "{}: one grant request, storm or not", tr.key());
    }
    for tr in &tracked {
        api.delete(&tr.name, &DeleteParams::default())
            .await
            .expect("delete");
    }
    for tr in &tracked {
        wait_gone(&api, &tr.name, 90).await;
    }
    audit(
        &env.state().await,
        &tracked,
        &[],
        &[OPERATOR_OID, DEPLOYER_OID],
        true,
    )
    .assert_clean("after the storm, deleted");
    env.kill_operator();
    StormReport {
        storm_secs,
        retry_after_secs: retry_after,
        throttled_calls,
        throttled_429,
        early_calls: early,
        min_gap_ms: min_gap,
        healthy_active_secs,
        converge_after_storm_secs,
        waiting,
        first_success_after_storm_secs,
        secs: started.elapsed().as_secs_f64(),
    }
}

async fn wait_ready(env: &Env) {
    crate::wait::eventually(
        "the operator to be ready",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            // Connection refused until the admin server listens: not ready yet.
            let c = accessgrant_operator::azure::client::http_client(None, Duration::from_secs(5))
                .map_err(|e| e.to_string())?;
            match c.get(format!("{}/readyz", env.admin_url())).send().await {
                Ok(r) if r.status().as_u16() == 200 => Ok(()),
                Ok(r) => Err(format!("readyz {}", r.status())),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await;
}
