//! Constants in one place: finalizer, field manager, condition types and reasons.

/// Finalizer that keeps a grant until Azure confirms its access is gone.
pub const FINALIZER: &str = "accessgrant.io/revoke";
/// Field manager for server-side apply of status.
pub const FIELD_MANAGER: &str = "accessgrant-operator";
/// Namespace for deterministic (UUIDv5) PIM request names.
pub const REQUEST_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6a2f_1e4b_9c1d_4f0e_8b7a_2d3c_5e6f_7a81);
/// Maximum entries kept in `status.history`.
pub const HISTORY_LIMIT: usize = 20;

/// Condition types.
pub mod condition {
    /// The grant reached its desired state (access in force).
    pub const READY: &str = "Ready";
    /// The spec passed semantic validation.
    pub const SPEC_VALID: &str = "SpecValid";
    /// An AccessPolicy allows the grant.
    pub const POLICY_ALLOWED: &str = "PolicyAllowed";
    /// Azure access is currently in force.
    pub const ACTIVE: &str = "Active";
    /// A transient Azure failure is being retried.
    pub const RETRYING: &str = "Retrying";
    /// The requester comes from a valid stamp of the operator's admission webhook.
    pub const REQUESTER_VERIFIED: &str = "RequesterVerified";
    /// kstatus: the operator is still working towards a settled phase (present only then).
    pub const RECONCILING: &str = "Reconciling";
    /// kstatus: the grant cannot reach its goal without a change (Denied, Failed; present
    /// only then).
    pub const STALLED: &str = "Stalled";
    /// A longer `spec.duration` could not be applied (Azure cannot extend a PIM activation);
    /// present only then.
    pub const EXTENDED: &str = "Extended";
}

/// Reasons (PascalCase) used in status, conditions and events.
pub mod reason {
    /// Spec failed semantic validation.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// No AccessPolicy allows the grant (or one denies a part of it).
    pub const POLICY_DENIED: &str = "PolicyDenied";
    /// Policy allowed.
    pub const POLICY_ALLOWED: &str = "Allowed";
    /// Waiting for the scheduled start.
    pub const SCHEDULED: &str = "Scheduled";
    /// Request sent to Azure.
    pub const REQUESTED: &str = "Requested";
    /// Access granted.
    pub const GRANTED: &str = "Granted";
    /// Access renewed.
    pub const RENEWED: &str = "Renewed";
    /// Existing access adopted after RoleAssignmentExists.
    pub const ADOPTED: &str = "Adopted";
    /// Waiting for an approver.
    pub const PENDING_APPROVAL: &str = "PendingApproval";
    /// An approver denied the request.
    pub const APPROVAL_DENIED: &str = "ApprovalDenied";
    /// Access ended at its end time.
    pub const EXPIRED: &str = "Expired";
    /// Access removed because the grant was deleted.
    pub const DELETED: &str = "Deleted";
    /// Access removed because `spec.suspend` is true.
    pub const SUSPENDED: &str = "Suspended";
    /// Access removed because policy no longer allows it or the spec became invalid.
    pub const WITHDRAWN: &str = "Withdrawn";
    /// Access ended early by someone else.
    pub const REVOKED_OUT_OF_BAND: &str = "RevokedOutOfBand";
    /// Waiting for Azure's minimum active time before deactivation.
    pub const WAITING_MINIMUM_ACTIVE: &str = "ActiveDurationTooShort";
    /// Another live grant covers the same access; removal handed over to it.
    pub const HANDED_OVER: &str = "HandedOver";
    /// Azure throttled the request.
    pub const THROTTLED: &str = "Throttled";
    /// Azure or the network failed transiently.
    pub const TRANSIENT: &str = "AzureUnavailable";
    /// The Azure request was rejected as invalid.
    pub const AZURE_REJECTED: &str = "AzureRejected";
    /// The operator's identity is not allowed to do this in Azure.
    pub const AUTHORIZATION_FAILED: &str = "AuthorizationFailed";
    /// The JIT policy named by the grant does not exist.
    pub const JIT_POLICY_NOT_FOUND: &str = "JitPolicyNotFound";
    /// The JIT policy does not allow the requested port, prefix or duration.
    pub const JIT_REQUEST_REJECTED: &str = "JitRequestRejected";
    /// The window (startTime + duration) elapsed before access could be granted.
    pub const WINDOW_ELAPSED: &str = "WindowElapsed";
    /// The PIM request was canceled.
    pub const CANCELED: &str = "Canceled";
    /// `spec.dryRun`: what would be requested is in `status.dryRun`.
    pub const DRY_RUN: &str = "DryRun";
    /// A break-glass grant was requested.
    pub const BREAK_GLASS: &str = "BreakGlass";
    /// The requester stamp is valid.
    pub const STAMP_VALID: &str = "Stamped";
    /// No requester stamp (created without the admission webhook).
    pub const STAMP_MISSING: &str = "StampMissing";
    /// A requester stamp that fails verification (forged, altered, copied, stale).
    pub const STAMP_INVALID: &str = "StampInvalid";
    /// Our finalizer was missing from a grant that may hold access, and was put back.
    pub const FINALIZER_RESTORED: &str = "FinalizerRestored";
    /// The recorded status said no access was held, but Azure showed it in force.
    pub const STATUS_CONTRADICTED: &str = "StatusContradicted";
    /// Another grant of ours holds the JIT VM port: this one waits for it.
    pub const PORT_HELD: &str = "PortHeld";
    /// `spec.duration` was shortened: access taken away at the new end.
    pub const SHORTENED: &str = "Shortened";
    /// Taking access away failed and is being retried (a history entry, once per failure
    /// streak: what `RevocationFailing` notifications are sent from).
    pub const REVOCATION_FAILING: &str = "RevocationFailing";
}
