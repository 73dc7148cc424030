//! A randomized mixed workload under random SIGKILLs of the operator (tests/crash.rs runs a
//! short one, benches/crash_soak.rs the 1,000-kill one), and the world it needs: one target per
//! workload slot (a JIT VM port, a PIM resource-group scope), so concurrent grants never
//! supersede or adopt one another.

use super::audit::{Audit, Tracked, audit};
use super::*;
use accessgrant_operator::api::{AccessGrant, Phase};
use kube::ResourceExt;
use kube::api::{DeleteParams, Patch, PatchParams};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

/// Extra VMs in rg-sandbox (in the JIT policy `default`, ports 22 and 3389 from 10.0.0.0/8).
pub fn soak_vm(i: usize) -> String {
    format!(
        "{}/providers/Microsoft.Compute/virtualMachines/vm-soak-{i}",
        rg()
    )
}

/// Extra resource groups of the sandbox subscription (the operator may activate Reader there).
pub fn soak_rg(i: usize) -> String {
    format!("/subscriptions/{SUB}/resourceGroups/rg-soak-{i}")
}

/// Adds `vms` VMs to the sandbox JIT policy and `rgs` resource groups, makes the operator
/// eligible for Reader on the whole subscription, and keeps every JIT request (the audit counts
/// them all).
pub fn roomy_world(w: &mut accessgrant_sim::azure::World, vms: usize, rgs: usize) {
    w.settings.jit_request_retention = 1_000_000;
    for i in 0..vms {
        w.virtual_machines.push(
            serde_json::from_value(serde_json::json!({"id": soak_vm(i), "location": "westeurope"}))
                .expect("vm"),
        );
    }
    let pol = w
        .jit_policies
        .iter_mut()
        .find(|p| p.subscription_id == SUB && p.resource_group == "rg-sandbox")
        .expect("the sandbox JIT policy");
    if let Some(list) = pol.properties["virtualMachines"].as_array_mut() {
        for i in 0..vms {
            list.push(serde_json::json!({"id": soak_vm(i), "ports": [
                {"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "10.0.0.0/8", "maxRequestAccessDuration": "PT3H"},
                {"number": 3389, "protocol": "TCP", "allowedSourceAddressPrefix": "10.0.0.0/8", "maxRequestAccessDuration": "PT3H"}
            ]}));
        }
    }
    let sub = w
        .subscriptions
        .iter_mut()
        .find(|s| s.id == SUB)
        .expect("sandbox subscription");
    for i in 0..rgs {
        sub.resource_groups.push(
            serde_json::from_value(
                serde_json::json!({"name": format!("rg-soak-{i}"), "location": "westeurope"}),
            )
            .expect("rg"),
        );
    }
    w.eligibilities.push(
        serde_json::from_value(serde_json::json!({
            "id": "0d5c1b0e-4f3a-4b8e-9c2d-7e6f5a4b3c21",
            "instanceId": "0d5c1b0e-4f3a-4b8e-9c2d-7e6f5a4b3c22",
            "scope": format!("/subscriptions/{SUB}"),
            "roleDefinitionId": READER,
            "principalId": OPERATOR_OID,
        }))
        .expect("eligibility"),
    );
}

/// What a workload slot grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// JIT on a soak VM and port.
    Jit { vm: usize, port: i32 },
    /// PIM SelfActivate of Reader (operator) at a soak resource group.
    Activate { rg: usize },
    /// PIM AdminAssign of Reader to the deployer at a soak resource group.
    Assign { rg: usize },
}

/// How a grant's life goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Life {
    /// A few seconds, then Expired.
    Expire,
    /// Long; deleted once Active.
    DeleteActive,
    /// Long; deleted soon after creation, Active or not.
    DeleteEarly,
    /// Long; suspended once Active, then deleted.
    Suspend,
    /// Short with renewals (JIT, AdminAssign) until a near limit, then Expired.
    Renew,
}

impl Slot {
    fn grant(self, name: &str, life: Life) -> AccessGrant {
        let now = accessgrant_operator::clock::now();
        let duration = match life {
            Life::Expire => "PT6S",
            Life::Renew => "PT8S",
            _ => "PT30M",
        };
        let mut g = match self {
            Slot::Jit { port, .. } => jit_grant(name, 1, port, "10.2.0.1", duration),
            Slot::Activate { .. } => pim_grant(name, "Activate", READER, duration),
            Slot::Assign { .. } => pim_grant(name, "Assign", READER, duration),
        };
        match self {
            Slot::Jit { vm, .. } => {
                if let Some(j) = g.spec.jit.as_mut() {
                    j.virtual_machines[0].id = soak_vm(vm);
                }
            }
            Slot::Activate { rg } => {
                if let Some(p) = g.spec.pim.as_mut() {
                    p.scope = soak_rg(rg);
                }
            }
            Slot::Assign { rg } => {
                if let Some(p) = g.spec.pim.as_mut() {
                    p.scope = soak_rg(rg);
                    p.principal_id = DEPLOYER_OID.into();
                }
            }
        }
        if life == Life::Renew {
            g.spec.renewal = Some(RenewalSpec {
                until: now + chrono::Duration::seconds(45),
                before: Some(IsoDuration::new("PT4S")),
            });
        }
        g
    }

    fn lives(self) -> &'static [Life] {
        match self {
            Slot::Activate { .. } => &[
                Life::Expire,
                Life::DeleteActive,
                Life::DeleteEarly,
                Life::Suspend,
            ],
            _ => &[
                Life::Expire,
                Life::DeleteActive,
                Life::DeleteEarly,
                Life::Suspend,
                Life::Renew,
            ],
        }
    }
}

/// Settings of a run.
#[derive(Clone, Debug)]
pub struct SoakConfig {
    /// RNG seed (workload choices and kill moments).
    pub seed: u64,
    /// SIGKILLs to perform.
    pub kills: usize,
    /// JIT slots (one VM port each).
    pub jit_slots: usize,
    /// Resource groups; each gives an Activate and an Assign slot.
    pub pim_rgs: usize,
    /// Milliseconds between a restart and the next kill: uniform in this range.
    pub gap_ms: (u64, u64),
    /// Deadline for one step of a grant's life (e.g. reaching Active), kills included.
    pub step_secs: u64,
    /// Extra operator environment (e.g. `RUST_LOG`).
    pub operator_env: Vec<(String, String)>,
    /// More operators started alongside, all without leader election (never killed).
    pub extra_operators: usize,
    /// With no kills: how long new lives keep starting.
    pub window_secs: u64,
    /// Only this life (to chase one flow); None: every life the slot allows.
    pub only: Option<Life>,
}

/// Figures of a run.
#[derive(Debug, Default)]
pub struct SoakReport {
    pub seed: u64,
    pub kills: usize,
    pub grants: usize,
    pub lives: BTreeMap<String, usize>,
    pub renewals: u32,
    pub azure_writes: usize,
    /// PIM writes answered 409 RoleAssignmentRequestExists (a second writer's replay).
    pub pim_replays: usize,
    pub kill_secs: f64,
    pub secs: f64,
    pub audit: Audit,
    /// Lives that went wrong (wrong end phase, access left after revoke or delete).
    pub findings: Vec<String>,
    /// The slowest lives: (grant, life, seconds from create to gone), slowest first.
    pub slowest: Vec<(String, String, f64)>,
    /// Status transitions each operator process wrote (its audit lines), in start order.
    pub transitions_by_operator: Vec<usize>,
    /// Azure calls answered 429 (both operators share one principal, so one ARM budget).
    pub throttled: usize,
    /// Distinct JIT markers Azure lists for the run's grants (initiations and closes).
    pub jit_markers: usize,
}

/// One grant's record: who it was and what it held when its life ended.
#[derive(Clone, Debug)]
struct Lived {
    tracked: Tracked,
    renewals: u32,
    reached_active: bool,
    /// What kind of life it was, and how long it took from create to gone.
    life: String,
    secs: f64,
    /// Every stored version of the grant (to explain a double grant).
    versions: Vec<String>,
}

struct Shared {
    killing: AtomicBool,
    lived: std::sync::Mutex<Vec<Lived>>,
    lives: std::sync::Mutex<BTreeMap<String, usize>>,
    /// Lives that went wrong: a wrong end phase, access left in Azure after revoke or delete.
    findings: std::sync::Mutex<Vec<String>>,
}

impl Shared {
    fn note(&self, finding: String) {
        println!("soak finding: {finding}");
        self.findings.lock().expect("lock").push(finding);
    }
}

/// The `(principal, role, scope)` a PIM slot's grants hold.
fn pim_target(slot: Slot) -> Option<(&'static str, String, String)> {
    match slot {
        Slot::Jit { .. } => None,
        Slot::Activate { rg } => Some((OPERATOR_OID, role(READER), soak_rg(rg))),
        Slot::Assign { rg } => Some((DEPLOYER_OID, role(READER), soak_rg(rg))),
    }
}

/// Waits until the grant reaches `want` or any terminal phase; panics unless it is `want`.
pub async fn reach(api: &Api<AccessGrant>, name: &str, want: Phase, secs: u64) -> AccessGrant {
    let g = wait_for(api, name, &format!("{want:?}"), secs, |s| {
        s.phase == want || s.phase.is_terminal()
    })
    .await;
    let st = g.status.clone().unwrap_or_default();
    assert_eq!(
        st.phase, want,
        "{name} ended {:?}/{:?} instead of {want:?}: {:?}\nhistory: {:#?}\nstatus: {:?}",
        st.phase, st.reason, st.message, st.history, st
    );
    g
}

/// Waits until the grant reaches `want` or any terminal phase; notes a finding (with every
/// stored version of the grant) unless it is `want`.
async fn reach_or_note(
    api: &Api<AccessGrant>,
    shared: &Shared,
    versions: &std::sync::Mutex<Vec<String>>,
    name: &str,
    want: Phase,
    secs: u64,
) -> Option<AccessGrant> {
    let g = wait_for(api, name, &format!("{want:?}"), secs, |s| {
        s.phase == want || s.phase.is_terminal()
    })
    .await;
    let st = g.status.clone().unwrap_or_default();
    if st.phase == want {
        return Some(g);
    }
    shared.note(format!(
        "{name} ended {:?}/{:?} instead of {want:?}: {:?}; stored versions: {:#?}",
        st.phase,
        st.reason,
        st.message,
        versions.lock().expect("lock").clone()
    ));
    None
}

#[allow(clippy::too_many_arguments)] // one grant's life: where, who, how, and the shared tally
async fn one_life(
    sim: &AzureSimHandle,
    api: &Api<AccessGrant>,
    shared: &Shared,
    slot: Slot,
    name: &str,
    life: Life,
    rng: &mut StdRng,
    step: u64,
) {
    let created = api
        .create(&PostParams::default(), &slot.grant(name, life))
        .await
        .expect("create");
    let tracked = Tracked::of(&created);
    let pim = pim_target(slot);
    let target = pim.as_ref().map(|(p, r, s)| (*p, r.as_str(), s.as_str()));
    // Every version of the grant as the API stored it, to tell what happened if it goes wrong.
    let versions = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let trace = {
        use futures::StreamExt;
        let versions = versions.clone();
        let stream = kube::runtime::watcher(
            api.clone(),
            kube::runtime::watcher::Config::default().fields(&format!("metadata.name={name}")),
        );
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(ev) = stream.next().await {
                if let Ok(kube::runtime::watcher::Event::Apply(g)) = ev {
                    let st = g.status.clone().unwrap_or_default();
                    versions.lock().expect("lock").push(format!(
                        "rv {} {:?}/{} attempt {} intent {:?} marker {:?} retry {:?} renewals {} end {:?}",
                        g.metadata.resource_version.unwrap_or_default(),
                        st.phase,
                        st.reason.unwrap_or_default(),
                        st.attempt,
                        st.intent.map(|i| (i.operation, i.attempt, i.recorded_at)),
                        st.jit.and_then(|j| j.marker),
                        st.retry.map(|r| r.not_before),
                        st.renewals,
                        st.end_time
                    ));
                }
            }
        })
    };
    let born = Instant::now();
    let mut renewals = 0;
    let mut reached_active = false;
    match life {
        Life::Expire | Life::Renew => {
            if let Some(g) = reach_or_note(api, shared, &versions, name, Phase::Expired, step).await
            {
                let st = g.status.unwrap_or_default();
                renewals = st.renewals;
                reached_active = st.start_time.is_some();
            }
        }
        Life::DeleteActive => {
            if reach_or_note(api, shared, &versions, name, Phase::Active, step)
                .await
                .is_some()
            {
                reached_active = true;
                // A random moment, not a synchronisation.
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..3000))).await;
            }
        }
        Life::DeleteEarly => {
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..1500))).await;
        }
        Life::Suspend => {
            if reach_or_note(api, shared, &versions, name, Phase::Active, step)
                .await
                .is_some()
            {
                reached_active = true;
                api.patch(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(serde_json::json!({"spec": {"suspend": true}})),
                )
                .await
                .expect("suspend");
                if reach_or_note(api, shared, &versions, name, Phase::Revoked, step)
                    .await
                    .is_some()
                {
                    let left = super::audit::access_of(&sim.state().await, &tracked, target);
                    if !left.is_empty() {
                        shared.note(format!(
                            "{name} is Revoked (suspended) but Azure still shows {left:?}"
                        ));
                    }
                }
            }
        }
    }
    api.delete(name, &DeleteParams::default())
        .await
        .expect("delete");
    wait_gone(api, name, step).await;
    // The finalizer went only once Azure showed nothing left.
    let left = super::audit::access_of(&sim.state().await, &tracked, target);
    if !left.is_empty() {
        shared.note(format!(
            "{name} ({life:?}) is gone but Azure still shows {left:?}; stored versions: {:#?}",
            versions.lock().expect("lock").clone()
        ));
    }
    trace.abort();
    let versions = versions.lock().expect("lock").clone();
    shared.lived.lock().expect("lock").push(Lived {
        tracked,
        renewals,
        reached_active,
        life: format!("{}/{life:?}", kind(slot)),
        secs: born.elapsed().as_secs_f64(),
        versions,
    });
    *shared
        .lives
        .lock()
        .expect("lock")
        .entry(format!("{slot_kind}/{life:?}", slot_kind = kind(slot)))
        .or_default() += 1;
}

fn kind(slot: Slot) -> &'static str {
    match slot {
        Slot::Jit { .. } => "JIT",
        Slot::Activate { .. } => "PIM-Activate",
        Slot::Assign { .. } => "PIM-Assign",
    }
}

fn slots(cfg: &SoakConfig) -> Vec<Slot> {
    let mut slots = vec![];
    for i in 0..cfg.jit_slots {
        slots.push(Slot::Jit {
            vm: i / 2,
            port: if i % 2 == 0 { 22 } else { 3389 },
        });
    }
    for rg in 0..cfg.pim_rgs {
        slots.push(Slot::Activate { rg });
        slots.push(Slot::Assign { rg });
    }
    slots
}

/// Runs the workload while SIGKILLing the operator `kills` times at random moments (each kill
/// followed by a restart), lets the grants in flight finish their lives undisturbed, and audits
/// Azure. A grant that does not reach its expected phase, or that leaves access in Azure once
/// revoked or gone, is a finding (`SoakReport::findings`); double grants and orphans at the end
/// are in `SoakReport::audit`. Panics only when the run itself cannot go on.
pub async fn run(cfg: SoakConfig) -> SoakReport {
    let started = Instant::now();
    let mut env =
        Env::start_bare_with(|w| roomy_world(w, cfg.jit_slots.div_ceil(2), cfg.pim_rgs)).await;
    let api = env.namespace("soak", true).await;
    let extra: Vec<(&str, &str)> = cfg
        .operator_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    env.start_operator_with(&extra);
    for i in 0..cfg.extra_operators {
        env.start_replica(&format!("extra-{i}"), &extra);
    }
    let sim = env.azure_handle();
    let shared = Arc::new(Shared {
        killing: AtomicBool::new(true),
        lived: std::sync::Mutex::new(vec![]),
        lives: std::sync::Mutex::new(BTreeMap::new()),
        findings: std::sync::Mutex::new(vec![]),
    });
    let workers = slots(&cfg).into_iter().enumerate().map(|(i, slot)| {
        let api = api.clone();
        let shared = shared.clone();
        let sim = sim.clone();
        let seed = cfg.seed.wrapping_add(i as u64 + 1);
        let step = cfg.step_secs;
        let only = cfg.only;
        async move {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut n = 0;
            while shared.killing.load(Ordering::SeqCst) {
                n += 1;
                let name = format!("s{i}-{n}");
                let mut life = slot.lives()[rng.random_range(0..slot.lives().len())];
                if let Some(only) = only.filter(|l| slot.lives().contains(l)) {
                    life = only;
                }
                one_life(&sim, &api, &shared, slot, &name, life, &mut rng, step).await;
            }
        }
    });
    let killed = AtomicUsize::new(0);
    let killer = async {
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        if cfg.kills == 0 {
            // No kills: the window in which new lives start (a duration, not a synchronisation).
            tokio::time::sleep(Duration::from_secs(cfg.window_secs)).await;
        }
        while killed.load(Ordering::SeqCst) < cfg.kills {
            // A random moment, not a synchronisation: the point is to land anywhere.
            let gap = rng.random_range(cfg.gap_ms.0..=cfg.gap_ms.1);
            tokio::time::sleep(Duration::from_millis(gap)).await;
            assert!(
                env.operator_running(),
                "the operator exited by itself:\n{}",
                env.last_operator_stderr()
            );
            env.kill_operator(); // Child::kill: SIGKILL
            env.start_operator_with(&extra);
            let k = killed.fetch_add(1, Ordering::SeqCst) + 1;
            if k.is_multiple_of(100) {
                println!(
                    "soak: {k} kills after {:.0}s",
                    started.elapsed().as_secs_f64()
                );
            }
        }
        shared.killing.store(false, Ordering::SeqCst);
        started.elapsed().as_secs_f64()
    };
    let (kill_secs, _) = tokio::join!(killer, futures::future::join_all(workers));
    for i in 0..cfg.extra_operators {
        env.kill_replica(&format!("extra-{i}"));
    }

    // Every life ended with a delete that Azure confirmed; now the whole picture.
    let lived = shared.lived.lock().expect("lock").clone();
    let tracked: Vec<Tracked> = lived.iter().map(|l| l.tracked.clone()).collect();
    let live = Api::<AccessGrant>::all(env.client.clone())
        .list(&Default::default())
        .await
        .expect("list")
        .items;
    assert!(
        live.is_empty(),
        "grants left: {:?}",
        live.iter().map(|g| g.name_any()).collect::<Vec<_>>()
    );
    let state = env.state().await;
    let mut a = audit(&state, &tracked, &live, &[OPERATOR_OID, DEPLOYER_OID], true);
    for l in &lived {
        let key = l.tracked.key();
        let (kind, made) = if a.jit.contains_key(&key) {
            ("JIT", a.jit_grants(&key))
        } else {
            ("PIM", a.pim_grants(&key))
        };
        if made > 1 + l.renewals as usize {
            a.double_grants.push(format!(
                "{kind} {key}: {made} grant requests for {} renewals: {:?} {:?}; stored versions: {:#?}",
                l.renewals,
                a.jit.get(&key),
                a.pim.get(&key),
                l.versions
            ));
        }
        if let Some(reqs) = a.jit.get(&key) {
            let mut seen = std::collections::BTreeSet::new();
            if let Some(twice) = reqs.iter().find(|r| !seen.insert(r.marker.clone())) {
                println!(
                    "soak: {key}: marker {} initiated more than once; requests {reqs:?}; stored versions: {:#?}",
                    twice.marker, l.versions
                );
            }
        }
        assert!(
            !l.reached_active || made >= 1,
            "{key} was Active without a grant request"
        );
    }
    let calls = env.calls().await;
    let azure_writes = calls
        .iter()
        .filter(|c| {
            matches!(
                c["operation"].as_str(),
                Some("JitNetworkAccessPolicies_Initiate")
                    | Some("RoleAssignmentScheduleRequests_Create")
                    | Some("RoleAssignmentScheduleRequests_Cancel")
            ) && c["status"]
                .as_u64()
                .is_some_and(|s| (200..300).contains(&s))
        })
        .count();
    let pim_replays = calls
        .iter()
        .filter(|c| c["operation"] == "RoleAssignmentScheduleRequests_Create" && c["status"] == 409)
        .count();
    let throttled = calls.iter().filter(|c| c["status"] == 429).count();
    let mut outs: Vec<std::path::PathBuf> = std::fs::read_dir(env.dir.path())
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "out"))
                .collect()
        })
        .unwrap_or_default();
    outs.sort();
    let transitions_by_operator = outs
        .iter()
        .map(|f| {
            std::fs::read_to_string(f)
                .unwrap_or_default()
                .matches("\"audit\":\"AccessGrantTransition\"")
                .count()
        })
        .collect();
    let lives = shared.lives.lock().expect("lock").clone();
    let mut slowest: Vec<(String, String, f64)> = lived
        .iter()
        .map(|l| (l.tracked.key(), l.life.clone(), l.secs))
        .collect();
    slowest.sort_by(|a, b| b.2.total_cmp(&a.2));
    slowest.truncate(5);
    let jit_markers = a
        .jit
        .values()
        .flatten()
        .map(|r| r.marker.as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    SoakReport {
        seed: cfg.seed,
        kills: killed.load(Ordering::SeqCst),
        grants: lived.len(),
        lives,
        renewals: lived.iter().map(|l| l.renewals).sum(),
        azure_writes,
        pim_replays,
        kill_secs,
        secs: started.elapsed().as_secs_f64(),
        audit: a,
        findings: shared.findings.lock().expect("lock").clone(),
        slowest,
        transitions_by_operator,
        throttled,
        jit_markers,
    }
}

/// The seed: `CRASH_SEED` when set (to replay a run), else from the clock.
pub fn seed() -> u64 {
    std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| accessgrant_operator::clock::now().timestamp_micros() as u64)
}
