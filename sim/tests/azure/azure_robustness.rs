//! Bad input never panics the sim: odd paths, filters, bodies and control calls all get an
//! answer (ARM/Entra-shaped 4xx), and the sim keeps serving afterwards.

use crate::azure_support;

use azure_support::*;
use serde_json::{Value, json};

#[tokio::test]
async fn garbage_gets_answers_not_panics() {
    let sim = Sim::start().await;
    let tok = sim.operator().await;
    let pim = format!("{RG_SCOPE}/providers/Microsoft.Authorization");
    let paths = [
        format!("{pim}/roleAssignmentScheduleInstances?api-version=2020-10-01{}", filter("principalId eq 'é''ü' and (")),
        format!("{pim}/roleAssignmentScheduleInstances?api-version=2020-10-01{}", filter("((((")),
        format!("{pim}/roleAssignmentScheduleInstances?api-version=2020-10-01{}", filter("assignedTo(')")),
        format!("{pim}/roleManagementPolicyAssignments?api-version=2020-10-01{}", filter("roleDefinitionId eq ''")),
        format!("{pim}/eligibleChildResources?api-version=2020-10-01{}", filter("resourceType eq")),
        format!("{pim}/roleAssignmentScheduleRequests?api-version=2020-10-01&$skiptoken=99999999999999999999"),
        format!("{pim}/roleManagementPolicyAssignments/___?api-version=2020-10-01"),
        format!("{pim}/roleAssignmentSchedules/x/y/z?api-version=2020-10-01"),
        "/providers/Microsoft.Authorization/roleDefinitions/%ZZ?api-version=2022-04-01".to_string(),
        "/subscriptions/x/providers/Microsoft.Security/jitNetworkAccessPolicies?api-version=2020-01-01".to_string(),
        "/nothing/here".to_string(),
        "/providers/Microsoft.Security/jitNetworkAccessPolicies?api-version=2020-01-01".to_string(),
    ];
    for p in &paths {
        let r = sim.call("GET", p, Some(&tok), None).await;
        assert!(r.status < 500, "{p}: {} {}", r.status, r.body);
    }
    let bodies: Vec<Value> = vec![
        json!(null),
        json!("x"),
        json!({"properties": {"principalId": OPERATOR_OID, "roleDefinitionId": role_id(READER), "requestType": "SelfActivate",
            "scheduleInfo": {"startDateTime": "9999-12-31T23:59:59Z", "expiration": {"type": "AfterDuration", "duration": "P999999999999999D"}}}}),
        json!({"properties": {"principalId": OPERATOR_OID, "roleDefinitionId": role_id(READER), "requestType": "SelfActivate",
            "scheduleInfo": {"startDateTime": "9999-12-31T23:59:59Z", "expiration": {"type": "AfterDuration", "duration": "P30000Y"}}}}),
        json!({"properties": {"principalId": OPERATOR_OID, "roleDefinitionId": role_id(READER), "requestType": "SelfActivate",
            "scheduleInfo": {"expiration": {"type": "AfterDateTime", "endDateTime": "1900-01-01T00:00:00Z"}}}}),
        json!({"properties": {"principalId": OPERATOR_OID, "roleDefinitionId": "é", "requestType": "SelfActivate"}}),
        json!({"properties": {"principalId": [], "roleDefinitionId": {}, "requestType": 7}}),
    ];
    for b in &bodies {
        let r = sim
            .call(
                "PUT",
                &format!(
                    "{pim}/roleAssignmentScheduleRequests/{}?api-version=2020-10-01",
                    uuid::Uuid::new_v4()
                ),
                Some(&tok),
                Some(b),
            )
            .await;
        assert!(
            (400..500).contains(&r.status),
            "{b}: {} {}",
            r.status,
            r.body
        );
    }
    let jit_bodies: Vec<Value> = vec![
        json!({"virtualMachines": [{"id": VM1, "ports": [{"number": 22, "duration": "P99999999999D", "allowedSourceAddressPrefix": "10.0.0.1"}]}]}),
        json!({"virtualMachines": [{"id": VM1, "ports": [{"number": -1, "duration": "PT1H"}]}]}),
        json!({"virtualMachines": [{"id": 5, "ports": [1, 2, 3]}]}),
        json!({"virtualMachines": [{"id": VM1, "ports": [{"number": 22, "endTimeUtc": "+275760-09-13T00:00:00Z", "allowedSourceAddressPrefix": "10.0.0.1"}]}]}),
    ];
    for b in &jit_bodies {
        let r = sim.jit_initiate(&tok, b.clone()).await;
        assert!(
            (400..500).contains(&r.status),
            "{b}: {} {}",
            r.status,
            r.body
        );
    }
    let put = sim
        .call("PUT", &format!("{JIT_POLICY}?api-version=2020-01-01"), Some(&tok), Some(&json!({"properties": {"virtualMachines": [{"id": VM1, "ports": [{"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "*", "maxRequestAccessDuration": "PT1H"}]}], "requests": [1, "x", {"virtualMachines": 3}]}})))
        .await;
    assert_eq!(put.status, 200, "{}", put.body);
    assert_eq!(sim.jit_get(&tok).await.status, 200);
    let rv = sim
        .control("POST", "/_sim/jit/revoke", Some(&json!({"vmId": VM1})))
        .await;
    assert!(rv.status < 500);
    for (m, p, b) in [
        (
            "POST",
            "/_sim/faults",
            json!({"kind": "throttle", "retryAfterSeconds": u64::MAX, "durationSeconds": u64::MAX, "operation": "Nope"}),
        ),
        (
            "PUT",
            "/_sim/throttle",
            json!({"reads": {"burst": -1, "perSecond": 1}}),
        ),
        ("POST", "/_sim/pim/revoke", json!([])),
        ("POST", "/_sim/pim/requests/%FF/approve", json!({})),
    ] {
        let r = sim.control(m, p, Some(&b)).await;
        assert!(r.status < 500, "{m} {p}: {}", r.status);
    }
    let r = sim
        .token_raw(&[
            ("client_id", "\u{1F600}"),
            ("scope", "\u{1F600}/.default"),
            ("grant_type", "client_credentials"),
            ("client_secret", "x"),
        ])
        .await;
    assert!((400..500).contains(&r.status));
    // Still serving.
    assert_eq!(sim.jit_get(&tok).await.status, 200);
}
