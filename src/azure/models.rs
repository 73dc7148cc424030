//! ARM wire models for the calls the operator makes (JIT 2020-01-01, PIM 2020-10-01; the
//! OpenAPI specs and Microsoft's examples drive `tests/azure_contract.rs`), and conversions to
//! the planner's views. camelCase on the wire; tolerant on input: unknown fields ignored,
//! every optional field may be absent or `null`, enums are strings (Azure models them as
//! strings and already sends off-enum values such as JIT `Initiating`).

use crate::lifecycle::{
    JitInitiateVm, JitPolicyPort, JitPolicyView, JitPolicyVm, JitRequestPortView, JitRequestView,
    PimClass, PimInstanceView, PimPolicyView, PimRequestBody, PimRequestView,
};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// JIT api-version.
pub const JIT_API_VERSION: &str = "2020-01-01";
/// PIM api-version.
pub const PIM_API_VERSION: &str = "2020-10-01";

/// A list answer: `{"value": [...], "nextLink": "..."}`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct List<T> {
    /// Items.
    #[serde(default = "Vec::new")]
    pub value: Vec<T>,
    /// Absolute URL of the next page.
    #[serde(default)]
    pub next_link: Option<String>,
}

// ---------- PIM ----------

/// Classifies a PIM request status (case-insensitive; unknown = in progress).
pub fn pim_class(status: &str) -> PimClass {
    match status.to_ascii_lowercase().as_str() {
        "provisioned" => PimClass::Granted,
        "pendingapproval" | "pendingapprovalprovisioning" | "pendingadmindecision" => {
            PimClass::Pending
        }
        "revoked" => PimClass::Revoked,
        "canceled" => PimClass::Canceled,
        "denied" | "admindenied" => PimClass::Denied,
        "timedout" | "failed" | "failedasresourceislocked" | "invalid" => PimClass::Failed,
        _ => PimClass::InProgress,
    }
}

/// Whether a PIM `requestType` takes access away.
pub fn is_removal_type(request_type: &str) -> bool {
    request_type.eq_ignore_ascii_case("SelfDeactivate")
        || request_type.eq_ignore_ascii_case("AdminRemove")
}

/// Whether a JIT port `status` means closed.
pub fn jit_port_closed(status: &str) -> bool {
    status.eq_ignore_ascii_case("Revoked")
}

/// `RoleAssignmentScheduleRequest` (request and response).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RoleAssignmentScheduleRequest {
    /// Read-only id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Read-only name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Read-only type.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// Properties.
    #[serde(default)]
    pub properties: RequestProperties,
}

/// `RoleAssignmentScheduleRequestProperties`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RequestProperties {
    /// Read-only scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Role definition id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_definition_id: Option<String>,
    /// Principal id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal_id: Option<String>,
    /// Read-only principal type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal_type: Option<String>,
    /// `SelfActivate`, `AdminAssign`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_type: Option<String>,
    /// Read-only status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Read-only approval id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
    /// Target schedule id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_role_assignment_schedule_id: Option<String>,
    /// Target schedule instance id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_role_assignment_schedule_instance_id: Option<String>,
    /// Linked eligibility schedule id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linked_role_eligibility_schedule_id: Option<String>,
    /// Schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_info: Option<ScheduleInfo>,
    /// Justification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub justification: Option<String>,
    /// Ticket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket_info: Option<TicketInfo>,
    /// ABAC condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// ABAC condition version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition_version: Option<String>,
    /// Read-only requestor object id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requestor_id: Option<String>,
    /// Read-only creation time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_on: Option<String>,
    /// Read-only expanded properties (kept as JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expanded_properties: Option<Value>,
}

/// `scheduleInfo`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleInfo {
    /// Start (ISO 8601).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_date_time: Option<String>,
    /// Expiration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<Expiration>,
}

/// `scheduleInfo.expiration`. Both `endDateTime` and `duration` are always sent (one `null`),
/// as Microsoft's examples do.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Expiration {
    /// `AfterDuration`, `AfterDateTime` or `NoExpiration` (never sent by the operator).
    #[serde(default, rename = "type")]
    pub type_: Option<String>,
    /// End (ISO 8601).
    #[serde(default)]
    pub end_date_time: Option<String>,
    /// Duration (ISO 8601).
    #[serde(default)]
    pub duration: Option<String>,
}

/// `ticketInfo`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TicketInfo {
    /// Ticket number.
    #[serde(default)]
    pub ticket_number: Option<String>,
    /// Ticket system.
    #[serde(default)]
    pub ticket_system: Option<String>,
}

/// Formats a time as Azure does: RFC 3339 UTC with `Z`, fractional seconds only when present.
pub fn fmt_time(t: DateTime<Utc>) -> String {
    let s = t.to_rfc3339_opts(SecondsFormat::Nanos, true);
    // Azure writes as many fractional digits as it has (`21:35:27.91Z`): trim trailing zeros.
    match s.strip_suffix('Z').and_then(|x| x.split_once('.')) {
        Some((whole, frac)) => {
            let frac = frac.trim_end_matches('0');
            if frac.is_empty() {
                format!("{whole}Z")
            } else {
                format!("{whole}.{frac}Z")
            }
        }
        None => s,
    }
}

/// Parses Azure's times (1 to 7 fractional digits, `Z` or an offset).
pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Builds the PUT body for a planner request.
pub fn pim_request_body(b: &PimRequestBody) -> RoleAssignmentScheduleRequest {
    let schedule_info = (b.start.is_some() || b.duration.is_some()).then(|| ScheduleInfo {
        start_date_time: b.start.map(fmt_time),
        expiration: b.duration.map(|d| Expiration {
            type_: Some("AfterDuration".into()),
            end_date_time: None,
            duration: Some(crate::api::duration::format_iso_duration(d)),
        }),
    });
    RoleAssignmentScheduleRequest {
        properties: RequestProperties {
            principal_id: Some(b.principal_id.clone()),
            role_definition_id: Some(b.role_definition_id.clone()),
            request_type: Some(b.request_type.to_string()),
            linked_role_eligibility_schedule_id: b.linked_role_eligibility_schedule_id.clone(),
            target_role_assignment_schedule_id: b.target_role_assignment_schedule_id.clone(),
            schedule_info,
            justification: b.justification.clone(),
            ticket_info: b.ticket.as_ref().map(|t| TicketInfo {
                ticket_number: Some(t.number.clone()),
                ticket_system: Some(t.system.clone()),
            }),
            ..Default::default()
        },
        ..Default::default()
    }
}

impl RoleAssignmentScheduleRequest {
    /// The planner's view of this request.
    pub fn view(&self) -> PimRequestView {
        let p = &self.properties;
        let start = p
            .schedule_info
            .as_ref()
            .and_then(|s| s.start_date_time.as_deref())
            .and_then(parse_time);
        let exp = p.schedule_info.as_ref().and_then(|s| s.expiration.as_ref());
        let end = exp
            .and_then(|e| e.end_date_time.as_deref())
            .and_then(parse_time)
            .or_else(|| {
                let d = exp
                    .and_then(|e| e.duration.as_deref())
                    .and_then(|d| crate::api::duration::parse_iso_duration(d).ok())?;
                start.map(|s| s + d)
            });
        PimRequestView {
            name: self.name.clone().unwrap_or_default(),
            id: self.id.clone(),
            status: p.status.clone().unwrap_or_default(),
            class: pim_class(p.status.as_deref().unwrap_or_default()),
            request_type: p.request_type.clone().unwrap_or_default(),
            removal: p.request_type.as_deref().is_some_and(is_removal_type),
            start,
            end,
            target_schedule_id: p.target_role_assignment_schedule_id.clone(),
        }
    }
}

/// `RoleAssignmentScheduleInstance` (also fits `RoleAssignmentSchedule` and eligibility items).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleItem {
    /// Id.
    #[serde(default)]
    pub id: Option<String>,
    /// Name.
    #[serde(default)]
    pub name: Option<String>,
    /// Type.
    #[serde(default, rename = "type")]
    pub type_: Option<String>,
    /// Properties.
    #[serde(default)]
    pub properties: ScheduleItemProperties,
}

/// Properties of schedules and instances.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleItemProperties {
    /// Scope.
    #[serde(default)]
    pub scope: Option<String>,
    /// Role definition id.
    #[serde(default)]
    pub role_definition_id: Option<String>,
    /// Principal id.
    #[serde(default)]
    pub principal_id: Option<String>,
    /// Principal type.
    #[serde(default)]
    pub principal_type: Option<String>,
    /// Schedule id (instances).
    #[serde(default)]
    pub role_assignment_schedule_id: Option<String>,
    /// Originating request (schedules).
    #[serde(default)]
    pub role_assignment_schedule_request_id: Option<String>,
    /// `Activated` or `Assigned`.
    #[serde(default)]
    pub assignment_type: Option<String>,
    /// `Direct`, `Group`, `Inherited`.
    #[serde(default)]
    pub member_type: Option<String>,
    /// Status.
    #[serde(default)]
    pub status: Option<String>,
    /// Start.
    #[serde(default)]
    pub start_date_time: Option<String>,
    /// End.
    #[serde(default)]
    pub end_date_time: Option<String>,
}

impl ScheduleItem {
    /// True when this item is the Direct assignment of `role` at exactly `scope` for
    /// `principal` (ids compared normalised and case-insensitively, as Terraform does).
    pub fn matches(&self, scope: &str, role: &str, principal: &str) -> bool {
        let p = &self.properties;
        let same = |a: Option<&str>, b: &str| match (
            a.and_then(|a| crate::arm_id::ArmId::parse(a).ok()),
            crate::arm_id::ArmId::parse(b).ok(),
        ) {
            (Some(x), Some(y)) => x == y,
            _ => a.is_some_and(|a| a.eq_ignore_ascii_case(b)),
        };
        same(p.scope.as_deref(), scope)
            && same(p.role_definition_id.as_deref(), role)
            && p.principal_id
                .as_deref()
                .is_some_and(|x| x.eq_ignore_ascii_case(principal))
            && p.member_type
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case("Direct"))
    }

    /// The planner's view of an instance.
    pub fn instance_view(&self) -> PimInstanceView {
        let p = &self.properties;
        PimInstanceView {
            id: self.id.clone().unwrap_or_default(),
            schedule_id: p.role_assignment_schedule_id.clone(),
            start: p.start_date_time.as_deref().and_then(parse_time),
            end: p.end_date_time.as_deref().and_then(parse_time),
            assignment_type: p.assignment_type.clone().unwrap_or_default(),
        }
    }
}

/// `RoleManagementPolicyAssignment` or `RoleManagementPolicy` (rules read from
/// `effectiveRules`, falling back to `rules`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyItem {
    /// Id.
    #[serde(default)]
    pub id: Option<String>,
    /// Name.
    #[serde(default)]
    pub name: Option<String>,
    /// Properties.
    #[serde(default)]
    pub properties: PolicyItemProperties,
}

/// Properties of a role management policy (assignment).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyItemProperties {
    /// Scope.
    #[serde(default)]
    pub scope: Option<String>,
    /// Role definition id (assignments).
    #[serde(default)]
    pub role_definition_id: Option<String>,
    /// Policy id (assignments).
    #[serde(default)]
    pub policy_id: Option<String>,
    /// Rules.
    #[serde(default)]
    pub rules: Option<Vec<Value>>,
    /// Effective rules.
    #[serde(default)]
    pub effective_rules: Option<Vec<Value>>,
}

impl PolicyItem {
    /// Extracts what the planner's pre-check needs from the rule list.
    pub fn view(&self) -> PimPolicyView {
        let rules = self
            .properties
            .effective_rules
            .as_ref()
            .or(self.properties.rules.as_ref());
        let mut v = PimPolicyView::default();
        for r in rules.into_iter().flatten() {
            let id = r.get("id").and_then(Value::as_str).unwrap_or_default();
            let max = || {
                r.get("maximumDuration")
                    .and_then(Value::as_str)
                    .and_then(|d| crate::api::duration::parse_iso_duration(d).ok())
            };
            let enabled = || {
                r.get("enabledRules")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(str::to_string))
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default()
            };
            match id {
                "Expiration_EndUser_Assignment" => v.enduser_max_duration = max(),
                "Expiration_Admin_Assignment" => v.admin_max_duration = max(),
                "Enablement_EndUser_Assignment" => v.enduser_enabled_rules = enabled(),
                "Enablement_Admin_Assignment" => v.admin_enabled_rules = enabled(),
                "Approval_EndUser_Assignment" => {
                    v.approval_required = r
                        .pointer("/setting/isApprovalRequired")
                        .and_then(Value::as_bool)
                        .unwrap_or(false);
                }
                _ => {}
            }
        }
        v
    }
}

// ---------- JIT ----------

/// `JitNetworkAccessPolicy`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JitNetworkAccessPolicy {
    /// Id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Type.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// Kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Location.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Properties.
    #[serde(default)]
    pub properties: JitPolicyProperties,
}

/// Properties of a JIT policy.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JitPolicyProperties {
    /// VMs.
    #[serde(default)]
    pub virtual_machines: Vec<JitPolicyVirtualMachine>,
    /// Requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<Vec<JitNetworkAccessRequest>>,
    /// Provisioning state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioning_state: Option<String>,
}

/// A VM in a JIT policy.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JitPolicyVirtualMachine {
    /// VM id.
    #[serde(default)]
    pub id: String,
    /// Port rules.
    #[serde(default)]
    pub ports: Vec<JitPortRule>,
    /// Public IP (Azure Firewall case).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ip_address: Option<String>,
}

/// A port rule of a JIT policy.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JitPortRule {
    /// Port.
    #[serde(default)]
    pub number: i64,
    /// `TCP`, `UDP` or `*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Single prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_source_address_prefix: Option<String>,
    /// Several prefixes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_source_address_prefixes: Option<Vec<String>>,
    /// `maxRequestAccessDuration` (ISO 8601).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_access_duration: Option<String>,
}

/// `JitNetworkAccessRequest` (202 answer of initiate, and items of `requests`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JitNetworkAccessRequest {
    /// VMs.
    #[serde(default)]
    pub virtual_machines: Vec<JitRequestVirtualMachine>,
    /// Start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time_utc: Option<String>,
    /// Requestor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requestor: Option<String>,
    /// Justification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub justification: Option<String>,
}

/// A VM of a JIT request (and of the initiate body).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JitRequestVirtualMachine {
    /// VM id.
    #[serde(default)]
    pub id: String,
    /// Ports.
    #[serde(default)]
    pub ports: Vec<JitRequestPort>,
}

/// A port of a JIT request (and of the initiate body).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JitRequestPort {
    /// Port.
    #[serde(default)]
    pub number: i64,
    /// End time (ISO 8601).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time_utc: Option<String>,
    /// Single prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_source_address_prefix: Option<String>,
    /// Several prefixes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_source_address_prefixes: Option<Vec<String>>,
    /// Status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Status reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    /// Mapped port (Azure Firewall).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapped_port: Option<i64>,
}

/// `JitNetworkAccessPolicyInitiateRequest`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JitInitiateRequest {
    /// VMs.
    pub virtual_machines: Vec<JitRequestVirtualMachine>,
    /// Justification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub justification: Option<String>,
}

/// Builds the initiate body for a planner request.
pub fn jit_initiate_body(vms: &[JitInitiateVm], justification: &str) -> JitInitiateRequest {
    JitInitiateRequest {
        virtual_machines: vms
            .iter()
            .map(|vm| JitRequestVirtualMachine {
                id: vm.id.clone(),
                ports: vm
                    .ports
                    .iter()
                    .map(|p| JitRequestPort {
                        number: i64::from(p.number),
                        end_time_utc: Some(fmt_time(p.end_time_utc)),
                        allowed_source_address_prefix: Some(
                            p.allowed_source_address_prefix.clone(),
                        ),
                        ..Default::default()
                    })
                    .collect(),
            })
            .collect(),
        justification: Some(justification.to_string()),
    }
}

impl JitNetworkAccessRequest {
    /// The planner's view.
    pub fn view(&self) -> JitRequestView {
        JitRequestView {
            justification: self.justification.clone(),
            start: self.start_time_utc.as_deref().and_then(parse_time),
            requestor: self.requestor.clone(),
            ports: self
                .virtual_machines
                .iter()
                .flat_map(|vm| {
                    vm.ports.iter().map(move |p| JitRequestPortView {
                        vm_id: vm.id.clone(),
                        number: u16::try_from(p.number).unwrap_or(0),
                        prefix: p.allowed_source_address_prefix.clone().or_else(|| {
                            p.allowed_source_address_prefixes
                                .as_ref()
                                .map(|v| v.join(","))
                        }),
                        end: p.end_time_utc.as_deref().and_then(parse_time),
                        status: p.status.clone().unwrap_or_default(),
                        closed: p.status.as_deref().is_some_and(jit_port_closed),
                        status_reason: p.status_reason.clone(),
                    })
                })
                .collect(),
        }
    }
}

impl JitNetworkAccessPolicy {
    /// The planner's view.
    pub fn view(&self) -> JitPolicyView {
        JitPolicyView {
            vms: self
                .properties
                .virtual_machines
                .iter()
                .map(|vm| JitPolicyVm {
                    id: vm.id.clone(),
                    ports: vm
                        .ports
                        .iter()
                        .map(|p| JitPolicyPort {
                            number: u16::try_from(p.number).unwrap_or(0),
                            allowed_prefixes: p
                                .allowed_source_address_prefix
                                .clone()
                                .map(|x| vec![x])
                                .or_else(|| p.allowed_source_address_prefixes.clone())
                                .unwrap_or_default(),
                            max_duration: p
                                .max_request_access_duration
                                .as_deref()
                                .and_then(|d| crate::api::duration::parse_iso_duration(d).ok()),
                        })
                        .collect(),
                })
                .collect(),
            requests: self
                .properties
                .requests
                .iter()
                .flatten()
                .map(JitNetworkAccessRequest::view)
                .collect(),
        }
    }
}
