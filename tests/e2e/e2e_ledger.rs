//! Ledger integrity: no Azure access outlives its grant, whatever ordinary users do to the
//! Kubernetes objects with kubectl. Each attack of the red-team run is here, run through the
//! real kubectl as an ordinary user, and afterwards azure-sim's state must show no access from
//! the grant:
//! - the finalizer removed by hand (refused by the webhook; with the webhook bypassed, put back
//!   by the controller);
//! - the status written by someone else (refused by the webhook; with the webhook bypassed,
//!   Azure has the last word before the finalizer goes);
//! - a namespace label change that leaves no policy selecting the namespace (access taken away
//!   within 5 s);
//! - a stamp replayed onto a re-created grant (untrusted: the break-glass grant is denied).

use crate::e2e_support;
use crate::wait;

use accessgrant_operator::api::*;
use e2e_support::audit::{Tracked, access_of};
use e2e_support::*;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use serde_json::json;
use std::time::{Duration, Instant};

const NS: &str = "ledger";
const ALICE: &str = "alice@example.com";
const MALLORY: &str = "mallory@example.com";

/// A user who may write AccessGrant status (as a namespace admin with broad rights might):
/// only the webhook stands between them and the audit record.
async fn status_writer(env: &Env, user: &str) {
    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "accessgrant-status-writer"},
        "rules": [{"apiGroups": ["accessgrant.io"], "resources": ["accessgrants/status"], "verbs": ["get", "patch", "update"]}]
    });
    let out = env
        .kubectl(None, &["apply", "-f", "-"], Some(&role.to_string()))
        .await;
    assert!(out.ok, "status-writer role: {}", out.stderr);
    env.bind(user, "accessgrant-status-writer").await;
    env.bind(user, "accessgrant-requester").await;
}

/// `kubectl patch accessgrant/NAME --type json` removing the finalizers, as `user`.
async fn remove_finalizer(env: &Env, user: Option<(&str, &[&str])>, name: &str) -> Kubectl {
    let target = format!("accessgrant/{name}");
    env.kubectl(
        user,
        &[
            "patch",
            &target,
            "-n",
            NS,
            "--type",
            "json",
            "-p",
            r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
        ],
        None,
    )
    .await
}

/// `kubectl patch accessgrant/NAME --subresource=status` writing `phase: Revoked`, as `user`.
async fn forge_revoked(env: &Env, user: Option<(&str, &[&str])>, name: &str) -> Kubectl {
    let target = format!("accessgrant/{name}");
    env.kubectl(
        user,
        &[
            "patch",
            &target,
            "-n",
            NS,
            "--subresource=status",
            "--type",
            "merge",
            "-p",
            r#"{"status":{"phase":"Revoked"}}"#,
        ],
        None,
    )
    .await
}

fn manifest(g: &AccessGrant) -> String {
    let mut v = serde_json::to_value(g).expect("json");
    v["metadata"]["namespace"] = json!(NS);
    v.to_string()
}

fn assign(name: &str, role_guid: &str, principal: &str) -> AccessGrant {
    with_spec(pim_grant(name, "Assign", role_guid, "PT30M"), |s| {
        s.pim.as_mut().expect("pim").principal_id = principal.into()
    })
}

fn pim_access(env_state: &accessgrant_sim::azure::view::SimState, principal: &str) -> usize {
    env_state
        .role_assignment_schedule_instances
        .iter()
        .filter(|i| {
            i.properties.principal_id.eq_ignore_ascii_case(principal)
                && i.properties.role_definition_id.ends_with(READER)
        })
        .count()
}

async fn wait_no_access(env: &Env, what: &str, tracked: &Tracked, pim: Option<(&str, &str, &str)>) {
    wait::eventually(
        what,
        Duration::from_secs(60),
        Duration::from_millis(100),
        || async {
            let left = access_of(&env.state().await, tracked, pim);
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("still open: {left:?}"))
            }
        },
    )
    .await;
}

fn policy_spec() -> serde_json::Value {
    json!({
        "jit": {"virtualMachines": [format!("{}/providers/Microsoft.Compute/virtualMachines/*", rg())], "ports": [22, 3389], "sourcePrefixes": ["10.0.0.0/8"]},
        "pim": {"scopes": [rg()], "roleDefinitionIds": [role(READER)], "principals": [OPERATOR_OID, DEPLOYER_OID], "modes": ["Assign"]},
        "maxDuration": "PT2H",
        "breakGlass": {"maxDuration": "PT1H", "requesters": ["group:oncall"]}
    })
}

/// With the webhooks in place: removing the finalizer and writing status are refused with a
/// message saying how to revoke instead; a stamp copied onto a re-created grant (webhooks
/// bypassed) is not trusted, so the break-glass grant it was meant to open is denied.
#[tokio::test]
async fn the_webhook_refuses_finalizer_removal_and_status_writes_and_a_replayed_stamp_opens_nothing()
 {
    let mut env = Env::start_bare().await;
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    env.register_webhooks(addr).await;
    env.namespace_with_policy(NS, policy_spec()).await;
    status_writer(&env, MALLORY).await;
    env.bind(ALICE, "accessgrant-requester").await;
    env.start_operator_with(&[("WEBHOOK_ADDR", &addr.to_string())]);
    env.webhook_serving(NS, ALICE, &["oncall"]).await;
    let api: Api<AccessGrant> = Api::namespaced(env.client.clone(), NS);
    let alice = Some((ALICE, &["oncall"][..]));
    let mallory = Some((MALLORY, &[][..]));

    // Break-glass by alice (on call), stamped by the webhook; kept to replay its stamp later.
    let bg = with_spec(
        jit_grant("breakglass-ssh", 1, 22, "10.9.9.9", "PT30M"),
        |s| s.break_glass = Some(true),
    );
    let out = env
        .kubectl(alice, &["apply", "-f", "-"], Some(&manifest(&bg)))
        .await;
    assert!(out.ok, "break-glass create: {}", out.stderr);
    let first = wait_for(&api, "breakglass-ssh", "Active", 60, phase(Phase::Active)).await;
    let copied = first.annotations().clone();
    assert!(
        copied.contains_key("accessgrant.io/requester"),
        "stamped: {copied:?}"
    );

    // An Active AdminAssign grant by alice.
    let out = env
        .kubectl(
            alice,
            &["apply", "-f", "-"],
            Some(&manifest(&assign("held", READER, DEPLOYER_OID))),
        )
        .await;
    assert!(out.ok, "create: {}", out.stderr);
    let held = wait_for(&api, "held", "Active", 60, phase(Phase::Active)).await;
    let held_t = Tracked::of(&held);
    let pim_target = (DEPLOYER_OID, READER, rg());
    let pim_target = Some((pim_target.0, pim_target.1, pim_target.2.as_str()));

    // Attack 1: the finalizer removed by hand.
    let out = remove_finalizer(&env, alice, "held").await;
    assert!(!out.ok, "finalizer removal was accepted: {}", out.stdout);
    assert!(
        out.stderr.contains("is removed only by the operator")
            && out.stderr.contains("spec.suspend: true"),
        "refusal says why and how to revoke: {}",
        out.stderr
    );

    // Attack 2: status written by someone else.
    let out = forge_revoked(&env, mallory, "held").await;
    assert!(!out.ok, "status write was accepted: {}", out.stdout);
    assert!(
        out.stderr.contains("written only by the operator"),
        "refusal names the rule: {}",
        out.stderr
    );
    let now = api.get("held").await.expect("held");
    assert_eq!(now.status.as_ref().map(|s| s.phase), Some(Phase::Active));
    assert!(
        now.finalizers()
            .iter()
            .any(|f| f == "accessgrant.io/revoke")
    );
    assert!(
        !access_of(&env.state().await, &held_t, pim_target).is_empty(),
        "access still in place for the grant that still holds it"
    );
    // The way that works: delete. Access goes, then the object.
    let out = env
        .kubectl(
            alice,
            &["delete", "accessgrant/held", "-n", NS, "--wait=false"],
            None,
        )
        .await;
    assert!(out.ok, "delete: {}", out.stderr);
    wait_gone(&api, "held", 60).await;
    wait_no_access(&env, "held's assignment removed", &held_t, pim_target).await;

    // Attack 4: the stamp replayed onto a re-created grant, with the webhooks bypassed.
    let bg_t = Tracked::of(&first);
    let out = env
        .kubectl(
            alice,
            &["delete", "accessgrant/breakglass-ssh", "-n", NS],
            None,
        )
        .await;
    assert!(out.ok, "delete break-glass: {}", out.stderr);
    wait_gone(&api, "breakglass-ssh", 60).await;
    wait_no_access(&env, "break-glass ports closed", &bg_t, None).await;
    for kind in [
        "validatingwebhookconfiguration",
        "mutatingwebhookconfiguration",
    ] {
        let out = env
            .kubectl(None, &["delete", kind, "accessgrant-operator"], None)
            .await;
        assert!(out.ok, "bypassing the webhooks: {}", out.stderr);
    }
    // The copy is made later than a mutating webhook call could take.
    let stamped_at = first
        .status
        .as_ref()
        .and_then(|s| s.requester.as_ref())
        .map(|r| r.stamped_at)
        .expect("stamped");
    wait::eventually(
        "the stamp to be older than a webhook call may take",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || async move {
            if accessgrant_operator::clock::now()
                > stamped_at
                    + accessgrant_operator::stamp::CREATE_WINDOW
                    + chrono::Duration::seconds(2)
            {
                Ok(())
            } else {
                Err("not yet".to_string())
            }
        },
    )
    .await;
    let mut replay = bg.clone();
    replay.metadata.annotations = Some(copied);
    let out = env
        .kubectl(mallory, &["apply", "-f", "-"], Some(&manifest(&replay)))
        .await;
    assert!(out.ok, "re-create (no webhook): {}", out.stderr);
    let replayed = wait_for(&api, "breakglass-ssh", "Denied", 60, phase(Phase::Denied)).await;
    let st = replayed.status.clone().expect("status");
    assert!(
        st.requester.is_none(),
        "requester not trusted: {:?}",
        st.requester
    );
    assert!(
        st.history
            .iter()
            .any(|h| h.event == "StampInvalid" && h.detail.contains("older than the object")),
        "history says why: {:?}",
        st.history
    );
    let replay_t = Tracked::of(&replayed);
    assert!(
        access_of(&env.state().await, &replay_t, None).is_empty(),
        "the replayed break-glass grant opened access"
    );
}

/// With the webhooks bypassed (not registered): a finalizer removed by hand is put back before
/// the grant can go, and a forged `Revoked` status does not stop the revocation on delete.
#[tokio::test]
async fn with_the_webhook_bypassed_the_controller_still_revokes() {
    let mut env = Env::start_bare().await;
    env.namespace_with_policy(NS, policy_spec()).await;
    status_writer(&env, MALLORY).await;
    env.bind(ALICE, "accessgrant-requester").await;
    env.start_operator();
    let api: Api<AccessGrant> = Api::namespaced(env.client.clone(), NS);
    let alice = Some((ALICE, &[][..]));
    let mallory = Some((MALLORY, &[][..]));
    let deployer = Some((DEPLOYER_OID, READER, rg()));
    let deployer = deployer.as_ref().map(|(a, b, c)| (*a, *b, c.as_str()));
    let operator = Some((OPERATOR_OID, READER, rg()));
    let operator = operator.as_ref().map(|(a, b, c)| (*a, *b, c.as_str()));

    for g in [
        assign("unguarded", READER, DEPLOYER_OID),
        assign("forged-pim", READER, OPERATOR_OID),
        jit_grant("forged-jit", 2, 3389, "10.3.3.3", "PT30M"),
    ] {
        let out = env
            .kubectl(alice, &["apply", "-f", "-"], Some(&manifest(&g)))
            .await;
        assert!(out.ok, "create: {}", out.stderr);
    }
    let mut tracked = std::collections::BTreeMap::new();
    for n in ["unguarded", "forged-pim", "forged-jit"] {
        let g = wait_for(&api, n, "Active", 60, phase(Phase::Active)).await;
        tracked.insert(n, Tracked::of(&g));
    }

    // Attack 1 without the webhook: the finalizer comes back.
    let out = remove_finalizer(&env, alice, "unguarded").await;
    assert!(out.ok, "no webhook: the patch goes through: {}", out.stderr);
    let api2 = api.clone();
    wait::eventually(
        "the controller to put the finalizer back",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let api = api2.clone();
            async move {
                let g = api.get("unguarded").await.map_err(|e| e.to_string())?;
                let back = g.finalizers().iter().any(|f| f == "accessgrant.io/revoke");
                let noted = g
                    .status
                    .as_ref()
                    .is_some_and(|s| s.history.iter().any(|h| h.event == "FinalizerRestored"));
                if back && noted {
                    Ok(())
                } else {
                    Err(format!("finalizers {:?}", g.finalizers()))
                }
            }
        },
    )
    .await;

    // Attack 2 without the webhook: a forged terminal phase, then delete.
    for n in ["forged-pim", "forged-jit"] {
        let out = forge_revoked(&env, mallory, n).await;
        assert!(
            out.ok,
            "no webhook: the status write goes through: {}",
            out.stderr
        );
    }
    for n in ["unguarded", "forged-pim", "forged-jit"] {
        let out = env
            .kubectl(
                alice,
                &[
                    "delete",
                    &format!("accessgrant/{}", n),
                    "-n",
                    NS,
                    "--wait=false",
                ],
                None,
            )
            .await;
        assert!(out.ok, "delete {n}: {}", out.stderr);
    }
    for n in ["unguarded", "forged-pim", "forged-jit"] {
        wait_gone(&api, n, 60).await;
    }
    wait_no_access(
        &env,
        "unguarded's assignment removed",
        &tracked["unguarded"],
        deployer,
    )
    .await;
    wait_no_access(
        &env,
        "forged-pim's assignment removed",
        &tracked["forged-pim"],
        operator,
    )
    .await;
    wait_no_access(
        &env,
        "forged-jit's port closed",
        &tracked["forged-jit"],
        None,
    )
    .await;
    let st = env.state().await;
    assert_eq!(
        pim_access(&st, DEPLOYER_OID) + pim_access(&st, OPERATOR_OID),
        0
    );

    // Attack 1, fast: the finalizer removed and the grant deleted at once. Whether the
    // controller put the finalizer back in between or the grant vanished first (then the
    // sweep runs at once, not at its next PT1M tick), the port closes within seconds.
    let out = env
        .kubectl(
            alice,
            &["apply", "-f", "-"],
            Some(&manifest(&jit_grant(
                "vanish", 1, 3389, "10.6.6.6", "PT30M",
            ))),
        )
        .await;
    assert!(out.ok, "create: {}", out.stderr);
    let g = wait_for(&api, "vanish", "Active", 60, phase(Phase::Active)).await;
    let vanish = Tracked::of(&g);
    let out = remove_finalizer(&env, alice, "vanish").await;
    assert!(out.ok, "{}", out.stderr);
    let out = env
        .kubectl(
            alice,
            &["delete", "accessgrant/vanish", "-n", NS, "--wait=false"],
            None,
        )
        .await;
    assert!(out.ok, "{}", out.stderr);
    wait_gone(&api, "vanish", 60).await;
    wait::eventually(
        "the vanished grant's port to close (before the sweep's next PT1M tick)",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async {
            if closing_only(&env.state().await, &vanish) {
                Ok(())
            } else {
                Err("open".to_string())
            }
        },
    )
    .await;
}

/// Removing the label through which the only policy selected a namespace takes its grants'
/// access away at once (figures: the slowest of the grants, printed).
#[tokio::test]
async fn a_namespace_label_change_takes_access_away_within_five_seconds() {
    let mut env = Env::start_bare().await;
    env.namespace_with_policy(NS, policy_spec()).await;
    // The default drift check (PT5M), not the e2e one (PT2S): the label path must act on its
    // own, not wait for the next look at Azure.
    env.start_operator_with(&[("DRIFT_CHECK_INTERVAL", "PT5M")]);
    let api: Api<AccessGrant> = Api::namespaced(env.client.clone(), NS);
    let grants = vec![
        assign("pim-deployer", READER, DEPLOYER_OID),
        assign("pim-operator", READER, OPERATOR_OID),
        jit_grant("jit-1-22", 1, 22, "10.5.0.1", "PT30M"),
        jit_grant("jit-1-3389", 1, 3389, "10.5.0.2", "PT30M"),
        jit_grant("jit-2-22", 2, 22, "10.5.0.3", "PT30M"),
        jit_grant("jit-2-3389", 2, 3389, "10.5.0.4", "PT30M"),
    ];
    for g in &grants {
        api.create(&PostParams::default(), g).await.expect("create");
    }
    let mut tracked = vec![];
    let mut latest_start = chrono::DateTime::<chrono::Utc>::MIN_UTC;
    for g in &grants {
        let name = g.name_any();
        let live = wait_for(&api, &name, "Active", 60, phase(Phase::Active)).await;
        if let Some(s) = live.status.as_ref().and_then(|s| s.start_time) {
            latest_start = latest_start.max(s);
        }
        let pim = g.spec.pim.as_ref().map(|p| p.principal_id.clone());
        tracked.push((name, Tracked::of(&live), pim));
    }
    // PIM keeps a new assignment for a minimum time (the sandbox's floor: 5 s); measure the
    // label path, not that floor.
    wait::eventually(
        "the assignments to be past Azure's minimum active time",
        Duration::from_secs(30),
        Duration::from_millis(250),
        || async move {
            if accessgrant_operator::clock::now() > latest_start + chrono::Duration::seconds(6) {
                Ok(())
            } else {
                Err("not yet".to_string())
            }
        },
    )
    .await;
    let rgs = rg();
    let started = Instant::now();
    let out = env
        .kubectl(None, &["label", "namespace", NS, "team-"], None)
        .await;
    assert!(out.ok, "kubectl label: {}", out.stderr);
    let mut gone_after: Vec<(String, Duration)> = vec![];
    let deadline = started + Duration::from_secs(60);
    while gone_after.len() < tracked.len() && Instant::now() < deadline {
        let st = env.state().await;
        for (name, t, pim) in &tracked {
            if gone_after.iter().any(|(n, _)| n == name) {
                continue;
            }
            // Taken away: no assignment; no port open from the grant's own requests (our close
            // request may hold it for the early-close window: that is the removal itself).
            let gone = match pim {
                Some(p) => access_of(&st, t, Some((p, READER, rgs.as_str())))
                    .iter()
                    .all(|a| a.starts_with("JIT")),
                None => closing_only(&st, t),
            };
            if gone {
                gone_after.push((name.clone(), started.elapsed()));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gone_after.sort_by_key(|(_, d)| *d);
    println!("namespace label removed -> access taken away, per grant: {gone_after:?}");
    assert_eq!(
        gone_after.len(),
        tracked.len(),
        "every grant's access went: {gone_after:?}"
    );
    let slowest = gone_after.last().map(|(_, d)| *d).unwrap_or_default();
    assert!(
        slowest <= Duration::from_secs(5),
        "slowest grant took {slowest:?} (target: 5 s): {gone_after:?}"
    );
    for (name, _, _) in &tracked {
        let g = api.get(name).await.expect("grant");
        let st = g.status.expect("status");
        assert!(
            matches!(st.phase, Phase::Revoked | Phase::Revoking | Phase::Denied),
            "{name}: {:?} {:?}",
            st.phase,
            st.reason
        );
    }
}

/// Only close requests of ours (the early-close window) still show a port of this grant open.
fn closing_only(st: &accessgrant_sim::azure::view::SimState, t: &Tracked) -> bool {
    let uid8: String = t.uid.chars().take(8).collect();
    let prefix = format!("[ag:{}/{}#", t.ns, t.name);
    st.jit_requests().all(|(_, r)| {
        let j = r.justification.as_deref().unwrap_or_default();
        let ours = j.contains(&prefix) && j.contains(&format!(".{uid8}]"));
        !ours
            || j.contains("closing early")
            || r.virtual_machines
                .iter()
                .flat_map(|v| &v.ports)
                .all(|p| !p.open())
    })
}

/// Grants deleted while the operator was stopped, with their finalizers removed by hand (the
/// webhook bypassed): the orphan sweep removes the access they left in Azure, and leaves alone
/// (a) access another live grant on the same target owes, (b) a pre-existing assignment a grant
/// adopted, (c) access the operator never made.
#[tokio::test]
async fn the_orphan_sweep_removes_access_whose_grant_is_gone_and_nothing_else() {
    let mut env = Env::start_bare().await;
    let mut spec = policy_spec();
    spec["pim"]["scopes"] = json!([format!("/subscriptions/{SUB}")]);
    env.namespace_with_policy(NS, spec).await;
    let sweep_every = [("ORPHAN_SWEEP_INTERVAL", "PT2S")];
    env.start_operator_with(&sweep_every);
    let api: Api<AccessGrant> = Api::namespaced(env.client.clone(), NS);
    let pp = PostParams::default();
    let sub_scope = format!("/subscriptions/{SUB}");

    // (b) An assignment made by hand before any grant (no marker), then adopted by a grant.
    let (status, body) = env
        .arm_as_operator(
            reqwest::Method::PUT,
            &format!("{sub_scope}/providers/Microsoft.Authorization/roleAssignmentScheduleRequests/{}?api-version=2020-10-01", uuid::Uuid::new_v4()),
            Some(json!({"properties": {
                "principalId": DEPLOYER_OID,
                "roleDefinitionId": role(READER),
                "requestType": "AdminAssign",
                "justification": "made by hand",
                "scheduleInfo": {"startDateTime": null, "expiration": {"type": "AfterDuration", "duration": "PT1H"}}
            }})),
        )
        .await;
    assert!(
        (200..300).contains(&status),
        "pre-existing assignment: {status} {body}"
    );
    // (c) A JIT port opened by hand (no marker).
    let (status, body) = env
        .arm_as_operator(
            reqwest::Method::POST,
            &format!("/subscriptions/{SUB}/resourceGroups/rg-sandbox/providers/Microsoft.Security/locations/westeurope/jitNetworkAccessPolicies/default/initiate?api-version=2020-01-01"),
            Some(json!({
                "virtualMachines": [{"id": vm(2), "ports": [{"number": 3389, "duration": "PT30M", "allowedSourceAddressPrefix": "10.8.0.1"}]}],
                "justification": "opened by hand"
            })),
        )
        .await;
    assert!((200..300).contains(&status), "JIT by hand: {status} {body}");

    let mut adopter = assign("adopter", READER, DEPLOYER_OID);
    adopter.spec.pim.as_mut().expect("pim").scope = sub_scope.clone();
    let grants = [
        assign("gone-pim", READER, DEPLOYER_OID),
        jit_grant("gone-jit", 1, 22, "10.7.0.1", "PT30M"),
        assign("keeper-a", READER, OPERATOR_OID),
        adopter,
    ];
    for g in &grants {
        api.create(&pp, g).await.expect("create");
    }
    let mut tracked = std::collections::BTreeMap::new();
    for g in &grants {
        let n = g.name_any();
        let live = wait_for(&api, &n, "Active", 60, phase(Phase::Active)).await;
        tracked.insert(n, Tracked::of(&live));
    }
    let adopted = api.get("adopter").await.expect("adopter");
    assert_eq!(
        adopted.status.and_then(|s| s.reason).as_deref(),
        Some("Adopted"),
        "the hand-made assignment was adopted"
    );
    // (a) keeper-b asks for keeper-a's target (and adopts keeper-a's assignment).
    api.create(&pp, &assign("keeper-b", READER, OPERATOR_OID))
        .await
        .expect("create");
    wait_for(&api, "keeper-b", "Active", 60, phase(Phase::Active)).await;

    // The operator stops; the grants go without it (finalizers removed by hand).
    env.kill_operator();
    for n in ["gone-pim", "gone-jit", "keeper-a", "adopter"] {
        let out = remove_finalizer(&env, None, n).await;
        assert!(out.ok, "remove finalizer of {n}: {}", out.stderr);
        let out = env
            .kubectl(
                None,
                &["delete", &format!("accessgrant/{n}"), "-n", NS],
                None,
            )
            .await;
        assert!(out.ok, "delete {n}: {}", out.stderr);
    }
    let before = env.state().await;
    assert!(
        !access_of(
            &before,
            &tracked["gone-pim"],
            Some((DEPLOYER_OID, READER, &rg()))
        )
        .is_empty()
            && !access_of(&before, &tracked["gone-jit"], None).is_empty(),
        "the deleted grants left access behind"
    );
    // A crash inside the sweep, just before its first removal: nothing is lost, the next
    // operator's sweep finds the same orphans again.
    env.start_operator_with(&[
        ("ORPHAN_SWEEP_INTERVAL", "PT2S"),
        ("ACCESSGRANT_CRASH_AT", "sweep-before-remove"),
    ]);
    let crashed = env.wait_operator_exit(Duration::from_secs(60)).await;
    assert!(
        crashed.is_some_and(|s| !s.success()),
        "the operator aborted at the crash point: {crashed:?}"
    );
    assert!(
        env.last_operator_stderr()
            .contains("crashpoint sweep-before-remove"),
        "{}",
        env.last_operator_stderr()
    );
    let mid = env.state().await;
    assert!(
        !access_of(
            &mid,
            &tracked["gone-pim"],
            Some((DEPLOYER_OID, READER, &rg()))
        )
        .is_empty(),
        "the crash came before the removal"
    );
    env.start_operator_with(&sweep_every);
    let rgs = rg();
    wait_no_access(
        &env,
        "gone-pim's assignment swept",
        &tracked["gone-pim"],
        Some((DEPLOYER_OID, READER, rgs.as_str())),
    )
    .await;
    wait::eventually(
        "gone-jit's port swept",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async {
            if closing_only(&env.state().await, &tracked["gone-jit"]) {
                Ok(())
            } else {
                Err("open".to_string())
            }
        },
    )
    .await;
    let st = env.state().await;
    let at = |principal: &str, scope: &str| {
        st.role_assignment_schedule_instances
            .iter()
            .filter(|i| {
                i.properties.principal_id.eq_ignore_ascii_case(principal)
                    && i.properties.scope.eq_ignore_ascii_case(scope)
            })
            .count()
    };
    assert_eq!(at(OPERATOR_OID, &rgs), 1, "(a) keeper-b's access stays");
    assert_eq!(
        at(DEPLOYER_OID, &sub_scope),
        1,
        "(b) the adopted pre-existing assignment stays"
    );
    let by_hand_open = st.jit_requests().any(|(_, r)| {
        r.justification.as_deref() == Some("opened by hand")
            && r.virtual_machines
                .iter()
                .flat_map(|v| &v.ports)
                .any(|p| p.open())
    });
    assert!(by_hand_open, "(c) the port opened by hand stays open");
    let text = env.admin_get("/metrics").await.1;
    assert_eq!(
        metric(
            &text,
            "accessgrant_orphans_removed_total",
            &[("kind", "PIM")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "accessgrant_orphans_removed_total",
            &[("kind", "JIT")]
        ),
        Some(1.0)
    );
    let events = env
        .kubectl(
            None,
            &["get", "events.events.k8s.io", "-n", NS, "-o", "json"],
            None,
        )
        .await;
    assert!(
        events.ok && events.stdout.contains("OrphanRemoved") && events.stdout.contains("gone-pim"),
        "a Warning event on the namespace: {}",
        events.stderr
    );
}
