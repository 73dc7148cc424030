//! PIM behaviour over HTTPS: activation, the rule errors with Azure's codes and message shapes,
//! approval, deactivation floor, admin assign/remove, expiry, revocation, filters, paging.

use crate::azure_support;

use std::time::Duration;

use azure_support::*;
use serde_json::{Value, json};

fn policy_failed(rules: &[&str]) -> String {
    let list = rules
        .iter()
        .map(|r| format!("\"{r}\""))
        .collect::<Vec<_>>()
        .join(",");
    format!("The following policy rules failed: [{list}]")
}

#[tokio::test]
async fn self_activate_provisions_schedule_and_instance() {
    let sim = Sim::start().await;
    let tok = sim.operator().await;
    let (name, r) = sim
        .pim_put(&tok, RG_SCOPE, activate(OPERATOR_OID, READER, "PT1H"))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let p = &r.body["properties"];
    assert_eq!(p["status"], "Provisioned");
    assert_eq!(p["requestType"], "SelfActivate");
    assert_eq!(p["principalType"], "ServicePrincipal");
    assert_eq!(p["requestorId"], OPERATOR_OID);
    assert_eq!(
        r.body["type"],
        "Microsoft.Authorization/RoleAssignmentScheduleRequests"
    );
    assert_eq!(r.body["name"], name);
    assert!(
        r.header("x-ms-ratelimit-remaining-subscription-writes")
            .is_some()
    );
    let sched_id = p["targetRoleAssignmentScheduleId"]
        .as_str()
        .expect("schedule id")
        .to_string();

    // GET by name returns the same request.
    let g = sim
        .pim_get(
            &tok,
            RG_SCOPE,
            &format!("roleAssignmentScheduleRequests/{name}"),
            "",
        )
        .await;
    assert_eq!(g.status, 200);
    assert_eq!(g.body["properties"]["status"], "Provisioned");

    // The schedule exists and an instance is in force, found through the filters.
    let s = sim
        .call(
            "GET",
            &format!("{sched_id}?api-version=2020-10-01"),
            Some(&tok),
            None,
        )
        .await;
    assert_eq!(s.status, 200, "{}", s.body);
    assert_eq!(s.body["properties"]["assignmentType"], "Activated");
    for f in [
        "asTarget()".to_string(),
        format!("principalId eq '{OPERATOR_OID}'"),
        format!(
            "(principalId eq '{OPERATOR_OID}') and roleDefinitionId eq '{}'",
            role_id(READER)
        ),
        format!("assignedTo('{}')", OPERATOR_OID.to_uppercase()),
    ] {
        let l = sim
            .pim_get(
                &tok,
                RG_SCOPE,
                "roleAssignmentScheduleInstances",
                &filter(&f),
            )
            .await;
        assert_eq!(l.status, 200, "{f}: {}", l.body);
        let items = l.body["value"].as_array().expect("value");
        assert_eq!(items.len(), 1, "{f}: {}", l.body);
        assert_eq!(items[0]["properties"]["roleAssignmentScheduleId"], sched_id);
    }
    // Tenant root with asTarget() finds it too; atScope() at the subscription does not (below).
    let root = sim
        .pim_get(
            &tok,
            "",
            "roleAssignmentScheduleInstances",
            &filter("asTarget()"),
        )
        .await;
    assert_eq!(
        root.body["value"].as_array().map(Vec::len),
        Some(1),
        "{}",
        root.body
    );
    let at = sim
        .pim_get(
            &tok,
            &format!("/subscriptions/{SUB}"),
            "roleAssignmentScheduleInstances",
            &filter("atScope()"),
        )
        .await;
    assert_eq!(
        at.body["value"].as_array().map(Vec::len),
        Some(0),
        "{}",
        at.body
    );
    let bad = sim
        .pim_get(
            &tok,
            RG_SCOPE,
            "roleAssignmentScheduleInstances",
            &filter("displayName eq 'x'"),
        )
        .await;
    assert_eq!(bad.status, 400);
}

#[tokio::test]
async fn self_activate_for_another_principal_is_refused() {
    let sim = Sim::start().await;
    let tok = sim.operator().await;
    let (_, r) = sim
        .pim_put(&tok, RG_SCOPE, activate(DEPLOYER_OID, READER, "PT1H"))
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.code(), "AuthorizationFailed");
    let inst = sim
        .pim_get(
            &tok,
            RG_SCOPE,
            "roleAssignmentScheduleInstances",
            &filter(&format!("principalId eq '{DEPLOYER_OID}'")),
        )
        .await;
    assert_eq!(inst.body["value"].as_array().map(Vec::len), Some(0));
}

#[tokio::test]
async fn seed_error_rows_have_azures_codes_and_messages() {
    let sim = Sim::start().await;
    let tok = sim.operator().await;

    // RoleAssignmentExists: a second activation of an active role.
    let (_, ok) = sim
        .pim_put(&tok, RG_SCOPE, activate(OPERATOR_OID, READER, "PT1H"))
        .await;
    assert_eq!(ok.status, 201);
    let (_, r) = sim
        .pim_put(&tok, RG_SCOPE, activate(OPERATOR_OID, READER, "PT1H"))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.code(), "RoleAssignmentExists");
    assert_eq!(r.message(), "The Role assignment already exists.");

    // ExpirationRule: PT2H on a PT1H role.
    let (_, r) = sim
        .pim_put(&tok, RG_SCOPE, activate(OPERATOR_OID, MAX1H_ROLE, "PT2H"))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (400, "RoleAssignmentRequestPolicyValidationFailed")
    );
    assert_eq!(r.message(), policy_failed(&["ExpirationRule"]));

    // JustificationRule.
    let mut body = activate(OPERATOR_OID, JUSTIFY_ROLE, "PT1H");
    body["justification"] = Value::Null;
    let (_, r) = sim.pim_put(&tok, RG_SCOPE, body).await;
    assert_eq!(r.code(), "RoleAssignmentRequestPolicyValidationFailed");
    assert_eq!(r.message(), policy_failed(&["JustificationRule"]));

    // Two rules at once, in Azure's format.
    let mut body = activate(OPERATOR_OID, JUSTIFY_ROLE, "PT9H");
    body["justification"] = json!("");
    let (_, r) = sim.pim_put(&tok, RG_SCOPE, body).await;
    assert_eq!(
        r.message(),
        policy_failed(&["ExpirationRule", "JustificationRule"])
    );

    // EligibilityRule: not eligible for Owner.
    let (_, r) = sim
        .pim_put(&tok, RG_SCOPE, activate(OPERATOR_OID, OWNER, "PT1H"))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (400, "RoleAssignmentRequestPolicyValidationFailed")
    );
    assert_eq!(r.message(), policy_failed(&["EligibilityRule"]));
    // ...and a wrong linkedRoleEligibilityScheduleId is refused the same way.
    let mut body = activate(OPERATOR_OID, READER, "PT1H");
    body["linkedRoleEligibilityScheduleId"] = json!("00000000-0000-4000-8000-000000000000");
    let (_, r) = sim.pim_put(&tok, RG_SCOPE, body).await;
    assert_eq!(r.message(), policy_failed(&["EligibilityRule"]));

    // TicketingRule, then the same with a ticket succeeds.
    let (_, r) = sim
        .pim_put(&tok, RG_SCOPE, activate(OPERATOR_OID, TICKET_ROLE, "PT1H"))
        .await;
    assert_eq!(r.message(), policy_failed(&["TicketingRule"]));
    let mut body = activate(OPERATOR_OID, TICKET_ROLE, "PT1H");
    body["ticketInfo"] = json!({"ticketNumber": "INC42", "ticketSystem": "ServiceNow"});
    let (_, r) = sim.pim_put(&tok, RG_SCOPE, body).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["properties"]["ticketInfo"]["ticketNumber"], "INC42");

    // MfaRule: a service principal never satisfies it; a user with MFA does.
    let (_, r) = sim
        .pim_put(&tok, RG_SCOPE, activate(OPERATOR_OID, MFA_ROLE, "PT1H"))
        .await;
    assert_eq!(r.message(), policy_failed(&["MfaRule"]));
    let alice = sim.token(ALICE_APP, ALICE_SECRET).await;
    let (_, r) = sim
        .pim_put(&alice, RG_SCOPE, activate(ALICE_OID, MFA_ROLE, "PT1H"))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
}

#[tokio::test]
async fn re_put_of_an_existing_name_is_request_exists() {
    let sim = Sim::start().await;
    let tok = sim.operator().await;
    let (name, r) = sim
        .pim_put(&tok, RG_SCOPE, activate(OPERATOR_OID, READER, "PT1H"))
        .await;
    assert_eq!(r.status, 201);
    let again = sim
        .pim_put_named(
            &tok,
            RG_SCOPE,
            &name,
            activate(OPERATOR_OID, READER, "PT1H"),
        )
        .await;
    assert_eq!(again.status, 409, "{}", again.body);
    assert_eq!(again.code(), "RoleAssignmentRequestExists");
    assert_eq!(
        again.message(),
        format!("A role assignment request with Id: {name} already exists.")
    );
}

#[tokio::test]
async fn request_keys_are_read_case_insensitively() {
    let sim = Sim::start().await;
    let tok = sim.operator().await;
    let name = uuid::Uuid::new_v4().to_string();
    let body = json!({"Properties": {
        "PrincipalId": OPERATOR_OID,
        "RoleDefinitionId": role_id(READER),
        "RequestType": "selfactivate",
        "ScheduleInfo": {"Expiration": {"Type": "afterduration", "Duration": "PT1H"}},
    }});
    let r = sim
        .call(
            "PUT",
            &format!("{RG_SCOPE}/providers/Microsoft.Authorization/roleAssignmentScheduleRequests/{name}?api-version=2020-10-01"),
            Some(&tok),
            Some(&body),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["properties"]["requestType"], "SelfActivate");
    assert_eq!(
        r.body["properties"]["scheduleInfo"]["expiration"]["type"],
        "AfterDuration"
    );
    // Garbage bodies get ARM errors, not panics.
    for bad in [
        json!([]),
        json!({"properties": {"principalId": 5}}),
        json!({"properties": {}}),
    ] {
        let r = sim
            .call(
                "PUT",
                &format!("{RG_SCOPE}/providers/Microsoft.Authorization/roleAssignmentScheduleRequests/{}?api-version=2020-10-01", uuid::Uuid::new_v4()),
                Some(&tok),
                Some(&bad),
            )
            .await;
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
        assert!(!r.code().is_empty());
    }
}

#[tokio::test]
async fn approval_flow_pending_approve_deny_cancel() {
    let sim = Sim::start().await;
    let tok = sim.operator().await;
    let (name, r) = sim
        .pim_put(
            &tok,
            RG_SCOPE,
            activate(OPERATOR_OID, APPROVAL_ROLE, "PT1H"),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["properties"]["status"], "PendingApproval");
    assert!(r.body["properties"]["approvalId"].is_string());
    let inst_filter = filter(&format!(
        "principalId eq '{OPERATOR_OID}' and roleDefinitionId eq '{}'",
        role_id(APPROVAL_ROLE)
    ));
    let l = sim
        .pim_get(
            &tok,
            RG_SCOPE,
            "roleAssignmentScheduleInstances",
            &inst_filter,
        )
        .await;
    assert_eq!(l.body["value"].as_array().map(Vec::len), Some(0));

    // A second request for the same role while one is pending.
    let (_, dup) = sim
        .pim_put(
            &tok,
            RG_SCOPE,
            activate(OPERATOR_OID, APPROVAL_ROLE, "PT1H"),
        )
        .await;
    assert_eq!(
        (dup.status, dup.code()),
        (400, "PendingRoleAssignmentRequest")
    );

    let a = sim
        .control("POST", &format!("/_sim/pim/requests/{name}/approve"), None)
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let g = sim
        .pim_get(
            &tok,
            RG_SCOPE,
            &format!("roleAssignmentScheduleRequests/{name}"),
            "",
        )
        .await;
    assert_eq!(g.body["properties"]["status"], "Provisioned");
    let l = sim
        .pim_get(
            &tok,
            RG_SCOPE,
            "roleAssignmentScheduleInstances",
            &inst_filter,
        )
        .await;
    assert_eq!(l.body["value"].as_array().map(Vec::len), Some(1));

    // Cancel of a non-pending request is refused.
    let c = sim
        .call("POST", &format!("{RG_SCOPE}/providers/Microsoft.Authorization/roleAssignmentScheduleRequests/{name}/cancel?api-version=2020-10-01"), Some(&tok), None)
        .await;
    assert_eq!(c.status, 400, "{}", c.body);

    // Deny and cancel on fresh pending requests (Alice is not eligible: use a world where she is).
    let sim = Sim::start().await;
    let tok = sim.operator().await;
    let (n1, _) = sim
        .pim_put(
            &tok,
            RG_SCOPE,
            activate(OPERATOR_OID, APPROVAL_ROLE, "PT1H"),
        )
        .await;
    let d = sim
        .control("POST", &format!("/_sim/pim/requests/{n1}/deny"), None)
        .await;
    assert_eq!(d.status, 200);
    let g = sim
        .pim_get(
            &tok,
            RG_SCOPE,
            &format!("roleAssignmentScheduleRequests/{n1}"),
            "",
        )
        .await;
    assert_eq!(g.body["properties"]["status"], "Denied");
    let (n2, _) = sim
        .pim_put(
            &tok,
            RG_SCOPE,
            activate(OPERATOR_OID, APPROVAL_ROLE, "PT1H"),
        )
        .await;
    let c = sim
        .call("POST", &format!("{RG_SCOPE}/providers/Microsoft.Authorization/roleAssignmentScheduleRequests/{n2}/cancel?api-version=2020-10-01"), Some(&tok), None)
        .await;
    assert_eq!(c.status, 200, "{}", c.body);
    let g = sim
        .pim_get(
            &tok,
            RG_SCOPE,
            &format!("roleAssignmentScheduleRequests/{n2}"),
            "",
        )
        .await;
    assert_eq!(g.body["properties"]["status"], "Canceled");
    let again = sim
        .control("POST", &format!("/_sim/pim/requests/{n2}/approve"), None)
        .await;
    assert_eq!(again.status, 409);
}

fn fast_floor(y: &mut serde_norway::Value) {
    set_yaml(
        y,
        &["settings", "deactivationFloor"],
        serde_norway::Value::String("PT2S".into()),
    );
}

#[tokio::test]
async fn self_deactivate_respects_the_floor_then_ends_the_instance() {
    let sim = Sim::start_with(fast_floor).await;
    let tok = sim.operator().await;
    let (_, r) = sim
        .pim_put(&tok, RG_SCOPE, activate(OPERATOR_OID, READER, "PT1H"))
        .await;
    assert_eq!(r.status, 201);
    let deactivate = json!({
        "principalId": OPERATOR_OID,
        "roleDefinitionId": role_id(READER),
        "requestType": "SelfDeactivate",
    });
    let (_, early) = sim.pim_put(&tok, RG_SCOPE, deactivate.clone()).await;
    assert_eq!(
        (early.status, early.code()),
        (400, "ActiveDurationTooShort")
    );
    assert!(
        early
            .message()
            .starts_with("The Active duration is too short. Miniumum Required is"),
        "{}",
        early.message()
    );
    let done = wait_for("deactivation accepted", Duration::from_secs(10), || {
        let d = deactivate.clone();
        let sim = &sim;
        let tok = &tok;
        async move {
            let (_, r) = sim.pim_put(tok, RG_SCOPE, d).await;
            (r.status == 201).then_some(r)
        }
    })
    .await;
    assert_eq!(done.body["properties"]["status"], "Revoked");
    let l = sim
        .pim_get(
            &tok,
            RG_SCOPE,
            "roleAssignmentScheduleInstances",
            &filter("asTarget()"),
        )
        .await;
    assert_eq!(
        l.body["value"].as_array().map(Vec::len),
        Some(0),
        "{}",
        l.body
    );
    let (_, gone) = sim.pim_put(&tok, RG_SCOPE, deactivate).await;
    assert_eq!(
        (gone.status, gone.code()),
        (400, "RoleAssignmentDoesNotExist")
    );
    assert_eq!(gone.message(), "The Role assignment does not exist.");
}

#[tokio::test]
async fn admin_assign_and_remove() {
    let sim = Sim::start_with(fast_floor).await;
    let tok = sim.operator().await;
    let assign = json!({
        "principalId": DEPLOYER_OID,
        "roleDefinitionId": role_id(CONTRIBUTOR),
        "requestType": "AdminAssign",
        "scheduleInfo": {"startDateTime": null, "expiration": {"type": "AfterDuration", "duration": "PT2H"}},
        "justification": "ops",
    });
    // The deployer is not an admin.
    let dep = {
        // No secret for the deployer: use Alice (admin) vs the example user (not admin here).
        sim.token(EXAMPLE_USER_APP, EXAMPLE_USER_SECRET).await
    };
    let (_, r) = sim.pim_put(&dep, RG_SCOPE, assign.clone()).await;
    assert_eq!((r.status, r.code()), (403, "AuthorizationFailed"));

    let (_, r) = sim.pim_put(&tok, RG_SCOPE, assign.clone()).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["properties"]["status"], "Provisioned");
    let l = sim
        .pim_get(
            &tok,
            RG_SCOPE,
            "roleAssignmentSchedules",
            &filter(&format!("principalId eq '{DEPLOYER_OID}'")),
        )
        .await;
    let items = l.body["value"].as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), 1, "{}", l.body);
    assert_eq!(items[0]["properties"]["assignmentType"], "Assigned");

    let remove = json!({
        "principalId": DEPLOYER_OID,
        "roleDefinitionId": role_id(CONTRIBUTOR),
        "requestType": "AdminRemove",
    });
    let (_, early) = sim.pim_put(&tok, RG_SCOPE, remove.clone()).await;
    assert_eq!(early.code(), "ActiveDurationTooShort");
    let done = wait_for("removal accepted", Duration::from_secs(10), || {
        let b = remove.clone();
        let (sim, tok) = (&sim, &tok);
        async move {
            let (_, r) = sim.pim_put(tok, RG_SCOPE, b).await;
            (r.status == 201).then_some(r)
        }
    })
    .await;
    assert_eq!(done.body["properties"]["status"], "Revoked");
    let (_, again) = sim.pim_put(&tok, RG_SCOPE, remove).await;
    assert_eq!(again.code(), "RoleAssignmentDoesNotExist");
}

#[tokio::test]
async fn activation_expires_by_wall_clock() {
    let sim = Sim::start().await;
    let tok = sim.operator().await;
    let (name, r) = sim
        .pim_put(&tok, RG_SCOPE, activate(OPERATOR_OID, READER, "PT2S"))
        .await;
    assert_eq!(r.status, 201);
    let inst = sim
        .pim_get(
            &tok,
            RG_SCOPE,
            "roleAssignmentScheduleInstances",
            &filter("asTarget()"),
        )
        .await;
    assert_eq!(inst.body["value"].as_array().map(Vec::len), Some(1));
    wait_for("instance expiry", Duration::from_secs(15), || async {
        let l = sim
            .pim_get(
                &tok,
                RG_SCOPE,
                "roleAssignmentScheduleInstances",
                &filter("asTarget()"),
            )
            .await;
        (l.body["value"].as_array().map(Vec::len) == Some(0)).then_some(())
    })
    .await;
    // The request stays; the schedule is gone; a new activation is allowed.
    let g = sim
        .pim_get(
            &tok,
            RG_SCOPE,
            &format!("roleAssignmentScheduleRequests/{name}"),
            "",
        )
        .await;
    assert_eq!(g.body["properties"]["status"], "Provisioned");
    let s = sim
        .pim_get(
            &tok,
            RG_SCOPE,
            "roleAssignmentSchedules",
            &filter("asTarget()"),
        )
        .await;
    assert_eq!(s.body["value"].as_array().map(Vec::len), Some(0));
    let (_, again) = sim
        .pim_put(&tok, RG_SCOPE, activate(OPERATOR_OID, READER, "PT1H"))
        .await;
    assert_eq!(again.status, 201, "{}", again.body);
}

#[tokio::test]
async fn out_of_band_revoke_ends_the_instance() {
    let sim = Sim::start().await;
    let tok = sim.operator().await;
    let (_, r) = sim
        .pim_put(&tok, RG_SCOPE, activate(OPERATOR_OID, READER, "PT1H"))
        .await;
    assert_eq!(r.status, 201);
    let rv = sim
        .control("POST", "/_sim/pim/revoke", Some(&json!({"scope": RG_SCOPE, "roleDefinitionId": role_id(READER), "principalId": OPERATOR_OID})))
        .await;
    assert_eq!(rv.status, 200, "{}", rv.body);
    let l = sim
        .pim_get(
            &tok,
            RG_SCOPE,
            "roleAssignmentScheduleInstances",
            &filter("asTarget()"),
        )
        .await;
    assert_eq!(l.body["value"].as_array().map(Vec::len), Some(0));
    let none = sim
        .control("POST", "/_sim/pim/revoke", Some(&json!({"scope": RG_SCOPE, "roleDefinitionId": role_id(READER), "principalId": OPERATOR_OID})))
        .await;
    assert_eq!(none.status, 404);
}

#[tokio::test]
async fn reads_policies_eligibilities_roles_and_pages() {
    let sim = Sim::start_with(|y| {
        set_yaml(
            y,
            &["settings", "pageSize"],
            serde_norway::Value::Number(2.into()),
        );
    })
    .await;
    let tok = sim.operator().await;
    // Eligibilities at the tenant root for the caller, paged by 2.
    let mut items: Vec<Value> = Vec::new();
    let mut next = Some(format!(
        "/providers/Microsoft.Authorization/roleEligibilitySchedules?api-version=2020-10-01{}",
        filter("asTarget()")
    ));
    let mut pages = 0;
    while let Some(url) = next {
        let r = sim.call("GET", &url, Some(&tok), None).await;
        assert_eq!(r.status, 200, "{}", r.body);
        items.extend(r.body["value"].as_array().cloned().unwrap_or_default());
        next = r.body["nextLink"].as_str().map(String::from);
        pages += 1;
        assert!(pages < 10);
    }
    assert_eq!(items.len(), 6, "operator has six eligibilities");
    assert!(pages >= 3);

    // The policy for the ticket role names Ticketing in its effective rules.
    let pa = sim
        .pim_get(
            &tok,
            RG_SCOPE,
            "roleManagementPolicyAssignments",
            &filter(&format!("roleDefinitionId eq '{}'", role_id(TICKET_ROLE))),
        )
        .await;
    let v = pa.body["value"].as_array().cloned().unwrap_or_default();
    assert_eq!(v.len(), 1, "{}", pa.body);
    let rules = v[0]["properties"]["effectiveRules"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let enablement = rules
        .iter()
        .find(|r| r["id"] == "Enablement_EndUser_Assignment")
        .expect("enablement rule");
    assert_eq!(enablement["enabledRules"], json!(["Ticketing"]));
    // Follow policyId to the policy itself.
    let pid = v[0]["properties"]["policyId"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let p = sim
        .call(
            "GET",
            &format!("{pid}?api-version=2020-10-01"),
            Some(&tok),
            None,
        )
        .await;
    assert_eq!(p.status, 200, "{}", p.body);
    // An inherited default: a role with no policy gets PT8H.
    let pa = sim
        .pim_get(
            &tok,
            RG_SCOPE,
            "roleManagementPolicyAssignments",
            &filter(&format!("roleDefinitionId eq '{}'", role_id(OWNER))),
        )
        .await;
    let rules = pa.body["value"][0]["properties"]["effectiveRules"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let exp = rules
        .iter()
        .find(|r| r["id"] == "Expiration_EndUser_Assignment")
        .cloned()
        .unwrap_or_default();
    assert_eq!(exp["maximumDuration"], "PT8H");

    let roles = sim
        .call("GET", &format!("/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions?api-version=2022-04-01{}", filter("roleName eq 'Reader'")), Some(&tok), None)
        .await;
    assert_eq!(roles.body["value"][0]["name"], READER, "{}", roles.body);

    let kids = sim
        .call("GET", &format!("/subscriptions/{SUB}/providers/Microsoft.Authorization/eligibleChildResources?api-version=2020-10-01{}", filter("resourceType eq 'resourcegroup'")), Some(&tok), None)
        .await;
    assert_eq!(kids.body["value"][0]["name"], "rg-sandbox", "{}", kids.body);
}

#[tokio::test]
async fn api_version_and_scope_errors() {
    let sim = Sim::start().await;
    let tok = sim.operator().await;
    let base =
        format!("{RG_SCOPE}/providers/Microsoft.Authorization/roleAssignmentScheduleInstances");
    let r = sim.call("GET", &base, Some(&tok), None).await;
    assert_eq!((r.status, r.code()), (400, "MissingApiVersionParameter"));
    let r = sim
        .call(
            "GET",
            &format!("{base}?api-version=1999-01-01"),
            Some(&tok),
            None,
        )
        .await;
    assert_eq!((r.status, r.code()), (400, "InvalidApiVersionParameter"));
    let r = sim
        .call("GET", "/subscriptions/00000000-0000-4000-8000-000000000009/providers/Microsoft.Authorization/roleAssignmentScheduleInstances?api-version=2020-10-01", Some(&tok), None)
        .await;
    assert_eq!((r.status, r.code()), (404, "SubscriptionNotFound"));
    let r = sim
        .pim_get(
            &tok,
            RG_SCOPE,
            &format!("roleAssignmentScheduleRequests/{}", uuid::Uuid::new_v4()),
            "",
        )
        .await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn admin_extend_moves_the_end_of_the_running_assignment() {
    let sim = Sim::start().await;
    let tok = sim.operator().await;
    let assign = json!({
        "principalId": DEPLOYER_OID,
        "roleDefinitionId": role_id(CONTRIBUTOR),
        "requestType": "AdminAssign",
        "scheduleInfo": {"expiration": {"type": "AfterDuration", "duration": "PT1H"}},
    });
    let (_, r) = sim.pim_put(&tok, RG_SCOPE, assign).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let sched = r.body["properties"]["targetRoleAssignmentScheduleId"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let before = sim
        .call(
            "GET",
            &format!("{sched}?api-version=2020-10-01"),
            Some(&tok),
            None,
        )
        .await;
    let end_before = before.body["properties"]["endDateTime"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let extend = json!({
        "principalId": DEPLOYER_OID,
        "roleDefinitionId": role_id(CONTRIBUTOR),
        "requestType": "AdminExtend",
        "targetRoleAssignmentScheduleId": sched,
        "scheduleInfo": {"expiration": {"type": "AfterDuration", "duration": "PT3H"}},
    });
    let (_, r) = sim.pim_put(&tok, RG_SCOPE, extend.clone()).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["properties"]["status"], "Provisioned");
    assert_eq!(
        r.body["properties"]["targetRoleAssignmentScheduleId"],
        sched.as_str()
    );
    let after = sim
        .call(
            "GET",
            &format!("{sched}?api-version=2020-10-01"),
            Some(&tok),
            None,
        )
        .await;
    let end_after = after.body["properties"]["endDateTime"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(end_after > end_before, "{end_before} -> {end_after}");
    // Nothing to extend for someone without an assignment.
    let mut other = extend;
    other["principalId"] = json!(ALICE_OID);
    let (_, r) = sim.pim_put(&tok, RG_SCOPE, other).await;
    assert_eq!(r.code(), "RoleAssignmentDoesNotExist");
    // A principal cannot self-deactivate an admin assignment.
    let alice = sim.token(ALICE_APP, ALICE_SECRET).await;
    let assign_alice = json!({
        "principalId": ALICE_OID, "roleDefinitionId": role_id(READER), "requestType": "AdminAssign",
        "scheduleInfo": {"expiration": {"type": "AfterDuration", "duration": "PT1H"}},
    });
    assert_eq!(
        sim.pim_put(&tok, RG_SCOPE, assign_alice).await.1.status,
        201
    );
    let (_, r) = sim
        .pim_put(&alice, RG_SCOPE, json!({"principalId": ALICE_OID, "roleDefinitionId": role_id(READER), "requestType": "SelfDeactivate"}))
        .await;
    assert_eq!(r.code(), "RoleAssignmentDoesNotExist");
}

#[tokio::test]
async fn accepted_knob_makes_clients_poll() {
    let sim = Sim::start_with(|y| {
        set_yaml(
            y,
            &["settings", "pimAcceptedReads"],
            serde_norway::Value::Number(2.into()),
        );
    })
    .await;
    let tok = sim.operator().await;
    let (name, r) = sim
        .pim_put(&tok, RG_SCOPE, activate(OPERATOR_OID, READER, "PT1H"))
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.body["properties"]["status"], "Accepted");
    let path = format!("roleAssignmentScheduleRequests/{name}");
    let mut seen = Vec::new();
    for _ in 0..3 {
        let g = sim.pim_get(&tok, RG_SCOPE, &path, "").await;
        seen.push(
            g.body["properties"]["status"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    assert_eq!(seen, vec!["Accepted", "Accepted", "Provisioned"]);
}
