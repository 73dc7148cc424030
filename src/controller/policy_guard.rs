//! The AccessPolicy deletion guard. Deleting (or a GitOps tool pruning) an AccessPolicy
//! withdraws every grant only it allowed; that is rarely what a `kubectl delete` or a moved
//! file meant. So the operator keeps a finalizer on each policy and holds its deletion while
//! live grants rely on it (allowed by it and by no other policy), with a Warning event saying
//! which and how to proceed. The grants keep their access until they end or are deleted; then
//! the policy goes. Opting out, per policy: the annotation
//! `accessgrant.io/on-delete: revoke-grants` (then deletion withdraws the grants at once, as
//! without the guard); for the whole operator: `--policy-deletion-guard=false`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::{Context, events, judge};
use crate::api::{AccessGrant, AccessPolicy, Phase};

/// The finalizer the guard keeps on every AccessPolicy.
pub const FINALIZER: &str = "accessgrant.io/grants-rely-on-policy";
/// Per-policy opt-out: `accessgrant.io/on-delete: revoke-grants`.
pub const ON_DELETE: &str = "accessgrant.io/on-delete";
/// The opt-out's value.
pub const REVOKE_GRANTS: &str = "revoke-grants";
/// How often the guard looks at the policies.
const PERIOD: Duration = Duration::from_secs(1);
/// How often a held deletion is reported again (Event and log).
const REPORT_EVERY: Duration = Duration::from_secs(60);

/// Phases in which a grant holds, or is on its way to, access a policy allowed.
fn live(phase: Phase) -> bool {
    matches!(
        phase,
        Phase::Pending
            | Phase::Scheduled
            | Phase::Requesting
            | Phase::PendingApproval
            | Phase::Active
            | Phase::Renewing
    )
}

fn opted_out(p: &AccessPolicy, enabled: bool) -> bool {
    !enabled || p.annotations().get(ON_DELETE).map(String::as_str) == Some(REVOKE_GRANTS)
}

/// Runs the guard until the process ends (started by the controller, so only the leader).
pub(crate) async fn run(ctx: Arc<Context>, enabled: bool) {
    let api: Api<AccessPolicy> = Api::all(ctx.client.clone());
    let mut reported: HashMap<String, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(PERIOD);
    loop {
        tick.tick().await;
        for p in ctx.policies.state() {
            if let Err(e) = step(&ctx, &api, &p, enabled, &mut reported).await {
                tracing::warn!(policy = %p.name_any(), error = %e, "AccessPolicy deletion guard");
            }
        }
    }
}

async fn step(
    ctx: &Context,
    api: &Api<AccessPolicy>,
    p: &AccessPolicy,
    enabled: bool,
    reported: &mut HashMap<String, Instant>,
) -> Result<(), kube::Error> {
    let name = p.name_any();
    let finalizers = p.finalizers();
    let index = finalizers.iter().position(|f| f == FINALIZER);
    let deleting = p.meta().deletion_timestamp.is_some();
    let rv = p.resource_version().unwrap_or_default();
    match (index, deleting, opted_out(p, enabled)) {
        // Not guarded yet.
        (None, false, false) => {
            let op = if finalizers.is_empty() {
                json!({"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]})
            } else {
                json!({"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER})
            };
            patch(
                api,
                &name,
                vec![
                    json!({"op": "test", "path": "/metadata/resourceVersion", "value": rv}),
                    op,
                ],
            )
            .await
        }
        // Opted out: let go now, deleting or not.
        (Some(i), _, true) => release(api, &name, &rv, i).await,
        // Being deleted: hold while grants rely on it.
        (Some(i), true, false) => {
            let relying = relying_grants(ctx, p).await?;
            if relying.is_empty() {
                tracing::info!(policy = %name, "no grant relies on the AccessPolicy any more; deleting it");
                reported.remove(&name);
                return release(api, &name, &rv, i).await;
            }
            let due = reported
                .get(&name)
                .is_none_or(|t| t.elapsed() >= REPORT_EVERY);
            if due {
                reported.insert(name.clone(), Instant::now());
                let shown: Vec<&str> = relying.iter().take(10).map(String::as_str).collect();
                let note = format!(
                    "deletion held: {} live grant(s) rely on this AccessPolicy ({}{}); they keep their access until they end or are deleted, then the policy goes. To withdraw them now: kubectl annotate accesspolicy {name} {ON_DELETE}={REVOKE_GRANTS}",
                    relying.len(),
                    shown.join(", "),
                    if relying.len() > shown.len() {
                        ", ..."
                    } else {
                        ""
                    }
                );
                tracing::warn!(policy = %name, grants = relying.len(), "{note}");
                let ev = events::EventSpec {
                    warning: true,
                    reason: "DeletionHeld".into(),
                    note: note.chars().take(1000).collect(),
                    action: "Delete".into(),
                };
                if let Err(e) = ctx.recorder.publish(&ev, &p.object_ref(&())).await {
                    tracing::debug!(error = %e, "event not published");
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

async fn release(
    api: &Api<AccessPolicy>,
    name: &str,
    rv: &str,
    i: usize,
) -> Result<(), kube::Error> {
    patch(
        api,
        name,
        vec![
            json!({"op": "test", "path": "/metadata/resourceVersion", "value": rv}),
            json!({"op": "test", "path": format!("/metadata/finalizers/{i}"), "value": FINALIZER}),
            json!({"op": "remove", "path": format!("/metadata/finalizers/{i}")}),
        ],
    )
    .await
}

/// A JSON patch; a conflict (someone else changed the policy) waits for the next look.
async fn patch(
    api: &Api<AccessPolicy>,
    name: &str,
    ops: Vec<serde_json::Value>,
) -> Result<(), kube::Error> {
    let ops: json_patch::Patch = match serde_json::from_value(json!(ops)) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "malformed finalizer patch");
            return Ok(());
        }
    };
    match api
        .patch(name, &PatchParams::default(), &Patch::Json::<()>(ops))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if matches!(s.code, 404 | 409 | 422) => Ok(()),
        Err(e) => Err(e),
    }
}

/// `namespace/name` of every live grant that this policy allows and no other one does. The
/// controller's grant cache narrows it to live grants in namespaces the policy selects; only
/// those are read in full (their spec), so a held deletion costs a few GETs, not a LIST of
/// every grant each second.
async fn relying_grants(ctx: &Context, p: &AccessPolicy) -> Result<Vec<String>, kube::Error> {
    let all: Vec<Arc<AccessPolicy>> = ctx.policies.state();
    let others: Vec<Arc<AccessPolicy>> = all
        .iter()
        .filter(|o| o.name_any() != p.name_any())
        .cloned()
        .collect();
    let labels_of = |ns: &str| {
        ctx.namespaces
            .get(&kube::runtime::reflector::ObjectRef::new(ns))
            .map(|n| n.labels().clone())
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for lean in ctx.grants.state() {
        if !lean.phase.is_some_and(live) || lean.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let ns = lean.metadata.namespace.clone().unwrap_or_default();
        let labels = labels_of(&ns);
        if !crate::guard::selector_matches(&p.spec.namespace_selector, &labels) {
            continue;
        }
        let name = lean.metadata.name.clone().unwrap_or_default();
        let Some(g) = Api::<AccessGrant>::namespaced(ctx.client.clone(), &ns)
            .get_opt(&name)
            .await?
        else {
            continue;
        };
        let allowed = |ps: &[Arc<AccessPolicy>]| {
            let (decision, _) = judge(&g, ps, labels.clone(), ctx.cfg.stamp_key.as_ref());
            decision.verdict.is_some_and(|v| v.is_allowed())
        };
        if allowed(&all) && !allowed(&others) {
            out.push(format!("{ns}/{name}"));
        }
    }
    out.sort();
    Ok(out)
}
