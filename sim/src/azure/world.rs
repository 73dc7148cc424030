//! The world file: tenants, principals, credentials, subscriptions, VMs, JIT policies, roles,
//! eligibilities, role management policies and settings. Format documented in sim/README.md.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::arm::{is_guid, last_segment, normalize_scope, stable_guid, subscription_of};
use super::time::parse_duration;

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct World {
    #[serde(default)]
    pub tenants: Vec<Tenant>,
    #[serde(default)]
    pub principals: Vec<Principal>,
    #[serde(default)]
    pub federated_credentials: Vec<FederatedCredential>,
    #[serde(default)]
    pub subscriptions: Vec<Subscription>,
    #[serde(default)]
    pub virtual_machines: Vec<VirtualMachine>,
    #[serde(default)]
    pub jit_policies: Vec<JitPolicySeed>,
    #[serde(default)]
    pub role_definitions: Vec<RoleDefinition>,
    #[serde(default)]
    pub eligibilities: Vec<Eligibility>,
    #[serde(default)]
    pub active_assignments: Vec<ActiveAssignmentSeed>,
    #[serde(default)]
    pub role_management_policies: Vec<PolicySeed>,
    #[serde(default)]
    pub settings: Settings,
    /// Lookup tables built by [`World::build_index`] (azure-sim builds them when it starts).
    #[serde(skip)]
    index: Option<Arc<WorldIndex>>,
}

/// Lowercased keys -> position of the first entry with that key.
#[derive(Debug, Default)]
struct WorldIndex {
    principals: HashMap<String, usize>,
    subscriptions: HashMap<String, usize>,
    /// By normalised, lowercased id.
    virtual_machines: HashMap<String, usize>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tenant {
    pub id: String,
    #[serde(default)]
    pub display_name: Option<String>,
    /// Extra names accepted in the token URL instead of the id (e.g. `contoso.onmicrosoft.com`).
    #[serde(default)]
    pub domains: Vec<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
pub enum PrincipalType {
    User,
    ServicePrincipal,
    Group,
}

impl PrincipalType {
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalType::User => "User",
            PrincipalType::ServicePrincipal => "ServicePrincipal",
            PrincipalType::Group => "Group",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Principal {
    pub object_id: String,
    #[serde(rename = "type")]
    pub kind: PrincipalType,
    pub display_name: String,
    /// Tenant id; defaults to the first tenant.
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// Application (client) id used at the token endpoint.
    #[serde(default, alias = "clientId")]
    pub app_id: Option<String>,
    #[serde(default)]
    pub client_secret: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    /// For users: tokens carry `amr: ["pwd","mfa"]` and satisfy MfaRule. Never for SPs.
    #[serde(default)]
    pub mfa: bool,
    /// Scopes at (and below) which this principal may AdminAssign/AdminRemove/AdminExtend.
    #[serde(default)]
    pub admin_scopes: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FederatedCredential {
    #[serde(default)]
    pub name: Option<String>,
    /// objectId, appId or displayName of the principal.
    pub principal: String,
    pub issuer: String,
    pub subject: String,
    #[serde(default = "default_audience")]
    pub audience: String,
}

fn default_audience() -> String {
    "api://AzureADTokenExchange".into()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subscription {
    pub id: String,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub tenant_id: Option<String>,
    #[serde(default)]
    pub resource_groups: Vec<ResourceGroup>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceGroup {
    pub name: String,
    #[serde(default)]
    pub location: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualMachine {
    /// Full ARM id `/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{name}`.
    pub id: String,
    #[serde(default)]
    pub location: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JitPolicySeed {
    pub subscription_id: String,
    pub resource_group: String,
    pub location: String,
    #[serde(default = "default_jit_name")]
    pub name: String,
    #[serde(default)]
    pub kind: Option<String>,
    /// Same JSON shape as Azure's JitNetworkAccessPolicy `properties` (virtualMachines, requests).
    pub properties: Value,
}

fn default_jit_name() -> String {
    "default".into()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RoleDefinition {
    /// The role definition GUID.
    pub id: String,
    pub role_name: String,
    #[serde(default = "default_role_type", rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub description: Option<String>,
}

fn default_role_type() -> String {
    "BuiltInRole".into()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Eligibility {
    /// Eligibility schedule name (GUID); derived from scope/role/principal when absent.
    #[serde(default)]
    pub id: Option<String>,
    /// Eligibility schedule instance name (GUID); derived when absent.
    #[serde(default)]
    pub instance_id: Option<String>,
    pub scope: String,
    /// Full role definition id or bare GUID.
    pub role_definition_id: String,
    pub principal_id: String,
    #[serde(default)]
    pub start_date_time: Option<String>,
    #[serde(default)]
    pub end_date_time: Option<String>,
    #[serde(default)]
    pub condition: Option<String>,
    #[serde(default)]
    pub condition_version: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ActiveAssignmentSeed {
    #[serde(default)]
    pub schedule_id: Option<String>,
    #[serde(default)]
    pub instance_id: Option<String>,
    pub scope: String,
    pub role_definition_id: String,
    pub principal_id: String,
    /// `Assigned` (default) or `Activated`.
    #[serde(default)]
    pub assignment_type: Option<String>,
    #[serde(default)]
    pub start_date_time: Option<String>,
    #[serde(default)]
    pub end_date_time: Option<String>,
    #[serde(default)]
    pub linked_role_eligibility_schedule_id: Option<String>,
    #[serde(default)]
    pub request_id: Option<String>,
    #[serde(default)]
    pub condition: Option<String>,
    #[serde(default)]
    pub condition_version: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicySeed {
    /// Policy name (GUID); derived when absent.
    #[serde(default)]
    pub name: Option<String>,
    pub scope: String,
    /// The role this policy is assigned to (full id or GUID).
    pub role_definition_id: String,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// Azure-shaped rules; merged by `id` over the default rule set (missing `target`s filled in).
    #[serde(default)]
    pub rules: Vec<Value>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Settings {
    /// SelfDeactivate/AdminRemove earlier than this after activation → ActiveDurationTooShort.
    #[serde(default = "default_floor")]
    pub deactivation_floor: String,
    /// Access token lifetime.
    #[serde(default = "default_token_lifetime")]
    pub token_lifetime: String,
    /// Items per page in list answers (nextLink beyond).
    #[serde(default = "default_page_size")]
    pub page_size: usize,
    /// HTTP status of RoleAssignmentRequestExists (Azure has been seen answering 409 and 400).
    #[serde(default = "default_exists_status")]
    pub request_exists_status: u16,
    /// Port status in a fresh initiate answer: `Initiated` (default) or `Initiating`
    /// (the off-enum value of Microsoft's example).
    #[serde(default = "default_initiate_status")]
    pub jit_initiate_status: String,
    /// JIT requests kept per policy (oldest dropped first).
    #[serde(default = "default_retention")]
    pub jit_request_retention: usize,
    /// A provisioned PIM request first reads as `Accepted` in its PUT answer and this many
    /// following GETs by name (exercises the client's polling); 0 = `Provisioned` at once.
    #[serde(default)]
    pub pim_accepted_reads: u32,
    #[serde(default)]
    pub throttle: ThrottleSettings,
}

fn default_floor() -> String {
    "PT5M".into()
}
fn default_token_lifetime() -> String {
    "PT1H".into()
}
fn default_page_size() -> usize {
    100
}
fn default_exists_status() -> u16 {
    409
}
fn default_initiate_status() -> String {
    "Initiated".into()
}
fn default_retention() -> usize {
    100
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            deactivation_floor: default_floor(),
            token_lifetime: default_token_lifetime(),
            page_size: default_page_size(),
            request_exists_status: default_exists_status(),
            jit_initiate_status: default_initiate_status(),
            jit_request_retention: default_retention(),
            pim_accepted_reads: 0,
            throttle: ThrottleSettings::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Bucket {
    pub burst: f64,
    pub per_second: f64,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ThrottleSettings {
    #[serde(default = "default_reads")]
    pub reads: Bucket,
    #[serde(default = "default_writes")]
    pub writes: Bucket,
    #[serde(default = "default_writes")]
    pub deletes: Bucket,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}
fn default_reads() -> Bucket {
    Bucket {
        burst: 250.0,
        per_second: 25.0,
    }
}
fn default_writes() -> Bucket {
    Bucket {
        burst: 200.0,
        per_second: 10.0,
    }
}

impl Default for ThrottleSettings {
    fn default() -> Self {
        ThrottleSettings {
            reads: default_reads(),
            writes: default_writes(),
            deletes: default_writes(),
            enabled: true,
        }
    }
}

/// A world that failed validation.
#[derive(Debug, thiserror::Error)]
pub enum WorldError {
    #[error("world file: {0}")]
    Parse(#[from] serde_norway::Error),
    #[error("world file: {0}")]
    Io(#[from] std::io::Error),
    #[error("world file: {0}")]
    Invalid(String),
}

impl World {
    pub fn from_yaml_str(s: &str) -> Result<World, WorldError> {
        let mut w: World = serde_norway::from_str(s)?;
        w.normalize()?;
        Ok(w)
    }

    pub fn from_file(path: &std::path::Path) -> Result<World, WorldError> {
        let s = std::fs::read_to_string(path)?;
        Self::from_yaml_str(&s)
    }

    fn normalize(&mut self) -> Result<(), WorldError> {
        let bad = |m: String| Err(WorldError::Invalid(m));
        if self.tenants.is_empty() {
            return bad("at least one tenant is required".into());
        }
        let default_tenant = self.tenants[0].id.clone();
        let mut seen = HashSet::new();
        for p in &mut self.principals {
            if !is_guid(&p.object_id) {
                return bad(format!(
                    "principal objectId '{}' is not a GUID",
                    p.object_id
                ));
            }
            if !seen.insert(p.object_id.to_ascii_lowercase()) {
                return bad(format!("duplicate principal objectId '{}'", p.object_id));
            }
            if p.tenant_id.is_none() {
                p.tenant_id = Some(default_tenant.clone());
            }
            if p.kind == PrincipalType::ServicePrincipal {
                p.mfa = false;
            }
            p.admin_scopes = p.admin_scopes.iter().map(|s| normalize_scope(s)).collect();
        }
        for s in &mut self.subscriptions {
            if s.tenant_id.is_none() {
                s.tenant_id = Some(default_tenant.clone());
            }
        }
        for fc in &self.federated_credentials {
            if self.find_principal_any(&fc.principal).is_none() {
                return bad(format!(
                    "federated credential for unknown principal '{}'",
                    fc.principal
                ));
            }
        }
        for rd in &mut self.role_definitions {
            rd.id = last_segment(&rd.id).to_string();
            if !is_guid(&rd.id) {
                return bad(format!("role definition id '{}' is not a GUID", rd.id));
            }
        }
        for vm in &self.virtual_machines {
            let scope = normalize_scope(&vm.id);
            let Some(sub) = subscription_of(&scope) else {
                return bad(format!(
                    "virtual machine id '{}' has no subscription",
                    vm.id
                ));
            };
            if self.subscription(&sub).is_none() {
                return bad(format!("virtual machine '{}': unknown subscription", vm.id));
            }
        }
        for e in &mut self.eligibilities {
            e.scope = normalize_scope(&e.scope);
            let role = last_segment(&e.role_definition_id).to_string();
            if e.id.is_none() {
                e.id = Some(stable_guid(&format!(
                    "elig/{}/{}/{}",
                    e.scope.to_ascii_lowercase(),
                    role,
                    e.principal_id.to_ascii_lowercase()
                )));
            }
            if e.instance_id.is_none() {
                e.instance_id = Some(stable_guid(&format!(
                    "eliginst/{}",
                    e.id.as_deref().unwrap_or_default()
                )));
            }
        }
        for a in &mut self.active_assignments {
            a.scope = normalize_scope(&a.scope);
        }
        for p in &mut self.role_management_policies {
            p.scope = normalize_scope(&p.scope);
            let role = last_segment(&p.role_definition_id).to_string();
            if p.name.is_none() {
                p.name = Some(stable_guid(&format!(
                    "policy/{}/{}",
                    p.scope.to_ascii_lowercase(),
                    role
                )));
            }
            for r in &p.rules {
                if r.get("id").and_then(Value::as_str).is_none() {
                    return bad(format!("policy at {}: every rule needs an id", p.scope));
                }
            }
        }
        for d in [
            &self.settings.deactivation_floor,
            &self.settings.token_lifetime,
        ] {
            if parse_duration(d).is_none() {
                return bad(format!("settings: '{d}' is not an ISO 8601 duration"));
            }
        }
        if self.settings.page_size == 0 {
            return bad("settings.pageSize must be > 0".into());
        }
        Ok(())
    }

    /// Builds the lookup tables of `principal`, `subscription` and `vm`. Lookups stay correct
    /// if the world changes afterwards (a miss or a stale hit falls back to a scan), only slower.
    pub fn build_index(&mut self) {
        let mut ix = WorldIndex::default();
        for (i, p) in self.principals.iter().enumerate() {
            ix.principals
                .entry(p.object_id.to_ascii_lowercase())
                .or_insert(i);
        }
        for (i, s) in self.subscriptions.iter().enumerate() {
            ix.subscriptions
                .entry(s.id.to_ascii_lowercase())
                .or_insert(i);
        }
        for (i, v) in self.virtual_machines.iter().enumerate() {
            ix.virtual_machines
                .entry(normalize_scope(&v.id).to_ascii_lowercase())
                .or_insert(i);
        }
        self.index = Some(Arc::new(ix));
    }

    pub fn principal(&self, object_id: &str) -> Option<&Principal> {
        let hit = self
            .index
            .as_ref()
            .and_then(|ix| ix.principals.get(&object_id.to_ascii_lowercase()))
            .and_then(|&i| self.principals.get(i))
            .filter(|p| p.object_id.eq_ignore_ascii_case(object_id));
        hit.or_else(|| {
            self.principals
                .iter()
                .find(|p| p.object_id.eq_ignore_ascii_case(object_id))
        })
    }

    pub fn principal_by_app(&self, app_id: &str) -> Option<&Principal> {
        self.principals.iter().find(|p| {
            p.app_id
                .as_deref()
                .is_some_and(|a| a.eq_ignore_ascii_case(app_id))
        })
    }

    pub fn find_principal_any(&self, key: &str) -> Option<&Principal> {
        self.principal(key)
            .or_else(|| self.principal_by_app(key))
            .or_else(|| self.principals.iter().find(|p| p.display_name == key))
    }

    pub fn tenant(&self, key: &str) -> Option<&Tenant> {
        self.tenants.iter().find(|t| {
            t.id.eq_ignore_ascii_case(key) || t.domains.iter().any(|d| d.eq_ignore_ascii_case(key))
        })
    }

    pub fn subscription(&self, id: &str) -> Option<&Subscription> {
        let hit = self
            .index
            .as_ref()
            .and_then(|ix| ix.subscriptions.get(&id.to_ascii_lowercase()))
            .and_then(|&i| self.subscriptions.get(i))
            .filter(|s| s.id.eq_ignore_ascii_case(id));
        hit.or_else(|| {
            self.subscriptions
                .iter()
                .find(|s| s.id.eq_ignore_ascii_case(id))
        })
    }

    pub fn role(&self, guid: &str) -> Option<&RoleDefinition> {
        self.role_definitions
            .iter()
            .find(|r| r.id.eq_ignore_ascii_case(guid))
    }

    pub fn vm(&self, id: &str) -> Option<&VirtualMachine> {
        let n = normalize_scope(id);
        let hit = self
            .index
            .as_ref()
            .and_then(|ix| ix.virtual_machines.get(&n.to_ascii_lowercase()))
            .and_then(|&i| self.virtual_machines.get(i))
            .filter(|v| normalize_scope(&v.id).eq_ignore_ascii_case(&n));
        hit.or_else(|| {
            self.virtual_machines
                .iter()
                .find(|v| normalize_scope(&v.id).eq_ignore_ascii_case(&n))
        })
    }

    /// Whether `principal` is admin at `scope` (an adminScope at or above it).
    pub fn is_admin(&self, principal: &str, scope: &str) -> bool {
        self.principal(principal).is_some_and(|p| {
            p.admin_scopes
                .iter()
                .any(|a| super::arm::scope_at_or_above(a, scope))
        })
    }
}

/// The default rule set (all 17 rules of Microsoft's example, permissive values): activation up
/// to PT8H, nothing else required.
pub fn default_rules() -> Vec<Value> {
    let target = |caller: &str, level: &str| {
        json!({"caller": caller, "operations": ["All"], "level": level,
               "targetObjects": null, "inheritableSettings": null, "enforcedSettings": null})
    };
    let notif = |id: &str, recipient: &str, caller: &str, level: &str| {
        json!({"notificationType": "Email", "recipientType": recipient,
               "isDefaultRecipientsEnabled": true, "notificationLevel": "All",
               "notificationRecipients": [], "id": id,
               "ruleType": "RoleManagementPolicyNotificationRule", "target": target(caller, level)})
    };
    vec![
        json!({"enabledRules": [], "id": "Enablement_Admin_Eligibility",
               "ruleType": "RoleManagementPolicyEnablementRule", "target": target("Admin", "Eligibility")}),
        json!({"isExpirationRequired": true, "maximumDuration": "P365D", "id": "Expiration_Admin_Eligibility",
               "ruleType": "RoleManagementPolicyExpirationRule", "target": target("Admin", "Eligibility")}),
        notif(
            "Notification_Admin_Admin_Eligibility",
            "Admin",
            "Admin",
            "Eligibility",
        ),
        notif(
            "Notification_Requestor_Admin_Eligibility",
            "Requestor",
            "Admin",
            "Eligibility",
        ),
        notif(
            "Notification_Approver_Admin_Eligibility",
            "Approver",
            "Admin",
            "Eligibility",
        ),
        json!({"enabledRules": [], "id": "Enablement_Admin_Assignment",
               "ruleType": "RoleManagementPolicyEnablementRule", "target": target("Admin", "Assignment")}),
        json!({"isExpirationRequired": false, "maximumDuration": "P180D", "id": "Expiration_Admin_Assignment",
               "ruleType": "RoleManagementPolicyExpirationRule", "target": target("Admin", "Assignment")}),
        notif(
            "Notification_Admin_Admin_Assignment",
            "Admin",
            "Admin",
            "Assignment",
        ),
        notif(
            "Notification_Requestor_Admin_Assignment",
            "Requestor",
            "Admin",
            "Assignment",
        ),
        notif(
            "Notification_Approver_Admin_Assignment",
            "Approver",
            "Admin",
            "Assignment",
        ),
        json!({"setting": {"isApprovalRequired": false, "isApprovalRequiredForExtension": false,
                           "isRequestorJustificationRequired": true, "approvalMode": "SingleStage",
                           "approvalStages": [{"approvalStageTimeOutInDays": 1,
                               "isApproverJustificationRequired": true, "escalationTimeInMinutes": 0,
                               "primaryApprovers": [], "isEscalationEnabled": false,
                               "escalationApprovers": null}]},
               "id": "Approval_EndUser_Assignment", "ruleType": "RoleManagementPolicyApprovalRule",
               "target": target("EndUser", "Assignment")}),
        json!({"isEnabled": false, "claimValue": "", "id": "AuthenticationContext_EndUser_Assignment",
               "ruleType": "RoleManagementPolicyAuthenticationContextRule",
               "target": target("EndUser", "Assignment")}),
        json!({"enabledRules": [], "id": "Enablement_EndUser_Assignment",
               "ruleType": "RoleManagementPolicyEnablementRule", "target": target("EndUser", "Assignment")}),
        json!({"isExpirationRequired": true, "maximumDuration": "PT8H", "id": "Expiration_EndUser_Assignment",
               "ruleType": "RoleManagementPolicyExpirationRule", "target": target("EndUser", "Assignment")}),
        notif(
            "Notification_Admin_EndUser_Assignment",
            "Admin",
            "EndUser",
            "Assignment",
        ),
        notif(
            "Notification_Requestor_EndUser_Assignment",
            "Requestor",
            "EndUser",
            "Assignment",
        ),
        notif(
            "Notification_Approver_EndUser_Assignment",
            "Approver",
            "EndUser",
            "Assignment",
        ),
    ]
}

/// Merges world rules over the defaults by `id` (fields of the world rule win; a missing
/// `target`/`ruleType` keeps the default's).
pub fn merge_rules(overrides: &[Value]) -> Vec<Value> {
    let mut rules = default_rules();
    for o in overrides {
        let Some(id) = o.get("id").and_then(Value::as_str) else {
            continue;
        };
        if let Some(existing) = rules
            .iter_mut()
            .find(|r| r.get("id").and_then(Value::as_str) == Some(id))
        {
            if let (Some(dst), Some(src)) = (existing.as_object_mut(), o.as_object()) {
                for (k, v) in src {
                    dst.insert(k.clone(), v.clone());
                }
            }
        } else {
            rules.push(o.clone());
        }
    }
    rules
}
