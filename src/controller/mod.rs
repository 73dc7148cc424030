//! kube-runtime wiring: observe (status + Azure reads) -> validate -> guard -> plan -> execute
//! (finalizer patches, intent status writes, Azure writes) -> one status patch -> requeue at
//! the plan's `wake_at`. All decisions are in `crate::lifecycle`; this module only does I/O.

pub mod cache;
pub mod coverage;
pub mod events;
pub mod identity;
pub mod lean;
pub mod policy_guard;
pub mod turns;
pub mod warm;

use crate::api::{AccessGrant, AccessGrantStatus, AccessPolicy, Phase};
use crate::azure::client::ArmClient;
use crate::azure::error::AzureError;
use crate::constants::{FIELD_MANAGER, FINALIZER};
use crate::guard::{Decision, GrantContext, decide};
use crate::lifecycle::{
    GrantMeta, Need, Observed, PlanInput, PlannerConfig, Read, Step, WriteResult, plan,
};
use crate::validate::ValidTarget;
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
    /// Metrics.
    pub metrics: crate::telemetry::Metrics,
    /// Readiness flags.
    pub readiness: crate::telemetry::Readiness,
    /// Leader-election fence: when set, no Azure write is sent unless it allows writing.
    pub fence: Option<crate::leader::Leadership>,
    /// Key that verifies requester stamps (None: admission webhook disabled).
    pub stamp_key: Option<crate::stamp::StampKey>,
    /// Hold an AccessPolicy's deletion while live grants rely on it (see `policy_guard`).
    pub policy_deletion_guard: bool,
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
    let ns_stream = watcher(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(|n: &mut Namespace| n.managed_fields_mut().clear())
    .reflect(ns_writer)
    .touched_objects();
    let ns_task = tokio::spawn(async move {
        ns_stream.for_each(|_| async {}).await;
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
    let grant_events = watcher(grants_api, watcher::Config::default().any_semantic())
        .default_backoff()
        .inspect(move |ev| {
            if let Ok(ev) = ev {
                index.observe(ev);
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
    let controller = Controller::for_stream(grant_events, grants.clone());
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
    });
    {
        let store = ctx.grants.clone();
        let metrics = cfg.metrics.clone();
        let caches = Arc::downgrade(&ctx);
        tokio::spawn(async move {
            // Grants by phase: a full recount now and then (labels are phases, never names).
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                let mut counts: BTreeMap<&'static str, i64> = BTreeMap::new();
                for g in store.state() {
                    if !g.unreadable {
                        let phase = g.phase.unwrap_or(Phase::Pending);
                        *counts
                            .entry(crate::telemetry::phase_label(phase))
                            .or_default() += 1;
                    }
                }
                metrics.set_grants_by_phase(&counts.into_iter().collect::<Vec<_>>());
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
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
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

/// Longest wait for in-flight reconciles at shutdown (above the ARM request timeout).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(35);

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
    let work = reconcile_grant(grant, &ctx).instrument(span);
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

async fn reconcile_grant(mut grant: AccessGrant, ctx: &Context) -> Result<Action, ReconcileError> {
    let ns = grant.namespace().unwrap_or_default();
    let api: Api<AccessGrant> = Api::namespaced(ctx.client.clone(), &ns);
    let labels = namespace_labels(ctx, &ns).await?;
    // Shared, not cloned: with many policies a copy per reconcile dominated at 100k grants.
    let policies = ctx.policies.state();
    let (decision, verified) = judge(&grant, &policies, labels, ctx.cfg.stamp_key.as_ref());
    let Decision { valid, verdict } = decision;
    let covered = ctx.coverage.covered_by_other(&grant);
    let mut observed = Observed::default();
    let mut status = grant.status.clone().unwrap_or_default();
    let mut events: Vec<crate::lifecycle::PlannedEvent> = Vec::new();
    // Set when a read was answered from the start-up snapshot: the next drift check then counts
    // from when the snapshot was taken.
    let mut from_snapshot: Option<tokio::time::Instant> = None;
    for _ in 0..12 {
        let meta = GrantMeta {
            uid: grant.uid().unwrap_or_default(),
            namespace: ns.clone(),
            name: grant.name_any(),
            generation: grant.metadata.generation.unwrap_or(1),
            deleting: grant.metadata.deletion_timestamp.is_some(),
            has_finalizer: grant.finalizers().iter().any(|f| f == FINALIZER),
            requested_by: verified.status.as_ref().map(|r| r.username.clone()),
            requester: verified.status.clone(),
            stamp_problem: verified.problem.clone(),
        };
        // Whole seconds: request windows and end times read cleanly in status and audit.
        let now = chrono::SubsecRound::trunc_subsecs(crate::clock::now(), 0);
        let input = PlanInput {
            meta: &meta,
            spec: valid.as_ref(),
            suspend: grant.spec.suspend.unwrap_or(false),
            status: &status,
            verdict: verdict.as_ref(),
            observed: &observed,
            covered_by_other: covered,
            now,
            config: &ctx.cfg.planner,
        };
        let mut p = plan(&input);
        crate::azure::ops::render_dry_run(&mut p);
        if !p.needs.is_empty() {
            for n in &p.needs {
                if read(ctx, &grant, &status, valid.as_ref().ok(), n, &mut observed)
                    .await
                    .map_err(ReconcileError::AzureRead)?
                {
                    from_snapshot = ctx.warm.taken();
                }
            }
            continue;
        }
        let mut wrote = false;
        // Every write below is guarded by the resourceVersion the plan was made from (or that
        // our own write of this pass left): a grant changed meanwhile (by another replica in a
        // split brain, by the user, or by our own earlier write this cache has not seen yet)
        // makes it a 409, and then nothing more of the plan is done, above all no Azure call;
        // the grant is read again and planned anew.
        let mut conflict = false;
        for step in &p.steps {
            match step {
                Step::AddFinalizer => {
                    match add_finalizer(&api, &grant).await {
                        Ok(g) => grant = g,
                        Err(e) if is_conflict(&e) => {
                            conflict = true;
                            break;
                        }
                        Err(e) => return Err(e.into()),
                    }
                    crate::crashpoint::hit("after-finalizer");
                }
                Step::RecordIntent(st) => {
                    // The claim on the Azure write that follows: only the replica whose intent
                    // write lands on the version it planned from may send it.
                    let rv = grant.metadata.resource_version.clone();
                    let written = match write_status(&api, &grant, st, rv.as_deref()).await {
                        Ok(w) => w,
                        Err(e) if is_conflict(&e) => {
                            conflict = true;
                            break;
                        }
                        Err(e) => return Err(e.into()),
                    };
                    grant.metadata.resource_version = written;
                    audit(&grant, &status, st);
                    observe_transition(ctx, &grant, &status, st);
                    status = (**st).clone();
                    events.extend(p.events.iter().cloned());
                    crate::crashpoint::hit("after-intent");
                }
                Step::Azure(w) => {
                    // Fence: checked right before the write, never earlier.
                    if ctx.cfg.fence.as_ref().is_some_and(|f| !f.may_write()) {
                        return Err(ReconcileError::NotLeader);
                    }
                    let intent = status.intent.clone();
                    // Taking access away goes before granting when ARM's budget is short.
                    let call = async {
                        if intent.as_ref().is_some_and(|i| i.operation.is_removal()) {
                            crate::azure::client::as_removal(ctx.arm.execute(&ns, w)).await
                        } else {
                            ctx.arm.execute(&ns, w).await
                        }
                    };
                    // Abandoned `write_deadline` after its intent was recorded: the planner
                    // takes an intent older than that (plus `write_settle`) as no longer in
                    // flight, and may then send it again.
                    let deadline = intent
                        .as_ref()
                        .map_or(crate::clock::now(), |i| i.recorded_at)
                        + ctx.cfg.planner.write_deadline;
                    let left = (deadline - crate::clock::now())
                        .to_std()
                        .unwrap_or(Duration::ZERO);
                    let outcome = match tokio::time::timeout(left, call).await {
                        Ok(o) => o,
                        Err(_) => Err(AzureError::Transient {
                            status: None,
                            code: "WriteDeadline".into(),
                            message: format!(
                                "no answer within {}s of recording the intent; Azure may still apply it",
                                ctx.cfg.planner.write_deadline.num_seconds()
                            ),
                        }),
                    };
                    invalidate_after_write(ctx, w);
                    crate::crashpoint::hit("after-azure-write");
                    if let Err(e) = &outcome {
                        tracing::info!(category = e.category(), "azure write failed");
                    }
                    observed = Observed {
                        last_write: intent.map(|i| WriteResult {
                            operation: i.operation,
                            request_id: i.request_id,
                            outcome,
                        }),
                        ..Default::default()
                    };
                    wrote = true;
                    break;
                }
                Step::RemoveFinalizer => {
                    events.extend(p.events.iter().cloned());
                    publish(ctx, &grant, &events).await;
                    audit(&grant, &status, &p.status);
                    observe_transition(ctx, &grant, &status, &p.status);
                    crate::crashpoint::hit("before-remove-finalizer");
                    match remove_finalizer(&api, &grant).await {
                        Ok(()) => return Ok(Action::await_change()),
                        Err(e) if is_conflict(&e) => {
                            conflict = true;
                            break;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        if conflict {
            match reread(&api, &grant).await? {
                Some(g) => {
                    status = g.status.clone().unwrap_or_default();
                    grant = g;
                    observed = Observed::default();
                    continue;
                }
                None => return Ok(Action::requeue(Duration::from_secs(1))),
            }
        }
        if wrote {
            continue;
        }
        if p.status != status {
            let rv = grant.metadata.resource_version.clone();
            match write_status(&api, &grant, &p.status, rv.as_deref()).await {
                Ok(_) => {}
                Err(e) if is_conflict(&e) => match reread(&api, &grant).await? {
                    Some(g) => {
                        // Plan again from the newer object; the outcome of this pass's
                        // Azure write still applies if that object records the same intent.
                        status = g.status.clone().unwrap_or_default();
                        grant = g;
                        observed = Observed {
                            last_write: observed.last_write.take(),
                            ..Default::default()
                        };
                        continue;
                    }
                    None => return Ok(Action::requeue(Duration::from_secs(1))),
                },
                Err(e) => return Err(e.into()),
            }
            crate::crashpoint::hit("after-status");
        }
        events.extend(p.events.iter().cloned());
        publish(ctx, &grant, &events).await;
        audit(&grant, &status, &p.status);
        observe_transition(ctx, &grant, &status, &p.status);
        let mut wake = p.wake_at.map(|t| {
            (t - crate::clock::now())
                .to_std()
                .unwrap_or(Duration::from_secs(1))
                .max(Duration::from_millis(200))
        });
        if let Some(taken) = from_snapshot
            && let Ok(drift) = ctx.cfg.planner.drift_check.to_std()
        {
            // Spread over the second half of the window by the grant's uid: every grant the
            // snapshot answered would otherwise check at the same instant (at 100k, a herd
            // that delayed expiries behind it by up to 30 s; BENCHMARKS.md).
            let by = (taken + drift_spread(drift, &grant.uid().unwrap_or_default()))
                .saturating_duration_since(tokio::time::Instant::now())
                .max(Duration::from_millis(200));
            wake = Some(wake.map_or(by, |w| w.min(by)));
        }
        return Ok(match wake {
            Some(w) => Action::requeue(w),
            None => Action::await_change(),
        });
    }
    tracing::warn!("reconcile did not settle; retrying");
    Ok(Action::requeue(Duration::from_secs(5)))
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

async fn read(
    ctx: &Context,
    grant: &AccessGrant,
    status: &AccessGrantStatus,
    valid: Option<&crate::validate::ValidGrant>,
    need: &Need,
    observed: &mut Observed,
) -> Result<bool, AzureError> {
    let ns = grant.namespace().unwrap_or_default();
    let pim_target = status
        .target
        .as_ref()
        .and_then(|t| t.pim.clone())
        .or_else(|| match valid.map(|v| &v.target) {
            Some(ValidTarget::Pim(p)) => Some(crate::api::PimTarget {
                mode: p.mode,
                scope: p.scope.to_string(),
                role_definition_id: p.role_definition_id.to_string(),
                principal_id: p.principal_id.clone(),
                linked_role_eligibility_schedule_id: p.linked_role_eligibility_schedule_id.clone(),
                identity: p.identity.clone(),
            }),
            _ => None,
        });
    let jit_target = status
        .target
        .as_ref()
        .and_then(|t| t.jit.clone())
        .or_else(|| match valid.map(|v| &v.target) {
            Some(ValidTarget::Jit(j)) => Some(crate::api::JitTarget {
                subscription_id: j.subscription_id.clone(),
                resource_group: j.resource_group.clone(),
                location: j.location.clone(),
                policy_name: j.policy_name.clone(),
                virtual_machines: vec![],
            }),
            _ => None,
        });
    // With a write of unknown outcome recorded, read Azure itself, never a cached answer that
    // may predate the write.
    if status.intent.is_some() {
        if let Some(t) = &pim_target {
            ctx.pim_instances.invalidate(&(
                t.scope.to_ascii_lowercase(),
                t.principal_id.to_ascii_lowercase(),
            ));
            ctx.warm.forget_pim(&t.scope, &t.principal_id);
        }
        if let Some(t) = &jit_target {
            let key = jit_key(
                &t.subscription_id,
                &t.resource_group,
                &t.location,
                &t.policy_name,
            );
            ctx.jit_policies.invalidate(&key);
            ctx.warm.forget_jit(&key);
        }
    }
    // Only a pass that merely confirms an Active grant's access may use the start-up snapshot.
    let steady = matches!(need, Need::JitPolicy | Need::PimInstance)
        && snapshot_may_answer(grant, status, valid);
    if steady {
        ctx.warm.wait_ready(warm::WAIT_LIMIT).await;
    }
    // A shared answer must come from a read made after the grant's current request started
    // (one made before cannot show it; another replica's write does not invalidate this
    // replica's cache) and, past the grant's end, after the end (confirming an expiry from an
    // older one would only wait another poll).
    let now_utc = crate::clock::now();
    let since = [
        status.end_time,
        status.start_time,
        status.jit.as_ref().and_then(|j| j.request_start_time),
    ]
    .into_iter()
    .flatten()
    .filter_map(|t| {
        let past = (now_utc - t).to_std().ok()?;
        tokio::time::Instant::now().checked_sub(past)
    })
    .max();
    // The start-up snapshot too must be newer than the grant's current request.
    let steady = steady
        && ctx
            .warm
            .taken()
            .is_none_or(|taken| since.is_none_or(|s| taken >= s));
    match need {
        Need::PimRequest(name) => {
            let Some(t) = pim_target else {
                observed.pim_request = Read::Missing;
                return Ok(false);
            };
            let who = match &t.identity {
                Some(id) => crate::azure::client::Caller::Grant(&ns, id),
                None => crate::azure::client::Caller::Operator,
            };
            observed.pim_request = match ctx.arm.pim_get(&t.scope, name, &who).await? {
                Some(r) => Read::Found(r),
                None => Read::Missing,
            };
        }
        Need::PimInstance => {
            let Some(t) = pim_target else {
                observed.pim_instance = Read::Missing;
                return Ok(false);
            };
            if steady
                && let Some(i) = ctx
                    .warm
                    .pim(&t.scope, &t.role_definition_id, &t.principal_id)
            {
                observed.pim_instance = Read::Found(i.instance_view());
                return Ok(true);
            }
            // One list per (scope, principal) serves every grant of that principal there.
            let key = (
                t.scope.to_ascii_lowercase(),
                t.principal_id.to_ascii_lowercase(),
            );
            let items = ctx
                .pim_instances
                .get_or_load_since(&key, since, || {
                    ctx.arm.pim_instances_for(&t.scope, &t.principal_id)
                })
                .await?;
            observed.pim_instance = match crate::azure::ops::instance_in(
                &items,
                &t.scope,
                &t.role_definition_id,
                &t.principal_id,
            ) {
                Some(i) => Read::Found(i),
                None => Read::Missing,
            };
        }
        Need::PimPolicy => {
            let Some(t) = pim_target else {
                observed.pim_policy = Read::Missing;
                return Ok(false);
            };
            let key = (
                t.scope.to_ascii_lowercase(),
                t.role_definition_id.to_ascii_lowercase(),
            );
            observed.pim_policy = match ctx
                .pim_policies
                .get_or_load(&key, || ctx.arm.pim_policy(&t.scope, &t.role_definition_id))
                .await?
            {
                Some(p) => Read::Found(p),
                None => Read::Missing,
            };
        }
        Need::JitPolicy => {
            let Some(t) = jit_target else {
                observed.jit_policy = Read::Missing;
                return Ok(false);
            };
            // One GET per policy serves every grant on it.
            let key = jit_key(
                &t.subscription_id,
                &t.resource_group,
                &t.location,
                &t.policy_name,
            );
            if steady && let Some(p) = ctx.warm.jit(&key) {
                observed.jit_policy = Read::Found(p);
                return Ok(true);
            }
            observed.jit_policy = match ctx
                .jit_policies
                .get_or_load_since(&key, since, || {
                    ctx.arm.jit_policy(
                        &t.subscription_id,
                        &t.resource_group,
                        &t.location,
                        &t.policy_name,
                    )
                })
                .await?
            {
                Some(p) => Read::Found(p),
                None => Read::Missing,
            };
        }
    }
    Ok(false)
}

/// A point in the second half of `window`, fixed per `key` (a grant's uid): spreads checks
/// that would otherwise fall due together.
fn drift_spread(window: Duration, key: &str) -> Duration {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    let frac = (h.finish() % 1024) as f64 / 1024.0;
    window.mul_f64(0.5 + 0.5 * frac)
}

/// Whether the start-up snapshot may answer this pass's read: the grant is Active with no write
/// of unknown outcome, is kept (not deleted, suspended or switched to a dry run), and neither
/// its end nor its renewal falls while the snapshot is valid. Such a pass only confirms the
/// access and re-arms timers (see `warm`).
fn snapshot_may_answer(
    grant: &AccessGrant,
    status: &AccessGrantStatus,
    valid: Option<&crate::validate::ValidGrant>,
) -> bool {
    let Some(valid) = valid else {
        return false;
    };
    let Some(end) = status.end_time else {
        return false;
    };
    // Neither the end nor the renewal may fall while any start-up snapshot can still serve.
    let horizon = crate::clock::now()
        + chrono::Duration::from_std(warm::VALIDITY).unwrap_or(chrono::Duration::zero());
    let renew_at = valid.renewal.as_ref().map_or(end, |r| end - r.before);
    status.intent.is_none()
        && status.phase == Phase::Active
        && grant.metadata.deletion_timestamp.is_none()
        && !valid.suspend
        && !valid.dry_run
        && end > horizon
        && renew_at > horizon
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

fn jit_key(sub: &str, rg: &str, loc: &str, name: &str) -> (String, String, String, String) {
    (
        sub.to_ascii_lowercase(),
        rg.to_ascii_lowercase(),
        loc.to_ascii_lowercase(),
        name.to_ascii_lowercase(),
    )
}

/// A write changes what the cached reads would show: forget them.
fn invalidate_after_write(ctx: &Context, w: &crate::lifecycle::AzureWrite) {
    use crate::lifecycle::AzureWrite;
    match w {
        AzureWrite::Pim { scope, body, .. } => {
            ctx.pim_instances.invalidate(&(
                scope.to_ascii_lowercase(),
                body.principal_id.to_ascii_lowercase(),
            ));
            ctx.warm.forget_pim(scope, &body.principal_id);
        }
        AzureWrite::PimCancel { .. } => {}
        AzureWrite::JitInitiate {
            subscription_id,
            resource_group,
            location,
            policy_name,
            ..
        } => {
            let key = jit_key(subscription_id, resource_group, location, policy_name);
            ctx.jit_policies.invalidate(&key);
            ctx.warm.forget_jit(&key);
        }
    }
}

/// A 409: the object changed since the version a write was guarded by.
fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// The grant as the apiserver has it now, after a 409. None when it is gone, or when its spec or
/// deletion changed (judged anew by the next reconcile, which that change triggers).
async fn reread(
    api: &Api<AccessGrant>,
    g: &AccessGrant,
) -> Result<Option<AccessGrant>, kube::Error> {
    tracing::debug!("the grant changed since it was planned from; reading it again");
    Ok(api.get_opt(&g.name_any()).await?.filter(|fresh| {
        fresh.metadata.generation == g.metadata.generation
            && fresh.metadata.deletion_timestamp.is_some()
                == g.metadata.deletion_timestamp.is_some()
    }))
}

/// Adds our finalizer, guarded by the resourceVersion the plan was made from: the object it
/// returns differs from that one only by the finalizer, so the intent write that follows (guarded
/// by the returned version) still proves nothing else changed.
async fn add_finalizer(
    api: &Api<AccessGrant>,
    g: &AccessGrant,
) -> Result<AccessGrant, kube::Error> {
    let mut finalizers = g.finalizers().to_vec();
    finalizers.push(FINALIZER.to_string());
    let patch = json!({"metadata": {
        "resourceVersion": g.metadata.resource_version,
        "finalizers": finalizers,
    }});
    api.patch(
        &g.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
}

/// Removes our finalizer, guarded by the resourceVersion the plan was made from: a replica whose
/// view is stale (e.g. one that has not seen an intent recorded by another) must not let go.
async fn remove_finalizer(api: &Api<AccessGrant>, g: &AccessGrant) -> Result<(), kube::Error> {
    if !g.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(());
    }
    let rest: Vec<&String> = g.finalizers().iter().filter(|f| *f != FINALIZER).collect();
    let patch = json!({"metadata": {
        "resourceVersion": g.metadata.resource_version,
        "finalizers": rest,
    }});
    match api
        .patch(
            &g.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Writes status by server-side apply under one field manager; fields we no longer set are
/// removed by the apiserver because we owned them.
/// With `resource_version`, the write is refused (409) unless the object is still at that
/// version. Returns the object's new resourceVersion.
async fn write_status(
    api: &Api<AccessGrant>,
    g: &AccessGrant,
    st: &AccessGrantStatus,
    resource_version: Option<&str>,
) -> Result<Option<String>, kube::Error> {
    let mut metadata = json!({"name": g.name_any(), "namespace": g.namespace()});
    if let Some(rv) = resource_version {
        metadata["resourceVersion"] = json!(rv);
    }
    let body = json!({
        "apiVersion": "accessgrant.io/v1alpha1",
        "kind": "AccessGrant",
        "metadata": metadata,
        "status": st,
    });
    api.patch_status(
        &g.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map(|o| o.metadata.resource_version)
}

async fn publish(ctx: &Context, g: &AccessGrant, events: &[crate::lifecycle::PlannedEvent]) {
    let reference = g.object_ref(&());
    for e in events {
        if e.reason == crate::constants::reason::BREAK_GLASS {
            let kind = if g.spec.jit.is_some() { "JIT" } else { "PIM" };
            ctx.cfg.metrics.break_glass(kind);
            println!(
                "{}",
                json!({
                    "audit": "BreakGlass",
                    "time": crate::clock::now().to_rfc3339(),
                    "namespace": g.namespace(),
                    "name": g.name_any(),
                    "uid": g.uid(),
                    "kind": kind,
                    "requestedBy": crate::stamp::check_grant(ctx.cfg.stamp_key.as_ref(), g).status.map(|r| r.username),
                    "justification": g.spec.justification,
                    "ticket": g.spec.ticket,
                    "note": e.note,
                })
            );
        }
        let ev = events::EventSpec {
            warning: e.warning,
            reason: e.reason.clone(),
            note: e.note.chars().take(1000).collect(),
            action: "Reconcile".into(),
        };
        if let Err(err) = ctx.recorder.publish(&ev, &reference).await {
            tracing::debug!(error = %err, "event not published");
        }
    }
}

/// Time-to-Active and expiry-to-status lag, measured at the transition.
fn observe_transition(
    ctx: &Context,
    g: &AccessGrant,
    before: &AccessGrantStatus,
    after: &AccessGrantStatus,
) {
    if before.phase == after.phase {
        return;
    }
    let now = crate::clock::now();
    if after.phase == Phase::Active
        && after.renewals == 0
        && after.attempt <= 1
        && let Some(created) = g
            .metadata
            .creation_timestamp
            .as_ref()
            .and_then(|t| chrono::DateTime::from_timestamp(t.0.as_second(), 0))
    {
        ctx.cfg
            .metrics
            .time_to_active((now - created).num_milliseconds() as f64 / 1000.0);
    }
    if after.phase == Phase::Expired
        && let Some(end) = after.end_time
    {
        ctx.cfg
            .metrics
            .expiry_lag((now - end).num_milliseconds() as f64 / 1000.0);
    }
}

/// One JSON line on stdout per transition: the audit trail outlives Azure's retention.
fn audit(g: &AccessGrant, before: &AccessGrantStatus, after: &AccessGrantStatus) {
    if before.phase == after.phase
        && before.reason == after.reason
        && before.attempt == after.attempt
    {
        return;
    }
    let line = json!({
        "audit": "AccessGrantTransition",
        "time": crate::clock::now().to_rfc3339(),
        "namespace": g.namespace(),
        "name": g.name_any(),
        "uid": g.uid(),
        "generation": g.metadata.generation,
        "requestedBy": after.requested_by,
        "requester": after.requester,
        "breakGlass": g.spec.break_glass.unwrap_or(false),
        "dryRun": g.spec.dry_run.unwrap_or(false),
        "from": format!("{:?}", before.phase),
        "to": format!("{:?}", after.phase),
        "reason": after.reason,
        "statusReason": after.status_reason,
        "message": after.message,
        "attempt": after.attempt,
        "target": after.target,
        "startTime": after.start_time,
        "endTime": after.end_time,
        "pim": after.pim,
        "jit": after.jit.as_ref().map(|j| json!({"marker": j.marker, "requestStartTime": j.request_start_time, "requestor": j.requestor})),
    });
    println!("{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_checks_after_a_snapshot_spread_over_the_second_half_of_the_window() {
        let w = Duration::from_secs(300);
        let picks: Vec<Duration> = (0..1000)
            .map(|i| drift_spread(w, &format!("uid-{i}")))
            .collect();
        assert!(picks.iter().all(|d| *d >= w / 2 && *d <= w));
        assert_eq!(drift_spread(w, "uid-7"), drift_spread(w, "uid-7"));
        let early = picks.iter().filter(|d| **d < w * 3 / 4).count();
        assert!(
            (350..650).contains(&early),
            "{early} of 1000 in the first quarter"
        );
    }
}
