//! PIM for Azure resources (Microsoft.Authorization, api-version 2020-10-01): schedule requests
//! and the rules Azure enforces on them, schedules, instances, eligibilities, policies.

use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};

use super::arm::{
    ArmError, get_ci, get_str_ci, is_guid, last_segment, normalize_scope, parent_scope,
    resource_group_of, scope_at_or_above, scope_eq, scope_kind, stable_guid, subscription_of,
};
use super::state::{Assignment, PimRequest, State, arm_child, role_definition_id};
use super::time::{fmt_time, format_duration, parse_duration, parse_time};
use super::world::{default_rules, merge_rules};

/// Who calls (from the access token).
#[derive(Debug, Clone)]
pub struct Caller {
    pub oid: String,
    pub tid: String,
    pub appid: Option<String>,
    pub mfa: bool,
    /// UPN/email for users, object id for service principals (JIT `requestor`).
    pub requestor: String,
}

const REQUEST_TYPES: [&str; 9] = [
    "AdminAssign",
    "AdminRemove",
    "AdminUpdate",
    "AdminExtend",
    "AdminRenew",
    "SelfActivate",
    "SelfDeactivate",
    "SelfExtend",
    "SelfRenew",
];

const PENDING: [&str; 9] = [
    "Accepted",
    "PendingEvaluation",
    "Granted",
    "PendingProvisioning",
    "PendingApproval",
    "PendingApprovalProvisioning",
    "PendingAdminDecision",
    "AdminApproved",
    "ScheduleCreated",
];

fn is_pending(status: &str) -> bool {
    PENDING.contains(&status)
}

/// Parsed body of a RoleAssignmentScheduleRequest PUT/validate.
#[derive(Debug, Clone)]
struct ReqInput {
    principal_id: String,
    role_guid: String,
    request_type: String,
    linked: Option<String>,
    target_schedule: Option<String>,
    target_instance: Option<String>,
    start: Option<DateTime<Utc>>,
    exp_type: Option<String>,
    duration: Option<(String, Duration)>,
    end_dt: Option<DateTime<Utc>>,
    justification: Option<String>,
    ticket_number: Option<String>,
    ticket_system: Option<String>,
    condition: Option<String>,
    condition_version: Option<String>,
}

impl ReqInput {
    /// Requested active length: `Some(None)` = no expiration, `None` = not given.
    fn length(&self, start: DateTime<Utc>) -> Option<Option<Duration>> {
        match self.exp_type.as_deref() {
            Some("NoExpiration") => Some(None),
            Some("AfterDateTime") => self.end_dt.map(|e| Some(e - start)),
            Some("AfterDuration") => self.duration.as_ref().map(|(_, d)| Some(*d)),
            _ => match (&self.duration, self.end_dt) {
                (Some((_, d)), _) => Some(Some(*d)),
                (None, Some(e)) => Some(Some(e - start)),
                _ => None,
            },
        }
    }
}

fn parse_body(body: &Value) -> Result<ReqInput, ArmError> {
    let props = get_ci(body, "properties")
        .filter(|p| p.is_object())
        .ok_or_else(|| ArmError::invalid_body("The property 'properties' is required."))?;
    let c = "properties.";
    let principal_id = get_str_ci(props, "principalId", c)?.ok_or_else(|| {
        ArmError::invalid_body("The property 'properties.principalId' is required.")
    })?;
    let role = get_str_ci(props, "roleDefinitionId", c)?.ok_or_else(|| {
        ArmError::invalid_body("The property 'properties.roleDefinitionId' is required.")
    })?;
    let role_guid = last_segment(&role).to_string();
    if !is_guid(&role_guid) {
        return Err(ArmError::bad_request(
            "InvalidRoleDefinitionId",
            format!("The role definition ID '{role}' is not valid."),
        ));
    }
    if !is_guid(&principal_id) {
        return Err(ArmError::bad_request(
            "InvalidPrincipalId",
            format!("The principal ID '{principal_id}' is not a valid GUID."),
        ));
    }
    let rt = get_str_ci(props, "requestType", c)?.ok_or_else(|| {
        ArmError::invalid_body("The property 'properties.requestType' is required.")
    })?;
    let request_type = REQUEST_TYPES
        .iter()
        .find(|t| t.eq_ignore_ascii_case(&rt))
        .map(|t| t.to_string())
        .ok_or_else(|| {
            ArmError::bad_request(
                "InvalidRequestType",
                format!(
                    "The request type '{rt}' is not valid. Valid values: {}.",
                    REQUEST_TYPES.join(", ")
                ),
            )
        })?;
    let mut input = ReqInput {
        principal_id,
        role_guid,
        request_type,
        linked: get_str_ci(props, "linkedRoleEligibilityScheduleId", c)?,
        target_schedule: get_str_ci(props, "targetRoleAssignmentScheduleId", c)?,
        target_instance: get_str_ci(props, "targetRoleAssignmentScheduleInstanceId", c)?,
        start: None,
        exp_type: None,
        duration: None,
        end_dt: None,
        justification: get_str_ci(props, "justification", c)?,
        ticket_number: None,
        ticket_system: None,
        condition: get_str_ci(props, "condition", c)?,
        condition_version: get_str_ci(props, "conditionVersion", c)?,
    };
    if let Some(si) = get_ci(props, "scheduleInfo") {
        let c = "properties.scheduleInfo.";
        if let Some(s) = get_str_ci(si, "startDateTime", c)? {
            input.start = Some(parse_time(&s).ok_or_else(|| {
                ArmError::invalid_body(format!("The startDateTime '{s}' is not a valid date-time."))
            })?);
        }
        if let Some(exp) = get_ci(si, "expiration") {
            let c = "properties.scheduleInfo.expiration.";
            if let Some(t) = get_str_ci(exp, "type", c)? {
                let canon = ["AfterDuration", "AfterDateTime", "NoExpiration"]
                    .iter()
                    .find(|x| x.eq_ignore_ascii_case(&t))
                    .ok_or_else(|| {
                        ArmError::invalid_body(format!(
                            "The expiration type '{t}' is not valid (AfterDuration, AfterDateTime, NoExpiration)."
                        ))
                    })?;
                input.exp_type = Some(canon.to_string());
            }
            if let Some(d) = get_str_ci(exp, "duration", c)? {
                let dur = parse_duration(&d).ok_or_else(|| {
                    ArmError::invalid_body(format!(
                        "The duration '{d}' is not a valid ISO 8601 duration."
                    ))
                })?;
                input.duration = Some((d, dur));
            }
            if let Some(e) = get_str_ci(exp, "endDateTime", c)? {
                input.end_dt = Some(parse_time(&e).ok_or_else(|| {
                    ArmError::invalid_body(format!(
                        "The endDateTime '{e}' is not a valid date-time."
                    ))
                })?);
            }
        }
    }
    if let Some(t) = get_ci(props, "ticketInfo") {
        input.ticket_number = get_str_ci(t, "ticketNumber", "properties.ticketInfo.")?;
        input.ticket_system = get_str_ci(t, "ticketSystem", "properties.ticketInfo.")?;
    }
    Ok(input)
}

/// Checks that a scope exists in the world (subscription / resource group known).
pub fn check_scope(state: &State, scope: &str, allow_root: bool) -> Result<(), ArmError> {
    if scope == "/" {
        return if allow_root {
            Ok(())
        } else {
            Err(ArmError::bad_request(
                "InvalidScope",
                "The scope '/' is not valid for this operation.",
            ))
        };
    }
    if scope_kind(scope) == "managementgroup" {
        return Ok(());
    }
    let Some(sub_id) = subscription_of(scope) else {
        return Err(ArmError::bad_request(
            "InvalidScope",
            format!("The scope '{scope}' is not valid."),
        ));
    };
    let Some(sub) = state.world.subscription(&sub_id) else {
        return Err(ArmError::new(
            404,
            "SubscriptionNotFound",
            format!("The subscription '{sub_id}' could not be found."),
        ));
    };
    if let Some(rg) = resource_group_of(scope)
        && !sub
            .resource_groups
            .iter()
            .any(|g| g.name.eq_ignore_ascii_case(&rg))
    {
        return Err(ArmError::new(
            404,
            "ResourceGroupNotFound",
            format!("Resource group '{rg}' could not be found."),
        ));
    }
    Ok(())
}

// ---------- policies ----------

/// The policy that governs (scope, role): the world policy at that exact scope, else the one
/// at the nearest parent scope, else the permissive default.
pub struct EffectivePolicy {
    pub name: String,
    pub scope: String,
    pub role_guid: String,
    pub display_name: Option<String>,
    pub description: Option<String>,
    pub rules: Vec<Value>,
}

pub fn effective_policy(state: &State, scope: &str, role_guid: &str) -> EffectivePolicy {
    let mut cur = Some(scope.to_string());
    while let Some(s) = cur {
        if let Some(p) = state.world.role_management_policies.iter().find(|p| {
            scope_eq(&p.scope, &s)
                && last_segment(&p.role_definition_id).eq_ignore_ascii_case(role_guid)
        }) {
            return EffectivePolicy {
                name: p.name.clone().unwrap_or_default(),
                scope: p.scope.clone(),
                role_guid: role_guid.to_string(),
                display_name: p.display_name.clone(),
                description: p.description.clone(),
                rules: merge_rules(&p.rules),
            };
        }
        cur = parent_scope(&s);
    }
    EffectivePolicy {
        name: default_policy_name(scope, role_guid),
        scope: scope.to_string(),
        role_guid: role_guid.to_string(),
        display_name: None,
        description: None,
        rules: default_rules(),
    }
}

fn default_policy_name(scope: &str, role_guid: &str) -> String {
    stable_guid(&format!(
        "defaultpolicy/{}/{}",
        scope.to_ascii_lowercase(),
        role_guid.to_ascii_lowercase()
    ))
}

fn rule<'a>(rules: &'a [Value], id: &str) -> Option<&'a Value> {
    rules
        .iter()
        .find(|r| r.get("id").and_then(Value::as_str) == Some(id))
}

fn enabled_rules(rules: &[Value], id: &str) -> Vec<String> {
    rule(rules, id)
        .and_then(|r| r.get("enabledRules"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn expiration_rule(rules: &[Value], id: &str) -> (bool, Option<Duration>) {
    let r = rule(rules, id);
    let required = r
        .and_then(|r| r.get("isExpirationRequired"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let max = r
        .and_then(|r| r.get("maximumDuration"))
        .and_then(Value::as_str)
        .and_then(parse_duration);
    (required, max)
}

fn approval_required(rules: &[Value], extension: bool) -> bool {
    let key = if extension {
        "isApprovalRequiredForExtension"
    } else {
        "isApprovalRequired"
    };
    rule(rules, "Approval_EndUser_Assignment")
        .and_then(|r| r.get("setting"))
        .and_then(|s| s.get(key))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

fn policy_failed(rules: &[&str]) -> ArmError {
    let list = rules
        .iter()
        .map(|r| format!("\"{r}\""))
        .collect::<Vec<_>>()
        .join(",");
    ArmError::bad_request(
        "RoleAssignmentRequestPolicyValidationFailed",
        format!("The following policy rules failed: [{list}]"),
    )
}

fn nonempty(s: &Option<String>) -> bool {
    s.as_deref().is_some_and(|s| !s.trim().is_empty())
}

/// Checks the enablement and expiration rules of `caller_kind` (`EndUser` or `Admin`).
fn check_rules(
    rules: &[Value],
    caller_kind: &str,
    input: &ReqInput,
    start: DateTime<Utc>,
    caller: &Caller,
    failed: &mut Vec<&'static str>,
) {
    let (required, max) = expiration_rule(rules, &format!("Expiration_{caller_kind}_Assignment"));
    match input.length(start) {
        None | Some(None) => {
            if required {
                failed.push("ExpirationRule");
            }
        }
        Some(Some(len)) => {
            let over = max.is_some_and(|m| len > m) && (required || caller_kind == "EndUser");
            if len <= Duration::zero() || over {
                failed.push("ExpirationRule");
            }
        }
    }
    let enabled = enabled_rules(rules, &format!("Enablement_{caller_kind}_Assignment"));
    let has = |n: &str| enabled.iter().any(|e| e.eq_ignore_ascii_case(n));
    if has("MultiFactorAuthentication") && !caller.mfa {
        failed.push("MfaRule");
    }
    let approval_justification = caller_kind == "EndUser"
        && approval_required(rules, false)
        && rule(rules, "Approval_EndUser_Assignment")
            .and_then(|r| r.get("setting"))
            .and_then(|s| s.get("isRequestorJustificationRequired"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
    if (has("Justification") || approval_justification) && !nonempty(&input.justification) {
        failed.push("JustificationRule");
    }
    if has("Ticketing") && !nonempty(&input.ticket_number) {
        failed.push("TicketingRule");
    }
}

fn acrs_check(rules: &[Value]) -> Result<(), ArmError> {
    let r = rule(rules, "AuthenticationContext_EndUser_Assignment");
    if r.and_then(|r| r.get("isEnabled")).and_then(Value::as_bool) == Some(true) {
        let claim = r
            .and_then(|r| r.get("claimValue"))
            .and_then(Value::as_str)
            .unwrap_or("c1");
        return Err(ArmError::bad_request(
            "RoleAssignmentRequestAcrsValidationFailed",
            format!(
                "The role assignment request failed authentication context validation: claims={{\"access_token\":{{\"acrs\":{{\"essential\":true,\"value\":\"{claim}\"}}}}}}"
            ),
        ));
    }
    Ok(())
}

// ---------- schedule requests ----------

fn forbidden(caller: &Caller, action: &str, scope: &str) -> ArmError {
    ArmError::new(
        403,
        "AuthorizationFailed",
        format!(
            "The client '{0}' with object id '{0}' does not have authorization to perform action '{action}' over scope '{scope}' or the scope is invalid. If access was recently granted, please refresh your credentials.",
            caller.oid
        ),
    )
}

fn exists_error(state: &State, name: &str) -> ArmError {
    ArmError::new(
        state.world.settings.request_exists_status,
        "RoleAssignmentRequestExists",
        format!("A role assignment request with Id: {name} already exists."),
    )
}

fn active_for<'a>(
    state: &'a State,
    scope: &str,
    role: &str,
    principal: &str,
    now: DateTime<Utc>,
) -> Option<&'a Assignment> {
    state
        .assignments
        .for_target(scope, role, principal)
        .into_iter()
        .filter_map(|seq| state.assignments.get(seq))
        .find(|a| {
            scope_eq(&a.scope, scope)
                && a.role_guid.eq_ignore_ascii_case(role)
                && a.principal_id.eq_ignore_ascii_case(principal)
                && a.active(now)
        })
}

/// Creates (or, with `dry_run`, validates) a schedule request. Returns the request JSON.
pub fn create(
    state: &mut State,
    scope: &str,
    name: &str,
    body: &Value,
    caller: &Caller,
    now: DateTime<Utc>,
    dry_run: bool,
) -> Result<Value, ArmError> {
    if !is_guid(name) {
        return Err(ArmError::bad_request(
            "InvalidRoleAssignmentScheduleRequestName",
            format!("The role assignment schedule request name '{name}' is not a valid GUID."),
        ));
    }
    if !dry_run && !state.requests.named(name).is_empty() {
        return Err(exists_error(state, name));
    }
    check_scope(state, scope, false)?;
    let input = parse_body(body)?;
    if state.world.role(&input.role_guid).is_none() {
        return Err(ArmError::bad_request(
            "RoleNotFound",
            format!(
                "The role definition '{}' was not found.",
                role_definition_id(scope, &input.role_guid)
            ),
        ));
    }
    // Only the id and type (a principal can carry many admin scopes: no copy of it).
    let Some((principal_oid, principal_kind)) = state
        .world
        .principal(&input.principal_id)
        .map(|p| (p.object_id.clone(), p.kind.as_str()))
    else {
        return Err(ArmError::bad_request(
            "SubjectNotFound",
            format!(
                "The subject {} was not found in the directory.",
                input.principal_id
            ),
        ));
    };
    let rt = input.request_type.as_str();
    let is_self = rt.starts_with("Self");
    if is_self && !caller.oid.eq_ignore_ascii_case(&input.principal_id) {
        return Err(ArmError::new(
            403,
            "AuthorizationFailed",
            format!(
                "The client '{}' cannot perform a '{rt}' request for principal '{}': Self* requests act only on the caller's own principal.",
                caller.oid, input.principal_id
            ),
        ));
    }
    if !is_self && !state.world.is_admin(&caller.oid, scope) {
        return Err(forbidden(
            caller,
            "Microsoft.Authorization/roleAssignmentScheduleRequests/write",
            scope,
        ));
    }
    let start = input.start.map_or(now, |s| s.max(now));
    let policy = effective_policy(state, scope, &input.role_guid);
    let mut req = PimRequest {
        name: name.to_string(),
        scope: scope.to_string(),
        principal_id: principal_oid,
        principal_type: principal_kind.to_string(),
        role_guid: input.role_guid.clone(),
        role_definition_id: role_definition_id(scope, &input.role_guid),
        request_type: rt.to_string(),
        status: "Provisioned".into(),
        approval_id: None,
        start,
        expiration_type: input.exp_type.clone().unwrap_or_else(|| {
            if input.duration.is_some() {
                "AfterDuration".into()
            } else if input.end_dt.is_some() {
                "AfterDateTime".into()
            } else {
                "NoExpiration".into()
            }
        }),
        duration: input.duration.as_ref().map(|(s, _)| s.clone()),
        end_date_time: input.end_dt,
        justification: input.justification.clone(),
        ticket_number: input.ticket_number.clone(),
        ticket_system: input.ticket_system.clone(),
        requestor_id: caller.oid.clone(),
        created_on: now,
        condition: input.condition.clone(),
        condition_version: input.condition_version.clone(),
        linked_eligibility_id: input.linked.clone(),
        target_schedule_id: input.target_schedule.clone(),
        target_instance_id: input.target_instance.clone(),
        planned_end: None,
        accepted_reads_left: 0,
    };
    let length = input.length(start);
    req.planned_end = match length {
        Some(Some(d)) => Some(start + d),
        _ => None,
    };

    match rt {
        "SelfActivate" | "AdminAssign" | "AdminRenew" | "SelfRenew" => {
            let (caller_kind, needs_elig) = if is_self {
                ("EndUser", true)
            } else {
                ("Admin", false)
            };
            if is_self {
                acrs_check(&policy.rules)?;
            }
            let mut failed: Vec<&'static str> = Vec::new();
            if needs_elig {
                match find_eligibility(state, scope, &input, now) {
                    Some(e) => req.linked_eligibility_id = Some(e),
                    None => failed.push("EligibilityRule"),
                }
            }
            check_rules(
                &policy.rules,
                caller_kind,
                &input,
                start,
                caller,
                &mut failed,
            );
            if !failed.is_empty() {
                return Err(policy_failed(&failed));
            }
            let pending = state
                .requests
                .for_target(scope, &input.role_guid, &input.principal_id)
                .iter()
                .map(|&i| &state.requests[i])
                .any(|r| {
                    scope_eq(&r.scope, scope)
                        && r.role_guid.eq_ignore_ascii_case(&input.role_guid)
                        && r.principal_id.eq_ignore_ascii_case(&input.principal_id)
                        && (r.status == "PendingApproval" || r.status == "PendingAdminDecision")
                });
            if pending {
                return Err(ArmError::bad_request(
                    "PendingRoleAssignmentRequest",
                    "There is already an existing pending Role assignment request.",
                ));
            }
            let existing = state
                .assignments
                .for_target(scope, &input.role_guid, &input.principal_id)
                .into_iter()
                .filter_map(|seq| state.assignments.get(seq))
                .any(|a| {
                    scope_eq(&a.scope, scope)
                        && a.role_guid.eq_ignore_ascii_case(&input.role_guid)
                        && a.principal_id.eq_ignore_ascii_case(&input.principal_id)
                        && a.end.is_none_or(|e| e > now)
                });
            if existing {
                return Err(ArmError::bad_request(
                    "RoleAssignmentExists",
                    "The Role assignment already exists.",
                ));
            }
            if dry_run {
                // Validation reports the schedule the request would create.
                req.target_schedule_id = Some(arm_child(
                    scope,
                    "RoleAssignmentSchedules",
                    &uuid::Uuid::new_v4().to_string(),
                ));
                return Ok(state.request_json(&req));
            }
            if is_self && approval_required(&policy.rules, false) {
                req.status = "PendingApproval".into();
                req.approval_id = Some(format!(
                    "/providers/Microsoft.Authorization/roleAssignmentApprovals/{}",
                    uuid::Uuid::new_v4()
                ));
            } else {
                let assignment_type = if is_self { "Activated" } else { "Assigned" };
                provision(state, &mut req, assignment_type, now);
            }
        }
        "SelfDeactivate" | "AdminRemove" => {
            // A principal deactivates its own activations; admins remove any assignment.
            let found = state
                .assignments
                .for_target(scope, &input.role_guid, &input.principal_id)
                .into_iter()
                .filter_map(|seq| state.assignments.get(seq))
                .find(|a| {
                    scope_eq(&a.scope, scope)
                        && a.role_guid.eq_ignore_ascii_case(&input.role_guid)
                        && a.principal_id.eq_ignore_ascii_case(&input.principal_id)
                        && a.active(now)
                        && (rt == "AdminRemove" || a.assignment_type == "Activated")
                });
            let Some(a) = found else {
                return Err(ArmError::bad_request(
                    "RoleAssignmentDoesNotExist",
                    "The Role assignment does not exist.",
                ));
            };
            if now - a.start < state.floor {
                return Err(ArmError::bad_request(
                    "ActiveDurationTooShort",
                    format!(
                        "The Active duration is too short. Miniumum Required is {}.",
                        floor_words(state.floor)
                    ),
                ));
            }
            let sched = a.schedule_name.clone();
            req.target_schedule_id = Some(a.schedule_id());
            req.target_instance_id = Some(a.instance_id());
            req.linked_eligibility_id = a.linked_eligibility_id.clone();
            if dry_run {
                return Ok(state.request_json(&req));
            }
            for seq in state.assignments.by_schedule_name(&sched) {
                if state
                    .assignments
                    .get(seq)
                    .is_some_and(|x| x.schedule_name == sched)
                {
                    state.assignments.remove(seq);
                }
            }
            req.status = "Revoked".into();
        }
        "AdminExtend" | "AdminUpdate" | "SelfExtend" => {
            let target = input.target_schedule.as_deref().map(last_segment);
            let mut candidates =
                state
                    .assignments
                    .for_target(scope, &input.role_guid, &input.principal_id);
            if let Some(t) = target {
                candidates.extend(state.assignments.by_schedule_name(t));
            }
            candidates.sort_unstable();
            let Some(idx) = candidates.into_iter().find(|&seq| {
                state.assignments.get(seq).is_some_and(|a| {
                    a.active(now)
                        && a.principal_id.eq_ignore_ascii_case(&input.principal_id)
                        && a.role_guid.eq_ignore_ascii_case(&input.role_guid)
                        && (scope_eq(&a.scope, scope)
                            || target.is_some_and(|t| a.schedule_name.eq_ignore_ascii_case(t)))
                })
            }) else {
                return Err(ArmError::bad_request(
                    "RoleAssignmentDoesNotExist",
                    "The Role assignment does not exist.",
                ));
            };
            let caller_kind = if is_self { "EndUser" } else { "Admin" };
            let mut failed: Vec<&'static str> = Vec::new();
            if is_self && find_eligibility(state, scope, &input, now).is_none() {
                failed.push("EligibilityRule");
            }
            check_rules(
                &policy.rules,
                caller_kind,
                &input,
                start,
                caller,
                &mut failed,
            );
            if !failed.is_empty() {
                return Err(policy_failed(&failed));
            }
            let Some(a) = state.assignments.get(idx) else {
                return Err(ArmError::new(
                    500,
                    "InternalServerError",
                    "assignment store",
                ));
            };
            req.target_schedule_id = Some(a.schedule_id());
            req.target_instance_id = Some(a.instance_id());
            if dry_run {
                return Ok(state.request_json(&req));
            }
            if is_self && approval_required(&policy.rules, true) {
                req.status = "PendingApproval".into();
                req.approval_id = Some(format!(
                    "/providers/Microsoft.Authorization/roleAssignmentApprovals/{}",
                    uuid::Uuid::new_v4()
                ));
            } else {
                let request_id = arm_child(scope, "RoleAssignmentScheduleRequests", name);
                state.assignments.modify(idx, |a| {
                    a.end = req.planned_end;
                    a.updated_on = now;
                    a.request_id = Some(request_id);
                });
            }
        }
        _ => {
            return Err(ArmError::bad_request(
                "InvalidRequestType",
                format!("The request type '{rt}' is not supported."),
            ));
        }
    }
    if req.status == "Provisioned"
        && !req.request_type.ends_with("Remove")
        && req.request_type != "SelfDeactivate"
    {
        req.accepted_reads_left = state.world.settings.pim_accepted_reads;
    }
    let out = state.request_json(&req);
    state.requests.push(req);
    Ok(out)
}

fn floor_words(d: Duration) -> String {
    let s = d.num_seconds();
    if s % 60 == 0 {
        format!("{} minutes", s / 60)
    } else {
        format!("{s} seconds")
    }
}

/// The eligibility schedule id that allows this activation, if any.
fn find_eligibility(
    state: &State,
    scope: &str,
    input: &ReqInput,
    now: DateTime<Utc>,
) -> Option<String> {
    let linked = input.linked.as_deref().map(last_segment);
    state
        .eligibilities_above(&input.principal_id, &input.role_guid, scope)
        .into_iter()
        .filter_map(|i| state.eligibilities.get(i))
        .filter(|e| {
            e.active(now)
                && e.principal_id.eq_ignore_ascii_case(&input.principal_id)
                && e.role_guid.eq_ignore_ascii_case(&input.role_guid)
                && scope_at_or_above(&e.scope, scope)
        })
        .find(|e| linked.is_none_or(|l| e.name.eq_ignore_ascii_case(l)))
        .map(|e| {
            // Echo the form the client used (bare GUID in Microsoft's example), else the full id.
            match &input.linked {
                Some(l) if !l.contains('/') => e.name.clone(),
                _ => e.schedule_id(),
            }
        })
}

/// Creates the schedule + instance for an accepted activation/assignment.
fn provision(state: &mut State, req: &mut PimRequest, assignment_type: &str, now: DateTime<Utc>) {
    let start = req.start.max(now);
    let len = req.planned_end.map(|e| e - req.start);
    let end = len.map(|l| start + l);
    req.start = start;
    req.planned_end = end;
    let linked_inst = req.linked_eligibility_id.as_deref().and_then(|l| {
        state
            .eligibility_named(last_segment(l))
            .map(|e| e.instance_name.clone())
    });
    let a = Assignment {
        schedule_name: uuid::Uuid::new_v4().to_string(),
        instance_name: uuid::Uuid::new_v4().to_string(),
        scope: req.scope.clone(),
        role_guid: req.role_guid.clone(),
        role_definition_id: req.role_definition_id.clone(),
        principal_id: req.principal_id.clone(),
        principal_type: req.principal_type.clone(),
        assignment_type: assignment_type.to_string(),
        start,
        end,
        request_id: Some(arm_child(
            &req.scope,
            "RoleAssignmentScheduleRequests",
            &req.name,
        )),
        linked_eligibility_id: req.linked_eligibility_id.clone(),
        linked_eligibility_instance_id: linked_inst,
        condition: req.condition.clone(),
        condition_version: req.condition_version.clone(),
        created_on: now,
        updated_on: now,
    };
    req.target_schedule_id = Some(a.schedule_id());
    req.status = if start > now + Duration::seconds(1) {
        "ScheduleCreated".into()
    } else {
        "Provisioned".into()
    };
    state.assignments.push(a);
}

fn request_not_found(name: &str, scope: &str) -> ArmError {
    ArmError::new(
        404,
        "RoleAssignmentScheduleRequestNotFound",
        format!("The role assignment schedule request '{name}' was not found at scope '{scope}'."),
    )
}

/// Index of the request named `name` (case-insensitive) at exactly `scope`.
fn request_at(state: &State, scope: &str, name: &str) -> Option<usize> {
    state.requests.named(name).iter().copied().find(|&i| {
        let r = &state.requests[i];
        r.name.eq_ignore_ascii_case(name) && scope_eq(&r.scope, scope)
    })
}

pub fn get_request(state: &mut State, scope: &str, name: &str) -> Result<Value, ArmError> {
    let Some(idx) = request_at(state, scope, name) else {
        return Err(request_not_found(name, scope));
    };
    let out = state.request_json(&state.requests[idx]);
    if let Some(r) = state.requests.get_mut(idx) {
        r.accepted_reads_left = r.accepted_reads_left.saturating_sub(1);
    }
    Ok(out)
}

pub fn cancel(state: &mut State, scope: &str, name: &str) -> Result<(), ArmError> {
    let Some(idx) = request_at(state, scope, name) else {
        return Err(request_not_found(name, scope));
    };
    let status = state.requests[idx].status.clone();
    if !is_pending(&status) {
        return Err(ArmError::bad_request(
            "RoleAssignmentScheduleRequestCannotBeCanceled",
            format!(
                "The role assignment schedule request '{name}' is in status '{status}'; only pending requests can be canceled."
            ),
        ));
    }
    if status == "ScheduleCreated" {
        let target = state.requests[idx].target_schedule_id.clone();
        if let Some(t) = target {
            let t = last_segment(&t).to_string();
            for seq in state.assignments.by_schedule_name(&t) {
                state.assignments.remove(seq);
            }
        }
    }
    if let Some(r) = state.requests.get_mut(idx) {
        r.status = "Canceled".into();
    }
    Ok(())
}

/// Control API: approve a pending request (by name, any scope).
pub fn approve(state: &mut State, name: &str, now: DateTime<Utc>) -> Result<Value, ArmError> {
    let idx = pending_idx(state, name)?;
    let mut req = state.requests[idx].clone();
    if req.request_type == "SelfExtend" {
        let target = req.target_schedule_id.clone().unwrap_or_default();
        if let Some(&seq) = state
            .assignments
            .by_schedule_name(last_segment(&target))
            .first()
        {
            let end = req.planned_end;
            state.assignments.modify(seq, |a| {
                a.end = end;
                a.updated_on = now;
            });
            req.status = "Provisioned".into();
        } else {
            req.status = "Failed".into();
        }
    } else {
        let exists =
            active_for(state, &req.scope, &req.role_guid, &req.principal_id, now).is_some();
        if exists {
            req.status = "Failed".into();
        } else {
            provision(state, &mut req, "Activated", now);
        }
    }
    let out = state.request_json(&req);
    state.requests.set(idx, req);
    Ok(out)
}

pub fn deny(state: &mut State, name: &str) -> Result<Value, ArmError> {
    let idx = pending_idx(state, name)?;
    if let Some(r) = state.requests.get_mut(idx) {
        r.status = "Denied".into();
    }
    Ok(state.request_json(&state.requests[idx]))
}

fn pending_idx(state: &State, name: &str) -> Result<usize, ArmError> {
    let Some(idx) = state.requests.named(name).first().copied() else {
        return Err(ArmError::new(
            404,
            "NotFound",
            format!("No role assignment schedule request named '{name}'."),
        ));
    };
    let st = &state.requests[idx].status;
    if st != "PendingApproval" && st != "PendingAdminDecision" {
        return Err(ArmError::new(
            409,
            "NotPending",
            format!("Request '{name}' is '{st}', not pending approval."),
        ));
    }
    Ok(idx)
}

/// Control API: end the active instance for (scope, role, principal) out of band.
pub fn revoke(
    state: &mut State,
    scope: &str,
    role: &str,
    principal: &str,
    now: DateTime<Utc>,
) -> usize {
    let scope = normalize_scope(scope);
    let role = last_segment(role).to_string();
    let mut n = 0;
    for seq in state.assignments.for_target(&scope, &role, principal) {
        let hit = state.assignments.get(seq).is_some_and(|a| {
            scope_eq(&a.scope, &scope)
                && a.role_guid.eq_ignore_ascii_case(&role)
                && a.principal_id.eq_ignore_ascii_case(principal)
                && a.active(now)
        });
        if hit {
            state.assignments.remove(seq);
            n += 1;
        }
    }
    n
}

// ---------- $filter ----------

#[derive(Debug, Clone, PartialEq)]
enum Cond {
    AtScope,
    AsTarget,
    AsRequestor,
    AsApprover,
    AssignedTo(String),
    Eq(String, String),
}

fn bad_filter(f: &str) -> ArmError {
    ArmError::bad_request("BadRequest", format!("Invalid $filter: '{f}'."))
}

fn unquote(s: &str) -> String {
    let s = s.trim();
    if s.len() >= 2 && s.starts_with('\'') && s.ends_with('\'') {
        s[1..s.len() - 1].replace("''", "'")
    } else {
        s.to_string()
    }
}

fn split_ci<'a>(s: &'a str, sep: &str) -> Vec<&'a str> {
    let lower = s.to_ascii_lowercase();
    let mut out = Vec::new();
    let mut last = 0;
    let mut i = 0;
    let mut in_quote = false;
    let bytes = lower.as_bytes();
    while i < bytes.len() {
        if bytes[i] == b'\'' {
            in_quote = !in_quote;
        }
        if !in_quote && bytes[i..].starts_with(sep.as_bytes()) {
            out.push(&s[last..i]);
            i += sep.len();
            last = i;
            continue;
        }
        i += 1;
    }
    out.push(&s[last..]);
    out
}

fn strip_parens(t: &str) -> &str {
    let mut t = t.trim();
    // Strip one pair of outer parentheses while the first '(' closes at the very end.
    while t.starts_with('(') && t.ends_with(')') {
        let mut depth = 0usize;
        let mut closes_at_end = false;
        for (i, c) in t.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        closes_at_end = i == t.len() - 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        if !closes_at_end {
            break;
        }
        t = t[1..t.len() - 1].trim();
    }
    t
}

fn parse_filter(f: Option<&str>, allowed: &[&str]) -> Result<Vec<Cond>, ArmError> {
    let Some(f) = f.map(str::trim).filter(|f| !f.is_empty()) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for term in split_ci(f, " and ") {
        let t = strip_parens(term);
        let lower = t.to_ascii_lowercase();
        let c = match lower.as_str() {
            "atscope()" => Cond::AtScope,
            "astarget()" => Cond::AsTarget,
            "asrequestor()" => Cond::AsRequestor,
            "asapprover()" => Cond::AsApprover,
            _ if lower.starts_with("assignedto(") && lower.ends_with(')') => {
                Cond::AssignedTo(unquote(&t["assignedto(".len()..t.len() - 1]))
            }
            _ => {
                let parts = split_ci(t, " eq ");
                if parts.len() != 2 {
                    return Err(bad_filter(f));
                }
                let field = parts[0].trim().to_ascii_lowercase();
                if !allowed.contains(&field.as_str()) {
                    return Err(bad_filter(f));
                }
                Cond::Eq(field, unquote(parts[1]))
            }
        };
        if matches!(c, Cond::AsRequestor | Cond::AsApprover) && !allowed.contains(&"requestorid") {
            return Err(bad_filter(f));
        }
        out.push(c);
    }
    Ok(out)
}

struct Facts<'a> {
    scope: &'a str,
    principal: &'a str,
    role_guid: &'a str,
    status: &'a str,
    requestor: Option<&'a str>,
    schedule: Option<&'a str>,
    pending: bool,
}

fn keep(conds: &[Cond], f: &Facts, path_scope: &str, caller: &Caller, admin: bool) -> bool {
    let at_scope = conds.contains(&Cond::AtScope);
    let scope_ok = scope_at_or_above(f.scope, path_scope)
        || (!at_scope && scope_at_or_above(path_scope, f.scope));
    if !scope_ok {
        return false;
    }
    conds.iter().all(|c| match c {
        Cond::AtScope => true,
        Cond::AsTarget => f.principal.eq_ignore_ascii_case(&caller.oid),
        Cond::AssignedTo(p) => f.principal.eq_ignore_ascii_case(p),
        Cond::AsRequestor => f
            .requestor
            .is_some_and(|r| r.eq_ignore_ascii_case(&caller.oid)),
        Cond::AsApprover => f.pending && admin,
        Cond::Eq(field, v) => match field.as_str() {
            "principalid" => f.principal.eq_ignore_ascii_case(v),
            "roledefinitionid" => f.role_guid.eq_ignore_ascii_case(last_segment(v)),
            "status" => f.status.eq_ignore_ascii_case(v),
            "requestorid" => f.requestor.is_some_and(|r| r.eq_ignore_ascii_case(v)),
            "roleassignmentscheduleid" | "roleeligibilityscheduleid" => f
                .schedule
                .is_some_and(|s| s.eq_ignore_ascii_case(last_segment(v))),
            _ => false,
        },
    })
}

pub fn list_requests(
    state: &State,
    scope: &str,
    filter: Option<&str>,
    caller: &Caller,
) -> Result<Vec<Value>, ArmError> {
    let conds = parse_filter(
        filter,
        &["principalid", "roledefinitionid", "requestorid", "status"],
    )?;
    let admin = state.world.is_admin(&caller.oid, scope);
    Ok(state
        .requests
        .iter()
        .filter(|r| {
            keep(
                &conds,
                &Facts {
                    scope: &r.scope,
                    principal: &r.principal_id,
                    role_guid: &r.role_guid,
                    status: &r.status,
                    requestor: Some(&r.requestor_id),
                    schedule: None,
                    pending: r.status == "PendingApproval",
                },
                scope,
                caller,
                admin,
            )
        })
        .map(|r| state.request_json(r))
        .collect())
}

pub fn list_assignments(
    state: &State,
    scope: &str,
    filter: Option<&str>,
    caller: &Caller,
    instances: bool,
    now: DateTime<Utc>,
) -> Result<Vec<Value>, ArmError> {
    let conds = parse_filter(
        filter,
        &[
            "principalid",
            "roledefinitionid",
            "status",
            "roleassignmentscheduleid",
        ],
    )?;
    // A filter on one principal (what the operator sends) reads only that principal's
    // assignments around the scope; anything else reads them all.
    let principal = conds.iter().find_map(|c| match c {
        Cond::Eq(f, v) if f == "principalid" => Some(v.as_str()),
        Cond::AssignedTo(p) => Some(p.as_str()),
        Cond::AsTarget => Some(caller.oid.as_str()),
        _ => None,
    });
    let candidates: Box<dyn Iterator<Item = &Assignment>> = match principal {
        Some(p) => Box::new(
            state
                .assignments
                .for_principal_around(p, scope, !conds.contains(&Cond::AtScope))
                .into_iter()
                .filter_map(|seq| state.assignments.get(seq)),
        ),
        None => Box::new(
            state
                .assignments
                .around(scope, !conds.contains(&Cond::AtScope))
                .into_iter()
                .filter_map(|seq| state.assignments.get(seq)),
        ),
    };
    Ok(candidates
        .filter(|a| !instances || a.active(now))
        .filter(|a| {
            keep(
                &conds,
                &Facts {
                    scope: &a.scope,
                    principal: &a.principal_id,
                    role_guid: &a.role_guid,
                    status: "Provisioned",
                    requestor: None,
                    schedule: Some(&a.schedule_name),
                    pending: false,
                },
                scope,
                caller,
                false,
            )
        })
        .map(|a| {
            if instances {
                state.instance_json(a)
            } else {
                state.schedule_json(a)
            }
        })
        .collect())
}

pub fn get_assignment(
    state: &State,
    scope: &str,
    name: &str,
    instance: bool,
    now: DateTime<Utc>,
) -> Result<Value, ArmError> {
    let candidates = if instance {
        state.assignments.by_instance_name(name)
    } else {
        state.assignments.by_schedule_name(name)
    };
    candidates
        .into_iter()
        .filter_map(|seq| state.assignments.get(seq))
        .filter(|a| !instance || a.active(now))
        .find(|a| {
            let n = if instance {
                &a.instance_name
            } else {
                &a.schedule_name
            };
            n.eq_ignore_ascii_case(name) && scope_at_or_above(scope, &a.scope)
        })
        .map(|a| {
            if instance {
                state.instance_json(a)
            } else {
                state.schedule_json(a)
            }
        })
        .ok_or_else(|| {
            let what = if instance {
                "role assignment schedule instance"
            } else {
                "role assignment schedule"
            };
            ArmError::new(
                404,
                "NotFound",
                format!("The {what} '{name}' was not found."),
            )
        })
}

pub fn list_eligibilities(
    state: &State,
    scope: &str,
    filter: Option<&str>,
    caller: &Caller,
    instances: bool,
    now: DateTime<Utc>,
) -> Result<Vec<Value>, ArmError> {
    let conds = parse_filter(
        filter,
        &[
            "principalid",
            "roledefinitionid",
            "status",
            "roleeligibilityscheduleid",
        ],
    )?;
    Ok(state
        .eligibilities
        .iter()
        .filter(|e| !instances || e.active(now))
        .filter(|e| {
            keep(
                &conds,
                &Facts {
                    scope: &e.scope,
                    principal: &e.principal_id,
                    role_guid: &e.role_guid,
                    status: "Provisioned",
                    requestor: None,
                    schedule: Some(&e.name),
                    pending: false,
                },
                scope,
                caller,
                false,
            )
        })
        .map(|e| {
            if instances {
                state.eligibility_instance_json(e)
            } else {
                state.eligibility_json(e)
            }
        })
        .collect())
}

pub fn get_eligibility(
    state: &State,
    scope: &str,
    name: &str,
    instance: bool,
) -> Result<Value, ArmError> {
    state
        .eligibilities
        .iter()
        .find(|e| {
            let n = if instance { &e.instance_name } else { &e.name };
            n.eq_ignore_ascii_case(name) && scope_at_or_above(scope, &e.scope)
        })
        .map(|e| {
            if instance {
                state.eligibility_instance_json(e)
            } else {
                state.eligibility_json(e)
            }
        })
        .ok_or_else(|| {
            ArmError::new(
                404,
                "NotFound",
                format!("The role eligibility schedule '{name}' was not found."),
            )
        })
}

// ---------- role management policies ----------

const LAST_MODIFIED: &str = "2026-01-01T00:00:00Z";

fn last_modified_by() -> Value {
    json!({"id": null, "displayName": "Admin", "type": null, "email": null})
}

fn policy_id(p: &EffectivePolicy) -> String {
    arm_child(&p.scope, "roleManagementPolicies", &p.name)
}

fn policy_json(state: &State, p: &EffectivePolicy) -> Value {
    json!({
        "properties": {
            "scope": p.scope,
            "displayName": p.display_name,
            "description": p.description,
            "isOrganizationDefault": false,
            "lastModifiedDateTime": LAST_MODIFIED,
            "lastModifiedBy": last_modified_by(),
            "rules": p.rules,
            "effectiveRules": p.rules,
            "policyProperties": {"scope": state.expanded_scope(&p.scope)},
        },
        "name": p.name,
        "id": policy_id(p),
        "type": "Microsoft.Authorization/RoleManagementPolicies",
    })
}

fn policy_assignment_json(state: &State, scope: &str, p: &EffectivePolicy) -> Value {
    let name = format!("{}_{}", p.name, p.role_guid);
    json!({
        "properties": {
            "scope": scope,
            "roleDefinitionId": role_definition_id(scope, &p.role_guid),
            "policyId": policy_id(p),
            "effectiveRules": p.rules,
            "policyAssignmentProperties": {
                "scope": state.expanded_scope(scope),
                "roleDefinition": state.expanded_role(scope, &p.role_guid),
                "policy": {
                    "id": policy_id(p),
                    "lastModifiedBy": last_modified_by(),
                    "lastModifiedDateTime": null,
                },
            },
        },
        "name": name,
        "id": arm_child(scope, "roleManagementPolicyAssignment", &name),
        "type": "Microsoft.Authorization/RoleManagementPolicyAssignment",
    })
}

fn role_filter(filter: Option<&str>) -> Result<Option<String>, ArmError> {
    let conds = parse_filter(filter, &["roledefinitionid"])?;
    let mut role = None;
    for c in conds {
        match c {
            Cond::Eq(_, v) => role = Some(last_segment(&v).to_string()),
            _ => return Err(bad_filter(filter.unwrap_or_default())),
        }
    }
    Ok(role)
}

fn policies_at(state: &State, scope: &str, role: Option<&str>) -> Vec<EffectivePolicy> {
    match role {
        Some(r) => vec![effective_policy(state, scope, r)],
        None => state
            .world
            .role_management_policies
            .iter()
            .filter(|p| scope_eq(&p.scope, scope))
            .map(|p| effective_policy(state, scope, last_segment(&p.role_definition_id)))
            .collect(),
    }
}

pub fn list_policies(
    state: &State,
    scope: &str,
    filter: Option<&str>,
) -> Result<Vec<Value>, ArmError> {
    let role = role_filter(filter)?;
    Ok(policies_at(state, scope, role.as_deref())
        .iter()
        .map(|p| policy_json(state, p))
        .collect())
}

fn find_policy_by_name(state: &State, scope: &str, name: &str) -> Option<EffectivePolicy> {
    if let Some(p) = state.world.role_management_policies.iter().find(|p| {
        p.name
            .as_deref()
            .is_some_and(|n| n.eq_ignore_ascii_case(name))
    }) {
        return Some(effective_policy(
            state,
            &p.scope,
            last_segment(&p.role_definition_id),
        ));
    }
    state
        .world
        .role_definitions
        .iter()
        .find(|r| default_policy_name(scope, &r.id).eq_ignore_ascii_case(name))
        .map(|r| effective_policy(state, scope, &r.id))
}

pub fn get_policy(state: &State, scope: &str, name: &str) -> Result<Value, ArmError> {
    find_policy_by_name(state, scope, name)
        .map(|p| policy_json(state, &p))
        .ok_or_else(|| {
            ArmError::new(
                404,
                "RoleManagementPolicyNotFound",
                format!("The role management policy '{name}' was not found."),
            )
        })
}

pub fn list_policy_assignments(
    state: &State,
    scope: &str,
    filter: Option<&str>,
) -> Result<Vec<Value>, ArmError> {
    let role = role_filter(filter)?;
    Ok(policies_at(state, scope, role.as_deref())
        .iter()
        .map(|p| policy_assignment_json(state, scope, p))
        .collect())
}

pub fn get_policy_assignment(state: &State, scope: &str, name: &str) -> Result<Value, ArmError> {
    let role = name.rsplit('_').next().unwrap_or_default();
    let p = effective_policy(state, scope, role);
    if state.world.role(role).is_some() && format!("{}_{}", p.name, role).eq_ignore_ascii_case(name)
    {
        Ok(policy_assignment_json(state, scope, &p))
    } else {
        Err(ArmError::new(
            404,
            "RoleManagementPolicyAssignmentNotFound",
            format!("The role management policy assignment '{name}' was not found."),
        ))
    }
}

// ---------- eligibleChildResources, roleDefinitions ----------

pub fn eligible_child_resources(
    state: &State,
    scope: &str,
    filter: Option<&str>,
    get_all: bool,
    caller: &Caller,
    now: DateTime<Utc>,
) -> Result<Vec<Value>, ArmError> {
    let mut types: Vec<String> = Vec::new();
    if let Some(f) = filter.map(str::trim).filter(|f| !f.is_empty()) {
        for term in split_ci(f, " or ") {
            let t = strip_parens(term);
            let parts = split_ci(t, " eq ");
            if parts.len() != 2 || !parts[0].trim().eq_ignore_ascii_case("resourceType") {
                return Err(bad_filter(f));
            }
            types.push(unquote(parts[1]).to_ascii_lowercase());
        }
    }
    let mut children: Vec<(String, String, &'static str)> = Vec::new();
    let kind = scope_kind(scope);
    for sub in &state.world.subscriptions {
        let sub_scope = format!("/subscriptions/{}", sub.id);
        if kind == "tenant" || kind == "managementgroup" {
            children.push((
                sub_scope.clone(),
                sub.display_name.clone().unwrap_or(sub.id.clone()),
                "subscription",
            ));
        }
        if (kind == "subscription" && scope_eq(scope, &sub_scope))
            || ((kind == "tenant" || kind == "managementgroup") && get_all)
        {
            for rg in &sub.resource_groups {
                children.push((
                    format!("{sub_scope}/resourceGroups/{}", rg.name),
                    rg.name.clone(),
                    "resourcegroup",
                ));
            }
        }
    }
    let eligible_at = |child: &str| {
        state.eligibilities.iter().any(|e| {
            e.principal_id.eq_ignore_ascii_case(&caller.oid)
                && e.active(now)
                && (scope_at_or_above(&e.scope, child) || scope_at_or_above(child, &e.scope))
        })
    };
    Ok(children
        .into_iter()
        .filter(|(_, _, t)| types.is_empty() || types.iter().any(|x| x == t))
        .filter(|(id, _, _)| eligible_at(id))
        .map(|(id, name, t)| json!({"name": name, "id": id, "type": t}))
        .collect())
}

fn role_json(scope: &str, r: &super::world::RoleDefinition) -> Value {
    json!({
        "properties": {
            "roleName": r.role_name,
            "type": r.kind,
            "description": r.description,
            "assignableScopes": ["/"],
            "permissions": [{"actions": [], "notActions": [], "dataActions": [], "notDataActions": []}],
            "createdOn": null,
            "updatedOn": null,
            "createdBy": null,
            "updatedBy": null,
        },
        "id": role_definition_id(scope, &r.id),
        "type": "Microsoft.Authorization/roleDefinitions",
        "name": r.id,
    })
}

pub fn list_roles(
    state: &State,
    scope: &str,
    filter: Option<&str>,
) -> Result<Vec<Value>, ArmError> {
    let mut name: Option<String> = None;
    if let Some(f) = filter.map(str::trim).filter(|f| !f.is_empty()) {
        let parts = split_ci(strip_parens(f), " eq ");
        if parts.len() != 2 || !parts[0].trim().eq_ignore_ascii_case("roleName") {
            return Err(bad_filter(f));
        }
        name = Some(unquote(parts[1]));
    }
    Ok(state
        .world
        .role_definitions
        .iter()
        .filter(|r| {
            name.as_ref()
                .is_none_or(|n| r.role_name.eq_ignore_ascii_case(n))
        })
        .map(|r| role_json(scope, r))
        .collect())
}

pub fn get_role(state: &State, scope: &str, guid: &str) -> Result<Value, ArmError> {
    state
        .world
        .role(guid)
        .map(|r| role_json(scope, r))
        .ok_or_else(|| {
            ArmError::new(
                404,
                "RoleDefinitionDoesNotExist",
                format!("The specified role definition with ID '{guid}' does not exist."),
            )
        })
}

/// Formats a duration for messages.
pub fn describe(d: Duration) -> String {
    format_duration(d)
}

/// Used by the state dump.
pub fn fmt(t: DateTime<Utc>) -> String {
    fmt_time(t)
}
