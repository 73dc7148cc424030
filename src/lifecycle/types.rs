//! Planner inputs and outputs: what was observed, and what to do.

use super::AzureError;
use crate::api::{AccessGrantStatus, GrantIdentity, Operation, TicketSpec};
use chrono::{DateTime, Duration, Utc};

/// The result of a read: not done, done and nothing there, or found.
#[derive(Clone, Debug, PartialEq, Default)]
pub enum Read<T> {
    /// Not read in this pass.
    #[default]
    NotRead,
    /// Read; it does not exist.
    Missing,
    /// Read; here it is.
    Found(T),
}

impl<T> Read<T> {
    /// True unless `NotRead`.
    pub fn is_read(&self) -> bool {
        !matches!(self, Read::NotRead)
    }
    /// The value, when found.
    pub fn found(&self) -> Option<&T> {
        match self {
            Read::Found(t) => Some(t),
            _ => None,
        }
    }
}

/// What a PIM request's status means for the grant (the Azure adapter classifies Azure's
/// status strings: `azure::models::pim_class`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PimClass {
    /// Still being processed (also any status Azure may add later).
    #[default]
    InProgress,
    /// Waiting for an approver.
    Pending,
    /// Granted and in force.
    Granted,
    /// Removed (success of a removal request).
    Revoked,
    Canceled,
    /// Denied by an approver.
    Denied,
    /// Timed out, failed or invalid.
    Failed,
}

/// A PIM role assignment schedule request as Azure reported it.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct PimRequestView {
    /// Request name (GUID).
    pub name: String,
    /// Full ARM id.
    pub id: Option<String>,
    /// `properties.status`, Azure's word (recorded in status as it is).
    pub status: String,
    /// What that status means.
    pub class: PimClass,
    /// `properties.requestType`, Azure's word.
    pub request_type: String,
    /// The request takes access away (`SelfDeactivate`, `AdminRemove`).
    pub removal: bool,
    /// Start of the schedule asked for / granted.
    pub start: Option<DateTime<Utc>>,
    /// End of the schedule (start + duration), when known.
    pub end: Option<DateTime<Utc>>,
    /// `properties.targetRoleAssignmentScheduleId`.
    pub target_schedule_id: Option<String>,
}

/// The active role assignment schedule instance for (principal, role, scope).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct PimInstanceView {
    /// Instance id.
    pub id: String,
    /// `roleAssignmentScheduleId`.
    pub schedule_id: Option<String>,
    /// `startDateTime`.
    pub start: Option<DateTime<Utc>>,
    /// `endDateTime` (None = permanent).
    pub end: Option<DateTime<Utc>>,
    /// `assignmentType`: `Activated` or `Assigned`.
    pub assignment_type: String,
}

/// The role management policy rules that apply to a request (effective rules).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct PimPolicyView {
    /// `Expiration_EndUser_Assignment.maximumDuration`.
    pub enduser_max_duration: Option<Duration>,
    /// `Expiration_Admin_Assignment.maximumDuration`.
    pub admin_max_duration: Option<Duration>,
    /// `Enablement_EndUser_Assignment.enabledRules`.
    pub enduser_enabled_rules: Vec<String>,
    /// `Enablement_Admin_Assignment.enabledRules`.
    pub admin_enabled_rules: Vec<String>,
    /// `Approval_EndUser_Assignment.setting.isApprovalRequired`.
    pub approval_required: bool,
}

/// A JIT network access policy and its requests, as Azure reported it.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct JitPolicyView {
    /// Configured VMs.
    pub vms: Vec<JitPolicyVm>,
    /// Requests (history and active).
    pub requests: Vec<JitRequestView>,
}

/// A VM configured in a JIT policy.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct JitPolicyVm {
    /// VM id as Azure wrote it.
    pub id: String,
    /// Port rules.
    pub ports: Vec<JitPolicyPort>,
}

/// A port rule of a JIT policy.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct JitPolicyPort {
    /// Port number.
    pub number: u16,
    /// Allowed source prefixes (`*` = any).
    pub allowed_prefixes: Vec<String>,
    /// `maxRequestAccessDuration`.
    pub max_duration: Option<Duration>,
}

/// A JIT request (no id exists; correlate by marker).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct JitRequestView {
    /// Justification (carries our marker).
    pub justification: Option<String>,
    /// `startTimeUtc`.
    pub start: Option<DateTime<Utc>>,
    /// `requestor`.
    pub requestor: Option<String>,
    pub ports: Vec<JitRequestPortView>,
}

/// A port of a JIT request.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct JitRequestPortView {
    /// VM id.
    pub vm_id: String,
    /// Port.
    pub number: u16,
    /// Source prefix.
    pub prefix: Option<String>,
    /// `endTimeUtc`.
    pub end: Option<DateTime<Utc>>,
    /// `status`, Azure's word (`Initiated`, `Revoked`, or off-enum like `Initiating`).
    pub status: String,
    /// The port is closed (`Revoked`): expired, superseded or closed by hand.
    pub closed: bool,
    /// `statusReason`.
    pub status_reason: Option<String>,
}

/// What a successful write answered.
#[derive(Clone, Debug, PartialEq)]
pub enum WriteAnswer {
    /// PIM request PUT answer.
    Pim(PimRequestView),
    /// JIT initiate answer.
    Jit(JitRequestView),
    /// Cancel accepted.
    Canceled,
}

/// The outcome of the Azure write executed in this pass.
#[derive(Clone, Debug, PartialEq)]
pub struct WriteResult {
    pub operation: Operation,
    /// Request id (PIM name or JIT marker).
    pub request_id: String,
    /// Answer or classified error.
    pub outcome: Result<WriteAnswer, AzureError>,
}

/// Everything read from Azure for this pass.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Observed {
    /// The PIM request named by status (intent or current request).
    pub pim_request: Read<PimRequestView>,
    /// The active instance for (principal, role, scope).
    pub pim_instance: Read<PimInstanceView>,
    /// The role management policy for (scope, role).
    pub pim_policy: Read<PimPolicyView>,
    /// The JIT policy (Missing = 404).
    pub jit_policy: Read<JitPolicyView>,
    /// The write executed in this pass, if any.
    pub last_write: Option<WriteResult>,
}

/// A read the planner needs before it can decide.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Need {
    /// GET the PIM request with this name at the recorded scope.
    PimRequest(String),
    /// List schedule instances for the recorded (principal, role, scope).
    PimInstance,
    /// Read the role management policy for the (scope, role).
    PimPolicy,
    /// GET the JIT policy.
    JitPolicy,
}

/// The body of a PIM role assignment schedule request.
#[derive(Clone, Debug, PartialEq)]
pub struct PimRequestBody {
    /// `SelfActivate`, `AdminAssign`, `AdminExtend`, `SelfDeactivate`, `AdminRemove`.
    pub request_type: &'static str,
    /// Target principal.
    pub principal_id: String,
    /// Role definition id.
    pub role_definition_id: String,
    /// Linked eligibility schedule id (SelfActivate).
    pub linked_role_eligibility_schedule_id: Option<String>,
    /// Target schedule id (AdminExtend).
    pub target_role_assignment_schedule_id: Option<String>,
    /// `scheduleInfo.startDateTime`.
    pub start: Option<DateTime<Utc>>,
    /// `scheduleInfo.expiration` as `AfterDuration`.
    pub duration: Option<Duration>,
    pub justification: Option<String>,
    pub ticket: Option<TicketSpec>,
}

/// One port of a JIT initiate request.
#[derive(Clone, Debug, PartialEq)]
pub struct JitInitiatePort {
    /// Port number.
    pub number: u16,
    /// Source prefix (always sent).
    pub allowed_source_address_prefix: String,
    /// When it closes.
    pub end_time_utc: DateTime<Utc>,
}

/// One VM of a JIT initiate request.
#[derive(Clone, Debug, PartialEq)]
pub struct JitInitiateVm {
    /// VM id.
    pub id: String,
    pub ports: Vec<JitInitiatePort>,
}

/// An Azure write.
#[derive(Clone, Debug, PartialEq)]
pub enum AzureWrite {
    /// PUT a role assignment schedule request.
    Pim {
        scope: String,
        /// Request name (deterministic GUID).
        name: String,
        body: PimRequestBody,
        /// Act as this workload identity (SelfActivate/SelfDeactivate), else the operator.
        identity: Option<GrantIdentity>,
    },
    /// POST .../roleAssignmentScheduleRequests/{name}/cancel.
    PimCancel {
        scope: String,
        /// Request name.
        name: String,
        /// Identity that made the request.
        identity: Option<GrantIdentity>,
    },
    /// POST .../jitNetworkAccessPolicies/{policy}/initiate.
    JitInitiate {
        /// Subscription.
        subscription_id: String,
        /// Resource group.
        resource_group: String,
        location: String,
        /// Policy name.
        policy_name: String,
        /// VMs and ports.
        vms: Vec<JitInitiateVm>,
        /// Justification with our marker.
        justification: String,
    },
}

/// A step of a plan, executed in order; an error stops the rest.
#[allow(clippy::large_enum_variant)] // plans are short-lived and hold at most one write
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Add our finalizer (JSON patch test+add).
    AddFinalizer,
    /// Write this status before the Azure call that follows.
    RecordIntent(Box<AccessGrantStatus>),
    /// Call Azure; then observe its answer and plan again.
    Azure(AzureWrite),
    /// Remove our finalizer: Azure confirmed the access is gone.
    RemoveFinalizer,
}

/// An event to emit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedEvent {
    /// Warning (true) or Normal.
    pub warning: bool,
    /// PascalCase reason.
    pub reason: String,
    pub note: String,
}

/// What to do now.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Steps in order.
    pub steps: Vec<Step>,
    /// Status to write at the end (when it changed).
    pub status: AccessGrantStatus,
    /// Events to emit.
    pub events: Vec<PlannedEvent>,
    /// When to look again (always after `now`); None = only on change.
    pub wake_at: Option<DateTime<Utc>>,
    /// Reads needed before deciding; when non-empty, read and plan again.
    pub needs: Vec<Need>,
    /// The write a dry run would send: the executor renders it into `status.dryRun` (request
    /// line and body) before the status is written.
    pub dry_run: Option<AzureWrite>,
}

impl Plan {
    /// The Azure write in this plan, if any.
    pub fn azure_write(&self) -> Option<&AzureWrite> {
        self.steps.iter().find_map(|s| match s {
            Step::Azure(w) => Some(w),
            _ => None,
        })
    }
}
