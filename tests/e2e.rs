//! End to end: the real operator binary against kube-sim and azure-sim, one namespace per test.

mod e2e_support;

use accessgrant_operator::api::*;
use e2e_support::*;
use kube::api::{DeleteParams, PostParams};

#[tokio::test]
async fn pim_activate_then_delete_revokes_before_the_finalizer_goes() {
    let env = Env::start().await;
    let api = env.namespace("e2e-pim", true).await;
    api.create(
        &PostParams::default(),
        &pim_grant("reader", "Activate", READER, "PT30M"),
    )
    .await
    .expect("create");
    let g = wait_for(&api, "reader", "Active", 60, phase(Phase::Active)).await;
    let st = g.status.expect("status");
    assert_eq!(st.reason.as_deref(), Some("Granted"));
    assert!(
        g.metadata
            .finalizers
            .unwrap_or_default()
            .iter()
            .any(|f| f == "accessgrant.io/revoke")
    );
    assert_eq!(
        st.pim.as_ref().and_then(|p| p.status.as_deref()),
        Some("Provisioned")
    );
    api.delete("reader", &DeleteParams::default())
        .await
        .expect("delete");
    wait_gone(&api, "reader", 60).await;
    let calls = env.calls().await;
    let ops: Vec<&str> = calls
        .iter()
        .filter_map(|c| c["operation"].as_str())
        .filter(|o| *o == "RoleAssignmentScheduleRequests_Create")
        .collect();
    assert_eq!(ops.len(), 2, "one activation, one deactivation: {calls:?}");
    let state = env
        .control(reqwest::Method::GET, "/_sim/state", None)
        .await
        .json::<serde_json::Value>()
        .await
        .expect("state");
    let live = state["roleAssignmentScheduleInstances"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|i| i["properties"]["principalId"] == OPERATOR_OID)
                .count()
        })
        .unwrap_or(0);
    assert_eq!(live, 0, "no access left after delete");
    assert!(
        env.operator_output()
            .contains("\"audit\":\"AccessGrantTransition\""),
        "audit lines on stdout"
    );
}

#[tokio::test]
async fn jit_grant_active_then_expired() {
    let env = Env::start().await;
    let api = env.namespace("e2e-jit", true).await;
    api.create(
        &PostParams::default(),
        &jit_grant("ssh", 1, 22, "10.1.2.3", "PT4S"),
    )
    .await
    .expect("create");
    let g = wait_for(&api, "ssh", "Active", 60, phase(Phase::Active)).await;
    assert!(
        g.status
            .as_ref()
            .and_then(|s| s.jit.as_ref())
            .and_then(|j| j.marker.clone())
            .is_some_and(|m| m.starts_with("[ag:e2e-jit/ssh#1."))
    );
    let g = wait_for(&api, "ssh", "Expired", 60, phase(Phase::Expired)).await;
    assert_eq!(
        g.status.and_then(|s| s.status_reason),
        Some("Expired".into())
    );
    let writes = env
        .calls()
        .await
        .iter()
        .filter(|c| c["operation"] == "JitNetworkAccessPolicies_Initiate")
        .count();
    assert_eq!(writes, 1, "no write at natural expiry");
}

#[tokio::test]
async fn denied_by_policy_makes_zero_azure_calls_and_rules_fail_with_names() {
    let env = Env::start().await;
    let open = env.namespace("e2e-rules", true).await;
    let closed = env.namespace("e2e-nopolicy", false).await;
    closed
        .create(
            &PostParams::default(),
            &pim_grant("nope", "Activate", READER, "PT30M"),
        )
        .await
        .expect("create");
    let g = wait_for(&closed, "nope", "Denied", 60, phase(Phase::Denied)).await;
    let st = g.status.expect("status");
    assert_eq!(st.reason.as_deref(), Some("PolicyDenied"));
    assert!(
        st.message
            .unwrap_or_default()
            .contains("no AccessPolicy selects namespace")
    );
    assert!(
        g.metadata.finalizers.is_none_or(|f| f.is_empty()),
        "no finalizer for a denied grant"
    );
    assert!(
        env.calls().await.is_empty(),
        "a denied grant makes no Azure call at all"
    );
    // The ticket role: refused before any write, naming the rule and what to change.
    open.create(
        &PostParams::default(),
        &pim_grant("ticket", "Activate", TICKET_ROLE, "PT30M"),
    )
    .await
    .expect("create");
    let g = wait_for(&open, "ticket", "Failed", 60, phase(Phase::Failed)).await;
    let st = g.status.expect("status");
    assert_eq!(st.reason.as_deref(), Some("TicketingRule"));
    assert!(st.message.unwrap_or_default().contains("spec.ticket"));
    assert_eq!(
        env.calls()
            .await
            .iter()
            .filter(|c| c["operation"] == "RoleAssignmentScheduleRequests_Create")
            .count(),
        0
    );
}
