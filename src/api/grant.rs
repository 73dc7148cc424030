//! The `AccessGrant` custom resource: one request for temporary Azure access.
// kube's `printcolumn(...)` repeats `type_ = ...` per column, which clippy mistakes for
// duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use super::duration::IsoDuration;
use chrono::{DateTime, Utc};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Temporary Azure access, declared. The operator requests it from Azure (Defender for Cloud
/// just-in-time VM access, or a PIM role assignment), renews it while `renewal` allows, records
/// its end, and takes it away when the grant is deleted or suspended.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "accessgrant.io",
    version = "v1alpha1",
    kind = "AccessGrant",
    namespaced,
    shortname = "ag",
    category = "accessgrant",
    status = "AccessGrantStatus",
    cel,
    doc = "Temporary Azure access (Defender JIT VM ports or a PIM role) declared as a Kubernetes object.",
    printcolumn(
        name = "Type",
        type_ = "string",
        json_path = ".status.summary.type",
        description = "JIT or PIM"
    ),
    printcolumn(
        name = "Target",
        type_ = "string",
        json_path = ".status.summary.target",
        description = "What the access is to (short form)"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Where the grant is in its lifecycle"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.reason",
        description = "Why it is in that phase"
    ),
    printcolumn(
        name = "Expires",
        type_ = "string",
        json_path = ".status.endTime",
        description = "When the granted access ends"
    ),
    printcolumn(
        name = "Requested-By",
        type_ = "string",
        json_path = ".status.requestedBy",
        description = "Verified Kubernetes user who asked for it"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.jit) != has(self.pim)").message("exactly one of spec.jit or spec.pim must be set").reason(Reason::FieldValueInvalid),
    validation = Rule::new("has(self.jit) == has(oldSelf.jit) && has(self.pim) == has(oldSelf.pim)").message("the access target (spec.jit or spec.pim) cannot be added or removed after creation; create a new AccessGrant").reason(Reason::FieldValueForbidden),
    validation = Rule::new("!has(self.renewal) || !has(self.startTime) || !has(self.renewal.until) || self.renewal.until > self.startTime").message("spec.renewal.until must be after spec.startTime").reason(Reason::FieldValueInvalid)
)]
pub struct AccessGrantSpec {
    /// Why the access is needed, in words an auditor understands (sent to Azure as the
    /// request's justification). An AccessPolicy or the Azure role's settings may require it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 500))]
    pub justification: Option<String>,

    /// How long the access lasts, as an ISO 8601 duration (`PT30M`, `PT1H`, `P1D`). Years and
    /// months are not accepted. AccessPolicy and the Azure policy may cap it.
    #[x_kube(validation = Rule::new(r"self.matches('^P(\\d+W)?(\\d+D)?(T(\\d+H)?(\\d+M)?(\\d+S)?)?$') && self != 'P' && !self.endsWith('T')").message("duration must be an ISO 8601 duration without years or months, e.g. PT1H or P1D").reason(Reason::FieldValueInvalid))]
    pub duration: IsoDuration,

    /// When the access should start (RFC 3339, UTC). Omit to start now. The access window is
    /// `startTime` + `duration`: if the operator only gets to it late, the remainder is granted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<DateTime<Utc>>,

    /// Keep the access alive by renewing it before it ends, up to `until`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal: Option<RenewalSpec>,

    /// `true` takes the access away now (or keeps it from starting) while keeping the object
    /// for the record. Setting it back to `false` does not re-grant a finished request: change
    /// the spec to ask again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend: Option<bool>,

    /// A change or incident ticket, sent to PIM as `ticketInfo` and shown in JIT's justification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<TicketSpec>,

    /// When the Azure policy allows less than `duration`, `true` requests the allowed maximum
    /// (and says so in the status) instead of failing. Default `false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clamp_duration: Option<bool>,

    /// Break-glass: emergency access that an AccessPolicy's `breakGlass` section may allow
    /// without a ticket. It always needs a justification, emits a Warning event, an audit line
    /// and a metric, cannot be renewed, and is capped by `breakGlass.maxDuration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub break_glass: Option<bool>,

    /// `true` runs validation, the AccessPolicy guard and the Azure policy pre-check (reads
    /// only) and records in `status.dryRun` what would be requested; nothing is written to
    /// Azure. Setting it on a grant that holds access takes the access away.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,

    /// Defender for Cloud just-in-time network access: open VM ports from given source
    /// addresses. Exactly one of `jit` or `pim`. Immutable once created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.jit is immutable; create a new AccessGrant for another target").reason(Reason::FieldValueForbidden))]
    pub jit: Option<JitTarget>,

    /// Azure PIM role access: activate an eligible role or assign an active one for a time.
    /// Exactly one of `jit` or `pim`. Immutable once created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.pim is immutable; create a new AccessGrant for another target").reason(Reason::FieldValueForbidden))]
    pub pim: Option<PimTarget>,
}

/// Renewal: the operator extends the access before it ends, until `until`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RenewalSpec {
    /// Stop renewing at this instant (RFC 3339, UTC); the last renewal ends no later than this.
    pub until: DateTime<Utc>,
    /// How long before the end to renew (ISO 8601, default `PT5M`). PIM activations cannot
    /// overlap, so they are re-activated right after they end instead (a short gap is recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(r"self.matches('^P(\\d+W)?(\\d+D)?(T(\\d+H)?(\\d+M)?(\\d+S)?)?$') && self != 'P' && !self.endsWith('T')").message("renewal.before must be an ISO 8601 duration without years or months, e.g. PT5M").reason(Reason::FieldValueInvalid))]
    pub before: Option<IsoDuration>,
}

/// A ticket reference.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TicketSpec {
    /// The ticketing system, e.g. `ServiceNow` or `Jira`.
    #[schemars(length(max = 100))]
    pub system: String,
    /// The ticket number, e.g. `INC-1234`.
    #[schemars(length(max = 100))]
    pub number: String,
}

/// Which VM ports to open through a Defender for Cloud JIT network access policy.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct JitTarget {
    /// Azure subscription id (a GUID) that holds the JIT policy.
    #[schemars(length(max = 36))]
    pub subscription_id: String,
    /// Resource group of the JIT policy.
    #[schemars(length(max = 90))]
    pub resource_group: String,
    /// Azure region of the JIT policy (the VM's region), e.g. `westeurope`.
    #[schemars(length(max = 64))]
    pub location: String,
    /// Name of the JIT network access policy (portal-made policies are named `default`).
    #[serde(default = "default_policy_name")]
    #[schemars(length(max = 260))]
    pub policy_name: String,
    /// The VMs and ports to open.
    #[schemars(length(min = 1, max = 20))]
    pub virtual_machines: Vec<JitVirtualMachine>,
}

fn default_policy_name() -> String {
    "default".into()
}

/// One VM and the ports to open on it.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct JitVirtualMachine {
    /// Full ARM resource id of the VM
    /// (`/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{name}`).
    #[schemars(length(max = 512))]
    pub id: String,
    /// Ports to open on this VM.
    #[schemars(length(min = 1, max = 20))]
    pub ports: Vec<JitPort>,
}

/// One port and the source addresses allowed to reach it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.allowedSourceAddressPrefix) && has(self.allowedSourceAddressPrefixes))").message("set at most one of allowedSourceAddressPrefix or allowedSourceAddressPrefixes").reason(Reason::FieldValueInvalid))]
pub struct JitPort {
    /// TCP/UDP port number, 1 to 65535. It must be configured in the JIT policy for this VM.
    #[x_kube(validation = Rule::new("self >= 1 && self <= 65535").message("port number must be between 1 and 65535").reason(Reason::FieldValueInvalid))]
    pub number: i32,
    /// One source address or CIDR allowed to connect (e.g. `203.0.113.7` or `10.0.0.0/24`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub allowed_source_address_prefix: Option<String>,
    /// Several source addresses or CIDRs allowed to connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 20))]
    pub allowed_source_address_prefixes: Option<Vec<String>>,
}

/// How the PIM role access is obtained.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum PimMode {
    /// `SelfActivate`: the principal activates a role it is eligible for. The principal is the
    /// operator's own identity, or `identity` when set.
    #[default]
    Activate,
    /// `AdminAssign`: the operator (an admin at the scope) assigns the role to `principalId`
    /// for the duration.
    Assign,
}

/// An Azure PIM role at a scope, for a principal.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PimTarget {
    /// `Activate` (SelfActivate an eligible role) or `Assign` (AdminAssign an active role for
    /// the duration).
    pub mode: PimMode,
    /// ARM scope of the role: `/subscriptions/{sub}`, `/subscriptions/{sub}/resourceGroups/{rg}`,
    /// a resource id, or `/providers/Microsoft.Management/managementGroups/{mg}`.
    #[schemars(length(max = 512))]
    pub scope: String,
    /// Full role definition id:
    /// `/subscriptions/{sub}/providers/Microsoft.Authorization/roleDefinitions/{guid}`.
    #[schemars(length(max = 512))]
    pub role_definition_id: String,
    /// Object id (GUID) of the principal that gets the role. For `Activate` it must be the
    /// principal the operator acts as (its own identity or `identity`).
    #[schemars(length(max = 36))]
    pub principal_id: String,
    /// For `Activate`: the eligibility schedule to activate (its full ARM id). Optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub linked_role_eligibility_schedule_id: Option<String>,
    /// For `Activate`: act as this workload identity (a ServiceAccount of the grant's namespace
    /// federated with an Entra app) instead of the operator's own identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<GrantIdentity>,
}

/// A workload identity to act as: the ServiceAccount's token is exchanged for an Entra token.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct GrantIdentity {
    /// ServiceAccount in the grant's namespace whose token is exchanged (audience
    /// `api://AzureADTokenExchange`).
    #[schemars(length(max = 253))]
    pub service_account_name: String,
    /// Client (application) id of the Entra app that trusts that ServiceAccount.
    #[schemars(length(max = 36))]
    pub client_id: String,
    /// Entra tenant id of that app (GUID).
    #[schemars(length(max = 36))]
    pub tenant_id: String,
}

/// Where the grant is in its lifecycle.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Phase {
    /// Accepted by the operator, not yet requested from Azure.
    #[default]
    Pending,
    /// Waiting for `spec.startTime`.
    Scheduled,
    /// Asked Azure; waiting for its answer.
    Requesting,
    /// Azure waits for an approver (PIM approval).
    PendingApproval,
    /// Access is granted and in force until `status.endTime`.
    Active,
    /// Access is being renewed.
    Renewing,
    /// Access is being taken away (delete or suspend); may wait for Azure's minimum active time.
    Revoking,
    /// Access ended at its end time.
    Expired,
    /// Access was taken away before its end (delete, suspend, policy change, or out of band).
    Revoked,
    /// Refused by an AccessPolicy or by an approver; Azure was not asked or said no.
    Denied,
    /// Could not be granted (invalid spec, an Azure policy rule, or an Azure error).
    Failed,
    /// `spec.dryRun`: checked and recorded in `status.dryRun`; nothing was requested.
    DryRun,
}

impl AccessGrantStatus {
    /// Whether Azure access may exist for a grant with this status (or a request is in
    /// flight): an intent is recorded, or the phase is one that holds or seeks access.
    pub fn may_hold_access(&self) -> bool {
        self.intent.is_some()
            || matches!(
                self.phase,
                Phase::Requesting
                    | Phase::PendingApproval
                    | Phase::Active
                    | Phase::Renewing
                    | Phase::Revoking
            )
    }
}

impl Phase {
    /// Terminal phases are left only when the spec changes (a new generation).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Phase::Expired | Phase::Revoked | Phase::Denied | Phase::Failed | Phase::DryRun
        )
    }
}

/// What the operator observed and did. Written only by the operator.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AccessGrantStatus {
    /// Lifecycle phase.
    #[serde(default)]
    pub phase: Phase,
    /// Machine-readable reason for the phase (PascalCase), e.g. `Granted`, `ExpirationRule`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Azure's own words where Azure gave them: PIM request status or JIT statusReason
    /// (`Expired`, `NewerRequestInitiated`, `UserRequested`), or the failed policy rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    /// One human sentence about the current state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The Kubernetes user who asked for the grant (the first verified admission stamp). It
    /// stays when someone else edits or suspends the grant: that is `editedBy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    /// The verified user who made the current spec, when not `requestedBy` (an edit, a
    /// suspension). Each edit is also a history entry `Edited` naming its author.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_by: Option<String>,
    /// The verified requester: who created (or last changed the spec of) the grant, their
    /// groups and any GitOps provenance, from the operator-signed admission stamp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requester: Option<RequesterStatus>,
    /// What a `spec.dryRun` grant would request from Azure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<DryRunStatus>,
    /// Short form of the grant for `kubectl get` columns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<GrantSummary>,
    /// When the access actually started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<DateTime<Utc>>,
    /// When the granted access ends (or ended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<DateTime<Utc>>,
    /// How many times the access was renewed.
    #[serde(default)]
    pub renewals: u32,
    /// Current attempt number; every Azure request of an attempt uses ids derived from it.
    #[serde(default)]
    pub attempt: u32,
    /// The generation of the spec the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The target as it was when access was first requested: revocation works from this even
    /// when the spec no longer validates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<RecordedTarget>,
    /// An Azure write recorded before it is sent, so a crash never loses track of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<Intent>,
    /// Transient Azure failures (throttling, outages): when the next try is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryState>,
    /// JIT details as Azure reported them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jit: Option<JitStatus>,
    /// PIM details as Azure reported them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pim: Option<PimStatus>,
    /// Standard conditions: `Ready`, `SpecValid`, `PolicyAllowed`, `Active`, `Retrying`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The last 20 transitions, oldest first: an audit trail that outlives Kubernetes events.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryEntry>,
}

/// The verified requester (from a valid admission stamp).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RequesterStatus {
    /// Kubernetes user name (`alice@example.com`, `system:serviceaccount:argocd:argocd-application-controller`).
    pub username: String,
    /// The user's groups at the time of the request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// When the admission webhook stamped the request.
    pub stamped_at: DateTime<Utc>,
    /// GitOps provenance found on the object at admission (Argo CD or Flux), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<Provenance>,
}

/// Where a GitOps tool says the object came from (labels and annotations at admission time;
/// they are the tool's claims, bound to the request by the operator's signature).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Provenance {
    /// `ArgoCD` or `Flux`.
    pub tool: String,
    /// The Argo CD Application, or the Flux Kustomization / HelmRelease (`namespace/name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application: Option<String>,
    /// The source revision (commit, chart version) when the tool records one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
}

/// What a dry run would have sent to Azure.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DryRunStatus {
    /// The operation that would be sent.
    pub operation: Operation,
    /// HTTP method and ARM path (without host) of the request.
    pub request: String,
    /// The JSON body that would be sent.
    pub body: String,
    /// When the access would end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<DateTime<Utc>>,
    /// When the dry run was evaluated.
    pub evaluated_at: DateTime<Utc>,
}

/// Short form of the grant for printer columns.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct GrantSummary {
    /// `JIT` or `PIM`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short target: `vm1:22,3389` or `Reader@rg1`.
    pub target: String,
}

/// The Azure target recorded in status when first requested.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RecordedTarget {
    /// JIT target (normalised ids).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jit: Option<JitTarget>,
    /// PIM target (normalised ids).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pim: Option<PimTarget>,
}

/// The kind of Azure write.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    /// PIM `SelfActivate`.
    SelfActivate,
    /// PIM `AdminAssign`.
    AdminAssign,
    /// PIM `AdminExtend` of the running assignment.
    AdminExtend,
    /// PIM `SelfDeactivate`.
    SelfDeactivate,
    /// PIM `AdminRemove`.
    AdminRemove,
    /// PIM cancel of a pending request.
    Cancel,
    /// JIT initiate that opens (or renews) access.
    JitInitiate,
    /// JIT initiate with a minimal window that supersedes ours, to close it early.
    JitClose,
}

impl Operation {
    /// Stable lower-case name used in deterministic request ids and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::SelfActivate => "selfactivate",
            Operation::AdminAssign => "adminassign",
            Operation::AdminExtend => "adminextend",
            Operation::SelfDeactivate => "selfdeactivate",
            Operation::AdminRemove => "adminremove",
            Operation::Cancel => "cancel",
            Operation::JitInitiate => "jitinitiate",
            Operation::JitClose => "jitclose",
        }
    }

    /// Whether the operation takes access away.
    pub fn is_removal(self) -> bool {
        matches!(
            self,
            Operation::SelfDeactivate
                | Operation::AdminRemove
                | Operation::Cancel
                | Operation::JitClose
        )
    }
}

/// An Azure write, recorded before it is sent.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Intent {
    /// What is being asked.
    pub operation: Operation,
    /// Attempt number the ids are derived from.
    pub attempt: u32,
    /// PIM request name (a deterministic GUID), or the JIT justification marker.
    pub request_id: String,
    /// When the intent was recorded.
    pub recorded_at: DateTime<Utc>,
    /// The end time asked for (access writes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_end: Option<DateTime<Utc>>,
}

/// Transient failure bookkeeping, persisted so backoff survives restarts.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RetryState {
    /// Consecutive transient failures.
    pub failures: u32,
    /// No Azure write before this instant.
    pub not_before: DateTime<Utc>,
    /// Error category of the last failure (`Throttled`, `Transient`, `Auth`).
    pub category: String,
}

/// JIT request state as Azure reported it.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct JitStatus {
    /// The justification marker that identifies our request (JIT requests have no id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marker: Option<String>,
    /// `startTimeUtc` of our current request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_start_time: Option<DateTime<Utc>>,
    /// Who Azure recorded as requestor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requestor: Option<String>,
    /// Per port state.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<JitPortStatus>,
}

/// One opened port as Azure reported it.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct JitPortStatus {
    /// VM resource id.
    pub vm_id: String,
    /// Port number.
    pub number: i32,
    /// Source prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_source_address_prefix: Option<String>,
    /// `Initiated` or `Revoked` (or another value Azure sends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// `UserRequested`, `Expired` or `NewerRequestInitiated`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    /// When the port closes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time_utc: Option<DateTime<Utc>>,
}

/// PIM request state as Azure reported it.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PimStatus {
    /// Name (GUID) of our latest schedule request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_name: Option<String>,
    /// Full ARM id of that request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Its PIM status (`Provisioned`, `PendingApproval`, `Revoked`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// The role assignment schedule it created or changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_schedule_id: Option<String>,
    /// The schedule instance in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_instance_id: Option<String>,
    /// True when the access existed before this grant asked (RoleAssignmentExists) and was
    /// adopted rather than created.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopted: bool,
}

/// A standard Kubernetes condition (`metav1.Condition` shape).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// PascalCase reason.
    pub reason: String,
    /// Human message.
    #[serde(default)]
    pub message: String,
    /// When status, type or reason last changed.
    pub last_transition_time: DateTime<Utc>,
    /// Generation the condition was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// One audit trail entry.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    /// When it happened.
    pub time: DateTime<Utc>,
    /// What happened (PascalCase), e.g. `Requested`, `Active`, `Renewed`, `Expired`.
    pub event: String,
    /// Details: Azure ids and statuses.
    #[serde(default)]
    pub detail: String,
}
