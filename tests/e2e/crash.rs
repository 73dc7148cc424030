//! Crash injection against the real operator binary, kube-sim and azure-sim.
//!
//! For each lifecycle flow and each side-effect boundary it crosses, the operator is started
//! with `ACCESSGRANT_CRASH_AT=<point>:<n>` (src/crashpoint.rs: it aborts the n-th time the
//! point is reached), dies there, and is started again without it. Then, from azure-sim's state:
//! no double grant (one JIT request per grant attempt, one PIM grant request per attempt, every
//! PIM request named by a grant attempt), no orphaned access (every open JIT port and active PIM
//! assignment belongs to a live active grant and ends when its status says), and the grant
//! reaches its expected phase; once deleted, its finalizer goes and no access is left.
//!
//! Also: a randomized mixed workload with random SIGKILLs (seed printed; `CRASH_SEED` replays
//! it; the 1,000-kill run is `cargo bench --bench crash_soak`), and two operators at once with
//! leader election off over a mixed workload: 0 double grants and 0 orphans there too (the
//! longer run is that bench with `--extra-operators 1`).
//!
//! Every scenario runs in its own pair of simulators; the points of one flow run side by side.

use crate::e2e_support;
use crate::wait;

use accessgrant_operator::api::*;
use e2e_support::audit::{Tracked, audit};
use e2e_support::soak;
use e2e_support::*;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

/// Our principals: the operator's own SP (SelfActivate) and the AdminAssign target.
const PRINCIPALS: [&str; 2] = [OPERATOR_OID, DEPLOYER_OID];
/// The operations that are Azure writes.
const WRITES: [&str; 3] = [
    "JitNetworkAccessPolicies_Initiate",
    "RoleAssignmentScheduleRequests_Create",
    "RoleAssignmentScheduleRequests_Cancel",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flow {
    /// A JIT grant is created and opened.
    JitActivate,
    /// A PIM AdminAssign grant is created and assigned.
    PimAssign,
    /// A PIM SelfActivate grant is created and activated.
    PimActivate,
    /// A JIT grant renews (a new initiation supersedes the old one) until its renewal limit.
    JitRenew,
    /// A PIM AdminAssign grant is extended (AdminExtend) until its renewal limit.
    PimExtend,
    /// An active JIT grant is deleted: closed early, then the finalizer goes.
    JitDelete,
    /// An active AdminAssign grant is deleted: AdminRemove, then the finalizer goes.
    PimAssignDelete,
    /// An active SelfActivate grant is deleted: SelfDeactivate, then the finalizer goes.
    PimActivateDelete,
    /// An active JIT grant is suspended (spec.suspend: true).
    JitSuspend,
    /// An active SelfActivate grant is suspended.
    PimSuspend,
    /// A JIT request carrying the grant's marker already exists in Azure.
    JitAdopt,
    /// A PIM request with the grant's deterministic name already exists in Azure.
    PimAdopt,
}

const ACTIVATE_POINTS: &[(&str, u32)] = &[
    ("after-finalizer", 1),
    ("after-intent", 1),
    ("after-azure-write", 1),
    ("after-status", 1),
];
/// Adopting a listed JIT request writes nothing to Azure: no intent, no write to crash after.
const ADOPT_JIT_POINTS: &[(&str, u32)] = &[("after-finalizer", 1), ("after-status", 1)];
/// The operator starts when the renewal is due: its first intent, write and status write are
/// the renewal's.
const RENEW_POINTS: &[(&str, u32)] = &[
    ("after-intent", 1),
    ("after-azure-write", 1),
    ("after-status", 1),
];
/// JIT: the close request's answer is written (Revoking) before the ports close.
const JIT_DELETE_POINTS: &[(&str, u32)] = &[
    ("after-intent", 1),
    ("after-azure-write", 1),
    ("after-status", 1),
    ("before-remove-finalizer", 1),
];
/// PIM: the removal's answer and the confirming read happen in one pass that ends by removing
/// the finalizer; no status write lies between them (after-status is never reached).
const PIM_DELETE_POINTS: &[(&str, u32)] = &[
    ("after-intent", 1),
    ("after-azure-write", 1),
    ("before-remove-finalizer", 1),
];
const SUSPEND_POINTS: &[(&str, u32)] = &[
    ("after-intent", 1),
    ("after-azure-write", 1),
    ("after-status", 1),
];

impl Flow {
    fn points(self) -> &'static [(&'static str, u32)] {
        match self {
            Flow::JitActivate | Flow::PimAssign | Flow::PimActivate | Flow::PimAdopt => {
                ACTIVATE_POINTS
            }
            Flow::JitAdopt => ADOPT_JIT_POINTS,
            Flow::JitRenew | Flow::PimExtend => RENEW_POINTS,
            Flow::JitDelete => JIT_DELETE_POINTS,
            Flow::PimAssignDelete | Flow::PimActivateDelete => PIM_DELETE_POINTS,
            Flow::JitSuspend | Flow::PimSuspend => SUSPEND_POINTS,
        }
    }

    fn is_jit(self) -> bool {
        matches!(
            self,
            Flow::JitActivate
                | Flow::JitRenew
                | Flow::JitDelete
                | Flow::JitSuspend
                | Flow::JitAdopt
        )
    }

    /// The grant the flow is about (created while no operator runs).
    fn grant(self) -> AccessGrant {
        let now = accessgrant_operator::clock::now();
        let assign = |d: &str| {
            with_spec(pim_grant("g", "Assign", READER, d), |s| {
                s.pim.as_mut().expect("pim").principal_id = DEPLOYER_OID.into()
            })
        };
        match self {
            Flow::JitActivate | Flow::JitDelete | Flow::JitSuspend | Flow::JitAdopt => {
                jit_grant("g", 1, 22, "10.1.0.1", "PT30M")
            }
            Flow::PimAssign | Flow::PimAssignDelete => assign("PT30M"),
            Flow::PimActivate | Flow::PimActivateDelete | Flow::PimSuspend | Flow::PimAdopt => {
                pim_grant("g", "Activate", READER, "PT30M")
            }
            // Renew 4 s before an 8 s end while the limit (45 s) is more than 30 s past the
            // end: two renewals, then expiry.
            Flow::JitRenew => with_spec(jit_grant("g", 2, 3389, "10.1.0.2", "PT8S"), |s| {
                s.renewal = Some(RenewalSpec {
                    until: now + chrono::Duration::seconds(45),
                    before: Some(IsoDuration::new("PT4S")),
                })
            }),
            Flow::PimExtend => with_spec(assign("PT10S"), |s| {
                s.renewal = Some(RenewalSpec {
                    until: now + chrono::Duration::seconds(50),
                    before: Some(IsoDuration::new("PT5S")),
                })
            }),
        }
    }
}

/// Azure writes in a slice of the call log.
fn writes(calls: &[serde_json::Value]) -> usize {
    calls
        .iter()
        .filter(|c| {
            WRITES.iter().any(|w| c["operation"] == *w)
                && c["fault"].is_null()
                && c["status"].as_u64().is_some_and(|s| s > 0)
        })
        .count()
}

async fn live(env: &Env) -> Vec<AccessGrant> {
    Api::<AccessGrant>::all(env.client.clone())
        .list(&Default::default())
        .await
        .expect("list grants")
        .items
}

/// Waits until Azure's minimum active time (PT5S here) of the grant's PIM access has passed, so
/// the next pass removes it at once (no "waiting" status write in between).
async fn past_deactivation_floor(g: &AccessGrant) {
    let start = g
        .status
        .as_ref()
        .and_then(|s| s.start_time)
        .expect("start time");
    let floor = start + chrono::Duration::seconds(7);
    wait::eventually(
        "the PIM deactivation floor to pass",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async move {
            if accessgrant_operator::clock::now() >= floor {
                Ok(())
            } else {
                Err(format!("floor at {floor}"))
            }
        },
    )
    .await;
}

/// Puts a request into Azure that the operator must adopt instead of asking again: the PIM
/// request with the grant's deterministic name, or a JIT initiation carrying its marker.
async fn seed_existing_request(env: &Env, flow: Flow, g: &AccessGrant) {
    let uid = g.metadata.uid.clone().expect("uid");
    let ns = g.metadata.namespace.clone().expect("ns");
    let (status, body) = if flow == Flow::PimAdopt {
        let name = accessgrant_operator::lifecycle::request_name(&uid, 1, Operation::SelfActivate);
        env.arm_as_operator(
            reqwest::Method::PUT,
            &format!("{}/providers/Microsoft.Authorization/roleAssignmentScheduleRequests/{name}?api-version=2020-10-01", rg()),
            Some(serde_json::json!({"properties": {
                "principalId": OPERATOR_OID,
                "roleDefinitionId": role(READER),
                "requestType": "SelfActivate",
                "justification": "e2e (asked before the operator recorded it)",
                "scheduleInfo": {"startDateTime": null, "expiration": {"type": "AfterDuration", "duration": "PT30M"}}
            }})),
        )
        .await
    } else {
        let marker = format!("[ag:{ns}/g#1.{}]", &uid[..8]);
        env.arm_as_operator(
            reqwest::Method::POST,
            &format!("/subscriptions/{SUB}/resourceGroups/rg-sandbox/providers/Microsoft.Security/locations/westeurope/jitNetworkAccessPolicies/default/initiate?api-version=2020-01-01"),
            Some(serde_json::json!({
                "virtualMachines": [{"id": vm(1), "ports": [{"number": 22, "duration": "PT30M", "allowedSourceAddressPrefix": "10.1.0.1"}]}],
                "justification": format!("e2e (asked before the operator recorded it) {marker}")
            })),
        )
        .await
    };
    assert!(
        (200..300).contains(&status),
        "seeding the existing request: {status} {body}"
    );
}

/// What one scenario saw.
#[derive(Debug)]
struct Outcome {
    flow: Flow,
    point: &'static str,
    nth: u32,
    /// Phase and intent when the operator died.
    at_crash: String,
    secs: f64,
}

/// One flow crashed at one point: prepare, crash, restart, converge, clean up, audit.
async fn scenario(flow: Flow, point: &'static str, nth: u32) -> Outcome {
    let started = Instant::now();
    let ctx = format!("{flow:?} crashed at {point}:{nth}");
    let mut env = Env::start_bare().await;
    let api = env.namespace("crash", true).await;
    let created = api
        .create(&PostParams::default(), &flow.grant())
        .await
        .expect("create");
    let tracked = vec![Tracked::of(&created)];

    // Prepare: flows that start from active access get there with an undisturbed operator,
    // which is then killed; the change (delete, suspend) is made while none runs.
    match flow {
        Flow::JitDelete
        | Flow::PimAssignDelete
        | Flow::PimActivateDelete
        | Flow::JitSuspend
        | Flow::PimSuspend => {
            env.start_operator();
            let g = wait_for(&api, "g", "Active", 60, phase(Phase::Active)).await;
            env.kill_operator();
            if !flow.is_jit() {
                past_deactivation_floor(&g).await;
            }
            if matches!(flow, Flow::JitSuspend | Flow::PimSuspend) {
                api.patch(
                    "g",
                    &PatchParams::default(),
                    &Patch::Merge(serde_json::json!({"spec": {"suspend": true}})),
                )
                .await
                .expect("suspend");
            } else {
                api.delete("g", &DeleteParams::default())
                    .await
                    .expect("delete");
            }
        }
        Flow::JitRenew | Flow::PimExtend => {
            // Active with an undisturbed operator, killed; the crash operator starts once the
            // renewal is due, so the renewal is the first thing it does.
            env.start_operator();
            let g = wait_for(&api, "g", "Active", 60, phase(Phase::Active)).await;
            env.kill_operator();
            let st = g.status.expect("status");
            assert_eq!(st.renewals, 0, "{ctx}: not renewed yet");
            let before = if flow == Flow::JitRenew { 4 } else { 5 };
            // (+1 s: Azure's end has fractional seconds, the status shows whole ones.)
            let renew_at = st.end_time.expect("end") - chrono::Duration::seconds(before - 1);
            wait::eventually(
                "the renewal to be due",
                Duration::from_secs(30),
                Duration::from_millis(100),
                || async move {
                    if accessgrant_operator::clock::now() >= renew_at {
                        Ok(())
                    } else {
                        Err(format!("renewal due at {renew_at}"))
                    }
                },
            )
            .await;
        }
        Flow::JitAdopt | Flow::PimAdopt => seed_existing_request(&env, flow, &created).await,
        _ => {}
    }
    let calls_before = env.calls().await.len();

    // Crash.
    let crash_at = format!("{point}:{nth}");
    env.start_operator_with(&[("ACCESSGRANT_CRASH_AT", &crash_at)]);
    let exit = env
        .wait_operator_exit(Duration::from_secs(90))
        .await
        .unwrap_or_else(|| panic!("{ctx}: the operator never reached the crash point"));
    assert_eq!(
        exit.signal(),
        Some(6),
        "{ctx}: the operator should abort at the crash point, exited {exit:?}\n{}",
        env.last_operator_stderr()
    );
    assert!(
        env.last_operator_stderr()
            .contains(&format!("crashpoint {point}: aborting")),
        "{ctx}: aborted elsewhere"
    );
    let calls = env.calls().await;
    let crash_writes = writes(&calls[calls_before.min(calls.len())..]);
    let g = api.get_opt("g").await.expect("get");
    let st = g
        .as_ref()
        .and_then(|g| g.status.clone())
        .unwrap_or_default();
    let finalizer = g
        .as_ref()
        .is_some_and(|g| g.finalizers().iter().any(|f| f == "accessgrant.io/revoke"));
    let at_crash = format!(
        "{:?}/{}{}",
        st.phase,
        st.reason.as_deref().unwrap_or("-"),
        st.intent
            .as_ref()
            .map(|i| format!(" intent {}#{}", i.operation.as_str(), i.attempt))
            .unwrap_or_default()
    );
    // The crash landed where it was meant to: between the grant's writes as the point says.
    let before = (nth - 1) as usize;
    match point {
        "after-finalizer" => {
            assert!(finalizer && st.intent.is_none(), "{ctx}: {at_crash}");
            assert_eq!(crash_writes, 0, "{ctx}: no Azure write yet");
        }
        "after-intent" => {
            assert!(st.intent.is_some(), "{ctx}: intent recorded: {at_crash}");
            assert_eq!(crash_writes, before, "{ctx}: the write was not sent");
        }
        "after-azure-write" => {
            assert!(
                st.intent.is_some(),
                "{ctx}: outcome not recorded: {at_crash}"
            );
            assert_eq!(crash_writes, before + 1, "{ctx}: the write was sent");
        }
        "after-status" => {
            assert!(st.intent.is_none(), "{ctx}: outcome recorded: {at_crash}");
            // Adopting a listed JIT request is recorded without a write.
            let sent = if flow == Flow::JitAdopt { 0 } else { 1 };
            assert_eq!(crash_writes, before + sent, "{ctx}: {at_crash}");
        }
        "before-remove-finalizer" => {
            assert!(finalizer, "{ctx}: finalizer still on");
            assert_eq!(crash_writes, 1, "{ctx}: the removal was sent");
            let a = audit(&env.state().await, &tracked, &[], &PRINCIPALS, false);
            assert!(a.orphans.is_empty(), "{ctx}: access gone: {:?}", a.orphans);
        }
        other => panic!("unknown point {other}"),
    }

    // Restart without the crash point and converge.
    env.start_operator();
    let settled = match flow {
        Flow::JitActivate
        | Flow::PimAssign
        | Flow::PimActivate
        | Flow::JitAdopt
        | Flow::PimAdopt => Some(wait_for(&api, "g", "Active", 90, phase(Phase::Active)).await),
        Flow::JitRenew | Flow::PimExtend => Some(
            wait_for(&api, "g", "Expired after renewals", 120, |s| {
                s.phase == Phase::Expired
            })
            .await,
        ),
        Flow::JitSuspend | Flow::PimSuspend => {
            Some(wait_for(&api, "g", "Revoked", 90, phase(Phase::Revoked)).await)
        }
        Flow::JitDelete | Flow::PimAssignDelete | Flow::PimActivateDelete => {
            wait_gone(&api, "g", 90).await;
            None
        }
    };
    let a = audit(
        &env.state().await,
        &tracked,
        &live(&env).await,
        &PRINCIPALS,
        true,
    );
    a.assert_clean(&format!("{ctx}, converged"));
    let key = tracked[0].key();
    let renewals = settled
        .as_ref()
        .and_then(|g| g.status.as_ref())
        .map_or(0, |s| s.renewals);
    if matches!(flow, Flow::JitRenew | Flow::PimExtend) {
        assert!(renewals >= 1, "{ctx}: renewed at least once");
    }
    if flow.is_jit() {
        assert_eq!(
            a.jit_grants(&key),
            1 + renewals as usize,
            "{ctx}: one JIT initiation per grant and renewal: {:?}",
            a.jit.get(&key)
        );
    } else {
        assert_eq!(
            a.pim_grants(&key),
            1 + renewals as usize,
            "{ctx}: one PIM grant request per grant and renewal: {:?}",
            a.pim.get(&key)
        );
    }
    if matches!(
        flow,
        Flow::JitActivate | Flow::PimAssign | Flow::PimActivate | Flow::JitAdopt | Flow::PimAdopt
    ) {
        // Active means access exists in Azure too.
        let st = env.state().await;
        let evidence = if flow.is_jit() {
            st.jit_requests().any(|(_, r)| {
                r.virtual_machines
                    .iter()
                    .flat_map(|v| &v.ports)
                    .any(|p| p.status == "Initiated")
            })
        } else {
            st.role_assignment_schedule_requests
                .iter()
                .any(|r| r.properties.status == "Provisioned")
        };
        assert!(evidence, "{ctx}: Active but no access in Azure");
    }

    // Clean up: delete, the finalizer goes only once Azure shows nothing left.
    if settled.is_some() {
        api.delete("g", &DeleteParams::default())
            .await
            .expect("delete");
        wait_gone(&api, "g", 90).await;
    }
    let a = audit(&env.state().await, &tracked, &[], &PRINCIPALS, true);
    a.assert_clean(&format!("{ctx}, deleted"));
    Outcome {
        flow,
        point,
        nth,
        at_crash,
        secs: started.elapsed().as_secs_f64(),
    }
}

/// Every point of a flow, side by side (each in its own simulators and operator).
async fn flow_at_every_point(flow: Flow) {
    let runs = flow
        .points()
        .iter()
        .map(|&(point, nth)| scenario(flow, point, nth));
    let outcomes = futures::future::join_all(runs).await;
    for o in &outcomes {
        println!(
            "crash {:?} at {}:{} -> state at crash {}; converged, 0 double grants, 0 orphans ({:.1}s)",
            o.flow, o.point, o.nth, o.at_crash, o.secs
        );
    }
    assert_eq!(outcomes.len(), flow.points().len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_jit_activate() {
    flow_at_every_point(Flow::JitActivate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_pim_assign() {
    flow_at_every_point(Flow::PimAssign).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_pim_self_activate() {
    flow_at_every_point(Flow::PimActivate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_jit_renew() {
    flow_at_every_point(Flow::JitRenew).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_pim_admin_extend() {
    flow_at_every_point(Flow::PimExtend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_jit_revoke_on_delete() {
    flow_at_every_point(Flow::JitDelete).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_pim_assign_revoke_on_delete() {
    flow_at_every_point(Flow::PimAssignDelete).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_pim_activate_revoke_on_delete() {
    flow_at_every_point(Flow::PimActivateDelete).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_jit_suspend() {
    flow_at_every_point(Flow::JitSuspend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_pim_suspend() {
    flow_at_every_point(Flow::PimSuspend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_jit_adopt_existing_marker() {
    flow_at_every_point(Flow::JitAdopt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_pim_adopt_existing_request() {
    flow_at_every_point(Flow::PimAdopt).await;
}

/// Random SIGKILLs (Child::kill) at random moments under a mixed workload: JIT and PIM
/// (SelfActivate, AdminAssign) grants that expire, renew, are deleted (active or still in
/// flight) or suspended, side by side. Each kill is followed by a restart; once the kills are
/// done every grant must finish its life, each deleted or revoked one with nothing left in
/// Azure, and the whole run with no double grant and no orphan. The seed is printed;
/// `CRASH_SEED=<seed>` replays the same choices. The 1,000-kill run is
/// `cargo bench --bench crash_soak`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_sigkills_under_a_mixed_workload() {
    let _heavy = crate::one_heavy_at_a_time().await;
    let seed = soak::seed();
    println!("random SIGKILLs: seed {seed} (replay with CRASH_SEED={seed})");
    let kills = 60;
    let r = soak::run(soak::SoakConfig {
        seed,
        kills,
        jit_slots: 6,
        pim_rgs: 3,
        gap_ms: (200, 1500),
        step_secs: 240,
        operator_env: vec![],
        extra_operators: 0,
        window_secs: 0,
        only: None,
    })
    .await;
    println!(
        "random SIGKILLs (seed {seed}): {} kills in {:.0}s, {} grants finished their lives {:?}, {} renewals, {} Azure writes, {:.0}s in all",
        r.kills, r.kill_secs, r.grants, r.lives, r.renewals, r.azure_writes, r.secs
    );
    assert!(
        r.findings.is_empty(),
        "random SIGKILLs, seed {seed}: {:#?}",
        r.findings
    );
    r.audit
        .assert_clean(&format!("random SIGKILLs, seed {seed}"));
    assert_eq!(r.kills, kills);
    assert!(r.grants >= 12, "every slot finished at least one life");
}

/// Two operators at once, leader election off (a misconfigured rollout, a split brain): both
/// reconcile every grant of a mixed workload (JIT and PIM SelfActivate/AdminAssign grants that
/// expire, renew, are deleted or suspended) for a 20 s window, and each life then finishes.
/// From azure-sim's state and call log: 0 double grants (at most one JIT initiation per marker,
/// one PIM grant request per attempt, no more grant requests than the grant counted renewals),
/// 0 orphans, every life reached its expected phase with nothing left in Azure once revoked or
/// deleted, and both operators wrote. What makes it hold: every Azure write follows an intent
/// write guarded by the resourceVersion the plan was made from (finalizer and status writes
/// too), and an intent whose write may still be in flight (another replica's) is adopted when
/// Azure shows it, sent again only where Azure dedups it (PIM request names), else waited out.
/// The seed is printed (`CRASH_SEED` replays the workload choices); the longer run is
/// `cargo bench --bench crash_soak -- --extra-operators 1 --window-secs 30 --kills 0`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_operators_without_leader_election() {
    let seed = soak::seed();
    println!("two operators: seed {seed} (replay with CRASH_SEED={seed})");
    let r = soak::run(soak::SoakConfig {
        seed,
        kills: 0,
        jit_slots: 6,
        pim_rgs: 3,
        gap_ms: (0, 0),
        step_secs: 120,
        operator_env: vec![],
        extra_operators: 1,
        window_secs: 20,
        only: None,
    })
    .await;
    println!(
        "two operators (seed {seed}): {} grants finished their lives {:?}, {} renewals, {} JIT markers, \
         {} Azure writes ({} PIM replays answered 409 and adopted), transitions written per operator {:?}, \
         {:.0}s; double grants: {}, orphans: {}, lives gone wrong: {}; slowest lives {:?}",
        r.grants,
        r.lives,
        r.renewals,
        r.jit_markers,
        r.azure_writes,
        r.pim_replays,
        r.transitions_by_operator,
        r.secs,
        r.audit.double_grants.len(),
        r.audit.orphans.len(),
        r.findings.len(),
        r.slowest
    );
    assert!(
        r.findings.is_empty(),
        "two operators, seed {seed}: {:#?}",
        r.findings
    );
    r.audit.assert_clean(&format!("two operators, seed {seed}"));
    assert!(r.grants >= 12, "every slot finished at least one life");
    assert!(
        r.lives.keys().any(|k| k.starts_with("JIT"))
            && r.lives.keys().any(|k| k.starts_with("PIM-Activate"))
            && r.lives.keys().any(|k| k.starts_with("PIM-Assign")),
        "JIT and both PIM modes ran: {:?}",
        r.lives
    );
    assert_eq!(r.transitions_by_operator.len(), 2, "two operator processes");
    assert!(
        r.transitions_by_operator.iter().all(|n| *n > 0),
        "both operators wrote: {:?}",
        r.transitions_by_operator
    );
}
