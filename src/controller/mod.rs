//! kube-runtime wiring: observe (status + Azure reads) -> validate -> guard -> plan -> execute
//! (finalizer patches, intent status writes, Azure writes) -> one status patch -> requeue at
//! the plan's `wake_at`. All decisions are in `crate::lifecycle`; this module only does I/O.

pub mod cache;
pub mod coverage;
pub mod events;
pub mod identity;
pub mod lean;
mod pass;
pub mod policy_guard;
mod sweep;
pub mod turns;
pub mod warm;

use crate::api::{AccessGrant, AccessGrantStatus, AccessPolicy, Phase};
use crate::azure::client::ArmClient;
use crate::azure::error::AzureError;
use crate::constants::FIELD_MANAGER;
use crate::guard::{Decision, GrantContext, decide};
use crate::lifecycle::PlannerConfig;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tracing::Instrument;

/// Controller settings.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// Planner settings.
    pub planner: PlannerConfig,
    /// Concurrent reconciles.
    pub concurrency: u16,
    pub metrics: crate::telemetry::Metrics,
    /// Readiness flags.
    pub readiness: crate::telemetry::Readiness,
    /// Leader-election fence: when set, no Azure write is sent unless it allows writing.
    pub fence: Option<crate::leader::Leadership>,
    /// Key that verifies requester stamps (None: admission webhook disabled).
    pub stamp_key: Option<crate::stamp::StampKey>,
    /// Hold an AccessPolicy's deletion while live grants rely on it (see `policy_guard`).
    pub policy_deletion_guard: bool,
    /// Interval of the orphan sweep (`sweep`); None: off.
    pub orphan_sweep: Option<Duration>,
    /// Longest wait for in-flight reconciles at shutdown (see [`Timeouts`]).
    pub shutdown_grace: Duration,
    /// Webhook notifications (`crate::notify`; off by default).
    pub notifier: crate::notify::Notifier,
}

/// The timeouts that must agree, derived from one value: the ARM request timeout.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timeouts {
    /// How long one ARM call may take (the HTTP client's timeout).
    pub arm_request: Duration,
    /// How long after its intent is recorded a write is waited for (the planner's
    /// `write_deadline`): the same, so the planner never takes a write as abandoned while the
    /// client still waits for it.
    pub write_deadline: chrono::Duration,
    /// How long shutdown waits for in-flight reconciles: longer than one ARM call, so a write
    /// in flight is answered or abandoned, never cut off.
    pub shutdown_grace: Duration,
}

impl Timeouts {
    /// Derives every timeout from the ARM request timeout.
    pub fn from_arm_request_timeout(arm_request: chrono::Duration) -> Self {
        let arm_request = arm_request.to_std().unwrap_or(Duration::from_secs(30));
        Self {
            arm_request,
            write_deadline: chrono::Duration::from_std(arm_request)
                .unwrap_or(chrono::Duration::seconds(30)),
            shutdown_grace: arm_request + Duration::from_secs(5),
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Self::from_arm_request_timeout(chrono::Duration::seconds(30))
    }
}

/// Shared state of the reconciler.
pub struct Context {
    shutting_down: Arc<AtomicBool>,
    in_flight: AtomicUsize,
    client: Client,
    arm: Arc<ArmClient>,
    policies: Store<AccessPolicy>,
    namespaces: Store<Namespace>,
    grants: Store<lean::LeanGrant>,
    recorder: events::Publisher,
    coverage: Arc<coverage::Coverage>,
    cfg: ControllerConfig,
    jit_policies:
        cache::ReadCache<(String, String, String, String), Option<crate::lifecycle::JitPolicyView>>,
    pim_instances: cache::ReadCache<(String, String), Vec<crate::azure::models::ScheduleItem>>,
    pim_policies: cache::ReadCache<(String, String), Option<crate::lifecycle::PimPolicyView>>,
    /// Start-up reads, batched per subscription (see `warm`).
    warm: warm::Warm,
    /// One pass at a time per grant across the main queue and the removal lane.
    turns: turns::Turns,
    /// Wakes the orphan sweep at once (a grant vanished while it may hold access).
    sweep_now: Arc<tokio::sync::Notify>,
    /// Grants whose finalizer this operator removed (Azure confirmed their access gone): their
    /// delete events are ours, not a vanished grant's.
    released: Arc<Released>,
}

/// Uids of grants this operator let go of, until their delete event is seen (bounded: an
/// event never seen, e.g. across a watch re-list, is dropped with the oldest).
#[derive(Default)]
pub(crate) struct Released(std::sync::Mutex<std::collections::VecDeque<String>>);

impl Released {
    const MAX: usize = 100_000;

    pub(crate) fn note(&self, uid: &str) {
        let mut q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() >= Self::MAX {
            q.pop_front();
        }
        q.push_back(uid.to_string());
    }

    /// Forgets a release that did not happen.
    pub(crate) fn take_back(&self, uid: &str) {
        let _ = self.take(uid);
    }

    /// Whether `uid` was released by us (and forgets it).
    fn take(&self, uid: &str) -> bool {
        let mut q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match q.iter().rposition(|u| u == uid) {
            Some(i) => {
                q.remove(i);
                true
            }
            None => false,
        }
    }
}

/// Reconcile errors (kube API failures; Azure failures are part of the plan).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// Kubernetes API.
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    /// An Azure read failed.
    #[error("azure read: {0}")]
    AzureRead(AzureError),
    /// This replica can no longer prove it leads: it must not write to Azure.
    #[error("not the leader; Azure write withheld")]
    NotLeader,
}

impl ReconcileError {
    /// Stable category for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            ReconcileError::Kube(_) => "Kubernetes",
            ReconcileError::AzureRead(e) => e.category(),
            ReconcileError::NotLeader => "NotLeader",
        }
    }
}

/// Runs the controller until `shutdown` resolves, then finishes in-flight reconciles.
pub async fn run(
    client: Client,
    arm: Arc<ArmClient>,
    cfg: ControllerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let grants_api: Api<DeserializeGuard<AccessGrant>> = Api::all(client.clone());
    let policies_api: Api<AccessPolicy> = Api::all(client.clone());

    // Policies must be known before any grant is judged: default deny would otherwise revoke
    // everything at start-up.
    let (policies, writer) = reflector::store();
    let policy_stream = watcher(policies_api.clone(), watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .touched_objects();
    let policy_task = tokio::spawn(async move {
        policy_stream.for_each(|_| async {}).await;
    });
    policies.wait_until_ready().await?;
    tracing::info!(count = policies.state().len(), "AccessPolicies loaded");
    // Namespace labels select policies: kept from a watch instead of a GET per reconcile (a
    // namespace missing from this cache, e.g. just created, is read directly).
    let (namespaces, ns_writer) = reflector::store();
    // A namespace whose labels change (or that goes away) has its grants judged again at
    // once: a policy that selected it by a label may no longer allow them. The reflector
    // has the new labels before the namespace's name is sent.
    let (relabelled_tx, relabelled_rx) = futures::channel::mpsc::unbounded::<String>();
    let ns_stream = watcher(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(|n: &mut Namespace| n.managed_fields_mut().clear())
    .reflect(ns_writer);
    let ns_task = tokio::spawn(async move {
        let mut seen: std::collections::HashMap<String, (BTreeMap<String, String>, bool)> =
            Default::default();
        let mut ns_stream = std::pin::pin!(ns_stream);
        while let Some(ev) = ns_stream.next().await {
            let (n, gone) = match ev {
                Ok(watcher::Event::Apply(n) | watcher::Event::InitApply(n)) => (n, false),
                Ok(watcher::Event::Delete(n)) => (n, true),
                _ => continue,
            };
            let name = n.name_any();
            let now = (
                n.labels().clone(),
                gone || n.metadata.deletion_timestamp.is_some(),
            );
            let before = if gone {
                seen.remove(&name)
            } else {
                seen.insert(name.clone(), now.clone())
            };
            if before.is_some_and(|b| b != now) {
                let _ = relabelled_tx.unbounded_send(name);
            }
        }
    });
    // Both CRDs are served (the policy watch listed; a grants list answers too).
    grants_api
        .list_metadata(&kube::api::ListParams::default().limit(1))
        .await?;
    cfg.readiness.set_crds_established(true);

    let reporter = events::Reporter {
        controller: "accessgrant-operator".into(),
        instance: std::env::var("POD_NAME").unwrap_or_else(|_| "accessgrant-operator".into()),
    };
    let recorder = events::Publisher::new(client.clone(), reporter);
    // The grant cache and the reconcile triggers (measured with benches/load.rs, see
    // BENCHMARKS.md):
    // - managedFields are dropped before objects enter the cache: nothing reads them, and
    //   they were a large part of the bytes kept per grant;
    // - only a new generation (spec change, and deletion, which bumps it) or the start of
    //   deletion triggers a reconcile, never our own status, finalizer or intent writes.
    //   Those self-triggered passes cost an Azure read each, and, run on a cache that had not
    //   yet seen our last status write, they re-sent a JIT initiation and then took the
    //   grant's own newer request for an out-of-band revocation. Time-driven work (renewal,
    //   expiry, confirmations, drift checks) is requeued by the plan's `wake_at`, and an
    //   operator restart reconciles every grant from its initial list.
    let (grants, grants_writer) = reflector::store();
    let (removal_tx, removal_rx) = futures::channel::mpsc::unbounded::<lean::LeanGrant>();
    let coverage = Arc::new(coverage::Coverage::default());
    let index = coverage.clone();
    let sweep_now = Arc::new(tokio::sync::Notify::new());
    let vanished = sweep_now.clone();
    let released = Arc::new(Released::default());
    let ours = released.clone();
    let grant_events = watcher(grants_api, watcher::Config::default().any_semantic())
        .default_backoff()
        .inspect(move |ev| {
            if let Ok(ev) = ev {
                index.observe(ev);
                // Gone without us letting go (finalizer removed with the webhook bypassed)
                // while it may hold access: the sweep takes it away now, not at its next tick.
                if let watcher::Event::Delete(DeserializeGuard(Ok(g))) = ev
                    && !ours.take(&g.uid().unwrap_or_default())
                    && !g.finalizers().iter().any(|f| f == crate::constants::FINALIZER)
                    && g.status.as_ref().is_some_and(AccessGrantStatus::may_hold_access)
                {
                    tracing::warn!(namespace = %g.namespace().unwrap_or_default(), grant = %g.name_any(), "grant deleted without the operator's finalizer while it may hold access; sweeping now");
                    vanished.notify_one();
                }
            }
        })
        .map_ok(lean::lean_event)
        .reflect(grants_writer)
        .touched_objects()
        .inspect_ok(move |g: &lean::LeanGrant| {
            if g.takes_access_away() {
                // Unbounded: one small message per event of a grant taking access away; the
                // lane's receiver lives as long as this stream.
                let _ = removal_tx.unbounded_send(g.clone());
            }
        })
        .predicate_filter(trigger_hash, Default::default());
    let relabelled = {
        let store = grants.clone();
        relabelled_rx.flat_map(move |ns: String| {
            let in_ns: Vec<Result<lean::LeanGrant, watcher::Error>> = store
                .state()
                .into_iter()
                .filter(|g| g.metadata.namespace.as_deref() == Some(ns.as_str()))
                .map(|g| Ok((*g).clone()))
                .collect();
            if !in_ns.is_empty() {
                tracing::info!(namespace = %ns, grants = in_ns.len(), "namespace labels changed; judging its grants again");
            }
            futures::stream::iter(in_ns)
        })
    };
    let controller = Controller::for_stream(
        futures::stream::select(grant_events, relabelled),
        grants.clone(),
    );
    // The removal lane: its own queue and slots for grants being deleted or suspended. In the
    // main queue a deletion waits behind every grant whose retry is due (kube's scheduler
    // serves due requests in hash order, not by age or kind), and while ARM's write budget is
    // short those are thousands; the lane starts it at once, and the ARM client then serves its
    // calls before those of grants waiting for access (`as_removal`). `turns` keeps one pass
    // per grant across both queues.
    let removal_lane = Controller::for_stream(
        removal_rx
            .map(Ok::<_, watcher::Error>)
            .predicate_filter(trigger_hash, Default::default()),
        grants.clone(),
    );
    let map_store = grants.clone();
    let stop = Arc::new(tokio::sync::Notify::new());
    let shutting_down = Arc::new(AtomicBool::new(false));
    let trigger = {
        let stop = stop.clone();
        let flag = shutting_down.clone();
        async move {
            shutdown.await;
            flag.store(true, Ordering::SeqCst);
            stop.notify_one();
        }
    };
    let ctx = Arc::new(Context {
        shutting_down,
        in_flight: AtomicUsize::new(0),
        client,
        arm,
        policies,
        namespaces,
        grants,
        recorder,
        coverage,
        cfg: cfg.clone(),
        jit_policies: cache::ReadCache::new(Duration::from_secs(2)),
        pim_instances: cache::ReadCache::new(Duration::from_secs(2)),
        pim_policies: cache::ReadCache::new(Duration::from_secs(60)),
        warm: warm::Warm::new(cfg.planner.drift_check.to_std().unwrap_or(warm::VALIDITY)),
        turns: turns::Turns::default(),
        sweep_now,
        released,
    });
    {
        let store = ctx.grants.clone();
        let metrics = cfg.metrics.clone();
        let fence = cfg.fence.clone();
        let caches = Arc::downgrade(&ctx);
        tokio::spawn(async move {
            // Grants by phase: a full recount now and then (labels are phases, never names).
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                let mut counts: BTreeMap<(&'static str, &'static str), i64> = BTreeMap::new();
                let now = crate::clock::now().timestamp();
                let mut oldest_removal = 0;
                for g in store.state() {
                    if let Some(since) = g.removal_since
                        && !g.phase.is_some_and(Phase::is_terminal)
                    {
                        oldest_removal = oldest_removal.max(now - since);
                    }
                    if !g.unreadable {
                        let phase = g.phase.unwrap_or(Phase::Pending);
                        *counts
                            .entry((g.kind, crate::telemetry::phase_label(phase)))
                            .or_default() += 1;
                    }
                }
                metrics.set_grants(&counts.into_iter().collect::<Vec<_>>());
                metrics.set_leader(fence.as_ref().is_none_or(|f| f.may_write()));
                metrics.set_removal_oldest_pending(oldest_removal);
                // Azure read caches: drop what expired, so memory follows the working set.
                match caches.upgrade() {
                    Some(ctx) => {
                        ctx.jit_policies.sweep();
                        ctx.pim_instances.sweep();
                        ctx.pim_policies.sweep();
                        // Lets an expired start-up snapshot's memory go.
                        let _ = ctx.warm.valid_until();
                    }
                    None => return,
                }
            }
        });
    }

    let running = controller
        .watches(
            policies_api,
            watcher::Config::default(),
            move |_p: AccessPolicy| {
                // A policy change re-evaluates every grant (policies select namespaces by labels).
                map_store
                    .state()
                    .into_iter()
                    .map(|g| ObjectRef::from_obj(&*g))
                    .collect::<Vec<_>>()
            },
        )
        .with_config(kube::runtime::controller::Config::default().concurrency(cfg.concurrency))
        .graceful_shutdown_on(trigger)
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "reconcile loop");
            }
        });
    let removals = removal_lane
        .with_config(
            kube::runtime::controller::Config::default()
                .concurrency(removal_concurrency(cfg.concurrency)),
        )
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "removal lane");
            }
        });
    let running = futures::future::join(running, removals);
    // kube's graceful shutdown stops new events but keeps firing already scheduled requeues, so
    // the stream would only end when every timer has; instead: once shutdown is requested, new
    // reconciles return at once (see `reconcile`), and we wait for the in-flight ones (their
    // Azure calls and status writes) to finish, bounded by a grace period.
    let controller_task = tokio::spawn(running);
    tokio::spawn(policy_guard::run(
        ctx.clone(),
        ctx.cfg.policy_deletion_guard,
    ));
    if let Some(every) = ctx.cfg.orphan_sweep {
        tokio::spawn(sweep::run(ctx.clone(), every));
    }
    {
        // The policy cache is synced (waited above); the grant cache is synced once the
        // controller's store has its initial list.
        let ctx = ctx.clone();
        let api: Api<AccessGrant> = Api::all(ctx.client.clone());
        tokio::spawn(async move {
            // The controller's store holds at least what a list returned just after it started.
            let listed = match count_grants(&api).await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "listing AccessGrants for readiness failed");
                    ctx.warm.finish();
                    return;
                }
            };
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            loop {
                tick.tick().await;
                if ctx.grants.state().len() >= listed {
                    ctx.cfg.readiness.set_caches_synced(true);
                    break;
                }
            }
            // Start-up reads: with the initial list in, one list per subscription answers the
            // passes that only confirm an Active grant's access (see `warm`).
            let (jit_subs, pim_subs) = warm_subscriptions(&ctx.grants.state());
            if jit_subs.is_empty() && pim_subs.is_empty() {
                ctx.warm.finish();
                return;
            }
            let started = tokio::time::Instant::now();
            let primed = ctx.warm.prime(&ctx.arm, jit_subs, pim_subs).await;
            ctx.warm.finish();
            tracing::info!(
                jit_subscriptions = primed.jit_subscriptions,
                pim_subscriptions = primed.pim_subscriptions,
                jit_policies = primed.jit_policies,
                pim_instances = primed.pim_instances,
                failed = primed.failed,
                millis = started.elapsed().as_millis() as u64,
                "start-up reads batched per subscription"
            );
        });
    }
    stop.notified().await;
    tracing::info!(
        in_flight = ctx.in_flight.load(Ordering::SeqCst),
        "waiting for in-flight reconciles"
    );
    let deadline = tokio::time::Instant::now() + ctx.cfg.shutdown_grace;
    while ctx.in_flight.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    controller_task.abort();
    policy_task.abort();
    ns_task.abort();
    Ok(())
}

/// What triggers a pass: a new generation (spec change; deletion bumps it too) or the start of
/// deletion, never our own status, finalizer or intent writes (see `run`).
fn trigger_hash(g: &lean::LeanGrant) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    g.meta().generation.hash(&mut h);
    g.meta().deletion_timestamp.is_some().hash(&mut h);
    g.unguarded.hash(&mut h);
    Some(h.finish())
}

/// Slots of the removal lane: a quarter of the main queue's, at least two. Removals are few
/// and mostly wait on Azure, not on the operator's CPU.
fn removal_concurrency(main: u16) -> u16 {
    (main / 4).max(2)
}

/// How many AccessGrants exist, counted page by page (at 100k grants one unpaged list held
/// every object's metadata at once).
async fn count_grants(api: &Api<AccessGrant>) -> Result<usize, kube::Error> {
    let mut n = 0;
    let mut params = kube::api::ListParams::default().limit(500);
    loop {
        let page = api.list_metadata(&params).await?;
        n += page.items.len();
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(n),
        }
    }
}

/// Counts a running reconcile for as long as it lives.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::SeqCst);
        Self(n)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn error_policy(_obj: Arc<lean::LeanGrant>, err: &ReconcileError, _ctx: Arc<Context>) -> Action {
    let wait = match err {
        ReconcileError::AzureRead(AzureError::Throttled {
            retry_after_secs, ..
        }) => Duration::from_secs((*retry_after_secs).clamp(1, 600)),
        _ => Duration::from_secs(5),
    };
    tracing::warn!(category = err.category(), error = %err, "reconcile failed; retrying in {}s", wait.as_secs());
    Action::requeue(wait)
}

async fn reconcile(obj: Arc<lean::LeanGrant>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    if ctx.shutting_down.load(Ordering::SeqCst) {
        // Shutting down: start nothing new; the next leader or start picks it up.
        return Ok(Action::await_change());
    }
    let _in_flight = InFlight::enter(&ctx.in_flight);
    // One pass at a time per grant, across the main queue and the removal lane.
    let _turn = ctx
        .turns
        .take(
            obj.meta().namespace.as_deref().unwrap_or_default(),
            obj.meta().name.as_deref().unwrap_or_default(),
        )
        .await;
    // The cache holds lean copies (see `lean`): every pass plans from the object as the API
    // server has it now, which also means never from a copy older than our own last write.
    let Some(ns) = obj.meta().namespace.clone() else {
        return Ok(Action::await_change());
    };
    let name = obj.meta().name.clone().unwrap_or_default();
    let fresh_api: Api<DeserializeGuard<AccessGrant>> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(obj) = fresh_api.get_opt(&name).await? else {
        // Gone (our finalizer was removed, or it never had one): nothing is held for it.
        return Ok(Action::await_change());
    };
    let grant = match &obj.0 {
        Ok(g) => g.clone(),
        Err(invalid) => {
            // Malformed object (the schema accepted it, our types cannot read it): say so in its
            // status, make no Azure call, and move on; other grants are unaffected. The patch is
            // a no-op once written, so it does not loop.
            let ns = invalid.metadata.namespace.clone().unwrap_or_default();
            let name = invalid.metadata.name.clone().unwrap_or_default();
            tracing::warn!(ns = %ns, name = %name, error = %invalid.error, "AccessGrant does not match the schema");
            let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
                ctx.client.clone(),
                &ns,
                &kube::api::ApiResource::erase::<AccessGrant>(&()),
            );
            let message: String = format!("the object cannot be read: {}", invalid.error)
                .chars()
                .take(1000)
                .collect();
            let body = json!({"status": {"phase": "Failed", "reason": crate::constants::reason::INVALID_SPEC, "message": message}});
            if let Err(e) = api
                .patch_status(
                    &name,
                    &PatchParams::apply(FIELD_MANAGER),
                    &Patch::Merge(&body),
                )
                .await
            {
                tracing::debug!(error = %e, "could not record the malformed object's status");
            }
            return Ok(Action::await_change());
        }
    };
    let ns = grant.namespace().unwrap_or_default();
    let name = grant.name_any();
    let span = tracing::info_span!("reconcile", ns = %ns, name = %name, attempt = grant.status.as_ref().map_or(0, |s| s.attempt));
    let started = tokio::time::Instant::now();
    // A grant being deleted or suspended is taking access away: its reads and writes go
    // before those of grants waiting for access when ARM's budget is short.
    let removing = grant.metadata.deletion_timestamp.is_some() || grant.spec.suspend == Some(true);
    let work = pass::reconcile_grant(grant, &ctx).instrument(span);
    let result = if removing {
        crate::azure::client::as_removal(work).await
    } else {
        work.await
    };
    ctx.cfg.metrics.reconcile(started.elapsed(), result.is_ok());
    if let Err(e) = &result {
        ctx.cfg.metrics.failure(e.category());
    }
    result
}

async fn namespace_labels(
    ctx: &Context,
    ns: &str,
) -> Result<BTreeMap<String, String>, kube::Error> {
    if let Some(n) = ctx.namespaces.get(&ObjectRef::new(ns)) {
        return Ok(n.metadata.labels.clone().unwrap_or_default());
    }
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    match api.get_opt(ns).await? {
        Some(n) => Ok(n.metadata.labels.unwrap_or_default()),
        None => Ok(BTreeMap::new()),
    }
}

/// The controller's decision for a grant: its verified requester (from the stamp), then
/// validation and the guard with the same context the admission webhook used. Pure.
pub fn judge<P: std::borrow::Borrow<AccessPolicy>>(
    grant: &AccessGrant,
    policies: &[P],
    namespace_labels: BTreeMap<String, String>,
    key: Option<&crate::stamp::StampKey>,
) -> (Decision, crate::stamp::Verified) {
    let verified = crate::stamp::check_grant(key, grant);
    let gctx = GrantContext {
        namespace: grant.namespace().unwrap_or_default(),
        namespace_labels,
        created: grant
            .metadata
            .creation_timestamp
            .as_ref()
            .and_then(|t| chrono::DateTime::from_timestamp(t.0.as_second(), 0)),
        requester: verified.requester.clone(),
    };
    (decide(&grant.spec, policies, &gctx), verified)
}

/// Subscriptions of the Active grants in the cache, for JIT and for PIM (start-up reads).
fn warm_subscriptions(
    grants: &[Arc<lean::LeanGrant>],
) -> (
    std::collections::BTreeSet<String>,
    std::collections::BTreeSet<String>,
) {
    let mut jit = std::collections::BTreeSet::new();
    let mut pim = std::collections::BTreeSet::new();
    for g in grants {
        if g.phase != Some(Phase::Active) || g.metadata.deletion_timestamp.is_some() {
            continue;
        }
        if let Some(sub) = &g.jit_subscription {
            jit.insert(sub.clone());
        }
        if let Some(sub) = &g.pim_subscription {
            pim.insert(sub.clone());
        }
    }
    (jit, pim)
}
