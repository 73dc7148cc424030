//! RBAC around the operator, against kube-sim's authorizer: an ordinary requester bound to the
//! chart's `accessgrant-requester` role may request and withdraw access, but gets 403 on what
//! stands between it and the operator's Azure identity: grant status, the webhook
//! configurations, AccessPolicies, the operator's Secrets.

use crate::e2e_support;
use crate::wait;

use accessgrant_operator::api::*;
use e2e_support::*;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use std::time::Duration;

fn forbidden<T: std::fmt::Debug>(r: Result<T, kube::Error>, what: &str) -> String {
    match r {
        Err(kube::Error::Api(s)) if s.code == 403 => {
            assert_eq!(s.reason, "Forbidden", "{what}: {s:?}");
            s.message
        }
        other => panic!("{what}: expected 403 Forbidden, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requester_cannot_write_status_webhooks_policies_or_secrets() {
    let env = Env::start().await;
    let admin_grants = env.namespace("team-r", true).await;
    let requester = env.client_as("rita@example.com", &["devs"]).await;
    let grants: Api<AccessGrant> = Api::namespaced(requester.clone(), "team-r");

    // What the role is for: request access, read it back, withdraw it.
    let g = jit_grant("rita-ssh", 1, 22, "10.1.2.3", "PT1H");
    grants
        .create(&PostParams::default(), &g)
        .await
        .expect("a requester creates a grant");
    let active = wait_for(
        &admin_grants,
        "rita-ssh",
        "Active",
        60,
        phase(Phase::Active),
    )
    .await;
    assert!(grants.get("rita-ssh").await.is_ok(), "and reads it");

    // Status is the operator's: writing it is refused, by patch and by apply.
    let msg = forbidden(
        grants
            .patch_status(
                "rita-ssh",
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"phase": "Revoked"}})),
            )
            .await,
        "merge patch of status",
    );
    assert_eq!(
        msg,
        "accessgrants.accessgrant.io \"rita-ssh\" is forbidden: User \"rita@example.com\" cannot patch resource \"accessgrants/status\" in API group \"accessgrant.io\" in the namespace \"team-r\""
    );
    forbidden(
        grants
            .patch_status(
                "rita-ssh",
                &PatchParams::apply("rita").force(),
                &Patch::Apply(json!({"apiVersion": "accessgrant.io/v1alpha1", "kind": "AccessGrant", "status": {"phase": "Expired"}})),
            )
            .await,
        "apply of status",
    );
    let mut replaced = active.clone();
    replaced.status.as_mut().expect("status").phase = Phase::Revoked;
    forbidden(
        grants
            .replace_status("rita-ssh", &PostParams::default(), &replaced)
            .await,
        "update of status",
    );
    let still = admin_grants.get("rita-ssh").await.expect("grant");
    assert_eq!(
        still.status.map(|s| s.phase),
        Some(Phase::Active),
        "nobody but the operator moved the status"
    );

    // The webhook configurations that stamp and guard every grant.
    let webhooks: Api<ValidatingWebhookConfiguration> = Api::all(requester.clone());
    forbidden(
        webhooks
            .patch(
                "accessgrant-operator",
                &PatchParams::default(),
                &Patch::Merge(json!({"webhooks": []})),
            )
            .await,
        "patching the validating webhook configuration",
    );
    forbidden(
        webhooks
            .delete("accessgrant-operator", &DeleteParams::default())
            .await,
        "deleting the validating webhook configuration",
    );

    // The guardrails, and the operator's Secrets (stamp key, webhook certificate).
    let policies: Api<AccessPolicy> = Api::all(requester.clone());
    forbidden(
        policies
            .delete("allow-team-r", &DeleteParams::default())
            .await,
        "deleting an AccessPolicy",
    );
    let secrets: Api<Secret> = Api::namespaced(requester.clone(), "default");
    forbidden(secrets.list(&Default::default()).await, "listing Secrets");

    // Withdrawing access is the requester's right.
    grants
        .delete("rita-ssh", &DeleteParams::default())
        .await
        .expect("a requester deletes its grant");
    wait_gone(&admin_grants, "rita-ssh", 60).await;
}

/// One rule taken out of the chart's ClusterRole (status writes): the operator names the
/// missing permission in its log, keeps running and retrying, asks Azure for nothing it could
/// not record, and recovers once the rule is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_rule_is_named_and_nothing_is_granted_untracked() {
    use k8s_openapi::api::rbac::v1::ClusterRole;
    let mut env = Env::start_bare().await;
    let roles: Api<ClusterRole> = Api::all(env.client.clone());
    let full = roles
        .get("accessgrant-operator")
        .await
        .expect("chart ClusterRole");
    let is_status = |r: &k8s_openapi::api::rbac::v1::PolicyRule| {
        r.resources
            .as_ref()
            .is_some_and(|rs| rs.iter().any(|x| x == "accessgrants/status"))
    };
    let mut cut = full.clone();
    let rules = cut.rules.as_mut().expect("rules");
    let before = rules.len();
    rules.retain(|r| !is_status(r));
    assert_eq!(rules.len(), before - 1, "the chart has one status rule");
    cut.metadata.managed_fields = None;
    roles
        .replace("accessgrant-operator", &PostParams::default(), &cut)
        .await
        .expect("rule removed");

    env.start_operator();
    let grants = env.namespace("team-m", true).await;
    grants
        .create(
            &PostParams::default(),
            &jit_grant("m-ssh", 1, 22, "10.9.8.7", "PT1H"),
        )
        .await
        .expect("grant created");
    let want = "cannot patch resource \"accessgrants/status\" in API group \"accessgrant.io\" in the namespace \"team-m\"";
    let log = wait::eventually(
        "the operator to name the missing permission",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            let out = env.operator_output();
            async move {
                if out.contains(want) {
                    Ok(out)
                } else {
                    Err("not yet".into())
                }
            }
        },
    )
    .await;
    assert!(
        log.contains("system:serviceaccount:accessgrant-system:accessgrant-operator"),
        "the log names the identity"
    );
    // It keeps retrying rather than exiting, and asked Azure for nothing it could not record.
    let retries = wait::eventually(
        "a second failed attempt",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            let n = env.operator_output().matches(want).count();
            async move {
                if n >= 2 {
                    Ok(n)
                } else {
                    Err(format!("{n} attempts"))
                }
            }
        },
    )
    .await;
    assert!(retries >= 2);
    assert!(
        env.operator_running(),
        "the operator does not exit on a missing permission"
    );
    let calls = env.calls().await;
    assert_eq!(
        count(&calls, "JitNetworkAccessPolicies_Initiate"),
        0,
        "no access without a status to track it: {calls:?}"
    );
    let g = grants.get("m-ssh").await.expect("grant");
    assert!(
        g.status.is_none(),
        "no status could be written: {:?}",
        g.status
    );

    // The rule back: the same operator process grants and records it.
    let mut restored = full;
    restored.metadata.managed_fields = None;
    restored.metadata.resource_version = None;
    roles
        .replace("accessgrant-operator", &PostParams::default(), &restored)
        .await
        .expect("rule restored");
    wait_for(&grants, "m-ssh", "Active", 90, phase(Phase::Active)).await;
    assert_eq!(
        count(&env.calls().await, "JitNetworkAccessPolicies_Initiate"),
        1
    );
}
