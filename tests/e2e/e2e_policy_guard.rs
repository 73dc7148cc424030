//! The AccessPolicy deletion guard: deleting (or pruning) a policy that live grants rely on is
//! held, with a Warning event naming them, and the grants keep their access; once they are
//! gone the policy goes; meanwhile it allows no new grant (which could hold it for ever). A
//! grant another policy also allows does not hold it. The annotation
//! `accessgrant.io/on-delete: revoke-grants` opts out: the policy goes at once and its grants
//! are withdrawn.

use crate::e2e_support;
use crate::wait;

use accessgrant_operator::api::*;
use accessgrant_operator::controller::policy_guard::{FINALIZER, ON_DELETE, REVOKE_GRANTS};
use e2e_support::*;
use k8s_openapi::api::events::v1::Event;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use std::time::Duration;

async fn guarded(policies: &Api<AccessPolicy>, name: &str) {
    wait::eventually(
        &format!("the guard's finalizer on {name}"),
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let p = policies.get(name).await.map_err(|e| e.to_string())?;
            if p.finalizers().iter().any(|f| f == FINALIZER) {
                Ok(())
            } else {
                Err(format!("{:?}", p.finalizers()))
            }
        },
    )
    .await
}

async fn gone(policies: &Api<AccessPolicy>, name: &str) {
    wait::eventually(
        &format!("AccessPolicy {name} gone"),
        Duration::from_secs(60),
        Duration::from_millis(100),
        || async {
            match policies.get_opt(name).await.map_err(|e| e.to_string())? {
                None => Ok(()),
                Some(p) => Err(format!("still there, finalizers {:?}", p.finalizers())),
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_policy_is_held_while_grants_rely_on_it() {
    let env = Env::start().await;
    let policies: Api<AccessPolicy> = Api::all(env.client.clone());
    let grants = env.namespace("team-p", true).await;
    grants
        .create(
            &PostParams::default(),
            &jit_grant("p-ssh", 1, 22, "10.5.5.5", "PT1H"),
        )
        .await
        .expect("grant");
    wait_for(&grants, "p-ssh", "Active", 60, phase(Phase::Active)).await;
    guarded(&policies, "allow-team-p").await;

    // Delete it (as `kubectl delete` or a GitOps prune would): held, with the reason.
    policies
        .delete("allow-team-p", &DeleteParams::default())
        .await
        .expect("delete accepted");
    let events: Api<Event> = Api::namespaced(env.client.clone(), "default");
    let note = wait::eventually(
        "a DeletionHeld event on the policy",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            let list = events
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            list.items
                .iter()
                .find(|e| {
                    e.reason.as_deref() == Some("DeletionHeld")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref())
                            == Some("allow-team-p")
                })
                .and_then(|e| e.note.clone())
                .ok_or_else(|| format!("{} events, none yet", list.items.len()))
        },
    )
    .await;
    assert!(note.contains("team-p/p-ssh"), "{note}");
    assert!(
        note.contains(&format!("{ON_DELETE}={REVOKE_GRANTS}")),
        "says how to proceed: {note}"
    );
    let held = policies.get("allow-team-p").await.expect("still there");
    assert!(held.metadata.deletion_timestamp.is_some());
    let g = grants.get("p-ssh").await.expect("grant");
    assert_eq!(
        g.status.map(|s| s.phase),
        Some(Phase::Active),
        "the grant keeps its access"
    );
    let before = count(&env.calls().await, "JitNetworkAccessPolicies_Initiate");

    // The attack: new grants under the held policy would keep it (and their access) alive for
    // ever. A policy being deleted allows no new grant (created after the deletion's second:
    // Kubernetes times have whole seconds).
    let deleted_at = held
        .metadata
        .deletion_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .expect("deletionTimestamp");
    wait::eventually(
        "the second after the deletion",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || async {
            let now = accessgrant_operator::clock::now().timestamp();
            if now > deleted_at {
                Ok(())
            } else {
                Err(format!("{now} <= {deleted_at}"))
            }
        },
    )
    .await;
    grants
        .create(
            &PostParams::default(),
            &jit_grant("p-late", 2, 22, "10.5.5.6", "PT1H"),
        )
        .await
        .expect("create");
    let late = wait_for(&grants, "p-late", "Denied", 60, phase(Phase::Denied)).await;
    let st = late.status.expect("status");
    let why = st
        .conditions
        .iter()
        .find(|c| c.type_ == "PolicyAllowed")
        .map(|c| (c.reason.clone(), c.message.clone()));
    assert!(
        matches!(&why, Some((r, m)) if r == "PolicyDeleting" && m.contains("being deleted")),
        "{why:?}"
    );

    // The grant ends: the policy goes.
    grants
        .delete("p-ssh", &DeleteParams::default())
        .await
        .expect("delete grant");
    wait_gone(&grants, "p-ssh", 60).await;
    gone(&policies, "allow-team-p").await;
    // Only the grant's own early close asked Azure for anything after the delete (nothing for
    // the refused late grant).
    assert!(count(&env.calls().await, "JitNetworkAccessPolicies_Initiate") <= before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_policy_or_the_opt_out_lets_the_deletion_through() {
    let env = Env::start().await;
    let policies: Api<AccessPolicy> = Api::all(env.client.clone());
    let grants = env.namespace("team-q", true).await;
    grants
        .create(
            &PostParams::default(),
            &jit_grant("q-ssh", 1, 22, "10.6.6.6", "PT1H"),
        )
        .await
        .expect("grant");
    wait_for(&grants, "q-ssh", "Active", 60, phase(Phase::Active)).await;
    guarded(&policies, "allow-team-q").await;

    // A second policy allowing the same: deleting the first is not held.
    let mut second = policies.get("allow-team-q").await.expect("policy");
    second.metadata = kube::api::ObjectMeta {
        name: Some("also-team-q".into()),
        ..Default::default()
    };
    policies
        .create(&PostParams::default(), &second)
        .await
        .expect("second policy");
    guarded(&policies, "also-team-q").await;
    policies
        .delete("allow-team-q", &DeleteParams::default())
        .await
        .expect("delete");
    gone(&policies, "allow-team-q").await;
    let g = grants.get("q-ssh").await.expect("grant");
    assert_eq!(
        g.status.map(|s| s.phase),
        Some(Phase::Active),
        "still allowed by the other"
    );

    // The opt-out: the last policy goes at once and the grant is withdrawn.
    policies
        .patch(
            "also-team-q",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {ON_DELETE: REVOKE_GRANTS}}})),
        )
        .await
        .expect("annotate");
    policies
        .delete("also-team-q", &DeleteParams::default())
        .await
        .expect("delete");
    gone(&policies, "also-team-q").await;
    let revoked = wait_for(&grants, "q-ssh", "Revoked", 60, phase(Phase::Revoked)).await;
    assert_eq!(
        revoked.status.and_then(|s| s.reason).as_deref(),
        Some("Withdrawn")
    );
}
