//! The `AccessPolicy` custom resource: cluster-wide guardrails. Default deny.

use super::duration::IsoDuration;
use super::grant::PimMode;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Guardrails for AccessGrants. A grant is allowed only when at least one AccessPolicy that
/// selects its namespace allows all of it; otherwise it is `Denied` and Azure is never called.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "accessgrant.io",
    version = "v1alpha1",
    kind = "AccessPolicy",
    shortname = "agp",
    category = "accessgrant",
    cel,
    doc = "Cluster-wide guardrails: which namespaces may obtain which Azure access, for how long.",
    printcolumn(
        name = "Max-Duration",
        type_ = "string",
        json_path = ".spec.maxDuration",
        description = "Longest single grant"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct AccessPolicySpec {
    /// Namespaces this policy applies to (a standard label selector; `{}` selects all).
    pub namespace_selector: LabelSelector,
    /// Defender JIT access this policy allows. Omit to allow none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jit: Option<JitRules>,
    /// PIM role access this policy allows. Omit to allow none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pim: Option<PimRules>,
    /// Longest single grant (ISO 8601, e.g. `PT8H`). Omit for no limit beyond Azure's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(r"self.matches('^P(\\d+W)?(\\d+D)?(T(\\d+H)?(\\d+M)?(\\d+S)?)?$') && self != 'P' && !self.endsWith('T')").message("maxDuration must be an ISO 8601 duration without years or months, e.g. PT8H").reason(Reason::FieldValueInvalid))]
    pub max_duration: Option<IsoDuration>,
    /// Renewal limits. Omit to forbid renewal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal: Option<RenewalRules>,
    /// Grants must carry a non-empty `justification`.
    #[serde(default)]
    pub require_justification: bool,
    /// Grants must carry a `ticket`.
    #[serde(default)]
    pub require_ticket: bool,
    /// Grants must carry a valid requester stamp from the operator's admission webhook (so a
    /// grant created while the webhook was bypassed is denied).
    #[serde(default)]
    pub require_verified_requester: bool,
    /// Break-glass: emergency grants (`spec.breakGlass: true`) this policy allows without a
    /// ticket. Omit to allow none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub break_glass: Option<BreakGlassRules>,
}

/// Break-glass limits. Every other rule of the policy (targets, principals, prefixes) still
/// applies; a justification is always required and renewal is never allowed.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BreakGlassRules {
    /// Longest break-glass grant (ISO 8601, e.g. `PT1H`); the policy's `maxDuration` applies too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(r"self.matches('^P(\\d+W)?(\\d+D)?(T(\\d+H)?(\\d+M)?(\\d+S)?)?$') && self != 'P' && !self.endsWith('T')").message("maxDuration must be an ISO 8601 duration without years or months, e.g. PT1H").reason(Reason::FieldValueInvalid))]
    pub max_duration: Option<IsoDuration>,
    /// Who may break the glass: user names, or groups written `group:<name>`, matched against
    /// the verified requester. Empty allows any verified requester; an unverified one never.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub requesters: Vec<String>,
}

/// Renewal limits.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RenewalRules {
    /// Longest total time from the first start to `renewal.until` (ISO 8601, e.g. `P1D`).
    #[x_kube(validation = Rule::new(r"self.matches('^P(\\d+W)?(\\d+D)?(T(\\d+H)?(\\d+M)?(\\d+S)?)?$') && self != 'P' && !self.endsWith('T')").message("maxTotalDuration must be an ISO 8601 duration without years or months, e.g. P1D").reason(Reason::FieldValueInvalid))]
    pub max_total_duration: IsoDuration,
}

/// Allowed JIT access.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct JitRules {
    /// VM resource id patterns, compared case-insensitively on normalised ids. `*` matches
    /// within one path segment, e.g.
    /// `/subscriptions/{sub}/resourceGroups/rg1/providers/Microsoft.Compute/virtualMachines/*`.
    #[schemars(length(max = 100))]
    pub virtual_machines: Vec<String>,
    /// Allowed port numbers.
    #[schemars(length(max = 100))]
    pub ports: Vec<i32>,
    /// CIDRs that requested source prefixes must lie inside (IPv4 or IPv6).
    #[schemars(length(max = 100))]
    pub source_prefixes: Vec<String>,
}

/// Allowed PIM access.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PimRules {
    /// ARM scopes; a requested scope must equal one or lie beneath it.
    #[schemars(length(max = 100))]
    pub scopes: Vec<String>,
    /// Full role definition ids allowed (compared case-insensitively, scope included).
    #[schemars(length(max = 100))]
    pub role_definition_ids: Vec<String>,
    /// Principal object ids allowed. Empty allows none.
    #[schemars(length(max = 1000))]
    pub principals: Vec<String>,
    /// Modes allowed (`Activate`, `Assign`).
    #[schemars(length(max = 2))]
    pub modes: Vec<PimMode>,
    /// ServiceAccounts (of the grant's own namespace) a grant may act as through
    /// `spec.pim.identity`. Omit to allow any ServiceAccount of the grant's namespace; an empty
    /// list allows none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 100))]
    pub service_accounts: Option<Vec<String>>,
}
