//! Contract tests over every one of Microsoft's examples (`shared/azure-examples/{jit,pim}`, or
//! `AZURE_EXAMPLES_DIR`: see `accessgrant_sim::examples`): azure-sim answers each
//! example request (sent verbatim) with the example's status and a body whose field names, JSON
//! types and enum values match the example response. Ids, names and times may differ.
//!
//! Comparison rules (recursive):
//! - every field of the example is present in ours; ours may carry extra fields only from the
//!   spec-defined allowlist below;
//! - a JSON type must match, except that an example `null` accepts any value (it marks an
//!   optional value absent in that sample);
//! - enum-valued fields must hold a value of the spec's enum (or the example's own value);
//!   resource `type` strings must be equal (PascalCase segments included);
//! - arrays: each of our elements must match some example element; top-level `value` lists must
//!   be non-empty when the example's is.

use crate::azure_support;

use std::path::Path;

use azure_support::*;
use serde_json::Value;

/// Spec-defined fields our answers may carry beyond an example.
const EXTRA_ALLOWED: &[&str] = &["linkedRoleEligibilityScheduleId", "nextLink"];

fn enum_values(key: &str) -> Option<&'static [&'static str]> {
    Some(match key {
        "status" => &[
            "Accepted",
            "PendingEvaluation",
            "Granted",
            "Denied",
            "PendingProvisioning",
            "Provisioned",
            "PendingRevocation",
            "Revoked",
            "Canceled",
            "Failed",
            "PendingApprovalProvisioning",
            "PendingApproval",
            "FailedAsResourceIsLocked",
            "PendingAdminDecision",
            "AdminApproved",
            "AdminDenied",
            "TimedOut",
            "ProvisioningStarted",
            "Invalid",
            "PendingScheduleCreation",
            "ScheduleCreated",
            "PendingExternalProvisioning",
            "Initiated",
            "Initiating",
        ],
        "statusReason" => &["Expired", "UserRequested", "NewerRequestInitiated"],
        "requestType" => &[
            "AdminAssign",
            "AdminRemove",
            "AdminUpdate",
            "AdminExtend",
            "AdminRenew",
            "SelfActivate",
            "SelfDeactivate",
            "SelfExtend",
            "SelfRenew",
        ],
        "principalType" => &[
            "User",
            "Group",
            "ServicePrincipal",
            "ForeignGroup",
            "Device",
        ],
        "assignmentType" => &["Activated", "Assigned"],
        "memberType" => &["Inherited", "Direct", "Group"],
        "protocol" => &["TCP", "UDP", "*"],
        "ruleType" => &[
            "RoleManagementPolicyApprovalRule",
            "RoleManagementPolicyAuthenticationContextRule",
            "RoleManagementPolicyEnablementRule",
            "RoleManagementPolicyExpirationRule",
            "RoleManagementPolicyNotificationRule",
        ],
        "caller" => &["Admin", "EndUser"],
        "level" => &["Assignment", "Eligibility"],
        "approvalMode" => &["SingleStage", "Serial", "Parallel", "NoApproval"],
        "notificationType" => &["Email"],
        "recipientType" => &["Requestor", "Approver", "Admin"],
        "notificationLevel" => &["None", "Critical", "All"],
        "userType" => &["User", "Group"],
        "kind" => &["Basic"],
        "provisioningState" => &["Succeeded"],
        _ => return None,
    })
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn compare(path: &str, key: &str, parent: &str, ex: &Value, ours: &Value, errs: &mut Vec<String>) {
    if ex.is_null() {
        return;
    }
    if type_name(ex) != type_name(ours) {
        errs.push(format!(
            "{path}: type {} vs example {}",
            type_name(ours),
            type_name(ex)
        ));
        return;
    }
    match (ex, ours) {
        (Value::String(e), Value::String(o)) => {
            if key == "type" && parent != "expiration" {
                if e != o {
                    errs.push(format!("{path}: '{o}' vs example '{e}'"));
                }
            } else if key == "type" {
                if !["AfterDuration", "AfterDateTime", "NoExpiration"].contains(&o.as_str()) {
                    errs.push(format!("{path}: '{o}' not an expiration type"));
                }
            } else if let Some(values) = enum_values(key)
                && o != e
                && !values.contains(&o.as_str())
            {
                errs.push(format!("{path}: '{o}' not in enum (example '{e}')"));
            }
        }
        (Value::Object(e), Value::Object(o)) => {
            for (k, ev) in e {
                match o.get(k) {
                    Some(ov) => compare(&format!("{path}.{k}"), k, key, ev, ov, errs),
                    None => errs.push(format!("{path}.{k}: missing")),
                }
            }
            for k in o.keys() {
                if !e.contains_key(k) && !EXTRA_ALLOWED.contains(&k.as_str()) {
                    errs.push(format!("{path}.{k}: not in the example"));
                }
            }
        }
        (Value::Array(e), Value::Array(o)) => {
            if path == "$.value" && !e.is_empty() && o.is_empty() {
                errs.push(format!("{path}: empty list, the example has items"));
            }
            if e.is_empty() {
                return;
            }
            for (i, item) in o.iter().enumerate() {
                let mut best: Option<Vec<String>> = None;
                for exi in e {
                    let mut sub = Vec::new();
                    compare(&format!("{path}[{i}]"), key, parent, exi, item, &mut sub);
                    if best.as_ref().is_none_or(|b| sub.len() < b.len()) {
                        best = Some(sub);
                    }
                }
                errs.extend(best.unwrap_or_default());
            }
        }
        _ => {}
    }
}

/// Microsoft's examples: `../shared/azure-examples` beside the repository, or
/// `AZURE_EXAMPLES_DIR` (see `accessgrant_sim::examples`); fails saying what to set.
fn examples() -> accessgrant_sim::examples::Examples {
    accessgrant_sim::examples::locate(&Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn example(rel: &str) -> Value {
    examples().read(rel).unwrap_or_else(|e| panic!("{e}"))
}

/// Method, path (with query) and body of an example request.
fn request_of(file: &str, ex: &Value) -> (String, String, Option<Value>) {
    let p = &ex["parameters"];
    let s = |k: &str| p[k].as_str().unwrap_or_default().to_string();
    let version = s("api-version");
    let mut query = format!("api-version={version}");
    if let Some(f) = p["$filter"].as_str() {
        // The spec writes '+' for spaces in some filters; send the string as a query value.
        let enc: String = if f.contains('+') {
            f.replace('\'', "%27")
        } else {
            form_urlencoded::byte_serialize(f.as_bytes()).collect()
        };
        query.push_str(&format!("&$filter={enc}"));
    }
    if file.starts_with("jit/") {
        let sub = s("subscriptionId");
        let mut path = format!("/subscriptions/{sub}");
        if p["resourceGroupName"].is_string() {
            path.push_str(&format!("/resourceGroups/{}", s("resourceGroupName")));
        }
        path.push_str("/providers/Microsoft.Security");
        if p["ascLocation"].is_string() {
            path.push_str(&format!("/locations/{}", s("ascLocation")));
        }
        path.push_str("/jitNetworkAccessPolicies");
        if p["jitNetworkAccessPolicyName"].is_string() {
            path.push_str(&format!("/{}", s("jitNetworkAccessPolicyName")));
        }
        let method = if file.contains("Initiate") {
            path.push_str("/initiate");
            "POST"
        } else if file.contains("Create") {
            "PUT"
        } else if file.contains("Delete") {
            "DELETE"
        } else {
            "GET"
        };
        let body = p.get("body").cloned();
        return (method.into(), format!("{path}?{query}"), body);
    }
    let scope = s("scope");
    let scope = scope.trim_matches('/');
    let (method, coll, name_key, action) =
        match file.trim_start_matches("pim/").trim_end_matches(".json") {
            "PutRoleAssignmentScheduleRequest" => (
                "PUT",
                "roleAssignmentScheduleRequests",
                "roleAssignmentScheduleRequestName",
                "",
            ),
            "GetRoleAssignmentScheduleRequestByName" => (
                "GET",
                "roleAssignmentScheduleRequests",
                "roleAssignmentScheduleRequestName",
                "",
            ),
            "GetRoleAssignmentScheduleRequestByScope" => {
                ("GET", "roleAssignmentScheduleRequests", "", "")
            }
            "CancelRoleAssignmentScheduleRequestByName" => (
                "POST",
                "roleAssignmentScheduleRequests",
                "roleAssignmentScheduleRequestName",
                "cancel",
            ),
            "ValidateRoleAssignmentScheduleRequestByName" => (
                "POST",
                "roleAssignmentScheduleRequests",
                "roleAssignmentScheduleRequestName",
                "validate",
            ),
            "GetRoleAssignmentScheduleByName" => (
                "GET",
                "roleAssignmentSchedules",
                "roleAssignmentScheduleName",
                "",
            ),
            "GetRoleAssignmentSchedulesByScope" => ("GET", "roleAssignmentSchedules", "", ""),
            "GetRoleAssignmentScheduleInstanceByName" => (
                "GET",
                "roleAssignmentScheduleInstances",
                "roleAssignmentScheduleInstanceName",
                "",
            ),
            "GetRoleAssignmentScheduleInstancesByScope" => {
                ("GET", "roleAssignmentScheduleInstances", "", "")
            }
            "GetRoleEligibilitySchedulesByScope" => ("GET", "roleEligibilitySchedules", "", ""),
            "GetRoleEligibilityScheduleInstancesByScope" => {
                ("GET", "roleEligibilityScheduleInstances", "", "")
            }
            "GetRoleManagementPolicyByName" => (
                "GET",
                "roleManagementPolicies",
                "roleManagementPolicyName",
                "",
            ),
            "GetRoleManagementPolicyByScope" => ("GET", "roleManagementPolicies", "", ""),
            "GetRoleManagementPolicyAssignmentByScope" => {
                ("GET", "roleManagementPolicyAssignments", "", "")
            }
            "GetEligibleChildResourcesByScope" => ("GET", "eligibleChildResources", "", ""),
            other => panic!("no request mapping for example {other}: add one"),
        };
    let mut path = format!("/{scope}/providers/Microsoft.Authorization/{coll}");
    if !name_key.is_empty() {
        path.push_str(&format!("/{}", s(name_key)));
    }
    if !action.is_empty() {
        path.push_str(&format!("/{action}"));
    }
    (
        method.into(),
        format!("{path}?{query}"),
        p.get("parameters").cloned(),
    )
}

fn needs_prior_put(file: &str) -> bool {
    matches!(
        file,
        "pim/GetRoleAssignmentScheduleRequestByName.json"
            | "pim/GetRoleAssignmentScheduleRequestByScope.json"
            | "pim/CancelRoleAssignmentScheduleRequestByName.json"
    )
}

/// For the cancel example the request must still be pending: the example role needs approval.
fn approval_for_example_role(y: &mut serde_norway::Value) {
    let extra: serde_norway::Value = serde_norway::from_str(
        "scope: /subscriptions/dfa2a084-766f-4003-8ae1-c4aeb893a99f\n\
         roleDefinitionId: c8d4ff99-41c3-41a8-9f60-21dfdad59608\n\
         rules:\n  - {id: Approval_EndUser_Assignment, setting: {isApprovalRequired: true}}\n",
    )
    .expect("yaml");
    if let Some(serde_norway::Value::Sequence(s)) = y
        .as_mapping_mut()
        .and_then(|m| m.get_mut("roleManagementPolicies"))
    {
        s.push(extra);
    }
}

async fn run_example(file: &str) -> Vec<String> {
    let ex = example(file);
    let sim = if file.contains("Cancel") {
        Sim::start_with(approval_for_example_role).await
    } else {
        Sim::start().await
    };
    // The caller of Microsoft's PIM examples is their user a3bb8764 (admin at the example
    // subscriptions in the sandbox world).
    let tok = sim.token(EXAMPLE_USER_APP, EXAMPLE_USER_SECRET).await;
    if needs_prior_put(file) {
        let put = example("pim/PutRoleAssignmentScheduleRequest.json");
        let (m, p, b) = request_of("pim/PutRoleAssignmentScheduleRequest", &put);
        let r = sim.call(&m, &p, Some(&tok), b.as_ref()).await;
        assert_eq!(r.status, 201, "{file}: prior PUT: {}", r.body);
    }
    let (method, path, body) = request_of(file, &ex);
    let r = sim.call(&method, &path, Some(&tok), body.as_ref()).await;
    let responses = ex["responses"].as_object().cloned().unwrap_or_default();
    let Some(expected) = responses.get(&r.status.to_string()) else {
        return vec![format!(
            "{file}: status {} not among the example's {:?}: {}",
            r.status,
            responses.keys().collect::<Vec<_>>(),
            r.body
        )];
    };
    let mut errs = Vec::new();
    match expected.get("body") {
        Some(b) => compare("$", "", "", b, &r.body, &mut errs),
        None => {
            if !r.body.is_null() {
                errs.push(format!("$: example has no body, ours is {}", r.body));
            }
        }
    }
    errs.into_iter().map(|e| format!("{file}: {e}")).collect()
}

#[tokio::test]
async fn every_example_is_answered_in_its_shape() {
    let files: Vec<String> = examples().all().map(|(n, _)| n.to_string()).collect();
    assert_eq!(files.len(), 21, "expected every example file: {files:?}");
    let mut errs = Vec::new();
    for f in &files {
        errs.extend(run_example(f).await);
    }
    assert!(errs.is_empty(), "contract mismatches:\n{}", errs.join("\n"));
}

#[test]
fn the_comparator_catches_mismatches() {
    let ex: Value = serde_json::json!({"value": [{"properties": {"status": "Provisioned", "n": 1, "o": null}, "type": "Microsoft.Authorization/RoleAssignmentSchedules"}]});
    let good: Value = serde_json::json!({"value": [{"properties": {"status": "Revoked", "n": 2, "o": "x"}, "type": "Microsoft.Authorization/RoleAssignmentSchedules"}]});
    let mut errs = Vec::new();
    compare("$", "", "", &ex, &good, &mut errs);
    assert!(errs.is_empty(), "{errs:?}");
    for bad in [
        serde_json::json!({"value": [{"properties": {"status": "Bogus", "n": 2, "o": 1}, "type": "Microsoft.Authorization/RoleAssignmentSchedules"}]}),
        serde_json::json!({"value": [{"properties": {"status": "Revoked", "n": "2", "o": 1}, "type": "Microsoft.Authorization/RoleAssignmentSchedules"}]}),
        serde_json::json!({"value": [{"properties": {"status": "Revoked", "n": 2}, "type": "Microsoft.Authorization/RoleAssignmentSchedules"}]}),
        serde_json::json!({"value": [{"properties": {"status": "Revoked", "n": 2, "o": 1, "extra": 1}, "type": "Microsoft.Authorization/RoleAssignmentSchedules"}]}),
        serde_json::json!({"value": [{"properties": {"status": "Revoked", "n": 2, "o": 1}, "type": "Microsoft.Authorization/roleAssignmentSchedules"}]}),
        serde_json::json!({"value": []}),
    ] {
        let mut errs = Vec::new();
        compare("$", "", "", &ex, &bad, &mut errs);
        assert!(!errs.is_empty(), "should fail: {bad}");
    }
}
