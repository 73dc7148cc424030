//! The orphan sweep: Azure is the ledger. Every access the operator creates names its grant in
//! Azure (the `[ag:ns/name#attempt.uid8]` marker in the justification of JIT requests and PIM
//! grant requests). Now and then (`--orphan-sweep-interval`, default PT1M) the sweep reads, per
//! subscription, the JIT policies and the PIM requests and active assignments (three paged
//! lists), and removes access made by this operator whose grant no longer exists: a grant
//! deleted while the operator was stopped with its finalizer removed, or deleted with the
//! webhook bypassed.
//!
//! It never touches:
//! - access whose grant is still in the cluster (same namespace, name and uid prefix): the
//!   grant's own reconcile owns it;
//! - access on a target some live grant asks for (a PIM `(principal, role, scope)`, a JIT VM
//!   port): closing it would take that grant's access away;
//! - access without our marker (made by someone else, or adopted by a grant: an adopted
//!   assignment was not created by a request of ours);
//! - a PIM assignment that does not match our request's schedule (permanent, or ending more than
//!   a few minutes away from the request's end): it was not made by that request.
//!
//! Each removal leaves a Warning Event on the grant's namespace, an audit line on stdout and
//! `accessgrant_orphans_removed_total{kind}`. Only the leader sweeps.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use kube::runtime::reflector::ObjectRef;
use serde_json::json;

use super::coverage::{jit_port_key, pim_target_key};
use super::{Context, events, lean::LeanGrant};
use crate::api::Operation;
use crate::azure::models::{jit_port_closed, parse_time, pim_class};
use crate::constants::REQUEST_NAMESPACE;
use crate::lifecycle::{
    AzureWrite, JitInitiatePort, JitInitiateVm, PimClass, PimRequestBody, parse_marker,
};

/// How far a PIM assignment's end may lie from the end our request asked for and still be the
/// one that request made.
const SCHEDULE_SLACK: chrono::Duration = chrono::Duration::minutes(5);

/// What one sweep did.
#[derive(Debug, Default)]
pub struct SweepReport {
    pub subscriptions: usize,
    pub reads: usize,
    pub removed: usize,
    pub failed: usize,
}

/// Runs the sweep every `interval` until the process ends (started with the controller, so
/// only by the leader).
pub(crate) async fn run(ctx: Arc<Context>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = ctx.sweep_now.notified() => {}
        }
        if !ctx.cfg.readiness.is_ready() {
            continue; // caches not synced: every grant would look gone
        }
        let started = tokio::time::Instant::now();
        let r = sweep(&ctx).await;
        tracing::info!(
            subscriptions = r.subscriptions,
            reads = r.reads,
            removed = r.removed,
            failed = r.failed,
            millis = started.elapsed().as_millis() as u64,
            "orphan sweep"
        );
    }
}

/// Subscriptions the sweep reads: those the AccessPolicies name (scopes and VM ids) and those
/// of the grants in the cache.
fn subscriptions(ctx: &Context) -> BTreeSet<String> {
    let mut subs = BTreeSet::new();
    let sub_of = |id: &str| {
        let mut parts = id.split('/').filter(|s| !s.is_empty());
        match (parts.next(), parts.next()) {
            (Some(k), Some(s)) if k.eq_ignore_ascii_case("subscriptions") && s != "*" => {
                Some(s.to_ascii_lowercase())
            }
            _ => None,
        }
    };
    for p in ctx.policies.state() {
        if let Some(pim) = &p.spec.pim {
            subs.extend(pim.scopes.iter().filter_map(|s| sub_of(s)));
        }
        if let Some(jit) = &p.spec.jit {
            subs.extend(jit.virtual_machines.iter().filter_map(|s| sub_of(s)));
        }
    }
    for g in ctx.grants.state() {
        subs.extend(g.jit_subscription.clone());
        subs.extend(g.pim_subscription.clone());
    }
    subs
}

/// The grant a marker names is still in the cluster.
fn owner_lives(ctx: &Context, ns: &str, name: &str, uid8: &str) -> bool {
    ctx.grants
        .get(&ObjectRef::<LeanGrant>::new(name).within(ns))
        .is_some_and(|g| {
            g.metadata
                .uid
                .as_deref()
                .is_some_and(|u| u.starts_with(uid8))
        })
}

/// One sweep over every subscription.
pub(crate) async fn sweep(ctx: &Context) -> SweepReport {
    let mut r = SweepReport::default();
    for sub in subscriptions(ctx) {
        r.subscriptions += 1;
        sweep_jit(ctx, &sub, &mut r).await;
        sweep_pim(ctx, &sub, &mut r).await;
    }
    r
}

fn may_write(ctx: &Context) -> bool {
    ctx.cfg.fence.as_ref().is_none_or(|f| f.may_write())
}

async fn sweep_jit(ctx: &Context, sub: &str, r: &mut SweepReport) {
    r.reads += 1;
    let policies = match ctx.arm.jit_policies_in_subscription(sub).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(subscription = sub, error = %e, "orphan sweep: listing JIT policies failed");
            r.failed += 1;
            return;
        }
    };
    let now = crate::clock::now();
    let window = ctx
        .cfg
        .planner
        .jit_early_close
        .unwrap_or(chrono::Duration::minutes(1))
        .max(chrono::Duration::seconds(1));
    for pol in policies {
        let Some((rg, location, policy_name)) = pol.id.as_deref().and_then(jit_policy_parts) else {
            continue;
        };
        // The newest request per VM port is the one in force (Azure supersedes older ones).
        let mut closed_here: HashSet<String> = HashSet::new();
        for req in pol.properties.requests.clone().unwrap_or_default() {
            let Some(just) = req.justification.as_deref() else {
                continue;
            };
            if just.contains("closing early") {
                continue;
            }
            let Some((ns, name, attempt, uid8)) = parse_marker(just) else {
                continue;
            };
            if owner_lives(ctx, &ns, &name, &uid8) {
                continue;
            }
            for vm in &req.virtual_machines {
                for port in &vm.ports {
                    let open = !port.status.as_deref().is_some_and(jit_port_closed)
                        && port
                            .end_time_utc
                            .as_deref()
                            .and_then(parse_time)
                            .is_some_and(|e| e > now);
                    let key = jit_port_key(&vm.id, port.number);
                    if !open || ctx.coverage.asked_for(&key) || !closed_here.insert(key) {
                        continue;
                    }
                    let Some(prefix) = port.allowed_source_address_prefix.clone().or_else(|| {
                        port.allowed_source_address_prefixes
                            .as_ref()
                            .and_then(|p| p.first().cloned())
                    }) else {
                        continue;
                    };
                    let Ok(number) = u16::try_from(port.number) else {
                        continue;
                    };
                    let marker = format!("[ag:{ns}/{name}#{}.{uid8}]", attempt + 1);
                    let w = AzureWrite::JitInitiate {
                        subscription_id: sub.to_string(),
                        resource_group: rg.clone(),
                        location: location.clone(),
                        policy_name: policy_name.clone(),
                        vms: vec![JitInitiateVm {
                            id: vm.id.clone(),
                            ports: vec![JitInitiatePort {
                                number,
                                allowed_source_address_prefix: prefix.clone(),
                                end_time_utc: now + window,
                            }],
                        }],
                        justification: format!(
                            "accessgrant {ns}/{name}: closing early (orphan sweep: the grant is gone) {marker}"
                        ),
                    };
                    let what = format!("JIT port {}:{number} from {prefix}", vm.id);
                    remove(ctx, r, &ns, &name, "JIT", &what, &w).await;
                }
            }
        }
    }
}

async fn sweep_pim(ctx: &Context, sub: &str, r: &mut SweepReport) {
    r.reads += 2;
    let requests = match ctx.arm.pim_requests_in_subscription(sub).await {
        Ok(x) => x,
        Err(e) => {
            tracing::warn!(subscription = sub, error = %e, "orphan sweep: listing PIM requests failed");
            r.failed += 1;
            return;
        }
    };
    let ours: Vec<_> = requests
        .into_iter()
        .filter(|q| {
            let p = &q.properties;
            p.justification.as_deref().and_then(parse_marker).is_some()
                && !p
                    .request_type
                    .as_deref()
                    .is_some_and(crate::azure::models::is_removal_type)
                && pim_class(p.status.as_deref().unwrap_or_default()) == PimClass::Granted
        })
        .collect();
    if ours.is_empty() {
        return;
    }
    let instances = match ctx.arm.pim_instances_in_subscription(sub).await {
        Ok(x) => x,
        Err(e) => {
            tracing::warn!(subscription = sub, error = %e, "orphan sweep: listing PIM assignments failed");
            r.failed += 1;
            return;
        }
    };
    let now = crate::clock::now();
    let mut handled: HashSet<String> = HashSet::new();
    for q in ours {
        let p = &q.properties;
        let Some((ns, name, _, uid8)) = p.justification.as_deref().and_then(parse_marker) else {
            continue;
        };
        let (Some(scope), Some(role), Some(principal)) = (
            p.scope.clone(),
            p.role_definition_id.clone(),
            p.principal_id.clone(),
        ) else {
            continue;
        };
        if owner_lives(ctx, &ns, &name, &uid8) {
            continue;
        }
        let key = pim_target_key(&principal, &role, &scope);
        if ctx.coverage.asked_for(&key) || handled.contains(&key) {
            continue;
        }
        let Some(inst) = crate::azure::ops::instance_in(&instances, &scope, &role, &principal)
        else {
            continue; // already gone
        };
        let asked_end = q.view().end;
        let made_by_us = match (inst.end, asked_end) {
            (Some(ie), Some(ae)) => (ie - ae).abs() <= SCHEDULE_SLACK && ie > now,
            _ => false,
        };
        if !made_by_us {
            continue;
        }
        handled.insert(key);
        let activated = inst.assignment_type.eq_ignore_ascii_case("Activated");
        let (op, request_type) = if activated {
            (Operation::SelfDeactivate, "SelfDeactivate")
        } else {
            (Operation::AdminRemove, "AdminRemove")
        };
        let request = q.name.clone().unwrap_or_default();
        let w = AzureWrite::Pim {
            scope: scope.clone(),
            name: uuid::Uuid::new_v5(
                &REQUEST_NAMESPACE,
                format!("sweep/{request}/{}", op.as_str()).as_bytes(),
            )
            .to_string(),
            body: PimRequestBody {
                request_type,
                principal_id: principal.clone(),
                role_definition_id: role.clone(),
                linked_role_eligibility_schedule_id: None,
                target_role_assignment_schedule_id: None,
                start: None,
                duration: None,
                justification: Some(format!(
                    "accessgrant {ns}/{name}: orphan sweep, the grant is gone"
                )),
                ticket: None,
            },
            identity: None,
        };
        let what = format!("PIM {request_type} of role {role} for {principal} at {scope}");
        remove(ctx, r, &ns, &name, "PIM", &what, &w).await;
    }
}

async fn remove(
    ctx: &Context,
    r: &mut SweepReport,
    ns: &str,
    name: &str,
    kind: &'static str,
    what: &str,
    w: &AzureWrite,
) {
    if !may_write(ctx) {
        return;
    }
    crate::crashpoint::hit("sweep-before-remove");
    match ctx.arm.execute(ns, w).await {
        Ok(_) => {
            r.removed += 1;
            ctx.cfg.metrics.orphan_removed(kind);
            let note = format!(
                "removed access that grant {ns}/{name} no longer owns (the grant is gone; it was deleted without the operator taking its access away): {what}"
            );
            tracing::warn!(namespace = ns, grant = name, kind, "{note}");
            ctx.cfg
                .notifier
                .notify(crate::notify::payload::orphan_removed(
                    ns,
                    name,
                    kind,
                    what,
                    crate::clock::now(),
                ));
            println!(
                "{}",
                json!({
                    "audit": "OrphanRemoved",
                    "time": crate::clock::now().to_rfc3339(),
                    "namespace": ns,
                    "name": name,
                    "kind": kind,
                    "access": what,
                })
            );
            let regarding = k8s_openapi::api::core::v1::ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Namespace".into()),
                name: Some(ns.to_string()),
                namespace: Some(ns.to_string()),
                ..Default::default()
            };
            let ev = events::EventSpec {
                warning: true,
                reason: "OrphanRemoved".into(),
                note: note.chars().take(1000).collect(),
                action: "Revoke".into(),
            };
            if let Err(e) = ctx.recorder.publish(&ev, &regarding).await {
                tracing::debug!(error = %e, "event not published");
            }
        }
        Err(e) => {
            r.failed += 1;
            tracing::warn!(namespace = ns, grant = name, kind, error = %e, "orphan sweep: removing {what} failed; next sweep tries again");
        }
    }
}

/// (resource group, location, policy name) of a JIT policy id.
fn jit_policy_parts(id: &str) -> Option<(String, String, String)> {
    let parts: Vec<&str> = id.split('/').filter(|s| !s.is_empty()).collect();
    let after = |key: &str| {
        parts
            .iter()
            .position(|p| p.eq_ignore_ascii_case(key))
            .and_then(|i| parts.get(i + 1))
            .map(|s| s.to_string())
    };
    Some((
        after("resourceGroups")?,
        after("locations")?,
        after("jitNetworkAccessPolicies")?,
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_jit_policy_id_gives_its_group_location_and_name() {
        assert_eq!(
            super::jit_policy_parts(
                "/subscriptions/s/resourceGroups/rg-a/providers/Microsoft.Security/locations/westeurope/jitNetworkAccessPolicies/default"
            ),
            Some(("rg-a".into(), "westeurope".into(), "default".into()))
        );
        assert_eq!(super::jit_policy_parts("/subscriptions/s"), None);
    }
}
