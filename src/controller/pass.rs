//! One reconcile pass of a grant: the executor's doors in production. The grant door is the
//! Kubernetes API (guarded patches, server-side apply of status, events, audit lines); the Azure
//! door is the ARM client behind the shared read caches and the start-up snapshot (`warm`).

use super::{Context, ReconcileError, events, judge, namespace_labels, warm};
use crate::api::{AccessGrant, AccessGrantStatus, Intent, Phase};
use crate::azure::error::AzureError;
use crate::constants::{FIELD_MANAGER, FINALIZER};
use crate::executor::{AzureDoor, ExecError, GrantDoor, Judged, Outcome, Stored, execute};
use crate::guard::Decision;
use crate::lifecycle::{AzureWrite, GrantMeta, Need, Observed, PlannedEvent, Read, WriteAnswer};
use crate::validate::{ValidGrant, ValidTarget};
use chrono::{DateTime, Utc};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use std::time::Duration;

/// The doors of one pass.
struct Pass<'a> {
    ctx: &'a Context,
    api: Api<AccessGrant>,
    grant: AccessGrant,
    verified: crate::stamp::Verified,
    valid: Option<ValidGrant>,
    /// Set when a read was answered from the start-up snapshot: the next drift check then counts
    /// from when the snapshot was taken.
    from_snapshot: Option<tokio::time::Instant>,
    /// When the pass began (the revoke lag of a suspension or a policy change counts from it).
    started: DateTime<Utc>,
}

pub(super) async fn reconcile_grant(
    grant: AccessGrant,
    ctx: &Context,
) -> Result<Action, ReconcileError> {
    let started = crate::clock::now();
    let ns = grant.namespace().unwrap_or_default();
    let labels = namespace_labels(ctx, &ns).await?;
    // Shared, not cloned: with many policies a copy per reconcile dominated at 100k grants.
    let policies = ctx.policies.state();
    let (decision, verified) = judge(&grant, &policies, labels, ctx.cfg.stamp_key.as_ref());
    let Decision { valid, verdict } = decision;
    let covered = ctx.coverage.covered_by_other(&grant);
    let port_holder = ctx.coverage.jit_port_holder(&grant);
    let suspend = grant.spec.suspend.unwrap_or(false);
    let mut pass = Pass {
        ctx,
        api: Api::namespaced(ctx.client.clone(), &ns),
        grant,
        verified,
        valid: valid.as_ref().ok().cloned(),
        from_snapshot: None,
        started,
    };
    let judged = Judged {
        spec: valid.as_ref(),
        suspend,
        verdict: verdict.as_ref(),
        covered_by_other: covered,
        port_holder: port_holder.as_ref(),
        config: &ctx.cfg.planner,
    };
    let outcome = execute(&mut pass, &judged).await.map_err(|e| match e {
        ExecError::Grant(e) => ReconcileError::Kube(e),
        ExecError::AzureRead(e) => ReconcileError::AzureRead(e),
        ExecError::NotLeader => ReconcileError::NotLeader,
    })?;
    Ok(match outcome {
        Outcome::Released => Action::await_change(),
        Outcome::Changed => Action::requeue(Duration::from_secs(1)),
        Outcome::Unsettled => {
            tracing::warn!("reconcile did not settle; retrying");
            Action::requeue(Duration::from_secs(5))
        }
        Outcome::Settled { wake_at } => {
            let mut wake = wake_at.map(|t| {
                (t - crate::clock::now())
                    .to_std()
                    .unwrap_or(Duration::from_secs(1))
                    .max(Duration::from_millis(200))
            });
            if let Some(taken) = pass.from_snapshot
                && let Ok(drift) = ctx.cfg.planner.drift_check.to_std()
            {
                // Spread over the second half of the window by the grant's uid: every grant the
                // snapshot answered would otherwise check at the same instant (at 100k, a herd
                // that delayed expiries behind it by up to 30 s; BENCHMARKS.md).
                let by = (taken + drift_spread(drift, &pass.grant.uid().unwrap_or_default()))
                    .saturating_duration_since(tokio::time::Instant::now())
                    .max(Duration::from_millis(200));
                wake = Some(wake.map_or(by, |w| w.min(by)));
            }
            match wake {
                Some(w) => Action::requeue(w),
                None => Action::await_change(),
            }
        }
    })
}

/// A guarded grant write's failure: a 409 is a conflict, the rest fail the pass.
fn stored<T>(r: Result<T, kube::Error>) -> Result<T, Stored<kube::Error>> {
    r.map_err(|e| {
        if is_conflict(&e) {
            Stored::Conflict
        } else {
            Stored::Failed(e)
        }
    })
}

impl GrantDoor for Pass<'_> {
    type Error = kube::Error;

    fn meta(&self) -> GrantMeta {
        let g = &self.grant;
        GrantMeta {
            uid: g.uid().unwrap_or_default(),
            namespace: g.namespace().unwrap_or_default(),
            name: g.name_any(),
            generation: g.metadata.generation.unwrap_or(1),
            deleting: g.metadata.deletion_timestamp.is_some(),
            has_finalizer: g.finalizers().iter().any(|f| f == FINALIZER),
            requested_by: self.verified.status.as_ref().map(|r| r.username.clone()),
            requester: self.verified.status.clone(),
            stamp_problem: self.verified.problem.clone(),
        }
    }

    fn status(&self) -> AccessGrantStatus {
        self.grant.status.clone().unwrap_or_default()
    }

    fn now(&self) -> DateTime<Utc> {
        // Whole seconds: request windows and end times read cleanly in status and audit.
        chrono::SubsecRound::trunc_subsecs(crate::clock::now(), 0)
    }

    async fn add_finalizer(&mut self) -> Result<(), Stored<kube::Error>> {
        self.grant = stored(add_finalizer(&self.api, &self.grant).await)?;
        Ok(())
    }

    async fn record_intent(&mut self, st: &AccessGrantStatus) -> Result<(), Stored<kube::Error>> {
        let rv = self.grant.metadata.resource_version.clone();
        let written = stored(write_status(&self.api, &self.grant, st, rv.as_deref()).await)?;
        self.grant.metadata.resource_version = written;
        Ok(())
    }

    async fn write_status(&mut self, st: &AccessGrantStatus) -> Result<(), Stored<kube::Error>> {
        let rv = self.grant.metadata.resource_version.clone();
        stored(write_status(&self.api, &self.grant, st, rv.as_deref()).await)?;
        Ok(())
    }

    async fn remove_finalizer(&mut self) -> Result<(), Stored<kube::Error>> {
        // Noted before the patch: its delete event may arrive before the answer.
        let uid = self.grant.uid().unwrap_or_default();
        self.ctx.released.note(&uid);
        let r = stored(remove_finalizer(&self.api, &self.grant).await);
        if r.is_err() {
            self.ctx.released.take_back(&uid);
        } else {
            self.ctx.cfg.notifier.forget(&uid);
        }
        r
    }

    async fn reread(&mut self) -> Result<bool, kube::Error> {
        Ok(match reread(&self.api, &self.grant).await? {
            Some(g) => {
                self.grant = g;
                true
            }
            None => false,
        })
    }

    async fn publish(&mut self, events: &[PlannedEvent]) {
        publish(self.ctx, &self.grant, events).await;
    }

    fn transition(&mut self, before: &AccessGrantStatus, after: &AccessGrantStatus) {
        audit(&self.grant, before, after);
        observe_transition(self.ctx, &self.grant, before, after);
        // After the status is written: the history it records is what a restart replays.
        self.ctx
            .cfg
            .notifier
            .grant_status(&self.grant, before, after, crate::clock::now());
    }

    fn crashpoint(&mut self, name: &'static str) {
        crate::crashpoint::hit(name);
    }
}

impl AzureDoor for Pass<'_> {
    async fn observe(
        &mut self,
        need: &Need,
        status: &AccessGrantStatus,
        observed: &mut Observed,
    ) -> Result<(), AzureError> {
        if read(
            self.ctx,
            &self.grant,
            status,
            self.valid.as_ref(),
            need,
            observed,
        )
        .await?
        {
            self.from_snapshot = self.ctx.warm.taken();
        }
        Ok(())
    }

    fn may_write(&self) -> bool {
        self.ctx.cfg.fence.as_ref().is_none_or(|f| f.may_write())
    }

    async fn write(
        &mut self,
        w: &AzureWrite,
        intent: Option<&Intent>,
        deadline: DateTime<Utc>,
    ) -> Result<WriteAnswer, AzureError> {
        let ns = self.grant.namespace().unwrap_or_default();
        let arm = &self.ctx.arm;
        // Taking access away goes before granting when ARM's budget is short.
        let call = async {
            if intent.is_some_and(|i| i.operation.is_removal()) {
                crate::azure::client::as_removal(arm.execute(&ns, w)).await
            } else {
                arm.execute(&ns, w).await
            }
        };
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
                    self.ctx.cfg.planner.write_deadline.num_seconds()
                ),
            }),
        };
        invalidate_after_write(self.ctx, w);
        if intent.is_some_and(|i| i.operation.is_removal()) {
            self.observe_removal(outcome.is_ok());
        }
        outcome
    }

    fn describe(&self, w: &AzureWrite) -> (String, String) {
        crate::azure::ops::describe(w)
    }
}

impl Pass<'_> {
    /// Revoke lag when Azure accepted a removal; a failure counter when it did not.
    fn observe_removal(&self, accepted: bool) {
        let m = &self.ctx.cfg.metrics;
        let kind = if self.grant.spec.jit.is_some() {
            "JIT"
        } else {
            "PIM"
        };
        if !accepted {
            m.revocation_failure(kind);
            return;
        }
        let now = crate::clock::now();
        let (trigger, since) = match &self.grant.metadata.deletion_timestamp {
            Some(t) => (
                "delete",
                DateTime::from_timestamp(t.0.as_second(), t.0.subsec_nanosecond().max(0) as u32)
                    .unwrap_or(self.started),
            ),
            None if self.grant.spec.suspend == Some(true) => ("suspend", self.started),
            None => ("policy", self.started),
        };
        m.revoke_lag(trigger, (now - since).num_milliseconds() as f64 / 1000.0);
    }
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
