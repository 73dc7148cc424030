//! High availability of admission: two replicas with leader election behind a Service
//! stand-in (`accessgrant_sim::service`, routing to replicas whose `/readyz/admission` passes),
//! the webhooks registered with failurePolicy Fail. While grants (every fifth break-glass) are
//! created every 200 ms, the leader is SIGKILLed, and then both replicas are restarted one
//! after the other: no create is refused, every grant becomes Active, none is granted twice.

use crate::e2e_support;
use crate::wait;

use accessgrant_operator::api::*;
use accessgrant_sim::service::{Endpoint, Service};
use e2e_support::soak::{roomy_world, soak_vm};
use e2e_support::*;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, PostParams};
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;

const GRANTS: usize = 90;

fn free() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

struct Replica {
    name: &'static str,
    id: &'static str,
    webhook: SocketAddr,
    admin: SocketAddr,
}

impl Replica {
    fn env(&self) -> Vec<(String, String)> {
        [
            ("LEADER_ELECT", "true"),
            ("POD_NAME", self.id),
            ("LEADER_LEASE_DURATION", "PT4S"),
            ("LEADER_RENEW_DEADLINE", "PT3S"),
            ("LEADER_RETRY_PERIOD", "PT1S"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .chain([
            ("WEBHOOK_ADDR".to_string(), self.webhook.to_string()),
            ("ADMIN_ADDR".to_string(), self.admin.to_string()),
        ])
        .collect()
    }
}

fn start(env: &mut Env, r: &Replica) {
    let vars = r.env();
    let refs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.start_replica(r.name, &refs);
}

async fn leader(env: &Env) -> Option<String> {
    Api::<Lease>::namespaced(env.client.clone(), OPERATOR_NAMESPACE)
        .get_opt("accessgrant-operator")
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

async fn all_ready(service: &Service, what: &str) {
    wait::eventually(
        what,
        Duration::from_secs(60),
        Duration::from_millis(100),
        || {
            let r = service.ready();
            async move {
                if r.iter().all(|x| *x) {
                    Ok(())
                } else {
                    Err(format!("{r:?}"))
                }
            }
        },
    )
    .await
}

fn grant(i: usize) -> AccessGrant {
    let mut g = jit_grant(&format!("ha-{i}"), 1, 22, "10.0.0.1", "PT1H");
    if let Some(jit) = g.spec.jit.as_mut() {
        jit.virtual_machines[0].id = soak_vm(i);
    }
    if i.is_multiple_of(5) {
        g.spec.break_glass = Some(true);
    }
    g
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admission_survives_a_killed_leader_and_a_rolling_restart() {
    let _heavy = crate::one_heavy_at_a_time().await;
    let mut env = Env::start_bare_with(|w| roomy_world(w, GRANTS, 0)).await;
    env.namespace_with_policy(
        "ha",
        json!({
            "jit": {"virtualMachines": [format!("{}/providers/Microsoft.Compute/virtualMachines/*", rg())], "ports": [22], "sourcePrefixes": ["10.0.0.0/8"]},
            "maxDuration": "PT2H",
            "breakGlass": {"maxDuration": "PT1H", "requesters": ["group:oncall"]}
        }),
    )
    .await;
    let replicas = [
        Replica {
            name: "a",
            id: "replica-a",
            webhook: free(),
            admin: free(),
        },
        Replica {
            name: "b",
            id: "replica-b",
            webhook: free(),
            admin: free(),
        },
    ];
    let service = Service::start(
        replicas
            .iter()
            .map(|r| Endpoint {
                addr: r.webhook,
                readiness_url: format!("http://{}/readyz/admission", r.admin),
            })
            .collect(),
        Duration::from_millis(100),
    )
    .await
    .expect("service");
    env.register_webhooks(service.addr()).await;
    for r in &replicas {
        start(&mut env, r);
    }
    all_ready(&service, "both replicas serving admission").await;
    // A standby replica serves admission too (it is Ready without being the leader).
    let first_leader = wait::eventually(
        "a leader",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async { leader(&env).await.ok_or_else(|| "none yet".to_string()) },
    )
    .await;

    let oncall = env.client_as("olga@example.com", &["oncall"]).await;
    let grants: Api<AccessGrant> = Api::namespaced(oncall, "ha");
    let mut refused = Vec::new();
    let mut events = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    for i in 0..GRANTS {
        tick.tick().await;
        if let Err(e) = grants.create(&PostParams::default(), &grant(i)).await {
            refused.push(format!("ha-{i}: {e}"));
        }
        match i {
            // The leader dies.
            15 => {
                let victim = replicas
                    .iter()
                    .find(|r| r.id == first_leader)
                    .expect("leader is a replica");
                env.kill_replica(victim.name);
                events.push(format!("killed leader {} after ha-{i}", victim.id));
            }
            // It comes back (a new pod), then the other one is restarted: a rolling restart.
            35 => {
                let victim = replicas.iter().find(|r| r.id == first_leader).expect("r");
                start(&mut env, victim);
                events.push(format!("restarted {} after ha-{i}", victim.id));
            }
            55 => {
                let other = replicas.iter().find(|r| r.id != first_leader).expect("r");
                env.kill_replica(other.name);
                events.push(format!("killed {} after ha-{i}", other.id));
            }
            70 => {
                let other = replicas.iter().find(|r| r.id != first_leader).expect("r");
                start(&mut env, other);
                events.push(format!("restarted {} after ha-{i}", other.id));
            }
            _ => {}
        }
    }
    assert!(
        refused.is_empty(),
        "{} of {GRANTS} creates refused ({events:?}):\n{}",
        refused.len(),
        refused.join("\n")
    );

    let admin_grants: Api<AccessGrant> = Api::namespaced(env.client.clone(), "ha");
    for i in 0..GRANTS {
        let g = wait_for(
            &admin_grants,
            &format!("ha-{i}"),
            "Active",
            120,
            phase(Phase::Active),
        )
        .await;
        let st = g.status.as_ref().expect("status");
        assert!(
            st.requested_by.as_deref() == Some("olga@example.com"),
            "ha-{i} is stamped by its requester: {:?}",
            st.requested_by
        );
    }
    let initiated = count(&env.calls().await, "JitNetworkAccessPolicies_Initiate");
    assert_eq!(
        initiated, GRANTS,
        "one JIT request per grant, none twice ({events:?})"
    );
}
