//! AccessPolicy evaluation (pure). Default deny: a grant is allowed only when one policy that
//! selects its namespace allows all of it. Runs in the controller (and in the admission webhook).

use crate::api::{AccessGrantSpec, AccessPolicy, AccessPolicySpec, PimMode};
use crate::arm_id::{ArmId, matches_pattern};
use crate::validate::{InvalidSpec, ValidGrant, ValidTarget, parse_prefix};
use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use std::collections::BTreeMap;

/// The guard's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed by the named policy.
    Allowed {
        /// Policy name.
        policy: String,
    },
    /// Denied: the rule that failed and a sentence saying what to change.
    Denied {
        /// Rule name, e.g. `PimScope`.
        rule: String,
        /// Human message.
        message: String,
    },
}

impl Verdict {
    /// True when allowed.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Verdict::Allowed { .. })
    }
}

/// What the guard needs to know about the grant's place in the cluster.
#[derive(Clone, Debug, Default)]
pub struct GrantContext {
    /// Namespace of the grant.
    pub namespace: String,
    /// Labels of that namespace.
    pub namespace_labels: BTreeMap<String, String>,
    /// When the grant was created (start of the renewal window when `startTime` is absent).
    pub created: Option<DateTime<Utc>>,
    /// The verified requester (from the admission request, or a valid stamp); None when
    /// unknown or unverifiable.
    pub requester: Option<Requester>,
}

/// A verified Kubernetes requester.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Requester {
    /// User name.
    pub username: String,
    pub groups: Vec<String>,
}

impl Requester {
    /// Whether an entry of a `requesters` list (a user name, or `group:<name>`) names them.
    pub fn matches(&self, entry: &str) -> bool {
        match entry.strip_prefix("group:") {
            Some(g) => self.groups.iter().any(|x| x == g),
            None => self.username == entry,
        }
    }
}

/// Validation then the guard: the one decision both the admission webhook and the controller
/// make, so they cannot disagree.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// Validation result.
    pub valid: Result<ValidGrant, InvalidSpec>,
    /// The guard's verdict (None when the spec is invalid).
    pub verdict: Option<Verdict>,
}

impl Decision {
    /// When refused: (reason, message), the message being exactly what the controller records
    /// in `status.message` and the webhook returns to the client.
    pub fn refusal(&self) -> Option<(String, String)> {
        match (&self.valid, &self.verdict) {
            (Err(e), _) => Some((
                crate::constants::reason::INVALID_SPEC.to_string(),
                format!("{}: {}", e.field, e.reason),
            )),
            (Ok(_), Some(Verdict::Denied { rule, message })) => {
                Some((rule.clone(), message.clone()))
            }
            (Ok(_), None) => Some(("NoVerdict".into(), "not evaluated".into())),
            (Ok(_), Some(Verdict::Allowed { .. })) => None,
        }
    }
}

/// Validates a spec and evaluates it against the policies.
pub fn decide<P: std::borrow::Borrow<AccessPolicy>>(
    spec: &AccessGrantSpec,
    policies: &[P],
    ctx: &GrantContext,
) -> Decision {
    let valid = crate::validate::validate(spec);
    // A role id from another subscription than the scope is invalid, but when no policy allows
    // the scope (or nothing else about the grant) that denial is the one to give.
    if let Err(e) = &valid
        && let Some(probe) = crate::validate::scope_probe(spec, e)
        && let Ok(v) = crate::validate::validate(&probe)
    {
        let verdict = guard(&v, policies, ctx);
        if matches!(&verdict, Verdict::Denied { rule, .. } if rule != "PimRoleDefinition") {
            return Decision {
                valid: Ok(v),
                verdict: Some(verdict),
            };
        }
    }
    let verdict = valid.as_ref().ok().map(|v| guard(v, policies, ctx));
    Decision { valid, verdict }
}

/// Evaluates a valid grant against every policy.
pub fn guard<P: std::borrow::Borrow<AccessPolicy>>(
    grant: &ValidGrant,
    policies: &[P],
    ctx: &GrantContext,
) -> Verdict {
    let mut candidates: Vec<&AccessPolicy> = policies
        .iter()
        .map(|p| p.borrow())
        .filter(|p| selector_matches(&p.spec.namespace_selector, &ctx.namespace_labels))
        .collect();
    candidates.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    if candidates.is_empty() {
        return Verdict::Denied {
            rule: "NoPolicy".into(),
            message: format!(
                "no AccessPolicy selects namespace {:?}; access is denied by default",
                ctx.namespace
            ),
        };
    }
    let mut first_denial: Option<(String, String)> = None;
    for p in candidates {
        let name = p.metadata.name.clone().unwrap_or_default();
        // A policy being deleted (its deletion held by the operator while grants rely on it)
        // keeps the grants it already allowed, and allows no new one: otherwise new grants
        // could keep it, and their access, alive for ever.
        if let Some(del) = &p.metadata.deletion_timestamp {
            let deleting_since = DateTime::from_timestamp(del.0.as_second(), 0);
            // Kubernetes times have whole seconds: a grant created in the deletion's second
            // counts as older (the policy still stood then).
            let older = matches!((ctx.created, deleting_since), (Some(c), Some(d)) if c <= d);
            if !older {
                if first_denial.is_none() {
                    first_denial = Some((
                        "PolicyDeleting".into(),
                        format!(
                            "AccessPolicy {name} is being deleted: it keeps the grants it already allowed and allows no new one"
                        ),
                    ));
                }
                continue;
            }
        }
        match evaluate(grant, &p.spec, ctx) {
            Ok(()) => return Verdict::Allowed { policy: name },
            Err((rule, msg)) => {
                if first_denial.is_none() {
                    first_denial = Some((rule, format!("{msg} (AccessPolicy {name})")));
                }
            }
        }
    }
    let (rule, message) = first_denial.unwrap_or_else(|| ("NoPolicy".into(), "denied".into()));
    Verdict::Denied { rule, message }
}

type Denial = (String, String);

fn deny(rule: &str, message: String) -> Result<(), Denial> {
    Err((rule.to_string(), message))
}

fn evaluate(g: &ValidGrant, p: &AccessPolicySpec, ctx: &GrantContext) -> Result<(), Denial> {
    match &g.target {
        ValidTarget::Jit(jit) => {
            let Some(rules) = &p.jit else {
                return deny("JitNotAllowed", "the policy allows no JIT access".into());
            };
            let allowed_nets: Vec<ipnet::IpNet> = rules
                .source_prefixes
                .iter()
                .filter_map(|s| parse_prefix(s).ok())
                .collect();
            for vm in &jit.vms {
                if !rules
                    .virtual_machines
                    .iter()
                    .any(|pat| matches_pattern(pat, &vm.id))
                {
                    return deny(
                        "JitVirtualMachine",
                        format!("VM {} is not among the allowed VMs", vm.id),
                    );
                }
                for port in &vm.ports {
                    if !rules.ports.contains(&i32::from(port.number)) {
                        return deny(
                            "JitPort",
                            format!(
                                "port {} on VM {} is not allowed (allowed: {:?})",
                                port.number,
                                vm.id.name().unwrap_or_default(),
                                rules.ports
                            ),
                        );
                    }
                    for prefix in &port.prefixes {
                        let inside = allowed_nets.iter().any(|a| {
                            // Same family only: an IPv6 form never sneaks into an IPv4 CIDR.
                            matches!(
                                (a, prefix),
                                (ipnet::IpNet::V4(_), ipnet::IpNet::V4(_))
                                    | (ipnet::IpNet::V6(_), ipnet::IpNet::V6(_))
                            ) && a.contains(prefix)
                        });
                        if !inside {
                            return deny(
                                "JitSourcePrefix",
                                format!(
                                    "source {prefix} for port {} is not inside an allowed CIDR ({})",
                                    port.number,
                                    rules.source_prefixes.join(", ")
                                ),
                            );
                        }
                    }
                }
            }
        }
        ValidTarget::Pim(pim) => {
            let Some(rules) = &p.pim else {
                return deny("PimNotAllowed", "the policy allows no PIM access".into());
            };
            if !rules.modes.contains(&pim.mode) {
                let mode = match pim.mode {
                    PimMode::Activate => "Activate",
                    PimMode::Assign => "Assign",
                };
                return deny("PimMode", format!("mode {mode} is not allowed"));
            }
            let in_scope = rules
                .scopes
                .iter()
                .filter_map(|s| ArmId::parse(s).ok())
                .any(|allowed| allowed.contains(&pim.scope));
            if !in_scope {
                return deny(
                    "PimScope",
                    format!(
                        "scope {} is not at or beneath an allowed scope ({})",
                        pim.scope,
                        rules.scopes.join(", ")
                    ),
                );
            }
            let role_ok = rules
                .role_definition_ids
                .iter()
                .filter_map(|r| ArmId::parse_role_definition(r).ok())
                .any(|r| r == pim.role_definition_id);
            if !role_ok {
                return deny(
                    "PimRoleDefinition",
                    format!("role definition {} is not allowed", pim.role_definition_id),
                );
            }
            if !rules
                .principals
                .iter()
                .any(|x| x.eq_ignore_ascii_case(&pim.principal_id))
            {
                return deny(
                    "PimPrincipal",
                    format!("principal {} is not allowed", pim.principal_id),
                );
            }
            if let (Some(id), Some(allowed)) = (&pim.identity, &rules.service_accounts)
                && !allowed.iter().any(|a| a == &id.service_account_name)
            {
                return deny(
                    "PimServiceAccount",
                    format!(
                        "ServiceAccount {}/{} may not be used as identity (allowed: {})",
                        ctx.namespace,
                        id.service_account_name,
                        if allowed.is_empty() {
                            "none".to_string()
                        } else {
                            allowed.join(", ")
                        }
                    ),
                );
            }
        }
    }
    if p.require_verified_requester && ctx.requester.is_none() {
        return deny(
            "RequesterNotVerified",
            "the policy requires a verified requester, and this grant has no valid stamp from the operator's admission webhook".into(),
        );
    }
    if g.break_glass {
        let Some(bg) = &p.break_glass else {
            return deny(
                "BreakGlassNotAllowed",
                "break-glass is not allowed; remove spec.breakGlass".into(),
            );
        };
        let Some(who) = &ctx.requester else {
            return deny(
                "BreakGlassRequester",
                "break-glass needs a verified requester (a valid stamp from the operator's admission webhook)".into(),
            );
        };
        if !bg.requesters.is_empty() && !bg.requesters.iter().any(|r| who.matches(r)) {
            return deny(
                "BreakGlassRequester",
                format!("{} may not break the glass", who.username),
            );
        }
        if g.justification.is_none() {
            return deny(
                "BreakGlassJustification",
                "break-glass needs a justification; set spec.justification".into(),
            );
        }
        if g.renewal.is_some() {
            return deny(
                "BreakGlassRenewal",
                "break-glass access cannot be renewed; remove spec.renewal".into(),
            );
        }
        if let Some(max) = &bg.max_duration {
            let max_d = max.parse().map_err(|e| {
                (
                    "PolicyInvalid".to_string(),
                    format!("the policy's breakGlass.maxDuration {e}"),
                )
            })?;
            if g.duration > max_d {
                return deny(
                    "BreakGlassMaxDuration",
                    format!(
                        "break-glass duration {} exceeds the maximum {max}",
                        crate::api::duration::format_iso_duration(g.duration)
                    ),
                );
            }
        }
    }
    if let Some(max) = &p.max_duration {
        let max_d = max.parse().map_err(|e| {
            (
                "PolicyInvalid".to_string(),
                format!("the policy's maxDuration {e}"),
            )
        })?;
        if g.duration > max_d {
            return deny(
                "MaxDuration",
                format!(
                    "duration {} exceeds the maximum {max}",
                    crate::api::duration::format_iso_duration(g.duration)
                ),
            );
        }
    }
    if let Some(renewal) = &g.renewal {
        let Some(r) = &p.renewal else {
            return deny(
                "RenewalNotAllowed",
                "renewal is not allowed; remove spec.renewal".into(),
            );
        };
        let max_total = r.max_total_duration.parse().map_err(|e| {
            (
                "PolicyInvalid".to_string(),
                format!("the policy's renewal.maxTotalDuration {e}"),
            )
        })?;
        let start = g.start_time.or(ctx.created);
        let total = match start {
            Some(s) => renewal.until - s,
            // Without a start reference, be strict: count the whole window as too long.
            None => max_total + chrono::Duration::seconds(1),
        };
        if total > max_total {
            return deny(
                "RenewalLimit",
                format!(
                    "renewing until {} gives {} in total, more than the allowed {}",
                    renewal.until.to_rfc3339(),
                    crate::api::duration::format_iso_duration(total),
                    r.max_total_duration
                ),
            );
        }
    }
    if p.require_justification && g.justification.is_none() {
        return deny(
            "JustificationRequired",
            "a justification is required; set spec.justification".into(),
        );
    }
    if p.require_ticket && g.ticket.is_none() && !g.break_glass {
        return deny(
            "TicketRequired",
            "a ticket is required; set spec.ticket".into(),
        );
    }
    Ok(())
}

/// Standard label selector semantics (`{}` selects everything).
pub fn selector_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    if let Some(ml) = &sel.match_labels
        && !ml.iter().all(|(k, v)| labels.get(k) == Some(v))
    {
        return false;
    }
    if let Some(exprs) = &sel.match_expressions {
        for e in exprs {
            let values = e.values.as_deref().unwrap_or_default();
            let have = labels.get(&e.key);
            let ok = match e.operator.as_str() {
                "In" => have.is_some_and(|v| values.contains(v)),
                "NotIn" => have.is_none_or(|v| !values.contains(v)),
                "Exists" => have.is_some(),
                "DoesNotExist" => have.is_none(),
                _ => false, // unknown operator: select nothing (fail closed)
            };
            if !ok {
                return false;
            }
        }
    }
    true
}
