//! What went wrong with an Azure call, in the planner's terms. The Azure adapter
//! (`azure::error::classify`) turns ARM's answers into these classes; the planner decides what
//! each class means for the grant (`lifecycle::failure`).

/// A failed Azure call, classified.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AzureError {
    /// 429: wait at least `retry_after_secs`.
    #[error("throttled by Azure ({code}); retry after {retry_after_secs}s")]
    Throttled {
        /// ARM's error code (often `TooManyRequests`).
        code: String,
        /// Seconds from `Retry-After` (0 when absent).
        retry_after_secs: u64,
    },
    /// 5xx, timeouts, connection failures: retry with backoff.
    #[error("Azure is unavailable ({code}): {message}")]
    Transient {
        /// HTTP status, if any.
        status: Option<u16>,
        /// Error code or a short description.
        code: String,
        message: String,
    },
    /// 400 `RoleAssignmentRequestPolicyValidationFailed`: the named rules failed.
    #[error("Azure policy rules failed: {}", rules.join(", "))]
    PolicyRules {
        /// Rule names, e.g. `ExpirationRule`.
        rules: Vec<String>,
        /// Azure's message.
        message: String,
    },
    /// The active assignment already exists.
    #[error("RoleAssignmentExists: {message}")]
    RoleAssignmentExists {
        /// Azure's message.
        message: String,
    },
    /// A request with this name already exists (a replay of our own PUT).
    #[error("RoleAssignmentRequestExists: {message}")]
    RequestExists {
        /// Azure's message.
        message: String,
    },
    /// Another pending request exists for the same principal, role and scope.
    #[error("PendingRoleAssignmentRequest: {message}")]
    PendingRequestExists {
        /// Azure's message.
        message: String,
    },
    /// Removal within Azure's minimum active time (5 minutes).
    #[error("ActiveDurationTooShort: {message}")]
    ActiveDurationTooShort {
        /// Azure's message.
        message: String,
    },
    /// Nothing to remove.
    #[error("RoleAssignmentDoesNotExist: {message}")]
    DoesNotExist {
        /// Azure's message.
        message: String,
    },
    /// 404.
    #[error("not found ({code}): {message}")]
    NotFound {
        /// Error code.
        code: String,
        message: String,
    },
    /// 403.
    #[error("forbidden ({code}): {message}")]
    Forbidden {
        /// Error code.
        code: String,
        message: String,
    },
    /// 401 or a token failure.
    #[error("authentication failed ({code}): {message}")]
    Auth {
        /// Error code.
        code: String,
        message: String,
    },
    /// Any other 4xx: the request as sent is wrong.
    #[error("Azure rejected the request ({status} {code}): {message}")]
    Invalid {
        /// HTTP status.
        status: u16,
        /// Error code.
        code: String,
        message: String,
    },
}

impl AzureError {
    /// Stable category for metrics and event reasons (never a Debug string).
    pub fn category(&self) -> &'static str {
        match self {
            AzureError::Throttled { .. } => "Throttled",
            AzureError::Transient { .. } => "Transient",
            AzureError::PolicyRules { .. } => "PolicyRule",
            AzureError::RoleAssignmentExists { .. } => "RoleAssignmentExists",
            AzureError::RequestExists { .. } => "RequestExists",
            AzureError::PendingRequestExists { .. } => "PendingRequestExists",
            AzureError::ActiveDurationTooShort { .. } => "ActiveDurationTooShort",
            AzureError::DoesNotExist { .. } => "DoesNotExist",
            AzureError::NotFound { .. } => "NotFound",
            AzureError::Forbidden { .. } => "Forbidden",
            AzureError::Auth { .. } => "Auth",
            AzureError::Invalid { .. } => "Invalid",
        }
    }

    /// Whether retrying the same request later can succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            AzureError::Throttled { .. } | AzureError::Transient { .. } | AzureError::Auth { .. }
        )
    }
}
