//! Semantic validation of an AccessGrant spec (pure). The CRD's CEL rules catch what the
//! apiserver can; this catches the rest and never trusts that the apiserver ran them.

use crate::api::{AccessGrantSpec, GrantIdentity, JitTarget, PimMode, PimTarget, TicketSpec};
use crate::arm_id::{ArmId, is_guid, is_rg_name};
use chrono::{DateTime, Duration, Utc};
use ipnet::IpNet;
use std::net::IpAddr;

/// Default `renewal.before`.
pub const DEFAULT_RENEW_BEFORE: Duration = Duration::minutes(5);

/// A spec that failed validation: which field, and why, in one sentence.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidSpec {
    /// Field path, e.g. `spec.jit.virtualMachines[0].ports[1].number`.
    pub field: String,
    /// What is wrong and what would be right.
    pub reason: String,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> InvalidSpec {
    InvalidSpec {
        field: field.into(),
        reason: reason.into(),
    }
}

/// A validated grant with parsed values.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidGrant {
    /// Trimmed justification (None when absent or blank).
    pub justification: Option<String>,
    /// Requested duration.
    pub duration: Duration,
    /// Scheduled start.
    pub start_time: Option<DateTime<Utc>>,
    /// Renewal settings.
    pub renewal: Option<ValidRenewal>,
    /// `spec.suspend`.
    pub suspend: bool,
    pub ticket: Option<TicketSpec>,
    /// Clamp to the Azure policy's maximum instead of failing.
    pub clamp_duration: bool,
    /// `spec.breakGlass`.
    pub break_glass: bool,
    /// `spec.dryRun`.
    pub dry_run: bool,
    /// The Azure target.
    pub target: ValidTarget,
}

/// Parsed renewal.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidRenewal {
    /// Renew until.
    pub until: DateTime<Utc>,
    /// Renew this long before the end.
    pub before: Duration,
}

/// The Azure target, parsed.
#[derive(Clone, Debug, PartialEq)]
pub enum ValidTarget {
    Jit(ValidJit),
    Pim(ValidPim),
}

/// JIT target.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidJit {
    /// Subscription (lower case).
    pub subscription_id: String,
    /// Resource group (as given).
    pub resource_group: String,
    /// Location (lower case).
    pub location: String,
    /// Policy name.
    pub policy_name: String,
    /// VMs and ports.
    pub vms: Vec<ValidJitVm>,
}

/// A VM and its ports.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidJitVm {
    /// VM id.
    pub id: ArmId,
    pub ports: Vec<ValidJitPort>,
}

/// A port and its sources.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidJitPort {
    /// Port number.
    pub number: u16,
    /// Source prefixes (at least one).
    pub prefixes: Vec<IpNet>,
}

/// PIM target.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidPim {
    pub mode: PimMode,
    pub scope: ArmId,
    /// Role definition id.
    pub role_definition_id: ArmId,
    /// Principal object id (lower case).
    pub principal_id: String,
    /// Linked eligibility schedule id.
    pub linked_role_eligibility_schedule_id: Option<String>,
    /// Workload identity to act as.
    pub identity: Option<GrantIdentity>,
}

impl ValidGrant {
    /// The target kind for display: `JIT` or `PIM`.
    pub fn kind(&self) -> &'static str {
        match self.target {
            ValidTarget::Jit(_) => "JIT",
            ValidTarget::Pim(_) => "PIM",
        }
    }
}

/// Validates a spec.
pub fn validate(spec: &AccessGrantSpec) -> Result<ValidGrant, InvalidSpec> {
    let target = match (&spec.jit, &spec.pim) {
        (Some(j), None) => ValidTarget::Jit(validate_jit(j)?),
        (None, Some(p)) => ValidTarget::Pim(validate_pim(p)?),
        (Some(_), Some(_)) => {
            return Err(invalid(
                "spec",
                "set exactly one of spec.jit or spec.pim, not both",
            ));
        }
        (None, None) => {
            return Err(invalid("spec", "set exactly one of spec.jit or spec.pim"));
        }
    };
    let duration = spec
        .duration
        .parse()
        .map_err(|e| invalid("spec.duration", e))?;
    let renewal = match &spec.renewal {
        None => None,
        Some(r) => {
            let before = match &r.before {
                Some(b) => b.parse().map_err(|e| invalid("spec.renewal.before", e))?,
                None => DEFAULT_RENEW_BEFORE,
            };
            if before >= duration {
                return Err(invalid(
                    "spec.renewal.before",
                    format!(
                        "must be shorter than spec.duration ({}), or every renewal would be due at once",
                        spec.duration
                    ),
                ));
            }
            if let Some(start) = spec.start_time
                && r.until <= start
            {
                return Err(invalid(
                    "spec.renewal.until",
                    "must be after spec.startTime",
                ));
            }
            Some(ValidRenewal {
                until: r.until,
                before,
            })
        }
    };
    let justification = match &spec.justification {
        Some(j) => validate_text("spec.justification", j, 500)?,
        None => None,
    };
    let ticket = match &spec.ticket {
        Some(t) => {
            let system = validate_text("spec.ticket.system", &t.system, 100)?
                .ok_or_else(|| invalid("spec.ticket.system", "must not be empty"))?;
            let number = validate_text("spec.ticket.number", &t.number, 100)?
                .ok_or_else(|| invalid("spec.ticket.number", "must not be empty"))?;
            Some(TicketSpec { system, number })
        }
        None => None,
    };
    Ok(ValidGrant {
        justification,
        duration,
        start_time: spec.start_time,
        renewal,
        suspend: spec.suspend.unwrap_or(false),
        ticket,
        clamp_duration: spec.clamp_duration.unwrap_or(false),
        break_glass: spec.break_glass.unwrap_or(false),
        dry_run: spec.dry_run.unwrap_or(false),
        target,
    })
}

/// The attribution the operator writes at the start of every justification it sends to Azure
/// (`[requested-by:alice@example.com]`): Azure's own `requestor` is the operator's principal, so
/// this is the only human attribution Azure keeps. User text may not contain it, nor the words
/// it is made of, so that it cannot be imitated further along.
pub const ATTRIBUTION_PREFIX: &str = "[requested-by:";

/// Phrases user text may not contain (compared without case, spaces or dashes): what our
/// attribution says, in the forms a reader would take for it.
const RESERVED_PHRASES: [&str; 2] = ["requestedby", "editedby"];

/// Free text sent to Azure: trimmed, bounded, no control or format characters (Unicode Cc and
/// Cf: newlines, tabs, bidi overrides, zero-width joiners, which can make text read as
/// something else), never our own JIT marker (which would let a grant impersonate another
/// grant's request) nor words that imitate our attribution.
fn validate_text(field: &str, s: &str, max: usize) -> Result<Option<String>, InvalidSpec> {
    use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
    let t = s.trim();
    if t.is_empty() {
        return Ok(None);
    }
    if t.chars().count() > max {
        return Err(invalid(field, format!("is longer than {max} characters")));
    }
    if t.chars().any(char::is_control) {
        return Err(invalid(
            field,
            "must not contain control characters (newlines, tabs)",
        ));
    }
    if let Some(c) = t
        .chars()
        .find(|c| c.general_category() == GeneralCategory::Format)
    {
        return Err(invalid(
            field,
            format!(
                "must not contain invisible format characters (found U+{:04X}: bidi controls and zero-width characters can make text read as something else)",
                u32::from(c)
            ),
        ));
    }
    let folded: String = t
        .chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect();
    if let Some(p) = RESERVED_PHRASES.iter().find(|p| folded.contains(*p)) {
        let shown = if *p == "editedby" {
            "edited by"
        } else {
            "requested by"
        };
        return Err(invalid(
            field,
            format!(
                "must not say who asked (\"{shown}\"): the operator writes the verified requester into Azure's justification itself"
            ),
        ));
    }
    if t.contains("[ag:") {
        return Err(invalid(
            field,
            "must not contain \"[ag:\", which the operator reserves for its request markers",
        ));
    }
    Ok(Some(t.to_string()))
}

fn validate_jit(j: &JitTarget) -> Result<ValidJit, InvalidSpec> {
    if !is_guid(&j.subscription_id) {
        return Err(invalid(
            "spec.jit.subscriptionId",
            format!("{:?} is not a GUID", j.subscription_id),
        ));
    }
    if !is_rg_name(&j.resource_group) {
        return Err(invalid(
            "spec.jit.resourceGroup",
            format!("{:?} is not a valid resource group name", j.resource_group),
        ));
    }
    if j.location.is_empty()
        || j.location.len() > 64
        || !j.location.chars().all(|c| c.is_ascii_alphanumeric())
    {
        return Err(invalid(
            "spec.jit.location",
            format!(
                "{:?} is not an Azure region name such as westeurope",
                j.location
            ),
        ));
    }
    if j.policy_name.is_empty()
        || j.policy_name.len() > 260
        || !j
            .policy_name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(invalid(
            "spec.jit.policyName",
            format!(
                "{:?} is not a valid policy name (letters, digits, '-', '_', '.')",
                j.policy_name
            ),
        ));
    }
    if j.virtual_machines.is_empty() {
        return Err(invalid(
            "spec.jit.virtualMachines",
            "must list at least one VM",
        ));
    }
    if j.virtual_machines.len() > 20 {
        return Err(invalid(
            "spec.jit.virtualMachines",
            "must list at most 20 VMs",
        ));
    }
    let sub = j.subscription_id.to_ascii_lowercase();
    let mut vms: Vec<ValidJitVm> = Vec::new();
    for (i, vm) in j.virtual_machines.iter().enumerate() {
        let f = format!("spec.jit.virtualMachines[{i}]");
        let id = ArmId::parse_vm(&vm.id).map_err(|e| invalid(format!("{f}.id"), e))?;
        if id.subscription_id() != Some(sub.as_str()) {
            return Err(invalid(
                format!("{f}.id"),
                "is in another subscription than spec.jit.subscriptionId",
            ));
        }
        if vms.iter().any(|v| v.id == id) {
            return Err(invalid(format!("{f}.id"), "lists the same VM twice"));
        }
        if vm.ports.is_empty() || vm.ports.len() > 20 {
            return Err(invalid(format!("{f}.ports"), "must list 1 to 20 ports"));
        }
        let mut ports: Vec<ValidJitPort> = Vec::new();
        for (k, p) in vm.ports.iter().enumerate() {
            let pf = format!("{f}.ports[{k}]");
            let number = u16::try_from(p.number)
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| {
                    invalid(
                        format!("{pf}.number"),
                        format!("{} is not a port number (1 to 65535)", p.number),
                    )
                })?;
            if ports.iter().any(|q| q.number == number) {
                return Err(invalid(
                    format!("{pf}.number"),
                    format!("port {number} is listed twice for this VM"),
                ));
            }
            let prefixes: Vec<(String, &String)> = match (
                &p.allowed_source_address_prefix,
                &p.allowed_source_address_prefixes,
            ) {
                (Some(one), None) => vec![(format!("{pf}.allowedSourceAddressPrefix"), one)],
                (None, Some(many)) => {
                    if many.is_empty() || many.len() > 20 {
                        return Err(invalid(
                            format!("{pf}.allowedSourceAddressPrefixes"),
                            "must list 1 to 20 prefixes",
                        ));
                    }
                    many.iter()
                        .enumerate()
                        .map(|(n, s)| (format!("{pf}.allowedSourceAddressPrefixes[{n}]"), s))
                        .collect()
                }
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        pf,
                        "set only one of allowedSourceAddressPrefix or allowedSourceAddressPrefixes",
                    ));
                }
                (None, None) => {
                    return Err(invalid(
                        pf,
                        "set allowedSourceAddressPrefix or allowedSourceAddressPrefixes: without it Azure would open the port to the operator's own address",
                    ));
                }
            };
            let mut nets: Vec<IpNet> = Vec::new();
            for (field, s) in prefixes {
                let net = parse_prefix(s).map_err(|e| invalid(field.clone(), e))?;
                if nets.contains(&net) {
                    return Err(invalid(field, "lists the same prefix twice"));
                }
                nets.push(net);
            }
            ports.push(ValidJitPort {
                number,
                prefixes: nets,
            });
        }
        vms.push(ValidJitVm { id, ports });
    }
    Ok(ValidJit {
        subscription_id: sub,
        resource_group: j.resource_group.clone(),
        location: j.location.to_ascii_lowercase(),
        policy_name: j.policy_name.clone(),
        vms,
    })
}

/// Parses a source prefix: an IPv4/IPv6 address or a CIDR with no host bits set. Wildcards and
/// service tags (`*`, `Any`, `Internet`, `VirtualNetwork`) are refused: a grant names addresses.
pub fn parse_prefix(s: &str) -> Result<IpNet, String> {
    let t = s.trim();
    if t != s || t.is_empty() {
        return Err(format!("{s:?} is not an IP address or CIDR"));
    }
    if t == "*" || t.chars().all(|c| c.is_ascii_alphabetic()) {
        return Err(format!(
            "{s:?} is a wildcard or service tag; name an IP address or CIDR such as 203.0.113.7 or 10.0.0.0/24"
        ));
    }
    if let Ok(ip) = t.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    let net: IpNet = t
        .parse()
        .map_err(|_| format!("{s:?} is not an IP address or CIDR"))?;
    if net.trunc() != net {
        return Err(format!(
            "{s:?} has host bits set; did you mean {}?",
            net.trunc()
        ));
    }
    Ok(net)
}

const ROLE_FIELD: &str = "spec.pim.roleDefinitionId";
const ROLE_SCOPE_MISMATCH: &str = "is defined in another subscription than spec.pim.scope; use the role definition id of the scope's subscription";

/// For a grant refused only because its role definition id names another subscription than
/// its scope: the same spec with the role's tenant-level id, so that the AccessPolicy can judge
/// the scope first (`guard::decide`): a scope no policy allows is what the requester must hear
/// about, whatever the role id says.
pub fn scope_probe(spec: &AccessGrantSpec, e: &InvalidSpec) -> Option<AccessGrantSpec> {
    if e.field != ROLE_FIELD || e.reason != ROLE_SCOPE_MISMATCH {
        return None;
    }
    let mut probe = spec.clone();
    let pim = probe.pim.as_mut()?;
    let guid = ArmId::parse_role_definition(&pim.role_definition_id)
        .ok()?
        .role_guid()?
        .to_string();
    pim.role_definition_id = format!("/providers/Microsoft.Authorization/roleDefinitions/{guid}");
    Some(probe)
}

fn validate_pim(p: &PimTarget) -> Result<ValidPim, InvalidSpec> {
    let scope = ArmId::parse(&p.scope).map_err(|e| invalid("spec.pim.scope", e))?;
    let role = ArmId::parse_role_definition(&p.role_definition_id)
        .map_err(|e| invalid("spec.pim.roleDefinitionId", e))?;
    if let Some(role_sub) = role.subscription_id()
        && scope.subscription_id() != Some(role_sub)
    {
        return Err(invalid(ROLE_FIELD, ROLE_SCOPE_MISMATCH));
    }
    if !is_guid(&p.principal_id) {
        return Err(invalid(
            "spec.pim.principalId",
            format!("{:?} is not an object id (GUID)", p.principal_id),
        ));
    }
    let linked = match &p.linked_role_eligibility_schedule_id {
        None => None,
        Some(l) => {
            if p.mode != PimMode::Activate {
                return Err(invalid(
                    "spec.pim.linkedRoleEligibilityScheduleId",
                    "applies to mode Activate only",
                ));
            }
            if !is_guid(l) {
                ArmId::parse(l)
                    .map_err(|e| invalid("spec.pim.linkedRoleEligibilityScheduleId", e))?;
            }
            Some(l.clone())
        }
    };
    if let Some(id) = &p.identity {
        if p.mode != PimMode::Activate {
            return Err(invalid(
                "spec.pim.identity",
                "applies to mode Activate only (Assign always runs as the operator)",
            ));
        }
        let sa = id.service_account_name.as_str();
        if sa.contains(':') || sa.contains('/') {
            return Err(invalid(
                "spec.pim.identity.serviceAccountName",
                format!(
                    "{sa:?} names a ServiceAccount outside the grant's namespace; a grant may act only as a ServiceAccount of its own namespace (give just its name)"
                ),
            ));
        }
        if !is_dns_subdomain(sa) {
            return Err(invalid(
                "spec.pim.identity.serviceAccountName",
                format!(
                    "{:?} is not a valid ServiceAccount name",
                    id.service_account_name
                ),
            ));
        }
        if !is_guid(&id.client_id) {
            return Err(invalid(
                "spec.pim.identity.clientId",
                format!("{:?} is not a GUID", id.client_id),
            ));
        }
        if !is_guid(&id.tenant_id) {
            return Err(invalid(
                "spec.pim.identity.tenantId",
                format!("{:?} is not a GUID", id.tenant_id),
            ));
        }
    }
    Ok(ValidPim {
        mode: p.mode,
        scope,
        role_definition_id: role,
        principal_id: p.principal_id.to_ascii_lowercase(),
        linked_role_eligibility_schedule_id: linked,
        identity: p.identity.clone(),
    })
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}
